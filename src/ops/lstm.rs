//! Single-layer LSTM over time (`shaders/lstm.wgsl`), for the paper's "LSTM
//! encoder" ablation (Table 2): x [B, T, I] → all hidden states h [B, T, H],
//! PyTorch gate order (i, f, g, o), weights W_ih [4H, I], W_hh [4H, H],
//! biases b_ih, b_hh [4H], zero initial state.
//!
//! Forward: the input projection for every step is one product,
//! xp = x·W_ihᵀ ([B·T, I]·[I, 4H], `ops::matmul`); the recurrent kernel then
//! adds b_ih + b_hh and W_hh·h_{t-1} step by step and saves the activated
//! gates and cell states. Backward (BPTT): a reverse-time kernel turns dh into
//! the pre-activation gate gradients dA [B·T, 4H] (and h shifted by one step),
//! and the rest are products: dx = dA·W_ih, dW_ih = dAᵀ·x,
//! dW_hh = dAᵀ·h_prev, db_ih = db_hh = Σ_rows dA.
//!
//! The recurrence has two schedules (see the shader and [`Schedule`]). On
//! lavapipe one dispatch per time step is the faster, and the default.

use super::elementwise;
use super::matmul::{self, Spec};
use crate::gpu::{Gpu, GpuError, Result, Tensor};

const SHADER: crate::gpu::Shader = crate::shader!("lstm");

/// Why the recurrence refuses rather than splits a tensor above one binding.
const RECURRENCE_IS_WHOLE: &str =
    "one launch runs every step of the recurrence over the whole batch's h, c and gates";

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    steps: u32,
    hidden: u32,
    t: u32,
}

/// How the recurrence is scheduled on the device.
///
/// Measured on lavapipe (llvmpipe, 2 shared CPU cores, noisy) at the ablation
/// shape B 32, T 128, I 200, H 128, GPU timestamps, recurrent kernel alone:
/// forward 238–307 ms fused vs 180–245 ms per-step, backward 414–573 ms fused
/// vs 268–330 ms per-step (three interleaved rounds). With the projections
/// and weight-gradient products (`cargo bench -- lstm`): forward 507 vs
/// 383 ms, backward 801 vs 700 ms. The fused loop pays for its barriers
/// (llvmpipe runs a workgroup with barriers as coroutines), so per-step is
/// the default; on a real GPU the comparison may differ and is unmeasured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    /// One workgroup per batch item loops over all T steps in the shader,
    /// with a storage barrier between steps: one dispatch.
    Fused,
    /// One dispatch per time step over all (batch item, hidden unit) pairs.
    #[default]
    PerStep,
}

/// Sizes of one LSTM application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub steps: usize,
    pub input: usize,
    pub hidden: usize,
}

/// The forward output and what the backward needs.
#[derive(Clone, Debug)]
pub struct LstmForward {
    /// All hidden states [B, T, H].
    pub h: Tensor,
    /// All cell states [B, T, H].
    pub c: Tensor,
    /// Activated gates (i, f, g, o) [B, T, 4H].
    pub gates: Tensor,
}

/// Gradients of the inputs and parameters.
#[derive(Clone, Debug)]
pub struct LstmGrads {
    pub dx: Tensor,
    pub dw_ih: Tensor,
    pub dw_hh: Tensor,
    pub db_ih: Tensor,
    pub db_hh: Tensor,
}

fn shape_error(message: String) -> GpuError {
    GpuError::Shape {
        op: "lstm",
        message,
    }
}

/// Checks the operand shapes and returns the sizes.
pub fn dims(
    x: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    b_ih: &Tensor,
    b_hh: &Tensor,
) -> Result<Dims> {
    let &[batch, steps, input] = x.shape() else {
        return Err(shape_error(format!(
            "x must be [B, T, I], got {:?}",
            x.shape()
        )));
    };
    let &[g4, hidden] = w_hh.shape() else {
        return Err(shape_error(format!(
            "W_hh must be [4H, H], got {:?}",
            w_hh.shape()
        )));
    };
    if g4 != 4 * hidden || hidden == 0 {
        return Err(shape_error(format!(
            "W_hh must be [4H, H] with H > 0, got {:?}",
            w_hh.shape()
        )));
    }
    if w_ih.shape() != [4 * hidden, input] {
        return Err(shape_error(format!(
            "W_ih must be [4H, I] = [{}, {input}], got {:?}",
            4 * hidden,
            w_ih.shape()
        )));
    }
    for (name, b) in [("b_ih", b_ih), ("b_hh", b_hh)] {
        if b.shape() != [4 * hidden] {
            return Err(shape_error(format!(
                "{name} must be [4H] = [{}], got {:?}",
                4 * hidden,
                b.shape()
            )));
        }
    }
    if batch == 0 || steps == 0 || input == 0 {
        return Err(shape_error(format!(
            "x must be non-empty, got {:?}",
            x.shape()
        )));
    }
    if batch > crate::gpu::MAX_GROUPS_PER_DIM as usize {
        return Err(shape_error(format!(
            "batch {batch} exceeds {} (one workgroup per batch item)",
            crate::gpu::MAX_GROUPS_PER_DIM
        )));
    }
    Ok(Dims {
        batch,
        steps,
        input,
        hidden,
    })
}

fn params(d: Dims, t: usize) -> Params {
    Params {
        batch: d.batch as u32,
        steps: d.steps as u32,
        hidden: d.hidden as u32,
        t: t as u32,
    }
}

/// Records one pass of the recurrence, fused or one dispatch per step
/// (`reverse`: the per-step dispatches run t = T-1 down to 0).
fn recur(
    gpu: &Gpu,
    d: Dims,
    schedule: Schedule,
    entries: (&'static str, &'static str),
    args: &[(u32, crate::gpu::Arg<'_>)],
    reverse: bool,
) -> Result<()> {
    match schedule {
        Schedule::Fused => gpu.launch(
            SHADER.kernel(entries.0),
            args,
            &params(d, 0),
            [d.batch as u32, 1, 1],
        ),
        Schedule::PerStep => {
            let threads = (d.batch * d.hidden) as u64;
            for s in 0..d.steps {
                let t = if reverse { d.steps - 1 - s } else { s };
                gpu.launch_threads(SHADER.kernel(entries.1), args, &params(d, t), threads)?;
            }
            Ok(())
        }
    }
}

/// All hidden states h [B, T, H] (no saved state).
pub fn lstm(
    gpu: &Gpu,
    x: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    b_ih: &Tensor,
    b_hh: &Tensor,
) -> Result<Tensor> {
    Ok(lstm_forward(gpu, x, w_ih, w_hh, b_ih, b_hh)?.h)
}

/// The forward with its saved tensors, default schedule.
pub fn lstm_forward(
    gpu: &Gpu,
    x: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    b_ih: &Tensor,
    b_hh: &Tensor,
) -> Result<LstmForward> {
    lstm_forward_with(gpu, x, w_ih, w_hh, b_ih, b_hh, Schedule::default())
}

/// The forward with an explicit schedule.
pub fn lstm_forward_with(
    gpu: &Gpu,
    x: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    b_ih: &Tensor,
    b_hh: &Tensor,
    schedule: Schedule,
) -> Result<LstmForward> {
    let d = dims(x, w_ih, w_hh, b_ih, b_hh)?;
    let (bt, h4) = (d.batch * d.steps, 4 * d.hidden);
    let x2 = x.reshape(&[bt, d.input])?;
    // One product for every step's input projection.
    let xp = matmul::matmul(gpu, &x2, w_ih, Spec::NT)?;
    let bias = elementwise::add(gpu, b_ih, b_hh)?;
    let h = gpu.empty(&[d.batch, d.steps, d.hidden]);
    let c = gpu.empty(&[d.batch, d.steps, d.hidden]);
    let gates = gpu.empty(&[d.batch, d.steps, h4]);
    gpu.planner("lstm")
        .whole(&[&xp, w_hh, &h, &gates], RECURRENCE_IS_WHOLE)?;
    recur(
        gpu,
        d,
        schedule,
        ("forward_seq", "forward_step"),
        &[
            (0, xp.arg()),
            (1, w_hh.arg()),
            (2, bias.arg()),
            (3, h.arg()),
            (4, c.arg()),
            (5, gates.arg()),
        ],
        false,
    )?;
    debug_assert_eq!(xp.len(), bt * h4);
    Ok(LstmForward { h, c, gates })
}

/// Gradients given dh [B, T, H] (the gradient of every output hidden state),
/// default schedule.
pub fn lstm_backward(
    gpu: &Gpu,
    x: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    saved: &LstmForward,
    dh: &Tensor,
) -> Result<LstmGrads> {
    lstm_backward_with(gpu, x, w_ih, w_hh, saved, dh, Schedule::default())
}

/// The backward with an explicit schedule.
pub fn lstm_backward_with(
    gpu: &Gpu,
    x: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    saved: &LstmForward,
    dh: &Tensor,
    schedule: Schedule,
) -> Result<LstmGrads> {
    let &[batch, steps, input] = x.shape() else {
        return Err(shape_error(format!(
            "x must be [B, T, I], got {:?}",
            x.shape()
        )));
    };
    let hidden = w_hh.shape().last().copied().unwrap_or(0);
    let d = Dims {
        batch,
        steps,
        input,
        hidden,
    };
    if w_hh.shape() != [4 * hidden, hidden]
        || w_ih.shape() != [4 * hidden, input]
        || hidden == 0
        || batch == 0
        || steps == 0
    {
        return Err(shape_error(format!(
            "backward: x {:?}, W_ih {:?}, W_hh {:?}",
            x.shape(),
            w_ih.shape(),
            w_hh.shape()
        )));
    }
    let hs = [batch, steps, hidden];
    for (name, t, want) in [
        ("dh", dh, &hs[..]),
        ("saved h", &saved.h, &hs[..]),
        ("saved c", &saved.c, &hs[..]),
        ("saved gates", &saved.gates, &[batch, steps, 4 * hidden][..]),
    ] {
        if t.shape() != want {
            return Err(shape_error(format!(
                "backward: {name} is {:?}, expected {want:?}",
                t.shape()
            )));
        }
    }
    let (bt, h4) = (batch * steps, 4 * hidden);
    let dgates = gpu.empty(&[bt, h4]);
    let h_prev = gpu.empty(&[bt, hidden]);
    let dc = gpu.empty(&[batch, hidden]);
    gpu.planner("lstm_backward")
        .whole(&[&dgates, w_hh, x], RECURRENCE_IS_WHOLE)?;
    recur(
        gpu,
        d,
        schedule,
        ("backward_seq", "backward_step"),
        &[
            (0, saved.gates.arg()),
            (1, w_hh.arg()),
            (2, saved.c.arg()),
            (3, saved.h.arg()),
            (4, dh.arg()),
            (5, dgates.arg()),
            (6, h_prev.arg()),
            (7, dc.arg()),
        ],
        true,
    )?;
    let x2 = x.reshape(&[bt, input])?;
    let dx = matmul::matmul(gpu, &dgates, w_ih, Spec::NN)?.reshape(x.shape())?;
    let dw_ih = matmul::matmul(gpu, &dgates, &x2, Spec::TN)?;
    let dw_hh = matmul::matmul(gpu, &dgates, &h_prev, Spec::TN)?;
    let ones = gpu.full(&[1, bt], 1.0)?;
    let db = matmul::matmul(gpu, &ones, &dgates, Spec::NN)?.reshape(&[h4])?;
    Ok(LstmGrads {
        dx,
        dw_ih,
        dw_hh,
        db_ih: db.clone(),
        db_hh: db,
    })
}

/// Floating-point operations of one forward at these sizes: the input
/// projection and the recurrent products (the gate nonlinearities are not
/// counted).
pub fn forward_flops(d: Dims) -> f64 {
    2.0 * (d.batch * d.steps * 4 * d.hidden * (d.input + d.hidden)) as f64
}

/// Floating-point operations of one backward: the recurrent products
/// (W_hhᵀ·dA per step), dx, dW_ih, dW_hh and the bias column sums.
pub fn backward_flops(d: Dims) -> f64 {
    2.0 * (d.batch * d.steps * 4 * d.hidden * (2 * d.input + 2 * d.hidden + 1)) as f64
}

/// f64 CPU reference over row-major slices, written as the textbook BPTT
/// (independently of the GPU's decomposition into kernels and products).
pub mod reference {
    use super::Dims;

    /// Saved forward state: h, c [B, T, H] and activated gates [B, T, 4H].
    pub struct Forward {
        pub h: Vec<f64>,
        pub c: Vec<f64>,
        pub gates: Vec<f64>,
    }

    pub struct Grads {
        pub dx: Vec<f64>,
        pub dw_ih: Vec<f64>,
        pub dw_hh: Vec<f64>,
        pub db_ih: Vec<f64>,
        pub db_hh: Vec<f64>,
    }

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    pub fn forward(
        x: &[f64],
        w_ih: &[f64],
        w_hh: &[f64],
        b_ih: &[f64],
        b_hh: &[f64],
        d: Dims,
    ) -> Forward {
        let Dims {
            batch,
            steps,
            input,
            hidden: hh,
        } = d;
        let g4 = 4 * hh;
        let mut h = vec![0.0; batch * steps * hh];
        let mut c = vec![0.0; batch * steps * hh];
        let mut gates = vec![0.0; batch * steps * g4];
        for b in 0..batch {
            let mut hp = vec![0.0; hh];
            let mut cp = vec![0.0; hh];
            for t in 0..steps {
                let xt = &x[(b * steps + t) * input..][..input];
                let mut a = vec![0.0; g4];
                for (r, ar) in a.iter_mut().enumerate() {
                    let wi = &w_ih[r * input..][..input];
                    let wh = &w_hh[r * hh..][..hh];
                    *ar = b_ih[r]
                        + b_hh[r]
                        + wi.iter().zip(xt).map(|(w, v)| w * v).sum::<f64>()
                        + wh.iter().zip(&hp).map(|(w, v)| w * v).sum::<f64>();
                }
                let base = (b * steps + t) * hh;
                for j in 0..hh {
                    let i = sigmoid(a[j]);
                    let f = sigmoid(a[hh + j]);
                    let g = a[2 * hh + j].tanh();
                    let o = sigmoid(a[3 * hh + j]);
                    let cn = f * cp[j] + i * g;
                    c[base + j] = cn;
                    h[base + j] = o * cn.tanh();
                    let gb = (b * steps + t) * g4;
                    gates[gb + j] = i;
                    gates[gb + hh + j] = f;
                    gates[gb + 2 * hh + j] = g;
                    gates[gb + 3 * hh + j] = o;
                }
                hp.copy_from_slice(&h[base..base + hh]);
                cp.copy_from_slice(&c[base..base + hh]);
            }
        }
        Forward { h, c, gates }
    }

    /// Gradients of Σ dh ⊙ h (the forward is recomputed).
    pub fn backward(
        x: &[f64],
        w_ih: &[f64],
        w_hh: &[f64],
        b_ih: &[f64],
        b_hh: &[f64],
        dh: &[f64],
        d: Dims,
    ) -> Grads {
        let Dims {
            batch,
            steps,
            input,
            hidden: hh,
        } = d;
        let g4 = 4 * hh;
        let fw = forward(x, w_ih, w_hh, b_ih, b_hh, d);
        let mut dx = vec![0.0; x.len()];
        let mut dw_ih = vec![0.0; w_ih.len()];
        let mut dw_hh = vec![0.0; w_hh.len()];
        let mut db = vec![0.0; g4];
        for b in 0..batch {
            // Gradients flowing into step t from step t + 1.
            let mut dh_next = vec![0.0; hh];
            let mut dc_next = vec![0.0; hh];
            for t in (0..steps).rev() {
                let base = (b * steps + t) * hh;
                let gb = (b * steps + t) * g4;
                let mut da = vec![0.0; g4];
                let mut dc_prev = vec![0.0; hh];
                for j in 0..hh {
                    let (i, f, g, o) = (
                        fw.gates[gb + j],
                        fw.gates[gb + hh + j],
                        fw.gates[gb + 2 * hh + j],
                        fw.gates[gb + 3 * hh + j],
                    );
                    let ct = fw.c[base + j];
                    let cp = if t > 0 { fw.c[base - hh + j] } else { 0.0 };
                    let dht = dh[base + j] + dh_next[j];
                    let tc = ct.tanh();
                    let dc = dc_next[j] + dht * o * (1.0 - tc * tc);
                    let (di, df, dg, d_o) = (dc * g, dc * cp, dc * i, dht * tc);
                    da[j] = di * i * (1.0 - i);
                    da[hh + j] = df * f * (1.0 - f);
                    da[2 * hh + j] = dg * (1.0 - g * g);
                    da[3 * hh + j] = d_o * o * (1.0 - o);
                    dc_prev[j] = dc * f;
                }
                let xt = &x[(b * steps + t) * input..][..input];
                let mut dh_prev = vec![0.0; hh];
                for (r, &dar) in da.iter().enumerate() {
                    db[r] += dar;
                    for k in 0..input {
                        dw_ih[r * input + k] += dar * xt[k];
                        dx[(b * steps + t) * input + k] += dar * w_ih[r * input + k];
                    }
                    for k in 0..hh {
                        if t > 0 {
                            dw_hh[r * hh + k] += dar * fw.h[base - hh + k];
                        }
                        dh_prev[k] += dar * w_hh[r * hh + k];
                    }
                }
                dh_next = dh_prev;
                dc_next = dc_prev;
            }
        }
        Grads {
            dx,
            dw_ih,
            dw_hh,
            db_ih: db.clone(),
            db_hh: db,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_gradient, finite_difference, gpu, random_vec, to_f64, Tolerance,
    };

    /// Random operands, weights scaled like PyTorch's init (±1/√H) but a
    /// little larger so some gates saturate.
    struct Operands {
        x: Vec<f32>,
        w_ih: Vec<f32>,
        w_hh: Vec<f32>,
        b_ih: Vec<f32>,
        b_hh: Vec<f32>,
    }

    fn operands(d: Dims, seed: u64) -> Operands {
        let s = 2.0 / (d.hidden as f32).sqrt();
        let scaled = |n, seed| -> Vec<f32> { random_vec(n, seed).iter().map(|v| v * s).collect() };
        Operands {
            x: random_vec(d.batch * d.steps * d.input, seed),
            w_ih: scaled(4 * d.hidden * d.input, seed + 1),
            w_hh: scaled(4 * d.hidden * d.hidden, seed + 2),
            b_ih: scaled(4 * d.hidden, seed + 3),
            b_hh: scaled(4 * d.hidden, seed + 4),
        }
    }

    const fn dims_of(batch: usize, steps: usize, input: usize, hidden: usize) -> Dims {
        Dims {
            batch,
            steps,
            input,
            hidden,
        }
    }

    /// Batch 1, a single step, a single unit, H not a multiple of the
    /// workgroup (65, 70: two hidden units per invocation for some), I = 1.
    const CASES: &[Dims] = &[
        dims_of(1, 1, 1, 1),
        dims_of(1, 5, 3, 7),
        dims_of(3, 4, 6, 65),
        dims_of(2, 7, 1, 70),
        dims_of(5, 3, 9, 13),
    ];

    struct Uploaded {
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor,
        b_hh: Tensor,
    }

    fn upload(gpu: &Gpu, d: Dims, o: &Operands) -> Uploaded {
        let h4 = 4 * d.hidden;
        Uploaded {
            x: gpu.upload(&o.x, &[d.batch, d.steps, d.input]).unwrap(),
            w_ih: gpu.upload(&o.w_ih, &[h4, d.input]).unwrap(),
            w_hh: gpu.upload(&o.w_hh, &[h4, d.hidden]).unwrap(),
            b_ih: gpu.upload(&o.b_ih, &[h4]).unwrap(),
            b_hh: gpu.upload(&o.b_hh, &[h4]).unwrap(),
        }
    }

    #[test]
    fn forward_and_backward_match_reference_for_both_schedules() {
        let gpu = gpu();
        for (ci, &d) in CASES.iter().enumerate() {
            let o = operands(d, 10 * ci as u64);
            let dhv = random_vec(d.batch * d.steps * d.hidden, 1000 + ci as u64);
            let t = upload(gpu, d, &o);
            let dh = gpu.upload(&dhv, &[d.batch, d.steps, d.hidden]).unwrap();
            let (x64, wi, wh, bi, bh) = (
                to_f64(&o.x),
                to_f64(&o.w_ih),
                to_f64(&o.w_hh),
                to_f64(&o.b_ih),
                to_f64(&o.b_hh),
            );
            let want = reference::forward(&x64, &wi, &wh, &bi, &bh, d);
            let grads = reference::backward(&x64, &wi, &wh, &bi, &bh, &to_f64(&dhv), d);
            for schedule in [Schedule::Fused, Schedule::PerStep] {
                let what = format!("lstm {d:?} {schedule:?}");
                let fw = lstm_forward_with(gpu, &t.x, &t.w_ih, &t.w_hh, &t.b_ih, &t.b_hh, schedule)
                    .unwrap();
                let tol = Tolerance::ACCUMULATION;
                assert_close(
                    &gpu.read(&fw.h).unwrap(),
                    &want.h,
                    tol,
                    &format!("{what} h"),
                );
                assert_close(
                    &gpu.read(&fw.c).unwrap(),
                    &want.c,
                    tol,
                    &format!("{what} c"),
                );
                assert_close(
                    &gpu.read(&fw.gates).unwrap(),
                    &want.gates,
                    tol,
                    &format!("{what} gates"),
                );
                let g =
                    lstm_backward_with(gpu, &t.x, &t.w_ih, &t.w_hh, &fw, &dh, schedule).unwrap();
                let tol = Tolerance::COMPOSITE;
                for (name, got, want) in [
                    ("dx", &g.dx, &grads.dx),
                    ("dW_ih", &g.dw_ih, &grads.dw_ih),
                    ("dW_hh", &g.dw_hh, &grads.dw_hh),
                    ("db_ih", &g.db_ih, &grads.db_ih),
                    ("db_hh", &g.db_hh, &grads.db_hh),
                ] {
                    assert_close(
                        &gpu.read(got).unwrap(),
                        want,
                        tol,
                        &format!("{what} {name}"),
                    );
                }
            }
        }
    }

    #[test]
    fn lstm_returns_the_forward_hidden_states() {
        let gpu = gpu();
        let d = dims_of(2, 3, 4, 5);
        let o = operands(d, 77);
        let t = upload(gpu, d, &o);
        let h = lstm(gpu, &t.x, &t.w_ih, &t.w_hh, &t.b_ih, &t.b_hh).unwrap();
        assert_eq!(h.shape(), &[2, 3, 5]);
        let want = reference::forward(
            &to_f64(&o.x),
            &to_f64(&o.w_ih),
            &to_f64(&o.w_hh),
            &to_f64(&o.b_ih),
            &to_f64(&o.b_hh),
            d,
        );
        assert_close(
            &gpu.read(&h).unwrap(),
            &want.h,
            Tolerance::ACCUMULATION,
            "lstm h",
        );
    }

    /// Every parameter and the input, by central differences of
    /// L = Σ G ⊙ h on the f64 reference.
    #[test]
    fn reference_backward_matches_finite_differences() {
        for (ci, d) in [dims_of(2, 4, 3, 3), dims_of(1, 6, 2, 4)]
            .into_iter()
            .enumerate()
        {
            let o = operands(d, 300 + 10 * ci as u64);
            let p: [Vec<f64>; 5] = [&o.x, &o.w_ih, &o.w_hh, &o.b_ih, &o.b_hh].map(|v| to_f64(v));
            let g = to_f64(&random_vec(d.batch * d.steps * d.hidden, 400 + ci as u64));
            let loss = |ps: &[Vec<f64>]| -> f64 {
                reference::forward(&ps[0], &ps[1], &ps[2], &ps[3], &ps[4], d)
                    .h
                    .iter()
                    .zip(&g)
                    .map(|(h, g)| h * g)
                    .sum()
            };
            let an = reference::backward(&p[0], &p[1], &p[2], &p[3], &p[4], &g, d);
            let analytic = [&an.dx, &an.dw_ih, &an.dw_hh, &an.db_ih, &an.db_hh];
            for (k, name) in ["x", "W_ih", "W_hh", "b_ih", "b_hh"].iter().enumerate() {
                let fd = finite_difference(&p[k], |v| {
                    let mut ps = p.clone();
                    ps[k] = v.to_vec();
                    loss(&ps)
                });
                assert_gradient(analytic[k], &fd, &format!("{d:?} d{name}"));
            }
        }
    }

    /// Tensors over one storage binding are refused by the planner (the
    /// ablation's largest, [B·T, 4H] = 2 Mi values, is far below lavapipe's
    /// 128 MiB), not a wgpu validation failure.
    #[test]
    fn tensors_over_the_binding_limit_are_refused() {
        let gpu = crate::check::gpu_with_binding_limit(1024);
        let d = dims_of(2, 5, 3, 8); // gates: 2·5·32 = 320 values > 256
        let t = upload(gpu, d, &operands(d, 5));
        let e = lstm(gpu, &t.x, &t.w_ih, &t.w_hh, &t.b_ih, &t.b_hh).unwrap_err();
        assert!(
            matches!(e, GpuError::BindingLimit { op: "lstm", .. }),
            "{e}"
        );
    }

    #[test]
    fn shape_errors_are_reported() {
        let gpu = gpu();
        let x = gpu.zeros(&[2, 3, 4]).unwrap();
        let w_ih = gpu.zeros(&[20, 4]).unwrap();
        let w_hh = gpu.zeros(&[20, 5]).unwrap();
        let b = gpu.zeros(&[20]).unwrap();
        let bad_b = gpu.zeros(&[19]).unwrap();
        let bad_wih = gpu.zeros(&[20, 3]).unwrap();
        let bad_whh = gpu.zeros(&[20, 4]).unwrap();
        let x2 = gpu.zeros(&[6, 4]).unwrap();
        for (name, r) in [
            ("bias", lstm(gpu, &x, &w_ih, &w_hh, &b, &bad_b)),
            ("W_ih", lstm(gpu, &x, &bad_wih, &w_hh, &b, &b)),
            ("W_hh", lstm(gpu, &x, &w_ih, &bad_whh, &b, &b)),
            ("x rank", lstm(gpu, &x2, &w_ih, &w_hh, &b, &b)),
        ] {
            let e = r.unwrap_err();
            assert!(
                matches!(e, GpuError::Shape { op: "lstm", .. }),
                "{name}: {e}"
            );
        }
        let fw = lstm_forward(gpu, &x, &w_ih, &w_hh, &b, &b).unwrap();
        let bad_dh = gpu.zeros(&[2, 3, 4]).unwrap();
        let e = lstm_backward(gpu, &x, &w_ih, &w_hh, &fw, &bad_dh).unwrap_err();
        assert!(e.to_string().contains("dh"), "{e}");
    }
}
