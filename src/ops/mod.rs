//! One module per kernel family: launch code, f64 CPU reference and tests,
//! beside the WGSL file of the same name under `shaders/`.
pub mod adamw;
pub mod barlow;
pub mod batchnorm;
mod chunk;
pub mod conv1d;
pub mod correlation;
pub mod cross_entropy;
pub mod elementwise;
pub mod graph_conv;
pub mod layernorm;
pub(crate) mod limits;
pub mod lstm;
pub mod matmul;
pub mod partial_correlation;
pub mod random;
pub mod reduce;
pub mod scalar;
pub mod segment_pool;
pub mod softmax;
pub mod stiga;
pub mod transpose;
pub mod window;
