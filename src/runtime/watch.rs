//! What an executor says about itself: stalls, and its run-time statistics.
//!
//! **Stalls.** glommio's stall detector arms a timer each time a task queue
//! starts running; a queue still running its threshold ([`StallReporter`])
//! past its time slice (the preempt timer) is interrupted by a signal that
//! captures a backtrace, and glommio reports it — executor, queue, overrun,
//! budget and backtrace — as a `log` warning, on the executor's thread,
//! inside the reactor. (glommio 0.9 does not export the report's type, so a
//! handler of ours cannot take it directly.) [`install_logger`] puts a logger
//! in place that keeps such reports in a thread-local list without blocking;
//! the shard takes the list once a second ([`take_stalls`]) and logs it with
//! its own number. glommio's other warnings go to stderr.
//!
//! **Statistics.** [`take_stats`] reads glommio's executor counters (tasks
//! run, scheduler runs, busy time), which glommio resets on every read, so
//! the caller adds them up. glommio 0.9 does not count parks or io_uring
//! submissions in its public API; [`context_switches`] asks the kernel
//! instead how often the thread slept (a park: waiting for a completion or a
//! timer) and how often it was preempted. Submissions are not reported.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use glommio::{StallDetectionHandler, TaskQueueHandle};

/// Stall reports kept between two [`take_stalls`]; more are only counted, so
/// a storm of stalls cannot grow the list (each holds a backtrace).
const KEPT_REPORTS: usize = 4;

/// How glommio's stall reports begin.
const STALL_PREFIX: &str = "[stall-detector";

thread_local! {
    /// This executor's stalls since the last [`take_stalls`].
    static STALLS: Stalls = const {
        Stalls {
            count: Cell::new(0),
            reports: RefCell::new(Vec::new()),
        }
    };
}

/// Stalls seen on this executor thread and not yet taken.
struct Stalls {
    /// How many.
    count: Cell<u64>,
    /// The first [`KEPT_REPORTS`] of them, as glommio words them.
    reports: RefCell<Vec<String>>,
}

/// The stall handler every executor is built with when the tuning sets a
/// threshold: glommio's own report (see the module), at percore's threshold.
#[derive(Debug)]
pub struct StallReporter {
    /// How far past its time slice a task queue may run before it is a stall.
    pub threshold: Duration,
}

impl StallDetectionHandler for StallReporter {
    fn threshold(&self, _queue: TaskQueueHandle, _budget: Duration) -> Option<Duration> {
        Some(self.threshold)
    }
}

/// The process's `log` logger: glommio's stall reports to the thread's list,
/// its other warnings and errors to stderr, the rest dropped.
struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn && metadata.target().starts_with("glommio")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        if !text.starts_with(STALL_PREFIX) {
            crate::console::err(format_args!("glommio: {text}"));
            return;
        }
        STALLS.with(|stalls| {
            stalls.count.set(stalls.count.get() + 1);
            // A busy borrow would mean a stall inside take_stalls itself:
            // count it, keep no report.
            if let Ok(mut reports) = stalls.reports.try_borrow_mut() {
                if reports.len() < KEPT_REPORTS {
                    reports.push(text);
                }
            }
        });
    }

    fn flush(&self) {}
}

/// Installs the logger, once per process; a logger someone else installed
/// first stays (percore's own code does not log through `log`).
pub fn install_logger() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if log::set_logger(&Logger).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
    });
}

/// The stalls on this executor since the last call: how many, and the first
/// few reports.
pub fn take_stalls() -> (u64, Vec<String>) {
    STALLS.with(|stalls| {
        let count = stalls.count.replace(0);
        let reports = std::mem::take(&mut *stalls.reports.borrow_mut());
        (count, reports)
    })
}

/// An executor's counters over some time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Tasks polled.
    pub tasks_run: u64,
    /// Times the scheduler chose a task queue to run.
    pub scheduler_runs: u64,
    /// Time spent running tasks (not idle, not spinning).
    pub busy: Duration,
}

impl ExecutorStats {
    pub fn add(&mut self, other: &ExecutorStats) {
        self.tasks_run += other.tasks_run;
        self.scheduler_runs += other.scheduler_runs;
        self.busy += other.busy;
    }
}

/// This executor's counters since the last call (glommio resets them on
/// read). Call it on an executor thread only; elsewhere it returns zeros.
pub fn take_stats() -> ExecutorStats {
    if glommio::executor().id() == 0 {
        return ExecutorStats::default();
    }
    let stats = glommio::executor().executor_stats();
    ExecutorStats {
        tasks_run: stats.tasks_executed(),
        scheduler_runs: stats.scheduler_runs(),
        busy: stats.executor_runtime(),
    }
}

/// This thread's context switches since it started: (voluntary — it slept in
/// the kernel, which is how an idle executor parks —, involuntary — the
/// kernel gave its CPU to another thread), from `getrusage(RUSAGE_THREAD)`;
/// zeros if the call fails.
pub fn context_switches() -> (u64, u64) {
    // SAFETY: getrusage only writes the struct it is given, which lives here.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return (0, 0);
    }
    (usage.ru_nvcsw.max(0) as u64, usage.ru_nivcsw.max(0) as u64)
}
