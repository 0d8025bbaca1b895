//! CPU time of the dispatcher's own threads.
//!
//! `cpu_us_per_job` must count every dispatcher thread — shards, the sink writer,
//! the coordinator and glommio's helper threads — but not mock nodes sharing the
//! process. Dispatcher threads are named with [`DISPATCHER_THREAD_PREFIX`] (glommio's
//! helper thread inherits its executor's name), so their time is read per thread
//! from `/proc/self/task/*/schedstat`, in nanoseconds, while they are still alive.
//! A thread measures itself with `CLOCK_THREAD_CPUTIME_ID`.

use std::time::Duration;

/// Name prefix of every thread whose CPU time counts as the dispatcher's.
pub const DISPATCHER_THREAD_PREFIX: &str = "pc-";

/// CPU time (user + system) the calling thread has used.
pub fn current_thread() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    if result != 0 {
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// Total CPU time of this process's live threads whose name starts with `prefix`.
pub fn threads_named(prefix: &str) -> std::io::Result<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let task = entry?.path();
        // A thread may exit between listing and reading: skip it.
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        if let Ok(schedstat) = std::fs::read_to_string(task.join("schedstat")) {
            let nanos = schedstat
                .split_whitespace()
                .next()
                .and_then(|field| field.parse::<u64>().ok())
                .unwrap_or(0);
            total += Duration::from_nanos(nanos);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until this thread has used `cpu` of CPU time (not wall time: on a
    /// busy machine the thread may wait for a core).
    fn burn(cpu: Duration) {
        let start = current_thread();
        let mut x = 0u64;
        while current_thread() - start < cpu {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }

    #[test]
    fn named_threads_are_counted_and_others_are_not() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("cpu-test-burn".into())
            .spawn(move || {
                burn(Duration::from_millis(60));
                ready_tx.send(current_thread()).unwrap();
                let _ = done_rx.recv();
            })
            .unwrap();
        let own = ready_rx.recv().unwrap();
        let seen = threads_named("cpu-test-burn").unwrap();
        done_tx.send(()).unwrap();
        worker.join().unwrap();
        assert!(own >= Duration::from_millis(50), "{own:?}");
        assert!(seen >= Duration::from_millis(50), "{seen:?}");
        assert_eq!(
            threads_named("no-such-thread-name").unwrap(),
            Duration::ZERO
        );
    }
}
