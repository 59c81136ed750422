//! Support for GPU-vs-reference tests: named tolerances, poisoned outputs,
//! seeded random inputs, and central finite differences.
//!
//! Public (not `cfg(test)`) so integration tests and benches use the same
//! definitions as the unit tests.

use rand::{Rng, SeedableRng};

use crate::gpu::{Gpu, Tensor};

/// How close an f32 GPU result must be to the f64 reference, relative to the
/// reference's magnitude: |gpu - ref| <= tol * max(1, |ref|).
#[derive(Clone, Copy, Debug)]
pub enum Tolerance {
    /// One or two roundings per element: add, mul, ReLU, tanh, exp.
    Elementwise,
    /// Sums of up to a few thousand products (matmul, reductions, softmax,
    /// convolution): rounding grows with the length of the sum.
    Accumulation,
    /// Chains of accumulations and divisions (correlations, standardization,
    /// the loss and its gradient, matrix inversion).
    Composite,
}

impl Tolerance {
    pub fn value(self) -> f64 {
        match self {
            Tolerance::Elementwise => 1e-5,
            Tolerance::Accumulation => 1e-4,
            Tolerance::Composite => 1e-3,
        }
    }
}

/// The shared device for tests. A missing adapter is a failure, never a skip:
/// CI has lavapipe, so no adapter means the machine is misconfigured.
pub fn gpu() -> &'static Gpu {
    match Gpu::shared() {
        Ok(gpu) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                gpu.set_poison_new_tensors(true);
                // Straight to the process's stderr, not `eprintln!`: the
                // test harness captures the print macros of passing tests,
                // and CI's log must show which adapter the GPU tests used.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "GPU tests run on: {} ({:?}, {:?}, driver {} {})",
                    gpu.report.info.name,
                    gpu.report.info.backend,
                    gpu.report.info.device_type,
                    gpu.report.info.driver,
                    gpu.report.info.driver_info
                );
            });
            gpu
        }
        Err(e) => panic!("GPU tests need an adapter and none could be opened: {e}"),
    }
}

/// A tensor filled with NaN, so an element a kernel forgets to write fails the comparison.
pub fn poisoned(gpu: &Gpu, shape: &[usize]) -> Tensor {
    gpu.full(shape, f32::NAN).expect("fill kernel")
}

/// Uniform values in [-1, 1) from a seed.
pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts every element is within `tol` of the reference; NaN fails.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f64], tol: Tolerance, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let t = tol.value();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1.0);
        if !(err <= t) {
            panic!(
                "{what}: element {i} is {g}, reference {w} (relative error {err:.3e} > {t:.0e}, {tol:?}); first values {:?}",
                &got[..got.len().min(6)]
            );
        }
    }
}

/// Central finite-difference gradient of a scalar function, step 1e-6.
pub fn finite_difference(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let up = f(&xp);
            xp[i] = orig - h;
            let down = f(&xp);
            xp[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Asserts an analytic f64 gradient matches finite differences.
#[track_caller]
pub fn assert_gradient(analytic: &[f64], numeric: &[f64], what: &str) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: length");
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!(
            (a - n).abs() <= 1e-5 * (1.0 + n.abs()),
            "{what}: gradient element {i}: analytic {a}, finite difference {n}"
        );
    }
}
