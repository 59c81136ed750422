//! In-place AdamW update on the GPU (`shaders/adamw.wgsl`), the PyTorch
//! formula with decoupled weight decay:
//! p ← p − lr·(m̂/(√v̂ + ε) + wd·p), m̂ = m/(1−β1^t), v̂ = v/(1−β2^t).
//!
//! Parameters larger than one storage binding are updated in ranges exactly
//! like `elementwise::run` (all four tensors split at the same offsets).

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("adamw");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    step: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    inv_bc1: f32,
    inv_sqrt_bc2: f32,
}

/// AdamW hyperparameters. `lr` changes per step under a schedule; it is
/// passed with every update, so nothing is recompiled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    /// docs/design.md §3: β = (0.9, 0.999), weight decay 1e-4; PyTorch's ε.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// One AdamW step `t` (1-based, as in PyTorch) on `param` in place, updating
/// the moment estimates `m` and `v` in place. All four tensors must have the
/// same length; `m` and `v` start at zero. `t = 0` is rejected (the bias
/// correction would divide by zero).
pub fn adamw_step(
    gpu: &Gpu,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    hp: &AdamW,
    t: u32,
) -> Result<()> {
    let n = param.len();
    if grad.len() != n || m.len() != n || v.len() != n {
        return Err(GpuError::Shape {
            op: "adamw",
            message: format!(
                "param {:?}, grad {:?}, m {:?}, v {:?} must have the same length",
                param.shape(),
                grad.shape(),
                m.shape(),
                v.shape()
            ),
        });
    }
    if t == 0 {
        return Err(GpuError::Shape {
            op: "adamw",
            message: "step t must be at least 1".into(),
        });
    }
    let bc1 = 1.0 - (hp.beta1 as f64).powi(t as i32);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(t as i32);
    let base = Params {
        n: 0,
        step: t,
        lr: hp.lr,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        weight_decay: hp.weight_decay,
        inv_bc1: (1.0 / bc1) as f32,
        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
    };
    let kernel = SHADER.kernel("step");
    for r in gpu.planner("adamw").flat(n, 1)? {
        let (start, len) = (r.start, r.len());
        gpu.launch_threads(
            kernel,
            &[
                (0, param.range(start, len)),
                (1, grad.range(start, len)),
                (2, m.range(start, len)),
                (3, v.range(start, len)),
            ],
            &Params {
                n: len as u32,
                ..base
            },
            len as u64,
        )?;
    }
    Ok(())
}

/// f64 CPU reference: PyTorch's `torch.optim.AdamW` (no amsgrad, no
/// maximize) step `t`, in place.
pub mod reference {
    use super::AdamW;

    pub fn adamw_step(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], hp: &AdamW, t: u32) {
        let (lr, b1, b2) = (hp.lr as f64, hp.beta1 as f64, hp.beta2 as f64);
        let (eps, wd) = (hp.eps as f64, hp.weight_decay as f64);
        let bc1 = 1.0 - b1.powi(t as i32);
        let bc2 = 1.0 - b2.powi(t as i32);
        for i in 0..p.len() {
            // PyTorch order: decay the parameter, then the Adam step.
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let denom = (v[i] / bc2).sqrt() + eps;
            p[i] -= lr / bc1 * m[i] / denom;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, gpu, random_vec, to_f64, Tolerance};

    /// Runs `steps` steps on the GPU and the reference with fresh gradients
    /// each step and compares parameters and moments after every step.
    fn run_steps(gpu: &Gpu, n: usize, hp: AdamW, steps: u32, seed: u64) {
        let pv = random_vec(n, seed);
        let param = gpu.upload(&pv, &[n]).unwrap();
        let m = gpu.zeros(&[n]).unwrap();
        let v = gpu.zeros(&[n]).unwrap();
        let mut p64 = to_f64(&pv);
        let mut m64 = vec![0.0; n];
        let mut v64 = vec![0.0; n];
        for t in 1..=steps {
            // Gradients of mixed scale, including exact zeros.
            let gv: Vec<f32> = random_vec(n, seed + 100 + t as u64)
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    if i % 17 == 3 {
                        0.0
                    } else {
                        g * 10f32.powi(i as i32 % 5 - 2)
                    }
                })
                .collect();
            let grad = gpu.upload(&gv, &[n]).unwrap();
            adamw_step(gpu, &param, &grad, &m, &v, &hp, t).unwrap();
            reference::adamw_step(&mut p64, &to_f64(&gv), &mut m64, &mut v64, &hp, t);
            let what = format!("AdamW n={n} step {t}");
            assert_close(
                &gpu.read(&param).unwrap(),
                &p64,
                Tolerance::ELEMENTWISE,
                &what,
            );
            assert_close(
                &gpu.read(&m).unwrap(),
                &m64,
                Tolerance::ELEMENTWISE,
                &format!("{what}: m"),
            );
            assert_close(
                &gpu.read(&v).unwrap(),
                &v64,
                Tolerance::ELEMENTWISE,
                &format!("{what}: v"),
            );
        }
    }

    #[test]
    fn several_steps_match_pytorch_formula() {
        let gpu = gpu();
        let hp = AdamW {
            lr: 1e-2,
            weight_decay: 0.05,
            ..AdamW::default()
        };
        for (i, n) in [1usize, 7, 257, 5000].into_iter().enumerate() {
            run_steps(gpu, n, hp, 5, 40 + i as u64);
        }
    }

    #[test]
    fn split_launches_match_reference() {
        // 1000 values under a 256-value binding: four ranges at aligned offsets.
        let gpu = crate::check::gpu_with_binding_limit(1024);
        let ((), trace) = gpu.traced(|| run_steps(gpu, 1000, AdamW::default(), 3, 9));
        assert_eq!(
            crate::check::dispatches(&trace, "adamw::step").len(),
            4 * 3,
            "four launches per step"
        );
    }

    #[test]
    fn first_step_moves_each_parameter_by_about_lr() {
        // At t = 1, m̂/√v̂ = sign(g): a known answer independent of the reference.
        let gpu = gpu();
        let hp = AdamW {
            lr: 0.1,
            weight_decay: 0.0,
            ..AdamW::default()
        };
        let param = gpu.upload(&[1.0, 1.0, 1.0], &[3]).unwrap();
        let grad = gpu.upload(&[3.0, -0.02, 0.0], &[3]).unwrap();
        let m = gpu.zeros(&[3]).unwrap();
        let v = gpu.zeros(&[3]).unwrap();
        adamw_step(gpu, &param, &grad, &m, &v, &hp, 1).unwrap();
        let p = gpu.read(&param).unwrap();
        assert!(
            (p[0] - 0.9).abs() < 1e-5 && (p[1] - 1.1).abs() < 1e-5 && p[2] == 1.0,
            "{p:?}"
        );
    }

    #[test]
    fn errors_on_bad_arguments() {
        let gpu = gpu();
        let a = gpu.zeros(&[4]).unwrap();
        let b = gpu.zeros(&[5]).unwrap();
        let hp = AdamW::default();
        let e = adamw_step(gpu, &a, &b, &a, &a, &hp, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("adamw"), "{e}");
        assert!(adamw_step(gpu, &a, &a, &a, &a, &hp, 0).is_err());
    }
}
