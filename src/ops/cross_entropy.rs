//! Softmax cross-entropy with integer labels (`shaders/cross_entropy.wgsl`),
//! the fine-tuning loss.
//!
//! `logits` is [B, C]; `labels` is [B] and holds each row's class index as an
//! f32 (the runtime only has f32 tensors; indices up to 2^24 are exact). The
//! forward gives the mean loss over the batch as a one-element tensor; the
//! backward gives dlogits = up · (softmax − onehot) / B, with the upstream
//! gradient `up` read from a one-element tensor on the GPU, so the loss
//! composes inside one recorded step without a readback. A label that is not
//! an integer in [0, C) makes the loss (and that row's gradient) NaN.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("cross_entropy");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    classes: u32,
    nan: f32,
    _pad: u32,
}

fn check(op: &'static str, logits: &Tensor, labels: &Tensor) -> Result<Params> {
    let s = logits.shape();
    if s.len() != 2 || s[0] == 0 || s[1] == 0 || labels.len() != s[0] {
        return Err(GpuError::Shape {
            op,
            message: format!(
                "logits {s:?} must be [B, C] with B, C > 0 and labels [B], got labels {:?}",
                labels.shape()
            ),
        });
    }
    Ok(Params {
        batch: s[0] as u32,
        classes: s[1] as u32,
        nan: f32::NAN,
        _pad: 0,
    })
}

/// Mean cross-entropy over the batch, as a tensor of shape [1].
pub fn cross_entropy(gpu: &Gpu, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let p = check("cross_entropy", logits, labels)?;
    let loss = gpu.empty(&[1]);
    gpu.launch(
        SHADER.kernel("forward"),
        &[(0, logits.arg()), (1, labels.arg()), (3, loss.arg())],
        &p,
        [1, 1, 1],
    )?;
    Ok(loss)
}

/// dlogits = up[0] · (softmax(logits) − onehot(labels)) / B.
pub fn cross_entropy_backward(
    gpu: &Gpu,
    logits: &Tensor,
    labels: &Tensor,
    up: &Tensor,
) -> Result<Tensor> {
    let p = check("cross_entropy_backward", logits, labels)?;
    if up.len() != 1 {
        return Err(GpuError::Shape {
            op: "cross_entropy_backward",
            message: format!("upstream gradient {:?} must hold one value", up.shape()),
        });
    }
    let d = gpu.empty(logits.shape());
    gpu.launch_threads(
        SHADER.kernel("backward"),
        &[
            (0, logits.arg()),
            (1, labels.arg()),
            (2, up.arg()),
            (3, d.arg()),
        ],
        &p,
        p.batch as u64,
    )?;
    Ok(d)
}

/// f64 CPU references; `logits` row-major [B, C].
pub mod reference {
    pub fn cross_entropy(logits: &[f64], labels: &[usize], classes: usize) -> f64 {
        let b = labels.len();
        logits
            .chunks(classes)
            .zip(labels)
            .map(|(row, &y)| {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                lse - row[y]
            })
            .sum::<f64>()
            / b as f64
    }

    pub fn cross_entropy_backward(
        logits: &[f64],
        labels: &[usize],
        classes: usize,
        up: f64,
    ) -> Vec<f64> {
        let b = labels.len() as f64;
        let mut d = Vec::with_capacity(logits.len());
        for (row, &y) in logits.chunks(classes).zip(labels) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for (c, v) in row.iter().enumerate() {
                let onehot = if c == y { 1.0 } else { 0.0 };
                d.push(up * ((v - m).exp() / s - onehot) / b);
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, finite_difference, gpu, random_vec, to_f64, Tolerance,
    };

    fn labels(b: usize, c: usize, seed: u64) -> Vec<usize> {
        random_vec(b, seed)
            .iter()
            .map(|v| (((v + 1.0) * 0.5 * c as f32) as usize).min(c - 1))
            .collect()
    }

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        // One class, a batch of one, binary (the paper's tasks), a batch
        // larger than the 64-invocation workgroup, and many classes.
        for (i, &(b, c, mag)) in [
            (1usize, 1usize, 1.0f32),
            (1, 2, 1.0),
            (7, 3, 3.0),
            (64, 2, 1.0),
            (200, 5, 10.0),
            (130, 1000, 2.0),
        ]
        .iter()
        .enumerate()
        {
            let zv: Vec<f32> = random_vec(b * c, 700 + i as u64)
                .iter()
                .map(|v| v * mag)
                .collect();
            let yv = labels(b, c, 800 + i as u64);
            let up = -0.7f32;
            let z = gpu.upload(&zv, &[b, c]).unwrap();
            let y = gpu
                .upload(&yv.iter().map(|&l| l as f32).collect::<Vec<_>>(), &[b])
                .unwrap();
            let u = gpu.upload(&[up], &[1]).unwrap();
            let loss = cross_entropy(gpu, &z, &y).unwrap();
            let dz = cross_entropy_backward(gpu, &z, &y, &u).unwrap();
            let z64 = to_f64(&zv);
            let what = format!("cross-entropy B={b} C={c}");
            assert_eq!(loss.shape(), &[1]);
            assert_close(
                &gpu.read(&loss).unwrap(),
                &[reference::cross_entropy(&z64, &yv, c)],
                Tolerance::ACCUMULATION,
                &what,
            );
            assert_close(
                &gpu.read(&dz).unwrap(),
                &reference::cross_entropy_backward(&z64, &yv, c, up as f64),
                Tolerance::ACCUMULATION,
                &format!("{what}, backward"),
            );
        }
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let (b, c) = (4, 3);
        let z = to_f64(&random_vec(b * c, 31));
        let y = labels(b, c, 32);
        let analytic = reference::cross_entropy_backward(&z, &y, c, 1.5);
        let numeric = finite_difference(&z, |zv| 1.5 * reference::cross_entropy(zv, &y, c));
        assert_gradient(&analytic, &numeric, "cross-entropy");
    }

    #[test]
    fn invalid_labels_give_nan() {
        let gpu = gpu();
        let z = gpu.upload(&random_vec(6, 3), &[3, 2]).unwrap();
        let u = gpu.upload(&[1.0], &[1]).unwrap();
        for bad in [2.0f32, -1.0, 0.5] {
            let y = gpu.upload(&[0.0, bad, 1.0], &[3]).unwrap();
            let loss = gpu
                .read_scalar(&cross_entropy(gpu, &z, &y).unwrap())
                .unwrap();
            assert!(loss.is_nan(), "label {bad}: loss {loss}");
            let d = gpu
                .read(&cross_entropy_backward(gpu, &z, &y, &u).unwrap())
                .unwrap();
            assert!(d[2].is_nan() && d[3].is_nan(), "label {bad}: {d:?}");
            assert!(d[0].is_finite() && d[5].is_finite(), "label {bad}: {d:?}");
        }
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let z = gpu.zeros(&[3, 2]).unwrap();
        let y = gpu.zeros(&[2]).unwrap();
        let e = cross_entropy(gpu, &z, &y).unwrap_err().to_string();
        assert!(e.contains("cross_entropy"), "{e}");
        let y = gpu.zeros(&[3]).unwrap();
        let u = gpu.zeros(&[2]).unwrap();
        assert!(cross_entropy_backward(gpu, &z, &y, &u).is_err());
    }
}
