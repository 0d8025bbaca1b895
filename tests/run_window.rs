//! A run lasts the window it was asked for, even when its devices' ticks run
//! out early (a long period, few devices): `--duration 3` with one tick per
//! device per minute still runs 3 s and reports a 3 s window, instead of ending
//! after the last tick as if it had crashed.

mod common;

use std::time::{Duration, Instant};

use common::ClassSpec;
use percore::config::GrpcConfig;
use percore::mock::{MockKind, MockOptions};

const SLOW_METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 60_000,
    deadline_ms: 1_000,
};

#[test]
fn a_run_waits_out_its_window_after_the_last_tick() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config = common::config(
        vec![common::class(SLOW_METER, source.addr, compute.addr)],
        // Five devices, one tick a minute each: most 3 s windows hold none.
        5,
        db.clone(),
        GrpcConfig::default(),
    );
    let started = Instant::now();
    let summary = common::run(&config, Duration::from_secs(3));
    let took = started.elapsed();
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);

    let (start_ms, end_ms) = summary.window_ms;
    assert_eq!(end_ms - start_ms, 3_000, "the window asked for");
    assert!(took >= Duration::from_secs(3), "the run lasted {took:?}");
    let due = common::expected_ticks(&config, summary.window_ms);
    assert_eq!(rows.len(), due.len(), "every due tick (if any) is a row");
    common::assert_counts(&summary, &rows);
}
