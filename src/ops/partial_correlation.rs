//! Batched partial correlation from a Ledoit–Wolf shrunk covariance
//! (`shaders/partial_correlation.wgsl`): x [B, N, T] → [B, N, N], the static
//! branch's graph (docs/design.md §3). Matches nilearn's
//! `ConnectivityMeasure(kind="partial correlation")` (checked against nilearn
//! 0.14.1 with a fixture, `tools/make_partial_corr_fixture.py`), which fits
//! sklearn's `LedoitWolf(store_precision=False)` to each region's series
//! centered over time — not standardized: nilearn's `standardize` applies to
//! kind="correlation" only — then P_ij = −Θ_ij/√(Θ_ii Θ_jj) with Θ = Σ̂⁻¹ and
//! a diagonal of 1.
//!
//! The N×N inversion is Gauss–Jordan in f32 without pivoting, one workgroup
//! per batch item; the shrinkage keeps the matrix symmetric positive definite
//! with eigenvalues ≥ s·μ, so it is well conditioned and an all-zero region
//! stays invertible (see the shader for the argument). An item whose regions
//! are all zero is singular (μ = 0), as it is for sklearn.
//!
//! No backward: no gradient flows into the graph (docs/design.md §3).

use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::ops::matmul::{matmul_into, Spec};

const SHADER: crate::gpu::Shader = crate::shader!("partial_correlation");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    b: u32,
    n: u32,
    t: u32,
}

/// The partial correlations and the Ledoit–Wolf shrinkage used per item.
#[derive(Clone, Debug)]
pub struct PartialCorrelation {
    /// [B, N, N], diagonal 1.
    pub partial: Tensor,
    /// [B]: the shrinkage coefficient in [0, 1].
    pub shrinkage: Tensor,
}

/// Partial correlation of each batch item's N series of T frames.
pub fn partial_correlation(gpu: &Gpu, x: &Tensor) -> Result<PartialCorrelation> {
    let &[b, n, t] = x.shape() else {
        return Err(GpuError::Shape {
            op: "partial_correlation",
            message: format!("input {:?} must be [B, N, T]", x.shape()),
        });
    };
    // The largest N the inversion's workgroup memory holds, from the shader.
    let max_n = gpu.kernel(SHADER.kernel("invert"))?.constant("MAX_N")? as usize;
    if n == 0 || n > max_n || t < 2 {
        return Err(GpuError::Shape {
            op: "partial_correlation",
            message: format!(
                "input {:?}: need 1 ≤ N ≤ {max_n} regions and T ≥ 2 frames",
                x.shape()
            ),
        });
    }
    let partial = gpu.empty(&[b, n, n]);
    let shrinkage = gpu.empty(&[b]);
    if b == 0 {
        return Ok(PartialCorrelation { partial, shrinkage });
    }
    gpu.planner("partial_correlation").whole(
        &[x, &partial],
        "the kernels index items from 0 over whole tensors; x [B, N, T] and the [B, N, N] graph are tens of MB at the model's sizes, well inside a binding",
    )?;
    let p = Params {
        b: b as u32,
        n: n as u32,
        t: t as u32,
    };
    let xc = gpu.empty(x.shape());
    gpu.launch_linear(
        SHADER.kernel("center"),
        &[(0, x.arg()), (1, xc.arg())],
        &p,
        ((b * n) as u64).div_ceil(64),
    )?;
    // The biased empirical covariance, as sklearn's empirical_covariance.
    let a = gpu.empty(&[b, n, n]);
    matmul_into(gpu, &xc, &xc, &a, Spec::NT, 1.0 / t as f32)?;
    gpu.launch_linear(
        SHADER.kernel("shrink"),
        &[(1, xc.arg()), (2, a.arg()), (3, shrinkage.arg())],
        &p,
        b as u64,
    )?;
    // Gauss–Jordan: N pivots, each an N×N rank-1 update.
    gpu.count_flops(2 * (b * n * n * n) as u64);
    gpu.launch_linear(SHADER.kernel("invert"), &[(2, a.arg())], &p, b as u64)?;
    gpu.launch_linear(
        SHADER.kernel("partial"),
        &[(2, a.arg()), (4, partial.arg())],
        &p,
        ((b * n * n) as u64).div_ceil(256),
    )?;
    Ok(PartialCorrelation { partial, shrinkage })
}

/// f64 CPU reference, following sklearn's `ledoit_wolf` and nilearn's
/// `prec_to_partial` step by step.
pub mod reference {
    /// Shrunk covariance [n, n] and shrinkage of one item's series x [n, t].
    pub fn ledoit_wolf(x: &[f64], n: usize, t: usize) -> (Vec<f64>, f64) {
        let xc: Vec<f64> = (0..n)
            .flat_map(|i| {
                let row = &x[i * t..(i + 1) * t];
                let m = row.iter().sum::<f64>() / t as f64;
                row.iter().map(move |v| v - m)
            })
            .collect();
        let mut s = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                s[i * n + j] =
                    (0..t).map(|k| xc[i * t + k] * xc[j * t + k]).sum::<f64>() / t as f64;
            }
        }
        let (pf, nf) = (n as f64, t as f64);
        let tr: f64 = (0..n).map(|i| s[i * n + i]).sum();
        let mu = tr / pf;
        let delta_: f64 = s.iter().map(|v| v * v).sum();
        let beta_: f64 = (0..t)
            .map(|k| (0..n).map(|i| xc[i * t + k].powi(2)).sum::<f64>().powi(2))
            .sum();
        let beta = (beta_ / nf - delta_) / (pf * nf);
        let delta = (delta_ - 2.0 * mu * tr + pf * mu * mu) / pf;
        let beta = beta.min(delta);
        let shrink = if n == 1 || beta == 0.0 {
            0.0
        } else {
            beta / delta
        };
        for v in s.iter_mut() {
            *v *= 1.0 - shrink;
        }
        for i in 0..n {
            s[i * n + i] += shrink * mu;
        }
        (s, shrink)
    }

    /// Inverse by Gauss–Jordan with partial pivoting.
    pub fn inverse(a: &[f64], n: usize) -> Vec<f64> {
        let mut m = a.to_vec();
        let mut inv: Vec<f64> = (0..n * n)
            .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
            .collect();
        for k in 0..n {
            let piv = (k..n)
                .max_by(|&i, &j| m[i * n + k].abs().total_cmp(&m[j * n + k].abs()))
                .unwrap();
            for j in 0..n {
                m.swap(k * n + j, piv * n + j);
                inv.swap(k * n + j, piv * n + j);
            }
            let d = m[k * n + k];
            for j in 0..n {
                m[k * n + j] /= d;
                inv[k * n + j] /= d;
            }
            for i in (0..n).filter(|&i| i != k) {
                let f = m[i * n + k];
                for j in 0..n {
                    m[i * n + j] -= f * m[k * n + j];
                    inv[i * n + j] -= f * inv[k * n + j];
                }
            }
        }
        inv
    }

    /// x [b, n, t] → (partial [b, n, n], shrinkage [b]).
    pub fn partial_correlation(x: &[f64], b: usize, n: usize, t: usize) -> (Vec<f64>, Vec<f64>) {
        let mut out = Vec::with_capacity(b * n * n);
        let mut shrinks = Vec::with_capacity(b);
        for bi in 0..b {
            let (cov, s) = ledoit_wolf(&x[bi * n * t..(bi + 1) * n * t], n, t);
            let th = inverse(&cov, n);
            for i in 0..n {
                for j in 0..n {
                    out.push(if i == j {
                        1.0
                    } else {
                        -th[i * n + j] / (th[i * n + i] * th[j * n + j]).sqrt()
                    });
                }
            }
            shrinks.push(s);
        }
        (out, shrinks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, gpu, random_vec, to_f64, Tolerance};

    /// Correlated series (shared latent signals) with region `zero` all zero.
    fn series(b: usize, n: usize, t: usize, seed: u64, zero: Option<usize>) -> Vec<f32> {
        let latent = random_vec(b * 3 * t, seed);
        let mix = random_vec(n * 3, seed + 1);
        let noise = random_vec(b * n * t, seed + 2);
        let mut x = vec![0.0f32; b * n * t];
        for bi in 0..b {
            for i in 0..n {
                for k in 0..t {
                    let shared: f32 = (0..3)
                        .map(|q| mix[i * 3 + q] * latent[(bi * 3 + q) * t + k])
                        .sum();
                    x[(bi * n + i) * t + k] = shared + 0.7 * noise[(bi * n + i) * t + k] + 0.2;
                }
                if zero == Some(i) {
                    x[(bi * n + i) * t..(bi * n + i + 1) * t].fill(0.0);
                }
            }
        }
        x
    }

    #[test]
    fn matches_reference_including_zero_regions_and_n_200() {
        let gpu = gpu();
        // (B, N, T, all-zero region): N = 1, N > T (shrinkage is what makes it
        // invertible), N not a multiple of 256 or 64, N = 200 at T = 128.
        let cases: &[(usize, usize, usize, Option<usize>)] = &[
            (2, 1, 5, None),
            (3, 6, 40, Some(2)),
            (2, 30, 20, Some(0)),
            (1, 70, 90, Some(69)),
            (1, 200, 128, Some(17)),
        ];
        for (ci, &(b, n, t, zero)) in cases.iter().enumerate() {
            let x = series(b, n, t, 1000 + 10 * ci as u64, zero);
            let tx = gpu.upload(&x, &[b, n, t]).unwrap();
            let got = partial_correlation(gpu, &tx).unwrap();
            let (want, want_s) = reference::partial_correlation(&to_f64(&x), b, n, t);
            let what = format!("partial correlation B={b} N={n} T={t}");
            let p = gpu.read(&got.partial).unwrap();
            assert!(p.iter().all(|v| v.is_finite()), "{what}: non-finite values");
            assert_close(
                &gpu.read(&got.shrinkage).unwrap(),
                &want_s,
                Tolerance::COMPOSITE,
                &format!("{what} shrinkage"),
            );
            // Measured: at most 9e-6 (N = 200) on lavapipe, so the tighter
            // accumulation tolerance holds with a 10x margin.
            assert_close(&p, &want, Tolerance::ACCUMULATION, &what);
            if let Some(z) = zero {
                // A zero region is partially correlated with nothing.
                for bi in 0..b {
                    for j in (0..n).filter(|&j| j != z) {
                        assert_eq!(p[(bi * n + z) * n + j], 0.0, "{what}");
                    }
                }
            }
        }
    }

    #[derive(serde::Deserialize)]
    struct Fixture {
        generator: String,
        b: usize,
        n: usize,
        t: usize,
        x: Vec<f64>,
        partial: Vec<f64>,
        shrinkage: Vec<f64>,
    }

    #[test]
    fn matches_nilearn_fixture() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/partial_corr.json"
        ));
        let f: Fixture = serde_json::from_str(text).expect("fixture parses");
        assert!(f.generator.contains("nilearn"), "{}", f.generator);
        let (want, want_s) = (f.partial, f.shrinkage);
        // The f64 reference reproduces nilearn to rounding.
        let (p64, s64) = reference::partial_correlation(&f.x, f.b, f.n, f.t);
        for (i, (a, b)) in p64.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() < 1e-9,
                "reference vs nilearn [{i}]: {a} vs {b}"
            );
        }
        for (a, b) in s64.iter().zip(&want_s) {
            assert!(
                (a - b).abs() < 1e-12,
                "reference shrinkage {a} vs sklearn {b}"
            );
        }
        let gpu = gpu();
        let x: Vec<f32> = f.x.iter().map(|&v| v as f32).collect();
        let got = partial_correlation(gpu, &gpu.upload(&x, &[f.b, f.n, f.t]).unwrap()).unwrap();
        assert_close(
            &gpu.read(&got.partial).unwrap(),
            &want,
            Tolerance::ACCUMULATION,
            "GPU vs nilearn",
        );
        assert_close(
            &gpu.read(&got.shrinkage).unwrap(),
            &want_s,
            Tolerance::COMPOSITE,
            "GPU shrinkage vs sklearn",
        );
    }

    #[test]
    fn reference_inverse_is_an_inverse() {
        let n = 6;
        let x = to_f64(&random_vec(n * 30, 5));
        let (cov, _) = reference::ledoit_wolf(&x, n, 30);
        let inv = reference::inverse(&cov, n);
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|k| cov[i * n + k] * inv[k * n + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        for shape in [&[3, 4][..], &[1, 3, 1], &[1, 0, 4]] {
            let x = gpu.zeros(shape).unwrap();
            let e = partial_correlation(gpu, &x).unwrap_err();
            assert!(matches!(e, GpuError::Shape { .. }), "{shape:?}: {e}");
        }
    }
}
