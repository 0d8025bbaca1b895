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
//! With a spill journal ([`WriterJournal`], `[sink] journal_dir`) a transient
//! failure does not hold the shards up: the batch goes to the journal
//! ([`SinkEvent::Journaling`]), and so does every later batch while the journal
//! holds rows, so the database receives them in order. Between batches the
//! writer tries the database again with the same growing wait and, once it
//! answers, replays the journal oldest first (`Sink::write_rows`), deleting each
//! segment once it is committed, then writes directly again
//! ([`SinkEvent::JournalReplayed`]). A journal left by an earlier run is replayed
//! the same way before any new batch reaches the database. When the journal
//! refuses a batch (full, or its disk fails: [`SinkEvent::JournalRefused`]) the
//! writer waits for the database as it does without a journal, and the shards
//! skip ticks (`sink backlog`): a computed result is never dropped. When the
//! shards are done the writer tries to empty the journal for
//! [`SHUTDOWN_DRAIN_LIMIT`]; what is still in it stays on disk, fsynced, for the
//! next run, and [`WriterReport::journal`] says how much.
//!
//! Rows committed so far are counted in [`SinkProgress`], which the coordinator
//! reads whenever it prints or publishes, so "computed" and "committed" can be told
//! apart while the run lasts; so are the journal's counters. When the shards are
//! done and everything is committed, the writer completes the run's `runs` row
//! ([`Sink::end_run`]) with the counts of what it committed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::journal::{Journal, JournalError};
use super::row::Resolver;
use super::run::RunCounts;
use super::{RowNames, Sink, SinkError};
use crate::record::JobRecord;
use crate::stats::new_histogram;

/// Name of the writer thread. CPU accounting finds the dispatcher's threads by
/// name, so this must not change without updating it.
pub const WRITER_THREAD_NAME: &str = "pc-sink";

pub use super::MAX_GROUP_ROWS;

/// Tries of the end-of-run update of the `runs` row when they fail transiently
/// (the database restarting just then), with the retry waits in between.
const END_RUN_TRIES: u32 = 5;

/// First wait before writing again after a transient failure; doubled up to
/// [`MAX_RETRY_WAIT`]. Short, because a lock is usually held for milliseconds.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(10);

/// Longest wait between two tries of the same write.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);

/// How long the writer, once the shards are done, keeps trying to replay the
/// journal into the database before it leaves the rest on disk for the next
/// run: long enough to ride out a short outage at the end of a run, short
/// enough that a stop is not held up by a database that is gone.
pub const SHUTDOWN_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Longest stretch of replaying before the writer takes the queued batches
/// again: keeps the channel moving (into the journal) while a long journal is
/// replayed, so the shards are not held up by the replay itself.
const REPLAY_SLICE: Duration = Duration::from_millis(100);

/// What the writer shares with the coordinator while it runs: read at any time,
/// without a message, and written once per commit or journal operation (never
/// per row).
#[derive(Debug, Default)]
pub struct SinkProgress {
    /// Rows of this run committed so far (directly or replayed from the journal).
    pub committed: AtomicU64,
    /// Rows of this run written to the spill journal so far.
    pub rows_journaled: AtomicU64,
    /// Rows replayed from the journal into the database so far (an earlier
    /// run's included).
    pub rows_replayed: AtomicU64,
    /// Of `rows_replayed`, the rows an earlier run left in the journal.
    pub leftover_rows_replayed: AtomicU64,
    /// Bytes the journal's files hold now.
    pub journal_bytes: AtomicU64,
}

impl SinkProgress {
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    pub fn rows_journaled(&self) -> u64 {
        self.rows_journaled.load(Ordering::Relaxed)
    }

    pub fn rows_replayed(&self) -> u64 {
        self.rows_replayed.load(Ordering::Relaxed)
    }

    pub fn leftover_rows_replayed(&self) -> u64 {
        self.leftover_rows_replayed.load(Ordering::Relaxed)
    }

    pub fn journal_bytes(&self) -> u64 {
        self.journal_bytes.load(Ordering::Relaxed)
    }
}

/// The spill journal the writer is given at start-up, opened by the coordinator
/// (so a locked or foreign journal fails the start) with what it found in it.
pub struct WriterJournal {
    /// The open journal; the writer owns it from now on.
    pub journal: Journal,
    /// Rows an earlier run left in it ([`super::journal::Leftover::rows`]): they
    /// are at its front, and are counted apart from this run's rows.
    pub leftover_rows: u64,
    /// The names records are resolved with before they are journaled (the
    /// sink resolves its own batches; the journal stores resolved rows).
    pub names: Arc<RowNames>,
    /// How long to keep replaying once the shards are done:
    /// [`SHUTDOWN_DRAIN_LIMIT`] in a run, shorter in tests.
    pub drain_limit: Duration,
}

/// The journal's part of a run, in [`WriterReport::journal`] and the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalTotals {
    /// The journal's folder; `None` when no journal was configured (every
    /// count is then 0).
    pub dir: Option<PathBuf>,
    /// Rows an earlier run had left in the journal, found at start.
    pub leftover_rows: u64,
    /// Rows of this run written to the journal because the database could not
    /// take them (or older rows were still in the journal ahead of them).
    pub rows_journaled: u64,
    /// Rows replayed from the journal into the database, an earlier run's included.
    pub rows_replayed: u64,
    /// Of `rows_replayed`, the rows an earlier run left.
    pub leftover_rows_replayed: u64,
    /// Bytes the journal's files hold at the end.
    pub bytes: u64,
    /// Rows still in the journal at the end: on disk, fsynced, replayed at the
    /// next run's start.
    pub rows_left: u64,
    /// Of `rows_left`, this run's rows (the rest an earlier run left).
    pub run_rows_left: u64,
    /// Rows lost to journal records found damaged on disk during this run's
    /// replay (each such cut was reported); 0 unless the disk failed.
    pub rows_lost: u64,
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
    /// The database failed with an error that may pass, and batches now go to
    /// the spill journal instead of holding the shards up; sent once per streak
    /// ([`SinkEvent::Recovered`] ends it).
    Journaling {
        /// The database's error, as one line.
        error: String,
        /// The journal's folder, to say where the rows are.
        dir: String,
    },
    /// The journal refused a batch (full, or its disk failed): the writer waits
    /// for the database instead, so the shards skip ticks (`sink backlog`).
    JournalRefused {
        /// The journal's error, as one line.
        error: String,
    },
    /// A damaged journal record was found and cut away while replaying.
    JournalCut {
        /// The cut, naming the file and offset.
        cut: String,
    },
    /// Everything in the journal has been replayed into the database; batches
    /// are written directly again.
    JournalReplayed {
        /// Rows replayed since the journal was last empty.
        rows: u64,
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
    /// New names after a live reload (more classes, new compute nodes), sent by
    /// the coordinator before any shard starts the devices they name.
    pub names: flume::Receiver<Arc<RowNames>>,
}

/// What the writer thread did, returned when it ends.
#[derive(Debug)]
pub struct WriterReport {
    /// Rows of this run persisted, directly or replayed from the journal (a
    /// rewritten (device, tick) counts each time; an earlier run's replayed rows
    /// are in [`JournalTotals::leftover_rows_replayed`] instead).
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
    /// What went through the spill journal, and what is left in it.
    pub journal: JournalTotals,
}

/// Sink lag (result ready on the shard → row persisted: committed, or appended
/// to the spill journal), in µs, recorded by the writer after each commit: in total, per shard, per class, and for the current
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
/// error: transient ones are retried (or, with `journal`, journaled), a permanent
/// one ends it with the error in [`WriterReport::failure`] (after telling the
/// coordinator).
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
    journal: Option<WriterJournal>,
) -> std::io::Result<JoinHandle<WriterReport>> {
    std::thread::Builder::new()
        .name(WRITER_THREAD_NAME.to_owned())
        .spawn(move || {
            let report = WriterReport {
                rows: 0,
                transactions: 0,
                retried_writes: 0,
                location: sink.location(),
                sink_lag: SinkLag::new(run_start),
                cpu: Duration::ZERO,
                failure: None,
                counts: RunCounts::default(),
                journal: JournalTotals::default(),
            };
            let spill = journal.map(Spill::new);
            let mut writer = Writer {
                sink,
                channels: &channels,
                report,
                commit_delay,
                spill,
            };
            if let Some(spill) = &mut writer.spill {
                writer.report.journal.dir = Some(spill.journal.dir().to_path_buf());
                writer.report.journal.leftover_rows = spill.leftover_pending;
            }
            writer.publish_journal();
            if let Err(error) = writer.run() {
                let error = error.after_rows(writer.report.rows);
                // The coordinator drains events until it joins the writer; should
                // the queue be full, the report still carries the error.
                let _ = channels.events.try_send(SinkEvent::Failed {
                    error: error.to_string(),
                });
                writer.report.failure = Some(error);
            }
            writer.close_journal();
            if writer.report.failure.is_none() {
                if let Err(error) = end_run(&mut *writer.sink, &writer.report.counts) {
                    let error = error.after_rows(writer.report.rows);
                    let _ = channels.events.try_send(SinkEvent::Failed {
                        error: error.to_string(),
                    });
                    writer.report.failure = Some(error);
                }
            }
            writer.report.cpu = crate::cpu::current_thread();
            writer.report
        })
}

/// The writer thread's state: the sink, its channels, what it did so far.
struct Writer<'c> {
    /// The database.
    sink: Box<dyn Sink>,
    /// Batches in, vectors back, events and progress out.
    channels: &'c WriterChannels,
    /// What the writer did, returned when it ends.
    report: WriterReport,
    /// `[sink] commit_delay_ms`, a testing aid that simulates a slow database by
    /// sleeping after each commit (zero: no sleep).
    commit_delay: Duration,
    /// The spill journal and its retry state, when one is configured.
    spill: Option<Spill>,
}

/// The spill journal as the writer drives it.
struct Spill {
    /// The journal on disk.
    journal: Journal,
    /// Resolves a batch's records into the rows the journal stores.
    resolver: Resolver,
    /// Rows an earlier run left that are still at the journal's front: the
    /// first rows replayed are theirs, counted apart from this run's.
    leftover_pending: u64,
    /// When to try the database again while the journal holds rows.
    next_try: Instant,
    /// The wait after the next failed try; doubles up to [`MAX_RETRY_WAIT`].
    wait: Duration,
    /// Whether the database is failing now (the coordinator was told).
    failing: bool,
    /// Whether the journal refused a batch in the current streak (told once).
    refused: bool,
    /// Rows replayed since the journal was last empty, for
    /// [`SinkEvent::JournalReplayed`].
    replayed: u64,
    /// See [`WriterJournal::drain_limit`].
    drain_limit: Duration,
}

impl Spill {
    fn new(journal: WriterJournal) -> Spill {
        Spill {
            journal: journal.journal,
            resolver: Resolver::new(journal.names),
            leftover_pending: journal.leftover_rows,
            next_try: Instant::now(),
            wait: FIRST_RETRY_WAIT,
            failing: false,
            refused: false,
            replayed: 0,
            drain_limit: journal.drain_limit,
        }
    }
}

/// A journal error where the writer cannot go on (its own journal cannot be
/// read or synced), as the sink error that stops the run.
fn journal_failure(
    operation: &'static str,
    error: JournalError,
    dir: &std::path::Path,
) -> SinkError {
    SinkError::new(operation, dir.display().to_string(), error)
}

impl Writer<'_> {
    /// Receives and persists batches until the channel closes; then, with a
    /// journal, tries to empty it for [`SHUTDOWN_DRAIN_LIMIT`]. Returns the
    /// first permanent error.
    fn run(&mut self) -> Result<(), SinkError> {
        let grouping = self.sink.grouping();
        // Rows of the next transaction; sized once so grouping rarely reallocates.
        let mut group: Vec<JobRecord> = Vec::with_capacity(grouping.max_rows);
        loop {
            // While the journal holds rows, wake up to try the database again
            // (and to fsync on time) even when no batch comes.
            let wake = self.spill.as_ref().and_then(|spill| {
                let retry = (!spill.journal.is_empty()).then_some(spill.next_try);
                match (retry, spill.journal.sync_due_at()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            });
            // `recv` fails only once every sender is gone and the queue is
            // empty, so the loop ends exactly when the shards are done and
            // nothing is left behind.
            let first = match wake {
                None => match self.channels.batches.recv() {
                    Ok(batch) => Some(batch),
                    Err(flume::RecvError::Disconnected) => break,
                },
                Some(deadline) => match self.channels.batches.recv_deadline(deadline) {
                    Ok(batch) => Some(batch),
                    Err(flume::RecvTimeoutError::Timeout) => None,
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                },
            };
            if let Some(batch) = first {
                take_batch(&mut group, batch, &self.channels.recycle);
                let linger_until = Instant::now() + grouping.linger;
                while group.len() < grouping.max_rows {
                    let next = if grouping.linger.is_zero() {
                        self.channels.batches.try_recv().ok()
                    } else {
                        // Timeout or every sender gone: write what is there.
                        self.channels.batches.recv_deadline(linger_until).ok()
                    };
                    match next {
                        Some(batch) => take_batch(&mut group, batch, &self.channels.recycle),
                        None => break,
                    }
                }
            }
            // A reload's names were sent before any record needing them.
            for names in self.channels.names.try_iter() {
                self.sink.rename(names.clone());
                if let Some(spill) = &mut self.spill {
                    spill.resolver.rename(names);
                }
            }
            if !group.is_empty() {
                self.persist(&group)?;
                group.clear();
            }
            if self.replay_due() {
                self.replay(Some(Instant::now() + REPLAY_SLICE))?;
            }
            self.sync_journal_if_due()?;
        }
        self.drain_at_shutdown()
    }

    /// Persists one group: into the database, or into the journal when the
    /// database fails transiently or the journal already holds older rows.
    fn persist(&mut self, group: &[JobRecord]) -> Result<(), SinkError> {
        let Some(spill) = &self.spill else {
            write_until_done(&mut *self.sink, group, self.channels, &mut self.report)?;
            self.committed(group);
            return Ok(());
        };
        if !spill.journal.is_empty() {
            // Older rows are waiting in the journal: these go behind them.
            return self.journal_group(group, None);
        }
        match self.sink.write_batch(group) {
            Ok(()) => {
                self.committed(group);
                Ok(())
            }
            Err(error) if error.transient => self.journal_group(group, Some(error)),
            Err(error) => Err(error),
        }
    }

    /// Appends `group` to the journal; `error` is the database's failure that
    /// sent it there, if this group is the one that found it failing. When
    /// the journal refuses, waits for the database instead (pushing back on
    /// the shards) and writes the group there after what the journal holds.
    fn journal_group(
        &mut self,
        group: &[JobRecord],
        error: Option<SinkError>,
    ) -> Result<(), SinkError> {
        let location = self.report.location.clone();
        let Some(spill) = &mut self.spill else {
            return Ok(());
        };
        if let Some(error) = error {
            self.report.retried_writes += 1;
            if !spill.failing {
                spill.failing = true;
                let _ = self.channels.events.try_send(SinkEvent::Journaling {
                    error: error.after_rows(self.report.rows).to_string(),
                    dir: spill.journal.dir().display().to_string(),
                });
            }
            spill.wait = FIRST_RETRY_WAIT;
            spill.next_try = Instant::now() + spill.wait;
        }
        let rows = spill
            .resolver
            .resolve(group)
            .map_err(|error| SinkError::new("resolving names", location, error))?;
        match spill.journal.append(&rows) {
            Ok(_) => {
                drop(rows);
                spill.refused = false;
                // This run's result, persisted (in the journal for now): the
                // runs row counts it.
                self.report.counts.add(group);
                self.report.journal.rows_journaled += group.len() as u64;
                self.record_lag(group);
                self.publish_journal();
                Ok(())
            }
            Err(error) => {
                drop(rows);
                if !spill.refused {
                    spill.refused = true;
                    let _ = self.channels.events.try_send(SinkEvent::JournalRefused {
                        error: error.to_string(),
                    });
                }
                // Back-pressure: wait for the database, oldest rows first.
                self.replay_until_empty()?;
                write_until_done(&mut *self.sink, group, self.channels, &mut self.report)?;
                self.committed(group);
                Ok(())
            }
        }
    }

    /// Whether the journal holds rows and the next try of the database is due.
    fn replay_due(&self) -> bool {
        self.spill
            .as_ref()
            .is_some_and(|spill| !spill.journal.is_empty() && Instant::now() >= spill.next_try)
    }

    /// Replays the journal until it is empty, waiting out transient failures.
    fn replay_until_empty(&mut self) -> Result<(), SinkError> {
        while let Some(spill) = &self.spill {
            if spill.journal.is_empty() {
                break;
            }
            let wait = spill.next_try.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            self.replay(None)?;
        }
        Ok(())
    }

    /// Replays journal records oldest first into the database until the
    /// journal is empty, `until` passes, or the database fails transiently
    /// (then the next try is scheduled). Permanent errors are returned.
    fn replay(&mut self, until: Option<Instant>) -> Result<(), SinkError> {
        // As many rows per transaction as the sink groups live batches into.
        let max_rows = self.sink.grouping().max_rows;
        loop {
            let Some(spill) = &mut self.spill else {
                return Ok(());
            };
            if until.is_some_and(|until| Instant::now() >= until) {
                return Ok(());
            }
            let dir = spill.journal.dir().to_path_buf();
            let next = spill.journal.next_group(max_rows);
            for cut in spill.journal.take_cuts() {
                let _ = self.channels.events.try_send(SinkEvent::JournalCut {
                    cut: cut.to_string(),
                });
            }
            let replay = match next {
                Ok(Some(replay)) => replay,
                Ok(None) => {
                    if spill.failing {
                        spill.failing = false;
                        let _ = self.channels.events.try_send(SinkEvent::Recovered);
                    }
                    let rows = std::mem::take(&mut spill.replayed);
                    if rows > 0 {
                        let _ = self
                            .channels
                            .events
                            .try_send(SinkEvent::JournalReplayed { rows });
                    }
                    self.publish_journal();
                    return Ok(());
                }
                Err(error) => return Err(journal_failure("replaying the journal", error, &dir)),
            };
            match self.sink.write_rows(&replay.rows) {
                Ok(()) => {
                    spill.journal.commit(&replay).map_err(|error| {
                        journal_failure("removing a replayed segment", error, &dir)
                    })?;
                    let rows = replay.rows.len() as u64;
                    let leftover = rows.min(spill.leftover_pending);
                    spill.leftover_pending -= leftover;
                    spill.replayed += rows;
                    spill.wait = FIRST_RETRY_WAIT;
                    if spill.failing {
                        spill.failing = false;
                        let _ = self.channels.events.try_send(SinkEvent::Recovered);
                    }
                    self.report.rows += rows - leftover;
                    self.report.transactions += 1;
                    self.report.journal.rows_replayed += rows;
                    self.report.journal.leftover_rows_replayed += leftover;
                    self.channels
                        .progress
                        .committed
                        .store(self.report.rows, Ordering::Relaxed);
                    self.publish_journal();
                }
                Err(error) if error.transient => {
                    self.report.retried_writes += 1;
                    if !spill.failing {
                        spill.failing = true;
                        let _ = self.channels.events.try_send(SinkEvent::Journaling {
                            error: error.after_rows(self.report.rows).to_string(),
                            dir: dir.display().to_string(),
                        });
                    }
                    spill.next_try = Instant::now() + spill.wait;
                    spill.wait = (spill.wait * 2).min(MAX_RETRY_WAIT);
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Once the shards are done: replays what the journal holds for at most
    /// its drain limit, waiting out transient failures.
    fn drain_at_shutdown(&mut self) -> Result<(), SinkError> {
        let Some(spill) = &self.spill else {
            return Ok(());
        };
        let deadline = Instant::now() + spill.drain_limit;
        while let Some(spill) = &self.spill {
            let now = Instant::now();
            if spill.journal.is_empty() || now >= deadline {
                break;
            }
            let wake = spill.next_try.min(deadline);
            if wake > now {
                std::thread::sleep(wake - now);
                continue;
            }
            self.replay(Some(deadline))?;
        }
        Ok(())
    }

    /// Fsyncs the journal when its interval policy says so.
    fn sync_journal_if_due(&mut self) -> Result<(), SinkError> {
        if let Some(spill) = &mut self.spill {
            let dir = spill.journal.dir().to_path_buf();
            spill
                .journal
                .sync_if_due()
                .map_err(|error| journal_failure("syncing the journal", error, &dir))?;
        }
        Ok(())
    }

    /// At the end, whatever happened: fsyncs what stays in the journal and
    /// fills in the journal's totals.
    fn close_journal(&mut self) {
        let Some(spill) = &mut self.spill else {
            return;
        };
        if let Err(error) = spill.journal.sync() {
            let dir = spill.journal.dir().to_path_buf();
            let error = journal_failure("syncing the journal", error, &dir);
            let _ = self.channels.events.try_send(SinkEvent::Failed {
                error: error.to_string(),
            });
            if self.report.failure.is_none() {
                self.report.failure = Some(error.after_rows(self.report.rows));
            }
        }
        let totals = &mut self.report.journal;
        totals.bytes = spill.journal.bytes();
        totals.rows_left = spill.journal.rows();
        totals.run_rows_left = totals.rows_left.saturating_sub(spill.leftover_pending);
        totals.rows_lost = spill.journal.rows_lost();
        self.publish_journal();
    }

    /// Counts a group committed directly, records its lag, and applies the
    /// testing aid's delay.
    fn committed(&mut self, group: &[JobRecord]) {
        self.record_lag(group);
        self.report.rows += group.len() as u64;
        self.report.counts.add(group);
        self.report.transactions += 1;
        self.channels
            .progress
            .committed
            .store(self.report.rows, Ordering::Relaxed);
        if !self.commit_delay.is_zero() {
            std::thread::sleep(self.commit_delay);
        }
    }

    /// Records the sink lag of rows persisted now; hands a closed second over.
    fn record_lag(&mut self, group: &[JobRecord]) {
        let closed = self.report.sink_lag.record(group, Instant::now());
        if let Some((second, histogram)) = closed {
            let histogram = Box::new(histogram);
            // The coordinator drains events all run long; a full queue (it stopped
            // listening at the end) only loses that second's lag plot point.
            let _ = self
                .channels
                .events
                .try_send(SinkEvent::LagSecond { second, histogram });
        }
    }

    /// Puts the journal's counters where the coordinator reads them.
    fn publish_journal(&self) {
        let progress = &self.channels.progress;
        let totals = &self.report.journal;
        progress
            .rows_journaled
            .store(totals.rows_journaled, Ordering::Relaxed);
        progress
            .rows_replayed
            .store(totals.rows_replayed, Ordering::Relaxed);
        progress
            .leftover_rows_replayed
            .store(totals.leftover_rows_replayed, Ordering::Relaxed);
        if let Some(spill) = &self.spill {
            progress
                .journal_bytes
                .store(spill.journal.bytes(), Ordering::Relaxed);
        }
    }
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
    use crate::record::{DeviceId, Outcome, StageLatency};
    use crate::sink::{open, ClassNames, RowNames, SinkTarget};
    use bytes::Bytes;

    fn record(device: u32, tick_ms: i64) -> JobRecord {
        JobRecord {
            device: DeviceId::new(&format!("dev-{device:05}")),
            tick_ms,
            class: 0,
            shard: (device % 3) as u16,
            outcome: Outcome::Ok,
            outputs: vec![crate::record::Output::uint8(
                "OUTPUT0",
                Bytes::from_static(b"\x01\x02"),
            )],
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

    /// Names for `_devices` devices: records carry their ids, so only the
    /// class's names are needed (the count is kept to read like the tests).
    fn names(_devices: u32) -> Arc<RowNames> {
        Arc::new(RowNames {
            classes: vec![ClassNames {
                all_outputs: true,
                class: "camera".into(),
                model: "yolo".into(),
                compute_nodes: Vec::new(),
            }],
            run: crate::sink::run::RunIdentity::new("writer tests"),
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
        let sink = open(&target, names(DEVICES), false).unwrap().sink;
        let (batch_tx, batch_rx) = flume::bounded(4);
        let (recycle_tx, recycle_rx) = flume::bounded(1024);
        let (channels, _events) = channels(batch_rx, recycle_tx);
        let progress = channels.progress.clone();
        let writer = spawn_writer(sink, channels, Instant::now(), Duration::ZERO, None).unwrap();
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
            names: flume::bounded(1).1,
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
        fn rename(&mut self, _names: Arc<RowNames>) {}

        fn write_batch(&mut self, rows: &[JobRecord]) -> Result<(), SinkError> {
            let poison = format!("dev-{:05}", self.poison_device);
            if rows.iter().any(|row| row.device.as_str() == poison) {
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
        let writer = spawn_writer(sink, channels, Instant::now(), Duration::ZERO, None).unwrap();
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
        let writer = spawn_writer(sink, channels, Instant::now(), Duration::ZERO, None).unwrap();
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

    /// A database that can be switched down (every write fails transiently,
    /// or permanently with `broken`) and up; it records each written row's
    /// (tick, device) in the order written.
    struct SwitchSink {
        /// While set, every write fails as transient.
        down: Arc<std::sync::atomic::AtomicBool>,
        /// While set, every write fails for good.
        broken: Arc<std::sync::atomic::AtomicBool>,
        /// Rows written, in order.
        written: Arc<std::sync::Mutex<Vec<(i64, String)>>>,
    }

    impl SwitchSink {
        fn check(&self) -> Result<(), SinkError> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(SinkError::new("writing", self.location(), "disk on fire"));
            }
            if self.down.load(Ordering::Relaxed) {
                let error = SinkError::new("writing", self.location(), "database is locked");
                return Err(error.transient(true));
            }
            Ok(())
        }
    }

    impl Sink for SwitchSink {
        fn rename(&mut self, _names: Arc<RowNames>) {}

        fn write_batch(&mut self, rows: &[JobRecord]) -> Result<(), SinkError> {
            self.check()?;
            let mut written = self.written.lock().unwrap();
            written.extend(rows.iter().map(|row| (row.tick_ms, row.device.to_string())));
            Ok(())
        }

        fn write_rows(&mut self, rows: &[super::super::row::Row<'_>]) -> Result<(), SinkError> {
            self.check()?;
            let mut written = self.written.lock().unwrap();
            written.extend(
                rows.iter()
                    .map(|row| (row.tick_ms, row.device_id.to_string())),
            );
            Ok(())
        }

        fn location(&self) -> String {
            "switch://test".into()
        }

        fn end_run(&mut self, _counts: &RunCounts) -> Result<(), SinkError> {
            Ok(())
        }
    }

    /// A writer over a [`SwitchSink`] with a journal in `dir`: the batch
    /// sender, the switches, the rows written, the events, the thread.
    #[allow(clippy::type_complexity)]
    fn journaled_writer(
        dir: &std::path::Path,
        drain_limit: Duration,
    ) -> (
        flume::Sender<Vec<JobRecord>>,
        Arc<std::sync::atomic::AtomicBool>,
        Arc<std::sync::atomic::AtomicBool>,
        Arc<std::sync::Mutex<Vec<(i64, String)>>>,
        flume::Receiver<SinkEvent>,
        Arc<SinkProgress>,
        JoinHandle<WriterReport>,
    ) {
        let bound = crate::sink::journal::DEFAULT_MAX_BYTES;
        journaled_writer_bounded(dir, drain_limit, bound)
    }

    /// [`journaled_writer`] with a journal bounded to `max_bytes`.
    #[allow(clippy::type_complexity)]
    fn journaled_writer_bounded(
        dir: &std::path::Path,
        drain_limit: Duration,
        max_bytes: u64,
    ) -> (
        flume::Sender<Vec<JobRecord>>,
        Arc<std::sync::atomic::AtomicBool>,
        Arc<std::sync::atomic::AtomicBool>,
        Arc<std::sync::Mutex<Vec<(i64, String)>>>,
        flume::Receiver<SinkEvent>,
        Arc<SinkProgress>,
        JoinHandle<WriterReport>,
    ) {
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Box::new(SwitchSink {
            down: down.clone(),
            broken: broken.clone(),
            written: written.clone(),
        });
        let config = crate::sink::journal::JournalConfig {
            segment_bytes: crate::sink::journal::MIN_SEGMENT_BYTES,
            max_bytes,
            ..crate::sink::journal::JournalConfig::new(dir)
        };
        let (journal, leftover) = Journal::open(config).unwrap();
        let journal = WriterJournal {
            journal,
            leftover_rows: leftover.rows,
            names: names(100),
            drain_limit,
        };
        // A small channel: a writer that blocked on the database would stall
        // the sends below.
        let (batch_tx, batch_rx) = flume::bounded(2);
        let (recycle_tx, _recycle_rx) = flume::bounded(4);
        let (channels, events) = channels(batch_rx, recycle_tx);
        let progress = channels.progress.clone();
        let writer = spawn_writer(
            sink,
            channels,
            Instant::now(),
            Duration::ZERO,
            Some(journal),
        )
        .unwrap();
        (batch_tx, down, broken, written, events, progress, writer)
    }

    fn pcj_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter(|e| {
                        e.as_ref()
                            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pcj"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn a_database_that_is_down_sends_batches_to_the_journal_then_they_are_replayed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("journal");
        let (batch_tx, down, _broken, written, events, progress, writer) =
            journaled_writer(&folder, Duration::from_secs(5));
        batch_tx.send(vec![record(0, 1), record(1, 1)]).unwrap();
        // Wait until the first batch is committed directly.
        for _ in 0..500 {
            if progress.committed() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(progress.committed(), 2);
        down.store(true, Ordering::Relaxed);
        // Far more batches than the channel holds go through while the database
        // is down: the writer does not block on it.
        for tick in 2..52 {
            batch_tx
                .send_timeout(
                    (0..10).map(|d| record(d, tick)).collect(),
                    Duration::from_secs(5),
                )
                .expect("the writer keeps taking batches while the database is down");
        }
        for _ in 0..2_500 {
            if progress.rows_journaled() == 500 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(progress.rows_journaled(), 500);
        assert!(progress.journal_bytes() > 0);
        assert!(pcj_files(&folder) > 1, "segments rolled");
        down.store(false, Ordering::Relaxed);
        // A batch sent after the database is back still comes after the journal.
        batch_tx.send(vec![record(5, 52)]).unwrap();
        drop(batch_tx);
        let report = writer.join().unwrap();
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.rows, 503);
        // The last batch went to the journal too unless the replay was done first.
        let journaled = report.journal.rows_journaled;
        assert!(journaled == 500 || journaled == 501, "{journaled}");
        assert_eq!(report.journal.rows_replayed, journaled);
        assert_eq!((report.journal.rows_left, report.journal.bytes), (0, 0));
        assert_eq!(pcj_files(&folder), 0);
        assert_eq!(report.sink_lag.total.len(), 503);
        let ticks: Vec<i64> = written.lock().unwrap().iter().map(|(t, _)| *t).collect();
        assert_eq!(ticks.len(), 503);
        assert!(ticks.windows(2).all(|w| w[0] <= w[1]), "{ticks:?}");
        let events: Vec<SinkEvent> = events.try_iter().collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, SinkEvent::Journaling { error, .. } if error.contains("database is locked"))),
            "{events:?}"
        );
        assert!(events.iter().any(|e| matches!(e, SinkEvent::Recovered)));
        assert!(events
            .iter()
            .any(|e| matches!(e, SinkEvent::JournalReplayed { rows } if *rows > 0)));
    }

    #[test]
    fn rows_still_journaled_at_shutdown_stay_on_disk_and_the_next_writer_replays_them_first() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("journal");
        let (batch_tx, down, _broken, written, _events, _progress, writer) =
            journaled_writer(&folder, Duration::from_millis(200));
        down.store(true, Ordering::Relaxed);
        for tick in 0..5 {
            batch_tx
                .send((0..4).map(|d| record(d, tick)).collect())
                .unwrap();
        }
        drop(batch_tx);
        let report = writer.join().unwrap();
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.rows, 0);
        assert_eq!(report.journal.rows_journaled, 20);
        assert_eq!(report.journal.rows_left, 20);
        assert_eq!(report.journal.run_rows_left, 20);
        assert!(report.journal.bytes > 0);
        assert!(written.lock().unwrap().is_empty());

        let (batch_tx, _down, _broken, written, _events, _progress, writer) =
            journaled_writer(&folder, Duration::from_secs(5));
        batch_tx.send(vec![record(9, 100)]).unwrap();
        drop(batch_tx);
        let report = writer.join().unwrap();
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.journal.leftover_rows, 20);
        assert_eq!(report.journal.leftover_rows_replayed, 20);
        assert_eq!(report.rows, 1, "only this run's rows count as its own");
        assert_eq!(pcj_files(&folder), 0);
        let ticks: Vec<i64> = written.lock().unwrap().iter().map(|(t, _)| *t).collect();
        assert_eq!(ticks.len(), 21);
        assert_eq!(
            *ticks.last().unwrap(),
            100,
            "the leftover came first: {ticks:?}"
        );
    }

    #[test]
    fn a_full_journal_and_a_down_database_push_back_on_the_senders_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("journal");
        let (batch_tx, down, _broken, written, events, progress, writer) =
            // Room for a few groups: a loaded writer takes up to three queued
            // batches as one group, and the first group must fit.
            journaled_writer_bounded(&folder, Duration::from_secs(5), 4 * 4096);
        down.store(true, Ordering::Relaxed);
        // Send until a send waits: the journal is full, the writer waits for
        // the database, the channel fills and the sender is held up (a shard
        // would skip ticks with `sink backlog` meanwhile).
        // A send that waits counts only once the journal has said it is full:
        // on a loaded machine a writer still busy with its first fsync holds
        // the senders up too, and that is not the push-back under test.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut refused = false;
        let mut sent = 0;
        let held_up = loop {
            assert!(sent < 1_000, "the senders were never held up");
            assert!(Instant::now() < deadline, "the journal never refused");
            let batch = (0..10).map(|d| record(d, sent)).collect();
            match batch_tx.send_timeout(batch, Duration::from_millis(300)) {
                Ok(()) => sent += 1,
                Err(flume::SendTimeoutError::Timeout(batch)) => {
                    refused |= events.try_iter().any(|e| {
                        matches!(e, SinkEvent::JournalRefused { error } if error.contains("is full"))
                    });
                    if refused {
                        break batch;
                    }
                    // The writer is merely slow: this batch is sent again.
                }
                Err(error) => panic!("{error}"),
            }
        };
        assert!(progress.rows_journaled() > 0);
        assert!(progress.journal_bytes() <= 4 * 4096);
        assert_eq!(progress.committed(), 0);
        down.store(false, Ordering::Relaxed);
        batch_tx.send(held_up).unwrap();
        drop(batch_tx);
        let report = writer.join().unwrap();
        assert!(report.failure.is_none(), "{:?}", report.failure);
        let total = 10 * (sent as u64 + 1);
        assert_eq!(report.rows, total);
        assert_eq!(report.journal.rows_left, 0);
        let ticks: Vec<i64> = written.lock().unwrap().iter().map(|(t, _)| *t).collect();
        assert_eq!(ticks.len() as u64, total);
        assert!(
            ticks.windows(2).all(|w| w[0] <= w[1]),
            "order kept: {ticks:?}"
        );
    }

    #[test]
    fn a_permanent_error_while_replaying_still_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("journal");
        let (batch_tx, down, broken, _written, events, _progress, writer) =
            journaled_writer(&folder, Duration::from_secs(5));
        down.store(true, Ordering::Relaxed);
        batch_tx.send(vec![record(1, 1)]).unwrap();
        match events.recv_timeout(Duration::from_secs(10)) {
            Ok(SinkEvent::Journaling { .. }) => {}
            other => panic!("expected Journaling, got {other:?}"),
        }
        broken.store(true, Ordering::Relaxed);
        let report = writer.join().unwrap();
        let error = report.failure.expect("the permanent error");
        assert!(error.to_string().contains("disk on fire"), "{error}");
        assert!(events
            .try_iter()
            .any(|e| matches!(e, SinkEvent::Failed { error } if error.contains("disk on fire"))));
        // What was not replayed is still in the journal, on disk.
        assert_eq!(report.journal.rows_left, 1);
        assert_eq!(pcj_files(&folder), 1);
        drop(batch_tx);
    }

    /// Records the size of each write; groups as it is told.
    struct GroupingSink {
        /// What [`Sink::grouping`] answers.
        grouping: super::super::Grouping,
        /// Rows of each write, in order.
        written: flume::Sender<usize>,
    }

    impl Sink for GroupingSink {
        fn rename(&mut self, _names: Arc<RowNames>) {}

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
        let writer = spawn_writer(sink, channels, Instant::now(), Duration::ZERO, None).unwrap();
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
