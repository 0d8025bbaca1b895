//! Start-up, supervision and shutdown of one dispatch run.
//!
//! The coordinator (the calling thread) splits the fleet over the shards by stable
//! hash, opens the sink and its writer thread, makes every channel, starts one
//! pinned executor per shard CPU, prints a status line every second from the
//! shards' progress reports, and at the end merges their statistics, checks that
//! every result reached the sink, and measures the dispatcher's CPU time. It never
//! touches a shard's state: everything arrives as messages.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, SinkConfig};
use crate::cpu;
use crate::devices::shard_of;
use crate::record::DeviceIndex;
use crate::runtime::{self, ExecutorSpec};
use crate::shard::{self, Control, ShardChannels, ShardLimits, ShardPlan, Workload};
use crate::sink::{self, ClassNames, RowNames, SinkTarget};
use crate::stats::{Counters, ShardReport, ShardStats};
use crate::summary::RunSummary;
use crate::tick::Clock;

/// Time between start-up and the first tick, so every shard is running (and
/// glommio's slow first timer has fired) before ticks come due.
const START_LEAD: Duration = Duration::from_millis(300);

/// Batches in flight between the shards and the sink writer. Bounded: a slow sink
/// pushes back on the shards, which then skip ticks with a recorded reason.
const RESULT_CHANNEL_BATCHES: usize = 256;

/// How far ahead of "now" an early stop is set, so every shard hears of it
/// before its clock reaches it (shards poll control at least every 50 ms) and all
/// stop at the same tick time.
const STOP_LEAD_MS: i64 = 200;

/// A shard's last word, kept by the coordinator.
struct FinalReport {
    stats: ShardStats,
    /// End of the window this shard dispatched (Unix ms, exclusive).
    end_ms: i64,
    /// Why the shard stopped early, if it did.
    error: Option<String>,
}

/// How a run generates jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Devices fire on their tick grid (the production mode).
    Ticks,
    /// Benchmarks: this many jobs always in flight per shard.
    ClosedLoop { concurrency: usize },
}

/// Options of one run beyond the config.
pub struct RunOptions {
    /// How long to dispatch; `None` runs until `stop` fires.
    pub duration: Option<Duration>,
    pub load: Load,
    /// Print a status line every second (to stderr).
    pub print_status: bool,
    /// Stops the run early when a message arrives or the sender is dropped.
    pub stop: Option<flume::Receiver<()>>,
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
pub fn run(config: &Config, options: &RunOptions) -> Result<RunSummary, RunError> {
    let coordinator_cpu_at_start = cpu::current_thread();
    let shard_cpus = config.tuning.resolved_shard_cpus();
    if shard_cpus.is_empty() {
        return Err(RunError("no CPU to run a shard on".into()));
    }
    let shard_count = shard_cpus.len();
    let fleet = Arc::new(config.fleet.clone());
    let mut owned: Vec<Vec<DeviceIndex>> = vec![Vec::new(); shard_count];
    for device in 0..fleet.len() as DeviceIndex {
        owned[shard_of(fleet.id(device), shard_count)].push(device);
    }

    let names = Arc::new(RowNames {
        fleet: fleet.clone(),
        classes: config
            .classes
            .iter()
            .map(|class| ClassNames {
                class: class.name.clone(),
                model: class.model.clone(),
            })
            .collect(),
    });
    let target = match &config.sink {
        SinkConfig::Sqlite { path } => SinkTarget::Sqlite { path: path.clone() },
    };
    let sink = sink::open(&target, names).map_err(|error| RunError(error.to_string()))?;
    let (results_tx, results_rx) = flume::bounded(RESULT_CHANNEL_BATCHES);
    let (recycle_tx, recycle_rx) = flume::bounded(RESULT_CHANNEL_BATCHES);
    let writer = sink::spawn_writer(sink, results_rx, recycle_tx)
        .map_err(|error| RunError(format!("cannot start the sink writer thread: {error}")))?;

    let (reports_tx, reports_rx) = flume::bounded(shard_count * 64);
    let clock = Clock::now_from_system();
    let start_ms = clock.now_ms() + START_LEAD.as_millis() as i64;
    let end_ms = options
        .duration
        .map_or(i64::MAX, |duration| start_ms + duration.as_millis() as i64);
    let workload = match options.load {
        Load::Ticks => Workload::Ticks { start_ms, end_ms },
        Load::ClosedLoop { concurrency } => Workload::ClosedLoop {
            concurrency,
            start_ms,
            end_ms,
        },
    };
    let limits = ShardLimits {
        max_in_flight: config.tuning.max_in_flight_per_shard,
        connections_per_node: config.tuning.connections_per_node,
        max_message_len: config.grpc.max_message_bytes,
        connect_timeout: Duration::from_millis(config.grpc.connect_timeout_ms),
    };
    let classes: Arc<[crate::config::Class]> = config.classes.clone().into();

    let mut controls = Vec::with_capacity(shard_count);
    let mut executors = Vec::with_capacity(shard_count);
    for (index, (devices, &cpu)) in owned.into_iter().zip(&shard_cpus).enumerate() {
        let (control_tx, control_rx) = flume::bounded(4);
        let plan = ShardPlan {
            index: index as u16,
            devices,
            fleet: fleet.clone(),
            classes: classes.clone(),
            clock,
            workload,
            limits: limits.clone(),
            channels: ShardChannels {
                results: results_tx.clone(),
                recycled: recycle_rx.clone(),
                reports: reports_tx.clone(),
                control: control_rx,
            },
        };
        let spec = ExecutorSpec {
            name: "pc-shard".into(),
            cpu: Some(cpu),
            io_memory_bytes: config.tuning.io_memory_kib * 1024,
        };
        match runtime::start(&spec, move || shard::run(plan)) {
            Ok(executor) => {
                controls.push(control_tx);
                executors.push(executor);
            }
            Err(error) => {
                for control in &controls {
                    let _ = control.send(Control::StopAt(i64::MIN));
                    let _ = control.send(Control::Release);
                }
                return Err(RunError(error.to_string()));
            }
        }
    }
    // Only shards hold these now: the writer ends when the last shard lets go.
    drop((results_tx, recycle_rx, reports_tx));

    let started = Instant::now();
    let finished = supervise(
        &reports_rx,
        &controls,
        shard_count,
        options,
        started,
        &clock,
    );

    let writer_result = writer
        .join()
        .map_err(|_| RunError("the sink writer thread panicked".into()))?;
    // Shards (and glommio's helper threads) are parked waiting for Release: their
    // CPU time is still readable.
    let shard_cpu = cpu::threads_named(cpu::DISPATCHER_THREAD_PREFIX)
        .map_err(|error| RunError(format!("cannot read thread CPU times: {error}")))?;
    for control in &controls {
        let _ = control.send(Control::Release);
    }
    for executor in executors {
        executor
            .join()
            .map_err(|error| RunError(error.to_string()))?;
    }
    let finished = finished?;
    let writer_report = writer_result.map_err(|error| RunError(error.to_string()))?;
    if let Some(error) = finished.iter().find_map(|report| report.error.clone()) {
        return Err(RunError(error));
    }
    // All shards were given the same stop time; one that heard late stopped later.
    let stopped_ms = finished
        .iter()
        .map(|report| report.end_ms)
        .max()
        .unwrap_or(start_ms)
        .clamp(start_ms, end_ms);

    let coordinator_cpu = cpu::current_thread().saturating_sub(coordinator_cpu_at_start);
    let mut summary = RunSummary {
        shards: shard_count,
        window_ms: (start_ms, stopped_ms.max(start_ms)),
        elapsed: Duration::from_millis((stopped_ms - start_ms).max(0) as u64),
        dispatcher_cpu: shard_cpu + writer_report.cpu + coordinator_cpu,
        shard_cpu,
        writer_cpu: writer_report.cpu,
        rows_written: writer_report.rows,
        sink_location: writer_report.location,
        per_shard: Vec::with_capacity(shard_count),
        counters: Counters::default(),
        latency: Default::default(),
    };
    for report in &finished {
        summary.counters.add(&report.stats.counters);
        summary.per_shard.push(report.stats.counters);
        summary.latency.add(&report.stats.latency);
    }
    if summary.counters.jobs() != summary.rows_written {
        return Err(RunError(format!(
            "shards counted {} jobs but the sink wrote {} rows",
            summary.counters.jobs(),
            summary.rows_written
        )));
    }
    Ok(summary)
}

/// Collects reports until every shard has finished, printing status each second
/// and forwarding a stop request. Returns each shard's final stats, by index.
fn supervise(
    reports: &flume::Receiver<ShardReport>,
    controls: &[flume::Sender<Control>],
    shard_count: usize,
    options: &RunOptions,
    started: Instant,
    clock: &Clock,
) -> Result<Vec<FinalReport>, RunError> {
    let mut latest = vec![Counters::default(); shard_count];
    let mut finished: Vec<Option<FinalReport>> = (0..shard_count).map(|_| None).collect();
    let mut next_status = started + Duration::from_secs(1);
    let mut jobs_at_last_status = 0;
    let mut stop_sent = false;
    while finished.iter().any(Option::is_none) {
        match reports.recv_deadline(next_status) {
            Ok(ShardReport::Progress { shard, counters }) => latest[shard as usize] = counters,
            Ok(ShardReport::Finished {
                shard,
                stats,
                end_ms,
                error,
            }) => {
                latest[shard as usize] = stats.counters;
                latest[shard as usize].in_flight = 0;
                finished[shard as usize] = Some(FinalReport {
                    stats: *stats,
                    end_ms,
                    error,
                });
            }
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => {
                return Err(RunError(
                    "a shard exited without reporting (see its panic above)".into(),
                ));
            }
        }
        if !stop_sent {
            if let Some(stop) = &options.stop {
                if !matches!(stop.try_recv(), Err(flume::TryRecvError::Empty)) {
                    let stop_ms = clock.now_ms() + STOP_LEAD_MS;
                    for control in controls {
                        let _ = control.send(Control::StopAt(stop_ms));
                    }
                    stop_sent = true;
                }
            }
        }
        if Instant::now() >= next_status {
            let mut total = Counters::default();
            latest.iter().for_each(|counters| total.add(counters));
            if options.print_status {
                let line = format!(
                    "[{:>4}s] jobs/s {:>8} | in flight {:>6} | ok {:>10} | failed {:>8} | skipped {:>8}",
                    started.elapsed().as_secs(),
                    total.jobs() - jobs_at_last_status,
                    total.in_flight,
                    total.ok,
                    total.failed,
                    total.skipped,
                );
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            jobs_at_last_status = total.jobs();
            next_status += Duration::from_secs(1);
        }
    }
    Ok(finished.into_iter().flatten().collect())
}
