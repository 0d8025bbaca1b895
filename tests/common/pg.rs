//! The throwaway PostgreSQL server `tests/run-all.sh` starts: its URL, a fresh
//! database per test (so tests run in parallel), and readers of the jobs and
//! `runs` tables.
//!
//! Without `PERCORE_TEST_PG_URL` every helper fails the test with how to run it:
//! a test that needs PostgreSQL never passes by skipping.

use percore::sink::postgres::PgUrl;
use postgres::{Client, NoTls};

use super::Row;

/// The server's URL (a trust-authenticated role that may create databases).
pub const URL_ENV: &str = "PERCORE_TEST_PG_URL";

/// A role that logs in with a password only, and that password.
pub const PASSWORD_USER_ENV: &str = "PERCORE_TEST_PG_PASSWORD_USER";
pub const PASSWORD_ENV: &str = "PERCORE_TEST_PG_PASSWORD";

/// The value of `name`, or a failure saying how to get the server.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the PostgreSQL tests need the throwaway server that \
             tests/run-all.sh starts; run them through it, e.g. \
             `ulimit -l 8192; bash tests/run-all.sh --test postgres`"
        )
    })
}

/// The test server, logged in as the test role, database `postgres`.
pub fn server() -> PgUrl {
    PgUrl::parse(&env(URL_ENV)).unwrap_or_else(|why| panic!("{URL_ENV} {why}"))
}

/// A connection to `url`; failing to connect fails the test.
pub fn connect(url: &PgUrl) -> Client {
    url.client_config()
        .connect(NoTls)
        .unwrap_or_else(|error| panic!("cannot connect to {}: {error:?}", url.location()))
}

/// A new, empty database named `percore_test_<name>` (a leftover of an earlier
/// run is dropped first), and its URL.
pub fn fresh_database(name: &str) -> PgUrl {
    let server = server();
    let database = format!("percore_test_{name}");
    let mut admin = connect(&server);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .and_then(|()| admin.batch_execute(&format!("CREATE DATABASE {database}")))
        .unwrap_or_else(|error| panic!("cannot create database {database}: {error:?}"));
    server.with_dbname(&database)
}

/// Runs `sql` on `url`'s database.
pub fn execute(url: &PgUrl, sql: &str) {
    connect(url)
        .batch_execute(sql)
        .unwrap_or_else(|error| panic!("{sql}: {error:?}"));
}

/// Every row of `table` by (device, tick), with each row's `run_id`.
pub fn read_rows(url: &PgUrl, table: &str) -> (Vec<Row>, Vec<Option<String>>) {
    let rows = connect(url)
        .query(
            &format!(
                "SELECT device_id, tick_ms, class, model, outcome, reason, output,
                        schedule_lag_us, fetch_us, infer_us, end_to_end_us, shard,
                        compute_node, attempts, run_id
                 FROM {table} ORDER BY device_id, tick_ms"
            ),
            &[],
        )
        .unwrap_or_else(|error| panic!("cannot read {table}: {error:?}"));
    let mut read = Vec::with_capacity(rows.len());
    let mut run_ids = Vec::with_capacity(rows.len());
    for row in &rows {
        read.push(Row {
            device_id: row.get(0),
            tick_ms: row.get(1),
            class: row.get(2),
            model: row.get(3),
            outcome: row.get(4),
            reason: row.get(5),
            output: row.get(6),
            schedule_lag_us: row.get(7),
            fetch_us: row.get(8),
            infer_us: row.get(9),
            end_to_end_us: row.get(10),
            shard: i64::from(row.get::<_, i32>(11)),
            compute_node: row.get(12),
            attempts: i64::from(row.get::<_, i32>(13)),
        });
        run_ids.push(row.get(14));
    }
    (read, run_ids)
}

/// One row of the `runs` table.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    pub host: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub config_digest: String,
    pub jobs: Option<i64>,
    pub ok: Option<i64>,
    pub failed: Option<i64>,
    pub skipped: Option<i64>,
}

/// Every row of `runs`, oldest first.
pub fn read_runs(url: &PgUrl) -> Vec<RunRow> {
    connect(url)
        .query(
            "SELECT run_id, host, started_at_ms, ended_at_ms, config_digest, jobs, ok, failed,
                    skipped FROM runs ORDER BY started_at_ms, run_id",
            &[],
        )
        .unwrap_or_else(|error| panic!("cannot read runs: {error:?}"))
        .iter()
        .map(|row| RunRow {
            run_id: row.get(0),
            host: row.get(1),
            started_at_ms: row.get(2),
            ended_at_ms: row.get(3),
            config_digest: row.get(4),
            jobs: row.get(5),
            ok: row.get(6),
            failed: row.get(7),
            skipped: row.get(8),
        })
        .collect()
}
