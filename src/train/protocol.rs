//! The experimental protocol as a library (the CLI only parses flags and
//! prints): which scans each phase may see, subject-level cross-validation
//! with per-fold pretraining on training scans only, fine-tuning, K-crop
//! scoring and the summary in the paper's form, and the files a run
//! directory gets (loss curves, region importance, ROC curves).
//!
//! Sites: `data.pretrain_sites` restricts pretraining, `data.finetune_sites`
//! restricts fine-tuning and evaluation (the folds are formed over those
//! scans only); an empty list means every site. A site name the dataset does
//! not have is an error listing the sites it has.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, SplitKind};
use crate::data::split::{leave_site_out, stratified_subject_kfold, subsample_labeled, Fold};
use crate::data::synth::{generate, SynthConfig};
use crate::data::{DataError, Dataset, DatasetConfig};
use crate::gpu::Gpu;
use crate::model::sizes::{self, Limits, SizeError};
use crate::model::{DataDims, Model};
use crate::train::baseline::{evaluate_connectivity, BaselineError, BaselineFold, Connectivity};
use crate::train::checkpoint;
use crate::train::explain::{
    agreement_csv, explain_scans, explanation_files, fold_agreement, stratified_subset,
    ExplainOptions, Explanation,
};
use crate::train::metrics::{
    roc_curve, single_predicted_class, FoldMetrics, MetricsError, Scores, Summary,
};
use crate::train::plots::{
    glass_brain_svg, importance_svg, loss_curve_svg, roc_svg, RocCurve, Series,
};
use crate::train::rundir::{RunDir, RunDirError};
use crate::train::trainer::{score_scans, train_phase, Phase, PhaseReport, RunOptions, TrainError};

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Boxed: data errors carry paths and messages, and this enum is the
    /// error of every protocol call.
    #[error(transparent)]
    Data(Box<DataError>),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// Boxed, as `Data`: its fields name the tensor, shape, limit and keys.
    #[error(transparent)]
    Size(Box<SizeError>),
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    #[error("scoring fold {fold}")]
    Metrics {
        fold: String,
        #[source]
        source: MetricsError,
    },
    #[error(transparent)]
    Metric(#[from] MetricsError),
    #[error("config key \"{key}\": the dataset has no site {site:?}; its sites are: {known}")]
    UnknownSite {
        key: &'static str,
        site: String,
        known: String,
    },
    #[error("config key \"{key}\" selects no scan (sites {sites:?})")]
    NoScans {
        key: &'static str,
        sites: Vec<String>,
    },
    #[error(
        "{path}: this is an experiment config; pass it with --config \
         (--dataset takes a dataset description, docs/data.md)"
    )]
    ExperimentAsDataset { path: String },
    #[error("cannot load the dataset described by {path}")]
    LoadDataset {
        path: String,
        #[source]
        source: Box<DataError>,
    },
    #[error(
        "{0}; evaluate would report the metrics of an untrained head. \
         Set finetune.epochs >= 1 (pretrain.epochs = 0 is fine: supervised from scratch)"
    )]
    UntrainedHead(String),
    #[error("cannot read {path}")]
    ReadRunFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: not what evaluate writes there")]
    BadRunFile {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: belongs to another evaluation ({what}); give this fold job the \
         same config, seed and data, or another --out"
    )]
    OtherRun { path: String, what: String },
    #[error("no fold {fold:?}: the folds are {known} (or their position, 1 to {count})")]
    UnknownFold {
        fold: String,
        known: String,
        count: usize,
    },
    #[error(
        "fold {fold}: {path} {}; remove it to run the fold again",
        if *finished { "is finished already" } else { "holds files of an unfinished attempt" }
    )]
    FoldExists {
        fold: String,
        path: String,
        finished: bool,
    },
    #[error("{path}: not an evaluate run directory (it has no folds.json)")]
    NotAnEvaluateRun { path: String },
    #[error(
        "{path}: {finished} of {total} folds finished; missing: {missing} \
         (run `stptf evaluate --fold K --out {path}` for each)"
    )]
    MissingFolds {
        path: String,
        missing: String,
        finished: usize,
        total: usize,
    },
    #[error(
        "fold {fold}: finetune.validation_fraction = {fraction} leaves a class with no training \
         subject; lower it or use more labels"
    )]
    ValidationTakesClass { fold: String, fraction: f64 },
    #[error("{key} is 0: `{command}` would train nothing and write no checkpoint{hint}")]
    NothingToTrain {
        key: &'static str,
        command: &'static str,
        hint: &'static str,
    },
}

impl From<SizeError> for ProtocolError {
    fn from(e: SizeError) -> Self {
        ProtocolError::Size(Box::new(e))
    }
}

impl From<DataError> for ProtocolError {
    fn from(e: DataError) -> Self {
        Self::Data(Box::new(e))
    }
}

pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;

/// Reads a dataset description (docs/data.md), saying so when the file is an
/// experiment config instead; `data_override` replaces its `data_dir`.
pub fn read_dataset_description(
    path: &Path,
    data_override: Option<&Path>,
) -> Result<DatasetConfig> {
    let mut description = DatasetConfig::from_file(path).map_err(|source| {
        let experiment_sections = ["model", "pretrain", "finetune", "augment", "evaluate"];
        let is_experiment = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .is_some_and(|t| experiment_sections.iter().any(|k| t.contains_key(*k)));
        if is_experiment {
            ProtocolError::ExperimentAsDataset {
                path: path.display().to_string(),
            }
        } else {
            ProtocolError::LoadDataset {
                path: path.display().to_string(),
                source: Box::new(source),
            }
        }
    })?;
    if let Some(dir) = data_override {
        description.data_dir = Some(dir.to_path_buf());
    }
    Ok(description)
}

/// Loads the dataset a description file names ([`read_dataset_description`]).
pub fn load_dataset_file(path: &Path, data_override: Option<&Path>) -> Result<Dataset> {
    let description = read_dataset_description(path, data_override)?;
    Dataset::load(&description).map_err(|source| ProtocolError::LoadDataset {
        path: path.display().to_string(),
        source: Box::new(source),
    })
}

/// The dataset the config names (`data.dataset`, with `data_override`
/// replacing its `data_dir`), or, with none, an in-memory synthetic dataset
/// with planted class differences (the same as `stptf synth --scans 128
/// --regions 16 --length 96 --difficulty 0.2 --seed <seed>`).
pub fn load_dataset(
    cfg: &Config,
    data_override: Option<&Path>,
    quiet: bool,
) -> Result<Arc<Dataset>> {
    let dataset = match &cfg.data.dataset {
        Some(path) => load_dataset_file(path, data_override)?,
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

/// The sizes a model takes from the data.
pub fn data_dims(dataset: &Dataset) -> DataDims {
    DataDims {
        n_regions: dataset.n_regions,
        n_classes: dataset.num_classes(),
    }
}

/// Indices (ascending) of the scans whose site is in `sites`; every scan when
/// `sites` is empty. `key` names the setting in errors.
pub fn scans_of_sites(
    dataset: &Dataset,
    sites: &[String],
    key: &'static str,
) -> Result<Vec<usize>> {
    if sites.is_empty() {
        return Ok((0..dataset.scans.len()).collect());
    }
    let known: BTreeSet<&str> = dataset.scans.iter().map(|s| s.site.as_str()).collect();
    if let Some(site) = sites.iter().find(|s| !known.contains(s.as_str())) {
        return Err(ProtocolError::UnknownSite {
            key,
            site: site.clone(),
            known: known.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    let scans: Vec<usize> = (0..dataset.scans.len())
        .filter(|&s| sites.contains(&dataset.scans[s].site))
        .collect();
    if scans.is_empty() {
        return Err(ProtocolError::NoScans {
            key,
            sites: sites.to_vec(),
        });
    }
    Ok(scans)
}

/// The scans `stptf pretrain` trains on: those of `data.pretrain_sites`.
pub fn pretrain_scans(dataset: &Dataset, cfg: &Config) -> Result<Vec<usize>> {
    scans_of_sites(dataset, &cfg.data.pretrain_sites, "data.pretrain_sites")
}

/// The scans `stptf finetune` trains on: those of `data.finetune_sites`,
/// subsampled to `finetune.label_fraction` of the subjects per class.
pub fn finetune_scans(dataset: &Dataset, cfg: &Config) -> Result<Vec<usize>> {
    let pool = scans_of_sites(dataset, &cfg.data.finetune_sites, "data.finetune_sites")?;
    Ok(subsample_labeled(
        &pool,
        &dataset.labels(),
        &dataset.subjects(),
        cfg.finetune.label_fraction,
        cfg.seed,
    )?)
}

/// What one cross-validation fold trains and scores on (dataset scan indices).
#[derive(Clone, Debug, PartialEq)]
pub struct FoldPlan {
    pub name: String,
    /// The fold's seed (initialization, crops, masks): `seed + fold index`.
    pub seed: u64,
    /// Pretraining scans: the `data.pretrain_sites` scans outside the test
    /// fold (plus the test scans, unlabeled, with `evaluate.include_test_unlabeled`).
    /// Empty when `pretrain.epochs = 0`.
    pub pretrain: Vec<usize>,
    /// Fine-tuning scans: `finetune.label_fraction` of the training fold's
    /// subjects, less the validation split.
    pub finetune: Vec<usize>,
    /// `finetune.validation_fraction` of the fine-tuning subjects (per class),
    /// held out of training and scored every epoch; empty when the fraction is 0.
    pub validation: Vec<usize>,
    /// The fold's `data.finetune_sites` training scans (before subsampling).
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// The folds of `evaluate` (host only, no GPU): stratified subject-level
/// k-fold or leave-site-out over the `data.finetune_sites` scans, and each
/// fold's pretraining and fine-tuning scans.
pub fn plan_folds(dataset: &Dataset, cfg: &Config) -> Result<Vec<FoldPlan>> {
    let population = scans_of_sites(dataset, &cfg.data.finetune_sites, "data.finetune_sites")?;
    let pretrain_pool = scans_of_sites(dataset, &cfg.data.pretrain_sites, "data.pretrain_sites")?;
    let labels = dataset.labels();
    let subjects = dataset.subjects();
    let pick = |v: &[String]| -> Vec<String> { population.iter().map(|&s| v[s].clone()).collect() };
    let pop_labels: Vec<u32> = population.iter().map(|&s| labels[s]).collect();
    let folds: Vec<Fold> = match cfg.evaluate.split {
        SplitKind::Stratified => {
            stratified_subject_kfold(&pop_labels, &pick(&subjects), cfg.evaluate.folds, cfg.seed)?
        }
        SplitKind::LeaveSiteOut => leave_site_out(&pop_labels, &pick(&dataset.sites()))?,
    };
    let to_dataset = |v: &[usize]| -> Vec<usize> { v.iter().map(|&i| population[i]).collect() };
    folds
        .iter()
        .enumerate()
        .map(|(i, fold)| {
            let seed = cfg.seed.wrapping_add(i as u64);
            let (train, test) = (to_dataset(&fold.train), to_dataset(&fold.test));
            let mut pretrain = Vec::new();
            if cfg.pretrain.epochs > 0 {
                pretrain = pretrain_pool
                    .iter()
                    .copied()
                    .filter(|s| test.binary_search(s).is_err())
                    .collect();
                if cfg.evaluate.include_test_unlabeled {
                    pretrain.extend(&test);
                }
            }
            let mut finetune = subsample_labeled(
                &train,
                &labels,
                &subjects,
                cfg.finetune.label_fraction,
                seed,
            )?;
            let validation = validation_split(dataset, &mut finetune, cfg, seed, &fold.name)?;
            Ok(FoldPlan {
                name: fold.name.clone(),
                seed,
                pretrain,
                finetune,
                validation,
                train,
                test,
            })
        })
        .collect()
}

/// The one "fold" of `evaluate --test-dataset`: `dataset` is the training
/// dataset's scans followed, from index `first_test`, by the test dataset's
/// (`Dataset::followed_by`). Pretraining and fine-tuning see only the
/// training dataset (its `data.pretrain_sites` / `data.finetune_sites`
/// scans, `finetune.label_fraction`, the validation split), exactly as one
/// fold of [`plan_folds`] does; every test-dataset scan is scored (and, with
/// `evaluate.include_test_unlabeled`, also pretrained on without its label).
pub fn plan_transfer(dataset: &Dataset, first_test: usize, cfg: &Config) -> Result<FoldPlan> {
    let training = |scans: Vec<usize>| -> Vec<usize> {
        scans.into_iter().filter(|&s| s < first_test).collect()
    };
    let train = training(scans_of_sites(
        dataset,
        &cfg.data.finetune_sites,
        "data.finetune_sites",
    )?);
    let test: Vec<usize> = (first_test..dataset.scans.len()).collect();
    let mut pretrain = Vec::new();
    if cfg.pretrain.epochs > 0 {
        pretrain = training(scans_of_sites(
            dataset,
            &cfg.data.pretrain_sites,
            "data.pretrain_sites",
        )?);
        if cfg.evaluate.include_test_unlabeled {
            pretrain.extend(&test);
        }
    }
    let seed = cfg.seed;
    let mut finetune = subsample_labeled(
        &train,
        &dataset.labels(),
        &dataset.subjects(),
        cfg.finetune.label_fraction,
        seed,
    )?;
    let validation = validation_split(dataset, &mut finetune, cfg, seed, TRANSFER_FOLD)?;
    Ok(FoldPlan {
        name: TRANSFER_FOLD.to_string(),
        seed,
        pretrain,
        finetune,
        validation,
        train,
        test,
    })
}

/// The fold name of `evaluate --test-dataset` (its folder is `fold-transfer/`).
pub const TRANSFER_FOLD: &str = "transfer";

/// `evaluate --test-dataset`: [`plan_transfer`]'s fold by [`run_fold`], then
/// [`collect`]: the same files as a cross-validation with one fold.
pub fn evaluate_transfer(
    gpu: &Gpu,
    dataset: &Arc<Dataset>,
    first_test: usize,
    cfg: &Config,
    run: &RunDir,
    quiet: bool,
) -> Result<Evaluation> {
    let started = Instant::now();
    let plan = plan_transfer(dataset, first_test, cfg)?;
    write_fold_index(run, &fold_index(dataset, cfg, std::slice::from_ref(&plan)))?;
    run_fold(gpu, dataset, cfg, &plan, run, quiet)?;
    collect(run, Some(started.elapsed().as_secs_f64()))
}

/// Moves `finetune.validation_fraction` of `finetune`'s subjects (per class,
/// seeded) into the returned validation split. Refuses a split that would
/// leave a class with no training subject.
fn validation_split(
    dataset: &Dataset,
    finetune: &mut Vec<usize>,
    cfg: &Config,
    seed: u64,
    fold: &str,
) -> Result<Vec<usize>> {
    let fraction = cfg.finetune.validation_fraction;
    if fraction == 0.0 {
        return Ok(Vec::new());
    }
    let labels = dataset.labels();
    let validation = subsample_labeled(
        finetune,
        &labels,
        &dataset.subjects(),
        fraction,
        seed ^ 0x5641_4c49_4441_5445,
    )?;
    let classes = |scans: &[usize]| -> BTreeSet<u32> { scans.iter().map(|&s| labels[s]).collect() };
    let before = classes(finetune);
    finetune.retain(|s| validation.binary_search(s).is_err());
    if classes(finetune) != before {
        return Err(ProtocolError::ValidationTakesClass {
            fold: fold.to_string(),
            fraction,
        });
    }
    Ok(validation)
}

/// What `metrics.json` of one fold records.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FoldRecord {
    pub fold: String,
    pub train_scans: usize,
    pub pretrain_scans: usize,
    pub finetune_scans: usize,
    pub test_scans: usize,
    pub validation_scans: usize,
    pub metrics: FoldMetrics,
    /// The class every test scan was predicted as, when there is only one:
    /// the fold's accuracy is then its majority rate, not decoding.
    pub single_predicted_class: Option<String>,
    /// Fine-tuning epochs run (fewer than finetune.epochs when early
    /// stopping stopped the fold).
    #[serde(default)]
    pub finetune_epochs: u64,
    /// With early stopping, the fine-tuning epoch (from 0, as in
    /// metrics.jsonl) of lowest validation loss, whose weights were scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune_best_epoch: Option<u64>,
    pub pretrain_seconds: f64,
    pub finetune_seconds: f64,
    pub eval_seconds: f64,
    /// The adapter the fold ran on (fold jobs may run on different machines).
    pub adapter: String,
}

/// The outcome of [`cross_validate`].
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub folds: Vec<FoldRecord>,
    pub summary: Summary,
    pub wall_seconds: f64,
}

/// Refuses a model that cannot run on `gpu` in the batches of `phases`
/// (`model::sizes`), before anything is allocated: every command calls this
/// before it builds a model from the config.
pub fn check_sizes(gpu: &Gpu, cfg: &Config, dataset: &Dataset, phases: &[Phase]) -> Result<()> {
    let batches: Vec<(&str, usize)> = phases
        .iter()
        .map(|phase| match phase {
            Phase::Pretrain => ("pretrain.batch", cfg.pretrain.batch),
            Phase::Finetune => ("finetune.batch", cfg.finetune.batch),
        })
        .collect();
    sizes::check(&cfg.model, data_dims(dataset), &batches, &Limits::of(gpu))?;
    Ok(())
}

/// Refuses a `pretrain` or `finetune` run of zero epochs (it would print a
/// checkpoint path and write none).
pub fn check_phase_trains(cfg: &Config, phase: Phase) -> Result<()> {
    match phase {
        Phase::Pretrain if cfg.pretrain.epochs == 0 => Err(ProtocolError::NothingToTrain {
            key: "pretrain.epochs",
            command: "pretrain",
            hint: " (to train from scratch, run `finetune` without --from)",
        }),
        Phase::Finetune if cfg.finetune.epochs == 0 => Err(ProtocolError::NothingToTrain {
            key: "finetune.epochs",
            command: "finetune",
            hint: "",
        }),
        _ => Ok(()),
    }
}

/// Rejects protocols that would report an untrained model as if it were one.
pub fn check_evaluable(cfg: &Config) -> Result<()> {
    if cfg.finetune.epochs == 0 {
        let what = if cfg.pretrain.epochs == 0 {
            "pretrain.epochs and finetune.epochs are both 0"
        } else {
            "finetune.epochs is 0"
        };
        return Err(ProtocolError::UntrainedHead(what.to_string()));
    }
    Ok(())
}

/// What `folds.json` of an evaluate run directory records: the folds the
/// protocol has, so that `--collect` knows which are missing without loading
/// the data, and what every fold job must agree on.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FoldIndex {
    pub folds: Vec<String>,
    pub seed: u64,
    pub data_fingerprint: String,
}

/// `fold-<name>/roc.json`: one fold's ROC curve (two classes only), kept so
/// that `--collect` draws the same `roc.svg` as a full evaluate.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct FoldRoc {
    auc: f64,
    points: Vec<(f64, f64)>,
}

const FOLD_INDEX: &str = "folds.json";
const FOLD_RECORD: &str = "metrics.json";
const FOLD_ROC: &str = "roc.json";

/// Writes `folds.json` into `run`, or, when a fold job of the same run wrote
/// it already, checks that this job has the same folds, seed and data.
pub fn write_fold_index(run: &RunDir, index: &FoldIndex) -> Result<()> {
    let path = run.file(FOLD_INDEX);
    if path.exists() {
        let found: FoldIndex = read_json(&path)?;
        if &found != index {
            return Err(ProtocolError::OtherRun {
                path: path.display().to_string(),
                what: describe_index_difference(&found, index),
            });
        }
        return Ok(());
    }
    run.write_json(FOLD_INDEX, index)?;
    Ok(())
}

fn describe_index_difference(found: &FoldIndex, ours: &FoldIndex) -> String {
    if found.data_fingerprint != ours.data_fingerprint {
        format!(
            "data fingerprint {} there, {} here",
            found.data_fingerprint, ours.data_fingerprint
        )
    } else if found.seed != ours.seed {
        format!("seed {} there, {} here", found.seed, ours.seed)
    } else {
        format!(
            "folds [{}] there, [{}] here",
            found.folds.join(", "),
            ours.folds.join(", ")
        )
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ProtocolError::ReadRunFile {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ProtocolError::BadRunFile {
        path: path.display().to_string(),
        line: source.line(),
        source,
    })
}

/// The fold `--fold K` names: the fold called `K`, or else the K-th fold
/// (1-based, so a Slurm array `--array=1-k` covers leave-site-out folds too).
pub fn select_fold<'a>(plans: &'a [FoldPlan], key: &str) -> Result<&'a FoldPlan> {
    if let Some(plan) = plans.iter().find(|p| p.name == key) {
        return Ok(plan);
    }
    match key.parse::<usize>() {
        Ok(k) if (1..=plans.len()).contains(&k) => Ok(&plans[k - 1]),
        _ => Err(ProtocolError::UnknownFold {
            fold: key.to_string(),
            known: plans
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            count: plans.len(),
        }),
    }
}

/// The folds' index of `plans` on `dataset`.
pub fn fold_index(dataset: &Dataset, cfg: &Config, plans: &[FoldPlan]) -> FoldIndex {
    FoldIndex {
        folds: plans.iter().map(|p| p.name.clone()).collect(),
        seed: cfg.seed,
        data_fingerprint: checkpoint::data_fingerprint(dataset),
    }
}

/// One fold of the protocol (see [`cross_validate`]): a fresh model (the
/// fold's seed) pretrained on the fold's pretraining scans (when
/// `pretrain.epochs > 0`), fine-tuned, and scored on its test scans with
/// logits averaged over K fixed crops. Writes `fold-<name>/` in `run`
/// (metrics.jsonl, loss curves, region importance, predictions.csv,
/// roc.json, and last metrics.json, which marks the fold finished).
/// Refuses a fold whose folder already holds files, finished or not: a
/// rerun would mix its files with the earlier attempt's.
pub fn run_fold(
    gpu: &Gpu,
    dataset: &Arc<Dataset>,
    cfg: &Config,
    plan: &FoldPlan,
    run: &RunDir,
    quiet: bool,
) -> Result<FoldRecord> {
    let labels = dataset.labels();
    let fold_path = run.file(&format!("fold-{}", plan.name));
    if fold_path.exists() {
        let finished = fold_path.join(FOLD_RECORD).exists();
        let nonempty = std::fs::read_dir(&fold_path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
        if finished || nonempty {
            return Err(ProtocolError::FoldExists {
                fold: plan.name.clone(),
                path: fold_path.display().to_string(),
                finished,
            });
        }
    }
    let phases: &[Phase] = if cfg.pretrain.epochs == 0 {
        &[Phase::Finetune]
    } else {
        &[Phase::Pretrain, Phase::Finetune]
    };
    check_sizes(gpu, cfg, dataset, phases)?;
    let fold_run = run.fold(&plan.name)?;
    let model = Model::new(gpu, cfg.model.clone(), data_dims(dataset), plan.seed)?;
    let mut fold_cfg = cfg.clone();
    fold_cfg.seed = plan.seed;
    let opts = RunOptions {
        quiet,
        run: Some(fold_run.clone()),
        stop_after_epochs: None,
        validation: plan.validation.clone(),
        data_parallel: None,
    };
    let pre = if cfg.pretrain.epochs == 0 {
        None
    } else {
        let r = train_phase(
            gpu,
            &model,
            dataset,
            &plan.pretrain,
            &fold_cfg,
            Phase::Pretrain,
            None,
            &opts,
        )?;
        write_loss_plot(&fold_run, &r)?;
        Some(r)
    };
    let ft = train_phase(
        gpu,
        &model,
        dataset,
        &plan.finetune,
        &fold_cfg,
        Phase::Finetune,
        None,
        &opts,
    )?;
    write_loss_plot(&fold_run, &ft)?;
    write_diagnostics_plots(&fold_run, &ft)?;
    write_region_importance(gpu, &model, &fold_run)?;
    let t0 = Instant::now();
    let probs = score_scans(gpu, &model, dataset, &plan.test, &fold_cfg)?;
    let eval_seconds = t0.elapsed().as_secs_f64();
    fold_run.write_text(
        "predictions.csv",
        &predictions_csv(dataset, &plan.test, &probs),
    )?;
    let flat: Vec<f64> = probs.iter().flatten().copied().collect();
    let test_labels: Vec<u32> = plan.test.iter().map(|&s| labels[s]).collect();
    let metrics = Scores::new(&flat, dataset.num_classes())
        .and_then(|scores| FoldMetrics::compute(scores, &test_labels))
        .map_err(|source| ProtocolError::Metrics {
            fold: plan.name.clone(),
            source,
        })?;
    if dataset.num_classes() == 2 {
        let pos: Vec<f64> = probs.iter().map(|p| p[1]).collect();
        let positive: Vec<bool> = test_labels.iter().map(|&l| l == 1).collect();
        let roc = FoldRoc {
            auc: metrics.auc,
            points: roc_curve(&pos, &positive)?,
        };
        fold_run.write_json(FOLD_ROC, &roc)?;
    }
    if cfg.explain.in_evaluate {
        write_fold_explanation(gpu, &model, dataset, &fold_cfg, plan, &fold_run, quiet)?;
    }
    let predictions = Scores::new(&flat, dataset.num_classes())?.predictions();
    let single_predicted_class = single_predicted_class(&predictions, &dataset.class_names);
    if let Some(class) = &single_predicted_class {
        // A warning, printed even with --quiet: the fold's accuracy is
        // its majority rate.
        eprintln!(
            "warning: fold {}: every test scan is predicted \"{class}\"; its accuracy is the class's share, not decoding",
            plan.name
        );
    }
    let record = FoldRecord {
        fold: plan.name.clone(),
        train_scans: plan.train.len(),
        pretrain_scans: plan.pretrain.len(),
        finetune_scans: plan.finetune.len(),
        test_scans: plan.test.len(),
        validation_scans: plan.validation.len(),
        metrics,
        single_predicted_class,
        finetune_epochs: ft.epochs,
        finetune_best_epoch: ft.best_epoch,
        pretrain_seconds: pre.as_ref().map_or(0.0, |r| r.seconds),
        finetune_seconds: ft.seconds,
        eval_seconds,
        adapter: gpu.report.info.name.clone(),
    };
    // Last: its presence is what marks the fold finished for `--collect`.
    fold_run.write_json(FOLD_RECORD, &record)?;
    if !quiet {
        eprintln!(
            "fold {}: accuracy {:.1} %, AUC {:.1} %, recall {:.1} %",
            plan.name,
            100.0 * metrics.accuracy,
            100.0 * metrics.auc,
            100.0 * metrics.recall
        );
    }
    Ok(record)
}

/// Occlusion importance of (a stratified subset of) the fold's test scans:
/// `explain::explanation_files` into the fold's folder.
fn write_fold_explanation(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    fold_cfg: &Config,
    plan: &FoldPlan,
    fold_run: &RunDir,
    quiet: bool,
) -> Result<()> {
    let t0 = Instant::now();
    let scans = stratified_subset(dataset, &plan.test, fold_cfg.explain.max_scans, plan.seed);
    let options = ExplainOptions::from_config(&fold_cfg.explain);
    let explanation = explain_scans(gpu, model, dataset, &scans, fold_cfg, &options)?;
    for (name, text) in explanation_files(&explanation) {
        fold_run.write_text(name, &text)?;
    }
    if !quiet {
        eprintln!(
            "fold {}: explained {} test scans in {:.0} s (accuracy on them {:.2})",
            plan.name,
            scans.len(),
            t0.elapsed().as_secs_f64(),
            explanation.importance.accuracy
        );
    }
    Ok(())
}

/// Across-fold agreement of the folds' explanations (when every fold has
/// one): `importance_folds.csv`, the mean importance plots, and the JSON
/// for `summary.json`'s "importance".
fn collect_explanations(run: &RunDir, folds: &[String]) -> Result<Option<serde_json::Value>> {
    let mut explained = Vec::new();
    for name in folds {
        let path = run.file(&format!("fold-{name}")).join("importance.json");
        if !path.exists() {
            return Ok(None);
        }
        explained.push((name.clone(), read_json::<Explanation>(&path)?));
    }
    let agreement = fold_agreement(&explained);
    run.write_text(
        "importance_folds.csv",
        &agreement_csv(&agreement, &explained),
    )?;
    let names: Vec<String> = agreement.regions.iter().map(|r| r.name.clone()).collect();
    let scores: Vec<f64> = agreement.regions.iter().map(|r| r.mean_score).collect();
    let title = format!(
        "Mean occlusion importance over {} folds (mean pairwise Spearman {:.2})",
        folds.len(),
        agreement.mean_pairwise_spearman
    );
    run.write_text(
        "importance_regions.svg",
        &importance_svg(&title, &names, &scores, 20),
    )?;
    if let Some(coordinates) = &explained[0].1.coordinates {
        let mut by_region = vec![0.0; coordinates.len()];
        for r in &agreement.regions {
            by_region[r.region] = r.mean_score;
        }
        run.write_text(
            "importance_brain.svg",
            &glass_brain_svg(
                &title,
                &explained[0].1.region_names,
                coordinates,
                &by_region,
                20,
            ),
        )?;
    }
    let mut json = serde_json::to_value(&agreement).unwrap_or_default();
    if let Some(regions) = json.get_mut("regions").and_then(|v| v.as_array_mut()) {
        regions.truncate(20);
    }
    Ok(Some(json))
}

/// Merges the finished folds of an evaluate run directory into
/// `summary.json` and `roc.svg` (two classes). Needs neither the data nor a
/// GPU: `folds.json` says which folds there are, each `fold-<name>/metrics.json`
/// that a fold finished. With any fold unfinished, writes nothing and names
/// the missing ones. `wall_seconds` is the elapsed time of a full evaluate
/// when given, else the sum of the folds' seconds.
pub fn collect(run: &RunDir, wall_seconds: Option<f64>) -> Result<Evaluation> {
    let index_path = run.file(FOLD_INDEX);
    if !index_path.exists() {
        return Err(ProtocolError::NotAnEvaluateRun {
            path: run.path().display().to_string(),
        });
    }
    let index: FoldIndex = read_json(&index_path)?;
    let missing: Vec<String> = index
        .folds
        .iter()
        .filter(|name| !run.file(&format!("fold-{name}")).join(FOLD_RECORD).exists())
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ProtocolError::MissingFolds {
            path: run.path().display().to_string(),
            missing: missing.join(", "),
            finished: index.folds.len() - missing.len(),
            total: index.folds.len(),
        });
    }
    let mut records = Vec::new();
    let mut curves = Vec::new();
    for name in &index.folds {
        let dir = run.file(&format!("fold-{name}"));
        let record: FoldRecord = read_json(&dir.join(FOLD_RECORD))?;
        let roc_path = dir.join(FOLD_ROC);
        if roc_path.exists() {
            let roc: FoldRoc = read_json(&roc_path)?;
            curves.push(RocCurve {
                label: name.clone(),
                points: roc.points,
                auc: roc.auc,
            });
        }
        records.push(record);
    }
    let summary = Summary::from_folds(&records.iter().map(|r| r.metrics).collect::<Vec<_>>())?;
    let wall_seconds = wall_seconds.unwrap_or_else(|| {
        records
            .iter()
            .map(|r| r.pretrain_seconds + r.finetune_seconds + r.eval_seconds)
            .sum()
    });
    let mut adapters: Vec<&str> = records.iter().map(|r| r.adapter.as_str()).collect();
    adapters.dedup();
    let importance = collect_explanations(run, &index.folds)?;
    let mut doc = serde_json::json!({
        "accuracy": summary.accuracy,
        "auc": summary.auc,
        "recall": summary.recall,
        "folds": records,
        "single_class_folds": records
            .iter()
            .filter(|r| r.single_predicted_class.is_some())
            .map(|r| r.fold.clone())
            .collect::<Vec<_>>(),
        "seed": index.seed,
        "wall_seconds": wall_seconds,
        "adapter": adapters.join(", "),
        "data_fingerprint": index.data_fingerprint,
    });
    if let (Some(importance), Some(map)) = (importance, doc.as_object_mut()) {
        // The top 20 regions by mean rank; all of them in importance_folds.csv.
        map.insert("importance".to_string(), importance);
    }
    run.write_summary(&doc)?;
    if !curves.is_empty() {
        run.write_text("roc.svg", &roc_svg("ROC per fold", &curves))?;
    }
    Ok(Evaluation {
        folds: records,
        summary,
        wall_seconds,
    })
}

/// The paper's protocol: every fold of [`plan_folds`] by [`run_fold`], one
/// after another, then [`collect`]. Writes into `run`: `folds.json`, per fold
/// `fold-<name>/`, and `summary.json` and `roc.svg` (two classes). The same
/// files as `evaluate --fold K` for each K followed by `evaluate --collect`.
pub fn cross_validate(
    gpu: &Gpu,
    dataset: &Arc<Dataset>,
    cfg: &Config,
    run: &RunDir,
    quiet: bool,
) -> Result<Evaluation> {
    check_evaluable(cfg)?;
    let started = Instant::now();
    let plans = plan_folds(dataset, cfg)?;
    write_fold_index(run, &fold_index(dataset, cfg, &plans))?;
    for plan in &plans {
        run_fold(gpu, dataset, cfg, plan, run, quiet)?;
    }
    collect(run, Some(started.elapsed().as_secs_f64()))
}

/// The baseline's folds (`stptf baseline`): the folds of [`plan_folds`],
/// fitted on each fold's fine-tuning scans, so the baseline sees exactly the
/// labels STPTF's fine-tuning sees.
pub fn baseline_folds(dataset: &Dataset, cfg: &Config) -> Result<Vec<Fold>> {
    Ok(plan_folds(dataset, cfg)?
        .into_iter()
        .map(|plan| Fold {
            name: plan.name,
            train: plan.finetune,
            test: plan.test,
        })
        .collect())
}

/// What [`run_baseline`] computed.
pub struct BaselineOutcome {
    pub results: Vec<BaselineFold>,
    /// Features per scan.
    pub feature_width: usize,
    pub features_seconds: f64,
}

/// The baseline of `stptf baseline` on `folds` (from [`baseline_folds`]):
/// `baseline.features` connectivity and L2 logistic regression with
/// `baseline.c_reg`.
pub fn run_baseline(dataset: &Dataset, cfg: &Config, folds: &[Fold]) -> Result<BaselineOutcome> {
    let started = Instant::now();
    let connectivity = Connectivity::compute(dataset, cfg.baseline.features)?;
    let features_seconds = started.elapsed().as_secs_f64();
    let results = evaluate_connectivity(
        &connectivity,
        &dataset.labels(),
        dataset.num_classes(),
        folds,
        cfg.baseline.c_reg,
    )?;
    Ok(BaselineOutcome {
        results,
        feature_width: connectivity.width(),
        features_seconds,
    })
}

/// One row per scored scan: id, subject, site, label, class probabilities.
pub fn predictions_csv(dataset: &Dataset, scans: &[usize], probs: &[Vec<f64>]) -> String {
    let mut csv = String::from("scan_id,subject,site,label");
    for name in &dataset.class_names {
        csv.push_str(&format!(",p_{name}"));
    }
    csv.push('\n');
    for (&scan, p) in scans.iter().zip(probs) {
        let s = &dataset.scans[scan];
        csv.push_str(&format!("{},{},{},{}", s.id, s.subject, s.site, s.label));
        for v in p {
            csv.push_str(&format!(",{v:.6}"));
        }
        csv.push('\n');
    }
    csv
}

/// `loss_<phase>.svg`: the phase's loss per step.
pub fn write_loss_plot(run: &RunDir, report: &PhaseReport) -> Result<()> {
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

/// `diagnostics_finetune.svg` (training and validation loss and accuracy per
/// epoch), `spread_finetune.svg` (Z_st spread across subjects relative to its
/// norm, logit spread) and `grad_norms_finetune.svg` (per parameter group,
/// log scale); nothing for a phase without diagnostics.
pub fn write_diagnostics_plots(run: &RunDir, report: &PhaseReport) -> Result<()> {
    let d = &report.diagnostics;
    if d.is_empty() {
        return Ok(());
    }
    let per_epoch =
        |f: &dyn Fn(&crate::train::metrics::EpochDiagnostics) -> Option<f64>| -> Vec<(f64, f64)> {
            d.iter()
                .enumerate()
                .filter_map(|(e, x)| f(x).map(|v| ((e + 1) as f64, v)))
                .collect()
        };
    let train_loss = per_epoch(&|x| Some(x.train.loss));
    let train_acc = per_epoch(&|x| Some(x.train.accuracy));
    let val_loss = per_epoch(&|x| x.validation.as_ref().map(|v| v.loss));
    let val_acc = per_epoch(&|x| x.validation.as_ref().map(|v| v.accuracy));
    let mut series = vec![
        Series {
            label: "train loss",
            points: &train_loss,
        },
        Series {
            label: "train accuracy",
            points: &train_acc,
        },
    ];
    if !val_loss.is_empty() {
        series.push(Series {
            label: "validation loss",
            points: &val_loss,
        });
        series.push(Series {
            label: "validation accuracy",
            points: &val_acc,
        });
    }
    run.write_text(
        "diagnostics_finetune.svg",
        &loss_curve_svg("fine-tuning per epoch (K-crop scores)", &series, false),
    )?;
    let z_spread = per_epoch(&|x| Some(x.train.embedding_spread));
    let logit_spread = per_epoch(&|x| Some(x.train.logit_spread));
    run.write_text(
        "spread_finetune.svg",
        &loss_curve_svg(
            "training scans: spread across subjects",
            &[
                Series {
                    label: "Z_st spread / norm",
                    points: &z_spread,
                },
                Series {
                    label: "logit std",
                    points: &logit_spread,
                },
            ],
            true,
        ),
    )?;
    let groups: Vec<&str> = d[0].grad_norms.iter().map(|(g, _)| g.as_str()).collect();
    let norms: Vec<Vec<(f64, f64)>> = (0..groups.len())
        .map(|i| per_epoch(&|x| x.grad_norms.get(i).map(|(_, v)| *v)))
        .collect();
    let series: Vec<Series> = groups
        .iter()
        .zip(&norms)
        .map(|(g, points)| Series { label: g, points })
        .collect();
    run.write_text(
        "grad_norms_finetune.svg",
        &loss_curve_svg(
            "gradient norm per parameter group (last step of each epoch)",
            &series,
            true,
        ),
    )?;
    Ok(())
}

/// `region_importance.svg` and `.csv` from [`Model::region_importance`]
/// (nothing for the encoders without a fusion projection).
pub fn write_region_importance(gpu: &Gpu, model: &Model, run: &RunDir) -> Result<()> {
    let Some(norms) = model.region_importance(gpu)? else {
        return Ok(());
    };
    let names: Vec<String> = (1..=norms.len()).map(|r| format!("region {r}")).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::{generate, SynthConfig};

    /// 24 scans (labels alternate), sites A, B, C in pairs: every site holds
    /// both classes.
    fn dataset() -> Dataset {
        let (arrays, labels) = generate(&SynthConfig {
            scans: 24,
            regions: 4,
            length: 20,
            classes: 2,
            seed: 5,
            difficulty: 0.2,
        });
        let mut d = Dataset::from_arrays(arrays, labels, vec!["a".into(), "b".into()], 16).unwrap();
        for (i, scan) in d.scans.iter_mut().enumerate() {
            scan.site = ["A", "B", "C"][(i / 2) % 3].to_string();
        }
        d
    }

    fn sites(d: &Dataset, scans: &[usize]) -> BTreeSet<String> {
        scans.iter().map(|&s| d.scans[s].site.clone()).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn phases_see_only_the_named_sites() {
        let d = dataset();
        let mut cfg = Config::default();
        cfg.evaluate.folds = 2;
        cfg.data.pretrain_sites = vec!["A".into()];
        cfg.data.finetune_sites = vec!["B".into(), "C".into()];
        assert_eq!(sites(&d, &pretrain_scans(&d, &cfg).unwrap()), set(&["A"]));
        assert_eq!(
            sites(&d, &finetune_scans(&d, &cfg).unwrap()),
            set(&["B", "C"])
        );
        let plans = plan_folds(&d, &cfg).unwrap();
        assert_eq!(plans.len(), 2);
        let mut tested: Vec<usize> = Vec::new();
        for plan in &plans {
            assert_eq!(sites(&d, &plan.pretrain), set(&["A"]), "fold {}", plan.name);
            assert_eq!(plan.pretrain.len(), 8, "every A scan (none is a test scan)");
            for part in [&plan.train, &plan.finetune, &plan.test] {
                assert!(
                    sites(&d, part).is_subset(&set(&["B", "C"])),
                    "fold {}",
                    plan.name
                );
            }
            assert!(plan.train.iter().all(|s| !plan.test.contains(s)));
            tested.extend(&plan.test);
        }
        tested.sort_unstable();
        let bc: Vec<usize> = (0..24).filter(|&s| d.scans[s].site != "A").collect();
        assert_eq!(
            tested, bc,
            "the folds' test scans are exactly the B and C scans"
        );
        // Leave-site-out over the fine-tuning sites: one fold per named site.
        cfg.evaluate.split = SplitKind::LeaveSiteOut;
        let names: Vec<String> = plan_folds(&d, &cfg)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["B", "C"]);
    }

    #[test]
    fn pretraining_on_every_site_still_excludes_the_test_fold() {
        let d = dataset();
        let mut cfg = Config::default();
        cfg.evaluate.folds = 3;
        for plan in plan_folds(&d, &cfg).unwrap() {
            assert_eq!(plan.pretrain, plan.train, "fold {}", plan.name);
        }
        cfg.evaluate.include_test_unlabeled = true;
        for plan in plan_folds(&d, &cfg).unwrap() {
            let mut all = plan.pretrain.clone();
            all.sort_unstable();
            assert_eq!(all, (0..24).collect::<Vec<_>>(), "fold {}", plan.name);
        }
        cfg.pretrain.epochs = 0;
        assert!(plan_folds(&d, &cfg)
            .unwrap()
            .iter()
            .all(|p| p.pretrain.is_empty()));
    }

    #[test]
    fn unknown_sites_are_rejected_with_the_known_ones() {
        let d = dataset();
        let mut cfg = Config::default();
        cfg.data.finetune_sites = vec!["B".into(), "NYU".into()];
        let e = plan_folds(&d, &cfg).unwrap_err().to_string();
        assert_eq!(
            e,
            "config key \"data.finetune_sites\": the dataset has no site \"NYU\"; its sites are: A, B, C"
        );
        cfg.data.finetune_sites.clear();
        cfg.data.pretrain_sites = vec!["a".into()];
        let e = pretrain_scans(&d, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("data.pretrain_sites") && e.contains("\"a\""),
            "{e}"
        );
    }

    #[test]
    fn zero_epochs_are_refused_before_anything_runs() {
        let mut cfg = Config::default();
        cfg.pretrain.epochs = 0;
        let e = check_phase_trains(&cfg, Phase::Pretrain)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "pretrain.epochs is 0: `pretrain` would train nothing and write no checkpoint"
            ),
            "{e}"
        );
        assert!(check_phase_trains(&cfg, Phase::Finetune).is_ok());
        check_evaluable(&cfg).unwrap();
        cfg.finetune.epochs = 0;
        let e = check_evaluable(&cfg).unwrap_err().to_string();
        assert!(
            e.starts_with("pretrain.epochs and finetune.epochs are both 0"),
            "{e}"
        );
        assert!(e.contains("untrained"), "{e}");
        let e = check_phase_trains(&cfg, Phase::Finetune)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("finetune.epochs is 0"), "{e}");
        cfg.pretrain.epochs = 3;
        let e = check_evaluable(&cfg).unwrap_err().to_string();
        assert!(e.starts_with("finetune.epochs is 0;"), "{e}");
    }
}
