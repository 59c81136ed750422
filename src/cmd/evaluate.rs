//! `stptf evaluate`: the paper's cross-validation protocol
//! (`train::protocol::cross_validate`), printed in the paper's form.

use clap::Args;

use stptf::train::metrics::format_table;
use stptf::train::protocol::{check_evaluable, cross_validate, load_dataset};
use stptf::train::rundir::RunDir;

use super::common::{default_out, load_config, open_gpu, CommonArgs};

#[derive(Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(args: &EvaluateArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let cfg = load_config(c)?;
    // Refused before anything is written.
    check_evaluable(&cfg)?;
    let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet)?;
    let gpu = open_gpu(c.quiet)?;
    let out = c.out.clone().unwrap_or_else(|| default_out("evaluate"));
    let run = RunDir::create(&out)?;
    run.write_config(&cfg)?;
    let evaluation = cross_validate(&gpu, &dataset, &cfg, &run, c.quiet)?;
    println!("{}", format_table(&[("STPTF", &evaluation.summary)]));
    println!(
        "run directory: {} ({:.0} s)",
        run.path().display(),
        evaluation.wall_seconds
    );
    Ok(())
}
