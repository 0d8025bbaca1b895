//! The pipeline benchmark: mock nodes and the dispatcher on loopback, closed or
//! open loop, printing the `--summary-json` object.
//!
//! ```text
//! cargo bench --bench pipeline -- [--shards N] [--service-time-us U]
//!     [--concurrency C | --rate R [--poisson] | --tick-rate R] [--duration SECS]
//!     [--payload-bytes B] [--devices N] [--postgres postgresql://user@host:port/db]
//!     [--batch B [--linger-us L]]
//! ```
//! `--batch B` batches the class's ModelInfer calls, up to B rows each, with a
//! linger of L µs (default 1000), as `[classes.batching]` does; the output's
//! `bench.infer_calls` is the calls the mock compute node took.
//! With `--postgres` the rows go into that database (a table per level, dropped
//! after it) instead of a scratch SQLite file.
//! Shards take the first N allowed CPUs; mock nodes take the CPUs left over (or
//! share when none are). CPU per job counts dispatcher threads only.

use std::time::Duration;

use percore::bench::{Bench, BenchOptions, Level};
use percore::config::{Batching, DEFAULT_LINGER, MAX_BATCH_LIMIT};
use percore::sink::postgres::{PgUrl, PostgresOptions};

fn parse_args() -> Result<(BenchOptions, Level, Option<Batching>), String> {
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
    Ok((options, level, batching))
}

fn main() {
    let (options, level, batching) = match parse_args() {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("pipeline: {error}");
            std::process::exit(2);
        }
    };
    let scratch = options.scratch_dir.clone();
    let described = serde_json::json!({
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
