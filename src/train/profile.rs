//! `stptf profile`: where one training step's time goes.
//!
//! The step is the trainer's own (`train::step`), on random input of the
//! requested shape. Wall time per step is the median of unprofiled steps
//! (profiling off costs nothing); the breakdown comes from one further step
//! with a GPU timestamp around every dispatch (`Gpu::start_profile`), grouped
//! by the model stage it was recorded in (`Gpu::set_stage`) and by kernel
//! family (the shader). The span from the first dispatch's beginning to the
//! last one's end is the step's GPU time; what lies between dispatches
//! (clears, copies, the driver's gaps) is its own row, so stage rows add up
//! to the span.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::autograd::optim::AdamWState;
use crate::config::Config;
use crate::gpu::{DispatchTime, Gpu, Result};
use crate::model::{DataDims, Model};
use crate::ops::adamw;
use crate::train::step::{
    record_finetune_step, record_pretrain_step, FinetuneObjective, PretrainObjective,
};

/// The stages a PSTA step is broken into, in step order. `train::step` and
/// the model's forward label their dispatches with these names.
pub const STAGES: [&str; 10] = [
    "views",
    "static graph",
    "dynamic graph",
    "GCNs",
    "fusion",
    "calibration",
    "aggregation",
    "loss",
    "backward",
    "optimizer",
];

/// The row for GPU time between dispatches.
pub const BETWEEN: &str = "between dispatches";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pretrain,
    Finetune,
}

/// What to profile.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    pub phase: Phase,
    pub batch: usize,
    pub regions: usize,
    /// Unprofiled timed steps (after one warm-up step); the median is reported.
    pub steps: usize,
}

/// One row of a breakdown.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub name: String,
    pub ms: f64,
    /// Of the profiled step's GPU span.
    pub share: f64,
    pub dispatches: usize,
    /// Floating-point operations the row's ops announced (matmul,
    /// graph_conv, conv1d, the partial correlation's inversion; 0 for the
    /// memory-bound families).
    pub flops: u64,
    /// Bytes of the ranges its dispatches bound.
    pub bytes: u64,
    pub gflop_per_s: f64,
    pub gb_per_s: f64,
    /// The achieved rate over the adapter's measured ceiling: GFLOP/s over
    /// the matmul ceiling where flops were counted, else GB/s over the
    /// elementwise ceiling. None until a ceiling is measured.
    pub of_ceiling: Option<f64>,
}

impl Row {
    fn rate_against(&mut self, c: &Ceiling) {
        self.of_ceiling = if self.flops > 0 {
            (c.matmul_gflops > 0.0).then(|| self.gflop_per_s / c.matmul_gflops)
        } else {
            (c.elementwise_gbs > 0.0).then(|| self.gb_per_s / c.elementwise_gbs)
        };
    }
}

/// The adapter's measured ceilings (the kernel benchmark's best cases).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ceiling {
    pub matmul_gflops: f64,
    pub elementwise_gbs: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct StepProfile {
    pub adapter: String,
    /// How the matrix products tiled their work (`Gpu::tiling`).
    pub tiling: crate::gpu::Tiling,
    pub phase: Phase,
    pub shape: String,
    pub params: usize,
    /// Median wall time of an unprofiled step (record, submit, wait).
    pub step_ms: f64,
    pub steps: usize,
    /// Wall time of the profiled step.
    pub profiled_step_ms: f64,
    /// First dispatch's beginning to last dispatch's end, profiled step.
    pub gpu_span_ms: f64,
    pub stages: Vec<Row>,
    pub kernels: Vec<Row>,
    pub dispatches: usize,
    pub bind_groups_created: u64,
    pub bind_group_hits: u64,
    pub submits: u64,
    pub peak_pool_mib: f64,
    /// In use before the step: parameters, gradients, AdamW moments, inputs.
    pub resident_mib: f64,
    /// In use at the start of the backward beyond `resident_mib`: the
    /// views and the activations the backward reads — what the step must
    /// hold at least, with this model's composition of ops.
    pub activations_mib: f64,
    /// Peak over (resident + activations): 1.0 would be no memory beyond
    /// what the backward truly needs.
    pub peak_over_bound: f64,
    /// High-water mark of the bytes live tensors held in the profiled step
    /// (the pool's peak less idle buffers of other size classes).
    pub peak_in_use_mib: f64,
    /// The same, before the backward began.
    pub forward_peak_in_use_mib: f64,
    /// What the backward held when its bytes in use peaked.
    pub backward_peak: Option<PeakComposition>,
    pub ceiling: Option<Ceiling>,
}

/// The bytes in use at the backward's peak, by what holds them (MiB):
/// `resident + saved_activations + pending_gradients + node_temporaries`
/// is the peak.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeakComposition {
    /// The node whose backward reached the peak (0 = the loss's), of `nodes`.
    pub node: usize,
    pub nodes: usize,
    /// Source location of the op that recorded that node.
    pub op: String,
    pub resident_mib: f64,
    /// Forward values the remaining nodes' backwards still hold.
    pub saved_activations_mib: f64,
    /// Gradients computed and not yet consumed by their producer's backward.
    pub pending_gradients_mib: f64,
    /// What the node's own backward held while it ran, beyond the above.
    pub node_temporaries_mib: f64,
}

impl StepProfile {
    /// Rates every row against the adapter's measured ceiling.
    pub fn set_ceiling(&mut self, c: Ceiling) {
        for r in self.stages.iter_mut().chain(self.kernels.iter_mut()) {
            r.rate_against(&c);
        }
        self.ceiling = Some(c);
    }
}

/// Runs and profiles the step that `cfg` trains, on random input of
/// `opts.batch` scans of `opts.regions` regions and `cfg.model.crop` frames.
pub fn profile_step(gpu: &Gpu, cfg: &Config, opts: &ProfileOptions) -> Result<StepProfile> {
    let (b, n, t) = (opts.batch, opts.regions, cfg.model.crop);
    let dims = DataDims {
        n_regions: n,
        n_classes: 2,
    };
    let model = Model::new(gpu, cfg.model.clone(), dims, cfg.seed)?;
    let mut opt = AdamWState::new(gpu, &model.params.store, adamw::AdamW::default())?;
    let x = gpu.upload(&crate::check::random_vec(b * n * t, 1), &[b, n, t])?;
    let valid = gpu.full(&[b, t], 1.0)?;
    // Alternating classes, so both appear in every batch.
    let labels: Vec<f32> = (0..b).map(|i| (i % 2) as f32).collect();
    let labels = gpu.upload(&labels, &[b])?;
    let objective = PretrainObjective::from_config(cfg);
    let mut step = |i: u64| -> Result<f64> {
        let t0 = Instant::now();
        match opts.phase {
            Phase::Pretrain => {
                record_pretrain_step(gpu, &model, &x, &valid, &objective, i, &mut opt, 1e-4)?
            }
            Phase::Finetune => record_finetune_step(
                gpu,
                &model,
                &x,
                &valid,
                &labels,
                &FinetuneObjective::default(),
                i,
                &mut opt,
                1e-4,
            )?,
        };
        gpu.flush()?;
        gpu.wait()?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    step(0)?;
    let mut times: Vec<f64> = Vec::new();
    for i in 0..opts.steps.max(1) {
        times.push(step(1 + i as u64)?);
    }
    times.sort_by(f64::total_cmp);
    let step_ms = times[times.len() / 2];

    let (groups_before, submits_before) = (gpu.bind_group_stats(), gpu.submits());
    let resident = gpu.memory_in_use();
    gpu.start_profile()?;
    gpu.reset_peak_in_use();
    let profiled = step(1 + times.len() as u64);
    let dispatches = gpu.finish_profile()?;
    let profiled_step_ms = profiled?;
    let groups = gpu.bind_group_stats();
    // One submit of the profiled step, one for the profile's readback.
    let submits = gpu.submits() - submits_before - 1;
    let (stages, kernels, gpu_span_ms) = breakdown(&dispatches);
    gpu.set_stage("other");
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let activations = gpu.in_use_at_backward_start().saturating_sub(resident);
    let peak = gpu.memory().1;
    let backward = gpu.backward_peak();
    let forward_peak_in_use = backward.map_or(gpu.peak_in_use(), |b| b.forward_peak_in_use);
    let peak_in_use = backward
        .map_or(0, |b| b.peak_in_use)
        .max(forward_peak_in_use);
    let backward_peak = backward.map(|b| PeakComposition {
        node: b.node,
        nodes: b.nodes,
        op: b.op.to_string(),
        resident_mib: mib(resident),
        saved_activations_mib: mib(b
            .in_use_after
            .saturating_sub(b.pending_gradients)
            .saturating_sub(resident)),
        pending_gradients_mib: mib(b.pending_gradients),
        node_temporaries_mib: mib(b.peak_in_use.saturating_sub(b.in_use_after)),
    });
    Ok(StepProfile {
        adapter: gpu.adapter_name().to_string(),
        tiling: gpu.tiling(),
        phase: opts.phase,
        shape: format!(
            "B={b} N={n} T={t} F={} D={}",
            cfg.model.node_channels, cfg.model.width
        ),
        params: model.params.store.count(),
        step_ms,
        steps: times.len(),
        profiled_step_ms,
        gpu_span_ms,
        stages,
        kernels,
        dispatches: dispatches.len(),
        bind_groups_created: groups.created - groups_before.created,
        bind_group_hits: groups.hits - groups_before.hits,
        submits,
        peak_pool_mib: mib(peak),
        resident_mib: mib(resident),
        activations_mib: mib(activations),
        peak_over_bound: peak as f64 / (resident + activations).max(1) as f64,
        peak_in_use_mib: mib(peak_in_use),
        forward_peak_in_use_mib: mib(forward_peak_in_use),
        backward_peak,
        ceiling: None,
    })
}

/// Stage rows (in [`STAGES`] order, every stage present, then any other
/// label, then [`BETWEEN`]), kernel-family rows (largest first), and the GPU
/// span in ms.
pub fn breakdown(dispatches: &[DispatchTime]) -> (Vec<Row>, Vec<Row>, f64) {
    let first = dispatches
        .iter()
        .map(|d| d.begin_s)
        .fold(f64::INFINITY, f64::min);
    let last = dispatches
        .iter()
        .map(|d| d.end_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let span_s = if dispatches.is_empty() {
        0.0
    } else {
        last - first
    };
    let span_ms = span_s.max(0.0) * 1e3;
    let share = |ms: f64| if span_ms > 0.0 { ms / span_ms } else { 0.0 };
    // (ms, dispatches, flops, bytes) per stage and per kernel family.
    type Sums = (f64, usize, u64, u64);
    let mut by_stage: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut by_family: BTreeMap<String, Sums> = BTreeMap::new();
    let add = |s: &mut Sums, d: &DispatchTime| {
        s.0 += d.seconds() * 1e3;
        s.1 += 1;
        s.2 += d.flops;
        s.3 += d.bytes;
    };
    for d in dispatches {
        add(by_stage.entry(d.stage).or_default(), d);
        let family = d.kernel.split("::").next().unwrap_or(&d.kernel).to_string();
        add(by_family.entry(family).or_default(), d);
    }
    let row = |name: &str, (ms, count, flops, bytes): Sums| {
        let per_s = |x: u64| if ms > 0.0 { x as f64 / (ms * 1e6) } else { 0.0 };
        Row {
            name: name.to_string(),
            ms,
            share: share(ms),
            dispatches: count,
            flops,
            bytes,
            gflop_per_s: per_s(flops),
            gb_per_s: per_s(bytes),
            of_ceiling: None,
        }
    };
    let mut stages: Vec<Row> = STAGES
        .iter()
        .map(|s| row(s, by_stage.remove(s).unwrap_or_default()))
        .collect();
    stages.extend(by_stage.into_iter().map(|(s, v)| row(s, v)));
    let busy: f64 = stages.iter().map(|r| r.ms).sum();
    stages.push(row(BETWEEN, ((span_ms - busy).max(0.0), 0, 0, 0)));
    let mut kernels: Vec<Row> = by_family.into_iter().map(|(k, v)| row(&k, v)).collect();
    kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    (stages, kernels, span_ms)
}

/// The adapter's ceilings: the best of the kernel benchmark's square and
/// GNN-shaped matmuls, and its elementwise add, measured now (several
/// seconds on lavapipe).
pub fn measure_ceiling(gpu: &Gpu) -> Result<Ceiling> {
    let mut ceiling = Ceiling {
        matmul_gflops: 0.0,
        elementwise_gbs: 0.0,
    };
    for case in crate::bench::kernel_cases(gpu)? {
        let slot = match case.name.as_str() {
            "matmul square 512" | "matmul (GNN H·W)" => &mut ceiling.matmul_gflops,
            "elementwise add" => &mut ceiling.elementwise_gbs,
            _ => continue,
        };
        // The kernel benchmark's own protocol (2 warm-ups, median of 7
        // samples of 3 runs): with 3 samples of 2 the ceiling moved between
        // 4.1 and 6.6 GFLOP/s within one sitting.
        let m = crate::bench::measure(gpu, &case, 2, 7, 3)?;
        *slot = slot.max(m.rate);
    }
    Ok(ceiling)
}

/// The profile as a table.
pub fn print(p: &StepProfile) {
    println!(
        "{} step, {} ({} params) on {}, matmul tiling {}",
        match p.phase {
            Phase::Pretrain => "pretrain",
            Phase::Finetune => "finetune",
        },
        p.shape,
        p.params,
        p.adapter,
        p.tiling.name()
    );
    println!(
        "step: {:.1} ms (median of {} unprofiled); profiled step {:.1} ms wall, {:.1} ms GPU span",
        p.step_ms, p.steps, p.profiled_step_ms, p.gpu_span_ms
    );
    println!(
        "dispatches {}, bind groups created {} / cache hits {}, submits {}",
        p.dispatches, p.bind_groups_created, p.bind_group_hits, p.submits
    );
    println!(
        "memory: peak pool {:.1} MiB = {:.2}x the bound (resident {:.1} MiB: parameters, gradients, AdamW, inputs; + activations {:.1} MiB live when the backward starts)",
        p.peak_pool_mib, p.peak_over_bound, p.resident_mib, p.activations_mib
    );
    println!(
        "memory in use by live tensors: peak {:.1} MiB (forward {:.1}); the pool's idle buffers of other size classes make up the other {:.1} MiB",
        p.peak_in_use_mib,
        p.forward_peak_in_use_mib,
        p.peak_pool_mib - p.peak_in_use_mib
    );
    if let Some(b) = &p.backward_peak {
        println!(
            "backward peak at node {} of {} ({}): resident {:.1} + saved activations {:.1} + pending gradients {:.1} + that node's temporaries {:.1} MiB",
            b.node,
            b.nodes,
            b.op,
            b.resident_mib,
            b.saved_activations_mib,
            b.pending_gradients_mib,
            b.node_temporaries_mib
        );
    }
    if let Some(c) = &p.ceiling {
        println!(
            "ceiling (measured now): matmul {:.1} GFLOP/s, elementwise {:.1} GB/s",
            c.matmul_gflops, c.elementwise_gbs
        );
    }
    for (title, rows) in [("stage", &p.stages), ("kernel family", &p.kernels)] {
        println!();
        println!(
            "{:<22} {:>10} {:>7} {:>10} {:>9} {:>8} {:>9}",
            title, "ms", "share", "dispatches", "GFLOP/s", "GB/s", "ceiling"
        );
        for r in rows.iter() {
            let gflops = if r.flops > 0 {
                format!("{:.2}", r.gflop_per_s)
            } else {
                "-".into()
            };
            let ceiling = r
                .of_ceiling
                .map_or("-".into(), |c| format!("{:.0}%", c * 100.0));
            println!(
                "{:<22} {:>10.2} {:>6.1}% {:>10} {:>9} {:>8.2} {:>9}",
                r.name,
                r.ms,
                r.share * 100.0,
                r.dispatches,
                gflops,
                r.gb_per_s,
                ceiling
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::gpu::Recorded;

    fn tiny() -> Config {
        Config {
            model: ModelConfig {
                crop: 16,
                node_channels: 4,
                width: 8,
                embed_dim: 4,
                window: 8,
                stride: 4,
                segment: 4,
                qk_dim: 4,
                proj_dim: 8,
                ..ModelConfig::default()
            },
            ..Config::default()
        }
    }

    /// Profiles a tiny step of each phase on a device of its own (a profile
    /// times every dispatch on its device, so other tests must not share
    /// it) and checks, from the JSON: every stage row is present in order,
    /// the stage rows add up to the GPU span, the kernel-family rows to the
    /// stages' busy time, the span fits in the step's wall time, and every
    /// dispatch the step recorded was timed (the profile's count against
    /// the command trace of the same steps).
    #[test]
    fn a_profiled_step_adds_up_and_times_every_dispatch() {
        let gpu = Gpu::new().expect("GPU adapter");
        assert!(
            gpu.report.timestamp_queries,
            "the profile test needs timestamp queries, which lavapipe has"
        );
        for phase in [Phase::Pretrain, Phase::Finetune] {
            let opts = ProfileOptions {
                phase,
                batch: 4,
                regions: 6,
                steps: 1,
            };
            let (p, trace) = gpu.traced(|| profile_step(&gpu, &tiny(), &opts).unwrap());
            let recorded = trace
                .iter()
                .filter(|r| matches!(r, Recorded::Dispatch { .. }))
                .count();
            // Warm-up, one timed step, the profiled step: alike but for
            // one-time work the first step records (measured: one dispatch),
            // so the profiled step must account for a third of the trace.
            assert!(
                recorded >= 3 * p.dispatches && recorded <= 3 * p.dispatches + 4,
                "{phase:?}: {recorded} recorded, {} profiled",
                p.dispatches
            );
            let json: serde_json::Value =
                serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            let rows = |key: &str| -> Vec<(String, f64, u64)> {
                json[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            r["name"].as_str().unwrap().to_string(),
                            r["ms"].as_f64().unwrap(),
                            r["dispatches"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            };
            let (stages, kernels) = (rows("stages"), rows("kernels"));
            let names: Vec<&str> = stages.iter().map(|r| r.0.as_str()).collect();
            assert_eq!(&names[..STAGES.len()], STAGES, "{phase:?}");
            assert_eq!(names.last(), Some(&BETWEEN));
            for stage in ["GCNs", "static graph", "loss", "backward", "optimizer"] {
                let row = stages.iter().find(|r| r.0 == stage).unwrap();
                assert!(row.2 > 0 && row.1 > 0.0, "{phase:?}: {stage} {row:?}");
            }
            let views = stages.iter().find(|r| r.0 == "views").unwrap();
            assert_eq!(views.2 > 0, phase == Phase::Pretrain, "{views:?}");
            let span = json["gpu_span_ms"].as_f64().unwrap();
            let total: f64 = stages.iter().map(|r| r.1).sum();
            assert!(
                (total - span).abs() <= 1e-6 * span.max(1.0),
                "{total} vs {span}"
            );
            let busy = total - stages.last().unwrap().1;
            let by_kernel: f64 = kernels.iter().map(|r| r.1).sum();
            assert!((busy - by_kernel).abs() <= 1e-6 * busy.max(1.0));
            let counted: u64 = kernels.iter().map(|r| r.2).sum();
            assert_eq!(counted as usize, p.dispatches);
            assert!(span > 0.0 && span <= json["profiled_step_ms"].as_f64().unwrap());
            assert!(p.submits >= 1 && p.bind_groups_created + p.bind_group_hits > 0);
            // Rates: matmul rows are rated in GFLOP/s, elementwise in GB/s.
            let family = |name: &str| {
                json["kernels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["name"] == name)
                    .unwrap_or_else(|| panic!("{phase:?}: no {name} row"))
                    .clone()
            };
            let (mm, ew) = (family("matmul"), family("elementwise"));
            assert!(mm["flops"].as_u64().unwrap() > 0 && mm["gflop_per_s"].as_f64().unwrap() > 0.0);
            assert!(ew["flops"].as_u64().unwrap() == 0 && ew["gb_per_s"].as_f64().unwrap() > 0.0);
            // Memory: the backward holds activations, and the peak covers
            // at least what was live when it began.
            assert!(p.activations_mib > 0.0 && p.resident_mib > 0.0, "{phase:?}");
            assert!(p.peak_over_bound >= 1.0, "{phase:?}: {}", p.peak_over_bound);
            // The live tensors' peak is within the pool's, and the backward
            // peak's parts add up to it.
            assert!(
                p.peak_in_use_mib <= p.peak_pool_mib
                    && p.peak_in_use_mib >= p.forward_peak_in_use_mib,
                "{phase:?}: in use {} pool {} forward {}",
                p.peak_in_use_mib,
                p.peak_pool_mib,
                p.forward_peak_in_use_mib
            );
            let b = p
                .backward_peak
                .as_ref()
                .expect("the backward records its peak");
            assert!(b.node < b.nodes && b.op.contains("src/"), "{b:?}");
            let parts = b.resident_mib
                + b.saved_activations_mib
                + b.pending_gradients_mib
                + b.node_temporaries_mib;
            assert!(json["backward_peak"]["pending_gradients_mib"].is_f64());
            assert!(
                parts <= p.peak_in_use_mib + 1e-6 && b.pending_gradients_mib > 0.0,
                "{phase:?}: parts {parts} of {}: {b:?}",
                p.peak_in_use_mib
            );
        }
    }

    /// One matmul of known size, profiled: its dispatch carries 2·M·N·K
    /// flops and the bytes of its three operands.
    #[test]
    fn a_profiled_matmul_counts_its_flops_and_bytes() {
        let gpu = Gpu::new().expect("GPU adapter");
        let (m, k, n) = (24, 16, 12);
        let a = gpu
            .upload(&crate::check::random_vec(m * k, 1), &[m, k])
            .unwrap();
        let b = gpu
            .upload(&crate::check::random_vec(k * n, 2), &[k, n])
            .unwrap();
        gpu.start_profile().unwrap();
        let _c = crate::ops::matmul::matmul(&gpu, &a, &b, crate::ops::matmul::Spec::NN).unwrap();
        let d = gpu.finish_profile().unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].flops, (2 * m * n * k) as u64);
        assert_eq!(d[0].bytes, ((m * k + k * n + m * n) * 4) as u64);
    }
}
