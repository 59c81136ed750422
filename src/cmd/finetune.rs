//! `stptf finetune`: fine-tune one model (from a pretraining checkpoint or
//! from scratch) on the `data.finetune_sites` scans.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use stptf::config::Config;
use stptf::data::Dataset;
use stptf::model::Model;
use stptf::train::checkpoint;
use stptf::train::protocol::{
    check_phase_trains, check_sizes, data_dims, finetune_scans, load_dataset,
    write_diagnostics_plots, write_loss_plot, write_region_importance,
};
use stptf::train::rundir::RunDir;
use stptf::train::trainer::{train_phase, Phase, RunOptions};

use super::common::{default_out, load_config, open_gpu, print_report, CommonArgs};

#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// A pretraining run directory or checkpoint directory; without it the
    /// model starts from random weights (supervised from scratch).
    #[arg(long)]
    pub from: Option<PathBuf>,
}

pub fn run(args: &FinetuneArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let cfg = load_config(c)?;
    check_phase_trains(&cfg, Phase::Finetune)?;
    let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet)?;
    let scans = finetune_scans(&dataset, &cfg)?;
    let out = c.out.clone().unwrap_or_else(|| default_out("finetune"));
    // A run that fails before its first step (a bad --from, a model too
    // large for the GPU, ...) leaves --out as it was.
    RunDir::create(&out)?.attempt(|run| {
        run.write_config(&cfg)?;
        train(args, run, &cfg, &dataset, &scans)
    })
}

fn train(
    args: &FinetuneArgs,
    run: &RunDir,
    cfg: &Config,
    dataset: &Arc<Dataset>,
    scans: &[usize],
) -> anyhow::Result<()> {
    let c = &args.common;
    let gpu = open_gpu(c.quiet)?;
    check_sizes(&gpu, cfg, dataset, &[Phase::Finetune])?;
    let model = match &args.from {
        Some(from) => {
            let ckpt = checkpoint::load_for_phase(from, "pretrain").with_context(|| {
                format!(
                    "loading the pretrained checkpoint --from {}",
                    from.display()
                )
            })?;
            let weights = stptf::model::params::with_initial_buffers(&cfg.model, &ckpt.weights);
            Model::from_host(&gpu, cfg.model.clone(), data_dims(dataset), &weights).with_context(
                || {
                    format!(
                        "the checkpoint {} does not fit this config and dataset",
                        from.display()
                    )
                },
            )?
        }
        None => Model::new(&gpu, cfg.model.clone(), data_dims(dataset), cfg.seed)?,
    };
    let opts = RunOptions {
        quiet: c.quiet,
        run: Some(run.clone()),
        stop_after_epochs: None,
        validation: Vec::new(),
        data_parallel: None,
    };
    let report = train_phase(
        &gpu,
        &model,
        dataset,
        scans,
        cfg,
        Phase::Finetune,
        None,
        &opts,
    )?;
    write_loss_plot(run, &report)?;
    write_diagnostics_plots(run, &report)?;
    write_region_importance(&gpu, &model, run)?;
    run.write_summary(&report)?;
    print_report(&report, c.quiet);
    let checkpoint = run.file("checkpoint-finetune");
    if checkpoint.is_dir() {
        println!("checkpoint: {}", checkpoint.display());
    } else {
        println!("no checkpoint was written (no epoch ran)");
    }
    Ok(())
}
