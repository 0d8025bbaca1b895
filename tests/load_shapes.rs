//! Open- and closed-loop load as `percore bench` drives it: open loop starts every
//! planned arrival, on time or late, whatever is in flight (no coordinated
//! omission); closed loop keeps the dispatcher busy and counts every job.

use std::time::Duration;

use percore::bench::{Bench, BenchOptions, Level};

/// A bench on built-in mocks; the returned directory holds its SQLite files and
/// is removed when dropped.
fn bench(shards: usize, poisson: bool) -> (Bench, tempfile::TempDir) {
    let shards = shards.min(percore::tuning::allowed_cpus().len());
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let bench = Bench::start(BenchOptions {
        shards,
        poisson,
        duration: Duration::from_secs(2),
        service_time: Duration::from_micros(500),
        payload_bytes: 64,
        devices: 10_000,
        external: None,
        postgres: None,
        sink_commit_delay: Duration::ZERO,
        scratch_dir: scratch.path().to_path_buf(),
    })
    .expect("the bench starts");
    (bench, scratch)
}

#[test]
fn constant_open_loop_starts_exactly_the_planned_arrivals() {
    let (bench, _scratch) = bench(2, false);
    let summary = bench.run(Level::Rate(1_000.0)).expect("the level runs");
    bench.stop();
    // 1,000/s over 2 s, split evenly: every shard plans arrivals at t0 + k * gap
    // for all k with t0 + k * gap < end, i.e. exactly rate * duration of them.
    assert_eq!(summary.counters.jobs(), 2_000, "{}", summary.totals_line());
    assert_eq!(summary.rows_written, 2_000);
    assert_eq!(summary.counters.skipped, 0);
    // Every job's latency counts from its planned arrival.
    assert_eq!(
        summary.latency.schedule_lag.len(),
        summary.counters.ok + summary.counters.failed
    );
}

#[test]
fn poisson_open_loop_arrives_at_the_asked_rate_on_average() {
    let (bench, _scratch) = bench(1, true);
    let summary = bench.run(Level::Rate(2_000.0)).expect("the level runs");
    bench.stop();
    // 4,000 expected; a Poisson count's standard deviation is ~63: allow 5 sigma.
    let jobs = summary.counters.jobs() as i64;
    assert!(
        (jobs - 4_000).abs() < 320,
        "{jobs} arrivals for an expected 4,000"
    );
    assert_eq!(summary.rows_written as i64, jobs);
}

#[test]
fn closed_loop_counts_every_job_it_runs() {
    let (bench, _scratch) = bench(1, false);
    let summary = bench.run(Level::Concurrency(8)).expect("the level runs");
    bench.stop();
    // With 8 in flight and 0.5 ms per call, thousands of jobs fit in 2 s.
    assert!(summary.counters.ok > 1_000, "{}", summary.totals_line());
    assert_eq!(summary.counters.jobs(), summary.rows_written);
    assert_eq!(summary.counters.skipped, 0);
}
