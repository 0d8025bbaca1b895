//! The fault benchmark: three compute replicas, one of which becomes 10× slower
//! halfway through the run. Prints end-to-end p50/p99/p99.9 before and after the
//! slowdown, and each replica's share of the jobs, for each balancer.
//!
//! ```text
//! cargo bench --bench faults -- [--seconds S] [--rate JOBS_PER_S] [--balancer p2c|round_robin|both]
//! ```
//! The fleet ticks (devices spread over a 1 s period), mock nodes run on this
//! host's CPUs beside the shards; the fast replicas answer in 1 ms, the slow one
//! in 10 ms after the halfway mark.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use percore::config::{BalancerKind, Config, GrpcConfig, SinkConfig, Upstream};
use percore::devices::Fleet;
use percore::dispatcher::{self, RunOptions};
use percore::mock::{MockKind, MockNode, MockOptions, ServiceTime};
use percore::tuning::Tuning;

/// Where the slow replica's extra time comes from: 1 ms + 9 ms.
const FAST: Duration = Duration::from_millis(1);
const SLOWDOWN: Duration = Duration::from_millis(9);

struct Args {
    seconds: u64,
    rate: usize,
    balancers: Vec<BalancerKind>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 20,
        rate: 2_000,
        balancers: vec![BalancerKind::PowerOfTwoChoices, BalancerKind::RoundRobin],
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        if flag == "--bench" {
            continue;
        }
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => {
                args.seconds = value.parse().map_err(|_| format!("--seconds {value:?}"))?
            }
            "--rate" => args.rate = value.parse().map_err(|_| format!("--rate {value:?}"))?,
            "--balancer" => {
                args.balancers = match value.as_str() {
                    "p2c" => vec![BalancerKind::PowerOfTwoChoices],
                    "round_robin" => vec![BalancerKind::RoundRobin],
                    "both" => args.balancers.clone(),
                    other => return Err(format!("--balancer {other:?}: p2c, round_robin or both")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.seconds < 4 {
        return Err("--seconds must be at least 4".into());
    }
    Ok(args)
}

/// One row of the results: where it ran, when, how long it took.
struct Row {
    tick_ms: i64,
    end_to_end_us: Option<i64>,
    compute_node: Option<String>,
    outcome: String,
}

fn read_rows(db: &PathBuf) -> Result<Vec<Row>, String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    let mut statement = conn
        .prepare("SELECT tick_ms, end_to_end_us, compute_node, outcome FROM jobs")
        .map_err(|e| e.to_string())?;
    let rows = statement
        .query_map([], |row| {
            Ok(Row {
                tick_ms: row.get(0)?,
                end_to_end_us: row.get(1)?,
                compute_node: row.get(2)?,
                outcome: row.get(3)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    Ok(rows)
}

/// p50, p99, p99.9 of end-to-end latency in ms, share per replica, ok/failed.
fn describe(rows: &[&Row], nodes: &[(SocketAddr, &str)]) -> String {
    let mut histogram =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("a histogram");
    let mut shares: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failed = 0;
    for row in rows {
        if row.outcome != "ok" {
            failed += 1;
        }
        if let Some(us) = row.end_to_end_us {
            histogram.saturating_record(us.max(1) as u64);
        }
        if let Some(node) = &row.compute_node {
            let name = nodes
                .iter()
                .find(|(addr, _)| addr.to_string() == *node)
                .map_or("?", |(_, name)| name);
            *shares.entry(name).or_insert(0) += 1;
        }
    }
    let total: u64 = shares.values().sum::<u64>().max(1);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let shares: Vec<String> = shares
        .iter()
        .map(|(name, count)| format!("{name} {:.1}%", 100.0 * *count as f64 / total as f64))
        .collect();
    format!(
        "p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  not ok {:>5}  shares: {}",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        failed,
        shares.join(", ")
    )
}

fn run_one(args: &Args, balancer: BalancerKind) -> Result<String, String> {
    let fast = MockOptions {
        service_time: ServiceTime::Fixed(FAST),
        ..MockOptions::default()
    };
    let start = |options: MockOptions| {
        MockNode::start(
            MockKind::Compute,
            "127.0.0.1:0".parse().expect("an address"),
            &[None],
            512 * 1024,
            options,
        )
        .map_err(|e| e.to_string())
    };
    let source = MockNode::start(
        MockKind::Source,
        "127.0.0.1:0".parse().expect("an address"),
        &[None],
        512 * 1024,
        MockOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let replicas = [start(fast.clone())?, start(fast.clone())?, start(fast)?];
    let nodes: Vec<(SocketAddr, &str)> = vec![
        (replicas[0].addr, "fast-a"),
        (replicas[1].addr, "fast-b"),
        (replicas[2].addr, "slowed"),
    ];
    let dir = std::env::temp_dir().join(format!("percore-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let db = dir.join("jobs.db");
    let mut class =
        percore::demo::mock_class("meter", "mock", 1_000, 1_000, source.addr, replicas[0].addr);
    class.compute_nodes = nodes.iter().map(|(addr, _)| (*addr).into()).collect();
    class.upstream = Upstream {
        balancer,
        ..Upstream::default()
    };
    let config = Config {
        path: PathBuf::from("<fault bench>"),
        classes: vec![class],
        fleet: Fleet::generate(args.rate, &[(0, 1)]),
        sink: SinkConfig::sqlite(&db),
        grpc: GrpcConfig::default(),
        tuning: Tuning {
            io_memory_kib: 256,
            ..Tuning::default()
        },
        cluster: percore::config::ClusterConfig::default(),
    };
    let control = replicas[2].control();
    let half = Duration::from_secs(args.seconds / 2);
    let slowed_at = std::sync::Arc::new(std::sync::Mutex::new(0i64));
    let slowed_at_writer = slowed_at.clone();
    let slowdown = std::thread::spawn(move || {
        // The run starts ~0.2 s after dispatcher::run is called.
        std::thread::sleep(half);
        control.set_added_latency(SLOWDOWN);
        if let Ok(mut at) = slowed_at_writer.lock() {
            *at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
        }
    });
    let options = RunOptions {
        duration: Some(Duration::from_secs(args.seconds)),
        ..RunOptions::default()
    };
    let result = dispatcher::run(&config, &options).map_err(|e| e.0);
    let _ = slowdown.join();
    source.stop();
    for replica in replicas {
        replica.stop();
    }
    result?;
    let rows = read_rows(&db)?;
    let _ = std::fs::remove_dir_all(&dir);
    let slowed_ms = slowed_at.lock().map(|at| *at).unwrap_or(0);
    // Leave out the second after the change: the balancer is still learning.
    let before: Vec<&Row> = rows.iter().filter(|r| r.tick_ms < slowed_ms).collect();
    let after: Vec<&Row> = rows
        .iter()
        .filter(|r| r.tick_ms >= slowed_ms + 1_000)
        .collect();
    Ok(format!(
        "{:<12} before: {}\n{:<12} after:  {}\n",
        match balancer {
            BalancerKind::PowerOfTwoChoices => "p2c",
            BalancerKind::RoundRobin => "round_robin",
        },
        describe(&before, &nodes),
        "",
        describe(&after, &nodes),
    ))
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("faults: {error}");
            std::process::exit(2);
        }
    };
    println!(
        "3 replicas answering in {} ms; after {} s one takes {} ms more. {} jobs/s for {} s per balancer.",
        FAST.as_millis(),
        args.seconds / 2,
        SLOWDOWN.as_millis(),
        args.rate,
        args.seconds
    );
    for &balancer in &args.balancers {
        match run_one(&args, balancer) {
            Ok(text) => print!("{text}"),
            Err(error) => {
                eprintln!("faults: {error}");
                std::process::exit(1);
            }
        }
    }
}
