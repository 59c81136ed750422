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
//! When T ≥ N the N×N inversion is Gauss–Jordan in f32 without pivoting, one
//! workgroup per batch item. When T < N ([`Path::LowRank`]) the shrunk
//! covariance is s·μ·I plus a rank-T term, and Woodbury's identity turns the
//! N×N inverse into a T×T one and two matmuls (derivation in the shader); the shrinkage keeps the matrix symmetric positive definite
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

/// How the precision is formed (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Gauss–Jordan on the N×N shrunk covariance (T ≥ N).
    Direct,
    /// Woodbury: Gauss–Jordan on a T×T matrix plus two matmuls (T < N).
    LowRank,
}

/// The path for N regions of T frames: the low-rank one whenever the T×T
/// system is the smaller, which is every crop ABIDE's 200 regions are used
/// with (48 frames: about 40x fewer flops than the N×N inverse; 128: 4x).
pub fn path(n: usize, t: usize) -> Path {
    if t < n {
        Path::LowRank
    } else {
        Path::Direct
    }
}

/// Partial correlation of each batch item's N series of T frames.
pub fn partial_correlation(gpu: &Gpu, x: &Tensor) -> Result<PartialCorrelation> {
    let &[b, n, _] = x.shape() else {
        return Err(shape_error(x));
    };
    let out = PartialCorrelation {
        partial: gpu.empty(&[b, n, n]),
        shrinkage: gpu.empty(&[b]),
    };
    partial_correlation_into(gpu, x, &out)?;
    Ok(out)
}

fn shape_error(x: &Tensor) -> GpuError {
    GpuError::Shape {
        op: "partial_correlation",
        message: format!("input {:?} must be [B, N, T]", x.shape()),
    }
}

/// [`partial_correlation`] into existing tensors (`out.partial` [B, N, N],
/// `out.shrinkage` [B]); every element of both is written.
pub fn partial_correlation_into(gpu: &Gpu, x: &Tensor, out: &PartialCorrelation) -> Result<()> {
    let &[_, n, t] = x.shape() else {
        return Err(shape_error(x));
    };
    partial_correlation_on(gpu, x, out, path(n, t))
}

/// [`partial_correlation_into`] on a given path (the tests compare the two
/// paths on one input; the low-rank one needs T < N).
fn partial_correlation_on(
    gpu: &Gpu,
    x: &Tensor,
    out: &PartialCorrelation,
    path: Path,
) -> Result<()> {
    let &[b, n, t] = x.shape() else {
        return Err(shape_error(x));
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
    if out.partial.shape() != [b, n, n] || out.shrinkage.shape() != [b] {
        return Err(GpuError::Shape {
            op: "partial_correlation",
            message: format!(
                "outputs {:?} and {:?}, expected [{b}, {n}, {n}] and [{b}]",
                out.partial.shape(),
                out.shrinkage.shape()
            ),
        });
    }
    if b == 0 {
        return Ok(());
    }
    let (partial, shrinkage) = (&out.partial, &out.shrinkage);
    gpu.planner("partial_correlation").whole(
        &[x, partial],
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
    match path {
        Path::Direct => {
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
        }
        Path::LowRank => {
            debug_assert!(t < n, "the low-rank path needs T < N");
            // G = xcᵀ·xc [B, T, T], turned into M = (1 − s)G + sμT·I in place.
            let m = gpu.empty(&[b, t, t]);
            matmul_into(gpu, &xc, &xc, &m, Spec::TN, 1.0)?;
            gpu.launch_linear(
                SHADER.kernel("shrink_gram"),
                &[(2, m.arg()), (3, shrinkage.arg())],
                &p,
                b as u64,
            )?;
            // M⁻¹ by the same Gauss–Jordan kernel, sized T.
            let p_t = Params { n: t as u32, ..p };
            gpu.count_flops(2 * (b * t * t * t) as u64);
            gpu.launch_linear(SHADER.kernel("invert"), &[(2, m.arg())], &p_t, b as u64)?;
            // k = (xc·M⁻¹)·xcᵀ [B, N, N].
            let y = gpu.empty(x.shape());
            matmul_into(gpu, &xc, &m, &y, Spec::NN, 1.0)?;
            let k = gpu.empty(&[b, n, n]);
            matmul_into(gpu, &y, &xc, &k, Spec::NT, 1.0)?;
            gpu.launch_linear(
                SHADER.kernel("partial_low_rank"),
                &[(2, k.arg()), (3, shrinkage.arg()), (4, partial.arg())],
                &p,
                ((b * n * n) as u64).div_ceil(256),
            )?;
        }
    }
    Ok(())
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

    /// Runs the op into NaN-poisoned outputs, traced; returns the outputs
    /// and which path's kernels ran.
    fn run(
        gpu: &Gpu,
        x: &[f32],
        shape: [usize; 3],
        on: Option<Path>,
    ) -> (Vec<f32>, Vec<f32>, Path) {
        let [b, n, _] = shape;
        let tx = gpu.upload(x, &shape).unwrap();
        let out = PartialCorrelation {
            partial: crate::check::poisoned(gpu, &[b, n, n]),
            shrinkage: crate::check::poisoned(gpu, &[b]),
        };
        let ((), trace) = gpu.traced(|| match on {
            Some(path) => partial_correlation_on(gpu, &tx, &out, path).unwrap(),
            None => partial_correlation_into(gpu, &tx, &out).unwrap(),
        });
        let ran = |k: &str| !crate::check::dispatches(&trace, k).is_empty();
        let low_rank = ran("partial_correlation::shrink_gram");
        assert_eq!(
            low_rank,
            ran("partial_correlation::partial_low_rank"),
            "{trace:?}"
        );
        assert_eq!(!low_rank, ran("partial_correlation::shrink"), "{trace:?}");
        assert_eq!(!low_rank, ran("partial_correlation::partial"), "{trace:?}");
        assert!(ran("partial_correlation::invert"), "{trace:?}");
        let taken = if low_rank {
            Path::LowRank
        } else {
            Path::Direct
        };
        (
            gpu.read(&out.partial).unwrap(),
            gpu.read(&out.shrinkage).unwrap(),
            taken,
        )
    }

    #[test]
    fn matches_reference_including_zero_regions_and_n_200() {
        let gpu = gpu();
        // (B, N, T, all-zero region): N = 1; N > T (shrinkage is what makes it
        // invertible, and the low-rank path runs); T = N (the direct path's
        // edge); N not a multiple of 256 or 64; N = 200 at T = 48 and 128
        // (the ABIDE crops) and at T = 230 (direct).
        let cases: &[(usize, usize, usize, Option<usize>)] = &[
            (2, 1, 5, None),
            (3, 6, 40, Some(2)),
            (2, 30, 20, Some(0)),
            (2, 31, 3, None),
            (3, 40, 40, Some(39)),
            (1, 70, 90, Some(69)),
            (2, 200, 48, Some(5)),
            (1, 200, 128, Some(17)),
            (1, 200, 230, None),
        ];
        for (ci, &(b, n, t, zero)) in cases.iter().enumerate() {
            let x = series(b, n, t, 1000 + 10 * ci as u64, zero);
            let (p, s, taken) = run(gpu, &x, [b, n, t], None);
            assert_eq!(taken, path(n, t), "B={b} N={n} T={t}");
            let (want, want_s) = reference::partial_correlation(&to_f64(&x), b, n, t);
            let what = format!("partial correlation B={b} N={n} T={t} ({taken:?})");
            assert!(p.iter().all(|v| v.is_finite()), "{what}: non-finite values");
            assert_close(
                &s,
                &want_s,
                Tolerance::COMPOSITE,
                &format!("{what} shrinkage"),
            );
            // Measured on lavapipe: at most 9.9e-6 on the direct path (N = 200,
            // T = 230) and 2.0e-6 on the low-rank one (N = 200, T = 128), so
            // the accumulation tolerance holds with a 10x margin.
            assert_close(&p, &want, Tolerance::ACCUMULATION, &what);
            if let Some(z) = zero {
                // A zero region is partially correlated with nothing.
                for bi in 0..b {
                    for j in (0..n).filter(|&j| j != z) {
                        assert_eq!(p[(bi * n + z) * n + j], 0.0, "{what}");
                        assert_eq!(p[(bi * n + j) * n + z], 0.0, "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn both_paths_agree_when_t_is_below_n() {
        let gpu = gpu();
        for (ci, &(b, n, t)) in [(2, 50, 12), (1, 200, 48)].iter().enumerate() {
            let x = series(b, n, t, 1900 + ci as u64, None);
            let (direct, s_direct, on_direct) = run(gpu, &x, [b, n, t], Some(Path::Direct));
            let (low, s_low, on_low) = run(gpu, &x, [b, n, t], Some(Path::LowRank));
            assert_eq!((on_direct, on_low), (Path::Direct, Path::LowRank));
            let what = format!("B={b} N={n} T={t}: low rank vs direct");
            assert_close(&low, &to_f64(&direct), Tolerance::ACCUMULATION, &what);
            assert_close(&s_low, &to_f64(&s_direct), Tolerance::COMPOSITE, &what);
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
