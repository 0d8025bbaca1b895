//! A compute node that answers with garbage: bytes that are not HTTP/2, cut-off
//! gRPC frames, messages over the size limit, wrong shapes, dimensions whose
//! product overflows. Each becomes failed rows with a reason that says what was
//! wrong; the connection is replaced, the shards keep running, nothing panics,
//! and every due tick is still exactly one row.

mod common;

use std::time::Duration;

use common::ClassSpec;
use percore::config::{GrpcConfig, Upstream};
use percore::mock::{Fault, MockKind, MockOptions};

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 250,
    deadline_ms: 250,
};

/// Runs 1.5 s of 400 devices against one compute node with `options`; returns
/// the failure reasons and the ok rows.
fn run_against(options: MockOptions) -> (std::collections::BTreeMap<String, u64>, u64) {
    run_devices_against(400, options)
}

fn run_devices_against(
    devices: usize,
    options: MockOptions,
) -> (std::collections::BTreeMap<String, u64>, u64) {
    run_between(devices, MockOptions::default(), options)
}

/// Runs 1.5 s of `devices` between a data source and a compute node with
/// these options; returns the failure reasons and the ok rows.
fn run_between(
    devices: usize,
    source: MockOptions,
    options: MockOptions,
) -> (std::collections::BTreeMap<String, u64>, u64) {
    let source = common::start_mock(MockKind::Source, source);
    let compute = common::start_mock(MockKind::Compute, options);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let mut class = common::class(METER, source.addr, compute.addr);
    // A single replica is never ejected for good: it stays the class's node.
    class.upstream = Upstream::default();
    let grpc = GrpcConfig {
        max_message_bytes: 64 * 1024,
        ..GrpcConfig::default()
    };
    let config = common::config(vec![class], devices, db.clone(), grpc);
    let summary = common::run(&config, Duration::from_millis(1_500));
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    let (ok, _, _) = common::outcome_counts(&rows);
    (common::reasons(&rows, "failed"), ok)
}

fn assert_all_failed_with(
    reasons: &std::collections::BTreeMap<String, u64>,
    ok: u64,
    needle: &str,
) {
    assert_eq!(ok, 0, "no answer was usable: {reasons:?}");
    assert!(!reasons.is_empty(), "jobs ran and failed");
    for reason in reasons.keys() {
        assert!(reason.contains(needle), "{reason:?} should say {needle:?}");
    }
}

#[test]
fn bytes_that_are_not_http2_break_the_connection_and_a_new_one_takes_over() {
    // Every connection turns to garbage after 20 calls: jobs keep succeeding on
    // the fresh connections that replace each broken one.
    let (reasons, ok) = run_against(MockOptions {
        garbage_after_calls: Some(20),
        ..MockOptions::default()
    });
    assert!(ok > 100, "{ok} ok rows: broken connections were replaced");
    for reason in reasons.keys() {
        assert!(
            reason.starts_with("infer: connection to ") || reason.contains("did not take the call"),
            "a broken connection is named as such: {reason:?}"
        );
    }
}

#[test]
fn a_cut_off_grpc_frame_is_a_protocol_error() {
    let (reasons, ok) = run_against(MockOptions {
        fault: Some(Fault::TruncatedFrame),
        ..MockOptions::default()
    });
    assert_all_failed_with(&reasons, ok, "infer: protocol error");
}

#[test]
fn a_reply_over_the_message_limit_is_refused_without_reading_it() {
    // 400 replies a second of 256 KiB each: the limit, not the load, fails them.
    let (reasons, ok) = run_devices_against(
        100,
        MockOptions {
            oversized_reply_bytes: Some(256 * 1024),
            ..MockOptions::default()
        },
    );
    assert_all_failed_with(
        &reasons,
        ok,
        "exceeds the maximum message size of 65536 bytes",
    );
}

#[test]
fn a_wrong_shape_fails_the_output_check() {
    let (reasons, ok) = run_against(MockOptions {
        fault: Some(Fault::OutputShape(vec![1, 3])),
        ..MockOptions::default()
    });
    assert_all_failed_with(&reasons, ok, "infer: bad response");
}

#[test]
fn dimensions_whose_product_overflows_fail_with_the_reason() {
    let (reasons, ok) = run_against(MockOptions {
        fault: Some(Fault::OutputShape(vec![i64::MAX, 4])),
        ..MockOptions::default()
    });
    assert_all_failed_with(&reasons, ok, "infer: bad response");
}

#[test]
fn a_bytes_output_whose_prefixes_overrun_fails_the_tensor_check() {
    let (reasons, ok) = run_against(MockOptions {
        fault: Some(Fault::OverrunningBytes),
        ..MockOptions::default()
    });
    assert_all_failed_with(
        &reasons,
        ok,
        "infer: bad response: output \"OUTPUT0\": tensor of BYTES [1, 2]: 13 bytes are not \
         whole length-prefixed elements",
    );
}

#[test]
fn a_fetched_bytes_tensor_whose_prefixes_overrun_is_not_forwarded() {
    let (reasons, ok) = run_between(
        400,
        MockOptions {
            fault: Some(Fault::OverrunningBytes),
            ..MockOptions::default()
        },
        MockOptions::default(),
    );
    assert_all_failed_with(
        &reasons,
        ok,
        "fetch: bad response: tensor of BYTES [1, 2]: 13 bytes are not whole length-prefixed \
         elements",
    );
}

#[test]
fn a_node_that_speaks_http1_is_named_as_such() {
    let (reasons, ok) = run_against(MockOptions {
        http1_only: true,
        ..MockOptions::default()
    });
    assert_all_failed_with(
        &reasons,
        ok,
        "the peer does not speak HTTP/2 (h2 handshake: ",
    );
}
