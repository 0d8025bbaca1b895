//! PostgreSQL implementation of [`Sink`]: binary `COPY` into a staging table,
//! then one `INSERT … ON CONFLICT DO NOTHING`, one transaction per batch.
//!
//! Opened by [`super::open`] for [`SinkTarget::Postgres`](super::SinkTarget::Postgres);
//! from then on only the writer thread touches it (the synchronous `postgres`
//! client runs a current-thread tokio runtime of its own inside; no shard ever
//! calls it). Each write is
//!
//! ```text
//! BEGIN;
//! COPY percore_staging (…) FROM STDIN (FORMAT binary);   -- every row of the batch
//! INSERT INTO jobs (…) SELECT … FROM percore_staging
//!   ON CONFLICT (device_id, tick_ms) DO NOTHING;
//! COMMIT;                                              -- ON COMMIT DELETE ROWS empties staging
//! ```
//!
//! so a batch written twice (a retry after a lost commit acknowledgement, a
//! journal replayed after a crash) never duplicates a row: **the first write of
//! a (device, tick) wins**, where SQLite's upsert keeps the last. The staging
//! table is `TEMPORARY` (one per connection, created when it connects), so
//! writers into one database never see each other's staging rows.
//!
//! **Types.** `text` for names, outcome and reason; `bigint` for `tick_ms` (the
//! planned tick, Unix epoch milliseconds, UTC — kept as the integer the rest of
//! percore uses rather than `timestamptz`, so keys compare exactly with SQLite's
//! and the journal's) and every `*_us` latency; `integer` for `shard` and
//! `attempts`; `bytea` for `output`. The primary key is `(tick_ms, device_id)`:
//! time first, so inserts append at the index's right edge, as in SQLite.
//!
//! **Schema.** Created at open (`CREATE TABLE IF NOT EXISTS`, under an advisory
//! lock so two starting writers do not race), its version recorded in
//! `percore_schema` ([`SCHEMA_VERSION`]). An existing table is read back from
//! `information_schema.columns`; a missing column, a column of another type, or
//! an extra `NOT NULL` column without a default is refused at start with a
//! message naming each difference, as is a recorded version this build does
//! not write. The `runs` table gets this run's row at open (`ended_at_ms` NULL)
//! and its end from [`Sink::end_run`]. Opened for a writer with a journal
//! ([`PostgresSink::open_or_wait`]), a server that cannot be reached yet does not
//! fail the start: the first connection that succeeds does all of this first.
//!
//! **Errors.** A lost connection, `08…` (connection exception), `57P01`–`57P03`
//! (the server shutting down or starting), `40001`/`40P01` (serialization
//! failure, deadlock), `53300` (too many connections) and `55P03` (lock not
//! available) are transient: the writer writes the batch again. Everything else
//! — `28P01`/`28000` (wrong credentials), `3D000` (no such database), `42…`
//! (schema, privileges) — is permanent, with the server's message and what to do.
//! A connection found closed is dropped and opened again on a later write, with
//! a jittered, doubling wait between tries ([`FIRST_RECONNECT_WAIT`] to
//! [`MAX_RECONNECT_WAIT`]); before that wait is over a write fails at once as
//! transient, so the writer (or the journal) is never blocked on the database.
//!
//! **TLS.** `[sink] sslmode` has libpq's five modes and `sslrootcert` names the
//! CA file (PEM) to trust; the connector is rustls with the `ring` provider
//! (nothing to build against OpenSSL), made once at open from that file and
//! reused on every reconnect. `prefer` (the default) encrypts when the server
//! offers TLS and checks no certificate; `require` insists on TLS and checks
//! the chain only when `sslrootcert` is given; `verify-ca` checks the chain;
//! `verify-full` the chain and the URL's host name or IP. Handshake signatures
//! are checked in every mode. A TLS failure at connect (no TLS on the server
//! under `require`, a certificate not signed by `sslrootcert`, a host name it
//! does not list) is permanent, told in words by [`tls::failure`]. Details and
//! the table of modes: [`tls`]. Every connection says `application_name =
//! percore`, so an operator finds it in `pg_stat_activity` and `pg_stat_ssl`.

pub mod tls;

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use tls::SslMode;

use super::row::{Resolver, Row, COLUMNS};
use super::run::{now_ms, RunCounts};
use super::{Grouping, RowNames, Sink, SinkError};
use crate::record::JobRecord;

/// The version of the table layout this build writes, recorded per table in
/// `percore_schema`. Raise it with any change of [`COLUMN_TYPES`] (and teach
/// [`PostgresSink::open`] to migrate the older one).
pub const SCHEMA_VERSION: i32 = 1;

/// The jobs table's name when `[sink] table` is not set.
pub const DEFAULT_TABLE: &str = "jobs";

/// How long opening a connection may take (`[sink] connect_timeout_ms`): long
/// enough for a server across a data centre, short enough that a start against
/// a dead address fails within seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most rows one `[sink] batch_rows` may ask for: the writer holds a batch in
/// memory twice (records and rows), and one failed batch is written again whole.
pub const MAX_BATCH_ROWS: usize = 100_000;

/// First wait before opening a lost connection again; doubled per failed try.
pub const FIRST_RECONNECT_WAIT: Duration = Duration::from_millis(100);

/// Longest wait between two tries to connect.
pub const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// How long unacknowledged data may sit on a connection before the kernel
/// gives up on it: a server that vanished without closing the connection
/// (a cut cable, a frozen host) becomes a transient error, not a writer hung
/// for the TCP retransmission timeout (~15 minutes).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The per-connection staging table every batch is copied into first.
const STAGING_TABLE: &str = "percore_staging";

/// The per-connection staging table every batch's outputs are copied into first.
const OUTPUTS_STAGING_TABLE: &str = "percore_outputs_staging";

/// Tables of percore's own beside the jobs table, which `[sink] table` may not name.
const RESERVED_TABLES: [&str; 5] = [
    "runs",
    "percore_schema",
    STAGING_TABLE,
    OUTPUTS_STAGING_TABLE,
    "job_outputs",
];

/// The outputs table of jobs table `table`: `job_outputs` beside the default
/// `jobs`, `<table>_outputs` beside any other, so two jobs tables in one
/// database keep their outputs apart.
pub fn outputs_table(table: &str) -> String {
    if table == DEFAULT_TABLE {
        "job_outputs".to_string()
    } else {
        format!("{table}_outputs")
    }
}

/// Columns of the outputs table and their types, in COPY order.
const OUTPUT_COLUMNS: [(&str, ColumnType); 6] = [
    ("device_id", ColumnType::Text),
    ("tick_ms", ColumnType::BigInt),
    ("name", ColumnType::Text),
    ("datatype", ColumnType::Text),
    ("shape", ColumnType::Text),
    ("data", ColumnType::Bytea),
];

/// Key of the advisory lock taken while the schema is created or checked, so two
/// writers starting at once do not race in `CREATE TABLE IF NOT EXISTS` (which
/// is not atomic in PostgreSQL). Any constant: "percore" in ASCII.
const SCHEMA_LOCK_KEY: i64 = 0x0070_6572_636f_7265;

/// A column's PostgreSQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnType {
    Text,
    BigInt,
    Integer,
    Bytea,
}

impl ColumnType {
    /// The type as SQL spells it, and as `information_schema.columns.data_type` reports it.
    fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::BigInt => "bigint",
            ColumnType::Integer => "integer",
            ColumnType::Bytea => "bytea",
        }
    }

    /// The type binary `COPY` encodes values as.
    fn wire(self) -> Type {
        match self {
            ColumnType::Text => Type::TEXT,
            ColumnType::BigInt => Type::INT8,
            ColumnType::Integer => Type::INT4,
            ColumnType::Bytea => Type::BYTEA,
        }
    }
}

/// The type and nullability of each of [`COLUMNS`], in the same order (the
/// column names themselves live in `row.rs` only).
const COLUMN_TYPES: [(ColumnType, bool); COLUMNS.len()] = [
    (ColumnType::Text, true),    // device_id
    (ColumnType::BigInt, true),  // tick_ms
    (ColumnType::Text, true),    // class
    (ColumnType::Text, true),    // model
    (ColumnType::Text, true),    // outcome
    (ColumnType::Text, false),   // reason
    (ColumnType::Bytea, false),  // output
    (ColumnType::BigInt, true),  // schedule_lag_us
    (ColumnType::BigInt, false), // fetch_us
    (ColumnType::BigInt, false), // infer_us
    (ColumnType::BigInt, false), // end_to_end_us
    (ColumnType::Integer, true), // shard
    (ColumnType::Text, false),   // compute_node
    (ColumnType::Integer, true), // attempts
    (ColumnType::Text, false),   // run_id
];

/// Everything [`PostgresSink::open`] needs: the config's `[sink]` for `kind = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Where the database is and who logs in (password kept out of every message).
    pub url: PgUrl,
    /// The jobs table (`[sink] table`, default [`DEFAULT_TABLE`]): a lower-case
    /// identifier, so two runs can write apart into one database.
    pub table: String,
    /// Most rows in one transaction (`batch_rows`); becomes the writer's
    /// [`Grouping::max_rows`].
    pub batch_rows: usize,
    /// How long the writer waits for more rows before writing a batch smaller
    /// than `batch_rows` (`linger_ms`, default 0: write whatever is queued);
    /// becomes [`Grouping::linger`].
    pub linger: Duration,
    /// `sslmode`: whether the connection must be encrypted and what of the
    /// server's certificate is checked (see [`tls`]).
    pub ssl_mode: SslMode,
    /// `sslrootcert`: the PEM file of the CAs the server's certificate must
    /// chain to (already resolved against the config file's folder); read by
    /// `require`, `verify-ca` and `verify-full`, needed by the last two.
    pub ssl_root_cert: Option<PathBuf>,
    /// How long opening a connection may take (`connect_timeout_ms`).
    pub connect_timeout: Duration,
}

impl PostgresOptions {
    /// Options for `url` with every default: table `jobs`, the writer's usual
    /// batches, no linger, `prefer` without `sslrootcert`, a 5 s connect timeout.
    pub fn new(url: PgUrl) -> PostgresOptions {
        PostgresOptions {
            url,
            table: DEFAULT_TABLE.to_string(),
            batch_rows: super::MAX_GROUP_ROWS,
            linger: Duration::ZERO,
            ssl_mode: SslMode::default(),
            ssl_root_cert: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// A `postgresql://user[:password]@host[:port]/dbname` URL, parsed. Its `Debug`
/// and [`PgUrl::location`] never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The role to log in as (percent-decoded).
    pub user: String,
    /// Its password, if the URL has one (percent-decoded); private so it cannot
    /// be printed by accident.
    password: Option<String>,
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port, 5432 unless the URL names one.
    pub port: u16,
    /// The database (percent-decoded).
    pub dbname: String,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = self.password.as_ref().map(|_| "<hidden>");
        f.debug_struct("PgUrl")
            .field("user", &self.user)
            .field("password", &password)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("dbname", &self.dbname)
            .finish()
    }
}

impl PgUrl {
    /// Parses a URL. Errors say what is wrong without repeating the text, which
    /// may hold a password.
    pub fn parse(text: &str) -> Result<PgUrl, String> {
        let rest = text
            .trim()
            .strip_prefix("postgresql://")
            .or_else(|| text.trim().strip_prefix("postgres://"))
            .ok_or("must start with postgresql:// (postgresql://user[:password]@host:port/db)")?;
        if rest.contains('?') || rest.contains('#') {
            return Err("query parameters (?…) are not read: set sslmode and \
                        connect_timeout_ms as [sink] keys"
                .into());
        }
        let at = rest
            .rfind('@')
            .ok_or("has no user: postgresql://user[:password]@host:port/db")?;
        let (userinfo, hostpath) = (&rest[..at], &rest[at + 1..]);
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(decode(password, "the password")?)),
            None => (userinfo, None),
        };
        let user = decode(user, "the user")?;
        if user.is_empty() {
            return Err("has an empty user".into());
        }
        let (hostport, dbname) = hostpath
            .split_once('/')
            .ok_or("has no database: postgresql://user@host:port/DB")?;
        let dbname = decode(dbname, "the database name")?;
        if dbname.is_empty() {
            return Err("has no database: postgresql://user@host:port/DB".into());
        }
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("has an IPv6 host without its closing ]")?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(['%', '/', ',']) {
            return Err(
                "needs one host name or IP address (Unix sockets and host lists are not supported)"
                    .into(),
            );
        }
        let port = match port {
            None => 5432,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&port| port > 0)
                .ok_or_else(|| format!("port {port:?} is not a number from 1 to 65535"))?,
        };
        Ok(PgUrl {
            user,
            password,
            host: host.to_string(),
            port,
            dbname,
        })
    }

    /// `postgresql://user@host:port/db`: where rows go, for messages and reports.
    pub fn location(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgresql://{}@{host}:{}/{}",
            self.user, self.port, self.dbname
        )
    }

    /// `host:port`, as an unreachable-server message names it.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the URL carries a password.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The same server and role, another database (tests and benchmarks make
    /// one database each).
    pub fn with_dbname(&self, dbname: &str) -> PgUrl {
        PgUrl {
            dbname: dbname.to_string(),
            ..self.clone()
        }
    }

    /// The same server, another role and password.
    pub fn with_login(&self, user: &str, password: Option<&str>) -> PgUrl {
        PgUrl {
            user: user.to_string(),
            password: password.map(str::to_string),
            ..self.clone()
        }
    }

    /// The client configuration for this URL (no timeouts or TLS set).
    pub fn client_config(&self) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .user(&self.user)
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .application_name("percore");
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }
}

/// Percent-decodes one part of a URL (`what` names it in an error).
fn decode(text: &str, what: &str) -> Result<String, String> {
    let bad = || format!("{what} has a bad %-escape (each % must be followed by two hex digits)");
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            decoded.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| format!("{what} is not UTF-8 once %-decoded"))
}

/// Checks a `[sink] table` name: a lower-case SQL identifier (so it needs no
/// quoting to mean the same table in `psql`), not one of percore's own tables.
pub fn check_table_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !starts_well
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || name.len() > 63
    {
        return Err(format!(
            "{name:?} is not a lower-case identifier (a-z, 0-9, _; not starting \
             with a digit; at most 63 characters)"
        ));
    }
    if RESERVED_TABLES.contains(&name) {
        return Err(format!("{name:?} is one of percore's own tables"));
    }
    Ok(())
}

/// The SQL statements of one jobs table, built once at open.
struct Statements {
    /// `COPY percore_staging (…) FROM STDIN (FORMAT binary)`.
    copy: String,
    /// `INSERT INTO jobs (…) SELECT … FROM percore_staging ON CONFLICT … DO NOTHING`.
    insert: String,
    /// `CREATE TEMPORARY TABLE IF NOT EXISTS percore_staging (…) ON COMMIT DELETE ROWS`.
    create_staging: String,
    /// `CREATE TABLE IF NOT EXISTS jobs (…)`.
    create_table: String,
    /// `COPY percore_outputs_staging (…) FROM STDIN (FORMAT binary)`.
    copy_outputs: String,
    /// `INSERT INTO job_outputs … ON CONFLICT DO NOTHING`, after the jobs insert.
    insert_outputs: String,
    /// The outputs' staging table, created with the jobs' one.
    create_outputs_staging: String,
    /// `CREATE TABLE IF NOT EXISTS job_outputs (…)`: every output of every ok
    /// job, keyed (tick_ms, device_id, name).
    create_outputs_table: String,
}

impl Statements {
    fn new(table: &str) -> Statements {
        let columns = COLUMNS.join(", ");
        let outputs = outputs_table(table);
        let output_columns = OUTPUT_COLUMNS.map(|(name, _)| name).join(", ");
        let output_typed = OUTPUT_COLUMNS
            .map(|(name, kind)| format!("{name} {}", kind.sql()))
            .join(", ");
        let output_typed_not_null = OUTPUT_COLUMNS
            .map(|(name, kind)| format!("{name} {} NOT NULL", kind.sql()))
            .join(", ");
        let typed = |not_null: bool| {
            COLUMNS
                .iter()
                .zip(COLUMN_TYPES)
                .map(|(name, (kind, required))| {
                    let null = if required && not_null {
                        " NOT NULL"
                    } else {
                        ""
                    };
                    format!("{name} {}{null}", kind.sql())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        Statements {
            copy: format!("COPY {STAGING_TABLE} ({columns}) FROM STDIN (FORMAT binary)"),
            insert: format!(
                "INSERT INTO \"{table}\" ({columns}) SELECT {columns} FROM {STAGING_TABLE} \
                 ON CONFLICT (device_id, tick_ms) DO NOTHING"
            ),
            create_staging: format!(
                "CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} ({}) ON COMMIT DELETE ROWS",
                typed(false)
            ),
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS \"{table}\" ({}, \
                 CHECK (outcome IN ('ok', 'failed', 'skipped')), \
                 PRIMARY KEY (tick_ms, device_id))",
                typed(true)
            ),
            copy_outputs: format!(
                "COPY {OUTPUTS_STAGING_TABLE} ({output_columns}) FROM STDIN (FORMAT binary)"
            ),
            insert_outputs: format!(
                "INSERT INTO \"{outputs}\" ({output_columns}) SELECT {output_columns} \
                 FROM {OUTPUTS_STAGING_TABLE} ON CONFLICT (tick_ms, device_id, name) DO NOTHING"
            ),
            create_outputs_staging: format!(
                "CREATE TEMPORARY TABLE IF NOT EXISTS {OUTPUTS_STAGING_TABLE} ({output_typed}) \
                 ON COMMIT DELETE ROWS"
            ),
            create_outputs_table: format!(
                "CREATE TABLE IF NOT EXISTS \"{outputs}\" ({output_typed_not_null}, \
                 PRIMARY KEY (tick_ms, device_id, name))"
            ),
        }
    }
}

/// `percore_schema`: the layout version of each jobs table percore writes.
const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS percore_schema (
  table_name text PRIMARY KEY, version integer NOT NULL, created_at_ms bigint NOT NULL)";

/// `runs`: one row per run, `ended_at_ms` and the counts NULL until it ends.
/// Times are Unix ms.
pub const RUNS_TABLE: &str = "CREATE TABLE IF NOT EXISTS runs (
  run_id text PRIMARY KEY, host text NOT NULL, started_at_ms bigint NOT NULL,
  ended_at_ms bigint, config_digest text NOT NULL,
  jobs bigint, ok bigint, failed bigint, skipped bigint)";

/// When the next try to connect may be made, after a lost connection.
struct Reconnect {
    /// Before this instant a write fails at once instead of connecting.
    next_try: Instant,
    /// The wait after the next failed try (before jitter).
    wait: Duration,
    /// The last connect error, repeated while waiting.
    last_error: String,
    /// xorshift64 state for the jitter, seeded from the standard library's
    /// random hash keys, so many writers restarting at once spread out.
    jitter: u64,
}

impl Reconnect {
    fn new() -> Reconnect {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Reconnect {
            next_try: Instant::now(),
            wait: FIRST_RECONNECT_WAIT,
            last_error: String::new(),
            jitter: seed | 1,
        }
    }

    /// A try to connect failed: the next one waits between half and all of the
    /// current wait, which then doubles.
    fn failed(&mut self, error: &SinkError) {
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let half = self.wait / 2;
        let spread = half.as_micros() as u64;
        let extra = Duration::from_micros(self.jitter % spread.max(1));
        self.next_try = Instant::now() + half + extra;
        self.wait = (self.wait * 2).min(MAX_RECONNECT_WAIT);
        self.last_error = error.cause.to_string();
    }

    /// Connected: the next loss starts from the first wait, at once.
    fn connected(&mut self) {
        self.wait = FIRST_RECONNECT_WAIT;
        self.next_try = Instant::now();
        self.last_error.clear();
    }
}

/// A PostgreSQL database holding the jobs table and `runs`.
pub struct PostgresSink {
    /// The open connection; `None` after it was lost, until a write reconnects.
    client: Option<Client>,
    /// Whether the schema is still to be created or checked and the run still to
    /// be recorded in `runs`: set when the sink was opened while the server was
    /// unreachable ([`PostgresSink::open_or_wait`]); the first connection does it.
    set_up_pending: bool,
    /// What to connect to and how, kept to reconnect.
    options: PostgresOptions,
    /// The TLS connector for [`PostgresOptions::ssl_mode`], with the
    /// `sslrootcert` CAs read at open, so a reconnect does not read the file again.
    tls: MakeRustlsConnect,
    /// `postgresql://user@host:port/db` (no password), for every message.
    location: String,
    /// The statements for [`PostgresOptions::table`].
    statements: Statements,
    /// Turns each batch of records into the table's rows.
    resolver: Resolver,
    /// This run's id, the key of its `runs` row.
    run_id: String,
    /// Backoff between tries to connect again.
    reconnect: Reconnect,
}

impl PostgresSink {
    /// Connects, creates or checks the schema, checks that the jobs table takes
    /// inserts, and records the run in `runs`. An unreachable server fails as
    /// transient (naming host:port), wrong credentials, a missing database or
    /// an incompatible table as permanent; either way the start is refused.
    pub fn open(
        options: &PostgresOptions,
        names: Arc<RowNames>,
    ) -> Result<PostgresSink, SinkError> {
        let location = options.url.location();
        let at = location.as_str();
        check_table_name(&options.table)
            .map_err(|cause| SinkError::new("checking [sink] table", at, cause))?;
        let statements = Statements::new(&options.table);
        let tls = tls_connector(options, at)?;
        let mut client = connect(options, &tls, &statements, at)?;
        set_up(&mut client, &options.table, &statements, &names, at)?;
        Ok(PostgresSink {
            client: Some(client),
            set_up_pending: false,
            options: options.clone(),
            tls,
            location,
            statements,
            run_id: names.run.run_id.clone(),
            resolver: Resolver::new(names),
            reconnect: Reconnect::new(),
        })
    }

    /// As [`PostgresSink::open`], but a server that cannot be reached (a
    /// transient failure) does not fail the start: the sink is returned
    /// unconnected with that failure, for a writer with a journal to spill to.
    /// Its writes fail as transient until a connection succeeds, which then
    /// creates or checks the schema and records the run first; a server that
    /// answers but refuses (credentials, database, schema) still fails the start.
    pub fn open_or_wait(
        options: &PostgresOptions,
        names: Arc<RowNames>,
    ) -> Result<(PostgresSink, Option<SinkError>), SinkError> {
        match PostgresSink::open(options, names.clone()) {
            Ok(sink) => Ok((sink, None)),
            Err(error) if error.transient => {
                let mut reconnect = Reconnect::new();
                reconnect.failed(&error);
                let sink = PostgresSink {
                    client: None,
                    set_up_pending: true,
                    options: options.clone(),
                    // open got as far as connecting, so this was built once already.
                    tls: tls_connector(options, &options.url.location())?,
                    location: options.url.location(),
                    statements: Statements::new(&options.table),
                    run_id: names.run.run_id.clone(),
                    resolver: Resolver::new(names),
                    reconnect,
                };
                Ok((sink, Some(error)))
            }
            Err(error) => Err(error),
        }
    }

    /// Makes sure there is an open connection, connecting again if the last one
    /// was lost and the backoff allows; fails as transient while it does not.
    fn ensure_connected(&mut self) -> Result<(), SinkError> {
        if self
            .client
            .as_ref()
            .is_some_and(|client| !client.is_closed())
        {
            return Ok(());
        }
        self.client = None;
        let now = Instant::now();
        if now < self.reconnect.next_try {
            let cause = format!(
                "not connected; next try in {} ms (last error: {})",
                (self.reconnect.next_try - now).as_millis(),
                self.reconnect.last_error
            );
            return Err(
                SinkError::new("reconnecting", self.location.clone(), cause).transient(true)
            );
        }
        let connected = connect(&self.options, &self.tls, &self.statements, &self.location)
            .and_then(|mut client| {
                if self.set_up_pending {
                    let names = self.resolver.names();
                    let at = self.location.as_str();
                    set_up(
                        &mut client,
                        &self.options.table,
                        &self.statements,
                        names,
                        at,
                    )?;
                    self.set_up_pending = false;
                }
                Ok(client)
            });
        match connected {
            Ok(client) => {
                self.client = Some(client);
                self.reconnect.connected();
                Ok(())
            }
            Err(error) => {
                self.reconnect.failed(&error);
                Err(error)
            }
        }
    }
}

impl Sink for PostgresSink {
    fn rename(&mut self, names: Arc<RowNames>) {
        self.resolver.rename(names);
    }

    fn write_batch(&mut self, records: &[JobRecord]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        self.ensure_connected()?;
        let rows = self
            .resolver
            .resolve(records)
            .map_err(|error| SinkError::new("resolving names", self.location.clone(), error))?;
        // `rows` borrows the resolver; the write needs only the connection.
        write_on(&mut self.client, &self.statements, &self.location, &rows)
    }

    fn write_rows(&mut self, rows: &[Row<'_>]) -> Result<(), SinkError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.ensure_connected()?;
        write_on(&mut self.client, &self.statements, &self.location, rows)
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn end_run(&mut self, counts: &RunCounts) -> Result<(), SinkError> {
        // The run is over: try to connect now rather than after a backoff.
        self.reconnect.next_try = Instant::now();
        self.ensure_connected()?;
        let Some(client) = self.client.as_mut() else {
            let cause = "not connected";
            return Err(
                SinkError::new("ending the run", self.location.clone(), cause).transient(true),
            );
        };
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let ended = now_ms();
        let (jobs, ok, failed_jobs, skipped) = (
            count(counts.jobs),
            count(counts.ok),
            count(counts.failed),
            count(counts.skipped),
        );
        let result = client.execute(
            "UPDATE runs SET ended_at_ms = $2, jobs = $3, ok = $4, failed = $5, skipped = $6 \
             WHERE run_id = $1",
            &[&self.run_id, &ended, &jobs, &ok, &failed_jobs, &skipped],
        );
        if result
            .as_ref()
            .is_err_and(|error| connection_lost(client, error))
        {
            self.client = None;
        }
        result
            .map(drop)
            .map_err(failed("recording the run's end in runs", &self.location))
    }

    fn grouping(&self) -> Grouping {
        Grouping {
            max_rows: self.options.batch_rows,
            linger: self.options.linger,
        }
    }
}

/// Writes `rows` on the open connection `client`; a failure that lost the
/// connection drops it (`None`), so the next write connects again.
fn write_on(
    client: &mut Option<Client>,
    statements: &Statements,
    at: &str,
    rows: &[Row<'_>],
) -> Result<(), SinkError> {
    let Some(open) = client.as_mut() else {
        return Err(SinkError::new("writing", at, "not connected").transient(true));
    };
    match copy_rows(open, statements, rows) {
        Ok(_) => Ok(()),
        Err(error) => {
            if connection_lost(open, &error) {
                *client = None;
            }
            Err(failed(format!("writing {} rows", rows.len()), at)(error))
        }
    }
}

/// Creates or checks the schema on a new connection, checks that the jobs table
/// takes inserts, and records the run in `runs` (once: a setup repeated after a
/// lost connection keeps the first row).
fn set_up(
    client: &mut Client,
    table: &str,
    statements: &Statements,
    names: &RowNames,
    at: &str,
) -> Result<(), SinkError> {
    prepare_schema(client, table, statements, at)?;
    // An empty insert is planned like a real one: a table without a key on
    // (device_id, tick_ms) for ON CONFLICT, or without INSERT privilege,
    // fails here and not on the first batch.
    client
        .execute(statements.insert.as_str(), &[])
        .and_then(|_| client.execute(statements.insert_outputs.as_str(), &[]))
        .map_err(failed("checking that the jobs table takes inserts", at))?;
    let run = &names.run;
    client
        .execute(
            "INSERT INTO runs (run_id, host, started_at_ms, config_digest) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO NOTHING",
            &[
                &run.run_id,
                &run.host,
                &run.started_at_ms,
                &run.config_digest,
            ],
        )
        .map_err(failed("inserting the run into runs", at))?;
    Ok(())
}

/// The TLS connector for `options` (reads `sslrootcert`); a file that cannot
/// be used is a permanent failure naming it.
fn tls_connector(options: &PostgresOptions, at: &str) -> Result<MakeRustlsConnect, SinkError> {
    tls::connector(options.ssl_mode, options.ssl_root_cert.as_deref())
        .map_err(|cause| SinkError::new("setting up TLS ([sink] sslmode, sslrootcert)", at, cause))
}

/// Opens a connection (TLS through `tls` as `sslmode` says) and its staging table.
fn connect(
    options: &PostgresOptions,
    tls: &MakeRustlsConnect,
    statements: &Statements,
    at: &str,
) -> Result<Client, SinkError> {
    let mut config = options.url.client_config();
    config
        .connect_timeout(options.connect_timeout)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .keepalives(true)
        .ssl_mode(options.ssl_mode.driver());
    let mut client = config.connect(tls.clone()).map_err(|error| {
        let root_cert = options.ssl_root_cert.as_deref();
        if let Some(cause) = tls::failure(&error, options.ssl_mode, root_cert, &options.url.host) {
            return SinkError::new("connecting with TLS", at, cause);
        }
        let transient = is_transient(&error);
        let mut cause = describe(&error);
        if transient {
            cause = format!("cannot reach {}: {cause}", options.url.host_port());
        }
        SinkError::new("connecting", at, cause).transient(transient)
    })?;
    client
        .batch_execute(&format!(
            "{}; {}",
            statements.create_staging, statements.create_outputs_staging
        ))
        .map_err(failed("creating the staging table", at))?;
    Ok(client)
}

/// Creates `percore_schema`, `runs` and the jobs table if missing, or checks
/// the jobs table that exists, and records or checks its schema version; in one
/// transaction under [`SCHEMA_LOCK_KEY`].
fn prepare_schema(
    client: &mut Client,
    table: &str,
    statements: &Statements,
    at: &str,
) -> Result<(), SinkError> {
    let operation = "creating the schema";
    let mut tx = client.transaction().map_err(failed(operation, at))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .map_err(failed(operation, at))?;
    tx.batch_execute(SCHEMA_TABLE)
        .map_err(failed("creating table percore_schema", at))?;
    tx.batch_execute(RUNS_TABLE)
        .map_err(failed("creating table runs", at))?;
    let existing = tx
        .query(
            "SELECT column_name::text, data_type::text, is_nullable = 'YES', column_default IS NOT NULL \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
            &[&table],
        )
        .map_err(failed("reading the columns of the jobs table", at))?;
    let existing = existing
        .iter()
        .map(|row| {
            Ok(ExistingColumn {
                name: row.try_get(0)?,
                data_type: row.try_get(1)?,
                nullable: row.try_get(2)?,
                has_default: row.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, postgres::Error>>()
        .map_err(failed("reading the columns of the jobs table", at))?;
    tx.batch_execute(&statements.create_outputs_table)
        .map_err(failed("creating the outputs table", at))?;
    if existing.is_empty() {
        tx.batch_execute(&statements.create_table)
            .map_err(failed("creating the jobs table", at))?;
    } else {
        let differences = schema_differences(&existing);
        if !differences.is_empty() {
            let cause = format!(
                "table {table:?} exists with an incompatible schema: {}; \
                 write to another [sink] table, or alter or drop this one",
                differences.join("; ")
            );
            return Err(SinkError::new("checking the jobs table", at, cause));
        }
    }
    tx.execute(
        "INSERT INTO percore_schema (table_name, version, created_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (table_name) DO NOTHING",
        &[&table, &SCHEMA_VERSION, &now_ms()],
    )
    .map_err(failed("recording the schema version", at))?;
    let version: i32 = tx
        .query_one(
            "SELECT version FROM percore_schema WHERE table_name = $1",
            &[&table],
        )
        .and_then(|row| row.try_get(0))
        .map_err(failed("reading the schema version", at))?;
    if version != SCHEMA_VERSION {
        let cause = format!(
            "table {table:?} has schema version {version} (in percore_schema); this \
             percore writes version {SCHEMA_VERSION}"
        );
        return Err(SinkError::new("checking the schema version", at, cause));
    }
    tx.commit().map_err(failed(operation, at))
}

/// One column of an existing table, from `information_schema.columns`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExistingColumn {
    /// Its name.
    name: String,
    /// Its type as `information_schema` spells it (`bigint`, `text`, …).
    data_type: String,
    /// Whether it accepts NULL.
    nullable: bool,
    /// Whether it has a default (an extra NOT NULL column needs one).
    has_default: bool,
}

/// How an existing jobs table differs from the one percore writes: each missing
/// column, each column of another type, each extra `NOT NULL` column without a
/// default. Empty when the table can be written.
fn schema_differences(existing: &[ExistingColumn]) -> Vec<String> {
    let mut differences = Vec::new();
    for (name, (kind, _)) in COLUMNS.iter().zip(COLUMN_TYPES) {
        match existing.iter().find(|column| column.name == *name) {
            None => differences.push(format!(
                "column {name} is missing ({} expected)",
                kind.sql()
            )),
            Some(column) if column.data_type != kind.sql() => differences.push(format!(
                "column {name} is {}, expected {}",
                column.data_type,
                kind.sql()
            )),
            Some(_) => {}
        }
    }
    for column in existing {
        if !COLUMNS.contains(&column.name.as_str()) && !column.nullable && !column.has_default {
            differences.push(format!(
                "column {} is NOT NULL without a default, and percore does not write it",
                column.name
            ));
        }
    }
    differences
}

/// One batch: binary COPY into staging, INSERT … ON CONFLICT DO NOTHING, commit.
/// Returns the rows actually inserted (rows already there are not).
fn copy_rows(
    client: &mut Client,
    statements: &Statements,
    rows: &[Row<'_>],
) -> Result<u64, postgres::Error> {
    let types = COLUMN_TYPES.map(|(kind, _)| kind.wire());
    let mut tx = client.transaction()?;
    let copy = tx.copy_in(statements.copy.as_str())?;
    let mut writer = BinaryCopyInWriter::new(copy, &types);
    for row in rows {
        // Both are u16 where they are made; saturating only guards the type.
        let shard = i32::try_from(row.shard).unwrap_or(i32::MAX);
        let attempts = i32::try_from(row.attempts).unwrap_or(i32::MAX);
        let output = row.output();
        let values: [&(dyn ToSql + Sync); COLUMNS.len()] = [
            &row.device_id,
            &row.tick_ms,
            &row.class,
            &row.model,
            &row.outcome,
            &row.reason,
            &output,
            &row.schedule_lag_us,
            &row.fetch_us,
            &row.infer_us,
            &row.end_to_end_us,
            &shard,
            &row.compute_node,
            &attempts,
            &row.run_id,
        ];
        writer.write(&values)?;
    }
    writer.finish()?;
    if rows.iter().any(|row| !row.outputs.is_empty()) {
        let types = OUTPUT_COLUMNS.map(|(_, kind)| kind.wire());
        let copy = tx.copy_in(statements.copy_outputs.as_str())?;
        let mut writer = BinaryCopyInWriter::new(copy, &types);
        for row in rows {
            for output in row.outputs.iter() {
                let shape = output.shape_text();
                let data = &output.bytes[..];
                writer.write(&[
                    &row.device_id,
                    &row.tick_ms,
                    &output.name,
                    &output.datatype,
                    &shape,
                    &data,
                ])?;
            }
        }
        writer.finish()?;
    }
    let inserted = tx.execute(statements.insert.as_str(), &[])?;
    tx.execute(statements.insert_outputs.as_str(), &[])?;
    tx.commit()?;
    Ok(inserted)
}

/// Whether a SQLSTATE names a condition a later try of the same write may get
/// past without anyone acting. See the module's Errors note.
pub fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300" | "55P03"
        )
}

/// Whether the connection is gone after `error`: closed, a connection
/// exception or shutdown from the server, or an I/O failure underneath.
fn connection_lost(client: &Client, error: &postgres::Error) -> bool {
    if client.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
        None => is_transient(error),
    }
}

/// Whether a driver error may pass on a later try: a closed or failed
/// connection (an I/O error underneath), or a transient SQLSTATE.
fn is_transient(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        return transient_sqlstate(code.code());
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The error as one line: the server's severity, message, SQLSTATE, detail and
/// hint, or the client's error with its causes; with what to do for the
/// errors an operator meets at start.
fn describe(error: &postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        return text;
    };
    let code = db.code().code();
    let mut text = format!("{}: {} (SQLSTATE {code})", db.severity(), db.message());
    if let Some(detail) = db.detail() {
        text.push_str("; ");
        text.push_str(detail);
    }
    if let Some(hint) = db.hint() {
        text.push_str("; hint: ");
        text.push_str(hint);
    }
    let advice = match code {
        "28P01" | "28000" => Some("check the user and password in [sink] url or PERCORE_PG_URL"),
        "3D000" => Some("create the database (createdb) or fix the database name in the url"),
        "42P10" => {
            Some("the jobs table needs a primary key or unique index on (device_id, tick_ms)")
        }
        "42501" => Some("the user lacks a privilege on the table or schema"),
        _ => None,
    };
    if let Some(advice) = advice {
        text.push_str(" — ");
        text.push_str(advice);
    }
    text
}

/// Maps a driver error to a [`SinkError`] naming `operation` and `location`,
/// with its transient verdict.
fn failed<'a>(
    operation: impl Into<std::borrow::Cow<'static, str>> + 'a,
    location: &'a str,
) -> impl FnOnce(postgres::Error) -> SinkError + 'a {
    move |error| {
        let transient = is_transient(&error);
        SinkError::new(operation, location, describe(&error)).transient(transient)
    }
}

/// The `limit` most frequent (outcome, reason) pairs among the rows of
/// `options.table` that are not ok, most frequent first, with their counts: a
/// benchmark's diagnostic of why jobs failed.
pub fn failure_reasons(
    options: &PostgresOptions,
    limit: usize,
) -> Result<Vec<(String, String, u64)>, SinkError> {
    let at = options.url.location();
    check_table_name(&options.table)
        .map_err(|cause| SinkError::new("checking [sink] table", at.as_str(), cause))?;
    let tls = tls_connector(options, &at)?;
    let mut client = connect(options, &tls, &Statements::new(&options.table), &at)?;
    let sql = format!(
        "SELECT outcome, coalesce(reason, ''), count(*) FROM {} WHERE outcome != 'ok' \
         GROUP BY outcome, reason ORDER BY count(*) DESC, outcome, reason LIMIT $1",
        options.table
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(sql.as_str(), &[&limit])
        .map_err(failed("reading the failure reasons", &at))?;
    rows.iter()
        .map(|row| {
            let count: i64 = row.try_get(2)?;
            Ok((row.try_get(0)?, row.try_get(1)?, count.max(0) as u64))
        })
        .collect::<Result<_, postgres::Error>>()
        .map_err(failed("reading the failure reasons", &at))
}

/// Drops `options.table`, its outputs table and its `percore_schema` row: a benchmark's scratch
/// table, written by one level and read back.
pub fn drop_table(options: &PostgresOptions) -> Result<(), SinkError> {
    let at = options.url.location();
    check_table_name(&options.table)
        .map_err(|cause| SinkError::new("checking [sink] table", at.as_str(), cause))?;
    let tls = tls_connector(options, &at)?;
    let mut client = connect(options, &tls, &Statements::new(&options.table), &at)?;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}, {outputs}; \
             DELETE FROM percore_schema WHERE table_name = '{table}'",
            table = options.table,
            outputs = outputs_table(&options.table)
        ))
        .map_err(failed("dropping the table", &at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_passwords_and_ports() {
        let url = PgUrl::parse("postgresql://percore:s%40cr%3At@db.example:6543/results").unwrap();
        assert_eq!(url.user, "percore");
        assert_eq!(url.password.as_deref(), Some("s@cr:t"));
        assert_eq!((url.host.as_str(), url.port), ("db.example", 6543));
        assert_eq!(url.dbname, "results");
        assert_eq!(
            url.location(),
            "postgresql://percore@db.example:6543/results"
        );
        let debug = format!("{url:?}");
        assert!(
            !debug.contains("s@cr:t") && debug.contains("<hidden>"),
            "{debug}"
        );

        let url = PgUrl::parse("postgres://me@127.0.0.1/db").unwrap();
        assert_eq!((url.port, url.has_password()), (5432, false));
        assert_eq!(url.host_port(), "127.0.0.1:5432");
        let url = PgUrl::parse("postgresql://me:pw@[::1]:5433/db").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 5433));
        assert_eq!(url.location(), "postgresql://me@[::1]:5433/db");
        // A password may hold an unescaped @: the host starts after the last one.
        let url = PgUrl::parse("postgresql://me:a@b@host:1/db").unwrap();
        assert_eq!(
            (url.password.as_deref(), url.host.as_str()),
            (Some("a@b"), "host")
        );
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        for (text, expected) in [
            ("mysql://me@h/db", "must start with postgresql://"),
            ("postgresql://h:5432/db", "has no user"),
            ("postgresql://me:secret@h:5432", "has no database"),
            ("postgresql://me:secret@h:5432/", "has no database"),
            (
                "postgresql://me:secret@h:99999/db",
                "port \"99999\" is not a number",
            ),
            (
                "postgresql://me:secret@h/db?sslmode=require",
                "query parameters",
            ),
            (
                "postgresql://me:secr%zzt@h/db",
                "the password has a bad %-escape",
            ),
            ("postgresql://me:secret@/db", "needs one host"),
            ("postgresql://me:secret@a,b/db", "needs one host"),
        ] {
            let error = PgUrl::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(
                !error.contains("secret") && !error.contains("secr"),
                "{error}"
            );
        }
    }

    #[test]
    fn table_names_are_plain_lower_case_identifiers() {
        check_table_name("jobs").unwrap();
        check_table_name("_bench_jobs_2").unwrap();
        for name in [
            "",
            "Jobs",
            "2jobs",
            "jobs; drop",
            "a\"b",
            "runs",
            "percore_schema",
        ] {
            assert!(check_table_name(name).is_err(), "{name:?}");
        }
        assert!(check_table_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn connection_shutdown_and_conflict_states_are_transient_the_rest_not() {
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "40001", "40P01", "53300",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in [
            "28P01", "28000", "3D000", "42P01", "42703", "23505", "53100", "42501",
        ] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }

    fn column(name: &str, data_type: &str) -> ExistingColumn {
        ExistingColumn {
            name: name.into(),
            data_type: data_type.into(),
            nullable: true,
            has_default: false,
        }
    }

    #[test]
    fn schema_differences_name_each_column() {
        let mut existing: Vec<ExistingColumn> = COLUMNS
            .iter()
            .zip(COLUMN_TYPES)
            .map(|(name, (kind, _))| column(name, kind.sql()))
            .collect();
        assert_eq!(schema_differences(&existing), Vec::<String>::new());
        existing.retain(|column| column.name != "attempts");
        existing[1] = column("tick_ms", "integer");
        existing.push(ExistingColumn {
            nullable: false,
            ..column("site", "text")
        });
        existing.push(column("note", "text")); // nullable extras are fine
        assert_eq!(
            schema_differences(&existing),
            vec![
                "column tick_ms is integer, expected bigint".to_string(),
                "column attempts is missing (integer expected)".to_string(),
                "column site is NOT NULL without a default, and percore does not write it"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn statements_list_every_column_with_its_type() {
        let statements = Statements::new("jobs");
        assert!(statements.create_table.contains("tick_ms bigint NOT NULL"));
        assert!(statements.create_table.contains("output bytea,"));
        assert!(statements
            .create_table
            .contains("PRIMARY KEY (tick_ms, device_id)"));
        assert!(!statements.create_staging.contains("NOT NULL"));
        assert!(statements
            .insert
            .ends_with("ON CONFLICT (device_id, tick_ms) DO NOTHING"));
        assert!(statements
            .copy
            .contains("run_id) FROM STDIN (FORMAT binary)"));
    }

    #[test]
    fn reconnect_waits_grow_with_jitter_up_to_the_cap() {
        let mut reconnect = Reconnect::new();
        let error = SinkError::new("connecting", "x", "refused");
        let mut previous = Duration::ZERO;
        for _ in 0..10 {
            let before = reconnect.wait;
            let start = Instant::now();
            reconnect.failed(&error);
            let wait = reconnect.next_try.saturating_duration_since(start);
            let slack = Duration::from_millis(1);
            assert!(
                wait <= before + slack && wait + slack >= before / 2,
                "{wait:?} of {before:?}"
            );
            assert!(reconnect.wait <= MAX_RECONNECT_WAIT);
            previous = previous.max(wait);
        }
        assert!(previous >= MAX_RECONNECT_WAIT / 2);
        assert_eq!(reconnect.last_error, "refused");
        reconnect.connected();
        assert_eq!(reconnect.wait, FIRST_RECONNECT_WAIT);
    }
}
