//! `stptf explain`: occlusion importance of regions and of segments of time,
//! per class, for a fine-tuned model on a dataset (`train::explain`). Writes
//! `importance_regions.csv`, `importance_time.csv` and
//! `importance_regions.svg` into `--out`, never replacing a file unless
//! `--force`; when the dataset is synthetic (a `planted.json` beside the
//! description), also prints how many of the top regions are the planted ones.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use stptf::data::synth::{Planted, PLANTED_FILE};
use stptf::train::explain::{
    cells_csv, explain, precision_at_k, ranked_regions, region_scores, regions_csv, time_csv,
};
use stptf::train::plots::importance_svg;
use stptf::train::protocol::read_dataset_description;

use super::predict::{check_output, load_finetuned, open_dataset_and_model};

#[derive(Args)]
pub struct ExplainArgs {
    /// A fine-tuning run directory (or its checkpoint directory).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset description of the scans to explain (TOML; docs/data.md).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Data directory, replacing the description's `data_dir`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder [default: `explain` in the model's run directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace output files that exist.
    #[arg(long)]
    pub force: bool,
}

const FILES: [&str; 4] = [
    "importance_regions.csv",
    "importance_time.csv",
    "importance_regions.svg",
    "importance_cells.csv",
];

pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    let (dir, ckpt) = load_finetuned(&args.model)?;
    let cfg = ckpt.meta.config.clone();
    let description = read_dataset_description(&args.dataset, args.data.as_deref())?;
    let data_dir = description.data_dir();
    let out = args.out.clone().unwrap_or_else(|| {
        dir.parent()
            .unwrap_or_else(|| Path::new("."))
            .join("explain")
    });
    // Every file is checked before anything is computed or written.
    for name in FILES {
        check_output(
            &out.join(name),
            args.force,
            &[
                ("checkpoint directory", &dir),
                ("data directory", &data_dir),
                ("dataset description", &args.dataset),
            ],
        )?;
    }
    let (dataset, gpu, model) = open_dataset_and_model(&args.dataset, &description, &dir, &ckpt)?;
    let scans: Vec<usize> = (0..dataset.scans.len()).collect();
    let importance = explain(&gpu, &model, &dataset, &scans, &cfg, &Default::default())?;
    let names: Vec<String> = (0..dataset.n_regions)
        .map(|r| format!("region{r}"))
        .collect();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let svg = importance_svg(
        "Occlusion importance: drop in the own-class logit",
        &names,
        &region_scores(&importance),
        20,
    );
    for (name, text) in FILES.iter().zip([
        regions_csv(&importance, &names),
        time_csv(&importance),
        svg,
        cells_csv(&importance, &names),
    ]) {
        let path = out.join(name);
        stptf::train::atomic::write(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let ranked = ranked_regions(&importance);
    println!(
        "explained {} scans (accuracy {:.2} from the intact crops; perturbation {}); top regions {:?}; written to {}",
        scans.len(),
        importance.accuracy,
        importance.perturbation.name(),
        &ranked[..ranked.len().min(10)],
        out.display()
    );
    let planted_path = args
        .dataset
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(PLANTED_FILE);
    if let Ok(text) = std::fs::read_to_string(&planted_path) {
        let planted: Planted = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a planted-structure file", planted_path.display()))?;
        println!(
            "planted community {:?}: precision@{} = {:.2} (chance {:.2})",
            planted.community,
            planted.community.len(),
            precision_at_k(&ranked, &planted.community),
            planted.community.len() as f64 / dataset.n_regions.max(1) as f64
        );
    }
    Ok(())
}
