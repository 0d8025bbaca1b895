//! A class with two compute nodes, one of them dead: calls refused by the dead
//! node are retried on the live one within the deadline, so no job fails, and the
//! retries are counted.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::ClassSpec;
use percore::config::GrpcConfig;
use percore::mock::{MockKind, MockOptions};

const CAMERA: ClassSpec = ClassSpec {
    name: "camera",
    model: "resnet50",
    period_ms: 250,
    deadline_ms: 250,
};

/// A loopback address nothing listens on.
fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

#[test]
fn calls_refused_by_a_dead_node_are_retried_on_the_live_one() {
    let options = MockOptions {
        payload_bytes: 64,
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, options.clone());
    let compute = common::start_mock(MockKind::Compute, options);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let mut class = common::class(CAMERA, source.addr, compute.addr);
    class.compute_nodes = vec![dead_address(), compute.addr];
    let config = common::config(vec![class], 500, db.clone(), GrpcConfig::default());

    let summary = common::run(&config, Duration::from_secs(3));
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);

    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    assert_eq!(
        common::reasons(&rows, "failed"),
        Default::default(),
        "a live replica was there"
    );
    assert!(summary.counters.retries > 0, "no call was retried");
    // The dead node is backed off after a refusal, so most calls go straight to
    // the live one: far fewer retries than jobs.
    assert!(summary.counters.retries < summary.counters.ok / 2);
}

#[test]
fn without_retries_the_dead_node_fails_its_share_of_jobs() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let mut class = common::class(CAMERA, source.addr, compute.addr);
    let dead = dead_address();
    class.compute_nodes = vec![dead, compute.addr];
    let grpc = GrpcConfig {
        retries: 0,
        ..GrpcConfig::default()
    };
    let config = common::config(vec![class], 500, db.clone(), grpc);

    let summary = common::run(&config, Duration::from_secs(2));
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);

    common::assert_counts(&summary, &rows);
    assert_eq!(summary.counters.retries, 0);
    let failures = common::reasons(&rows, "failed");
    let refused = format!("infer: connect error to {dead}: connection refused");
    assert!(failures.contains_key(&refused), "{failures:?}");
    assert_eq!(failures.len(), 1, "{failures:?}");
}
