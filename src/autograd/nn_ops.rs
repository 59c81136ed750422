//! Differentiable wrappers for the reduction, softmax, convolution,
//! normalization and loss families.

use super::{Tape, Var};
use crate::gpu::Result;
use crate::ops::batchnorm::{self, Affine};
use crate::ops::reduce::{self, Reduction};
use crate::ops::{barlow, conv1d, cross_entropy, layernorm, softmax};

impl Tape<'_> {
    /// Reduces `axis` away (sum, mean or max).
    pub fn reduce(&mut self, x: Var, axis: usize, op: Reduction) -> Result<Var> {
        let tx = self.value(x).clone();
        let out = reduce::reduce(self.gpu, &tx, axis, op)?;
        Ok(self.push(
            out,
            &[x],
            Box::new(move |gpu, g| Ok(vec![Some(reduce::reduce_backward(gpu, &tx, axis, op, g)?)])),
        ))
    }

    pub fn mean(&mut self, x: Var, axis: usize) -> Result<Var> {
        self.reduce(x, axis, Reduction::Mean)
    }

    /// Row softmax of `scale · x` over the last dimension.
    pub fn softmax(&mut self, x: Var, scale: f32) -> Result<Var> {
        let y = softmax::softmax(self.gpu, self.value(x), scale)?;
        let saved = y.clone();
        Ok(self.push(
            y,
            &[x],
            Box::new(move |gpu, g| {
                Ok(vec![Some(softmax::softmax_backward(
                    gpu, &saved, g, scale,
                )?)])
            }),
        ))
    }

    /// 1-D convolution along time: x [B, C_in, T], w [C_out, C_in, k], bias [C_out].
    pub fn conv1d(&mut self, x: Var, w: Var, bias: Var) -> Result<Var> {
        let (tx, tw) = (self.value(x).clone(), self.value(w).clone());
        let out = conv1d::conv1d(self.gpu, &tx, &tw, self.value(bias))?;
        let need_x = self.needs_grad(x);
        Ok(self.push(
            out,
            &[x, w, bias],
            Box::new(move |gpu, g| {
                let dx = if need_x {
                    Some(conv1d::conv1d_backward_input(gpu, &tx, &tw, g)?)
                } else {
                    None
                };
                Ok(vec![
                    dx,
                    Some(conv1d::conv1d_backward_weight(gpu, &tx, &tw, g)?),
                    Some(conv1d::conv1d_backward_bias(gpu, g)?),
                ])
            }),
        ))
    }

    /// LayerNorm over the last dimension with affine γ, β.
    pub fn layernorm(&mut self, x: Var, gamma: Var, beta: Var) -> Result<Var> {
        let (tx, tg) = (self.value(x).clone(), self.value(gamma).clone());
        let fwd = layernorm::layernorm_forward(self.gpu, &tx, &tg, self.value(beta))?;
        let stats = fwd.stats;
        Ok(self.push(
            fwd.y,
            &[x, gamma, beta],
            Box::new(move |gpu, g| {
                let gr = layernorm::layernorm_backward(gpu, &tx, &tg, &stats, g)?;
                Ok(vec![Some(gr.dx), Some(gr.dgamma), Some(gr.dbeta)])
            }),
        ))
    }

    /// BatchNorm in training mode over the rows of x [B, C], with affine γ, β.
    pub fn batchnorm(&mut self, x: Var, gamma: Var, beta: Var) -> Result<Var> {
        let (tx, tg) = (self.value(x).clone(), self.value(gamma).clone());
        let fwd = batchnorm::batchnorm_forward(
            self.gpu,
            &tx,
            Some(Affine {
                gamma: &tg,
                beta: self.value(beta),
            }),
        )?;
        let stats = fwd.stats;
        Ok(self.push(
            fwd.y,
            &[x, gamma, beta],
            Box::new(move |gpu, g| {
                let gr = batchnorm::batchnorm_backward(gpu, &tx, Some(&tg), &stats, g)?;
                Ok(vec![Some(gr.dx), gr.dgamma, gr.dbeta])
            }),
        ))
    }

    /// BatchNorm in training mode over the rows of x [B, C] without affine
    /// (each column standardized over the batch); the head's `head_norm`.
    pub fn batchnorm_plain(&mut self, x: Var) -> Result<Var> {
        let tx = self.value(x).clone();
        let fwd = batchnorm::batchnorm_forward(self.gpu, &tx, None)?;
        let stats = fwd.stats;
        Ok(self.push(
            fwd.y,
            &[x],
            Box::new(move |gpu, g| {
                let gr = batchnorm::batchnorm_backward(gpu, &tx, None, &stats, g)?;
                Ok(vec![Some(gr.dx)])
            }),
        ))
    }

    /// Mean softmax cross-entropy of logits [B, C] against class indices
    /// stored as f32 [B]; a 1-element result.
    pub fn cross_entropy(&mut self, logits: Var, labels: Var) -> Result<Var> {
        let (tl, ty) = (self.value(logits).clone(), self.value(labels).clone());
        let loss = cross_entropy::cross_entropy(self.gpu, &tl, &ty)?;
        Ok(self.push(
            loss,
            &[logits, labels],
            Box::new(move |gpu, g| {
                Ok(vec![
                    Some(cross_entropy::cross_entropy_backward(gpu, &tl, &ty, g)?),
                    None,
                ])
            }),
        ))
    }

    /// The Barlow Twins loss between z1 and z2 [samples, features]; 1 element.
    pub fn barlow(&mut self, z1: Var, z2: Var, lambda: f32) -> Result<Var> {
        let (t1, t2) = (self.value(z1).clone(), self.value(z2).clone());
        let (loss, saved) = barlow::barlow_forward(self.gpu, &t1, &t2, lambda)?;
        Ok(self.push(
            loss,
            &[z1, z2],
            Box::new(move |gpu, g| {
                let (d1, d2) = barlow::barlow_backward(gpu, &t1, &t2, &saved, g, lambda)?;
                Ok(vec![Some(d1), Some(d2)])
            }),
        ))
    }
}
