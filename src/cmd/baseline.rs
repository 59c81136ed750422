use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use stptf::data::split::stratified_subject_kfold;
use stptf::data::Dataset;
use stptf::train::baseline::{evaluate_on_features, fc_feature_matrix};
use stptf::train::checkpoint::data_fingerprint;
use stptf::train::metrics::{format_table, roc_curve, FoldMetrics, Summary};
use stptf::train::plots::{roc_svg, RocCurve};
use stptf::train::rundir::RunDir;

#[derive(Args)]
pub struct BaselineArgs {
    /// Dataset description (TOML; schema in docs/data.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Data directory, replacing the description's `data_dir`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Folds of the stratified subject-level cross-validation.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Seed of the fold assignment.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Inverse L2 strength of the logistic regression (scikit-learn's C).
    #[arg(long, default_value_t = 1.0)]
    pub c_reg: f64,
    /// Run directory to create [default: runs/baseline-<dataset>-seed<seed>].
    #[arg(long)]
    pub out: Option<PathBuf>,
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
    let dataset =
        Dataset::from_config_file(&args.config, args.data.as_deref()).with_context(|| {
            format!(
                "cannot load the dataset described by {}",
                args.config.display()
            )
        })?;
    let load_seconds = started.elapsed().as_secs_f64();
    let labels = dataset.labels();
    let folds = stratified_subject_kfold(&labels, &dataset.subjects(), args.folds, args.seed)
        .context("cannot split the dataset into folds")?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("baseline-{}-seed{}", dataset.name, args.seed))
    });
    // Refuse an occupied run directory before spending time on the fit.
    let run_dir = RunDir::create(&out)?;

    let t = Instant::now();
    let features = fc_feature_matrix(&dataset);
    let features_seconds = t.elapsed().as_secs_f64();
    log::info!(
        "{} scans x {} FC features in {:.2} s",
        features.nrows(),
        features.ncols(),
        features_seconds
    );
    let t = Instant::now();
    let results = evaluate_on_features(
        &features,
        &labels,
        dataset.num_classes(),
        &folds,
        args.c_reg,
    )
    .context("the baseline failed")?;
    let cv_seconds = t.elapsed().as_secs_f64();

    let config = BaselineRun {
        method: "FC (Fisher z of Pearson, upper triangle, z-scored on the training fold) + L2 logistic regression (L-BFGS)",
        dataset_config: args.config.display().to_string(),
        data_dir: args.data.as_ref().map(|d| d.display().to_string()),
        dataset: &dataset.name,
        data_fingerprint: data_fingerprint(&dataset),
        scans: dataset.scans.len(),
        regions: dataset.n_regions,
        features: features.ncols(),
        split: "stratified subject-level k-fold",
        folds: args.folds,
        seed: args.seed,
        c_reg: args.c_reg,
        version: env!("CARGO_PKG_VERSION"),
    };
    run_dir.write_text(
        "config.toml",
        &toml::to_string(&config).context("cannot encode the run config")?,
    )?;
    let description = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
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
        "{}: {} scans, {} classes, {}-fold stratified subject-level CV (seed {}), C = {}",
        dataset.name,
        dataset.scans.len(),
        dataset.num_classes(),
        args.folds,
        args.seed,
        args.c_reg
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
