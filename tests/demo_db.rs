//! `percore demo` and its database file: each demo starts a fresh file (saying what
//! the old one held), so the rows in it are the jobs that demo printed; `--keep-db`
//! appends instead and says how many rows were there before.

use std::path::Path;
use std::process::{Command, Output};

/// One short demo writing to `db`; its summary JSON goes to `summary`.
fn demo(db: &Path, summary: &Path, extra: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["demo", "--devices", "400", "--duration", "1500ms"])
        .args(["--service-time-us", "100", "--admin", "none"])
        .arg("--db")
        .arg(db)
        .arg("--summary-json")
        .arg(summary)
        .args(extra)
        .output()
        .expect("the binary runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "demo failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The jobs and rows a demo's summary reports.
fn jobs_of(summary: &Path) -> u64 {
    let text = std::fs::read_to_string(summary).expect("the summary is written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the summary is JSON");
    let jobs = json["jobs"].as_u64().expect("jobs is a count");
    assert_eq!(json["rows_written"].as_u64(), Some(jobs), "{text}");
    // The report's configuration says what served the demo: the mocks'
    // service time and payload, and the [grpc] settings.
    let mocks = &json["config"]["mocks"];
    for node in ["data_source", "compute_node"] {
        assert_eq!(mocks[node]["service_time"]["fixed_us"], 100, "{text}");
        assert_eq!(mocks[node]["payload_bytes"], 1024, "{text}");
    }
    assert!(
        json["config"]["grpc"]["connect_timeout_ms"].is_u64(),
        "{text}"
    );
    jobs
}

fn rows_in(db: &Path) -> u64 {
    let conn = rusqlite::Connection::open(db).expect("the database opens");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))
        .expect("jobs is counted");
    rows as u64
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_second_demo_starts_a_fresh_file_and_keep_db_appends() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("demo.db");
    let summary = dir.path().join("summary.json");

    let first = demo(&db, &summary, &[]);
    let first_jobs = jobs_of(&summary);
    assert!(first_jobs > 0, "the first demo ran no job");
    assert_eq!(rows_in(&db), first_jobs);
    assert!(
        !stderr(&first).contains("removed"),
        "nothing to remove:\n{}",
        stderr(&first)
    );

    let second = demo(&db, &summary, &[]);
    let second_jobs = jobs_of(&summary);
    assert!(second_jobs > 0, "the second demo ran no job");
    assert_eq!(
        rows_in(&db),
        second_jobs,
        "the file holds the second demo's rows only"
    );
    let said = format!(
        "removed {} from an earlier run ({first_jobs} rows); starting a fresh file",
        db.display()
    );
    assert!(stderr(&second).contains(&said), "{}", stderr(&second));

    let third = demo(&db, &summary, &["--keep-db"]);
    let third_jobs = jobs_of(&summary);
    assert_eq!(rows_in(&db), second_jobs + third_jobs, "--keep-db appends");
    let said = format!(
        "{} holds {second_jobs} rows from earlier runs; this run adds to them",
        db.display()
    );
    assert!(stderr(&third).contains(&said), "{}", stderr(&third));
}

#[test]
fn a_file_that_is_not_a_percore_database_is_left_alone() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let notes = dir.path().join("notes.db");
    std::fs::write(&notes, "my notes, not SQLite\n").expect("file written");
    let output = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["demo", "--duration", "1s", "--admin", "none", "--db"])
        .arg(&notes)
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.starts_with(&format!("error: {}:", notes.display())),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&notes).expect("the file is still there"),
        "my notes, not SQLite\n"
    );
}
