//! The two ways an idle shard sleeps (vendored glommio, `PATCHES.md` 9): with
//! the next timer as `io_uring_enter`'s own timeout, submitting its SQEs in the
//! same call (the default where the kernel has `IORING_FEAT_EXT_ARG`), and with
//! a timeout SQE in the latency ring (older kernels; forced here with
//! `PERCORE_GLOMMIO_SLEEP_TIMER=ring`). Each must wake for timers (the open
//! loop's arrivals) and for replies (every job's two calls), and leave no job
//! behind: a sleep that missed a wake-up shows as jobs skipped, failed or never
//! run. Several jobs in flight also make the shard spin before it parks
//! (`PATCHES.md` 10): a spin that catches a reply must hand it on like a park.

mod common;

use std::path::Path;
use std::time::Duration;

/// `percore bench LOAD…` for 1 s with the sleep timer `way` (`None`: the
/// default); the summary of its one level.
fn bench(dir: &Path, way: Option<&str>, load: &[&str]) -> serde_json::Value {
    let path = dir.join(format!(
        "summary-{}-{}.json",
        way.unwrap_or("default"),
        load.join("-")
    ));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_percore"));
    command
        .arg("bench")
        .args(load)
        .args(["--duration", "1s", "--devices", "200"])
        .arg("--summary-json")
        .arg(&path);
    match way {
        Some(way) => command.env("PERCORE_GLOMMIO_SLEEP_TIMER", way),
        None => command.env_remove("PERCORE_GLOMMIO_SLEEP_TIMER"),
    };
    // A shard that sleeps through its wake-ups never ends its run: bounded.
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary runs");
    let status = common::wait_within(
        &mut child,
        Duration::from_secs(30),
        &format!("sleep timer {way:?}, {load:?}: the 1 s bench"),
    );
    assert!(
        status.success(),
        "sleep timer {way:?}, {load:?}: bench exited with {status}"
    );
    let text = std::fs::read_to_string(&path).expect("the summary was written");
    let summary: serde_json::Value = serde_json::from_str(&text).expect("the summary is JSON");
    summary["levels"][0]["summary"].clone()
}

fn every_job_ran_and_succeeded(summary: &serde_json::Value, expected_jobs: u64, what: &str) {
    let count = |key: &str| {
        summary[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: no {key} in {summary}"))
    };
    assert_eq!(
        count("jobs"),
        expected_jobs,
        "{what}: jobs due in the window"
    );
    assert_eq!(
        count("ok"),
        expected_jobs,
        "{what}: {}",
        summary["failures"]
    );
    assert_eq!(count("failed"), 0, "{what}");
    assert_eq!(
        count("skipped"),
        0,
        "{what}: skipped ticks mean a late shard"
    );
    assert_eq!(count("rows_written"), expected_jobs, "{what}");
}

#[test]
fn an_open_loop_runs_every_job_with_either_sleep_timer() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for way in [None, Some("ring")] {
        let summary = bench(dir.path(), way, &["--rate", "500"]);
        every_job_ran_and_succeeded(&summary, 500, &format!("--rate 500, sleep timer {way:?}"));
    }
}

/// A closed loop of `in_flight` jobs for 1 s with each sleep timer: hundreds of
/// jobs at least, every one run and written.
fn closed_loop_runs_every_job(in_flight: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for way in [None, Some("ring")] {
        let summary = bench(dir.path(), way, &["--concurrency", in_flight]);
        let jobs = summary["jobs"].as_u64().unwrap_or(0);
        assert!(
            jobs >= 100,
            "{in_flight} in flight, sleep timer {way:?}: only {jobs} jobs in 1 s: {summary}"
        );
        let what = format!("{in_flight} in flight, sleep timer {way:?}");
        every_job_ran_and_succeeded(&summary, jobs, &what);
    }
}

#[test]
fn one_job_in_flight_completes_with_either_sleep_timer() {
    // One job at a time: each parks twice, and never spins (one reply awaited).
    closed_loop_runs_every_job("1");
}

#[test]
fn many_jobs_in_flight_complete_while_the_shard_spins_with_either_sleep_timer() {
    // Always several replies awaited, so the default spin (at most 120 µs) is
    // on whenever the shard runs out of work.
    closed_loop_runs_every_job("16");
}
