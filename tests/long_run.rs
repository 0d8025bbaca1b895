//! A run that lasts: resident memory stays flat after warm-up. percore runs for
//! weeks, so nothing may grow with the run's length (the per-second histograms
//! once took ~0.9 MB a second): per-second latencies are streamed to the
//! interval log as each second closes, and only a few seconds stay in memory.

mod common;

use std::time::{Duration, Instant};

use percore::config::GrpcConfig;
use percore::dispatcher::{self, Load, RunOptions};
use percore::mock::{MockKind, MockOptions};

/// How much resident memory may grow between 15 s and 60 s of a run. Larger
/// than allocator noise and the sink's page cache filling (bounded by its
/// `cache_size`), far below the ~39 MB that 45 s of per-second histograms took.
const GROWTH_BOUND_KIB: u64 = 6 * 1024;

#[test]
fn resident_memory_stays_flat_over_a_minute_at_a_thousand_jobs_a_second() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    // 1,000 devices ticking once a second: ~1,000 jobs/s.
    let spec = common::ClassSpec {
        name: "meter",
        model: "mock",
        period_ms: 1_000,
        deadline_ms: 500,
    };
    let config = common::config(
        vec![common::class(spec, source.addr, compute.addr)],
        1_000,
        dir.path().join("jobs.db"),
        GrpcConfig::default(),
    );
    let log = dir.path().join("histograms.hlog");
    let options = RunOptions {
        duration: Some(Duration::from_secs(62)),
        load: Load::Ticks,
        interval_log: Some(log.clone()),
        ..RunOptions::default()
    };
    let started = Instant::now();
    let run = std::thread::spawn(move || dispatcher::run(&config, &options));

    std::thread::sleep(Duration::from_secs(15).saturating_sub(started.elapsed()));
    let at_15_s = common::rss_kib();
    std::thread::sleep(Duration::from_secs(60).saturating_sub(started.elapsed()));
    let at_60_s = common::rss_kib();

    let summary = run
        .join()
        .expect("the run thread")
        .expect("the run succeeds");
    source.stop();
    compute.stop();
    assert!(
        summary.counters.ok > 55_000,
        "the run did not keep ~1,000 jobs/s: {}",
        summary.totals_line()
    );
    let growth = at_60_s.saturating_sub(at_15_s);
    eprintln!("RSS at 15 s {at_15_s} KiB, at 60 s {at_60_s} KiB: growth {growth} KiB");
    assert!(
        growth <= GROWTH_BOUND_KIB,
        "RSS grew {growth} KiB from 15 s ({at_15_s} KiB) to 60 s ({at_60_s} KiB); bound {GROWTH_BOUND_KIB} KiB"
    );
    // What is no longer kept in memory is on disk: one interval per stage per second.
    let recording = summary.recording().expect("the interval log reads back");
    let seconds: std::collections::BTreeSet<u64> = recording
        .intervals
        .iter()
        .map(|interval| interval.start.as_secs())
        .collect();
    assert!(seconds.len() >= 60, "{} seconds in the log", seconds.len());
    // Every second of the 62 s window has all five stages; after it (jobs
    // draining, the writer's last commits) only the stages that had samples.
    let in_window = recording
        .intervals
        .iter()
        .filter(|interval| interval.start.as_secs() < 62)
        .count();
    assert_eq!(in_window, 62 * 5);
}
