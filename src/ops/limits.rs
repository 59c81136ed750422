//! Shared launch-time checks for the op families that do not split their
//! work across storage bindings (their tensors are small: per-column or
//! per-row statistics, N x N graphs).

use crate::gpu::{Gpu, GpuError, Result, Tensor};

/// Errors (instead of a wgpu validation failure) when a tensor is larger than
/// one storage binding.
pub(crate) fn fits_binding(gpu: &Gpu, op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    let limit = gpu.max_binding_bytes();
    for t in tensors {
        let bytes = (t.len() * 4) as u64;
        if bytes > limit {
            return Err(GpuError::Shape {
                op,
                message: format!(
                    "tensor {:?} is {bytes} bytes, over the {limit}-byte storage binding limit",
                    t.shape()
                ),
            });
        }
    }
    Ok(())
}

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
