use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use stptf::config::{Config, SplitKind};
use stptf::train::checkpoint::data_fingerprint;
use stptf::train::metrics::{format_table, roc_curve, FoldMetrics, Summary};
use stptf::train::plots::{roc_svg, RocCurve};
use stptf::train::protocol::{baseline_folds, run_baseline};
use stptf::train::rundir::RunDir;

#[derive(Args)]
pub struct BaselineArgs {
    /// Dataset description (TOML; schema in docs/data.md).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Data directory, replacing the description's `data_dir`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Experiment config (TOML; see assets/default.toml): its `seed`,
    /// `evaluate.folds`, `evaluate.split`, `data.finetune_sites`,
    /// `finetune.label_fraction`, `baseline.c_reg` and `baseline.features` are used, so the
    /// baseline is scored on the same folds and labels as `evaluate`.
    /// Default: assets/default.toml's values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set baseline.c_reg=0.1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Folds, replacing the config's `evaluate.folds`.
    #[arg(long)]
    pub folds: Option<usize>,
    /// Seed of the fold assignment, replacing the config's `seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Inverse L2 strength of the logistic regression (scikit-learn's C),
    /// replacing the config's `baseline.c_reg`.
    #[arg(long)]
    pub c_reg: Option<f64>,
    /// Run directory to create [default: runs/baseline-<dataset>-seed<seed>].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The experiment config of a baseline run: the file (or the defaults), then
/// `--set`, then the shorthand flags.
fn baseline_config(args: &BaselineArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        // ConfigError names the file already; a context would repeat it.
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    for assignment in &args.set {
        cfg.apply_assignment(assignment)?;
    }
    if let Some(seed) = args.seed {
        cfg.seed = seed;
    }
    if let Some(folds) = args.folds {
        cfg.evaluate.folds = folds;
    }
    if let Some(c_reg) = args.c_reg {
        cfg.baseline.c_reg = c_reg;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `config.toml` of a baseline run: everything needed to repeat it.
#[derive(Serialize)]
struct BaselineRun<'a> {
    method: &'static str,
    dataset_config: String,
    data_dir: Option<String>,
    dataset: &'a str,
    data_fingerprint: String,
    scans: usize,
    regions: usize,
    features: usize,
    split: &'static str,
    folds: usize,
    seed: u64,
    c_reg: f64,
    finetune_sites: Vec<String>,
    label_fraction: f64,
    version: &'static str,
}

#[derive(Serialize)]
struct FoldReport<'a> {
    fold: &'a str,
    train_scans: usize,
    test_scans: usize,
    #[serde(flatten)]
    metrics: FoldMetrics,
    lbfgs_iterations: usize,
    converged: bool,
    fit_seconds: f64,
}

#[derive(Serialize)]
struct Timings {
    load_seconds: f64,
    features_seconds: f64,
    folds_seconds: Vec<f64>,
    cross_validation_seconds: f64,
    total_seconds: f64,
}

pub fn run(args: &BaselineArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let cfg = baseline_config(args)?;
    let dataset = stptf::train::protocol::load_dataset_file(&args.dataset, args.data.as_deref())?;
    let load_seconds = started.elapsed().as_secs_f64();
    // The folds and labeled scans of `evaluate`: the baseline fits on exactly
    // the labels STPTF's fine-tuning sees.
    let folds = baseline_folds(&dataset, &cfg).context("cannot split the dataset into folds")?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("baseline-{}-seed{}", dataset.name, cfg.seed))
    });
    // Refuse an occupied run directory before spending time on the fit.
    let run_dir = RunDir::create(&out)?;

    let t = Instant::now();
    let outcome = run_baseline(&dataset, &cfg, &folds).context("the baseline failed")?;
    let results = outcome.results;
    let features_seconds = outcome.features_seconds;
    let cv_seconds = t.elapsed().as_secs_f64() - features_seconds;
    log::info!(
        "{} scans x {} {} features in {:.2} s",
        dataset.scans.len(),
        outcome.feature_width,
        cfg.baseline.features,
        features_seconds
    );

    let config = BaselineRun {
        method: cfg.baseline.features.describe(),
        dataset_config: args.dataset.display().to_string(),
        data_dir: args.data.as_ref().map(|d| d.display().to_string()),
        dataset: &dataset.name,
        data_fingerprint: data_fingerprint(&dataset),
        scans: dataset.scans.len(),
        regions: dataset.n_regions,
        features: outcome.feature_width,
        split: match cfg.evaluate.split {
            SplitKind::Stratified => "stratified subject-level k-fold",
            SplitKind::LeaveSiteOut => "leave-site-out",
        },
        folds: folds.len(),
        seed: cfg.seed,
        c_reg: cfg.baseline.c_reg,
        finetune_sites: cfg.data.finetune_sites.clone(),
        label_fraction: cfg.finetune.label_fraction,
        version: env!("CARGO_PKG_VERSION"),
    };
    run_dir.write_text(
        "config.toml",
        &toml::to_string(&config).context("cannot encode the run config")?,
    )?;
    let description = std::fs::read_to_string(&args.dataset)
        .with_context(|| format!("cannot read {}", args.dataset.display()))?;
    run_dir.write_text("dataset.toml", &description)?;

    let mut curves = Vec::new();
    for (fold, result) in folds.iter().zip(&results) {
        let dir = run_dir.fold(&fold.name)?;
        dir.write_json(
            "metrics.json",
            &FoldReport {
                fold: &fold.name,
                train_scans: fold.train.len(),
                test_scans: fold.test.len(),
                metrics: result.metrics,
                lbfgs_iterations: result.iterations,
                converged: result.converged,
                fit_seconds: result.fit_seconds,
            },
        )?;
        let mut csv = String::from("scan_id,subject,site,label");
        for name in &dataset.class_names {
            csv.push_str(&format!(",p_{name}"));
        }
        csv.push('\n');
        for (k, &scan) in result.test.iter().enumerate() {
            let s = &dataset.scans[scan];
            csv.push_str(&format!("{},{},{},{}", s.id, s.subject, s.site, s.label));
            for p in &result.probabilities[k * result.classes..(k + 1) * result.classes] {
                csv.push_str(&format!(",{p:.6}"));
            }
            csv.push('\n');
        }
        dir.write_text("predictions.csv", &csv)?;
        if result.classes == 2 {
            let scores: Vec<f64> = result
                .probabilities
                .iter()
                .skip(1)
                .step_by(2)
                .copied()
                .collect();
            let positive: Vec<bool> = result.labels.iter().map(|&l| l == 1).collect();
            curves.push(RocCurve {
                label: format!("fold {}", fold.name),
                points: roc_curve(&scores, &positive)?,
                auc: result.metrics.auc,
            });
        }
    }
    if !curves.is_empty() {
        run_dir.write_text(
            "roc.svg",
            &roc_svg(
                &format!("FC + logistic regression on {}", dataset.name),
                &curves,
            ),
        )?;
    }
    let fold_metrics: Vec<FoldMetrics> = results.iter().map(|r| r.metrics).collect();
    let summary = Summary::from_folds(&fold_metrics)?;
    run_dir.write_summary(&summary)?;
    let timings = Timings {
        load_seconds,
        features_seconds,
        folds_seconds: results.iter().map(|r| r.fit_seconds).collect(),
        cross_validation_seconds: cv_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    run_dir.write_json("timings.json", &timings)?;

    println!(
        "{}: {} scans, {} classes, {} folds, {} (seed {}), C = {}",
        dataset.name,
        dataset.scans.len(),
        dataset.num_classes(),
        folds.len(),
        config.split,
        cfg.seed,
        cfg.baseline.c_reg
    );
    print!(
        "{}",
        format_table(&[("FC + logistic regression", &summary)])
    );
    println!(
        "time: load {:.1} s, features {:.1} s, {} folds {:.1} s, total {:.1} s",
        load_seconds,
        features_seconds,
        results.len(),
        cv_seconds,
        timings.total_seconds
    );
    println!("wrote {}", run_dir.path().display());
    Ok(())
}
