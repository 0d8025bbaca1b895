//! Shutdown: the writer and the shards joined, their CPU time read, their
//! statistics merged into the run's summary, every result accounted for.

use std::time::Duration;

use super::start::Running;
use super::supervise::FinalReport;
use super::RunError;
use crate::cpu;
use crate::failures::FailureBreakdown;
use crate::shard::Control;
use crate::stats::{ClassStats, Counters, StageHistograms, UpstreamTotals};
use crate::summary::{self, ClassSummary, RunSummary, ShardSummary};

/// Ends the run: waits for the writer (it ends when the last shard lets go of
/// its channel), reads the shards' CPU time while they wait to be released,
/// releases and joins them, and builds the summary.
pub(super) fn shut_down(
    running: Running<'_>,
    finished: Result<Vec<FinalReport>, RunError>,
) -> Result<RunSummary, RunError> {
    let Running {
        coordinator_cpu_at_start,
        shard_count,
        start_ms,
        end_ms,
        description,
        run_id,
        controls,
        executors,
        writer,
        reports: _reports,
        sink_events,
        mut supervisor,
        reloader,
    } = running;
    let live = reloader.live;
    let cluster = reloader.ownership.summary();
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
        cluster: Some(cluster),
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
    summary.failures = summary::failure_rows(&failures, summary.counters.jobs());
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
