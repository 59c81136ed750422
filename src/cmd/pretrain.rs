//! `stptf pretrain`: self-supervised pretraining of one model on the
//! `data.pretrain_sites` scans, with `--resume` of an interrupted run.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use stptf::model::Model;
use stptf::train::checkpoint;
use stptf::train::protocol::{
    check_phase_trains, data_dims, load_dataset, pretrain_scans, write_loss_plot,
};
use stptf::train::rundir::RunDir;
use stptf::train::trainer::{host_tensors, train_phase, Phase, RunOptions};

use super::common::{default_out, load_config, open_gpu, print_report, CommonArgs};

#[derive(Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Continue an interrupted run from its directory's last checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs, at least 1 (the checkpoint allows `--resume` later).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after_epochs: Option<u64>,
}

pub fn run(args: &PretrainArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let (cfg, resumed) = match &args.resume {
        Some(dir) => {
            let run = RunDir::open(dir)?;
            let ckpt = checkpoint::load(&run.file("checkpoint-pretrain")).with_context(|| {
                format!("no pretraining checkpoint to resume in {}", dir.display())
            })?;
            (ckpt.meta.config.clone(), Some((run, ckpt)))
        }
        None => (load_config(c)?, None),
    };
    // Everything that can be refused is checked before a run directory is created.
    check_phase_trains(&cfg, Phase::Pretrain)?;
    let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet)?;
    let scans = pretrain_scans(&dataset, &cfg)?;
    let (run, resume) = match resumed {
        Some((run, ckpt)) => (run, Some(ckpt)),
        None => {
            let out = c.out.clone().unwrap_or_else(|| default_out("pretrain"));
            let run = RunDir::create(&out)?;
            run.write_config(&cfg)?;
            (run, None)
        }
    };
    let gpu = open_gpu(c.quiet)?;
    let model = match &resume {
        Some(ckpt) => {
            if ckpt.meta.data_fingerprint != checkpoint::data_fingerprint(&dataset) {
                bail!("the checkpoint in {} was trained on different data (fingerprint mismatch); resume with the same dataset", run.path().display());
            }
            Model::from_host(
                &gpu,
                cfg.model.clone(),
                data_dims(&dataset),
                &host_tensors(ckpt),
            )?
        }
        None => Model::new(&gpu, cfg.model.clone(), data_dims(&dataset), cfg.seed)?,
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
        &dataset,
        &scans,
        &cfg,
        Phase::Pretrain,
        resume.as_ref(),
        &opts,
    )?;
    write_loss_plot(&run, &report)?;
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
