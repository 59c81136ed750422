//! What the training subcommands share: the experiment flags, loading the
//! resolved config, opening the GPU, run-directory names.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use stptf::config::Config;
use stptf::gpu::Gpu;
use stptf::train::trainer::PhaseReport;

/// The experiment used when no `--config` is given: a small model that
/// pretrains in a few minutes on lavapipe.
const QUICK_CONFIG: &str = include_str!("../../assets/synthetic_quick.toml");

/// Options shared by every command that trains.
#[derive(Args, Clone)]
pub struct CommonArgs {
    /// Experiment config (TOML; see assets/default.toml). Default: the small
    /// synthetic-data experiment of assets/synthetic_quick.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset description (TOML; docs/data.md), replacing the config's `data.dataset`.
    /// With neither, a synthetic dataset with planted class differences is generated in memory.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Data directory, replacing the dataset description's `data_dir`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory to create (must not exist or be empty) [default: runs/<command>-NNN].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed, replacing the config's.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override a config key, e.g. `--set pretrain.lr=3e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The resolved config, with overrides applied and validated.
pub fn load_config(args: &CommonArgs) -> anyhow::Result<Config> {
    let cfg = match &args.config {
        // ConfigError names the file already; a context would repeat it.
        Some(path) => Config::from_file(path)?,
        None => Config::from_toml_str(QUICK_CONFIG, Path::new("assets/synthetic_quick.toml"))?,
    };
    apply_overrides(cfg, args)
}

/// `cfg` with `--set`, `--seed` and `--dataset` applied, validated.
pub fn apply_overrides(mut cfg: Config, args: &CommonArgs) -> anyhow::Result<Config> {
    for assignment in &args.set {
        cfg.apply_assignment(assignment)?;
    }
    if let Some(seed) = args.seed {
        cfg.seed = seed;
    }
    if let Some(ds) = &args.dataset {
        cfg.data.dataset = Some(ds.clone());
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `runs/<command>-NNN`, the first that does not exist.
pub fn default_out(command: &str) -> PathBuf {
    (1..)
        .map(|i| PathBuf::from(format!("runs/{command}-{i:03}")))
        .find(|p| !p.exists())
        .expect("an unused run directory name")
}

pub fn open_gpu(quiet: bool) -> anyhow::Result<Gpu> {
    open_gpu_for_local_rank(quiet, 0)
}

/// [`open_gpu`] for the `local_rank`-th rank on this machine (its own GPU
/// where there are enough, `gpu::device::open_for_local_rank`).
pub fn open_gpu_for_local_rank(quiet: bool, local_rank: usize) -> anyhow::Result<Gpu> {
    let gpu = Gpu::for_local_rank(local_rank).context("opening the GPU")?;
    if !quiet {
        eprintln!(
            "GPU: {} ({:?})",
            gpu.report.info.name, gpu.report.info.backend
        );
    }
    Ok(gpu)
}

/// A checkpoint directory from a run directory or a checkpoint directory.
pub fn checkpoint_dir(path: &Path, phase: &str) -> PathBuf {
    let nested = path.join(format!("checkpoint-{phase}"));
    if nested.is_dir() {
        nested
    } else {
        path.to_path_buf()
    }
}

pub fn print_report(report: &PhaseReport, quiet: bool) {
    if quiet {
        return;
    }
    let first = report.losses.first().map_or(f64::NAN, |l| l.1);
    let last = report.losses.last().map_or(f64::NAN, |l| l.1);
    eprintln!(
        "{}: {} steps in {:.1} s ({:.1} scans/s), loss {first:.4} -> {last:.4}",
        report.phase, report.steps, report.seconds, report.scans_per_s
    );
}

/// This process's place in a data-parallel job (`stptf::dist`): None when
/// no MPI launcher started it, or started it alone; else the collective
/// and the rank's index among the ranks on this machine.
pub fn data_parallel() -> anyhow::Result<Option<(stptf::dist::DataParallel, usize)>> {
    let size = match stptf::dist::launched_size() {
        None | Some(0 | 1) => return Ok(None),
        Some(size) => size,
    };
    #[cfg(feature = "mpi")]
    {
        let _ = size;
        let world = stptf::dist::mpi::MpiWorld::init().context("starting MPI")?;
        let local_rank = world.local_rank();
        Ok(Some((
            stptf::dist::DataParallel(std::rc::Rc::new(world)),
            local_rank,
        )))
    }
    #[cfg(not(feature = "mpi"))]
    anyhow::bail!(
        "an MPI launcher started this process as one of {size} ranks, but this stptf was built \
         without MPI, so each rank would train alone and race for the same run directory; \
         rebuild with `cargo build --release --features mpi` (needs libopenmpi-dev), or run \
         one process"
    )
}
