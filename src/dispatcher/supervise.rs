//! Supervision: the coordinator listens to the shards and the sink writer
//! until every shard has finished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::per_second::PerSecond;
use super::reloader::Reloader;
use super::{Load, RunError, RunOptions, START_LEAD};
use crate::admin::{Health, MetricsSnapshot};
use crate::cluster::event::{ClusterEvent, NodeRecord};
use crate::console;
use crate::failures::FailureBreakdown;
use crate::shard::Control;
use crate::sink::{SinkEvent, SinkProgress};
use crate::stats::{
    Counters, Interval, ShardReport, ShardStats, StageHistograms, UpstreamStats, UpstreamTotals,
};
use crate::summary::RunSummary;
use crate::tick::Clock;

/// How many seconds a second of the run stays open for late intervals (the
/// shards report at each second's end, the sink its lag at the next commit)
/// before it is written to the interval log and dropped.
pub(super) const SECONDS_KEPT_OPEN: u64 = 3;

/// How far ahead of "now" an early stop is set, so every shard hears of it
/// before its clock reaches it (shards poll control at least every 50 ms) and all
/// stop at the same tick time.
pub(super) const STOP_LEAD_MS: i64 = 200;

/// A shard's last word, kept by the coordinator.
pub(super) struct FinalReport {
    /// The shard's whole-run counters and histograms.
    pub(super) stats: ShardStats,
    /// Its replicas' counters at the end.
    pub(super) upstream: UpstreamStats,
    /// End of the window this shard dispatched (Unix ms, exclusive).
    pub(super) end_ms: i64,
    /// Why the shard stopped early, if it did.
    pub(super) error: Option<String>,
}

/// What the coordinator listens to.
pub(super) struct Inbox<'a> {
    /// Progress and final reports from the shards.
    pub(super) reports: &'a flume::Receiver<ShardReport>,
    /// Retries, failures and lag from the sink writer.
    pub(super) sink_events: &'a flume::Receiver<SinkEvent>,
}

/// One message the coordinator got, from either side.
pub(super) enum Message {
    Shard(Result<ShardReport, flume::RecvError>),
    Sink(Result<SinkEvent, flume::RecvError>),
    /// A reload was asked for (or, `Err`, can no longer be).
    Reload(Result<(), flume::RecvError>),
    /// The cluster thread said something (or, `Err`, has stopped).
    Cluster(Result<ClusterEvent, flume::RecvError>),
}

/// The coordinator's view of the run while it lasts.
pub(super) struct Supervisor<'a> {
    /// Status printing, stop signal and metrics publisher of this run.
    pub(super) options: &'a RunOptions,
    /// The run's clock, to place an early stop in Unix ms.
    pub(super) clock: Clock,
    /// When the first tick was due; per-second intervals count from here.
    pub(super) run_start: Instant,
    /// Each shard's latest counters.
    pub(super) latest: Vec<Counters>,
    /// Each shard's latest view of its replicas, merged when publishing.
    pub(super) upstream: Vec<UpstreamStats>,
    /// Each shard's latest failure breakdown: labelled by shard in the
    /// metrics, merged for the status line's top reason.
    pub(super) failures: Vec<FailureBreakdown>,
    /// Class names by index, for the metrics' `class` label.
    pub(super) class_names: Arc<[String]>,
    /// Latencies of the last few seconds of the run, and the interval log.
    pub(super) per_second: PerSecond,
    /// Latencies of the whole run so far, for the metrics.
    pub(super) so_far: StageHistograms,
    /// Rows the sink has committed, read when printing and publishing.
    pub(super) progress: Arc<SinkProgress>,
    /// What is failing right now, if anything (the sink retrying, or gone).
    pub(super) health: Health,
    /// Set once the sink failed for good: the run is being stopped.
    pub(super) sink_failed: bool,
    /// Whether reload requests can still come (their sender is alive).
    pub(super) reloads_heard: bool,
    /// Whether cluster events can still come (the cluster thread is alive).
    pub(super) cluster_heard: bool,
    /// etcd is unreachable, as the cluster thread last said: the status
    /// line says so (ownership stays as it is meanwhile).
    pub(super) etcd_down: Option<String>,
    /// Registered compute nodes the writer could not take the names of yet,
    /// by class: applied again at the next status tick (only the newest list
    /// of a class is kept).
    pub(super) nodes_pending: std::collections::BTreeMap<String, (Vec<NodeRecord>, i64)>,
    /// The device count last told to the cluster thread (for its
    /// registration, which `percore status` shows); `None` before one.
    pub(super) devices_reported: Option<usize>,
    /// Jobs counted at the previous status line.
    pub(super) jobs_at_last_status: u64,
    /// The progress bar under the status lines, for a run with a duration
    /// printing its status (drawn on a terminal only).
    pub(super) progress_bar: Option<crate::console::Progress>,
}

impl<'a> Supervisor<'a> {
    pub(super) fn new(
        shards: usize,
        run_start: Instant,
        options: &'a RunOptions,
        clock: Clock,
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
            cluster_heard: true,
            etcd_down: None,
            nodes_pending: std::collections::BTreeMap::new(),
            devices_reported: None,
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
    pub(super) fn add_interval(&mut self, interval: &Interval) {
        let middle = interval.start + interval.end.saturating_duration_since(interval.start) / 2;
        let second = middle.saturating_duration_since(self.run_start).as_secs();
        self.per_second.add_shard(second, &interval.latency);
        self.so_far.add(&interval.latency);
    }

    /// Acts on what the sink writer says: health, the stop on a failure, lag.
    pub(super) fn on_sink_event(&mut self, event: SinkEvent, controls: &[flume::Sender<Control>]) {
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
    pub(super) fn next_message(
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
        // A membership change waits for no status line either: a lost device
        // must stop at once.
        if let (Some(events), true) = (&self.options.cluster, self.cluster_heard) {
            selector = selector.recv(events, Message::Cluster);
        }
        selector.wait_deadline(deadline).ok()
    }

    /// Collects reports until every shard has finished, printing status each
    /// second, forwarding a stop request and acting on the sink's events. Returns
    /// each shard's final report.
    pub(super) fn supervise(
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
                Some(Message::Cluster(Ok(event))) => {
                    if let Some(reloader) = reloader.as_deref_mut() {
                        self.on_cluster_event(event, controls, reloader, stop_sent);
                    }
                }
                Some(Message::Cluster(Err(flume::RecvError::Disconnected))) => {
                    self.cluster_heard = false;
                    console::err(format_args!(
                        "cluster: the cluster thread has stopped; this instance keeps the devices it runs"
                    ));
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
                if let Some(reloader) = reloader.as_deref_mut() {
                    self.cluster_tick(controls, reloader, stop_sent);
                }
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

    /// Once a second with a cluster: registered compute nodes the writer
    /// could not take before are applied again, and the cluster thread hears
    /// how many devices this instance runs now (when that changed).
    fn cluster_tick(
        &mut self,
        controls: &[flume::Sender<Control>],
        reloader: &mut Reloader,
        stopping: bool,
    ) {
        if !stopping && !self.nodes_pending.is_empty() {
            for (class, (nodes, revision)) in std::mem::take(&mut self.nodes_pending) {
                if !reloader.nodes(&class, &nodes, revision, controls) {
                    self.nodes_pending.insert(class, (nodes, revision));
                }
            }
        }
        if let Some(report) = &self.options.cluster_devices {
            let devices = reloader.ownership.status.devices;
            if self.devices_reported != Some(devices) {
                report.report(devices);
                self.devices_reported = Some(devices);
            }
        }
    }

    /// Acts on what the cluster thread says: a membership change moves
    /// devices, registered compute nodes replace a class's, a lost or found
    /// etcd is logged and shown. Nothing moves once the run is stopping.
    pub(super) fn on_cluster_event(
        &mut self,
        event: ClusterEvent,
        controls: &[flume::Sender<Control>],
        reloader: &mut Reloader,
        stopping: bool,
    ) {
        match event {
            ClusterEvent::Connection { up, detail } => {
                if up {
                    console::err(format_args!("cluster: etcd reachable again: {detail}"));
                    self.etcd_down = None;
                } else {
                    console::err(format_args!(
                        "cluster: warning: etcd unreachable: {detail}; this instance keeps the devices it runs"
                    ));
                    self.etcd_down = Some(detail.clone());
                }
                reloader.ownership.status.connection = Some((up, detail));
            }
            _ if stopping => {}
            _ if self.options.load != Load::Ticks => {
                console::err(format_args!(
                    "cluster: only tick-driven runs change their devices; ignored"
                ));
            }
            ClusterEvent::Members {
                instances,
                revision,
            } => {
                reloader.members(&instances, revision, self.clock.now_ms(), controls);
            }
            ClusterEvent::Nodes {
                class,
                nodes,
                revision,
            } => {
                self.nodes_pending.remove(&class);
                if !reloader.nodes(&class, &nodes, revision, controls) {
                    console::err(format_args!(
                        "cluster: the sink writer has not taken the last changes' names yet; \
                         class {class:?} gets its registered compute nodes at the next status tick"
                    ));
                    self.nodes_pending.insert(class, (nodes, revision));
                }
            }
        }
    }

    /// Applies a reload request (tick-driven runs only).
    pub(super) fn reload(&mut self, controls: &[flume::Sender<Control>], reloader: &mut Reloader) {
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
    pub(super) fn run_second(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.run_start)
            .as_secs()
    }

    /// All shards' latest counters added up.
    pub(super) fn total(&self) -> Counters {
        let mut total = Counters::default();
        self.latest.iter().for_each(|counters| total.add(counters));
        total
    }

    /// Prints the status line (and, on a terminal, redraws the progress bar).
    pub(super) fn status(&mut self, started: Instant) {
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
        if let Some(detail) = &self.etcd_down {
            line.push_str(" | etcd DOWN: ");
            line.push_str(detail);
        }
        if let Some(bar) = &self.progress_bar {
            bar.set(started.elapsed());
        }
        crate::console::err(format_args!("{line}"));
    }

    pub(super) fn publish(&self) {
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
    pub(super) fn publish_final(&self, summary: &RunSummary) {
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
pub(super) fn failure_note(failures: &FailureBreakdown, jobs: u64) -> String {
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
            clock,
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
                device: "dev-0".into(),
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
