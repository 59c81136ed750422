//! Shaders, kernels and the pipeline cache.
//!
//! A `Shader` is one WGSL file (one kernel family, forward and backward entry
//! points). A `Kernel` names one entry point in it. Pipelines are compiled once
//! per kernel and cached behind that typed key; shapes travel as immediates,
//! so one pipeline serves every batch size and crop length.
//!
//! Each pipeline uses the layout wgpu derives from its entry point, which omits
//! bindings the entry point does not touch. We therefore reflect the module with
//! naga once and remember, per entry point, which `@binding`s it uses: the
//! launcher binds exactly those and reports a missing one as an error instead
//! of a wgpu validation panic.
//!
//! The same reflection records each entry point's `@workgroup_size` and the
//! module's named `u32`/`i32` `const`s (e.g. `ELEMS_PER_THREAD`), and
//! launchers size their grids from those ([`CompiledKernel::linear_size`],
//! [`CompiledKernel::constant`]) instead of a hand-copied Rust constant, so
//! a shader edit cannot leave a launcher behind.

use std::collections::HashMap;
use std::sync::Arc;

use super::GpuError;

/// One WGSL file under `shaders/`.
///
/// Compared and hashed by name only: names are file names (see [`shader!`]),
/// so they are unique, and hashing the whole source on every launch's cache
/// lookup would cost more than the lookup.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

impl PartialEq for Shader {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Shader {}

impl std::hash::Hash for Shader {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// Declares a `Shader` constant for `shaders/<file>.wgsl`.
#[macro_export]
macro_rules! shader {
    ($file:literal) => {
        $crate::gpu::Shader {
            name: $file,
            source: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/shaders/",
                $file,
                ".wgsl"
            )),
        }
    };
}

/// One compute entry point of a shader: the pipeline cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub shader: Shader,
    pub entry: &'static str,
}

impl Shader {
    pub const fn kernel(self, entry: &'static str) -> Kernel {
        Kernel {
            shader: self,
            entry,
        }
    }
}

/// A compiled pipeline and what its entry point binds in group 0.
pub struct CompiledKernel {
    /// `shader::entry`, for messages.
    pub name: String,
    /// Unique per pipeline on its device (the bind-group cache's key).
    pub id: u64,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// Sorted `@binding` indices of group 0 that the entry point uses.
    pub bindings: Vec<u32>,
    /// `@workgroup_size` of the entry point.
    pub workgroup_size: [u32; 3],
    /// The module's named integer `const`s.
    constants: Arc<HashMap<String, u32>>,
}

impl CompiledKernel {
    /// Invocations per workgroup of a 1-D entry point (`@workgroup_size(x)`);
    /// an error for a 2-D or 3-D one, whose launcher must size each axis.
    pub fn linear_size(&self) -> Result<u32, GpuError> {
        match self.workgroup_size {
            [x, 1, 1] => Ok(x),
            size => Err(GpuError::Launch {
                kernel: self.name.clone(),
                message: format!("workgroup size {size:?} is not 1-D"),
            }),
        }
    }

    /// The value of the shader's `const NAME: u32` (or `i32`).
    pub fn constant(&self, name: &str) -> Result<u32, GpuError> {
        self.constants
            .get(name)
            .copied()
            .ok_or_else(|| GpuError::Launch {
                kernel: self.name.clone(),
                message: format!("the shader declares no integer const named {name}"),
            })
    }
}

/// Parses and validates WGSL with naga (no device needed).
pub fn validate_wgsl(
    name: &str,
    source: &str,
) -> Result<(naga::Module, naga::valid::ModuleInfo), GpuError> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| GpuError::Shader {
        shader: name.to_string(),
        message: e.emit_to_string(source),
    })?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::IMMEDIATES,
    )
    .validate(&module)
    .map_err(|e| GpuError::Shader {
        shader: name.to_string(),
        message: e.emit_to_string(source),
    })?;
    Ok((module, info))
}

/// The module's named integer `const`s (non-negative ones, as u32).
fn reflect_constants(module: &naga::Module) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for (_, c) in module.constants.iter() {
        let Some(name) = &c.name else { continue };
        let value = match module.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => Some(v),
            naga::Expression::Literal(naga::Literal::I32(v)) => u32::try_from(v).ok(),
            naga::Expression::Literal(naga::Literal::AbstractInt(v)) => u32::try_from(v).ok(),
            _ => None,
        };
        if let Some(v) = value {
            out.insert(name.clone(), v);
        }
    }
    out
}

/// Per entry point name: the group-0 bindings it uses and its workgroup size.
type EntryPoints = HashMap<String, (Vec<u32>, [u32; 3])>;

/// For each entry point: the group-0 bindings it uses and its workgroup size.
fn reflect(
    shader: &Shader,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
) -> Result<EntryPoints, GpuError> {
    let mut out = HashMap::new();
    for (index, entry) in module.entry_points.iter().enumerate() {
        let function_info = info.get_entry_point(index);
        let mut bindings = Vec::new();
        for (handle, var) in module.global_variables.iter() {
            if let Some(binding) = &var.binding {
                if !function_info[handle].is_empty() {
                    if binding.group != 0 {
                        return Err(GpuError::Shader {
                            shader: shader.name.to_string(),
                            message: format!(
                                "entry {} uses bind group {} (only group 0 is supported)",
                                entry.name, binding.group
                            ),
                        });
                    }
                    bindings.push(binding.binding);
                }
            }
        }
        bindings.sort_unstable();
        out.insert(entry.name.clone(), (bindings, entry.workgroup_size));
    }
    Ok(out)
}

/// A compiled module and its reflection.
struct Module {
    module: wgpu::ShaderModule,
    entries: EntryPoints,
    constants: Arc<HashMap<String, u32>>,
}

#[derive(Default)]
pub struct PipelineCache {
    compiled: HashMap<Kernel, Arc<CompiledKernel>>,
    modules: HashMap<Shader, Module>,
}

impl PipelineCache {
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        kernel: Kernel,
    ) -> Result<Arc<CompiledKernel>, GpuError> {
        if let Some(k) = self.compiled.get(&kernel) {
            return Ok(k.clone());
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = self.modules.entry(kernel.shader) {
            let (module, info) = validate_wgsl(kernel.shader.name, kernel.shader.source)?;
            let entries = reflect(&kernel.shader, &module, &info)?;
            let constants = Arc::new(reflect_constants(&module));
            let sm = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.shader.name),
                source: wgpu::ShaderSource::Wgsl(kernel.shader.source.into()),
            });
            slot.insert(Module {
                module: sm,
                entries,
                constants,
            });
        }
        let m = &self.modules[&kernel.shader];
        let (bindings, workgroup_size) =
            m.entries
                .get(kernel.entry)
                .cloned()
                .ok_or_else(|| GpuError::Shader {
                    shader: kernel.shader.name.to_string(),
                    message: format!("no entry point named {}", kernel.entry),
                })?;
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.entry),
            layout: None,
            module: &m.module,
            entry_point: Some(kernel.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let compiled = Arc::new(CompiledKernel {
            name: format!("{}::{}", kernel.shader.name, kernel.entry),
            id: self.compiled.len() as u64,
            constants: m.constants.clone(),
            pipeline,
            layout,
            bindings,
            workgroup_size,
        });
        self.compiled.insert(kernel, compiled.clone());
        Ok(compiled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.wgsl` file under `shaders/` parses and validates, with no device.
    #[test]
    fn every_shader_file_validates_with_naga() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
            let path = entry.expect("readable dir entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("readable shader");
            let name = path.display().to_string();
            if let Err(e) = validate_wgsl(&name, &source) {
                panic!("{e}");
            }
            checked += 1;
        }
        assert!(checked >= 2, "expected WGSL files under {}", dir.display());
    }

    /// What launchers size grids from: named integer consts and each entry
    /// point's `@workgroup_size`, including one given by a const.
    #[test]
    fn reflection_reads_consts_and_workgroup_sizes() {
        let source = "
            const WG: u32 = 64u;
            const PER: u32 = 8u;
            const SIGNED: i32 = 3i;
            const RATIO: f32 = 0.5;
            @group(0) @binding(2) var<storage, read_write> out: array<f32>;
            @compute @workgroup_size(WG) fn linear(@builtin(global_invocation_id) id: vec3<u32>) {
                out[id.x] = f32(PER) * RATIO;
            }
            @compute @workgroup_size(8, 4, 1) fn tiled(@builtin(global_invocation_id) id: vec3<u32>) {
                out[id.x] = 1.0;
            }
            @compute @workgroup_size(1) fn unused() {}
        ";
        let (module, info) = validate_wgsl("t.wgsl", source).unwrap();
        let constants = reflect_constants(&module);
        assert_eq!(constants.get("WG"), Some(&64));
        assert_eq!(constants.get("PER"), Some(&8));
        assert_eq!(constants.get("SIGNED"), Some(&3));
        assert_eq!(constants.get("RATIO"), None, "not an integer");
        let shader = Shader {
            name: "t.wgsl",
            source,
        };
        let entries = reflect(&shader, &module, &info).unwrap();
        assert_eq!(entries["linear"], (vec![2], [64, 1, 1]));
        assert_eq!(entries["tiled"], (vec![2], [8, 4, 1]));
        assert_eq!(entries["unused"], (vec![], [1, 1, 1]));
    }

    /// The grid helpers read the reflection of the real shaders.
    #[test]
    fn compiled_kernels_expose_their_sizes() {
        let gpu = crate::check::gpu();
        let elementwise = gpu
            .kernel(crate::shader!("elementwise").kernel("add"))
            .unwrap();
        assert_eq!(elementwise.linear_size().unwrap(), 256);
        assert_eq!(elementwise.constant("ELEMS_PER_THREAD").unwrap(), 8);
        let e = elementwise.constant("NOPE").unwrap_err().to_string();
        assert!(e.contains("elementwise::add") && e.contains("NOPE"), "{e}");
        let matmul = gpu
            .kernel(crate::shader!("matmul").kernel("matmul"))
            .unwrap();
        assert_eq!(matmul.workgroup_size, [8, 8, 1]);
        let e = matmul.linear_size().unwrap_err().to_string();
        assert!(e.contains("not 1-D"), "{e}");
    }

    #[test]
    fn a_broken_shader_is_reported_with_its_name() {
        let err = validate_wgsl("broken.wgsl", "fn main( {").unwrap_err();
        assert!(err.to_string().contains("broken.wgsl"), "{err}");
    }
}
