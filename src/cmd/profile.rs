//! `stptf profile`: one training step broken down by model stage and kernel
//! family, with GPU timestamps per dispatch (see `stptf::train::profile`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use stptf::train::profile::{self, Phase, ProfileOptions};

use super::common::{self, CommonArgs};

#[derive(Clone, Copy, ValueEnum)]
pub enum PhaseArg {
    Pretrain,
    Finetune,
}

#[derive(Args)]
pub struct ProfileArgs {
    /// Experiment config (TOML) whose model and objective are profiled
    /// [default: assets/synthetic_quick.toml].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set model.crop=64` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Which step to profile.
    #[arg(long, value_enum, default_value = "pretrain")]
    pub phase: PhaseArg,
    /// Regions per scan of the random input (the paper's 22; ABIDE's CC200 is 200).
    #[arg(long, default_value_t = 22)]
    pub regions: usize,
    /// Scans per step [default: the phase's configured batch].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Unprofiled timed steps after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Skip measuring the adapter's matmul and elementwise ceilings (a few seconds).
    #[arg(long)]
    pub no_ceiling: bool,
    /// Also write the profile as JSON to this file (must not exist).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: &ProfileArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.steps > 0, "--steps must be at least 1");
    if let Some(path) = &args.json {
        anyhow::ensure!(
            !path.exists(),
            "--json {}: the file exists; name a new one",
            path.display()
        );
    }
    let cfg = common::load_config(&CommonArgs {
        config: args.config.clone(),
        dataset: None,
        data: None,
        out: None,
        seed: None,
        set: args.set.clone(),
        quiet: false,
    })?;
    let phase = match args.phase {
        PhaseArg::Pretrain => Phase::Pretrain,
        PhaseArg::Finetune => Phase::Finetune,
    };
    let batch = args.batch.unwrap_or(match phase {
        Phase::Pretrain => cfg.pretrain.batch,
        Phase::Finetune => cfg.finetune.batch,
    });
    anyhow::ensure!(batch >= 2, "--batch must be at least 2, got {batch}");
    let regions = args.regions;
    anyhow::ensure!(regions >= 2, "--regions must be at least 2, got {regions}");
    let gpu = common::open_gpu(false)?;
    // Refused before anything is allocated, as in the training commands.
    let batch_key = match (args.batch, phase) {
        (Some(_), _) => "--batch",
        (None, Phase::Pretrain) => "pretrain.batch",
        (None, Phase::Finetune) => "finetune.batch",
    };
    let dims = stptf::model::DataDims {
        n_regions: regions,
        n_classes: 2,
    };
    let limits = stptf::model::sizes::Limits::of(&gpu);
    stptf::model::sizes::check(&cfg.model, dims, &[(batch_key, batch)], &limits)?;
    let opts = ProfileOptions {
        phase,
        batch,
        regions,
        steps: args.steps,
    };
    let mut p = profile::profile_step(&gpu, &cfg, &opts).context("profiling the step")?;
    if !args.no_ceiling {
        p.set_ceiling(profile::measure_ceiling(&gpu).context("measuring the ceiling")?);
    }
    profile::print(&p);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&p)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
