//! Differentiable wrapper for the LSTM family (the "LSTM encoder" ablation).

use super::{Tape, Var};
use crate::gpu::Result;
use crate::ops::lstm;

impl Tape<'_> {
    /// Single-layer LSTM over time: x [B, T, I], W_ih [4H, I], W_hh [4H, H],
    /// b_ih, b_hh [4H] (PyTorch gate order i, f, g, o; zero initial state)
    /// → all hidden states [B, T, H].
    pub fn lstm(&mut self, x: Var, w_ih: Var, w_hh: Var, b_ih: Var, b_hh: Var) -> Result<Var> {
        let (tx, twi, twh) = (
            self.value(x).clone(),
            self.value(w_ih).clone(),
            self.value(w_hh).clone(),
        );
        let fwd = lstm::lstm_forward(
            self.gpu,
            &tx,
            &twi,
            &twh,
            self.value(b_ih),
            self.value(b_hh),
        )?;
        let out = fwd.h.clone();
        let need_x = self.needs_grad(x);
        Ok(self.push(
            out,
            &[x, w_ih, w_hh, b_ih, b_hh],
            Box::new(move |gpu, g| {
                let gr = lstm::lstm_backward(gpu, &tx, &twi, &twh, &fwd, g)?;
                Ok(vec![
                    need_x.then_some(gr.dx),
                    Some(gr.dw_ih),
                    Some(gr.dw_hh),
                    Some(gr.db_ih),
                    Some(gr.db_hh),
                ])
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::autograd::{ParamId, ParamStore, Tape};
    use crate::check::{assert_close, finite_difference, gpu, random_vec, to_f64, Tolerance};
    use crate::ops::lstm::{reference, Dims};
    use crate::ops::matmul::Spec;

    /// loss = mean over T of h, then Σ G ⊙ pooled (the ablation encoder pools
    /// the sequence), with x and all four weights as parameters; the tape's
    /// gradients against central differences of the f64 reference.
    #[test]
    fn tape_lstm_gradients_match_finite_differences() {
        let gpu = gpu();
        let d = Dims {
            batch: 2,
            steps: 5,
            input: 3,
            hidden: 4,
        };
        let (b, t, i, h) = (d.batch, d.steps, d.input, d.hidden);
        let shapes: [&[usize]; 5] = [&[b, t, i], &[4 * h, i], &[4 * h, h], &[4 * h], &[4 * h]];
        let init: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(k, s)| random_vec(s.iter().product(), 40 + k as u64))
            .collect();
        let gv = random_vec(b * h, 50);
        let mut store = ParamStore::default();
        let ids: Vec<ParamId> = init
            .iter()
            .zip(shapes)
            .enumerate()
            .map(|(k, (v, s))| store.add(gpu, &format!("p{k}"), v, s).unwrap())
            .collect();
        store.zero_grads(gpu).unwrap();
        let mut tape = Tape::new(gpu);
        let [x, wi, wh, bi, bh] =
            [ids[0], ids[1], ids[2], ids[3], ids[4]].map(|id| tape.param(&store, id));
        let hs = tape.lstm(x, wi, wh, bi, bh).unwrap();
        let pooled = tape.mean(hs, 1).unwrap();
        let gt = tape.input(gpu.upload(&gv, &[b, h]).unwrap());
        let prod = tape.mul(pooled, gt).unwrap();
        let flat = tape.reshape(prod, &[1, b * h]).unwrap();
        let ones = tape.input(gpu.full(&[b * h, 1], 1.0).unwrap());
        let loss = tape.matmul(flat, ones, Spec::NN).unwrap();
        let loss_value = tape.value(loss).clone();
        tape.backward(loss, &store).unwrap();

        let p64: Vec<Vec<f64>> = init.iter().map(|v| to_f64(v)).collect();
        let g64 = to_f64(&gv);
        let ref_loss = |ps: &[Vec<f64>]| -> f64 {
            let hv = reference::forward(&ps[0], &ps[1], &ps[2], &ps[3], &ps[4], d).h;
            let mut l = 0.0;
            for bb in 0..b {
                for j in 0..h {
                    let mean: f64 =
                        (0..t).map(|tt| hv[(bb * t + tt) * h + j]).sum::<f64>() / t as f64;
                    l += g64[bb * h + j] * mean;
                }
            }
            l
        };
        let gpu_loss = gpu.read(&loss_value).unwrap()[0] as f64;
        let want = ref_loss(&p64);
        assert!(
            (gpu_loss - want).abs() <= 1e-4 * want.abs().max(1.0),
            "loss {gpu_loss} vs {want}"
        );
        for (k, name) in ["x", "W_ih", "W_hh", "b_ih", "b_hh"].iter().enumerate() {
            let fd = finite_difference(&p64[k], |v| {
                let mut ps = p64.clone();
                ps[k] = v.to_vec();
                ref_loss(&ps)
            });
            assert_close(
                &gpu.read(&store.get(ids[k]).grad).unwrap(),
                &fd,
                Tolerance::Composite,
                &format!("tape d{name}"),
            );
        }
    }
}
