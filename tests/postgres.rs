//! The PostgreSQL sink against a real server (the throwaway one `tests/run-all.sh`
//! starts): a whole run lands every due tick once under its run id, a batch
//! written twice keeps one row, and the start refuses wrong credentials, a
//! missing database, an unreachable server and an incompatible table with a
//! message naming what is wrong. Each test has a database of its own.

mod common;

use std::time::{Duration, Instant};

use common::pg::{self, names, open_error, record};
use common::ClassSpec;
use percore::config::{GrpcConfig, SinkConfig};
use percore::mock::{MockKind, MockOptions};
use percore::record::{Outcome, SkipReason};
use percore::sink::postgres::{PgUrl, PostgresOptions};
use percore::sink::{self, Sink, SinkError, SinkTarget};

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 200,
    deadline_ms: 200,
};

fn open(url: &PgUrl) -> Result<Box<dyn Sink>, SinkError> {
    pg::open_sink(PostgresOptions::new(url.clone()))
}

fn count(url: &PgUrl, sql: &str) -> i64 {
    pg::connect(url)
        .query_one(sql, &[])
        .unwrap_or_else(|error| panic!("{sql}: {error:?}"))
        .get(0)
}

#[test]
fn a_run_lands_every_due_tick_once_under_its_run_id() {
    let url = pg::fresh_database("whole_run");
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = common::config(
        vec![common::class(METER, source.addr, compute.addr)],
        300,
        dir.path().join("unused.db"),
        GrpcConfig::default(),
    );
    config.sink = SinkConfig::Postgres {
        options: PostgresOptions::new(url.clone()),
        journal: None,
    };

    let summary = common::run(&config, Duration::from_secs(3));
    source.stop();
    compute.stop();
    assert_eq!(summary.sink_error, None);
    assert_eq!(summary.sink_location, url.location());
    let (rows, run_ids) = pg::read_rows(&url, "jobs");

    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    common::assert_shard_placement(&summary, &rows);
    common::assert_ok_rows_are_right(&rows, MockOptions::default().payload_bytes);
    common::assert_classes(&config, &rows);
    assert!(
        run_ids
            .iter()
            .all(|id| id.as_deref() == Some(summary.run_id.as_str())),
        "every row carries the run's id {}",
        summary.run_id
    );
    assert_eq!(summary.to_json()["run_id"], summary.run_id.as_str());
    // Every ok job's output is in job_outputs too, with its datatype and shape.
    let outputs = pg::connect(&url)
        .query(
            "SELECT o.name, o.datatype, o.shape, o.data = j.output FROM job_outputs o \
             JOIN jobs j USING (device_id, tick_ms) ORDER BY o.tick_ms, o.device_id",
            &[],
        )
        .expect("job_outputs");
    let ok = rows.iter().filter(|row| row.outcome == "ok").count();
    assert_eq!(outputs.len(), ok);
    for output in &outputs {
        let read: (String, String, String, bool) =
            (output.get(0), output.get(1), output.get(2), output.get(3));
        assert_eq!(read, ("OUTPUT0".into(), "FP32".into(), "1,2".into(), true));
    }

    let runs = pg::read_runs(&url);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run.run_id, summary.run_id);
    assert!(
        !run.host.is_empty() && run.config_digest.len() == 16,
        "{run:?}"
    );
    let ended = run.ended_at_ms.expect("a finished run has ended_at_ms");
    assert!(ended >= run.started_at_ms, "{run:?}");
    let counters = &summary.counters;
    assert_eq!(
        (run.jobs, run.ok, run.failed, run.skipped),
        (
            Some(counters.jobs() as i64),
            Some(counters.ok as i64),
            Some(counters.failed as i64),
            Some(counters.skipped as i64)
        )
    );
    assert_eq!(
        count(
            &url,
            "SELECT version::bigint FROM percore_schema WHERE table_name = 'jobs'"
        ),
        1,
        "the schema version is recorded"
    );
    let types: Vec<(String, String)> = pg::connect(&url)
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_name = 'jobs' AND column_name IN ('tick_ms', 'output', 'shard')
             ORDER BY column_name",
            &[],
        )
        .expect("the column types")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        types,
        [
            ("output".to_string(), "bytea".to_string()),
            ("shard".to_string(), "integer".to_string()),
            ("tick_ms".to_string(), "bigint".to_string()),
        ]
    );
}

#[test]
fn a_batch_written_twice_keeps_one_row_the_first() {
    let url = pg::fresh_database("twice");
    let mut sink = open(&url).expect("the sink opens");
    let first = [
        record(0, 1_700_000_000_000, Outcome::Ok, b"first"),
        record(
            1,
            1_700_000_000_000,
            Outcome::Skipped(SkipReason::PreviousJobRunning),
            b"",
        ),
    ];
    sink.write_batch(&first).expect("the first write");
    // The same batch again, and once more with other values for the same keys
    // plus one new row and a duplicate inside the batch.
    sink.write_batch(&first).expect("the replay");
    let changed = [
        record(0, 1_700_000_000_000, Outcome::Ok, b"second"),
        record(0, 1_700_000_001_000, Outcome::Ok, b"new"),
        record(0, 1_700_000_001_000, Outcome::Ok, b"new again"),
    ];
    sink.write_batch(&changed).expect("a batch with known keys");

    let (rows, run_ids) = pg::read_rows(&url, "jobs");
    let keys: Vec<(&str, i64)> = rows
        .iter()
        .map(|r| (r.device_id.as_str(), r.tick_ms))
        .collect();
    assert_eq!(
        keys,
        [
            ("dev-a", 1_700_000_000_000),
            ("dev-a", 1_700_000_001_000),
            ("dev-b", 1_700_000_000_000)
        ]
    );
    assert_eq!(
        rows[0].output.as_deref(),
        Some(&b"first"[..]),
        "the first write wins"
    );
    assert_eq!(rows[1].output.as_deref(), Some(&b"new"[..]));
    assert_eq!(rows[2].outcome, "skipped");
    assert_eq!(rows[2].output, None, "no output is NULL");
    assert_eq!(
        rows[2].reason.as_deref(),
        Some("previous job of this device still running")
    );
    assert_eq!(rows[0].compute_node.as_deref(), Some("127.0.0.1:1"));
    assert_eq!(
        (rows[0].attempts, rows[0].shard, rows[0].end_to_end_us),
        (2, 1, Some(310))
    );
    assert!(run_ids.iter().all(|id| id.is_some()));

    // Rows already resolved (the journal's replay path) are idempotent too.
    let mut resolver = percore::sink::row::Resolver::new(names());
    let resolved = resolver.resolve(&first).expect("names resolve");
    sink.write_rows(&resolved).expect("write_rows");
    assert_eq!(count(&url, "SELECT count(*) FROM jobs"), 3);
}

#[test]
fn wrong_credentials_and_a_missing_database_are_refused_at_start() {
    let server = pg::server();
    let user = pg::env(pg::PASSWORD_USER_ENV);
    let password = pg::env(pg::PASSWORD_ENV);
    let wrong = server.with_login(&user, Some("not-the-password"));
    let error = open_error(PostgresOptions::new(wrong.clone()));
    let text = error.to_string();
    assert!(!error.transient, "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(
        text.contains("28P01") && text.contains("check the user and password"),
        "{text}"
    );
    assert!(text.contains(&wrong.location()), "{text}");
    assert!(
        !text.contains("not-the-password"),
        "the password is never printed: {text}"
    );

    // The same role with its password gets in: the refusal was the password's.
    let right = pg::fresh_database("credentials").with_login(&user, Some(password.as_str()));
    pg::execute(
        &right.with_login(&server.user, None),
        &format!("GRANT ALL ON SCHEMA public TO {user}"),
    );
    open(&right).expect("the right password opens the sink");

    let missing = server.with_dbname("percore_no_such_database");
    let error = open_error(PostgresOptions::new(missing));
    let text = error.to_string();
    assert!(!error.transient, "{text}");
    assert!(
        text.contains("database \"percore_no_such_database\" does not exist")
            && text.contains("3D000"),
        "{text}"
    );
}

#[test]
fn an_unreachable_server_is_named_at_start() {
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url = pg::server().with_dbname("x");
    let url =
        PgUrl::parse(&format!("postgresql://{}@127.0.0.1:{port}/x", url.user)).expect("a url");
    let mut options = PostgresOptions::new(url);
    options.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let error = open_error(options);
    let text = error.to_string();
    assert!(error.transient, "the server may come back: {text}");
    assert!(
        text.contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("onnection refused"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded by the timeout"
    );

    // Through the binary, without a journal to wait with (see postgres_outage.rs):
    // the start fails with that message and a non-zero status.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = common::write_config_file(
        dir.path(),
        "127.0.0.1:1".parse().expect("an address"),
        "127.0.0.1:2".parse().expect("an address"),
        10,
        1000,
        500,
        &dir.path().join("unused.db"),
        "",
    );
    let text = std::fs::read_to_string(&config).expect("the config");
    let text = text.replace(
        &format!(
            "kind = \"sqlite\"\npath = \"{}\"",
            dir.path().join("unused.db").display()
        ),
        &format!(
            "kind = \"postgres\"\nurl = \"postgresql://percore:hunter2@127.0.0.1:{port}/x\"\n\
             connect_timeout_ms = 500\njournal = false"
        ),
    );
    assert!(text.contains("kind = \"postgres\""), "{text}");
    std::fs::write(&config, text).expect("the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--duration", "1s", "--admin", "none"])
        .env_remove("PERCORE_PG_URL")
        .output()
        .expect("percore runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "sink postgresql://percore@127.0.0.1:{port}/x: connecting failed"
        )) && stderr.contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn an_incompatible_table_is_refused_naming_the_column() {
    let url = pg::fresh_database("incompatible");
    pg::execute(
        &url,
        "CREATE TABLE jobs (device_id text NOT NULL, tick_ms integer NOT NULL, class text,
         PRIMARY KEY (tick_ms, device_id))",
    );
    let error = open_error(PostgresOptions::new(url.clone()));
    let text = error.to_string();
    assert!(!error.transient, "{text}");
    assert!(
        text.contains("table \"jobs\" exists with an incompatible schema")
            && text.contains("column tick_ms is integer, expected bigint")
            && text.contains("column attempts is missing (integer expected)"),
        "{text}"
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'runs'"
        ),
        0,
        "the refused start left nothing behind (the schema transaction rolled back)"
    );

    // A compatible table without the key ON CONFLICT needs is refused too.
    let mut options = PostgresOptions::new(url.clone());
    options.table = "jobs_nokey".into();
    pg::execute(
        &url,
        "CREATE TABLE jobs_nokey (device_id text, tick_ms bigint, class text, model text,
         outcome text, reason text, output bytea, schedule_lag_us bigint, fetch_us bigint,
         infer_us bigint, end_to_end_us bigint, shard integer, compute_node text,
         attempts integer, run_id text)",
    );
    let text = open_error(options.clone()).to_string();
    assert!(
        text.contains("42P10") && text.contains("(device_id, tick_ms)"),
        "{text}"
    );
    pg::execute(
        &url,
        "ALTER TABLE jobs_nokey ADD PRIMARY KEY (device_id, tick_ms)",
    );
    sink::open(&SinkTarget::Postgres(options), names(), false).expect("with a key it opens");
}

#[test]
fn a_restart_against_the_same_database_adds_a_second_run() {
    let url = pg::fresh_database("restart");
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = common::config(
        vec![common::class(METER, source.addr, compute.addr)],
        100,
        dir.path().join("unused.db"),
        GrpcConfig::default(),
    );
    config.sink = SinkConfig::Postgres {
        options: PostgresOptions::new(url.clone()),
        journal: None,
    };
    let first = common::run(&config, Duration::from_secs(1));
    let second = common::run(&config, Duration::from_secs(1));
    source.stop();
    compute.stop();

    let runs = pg::read_runs(&url);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        runs.iter()
            .map(|run| run.run_id.as_str())
            .collect::<Vec<_>>(),
        [first.run_id.as_str(), second.run_id.as_str()]
    );
    assert_ne!(first.run_id, second.run_id);
    assert!(runs.iter().all(|run| run.ended_at_ms.is_some()), "{runs:?}");
    assert_eq!(
        runs[0].config_digest, runs[1].config_digest,
        "the same configuration"
    );
    let (rows, run_ids) = pg::read_rows(&url, "jobs");
    for summary in [&first, &second] {
        let mine = run_ids
            .iter()
            .filter(|id| id.as_deref() == Some(summary.run_id.as_str()))
            .count() as u64;
        assert_eq!(
            mine,
            summary.counters.jobs(),
            "rows of run {}",
            summary.run_id
        );
    }
    assert_eq!(
        rows.len() as u64,
        first.counters.jobs() + second.counters.jobs()
    );
}

#[test]
fn a_terminated_connection_is_transient_and_the_sink_reconnects() {
    let url = pg::fresh_database("reconnect");
    let mut sink = open(&url).expect("the sink opens");
    sink.write_batch(&[record(0, 1_000, Outcome::Ok, b"x")])
        .expect("a first write");
    // What a server restart or an administrator does: end the sink's backend (57P01).
    let ended = count(
        &url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = 'percore' AND datname = current_database()
           AND pid <> pg_backend_pid()",
    );
    assert_eq!(ended, 1);
    let batch = [record(1, 1_000, Outcome::Ok, b"y")];
    let error = sink
        .write_batch(&batch)
        .expect_err("the connection is gone");
    assert!(error.transient, "{error}");
    // The writer's way: try again until it passes, bounded.
    let mut tries = 0;
    while let Err(error) = sink.write_batch(&batch) {
        assert!(error.transient, "{error}");
        tries += 1;
        assert!(tries < 100, "no reconnect after {tries} tries: {error}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(&url, "SELECT count(*) FROM jobs"), 2);
}
