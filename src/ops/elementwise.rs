//! Elementwise kernels (`shaders/elementwise.wgsl`): fill, add, mul, scale,
//! axpy, bias add, ReLU, tanh, exp, and the backwards of the nonlinearities.
//!
//! Tensors larger than one storage binding are processed in ranges of at most
//! `max_binding_bytes`, each launch told its global `base` index.

use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("elementwise");

/// Invocations for `n` elements: each handles the shader's `ELEMS_PER_THREAD`.
fn threads(gpu: &Gpu, kernel: crate::gpu::Kernel, n: usize) -> Result<u64> {
    let per_thread = gpu.kernel(kernel)?.constant("ELEMS_PER_THREAD")?;
    Ok((n as u64).div_ceil(per_thread as u64))
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    base: u32,
    channels: u32,
    mid: u32,
    alpha: f32,
    beta: f32,
}

/// Which elementwise entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Relu,
    Tanh,
    Exp,
}

fn same_len(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.len() != b.len() {
        return Err(GpuError::Shape {
            op,
            message: format!("{:?} vs {:?}", a.shape(), b.shape()),
        });
    }
    Ok(())
}

/// Runs `entry` over `n` elements in binding-sized ranges. `x`, `y` are
/// read at the same range as `out`; `y_whole` binds y entirely (bias).
fn run(
    gpu: &Gpu,
    entry: &'static str,
    n: usize,
    x: Option<&Tensor>,
    y: Option<&Tensor>,
    y_whole: bool,
    out: &Tensor,
    params: Params,
) -> Result<()> {
    let kernel = SHADER.kernel(entry);
    for r in gpu.planner(entry).flat(n, 1)? {
        let (start, len) = (r.start, r.len());
        let mut args = vec![(2, out.range(start, len))];
        if let Some(x) = x {
            args.push((0, x.range(start, len)));
        }
        if let Some(y) = y {
            args.push((
                1,
                if y_whole {
                    y.arg()
                } else {
                    y.range(start, len)
                },
            ));
        }
        let p = Params {
            n: len as u32,
            base: start as u32,
            ..params
        };
        gpu.launch_threads(kernel, &args, &p, threads(gpu, kernel, len)?)?;
    }
    Ok(())
}

fn params(alpha: f32, beta: f32, channels: u32) -> Params {
    Params {
        n: 0,
        base: 0,
        channels,
        mid: 1,
        alpha,
        beta,
    }
}

/// `out[..] = value`: the runtime's own fill ([`Gpu::fill`]), here so the
/// elementwise family reads complete.
pub fn fill(gpu: &Gpu, out: &Tensor, value: f32) -> Result<()> {
    gpu.fill(out, value)
}

pub fn add(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_len("add", x, y)?;
    let out = gpu.empty(x.shape());
    run(
        gpu,
        "add",
        x.len(),
        Some(x),
        Some(y),
        false,
        &out,
        params(0.0, 0.0, 1),
    )?;
    Ok(out)
}

pub fn mul(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_len("mul", x, y)?;
    let out = gpu.empty(x.shape());
    run(
        gpu,
        "mul",
        x.len(),
        Some(x),
        Some(y),
        false,
        &out,
        params(0.0, 0.0, 1),
    )?;
    Ok(out)
}

/// `alpha * x + beta`.
pub fn scale(gpu: &Gpu, x: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    let out = gpu.empty(x.shape());
    run(
        gpu,
        "scale",
        x.len(),
        Some(x),
        None,
        false,
        &out,
        params(alpha, beta, 1),
    )?;
    Ok(out)
}

/// `acc += alpha * x`, in place (gradient accumulation).
pub fn axpy(gpu: &Gpu, acc: &Tensor, alpha: f32, x: &Tensor) -> Result<()> {
    same_len("axpy", acc, x)?;
    run(
        gpu,
        "axpy",
        x.len(),
        Some(x),
        None,
        false,
        acc,
        params(alpha, 0.0, 1),
    )
}

/// `x[.., c] + bias[c]` over the last dimension.
pub fn bias_add(gpu: &Gpu, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let c = *x.shape().last().unwrap_or(&1);
    if bias.len() != c || c == 0 {
        return Err(GpuError::Shape {
            op: "bias_add",
            message: format!("bias {:?} for input {:?}", bias.shape(), x.shape()),
        });
    }
    let out = gpu.empty(x.shape());
    run(
        gpu,
        "bias_add",
        x.len(),
        Some(x),
        Some(bias),
        true,
        &out,
        params(0.0, 0.0, c as u32),
    )?;
    Ok(out)
}

pub fn unary(gpu: &Gpu, op: Unary, x: &Tensor) -> Result<Tensor> {
    let entry = match op {
        Unary::Relu => "relu",
        Unary::Tanh => "tanh_forward",
        Unary::Exp => "exp_forward",
    };
    let out = gpu.empty(x.shape());
    run(
        gpu,
        entry,
        x.len(),
        Some(x),
        None,
        false,
        &out,
        params(0.0, 0.0, 1),
    )?;
    Ok(out)
}

/// Gradient of a unary op from the upstream gradient and the forward output.
pub fn unary_backward(gpu: &Gpu, op: Unary, grad: &Tensor, output: &Tensor) -> Result<Tensor> {
    same_len("unary_backward", grad, output)?;
    match op {
        Unary::Exp => mul(gpu, grad, output),
        Unary::Relu | Unary::Tanh => {
            let entry = if op == Unary::Relu {
                "relu_backward"
            } else {
                "tanh_backward"
            };
            let out = gpu.empty(grad.shape());
            run(
                gpu,
                entry,
                grad.len(),
                Some(grad),
                Some(output),
                false,
                &out,
                params(0.0, 0.0, 1),
            )?;
            Ok(out)
        }
    }
}

/// `x ⊙ y` with `y` broadcast over one middle dimension of `x` viewed as
/// [outer, mid, inner] (y holds [outer, inner]): masks over regions
/// (`inner = 1, mid = T` for x [B, N, T], y [B, N]) or frames
/// (`inner = T, mid = N`, y [B, T]).
pub fn mul_broadcast(
    gpu: &Gpu,
    x: &Tensor,
    y: &Tensor,
    inner: usize,
    mid: usize,
) -> Result<Tensor> {
    if inner == 0 || mid == 0 || x.len() % (inner * mid) != 0 || y.len() != x.len() / mid {
        return Err(GpuError::Shape {
            op: "mul_broadcast",
            message: format!(
                "y {:?} cannot broadcast over x {:?} with inner {inner}, mid {mid}",
                y.shape(),
                x.shape()
            ),
        });
    }
    let out = gpu.empty(x.shape());
    let p = Params {
        mid: mid as u32,
        ..params(0.0, 0.0, inner as u32)
    };
    run(
        gpu,
        "mul_broadcast",
        x.len(),
        Some(x),
        Some(y),
        true,
        &out,
        p,
    )?;
    Ok(out)
}

/// `out[i] = src[offset + i]` for every element of `out` (an unaligned range copy).
pub fn copy_from(gpu: &Gpu, src: &Tensor, offset: usize, out: &Tensor) -> Result<()> {
    if offset + out.len() > src.len() {
        return Err(GpuError::Shape {
            op: "copy_from",
            message: format!(
                "range {offset}..{} of {:?}",
                offset + out.len(),
                src.shape()
            ),
        });
    }
    let p = Params {
        n: out.len() as u32,
        base: offset as u32,
        ..params(0.0, 0.0, 1)
    };
    let kernel = SHADER.kernel("copy_from");
    gpu.launch_threads(
        kernel,
        &[(0, src.arg()), (2, out.arg())],
        &p,
        threads(gpu, kernel, out.len())?,
    )
}

/// f64 CPU references.
pub mod reference {
    use super::Unary;

    pub fn unary(op: Unary, x: &[f64]) -> Vec<f64> {
        x.iter()
            .map(|&v| match op {
                Unary::Relu => v.max(0.0),
                Unary::Tanh => v.tanh(),
                Unary::Exp => v.exp(),
            })
            .collect()
    }

    /// d/dx of the op given upstream `g` and input `x`.
    pub fn unary_backward(op: Unary, g: &[f64], x: &[f64]) -> Vec<f64> {
        g.iter()
            .zip(x)
            .map(|(&g, &v)| match op {
                Unary::Relu => {
                    if v > 0.0 {
                        g
                    } else {
                        0.0
                    }
                }
                Unary::Tanh => g * (1.0 - v.tanh().powi(2)),
                Unary::Exp => g * v.exp(),
            })
            .collect()
    }

    pub fn mul_broadcast(x: &[f64], y: &[f64], inner: usize, mid: usize) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| v * y[(i / (inner * mid)) * inner + i % inner])
            .collect()
    }

    pub fn bias_add(x: &[f64], bias: &[f64]) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| v + bias[i % bias.len()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, finite_difference, gpu, poisoned, random_vec, to_f64, Tolerance,
    };

    const SHAPES: &[&[usize]] = &[&[1], &[7], &[3, 257], &[2, 200, 5]];

    #[test]
    fn binary_ops_match_reference() {
        let gpu = gpu();
        for (s, shape) in SHAPES.iter().enumerate() {
            let n: usize = shape.iter().product();
            let a = random_vec(n, 10 + s as u64);
            let b = random_vec(n, 20 + s as u64);
            let ta = gpu.upload(&a, shape).unwrap();
            let tb = gpu.upload(&b, shape).unwrap();
            let sum = gpu.read(&add(gpu, &ta, &tb).unwrap()).unwrap();
            let prod = gpu.read(&mul(gpu, &ta, &tb).unwrap()).unwrap();
            let sc = gpu.read(&scale(gpu, &ta, -1.5, 0.25).unwrap()).unwrap();
            let f = |g: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
                a.iter()
                    .zip(&b)
                    .map(|(&x, &y)| g(x as f64, y as f64))
                    .collect()
            };
            assert_close(&sum, &f(&|x, y| x + y), Tolerance::ELEMENTWISE, "add");
            assert_close(&prod, &f(&|x, y| x * y), Tolerance::ELEMENTWISE, "mul");
            assert_close(
                &sc,
                &f(&|x, _| -1.5 * x + 0.25),
                Tolerance::ELEMENTWISE,
                "scale",
            );
            let acc = gpu.upload(&b, shape).unwrap();
            axpy(gpu, &acc, 0.5, &ta).unwrap();
            assert_close(
                &gpu.read(&acc).unwrap(),
                &f(&|x, y| y + 0.5 * x),
                Tolerance::ELEMENTWISE,
                "axpy",
            );
        }
    }

    #[test]
    fn unary_ops_and_backwards_match_reference() {
        let gpu = gpu();
        for (s, shape) in SHAPES.iter().enumerate() {
            let n: usize = shape.iter().product();
            let x = random_vec(n, 30 + s as u64);
            let g = random_vec(n, 40 + s as u64);
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let g64: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            let tx = gpu.upload(&x, shape).unwrap();
            let tg = gpu.upload(&g, shape).unwrap();
            for op in [Unary::Relu, Unary::Tanh, Unary::Exp] {
                let y = unary(gpu, op, &tx).unwrap();
                let dx = unary_backward(gpu, op, &tg, &y).unwrap();
                assert_close(
                    &gpu.read(&y).unwrap(),
                    &reference::unary(op, &x64),
                    Tolerance::ELEMENTWISE,
                    &format!("{op:?}"),
                );
                assert_close(
                    &gpu.read(&dx).unwrap(),
                    &reference::unary_backward(op, &g64, &x64),
                    Tolerance::ELEMENTWISE,
                    &format!("{op:?} backward"),
                );
            }
        }
    }

    #[test]
    fn unary_reference_backwards_match_finite_differences() {
        // Keep x away from ReLU's kink so the difference quotient is exact.
        let x: Vec<f64> = random_vec(9, 5)
            .iter()
            .map(|&v| v as f64 + 0.1 * v.signum() as f64)
            .collect();
        let g: Vec<f64> = random_vec(9, 6).iter().map(|&v| v as f64).collect();
        for op in [Unary::Relu, Unary::Tanh, Unary::Exp] {
            let analytic = reference::unary_backward(op, &g, &x);
            let numeric = finite_difference(&x, |xv| {
                reference::unary(op, xv)
                    .iter()
                    .zip(&g)
                    .map(|(y, g)| y * g)
                    .sum()
            });
            assert_close_f64(&analytic, &numeric, &format!("{op:?}"));
        }
    }

    fn assert_close_f64(a: &[f64], b: &[f64], what: &str) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn bias_add_matches_reference_including_split_launches() {
        let gpu = gpu();
        for shape in [&[5usize, 3][..], &[4, 200], &[1, 1]] {
            let n: usize = shape.iter().product();
            let c = shape[shape.len() - 1];
            let x = random_vec(n, 7);
            let b = random_vec(c, 8);
            let out = bias_add(
                gpu,
                &gpu.upload(&x, shape).unwrap(),
                &gpu.upload(&b, &[c]).unwrap(),
            )
            .unwrap();
            let want = reference::bias_add(
                &x.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                &b.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            );
            assert_close(
                &gpu.read(&out).unwrap(),
                &want,
                Tolerance::ELEMENTWISE,
                "bias_add",
            );
        }
    }

    #[test]
    fn mul_broadcast_masks_regions_and_frames() {
        let gpu = gpu();
        // Region masks (inner 1), frame masks (inner T) and the dropout mask
        // of [B, T, N·F] features (inner N·F, mid T) on several shapes.
        for (case, &(b, n, t)) in [(2, 5, 7), (1, 1, 1), (3, 200, 64), (4, 33, 9)]
            .iter()
            .enumerate()
        {
            let seed = 50 + 10 * case as u64;
            let x = random_vec(b * n * t, seed);
            let tx = gpu.upload(&x, &[b, n, t]).unwrap();
            for (inner, mid, ylen) in [(1, t, b * n), (t, n, b * t)] {
                let y = random_vec(ylen, seed + 1);
                let out =
                    mul_broadcast(gpu, &tx, &gpu.upload(&y, &[ylen]).unwrap(), inner, mid).unwrap();
                let want = reference::mul_broadcast(&to_f64(&x), &to_f64(&y), inner, mid);
                assert_close(
                    &gpu.read(&out).unwrap(),
                    &want,
                    Tolerance::ELEMENTWISE,
                    &format!("mul_broadcast [{b}, {n}, {t}] inner {inner}"),
                );
            }
        }
        let (b, n, t) = (2, 5, 7);
        let tx = gpu.upload(&random_vec(b * n * t, 49), &[b, n, t]).unwrap();
        assert!(mul_broadcast(gpu, &tx, &gpu.zeros(&[3]).unwrap(), 1, t).is_err());
    }

    #[test]
    fn fill_writes_every_element() {
        let gpu = gpu();
        let t = poisoned(gpu, &[3, 1000]);
        fill(gpu, &t, 2.5).unwrap();
        assert!(gpu.read(&t).unwrap().iter().all(|&v| v == 2.5));
    }

    #[test]
    fn errors_on_mismatched_lengths() {
        let gpu = gpu();
        let a = gpu.zeros(&[3]).unwrap();
        let b = gpu.zeros(&[4]).unwrap();
        let err = add(gpu, &a, &b).unwrap_err().to_string();
        assert!(err.contains("add") && err.contains("[3] vs [4]"), "{err}");
    }
}
