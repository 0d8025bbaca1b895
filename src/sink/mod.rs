//! The sink: where every [`JobRecord`] becomes one persisted row.
//!
//! Owns the [`Sink`] trait (one implementation per database: SQLite in [`sqlite`],
//! PostgreSQL in [`postgres`]), [`SinkError`] with its transient/permanent
//! verdict, and the names records are resolved against ([`RowNames`], which also
//! carries the run's [`run::RunIdentity`]). [`row`] holds the one row shape and
//! column list every backend writes; [`run`] the run id stamped on every row and
//! the `runs` table's row. The single writer thread that drives a sink is in
//! [`writer`]; [`journal`] is the spill journal it writes batches to while the
//! database cannot take them (`[sink] journal_dir`), and replays from, in
//! order, once it can.
//!
//! Start-up calls [`open`] on the configured [`SinkTarget`] (which creates the
//! schema, checks it, and inserts the run's `runs` row with `ended_at_ms` NULL),
//! and [`journal::Journal::open`] when a journal is configured (it reports what
//! an earlier run left in it), then [`writer::spawn_writer`] with the receiving
//! end of the bounded channel every shard sends its batches on. Shutdown drops
//! the senders; with a journal the writer first tries, for a bounded time, to
//! replay what is still in it; it commits what is left, completes the `runs`
//! row ([`Sink::end_run`]) and ends with its [`writer::WriterReport`].

pub mod journal;
pub mod postgres;
pub mod row;
pub mod run;
pub mod sqlite;
pub mod writer;

pub use writer::{
    spawn_writer, SinkEvent, SinkLag, SinkProgress, WriterReport, WRITER_THREAD_NAME,
};

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::record::JobRecord;

/// Names the writer resolves record indexes to; shared read-only with the writer
/// thread. Records carry their device's id, so no device list is needed here.
pub struct RowNames {
    /// Class and model names by [`ClassIndex`](crate::record::ClassIndex), in the
    /// config's class order; built once at start-up.
    pub classes: Vec<ClassNames>,
    /// The run writing the rows: its id goes into every row's `run_id`, and the
    /// sink inserts its `runs` row when it opens.
    pub run: run::RunIdentity,
}

/// The names written to a row's `class` and `model` columns for one class.
pub struct ClassNames {
    /// Whether rows of the class carry every output for `job_outputs`
    /// ([`Class::store_all_outputs`](crate::config::Class::store_all_outputs)).
    pub all_outputs: bool,
    /// The class name as the config spells it.
    pub class: String,
    /// The model the class's jobs run, as sent in `ModelInfer`.
    pub model: String,
    /// The class's compute nodes as `host:port`, by index, for the
    /// `compute_node` column.
    pub compute_nodes: Vec<String>,
}

/// Most rows the writer gathers into one transaction. A commit costs tens of µs
/// whatever its size, so a few thousand rows make it negligible per row; the cap
/// bounds the writer's staging memory and how much one failed commit takes with it.
pub const MAX_GROUP_ROWS: usize = 8192;

/// A place rows are persisted. Owned by the writer thread once it is spawned.
pub trait Sink: Send {
    /// Persists a batch of records in one transaction, resolved into
    /// [`row::Row`]s; idempotent per (device, tick).
    fn write_batch(&mut self, records: &[JobRecord]) -> Result<(), SinkError>;
    /// Persists rows already resolved (read back from the spill journal) in one
    /// transaction; idempotent per (device, tick).
    fn write_rows(&mut self, rows: &[row::Row<'_>]) -> Result<(), SinkError>;
    /// Human-readable location, e.g. the SQLite file path (printed at the end of a run).
    fn location(&self) -> String;
    /// Completes this run's `runs` row (inserted at open): `ended_at_ms` and the
    /// counts of what was committed. Called once, by the writer, after its last
    /// commit; a run that never gets here keeps `ended_at_ms` NULL.
    fn end_run(&mut self, counts: &run::RunCounts) -> Result<(), SinkError>;
    /// Resolves records with `names` from now on: a live reload added devices
    /// or classes. The writer calls it before the first batch that may hold
    /// them (the coordinator sends the names before the shards start them).
    fn rename(&mut self, names: Arc<RowNames>);
    /// How the writer should group batches into one write for this sink; the
    /// default writes whatever is queued, up to [`MAX_GROUP_ROWS`] rows,
    /// without waiting for more.
    fn grouping(&self) -> Grouping {
        Grouping::default()
    }
}

/// How the writer groups the shards' batches into one [`Sink::write_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    /// Most rows in one write (a group may pass it by the last batch taken,
    /// never by more). Bounds the writer's memory and what one failure takes with it.
    pub max_rows: usize,
    /// How long the writer waits for more batches after the first one of a
    /// group, until `max_rows` are there; zero writes whatever is queued at once
    /// (under load groups still grow, because batches queue while a write runs).
    pub linger: Duration,
}

impl Default for Grouping {
    fn default() -> Grouping {
        Grouping {
            max_rows: MAX_GROUP_ROWS,
            linger: Duration::ZERO,
        }
    }
}

/// What to open; the config maps onto this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// A SQLite database file, created if missing.
    Sqlite {
        /// The database file (not its directory, which must exist).
        path: PathBuf,
        /// How long a write waits for another connection's lock before it fails
        /// as transient (and the writer retries it).
        busy_timeout: Duration,
    },
    /// A PostgreSQL database, written with binary `COPY` through a staging table.
    Postgres(postgres::PostgresOptions),
}

impl SinkTarget {
    /// A SQLite file with the default busy timeout.
    pub fn sqlite(path: impl Into<PathBuf>) -> SinkTarget {
        SinkTarget::Sqlite {
            path: path.into(),
            busy_timeout: sqlite::DEFAULT_BUSY_TIMEOUT,
        }
    }
}

/// A sink [`open`] returned.
pub struct Opened {
    /// The sink, for the writer thread.
    pub sink: Box<dyn Sink>,
    /// Why the database was not reached, when it was opened without it (a
    /// journal takes the rows until it answers); `None` when it is connected.
    pub unreachable: Option<SinkError>,
}

/// Opens the sink `target` names, creating its schema if missing and checking that
/// it can be written to: a sink that cannot take rows fails the start, not the run.
/// With `journal` (the writer has one to spill to), a database server that
/// cannot be reached yet does not fail the start: see [`Opened::unreachable`].
pub fn open(target: &SinkTarget, names: Arc<RowNames>, journal: bool) -> Result<Opened, SinkError> {
    match target {
        SinkTarget::Sqlite { path, busy_timeout } => Ok(Opened {
            sink: Box::new(sqlite::SqliteSink::open(path, *busy_timeout, names)?),
            unreachable: None,
        }),
        SinkTarget::Postgres(options) if journal => {
            let (sink, unreachable) = postgres::PostgresSink::open_or_wait(options, names)?;
            Ok(Opened {
                sink: Box::new(sink),
                unreachable,
            })
        }
        SinkTarget::Postgres(options) => Ok(Opened {
            sink: Box::new(postgres::PostgresSink::open(options, names)?),
            unreachable: None,
        }),
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
    /// Where: the sink's location as [`Sink::location`] gives it (the file path,
    /// or `postgresql://user@host:port/db`, never with the password).
    pub location: String,
    /// Rows the writer thread had persisted before this failure; set by the writer,
    /// `None` when the error did not come from it (e.g. from [`open`]).
    pub rows_written: Option<u64>,
    /// Whether the same write may succeed later without anyone acting (a lock held
    /// by another connection): the writer retries those and stops on the others
    /// (a full disk, a read-only or corrupt file).
    pub transient: bool,
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
            transient: false,
            cause: cause.into(),
        }
    }

    /// Marks the error as one a retry of the same write may get past.
    pub fn transient(mut self, transient: bool) -> SinkError {
        self.transient = transient;
        self
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
