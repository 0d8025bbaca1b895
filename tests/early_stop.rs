//! Stopping a run early (Ctrl-C, SIGTERM): every shard stops at the same tick time,
//! the jobs in flight finish and are written, and the reported window is exactly
//! the ticks that were dispatched.

mod common;

use std::time::Duration;

use common::ClassSpec;
use percore::config::GrpcConfig;
use percore::dispatcher::{self, Load, RunOptions};
use percore::mock::{MockKind, MockOptions, ServiceTime};

const SENSOR: ClassSpec = ClassSpec {
    name: "sensor",
    model: "anomaly-ae",
    period_ms: 300,
    deadline_ms: 300,
};

#[test]
fn a_stop_request_ends_every_shard_at_one_tick_time_and_loses_nothing() {
    let options = MockOptions {
        payload_bytes: 128,
        // Jobs are still in flight when the stop arrives.
        service_time: ServiceTime::Fixed(Duration::from_millis(20)),
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, options.clone());
    let compute = common::start_mock(MockKind::Compute, options);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let classes = vec![common::class(SENSOR, source.addr, compute.addr)];
    let config = common::config(classes, 2_000, db.clone(), GrpcConfig::default());

    let (stop_tx, stop_rx) = flume::bounded(1);
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        let _ = stop_tx.send(());
    });
    let options = RunOptions {
        // Far longer than the test: only the stop request can end it in time.
        duration: Some(Duration::from_secs(600)),
        load: Load::Ticks,
        print_status: false,
        stop: Some(stop_rx),
        ..RunOptions::default()
    };
    let summary = dispatcher::run(&config, &options).expect("the run succeeds");
    stopper.join().expect("the stopper thread");
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);

    assert!(
        summary.elapsed < Duration::from_secs(60),
        "the run ignored the stop request: window of {:?}",
        summary.elapsed
    );
    assert!(summary.elapsed >= Duration::from_millis(1_000));
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    assert!(rows.iter().any(|row| row.outcome == "ok"));
}
