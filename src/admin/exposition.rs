//! `/metrics`: a [`MetricsSnapshot`] in the OpenMetrics text format, written by
//! `prometheus-client`.
//!
//! The snapshot is already the run's merged state, so there is nothing to
//! instrument: one [`Collector`] reads it at each scrape and the library writes
//! the families — `# HELP`/`# TYPE`/`# UNIT`, `_total` on counters, cumulative
//! histogram buckets, escaped label values (class names come from the config
//! file) and the closing `# EOF`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{Health, MetricsSnapshot};
use crate::failures::FailureBreakdown;
use crate::stats::{Counters, ReplicaTotals};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A per-shard family read from a shard's counters: name (without `_total`),
/// help text, and the value.
type ShardFamily = (&'static str, &'static str, fn(&Counters) -> u64);

/// The per-shard counters besides `percore_jobs`.
const SHARD_COUNTERS: [ShardFamily; 8] = [
    (
        "percore_retries",
        "Calls tried again on another node after a retryable failure, per shard.",
        |c| c.retries,
    ),
    (
        "percore_bytes_sent",
        "gRPC message bytes sent, per shard.",
        |c| c.bytes_sent,
    ),
    (
        "percore_bytes_received",
        "gRPC message bytes received, per shard.",
        |c| c.bytes_received,
    ),
    (
        "percore_shard_tasks_run",
        "Tasks the shard's executor polled (glommio), per shard.",
        |c| c.tasks_run,
    ),
    (
        "percore_shard_scheduler_runs",
        "Times the shard's executor chose a task queue to run (glommio), per shard.",
        |c| c.scheduler_runs,
    ),
    (
        "percore_shard_stalls",
        "Times a task queue ran past its time slice by the stall threshold, per shard.",
        |c| c.stalls,
    ),
    (
        "percore_shard_parks",
        "Times the shard's thread slept in the kernel, waiting for I/O or a timer (voluntary context switches), per shard.",
        |c| c.parks,
    ),
    (
        "percore_shard_preemptions",
        "Times the kernel gave the shard's CPU to another thread (involuntary context switches), per shard.",
        |c| c.preemptions,
    ),
];

/// The per-shard gauges.
const SHARD_GAUGES: [ShardFamily; 2] = [
    (
        "percore_in_flight",
        "Jobs started and not finished, per shard.",
        |c| c.in_flight,
    ),
    (
        "percore_connections",
        "Open HTTP/2 connections to nodes, per shard.",
        |c| c.connections,
    ),
];

/// A per-replica counter: name (without `_total`), help, value.
type ReplicaCounter = (&'static str, &'static str, fn(&ReplicaTotals) -> u64);

/// The per-replica counters, labelled `{class, role, replica}`.
const REPLICA_COUNTERS: [ReplicaCounter; 3] = [
    (
        "percore_replica_requests",
        "Attempts on the replica that ended (ok or not; cancelled hedges excluded), all shards.",
        |r| r.requests,
    ),
    (
        "percore_replica_failures",
        "Attempts that failed in a way that counts against the replica, all shards.",
        |r| r.failures,
    ),
    (
        "percore_replica_ejections",
        "Times a shard ejected the replica for failing, all shards.",
        |r| r.ejections,
    ),
];

/// The per-replica gauges that count, labelled `{class, role, replica}`; the
/// latency estimate, in seconds, is written beside them.
const REPLICA_GAUGES: [ReplicaCounter; 3] = [
    (
        "percore_replica_outstanding",
        "Attempts on the replica in flight now, all shards.",
        |r| r.outstanding,
    ),
    (
        "percore_replica_ready_shards",
        "Shards whose last probe found the replica ready.",
        |r| u64::from(r.ready_shards),
    ),
    (
        "percore_replica_ejected_shards",
        "Shards that have the replica ejected now.",
        |r| u64::from(r.ejected_shards),
    ),
];

/// Renders `snapshot` as OpenMetrics text.
pub fn render(snapshot: &Arc<MetricsSnapshot>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(snapshot.clone())));
    let mut text = String::new();
    // Writing into a String fails only if a family is malformed, which the
    // tests below would show; a scrape then gets what was written.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// The collector a scrape's registry holds: the newest snapshot.
#[derive(Debug)]
struct Snapshot(Arc<MetricsSnapshot>);

type Written = Result<(), std::fmt::Error>;

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Written {
        let snapshot = &*self.0;
        jobs(snapshot, &mut encoder)?;
        for (name, help, value) in SHARD_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (shard, counters) in snapshot.per_shard.iter().enumerate() {
                counter(
                    &mut family,
                    &[("shard", shard.to_string())],
                    value(counters),
                )?;
            }
        }
        let mut busy = encoder.encode_descriptor(
            "percore_shard_busy",
            "Time the shard's executor spent running tasks (glommio; not idle, not spinning), per shard.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for (shard, counters) in snapshot.per_shard.iter().enumerate() {
            busy.encode_family(&[("shard", shard.to_string())])?
                .encode_counter::<NoLabelSet, _, u64>(&(counters.busy_us as f64 / 1e6), None)?;
        }
        encoder
            .encode_descriptor(
                "percore_rows_committed",
                "Rows the sink has committed (percore_jobs_total counts results computed).",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&snapshot.rows_committed, None)?;
        for (name, help, value) in [
            (
                "percore_sink_rows_journaled",
                "Rows written to the spill journal because the database could not take them.",
                snapshot.rows_journaled,
            ),
            (
                "percore_sink_rows_replayed",
                "Rows replayed from the spill journal into the database (an earlier run's included).",
                snapshot.rows_replayed,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        encoder
            .encode_descriptor(
                "percore_sink_journal_bytes",
                "Bytes the spill journal's files hold now.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&snapshot.journal_bytes)?;
        encoder
            .encode_descriptor(
                "percore_healthy",
                "1 while the run works, 0 while /healthz answers 503.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&u64::from(snapshot.health == Health::Ok))?;
        for (name, help, value) in SHARD_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (shard, counters) in snapshot.per_shard.iter().enumerate() {
                gauge(
                    &mut family,
                    &[("shard", shard.to_string())],
                    value(counters),
                )?;
            }
        }
        latency(snapshot, &mut encoder)?;
        replicas(snapshot, &mut encoder)
    }
}

/// `percore_jobs_total{shard, outcome, stage, reason}`: `ok` with empty stage
/// and reason, then one series per (stage, reason class) of each shard's
/// breakdown. Failed or skipped records the breakdown does not cover (none,
/// unless a snapshot was built without it) get empty labels, so the series
/// always add up to the shard's counters.
fn jobs(snapshot: &MetricsSnapshot, encoder: &mut DescriptorEncoder) -> Written {
    let mut family = encoder.encode_descriptor(
        "percore_jobs",
        "Jobs by outcome (ok, failed, skipped), stage (fetch, infer; start for a skipped tick) and bounded reason class, per shard.",
        None,
        MetricType::Counter,
    )?;
    let no_failures = FailureBreakdown::default();
    for (shard, counters) in snapshot.per_shard.iter().enumerate() {
        let breakdown = snapshot.failures.get(shard).unwrap_or(&no_failures);
        let shard = shard.to_string();
        let mut series = |outcome: &str, stage: &str, reason: &str, value: u64| {
            let labels = [
                ("shard", shard.clone()),
                ("outcome", outcome.to_string()),
                ("stage", stage.to_string()),
                ("reason", reason.to_string()),
            ];
            counter(&mut family, &labels, value)
        };
        series("ok", "", "", counters.ok)?;
        let (mut failed, mut skipped) = (0, 0);
        for entry in &breakdown.entries {
            match entry.stage {
                Some(_) => failed += entry.count,
                None => skipped += entry.count,
            }
            series(
                entry.outcome(),
                entry.stage_label(),
                entry.class.label(),
                entry.count,
            )?;
        }
        for (outcome, total, covered) in [
            ("failed", counters.failed, failed),
            ("skipped", counters.skipped, skipped),
        ] {
            if total > covered || (total == 0 && covered == 0) {
                series(outcome, "", "", total.saturating_sub(covered))?;
            }
        }
    }
    Ok(())
}

/// `percore_stage_latency_seconds{stage}`: the run's HDR histograms folded
/// into [`BUCKETS_S`].
fn latency(snapshot: &MetricsSnapshot, encoder: &mut DescriptorEncoder) -> Written {
    let mut family = encoder.encode_descriptor(
        "percore_stage_latency",
        "Latency of each job stage (all shards).",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (stage, histogram) in snapshot.latency.stages() {
        let mut buckets = Vec::with_capacity(BUCKETS_S.len() + 1);
        let mut below = 0;
        for bound in BUCKETS_S {
            let cumulative = histogram.count_between(0, (bound * 1e6) as u64);
            buckets.push((bound, cumulative - below));
            below = cumulative;
        }
        buckets.push((f64::INFINITY, histogram.len().saturating_sub(below)));
        let sum_s = histogram.mean() * histogram.len() as f64 / 1e6;
        family
            .encode_family(&[("stage", stage)])?
            .encode_histogram::<NoLabelSet>(sum_s, histogram.len(), &buckets, None)?;
    }
    Ok(())
}

/// The per-replica families and the retry budgets' refusals per class.
fn replicas(snapshot: &MetricsSnapshot, encoder: &mut DescriptorEncoder) -> Written {
    let class = |index: u16| -> String {
        snapshot
            .class_names
            .get(usize::from(index))
            .map_or_else(|| index.to_string(), Clone::clone)
    };
    let labels = |replica: &ReplicaTotals| {
        [
            ("class", class(replica.class)),
            ("role", replica.role.label().to_string()),
            ("replica", replica.node.to_string()),
        ]
    };
    for (name, help, value) in REPLICA_COUNTERS {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for replica in &snapshot.upstream.replicas {
            counter(&mut family, &labels(replica), value(replica))?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "percore_replica_latency_ewma",
        "Peak-EWMA latency estimate the balancers weigh the replica by, shards weighted by their requests.",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    )?;
    for replica in &snapshot.upstream.replicas {
        gauge(&mut family, &labels(replica), replica.ewma_latency_us / 1e6)?;
    }
    for (name, help, value) in REPLICA_GAUGES {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for replica in &snapshot.upstream.replicas {
            gauge(&mut family, &labels(replica), value(replica))?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "percore_retry_budget_exhausted",
        "Retries and hedges refused because the class's retry budget was spent, all shards.",
        None,
        MetricType::Counter,
    )?;
    for (index, refused) in snapshot.upstream.retry_budget_exhausted.iter().enumerate() {
        let index = u16::try_from(index).unwrap_or(u16::MAX);
        counter(&mut family, &[("class", class(index))], *refused)?;
    }
    Ok(())
}

/// One counter series of `family`.
fn counter(family: &mut MetricEncoder, labels: &impl EncodeLabelSet, value: u64) -> Written {
    family
        .encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// One gauge series of `family`.
fn gauge(
    family: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    value: impl EncodeGaugeValue,
) -> Written {
    family.encode_family(labels)?.encode_gauge(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{StageHistograms, UpstreamTotals};

    #[test]
    fn exposition_lists_every_shard_outcome_and_cumulative_buckets() {
        let mut snapshot = MetricsSnapshot {
            per_shard: vec![
                Counters {
                    ok: 5,
                    failed: 1,
                    skipped: 2,
                    in_flight: 3,
                    connections: 2,
                    retries: 4,
                    bytes_sent: 100,
                    bytes_received: 200,
                    tasks_run: 900,
                    scheduler_runs: 300,
                    busy_us: 1_500_000,
                    stalls: 2,
                    parks: 40,
                    preemptions: 3,
                },
                Counters {
                    ok: 7,
                    ..Counters::default()
                },
            ],
            latency: StageHistograms::default(),
            rows_committed: 11,
            rows_journaled: 7,
            rows_replayed: 5,
            journal_bytes: 4096,
            health: Health::Ok,
            ..MetricsSnapshot::default()
        };
        for us in [50, 700, 700, 20_000] {
            snapshot.latency.fetch.record(us).unwrap();
        }
        // Shard 0's failure is in its breakdown; its two skips are not.
        let mut breakdown = FailureBreakdown::default();
        let failed = crate::record::JobRecord {
            device: "dev-0".into(),
            tick_ms: 0,
            class: 0,
            shard: 0,
            outcome: crate::record::Outcome::Failed(crate::error::JobError::new(
                crate::error::Stage::Infer,
                crate::error::ErrorKind::Status {
                    code: crate::grpc::status::Code::NOT_FOUND,
                    message: "no model".into(),
                },
            )),
            outputs: Vec::new(),
            latency: crate::record::StageLatency::default(),
            compute_node: None,
            attempts: 1,
            ready_at: std::time::Instant::now(),
        };
        breakdown.record(&failed, &mut String::new());
        snapshot.failures = vec![breakdown];
        let text = render(&Arc::new(snapshot));
        assert!(
            text.contains(
                "percore_jobs_total{shard=\"0\",outcome=\"failed\",stage=\"infer\",reason=\"grpc NOT_FOUND\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "percore_jobs_total{shard=\"0\",outcome=\"skipped\",stage=\"\",reason=\"\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("shard=\"0\",outcome=\"failed\",stage=\"\""),
            "covered"
        );
        assert!(text
            .contains("percore_jobs_total{shard=\"1\",outcome=\"ok\",stage=\"\",reason=\"\"} 7\n"));
        assert!(text.contains(
            "percore_jobs_total{shard=\"1\",outcome=\"failed\",stage=\"\",reason=\"\"} 0\n"
        ));
        assert!(text.contains("percore_in_flight{shard=\"0\"} 3\n"));
        assert!(text.contains("percore_retries_total{shard=\"0\"} 4\n"));
        assert!(text.contains("percore_bytes_received_total{shard=\"0\"} 200\n"));
        assert!(text.contains("percore_shard_tasks_run_total{shard=\"0\"} 900\n"));
        assert!(text.contains("percore_shard_scheduler_runs_total{shard=\"0\"} 300\n"));
        assert!(text.contains("percore_shard_stalls_total{shard=\"1\"} 0\n"));
        assert!(text.contains("percore_shard_stalls_total{shard=\"0\"} 2\n"));
        assert!(text.contains("percore_shard_parks_total{shard=\"0\"} 40\n"));
        assert!(text.contains("percore_shard_preemptions_total{shard=\"0\"} 3\n"));
        assert!(
            text.contains(
                "# TYPE percore_shard_busy_seconds counter\n# UNIT percore_shard_busy_seconds seconds\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("percore_shard_busy_seconds_total{shard=\"0\"} 1.5\n"),
            "{text}"
        );
        assert!(text
            .contains("percore_stage_latency_seconds_bucket{le=\"0.0001\",stage=\"fetch\"} 1\n"));
        assert!(
            text.contains("percore_stage_latency_seconds_bucket{le=\"0.001\",stage=\"fetch\"} 3\n")
        );
        assert!(
            text.contains("percore_stage_latency_seconds_bucket{le=\"+Inf\",stage=\"fetch\"} 4\n")
        );
        assert!(text.contains("percore_stage_latency_seconds_count{stage=\"fetch\"} 4\n"));
        assert!(
            text.contains("\npercore_rows_committed_total 11\n"),
            "{text}"
        );
        assert!(text.contains("\npercore_healthy 1\n"), "{text}");
        assert!(
            text.contains("\npercore_sink_rows_journaled_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("\npercore_sink_rows_replayed_total 5\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE percore_sink_journal_bytes gauge\npercore_sink_journal_bytes 4096\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn replica_series_are_labelled_by_class_role_and_replica() {
        use crate::stats::ReplicaRole;
        let replica = |port: u16, requests: u64| ReplicaTotals {
            class: 0,
            role: ReplicaRole::ComputeNode,
            node: format!("127.0.0.1:{port}").into(),
            requests,
            failures: 2,
            ejections: 1,
            ewma_latency_us: 1_500.0,
            outstanding: 3,
            ready_shards: 2,
            ejected_shards: 1,
            shards: 2,
        };
        let snapshot = MetricsSnapshot {
            upstream: UpstreamTotals {
                replicas: vec![
                    replica(9001, 40),
                    replica(9002, 60),
                    ReplicaTotals {
                        class: 1,
                        role: ReplicaRole::DataSource,
                        ..replica(9000, 7)
                    },
                ],
                retry_budget_exhausted: vec![5, 0],
            },
            class_names: vec!["cam\"era".to_string(), "meter".to_string()].into(),
            ..MetricsSnapshot::default()
        };
        let text = render(&Arc::new(snapshot));
        let camera = "class=\"cam\\\"era\",role=\"compute_node\"";
        for expected in [
            format!("percore_replica_requests_total{{{camera},replica=\"127.0.0.1:9001\"}} 40\n"),
            format!("percore_replica_requests_total{{{camera},replica=\"127.0.0.1:9002\"}} 60\n"),
            "percore_replica_requests_total{class=\"meter\",role=\"data_source\",replica=\"127.0.0.1:9000\"} 7\n".to_string(),
            format!("percore_replica_failures_total{{{camera},replica=\"127.0.0.1:9001\"}} 2\n"),
            format!("percore_replica_ejections_total{{{camera},replica=\"127.0.0.1:9001\"}} 1\n"),
            format!("percore_replica_latency_ewma_seconds{{{camera},replica=\"127.0.0.1:9001\"}} 0.0015\n"),
            format!("percore_replica_outstanding{{{camera},replica=\"127.0.0.1:9001\"}} 3\n"),
            format!("percore_replica_ready_shards{{{camera},replica=\"127.0.0.1:9001\"}} 2\n"),
            format!("percore_replica_ejected_shards{{{camera},replica=\"127.0.0.1:9001\"}} 1\n"),
            "percore_retry_budget_exhausted_total{class=\"cam\\\"era\"} 5\n".to_string(),
            "percore_retry_budget_exhausted_total{class=\"meter\"} 0\n".to_string(),
        ] {
            assert!(text.contains(&expected), "{expected} missing from\n{text}");
        }
        for (name, _, _) in REPLICA_COUNTERS {
            assert!(text.contains(&format!("# TYPE {name} counter\n")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        for (name, _, _) in REPLICA_GAUGES {
            assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{name}");
        }
        assert!(text.contains("# UNIT percore_replica_latency_ewma_seconds seconds\n"));
        assert!(text.contains("# TYPE percore_retry_budget_exhausted counter\n"));
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Every sample line is `name{labels} value` with a number for a value.
        for line in text.lines().filter(|l| l.starts_with("percore_replica_")) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
