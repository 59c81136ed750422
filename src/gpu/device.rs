//! Adapter choice and device creation.
//!
//! Rules (docs/design.md §4): prefer a hardware adapter, honour `WGPU_BACKEND` and
//! `WGPU_ADAPTER_NAME`, never fall back silently to GL, and request only the
//! limits and features the kernels need — never `adapter.features()` wholesale,
//! because Mesa 25 advertises experimental features that make the request fail.

use super::GpuError;

/// Bytes of immediate data (push constants) every kernel may use for its shape
/// parameters. 64 bytes = 16 u32, which is all any of our kernels needs, and
/// well under the 128 bytes Vulkan guarantees.
pub const IMMEDIATE_BYTES: u32 = 64;

/// Storage buffers one kernel may bind. Our widest kernel (AdamW) binds 4; the
/// backward of the fused kernels binds up to 8.
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 8;

/// What was found and chosen, for `stptf info` and for the log.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub timestamp_queries: bool,
    pub shader_f16: bool,
    pub subgroups: bool,
    /// Every adapter the instance enumerated, as "name (backend, type)".
    pub candidates: Vec<String>,
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

/// Ranks adapters: discrete > integrated > virtual > CPU (lavapipe) > other.
fn rank(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// The backends we try when `WGPU_BACKEND` is unset. GL is left out on purpose:
/// its compute support is partial and it would hide a missing Vulkan driver.
fn default_backends() -> wgpu::Backends {
    wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
}

/// Parses `WGPU_BACKEND` (a comma list). Every name must be one we can run
/// on: wgpu's own parser ignores unknown names, and GL would be chosen but
/// never used (see `default_backends`), so both are errors here rather than
/// a misleading "no adapter".
fn parse_backends(value: &str) -> Result<wgpu::Backends, GpuError> {
    let mut backends = wgpu::Backends::empty();
    for name in value.split(',').map(|n| n.trim().to_lowercase()) {
        backends |= match name.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" | "webgl" => {
                return Err(GpuError::Backend {
                    value: value.to_string(),
                    reason: "OpenGL is not supported; use vulkan, metal or dx12".into(),
                })
            }
            _ => {
                return Err(GpuError::Backend {
                    value: value.to_string(),
                    reason: format!("unknown backend \"{name}\"; use vulkan, metal or dx12"),
                })
            }
        };
    }
    Ok(backends)
}

/// Finds an adapter and opens a device with the limits our kernels need:
/// the adapter for the `local_rank`-th process on this machine of a
/// data-parallel job (`crate::dist`): among the adapters of the best type
/// (e.g. the node's discrete GPUs, in the order the driver lists them), the
/// one at `local_rank` modulo their count, so each rank gets its own GPU
/// when there are enough.
pub fn open_for_local_rank(
    local_rank: usize,
) -> Result<(wgpu::Device, wgpu::Queue, AdapterReport), GpuError> {
    let backends = match std::env::var("WGPU_BACKEND") {
        Ok(s) if !s.trim().is_empty() => parse_backends(&s)?,
        _ => default_backends(),
    };
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle().with_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let candidates: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();

    let wanted_name = std::env::var("WGPU_ADAPTER_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.to_lowercase());
    let mut usable: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|a| {
            let info = a.get_info();
            let name_ok = wanted_name
                .as_ref()
                .is_none_or(|w| info.name.to_lowercase().contains(w.as_str()));
            name_ok && info.backend != wgpu::Backend::Gl && info.backend != wgpu::Backend::Noop
        })
        .collect();
    usable.sort_by_key(|a| rank(a.get_info().device_type));
    let best = usable.first().map(|a| rank(a.get_info().device_type));
    let peers = usable
        .iter()
        .filter(|a| Some(rank(a.get_info().device_type)) == best)
        .count()
        .max(1);

    let Some(adapter) = usable.into_iter().nth(local_rank % peers) else {
        return Err(GpuError::NoAdapter {
            backends: format!("{backends:?}"),
            name_filter: wanted_name,
            candidates,
        });
    };
    let info = adapter.get_info();
    let supported = adapter.limits();
    let features = adapter.features();

    if !features.contains(wgpu::Features::IMMEDIATES)
        || supported.max_immediate_size < IMMEDIATE_BYTES
    {
        return Err(GpuError::MissingCapability {
            adapter: describe(&info),
            what: format!(
                "immediates (push constants) of {IMMEDIATE_BYTES} bytes (adapter offers {})",
                supported.max_immediate_size
            ),
        });
    }
    if supported.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS_PER_STAGE {
        return Err(GpuError::MissingCapability {
            adapter: describe(&info),
            what: format!(
                "{STORAGE_BUFFERS_PER_STAGE} storage buffers per shader stage (adapter offers {})",
                supported.max_storage_buffers_per_shader_stage
            ),
        });
    }

    // Ask for what we use, up to what the adapter has: the largest storage
    // binding and buffer it allows (tensors above the binding size are chunked
    // by the launchers), 8 storage buffers, and 64 bytes of immediates.
    let required_limits = wgpu::Limits {
        max_storage_buffers_per_shader_stage: STORAGE_BUFFERS_PER_STAGE,
        max_storage_buffer_binding_size: supported.max_storage_buffer_binding_size,
        max_buffer_size: supported.max_buffer_size,
        max_immediate_size: IMMEDIATE_BYTES,
        max_compute_workgroup_storage_size: supported.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: supported
            .max_compute_invocations_per_workgroup
            .min(1024),
        max_compute_workgroup_size_x: supported.max_compute_workgroup_size_x.min(1024),
        max_compute_workgroup_size_y: supported.max_compute_workgroup_size_y.min(1024),
        ..wgpu::Limits::downlevel_defaults()
    };
    let mut required_features = wgpu::Features::IMMEDIATES;
    let timestamp_queries = features.contains(wgpu::Features::TIMESTAMP_QUERY);
    if timestamp_queries {
        required_features |= wgpu::Features::TIMESTAMP_QUERY;
    }
    let shader_f16 = features.contains(wgpu::Features::SHADER_F16);
    let subgroups = features.contains(wgpu::Features::SUBGROUP);

    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("stptf"),
        required_features,
        required_limits: required_limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|source| GpuError::RequestDevice {
        adapter: describe(&info),
        source,
    })?;
    log::debug!("GPU adapter: {}", describe(&info));
    let report = AdapterReport {
        info,
        limits: device.limits(),
        timestamp_queries,
        shader_f16,
        subgroups,
        candidates,
    };
    Ok((device, queue, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_and_gl_or_unknown_ones_are_refused() {
        assert_eq!(
            parse_backends(" Vulkan, metal").unwrap(),
            wgpu::Backends::VULKAN | wgpu::Backends::METAL
        );
        assert_eq!(parse_backends("dx12").unwrap(), wgpu::Backends::DX12);
        for gl in ["gl", "vulkan,gl", "GLES"] {
            let e = parse_backends(gl).unwrap_err().to_string();
            assert!(
                e.contains("OpenGL is not supported; use vulkan, metal or dx12"),
                "{e}"
            );
        }
        let e = parse_backends("vulcan").unwrap_err().to_string();
        assert!(e.contains("unknown backend \"vulcan\""), "{e}");
    }
}
