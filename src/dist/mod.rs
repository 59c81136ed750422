//! Data-parallel training: P processes (ranks), one adapter each, share every
//! global batch (docs/scaling.md).
//!
//! Each rank encodes a disjoint, contiguous shard of the batch's scans
//! (rows `rank·B/P ..`). Everything in STPTF is per scan up to the encoder's
//! outputs; what couples the scans of a batch comes after: the projector's
//! BatchNorm and the Barlow Twins standardization and cross-correlation of
//! FGCO. So the ranks all-gather the encoder outputs
//! ([`crate::autograd::Tape::all_gather_rows`]), each computes the projector
//! and the loss on the whole global batch (replicated: a few D×D products),
//! and backpropagates only its own rows into its encoder. The encoder
//! gradients of the ranks then sum to the one-process gradient, and the
//! replicated part's are already whole on every rank; one all-reduce of all
//! gradients ([`all_reduce_gradients`]) sums the first and averages the
//! second, so every rank applies the same AdamW update. This is what
//! PyTorch's SyncBatchNorm plus an all-reduced cross-correlation give, with
//! one collective fewer per BatchNorm.
//!
//! [`Collective`] is what a step needs from the communication engine;
//! [`Single`] is the one-process case (every collective the identity) and,
//! with `--features mpi`, `mpi::MpiWorld` runs over a system MPI.

#[cfg(feature = "mpi")]
pub mod mpi;

use crate::autograd::ParamStore;
use crate::gpu::{Gpu, Tensor};

/// Why a collective failed.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error(
        "rank {rank} of {size}: {waiting_for} did not reach {what} within {seconds} s; it has \
         stopped or hung (its own output, or mpirun's, says why). Raise the limit with \
         STPTF_COLLECTIVE_TIMEOUT=<seconds> if a rank is only slow"
    )]
    Timeout {
        rank: usize,
        size: usize,
        waiting_for: String,
        what: String,
        seconds: f64,
    },
    #[error(
        "the ranks' weights diverged at step {step} (weights hash per rank: {hashes}); the \
         ranks must run identical adapters and builds, or the all-reduce lost data"
    )]
    Diverged { step: u64, hashes: String },
    #[error("{0}")]
    Invalid(String),
    #[error("MPI: {0}")]
    Mpi(String),
}

/// The collectives a data-parallel step needs. `what` names the call in
/// errors ("the all-reduce of the gradients at step 12").
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Every rank's `local` (all the same length), concatenated in rank order.
    fn all_gather(&self, local: &[f32], what: &str) -> Result<Vec<f32>, DistError>;
    /// Element-wise sum over the ranks, in place on every rank.
    fn all_reduce_sum(&self, data: &mut [f32], what: &str) -> Result<(), DistError>;
    /// Rank 0's `data`, in place on every rank.
    fn broadcast(&self, data: &mut [f32], what: &str) -> Result<(), DistError>;
    /// Every rank's `value`, in rank order.
    fn all_gather_u64(&self, value: u64, what: &str) -> Result<Vec<u64>, DistError>;
    /// Bytes this rank has sent into collectives so far (the scaling figure).
    fn bytes_communicated(&self) -> u64 {
        0
    }
}

/// The ranks a training run is spread over (`train::trainer::RunOptions`).
#[derive(Clone)]
pub struct DataParallel(pub std::rc::Rc<dyn Collective>);

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DataParallel(rank {} of {})",
            self.0.rank(),
            self.0.size()
        )
    }
}

/// One process: rank 0 of 1, every collective the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather(&self, local: &[f32], _what: &str) -> Result<Vec<f32>, DistError> {
        Ok(local.to_vec())
    }
    fn all_reduce_sum(&self, _data: &mut [f32], _what: &str) -> Result<(), DistError> {
        Ok(())
    }
    fn broadcast(&self, _data: &mut [f32], _what: &str) -> Result<(), DistError> {
        Ok(())
    }
    fn all_gather_u64(&self, value: u64, _what: &str) -> Result<Vec<u64>, DistError> {
        Ok(vec![value])
    }
}

/// The rank count an MPI launcher gave this process, read from the
/// environment it sets (Open MPI's `OMPI_COMM_WORLD_SIZE`, MPICH/Hydra's
/// and Slurm's `PMI_SIZE`), without touching MPI: also in a build without
/// MPI, which must refuse to run as one of several ranks (each would train
/// alone and race for the same run directory).
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
}

/// How long a rank waits for the others at a collective:
/// `STPTF_COLLECTIVE_TIMEOUT` seconds (default 600, longer than any step
/// this project has measured).
pub fn collective_timeout() -> Result<std::time::Duration, DistError> {
    const KEY: &str = "STPTF_COLLECTIVE_TIMEOUT";
    match std::env::var(KEY) {
        Err(_) => Ok(std::time::Duration::from_secs(600)),
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => Ok(std::time::Duration::from_secs_f64(s)),
            _ => Err(DistError::Invalid(format!(
                "{KEY}={v:?}: expected a positive number of seconds"
            ))),
        },
    }
}

/// The rows of a global batch of `batch` scans that `rank` of `size` encodes:
/// contiguous, so the all-gathered rows are the global batch in order.
pub fn shard_rows(
    batch: usize,
    rank: usize,
    size: usize,
) -> Result<std::ops::Range<usize>, DistError> {
    if size == 0 || rank >= size {
        return Err(DistError::Invalid(format!("rank {rank} of {size} ranks")));
    }
    if batch % size != 0 {
        return Err(DistError::Invalid(format!(
            "pretrain.batch = {batch} does not split evenly over {size} ranks; use a batch \
             that is a multiple of the rank count"
        )));
    }
    let per = batch / size;
    Ok(rank * per..(rank + 1) * per)
}

/// FNV-1a over the bit patterns of `values`: equal weights, equal hash.
pub fn weights_hash<'a>(values: impl IntoIterator<Item = &'a [f32]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in values {
        for v in chunk {
            for byte in v.to_bits().to_le_bytes() {
                h ^= byte as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

/// Copies every parameter's `pick`ed tensor (value or gradient) into one
/// flat host vector, with one readback.
fn read_flat(
    gpu: &Gpu,
    store: &ParamStore,
    pick: impl Fn(&crate::autograd::Param) -> &Tensor,
) -> crate::gpu::Result<(Tensor, Vec<f32>)> {
    let total = store.count();
    let flat = gpu.empty(&[total.max(1)]);
    let mut at = 0;
    for p in &store.params {
        let t = pick(p);
        gpu.copy_region(t, 0, &flat, at, t.len())?;
        at += t.len();
    }
    let mut host = gpu.read(&flat)?;
    host.truncate(total);
    Ok((flat, host))
}

/// Writes `host` (laid out as [`read_flat`] reads) back into every
/// parameter's `pick`ed tensor.
fn write_flat(
    gpu: &Gpu,
    store: &ParamStore,
    flat: &Tensor,
    host: &[f32],
    pick: impl Fn(&crate::autograd::Param) -> &Tensor,
) -> crate::gpu::Result<()> {
    if host.is_empty() {
        return Ok(());
    }
    gpu.write(flat, host)?;
    let mut at = 0;
    for p in &store.params {
        let t = pick(p);
        gpu.copy_region(flat, at, t, 0, t.len())?;
        at += t.len();
    }
    Ok(())
}

/// Between the backward and the optimizer update: sums every parameter's
/// gradient over the ranks, then divides the `replicated` ones (computed
/// whole on every rank, see the module doc) by P, so all ranks hold the
/// one-process gradient. One readback, one all-reduce, one upload.
pub fn all_reduce_gradients(
    gpu: &Gpu,
    store: &ParamStore,
    comm: &dyn Collective,
    replicated: impl Fn(&str) -> bool,
    step: u64,
) -> crate::gpu::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let (flat, mut host) = read_flat(gpu, store, |p| &p.grad)?;
    comm.all_reduce_sum(
        &mut host,
        &format!("the all-reduce of the gradients at step {step}"),
    )?;
    let inv = 1.0 / comm.size() as f32;
    let mut at = 0;
    for p in &store.params {
        let n = p.grad.len();
        if replicated(&p.name) {
            host[at..at + n].iter_mut().for_each(|g| *g *= inv);
        }
        at += n;
    }
    write_flat(gpu, store, &flat, &host, |p| &p.grad)
}

/// Makes every rank start from rank 0's weights.
pub fn broadcast_parameters(
    gpu: &Gpu,
    store: &ParamStore,
    comm: &dyn Collective,
) -> crate::gpu::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let (flat, mut host) = read_flat(gpu, store, |p| &p.value)?;
    comm.broadcast(&mut host, "the broadcast of rank 0's initial weights")?;
    write_flat(gpu, store, &flat, &host, |p| &p.value)
}

/// Checks that every rank holds bit-identical weights after `step`.
pub fn check_identical(
    gpu: &Gpu,
    store: &ParamStore,
    comm: &dyn Collective,
    step: u64,
) -> crate::gpu::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let (_, host) = read_flat(gpu, store, |p| &p.value)?;
    let hash = weights_hash([host.as_slice()]);
    let hashes = comm.all_gather_u64(hash, &format!("the weights check after step {step}"))?;
    if hashes.iter().any(|&h| h != hashes[0]) {
        let hashes = hashes
            .iter()
            .enumerate()
            .map(|(r, h)| format!("{r}: {h:016x}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DistError::Diverged { step, hashes }.into());
    }
    Ok(())
}

/// Every rank says whether its setup succeeded; if one failed, all stop.
/// Without this a rank that refused its run directory would leave the
/// others waiting in their first collective until the timeout.
pub fn agree(comm: &dyn Collective, ok: bool, what: &str) -> Result<(), DistError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let all = comm.all_gather_u64(ok as u64, what)?;
    let failed: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(_, &v)| v == 0)
        .map(|(r, _)| r.to_string())
        .collect();
    if failed.is_empty() || !ok {
        // A rank that failed reports its own error.
        return Ok(());
    }
    Err(DistError::Invalid(format!(
        "rank {} stopped: rank(s) {} failed {what} (their error is printed above)",
        comm.rank(),
        failed.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_tile_the_batch_in_rank_order() {
        let rows: Vec<_> = (0..4).map(|r| shard_rows(32, r, 4).unwrap()).collect();
        assert_eq!(rows, vec![0..8, 8..16, 16..24, 24..32]);
        assert_eq!(shard_rows(5, 0, 1).unwrap(), 0..5);
        let err = shard_rows(30, 0, 4).unwrap_err().to_string();
        assert!(
            err.contains("pretrain.batch = 30 does not split evenly over 4 ranks"),
            "{err}"
        );
        assert!(shard_rows(8, 2, 2).is_err());
    }

    #[test]
    fn the_hash_sees_every_bit_and_the_order() {
        let a = [1.0f32, 2.0, 3.0];
        let h = weights_hash([&a[..]]);
        assert_eq!(
            h,
            weights_hash([&a[..1], &a[1..]]),
            "chunking must not matter"
        );
        let mut b = a;
        b[2] = f32::from_bits(b[2].to_bits() ^ 1);
        assert_ne!(h, weights_hash([&b[..]]));
        assert_ne!(h, weights_hash([&[2.0f32, 1.0, 3.0][..]]));
        // -0.0 and 0.0 compare equal but are different weights' bits.
        assert_ne!(
            weights_hash([&[0.0f32][..]]),
            weights_hash([&[-0.0f32][..]])
        );
    }

    #[test]
    fn one_process_collectives_are_the_identity() {
        let s = Single;
        let mut v = vec![1.0, -2.0];
        s.all_reduce_sum(&mut v, "x").unwrap();
        s.broadcast(&mut v, "x").unwrap();
        assert_eq!(v, vec![1.0, -2.0]);
        assert_eq!(s.all_gather(&v, "x").unwrap(), v);
        assert_eq!(s.all_gather_u64(7, "x").unwrap(), vec![7]);
        assert!(agree(&s, true, "x").is_ok());
    }
}
