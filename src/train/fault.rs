//! Fault injection for the crash-safety tests (tests/checkpoint_faults.rs).
//!
//! `STPTF_FAULT=<action>@<point>[#<n>]` acts the n-th time (default: the
//! first) the code passes the named point:
//!
//! - `pause`: prints `stptf-fault: paused at <point>` to stderr and sleeps
//!   until the process is killed, so a test can `kill -9` it exactly there;
//! - `enospc`: the write at that point fails as on a full disk (ENOSPC);
//! - `die`: the process kills itself with SIGKILL (a rank that dies in a
//!   data-parallel job, tests/mpi_data_parallel.rs).
//!
//! With `STPTF_FAULT_RANK=<r>` the fault acts only in MPI rank r (read from
//! the launcher's environment, `OMPI_COMM_WORLD_RANK` or `PMI_RANK`): every
//! rank of an `mpirun` job inherits `STPTF_FAULT`.
//!
//! Points are named where the code calls [`point`]; the checkpoint save has
//! one per stage (see `checkpoint::save`). Unset (always, outside tests) it
//! costs one cached environment lookup per point. A malformed value is
//! reported once on stderr and otherwise ignored, so a typo cannot make a
//! fault test pass vacuously: the tests assert that the fault was reached.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "STPTF_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Pause,
    NoSpace,
    Die,
}

#[derive(Debug)]
struct Spec {
    action: Action,
    point: String,
    nth: u64,
}

fn parse(text: &str) -> Option<Spec> {
    let (action, rest) = text.split_once('@')?;
    let action = match action {
        "pause" => Action::Pause,
        "enospc" => Action::NoSpace,
        "die" => Action::Die,
        _ => return None,
    };
    let (point, nth) = match rest.split_once('#') {
        Some((point, n)) => (point, n.parse().ok().filter(|&n| n >= 1)?),
        None => (rest, 1),
    };
    if point.is_empty() {
        return None;
    }
    Some(Spec {
        action,
        point: point.to_string(),
        nth,
    })
}

fn spec() -> Option<&'static Spec> {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::env::var(ENV).ok()?;
        let spec = parse(&text);
        if spec.is_none() {
            eprintln!(
                "stptf-fault: ignoring {ENV}={text:?}: expected pause@POINT, enospc@POINT or die@POINT, optionally #N"
            );
        }
        if let Ok(wanted) = std::env::var("STPTF_FAULT_RANK") {
            let rank = ["OMPI_COMM_WORLD_RANK", "PMI_RANK"]
                .iter()
                .find_map(|k| std::env::var(k).ok());
            if rank.as_deref().map(str::trim) != Some(wanted.trim()) {
                return None;
            }
        }
        spec
    })
    .as_ref()
}

/// Passes the fault point `name`: returns an error, or never returns, when
/// `STPTF_FAULT` says so; otherwise does nothing.
pub fn point(name: &str) -> io::Result<()> {
    let Some(spec) = spec().filter(|s| s.point == name) else {
        return Ok(());
    };
    static HITS: AtomicU64 = AtomicU64::new(0);
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 != spec.nth {
        return Ok(());
    }
    match spec.action {
        Action::Pause => {
            eprintln!("stptf-fault: paused at {name}");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Action::NoSpace => Err(no_space()),
        Action::Die => {
            eprintln!("stptf-fault: dying at {name}");
            die()
        }
    }
}

#[cfg(unix)]
fn die() -> ! {
    // SIGKILL: no unwinding, no exit handlers, no MPI_Finalize.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(not(unix))]
fn die() -> ! {
    std::process::abort()
}

#[cfg(unix)]
fn no_space() -> io::Error {
    io::Error::from_raw_os_error(28) // ENOSPC
}

#[cfg(not(unix))]
fn no_space() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "no space left on device")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_are_refused() {
        let s = parse("pause@checkpoint-switched#3").unwrap();
        assert_eq!(
            (s.action, s.point.as_str(), s.nth),
            (Action::Pause, "checkpoint-switched", 3)
        );
        let s = parse("enospc@checkpoint-write-weights").unwrap();
        assert_eq!((s.action, s.nth), (Action::NoSpace, 1));
        assert_eq!(parse("die@pretrain-step#2").unwrap().action, Action::Die);
        for bad in ["", "pause", "crash@x", "pause@", "pause@x#0", "pause@x#y"] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        // Unset in the unit tests: every point passes.
        assert!(point("checkpoint-write-weights").is_ok());
    }
}
