//! A pool of storage buffers reused across and within training steps.
//!
//! Buffers are pooled by size class: eight classes per power of two above
//! 4 KiB (a request wastes at most 1/8 of its size, where powers of two
//! wasted up to half: an ABIDE node-feature tensor of 105 MB took 128 MiB),
//! powers of two below, at least 256 bytes. Each buffer gets an id when it
//! is created, unique on its device; the bind-group cache keys on it
//! (`bind_cache.rs`), and [`BufferPool::trim`] reports the ids it frees so
//! the cache can drop the bind groups that would otherwise keep those
//! buffers alive.
//!
//! A released buffer is reusable at once, by commands recorded after its
//! release, even while its earlier users still sit unsubmitted in the same
//! encoder. That is correct because every command that touches a pooled
//! buffer is recorded into the one encoder in program order: kernels,
//! clears, copies, and host writes too (`Gpu::write` records a copy from
//! staging memory; nothing uses `queue.write_buffer`, which would land
//! before earlier-recorded work). wgpu orders the passes of one encoder and
//! places the barriers between a read and a later write of the same buffer.
//! It is what lets a step's backward reuse the memory of forward tensors it
//! no longer needs (`autograd::Tape::backward`) instead of the step's peak
//! being the sum of everything it ever allocated.

use std::collections::HashMap;
use std::sync::Arc;

/// The usage every pooled storage buffer gets: bound as storage, written by
/// uploads and copies, read back by copies.
pub const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Size class of a request, in bytes: powers of two up to 4 KiB, then
/// eight evenly spaced classes per octave (multiples of 512 bytes, so every
/// class keeps wgpu's 4-byte copy alignment).
pub fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(256);
    let pow = b.next_power_of_two();
    if pow <= 4096 {
        return pow;
    }
    let step = pow / 16; // an eighth of the octave (pow/2 .. pow)
    b.div_ceil(step) * step
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
    next_id: u64,
    /// Bytes currently allocated from the device (free + in use).
    pub allocated_bytes: u64,
    /// High-water mark of `allocated_bytes`.
    pub peak_bytes: u64,
    /// Bytes held by live tensors (allocated less the free lists).
    pub in_use_bytes: u64,
    /// High-water mark of `in_use_bytes` since the last
    /// [`BufferPool::reset_peak_in_use`]: the memory live tensors needed at
    /// once. `peak_bytes` above it is what the size classes' free lists held
    /// unused (a free buffer of one class cannot serve another).
    pub peak_in_use_bytes: u64,
}

impl BufferPool {
    pub fn acquire(&mut self, device: &wgpu::Device, bytes: u64) -> Arc<PooledBuffer> {
        let class = size_class(bytes);
        self.in_use_bytes += class;
        self.peak_in_use_bytes = self.peak_in_use_bytes.max(self.in_use_bytes);
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

    /// Called when the last tensor holding `buf` is dropped: the buffer is
    /// free for the next request of its class (see the module comment for
    /// why that is safe before the recording is submitted).
    pub fn release(&mut self, buf: Arc<PooledBuffer>) {
        self.in_use_bytes -= buf.buffer.size();
        self.free.entry(buf.buffer.size()).or_default().push(buf);
    }

    /// Starts a new high-water mark of the bytes in use from what is in use now.
    pub fn reset_peak_in_use(&mut self) {
        self.peak_in_use_bytes = self.in_use_bytes;
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
    fn size_classes_are_powers_of_two_then_eighths_of_an_octave() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 512);
        assert_eq!(size_class(4096), 4096);
        // 4097 lies in the octave (4 KiB, 8 KiB]: classes of 512 bytes.
        assert_eq!(size_class(4097), 4096 + 512);
        // The GNN benchmark's 17.2 MiB operand: 18 MiB, where it took 32.
        assert_eq!(size_class(70_400 * 64 * 4), 18 * 1024 * 1024);
        // The ABIDE node features [32, 128, 200, 32] f32: 100 MiB, rounded up
        // to the next 8 MiB class of the 64..128 MiB octave (was 128 MiB).
        assert_eq!(size_class(104_857_600), 104 * 1024 * 1024);
        for bytes in [
            257u64,
            4097,
            5000,
            1 << 20,
            (1 << 20) + 1,
            123_456_789,
            3 << 30,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes && c % 4 == 0, "{bytes} -> {c}");
            assert!(
                c - bytes <= bytes / 8 + 256,
                "{bytes} -> {c}: wastes more than 1/8"
            );
        }
    }
}
