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
use crate::config::{Config, HeadNorm};
use crate::data::batch::{Batcher, HostBatch, Plan};
use crate::data::upload::BatchUploader;
use crate::data::Dataset;
use crate::dist::{
    broadcast_parameters, check_identical, shard_rows, Collective, DataParallel, DistError, Single,
};
use crate::gpu::{Gpu, GpuError};
use crate::model::{HostTensor, Model};
use crate::ops::adamw::AdamW;
use crate::ops::elementwise::{add, mul};
use crate::ops::reduce::{reduce, Reduction};
use crate::train::checkpoint::{self, Checkpoint, CheckpointMeta, OptimizerState};
use crate::train::metrics::{EpochDiagnostics, MetricsError, SplitDiagnostics};
use crate::train::rundir::{self, MetricsRecord, RunDir};
use crate::train::schedule::Schedule;
use crate::train::step::{
    record_finetune_step, record_pretrain_step_sharded, FinetuneObjective, PretrainObjective,
};

/// Steps between loss readbacks.
pub const LOG_EVERY: usize = 10;

/// Steps between the data-parallel ranks' check that their weights are
/// still bit-identical (one readback of the weights and a 64-bit all-gather;
/// also done at every epoch's end, before rank 0 checkpoints).
pub const CHECK_IDENTICAL_EVERY: u64 = 50;

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
    #[error("learning diagnostics: {0}")]
    Diagnostics(#[from] MetricsError),
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
    /// Fine-tuning only: one entry per epoch run (also in metrics.jsonl).
    pub diagnostics: Vec<EpochDiagnostics>,
    /// Fine-tuning with early stopping (`finetune.early_stopping_patience`):
    /// the epoch whose weights the model ends with, the one of lowest
    /// validation loss, numbered as the `finetune-epoch` rows of
    /// metrics.jsonl (from 0). None without early stopping (the last epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<u64>,
}

/// Options that are not part of the experiment config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub quiet: bool,
    /// Where checkpoints go (`<run>/checkpoint-<phase>`); none: no checkpoints.
    pub run: Option<RunDir>,
    /// Stop after this many epochs of the phase (tests of `--resume`).
    pub stop_after_epochs: Option<u64>,
    /// Fine-tuning: the held-out validation scans, scored after every epoch
    /// for the diagnostics (never trained on); empty = none.
    pub validation: Vec<usize>,
    /// Pretraining over several ranks (`crate::dist`); None: this process
    /// alone. Only rank 0 should be given a `run`.
    pub data_parallel: Option<DataParallel>,
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

/// Saves model, optimizer state and metadata atomically.
fn save_checkpoint(
    gpu: &Gpu,
    dir: &std::path::Path,
    model: &Model,
    opt: &AdamWState,
    meta: CheckpointMeta,
) -> Result<()> {
    let weights = model.params.to_host(gpu)?;
    let mut m = Vec::new();
    let mut v = Vec::new();
    for (p, (tm, tv)) in model.params.store.params.iter().zip(&opt.moments) {
        m.push(HostTensor {
            name: p.name.clone(),
            shape: tm.shape().to_vec(),
            data: gpu.read(tm)?,
        });
        v.push(HostTensor {
            name: p.name.clone(),
            shape: tv.shape().to_vec(),
            data: gpu.read(tv)?,
        });
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
        let find = |list: &[HostTensor]| {
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
    // What the run before the checkpoint did, so the report (summary.json,
    // the loss plot) covers the whole run, as an uninterrupted run's does.
    let mut losses = Vec::new();
    let mut seconds_before = 0.0;
    if let Some(ckpt) = resume {
        // Without the AdamW moments the resumed run would silently differ
        // from the uninterrupted one.
        let Some(state) = &ckpt.optimizer else {
            return Err(TrainError::Invalid(format!(
                "the {} checkpoint holds no optimizer state ({}), so the run cannot be resumed exactly; start a new run",
                phase.name(),
                checkpoint::OPTIMIZER_FILE
            )));
        };
        restore_optimizer(gpu, model, &mut opt, state)?;
        first_epoch = ckpt.meta.epoch;
        if let Some(run) = &opts.run {
            let earlier =
                rundir::rewind_metrics(&run.file("metrics.jsonl"), phase.name(), ckpt.meta.step)?;
            if earlier.len() as u64 != ckpt.meta.step {
                log::warn!(
                    "{}: holds {} of the {} {} steps before the checkpoint; the loss plot and summary lack the others",
                    run.file("metrics.jsonl").display(),
                    earlier.len(),
                    ckpt.meta.step,
                    phase.name()
                );
            }
            seconds_before = earlier.last().map_or(0.0, |r| r.elapsed_s);
            losses = earlier.iter().map(|r| (r.step, r.loss)).collect();
        }
    }
    // The profile normalization's statistics come from the scans of the
    // first phase that trains the model; a resumed run, or a fine-tuning
    // after pretraining, has them already (they are saved with the weights).
    if resume.is_none() && model.profile_statistics_unset(gpu)? {
        let (mean, std) = profile_statistics(gpu, model, dataset, scans, cfg)?;
        model.set_profile_statistics(gpu, &mean, &std)?;
        log::info!(
            "{}: profile statistics ({:?}) from the evaluation crops of {} scans",
            phase.name(),
            cfg.model.profile_norm,
            scans.len()
        );
    }
    let finetune_objective = FinetuneObjective::from_config(cfg);
    let objective = PretrainObjective::from_config(cfg);
    // Early stopping (fine-tuning only) keeps the best epoch's weights on
    // the host and stops after `patience` epochs without a lower
    // validation loss.
    let patience = match phase {
        Phase::Finetune => cfg.finetune.early_stopping_patience as u64,
        Phase::Pretrain => 0,
    };
    if patience > 0 && opts.validation.is_empty() {
        return Err(TrainError::Invalid(format!(
            "finetune.early_stopping_patience = {patience} needs validation scans to choose the \
             epoch by, and this run has none (finetune.validation_fraction = {}; `stptf finetune` \
             holds out no validation split, `stptf evaluate` does); set the patience to 0",
            cfg.finetune.validation_fraction
        )));
    }
    if patience > 0 && resume.is_some() {
        // The best epoch's weights and the epochs since it are not in the
        // checkpoint, so a resumed run could pick another epoch than the
        // uninterrupted one: refuse rather than silently differ.
        return Err(TrainError::Invalid(
            "a fine-tuning run with finetune.early_stopping_patience > 0 cannot be resumed \
             (the best epoch so far is not checkpointed); start it again"
                .to_string(),
        ));
    }
    let mut best: Option<(f64, u64, Vec<HostTensor>)> = None;
    let mut since_best = 0u64;
    let data_print = checkpoint::DataPrint::of(dataset);
    let ckpt_dir = opts
        .run
        .as_ref()
        .map(|r| r.file(&format!("checkpoint-{}", phase.name())));
    if let (Some(dir), Some(_)) = (&ckpt_dir, resume) {
        checkpoint::remove_debris(dir)?;
    }
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
    let mut diagnostics = Vec::new();
    // The training scans the per-epoch diagnostics score: the same subset
    // every epoch, so the curves compare across epochs.
    let diagnostic_scans =
        super::explain::stratified_subset(dataset, scans, cfg.finetune.diagnostic_scans, cfg.seed);
    let mut last_finite = (f64::NAN, 0u64);
    let scans_before: usize = (0..first_epoch)
        .map(|e| {
            batcher
                .training_plan(dataset, scans, e)
                .iter()
                .map(Vec::len)
                .sum::<usize>()
        })
        .sum();
    let mut scans_done = scans_before;
    let mut step = first_epoch * steps_per_epoch;
    let mut epochs_run = first_epoch;
    let last_epoch = opts
        .stop_after_epochs
        .map_or(epochs as u64, |n| (first_epoch + n).min(epochs as u64));

    let comm: &dyn Collective = match &opts.data_parallel {
        Some(dp) => dp.0.as_ref(),
        None => &Single,
    };
    if comm.size() > 1 {
        if phase != Phase::Pretrain {
            return Err(TrainError::Invalid(format!(
                "{} runs in one process; only pretraining is data-parallel (run one \
                 fine-tuning or evaluation fold per job instead: `stptf evaluate --fold K`)",
                phase.name()
            )));
        }
        shard_rows(batcher.batch_size, comm.rank(), comm.size()).map_err(GpuError::from)?;
        // Every rank starts from rank 0's weights (after a resume they are
        // already equal; the broadcast then changes nothing).
        broadcast_parameters(gpu, &model.params.store, comm)?;
    }
    for epoch in first_epoch..last_epoch {
        let plan = batcher.training_plan(dataset, scans, epoch);
        // This rank's rows of every global batch (all of them on one rank).
        let plan: Plan = if comm.size() > 1 {
            plan.into_iter()
                .map(|crops| {
                    let rows = shard_rows(crops.len(), comm.rank(), comm.size())?;
                    Ok(crops[rows].to_vec())
                })
                .collect::<Result<_, DistError>>()
                .map_err(GpuError::from)?
        } else {
            plan
        };
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
                &finetune_objective,
                comm,
            )?;
            gpu.copy_region(&loss, 0, &history, pending.len(), 1)?;
            gpu.flush()?;
            pending.push((step, epoch, lr_now));
            scans_done += host.b * comm.size();
            step += 1;
            if step % CHECK_IDENTICAL_EVERY == 0 {
                check_identical(gpu, &model.params.store, comm, step)?;
            }
            // After the step is submitted (tests/mpi_data_parallel.rs).
            crate::train::fault::point(&format!("{}-step", phase.name()))
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
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
                    seconds_before,
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
            seconds_before,
            started,
            &bar,
        )?;
        if phase == Phase::Finetune {
            // One forward over the diagnostic training scans' evaluation
            // crops serves both the precise statistics and the diagnostics.
            let train_crops = crop_embeddings(gpu, model, dataset, &diagnostic_scans, cfg)?;
            if cfg.model.head_norm == HeadNorm::BatchPrecise {
                // Before anything scores with them: the diagnostics, the
                // early-stopping choice and the checkpoint all see this
                // epoch's recomputed statistics.
                set_precise_head_norm_statistics(gpu, model, &train_crops)?;
            }
            // After the epoch's last step: its gradients are still in the
            // parameters' gradient buffers (the next step zeroes them).
            let diag = epoch_diagnostics(
                gpu,
                model,
                dataset,
                (&diagnostic_scans, &train_crops),
                &opts.validation,
                cfg,
            )?;
            if let Some(log) = log.as_mut() {
                let elapsed = started.elapsed().as_secs_f64();
                log.append(&MetricsRecord {
                    phase: "finetune-epoch".to_string(),
                    step,
                    epoch,
                    loss: diag.train.loss,
                    lr: schedule.at(step.saturating_sub(1)),
                    scans_per_s: scans_done as f64 / elapsed.max(1e-9),
                    elapsed_s: elapsed,
                    diagnostics: Some(diag.clone()),
                })?;
            }
            if patience > 0 {
                // A NaN validation loss is never an improvement.
                let loss = diag.validation.as_ref().map_or(f64::NAN, |v| v.loss);
                if best.as_ref().map_or(!loss.is_nan(), |(b, ..)| loss < *b) {
                    best = Some((loss, epoch, model.params.to_host(gpu)?));
                    since_best = 0;
                } else {
                    since_best += 1;
                }
            }
            diagnostics.push(diag);
        }
        // Rank 0 checkpoints the weights of every rank.
        check_identical(gpu, &model.params.store, comm, step)?;
        if let Some(dir) = &ckpt_dir {
            let meta = CheckpointMeta::new(phase.name(), step, epoch + 1, &data_print, cfg);
            save_checkpoint(gpu, dir, model, &opt, meta)?;
        }
        epochs_run = epoch + 1;
        if patience > 0 && since_best >= patience {
            break;
        }
    }
    bar.finish_and_clear();
    let best_epoch = match best {
        Some((_, best_epoch, weights)) => {
            // The final model is the best epoch's; the checkpoint (what
            // `predict` loads) is rewritten with it.
            model.params.write_host(gpu, &weights)?;
            if let Some(dir) = &ckpt_dir {
                let meta = CheckpointMeta::new(phase.name(), step, epochs_run, &data_print, cfg);
                save_checkpoint(gpu, dir, model, &opt, meta)?;
            }
            Some(best_epoch)
        }
        None => None,
    };
    // Whole-run totals: a resumed run reports what an uninterrupted one would.
    let seconds = seconds_before + started.elapsed().as_secs_f64();
    Ok(PhaseReport {
        phase: phase.name().to_string(),
        steps: step,
        epochs: epochs_run,
        seconds,
        scans_per_s: scans_done as f64 / seconds.max(1e-9),
        losses,
        diagnostics,
        best_epoch,
    })
}

/// `model.head_norm = "batch-precise"`: the head BatchNorm's statistics
/// become the mean and unbiased variance (PyTorch's running-variance
/// convention) of Z_st over the K evaluation crops of the scans in `crops`,
/// each crop a row, computed in f64 with the weights that encoded them.
/// Each crop is a row because training standardizes single crops, and the
/// evaluation crops because they are what evaluation standardizes.
fn set_precise_head_norm_statistics(
    gpu: &Gpu,
    model: &Model,
    crops: &CropEmbeddings,
) -> Result<()> {
    let (d, n) = (crops.d, crops.scan_of_row.len());
    if n < 2 {
        return Err(TrainError::Invalid(format!(
            "model.head_norm = \"batch-precise\" needs at least 2 evaluation crops of training \
             scans to estimate Z_st's variance, and {} scans gave {n}",
            crops.scans
        )));
    }
    let rows = || crops.z.chunks(d);
    let mut mean = vec![0.0f64; d];
    for row in rows() {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut var = vec![0.0f64; d];
    for row in rows() {
        for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v as f64 - m).powi(2);
        }
    }
    var.iter_mut().for_each(|s| *s /= (n - 1) as f64);
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    model.set_head_norm_statistics(gpu, &to_f32(mean), &to_f32(var))?;
    Ok(())
}

/// The learning diagnostics of one fine-tuning epoch: the training
/// scans (already encoded: `train`) and the validation split scored like
/// test scans (K fixed crops, logits averaged), and the gradient norm per
/// parameter group.
fn epoch_diagnostics(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    train: (&[usize], &CropEmbeddings),
    validation: &[usize],
    cfg: &Config,
) -> Result<EpochDiagnostics> {
    let grad_norms = grad_norms_by_group(gpu, model)?;
    let labels = dataset.labels();
    let split = |scans: &[usize], crops: &CropEmbeddings| -> Result<SplitDiagnostics> {
        let out = scan_outputs_from(gpu, model, dataset, scans, crops, true)?;
        let split_labels: Vec<u32> = scans.iter().map(|&s| labels[s]).collect();
        Ok(SplitDiagnostics::compute(
            &out.logits,
            &out.embeddings,
            &split_labels,
        )?)
    };
    Ok(EpochDiagnostics {
        train: split(train.0, train.1)?,
        validation: if validation.is_empty() {
            None
        } else {
            let crops = crop_embeddings(gpu, model, dataset, validation, cfg)?;
            Some(split(validation, &crops)?)
        },
        grad_norms,
    })
}

/// ‖gradient‖₂ per parameter group (the name before the first `.`), summed
/// on the GPU and read back in one transfer.
fn grad_norms_by_group(gpu: &Gpu, model: &Model) -> Result<Vec<(String, f64)>> {
    let mut groups: Vec<(String, crate::gpu::Tensor)> = Vec::new();
    for p in &model.params.store.params {
        let group = p.name.split('.').next().unwrap_or(&p.name).to_string();
        let flat = p.grad.reshape(&[1, p.grad.len()])?;
        let squares = reduce(gpu, &mul(gpu, &flat, &flat)?, 1, Reduction::Sum)?;
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, acc)) => *acc = add(gpu, acc, &squares)?,
            None => groups.push((group, squares)),
        }
    }
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let all = gpu.zeros(&[groups.len()])?;
    for (i, (_, squares)) in groups.iter().enumerate() {
        gpu.copy_region(squares, 0, &all, i, 1)?;
    }
    let values = gpu.read(&all)?;
    Ok(groups
        .into_iter()
        .zip(values)
        .map(|((g, _), v)| (g, (v as f64).sqrt()))
        .collect())
}

/// Per-scan outputs averaged over the K fixed crops of each scan, in `scans`
/// order: logits [scans][classes] and, when asked, Z_st [scans][D].
struct ScanOutputs {
    logits: Vec<Vec<f64>>,
    embeddings: Vec<Vec<f64>>,
}

/// Z_st [D] of every evaluation crop (the K fixed crops of each scan):
/// row r of `z` is a crop of scan `scan_of_row[r]` (a dataset index).
struct CropEmbeddings {
    scan_of_row: Vec<usize>,
    z: Vec<f32>,
    d: usize,
    /// How many scans were asked for (for messages).
    scans: usize,
}

/// Encodes the K evaluation crops of `scans` (no head): one forward per
/// evaluation batch, Z_st read back. The head runs afterwards on these rows
/// ([`scan_outputs_from`]), so a caller that first changes the head's
/// statistics from them (`batch-precise`) does not encode twice.
fn crop_embeddings(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    cfg: &Config,
) -> Result<CropEmbeddings> {
    let batcher = batcher(cfg, Phase::Finetune);
    let mut out = CropEmbeddings {
        scan_of_row: Vec::new(),
        z: Vec::new(),
        d: 0,
        scans: scans.len(),
    };
    let mut uploader = BatchUploader::new();
    let plan = batcher.evaluation_plan(dataset, scans);
    for host in batcher.prefetch(dataset.clone(), plan) {
        let batch = uploader.upload(gpu, &host)?;
        let mut tape = Tape::new(gpu);
        let enc = model.encode(&mut tape, &batch.x, &batch.valid)?;
        // Z_st is [rows, D]; a short last batch's rows past its scans are padding.
        out.d = tape.value(enc.z_st).shape().last().copied().unwrap_or(0);
        let z = gpu.read(tape.value(enc.z_st))?;
        out.z.extend_from_slice(&z[..host.scan_index.len() * out.d]);
        out.scan_of_row.extend_from_slice(&host.scan_index);
    }
    Ok(out)
}

/// The statistics of `model.profile_norm`: per edge (i, j), the mean and
/// the standard deviation (divisor n) of the raw connectivity profile R_ij
/// over the K evaluation crops (`finetune.eval_crops`, evenly spaced, so
/// no random draw) of every scan in `scans`, accumulated in f64.
pub fn profile_statistics(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    cfg: &Config,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = model.dims.n_regions;
    let (mut sum, mut squares, mut crops) = (vec![0.0f64; n * n], vec![0.0f64; n * n], 0usize);
    let batcher = batcher(cfg, Phase::Finetune);
    let mut uploader = BatchUploader::new();
    let plan = batcher.evaluation_plan(dataset, scans);
    for host in batcher.prefetch(dataset.clone(), plan) {
        let batch = uploader.upload(gpu, &host)?;
        let Some(r) = model.raw_profiles(gpu, &batch.x)? else {
            return Err(TrainError::Invalid(
                "model.profile_norm needs connectivity profiles (model.node_features = \"pearson\" or \"partial\")".into(),
            ));
        };
        // A short last batch's rows past its crops are padding.
        for profile in gpu.read(&r)?.chunks(n * n).take(host.scan_index.len()) {
            crops += 1;
            for ((s, q), &v) in sum.iter_mut().zip(&mut squares).zip(profile) {
                *s += v as f64;
                *q += v as f64 * v as f64;
            }
        }
    }
    if crops == 0 {
        return Err(TrainError::Invalid(format!(
            "model.profile_norm: no evaluation crop could be formed from {} scans",
            scans.len()
        )));
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / crops as f64).collect();
    let std = squares
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / crops as f64 - m * m).max(0.0).sqrt())
        .collect();
    Ok((mean, std))
}

/// Crops per head pass in [`scan_outputs_from`]: bounds the upload.
const HEAD_ROWS: usize = 4096;

/// The head (evaluation mode) on every crop's Z_st, then per scan the mean
/// of its crops' logits and, when asked, of their Z_st, in `scans` order.
fn scan_outputs_from(
    gpu: &Gpu,
    model: &Model,
    dataset: &Arc<Dataset>,
    scans: &[usize],
    crops: &CropEmbeddings,
    with_embeddings: bool,
) -> Result<ScanOutputs> {
    let (c, d) = (model.dims.n_classes, crops.d);
    let mut sums = vec![vec![0.0f64; c]; dataset.scans.len()];
    let mut z_sums: Vec<Vec<f64>> = vec![Vec::new(); dataset.scans.len()];
    let mut counts = vec![0usize; dataset.scans.len()];
    for (chunk, rows) in crops
        .scan_of_row
        .chunks(HEAD_ROWS)
        .zip(crops.z.chunks(HEAD_ROWS * d.max(1)))
    {
        let mut tape = Tape::new(gpu);
        let z = tape.input(gpu.upload(rows, &[chunk.len(), d])?);
        let logits = model.head(&mut tape, z)?;
        let values = gpu.read(tape.value(logits))?;
        for (row, &scan) in chunk.iter().enumerate() {
            for k in 0..c {
                sums[scan][k] += values[row * c + k] as f64;
            }
            if with_embeddings {
                let acc = &mut z_sums[scan];
                acc.resize(d, 0.0);
                for (a, v) in acc.iter_mut().zip(&rows[row * d..(row + 1) * d]) {
                    *a += *v as f64;
                }
            }
            counts[scan] += 1;
        }
    }
    let mut out = ScanOutputs {
        logits: Vec::with_capacity(scans.len()),
        embeddings: Vec::new(),
    };
    for &s in scans {
        if counts[s] == 0 {
            return Err(TrainError::Invalid(format!(
                "scan {} got no evaluation crop",
                dataset.scans[s].id
            )));
        }
        let k = counts[s] as f64;
        out.logits.push(sums[s].iter().map(|v| v / k).collect());
        if with_embeddings {
            out.embeddings
                .push(z_sums[s].iter().map(|v| v / k).collect());
        }
    }
    Ok(out)
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
    seconds_before: f64,
    started: Instant,
    bar: &ProgressBar,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let values = gpu.read(history)?;
    let elapsed = seconds_before + started.elapsed().as_secs_f64();
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
                diagnostics: None,
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
    finetune: &FinetuneObjective,
    comm: &dyn Collective,
) -> Result<crate::gpu::Tensor> {
    let batch = uploader.upload(gpu, host)?;
    let loss = match phase {
        Phase::Pretrain => record_pretrain_step_sharded(
            gpu,
            model,
            &batch.x,
            &batch.valid,
            objective,
            step,
            opt,
            lr,
            comm,
        )?,
        Phase::Finetune => record_finetune_step(
            gpu,
            model,
            &batch.x,
            &batch.valid,
            &batch.labels,
            finetune,
            step,
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
    let crops = crop_embeddings(gpu, model, dataset, scans, cfg)?;
    let out = scan_outputs_from(gpu, model, dataset, scans, &crops, false)?;
    Ok(out
        .logits
        .iter()
        .map(|mean| {
            let m = mean.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = mean.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = exp.iter().sum();
            exp.iter().map(|e| e / z).collect()
        })
        .collect())
}
