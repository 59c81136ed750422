//! The data layer: files in, z-scored scans with labels and groups out, then
//! splits (by subject) and batches (crops of length T) for the GPU side.
//!
//! - `formats`: one file -> f32 [regions, time] (.npy, .npz, .1D/.txt/.csv/.tsv, .mat)
//! - `config`: the dataset description TOML (schema in docs/data.md)
//! - `dataset`: every scan with its label, subject, site; what was excluded and why
//! - `preprocess`: per-region z-scoring over the whole scan
//! - `split`: stratified subject-level k-fold, leave-site-out, label-fraction subsampling
//! - `batch`: random training crops, fixed evaluation crops, background prefetch
//! - `atlas`: the optional region table (names, coordinates) of a dataset
//! - `synth`: synthetic datasets with planted spatial and temporal class differences

pub mod atlas;
pub mod batch;
pub mod config;
pub mod dataset;
pub mod error;
pub mod formats;
pub mod preprocess;
pub mod split;
pub mod synth;
pub mod upload;

pub use batch::HostBatch;
pub use config::DatasetConfig;
pub use dataset::{Dataset, Scan};
pub use error::DataError;
