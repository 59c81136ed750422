//! What the host machine has room for, read before anything large is
//! allocated or written (`model::sizes`, `data::synth`): a failed
//! allocation aborts the process, and a full disk leaves half a dataset.

use std::path::Path;

/// `MemAvailable` of `/proc/meminfo` in bytes: what can be allocated without
/// swapping. `None` where it cannot be read (not Linux), so callers skip
/// the check rather than guess.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Bytes an unprivileged user may still write on the file system holding
/// `path` (which must exist), or `None` where that is unknown.
#[cfg(unix)]
pub fn available_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` is a valid
    // out-pointer; statvfs writes the whole struct when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialized by the successful call above.
    let stat = unsafe { stat.assume_init() };
    // The field types differ by platform (u32 on some), hence the casts.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, size) = (stat.f_bavail as u64, stat.f_frsize as u64);
    blocks.checked_mul(size)
}

/// Not known off unix: the check is skipped.
#[cfg(not(unix))]
pub fn available_disk(_path: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_reports_memory_and_disk() {
        if cfg!(target_os = "linux") {
            assert!(available_memory().is_some_and(|b| b > 0));
            assert!(available_disk(Path::new(".")).is_some());
        }
        assert_eq!(available_disk(Path::new("/no/such/folder")), None);
    }
}
