//! Start-up, supervision and shutdown of one dispatch run.
//!
//! The coordinator (the calling thread) splits the fleet over the shards by stable
//! hash, opens the sink and its writer thread, makes every channel, starts one
//! pinned executor per shard CPU, and then only listens: it turns the shards'
//! once-a-second reports into the status line, the per-second latency log and the
//! metrics snapshots, and at the end merges their statistics, checks that every
//! result reached the sink, and measures the dispatcher's CPU time. It never
//! touches a shard's state: everything arrives as messages.

pub use crate::shard::StageMode;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::admin::{Health, MetricsPublisher, MetricsSnapshot};
use crate::config::{Config, SinkConfig};
use crate::console;
use crate::cpu;
use crate::devices::shard_of;
use crate::failures::FailureBreakdown;
use crate::record::DeviceIndex;
use crate::reload::Live;
use crate::report::hlog::LogWriter;
use crate::runtime::{self, ExecutorSpec};
use crate::shard::{self, Control, ExitNotice, ShardChannels, ShardLimits, ShardPlan, Workload};
use crate::sink::journal::Journal;
use crate::sink::writer::{WriterChannels, WriterJournal};
use crate::sink::{self, ClassNames, RowNames, SinkEvent, SinkProgress, SinkTarget};
use crate::stats::{
    ClassStats, Counters, Interval, ShardReport, ShardStats, StageHistograms, UpstreamStats,
    UpstreamTotals,
};
use crate::summary::{self, ClassSummary, RunSummary, ShardSummary};
use crate::tick::Clock;

/// Time between start-up and the first tick, so every shard is running (and
/// glommio's slow first timer has fired) before ticks come due.
const START_LEAD: Duration = Duration::from_millis(300);

/// Batches in flight between the shards and the sink writer. Bounded: a slow sink
/// pushes back on the shards, which then skip ticks with a recorded reason.
const RESULT_CHANNEL_BATCHES: usize = 256;

/// Emptied batch vectors kept for reuse, per shard. Each keeps its capacity (a
/// busy shard's batch can hold thousands of rows), so this bounds the memory the
/// pool holds; a shard that finds it empty allocates, which costs little once
/// per flush.
const RECYCLED_BATCHES_PER_SHARD: usize = 4;

/// Events from the sink writer not yet read by the coordinator: a few a second
/// (one per-second lag histogram, retries), read every loop.
const SINK_EVENT_CAPACITY: usize = 256;

/// How many seconds a second of the run stays open for late intervals (the
/// shards report at each second's end, the sink its lag at the next commit)
/// before it is written to the interval log and dropped.
const SECONDS_KEPT_OPEN: u64 = 3;

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
    /// Its replicas' counters at the end.
    upstream: UpstreamStats,
    /// End of the window this shard dispatched (Unix ms, exclusive).
    end_ms: i64,
    /// Why the shard stopped early, if it did.
    error: Option<String>,
}

/// Runs the dispatcher described by `config` until the duration ends or `stop` fires.
///
/// A run whose sink failed for good still returns its summary, with
/// [`RunSummary::sink_error`] set and only committed rows counted as written: the
/// caller reports it and exits non-zero. `Err` is for runs that could not start,
/// or whose shards broke.
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

    // A class without nodes could not run one job. The config file cannot say
    // so, but a Config built in code can: refuse it before anything starts.
    for class in &config.classes {
        for (nodes, role) in [
            (&class.data_sources, "data_sources"),
            (&class.compute_nodes, "compute_nodes"),
        ] {
            if nodes.is_empty() {
                return Err(RunError(format!(
                    "class {:?} has no {role}: at least one is needed",
                    class.name
                )));
            }
        }
    }
    // Who writes the rows: the run's id goes on every row and into `runs`.
    let description = config_description(config, options);
    let run = sink::run::RunIdentity::new(sink::run::config_digest(&description.to_string()));
    let run_id = run.run_id.clone();
    let names = Arc::new(RowNames {
        run,
        fleet: fleet.clone(),
        classes: config.classes.iter().map(class_names).collect(),
    });
    let target = match &config.sink {
        SinkConfig::Sqlite {
            path, busy_timeout, ..
        } => SinkTarget::Sqlite {
            path: path.clone(),
            busy_timeout: *busy_timeout,
        },
        SinkConfig::Postgres { options, .. } => SinkTarget::Postgres(options.clone()),
    };
    let run_identity = names.run.clone();
    let opened = sink::open(&target, names.clone(), config.sink.journal().is_some())
        .map_err(|error| RunError(error.to_string()))?;
    let journal = match config.sink.journal() {
        None => None,
        Some(journal) => Some(open_journal(journal.clone(), names)?),
    };
    if let (Some(error), Some(journal)) = (&opened.unreachable, config.sink.journal()) {
        console::err(format_args!(
            "warning: {error}; the run goes on: results go to the journal in {} and \
             into the database once it answers",
            journal.dir.display()
        ));
    }
    let sink = opened.sink;

    let clock = Clock::now_from_system();
    let start_ms = clock.now_ms() + START_LEAD.as_millis() as i64;
    let run_start = clock.instant_of(start_ms);
    let end_ms = options
        .duration
        .map_or(i64::MAX, |duration| start_ms + duration.as_millis() as i64);
    let per_second = PerSecond::open(options.interval_log.clone(), start_ms)?;

    let (results_tx, results_rx) = flume::bounded(RESULT_CHANNEL_BATCHES);
    let (recycle_tx, recycle_rx) = flume::bounded(RECYCLED_BATCHES_PER_SHARD * shard_count);
    let (sink_events_tx, sink_events) = flume::bounded(SINK_EVENT_CAPACITY);
    let (names_tx, names_rx) = flume::bounded(RELOADS_QUEUED);
    let progress = Arc::new(SinkProgress::default());
    let writer_channels = WriterChannels {
        batches: results_rx,
        recycle: recycle_tx,
        events: sink_events_tx,
        progress: progress.clone(),
        names: names_rx,
    };
    let writer = sink::spawn_writer(
        sink,
        writer_channels,
        run_start,
        config.sink.commit_delay(),
        journal,
    )
    .map_err(|error| RunError(format!("cannot start the sink writer thread: {error}")))?;
    crate::tuning::pin::place_sink_writer(&writer, &config.tuning);
    let (reports_tx, reports_rx) = flume::bounded(shard_count * 64);
    let limits = ShardLimits {
        max_in_flight: config.tuning.max_in_flight_per_shard,
        connections_per_node: config.tuning.connections_per_node,
        max_message_len: config.grpc.max_message_bytes,
        connect_timeout: Duration::from_millis(config.grpc.connect_timeout_ms),
        retries: config.grpc.retries,
        retry_budget_percent: config.grpc.retry_budget_percent,
        retry_budget_min_per_s: config.grpc.retry_budget_min_per_s,
        keepalive: (config.grpc.keepalive_interval_ms > 0).then(|| {
            (
                Duration::from_millis(config.grpc.keepalive_interval_ms),
                Duration::from_millis(config.grpc.keepalive_timeout_ms),
            )
        }),
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
            stage: options.stage,
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
        match runtime::start_with(&spec, &config.tuning.executor, move || shard::run(plan)) {
            Ok(executor) => {
                controls.push(control_tx);
                executors.push(executor);
            }
            Err(error) => {
                for control in &controls {
                    let _ = control.send(Control::Abort);
                    let _ = control.send(Control::Release);
                }
                return Err(RunError(error.to_string()));
            }
        }
    }
    // Only shards hold these now: the writer ends when the last shard lets go.
    drop((results_tx, recycle_rx, reports_tx));

    let class_names: Arc<[String]> = config.classes.iter().map(|c| c.name.clone()).collect();
    let mut supervisor = Supervisor::new(
        shard_count,
        run_start,
        options,
        &clock,
        per_second,
        progress.clone(),
        class_names,
    );
    let mut reloader = Reloader {
        path: config.path.clone(),
        live: Live::new(config, shard_count),
        run: run_identity,
        names: names_tx,
    };
    let inbox = Inbox {
        reports: &reports_rx,
        sink_events: &sink_events,
    };
    let finished = supervisor.supervise(&inbox, &controls, Some(&mut reloader));
    let Reloader { live, .. } = reloader;
    let fleet = live.fleet.clone();
    if finished.is_err() {
        // Let the other shards drain and report, so the writer and they can end.
        for control in &controls {
            let _ = control.send(Control::Abort);
        }
    }

    let writer_report = writer
        .join()
        .map_err(|_| RunError("the sink writer thread panicked".into()))?;
    // What the writer said after the shards were done: its last seconds of lag.
    for event in sink_events.try_iter() {
        supervisor.on_sink_event(event, &controls);
    }
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
    let sink_error = writer_report.failure.as_ref().map(ToString::to_string);
    // With the sink gone, shards fail to hand over their last results: that is the
    // sink's failure, reported once, not the shards'.
    if sink_error.is_none() {
        if let Some(error) = finished.iter().find_map(|report| report.error.clone()) {
            return Err(RunError(error));
        }
    }
    // All shards were given the same stop time; one that heard late stopped later.
    let stopped_ms = finished
        .iter()
        .map(|report| report.end_ms)
        .max()
        .unwrap_or(start_ms)
        .clamp(start_ms, end_ms);

    let sink_lag = &writer_report.sink_lag;
    if let Some((second, lag)) = &sink_lag.current_second {
        supervisor.per_second.add_sink_lag(*second, lag);
    }
    let window_seconds = ((stopped_ms - start_ms).max(0) as u64).div_ceil(1000);
    let interval_log = supervisor.per_second.finish(window_seconds);

    let coordinator_cpu = cpu::current_thread().saturating_sub(coordinator_cpu_at_start);
    let mut summary = RunSummary {
        shards: shard_count,
        window_ms: (start_ms, stopped_ms),
        elapsed: Duration::from_millis((stopped_ms - start_ms).max(0) as u64),
        dispatcher_cpu: shard_cpu + writer_report.cpu + coordinator_cpu,
        shard_cpu,
        writer_cpu: writer_report.cpu,
        rows_written: writer_report.rows,
        journal: writer_report.journal.clone(),
        sink_location: writer_report.location.clone(),
        sink_error,
        counters: Counters::default(),
        latency: StageHistograms::default(),
        per_shard: Vec::with_capacity(shard_count),
        per_class: live
            .classes
            .iter()
            .map(|class| ClassSummary {
                class: class.name.clone(),
                model: class.model.clone(),
                stats: ClassStats::default(),
            })
            .collect(),
        upstream: UpstreamTotals::merge(finished.iter().map(|report| &report.upstream)),
        failures: Vec::new(),
        interval_log,
        config: description,
        run_id,
    };
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
            failures: report.stats.failures.clone(),
        });
        for (class, stats) in summary.per_class.iter_mut().zip(&report.stats.per_class) {
            class.stats.counters.add(&stats.counters);
            class.stats.latency.add(&stats.latency);
        }
    }
    for (class, lag) in summary.per_class.iter_mut().zip(&sink_lag.per_class) {
        let _ = class.stats.latency.sink_lag.add(lag);
    }
    summary.counters.in_flight = 0;
    let failures = FailureBreakdown::merge(finished.iter().map(|report| &report.stats.failures));
    summary.failures = summary::failure_rows(&failures, summary.counters.jobs(), |device| {
        fleet.id(device).to_string()
    });
    supervisor.publish_final(&summary);
    // Rows still in the journal are safe on disk: the next run replays them.
    let kept = summary.rows_written + summary.journal.run_rows_left;
    if summary.sink_error.is_none() && summary.counters.jobs() != kept {
        return Err(RunError(format!(
            "shards counted {} jobs but the sink wrote {} rows{}",
            summary.counters.jobs(),
            summary.rows_written,
            match &summary.journal.dir {
                Some(_) => format!(
                    " and {} are still in the journal ({} lost to damaged journal records)",
                    summary.journal.run_rows_left, summary.journal.rows_lost
                ),
                None => String::new(),
            }
        )));
    }
    Ok(summary)
}

/// Reload requests, and their names for the writer, that may wait at once: a
/// burst of SIGHUPs is one reload.
const RELOADS_QUEUED: usize = 4;

/// What a live reload needs on the coordinator.
struct Reloader {
    /// The config file, read again at each request.
    path: PathBuf,
    /// The config as the shards run it.
    live: Live,
    /// The run's identity, for the writer's new names.
    run: sink::run::RunIdentity,
    /// New names to the sink writer, sent before the shards hear of a reload.
    names: flume::Sender<Arc<RowNames>>,
}

impl Reloader {
    /// Reads the config file again and applies its device list and classes:
    /// the writer gets the new names first, then every shard the reload. A file
    /// that does not load changes nothing; its error is logged. Returns the
    /// class names after it, for the metrics.
    fn reload(&mut self, controls: &[flume::Sender<Control>]) -> Option<Arc<[String]>> {
        let next = match Config::reload(&self.path, self.live.tuning()) {
            Ok(next) => next,
            Err(error) => {
                console::err(format_args!(
                    "reload: {error}; the run goes on with the config it has"
                ));
                return None;
            }
        };
        let (reload, changes) = match self.live.merge(&next) {
            Ok(merged) => merged,
            Err(error) => {
                console::err(format_args!(
                    "reload: {}: {error}; the run goes on with the config it has",
                    self.path.display()
                ));
                return None;
            }
        };
        let names = Arc::new(RowNames {
            run: self.run.clone(),
            fleet: reload.fleet.clone(),
            classes: reload.classes.iter().map(class_names).collect(),
        });
        if self.names.send(names).is_err() {
            console::err(format_args!(
                "reload: the sink writer has stopped; nothing reloaded"
            ));
            return None;
        }
        let class_names: Arc<[String]> = reload.classes.iter().map(|c| c.name.clone()).collect();
        let reload = Arc::new(reload);
        for control in controls {
            let _ = control.send(Control::Reload(reload.clone()));
        }
        console::err(format_args!("reload: {}: {changes}", self.path.display()));
        Some(class_names)
    }
}

/// A class's names as rows carry them.
fn class_names(class: &crate::config::Class) -> ClassNames {
    ClassNames {
        all_outputs: class.store_all_outputs,
        class: class.name.clone(),
        model: class.model.clone(),
        compute_nodes: class.compute_nodes.iter().map(|n| n.to_string()).collect(),
    }
}

/// Opens the spill journal and says what an earlier run left in it (the
/// writer replays that before any new result) and what was cut from it.
fn open_journal(
    config: crate::sink::journal::JournalConfig,
    names: Arc<RowNames>,
) -> Result<WriterJournal, RunError> {
    let (journal, leftover) = Journal::open(config).map_err(|error| RunError(error.to_string()))?;
    for cut in &leftover.cuts {
        crate::console::err(format_args!("warning: {cut}"));
    }
    if leftover.batches > 0 {
        crate::console::err(format_args!(
            "journal {}: an earlier run left {} rows ({} batches, {} bytes in {} segment(s)); replaying them before new results",
            journal.dir().display(),
            leftover.rows,
            leftover.batches,
            leftover.bytes,
            leftover.segments
        ));
    }
    Ok(WriterJournal {
        journal,
        leftover_rows: leftover.rows,
        names,
        drain_limit: sink::writer::SHUTDOWN_DRAIN_LIMIT,
    })
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
        "grpc": grpc_description(&config.grpc),
        "classes": config.classes.iter().map(|class| serde_json::json!({
            "name": class.name, "model": class.model, "period_ms": class.period_ms,
            "deadline_ms": class.deadline_ms,
            "data_sources": class.data_sources.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "compute_nodes": class.compute_nodes.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "upstream": upstream_description(&class.upstream),
        })).collect::<Vec<_>>(),
        "mocks": options.mocks,
    })
}

/// The `[grpc]` settings that decide how a failing call is treated.
fn grpc_description(grpc: &crate::config::GrpcConfig) -> serde_json::Value {
    serde_json::json!({
        "retries": grpc.retries,
        "connect_timeout_ms": grpc.connect_timeout_ms,
        "retry_budget_percent": grpc.retry_budget_percent,
        "retry_budget_min_per_s": grpc.retry_budget_min_per_s,
        "keepalive_interval_ms": grpc.keepalive_interval_ms,
        "keepalive_timeout_ms": grpc.keepalive_timeout_ms,
    })
}

/// A class's balancing, attempt timeout and hedging, as the config spells them.
fn upstream_description(upstream: &crate::config::Upstream) -> serde_json::Value {
    use crate::config::{BalancerKind, Hedge};
    let hedge = match upstream.hedge {
        None => serde_json::Value::Null,
        Some(Hedge::After(delay)) => serde_json::json!({"after_ms": delay.as_millis() as u64}),
        Some(Hedge::Percentile(p)) => serde_json::json!({"percentile": p}),
    };
    serde_json::json!({
        "balancer": match upstream.balancer {
            BalancerKind::PowerOfTwoChoices => "p2c",
            BalancerKind::RoundRobin => "round_robin",
        },
        "attempt_timeout_ms": upstream.attempt_timeout.map(|t| t.as_millis() as u64),
        "hedge": hedge,
        "max_outstanding_per_replica": upstream.max_outstanding_per_replica,
        "retry_on": upstream.retry_on.iter().map(|code| code.0).collect::<Vec<_>>(),
    })
}

/// What the coordinator listens to.
struct Inbox<'a> {
    /// Progress and final reports from the shards.
    reports: &'a flume::Receiver<ShardReport>,
    /// Retries, failures and lag from the sink writer.
    sink_events: &'a flume::Receiver<SinkEvent>,
}

/// One message the coordinator got, from either side.
enum Message {
    Shard(Result<ShardReport, flume::RecvError>),
    Sink(Result<SinkEvent, flume::RecvError>),
    /// A reload was asked for (or, `Err`, can no longer be).
    Reload(Result<(), flume::RecvError>),
}

/// The run's per-second latencies while they can still change. A second stays
/// open for [`SECONDS_KEPT_OPEN`] seconds, until every shard's interval and the
/// sink's lag for it have come in; then it is appended to the interval log (if
/// the run keeps one) and dropped, so a run of any length holds a few seconds.
struct PerSecond {
    /// Seconds of the run (0 = the first second after the first tick) still open.
    open: BTreeMap<u64, StageHistograms>,
    /// Where closed seconds go, if anywhere; `None` also after a write error.
    log: Option<LogWriter<BufWriter<File>>>,
    /// The log's path, handed to the summary once the log is complete.
    path: Option<PathBuf>,
    /// Seconds before this one were closed: an interval arriving for one of them
    /// is filed under this one instead (it cannot be appended to the log any more).
    first_open: u64,
    /// Seconds from this one on are past the run's window (known at the end):
    /// their empty stages are not written.
    after_window: u64,
}

impl PerSecond {
    /// Starts the interval log at `path` for a run starting at `start_ms`.
    fn open(path: Option<PathBuf>, start_ms: i64) -> Result<PerSecond, RunError> {
        let log = match &path {
            None => None,
            Some(path) => {
                let cannot = |error: std::io::Error| {
                    RunError(format!(
                        "cannot write the interval log {}: {error}",
                        path.display()
                    ))
                };
                if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(cannot)?;
                }
                let file = BufWriter::new(File::create(path).map_err(cannot)?);
                Some(LogWriter::begin(file, start_ms).map_err(cannot)?)
            }
        };
        Ok(PerSecond {
            open: BTreeMap::new(),
            log,
            path,
            first_open: 0,
            after_window: u64::MAX,
        })
    }

    fn slot(&mut self, second: u64) -> &mut StageHistograms {
        self.open.entry(second.max(self.first_open)).or_default()
    }

    fn add_shard(&mut self, second: u64, latency: &StageHistograms) {
        self.slot(second).add(latency);
    }

    fn add_sink_lag(&mut self, second: u64, lag: &Histogram<u64>) {
        let _ = self.slot(second).sink_lag.add(lag);
    }

    fn get(&self, second: u64) -> Option<&StageHistograms> {
        self.open.get(&second)
    }

    /// Writes every open second before `second` to the log and drops it.
    fn close_before(&mut self, second: u64) {
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= second {
                break;
            }
            let (closed, latency) = entry.remove_entry();
            self.write(closed, &latency);
        }
        self.first_open = self.first_open.max(second);
    }

    fn write(&mut self, second: u64, latency: &StageHistograms) {
        let Some(log) = &mut self.log else { return };
        for (index, (stage, histogram)) in latency.tagged().into_iter().enumerate() {
            // The failed and skipped tags only when there were some: an absent
            // tag reads as none, and a healthy run's log stays as it was.
            let ok_stage = index < crate::stats::STAGES.len();
            if (second >= self.after_window || !ok_stage) && histogram.is_empty() {
                continue;
            }
            let interval = crate::report::Interval {
                start: Duration::from_secs(second),
                length: Duration::from_secs(1),
                stage: stage.to_string(),
                histogram: histogram.clone(),
            };
            if let Err(error) = log.append(&interval) {
                // The run goes on: its rows matter more than its plots.
                crate::console::err(format_args!("warning: interval log stopped: {error}"));
                self.log = None;
                self.path = None;
                return;
            }
        }
    }

    /// Closes every second and the log; returns the log's path if it is whole.
    /// From `window_seconds` on (after the run's window: jobs draining, the
    /// writer's last commits) only stages that had samples are written: an
    /// empty end-to-end interval there would be drawn as a drop to zero that
    /// did not happen.
    fn finish(&mut self, window_seconds: u64) -> Option<PathBuf> {
        self.after_window = window_seconds;
        self.close_before(u64::MAX);
        let log = self.log.take()?;
        match log.finish() {
            Ok(_) => self.path.take(),
            Err(error) => {
                crate::console::err(format_args!(
                    "warning: cannot finish the interval log: {error}"
                ));
                None
            }
        }
    }
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
    /// Each shard's latest view of its replicas, merged when publishing.
    upstream: Vec<UpstreamStats>,
    /// Each shard's latest failure breakdown: labelled by shard in the
    /// metrics, merged for the status line's top reason.
    failures: Vec<FailureBreakdown>,
    /// Class names by index, for the metrics' `class` label.
    class_names: Arc<[String]>,
    /// Latencies of the last few seconds of the run, and the interval log.
    per_second: PerSecond,
    /// Latencies of the whole run so far, for the metrics.
    so_far: StageHistograms,
    /// Rows the sink has committed, read when printing and publishing.
    progress: Arc<SinkProgress>,
    /// What is failing right now, if anything (the sink retrying, or gone).
    health: Health,
    /// Set once the sink failed for good: the run is being stopped.
    sink_failed: bool,
    /// Whether reload requests can still come (their sender is alive).
    reloads_heard: bool,
    /// Jobs counted at the previous status line.
    jobs_at_last_status: u64,
    /// The progress bar under the status lines, for a run with a duration
    /// printing its status (drawn on a terminal only).
    progress_bar: Option<crate::console::Progress>,
}

impl<'a> Supervisor<'a> {
    fn new(
        shards: usize,
        run_start: Instant,
        options: &'a RunOptions,
        clock: &'a Clock,
        per_second: PerSecond,
        progress: Arc<SinkProgress>,
        class_names: Arc<[String]>,
    ) -> Supervisor<'a> {
        Supervisor {
            options,
            clock,
            run_start,
            latest: vec![Counters::default(); shards],
            upstream: vec![UpstreamStats::default(); shards],
            failures: vec![FailureBreakdown::default(); shards],
            class_names,
            per_second,
            so_far: StageHistograms::default(),
            progress,
            health: Health::Ok,
            sink_failed: false,
            reloads_heard: true,
            jobs_at_last_status: 0,
            progress_bar: match (options.print_status, options.duration) {
                (true, Some(duration)) => {
                    Some(crate::console::Progress::start(duration + START_LEAD))
                }
                _ => None,
            },
        }
    }

    /// Files a shard's interval under the second of the run it covers. Shards
    /// close intervals on the run's second boundaries, so an interval's middle
    /// falls in the second it belongs to, whatever the jitter of its ends.
    fn add_interval(&mut self, interval: &Interval) {
        let middle = interval.start + interval.end.saturating_duration_since(interval.start) / 2;
        let second = middle.saturating_duration_since(self.run_start).as_secs();
        self.per_second.add_shard(second, &interval.latency);
        self.so_far.add(&interval.latency);
    }

    /// Acts on what the sink writer says: health, the stop on a failure, lag.
    fn on_sink_event(&mut self, event: SinkEvent, controls: &[flume::Sender<Control>]) {
        match event {
            SinkEvent::Retrying { error } => {
                crate::console::err(format_args!("warning: {error}; retrying"));
                self.health = Health::Failing(error);
                self.publish();
            }
            SinkEvent::Recovered => {
                crate::console::err(format_args!("sink: writes succeed again"));
                if !self.sink_failed {
                    self.health = Health::Ok;
                }
                self.publish();
            }
            SinkEvent::Failed { error } => {
                crate::console::err(format_args!("error: {error}; stopping the run"));
                self.health = Health::Failing(error);
                self.sink_failed = true;
                // Nothing more can be written: stop now, without waiting for the
                // jobs in flight, whose results could not be stored.
                for control in controls {
                    let _ = control.send(Control::Abort);
                }
                self.publish();
            }
            SinkEvent::Journaling { error, dir } => {
                crate::console::err(format_args!(
                    "warning: {error}; results go to the spill journal in {dir} until the database answers"
                ));
                self.health = Health::Failing(error);
                self.publish();
            }
            SinkEvent::JournalRefused { error } => {
                crate::console::err(format_args!(
                    "warning: {error}; waiting for the database (ticks are skipped meanwhile)"
                ));
                self.publish();
            }
            SinkEvent::JournalCut { cut } => {
                crate::console::err(format_args!("warning: {cut}"));
            }
            SinkEvent::JournalReplayed { rows } => {
                crate::console::err(format_args!(
                    "sink: the spill journal is replayed ({rows} rows); writing directly again"
                ));
                self.publish();
            }
            SinkEvent::LagSecond { second, histogram } => {
                self.per_second.add_sink_lag(second, &histogram);
                let _ = self.so_far.sink_lag.add(&*histogram);
            }
        }
    }

    /// Waits for the next message until `deadline`; `None` when it passed.
    fn next_message(
        &self,
        inbox: &Inbox<'_>,
        sink_open: bool,
        deadline: Instant,
    ) -> Option<Message> {
        let mut selector = flume::Selector::new().recv(inbox.reports, Message::Shard);
        if sink_open {
            selector = selector.recv(inbox.sink_events, Message::Sink);
        }
        // A reload waits for no status line: the edited file applies at once.
        if let (Some(requests), true) = (&self.options.reload, self.reloads_heard) {
            selector = selector.recv(requests, Message::Reload);
        }
        selector.wait_deadline(deadline).ok()
    }

    /// Collects reports until every shard has finished, printing status each
    /// second, forwarding a stop request and acting on the sink's events. Returns
    /// each shard's final report.
    fn supervise(
        &mut self,
        inbox: &Inbox<'_>,
        controls: &[flume::Sender<Control>],
        mut reloader: Option<&mut Reloader>,
    ) -> Result<Vec<FinalReport>, RunError> {
        let mut finished: Vec<Option<FinalReport>> = self.latest.iter().map(|_| None).collect();
        let started = Instant::now();
        let mut next_status = started + Duration::from_secs(1);
        let mut stop_sent = false;
        let mut sink_open = true;
        while finished.iter().any(Option::is_none) {
            match self.next_message(inbox, sink_open, next_status) {
                Some(Message::Shard(Ok(ShardReport::Progress {
                    shard,
                    counters,
                    interval,
                    upstream,
                    failures,
                }))) => {
                    self.latest[shard as usize] = counters;
                    self.upstream[shard as usize] = upstream;
                    self.failures[shard as usize] = failures;
                    self.add_interval(&interval);
                }
                Some(Message::Shard(Ok(ShardReport::Finished {
                    shard,
                    stats,
                    interval,
                    upstream,
                    end_ms,
                    error,
                }))) => {
                    self.add_interval(&interval);
                    self.latest[shard as usize] = stats.counters;
                    self.latest[shard as usize].in_flight = 0;
                    self.upstream[shard as usize] = upstream.clone();
                    self.failures[shard as usize] = stats.failures.clone();
                    finished[shard as usize] = Some(FinalReport {
                        stats: *stats,
                        upstream,
                        end_ms,
                        error,
                    });
                }
                Some(Message::Shard(Ok(ShardReport::Exited { shard }))) => {
                    return Err(RunError(format!(
                        "shard {shard} stopped unexpectedly (its executor failed to start or panicked)"
                    )));
                }
                Some(Message::Shard(Err(flume::RecvError::Disconnected))) => {
                    return Err(RunError(
                        "a shard exited without reporting (see its panic above)".into(),
                    ));
                }
                Some(Message::Sink(Ok(event))) => self.on_sink_event(event, controls),
                // The writer ended (done, or failed and said so): nothing more to hear.
                Some(Message::Sink(Err(flume::RecvError::Disconnected))) => sink_open = false,
                Some(Message::Reload(Ok(()))) if !stop_sent => {
                    if let Some(reloader) = reloader.as_deref_mut() {
                        self.reload(controls, reloader);
                    }
                }
                Some(Message::Reload(Ok(()))) => {}
                Some(Message::Reload(Err(flume::RecvError::Disconnected))) => {
                    self.reloads_heard = false
                }
                None => {}
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
                let second = self.run_second();
                self.per_second
                    .close_before(second.saturating_sub(SECONDS_KEPT_OPEN));
                // Publish first: a scrape right after the line shows its counts.
                self.publish();
                self.status(started);
                next_status += Duration::from_secs(1);
            }
        }
        // The bar's line is cleared before the summary is printed.
        self.progress_bar = None;
        Ok(finished.into_iter().flatten().collect())
    }

    /// Applies a reload request (tick-driven runs only).
    fn reload(&mut self, controls: &[flume::Sender<Control>], reloader: &mut Reloader) {
        if self.options.load != Load::Ticks {
            console::err(format_args!(
                "reload: only tick-driven runs reload; ignored"
            ));
            return;
        }
        if let Some(names) = reloader.reload(controls) {
            self.class_names = names;
        }
    }

    /// Whole seconds since the first tick was due.
    fn run_second(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.run_start)
            .as_secs()
    }

    /// All shards' latest counters added up.
    fn total(&self) -> Counters {
        let mut total = Counters::default();
        self.latest.iter().for_each(|counters| total.add(counters));
        total
    }

    /// Prints the status line (and, on a terminal, redraws the progress bar).
    fn status(&mut self, started: Instant) {
        let total = self.total();
        let jobs_per_s = total.jobs() - self.jobs_at_last_status;
        self.jobs_at_last_status = total.jobs();
        // Nothing to say before the run's first whole second: the first line
        // used to be all zeros and dashes.
        if self.run_second() == 0 {
            return;
        }
        // The last complete second of the run.
        let second = self.run_second() - 1;
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
        let mut line = format!(
            "[{:>4}s] jobs/s {:>7} | p99 e2e {:>9} | in flight {:>5} | ok {:>9} | failed {:>7} | skipped {:>7} | committed {:>9}",
            started.elapsed().as_secs(),
            jobs_per_s,
            p99,
            total.in_flight,
            total.ok,
            total.failed,
            total.skipped,
            self.progress.committed(),
        );
        if total.failed > 0 {
            let failures = FailureBreakdown::merge(&self.failures);
            line.push_str(&failure_note(&failures, total.jobs()));
        }
        if let Health::Failing(cause) = &self.health {
            line.push_str(" | FAILING: ");
            line.push_str(cause);
        }
        if let Some(bar) = &self.progress_bar {
            bar.set(started.elapsed());
        }
        crate::console::err(format_args!("{line}"));
    }

    fn publish(&self) {
        if let Some(metrics) = &self.options.metrics {
            metrics.publish(MetricsSnapshot {
                per_shard: self.latest.clone(),
                rows_committed: self.progress.committed(),
                rows_journaled: self.progress.rows_journaled(),
                rows_replayed: self.progress.rows_replayed(),
                journal_bytes: self.progress.journal_bytes(),
                latency: self.so_far.clone(),
                upstream: UpstreamTotals::merge(&self.upstream),
                failures: self.failures.clone(),
                class_names: self.class_names.clone(),
                health: self.health.clone(),
            });
        }
    }

    /// The end-of-run snapshot: exactly the run's totals.
    fn publish_final(&self, summary: &RunSummary) {
        if let Some(metrics) = &self.options.metrics {
            metrics.publish(MetricsSnapshot {
                per_shard: summary
                    .per_shard
                    .iter()
                    .map(|shard| shard.counters)
                    .collect(),
                rows_committed: summary.rows_written,
                rows_journaled: summary.journal.rows_journaled,
                rows_replayed: summary.journal.rows_replayed,
                journal_bytes: summary.journal.bytes,
                latency: summary.latency.clone(),
                upstream: summary.upstream.clone(),
                failures: summary
                    .per_shard
                    .iter()
                    .map(|shard| shard.failures.clone())
                    .collect(),
                class_names: self.class_names.clone(),
                health: self.health.clone(),
            });
        }
    }
}

/// The status line's failure note: the failed share of all jobs so far and
/// the most frequent failure (stage, class and its most frequent exact text),
/// e.g. ` | failed 30.0%, top: infer grpc NOT_FOUND (infer: grpc status 5 NOT_FOUND: …)`.
fn failure_note(failures: &FailureBreakdown, jobs: u64) -> String {
    let failed = failures.failed();
    let share = failed as f64 * 100.0 / jobs.max(1) as f64;
    let mut note = format!(" | failed {share:.1}%");
    // Skips have no stage: the top *failure* is the first entry with one.
    if let Some(top) = failures
        .by_count()
        .into_iter()
        .find(|entry| entry.stage.is_some())
    {
        note.push_str(&format!(
            ", top: {} {}",
            top.stage_label(),
            top.class.label()
        ));
        if let Some(text) = top.top_text() {
            note.push_str(&format!(" ({})", text.text));
        }
    }
    note
}

/// `1.25 ms`, `830 µs`, `2.10 s`.
/// A latency for the status line, always in milliseconds, so one column keeps
/// one unit for the whole run (it used to switch from `8839 µs` to `16.88 ms`).
pub fn format_us(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1e3)
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
        let (_sink_tx, sink_events) = flume::bounded(4);
        reports_tx.send(ShardReport::Exited { shard: 1 }).unwrap();
        let per_second = PerSecond::open(None, 0).unwrap();
        let progress = Arc::new(SinkProgress::default());
        let classes: Arc<[String]> = Arc::from(vec!["camera".to_string()]);
        let mut supervisor = Supervisor::new(
            2,
            Instant::now(),
            &options,
            &clock,
            per_second,
            progress,
            classes,
        );
        let inbox = Inbox {
            reports: &reports_rx,
            sink_events: &sink_events,
        };
        let error = supervisor.supervise(&inbox, &[], None).err().map(|e| e.0);
        assert_eq!(
            error.as_deref(),
            Some("shard 1 stopped unexpectedly (its executor failed to start or panicked)")
        );
    }

    #[test]
    fn the_status_lines_failure_note_names_the_share_and_the_top_failure() {
        use crate::error::{ErrorKind, JobError, Stage};
        use crate::record::{JobRecord, Outcome, SkipReason, StageLatency};
        let mut breakdown = FailureBreakdown::default();
        let mut buffer = String::new();
        let mut push = |outcome: Outcome| {
            let record = JobRecord {
                device: 0,
                tick_ms: 0,
                class: 0,
                shard: 0,
                outcome,
                outputs: Vec::new(),
                latency: StageLatency::default(),
                compute_node: None,
                attempts: 1,
                ready_at: Instant::now(),
            };
            breakdown.record(&record, &mut buffer);
        };
        // More skips than failures: the note still names the top *failure*.
        for _ in 0..5 {
            push(Outcome::Skipped(SkipReason::SinkBacklog));
        }
        for _ in 0..3 {
            push(Outcome::Failed(JobError::new(
                Stage::Fetch,
                ErrorKind::DeadlineExceeded,
            )));
        }
        assert_eq!(
            failure_note(&breakdown, 12),
            " | failed 25.0%, top: fetch deadline (fetch: deadline exceeded)"
        );
    }

    #[test]
    fn durations_and_bars_read_well() {
        assert_eq!(format_us(830), "0.83 ms");
        assert_eq!(format_us(8_839), "8.84 ms");
        assert_eq!(format_us(12_500), "12.50 ms");
        assert_eq!(format_us(2_100_000), "2100.00 ms");
    }
}
