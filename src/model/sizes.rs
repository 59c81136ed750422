//! Sizes checked before anything is allocated (issue 10).
//!
//! An absurd config (`model.width = 100000`) would otherwise abort the
//! process on a failed host allocation, or fail deep inside a kernel launch.
//! [`check`] computes every parameter's element count from the layout
//! (`params::shapes`) and the largest activations of one batch with checked
//! u64 arithmetic, and refuses, naming the config keys whose lowering
//! shrinks the offending tensor:
//!
//! - any config size (or data dimension) above `u32::MAX`: the kernels
//!   index with 32-bit integers;
//! - a parameter above one storage binding: the kernels that use a weight
//!   bind it whole (matmul's B, the convolutions' weights), so it cannot run;
//! - an activation above the largest buffer: a tensor is one buffer, and the
//!   binding planner (`gpu::plan`) splits launches, never buffers. An
//!   activation between the binding and the buffer limits is left to the
//!   planner, which splits it or names the op that cannot;
//! - on a CPU adapter (whose buffers are host memory), parameters that with
//!   their gradients and two AdamW moments (4 copies) exceed `MemAvailable`.
//!   Skipped where the memory is unknown.

use crate::config::{Encoder, ModelConfig};
use crate::gpu::Gpu;

use super::params::{shapes, DataDims};

/// The device limits a model must fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Adapter name, for messages.
    pub adapter: String,
    /// Largest storage binding in bytes (what the planner plans with).
    pub max_binding_bytes: u64,
    /// Largest buffer in bytes.
    pub max_buffer_bytes: u64,
    /// Memory the parameters and their optimizer state must fit in: host
    /// memory for a CPU adapter, `None` (not checked) otherwise.
    pub memory_bytes: Option<u64>,
}

impl Limits {
    pub fn of(gpu: &Gpu) -> Limits {
        let cpu = gpu.report.info.device_type == wgpu::DeviceType::Cpu;
        Limits {
            adapter: gpu.adapter_name().to_string(),
            max_binding_bytes: gpu.max_binding_bytes(),
            max_buffer_bytes: gpu.report.limits.max_buffer_size,
            memory_bytes: if cpu {
                crate::host::available_memory()
            } else {
                None
            },
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("{key} = {value} is above {max}, the largest size the kernels index with 32-bit integers; lower {key}")]
    Dim { key: String, value: u64, max: u64 },
    #[error(
        "{what} {name} {shape} would take {bytes} bytes, over the {limit}-byte {limit_name} of {adapter} ({why}); lower {keys}"
    )]
    Tensor {
        what: &'static str,
        name: String,
        shape: String,
        /// A number, or "more than 2^64".
        bytes: String,
        limit: u64,
        limit_name: &'static str,
        adapter: String,
        why: &'static str,
        keys: String,
    },
    #[error(
        "the model's {values} parameter values need {bytes} bytes with their gradients and AdamW moments (4 copies), over the {available} bytes of memory available to {adapter} (a CPU adapter computes in host memory); lower {keys}"
    )]
    Memory {
        values: u64,
        bytes: u64,
        available: u64,
        adapter: String,
        keys: String,
    },
}

/// The model's size keys, in the order messages list them.
const MODEL_KEYS: [&str; 9] = [
    "model.crop",
    "model.node_channels",
    "model.width",
    "model.embed_dim",
    "model.window",
    "model.stride",
    "model.segment",
    "model.qk_dim",
    "model.proj_dim",
];

fn key_mut<'a>(m: &'a mut ModelConfig, key: &str) -> &'a mut usize {
    match key {
        "model.crop" => &mut m.crop,
        "model.node_channels" => &mut m.node_channels,
        "model.width" => &mut m.width,
        "model.embed_dim" => &mut m.embed_dim,
        "model.window" => &mut m.window,
        "model.stride" => &mut m.stride,
        "model.segment" => &mut m.segment,
        "model.qk_dim" => &mut m.qk_dim,
        "model.proj_dim" => &mut m.proj_dim,
        other => unreachable!("{other} is not in MODEL_KEYS"),
    }
}

/// Elements of a shape, `None` past u64.
fn elements(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

fn bytes_of(shape: &[u64]) -> Option<u64> {
    elements(shape)?.checked_mul(4)
}

fn shown(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn bytes_text(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string())
}

/// The largest activations of one batch of `b` scans (docs/model.md,
/// Forward), by encoder. Smaller ones (the projector, the head) are left
/// out: they never exceed these.
fn activations(m: &ModelConfig, d: DataDims, b: u64) -> Vec<(&'static str, Vec<u64>)> {
    let u = |v: usize| v as u64;
    let (n, t, f, dw) = (u(d.n_regions), u(m.crop), u(m.node_channels), u(m.width));
    let (q, l, s) = (u(m.qk_dim), u(m.window), u(m.stride));
    let windows = t.saturating_sub(l) / s.max(1) + 1;
    let mut v = vec![
        ("the input batch X", vec![b, n, t]),
        ("the static graphs", vec![b, n, n]),
    ];
    match m.encoder {
        Encoder::Psta => {
            v.push(("the node features Z_s, Z_d", vec![b, t, n, f]));
            v.push(("the dynamic graphs A_w", vec![b, windows, n, n]));
            v.push(("the dynamic-graph windows", vec![b, windows, n, l]));
            v.push(("the calibration maps CCM, TAW, CAM", vec![b, t, t]));
            v.push(("the queries and keys", vec![b, q, t]));
            v.push(("the temporal features", vec![b, dw, t]));
        }
        Encoder::GcnOnly | Encoder::StgcnStyle => {
            v.push(("the node features", vec![b, t, n, f]));
            v.push(("the temporal features", vec![b, dw, t]));
        }
        Encoder::Lstm => {
            // Dims are at most u32::MAX here (checked first), so 4D fits.
            v.push(("the LSTM gates", vec![b, 4 * dw, t]));
            v.push(("the temporal features", vec![b, dw, t]));
        }
    }
    v
}

/// Parameter shapes as u64 (the layout's products fit: every size is at
/// most u32::MAX when this runs, and the layout multiplies at most two).
fn parameters(m: &ModelConfig, d: DataDims) -> Vec<(String, Vec<u64>)> {
    shapes(m, d)
        .into_iter()
        .map(|(name, shape)| (name, shape.into_iter().map(|v| v as u64).collect()))
        .collect()
}

/// The keys (model keys, then `batch_key`) whose halving makes `size`
/// at least 10 % smaller: the ones worth lowering (a total over every
/// parameter shrinks a little with almost any key). `None` sizes (past u64)
/// count as infinite, and any finite size is smaller.
fn keys_to_lower(
    m: &ModelConfig,
    batch: (&str, usize),
    size: impl Fn(&ModelConfig, usize) -> Option<u64>,
) -> String {
    let base = size(m, batch.1);
    let smaller = |s: Option<u64>| match (base, s) {
        (None, s) => s.is_some(),
        (Some(_), None) => false,
        (Some(base), Some(s)) => {
            u128::from(base - s.min(base)) * 10 >= u128::from(base) && s < base
        }
    };
    let mut keys: Vec<&str> = Vec::new();
    for key in MODEL_KEYS {
        let mut lower = m.clone();
        let v = key_mut(&mut lower, key);
        if *v > 1 {
            *v /= 2;
            if smaller(size(&lower, batch.1)) {
                keys.push(key);
            }
        }
    }
    if batch.1 > 1 && smaller(size(m, batch.1 / 2)) {
        keys.push(batch.0);
    }
    if keys.is_empty() {
        // Only the data's dimensions make it this large.
        return "the dataset's regions or classes".to_string();
    }
    keys.join(" or ")
}

/// Refuses a model (`m` on data of `dims`, trained in batches named by
/// `batches`: `(config key, size)`, e.g. `("pretrain.batch", 32)`) that
/// cannot run within `limits`, before anything is allocated. See the module
/// documentation for the rules.
// The error is large (it names tensor, shape, limit, adapter and keys) and
// is returned once per run; callers that keep it box it (ProtocolError).
#[allow(clippy::result_large_err)]
pub fn check(
    m: &ModelConfig,
    dims: DataDims,
    batches: &[(&str, usize)],
    limits: &Limits,
) -> Result<(), SizeError> {
    let max = u64::from(u32::MAX);
    let sizes = MODEL_KEYS
        .iter()
        .map(|&key| (key.to_string(), *key_mut(&mut m.clone(), key) as u64))
        .chain(batches.iter().map(|&(key, b)| (key.to_string(), b as u64)))
        .chain([
            ("the dataset's regions".to_string(), dims.n_regions as u64),
            ("the dataset's classes".to_string(), dims.n_classes as u64),
        ]);
    for (key, value) in sizes {
        if value > max {
            return Err(SizeError::Dim { key, value, max });
        }
    }

    // Parameters: the largest one over a binding.
    let params = parameters(m, dims);
    let binding = limits.max_binding_bytes;
    // `rev`: of equal sizes, the first in store order is named.
    let over = params
        .iter()
        .rev()
        .map(|(name, shape)| (name, shape, bytes_of(shape)))
        .filter(|(_, _, bytes)| bytes.is_none_or(|b| b > binding))
        .max_by_key(|(_, _, bytes)| bytes.unwrap_or(u64::MAX));
    let no_batch = ("", 0);
    if let Some((name, shape, bytes)) = over {
        let keys = keys_to_lower(m, no_batch, |m, _| {
            parameters(m, dims)
                .into_iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, s)| bytes_of(&s))
        });
        return Err(SizeError::Tensor {
            what: "parameter",
            name: name.clone(),
            shape: shown(shape),
            bytes: bytes_text(bytes),
            limit: binding,
            limit_name: "storage binding limit",
            adapter: limits.adapter.clone(),
            why: "a weight is bound whole by the kernels that use it",
            keys,
        });
    }

    // Activations of each phase's batch: the largest one over a buffer.
    for &(batch_key, b) in batches {
        let acts = activations(m, dims, b as u64);
        let over = acts
            .iter()
            .rev()
            .map(|(name, shape)| (*name, shape, bytes_of(shape)))
            .filter(|(_, _, bytes)| bytes.is_none_or(|x| x > limits.max_buffer_bytes))
            .max_by_key(|(_, _, bytes)| bytes.unwrap_or(u64::MAX));
        if let Some((name, shape, bytes)) = over {
            let keys = keys_to_lower(m, (batch_key, b), |m, b| {
                activations(m, dims, b as u64)
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, s)| bytes_of(&s))
            });
            return Err(SizeError::Tensor {
                what: "activation",
                name: name.to_string(),
                shape: shown(shape),
                bytes: bytes_text(bytes),
                limit: limits.max_buffer_bytes,
                limit_name: "buffer size limit",
                adapter: limits.adapter.clone(),
                why: "a tensor is one buffer; launches are split, buffers are not",
                keys,
            });
        }
    }

    // Parameters, gradients and AdamW's two moments in host memory.
    if let Some(available) = limits.memory_bytes {
        let total = |m: &ModelConfig| {
            parameters(m, dims)
                .iter()
                .try_fold(0u64, |sum, (_, s)| sum.checked_add(elements(s)?))
        };
        let values = total(m);
        let bytes = values.and_then(|v| v.checked_mul(16));
        if bytes.is_none_or(|b| b > available) {
            let keys = keys_to_lower(m, no_batch, |m, _| total(m));
            return Err(SizeError::Memory {
                values: values.unwrap_or(u64::MAX),
                bytes: bytes.unwrap_or(u64::MAX),
                available,
                adapter: limits.adapter.clone(),
                keys,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn lavapipe() -> Limits {
        Limits {
            adapter: "llvmpipe".into(),
            max_binding_bytes: 128 << 20,
            max_buffer_bytes: 2047 << 20,
            memory_bytes: Some(16 << 30),
        }
    }

    fn quick() -> ModelConfig {
        let mut m = Config::default().model;
        m.crop = 48;
        m.node_channels = 8;
        m.width = 32;
        m.embed_dim = 8;
        m.window = 12;
        m.stride = 6;
        m.segment = 8;
        m.qk_dim = 16;
        m.proj_dim = 64;
        m
    }

    const DIMS: DataDims = DataDims {
        n_regions: 16,
        n_classes: 2,
    };

    fn refused(m: &ModelConfig, batch: usize, limits: &Limits) -> String {
        check(m, DIMS, &[("pretrain.batch", batch)], limits)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn ordinary_configs_pass() {
        assert_eq!(
            check(&quick(), DIMS, &[("pretrain.batch", 32)], &lavapipe()),
            Ok(())
        );
        let abide = DataDims {
            n_regions: 200,
            n_classes: 2,
        };
        let m = Config::default().model;
        assert_eq!(
            check(&m, abide, &[("pretrain.batch", 64)], &lavapipe()),
            Ok(())
        );
    }

    #[test]
    fn a_wide_model_names_its_largest_parameter_and_model_width() {
        let mut m = quick();
        m.width = 100_000;
        assert_eq!(
            refused(&m, 32, &lavapipe()),
            "parameter calib.v.weight [100000, 100000, 3] would take 120000000000 bytes, over the \
             134217728-byte storage binding limit of llvmpipe (a weight is bound whole by the \
             kernels that use it); lower model.width"
        );
        let mut m = quick();
        m.proj_dim = 200_000;
        assert_eq!(
            refused(&m, 32, &lavapipe()),
            "parameter proj.fc2.weight [200000, 200000] would take 160000000000 bytes, over the \
             134217728-byte storage binding limit of llvmpipe (a weight is bound whole by the \
             kernels that use it); lower model.proj_dim"
        );
        // fusion.proj.weight [N·F, D] grows with both (every [F, F] fits).
        let mut m = quick();
        m.node_channels = 4000;
        m.width = 1000;
        assert_eq!(
            refused(&m, 32, &lavapipe()),
            "parameter fusion.proj.weight [64000, 1000] would take 256000000 bytes, over the \
             134217728-byte storage binding limit of llvmpipe (a weight is bound whole by the \
             kernels that use it); lower model.node_channels or model.width"
        );
    }

    #[test]
    fn a_long_crop_names_the_attention_maps_crop_and_batch() {
        let mut m = quick();
        m.crop = 200_000;
        assert_eq!(
            refused(&m, 32, &lavapipe()),
            "activation the calibration maps CCM, TAW, CAM [32, 200000, 200000] would take \
             5120000000000 bytes, over the 2146435072-byte buffer size limit of llvmpipe (a \
             tensor is one buffer; launches are split, buffers are not); lower model.crop or \
             pretrain.batch"
        );
    }

    #[test]
    fn sizes_past_32_bits_or_u64_are_refused_without_overflow() {
        let mut m = quick();
        m.width = usize::MAX;
        assert_eq!(
            refused(&m, 32, &lavapipe()),
            format!(
                "model.width = {} is above 4294967295, the largest size the kernels index with \
                 32-bit integers; lower model.width",
                usize::MAX
            )
        );
        let e = refused(&quick(), 1 << 40, &lavapipe());
        assert!(
            e.starts_with("pretrain.batch = 1099511627776 is above"),
            "{e}"
        );
        // Every size at the 32-bit edge: products past u64 are "more than 2^64".
        let mut m = quick();
        for key in MODEL_KEYS {
            *key_mut(&mut m, key) = u32::MAX as usize;
        }
        let e = refused(&m, 32, &lavapipe());
        assert!(e.contains("would take more than 2^64 bytes"), "{e}");
    }

    #[test]
    fn parameters_past_host_memory_are_refused_on_a_cpu_adapter_only() {
        // Every parameter fits a binding; together (x4) they do not fit 1 GiB.
        let mut small = lavapipe();
        small.memory_bytes = Some(1 << 30);
        let mut m = quick();
        m.width = 3000;
        m.proj_dim = 5000;
        assert_eq!(
            refused(&m, 32, &small),
            "the model's 94713583 parameter values need 1515417328 bytes with their gradients \
             and AdamW moments (4 copies), over the 1073741824 bytes of memory available to \
             llvmpipe (a CPU adapter computes in host memory); lower model.width or model.proj_dim"
        );
        small.memory_bytes = None;
        assert_eq!(check(&m, DIMS, &[("pretrain.batch", 32)], &small), Ok(()));
    }
}
