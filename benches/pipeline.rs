//! The pipeline benchmark: mock nodes and the dispatcher on loopback, closed or
//! open loop, printing the `--summary-json` object.
//!
//! ```text
//! cargo bench --bench pipeline -- [--shards N] [--service-time-us U]
//!     [--concurrency C | --rate R] [--duration SECS] [--payload-bytes B]
//! ```
//! Shards take the first N allowed CPUs; mock nodes take the CPUs left over (or
//! share when none are). CPU per job counts dispatcher threads only.

use std::path::PathBuf;
use std::time::Duration;

use percore::config::{Class, Config, GrpcConfig, OutputSpec, SinkConfig};
use percore::demo;
use percore::devices::Fleet;
use percore::dispatcher::{self, Load, RunOptions};
use percore::mock::{MockOptions, ServiceTime};
use percore::tuning::{allowed_cpus, Tuning};

struct Args {
    shards: usize,
    service_time_us: u64,
    concurrency: Option<usize>,
    rate: Option<u64>,
    duration_s: u64,
    payload_bytes: usize,
    devices: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        shards: 1,
        service_time_us: 0,
        concurrency: None,
        rate: None,
        duration_s: 10,
        payload_bytes: 1024,
        devices: 100_000,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        if flag == "--bench" {
            continue; // added by `cargo bench`
        }
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number = |what: &str| -> Result<u64, String> {
            value
                .parse()
                .map_err(|_| format!("{what}: {value:?} is not a whole number"))
        };
        match flag.as_str() {
            "--shards" => args.shards = number("--shards")? as usize,
            "--service-time-us" => args.service_time_us = number("--service-time-us")?,
            "--concurrency" => args.concurrency = Some(number("--concurrency")? as usize),
            "--rate" => args.rate = Some(number("--rate")?),
            "--duration" => args.duration_s = number("--duration")?,
            "--payload-bytes" => args.payload_bytes = number("--payload-bytes")? as usize,
            "--devices" => args.devices = number("--devices")? as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.concurrency.is_some() && args.rate.is_some() {
        return Err("give --concurrency or --rate, not both".into());
    }
    if args.concurrency.is_none() && args.rate.is_none() {
        args.concurrency = Some(64);
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("pipeline: {error}");
            std::process::exit(2);
        }
    };
    let cpus = allowed_cpus();
    if args.shards == 0 || args.shards > cpus.len() {
        eprintln!("pipeline: --shards must be 1..={}", cpus.len());
        std::process::exit(2);
    }
    let shard_cpus: Vec<usize> = cpus[..args.shards].to_vec();
    let tuning = Tuning {
        shard_cpus: shard_cpus.clone(),
        mock_cpus: cpus[args.shards..].to_vec(),
        max_in_flight_per_shard: 100_000,
        ..Tuning::default()
    };
    let mock = MockOptions {
        service_time: ServiceTime::Fixed(Duration::from_micros(args.service_time_us)),
        payload_bytes: args.payload_bytes,
        ..MockOptions::default()
    };
    let mocks = match demo::start_mocks(&tuning, mock.clone(), mock) {
        Ok(mocks) => mocks,
        Err(error) => {
            eprintln!("pipeline: starting mock nodes: {error}");
            std::process::exit(1);
        }
    };
    let dir = std::env::temp_dir().join(format!("percore-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    // Open loop: one class whose period spreads `devices` ticks evenly over a second
    // at the requested rate.
    let period_ms = match args.rate {
        Some(rate) => ((args.devices as u64 * 1000) / rate.max(1)).max(1),
        None => 1_000,
    };
    let config = Config {
        path: PathBuf::from("<bench>"),
        classes: vec![Class {
            name: "bench".into(),
            model: "mock".into(),
            model_version: String::new(),
            period_ms,
            deadline_ms: period_ms.clamp(1, 2_000),
            data_sources: vec![mocks.source.addr],
            compute_nodes: vec![mocks.compute.addr],
            input_name: "INPUT0".into(),
            output: Some(OutputSpec {
                name: None,
                datatype: "FP32".into(),
                shape: vec![1, 2],
            }),
        }],
        fleet: Fleet::generate(args.devices, &[(0, 1)]),
        sink: SinkConfig::Sqlite {
            path: dir.join("bench.db"),
        },
        grpc: GrpcConfig::default(),
        tuning,
    };
    let options = RunOptions {
        duration: Some(Duration::from_secs(args.duration_s)),
        load: match args.concurrency {
            Some(concurrency) => Load::ClosedLoop { concurrency },
            None => Load::Ticks,
        },
        print_status: false,
        stop: None,
    };
    let result = dispatcher::run(&config, &options);
    mocks.stop();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(summary) => {
            let mut json = summary.to_json();
            json["bench"] = serde_json::json!({
                "shards": args.shards,
                "service_time_us": args.service_time_us,
                "concurrency": args.concurrency,
                "rate": args.rate,
                "payload_bytes": args.payload_bytes,
                "shard_cpus": shard_cpus,
            });
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
