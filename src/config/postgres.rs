//! `[sink] kind = "postgres"`: the PostgreSQL sink's keys, kept apart from the
//! SQLite and journal keys (in [`super::sink`]) so each part can change without
//! touching the others. What they mean is [`crate::sink::postgres`]'s.

use std::path::Path;

use serde::Deserialize;

/// The environment variable read for the database URL when `[sink] url` is
/// absent: keeps a password out of the config file.
pub const PG_URL_ENV: &str = "PERCORE_PG_URL";

/// `[sink]` for `kind = "postgres"`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PostgresSinkFile {
    /// `postgresql://user[:password]@host:port/db`; absent: [`PG_URL_ENV`].
    url: Option<String>,
    /// The jobs table; default `jobs`.
    table: Option<String>,
    /// Most rows per transaction; default the writer's 8192.
    batch_rows: Option<usize>,
    /// Wait for more rows before writing a smaller batch; default 0.
    linger_ms: Option<u64>,
    /// libpq's `disable`, `prefer` (default), `require`, `verify-ca` or
    /// `verify-full`: how much TLS the connection insists on.
    sslmode: Option<String>,
    /// The CA certificates (PEM) the server's certificate must chain to,
    /// relative to the config file; needed by `verify-ca` and `verify-full`.
    sslrootcert: Option<String>,
    /// Time to open a connection; default 5000.
    connect_timeout_ms: Option<u64>,
    /// See [`JournalKeys`](super::sink::JournalKeys): on unless `false`.
    pub(super) journal: Option<bool>,
    /// See [`JournalKeys`](super::sink::JournalKeys): default
    /// [`DEFAULT_JOURNAL_DIR`](super::DEFAULT_JOURNAL_DIR).
    pub(super) journal_dir: Option<String>,
    /// See [`JournalKeys`](super::sink::JournalKeys).
    pub(super) journal_fsync: Option<String>,
    /// See [`JournalKeys`](super::sink::JournalKeys).
    pub(super) journal_fsync_interval_ms: Option<u64>,
    /// See [`JournalKeys`](super::sink::JournalKeys).
    pub(super) journal_max_bytes: Option<u64>,
    /// See [`JournalKeys`](super::sink::JournalKeys).
    pub(super) journal_segment_bytes: Option<u64>,
}

/// Checks the PostgreSQL `[sink]` keys (reading the `sslrootcert` file, which
/// is relative to `base`, the config file's folder); `env_url` is
/// [`PG_URL_ENV`]'s value (a parameter, so tests need not touch the process
/// environment). Errors are (field, message) for
/// [`Source::error`](crate::diagnostic::Source::error).
pub(super) fn validate_postgres_sink(
    file: &PostgresSinkFile,
    base: &Path,
    env_url: Option<&str>,
) -> Result<crate::sink::postgres::PostgresOptions, (&'static str, String)> {
    use crate::sink::postgres::{self as pg, PgUrl, PostgresOptions, SslMode};
    let url = match (&file.url, env_url) {
        (Some(url), _) => PgUrl::parse(url).map_err(|why| ("sink.url", why))?,
        (None, Some(url)) => {
            PgUrl::parse(url).map_err(|why| ("sink.url", format!("{PG_URL_ENV} {why}")))?
        }
        (None, None) => {
            let why =
                format!("missing: set url = \"postgresql://user@host:port/db\" or {PG_URL_ENV}");
            return Err(("sink.url", why));
        }
    };
    let mut options = PostgresOptions::new(url);
    if let Some(table) = &file.table {
        pg::check_table_name(table).map_err(|why| ("sink.table", why))?;
        options.table = table.clone();
    }
    if let Some(rows) = file.batch_rows {
        if rows == 0 || rows > pg::MAX_BATCH_ROWS {
            let why = format!("must be from 1 to {}", pg::MAX_BATCH_ROWS);
            return Err(("sink.batch_rows", why));
        }
        options.batch_rows = rows;
    }
    if let Some(ms) = file.linger_ms {
        if ms > 10_000 {
            return Err(("sink.linger_ms", "must be at most 10000".into()));
        }
        options.linger = std::time::Duration::from_millis(ms);
    }
    if let Some(text) = &file.sslmode {
        options.ssl_mode = SslMode::parse(text).ok_or_else(|| {
            let names: Vec<String> = SslMode::ALL
                .iter()
                .map(|m| format!("{:?}", m.name()))
                .collect();
            (
                "sink.sslmode",
                format!("{text:?} is not one of {}", names.join(", ")),
            )
        })?;
    }
    let mode = options.ssl_mode;
    match &file.sslrootcert {
        Some(_) if !mode.reads_root_cert() => {
            let why = format!(
                "is not read with sslmode = \"{mode}\" (which checks no certificate): \
                 set sslmode = \"verify-full\" (or \"verify-ca\", \"require\") to use it"
            );
            return Err(("sink.sslrootcert", why));
        }
        Some(path) => {
            let path = base.join(path);
            pg::tls::load_root_certs(&path).map_err(|why| ("sink.sslrootcert", why))?;
            options.ssl_root_cert = Some(path);
        }
        None if mode.needs_root_cert() => {
            let why = format!(
                "missing: sslmode = \"{mode}\" checks the server's certificate against \
                 the CAs in this PEM file (the system's CAs are not read)"
            );
            return Err(("sink.sslrootcert", why));
        }
        None => {}
    }
    if let Some(ms) = file.connect_timeout_ms {
        if ms == 0 {
            return Err(("sink.connect_timeout_ms", "must be greater than 0".into()));
        }
        options.connect_timeout = std::time::Duration::from_millis(ms);
    }
    Ok(options)
}
