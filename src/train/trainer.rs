//! Pretraining, fine-tuning and scoring on the GPU.
//!
//! One training step = upload (double-buffered) → `train::step` (STIGA views →
//! forward of the three views → FGCO, or cross-entropy → backward → AdamW),
//! all recorded into one command encoder and submitted once. The step's loss
//! is copied into a GPU loss history; the host reads that history every
//! `LOG_EVERY` steps (one readback for many steps), which also keeps the host
//! from running far ahead of the GPU.

use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::autograd::optim::AdamWState;
use crate::autograd::Tape;
use crate::config::Config;
use crate::data::batch::{Batcher, HostBatch};
use crate::data::upload::BatchUploader;
use crate::data::Dataset;
use crate::gpu::{Gpu, GpuError};
use crate::model::{HostTensor, Model};
use crate::ops::adamw::AdamW;
use crate::train::checkpoint::{self, Checkpoint, CheckpointMeta, NamedTensor, OptimizerState};
use crate::train::rundir::{MetricsRecord, RunDir};
use crate::train::schedule::Schedule;
use crate::train::step::{record_finetune_step, record_pretrain_step, PretrainObjective};

/// Steps between loss readbacks.
pub const LOG_EVERY: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    RunDir(#[from] crate::train::rundir::RunDirError),
    #[error(
        "{phase}: the loss became {value} at step {step} (last finite loss {last_finite} at step {last_finite_step}); \
         training stopped. The last good checkpoint (if any) is kept. Lower the learning rate or check the data for extreme values."
    )]
    NonFinite {
        phase: String,
        step: u64,
        value: f64,
        last_finite: f64,
        last_finite_step: u64,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// Which phase a training loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pretrain,
    Finetune,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pretrain => "pretrain",
            Phase::Finetune => "finetune",
        }
    }
}

/// What a finished phase reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub steps: u64,
    pub epochs: u64,
    pub seconds: f64,
    pub scans_per_s: f64,
    /// (step, loss) for every step, read back from the GPU history.
    pub losses: Vec<(u64, f64)>,
}

/// Options that are not part of the experiment config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub quiet: bool,
    /// Where checkpoints go (`<run>/checkpoint-<phase>`); none: no checkpoints.
    pub run: Option<RunDir>,
    /// Stop after this many epochs of the phase (tests of `--resume`).
    pub stop_after_epochs: Option<u64>,
}

fn progress(quiet: bool, total: u64, phase: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(phase.to_string());
    bar
}

fn batcher(cfg: &Config, phase: Phase) -> Batcher {
    let batch = match phase {
        Phase::Pretrain => cfg.pretrain.batch,
        Phase::Finetune => cfg.finetune.batch,
    };
    Batcher {
        batch_size: batch,
        crop_length: cfg.model.crop,
        seed: cfg.seed
            ^ if phase == Phase::Pretrain {
                0x5054
            } else {
                0x4654
            },
        // Batch statistics (BatchNorm, Barlow Twins standardization) need
        // full batches; fine-tuning keeps every scan.
        drop_last: phase == Phase::Pretrain,
        eval_crops: cfg.finetune.eval_crops,
    }
}

/// The batcher `score_scans` uses (the K fixed evaluation crops), for other
/// passes over the same crops (`train::explain`).
pub(crate) fn evaluation_batcher(cfg: &Config) -> Batcher {
    batcher(cfg, Phase::Finetune)
}

fn names_to_host(tensors: &[HostTensor]) -> Result<Vec<NamedTensor>> {
    tensors
        .iter()
        .map(|t| {
            NamedTensor::new(t.name.clone(), t.shape.clone(), t.data.clone())
                .map_err(TrainError::from)
        })
        .collect()
}

/// Saves model, optimizer state and metadata atomically.
fn save_checkpoint(
    gpu: &Gpu,
    dir: &std::path::Path,
    model: &Model,
    opt: &AdamWState,
    meta: CheckpointMeta,
) -> Result<()> {
    let weights = names_to_host(&model.params.to_host(gpu)?)?;
    let mut m = Vec::new();
    let mut v = Vec::new();
    for (p, (tm, tv)) in model.params.store.params.iter().zip(&opt.moments) {
        m.push(NamedTensor::new(
            p.name.clone(),
            tm.shape().to_vec(),
            gpu.read(tm)?,
        )?);
        v.push(NamedTensor::new(
            p.name.clone(),
            tv.shape().to_vec(),
            gpu.read(tv)?,
        )?);
    }
    let ckpt = Checkpoint {
        meta,
        weights,
        optimizer: Some(OptimizerState {
            step: opt.step as u64,
            m,
            v,
        }),
    };
    checkpoint::save(dir, &ckpt)?;
    Ok(())
}

/// Restores AdamW moments and step from a checkpoint.
pub fn restore_optimizer(
    gpu: &Gpu,
    model: &Model,
    opt: &mut AdamWState,
    state: &OptimizerState,
) -> Result<()> {
    for (p, (tm, tv)) in model.params.store.params.iter().zip(&opt.moments) {
        let find = |list: &[NamedTensor]| {
            list.iter()
                .find(|t| t.name == p.name)
                .map(|t| t.data.clone())
        };
        let (Some(m), Some(v)) = (find(&state.m), find(&state.v)) else {
            return Err(TrainError::Invalid(format!(
                "checkpoint has no optimizer state for `{}`",
                p.name
            )));
        };
        gpu.write(tm, &m)?;
        gpu.write(tv, &v)?;
    }
    opt.step = state.step as u32;
    Ok(())
}

/// A model's weights from checkpoint tensors.
pub fn host_tensors(ckpt: &Checkpoint) -> Vec<HostTensor> {
    ckpt.weights
        .iter()
        .map(|t| HostTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            data: t.data.clone(),
        })
        .collect()
}

/// Runs one phase (pretraining with FGCO, or fine-tuning with cross-entropy)
/// over `scans` for the configured epochs. With `resume`, continues from the
/// checkpoint's epoch with its optimizer state (the model must already hold
/// its weights).
pub fn train_phase(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    cfg: &Config,
    phase: Phase,
    resume: Option<&Checkpoint>,
    opts: &RunOptions,
) -> Result<PhaseReport> {
    let (epochs, lr, lr_min, warmup, wd) = match phase {
        Phase::Pretrain => (
            cfg.pretrain.epochs,
            cfg.pretrain.lr,
            cfg.pretrain.lr_min,
            cfg.pretrain.warmup_fraction,
            cfg.pretrain.weight_decay,
        ),
        Phase::Finetune => (
            cfg.finetune.epochs,
            cfg.finetune.lr,
            cfg.finetune.lr_min,
            cfg.finetune.warmup_fraction,
            cfg.finetune.weight_decay,
        ),
    };
    let batcher = batcher(cfg, phase);
    if scans.len() < batcher.batch_size && phase == Phase::Pretrain {
        return Err(TrainError::Invalid(format!(
            "pretraining needs at least one full batch: {} scans for batch size {} (lower pretrain.batch)",
            scans.len(),
            batcher.batch_size
        )));
    }
    let steps_per_epoch = batcher.training_plan(dataset, scans, 0).len() as u64;
    if steps_per_epoch == 0 {
        return Err(TrainError::Invalid(format!(
            "{}: no training batch could be formed from {} scans",
            phase.name(),
            scans.len()
        )));
    }
    let total = steps_per_epoch * epochs as u64;
    let schedule = Schedule::new(lr, lr_min, warmup, total.max(1));
    let mut opt = AdamWState::new(
        gpu,
        &model.params.store,
        AdamW {
            weight_decay: wd as f32,
            ..AdamW::default()
        },
    )?;
    let mut first_epoch = 0u64;
    if let Some(ckpt) = resume {
        if let Some(state) = &ckpt.optimizer {
            restore_optimizer(gpu, model, &mut opt, state)?;
        }
        first_epoch = ckpt.meta.epoch;
    }
    let freeze = phase == Phase::Finetune && cfg.finetune.freeze_encoder;
    let objective = PretrainObjective::from_config(cfg);
    let fingerprint = checkpoint::data_fingerprint(dataset);
    let ckpt_dir = opts
        .run
        .as_ref()
        .map(|r| r.file(&format!("checkpoint-{}", phase.name())));
    let mut log = match &opts.run {
        Some(r) => Some(r.metrics_log()?),
        None => None,
    };

    let bar = progress(opts.quiet, total, phase.name());
    bar.set_position(first_epoch * steps_per_epoch);
    let started = Instant::now();
    let mut uploader = BatchUploader::new();
    let history = gpu.zeros(&[LOG_EVERY])?;
    let mut pending: Vec<(u64, u64, f64)> = Vec::new(); // (step, epoch, lr) awaiting their loss
    let mut losses = Vec::new();
    let mut last_finite = (f64::NAN, 0u64);
    let mut scans_done = 0usize;
    let mut step = first_epoch * steps_per_epoch;
    let last_epoch = opts
        .stop_after_epochs
        .map_or(epochs as u64, |n| (first_epoch + n).min(epochs as u64));

    for epoch in first_epoch..last_epoch {
        let plan = batcher.training_plan(dataset, scans, epoch);
        for host in batcher.prefetch(dataset.clone(), plan) {
            let lr_now = schedule.at(step);
            let loss = record_step(
                gpu,
                model,
                &mut uploader,
                &host,
                &objective,
                phase,
                step,
                &mut opt,
                lr_now as f32,
                freeze,
            )?;
            gpu.copy_region(&loss, 0, &history, pending.len(), 1)?;
            gpu.flush()?;
            pending.push((step, epoch, lr_now));
            scans_done += host.b;
            step += 1;
            bar.inc(1);
            if pending.len() == LOG_EVERY {
                drain(
                    gpu,
                    &history,
                    &mut pending,
                    &mut losses,
                    &mut last_finite,
                    phase,
                    &mut log,
                    scans_done,
                    started,
                    &bar,
                )?;
            }
        }
        drain(
            gpu,
            &history,
            &mut pending,
            &mut losses,
            &mut last_finite,
            phase,
            &mut log,
            scans_done,
            started,
            &bar,
        )?;
        if let Some(dir) = &ckpt_dir {
            let meta = CheckpointMeta {
                format: 1,
                phase: phase.name().to_string(),
                seed: cfg.seed,
                step,
                epoch: epoch + 1,
                data_fingerprint: fingerprint.clone(),
                config: cfg.clone(),
            };
            save_checkpoint(gpu, dir, model, &opt, meta)?;
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(PhaseReport {
        phase: phase.name().to_string(),
        steps: step - first_epoch * steps_per_epoch,
        epochs: last_epoch - first_epoch,
        seconds,
        scans_per_s: scans_done as f64 / seconds.max(1e-9),
        losses,
    })
}

/// Reads the losses of the pending steps (one readback), logs them, and
/// stops on the first non-finite one.
#[allow(clippy::too_many_arguments)]
fn drain(
    gpu: &Gpu,
    history: &crate::gpu::Tensor,
    pending: &mut Vec<(u64, u64, f64)>,
    losses: &mut Vec<(u64, f64)>,
    last_finite: &mut (f64, u64),
    phase: Phase,
    log: &mut Option<crate::train::rundir::MetricsLog>,
    scans_done: usize,
    started: Instant,
    bar: &ProgressBar,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let values = gpu.read(history)?;
    let elapsed = started.elapsed().as_secs_f64();
    for (i, &(step, epoch, lr)) in pending.iter().enumerate() {
        let loss = values[i] as f64;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                phase: phase.name().to_string(),
                step,
                value: loss,
                last_finite: last_finite.0,
                last_finite_step: last_finite.1,
            });
        }
        *last_finite = (loss, step);
        losses.push((step, loss));
        if let Some(log) = log.as_mut() {
            log.append(&MetricsRecord {
                phase: phase.name().to_string(),
                step,
                epoch,
                loss,
                lr,
                scans_per_s: scans_done as f64 / elapsed.max(1e-9),
                elapsed_s: elapsed,
            })?;
        }
        bar.set_message(format!(
            "loss {loss:.4}  lr {lr:.2e}  {:.1} scans/s",
            scans_done as f64 / elapsed.max(1e-9)
        ));
    }
    pending.clear();
    Ok(())
}

/// Uploads one batch and records its training step (`train::step`);
/// returns the (1-element) loss tensor.
#[allow(clippy::too_many_arguments)]
fn record_step(
    gpu: &Gpu,
    model: &Model,
    uploader: &mut BatchUploader,
    host: &HostBatch,
    objective: &PretrainObjective,
    phase: Phase,
    step: u64,
    opt: &mut AdamWState,
    lr: f32,
    freeze: bool,
) -> Result<crate::gpu::Tensor> {
    let batch = uploader.upload(gpu, host)?;
    let loss = match phase {
        Phase::Pretrain => {
            record_pretrain_step(gpu, model, &batch.x, &batch.valid, objective, step, opt, lr)?
        }
        Phase::Finetune => record_finetune_step(
            gpu,
            model,
            &batch.x,
            &batch.valid,
            &batch.labels,
            freeze,
            opt,
            lr,
        )?,
    };
    Ok(loss)
}

/// Class probabilities per scan, from logits averaged over the K fixed crops
/// of each scan (docs/design.md §3). Returns [scans][classes] in `scans` order.
pub fn score_scans(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    cfg: &Config,
) -> Result<Vec<Vec<f64>>> {
    let batcher = batcher(cfg, Phase::Finetune);
    let c = model.dims.n_classes;
    let mut sums = vec![vec![0.0f64; c]; dataset.scans.len()];
    let mut counts = vec![0usize; dataset.scans.len()];
    let mut uploader = BatchUploader::new();
    let plan = batcher.evaluation_plan(dataset, scans);
    for host in batcher.prefetch(dataset.clone(), plan) {
        let batch = uploader.upload(gpu, &host)?;
        let mut tape = Tape::new(gpu);
        let enc = model.encode(&mut tape, &batch.x, &batch.valid)?;
        let logits = model.head(&mut tape, enc.z_st)?;
        let values = gpu.read(tape.value(logits))?;
        for (row, &scan) in host.scan_index.iter().enumerate() {
            for k in 0..c {
                sums[scan][k] += values[row * c + k] as f64;
            }
            counts[scan] += 1;
        }
    }
    scans
        .iter()
        .map(|&s| {
            if counts[s] == 0 {
                return Err(TrainError::Invalid(format!(
                    "scan {} got no evaluation crop",
                    dataset.scans[s].id
                )));
            }
            let mean: Vec<f64> = sums[s].iter().map(|v| v / counts[s] as f64).collect();
            let m = mean.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = mean.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = exp.iter().sum();
            Ok(exp.iter().map(|e| e / z).collect())
        })
        .collect()
}
