//! Batched matrix multiply with optional transposes (`shaders/matmul.wgsl`).
//!
//! `a` is [.., rows, cols] with op(A) = M x K; `b` likewise with op(B) = K x N.
//! A 2-D operand is broadcast over the other's batch (stride 0). The GNN's
//! Â·H·W and the attention products are all built on this kernel, and so are
//! the backwards (dA = dC·op(B)ᵀ, dB = op(A)ᵀ·dC, see [`matmul_backward`]).
//!
//! Work that does not fit in one storage binding is split: over batch items
//! first (at offsets that respect the storage offset alignment), then over
//! row blocks of a single large matrix.

use crate::gpu::{Gpu, GpuError, Result, Tensor, Tiling};

const SHADER: crate::gpu::Shader = crate::shader!("matmul");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    a_stride: u32,
    b_stride: u32,
    c_stride: u32,
    alpha: f32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
}

/// Options for one product.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spec {
    pub trans_a: bool,
    pub trans_b: bool,
    /// Add into the existing contents of C instead of overwriting it.
    pub accumulate: bool,
}

impl Spec {
    pub const NN: Spec = Spec {
        trans_a: false,
        trans_b: false,
        accumulate: false,
    };
    pub const NT: Spec = Spec {
        trans_a: false,
        trans_b: true,
        accumulate: false,
    };
    pub const TN: Spec = Spec {
        trans_a: true,
        trans_b: false,
        accumulate: false,
    };
    pub fn accumulate(self) -> Spec {
        Spec {
            accumulate: true,
            ..self
        }
    }
}

/// Batch count, M, K (for A) or K, N (for B) of an operand.
fn dims(t: &Tensor, transposed: bool) -> Result<(usize, usize, usize)> {
    let s = t.shape();
    if s.len() < 2 {
        return Err(GpuError::Shape {
            op: "matmul",
            message: format!("operand {s:?} must have at least 2 dimensions"),
        });
    }
    let (r, c) = (s[s.len() - 2], s[s.len() - 1]);
    let batch: usize = s[..s.len() - 2].iter().product();
    Ok(if transposed {
        (batch, c, r)
    } else {
        (batch, r, c)
    })
}

/// Output shape and sizes of `op(a)·op(b)`.
pub fn output_shape(
    a: &Tensor,
    b: &Tensor,
    spec: Spec,
) -> Result<(Vec<usize>, usize, usize, usize, usize)> {
    let (ba, m, ka) = dims(a, spec.trans_a)?;
    let (bb, kb, n) = dims(b, spec.trans_b)?;
    if ka != kb {
        return Err(GpuError::Shape {
            op: "matmul",
            message: format!(
                "inner dimensions differ: {:?}{} · {:?}{}",
                a.shape(),
                if spec.trans_a { "ᵀ" } else { "" },
                b.shape(),
                if spec.trans_b { "ᵀ" } else { "" }
            ),
        });
    }
    let batch = ba.max(bb);
    let broadcast_ok = (ba == bb) || (a.shape().len() == 2) || (b.shape().len() == 2);
    if !broadcast_ok {
        return Err(GpuError::Shape {
            op: "matmul",
            message: format!("batch sizes differ: {:?} · {:?}", a.shape(), b.shape()),
        });
    }
    let lead = if a.shape().len() >= b.shape().len() {
        &a.shape()[..a.shape().len() - 2]
    } else {
        &b.shape()[..b.shape().len() - 2]
    };
    let mut shape = lead.to_vec();
    shape.extend([m, n]);
    Ok((shape, batch, m, n, ka))
}

/// `op(a)·op(b)` into a new tensor.
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor, spec: Spec) -> Result<Tensor> {
    let (shape, ..) = output_shape(
        a,
        b,
        Spec {
            accumulate: false,
            ..spec
        },
    )?;
    let c = gpu.empty(&shape);
    matmul_into(
        gpu,
        a,
        b,
        &c,
        Spec {
            accumulate: false,
            ..spec
        },
        1.0,
    )?;
    Ok(c)
}

/// The entry point for a layout on a device with the given tiling. With
/// workgroup-memory tiling one entry point serves every layout. With
/// register tiling, the vec4 fast paths need 16-byte-aligned rows and
/// offsets; every range offset the launcher binds is a multiple of K, of N,
/// of M·K or of K·N, so these divisibility conditions are enough. The scalar
/// `matmul` covers every other case.
pub fn kernel_entry(spec: Spec, m: usize, n: usize, k: usize, tiling: Tiling) -> &'static str {
    if tiling == Tiling::Workgroup {
        return "matmul_workgroup";
    }
    match (spec.trans_a, spec.trans_b) {
        (false, false) if k % 4 == 0 && n % 4 == 0 => "matmul_nn_vec4",
        (false, true) if k % 4 == 0 => "matmul_nt_vec4",
        (true, false) if m % 4 == 0 && n % 4 == 0 && k % 4 == 0 => "matmul_tn_vec4",
        _ => "matmul",
    }
}

/// `c = alpha·op(a)·op(b)` (or `c += ...` with `spec.accumulate`).
pub fn matmul_into(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    spec: Spec,
    alpha: f32,
) -> Result<()> {
    let (shape, batch, m, n, k) = output_shape(a, b, spec)?;
    if c.len() != shape.iter().product::<usize>() {
        return Err(GpuError::Shape {
            op: "matmul",
            message: format!("output {:?}, expected {shape:?}", c.shape()),
        });
    }
    if let Some(chunks) = split_k_chunks(batch, m, n, k, spec) {
        return split_k(gpu, a, b, c, spec, alpha, (m, n, k), chunks);
    }
    let a_stride = if a.shape().len() == 2 { 0 } else { m * k };
    let b_stride = if b.shape().len() == 2 { 0 } else { k * n };
    let c_stride = m * n;
    let flags = spec.trans_a as u32 | (spec.trans_b as u32) << 1 | (spec.accumulate as u32) << 2;
    let planner = gpu.planner("matmul");
    let entry = kernel_entry(spec, m, n, k, gpu.tiling());
    let kernel = SHADER.kernel(entry);
    // The output tile one workgroup computes, from the shader's own sizes.
    let compiled = gpu.kernel(kernel)?;
    let [wg_x, wg_y, _] = compiled.workgroup_size;
    let (rows_name, cols_name) = match entry {
        "matmul" => ("ROWS_PER_INVOCATION", "COLS_PER_INVOCATION"),
        "matmul_workgroup" => ("TILED_ROWS_PER_INVOCATION", "TILED_COLS_PER_INVOCATION"),
        _ => ("VEC4_ROWS_PER_INVOCATION", "COLS_PER_INVOCATION"),
    };
    let tile_cols = wg_x * compiled.constant(cols_name)?;
    let tile_rows = wg_y * compiled.constant(rows_name)?;
    // B is never split inside a matrix: each launch binds one of its
    // matrices (plus the alignment remainder) or the broadcast one whole.
    let b_whole = if b_stride > 0 {
        k * n + planner.align_elems() - 1
    } else {
        b.len()
    };
    planner.fits(
        &format!("one B matrix ({k}x{n})"),
        b_whole,
        "B is bound whole per launch; only the batch and A's rows are split",
    )?;
    let launch = |a_rng: (usize, usize),
                  b_rng: (usize, usize),
                  c_rng: (usize, usize),
                  m: usize,
                  batched: bool,
                  count: usize| {
        let (a_arg, a_off) = planner.bind(a, a_rng.0..a_rng.0 + a_rng.1);
        let (b_arg, b_off) = planner.bind(b, b_rng.0..b_rng.0 + b_rng.1);
        let (c_arg, c_off) = planner.bind(c, c_rng.0..c_rng.0 + c_rng.1);
        let p = Params {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            flags,
            a_stride: if batched { a_stride as u32 } else { 0 },
            b_stride: if batched { b_stride as u32 } else { 0 },
            c_stride: c_stride as u32,
            alpha,
            a_off,
            b_off,
            c_off,
        };
        gpu.count_flops(2 * (m * n * k * count) as u64);
        gpu.launch(
            kernel,
            &[(0, a_arg), (1, b_arg), (2, c_arg)],
            &p,
            [
                (n as u32).div_ceil(tile_cols),
                (m as u32).div_ceil(tile_rows),
                count as u32,
            ],
        )
    };
    // The range of operand `t` (batch stride `s`) covering items start..start+count.
    let span = |s: usize, whole: usize, start: usize, count: usize| {
        if s > 0 {
            (start * s, count * s)
        } else {
            (0, whole)
        }
    };

    // A grid dimension holds at most 65,535 workgroups: columns cannot be
    // split, rows can (below), the batch is capped per launch.
    let max_groups = crate::gpu::MAX_GROUPS_PER_DIM as usize;
    if n.div_ceil(tile_cols as usize) > max_groups {
        return Err(GpuError::Shape {
            op: "matmul",
            message: format!(
                "N = {n} columns need more than {max_groups} workgroups of {tile_cols} columns"
            ),
        });
    }
    let rows_fit_grid = m.div_ceil(tile_rows as usize) <= max_groups;
    // Over batch items first, when one item of every batched operand (and
    // every broadcast operand whole) fits in a binding, and M in one grid.
    let broadcast_fits = (a_stride > 0 || a.len() <= planner.limit_elems())
        && (b_stride > 0 || b.len() <= planner.limit_elems());
    let batches = planner
        .offset_rows(batch, &[a_stride, b_stride, c_stride])
        .ok()
        .filter(|_| broadcast_fits && rows_fit_grid);
    if let Some(batches) = batches {
        for items in batches.at_most(crate::gpu::MAX_GROUPS_PER_DIM as usize) {
            let (start, count) = (items.start, items.len());
            launch(
                span(a_stride, a.len(), start, count),
                span(b_stride, b.len(), start, count),
                (start * c_stride, count * c_stride),
                m,
                true,
                count,
            )?;
        }
        return Ok(());
    }

    // One matrix is larger than a binding, or taller than one grid: split
    // its rows (A must be stored row-major, i.e. not transposed, so a row
    // block is contiguous).
    if spec.trans_a {
        return Err(GpuError::Shape {
            op: "matmul",
            message: format!(
                "a transposed A of {m}x{k} is too large for one launch and cannot be split by rows; transpose it first"
            ),
        });
    }
    let rows = planner
        .offset_rows(m, &[k, n])?
        .at_most(max_groups * tile_rows as usize);
    for item in 0..batch {
        for block in rows.clone() {
            let (r0, mr) = (block.start, block.len());
            let a_rng = (
                if a_stride > 0 { item * a_stride } else { 0 } + r0 * k,
                mr * k,
            );
            launch(
                a_rng,
                span(b_stride, b.len(), item, 1),
                (item * c_stride + r0 * n, mr * n),
                mr,
                false,
                1,
            )?;
        }
    }
    Ok(())
}

/// Products with a small output and a long contraction (the weight and
/// bias gradients of every linear layer: [F, F] or [1, F] summed over
/// B·T·N rows, K up to 800,000 at ABIDE) would get one or two workgroups,
/// each looping over all of K: one CPU thread or one GPU core doing the
/// whole product. Splitting K into chunks computed as a batch of partial
/// products, then summed by a second (small) product, puts every core to
/// work. Applies to single products whose K chunks are contiguous in both
/// operands: A stored [K, M] (transposed) or a single row, B stored [K, N]
/// or a single column.
const SPLIT_K_MIN: usize = 8192;
/// Rows of K per chunk, about: long enough that the partials stay small.
const SPLIT_K_CHUNK: usize = 2048;

/// The number of K chunks for a product, or None to run it whole.
fn split_k_chunks(batch: usize, m: usize, n: usize, k: usize, spec: Spec) -> Option<usize> {
    let contiguous = (spec.trans_a || m == 1) && (!spec.trans_b || n == 1);
    // Output tiles of 32x32, about: a product with many already has work
    // for every core.
    let tiles = m.div_ceil(32) * n.div_ceil(32);
    if batch != 1 || !contiguous || tiles >= 16 || k < SPLIT_K_MIN {
        return None;
    }
    // The most chunks up to K / SPLIT_K_CHUNK (at most 256) that divide K
    // exactly, so each chunk is one batch item of equal length.
    let target = (k / SPLIT_K_CHUNK).clamp(2, 256);
    (2..=target).rev().find(|s| k % s == 0)
}

/// `c = alpha·op(a)·op(b)` (+ c) as `chunks` partial products over
/// contiguous K ranges, a batch [chunks, M, N], summed by ones[1, chunks]·partials.
#[allow(clippy::too_many_arguments)]
fn split_k(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    spec: Spec,
    alpha: f32,
    (m, n, k): (usize, usize, usize),
    chunks: usize,
) -> Result<()> {
    let kc = k / chunks;
    // A chunk of op(A) = M x kc: rows of A stored [K, M], or a slice of the single row.
    let a3 = if spec.trans_a {
        a.reshape(&[chunks, kc, m])?
    } else {
        a.reshape(&[chunks, 1, kc])?
    };
    let b3 = if spec.trans_b {
        b.reshape(&[chunks, 1, kc])?
    } else {
        b.reshape(&[chunks, kc, n])?
    };
    let partial = gpu.empty(&[chunks, m, n]);
    matmul_into(
        gpu,
        &a3,
        &b3,
        &partial,
        Spec {
            accumulate: false,
            ..spec
        },
        1.0,
    )?;
    let ones = gpu.full(&[1, chunks], 1.0)?;
    let reduce = Spec {
        accumulate: spec.accumulate,
        ..Spec::NN
    };
    matmul_into(
        gpu,
        &ones,
        &partial.reshape(&[chunks, m * n])?,
        &c.reshape(&[1, m * n])?,
        reduce,
        alpha,
    )
}

/// Gradients of `c = op(a)·op(b)` given `dc`. A broadcast (2-D) operand's
/// gradient is summed over the batch, which the accumulate flag does for free
/// when the batch is folded into M (see the GCN weight gradient).
pub fn matmul_backward(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    dc: &Tensor,
    spec: Spec,
) -> Result<(Tensor, Tensor)> {
    match matmul_backward_selected(gpu, a, b, dc, spec, true, true)? {
        (Some(da), Some(db)) => Ok((da, db)),
        _ => Err(GpuError::Shape {
            op: "matmul_backward",
            message: "a requested gradient was not produced".into(),
        }),
    }
}

/// Like [`matmul_backward`], computing only the gradients asked for (a
/// constant operand, such as a normalized adjacency, needs none).
pub fn matmul_backward_selected(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    dc: &Tensor,
    spec: Spec,
    want_a: bool,
    want_b: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let spec_of = |trans_a, trans_b| Spec {
        trans_a,
        trans_b,
        accumulate: false,
    };
    // dA: op(A) = dC·op(B)ᵀ, so A = dC·op(B)ᵀ, or A = op(B)·dCᵀ when A is stored transposed.
    let da = match (want_a, spec.trans_a) {
        (false, _) => None,
        (true, false) => Some(grad_operand(gpu, dc, b, spec_of(false, !spec.trans_b), a)?),
        (true, true) => Some(grad_operand(gpu, b, dc, spec_of(spec.trans_b, true), a)?),
    };
    // dB: op(B) = op(A)ᵀ·dC, so B = op(A)ᵀ·dC, or B = dCᵀ·op(A) when B is stored transposed.
    let db = match (want_b, spec.trans_b) {
        (false, _) => None,
        (true, false) => Some(grad_operand(gpu, a, dc, spec_of(!spec.trans_a, false), b)?),
        (true, true) => Some(grad_operand(gpu, dc, a, spec_of(true, spec.trans_a), b)?),
    };
    Ok((da, db))
}

/// Computes x·y (per spec) into a tensor shaped like `like`; when `like` is
/// 2-D but the product is batched, sums over the batch by accumulation.
fn grad_operand(gpu: &Gpu, x: &Tensor, y: &Tensor, spec: Spec, like: &Tensor) -> Result<Tensor> {
    let (shape, batch, ..) = output_shape(x, y, spec)?;
    if like.shape().len() == 2 && batch > 1 && shape.len() > 2 {
        // When the contraction runs over both operands' rows (xᵀ·y), the batch
        // sum is one product of the row-stacked operands: fold batch into rows.
        if spec.trans_a && !spec.trans_b && x.shape().len() > 2 && y.shape().len() > 2 {
            let xs = x.shape();
            let ys = y.shape();
            let x2 = x.reshape(&[x.len() / xs[xs.len() - 1], xs[xs.len() - 1]])?;
            let y2 = y.reshape(&[y.len() / ys[ys.len() - 1], ys[ys.len() - 1]])?;
            return matmul(gpu, &x2, &y2, spec);
        }
        let out = gpu.zeros(like.shape())?;
        // Sum over the batch: accumulate each batch item's product.
        let (_, m, kx) = dims(x, spec.trans_a)?;
        let (_, _, n) = dims(y, spec.trans_b)?;
        let xs = if x.shape().len() == 2 { 0 } else { m * kx };
        let ys = if y.shape().len() == 2 { 0 } else { kx * n };
        for i in 0..batch {
            // Views of one batch item as 2-D tensors share the buffer; ranges
            // at unaligned offsets are not bindable, so copy each item out.
            let xi = item(gpu, x, i, xs)?;
            let yi = item(gpu, y, i, ys)?;
            matmul_into(gpu, &xi, &yi, &out, spec.accumulate(), 1.0)?;
        }
        return Ok(out);
    }
    let out = matmul(gpu, x, y, spec)?;
    out.reshape(like.shape())
}

fn item(gpu: &Gpu, t: &Tensor, i: usize, stride: usize) -> Result<Tensor> {
    let s = t.shape();
    let two_d = &s[s.len() - 2..];
    if stride == 0 {
        return t.reshape(two_d);
    }
    let out = gpu.empty(two_d);
    crate::ops::elementwise::copy_from(gpu, t, i * stride, &out)?;
    Ok(out)
}

/// f64 CPU reference: batched `op(a)·op(b)` with the same broadcasting rules.
pub mod reference {
    use super::Spec;
    use ndarray::{Array2, Array3, Axis};

    /// a: [batch_a, r, c] (batch_a = 1 broadcasts), b likewise.
    pub fn matmul(a: &Array3<f64>, b: &Array3<f64>, spec: Spec) -> Array3<f64> {
        let batch = a.len_of(Axis(0)).max(b.len_of(Axis(0)));
        let pick = |t: &Array3<f64>, i: usize, tr: bool| -> Array2<f64> {
            let m = t
                .index_axis(Axis(0), if t.len_of(Axis(0)) == 1 { 0 } else { i })
                .to_owned();
            if tr {
                m.t().to_owned()
            } else {
                m
            }
        };
        let first = pick(a, 0, spec.trans_a).dot(&pick(b, 0, spec.trans_b));
        let mut out = Array3::zeros((batch, first.nrows(), first.ncols()));
        for i in 0..batch {
            out.index_axis_mut(Axis(0), i)
                .assign(&pick(a, i, spec.trans_a).dot(&pick(b, i, spec.trans_b)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, finite_difference, gpu, poisoned, random_vec, Tolerance,
    };
    use ndarray::Array3;

    fn arr(v: &[f32], shape: (usize, usize, usize)) -> Array3<f64> {
        Array3::from_shape_vec(shape, v.iter().map(|&x| x as f64).collect()).unwrap()
    }

    /// (batch_a, batch_b, M, K, N) with every transpose combination.
    const CASES: &[(usize, usize, usize, usize, usize)] = &[
        (1, 1, 1, 1, 1),
        (1, 1, 5, 3, 7),
        (3, 3, 33, 17, 31),
        (2, 1, 200, 5, 64), // shared weight broadcast over the batch
        (1, 4, 22, 22, 9),  // shared adjacency broadcast
        (2, 2, 64, 130, 65),
        // K and N multiples of 4 take the NN vec4 path, K alone the NT one,
        // M, N and K the TN one (the test asserts which ran).
        (2, 1, 37, 8, 12),
        (3, 3, 33, 16, 20),
        (1, 1, 1, 4, 4),
        (2, 2, 36, 12, 20),
        (1, 1, 68, 132, 9),
        (3, 1, 4, 4, 4),
    ];

    /// The entry points each tiling's launcher may pick.
    fn entries(tiling: Tiling) -> &'static [&'static str] {
        match tiling {
            Tiling::Registers => &[
                "matmul::matmul",
                "matmul::matmul_nn_vec4",
                "matmul::matmul_nt_vec4",
                "matmul::matmul_tn_vec4",
            ],
            Tiling::Workgroup => &["matmul::matmul_workgroup"],
        }
    }

    const TILINGS: [Tiling; 2] = [Tiling::Registers, Tiling::Workgroup];

    /// Every case and layout on a device of each tiling, whatever the
    /// adapter type would choose: the workgroup-memory kernel written for
    /// GPUs is proven on lavapipe here.
    #[test]
    fn matmul_matches_reference_for_all_transposes() {
        for tiling in TILINGS {
            let gpu = crate::check::gpu_with_tiling(tiling);
            let mut ran = std::collections::BTreeSet::new();
            for (ci, &(ba, bb, m, k, n)) in CASES.iter().enumerate() {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    let spec = Spec {
                        trans_a: ta,
                        trans_b: tb,
                        accumulate: false,
                    };
                    let a_shape = if ta { (ba, k, m) } else { (ba, m, k) };
                    let b_shape = if tb { (bb, n, k) } else { (bb, k, n) };
                    let av = random_vec(ba * m * k, 100 + ci as u64);
                    let bv = random_vec(bb * k * n, 200 + ci as u64);
                    let shape_of = |bt: usize, s: (usize, usize, usize)| {
                        if bt == 1 && ba != bb {
                            vec![s.1, s.2]
                        } else {
                            vec![bt, s.1, s.2]
                        }
                    };
                    let ta_t = gpu.upload(&av, &shape_of(ba, a_shape)).unwrap();
                    let tb_t = gpu.upload(&bv, &shape_of(bb, b_shape)).unwrap();
                    let (out_shape, ..) = output_shape(&ta_t, &tb_t, spec).unwrap();
                    let c = poisoned(gpu, &out_shape);
                    let ((), trace) =
                        gpu.traced(|| matmul_into(gpu, &ta_t, &tb_t, &c, spec, 1.0).unwrap());
                    let entry = kernel_entry(spec, m, n, k, tiling);
                    ran.insert(format!("matmul::{entry}"));
                    assert!(
                        !crate::check::dispatches(&trace, &format!("matmul::{entry}")).is_empty(),
                        "{tiling:?} case {ci} ta={ta} tb={tb}: {entry} did not run: {trace:?}"
                    );
                    let want = reference::matmul(&arr(&av, a_shape), &arr(&bv, b_shape), spec);
                    assert_close(
                        &gpu.read(&c).unwrap(),
                        want.as_slice().unwrap(),
                        Tolerance::ACCUMULATION,
                        &format!("{tiling:?} matmul case {ci} ta={ta} tb={tb}"),
                    );
                }
            }
            let every: std::collections::BTreeSet<String> =
                entries(tiling).iter().map(|e| e.to_string()).collect();
            assert_eq!(
                ran, every,
                "the cases must reach every entry point of {tiling:?}"
            );
        }
    }

    #[test]
    fn the_tiling_follows_the_adapter_type_unless_overridden() {
        assert_eq!(
            Tiling::for_adapter(wgpu::DeviceType::Cpu),
            Tiling::Registers
        );
        for t in [
            wgpu::DeviceType::DiscreteGpu,
            wgpu::DeviceType::IntegratedGpu,
            wgpu::DeviceType::VirtualGpu,
            wgpu::DeviceType::Other,
        ] {
            assert_eq!(Tiling::for_adapter(t), Tiling::Workgroup, "{t:?}");
        }
        assert_eq!(Tiling::parse(" workgroup\n"), Some(Tiling::Workgroup));
        assert_eq!(Tiling::parse("registers"), Some(Tiling::Registers));
        assert_eq!(Tiling::parse("shared"), None);
        let e = crate::gpu::GpuError::Environment {
            name: crate::gpu::TILING_ENV,
            value: "shared".into(),
            expected: "`registers` or `workgroup`",
        }
        .to_string();
        assert_eq!(
            e,
            "STPTF_TILING=\"shared\": expected `registers` or `workgroup`"
        );
        // The shared device took the adapter's choice or the variable's.
        let shared = gpu();
        let want = match std::env::var(crate::gpu::TILING_ENV) {
            Ok(v) => Tiling::parse(&v).unwrap(),
            Err(_) => Tiling::for_adapter(shared.report.info.device_type),
        };
        assert_eq!(shared.tiling(), want);
    }

    #[test]
    fn long_contractions_split_k_and_match_the_reference() {
        // (M, K, N, trans_a, trans_b): weight gradient Xᵀ·G, bias gradient
        // ones·G, a single-column B, a K with few divisors.
        let cases = [
            (12, 20_000, 8, true, false),
            (1, 50_000, 32, false, false),
            (32, 16_384, 1, true, true),
            (5, 3 * 8209, 7, true, false),
        ];
        for (ci, &(m, k, n, ta, tb, tiling)) in cases
            .iter()
            .flat_map(|&(m, k, n, ta, tb)| TILINGS.map(|t| (m, k, n, ta, tb, t)))
            .collect::<Vec<_>>()
            .iter()
            .enumerate()
        {
            let gpu = crate::check::gpu_with_tiling(tiling);
            // f32 rounding of a sum grows about as the square root of its
            // length: ACCUMULATION is for a few thousand terms, these have
            // 16k to 50k (an element with heavy cancellation in the K of
            // 24,627 was off by 1.5e-4 in the workgroup kernel).
            let tol = Tolerance::both(1e-4 * (k as f64 / 2048.0).sqrt());
            let spec = Spec {
                trans_a: ta,
                trans_b: tb,
                accumulate: false,
            };
            let chunks = split_k_chunks(1, m, n, k, spec).expect("a split case");
            assert_eq!(k % chunks, 0);
            let a_shape = if ta { (1, k, m) } else { (1, m, k) };
            let b_shape = if tb { (1, n, k) } else { (1, k, n) };
            let av = random_vec(m * k, 300 + ci as u64);
            let bv = random_vec(k * n, 400 + ci as u64);
            let cv = random_vec(m * n, 500 + ci as u64);
            let a_t = gpu.upload(&av, &[a_shape.1, a_shape.2]).unwrap();
            let b_t = gpu.upload(&bv, &[b_shape.1, b_shape.2]).unwrap();
            let prod = reference::matmul(&arr(&av, a_shape), &arr(&bv, b_shape), spec);
            // Overwrite into a poisoned output.
            let c = poisoned(gpu, &[m, n]);
            let ((), trace) = gpu.traced(|| matmul_into(gpu, &a_t, &b_t, &c, spec, 1.0).unwrap());
            let grids: Vec<[u32; 3]> = entries(tiling)
                .iter()
                .flat_map(|kname| crate::check::dispatches(&trace, kname))
                .collect();
            assert!(
                grids.iter().any(|g| g[2] as usize == chunks) && grids.len() == 2,
                "{tiling:?} case {ci}: expected the partial batch of {chunks} and the reduction, got {grids:?}"
            );
            assert_close(
                &gpu.read(&c).unwrap(),
                prod.as_slice().unwrap(),
                tol,
                &format!("{tiling:?} split-K case {ci}"),
            );
            // c = c0 - 0.5·op(A)·op(B).
            let c = gpu.upload(&cv, &[m, n]).unwrap();
            matmul_into(gpu, &a_t, &b_t, &c, spec.accumulate(), -0.5).unwrap();
            let want: Vec<f64> = prod
                .iter()
                .zip(&cv)
                .map(|(p, &c)| c as f64 - 0.5 * p)
                .collect();
            assert_close(
                &gpu.read(&c).unwrap(),
                &want,
                tol,
                &format!("{tiling:?} split-K case {ci}, accumulate"),
            );
        }
        // Batched, wide, short or non-contiguous products run whole.
        assert_eq!(split_k_chunks(2, 12, 8, 20_000, Spec::TN), None);
        assert_eq!(split_k_chunks(1, 128, 128, 20_000, Spec::TN), None);
        assert_eq!(split_k_chunks(1, 12, 8, 4_000, Spec::TN), None);
        assert_eq!(split_k_chunks(1, 12, 8, 20_000, Spec::NN), None);
    }

    #[test]
    fn accumulate_and_alpha() {
        for (m, k, n, tiling) in [(9, 4, 6), (9, 8, 12), (70, 20, 66)]
            .into_iter()
            .flat_map(|(m, k, n)| TILINGS.map(|t| (m, k, n, t)))
        {
            let gpu = crate::check::gpu_with_tiling(tiling);
            let av = random_vec(m * k, 1);
            let bv = random_vec(k * n, 2);
            let cv = random_vec(m * n, 3);
            let c = gpu.upload(&cv, &[m, n]).unwrap();
            matmul_into(
                gpu,
                &gpu.upload(&av, &[m, k]).unwrap(),
                &gpu.upload(&bv, &[k, n]).unwrap(),
                &c,
                Spec::NN.accumulate(),
                -0.5,
            )
            .unwrap();
            let prod = reference::matmul(&arr(&av, (1, m, k)), &arr(&bv, (1, k, n)), Spec::NN);
            let want: Vec<f64> = prod
                .iter()
                .zip(&cv)
                .map(|(p, &c)| c as f64 - 0.5 * p)
                .collect();
            assert_close(
                &gpu.read(&c).unwrap(),
                &want,
                Tolerance::ACCUMULATION,
                &format!("{tiling:?} accumulate {m}x{k}x{n}"),
            );
        }
    }

    #[test]
    fn backward_matches_reference_and_reference_matches_finite_differences() {
        for (ta, tb, tiling) in [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .flat_map(|(ta, tb)| TILINGS.map(|t| (ta, tb, t)))
        {
            let gpu = crate::check::gpu_with_tiling(tiling);
            let spec = Spec {
                trans_a: ta,
                trans_b: tb,
                accumulate: false,
            };
            let (batch, m, k, n) = (2, 5, 4, 3);
            let a_shape = if ta { (batch, k, m) } else { (batch, m, k) };
            let b_shape = if tb { (batch, n, k) } else { (batch, k, n) };
            let av = random_vec(batch * m * k, 11);
            let bv = random_vec(batch * k * n, 12);
            let gv = random_vec(batch * m * n, 13);
            let a64 = arr(&av, a_shape);
            let b64 = arr(&bv, b_shape);
            let g64 = arr(&gv, (batch, m, n));
            // Loss = <g, op(a)·op(b)>; its gradient in a and b by finite differences.
            let loss_a = |x: &[f64]| {
                (reference::matmul(
                    &Array3::from_shape_vec(a_shape, x.to_vec()).unwrap(),
                    &b64,
                    spec,
                ) * &g64)
                    .sum()
            };
            let loss_b = |x: &[f64]| {
                (reference::matmul(
                    &a64,
                    &Array3::from_shape_vec(b_shape, x.to_vec()).unwrap(),
                    spec,
                ) * &g64)
                    .sum()
            };
            let fd_a = finite_difference(a64.as_slice().unwrap(), loss_a);
            let fd_b = finite_difference(b64.as_slice().unwrap(), loss_b);
            let (da, db) = matmul_backward(
                gpu,
                &gpu.upload(&av, &[a_shape.0, a_shape.1, a_shape.2]).unwrap(),
                &gpu.upload(&bv, &[b_shape.0, b_shape.1, b_shape.2]).unwrap(),
                &gpu.upload(&gv, &[batch, m, n]).unwrap(),
                spec,
            )
            .unwrap();
            let da = gpu.read(&da).unwrap();
            let db = gpu.read(&db).unwrap();
            assert_close(
                &da,
                &fd_a,
                Tolerance::COMPOSITE,
                &format!("{tiling:?} dA ta={ta} tb={tb}"),
            );
            assert_close(
                &db,
                &fd_b,
                Tolerance::COMPOSITE,
                &format!("{tiling:?} dB ta={ta} tb={tb}"),
            );
            // The analytic reference (dA = G·op(B)ᵀ) against finite differences, in f64.
            let analytic_a: Vec<f64> = if !ta {
                reference::matmul(
                    &g64,
                    &b64,
                    Spec {
                        trans_a: false,
                        trans_b: !tb,
                        accumulate: false,
                    },
                )
                .iter()
                .copied()
                .collect()
            } else {
                reference::matmul(
                    &b64,
                    &g64,
                    Spec {
                        trans_a: tb,
                        trans_b: true,
                        accumulate: false,
                    },
                )
                .iter()
                .copied()
                .collect()
            };
            assert_gradient(&analytic_a, &fd_a, "reference dA");
        }
    }

    #[test]
    fn broadcast_weight_gradient_sums_over_batch() {
        let gpu = gpu();
        let (batch, m, k, n) = (3, 6, 4, 5);
        let av = random_vec(batch * m * k, 21);
        let wv = random_vec(k * n, 22);
        let gv = random_vec(batch * m * n, 23);
        let a = gpu.upload(&av, &[batch, m, k]).unwrap();
        let w = gpu.upload(&wv, &[k, n]).unwrap();
        let g = gpu.upload(&gv, &[batch, m, n]).unwrap();
        let (_, dw) = matmul_backward(gpu, &a, &w, &g, Spec::NN).unwrap();
        assert_eq!(dw.shape(), &[k, n]);
        let w64 = arr(&wv, (1, k, n));
        let a64 = arr(&av, (batch, m, k));
        let g64 = arr(&gv, (batch, m, n));
        let fd = finite_difference(w64.as_slice().unwrap(), |x| {
            (reference::matmul(
                &a64,
                &Array3::from_shape_vec((1, k, n), x.to_vec()).unwrap(),
                Spec::NN,
            ) * &g64)
                .sum()
        });
        assert_close(&gpu.read(&dw).unwrap(), &fd, Tolerance::COMPOSITE, "dW");
    }

    /// M rows needing more than 65,535 workgroups of rows (the input
    /// projection of B·T frames at a huge crop) are split into row blocks
    /// whose grids fit, instead of failing with "use launch_linear".
    #[test]
    fn a_product_taller_than_one_grid_is_split_by_rows() {
        // k = n = 1: the scalar kernel with 32 rows per workgroup, or the
        // workgroup-memory one with 64.
        for (tiling, rows_per_group, entry) in [
            (Tiling::Registers, 32, "matmul::matmul"),
            (Tiling::Workgroup, 64, "matmul::matmul_workgroup"),
        ] {
            let gpu = crate::check::gpu_with_tiling(tiling);
            let m = 65_536 * rows_per_group + 5;
            let av = random_vec(m, 90);
            let a = gpu.upload(&av, &[m, 1]).unwrap();
            let b = gpu.upload(&[-2.0], &[1, 1]).unwrap();
            let (c, trace) = gpu.traced(|| matmul(gpu, &a, &b, Spec::NN).unwrap());
            let grids = crate::check::dispatches(&trace, entry);
            assert_eq!(grids.len(), 2, "{tiling:?}: {grids:?}");
            assert!(grids.iter().all(|g| g[1] <= 65_535), "{grids:?}");
            let want: Vec<f64> = av.iter().map(|&x| -2.0 * x as f64).collect();
            assert_close(
                &gpu.read(&c).unwrap(),
                &want,
                Tolerance::ELEMENTWISE,
                &format!("{tiling:?} tall matmul"),
            );
        }
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let a = gpu.zeros(&[3, 4]).unwrap();
        let b = gpu.zeros(&[5, 2]).unwrap();
        let e = matmul(gpu, &a, &b, Spec::NN).unwrap_err().to_string();
        assert!(e.contains("inner dimensions differ"), "{e}");
    }
}
