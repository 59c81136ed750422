//! Ops with a scalar held in a GPU tensor (`shaders/scalar.wgsl`), so the
//! fusion weights β = softmax(−α) and the calibration's c₀, c₁, c_b enter the
//! graph without a readback: `x · s[i]` and `x + s[i]`, and their backwards,
//! whose scalar gradient is a full reduction (two-pass tree: one partial per
//! workgroup, then one workgroup over the partials).
//!
//! Tensors larger than one storage binding are processed in binding-sized
//! ranges; each range writes its own block of partials.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("scalar");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    index: u32,
    partial_base: u32,
    _pad: u32,
}

fn check_index(op: &'static str, s: &Tensor, index: usize) -> Result<()> {
    if index >= s.len() {
        return Err(GpuError::Shape {
            op,
            message: format!("scalar index {index} in a tensor of {} values", s.len()),
        });
    }
    Ok(())
}

fn elementwise(
    gpu: &Gpu,
    entry: &'static str,
    x: &Tensor,
    s: &Tensor,
    index: usize,
) -> Result<Tensor> {
    check_index(entry, s, index)?;
    let out = gpu.empty(x.shape());
    for r in gpu.planner(entry).flat(x.len(), 1)? {
        let (start, len) = (r.start, r.len());
        let p = Params {
            n: len as u32,
            index: index as u32,
            partial_base: 0,
            _pad: 0,
        };
        gpu.launch_threads(
            SHADER.kernel(entry),
            &[
                (0, x.range(start, len)),
                (1, s.arg()),
                (2, out.range(start, len)),
            ],
            &p,
            len as u64,
        )?;
    }
    Ok(out)
}

/// `x · s[index]`.
pub fn mul_scalar(gpu: &Gpu, x: &Tensor, s: &Tensor, index: usize) -> Result<Tensor> {
    elementwise(gpu, "mul_scalar", x, s, index)
}

/// `x + s[index]`.
pub fn add_scalar(gpu: &Gpu, x: &Tensor, s: &Tensor, index: usize) -> Result<Tensor> {
    elementwise(gpu, "add_scalar", x, s, index)
}

/// `acc[index] += Σ g` (or `Σ g ⊙ y` when `y` is given), a two-pass tree reduction.
pub fn sum_into(
    gpu: &Gpu,
    g: &Tensor,
    y: Option<&Tensor>,
    acc: &Tensor,
    index: usize,
) -> Result<()> {
    check_index("sum_into", acc, index)?;
    if let Some(y) = y {
        if y.len() != g.len() {
            return Err(GpuError::Shape {
                op: "sum_into",
                message: format!("{:?} vs {:?}", g.shape(), y.shape()),
            });
        }
    }
    let n = g.len();
    if n == 0 {
        return Ok(());
    }
    let entry = if y.is_some() {
        "partial_dot"
    } else {
        "partial_sum"
    };
    let kernel = SHADER.kernel(entry);
    // Elements one partial-reduction workgroup covers: its invocations times
    // the shader's PER_THREAD.
    let compiled = gpu.kernel(kernel)?;
    let per_group = (compiled.linear_size()? * compiled.constant("PER_THREAD")?) as usize;
    let groups = n.div_ceil(per_group);
    let partials = gpu.empty(&[groups]);
    // Whole partial groups per launch, so no group straddles two launches
    // and each launch's partials start at `start / per_group`.
    for r in gpu.planner("sum_into").flat(n, per_group)? {
        let (start, len) = (r.start, r.len());
        let p = Params {
            n: len as u32,
            index: 0,
            partial_base: (start / per_group) as u32,
            _pad: 0,
        };
        let mut args = vec![(0, g.range(start, len)), (4, partials.arg())];
        if let Some(y) = y {
            args.push((3, y.range(start, len)));
        }
        gpu.launch_linear(kernel, &args, &p, len.div_ceil(per_group) as u64)?;
    }
    let p = Params {
        n: 0,
        index: index as u32,
        partial_base: groups as u32,
        _pad: 0,
    };
    gpu.launch(
        SHADER.kernel("finish"),
        &[(4, partials.arg()), (5, acc.arg())],
        &p,
        [1, 1, 1],
    )
}

/// Gradients of `out = x · s[index]`: `dx = g · s[index]` and `ds` shaped like
/// `s`, zero except `ds[index] = Σ g ⊙ x`.
pub fn mul_scalar_backward(
    gpu: &Gpu,
    x: &Tensor,
    s: &Tensor,
    index: usize,
    g: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let dx = mul_scalar(gpu, g, s, index)?;
    let ds = gpu.zeros(s.shape())?;
    sum_into(gpu, g, Some(x), &ds, index)?;
    Ok((dx, ds))
}

/// Gradient of `out = x + s[index]` in `s`: zero except `ds[index] = Σ g`
/// (the gradient in `x` is `g` itself).
pub fn add_scalar_backward(gpu: &Gpu, s: &Tensor, index: usize, g: &Tensor) -> Result<Tensor> {
    let ds = gpu.zeros(s.shape())?;
    sum_into(gpu, g, None, &ds, index)?;
    Ok(ds)
}

/// f64 CPU references.
pub mod reference {
    pub fn mul_scalar(x: &[f64], s: &[f64], index: usize) -> Vec<f64> {
        x.iter().map(|v| v * s[index]).collect()
    }

    pub fn add_scalar(x: &[f64], s: &[f64], index: usize) -> Vec<f64> {
        x.iter().map(|v| v + s[index]).collect()
    }

    /// (dx, ds) of `x · s[index]` for upstream `g`.
    pub fn mul_scalar_backward(
        x: &[f64],
        s: &[f64],
        index: usize,
        g: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let dx = g.iter().map(|v| v * s[index]).collect();
        let mut ds = vec![0.0; s.len()];
        ds[index] = g.iter().zip(x).map(|(a, b)| a * b).sum();
        (dx, ds)
    }

    /// (dx, ds) of `x + s[index]` for upstream `g`.
    pub fn add_scalar_backward(s: &[f64], index: usize, g: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let mut ds = vec![0.0; s.len()];
        ds[index] = g.iter().sum();
        (g.to_vec(), ds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, dispatches, finite_difference, gpu, gpu_with_binding_limit,
        random_vec, to_f64, Tolerance,
    };

    const SIZES: &[usize] = &[1, 7, 255, 4097, 200 * 33];

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        for (k, &n) in SIZES.iter().enumerate() {
            let xv = random_vec(n, 500 + k as u64);
            let gv = random_vec(n, 510 + k as u64);
            let sv = random_vec(3, 520 + k as u64);
            let (x64, g64, s64) = (to_f64(&xv), to_f64(&gv), to_f64(&sv));
            let x = gpu.upload(&xv, &[n]).unwrap();
            let g = gpu.upload(&gv, &[n]).unwrap();
            let s = gpu.upload(&sv, &[3]).unwrap();
            let index = k % 3;

            let y = mul_scalar(gpu, &x, &s, index).unwrap();
            assert_close(
                &gpu.read(&y).unwrap(),
                &reference::mul_scalar(&x64, &s64, index),
                Tolerance::ELEMENTWISE,
                "mul_scalar",
            );
            let (dx, ds) = mul_scalar_backward(gpu, &x, &s, index, &g).unwrap();
            let (want_dx, want_ds) = reference::mul_scalar_backward(&x64, &s64, index, &g64);
            assert_close(
                &gpu.read(&dx).unwrap(),
                &want_dx,
                Tolerance::ELEMENTWISE,
                "mul dx",
            );
            assert_close(
                &gpu.read(&ds).unwrap(),
                &want_ds,
                Tolerance::ACCUMULATION,
                "mul ds",
            );

            let y = add_scalar(gpu, &x, &s, index).unwrap();
            assert_close(
                &gpu.read(&y).unwrap(),
                &reference::add_scalar(&x64, &s64, index),
                Tolerance::ELEMENTWISE,
                "add_scalar",
            );
            let ds = add_scalar_backward(gpu, &s, index, &g).unwrap();
            let (_, want_ds) = reference::add_scalar_backward(&s64, index, &g64);
            assert_close(
                &gpu.read(&ds).unwrap(),
                &want_ds,
                Tolerance::ACCUMULATION,
                "add ds",
            );
        }
    }

    #[test]
    fn reduction_of_ten_million_elements_is_accurate() {
        let gpu = gpu();
        let n = 10_000_000;
        let gv = random_vec(n, 530);
        let xv = random_vec(n, 531);
        let g = gpu.upload(&gv, &[n]).unwrap();
        let x = gpu.upload(&xv, &[n]).unwrap();
        let acc = gpu.upload(&[0.5, -2.0], &[2]).unwrap();
        sum_into(gpu, &g, None, &acc, 0).unwrap();
        sum_into(gpu, &g, Some(&x), &acc, 1).unwrap();
        let sum: f64 = gv.iter().map(|&v| v as f64).sum();
        let dot: f64 = gv.iter().zip(&xv).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert_close(
            &gpu.read(&acc).unwrap(),
            &[0.5 + sum, -2.0 + dot],
            Tolerance::ACCUMULATION,
            "sum and dot of 10^7 elements",
        );
    }

    #[test]
    fn split_launches_give_the_same_sums() {
        let gpu = gpu_with_binding_limit(4 * 4096 * 2); // two partial groups per launch
        let n = 4096 * 5 + 77;
        let gv = random_vec(n, 540);
        let xv = random_vec(n, 541);
        let g = gpu.upload(&gv, &[n]).unwrap();
        let x = gpu.upload(&xv, &[n]).unwrap();
        let s = gpu.upload(&[1.5], &[1]).unwrap();
        let ((y, ds), trace) = gpu.traced(|| {
            let y = mul_scalar(gpu, &x, &s, 0).unwrap();
            let (_, ds) = mul_scalar_backward(gpu, &x, &s, 0, &g).unwrap();
            (y, ds)
        });
        let count = |entry: &str| dispatches(&trace, entry).len();
        assert_eq!(count("scalar::mul_scalar"), 3 + 3, "y and dx: {trace:?}");
        assert_eq!(count("scalar::partial_dot"), 3, "{trace:?}");
        let (y, ds) = (gpu.read(&y).unwrap(), gpu.read(&ds).unwrap());
        let x64 = to_f64(&xv);
        assert_close(
            &y,
            &reference::mul_scalar(&x64, &[1.5], 0),
            Tolerance::ELEMENTWISE,
            "split y",
        );
        let (_, want) = reference::mul_scalar_backward(&x64, &[1.5], 0, &to_f64(&gv));
        assert_close(&ds, &want, Tolerance::ACCUMULATION, "split ds");
    }

    #[test]
    fn reference_backwards_match_finite_differences() {
        let x = to_f64(&random_vec(6, 550));
        let g = to_f64(&random_vec(6, 551));
        let s = to_f64(&random_vec(2, 552));
        let dot = |a: &[f64]| a.iter().zip(&g).map(|(u, v)| u * v).sum::<f64>();
        let (dx, ds) = reference::mul_scalar_backward(&x, &s, 1, &g);
        assert_gradient(
            &dx,
            &finite_difference(&x, |xv| dot(&reference::mul_scalar(xv, &s, 1))),
            "mul dx",
        );
        assert_gradient(
            &ds,
            &finite_difference(&s, |sv| dot(&reference::mul_scalar(&x, sv, 1))),
            "mul ds",
        );
        let (dx, ds) = reference::add_scalar_backward(&s, 0, &g);
        assert_gradient(
            &dx,
            &finite_difference(&x, |xv| dot(&reference::add_scalar(xv, &s, 0))),
            "add dx",
        );
        assert_gradient(
            &ds,
            &finite_difference(&s, |sv| dot(&reference::add_scalar(&x, sv, 0))),
            "add ds",
        );
    }

    #[test]
    fn index_out_of_range_is_a_shape_error() {
        let gpu = gpu();
        let x = gpu.zeros(&[4]).unwrap();
        let s = gpu.zeros(&[2]).unwrap();
        assert!(matches!(
            mul_scalar(gpu, &x, &s, 2),
            Err(GpuError::Shape { .. })
        ));
    }
}
