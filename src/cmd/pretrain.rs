//! `stptf pretrain`: self-supervised pretraining of one model on the
//! `data.pretrain_sites` scans, with `--resume` of an interrupted run.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use stptf::config::Config;
use stptf::data::Dataset;
use stptf::model::Model;
use stptf::train::protocol::{
    check_phase_trains, check_sizes, data_dims, load_dataset, pretrain_scans, write_loss_plot,
};
use stptf::train::rundir::RunDir;
use stptf::train::trainer::{train_phase, Phase, RunOptions};
use stptf::train::{checkpoint, resume};

use super::common::{
    apply_overrides, default_out, load_config, open_gpu, print_report, CommonArgs,
};

#[derive(Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Continue an interrupted run from its directory's last checkpoint, with
    /// the config and data it started with (any difference is refused).
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs, at least 1 (the checkpoint allows `--resume` later).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after_epochs: Option<u64>,
}

pub fn run(args: &PretrainArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let Some(dir) = &args.resume else {
        let cfg = load_config(c)?;
        // Everything that can be refused is checked before a run directory is created.
        check_phase_trains(&cfg, Phase::Pretrain)?;
        let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet)?;
        let scans = pretrain_scans(&dataset, &cfg)?;
        let out = c.out.clone().unwrap_or_else(|| default_out("pretrain"));
        // A run that fails before its first step leaves --out as it was.
        return RunDir::create(&out)?.attempt(|run| {
            run.write_config(&cfg)?;
            train(args, run, &cfg, &dataset, &scans, None)
        });
    };
    let context = || format!("cannot resume {}", dir.display());
    let ckpt = checkpoint::load_for_phase(dir, "pretrain").with_context(context)?;
    let run = RunDir::open(dir)?;
    // The config the run started with, or the one --config names; either
    // way with --set, --seed and --dataset applied. `resume::check` refuses
    // any difference from the checkpoint's.
    let cfg = match &c.config {
        Some(_) => load_config(c)?,
        None => apply_overrides(
            resume::recorded_config(&run, &ckpt).with_context(context)?,
            c,
        )?,
    };
    check_phase_trains(&cfg, Phase::Pretrain)?;
    let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet)?;
    resume::check(run.path(), &ckpt, &cfg, &dataset)?;
    let scans = pretrain_scans(&dataset, &cfg)?;
    train(args, &run, &cfg, &dataset, &scans, Some(&ckpt))
}

fn train(
    args: &PretrainArgs,
    run: &RunDir,
    cfg: &Config,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    resumed: Option<&checkpoint::Checkpoint>,
) -> anyhow::Result<()> {
    let c = &args.common;
    let gpu = open_gpu(c.quiet)?;
    check_sizes(&gpu, cfg, dataset, &[Phase::Pretrain])?;
    let model = match resumed {
        Some(ckpt) => Model::from_host(&gpu, cfg.model.clone(), data_dims(dataset), &ckpt.weights)
            .with_context(|| format!("cannot resume {}", run.path().display()))?,
        None => Model::new(&gpu, cfg.model.clone(), data_dims(dataset), cfg.seed)?,
    };
    let opts = RunOptions {
        quiet: c.quiet,
        run: Some(run.clone()),
        stop_after_epochs: args.stop_after_epochs,
        validation: Vec::new(),
    };
    let report = train_phase(
        &gpu,
        &model,
        dataset,
        scans,
        cfg,
        Phase::Pretrain,
        resumed,
        &opts,
    )?;
    write_loss_plot(run, &report)?;
    run.write_summary(&report)?;
    print_report(&report, c.quiet);
    let checkpoint = run.file("checkpoint-pretrain");
    if checkpoint.is_dir() {
        println!("checkpoint: {}", checkpoint.display());
    } else {
        println!("no checkpoint was written (no epoch ran)");
    }
    println!("metrics:    {}", run.file("metrics.jsonl").display());
    Ok(())
}
