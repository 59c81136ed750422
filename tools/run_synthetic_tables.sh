#!/usr/bin/env bash
# The structure of the paper's Tables 1-3 on the in-memory synthetic dataset
# (assets/synthetic_quick.toml, planted classes), a few minutes each on
# lavapipe. Writes results/synthetic_tables.md. Usage:
#   tools/run_synthetic_tables.sh [extra stptf args, e.g. --set pretrain.epochs=5]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
out=$(mktemp -d)
# A private copy: a rebuild while this runs must not swap the binary mid-table.
cp target/release/stptf "$out/stptf"
bin=$out/stptf
commit=$(git rev-parse --short HEAD)
adapter=$($bin info | awk -F'  +' '/^adapter/ {print $2}')
rows=(
  "STPTF|"
  "supervised from scratch|--set pretrain.epochs=0"
  "RSA + RTA (random augmentation)|--set augment.kind=random"
  "w/o SCA|--set augment.sca=false"
  "w/o TCA|--set augment.tca=false"
  "GCN-only encoder|--set model.encoder=gcn-only"
  "LSTM encoder|--set model.encoder=lstm"
  "ST-GCN-style encoder|--set model.encoder=stgcn-style"
  "STPTF, 20 % labels|--set finetune.label_fraction=0.25"
)
{
  echo "# Paper-table structure on synthetic data"
  echo
  echo "\`tools/run_synthetic_tables.sh $*\` at commit $commit on $adapter, $(date -u +%F) (overrides after the script name apply to every row; each row's own override wins)."
  echo "Data: the in-memory synthetic default (128 scans, 16 regions, 96 frames, 2 planted classes, difficulty 0.2);"
  echo "experiment: assets/synthetic_quick.toml (3-fold subject-level CV); one row per override."
  echo
  echo "| method | override | accuracy | AUC | recall | wall s |"
  echo "|---|---|---|---|---|---|"
} > "$out/table.md"
for row in "${rows[@]}"; do
  name=${row%%|*}
  args=${row#*|}
  start=$(date +%s)
  # shellcheck disable=SC2086
  # The row's own overrides come last so that they win over the common ones.
  $bin evaluate --quiet --out "$out/run-$(date +%s%N)" "$@" $args > "$out/last.txt"
  end=$(date +%s)
  line=$(grep '^STPTF' "$out/last.txt")
  read -r _ acc auc rec <<< "$line"
  echo "| $name | \`${args:-(none)}\` | $acc | $auc | $rec | $((end - start)) |" >> "$out/table.md"
  echo "$name: $acc $auc $rec"
done
mkdir -p results
cp "$out/table.md" results/synthetic_tables.md
echo "wrote results/synthetic_tables.md"
