//! Graph propagation for the GCNs (`shaders/graph_conv.wgsl`).
//!
//! Activations H are [B, T, N, F]; the adjacency is [B, W, N, N] (or
//! [B, N, N], the static branch, W = 1) and frame t uses window
//! w(t) = min(⌊t/S⌋, W − 1):
//!
//! - forward `out[b,t,n,f] = Σ_m A[b,w(t),n,m] · H[b,t,m,f]`,
//! - backward `dH = Aᵀ·dOut` per frame (the same kernel, transposed) and,
//!   only when asked (the dynamic adjacency), `dA[b,w] = Σ_{t: w(t)=w} dOut_t · H_tᵀ`,
//! - [`normalize_adjacency`]: `Â = D^{-1/2}(|P| with zero diagonal + I)D^{-1/2}`
//!   from a [B, N, N] partial-correlation matrix (no gradient).
//!
//! Batches larger than one storage binding (H at B = 64, T = 128, N = 200,
//! F = 32 is 210 MB, over lavapipe's 128 MiB) are split over batch items,
//! bound from aligned offsets with the remainders passed to the shader.

use crate::gpu::{Gpu, GpuError, Planner, Result, Tensor, Tiling};

const SHADER: crate::gpu::Shader = crate::shader!("graph_conv");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    frames: u32,
    nodes: u32,
    feats: u32,
    windows: u32,
    stride: u32,
    flags: u32,
    total: u32,
    a_off: u32,
    h_off: u32,
}

/// Sizes of one propagation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub frames: usize,
    pub nodes: usize,
    pub feats: usize,
    pub windows: usize,
    pub stride: usize,
}

impl Dims {
    /// The window frame `t` uses.
    pub fn window_of(&self, t: usize) -> usize {
        (t / self.stride).min(self.windows - 1)
    }

    fn params(&self, flags: u32, total: usize) -> Params {
        Params {
            batch: self.batch as u32,
            frames: self.frames as u32,
            nodes: self.nodes as u32,
            feats: self.feats as u32,
            windows: self.windows as u32,
            stride: self.stride as u32,
            flags,
            total: total as u32,
            a_off: 0,
            h_off: 0,
        }
    }

    fn adj_item(&self) -> usize {
        self.windows * self.nodes * self.nodes
    }

    fn h_item(&self) -> usize {
        self.frames * self.nodes * self.feats
    }
}

/// Splits the batch into runs of items whose adjacency and activation ranges
/// (plus the alignment remainder) fit in one storage binding, and calls
/// `launch(planner, first, count)` for each; the launch binds its ranges
/// with `planner.bind`.
fn for_batch_chunks(
    gpu: &Gpu,
    d: &Dims,
    mut launch: impl FnMut(&Planner, usize, usize) -> Result<()>,
) -> Result<()> {
    let planner = gpu.planner("graph_conv");
    for items in planner.offset_rows(d.batch, &[d.adj_item(), d.h_item()])? {
        launch(&planner, items.start, items.len())?;
    }
    Ok(())
}

fn shape_error(message: String) -> GpuError {
    GpuError::Shape {
        op: "graph_conv",
        message,
    }
}

/// Checks `adj` [B, W, N, N] or [B, N, N] against `h` [B, T, N, F].
pub fn dims(adj: &Tensor, h: &Tensor, stride: usize) -> Result<Dims> {
    let &[batch, frames, nodes, feats] = h.shape() else {
        return Err(shape_error(format!(
            "H {:?} must be [B, T, N, F]",
            h.shape()
        )));
    };
    let (ab, windows, an, am) = match *adj.shape() {
        [b, n, m] => (b, 1, n, m),
        [b, w, n, m] => (b, w, n, m),
        _ => {
            return Err(shape_error(format!(
                "adjacency {:?} must be [B, W, N, N] or [B, N, N]",
                adj.shape()
            )))
        }
    };
    if ab != batch || an != nodes || am != nodes || windows == 0 || stride == 0 {
        return Err(shape_error(format!(
            "adjacency {:?} (stride {stride}) does not fit H {:?}",
            adj.shape(),
            h.shape()
        )));
    }
    Ok(Dims {
        batch,
        frames,
        nodes,
        feats,
        windows,
        stride,
    })
}

/// `op(A_w(t)) · H_t` for every frame, into a new [B, T, N, F] tensor.
fn run_propagate(gpu: &Gpu, adj: &Tensor, h: &Tensor, d: Dims, transposed: bool) -> Result<Tensor> {
    let out = gpu.empty(h.shape());
    if h.is_empty() {
        return Ok(out);
    }
    let entry = propagate_entry(&d, gpu.tiling());
    // Work items per frame: 64x16 output tiles (one workgroup each) for the
    // workgroup-memory kernel, 4x4 blocks (one invocation each) otherwise.
    let tiled = entry == "propagate_workgroup";
    let per_frame = if tiled {
        d.nodes.div_ceil(64) * d.feats.div_ceil(16)
    } else {
        d.nodes.div_ceil(4) * d.feats.div_ceil(4)
    };
    for_batch_chunks(gpu, &d, |planner, first, count| {
        let (a_arg, a_off) =
            planner.bind(adj, first * d.adj_item()..(first + count) * d.adj_item());
        let (h_arg, h_off) = planner.bind(h, first * d.h_item()..(first + count) * d.h_item());
        let (o_arg, _) = planner.bind(&out, first * d.h_item()..(first + count) * d.h_item());
        let total = count * d.frames * per_frame;
        let chunk = Dims { batch: count, ..d };
        gpu.count_flops(2 * (count * d.frames * d.nodes * d.nodes * d.feats) as u64);
        let params = Params {
            a_off,
            h_off,
            ..chunk.params(transposed as u32, total)
        };
        let args = [(0, a_arg), (1, h_arg), (2, o_arg)];
        if tiled {
            gpu.launch_linear(SHADER.kernel(entry), &args, &params, total as u64)
        } else {
            gpu.launch_threads(SHADER.kernel(entry), &args, &params, total as u64)
        }
    })?;
    Ok(out)
}

/// The propagation's entry point: the workgroup-memory kernel on a
/// workgroup-tiled device, else the register-tiled vec4 path when N and F
/// are multiples of 4, else the scalar one.
pub fn propagate_entry(d: &Dims, tiling: Tiling) -> &'static str {
    if tiling == Tiling::Workgroup {
        "propagate_workgroup"
    } else if d.nodes % 4 == 0 && d.feats % 4 == 0 {
        "propagate_vec4"
    } else {
        "propagate"
    }
}

/// Forward: `out[b,t,n,f] = Σ_m A[b,w(t),n,m] · H[b,t,m,f]`.
pub fn propagate(gpu: &Gpu, adj: &Tensor, h: &Tensor, stride: usize) -> Result<Tensor> {
    let d = dims(adj, h, stride)?;
    run_propagate(gpu, adj, h, d, false)
}

/// Backward of [`propagate`] for upstream `grad` [B, T, N, F]: returns dH and,
/// when `want_adj`, dA shaped like `adj`.
pub fn propagate_backward(
    gpu: &Gpu,
    adj: &Tensor,
    h: &Tensor,
    grad: &Tensor,
    stride: usize,
    want_adj: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let d = dims(adj, h, stride)?;
    if grad.shape() != h.shape() {
        return Err(shape_error(format!(
            "gradient {:?} for H {:?}",
            grad.shape(),
            h.shape()
        )));
    }
    let dh = run_propagate(gpu, adj, grad, d, true)?;
    if !want_adj {
        return Ok((dh, None));
    }
    let da = gpu.empty(adj.shape());
    if adj.is_empty() {
        return Ok((dh, Some(da)));
    }
    let entry = adjacency_grad_entry(&d, gpu.tiling());
    // Workgroups of 32x32 output tiles, or invocations of 4x4 blocks.
    let tiled = entry == "adjacency_grad_workgroup";
    let per_window = if tiled {
        d.nodes.div_ceil(32).pow(2)
    } else {
        d.nodes.div_ceil(4).pow(2)
    };
    for_batch_chunks(gpu, &d, |planner, first, count| {
        let (a_arg, a_off) =
            planner.bind(&da, first * d.adj_item()..(first + count) * d.adj_item());
        let (h_arg, h_off) = planner.bind(h, first * d.h_item()..(first + count) * d.h_item());
        let (g_arg, _) = planner.bind(grad, first * d.h_item()..(first + count) * d.h_item());
        let total = count * d.windows * per_window;
        let chunk = Dims { batch: count, ..d };
        // dA[w] = Σ over the window's frames of G_t H_tᵀ.
        gpu.count_flops(2 * (count * d.frames * d.nodes * d.nodes * d.feats) as u64);
        let params = Params {
            a_off,
            h_off,
            ..chunk.params(0, total)
        };
        let args = [(1, h_arg), (2, a_arg), (3, g_arg)];
        if tiled {
            gpu.launch_linear(SHADER.kernel(entry), &args, &params, total as u64)
        } else {
            gpu.launch_threads(SHADER.kernel(entry), &args, &params, total as u64)
        }
    })?;
    Ok((dh, Some(da)))
}

/// The adjacency gradient's entry point: the workgroup-memory kernel on a
/// workgroup-tiled device, else the register-tiled vec4 path when F is a
/// multiple of 4, else the scalar one.
pub fn adjacency_grad_entry(d: &Dims, tiling: Tiling) -> &'static str {
    if tiling == Tiling::Workgroup {
        "adjacency_grad_workgroup"
    } else if d.feats % 4 == 0 {
        "adjacency_grad_vec4"
    } else {
        "adjacency_grad"
    }
}

/// `Â = D^{-1/2}(A + I)D^{-1/2}` with `A = |P|`, zero diagonal, D the row sums
/// of A + I, for P [B, N, N]. No gradient (the static graph is input-derived).
pub fn normalize_adjacency(gpu: &Gpu, p: &Tensor) -> Result<Tensor> {
    let &[b, n, m] = p.shape() else {
        return Err(shape_error(format!("P {:?} must be [B, N, N]", p.shape())));
    };
    if n != m {
        return Err(shape_error(format!("P {:?} must be square", p.shape())));
    }
    let out = gpu.empty(p.shape());
    if p.is_empty() {
        return Ok(out);
    }
    let d = Dims {
        batch: b,
        frames: 1,
        nodes: n,
        feats: 1,
        windows: 1,
        stride: 1,
    };
    let dinv = gpu.empty(&[b, n]);
    gpu.launch_threads(
        SHADER.kernel("degree"),
        &[(0, p.arg()), (2, dinv.arg())],
        &d.params(0, b * n),
        (b * n) as u64,
    )?;
    gpu.launch_threads(
        SHADER.kernel("normalize"),
        &[(0, p.arg()), (1, dinv.arg()), (2, out.arg())],
        &d.params(0, b * n * n),
        (b * n * n) as u64,
    )?;
    Ok(out)
}

/// f64 CPU references (row-major flat slices).
pub mod reference {
    use super::Dims;

    fn a_index(d: &Dims, b: usize, w: usize, n: usize, m: usize) -> usize {
        ((b * d.windows + w) * d.nodes + n) * d.nodes + m
    }

    fn h_index(d: &Dims, b: usize, t: usize, n: usize, f: usize) -> usize {
        ((b * d.frames + t) * d.nodes + n) * d.feats + f
    }

    pub fn propagate(a: &[f64], h: &[f64], d: &Dims) -> Vec<f64> {
        let mut out = vec![0.0; h.len()];
        for b in 0..d.batch {
            for t in 0..d.frames {
                let w = d.window_of(t);
                for n in 0..d.nodes {
                    for m in 0..d.nodes {
                        let a_nm = a[a_index(d, b, w, n, m)];
                        for f in 0..d.feats {
                            out[h_index(d, b, t, n, f)] += a_nm * h[h_index(d, b, t, m, f)];
                        }
                    }
                }
            }
        }
        out
    }

    /// (dH, dA) for upstream `g`.
    pub fn propagate_backward(a: &[f64], h: &[f64], g: &[f64], d: &Dims) -> (Vec<f64>, Vec<f64>) {
        let mut dh = vec![0.0; h.len()];
        let mut da = vec![0.0; a.len()];
        for b in 0..d.batch {
            for t in 0..d.frames {
                let w = d.window_of(t);
                for n in 0..d.nodes {
                    for m in 0..d.nodes {
                        let ai = a_index(d, b, w, n, m);
                        for f in 0..d.feats {
                            let gi = g[h_index(d, b, t, n, f)];
                            dh[h_index(d, b, t, m, f)] += a[ai] * gi;
                            da[ai] += gi * h[h_index(d, b, t, m, f)];
                        }
                    }
                }
            }
        }
        (dh, da)
    }

    pub fn normalize_adjacency(p: &[f64], b: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; p.len()];
        for bi in 0..b {
            let a = |i: usize, j: usize| {
                if i == j {
                    1.0
                } else {
                    p[(bi * n + i) * n + j].abs()
                }
            };
            let deg: Vec<f64> = (0..n).map(|i| (0..n).map(|j| a(i, j)).sum()).collect();
            for i in 0..n {
                for j in 0..n {
                    out[(bi * n + i) * n + j] = a(i, j) / (deg[i] * deg[j]).sqrt();
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, dispatches, finite_difference, gpu, gpu_with_binding_limit,
        random_vec, to_f64, Tolerance,
    };

    /// (B, T, N, F, W, S): scalar and vec4 paths, dimensions of 1, sizes not
    /// a multiple of the 4x4 tile or the workgroup, a last window that takes
    /// the remaining frames, a window no frame uses, and N = 200.
    const CASES: &[(usize, usize, usize, usize, usize, usize)] = &[
        (1, 1, 1, 1, 1, 1),
        (2, 7, 13, 5, 3, 2),
        (2, 6, 8, 8, 3, 2),
        (1, 3, 9, 4, 3, 2), // window 2 gets no frame: dA must be written as 0
        (3, 2, 6, 3, 1, 5),
        (1, 2, 200, 8, 2, 1),
        (1, 2, 200, 3, 1, 1),
        // Several 64x16 output tiles of the workgroup kernel, both partial.
        (2, 3, 70, 33, 2, 2),
    ];

    fn dims_of(
        &(batch, frames, nodes, feats, windows, stride): &(
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
        ),
    ) -> Dims {
        Dims {
            batch,
            frames,
            nodes,
            feats,
            windows,
            stride,
        }
    }

    #[test]
    fn forward_and_backward_match_reference() {
        for (k, case, tiling) in CASES
            .iter()
            .enumerate()
            .flat_map(|(k, c)| [Tiling::Registers, Tiling::Workgroup].map(|t| (k, c, t)))
        {
            let gpu = crate::check::gpu_with_tiling(tiling);
            let d = dims_of(case);
            let a_len = d.batch * d.windows * d.nodes * d.nodes;
            let h_len = d.batch * d.frames * d.nodes * d.feats;
            let av = random_vec(a_len, 600 + k as u64);
            let hv = random_vec(h_len, 610 + k as u64);
            let gv = random_vec(h_len, 620 + k as u64);
            let a = gpu
                .upload(&av, &[d.batch, d.windows, d.nodes, d.nodes])
                .unwrap();
            let h = gpu
                .upload(&hv, &[d.batch, d.frames, d.nodes, d.feats])
                .unwrap();
            let g = gpu.upload(&gv, h.shape()).unwrap();
            let what = format!("{tiling:?} case {case:?}");
            let entry = format!("graph_conv::{}", propagate_entry(&d, tiling));
            let (out, trace) = gpu.traced(|| propagate(gpu, &a, &h, d.stride).unwrap());
            assert_eq!(dispatches(&trace, &entry).len(), 1, "{what}: {trace:?}");
            let (a64, h64, g64) = (to_f64(&av), to_f64(&hv), to_f64(&gv));
            assert_close(
                &gpu.read(&out).unwrap(),
                &reference::propagate(&a64, &h64, &d),
                Tolerance::ACCUMULATION,
                &format!("forward {what}"),
            );
            let ((dh, da), trace) =
                gpu.traced(|| propagate_backward(gpu, &a, &h, &g, d.stride, true).unwrap());
            assert_eq!(dispatches(&trace, &entry).len(), 1, "{what}: {trace:?}");
            let grad_entry = format!("graph_conv::{}", adjacency_grad_entry(&d, tiling));
            assert_eq!(
                dispatches(&trace, &grad_entry).len(),
                1,
                "{what}: {trace:?}"
            );
            let (want_dh, want_da) = reference::propagate_backward(&a64, &h64, &g64, &d);
            assert_close(
                &gpu.read(&dh).unwrap(),
                &want_dh,
                Tolerance::ACCUMULATION,
                &format!("dH {what}"),
            );
            assert_close(
                &gpu.read(&da.unwrap()).unwrap(),
                &want_da,
                Tolerance::ACCUMULATION,
                &format!("dA {what}"),
            );
            let (_, none) = propagate_backward(gpu, &a, &h, &g, d.stride, false).unwrap();
            assert!(none.is_none());
        }
    }

    #[test]
    fn split_batches_match_reference() {
        // A device of its own: lowering the shared one's binding limit would
        // disturb tests running in parallel.
        // Items of 3·7·7 = 147 / 5·7·3 = 105 (scalar) and 2·8·8 = 128 / 3·8·4 = 96
        // (vec4) values, so chunks start at unaligned offsets.
        for (k, case, tiling) in [(5, 5, 7, 3, 3, 2), (6, 3, 8, 4, 2, 2)]
            .iter()
            .enumerate()
            .flat_map(|(k, c)| [Tiling::Registers, Tiling::Workgroup].map(|t| (k, c, t)))
        {
            let d = dims_of(case);
            let limit = 4 * (2 * d.adj_item().max(d.h_item()) + 64) as u64;
            let gpu = crate::check::test_device(Some(limit), Some(tiling));
            let av = random_vec(d.batch * d.adj_item(), 660 + k as u64);
            let hv = random_vec(d.batch * d.h_item(), 670 + k as u64);
            let gv = random_vec(d.batch * d.h_item(), 680 + k as u64);
            let a = gpu
                .upload(&av, &[d.batch, d.windows, d.nodes, d.nodes])
                .unwrap();
            let h = gpu
                .upload(&hv, &[d.batch, d.frames, d.nodes, d.feats])
                .unwrap();
            let g = gpu.upload(&gv, h.shape()).unwrap();
            let ((out, (dh, da)), trace) = gpu.traced(|| {
                (
                    propagate(gpu, &a, &h, d.stride).unwrap(),
                    propagate_backward(gpu, &a, &h, &g, d.stride, true).unwrap(),
                )
            });
            let (a64, h64, g64) = (to_f64(&av), to_f64(&hv), to_f64(&gv));
            let (want_dh, want_da) = reference::propagate_backward(&a64, &h64, &g64, &d);
            let what = format!("{tiling:?} split {case:?}");
            let entry = format!("graph_conv::{}", propagate_entry(&d, tiling));
            // Two items per launch, forward and dH: 2 · ceil(B / 2) launches.
            assert_eq!(
                dispatches(&trace, &entry).len(),
                2 * d.batch.div_ceil(2),
                "{what}: {trace:?}"
            );
            let grad_entry = format!("graph_conv::{}", adjacency_grad_entry(&d, tiling));
            assert_eq!(
                dispatches(&trace, &grad_entry).len(),
                d.batch.div_ceil(2),
                "{what}: {trace:?}"
            );
            assert_close(
                &gpu.read(&out).unwrap(),
                &reference::propagate(&a64, &h64, &d),
                Tolerance::ACCUMULATION,
                &what,
            );
            assert_close(
                &gpu.read(&dh).unwrap(),
                &want_dh,
                Tolerance::ACCUMULATION,
                &what,
            );
            assert_close(
                &gpu.read(&da.unwrap()).unwrap(),
                &want_da,
                Tolerance::ACCUMULATION,
                &what,
            );
        }
        let gpu = gpu_with_binding_limit(64);
        let a = gpu.zeros(&[1, 1, 8, 8]).unwrap();
        let h = gpu.zeros(&[1, 2, 8, 4]).unwrap();
        let e = propagate(gpu, &a, &h, 1).unwrap_err().to_string();
        assert!(
            e.contains("graph_conv") && e.contains("64-byte storage binding limit"),
            "{e}"
        );
    }

    #[test]
    fn static_adjacency_as_three_dimensions() {
        let gpu = gpu();
        let (b, t, n, f) = (2, 5, 7, 4);
        let av = random_vec(b * n * n, 630);
        let hv = random_vec(b * t * n * f, 631);
        let a = gpu.upload(&av, &[b, n, n]).unwrap();
        let h = gpu.upload(&hv, &[b, t, n, f]).unwrap();
        let out = propagate(gpu, &a, &h, 1).unwrap();
        let d = dims(&a, &h, 1).unwrap();
        assert_eq!(d.windows, 1);
        assert_close(
            &gpu.read(&out).unwrap(),
            &reference::propagate(&to_f64(&av), &to_f64(&hv), &d),
            Tolerance::ACCUMULATION,
            "static",
        );
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let d = dims_of(&(2, 5, 3, 2, 2, 2));
        let a = to_f64(&random_vec(d.batch * d.windows * 9, 640));
        let h = to_f64(&random_vec(d.batch * d.frames * 6, 641));
        let g = to_f64(&random_vec(h.len(), 642));
        let loss = |a: &[f64], h: &[f64]| -> f64 {
            reference::propagate(a, h, &d)
                .iter()
                .zip(&g)
                .map(|(x, y)| x * y)
                .sum()
        };
        let (dh, da) = reference::propagate_backward(&a, &h, &g, &d);
        assert_gradient(&dh, &finite_difference(&h, |x| loss(&a, x)), "dH");
        assert_gradient(&da, &finite_difference(&a, |x| loss(x, &h)), "dA");
    }

    #[test]
    fn normalize_adjacency_matches_reference() {
        let gpu = gpu();
        for (k, &(b, n)) in [(1, 1), (2, 5), (1, 67), (1, 200)].iter().enumerate() {
            let pv = random_vec(b * n * n, 650 + k as u64);
            let p = gpu.upload(&pv, &[b, n, n]).unwrap();
            let out = normalize_adjacency(gpu, &p).unwrap();
            assert_close(
                &gpu.read(&out).unwrap(),
                &reference::normalize_adjacency(&to_f64(&pv), b, n),
                Tolerance::ACCUMULATION,
                &format!("normalize {b}x{n}"),
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let gpu = gpu();
        let a = gpu.zeros(&[2, 3, 5, 5]).unwrap();
        let h = gpu.zeros(&[2, 4, 6, 3]).unwrap();
        assert!(matches!(
            propagate(gpu, &a, &h, 1),
            Err(GpuError::Shape { .. })
        ));
        let h = gpu.zeros(&[2, 4, 5, 3]).unwrap();
        assert!(matches!(
            propagate(gpu, &a, &h, 0),
            Err(GpuError::Shape { .. })
        ));
    }
}
