//! stptf: STPTF for fMRI decoding, with every hot path a WGSL compute shader on wgpu.
pub mod data;
pub mod gpu;
