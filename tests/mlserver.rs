//! percore against a real inference server: MLServer 1.7.1 serving the two-output
//! test model of `examples/python/mlserver_model/` ("rowstats": per-row max and L2
//! norm), fed by the Python data source of `examples/python/source_server.py`, both
//! from the venv `tests/run-all.sh` sets up. The `percore` binary runs as a user
//! would run it; every row is checked against the model's outputs recomputed here,
//! in Rust, from the source's documented input function. Then MLServer is killed
//! mid-run and started again: the ticks in between fail with a reason that says
//! the server was unreachable, none is lost, and later ticks are ok again.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::python::{MlServer, PythonSource, MODEL};
use common::Row;
use percore::config::Config;
use percore::mock::{MockKind, MockOptions, SourceTensors, TensorSpec};

/// Devices of the runs, each ticking once a second: a load MLServer (pure Python)
/// and the Python source keep up with on 2 cores beside percore.
const DEVICES: usize = 300;

/// The source's tensor: FP32 [ROWS, COLS], the model's INPUT0.
const ROWS: usize = 4;
const COLS: usize = 8;

/// FNV-1a, 64 bits, as in `source_server.py`.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's output for state `x`, as in `source_server.py`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The source's tensor for (device, tick), row-major:
/// seed = FNV-1a 64 of "{device_id}@{tick_unix_ms}";
/// element i = (splitmix64(seed + i * 0x9e3779b97f4a7c15 mod 2^64) >> 40) / 2^24
/// (exact in FP32): the i-th output of SplitMix64 seeded with `seed`, which is
/// also what `percore mock-source --datatype FP32` sends.
fn input(device_id: &str, tick_ms: i64) -> Vec<f32> {
    let seed = fnv1a64(format!("{device_id}@{tick_ms}").as_bytes());
    (0..(ROWS * COLS) as u64)
        .map(|i| {
            let state = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            (splitmix64(state) >> 40) as f32 / (1u32 << 24) as f32
        })
        .collect()
}

/// The model's output `name` on `x`, as little-endian FP32 bytes, [ROWS, 1]:
/// `max` = each row's largest element; `l2` = sqrt of the row's sum of squares,
/// summed and rooted in f64 (exact sum here: 24-bit elements, 8 columns), then
/// rounded to f32.
fn expected_output(name: &str, x: &[f32]) -> Vec<u8> {
    let rows = x.chunks(COLS);
    let values: Vec<f32> = match name {
        "max" => rows
            .map(|row| row.iter().copied().fold(f32::NEG_INFINITY, f32::max))
            .collect(),
        "l2" => rows
            .map(|row| {
                let sum: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                sum.sqrt() as f32
            })
            .collect(),
        other => panic!("the model has no output {other:?}"),
    };
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// Checks one stored output tensor of (device, tick) against the recomputation.
fn check_output(device_id: &str, tick_ms: i64, name: &str, bytes: &[u8]) {
    let expected = expected_output(name, &input(device_id, tick_ms));
    assert_eq!(
        bytes,
        &expected[..],
        "output {name:?} of {device_id} at {tick_ms}: got {:?}, expected {:?}",
        f32s(bytes),
        f32s(&expected),
    );
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Checks an ok row: no reason, and its first output is the model's `max`.
fn check_ok_row(row: &Row) {
    assert_eq!(row.outcome, "ok", "{row:?}");
    assert_eq!(row.reason, None, "{row:?}");
    assert_eq!((row.class.as_str(), row.model.as_str()), ("meter", MODEL));
    let output = row.output.as_deref().unwrap_or_else(|| panic!("{row:?}"));
    check_output(&row.device_id, row.tick_ms, "max", output);
}

#[test]
fn the_recomputation_matches_the_documented_functions() {
    // Known values, so the Rust and Python sides are tied to the same constants:
    // FNV-1a 64 of "" and "a", splitmix64's first output from state 0.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    let x = input("dev-0000001", 1_000);
    assert!(x.iter().all(|v| (0.0..1.0).contains(v)), "{x:?}");
    assert_eq!(expected_output("max", &x).len(), ROWS * 4);
    // The Python source sends what `percore mock-source --datatype FP32` sends.
    for (device, tick) in [("dev-0000001", 1_000), ("meter-7", 1_700_000_000_123)] {
        let bytes: Vec<u8> = input(device, tick)
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        let mock =
            percore::mock::tensor_content("FP32", &[ROWS as i64, COLS as i64], device, tick, "")
                .expect("the mock's content");
        assert_eq!(&mock[..], &bytes[..], "{device}@{tick}");
    }
}

#[test]
fn both_outputs_of_the_model_match_the_recomputation() {
    // Straight to MLServer over REST, percore left out: both outputs, `l2` too,
    // against the Rust recomputation. JSON carries each FP32 value as the
    // shortest decimal of its f64 widening, which parses back to the same f32.
    let server = MlServer::start();
    for (device_id, tick_ms) in [("dev-0000001", 1_000), ("dev-0000042", 1_796_000_000_123)] {
        let x = input(device_id, tick_ms);
        let body = serde_json::json!({
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [ROWS, COLS], "data": x}]
        });
        let (status, reply) = common::python::http_post_json(
            server.http,
            &format!("/v2/models/{MODEL}/infer"),
            &body.to_string(),
        );
        assert_eq!(status, 200, "{reply}");
        let reply: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
        let outputs = reply["outputs"].as_array().expect("outputs");
        let names: Vec<&str> = outputs.iter().filter_map(|o| o["name"].as_str()).collect();
        assert_eq!(names, ["max", "l2"], "{reply}");
        for output in outputs {
            assert_eq!(output["datatype"], "FP32", "{output}");
            assert_eq!(output["shape"], serde_json::json!([ROWS, 1]), "{output}");
            let bytes: Vec<u8> = output["data"]
                .as_array()
                .expect("data")
                .iter()
                .flat_map(|v| (v.as_f64().expect("a number") as f32).to_le_bytes())
                .collect();
            check_output(
                device_id,
                tick_ms,
                output["name"].as_str().unwrap_or(""),
                &bytes,
            );
        }
    }
}

/// A config file: `devices` generated devices of one class `meter` (period 1 s)
/// served by `source` and MLServer's gRPC port, SQLite at `db`, whose output must be
/// FP32 [ROWS, 1] named `max`; `[classes.upstream]` left to its defaults.
fn write_config(dir: &Path, source: &PythonSource, server: &MlServer, devices: usize) -> PathBuf {
    write_config_for(
        dir,
        source.addr,
        server,
        devices,
        &format!("model = {MODEL:?}"),
    )
}

/// [`write_config`] with any data source, and `model_keys` (`model = …`, maybe
/// `model_version = …`) naming the model.
fn write_config_for(
    dir: &Path,
    source: std::net::SocketAddr,
    server: &MlServer,
    devices: usize,
    model_keys: &str,
) -> PathBuf {
    let cpus: Vec<String> = common::shard_cpus().iter().map(usize::to_string).collect();
    let tuning = dir.join("tuning.toml");
    std::fs::write(&tuning, format!("shard_cpus = [{}]\n", cpus.join(", "))).expect("tuning");
    let text = format!(
        r#"tuning = "{tuning}"

[devices]
generate = {{ count = {devices}, mix = {{ meter = 1 }} }}

[sink]
kind = "sqlite"
path = "{db}"

[[classes]]
name = "meter"
{model_keys}
period_ms = 1000
deadline_ms = 1000
data_sources = ["{source}"]
compute_nodes = ["{compute}"]
input_name = "INPUT0"
outputs = ["max", "l2"]
request_id = true

[classes.output]
name = "max"
datatype = "FP32"
shape = [{ROWS}, 1]
"#,
        tuning = tuning.display(),
        db = dir.join("jobs.db").display(),
        compute = server.grpc,
    );
    let path = dir.join("percore.toml");
    std::fs::write(&path, text).expect("the config file");
    path
}

/// `percore run --config config --duration duration` with a summary file, started.
fn spawn_run(config: &Path, duration: &str, summary: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--duration", duration, "--admin", "none", "--summary-json"])
        .arg(summary)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("percore starts")
}

/// Waits for the run, at most `limit`; a run still going then is killed and fails.
fn wait_run(mut child: Child, limit: Duration) {
    let began = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "percore run exited with {status}");
            return;
        }
        if began.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("percore run still going after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that the table holds each tick due in the summary's window exactly
/// once and that the summary counts every row: no tick lost, none doubled.
fn assert_every_tick_once(config: &Path, summary: &serde_json::Value, rows: &[Row]) {
    let config = Config::load(config).unwrap_or_else(|error| panic!("{error}"));
    let window = &summary["window_unix_ms"];
    let window = (
        window[0].as_i64().expect("a window"),
        window[1].as_i64().expect("a window"),
    );
    let expected = common::expected_ticks(&config, window);
    let actual: BTreeSet<(String, i64)> = rows
        .iter()
        .map(|row| (row.device_id.clone(), row.tick_ms))
        .collect();
    assert_eq!(actual.len(), rows.len(), "a (device, tick) twice");
    assert!(
        actual == expected,
        "{} ticks due, {} rows; missing {:?}, extra {:?}",
        expected.len(),
        actual.len(),
        expected.difference(&actual).take(3).collect::<Vec<_>>(),
        actual.difference(&expected).take(3).collect::<Vec<_>>(),
    );
    assert_eq!(summary["jobs"].as_u64(), Some(rows.len() as u64), "jobs");
    assert_eq!(summary["rows_written"].as_u64(), Some(rows.len() as u64));
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

#[test]
fn every_tick_through_mlserver_is_a_row_with_the_models_output() {
    let _exclusive = common::python::exclusive();
    let server = MlServer::start();
    let source = PythonSource::start(&[ROWS, COLS]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = write_config(dir.path(), &source, &server, DEVICES);
    let summary_path = dir.path().join("summary.json");

    wait_run(
        spawn_run(&config, "8s", &summary_path),
        Duration::from_secs(60),
    );
    let summary = common::read_summary_json(&summary_path);
    let rows = common::read_rows(&dir.path().join("jobs.db"));

    assert_every_tick_once(&config, &summary, &rows);
    assert!(rows.len() >= 2_000, "{} rows", rows.len());
    assert_eq!(
        common::reasons(&rows, "failed"),
        Default::default(),
        "MLServer log:\n{}",
        server.log()
    );
    assert_eq!(common::reasons(&rows, "skipped"), Default::default());
    for row in &rows {
        check_ok_row(row);
        assert_eq!(row.compute_node, Some(server.grpc.to_string()));
    }
    assert_eq!(summary["ok"].as_u64(), Some(rows.len() as u64));
    // Both outputs of every job, each with its datatype and shape.
    let outputs = common::read_job_outputs(&dir.path().join("jobs.db"));
    assert_eq!(outputs.len(), 2 * rows.len());
    for (device, tick, name, datatype, shape, data) in &outputs {
        assert!(name == "max" || name == "l2", "{name}");
        assert_eq!((datatype.as_str(), shape.as_str()), ("FP32", "4,1"));
        check_output(device, *tick, name, data);
    }
    eprintln!(
        "{} rows, all ok; {:.0} jobs/s, {:.1} µs of percore CPU per job",
        rows.len(),
        summary["jobs_per_s"].as_f64().unwrap_or(0.0),
        summary["cpu_us_per_job"].as_f64().unwrap_or(0.0),
    );
}

#[test]
fn mlserver_refusing_the_model_or_its_contract_fails_jobs_saying_so() {
    let _exclusive = common::python::exclusive();
    let server = MlServer::start();
    // percore's own mock source, which can send the wrong datatype.
    let source_of = |datatype: &str| {
        common::start_mock(
            MockKind::Source,
            MockOptions {
                source_tensors: SourceTensors::Tensor(
                    TensorSpec::new("INPUT0", datatype, vec![ROWS as i64, COLS as i64])
                        .expect("a spec"),
                ),
                ..MockOptions::default()
            },
        )
    };
    let cases = [
        // MLServer answers ModelReady for a model it does not have with an
        // error (UNKNOWN, not even NOT_FOUND), not with ready = false.
        (
            "FP32",
            "model = \"nosuch\"",
            "ModelReady for \"nosuch\": grpc status 2 UNKNOWN: Unexpected \
             <class 'mlserver.errors.ModelNotFound'>: Model nosuch with version  not found",
        ),
        (
            "FP32",
            &format!("model = {MODEL:?}\nmodel_version = \"9\""),
            "ModelReady for \"rowstats\" version \"9\": grpc status 2 UNKNOWN: Unexpected \
             <class 'mlserver.errors.ModelNotFound'>: Model rowstats with version 9 not found",
        ),
        (
            "FP64",
            &format!("model = {MODEL:?}"),
            "infer: model contract: input \"INPUT0\" is FP64 [4, 8], model \"rowstats\" takes \
             FP32 [-1, -1] according to ModelMetadata of 127.0.0.1:",
        ),
    ];
    for (datatype, model_keys, expected) in cases {
        let source = source_of(datatype);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = write_config_for(dir.path(), source.addr, &server, 100, model_keys);
        let summary_path = dir.path().join("summary.json");
        let (code, stderr) = common::run_percore(&config, "3s", &summary_path);
        source.stop();
        let summary = common::read_summary_json(&summary_path);
        let rows = common::read_rows(&dir.path().join("jobs.db"));
        assert_every_tick_once(&config, &summary, &rows);
        assert_eq!(
            code,
            common::EXIT_ALL_FAILED,
            "{model_keys}: every job fails"
        );
        assert!(
            stderr.contains(expected),
            "{model_keys}: the terminal says {expected:?}"
        );
        let failed = common::reasons(&rows, "failed");
        let total: u64 = failed.values().sum();
        let saying: u64 = failed
            .iter()
            .filter(|(reason, _)| reason.contains(expected))
            .map(|(_, count)| count)
            .sum();
        // Jobs started before the first probe answered were sent, and failed
        // with MLServer's own error.
        assert!(
            total == rows.len() as u64 && saying * 10 >= total * 9,
            "{model_keys}: {saying} of {total} failures say {expected:?}: {failed:?}"
        );
    }
}

/// Words one of which a reason must contain to say the server was unreachable.
const UNREACHABLE: [&str; 6] = [
    "model unavailable",
    "connect error",
    "connection to",
    "no replica available",
    "UNAVAILABLE",
    "is not ready",
];

#[test]
fn mlserver_killed_mid_run_fails_its_ticks_with_the_reason_and_comes_back() {
    let _exclusive = common::python::exclusive();
    let mut server = MlServer::start();
    let source = PythonSource::start(&[ROWS, COLS]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = write_config(dir.path(), &source, &server, DEVICES);
    let summary_path = dir.path().join("summary.json");

    let run = spawn_run(&config, "15s", &summary_path);
    std::thread::sleep(Duration::from_secs(4));
    server.stop();
    let stopped_ms = now_ms();
    std::thread::sleep(Duration::from_secs(3));
    let restart = server.start_again();
    let back_ms = now_ms();
    eprintln!("MLServer down at {stopped_ms}, ready again at {back_ms} (start took {restart:?})");
    assert!(
        restart < Duration::from_secs(6),
        "MLServer took {restart:?} to start again: too late to see ticks ok after it"
    );
    wait_run(run, Duration::from_secs(60));
    let summary = common::read_summary_json(&summary_path);
    let rows = common::read_rows(&dir.path().join("jobs.db"));

    assert_every_tick_once(&config, &summary, &rows);
    let failed: Vec<&Row> = rows.iter().filter(|row| row.outcome == "failed").collect();
    assert!(!failed.is_empty(), "a 3 s outage failed no job");
    for row in &failed {
        let reason = row.reason.as_deref().unwrap_or("");
        assert!(
            reason.starts_with("infer: ") && UNREACHABLE.iter().any(|word| reason.contains(word)),
            "the reason does not say MLServer was unreachable: {row:?}"
        );
        // A job in flight at the kill started up to a deadline before it.
        assert!(
            row.tick_ms >= stopped_ms - 1_000 && row.tick_ms <= back_ms + 1_000,
            "failed outside the outage ({stopped_ms}..{back_ms}): {row:?}"
        );
    }
    eprintln!("failed: {:?}", common::reasons(&rows, "failed"));
    assert_eq!(common::reasons(&rows, "skipped"), Default::default());
    let before: Vec<&Row> = rows
        .iter()
        .filter(|row| row.tick_ms < stopped_ms - 1_000)
        .collect();
    // Reconnects to a replica that is down are probed within a second.
    let after: Vec<&Row> = rows
        .iter()
        .filter(|row| row.tick_ms > back_ms + 1_000)
        .collect();
    assert!(
        before.len() > DEVICES && after.len() > DEVICES,
        "{} rows before the outage, {} after",
        before.len(),
        after.len()
    );
    for row in before.iter().chain(&after) {
        check_ok_row(row);
    }
    assert_eq!(
        summary["failed"].as_u64(),
        Some(failed.len() as u64),
        "failed"
    );
}
