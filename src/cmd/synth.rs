use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use stptf::data::synth::{write_dataset, SynthConfig};

#[derive(Args)]
pub struct SynthArgs {
    /// Folder to create (must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = SynthConfig::default().scans)]
    pub scans: usize,
    #[arg(long, default_value_t = SynthConfig::default().regions)]
    pub regions: usize,
    /// Frames per scan.
    #[arg(long, default_value_t = SynthConfig::default().length)]
    pub length: usize,
    #[arg(long, default_value_t = SynthConfig::default().classes)]
    pub classes: usize,
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    pub seed: u64,
    /// Noise level in [0, 1]: 0 clean, 1 noise well above the planted signal.
    #[arg(long, default_value_t = SynthConfig::default().difficulty)]
    pub difficulty: f64,
}

pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    let config = SynthConfig {
        scans: args.scans,
        regions: args.regions,
        length: args.length,
        classes: args.classes,
        seed: args.seed,
        difficulty: args.difficulty,
    };
    write_dataset(&args.out, &config)
        .with_context(|| format!("cannot write a synthetic dataset to {}", args.out.display()))?;
    println!(
        "wrote {} scans ({} regions x {} frames, {} classes) to {}; load it with --dataset {}",
        config.scans,
        config.regions,
        config.length,
        config.classes,
        args.out.display(),
        args.out.join("dataset.toml").display()
    );
    Ok(())
}
