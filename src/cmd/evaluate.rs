//! `stptf evaluate`: the paper's cross-validation protocol
//! (`train::protocol::cross_validate`), printed in the paper's form; or one
//! fold of it (`--fold K`, for a cluster's job array), or the merge of the
//! finished folds (`--collect RUN`); or train on one dataset and score
//! another (`--test-dataset D2`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;

use stptf::train::metrics::format_table;
use stptf::train::protocol::{
    check_evaluable, collect, cross_validate, evaluate_transfer, fold_index, load_dataset,
    load_dataset_file, plan_folds, run_fold, select_fold, write_fold_index, Evaluation,
};
use stptf::train::rundir::RunDir;

use super::common::{default_out, load_config, open_gpu, CommonArgs};

#[derive(Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Run only fold K (its name, e.g. `3` or a site, or its position from 1)
    /// into the shared run directory --out, which the other folds' jobs share;
    /// `--collect` merges them. The folds are those of a full evaluate.
    #[arg(long, value_name = "K", requires = "out")]
    pub fold: Option<String>,
    /// Merge the finished folds of the run directory RUN into summary.json
    /// and roc.svg, or name the folds still missing. Needs no data and no GPU.
    #[arg(
        long,
        value_name = "RUN",
        conflicts_with_all = ["fold", "config", "dataset", "data", "out", "seed", "set"]
    )]
    pub collect: Option<PathBuf>,
    /// Train on the dataset (pretrain and fine-tune as one fold of the
    /// protocol would, on all of its scans) and score every scan of this
    /// second dataset: how a lab checks a model on a new site. Same region
    /// count and classes required. Writes the same summary.json and ROC as a
    /// cross-validation, with the one fold `transfer`.
    #[arg(long, value_name = "D2", conflicts_with_all = ["fold", "collect"])]
    pub test_dataset: Option<PathBuf>,
    /// Data directory of the test dataset, replacing its description's `data_dir`.
    #[arg(long, value_name = "DIR", requires = "test_dataset")]
    pub test_data: Option<PathBuf>,
}

pub fn run(args: &EvaluateArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.collect {
        if !path.is_dir() {
            bail!("{}: no such run directory", path.display());
        }
        let evaluation = collect(&RunDir::open(path)?, None)?;
        print(&evaluation, path.display().to_string());
        return Ok(());
    }
    let c = &args.common;
    let cfg = load_config(c)?;
    // Refused before anything is written.
    check_evaluable(&cfg)?;
    let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet)?;
    if let Some(test_path) = &args.test_dataset {
        // Both datasets load, and must agree, before anything is written.
        let test = load_dataset_file(test_path, args.test_data.as_deref())?;
        let first_test = dataset.scans.len();
        let combined = Arc::new(
            Arc::unwrap_or_clone(dataset)
                .followed_by(test)
                .with_context(|| format!("cannot test on {}", test_path.display()))?,
        );
        let out = c.out.clone().unwrap_or_else(|| default_out("evaluate"));
        let run = RunDir::create(&out)?;
        let evaluation = run.attempt(|run| {
            run.write_config(&cfg)?;
            let gpu = open_gpu(c.quiet)?;
            anyhow::Ok(evaluate_transfer(
                &gpu, &combined, first_test, &cfg, run, c.quiet,
            )?)
        })?;
        println!(
            "trained on {} scans, tested on the {} scans of {}",
            first_test,
            combined.scans.len() - first_test,
            test_path.display()
        );
        print(&evaluation, run.path().display().to_string());
        return Ok(());
    }
    if let Some(key) = &args.fold {
        let out = c.out.as_ref().expect("clap requires --out with --fold");
        let plans = plan_folds(&dataset, &cfg)?;
        // Chosen before the GPU opens or anything is written.
        let plan = select_fold(&plans, key)?;
        // A fold job that fails before its first step leaves the shared --out
        // as it found it: what the other jobs wrote there is never touched.
        let record = RunDir::open(out)?.attempt(|run| {
            check_shared_config(run, &cfg)?;
            write_fold_index(run, &fold_index(&dataset, &cfg, &plans))?;
            let gpu = open_gpu(c.quiet)?;
            anyhow::Ok(run_fold(&gpu, &dataset, &cfg, plan, run, c.quiet)?)
        })?;
        println!(
            "fold {} of {}: accuracy {:.2} %, AUC {:.2} %, recall {:.2} % ({})",
            record.fold,
            plans.len(),
            100.0 * record.metrics.accuracy,
            100.0 * record.metrics.auc,
            100.0 * record.metrics.recall,
            out.join(format!("fold-{}", record.fold)).display()
        );
        return Ok(());
    }
    let out = c.out.clone().unwrap_or_else(|| default_out("evaluate"));
    // A run that fails before its first step leaves --out as it was.
    let run = RunDir::create(&out)?;
    let evaluation = run.attempt(|run| {
        run.write_config(&cfg)?;
        let gpu = open_gpu(c.quiet)?;
        anyhow::Ok(cross_validate(&gpu, &dataset, &cfg, run, c.quiet)?)
    })?;
    print(&evaluation, run.path().display().to_string());
    Ok(())
}

fn print(evaluation: &Evaluation, run: String) {
    println!("{}", format_table(&[("STPTF", &evaluation.summary)]));
    println!("run directory: {run} ({:.0} s)", evaluation.wall_seconds);
}

/// The shared run directory of the fold jobs gets its `config.toml` from
/// whichever job comes first; every job checks that its resolved config is
/// the one there.
fn check_shared_config(run: &RunDir, cfg: &stptf::config::Config) -> anyhow::Result<()> {
    let ours = cfg.to_toml_string()?;
    let path = run.file("config.toml");
    if path.exists() {
        let theirs = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if theirs != ours {
            bail!(
                "{}: another config than this fold job's (compare it with `--set` and --config); \
                 every fold of one run directory must share the config",
                path.display()
            );
        }
    } else {
        run.write_config(cfg)?;
    }
    Ok(())
}
