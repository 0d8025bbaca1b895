//! Peers that close their sockets: a compute node that drops its connections in
//! the middle of calls under load, and a reader that closes percore's stdout. Each
//! used to kill the process with SIGPIPE (exit 141, no summary, jobs in flight
//! lost). Now a closed socket becomes failed or retried calls, and the run ends
//! with status 0, a complete summary file and one row per job.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use percore::config::Config;
use percore::mock::{MockKind, MockOptions};

/// Runs `percore run` on `config` for `seconds`, with stdout either read or
/// closed at once; returns (exit status, stderr).
fn run_percore(
    config: &std::path::Path,
    summary: &std::path::Path,
    seconds: u64,
    close_stdout: bool,
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--admin", "none", "--duration"])
        .arg(seconds.to_string())
        .arg("--config")
        .arg(config)
        .arg("--summary-json")
        .arg(summary)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("percore starts");
    let stdout = child.stdout.take().expect("a stdout pipe");
    let reader = if close_stdout {
        // The reader goes away before percore prints a thing.
        drop(stdout);
        None
    } else {
        Some(std::thread::spawn(move || {
            let mut text = String::new();
            let mut stdout = stdout;
            let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
            text
        }))
    };
    let output = child.wait_with_output().expect("percore ends");
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The summary's window and the due ticks in it: every one must be a row.
fn assert_every_tick_is_a_row(
    config: &std::path::Path,
    summary: &serde_json::Value,
    db: &std::path::Path,
) {
    let config = Config::load(config).expect("the test config loads");
    let window = summary["window_unix_ms"]
        .as_array()
        .and_then(|w| Some((w.first()?.as_i64()?, w.get(1)?.as_i64()?)))
        .expect("window_unix_ms");
    let expected = common::expected_ticks(&config, window);
    let rows = common::read_rows(db);
    let keys: std::collections::BTreeSet<(String, i64)> = rows
        .iter()
        .map(|row| (row.device_id.clone(), row.tick_ms))
        .collect();
    assert_eq!(keys.len(), rows.len(), "a (device, tick) is written twice");
    assert_eq!(keys, expected, "the rows are not exactly the ticks due");
    assert_eq!(
        summary["jobs"].as_u64(),
        Some(rows.len() as u64),
        "jobs = rows"
    );
    assert_eq!(summary["rows_written"].as_u64(), Some(rows.len() as u64));
}

/// A finished run of `percore run` against mock nodes.
struct Finished {
    /// The `--summary-json` object.
    summary: serde_json::Value,
    /// The run's database.
    db: std::path::PathBuf,
    /// Holds the config, the database and the summary until the test ends.
    _dir: tempfile::TempDir,
}

/// Runs `percore run` for `seconds` with `devices` devices ticking every second
/// against a plain mock source and a compute mock with `compute` options, stdout
/// read or closed at once. Checks that percore exited 0 and that the rows are
/// exactly the ticks due, one each, as many as the summary's jobs.
fn run_against(compute: MockOptions, devices: usize, seconds: u64, close_stdout: bool) -> Finished {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, compute);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config = common::write_config_file(
        dir.path(),
        source.addr,
        compute.addr,
        devices,
        1_000,
        500,
        &db,
        "",
    );
    let summary_path = dir.path().join("summary.json");
    let (status, stderr) = run_percore(&config, &summary_path, seconds, close_stdout);
    source.stop();
    compute.stop();
    assert!(
        status.success(),
        "percore ended with {status}; stderr:\n{stderr}"
    );
    let summary = common::read_summary_json(&summary_path);
    assert_every_tick_is_a_row(&config, &summary, &db);
    Finished {
        summary,
        db,
        _dir: dir,
    }
}

#[test]
fn a_node_dropping_connections_under_load_costs_calls_not_the_process() {
    // Every connection is cut under its calls after 150 of them: at 4,000 jobs/s
    // that is dozens of broken connections a second, with streams in flight.
    let compute = MockOptions {
        service_time: percore::mock::ServiceTime::Fixed(Duration::from_millis(2)),
        drop_after_calls: Some(150),
        ..MockOptions::default()
    };
    let run = run_against(compute, 4_000, 4, false);
    let rows = common::read_rows(&run.db);
    let (ok, failed, _) = common::outcome_counts(&rows);
    assert!(ok > 1_000, "{ok} ok rows of {}", rows.len());
    // Calls cut off by a dropped socket are failed rows that say so, or were
    // retried on a fresh connection (and counted).
    let retried = run.summary["retries"].as_u64().unwrap_or(0);
    assert!(
        failed + retried > 0,
        "no call was cut off: the fault did not fire"
    );
    for (reason, count) in common::reasons(&rows, "failed") {
        assert!(
            reason.starts_with("infer: connection to")
                || reason.starts_with("infer: ") && reason.contains("did not take the call"),
            "{count} rows failed for an unexpected reason: {reason}"
        );
    }
}

#[test]
fn a_closed_stdout_does_not_lose_the_summary() {
    let run = run_against(MockOptions::default(), 500, 2, true);
    assert_eq!(run.summary["failed"].as_u64(), Some(0), "{}", run.summary);
}
