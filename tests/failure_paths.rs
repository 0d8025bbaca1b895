//! Failing compute nodes: a node that errors and hangs on a share of its calls, and
//! a node that is down when the run starts and comes up during it. The run must
//! complete, every due tick must still become exactly one row, and each failure
//! must carry the reason that explains it.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::{ClassSpec, Row, SKIP_PREVIOUS_RUNNING};
use percore::config::GrpcConfig;
use percore::dispatcher;
use percore::mock::{MockKind, MockOptions};

/// Bytes the mock source returns per fetch.
const PAYLOAD_BYTES: usize = 128;

const INJECTED_INTERNAL: &str = "infer: grpc status 13 INTERNAL: injected failure";
const INFER_DEADLINE: &str = "infer: deadline exceeded";

#[test]
fn errors_and_hangs_become_failed_rows_with_their_reasons() {
    let camera = ClassSpec {
        name: "camera",
        model: "resnet50",
        period_ms: 500,
        // Far below the hang: hung calls end at the deadline.
        deadline_ms: 200,
    };
    let source = common::start_mock(
        MockKind::Source,
        MockOptions {
            payload_bytes: PAYLOAD_BYTES,
            ..MockOptions::default()
        },
    );
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            error_rate: 0.10,
            hang_rate: 0.05,
            hang_for: Duration::from_secs(60),
            ..MockOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let classes = vec![common::class(camera, source.addr, compute.addr)];
    let config = common::config(classes, 1_000, db.clone(), GrpcConfig::default());

    let summary = common::run(&config, Duration::from_secs(3));
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    eprintln!("{}", summary.totals_line());

    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    common::assert_shard_placement(&summary, &rows);
    common::assert_ok_rows_are_right(&rows, PAYLOAD_BYTES);

    let failed = common::reasons(&rows, "failed");
    let internal = failed.get(INJECTED_INTERNAL).copied().unwrap_or(0);
    let deadline = failed.get(INFER_DEADLINE).copied().unwrap_or(0);
    assert!(internal > 0, "no INTERNAL failure among {failed:?}");
    assert!(deadline > 0, "no deadline failure among {failed:?}");
    assert_eq!(
        internal + deadline,
        summary.counters.failed,
        "failures other than the injected ones: {failed:?}"
    );
    assert!(summary.counters.ok > 0, "no ok row");
    for reason in common::reasons(&rows, "skipped").keys() {
        assert_eq!(reason, SKIP_PREVIOUS_RUNNING);
    }
    // INTERNAL is drawn on 10% of the infer calls whatever the timing; allow a wide
    // margin (the expected count is about 600, its standard deviation about 23).
    let infer_calls = summary.counters.ok + summary.counters.failed;
    assert!(
        internal * 100 >= infer_calls * 5 && internal * 100 <= infer_calls * 15,
        "{internal} INTERNAL failures out of {infer_calls} infer calls, expected about 10%"
    );
    // Failed rows: the fetch succeeded and was timed, the infer call was timed
    // until it failed.
    for row in rows.iter().filter(|row| row.outcome == "failed") {
        assert!(
            row.fetch_us.is_some() && row.infer_us.is_some() && row.output.is_none(),
            "failed infer row {row:?}"
        );
        assert!(row.end_to_end_us.is_some(), "failed row {row:?}");
    }
}

/// A port nothing listens on: bound by the OS, then released.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("the port's address")
}

/// How many failed rows with a connect error the (running) sink has written so far;
/// `None` while the database or its table does not exist yet.
fn connect_errors_so_far(db: &std::path::Path) -> Option<u64> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.query_row(
        "SELECT count(*) FROM jobs WHERE outcome = 'failed' AND reason LIKE '%connect error%'",
        [],
        |row| row.get(0),
    )
    .ok()
}

#[test]
fn a_compute_node_down_at_start_fails_jobs_until_it_comes_up() {
    let camera = ClassSpec {
        name: "camera",
        model: "resnet50",
        period_ms: 500,
        deadline_ms: 500,
    };
    let source = common::start_mock(
        MockKind::Source,
        MockOptions {
            payload_bytes: PAYLOAD_BYTES,
            ..MockOptions::default()
        },
    );
    let compute_addr = free_port();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let classes = vec![common::class(camera, source.addr, compute_addr)];
    let config = common::config(classes, 500, db.clone(), GrpcConfig::default());

    let started = Instant::now();
    let run = {
        let config = config.clone();
        std::thread::spawn(move || {
            dispatcher::run(&config, &common::run_options(Duration::from_secs(5)))
        })
    };
    // Bring the node up once the run has recorded that it is down, and not before
    // 1.5 s into the run; give up if nothing shows within 10 s.
    loop {
        let seen = connect_errors_so_far(&db).unwrap_or(0);
        if seen > 0 && started.elapsed() >= Duration::from_millis(1500) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no connect error written within 10 s of the start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let compute = common::start_mock_at(MockKind::Compute, compute_addr, MockOptions::default());
    let summary = match run.join().expect("the run thread panicked") {
        Ok(summary) => summary,
        Err(error) => panic!("the run failed: {error}"),
    };
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    eprintln!("{}", summary.totals_line());

    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    common::assert_shard_placement(&summary, &rows);
    common::assert_ok_rows_are_right(&rows, PAYLOAD_BYTES);

    // The only failure: the refused connect, naming the node.
    let refused = format!("infer: connect error to {compute_addr}: connection refused");
    let failed = common::reasons(&rows, "failed");
    assert_eq!(
        failed.keys().collect::<Vec<_>>(),
        [&refused],
        "failure reasons"
    );
    assert_eq!(summary.counters.skipped, 0, "skipped ticks");
    assert!(summary.counters.ok > 0, "no ok row after the node came up");

    // Once up, the node serves the rest of the run: every device's last tick is ok,
    // and the last failure is older than the last success.
    let mut last_of_device: std::collections::BTreeMap<&str, &Row> = Default::default();
    for row in &rows {
        last_of_device.insert(&row.device_id, row);
    }
    for row in last_of_device.values() {
        assert_eq!(row.outcome, "ok", "the last tick of {row:?}");
    }
    let last = |outcome: &str| {
        rows.iter()
            .filter(|row| row.outcome == outcome)
            .map(|row| row.tick_ms)
            .max()
    };
    assert!(last("failed") < last("ok"));
}
