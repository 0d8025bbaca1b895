//! `--lock FILE`: the exclusive `flock` of FILE held around each run, never
//! between runs, so a long comparison measures on a machine to itself run by run
//! while others' builds and tests (holding FILE shared, like
//! `/work/bin/cpu-shared`) go on in between.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The held lock; released when dropped (closing the file releases the flock).
pub struct Held {
    /// The open lock file: its descriptor holds the flock.
    _file: File,
}

/// Blocks until FILE's exclusive lock is ours.
pub fn exclusive(path: &Path) -> Result<Held, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| format!("--lock: cannot open {}: {error}", path.display()))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(Held { _file: file });
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("--lock: flock {}: {error}", path.display()));
        }
    }
}

/// The lock if a path is given, else nothing.
pub fn maybe(path: Option<&Path>) -> Result<Option<Held>, String> {
    path.map(exclusive).transpose()
}
