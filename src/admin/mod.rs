//! The admin endpoint: Prometheus metrics and `/healthz` over HTTP.
//!
//! Served by one plain thread (not a shard) from the latest [`MetricsSnapshot`]
//! the coordinator published into a [`MetricsPublisher`]; a scrape never touches a
//! shard and always sees the newest snapshot. It listens on 127.0.0.1 unless told
//! otherwise. HTTP/1.1 by tiny_http: keep-alive for scrapers, `GET` and `HEAD`.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub mod exposition;

use crate::failures::FailureBreakdown;
use crate::stats::{Counters, StageHistograms, UpstreamTotals};

/// What the coordinator publishes, about once a second, at once when the run's
/// health changes, and once at the end.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Counters and gauges by shard index: results *computed* by the shards.
    pub per_shard: Vec<Counters>,
    /// Rows the sink has *committed* so far (all shards).
    pub rows_committed: u64,
    /// Rows written to the spill journal so far because the database could
    /// not take them (0 without a journal).
    pub rows_journaled: u64,
    /// Rows replayed from the journal into the database so far, an earlier
    /// run's included.
    pub rows_replayed: u64,
    /// Bytes the journal's files hold now.
    pub journal_bytes: u64,
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
    snapshot: &Arc<MetricsSnapshot>,
) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or("");
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return (405, "text/plain", "GET or HEAD only\n".to_string());
    }
    match path {
        "/metrics" => (200, exposition::CONTENT_TYPE, exposition::render(snapshot)),
        "/healthz" => match &snapshot.health {
            Health::Ok => (200, "text/plain", "ok\n".to_string()),
            Health::Failing(cause) => (503, "text/plain", format!("failing: {cause}\n")),
        },
        _ => (404, "text/plain", "not found\n".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

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
