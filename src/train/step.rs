//! One training step, recorded once: the trainer, the step benchmark
//! (`src/bench.rs`) and the learning test (tests/model_learning.rs) all call
//! these functions, so what is timed and tested is what trains.
//!
//! A step records, in program order on the GPU: zero the gradients → (views)
//! → forward → loss → backward → AdamW update. Nothing is submitted here; the
//! caller decides when to flush, so a step can share one submit with the
//! copy of its loss into the trainer's loss history.

use crate::autograd::optim::AdamWState;
use crate::autograd::Tape;
use crate::config::{AugmentConfig, Config, Fgco};
use crate::dist::{all_reduce_gradients, Collective, Single};
use crate::gpu::{Gpu, Result, Tensor};
use crate::model::augment::make_views_from;
use crate::model::{Dropout, Model};

/// What a pretraining step needs beyond the batch: how the views are drawn
/// and which FGCO loss compares them.
#[derive(Clone, Debug)]
pub struct PretrainObjective {
    pub augment: AugmentConfig,
    /// Seeds the augmentation masks (with the step index).
    pub seed: u64,
    pub fgco: Fgco,
    /// λ, the Barlow Twins off-diagonal weight (`pretrain.lambda_offdiag`).
    pub lambda_offdiag: f32,
}

impl PretrainObjective {
    /// The objective an experiment config asks for.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            augment: cfg.augment.clone(),
            seed: cfg.seed,
            fgco: cfg.pretrain.fgco,
            lambda_offdiag: cfg.pretrain.lambda_offdiag as f32,
        }
    }
}

/// Records one pretraining step on x [B, N, T] (valid [B, T]): STIGA (or the
/// configured) views, the FGCO loss over the three views, backward and one
/// AdamW update of every parameter. `step` is the global step index (it
/// seeds this step's masks). Returns the 1-element loss tensor.
#[allow(clippy::too_many_arguments)]
pub fn record_pretrain_step(
    gpu: &Gpu,
    model: &Model,
    x: &Tensor,
    valid: &Tensor,
    objective: &PretrainObjective,
    step: u64,
    opt: &mut AdamWState,
    lr: f32,
) -> Result<Tensor> {
    record_pretrain_step_sharded(gpu, model, x, valid, objective, step, opt, lr, &Single)
}

/// [`record_pretrain_step`] on this rank's shard x of a global batch split
/// over the ranks of `comm` (`dist::shard_rows`): the views are the ones
/// these scans get in the whole batch, the loss is the global batch's, and
/// the gradients are all-reduced between the backward and the update, so
/// every rank makes the one-process update (`crate::dist`). Returns the
/// global batch's loss.
#[allow(clippy::too_many_arguments)]
pub fn record_pretrain_step_sharded(
    gpu: &Gpu,
    model: &Model,
    x: &Tensor,
    valid: &Tensor,
    objective: &PretrainObjective,
    step: u64,
    opt: &mut AdamWState,
    lr: f32,
    comm: &dyn Collective,
) -> Result<Tensor> {
    // Stage labels name the dispatches in a profile (`train::profile`).
    gpu.set_stage("views");
    let first_scan = comm.rank() * x.shape().first().copied().unwrap_or(0);
    let views = make_views_from(
        gpu,
        x,
        valid,
        &objective.augment,
        objective.seed,
        step,
        first_scan,
    )?;
    // Zeroing is recorded after the views and before the forward; the
    // backward accumulates into the gradients, so it must come first.
    model.params.store.zero_grads(gpu)?;
    let mut tape = Tape::new(gpu);
    let loss = model.pretrain_loss_sharded(
        &mut tape,
        x,
        &views.x_s,
        &views.x_t,
        valid,
        objective.fgco,
        objective.lambda_offdiag,
        comm,
    )?;
    let loss_value = tape.value(loss).clone();
    gpu.set_stage("backward");
    tape.backward(loss, &model.params.store)?;
    gpu.set_stage("optimizer");
    // GPU ordering point: the all-reduce reads the gradients the backward
    // recorded (a submit and a wait) and writes the sums back before the
    // update is recorded.
    let fgco = objective.fgco;
    all_reduce_gradients(
        gpu,
        &model.params.store,
        comm,
        |name| Model::replicated_under_data_parallel(fgco, name),
        step,
    )?;
    opt.update(gpu, &model.params.store, lr)?;
    Ok(loss_value)
}

/// What a fine-tuning step updates, and how fast.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinetuneObjective {
    /// Update the head only (a linear probe).
    pub freeze_encoder: bool,
    /// The head's (`head.*`) learning rate is the step's lr times this.
    pub head_lr_multiplier: f32,
    /// `finetune.dropout` (0 = off) and the run's seed, which with the
    /// step number key the dropout mask ([`Dropout::at_step`]), so a
    /// resumed run draws the same masks.
    pub dropout: f32,
    pub seed: u64,
}

impl FinetuneObjective {
    /// The objective an experiment config asks for.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            freeze_encoder: cfg.finetune.freeze_encoder,
            head_lr_multiplier: cfg.finetune.head_lr_multiplier as f32,
            dropout: cfg.finetune.dropout as f32,
            seed: cfg.seed,
        }
    }
}

impl Default for FinetuneObjective {
    /// Every parameter, one learning rate, no dropout.
    fn default() -> Self {
        Self {
            freeze_encoder: false,
            head_lr_multiplier: 1.0,
            dropout: 0.0,
            seed: 0,
        }
    }
}

/// Whether a parameter belongs to the classification head.
pub fn is_head(name: &str) -> bool {
    name.starts_with("head.")
}

/// Records one fine-tuning step on x [B, N, T] (valid [B, T], labels [B]):
/// forward, mean cross-entropy of the head, backward and one AdamW update —
/// of the head only when `freeze_encoder` (a linear probe), else of every
/// parameter; the head at `lr × head_lr_multiplier`, the encoder at `lr`;
/// with `objective.dropout` > 0, step `step`'s dropout mask on the
/// readout's input. Returns the 1-element loss tensor.
#[allow(clippy::too_many_arguments)]
pub fn record_finetune_step(
    gpu: &Gpu,
    model: &Model,
    x: &Tensor,
    valid: &Tensor,
    labels: &Tensor,
    objective: &FinetuneObjective,
    step: u64,
    opt: &mut AdamWState,
    lr: f32,
) -> Result<Tensor> {
    model.params.store.zero_grads(gpu)?;
    let mut tape = Tape::new(gpu);
    let dropout = Dropout::at_step(objective.dropout, objective.seed, step);
    let (loss, _logits) = model.finetune_loss(&mut tape, x, valid, labels, dropout)?;
    let loss_value = tape.value(loss).clone();
    gpu.set_stage("backward");
    tape.backward(loss, &model.params.store)?;
    gpu.set_stage("optimizer");
    let head_lr = lr * objective.head_lr_multiplier;
    let freeze = objective.freeze_encoder;
    opt.update_with(gpu, &model.params.store, |name| {
        if is_head(name) {
            Some(head_lr)
        } else if freeze {
            None
        } else {
            Some(lr)
        }
    })?;
    Ok(loss_value)
}
