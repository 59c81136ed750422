//! [`Collective`] over a system MPI (rsmpi; Open MPI in CI), built with
//! `--features mpi` and used when `mpirun` (or `srun`) started the process.
//!
//! Every collective starts with a named rendezvous: each rank tells rank 0
//! which collective it has reached, rank 0 waits for all of them and then
//! releases them, each side with a deadline (`STPTF_COLLECTIVE_TIMEOUT`,
//! seconds, default 600). So a rank that hangs is named by rank 0 and the
//! others stop instead of waiting forever; a rank that dies is reported by
//! `mpirun`, which ends the job. Then the collective itself runs (blocking:
//! every rank has arrived). A timeout prints its error and calls
//! `MPI_Abort`, the one way to end ranks blocked inside MPI; the last
//! checkpoint is untouched (rank 0 writes checkpoints between steps, never
//! during a collective).
//!
//! The all-reduce is a reduce to rank 0 and a broadcast, so every rank gets
//! bit-identical sums whatever the MPI library's reduction order; the
//! weights check (`dist::check_identical`) relies on it.

use std::cell::Cell;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::request::Request;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use super::{Collective, DistError};

const TAG_ARRIVED: i32 = 0x5354;
const TAG_RELEASE: i32 = 0x5355;

/// This process's place in an MPI job.
pub struct MpiWorld {
    // Dropped last: finalizes MPI.
    _universe: Universe,
    world: SimpleCommunicator,
    local_rank: usize,
    timeout: Duration,
    /// Collectives entered so far (all ranks must agree on it).
    sequence: Cell<u64>,
    bytes: Cell<u64>,
}

/// The rank count an MPI launcher gave this process, from its environment
/// (Open MPI, MPICH/Hydra, Slurm's PMI), without initializing MPI: a process
/// started without a launcher never touches MPI.
pub fn launched_size() -> Option<usize> {
    super::launched_size()
}

impl MpiWorld {
    /// Initializes MPI (threads: only the main thread calls MPI).
    pub fn init() -> Result<Self, DistError> {
        let timeout = super::collective_timeout()?;
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| DistError::Mpi("MPI was already initialized".into()))?;
        let world = universe.world();
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Ok(Self {
            _universe: universe,
            world,
            local_rank,
            timeout,
            sequence: Cell::new(0),
            bytes: Cell::new(0),
        })
    }

    /// The rank among the ranks on this node (which adapter to use).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn fail(&self, error: DistError) -> ! {
        eprintln!("error: {error}");
        self.world.abort(3)
    }

    fn timeout_error(&self, waiting_for: String, what: &str) -> DistError {
        DistError::Timeout {
            rank: self.rank(),
            size: self.size(),
            waiting_for,
            what: what.to_string(),
            seconds: self.timeout.as_secs_f64(),
        }
    }

    /// Polls `req` until it completes, or fails the job at `deadline`.
    fn wait<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
        &self,
        mut req: Request<'a, D, S>,
        deadline: Instant,
        on_timeout: impl Fn() -> DistError,
    ) {
        loop {
            match req.test() {
                Ok(_) => return,
                Err(pending) => req = pending,
            }
            if Instant::now() > deadline {
                self.fail(on_timeout());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// The named rendezvous before every collective (module doc).
    fn rendezvous(&self, what: &str) {
        let seq = self.sequence.get();
        self.sequence.set(seq + 1);
        let size = self.size();
        let deadline = Instant::now() + self.timeout;
        if self.rank() == 0 {
            let mut arrived = vec![u64::MAX; size];
            mpi::request::scope(|scope| {
                let mut pending: Vec<(usize, Request<'_, u64, _>)> = arrived[1..]
                    .iter_mut()
                    .enumerate()
                    .map(|(i, slot)| {
                        let r = i + 1;
                        let req = self
                            .world
                            .process_at_rank(r as i32)
                            .immediate_receive_into_with_tag(scope, slot, TAG_ARRIVED);
                        (r, req)
                    })
                    .collect();
                while !pending.is_empty() {
                    let mut still = Vec::new();
                    for (r, req) in pending {
                        if let Err(req) = req.test() {
                            still.push((r, req));
                        }
                    }
                    pending = still;
                    if !pending.is_empty() && Instant::now() > deadline {
                        let missing: Vec<String> =
                            pending.iter().map(|(r, _)| r.to_string()).collect();
                        let who = if missing.len() == 1 {
                            format!("rank {}", missing[0])
                        } else {
                            format!("ranks {}", missing.join(", "))
                        };
                        self.fail(self.timeout_error(who, what));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            });
            if let Some((r, &s)) = arrived.iter().enumerate().skip(1).find(|(_, &s)| s != seq) {
                self.fail(DistError::Mpi(format!(
                    "rank {r} reached collective #{s} while rank 0 reached #{seq} ({what}): the \
                     ranks no longer run the same steps"
                )));
            }
            for r in 1..size {
                self.world
                    .process_at_rank(r as i32)
                    .send_with_tag(&seq, TAG_RELEASE);
            }
        } else {
            let root = self.world.process_at_rank(0);
            let mut release = 0u64;
            mpi::request::scope(|scope| {
                let sent = root.immediate_send_with_tag(scope, &seq, TAG_ARRIVED);
                self.wait(sent, deadline, || {
                    self.timeout_error("rank 0".to_string(), what)
                });
                let got = root.immediate_receive_into_with_tag(scope, &mut release, TAG_RELEASE);
                self.wait(got, deadline, || {
                    self.timeout_error("rank 0".to_string(), what)
                });
            });
        }
    }

    fn count(&self, bytes: usize) {
        self.bytes.set(self.bytes.get() + bytes as u64);
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather(&self, local: &[f32], what: &str) -> Result<Vec<f32>, DistError> {
        self.rendezvous(what);
        let mut out = vec![0f32; local.len() * self.size()];
        self.world.all_gather_into(local, &mut out[..]);
        self.count(local.len() * 4);
        Ok(out)
    }

    fn all_reduce_sum(&self, data: &mut [f32], what: &str) -> Result<(), DistError> {
        self.rendezvous(what);
        let root = self.world.process_at_rank(0);
        if self.rank() == 0 {
            let mut sum = vec![0f32; data.len()];
            root.reduce_into_root(&data[..], &mut sum[..], SystemOperation::sum());
            data.copy_from_slice(&sum);
        } else {
            root.reduce_into(&data[..], SystemOperation::sum());
        }
        root.broadcast_into(&mut data[..]);
        self.count(data.len() * 4);
        Ok(())
    }

    fn broadcast(&self, data: &mut [f32], what: &str) -> Result<(), DistError> {
        self.rendezvous(what);
        self.world.process_at_rank(0).broadcast_into(&mut data[..]);
        if self.rank() == 0 {
            self.count(data.len() * 4);
        }
        Ok(())
    }

    fn all_gather_u64(&self, value: u64, what: &str) -> Result<Vec<u64>, DistError> {
        self.rendezvous(what);
        let mut out = vec![0u64; self.size()];
        self.world.all_gather_into(&value, &mut out[..]);
        self.count(8);
        Ok(out)
    }

    fn bytes_communicated(&self) -> u64 {
        self.bytes.get()
    }
}
