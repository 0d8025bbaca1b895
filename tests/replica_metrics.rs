//! Per-replica counters in a real run: a class with two compute nodes, scraped
//! while jobs run and after. The replicas' requests must add up to the attempts
//! the rows record, both compute nodes must get traffic, and `/metrics`, the
//! summary, its JSON and report.html must tell the same numbers.

mod common;

use std::time::{Duration, Instant};

use common::ClassSpec;
use percore::admin::AdminServer;
use percore::config::GrpcConfig;
use percore::dispatcher::{self, RunOptions};
use percore::mock::{MockKind, MockOptions};
use percore::stats::{ReplicaRole, ReplicaTotals};

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "forecast-lstm",
    period_ms: 200,
    deadline_ms: 500,
};

/// The label text of one replica's series.
fn labels(replica: &ReplicaTotals) -> String {
    format!(
        "{{class=\"meter\",role=\"{}\",replica=\"{}\"}}",
        replica.role.label(),
        replica.node
    )
}

#[test]
fn replica_counters_add_up_to_the_attempts_and_reach_every_output() {
    let options = MockOptions {
        payload_bytes: 64,
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, options.clone());
    let computes = [
        common::start_mock(MockKind::Compute, options.clone()),
        common::start_mock(MockKind::Compute, options),
    ];
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let mut class = common::class(METER, source.addr, computes[0].addr);
    class.compute_nodes.push(computes[1].addr.into());
    let config = common::config(vec![class], 600, db.clone(), GrpcConfig::default());
    let admin =
        AdminServer::start("127.0.0.1:0".parse().expect("an address")).expect("admin starts");
    let addr = admin.addr();
    let publisher = admin.publisher();
    let run_config = config.clone();
    let run = std::thread::spawn(move || {
        let options = RunOptions {
            duration: Some(Duration::from_secs(3)),
            metrics: Some(publisher),
            ..RunOptions::default()
        };
        dispatcher::run(&run_config, &options)
    });

    // Snapshots come once a second: poll until one shows replica traffic.
    let polling_until = Instant::now() + Duration::from_millis(2_800);
    let mut during = common::http_get(addr, "/metrics");
    while common::samples(&during, "percore_replica_requests_total")
        .values()
        .sum::<f64>()
        == 0.0
        && Instant::now() < polling_until
    {
        std::thread::sleep(Duration::from_millis(100));
        during = common::http_get(addr, "/metrics");
    }
    let summary = run
        .join()
        .expect("the run thread")
        .expect("the run succeeds");
    let after = common::http_get(addr, "/metrics");
    admin.stop();
    source.stop();
    for compute in computes {
        compute.stop();
    }

    let rows = common::read_rows(&db);
    common::assert_counts(&summary, &rows);
    let replicas = &summary.upstream.replicas;
    let of_role =
        |role| -> Vec<&ReplicaTotals> { replicas.iter().filter(|r| r.role == role).collect() };
    let (sources, compute_nodes) = (
        of_role(ReplicaRole::DataSource),
        of_role(ReplicaRole::ComputeNode),
    );
    assert_eq!(sources.len(), 1, "{replicas:?}");
    assert_eq!(compute_nodes.len(), 2, "{replicas:?}");
    assert_eq!(
        compute_nodes
            .iter()
            .map(|r| r.node.to_string())
            .collect::<Vec<_>>(),
        config.classes[0]
            .compute_nodes
            .iter()
            .map(|node| node.to_string())
            .collect::<Vec<_>>(),
        "config order"
    );

    // Every attempt a row records ended on some replica, and every request a
    // replica counted was an attempt of some row (no hedging: none cancelled).
    let attempts: u64 = rows.iter().map(|row| row.attempts as u64).sum();
    let requests: u64 = replicas.iter().map(|r| r.requests).sum();
    assert_eq!(requests, attempts, "{replicas:?}");
    let infer_requests: u64 = compute_nodes.iter().map(|r| r.requests).sum();
    let counters = &summary.counters;
    // Each job that got past its fetch made at least one infer attempt...
    let reached_infer = counters.ok
        + rows
            .iter()
            .filter(|row| {
                row.outcome == "failed"
                    && row
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("infer"))
            })
            .count() as u64;
    assert!(counters.ok > 0, "no job succeeded");
    assert!(infer_requests >= reached_infer);
    // ...and, with no faults, exactly one, as each job fetched exactly once.
    assert_eq!(counters.retries, 0, "retries with healthy mocks");
    assert_eq!(infer_requests, reached_infer, "{replicas:?}");
    assert_eq!(
        sources[0].requests,
        counters.ok + counters.failed,
        "one fetch per job that ran"
    );
    for replica in &compute_nodes {
        assert!(
            replica.requests > 0,
            "{} got no traffic: {replicas:?}",
            replica.node
        );
        assert!(replica.ewma_latency_us > 0.0, "{replica:?}");
    }
    for replica in replicas {
        assert_eq!(replica.shards as usize, summary.shards, "{replica:?}");
        assert_eq!(replica.ready_shards, replica.shards, "{replica:?}");
        assert_eq!(
            (
                replica.ejections,
                replica.ejected_shards,
                replica.outstanding
            ),
            (0, 0, 0),
            "{replica:?}"
        );
    }
    assert_eq!(summary.upstream.retry_budget_exhausted, vec![0]);

    // Mid-run, the series were there and counting.
    let during_requests = common::samples(&during, "percore_replica_requests_total");
    assert_eq!(during_requests.len(), 3, "{during}");
    assert!(during_requests.values().sum::<f64>() > 0.0, "{during}");

    // After the run, the last snapshot holds exactly the summary's numbers.
    for (name, value) in [
        (
            "percore_replica_requests_total",
            (|r| r.requests as f64) as fn(&ReplicaTotals) -> f64,
        ),
        ("percore_replica_failures_total", |r| r.failures as f64),
        ("percore_replica_ejections_total", |r| r.ejections as f64),
        ("percore_replica_outstanding", |r| r.outstanding as f64),
        ("percore_replica_ready_shards", |r| {
            f64::from(r.ready_shards)
        }),
        ("percore_replica_ejected_shards", |r| {
            f64::from(r.ejected_shards)
        }),
        ("percore_replica_latency_ewma_seconds", |r| {
            r.ewma_latency_us / 1e6
        }),
    ] {
        let scraped = common::samples(&after, name);
        assert_eq!(scraped.len(), replicas.len(), "{name}:\n{after}");
        for replica in replicas {
            let got = scraped.get(&labels(replica)).copied();
            let want = value(replica);
            assert!(
                got.is_some_and(|got| (got - want).abs() <= want.abs() * 1e-9),
                "{name}{}: scraped {got:?}, summary {want}",
                labels(replica)
            );
        }
        // OpenMetrics names a counter's family without its samples' `_total`.
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(after.contains(&format!("# TYPE {family} ")), "{name}");
    }
    let scraped_infer: f64 = common::samples(&after, "percore_replica_requests_total")
        .iter()
        .filter(|(labels, _)| labels.contains("role=\"compute_node\""))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(scraped_infer, infer_requests as f64);
    assert_eq!(
        common::samples(&after, "percore_retry_budget_exhausted_total").get("{class=\"meter\"}"),
        Some(&0.0),
        "{after}"
    );

    // The summary's JSON and report.html carry the same rows.
    let json = summary.to_json();
    let rows_json = json["replicas"].as_array().expect("a replicas array");
    assert_eq!(rows_json.len(), 3);
    for (row, replica) in rows_json.iter().zip(replicas) {
        assert_eq!(row["class"], "meter");
        assert_eq!(row["role"], replica.role.label());
        assert_eq!(row["replica"], replica.node.to_string());
        assert_eq!(row["requests"], replica.requests);
    }
    let report = dir.path().join("report");
    percore::report::write_dir(&report, &summary.recording().expect("a recording"))
        .expect("the report is written");
    let html = std::fs::read_to_string(report.join("report.html")).expect("report.html");
    for replica in &compute_nodes {
        assert!(
            html.contains(&format!("<tr data-replica=\"{}\">", replica.node)),
            "no Replicas row for {}",
            replica.node
        );
    }
    let table = summary.replica_table();
    assert_eq!(table.lines().count(), 1 + replicas.len(), "{table}");
}
