//! Reductions along one axis (`shaders/reduce.wgsl`): sum, mean and max, and
//! their backwards.
//!
//! Any axis of any rank is handled by viewing the tensor as
//! [outer, axis, inner]; the output drops the axis (a rank-1 input gives a
//! one-element tensor of shape [1]). Tensors larger than one storage binding
//! are split over `outer` slices.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("reduce");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    outer: u32,
    axis: u32,
    inner: u32,
    _pad: u32,
    scale: f32,
}

/// Which reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    Sum,
    Mean,
    /// Backward sends the gradient to the first index of the maximum.
    Max,
}

/// (outer, axis, inner) of `shape` around `axis`, and the output shape.
pub fn split_shape(shape: &[usize], axis: usize) -> Result<(usize, usize, usize, Vec<usize>)> {
    if axis >= shape.len() {
        return Err(GpuError::Shape {
            op: "reduce",
            message: format!("axis {axis} of a rank-{} tensor {shape:?}", shape.len()),
        });
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let len = shape[axis];
    if len == 0 {
        return Err(GpuError::Shape {
            op: "reduce",
            message: format!("axis {axis} of {shape:?} is empty"),
        });
    }
    let mut out: Vec<usize> = shape[..axis].to_vec();
    out.extend_from_slice(&shape[axis + 1..]);
    if out.is_empty() {
        out.push(1);
    }
    Ok((outer, len, inner, out))
}

fn scale(op: Reduction, len: usize) -> f32 {
    match op {
        Reduction::Mean => (1.0 / len as f64) as f32,
        _ => 1.0,
    }
}

/// Runs `entry` over outer slices in binding-sized groups. Binding 0 (x) and
/// binding 2 of a backward cover whole slices of `axis * inner` values; the
/// output of a forward and the gradient (binding 1) cover `inner` per slice.
fn run(
    gpu: &Gpu,
    entry: &'static str,
    (outer, len, inner): (usize, usize, usize),
    x: Option<&Tensor>,
    g: Option<&Tensor>,
    out: &Tensor,
    backward: bool,
    scale: f32,
) -> Result<()> {
    let slice = len * inner;
    let kernel = SHADER.kernel(entry);
    for rows in gpu.planner("reduce").aligned_rows(outer, &[slice, inner])? {
        let (o0, count) = (rows.start, rows.len());
        let mut args = Vec::with_capacity(3);
        if let Some(x) = x {
            args.push((0, x.range(o0 * slice, count * slice)));
        }
        if let Some(g) = g {
            args.push((1, g.range(o0 * inner, count * inner)));
        }
        let (out_off, out_len) = if backward {
            (o0 * slice, count * slice)
        } else {
            (o0 * inner, count * inner)
        };
        args.push((2, out.range(out_off, out_len)));
        // Sum/mean backward runs one invocation per input element; the
        // others one per output element.
        let threads = if entry == "broadcast_backward" {
            count * slice
        } else {
            count * inner
        };
        let p = Params {
            outer: count as u32,
            axis: len as u32,
            inner: inner as u32,
            _pad: 0,
            scale,
        };
        gpu.launch_threads(kernel, &args, &p, threads as u64)?;
    }
    Ok(())
}

/// Reduces `x` along `axis`.
pub fn reduce(gpu: &Gpu, x: &Tensor, axis: usize, op: Reduction) -> Result<Tensor> {
    let (outer, len, inner, out_shape) = split_shape(x.shape(), axis)?;
    let out = gpu.empty(&out_shape);
    let entry = if op == Reduction::Max {
        "max_forward"
    } else {
        "sum_forward"
    };
    run(
        gpu,
        entry,
        (outer, len, inner),
        Some(x),
        None,
        &out,
        false,
        scale(op, len),
    )?;
    Ok(out)
}

/// Gradient with respect to `x` of `reduce(x, axis, op)`, given the upstream
/// gradient `grad` (shaped like the reduction's output). Max needs `x` to
/// find the argmax again; sum and mean only use its shape.
pub fn reduce_backward(
    gpu: &Gpu,
    x: &Tensor,
    axis: usize,
    op: Reduction,
    grad: &Tensor,
) -> Result<Tensor> {
    let (outer, len, inner, _) = split_shape(x.shape(), axis)?;
    if grad.len() != outer * inner {
        return Err(GpuError::Shape {
            op: "reduce_backward",
            message: format!(
                "gradient {:?} for the reduction of {:?} along axis {axis}",
                grad.shape(),
                x.shape()
            ),
        });
    }
    let dx = gpu.empty(x.shape());
    match op {
        Reduction::Max => run(
            gpu,
            "max_backward",
            (outer, len, inner),
            Some(x),
            Some(grad),
            &dx,
            true,
            1.0,
        )?,
        Reduction::Sum | Reduction::Mean => run(
            gpu,
            "broadcast_backward",
            (outer, len, inner),
            None,
            Some(grad),
            &dx,
            true,
            scale(op, len),
        )?,
    }
    Ok(dx)
}

/// f64 CPU references on row-major slices.
pub mod reference {
    use super::Reduction;

    pub fn reduce(x: &[f64], shape: &[usize], axis: usize, op: Reduction) -> Vec<f64> {
        let (outer, len, inner, _) = super::split_shape(shape, axis).expect("valid shape");
        let mut out = vec![0.0; outer * inner];
        for o in 0..outer {
            for i in 0..inner {
                let col = (0..len).map(|a| x[(o * len + a) * inner + i]);
                out[o * inner + i] = match op {
                    Reduction::Sum => col.sum(),
                    Reduction::Mean => col.sum::<f64>() / len as f64,
                    Reduction::Max => col.fold(f64::NEG_INFINITY, f64::max),
                };
            }
        }
        out
    }

    pub fn reduce_backward(
        x: &[f64],
        shape: &[usize],
        axis: usize,
        op: Reduction,
        g: &[f64],
    ) -> Vec<f64> {
        let (outer, len, inner, _) = super::split_shape(shape, axis).expect("valid shape");
        let mut dx = vec![0.0; x.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |a: usize| (o * len + a) * inner + i;
                let gi = g[o * inner + i];
                match op {
                    Reduction::Sum => (0..len).for_each(|a| dx[at(a)] = gi),
                    Reduction::Mean => (0..len).for_each(|a| dx[at(a)] = gi / len as f64),
                    Reduction::Max => {
                        let mut arg = 0;
                        for a in 1..len {
                            if x[at(a)] > x[at(arg)] {
                                arg = a;
                            }
                        }
                        dx[at(arg)] = gi;
                    }
                }
            }
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

    const OPS: [Reduction; 3] = [Reduction::Sum, Reduction::Mean, Reduction::Max];

    /// Shapes and axes: first, middle and last axes, a length-1 axis, sizes
    /// that are not multiples of the workgroup, N = 200 regions, and one
    /// long axis (5000) for the accumulation error.
    const CASES: &[(&[usize], usize)] = &[
        (&[7], 0),
        (&[1, 1], 1),
        (&[3, 257], 1),
        (&[3, 257], 0),
        (&[2, 200, 5], 1),
        (&[2, 1, 5], 1),
        (&[4, 3, 200], 2),
        (&[2, 5000], 1),
        (&[5000, 3], 0),
    ];

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        for (c, &(shape, axis)) in CASES.iter().enumerate() {
            let n: usize = shape.iter().product();
            let xv = random_vec(n, 300 + c as u64);
            let x64 = to_f64(&xv);
            let x = gpu.upload(&xv, shape).unwrap();
            for op in OPS {
                let what = format!("{op:?} of {shape:?} along {axis}");
                let y = reduce(gpu, &x, axis, op).unwrap();
                let want = reference::reduce(&x64, shape, axis, op);
                assert_eq!(y.len(), want.len(), "{what}");
                assert_close(
                    &gpu.read(&y).unwrap(),
                    &want,
                    Tolerance::ACCUMULATION,
                    &what,
                );

                let gv = random_vec(want.len(), 400 + c as u64);
                let g = gpu.upload(&gv, y.shape()).unwrap();
                let dx = reduce_backward(gpu, &x, axis, op, &g).unwrap();
                assert_close(
                    &gpu.read(&dx).unwrap(),
                    &reference::reduce_backward(&x64, shape, axis, op, &to_f64(&gv)),
                    Tolerance::ELEMENTWISE,
                    &format!("{what}, backward"),
                );
            }
        }
    }

    #[test]
    fn max_ties_send_the_gradient_to_the_first_index() {
        let gpu = gpu();
        // Column 0 has its maximum 2.0 at rows 1 and 2; column 1 is constant.
        let xv = [0.0, 5.0, 2.0, 5.0, 2.0, 5.0];
        let x = gpu.upload(&xv, &[3, 2]).unwrap();
        let g = gpu.upload(&[10.0, 20.0], &[2]).unwrap();
        let dx = gpu
            .read(&reduce_backward(gpu, &x, 0, Reduction::Max, &g).unwrap())
            .unwrap();
        assert_eq!(dx, vec![0.0, 20.0, 10.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn reference_backwards_match_finite_differences() {
        let shape = [3, 4, 2];
        // Distinct values, so max is differentiable at the sample point.
        let x: Vec<f64> = (0..24).map(|i| ((i * 7) % 24) as f64 * 0.1 - 1.0).collect();
        let g = to_f64(&random_vec(24, 9));
        for axis in 0..3 {
            let (outer, _, inner, _) = split_shape(&shape, axis).unwrap();
            let g = &g[..outer * inner];
            for op in OPS {
                let analytic = reference::reduce_backward(&x, &shape, axis, op, g);
                let numeric = finite_difference(&x, |xv| {
                    reference::reduce(xv, &shape, axis, op)
                        .iter()
                        .zip(g)
                        .map(|(y, g)| y * g)
                        .sum()
                });
                assert_gradient(&analytic, &numeric, &format!("{op:?} axis {axis}"));
            }
        }
    }

    #[test]
    fn split_launches_match_reference() {
        // 256-value bindings (a 1 KiB binding limit). [96, 3, 2] along
        // axis 1 takes 6 values per outer slice: 32 slices per launch keeps
        // both the input offsets (192·k) and output offsets (64·k) aligned, so
        // this runs as three launches.
        let gpu = crate::check::gpu_with_binding_limit(1024);
        let shape = [96usize, 3, 2];
        let n: usize = shape.iter().product();
        let xv = random_vec(n, 77);
        let x64 = to_f64(&xv);
        let x = gpu.upload(&xv, &shape).unwrap();
        for op in OPS {
            let what = format!("split {op:?}");
            let (y, trace) = gpu.traced(|| reduce(gpu, &x, 1, op).unwrap());
            let launches = trace
                .iter()
                .filter(|r| matches!(r, crate::gpu::Recorded::Dispatch { kernel, .. } if kernel.starts_with("reduce::")))
                .count();
            assert_eq!(launches, 3, "{what}: {trace:?}");
            assert_close(
                &gpu.read(&y).unwrap(),
                &reference::reduce(&x64, &shape, 1, op),
                Tolerance::ACCUMULATION,
                &what,
            );
            let gv = random_vec(y.len(), 78);
            let g = gpu.upload(&gv, y.shape()).unwrap();
            let dx = reduce_backward(gpu, &x, 1, op, &g).unwrap();
            assert_close(
                &gpu.read(&dx).unwrap(),
                &reference::reduce_backward(&x64, &shape, 1, op, &to_f64(&gv)),
                Tolerance::ELEMENTWISE,
                &format!("{what}, backward"),
            );
        }
        // A single slice larger than a binding cannot be split: an error, not
        // a validation failure or a wrong answer.
        let big = gpu.upload(&random_vec(640, 79), &[640]).unwrap();
        let e = reduce(gpu, &big, 0, Reduction::Sum).unwrap_err();
        assert!(
            matches!(e, GpuError::BindingLimit { op: "reduce", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("one row of 640 values"), "{e}");
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let x = gpu.zeros(&[3, 4]).unwrap();
        let e = reduce(gpu, &x, 2, Reduction::Sum).unwrap_err().to_string();
        assert!(e.contains("axis 2"), "{e}");
        let g = gpu.zeros(&[4]).unwrap();
        let e = reduce_backward(gpu, &x, 1, Reduction::Mean, &g)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reduce_backward"), "{e}");
    }
}
