//! Pinning the threads around the shards (coordinator, sink writer, admin) to
//! the CPUs the tuning file gives them. The shards pin themselves through
//! glommio's placement; these are plain threads, so `sched_setaffinity`.
//!
//! A thread inherits its creator's mask, so the admin thread is placed by
//! pinning its creator around its start ([`with_mask`]); the sink writer, created
//! inside the dispatcher, is pinned through its handle ([`place_sink_writer`]).

use std::io;
use std::thread::JoinHandle;

use super::Tuning;
use crate::console;

/// A `cpu_set_t` holding `cpus`, or an error naming one it cannot hold.
#[cfg(target_os = "linux")]
fn cpu_set(cpus: &[usize]) -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let bits = std::mem::size_of::<libc::cpu_set_t>() * 8;
    for &cpu in cpus {
        if cpu >= bits {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond the {bits} a cpu_set_t holds"),
            ));
        }
        // SAFETY: `cpu` is below the set's size in bits, as CPU_SET requires.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    Ok(set)
}

/// Pins the calling thread to `cpus` (it may run on any of them).
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    let set = cpu_set(cpus)?;
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is this thread.
    let result =
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the calling thread may run on, or `None` if they cannot be read.
#[cfg(target_os = "linux")]
pub fn current_thread_cpus() -> Option<Vec<usize>> {
    super::affinity_cpus()
}

/// Pins the thread of `handle` to `cpus`.
#[cfg(target_os = "linux")]
pub fn pin_thread<T>(handle: &JoinHandle<T>, cpus: &[usize]) -> io::Result<()> {
    use std::os::unix::thread::JoinHandleExt;
    let set = cpu_set(cpus)?;
    // SAFETY: the pthread is alive while its JoinHandle is held and not joined;
    // `set` is a live cpu_set_t of the size passed.
    let result = unsafe {
        libc::pthread_setaffinity_np(
            handle.as_pthread_t(),
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        )
    };
    if result != 0 {
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpus: &[usize]) -> io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn current_thread_cpus() -> Option<Vec<usize>> {
    None
}

#[cfg(not(target_os = "linux"))]
pub fn pin_thread<T>(_handle: &JoinHandle<T>, _cpus: &[usize]) -> io::Result<()> {
    Ok(())
}

/// Runs `start` with the calling thread pinned to `cpus` (unless empty), so the
/// threads it creates inherit that mask, then gives the caller its mask back.
pub fn with_mask<R>(cpus: &[usize], start: impl FnOnce() -> R) -> io::Result<R> {
    if cpus.is_empty() {
        return Ok(start());
    }
    let before = current_thread_cpus();
    pin_current_thread(cpus)?;
    let started = start();
    if let Some(before) = before {
        pin_current_thread(&before)?;
    }
    Ok(started)
}

/// Pins the sink writer to the tuning's `sink_cpus`, if any. Start-up checked
/// them; should the kernel still refuse, the run goes on unpinned, with a warning.
pub fn place_sink_writer<T>(handle: &JoinHandle<T>, tuning: &Tuning) {
    if tuning.sink_cpus.is_empty() {
        return;
    }
    if let Err(error) = pin_thread(handle, &tuning.sink_cpus) {
        console::err(format_args!(
            "warning: cannot pin the sink writer to CPUs {}: {error}; it runs unpinned",
            super::format_cpu_list(&tuning.sink_cpus)
        ));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_pinned_and_its_creator_gets_its_mask_back() {
        let allowed = super::super::allowed_cpus();
        let first = allowed[0];
        let outcome = std::thread::spawn(move || {
            let before = current_thread_cpus();
            let inner = with_mask(&[first], || {
                std::thread::spawn(current_thread_cpus)
                    .join()
                    .ok()
                    .flatten()
            })
            .ok()
            .flatten();
            (before, inner, current_thread_cpus())
        })
        .join()
        .unwrap();
        assert_eq!(outcome.1, Some(vec![first]));
        assert_eq!(outcome.0, outcome.2);
    }

    #[test]
    fn a_thread_is_pinned_through_its_handle() {
        let allowed = super::super::allowed_cpus();
        let last = allowed[allowed.len() - 1];
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let _ = wait.recv();
            current_thread_cpus()
        });
        pin_thread(&handle, &[last]).unwrap();
        go.send(()).unwrap();
        assert_eq!(handle.join().unwrap(), Some(vec![last]));
        assert!(pin_current_thread(&[100_000]).is_err());
    }
}
