//! The model's parameters: names, shapes and initialization (docs/model.md),
//! and conversion to and from named host tensors (safetensors).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};

use crate::autograd::{ParamId, ParamStore};
use crate::config::{Encoder, HeadNorm, ModelConfig, NodeFeatures, Norm, ProfileNorm};
use crate::gpu::{Gpu, GpuError, Result, Tensor};

/// Sizes that come from the data rather than the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataDims {
    pub n_regions: usize,
    pub n_classes: usize,
}

/// How a parameter is initialized.
#[derive(Clone, Copy, Debug)]
enum Init {
    /// Xavier-uniform with the given fan-in and fan-out.
    Xavier {
        fan_in: usize,
        fan_out: usize,
    },
    /// N(0, variance).
    Normal {
        variance: f64,
    },
    Constant(f32),
    /// U(−bound, bound) (PyTorch's LSTM initialization, bound 1/√H).
    Uniform {
        bound: f64,
    },
}

/// (name, shape, init) of every parameter, in store order. The PSTA layout
/// is fixed (the parity fixtures depend on it); the ablation encoders have
/// their own (see [`ablation_layout`]).
fn layout(m: &ModelConfig, d: DataDims) -> Vec<(String, Vec<usize>, Init)> {
    if m.encoder != Encoder::Psta {
        return ablation_layout(m, d);
    }
    let (f, dw, e, q, j) = (m.node_channels, m.width, m.embed_dim, m.qk_dim, m.proj_dim);
    let (n, c, l) = (d.n_regions, d.n_classes, m.window);
    let x = |fan_in, fan_out| Init::Xavier { fan_in, fan_out };
    let zero = Init::Constant(0.0);
    let mut v: Vec<(String, Vec<usize>, Init)> = Vec::new();
    // The lift's input: one value per node (its BOLD value at a frame) or
    // its connectivity profile, N values.
    let lift_in = match m.node_features {
        NodeFeatures::Series => 1,
        NodeFeatures::Pearson | NodeFeatures::Partial => n,
    };
    for branch in ["static", "dynamic"] {
        v.push((
            format!("{branch}.lift.weight"),
            vec![lift_in, f],
            x(lift_in, f),
        ));
        v.push((format!("{branch}.lift.bias"), vec![f], zero));
        for layer in ["gcn1", "gcn2"] {
            v.push((format!("{branch}.{layer}.weight"), vec![f, f], x(f, f)));
            v.push((format!("{branch}.{layer}.bias"), vec![f], zero));
        }
    }
    v.push(("dynamic.window_proj.weight".into(), vec![l, e], x(l, e)));
    v.push((
        "dynamic.node_embedding".into(),
        vec![n, e],
        Init::Normal {
            variance: 1.0 / e as f64,
        },
    ));
    v.push(("fusion.alpha".into(), vec![2], zero));
    v.push(("fusion.proj.weight".into(), vec![n * f, dw], x(n * f, dw)));
    v.push(("fusion.proj.bias".into(), vec![dw], zero));
    for (name, out) in [("q", q), ("k", q), ("v", dw)] {
        v.push((
            format!("calib.{name}.weight"),
            vec![out, dw, 3],
            x(dw * 3, out * 3),
        ));
        v.push((format!("calib.{name}.bias"), vec![out], zero));
    }
    v.push(("calib.mix.weight".into(), vec![2], x(2, 1)));
    v.push(("calib.mix.bias".into(), vec![1], zero));
    v.push(("calib.out.weight".into(), vec![dw, dw, 1], x(dw, dw)));
    v.push(("calib.out.bias".into(), vec![dw], zero));
    v.push(("agg.w1".into(), vec![dw, dw], x(dw, dw)));
    v.push(("agg.v1".into(), vec![dw], x(dw, 1)));
    v.push(("agg.w2".into(), vec![dw, dw], x(dw, dw)));
    v.push(("agg.v2".into(), vec![dw], x(dw, 1)));
    v.push(("proj.fc1.weight".into(), vec![dw, j], x(dw, j)));
    v.push(("proj.fc1.bias".into(), vec![j], zero));
    v.push(("proj.bn.weight".into(), vec![j], Init::Constant(1.0)));
    v.push(("proj.bn.bias".into(), vec![j], zero));
    v.push(("proj.fc2.weight".into(), vec![j, j], x(j, j)));
    v.push(("proj.fc2.bias".into(), vec![j], zero));
    v.push(("head.weight".into(), vec![dw, c], x(dw, c)));
    v.push(("head.bias".into(), vec![c], zero));
    if m.norm == Norm::Layer {
        for place in ["fusion", "out"] {
            v.push((
                format!("norm.{place}.weight"),
                vec![dw],
                Init::Constant(1.0),
            ));
            v.push((format!("norm.{place}.bias"), vec![dw], zero));
        }
    }
    v
}

/// Every parameter's name and shape, in store order: the layout without its
/// initializations, for `model::sizes`, which checks them before anything
/// is allocated.
pub(crate) fn shapes(m: &ModelConfig, d: DataDims) -> Vec<(String, Vec<usize>)> {
    layout(m, d)
        .into_iter()
        .map(|(name, shape, _)| (name, shape))
        .collect()
}

/// The projector, the head and the LayerNorms (shared by every encoder;
/// `fusion_norm`: whether the encoder has a D-wide per-frame stage for
/// `norm.fusion`).
fn common_tail(
    m: &ModelConfig,
    d: DataDims,
    fusion_norm: bool,
    v: &mut Vec<(String, Vec<usize>, Init)>,
) {
    let (dw, j, c) = (m.width, m.proj_dim, d.n_classes);
    let x = |fan_in, fan_out| Init::Xavier { fan_in, fan_out };
    let zero = Init::Constant(0.0);
    v.push(("proj.fc1.weight".into(), vec![dw, j], x(dw, j)));
    v.push(("proj.fc1.bias".into(), vec![j], zero));
    v.push(("proj.bn.weight".into(), vec![j], Init::Constant(1.0)));
    v.push(("proj.bn.bias".into(), vec![j], zero));
    v.push(("proj.fc2.weight".into(), vec![j, j], x(j, j)));
    v.push(("proj.fc2.bias".into(), vec![j], zero));
    v.push(("head.weight".into(), vec![dw, c], x(dw, c)));
    v.push(("head.bias".into(), vec![c], zero));
    if m.norm == Norm::Layer {
        let places: &[&str] = if fusion_norm {
            &["fusion", "out"]
        } else {
            &["out"]
        };
        for place in places {
            v.push((
                format!("norm.{place}.weight"),
                vec![dw],
                Init::Constant(1.0),
            ));
            v.push((format!("norm.{place}.bias"), vec![dw], zero));
        }
    }
}

/// Parameters of the ablation encoders (docs/model.md, "Ablation encoders"):
/// - `gcn-only`: `static.*` GCN, `fusion.proj.*` readout;
/// - `lstm`: `lstm.w_ih` [4D, N], `lstm.w_hh` [4D, D], `lstm.b_ih`,
///   `lstm.b_hh` [4D] (U(±1/√D), as PyTorch), then the `agg.*` aggregation;
/// - `stgcn-style`: `static.*` GCN, temporal convolutions `stgcn.tcn1.*`,
///   `stgcn.tcn2.*` ([F, F, 3], [F]), `fusion.proj.*` readout;
///
/// each followed by `proj.*`, `head.*` and, with `norm = layer`, the norms.
fn ablation_layout(m: &ModelConfig, d: DataDims) -> Vec<(String, Vec<usize>, Init)> {
    let (f, dw, n) = (m.node_channels, m.width, d.n_regions);
    let x = |fan_in, fan_out| Init::Xavier { fan_in, fan_out };
    let zero = Init::Constant(0.0);
    let mut v: Vec<(String, Vec<usize>, Init)> = Vec::new();
    // As PSTA's: connectivity profiles (N values per node) where the config
    // allows them (`gcn-only`), else the BOLD value per frame.
    let lift_in = match m.node_features {
        NodeFeatures::Series => 1,
        NodeFeatures::Pearson | NodeFeatures::Partial => n,
    };
    let static_gcn = |v: &mut Vec<(String, Vec<usize>, Init)>| {
        v.push(("static.lift.weight".into(), vec![lift_in, f], x(lift_in, f)));
        v.push(("static.lift.bias".into(), vec![f], zero));
        for layer in ["gcn1", "gcn2"] {
            v.push((format!("static.{layer}.weight"), vec![f, f], x(f, f)));
            v.push((format!("static.{layer}.bias"), vec![f], zero));
        }
    };
    let readout = |v: &mut Vec<(String, Vec<usize>, Init)>| {
        v.push(("fusion.proj.weight".into(), vec![n * f, dw], x(n * f, dw)));
        v.push(("fusion.proj.bias".into(), vec![dw], zero));
    };
    match m.encoder {
        Encoder::GcnOnly => {
            static_gcn(&mut v);
            readout(&mut v);
            common_tail(m, d, true, &mut v);
        }
        Encoder::StgcnStyle => {
            static_gcn(&mut v);
            for block in ["tcn1", "tcn2"] {
                v.push((
                    format!("stgcn.{block}.weight"),
                    vec![f, f, 3],
                    x(f * 3, f * 3),
                ));
                v.push((format!("stgcn.{block}.bias"), vec![f], zero));
            }
            readout(&mut v);
            common_tail(m, d, true, &mut v);
        }
        Encoder::Lstm => {
            let u = Init::Uniform {
                bound: 1.0 / (dw as f64).sqrt(),
            };
            v.push(("lstm.w_ih".into(), vec![4 * dw, n], u));
            v.push(("lstm.w_hh".into(), vec![4 * dw, dw], u));
            v.push(("lstm.b_ih".into(), vec![4 * dw], u));
            v.push(("lstm.b_hh".into(), vec![4 * dw], u));
            v.push(("agg.w1".into(), vec![dw, dw], x(dw, dw)));
            v.push(("agg.v1".into(), vec![dw], x(dw, 1)));
            v.push(("agg.w2".into(), vec![dw, dw], x(dw, dw)));
            v.push(("agg.v2".into(), vec![dw], x(dw, 1)));
            common_tail(m, d, false, &mut v);
        }
        Encoder::Psta => unreachable!("the PSTA layout is built by `layout`"),
    }
    v
}

/// The running mean of the head's BatchNorm (`model.head_norm = "batch"`).
pub const HEAD_NORM_MEAN: &str = "head_norm.running_mean";
/// The running variance of the head's BatchNorm.
pub const HEAD_NORM_VAR: &str = "head_norm.running_var";

/// The shift of the connectivity profiles, −mean per edge [N, N]
/// (`model.profile_norm`).
pub const PROFILE_NORM_SHIFT: &str = "profile_norm.shift";
/// The scale of the shifted profiles per edge [N, N]: 1 / std, or 1 for
/// `center`.
pub const PROFILE_NORM_SCALE: &str = "profile_norm.scale";

/// Whether a weights tensor is a buffer (model state that is not a
/// parameter: no gradient, no optimizer moments), by its name.
pub fn is_buffer_name(name: &str) -> bool {
    is_head_norm_buffer(name) || name == PROFILE_NORM_SHIFT || name == PROFILE_NORM_SCALE
}

fn is_head_norm_buffer(name: &str) -> bool {
    name == HEAD_NORM_MEAN || name == HEAD_NORM_VAR
}

/// (name, shape, initial value) of the model's state that is not a
/// parameter, saved with the weights and never touched by the optimizer:
/// the head BatchNorm's statistics (updated by the forward pass in
/// training) and the profile normalization's (set once, before the first
/// phase that trains the model; the initial shift 0 and scale 1 mean "not
/// set yet"). Drawn from no random number, so the parameters'
/// initialization does not depend on it.
fn buffer_layout(m: &ModelConfig, d: DataDims) -> Vec<(String, Vec<usize>, f32)> {
    let mut out = head_norm_buffers(m);
    if m.profile_norm != ProfileNorm::None {
        let n = d.n_regions;
        out.push((PROFILE_NORM_SHIFT.into(), vec![n, n], 0.0));
        out.push((PROFILE_NORM_SCALE.into(), vec![n, n], 1.0));
    }
    out
}

fn head_norm_buffers(m: &ModelConfig) -> Vec<(String, Vec<usize>, f32)> {
    match m.head_norm {
        HeadNorm::None => Vec::new(),
        // PyTorch's initial running statistics: mean 0, variance 1.
        HeadNorm::Batch | HeadNorm::BatchPrecise => vec![
            (HEAD_NORM_MEAN.into(), vec![m.width], 0.0),
            (HEAD_NORM_VAR.into(), vec![m.width], 1.0),
        ],
    }
}

/// `tensors` plus every head-norm buffer the config has that they lack, at
/// its initial value. For fine-tuning from a pretraining checkpoint only:
/// pretraining never updates the head's statistics (the head is not on its
/// path), so a checkpoint pretrained with another `model.head_norm` still
/// starts fine-tuning exactly where one pretrained with this config would.
/// Head-norm buffers of another `head_norm` than this config's are dropped
/// likewise. The profile normalization's statistics are not filled in: the
/// encoder was pretrained on profiles scaled by them (or not), so a
/// checkpoint that lacks what the config asks for, or holds what it does
/// not, is refused by [`Params::from_host`].
pub fn with_initial_buffers(m: &ModelConfig, tensors: &[HostTensor]) -> Vec<HostTensor> {
    let wanted = head_norm_buffers(m);
    let mut out: Vec<HostTensor> = tensors
        .iter()
        .filter(|t| !is_head_norm_buffer(&t.name) || wanted.iter().any(|w| w.0 == t.name))
        .cloned()
        .collect();
    for (name, shape, value) in wanted {
        if !out.iter().any(|t| t.name == name) {
            let len = shape.iter().product();
            out.push(HostTensor {
                name,
                shape,
                data: vec![value; len],
            });
        }
    }
    out
}

/// A host copy of one named f32 tensor, row-major: the one host-side
/// weights type (parameters, gradients, AdamW moments, checkpoint files,
/// parity fixtures).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor whose data length matches its shape.
    pub fn new(
        name: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<f32>,
    ) -> std::result::Result<Self, TensorFileError> {
        let name = name.into();
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(TensorFileError::Shape {
                name,
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(HostTensor { name, shape, data })
    }
}

/// Why a set of host tensors could not be encoded or decoded as safetensors.
/// Each variant's message stands alone; the underlying error, where there is
/// one, is the `source` (printed once by the caller's error chain).
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error("{path}: cannot read")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file (truncated or corrupt?)")]
    Corrupt {
        path: String,
        #[source]
        source: SafeTensorError,
    },
    #[error("{path}: tensor \"{name}\" is {dtype}; only F32 tensors are read")]
    Dtype {
        path: String,
        name: String,
        dtype: String,
    },
    #[error("tensor \"{name}\": shape {shape:?} holds {expected} values but {found} were given")]
    Shape {
        name: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("tensor \"{name}\" appears twice")]
    Duplicate { name: String },
    #[error("tensor \"{name}\" cannot be encoded as safetensors")]
    Encode {
        name: String,
        #[source]
        source: SafeTensorError,
    },
}

/// Free-form string metadata of a safetensors file (`__metadata__`).
pub type TensorFileMetadata = HashMap<String, String>;

/// Encodes f32 tensors as safetensors (readable by PyTorch and numpy). The
/// file lists tensors by name, so the bytes do not depend on their order.
pub fn encode_safetensors(
    tensors: &[HostTensor],
    metadata: Option<TensorFileMetadata>,
) -> std::result::Result<Vec<u8>, TensorFileError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = BTreeMap::new();
    for (t, data) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, t.shape.clone(), data).map_err(|source| {
            TensorFileError::Encode {
                name: t.name.clone(),
                source,
            }
        })?;
        if views.insert(t.name.clone(), view).is_some() {
            return Err(TensorFileError::Duplicate {
                name: t.name.clone(),
            });
        }
    }
    safetensors::serialize(views, metadata).map_err(|source| TensorFileError::Encode {
        name: tensors.first().map(|t| t.name.clone()).unwrap_or_default(),
        source,
    })
}

/// Decodes the safetensors bytes read from `path` (named in errors): the
/// tensors sorted by name, and the file's metadata.
pub fn decode_safetensors(
    path: &Path,
    bytes: &[u8],
) -> std::result::Result<(Vec<HostTensor>, TensorFileMetadata), TensorFileError> {
    let shown = || path.display().to_string();
    let corrupt = |source| TensorFileError::Corrupt {
        path: shown(),
        source,
    };
    let file = SafeTensors::deserialize(bytes).map_err(corrupt)?;
    let mut names: Vec<&str> = file.names();
    names.sort_unstable();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let view = file.tensor(name).map_err(corrupt)?;
        if view.dtype() != Dtype::F32 {
            return Err(TensorFileError::Dtype {
                path: shown(),
                name: name.to_string(),
                dtype: view.dtype().to_string(),
            });
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push(HostTensor::new(name, view.shape().to_vec(), data)?);
    }
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    Ok((tensors, metadata))
}

/// Reads a safetensors file of f32 tensors, sorted by name.
pub fn read_safetensors(path: &Path) -> std::result::Result<Vec<HostTensor>, TensorFileError> {
    let bytes = std::fs::read(path).map_err(|source| TensorFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(decode_safetensors(path, &bytes)?.0)
}

/// Why host tensors do not fit the parameters a config expects.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("the weights have no tensor `{name}` (the model needs it, shape {shape:?})")]
    Missing { name: String, shape: Vec<usize> },
    #[error("parameter `{name}` has shape {found:?}; the config expects {expected:?}")]
    WrongShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("unexpected parameter `{name}` (weights of a different model configuration?)")]
    Unexpected { name: String },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// One named state tensor that is not a parameter (see [`buffer_layout`]).
pub struct Buffer {
    pub name: String,
    pub value: Tensor,
}

/// The model's parameters on the GPU, addressable by name, and its
/// non-parameter state (`buffers`: outside the store, so the optimizer and
/// the gradients never see them).
pub struct Params {
    pub store: ParamStore,
    names: HashMap<String, ParamId>,
    pub buffers: Vec<Buffer>,
}

impl Params {
    /// Fresh parameters initialized from `seed` (the same seed gives the same weights).
    pub fn init(gpu: &Gpu, m: &ModelConfig, d: DataDims, seed: u64) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let tensors = layout(m, d)
            .into_iter()
            .map(|(name, shape, init)| {
                let len: usize = shape.iter().product();
                let data: Vec<f32> = match init {
                    Init::Xavier { fan_in, fan_out } => {
                        let bound = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                        (0..len).map(|_| rng.gen_range(-bound..bound)).collect()
                    }
                    Init::Normal { variance } => {
                        let normal = Normal::new(0.0, variance.sqrt()).expect("finite variance");
                        (0..len).map(|_| normal.sample(&mut rng) as f32).collect()
                    }
                    Init::Constant(c) => vec![c; len],
                    Init::Uniform { bound } => {
                        let bound = bound as f32;
                        (0..len).map(|_| rng.gen_range(-bound..bound)).collect()
                    }
                };
                HostTensor { name, shape, data }
            })
            .collect::<Vec<_>>();
        let buffers: Vec<HostTensor> = buffer_layout(m, d)
            .into_iter()
            .map(|(name, shape, value)| {
                let len = shape.iter().product();
                HostTensor {
                    name,
                    shape,
                    data: vec![value; len],
                }
            })
            .collect();
        Self::upload(gpu, &tensors, &buffers)
    }

    /// Loads parameters from host tensors, checking that every expected name
    /// is present with its expected shape (extra names are an error too).
    pub fn from_host(
        gpu: &Gpu,
        m: &ModelConfig,
        d: DataDims,
        tensors: &[HostTensor],
    ) -> std::result::Result<Self, ParamsError> {
        let buffer_names: Vec<String> = buffer_layout(m, d).into_iter().map(|b| b.0).collect();
        let expected: Vec<(String, Vec<usize>)> = layout(m, d)
            .into_iter()
            .map(|(name, shape, _)| (name, shape))
            .chain(buffer_layout(m, d).into_iter().map(|(n, s, _)| (n, s)))
            .collect();
        let mut ordered = Vec::with_capacity(expected.len());
        for (name, shape) in expected {
            let Some(t) = tensors.iter().find(|t| t.name == name) else {
                return Err(ParamsError::Missing { name, shape });
            };
            if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
                return Err(ParamsError::WrongShape {
                    name,
                    found: t.shape.clone(),
                    expected: shape,
                });
            }
            ordered.push(t.clone());
        }
        if let Some(extra) = tensors
            .iter()
            .find(|t| !ordered.iter().any(|o| o.name == t.name))
        {
            return Err(ParamsError::Unexpected {
                name: extra.name.clone(),
            });
        }
        let (buffers, params): (Vec<HostTensor>, Vec<HostTensor>) = ordered
            .into_iter()
            .partition(|t| buffer_names.contains(&t.name));
        Ok(Self::upload(gpu, &params, &buffers)?)
    }

    /// Uploads parameters already in layout order, and the buffers.
    fn upload(gpu: &Gpu, tensors: &[HostTensor], buffers: &[HostTensor]) -> Result<Self> {
        let mut store = ParamStore::default();
        let mut names = HashMap::new();
        for t in tensors {
            let id = store.add(gpu, &t.name, &t.data, &t.shape)?;
            names.insert(t.name.clone(), id);
        }
        let buffers = buffers
            .iter()
            .map(|t| {
                Ok(Buffer {
                    name: t.name.clone(),
                    value: gpu.upload(&t.data, &t.shape)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            store,
            names,
            buffers,
        })
    }

    /// The buffer named `name` (see [`buffer_layout`]).
    pub fn buffer(&self, name: &str) -> Result<&Tensor> {
        self.buffers
            .iter()
            .find(|b| b.name == name)
            .map(|b| &b.value)
            .ok_or_else(|| GpuError::UnknownParameter {
                name: name.to_string(),
            })
    }

    pub fn id(&self, name: &str) -> Result<ParamId> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| GpuError::UnknownParameter {
                name: name.to_string(),
            })
    }

    /// Downloads every parameter, then every buffer (the whole model state:
    /// checkpoints save it, [`Params::from_host`] restores it).
    pub fn to_host(&self, gpu: &Gpu) -> Result<Vec<HostTensor>> {
        let params = self.store.params.iter().map(|p| (&p.name, &p.value));
        let buffers = self.buffers.iter().map(|b| (&b.name, &b.value));
        params
            .chain(buffers)
            .map(|(name, value)| {
                Ok(HostTensor {
                    name: name.clone(),
                    shape: value.shape().to_vec(),
                    data: gpu.read(value)?,
                })
            })
            .collect()
    }

    /// Overwrites every parameter and buffer with `tensors` (as
    /// [`Params::to_host`] returned them, same model): how early stopping
    /// puts the best epoch's weights back.
    pub fn write_host(&self, gpu: &Gpu, tensors: &[HostTensor]) -> Result<()> {
        let params = self.store.params.iter().map(|p| (&p.name, &p.value));
        let buffers = self.buffers.iter().map(|b| (&b.name, &b.value));
        for (name, value) in params.chain(buffers) {
            let t = tensors
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| GpuError::UnknownParameter { name: name.clone() })?;
            gpu.write(value, &t.data)?;
        }
        Ok(())
    }

    /// Downloads every gradient.
    pub fn grads_to_host(&self, gpu: &Gpu) -> Result<Vec<HostTensor>> {
        self.store
            .params
            .iter()
            .map(|p| {
                Ok(HostTensor {
                    name: p.name.clone(),
                    shape: p.grad.shape().to_vec(),
                    data: gpu.read(&p.grad)?,
                })
            })
            .collect()
    }
}
