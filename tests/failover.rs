//! A class with two compute nodes, one of them dead from the start: the shards'
//! probes find it before the first tick, so no job goes there and none fails,
//! with retries or without; every row names the live node as the one that
//! answered.

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

fn run_with_a_dead_replica(retries: u32) {
    let options = MockOptions {
        payload_bytes: 64,
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, options.clone());
    let compute = common::start_mock(MockKind::Compute, options);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let mut class = common::class(CAMERA, source.addr, compute.addr);
    let dead = dead_address();
    class.compute_nodes = vec![dead.into(), compute.addr.into()];
    let grpc = GrpcConfig {
        retries,
        ..GrpcConfig::default()
    };
    let config = common::config(vec![class], 500, db.clone(), grpc);

    let summary = common::run(&config, Duration::from_secs(3));
    let live = compute.addr.to_string();
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
    for row in &rows {
        assert_eq!(row.compute_node.as_deref(), Some(live.as_str()), "{row:?}");
        assert_eq!(row.attempts, 2, "one fetch and one infer: {row:?}");
    }
    assert_eq!(summary.counters.retries, 0, "no call went to {dead}");
}

#[test]
fn a_dead_replica_found_by_the_probe_gets_no_jobs() {
    run_with_a_dead_replica(1);
}

#[test]
fn without_retries_a_dead_replica_still_costs_no_job() {
    run_with_a_dead_replica(0);
}
