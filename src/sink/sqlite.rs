//! SQLite implementation of [`Sink`]: one database file, WAL journal, one upsert per row.
//!
//! Opened by [`super::open`] for [`SinkTarget::Sqlite`](super::SinkTarget::Sqlite);
//! from then on only the writer thread touches it. Each `write_batch` is one
//! transaction of `INSERT … ON CONFLICT DO UPDATE` through a cached statement, so
//! writing the same (device, tick) again replaces the row (last write wins).
//! Every output tensor of an ok job is a row of `job_outputs` in the same
//! transaction ([`OUTPUTS_SCHEMA`]); `jobs.output` keeps the first one's bytes.
//! The `runs` table gets the run's row at open and its end at [`Sink::end_run`].

use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, TransactionBehavior};

use super::row::{Resolver, Row};
use super::run::{now_ms, RunCounts};
use super::{RowNames, Sink, SinkError};
use crate::record::JobRecord;

/// The `jobs` table: one row per (device, tick). `WITHOUT ROWID` stores rows in the
/// primary-key B-tree itself, so each upsert touches one tree instead of two. The
/// key is the (device, tick) pair ordered time first: results arrive in time order,
/// so inserts append at the tree's right edge instead of dirtying a random page per
/// row — measured 9 → 3 µs of writer CPU per row in tick mode (100,000 devices,
/// 30,000 rows/s). Reading one device's history wants an index on
/// `(device_id, tick_ms)`, at a write cost: create it where that query matters.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS jobs (
  device_id TEXT NOT NULL, tick_ms INTEGER NOT NULL, class TEXT NOT NULL, model TEXT NOT NULL,
  outcome TEXT NOT NULL CHECK (outcome IN ('ok','failed','skipped')), reason TEXT,
  output BLOB, schedule_lag_us INTEGER NOT NULL, fetch_us INTEGER, infer_us INTEGER, end_to_end_us INTEGER,
  shard INTEGER NOT NULL, compute_node TEXT, attempts INTEGER NOT NULL DEFAULT 0, run_id TEXT,
  PRIMARY KEY (tick_ms, device_id)) WITHOUT ROWID;";

/// The `job_outputs` table: every output tensor of every ok job, one row per
/// (device, tick, output name); `shape` is text like `1,256`, `data` the raw
/// little-endian bytes. Keyed time first like `jobs`, for the same reason.
/// One output of one job: `SELECT data FROM job_outputs WHERE device_id = ?
/// AND tick_ms = ? AND name = 'l2'`.
pub const OUTPUTS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS job_outputs (
  device_id TEXT NOT NULL, tick_ms INTEGER NOT NULL, name TEXT NOT NULL,
  datatype TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL,
  PRIMARY KEY (tick_ms, device_id, name)) WITHOUT ROWID;";

/// Writes one output; a second write of the same (device, tick, name) replaces it.
const OUTPUT_UPSERT: &str =
    "INSERT INTO job_outputs (device_id, tick_ms, name, datatype, shape, data)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT(tick_ms, device_id, name) DO UPDATE SET
  datatype = excluded.datatype, shape = excluded.shape, data = excluded.data";

/// The `runs` table: one row per run, inserted at open with `ended_at_ms` and
/// the counts NULL, completed by [`Sink::end_run`]; a NULL `ended_at_ms` is a
/// run that did not finish. Times are Unix ms.
pub const RUNS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, host TEXT NOT NULL, started_at_ms INTEGER NOT NULL,
  ended_at_ms INTEGER, config_digest TEXT NOT NULL,
  jobs INTEGER, ok INTEGER, failed INTEGER, skipped INTEGER);";

/// Columns added after the first release, with their definitions: a database
/// made before them gets them added at open, so an existing file keeps working.
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("compute_node", "compute_node TEXT"),
    ("attempts", "attempts INTEGER NOT NULL DEFAULT 0"),
    ("run_id", "run_id TEXT"),
];

/// Writes one row; a second write of the same (device, tick) replaces every column.
pub const UPSERT: &str =
    "INSERT INTO jobs (device_id, tick_ms, class, model, outcome, reason, output,
  schedule_lag_us, fetch_us, infer_us, end_to_end_us, shard, compute_node, attempts, run_id)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
ON CONFLICT(tick_ms, device_id) DO UPDATE SET
  class = excluded.class, model = excluded.model, outcome = excluded.outcome,
  reason = excluded.reason, output = excluded.output,
  schedule_lag_us = excluded.schedule_lag_us, fetch_us = excluded.fetch_us,
  infer_us = excluded.infer_us, end_to_end_us = excluded.end_to_end_us,
  shard = excluded.shard, compute_node = excluded.compute_node, attempts = excluded.attempts,
  run_id = excluded.run_id";

/// How long a write waits for a lock held by another connection (an operator's
/// `sqlite3` shell, a checkpoint) before the try fails as transient and the
/// writer tries again later; `[sink] busy_timeout_ms` overrides it.
pub const DEFAULT_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Page cache of the writer's connection, in KiB (SQLite's negative `cache_size`).
/// With the key ordered time first, rows append at the B-tree's right edge, so the
/// hot set is that edge and the interior pages: 2 MiB measured the same writer CPU
/// as 64 MiB (closed loop 3.5–3.8 µs/job for both; tick mode, 100,000 devices at
/// 30,000 rows/s, 4.5–5.9 against 4.4–5.8, two runs each). The cache fills as
/// rows arrive and is then reused, so a larger one only makes a long run's
/// resident memory climb for longer (64 MiB took ~10 minutes at 1,000 rows/s).
const CACHE_KIB: i64 = 2 * 1024;

/// WAL pages (4 KiB each) after which a commit checkpoints them into the database
/// file. Above SQLite's default of 1,000 a page rewritten by several transactions is
/// copied back once, not each time: ~10% less writer CPU measured; the WAL file
/// grows to about 40 MiB.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// A SQLite database file holding the `jobs` table.
pub struct SqliteSink {
    /// The open database; owned by the writer thread once the sink is handed to it.
    conn: Connection,
    /// The file path as given, for [`Sink::location`] and every error message.
    location: String,
    /// Turns each batch of records into the table's rows.
    resolver: Resolver,
    /// This run's id, the key of its `runs` row, which [`Sink::end_run`] completes.
    run_id: String,
}

impl SqliteSink {
    /// Opens (or creates) the database at `path`, switches it to WAL with
    /// `synchronous=NORMAL`, creates the `jobs` table if missing, and checks that
    /// the file can be written: a read-only file (or file system) is refused here,
    /// at start-up, not found out by the first batch.
    ///
    /// Several dispatchers may open one file at the same moment (instances of a
    /// cluster sharing a sink). SQLite answers some of those races with "database
    /// is locked" at once, without waiting on `busy_timeout` (switching to WAL,
    /// upgrading a read lock to a write lock), so a transient failure here opens
    /// again until `busy_timeout` has passed. Nothing is committed before the last
    /// step, so a retry never leaves half a start behind.
    pub fn open(
        path: &Path,
        busy_timeout: std::time::Duration,
        names: Arc<RowNames>,
    ) -> Result<SqliteSink, SinkError> {
        let deadline = std::time::Instant::now() + busy_timeout;
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            match SqliteSink::open_once(path, busy_timeout, Arc::clone(&names)) {
                Err(error) if error.transient && std::time::Instant::now() + pause < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
                opened => return opened,
            }
        }
    }

    /// One attempt of [`SqliteSink::open`].
    fn open_once(
        path: &Path,
        busy_timeout: std::time::Duration,
        names: Arc<RowNames>,
    ) -> Result<SqliteSink, SinkError> {
        let location = path.display().to_string();
        let at = location.as_str();
        check_path_writable(path, at)?;
        let conn = Connection::open(path).map_err(failed("opening the database", at))?;
        conn.busy_timeout(busy_timeout)
            .map_err(failed("setting busy_timeout", at))?;
        // WAL lets readers query the table during a run, and with synchronous=NORMAL
        // a commit is an append without fsync: a power cut may lose the last
        // transactions but never corrupts the file.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(failed("setting journal_mode=WAL", at))?;
        if !mode.eq_ignore_ascii_case("wal") {
            let cause = format!("the database stayed in journal_mode={mode}");
            return Err(SinkError::new("setting journal_mode=WAL", at, cause));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(failed("setting synchronous=NORMAL", at))?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(failed("setting cache_size", at))?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(failed("setting wal_autocheckpoint", at))?;
        conn.execute_batch(SCHEMA)
            .map_err(failed("creating table jobs", at))?;
        add_missing_columns(&conn, at)?;
        // Preparing now puts the statement in the cache and fails at start-up, not
        // on the first batch, if an existing `jobs` table has a different shape.
        conn.prepare_cached(UPSERT)
            .map_err(failed("preparing the upsert into jobs", at))?;
        conn.execute_batch(OUTPUTS_SCHEMA)
            .map_err(failed("creating table job_outputs", at))?;
        conn.prepare_cached(OUTPUT_UPSERT)
            .map_err(failed("preparing the upsert into job_outputs", at))?;
        check_writable(&conn, at)?;
        conn.execute_batch(RUNS_SCHEMA)
            .map_err(failed("creating table runs", at))?;
        let run = &names.run;
        conn.execute(
            "INSERT INTO runs (run_id, host, started_at_ms, config_digest) VALUES (?1, ?2, ?3, ?4)",
            params![run.run_id, run.host, run.started_at_ms, run.config_digest],
        )
        .map_err(failed("inserting the run into runs", at))?;
        Ok(SqliteSink {
            conn,
            location,
            run_id: run.run_id.clone(),
            resolver: Resolver::new(names),
        })
    }
}

/// Adds the [`ADDED_COLUMNS`] an older `jobs` table lacks.
fn add_missing_columns(conn: &Connection, at: &str) -> Result<(), SinkError> {
    let mut statement = conn
        .prepare("SELECT name FROM pragma_table_info('jobs')")
        .map_err(failed("reading the columns of jobs", at))?;
    let existing: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .and_then(|rows| rows.collect())
        .map_err(failed("reading the columns of jobs", at))?;
    for (name, definition) in ADDED_COLUMNS {
        if !existing.iter().any(|column| column == name) {
            conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {definition}"))
                .map_err(failed("adding a column to jobs", at))?;
        }
    }
    Ok(())
}

impl Sink for SqliteSink {
    fn rename(&mut self, names: Arc<RowNames>) {
        self.resolver.rename(names);
    }

    fn write_batch(&mut self, records: &[JobRecord]) -> Result<(), SinkError> {
        let rows = self
            .resolver
            .resolve(records)
            .map_err(|error| SinkError::new("resolving names", self.location.clone(), error))?;
        write_rows(&mut self.conn, &self.location, &rows)
    }

    fn write_rows(&mut self, rows: &[Row<'_>]) -> Result<(), SinkError> {
        write_rows(&mut self.conn, &self.location, rows)
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn end_run(&mut self, counts: &RunCounts) -> Result<(), SinkError> {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.conn
            .execute(
                "UPDATE runs SET ended_at_ms = ?2, jobs = ?3, ok = ?4, failed = ?5, skipped = ?6
                 WHERE run_id = ?1",
                params![
                    self.run_id,
                    now_ms(),
                    count(counts.jobs),
                    count(counts.ok),
                    count(counts.failed),
                    count(counts.skipped)
                ],
            )
            .map(drop)
            .map_err(failed("recording the run's end in runs", &self.location))
    }
}

/// Upserts `rows` in one transaction, in key order.
fn write_rows(conn: &mut Connection, at: &str, rows: &[Row<'_>]) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    // IMMEDIATE takes the write lock up front, so a busy database is waited on
    // at BEGIN rather than failing mid-batch on a lock upgrade.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed("beginning a transaction", at))?;
    {
        let mut upsert = tx
            .prepare_cached(UPSERT)
            .map_err(failed("preparing the upsert into jobs", at))?;
        let mut output_upsert = tx
            .prepare_cached(OUTPUT_UPSERT)
            .map_err(failed("preparing the upsert into job_outputs", at))?;
        // Rows in key order walk the primary-key B-tree from one leaf to the
        // next instead of jumping around it (shards' batches interleave).
        let mut order: Vec<(i64, &str, usize)> = rows
            .iter()
            .enumerate()
            .map(|(index, row)| (row.tick_ms, &*row.device_id, index))
            .collect();
        order.sort_unstable();
        for &(_, _, index) in &order {
            let row = &rows[index];
            upsert
                .execute(params![
                    row.device_id,
                    row.tick_ms,
                    row.class,
                    row.model,
                    row.outcome,
                    row.reason,
                    row.output(),
                    row.schedule_lag_us,
                    row.fetch_us,
                    row.infer_us,
                    row.end_to_end_us,
                    row.shard,
                    row.compute_node,
                    row.attempts,
                    row.run_id,
                ])
                .map_err(|error| {
                    let operation = format!(
                        "writing row (device {}, tick {})",
                        row.device_id, row.tick_ms
                    );
                    let transient = is_transient(&error);
                    SinkError::new(operation, at, error).transient(transient)
                })?;
            for output in row.outputs.iter() {
                output_upsert
                    .execute(params![
                        row.device_id,
                        row.tick_ms,
                        output.name,
                        output.datatype,
                        output.shape_text(),
                        &output.bytes[..],
                    ])
                    .map_err(|error| {
                        let operation = format!(
                            "writing output {:?} (device {}, tick {})",
                            output.name, row.device_id, row.tick_ms
                        );
                        let transient = is_transient(&error);
                        SinkError::new(operation, at, error).transient(transient)
                    })?;
            }
        }
    }
    // An early return above drops `tx`, which rolls the whole batch back.
    tx.commit().map_err(|error| {
        let transient = is_transient(&error);
        SinkError::new(format!("committing {} rows", rows.len()), at, error).transient(transient)
    })
}

/// Refuses a database file, or a folder for its `-wal` and `-shm` files, that
/// this process cannot write, with the operating system's reason ("Read-only
/// file system", "Permission denied"): SQLite's own word for it is only
/// "unable to open database file", or nothing at all until the first write.
fn check_path_writable(path: &Path, at: &str) -> Result<(), SinkError> {
    let operation = "checking that the database is writable";
    if path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|error| SinkError::new(operation, at, format!("the file: {error}")))?;
    }
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    if folder.is_dir() {
        let name = std::ffi::CString::new(folder.as_os_str().as_encoded_bytes())
            .map_err(|error| SinkError::new(operation, at, error))?;
        // SAFETY: access only reads the NUL-terminated path we own.
        if unsafe { libc::access(name.as_ptr(), libc::W_OK) } != 0 {
            let error = std::io::Error::last_os_error();
            let cause = format!("its folder {}: {error}", folder.display());
            return Err(SinkError::new(operation, at, cause));
        }
    }
    Ok(())
}

/// Refuses a database this connection cannot write: SQLite opens a read-only
/// file (or one on a read-only file system) read-only without a word, and a
/// leftover `-wal` file even lets the schema statements pass.
fn check_writable(conn: &Connection, at: &str) -> Result<(), SinkError> {
    let operation = "checking that the database is writable";
    if conn
        .is_readonly(rusqlite::DatabaseName::Main)
        .map_err(failed(operation, at))?
    {
        let cause = "the file (or its folder, or its file system) is read-only";
        return Err(SinkError::new(operation, at, cause));
    }
    // A real write, rolled back: takes the write lock and touches the WAL.
    conn.execute_batch(
        "BEGIN IMMEDIATE; DELETE FROM jobs WHERE tick_ms = -1 AND device_id = ''; ROLLBACK;",
    )
    .map_err(failed(operation, at))
}

/// Whether a SQLite error may pass if the same write is tried again: another
/// connection holds a lock. Everything else (full disk, read-only, I/O error,
/// corruption, a schema mismatch) needs someone to act.
fn is_transient(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Maps a driver error to a [`SinkError`] naming `operation` and `location`.
fn failed<'a>(
    operation: &'static str,
    location: &'a str,
) -> impl FnOnce(rusqlite::Error) -> SinkError + 'a {
    move |error| {
        let transient = is_transient(&error);
        SinkError::new(operation, location, error).transient(transient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, JobError, Stage};
    use crate::grpc::status::Code;
    use crate::record::{Outcome, SkipReason, StageLatency};
    use crate::sink::ClassNames;
    use bytes::Bytes;

    fn names() -> Arc<RowNames> {
        Arc::new(RowNames {
            classes: vec![
                ClassNames {
                    all_outputs: true,
                    class: "camera".into(),
                    model: "yolo-v8".into(),
                    compute_nodes: Vec::new(),
                },
                ClassNames {
                    all_outputs: true,
                    class: "thermostat".into(),
                    model: "anomaly".into(),
                    compute_nodes: Vec::new(),
                },
            ],
            run: crate::sink::run::RunIdentity::new("sqlite-test"),
        })
    }

    fn ok_row() -> JobRecord {
        JobRecord {
            device: "cam-01".into(),
            tick_ms: 1_700_000_000_000,
            class: 0,
            shard: 3,
            outcome: Outcome::Ok,
            outputs: vec![crate::record::Output::uint8(
                "OUTPUT0",
                Bytes::from_static(&[0, 1, 2, 255]),
            )],
            latency: StageLatency {
                schedule_lag_us: 12,
                fetch_us: Some(340),
                infer_us: Some(5_600),
                end_to_end_us: Some(6_100),
            },
            compute_node: None,
            attempts: 0,
            ready_at: std::time::Instant::now(),
        }
    }

    fn failed_row() -> JobRecord {
        JobRecord {
            device: "thermo-02".into(),
            tick_ms: 1_700_000_000_000,
            class: 1,
            shard: 1,
            outcome: Outcome::Failed(JobError::new(
                Stage::Infer,
                ErrorKind::Status {
                    code: Code::UNAVAILABLE,
                    message: "overloaded".into(),
                },
            )),
            outputs: Vec::new(),
            latency: StageLatency {
                schedule_lag_us: 40,
                fetch_us: Some(300),
                infer_us: None,
                end_to_end_us: Some(9_000),
            },
            compute_node: None,
            attempts: 0,
            ready_at: std::time::Instant::now(),
        }
    }

    fn skipped_row() -> JobRecord {
        JobRecord {
            device: "thermo-02".into(),
            tick_ms: 1_700_000_001_000,
            class: 1,
            shard: 1,
            outcome: Outcome::Skipped(SkipReason::PreviousJobRunning),
            outputs: Vec::new(),
            latency: StageLatency {
                schedule_lag_us: 7,
                ..StageLatency::default()
            },
            compute_node: None,
            attempts: 0,
            ready_at: std::time::Instant::now(),
        }
    }

    /// Every column of one row, as SQLite returns it.
    #[derive(Debug, PartialEq)]
    struct Row {
        class: String,
        model: String,
        outcome: String,
        reason: Option<String>,
        output: Option<Vec<u8>>,
        schedule_lag_us: i64,
        fetch_us: Option<i64>,
        infer_us: Option<i64>,
        end_to_end_us: Option<i64>,
        shard: i64,
    }

    fn read_row(path: &Path, device_id: &str, tick_ms: i64) -> Row {
        let db = Connection::open(path).unwrap();
        db.query_row(
            "SELECT class, model, outcome, reason, output, schedule_lag_us, fetch_us,
                    infer_us, end_to_end_us, shard
             FROM jobs WHERE device_id = ?1 AND tick_ms = ?2",
            params![device_id, tick_ms],
            |r| {
                Ok(Row {
                    class: r.get(0)?,
                    model: r.get(1)?,
                    outcome: r.get(2)?,
                    reason: r.get(3)?,
                    output: r.get(4)?,
                    schedule_lag_us: r.get(5)?,
                    fetch_us: r.get(6)?,
                    infer_us: r.get(7)?,
                    end_to_end_us: r.get(8)?,
                    shard: r.get(9)?,
                })
            },
        )
        .unwrap()
    }

    fn count(path: &Path) -> i64 {
        let db = Connection::open(path).unwrap();
        db.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn rows_round_trip_with_every_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let mut sink = SqliteSink::open(&path, DEFAULT_BUSY_TIMEOUT, names()).unwrap();
        let rows = [ok_row(), failed_row(), skipped_row()];
        sink.write_batch(&rows).unwrap();

        assert_eq!(count(&path), 3);
        assert_eq!(
            read_row(&path, "cam-01", 1_700_000_000_000),
            Row {
                class: "camera".into(),
                model: "yolo-v8".into(),
                outcome: "ok".into(),
                reason: None,
                output: Some(vec![0, 1, 2, 255]),
                schedule_lag_us: 12,
                fetch_us: Some(340),
                infer_us: Some(5_600),
                end_to_end_us: Some(6_100),
                shard: 3,
            }
        );
        assert_eq!(
            read_row(&path, "thermo-02", 1_700_000_000_000),
            Row {
                class: "thermostat".into(),
                model: "anomaly".into(),
                outcome: "failed".into(),
                reason: Some("infer: grpc status 14 UNAVAILABLE: overloaded".into()),
                output: None,
                schedule_lag_us: 40,
                fetch_us: Some(300),
                infer_us: None,
                end_to_end_us: Some(9_000),
                shard: 1,
            }
        );
        assert_eq!(
            read_row(&path, "thermo-02", 1_700_000_001_000),
            Row {
                class: "thermostat".into(),
                model: "anomaly".into(),
                outcome: "skipped".into(),
                reason: Some("previous job of this device still running".into()),
                output: None,
                schedule_lag_us: 7,
                fetch_us: None,
                infer_us: None,
                end_to_end_us: None,
                shard: 1,
            }
        );
        let db = Connection::open(&path).unwrap();
        let mode: String = db
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // synchronous is per connection: ask the sink's own (1 = NORMAL).
        let synchronous: i64 = sink
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 1);
    }

    #[test]
    fn same_tick_written_twice_keeps_one_row_with_the_last_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let mut sink = SqliteSink::open(&path, DEFAULT_BUSY_TIMEOUT, names()).unwrap();
        let first = failed_row();
        let second = JobRecord {
            outcome: Outcome::Ok,
            outputs: vec![crate::record::Output::uint8(
                "OUTPUT0",
                Bytes::from_static(b"tensor"),
            )],
            shard: 2,
            latency: StageLatency {
                schedule_lag_us: 1,
                fetch_us: Some(2),
                infer_us: Some(3),
                end_to_end_us: Some(4),
            },
            ..failed_row()
        };
        sink.write_batch(std::slice::from_ref(&first)).unwrap();
        sink.write_batch(std::slice::from_ref(&second)).unwrap();

        assert_eq!(count(&path), 1);
        let expected = Row {
            class: "thermostat".into(),
            model: "anomaly".into(),
            outcome: "ok".into(),
            reason: None,
            output: Some(b"tensor".to_vec()),
            schedule_lag_us: 1,
            fetch_us: Some(2),
            infer_us: Some(3),
            end_to_end_us: Some(4),
            shard: 2,
        };
        assert_eq!(read_row(&path, "thermo-02", first.tick_ms), expected);

        // Within one batch too, and back to failed: every column is replaced, NULLs included.
        sink.write_batch(&[second, first]).unwrap();
        assert_eq!(count(&path), 1);
        let row = read_row(&path, "thermo-02", 1_700_000_000_000);
        assert_eq!(row.outcome, "failed");
        assert_eq!((row.output, row.infer_us), (None, None));
    }

    #[test]
    fn instances_opening_one_new_file_at_once_all_start() {
        // Cluster instances sharing a sink race to switch the new file to WAL and
        // create its tables; SQLite refuses some of those races at once.
        for round in 0..40 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("jobs.db");
            open_at_once(&path, 6, round);
        }
    }

    fn open_at_once(path: &Path, instances: usize, round: usize) {
        let barrier = std::sync::Barrier::new(instances);
        let opened: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..instances)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        SqliteSink::open(path, DEFAULT_BUSY_TIMEOUT, names())
                            .map(drop)
                            .map_err(|error| error.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            opened.iter().all(Result::is_ok),
            "round {round}: {opened:?}"
        );
        let runs: i64 = Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(runs, instances as i64);
    }

    #[test]
    fn reopening_keeps_existing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        SqliteSink::open(&path, DEFAULT_BUSY_TIMEOUT, names())
            .unwrap()
            .write_batch(&[ok_row()])
            .unwrap();
        let mut sink = SqliteSink::open(&path, DEFAULT_BUSY_TIMEOUT, names()).unwrap();
        sink.write_batch(&[skipped_row()]).unwrap();
        assert_eq!(count(&path), 2);
    }

    #[test]
    fn an_older_file_gets_run_ids_and_a_runs_row_that_ends_with_the_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        // The first release's table: no compute_node, attempts, run_id; no runs table.
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE jobs (device_id TEXT NOT NULL, tick_ms INTEGER NOT NULL,
                 class TEXT NOT NULL, model TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT,
                 output BLOB, schedule_lag_us INTEGER NOT NULL, fetch_us INTEGER,
                 infer_us INTEGER, end_to_end_us INTEGER, shard INTEGER NOT NULL,
                 PRIMARY KEY (tick_ms, device_id)) WITHOUT ROWID;",
            )
            .unwrap();
        let names = names();
        let run_id = names.run.run_id.clone();
        let mut sink = SqliteSink::open(&path, DEFAULT_BUSY_TIMEOUT, names).unwrap();
        let db = Connection::open(&path).unwrap();
        let ended: Option<i64> = db
            .query_row(
                "SELECT ended_at_ms FROM runs WHERE run_id = ?1",
                [&run_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(ended, None, "a run still going has no end");
        sink.write_batch(&[ok_row(), failed_row(), skipped_row()])
            .unwrap();
        let ids: Vec<String> = db
            .prepare("SELECT run_id FROM jobs")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, vec![run_id.clone(); 3]);
        let counts = RunCounts {
            jobs: 3,
            ok: 1,
            failed: 1,
            skipped: 1,
        };
        sink.end_run(&counts).unwrap();
        let (ended, jobs, ok, failed, skipped): (Option<i64>, i64, i64, i64, i64) = db
            .query_row(
                "SELECT ended_at_ms, jobs, ok, failed, skipped FROM runs WHERE run_id = ?1",
                [&run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert!(ended.is_some_and(|ms| ms >= 1_600_000_000_000), "{ended:?}");
        assert_eq!((jobs, ok, failed, skipped), (3, 1, 1, 1));
    }

    #[test]
    fn unwritable_locations_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing_dir = dir.path().join("no-such-dir").join("jobs.db");
        let a_directory = dir.path().to_path_buf();
        for path in [missing_dir, a_directory] {
            let target = super::super::SinkTarget::sqlite(&path);
            let error = match super::super::open(&target, names(), false).map(|opened| opened.sink)
            {
                Ok(_) => panic!("opening {} should fail", path.display()),
                Err(error) => error,
            };
            let text = error.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert_eq!(error.location, path.display().to_string());
        }
    }

    #[test]
    fn a_lock_held_elsewhere_is_transient_and_a_later_write_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let busy_timeout = std::time::Duration::from_millis(50);
        let mut sink = SqliteSink::open(&path, busy_timeout, names()).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let error = sink.write_batch(&[ok_row()]).unwrap_err();
        assert!(error.transient, "{error}");
        assert!(error.to_string().contains("locked"), "{error}");
        other.execute_batch("ROLLBACK").unwrap();
        sink.write_batch(&[ok_row()]).unwrap();
        assert_eq!(count(&path), 1);
    }

    #[test]
    fn out_of_range_indexes_fail_the_batch_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let mut sink = SqliteSink::open(&path, DEFAULT_BUSY_TIMEOUT, names()).unwrap();
        let bad_class = JobRecord {
            class: 5,
            ..ok_row()
        };
        let error = sink.write_batch(&[skipped_row(), bad_class]).unwrap_err();
        assert!(error.to_string().contains("class index 5"), "{error}");
        assert_eq!(count(&path), 0);
        // The sink stays usable after a failed batch.
        sink.write_batch(&[ok_row()]).unwrap();
        assert_eq!(count(&path), 1);
    }
}
