//! percore against a real inference server, beside a Python client doing the same:
//! one MLServer serving the test model of `examples/python/mlserver_model/` and the
//! Python data source of `examples/python/source_server.py` (both from the venv of
//! `tests/run-all.sh`, `PERCORE_TEST_VENV`), then
//!
//! 1. percore, closed loop at concurrency C for D seconds (Fetch, ModelInfer, a row);
//! 2. `examples/python/bench_client.py`: C `grpc.aio` tasks doing Fetch then
//!    ModelInfer for D seconds (no rows written);
//!
//! and a table side by side: jobs/s, end-to-end p50/p99 of the ok jobs, and the
//! client's CPU µs per job (percore: its summary's `cpu_us_per_job`, dispatcher
//! threads; Python: the process's CPU time / jobs).
//!
//! ```text
//! cargo bench --bench mlserver -- [--concurrency C] [--duration SECS] [--shards N]
//!     [--devices N]
//! ```
//! On a small machine MLServer and the source share the CPUs with the client under
//! test: the numbers compare the two clients against the same servers, not the
//! clients alone.

#[path = "../tests/common/python.rs"]
#[allow(dead_code)]
mod python;

use std::process::{Command, Stdio};
use std::time::Duration;

use percore::bench::{Bench, BenchOptions, Level};
use percore::config::{Class, OutputSpec, Upstream};
use python::{MlServer, PythonSource, MODEL};

struct Args {
    concurrency: usize,
    duration: Duration,
    shards: usize,
    devices: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        concurrency: 16,
        duration: Duration::from_secs(10),
        shards: 1,
        devices: 1_000,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        if flag == "--bench" {
            continue; // added by `cargo bench`
        }
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number = || -> Result<u64, String> {
            value
                .parse()
                .map_err(|_| format!("{flag}: {value:?} is not a whole number"))
        };
        match flag.as_str() {
            "--concurrency" => args.concurrency = number()? as usize,
            "--duration" => args.duration = Duration::from_secs(number()?),
            "--shards" => args.shards = number()? as usize,
            "--devices" => args.devices = number()? as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// One column of the table.
struct Measured {
    client: String,
    jobs_per_s: f64,
    ok: u64,
    failed: u64,
    p50_us: u64,
    p99_us: u64,
    cpu_us_per_job: f64,
}

fn percore_run(args: &Args, source: &PythonSource, server: &MlServer) -> Result<Measured, String> {
    let class = Class {
        name: "bench".to_string(),
        model: MODEL.to_string(),
        model_version: String::new(),
        period_ms: 10_000,
        deadline_ms: 2_000,
        data_sources: vec![source.addr.into()],
        compute_nodes: vec![server.grpc.into()],
        gateway: None,
        compute_nodes_from_etcd: false,
        input_name: "INPUT0".to_string(),
        output: Some(OutputSpec {
            name: Some("max".to_string()),
            datatype: "FP32".to_string(),
            shape: vec![4, 1],
        }),
        requested_outputs: Vec::new(),
        parameters: Default::default(),
        request_id: false,
        store_all_outputs: true,
        contract: percore::config::ContractConfig::default(),
        metadata: percore::config::Metadata::default(),
        upstream: Upstream::default(),
        batching: None,
    };
    let scratch =
        std::env::temp_dir().join(format!("percore-bench-mlserver-{}", std::process::id()));
    let options = BenchOptions {
        shards: args.shards,
        poisson: false,
        duration: args.duration,
        service_time: Duration::ZERO,
        payload_bytes: 0,
        devices: args.devices,
        external: Some(class),
        scratch_dir: scratch.clone(),
        postgres: None,
        sink_commit_delay: Duration::ZERO,
    };
    let summary = Bench::start(options).and_then(|bench| {
        let summary = bench.run(Level::Concurrency(args.concurrency));
        bench.stop();
        summary
    });
    let _ = std::fs::remove_dir_all(scratch);
    let summary = summary.map_err(|error| error.to_string())?;
    let json = summary.to_json();
    let end_to_end = &json["latency_us"]["end_to_end"];
    Ok(Measured {
        client: format!("percore ({} shard)", args.shards),
        jobs_per_s: summary.jobs_per_s(),
        ok: summary.counters.ok,
        failed: summary.counters.failed + summary.counters.skipped,
        p50_us: end_to_end["p50"].as_u64().unwrap_or(0),
        p99_us: end_to_end["p99"].as_u64().unwrap_or(0),
        cpu_us_per_job: summary.cpu_us_per_job(),
    })
}

fn python_run(args: &Args, source: &PythonSource, server: &MlServer) -> Result<Measured, String> {
    let output = Command::new(python::venv().join("bin/python"))
        .arg(python::python_dir().join("bench_client.py"))
        .args(["--source", &source.addr.to_string()])
        .args(["--compute", &server.grpc.to_string()])
        .args(["--model", MODEL])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--duration", &args.duration.as_secs().to_string()])
        .args(["--devices", &args.devices.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| format!("bench_client.py: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "bench_client.py exited with {}: {stdout}",
            output.status
        ));
    }
    let json: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|error| format!("bench_client.py printed {stdout:?}: {error}"))?;
    if json["failed"].as_u64().unwrap_or(0) > 0 {
        eprintln!("python client errors: {}", json["errors"]);
    }
    Ok(Measured {
        client: "python grpc.aio".to_string(),
        jobs_per_s: json["jobs_per_s"].as_f64().unwrap_or(0.0),
        ok: json["ok"].as_u64().unwrap_or(0),
        failed: json["failed"].as_u64().unwrap_or(0),
        p50_us: json["latency_us"]["p50"].as_u64().unwrap_or(0),
        p99_us: json["latency_us"]["p99"].as_u64().unwrap_or(0),
        cpu_us_per_job: json["cpu_us_per_job"].as_f64().unwrap_or(0.0),
    })
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("mlserver bench: {error}");
            std::process::exit(2);
        }
    };
    let server = MlServer::start();
    let source = PythonSource::start(&[4, 8]);
    eprintln!(
        "MLServer on {} (model {MODEL}), Python source on {}; concurrency {}, {:?} each",
        server.grpc, source.addr, args.concurrency, args.duration
    );
    let mut results = Vec::new();
    for run in [percore_run, python_run] {
        match run(&args, &source, &server) {
            Ok(result) => results.push(result),
            Err(error) => {
                eprintln!("mlserver bench: {error}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "{:<20} {:>10} {:>9} {:>8} {:>9} {:>9} {:>12}",
        "client", "jobs/s", "ok", "failed", "p50 µs", "p99 µs", "CPU µs/job"
    );
    for r in &results {
        println!(
            "{:<20} {:>10.0} {:>9} {:>8} {:>9} {:>9} {:>12.1}",
            r.client, r.jobs_per_s, r.ok, r.failed, r.p50_us, r.p99_us, r.cpu_us_per_job
        );
    }
}
