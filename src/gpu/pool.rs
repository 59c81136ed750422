//! A pool of storage buffers reused across training steps.
//!
//! Buffers are pooled by size class (the next power of two of the byte size,
//! at least 256 bytes). A buffer released while commands that use it are still
//! being recorded goes into `pending` and becomes reusable only after that
//! recording is submitted: `queue.write_buffer` runs before the whole
//! submission, so handing such a buffer to a new upload in the same step would
//! let the upload overwrite data an earlier recorded kernel still has to read.

use std::collections::HashMap;
use std::sync::Arc;

/// The usage every pooled storage buffer gets: bound as storage, written by
/// uploads and copies, read back by copies.
pub const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Size class of a request, in bytes.
pub fn size_class(bytes: u64) -> u64 {
    bytes.max(256).next_power_of_two()
}

#[derive(Default)]
pub struct BufferPool {
    free: HashMap<u64, Vec<Arc<wgpu::Buffer>>>,
    pending: Vec<Arc<wgpu::Buffer>>,
    /// Bytes currently allocated from the device (free + in use).
    pub allocated_bytes: u64,
    /// High-water mark of `allocated_bytes`.
    pub peak_bytes: u64,
}

impl BufferPool {
    pub fn acquire(&mut self, device: &wgpu::Device, bytes: u64) -> Arc<wgpu::Buffer> {
        let class = size_class(bytes);
        if let Some(buf) = self.free.get_mut(&class).and_then(Vec::pop) {
            return buf;
        }
        self.allocated_bytes += class;
        self.peak_bytes = self.peak_bytes.max(self.allocated_bytes);
        Arc::new(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("stptf pooled"),
            size: class,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        }))
    }

    /// Called when the last tensor holding `buf` is dropped.
    pub fn release(&mut self, buf: Arc<wgpu::Buffer>) {
        self.pending.push(buf);
    }

    /// The buffers released so far. Taken while the encoder they were used
    /// in is taken for submission, so a buffer released afterwards (whose
    /// commands go into the next encoder) stays pending until that one.
    pub fn take_pending(&mut self) -> Vec<Arc<wgpu::Buffer>> {
        std::mem::take(&mut self.pending)
    }

    /// Makes buffers from [`take_pending`](Self::take_pending) reusable, once their
    /// encoder is submitted.
    pub fn recycle(&mut self, released: Vec<Arc<wgpu::Buffer>>) {
        for buf in released {
            self.free.entry(buf.size()).or_default().push(buf);
        }
    }

    /// Frees every idle buffer (for memory reports and long-lived processes).
    pub fn trim(&mut self) {
        for (_, bufs) in self.free.drain() {
            for b in bufs {
                self.allocated_bytes -= b.size();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_to_powers_of_two() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 512);
        assert_eq!(size_class(70_400 * 64 * 4), 32 * 1024 * 1024);
    }
}
