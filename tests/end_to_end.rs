//! The whole pipeline on loopback: a mock data source and compute node, the
//! dispatcher on two shards, and the SQLite sink. Every due tick must become exactly
//! one row, on the right shard, with the right device's model output.

mod common;

use std::time::Duration;

use common::{ClassSpec, SKIP_PREVIOUS_RUNNING};
use percore::config::GrpcConfig;
use percore::mock::{MockKind, MockOptions};

/// Bytes the mock source returns per fetch.
const PAYLOAD_BYTES: usize = 256;

const CAMERA: ClassSpec = ClassSpec {
    name: "camera",
    model: "resnet50",
    period_ms: 200,
    deadline_ms: 200,
};

const THERMOSTAT: ClassSpec = ClassSpec {
    name: "thermostat",
    model: "forecast-lstm",
    period_ms: 500,
    deadline_ms: 500,
};

#[test]
fn every_due_tick_becomes_one_correct_row() {
    let options = MockOptions {
        payload_bytes: PAYLOAD_BYTES,
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, options.clone());
    let compute = common::start_mock(MockKind::Compute, options);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let classes = vec![
        common::class(CAMERA, source.addr, compute.addr),
        common::class(THERMOSTAT, source.addr, compute.addr),
    ];
    let config = common::config(classes, 1_000, db.clone(), GrpcConfig::default());

    let summary = common::run(&config, Duration::from_secs(3));
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);

    assert_eq!(summary.shards, common::shard_cpus().len());
    // (a) every tick due in the window exactly once, nothing else.
    common::assert_exact_ticks(&config, &summary, &rows);
    // (b) outcomes, rows, rows_written and the shards' counters agree.
    common::assert_counts(&summary, &rows);
    // (c) each device on the one shard its id hashes to.
    common::assert_shard_placement(&summary, &rows);
    // (d) ok rows hold their own device's output and every stage's latency.
    common::assert_ok_rows_are_right(&rows, PAYLOAD_BYTES);
    // (e) class and model columns follow the device's class.
    common::assert_classes(&config, &rows);

    // Healthy mocks: both classes succeed, and the only failure a loaded machine
    // may cause is a missed deadline (or a tick skipped behind a slow job).
    for class in [CAMERA, THERMOSTAT] {
        let ok = rows
            .iter()
            .filter(|row| row.class == class.name && row.outcome == "ok")
            .count();
        assert!(ok > 0, "no ok row for class {}", class.name);
    }
    for reason in common::reasons(&rows, "failed").keys() {
        assert!(
            reason == "fetch: deadline exceeded" || reason == "infer: deadline exceeded",
            "unexpected failure with healthy mocks: {reason}"
        );
    }
    for reason in common::reasons(&rows, "skipped").keys() {
        assert_eq!(reason, SKIP_PREVIOUS_RUNNING);
    }
}
