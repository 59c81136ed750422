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

use stptf::dist::DataParallel;
use stptf::gpu::Gpu;

use super::common::{
    apply_overrides, data_parallel, default_out, load_config, open_gpu_for_local_rank,
    print_report, CommonArgs,
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
    let ranks = data_parallel()?;
    let dp = ranks.as_ref().map(|(dp, _)| dp.clone());
    let local_rank = ranks.as_ref().map_or(0, |(_, l)| *l);
    // Under data parallelism rank 0 owns the run directory (config,
    // metrics, checkpoints, summary); the other ranks write nothing.
    let root = dp.as_ref().is_none_or(|dp| dp.0.rank() == 0);
    let c = &args.common;
    let Some(dir) = &args.resume else {
        let cfg = load_config(c)?;
        // Everything that can be refused is checked before a run directory is created.
        check_phase_trains(&cfg, Phase::Pretrain)?;
        let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet || !root)?;
        let scans = pretrain_scans(&dataset, &cfg)?;
        let job = Job {
            args,
            dp: dp.as_ref(),
            local_rank,
        };
        if !root {
            return job.train(None, &cfg, &dataset, &scans, None);
        }
        let out = c.out.clone().unwrap_or_else(|| default_out("pretrain"));
        // A run that fails before its first step leaves --out as it was.
        let created = RunDir::create(&out);
        if created.is_err() {
            job.agree(false, SETUP)?;
        }
        return created?.attempt(|run| {
            run.write_config(&cfg)?;
            job.train(Some(run), &cfg, &dataset, &scans, None)
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
    let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet || !root)?;
    resume::check(run.path(), &ckpt, &cfg, &dataset)?;
    let scans = pretrain_scans(&dataset, &cfg)?;
    let job = Job {
        args,
        dp: dp.as_ref(),
        local_rank,
    };
    job.train(root.then_some(&run), &cfg, &dataset, &scans, Some(&ckpt))
}

/// What [`Job::agree`] confirms: every rank's first collective.
const SETUP: &str = "the setup (run directory, GPU, model)";

/// One process's part of a pretraining run.
struct Job<'a> {
    args: &'a PretrainArgs,
    dp: Option<&'a DataParallel>,
    local_rank: usize,
}

impl Job<'_> {
    /// All ranks stop if one failed its setup (`dist::agree`).
    fn agree(&self, ok: bool, what: &str) -> anyhow::Result<()> {
        if let Some(dp) = self.dp {
            stptf::dist::agree(dp.0.as_ref(), ok, what)?;
        }
        Ok(())
    }

    /// Trains; `run` is None on the ranks other than 0.
    fn train(
        &self,
        run: Option<&RunDir>,
        cfg: &Config,
        dataset: &Arc<Dataset>,
        scans: &[usize],
        resumed: Option<&checkpoint::Checkpoint>,
    ) -> anyhow::Result<()> {
        let c = &self.args.common;
        let quiet = c.quiet || run.is_none();
        let setup = || -> anyhow::Result<(Gpu, Model)> {
            let gpu = open_gpu_for_local_rank(quiet && self.dp.is_none(), self.local_rank)?;
            check_sizes(&gpu, cfg, dataset, &[Phase::Pretrain])?;
            let model = match resumed {
                Some(ckpt) => {
                    Model::from_host(&gpu, cfg.model.clone(), data_dims(dataset), &ckpt.weights)
                        .with_context(|| match run {
                            Some(run) => format!("cannot resume {}", run.path().display()),
                            None => "cannot resume".to_string(),
                        })?
                }
                None => Model::new(&gpu, cfg.model.clone(), data_dims(dataset), cfg.seed)?,
            };
            Ok((gpu, model))
        };
        let setup = setup();
        self.agree(setup.is_ok(), SETUP)?;
        let (gpu, model) = setup?;
        if let Some(dp) = self.dp {
            if run.is_some() {
                eprintln!(
                    "data-parallel: {} ranks, pretrain.batch {} = {} scans per rank",
                    dp.0.size(),
                    cfg.pretrain.batch,
                    cfg.pretrain.batch / dp.0.size().max(1)
                );
            }
        }
        let opts = RunOptions {
            quiet,
            run: run.cloned(),
            stop_after_epochs: self.args.stop_after_epochs,
            validation: Vec::new(),
            data_parallel: self.dp.cloned(),
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
        let Some(run) = run else {
            return Ok(());
        };
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
        if let Some(dp) = self.dp {
            println!(
                "data-parallel: rank 0 sent {} bytes into collectives",
                dp.0.bytes_communicated()
            );
        }
        Ok(())
    }
}
