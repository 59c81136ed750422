//! One module per kernel family: launch code, f64 CPU reference and tests,
//! beside the WGSL file of the same name under `shaders/`.
pub mod elementwise;
pub mod graph_conv;
pub mod matmul;
pub mod scalar;
pub mod segment_pool;
pub mod stiga;
pub mod transpose;
pub mod window;
