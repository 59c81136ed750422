//! One module per kernel family: launch code, f64 CPU reference and tests,
//! beside the WGSL file of the same name under `shaders/`.
pub mod barlow;
pub mod batchnorm;
pub mod correlation;
pub mod elementwise;
pub mod layernorm;
pub(crate) mod limits;
pub mod matmul;
pub mod partial_correlation;
