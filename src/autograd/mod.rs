//! Reverse-mode autograd as a tape.
//!
//! Forward ops push a node (its inputs, its output and a closure holding what
//! its backward needs); [`Tape::backward`] walks the nodes in reverse — the
//! push order is already topological — and each node records its own backward
//! kernels. Nothing here reads the GPU: forward, backward and the optimizer
//! all land in the one pending command encoder of the step.
//!
//! Parameters live outside the tape in a [`ParamStore`]; their gradient
//! buffers are zeroed once per step and backward accumulates into them.

mod dist_ops;
mod lstm_ops;
mod model_ops;
mod nn_ops;
mod ops;
pub mod optim;

use crate::gpu::{BackwardPeak, Gpu, Result, Tensor};

/// Bytes of the distinct buffers the tensors hold (clones and reshapes of
/// one buffer counted once).
fn distinct_bytes(tensors: &[Option<Tensor>]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    tensors
        .iter()
        .flatten()
        .filter(|t| seen.insert(t.buffer_id()))
        .map(|t| t.buffer().size())
        .sum()
}

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

type BackwardFn = Box<dyn Fn(&Gpu, &Tensor) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    inputs: Vec<Var>,
    output: Var,
    /// Where the op that pushed it is (for the profile's backward peak).
    op: &'static std::panic::Location<'static>,
    /// Given the gradient of the output, returns one gradient per input
    /// (None where an input needs none).
    backward: BackwardFn,
}

/// A named trainable tensor with its gradient buffer.
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
}

/// All parameters of a model, in a fixed order (the order of safetensors
/// files and of the optimizer state).
#[derive(Default)]
pub struct ParamStore {
    pub params: Vec<Param>,
}

/// Handle to a parameter in a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamId(pub usize);

impl ParamStore {
    pub fn add(&mut self, gpu: &Gpu, name: &str, data: &[f32], shape: &[usize]) -> Result<ParamId> {
        let value = gpu.upload(data, shape)?;
        let grad = gpu.zeros(shape)?;
        self.params.push(Param {
            name: name.to_string(),
            value,
            grad,
        });
        Ok(ParamId(self.params.len() - 1))
    }

    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }

    /// Records a zero fill of every gradient buffer (once per step).
    pub fn zero_grads(&self, gpu: &Gpu) -> Result<()> {
        for p in &self.params {
            crate::ops::elementwise::fill(gpu, &p.grad, 0.0)?;
        }
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }
}

pub struct Tape<'g> {
    pub gpu: &'g Gpu,
    /// Every value's tensor, None once [`Tape::release`]d.
    values: Vec<Option<Tensor>>,
    shapes: Vec<Vec<usize>>,
    /// For each value, the parameter it is bound to (its gradient accumulates there).
    param_of: Vec<Option<ParamId>>,
    needs_grad: Vec<bool>,
    nodes: Vec<Node>,
}

impl<'g> Tape<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        Self {
            gpu,
            values: Vec::new(),
            shapes: Vec::new(),
            param_of: Vec::new(),
            needs_grad: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// A constant input (no gradient).
    pub fn input(&mut self, t: Tensor) -> Var {
        self.push_value(t, None, false)
    }

    /// A parameter: its gradient accumulates into the store's grad buffer.
    pub fn param(&mut self, store: &ParamStore, id: ParamId) -> Var {
        self.push_value(store.get(id).value.clone(), Some(id), true)
    }

    fn push_value(&mut self, t: Tensor, param: Option<ParamId>, needs_grad: bool) -> Var {
        self.shapes.push(t.shape().to_vec());
        self.values.push(Some(t));
        self.param_of.push(param);
        self.needs_grad.push(needs_grad);
        Var(self.values.len() - 1)
    }

    pub fn value(&self, v: Var) -> &Tensor {
        self.values[v.0]
            .as_ref()
            .expect("a value used after Tape::release (a bug in the model's composition)")
    }

    /// Drops the tape's handles to `v`, a forward temporary the caller will
    /// not use again (a matmul output once its bias is added, a
    /// pre-activation once activated), and to every value that shares its
    /// buffer (the reshapes it came from or went through: `Linear::forward`
    /// returns a reshape of its bias-add output, so releasing only the
    /// reshape kept the buffer alive until the backward, 12 [B, T, N, F]
    /// pre-activations at the ABIDE bench shape). Its memory goes back to
    /// the pool (reusable at once, `gpu::pool`) unless a backward saved it;
    /// without this every forward value would live until the backward,
    /// where PyTorch frees such temporaries as their last reference goes.
    /// Only for values a function created and consumed itself: reading a
    /// released value, or any view of it, is a bug and panics.
    pub fn release(&mut self, v: Var) {
        let Some(buffer) = self.values[v.0].as_ref().map(Tensor::buffer_id) else {
            return;
        };
        for value in &mut self.values {
            if value.as_ref().is_some_and(|t| t.buffer_id() == buffer) {
                *value = None;
            }
        }
    }

    pub fn shape(&self, v: Var) -> &[usize] {
        &self.shapes[v.0]
    }

    pub fn needs_grad(&self, v: Var) -> bool {
        self.needs_grad[v.0]
    }

    /// Records an op's result and its backward. The backward is skipped
    /// entirely when no input needs a gradient.
    #[track_caller]
    pub fn push(&mut self, output: Tensor, inputs: &[Var], backward: BackwardFn) -> Var {
        let needs = inputs.iter().any(|v| self.needs_grad[v.0]);
        let out = self.push_value(output, None, needs);
        if needs {
            self.nodes.push(Node {
                inputs: inputs.to_vec(),
                output: out,
                op: std::panic::Location::caller(),
                backward,
            });
        }
        out
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Backpropagates from a scalar (1-element) value, seeding d(loss) = 1,
    /// and accumulates parameter gradients into `store`. Consumes the tape
    /// (see [`Tape::backward_from`]): clone any value needed afterwards, the
    /// loss or the logits, before calling it.
    pub fn backward(self, loss: Var, store: &ParamStore) -> Result<()> {
        let seed = self.gpu.full(&self.shapes[loss.0], 1.0)?;
        self.backward_from(loss, seed, store)
    }

    /// Backpropagates a given output gradient.
    ///
    /// Memory: the tape holds every forward value, but the backward needs
    /// only what the nodes' closures saved. So the tape's own handles are
    /// dropped before the first backward kernel is recorded (a forward
    /// temporary that no backward reads, e.g. a matmul output that only
    /// fed a bias add, is freed there), and each node is dropped as soon as
    /// its backward is recorded (its saved tensors are freed once no
    /// earlier node still holds them). The pool hands a freed buffer to the
    /// next request at once (`gpu::pool`), so the gradients reuse that
    /// memory instead of adding to it.
    pub fn backward_from(self, out: Var, grad: Tensor, store: &ParamStore) -> Result<()> {
        let Tape {
            gpu,
            values,
            shapes: _,
            param_of,
            needs_grad,
            mut nodes,
        } = self;
        let mut grads: Vec<Option<Tensor>> = vec![None; values.len()];
        drop(values);
        gpu.mark_backward_start();
        let forward_peak_in_use = gpu.peak_in_use();
        gpu.reset_peak_in_use();
        let (total, mut peak) = (nodes.len(), None::<BackwardPeak>);
        grads[out.0] = Some(grad);
        while let Some(node) = nodes.pop() {
            let op = node.op;
            let Some(g_out) = grads[node.output.0].take() else {
                continue;
            };
            let input_grads = (node.backward)(gpu, &g_out)?;
            for (input, g) in node.inputs.iter().zip(input_grads) {
                let Some(g) = g else { continue };
                if !needs_grad[input.0] {
                    continue;
                }
                match &mut grads[input.0] {
                    // Out of place: a backward may hand the same tensor to
                    // several inputs (add passes its gradient through), so an
                    // in-place sum would corrupt the others.
                    Some(acc) => *acc = crate::ops::elementwise::add(gpu, acc, &g)?,
                    slot @ None => *slot = Some(g),
                }
            }
            // A new high of the bytes in use: note what they were.
            let high = gpu.peak_in_use();
            if peak.is_none_or(|p| high > p.peak_in_use) {
                peak = Some(BackwardPeak {
                    forward_peak_in_use,
                    peak_in_use: high,
                    node: total - nodes.len() - 1,
                    nodes: total,
                    op,
                    in_use_after: gpu.memory_in_use(),
                    pending_gradients: distinct_bytes(&grads),
                });
            }
        }
        gpu.set_backward_peak(peak);
        for (i, g) in grads.into_iter().enumerate() {
            if let (Some(g), Some(pid)) = (g, param_of[i]) {
                crate::ops::elementwise::axpy(gpu, &store.get(pid).grad, 1.0, &g)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{assert_close, finite_difference, gpu, random_vec, to_f64, Tolerance};
    use crate::ops::matmul::Spec;
    use ndarray::{Array1, Array2};

    /// loss = Σ G ⊙ tanh(relu(X·W1 + b1)·W2 + b2), in f64.
    fn reference_loss(
        x: &Array2<f64>,
        g: &Array2<f64>,
        w1: &[f64],
        b1: &[f64],
        w2: &[f64],
        b2: &[f64],
        h: usize,
        o: usize,
    ) -> f64 {
        let d = x.ncols();
        let w1 = Array2::from_shape_vec((d, h), w1.to_vec()).unwrap();
        let w2 = Array2::from_shape_vec((h, o), w2.to_vec()).unwrap();
        let hid = (x.dot(&w1) + &Array1::from(b1.to_vec())).mapv(|v| v.max(0.0));
        let out = (hid.dot(&w2) + &Array1::from(b2.to_vec())).mapv(f64::tanh);
        (out * g).sum()
    }

    #[test]
    fn tape_gradients_match_finite_differences_of_the_f64_composition() {
        let gpu = gpu();
        let (n, d, h, o) = (7, 5, 6, 3);
        let xv = random_vec(n * d, 1);
        let gv = random_vec(n * o, 2);
        let init = [
            random_vec(d * h, 3),
            random_vec(h, 4),
            random_vec(h * o, 5),
            random_vec(o, 6),
        ];
        let mut store = ParamStore::default();
        let shapes: [&[usize]; 4] = [&[d, h], &[h], &[h, o], &[o]];
        let ids: Vec<ParamId> = init
            .iter()
            .zip(shapes)
            .enumerate()
            .map(|(i, (v, s))| store.add(gpu, &format!("p{i}"), v, s).unwrap())
            .collect();

        // Run two steps' worth of backward without zeroing in between would
        // double the gradient; zero once, then backward once.
        store.zero_grads(gpu).unwrap();
        let mut tape = Tape::new(gpu);
        let x = tape.input(gpu.upload(&xv, &[n, d]).unwrap());
        let gt = tape.input(gpu.upload(&gv, &[n, o]).unwrap());
        let [w1, b1, w2, b2] = [ids[0], ids[1], ids[2], ids[3]].map(|id| tape.param(&store, id));
        let z1 = tape.matmul(x, w1, Spec::NN).unwrap();
        let z1 = tape.bias_add(z1, b1).unwrap();
        let a1 = tape.relu(z1).unwrap();
        let z2 = tape.matmul(a1, w2, Spec::NN).unwrap();
        let z2 = tape.bias_add(z2, b2).unwrap();
        let y = tape.tanh(z2).unwrap();
        let prod = tape.mul(y, gt).unwrap();
        let flat = tape.reshape(prod, &[1, n * o]).unwrap();
        let ones = tape.input(gpu.full(&[n * o, 1], 1.0).unwrap());
        let loss = tape.matmul(flat, ones, Spec::NN).unwrap();
        let loss_value = tape.value(loss).clone();
        tape.backward(loss, &store).unwrap();

        let x64 = Array2::from_shape_vec((n, d), to_f64(&xv)).unwrap();
        let g64 = Array2::from_shape_vec((n, o), to_f64(&gv)).unwrap();
        let p64: Vec<Vec<f64>> = init.iter().map(|v| to_f64(v)).collect();
        let gpu_loss = gpu.read(&loss_value).unwrap()[0] as f64;
        let ref_loss = reference_loss(&x64, &g64, &p64[0], &p64[1], &p64[2], &p64[3], h, o);
        assert!(
            (gpu_loss - ref_loss).abs() < 1e-4 * ref_loss.abs().max(1.0),
            "{gpu_loss} vs {ref_loss}"
        );
        for (k, id) in ids.iter().enumerate() {
            let fd = finite_difference(&p64[k], |pk| {
                let mut ps = p64.clone();
                ps[k] = pk.to_vec();
                reference_loss(&x64, &g64, &ps[0], &ps[1], &ps[2], &ps[3], h, o)
            });
            assert_close(
                &gpu.read(&store.get(*id).grad).unwrap(),
                &fd,
                Tolerance::Composite,
                &format!("gradient of p{k}"),
            );
        }
    }

    /// `mul_constant_broadcast` (the dropout mask's product): the forward is
    /// `a ⊙ c` broadcast over the middle dimension, the gradient of `a` is
    /// the upstream gradient times the same broadcast `c` (an f64 reference,
    /// exact for this linear op), and the recorded node has `a` as its only
    /// input, so no gradient is formed for the constant.
    #[test]
    fn mul_constant_broadcast_passes_the_broadcast_constant_to_the_gradient() {
        let gpu = gpu();
        for (i, &(outer, mid, inner)) in [(1, 1, 1), (2, 3, 5), (4, 16, 48), (3, 64, 200)]
            .iter()
            .enumerate()
        {
            let n = outer * mid * inner;
            let av = random_vec(n, 60 + i as u64);
            let cv = random_vec(outer * inner, 70 + i as u64);
            let gv = random_vec(n, 80 + i as u64);
            let mut store = ParamStore::default();
            let id = store.add(gpu, "a", &av, &[outer, mid, inner]).unwrap();
            store.zero_grads(gpu).unwrap();
            let mut tape = Tape::new(gpu);
            let a = tape.param(&store, id);
            let c = gpu.upload(&cv, &[outer, inner]).unwrap();
            let y = tape.mul_constant_broadcast(a, &c, inner, mid).unwrap();
            assert_eq!(tape.nodes.last().unwrap().inputs, vec![a]);
            let broadcast = |i: usize| cv[(i / (inner * mid)) * inner + i % inner] as f64;
            let want: Vec<f64> = (0..n).map(|i| av[i] as f64 * broadcast(i)).collect();
            assert_close(
                &gpu.read(tape.value(y)).unwrap(),
                &want,
                Tolerance::ELEMENTWISE,
                "mul_constant_broadcast forward",
            );
            let gt = tape.input(gpu.upload(&gv, &[outer, mid, inner]).unwrap());
            let prod = tape.mul(y, gt).unwrap();
            let flat = tape.reshape(prod, &[1, n]).unwrap();
            let ones = tape.input(gpu.full(&[n, 1], 1.0).unwrap());
            let loss = tape.matmul(flat, ones, Spec::NN).unwrap();
            tape.backward(loss, &store).unwrap();
            let want: Vec<f64> = (0..n).map(|i| gv[i] as f64 * broadcast(i)).collect();
            assert_close(
                &gpu.read(&store.get(id).grad).unwrap(),
                &want,
                Tolerance::ELEMENTWISE,
                &format!("mul_constant_broadcast gradient [{outer}, {mid}, {inner}]"),
            );
        }
    }

    /// The backward frees what it no longer needs and reuses that memory:
    /// a chain of k tanh (each saves its output) holds k outputs after the
    /// forward; were nothing freed until the step's end, the backward's k
    /// gradients would add k more. Measured on a device of its own (the
    /// pool's high-water mark is per device).
    #[test]
    fn backward_reuses_the_memory_of_values_it_no_longer_needs() {
        let gpu = Gpu::new().expect("GPU adapter");
        let (k, len) = (8usize, 1 << 16);
        let bytes = (len * 4) as u64;
        let mut store = ParamStore::default();
        let id = store.add(&gpu, "x", &random_vec(len, 3), &[len]).unwrap();
        store.zero_grads(&gpu).unwrap();
        let base = gpu.memory().0;
        let mut tape = Tape::new(&gpu);
        let mut v = tape.param(&store, id);
        for _ in 0..k {
            v = tape.tanh(v).unwrap();
        }
        let forward_peak = gpu.memory().1;
        assert!(forward_peak >= base + k as u64 * bytes);
        tape.backward_from(v, gpu.full(&[len], 1.0).unwrap(), &store)
            .unwrap();
        gpu.flush().unwrap();
        let peak = gpu.memory().1;
        // The seed and at most two gradients alive at a time, beyond the
        // forward's k outputs (tanh's backward reads only its output).
        assert!(
            peak <= base + (k as u64 + 3) * bytes,
            "peak {} MiB above the store, forward alone {} MiB",
            (peak - base) >> 20,
            (forward_peak - base) >> 20
        );
        let g = gpu.read(&store.get(id).grad).unwrap();
        assert!(g.iter().all(|v| v.is_finite() && *v > 0.0));
    }

    /// A released temporary's memory is reused by the next value of its
    /// size during the forward, and the gradients are those of the same
    /// composition without the release. Releasing a reshape of the
    /// temporary frees it too (the tape's handle to the unreshaped value
    /// would otherwise keep the buffer).
    #[test]
    fn a_released_temporary_is_reused_and_the_gradient_is_unchanged() {
        #[derive(Clone, Copy, PartialEq, Debug)]
        enum Release {
            No,
            Direct,
            AReshape,
        }
        let gpu = Gpu::new().expect("GPU adapter");
        let (rows, cols) = (64, 32);
        let init = random_vec(rows * cols, 5);
        let bias = random_vec(cols, 6);
        let run = |release: Release| {
            let mut store = ParamStore::default();
            let x = store.add(&gpu, "x", &init, &[rows, cols]).unwrap();
            let b = store.add(&gpu, "b", &bias, &[cols]).unwrap();
            store.zero_grads(&gpu).unwrap();
            let mut tape = Tape::new(&gpu);
            let (xv, bv) = (tape.param(&store, x), tape.param(&store, b));
            let pre = tape.bias_add(xv, bv).unwrap(); // bias_add saves nothing
            let id = tape.value(pre).buffer_id();
            let view = tape.reshape(pre, &[cols, rows]).unwrap();
            let act = tape.tanh(view).unwrap();
            match release {
                Release::No => {}
                Release::Direct => tape.release(pre),
                Release::AReshape => tape.release(view),
            }
            let next = tape.tanh(act).unwrap();
            let reused = tape.value(next).buffer_id() == id;
            tape.backward_from(next, gpu.full(&[cols, rows], 1.0).unwrap(), &store)
                .unwrap();
            (
                reused,
                gpu.read(&store.get(x).grad).unwrap(),
                gpu.read(&store.get(b).grad).unwrap(),
            )
        };
        let (kept, gx0, gb0) = run(Release::No);
        assert!(!kept);
        for release in [Release::Direct, Release::AReshape] {
            let (reused, gx, gb) = run(release);
            assert!(
                reused,
                "{release:?}: the released pre-activation's buffer was not reused"
            );
            assert_eq!(gx, gx0);
            assert_eq!(gb, gb0);
        }
    }

    #[test]
    fn a_value_used_twice_gets_both_gradients() {
        let gpu = gpu();
        let mut store = ParamStore::default();
        let v = random_vec(4, 9);
        let id = store.add(gpu, "a", &v, &[1, 4]).unwrap();
        store.zero_grads(gpu).unwrap();
        let mut tape = Tape::new(gpu);
        let a = tape.param(&store, id);
        let s = tape.add(a, a).unwrap(); // d(2a)/da = 2
        let sq = tape.mul(s, a).unwrap(); // 2a², gradient 4a
        let ones = tape.input(gpu.full(&[4, 1], 1.0).unwrap());
        let loss = tape.matmul(sq, ones, Spec::NN).unwrap();
        tape.backward(loss, &store).unwrap();
        let want: Vec<f64> = v.iter().map(|&x| 4.0 * x as f64).collect();
        assert_close(
            &gpu.read(&store.get(id).grad).unwrap(),
            &want,
            Tolerance::Elementwise,
            "d(2a²)/da",
        );
    }
}
