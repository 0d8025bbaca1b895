//! The per-second record of a flat-rate run matches the rows: each second of the
//! interval log holds the jobs whose results were ready in that second of the
//! run, within 2 % (the first and last seconds included) — ok jobs, and, in a
//! run with failures, failed jobs and skipped ticks too, which is what the
//! report's stacked per-second plot of outcomes is drawn from.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::ClassSpec;
use percore::config::GrpcConfig;
use percore::mock::{MockKind, MockOptions};

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 250,
    deadline_ms: 250,
};

#[test]
fn each_logged_second_holds_the_rows_ready_in_it() {
    let (rows, intervals, window) = flat_run(MockOptions::default());
    // A loaded machine may still skip or fail a few jobs: whatever the rows
    // say of each outcome, the log says the same (nothing, when all were ok).
    for (outcome, tag) in [
        ("ok", "end_to_end"),
        ("failed", "failed_end_to_end"),
        ("skipped", "skipped"),
    ] {
        let ready = ready_times(&rows, window.0, outcome);
        let from_log = log_per_second(&intervals, tag);
        assert_same_per_second(outcome, &ready, &from_log);
    }
}

#[test]
fn failed_and_skipped_seconds_match_the_rows_too() {
    // One infer in ten fails at once (INTERNAL); one in twenty hangs until the
    // job's deadline, which equals the period, so the device's next tick finds
    // it still running and is skipped.
    let (rows, intervals, window) = flat_run(MockOptions {
        error_rate: 0.10,
        hang_rate: 0.05,
        ..MockOptions::default()
    });
    let (ok, failed, skipped) = common::outcome_counts(&rows);
    assert!(
        ok > 0 && failed > 1_000 && skipped > 200,
        "ok {ok}, failed {failed}, skipped {skipped}: the mock's faults did not show"
    );
    for (outcome, tag) in [
        ("ok", "end_to_end"),
        ("failed", "failed_end_to_end"),
        ("skipped", "skipped"),
    ] {
        let ready = ready_times(&rows, window.0, outcome);
        let from_log = log_per_second(&intervals, tag);
        assert_same_per_second(outcome, &ready, &from_log);
    }
}

/// A flat 4,000 jobs/s run of 5 s (1,000 devices every 250 ms) against a mock
/// compute node with `compute` options; its rows (checked tick by tick), its
/// interval log and its window.
fn flat_run(
    compute: MockOptions,
) -> (Vec<common::Row>, Vec<percore::report::Interval>, (i64, i64)) {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, compute);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let log_path = dir.path().join("histograms.hlog");
    let config = common::config(
        vec![common::class(METER, source.addr, compute.addr)],
        1_000,
        db.clone(),
        GrpcConfig::default(),
    );
    let options = percore::dispatcher::RunOptions {
        interval_log: Some(log_path.clone()),
        ..common::run_options(Duration::from_secs(5))
    };
    let summary = percore::dispatcher::run(&config, &options).expect("the run succeeds");
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    let text = std::fs::read(&log_path).expect("the interval log was written");
    let intervals = percore::report::hlog::read_log(&text, &log_path).expect("the log reads back");
    (rows, intervals, summary.window_ms)
}

/// When each row of `outcome` had its result ready, in µs after the run's
/// start (a skipped tick's: when it was skipped), in order.
fn ready_times(rows: &[common::Row], start_ms: i64, outcome: &str) -> Vec<i64> {
    let start_us = start_ms * 1_000;
    let mut ready: Vec<i64> = rows
        .iter()
        .filter(|row| row.outcome == outcome)
        .map(|row| {
            let after_tick_us = match outcome {
                "skipped" => row.schedule_lag_us,
                _ => row.end_to_end_us.expect("a row that ran has its latency"),
            };
            row.tick_ms * 1_000 + after_tick_us - start_us
        })
        .collect();
    ready.sort_unstable();
    ready
}

/// Samples of the log's `tag` histograms by second.
fn log_per_second(intervals: &[percore::report::Interval], tag: &str) -> BTreeMap<u64, u64> {
    let mut per_second = BTreeMap::new();
    for interval in intervals.iter().filter(|interval| interval.stage == tag) {
        *per_second.entry(interval.start.as_secs()).or_insert(0) += interval.histogram.len();
    }
    per_second
}

/// How far before a second's edge a result may be ready and still be logged
/// in the next second: the run's start in whole ms against the shard's clock.
const EDGE_EARLY_US: i64 = 5_000;
/// How far after a second's edge a result may be ready and still be logged in
/// the second before: a shard swaps its interval out on a timer, which a loaded
/// machine may run a little late.
const EDGE_LATE_US: i64 = 50_000;

/// The log holds the rows' jobs, each in the second its result was ready in:
/// the same total, and by the end of each second the log has counted at least
/// the rows ready before its edge and at most those ready just after it (a
/// result ready at the edge may be counted on either side of it). Up to the
/// end of every second, so a job counted a second off fails the check.
fn assert_same_per_second(what: &str, ready_us: &[i64], log: &BTreeMap<u64, u64>) {
    let mut rows = BTreeMap::new();
    for &ready in ready_us {
        *rows
            .entry((ready.max(0) / 1_000_000) as u64)
            .or_insert(0_u64) += 1;
    }
    eprintln!("{what} per second, rows: {rows:?}\n{what} per second, log:  {log:?}");
    assert_eq!(
        ready_us.len() as u64,
        log.values().sum::<u64>(),
        "{what}: the same jobs in all"
    );
    let last = rows.keys().chain(log.keys()).max().copied().unwrap_or(0);
    let mut logged = 0;
    for second in 0..=last {
        logged += log.get(&second).copied().unwrap_or(0);
        let edge = (second as i64 + 1) * 1_000_000;
        let surely_before = ready_us.partition_point(|&ready| ready < edge - EDGE_EARLY_US) as u64;
        let maybe_before = ready_us.partition_point(|&ready| ready < edge + EDGE_LATE_US) as u64;
        assert!(
            (surely_before..=maybe_before).contains(&logged),
            "{what}: by the end of second {second} the log counted {logged}; \
             {surely_before} rows were ready {EDGE_EARLY_US} µs before it, \
             {maybe_before} {EDGE_LATE_US} µs after it"
        );
    }
}
