//! Signals to the real binary: SIGTERM (or Ctrl-C) ends a run early and cleanly —
//! jobs in flight finish, every result is written, the summary is printed, exit 0
//! — and a second signal exits at once with 130. A mock node stopped by SIGTERM
//! exits 0.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts a demo that would run for a minute, writing to `db` and `summary`.
fn long_demo(db: &Path, summary: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["demo", "--devices", "400", "--duration", "60s"])
        .args(["--service-time-us", "200", "--admin", "none"])
        .arg("--db")
        .arg(db)
        .arg("--summary-json")
        .arg(summary)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

fn kill(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

/// Waits up to `limit` for the child to exit; kills it and fails if it does not.
fn wait_for(child: &mut Child, limit: Duration) -> (Option<i32>, String, String) {
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {limit:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(out) = child.stdout.as_mut() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(err) = child.stderr.as_mut() {
        let _ = err.read_to_string(&mut stderr);
    }
    (status.code(), stdout, stderr)
}

/// Polls until the demo has committed rows, so the signal lands mid-run.
fn wait_for_rows(db: &Path) {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        // Read-only, never creating: an empty file made here would be refused
        // by the demo as not a percore database.
        let rows =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|conn| conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0)))
                .unwrap_or(0i64);
        if rows > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the demo wrote no row within 20 s");
}

#[test]
fn sigterm_ends_a_run_early_with_every_result_written() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (db, summary) = (dir.path().join("demo.db"), dir.path().join("summary.json"));
    let mut demo = long_demo(&db, &summary);
    wait_for_rows(&db);
    kill(&demo, libc::SIGTERM);
    let (code, stdout, stderr) = wait_for(&mut demo, Duration::from_secs(15));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("stopping: finishing the jobs in flight"),
        "{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("the summary is written"))
            .expect("the summary is JSON");
    let jobs = json["jobs"].as_u64().expect("jobs is a count");
    assert!(jobs > 0, "{json}");
    assert!(
        json["elapsed_s"].as_f64().is_some_and(|s| s < 30.0),
        "the run stopped early: {json}"
    );
    let rows: i64 = rusqlite::Connection::open(&db)
        .and_then(|conn| conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0)))
        .expect("the rows are counted");
    assert_eq!(rows as u64, jobs, "every job of the run has its row");
    assert_eq!(json["rows_written"].as_u64(), Some(jobs), "{json}");
}

#[test]
fn a_second_signal_aborts_at_once_with_130() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (db, summary) = (dir.path().join("demo.db"), dir.path().join("summary.json"));
    let mut demo = long_demo(&db, &summary);
    wait_for_rows(&db);
    kill(&demo, libc::SIGINT);
    // Apart, so the kernel does not merge them into one pending signal; well
    // inside the ≥200 ms the first stop takes (every shard stops at one tick
    // time set ahead of now).
    std::thread::sleep(Duration::from_millis(50));
    kill(&demo, libc::SIGINT);
    let (code, _, stderr) = wait_for(&mut demo, Duration::from_secs(10));
    assert_eq!(code, Some(130), "{stderr}");
}

#[test]
fn a_mock_node_stops_on_sigterm() {
    let mut mock = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["mock-compute", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut line = [0u8; 1];
    let mut first = Vec::new();
    if let Some(out) = mock.stdout.as_mut() {
        while out.read(&mut line).is_ok_and(|n| n == 1) && line[0] != b'\n' {
            first.push(line[0]);
        }
    }
    assert!(first.starts_with(b"listening on "), "{first:?}");
    kill(&mock, libc::SIGTERM);
    let (code, _, stderr) = wait_for(&mut mock, Duration::from_secs(5));
    assert_eq!(code, Some(0), "{stderr}");
}
