//! The STPTF model on the GPU: PSTA encoder, FGCO losses, head.
//!
//! Every step of docs/model.md is a composition of tape ops, each of which
//! has its own f64 reference and gradient check; the whole model is checked
//! against an independent PyTorch implementation (tests/model_parity.rs).
//!
//! Layouts: inputs X [B, N, T]; GCN activations [B, T, N, F]; the temporal
//! stages [B, D, T].

pub mod augment;
pub mod layers;
pub mod params;
pub mod sizes;

use crate::autograd::{Tape, Var};
use crate::config::{Encoder, Fgco, HeadNorm, ModelConfig, NodeFeatures, ProfileNorm, Residual};
use crate::dist::{Collective, Single};
use crate::gpu::{GpuError, Result, Tensor};
use crate::ops::batchnorm::{self, Running};
use crate::ops::matmul::Spec;
use crate::ops::{elementwise, graph_conv, partial_correlation, segment_pool, window};

pub use augment::{feature_dropout_mask, make_views, Dropout, Views};
pub use params::{DataDims, HostTensor, Params, ParamsError};

use layers::{Aggregation, EncoderLayers, Gcn, Layers, Linear, Readout, WeightBias};

pub struct Model {
    pub cfg: ModelConfig,
    pub dims: DataDims,
    pub params: Params,
    /// Every layer, looked up once from `params` (a missing parameter fails
    /// at construction).
    pub layers: Layers,
}

/// What one encoder pass produces (tape values).
///
/// For the ablation encoders (`cfg.encoder`):
/// - `gcn-only`: `z_fused` = Z_s [B, T, N, F] of the static GCN,
///   `z_temporal` = the per-frame readout fusion.proj(Z_s) [B, D, T]
///   (nothing temporal happens; FGCO `fine` compares these);
/// - `stgcn-style`: `z_fused` = the last block's node features [B, T, N, F],
///   `z_temporal` = their per-frame readout [B, D, T];
/// - `lstm`: `z_temporal` = the hidden states [B, D, T]; there are no node
///   embeddings, so `z_fused` is the input X as [B, T, N, 1] (a constant
///   with no gradient) and FGCO `fine` returns an error for this encoder.
///
/// `frame_weights` / `segment_weights` are the aggregation's attention for
/// `psta` and `lstm`, and the uniform weights of the masked mean over valid
/// frames (one segment, weight 1) for `gcn-only` and `stgcn-style`.
pub struct Encoded {
    /// β₀Z_s + β₁Z_d [B, T, N, F] (see above for the ablations).
    pub z_fused: Var,
    /// Z_temporal [B, D, T].
    pub z_temporal: Var,
    /// Z_st [B, D].
    pub z_st: Var,
    /// Frame weights within segments [B, T] and segment weights [B, K]
    /// (what the model attended to; for plots).
    pub frame_weights: Tensor,
    pub segment_weights: Tensor,
}

impl Model {
    pub fn new(gpu: &crate::gpu::Gpu, cfg: ModelConfig, dims: DataDims, seed: u64) -> Result<Self> {
        let params = Params::init(gpu, &cfg, dims, seed)?;
        Self::with_params(cfg, dims, params)
    }

    pub fn from_host(
        gpu: &crate::gpu::Gpu,
        cfg: ModelConfig,
        dims: DataDims,
        tensors: &[HostTensor],
    ) -> std::result::Result<Self, ParamsError> {
        let params = Params::from_host(gpu, &cfg, dims, tensors)?;
        Ok(Self::with_params(cfg, dims, params)?)
    }

    fn with_params(cfg: ModelConfig, dims: DataDims, params: Params) -> Result<Self> {
        let layers = Layers::new(&params, &cfg)?;
        Ok(Self {
            cfg,
            dims,
            params,
            layers,
        })
    }

    fn store(&self) -> &crate::autograd::ParamStore {
        &self.params.store
    }

    fn linear(&self, tape: &mut Tape, layer: &Linear, x: Var) -> Result<Var> {
        layer.forward(tape, self.store(), x)
    }

    fn param(&self, tape: &mut Tape, id: crate::autograd::ParamId) -> Var {
        tape.param(self.store(), id)
    }

    /// One GCN branch: lift each node's scalar to F channels, then two layers
    /// `H ← ReLU(Â_t H W + b)`. `adj` is [B, W, N, N] with frame t using
    /// window min(t / stride, W − 1); `xt` is X as [B, T, N].
    fn gcn(&self, tape: &mut Tape, gcn: &Gcn, adj: Var, xt: Var, stride: usize) -> Result<Var> {
        tape.gpu.set_stage("GCNs");
        let z1 = self.lifted_first_layer(tape, gcn, adj, xt, stride)?;
        let h1 = tape.relu(z1)?;
        // Pre-activations are consumed by their ReLU, whose backward reads
        // its output only: [B, T, N, F] each, freed here.
        tape.release(z1);
        let ah = tape.graph_conv(adj, h1, stride)?;
        let z2 = self.linear(tape, &gcn.layers[1], ah)?;
        let h2 = tape.relu(z2)?;
        tape.release(z2);
        Ok(h2)
    }

    /// The lift and the first GCN layer's pre-activation, `Â_t H0 W1 + b1`
    /// with `H0 = x·w + 1·bᵀ` (w = lift.weight [1, F], b = lift.bias), as
    /// one rank-2 product. Every node's lifted features span the same two
    /// directions, so
    ///
    ///   Â H0 W1 + b1 = [Âx, Â1] · ([w; b] · W1) + b1:
    ///
    /// the graph propagation runs on 2 channels instead of F, the node
    /// product is [·, 2]·[2, F] instead of [·, F]·[F, F] (about F/2 times
    /// fewer flops in the layer), and H0, H0 + b and Â H0, three
    /// [B, T, N, F] tensors, never exist. The same function: the parity
    /// test against the literal composition in PyTorch covers it. `xt` is
    /// X as [B, T, N]; returns [B, T, N, F].
    fn lifted_first_layer(
        &self,
        tape: &mut Tape,
        gcn: &Gcn,
        adj: Var,
        xt: Var,
        stride: usize,
    ) -> Result<Var> {
        let (b, t, n) = (tape.shape(xt)[0], tape.shape(xt)[1], tape.shape(xt)[2]);
        let f = self.cfg.node_channels;
        let rows = b * t * n;
        let gpu = tape.gpu;
        // [x, 1] per node: x·[1, 0] + [0, 1].
        let x_col = tape.reshape(xt, &[rows, 1])?;
        let x_dir = tape.input(gpu.upload(&[1.0, 0.0], &[1, 2])?);
        let one_dir = tape.input(gpu.upload(&[0.0, 1.0], &[2])?);
        let s = tape.matmul(x_col, x_dir, Spec::NN)?;
        let s = tape.bias_add(s, one_dir)?;
        let s = tape.reshape(s, &[b, t, n, 2])?;
        let p = tape.graph_conv(adj, s, stride)?; // [B, T, N, 2]: Âx, Â1
                                                  // [w; b] = [1; 0]·w + [0; 1]·b, then · W1.
        let w = self.param(tape, gcn.lift.weight);
        let lift_bias = gcn.lift.bias.ok_or_else(|| GpuError::Shape {
            op: "gcn",
            message: "the lift has no bias".into(),
        })?;
        let lb = self.param(tape, lift_bias);
        let lb = tape.reshape(lb, &[1, f])?;
        let row0 = tape.input(gpu.upload(&[1.0, 0.0], &[2, 1])?);
        let row1 = tape.input(gpu.upload(&[0.0, 1.0], &[2, 1])?);
        let m_w = tape.matmul(row0, w, Spec::NN)?;
        let m_b = tape.matmul(row1, lb, Spec::NN)?;
        let m = tape.add(m_w, m_b)?; // [2, F]
        let w1 = self.param(tape, gcn.layers[0].weight);
        let u = tape.matmul(m, w1, Spec::NN)?; // [2, F]
        let p = tape.reshape(p, &[rows, 2])?;
        let mut z = tape.matmul(p, u, Spec::NN)?;
        if let Some(b1) = gcn.layers[0].bias {
            let b1 = self.param(tape, b1);
            let product = z;
            z = tape.bias_add(product, b1)?;
            tape.release(product); // [B·T·N, F], read by nothing else
        }
        tape.reshape(z, &[b, t, n, f])
    }

    /// The encoder selected by `cfg.encoder` (PSTA by default) on one view
    /// x [B, N, T] (valid [B, T]: 1 real frame, 0 padding), without dropout
    /// (pretraining, evaluation, prediction).
    pub fn encode(&self, tape: &mut Tape, x: &Tensor, valid: &Tensor) -> Result<Encoded> {
        self.encode_with(tape, x, valid, None)
    }

    /// [`Model::encode`] with `finetune.dropout` on the readout's input
    /// (fine-tuning steps only; see [`Dropout`]).
    pub fn encode_with(
        &self,
        tape: &mut Tape,
        x: &Tensor,
        valid: &Tensor,
        dropout: Option<Dropout>,
    ) -> Result<Encoded> {
        let &[b, n, t] = x.shape() else {
            return Err(GpuError::Shape {
                op: "encode",
                message: format!("input {:?} must be [B, N, T]", x.shape()),
            });
        };
        if n != self.dims.n_regions {
            return Err(GpuError::Shape {
                op: "encode",
                message: format!(
                    "input has {n} regions, the model was built for {}",
                    self.dims.n_regions
                ),
            });
        }
        if valid.shape() != [b, t] {
            return Err(GpuError::Shape {
                op: "encode",
                message: format!("valid {:?} for input {:?}", valid.shape(), x.shape()),
            });
        }
        match &self.layers.encoder {
            EncoderLayers::Psta { .. } => self.encode_psta(tape, x, valid, dropout),
            EncoderLayers::GcnOnly {
                static_gcn,
                readout,
            } => self.encode_gcn_only(tape, static_gcn, readout, x, valid, dropout),
            EncoderLayers::Lstm { lstm, agg } => {
                if dropout.is_some() {
                    // Config validation refuses this; a direct caller gets an error.
                    return Err(GpuError::Shape {
                        op: "encode",
                        message: "the lstm encoder has no readout to apply dropout to".into(),
                    });
                }
                self.encode_lstm(tape, lstm, agg, x, valid)
            }
            EncoderLayers::StgcnStyle {
                static_gcn,
                tcn,
                readout,
            } => self.encode_stgcn(tape, static_gcn, tcn, readout, x, valid, dropout),
        }
    }

    /// Â = normalized |partial correlation| of x, [B, 1, N, N], as a tape
    /// input (no gradient), and the partial correlation [B, N, N] itself.
    fn static_adjacency(&self, tape: &mut Tape, x: &Tensor) -> Result<(Var, Tensor)> {
        let gpu = tape.gpu;
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let pc = partial_correlation::partial_correlation(gpu, x)?;
        let a_static = graph_conv::normalize_adjacency(gpu, &pc.partial)?.reshape(&[b, 1, n, n])?;
        Ok((tape.input(a_static), pc.partial))
    }

    /// The connectivity profiles R [B, N, N] that `model.node_features`
    /// names, normalized per edge by `model.profile_norm` (a tape input: no
    /// gradient flows into them), or None for the literal per-frame series.
    /// `partial` is the static graph's.
    fn node_profiles(&self, tape: &mut Tape, x: &Tensor, partial: Tensor) -> Result<Option<Var>> {
        let r = match self.cfg.node_features {
            NodeFeatures::Series => return Ok(None),
            NodeFeatures::Partial => partial,
            NodeFeatures::Pearson => self.pearson_profiles(tape.gpu, x)?,
        };
        let r = self.normalize_profiles(tape.gpu, r)?;
        Ok(Some(tape.input(r)))
    }

    fn pearson_profiles(&self, gpu: &crate::gpu::Gpu, x: &Tensor) -> Result<Tensor> {
        let (b, n) = (x.shape()[0], x.shape()[1]);
        crate::ops::correlation::correlation_whole(gpu, x)?.reshape(&[b, n, n])
    }

    /// The connectivity profiles of crops x [B, N, T] before
    /// `model.profile_norm` ([B, N, N]; None for `node_features = "series"`):
    /// what the profile statistics are computed from.
    pub fn raw_profiles(&self, gpu: &crate::gpu::Gpu, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(match self.cfg.node_features {
            NodeFeatures::Series => None,
            NodeFeatures::Pearson => Some(self.pearson_profiles(gpu, x)?),
            NodeFeatures::Partial => {
                Some(partial_correlation::partial_correlation(gpu, x)?.partial)
            }
        })
    }

    /// The profiles the lift reads: `raw_profiles` normalized per edge.
    pub fn profiles(&self, gpu: &crate::gpu::Gpu, x: &Tensor) -> Result<Option<Tensor>> {
        self.raw_profiles(gpu, x)?
            .map(|r| self.normalize_profiles(gpu, r))
            .transpose()
    }

    /// (R + shift) ⊙ scale per edge, both [N, N] broadcast over the batch,
    /// for `profile_norm = center | standardize`; R itself for `none`.
    fn normalize_profiles(&self, gpu: &crate::gpu::Gpu, r: Tensor) -> Result<Tensor> {
        if self.cfg.profile_norm == ProfileNorm::None {
            return Ok(r);
        }
        let (b, n) = (r.shape()[0], r.shape()[1]);
        let shift = self.params.buffer(params::PROFILE_NORM_SHIFT)?;
        let scale = self.params.buffer(params::PROFILE_NORM_SCALE)?;
        let shifted =
            elementwise::bias_add(gpu, &r.reshape(&[b, n * n])?, &shift.reshape(&[n * n])?)?;
        elementwise::mul_broadcast(gpu, &shifted, &scale.reshape(&[1, n * n])?, n * n, b)?
            .reshape(&[b, n, n])
    }

    /// Sets the profile normalization's statistics: `mean` and `std` [N·N]
    /// per edge (row-major), as the trainer computes them. `center` uses the
    /// mean only; `standardize` divides by std, and an edge whose std is
    /// at most 1e-6 (the Pearson diagonal, 1 up to rounding; a real edge
    /// varies by 0.05 or more) becomes 0.
    pub fn set_profile_statistics(
        &self,
        gpu: &crate::gpu::Gpu,
        mean: &[f64],
        std: &[f64],
    ) -> Result<()> {
        let n = self.dims.n_regions;
        if self.cfg.profile_norm == ProfileNorm::None || mean.len() != n * n || std.len() != n * n {
            return Err(GpuError::Shape {
                op: "set_profile_statistics",
                message: format!(
                    "model.profile_norm = {:?} with {} regions cannot take statistics of {} and {} entries",
                    self.cfg.profile_norm,
                    n,
                    mean.len(),
                    std.len()
                ),
            });
        }
        let shift: Vec<f32> = mean.iter().map(|&m| -m as f32).collect();
        let scale: Vec<f32> = std
            .iter()
            .map(|&s| match self.cfg.profile_norm {
                ProfileNorm::Standardize if s > 1e-6 => (1.0 / s) as f32,
                ProfileNorm::Standardize => 0.0,
                _ => 1.0,
            })
            .collect();
        gpu.write(self.params.buffer(params::PROFILE_NORM_SHIFT)?, &shift)?;
        gpu.write(self.params.buffer(params::PROFILE_NORM_SCALE)?, &scale)
    }

    /// True when the model normalizes its profiles and its statistics are
    /// still the initial identity (shift 0 and scale 1 everywhere): the
    /// first phase that trains it sets them. Reads the two buffers back.
    pub fn profile_statistics_unset(&self, gpu: &crate::gpu::Gpu) -> Result<bool> {
        if self.cfg.profile_norm == ProfileNorm::None {
            return Ok(false);
        }
        let shift = gpu.read(self.params.buffer(params::PROFILE_NORM_SHIFT)?)?;
        let scale = gpu.read(self.params.buffer(params::PROFILE_NORM_SCALE)?)?;
        Ok(shift.iter().all(|&v| v == 0.0) && scale.iter().all(|&v| v == 1.0))
    }

    /// One GCN branch on connectivity profiles r [B, N, N]: the lift
    /// `H0 = r·lift.weight + lift.bias` [B, N, F] is the same for every
    /// frame, so the two layers run once per adjacency window (W of them in
    /// `adj` [B, W, N, N]; 1 for the static graph) instead of once per
    /// frame, and frame t then takes window min(t / stride, W − 1)'s
    /// features, exactly as the per-frame computation would give them.
    /// Returns [B, T, N, F].
    fn gcn_on_profiles(
        &self,
        tape: &mut Tape,
        gcn: &Gcn,
        adj: Var,
        r: Var,
        t: usize,
        stride: usize,
    ) -> Result<Var> {
        tape.gpu.set_stage("GCNs");
        let gpu = tape.gpu;
        let (b, w, n) = (tape.shape(adj)[0], tape.shape(adj)[1], tape.shape(adj)[2]);
        let f = self.cfg.node_channels;
        let h0 = self.linear(tape, &gcn.lift, r)?; // [B, N, F]
        let h0 = tape.reshape(h0, &[b, 1, n * f])?;
        // Window w's input is H0 for every w: ones [W, 1] · H0.
        let ones = tape.input(gpu.full(&[w, 1], 1.0)?);
        let h0 = tape.matmul(ones, h0, Spec::NN)?;
        let h0 = tape.reshape(h0, &[b, w, n, f])?;
        let mut h = h0;
        for layer in &gcn.layers {
            // Window w's features use window w's adjacency: stride 1.
            let ah = tape.graph_conv(adj, h, 1)?;
            let z = self.linear(tape, layer, ah)?;
            h = tape.relu(z)?;
            tape.release(z); // read by its ReLU only, whose backward reads the output
        }
        // Frames from windows: frame t takes window min(t / stride, W − 1).
        let mut pick = vec![0.0f32; t * w];
        for ti in 0..t {
            pick[ti * w + (ti / stride.max(1)).min(w - 1)] = 1.0;
        }
        let pick = tape.input(gpu.upload(&pick, &[t, w])?);
        let h = tape.reshape(h, &[b, w, n * f])?;
        let frames = tape.matmul(pick, h, Spec::NN)?; // [B, T, N·F]
        tape.reshape(frames, &[b, t, n, f])
    }

    /// The PSTA encoder (docs/model.md, Forward).
    fn encode_psta(
        &self,
        tape: &mut Tape,
        x: &Tensor,
        valid: &Tensor,
        dropout: Option<Dropout>,
    ) -> Result<Encoded> {
        let EncoderLayers::Psta {
            static_gcn,
            dynamic,
            fusion_alpha,
            readout,
            calib,
            agg,
        } = &self.layers.encoder
        else {
            unreachable!("encode dispatches on the layers' encoder");
        };
        let gpu = tape.gpu;
        let (b, n, t) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let m = &self.cfg;
        let (f, dw) = (m.node_channels, m.width);
        // Stage labels name the dispatches in a profile (`train::profile`).
        gpu.set_stage("static graph");
        let xv = tape.input(x.clone());
        let xt = tape.transpose(xv)?; // [B, T, N]

        // Static branch: Ledoit–Wolf partial correlation → normalized |P| (no gradient).
        let (a_static, partial) = self.static_adjacency(tape, x)?;
        let profiles = self.node_profiles(tape, x, partial)?;
        let z_s = match profiles {
            None => self.gcn(tape, static_gcn, a_static, xt, t.max(1))?,
            Some(r) => self.gcn_on_profiles(tape, static_gcn, a_static, r, t, t.max(1))?,
        };

        // Dynamic branch: per-window adaptive adjacency softmax(ReLU(E Eᵀ)/√d).
        gpu.set_stage("dynamic graph");
        let (l, s, e) = (m.window, m.stride, m.embed_dim);
        let w = window::window_count(t, l, s)?;
        let xw = tape.input(window::unfold(gpu, x, l, s)?); // [B, W, N, L]
        let emb = self.linear(tape, &dynamic.window_proj, xw)?; // [B, W, N, d]
        let emb = tape.reshape(emb, &[b * w, n * e])?;
        let node = self.param(tape, dynamic.node_embedding);
        let node = tape.reshape(node, &[n * e])?;
        let emb = tape.bias_add(emb, node)?;
        let emb = tape.reshape(emb, &[b * w, n, e])?;
        let sim = tape.matmul(emb, emb, Spec::NT)?;
        let sim = tape.relu(sim)?;
        let a_dyn = tape.softmax(sim, 1.0 / (e as f32).sqrt())?;
        let a_dyn = tape.reshape(a_dyn, &[b, w, n, n])?;
        let z_d = match profiles {
            None => self.gcn(tape, &dynamic.gcn, a_dyn, xt, s)?,
            Some(r) => self.gcn_on_profiles(tape, &dynamic.gcn, a_dyn, r, t, s)?,
        };

        // Fusion (eq. 1): β = softmax(−α), Z = β₀Z_s + β₁Z_d.
        gpu.set_stage("fusion");
        let alpha = self.param(tape, *fusion_alpha);
        let alpha = tape.reshape(alpha, &[1, 2])?;
        let beta = tape.softmax(alpha, -1.0)?;
        let beta = tape.reshape(beta, &[2])?;
        let zs = tape.mul_scalar(z_s, beta, 0)?;
        let zd = tape.mul_scalar(z_d, beta, 1)?;
        let z_fused = tape.add(zs, zd)?; // [B, T, N, F]
                                         // The scaled branches feed only the sum (mul_scalar's backward reads
                                         // its input, add's nothing): two [B, T, N, F] tensors freed.
        tape.release(zs);
        tape.release(zd);
        let z = tape.reshape(z_fused, &[b, t, n * f])?;
        let z_sp = self.readout(tape, readout, z, dropout)?; // [B, T, D]
        let z_sp = tape.transpose(z_sp)?; // [B, D, T]

        // Continuous brain-state calibration (eq. 2).
        gpu.set_stage("calibration");
        let gram = tape.matmul(z_sp, z_sp, Spec::TN)?; // [B, T, T]
        let ccm = tape.softmax(gram, 1.0 / (dw as f32).sqrt())?;
        let store = self.store();
        let (qw, qb) = calib.q.vars(tape, store);
        let (kw, kb) = calib.k.vars(tape, store);
        let qm = tape.conv1d(z_sp, qw, qb)?;
        let km = tape.conv1d(z_sp, kw, kb)?;
        let qk = tape.matmul(qm, km, Spec::TN)?;
        let taw = tape.softmax(qk, 1.0 / (m.qk_dim as f32).sqrt())?;
        let (mix, mix_b) = calib.mix.vars(tape, store);
        let c0 = tape.mul_scalar(ccm, mix, 0)?;
        let c1 = tape.mul_scalar(taw, mix, 1)?;
        let mixed = tape.add(c0, c1)?;
        let mixed = tape.add_scalar(mixed, mix_b, 0)?;
        let cam = tape.softmax(mixed, 1.0)?;
        let v = calib.v.conv1d(tape, store, z_sp)?;
        let o = tape.matmul(v, cam, Spec::NT)?; // O[:, t] = Σ_s V[:, s] CAM[t, s]
        let out = calib.out.conv1d(tape, store, o)?;
        let z_temporal = match m.residual {
            Residual::Spatial => tape.add(out, z_sp)?,
            Residual::Input => out,
        };

        // Progressive temporal aggregation.
        gpu.set_stage("aggregation");
        let h = tape.transpose(z_temporal)?; // [B, T, D]
        let (z_st, frame_weights, segment_weights) = self.aggregate(tape, agg, h, valid)?;
        Ok(Encoded {
            z_fused,
            z_temporal,
            z_st,
            frame_weights,
            segment_weights,
        })
    }

    /// Progressive temporal aggregation (docs/model.md step 6) of h [B, T, D]
    /// → Z_st [B, D] (with `norm.out` when `norm = layer`), frame and segment weights.
    fn aggregate(
        &self,
        tape: &mut Tape,
        agg: &Aggregation,
        h: Var,
        valid: &Tensor,
    ) -> Result<(Var, Tensor, Tensor)> {
        let gpu = tape.gpu;
        let m = &self.cfg;
        let dw = m.width;
        let (b, t) = (tape.shape(h)[0], tape.shape(h)[1]);
        let e1 = self.linear(tape, &agg.w1, h)?;
        let e1 = tape.tanh(e1)?;
        let e1 = tape.reshape(e1, &[b * t, dw])?;
        let v1 = self.param(tape, agg.v1);
        let v1 = tape.reshape(v1, &[dw, 1])?;
        let scores = tape.matmul(e1, v1, Spec::NN)?;
        let scores = tape.reshape(scores, &[b, t])?;
        let (g, frame_weights) = tape.segment_pool(h, scores, valid, m.segment)?; // [B, K, D]
        let k = tape.shape(g)[1];
        let u = self.linear(tape, &agg.w2, g)?;
        let u = tape.tanh(u)?;
        let u = tape.reshape(u, &[b * k, dw])?;
        let v2 = self.param(tape, agg.v2);
        let v2 = tape.reshape(v2, &[dw, 1])?;
        let seg_scores = tape.matmul(u, v2, Spec::NN)?;
        let seg_scores = tape.reshape(seg_scores, &[b, k])?;
        let seg_valid = segment_pool::segment_valid(gpu, valid, m.segment)?;
        let (z_st, segment_weights) = tape.segment_pool(g, seg_scores, &seg_valid, k)?; // [B, 1, D]
        let z_st = tape.reshape(z_st, &[b, dw])?;
        let z_st = self.out_norm(tape, z_st)?;
        Ok((z_st, frame_weights, segment_weights))
    }

    /// Mean of h [B, T, D] over each scan's valid frames → Z_st [B, D] (with
    /// `norm.out` when `norm = layer`), as segment pooling with zero scores
    /// and one segment of T frames: uniform weights over the valid frames.
    fn mean_readout(
        &self,
        tape: &mut Tape,
        h: Var,
        valid: &Tensor,
    ) -> Result<(Var, Tensor, Tensor)> {
        let gpu = tape.gpu;
        let (b, t, dw) = (tape.shape(h)[0], tape.shape(h)[1], tape.shape(h)[2]);
        let scores = tape.input(gpu.zeros(&[b, t])?);
        let (z, frame_weights) = tape.segment_pool(h, scores, valid, t.max(1))?; // [B, 1, D]
        let z_st = tape.reshape(z, &[b, dw])?;
        let z_st = self.out_norm(tape, z_st)?;
        Ok((z_st, frame_weights, gpu.full(&[b, 1], 1.0)?))
    }

    /// `norm.out` on Z_st when `norm = layer`.
    fn out_norm(&self, tape: &mut Tape, z_st: Var) -> Result<Var> {
        match &self.layers.out_norm {
            Some(norm) => norm.layer_norm(tape, self.store(), z_st),
            None => Ok(z_st),
        }
    }

    /// fusion.proj of z [B, T, N·F] → [B, T, D] (with `norm.fusion` when
    /// `norm = layer`), after `dropout` when a fine-tuning step asks for it.
    fn readout(
        &self,
        tape: &mut Tape,
        readout: &Readout,
        z: Var,
        dropout: Option<Dropout>,
    ) -> Result<Var> {
        let z = match dropout {
            Some(d) => {
                let s = tape.shape(z).to_vec();
                let mask = feature_dropout_mask(tape.gpu, s[0], s[2], d)?;
                tape.mul_constant_broadcast(z, &mask, s[2], s[1])?
            }
            None => z,
        };
        let z_sp = self.linear(tape, &readout.proj, z)?;
        match &readout.norm {
            Some(norm) => norm.layer_norm(tape, self.store(), z_sp),
            None => Ok(z_sp),
        }
    }

    /// Node features [B, T, N, F] → the per-frame readout fusion.proj [B, T, D]
    /// (with `norm.fusion` when `norm = layer`).
    fn frame_readout(
        &self,
        tape: &mut Tape,
        readout: &Readout,
        z: Var,
        dropout: Option<Dropout>,
    ) -> Result<Var> {
        let s = tape.shape(z).to_vec();
        let z = tape.reshape(z, &[s[0], s[1], s[2] * s[3]])?;
        self.readout(tape, readout, z, dropout)
    }

    /// Ablation `gcn-only`: the static GCN branch alone (no dynamic graph, no
    /// calibration, no aggregation): Z_s [B, T, N, F] → per-frame readout
    /// fusion.proj [B, T, D] → mean over valid frames → Z_st.
    fn encode_gcn_only(
        &self,
        tape: &mut Tape,
        static_gcn: &Gcn,
        readout: &Readout,
        x: &Tensor,
        valid: &Tensor,
        dropout: Option<Dropout>,
    ) -> Result<Encoded> {
        let t = x.shape()[2];
        let xv = tape.input(x.clone());
        let xt = tape.transpose(xv)?; // [B, T, N]
        let (a_static, partial) = self.static_adjacency(tape, x)?;
        // With connectivity profiles the static features are the same at
        // every frame, and the mean over frames returns them: Z_st is the
        // readout of the two GCN layers on the profiles.
        let z_s = match self.node_profiles(tape, x, partial)? {
            None => self.gcn(tape, static_gcn, a_static, xt, t.max(1))?,
            Some(r) => self.gcn_on_profiles(tape, static_gcn, a_static, r, t, t.max(1))?,
        };
        let z_sp = self.frame_readout(tape, readout, z_s, dropout)?; // [B, T, D]
        let (z_st, frame_weights, segment_weights) = self.mean_readout(tape, z_sp, valid)?;
        let z_temporal = tape.transpose(z_sp)?;
        Ok(Encoded {
            z_fused: z_s,
            z_temporal,
            z_st,
            frame_weights,
            segment_weights,
        })
    }

    /// Ablation `lstm`: the per-frame region vector x[:, t] ∈ ℝᴺ through a
    /// one-layer LSTM with hidden size D (zero initial state; padded frames
    /// are zero inputs at the end of the sequence), then the same progressive
    /// aggregation as PSTA (padded frames excluded there).
    fn encode_lstm(
        &self,
        tape: &mut Tape,
        lstm: &layers::LstmWeights,
        agg: &Aggregation,
        x: &Tensor,
        valid: &Tensor,
    ) -> Result<Encoded> {
        let (b, n, t) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let xv = tape.input(x.clone());
        let xt = tape.transpose(xv)?; // [B, T, N]
        let (wi, wh, bi, bh) = (
            self.param(tape, lstm.w_ih),
            self.param(tape, lstm.w_hh),
            self.param(tape, lstm.b_ih),
            self.param(tape, lstm.b_hh),
        );
        let hs = tape.lstm(xt, wi, wh, bi, bh)?; // [B, T, D]
        let (z_st, frame_weights, segment_weights) = self.aggregate(tape, agg, hs, valid)?;
        let z_temporal = tape.transpose(hs)?;
        let z_fused = tape.reshape(xt, &[b, t, n, 1])?;
        Ok(Encoded {
            z_fused,
            z_temporal,
            z_st,
            frame_weights,
            segment_weights,
        })
    }

    /// Ablation `stgcn-style`: two ST-GCN-like blocks on the static graph,
    /// each a spatial graph convolution `ReLU(Â H W + b)` (static.gcn1/2)
    /// followed by a temporal convolution per node and channel group,
    /// `ReLU(conv1d_k3(H) + b)` over time (stgcn.tcn1/2, F → F, zero pad 1);
    /// then the per-frame readout fusion.proj and the mean over valid frames.
    /// (No residual connections or BatchNorm inside the blocks: kept as
    /// small as the other ablations.)
    #[allow(clippy::too_many_arguments)]
    fn encode_stgcn(
        &self,
        tape: &mut Tape,
        static_gcn: &Gcn,
        tcn: &[WeightBias; 2],
        readout: &Readout,
        x: &Tensor,
        valid: &Tensor,
        dropout: Option<Dropout>,
    ) -> Result<Encoded> {
        let (b, n, t) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let f = self.cfg.node_channels;
        let xv = tape.input(x.clone());
        let xt = tape.transpose(xv)?; // [B, T, N]
        let (a_static, _) = self.static_adjacency(tape, x)?;
        let mut h = xt;
        for (i, (layer, tcn)) in static_gcn.layers.iter().zip(tcn).enumerate() {
            let z = if i == 0 {
                self.lifted_first_layer(tape, static_gcn, a_static, xt, t.max(1))?
            } else {
                let ah = tape.graph_conv(a_static, h, t.max(1))?;
                self.linear(tape, layer, ah)?
            };
            h = tape.relu(z)?; // [B, T, N, F]
            tape.release(z);
            let hn = tape.swap_axes(h, 1)?; // [B, N, T, F]
            let hn = tape.reshape(hn, &[b * n, t, f])?;
            let hn = tape.transpose(hn)?; // [B·N, F, T]
            let c = tcn.conv1d(tape, self.store(), hn)?;
            let c = tape.relu(c)?;
            let c = tape.transpose(c)?; // [B·N, T, F]
            let c = tape.reshape(c, &[b, n, t, f])?;
            h = tape.swap_axes(c, 1)?; // [B, T, N, F]
        }
        let z_sp = self.frame_readout(tape, readout, h, dropout)?; // [B, T, D]
        let (z_st, frame_weights, segment_weights) = self.mean_readout(tape, z_sp, valid)?;
        let z_temporal = tape.transpose(z_sp)?;
        Ok(Encoded {
            z_fused: h,
            z_temporal,
            z_st,
            frame_weights,
            segment_weights,
        })
    }

    /// Per-region importance: the L2 norm of the learned fusion weights that
    /// carry each region's F channels into Z_spatial. `fusion.proj.weight` is
    /// [N·F, D] with row n·F + f for region n, channel f (the node features
    /// [B, T, N, F] are flattened region-major), so region n owns rows
    /// n·F .. (n+1)·F. None for the `lstm` encoder (no fusion projection).
    pub fn region_importance(&self, gpu: &crate::gpu::Gpu) -> Result<Option<Vec<f64>>> {
        let Some(proj) = self.layers.fusion_proj() else {
            return Ok(None);
        };
        let w = gpu.read(&self.params.store.get(proj.weight).value)?;
        let (n, f) = (self.dims.n_regions, self.cfg.node_channels);
        let cols = w.len() / (n * f).max(1);
        let norms = (0..n)
            .map(|r| {
                w[r * f * cols..(r + 1) * f * cols]
                    .iter()
                    .map(|&v| (v as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        Ok(Some(norms))
    }

    /// Logits [B, C] from Z_st in evaluation mode: with `head_norm =
    /// "batch"`, Z_st is standardized with the running statistics, so a
    /// scan's logits do not depend on the other scans of its batch. (No
    /// gradient flows through that standardization: evaluation is never
    /// trained through.)
    pub fn head(&self, tape: &mut Tape, z_st: Var) -> Result<Var> {
        let z = match self.head_norm_running()? {
            Some(running) => {
                let y = batchnorm::forward_running(tape.gpu, tape.value(z_st), running)?;
                tape.input(y)
            }
            None => z_st,
        };
        self.linear(tape, &self.layers.head, z)
    }

    /// Logits [B, C] from Z_st in training mode: with `head_norm = "batch"`,
    /// Z_st standardized with the batch's statistics (differentiable), and
    /// the running statistics updated from this batch (recorded now, in
    /// program order, so a step's update lands before the next step reads).
    pub fn head_train(&self, tape: &mut Tape, z_st: Var) -> Result<Var> {
        let z = match self.head_norm_running()? {
            Some(running) => {
                batchnorm::update_running(tape.gpu, tape.value(z_st), running)?;
                tape.batchnorm_plain(z_st)?
            }
            None => z_st,
        };
        self.linear(tape, &self.layers.head, z)
    }

    /// Replaces the head BatchNorm's running statistics with `mean` and
    /// `var` [D] (`head_norm = "batch-precise"`, recomputed by the trainer).
    pub fn set_head_norm_statistics(
        &self,
        gpu: &crate::gpu::Gpu,
        mean: &[f32],
        var: &[f32],
    ) -> Result<()> {
        let Some(running) = self.head_norm_running()? else {
            return Err(GpuError::Shape {
                op: "set_head_norm_statistics",
                message: format!(
                    "model.head_norm = {:?} keeps no statistics to set",
                    self.cfg.head_norm
                ),
            });
        };
        gpu.write(running.mean, mean)?;
        gpu.write(running.var, var)
    }

    /// The head BatchNorm's running statistics (`head_norm = "batch"` or
    /// `"batch-precise"`).
    fn head_norm_running(&self) -> Result<Option<Running<'_>>> {
        Ok(match self.cfg.head_norm {
            HeadNorm::None => None,
            HeadNorm::Batch | HeadNorm::BatchPrecise => Some(Running {
                mean: self.params.buffer(params::HEAD_NORM_MEAN)?,
                var: self.params.buffer(params::HEAD_NORM_VAR)?,
            }),
        })
    }

    /// Projector fc2(ReLU(BN(fc1(Z_st)))) [B, J].
    fn project(&self, tape: &mut Tape, z_st: Var) -> Result<Var> {
        let projector = &self.layers.projector;
        let h = self.linear(tape, &projector.fc1, z_st)?;
        let (g, bta) = projector.bn.vars(tape, self.store());
        let h = tape.batchnorm(h, g, bta)?;
        let h = tape.relu(h)?;
        self.linear(tape, &projector.fc2, h)
    }

    /// FGCO pretraining loss (eq. 3) from the original view and the SCA and
    /// TCA views (all [B, N, T]); `lambda_offdiag` is the Barlow Twins
    /// off-diagonal weight λ (`pretrain.lambda_offdiag`, 0.0051 in the paper).
    #[allow(clippy::too_many_arguments)]
    pub fn pretrain_loss(
        &self,
        tape: &mut Tape,
        x: &Tensor,
        x_s: &Tensor,
        x_t: &Tensor,
        valid: &Tensor,
        fgco: Fgco,
        lambda_offdiag: f32,
    ) -> Result<Var> {
        self.pretrain_loss_sharded(tape, x, x_s, x_t, valid, fgco, lambda_offdiag, &Single)
    }

    /// [`Model::pretrain_loss`] of a global batch whose scans are sharded
    /// over the ranks of `comm`, x being this rank's shard: the encoder runs
    /// on the shard, and what couples the scans of the batch (the
    /// projector's BatchNorm, Barlow Twins' batch standardization) runs on
    /// the rows all-gathered from every rank, so the loss is the global
    /// batch's (`crate::dist`).
    #[allow(clippy::too_many_arguments)]
    pub fn pretrain_loss_sharded(
        &self,
        tape: &mut Tape,
        x: &Tensor,
        x_s: &Tensor,
        x_t: &Tensor,
        valid: &Tensor,
        fgco: Fgco,
        lambda_offdiag: f32,
        comm: &dyn Collective,
    ) -> Result<Var> {
        let e0 = self.encode(tape, x, valid)?;
        let es = self.encode(tape, x_s, valid)?;
        let et = self.encode(tape, x_t, valid)?;
        tape.gpu.set_stage("loss");
        let gather = |tape: &mut Tape, v: Var, what: &str| {
            tape.all_gather_rows(v, comm, &format!("the all-gather of {what}"))
        };
        match fgco {
            Fgco::Global => {
                let z0 = gather(tape, e0.z_st, "Z_st (original view)")?;
                let zs = gather(tape, es.z_st, "Z_st (SCA view)")?;
                let zt = gather(tape, et.z_st, "Z_st (TCA view)")?;
                let p0 = self.project(tape, z0)?;
                let ps = self.project(tape, zs)?;
                let pt = self.project(tape, zt)?;
                let ls = tape.barlow(p0, ps, lambda_offdiag)?;
                let lt = tape.barlow(p0, pt, lambda_offdiag)?;
                tape.add(ls, lt)
            }
            Fgco::Fine => {
                if self.cfg.encoder == Encoder::Lstm {
                    return Err(GpuError::Shape {
                        op: "pretrain_loss",
                        message: "FGCO `fine` needs region embeddings, which the `lstm` encoder \
                                  does not have; use `fgco = \"global\"` with it"
                            .into(),
                    });
                }
                // [B·F, N] and [B·D, T], rows b-major: gathering the rows
                // of the ranks in rank order is the global batch's layout.
                let r0 = self.roi_embedding(tape, e0.z_fused)?;
                let r0 = gather(tape, r0, "the region embedding (original view)")?;
                let rs = self.roi_embedding(tape, es.z_fused)?;
                let rs = gather(tape, rs, "the region embedding (SCA view)")?;
                let ls = tape.barlow(r0, rs, lambda_offdiag)?;
                let u0 = self.frame_embedding(tape, e0.z_temporal)?;
                let u0 = gather(tape, u0, "the frame embedding (original view)")?;
                let ut = self.frame_embedding(tape, et.z_temporal)?;
                let ut = gather(tape, ut, "the frame embedding (TCA view)")?;
                let lt = tape.barlow(u0, ut, lambda_offdiag)?;
                tape.add(ls, lt)
            }
        }
    }

    /// The parameters whose gradient every rank computes whole under data
    /// parallelism, because they act after the all-gather (the projector,
    /// for `fgco = "global"`); the others' gradients are summed over ranks.
    pub fn replicated_under_data_parallel(fgco: Fgco, name: &str) -> bool {
        fgco == Fgco::Global && name.starts_with("proj.")
    }

    /// R = mean over t of the fused Z, as [B·F, N] (samples (b, f), features = regions).
    fn roi_embedding(&self, tape: &mut Tape, z_fused: Var) -> Result<Var> {
        let s = tape.shape(z_fused).to_vec();
        let (b, n, f) = (s[0], s[2], s[3]);
        let r = tape.mean(z_fused, 1)?; // [B, N, F]
        let r = tape.transpose(r)?; // [B, F, N]
        tape.reshape(r, &[b * f, n])
    }

    /// U = Z_temporal as [B·D, T] (samples (b, d), features = frames).
    fn frame_embedding(&self, tape: &mut Tape, z_temporal: Var) -> Result<Var> {
        let s = tape.shape(z_temporal).to_vec();
        tape.reshape(z_temporal, &[s[0] * s[1], s[2]])
    }

    /// Fine-tuning loss (training mode: see [`Model::head_train`], and
    /// `dropout` on the readout's input): mean cross-entropy of the head's
    /// logits; also returns the logits.
    pub fn finetune_loss(
        &self,
        tape: &mut Tape,
        x: &Tensor,
        valid: &Tensor,
        labels: &Tensor,
        dropout: Option<Dropout>,
    ) -> Result<(Var, Var)> {
        let enc = self.encode_with(tape, x, valid, dropout)?;
        tape.gpu.set_stage("loss");
        let logits = self.head_train(tape, enc.z_st)?;
        let y = tape.input(labels.clone());
        Ok((tape.cross_entropy(logits, y)?, logits))
    }
}
