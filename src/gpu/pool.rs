//! A pool of storage buffers reused across training steps.
//!
//! Buffers are pooled by size class (the next power of two of the byte size,
//! at least 256 bytes). Each buffer gets an id when it is created, unique on
//! its device; the bind-group cache keys on it (`bind_cache.rs`), and
//! [`BufferPool::trim`] reports the ids it frees so the cache can drop the
//! bind groups that would otherwise keep those buffers alive.
//!
//! A buffer released while commands that use it are still being recorded goes
//! into `pending` and becomes reusable only after that recording is submitted.
//! Every host write is recorded in program order now (`Gpu::write`), so
//! reusing it earlier would also be correct; the rule is kept because it
//! costs nothing and keeps a buffer's users within one submission.

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

/// A device buffer and the id the pool gave it.
#[derive(Debug)]
pub struct PooledBuffer {
    pub id: u64,
    pub buffer: wgpu::Buffer,
}

#[derive(Default)]
pub struct BufferPool {
    free: HashMap<u64, Vec<Arc<PooledBuffer>>>,
    pending: Vec<Arc<PooledBuffer>>,
    next_id: u64,
    /// Bytes currently allocated from the device (free + in use).
    pub allocated_bytes: u64,
    /// High-water mark of `allocated_bytes`.
    pub peak_bytes: u64,
}

impl BufferPool {
    pub fn acquire(&mut self, device: &wgpu::Device, bytes: u64) -> Arc<PooledBuffer> {
        let class = size_class(bytes);
        if let Some(buf) = self.free.get_mut(&class).and_then(Vec::pop) {
            return buf;
        }
        self.allocated_bytes += class;
        self.peak_bytes = self.peak_bytes.max(self.allocated_bytes);
        self.next_id += 1;
        Arc::new(PooledBuffer {
            id: self.next_id,
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("stptf pooled"),
                size: class,
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            }),
        })
    }

    /// Called when the last tensor holding `buf` is dropped.
    pub fn release(&mut self, buf: Arc<PooledBuffer>) {
        self.pending.push(buf);
    }

    /// Takes the buffers released so far. Called while the encoder is taken
    /// for submission (under its lock), so every command that used them is in
    /// that encoder or an earlier one.
    pub fn take_pending(&mut self) -> Vec<Arc<PooledBuffer>> {
        std::mem::take(&mut self.pending)
    }

    /// Called right after the submission that `take_pending` belonged to:
    /// those buffers may be reused. Buffers released after the encoder was
    /// taken stay pending: their last users may be in the next encoder.
    pub fn after_submit(&mut self, released: Vec<Arc<PooledBuffer>>) {
        for buf in released {
            self.free.entry(buf.buffer.size()).or_default().push(buf);
        }
    }

    /// Frees every idle buffer (for memory reports and long-lived processes)
    /// and returns their ids.
    pub fn trim(&mut self) -> Vec<u64> {
        let mut ids = Vec::new();
        for (_, bufs) in self.free.drain() {
            for b in bufs {
                self.allocated_bytes -= b.buffer.size();
                ids.push(b.id);
            }
        }
        ids
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
