//! A cache of bind groups behind a typed key, as web-rwkv's `BindGroupKey`.
//!
//! A training step launches the same kernels on the same pooled buffers
//! every time (the pool hands back the same buffers for the same shapes), so
//! creating a bind group per dispatch repeats identical work. The key is the
//! pipeline's id and, per binding, the buffer's pool id, offset and size:
//! exactly what a bind group holds, so a hit binds the same memory. The pool
//! never destroys a buffer except in `trim`, which reports the ids it freed;
//! [`BindGroupCache::forget`] then drops every entry naming one, since a
//! cached bind group keeps its buffers alive. The cache is bounded: when it
//! is full, the least recently used half is dropped.

use std::collections::HashMap;

/// What identifies a bind group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BindGroupKey {
    /// `CompiledKernel::id`.
    pub pipeline: u64,
    /// Per used binding, in binding order: (binding, buffer id, offset, size) in bytes.
    pub entries: Vec<(u32, u64, u64, u64)>,
}

/// How many bind groups were created and how many launches reused one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindGroupStats {
    pub created: u64,
    pub hits: u64,
}

pub struct BindGroupCache {
    entries: HashMap<BindGroupKey, (wgpu::BindGroup, u64)>,
    capacity: usize,
    clock: u64,
    stats: BindGroupStats,
}

impl Default for BindGroupCache {
    fn default() -> Self {
        // A training step uses a few hundred distinct bind groups; 4096
        // holds several steps' worth with evaluation batches besides.
        Self::with_capacity(4096)
    }
}

impl BindGroupCache {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(2),
            clock: 0,
            stats: BindGroupStats::default(),
        }
    }

    /// The cached bind group for `key`, or the one `create` makes (cached).
    pub fn get_or_create(
        &mut self,
        key: BindGroupKey,
        create: impl FnOnce() -> wgpu::BindGroup,
    ) -> wgpu::BindGroup {
        self.clock += 1;
        if let Some((group, used)) = self.entries.get_mut(&key) {
            *used = self.clock;
            self.stats.hits += 1;
            return group.clone();
        }
        if self.entries.len() >= self.capacity {
            self.evict_older_half();
        }
        let group = create();
        self.stats.created += 1;
        self.entries.insert(key, (group.clone(), self.clock));
        group
    }

    fn evict_older_half(&mut self) {
        let mut uses: Vec<u64> = self.entries.values().map(|(_, u)| *u).collect();
        uses.sort_unstable();
        // The older half goes: everything used no later than the median.
        let cut = uses[(uses.len() / 2).saturating_sub(1)];
        self.entries.retain(|_, (_, u)| *u > cut);
    }

    /// Drops every entry that binds one of `buffers` (pool ids being freed).
    pub fn forget(&mut self, buffers: &[u64]) {
        if buffers.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<u64> = buffers.iter().copied().collect();
        self.entries
            .retain(|key, _| !key.entries.iter().any(|e| gone.contains(&e.1)));
    }

    pub fn stats(&self) -> BindGroupStats {
        self.stats
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
