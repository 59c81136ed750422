//! Axis swaps (`shaders/transpose.wgsl`): the batched transpose of the last
//! two dimensions and the swap of two adjacent middle axes
//! ([B, T, N, F] ↔ [B, N, T, F]). Both view the input as [A, R, C, I] and
//! write [A, C, R, I]; the backward of a swap is the same swap of the gradient.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("transpose");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    rows: u32,
    cols: u32,
    inner: u32,
    off: u32,
}

/// Swaps axes `axis` and `axis + 1` of `x`: [.., R, C, ..] → [.., C, R, ..].
pub fn swap_axes(gpu: &Gpu, x: &Tensor, axis: usize) -> Result<Tensor> {
    let s = x.shape();
    if axis + 1 >= s.len() {
        return Err(GpuError::Shape {
            op: "swap_axes",
            message: format!("axes {axis} and {} of {s:?}", axis + 1),
        });
    }
    let (r, c) = (s[axis], s[axis + 1]);
    let inner: usize = s[axis + 2..].iter().product();
    let mut shape = s.to_vec();
    shape.swap(axis, axis + 1);
    let out = gpu.empty(&shape);
    let n = x.len();
    if n == 0 {
        return Ok(out);
    }
    // Split over the outer axes A when the tensor exceeds one binding: each
    // [R, C, I] slice is contiguous in both the input and the output.
    let slice = r * c * inner;
    let outer = n / slice;
    let planner = gpu.planner("swap_axes");
    for slices in planner.offset_rows(outer, &[slice])? {
        let range = slices.start * slice..slices.end * slice;
        let elems = range.len();
        let (x_arg, off) = planner.bind(x, range.clone());
        let (out_arg, _) = planner.bind(&out, range);
        let p = Params {
            n: elems as u32,
            rows: r as u32,
            cols: c as u32,
            inner: inner as u32,
            off,
        };
        gpu.launch_threads(
            SHADER.kernel("swap_axes"),
            &[(0, x_arg), (2, out_arg)],
            &p,
            elems as u64,
        )?;
    }
    Ok(out)
}

/// Batched transpose of the last two dimensions: [.., R, C] → [.., C, R].
pub fn transpose(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let rank = x.shape().len();
    if rank < 2 {
        return Err(GpuError::Shape {
            op: "transpose",
            message: format!("{:?} has fewer than 2 dimensions", x.shape()),
        });
    }
    swap_axes(gpu, x, rank - 2)
}

/// f64 CPU reference.
pub mod reference {
    /// `x` viewed as [a, r, c, i] → [a, c, r, i].
    pub fn swap(x: &[f64], a: usize, r: usize, c: usize, i: usize) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for ai in 0..a {
            for ri in 0..r {
                for ci in 0..c {
                    for ii in 0..i {
                        out[((ai * c + ci) * r + ri) * i + ii] =
                            x[((ai * r + ri) * c + ci) * i + ii];
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, dispatches, gpu, gpu_with_binding_limit, random_vec, to_f64, Tolerance,
    };

    #[test]
    fn transpose_matches_reference() {
        let gpu = gpu();
        for (k, shape) in [
            &[1usize, 1][..],
            &[3, 7],
            &[2, 200, 5],
            &[4, 1, 33],
            &[257, 3],
        ]
        .iter()
        .enumerate()
        {
            let n: usize = shape.iter().product();
            let v = random_vec(n, 300 + k as u64);
            let x = gpu.upload(&v, shape).unwrap();
            let y = transpose(gpu, &x).unwrap();
            let rank = shape.len();
            let (r, c) = (shape[rank - 2], shape[rank - 1]);
            assert_eq!(y.shape()[rank - 2..], [c, r]);
            let want = reference::swap(&to_f64(&v), n / (r * c), r, c, 1);
            assert_close(
                &gpu.read(&y).unwrap(),
                &want,
                Tolerance::ELEMENTWISE,
                "transpose",
            );
            // The backward of a transpose is a transpose: applying it twice is the identity.
            let back = transpose(gpu, &y).unwrap();
            assert_eq!(gpu.read(&back).unwrap(), v);
        }
    }

    #[test]
    fn middle_axis_swap_matches_reference() {
        let gpu = gpu();
        // [B, T, N, F] ↔ [B, N, T, F], including N = 200 and dimensions of 1.
        for (k, &(b, t, nn, f)) in [(1, 1, 1, 1), (2, 5, 200, 3), (3, 7, 1, 32), (1, 9, 13, 1)]
            .iter()
            .enumerate()
        {
            let v = random_vec(b * t * nn * f, 310 + k as u64);
            let x = gpu.upload(&v, &[b, t, nn, f]).unwrap();
            let y = swap_axes(gpu, &x, 1).unwrap();
            assert_eq!(y.shape(), &[b, nn, t, f]);
            let want = reference::swap(&to_f64(&v), b, t, nn, f);
            assert_close(
                &gpu.read(&y).unwrap(),
                &want,
                Tolerance::ELEMENTWISE,
                "swap",
            );
        }
    }

    #[test]
    fn split_launches_match_reference() {
        let gpu = gpu_with_binding_limit(4 * (3 * 5 * 7 * 2 + 64)); // two 105-value slices per launch
        let (b, t, nn, f) = (7, 5, 7, 3);
        let v = random_vec(b * t * nn * f, 320);
        let x = gpu.upload(&v, &[b, t, nn, f]).unwrap();
        let (y, trace) = gpu.traced(|| swap_axes(gpu, &x, 1).unwrap());
        assert_eq!(
            dispatches(&trace, "transpose::swap_axes").len(),
            4,
            "7 slices, two per launch: {trace:?}"
        );
        let want = reference::swap(&to_f64(&v), b, t, nn, f);
        assert_close(
            &gpu.read(&y).unwrap(),
            &want,
            Tolerance::ELEMENTWISE,
            "split swap",
        );
    }

    #[test]
    fn bad_axes_are_shape_errors() {
        let gpu = gpu();
        let x = gpu.zeros(&[3]).unwrap();
        assert!(matches!(transpose(gpu, &x), Err(GpuError::Shape { .. })));
        let x = gpu.zeros(&[3, 4]).unwrap();
        assert!(matches!(swap_axes(gpu, &x, 1), Err(GpuError::Shape { .. })));
    }
}
