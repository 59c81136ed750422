//! Typed layers, built once from the parameter store (as candle-nn builds a
//! `Linear { w, b }` from a `VarBuilder`): every parameter name is looked up
//! when the model is constructed, so a misspelt or missing name fails there,
//! naming the parameter, and never in the middle of a training step; the
//! forward pass holds `ParamId`s and formats no strings.
//!
//! Each layer's `forward` records the same tape ops, in the same order, as
//! the string-keyed code it replaced (tests/model_parity.rs pins this).

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::config::{Encoder, ModelConfig, Norm};
use crate::gpu::Result;
use crate::ops::matmul::Spec;

use super::params::Params;

/// `x·W + b` over the last dimension, for x of any rank (W [in, out]).
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl Linear {
    /// `<prefix>.weight` and `<prefix>.bias`.
    fn with_bias(p: &Params, prefix: &str) -> Result<Self> {
        Ok(Self {
            weight: p.id(&format!("{prefix}.weight"))?,
            bias: Some(p.id(&format!("{prefix}.bias"))?),
        })
    }

    /// A weight without bias, under its full name.
    fn without_bias(p: &Params, weight: &str) -> Result<Self> {
        Ok(Self {
            weight: p.id(weight)?,
            bias: None,
        })
    }

    pub fn forward(&self, tape: &mut Tape, store: &ParamStore, x: Var) -> Result<Var> {
        let shape = tape.shape(x).to_vec();
        let cols = *shape.last().unwrap_or(&1);
        let rows = tape.value(x).len() / cols.max(1);
        let x2 = tape.reshape(x, &[rows, cols])?;
        let w = tape.param(store, self.weight);
        let mut y = tape.matmul(x2, w, Spec::NN)?;
        if let Some(b) = self.bias {
            let b = tape.param(store, b);
            let product = y;
            y = tape.bias_add(product, b)?;
            // Nothing reads the bare product again (bias_add's backward
            // saves nothing): free it now, not at the backward.
            tape.release(product);
        }
        let out_cols = tape.shape(y)[1];
        let mut out_shape = shape;
        *out_shape.last_mut().expect("rank >= 1") = out_cols;
        tape.reshape(y, &out_shape)
    }
}

/// A `(weight, bias)` pair used whole by one op: a LayerNorm's or
/// BatchNorm's γ and β, or a Conv1d's kernel [out, in, k] and bias [out].
#[derive(Clone, Copy, Debug)]
pub struct WeightBias {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl WeightBias {
    fn new(p: &Params, prefix: &str) -> Result<Self> {
        Ok(Self {
            weight: p.id(&format!("{prefix}.weight"))?,
            bias: p.id(&format!("{prefix}.bias"))?,
        })
    }

    /// Both as tape values, weight first.
    pub fn vars(&self, tape: &mut Tape, store: &ParamStore) -> (Var, Var) {
        (tape.param(store, self.weight), tape.param(store, self.bias))
    }

    /// LayerNorm over the last dimension of x (any rank).
    pub fn layer_norm(&self, tape: &mut Tape, store: &ParamStore, x: Var) -> Result<Var> {
        let shape = tape.shape(x).to_vec();
        let cols = *shape.last().unwrap_or(&1);
        let x2 = tape.reshape(x, &[tape.value(x).len() / cols, cols])?;
        let (g, b) = self.vars(tape, store);
        let y = tape.layernorm(x2, g, b)?;
        tape.reshape(y, &shape)
    }

    /// Conv1d of x [B, C_in, T] with this kernel and bias.
    pub fn conv1d(&self, tape: &mut Tape, store: &ParamStore, x: Var) -> Result<Var> {
        let (w, b) = self.vars(tape, store);
        tape.conv1d(x, w, b)
    }
}

/// One GCN branch: the lift of each node's scalar to F channels and two
/// graph-convolution layers.
#[derive(Clone, Copy, Debug)]
pub struct Gcn {
    pub lift: Linear,
    pub layers: [Linear; 2],
}

impl Gcn {
    fn new(p: &Params, branch: &str) -> Result<Self> {
        Ok(Self {
            lift: Linear::with_bias(p, &format!("{branch}.lift"))?,
            layers: [
                Linear::with_bias(p, &format!("{branch}.gcn1"))?,
                Linear::with_bias(p, &format!("{branch}.gcn2"))?,
            ],
        })
    }
}

/// The dynamic graph's window projection and node embedding.
#[derive(Clone, Copy, Debug)]
pub struct DynamicGraph {
    pub window_proj: Linear,
    pub node_embedding: ParamId,
    pub gcn: Gcn,
}

/// Continuous brain-state calibration (eq. 2).
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    pub q: WeightBias,
    pub k: WeightBias,
    pub v: WeightBias,
    /// The two mixing weights [2] and the bias [1].
    pub mix: WeightBias,
    pub out: WeightBias,
}

/// Progressive temporal aggregation: frame attention within segments, then
/// segment attention.
#[derive(Clone, Copy, Debug)]
pub struct Aggregation {
    pub w1: Linear,
    pub v1: ParamId,
    pub w2: Linear,
    pub v2: ParamId,
}

impl Aggregation {
    fn new(p: &Params) -> Result<Self> {
        Ok(Self {
            w1: Linear::without_bias(p, "agg.w1")?,
            v1: p.id("agg.v1")?,
            w2: Linear::without_bias(p, "agg.w2")?,
            v2: p.id("agg.v2")?,
        })
    }
}

/// The LSTM encoder's weights (PyTorch's layout).
#[derive(Clone, Copy, Debug)]
pub struct LstmWeights {
    pub w_ih: ParamId,
    pub w_hh: ParamId,
    pub b_ih: ParamId,
    pub b_hh: ParamId,
}

/// The per-frame readout of node features into D (`fusion.proj`), with
/// `norm.fusion` when `norm = layer`.
#[derive(Clone, Copy, Debug)]
pub struct Readout {
    pub proj: Linear,
    pub norm: Option<WeightBias>,
}

/// The layers of one encoder (`cfg.encoder`).
// One per model, built once: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug)]
pub enum EncoderLayers {
    Psta {
        static_gcn: Gcn,
        dynamic: DynamicGraph,
        fusion_alpha: ParamId,
        readout: Readout,
        calib: Calibration,
        agg: Aggregation,
    },
    GcnOnly {
        static_gcn: Gcn,
        readout: Readout,
    },
    Lstm {
        lstm: LstmWeights,
        agg: Aggregation,
    },
    StgcnStyle {
        static_gcn: Gcn,
        tcn: [WeightBias; 2],
        readout: Readout,
    },
}

/// The projector fc2(ReLU(BN(fc1(Z_st)))).
#[derive(Clone, Copy, Debug)]
pub struct Projector {
    pub fc1: Linear,
    pub bn: WeightBias,
    pub fc2: Linear,
}

/// Every layer of the model.
#[derive(Clone, Copy, Debug)]
pub struct Layers {
    pub encoder: EncoderLayers,
    /// `norm.out` on Z_st when `norm = layer`.
    pub out_norm: Option<WeightBias>,
    pub projector: Projector,
    pub head: Linear,
}

impl Layers {
    /// Looks every parameter of the configured model up once; a missing
    /// name is an error here.
    pub fn new(p: &Params, m: &ModelConfig) -> Result<Self> {
        let layer_norm = m.norm == Norm::Layer;
        let norm = |place: &str| -> Result<Option<WeightBias>> {
            if layer_norm {
                Ok(Some(WeightBias::new(p, &format!("norm.{place}"))?))
            } else {
                Ok(None)
            }
        };
        let readout = || -> Result<Readout> {
            Ok(Readout {
                proj: Linear::with_bias(p, "fusion.proj")?,
                norm: norm("fusion")?,
            })
        };
        let encoder = match m.encoder {
            Encoder::Psta => EncoderLayers::Psta {
                static_gcn: Gcn::new(p, "static")?,
                dynamic: DynamicGraph {
                    window_proj: Linear::without_bias(p, "dynamic.window_proj.weight")?,
                    node_embedding: p.id("dynamic.node_embedding")?,
                    gcn: Gcn::new(p, "dynamic")?,
                },
                fusion_alpha: p.id("fusion.alpha")?,
                readout: readout()?,
                calib: Calibration {
                    q: WeightBias::new(p, "calib.q")?,
                    k: WeightBias::new(p, "calib.k")?,
                    v: WeightBias::new(p, "calib.v")?,
                    mix: WeightBias::new(p, "calib.mix")?,
                    out: WeightBias::new(p, "calib.out")?,
                },
                agg: Aggregation::new(p)?,
            },
            Encoder::GcnOnly => EncoderLayers::GcnOnly {
                static_gcn: Gcn::new(p, "static")?,
                readout: readout()?,
            },
            Encoder::Lstm => EncoderLayers::Lstm {
                lstm: LstmWeights {
                    w_ih: p.id("lstm.w_ih")?,
                    w_hh: p.id("lstm.w_hh")?,
                    b_ih: p.id("lstm.b_ih")?,
                    b_hh: p.id("lstm.b_hh")?,
                },
                agg: Aggregation::new(p)?,
            },
            Encoder::StgcnStyle => EncoderLayers::StgcnStyle {
                static_gcn: Gcn::new(p, "static")?,
                tcn: [
                    WeightBias::new(p, "stgcn.tcn1")?,
                    WeightBias::new(p, "stgcn.tcn2")?,
                ],
                readout: readout()?,
            },
        };
        Ok(Self {
            encoder,
            out_norm: norm("out")?,
            projector: Projector {
                fc1: Linear::with_bias(p, "proj.fc1")?,
                bn: WeightBias::new(p, "proj.bn")?,
                fc2: Linear::with_bias(p, "proj.fc2")?,
            },
            head: Linear::with_bias(p, "head")?,
        })
    }

    /// The fusion projection, for the encoders that have one.
    pub fn fusion_proj(&self) -> Option<Linear> {
        match self.encoder {
            EncoderLayers::Psta { readout, .. }
            | EncoderLayers::GcnOnly { readout, .. }
            | EncoderLayers::StgcnStyle { readout, .. } => Some(readout.proj),
            EncoderLayers::Lstm { .. } => None,
        }
    }
}
