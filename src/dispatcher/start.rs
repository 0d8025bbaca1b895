//! Start-up: everything a run needs, made before the first tick.

use std::sync::Arc;
use std::time::Duration;

use super::describe::config_description;
use super::ownership::Ownership;
use super::per_second::PerSecond;
use super::reloader::{class_names, Reloader, RELOADS_QUEUED};
use super::supervise::Supervisor;
use super::{Load, RunError, RunOptions, START_LEAD};
use crate::config::{Config, SinkConfig};
use crate::console;
use crate::cpu;
use crate::reload::Live;
use crate::runtime::{self, Executor, ExecutorSpec};
use crate::shard::{self, Control, ExitNotice, ShardChannels, ShardLimits, ShardPlan, Workload};
use crate::sink::journal::Journal;
use crate::sink::writer::{WriterChannels, WriterJournal, WriterReport};
use crate::sink::{self, RowNames, SinkEvent, SinkProgress, SinkTarget};
use crate::stats::ShardReport;
use crate::tick::Clock;

/// Batches in flight between the shards and the sink writer. Bounded: a slow sink
/// pushes back on the shards, which then skip ticks with a recorded reason.
pub(super) const RESULT_CHANNEL_BATCHES: usize = 256;

/// Emptied batch vectors kept for reuse, per shard. Each keeps its capacity (a
/// busy shard's batch can hold thousands of rows), so this bounds the memory the
/// pool holds; a shard that finds it empty allocates, which costs little once
/// per flush.
pub(super) const RECYCLED_BATCHES_PER_SHARD: usize = 4;

/// Events from the sink writer not yet read by the coordinator: a few a second
/// (one per-second lag histogram, retries), read every loop.
pub(super) const SINK_EVENT_CAPACITY: usize = 256;

/// A run that has started: what supervising and shutting it down need.
pub(super) struct Running<'a> {
    /// The coordinator's CPU time when the run began, so its share is counted.
    pub coordinator_cpu_at_start: Duration,
    /// Shards started.
    pub shard_count: usize,
    /// The run's window in Unix ms (`end_ms` is `i64::MAX` without a duration).
    pub start_ms: i64,
    pub end_ms: i64,
    /// What the run was, for reports, and its id on every row.
    pub description: serde_json::Value,
    pub run_id: String,
    /// One control channel per shard.
    pub controls: Vec<flume::Sender<Control>>,
    /// The shard executors, joined at the end.
    pub executors: Vec<Executor<()>>,
    /// The sink writer thread, joined at the end.
    pub writer: std::thread::JoinHandle<WriterReport>,
    /// Progress and final reports from the shards.
    pub reports: flume::Receiver<ShardReport>,
    /// Retries, failures and lag from the writer.
    pub sink_events: flume::Receiver<SinkEvent>,
    /// The coordinator's view of the run.
    pub supervisor: Supervisor<'a>,
    /// What a live reload needs; its [`Live`] is the config the run ended on.
    pub reloader: Reloader,
}

/// Checks the config, splits the fleet, opens the sink and its writer, and
/// starts one executor per shard CPU.
pub(super) fn start<'a>(config: &Config, options: &'a RunOptions) -> Result<Running<'a>, RunError> {
    let coordinator_cpu_at_start = cpu::current_thread();
    let shard_cpus = config.tuning.resolved_shard_cpus();
    if shard_cpus.is_empty() {
        return Err(RunError("no CPU to run a shard on".into()));
    }
    let shard_count = shard_cpus.len();
    // Which devices run here, on which shard: the static split's (all of them
    // without [cluster]), or with etcd none until the first membership.
    let mut live = Live::new(config);
    let mut ownership = Ownership::new(&config.cluster, shard_count, config.classes.len());
    let owned = ownership.initial(&live);
    if ownership.clustered() && options.cluster.is_none() {
        return Err(RunError(
            "[cluster] etcd is set but nothing feeds this run the cluster's membership \
             (RunOptions::cluster): no device would ever run"
                .into(),
        ));
    }
    if ownership.clustered() && !matches!(options.load, Load::Ticks) {
        return Err(RunError(
            "a clustered config ([cluster] etcd) runs tick-driven only, not a benchmark's load"
                .into(),
        ));
    }
    if !config.cluster.split.keeps_all() {
        console::err(format_args!(
            "cluster: static split{}{}: {} of {} devices run here",
            config
                .cluster
                .split
                .slice
                .map_or(String::new(), |slice| format!(", slice {slice}")),
            config
                .cluster
                .split
                .classes
                .as_ref()
                .map_or(String::new(), |classes| {
                    let names: Vec<&str> = classes
                        .iter()
                        .filter_map(|&class| config.classes.get(usize::from(class)))
                        .map(|class| class.name.as_str())
                        .collect();
                    format!(", classes {}", names.join(", "))
                }),
            ownership.status.devices,
            config.fleet.len()
        ));
    }

    // A class without nodes could not run one job. The config file cannot say
    // so, but a Config built in code can: refuse it before anything starts.
    // A class that discovers its compute nodes in etcd may have none yet.
    for class in &config.classes {
        for (nodes, role) in [
            (&class.data_sources, "data_sources"),
            (&class.compute_nodes, "compute_nodes"),
        ] {
            if nodes.is_empty() && !(role == "compute_nodes" && class.compute_nodes_from_etcd) {
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
    let node_names = live.node_index();
    debug_assert_eq!(node_names.len(), config.classes.len());
    let names = Arc::new(RowNames {
        run,
        classes: config
            .classes
            .iter()
            .zip(&live.node_names)
            .map(|(class, nodes)| class_names(class, nodes))
            .collect(),
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
    let supervisor = Supervisor::new(
        shard_count,
        run_start,
        options,
        clock,
        per_second,
        progress.clone(),
        class_names,
    );
    let reloader = Reloader {
        path: config.path.clone(),
        live,
        ownership,
        run: run_identity,
        names: names_tx,
    };
    Ok(Running {
        coordinator_cpu_at_start,
        shard_count,
        start_ms,
        end_ms,
        description,
        run_id,
        controls,
        executors,
        writer,
        reports: reports_rx,
        sink_events,
        supervisor,
        reloader,
    })
}

/// Opens the spill journal and says what an earlier run left in it (the
/// writer replays that before any new result) and what was cut from it.
pub(super) fn open_journal(
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
pub(super) fn shard_workload(
    load: Load,
    index: usize,
    shards: usize,
    start_ms: i64,
    end_ms: i64,
) -> Workload {
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
}
