//! The experiment config: one TOML file that fixes the data, the model sizes,
//! the augmentation, the pretraining and fine-tuning schedules and the
//! evaluation protocol of one run. Every field has a default (the paper's
//! setting, `assets/default.toml`), every table denies unknown fields so a typo
//! is an error, and `--set key=value` overrides any single field
//! (`Config::apply_override`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    // The cause is part of the message and deliberately not a `#[source]`:
    // the CLI prints the whole source chain, which would print it twice.
    #[error("{path}: cannot read: {error}")]
    Io { path: String, error: std::io::Error },

    #[error("{path}: invalid experiment config: {error}")]
    Parse {
        path: String,
        error: toml::de::Error,
    },

    #[error("--set {assignment}: expected KEY=VALUE (e.g. pretrain.lr=3e-4)")]
    NotAnAssignment { assignment: String },

    #[error("unknown config key \"{key}\"; {hint}")]
    UnknownKey { key: String, hint: String },

    #[error("config key \"{key}\" = {value}: expected {expected}: {message}")]
    BadValue {
        key: String,
        value: String,
        expected: String,
        message: String,
    },

    #[error("config key \"{key}\" = {value}: expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: &'static str,
    },

    #[error(
        "{path}: this is a dataset description; pass it with --dataset \
         (--config takes an experiment config, such as assets/default.toml)"
    )]
    DatasetDescription { path: String },

    #[error("cannot write the config as TOML: {error}")]
    Serialize { error: toml::ser::Error },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seeds everything random: splits, crops, augmentation masks, initialization.
    pub seed: u64,
    pub data: DataSection,
    pub model: ModelConfig,
    pub augment: AugmentConfig,
    pub pretrain: PretrainConfig,
    pub finetune: FinetuneConfig,
    pub evaluate: EvaluateConfig,
    pub baseline: BaselineConfig,
    pub explain: ExplainConfig,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// The dataset description TOML (docs/data.md), relative to the current
    /// directory. Optional here: `--config` on the command line may give it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<PathBuf>,
    /// Sites whose scans are used for pretraining; empty = every site.
    pub pretrain_sites: Vec<String>,
    /// Sites whose scans are used for fine-tuning and evaluation; empty = every site.
    pub finetune_sites: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// T: frames per crop.
    pub crop: usize,
    /// F: GCN channels per node.
    pub node_channels: usize,
    /// D: model width.
    pub width: usize,
    /// d: node-embedding size of the dynamic graph.
    pub embed_dim: usize,
    /// L: frames per dynamic-graph window.
    pub window: usize,
    /// S: stride between dynamic-graph windows.
    pub stride: usize,
    /// P: frames per aggregation segment.
    pub segment: usize,
    /// Q: query/key channels of the calibration.
    pub qk_dim: usize,
    /// J: projector width (FGCO `global`).
    pub proj_dim: usize,
    pub norm: Norm,
    pub residual: Residual,
    pub encoder: Encoder,
    /// What Z_st goes through before the head (docs/model.md step 7).
    pub head_norm: HeadNorm,
    /// What each region's GCN input is (docs/model.md step 3).
    pub node_features: NodeFeatures,
    /// How connectivity profiles are scaled per edge before the lift, with
    /// statistics of the training scans (docs/model.md step 3).
    pub profile_norm: ProfileNorm,
}

/// Each region's input to the GCN branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeFeatures {
    /// The literal model: the region's BOLD value at frame t, lifted to F
    /// channels per frame.
    #[default]
    Series,
    /// The region's row of the crop's Pearson correlation matrix (its
    /// connectivity profile, as BrainNetCNN and BNT use), the same for every
    /// frame: the lift is [N, F].
    Pearson,
    /// The region's row of the crop's Ledoit–Wolf partial correlation (the
    /// static graph's, before the absolute value), as BrainGNN uses.
    Partial,
}

/// Per-edge normalization of the connectivity profiles (`model.node_features
/// = "pearson" | "partial"`), with the mean and standard deviation of every
/// entry R_ij over the evaluation crops of the scans of the first phase
/// that trains the model (its pretraining scans, or its fine-tuning scans
/// when it is trained from scratch), kept with the weights as buffers.
/// Across ABIDE scans an edge's mean correlation is as large as its spread
/// (|r̄| 0.24 against 0.21 for 64-frame crops): the shared pattern the
/// network must otherwise learn to ignore. The ridge read that reaches
/// 63–64 % standardizes every edge, and the tangent floor projects at the
/// group's mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileNorm {
    /// The profiles as they are.
    #[default]
    None,
    /// R_ij − mean_ij.
    Center,
    /// (R_ij − mean_ij) / std_ij; an entry constant over the scans (the
    /// Pearson diagonal) becomes 0.
    Standardize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadNorm {
    /// The literal model: logits = Z_st·W + b.
    #[default]
    None,
    /// BatchNorm without affine on Z_st (batch statistics in training,
    /// running statistics at evaluation), as an MAE-style linear probe: at
    /// initialization Z_st barely varies across scans, so the head would see
    /// nearly constant features.
    Batch,
    /// `batch` whose evaluation statistics are recomputed after every
    /// fine-tuning epoch: the mean and unbiased variance of Z_st over the K
    /// evaluation crops of the diagnostic training scans
    /// (`finetune.diagnostic_scans`), with that epoch's weights ("precise
    /// BN", Wu & Johnson 2021). The momentum-0.1 running average of `batch`
    /// lags weights that move fast: on ABIDE it left evaluation losses of
    /// 1.3–2.0 on the training scans while the training-mode loss was 0.6
    /// (results/abide_accuracy.md, "Fitting the training scans").
    BatchPrecise,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// The literal model: no normalization layer.
    #[default]
    None,
    /// LayerNorm over D after the fusion projection and on Z_st.
    Layer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Residual {
    /// Z_temporal = conv_out(O) + Z_spatial (docs/design.md's call).
    #[default]
    Spatial,
    /// The paper's literal "+ X" (needs a projection of the input).
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoder {
    /// The full PSTA encoder (static + dynamic GCN, calibration, aggregation).
    #[default]
    Psta,
    /// Ablation: the spatial GCN branches only, mean over time.
    GcnOnly,
    /// Ablation: an LSTM over frames.
    Lstm,
    /// Baseline: a traditional ST-GCN-style spatio-temporal encoder.
    StgcnStyle,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    pub kind: AugmentKind,
    /// Spatial centrality augmentation (ROI masking) on or off.
    pub sca: bool,
    /// Temporal continuity augmentation (frame masking) on or off.
    pub tca: bool,
    /// p_s: the mean masking probability before capping.
    pub p_scale: f64,
    /// The cap on any single masking probability.
    pub p_max: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AugmentKind {
    /// STIGA: centrality- and continuity-weighted masking probabilities.
    #[default]
    Stiga,
    /// RSA + RTA: the same mean rates, uniform probabilities.
    Random,
    /// No masking: every view equals the original.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// 0 skips pretraining (supervised from scratch).
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub lr_min: f64,
    pub warmup_fraction: f64,
    pub weight_decay: f64,
    pub fgco: Fgco,
    /// The off-diagonal weight of the Barlow Twins term.
    pub lambda_offdiag: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fgco {
    /// Projector on Z_st, one 256x256 cross-correlation per view pair.
    #[default]
    Global,
    /// ROI-by-ROI (spatial view) and frame-by-frame (temporal view) cross-correlations.
    Fine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub lr_min: f64,
    pub warmup_fraction: f64,
    pub weight_decay: f64,
    /// true: train the head only (a linear probe).
    pub freeze_encoder: bool,
    /// Fraction of each training fold's subjects (per class) whose labels are used.
    pub label_fraction: f64,
    /// K: fixed crops per scan whose logits are averaged at evaluation.
    pub eval_crops: usize,
    /// Share of each fine-tuning set's subjects (per class, stratified,
    /// seeded) held out as a validation split: never trained on, scored
    /// every epoch for the learning diagnostics. 0 = no validation split.
    pub validation_fraction: f64,
    /// The head's (`head.*`) learning rate is `lr` times this; the encoder
    /// keeps `lr`.
    pub head_lr_multiplier: f64,
    /// Early stopping on the validation split: stop after this many epochs
    /// without a lower validation loss and keep the best epoch's weights;
    /// 0 = off (train every epoch, keep the last).
    pub early_stopping_patience: usize,
    /// The per-epoch diagnostics score at most this many training scans (a
    /// fixed class-stratified subset, seeded); 0 = all. Scoring every
    /// training scan at K crops each epoch cost more than the training
    /// itself on ABIDE (532 scans × K forwards per epoch). The validation
    /// split is always scored whole. With `model.head_norm =
    /// "batch-precise"` the same subset's evaluation crops give the head's
    /// evaluation statistics.
    pub diagnostic_scans: usize,
    /// Dropout on the readout's input (the fused node features before
    /// fusion.proj) in fine-tuning steps: each of a scan's N·F features is
    /// dropped with this probability for the whole crop, the kept ones
    /// scaled by 1/(1 − p). Never in pretraining or evaluation. 0 = off;
    /// the `lstm` encoder has no readout and refuses it.
    pub dropout: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateConfig {
    pub folds: usize,
    pub split: SplitKind,
    /// Pretrain on the test fold's scans too (without their labels).
    pub include_test_unlabeled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitKind {
    /// Stratified k-fold over subjects.
    #[default]
    Stratified,
    /// One fold per site.
    LeaveSiteOut,
}

/// Occlusion importance (`stptf explain`, and `evaluate` per fold; docs/importance.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExplainConfig {
    /// `evaluate` also explains each fold's test scans into `fold-<name>/`
    /// and summarises the folds' agreement in `summary.json`.
    pub in_evaluate: bool,
    /// Explain at most this many scans (a class-stratified subset drawn with
    /// the seed); 0 = all. One explanation costs 1 + N + K (+ N·K with the
    /// heatmap) forwards per batch of crops.
    pub max_scans: usize,
    /// Also occlude each region within each segment (the region × time heatmap).
    pub heatmap: bool,
    /// How an occluded region's frames are replaced: "shuffle", "zero", "shift" or "noise".
    pub perturbation: crate::train::explain::Perturbation,
    /// Random perturbations (shuffle, noise) averaged per occlusion; >= 1.
    pub draws: usize,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            in_evaluate: false,
            max_scans: 0,
            heatmap: true,
            perturbation: Default::default(),
            draws: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Inverse L2 strength of the FC + logistic-regression baseline (scikit-learn's C).
    pub c_reg: f64,
    /// Connectivity the baseline classifies: "pearson", "partial" or "tangent"
    /// (an unknown name is rejected by the deserializer, naming the three).
    pub features: crate::train::baseline::FeatureKind,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            crop: 128,
            node_channels: 32,
            width: 128,
            embed_dim: 16,
            window: 30,
            stride: 15,
            segment: 16,
            qk_dim: 64,
            proj_dim: 256,
            norm: Norm::None,
            residual: Residual::Spatial,
            encoder: Encoder::Psta,
            head_norm: HeadNorm::None,
            node_features: NodeFeatures::Series,
            profile_norm: ProfileNorm::None,
        }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            kind: AugmentKind::Stiga,
            sca: true,
            tca: true,
            p_scale: 0.2,
            p_max: 0.7,
        }
    }
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            epochs: 100,
            batch: 64,
            lr: 1e-3,
            lr_min: 1e-6,
            warmup_fraction: 0.1,
            weight_decay: 1e-4,
            fgco: Fgco::Global,
            lambda_offdiag: 0.0051,
        }
    }
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            epochs: 50,
            batch: 32,
            lr: 1e-4,
            lr_min: 1e-7,
            warmup_fraction: 0.1,
            weight_decay: 1e-4,
            freeze_encoder: false,
            label_fraction: 1.0,
            validation_fraction: 0.0,
            eval_crops: 8,
            head_lr_multiplier: 1.0,
            dropout: 0.0,
            early_stopping_patience: 0,
            diagnostic_scans: 128,
        }
    }
}

impl Default for EvaluateConfig {
    fn default() -> Self {
        EvaluateConfig {
            folds: 5,
            split: SplitKind::Stratified,
            include_test_unlabeled: false,
        }
    }
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            c_reg: 1.0,
            features: crate::train::baseline::FeatureKind::Pearson,
        }
    }
}

/// Keys whose value may be absent (an `Option`), so they do not appear in the
/// serialized table but may still be set with `--set`.
const OPTIONAL_KEYS: &[&str] = &["data.dataset"];

impl Config {
    /// Parses and validates a config; `origin` names the source in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|error| {
            if is_dataset_description(text) {
                ConfigError::DatasetDescription {
                    path: origin.display().to_string(),
                }
            } else {
                ConfigError::Parse {
                    path: origin.display().to_string(),
                    error,
                }
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.display().to_string(),
            error,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// The resolved config as TOML (what a run directory records).
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).map_err(|error| ConfigError::Serialize { error })
    }

    /// Applies `--set KEY=VALUE`.
    pub fn apply_assignment(&mut self, assignment: &str) -> Result<()> {
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(ConfigError::NotAnAssignment {
                assignment: assignment.to_string(),
            });
        };
        self.apply_override(key.trim(), value.trim())
    }

    /// Replaces one field, named by its dotted path (`pretrain.lr`), with a
    /// value written as in TOML (`3e-4`, `true`, `"fine"` or bare `fine`).
    /// The config is round-tripped through `toml::Value`, so the value is
    /// checked by the same deserializer as a file, and then validated.
    pub fn apply_override(&mut self, key: &str, value: &str) -> Result<()> {
        let mut table =
            toml::Value::try_from(&*self).map_err(|error| ConfigError::Serialize { error })?;
        let parts: Vec<&str> = key.split('.').collect();
        let (last, parents) = match parts.split_last() {
            Some((last, parents)) if !last.is_empty() => (*last, parents),
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                    hint: "expected a dotted key such as pretrain.lr".to_string(),
                })
            }
        };
        let mut node = &mut table;
        let mut walked = String::new();
        for part in parents {
            let keys = child_keys(node);
            let next = node
                .as_table_mut()
                .and_then(|t| t.get_mut(*part))
                .filter(|v| v.is_table());
            let Some(next) = next else {
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                    hint: format!(
                        "{} has no section \"{part}\"; sections: {}",
                        if walked.is_empty() {
                            "the config"
                        } else {
                            &walked
                        },
                        keys
                    ),
                });
            };
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(part);
            node = next;
        }
        let keys = child_keys(node);
        let Some(section) = node.as_table_mut() else {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
                hint: format!("{walked} is not a section"),
            });
        };
        let old = section.get(last).cloned();
        if old.is_none() && !OPTIONAL_KEYS.contains(&key) {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
                hint: format!(
                    "{} has the keys: {keys}",
                    if walked.is_empty() {
                        "the top level"
                    } else {
                        &walked
                    }
                ),
            });
        }
        if matches!(old, Some(toml::Value::Table(_))) {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
                hint: format!("\"{key}\" is a section; set one of its keys: {key}.KEY"),
            });
        }
        let expected = old.as_ref().map_or("a string (a path)", expected_kind);
        if let Some(message) = out_of_range(value, old.as_ref()) {
            return Err(ConfigError::BadValue {
                key: key.to_string(),
                value: value.to_string(),
                expected: expected.to_string(),
                message,
            });
        }
        let new = parse_value(value, old.as_ref());
        section.insert(last.to_string(), new);
        let bad = |message: String| ConfigError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
            message,
        };
        let updated: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message().trim().to_string()))?;
        updated.validate()?;
        *self = updated;
        Ok(())
    }

    /// Ranges the deserializer cannot check: positive sizes and rates,
    /// probabilities in [0, 1], windows that fit in a crop.
    pub fn validate(&self) -> Result<()> {
        fn check(ok: bool, key: &str, value: String, expected: &'static str) -> Result<()> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key: key.to_string(),
                    value,
                    expected,
                })
            }
        }
        let m = &self.model;
        for (key, v) in [
            ("model.crop", m.crop),
            ("model.node_channels", m.node_channels),
            ("model.width", m.width),
            ("model.embed_dim", m.embed_dim),
            ("model.window", m.window),
            ("model.stride", m.stride),
            ("model.segment", m.segment),
            ("model.qk_dim", m.qk_dim),
            ("model.proj_dim", m.proj_dim),
            ("finetune.batch", self.finetune.batch),
            ("finetune.eval_crops", self.finetune.eval_crops),
            ("explain.draws", self.explain.draws),
        ] {
            check(v >= 1, key, v.to_string(), "an integer >= 1")?;
        }
        // FGCO standardizes every feature of the cross-correlation over the
        // batch (and the projector's BatchNorm normalizes over it): with one
        // scan the variance is 0 and the loss is a constant (128.0 at J = 256).
        check(
            self.pretrain.batch >= 2,
            "pretrain.batch",
            self.pretrain.batch.to_string(),
            "an integer >= 2 (the cross-correlation is standardized over the batch; \
             a batch of one has no variance)",
        )?;
        // FGCO `fine` compares region embeddings, which the LSTM encoder does
        // not produce: refuse the pair when the config loads, not mid-step.
        check(
            !(self.pretrain.fgco == Fgco::Fine && m.encoder == Encoder::Lstm),
            "pretrain.fgco",
            "\"fine\"".to_string(),
            "\"global\" with model.encoder = \"lstm\" (the LSTM has no region embeddings)",
        )?;
        // PSTA's branches and the gcn-only ablation take connectivity
        // profiles; stgcn-style (temporal convolutions of constant features)
        // and lstm keep the literal per-frame input.
        check(
            m.node_features == NodeFeatures::Series
                || matches!(m.encoder, Encoder::Psta | Encoder::GcnOnly),
            "model.node_features",
            format!("{:?} with model.encoder = {:?}", m.node_features, m.encoder).to_lowercase(),
            "\"series\" unless model.encoder = \"psta\" or \"gcn-only\"",
        )?;
        check(
            m.profile_norm == ProfileNorm::None || m.node_features != NodeFeatures::Series,
            "model.profile_norm",
            format!("{:?} with model.node_features = \"series\"", m.profile_norm).to_lowercase(),
            "\"none\" unless model.node_features = \"pearson\" or \"partial\" (it scales connectivity profiles)",
        )?;
        check(
            m.window <= m.crop,
            "model.window",
            m.window.to_string(),
            "at most model.crop (a window must fit in a crop)",
        )?;
        let a = &self.augment;
        check(
            (0.0..=1.0).contains(&a.p_scale),
            "augment.p_scale",
            a.p_scale.to_string(),
            "a probability in [0, 1]",
        )?;
        check(
            (0.0..=1.0).contains(&a.p_max),
            "augment.p_max",
            a.p_max.to_string(),
            "a probability in [0, 1]",
        )?;
        for (prefix, lr, lr_min, warmup, wd) in [
            (
                "pretrain",
                self.pretrain.lr,
                self.pretrain.lr_min,
                self.pretrain.warmup_fraction,
                self.pretrain.weight_decay,
            ),
            (
                "finetune",
                self.finetune.lr,
                self.finetune.lr_min,
                self.finetune.warmup_fraction,
                self.finetune.weight_decay,
            ),
        ] {
            let key = |name: &str| format!("{prefix}.{name}");
            check(
                lr.is_finite() && lr > 0.0,
                &key("lr"),
                lr.to_string(),
                "a finite number > 0",
            )?;
            check(
                lr_min.is_finite() && (0.0..=lr).contains(&lr_min),
                &key("lr_min"),
                lr_min.to_string(),
                "a number in [0, lr]",
            )?;
            check(
                (0.0..=1.0).contains(&warmup),
                &key("warmup_fraction"),
                warmup.to_string(),
                "a fraction in [0, 1]",
            )?;
            check(
                wd.is_finite() && wd >= 0.0,
                &key("weight_decay"),
                wd.to_string(),
                "a finite number >= 0",
            )?;
        }
        check(
            self.pretrain.lambda_offdiag.is_finite() && self.pretrain.lambda_offdiag >= 0.0,
            "pretrain.lambda_offdiag",
            self.pretrain.lambda_offdiag.to_string(),
            "a finite number >= 0",
        )?;
        check(
            self.finetune.label_fraction > 0.0 && self.finetune.label_fraction <= 1.0,
            "finetune.label_fraction",
            self.finetune.label_fraction.to_string(),
            "a fraction in (0, 1]",
        )?;
        check(
            (0.0..1.0).contains(&self.finetune.validation_fraction),
            "finetune.validation_fraction",
            self.finetune.validation_fraction.to_string(),
            "a fraction in [0, 1)",
        )?;
        check(
            self.finetune.head_lr_multiplier.is_finite() && self.finetune.head_lr_multiplier > 0.0,
            "finetune.head_lr_multiplier",
            self.finetune.head_lr_multiplier.to_string(),
            "a finite number > 0",
        )?;
        check(
            (0.0..1.0).contains(&self.finetune.dropout),
            "finetune.dropout",
            self.finetune.dropout.to_string(),
            "a probability in [0, 1)",
        )?;
        check(
            self.finetune.dropout == 0.0 || self.model.encoder != Encoder::Lstm,
            "finetune.dropout",
            format!("{} with model.encoder = \"lstm\"", self.finetune.dropout),
            "0 with the lstm encoder (it has no readout to drop features of)",
        )?;
        // Early stopping chooses the epoch by the validation loss; without a
        // validation split there is nothing to choose by.
        check(
            self.finetune.early_stopping_patience == 0 || self.finetune.validation_fraction > 0.0,
            "finetune.early_stopping_patience",
            self.finetune.early_stopping_patience.to_string(),
            "0 while finetune.validation_fraction = 0 (early stopping scores the validation \
             split: set finetune.validation_fraction > 0 first, or the patience to 0)",
        )?;
        check(
            self.evaluate.folds >= 2,
            "evaluate.folds",
            self.evaluate.folds.to_string(),
            "an integer >= 2",
        )?;
        check(
            self.baseline.c_reg.is_finite() && self.baseline.c_reg > 0.0,
            "baseline.c_reg",
            self.baseline.c_reg.to_string(),
            "a finite number > 0",
        )?;
        Ok(())
    }
}

/// Whether a TOML text that failed to parse as an experiment config looks
/// like a dataset description (docs/data.md: it lists `files` and `labels`).
fn is_dataset_description(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| {
        t.contains_key("files") || (t.contains_key("labels") && t.contains_key("name"))
    })
}

fn child_keys(node: &toml::Value) -> String {
    node.as_table()
        .map(|t| t.keys().map(String::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn expected_kind(old: &toml::Value) -> &'static str {
    match old {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Array(_) => "an array, e.g. [\"NYU\", \"UCLA_1\"]",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Table(_) => "a section",
    }
}

/// Why a number given for a numeric key cannot be stored, if it cannot: every
/// integer key is a count or a seed, and a TOML integer is an i64, so the
/// range is 0 ..= 2⁶³ − 1 (above it TOML falls back to a string, and the key
/// would report "invalid type: string"); every float key an f64.
/// (Without this, a number TOML cannot hold fell back to a string and was
/// reported as "invalid type: string".)
fn out_of_range(text: &str, old: Option<&toml::Value>) -> Option<String> {
    let digits = text.replace('_', "");
    match old {
        Some(toml::Value::Integer(_)) => {
            let is_integer = {
                let body = digits.strip_prefix(['-', '+']).unwrap_or(&digits);
                !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit())
            };
            if !is_integer {
                return None;
            }
            match digits.parse::<i128>() {
                Ok(v) if (0..=i64::MAX as i128).contains(&v) => None,
                _ => Some(format!(
                    "{text} is out of range: this key takes an integer from 0 to {}",
                    i64::MAX
                )),
            }
        }
        Some(toml::Value::Float(_)) => match digits.parse::<f64>() {
            Ok(v) if v.is_infinite() => Some(format!(
                "{text} is out of range: this key takes a finite number (at most about 1.8e308)"
            )),
            _ => None,
        },
        _ => None,
    }
}

/// A command-line value as TOML: `3e-4`, `true`, `[1, 2]`, `"x"`; anything
/// that is not valid TOML is taken as a bare string (`fine`, `runs/a`). An
/// integer given for a float field is widened (`pretrain.lr=1`).
fn parse_value(text: &str, old: Option<&toml::Value>) -> toml::Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    match (parsed, old) {
        (Some(toml::Value::Integer(i)), Some(toml::Value::Float(_))) => {
            toml::Value::Float(i as f64)
        }
        // A string field given something that parses as another type
        // (`data.dataset=2`): keep the text.
        (Some(v), Some(toml::Value::String(_))) if !v.is_str() => {
            toml::Value::String(text.to_string())
        }
        (Some(v), None) if !v.is_str() => toml::Value::String(text.to_string()),
        (Some(v), _) => v,
        (None, _) => toml::Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DatasetConfig;

    fn assets() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
    }

    fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                toml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }

    /// Every TOML under assets/ parses by its own type: dataset descriptions
    /// (they have `files =`) as `DatasetConfig`, the rest as `Config`.
    #[test]
    fn every_asset_parses() {
        let mut files = Vec::new();
        toml_files(&assets(), &mut files);
        files.sort();
        let mut experiments = 0;
        for path in &files {
            let text = std::fs::read_to_string(path).unwrap();
            let is_dataset = toml::from_str::<toml::Table>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .contains_key("files");
            if is_dataset {
                DatasetConfig::from_toml_str(&text, path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            } else {
                let config = Config::from_toml_str(&text, path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                experiments += 1;
                // Any dataset it names exists and parses too.
                if let Some(dataset) = &config.data.dataset {
                    let dataset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dataset);
                    DatasetConfig::from_file(&dataset)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                }
            }
        }
        assert!(
            experiments >= 14,
            "found only {experiments} experiment configs"
        );
    }

    /// Connectivity profiles are PSTA's and gcn-only's: with another
    /// encoder the pair is refused naming both keys; an unknown kind names
    /// the key.
    #[test]
    fn node_features_are_validated() {
        let mut c = Config::default();
        c.apply_override("model.node_features", "pearson").unwrap();
        assert_eq!(c.model.node_features, NodeFeatures::Pearson);
        c.apply_override("model.encoder", "gcn-only").unwrap();
        c.apply_override("model.encoder", "psta").unwrap();
        for encoder in ["lstm", "stgcn-style"] {
            let e = c
                .apply_override("model.encoder", encoder)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("model.node_features") && e.contains("model.encoder"),
                "{encoder}: {e}"
            );
        }
        let e = c
            .apply_override("model.node_features", "tangent")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.node_features"), "{e}");
    }

    /// Profile normalization needs profiles: with the literal series it is
    /// refused naming the key; every kind parses; an unknown kind names the key.
    #[test]
    fn profile_norm_is_validated() {
        let mut c = Config::default();
        let e = c
            .apply_override("model.profile_norm", "center")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.profile_norm") && e.contains("series"),
            "{e}"
        );
        c.apply_override("model.node_features", "partial").unwrap();
        for (text, kind) in [
            ("center", ProfileNorm::Center),
            ("standardize", ProfileNorm::Standardize),
            ("none", ProfileNorm::None),
        ] {
            c.apply_override("model.profile_norm", text).unwrap();
            assert_eq!(c.model.profile_norm, kind);
        }
        let e = c
            .apply_override("model.profile_norm", "whiten")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.profile_norm"), "{e}");
    }

    /// Issue 9's switches: a bad value is an error naming the key, and early
    /// stopping without a validation split names both keys.
    #[test]
    fn head_switches_are_validated() {
        let mut c = Config::default();
        for bad in ["0", "-1", "nan"] {
            let e = c
                .apply_override("finetune.head_lr_multiplier", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("finetune.head_lr_multiplier"), "{bad}: {e}");
        }
        let e = c
            .apply_override("model.head_norm", "layer")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.head_norm"), "{e}");
        let e = c
            .apply_override("finetune.early_stopping_patience", "3")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("finetune.early_stopping_patience")
                && e.contains("finetune.validation_fraction"),
            "{e}"
        );
        c.apply_override("finetune.validation_fraction", "0.2")
            .unwrap();
        c.apply_override("finetune.early_stopping_patience", "3")
            .unwrap();
        c.apply_override("model.head_norm", "batch").unwrap();
        c.apply_override("finetune.head_lr_multiplier", "10")
            .unwrap();
        assert_eq!(c.finetune.early_stopping_patience, 3);
        assert_eq!(c.model.head_norm, HeadNorm::Batch);
        assert_eq!(c.finetune.head_lr_multiplier, 10.0);
        c.apply_override("model.head_norm", "batch-precise")
            .unwrap();
        assert_eq!(c.model.head_norm, HeadNorm::BatchPrecise);
        for bad in ["1", "1.5", "-0.1", "nan"] {
            let e = c
                .apply_override("finetune.dropout", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("finetune.dropout"), "{bad}: {e}");
        }
        c.apply_override("finetune.dropout", "0.3").unwrap();
        assert_eq!(c.finetune.dropout, 0.3);
        // It acts: the fine-tuning step's objective carries it.
        let objective = crate::train::step::FinetuneObjective::from_config(&c);
        assert_eq!((objective.dropout, objective.seed), (0.3, c.seed));
        let e = c
            .apply_override("model.encoder", "lstm")
            .unwrap_err()
            .to_string();
        assert!(e.contains("finetune.dropout") && e.contains("lstm"), "{e}");
    }

    /// The literal-model preset pins every switch at its literal value.
    #[test]
    fn paper_literal_preset_is_the_literal_model() {
        let path = assets().join("experiments/paper_literal.toml");
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.model.head_norm, HeadNorm::None);
        assert_eq!(c.model.norm, Norm::None);
        assert_eq!(c.model.residual, Residual::Spatial);
        assert_eq!(c.model.encoder, Encoder::Psta);
        assert_eq!(c.finetune.head_lr_multiplier, 1.0);
        assert_eq!(c.finetune.early_stopping_patience, 0);
        assert_eq!(c.finetune.validation_fraction, 0.0);
        assert!(!c.finetune.freeze_encoder);
        // Every key it writes is written explicitly, not left to the defaults.
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for key in ["head_norm", "norm", "residual", "encoder"] {
            assert!(table["model"].get(key).is_some(), "model.{key}");
        }
        for key in [
            "head_lr_multiplier",
            "early_stopping_patience",
            "validation_fraction",
        ] {
            assert!(table["finetune"].get(key).is_some(), "finetune.{key}");
        }
    }

    #[test]
    fn default_toml_equals_the_defaults() {
        let path = assets().join("default.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::from_toml_str(&text, &path).unwrap();
        assert_eq!(config, Config::default());
        // And the serialized form reads back to the same config.
        let again = Config::from_toml_str(&config.to_toml_string().unwrap(), &path).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn overrides_replace_one_field() {
        let mut c = Config::default();
        c.apply_override("pretrain.lr", "3e-4").unwrap();
        assert_eq!(c.pretrain.lr, 3e-4);
        c.apply_override("pretrain.lr", "1").unwrap();
        assert_eq!(c.pretrain.lr, 1.0);
        c.apply_override("pretrain.fgco", "fine").unwrap();
        assert_eq!(c.pretrain.fgco, Fgco::Fine);
        c.apply_override("model.encoder", "\"gcn-only\"").unwrap();
        assert_eq!(c.model.encoder, Encoder::GcnOnly);
        c.apply_assignment("augment.sca = false").unwrap();
        assert!(!c.augment.sca);
        c.apply_override("seed", "42").unwrap();
        assert_eq!(c.seed, 42);
        c.apply_override("data.dataset", "assets/abide_cc200.toml")
            .unwrap();
        assert_eq!(
            c.data.dataset.as_deref(),
            Some(Path::new("assets/abide_cc200.toml"))
        );
        c.apply_override("data.finetune_sites", "[\"NYU\", \"KKI\"]")
            .unwrap();
        assert_eq!(c.data.finetune_sites, vec!["NYU", "KKI"]);
        c.apply_override("evaluate.split", "leave-site-out")
            .unwrap();
        assert_eq!(c.evaluate.split, SplitKind::LeaveSiteOut);
    }

    #[test]
    fn override_errors_name_key_value_and_expectation() {
        let mut c = Config::default();
        let e = c
            .apply_override("pretrain.lrr", "1e-3")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"pretrain.lrr\"") && e.contains("lr_min"),
            "{e}"
        );
        let e = c
            .apply_override("pretrian.lr", "1e-3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pretrian") && e.contains("pretrain"), "{e}");
        let e = c
            .apply_override("pretrain.epochs", "many")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pretrain.epochs") && e.contains("many") && e.contains("an integer"),
            "{e}"
        );
        let e = c
            .apply_override("pretrain.fgco", "coarse")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("coarse") && e.contains("global") && e.contains("fine"),
            "{e}"
        );
        let e = c
            .apply_override("augment.sca", "1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("true or false"), "{e}");
        let e = c
            .apply_override("pretrain.lr", "-1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pretrain.lr") && e.contains("> 0"), "{e}");
        let e = c.apply_override("pretrain", "1").unwrap_err().to_string();
        assert!(e.contains("section"), "{e}");
        let e = c.apply_assignment("pretrain.lr").unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        // Numbers out of range say so (not "invalid type: string").
        for (key, value) in [
            ("pretrain.epochs", "-1"),
            ("pretrain.epochs", "99999999999999999999"),
            ("seed", "-3"),
            // Fits a u64 but not a TOML integer (i64).
            ("model.width", "18446744073709551615"),
        ] {
            let e = c.apply_override(key, value).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains("out of range") && !e.contains("invalid type"),
                "{e}"
            );
        }
        let e = c
            .apply_override("pretrain.lr", "1e999")
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range") && e.contains("finite"), "{e}");
        // A batch that cannot standardize the cross-correlation.
        let e = c
            .apply_override("pretrain.batch", "1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pretrain.batch") && e.contains(">= 2") && e.contains("variance"),
            "{e}"
        );
        c.apply_override("finetune.batch", "1").unwrap();
        c.apply_override("finetune.batch", "32").unwrap();
        // A failed override leaves the config as it was.
        assert_eq!(c, Config::default());
    }

    #[test]
    fn a_dataset_description_given_as_config_says_so() {
        let path = assets().join("abide_cc200.toml");
        let e = Config::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("this is a dataset description; pass it with --dataset"),
            "{e}"
        );
        // An ordinary typo is still a parse error naming the key.
        let e = Config::from_toml_str("[model]\nwidht = 3\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("widht") && !e.contains("dataset description"),
            "{e}"
        );
    }

    /// The CLI prints an error's whole source chain: a cause that is both in
    /// the message and a source would be printed twice.
    #[test]
    fn file_errors_state_their_cause_once() {
        use std::error::Error as _;
        let e = Config::from_file(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(e.source().is_none());
        assert_eq!(e.to_string().matches("os error").count(), 1, "{e}");
        let e = Config::from_toml_str("[model]\nwidht = 3\n", Path::new("x.toml")).unwrap_err();
        assert!(e.source().is_none());
        assert_eq!(
            e.to_string().matches("widht").count(),
            2,
            "the snippet and the message: {e}"
        );
    }

    #[test]
    fn unknown_keys_in_a_file_are_named() {
        let e = Config::from_toml_str("[pretrain]\nlearning_rate = 1e-3\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml") && e.contains("learning_rate"), "{e}");
        let e = Config::from_toml_str("[pretrian]\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pretrian"), "{e}");
        let e = Config::from_toml_str("[model]\nwindow = 200\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.window") && e.contains("200"), "{e}");
    }

    #[test]
    fn fgco_fine_with_the_lstm_encoder_is_refused_at_load() {
        let mut c = Config::default();
        c.apply_override("model.encoder", "lstm").unwrap();
        c.validate().unwrap();
        // An override is validated as it is applied (`--set` and files alike).
        let e = c
            .apply_override("pretrain.fgco", "fine")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pretrain.fgco") && e.contains("lstm"), "{e}");
        c.pretrain.fgco = Fgco::Fine;
        assert!(c.validate().is_err());
    }
}
