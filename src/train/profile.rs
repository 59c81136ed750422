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
    pub ceiling: Option<Ceiling>,
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
    gpu.start_profile()?;
    let profiled = step(1 + times.len() as u64);
    let dispatches = gpu.finish_profile()?;
    let profiled_step_ms = profiled?;
    let groups = gpu.bind_group_stats();
    // One submit of the profiled step, one for the profile's readback.
    let submits = gpu.submits() - submits_before - 1;
    let (stages, kernels, gpu_span_ms) = breakdown(&dispatches);
    gpu.set_stage("other");
    Ok(StepProfile {
        adapter: gpu.adapter_name().to_string(),
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
        peak_pool_mib: gpu.memory().1 as f64 / (1024.0 * 1024.0),
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
    let mut by_stage: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    let mut by_family: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for d in dispatches {
        let s = by_stage.entry(d.stage).or_default();
        s.0 += d.seconds() * 1e3;
        s.1 += 1;
        let family = d.kernel.split("::").next().unwrap_or(&d.kernel).to_string();
        let k = by_family.entry(family).or_default();
        k.0 += d.seconds() * 1e3;
        k.1 += 1;
    }
    let row = |name: &str, (ms, count): (f64, usize)| Row {
        name: name.to_string(),
        ms,
        share: share(ms),
        dispatches: count,
    };
    let mut stages: Vec<Row> = STAGES
        .iter()
        .map(|s| row(s, by_stage.remove(s).unwrap_or_default()))
        .collect();
    stages.extend(by_stage.into_iter().map(|(s, v)| row(s, v)));
    let busy: f64 = stages.iter().map(|r| r.ms).sum();
    stages.push(row(BETWEEN, ((span_ms - busy).max(0.0), 0)));
    let mut kernels: Vec<Row> = by_family.into_iter().map(|(k, v)| row(&k, v)).collect();
    kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    (stages, kernels, span_ms)
}

/// The adapter's ceilings: the kernel benchmark's square matmul and
/// elementwise add, measured now (a few seconds).
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
        let m = crate::bench::measure(gpu, &case, 1, 3, 2)?;
        *slot = slot.max(m.rate);
    }
    Ok(ceiling)
}

/// The profile as a table.
pub fn print(p: &StepProfile) {
    println!(
        "{} step, {} ({} params) on {}",
        match p.phase {
            Phase::Pretrain => "pretrain",
            Phase::Finetune => "finetune",
        },
        p.shape,
        p.params,
        p.adapter
    );
    println!(
        "step: {:.1} ms (median of {} unprofiled); profiled step {:.1} ms wall, {:.1} ms GPU span",
        p.step_ms, p.steps, p.profiled_step_ms, p.gpu_span_ms
    );
    println!(
        "dispatches {}, bind groups created {} / cache hits {}, submits {}, peak pool memory {:.1} MiB",
        p.dispatches, p.bind_groups_created, p.bind_group_hits, p.submits, p.peak_pool_mib
    );
    if let Some(c) = &p.ceiling {
        println!(
            "ceiling (measured now): matmul {:.1} GFLOP/s, elementwise {:.1} GB/s",
            c.matmul_gflops, c.elementwise_gbs
        );
    }
    for (title, rows) in [("stage", &p.stages), ("kernel family", &p.kernels)] {
        println!();
        println!(
            "{:<28} {:>10} {:>7} {:>10}",
            title, "ms", "share", "dispatches"
        );
        for r in rows.iter() {
            println!(
                "{:<28} {:>10.2} {:>6.1}% {:>10}",
                r.name,
                r.ms,
                r.share * 100.0,
                r.dispatches
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
        }
    }
}
