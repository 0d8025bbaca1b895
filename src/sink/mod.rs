//! The sink: where every [`JobRecord`] becomes one persisted row.
//!
//! Owns the [`Sink`] trait (one implementation per database: SQLite in [`sqlite`],
//! PostgreSQL may follow), [`SinkError`], the names records are resolved against
//! ([`RowNames`]), and the single writer thread ([`spawn_writer`]).
//!
//! Start-up calls [`open`] on the configured [`SinkTarget`], then [`spawn_writer`]
//! with the receiving end of the bounded channel every shard sends its batches on.
//! Shutdown drops the senders and joins the thread for its [`WriterReport`].

pub mod sqlite;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::devices::Fleet;
use crate::record::JobRecord;
use crate::stats::new_histogram;

/// Name of the writer thread. CPU accounting finds the dispatcher's threads by
/// name, so this must not change without updating it.
pub const WRITER_THREAD_NAME: &str = "pc-sink";

/// Most rows the writer gathers into one transaction. A commit costs tens of µs
/// whatever its size, so a few thousand rows make it negligible per row; the cap
/// bounds the writer's staging memory and how much one failed commit takes with it.
const MAX_GROUP_ROWS: usize = 8192;

/// Names the writer resolves record indexes to; shared read-only with the writer thread.
pub struct RowNames {
    /// Device ids by [`DeviceIndex`](crate::record::DeviceIndex); the same fleet the
    /// shards schedule from, so an index in a record always names the right device.
    pub fleet: Arc<Fleet>,
    /// Class and model names by [`ClassIndex`](crate::record::ClassIndex), in the
    /// config's class order; built once at start-up.
    pub classes: Vec<ClassNames>,
}

/// The names written to a row's `class` and `model` columns for one class.
pub struct ClassNames {
    /// The class name as the config spells it.
    pub class: String,
    /// The model the class's jobs run, as sent in `ModelInfer`.
    pub model: String,
}

/// A place rows are persisted. Owned by the writer thread once it is spawned.
pub trait Sink: Send {
    /// Persists a batch in one transaction; idempotent per (device, tick).
    fn write_batch(&mut self, rows: &[JobRecord]) -> Result<(), SinkError>;
    /// Human-readable location, e.g. the SQLite file path (printed at the end of a run).
    fn location(&self) -> String;
}

/// What to open; the config maps onto this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// A SQLite database file, created if missing.
    Sqlite {
        /// The database file (not its directory, which must exist).
        path: PathBuf,
    },
}

/// Opens the sink `target` names, creating its schema if missing.
pub fn open(target: &SinkTarget, names: Arc<RowNames>) -> Result<Box<dyn Sink>, SinkError> {
    match target {
        SinkTarget::Sqlite { path } => Ok(Box::new(sqlite::SqliteSink::open(path, names)?)),
    }
}

/// A sink operation failed: what was being done, where, and why.
///
/// The cause is part of `Display` (so one line tells the whole story) and therefore
/// not also returned by `source()`, which would print it twice in error chains.
#[derive(Debug)]
pub struct SinkError {
    /// What the sink was doing, e.g. "opening the database" or "committing a
    /// transaction", so an operator knows which step to look at.
    pub operation: Cow<'static, str>,
    /// Where: the sink's location as [`Sink::location`] gives it (the file path).
    pub location: String,
    /// Rows the writer thread had persisted before this failure; set by the writer,
    /// `None` when the error did not come from it (e.g. from [`open`]).
    pub rows_written: Option<u64>,
    /// The underlying cause, from the database driver or the OS.
    pub cause: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    pub fn new(
        operation: impl Into<Cow<'static, str>>,
        location: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SinkError {
        SinkError {
            operation: operation.into(),
            location: location.into(),
            rows_written: None,
            cause: cause.into(),
        }
    }

    /// Records how many rows were already persisted when this error happened.
    pub fn after_rows(mut self, rows: u64) -> SinkError {
        self.rows_written = Some(rows);
        self
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sink {}: {} failed: {}",
            self.location, self.operation, self.cause
        )?;
        if let Some(rows) = self.rows_written {
            write!(f, " ({rows} rows written before this failure)")?;
        }
        Ok(())
    }
}

impl std::error::Error for SinkError {}

/// What the writer thread did, returned when it ends cleanly.
#[derive(Debug, Clone)]
pub struct WriterReport {
    /// Rows persisted (a rewritten (device, tick) counts each time).
    pub rows: u64,
    /// Transactions committed, to judge how well batches were grouped.
    pub transactions: u64,
    /// The sink's location, to print at the end of a run.
    pub location: String,
    /// How long rows waited between being ready on a shard and being committed.
    pub sink_lag: SinkLag,
    /// CPU time the writer thread used, measured by itself as it ends: it counts
    /// in the dispatcher's CPU per job, and the thread is gone when that is summed.
    pub cpu: std::time::Duration,
}

/// Sink lag (result ready on the shard → row committed), in µs, recorded by the
/// writer after each commit: in total, per second of the run, per shard, per class.
#[derive(Debug, Clone)]
pub struct SinkLag {
    /// The run's start, which per-second intervals count from.
    pub run_start: Instant,
    /// Every committed row.
    pub total: Histogram<u64>,
    /// Index = whole seconds since `run_start` at commit time.
    pub per_second: Vec<Histogram<u64>>,
    /// Index = shard.
    pub per_shard: Vec<Histogram<u64>>,
    /// Index = class.
    pub per_class: Vec<Histogram<u64>>,
}

impl SinkLag {
    pub fn new(run_start: Instant) -> SinkLag {
        SinkLag {
            run_start,
            total: new_histogram(),
            per_second: Vec::new(),
            per_shard: Vec::new(),
            per_class: Vec::new(),
        }
    }

    /// Records the rows of one commit made at `committed`.
    fn record(&mut self, rows: &[JobRecord], committed: Instant) {
        let second = committed
            .saturating_duration_since(self.run_start)
            .as_secs() as usize;
        let slot = |histograms: &mut Vec<Histogram<u64>>, index: usize| {
            if histograms.len() <= index {
                histograms.resize_with(index + 1, new_histogram);
            }
        };
        slot(&mut self.per_second, second);
        for row in rows {
            let lag_us = committed
                .saturating_duration_since(row.ready_at)
                .as_micros() as u64;
            let lag_us = lag_us.max(1);
            self.total.saturating_record(lag_us);
            self.per_second[second].saturating_record(lag_us);
            slot(&mut self.per_shard, row.shard as usize);
            self.per_shard[row.shard as usize].saturating_record(lag_us);
            slot(&mut self.per_class, row.class as usize);
            self.per_class[row.class as usize].saturating_record(lag_us);
        }
    }
}

/// Spawns the writer thread (std::thread, named "pc-sink" — the name matters:
/// CPU accounting finds dispatcher threads by name).
///
/// It receives batches until every sender is dropped and the channel is drained,
/// groups whatever is already queued (up to ~8192 rows, without waiting extra) into
/// one `write_batch` call, and returns the report. On a write error it returns the
/// error (with how many rows were already written in the message); it does not panic.
///
/// `recycle`: each received Vec is sent back emptied (`try_send`, dropped if the
/// queue is full) so shards can reuse its allocation. Its rows are moved into the
/// writer's own group buffer, so it goes back as soon as it is emptied, before the
/// write, rather than after: the shards get it sooner and nothing depends on it.
pub fn spawn_writer(
    sink: Box<dyn Sink>,
    batches: flume::Receiver<Vec<JobRecord>>,
    recycle: flume::Sender<Vec<JobRecord>>,
    run_start: Instant,
) -> std::io::Result<JoinHandle<Result<WriterReport, SinkError>>> {
    std::thread::Builder::new()
        .name(WRITER_THREAD_NAME.to_owned())
        .spawn(move || run_writer(sink, &batches, &recycle, run_start))
}

/// The writer thread's body: one transaction per group of queued batches.
fn run_writer(
    mut sink: Box<dyn Sink>,
    batches: &flume::Receiver<Vec<JobRecord>>,
    recycle: &flume::Sender<Vec<JobRecord>>,
    run_start: Instant,
) -> Result<WriterReport, SinkError> {
    let mut report = WriterReport {
        rows: 0,
        transactions: 0,
        location: sink.location(),
        sink_lag: SinkLag::new(run_start),
        cpu: std::time::Duration::ZERO,
    };
    // Rows of the next transaction; sized once so grouping never reallocates.
    let mut group: Vec<JobRecord> = Vec::with_capacity(MAX_GROUP_ROWS);
    // `recv` fails only once every sender is gone and the queue is empty, so the
    // loop ends exactly when the shards are done and nothing is left behind.
    while let Ok(batch) = batches.recv() {
        take_batch(&mut group, batch, recycle);
        while group.len() < MAX_GROUP_ROWS {
            match batches.try_recv() {
                Ok(batch) => take_batch(&mut group, batch, recycle),
                Err(_) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        sink.write_batch(&group)
            .map_err(|error| error.after_rows(report.rows))?;
        report.sink_lag.record(&group, Instant::now());
        report.rows += group.len() as u64;
        report.transactions += 1;
        group.clear();
    }
    report.cpu = crate::cpu::current_thread();
    Ok(report)
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
    use crate::record::{Outcome, StageLatency};
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
            }],
        })
    }

    #[test]
    fn writer_persists_every_row_from_many_senders_and_recycles_vecs() {
        const DEVICES: u32 = 100;
        const TICKS: i64 = 100; // 100 devices x 100 ticks = 10,000 distinct rows
        const SENDERS: u32 = 3;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let target = SinkTarget::Sqlite { path: path.clone() };
        let sink = open(&target, names(DEVICES)).unwrap();
        let (batch_tx, batch_rx) = flume::bounded(4);
        let (recycle_tx, recycle_rx) = flume::bounded(1024);
        let writer = spawn_writer(sink, batch_rx, recycle_tx, Instant::now()).unwrap();
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
        let report = writer.join().unwrap().unwrap();

        assert_eq!(report.rows, 10_000);
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
        let recycled: Vec<_> = recycle_rx.try_iter().collect();
        assert!(!recycled.is_empty());
        assert!(recycled.iter().all(|batch| batch.is_empty()));
        assert!(recycled.iter().any(|batch| batch.capacity() > 0));
    }

    /// Fails on any row of `poison_device`; reports each successful write.
    struct FlakySink {
        /// Device whose rows make the write fail.
        poison_device: u32,
        /// Tells the test a write finished, so it can order its sends.
        written: flume::Sender<usize>,
    }

    impl Sink for FlakySink {
        fn write_batch(&mut self, rows: &[JobRecord]) -> Result<(), SinkError> {
            if rows.iter().any(|row| row.device == self.poison_device) {
                return Err(SinkError::new("writing", self.location(), "disk on fire"));
            }
            let _ = self.written.send(rows.len());
            Ok(())
        }

        fn location(&self) -> String {
            "flaky://test".into()
        }
    }

    #[test]
    fn writer_returns_write_errors_with_rows_already_written() {
        let (written_tx, written_rx) = flume::unbounded();
        let sink = Box::new(FlakySink {
            poison_device: 7,
            written: written_tx,
        });
        let (batch_tx, batch_rx) = flume::bounded(4);
        let (recycle_tx, _recycle_rx) = flume::bounded(4);
        let writer = spawn_writer(sink, batch_rx, recycle_tx, Instant::now()).unwrap();
        batch_tx
            .send((0..5).map(|d| record(d, 1)).collect())
            .unwrap();
        assert_eq!(written_rx.recv().unwrap(), 5);
        batch_tx.send(vec![record(7, 1)]).unwrap();
        let error = writer.join().unwrap().unwrap_err();
        assert_eq!(error.rows_written, Some(5));
        assert_eq!(
            error.to_string(),
            "sink flaky://test: writing failed: disk on fire (5 rows written before this failure)"
        );
        // The writer is gone: shards see a closed channel instead of blocking.
        assert!(batch_tx.send(vec![record(1, 2)]).is_err());
    }
}
