//! Connectivity features of the baseline, in f64 on the CPU: Pearson (Fisher
//! z), partial correlation, and tangent-space embedding (Varoquaux et al. 2010;
//! the strongest linear pipeline of Dadi et al. 2019).
//!
//! Partial and tangent start from the Ledoit–Wolf shrunk covariance of the
//! scan's full series, the estimator of nilearn's `ConnectivityMeasure` (and of
//! the model's static branch: `ops::partial_correlation::reference::ledoit_wolf`
//! is the one implementation both use). The shrinkage keeps all-zero regions
//! (outside the field of view) positive definite.
//!
//! - **partial**: Θ = Σ̂⁻¹, P_ij = −Θ_ij / √(Θ_ii Θ_jj), upper triangle (i < j),
//!   as nilearn's `kind="partial correlation"`.
//! - **tangent**: the reference M is the geometric (Riemannian, affine-invariant)
//!   mean of the *training* scans' covariances, computed as nilearn's
//!   `_geometric_mean` does for `kind="tangent"` (gradient descent from the
//!   arithmetic mean, at most 30 steps, tolerance 1e-7 on the gradient norm per
//!   matrix entry, step halved when the norm grows); then per scan
//!   T = logm(M^{-1/2} Σ̂ M^{-1/2}), vectorized as nilearn's `sym_matrix_to_vec`:
//!   the upper triangle with the diagonal, diagonal entries divided by √2 (so the
//!   vector's norm is T's Frobenius norm over √2).
//!
//! Eigendecompositions are Householder tridiagonalization + implicit QL (the
//! EISPACK `tred2`/`tql2` pair, as in JAMA), in a fixed order: the same input
//! gives the same output.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::{fc_features, BaselineError, Result};
use crate::data::Dataset;
use crate::ops::partial_correlation::reference::{inverse, ledoit_wolf};

/// Which connectivity the baseline's logistic regression sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// Fisher z of the Pearson correlation (no shrinkage), upper triangle.
    #[default]
    Pearson,
    /// Partial correlation from the inverse Ledoit–Wolf covariance, upper triangle.
    Partial,
    /// Tangent-space embedding around the training folds' mean covariance.
    Tangent,
}

impl FeatureKind {
    pub const ALL: [FeatureKind; 3] = [
        FeatureKind::Pearson,
        FeatureKind::Partial,
        FeatureKind::Tangent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Pearson => "pearson",
            FeatureKind::Partial => "partial",
            FeatureKind::Tangent => "tangent",
        }
    }

    /// One line for run configs and logs.
    pub fn describe(self) -> &'static str {
        match self {
            FeatureKind::Pearson => "FC (Fisher z of Pearson, upper triangle, z-scored on the training fold) + L2 logistic regression (L-BFGS)",
            FeatureKind::Partial => "partial correlation (inverse Ledoit-Wolf covariance, upper triangle, z-scored on the training fold) + L2 logistic regression (L-BFGS)",
            FeatureKind::Tangent => "tangent space (Ledoit-Wolf covariances whitened by the training folds' log-Euclidean mean, matrix log, upper triangle with diagonal, z-scored on the training fold) + L2 logistic regression (L-BFGS)",
        }
    }
}

impl fmt::Display for FeatureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FeatureKind {
    type Err = BaselineError;
    fn from_str(text: &str) -> Result<Self> {
        FeatureKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| BaselineError::UnknownFeatures {
                found: text.to_string(),
            })
    }
}

// ---------------------------------------------------------------- symmetric matrices

/// Eigenvalues (ascending) and eigenvectors of a symmetric matrix.
#[derive(Debug, Clone)]
pub struct SymmetricEigen {
    pub values: Array1<f64>,
    /// Row k is the unit eigenvector of `values[k]`.
    pub vectors: Array2<f64>,
}

impl SymmetricEigen {
    /// Decomposes `a` (only symmetric input is meaningful); `None` if it holds
    /// a non-finite value or the QL iteration does not converge.
    pub fn new(a: ArrayView2<'_, f64>) -> Option<Self> {
        let n = a.nrows();
        if a.ncols() != n || a.iter().any(|v| !v.is_finite()) {
            return None;
        }
        if n == 0 {
            return Some(SymmetricEigen {
                values: Array1::zeros(0),
                vectors: Array2::zeros((0, 0)),
            });
        }
        // v is column-major: v[c * n + r] is V[r][c], so the inner loops of both
        // passes (which run down columns) read contiguous memory.
        let mut v: Vec<f64> = a.t().iter().copied().collect();
        let mut d = vec![0.0; n];
        let mut e = vec![0.0; n];
        tred2(n, &mut v, &mut d, &mut e);
        tql2(n, &mut v, &mut d, &mut e)?;
        // Column c of V is an eigenvector; column-major storage makes it row c here.
        let vectors = Array2::from_shape_vec((n, n), v).ok()?;
        Some(SymmetricEigen {
            values: Array1::from(d),
            vectors,
        })
    }

    /// V diag(f(λ)) Vᵀ.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Array2<f64> {
        let scaled = &self.vectors * &self.values.mapv(f).insert_axis(Axis(1));
        self.vectors.t().dot(&scaled)
    }
}

/// Householder reduction of the symmetric matrix in `v` (column-major) to
/// tridiagonal form: diagonal `d`, subdiagonal `e[1..]`; `v` becomes the
/// accumulated orthogonal transformation. EISPACK tred2, after JAMA.
#[allow(clippy::needless_range_loop)]
fn tred2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    let at = |r: usize, c: usize| c * n + r;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = if f > 0.0 { -h.sqrt() } else { h.sqrt() };
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for x in e[..i].iter_mut() {
                *x = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[at(j, i)] = f;
                g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let g: f64 = (0..=i).map(|k| v[at(k, i + 1)] * v[at(k, j)]).sum();
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit-shift QL on the tridiagonal (d, e), accumulating into `v`, then
/// sorts eigenvalues ascending with their vectors. EISPACK tql2, after JAMA,
/// with an iteration cap so that no input can loop forever.
#[allow(clippy::needless_range_loop)]
fn tql2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) -> Option<()> {
    let at = |r: usize, c: usize| c * n + r;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        // e[n - 1] is 0, so the search stops at n - 1 at the latest.
        let m = (l..n).find(|&m| e[m].abs() <= eps * tst1).unwrap_or(n - 1);
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                if iterations > 100 {
                    return None;
                }
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in d[l + 2..].iter_mut() {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    // Columns i and i + 1 of v are contiguous runs of n values.
                    let (left, right) = v.split_at_mut(at(0, i + 1));
                    let column_i = &mut left[at(0, i)..];
                    for (vi, vi1) in column_i.iter_mut().zip(right[..n].iter_mut()) {
                        let h = *vi1;
                        *vi1 = s * *vi + c * h;
                        *vi = c * *vi - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    // Selection sort, ascending, moving whole columns.
    for i in 0..n.saturating_sub(1) {
        let k = (i..n).min_by(|&a, &b| d[a].total_cmp(&d[b])).unwrap_or(i);
        if k != i {
            d.swap(i, k);
            for r in 0..n {
                v.swap(at(r, i), at(r, k));
            }
        }
    }
    if d.iter().all(|x| x.is_finite()) {
        Some(())
    } else {
        None
    }
}

/// f(A) for a symmetric positive definite A, or an error naming `what` when an
/// eigenvalue is not positive (A is not SPD at f64 precision).
fn spd_map(a: ArrayView2<'_, f64>, f: impl Fn(f64) -> f64, what: &str) -> Result<Array2<f64>> {
    let eigen = SymmetricEigen::new(a).ok_or_else(|| BaselineError::NotPositiveDefinite {
        what: what.to_string(),
        smallest: f64::NAN,
    })?;
    let smallest = eigen.values.first().copied().unwrap_or(1.0);
    if smallest.is_nan() || smallest <= 0.0 {
        return Err(BaselineError::NotPositiveDefinite {
            what: what.to_string(),
            smallest,
        });
    }
    Ok(eigen.map(f))
}

/// Matrix logarithm of a symmetric positive definite matrix.
pub fn spd_log(a: ArrayView2<'_, f64>, what: &str) -> Result<Array2<f64>> {
    spd_map(a, f64::ln, what)
}

/// Matrix exponential of a symmetric matrix (always SPD).
pub fn symmetric_exp(a: ArrayView2<'_, f64>) -> Array2<f64> {
    SymmetricEigen::new(a).map_or_else(|| Array2::from_elem(a.dim(), f64::NAN), |e| e.map(f64::exp))
}

// ---------------------------------------------------------------- features

/// Ledoit–Wolf shrunk covariance of a scan [regions, time], over its full length.
pub fn shrunk_covariance(data: ArrayView2<'_, f32>) -> Array2<f64> {
    let (n, t) = data.dim();
    let x: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
    let (cov, _shrinkage) = ledoit_wolf(&x, n, t);
    Array2::from_shape_vec((n, n), cov).expect("ledoit_wolf returns n*n values")
}

/// Partial correlations P_ij = −Θ_ij / √(Θ_ii Θ_jj), Θ = Σ⁻¹, upper triangle (i < j).
pub fn partial_from_covariance(cov: ArrayView2<'_, f64>) -> Vec<f64> {
    let n = cov.nrows();
    let flat: Vec<f64> = cov.iter().copied().collect();
    let theta = inverse(&flat, n);
    let mut out = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            out.push(-theta[i * n + j] / (theta[i * n + i] * theta[j * n + j]).sqrt());
        }
    }
    out
}

/// The upper triangle of a symmetric matrix with its diagonal, diagonal
/// entries divided by √2 (nilearn's `sym_matrix_to_vec`, which takes the lower
/// triangle: the same values, row-major over i ≤ j here).
pub fn symmetric_to_vector(m: ArrayView2<'_, f64>) -> Vec<f64> {
    let n = m.nrows();
    let mut out = Vec::with_capacity(n * (n + 1) / 2);
    for i in 0..n {
        out.push(m[[i, i]] / std::f64::consts::SQRT_2);
        for j in i + 1..n {
            out.push(m[[i, j]]);
        }
    }
    out
}

/// How the geometric mean's gradient descent stops (nilearn's values for
/// `kind="tangent"`: 30 steps, 1e-7).
#[derive(Debug, Clone, Copy)]
pub struct MeanOptions {
    pub max_iter: usize,
    /// On ‖mean logm(M^{-1/2} Σᵢ M^{-1/2})‖_F divided by the entry count n².
    pub tolerance: f64,
}

impl Default for MeanOptions {
    fn default() -> Self {
        MeanOptions {
            max_iter: 30,
            tolerance: 1e-7,
        }
    }
}

/// The geometric mean of SPD matrices: the M minimizing Σᵢ ‖logm(M^{-1/2} Σᵢ M^{-1/2})‖²,
/// where Σᵢ logm(M^{-1/2} Σᵢ M^{-1/2}) = 0. Gradient descent along the geodesic
/// from the arithmetic mean, step by step as nilearn's `_geometric_mean`
/// (Fletcher & Joshi 2007, algorithm 3). Returns M and the steps taken.
pub fn geometric_mean(
    matrices: &[ArrayView2<'_, f64>],
    options: MeanOptions,
) -> Result<(Array2<f64>, usize)> {
    let Some(first) = matrices.first() else {
        return Err(BaselineError::NoReferenceScans);
    };
    let mut mean = Array2::zeros(first.dim());
    for m in matrices {
        mean += m;
    }
    mean /= matrices.len() as f64;
    let entries = mean.len() as f64;
    let mut norm_old = f64::INFINITY;
    let mut step = 1.0;
    let mut steps = 0;
    for _ in 0..options.max_iter {
        steps += 1;
        let eigen =
            SymmetricEigen::new(mean.view()).ok_or_else(|| BaselineError::NotPositiveDefinite {
                what: "the geometric mean".to_string(),
                smallest: f64::NAN,
            })?;
        let smallest = eigen.values.first().copied().unwrap_or(1.0);
        if smallest.is_nan() || smallest <= 0.0 {
            return Err(BaselineError::NotPositiveDefinite {
                what: "the geometric mean".to_string(),
                smallest,
            });
        }
        let inv_sqrt = eigen.map(|l| 1.0 / l.sqrt());
        let logs = in_parallel(matrices, |index, m| {
            whitened_log(&inv_sqrt, *m, &format!("training covariance {index}"))
        })?;
        let mut logs_mean = Array2::zeros(mean.dim());
        for log in &logs {
            logs_mean += log;
        }
        logs_mean /= logs.len() as f64;
        let mut norm = logs_mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        // Move along the geodesic: M^{1/2} expm(step · mean log) M^{1/2}.
        let sqrt = eigen.map(f64::sqrt);
        let moved = symmetric_exp((&logs_mean * step).view());
        mean = sqrt.dot(&moved).dot(&sqrt);
        if norm < norm_old {
            norm_old = norm;
        } else if norm > norm_old {
            step /= 2.0;
            norm = norm_old;
        }
        if norm / entries < options.tolerance {
            break;
        }
    }
    Ok((mean, steps))
}

/// logm(W Σ W) for a symmetric W (a whitening), made exactly symmetric first:
/// round-off leaves the product slightly asymmetric, and the eigensolver
/// reads one triangle only.
fn whitened_log(
    whitening: &Array2<f64>,
    cov: ArrayView2<'_, f64>,
    what: &str,
) -> Result<Array2<f64>> {
    let whitened = whitening.dot(&cov).dot(whitening);
    let symmetric = (&whitened + &whitened.t()) * 0.5;
    spd_log(symmetric.view(), what)
}

/// The tangent space at a reference covariance: where scans are embedded.
#[derive(Debug, Clone)]
pub struct TangentSpace {
    /// The reference covariance M: the geometric mean of the training covariances.
    pub mean: Array2<f64>,
    /// M^{-1/2}.
    pub whitening: Array2<f64>,
    /// Gradient steps the geometric mean took.
    pub steps: usize,
}

impl TangentSpace {
    /// Fits the reference on `covariances` (the training scans').
    pub fn fit(covariances: &[ArrayView2<'_, f64>], options: MeanOptions) -> Result<Self> {
        let (mean, steps) = geometric_mean(covariances, options)?;
        let whitening = spd_map(mean.view(), |l| 1.0 / l.sqrt(), "the geometric mean")?;
        Ok(TangentSpace {
            mean,
            whitening,
            steps,
        })
    }

    /// logm(M^{-1/2} Σ M^{-1/2}) of one covariance.
    pub fn embed(&self, cov: ArrayView2<'_, f64>, what: &str) -> Result<Array2<f64>> {
        whitened_log(&self.whitening, cov, what)
    }
}

/// Each scan's connectivity, computed once; `for_fold` gives the feature
/// matrix of one fold (for tangent, embedded around that fold's training mean).
#[derive(Debug, Clone)]
pub struct Connectivity {
    pub kind: FeatureKind,
    /// [scans, features] for pearson and partial; empty for tangent.
    fixed: Array2<f64>,
    /// Tangent only: each scan's shrunk covariance.
    covariances: Vec<Array2<f64>>,
    /// Scan names for messages.
    ids: Vec<String>,
}

impl Connectivity {
    pub fn compute(dataset: &Dataset, kind: FeatureKind) -> Result<Self> {
        let ids: Vec<String> = dataset.scans.iter().map(|s| s.id.clone()).collect();
        let data: Vec<ArrayView2<'_, f32>> = dataset.scans.iter().map(|s| s.data.view()).collect();
        Self::from_scans(&data, ids, kind)
    }

    /// The same from arrays [regions, time] (all with the same region count).
    pub fn from_scans(
        scans: &[ArrayView2<'_, f32>],
        ids: Vec<String>,
        kind: FeatureKind,
    ) -> Result<Self> {
        let n = scans.first().map_or(0, |s| s.nrows());
        let mut out = Connectivity {
            kind,
            fixed: Array2::zeros((0, 0)),
            covariances: Vec::new(),
            ids,
        };
        let rows: Vec<Vec<f64>> = match kind {
            FeatureKind::Pearson => in_parallel(scans, |_, s| Ok(fc_features(*s)))?,
            FeatureKind::Partial => in_parallel(scans, |_, s| {
                Ok(partial_from_covariance(shrunk_covariance(*s).view()))
            })?,
            FeatureKind::Tangent => {
                out.covariances = in_parallel(scans, |_, s| Ok(shrunk_covariance(*s)))?;
                return Ok(out);
            }
        };
        out.fixed = Array2::zeros((rows.len(), n * n.saturating_sub(1) / 2));
        for (mut target, row) in out.fixed.rows_mut().into_iter().zip(rows) {
            target.assign(&Array1::from(row));
        }
        Ok(out)
    }

    pub fn scans(&self) -> usize {
        match self.kind {
            FeatureKind::Tangent => self.covariances.len(),
            _ => self.fixed.nrows(),
        }
    }

    /// Features per scan: N(N−1)/2, or N(N+1)/2 for tangent (with the diagonal).
    pub fn width(&self) -> usize {
        match self.kind {
            FeatureKind::Tangent => self.covariances.first().map_or(0, |c| {
                let n = c.nrows();
                n * (n + 1) / 2
            }),
            _ => self.fixed.ncols(),
        }
    }

    fn scan_name(&self, index: usize) -> String {
        match self.ids.get(index) {
            Some(id) => format!("the covariance of scan {id}"),
            None => format!("the covariance of scan {index}"),
        }
    }

    /// The feature matrix [scans, features] of a fold whose training scans are
    /// `train`. Only tangent depends on the fold: its reference mean is fitted on
    /// the training scans alone, so nothing of the test scans leaks into it.
    pub fn for_fold(&self, train: &[usize]) -> Result<Array2<f64>> {
        if self.kind != FeatureKind::Tangent {
            return Ok(self.fixed.clone());
        }
        let training: Vec<ArrayView2<'_, f64>> = train
            .iter()
            .filter_map(|&i| self.covariances.get(i))
            .map(|c| c.view())
            .collect();
        let space = TangentSpace::fit(&training, MeanOptions::default())?;
        log::debug!(
            "tangent reference: geometric mean of {} training covariances in {} steps",
            training.len(),
            space.steps
        );
        let covariances: Vec<ArrayView2<'_, f64>> =
            self.covariances.iter().map(|c| c.view()).collect();
        let rows = in_parallel(&covariances, |index, cov| {
            Ok(symmetric_to_vector(
                space.embed(*cov, &self.scan_name(index))?.view(),
            ))
        })?;
        let width = rows.first().map_or(0, Vec::len);
        let mut features = Array2::zeros((rows.len(), width));
        for (mut target, row) in features.rows_mut().into_iter().zip(rows) {
            target.assign(&Array1::from(row));
        }
        Ok(features)
    }
}

/// `f(index, item)` for every item on all cores, results in item order; the
/// first error in item order wins, so messages do not depend on timing.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(usize, &T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    let results: Vec<Vec<Result<R>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(k, item)| f(c * chunk + k, item))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(BaselineError::WorkerPanicked)])
            })
            .collect()
    });
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr2, Array2};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_symmetric(n: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = Array2::from_shape_fn((n, n), |_| rng.gen_range(-1.0..1.0));
        (&a + &a.t()) * 0.5
    }

    /// A random SPD matrix: B Bᵀ / n + 0.1 I.
    fn random_spd(n: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let b = Array2::from_shape_fn((n, n + 3), |_| rng.gen_range(-1.0..1.0));
        b.dot(&b.t()) / n as f64 + Array2::<f64>::eye(n) * 0.1
    }

    fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        a.iter()
            .zip(b)
            .fold(0.0, |m, (x, y)| f64::max(m, (x - y).abs()))
    }

    #[test]
    fn eigen_of_hand_checkable_matrices() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3, vectors (1, −1)/√2 and (1, 1)/√2.
        let e = SymmetricEigen::new(arr2(&[[2.0, 1.0], [1.0, 2.0]]).view()).unwrap();
        assert!((e.values[0] - 1.0).abs() < 1e-14 && (e.values[1] - 3.0).abs() < 1e-14);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((e.vectors[[0, 0]].abs() - h).abs() < 1e-14);
        assert!((e.vectors[[0, 0]] + e.vectors[[0, 1]]).abs() < 1e-14);
        assert!((e.vectors[[1, 0]] - e.vectors[[1, 1]]).abs() < 1e-14);
        // Diagonal input, unsorted: sorted output.
        let e =
            SymmetricEigen::new(arr2(&[[3.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 2.0]]).view())
                .unwrap();
        assert_eq!(e.values.to_vec(), vec![-1.0, 2.0, 3.0]);
        // Non-finite input is refused, not looped on.
        assert!(SymmetricEigen::new(arr2(&[[f64::NAN, 0.0], [0.0, 1.0]]).view()).is_none());
    }

    #[test]
    fn eigen_reconstructs_random_symmetric_matrices() {
        for (n, seed) in [(1usize, 1u64), (2, 2), (5, 3), (17, 4), (64, 5)] {
            let a = random_symmetric(n, seed);
            let e = SymmetricEigen::new(a.view()).unwrap();
            // A = V diag(λ) Vᵀ, VᵀV = I, A v_k = λ_k v_k, ascending.
            assert!(max_abs_diff(&e.map(|l| l), &a) < 1e-12, "n {n}");
            let gram = e.vectors.dot(&e.vectors.t());
            assert!(max_abs_diff(&gram, &Array2::eye(n)) < 1e-12, "n {n}");
            for k in 0..n {
                let v = e.vectors.row(k);
                let av = a.dot(&v);
                let residual = av
                    .iter()
                    .zip(v.iter())
                    .fold(0.0, |m, (x, y)| f64::max(m, (x - e.values[k] * y).abs()));
                assert!(residual < 1e-12, "n {n}, k {k}: {residual}");
            }
            assert!(e.values.windows(2).into_iter().all(|w| w[0] <= w[1]));
        }
        // A repeated eigenvalue: 2 I plus a rank-one part.
        let u = Array1::from(vec![1.0, 2.0, 2.0]) / 3.0;
        let a = Array2::<f64>::eye(3) * 2.0
            + u.view()
                .insert_axis(Axis(1))
                .dot(&u.view().insert_axis(Axis(0)))
                * 5.0;
        let e = SymmetricEigen::new(a.view()).unwrap();
        assert!((e.values[0] - 2.0).abs() < 1e-13 && (e.values[1] - 2.0).abs() < 1e-13);
        assert!((e.values[2] - 7.0).abs() < 1e-13);
        assert!(max_abs_diff(&e.map(|l| l), &a) < 1e-13);
    }

    #[test]
    fn log_and_exp_are_inverse_and_log_of_identity_is_zero() {
        for (n, seed) in [(3usize, 7u64), (12, 8), (40, 9)] {
            let c = random_spd(n, seed);
            let log = spd_log(c.view(), "c").unwrap();
            assert!(
                max_abs_diff(&symmetric_exp(log.view()), &c) < 1e-11,
                "n {n}"
            );
            let s = random_symmetric(n, seed + 100);
            let back = spd_log(symmetric_exp(s.view()).view(), "exp").unwrap();
            assert!(max_abs_diff(&back, &s) < 1e-11, "n {n}");
        }
        let zero = spd_log(Array2::<f64>::eye(4).view(), "I").unwrap();
        assert!(zero.iter().all(|v| v.abs() < 1e-15));
        // Not positive definite: an error naming the matrix, with its eigenvalue.
        let e = spd_log(arr2(&[[1.0, 2.0], [2.0, 1.0]]).view(), "the test matrix").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the test matrix is not positive definite (smallest eigenvalue -1.000); cannot take its matrix logarithm"
        );
    }

    #[test]
    fn partial_correlation_of_a_markov_chain() {
        // AR(1) over three regions, ρ = 0.5: regions 0 and 2 are independent
        // given region 1, and neighbours have partial correlation ρ / √(1 + ρ²).
        let rho: f64 = 0.5;
        let cov = arr2(&[
            [1.0, rho, rho * rho],
            [rho, 1.0, rho],
            [rho * rho, rho, 1.0],
        ]);
        let p = partial_from_covariance(cov.view());
        let neighbour = rho / (1.0 + rho * rho).sqrt();
        assert!((p[0] - neighbour).abs() < 1e-14, "{p:?}");
        assert!(p[1].abs() < 1e-14, "{p:?}");
        assert!((p[2] - neighbour).abs() < 1e-14, "{p:?}");
    }

    #[test]
    fn shrunk_covariance_is_spd_even_with_an_all_zero_region() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let mut data = Array2::<f32>::from_shape_fn((6, 5), |_| rng.gen_range(-1.0..1.0));
        data.row_mut(2).fill(0.0);
        // Fewer frames than regions: the empirical covariance is singular.
        let cov = shrunk_covariance(data.view());
        let e = SymmetricEigen::new(cov.view()).unwrap();
        assert!(e.values[0] > 0.0, "{:?}", e.values);
        assert!(max_abs_diff(&cov, &cov.t().to_owned()) == 0.0);
    }

    fn tight() -> MeanOptions {
        MeanOptions {
            max_iter: 200,
            tolerance: 1e-16,
        }
    }

    #[test]
    fn tangent_of_the_mean_is_zero_and_commuting_case_is_exact() {
        // One reference scan: the mean is that scan, its own embedding is 0.
        let c = random_spd(5, 31);
        let space = TangentSpace::fit(&[c.view()], MeanOptions::default()).unwrap();
        assert!(max_abs_diff(&space.mean, &c) < 1e-12);
        let t = space.embed(c.view(), "c").unwrap();
        assert!(t.iter().all(|v| v.abs() < 1e-11), "{t:?}");
        // Diagonal (commuting) covariances: the mean is the elementwise geometric
        // mean, and each embedding is ½ log of the ratio, opposite in sign.
        let a = arr2(&[[4.0, 0.0], [0.0, 1.0]]);
        let b = arr2(&[[1.0, 0.0], [0.0, 9.0]]);
        let space = TangentSpace::fit(&[a.view(), b.view()], tight()).unwrap();
        assert!(max_abs_diff(&space.mean, &arr2(&[[2.0, 0.0], [0.0, 3.0]])) < 1e-12);
        let ta = space.embed(a.view(), "a").unwrap();
        let tb = space.embed(b.view(), "b").unwrap();
        let half_log = |x: f64| 0.5 * x.ln();
        let expected = arr2(&[[half_log(4.0), 0.0], [0.0, half_log(1.0 / 9.0)]]);
        assert!(max_abs_diff(&ta, &expected) < 1e-12);
        assert!(max_abs_diff(&(&ta + &tb), &Array2::zeros((2, 2))) < 1e-12);
        // The whitening is M^{-1/2}: W M W = I.
        let wmw = space.whitening.dot(&space.mean).dot(&space.whitening);
        assert!(max_abs_diff(&wmw, &Array2::eye(2)) < 1e-12);
        // Vectorized as nilearn: diagonal over √2, off-diagonal as is.
        let m = arr2(&[[1.0, 2.0], [2.0, 3.0]]);
        let s2 = std::f64::consts::SQRT_2;
        assert_eq!(symmetric_to_vector(m.view()), vec![1.0 / s2, 2.0, 3.0 / s2]);
    }

    #[test]
    fn geometric_mean_of_two_non_commuting_matrices_is_the_geodesic_midpoint() {
        // For two SPD matrices the Riemannian mean has a closed form:
        // A^{1/2} (A^{-1/2} B A^{-1/2})^{1/2} A^{1/2}.
        for (n, seed) in [(2usize, 61u64), (4, 62), (9, 63)] {
            let a = random_spd(n, seed);
            let b = random_spd(n, seed + 50);
            let ea = SymmetricEigen::new(a.view()).unwrap();
            let (a_sqrt, a_inv_sqrt) = (ea.map(f64::sqrt), ea.map(|l| 1.0 / l.sqrt()));
            let inner = a_inv_sqrt.dot(&b).dot(&a_inv_sqrt);
            let inner = (&inner + &inner.t()) * 0.5;
            let inner_sqrt = SymmetricEigen::new(inner.view()).unwrap().map(f64::sqrt);
            let expected = a_sqrt.dot(&inner_sqrt).dot(&a_sqrt);
            let (mean, steps) = geometric_mean(&[a.view(), b.view()], tight()).unwrap();
            assert!(
                max_abs_diff(&mean, &expected) < 1e-10,
                "n {n}: {steps} steps"
            );
            // nilearn's stopping rule stops early, close to the same point.
            let (early, _) = geometric_mean(&[a.view(), b.view()], MeanOptions::default()).unwrap();
            assert!(max_abs_diff(&early, &expected) < 1e-5, "n {n}");
        }
    }

    #[test]
    fn training_embeddings_average_to_zero_at_the_geometric_mean() {
        // The mean is where Σᵢ logm(M^{-1/2} Σᵢ M^{-1/2}) = 0.
        let covariances: Vec<Array2<f64>> = (0..6).map(|i| random_spd(5, 70 + i)).collect();
        let views: Vec<_> = covariances.iter().map(|c| c.view()).collect();
        let space = TangentSpace::fit(&views, tight()).unwrap();
        let mut sum = Array2::<f64>::zeros((5, 5));
        for c in &covariances {
            sum += &space.embed(c.view(), "c").unwrap();
        }
        assert!(sum.iter().all(|v| v.abs() < 1e-10), "{sum:?}");
        // The arithmetic mean (the start) is not that point.
        let mut arithmetic = Array2::<f64>::zeros((5, 5));
        for c in &covariances {
            arithmetic += c;
        }
        arithmetic /= 6.0;
        assert!(max_abs_diff(&arithmetic, &space.mean) > 1e-3);
    }

    fn random_scans(count: usize, n: usize, t: usize, seed: u64) -> Vec<Array2<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| Array2::from_shape_fn((n, t), |_| rng.gen_range(-1.0f32..1.0)))
            .collect()
    }

    #[test]
    fn tangent_reference_sees_only_the_training_scans() {
        let mut scans = random_scans(8, 4, 30, 41);
        let ids: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        fn views(s: &[Array2<f32>]) -> Vec<ArrayView2<'_, f32>> {
            s.iter().map(|a| a.view()).collect()
        }
        let train = [0usize, 1, 2, 3, 4];
        let before = Connectivity::from_scans(&views(&scans), ids.clone(), FeatureKind::Tangent)
            .unwrap()
            .for_fold(&train)
            .unwrap();
        assert_eq!(before.dim(), (8, 10));
        let space =
            Connectivity::from_scans(&views(&scans), ids.clone(), FeatureKind::Tangent).unwrap();
        assert_eq!((space.scans(), space.width()), (8, 10));
        // Change a test scan beyond recognition: no other row may move.
        scans[6].mapv_inplace(|v| 10.0 * v * v);
        let after = Connectivity::from_scans(&views(&scans), ids.clone(), FeatureKind::Tangent)
            .unwrap()
            .for_fold(&train)
            .unwrap();
        for row in (0..8).filter(|&r| r != 6) {
            assert_eq!(before.row(row), after.row(row), "row {row}");
        }
        assert_ne!(before.row(6), after.row(6));
        // Changing a training scan moves the reference, hence every row.
        scans[0].mapv_inplace(|v| 3.0 * v);
        let moved = Connectivity::from_scans(&views(&scans), ids, FeatureKind::Tangent)
            .unwrap()
            .for_fold(&train)
            .unwrap();
        assert_ne!(moved.row(7), after.row(7));
    }

    #[test]
    fn fixed_kinds_match_their_definitions() {
        let scans = random_scans(3, 5, 40, 51);
        let views: Vec<_> = scans.iter().map(|a| a.view()).collect();
        let ids: Vec<String> = (0..3).map(|i| format!("s{i}")).collect();
        let pearson = Connectivity::from_scans(&views, ids.clone(), FeatureKind::Pearson).unwrap();
        let partial = Connectivity::from_scans(&views, ids, FeatureKind::Partial).unwrap();
        for (i, scan) in scans.iter().enumerate() {
            assert_eq!(
                pearson.for_fold(&[0]).unwrap().row(i).to_vec(),
                fc_features(scan.view())
            );
            let expected = partial_from_covariance(shrunk_covariance(scan.view()).view());
            assert_eq!(partial.for_fold(&[0]).unwrap().row(i).to_vec(), expected);
        }
        assert_eq!(partial.for_fold(&[1]).unwrap().dim(), (3, 10));
        assert_eq!((partial.scans(), partial.width()), (3, 10));
        assert_eq!(
            "tangent".parse::<FeatureKind>().unwrap(),
            FeatureKind::Tangent
        );
        assert_eq!(
            "cosine".parse::<FeatureKind>().unwrap_err().to_string(),
            "unknown baseline features \"cosine\"; expected pearson, partial or tangent"
        );
    }
}
