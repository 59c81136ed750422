//! Differentiable wrappers for the model's kernel families: graph
//! propagation, axis swaps, GPU-scalar scale/shift and segment pooling. Each
//! runs the forward kernel and pushes a backward closure that calls the
//! family's backward kernels (see `ops.rs` for the pattern).

use super::{Tape, Var};
use crate::gpu::{Result, Tensor};
use crate::ops::{graph_conv, scalar, segment_pool, transpose};

impl Tape<'_> {
    /// `out[b,t] = A[b,w(t)] · H[b,t]` with w(t) = min(⌊t/S⌋, W − 1)
    /// (adjacency [B, W, N, N] or [B, N, N], H [B, T, N, F]). The adjacency
    /// gets a gradient only when it needs one (the dynamic branch's; the
    /// static one is an input).
    pub fn graph_conv(&mut self, adj: Var, h: Var, stride: usize) -> Result<Var> {
        let (ta, th) = (self.value(adj).clone(), self.value(h).clone());
        let out = graph_conv::propagate(self.gpu, &ta, &th, stride)?;
        let want_adj = self.needs_grad(adj);
        Ok(self.push(
            out,
            &[adj, h],
            Box::new(move |gpu, g| {
                let (dh, da) = graph_conv::propagate_backward(gpu, &ta, &th, g, stride, want_adj)?;
                Ok(vec![da, Some(dh)])
            }),
        ))
    }

    /// Swaps axes `axis` and `axis + 1` (e.g. [B, T, N, F] ↔ [B, N, T, F]).
    pub fn swap_axes(&mut self, x: Var, axis: usize) -> Result<Var> {
        let out = transpose::swap_axes(self.gpu, self.value(x), axis)?;
        Ok(self.push(
            out,
            &[x],
            Box::new(move |gpu, g| Ok(vec![Some(transpose::swap_axes(gpu, g, axis)?)])),
        ))
    }

    /// Batched transpose of the last two dimensions.
    pub fn transpose(&mut self, x: Var) -> Result<Var> {
        let rank = self.shape(x).len();
        if rank < 2 {
            // Let the kernel's launcher report the shape error.
            transpose::transpose(self.gpu, self.value(x))?;
        }
        self.swap_axes(x, rank.saturating_sub(2))
    }

    /// `x · s[index]` with `s` a small GPU tensor (β, c₀, c₁).
    pub fn mul_scalar(&mut self, x: Var, s: Var, index: usize) -> Result<Var> {
        let (tx, ts) = (self.value(x).clone(), self.value(s).clone());
        let out = scalar::mul_scalar(self.gpu, &tx, &ts, index)?;
        let (nx, ns) = (self.needs_grad(x), self.needs_grad(s));
        Ok(self.push(
            out,
            &[x, s],
            Box::new(move |gpu, g| {
                let dx = if nx {
                    Some(scalar::mul_scalar(gpu, g, &ts, index)?)
                } else {
                    None
                };
                let ds = if ns {
                    let ds = gpu.zeros(ts.shape())?;
                    scalar::sum_into(gpu, g, Some(&tx), &ds, index)?;
                    Some(ds)
                } else {
                    None
                };
                Ok(vec![dx, ds])
            }),
        ))
    }

    /// `x + s[index]` with `s` a small GPU tensor (c_b).
    pub fn add_scalar(&mut self, x: Var, s: Var, index: usize) -> Result<Var> {
        let ts = self.value(s).clone();
        let out = scalar::add_scalar(self.gpu, self.value(x), &ts, index)?;
        let ns = self.needs_grad(s);
        Ok(self.push(
            out,
            &[x, s],
            Box::new(move |gpu, g| {
                let ds = if ns {
                    Some(scalar::add_scalar_backward(gpu, &ts, index, g)?)
                } else {
                    None
                };
                Ok(vec![Some(g.clone()), ds])
            }),
        ))
    }

    /// Segment attention pooling: h [B, T, D], scores e [B, T], constant
    /// `valid` [B, T], segment length `seg`. Returns g [B, ⌈T/seg⌉, D] on the
    /// tape and the weights a [B, T] (for inspection: which frames mattered).
    pub fn segment_pool(
        &mut self,
        h: Var,
        e: Var,
        valid: &Tensor,
        seg: usize,
    ) -> Result<(Var, Tensor)> {
        let th = self.value(h).clone();
        let (g, a) = segment_pool::segment_pool(self.gpu, &th, self.value(e), valid, seg)?;
        let saved = a.clone();
        let var = self.push(
            g,
            &[h, e],
            Box::new(move |gpu, dg| {
                let (dh, de) = segment_pool::segment_pool_backward(gpu, &th, &saved, dg, seg)?;
                Ok(vec![Some(dh), Some(de)])
            }),
        );
        Ok((var, a))
    }
}

#[cfg(test)]
mod tests {
    use crate::autograd::{ParamId, ParamStore, Tape};
    use crate::check::{assert_close, finite_difference, gpu, random_vec, to_f64, Tolerance};
    use crate::gpu::Gpu;
    use crate::ops::{graph_conv, scalar, segment_pool, transpose};

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Adds parameters with random values; returns their ids and f64 copies.
    fn params(
        gpu: &Gpu,
        store: &mut ParamStore,
        shapes: &[&[usize]],
        seed: u64,
    ) -> (Vec<ParamId>, Vec<Vec<f64>>) {
        let mut ids = Vec::new();
        let mut values = Vec::new();
        for (k, shape) in shapes.iter().enumerate() {
            let v = random_vec(shape.iter().product(), seed + k as u64);
            ids.push(store.add(gpu, &format!("p{k}"), &v, shape).unwrap());
            values.push(to_f64(&v));
        }
        store.zero_grads(gpu).unwrap();
        (ids, values)
    }

    /// Checks each parameter's accumulated gradient against finite differences
    /// of `loss` (a function of all parameter values).
    fn check(
        gpu: &Gpu,
        store: &ParamStore,
        ids: &[ParamId],
        values: &[Vec<f64>],
        loss: impl Fn(&[Vec<f64>]) -> f64,
        what: &str,
    ) {
        for (k, id) in ids.iter().enumerate() {
            let fd = finite_difference(&values[k], |x| {
                let mut vs = values.to_vec();
                vs[k] = x.to_vec();
                loss(&vs)
            });
            assert_close(
                &gpu.read(&store.get(*id).grad).unwrap(),
                &fd,
                Tolerance::Composite,
                &format!("{what}: gradient of parameter {k}"),
            );
        }
    }

    #[test]
    fn graph_conv_gradients_on_the_tape() {
        let gpu = gpu();
        let d = graph_conv::Dims {
            batch: 2,
            frames: 5,
            nodes: 3,
            feats: 2,
            windows: 2,
            stride: 2,
        };
        let a_shape = [d.batch, d.windows, d.nodes, d.nodes];
        let h_shape = [d.batch, d.frames, d.nodes, d.feats];
        let gv = random_vec(h_shape.iter().product(), 902);
        let g64 = to_f64(&gv);
        // Dynamic adjacency (a parameter-like value with a gradient).
        let mut store = ParamStore::default();
        let (ids, values) = params(gpu, &mut store, &[&a_shape, &h_shape], 900);
        let mut tape = Tape::new(gpu);
        let a = tape.param(&store, ids[0]);
        let h = tape.param(&store, ids[1]);
        let out = tape.graph_conv(a, h, d.stride).unwrap();
        tape.backward_from(out, gpu.upload(&gv, &h_shape).unwrap(), &store)
            .unwrap();
        check(
            gpu,
            &store,
            &ids,
            &values,
            |v| dot(&graph_conv::reference::propagate(&v[0], &v[1], &d), &g64),
            "dynamic",
        );
        // Static adjacency: an input, so only H gets a gradient.
        let mut store = ParamStore::default();
        let (ids, values) = params(gpu, &mut store, &[&h_shape], 910);
        let av = random_vec(d.batch * d.nodes * d.nodes, 911);
        let a64 = to_f64(&av);
        let mut tape = Tape::new(gpu);
        let a = tape.input(gpu.upload(&av, &[d.batch, d.nodes, d.nodes]).unwrap());
        let h = tape.param(&store, ids[0]);
        let out = tape.graph_conv(a, h, 1).unwrap();
        tape.backward_from(out, gpu.upload(&gv, &h_shape).unwrap(), &store)
            .unwrap();
        let d1 = graph_conv::Dims { windows: 1, ..d };
        check(
            gpu,
            &store,
            &ids,
            &values,
            |v| dot(&graph_conv::reference::propagate(&a64, &v[0], &d1), &g64),
            "static",
        );
    }

    #[test]
    fn swap_axes_gradient_on_the_tape() {
        let gpu = gpu();
        let shape = [2, 3, 4, 2];
        let mut store = ParamStore::default();
        let (ids, values) = params(gpu, &mut store, &[&shape], 920);
        let gv = random_vec(48, 921);
        let g64 = to_f64(&gv);
        let mut tape = Tape::new(gpu);
        let x = tape.param(&store, ids[0]);
        let y = tape.swap_axes(x, 1).unwrap();
        let z = tape.transpose(y).unwrap(); // [2, 4, 2, 3]
        assert_eq!(tape.shape(z), &[2, 4, 2, 3]);
        tape.backward_from(z, gpu.upload(&gv, &[2, 4, 2, 3]).unwrap(), &store)
            .unwrap();
        check(
            gpu,
            &store,
            &ids,
            &values,
            |v| {
                let y = transpose::reference::swap(&v[0], 2, 3, 4, 2);
                dot(&transpose::reference::swap(&y, 8, 3, 2, 1), &g64)
            },
            "swap then transpose",
        );
    }

    #[test]
    fn scalar_ops_gradients_on_the_tape() {
        let gpu = gpu();
        let n = 300;
        let mut store = ParamStore::default();
        let (ids, values) = params(gpu, &mut store, &[&[n], &[3]], 930);
        let gv = random_vec(n, 931);
        let g64 = to_f64(&gv);
        let mut tape = Tape::new(gpu);
        let x = tape.param(&store, ids[0]);
        let s = tape.param(&store, ids[1]);
        // (x · s[2]) + s[0]: both scalar ops, the scalar used twice.
        let y = tape.mul_scalar(x, s, 2).unwrap();
        let z = tape.add_scalar(y, s, 0).unwrap();
        tape.backward_from(z, gpu.upload(&gv, &[n]).unwrap(), &store)
            .unwrap();
        check(
            gpu,
            &store,
            &ids,
            &values,
            |v| {
                let y = scalar::reference::mul_scalar(&v[0], &v[1], 2);
                dot(&scalar::reference::add_scalar(&y, &v[1], 0), &g64)
            },
            "x·s[2] + s[0]",
        );
    }

    #[test]
    fn segment_pool_gradients_on_the_tape() {
        let gpu = gpu();
        let d = segment_pool::Dims {
            batch: 2,
            frames: 9,
            dim: 3,
            seg: 4,
        };
        let k = d.segments();
        let mut store = ParamStore::default();
        let (ids, values) = params(
            gpu,
            &mut store,
            &[&[d.batch, d.frames, d.dim], &[d.batch, d.frames]],
            940,
        );
        let vv: Vec<f32> = (0..d.batch * d.frames)
            .map(|i| ((i % d.frames) < [9, 6][i / d.frames]) as u8 as f32)
            .collect();
        let v64 = to_f64(&vv);
        let gv = random_vec(d.batch * k * d.dim, 941);
        let g64 = to_f64(&gv);
        let mut tape = Tape::new(gpu);
        let h = tape.param(&store, ids[0]);
        let e = tape.param(&store, ids[1]);
        let valid = gpu.upload(&vv, &[d.batch, d.frames]).unwrap();
        let (g, _) = tape.segment_pool(h, e, &valid, d.seg).unwrap();
        tape.backward_from(g, gpu.upload(&gv, &[d.batch, k, d.dim]).unwrap(), &store)
            .unwrap();
        check(
            gpu,
            &store,
            &ids,
            &values,
            |v| {
                dot(
                    &segment_pool::reference::segment_pool(&v[0], &v[1], &v64, &d).0,
                    &g64,
                )
            },
            "segment pool",
        );
    }
}
