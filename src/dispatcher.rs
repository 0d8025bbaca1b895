//! Start-up, supervision and shutdown of one dispatch run.
//!
//! The coordinator (the calling thread) splits the fleet over the shards by stable
//! hash, opens the sink and its writer thread, makes every channel, starts one
//! pinned executor per shard CPU, and then only listens: it turns the shards'
//! once-a-second reports into the status line, the per-second latency log and the
//! metrics snapshots, and at the end merges their statistics, checks that every
//! result reached the sink, and measures the dispatcher's CPU time. It never
//! touches a shard's state: everything arrives as messages.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::MetricsSnapshot;
use crate::config::{Config, SinkConfig};
use crate::cpu;
use crate::devices::shard_of;
use crate::record::DeviceIndex;
use crate::runtime::{self, ExecutorSpec};
use crate::shard::{self, Control, ExitNotice, ShardChannels, ShardLimits, ShardPlan, Workload};
use crate::sink::{self, ClassNames, RowNames, SinkTarget};
use crate::stats::{ClassStats, Counters, Interval, ShardReport, ShardStats, StageHistograms};
use crate::summary::{ClassSummary, RunSummary, ShardSummary};
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
    pub metrics: Option<flume::Sender<MetricsSnapshot>>,
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

/// A shard's last word, kept by the coordinator.
struct FinalReport {
    /// The shard's whole-run counters and histograms.
    stats: ShardStats,
    /// End of the window this shard dispatched (Unix ms, exclusive).
    end_ms: i64,
    /// Why the shard stopped early, if it did.
    error: Option<String>,
}

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

    let clock = Clock::now_from_system();
    let start_ms = clock.now_ms() + START_LEAD.as_millis() as i64;
    let run_start = clock.instant_of(start_ms);
    let end_ms = options
        .duration
        .map_or(i64::MAX, |duration| start_ms + duration.as_millis() as i64);

    let (results_tx, results_rx) = flume::bounded(RESULT_CHANNEL_BATCHES);
    let (recycle_tx, recycle_rx) = flume::bounded(RESULT_CHANNEL_BATCHES);
    let writer = sink::spawn_writer(sink, results_rx, recycle_tx, run_start)
        .map_err(|error| RunError(format!("cannot start the sink writer thread: {error}")))?;
    let (reports_tx, reports_rx) = flume::bounded(shard_count * 64);
    let limits = ShardLimits {
        max_in_flight: config.tuning.max_in_flight_per_shard,
        connections_per_node: config.tuning.connections_per_node,
        max_message_len: config.grpc.max_message_bytes,
        connect_timeout: Duration::from_millis(config.grpc.connect_timeout_ms),
        retries: config.grpc.retries,
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
            workload: shard_workload(options.load, index, shard_count, start_ms, end_ms),
            limits: limits.clone(),
            channels: ShardChannels {
                results: results_tx.clone(),
                recycled: recycle_rx.clone(),
                reports: reports_tx.clone(),
                control: control_rx,
            },
            exit_notice: ExitNotice::new(index as u16, reports_tx.clone()),
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

    let mut supervisor = Supervisor::new(shard_count, run_start, options, &clock);
    let finished = supervisor.supervise(&reports_rx, &controls);
    if finished.is_err() {
        // Let the other shards drain and report, so the writer and they can end.
        for control in &controls {
            let _ = control.send(Control::StopAt(i64::MIN));
        }
    }

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
        window_ms: (start_ms, stopped_ms),
        elapsed: Duration::from_millis((stopped_ms - start_ms).max(0) as u64),
        dispatcher_cpu: shard_cpu + writer_report.cpu + coordinator_cpu,
        shard_cpu,
        writer_cpu: writer_report.cpu,
        rows_written: writer_report.rows,
        sink_location: writer_report.location.clone(),
        counters: Counters::default(),
        latency: StageHistograms::default(),
        per_shard: Vec::with_capacity(shard_count),
        per_class: config
            .classes
            .iter()
            .map(|class| ClassSummary {
                class: class.name.clone(),
                model: class.model.clone(),
                stats: ClassStats::default(),
            })
            .collect(),
        per_second: std::mem::take(&mut supervisor.per_second),
        config: config_description(config, options),
    };
    let sink_lag = &writer_report.sink_lag;
    for (index, report) in finished.iter().enumerate() {
        let mut latency = report.stats.latency.clone();
        if let Some(lag) = sink_lag.per_shard.get(index) {
            let _ = latency.sink_lag.add(lag);
        }
        summary.counters.add(&report.stats.counters);
        summary.latency.add(&latency);
        summary.per_shard.push(ShardSummary {
            counters: report.stats.counters,
            latency,
        });
        for (class, stats) in summary.per_class.iter_mut().zip(&report.stats.per_class) {
            class.stats.counters.add(&stats.counters);
            class.stats.latency.add(&stats.latency);
        }
    }
    for (class, lag) in summary.per_class.iter_mut().zip(&sink_lag.per_class) {
        let _ = class.stats.latency.sink_lag.add(lag);
    }
    for (second, lag) in sink_lag.per_second.iter().enumerate() {
        if summary.per_second.len() <= second {
            summary
                .per_second
                .resize_with(second + 1, StageHistograms::default);
        }
        let _ = summary.per_second[second].sink_lag.add(lag);
    }
    summary.counters.in_flight = 0;
    supervisor.publish_final(&summary);
    if summary.counters.jobs() != summary.rows_written {
        return Err(RunError(format!(
            "shards counted {} jobs but the sink wrote {} rows",
            summary.counters.jobs(),
            summary.rows_written
        )));
    }
    Ok(summary)
}

/// This shard's share of the load: closed-loop concurrency and open-loop rate are
/// split evenly, the remainder going to the first shards.
fn shard_workload(load: Load, index: usize, shards: usize, start_ms: i64, end_ms: i64) -> Workload {
    match load {
        Load::Ticks => Workload::Ticks { start_ms, end_ms },
        Load::ClosedLoop { concurrency } => Workload::ClosedLoop {
            concurrency: concurrency / shards + usize::from(index < concurrency % shards),
            start_ms,
            end_ms,
        },
        Load::OpenLoop { rate, poisson } => Workload::OpenLoop {
            rate_per_s: rate / shards as f64,
            poisson,
            start_ms,
            end_ms,
        },
    }
}

/// What the run was, for reports: enough to tell two runs apart.
fn config_description(config: &Config, options: &RunOptions) -> serde_json::Value {
    let load = match options.load {
        Load::Ticks => serde_json::json!({"mode": "ticks"}),
        Load::ClosedLoop { concurrency } => {
            serde_json::json!({"mode": "closed_loop", "concurrency": concurrency})
        }
        Load::OpenLoop { rate, poisson } => serde_json::json!({
            "mode": "open_loop", "rate_per_s": rate,
            "arrivals": if poisson { "poisson" } else { "constant" },
        }),
    };
    serde_json::json!({
        "config_file": config.path.display().to_string(),
        "devices": config.fleet.len(),
        "load": load,
        "duration_s": options.duration.map(|d| d.as_secs_f64()),
        "shard_cpus": config.tuning.resolved_shard_cpus(),
        "connections_per_node": config.tuning.connections_per_node,
        "max_in_flight_per_shard": config.tuning.max_in_flight_per_shard,
        "max_message_bytes": config.grpc.max_message_bytes,
        "classes": config.classes.iter().map(|class| serde_json::json!({
            "name": class.name, "model": class.model, "period_ms": class.period_ms,
            "deadline_ms": class.deadline_ms,
            "data_sources": class.data_sources.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "compute_nodes": class.compute_nodes.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The coordinator's view of the run while it lasts.
struct Supervisor<'a> {
    /// Status printing, stop signal and metrics publisher of this run.
    options: &'a RunOptions,
    /// The run's clock, to place an early stop in Unix ms.
    clock: &'a Clock,
    /// When the first tick was due; per-second intervals count from here.
    run_start: Instant,
    /// Each shard's latest counters.
    latest: Vec<Counters>,
    /// Latencies merged by second of the run (all shards).
    per_second: Vec<StageHistograms>,
    /// Latencies of the whole run so far, for the metrics.
    so_far: StageHistograms,
    /// Jobs counted at the previous status line.
    jobs_at_last_status: u64,
}

impl<'a> Supervisor<'a> {
    fn new(
        shards: usize,
        run_start: Instant,
        options: &'a RunOptions,
        clock: &'a Clock,
    ) -> Supervisor<'a> {
        Supervisor {
            options,
            clock,
            run_start,
            latest: vec![Counters::default(); shards],
            per_second: Vec::new(),
            so_far: StageHistograms::default(),
            jobs_at_last_status: 0,
        }
    }

    /// Files a shard's interval under the second of the run it ended in.
    fn add_interval(&mut self, interval: &Interval) {
        let second = interval
            .end
            .saturating_duration_since(self.run_start)
            .as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second
                .resize_with(second + 1, StageHistograms::default);
        }
        self.per_second[second].add(&interval.latency);
        self.so_far.add(&interval.latency);
    }

    /// Collects reports until every shard has finished, printing status each
    /// second and forwarding a stop request. Returns each shard's final report.
    fn supervise(
        &mut self,
        reports: &flume::Receiver<ShardReport>,
        controls: &[flume::Sender<Control>],
    ) -> Result<Vec<FinalReport>, RunError> {
        let mut finished: Vec<Option<FinalReport>> = self.latest.iter().map(|_| None).collect();
        let started = Instant::now();
        let mut next_status = started + Duration::from_secs(1);
        let mut stop_sent = false;
        while finished.iter().any(Option::is_none) {
            match reports.recv_deadline(next_status) {
                Ok(ShardReport::Progress {
                    shard,
                    counters,
                    interval,
                }) => {
                    self.latest[shard as usize] = counters;
                    self.add_interval(&interval);
                }
                Ok(ShardReport::Finished {
                    shard,
                    stats,
                    interval,
                    end_ms,
                    error,
                }) => {
                    self.add_interval(&interval);
                    self.latest[shard as usize] = stats.counters;
                    self.latest[shard as usize].in_flight = 0;
                    finished[shard as usize] = Some(FinalReport {
                        stats: *stats,
                        end_ms,
                        error,
                    });
                }
                Ok(ShardReport::Exited { shard }) => {
                    return Err(RunError(format!(
                        "shard {shard} stopped unexpectedly (its executor failed to start or panicked)"
                    )));
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => {
                    return Err(RunError(
                        "a shard exited without reporting (see its panic above)".into(),
                    ));
                }
            }
            if !stop_sent {
                if let Some(stop) = &self.options.stop {
                    if !matches!(stop.try_recv(), Err(flume::TryRecvError::Empty)) {
                        let stop_ms = self.clock.now_ms() + STOP_LEAD_MS;
                        for control in controls {
                            let _ = control.send(Control::StopAt(stop_ms));
                        }
                        stop_sent = true;
                    }
                }
            }
            if Instant::now() >= next_status {
                self.status(started);
                self.publish();
                next_status += Duration::from_secs(1);
            }
        }
        if self.options.print_status && std::io::stderr().is_terminal() {
            // Leave the progress bar's line clean.
            eprint!("\r\x1b[2K");
        }
        Ok(finished.into_iter().flatten().collect())
    }

    /// Prints the status line (and, on a terminal, redraws the progress bar).
    fn status(&mut self, started: Instant) {
        let mut total = Counters::default();
        self.latest.iter().for_each(|counters| total.add(counters));
        let jobs_per_s = total.jobs() - self.jobs_at_last_status;
        self.jobs_at_last_status = total.jobs();
        // The last complete second of the run.
        let second = Instant::now()
            .saturating_duration_since(self.run_start)
            .as_secs()
            .saturating_sub(1) as usize;
        let p99 = self
            .per_second
            .get(second)
            .map(|latency| &latency.end_to_end)
            .filter(|histogram| !histogram.is_empty())
            .map_or("-".to_string(), |histogram| {
                format_us(histogram.value_at_quantile(0.99))
            });
        if !self.options.print_status {
            return;
        }
        let line = format!(
            "[{:>4}s] jobs/s {:>7} | p99 e2e {:>9} | in flight {:>5} | ok {:>9} | failed {:>7} | skipped {:>7}",
            started.elapsed().as_secs(),
            jobs_per_s,
            p99,
            total.in_flight,
            total.ok,
            total.failed,
            total.skipped,
        );
        let mut stderr = std::io::stderr();
        match (stderr.is_terminal(), self.options.duration) {
            (true, Some(duration)) => {
                let done = started.elapsed().as_secs_f64() / (duration + START_LEAD).as_secs_f64();
                let _ = write!(
                    stderr,
                    "\r\x1b[2K{line}\n{}",
                    progress_bar(done.min(1.0), 40)
                );
            }
            _ => {
                let _ = writeln!(stderr, "{line}");
            }
        }
        let _ = stderr.flush();
    }

    fn publish(&self) {
        if let Some(metrics) = &self.options.metrics {
            // The newest snapshot matters; if the admin thread is behind, skip one.
            let _ = metrics.try_send(MetricsSnapshot {
                per_shard: self.latest.clone(),
                latency: self.so_far.clone(),
            });
        }
    }

    /// The end-of-run snapshot: exactly the run's totals.
    fn publish_final(&self, summary: &RunSummary) {
        if let Some(metrics) = &self.options.metrics {
            let snapshot = MetricsSnapshot {
                per_shard: summary
                    .per_shard
                    .iter()
                    .map(|shard| shard.counters)
                    .collect(),
                latency: summary.latency.clone(),
            };
            // Blocking is fine here: the run is over, and this one must arrive.
            let _ = metrics.send_timeout(snapshot, Duration::from_secs(1));
        }
    }
}

/// `1.25 ms`, `830 µs`, `2.10 s`.
pub fn format_us(us: u64) -> String {
    match us {
        0..=9_999 => format!("{us} µs"),
        10_000..=999_999 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn progress_bar(done: f64, width: usize) -> String {
    let filled = (done * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        "-".repeat(width - filled.min(width)),
        done * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_split_over_shards_without_losing_any() {
        let concurrency: Vec<usize> = (0..3)
            .map(|index| {
                match shard_workload(Load::ClosedLoop { concurrency: 64 }, index, 3, 0, 1) {
                    Workload::ClosedLoop { concurrency, .. } => concurrency,
                    _ => 0,
                }
            })
            .collect();
        assert_eq!(concurrency, vec![22, 21, 21]);
        match shard_workload(
            Load::OpenLoop {
                rate: 1000.0,
                poisson: true,
            },
            1,
            4,
            0,
            1,
        ) {
            Workload::OpenLoop {
                rate_per_s,
                poisson,
                ..
            } => {
                assert_eq!(rate_per_s, 250.0);
                assert!(poisson);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_shard_that_exits_without_reporting_stops_the_run() {
        let options = RunOptions::default();
        let clock = Clock::now_from_system();
        let (reports_tx, reports_rx) = flume::bounded(4);
        reports_tx.send(ShardReport::Exited { shard: 1 }).unwrap();
        let mut supervisor = Supervisor::new(2, Instant::now(), &options, &clock);
        let error = supervisor.supervise(&reports_rx, &[]).err().map(|e| e.0);
        assert_eq!(
            error.as_deref(),
            Some("shard 1 stopped unexpectedly (its executor failed to start or panicked)")
        );
    }

    #[test]
    fn durations_and_bars_read_well() {
        assert_eq!(format_us(830), "830 µs");
        assert_eq!(format_us(12_500), "12.50 ms");
        assert_eq!(format_us(2_100_000), "2.10 s");
        assert_eq!(progress_bar(0.5, 10), "[#####-----]  50%");
        assert_eq!(progress_bar(1.0, 4), "[####] 100%");
    }
}
