//! `stptf predict`: label scans with a fine-tuned model (CSV: id, predicted
//! class, class probabilities). Refuses a model that cannot give meaningful
//! predictions (a pretraining checkpoint, non-finite weights) and never
//! replaces a file unless asked (`--force`), nor writes into the checkpoint
//! or the input data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;

use stptf::data::Dataset;
use stptf::model::Model;
use stptf::train::checkpoint::{self, Checkpoint};
use stptf::train::protocol::{data_dims, read_dataset_description};
use stptf::train::trainer::score_scans;

use super::common::{checkpoint_dir, open_gpu};

#[derive(Args)]
pub struct PredictArgs {
    /// A fine-tuning run directory (or its checkpoint directory).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset description of the scans to label (TOML; docs/data.md).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Data directory, replacing the description's `data_dir`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output CSV [default: predictions.csv in the model's run directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `path` made absolute without requiring it to exist: its nearest existing
/// ancestor canonicalized, the rest appended.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            return rest.iter().rev().fold(canonical, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses an output path inside a protected folder, equal to a protected
/// file, or already existing (unless `force`).
pub(super) fn check_output(
    out: &Path,
    force: bool,
    protected: &[(&str, &Path)],
) -> anyhow::Result<()> {
    let target = resolved(out);
    for (what, path) in protected {
        let path = resolved(path);
        if target == path || target.starts_with(&path) {
            bail!(
                "refusing to write {}: it is inside the {what} {}; pass --out with a path outside it",
                out.display(),
                path.display()
            );
        }
    }
    if target.is_dir() {
        bail!("--out {} is a directory; give a file name", out.display());
    }
    if out.symlink_metadata().is_ok() && !force {
        bail!(
            "{} already exists; pass --force to replace it, or choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// The checkpoint `--model` names, if it is a fine-tuned one.
/// Loads the dataset, opens the GPU and builds the fine-tuned model from the
/// checkpoint's weights (shared by `predict` and `explain`), naming the
/// dataset description or the checkpoint when either does not fit.
pub(super) fn open_dataset_and_model(
    dataset_path: &Path,
    description: &stptf::data::DatasetConfig,
    dir: &Path,
    ckpt: &Checkpoint,
) -> anyhow::Result<(Arc<Dataset>, stptf::gpu::Gpu, Model)> {
    let cfg = &ckpt.meta.config;
    let dataset = Arc::new(Dataset::load(description).with_context(|| {
        format!(
            "cannot load the dataset described by {}",
            dataset_path.display()
        )
    })?);
    let gpu = open_gpu(true)?;
    let model = Model::from_host(&gpu, cfg.model.clone(), data_dims(&dataset), &ckpt.weights)
        .with_context(|| {
            format!(
                "the model in {} does not fit this dataset ({} regions, {} classes)",
                dir.display(),
                dataset.n_regions,
                dataset.num_classes()
            )
        })?;
    Ok((dataset, gpu, model))
}

pub(super) fn load_finetuned(model: &Path) -> anyhow::Result<(PathBuf, Checkpoint)> {
    let not_finetuned = |what: &str| {
        anyhow::anyhow!(
            "{what} is a pretraining checkpoint: its classification head was never trained. \
             Fine-tune it first (stptf finetune --from {}) and pass that run to --model",
            model.display()
        )
    };
    if !model.join("checkpoint-finetune").exists() && model.join("checkpoint-pretrain").is_dir() {
        return Err(not_finetuned(&format!(
            "{} holds only checkpoint-pretrain, which",
            model.display()
        )));
    }
    let dir = checkpoint_dir(model, "finetune");
    let ckpt = checkpoint::load(&dir)
        .with_context(|| format!("loading the fine-tuned model {}", dir.display()))?;
    if ckpt.meta.phase != "finetune" {
        return Err(not_finetuned(&dir.display().to_string()));
    }
    for t in &ckpt.weights {
        let bad = t.data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            bail!(
                "the model in {} has non-finite weights: {bad} of {} values of `{}` are NaN or infinite; \
                 its predictions would be meaningless (retrain it, e.g. with a lower finetune.lr)",
                dir.display(),
                t.data.len(),
                t.name
            );
        }
    }
    Ok((dir, ckpt))
}

pub fn run(args: &PredictArgs) -> anyhow::Result<()> {
    let (dir, ckpt) = load_finetuned(&args.model)?;
    let cfg = ckpt.meta.config.clone();
    let description = read_dataset_description(&args.dataset, args.data.as_deref())?;
    let data_dir = description.data_dir();
    // The run directory (the checkpoint's parent) by default, never the checkpoint itself.
    let out = args.out.clone().unwrap_or_else(|| {
        dir.parent()
            .unwrap_or_else(|| Path::new("."))
            .join("predictions.csv")
    });
    check_output(
        &out,
        args.force,
        &[
            ("checkpoint directory", &dir),
            ("data directory", &data_dir),
            ("dataset description", &args.dataset),
        ],
    )?;
    let (dataset, gpu, model) = open_dataset_and_model(&args.dataset, &description, &dir, &ckpt)?;
    let scans: Vec<usize> = (0..dataset.scans.len()).collect();
    let probs = score_scans(&gpu, &model, &dataset, &scans, &cfg)?;
    let mut csv = String::from("id,predicted");
    for name in &dataset.class_names {
        csv.push_str(&format!(",p_{name}"));
    }
    csv.push('\n');
    for (s, p) in scans.iter().zip(&probs) {
        let best = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        csv.push_str(&format!(
            "{},{}",
            dataset.scans[*s].id, dataset.class_names[best]
        ));
        for v in p {
            csv.push_str(&format!(",{v:.6}"));
        }
        csv.push('\n');
    }
    stptf::train::atomic::write(&out, csv.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{} predictions written to {}", probs.len(), out.display());
    Ok(())
}
