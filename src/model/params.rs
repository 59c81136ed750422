//! The model's parameters: names, shapes and initialization (docs/model.md),
//! and conversion to and from named host tensors (safetensors).

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::autograd::{ParamId, ParamStore};
use crate::config::{Encoder, ModelConfig, Norm};
use crate::gpu::{Gpu, GpuError, Result};

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
    for branch in ["static", "dynamic"] {
        v.push((format!("{branch}.lift.weight"), vec![1, f], x(1, f)));
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
    let static_gcn = |v: &mut Vec<(String, Vec<usize>, Init)>| {
        v.push(("static.lift.weight".into(), vec![1, f], x(1, f)));
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

/// A host copy of one named tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The model's parameters on the GPU, addressable by name.
pub struct Params {
    pub store: ParamStore,
    names: std::collections::HashMap<String, ParamId>,
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
        Self::from_host(gpu, m, d, &tensors)
    }

    /// Loads parameters from host tensors, checking that every expected name
    /// is present with its expected shape (extra names are an error too).
    pub fn from_host(
        gpu: &Gpu,
        m: &ModelConfig,
        d: DataDims,
        tensors: &[HostTensor],
    ) -> Result<Self> {
        let expected = layout(m, d);
        let mut store = ParamStore::default();
        let mut names = std::collections::HashMap::new();
        for (name, shape, _) in &expected {
            let t = tensors
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| GpuError::Shape {
                    op: "load parameters",
                    message: format!("parameter `{name}` {shape:?} is missing"),
                })?;
            if &t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
                return Err(GpuError::Shape {
                    op: "load parameters",
                    message: format!(
                        "parameter `{name}` has shape {:?}, the config expects {shape:?}",
                        t.shape
                    ),
                });
            }
            let id = store.add(gpu, name, &t.data, shape)?;
            names.insert(name.clone(), id);
        }
        if let Some(extra) = tensors.iter().find(|t| !names.contains_key(&t.name)) {
            return Err(GpuError::Shape {
                op: "load parameters",
                message: format!(
                    "unexpected parameter `{}` (a checkpoint of a different model configuration?)",
                    extra.name
                ),
            });
        }
        Ok(Self { store, names })
    }

    pub fn id(&self, name: &str) -> Result<ParamId> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| GpuError::Shape {
                op: "parameter lookup",
                message: format!("no parameter `{name}`"),
            })
    }

    /// Downloads every parameter (for checkpoints).
    pub fn to_host(&self, gpu: &Gpu) -> Result<Vec<HostTensor>> {
        self.store
            .params
            .iter()
            .map(|p| {
                Ok(HostTensor {
                    name: p.name.clone(),
                    shape: p.value.shape().to_vec(),
                    data: gpu.read(&p.value)?,
                })
            })
            .collect()
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

/// Reads a safetensors file of f32 tensors.
pub fn read_safetensors(path: &std::path::Path) -> std::result::Result<Vec<HostTensor>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{}: not a safetensors file ({e})", path.display()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!(
                "{}: tensor `{name}` is {:?}, expected F32",
                path.display(),
                view.dtype()
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.push(HostTensor {
            name,
            shape: view.shape().to_vec(),
            data,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes f32 tensors as safetensors (readable by PyTorch and numpy).
pub fn safetensors_bytes(tensors: &[HostTensor]) -> std::result::Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| format!("tensor `{}`: {e}", t.name))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}
