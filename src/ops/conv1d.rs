//! 1-D convolution along time (`shaders/conv1d.wgsl`): input [B, Cin, T],
//! weight [Cout, Cin, k] with k odd, bias [Cout], zero padding k/2 ("same"
//! length), stride 1, output [B, Cout, T]. Used for Q, K, V (k = 3) and the
//! 1×1 convolutions over [B, D, T] and [B, N·F, T].
//!
//! Inputs larger than one storage binding (the fusion conv's [B, N·F, T] is
//! over 128 MiB at the paper's sizes) are split over batch items; the weight
//! and bias gradients then add up the launches' parts on the GPU.
//!
//! Two implementations of the forward, input and weight gradients
//! ([`Path`]). `Matmul`, taken where its conditions hold ([`forward_path`]
//! and siblings: every convolution of the calibration at the model's
//! sizes): the convolution as a matrix product, w viewed as [Cout, Cin·k]
//! times the im2col matrix of x ([B, Cin·k, T], rows = x's channels
//! shifted by each tap, zero-padded exactly as the direct kernels pad),
//! on matmul's vec4 register-tiled kernels; the input gradient is the same
//! product of dy with the weight flipped, the weight gradient one Aᵀ·B
//! product over the B·T rows (so matmul's split-K applies to long sums).
//! `Direct`: the 4x4-tile convolution kernels, for the other shapes.
//! (Measured on lavapipe: the products ran 1.2–1.3x faster as matmul's
//! kernels plus a layout pass than as direct kernels, and 1.3x faster than
//! vec4 direct kernels that shift x's rows on the fly, which were tried and
//! dropped: docs/benchmarks.md, 2026-12-02.)

use crate::gpu::{Gpu, GpuError, Result, Tensor, MAX_GROUPS_PER_DIM};
use crate::ops::matmul::{self, Spec};
use crate::ops::transpose;

const SHADER: crate::gpu::Shader = crate::shader!("conv1d");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    cin: u32,
    cout: u32,
    t: u32,
    k: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub t: usize,
    pub k: usize,
}

/// Checks x [B, Cin, T] against w [Cout, Cin, k] (k odd).
pub fn dims(x: &Tensor, w: &Tensor) -> Result<Dims> {
    let (xs, ws) = (x.shape(), w.shape());
    let err = |message: String| GpuError::Shape {
        op: "conv1d",
        message,
    };
    if xs.len() != 3 || ws.len() != 3 {
        return Err(err(format!(
            "input {xs:?} must be [B, Cin, T] and weight {ws:?} [Cout, Cin, k]"
        )));
    }
    if ws[1] != xs[1] {
        return Err(err(format!(
            "weight {ws:?} expects {} input channels, input {xs:?} has {}",
            ws[1], xs[1]
        )));
    }
    if ws[2] % 2 == 0 {
        return Err(err(format!(
            "kernel size {} must be odd for same-length padding",
            ws[2]
        )));
    }
    if xs.contains(&0) || ws.contains(&0) {
        return Err(err(format!("empty input {xs:?} or weight {ws:?}")));
    }
    Ok(Dims {
        batch: xs[0],
        cin: xs[1],
        cout: ws[0],
        t: xs[2],
        k: ws[2],
    })
}

fn params(d: Dims, batch: usize, accumulate: bool) -> Params {
    Params {
        batch: batch as u32,
        cin: d.cin as u32,
        cout: d.cout as u32,
        t: d.t as u32,
        k: d.k as u32,
        flags: accumulate as u32,
        _pad0: 0,
        _pad1: 0,
    }
}

/// The side of the square output tile one workgroup of a tiled entry point
/// computes, from the shader's own `@workgroup_size` and `PER_INVOCATION`.
fn tile(gpu: &Gpu, kernel: crate::gpu::Kernel) -> Result<u32> {
    let compiled = gpu.kernel(kernel)?;
    match compiled.workgroup_size {
        [x, y, 1] if x == y => Ok(x * compiled.constant("PER_INVOCATION")?),
        size => Err(GpuError::Launch {
            kernel: compiled.name.clone(),
            message: format!("expected a square 2-D workgroup, the shader has {size:?}"),
        }),
    }
}

/// Calls `f(first item, items)` for each launch's range of batch items:
/// what fits in a binding at aligned offsets, at most one grid's z.
fn for_each_chunk(gpu: &Gpu, d: Dims, mut f: impl FnMut(usize, usize) -> Result<()>) -> Result<()> {
    let plan = gpu
        .planner("conv1d")
        .aligned_rows(d.batch, &[d.cin * d.t, d.cout * d.t])?
        .at_most(MAX_GROUPS_PER_DIM as usize);
    for items in plan {
        f(items.start, items.len())?;
    }
    Ok(())
}

/// Which implementation a product runs (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Layout kernels plus matmul's vec4 kernels.
    Matmul,
    /// The convolution kernels of `shaders/conv1d.wgsl`.
    Direct,
}

/// Whether a tensor of `elems` fits one storage binding: the matmul path
/// binds its im2col operands whole (the direct kernels split over batch
/// items instead), so a larger one takes the direct path.
fn fits(gpu: &Gpu, elems: usize) -> bool {
    elems <= gpu.planner("conv1d").limit_elems()
}

/// The path of a product over the im2col matrix of a `channels`-channel
/// input: matmul's NN vec4 kernel needs K = channels·k and N = T multiples
/// of 4 (otherwise its scalar kernel would be no faster than the direct
/// one), and the im2col matrix must fit one binding.
fn im2col_product_path(gpu: &Gpu, d: Dims, channels: usize) -> Path {
    let ck = channels * d.k;
    if d.t % 4 == 0 && ck % 4 == 0 && fits(gpu, d.batch * ck * d.t) {
        Path::Matmul
    } else {
        Path::Direct
    }
}

/// The forward's path: the product over im2col(x), K = Cin·k.
pub fn forward_path(gpu: &Gpu, d: Dims) -> Path {
    im2col_product_path(gpu, d, d.cin)
}

/// The input gradient's: the forward of dy (Cout channels) with the
/// flipped weight, so K = Cout·k.
pub fn backward_input_path(gpu: &Gpu, d: Dims) -> Path {
    im2col_product_path(gpu, d, d.cout)
}

/// The weight gradient's: matmul's TN vec4 kernel needs M = Cout,
/// N = Cin·k and K = B·T multiples of 4.
pub fn backward_weight_path(gpu: &Gpu, d: Dims) -> Path {
    let ck = d.cin * d.k;
    let rows = d.batch * d.t;
    if d.cout % 4 == 0
        && ck % 4 == 0
        && rows % 4 == 0
        && fits(gpu, rows * ck)
        && fits(gpu, rows * d.cout)
    {
        Path::Matmul
    } else {
        Path::Direct
    }
}

/// Runs one of the layout kernels (linear over `elems` outputs) into a new
/// tensor of `shape`.
fn layout(
    gpu: &Gpu,
    entry: &'static str,
    args: &[(u32, crate::gpu::Arg<'_>)],
    p: &Params,
    shape: &[usize],
) -> Result<Tensor> {
    let out = gpu.empty(shape);
    let mut all = args.to_vec();
    all.push((4, out.arg()));
    gpu.launch_threads(
        SHADER.kernel(entry),
        &all,
        p,
        shape.iter().product::<usize>() as u64,
    )?;
    Ok(out)
}

/// src [B, d.cin, T] as the im2col matrix [B, Cin·k, T] (`transposed`:
/// [B, T, Cin·k]), zero outside [0, T) like the direct kernels' padding.
fn im2col(gpu: &Gpu, d: Dims, src: &Tensor, transposed: bool) -> Result<Tensor> {
    let ck = d.cin * d.k;
    let (entry, shape) = if transposed {
        ("im2col_t", [d.batch, d.t, ck])
    } else {
        ("im2col", [d.batch, ck, d.t])
    };
    layout(
        gpu,
        entry,
        &[(0, src.arg())],
        &params(d, d.batch, false),
        &shape,
    )
}

// Every launch below is its own compute pass, and wgpu makes a pass's
// storage writes visible to the next pass's reads of the same buffer: each
// layout kernel's output is complete before the product that reads it.

fn forward_matmul(gpu: &Gpu, d: Dims, x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    // y starts as the bias rows; the product accumulates onto them.
    let y = layout(
        gpu,
        "bias_rows",
        &[(2, bias.arg())],
        &params(d, d.batch, false),
        &[d.batch, d.cout, d.t],
    )?;
    // A 1x1 convolution's im2col matrix is x itself.
    let cols = if d.k == 1 {
        x.clone()
    } else {
        im2col(gpu, d, x, false)?
    };
    let w2 = w.reshape(&[d.cout, d.cin * d.k])?;
    matmul::matmul_into(gpu, &w2, &cols, &y, Spec::NN.accumulate(), 1.0)?;
    Ok(y)
}

fn backward_input_matmul(gpu: &Gpu, d: Dims, w: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let flipped = layout(
        gpu,
        "flip_weight",
        &[(1, w.arg())],
        &params(d, d.batch, false),
        &[d.cin, d.cout * d.k],
    )?;
    // dy read as the source: its Cout channels are the im2col's channels.
    let swapped = Dims {
        cin: d.cout,
        cout: d.cin,
        ..d
    };
    let cols = if d.k == 1 {
        dy.clone()
    } else {
        im2col(gpu, swapped, dy, false)?
    };
    let dx = gpu.empty(&[d.batch, d.cin, d.t]);
    matmul::matmul_into(gpu, &flipped, &cols, &dx, Spec::NN, 1.0)?;
    Ok(dx)
}

fn backward_weight_matmul(gpu: &Gpu, d: Dims, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let rows = d.batch * d.t;
    let ck = d.cin * d.k;
    // dw [Cout, Cin·k] = Σ_b Σ_t dy[b, :, t] ⊗ X_b[:, t]: dyᵀ and X_bᵀ stacked
    // over b are [B·T, Cout] and [B·T, Cin·k], one Aᵀ·B product (split over
    // its B·T rows by matmul when the output is small and the sum long).
    let dyt = transpose::transpose(gpu, dy)?.reshape(&[rows, d.cout])?;
    let colst = im2col(gpu, d, x, true)?.reshape(&[rows, ck])?;
    let dw = gpu.empty(&[d.cout, d.cin, d.k]);
    matmul::matmul_into(
        gpu,
        &dyt,
        &colst,
        &dw.reshape(&[d.cout, ck])?,
        Spec::TN,
        1.0,
    )?;
    Ok(dw)
}

/// y = conv1d(x, w) + bias.
pub fn conv1d(gpu: &Gpu, x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let d = dims(x, w)?;
    conv1d_via(gpu, forward_path(gpu, d), x, w, bias)
}

/// [`conv1d`] on a chosen path (tests run both on the same inputs).
pub fn conv1d_via(gpu: &Gpu, path: Path, x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let d = dims(x, w)?;
    if bias.len() != d.cout {
        return Err(GpuError::Shape {
            op: "conv1d",
            message: format!("bias {:?} for {} output channels", bias.shape(), d.cout),
        });
    }
    if path == Path::Matmul {
        return forward_matmul(gpu, d, x, w, bias);
    }
    let y = gpu.empty(&[d.batch, d.cout, d.t]);
    let kernel = SHADER.kernel("forward");
    let tile = tile(gpu, kernel)?;
    let (xi, yi) = (d.cin * d.t, d.cout * d.t);
    for_each_chunk(gpu, d, |b0, n| {
        // Forward, input and weight gradients alike: Cout·Cin·k multiply-adds per frame.
        gpu.count_flops(2 * (n * d.cout * d.cin * d.k * d.t) as u64);
        gpu.launch(
            kernel,
            &[
                (0, x.range(b0 * xi, n * xi)),
                (1, w.arg()),
                (2, bias.arg()),
                (4, y.range(b0 * yi, n * yi)),
            ],
            &params(d, n, false),
            [
                (d.t as u32).div_ceil(tile),
                (d.cout as u32).div_ceil(tile),
                n as u32,
            ],
        )
    })?;
    Ok(y)
}

fn check_dy(d: Dims, dy: &Tensor) -> Result<()> {
    if dy.shape() != [d.batch, d.cout, d.t] {
        return Err(GpuError::Shape {
            op: "conv1d_backward",
            message: format!(
                "output gradient {:?}, expected {:?}",
                dy.shape(),
                [d.batch, d.cout, d.t]
            ),
        });
    }
    Ok(())
}

/// dx [B, Cin, T] from the output gradient dy [B, Cout, T].
pub fn conv1d_backward_input(gpu: &Gpu, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let d = dims(x, w)?;
    conv1d_backward_input_via(gpu, backward_input_path(gpu, d), x, w, dy)
}

/// [`conv1d_backward_input`] on a chosen path.
pub fn conv1d_backward_input_via(
    gpu: &Gpu,
    path: Path,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
) -> Result<Tensor> {
    let d = dims(x, w)?;
    check_dy(d, dy)?;
    if path == Path::Matmul {
        return backward_input_matmul(gpu, d, w, dy);
    }
    let dx = gpu.empty(x.shape());
    let kernel = SHADER.kernel("backward_input");
    let tile = tile(gpu, kernel)?;
    let (xi, yi) = (d.cin * d.t, d.cout * d.t);
    for_each_chunk(gpu, d, |b0, n| {
        // Forward, input and weight gradients alike: Cout·Cin·k multiply-adds per frame.
        gpu.count_flops(2 * (n * d.cout * d.cin * d.k * d.t) as u64);
        gpu.launch(
            kernel,
            &[
                (0, dy.range(b0 * yi, n * yi)),
                (1, w.arg()),
                (4, dx.range(b0 * xi, n * xi)),
            ],
            &params(d, n, false),
            [
                (d.t as u32).div_ceil(tile),
                (d.cin as u32).div_ceil(tile),
                n as u32,
            ],
        )
    })?;
    Ok(dx)
}

/// dw [Cout, Cin, k], summed over batch and time.
pub fn conv1d_backward_weight(gpu: &Gpu, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let d = dims(x, w)?;
    conv1d_backward_weight_via(gpu, backward_weight_path(gpu, d), x, w, dy)
}

/// [`conv1d_backward_weight`] on a chosen path.
pub fn conv1d_backward_weight_via(
    gpu: &Gpu,
    path: Path,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
) -> Result<Tensor> {
    let d = dims(x, w)?;
    check_dy(d, dy)?;
    if path == Path::Matmul {
        return backward_weight_matmul(gpu, d, x, dy);
    }
    let dw = gpu.empty(w.shape());
    let kernel = SHADER.kernel("backward_weight");
    let tile = tile(gpu, kernel)?;
    let (xi, yi) = (d.cin * d.t, d.cout * d.t);
    for_each_chunk(gpu, d, |b0, n| {
        // Forward, input and weight gradients alike: Cout·Cin·k multiply-adds per frame.
        gpu.count_flops(2 * (n * d.cout * d.cin * d.k * d.t) as u64);
        gpu.launch(
            kernel,
            &[
                (0, x.range(b0 * xi, n * xi)),
                (3, dy.range(b0 * yi, n * yi)),
                (4, dw.arg()),
            ],
            // Launches after the first add their items' sums to the first's.
            &params(d, n, b0 > 0),
            [
                (d.cin as u32).div_ceil(tile),
                (d.cout as u32).div_ceil(tile),
                d.k as u32,
            ],
        )
    })?;
    Ok(dw)
}

/// dbias [Cout], summed over batch and time.
pub fn conv1d_backward_bias(gpu: &Gpu, dy: &Tensor) -> Result<Tensor> {
    let s = dy.shape();
    if s.len() != 3 || s.contains(&0) {
        return Err(GpuError::Shape {
            op: "conv1d_backward",
            message: format!("output gradient {s:?} must be [B, Cout, T]"),
        });
    }
    let d = Dims {
        batch: s[0],
        cin: 0,
        cout: s[1],
        t: s[2],
        k: 1,
    };
    let db = gpu.empty(&[d.cout]);
    let kernel = SHADER.kernel("backward_bias");
    let yi = d.cout * d.t;
    for_each_chunk(gpu, d, |b0, n| {
        gpu.launch_linear(
            kernel,
            &[(3, dy.range(b0 * yi, n * yi)), (4, db.arg())],
            &params(d, n, b0 > 0),
            (d.cout as u64).div_ceil(64),
        )
    })?;
    Ok(db)
}

/// All three gradients of `conv1d(x, w) + bias`.
pub struct Conv1dGrads {
    pub dx: Tensor,
    pub dw: Tensor,
    pub db: Tensor,
}

pub fn conv1d_backward(gpu: &Gpu, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<Conv1dGrads> {
    Ok(Conv1dGrads {
        dx: conv1d_backward_input(gpu, x, w, dy)?,
        dw: conv1d_backward_weight(gpu, x, w, dy)?,
        db: conv1d_backward_bias(gpu, dy)?,
    })
}

/// f64 CPU references on row-major slices.
pub mod reference {
    use super::Dims;

    fn x_at(x: &[f64], d: Dims, b: usize, c: usize, pos: isize) -> f64 {
        if pos < 0 || pos >= d.t as isize {
            0.0
        } else {
            x[(b * d.cin + c) * d.t + pos as usize]
        }
    }

    pub fn conv1d(x: &[f64], w: &[f64], bias: &[f64], d: Dims) -> Vec<f64> {
        let h = (d.k / 2) as isize;
        let mut y = vec![0.0; d.batch * d.cout * d.t];
        for b in 0..d.batch {
            for o in 0..d.cout {
                for t in 0..d.t {
                    let mut s = bias[o];
                    for c in 0..d.cin {
                        for j in 0..d.k {
                            s += w[(o * d.cin + c) * d.k + j]
                                * x_at(x, d, b, c, t as isize + j as isize - h);
                        }
                    }
                    y[(b * d.cout + o) * d.t + t] = s;
                }
            }
        }
        y
    }

    /// (dx, dw, db) given the output gradient dy.
    pub fn conv1d_backward(
        x: &[f64],
        w: &[f64],
        dy: &[f64],
        d: Dims,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let h = (d.k / 2) as isize;
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; d.cout];
        for b in 0..d.batch {
            for o in 0..d.cout {
                for t in 0..d.t {
                    let g = dy[(b * d.cout + o) * d.t + t];
                    db[o] += g;
                    for c in 0..d.cin {
                        for j in 0..d.k {
                            let pos = t as isize + j as isize - h;
                            if pos < 0 || pos >= d.t as isize {
                                continue;
                            }
                            let xi = (b * d.cin + c) * d.t + pos as usize;
                            let wi = (o * d.cin + c) * d.k + j;
                            dx[xi] += g * w[wi];
                            dw[wi] += g * x[xi];
                        }
                    }
                }
            }
        }
        (dx, dw, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, finite_difference, gpu, random_vec, to_f64, Tolerance,
    };

    fn check_case(gpu: &Gpu, d: Dims, seed: u64) {
        let xv = random_vec(d.batch * d.cin * d.t, seed);
        let wv = random_vec(d.cout * d.cin * d.k, seed + 1);
        let bv = random_vec(d.cout, seed + 2);
        let gv = random_vec(d.batch * d.cout * d.t, seed + 3);
        let x = gpu.upload(&xv, &[d.batch, d.cin, d.t]).unwrap();
        let w = gpu.upload(&wv, &[d.cout, d.cin, d.k]).unwrap();
        let b = gpu.upload(&bv, &[d.cout]).unwrap();
        let g = gpu.upload(&gv, &[d.batch, d.cout, d.t]).unwrap();
        let y = conv1d(gpu, &x, &w, &b).unwrap();
        let grads = conv1d_backward(gpu, &x, &w, &g).unwrap();
        let (x64, w64, g64) = (to_f64(&xv), to_f64(&wv), to_f64(&gv));
        let what = format!("conv1d {d:?}");
        assert_close(
            &gpu.read(&y).unwrap(),
            &reference::conv1d(&x64, &w64, &to_f64(&bv), d),
            Tolerance::ACCUMULATION,
            &what,
        );
        let (dx, dw, db) = reference::conv1d_backward(&x64, &w64, &g64, d);
        for (got, want, name) in [
            (&grads.dx, dx, "dx"),
            (&grads.dw, dw, "dw"),
            (&grads.db, db, "db"),
        ] {
            assert_close(
                &gpu.read(got).unwrap(),
                &want,
                Tolerance::ACCUMULATION,
                &format!("{what}: {name}"),
            );
        }
    }

    fn dims_of(batch: usize, cin: usize, cout: usize, t: usize, k: usize) -> Dims {
        Dims {
            batch,
            cin,
            cout,
            t,
            k,
        }
    }

    #[test]
    fn forward_and_backward_match_reference() {
        let gpu = gpu();
        for (i, d) in [
            dims_of(1, 1, 1, 1, 1),
            dims_of(1, 1, 1, 1, 3), // the whole kernel hangs over the padding
            dims_of(2, 3, 5, 7, 3),
            dims_of(3, 16, 8, 33, 3),
            dims_of(1, 2, 3, 10, 5),
            dims_of(2, 7, 9, 130, 1), // 1×1 conv, T not a multiple of the tile
            dims_of(2, 128, 64, 45, 3), // Q/K: D = 128 → 64
            dims_of(4, 3, 2, 316, 3), // long time axis: 1264-term weight sums
            dims_of(1, 200, 3, 5, 1), // N = 200 input channels
        ]
        .into_iter()
        .enumerate()
        {
            check_case(gpu, d, 900 + 10 * i as u64);
        }
    }

    #[test]
    fn split_launches_match_reference() {
        // 256-value bindings: 8 items of 2×8 inputs / 3×8 outputs per launch
        // (offsets 128 and 192: aligned), 20 items in three launches, so the
        // weight and bias gradients accumulate across launches.
        let gpu = crate::check::gpu_with_binding_limit(1024);
        let ((), trace) = gpu.traced(|| check_case(gpu, dims_of(20, 2, 3, 8, 3), 77));
        assert_eq!(
            crate::check::dispatches(&trace, "conv1d::forward").len(),
            3,
            "{trace:?}"
        );
    }

    /// Runs `check_case` traced; asserts each product took the path its
    /// selector names (the matmul path: its layout kernels and matmul
    /// dispatches; the direct path: the convolution kernel) and returns
    /// the trace.
    fn check_traced(gpu: &Gpu, d: Dims, seed: u64) -> Vec<crate::gpu::Recorded> {
        let paths = [
            forward_path(gpu, d),
            backward_input_path(gpu, d),
            backward_weight_path(gpu, d),
        ];
        let ((), trace) = gpu.traced(|| check_case(gpu, d, seed));
        let ran = |name: &str| !crate::check::dispatches(&trace, name).is_empty();
        let markers = [
            ("conv1d::forward", "conv1d::bias_rows"),
            ("conv1d::backward_input", "conv1d::flip_weight"),
            ("conv1d::backward_weight", "conv1d::im2col_t"),
        ];
        for (path, (direct, layout)) in paths.into_iter().zip(markers) {
            assert_eq!(
                ran(direct),
                path == Path::Direct,
                "{d:?} {path:?}: {trace:?}"
            );
            assert_eq!(
                ran(layout),
                path == Path::Matmul,
                "{d:?} {path:?}: {trace:?}"
            );
        }
        if paths.contains(&Path::Matmul) {
            let vec4 = ["matmul_nn_vec4", "matmul_tn_vec4"]
                .iter()
                .any(|k| ran(&format!("matmul::{k}")));
            assert!(vec4, "{d:?}: no vec4 matmul in {trace:?}");
        }
        trace
    }

    #[test]
    fn matmul_path_matches_reference() {
        let gpu = gpu();
        // (shape, [forward, input gradient, weight gradient] on the matmul path?)
        for (i, (d, want)) in [
            // one vector of time steps: both paddings inside it
            (dims_of(1, 4, 4, 4, 3), [true, true, true]),
            // odd Cout: the input gradient's K = Cout·k = 15 and the weight
            // gradient's M = 5 are not multiples of 4, so those run direct
            (dims_of(3, 4, 5, 12, 3), [true, false, false]),
            (dims_of(2, 8, 12, 36, 3), [true, true, true]),
            // k = 5 (taps ±2), odd batch
            (dims_of(3, 12, 8, 20, 5), [true, true, true]),
            // k = 9 > T: taps past both ends
            (dims_of(1, 4, 4, 8, 9), [true, true, true]),
            // Q/K (D = 128 → 64) at T = 44
            (dims_of(2, 128, 64, 44, 3), [true, true, true]),
            // the calibration's 1×1 output convolution (no im2col pass)
            (dims_of(2, 128, 128, 32, 1), [true, true, true]),
            // Cin·k = 9: a direct forward and weight gradient
            (dims_of(2, 9, 20, 16, 1), [false, true, false]),
            // more output channels than one 64-row matmul tile
            (dims_of(2, 4, 68, 8, 3), [true, true, true]),
            // B·T = 8,960 rows into a 4 x 12 weight gradient: matmul's split-K
            (dims_of(70, 4, 4, 128, 3), [true, true, true]),
        ]
        .into_iter()
        .enumerate()
        {
            let got = [
                forward_path(gpu, d) == Path::Matmul,
                backward_input_path(gpu, d) == Path::Matmul,
                backward_weight_path(gpu, d) == Path::Matmul,
            ];
            assert_eq!(got, want, "{d:?}");
            check_traced(gpu, d, 1300 + 10 * i as u64);
        }
    }

    #[test]
    fn direct_path_covers_the_other_shapes() {
        let gpu = gpu();
        for (i, d) in [dims_of(3, 16, 8, 33, 3), dims_of(2, 3, 5, 7, 3)]
            .into_iter()
            .enumerate()
        {
            assert_eq!(forward_path(gpu, d), Path::Direct);
            assert_eq!(backward_input_path(gpu, d), Path::Direct);
            assert_eq!(backward_weight_path(gpu, d), Path::Direct);
            check_traced(gpu, d, 1500 + 10 * i as u64);
        }
    }

    #[test]
    fn both_paths_agree_on_the_same_inputs() {
        // The calibration's V shape at a shorter T: each path on request.
        let gpu = gpu();
        let d = dims_of(2, 128, 128, 16, 3);
        let x = gpu
            .upload(&random_vec(2 * 128 * 16, 1), &[2, 128, 16])
            .unwrap();
        let w = gpu
            .upload(&random_vec(128 * 128 * 3, 2), &[128, 128, 3])
            .unwrap();
        let b = gpu.upload(&random_vec(128, 3), &[128]).unwrap();
        let g = gpu
            .upload(&random_vec(2 * 128 * 16, 4), &[2, 128, 16])
            .unwrap();
        let run = |path| {
            let out = [
                conv1d_via(gpu, path, &x, &w, &b).unwrap(),
                conv1d_backward_input_via(gpu, path, &x, &w, &g).unwrap(),
                conv1d_backward_weight_via(gpu, path, &x, &w, &g).unwrap(),
            ];
            out.map(|t| to_f64(&gpu.read(&t).unwrap()))
        };
        let ((direct, via_matmul), trace) = gpu.traced(|| (run(Path::Direct), run(Path::Matmul)));
        for name in [
            "conv1d::forward",
            "conv1d::backward_weight",
            "matmul::matmul_tn_vec4",
        ] {
            assert!(!crate::check::dispatches(&trace, name).is_empty(), "{name}");
        }
        for ((a, b), what) in direct.iter().zip(&via_matmul).zip(["y", "dx", "dw"]) {
            let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            assert_close(&a32, b, Tolerance::ACCUMULATION, &format!("{d:?}: {what}"));
        }
    }

    #[test]
    fn operands_too_large_for_a_binding_take_the_direct_path() {
        // 2 KiB (512-value) bindings: the im2col matrix of 24 items of
        // 4 x 8 (2,304 values) does not fit, so all three products run
        // direct, x (768 values) split over two launches; 4 items (384) fit.
        let gpu = crate::check::gpu_with_binding_limit(2048);
        let d = dims_of(24, 4, 4, 8, 3);
        assert_eq!(forward_path(gpu, d), Path::Direct);
        assert_eq!(backward_input_path(gpu, d), Path::Direct);
        assert_eq!(backward_weight_path(gpu, d), Path::Direct);
        let trace = check_traced(gpu, d, 1700);
        assert_eq!(crate::check::dispatches(&trace, "conv1d::forward").len(), 2);
        let small = dims_of(4, 4, 4, 8, 3);
        assert_eq!(forward_path(gpu, small), Path::Matmul);
        check_traced(gpu, small, 1710);
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let d = dims_of(2, 3, 2, 5, 3);
        let x = to_f64(&random_vec(d.batch * d.cin * d.t, 1));
        let w = to_f64(&random_vec(d.cout * d.cin * d.k, 2));
        let b = to_f64(&random_vec(d.cout, 3));
        let g = to_f64(&random_vec(d.batch * d.cout * d.t, 4));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            reference::conv1d(x, w, b, d)
                .iter()
                .zip(&g)
                .map(|(y, g)| y * g)
                .sum()
        };
        let (dx, dw, db) = reference::conv1d_backward(&x, &w, &g, d);
        assert_gradient(&dx, &finite_difference(&x, |v| loss(v, &w, &b)), "dx");
        assert_gradient(&dw, &finite_difference(&w, |v| loss(&x, v, &b)), "dw");
        assert_gradient(&db, &finite_difference(&b, |v| loss(&x, &w, v)), "db");
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let x = gpu.zeros(&[2, 3, 5]).unwrap();
        let b = gpu.zeros(&[4]).unwrap();
        for (w_shape, needle) in [
            (vec![4, 2, 3], "input channels"),
            (vec![4, 3, 2], "odd"),
            (vec![4, 3], "[Cout, Cin, k]"),
        ] {
            let w = gpu.zeros(&w_shape).unwrap();
            let e = conv1d(gpu, &x, &w, &b).unwrap_err().to_string();
            assert!(e.contains(needle), "{w_shape:?}: {e}");
        }
        let w = gpu.zeros(&[4, 3, 3]).unwrap();
        let bad_bias = gpu.zeros(&[3]).unwrap();
        assert!(conv1d(gpu, &x, &w, &bad_bias).is_err());
        let bad_dy = gpu.zeros(&[2, 4, 6]).unwrap();
        assert!(conv1d_backward(gpu, &x, &w, &bad_dy).is_err());
    }
}
