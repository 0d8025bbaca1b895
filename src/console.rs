//! The terminal, written to without ever failing the process.
//!
//! `println!` and `eprintln!` panic when their stream is closed (`percore … | head
//! -1`, or a service manager that closed stderr). percore's results are its
//! database and its summary and report files; a terminal nobody reads must not
//! stop it from writing them. Everything percore prints goes through these two.
//!
//! While a run with a duration lasts on a terminal, indicatif draws a progress
//! bar on stderr's last line; every line written through [`err`] (status lines,
//! warnings from any thread) is printed above it, so the bar is never torn.
//! Off a terminal the bar draws nothing and lines are written as they are.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress bar being drawn, if any. Taken by [`err`] (warnings, status
/// lines: a few a second at most), never on a shard's per-job path.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Writes to stdout and flushes; a closed or failing stdout is ignored.
pub fn out(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_fmt(text).and_then(|()| stdout.flush());
}

/// Writes one line to stderr (warnings, errors, status); failures are ignored.
pub fn err(text: std::fmt::Arguments<'_>) {
    let write = || {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr
            .write_fmt(text)
            .and_then(|()| stderr.write_all(b"\n"));
    };
    let bar = BAR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match bar.as_ref() {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// The run's progress bar, drawn while this lives (on a terminal only) and
/// cleared when it is dropped.
pub struct Progress {
    /// The bar (also in [`BAR`], for [`err`]); its position is milliseconds.
    bar: ProgressBar,
}

impl Progress {
    /// Starts a bar for a run that lasts `total`.
    pub fn start(total: Duration) -> Progress {
        let total_ms = u64::try_from(total.as_millis()).unwrap_or(u64::MAX);
        let bar = ProgressBar::with_draw_target(Some(total_ms), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("[{bar:40}] {percent:>3}% · {elapsed} of {msg}")
        {
            bar.set_style(style.progress_chars("#>-"));
        }
        bar.set_message(
            humantime::format_duration(Duration::from_secs(total.as_secs())).to_string(),
        );
        let mut slot = BAR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(bar.clone());
        Progress { bar }
    }

    /// Moves the bar to `elapsed` of the run.
    pub fn set(&self, elapsed: Duration) {
        self.bar
            .set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let mut slot = BAR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = None;
        self.bar.finish_and_clear();
    }
}
