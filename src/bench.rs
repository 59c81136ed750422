//! Kernel benchmarks, shared by `cargo bench` and `stptf bench`.
//!
//! Each case records its kernel `reps` times into one encoder, timed by GPU
//! timestamps when the adapter has them (wall clock around a waited submit
//! otherwise), after warm-up; we report the median of several samples with
//! the operation or byte count and GFLOP/s or GB/s. Nothing is asserted.

use std::time::Instant;

use crate::check::random_vec;
use crate::gpu::{Gpu, Result, Tensor};
use crate::ops::{
    adamw, barlow, batchnorm, conv1d, correlation, cross_entropy, elementwise, graph_conv,
    layernorm, lstm, matmul, partial_correlation, random, reduce, softmax,
};

/// What one run of a case does, for the rate column.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    Flops(f64),
    Bytes(f64),
}

pub struct Case {
    pub name: String,
    pub shape: String,
    pub work: Work,
    pub run: Box<dyn Fn(&Gpu) -> Result<()>>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Measurement {
    pub name: String,
    pub shape: String,
    pub median_ms: f64,
    pub rate: f64,
    pub unit: &'static str,
    pub clock: &'static str,
}

fn input(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    gpu.upload(&random_vec(shape.iter().product(), seed), shape)
}

fn matmul_case(
    gpu: &Gpu,
    name: &str,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    spec: matmul::Spec,
) -> Result<Case> {
    let a_shape = if spec.trans_a {
        [batch, k, m]
    } else {
        [batch, m, k]
    };
    let b_shape = if spec.trans_b { [n, k] } else { [k, n] };
    let a = input(gpu, &a_shape, 1)?;
    let b = input(gpu, &b_shape, 2)?;
    let c = gpu.empty(&[batch, m, n]);
    Ok(Case {
        name: name.to_string(),
        shape: format!("{batch}x({m}x{k})·({k}x{n})"),
        work: Work::Flops(2.0 * (batch * m * k * n) as f64),
        run: Box::new(move |gpu| matmul::matmul_into(gpu, &a, &b, &c, spec, 1.0)),
    })
}

/// The kernel cases, at the shapes the model uses.
pub fn kernel_cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let mut cases = vec![
        // The GNN message passing H·W for B=32, T=... folded: 70,400 rows of F=64.
        matmul_case(gpu, "matmul (GNN H·W)", 1, 70_400, 64, 64, matmul::Spec::NN)?,
        matmul_case(
            gpu,
            "matmul Âᵀ-style (TN)",
            1,
            4096,
            200,
            64,
            matmul::Spec::TN,
        )?,
        matmul_case(
            gpu,
            "matmul attention (NT)",
            32,
            128,
            128,
            128,
            matmul::Spec::NT,
        )?,
        matmul_case(gpu, "matmul square 512", 1, 512, 512, 512, matmul::Spec::NN)?,
    ];
    // Graph propagation at the pretraining shape: B=32, T=128, N=200, F=32
    // with the dynamic branch's 7 windows (L=30, S=15).
    let (b, t, nodes, f, w, s) = (32, 128, 200, 32, 7, 15);
    let flops = 2.0 * (b * t * nodes * nodes * f) as f64;
    let adj = input(gpu, &[b, w, nodes, nodes], 5)?;
    let h = input(gpu, &[b, t, nodes, f], 6)?;
    let grad = input(gpu, &[b, t, nodes, f], 7)?;
    let (adj2, h2) = (adj.clone(), h.clone());
    cases.push(Case {
        name: "graph_conv forward".into(),
        shape: format!("{b}x{t}x({nodes}x{nodes})·({nodes}x{f})"),
        work: Work::Flops(flops),
        run: Box::new(move |gpu| graph_conv::propagate(gpu, &adj2, &h2, s).map(drop)),
    });
    let (adj3, h3, grad3) = (adj.clone(), h.clone(), grad.clone());
    cases.push(Case {
        name: "graph_conv backward dH (static)".into(),
        shape: format!("{b}x{t}x({nodes}x{nodes})ᵀ·({nodes}x{f})"),
        work: Work::Flops(flops),
        run: Box::new(move |gpu| {
            graph_conv::propagate_backward(gpu, &adj3, &h3, &grad3, s, false).map(drop)
        }),
    });
    cases.push(Case {
        name: "graph_conv backward dH+dA".into(),
        shape: format!("{b}x{t}x{nodes}x{f}, W={w}"),
        work: Work::Flops(2.0 * flops),
        run: Box::new(move |gpu| {
            graph_conv::propagate_backward(gpu, &adj, &h, &grad, s, true).map(drop)
        }),
    });
    let n = 4 << 20;
    let x = input(gpu, &[n], 3)?;
    let y = input(gpu, &[n], 4)?;
    let out = gpu.empty(&[n]);
    let (x2, out2) = (x.clone(), out.clone());
    cases.push(Case {
        name: "elementwise add".into(),
        shape: format!("{n}"),
        work: Work::Bytes(3.0 * 4.0 * n as f64),
        run: Box::new(move |gpu| {
            let _ = elementwise::add(gpu, &x, &y)?;
            Ok(())
        }),
    });
    cases.push(Case {
        name: "elementwise axpy (in place)".into(),
        shape: format!("{n}"),
        work: Work::Bytes(3.0 * 4.0 * n as f64),
        run: Box::new(move |gpu| elementwise::axpy(gpu, &out2, 0.5, &x2)),
    });
    cases.extend(family_cases(gpu)?);
    Ok(cases)
}

/// A case whose run discards its output (the pool recycles it after the submit).
fn case(name: &str, shape: String, work: Work, run: impl Fn(&Gpu) -> Result<()> + 'static) -> Case {
    Case {
        name: name.to_string(),
        shape,
        work,
        run: Box::new(run),
    }
}

/// The other families at the paper/ABIDE shapes (B = 32, T = 128, D = 128, N = 200).
fn family_cases(gpu: &Gpu) -> Result<Vec<Case>> {
    let (b, t, d, n) = (32usize, 128usize, 128usize, 200usize);
    let mut cases = Vec::new();

    let x = input(gpu, &[b, d, t], 5)?;
    cases.push(case(
        "reduce mean (over T)",
        format!("[{b},{d},{t}] axis 2"),
        Work::Bytes(4.0 * (b * d * t) as f64),
        move |gpu| reduce::reduce(gpu, &x, 2, reduce::Reduction::Mean).map(drop),
    ));

    let s = input(gpu, &[b * t, t], 6)?;
    cases.push(case(
        "softmax rows",
        format!("[{},{t}]", b * t),
        Work::Bytes(8.0 * (b * t * t) as f64),
        move |gpu| softmax::softmax(gpu, &s, 0.1).map(drop),
    ));

    let xc = input(gpu, &[b, d, t], 7)?;
    let wc = input(gpu, &[d, d, 3], 8)?;
    let bc = input(gpu, &[d], 9)?;
    let gc = input(gpu, &[b, d, t], 23)?;
    let (xg, wg, gg) = (xc.clone(), wc.clone(), gc.clone());
    let (xw, ww) = (xc.clone(), wc.clone());
    cases.push(case(
        "conv1d k3 (calibration V)",
        format!("[{b},{d},{t}]*[{d},{d},3]"),
        Work::Flops(2.0 * (b * d * d * 3 * t) as f64),
        move |gpu| conv1d::conv1d(gpu, &xc, &wc, &bc).map(drop),
    ));
    // The two gradients of the same convolution: together with the forward
    // they are the profile's conv1d family (the weight gradient contracts
    // over B·T = 4096 terms per output, the others over Cin·k = 384).
    cases.push(case(
        "conv1d k3 dx (calibration V)",
        format!("[{b},{d},{t}]*[{d},{d},3]"),
        Work::Flops(2.0 * (b * d * d * 3 * t) as f64),
        move |gpu| conv1d::conv1d_backward_input(gpu, &xg, &wg, &gg).map(drop),
    ));
    cases.push(case(
        "conv1d k3 dw (calibration V)",
        format!("[{b},{d},{t}]*[{d},{d},3]"),
        Work::Flops(2.0 * (b * d * d * 3 * t) as f64),
        move |gpu| conv1d::conv1d_backward_weight(gpu, &xw, &ww, &gc).map(drop),
    ));

    let xs = input(gpu, &[b, n, t], 10)?;
    let (win, stride) = (30usize, 15usize);
    let windows = (t - win) / stride + 1;
    let xs2 = xs.clone();
    cases.push(case(
        "windowed Pearson",
        format!("[{b},{n},{t}] L{win} S{stride}"),
        Work::Flops(2.0 * (b * windows * n * n * win) as f64),
        move |gpu| correlation::correlation(gpu, &xs2, win, stride).map(drop),
    ));
    let xs3 = xs.clone();
    cases.push(case(
        "partial corr (Ledoit-Wolf)",
        format!("[{b},{n},{t}]"),
        Work::Flops((b as f64) * (2.0 * (n * n * t) as f64 + 2.0 * (n as f64).powi(3))),
        move |gpu| partial_correlation::partial_correlation(gpu, &xs3).map(drop),
    ));

    let z = input(gpu, &[b, 256], 11)?;
    let z2 = input(gpu, &[b, 256], 12)?;
    let gamma = gpu.upload(&vec![1.0; 256], &[256])?;
    let beta = gpu.upload(&vec![0.0; 256], &[256])?;
    let (zb, gb, bb) = (z.clone(), gamma.clone(), beta.clone());
    cases.push(case(
        "batchnorm forward",
        format!("[{b},256]"),
        Work::Bytes(8.0 * (b * 256) as f64),
        move |gpu| {
            batchnorm::batchnorm_forward(
                gpu,
                &zb,
                Some(batchnorm::Affine {
                    gamma: &gb,
                    beta: &bb,
                }),
            )
            .map(drop)
        },
    ));
    let xl = input(gpu, &[b * t, d], 13)?;
    let gl = gpu.upload(&vec![1.0; d], &[d])?;
    let bl = gpu.upload(&vec![0.0; d], &[d])?;
    cases.push(case(
        "layernorm forward",
        format!("[{},{d}]", b * t),
        Work::Bytes(8.0 * (b * t * d) as f64),
        move |gpu| layernorm::layernorm_forward(gpu, &xl, &gl, &bl).map(drop),
    ));
    let (za, zc) = (z.clone(), z2.clone());
    cases.push(case(
        "barlow loss forward",
        format!("[{b},256]x2"),
        Work::Flops(2.0 * (b * 256 * 256) as f64),
        move |gpu| barlow::barlow_forward(gpu, &za, &zc, barlow::LAMBDA).map(drop),
    ));
    let logits = input(gpu, &[b, 2], 14)?;
    let labels = gpu.upload(&(0..b).map(|i| (i % 2) as f32).collect::<Vec<_>>(), &[b])?;
    cases.push(case(
        "cross-entropy forward",
        format!("[{b},2]"),
        Work::Bytes(4.0 * (b * 3) as f64),
        move |gpu| cross_entropy::cross_entropy(gpu, &logits, &labels).map(drop),
    ));
    // The "LSTM encoder" ablation: region signals per frame as the input
    // (I = N), H = D. Both recurrence schedules, forward and backward.
    let dl = lstm::Dims {
        batch: b,
        steps: t,
        input: n,
        hidden: d,
    };
    let lx = input(gpu, &[b, t, n], 17)?;
    let lwi = input(gpu, &[4 * d, n], 18)?;
    let lwh = input(gpu, &[4 * d, d], 19)?;
    let lbi = input(gpu, &[4 * d], 20)?;
    let lbh = input(gpu, &[4 * d], 21)?;
    let ldh = input(gpu, &[b, t, d], 22)?;
    let lshape = format!("[{b},{t},{n}] H{d}");
    for (label, schedule) in [
        (" fused", lstm::Schedule::Fused),
        (" per-step", lstm::Schedule::PerStep),
    ] {
        let (x, wi, wh, bi, bh) = (
            lx.clone(),
            lwi.clone(),
            lwh.clone(),
            lbi.clone(),
            lbh.clone(),
        );
        cases.push(case(
            &format!("lstm forward{label}"),
            lshape.clone(),
            Work::Flops(lstm::forward_flops(dl)),
            move |gpu| lstm::lstm_forward_with(gpu, &x, &wi, &wh, &bi, &bh, schedule).map(drop),
        ));
        let saved = lstm::lstm_forward_with(gpu, &lx, &lwi, &lwh, &lbi, &lbh, schedule)?;
        let (x, wi, wh, dh) = (lx.clone(), lwi.clone(), lwh.clone(), ldh.clone());
        cases.push(case(
            &format!("lstm backward{label}"),
            lshape.clone(),
            Work::Flops(lstm::backward_flops(dl)),
            move |gpu| lstm::lstm_backward_with(gpu, &x, &wi, &wh, &saved, &dh, schedule).map(drop),
        ));
    }
    let np = 1 << 20;
    let (p, g, m, v) = (
        input(gpu, &[np], 15)?,
        input(gpu, &[np], 16)?,
        gpu.zeros(&[np])?,
        gpu.zeros(&[np])?,
    );
    cases.push(case(
        "adamw step",
        format!("{np} params"),
        Work::Bytes(7.0 * 4.0 * np as f64),
        move |gpu| adamw::adamw_step(gpu, &p, &g, &m, &v, &adamw::AdamW::default(), 1),
    ));
    let shape = [b, n, t];
    cases.push(case(
        "uniform RNG",
        format!("{shape:?}"),
        Work::Bytes(4.0 * (b * n * t) as f64),
        move |gpu| {
            random::uniform(
                gpu,
                &shape,
                random::RngKey {
                    seed: 1,
                    stream: 0,
                    step: 0,
                },
            )
            .map(drop)
        },
    ));
    Ok(cases)
}

/// Times one case: `warmup` untimed runs, then `samples` timings of `reps`
/// back-to-back runs each; returns the median per run.
pub fn measure(
    gpu: &Gpu,
    case: &Case,
    warmup: usize,
    samples: usize,
    reps: usize,
) -> Result<Measurement> {
    for _ in 0..warmup {
        (case.run)(gpu)?;
    }
    gpu.flush()?;
    gpu.wait()?;
    let mut times = Vec::with_capacity(samples);
    let mut clock = "gpu timestamps";
    for _ in 0..samples {
        let start = Instant::now();
        let gpu_time = gpu.time_on_gpu(|| {
            for _ in 0..reps {
                (case.run)(gpu)?;
            }
            Ok(())
        })?;
        let seconds = match gpu_time {
            Some(t) if t > 0.0 => t,
            _ => {
                clock = "wall clock";
                start.elapsed().as_secs_f64()
            }
        };
        times.push(seconds / reps as f64);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (rate, unit) = match case.work {
        Work::Flops(f) => (f / median / 1e9, "GFLOP/s"),
        Work::Bytes(b) => (b / median / 1e9, "GB/s"),
    };
    Ok(Measurement {
        name: case.name.clone(),
        shape: case.shape.clone(),
        median_ms: median * 1e3,
        rate,
        unit,
        clock,
    })
}

pub fn print_header(gpu: &Gpu) {
    let i = &gpu.report.info;
    println!(
        "adapter: {} ({:?}, {:?}, driver {} {})",
        i.name, i.backend, i.device_type, i.driver, i.driver_info
    );
    println!(
        "{:<30} {:<28} {:>12} {:>10} {:<8}  {}",
        "kernel", "shape", "median ms", "rate", "unit", "clock"
    );
}

pub fn print_row(m: &Measurement) {
    println!(
        "{:<30} {:<28} {:>12.3} {:>10.2} {:<8}  {}",
        m.name, m.shape, m.median_ms, m.rate, m.unit, m.clock
    );
}

/// Runs every kernel case and prints the table; `filter` keeps names containing it.
pub fn run_kernels(gpu: &Gpu, filter: Option<&str>, samples: usize) -> Result<Vec<Measurement>> {
    print_header(gpu);
    let mut out = Vec::new();
    for case in kernel_cases(gpu)? {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let m = measure(gpu, &case, 2, samples, 3)?;
        print_row(&m);
        out.push(m);
    }
    Ok(out)
}

/// One model configuration for the pretraining-step benchmark.
#[derive(Clone, Debug)]
pub struct ModelCase {
    pub name: &'static str,
    pub batch: usize,
    pub regions: usize,
    pub cfg: crate::config::ModelConfig,
    /// Timed steps (after one warm-up step).
    pub repeats: usize,
}

/// Time per pretraining step and peak pool memory of one configuration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepMeasurement {
    pub name: String,
    pub shape: String,
    pub params: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub repeats: usize,
    pub peak_mib: f64,
    pub loss: f32,
}

/// The paper's configuration (B=32, N=22, T=128, F=32, D=128) and ABIDE's
/// (N=200); `abide_repeats` is small on slow adapters.
pub fn model_cases(repeats: usize, abide_repeats: usize) -> Vec<ModelCase> {
    let cfg = crate::config::ModelConfig::default();
    vec![
        ModelCase {
            name: "paper",
            batch: 32,
            regions: 22,
            cfg: cfg.clone(),
            repeats,
        },
        ModelCase {
            name: "abide",
            batch: 32,
            regions: 200,
            cfg,
            repeats: abide_repeats,
        },
    ]
}

/// One pretraining step as the trainer runs it: STIGA views, three views
/// forward, FGCO global, backward, AdamW, one submit; timed by wall clock
/// around the step and a device wait (median over `repeats` after a warm-up).
pub fn pretrain_step(gpu: &Gpu, case: &ModelCase) -> Result<StepMeasurement> {
    use crate::autograd::optim::AdamWState;
    use crate::model::{DataDims, Model};
    use crate::train::step::{record_pretrain_step, PretrainObjective};
    let (b, n, t) = (case.batch, case.regions, case.cfg.crop);
    let dims = DataDims {
        n_regions: n,
        n_classes: 2,
    };
    let model = Model::new(gpu, case.cfg.clone(), dims, 0)?;
    let mut opt = AdamWState::new(gpu, &model.params.store, adamw::AdamW::default())?;
    let x = input(gpu, &[b, n, t], 1)?;
    let valid = gpu.full(&[b, t], 1.0)?;
    // The default experiment's objective: STIGA views, FGCO global, λ = 0.0051.
    let objective = PretrainObjective::from_config(&crate::config::Config::default());
    let mut step = |i: u64| -> Result<Tensor> {
        let loss = record_pretrain_step(gpu, &model, &x, &valid, &objective, i, &mut opt, 1e-3)?;
        gpu.flush()?;
        gpu.wait()?;
        Ok(loss)
    };
    step(0)?;
    let mut times = Vec::new();
    let mut last = None;
    for i in 0..case.repeats.max(1) {
        let t0 = Instant::now();
        last = Some(step(1 + i as u64)?);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let loss = gpu.read_scalar(&last.expect("one step"))?;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(StepMeasurement {
        name: case.name.to_string(),
        shape: format!(
            "B={b} N={n} T={t} F={} D={}",
            case.cfg.node_channels, case.cfg.width
        ),
        params: model.params.store.count(),
        median_ms: sorted[sorted.len() / 2],
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        repeats: sorted.len(),
        peak_mib: gpu.memory().1 as f64 / (1024.0 * 1024.0),
        loss,
    })
}
