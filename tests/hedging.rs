//! Slow attempts: a replica that sometimes hangs. With a per-attempt timeout the
//! hung attempt is abandoned and retried on another replica; with hedging a
//! second attempt starts after a delay and the first answer wins. Either way no
//! job fails, and the attempts are counted in the rows. Round-robin keeps the
//! hanging replica's share at half (P2C would learn to avoid it, and then there
//! would be little left to hedge).

mod common;

use std::time::Duration;

use common::ClassSpec;
use percore::config::{BalancerKind, GrpcConfig, Hedge, Upstream};
use percore::mock::{MockKind, MockOptions, ServiceTime};

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 500,
    deadline_ms: 500,
};

/// Runs 3 s of 500 devices over a healthy replica and one that hangs 20 % of
/// its calls for 10 s; returns the rows.
fn run_with(upstream: Upstream) -> (Vec<common::Row>, percore::summary::RunSummary) {
    let quick = MockOptions {
        service_time: ServiceTime::Fixed(Duration::from_millis(1)),
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let healthy = common::start_mock(MockKind::Compute, quick.clone());
    let hanging = common::start_mock(
        MockKind::Compute,
        MockOptions {
            hang_rate: 0.2,
            hang_for: Duration::from_secs(10),
            ..quick
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let mut class = common::class(METER, source.addr, healthy.addr);
    class.compute_nodes = vec![healthy.addr.into(), hanging.addr.into()];
    class.upstream = upstream;
    let config = common::config(vec![class], 500, db.clone(), GrpcConfig::default());
    let summary = common::run(&config, Duration::from_secs(3));
    source.stop();
    healthy.stop();
    hanging.stop();
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    (rows, summary)
}

fn p99_us(rows: &[common::Row]) -> i64 {
    let mut latencies: Vec<i64> = rows.iter().filter_map(|row| row.end_to_end_us).collect();
    latencies.sort_unstable();
    latencies[(latencies.len() - 1) * 99 / 100]
}

#[test]
fn a_hedge_after_a_delay_answers_for_a_hung_attempt() {
    let (rows, summary) = run_with(Upstream {
        hedge: Some(Hedge::After(Duration::from_millis(30))),
        balancer: BalancerKind::RoundRobin,
        ..Upstream::default()
    });
    let hedged = rows.iter().filter(|row| row.attempts == 3).count();
    let p99 = p99_us(&rows);
    eprintln!(
        "hedging: {hedged} hedged jobs of {}, p99 {p99} µs, retries {}",
        rows.len(),
        summary.counters.retries
    );
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    // A fifth of the hanging replica's half: ~300 of 3,000.
    assert!(hedged > 100, "hung attempts were hedged: {hedged}");
    // A hung attempt costs the hedge delay, not the deadline.
    assert!(p99 < 250_000, "p99 {p99} µs");
}

#[test]
fn an_attempt_timeout_moves_a_hung_call_to_another_replica() {
    // 150 ms: far above a healthy 1 ms call even on a loaded machine (at 50 ms a
    // busy CI box timed out a few healthy attempts once the hanging replica was
    // ejected and there was nowhere left to retry), far below the 500 ms deadline.
    let (rows, summary) = run_with(Upstream {
        attempt_timeout: Some(Duration::from_millis(150)),
        balancer: BalancerKind::RoundRobin,
        ..Upstream::default()
    });
    let retried = rows.iter().filter(|row| row.attempts == 3).count();
    eprintln!(
        "attempt timeout: {retried} retried jobs of {}, retries {}",
        rows.len(),
        summary.counters.retries
    );
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    assert!(retried > 100, "hung attempts were retried: {retried}");
    assert_eq!(summary.counters.retries, retried as u64);
}

#[test]
fn without_either_a_hung_attempt_fails_its_job_at_the_deadline() {
    let (rows, _) = run_with(Upstream {
        balancer: BalancerKind::RoundRobin,
        ..Upstream::default()
    });
    let failed = common::reasons(&rows, "failed");
    assert!(
        failed
            .keys()
            .all(|reason| reason == "infer: deadline exceeded"),
        "{failed:?}"
    );
    assert!(
        failed.values().sum::<u64>() > 0,
        "the control case loses jobs to the hangs"
    );
}
