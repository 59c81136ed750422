//! STIGA views on the GPU (docs/design.md §3 SCA/TCA): the spatial view X_S
//! (whole regions masked) and the temporal view X_T (whole frames masked) of a
//! crop batch, with no readback.
//!
//! - SCA: |Pearson| of the crop (`correlation_whole`; the shader takes the
//!   absolute value) and the regions with no variance in the crop (all-zero
//!   regions; the diagonal of the Pearson matrix is exactly 0 for them and
//!   exactly 1 otherwise) → [`stiga::sca_probabilities`] → a [B, N] keep-mask
//!   from [`random::bernoulli_mask`] → `mul_broadcast` over T.
//! - TCA: [`stiga::tca_probabilities`] over the frames (padded frames get
//!   p = 0) → a [B, T] keep-mask → `mul_broadcast` over N.
//! - `kind = random` (RSA + RTA): every eligible region / frame gets the mean
//!   of the STIGA probabilities of its scan ([`stiga::uniform_probabilities`]),
//!   so the mean masking rate is the same, the distribution uniform.
//! - `kind = none`: both views are X, both probabilities 0. `sca = false`
//!   (`tca = false`) leaves X_S (X_T) unmasked with p_roi (p_frame) all 0.
//!
//! Random numbers: Threefry keyed by (seed, stream, step) with a distinct
//! stream for each mask ([`STREAM_SCA`], [`STREAM_TCA`]), so the same seed and
//! step give the same views and a run resumes exactly from its step count.
//! The 64-bit seed and step are folded to the generator's 32-bit words
//! (`lo ^ hi`).

use crate::config::{AugmentConfig, AugmentKind};
use crate::gpu::{Gpu, GpuError, Result, Tensor};
use crate::ops::random::{self, ProbLayout, RngKey};
use crate::ops::stiga::{self, Mapping, MaskKind};
use crate::ops::{correlation, elementwise, reduce};

/// Generator stream of the SCA (region) mask.
pub const STREAM_SCA: u32 = 0x5CA0_0001;
/// Generator stream of the TCA (frame) mask.
pub const STREAM_TCA: u32 = 0x7CA0_0002;
/// Generator stream of the fine-tuning dropout mask (`finetune.dropout`).
pub const STREAM_DROPOUT: u32 = 0xD50F_0003;

/// Dropout on the readout's input in a fine-tuning step (`finetune.dropout`):
/// each of a scan's N·F fused node features is dropped with probability
/// `p` for the whole crop (one draw per scan and feature, shared by every
/// frame), and the kept ones are scaled by 1/(1 − p). A mask per frame
/// would average out: the static branch's features are the same at every
/// frame, and the temporal stages mix the frames again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Probability of dropping a feature, in (0, 1).
    pub p: f32,
    /// The step's generator key: `rng_key(seed, STREAM_DROPOUT, step)`.
    pub key: RngKey,
}

impl Dropout {
    /// The dropout of fine-tuning step `step`, or None when `p` is 0.
    pub fn at_step(p: f32, seed: u64, step: u64) -> Option<Self> {
        (p > 0.0).then(|| Self {
            p,
            key: rng_key(seed, STREAM_DROPOUT, step),
        })
    }
}

/// The dropout multiplier [B, K] of features [B, T, K]: element (b, k) is 0
/// where feature k of scan b is dropped, else 1/(1 − p). It is applied at
/// every frame by [`Tape::mul_constant_broadcast`] over T, so it is never
/// materialized at [B, T, K]. The keep-mask is the counter generator's
/// Bernoulli draw (element b·K + k), so the host can recompute it with
/// `random::reference::bernoulli_mask`.
///
/// [`Tape::mul_constant_broadcast`]: crate::autograd::Tape::mul_constant_broadcast
pub fn feature_dropout_mask(gpu: &Gpu, b: usize, k: usize, dropout: Dropout) -> Result<Tensor> {
    if !(dropout.p > 0.0 && dropout.p < 1.0) {
        return Err(GpuError::Shape {
            op: "feature_dropout_mask",
            message: format!("dropout probability {} is not in (0, 1)", dropout.p),
        });
    }
    let prob = gpu.full(&[k], dropout.p)?;
    let keep = random::bernoulli_mask(gpu, &[b, k], &prob, ProbLayout::PerColumn, dropout.key)?;
    elementwise::scale(gpu, &keep, 1.0 / (1.0 - dropout.p), 0.0)
}

/// The two augmented views of a batch and the probabilities they were drawn with.
pub struct Views {
    /// X_S [B, N, T]: X with the masked regions' series set to 0.
    pub x_s: Tensor,
    /// X_T [B, N, T]: X with the masked frames set to 0 in every region.
    pub x_t: Tensor,
    /// Masking probability of each region [B, N] (0 for all-zero regions).
    pub p_roi: Tensor,
    /// Masking probability of each frame [B, T] (0 for padded frames).
    pub p_frame: Tensor,
}

fn fold(v: u64) -> u32 {
    (v as u32) ^ ((v >> 32) as u32)
}

/// The generator key of one mask.
pub fn rng_key(seed: u64, stream: u32, step: u64) -> RngKey {
    RngKey {
        seed: fold(seed),
        stream,
        step: fold(step),
    }
}

/// Flags [B, N]: 1 where a region has no variance in the crop (all zero), else 0.
pub fn zero_region_flags(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let (b, n) = (x.shape()[0], x.shape()[1]);
    let corr = correlation::correlation_whole(gpu, x)?.reshape(&[b, n * n])?;
    let eye: Vec<f32> = (0..n * n)
        .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
        .collect();
    let eye = gpu.upload(&eye, &[n * n])?;
    // corr ⊙ I broadcast over the batch, then row sums: the diagonal [B, N].
    let diag = elementwise::mul_broadcast(gpu, &corr, &eye, n * n, b)?.reshape(&[b, n, n])?;
    let diag = reduce::reduce(gpu, &diag, 2, reduce::Reduction::Sum)?;
    elementwise::scale(gpu, &diag.reshape(&[b, n])?, -1.0, 1.0)
}

/// The STIGA (or random, or no) views of x [B, N, T] with valid [B, T].
pub fn make_views(
    gpu: &Gpu,
    x: &Tensor,
    valid: &Tensor,
    cfg: &AugmentConfig,
    seed: u64,
    step: u64,
) -> Result<Views> {
    make_views_from(gpu, x, valid, cfg, seed, step, 0)
}

/// [`make_views`] of scans `first_scan..` of a larger batch: a
/// data-parallel rank's shard gets the masks those scans get in the whole
/// batch (the masks are drawn per element of the batch, `ops::random`).
pub fn make_views_from(
    gpu: &Gpu,
    x: &Tensor,
    valid: &Tensor,
    cfg: &AugmentConfig,
    seed: u64,
    step: u64,
    first_scan: usize,
) -> Result<Views> {
    let &[b, n, t] = x.shape() else {
        return Err(GpuError::Shape {
            op: "make_views",
            message: format!("input {:?} must be [B, N, T]", x.shape()),
        });
    };
    if valid.shape() != [b, t] {
        return Err(GpuError::Shape {
            op: "make_views",
            message: format!("valid {:?} for input {:?}", valid.shape(), x.shape()),
        });
    }
    let mapping = Mapping {
        p_scale: cfg.p_scale as f32,
        p_max: cfg.p_max as f32,
    };
    let active = cfg.kind != AugmentKind::None;
    let uniform = cfg.kind == AugmentKind::Random;

    let (x_s, p_roi) = if active && cfg.sca && b * n * t > 0 {
        let corr = correlation::correlation_whole(gpu, x)?.reshape(&[b, n, n])?;
        let zero = zero_region_flags(gpu, x)?;
        let mut p = stiga::sca_probabilities(gpu, &corr, &zero, mapping)?;
        if uniform {
            p = stiga::uniform_probabilities(gpu, &p, &zero, MaskKind::Excluded)?;
        }
        let keep = random::bernoulli_mask_from(
            gpu,
            &[b, n],
            &p,
            ProbLayout::PerElement,
            rng_key(seed, STREAM_SCA, step),
            first_scan * n,
        )?;
        (elementwise::mul_broadcast(gpu, x, &keep, 1, t)?, p)
    } else {
        (x.clone(), gpu.zeros(&[b, n])?)
    };

    let (x_t, p_frame) = if active && cfg.tca && b * n * t > 0 {
        let mut p = stiga::tca_probabilities(gpu, x, valid, mapping)?;
        if uniform {
            p = stiga::uniform_probabilities(gpu, &p, valid, MaskKind::Valid)?;
        }
        let keep = random::bernoulli_mask_from(
            gpu,
            &[b, t],
            &p,
            ProbLayout::PerElement,
            rng_key(seed, STREAM_TCA, step),
            first_scan * t,
        )?;
        (elementwise::mul_broadcast(gpu, x, &keep, t, n)?, p)
    } else {
        (x.clone(), gpu.zeros(&[b, t])?)
    };

    Ok(Views {
        x_s,
        x_t,
        p_roi,
        p_frame,
    })
}
