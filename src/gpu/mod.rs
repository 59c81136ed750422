//! The GPU runtime: device, buffer pool, pipeline cache, tensors and kernel launch.
//!
//! Every kernel launch is recorded into one pending command encoder owned by
//! [`Gpu`]; nothing runs until [`Gpu::flush`] submits it. A whole training step
//! is therefore one submit, and reading a value back ([`Gpu::read`]) is a
//! separate, explicit call that flushes and waits.
//!
//! One ordering: everything — kernels, fills ([`Gpu::fill`]), host writes
//! ([`Gpu::upload`], [`Gpu::write`]) and copies — is recorded into that
//! encoder in program order, and runs in that order. Nothing uses
//! `queue.write_buffer`, whose data would land before the whole submission.
//!
//! The runtime depends on no kernel family: it has its own fill shader.
//! Launches that a tensor larger than one storage binding forces to split
//! are planned by [`Planner`] (`plan.rs`), the one place for that rule; bind
//! groups are cached behind a typed key (`bind_cache.rs`); and
//! [`Gpu::traced`] lists what a piece of code recorded, so tests can assert
//! which path ran.

mod bind_cache;
mod device;
mod pipeline;
mod plan;
mod pool;
mod profile;
mod tensor;

use std::sync::{Arc, Mutex, MutexGuard};

pub use bind_cache::BindGroupStats;
pub use device::{AdapterReport, IMMEDIATE_BYTES};
pub use pipeline::{validate_wgsl, CompiledKernel, Kernel, Shader};
pub use plan::{Pieces, Planner};
pub use profile::DispatchTime;
pub use tensor::{Arg, Tensor};

use bind_cache::{BindGroupCache, BindGroupKey};
use pipeline::PipelineCache;
use pool::BufferPool;
use profile::Profiler;

/// Largest workgroup count per grid dimension that every adapter accepts.
pub const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// The runtime's own fill shader (see [`Gpu::fill`]).
const FILL: Shader = crate::shader!("fill");

/// Staging belt chunk size: 4 MiB holds a whole ABIDE batch (32 x 200 x 128
/// f32 is 3.3 MB); larger writes get a staging buffer of their own.
const BELT_CHUNK_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no usable GPU adapter was found (backends tried: {backends}{}; adapters seen: {}). \
         stptf needs a Vulkan, Metal or DX12 device; OpenGL is never used. On a Linux machine \
         without a GPU, install Mesa's software Vulkan driver (lavapipe) and the loader: \
         `sudo apt-get install mesa-vulkan-drivers libvulkan1`. With a GPU, install its Vulkan \
         driver (e.g. mesa-vulkan-drivers for AMD/Intel, the NVIDIA driver for NVIDIA). \
         `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` narrow the choice; check them if they are set.",
        name_filter.as_ref().map(|n| format!(", name containing \"{n}\"")).unwrap_or_default(),
        if candidates.is_empty() { "none".to_string() } else { candidates.join(", ") }
    )]
    NoAdapter {
        backends: String,
        name_filter: Option<String>,
        candidates: Vec<String>,
    },
    #[error("WGPU_BACKEND={value}: {reason}")]
    Backend { value: String, reason: String },
    #[error("GPU adapter {adapter} lacks {what}")]
    MissingCapability { adapter: String, what: String },
    #[error("could not open GPU device on {adapter}")]
    RequestDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },
    #[error("shader {shader}: {message}")]
    Shader { shader: String, message: String },
    #[error("kernel {kernel}: {message}")]
    Launch { kernel: String, message: String },
    #[error("GPU error: {0}")]
    Device(String),
    /// An environment variable that chooses a runtime setting has a value
    /// that is not one of its choices.
    #[error("{name}={value:?}: expected {expected}")]
    Environment {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("reading back a buffer failed: {0}")]
    Readback(String),
    #[error("shape mismatch in {op}: {message}")]
    Shape { op: &'static str, message: String },
    /// A model asked for a parameter the store does not hold (a misspelt or
    /// missing name): raised when the typed layers are built, before any step.
    #[error("the model has no parameter `{name}`")]
    UnknownParameter { name: String },
    /// A collective of data-parallel training failed (`crate::dist`).
    #[error(transparent)]
    Collective(#[from] crate::dist::DistError),
    /// A launch that cannot be planned within one storage binding.
    #[error(
        "{op}: {what} is {bytes} bytes, over the {limit}-byte storage binding limit ({reason})"
    )]
    BindingLimit {
        op: &'static str,
        what: String,
        bytes: u64,
        limit: u64,
        reason: String,
    },
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

/// The device and everything cached on it.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub report: AdapterReport,
    /// Largest storage binding in bytes. Launchers split work above it (see
    /// `plan.rs`). Lower only on devices from [`Gpu::with_binding_limit`].
    max_binding_bytes: u64,
    pool: Arc<Mutex<BufferPool>>,
    pipelines: Mutex<PipelineCache>,
    /// Lock order: after the pool (`trim_pool` holds neither while taking it).
    bind_groups: Mutex<BindGroupCache>,
    encoder: Mutex<Option<wgpu::CommandEncoder>>,
    /// Reused staging memory for `write` (lock order: encoder, then belt).
    belt: Mutex<wgpu::util::StagingBelt>,
    errors: Arc<Mutex<Vec<String>>>,
    /// When set, every new tensor is filled with NaN before use, so a kernel
    /// that forgets to write an element fails its test (on in tests).
    poison_new_tensors: std::sync::atomic::AtomicBool,
    /// Pool bytes in use when the last backward began (`Tape::backward`
    /// marks it once the forward's unsaved values are freed), for the
    /// profile's activation bound.
    in_use_at_backward: std::sync::atomic::AtomicU64,
    /// Where the last backward's bytes in use peaked (`Tape::backward`).
    backward_peak: Mutex<Option<BackwardPeak>>,
    /// Floating-point operations announced for the next dispatch
    /// ([`Gpu::count_flops`]), taken by it while a profile is open.
    pending_flops: std::sync::atomic::AtomicU64,
    /// Per thread inside [`Gpu::traced`], what it recorded, in order.
    traces: Mutex<Vec<(std::thread::ThreadId, Vec<Recorded>)>>,
    /// `traces.len()`, read without the lock on every recorded command.
    tracing: std::sync::atomic::AtomicUsize,
    /// The open profile, if any (see `profile.rs`); `profiling` mirrors
    /// `profiler.is_some()` so a launch checks it without the lock.
    profiler: Mutex<Option<Profiler>>,
    profiling: std::sync::atomic::AtomicBool,
    /// The stage label the next dispatches get in a profile (`set_stage`).
    stage: Mutex<&'static str>,
    /// Submits so far (for `stptf profile`).
    submits: std::sync::atomic::AtomicU64,
    /// How the matrix-product kernels tile their work on this adapter.
    tiling: Tiling,
}

/// How the matrix-product kernels (`ops::matmul`) tile their work. Chosen
/// once per device: by [`TILING_ENV`] when it is set, otherwise by the
/// adapter's type (docs/design.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tiling {
    /// Each invocation keeps a block of the output in registers and reads
    /// its operands straight from the buffers; no workgroup memory, no
    /// barriers. The fastest form on CPU adapters (lavapipe), where
    /// workgroup memory is ordinary memory and a barrier is a thread switch.
    Registers,
    /// Each workgroup stages slices of both operands in workgroup memory
    /// behind barriers, so every element read from device memory serves a
    /// whole tile: the textbook form for GPUs, whose device memory is far
    /// slower than their on-chip memory.
    Workgroup,
}

/// The environment variable that overrides the tiling the adapter type
/// chooses: `registers` or `workgroup`. CI runs every variant's tests on
/// lavapipe through [`Gpu::with_tiling`]; this makes a whole run use one.
pub const TILING_ENV: &str = "STPTF_TILING";

impl Tiling {
    /// What suits the adapter: registers on a CPU, workgroup memory on a GPU.
    pub fn for_adapter(device_type: wgpu::DeviceType) -> Tiling {
        match device_type {
            wgpu::DeviceType::Cpu => Tiling::Registers,
            _ => Tiling::Workgroup,
        }
    }

    /// [`TILING_ENV`] if set (an unknown value is an error naming the
    /// choices), otherwise [`Tiling::for_adapter`].
    pub fn from_env(device_type: wgpu::DeviceType) -> Result<Tiling> {
        const EXPECTED: &str = "`registers` or `workgroup`";
        match std::env::var(TILING_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Tiling::for_adapter(device_type)),
            Err(std::env::VarError::NotUnicode(value)) => Err(GpuError::Environment {
                name: TILING_ENV,
                value: value.to_string_lossy().into_owned(),
                expected: EXPECTED,
            }),
            Ok(value) => Tiling::parse(&value).ok_or(GpuError::Environment {
                name: TILING_ENV,
                value,
                expected: EXPECTED,
            }),
        }
    }

    /// `registers` or `workgroup` (surrounding blanks ignored).
    pub fn parse(value: &str) -> Option<Tiling> {
        match value.trim() {
            "registers" => Some(Tiling::Registers),
            "workgroup" => Some(Tiling::Workgroup),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tiling::Registers => "registers",
            Tiling::Workgroup => "workgroup",
        }
    }
}

/// One command recorded into the pending encoder (see [`Gpu::traced`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A kernel dispatch, `shader::entry` and the grid actually dispatched.
    Dispatch { kernel: String, groups: [u32; 3] },
    /// A host-to-device copy (`upload` or `write`).
    Write { bytes: u64 },
    /// A zero fill by buffer clear.
    Clear { bytes: u64 },
    /// A device-to-device copy (`copy_region`, readback).
    Copy { bytes: u64 },
}

/// Where a backward's bytes in use peaked, and what they held then: the
/// composition the profile prints beside the activation bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackwardPeak {
    /// The high-water mark of the bytes in use before the backward began,
    /// since the last [`Gpu::reset_peak_in_use`] (the profile resets it as
    /// its step begins, so this is the forward's).
    pub forward_peak_in_use: u64,
    /// The high-water mark of the bytes in use during the backward.
    pub peak_in_use: u64,
    /// The node whose backward reached it: its position in backward order
    /// (0 = the loss's) of `nodes`, and the op that recorded it.
    pub node: usize,
    pub nodes: usize,
    pub op: &'static std::panic::Location<'static>,
    /// Just after that node: the bytes in use, and the part of them that
    /// are gradients not yet consumed (each buffer counted once). The rest
    /// of the in-use bytes are the parameters' state and the saved
    /// activations the remaining nodes hold; the peak less the in-use bytes
    /// is what the node's own backward held transiently.
    pub in_use_after: u64,
    pub pending_gradients: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind
    // (pools, caches); it stays usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Gpu {
    /// Opens the best adapter (see `device::open_for_local_rank` for the rules).
    pub fn new() -> Result<Self> {
        Self::for_local_rank(0)
    }

    /// The adapter of the `local_rank`-th rank on this machine
    /// (`device::open_for_local_rank`).
    pub fn for_local_rank(local_rank: usize) -> Result<Self> {
        let (device, queue, report) = device::open_for_local_rank(local_rank)?;
        let belt = wgpu::util::StagingBelt::new(device.clone(), BELT_CHUNK_BYTES);
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        // Without a handler wgpu panics on a validation error; we collect the
        // message and surface it as an error at the next flush instead.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&sink).push(e.to_string());
        }));
        let max_binding = report.limits.max_storage_buffer_binding_size;
        let tiling = Tiling::from_env(report.info.device_type)?;
        Ok(Self {
            device,
            queue,
            report,
            max_binding_bytes: max_binding,
            pool: Arc::default(),
            pipelines: Mutex::default(),
            bind_groups: Mutex::default(),
            encoder: Mutex::default(),
            belt: Mutex::new(belt),
            errors,
            poison_new_tensors: Default::default(),
            in_use_at_backward: Default::default(),
            backward_peak: Mutex::default(),
            pending_flops: Default::default(),
            traces: Mutex::default(),
            tracing: Default::default(),
            profiler: Mutex::default(),
            profiling: Default::default(),
            stage: Mutex::new("other"),
            submits: Default::default(),
            tiling,
        })
    }

    /// The process-wide device, opened on first use. Tests and the CLI share it.
    pub fn shared() -> Result<&'static Gpu> {
        static GPU: std::sync::OnceLock<std::result::Result<Gpu, String>> =
            std::sync::OnceLock::new();
        match GPU.get_or_init(|| Gpu::new().map_err(|e| e.to_string())) {
            Ok(gpu) => Ok(gpu),
            Err(message) => Err(GpuError::Device(message.clone())),
        }
    }

    pub fn adapter_name(&self) -> &str {
        &self.report.info.name
    }

    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding_bytes
    }

    /// A device of its own whose launches are planned for bindings of at
    /// most `bytes` (never above the device's limit), so tests run the split
    /// paths on small tensors. Tests get one through
    /// `check::gpu_with_binding_limit`.
    pub fn with_binding_limit(bytes: u64) -> Result<Self> {
        let mut gpu = Self::new()?;
        let cap = gpu.report.limits.max_storage_buffer_binding_size;
        gpu.max_binding_bytes = bytes.min(cap);
        Ok(gpu)
    }

    /// How this device's matrix products tile their work.
    pub fn tiling(&self) -> Tiling {
        self.tiling
    }

    /// This device with its matrix products using `tiling` whatever the
    /// adapter type, so CI proves every variant on lavapipe. Tests get one
    /// through `check::gpu_with_tiling`.
    pub fn tiled(mut self, tiling: Tiling) -> Self {
        self.tiling = tiling;
        self
    }

    /// Bytes currently allocated by the pool and the high-water mark.
    pub fn memory(&self) -> (u64, u64) {
        let pool = lock(&self.pool);
        (pool.allocated_bytes, pool.peak_bytes)
    }

    /// Bytes held by live tensors now (the pool's allocation less its free
    /// buffers).
    pub fn memory_in_use(&self) -> u64 {
        lock(&self.pool).in_use_bytes
    }

    /// Called by the backward once the tape has dropped every forward value
    /// no backward reads: what is in use then is the parameters, their
    /// gradients and optimizer state, the inputs, and the saved activations.
    pub fn mark_backward_start(&self) {
        self.in_use_at_backward
            .store(self.memory_in_use(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Announces the floating-point operations (a multiply-add counts 2) of
    /// the dispatch about to be launched, for the profile's GFLOP/s per row;
    /// an op split into several launches may announce its total before the
    /// first. Costs one relaxed load when no profile is open.
    pub fn count_flops(&self, flops: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.profiling.load(Relaxed) {
            self.pending_flops.fetch_add(flops, Relaxed);
        }
    }

    /// The high-water mark of the bytes held by live tensors since
    /// [`Gpu::reset_peak_in_use`] (at most [`Gpu::memory`]'s peak, which
    /// also counts idle buffers of the pool's other size classes).
    pub fn peak_in_use(&self) -> u64 {
        lock(&self.pool).peak_in_use_bytes
    }

    /// Restarts [`Gpu::peak_in_use`] from the bytes in use now.
    pub fn reset_peak_in_use(&self) {
        lock(&self.pool).reset_peak_in_use();
    }

    /// Records where a backward's bytes in use reached a new high (called
    /// by `Tape::backward`; the profile reads it back).
    pub fn set_backward_peak(&self, peak: Option<BackwardPeak>) {
        *lock(&self.backward_peak) = peak;
    }

    /// Where the last backward's bytes in use peaked.
    pub fn backward_peak(&self) -> Option<BackwardPeak> {
        *lock(&self.backward_peak)
    }

    /// The bytes in use at the last [`Gpu::mark_backward_start`].
    pub fn in_use_at_backward_start(&self) -> u64 {
        self.in_use_at_backward
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns idle pooled buffers to the device (e.g. between folds), and
    /// drops the cached bind groups that name them (which would otherwise
    /// keep them alive).
    pub fn trim_pool(&self) {
        let freed = lock(&self.pool).trim();
        lock(&self.bind_groups).forget(&freed);
    }

    /// Bind groups created so far and launches that reused a cached one
    /// (for `stptf profile` and tests).
    pub fn bind_group_stats(&self) -> BindGroupStats {
        lock(&self.bind_groups).stats()
    }

    /// A tensor of the given shape with unspecified contents (NaN when
    /// poisoning is on, see [`Gpu::set_poison_new_tensors`]).
    pub fn empty(&self, shape: &[usize]) -> Tensor {
        let t = self.allocate(shape);
        if self
            .poison_new_tensors
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            // Recorded before whatever kernel will write the tensor. `empty`
            // returns no Result, so a failure to record the poison is kept
            // and reported by the next flush (or read), never dropped.
            if let Err(e) = self.fill(&t, f32::NAN) {
                lock(&self.errors).push(format!("poisoning a new tensor: {e}"));
            }
        }
        t
    }

    fn allocate(&self, shape: &[usize]) -> Tensor {
        let len: usize = shape.iter().product();
        let buffer = lock(&self.pool).acquire(&self.device, (len.max(1) * 4) as u64);
        Tensor::new(buffer, Arc::downgrade(&self.pool), shape.to_vec())
    }

    /// Runs `work` and returns, with its result, every command this thread
    /// recorded meanwhile, in order: so a test can assert which path ran
    /// (how a launch was split, the grid it used, that a host write was
    /// recorded in order). Other threads' commands are not included, so
    /// tests sharing a device can trace at once. Not reentrant.
    pub fn traced<R>(&self, work: impl FnOnce() -> R) -> (R, Vec<Recorded>) {
        use std::sync::atomic::Ordering;
        let me = std::thread::current().id();
        lock(&self.traces).push((me, Vec::new()));
        self.tracing.fetch_add(1, Ordering::SeqCst);
        // Taken out again even if `work` panics, so a failed test leaves no
        // tracer behind on a shared device.
        struct Stop<'a>(&'a Gpu, std::thread::ThreadId);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                let mut traces = lock(&self.0.traces);
                if let Some(i) = traces.iter().position(|(t, _)| *t == self.1) {
                    traces.swap_remove(i);
                    self.0.tracing.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        let stop = Stop(self, me);
        let result = work();
        let trace = {
            let mut traces = lock(&self.traces);
            traces
                .iter_mut()
                .find(|(t, _)| *t == me)
                .map(|(_, trace)| std::mem::take(trace))
                .unwrap_or_default()
        };
        drop(stop);
        (result, trace)
    }

    fn note(&self, r: impl FnOnce() -> Recorded) {
        if self.tracing.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let me = std::thread::current().id();
        if let Some((_, trace)) = lock(&self.traces).iter_mut().find(|(t, _)| *t == me) {
            trace.push(r());
        }
    }

    /// Fill every new tensor with NaN (tests: catches unwritten outputs).
    pub fn set_poison_new_tensors(&self, on: bool) {
        self.poison_new_tensors
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// A new tensor holding host data. Like [`Gpu::write`] (which it uses),
    /// the copy is recorded in program order: it lands after everything
    /// recorded before this call and before everything recorded after it.
    /// Both host-to-device paths therefore order the same way.
    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        if len != data.len() {
            return Err(GpuError::Shape {
                op: "upload",
                message: format!(
                    "shape {shape:?} holds {len} values, data has {}",
                    data.len()
                ),
            });
        }
        // Not `empty`: the copy writes every element, so a poison fill
        // (which would be ordered before it, and harmless) is wasted work.
        let t = self.allocate(shape);
        self.write(&t, data)?;
        Ok(t)
    }

    /// Overwrites an existing tensor's contents from the host, in program
    /// order: the data goes into staging memory and a copy is *recorded*
    /// into the pending encoder. (A `queue.write_buffer` would land before
    /// the whole next submission, i.e. before kernels recorded earlier — a
    /// recorded zero-fill of the same tensor would then overwrite the data,
    /// which is how restored optimizer moments were once lost. Nothing in
    /// the runtime uses `queue.write_buffer`.)
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if t.len() != data.len() {
            return Err(GpuError::Shape {
                op: "write",
                message: format!("tensor holds {} values, data has {}", t.len(), data.len()),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let size = wgpu::BufferSize::new(bytes.len() as u64).expect("non-empty");
        let mut guard = lock(&self.encoder);
        let encoder = self.pending_encoder(&mut guard);
        if size.get() <= BELT_CHUNK_BYTES {
            lock(&self.belt)
                .write_buffer(encoder, t.buffer(), 0, size)
                .copy_from_slice(bytes);
        } else {
            // The belt keeps every chunk it ever allocated, so a large
            // one-off upload (a whole dataset) gets a staging buffer of its
            // own, freed once the copy recorded from it has run.
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("large write"),
                size: size.get(),
                usage: wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            });
            staging
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| GpuError::Device(format!("mapping a staging buffer: {e}")))?
                .copy_from_slice(bytes);
            staging.unmap();
            encoder.copy_buffer_to_buffer(&staging, 0, t.buffer(), 0, size.get());
        }
        self.note(|| Recorded::Write { bytes: size.get() });
        Ok(())
    }

    /// A tensor filled with `value`, recorded in program order.
    pub fn full(&self, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = self.allocate(shape);
        self.fill(&t, value)?;
        Ok(t)
    }

    /// Records `t[..] = value` in program order. Zero is a buffer clear;
    /// any other value runs the runtime's own fill shader
    /// (`shaders/fill.wgsl`, split by the binding planner), so the runtime
    /// depends on no kernel family.
    pub fn fill(&self, t: &Tensor, value: f32) -> Result<()> {
        if t.is_empty() {
            return Ok(());
        }
        if value.to_bits() == 0 {
            let mut guard = lock(&self.encoder);
            self.pending_encoder(&mut guard).clear_buffer(
                t.buffer(),
                0,
                Some((t.len() * 4) as u64),
            );
            drop(guard);
            self.note(|| Recorded::Clear {
                bytes: (t.len() * 4) as u64,
            });
            return Ok(());
        }
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct Params {
            n: u32,
            value: f32,
        }
        let kernel = FILL.kernel("fill");
        for r in self.planner("fill").flat(t.len(), 1)? {
            let p = Params {
                n: r.len() as u32,
                value,
            };
            self.launch_threads(
                kernel,
                &[(0, t.range(r.start, r.len()))],
                &p,
                r.len() as u64,
            )?;
        }
        Ok(())
    }

    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        self.full(shape, 0.0)
    }

    /// Returns the compiled pipeline for a kernel, compiling it on first use.
    pub fn kernel(&self, kernel: Kernel) -> Result<Arc<CompiledKernel>> {
        lock(&self.pipelines).get(&self.device, kernel)
    }

    /// The pending command encoder, created on first use after a flush.
    fn pending_encoder<'a>(
        &self,
        guard: &'a mut MutexGuard<'_, Option<wgpu::CommandEncoder>>,
    ) -> &'a mut wgpu::CommandEncoder {
        guard.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("step"),
                })
        })
    }

    /// Records one dispatch of `kernel` into the pending encoder.
    ///
    /// `args` maps `@binding` indices to tensor ranges; bindings the entry
    /// point does not use are ignored, and a used one that is missing is an
    /// error. `params` is written as immediates (at most 64 bytes).
    pub fn launch<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        args: &[(u32, Arg<'_>)],
        params: &P,
        groups: [u32; 3],
    ) -> Result<()> {
        if groups.contains(&0) {
            return Ok(());
        }
        let compiled = self.kernel(kernel)?;
        let err = |message: String| GpuError::Launch {
            kernel: format!("{}::{}", kernel.shader.name, kernel.entry),
            message,
        };
        let max_groups = self
            .report
            .limits
            .max_compute_workgroups_per_dimension
            .min(MAX_GROUPS_PER_DIM);
        if groups.iter().any(|&g| g > max_groups) {
            return Err(err(format!(
                "grid {groups:?} exceeds {max_groups} workgroups per dimension (use launch_linear)"
            )));
        }
        let bytes = bytemuck::bytes_of(params);
        if bytes.len() > IMMEDIATE_BYTES as usize || bytes.len() % 4 != 0 {
            return Err(err(format!(
                "params are {} bytes; immediates take a multiple of 4 up to {IMMEDIATE_BYTES}",
                bytes.len()
            )));
        }
        let max_binding = self.max_binding_bytes();
        let planner = self.planner(kernel.entry);
        let mut ranges = Vec::with_capacity(compiled.bindings.len());
        let mut key = BindGroupKey {
            pipeline: compiled.id,
            entries: Vec::with_capacity(compiled.bindings.len()),
        };
        for &binding in &compiled.bindings {
            let Some((_, arg)) = args.iter().find(|(b, _)| *b == binding) else {
                return Err(err(format!(
                    "binding {binding} is used but was not supplied"
                )));
            };
            let size = arg.len_elems * 4;
            if !planner.check_offset(arg.offset_elems) {
                return Err(err(format!(
                    "binding {binding} starts at element {}, not a multiple of the storage offset alignment ({} elements); plan the launch with Gpu::planner",
                    arg.offset_elems,
                    planner.align_elems()
                )));
            }
            if size > max_binding {
                return Err(err(format!(
                    "binding {binding} is {size} bytes, over the {max_binding}-byte storage binding limit; the launcher must split it"
                )));
            }
            // A zero-length binding is invalid; bind 4 bytes instead (the
            // kernel is told the length and never reads it).
            let size = size.max(4);
            key.entries
                .push((binding, arg.tensor.buffer_id(), arg.offset_elems * 4, size));
            ranges.push((binding, arg.tensor.buffer(), arg.offset_elems * 4, size));
        }
        let bind_group = lock(&self.bind_groups).get_or_create(key, || {
            let entries: Vec<wgpu::BindGroupEntry<'_>> = ranges
                .iter()
                .map(|&(binding, buffer, offset, size)| wgpu::BindGroupEntry {
                    binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset,
                        size: std::num::NonZeroU64::new(size),
                    }),
                })
                .collect();
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry),
                layout: &compiled.layout,
                entries: &entries,
            })
        });
        // Profiling on: this dispatch's pass writes a timestamp at its
        // beginning and end (the profiler lock is taken before the encoder's).
        let stamps = if self.profiling.load(std::sync::atomic::Ordering::Relaxed) {
            let stage = *lock(&self.stage);
            // The bytes a dispatch moves, counted as its bound ranges (each
            // read or written once): exact for elementwise kernels, the
            // compulsory traffic for the others.
            let bytes = ranges.iter().map(|r| r.3).sum();
            let flops = self
                .pending_flops
                .swap(0, std::sync::atomic::Ordering::Relaxed);
            lock(&self.profiler).as_mut().map(|p| {
                p.next(
                    &self.device,
                    format!("{}::{}", kernel.shader.name, kernel.entry),
                    stage,
                    bytes,
                    flops,
                )
            })
        } else {
            None
        };
        let mut guard = lock(&self.encoder);
        let encoder = self.pending_encoder(&mut guard);
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.entry),
                timestamp_writes: stamps.as_ref().map(|(set, index)| {
                    wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: Some(*index),
                        end_of_pass_write_index: Some(*index + 1),
                    }
                }),
            });
            pass.set_pipeline(&compiled.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            if !bytes.is_empty() {
                pass.set_immediates(0, bytes);
            }
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        drop(guard);
        self.note(|| Recorded::Dispatch {
            kernel: format!("{}::{}", kernel.shader.name, kernel.entry),
            groups,
        });
        Ok(())
    }

    /// Launches `total` workgroups of a kernel that indexes them linearly,
    /// folding the count into a 2-D grid when it exceeds 65,535. The shader
    /// recovers the index as `wid.x + wid.y * nwg.x` and must bounds-check it,
    /// since the folded grid may round up.
    pub fn launch_linear<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        args: &[(u32, Arg<'_>)],
        params: &P,
        total: u64,
    ) -> Result<()> {
        self.launch(kernel, args, params, fold_grid(total))
    }

    /// Launches a 1-D kernel (`@workgroup_size(x)`) over `threads`
    /// invocations: the workgroup count comes from the shader's own
    /// `@workgroup_size` (naga reflection), so the two cannot disagree.
    /// Folded like [`Gpu::launch_linear`].
    pub fn launch_threads<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        args: &[(u32, Arg<'_>)],
        params: &P,
        threads: u64,
    ) -> Result<()> {
        let per_group = self.kernel(kernel)?.linear_size()?;
        self.launch_linear(kernel, args, params, threads.div_ceil(per_group as u64))
    }

    /// Records a copy of `len` elements from `src[src_offset..]` into
    /// `dst[dst_offset..]` (e.g. a step's loss into a loss history, so the
    /// host reads many steps' losses with one readback).
    pub fn copy_region(
        &self,
        src: &Tensor,
        src_offset: usize,
        dst: &Tensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        if src_offset + len > src.len() || dst_offset + len > dst.len() {
            return Err(GpuError::Shape {
                op: "copy_region",
                message: format!(
                    "{len} values from {src_offset} of {:?} to {dst_offset} of {:?}",
                    src.shape(),
                    dst.shape()
                ),
            });
        }
        let mut guard = lock(&self.encoder);
        let encoder = self.pending_encoder(&mut guard);
        encoder.copy_buffer_to_buffer(
            src.buffer(),
            (src_offset * 4) as u64,
            dst.buffer(),
            (dst_offset * 4) as u64,
            (len * 4) as u64,
        );
        drop(guard);
        self.note(|| Recorded::Copy {
            bytes: (len * 4) as u64,
        });
        Ok(())
    }

    /// Submits everything recorded so far (one submit). Does not wait.
    pub fn flush(&self) -> Result<()> {
        // Take and submit under the encoder lock, so that with several
        // threads recording (the tests) encoders are submitted in the order
        // they were taken: otherwise a thread could submit its later commands
        // (a readback copy) while another thread still holds the encoder with
        // its earlier ones, and read stale data.
        let mut guard = lock(&self.encoder);
        if let Some(encoder) = guard.take() {
            // The belt's staging chunks must be unmapped before the copies
            // recorded from them are submitted, and recalled after.
            let mut belt = lock(&self.belt);
            belt.finish();
            self.queue.submit(Some(encoder.finish()));
            belt.recall();
            self.submits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        drop(guard);
        self.check_errors()
    }

    /// Records `work` between two GPU timestamps and returns the GPU time in
    /// seconds, or `None` when the adapter has no timestamp queries (callers
    /// then fall back to wall clock around `flush` + `wait`). Flushes and waits.
    pub fn time_on_gpu(&self, work: impl FnOnce() -> Result<()>) -> Result<Option<f64>> {
        if !self.report.timestamp_queries {
            work()?;
            self.flush()?;
            self.wait()?;
            return Ok(None);
        }
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        // An empty pass whose only job is to write a timestamp: with the
        // TIMESTAMP_QUERY feature alone, timestamps can only be written at
        // pass boundaries.
        let mark = |index: u32| {
            let mut guard = lock(&self.encoder);
            let encoder = self.pending_encoder(&mut guard);
            let _pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timestamp"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(index),
                    end_of_pass_write_index: None,
                }),
            });
        };
        mark(0);
        work()?;
        mark(1);
        let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut guard = lock(&self.encoder);
            if let Some(encoder) = guard.as_mut() {
                encoder.resolve_query_set(&queries, 0..2, &resolved, 0);
                encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, 16);
            }
        }
        self.flush()?;
        let slice = staging.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        self.wait()?;
        let ticks: [u64; 2] = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            let v = bytemuck::cast_slice::<u8, u64>(&view);
            [v[0], v[1]]
        };
        staging.unmap();
        let period_ns = self.queue.get_timestamp_period() as f64;
        Ok(Some(
            ticks[1].saturating_sub(ticks[0]) as f64 * period_ns * 1e-9,
        ))
    }

    /// Submits so far on this device.
    pub fn submits(&self) -> u64 {
        self.submits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Labels the dispatches recorded from now on with `stage` in a profile
    /// (e.g. "static graph"); costs one uncontended lock, profile or not.
    pub fn set_stage(&self, stage: &'static str) {
        *lock(&self.stage) = stage;
    }

    /// The stage label dispatches get now.
    pub fn stage(&self) -> &'static str {
        *lock(&self.stage)
    }

    /// Opens a profile: every dispatch from now until [`Gpu::finish_profile`]
    /// is timed on the GPU. An error when the adapter has no timestamp
    /// queries. Flushes first, so earlier work is not in the profile.
    pub fn start_profile(&self) -> Result<()> {
        if !self.report.timestamp_queries {
            return Err(GpuError::MissingCapability {
                adapter: self.adapter_name().to_string(),
                what: "timestamp queries (TIMESTAMP_QUERY), which a profile needs".into(),
            });
        }
        self.flush()?;
        *lock(&self.profiler) = Some(Profiler::new());
        self.profiling
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Closes the profile: submits, waits, and returns every profiled
    /// dispatch in recording order with its GPU begin and end (seconds from
    /// the first one's beginning).
    pub fn finish_profile(&self) -> Result<Vec<DispatchTime>> {
        self.profiling
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let Some(profiler) = lock(&self.profiler).take() else {
            return Ok(Vec::new());
        };
        let per_set = (profile::QUERIES_PER_SET / 2) as usize;
        let mut staging = Vec::new();
        {
            let mut guard = lock(&self.encoder);
            let encoder = self.pending_encoder(&mut guard);
            for (j, set) in profiler.sets.iter().enumerate() {
                let used = (profiler.labels.len() - j * per_set).min(per_set) as u32 * 2;
                let bytes = used as u64 * 8;
                let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile timestamps"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let read = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.resolve_query_set(set, 0..used, &resolved, 0);
                encoder.copy_buffer_to_buffer(&resolved, 0, &read, 0, bytes);
                staging.push(read);
            }
        }
        self.flush()?;
        for read in &staging {
            read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        }
        self.wait()?;
        let mut ticks: Vec<u64> = Vec::with_capacity(profiler.labels.len() * 2);
        for read in &staging {
            let view = read
                .slice(..)
                .get_mapped_range()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            ticks.extend_from_slice(bytemuck::cast_slice::<u8, u64>(&view));
            drop(view);
            read.unmap();
        }
        let period_s = self.queue.get_timestamp_period() as f64 * 1e-9;
        let origin = ticks.first().copied().unwrap_or(0);
        let at = |tick: u64| tick.saturating_sub(origin) as f64 * period_s;
        Ok(profiler
            .labels
            .into_iter()
            .enumerate()
            .map(|(i, (kernel, stage, bytes, flops))| DispatchTime {
                kernel,
                stage,
                bytes,
                flops,
                begin_s: at(ticks[2 * i]),
                end_s: at(ticks[2 * i + 1]),
            })
            .collect())
    }

    /// Waits until the device is idle.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Device(e.to_string()))?;
        self.check_errors()
    }

    fn check_errors(&self) -> Result<()> {
        let mut errors = lock(&self.errors);
        if errors.is_empty() {
            Ok(())
        } else {
            let all = errors.join("; ");
            errors.clear();
            Err(GpuError::Device(all))
        }
    }

    /// Flushes, copies `t` to a mappable buffer, waits, and returns its values.
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        let bytes = (t.len() * 4) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut guard = lock(&self.encoder);
            let encoder = self.pending_encoder(&mut guard);
            encoder.copy_buffer_to_buffer(t.buffer(), 0, &staging, 0, bytes);
        }
        self.flush()?;
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        // map_async only queues the request; the callback fires inside poll,
        // which also waits for the submission that fills `staging`.
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let data = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        Ok(data)
    }

    /// Reads a one-element tensor.
    pub fn read_scalar(&self, t: &Tensor) -> Result<f32> {
        let v = self.read(t)?;
        v.first().copied().ok_or_else(|| GpuError::Shape {
            op: "read_scalar",
            message: "empty tensor".into(),
        })
    }
}

/// Folds a linear workgroup count into a grid whose dimensions stay ≤ 65,535.
pub fn fold_grid(total: u64) -> [u32; 3] {
    let max = MAX_GROUPS_PER_DIM as u64;
    if total <= max {
        [total as u32, 1, 1]
    } else {
        let y = total.div_ceil(max);
        let x = total.div_ceil(y);
        [x as u32, y as u32, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_grids_cover_the_count_and_respect_the_limit() {
        for total in [
            1u64,
            65_535,
            65_536,
            200_000,
            70_400 * 64 / 64,
            4_294_836_225,
        ] {
            let [x, y, z] = fold_grid(total);
            assert!(x <= MAX_GROUPS_PER_DIM && y <= MAX_GROUPS_PER_DIM && z == 1);
            assert!(x as u64 * y as u64 >= total, "{total}: {x}x{y}");
            // No more than one row of slack.
            assert!((x as u64) * (y as u64) - total < x as u64);
        }
    }
}

#[cfg(test)]
mod bind_groups {
    use super::Gpu;

    /// A repeated identical launch reuses its bind group; a launch on other
    /// buffers makes a new one; trimming the pool drops entries naming the
    /// freed buffers, and the values stay right throughout.
    #[test]
    fn a_repeated_launch_hits_the_cache_and_trim_invalidates() {
        let gpu = Gpu::new().expect("GPU adapter");
        let x = gpu.upload(&[1.0, 2.0, 3.0], &[3]).unwrap();
        let out = gpu.zeros(&[3]).unwrap();
        let kernel = super::FILL.kernel("fill");
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct P {
            n: u32,
            value: f32,
        }
        let fill = |t: &super::Tensor, value: f32| {
            gpu.launch_threads(kernel, &[(0, t.arg())], &P { n: 3, value }, 3)
                .unwrap()
        };
        let before = gpu.bind_group_stats();
        fill(&out, 1.0);
        fill(&out, 2.0);
        fill(&out, 3.0);
        let after = gpu.bind_group_stats();
        assert_eq!(after.created - before.created, 1, "{after:?}");
        assert_eq!(after.hits - before.hits, 2, "{after:?}");
        fill(&x, 4.0);
        assert_eq!(gpu.bind_group_stats().created - after.created, 1);
        assert_eq!(gpu.read(&out).unwrap(), [3.0; 3]);
        assert_eq!(gpu.read(&x).unwrap(), [4.0; 3]);
        // Free x's buffer: its entry goes, out's stays.
        let entries = super::lock(&gpu.bind_groups).len();
        drop(x);
        gpu.flush().unwrap();
        gpu.trim_pool();
        assert_eq!(super::lock(&gpu.bind_groups).len(), entries - 1);
        fill(&out, 5.0);
        assert_eq!(gpu.read(&out).unwrap(), [5.0; 3]);
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_the_recently_used() {
        let gpu = Gpu::new().expect("GPU adapter");
        let mut cache = super::BindGroupCache::with_capacity(4);
        let layout = gpu
            .kernel(super::FILL.kernel("fill"))
            .unwrap()
            .layout
            .clone();
        let t = gpu.zeros(&[64 * 8]).unwrap();
        let group = |offset: u64| {
            gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: t.buffer(),
                        offset,
                        size: std::num::NonZeroU64::new(256),
                    }),
                }],
            })
        };
        let key = |offset: u64| super::BindGroupKey {
            pipeline: 0,
            entries: vec![(0, t.buffer_id(), offset, 256)],
        };
        for o in 0..4 {
            cache.get_or_create(key(o * 256), || group(o * 256));
        }
        cache.get_or_create(key(0), || panic!("key 0 is cached"));
        // Full: the fifth evicts the least recently used half (1 and 2).
        cache.get_or_create(key(4 * 256), || group(4 * 256));
        assert_eq!(cache.len(), 3);
        cache.get_or_create(key(0), || panic!("key 0 was used recently"));
        assert_eq!(cache.stats().created, 5);
        assert_eq!(cache.stats().hits, 2);
    }
}

#[cfg(test)]
mod ordering {
    use super::Recorded;
    use crate::check::{gpu, gpu_with_binding_limit};

    fn kinds(trace: &[Recorded]) -> Vec<&'static str> {
        trace
            .iter()
            .map(|r| match r {
                Recorded::Dispatch { .. } => "dispatch",
                Recorded::Write { .. } => "write",
                Recorded::Clear { .. } => "clear",
                Recorded::Copy { .. } => "copy",
            })
            .collect()
    }

    /// A buffer released while a recorded kernel still reads it goes to the
    /// next request of its size at once, before any submit (`gpu::pool`),
    /// and the kernel recorded earlier still reads the old contents: reuse
    /// within one recording is ordered like every other command.
    #[test]
    fn a_buffer_released_mid_recording_is_reused_in_program_order() {
        // A device of its own: on the shared one another test's thread
        // could take the released buffer first.
        let gpu = super::Gpu::new().expect("GPU adapter");
        let submits = gpu.submits();
        let a = gpu.upload(&[1.0, 2.0, 3.0, 4.0], &[4]).unwrap();
        let doubled = crate::ops::elementwise::add(&gpu, &a, &a).unwrap();
        let id = a.buffer_id();
        drop(a);
        let b = gpu.full(&[4], 9.0).unwrap();
        assert_eq!(b.buffer_id(), id, "the released buffer was not reused");
        assert_eq!(gpu.submits(), submits, "reused only after a submit");
        assert_eq!(gpu.read(&doubled).unwrap(), [2.0, 4.0, 6.0, 8.0]);
        assert_eq!(gpu.read(&b).unwrap(), [9.0; 4]);
    }

    /// `write` is ordered after kernels recorded before it.
    #[test]
    fn write_after_a_recorded_fill_wins() {
        let gpu = gpu();
        let (t, trace) = gpu.traced(|| {
            let t = gpu.full(&[4], 7.0).unwrap();
            gpu.write(&t, &[1.0, 2.0, 3.0, 4.0]).unwrap();
            t
        });
        assert!(
            matches!(&trace[..], [Recorded::Dispatch { kernel, .. }, Recorded::Write { bytes: 16 }] if kernel == "fill::fill"),
            "{trace:?}"
        );
        let v = gpu.read(&t).unwrap();
        assert_eq!(
            v,
            [1.0, 2.0, 3.0, 4.0],
            "a write recorded after a fill must win"
        );
    }

    /// A value written, copied by recorded work, then overwritten: the copy
    /// sees the first value (a queue write would land both before the copy).
    #[test]
    fn work_between_two_writes_sees_the_first() {
        let gpu = gpu();
        let t = gpu.upload(&[1.0, 2.0], &[2]).unwrap();
        let seen = gpu.zeros(&[2]).unwrap();
        gpu.copy_region(&t, 0, &seen, 0, 2).unwrap();
        gpu.write(&t, &[5.0, 6.0]).unwrap();
        assert_eq!(gpu.read(&seen).unwrap(), [1.0, 2.0]);
        assert_eq!(gpu.read(&t).unwrap(), [5.0, 6.0]);
    }

    /// `upload` records its copy in program order too: after the recorded
    /// work before it, before the work after it; a large one (above the
    /// staging belt's chunk) takes the same ordered path.
    #[test]
    fn upload_after_recorded_work_is_recorded_in_order() {
        let gpu = gpu();
        let n = (super::BELT_CHUNK_BYTES / 4) as usize + 5;
        let big: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let ((a, c), trace) = gpu.traced(|| {
            let a = gpu.full(&[3], 2.0).unwrap();
            let b = gpu.upload(&[1.0, 2.0, 3.0], &[3]).unwrap();
            gpu.copy_region(&b, 0, &a, 1, 2).unwrap();
            (a, gpu.upload(&big, &[n]).unwrap())
        });
        assert_eq!(
            kinds(&trace),
            ["dispatch", "write", "copy", "write"],
            "{trace:?}"
        );
        assert_eq!(gpu.read(&a).unwrap(), [2.0, 1.0, 2.0]);
        assert_eq!(gpu.read(&c).unwrap(), big);
    }

    /// The runtime fills on its own: zeros by buffer clear, other values by
    /// its fill shader, split by the planner above the binding limit, and
    /// the poison of a new tensor is one such fill.
    #[test]
    fn runtime_fills_clear_zeros_and_split_large_tensors() {
        let gpu = gpu_with_binding_limit(1024);
        let (z, trace) = gpu.traced(|| gpu.zeros(&[1000]).unwrap());
        assert_eq!(trace, [Recorded::Clear { bytes: 4000 }]);
        let (_, trace) = gpu.traced(|| gpu.empty(&[1000]));
        // 1000 values in 256-value bindings: four launches.
        assert_eq!(kinds(&trace), ["dispatch"; 4], "{trace:?}");
        let (f, trace) = gpu.traced(|| gpu.full(&[1000], -3.5).unwrap());
        assert_eq!(kinds(&trace), ["dispatch"; 4], "{trace:?}");
        assert!(gpu.read(&z).unwrap().iter().all(|&v| v == 0.0));
        assert!(gpu.read(&f).unwrap().iter().all(|&v| v == -3.5));
    }

    /// `empty` returns no Result, so a poison fill it cannot record (here: a
    /// binding limit below one alignment unit, which no fill can be planned
    /// in) is reported by the next flush instead of being dropped.
    #[test]
    fn a_failed_poison_fill_is_reported_at_the_next_flush() {
        let gpu = gpu_with_binding_limit(128); // 32 values; the alignment is 64
        let t = gpu.empty(&[100]);
        assert_eq!(t.shape(), [100]);
        let e = gpu.flush().unwrap_err().to_string();
        assert!(
            e.contains("poisoning a new tensor") && e.contains("128-byte"),
            "{e}"
        );
        gpu.flush().expect("the error is reported once");
    }

    /// A trace holds only its own thread's commands.
    #[test]
    fn traces_of_other_threads_do_not_mix() {
        let gpu = gpu();
        let ((), trace) = gpu.traced(|| {
            std::thread::scope(|s| {
                s.spawn(|| gpu.full(&[8], 1.0).unwrap());
            });
            gpu.zeros(&[8]).unwrap();
        });
        assert_eq!(trace, [Recorded::Clear { bytes: 32 }]);
    }
}
