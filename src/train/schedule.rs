//! The learning rate as a pure function of the optimizer step: a linear
//! warm-up from lr / warmup_steps to lr, then a cosine decay that reaches
//! lr_min exactly at the last step. Pure, so a resumed run gets the same rate
//! at the same step without any saved scheduler state.

/// Steps are counted from 0; `total_steps` is the number of optimizer steps of
/// the whole phase (epochs x batches per epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub lr: f64,
    pub lr_min: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// `warmup_fraction` of all steps (rounded, at most all of them) warm up.
    pub fn new(lr: f64, lr_min: f64, warmup_fraction: f64, total_steps: u64) -> Self {
        let warmup = (warmup_fraction.clamp(0.0, 1.0) * total_steps as f64).round() as u64;
        Schedule {
            lr,
            lr_min,
            warmup_steps: warmup.min(total_steps),
            total_steps,
        }
    }

    /// From a phase's epochs and its batches per epoch.
    pub fn from_epochs(
        lr: f64,
        lr_min: f64,
        warmup_fraction: f64,
        epochs: u64,
        steps_per_epoch: u64,
    ) -> Self {
        Self::new(
            lr,
            lr_min,
            warmup_fraction,
            epochs.saturating_mul(steps_per_epoch),
        )
    }

    /// The rate for optimizer step `step`.
    ///
    /// - warm-up, step s < W: lr (s + 1) / W, so the first step is small but
    ///   not zero (a zero step would be wasted) and step W - 1 reaches lr;
    /// - decay, W <= s < total: lr_min + (lr - lr_min)(1 + cos(pi q)) / 2 with
    ///   q = (s - W) / (total - 1 - W), so step W is at lr and the last step at
    ///   lr_min. A decay phase of a single step has nothing to decay over and
    ///   runs at lr;
    /// - past the end: lr_min.
    pub fn at(&self, step: u64) -> f64 {
        let Schedule {
            lr,
            lr_min,
            warmup_steps: w,
            total_steps: total,
        } = *self;
        if step < w {
            return lr * (step + 1) as f64 / w as f64;
        }
        if step >= total {
            return lr_min;
        }
        let decay_span = total - 1 - w;
        if decay_span == 0 {
            return lr;
        }
        let q = (step - w) as f64 / decay_span as f64;
        lr_min + 0.5 * (lr - lr_min) * (1.0 + (std::f64::consts::PI * q).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact up to a few ulps of 1e-3: the formulas are closed forms.
    const TIGHT: f64 = 1e-15;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= TIGHT
    }

    #[test]
    fn corners() {
        let s = Schedule::new(1e-3, 1e-5, 0.1, 101);
        assert_eq!(s.warmup_steps, 10);
        // Step 0: lr / W, small but not zero.
        assert!(close(s.at(0), 1e-4));
        // End of warm-up: the peak, and the first decay step is the peak too.
        assert!(close(s.at(9), 1e-3));
        assert!(close(s.at(10), 1e-3));
        // Midpoint of the decay: halfway between lr and lr_min.
        assert!(close(s.at(10 + 45), (1e-3 + 1e-5) / 2.0));
        // Last step: lr_min exactly; past the end stays there.
        assert!(close(s.at(100), 1e-5));
        assert!(close(s.at(1000), 1e-5));
        // Monotone: up during warm-up, down after.
        for step in 0..9 {
            assert!(s.at(step) < s.at(step + 1));
        }
        for step in 10..100 {
            assert!(s.at(step) > s.at(step + 1));
        }
    }

    #[test]
    fn zero_warmup_starts_at_the_peak() {
        let s = Schedule::new(0.1, 0.0, 0.0, 11);
        assert_eq!(s.warmup_steps, 0);
        assert!(close(s.at(0), 0.1));
        assert!(close(s.at(5), 0.05));
        assert!(close(s.at(10), 0.0));
    }

    #[test]
    fn one_total_step_runs_at_the_peak() {
        for fraction in [0.0, 0.1, 1.0] {
            let s = Schedule::new(0.1, 0.01, fraction, 1);
            assert!(close(s.at(0), 0.1), "warmup fraction {fraction}");
            assert!(close(s.at(1), 0.01));
        }
    }

    #[test]
    fn two_steps_go_from_peak_to_floor() {
        let s = Schedule::new(0.1, 0.01, 0.0, 2);
        assert!(close(s.at(0), 0.1));
        assert!(close(s.at(1), 0.01));
    }

    #[test]
    fn all_warmup_ends_at_the_peak() {
        let s = Schedule::new(0.1, 0.0, 1.0, 4);
        let rates: Vec<f64> = (0..4).map(|i| s.at(i)).collect();
        for (got, want) in rates.iter().zip([0.025, 0.05, 0.075, 0.1]) {
            assert!(close(*got, want), "{rates:?}");
        }
    }

    #[test]
    fn zero_total_steps_does_not_divide_by_zero() {
        let s = Schedule::from_epochs(0.1, 0.01, 0.1, 0, 10);
        assert_eq!(s.total_steps, 0);
        assert!(s.at(0).is_finite());
    }
}
