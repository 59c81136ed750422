//! Batch standardization in training mode (`shaders/batchnorm.wgsl`) over the
//! batch dimension of x [B, C]: per column, mean and biased variance over the
//! B rows, ε = 1e-5, y = γ·x̂ + β. Used by the projector's BatchNorm (affine)
//! and by the FGCO loss's standardization (no affine: γ = 1, β = 0).
//!
//! The forward saves `stats` [2, C] (mean, inverse standard deviation); the
//! backward recomputes x̂ from x and those, instead of keeping x̂ alive.
//!
//! Running statistics (the head's BatchNorm without affine, `model.head_norm
//! = "batch"`): [`update_running`] folds a training batch into running mean
//! and variance [C] (PyTorch's convention: momentum 0.1, unbiased variance);
//! [`forward_running`] standardizes with them (evaluation mode). Evaluation
//! mode has no backward: it is never trained through.

use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::ops::as_matrix;

const SHADER: crate::gpu::Shader = crate::shader!("batchnorm");
/// BatchNorm's variance epsilon (PyTorch's default, and docs/design.md §3's).
pub const EPS: f32 = 1e-5;
/// The weight of a new batch in the running statistics (PyTorch's default).
pub const MOMENTUM: f32 = 0.1;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
    eps: f32,
    momentum: f32,
    _pad2: u32,
    _pad3: u32,
}

/// The affine parameters γ and β, each [C].
#[derive(Clone, Copy, Debug)]
pub struct Affine<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
}

/// Forward result: the output and the statistics the backward needs.
#[derive(Clone, Debug)]
pub struct BatchNormForward {
    pub y: Tensor,
    /// [2, C]: mean, then 1/sqrt(var + ε).
    pub stats: Tensor,
}

/// Backward result. `dgamma`/`dbeta` are `None` without the affine.
#[derive(Clone, Debug)]
pub struct BatchNormGrads {
    pub dx: Tensor,
    pub dgamma: Option<Tensor>,
    pub dbeta: Option<Tensor>,
}

fn shape_err(message: String) -> GpuError {
    GpuError::Shape {
        op: "batchnorm",
        message,
    }
}

/// Refuses (never splits) an input above one binding.
fn fits(gpu: &Gpu, x: &Tensor) -> Result<()> {
    gpu.planner("batchnorm").whole(
        &[x],
        "one invocation reduces a column over every row of x [B, C], so rows cannot be split across launches",
    )
}

fn check(gpu: &Gpu, x: &Tensor, affine: Option<Affine<'_>>) -> Result<(usize, usize)> {
    if x.shape().len() != 2 {
        return Err(shape_err(format!("input {:?} must be [B, C]", x.shape())));
    }
    let (rows, cols) = as_matrix("batchnorm", x)?;
    if let Some(a) = affine {
        if a.gamma.len() != cols || a.beta.len() != cols {
            return Err(shape_err(format!(
                "gamma {:?} / beta {:?} for {cols} columns",
                a.gamma.shape(),
                a.beta.shape()
            )));
        }
    }
    fits(gpu, x)?;
    Ok((rows, cols))
}

fn params(rows: usize, cols: usize) -> Params {
    Params {
        rows: rows as u32,
        cols: cols as u32,
        _pad0: 0,
        _pad1: 0,
        eps: EPS,
        momentum: MOMENTUM,
        _pad2: 0,
        _pad3: 0,
    }
}

/// Running mean and variance [C] of a BatchNorm (model state, not parameters).
#[derive(Clone, Copy, Debug)]
pub struct Running<'a> {
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
}

fn check_running(gpu: &Gpu, x: &Tensor, running: Running<'_>) -> Result<(usize, usize)> {
    let (rows, cols) = check(gpu, x, None)?;
    if running.mean.len() != cols || running.var.len() != cols {
        return Err(shape_err(format!(
            "running mean {:?} / var {:?} for {cols} columns",
            running.mean.shape(),
            running.var.shape()
        )));
    }
    Ok((rows, cols))
}

/// Folds the batch x [B, C] into the running statistics, in place:
/// `mean ← (1 − m)·mean + m·batch mean`, `var ← (1 − m)·var + m·batch
/// variance (unbiased, ÷ (B − 1))`, m = [`MOMENTUM`]. A batch of one row
/// moves only the mean (it has no variance estimate).
pub fn update_running(gpu: &Gpu, x: &Tensor, running: Running<'_>) -> Result<()> {
    let (rows, cols) = check_running(gpu, x, running)?;
    gpu.launch_threads(
        SHADER.kernel("update_running"),
        &[
            (0, x.arg()),
            (9, running.mean.arg()),
            (10, running.var.arg()),
        ],
        &params(rows, cols),
        cols as u64,
    )
}

/// Evaluation mode: `(x − running mean) / √(running var + ε)` per column of
/// x [B, C]; each row independent of the others in its batch.
pub fn forward_running(gpu: &Gpu, x: &Tensor, running: Running<'_>) -> Result<Tensor> {
    let (rows, cols) = check_running(gpu, x, running)?;
    let y = gpu.empty(x.shape());
    gpu.launch_threads(
        SHADER.kernel("forward_running"),
        &[
            (0, x.arg()),
            (3, y.arg()),
            (9, running.mean.arg()),
            (10, running.var.arg()),
        ],
        &params(rows, cols),
        cols as u64,
    )?;
    Ok(y)
}

/// Standardizes each column of `x` [B, C] over the batch; applies γ, β when given.
pub fn batchnorm_forward(
    gpu: &Gpu,
    x: &Tensor,
    affine: Option<Affine<'_>>,
) -> Result<BatchNormForward> {
    let (rows, cols) = check(gpu, x, affine)?;
    let y = gpu.empty(x.shape());
    let stats = gpu.empty(&[2, cols]);
    // One invocation per column.
    let threads = cols as u64;
    let p = params(rows, cols);
    match affine {
        Some(a) => gpu.launch_threads(
            SHADER.kernel("forward"),
            &[
                (0, x.arg()),
                (1, a.gamma.arg()),
                (2, a.beta.arg()),
                (3, y.arg()),
                (4, stats.arg()),
            ],
            &p,
            threads,
        )?,
        None => gpu.launch_threads(
            SHADER.kernel("forward_plain"),
            &[(0, x.arg()), (3, y.arg()), (4, stats.arg())],
            &p,
            threads,
        )?,
    }
    Ok(BatchNormForward { y, stats })
}

/// Gradients of [`batchnorm_forward`] given the upstream `dy` [B, C], the
/// forward input `x` and its saved `stats`. Pass the same `gamma` as the
/// forward (None for the plain standardization).
pub fn batchnorm_backward(
    gpu: &Gpu,
    x: &Tensor,
    gamma: Option<&Tensor>,
    stats: &Tensor,
    dy: &Tensor,
) -> Result<BatchNormGrads> {
    if x.shape().len() != 2 {
        return Err(shape_err(format!("input {:?} must be [B, C]", x.shape())));
    }
    let (rows, cols) = as_matrix("batchnorm", x)?;
    if dy.shape() != x.shape() || stats.len() != 2 * cols {
        return Err(shape_err(format!(
            "dy {:?} / stats {:?} for input {:?}",
            dy.shape(),
            stats.shape(),
            x.shape()
        )));
    }
    if gamma.is_some_and(|g| g.len() != cols) {
        return Err(shape_err(format!("gamma for {cols} columns")));
    }
    fits(gpu, x)?;
    let dx = gpu.empty(x.shape());
    // One invocation per column.
    let threads = cols as u64;
    let p = params(rows, cols);
    match gamma {
        Some(g) => {
            let dgamma = gpu.empty(&[cols]);
            let dbeta = gpu.empty(&[cols]);
            gpu.launch_threads(
                SHADER.kernel("backward"),
                &[
                    (0, x.arg()),
                    (1, g.arg()),
                    (4, stats.arg()),
                    (5, dy.arg()),
                    (6, dx.arg()),
                    (7, dgamma.arg()),
                    (8, dbeta.arg()),
                ],
                &p,
                threads,
            )?;
            Ok(BatchNormGrads {
                dx,
                dgamma: Some(dgamma),
                dbeta: Some(dbeta),
            })
        }
        None => {
            gpu.launch_threads(
                SHADER.kernel("backward_plain"),
                &[(0, x.arg()), (4, stats.arg()), (5, dy.arg()), (6, dx.arg())],
                &p,
                threads,
            )?;
            Ok(BatchNormGrads {
                dx,
                dgamma: None,
                dbeta: None,
            })
        }
    }
}

/// f64 CPU reference. Matrices are row-major [rows, cols].
pub mod reference {
    /// Returns (y, mean, inv_std).
    pub fn forward(
        x: &[f64],
        rows: usize,
        cols: usize,
        affine: Option<(&[f64], &[f64])>,
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut mean = vec![0.0; cols];
        let mut inv = vec![0.0; cols];
        let mut y = vec![0.0; rows * cols];
        for c in 0..cols {
            let m = (0..rows).map(|b| x[b * cols + c]).sum::<f64>() / rows as f64;
            let v = (0..rows)
                .map(|b| (x[b * cols + c] - m).powi(2))
                .sum::<f64>()
                / rows as f64;
            let s = 1.0 / (v + eps).sqrt();
            mean[c] = m;
            inv[c] = s;
            let (g, bt) = affine.map_or((1.0, 0.0), |(g, b)| (g[c], b[c]));
            for b in 0..rows {
                y[b * cols + c] = g * (x[b * cols + c] - m) * s + bt;
            }
        }
        (y, mean, inv)
    }

    /// The running statistics after folding in the batch x (momentum m,
    /// unbiased variance; one row: the variance is kept).
    pub fn update_running(
        x: &[f64],
        rows: usize,
        cols: usize,
        mean: &[f64],
        var: &[f64],
        m: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut new_mean = mean.to_vec();
        let mut new_var = var.to_vec();
        for c in 0..cols {
            let bm = (0..rows).map(|b| x[b * cols + c]).sum::<f64>() / rows as f64;
            new_mean[c] = (1.0 - m) * mean[c] + m * bm;
            if rows > 1 {
                let v = (0..rows)
                    .map(|b| (x[b * cols + c] - bm).powi(2))
                    .sum::<f64>()
                    / (rows - 1) as f64;
                new_var[c] = (1.0 - m) * var[c] + m * v;
            }
        }
        (new_mean, new_var)
    }

    /// Evaluation mode: standardization with given statistics.
    pub fn forward_running(
        x: &[f64],
        rows: usize,
        cols: usize,
        mean: &[f64],
        var: &[f64],
        eps: f64,
    ) -> Vec<f64> {
        (0..rows * cols)
            .map(|i| {
                let c = i % cols;
                (x[i] - mean[c]) / (var[c] + eps).sqrt()
            })
            .collect()
    }

    /// Returns (dx, dgamma, dbeta) of `forward` for upstream `dy`.
    pub fn backward(
        x: &[f64],
        rows: usize,
        cols: usize,
        gamma: Option<&[f64]>,
        dy: &[f64],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (_, mean, inv) = forward(x, rows, cols, None, eps);
        let mut dx = vec![0.0; rows * cols];
        let mut dgamma = vec![0.0; cols];
        let mut dbeta = vec![0.0; cols];
        let n = rows as f64;
        for c in 0..cols {
            let xh = |b: usize| (x[b * cols + c] - mean[c]) * inv[c];
            let sdy: f64 = (0..rows).map(|b| dy[b * cols + c]).sum();
            let sdyx: f64 = (0..rows).map(|b| dy[b * cols + c] * xh(b)).sum();
            dbeta[c] = sdy;
            dgamma[c] = sdyx;
            let g = gamma.map_or(1.0, |g| g[c]);
            for b in 0..rows {
                dx[b * cols + c] = g * inv[c] / n * (n * dy[b * cols + c] - sdy - xh(b) * sdyx);
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

    /// (B, C): a batch of 1 (x̂ = 0), columns not a multiple of 64, N = 200, d = 256.
    const SHAPES: &[(usize, usize)] = &[(1, 5), (2, 1), (7, 65), (64, 256), (16, 200)];

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        for (s, &(b, c)) in SHAPES.iter().enumerate() {
            let seed = 300 + 10 * s as u64;
            // Offset and scale the input so the mean and variance matter.
            let x: Vec<f32> = random_vec(b * c, seed)
                .iter()
                .map(|v| 3.0 * v + 0.5)
                .collect();
            let g = random_vec(c, seed + 1);
            let bt = random_vec(c, seed + 2);
            let dy = random_vec(b * c, seed + 3);
            let (x64, g64, b64, dy64) = (to_f64(&x), to_f64(&g), to_f64(&bt), to_f64(&dy));
            let tx = gpu.upload(&x, &[b, c]).unwrap();
            let tg = gpu.upload(&g, &[c]).unwrap();
            let tb = gpu.upload(&bt, &[c]).unwrap();
            let tdy = gpu.upload(&dy, &[b, c]).unwrap();
            for affine in [true, false] {
                let what = format!("batchnorm {b}x{c} affine={affine}");
                let aff = affine.then_some(Affine {
                    gamma: &tg,
                    beta: &tb,
                });
                let fwd = batchnorm_forward(gpu, &tx, aff).unwrap();
                let (y, mean, inv) = reference::forward(
                    &x64,
                    b,
                    c,
                    affine.then_some((&g64[..], &b64[..])),
                    EPS as f64,
                );
                assert_close(
                    &gpu.read(&fwd.y).unwrap(),
                    &y,
                    Tolerance::ACCUMULATION,
                    &what,
                );
                let stats: Vec<f64> = mean.iter().chain(&inv).copied().collect();
                assert_close(
                    &gpu.read(&fwd.stats).unwrap(),
                    &stats,
                    Tolerance::ACCUMULATION,
                    &format!("{what} stats"),
                );
                let grads =
                    batchnorm_backward(gpu, &tx, affine.then_some(&tg), &fwd.stats, &tdy).unwrap();
                let (dx, dg, db) =
                    reference::backward(&x64, b, c, affine.then_some(&g64[..]), &dy64, EPS as f64);
                assert_close(
                    &gpu.read(&grads.dx).unwrap(),
                    &dx,
                    Tolerance::COMPOSITE,
                    &format!("{what} dx"),
                );
                if affine {
                    assert_close(
                        &gpu.read(grads.dgamma.as_ref().unwrap()).unwrap(),
                        &dg,
                        Tolerance::ACCUMULATION,
                        &format!("{what} dgamma"),
                    );
                    assert_close(
                        &gpu.read(grads.dbeta.as_ref().unwrap()).unwrap(),
                        &db,
                        Tolerance::ACCUMULATION,
                        &format!("{what} dbeta"),
                    );
                } else {
                    assert!(grads.dgamma.is_none() && grads.dbeta.is_none());
                }
            }
        }
    }

    /// The running-statistics kernels against the f64 reference, on outputs
    /// poisoned first (forward) and on running statistics that are not the
    /// initial (0, 1), so both terms of the update matter.
    #[test]
    fn running_statistics_match_reference() {
        let gpu = gpu();
        for (s, &(b, c)) in SHAPES.iter().enumerate() {
            let seed = 700 + 10 * s as u64;
            let what = format!("batchnorm running {b}x{c}");
            let x: Vec<f32> = random_vec(b * c, seed)
                .iter()
                .map(|v| 2.0 * v - 0.7)
                .collect();
            let mean: Vec<f32> = random_vec(c, seed + 1);
            let var: Vec<f32> = random_vec(c, seed + 2).iter().map(|v| 1.5 + v).collect();
            let tx = gpu.upload(&x, &[b, c]).unwrap();
            let tm = gpu.upload(&mean, &[c]).unwrap();
            let tv = gpu.upload(&var, &[c]).unwrap();
            let running = Running {
                mean: &tm,
                var: &tv,
            };
            // Evaluation mode first, with the statistics as given.
            let y = forward_running(gpu, &tx, running).unwrap();
            let (x64, m64, v64) = (to_f64(&x), to_f64(&mean), to_f64(&var));
            let want = reference::forward_running(&x64, b, c, &m64, &v64, EPS as f64);
            assert_close(
                &gpu.read(&y).unwrap(),
                &want,
                Tolerance::ACCUMULATION,
                &format!("{what} forward"),
            );
            // Two updates in a row: the second starts from the first's result.
            let (m1, v1) = reference::update_running(&x64, b, c, &m64, &v64, MOMENTUM as f64);
            let (m2, v2) = reference::update_running(&x64, b, c, &m1, &v1, MOMENTUM as f64);
            update_running(gpu, &tx, running).unwrap();
            update_running(gpu, &tx, running).unwrap();
            assert_close(
                &gpu.read(&tm).unwrap(),
                &m2,
                Tolerance::ACCUMULATION,
                &format!("{what} mean"),
            );
            assert_close(
                &gpu.read(&tv).unwrap(),
                &v2,
                Tolerance::ACCUMULATION,
                &format!("{what} var"),
            );
        }
        // Shapes that do not fit are errors.
        let x = gpu.zeros(&[4, 3]).unwrap();
        let short = gpu.zeros(&[2]).unwrap();
        let e = update_running(
            gpu,
            &x,
            Running {
                mean: &short,
                var: &short,
            },
        )
        .unwrap_err();
        assert!(matches!(e, GpuError::Shape { .. }), "{e}");
    }

    /// PyTorch's convention, written out for one column: batch [1, 2, 3, 6]
    /// has mean 3 and unbiased variance 14/3; from (0, 1) with momentum 0.1
    /// the running statistics become (0.3, 0.9 + 0.1·14/3).
    #[test]
    fn running_update_follows_pytorch_convention() {
        let (m, v) = reference::update_running(&[1.0, 2.0, 3.0, 6.0], 4, 1, &[0.0], &[1.0], 0.1);
        assert!((m[0] - 0.3).abs() < 1e-12, "{m:?}");
        assert!((v[0] - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-12, "{v:?}");
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let (b, c) = (5, 3);
        let x = to_f64(&random_vec(b * c, 1));
        let g = to_f64(&random_vec(c, 2));
        let bt = to_f64(&random_vec(c, 3));
        let dy = to_f64(&random_vec(b * c, 4));
        let eps = EPS as f64;
        let loss = |x: &[f64], g: &[f64], bt: &[f64]| -> f64 {
            let (y, ..) = reference::forward(x, b, c, Some((g, bt)), eps);
            y.iter().zip(&dy).map(|(y, d)| y * d).sum()
        };
        let (dx, dg, db) = reference::backward(&x, b, c, Some(&g), &dy, eps);
        assert_gradient(&dx, &finite_difference(&x, |v| loss(v, &g, &bt)), "dx");
        assert_gradient(&dg, &finite_difference(&g, |v| loss(&x, v, &bt)), "dgamma");
        assert_gradient(&db, &finite_difference(&bt, |v| loss(&x, &g, v)), "dbeta");
        // Without the affine.
        let (dx, ..) = reference::backward(&x, b, c, None, &dy, eps);
        let fd = finite_difference(&x, |v| {
            let (y, ..) = reference::forward(v, b, c, None, eps);
            y.iter().zip(&dy).map(|(y, d)| y * d).sum()
        });
        assert_gradient(&dx, &fd, "plain dx");
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let x = gpu.zeros(&[4, 3]).unwrap();
        let g = gpu.zeros(&[2]).unwrap();
        let e = batchnorm_forward(
            gpu,
            &x,
            Some(Affine {
                gamma: &g,
                beta: &g,
            }),
        )
        .unwrap_err();
        assert!(matches!(e, GpuError::Shape { .. }), "{e}");
        let e = batchnorm_forward(gpu, &gpu.zeros(&[4]).unwrap(), None).unwrap_err();
        assert!(matches!(e, GpuError::Shape { .. }), "{e}");
        let stats = gpu.zeros(&[2, 3]).unwrap();
        let e =
            batchnorm_backward(gpu, &x, None, &stats, &gpu.zeros(&[3, 4]).unwrap()).unwrap_err();
        assert!(matches!(e, GpuError::Shape { .. }), "{e}");
    }
}
