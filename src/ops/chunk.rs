//! Planning launches over tensors larger than one storage binding.
//!
//! lavapipe binds at most 128 MiB per storage buffer and activations such as
//! [B, N·F, T] exceed that, so launchers split work over leading "rows" (batch
//! items, outer slices). Every bound range must start at a multiple of the
//! storage offset alignment (256 bytes = 64 f32), which constrains how many
//! rows a launch may take.

use crate::gpu::{Gpu, GpuError, Result};

/// Binding offset alignment in elements.
pub(crate) fn align_elems(gpu: &Gpu) -> usize {
    (gpu.report.limits.min_storage_buffer_offset_alignment / 4).max(1) as usize
}

/// Largest element count per binding, rounded down to the offset alignment
/// (the same rule `elementwise::run` uses).
pub(crate) fn chunk_elems(gpu: &Gpu) -> usize {
    let align = align_elems(gpu);
    (((gpu.max_binding_bytes() / 4) as usize / align) * align).max(align)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// How many of `rows` rows one launch may take, when row `r` of binding `k`
/// occupies elements `r * per_row[k] .. (r + 1) * per_row[k]`: as many as
/// fit in one binding, a multiple of the count that keeps every range offset
/// aligned. Returns `rows` when everything fits in one launch.
pub(crate) fn rows_per_launch(
    gpu: &Gpu,
    op: &'static str,
    rows: usize,
    per_row: &[usize],
) -> Result<usize> {
    let limit = (gpu.max_binding_bytes() / 4) as usize;
    let widest = per_row.iter().copied().max().unwrap_or(0).max(1);
    if rows.saturating_mul(widest) <= limit {
        return Ok(rows.max(1));
    }
    let align = align_elems(gpu);
    let step = per_row
        .iter()
        .filter(|&&s| s > 0)
        .map(|&s| align / gcd(s, align))
        .fold(1, lcm);
    let fit = (limit / widest / step) * step;
    if fit == 0 {
        return Err(GpuError::Shape {
            op,
            message: format!(
                "{step} row(s) of {widest} values exceed the {}-byte storage binding limit and cannot be split further",
                gpu.max_binding_bytes()
            ),
        });
    }
    Ok(fit)
}

/// A second device whose planned binding limit is lowered, so tests exercise
/// the split paths on tiny tensors without disturbing the shared device that
/// other tests use concurrently.
#[cfg(test)]
pub(crate) fn small_binding_gpu() -> &'static Gpu {
    static GPU: std::sync::OnceLock<Gpu> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = Gpu::new().expect("a second device for split-launch tests");
        gpu.set_poison_new_tensors(true);
        gpu.set_max_binding_bytes(SMALL_BINDING_BYTES);
        gpu
    })
}

/// 1 KiB: 256 values, four alignment units.
#[cfg(test)]
pub(crate) const SMALL_BINDING_BYTES: u64 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_plans_fit_and_keep_offsets_aligned() {
        let gpu = small_binding_gpu();
        let limit = (gpu.max_binding_bytes() / 4) as usize;
        let align = align_elems(gpu);
        // Everything fits: one launch.
        assert_eq!(rows_per_launch(gpu, "t", 3, &[10, 5]).unwrap(), 3);
        for per_row in [[2usize, 1], [3, 1], [4, 4], [1, 1]] {
            let n = rows_per_launch(gpu, "t", 1000, &per_row).unwrap();
            assert!(n * per_row[0].max(per_row[1]) <= limit, "{per_row:?}: {n}");
            for &s in &per_row {
                assert_eq!((n * s) % align, 0, "{per_row:?}: {n} rows");
            }
        }
        // One aligned group of rows is already too large.
        let e = rows_per_launch(gpu, "t", 1000, &[limit + 1]).unwrap_err();
        assert!(e.to_string().contains("cannot be split"), "{e}");
    }
}
