//! Host batches onto the GPU without per-step allocation.
//!
//! The host side already overlaps with the GPU: the `Prefetcher` assembles
//! batch k+1 on its own thread while step k computes. This module keeps two
//! persistent sets of device buffers and alternates between them, so an
//! upload never allocates. `Gpu::write` records its copy in program order,
//! so even one set would be correct; the second set keeps batch k's tensors
//! intact while anything recorded for step k (or a caller holding them, such
//! as an evaluation loop that records several batches before reading back)
//! may still use them after batch k+1 is uploaded.

use crate::data::batch::HostBatch;
use crate::gpu::{Gpu, Result, Tensor};

/// A batch resident on the GPU.
pub struct DeviceBatch {
    /// [B, N, T]
    pub x: Tensor,
    /// [B, T], 1 for real frames, 0 for padding.
    pub valid: Tensor,
    /// [B] class indices stored as f32 (the runtime has f32 tensors only).
    pub labels: Tensor,
    pub b: usize,
    pub n: usize,
    pub t: usize,
}

#[derive(Default)]
pub struct BatchUploader {
    sets: [Option<DeviceBatch>; 2],
    next: usize,
    /// Batches uploaded so far.
    pub uploads: u64,
}

impl BatchUploader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `batch` into the next buffer set (allocated on first use or when
    /// the shape changes) and returns it.
    pub fn upload(&mut self, gpu: &Gpu, batch: &HostBatch) -> Result<&DeviceBatch> {
        let slot = self.next;
        self.next = 1 - self.next;
        let fits = self.sets[slot]
            .as_ref()
            .is_some_and(|d| (d.b, d.n, d.t) == (batch.b, batch.n, batch.t));
        let labels: Vec<f32> = batch.labels.iter().map(|&l| l as f32).collect();
        if fits {
            let d = self.sets[slot].as_ref().expect("checked above");
            gpu.write(&d.x, &batch.x)?;
            gpu.write(&d.valid, &batch.valid)?;
            gpu.write(&d.labels, &labels)?;
        } else {
            self.sets[slot] = Some(DeviceBatch {
                x: gpu.upload(&batch.x, &[batch.b, batch.n, batch.t])?,
                valid: gpu.upload(&batch.valid, &[batch.b, batch.t])?,
                labels: gpu.upload(&labels, &[batch.b])?,
                b: batch.b,
                n: batch.n,
                t: batch.t,
            });
        }
        self.uploads += 1;
        Ok(self.sets[slot].as_ref().expect("just filled"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::gpu;
    use crate::data::batch::Batcher;
    use crate::data::dataset::Dataset;
    use crate::data::synth::{generate, SynthConfig};

    #[test]
    fn uploaded_batches_match_the_host_and_alternate_buffers() {
        let gpu = gpu();
        let cfg = SynthConfig {
            scans: 8,
            regions: 5,
            length: 40,
            ..SynthConfig::default()
        };
        let (arrays, labels) = generate(&cfg);
        let ds = Dataset::from_arrays(arrays, labels, vec!["a".into(), "b".into()], 32).unwrap();
        let batcher = Batcher {
            batch_size: 3,
            crop_length: 32,
            seed: 7,
            drop_last: true,
            eval_crops: 2,
        };
        let scans: Vec<usize> = (0..ds.scans.len()).collect();
        let mut up = BatchUploader::new();
        let mut previous: Option<Tensor> = None;
        for host in batcher.epoch(&ds, &scans, 0) {
            let dev = up.upload(gpu, &host).unwrap();
            assert_eq!(gpu.read(&dev.x).unwrap(), host.x);
            assert_eq!(gpu.read(&dev.valid).unwrap(), host.valid);
            let l: Vec<f32> = host.labels.iter().map(|&l| l as f32).collect();
            assert_eq!(gpu.read(&dev.labels).unwrap(), l);
            if let Some(p) = &previous {
                assert!(
                    !p.same_buffer(&dev.x),
                    "consecutive batches must use different buffer sets"
                );
            }
            previous = Some(dev.x.clone());
        }
        assert_eq!(up.uploads, 2);
    }
}
