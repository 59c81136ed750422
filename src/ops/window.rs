//! Sliding windows for the dynamic graph (`shaders/window.wgsl`):
//! x [B, N, T] → [B, W, N, L] with window w covering frames wS .. wS + L and
//! W = ⌊(T − L)/S⌋ + 1. The input is data, so there is no backward.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("window");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    nodes: u32,
    frames: u32,
    len: u32,
    stride: u32,
    windows: u32,
}

/// Number of windows of length `len` and stride `stride` in `frames` frames.
pub fn window_count(frames: usize, len: usize, stride: usize) -> Result<usize> {
    if len == 0 || stride == 0 || frames < len {
        return Err(GpuError::Shape {
            op: "window",
            message: format!(
                "{frames} frames cannot hold a window of length {len} with stride {stride}"
            ),
        });
    }
    Ok((frames - len) / stride + 1)
}

/// x [B, N, T] → windows [B, W, N, L].
pub fn unfold(gpu: &Gpu, x: &Tensor, len: usize, stride: usize) -> Result<Tensor> {
    let &[b, n, t] = x.shape() else {
        return Err(GpuError::Shape {
            op: "window",
            message: format!("input {:?} must be [B, N, T]", x.shape()),
        });
    };
    let w = window_count(t, len, stride)?;
    let out = gpu.empty(&[b, w, n, len]);
    let total = out.len();
    if total == 0 {
        return Ok(out);
    }
    gpu.planner("window").whole(
        &[x, &out],
        "the kernel indexes items from 0 over whole tensors; the unfolded [B, W, N, L] is about L/S copies of x, tens of MB at the model's sizes",
    )?;
    let p = Params {
        n: total as u32,
        nodes: n as u32,
        frames: t as u32,
        len: len as u32,
        stride: stride as u32,
        windows: w as u32,
    };
    gpu.launch_threads(
        SHADER.kernel("unfold"),
        &[(0, x.arg()), (2, out.arg())],
        &p,
        total as u64,
    )?;
    Ok(out)
}

/// f64 CPU reference.
pub mod reference {
    pub fn unfold(x: &[f64], b: usize, n: usize, t: usize, len: usize, stride: usize) -> Vec<f64> {
        let w = (t - len) / stride + 1;
        let mut out = Vec::with_capacity(b * w * n * len);
        for bi in 0..b {
            for wi in 0..w {
                for ni in 0..n {
                    for l in 0..len {
                        out.push(x[(bi * n + ni) * t + wi * stride + l]);
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
    use crate::check::{assert_close, gpu, random_vec, to_f64, Tolerance};

    #[test]
    fn unfold_matches_reference() {
        let gpu = gpu();
        // (B, N, T, L, S): the model's 30/15 windows, T a multiple and not a
        // multiple of the stride, a single window (T = L), N = 200, L = S = 1.
        for (k, &(b, n, t, l, s)) in [
            (2, 5, 128, 30, 15),
            (1, 3, 50, 30, 15),
            (3, 4, 7, 7, 2),
            (1, 200, 33, 10, 4),
            (2, 1, 5, 1, 1),
        ]
        .iter()
        .enumerate()
        {
            let v = random_vec(b * n * t, 400 + k as u64);
            let x = gpu.upload(&v, &[b, n, t]).unwrap();
            let y = unfold(gpu, &x, l, s).unwrap();
            let w = (t - l) / s + 1;
            assert_eq!(y.shape(), &[b, w, n, l]);
            let want = reference::unfold(&to_f64(&v), b, n, t, l, s);
            assert_close(
                &gpu.read(&y).unwrap(),
                &want,
                Tolerance::ELEMENTWISE,
                "unfold",
            );
        }
    }

    #[test]
    fn too_short_input_is_a_shape_error() {
        let gpu = gpu();
        let x = gpu.zeros(&[1, 2, 10]).unwrap();
        let e = unfold(gpu, &x, 30, 15).unwrap_err();
        assert!(matches!(e, GpuError::Shape { .. }), "{e}");
        assert!(e.to_string().contains("10 frames"), "{e}");
    }
}
