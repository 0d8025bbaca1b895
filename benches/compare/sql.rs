//! The `jobs` table as percore's SQLite sink creates it (`src/sink/sqlite.rs`), for
//! the tonic client's writer; `client.py` holds a copy of the text for Python's.

use rusqlite::Connection;

/// percore's schema and upsert, from the sink itself so the two cannot drift.
pub use percore::sink::sqlite::{SCHEMA, UPSERT};

/// percore's pragmas: WAL, synchronous=NORMAL, a 64 MiB page cache and a WAL
/// checkpoint every 10,000 pages.
pub const PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
  PRAGMA cache_size=-65536; PRAGMA wal_autocheckpoint=10000;";

/// Opens (creating) the database at `path` the way percore's sink does.
pub fn open(path: &str) -> Result<Connection, String> {
    let fail = |what: &str, error: rusqlite::Error| format!("sqlite {path}: {what}: {error}");
    let conn = Connection::open(path).map_err(|error| fail("open", error))?;
    conn.execute_batch(PRAGMAS)
        .map_err(|error| fail("setting pragmas", error))?;
    conn.execute_batch(SCHEMA)
        .map_err(|error| fail("creating table jobs", error))?;
    Ok(conn)
}
