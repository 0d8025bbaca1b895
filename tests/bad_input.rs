//! Bad input, at start-up and at run time.
//!
//! Start-up: a broken config or device list stops the load with a message naming
//! the file, the line and the offending key or value. Run time: a response too large,
//! a wrong output tensor, a cut-off gRPC frame each turn every tick into a failed row
//! with a reason saying so; the run completes and no tick is lost.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{ClassSpec, Row, SKIP_PREVIOUS_RUNNING};
use percore::config::{Config, GrpcConfig};
use percore::mock::{mock_payload, Fault, MockKind, MockOptions};
use percore::proto::inference::model_infer_response::InferOutputTensor;
use percore::proto::inference::ModelInferResponse;
use percore::proto::source::FetchResponse;
use percore::summary::RunSummary;
use percore::tuning::{allowed_cpus, memlock_limit_kib};
use prost::Message;

// ---------------------------------------------------------------------------------
// Start-up: config and device list.
// ---------------------------------------------------------------------------------

/// A valid config pointing at `devices.csv`; the tests break one thing in it.
const CONFIG: &str = r#"[devices]
csv = "devices.csv"

[sink]
kind = "sqlite"
path = "jobs.db"

[[classes]]
name = "camera"
model = "resnet50"
period_ms = 1000
deadline_ms = 500
data_sources = ["127.0.0.1:9000"]
compute_nodes = ["127.0.0.1:9001"]

[[classes]]
name = "thermostat"
model = "forecast-lstm"
period_ms = 5000
deadline_ms = 5000
data_sources = ["127.0.0.1:9000"]
compute_nodes = ["127.0.0.1:9001"]
"#;

/// A valid device list for [`CONFIG`].
const DEVICES: &str = "id,class\ncam-1,camera\nthermo-1,thermostat\n";

/// Writes `fleet.toml` and `devices.csv` into `dir`; returns both paths.
fn write_files(dir: &Path, config: &str, devices: &str) -> (PathBuf, PathBuf) {
    let config_path = dir.join("fleet.toml");
    let devices_path = dir.join("devices.csv");
    std::fs::write(&config_path, config).expect("writing fleet.toml");
    std::fs::write(&devices_path, devices).expect("writing devices.csv");
    (config_path, devices_path)
}

/// Loads `config` (with `devices`) from a temporary directory; returns the load's
/// error text and the two files' paths. Fails the test if the load succeeds.
fn load_error(config: &str, devices: &str) -> (String, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (config_path, devices_path) = write_files(dir.path(), config, devices);
    match Config::load(&config_path) {
        Ok(config) => panic!("expected the load to fail, got {config:?}"),
        Err(error) => (error.to_string(), config_path, devices_path),
    }
}

/// The control: the unbroken files load, so each failure below is the one change.
#[test]
fn the_unbroken_files_load() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (config_path, _) = write_files(dir.path(), CONFIG, DEVICES);
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(config.fleet.len(), 2);
    assert_eq!(config.fleet.id(1), "thermo-1");
    assert_eq!(config.fleet.class(1), 1);
    assert_eq!(config.classes[0].period_ms, 1000);
}

/// Editors that save "CSV UTF-8" (Excel, Notepad) start the file with a byte order
/// mark; it must not end up in the first id or hide the header.
#[test]
fn a_device_list_starting_with_a_byte_order_mark_loads_as_written() {
    for devices in [
        format!("\u{feff}{DEVICES}"),
        "\u{feff}cam-1,camera\nthermo-1,thermostat\n".to_string(),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (config_path, _) = write_files(dir.path(), CONFIG, &devices);
        let config = match Config::load(&config_path) {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(config.fleet.len(), 2, "{devices:?}");
        assert_eq!(config.fleet.id(0), "cam-1", "{devices:?}");
        assert_eq!(config.fleet.class(0), 0, "{devices:?}");
    }
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    let broken = CONFIG.replace("model = \"resnet50\"", "model = \"resnet50");
    let (error, config_path, _) = load_error(&broken, DEVICES);
    assert_eq!(
        error,
        format!("{}:10: invalid basic string", config_path.display())
    );
}

#[test]
fn an_unknown_field_is_named_with_its_line() {
    let broken = CONFIG.replace("period_ms = 1000\n", "period_ms = 1000\nperod_ms = 1000\n");
    let (error, config_path, _) = load_error(&broken, DEVICES);
    assert_eq!(
        error,
        format!(
            "{}:12: unknown field `perod_ms`, expected one of `name`, `model`, \
             `model_version`, `period_ms`, `deadline_ms`, `data_sources`, `compute_nodes`, `gateway`, `authority`, `tls`, `source_tls`, \
             `input_name`, `output`, `outputs`, `parameters`, `request_id`, `store_outputs`, `contract`, `token_env`, `metadata`, `upstream`, \
             `batching`",
            config_path.display()
        )
    );
}

/// Nothing listens on port 0 (connecting to it always fails), so a node written with
/// it would fail every job of its class: the load refuses it instead.
#[test]
fn port_0_in_a_node_address_is_refused() {
    let broken = CONFIG.replace(
        "compute_nodes = [\"127.0.0.1:9001\"]\n\n[[classes]]",
        "compute_nodes = [\"127.0.0.1:9001\", \"127.0.0.1:0\"]\n\n[[classes]]",
    );
    let (error, config_path, _) = load_error(&broken, DEVICES);
    assert_eq!(
        error,
        format!(
            "{}:14: classes[0].compute_nodes[1]: port 0 is not a usable port in \"127.0.0.1:0\"",
            config_path.display()
        )
    );
    let broken = CONFIG.replace(
        "deadline_ms = 5000\ndata_sources = [\"127.0.0.1:9000\"]",
        "deadline_ms = 5000\ndata_sources = [\"localhost:0\"]",
    );
    let (error, config_path, _) = load_error(&broken, DEVICES);
    assert_eq!(
        error,
        format!(
            "{}:21: classes[1].data_sources[0]: port 0 is not a usable port in \"localhost:0\"",
            config_path.display()
        )
    );
}

#[test]
fn an_unknown_class_in_the_device_list_is_named_with_its_line() {
    let devices = "id,class\ncam-1,camera\nfridge-1,fridge\n";
    let (error, _, devices_path) = load_error(CONFIG, devices);
    assert_eq!(
        error,
        format!(
            "{}:3: unknown class \"fridge\" (known classes: camera, thermostat)",
            devices_path.display()
        )
    );
}

/// A device list saved as Latin-1 (or any other non-UTF-8 encoding) names the
/// first line and column that is not UTF-8, not only the file.
#[test]
fn a_device_list_that_is_not_utf8_names_the_line_and_column() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (config_path, devices_path) = write_files(dir.path(), CONFIG, DEVICES);
    std::fs::write(
        &devices_path,
        b"id,class\ncam-1,camera\nthermo-\xe9,thermostat\n",
    )
    .expect("writing devices.csv");
    let error = Config::load(&config_path).map(|config| config.fleet.len());
    assert_eq!(
        error.map_err(|error| error.to_string()),
        Err(format!(
            "{}:3: not valid UTF-8 (byte 0xe9 at column 8)",
            devices_path.display()
        ))
    );
}

#[test]
fn an_empty_device_list_is_refused() {
    let (error, _, devices_path) = load_error(CONFIG, "id,class\n# none yet\n\n");
    assert_eq!(
        error,
        format!("{}: the device list is empty", devices_path.display())
    );
}

#[test]
fn a_duplicate_device_id_names_both_lines() {
    let devices = "id,class\ncam-1,camera\nthermo-1,thermostat\ncam-1,thermostat\n";
    let (error, _, devices_path) = load_error(CONFIG, devices);
    assert_eq!(
        error,
        format!(
            "{}:4: duplicate device id \"cam-1\" (first listed on line 2)",
            devices_path.display()
        )
    );
}

/// glommio starts an executor whose io_memory the locked-memory limit cannot hold,
/// but leaves its buffers unregistered without a word: the load refuses the value,
/// naming the limit and how to raise it.
#[test]
fn io_memory_beyond_the_locked_memory_limit_is_refused() {
    let limit_kib = match memlock_limit_kib() {
        Some(limit_kib) => limit_kib,
        None => {
            // Unlimited here: lower the soft limit to what tests/run-all.sh sets, which
            // every test is sized for. (nextest runs each test in a process of its own.)
            const TEST_LIMIT_KIB: u64 = 8192;
            let lowered = libc::rlimit {
                rlim_cur: TEST_LIMIT_KIB * 1024,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: plain setrlimit on a struct we own.
            assert_eq!(
                unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lowered) },
                0
            );
            TEST_LIMIT_KIB
        }
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = format!("tuning = \"tuning.toml\"\n{CONFIG}");
    let (config_path, _) = write_files(dir.path(), &config, DEVICES);
    let tuning_path = dir.path().join("tuning.toml");
    std::fs::write(&tuning_path, "# this host\nio_memory_kib = 10000000\n")
        .expect("writing tuning.toml");
    let error = match Config::load(&config_path) {
        Ok(config) => panic!("expected the load to fail, got {config:?}"),
        Err(error) => error.to_string(),
    };
    let shards = allowed_cpus().len();
    let plural = if shards == 1 { "" } else { "s" };
    let needed = shards as u64 * (10_000_000 + 256);
    let expected = format!(
        "{}:2: io_memory_kib: {shards} shard{plural} × (10000000 KiB + 256 KiB for the rings) \
         = {needed} KiB of locked memory, but RLIMIT_MEMLOCK allows {limit_kib} KiB; raise it \
         with `ulimit -l` or LimitMEMLOCK= in the systemd unit, ",
        tuning_path.display()
    );
    assert!(error.starts_with(&expected), "{error}");
}

// ---------------------------------------------------------------------------------
// Run time: bad responses.
// ---------------------------------------------------------------------------------

const CAMERA: ClassSpec = ClassSpec {
    name: "camera",
    model: "resnet50",
    period_ms: 250,
    deadline_ms: 200,
};

/// Runs 300 camera devices for 1.5 s against mocks with these options; checks the
/// invariants every run keeps and returns the rows.
fn run_against(source: MockOptions, compute: MockOptions, grpc: GrpcConfig) -> Vec<Row> {
    let source = common::start_mock(MockKind::Source, source);
    let compute = common::start_mock(MockKind::Compute, compute);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let classes = vec![common::class(CAMERA, source.addr, compute.addr)];
    let config = common::config(classes, 300, db.clone(), grpc);
    let summary: RunSummary = common::run(&config, Duration::from_millis(1500));
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    eprintln!("{}", summary.totals_line());
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    common::assert_shard_placement(&summary, &rows);
    rows
}

/// Which calls of a failed job were made, and so were timed (a failed call
/// until its failure, its time to failure): (fetch, infer).
const FETCH_FAILED: (bool, bool) = (true, false);
const INFER_FAILED: (bool, bool) = (true, true);
const BOTH_ANSWERED: (bool, bool) = (true, true);

/// Checks that no job succeeded and every job that ran failed with `reason`, with
/// the stages in `timed` (see [`FETCH_FAILED`]) timed and no output. A tick may be
/// skipped behind a job the machine slowed, and only for that reason.
fn assert_all_failed_with(rows: &[Row], reason: &str, timed: (bool, bool)) {
    let (ok, failed, _) = common::outcome_counts(rows);
    assert_eq!(ok, 0, "ok rows");
    assert!(failed > 0, "no failed row");
    let failures = common::reasons(rows, "failed");
    assert_eq!(failures.keys().collect::<Vec<_>>(), [reason], "reasons");
    for reason in common::reasons(rows, "skipped").keys() {
        assert_eq!(reason, SKIP_PREVIOUS_RUNNING);
    }
    for row in rows.iter().filter(|row| row.outcome == "failed") {
        assert_eq!(
            (
                row.fetch_us.is_some(),
                row.infer_us.is_some(),
                row.output.is_some()
            ),
            (timed.0, timed.1, false),
            "stages of {row:?}"
        );
    }
}

#[test]
fn a_response_over_the_maximum_message_size_fails_the_fetch() {
    const PAYLOAD: usize = 8 * 1024;
    const MAX: usize = 4 * 1024;
    let rows = run_against(
        MockOptions {
            payload_bytes: PAYLOAD,
            ..MockOptions::default()
        },
        MockOptions::default(),
        GrpcConfig {
            max_message_bytes: MAX,
            ..GrpcConfig::default()
        },
    );
    // The mock source's reply, as it encodes it (the capture time takes the same
    // varint length for any date this century).
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    let reply = FetchResponse {
        datatype: "UINT8".into(),
        shape: vec![1, PAYLOAD as i64],
        raw: mock_payload("dev-0000001", PAYLOAD),
        captured_unix_ms: now_ms,
        inputs: Vec::new(),
    };
    let len = reply.encoded_len();
    assert!(len > PAYLOAD);
    let reason =
        format!("fetch: response of {len} bytes exceeds the maximum message size of {MAX} bytes");
    assert_all_failed_with(&rows, &reason, FETCH_FAILED);
}

#[test]
fn an_output_of_the_wrong_datatype_is_refused() {
    let rows = run_against(
        MockOptions::default(),
        MockOptions {
            fault: Some(Fault::OutputDatatype("INT64".into())),
            ..MockOptions::default()
        },
        GrpcConfig::default(),
    );
    assert_all_failed_with(
        &rows,
        "infer: bad response: output datatype is \"INT64\", expected \"FP32\"",
        BOTH_ANSWERED,
    );
}

#[test]
fn an_output_of_the_wrong_shape_is_refused() {
    let rows = run_against(
        MockOptions::default(),
        MockOptions {
            fault: Some(Fault::OutputShape(vec![1, 3])),
            ..MockOptions::default()
        },
        GrpcConfig::default(),
    );
    // The mock still sends the 8 bytes of a [1, 2] tensor, which cannot fill [1, 3]:
    // the tensor's own inconsistency is reported before the class's expected shape.
    assert_all_failed_with(
        &rows,
        "infer: bad response: output \"OUTPUT0\": tensor of FP32 [1, 3] needs 12 bytes, got 8",
        BOTH_ANSWERED,
    );
}

#[test]
fn a_truncated_grpc_frame_fails_the_call() {
    let rows = run_against(
        MockOptions::default(),
        MockOptions {
            fault: Some(Fault::TruncatedFrame),
            ..MockOptions::default()
        },
        GrpcConfig::default(),
    );
    // The mock compute node's reply, as it encodes it; it sends the 5-byte prefix
    // announcing all of it, then half of it, then OK trailers.
    let reply = ModelInferResponse {
        model_name: CAMERA.model.into(),
        outputs: vec![InferOutputTensor {
            name: "OUTPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            ..Default::default()
        }],
        raw_output_contents: vec![vec![0u8; 8].into()],
        ..Default::default()
    };
    let len = reply.encoded_len();
    let reason = format!(
        "infer: protocol error: truncated gRPC frame: expected {} bytes, stream ended after {}",
        5 + len,
        5 + len / 2
    );
    assert_all_failed_with(&rows, &reason, INFER_FAILED);
}
