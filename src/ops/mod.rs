//! One module per kernel family: launch code, f64 CPU reference and tests,
//! beside the WGSL file of the same name under `shaders/`.
pub mod adamw;
mod chunk;
pub mod conv1d;
pub mod cross_entropy;
pub mod elementwise;
pub mod matmul;
pub mod random;
pub mod reduce;
pub mod softmax;
