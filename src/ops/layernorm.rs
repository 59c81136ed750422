//! LayerNorm over the last dimension (`shaders/layernorm.wgsl`): x [.., D] is
//! read as R = len/D rows of D features; per row, mean and biased variance,
//! ε = 1e-5, y = γ·x̂ + β with γ, β [D]. Used after the fusion 1×1 conv and on
//! Z_st when `model.norm = "layer"` (docs/design.md §3).
//!
//! The forward saves `stats` [R, 2] (mean, inverse standard deviation); the
//! backward recomputes x̂ from x and those.

use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::ops::as_matrix;

const SHADER: crate::gpu::Shader = crate::shader!("layernorm");
/// LayerNorm's variance epsilon (PyTorch's default).
pub const EPS: f32 = 1e-5;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
    eps: f32,
}

/// Forward result: the output and the statistics the backward needs.
#[derive(Clone, Debug)]
pub struct LayerNormForward {
    pub y: Tensor,
    /// [R, 2]: per row the mean and 1/sqrt(var + ε).
    pub stats: Tensor,
}

#[derive(Clone, Debug)]
pub struct LayerNormGrads {
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
}

fn shape_err(message: String) -> GpuError {
    GpuError::Shape {
        op: "layernorm",
        message,
    }
}

fn params(rows: usize, cols: usize) -> Params {
    Params {
        rows: rows as u32,
        cols: cols as u32,
        _pad0: 0,
        _pad1: 0,
        eps: EPS,
    }
}

fn check(gpu: &Gpu, x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>) -> Result<(usize, usize)> {
    let (rows, cols) = as_matrix("layernorm", x)?;
    if gamma.len() != cols || beta.is_some_and(|b| b.len() != cols) {
        return Err(shape_err(format!(
            "gamma {:?} / beta for input {:?} (last dimension {cols})",
            gamma.shape(),
            x.shape()
        )));
    }
    gpu.planner("layernorm").whole(
        &[x],
        "the γ and β gradients sum every row in one launch, so rows are not split",
    )?;
    Ok((rows, cols))
}

/// LayerNorm of `x` [.., D] with γ, β [D].
pub fn layernorm_forward(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<LayerNormForward> {
    let (rows, cols) = check(gpu, x, gamma, Some(beta))?;
    let y = gpu.empty(x.shape());
    let stats = gpu.empty(&[rows, 2]);
    gpu.launch_threads(
        SHADER.kernel("forward"),
        &[
            (0, x.arg()),
            (1, gamma.arg()),
            (2, beta.arg()),
            (3, y.arg()),
            (4, stats.arg()),
        ],
        &params(rows, cols),
        rows as u64,
    )?;
    Ok(LayerNormForward { y, stats })
}

/// Gradients of [`layernorm_forward`] given upstream `dy`, the forward input
/// `x`, γ and the saved `stats`.
pub fn layernorm_backward(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
) -> Result<LayerNormGrads> {
    let (rows, cols) = check(gpu, x, gamma, None)?;
    if dy.shape() != x.shape() || stats.len() != 2 * rows {
        return Err(shape_err(format!(
            "dy {:?} / stats {:?} for input {:?}",
            dy.shape(),
            stats.shape(),
            x.shape()
        )));
    }
    let dx = gpu.empty(x.shape());
    let dgamma = gpu.empty(&[cols]);
    let dbeta = gpu.empty(&[cols]);
    let p = params(rows, cols);
    gpu.launch_threads(
        SHADER.kernel("backward_input"),
        &[
            (0, x.arg()),
            (1, gamma.arg()),
            (4, stats.arg()),
            (5, dy.arg()),
            (6, dx.arg()),
        ],
        &p,
        rows as u64,
    )?;
    gpu.launch_threads(
        SHADER.kernel("backward_params"),
        &[
            (0, x.arg()),
            (4, stats.arg()),
            (5, dy.arg()),
            (7, dgamma.arg()),
            (8, dbeta.arg()),
        ],
        &p,
        cols as u64,
    )?;
    Ok(LayerNormGrads { dx, dgamma, dbeta })
}

/// f64 CPU reference over row-major [rows, cols].
pub mod reference {
    /// Returns (y, stats [rows, 2]).
    pub fn forward(
        x: &[f64],
        rows: usize,
        cols: usize,
        gamma: &[f64],
        beta: &[f64],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; rows * cols];
        let mut stats = vec![0.0; rows * 2];
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let m = row.iter().sum::<f64>() / cols as f64;
            let v = row.iter().map(|v| (v - m).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (v + eps).sqrt();
            stats[2 * r] = m;
            stats[2 * r + 1] = inv;
            for d in 0..cols {
                y[r * cols + d] = gamma[d] * (row[d] - m) * inv + beta[d];
            }
        }
        (y, stats)
    }

    /// Returns (dx, dgamma, dbeta).
    pub fn backward(
        x: &[f64],
        rows: usize,
        cols: usize,
        gamma: &[f64],
        dy: &[f64],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (_, stats) = forward(x, rows, cols, gamma, &vec![0.0; cols], eps);
        let mut dx = vec![0.0; rows * cols];
        let mut dgamma = vec![0.0; cols];
        let mut dbeta = vec![0.0; cols];
        let n = cols as f64;
        for r in 0..rows {
            let (m, inv) = (stats[2 * r], stats[2 * r + 1]);
            let xh: Vec<f64> = (0..cols).map(|d| (x[r * cols + d] - m) * inv).collect();
            let g: Vec<f64> = (0..cols).map(|d| dy[r * cols + d] * gamma[d]).collect();
            let sg: f64 = g.iter().sum();
            let sgx: f64 = g.iter().zip(&xh).map(|(g, x)| g * x).sum();
            for d in 0..cols {
                dx[r * cols + d] = inv / n * (n * g[d] - sg - xh[d] * sgx);
                dgamma[d] += dy[r * cols + d] * xh[d];
                dbeta[d] += dy[r * cols + d];
            }
        }
        (dx, dgamma, dbeta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, finite_difference, gpu, random_vec, to_f64, Tolerance,
    };

    /// Shapes: D = 1 (x̂ = 0), one row, rows not a multiple of 64, D = 128 over B·T rows.
    const SHAPES: &[&[usize]] = &[&[3, 1], &[1, 7], &[5, 13, 9], &[2, 100, 128], &[200, 32]];

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        for (s, shape) in SHAPES.iter().enumerate() {
            let seed = 500 + 10 * s as u64;
            let cols = shape[shape.len() - 1];
            let n: usize = shape.iter().product();
            let rows = n / cols;
            let x: Vec<f32> = random_vec(n, seed).iter().map(|v| 2.0 * v - 0.3).collect();
            let g = random_vec(cols, seed + 1);
            let bt = random_vec(cols, seed + 2);
            let dy = random_vec(n, seed + 3);
            let (x64, g64, b64, dy64) = (to_f64(&x), to_f64(&g), to_f64(&bt), to_f64(&dy));
            let tx = gpu.upload(&x, shape).unwrap();
            let tg = gpu.upload(&g, &[cols]).unwrap();
            let tb = gpu.upload(&bt, &[cols]).unwrap();
            let tdy = gpu.upload(&dy, shape).unwrap();
            let what = format!("layernorm {shape:?}");
            let fwd = layernorm_forward(gpu, &tx, &tg, &tb).unwrap();
            let (y, stats) = reference::forward(&x64, rows, cols, &g64, &b64, EPS as f64);
            assert_close(
                &gpu.read(&fwd.y).unwrap(),
                &y,
                Tolerance::ACCUMULATION,
                &what,
            );
            assert_close(
                &gpu.read(&fwd.stats).unwrap(),
                &stats,
                Tolerance::ACCUMULATION,
                &format!("{what} stats"),
            );
            let grads = layernorm_backward(gpu, &tx, &tg, &fwd.stats, &tdy).unwrap();
            let (dx, dg, db) = reference::backward(&x64, rows, cols, &g64, &dy64, EPS as f64);
            assert_close(
                &gpu.read(&grads.dx).unwrap(),
                &dx,
                Tolerance::COMPOSITE,
                &format!("{what} dx"),
            );
            // Sums over up to 200 rows.
            assert_close(
                &gpu.read(&grads.dgamma).unwrap(),
                &dg,
                Tolerance::ACCUMULATION,
                &format!("{what} dgamma"),
            );
            assert_close(
                &gpu.read(&grads.dbeta).unwrap(),
                &db,
                Tolerance::ACCUMULATION,
                &format!("{what} dbeta"),
            );
        }
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let (rows, cols) = (3, 6);
        let x = to_f64(&random_vec(rows * cols, 11));
        let g = to_f64(&random_vec(cols, 12));
        let bt = to_f64(&random_vec(cols, 13));
        let dy = to_f64(&random_vec(rows * cols, 14));
        let eps = EPS as f64;
        let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
            let (y, _) = reference::forward(x, rows, cols, g, b, eps);
            y.iter().zip(&dy).map(|(y, d)| y * d).sum()
        };
        let (dx, dg, db) = reference::backward(&x, rows, cols, &g, &dy, eps);
        assert_gradient(&dx, &finite_difference(&x, |v| loss(v, &g, &bt)), "dx");
        assert_gradient(&dg, &finite_difference(&g, |v| loss(&x, v, &bt)), "dgamma");
        assert_gradient(&db, &finite_difference(&bt, |v| loss(&x, &g, v)), "dbeta");
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let x = gpu.zeros(&[4, 3]).unwrap();
        let g = gpu.zeros(&[4]).unwrap();
        let e = layernorm_forward(gpu, &x, &g, &g).unwrap_err();
        assert!(matches!(e, GpuError::Shape { .. }), "{e}");
        let g3 = gpu.zeros(&[3]).unwrap();
        let stats = gpu.zeros(&[3, 2]).unwrap();
        let e = layernorm_backward(gpu, &x, &g3, &stats, &x).unwrap_err();
        assert!(matches!(e, GpuError::Shape { .. }), "{e}");
    }
}
