use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

#[derive(Args)]
pub struct InspectArgs {
    /// Dataset description (TOML; schema in docs/data.md).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Data directory, replacing the description's `data_dir`.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dataset = stptf::train::protocol::load_dataset_file(&args.dataset, args.data.as_deref())?;
    print!("{}", dataset.summary());
    println!("loaded in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}
