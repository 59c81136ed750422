//! `stptf bench`: the kernel benchmarks of `cargo bench`, from the installed binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use stptf::gpu::Gpu;

#[derive(Args)]
pub struct BenchArgs {
    /// Only cases whose name contains this text (e.g. "matmul").
    #[arg(long)]
    pub filter: Option<String>,
    /// Timed samples per case (each of 3 runs, after 2 warm-up runs); the median is reported.
    #[arg(long, default_value_t = 7)]
    pub samples: usize,
    /// Also write the measurements as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    let gpu = Gpu::new().context("opening the GPU")?;
    let rows = stptf::bench::run_kernels(&gpu, args.filter.as_deref(), args.samples)?;
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "adapter": gpu.report.info.name,
            "backend": format!("{:?}", gpu.report.info.backend),
            "driver": format!("{} {}", gpu.report.info.driver, gpu.report.info.driver_info),
            "measurements": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
