//! The tables as percore's SQLite sink creates them (`src/sink/sqlite.rs`), for
//! the tonic client's writer; `client.py` holds a copy of the text for Python's.
//! Per ok job percore writes its `jobs` row and one `job_outputs` row per output
//! tensor, in one transaction per batch: the other clients write the same.

use rusqlite::Connection;

/// percore's schemas and upsert, from the sink itself so they cannot drift.
pub use percore::sink::sqlite::{OUTPUTS_SCHEMA, SCHEMA, UPSERT};

/// The sink's upsert into `job_outputs` (private there: a copy).
pub const OUTPUT_UPSERT: &str =
    "INSERT INTO job_outputs (device_id, tick_ms, name, datatype, shape, data)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT(tick_ms, device_id, name) DO UPDATE SET
  datatype = excluded.datatype, shape = excluded.shape, data = excluded.data";

/// percore's pragmas: WAL, synchronous=NORMAL, a 2 MiB page cache and a WAL
/// checkpoint every 10,000 pages.
pub const PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
  PRAGMA cache_size=-2048; PRAGMA wal_autocheckpoint=10000;";

/// Opens (creating) the database at `path` the way percore's sink does.
pub fn open(path: &str) -> Result<Connection, String> {
    let fail = |what: &str, error: rusqlite::Error| format!("sqlite {path}: {what}: {error}");
    let conn = Connection::open(path).map_err(|error| fail("open", error))?;
    conn.execute_batch(PRAGMAS)
        .map_err(|error| fail("setting pragmas", error))?;
    conn.execute_batch(SCHEMA)
        .map_err(|error| fail("creating table jobs", error))?;
    conn.execute_batch(OUTPUTS_SCHEMA)
        .map_err(|error| fail("creating table job_outputs", error))?;
    Ok(conn)
}
