//! The etcd benchmark: what the cluster layer asks of etcd, measured against a
//! real single-member etcd this benchmark starts on loopback (Debian's
//! etcd-server; `PERCORE_TEST_ETCD` names another binary), through percore's
//! own client ([`percore::cluster::etcd`]).
//!
//! ```text
//! cargo bench --bench etcd -- [--puts N] [--watchers N]
//! ```
//! - **Put with a lease** (a registration), one at a time and 64 in flight:
//!   puts/s and latency percentiles.
//! - **Watch events**: 64 writers in flight, 1 and `--watchers` watchers on the
//!   prefix: events/s delivered to all watchers together, and the delay from a
//!   put's answer to the event reaching a watcher.
//! - **Lease expiry**: a 2 s lease never renewed, its key watched: how long
//!   after the grant the key's DELETE arrives (TTL + how much), five times.
//!
//! etcd shares this machine's cores with the benchmark and runs with its
//! defaults (fsync on every write), data in /tmp.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use percore::cluster::etcd::Etcd;
use percore::proto::etcd::event::EventType;

/// A single etcd member on free loopback ports, killed when dropped.
struct Server {
    /// The etcd process.
    child: Child,
    /// Its client URL.
    url: String,
    /// Its data folder, removed at the end.
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl Server {
    fn start() -> Result<Server, String> {
        let dir = tempfile::Builder::new()
            .prefix("percore-etcd-bench.")
            .tempdir_in("/tmp")
            .map_err(|error| error.to_string())?;
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let binary = std::env::var("PERCORE_TEST_ETCD").unwrap_or_else(|_| "etcd".into());
        let child = Command::new(&binary)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                format!("cannot start {binary}: {error} (apt-get install etcd-server)")
            })?;
        let server = Server {
            child,
            url,
            _dir: dir,
        };
        let began = Instant::now();
        while !healthy(client) {
            if began.elapsed() > Duration::from_secs(20) {
                return Err("etcd did not become healthy in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

fn parse_args() -> Result<(usize, usize), String> {
    let (mut puts, mut watchers) = (20_000, 100);
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        if flag == "--bench" {
            continue; // added by `cargo bench`
        }
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number: usize = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a whole number"))?;
        match flag.as_str() {
            "--puts" => puts = number.max(1_000),
            "--watchers" => watchers = number.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok((puts, watchers))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn percentiles(histogram: &Histogram<u64>) -> String {
    format!(
        "p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  max {:>6} µs",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    )
}

/// `count` puts, `in_flight` at a time, each writer under a lease of its own
/// (`shared`: all under one lease); puts/s and latencies.
async fn puts(
    etcd: Arc<Etcd>,
    count: usize,
    in_flight: usize,
    shared: bool,
    tag: &str,
) -> (f64, Histogram<u64>) {
    let (one, _) = etcd.grant(60).await.expect("a lease");
    let mut leases = Vec::new();
    for _ in 0..in_flight {
        leases.push(match shared {
            true => one,
            false => etcd.grant(60).await.expect("a lease").0,
        });
    }
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, &lease) in leases.iter().enumerate() {
        let etcd = etcd.clone();
        let tag = tag.to_string();
        tasks.spawn(async move {
            let mut latencies = histogram();
            let mut index = worker;
            while index < count {
                let key = format!("/percore/bench/{tag}/{index:08}");
                let value = format!(
                    r#"{{"addr": "10.0.{}.{}:8001", "weight": 1}}"#,
                    index / 250,
                    index % 250
                );
                let started = Instant::now();
                etcd.put(&key, value.as_bytes(), lease).await.expect("put");
                let _ = latencies.record(started.elapsed().as_micros() as u64);
                index += in_flight;
            }
            latencies
        });
    }
    let mut all = histogram();
    while let Some(done) = tasks.join_next().await {
        let _ = all.add(done.expect("a worker"));
    }
    let rate = count as f64 / began.elapsed().as_secs_f64();
    leases.push(one);
    leases.sort();
    leases.dedup();
    for lease in leases {
        etcd.revoke(lease).await.expect("revoke");
    }
    (rate, all)
}

/// `watchers` watches on one prefix while 64 writers put `count` keys: events
/// per second delivered (all watchers together) and the put-answer → event delay.
async fn watch_rate(
    etcd: Arc<Etcd>,
    count: usize,
    watchers: usize,
    tag: &str,
) -> (f64, Histogram<u64>) {
    let prefix = format!("/percore/bench/{tag}/");
    let (_, revision) = etcd.range(b"/", &[]).await.expect("a revision");
    let answered: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; count]));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..watchers {
        let mut watch = etcd
            .watch_prefix(&prefix, revision + 1)
            .await
            .expect("a watch");
        let answered = answered.clone();
        let prefix = prefix.clone();
        tasks.spawn(async move {
            let mut delays = histogram();
            let mut seen = 0;
            while seen < count {
                let batch = watch.next().await.expect("events");
                let now = Instant::now();
                for event in batch.events {
                    if event.r#type != EventType::Put as i32 {
                        continue;
                    }
                    seen += 1;
                    let Some(kv) = event.kv else { continue };
                    let key = String::from_utf8_lossy(&kv.key);
                    let index: usize = key[prefix.len()..].parse().unwrap_or(0);
                    // The put's answer may not be back yet: the delay is then 0.
                    if let Some(at) = answered.lock().unwrap()[index] {
                        let _ = delays
                            .record(now.saturating_duration_since(at).as_micros().max(1) as u64);
                    }
                }
            }
            (Instant::now(), delays)
        });
    }
    let began = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for worker in 0..64 {
        let etcd = etcd.clone();
        let prefix = prefix.clone();
        let answered = answered.clone();
        writers.spawn(async move {
            let mut index = worker;
            while index < count {
                etcd.put(&format!("{prefix}{index:08}"), b"{}", 0)
                    .await
                    .expect("put");
                answered.lock().unwrap()[index] = Some(Instant::now());
                index += 64;
            }
        });
    }
    while writers.join_next().await.is_some() {}
    let mut last = began;
    let mut delays = histogram();
    while let Some(done) = tasks.join_next().await {
        let (ended, histogram) = done.expect("a watcher");
        last = last.max(ended);
        let _ = delays.add(histogram);
    }
    let rate = (count * watchers) as f64 / last.duration_since(began).as_secs_f64();
    etcd.delete(
        prefix.as_bytes(),
        &percore::cluster::keys::prefix_end(prefix.as_bytes()),
    )
    .await
    .expect("cleanup");
    (rate, delays)
}

/// A lease of `ttl` seconds, never renewed: how long from its grant until
/// its key's DELETE reaches a watcher.
async fn expiry(etcd: &Etcd, ttl: i64, round: usize) -> Duration {
    let key = format!("/percore/bench/expiry/{round}");
    let (_, revision) = etcd.range(b"/", &[]).await.expect("a revision");
    let mut watch = etcd
        .watch_prefix(&key, revision + 1)
        .await
        .expect("a watch");
    let granted = Instant::now();
    let (lease, _) = etcd.grant(ttl).await.expect("a lease");
    etcd.put(&key, b"x", lease).await.expect("put");
    loop {
        let batch = watch.next().await.expect("events");
        if batch
            .events
            .iter()
            .any(|event| event.r#type == EventType::Delete as i32)
        {
            return granted.elapsed();
        }
    }
}

fn main() {
    let (count, watchers) = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let server = match Server::start() {
        Ok(server) => server,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let etcd = Arc::new(
            Etcd::new(std::slice::from_ref(&server.url), Duration::from_secs(10))
                .expect("a client"),
        );
        println!("etcd 3.4 single member on loopback, fsync on; {count} keys per level\n");
        println!("put with a lease (a registration):");
        for (in_flight, shared) in [(1, false), (64, false), (64, true)] {
            let keys = if in_flight == 1 {
                count.min(5_000)
            } else {
                count
            };
            let tag = format!("put{in_flight}{shared}");
            let (rate, latencies) = puts(etcd.clone(), keys, in_flight, shared, &tag).await;
            let leases = if shared {
                "one lease   "
            } else {
                "a lease each"
            };
            println!(
                "  {in_flight:>3} in flight, {leases}: {rate:>8.0} puts/s   {}",
                percentiles(&latencies)
            );
        }
        println!("\nwatch events (64 writers in flight):");
        for watching in [1, watchers] {
            let keys = (count / watching.max(1)).clamp(2_000, count);
            let (rate, delays) =
                watch_rate(etcd.clone(), keys, watching, &format!("watch{watching}")).await;
            println!(
                "  {watching:>3} watcher{}: {rate:>9.0} events/s delivered   put→event {}",
                if watching == 1 { " " } else { "s" },
                percentiles(&delays)
            );
        }
        println!("\nlease expiry (TTL 2 s, never renewed; grant → DELETE seen):");
        let mut excess = Vec::new();
        for round in 0..5 {
            let took = expiry(&etcd, 2, round).await;
            excess.push(took.saturating_sub(Duration::from_secs(2)));
            println!(
                "  round {round}: {:.3} s (TTL + {} ms)",
                took.as_secs_f64(),
                took.saturating_sub(Duration::from_secs(2)).as_millis()
            );
        }
        excess.sort();
        println!(
            "  TTL + {} ms median, {} ms max",
            excess[excess.len() / 2].as_millis(),
            excess[excess.len() - 1].as_millis()
        );
    });
}
