//! Start-up, supervision and shutdown of one dispatch run.
//!
//! [`run`] is the three in turn, one file each:
//! - `start`: checks the config, splits the fleet over the shards, opens the
//!   sink and its writer, makes every channel, starts the shard executors;
//! - `supervise`: listens to the shards and the writer until every shard
//!   is done — status lines, metrics, the interval log (`per_second`), a
//!   stop request, a sink failure, a live reload (`reloader`);
//! - `shutdown`: joins the writer and the shards, reads their CPU time,
//!   merges their statistics into the [`RunSummary`] and checks that every
//!   result reached the sink.
//!
//! `describe` words the run for its reports.
//!
//! The coordinator (the calling thread) splits the fleet over the shards by stable
//! hash, opens the sink and its writer thread, makes every channel, starts one
//! pinned executor per shard CPU, and then only listens: it turns the shards'
//! once-a-second reports into the status line, the per-second latency log and the
//! metrics snapshots, and at the end merges their statistics, checks that every
//! result reached the sink, and measures the dispatcher's CPU time. It never
//! touches a shard's state: everything arrives as messages.

pub use crate::shard::StageMode;
pub use supervise::format_us;

use std::path::PathBuf;
use std::time::Duration;

use crate::admin::MetricsPublisher;
use crate::config::Config;
use crate::shard::Control;
use crate::summary::RunSummary;
use start::Running;
use supervise::FinalReport;

mod describe;
mod ownership;
mod per_second;
mod reloader;
mod shutdown;
mod start;
mod supervise;

/// Time between start-up and the first tick, so every shard is running (and
/// glommio's slow first timer has fired) before ticks come due.
const START_LEAD: Duration = Duration::from_millis(300);

/// How a run generates jobs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Load {
    /// Devices fire on their tick grid (the production mode).
    #[default]
    Ticks,
    /// Benchmarks: this many jobs always in flight, split over the shards.
    ClosedLoop { concurrency: usize },
    /// Benchmarks: jobs arrive at this rate (per second, all shards together),
    /// evenly spaced or as a Poisson process, however many are in flight.
    OpenLoop { rate: f64, poisson: bool },
}

/// Options of one run beyond the config.
#[derive(Default)]
pub struct RunOptions {
    /// How long to dispatch; `None` runs until `stop` fires.
    pub duration: Option<Duration>,
    /// What generates jobs: the tick grid, or a benchmark's closed or open loop.
    pub load: Load,
    /// Print a status line every second (to stderr), and a progress bar when
    /// stderr is a terminal and the run has a duration.
    pub print_status: bool,
    /// Stops the run early when a message arrives or the sender is dropped.
    pub stop: Option<flume::Receiver<()>>,
    /// Where to publish metrics snapshots (the admin server), if anywhere.
    pub metrics: Option<MetricsPublisher>,
    /// Where to stream the per-second interval histograms (an HdrHistogram
    /// interval log, the report's `histograms.hlog`) as each second closes; `None`
    /// keeps no per-second history. Either way the run holds only a few seconds.
    pub interval_log: Option<PathBuf>,
    /// The mock nodes serving the run (a demo's), as
    /// [`describe_mocks`](crate::demo::describe_mocks) words them: the report's
    /// configuration shows their service time and payload. `None` for real nodes.
    pub mocks: Option<serde_json::Value>,
    /// Which part of each job runs: the whole job, or (benchmarks) one stage alone.
    pub stage: StageMode,
    /// Each message asks for a live reload: the config file (`Config::path`)
    /// read again and its device list and classes applied (tick-driven runs).
    pub reload: Option<flume::Receiver<()>>,
    /// What the cluster thread (etcd) says: membership changes move devices
    /// to and from this instance (handover), registered compute nodes replace
    /// a class's, etcd outages are shown. `None` without etcd.
    pub cluster: Option<flume::Receiver<crate::cluster::event::ClusterEvent>>,
    /// Where to tell the cluster thread how many devices this instance runs
    /// (written into its registration, for `percore status`); `None` without etcd.
    pub cluster_devices: Option<crate::cluster::DeviceReport>,
}

/// Why a run could not start or did not complete.
#[derive(Debug)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunError {}

/// Runs the dispatcher described by `config` until the duration ends or `stop` fires.
///
/// A run whose sink failed for good still returns its summary, with
/// [`RunSummary::sink_error`] set and only committed rows counted as written: the
/// caller reports it and exits non-zero. `Err` is for runs that could not start,
/// or whose shards broke.
pub fn run(config: &Config, options: &RunOptions) -> Result<RunSummary, RunError> {
    let mut running = start::start(config, options)?;
    let finished = supervise(&mut running);
    shutdown::shut_down(running, finished)
}

/// Listens until every shard has finished; on a failure, tells the shards to
/// stop without waiting for their jobs in flight, so they and the writer end.
fn supervise(running: &mut Running<'_>) -> Result<Vec<FinalReport>, RunError> {
    let inbox = supervise::Inbox {
        reports: &running.reports,
        sink_events: &running.sink_events,
    };
    let finished =
        running
            .supervisor
            .supervise(&inbox, &running.controls, Some(&mut running.reloader));
    if finished.is_err() {
        // Let the other shards drain and report, so the writer and they can end.
        for control in &running.controls {
            let _ = control.send(Control::Abort);
        }
    }
    finished
}
