//! `stptf pretrain`, `finetune`, `evaluate` and `predict`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use stptf::config::{Config, SplitKind};
use stptf::data::split::{leave_site_out, stratified_subject_kfold, subsample_labeled};
use stptf::data::synth::{generate, SynthConfig};
use stptf::data::Dataset;
use stptf::gpu::Gpu;
use stptf::model::{DataDims, Model};
use stptf::train::metrics::{format_table, roc_curve, FoldMetrics, Scores, Summary};
use stptf::train::plots::{importance_svg, loss_curve_svg, roc_svg, RocCurve, Series};
use stptf::train::rundir::RunDir;
use stptf::train::trainer::{score_scans, train_phase, Phase, PhaseReport, RunOptions};
use stptf::train::{checkpoint, resume};

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

#[derive(Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Continue an interrupted run from its directory's last checkpoint, with
    /// the config and data it started with (any difference is refused).
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs (the checkpoint allows `--resume` later).
    #[arg(long)]
    pub stop_after_epochs: Option<u64>,
}

#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// A pretraining run directory or checkpoint directory; without it the
    /// model starts from random weights (supervised from scratch).
    #[arg(long)]
    pub from: Option<PathBuf>,
}

#[derive(Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

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
}

/// The resolved config, with overrides applied and validated.
fn load_config(args: &CommonArgs) -> anyhow::Result<Config> {
    let cfg = match &args.config {
        Some(path) => Config::from_file(path)
            .with_context(|| format!("reading the experiment config {}", path.display()))?,
        None => Config::from_toml_str(QUICK_CONFIG, Path::new("assets/synthetic_quick.toml"))?,
    };
    apply_overrides(cfg, args)
}

/// `cfg` with `--set`, `--seed` and `--dataset` applied, validated.
fn apply_overrides(mut cfg: Config, args: &CommonArgs) -> anyhow::Result<Config> {
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

/// The dataset named by the config, or an in-memory synthetic one.
fn load_dataset(cfg: &Config, data: Option<&Path>, quiet: bool) -> anyhow::Result<Arc<Dataset>> {
    let dataset = match &cfg.data.dataset {
        Some(path) => Dataset::from_config_file(path, data)
            .with_context(|| format!("cannot load the dataset described by {}", path.display()))?,
        None => {
            let synth = SynthConfig {
                scans: 128,
                regions: 16,
                length: 96,
                classes: 2,
                seed: cfg.seed,
                difficulty: 0.2,
            };
            if !quiet {
                eprintln!(
                    "no dataset given (--dataset or data.dataset): using a synthetic one, {} scans x {} regions x {} frames, {} classes (stptf synth writes the same to disk)",
                    synth.scans, synth.regions, synth.length, synth.classes
                );
            }
            let (arrays, labels) = generate(&synth);
            let names = (0..synth.classes).map(|c| format!("class{c}")).collect();
            Dataset::from_arrays(arrays, labels, names, cfg.model.crop)?
        }
    };
    if dataset.crop_length != cfg.model.crop {
        log::debug!(
            "crop length: dataset {} frames, model {}; the model's is used",
            dataset.crop_length,
            cfg.model.crop
        );
    }
    Ok(Arc::new(dataset))
}

/// `runs/<command>-NNN`, the first that does not exist.
fn default_out(command: &str) -> PathBuf {
    (1..)
        .map(|i| PathBuf::from(format!("runs/{command}-{i:03}")))
        .find(|p| !p.exists())
        .expect("an unused run directory name")
}

fn open_gpu(quiet: bool) -> anyhow::Result<Gpu> {
    let gpu = Gpu::new().context("opening the GPU")?;
    if !quiet {
        eprintln!(
            "GPU: {} ({:?})",
            gpu.report.info.name, gpu.report.info.backend
        );
    }
    Ok(gpu)
}

fn dims(dataset: &Dataset) -> DataDims {
    DataDims {
        n_regions: dataset.n_regions,
        n_classes: dataset.num_classes(),
    }
}

fn write_loss_plot(run: &RunDir, report: &PhaseReport) -> anyhow::Result<()> {
    let points: Vec<(f64, f64)> = report.losses.iter().map(|&(s, l)| (s as f64, l)).collect();
    let svg = loss_curve_svg(
        &format!("{} loss", report.phase),
        &[Series {
            label: &report.phase,
            points: &points,
        }],
        false,
    );
    run.write_text(&format!("loss_{}.svg", report.phase), &svg)?;
    Ok(())
}

fn print_report(report: &PhaseReport, quiet: bool) {
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

/// Per-region importance: the norm of the learned fusion weights that carry
/// each region's F channels into Z_spatial (rows n·F .. (n+1)·F of
/// `fusion.proj.weight`), written as a bar chart and a CSV.
fn write_region_importance(gpu: &Gpu, model: &Model, run: &RunDir) -> anyhow::Result<()> {
    let Ok(id) = model.params.id("fusion.proj.weight") else {
        return Ok(()); // ablation encoders without the fusion projection
    };
    let w = gpu.read(&model.params.store.get(id).value)?;
    let (n, f) = (model.dims.n_regions, model.cfg.node_channels);
    let cols = w.len() / (n * f).max(1);
    let norms: Vec<f64> = (0..n)
        .map(|r| {
            w[r * f * cols..(r + 1) * f * cols]
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let names: Vec<String> = (1..=n).map(|r| format!("region {r}")).collect();
    run.write_text(
        "region_importance.svg",
        &importance_svg(
            "Per-region weight into Z_spatial (L2 norm)",
            &names,
            &norms,
            20,
        ),
    )?;
    let csv: String = std::iter::once("region,importance\n".to_string())
        .chain(
            norms
                .iter()
                .enumerate()
                .map(|(r, v)| format!("{},{v:.6}\n", r + 1)),
        )
        .collect();
    run.write_text("region_importance.csv", &csv)?;
    Ok(())
}

pub fn pretrain(args: &PretrainArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let Some(dir) = &args.resume else {
        let cfg = load_config(c)?;
        let out = c.out.clone().unwrap_or_else(|| default_out("pretrain"));
        let run = RunDir::create(&out)?;
        let result = run_pretrain(args, &run, &cfg, None);
        // A run that failed before training (bad data, a batch too large)
        // leaves nothing behind, so the same --out can be used again.
        if result.is_err() && run.remove_if_unstarted() {
            log::debug!("removed the unstarted run directory {}", out.display());
        }
        return result;
    };
    let context = || format!("cannot resume {}", dir.display());
    let ckpt = checkpoint::load_for_phase(dir, "pretrain").with_context(context)?;
    let run = RunDir::open(dir)?;
    // The config the run started with, or the one --config names; either
    // way with --set, --seed and --dataset applied. `resume::check` refuses
    // any difference from the checkpoint's.
    let cfg = match &c.config {
        Some(_) => load_config(c)?,
        None => apply_overrides(
            resume::recorded_config(&run, &ckpt).with_context(context)?,
            c,
        )?,
    };
    run_pretrain(args, &run, &cfg, Some(&ckpt))
}

fn run_pretrain(
    args: &PretrainArgs,
    run: &RunDir,
    cfg: &Config,
    resumed: Option<&checkpoint::Checkpoint>,
) -> anyhow::Result<()> {
    let c = &args.common;
    let dataset = load_dataset(cfg, c.data.as_deref(), c.quiet)?;
    if let Some(ckpt) = resumed {
        resume::check(run.path(), ckpt, cfg, &dataset)?;
    }
    if resumed.is_none() {
        run.write_config(cfg)?;
    }
    let gpu = open_gpu(c.quiet)?;
    let model = match resumed {
        Some(ckpt) => Model::from_host(&gpu, cfg.model.clone(), dims(&dataset), &ckpt.weights)
            .with_context(|| format!("cannot resume {}", run.path().display()))?,
        None => Model::new(&gpu, cfg.model.clone(), dims(&dataset), cfg.seed)?,
    };
    let scans: Vec<usize> = (0..dataset.scans.len()).collect();
    let opts = RunOptions {
        quiet: c.quiet,
        run: Some(run.clone()),
        stop_after_epochs: args.stop_after_epochs,
    };
    let report = train_phase(
        &gpu,
        &model,
        &dataset,
        &scans,
        cfg,
        Phase::Pretrain,
        resumed,
        &opts,
    )?;
    write_loss_plot(run, &report)?;
    run.write_summary(&report)?;
    print_report(&report, c.quiet);
    println!("checkpoint: {}", run.file("checkpoint-pretrain").display());
    println!("metrics:    {}", run.file("metrics.jsonl").display());
    Ok(())
}

pub fn finetune(args: &FinetuneArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let cfg = load_config(c)?;
    let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet)?;
    let gpu = open_gpu(c.quiet)?;
    let model = match &args.from {
        Some(from) => {
            let ckpt = checkpoint::load_for_phase(from, "pretrain").with_context(|| {
                format!(
                    "loading the pretrained checkpoint --from {}",
                    from.display()
                )
            })?;
            let dir = from;
            Model::from_host(&gpu, cfg.model.clone(), dims(&dataset), &ckpt.weights).with_context(
                || {
                    format!(
                        "the checkpoint {} does not fit this config and dataset",
                        dir.display()
                    )
                },
            )?
        }
        None => Model::new(&gpu, cfg.model.clone(), dims(&dataset), cfg.seed)?,
    };
    let out = c.out.clone().unwrap_or_else(|| default_out("finetune"));
    let run = RunDir::create(&out)?;
    run.write_config(&cfg)?;
    let all: Vec<usize> = (0..dataset.scans.len()).collect();
    let labels = dataset.labels();
    let subjects = dataset.subjects();
    let scans = subsample_labeled(
        &all,
        &labels,
        &subjects,
        cfg.finetune.label_fraction,
        cfg.seed,
    )?;
    let opts = RunOptions {
        quiet: c.quiet,
        run: Some(run.clone()),
        stop_after_epochs: None,
    };
    let report = train_phase(
        &gpu,
        &model,
        &dataset,
        &scans,
        &cfg,
        Phase::Finetune,
        None,
        &opts,
    )?;
    write_loss_plot(&run, &report)?;
    write_region_importance(&gpu, &model, &run)?;
    run.write_summary(&report)?;
    print_report(&report, c.quiet);
    println!("checkpoint: {}", run.file("checkpoint-finetune").display());
    Ok(())
}

#[derive(serde::Serialize)]
struct FoldRecord {
    fold: String,
    train_scans: usize,
    pretrain_scans: usize,
    finetune_scans: usize,
    test_scans: usize,
    metrics: FoldMetrics,
    pretrain_seconds: f64,
    finetune_seconds: f64,
    eval_seconds: f64,
}

pub fn evaluate(args: &EvaluateArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let cfg = load_config(c)?;
    let dataset = load_dataset(&cfg, c.data.as_deref(), c.quiet)?;
    let gpu = open_gpu(c.quiet)?;
    let out = c.out.clone().unwrap_or_else(|| default_out("evaluate"));
    let run = RunDir::create(&out)?;
    run.write_config(&cfg)?;
    let started = Instant::now();
    let labels = dataset.labels();
    let subjects = dataset.subjects();
    let folds = match cfg.evaluate.split {
        SplitKind::Stratified => {
            stratified_subject_kfold(&labels, &subjects, cfg.evaluate.folds, cfg.seed)?
        }
        SplitKind::LeaveSiteOut => leave_site_out(&labels, &dataset.sites())?,
    };
    let mut records = Vec::new();
    let mut curves = Vec::new();
    for (i, fold) in folds.iter().enumerate() {
        let fold_run = run.fold(&fold.name)?;
        let fold_seed = cfg.seed.wrapping_add(i as u64);
        let model = Model::new(&gpu, cfg.model.clone(), dims(&dataset), fold_seed)?;
        let mut fold_cfg = cfg.clone();
        fold_cfg.seed = fold_seed;
        // Pretraining sees only the training folds' scans unless the test
        // scans (unlabeled) are explicitly allowed in.
        let mut pre_scans = fold.train.clone();
        if cfg.evaluate.include_test_unlabeled {
            pre_scans.extend(&fold.test);
        }
        let opts = RunOptions {
            quiet: c.quiet,
            run: Some(fold_run.clone()),
            stop_after_epochs: None,
        };
        let pre = if cfg.pretrain.epochs > 0 {
            let r = train_phase(
                &gpu,
                &model,
                &dataset,
                &pre_scans,
                &fold_cfg,
                Phase::Pretrain,
                None,
                &opts,
            )?;
            write_loss_plot(&fold_run, &r)?;
            Some(r)
        } else {
            None
        };
        let ft_scans = subsample_labeled(
            &fold.train,
            &labels,
            &subjects,
            cfg.finetune.label_fraction,
            fold_seed,
        )?;
        let ft = train_phase(
            &gpu,
            &model,
            &dataset,
            &ft_scans,
            &fold_cfg,
            Phase::Finetune,
            None,
            &opts,
        )?;
        write_loss_plot(&fold_run, &ft)?;
        write_region_importance(&gpu, &model, &fold_run)?;
        let t0 = Instant::now();
        let probs = score_scans(&gpu, &model, &dataset, &fold.test, &fold_cfg)?;
        let eval_seconds = t0.elapsed().as_secs_f64();
        let flat: Vec<f64> = probs.iter().flatten().copied().collect();
        let test_labels: Vec<u32> = fold.test.iter().map(|&s| labels[s]).collect();
        let metrics =
            FoldMetrics::compute(Scores::new(&flat, dataset.num_classes())?, &test_labels)
                .with_context(|| format!("scoring fold {}", fold.name))?;
        if dataset.num_classes() == 2 {
            let pos: Vec<f64> = probs.iter().map(|p| p[1]).collect();
            let positive: Vec<bool> = test_labels.iter().map(|&l| l == 1).collect();
            curves.push(RocCurve {
                label: fold.name.clone(),
                points: roc_curve(&pos, &positive)?,
                auc: metrics.auc,
            });
        }
        let record = FoldRecord {
            fold: fold.name.clone(),
            train_scans: fold.train.len(),
            pretrain_scans: if pre.is_some() { pre_scans.len() } else { 0 },
            finetune_scans: ft_scans.len(),
            test_scans: fold.test.len(),
            metrics,
            pretrain_seconds: pre.as_ref().map_or(0.0, |r| r.seconds),
            finetune_seconds: ft.seconds,
            eval_seconds,
        };
        fold_run.write_json("metrics.json", &record)?;
        if !c.quiet {
            eprintln!(
                "fold {}: accuracy {:.1} %, AUC {:.1} %, recall {:.1} %",
                fold.name,
                100.0 * metrics.accuracy,
                100.0 * metrics.auc,
                100.0 * metrics.recall
            );
        }
        records.push(record);
    }
    let summary = Summary::from_folds(&records.iter().map(|r| r.metrics).collect::<Vec<_>>())?;
    let wall = started.elapsed().as_secs_f64();
    let doc = serde_json::json!({
        "accuracy": summary.accuracy,
        "auc": summary.auc,
        "recall": summary.recall,
        "folds": records,
        "seed": cfg.seed,
        "wall_seconds": wall,
        "adapter": gpu.report.info.name,
        "data_fingerprint": checkpoint::data_fingerprint(&dataset),
    });
    run.write_summary(&doc)?;
    if !curves.is_empty() {
        run.write_text("roc.svg", &roc_svg("ROC per fold", &curves))?;
    }
    println!("{}", format_table(&[("STPTF", &summary)]));
    println!("run directory: {} ({wall:.0} s)", run.path().display());
    Ok(())
}

pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let dir = &args.model;
    let ckpt = checkpoint::load_for_phase(dir, "finetune")
        .with_context(|| format!("loading the fine-tuned model --model {}", dir.display()))?;
    let cfg = ckpt.meta.config.clone();
    let dataset = Arc::new(
        Dataset::from_config_file(&args.dataset, args.data.as_deref()).with_context(|| {
            format!(
                "cannot load the dataset described by {}",
                args.dataset.display()
            )
        })?,
    );
    let gpu = open_gpu(true)?;
    let model = Model::from_host(&gpu, cfg.model.clone(), dims(&dataset), &ckpt.weights)
        .with_context(|| {
            format!(
                "the model in {} does not fit this dataset ({} regions, {} classes)",
                dir.display(),
                dataset.n_regions,
                dataset.num_classes()
            )
        })?;
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
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.model.join("predictions.csv"));
    stptf::train::atomic::write(&out, csv.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{} predictions written to {}", probs.len(), out.display());
    Ok(())
}
