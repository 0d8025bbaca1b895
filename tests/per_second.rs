//! The per-second record of a flat-rate run matches the rows: each second of the
//! interval log holds the jobs whose results were ready in that second of the
//! run, within 2 % (the first and last seconds included).

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
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let log_path = dir.path().join("histograms.hlog");
    // 1,000 devices every 250 ms: a flat 4,000 jobs/s.
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

    // Rows by the second of the run their result was ready in.
    let start_us = summary.window_ms.0 * 1_000;
    let mut from_rows: BTreeMap<u64, u64> = BTreeMap::new();
    for row in rows.iter().filter(|row| row.outcome == "ok") {
        let ready_us = row.tick_ms * 1_000 + row.end_to_end_us.expect("an ok row has its latency");
        let second = ((ready_us - start_us).max(0) / 1_000_000) as u64;
        *from_rows.entry(second).or_insert(0) += 1;
    }
    let text = std::fs::read(&log_path).expect("the interval log was written");
    let intervals = percore::report::hlog::read_log(&text, &log_path).expect("the log reads back");
    let mut from_log: BTreeMap<u64, u64> = BTreeMap::new();
    for interval in intervals
        .iter()
        .filter(|interval| interval.stage == "end_to_end")
    {
        *from_log.entry(interval.start.as_secs()).or_insert(0) += interval.histogram.len();
    }
    eprintln!("per second, rows: {from_rows:?}\nper second, log:  {from_log:?}");
    assert_eq!(
        from_rows.keys().collect::<Vec<_>>(),
        from_log.keys().collect::<Vec<_>>(),
        "the same seconds"
    );
    for (second, &count) in &from_rows {
        let logged = from_log[second];
        let off = (logged as f64 - count as f64).abs() / count.max(1) as f64;
        assert!(
            off <= 0.02,
            "second {second}: {logged} in the log, {count} rows ready in it ({:.1} % off)",
            100.0 * off
        );
    }
}
