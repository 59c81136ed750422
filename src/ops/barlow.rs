//! The Barlow Twins cross-correlation loss of FGCO (`shaders/barlow.wgsl`,
//! docs/design.md §3). Given two embeddings z1, z2 [n, d] (samples × features):
//! each feature is standardized over the samples (batchnorm without affine,
//! biased variance, ε = 1e-5), C = z̃1ᵀ z̃2 / n [d, d], and
//! L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², λ = 0.0051 by default.
//!
//! Built from existing kernels: `batchnorm` for the standardization and its
//! backward, `matmul` for C and for dz̃1 = z̃2·Gᵀ/n, dz̃2 = z̃1·G/n (G = dL/dC);
//! only the loss reduction and G are new. The loss stays on the GPU as a
//! 1-element tensor, and the backward reads its upstream scalar from a
//! 1-element tensor, so a training step needs no readback.

use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::ops::batchnorm::{batchnorm_backward, batchnorm_forward};
use crate::ops::matmul::{matmul_into, Spec};

const SHADER: crate::gpu::Shader = crate::shader!("barlow");
/// α_off of the paper (and of Barlow Twins).
pub const LAMBDA: f32 = 0.0051;
/// Largest d: C must fit a binding and d² a u32 with room to spare.
const MAX_D: usize = 16_384;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    d: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    lambda: f32,
}

/// What the forward keeps for the backward.
#[derive(Clone, Debug)]
pub struct BarlowSaved {
    /// Standardized embeddings [n, d].
    pub z1n: Tensor,
    pub z2n: Tensor,
    /// batchnorm statistics [2, d] of z1 and z2.
    pub stats1: Tensor,
    pub stats2: Tensor,
    /// The cross-correlation C [d, d].
    pub c: Tensor,
}

fn check(z1: &Tensor, z2: &Tensor) -> Result<(usize, usize)> {
    if z1.shape().len() != 2 || z1.shape() != z2.shape() || z1.is_empty() {
        return Err(GpuError::Shape {
            op: "barlow",
            message: format!(
                "embeddings {:?} and {:?} must both be [n_samples, d], non-empty",
                z1.shape(),
                z2.shape()
            ),
        });
    }
    let (n, d) = (z1.shape()[0], z1.shape()[1]);
    if d > MAX_D {
        return Err(GpuError::Shape {
            op: "barlow",
            message: format!("d = {d} exceeds {MAX_D}"),
        });
    }
    Ok((n, d))
}

fn params(d: usize, lambda: f32) -> Params {
    Params {
        d: d as u32,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
        lambda,
    }
}

/// The loss as a 1-element tensor, and what the backward needs.
pub fn barlow_forward(
    gpu: &Gpu,
    z1: &Tensor,
    z2: &Tensor,
    lambda: f32,
) -> Result<(Tensor, BarlowSaved)> {
    let (n, d) = check(z1, z2)?;
    let bn1 = batchnorm_forward(gpu, z1, None)?;
    let bn2 = batchnorm_forward(gpu, z2, None)?;
    let c = gpu.empty(&[d, d]);
    gpu.planner("barlow").whole(
        &[&c],
        "one workgroup reduces the whole D x D cross-correlation to the loss",
    )?;
    matmul_into(gpu, &bn1.y, &bn2.y, &c, Spec::TN, 1.0 / n as f32)?;
    let loss = gpu.empty(&[1]);
    gpu.launch(
        SHADER.kernel("forward"),
        &[(0, c.arg()), (2, loss.arg())],
        &params(d, lambda),
        [1, 1, 1],
    )?;
    Ok((
        loss,
        BarlowSaved {
            z1n: bn1.y,
            z2n: bn2.y,
            stats1: bn1.stats,
            stats2: bn2.stats,
            c,
        },
    ))
}

/// (dz1, dz2) of `upstream[0] · L`, from the forward's inputs and saved tensors.
pub fn barlow_backward(
    gpu: &Gpu,
    z1: &Tensor,
    z2: &Tensor,
    saved: &BarlowSaved,
    upstream: &Tensor,
    lambda: f32,
) -> Result<(Tensor, Tensor)> {
    let (n, d) = check(z1, z2)?;
    if upstream.len() != 1 || saved.c.shape() != [d, d] {
        return Err(GpuError::Shape {
            op: "barlow",
            message: format!(
                "upstream {:?} must hold 1 value; saved C {:?} for d = {d}",
                upstream.shape(),
                saved.c.shape()
            ),
        });
    }
    let g = gpu.empty(&[d, d]);
    gpu.launch_linear(
        SHADER.kernel("backward"),
        &[(0, saved.c.arg()), (1, upstream.arg()), (3, g.arg())],
        &params(d, lambda),
        ((d * d) as u64).div_ceil(256),
    )?;
    let inv_n = 1.0 / n as f32;
    // C = z̃1ᵀ z̃2 / n  ⇒  dz̃1 = z̃2·Gᵀ / n,  dz̃2 = z̃1·G / n.
    let dz1n = gpu.empty(&[n, d]);
    matmul_into(gpu, &saved.z2n, &g, &dz1n, Spec::NT, inv_n)?;
    let dz2n = gpu.empty(&[n, d]);
    matmul_into(gpu, &saved.z1n, &g, &dz2n, Spec::NN, inv_n)?;
    let dz1 = batchnorm_backward(gpu, z1, None, &saved.stats1, &dz1n)?.dx;
    let dz2 = batchnorm_backward(gpu, z2, None, &saved.stats2, &dz2n)?.dx;
    Ok((dz1, dz2))
}

/// f64 CPU reference over row-major [n, d].
pub mod reference {
    use crate::ops::batchnorm::reference as bn;

    fn cross(z1n: &[f64], z2n: &[f64], n: usize, d: usize) -> Vec<f64> {
        let mut c = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                c[i * d + j] =
                    (0..n).map(|s| z1n[s * d + i] * z2n[s * d + j]).sum::<f64>() / n as f64;
            }
        }
        c
    }

    /// (L, C).
    pub fn forward(
        z1: &[f64],
        z2: &[f64],
        n: usize,
        d: usize,
        lambda: f64,
        eps: f64,
    ) -> (f64, Vec<f64>) {
        let (z1n, ..) = bn::forward(z1, n, d, None, eps);
        let (z2n, ..) = bn::forward(z2, n, d, None, eps);
        let c = cross(&z1n, &z2n, n, d);
        let mut l = 0.0;
        for i in 0..d {
            for j in 0..d {
                let v = c[i * d + j];
                l += if i == j {
                    (1.0 - v).powi(2)
                } else {
                    lambda * v * v
                };
            }
        }
        (l, c)
    }

    /// (dz1, dz2) of upstream·L.
    pub fn backward(
        z1: &[f64],
        z2: &[f64],
        n: usize,
        d: usize,
        lambda: f64,
        eps: f64,
        upstream: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let (z1n, ..) = bn::forward(z1, n, d, None, eps);
        let (z2n, ..) = bn::forward(z2, n, d, None, eps);
        let c = cross(&z1n, &z2n, n, d);
        let g: Vec<f64> = (0..d * d)
            .map(|k| {
                let v = c[k];
                upstream
                    * if k / d == k % d {
                        -2.0 * (1.0 - v)
                    } else {
                        2.0 * lambda * v
                    }
            })
            .collect();
        let mut dz1n = vec![0.0; n * d];
        let mut dz2n = vec![0.0; n * d];
        for s in 0..n {
            for i in 0..d {
                dz1n[s * d + i] =
                    (0..d).map(|j| g[i * d + j] * z2n[s * d + j]).sum::<f64>() / n as f64;
                dz2n[s * d + i] =
                    (0..d).map(|k| z1n[s * d + k] * g[k * d + i]).sum::<f64>() / n as f64;
            }
        }
        let (dz1, ..) = bn::backward(z1, n, d, None, &dz1n, eps);
        let (dz2, ..) = bn::backward(z2, n, d, None, &dz2n, eps);
        (dz1, dz2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, finite_difference, gpu, random_vec, to_f64, Tolerance,
    };
    use crate::ops::batchnorm::EPS;

    /// (n_samples, d): one sample (z̃ = 0), d = 1, the global 256-d form with
    /// a batch of 16, fine-grained N = 200 and T = 128, sizes off the tiles.
    const SHAPES: &[(usize, usize)] = &[(1, 3), (6, 1), (16, 256), (24, 200), (10, 128), (33, 17)];

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        let upstream = 0.7f32;
        let tup = gpu.upload(&[upstream], &[1]).unwrap();
        for (s, &(n, d)) in SHAPES.iter().enumerate() {
            let seed = 700 + 10 * s as u64;
            let z1 = random_vec(n * d, seed);
            // z2 correlated with z1, as two views of one sample are, so the
            // diagonal of C is far from 0 and the off-diagonal is not.
            let noise = random_vec(n * d, seed + 1);
            let z2: Vec<f32> = z1
                .iter()
                .zip(&noise)
                .map(|(a, b)| 2.0 * a + 0.5 * b + 1.0)
                .collect();
            let (z164, z264) = (to_f64(&z1), to_f64(&z2));
            let t1 = gpu.upload(&z1, &[n, d]).unwrap();
            let t2 = gpu.upload(&z2, &[n, d]).unwrap();
            let what = format!("barlow n={n} d={d}");
            let (loss, saved) = barlow_forward(gpu, &t1, &t2, LAMBDA).unwrap();
            let (l, c) = reference::forward(&z164, &z264, n, d, LAMBDA as f64, EPS as f64);
            assert_close(
                &gpu.read(&saved.c).unwrap(),
                &c,
                Tolerance::ACCUMULATION,
                &format!("{what} C"),
            );
            assert_close(&gpu.read(&loss).unwrap(), &[l], Tolerance::COMPOSITE, &what);
            let (dz1, dz2) = barlow_backward(gpu, &t1, &t2, &saved, &tup, LAMBDA).unwrap();
            let (r1, r2) = reference::backward(
                &z164,
                &z264,
                n,
                d,
                LAMBDA as f64,
                EPS as f64,
                upstream as f64,
            );
            assert_close_scaled(
                &gpu.read(&dz1).unwrap(),
                &r1,
                Tolerance::COMPOSITE,
                &format!("{what} dz1"),
            );
            assert_close_scaled(
                &gpu.read(&dz2).unwrap(),
                &r2,
                Tolerance::COMPOSITE,
                &format!("{what} dz2"),
            );
        }
    }

    /// The gradients are O(1/n) (0.003 to 0.1 in these shapes), so an error
    /// relative to max(1, |ref|) would allow 10 % mistakes: compare relative
    /// to the gradient's largest element instead.
    #[track_caller]
    fn assert_close_scaled(got: &[f32], want: &[f64], tol: Tolerance, what: &str) {
        let scale = want.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        if scale == 0.0 {
            return assert_close(got, want, tol, what);
        }
        let got: Vec<f32> = got.iter().map(|&g| (g as f64 / scale) as f32).collect();
        let want: Vec<f64> = want.iter().map(|w| w / scale).collect();
        assert_close(&got, &want, tol, &format!("{what} (scaled by {scale:.3e})"));
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let (n, d) = (5, 4);
        let z1 = to_f64(&random_vec(n * d, 31));
        let z2 = to_f64(&random_vec(n * d, 32));
        let (lam, eps, up) = (0.3, EPS as f64, 1.5);
        let (dz1, dz2) = reference::backward(&z1, &z2, n, d, lam, eps, up);
        let fd1 = finite_difference(&z1, |v| up * reference::forward(v, &z2, n, d, lam, eps).0);
        let fd2 = finite_difference(&z2, |v| up * reference::forward(&z1, v, n, d, lam, eps).0);
        assert_gradient(&dz1, &fd1, "dz1");
        assert_gradient(&dz2, &fd2, "dz2");
    }

    #[test]
    fn identical_views_give_only_the_off_diagonal_term() {
        // z1 = z2 ⇒ C is the correlation matrix: C_ii = var/(var + ε) ≈ 1.
        let gpu = gpu();
        let (n, d) = (32, 8);
        let z = random_vec(n * d, 41);
        let t = gpu.upload(&z, &[n, d]).unwrap();
        let (loss, saved) = barlow_forward(gpu, &t, &t, LAMBDA).unwrap();
        let c = gpu.read(&saved.c).unwrap();
        for i in 0..d {
            assert!((c[i * d + i] - 1.0).abs() < 1e-3, "C_ii = {}", c[i * d + i]);
        }
        let off: f64 = (0..d * d)
            .filter(|k| k / d != k % d)
            .map(|k| (c[k] as f64).powi(2))
            .sum();
        let l = gpu.read_scalar(&loss).unwrap() as f64;
        assert!(
            (l - LAMBDA as f64 * off).abs() < 1e-4,
            "{l} vs {}",
            LAMBDA as f64 * off
        );
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let a = gpu.zeros(&[4, 3]).unwrap();
        let b = gpu.zeros(&[4, 2]).unwrap();
        assert!(matches!(
            barlow_forward(gpu, &a, &b, LAMBDA),
            Err(GpuError::Shape { .. })
        ));
        let (_, saved) = barlow_forward(gpu, &a, &a, LAMBDA).unwrap();
        let up = gpu.zeros(&[2]).unwrap();
        assert!(matches!(
            barlow_backward(gpu, &a, &a, &saved, &up, LAMBDA),
            Err(GpuError::Shape { .. })
        ));
    }
}
