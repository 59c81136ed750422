//! Training: one step and the epoch loop on the GPU, the experimental
//! protocol, and the host-side infrastructure around them (the learning-rate
//! schedule, metrics over folds, checkpoints, run directories, SVG plots and
//! the functional-connectivity + logistic-regression baseline).
//!
//! - `schedule`: learning rate as a pure function of the step (warm-up, cosine)
//! - `protocol`: which scans each phase sees, cross-validation, a run's plots
//! - `profile`: where one step's time goes, by stage and kernel family (`stptf profile`)
//! - `step`: one training step (views, forward, loss, backward, AdamW), recorded once
//! - `trainer`: the epoch loop of one phase, and K-crop scoring
//! - `metrics`: accuracy, ROC AUC, recall, ROC curves, mean (std) over folds
//! - `checkpoint`: weights + AdamW state + metadata, saved crash-safely
//! - `resume`: refuses a resume whose config or data differ, naming what
//! - `rundir`: a run's resolved config, metrics log, summary, per-fold folders
//! - `plots`: dependency-free SVG loss curves, ROC curves, region bar charts
//! - `baseline`: FC features + L2 logistic regression, the honest floor
//! - `atomic`: write-to-temp, fsync, rename
//! - `fault`: fault injection for the crash-safety tests (`STPTF_FAULT`)

pub mod atomic;
pub mod baseline;
pub mod checkpoint;
pub mod explain;
pub mod fault;
pub mod metrics;
pub mod plots;
pub mod profile;
pub mod protocol;
pub mod resume;
pub mod rundir;
pub mod schedule;
pub mod step;
pub mod trainer;
