//! Per-window Pearson correlation matrices of ROI time series
//! (`shaders/correlation.wgsl`): x [B, N, T] → [B, W, N, N] for windows of L
//! frames with stride S, W = ⌊(T − L)/S⌋ + 1. [`correlation_whole`] is the
//! whole-crop case (L = T, W = 1) behind SCA's |Pearson| degree.
//!
//! A region with no variance in a window (all zero, or masked by SCA)
//! correlates 0 with every region, itself included; every other diagonal
//! entry is exactly 1. "No variance" means a sum of squared deviations at most
//! 1e-10·L·mean² (0 for an all-zero series; the rounding residue of a constant
//! one). There is no backward: the matrices are computed from the input and
//! no gradient flows into them (docs/design.md §3).
//!
//! A batch whose output exceeds one storage binding (B = 64, N = 200, W = 7
//! is 72 MB, lavapipe's limit 128 MiB) is split over batch items.

use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::ops::matmul::{matmul_into, Spec};

const SHADER: crate::gpu::Shader = crate::shader!("correlation");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    t: u32,
    l: u32,
    s: u32,
    w: u32,
    items: u32,
    first: u32,
}

fn shape_err(message: String) -> GpuError {
    GpuError::Shape {
        op: "correlation",
        message,
    }
}

/// Number of windows of length `window` with `stride` in `t` frames.
pub fn window_count(t: usize, window: usize, stride: usize) -> Result<usize> {
    if window == 0 || stride == 0 {
        return Err(shape_err(format!(
            "window length {window} and stride {stride} must be positive"
        )));
    }
    if t < window {
        return Err(shape_err(format!(
            "crop of {t} frames is shorter than the window of {window}"
        )));
    }
    Ok((t - window) / stride + 1)
}

/// Which implementation forms the products (see the shader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Standardized rows, then matmul's y·yᵀ, then a diagonal/clamp pass.
    Matmul,
    /// One invocation per output element, each a dot product over L frames.
    Direct,
}

/// The path for a batch whose standardized rows (`rows` elements) and
/// output (`out` elements) would be bound whole: matmul's when both fit one
/// binding, else the direct kernel (which splits the output over items).
pub fn path(gpu: &Gpu, rows: usize, out: usize) -> Path {
    let limit = gpu.planner("correlation").limit_elems();
    if rows <= limit && out <= limit {
        Path::Matmul
    } else {
        Path::Direct
    }
}

/// Pearson correlation per window: x [B, N, T] → [B, W, N, N].
pub fn correlation(gpu: &Gpu, x: &Tensor, window: usize, stride: usize) -> Result<Tensor> {
    let &[b, n, t] = x.shape() else {
        return Err(shape_err(format!(
            "input {:?} must be [B, N, T]",
            x.shape()
        )));
    };
    let w = window_count(t, window, stride)?;
    let chosen = path(gpu, b * w * n * window, b * w * n * n);
    correlation_on(gpu, x, window, stride, chosen)
}

fn correlation_on(
    gpu: &Gpu,
    x: &Tensor,
    window: usize,
    stride: usize,
    chosen: Path,
) -> Result<Tensor> {
    let &[b, n, t] = x.shape() else {
        return Err(shape_err(format!(
            "input {:?} must be [B, N, T]",
            x.shape()
        )));
    };
    let w = window_count(t, window, stride)?;
    let out = gpu.empty(&[b, w, n, n]);
    if out.is_empty() {
        return Ok(out);
    }
    // The launch parameters of `count` items from item `first`.
    let params = |first: usize, count: usize| Params {
        n: n as u32,
        t: t as u32,
        l: window as u32,
        s: stride as u32,
        w: w as u32,
        items: count as u32,
        first: first as u32,
    };
    if chosen == Path::Matmul {
        let p = params(0, b);
        let stats = gpu.empty(&[b, w, n, 2]);
        gpu.launch_threads(
            SHADER.kernel("window_stats"),
            &[(0, x.arg()), (1, stats.arg())],
            &p,
            (b * w * n) as u64,
        )?;
        let y = gpu.empty(&[b * w, n, window]);
        gpu.launch_threads(
            SHADER.kernel("standardize"),
            &[(0, x.arg()), (1, stats.arg()), (2, y.arg())],
            &p,
            y.len() as u64,
        )?;
        let products = out.reshape(&[b * w, n, n])?;
        matmul_into(gpu, &y, &y, &products, Spec::NT, 1.0)?;
        gpu.launch_threads(
            SHADER.kernel("finish"),
            &[(1, stats.arg()), (2, out.arg())],
            &p,
            out.len() as u64,
        )?;
        return Ok(out);
    }
    let planner = gpu.planner("correlation");
    planner.whole(
        &[x],
        "x is bound whole and indexed by `first`; it is far smaller than the [B, W, N, N] output, which is what splits",
    )?;
    let per_item = w * n * n;
    for items in planner.aligned_rows(b, &[per_item])? {
        let (first, count) = (items.start, items.len());
        let stats = gpu.empty(&[count, w, n, 2]);
        let p = params(first, count);
        gpu.launch_threads(
            SHADER.kernel("window_stats"),
            &[(0, x.arg()), (1, stats.arg())],
            &p,
            (count * w * n) as u64,
        )?;
        gpu.launch_threads(
            SHADER.kernel("correlation"),
            &[
                (0, x.arg()),
                (1, stats.arg()),
                (2, out.range(first * per_item, count * per_item)),
            ],
            &p,
            (count * per_item) as u64,
        )?;
    }
    Ok(out)
}

/// Pearson correlation of the whole crop: x [B, N, T] → [B, 1, N, N].
pub fn correlation_whole(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let t = x.shape().last().copied().unwrap_or(0);
    correlation(gpu, x, t, 1)
}

/// f64 CPU reference.
pub mod reference {
    /// x [b, n, t] row-major → [b, w, n, n].
    pub fn correlation(
        x: &[f64],
        b: usize,
        n: usize,
        t: usize,
        window: usize,
        stride: usize,
    ) -> Vec<f64> {
        let w = (t - window) / stride + 1;
        let mut out = vec![0.0; b * w * n * n];
        for bi in 0..b {
            for wi in 0..w {
                let series = |r: usize| &x[(bi * n + r) * t + wi * stride..][..window];
                let dev: Vec<Vec<f64>> = (0..n)
                    .map(|r| {
                        let s = series(r);
                        let m = s.iter().sum::<f64>() / window as f64;
                        s.iter().map(|v| v - m).collect()
                    })
                    .collect();
                let inv: Vec<f64> = (0..n)
                    .map(|r| {
                        let m = series(r).iter().sum::<f64>() / window as f64;
                        let ss: f64 = dev[r].iter().map(|d| d * d).sum();
                        if ss <= 1e-10 * window as f64 * m * m {
                            0.0
                        } else {
                            1.0 / ss.sqrt()
                        }
                    })
                    .collect();
                for i in 0..n {
                    for j in 0..n {
                        let v = if i == j {
                            if inv[i] > 0.0 {
                                1.0
                            } else {
                                0.0
                            }
                        } else {
                            dev[i].iter().zip(&dev[j]).map(|(a, b)| a * b).sum::<f64>()
                                * inv[i]
                                * inv[j]
                        };
                        out[((bi * w + wi) * n + i) * n + j] = v;
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

    /// Series with shared structure (so correlations are far from 0), a
    /// constant region and an all-zero region.
    fn series(b: usize, n: usize, t: usize, seed: u64) -> Vec<f32> {
        let base = random_vec(b * t, seed);
        let noise = random_vec(b * n * t, seed + 1);
        let mut x = vec![0.0f32; b * n * t];
        for bi in 0..b {
            for r in 0..n {
                for k in 0..t {
                    let mix = (r % 5) as f32 * 0.3;
                    x[(bi * n + r) * t + k] =
                        mix * base[bi * t + k] + noise[(bi * n + r) * t + k] + 0.1 * r as f32;
                }
            }
            if n >= 3 {
                x[(bi * n + 1) * t..(bi * n + 2) * t].fill(0.0);
                x[(bi * n + 2) * t..(bi * n + 3) * t].fill(0.7);
            }
        }
        x
    }

    #[test]
    fn matches_reference_over_windows_and_shapes() {
        let gpu = gpu();
        // (B, N, T, L, S): whole crop, N = 1, windows that leave frames over,
        // the default L = 30, S = 15 at T = 64, N = 200 with one small batch.
        let cases: &[(usize, usize, usize, usize, usize)] = &[
            (2, 5, 9, 9, 1),
            (1, 1, 7, 3, 2),
            (3, 7, 20, 6, 4),
            (2, 13, 64, 30, 15),
            (1, 200, 40, 40, 1),
            (1, 200, 45, 30, 15),
        ];
        for (ci, &(b, n, t, l, s)) in cases.iter().enumerate() {
            let x = series(b, n, t, 900 + ci as u64);
            let tx = gpu.upload(&x, &[b, n, t]).unwrap();
            let got = correlation(gpu, &tx, l, s).unwrap();
            let w = window_count(t, l, s).unwrap();
            assert_eq!(got.shape(), &[b, w, n, n]);
            let got = gpu.read(&got).unwrap();
            let want = reference::correlation(&to_f64(&x), b, n, t, l, s);
            assert_close(
                &got,
                &want,
                Tolerance::ACCUMULATION,
                &format!("correlation B={b} N={n} T={t} L={l} S={s}"),
            );
            if n >= 3 {
                // Zero-variance regions: 0 everywhere, never NaN.
                for m in 0..b * w {
                    for r in [1, 2] {
                        for j in 0..n {
                            assert_eq!(got[(m * n + r) * n + j], 0.0);
                            assert_eq!(got[(m * n + j) * n + r], 0.0);
                        }
                    }
                }
            }
        }
    }

    /// Both paths on the same inputs, each against the reference; the
    /// trace shows which kernels ran.
    #[test]
    fn matmul_and_direct_paths_match_the_reference() {
        let gpu = gpu();
        for (ci, &(b, n, t, l, s)) in [(3, 7, 20, 6, 4), (2, 200, 64, 64, 1), (2, 33, 45, 30, 15)]
            .iter()
            .enumerate()
        {
            let x = series(b, n, t, 950 + ci as u64);
            let tx = gpu.upload(&x, &[b, n, t]).unwrap();
            let want = reference::correlation(&to_f64(&x), b, n, t, l, s);
            let w = window_count(t, l, s).unwrap();
            assert_eq!(path(gpu, b * w * n * l, b * w * n * n), Path::Matmul);
            for chosen in [Path::Matmul, Path::Direct] {
                let (got, trace) = gpu.traced(|| correlation_on(gpu, &tx, l, s, chosen).unwrap());
                let ran = |k: &str| !dispatches(&trace, k).is_empty();
                assert_eq!(ran("correlation::standardize"), chosen == Path::Matmul);
                assert_eq!(ran("correlation::finish"), chosen == Path::Matmul);
                assert_eq!(ran("correlation::correlation"), chosen == Path::Direct);
                let what = format!("correlation {chosen:?} B={b} N={n} T={t} L={l} S={s}");
                assert_close(
                    &gpu.read(&got).unwrap(),
                    &want,
                    Tolerance::ACCUMULATION,
                    &what,
                );
            }
        }
    }

    #[test]
    fn whole_crop_is_one_window_and_split_launches_agree() {
        let gpu = gpu();
        let (b, n, t) = (5, 9, 12);
        let x = series(b, n, t, 77);
        let tx = gpu.upload(&x, &[b, n, t]).unwrap();
        let whole = correlation_whole(gpu, &tx).unwrap();
        assert_eq!(whole.shape(), &[b, 1, n, n]);
        let whole = gpu.read(&whole).unwrap();
        let want = reference::correlation(&to_f64(&x), b, n, t, t, 1);
        assert_close(&whole, &want, Tolerance::ACCUMULATION, "whole crop");
        // 2 windows x 9 x 9 = 162 values per item. An aligned range needs at
        // most 32 items (256-byte alignment, the largest WebGPU allows), so a
        // limit of 64 items splits 70 items into 64 + 6; a limit below one
        // item is a clear error.
        let (b2, t2) = (70, 12);
        let x2 = series(b2, n, t2, 78);
        let want2 = reference::correlation(&to_f64(&x2), b2, n, t2, 6, 6);
        let small = gpu_with_binding_limit(64 * 162 * 4);
        let tx2 = small.upload(&x2, &[b2, n, t2]).unwrap();
        let (split, trace) = small.traced(|| correlation(small, &tx2, 6, 6).unwrap());
        assert_eq!(
            dispatches(&trace, "correlation::correlation").len(),
            2,
            "70 items split as 64 + 6: {trace:?}"
        );
        assert_close(
            &small.read(&split).unwrap(),
            &want2,
            Tolerance::ACCUMULATION,
            "split launches",
        );
        let tiny = gpu_with_binding_limit(161 * 4);
        let tx2 = tiny.upload(&x2, &[b2, n, t2]).unwrap();
        let e = correlation(tiny, &tx2, 6, 6).unwrap_err();
        assert!(matches!(e, GpuError::BindingLimit { .. }), "{e}");
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let x = gpu.zeros(&[2, 3, 10]).unwrap();
        for (l, s) in [(11, 1), (0, 1), (5, 0)] {
            let e = correlation(gpu, &x, l, s).unwrap_err();
            assert!(matches!(e, GpuError::Shape { .. }), "{e}");
        }
        let e = correlation(gpu, &gpu.zeros(&[3, 10]).unwrap(), 5, 5).unwrap_err();
        assert!(matches!(e, GpuError::Shape { .. }), "{e}");
    }
}
