//! stptf: STPTF for fMRI decoding, with every hot path a WGSL compute shader on wgpu.
pub mod autograd;
pub mod bench;
pub mod check;
pub mod config;
pub mod data;
pub mod dist;
pub mod fuzzing;
pub mod gpu;
pub mod host;
pub mod model;
pub mod ops;
pub mod train;
