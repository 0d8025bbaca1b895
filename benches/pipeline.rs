//! The pipeline benchmark: mock nodes and the dispatcher on loopback, closed or
//! open loop, printing the `--summary-json` object.
//!
//! ```text
//! cargo bench --bench pipeline -- [--shards N] [--service-time-us U]
//!     [--concurrency C | --rate R [--poisson] | --tick-rate R] [--duration SECS]
//!     [--payload-bytes B] [--devices N] [--postgres postgresql://user@host:port/db]
//!     [--tls] [--batch B [--linger-us L]]
//! ```
//! `--batch B` batches the class's ModelInfer calls, up to B rows each, with a
//! linger of L µs (default 1000), as `[classes.batching]` does; the output's
//! `bench.infer_calls` is the calls the mock compute node took.
//! With `--postgres` the rows go into that database (a table per level, dropped
//! after it) instead of a scratch SQLite file. With `--tls` both calls of every
//! job go over TLS: the mock nodes serve a certificate made at start (rcgen) by
//! a CA the class trusts (`[classes.tls] ca_file`, `[classes.source_tls]`).
//! Shards take the first N allowed CPUs; mock nodes take the CPUs left over (or
//! share when none are). CPU per job counts dispatcher threads only.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use percore::bench::{Bench, BenchOptions, Level};
use percore::config::{Batching, DEFAULT_LINGER, MAX_BATCH_LIMIT};
use percore::endpoint::tls::{server_config, ClientTlsSpec};
use percore::endpoint::{ClientTls, Endpoint};
use percore::mock::{MockKind, MockNode, MockOptions, ServiceTime};
use percore::sink::postgres::{PgUrl, PostgresOptions};

/// Mock nodes serving TLS, started by `--tls`, stopped at the end.
struct TlsMocks {
    /// The data source, serving TLS.
    source: MockNode,
    /// The compute node, serving TLS.
    compute: MockNode,
}

/// Writes a CA and a certificate for 127.0.0.1 into `dir`, starts both mock
/// nodes with TLS on the CPUs no shard takes, and returns them with the class
/// that reaches them over TLS.
fn tls_mocks(
    options: &BenchOptions,
    dir: &Path,
) -> Result<(TlsMocks, percore::config::Class), String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let failed = |what: &str, error: &dyn std::fmt::Display| format!("--tls: {what}: {error}");
    std::fs::create_dir_all(dir).map_err(|e| failed("scratch folder", &e))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| failed("CA", &e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().map_err(|e| failed("CA key", &e))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| failed("CA", &e))?;
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .map_err(|e| failed("certificate", &e))?;
    let key = KeyPair::generate().map_err(|e| failed("key", &e))?;
    let cert = params
        .signed_by(&key, &ca)
        .map_err(|e| failed("certificate", &e))?;
    for (name, text) in [
        ("ca.pem", ca.as_ref().pem()),
        ("server.pem", cert.pem()),
        ("server.key", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), text).map_err(|e| failed(name, &e))?;
    }
    let server = server_config(&dir.join("server.pem"), &dir.join("server.key"), None)?;
    let cpus = percore::tuning::allowed_cpus();
    let mock_cpus: Vec<Option<usize>> = match cpus.get(options.shards..) {
        Some(rest) if !rest.is_empty() => rest.iter().map(|&cpu| Some(cpu)).collect(),
        _ => vec![None],
    };
    let mock = MockOptions {
        service_time: ServiceTime::Fixed(options.service_time),
        payload_bytes: options.payload_bytes,
        tls: Some(server),
        ..MockOptions::default()
    };
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let start = |kind| {
        MockNode::start(kind, any, &mock_cpus, 512 * 1024, mock.clone())
            .map_err(|error| failed("mock node", &error))
    };
    let mocks = TlsMocks {
        source: start(MockKind::Source)?,
        compute: start(MockKind::Compute)?,
    };
    let trust = ClientTls::load(&ClientTlsSpec {
        ca_file: Some(dir.join("ca.pem")),
        ..ClientTlsSpec::default()
    })
    .map_err(|error| failed(error.key, &error.message))?;
    let over_tls = |addr: SocketAddr| Endpoint::from(addr).with_tls(trust.clone());
    let mut class = percore::demo::mock_class(
        "bench",
        "mock",
        10_000,
        2_000,
        mocks.source.addr,
        mocks.compute.addr,
    );
    class.data_sources = vec![over_tls(mocks.source.addr)?];
    class.compute_nodes = vec![over_tls(mocks.compute.addr)?];
    Ok((mocks, class))
}

/// What the command line asks for.
struct Args {
    /// Every level's options.
    options: BenchOptions,
    /// The level run.
    level: Level,
    /// `--tls`: both calls of every job over TLS.
    tls: bool,
    /// `--batch B --linger-us L`: the class batches its ModelInfer calls.
    batching: Option<Batching>,
}

fn parse_args() -> Result<Args, String> {
    let mut options = BenchOptions {
        shards: 1,
        poisson: false,
        duration: Duration::from_secs(10),
        service_time: Duration::ZERO,
        payload_bytes: 1024,
        devices: 100_000,
        external: None,
        sink_commit_delay: Duration::ZERO,
        postgres: None,
        scratch_dir: std::env::temp_dir().join(format!("percore-bench-{}", std::process::id())),
    };
    let mut level = Level::Concurrency(64);
    let mut tls = false;
    let mut batch: Option<usize> = None;
    let mut linger = DEFAULT_LINGER;
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        match flag.as_str() {
            "--bench" => continue, // added by `cargo bench`
            "--poisson" => {
                options.poisson = true;
                continue;
            }
            "--tls" => {
                tls = true;
                continue;
            }
            _ => {}
        }
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number = || -> Result<u64, String> {
            value
                .parse()
                .map_err(|_| format!("{flag}: {value:?} is not a whole number"))
        };
        match flag.as_str() {
            "--shards" => options.shards = number()? as usize,
            "--service-time-us" => options.service_time = Duration::from_micros(number()?),
            "--concurrency" => level = Level::Concurrency(number()? as usize),
            "--rate" => level = Level::Rate(number()? as f64),
            "--tick-rate" => level = Level::TickRate(number()? as f64),
            "--duration" => options.duration = Duration::from_secs(number()?),
            "--payload-bytes" => options.payload_bytes = number()? as usize,
            "--devices" => options.devices = number()? as usize,
            "--batch" => batch = Some(number()? as usize),
            "--linger-us" => linger = Duration::from_micros(number()?),
            "--postgres" => {
                let url = PgUrl::parse(&value).map_err(|why| format!("--postgres {why}"))?;
                let mut postgres = PostgresOptions::new(url);
                postgres.table = format!("bench_pipeline_{}", std::process::id());
                options.postgres = Some(postgres);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let batching = match batch {
        None => None,
        Some(max_batch) if (2..=MAX_BATCH_LIMIT as usize).contains(&max_batch) => {
            Some(Batching { max_batch, linger })
        }
        Some(other) => return Err(format!("--batch {other}: must be 2 to {MAX_BATCH_LIMIT}")),
    };
    Ok(Args {
        options,
        level,
        tls,
        batching,
    })
}

fn main() {
    let Args {
        mut options,
        level,
        tls,
        batching,
    } = match parse_args() {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("pipeline: {error}");
            std::process::exit(2);
        }
    };
    let scratch = options.scratch_dir.clone();
    let mut tls_mocks_started = None;
    if tls {
        match tls_mocks(&options, &scratch.join("tls")) {
            Ok((mocks, class)) => {
                options.external = Some(class);
                tls_mocks_started = Some(mocks);
            }
            Err(error) => {
                eprintln!("pipeline: {error}");
                std::process::exit(1);
            }
        }
    }
    let described = serde_json::json!({
        "tls": tls,
        "shards": options.shards,
        "service_time_us": options.service_time.as_micros() as u64,
        "level": level.to_string(),
        "payload_bytes": options.payload_bytes,
        "devices": options.devices,
        "batch": batching.map(|b| b.max_batch),
        "linger_us": batching.map(|b| b.linger.as_micros() as u64),
    });
    let result = Bench::start(options).and_then(|bench| {
        let bench = bench.with_batching(batching);
        let summary = bench.run(level);
        let calls = bench.infer_calls();
        bench.stop();
        summary.map(|summary| (summary, calls))
    });
    let result = result.map(|(summary, calls)| {
        let tls_calls = tls_mocks_started
            .as_ref()
            .map(|mocks| mocks.compute.control().calls());
        (summary, calls.or(tls_calls))
    });
    if let Some(mocks) = tls_mocks_started {
        mocks.source.stop();
        mocks.compute.stop();
    }
    let _ = std::fs::remove_dir_all(scratch);
    match result {
        Ok((summary, calls)) => {
            let mut json = summary.to_json();
            json["bench"] = described;
            json["bench"]["infer_calls"] = calls.into();
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
            eprint!("{}", summary.latency_table());
            eprintln!("{}", summary.totals_line());
        }
        Err(error) => {
            eprintln!("pipeline: {error}");
            std::process::exit(1);
        }
    }
}
