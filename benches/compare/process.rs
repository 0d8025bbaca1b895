//! Child processes of the comparison: mock nodes and clients, each pinned with
//! `taskset`, each killed when the benchmark ends or dies.
//!
//! A [`Child`] kills its process on drop (SIGTERM, then SIGKILL after a grace
//! period), and every child also gets `PR_SET_PDEATHSIG`, so nothing outlives the
//! benchmark even when it is killed itself. Clients are reaped with `wait4`, which
//! returns the CPU time of the process and of every child it waited for: the
//! whole-process cross-check of the CPU each client reports for its measured window.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child has to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// A running child process, killed (and reaped) on drop unless already reaped.
pub struct Child {
    /// What it is, for error messages ("mock-source", "tonic client", …).
    name: String,
    /// The process; `None` once reaped.
    inner: Option<std::process::Child>,
    /// Lines of its stdout, read by a thread so a full pipe never blocks it.
    stdout: mpsc::Receiver<String>,
    /// Where its stderr goes, to quote when it fails.
    log: PathBuf,
}

/// How a reaped child ended and what it used.
pub struct Exit {
    /// Exit code, or `None` if a signal ended it.
    pub code: Option<i32>,
    /// User + system CPU of the process and of the children it waited for.
    pub cpu: Duration,
    /// Everything it printed on stdout.
    pub stdout: String,
}

/// Starts `program args` pinned to `cpus` (a taskset list like "0" or "0,1"), stderr
/// appended to `log`, stdout piped.
pub fn spawn(
    name: &str,
    cpus: &str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<Child, String> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|error| format!("{name}: cannot open log {}: {error}", log.display()))?;
    let mut command = Command::new("taskset");
    command
        .arg("-c")
        .arg(cpus)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // Dies with the benchmark; taskset's exec keeps the setting.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut inner = command.spawn().map_err(|error| {
        format!(
            "{name}: cannot start taskset -c {cpus} {}: {error}",
            program.display()
        )
    })?;
    let pipe = inner.stdout.take().expect("stdout is piped");
    let (lines, stdout) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    Ok(Child {
        name: name.to_string(),
        inner: Some(inner),
        stdout,
        log: log.to_path_buf(),
    })
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.inner.as_ref().map_or(0, |child| child.id() as i32)
    }

    /// Waits up to `timeout` for a stdout line starting with `prefix`; returns the rest.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: no {prefix:?} line within {} s{}",
                        self.name,
                        timeout.as_secs(),
                        self.log_tail()
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{}: exited before printing {prefix:?}{}",
                        self.name,
                        self.log_tail()
                    ))
                }
            }
        }
    }

    /// Waits up to `timeout` for the process to exit and reaps it with its CPU time;
    /// kills it if it is still running then.
    pub fn wait(mut self, timeout: Duration) -> Result<Exit, String> {
        let pid = self.pid();
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: wait4 writes into the status and rusage we own.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == pid {
                // Reaped: the std handle must not try again.
                self.inner = None;
                let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
                let mut stdout = String::new();
                // The reader thread ends at EOF; give it a moment to hand the last lines.
                while let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(500)) {
                    stdout.push_str(&line);
                    stdout.push('\n');
                }
                return Ok(Exit {
                    code,
                    cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
                    stdout,
                });
            }
            if reaped < 0 {
                let error = std::io::Error::last_os_error();
                return Err(format!("{}: wait4 failed: {error}", self.name));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: still running after {} s; killed{}",
                    self.name,
                    timeout.as_secs(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the child's stderr log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let Some(mut child) = self.inner.take() else {
            return;
        };
        let pid = child.id() as i32;
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last lines of a log file, as "; last lines of LOG:\n…", or "" if empty.
pub fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(12)..].join("\n    ");
    format!("; last lines of {}:\n    {tail}", log.display())
}

fn timeval(time: libc::timeval) -> Duration {
    Duration::from_secs(time.tv_sec as u64) + Duration::from_micros(time.tv_usec as u64)
}
