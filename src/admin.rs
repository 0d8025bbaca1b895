//! The admin endpoint: Prometheus metrics and `/healthz` over HTTP.
//!
//! Served by one plain thread (not a shard) from the latest [`MetricsSnapshot`]
//! the coordinator published into a [`MetricsPublisher`]; a scrape never touches a
//! shard and always sees the newest snapshot. It listens on 127.0.0.1 unless told
//! otherwise. HTTP/1.1 by tiny_http: keep-alive for scrapers, `GET` and `HEAD`.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::failures::FailureBreakdown;
use crate::stats::{Counters, ReplicaTotals, StageHistograms, UpstreamTotals};

/// A per-shard metric family: name, help text, and how to read it from counters.
type Family = (&'static str, &'static str, fn(&Counters) -> u64);

/// A per-replica metric family: name, Prometheus type, help text, and how to
/// read it from a replica's totals.
type ReplicaFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ReplicaTotals) -> f64,
);

/// The per-replica families, labelled `{class, role, replica}`.
const REPLICA_FAMILIES: [ReplicaFamily; 7] = [
    (
        "percore_replica_requests_total",
        "counter",
        "Attempts on the replica that ended (ok or not; cancelled hedges excluded), all shards.",
        |r| r.requests as f64,
    ),
    (
        "percore_replica_failures_total",
        "counter",
        "Attempts that failed in a way that counts against the replica, all shards.",
        |r| r.failures as f64,
    ),
    (
        "percore_replica_ejections_total",
        "counter",
        "Times a shard ejected the replica for failing, all shards.",
        |r| r.ejections as f64,
    ),
    (
        "percore_replica_latency_ewma_seconds",
        "gauge",
        "Peak-EWMA latency estimate the balancers weigh the replica by, shards weighted by their requests.",
        |r| r.ewma_latency_us / 1e6,
    ),
    (
        "percore_replica_outstanding",
        "gauge",
        "Attempts on the replica in flight now, all shards.",
        |r| r.outstanding as f64,
    ),
    (
        "percore_replica_ready_shards",
        "gauge",
        "Shards whose last probe found the replica ready.",
        |r| f64::from(r.ready_shards),
    ),
    (
        "percore_replica_ejected_shards",
        "gauge",
        "Shards that have the replica ejected now.",
        |r| f64::from(r.ejected_shards),
    ),
];

/// Upper bounds of the Prometheus latency buckets, in seconds.
const BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// What the coordinator publishes, about once a second, at once when the run's
/// health changes, and once at the end.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Counters and gauges by shard index: results *computed* by the shards.
    pub per_shard: Vec<Counters>,
    /// Rows the sink has *committed* so far (all shards).
    pub rows_committed: u64,
    /// Latencies of the whole run so far, all shards merged.
    pub latency: StageHistograms,
    /// Every replica's counters and gauges, and the retry budgets' refusals,
    /// all shards merged from their latest reports.
    pub upstream: UpstreamTotals,
    /// Each shard's failure breakdown, by shard index: the `stage` and
    /// `reason` labels of `percore_jobs_total`'s failed and skipped series.
    pub failures: Vec<FailureBreakdown>,
    /// Class names by class index: the `class` label of the upstream series.
    pub class_names: Arc<[String]>,
    /// Whether the run is working: `/healthz` answers 503 with the cause otherwise.
    pub health: Health,
}

/// The run's health as `/healthz` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Health {
    /// Everything works (or nothing has been published yet).
    #[default]
    Ok,
    /// Something fails now (the sink cannot write, a shard died); the text says what.
    Failing(String),
}

/// The one slot the coordinator writes its newest snapshot into and the admin
/// thread reads at each request. A lock, not a channel: a scrape must see the
/// newest state, not whatever was queued since the last scrape; it is taken once a
/// second by the coordinator and once per scrape, never on a shard.
#[derive(Debug, Clone, Default)]
pub struct MetricsPublisher {
    /// The newest snapshot; replaced whole, so a reader only clones the `Arc`.
    latest: Arc<Mutex<Arc<MetricsSnapshot>>>,
}

impl MetricsPublisher {
    /// Makes `snapshot` what the next scrape sees.
    pub fn publish(&self, snapshot: MetricsSnapshot) {
        let snapshot = Arc::new(snapshot);
        // A poisoned lock only means a panic elsewhere; the slot is still valid.
        match self.latest.lock() {
            Ok(mut latest) => *latest = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    /// The newest snapshot.
    pub fn latest(&self) -> Arc<MetricsSnapshot> {
        match self.latest.lock() {
            Ok(latest) => latest.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// A running admin server.
pub struct AdminServer {
    /// Where it listens (the real port when asked for port 0).
    addr: SocketAddr,
    /// Where the coordinator puts snapshots; the server reads the newest.
    publisher: MetricsPublisher,
    /// The HTTP server, shared with the serving thread so `stop` can unblock it.
    server: Arc<tiny_http::Server>,
    /// The serving thread, joined by `stop`.
    thread: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves from a new thread named `pc-admin`.
    pub fn start(addr: SocketAddr) -> io::Result<AdminServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map(Arc::new)
            .map_err(io::Error::other)?;
        let publisher = MetricsPublisher::default();
        let (serving, snapshots) = (server.clone(), publisher.clone());
        let thread = std::thread::Builder::new()
            .name("pc-admin".into())
            .spawn(move || serve(&serving, &snapshots))?;
        Ok(AdminServer {
            addr,
            publisher,
            server,
            thread,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the coordinator publishes its snapshots.
    pub fn publisher(&self) -> MetricsPublisher {
        self.publisher.clone()
    }

    /// Stops serving and waits for the thread.
    pub fn stop(self) {
        self.server.unblock();
        let _ = self.thread.join();
    }
}

/// Answers requests until the server is unblocked. tiny_http reads requests on
/// its own threads (a slow client holds up no other scrape) and this one thread
/// renders the answers from the newest snapshot.
fn serve(server: &tiny_http::Server, snapshots: &MetricsPublisher) {
    for request in server.incoming_requests() {
        let (status, content_type, body) =
            answer(request.method(), request.url(), &snapshots.latest());
        let body = match request.method() {
            tiny_http::Method::Head => String::new(),
            _ => body,
        };
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", content_type));
        let response = match status {
            405 => response.with_header(header("Allow", "GET, HEAD")),
            _ => response,
        };
        // A client that went away only loses its own answer.
        let _ = request.respond(response);
    }
}

/// A header from two constants (valid ASCII: cannot fail).
fn header(name: &'static str, value: &'static str) -> tiny_http::Header {
    tiny_http::Header {
        field: name
            .parse()
            .unwrap_or_else(|()| unreachable!("constant header name")),
        value: value
            .parse()
            .unwrap_or_else(|_| unreachable!("constant header value")),
    }
}

/// The status, content type and body of the answer to `method path`.
fn answer(
    method: &tiny_http::Method,
    url: &str,
    snapshot: &MetricsSnapshot,
) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or("");
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return (405, "text/plain", "GET or HEAD only\n".to_string());
    }
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus_text(snapshot),
        ),
        "/healthz" => match &snapshot.health {
            Health::Ok => (200, "text/plain", "ok\n".to_string()),
            Health::Failing(cause) => (503, "text/plain", format!("failing: {cause}\n")),
        },
        _ => (404, "text/plain", "not found\n".to_string()),
    }
}

/// One shard's `percore_jobs_total` series: `ok` with empty stage and
/// reason, then one series per (stage, reason class) of its breakdown. Failed
/// or skipped records the breakdown does not cover (none, unless a snapshot
/// was built without it) get empty labels, so the series always add up to
/// the shard's counters.
fn jobs_series(out: &mut String, shard: usize, counters: &Counters, breakdown: &FailureBreakdown) {
    let series = |out: &mut String, outcome: &str, stage: &str, reason: &str, value: u64| {
        let _ = writeln!(
            out,
            "percore_jobs_total{{shard=\"{shard}\",outcome=\"{outcome}\",stage=\"{stage}\",reason=\"{reason}\"}} {value}"
        );
    };
    series(out, "ok", "", "", counters.ok);
    let (mut failed, mut skipped) = (0, 0);
    for entry in &breakdown.entries {
        let outcome = entry.outcome();
        match entry.stage {
            Some(_) => failed += entry.count,
            None => skipped += entry.count,
        }
        series(
            out,
            outcome,
            entry.stage_label(),
            entry.class.label(),
            entry.count,
        );
    }
    for (outcome, total, covered) in [
        ("failed", counters.failed, failed),
        ("skipped", counters.skipped, skipped),
    ] {
        if total > covered || (total == 0 && covered == 0) {
            series(out, outcome, "", "", total.saturating_sub(covered));
        }
    }
}

/// Renders a snapshot in the Prometheus text exposition format.
pub fn prometheus_text(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let shards = snapshot.per_shard.iter().enumerate();
    let _ = writeln!(
        out,
        "# HELP percore_jobs_total Jobs by outcome (ok, failed, skipped), stage (fetch, infer; start for a skipped tick) and bounded reason class, per shard."
    );
    let _ = writeln!(out, "# TYPE percore_jobs_total counter");
    let no_failures = FailureBreakdown::default();
    for (shard, counters) in shards.clone() {
        let breakdown = snapshot.failures.get(shard).unwrap_or(&no_failures);
        jobs_series(&mut out, shard, counters, breakdown);
    }
    let counter_families: [Family; 3] = [
        (
            "percore_retries_total",
            "Calls tried again on another node after a retryable failure, per shard.",
            |c| c.retries,
        ),
        (
            "percore_bytes_sent_total",
            "gRPC message bytes sent, per shard.",
            |c| c.bytes_sent,
        ),
        (
            "percore_bytes_received_total",
            "gRPC message bytes received, per shard.",
            |c| c.bytes_received,
        ),
    ];
    for (name, help, value) in counter_families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (shard, counters) in shards.clone() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(counters));
        }
    }
    let name = "percore_rows_committed_total";
    let _ = writeln!(
        out,
        "# HELP {name} Rows the sink has committed (percore_jobs_total counts results computed).\n\
         # TYPE {name} counter\n{name} {}",
        snapshot.rows_committed
    );
    let name = "percore_healthy";
    let _ = writeln!(
        out,
        "# HELP {name} 1 while the run works, 0 while /healthz answers 503.\n\
         # TYPE {name} gauge\n{name} {}",
        u8::from(snapshot.health == Health::Ok)
    );
    let gauge_families: [Family; 2] = [
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
    for (name, help, value) in gauge_families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (shard, counters) in shards.clone() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(counters));
        }
    }
    let name = "percore_stage_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of each job stage (all shards).\n# TYPE {name} histogram"
    );
    for (stage, histogram) in snapshot.latency.stages() {
        for bound in BUCKETS_S {
            let bound_us = (bound * 1e6) as u64;
            let count = histogram.count_between(0, bound_us);
            let _ = writeln!(
                out,
                "{name}_bucket{{stage=\"{stage}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}",
            histogram.len()
        );
        let sum_s = histogram.mean() * histogram.len() as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{stage=\"{stage}\"}} {sum_s}");
        let _ = writeln!(out, "{name}_count{{stage=\"{stage}\"}} {}", histogram.len());
    }
    replica_text(snapshot, &mut out);
    out
}

/// The per-replica families and the retry budgets' refusals per class.
fn replica_text(snapshot: &MetricsSnapshot, out: &mut String) {
    let class = |index: u16| -> String {
        snapshot
            .class_names
            .get(usize::from(index))
            .map_or_else(|| index.to_string(), |name| label_value(name))
    };
    for (name, kind, help, value) in REPLICA_FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for replica in &snapshot.upstream.replicas {
            let _ = writeln!(
                out,
                "{name}{{class=\"{}\",role=\"{}\",replica=\"{}\"}} {}",
                class(replica.class),
                replica.role.label(),
                replica.node,
                value(replica)
            );
        }
    }
    let name = "percore_retry_budget_exhausted_total";
    let _ = writeln!(
        out,
        "# HELP {name} Retries and hedges refused because the class's retry budget was spent, all shards.\n\
         # TYPE {name} counter"
    );
    for (index, refused) in snapshot.upstream.retry_budget_exhausted.iter().enumerate() {
        let index = u16::try_from(index).unwrap_or(u16::MAX);
        let _ = writeln!(out, "{name}{{class=\"{}\"}} {refused}", class(index));
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped
/// (class names come from the config file and may hold any of them).
fn label_value(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

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
                },
                Counters {
                    ok: 7,
                    ..Counters::default()
                },
            ],
            latency: StageHistograms::default(),
            rows_committed: 11,
            health: Health::Ok,
            ..MetricsSnapshot::default()
        };
        for us in [50, 700, 700, 20_000] {
            snapshot.latency.fetch.record(us).unwrap();
        }
        // Shard 0's failure is in its breakdown; its two skips are not.
        let mut breakdown = FailureBreakdown::default();
        let failed = crate::record::JobRecord {
            device: 0,
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
            output: bytes::Bytes::new(),
            latency: crate::record::StageLatency::default(),
            compute_node: None,
            attempts: 1,
            ready_at: std::time::Instant::now(),
        };
        breakdown.record(&failed, &mut String::new());
        snapshot.failures = vec![breakdown];
        let text = prometheus_text(&snapshot);
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
        assert!(text
            .contains("percore_stage_latency_seconds_bucket{stage=\"fetch\",le=\"0.0001\"} 1\n"));
        assert!(
            text.contains("percore_stage_latency_seconds_bucket{stage=\"fetch\",le=\"0.001\"} 3\n")
        );
        assert!(
            text.contains("percore_stage_latency_seconds_bucket{stage=\"fetch\",le=\"+Inf\"} 4\n")
        );
        assert!(text.contains("percore_stage_latency_seconds_count{stage=\"fetch\"} 4\n"));
        assert!(
            text.contains("\npercore_rows_committed_total 11\n"),
            "{text}"
        );
        assert!(text.contains("\npercore_healthy 1\n"), "{text}");
    }

    #[test]
    fn replica_series_are_labelled_by_class_role_and_replica() {
        use crate::stats::ReplicaRole;
        let replica = |port: u16, requests: u64| ReplicaTotals {
            class: 0,
            role: ReplicaRole::ComputeNode,
            node: SocketAddr::from(([127, 0, 0, 1], port)),
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
        let text = prometheus_text(&snapshot);
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
        for (name, kind, _, _) in REPLICA_FAMILIES {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert!(text.contains("# TYPE percore_retry_budget_exhausted_total counter\n"));
        // Every sample line is `name{labels} value` with a number for a value.
        for line in text.lines().filter(|l| l.starts_with("percore_replica_")) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert_eq!(label_value("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn serves_metrics_healthz_and_404() {
        let server = AdminServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let snapshot = |ok: u64, health: Health| MetricsSnapshot {
            per_shard: vec![Counters {
                ok,
                ..Counters::default()
            }],
            health,
            ..MetricsSnapshot::default()
        };
        server.publisher().publish(snapshot(41, Health::Ok));
        // Only the newest snapshot counts, however many came since the last scrape.
        server.publisher().publish(snapshot(42, Health::Ok));
        let send = |request: &str| {
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        };
        let get = |path: &str| {
            send(&format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            ))
        };
        let metrics = get("/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(metrics
            .contains("percore_jobs_total{shard=\"0\",outcome=\"ok\",stage=\"\",reason=\"\"} 42"));
        assert!(get("/healthz").ends_with("\r\n\r\nok\n"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
        let cause = "sink x.db: committing 5 rows failed: database or disk is full";
        server
            .publisher()
            .publish(snapshot(43, Health::Failing(cause.into())));
        let health = get("/healthz");
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.ends_with(&format!("failing: {cause}\n")), "{health}");
        assert!(get("/metrics").contains("\npercore_healthy 0\n"));

        // HEAD answers the headers alone; other methods are refused and told
        // what is allowed; a scraper may keep its connection for the next scrape.
        let head = send("HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let post = send(
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.contains("Allow: GET, HEAD"), "{post}");
        let twice = send(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(twice.matches("HTTP/1.1 ").count(), 2, "{twice}");
        assert!(twice.contains("percore_jobs_total{"), "{twice}");
        server.stop();
    }
}
