//! AdamW over a parameter store, on the GPU (moments live beside the params).

use super::ParamStore;
use crate::gpu::{Gpu, Result, Tensor};
use crate::ops::adamw::{adamw_step, AdamW};

pub struct AdamWState {
    pub hp: AdamW,
    /// Steps taken so far (the next update uses `step + 1`).
    pub step: u32,
    /// First and second moments, one pair per parameter in store order.
    pub moments: Vec<(Tensor, Tensor)>,
}

impl AdamWState {
    pub fn new(gpu: &Gpu, store: &ParamStore, hp: AdamW) -> Result<Self> {
        let moments = store
            .params
            .iter()
            .map(|p| Ok((gpu.zeros(p.value.shape())?, gpu.zeros(p.value.shape())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            hp,
            step: 0,
            moments,
        })
    }

    /// Records one update of every parameter with learning rate `lr`.
    pub fn update(&mut self, gpu: &Gpu, store: &ParamStore, lr: f32) -> Result<()> {
        self.update_where(gpu, store, lr, |_| true)
    }

    /// Records one update of the parameters whose name passes `train` (a
    /// frozen encoder: only `head.*`). The others keep their values and moments.
    pub fn update_where(
        &mut self,
        gpu: &Gpu,
        store: &ParamStore,
        lr: f32,
        train: impl Fn(&str) -> bool,
    ) -> Result<()> {
        self.update_with(gpu, store, |name| train(name).then_some(lr))
    }

    /// Records one update in which each parameter gets the learning rate
    /// `lr_of(name)`, or no update at all (values and moments kept) where
    /// that is None: per-group learning rates (`finetune.head_lr_multiplier`).
    /// One step count for all, as one PyTorch optimizer with parameter groups.
    pub fn update_with(
        &mut self,
        gpu: &Gpu,
        store: &ParamStore,
        lr_of: impl Fn(&str) -> Option<f32>,
    ) -> Result<()> {
        self.step += 1;
        for (p, (m, v)) in store.params.iter().zip(&self.moments) {
            if let Some(lr) = lr_of(&p.name) {
                let hp = AdamW { lr, ..self.hp };
                adamw_step(gpu, &p.value, &p.grad, m, v, &hp, self.step)?;
            }
        }
        Ok(())
    }
}
