//! The sink's writer thread: batches from the shards become transactions.
//!
//! One plain thread (never a shard) owns the [`Sink`]. It takes whatever batches
//! are queued, up to the sink's [`Grouping`](super::Grouping) (by default [`MAX_GROUP_ROWS`] rows,
//! no waiting; PostgreSQL's `batch_rows` and `linger_ms`), and writes them in one
//! call. What
//! happens to a failed write is decided by the error:
//! - **transient** (another connection holds the lock): the same rows are written
//!   again after a backoff, for as long as it takes; the coordinator hears
//!   [`SinkEvent::Retrying`] once and [`SinkEvent::Recovered`] when a write passes.
//!   Meanwhile the bounded channel fills and the shards skip ticks with a reason.
//! - **permanent** (full disk, read-only or corrupt file): the writer sends
//!   [`SinkEvent::Failed`] at once and ends; the coordinator stops the run.
//!
//! Rows committed so far are counted in [`SinkProgress`], which the coordinator
//! reads whenever it prints or publishes, so "computed" and "committed" can be told
//! apart while the run lasts. When the shards are done and everything is
//! committed, the writer completes the run's `runs` row ([`Sink::end_run`]) with
//! the counts of what it committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::run::RunCounts;
use super::{Sink, SinkError};
use crate::record::JobRecord;
use crate::stats::new_histogram;

/// Name of the writer thread. CPU accounting finds the dispatcher's threads by
/// name, so this must not change without updating it.
pub const WRITER_THREAD_NAME: &str = "pc-sink";

/// Most rows the writer gathers into one transaction. A commit costs tens of µs
/// whatever its size, so a few thousand rows make it negligible per row; the cap
/// bounds the writer's staging memory and how much one failed commit takes with it.
pub const MAX_GROUP_ROWS: usize = 8192;

/// Tries of the end-of-run update of the `runs` row when they fail transiently
/// (the database restarting just then), with the retry waits in between.
const END_RUN_TRIES: u32 = 5;

/// First wait before writing again after a transient failure; doubled up to
/// [`MAX_RETRY_WAIT`]. Short, because a lock is usually held for milliseconds.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(10);

/// Longest wait between two tries of the same write.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);

/// What the writer shares with the coordinator while it runs: read at any time,
/// without a message, and written once per commit (never per row).
#[derive(Debug, Default)]
pub struct SinkProgress {
    /// Rows committed so far.
    pub committed: AtomicU64,
}

impl SinkProgress {
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }
}

/// What the writer tells the coordinator while it runs.
#[derive(Debug)]
pub enum SinkEvent {
    /// A write failed with an error that may pass; the writer keeps the rows and
    /// writes them again. Sent once per streak of failures.
    Retrying {
        /// The error of the first failed try, as one line.
        error: String,
    },
    /// A write succeeded after [`SinkEvent::Retrying`].
    Recovered,
    /// The writer stopped on an error no retry gets past: nothing more will be
    /// committed. The thread's [`WriterReport::failure`] holds the same error.
    Failed {
        /// The error, as one line.
        error: String,
    },
    /// Sink lag of the rows committed during one second of the run, sent at the
    /// first commit of a later second (the run's last second is in the report).
    LagSecond {
        /// Whole seconds since the run's start.
        second: u64,
        /// Lag of each row committed in that second, µs.
        histogram: Box<Histogram<u64>>,
    },
}

/// The writer's ends of the channels made at start-up.
pub struct WriterChannels {
    /// Batches from the shards; the writer ends when every sender is gone.
    pub batches: flume::Receiver<Vec<JobRecord>>,
    /// Emptied batch vectors going back to the shards, to reuse their memory.
    pub recycle: flume::Sender<Vec<JobRecord>>,
    /// Retries, failures and per-second lag, to the coordinator.
    pub events: flume::Sender<SinkEvent>,
    /// Rows committed, read by the coordinator.
    pub progress: Arc<SinkProgress>,
}

/// What the writer thread did, returned when it ends.
#[derive(Debug)]
pub struct WriterReport {
    /// Rows persisted (a rewritten (device, tick) counts each time).
    pub rows: u64,
    /// Transactions committed, to judge how well batches were grouped.
    pub transactions: u64,
    /// Writes tried again after a transient failure.
    pub retried_writes: u64,
    /// The sink's location, to print at the end of a run.
    pub location: String,
    /// How long rows waited between being ready on a shard and being committed.
    pub sink_lag: SinkLag,
    /// CPU time the writer thread used, measured by itself as it ends: it counts
    /// in the dispatcher's CPU per job, and the thread is gone when that is summed.
    pub cpu: Duration,
    /// The permanent error that ended the writer early, if one did; `rows` is then
    /// what was committed before it. A failed end-of-run update of the `runs`
    /// row is reported here too.
    pub failure: Option<SinkError>,
    /// Committed rows by outcome: what the run's `runs` row records at the end.
    pub counts: RunCounts,
}

/// Sink lag (result ready on the shard → row committed), in µs, recorded by the
/// writer after each commit: in total, per shard, per class, and for the current
/// second of the run (earlier seconds have been sent as [`SinkEvent::LagSecond`],
/// so a run of any length holds a fixed number of histograms).
#[derive(Debug, Clone)]
pub struct SinkLag {
    /// The run's start, which per-second intervals count from.
    pub run_start: Instant,
    /// Every committed row.
    pub total: Histogram<u64>,
    /// Index = shard.
    pub per_shard: Vec<Histogram<u64>>,
    /// Index = class.
    pub per_class: Vec<Histogram<u64>>,
    /// The second of the run the last commit fell in, and its rows' lag.
    pub current_second: Option<(u64, Histogram<u64>)>,
}

impl SinkLag {
    pub fn new(run_start: Instant) -> SinkLag {
        SinkLag {
            run_start,
            total: new_histogram(),
            per_shard: Vec::new(),
            per_class: Vec::new(),
            current_second: None,
        }
    }

    /// Records the rows of one commit made at `committed`; returns the previous
    /// second's histogram when this commit is the first of a later second.
    fn record(&mut self, rows: &[JobRecord], committed: Instant) -> Option<(u64, Histogram<u64>)> {
        let second = committed
            .saturating_duration_since(self.run_start)
            .as_secs();
        let closed = match &self.current_second {
            Some((current, _)) if *current == second => None,
            _ => self
                .current_second
                .replace((second, new_histogram()))
                .filter(|(_, histogram)| !histogram.is_empty()),
        };
        let slot = |histograms: &mut Vec<Histogram<u64>>, index: usize| {
            if histograms.len() <= index {
                histograms.resize_with(index + 1, new_histogram);
            }
        };
        for row in rows {
            let lag_us = committed
                .saturating_duration_since(row.ready_at)
                .as_micros() as u64;
            let lag_us = lag_us.max(1);
            self.total.saturating_record(lag_us);
            if let Some((_, histogram)) = &mut self.current_second {
                histogram.saturating_record(lag_us);
            }
            slot(&mut self.per_shard, row.shard as usize);
            self.per_shard[row.shard as usize].saturating_record(lag_us);
            slot(&mut self.per_class, row.class as usize);
            self.per_class[row.class as usize].saturating_record(lag_us);
        }
        closed
    }
}

/// Spawns the writer thread (std::thread, named "pc-sink" — the name matters:
/// CPU accounting finds dispatcher threads by name).
///
/// It receives batches until every sender is dropped and the channel is drained,
/// groups whatever is already queued (up to ~8192 rows, without waiting extra) into
/// one `write_batch` call, and returns the report. It never panics on a write
/// error: transient ones are retried, a permanent one ends it with the error in
/// [`WriterReport::failure`] (after telling the coordinator).
///
/// Each received Vec is sent back emptied on `recycle` (`try_send`, dropped if the
/// queue is full) so shards can reuse its allocation. Its rows are moved into the
/// writer's own group buffer, so it goes back as soon as it is emptied, before the
/// write, rather than after: the shards get it sooner and nothing depends on it.
pub fn spawn_writer(
    sink: Box<dyn Sink>,
    channels: WriterChannels,
    run_start: Instant,
    commit_delay: Duration,
) -> std::io::Result<JoinHandle<WriterReport>> {
    std::thread::Builder::new()
        .name(WRITER_THREAD_NAME.to_owned())
        .spawn(move || run_writer(sink, &channels, run_start, commit_delay))
}

/// The writer thread's body: one transaction per group of queued batches.
/// `commit_delay` is `[sink] commit_delay_ms`, a testing aid that simulates a
/// slow database by sleeping after each commit (zero: no sleep).
fn run_writer(
    mut sink: Box<dyn Sink>,
    channels: &WriterChannels,
    run_start: Instant,
    commit_delay: Duration,
) -> WriterReport {
    let mut report = WriterReport {
        rows: 0,
        transactions: 0,
        retried_writes: 0,
        location: sink.location(),
        sink_lag: SinkLag::new(run_start),
        cpu: Duration::ZERO,
        failure: None,
        counts: RunCounts::default(),
    };
    let grouping = sink.grouping();
    // Rows of the next transaction; sized once so grouping rarely reallocates.
    let mut group: Vec<JobRecord> = Vec::with_capacity(grouping.max_rows);
    // `recv` fails only once every sender is gone and the queue is empty, so the
    // loop ends exactly when the shards are done and nothing is left behind.
    while let Ok(batch) = channels.batches.recv() {
        take_batch(&mut group, batch, &channels.recycle);
        let linger_until = Instant::now() + grouping.linger;
        while group.len() < grouping.max_rows {
            let next = if grouping.linger.is_zero() {
                channels.batches.try_recv().ok()
            } else {
                // Timeout or every sender gone: write what is there.
                channels.batches.recv_deadline(linger_until).ok()
            };
            match next {
                Some(batch) => take_batch(&mut group, batch, &channels.recycle),
                None => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        if let Err(error) = write_until_done(&mut *sink, &group, channels, &mut report) {
            let error = error.after_rows(report.rows);
            // The coordinator drains events until it joins the writer; should the
            // queue be full, the report still carries the error.
            let _ = channels.events.try_send(SinkEvent::Failed {
                error: error.to_string(),
            });
            report.failure = Some(error);
            break;
        }
        let closed = report.sink_lag.record(&group, Instant::now());
        if let Some((second, histogram)) = closed {
            let histogram = Box::new(histogram);
            // The coordinator drains events all run long; a full queue (it stopped
            // listening at the end) only loses that second's lag plot point.
            let _ = channels
                .events
                .try_send(SinkEvent::LagSecond { second, histogram });
        }
        report.rows += group.len() as u64;
        report.counts.add(&group);
        report.transactions += 1;
        channels
            .progress
            .committed
            .store(report.rows, Ordering::Relaxed);
        group.clear();
        if !commit_delay.is_zero() {
            std::thread::sleep(commit_delay);
        }
    }
    if report.failure.is_none() {
        if let Err(error) = end_run(&mut *sink, &report.counts) {
            let error = error.after_rows(report.rows);
            let _ = channels.events.try_send(SinkEvent::Failed {
                error: error.to_string(),
            });
            report.failure = Some(error);
        }
    }
    report.cpu = crate::cpu::current_thread();
    report
}

/// Completes the run's `runs` row, trying a transient failure a few times.
fn end_run(sink: &mut dyn Sink, counts: &RunCounts) -> Result<(), SinkError> {
    let mut wait = FIRST_RETRY_WAIT;
    let mut tries = 0;
    loop {
        tries += 1;
        match sink.end_run(counts) {
            Err(error) if error.transient && tries < END_RUN_TRIES => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
            done => return done,
        }
    }
}

/// Writes `group`, trying again after transient errors with a growing wait;
/// returns the first permanent error.
fn write_until_done(
    sink: &mut dyn Sink,
    group: &[JobRecord],
    channels: &WriterChannels,
    report: &mut WriterReport,
) -> Result<(), SinkError> {
    let mut wait = FIRST_RETRY_WAIT;
    let mut retrying = false;
    loop {
        match sink.write_batch(group) {
            Ok(()) => {
                if retrying {
                    let _ = channels.events.try_send(SinkEvent::Recovered);
                }
                return Ok(());
            }
            Err(error) if error.transient => {
                if !retrying {
                    retrying = true;
                    let _ = channels.events.try_send(SinkEvent::Retrying {
                        error: error.after_rows(report.rows).to_string(),
                    });
                }
                report.retried_writes += 1;
                std::thread::sleep(wait);
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Moves a batch's rows into `group` and hands the emptied Vec back to the shards.
fn take_batch(
    group: &mut Vec<JobRecord>,
    mut batch: Vec<JobRecord>,
    recycle: &flume::Sender<Vec<JobRecord>>,
) {
    group.append(&mut batch);
    // Full or closed only means a shard allocates its next batch itself.
    let _ = recycle.try_send(batch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Fleet;
    use crate::record::{Outcome, StageLatency};
    use crate::sink::run::RunIdentity;
    use crate::sink::{open, ClassNames, RowNames, SinkTarget};
    use bytes::Bytes;

    fn record(device: u32, tick_ms: i64) -> JobRecord {
        JobRecord {
            device,
            tick_ms,
            class: 0,
            shard: (device % 3) as u16,
            outcome: Outcome::Ok,
            output: Bytes::from_static(b"\x01\x02"),
            latency: StageLatency {
                schedule_lag_us: 5,
                fetch_us: Some(100),
                infer_us: Some(200),
                end_to_end_us: Some(320),
            },
            compute_node: None,
            attempts: 0,
            ready_at: std::time::Instant::now(),
        }
    }

    fn names(devices: u32) -> Arc<RowNames> {
        let entries = (0..devices).map(|d| (format!("dev-{d:05}"), 0)).collect();
        Arc::new(RowNames {
            fleet: Arc::new(Fleet::from_parts(entries)),
            classes: vec![ClassNames {
                class: "camera".into(),
                model: "yolo".into(),
                compute_nodes: Vec::new(),
            }],
            run: RunIdentity::new("writer-test"),
        })
    }

    #[test]
    fn writer_persists_every_row_from_many_senders_and_recycles_vecs() {
        const DEVICES: u32 = 100;
        const TICKS: i64 = 100; // 100 devices x 100 ticks = 10,000 distinct rows
        const SENDERS: u32 = 3;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let target = SinkTarget::sqlite(&path);
        let sink = open(&target, names(DEVICES)).unwrap();
        let (batch_tx, batch_rx) = flume::bounded(4);
        let (recycle_tx, recycle_rx) = flume::bounded(1024);
        let (channels, _events) = channels(batch_rx, recycle_tx);
        let progress = channels.progress.clone();
        let writer = spawn_writer(sink, channels, Instant::now(), Duration::ZERO).unwrap();
        assert_eq!(writer.thread().name(), Some(WRITER_THREAD_NAME));

        let senders: Vec<_> = (0..SENDERS)
            .map(|sender| {
                let batch_tx = batch_tx.clone();
                std::thread::spawn(move || {
                    let mut batch = Vec::new();
                    for tick in 0..TICKS {
                        for device in (sender..DEVICES).step_by(SENDERS as usize) {
                            batch.push(record(device, tick));
                            if batch.len() == 37 {
                                batch_tx.send(std::mem::take(&mut batch)).unwrap();
                            }
                        }
                    }
                    batch_tx.send(batch).unwrap();
                })
            })
            .collect();
        drop(batch_tx);
        for sender in senders {
            sender.join().unwrap();
        }
        let report = writer.join().unwrap();
        assert!(report.failure.is_none(), "{:?}", report.failure);

        assert_eq!(report.rows, 10_000);
        assert_eq!(progress.committed(), 10_000);
        assert_eq!(
            report.sink_lag.total.len(),
            10_000,
            "every committed row has a sink lag"
        );
        assert_eq!(
            report
                .sink_lag
                .per_shard
                .iter()
                .map(|h| h.len())
                .sum::<u64>(),
            10_000
        );
        assert!(report.transactions >= 2, "{report:?}");
        assert_eq!(report.location, path.display().to_string());
        let db = rusqlite::Connection::open(&path).unwrap();
        let count: i64 = db
            .query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 10_000);
        // The run's row was completed with what was committed.
        let (ended, jobs, ok): (Option<i64>, i64, i64) = db
            .query_row("SELECT ended_at_ms, jobs, ok FROM runs", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .unwrap();
        assert!(ended.is_some());
        assert_eq!((jobs, ok), (10_000, 10_000));
        assert_eq!(report.counts.jobs, 10_000);
        let recycled: Vec<_> = recycle_rx.try_iter().collect();
        assert!(!recycled.is_empty());
        assert!(recycled.iter().all(|batch| batch.is_empty()));
        assert!(recycled.iter().any(|batch| batch.capacity() > 0));
    }

    /// The writer's channels for a test: batches in, vectors back, events out.
    fn channels(
        batches: flume::Receiver<Vec<JobRecord>>,
        recycle: flume::Sender<Vec<JobRecord>>,
    ) -> (WriterChannels, flume::Receiver<SinkEvent>) {
        let (events, events_rx) = flume::bounded(64);
        let channels = WriterChannels {
            batches,
            recycle,
            events,
            progress: Arc::new(SinkProgress::default()),
        };
        (channels, events_rx)
    }

    /// Fails on any row of `poison_device` (transiently for the first
    /// `transient_failures` tries, then permanently unless `recovers`); reports
    /// each successful write.
    struct FlakySink {
        /// Device whose rows make the write fail.
        poison_device: u32,
        /// Tries that fail as transient before the next verdict.
        transient_failures: u32,
        /// Whether the poisoned write passes once the transient failures are used up.
        recovers: bool,
        /// Tells the test a write finished, so it can order its sends.
        written: flume::Sender<usize>,
    }

    impl Sink for FlakySink {
        fn write_batch(&mut self, rows: &[JobRecord]) -> Result<(), SinkError> {
            if rows.iter().any(|row| row.device == self.poison_device) {
                if self.transient_failures > 0 {
                    self.transient_failures -= 1;
                    let error = SinkError::new("writing", self.location(), "database is locked");
                    return Err(error.transient(true));
                }
                if !self.recovers {
                    return Err(SinkError::new("writing", self.location(), "disk on fire"));
                }
            }
            let _ = self.written.send(rows.len());
            Ok(())
        }

        fn write_rows(&mut self, rows: &[super::super::row::Row<'_>]) -> Result<(), SinkError> {
            let _ = self.written.send(rows.len());
            Ok(())
        }

        fn location(&self) -> String {
            "flaky://test".into()
        }

        fn end_run(&mut self, _counts: &RunCounts) -> Result<(), SinkError> {
            Ok(())
        }
    }

    #[test]
    fn permanent_errors_end_the_writer_at_once_and_say_so() {
        let (written_tx, written_rx) = flume::unbounded();
        let sink = Box::new(FlakySink {
            poison_device: 7,
            transient_failures: 0,
            recovers: false,
            written: written_tx,
        });
        let (batch_tx, batch_rx) = flume::bounded(4);
        let (recycle_tx, _recycle_rx) = flume::bounded(4);
        let (channels, events) = channels(batch_rx, recycle_tx);
        let progress = channels.progress.clone();
        let writer = spawn_writer(sink, channels, Instant::now(), Duration::ZERO).unwrap();
        batch_tx
            .send((0..5).map(|d| record(d, 1)).collect())
            .unwrap();
        assert_eq!(written_rx.recv().unwrap(), 5);
        batch_tx.send(vec![record(7, 1)]).unwrap();
        // The coordinator hears of it while the senders are still open.
        let expected =
            "sink flaky://test: writing failed: disk on fire (5 rows written before this failure)";
        match events.recv_timeout(Duration::from_secs(10)) {
            Ok(SinkEvent::Failed { error }) => assert_eq!(error, expected),
            other => panic!("expected Failed, got {other:?}"),
        }
        let report = writer.join().unwrap();
        let error = report.failure.expect("the write error");
        assert_eq!(error.rows_written, Some(5));
        assert_eq!(error.to_string(), expected);
        assert_eq!((report.rows, progress.committed()), (5, 5));
        // The writer is gone: shards see a closed channel instead of blocking.
        assert!(batch_tx.send(vec![record(1, 2)]).is_err());
    }

    #[test]
    fn transient_errors_are_retried_until_the_rows_are_written() {
        let (written_tx, written_rx) = flume::unbounded();
        let sink = Box::new(FlakySink {
            poison_device: 7,
            transient_failures: 3,
            recovers: true,
            written: written_tx,
        });
        let (batch_tx, batch_rx) = flume::bounded(4);
        let (recycle_tx, _recycle_rx) = flume::bounded(4);
        let (channels, events) = channels(batch_rx, recycle_tx);
        let writer = spawn_writer(sink, channels, Instant::now(), Duration::ZERO).unwrap();
        batch_tx
            .send((5..10).map(|d| record(d, 1)).collect())
            .unwrap();
        drop(batch_tx);
        let report = writer.join().unwrap();
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!((report.rows, report.retried_writes), (5, 3));
        assert_eq!(written_rx.try_iter().sum::<usize>(), 5);
        let events: Vec<SinkEvent> = events.try_iter().collect();
        assert!(
            matches!(&events[..], [SinkEvent::Retrying { error }, SinkEvent::Recovered, ..]
                if error.contains("database is locked")),
            "{events:?}"
        );
    }

    /// Records the size of each write; groups as it is told.
    struct GroupingSink {
        /// What [`Sink::grouping`] answers.
        grouping: super::super::Grouping,
        /// Rows of each write, in order.
        written: flume::Sender<usize>,
    }

    impl Sink for GroupingSink {
        fn write_batch(&mut self, rows: &[JobRecord]) -> Result<(), SinkError> {
            let _ = self.written.send(rows.len());
            Ok(())
        }

        fn write_rows(&mut self, rows: &[super::super::row::Row<'_>]) -> Result<(), SinkError> {
            let _ = self.written.send(rows.len());
            Ok(())
        }

        fn location(&self) -> String {
            "grouping://test".into()
        }

        fn end_run(&mut self, _counts: &RunCounts) -> Result<(), SinkError> {
            Ok(())
        }

        fn grouping(&self) -> super::super::Grouping {
            self.grouping
        }
    }

    #[test]
    fn a_linger_gathers_batches_until_the_row_limit() {
        let (written_tx, written_rx) = flume::unbounded();
        let sink = Box::new(GroupingSink {
            grouping: super::super::Grouping {
                max_rows: 6,
                linger: Duration::from_secs(5),
            },
            written: written_tx,
        });
        let (batch_tx, batch_rx) = flume::bounded(16);
        let (recycle_tx, _recycle_rx) = flume::bounded(16);
        let (channels, _events) = channels(batch_rx, recycle_tx);
        let writer = spawn_writer(sink, channels, Instant::now(), Duration::ZERO).unwrap();
        // Three batches of two, apart in time: one write of six, long before the linger ends.
        let started = Instant::now();
        for tick in 0..3 {
            batch_tx
                .send(vec![record(1, tick), record(2, tick)])
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(written_rx.recv_timeout(Duration::from_secs(10)), Ok(6));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the row limit ended the wait"
        );
        // Closing the channel ends a linger at once: the rest is written.
        batch_tx.send(vec![record(3, 9)]).unwrap();
        drop(batch_tx);
        let report = writer.join().unwrap();
        assert_eq!(written_rx.try_iter().collect::<Vec<_>>(), [1]);
        assert_eq!((report.rows, report.transactions), (7, 2));
    }

    #[test]
    fn lag_is_handed_over_one_second_at_a_time() {
        let start = Instant::now();
        let mut lag = SinkLag::new(start);
        let rows = [record(1, 1), record(2, 1)];
        assert!(lag
            .record(&rows, start + Duration::from_millis(100))
            .is_none());
        assert!(lag
            .record(&rows, start + Duration::from_millis(900))
            .is_none());
        let (second, histogram) = lag
            .record(&rows[..1], start + Duration::from_millis(2_100))
            .expect("second 0 closes");
        assert_eq!((second, histogram.len()), (0, 4));
        assert_eq!(
            lag.current_second.as_ref().map(|(s, h)| (*s, h.len())),
            Some((2, 1))
        );
        assert_eq!(lag.total.len(), 5);
    }
}
