//! Numerically stable row softmax over the last dimension
//! (`shaders/softmax.wgsl`): y = softmax(scale · x), and its backward
//! dx = scale · y ⊙ (g − Σ g⊙y).
//!
//! Used for the attention maps (CCM, TAW, CAM: rows of length T), the dynamic
//! adjacency (rows of N = 200) and the aggregation weights. Tensors larger
//! than one storage binding are split over rows.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("softmax");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    len: u32,
    scale: f32,
    _pad: u32,
}

fn rows_and_len(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    let len = t.shape().last().copied().unwrap_or(0);
    if t.shape().is_empty() || len == 0 {
        return Err(GpuError::Shape {
            op,
            message: format!(
                "softmax needs a non-empty last dimension, got {:?}",
                t.shape()
            ),
        });
    }
    Ok((t.len() / len, len))
}

fn run(
    gpu: &Gpu,
    entry: &'static str,
    (rows, len): (usize, usize),
    x: &Tensor,
    g: Option<&Tensor>,
    out: &Tensor,
    scale: f32,
) -> Result<()> {
    let kernel = SHADER.kernel(entry);
    for launch in gpu.planner("softmax").aligned_rows(rows, &[len])? {
        let (r0, count) = (launch.start, launch.len());
        let (off, n) = (r0 * len, count * len);
        let mut args = vec![(0, x.range(off, n)), (2, out.range(off, n))];
        if let Some(g) = g {
            args.push((1, g.range(off, n)));
        }
        let p = Params {
            rows: count as u32,
            len: len as u32,
            scale,
            _pad: 0,
        };
        gpu.launch_threads(kernel, &args, &p, count as u64)?;
    }
    Ok(())
}

/// `softmax(scale * x)` over the last dimension.
pub fn softmax(gpu: &Gpu, x: &Tensor, scale: f32) -> Result<Tensor> {
    let dims = rows_and_len("softmax", x)?;
    let y = gpu.empty(x.shape());
    run(gpu, "forward", dims, x, None, &y, scale)?;
    Ok(y)
}

/// Gradient with respect to x of `y = softmax(scale * x)`, from the forward
/// output `y` and the upstream gradient `grad`.
pub fn softmax_backward(gpu: &Gpu, y: &Tensor, grad: &Tensor, scale: f32) -> Result<Tensor> {
    let dims = rows_and_len("softmax_backward", y)?;
    if grad.shape() != y.shape() {
        return Err(GpuError::Shape {
            op: "softmax_backward",
            message: format!("gradient {:?} vs output {:?}", grad.shape(), y.shape()),
        });
    }
    let dx = gpu.empty(y.shape());
    run(gpu, "backward", dims, y, Some(grad), &dx, scale)?;
    Ok(dx)
}

/// f64 CPU references over row-major rows of length `len`.
pub mod reference {
    pub fn softmax(x: &[f64], len: usize, scale: f64) -> Vec<f64> {
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks(len) {
            let m = row
                .iter()
                .map(|&v| scale * v)
                .fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|&v| (scale * v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            y.extend(e.iter().map(|v| v / s));
        }
        y
    }

    /// dx from the input x (the forward is recomputed) and upstream g.
    pub fn softmax_backward(x: &[f64], g: &[f64], len: usize, scale: f64) -> Vec<f64> {
        let y = softmax(x, len, scale);
        let mut dx = Vec::with_capacity(x.len());
        for (yr, gr) in y.chunks(len).zip(g.chunks(len)) {
            let dot: f64 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
            dx.extend(yr.iter().zip(gr).map(|(y, g)| scale * y * (g - dot)));
        }
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, finite_difference, gpu, random_vec, to_f64, Tolerance,
    };

    /// (shape, scale, input magnitude): a row of length 1, a single row,
    /// rows not a multiple of the workgroup, N = 200 adjacency rows, long
    /// rows, a negative scale, and inputs large enough to overflow exp
    /// without the max subtraction.
    const CASES: &[(&[usize], f32, f32)] = &[
        (&[5, 1], 1.0, 1.0),
        (&[1, 7], 1.0, 1.0),
        (&[3, 65, 13], 0.125, 4.0),
        (&[2, 200, 200], 1.0 / 4.0, 3.0),
        (&[3, 3000], 1.0, 2.0),
        (&[4, 33], -1.5, 1.0),
        (&[2, 50], 1.0, 200.0),
    ];

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        for (c, &(shape, scale, mag)) in CASES.iter().enumerate() {
            let n: usize = shape.iter().product();
            let len = shape[shape.len() - 1];
            let xv: Vec<f32> = random_vec(n, 500 + c as u64)
                .iter()
                .map(|v| v * mag)
                .collect();
            let gv = random_vec(n, 600 + c as u64);
            let x = gpu.upload(&xv, shape).unwrap();
            let g = gpu.upload(&gv, shape).unwrap();
            let what = format!("softmax {shape:?} scale {scale}");
            let y = softmax(gpu, &x, scale).unwrap();
            let dx = softmax_backward(gpu, &y, &g, scale).unwrap();
            let (x64, g64) = (to_f64(&xv), to_f64(&gv));
            assert_close(
                &gpu.read(&y).unwrap(),
                &reference::softmax(&x64, len, scale as f64),
                Tolerance::ACCUMULATION,
                &what,
            );
            assert_close(
                &gpu.read(&dx).unwrap(),
                &reference::softmax_backward(&x64, &g64, len, scale as f64),
                Tolerance::ACCUMULATION,
                &format!("{what}, backward"),
            );
        }
    }

    #[test]
    fn rows_sum_to_one() {
        let gpu = gpu();
        let x = gpu.upload(&random_vec(4 * 1000, 1), &[4, 1000]).unwrap();
        let y = gpu.read(&softmax(gpu, &x, 3.0).unwrap()).unwrap();
        for row in y.chunks(1000) {
            let s: f64 = row.iter().map(|&v| v as f64).sum();
            assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
        }
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let len = 5;
        let x = to_f64(&random_vec(3 * len, 11));
        let g = to_f64(&random_vec(3 * len, 12));
        for scale in [1.0, 0.3, -2.0] {
            let analytic = reference::softmax_backward(&x, &g, len, scale);
            let numeric = finite_difference(&x, |xv| {
                reference::softmax(xv, len, scale)
                    .iter()
                    .zip(&g)
                    .map(|(y, g)| y * g)
                    .sum()
            });
            assert_gradient(&analytic, &numeric, &format!("softmax scale {scale}"));
        }
    }

    #[test]
    fn split_launches_match_reference() {
        // 100 rows of 6 under a 256-value binding: 32 rows (192 values, an
        // aligned offset) per launch, four launches.
        let gpu = crate::check::gpu_with_binding_limit(1024);
        let (rows, len) = (100, 6);
        let xv = random_vec(rows * len, 21);
        let gv = random_vec(rows * len, 22);
        let x = gpu.upload(&xv, &[rows, len]).unwrap();
        let g = gpu.upload(&gv, &[rows, len]).unwrap();
        let (y, trace) = gpu.traced(|| softmax(gpu, &x, 0.5).unwrap());
        assert_eq!(
            crate::check::dispatches(&trace, "softmax::forward").len(),
            4,
            "{trace:?}"
        );
        let dx = softmax_backward(gpu, &y, &g, 0.5).unwrap();
        let (x64, g64) = (to_f64(&xv), to_f64(&gv));
        assert_close(
            &gpu.read(&y).unwrap(),
            &reference::softmax(&x64, len, 0.5),
            Tolerance::ACCUMULATION,
            "split softmax",
        );
        assert_close(
            &gpu.read(&dx).unwrap(),
            &reference::softmax_backward(&x64, &g64, len, 0.5),
            Tolerance::ACCUMULATION,
            "split softmax backward",
        );
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let y = gpu.zeros(&[3, 4]).unwrap();
        let g = gpu.zeros(&[4, 3]).unwrap();
        let e = softmax_backward(gpu, &y, &g, 1.0).unwrap_err().to_string();
        assert!(e.contains("softmax_backward"), "{e}");
        let empty = gpu.zeros(&[3, 0]).unwrap();
        assert!(softmax(gpu, &empty, 1.0).is_err());
    }
}
