//! One module per kernel family: launch code, f64 CPU reference and tests,
//! beside the WGSL file of the same name under `shaders/`.
mod chunk;
pub mod elementwise;
pub mod matmul;
pub mod reduce;
