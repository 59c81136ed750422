//! One module per kernel family: launch code, f64 CPU reference and tests,
//! beside the WGSL file of the same name under `shaders/`.
pub mod adamw;
pub mod barlow;
pub mod batchnorm;
pub mod conv1d;
pub mod correlation;
pub mod cross_entropy;
pub mod elementwise;
pub mod graph_conv;
pub mod layernorm;
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

use crate::gpu::{GpuError, Result, Tensor};

/// `(rows, cols)` of a tensor read as a matrix over its last dimension.
pub(crate) fn as_matrix(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    let s = t.shape();
    if s.is_empty() || t.is_empty() {
        return Err(GpuError::Shape {
            op,
            message: format!("input {s:?} must be non-empty with at least 1 dimension"),
        });
    }
    let cols = s[s.len() - 1];
    Ok((t.len() / cols, cols))
}
