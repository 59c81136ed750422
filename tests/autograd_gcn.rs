//! The tape end to end: a two-layer GCN on a random normalized adjacency,
//! mean-pool over nodes, a linear head and softmax cross-entropy.
//! 1. Every parameter's GPU gradient matches central finite differences of
//!    an independent f64 CPU composition.
//! 2. AdamW on the GPU overfits one batch (loss falls at least 10x).

use ndarray::{Array1, Array2, Array3, Axis};
use stptf::autograd::optim::AdamWState;
use stptf::autograd::{ParamId, ParamStore, Tape, Var};
use stptf::check::{finite_difference, gpu, random_vec, to_f64};
use stptf::gpu::Gpu;
use stptf::ops::adamw::AdamW;
use stptf::ops::matmul::Spec;

const B: usize = 3;
const N: usize = 7;
const FIN: usize = 3;
const F: usize = 5;
const C: usize = 3;

/// Â = D^{-1/2}(|R| + I)D^{-1/2} for a random symmetric R with zero diagonal.
fn normalized_adjacency(n: usize, seed: u64) -> Array2<f64> {
    let r = random_vec(n * n, seed);
    let mut a = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..n {
            a[[i, j]] = if i == j {
                1.0
            } else {
                (r[i.min(j) * n + i.max(j)] as f64).abs()
            };
        }
    }
    let d: Vec<f64> = a
        .rows()
        .into_iter()
        .map(|row| row.sum().sqrt().recip())
        .collect();
    Array2::from_shape_fn((n, n), |(i, j)| d[i] * a[[i, j]] * d[j])
}

struct Params64 {
    w1: Array2<f64>,
    b1: Array1<f64>,
    w2: Array2<f64>,
    b2: Array1<f64>,
    w3: Array2<f64>,
    b3: Array1<f64>,
}

const SHAPES: [&[usize]; 6] = [&[FIN, F], &[F], &[F, F], &[F], &[F, C], &[C]];

fn params64(flat: &[Vec<f64>]) -> Params64 {
    Params64 {
        w1: Array2::from_shape_vec((FIN, F), flat[0].clone()).unwrap(),
        b1: Array1::from(flat[1].clone()),
        w2: Array2::from_shape_vec((F, F), flat[2].clone()).unwrap(),
        b2: Array1::from(flat[3].clone()),
        w3: Array2::from_shape_vec((F, C), flat[4].clone()).unwrap(),
        b3: Array1::from(flat[5].clone()),
    }
}

/// The f64 composition, written directly with ndarray (not our kernels' references).
fn cpu_loss(a: &Array2<f64>, x: &Array3<f64>, labels: &[usize], p: &Params64) -> f64 {
    let mut total = 0.0;
    for b in 0..B {
        let xb = x.index_axis(Axis(0), b);
        let h1 = (a.dot(&xb).dot(&p.w1) + &p.b1).mapv(|v| v.max(0.0));
        let h2 = (a.dot(&h1).dot(&p.w2) + &p.b2).mapv(|v| v.max(0.0));
        let pooled = h2.mean_axis(Axis(0)).unwrap();
        let logits = pooled.dot(&p.w3) + &p.b3;
        let m = logits.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let lse = logits.mapv(|v| (v - m).exp()).sum().ln() + m;
        total += lse - logits[labels[b]];
    }
    total / B as f64
}

fn forward(
    tape: &mut Tape,
    store: &ParamStore,
    ids: &[ParamId],
    a: Var,
    x: Var,
    labels: Var,
) -> Var {
    let p: Vec<Var> = ids.iter().map(|&id| tape.param(store, id)).collect();
    let ax = tape.matmul(a, x, Spec::NN).unwrap(); // Â broadcast over the batch
    let h1 = tape.matmul(ax, p[0], Spec::NN).unwrap();
    let h1 = tape.bias_add(h1, p[1]).unwrap();
    let h1 = tape.relu(h1).unwrap();
    let ah = tape.matmul(a, h1, Spec::NN).unwrap();
    let h2 = tape.matmul(ah, p[2], Spec::NN).unwrap();
    let h2 = tape.bias_add(h2, p[3]).unwrap();
    let h2 = tape.relu(h2).unwrap();
    let pooled = tape.mean(h2, 1).unwrap(); // [B, F]
    let logits = tape.matmul(pooled, p[4], Spec::NN).unwrap();
    let logits = tape.bias_add(logits, p[5]).unwrap();
    tape.cross_entropy(logits, labels).unwrap()
}

fn setup(gpu: &Gpu, seed: u64) -> (ParamStore, Vec<ParamId>, Vec<Vec<f32>>) {
    let mut store = ParamStore::default();
    let init: Vec<Vec<f32>> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            random_vec(s.iter().product(), seed + i as u64)
                .iter()
                .map(|v| v * 0.8)
                .collect()
        })
        .collect();
    let ids = init
        .iter()
        .zip(SHAPES)
        .enumerate()
        .map(|(i, (v, s))| store.add(gpu, &format!("p{i}"), v, s).unwrap())
        .collect();
    (store, ids, init)
}

#[test]
fn gcn_gradients_match_finite_differences_of_the_cpu_composition() {
    let gpu = gpu();
    let a64 = normalized_adjacency(N, 1);
    let xv = random_vec(B * N * FIN, 2);
    let labels = [0usize, 2, 1];
    let (store, ids, init) = setup(gpu, 10);
    store.zero_grads(gpu).unwrap();
    let mut tape = Tape::new(gpu);
    let a_f32: Vec<f32> = a64.iter().map(|&v| v as f32).collect();
    let a = tape.input(gpu.upload(&a_f32, &[N, N]).unwrap());
    let x = tape.input(gpu.upload(&xv, &[B, N, FIN]).unwrap());
    let y = tape.input(gpu.upload(&labels.map(|l| l as f32), &[B]).unwrap());
    let loss = forward(&mut tape, &store, &ids, a, x, y);
    let loss_value = tape.value(loss).clone();
    tape.backward(loss, &store).unwrap();

    let x64 = Array3::from_shape_vec((B, N, FIN), to_f64(&xv)).unwrap();
    let flat: Vec<Vec<f64>> = init.iter().map(|v| to_f64(v)).collect();
    let want_loss = cpu_loss(&a64, &x64, &labels, &params64(&flat));
    let got_loss = gpu.read(&loss_value).unwrap()[0] as f64;
    assert!(
        (got_loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0),
        "loss {got_loss} vs {want_loss}"
    );

    for (k, id) in ids.iter().enumerate() {
        let fd = finite_difference(&flat[k], |pk| {
            let mut f = flat.clone();
            f[k] = pk.to_vec();
            cpu_loss(&a64, &x64, &labels, &params64(&f))
        });
        let got = gpu.read(&store.get(*id).grad).unwrap();
        // Relative to the parameter's largest gradient: these gradients are
        // ~1e-2, so an error relative to max(1, |g|) would hide a 10% mistake.
        let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-8);
        for (i, (&g, &w)) in got.iter().zip(&fd).enumerate() {
            let err = (g as f64 - w).abs() / scale;
            assert!(err < 1e-3, "p{k}[{i}]: GPU {g}, finite difference {w} (error {err:.2e} of the largest gradient {scale:.2e})");
        }
        assert!(
            scale > 1e-6,
            "p{k} got no gradient at all: the test would be vacuous"
        );
    }
}

#[test]
fn adamw_overfits_one_batch() {
    let gpu = gpu();
    let b = 8;
    let a64 = normalized_adjacency(N, 3);
    let a_f32: Vec<f32> = a64.iter().map(|&v| v as f32).collect();
    let xv = random_vec(b * N * FIN, 4);
    let labels: Vec<f32> = (0..b).map(|i| (i % C) as f32).collect();
    let (store, ids, _) = setup(gpu, 20);
    let mut opt = AdamWState::new(
        gpu,
        &store,
        AdamW {
            weight_decay: 0.0,
            ..AdamW::default()
        },
    )
    .unwrap();
    let a_t = gpu.upload(&a_f32, &[N, N]).unwrap();
    let x_t = gpu.upload(&xv, &[b, N, FIN]).unwrap();
    let y_t = gpu.upload(&labels, &[b]).unwrap();
    let mut first = None;
    let mut last = 0.0;
    for step in 0..300 {
        store.zero_grads(gpu).unwrap();
        let mut tape = Tape::new(gpu);
        let a = tape.input(a_t.clone());
        let x = tape.input(x_t.clone());
        let y = tape.input(y_t.clone());
        let loss = forward(&mut tape, &store, &ids, a, x, y);
        let loss_value = tape.value(loss).clone();
        tape.backward(loss, &store).unwrap();
        opt.update(gpu, &store, 1e-2).unwrap();
        // One submit per step; the loss is read only at the ends.
        if step == 0 || step == 299 {
            let l = gpu.read(&loss_value).unwrap()[0];
            if step == 0 {
                first = Some(l);
            }
            last = l;
        } else {
            gpu.flush().unwrap();
        }
    }
    let first = first.unwrap();
    assert!(
        last.is_finite() && last * 10.0 <= first,
        "loss went from {first} to {last}: expected a 10x fall"
    );
}
