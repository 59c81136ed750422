use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use stptf::data::Dataset;

#[derive(Args)]
pub struct InspectArgs {
    /// Dataset description (TOML; schema in docs/data.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Data directory, replacing the description's `data_dir`.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dataset =
        Dataset::from_config_file(&args.config, args.data.as_deref()).with_context(|| {
            format!(
                "cannot load the dataset described by {}",
                args.config.display()
            )
        })?;
    print!("{}", dataset.summary());
    println!("loaded in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}
