//! Replicas that die, slow down or cannot keep up: each shard keeps its jobs
//! flowing to the healthy ones on its own. Every test also checks the
//! accounting: every due tick is exactly one row (ok, failed or skipped).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{ClassSpec, MockProcess, Row};
use percore::config::{Class, GrpcConfig, Upstream};
use percore::mock::{MockKind, MockNode, MockOptions, ServiceTime};

/// `percore mock-compute` in a process of its own, so it can be killed with -9
/// or frozen.
fn mock_process(service_time_us: &str) -> MockProcess {
    MockProcess::start(&[
        "mock-compute",
        "--listen",
        "127.0.0.1:0",
        "--io-memory-kib",
        "256",
        "--service-time-us",
        service_time_us,
    ])
}

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 500,
    deadline_ms: 500,
};

fn fast_mock() -> MockNode {
    common::start_mock(
        MockKind::Compute,
        MockOptions {
            service_time: ServiceTime::Fixed(Duration::from_millis(1)),
            ..MockOptions::default()
        },
    )
}

fn class_over(source: SocketAddr, computes: &[SocketAddr], upstream: Upstream) -> Class {
    let mut class = common::class(METER, source, computes[0]);
    class.compute_nodes = computes.iter().map(|&addr| addr.into()).collect();
    class.upstream = upstream;
    class
}

/// Rows per answering compute node.
fn share_by_node(rows: &[Row]) -> BTreeMap<String, u64> {
    let mut shares = BTreeMap::new();
    for row in rows {
        if let Some(node) = &row.compute_node {
            *shares.entry(node.clone()).or_insert(0) += 1;
        }
    }
    shares
}

fn percentile(mut values: Vec<i64>, q: f64) -> i64 {
    values.sort_unstable();
    values[((values.len() - 1) as f64 * q) as usize]
}

#[test]
fn kill_9_of_one_of_three_replicas_moves_its_jobs_to_the_others() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let (a, b) = (fast_mock(), fast_mock());
    let victim = mock_process("2000");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let class = class_over(
        source.addr,
        &[a.addr, b.addr, victim.addr],
        Upstream::default(),
    );
    // 1,000 devices every 500 ms: 2,000 jobs/s.
    let config = common::config(vec![class], 1_000, db.clone(), GrpcConfig::default());

    let run_config = config.clone();
    let run = std::thread::spawn(move || common::run(&run_config, Duration::from_secs(4)));
    std::thread::sleep(Duration::from_millis(1_800));
    let killed_at = std::time::SystemTime::now();
    victim.signal(libc::SIGKILL);
    let summary = run.join().expect("the run ends");
    let rows = common::read_rows(&db);
    let dead = victim.addr.to_string();
    source.stop();
    a.stop();
    b.stop();

    common::assert_counts(&summary, &rows);
    common::assert_exact_ticks(&config, &summary, &rows);
    let shares = share_by_node(&rows);
    assert!(
        shares.get(&dead).copied().unwrap_or(0) > 0,
        "the victim served before the kill: {shares:?}"
    );
    // What was outstanding on the victim when it died: at 2,000 jobs/s and ~2 ms
    // there, about 2,000 × 1/3 × 0.002 ≈ 1–2 calls per shard; those are cut
    // off and retried elsewhere, within the budget. Allow 10× that to fail.
    let failed = common::reasons(&rows, "failed");
    let failed_total: u64 = failed.values().sum();
    eprintln!(
        "kill -9: shares {shares:?}, failed {failed:?}, retries {}",
        summary.counters.retries
    );
    assert!(
        failed_total <= 20,
        "failed rows are bounded by what was in flight: {failed:?}"
    );
    // A second after the kill, nothing goes to the dead replica any more.
    let killed_ms = killed_at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let late_to_dead = rows
        .iter()
        .filter(|row| row.tick_ms > killed_ms + 1_000)
        .filter(|row| row.compute_node.as_deref() == Some(dead.as_str()))
        .count();
    assert_eq!(late_to_dead, 0);
    let late_ok = rows
        .iter()
        .filter(|row| row.tick_ms > killed_ms + 1_000 && row.outcome == "ok")
        .count();
    assert!(
        late_ok > 1_000,
        "the others took the load: {late_ok} ok rows after the kill"
    );
}

#[test]
fn a_replica_ten_times_slower_gets_a_small_share_and_leaves_p99_alone() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let (a, b) = (fast_mock(), fast_mock());
    let slow = common::start_mock(
        MockKind::Compute,
        MockOptions {
            service_time: ServiceTime::Fixed(Duration::from_millis(40)),
            ..MockOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let class = class_over(
        source.addr,
        &[a.addr, b.addr, slow.addr],
        Upstream::default(),
    );
    let config = common::config(vec![class], 1_000, db.clone(), GrpcConfig::default());

    let summary = common::run(&config, Duration::from_secs(4));
    let slow_addr = slow.addr.to_string();
    source.stop();
    a.stop();
    b.stop();
    slow.stop();
    let rows = common::read_rows(&db);

    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    let shares = share_by_node(&rows);
    let total: u64 = shares.values().sum();
    let slow_share = shares.get(&slow_addr).copied().unwrap_or(0) as f64 / total as f64;
    assert!(
        slow_share < 0.15,
        "the slow replica got {slow_share:.3} of {total}: {shares:?}"
    );
    let ok: Vec<i64> = rows
        .iter()
        .filter(|row| row.outcome == "ok")
        .filter_map(|row| row.end_to_end_us)
        .collect();
    let p99 = percentile(ok, 0.99);
    eprintln!("slow replica: share {slow_share:.4} ({shares:?}), p99 {p99} µs");
    // For a failure: which replicas the slow jobs went to, and when.
    let slow_jobs: Vec<_> = rows
        .iter()
        .filter(|row| row.outcome == "ok" && row.end_to_end_us.is_some_and(|us| us >= 20_000))
        .map(|row| {
            (
                row.compute_node.as_deref(),
                row.tick_ms,
                row.fetch_us,
                row.infer_us,
                row.end_to_end_us,
            )
        })
        .collect();
    assert!(
        p99 < 20_000,
        "p99 end-to-end {p99} µs is near the slow replica's 40 ms; jobs of 20 ms or more \
         (node, tick, fetch, infer, end to end): {slow_jobs:?}"
    );
}

#[test]
fn three_times_the_compute_capacity_becomes_bounded_skips_with_the_reason() {
    // Three replicas, each taking at most 4 calls from a shard at a time, 20 ms
    // each: 600 jobs/s per shard. 2 shards are offered 3,600 jobs/s.
    let slow_options = MockOptions {
        service_time: ServiceTime::Fixed(Duration::from_millis(20)),
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let computes: Vec<MockNode> = (0..3)
        .map(|_| common::start_mock(MockKind::Compute, slow_options.clone()))
        .collect();
    let addrs: Vec<SocketAddr> = computes.iter().map(|node| node.addr).collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let upstream = Upstream {
        max_outstanding_per_replica: 4,
        ..Upstream::default()
    };
    let class = class_over(source.addr, &addrs, upstream);
    let config = common::config(vec![class], 1_800, db.clone(), GrpcConfig::default());
    let admin = percore::admin::AdminServer::start("127.0.0.1:0".parse().expect("an address"))
        .expect("admin starts");
    let admin_addr = admin.addr();
    let publisher = admin.publisher();
    let rss_before = common::rss_kib();
    let run_config = config.clone();
    let run = std::thread::spawn(move || {
        let options = percore::dispatcher::RunOptions {
            metrics: Some(publisher),
            ..common::run_options(Duration::from_secs(20))
        };
        percore::dispatcher::run(&run_config, &options)
    });
    let mut peak_rss = rss_before;
    let mut health_answers = 0;
    for _ in 0..18 {
        std::thread::sleep(Duration::from_secs(1));
        peak_rss = peak_rss.max(common::rss_kib());
        let answer = common::http_get(admin_addr, "/healthz");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "/healthz under overload: {answer}"
        );
        health_answers += 1;
    }
    let summary = run.join().expect("the run ends").expect("the run succeeds");
    drop(admin);
    source.stop();
    for node in computes {
        node.stop();
    }
    let rows = common::read_rows(&db);

    assert_eq!(health_answers, 18);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    let skipped = common::reasons(&rows, "skipped");
    let at_capacity = skipped
        .get("every compute replica of the class at its outstanding limit")
        .copied()
        .unwrap_or(0);
    let (ok, failed, skipped_total) = common::outcome_counts(&rows);
    let total = ok + failed + skipped_total;
    // About two thirds cannot be served; allow for start-up and tick jitter.
    assert!(
        at_capacity as f64 > 0.5 * total as f64,
        "{at_capacity} of {total} skipped for capacity: {skipped:?}"
    );
    assert!(ok as f64 > 0.2 * total as f64, "{ok} of {total} ok");
    // Resident memory stays bounded: the queue is the admission limit, not the
    // load. 64 MiB covers the run's histograms and SQLite's cache many times.
    let growth_kib = peak_rss.saturating_sub(rss_before);
    let failures = common::reasons(&rows, "failed");
    eprintln!("3× overload: {ok} ok, {failures:?}, {skipped:?}; RSS growth {growth_kib} KiB");
    assert!(
        growth_kib < 64 * 1024,
        "RSS grew {growth_kib} KiB under 3× overload"
    );
}

/// Calls a replica has answered between two readings of its counter.
fn calls_during(control: &percore::mock::MockControl, wait: Duration) -> u64 {
    let before = control.calls();
    std::thread::sleep(wait);
    control.calls() - before
}

#[test]
fn a_replica_failing_half_its_calls_is_ejected_then_readmitted() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let (a, b) = (fast_mock(), fast_mock());
    let flaky = fast_mock();
    let control = flaky.control();
    control.set_error_rate(0.5, percore::grpc::status::Code::UNAVAILABLE);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let upstream = Upstream {
        ejection: percore::config::Ejection {
            window: Duration::from_millis(500),
            base_time: Duration::from_millis(300),
            max_time: Duration::from_millis(600),
            ..percore::config::Ejection::default()
        },
        ..Upstream::default()
    };
    let class = class_over(source.addr, &[a.addr, b.addr, flaky.addr], upstream);
    let config = common::config(vec![class], 1_000, db.clone(), GrpcConfig::default());
    let run_config = config.clone();
    let run = std::thread::spawn(move || common::run(&run_config, Duration::from_secs(6)));

    // Failing: ejected most of the time, so it gets far less than its third.
    std::thread::sleep(Duration::from_millis(1_000));
    let healthy_calls = a.control().calls();
    let while_failing = calls_during(&control, Duration::from_millis(1_500));
    let healthy_during = a.control().calls() - healthy_calls;
    // Recovered: back in after its ejection runs out, at a fair share.
    control.set_error_rate(0.0, percore::grpc::status::Code::UNAVAILABLE);
    std::thread::sleep(Duration::from_millis(1_000));
    let healthy_calls = a.control().calls();
    let after_recovery = calls_during(&control, Duration::from_millis(1_500));
    let healthy_after = a.control().calls() - healthy_calls;
    let summary = run.join().expect("the run ends");
    let rows = common::read_rows(&db);
    source.stop();
    a.stop();
    b.stop();
    flaky.stop();

    eprintln!(
        "flaky replica: {while_failing} calls while failing (a healthy one {healthy_during}), \
         {after_recovery} after recovery (healthy {healthy_after}); retries {}",
        summary.counters.retries
    );
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    assert!(
        (while_failing as f64) < 0.4 * healthy_during as f64,
        "ejected: {while_failing} calls against a healthy replica's {healthy_during}"
    );
    assert!(
        (after_recovery as f64) > 0.5 * healthy_after as f64,
        "re-admitted: {after_recovery} calls against a healthy replica's {healthy_after}"
    );
    // UNAVAILABLE is retried on another replica: hardly a job is lost to it.
    let failed: u64 = common::reasons(&rows, "failed").values().sum();
    assert!(
        failed < 50,
        "{failed} failed rows: {:?}",
        common::reasons(&rows, "failed")
    );
}

#[test]
fn a_replica_whose_model_is_not_ready_gets_no_traffic_until_it_is_again() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let steady = fast_mock();
    let toggled = fast_mock();
    let control = toggled.control();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let probe_interval = Duration::from_millis(200);
    let upstream = Upstream {
        probe_interval,
        ..Upstream::default()
    };
    let class = class_over(source.addr, &[steady.addr, toggled.addr], upstream);
    let config = common::config(vec![class], 1_000, db.clone(), GrpcConfig::default());
    let run_config = config.clone();
    let run = std::thread::spawn(move || common::run(&run_config, Duration::from_secs(5)));

    std::thread::sleep(Duration::from_millis(1_000));
    let while_ready = calls_during(&control, Duration::from_millis(500));
    control.set_model_ready(false);
    // Within one probe interval (plus the probe's own round trip) traffic stops.
    std::thread::sleep(probe_interval + Duration::from_millis(100));
    let while_not_ready = calls_during(&control, Duration::from_millis(1_000));
    control.set_model_ready(true);
    std::thread::sleep(probe_interval + Duration::from_millis(100));
    let when_ready_again = calls_during(&control, Duration::from_millis(1_000));
    let summary = run.join().expect("the run ends");
    let rows = common::read_rows(&db);
    source.stop();
    steady.stop();
    toggled.stop();

    eprintln!("readiness: {while_ready} calls in 0.5 s ready, {while_not_ready} in 1 s not ready, {when_ready_again} in 1 s ready again");
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    assert!(while_ready > 100, "it had traffic: {while_ready}");
    assert_eq!(
        while_not_ready, 0,
        "no new calls to a replica whose model is not ready"
    );
    assert!(
        when_ready_again > 100,
        "traffic returned: {when_ready_again}"
    );
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
}

#[test]
fn the_retry_budget_caps_retries_when_every_replica_fails() {
    let failing = MockOptions {
        error_rate: 1.0,
        error_code: percore::grpc::status::Code::UNAVAILABLE,
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let computes: Vec<MockNode> = (0..3)
        .map(|_| common::start_mock(MockKind::Compute, failing.clone()))
        .collect();
    let addrs: Vec<SocketAddr> = computes.iter().map(|node| node.addr).collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let class = class_over(source.addr, &addrs, Upstream::default());
    let grpc = GrpcConfig {
        retries: 5,
        ..GrpcConfig::default()
    };
    let config = common::config(vec![class], 1_000, db.clone(), grpc.clone());
    let summary = common::run(&config, Duration::from_secs(3));
    let rows = common::read_rows(&db);
    source.stop();
    for node in computes {
        node.stop();
    }

    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    let jobs = rows.iter().filter(|row| row.outcome != "skipped").count() as u64;
    let shards = common::shard_cpus().len() as u64;
    // Per shard and class: 20 % of the ModelInfer calls (one first attempt per
    // job) plus 10 a second, over the 10 s window (longer than the run).
    let allowed = jobs * u64::from(grpc.retry_budget_percent) / 100
        + shards * u64::from(grpc.retry_budget_min_per_s) * 10;
    eprintln!(
        "retry budget: {jobs} jobs, {} retries, at most {allowed}",
        summary.counters.retries
    );
    assert!(summary.counters.retries > 0, "some retries were allowed");
    assert!(
        summary.counters.retries <= allowed,
        "{} retries for {jobs} jobs: the budget allows {allowed}",
        summary.counters.retries
    );
    // Without the budget, every job would try up to 3 replicas.
    assert!(summary.counters.retries < jobs, "fewer retries than jobs");
    let attempts: i64 = rows.iter().map(|row| row.attempts).sum();
    assert_eq!(
        attempts as u64,
        2 * jobs + summary.counters.retries,
        "attempts add up"
    );
}

/// Runs 4 s over a healthy replica and one (a process of its own) that is
/// frozen with SIGSTOP after 1 s: its socket stays open, nothing answers. Both
/// take half the calls (round-robin) until the probe times out; returns the
/// failure reasons and the retries.
fn freeze_a_replica(keepalive_interval_ms: u64) -> (BTreeMap<String, u64>, u64) {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let healthy = fast_mock();
    let frozen = mock_process("20000");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let upstream = Upstream {
        balancer: percore::config::BalancerKind::RoundRobin,
        ..Upstream::default()
    };
    let mut class = class_over(source.addr, &[healthy.addr, frozen.addr], upstream);
    class.period_ms = 2_000;
    class.deadline_ms = 2_000;
    let grpc = GrpcConfig {
        keepalive_interval_ms,
        keepalive_timeout_ms: 200,
        ..GrpcConfig::default()
    };
    let config = common::config(vec![class], 1_000, db.clone(), grpc);
    let run_config = config.clone();
    let run = std::thread::spawn(move || common::run(&run_config, Duration::from_secs(4)));
    std::thread::sleep(Duration::from_secs(1));
    frozen.signal(libc::SIGSTOP);
    let summary = run.join().expect("the run ends");
    drop(frozen);
    source.stop();
    healthy.stop();
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    (common::reasons(&rows, "failed"), summary.counters.retries)
}

#[test]
fn keepalive_pings_find_a_frozen_replica_before_the_deadline_does() {
    let (with_pings, retries) = freeze_a_replica(200);
    let (without, _) = freeze_a_replica(0);
    eprintln!(
        "frozen replica: with keepalive {with_pings:?} ({retries} retries), without {without:?}"
    );
    // Without pings the calls stuck on the frozen replica wait out their deadline.
    let stuck: u64 = without
        .iter()
        .filter(|(reason, _)| reason.as_str() == "infer: deadline exceeded")
        .map(|(_, count)| count)
        .sum();
    assert!(
        stuck > 0,
        "the control case loses the stuck calls: {without:?}"
    );
    // With them, the dead connection is closed within 400 ms and its calls are
    // retried on the healthy replica, well within their 2 s deadline.
    let lost_with_pings: u64 = with_pings.values().sum();
    assert!(
        lost_with_pings * 4 < stuck,
        "keepalive saves most of them: {with_pings:?} against {without:?}"
    );
    assert!(retries > 0);
}

#[test]
fn a_replica_that_comes_back_is_used_again_within_a_probe() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let steady = fast_mock();
    // A port that is free now; the replica starts on it a second into the run.
    let late_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let class = class_over(source.addr, &[steady.addr, late_addr], Upstream::default());
    let config = common::config(vec![class], 1_000, db.clone(), GrpcConfig::default());
    let run_config = config.clone();
    let run = std::thread::spawn(move || common::run(&run_config, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(1_000));
    let late = common::start_mock_at(MockKind::Compute, late_addr, MockOptions::default());
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    let summary = run.join().expect("the run ends");
    source.stop();
    steady.stop();
    late.stop();
    let rows = common::read_rows(&db);

    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    assert_eq!(
        common::reasons(&rows, "failed"),
        Default::default(),
        "it was down, not failing"
    );
    let late_text = late_addr.to_string();
    let first_answer = rows
        .iter()
        .filter(|row| row.compute_node.as_deref() == Some(late_text.as_str()))
        .map(|row| row.tick_ms)
        .min()
        .expect("the replica that came back answered");
    let waited = first_answer - started_ms;
    eprintln!("came back: first answer {waited} ms after it started");
    // Probes of a replica that is down go out at least every 250 ms.
    assert!(waited < 600, "it waited {waited} ms to be used");
}
