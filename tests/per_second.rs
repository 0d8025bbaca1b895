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
        let from_rows = rows_per_second(&rows, window.0, outcome);
        let from_log = log_per_second(&intervals, tag);
        assert_same_per_second(outcome, &from_rows, &from_log);
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
        let from_rows = rows_per_second(&rows, window.0, outcome);
        let from_log = log_per_second(&intervals, tag);
        assert_same_per_second(outcome, &from_rows, &from_log);
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

/// Rows of `outcome` by the second of the run their result was ready in (a
/// skipped tick's: when it was skipped).
fn rows_per_second(rows: &[common::Row], start_ms: i64, outcome: &str) -> BTreeMap<u64, u64> {
    let start_us = start_ms * 1_000;
    let mut per_second = BTreeMap::new();
    for row in rows.iter().filter(|row| row.outcome == outcome) {
        let after_tick_us = match outcome {
            "skipped" => row.schedule_lag_us,
            _ => row.end_to_end_us.expect("a row that ran has its latency"),
        };
        let ready_us = row.tick_ms * 1_000 + after_tick_us;
        let second = ((ready_us - start_us).max(0) / 1_000_000) as u64;
        *per_second.entry(second).or_insert(0) += 1;
    }
    per_second
}

/// Samples of the log's `tag` histograms by second.
fn log_per_second(intervals: &[percore::report::Interval], tag: &str) -> BTreeMap<u64, u64> {
    let mut per_second = BTreeMap::new();
    for interval in intervals.iter().filter(|interval| interval.stage == tag) {
        *per_second.entry(interval.start.as_secs()).or_insert(0) += interval.histogram.len();
    }
    per_second
}

/// The same seconds and the same total, each second within 2 % — or, for a
/// second that holds only a few (the last jobs draining after the window),
/// within one job or 0.5 % of its neighbours' count: a job that ends within
/// a few ms of a second's end may be counted in the next, as the shard's
/// report for that second can leave a moment before it.
fn assert_same_per_second(what: &str, rows: &BTreeMap<u64, u64>, log: &BTreeMap<u64, u64>) {
    eprintln!("{what} per second, rows: {rows:?}\n{what} per second, log:  {log:?}");
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        log.keys().collect::<Vec<_>>(),
        "{what}: the same seconds"
    );
    assert_eq!(
        rows.values().sum::<u64>(),
        log.values().sum::<u64>(),
        "{what}: the same jobs in all"
    );
    for (second, &count) in rows {
        let logged = log[second];
        let off = (logged as f64 - count as f64).abs() / count.max(1) as f64;
        let neighbours = [second.checked_sub(1), second.checked_add(1)]
            .into_iter()
            .flatten()
            .filter_map(|next| rows.get(&next))
            .max()
            .copied()
            .unwrap_or(0);
        let boundary_slack = (neighbours / 200).max(1);
        assert!(
            off <= 0.02 || logged.abs_diff(count) <= boundary_slack,
            "{what}, second {second}: {logged} in the log, {count} rows ready in it ({:.1} % off)",
            100.0 * off
        );
    }
}
