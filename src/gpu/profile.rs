//! GPU time per dispatch, for `stptf profile`.
//!
//! While a profile is open ([`crate::gpu::Gpu::start_profile`]), every
//! dispatch is recorded in a compute pass of its own with timestamp writes at
//! its beginning and end (with the TIMESTAMP_QUERY feature alone, timestamps
//! can only be written at pass boundaries, and each launch already has its
//! own pass). Each dispatch is labelled with its kernel and the stage the
//! caller set ([`crate::gpu::Gpu::set_stage`]). With no profile open nothing
//! is added to a launch but one relaxed atomic load: normal training pays
//! nothing.

/// Queries per query set: wgpu's maximum (`QUERY_SET_MAX_QUERIES`), two per
/// dispatch; a step with more dispatches gets more sets.
pub const QUERIES_PER_SET: u32 = 4096;

/// One profiled dispatch: its kernel (`shader::entry`), the stage it was
/// recorded in, and its GPU begin and end, in seconds from the first
/// profiled dispatch's beginning.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DispatchTime {
    pub kernel: String,
    pub stage: &'static str,
    /// Bytes of the ranges it bound (read or written once each).
    pub bytes: u64,
    /// Floating-point operations its op announced (0: none counted; the
    /// row is then rated in GB/s).
    pub flops: u64,
    pub begin_s: f64,
    pub end_s: f64,
}

impl DispatchTime {
    pub fn seconds(&self) -> f64 {
        (self.end_s - self.begin_s).max(0.0)
    }
}

/// The open profile: query sets so far and one label per dispatch.
pub(super) struct Profiler {
    pub sets: Vec<wgpu::QuerySet>,
    pub labels: Vec<(String, &'static str, u64, u64)>,
}

impl Profiler {
    pub fn new() -> Self {
        Self {
            sets: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// The query set and the index of the beginning timestamp for the next
    /// dispatch (its end is the index after), labelling it.
    pub fn next(
        &mut self,
        device: &wgpu::Device,
        kernel: String,
        stage: &'static str,
        bytes: u64,
        flops: u64,
    ) -> (wgpu::QuerySet, u32) {
        let per_set = (QUERIES_PER_SET / 2) as usize;
        let i = self.labels.len();
        if i / per_set == self.sets.len() {
            self.sets
                .push(device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERIES_PER_SET,
                }));
        }
        self.labels.push((kernel, stage, bytes, flops));
        (self.sets[i / per_set].clone(), 2 * (i % per_set) as u32)
    }
}
