#!/usr/bin/env bash
# Cross-validation on a Slurm cluster: one fold per array task, then a
# dependent job that merges the folds into summary.json and roc.svg.
#
#   bash assets/slurm/evaluate_array.sh CONFIG DATASET RUN [FOLDS]
#
# CONFIG: experiment config (e.g. assets/experiments/table1_stptf.toml);
# DATASET: dataset description (e.g. assets/abide_cc200.toml);
# RUN: the shared run directory, on a file system every node sees;
# FOLDS: the number of folds, evaluate.folds of CONFIG (default 5). With
# evaluate.split = "leave-site-out" give the number of sites: --fold K takes
# the K-th fold from 1 as well as a fold's name.
#
# Every task resolves the same folds (they depend only on the data and the
# seed), checks that RUN/config.toml is its own, and refuses a fold already
# run. Collect fails, naming the missing folds, if any task failed; rerun
# those with `stptf evaluate --fold K ... --out RUN`, then
# `stptf evaluate --collect RUN`.
set -euo pipefail
config=${1:?usage: evaluate_array.sh CONFIG DATASET RUN [FOLDS]}
dataset=${2:?usage: evaluate_array.sh CONFIG DATASET RUN [FOLDS]}
run=${3:?usage: evaluate_array.sh CONFIG DATASET RUN [FOLDS]}
folds=${4:-5}
stptf=${STPTF:-stptf}

# Site-specific settings (partition, account, time) go in the #SBATCH lines
# or sbatch flags; one GPU per fold task.
fold_job=$(sbatch --parsable \
  --job-name=stptf-fold --array="1-${folds}" \
  --gres=gpu:1 --cpus-per-task=4 --time=04:00:00 \
  --output="slurm-%A_%a.out" \
  --wrap="${stptf} evaluate --quiet --config '${config}' --dataset '${dataset}' --out '${run}' --fold \${SLURM_ARRAY_TASK_ID}")

# afterok: runs only when every array task succeeded.
sbatch --parsable \
  --job-name=stptf-collect --dependency="afterok:${fold_job}" \
  --cpus-per-task=1 --time=00:10:00 \
  --output="slurm-%j-collect.out" \
  --wrap="${stptf} evaluate --collect '${run}'"
echo "submitted fold array ${fold_job} (${folds} tasks) and its collect job; results in ${run}/summary.json"
