//! PostgreSQL going away, and the dispatcher going away, cost no result: the
//! journal takes the rows while the server is down and replays them when it is
//! back; a dispatcher killed with -9 leaves its journal for the next run with
//! the same config, which replays it first; a server not up at start is waited
//! for with a journal and refused without one. Each test runs a server of its
//! own ([`pg::PrivateServer`]), since it stops and starts it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pg::{self, PrivateServer};
use common::ClassSpec;
use percore::config::{GrpcConfig, JournalConfig, SinkConfig};
use percore::dispatcher::{self, Load, RunOptions};
use percore::mock::{MockKind, MockOptions};
use percore::sink::journal::Journal;
use percore::sink::postgres::{PgUrl, PostgresOptions};

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 1_000,
    deadline_ms: 500,
};

/// The journal's segment files in `dir`.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pcj"))
        .collect()
}

/// One number from `sql`.
fn count(url: &PgUrl, sql: &str) -> i64 {
    pg::connect(url)
        .query_one(sql, &[])
        .and_then(|row| row.try_get(0))
        .unwrap_or_else(|error| panic!("{sql}: {error:?}"))
}

/// Rows in `jobs`, or `None` while the table is not there or the server is down.
fn try_count_jobs(url: &PgUrl) -> Option<i64> {
    let mut client = url.client_config().connect(postgres::NoTls).ok()?;
    client
        .query_one("SELECT count(*) FROM jobs", &[])
        .and_then(|row| row.try_get(0))
        .ok()
}

/// The (device, tick) keys of the rows `run_id` wrote.
fn keys_of(url: &PgUrl, run_id: &str) -> BTreeSet<(String, i64)> {
    pg::connect(url)
        .query(
            "SELECT device_id, tick_ms FROM jobs WHERE run_id = $1",
            &[&run_id],
        )
        .unwrap_or_else(|error| panic!("cannot read jobs: {error:?}"))
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// The (device, tick) keys of every whole record in the journal at `dir`, read
/// from a copy in `scratch` (reading a journal through consumes it).
fn journal_keys(dir: &Path, scratch: &Path) -> BTreeSet<(String, i64)> {
    std::fs::create_dir_all(scratch).expect("a scratch folder");
    for file in segment_files(dir) {
        let name = file.file_name().expect("a file name");
        std::fs::copy(&file, scratch.join(name)).expect("a copy of the segment");
    }
    let (mut journal, _) = Journal::open(JournalConfig::new(scratch)).expect("the copy opens");
    let mut keys = BTreeSet::new();
    while let Some(replay) = journal.next_batch().expect("a record") {
        keys.extend(
            replay
                .rows
                .iter()
                .map(|row| (row.device_id.to_string(), row.tick_ms)),
        );
        journal.commit(&replay).expect("the copy advances");
    }
    keys
}

/// A config file for `percore run` writing into `url` with the `[sink]` keys
/// `sink_extra`; the journal is PostgreSQL's default (`percore-journal/` beside
/// the file) unless they say otherwise.
fn write_postgres_config(
    dir: &Path,
    source: std::net::SocketAddr,
    compute: std::net::SocketAddr,
    devices: usize,
    url: &PgUrl,
    sink_extra: &str,
) -> PathBuf {
    let unused = dir.join("unused.db");
    let config = common::write_config_file(
        dir, source, compute, devices, 1_000, 500, &unused, sink_extra,
    );
    let text = std::fs::read_to_string(&config).expect("the config");
    let sqlite = format!("kind = \"sqlite\"\npath = \"{}\"", unused.display());
    assert!(text.contains(&sqlite), "{text}");
    let postgres = format!(
        "kind = \"postgres\"\nurl = \"postgresql://{}@127.0.0.1:{}/{}\"\nconnect_timeout_ms = 1000",
        url.user, url.port, url.dbname
    );
    std::fs::write(&config, text.replace(&sqlite, &postgres)).expect("the config");
    config
}

/// `percore run --config config` with `args`, stderr captured.
fn percore_run(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_percore"));
    command
        .args(["run", "--config"])
        .arg(config)
        .args(["--admin", "none"])
        .args(args)
        .env_remove("PERCORE_PG_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[test]
fn postgresql_stopped_for_ten_seconds_mid_run_costs_no_result() {
    let server = PrivateServer::start("");
    let url = server.url();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let journal_dir = dir.path().join("journal");
    let mut config = common::config(
        vec![common::class(METER, source.addr, compute.addr)],
        500,
        dir.path().join("unused.db"),
        GrpcConfig::default(),
    );
    let mut options = PostgresOptions::new(url.clone());
    options.connect_timeout = Duration::from_secs(1);
    config.sink = SinkConfig::Postgres {
        options,
        journal: Some(JournalConfig::new(&journal_dir)),
    };
    let run_options = RunOptions {
        duration: Some(Duration::from_secs(16)),
        load: Load::Ticks,
        ..RunOptions::default()
    };
    let run_config = config.clone();
    let run = std::thread::spawn(move || dispatcher::run(&run_config, &run_options));

    // Down from 2 s to 12 s into the run; the run goes on until 16 s.
    std::thread::sleep(Duration::from_secs(2));
    server.stop();
    let down_until = Instant::now() + Duration::from_secs(10);
    let mut journal_seen = false;
    while Instant::now() < down_until {
        journal_seen |= !segment_files(&journal_dir).is_empty();
        std::thread::sleep(Duration::from_millis(100));
    }
    server.start_again();

    let summary = run
        .join()
        .expect("the run thread")
        .expect("the run succeeds once the server is back");
    source.stop();
    compute.stop();
    assert!(
        journal_seen,
        "nothing went to the journal while the server was down"
    );
    assert_eq!(summary.sink_error, None, "{}", server.log());
    let journal = &summary.journal;
    // Ten seconds of 500 devices a second went to the journal, and came back.
    assert!(
        journal.rows_journaled >= 4_000,
        "only {} rows went through the journal: {journal:?}",
        journal.rows_journaled
    );
    assert_eq!(journal.rows_replayed, journal.rows_journaled, "{journal:?}");
    assert_eq!((journal.rows_left, journal.bytes), (0, 0), "{journal:?}");
    assert_eq!(segment_files(&journal_dir), Vec::<PathBuf>::new());
    assert_eq!(summary.counters.skipped, 0, "{:?}", summary.failures);
    let json = summary.to_json();
    assert_eq!(json["sink_rows_journaled"], journal.rows_journaled);
    assert_eq!(json["sink_rows_replayed"], journal.rows_replayed);
    let line = summary.journal_line().expect("the summary's journal line");
    assert!(
        line.contains(&format!("{} rows journaled", journal.rows_journaled)),
        "{line}"
    );

    let (rows, run_ids) = pg::read_rows(&url, "jobs");
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    assert!(run_ids
        .iter()
        .all(|id| id.as_deref() == Some(summary.run_id.as_str())));
    let runs = pg::read_runs(&url);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].jobs, Some(summary.counters.jobs() as i64));
}

#[test]
fn kill_9_while_the_server_is_down_then_a_restart_replays_every_journaled_result_once() {
    let server = PrivateServer::start("");
    let url = server.url();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = write_postgres_config(dir.path(), source.addr, compute.addr, 500, &url, "");
    let journal_dir = dir.path().join("percore-journal");

    let mut first = percore_run(&config, &["--duration", "60s"])
        .stderr(Stdio::null())
        .spawn()
        .expect("percore starts");
    let committed = Instant::now() + Duration::from_secs(20);
    while try_count_jobs(&url).unwrap_or(0) == 0 {
        assert!(Instant::now() < committed, "no row committed in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Down, so results pile up in the journal; then the dispatcher dies.
    server.stop();
    let journaled = Instant::now() + Duration::from_secs(20);
    while segment_files(&journal_dir).is_empty() {
        assert!(Instant::now() < journaled, "nothing journaled in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    first.kill().expect("kill -9");
    first.wait().expect("reaped");
    server.start_again();

    let runs = pg::read_runs(&url);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let killed = runs[0].clone();
    assert_eq!(killed.ended_at_ms, None, "a killed run has no end");
    let committed_before = keys_of(&url, &killed.run_id);
    assert!(!committed_before.is_empty());
    // What the journal holds now is what the kill left: whole records only.
    let journaled = journal_keys(&journal_dir, &dir.path().join("journal-copy"));
    assert!(
        journaled.len() >= 500,
        "two seconds of results should be in the journal: {} rows",
        journaled.len()
    );

    // The same config again: the leftover goes in first, then this run's rows.
    let summary_path = dir.path().join("summary.json");
    let second = percore_run(&config, &["--duration", "3s", "--summary-json"])
        .arg(&summary_path)
        .output()
        .expect("percore runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    let summary = &common::read_summary_json(&summary_path);
    assert_eq!(
        summary["sink_leftover_rows_replayed"],
        journaled.len(),
        "{stderr}"
    );
    assert_eq!(summary["sink_journal_rows_left"], 0);
    assert_eq!(segment_files(&journal_dir), Vec::<PathBuf>::new());

    // Everything the killed run committed or journaled, and nothing else (the
    // table's key makes each (device, tick) one row: a batch committed just as
    // the server went down, then journaled too, stays one row).
    let expected: BTreeSet<(String, i64)> = committed_before.union(&journaled).cloned().collect();
    let after = keys_of(&url, &killed.run_id);
    assert_eq!(after.len(), expected.len());
    assert!(
        after == expected,
        "rows of the killed run differ from what it kept"
    );
    let second_id = summary["run_id"].as_str().expect("a run id");
    assert_ne!(second_id, killed.run_id);
    assert_eq!(
        Some(keys_of(&url, second_id).len() as i64),
        summary["jobs"].as_i64(),
        "{summary}"
    );
    let runs = pg::read_runs(&url);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs
        .iter()
        .any(|run| run.run_id == second_id && run.ended_at_ms.is_some()));
    source.stop();
    compute.stop();
}

#[test]
fn a_server_down_at_start_is_waited_for_with_the_journal_and_refused_without_it() {
    let server = PrivateServer::start("");
    let url = server.url();
    server.stop();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());

    // Without the journal the start fails at once, naming the server.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = write_postgres_config(
        dir.path(),
        source.addr,
        compute.addr,
        100,
        &url,
        "journal = false",
    );
    let output = percore_run(&config, &["--duration", "2s"])
        .output()
        .expect("percore runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach 127.0.0.1:{}", server.port)),
        "{stderr}"
    );

    // With it (the default) the run goes on and its rows land once the server is up.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = write_postgres_config(dir.path(), source.addr, compute.addr, 100, &url, "");
    let summary_path = dir.path().join("summary.json");
    let run = percore_run(&config, &["--duration", "8s", "--summary-json"])
        .arg(&summary_path)
        .spawn()
        .expect("percore starts");
    std::thread::sleep(Duration::from_secs(3));
    server.start_again();
    let output = run.wait_with_output().expect("percore ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("connecting failed")
            && stderr.contains("the run goes on: results go to the journal"),
        "{stderr}"
    );
    let summary = &common::read_summary_json(&summary_path);
    let journaled = summary["sink_rows_journaled"].as_u64().expect("a count");
    assert!(journaled > 0, "{summary}");
    assert_eq!(summary["sink_rows_replayed"], journaled);
    assert_eq!(summary["sink_journal_rows_left"], 0);
    let run_id = summary["run_id"].as_str().expect("a run id");
    assert_eq!(
        Some(count(
            &url,
            &format!("SELECT count(*) FROM jobs WHERE run_id = '{run_id}'")
        )),
        summary["jobs"].as_i64(),
        "{summary}"
    );
    let runs = pg::read_runs(&url);
    assert_eq!(
        runs.len(),
        1,
        "the run is recorded once it connects: {runs:?}"
    );
    assert_eq!(runs[0].jobs, summary["jobs"].as_i64());
    source.stop();
    compute.stop();
}
