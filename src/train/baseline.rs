//! The honest floor: functional-connectivity features + L2-regularized
//! logistic regression, on the CPU in f64.
//!
//! Features (`baseline.features`, see `connectivity`): `pearson` (default) is,
//! for each scan, the Pearson correlation of every pair of regions over the
//! scan's full length (upper triangle, N(N−1)/2 values), Fisher z-transformed
//! (atanh); a region with zero variance (outside the field of view) correlates
//! 0 with everything. `partial` and `tangent` start from the Ledoit–Wolf
//! covariance. Every kind is then z-scored per feature with the mean and
//! standard deviation of the *training* fold only.
//!
//! Classifier: scikit-learn's objective, ½‖W‖² + C Σᵢ loss_i (the bias is not
//! penalized), divided by C·n for a well-scaled minimization; binary
//! (sigmoid, one weight vector) for two classes, multinomial (softmax) for
//! more. Minimized by L-BFGS with an Armijo backtracking line search: no
//! randomness and sums in a fixed order, so the same data give the same model.

use std::time::Instant;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::Serialize;
use thiserror::Error;

use super::metrics::{FoldMetrics, MetricsError, Scores};
use crate::data::split::Fold;
use crate::data::Dataset;

mod connectivity;
pub use connectivity::{
    geometric_mean, partial_from_covariance, shrunk_covariance, spd_log, symmetric_exp,
    symmetric_to_vector, Connectivity, FeatureKind, MeanOptions, SymmetricEigen, TangentSpace,
};

#[derive(Debug, Error)]
pub enum BaselineError {
    // The cause is in the message, not a `#[source]`, so the CLI's cause chain
    // (`{:#}`) does not print it twice.
    #[error("fold {fold}: {cause}")]
    Metrics { fold: String, cause: MetricsError },

    #[error("fold {fold}: its {side} set is empty")]
    EmptyFold { fold: String, side: &'static str },

    #[error("fold {fold}: scan index {index} is outside the {scans} scans of the dataset")]
    BadIndex {
        fold: String,
        index: usize,
        scans: usize,
    },

    #[error("c_reg = {c}; expected a finite number > 0")]
    BadRegularization { c: f64 },

    #[error("unknown baseline features \"{found}\"; expected pearson, partial or tangent")]
    UnknownFeatures { found: String },

    #[error("{what} is not positive definite (smallest eigenvalue {smallest:.3}); cannot take its matrix logarithm")]
    NotPositiveDefinite { what: String, smallest: f64 },

    #[error("the tangent-space reference needs at least one training scan")]
    NoReferenceScans,

    #[error("a feature worker thread panicked (a bug)")]
    WorkerPanicked,
}

pub type Result<T, E = BaselineError> = std::result::Result<T, E>;

/// Upper triangle (row-major, i < j) of the Pearson correlation of the rows of
/// `data` [regions, time], Fisher z-transformed. |r| is clipped to 1 − 1e-7
/// first, so perfectly correlated regions give a large finite z.
pub fn fc_features(data: ArrayView2<'_, f32>) -> Vec<f64> {
    let n = data.nrows();
    let mut x = data.mapv(f64::from);
    for mut row in x.rows_mut() {
        let mean = row.mean().unwrap_or(0.0);
        row.mapv_inplace(|v| v - mean);
        let norm = row.dot(&row).sqrt();
        // Zero variance: the row stays all zero and correlates 0 with everything.
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        } else {
            row.fill(0.0);
        }
    }
    let r = x.dot(&x.t());
    let mut out = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            let c = r[[i, j]].clamp(-1.0 + 1e-7, 1.0 - 1e-7);
            out.push(c.atanh());
        }
    }
    out
}

/// `fc_features` of every scan: [scans, N(N−1)/2].
pub fn fc_feature_matrix(dataset: &Dataset) -> Array2<f64> {
    let n = dataset.n_regions;
    let width = n * n.saturating_sub(1) / 2;
    let mut features = Array2::zeros((dataset.scans.len(), width));
    for (scan, mut row) in dataset.scans.iter().zip(features.rows_mut()) {
        let f = fc_features(scan.data.view());
        row.assign(&Array1::from(f));
    }
    features
}

/// Per-feature mean and standard deviation of the training rows.
#[derive(Debug, Clone)]
pub struct Standardizer {
    pub mean: Array1<f64>,
    /// Population standard deviation; 1 where a feature is constant in training.
    pub scale: Array1<f64>,
}

impl Standardizer {
    pub fn fit(x: &Array2<f64>) -> Self {
        let mean = x
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(x.ncols()));
        let scale = x
            .std_axis(Axis(0), 0.0)
            .mapv(|s| if s > 1e-12 { s } else { 1.0 });
        Standardizer { mean, scale }
    }

    pub fn transform(&self, x: &Array2<f64>) -> Array2<f64> {
        (x - &self.mean) / &self.scale
    }
}

/// Stopping rule of the optimizer.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    pub max_iter: usize,
    /// Stop when the largest gradient component is below this.
    pub gradient_tolerance: f64,
    /// Or when an iteration lowers the objective by less than this, relatively.
    pub relative_decrease: f64,
    /// L-BFGS history length.
    pub memory: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            max_iter: 1000,
            gradient_tolerance: 1e-6,
            relative_decrease: 1e-10,
            memory: 10,
        }
    }
}

/// A fitted logistic regression.
#[derive(Debug, Clone)]
pub struct LogReg {
    pub classes: usize,
    /// [features, K] with K = 1 for two classes (the logit of class 1), else C.
    pub weights: Array2<f64>,
    pub bias: Array1<f64>,
    pub iterations: usize,
    pub converged: bool,
    pub objective: f64,
}

impl LogReg {
    /// Class probabilities [n, classes].
    pub fn predict_proba(&self, x: &Array2<f64>) -> Array2<f64> {
        let z = x.dot(&self.weights) + &self.bias;
        probabilities(&z, self.classes)
    }
}

fn probabilities(z: &Array2<f64>, classes: usize) -> Array2<f64> {
    let n = z.nrows();
    let mut p = Array2::zeros((n, classes));
    for i in 0..n {
        if classes == 2 {
            let p1 = sigmoid(z[[i, 0]]);
            p[[i, 0]] = 1.0 - p1;
            p[[i, 1]] = p1;
        } else {
            let row = z.row(i);
            let max = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            for c in 0..classes {
                p[[i, c]] = (row[c] - max).exp() / sum;
            }
        }
    }
    p
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// log(1 + e^z) without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// The objective and its gradient at `theta` = [W row-major (p × K), b (K)]:
/// mean cross-entropy + ‖W‖² / (2 C n).
struct Objective<'a> {
    x: &'a Array2<f64>,
    y: &'a [u32],
    classes: usize,
    k: usize,
    reg: f64,
}

impl Objective<'_> {
    fn eval(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (n, p, k) = (self.x.nrows(), self.x.ncols(), self.k);
        let w = ArrayView2::from_shape((p, k), &theta[..p * k]).expect("theta holds p*k weights");
        let b = &theta[p * k..];
        let mut z = self.x.dot(&w);
        for mut row in z.rows_mut() {
            for (v, bias) in row.iter_mut().zip(b) {
                *v += bias;
            }
        }
        // z becomes the residual (dLoss/dz) in place.
        let mut loss = 0.0;
        for (i, mut row) in z.rows_mut().into_iter().enumerate() {
            let y = self.y[i] as usize;
            if self.classes == 2 {
                let zi = row[0];
                let t = if y == 1 { 1.0 } else { 0.0 };
                loss += softplus(zi) - t * zi;
                row[0] = sigmoid(zi) - t;
            } else {
                let max = row.fold(f64::NEG_INFINITY, |a, &v| a.max(v));
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                loss += max + sum.ln() - row[y];
                for (c, v) in row.iter_mut().enumerate() {
                    *v = (*v - max).exp() / sum - if c == y { 1.0 } else { 0.0 };
                }
            }
        }
        let inv_n = 1.0 / n as f64;
        let gw = self.x.t().dot(&z);
        let mut penalty = 0.0;
        for (j, (g, &wv)) in grad[..p * k].iter_mut().zip(&theta[..p * k]).enumerate() {
            *g = gw[[j / k, j % k]] * inv_n + self.reg * wv;
            penalty += wv * wv;
        }
        for (c, g) in grad[p * k..].iter_mut().enumerate() {
            *g = z.column(c).sum() * inv_n;
        }
        loss * inv_n + 0.5 * self.reg * penalty
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fits on rows `x` with labels `y` in 0..classes. `c_reg` is scikit-learn's C.
pub fn fit_logreg(
    x: &Array2<f64>,
    y: &[u32],
    classes: usize,
    c_reg: f64,
    options: FitOptions,
) -> Result<LogReg> {
    if !(c_reg.is_finite() && c_reg > 0.0) {
        return Err(BaselineError::BadRegularization { c: c_reg });
    }
    let (n, p) = (x.nrows(), x.ncols());
    let k = if classes == 2 { 1 } else { classes };
    let objective = Objective {
        x,
        y,
        classes,
        k,
        reg: 1.0 / (c_reg * n.max(1) as f64),
    };
    let dim = (p + 1) * k;
    let mut theta = vec![0.0; dim];
    let mut grad = vec![0.0; dim];
    let mut f = objective.eval(&theta, &mut grad);
    let mut history: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new(); // (s, y, 1 / y·s)
    let mut converged = false;
    let mut iterations = 0;
    let mut trial = vec![0.0; dim];
    let mut trial_grad = vec![0.0; dim];
    while iterations < options.max_iter {
        if grad.iter().fold(0.0f64, |a, g| a.max(g.abs())) <= options.gradient_tolerance {
            converged = true;
            break;
        }
        iterations += 1;
        // Two-loop recursion: direction = −H g.
        let mut d: Vec<f64> = grad.iter().map(|g| -g).collect();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, yv, rho) in history.iter().rev() {
            let a = rho * dot(s, &d);
            for (di, yi) in d.iter_mut().zip(yv) {
                *di -= a * yi;
            }
            alphas.push(a);
        }
        let gamma = match history.last() {
            Some((s, yv, _)) => dot(s, yv) / dot(yv, yv),
            // First step: unit length.
            None => 1.0 / dot(&grad, &grad).sqrt().max(1e-300),
        };
        for v in d.iter_mut() {
            *v *= gamma;
        }
        for ((s, yv, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(yv, &d);
            for (di, si) in d.iter_mut().zip(s) {
                *di += (a - beta) * si;
            }
        }
        let mut slope = dot(&grad, &d);
        if slope >= 0.0 {
            // Not a descent direction (round-off): restart from steepest descent.
            history.clear();
            let norm = dot(&grad, &grad).sqrt().max(1e-300);
            d = grad.iter().map(|g| -g / norm).collect();
            slope = dot(&grad, &d);
        }
        // Armijo backtracking from the full step.
        let mut step = 1.0;
        let mut f_new = f;
        let mut accepted = false;
        for _ in 0..60 {
            for ((t, th), di) in trial.iter_mut().zip(&theta).zip(&d) {
                *t = th + step * di;
            }
            f_new = objective.eval(&trial, &mut trial_grad);
            if f_new.is_finite() && f_new <= f + 1e-4 * step * slope {
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            // No decrease possible at f64 precision: as converged as it gets.
            converged = true;
            break;
        }
        let s: Vec<f64> = trial.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = trial_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-12 * dot(&yv, &yv).sqrt() * dot(&s, &s).sqrt() {
            if history.len() == options.memory {
                history.remove(0);
            }
            history.push((s, yv, 1.0 / sy));
        }
        std::mem::swap(&mut theta, &mut trial);
        std::mem::swap(&mut grad, &mut trial_grad);
        let decrease = f - f_new;
        f = f_new;
        if decrease <= options.relative_decrease * f.abs().max(1.0) {
            converged = true;
            break;
        }
    }
    let weights =
        Array2::from_shape_vec((p, k), theta[..p * k].to_vec()).expect("theta holds p*k weights");
    let bias = Array1::from(theta[p * k..].to_vec());
    Ok(LogReg {
        classes,
        weights,
        bias,
        iterations,
        converged,
        objective: f,
    })
}

/// One fold of the baseline: its metrics and what they were computed from.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineFold {
    pub name: String,
    pub metrics: FoldMetrics,
    /// Test scan indices into the dataset, ascending.
    pub test: Vec<usize>,
    pub labels: Vec<u32>,
    /// Class probabilities of the test scans, row-major [test, classes].
    pub probabilities: Vec<f64>,
    pub classes: usize,
    pub iterations: usize,
    pub converged: bool,
    pub fit_seconds: f64,
}

/// FC + logistic regression on every fold (features computed once; the
/// standardization is fitted on each training fold only).
pub fn evaluate_baseline(
    dataset: &Dataset,
    folds: &[Fold],
    c_reg: f64,
) -> Result<Vec<BaselineFold>> {
    let features = fc_feature_matrix(dataset);
    evaluate_on_features(
        &features,
        &dataset.labels(),
        dataset.num_classes(),
        folds,
        c_reg,
    )
}

/// The baseline an experiment config asks for: `baseline.features` and
/// `baseline.c_reg`, on the given folds.
pub fn evaluate_configured(
    dataset: &Dataset,
    folds: &[Fold],
    config: &crate::config::BaselineConfig,
) -> Result<Vec<BaselineFold>> {
    let connectivity = Connectivity::compute(dataset, config.features)?;
    evaluate_connectivity(
        &connectivity,
        &dataset.labels(),
        dataset.num_classes(),
        folds,
        config.c_reg,
    )
}

/// `evaluate_baseline` on a precomputed feature matrix [scans, features].
pub fn evaluate_on_features(
    features: &Array2<f64>,
    labels: &[u32],
    classes: usize,
    folds: &[Fold],
    c_reg: f64,
) -> Result<Vec<BaselineFold>> {
    folds
        .iter()
        .map(|fold| evaluate_fold(features, labels, classes, fold, c_reg, Instant::now()))
        .collect()
}

/// Connectivity of any kind + logistic regression on every fold. For
/// `tangent` the reference mean is refitted on each fold's training scans.
pub fn evaluate_connectivity(
    connectivity: &Connectivity,
    labels: &[u32],
    classes: usize,
    folds: &[Fold],
    c_reg: f64,
) -> Result<Vec<BaselineFold>> {
    folds
        .iter()
        .map(|fold| {
            let started = Instant::now();
            check_fold(fold, connectivity.scans(), labels.len())?;
            let features = connectivity.for_fold(&fold.train)?;
            evaluate_fold(&features, labels, classes, fold, c_reg, started)
        })
        .collect()
}

/// Both sides of the fold non-empty, every index inside the dataset.
fn check_fold(fold: &Fold, rows: usize, labels: usize) -> Result<()> {
    for (side, indices) in [("training", &fold.train), ("test", &fold.test)] {
        if indices.is_empty() {
            return Err(BaselineError::EmptyFold {
                fold: fold.name.clone(),
                side,
            });
        }
        if let Some(&index) = indices.iter().find(|&&i| i >= rows || i >= labels) {
            return Err(BaselineError::BadIndex {
                fold: fold.name.clone(),
                index,
                scans: rows.min(labels),
            });
        }
    }
    Ok(())
}

/// One fold: standardize on its training rows, fit, score its test rows.
fn evaluate_fold(
    features: &Array2<f64>,
    labels: &[u32],
    classes: usize,
    fold: &Fold,
    c_reg: f64,
    started: Instant,
) -> Result<BaselineFold> {
    check_fold(fold, features.nrows(), labels.len())?;
    let train_x = features.select(Axis(0), &fold.train);
    let test_x = features.select(Axis(0), &fold.test);
    let scaler = Standardizer::fit(&train_x);
    let train_x = scaler.transform(&train_x);
    let test_x = scaler.transform(&test_x);
    let train_y: Vec<u32> = fold.train.iter().map(|&i| labels[i]).collect();
    let test_y: Vec<u32> = fold.test.iter().map(|&i| labels[i]).collect();
    let model = fit_logreg(&train_x, &train_y, classes, c_reg, FitOptions::default())?;
    let proba = model.predict_proba(&test_x);
    let probabilities: Vec<f64> = proba.iter().copied().collect();
    let scores = Scores::new(&probabilities, classes).map_err(|cause| BaselineError::Metrics {
        fold: fold.name.clone(),
        cause,
    })?;
    let metrics =
        FoldMetrics::compute(scores, &test_y).map_err(|cause| BaselineError::Metrics {
            fold: fold.name.clone(),
            cause,
        })?;
    log::info!(
        "fold {}: accuracy {:.1} %, AUC {:.1} %, {} L-BFGS iterations{}, {:.1} s",
        fold.name,
        100.0 * metrics.accuracy,
        100.0 * metrics.auc,
        model.iterations,
        if model.converged {
            ""
        } else {
            " (not converged)"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(BaselineFold {
        name: fold.name.clone(),
        metrics,
        test: fold.test.clone(),
        labels: test_y,
        probabilities,
        classes,
        iterations: model.iterations,
        converged: model.converged,
        fit_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Slices a feature row back into the N×N matrix it came from (for plots of
/// weights by region); the diagonal is 0.
pub fn upper_triangle_to_matrix(values: &[f64], regions: usize) -> Array2<f64> {
    let mut m = Array2::zeros((regions, regions));
    let mut it = values.iter();
    for i in 0..regions {
        for j in i + 1..regions {
            let v = it.next().copied().unwrap_or(0.0);
            m[[i, j]] = v;
            m[[j, i]] = v;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::split::stratified_subject_kfold;
    use crate::data::synth::{generate, SynthConfig};
    use crate::train::metrics::Summary;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn synthetic(scans: usize, classes: usize, difficulty: f64, seed: u64) -> Dataset {
        let config = SynthConfig {
            scans,
            regions: 16,
            length: 96,
            classes,
            seed,
            difficulty,
        };
        let (arrays, labels) = generate(&config);
        let names = (0..classes).map(|c| format!("class{c}")).collect();
        Dataset::from_arrays(arrays, labels, names, 64).unwrap()
    }

    fn cv(dataset: &Dataset, labels: &[u32]) -> Summary {
        let folds = stratified_subject_kfold(labels, &dataset.subjects(), 5, 1).unwrap();
        let features = fc_feature_matrix(dataset);
        let result =
            evaluate_on_features(&features, labels, dataset.num_classes(), &folds, 1.0).unwrap();
        assert!(result.iter().all(|f| f.converged));
        let metrics: Vec<FoldMetrics> = result.iter().map(|f| f.metrics).collect();
        Summary::from_folds(&metrics).unwrap()
    }

    #[test]
    fn features_are_fisher_z_of_pearson() {
        let data = ndarray::arr2(&[
            [1.0f32, 2.0, 3.0, 4.0],
            [2.0, 4.0, 6.0, 8.1],
            [4.0, 3.0, 2.0, 1.0],
            [5.0, 5.0, 5.0, 5.0],
        ]);
        let f = fc_features(data.view());
        assert_eq!(f.len(), 6);
        // Region 0 vs 2: r = −1 (clipped); vs 3 (constant): 0.
        assert!(f[1] < -8.0 && f[1].is_finite());
        assert_eq!(f[2], 0.0);
        let r01: f64 = {
            let a = [1.0, 2.0, 3.0, 4.0f64];
            let b = [2.0, 4.0, 6.0, f64::from(8.1f32)];
            let (ma, mb) = (2.5, b.iter().sum::<f64>() / 4.0);
            let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
            let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
            let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
            cov / (va * vb).sqrt()
        };
        assert!((f[0] - r01.atanh()).abs() < 1e-9);
        let m = upper_triangle_to_matrix(&f, 4);
        assert_eq!(m[[2, 0]], f[1]);
        assert_eq!(m[[3, 3]], 0.0);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        use rand::Rng;
        for classes in [2usize, 3] {
            let x = Array2::from_shape_fn((7, 4), |_| rng.gen_range(-1.0..1.0));
            let y: Vec<u32> = (0..7).map(|i| (i % classes) as u32).collect();
            let k = if classes == 2 { 1 } else { classes };
            let obj = Objective {
                x: &x,
                y: &y,
                classes,
                k,
                reg: 0.3,
            };
            let theta: Vec<f64> = (0..5 * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut g = vec![0.0; theta.len()];
            obj.eval(&theta, &mut g);
            let mut scratch = vec![0.0; theta.len()];
            for j in 0..theta.len() {
                let h = 1e-6;
                let mut plus = theta.clone();
                plus[j] += h;
                let mut minus = theta.clone();
                minus[j] -= h;
                let numeric =
                    (obj.eval(&plus, &mut scratch) - obj.eval(&minus, &mut scratch)) / (2.0 * h);
                // Central differences in f64 with h = 1e-6: error ~1e-9.
                assert!(
                    (numeric - g[j]).abs() < 1e-7,
                    "classes {classes}, {j}: {numeric} vs {}",
                    g[j]
                );
            }
        }
    }

    #[test]
    fn fit_reaches_the_optimum() {
        // At the optimum the gradient vanishes: a tiny problem must converge.
        let x = ndarray::arr2(&[[0.0], [1.0], [2.0], [3.0], [1.5], [2.5]]);
        let y = [0, 0, 1, 1, 1, 0];
        let m = fit_logreg(&x, &y, 2, 10.0, FitOptions::default()).unwrap();
        assert!(
            m.converged && m.iterations < 100,
            "{} iterations",
            m.iterations
        );
        let p = m.predict_proba(&x);
        assert!(p[[0, 0]] > 0.5 && p[[3, 1]] > 0.5);
        assert!(matches!(
            fit_logreg(&x, &y, 2, 0.0, FitOptions::default()),
            Err(BaselineError::BadRegularization { .. })
        ));
    }

    #[test]
    fn beats_eighty_percent_on_planted_data() {
        let dataset = synthetic(120, 2, 0.1, 5);
        let s = cv(&dataset, &dataset.labels());
        assert!(s.accuracy.mean > 80.0, "accuracy {}", s.accuracy.paper());
        assert!(s.auc.mean > 85.0, "auc {}", s.auc.paper());
        let three = synthetic(150, 3, 0.1, 6);
        let s = cv(&three, &three.labels());
        assert!(
            s.accuracy.mean > 60.0,
            "3 classes: accuracy {}",
            s.accuracy.paper()
        );
    }

    #[test]
    fn every_feature_kind_decodes_planted_data_and_not_shuffled_labels() {
        let dataset = synthetic(120, 2, 0.1, 5);
        let labels = dataset.labels();
        let folds = stratified_subject_kfold(&labels, &dataset.subjects(), 5, 1).unwrap();
        let mut shuffled = labels.clone();
        shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(11));
        let shuffled_folds =
            stratified_subject_kfold(&shuffled, &dataset.subjects(), 5, 1).unwrap();
        for kind in FeatureKind::ALL {
            let connectivity = Connectivity::compute(&dataset, kind).unwrap();
            let summary = |labels: &[u32], folds: &[Fold]| {
                let result = evaluate_connectivity(&connectivity, labels, 2, folds, 1.0).unwrap();
                assert!(result.iter().all(|f| f.converged), "{kind}");
                let metrics: Vec<FoldMetrics> = result.iter().map(|f| f.metrics).collect();
                Summary::from_folds(&metrics).unwrap()
            };
            let s = summary(&labels, &folds);
            assert!(
                s.accuracy.mean > 80.0,
                "{kind}: accuracy {}",
                s.accuracy.paper()
            );
            let s = summary(&shuffled, &shuffled_folds);
            assert!(
                (s.accuracy.mean - 50.0).abs() < 15.0,
                "{kind}, shuffled: accuracy {}",
                s.accuracy.paper()
            );
        }
        // Pearson through the new path is the old path, number for number.
        let connectivity = Connectivity::compute(&dataset, FeatureKind::Pearson).unwrap();
        let old =
            evaluate_on_features(&fc_feature_matrix(&dataset), &labels, 2, &folds, 1.0).unwrap();
        let new = evaluate_connectivity(&connectivity, &labels, 2, &folds, 1.0).unwrap();
        for (a, b) in old.iter().zip(&new) {
            assert_eq!(a.probabilities, b.probabilities);
        }
    }

    #[test]
    fn baseline_features_key_acts_and_rejects_unknown_kinds() {
        use crate::config::Config;
        use std::path::Path;
        let origin = Path::new("e.toml");
        assert_eq!(Config::default().baseline.features, FeatureKind::Pearson);
        let config = Config::from_toml_str("[baseline]\nfeatures = \"tangent\"\n", origin).unwrap();
        assert_eq!(config.baseline.features, FeatureKind::Tangent);
        let mut config = Config::default();
        config
            .apply_assignment("baseline.features=partial")
            .unwrap();
        assert_eq!(config.baseline.features, FeatureKind::Partial);
        let error = config
            .apply_assignment("baseline.features=cosine")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                "unknown variant `cosine`, expected one of `pearson`, `partial`, `tangent`"
            ),
            "{error}"
        );
        assert_eq!(
            config.baseline.features,
            FeatureKind::Partial,
            "a refused value changes nothing"
        );
        // The key acts: the configured baseline is the chosen kind's.
        let dataset = synthetic(40, 2, 0.1, 5);
        let folds = stratified_subject_kfold(&dataset.labels(), &dataset.subjects(), 2, 1).unwrap();
        let mut chosen = Config::default().baseline;
        let pearson = evaluate_configured(&dataset, &folds, &chosen).unwrap();
        let old = evaluate_baseline(&dataset, &folds, chosen.c_reg).unwrap();
        assert_eq!(pearson[0].probabilities, old[0].probabilities);
        chosen.features = FeatureKind::Tangent;
        let tangent = evaluate_configured(&dataset, &folds, &chosen).unwrap();
        let connectivity = Connectivity::compute(&dataset, FeatureKind::Tangent).unwrap();
        let direct =
            evaluate_connectivity(&connectivity, &dataset.labels(), 2, &folds, 1.0).unwrap();
        assert_eq!(tangent[0].probabilities, direct[0].probabilities);
        assert_ne!(tangent[0].probabilities, pearson[0].probabilities);
    }

    #[test]
    fn shuffled_labels_are_near_chance() {
        let dataset = synthetic(160, 2, 0.1, 5);
        let mut labels = dataset.labels();
        labels.shuffle(&mut ChaCha8Rng::seed_from_u64(11));
        let s = cv(&dataset, &labels);
        // 160 scans: one standard error of a chance accuracy is about 4 points.
        assert!(
            (s.accuracy.mean - 50.0).abs() < 12.0,
            "accuracy {}",
            s.accuracy.paper()
        );
        assert!((s.auc.mean - 50.0).abs() < 12.0, "auc {}", s.auc.paper());
    }

    #[test]
    fn bad_folds_are_errors() {
        let dataset = synthetic(20, 2, 0.1, 5);
        let features = fc_feature_matrix(&dataset);
        let labels = dataset.labels();
        let empty = Fold {
            name: "x".into(),
            train: vec![],
            test: vec![0, 1],
        };
        let e = evaluate_on_features(&features, &labels, 2, &[empty], 1.0).unwrap_err();
        assert_eq!(e.to_string(), "fold x: its training set is empty");
        let one_class_test: Vec<usize> = (0..20).filter(|&i| labels[i] == 0).take(3).collect();
        let fold = Fold {
            name: "y".into(),
            train: (0..20).filter(|i| !one_class_test.contains(i)).collect(),
            test: one_class_test,
        };
        let e = evaluate_on_features(&features, &labels, 2, &[fold], 1.0).unwrap_err();
        assert!(
            e.to_string().starts_with("fold y: ROC AUC is undefined"),
            "{e}"
        );
    }
}
