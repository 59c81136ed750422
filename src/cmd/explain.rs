//! `stptf explain`: occlusion importance of regions and of segments of time,
//! per class, for a fine-tuned model on a dataset (`train::explain`). Writes
//! the files of `explain::explanation_file_names` (importance.json, the
//! region / time / cell CSVs, a ranked bar chart, the region x time heatmap
//! and, when the dataset has a region table with coordinates, a glass brain)
//! into `--out`, never replacing a file unless `--force`; when the dataset is
//! synthetic (a `planted.json` beside the description), also prints how many
//! of the top regions are the planted ones.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use stptf::data::synth::{Planted, PLANTED_FILE};
use stptf::train::explain::{
    explain_scans, explanation_file_names, explanation_files, precision_at_k, ranked_regions,
    stratified_subset, ExplainOptions, Perturbation,
};
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
    /// Explain at most this many scans, a class-stratified subset drawn with
    /// the model's seed; 0 = all [default: the model config's explain.max_scans].
    #[arg(long)]
    pub max_scans: Option<usize>,
    /// Also occlude each region within each segment (N x K more forwards per
    /// batch) [default: the model config's explain.heatmap].
    #[arg(long)]
    pub heatmap: Option<bool>,
    /// How an occluded region's frames are replaced: shuffle, zero, shift or
    /// noise [default: the model config's explain.perturbation].
    #[arg(long, value_parser = parse_perturbation)]
    pub perturbation: Option<Perturbation>,
    /// Random perturbations averaged per occlusion, >= 1 [default: the model
    /// config's explain.draws].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub draws: Option<u64>,
}

fn parse_perturbation(text: &str) -> Result<Perturbation, String> {
    Perturbation::parse(text)
        .ok_or_else(|| format!("found \"{text}\"; expected one of shuffle, zero, shift, noise"))
}

pub fn run(args: &ExplainArgs) -> anyhow::Result<()> {
    let (dir, ckpt) = load_finetuned(&args.model)?;
    let mut cfg = ckpt.meta.config.clone();
    if let Some(v) = args.max_scans {
        cfg.explain.max_scans = v;
    }
    if let Some(v) = args.heatmap {
        cfg.explain.heatmap = v;
    }
    if let Some(v) = args.perturbation {
        cfg.explain.perturbation = v;
    }
    if let Some(v) = args.draws {
        cfg.explain.draws = v as usize;
    }
    let description = read_dataset_description(&args.dataset, args.data.as_deref())?;
    let data_dir = description.data_dir();
    let out = args.out.clone().unwrap_or_else(|| {
        dir.parent()
            .unwrap_or_else(|| Path::new("."))
            .join("explain")
    });
    // Every file is checked before anything is computed or written. The
    // region table is read only when the dataset loads, so the glass brain's
    // name is checked whenever a table is named, coordinates or not.
    let file_names = explanation_file_names(cfg.explain.heatmap, description.regions.is_some());
    for name in &file_names {
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
    let all: Vec<usize> = (0..dataset.scans.len()).collect();
    let scans = stratified_subset(&dataset, &all, cfg.explain.max_scans, cfg.seed);
    let options = ExplainOptions::from_config(&cfg.explain);
    let explanation = explain_scans(&gpu, &model, &dataset, &scans, &cfg, &options)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for (name, text) in explanation_files(&explanation) {
        let path = out.join(name);
        stptf::train::atomic::write(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(name);
    }
    let importance = &explanation.importance;
    let ranked = ranked_regions(importance);
    let top: Vec<&str> = ranked
        .iter()
        .take(10)
        .map(|&r| explanation.region_names[r].as_str())
        .collect();
    println!(
        "explained {} of {} scans (accuracy {:.2} from the intact crops; perturbation {}); top regions {:?}; written to {}: {}",
        scans.len(),
        dataset.scans.len(),
        importance.accuracy,
        importance.perturbation.name(),
        top,
        out.display(),
        written.join(", ")
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
