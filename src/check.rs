//! Support for GPU-vs-reference tests: named tolerances, poisoned outputs,
//! seeded random inputs, and central finite differences.
//!
//! Public (not `cfg(test)`) so integration tests and benches use the same
//! definitions as the unit tests.

use rand::{Rng, SeedableRng};

use crate::gpu::{Gpu, Tensor};

/// How close an f32 GPU result must be to its f64 reference, as burn's
/// `Tolerance`: an element passes when
/// `|got - want| <= max(relative * |want|, absolute)`, so `relative` governs
/// large values and `absolute` values near zero. NaN never passes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub relative: f64,
    pub absolute: f64,
}

impl Tolerance {
    /// One or two roundings per element: add, mul, ReLU, tanh, exp.
    pub const ELEMENTWISE: Tolerance = Tolerance::both(1e-5);
    /// Sums of up to a few thousand products (matmul, reductions, softmax,
    /// convolution): rounding grows with the length of the sum.
    pub const ACCUMULATION: Tolerance = Tolerance::both(1e-4);
    /// Chains of accumulations and divisions (correlations, standardization,
    /// the loss and its gradient, matrix inversion).
    pub const COMPOSITE: Tolerance = Tolerance::both(1e-3);

    /// The spellings from when the presets were an enum, kept so callers
    /// outside `src/ops` compile unchanged; new code uses the upper-case ones.
    #[allow(non_upper_case_globals)]
    pub const Elementwise: Tolerance = Tolerance::ELEMENTWISE;
    #[allow(non_upper_case_globals)]
    pub const Accumulation: Tolerance = Tolerance::ACCUMULATION;
    #[allow(non_upper_case_globals)]
    pub const Composite: Tolerance = Tolerance::COMPOSITE;

    /// The same bound relative to large values and absolute near zero:
    /// `|got - want| <= tol * max(1, |want|)`.
    pub const fn both(tol: f64) -> Tolerance {
        Tolerance {
            relative: tol,
            absolute: tol,
        }
    }

    /// Whether `got` is close enough to `want`.
    pub fn accepts(self, got: f64, want: f64) -> bool {
        // Written so that NaN in either fails the comparison.
        (got - want).abs() <= (self.relative * want.abs()).max(self.absolute)
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

/// A device of its own whose launches are planned for storage bindings of at
/// most `bytes`, with poisoned new tensors: the one way tests reach the split
/// paths of the binding planner on small tensors, without disturbing the
/// shared device other tests use concurrently. One device per limit, opened
/// on first use and kept for the process.
pub fn gpu_with_binding_limit(bytes: u64) -> &'static Gpu {
    test_device(Some(bytes), None)
}

/// A device of its own whose matrix products use `tiling` whatever the
/// adapter type (and whatever `STPTF_TILING` says), with poisoned new
/// tensors: how CI runs the GPU variants' tests on lavapipe.
pub fn gpu_with_tiling(tiling: crate::gpu::Tiling) -> &'static Gpu {
    test_device(None, Some(tiling))
}

/// Both: a binding limit (`None`: the device's own) and a tiling (`None`:
/// the adapter's choice). One device per combination, opened on first use
/// and kept for the process.
pub fn test_device(bytes: Option<u64>, tiling: Option<crate::gpu::Tiling>) -> &'static Gpu {
    type Key = (Option<u64>, Option<crate::gpu::Tiling>);
    static DEVICES: std::sync::Mutex<Vec<(Key, &'static Gpu)>> = std::sync::Mutex::new(Vec::new());
    let mut devices = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&(_, gpu)) = devices.iter().find(|(k, _)| *k == (bytes, tiling)) {
        return gpu;
    }
    let opened = match bytes {
        Some(b) => Gpu::with_binding_limit(b),
        None => Gpu::new(),
    };
    let mut gpu = match opened {
        Ok(gpu) => gpu,
        Err(e) => panic!("GPU tests need an adapter and none could be opened: {e}"),
    };
    if let Some(t) = tiling {
        gpu = gpu.tiled(t);
    }
    let gpu: &'static Gpu = Box::leak(Box::new(gpu));
    if let Some(b) = bytes {
        assert_eq!(
            gpu.max_binding_bytes(),
            b,
            "the device's own binding limit is below the requested test limit"
        );
    }
    if let Some(t) = tiling {
        assert_eq!(gpu.tiling(), t);
    }
    gpu.set_poison_new_tensors(true);
    devices.push(((bytes, tiling), gpu));
    gpu
}

/// The grids of the dispatches of `kernel` (`shader::entry`) in a trace from
/// [`Gpu::traced`], in order: how a test asserts which launch path ran.
pub fn dispatches(trace: &[crate::gpu::Recorded], kernel: &str) -> Vec<[u32; 3]> {
    trace
        .iter()
        .filter_map(|r| match r {
            crate::gpu::Recorded::Dispatch { kernel: k, groups } if k == kernel => Some(*groups),
            _ => None,
        })
        .collect()
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
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !tol.accepts(g as f64, w) {
            panic!(
                "{what}: element {i} is {g}, reference {w} (error {:.3e}, allowed {:.0e} relative / {:.0e} absolute); first values {:?}",
                (g as f64 - w).abs(),
                tol.relative,
                tol.absolute,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_values_pass_and_the_bound_is_relative_above_one() {
        let t = Tolerance::ACCUMULATION;
        assert_close(&[1.0, 1000.05, 0.0], &[1.0, 1000.0, 5e-5], t, "ok");
        assert!(t.accepts(2000.0, 2000.15));
        assert!(!t.accepts(2000.0, 2000.25));
        // Near zero the absolute part governs.
        assert!(t.accepts(0.0, 9e-5));
        assert!(!t.accepts(0.0, 1.1e-4));
        let split = Tolerance {
            relative: 1e-2,
            absolute: 1e-6,
        };
        assert!(split.accepts(100.9, 100.0));
        assert!(!split.accepts(1e-5, 0.0));
    }

    #[test]
    fn the_old_preset_names_are_the_new_presets() {
        assert_eq!(Tolerance::Elementwise, Tolerance::ELEMENTWISE);
        assert_eq!(Tolerance::Accumulation, Tolerance::ACCUMULATION);
        assert_eq!(Tolerance::Composite, Tolerance::COMPOSITE);
        // The bound the enum had: tol * max(1, |want|).
        assert!(Tolerance::COMPOSITE.accepts(10.0, 10.0099));
        assert!(!Tolerance::COMPOSITE.accepts(10.0, 10.0101));
    }

    #[test]
    #[should_panic(expected = "element 1 is 1.001")]
    fn a_value_outside_the_tolerance_fails() {
        assert_close(&[1.0, 1.001], &[1.0, 1.0], Tolerance::ACCUMULATION, "x");
    }

    #[test]
    #[should_panic(expected = "element 0 is NaN")]
    fn nan_fails() {
        assert_close(&[f32::NAN], &[0.0], Tolerance::COMPOSITE, "x");
    }

    #[test]
    #[should_panic(expected = "reference NaN")]
    fn a_nan_reference_fails() {
        assert_close(&[0.0], &[f64::NAN], Tolerance::COMPOSITE, "x");
    }

    #[test]
    #[should_panic(expected = "x: length")]
    fn a_length_mismatch_fails() {
        assert_close(&[0.0, 1.0], &[0.0], Tolerance::COMPOSITE, "x");
    }

    #[test]
    #[should_panic(expected = "gradient element 0")]
    fn a_wrong_gradient_fails() {
        assert_gradient(&[1.0], &[1.1], "g");
    }
}
