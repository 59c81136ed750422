//! Tensors: f32 GPU buffers with a shape.
//!
//! A `Tensor` is a cheap handle (an `Arc` to a pooled buffer plus a shape).
//! Clones and reshapes share the buffer; when the last handle goes, the buffer
//! returns to the pool (see `pool.rs` for when it may be reused).

use std::sync::{Arc, Mutex, Weak};

use super::pool::{BufferPool, PooledBuffer};

struct Storage {
    buffer: Option<Arc<PooledBuffer>>,
    pool: Weak<Mutex<BufferPool>>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let (Some(buffer), Some(pool)) = (self.buffer.take(), self.pool.upgrade()) {
            pool.lock()
                .unwrap_or_else(|p| p.into_inner())
                .release(buffer);
        }
    }
}

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

impl Tensor {
    pub(super) fn new(
        buffer: Arc<PooledBuffer>,
        pool: Weak<Mutex<BufferPool>>,
        shape: Vec<usize>,
    ) -> Self {
        Self {
            storage: Arc::new(Storage {
                buffer: Some(buffer),
                pool,
            }),
            shape,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.pooled().buffer
    }

    /// The id the pool gave this tensor's buffer (unique on its device).
    pub fn buffer_id(&self) -> u64 {
        self.pooled().id
    }

    fn pooled(&self) -> &PooledBuffer {
        // `buffer` is only None during Drop.
        self.storage
            .buffer
            .as_deref()
            .expect("tensor storage is alive")
    }

    /// Same buffer, new shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor, super::GpuError> {
        let len: usize = shape.iter().product();
        if len != self.len() {
            return Err(super::GpuError::Shape {
                op: "reshape",
                message: format!(
                    "{:?} ({} values) to {shape:?} ({len})",
                    self.shape,
                    self.len()
                ),
            });
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            shape: shape.to_vec(),
        })
    }

    /// True when both handles share one buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The whole tensor as a kernel argument.
    pub fn arg(&self) -> Arg<'_> {
        Arg {
            tensor: self,
            offset_elems: 0,
            len_elems: self.len() as u64,
        }
    }

    /// A range of elements as a kernel argument. `offset` must be a multiple
    /// of the storage offset alignment (64 elements on lavapipe): launches
    /// that split work get their ranges from `Gpu::planner`, and `launch`
    /// rejects a misaligned one.
    pub fn range(&self, offset: usize, len: usize) -> Arg<'_> {
        Arg {
            tensor: self,
            offset_elems: offset as u64,
            len_elems: len as u64,
        }
    }
}

/// A range of a tensor bound to a kernel.
#[derive(Clone, Copy)]
pub struct Arg<'a> {
    pub tensor: &'a Tensor,
    pub offset_elems: u64,
    pub len_elems: u64,
}

impl<'a> From<&'a Tensor> for Arg<'a> {
    fn from(t: &'a Tensor) -> Self {
        t.arg()
    }
}
