//! The config's unit tests: whole files parsed from inline text with
//! [`Config::from_str`], each error checked with the file, line and field it names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::postgres::{validate_postgres_sink, PostgresSinkFile};
use super::*;
use crate::contract::{Origin, TensorContract};
use crate::endpoint::Endpoint;
use crate::tuning::Tuning;

/// A minimal valid config with a generated fleet, so no file is needed.
const VALID: &str = r#"
[devices]
generate = { count = 8, mix = { thermostat = 3, camera = 1 } }

[sink]
kind = "sqlite"
path = "out/percore.db"

[[classes]]
name = "camera"
model = "resnet50"
period_ms = 10000
deadline_ms = 2000
data_sources = ["127.0.0.1:9000"]
compute_nodes = ["127.0.0.1:9001", "[::1]:9002"]
[classes.output]
datatype = "FP32"
shape = [1, -1]

[[classes]]
name = "thermostat"
model = "lstm"
model_version = "3"
period_ms = 60000
deadline_ms = 60000
data_sources = ["127.0.0.1:9010"]
compute_nodes = ["127.0.0.1:9011"]
input_name = "series"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str(text, Path::new("conf/fleet.toml"))
}

/// The error text for `text`, which must fail.
fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn parses_a_valid_config_with_defaults() {
    let config = match parse(VALID) {
        Ok(config) => config,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(config.path, Path::new("conf/fleet.toml"));
    assert_eq!(config.classes.len(), 2);
    let camera = &config.classes[0];
    assert_eq!(camera.name, "camera");
    assert_eq!(camera.model_version, "");
    assert_eq!(camera.input_name, "INPUT0");
    assert_eq!(camera.period_ms, 10000);
    assert_eq!(camera.deadline_ms, 2000);
    assert_eq!(
        camera.compute_nodes,
        vec![
            Endpoint::from("127.0.0.1:9001".parse::<SocketAddr>().unwrap()),
            Endpoint::from("[::1]:9002".parse::<SocketAddr>().unwrap())
        ]
    );
    assert_eq!(
        camera.output,
        Some(OutputSpec {
            name: None,
            datatype: "FP32".into(),
            shape: vec![1, -1]
        })
    );
    let thermostat = &config.classes[1];
    assert_eq!(thermostat.model_version, "3");
    assert_eq!(thermostat.input_name, "series");
    assert_eq!(thermostat.output, None);
    assert_eq!(
        config.sink,
        SinkConfig::sqlite(PathBuf::from("conf/out/percore.db"))
    );
    assert_eq!(config.grpc, GrpcConfig::default());
    assert_eq!(config.grpc.max_message_bytes, 4 * 1024 * 1024);
    assert_eq!(config.grpc.connect_timeout_ms, 1000);
    assert_eq!(config.tuning, Tuning::default());
    // camera:thermostat = 1:3 over 8 devices.
    assert_eq!(config.fleet.len(), 8);
    let cameras = (0..8).filter(|&d| config.fleet.class(d) == 0).count();
    assert_eq!(cameras, 2);
    assert_eq!(config.fleet.id(0), "dev-0000001");
}

#[test]
fn grpc_table_overrides_defaults() {
    let text = format!(
        "[grpc]\nmax_message_bytes = 1024\nconnect_timeout_ms = 5\nretries = 2\n\
         retry_budget_percent = 50\nretry_budget_min_per_s = 3\n\
         keepalive_interval_ms = 0\nkeepalive_timeout_ms = 7\n{VALID}"
    );
    let config = parse(&text).map_err(|e| e.to_string());
    let grpc = config.map(|config| config.grpc);
    assert_eq!(
        grpc,
        Ok(GrpcConfig {
            max_message_bytes: 1024,
            connect_timeout_ms: 5,
            retries: 2,
            retry_budget_percent: 50,
            retry_budget_min_per_s: 3,
            keepalive_interval_ms: 0,
            keepalive_timeout_ms: 7,
        })
    );
}

#[test]
fn a_leading_byte_order_mark_is_ignored() {
    let text = format!("\u{feff}{VALID}");
    assert_eq!(parse(&text).map(|config| config.classes.len()), Ok(2));
    // The first line's key is still found, so the error names it.
    let text = format!("\u{feff}tuning = 5\n{VALID}");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:1: tuning: invalid type: integer `5`, expected a string"
    );
}

#[test]
fn syntax_errors_keep_tomls_message_and_line() {
    assert_eq!(
        error_of("[devices]\ncsv = \"a\"\n[sink\n"),
        "conf/fleet.toml:3: invalid table header; expected `.`, `]`"
    );
}

#[test]
fn unknown_fields_are_rejected_with_their_line() {
    let text = VALID.replace("period_ms = 10000", "period_ms = 10000\nperiod = 5");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:13: unknown field `period`, expected one of `name`, `model`, \
         `model_version`, `period_ms`, `deadline_ms`, `data_sources`, `compute_nodes`, `gateway`, `authority`, `tls`, `source_tls`, \
         `input_name`, `output`, `outputs`, `parameters`, `request_id`, `store_outputs`, `contract`, `token_env`, `metadata`, `upstream`, \
         `batching`"
    );
    let text = format!("{VALID}\n[extra]\n");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:30: unknown field `extra`, expected one of `tuning`, `devices`, \
         `sink`, `grpc`, `classes`, `cluster`"
    );
}

#[test]
fn wrong_types_name_the_key() {
    let text = VALID.replace("period_ms = 10000", "period_ms = -1");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:12: period_ms: invalid value: integer `-1`, expected u64"
    );
    let text = VALID.replace("count = 8", "count = \"8\"");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:3: count: invalid type: string \"8\", expected usize"
    );
}

#[test]
fn missing_required_keys_are_named() {
    let text = VALID.replace("model = \"lstm\"\n", "");
    assert_eq!(error_of(&text), "conf/fleet.toml:20: missing field `model`");
    let text = VALID.replace("[sink]\nkind = \"sqlite\"\npath = \"out/percore.db\"\n", "");
    assert_eq!(error_of(&text), "conf/fleet.toml: missing field `sink`");
}

#[test]
fn period_and_deadline_rules() {
    let text = VALID.replace("period_ms = 60000", "period_ms = 0");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:24: classes[1].period_ms: must be greater than 0"
    );
    let text = VALID.replace("deadline_ms = 2000", "deadline_ms = 0");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:13: classes[0].deadline_ms: must be greater than 0"
    );
    let text = VALID.replace("deadline_ms = 2000", "deadline_ms = 10001");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:13: classes[0].deadline_ms: must not exceed period_ms (10000)"
    );
}

#[test]
fn classes_are_required_unique_and_named() {
    let without_classes = &VALID[..VALID.find("[[classes]]").unwrap_or(VALID.len())];
    assert_eq!(
        error_of(without_classes),
        "conf/fleet.toml: classes: at least one [[classes]] table is required"
    );
    let text = VALID.replace("name = \"thermostat\"", "name = \"camera\"");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:21: classes[1].name: class \"camera\" is defined twice"
    );
    let text = VALID.replace("name = \"camera\"", "name = \" \"");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:10: classes[0].name: must not be empty"
    );
    let text = VALID.replace("model = \"resnet50\"", "model = \"\"");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:11: classes[0].model: must not be empty"
    );
}

#[test]
fn node_addresses_must_be_host_port_and_resolve() {
    let text = VALID.replace("[\"127.0.0.1:9000\"]", "[]");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:14: classes[0].data_sources: must list at least one address"
    );
    let text = VALID.replace(
        "\"127.0.0.1:9001\", \"[::1]:9002\"",
        "\"127.0.0.1:9001\",\n  \"127.0.0.1\"",
    );
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:16: classes[0].compute_nodes[1]: \
         expected \"host:port\", found \"127.0.0.1\""
    );
    let text = VALID.replace(
        "\"127.0.0.1:9001\", \"[::1]:9002\"",
        "\"127.0.0.1:9001\",\n  \"127.0.0.1:0\"",
    );
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:16: classes[0].compute_nodes[1]: \
         port 0 is not a usable port in \"127.0.0.1:0\""
    );
    let text = VALID.replace("127.0.0.1:9010", "[::1]:00");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:26: classes[1].data_sources[0]: \
         port 0 is not a usable port in \"[::1]:00\""
    );
    let text = VALID.replace("127.0.0.1:9010", "127.0.0.1:99999");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:26: classes[1].data_sources[0]: \
         expected \"host:port\", found \"127.0.0.1:99999\""
    );
}

#[test]
fn output_spec_rules() {
    let text = VALID.replace("datatype = \"FP32\"", "datatype = \"fp32\"");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:17: classes[0].output.datatype: unknown datatype \"fp32\" \
         (KServe v2 datatypes: BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, \
         INT64, FP16, FP32, FP64, BYTES)"
    );
    let text = VALID.replace("shape = [1, -1]", "shape = [1,\n -2]");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:19: classes[0].output.shape[1]: must be -1 (any size) or at least 0"
    );
}

#[test]
fn output_check_accepts_matches_and_explains_mismatches() {
    let spec = OutputSpec {
        name: Some("OUTPUT0".into()),
        datatype: "FP32".into(),
        shape: vec![1, -1, 2],
    };
    assert_eq!(spec.check("OUTPUT0", "FP32", &[1, 7, 2]), Ok(()));
    assert_eq!(
        spec.check("logits", "FP32", &[1, 7, 2]),
        Err("output name is \"logits\", expected \"OUTPUT0\"".into())
    );
    assert_eq!(
        spec.check("OUTPUT0", "INT64", &[1, 7, 2]),
        Err("output datatype is \"INT64\", expected \"FP32\"".into())
    );
    assert_eq!(
        spec.check("OUTPUT0", "FP32", &[1, 3]),
        Err("output shape is [1, 3], expected [1, -1, 2]".into())
    );
    assert_eq!(
        spec.check("OUTPUT0", "FP32", &[2, 7, 2]),
        Err("output shape is [2, 7, 2], expected [1, -1, 2]".into())
    );
    let any_name = OutputSpec { name: None, ..spec };
    assert_eq!(any_name.check("whatever", "FP32", &[1, 0, 2]), Ok(()));
}

#[test]
fn requested_outputs_parameters_and_request_ids_are_read_and_checked() {
    let with = |keys: &str| VALID.replace("[classes.output]", &format!("{keys}\n[classes.output]"));
    let config = parse(&with(
        "outputs = [\"max\", \"l2\"]\nrequest_id = true\nstore_outputs = \"first\"\n\
         [classes.parameters]\npriority = 2\nfast = true\nmode = \"x\"",
    ))
    .unwrap();
    let class = &config.classes[0];
    assert_eq!(class.requested_outputs, ["max", "l2"]);
    assert!(class.request_id && !class.store_all_outputs);
    assert_eq!(
        class.parameters.values().cloned().collect::<Vec<_>>(),
        [
            Parameter::Bool(true),
            Parameter::Text("x".into()),
            Parameter::Int(2)
        ]
    );
    assert!(
        config.classes[1].store_all_outputs,
        "the default keeps every output"
    );
    assert!(error_of(&with("outputs = [\"a\", \"a\"]")).contains("\"a\" is listed twice"));
    assert!(error_of(&with("store_outputs = \"some\""))
        .contains("classes[0].store_outputs: must be \"all\" or \"first\", found \"some\""));
    // An output spec naming an output no request asks for could never pass.
    let text = with("outputs = [\"max\"]").replace(
        "datatype = \"FP32\"\nshape = [1, -1]",
        "name = \"l2\"\ndatatype = \"FP32\"\nshape = [1, -1]",
    );
    assert!(
        error_of(&text).contains("output.name \"l2\" is not among the requested outputs"),
        "{}",
        error_of(&text)
    );
}

#[test]
fn a_model_contract_is_read_and_checked_with_its_line() {
    // The thermostat class is the file's last table, so a contract appended
    // to the text is its.
    let with = |keys: &str| format!("{VALID}{keys}\n");
    let config = parse(&with(
        "outputs = [\"max\"]\n[classes.contract]\n\
         inputs = [{ name = \"series\", datatype = \"FP32\", shape = [-1, 256] }]\n\
         outputs = [{ name = \"max\", datatype = \"FP32\", shape = [-1, 1] }]",
    ))
    .unwrap();
    let contract = &config.classes[1].contract;
    assert!(contract.metadata, "read by default with the KServe probe");
    let declared = contract.declared.as_ref().expect("declared");
    assert_eq!(declared.model, "lstm");
    assert_eq!(declared.origin, Origin::Config);
    assert_eq!(
        declared.inputs,
        [TensorContract {
            name: "series".into(),
            datatype: "FP32".into(),
            shape: vec![-1, 256],
        }]
    );
    assert_eq!(declared.outputs[0].shape, [-1, 1]);
    assert_eq!(config.classes[0].contract, ContractConfig::default());

    let off = parse(&with("[classes.contract]\nmetadata = false")).unwrap();
    assert_eq!(
        off.classes[1].contract,
        ContractConfig {
            metadata: false,
            declared: None
        }
    );
    let errors = [
        (
            "[classes.contract]\ninputs = [{ name = \"x\", datatype = \"FLOAT\", shape = [1] }]",
            "conf/fleet.toml:30: classes[1].contract.inputs[0].datatype: unknown datatype \"FLOAT\"",
        ),
        (
            "[classes.contract]\ninputs = [{ name = \"x\", datatype = \"FP32\", shape = [1, -2] }]",
            "conf/fleet.toml:30: classes[1].contract.inputs[0].shape[1]: must be -1 (any size) or at least 0",
        ),
        (
            "[classes.contract]\ninputs = [\n{ name = \"x\", datatype = \"FP32\", shape = [1] },\n\
             { name = \"x\", datatype = \"FP16\", shape = [1] }]",
            "conf/fleet.toml:32: classes[1].contract.inputs[1].name: \"x\" is declared twice",
        ),
        (
            "[classes.contract]\noutputs = [{ name = \"\", datatype = \"FP32\", shape = [1] }]",
            "classes[1].contract.outputs[0].name: must not be empty",
        ),
        (
            "outputs = [\"l2\"]\n[classes.contract]\n\
             outputs = [{ name = \"max\", datatype = \"FP32\", shape = [1] }]",
            "conf/fleet.toml:31: classes[1].contract.outputs: the class asks for output \"l2\"",
        ),
        (
            "[classes.upstream]\nhealth_check = \"none\"\n[classes.contract]\nmetadata = true",
            "conf/fleet.toml:32: classes[1].contract.metadata: ModelMetadata is read by the KServe probe",
        ),
        (
            "[classes.contract]\ninput = []",
            "conf/fleet.toml:30: unknown field `input`, expected one of `metadata`, `inputs`, `outputs`",
        ),
    ];
    for (keys, expected) in errors {
        let error = error_of(&with(keys));
        assert!(error.contains(expected), "{keys}\n→ {error}");
    }
    // Without the KServe probe there is no metadata to read.
    let grpc = parse(&with(
        "[classes.upstream]\nhealth_check = \"none\"\n[classes.contract]",
    ))
    .unwrap();
    assert!(!grpc.classes[1].contract.metadata);
}

#[test]
fn grpc_limits() {
    let text = format!("[grpc]\nmax_message_bytes = 1023\n{VALID}");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:2: grpc.max_message_bytes: must be at least 1024"
    );
    let text = format!("[grpc]\nretries = 11\n{VALID}");
    assert_eq!(
        parse(&text).map_err(|e| e.to_string()).err().as_deref(),
        Some("conf/fleet.toml:2: grpc.retries: must be at most 10")
    );
    let text = format!("[grpc]\nconnect_timeout_ms = 0\n{VALID}");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:2: grpc.connect_timeout_ms: must be greater than 0"
    );
}

#[test]
fn sink_commit_delay_is_a_testing_aid_off_by_default() {
    let config = parse(VALID).unwrap();
    assert_eq!(config.sink.commit_delay(), std::time::Duration::ZERO);
    let text = VALID.replace(
        "path = \"out/percore.db\"",
        "path = \"out/percore.db\"\ncommit_delay_ms = 25",
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.sink.commit_delay(),
        std::time::Duration::from_millis(25)
    );
}

#[test]
fn sink_kind_is_checked() {
    let text = VALID.replace("kind = \"sqlite\"", "kind = \"mysql\"");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:6: kind: unknown variant `mysql`, expected `sqlite` or `postgres`"
    );
    let text = VALID.replace("path = \"out/percore.db\"", "path = \"\"");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:5: sink.path: must not be empty"
    );
}

#[test]
fn postgres_sink_keys_are_read_with_their_defaults() {
    use crate::sink::postgres::{SslMode, DEFAULT_CONNECT_TIMEOUT};
    let sink = "kind = \"postgres\"\nurl = \"postgresql://percore:pw@127.0.0.1:5433/results\"";
    let text = VALID.replace("kind = \"sqlite\"\npath = \"out/percore.db\"", sink);
    let config = parse(&text).unwrap();
    let SinkConfig::Postgres { options, journal } = &config.sink else {
        panic!("expected a postgres sink, got {:?}", config.sink);
    };
    let journal = journal.as_ref().expect("the journal is on by default");
    assert_eq!(journal.dir, Path::new("conf").join(DEFAULT_JOURNAL_DIR));
    assert_eq!(journal.fsync, FsyncPolicy::Always);
    assert_eq!(
        options.url.location(),
        "postgresql://percore@127.0.0.1:5433/results"
    );
    assert!(options.url.has_password());
    assert_eq!(options.table, "jobs");
    assert_eq!(options.batch_rows, crate::sink::writer::MAX_GROUP_ROWS);
    assert_eq!(options.linger, std::time::Duration::ZERO);
    assert_eq!(options.ssl_mode, SslMode::Prefer);
    assert_eq!(options.ssl_root_cert, None);
    assert_eq!(options.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert!(
        !format!("{config:?}").contains(":pw@"),
        "Debug shows no password"
    );

    let sink = format!(
        "{sink}\ntable = \"jobs_b\"\nbatch_rows = 1000\nlinger_ms = 20\n\
         sslmode = \"disable\"\nconnect_timeout_ms = 300\njournal = false"
    );
    let text = VALID.replace("kind = \"sqlite\"\npath = \"out/percore.db\"", &sink);
    let SinkConfig::Postgres { options, journal } = parse(&text).unwrap().sink else {
        panic!("expected a postgres sink");
    };
    assert_eq!(journal, None, "journal = false turns it off");
    assert_eq!(options.table, "jobs_b");
    assert_eq!(options.batch_rows, 1000);
    assert_eq!(options.linger, std::time::Duration::from_millis(20));
    assert_eq!(options.ssl_mode, SslMode::Disable);
    assert_eq!(
        options.connect_timeout,
        std::time::Duration::from_millis(300)
    );

    // sslrootcert is read relative to the config file's folder.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/ca.pem"), test_ca_pem()).unwrap();
    for mode in ["require", "verify-ca", "verify-full"] {
        let file: PostgresSinkFile = toml::from_str(&format!(
            "url = \"postgresql://u@h/db\"\nsslmode = \"{mode}\"\nsslrootcert = \"tls/ca.pem\""
        ))
        .unwrap();
        let options = validate_postgres_sink(&file, dir.path(), None).unwrap();
        assert_eq!(options.ssl_mode.name(), mode);
        assert_eq!(options.ssl_root_cert, Some(dir.path().join("tls/ca.pem")));
    }
    let file: PostgresSinkFile =
        toml::from_str("url = \"postgresql://u@h/db\"\nsslmode = \"require\"").unwrap();
    let options = validate_postgres_sink(&file, dir.path(), None).unwrap();
    assert_eq!(
        (options.ssl_mode, options.ssl_root_cert),
        (SslMode::Require, None)
    );
}

/// A self-signed CA certificate, PEM.
fn test_ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn the_postgres_journal_takes_the_journal_keys_and_can_be_turned_off() {
    let sink = "kind = \"postgres\"\nurl = \"postgresql://percore@127.0.0.1/results\"";
    let with = |keys: &str| {
        VALID.replace(
            "kind = \"sqlite\"\npath = \"out/percore.db\"",
            &format!("{sink}\n{keys}"),
        )
    };
    let config = parse(&with("journal_dir = \"spill\"\njournal_fsync = \"never\"")).unwrap();
    let journal = config.sink.journal().expect("on");
    assert_eq!(journal.dir, Path::new("conf/spill"));
    assert_eq!(journal.fsync, FsyncPolicy::Never);
    assert_eq!(
        error_of(&with("journal = false\njournal_dir = \"spill\"")),
        "conf/fleet.toml:9: sink.journal_dir: has no effect: sink.journal = false turns \
         the journal off"
    );
    // SQLite journals only when asked, in the same default folder.
    let text = VALID.replace(
        "path = \"out/percore.db\"",
        "path = \"out/percore.db\"\njournal = true",
    );
    let journal = parse(&text).unwrap().sink.journal().cloned().expect("on");
    assert_eq!(journal.dir, Path::new("conf").join(DEFAULT_JOURNAL_DIR));
}

#[test]
fn postgres_sink_errors_name_the_key() {
    let file = |extra: &str| -> PostgresSinkFile {
        toml::from_str(&format!("url = \"postgresql://u@h/db\"\n{extra}")).unwrap()
    };
    let error = |file: PostgresSinkFile, env: Option<&str>| {
        let (field, why) = validate_postgres_sink(&file, Path::new("conf"), env).unwrap_err();
        format!("{field}: {why}")
    };
    let no_url: PostgresSinkFile = toml::from_str("").unwrap();
    assert!(error(no_url, None).starts_with("sink.url: missing: set url"));
    let no_url: PostgresSinkFile = toml::from_str("").unwrap();
    let options =
        validate_postgres_sink(&no_url, Path::new("conf"), Some("postgresql://e@h:1/d")).unwrap();
    assert_eq!(
        options.url.location(),
        "postgresql://e@h:1/d",
        "the env var is read"
    );
    let no_url: PostgresSinkFile = toml::from_str("").unwrap();
    assert!(error(no_url, Some("mysql://x")).starts_with("sink.url: PERCORE_PG_URL must start"));
    assert_eq!(
        error(file("sslmode = \"verify_full\""), None),
        "sink.sslmode: \"verify_full\" is not one of \"disable\", \"prefer\", \
         \"require\", \"verify-ca\", \"verify-full\""
    );
    assert!(error(file("sslmode = \"verify-full\""), None)
        .starts_with("sink.sslrootcert: missing: sslmode = \"verify-full\" checks"));
    assert!(error(file("sslmode = \"verify-ca\""), None).starts_with("sink.sslrootcert: missing"));
    assert!(
        error(file("sslmode = \"prefer\"\nsslrootcert = \"ca.pem\""), None)
            .starts_with("sink.sslrootcert: is not read with sslmode = \"prefer\"")
    );
    assert!(error(
        file("sslmode = \"disable\"\nsslrootcert = \"ca.pem\""),
        None
    )
    .starts_with("sink.sslrootcert: is not read with sslmode = \"disable\""));
    // A missing, empty or non-PEM file is named with its path under the config's folder.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    std::fs::write(
        dir.path().join("junk.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    let tls_error = |root: &str| {
        let file = file(&format!(
            "sslmode = \"verify-full\"\nsslrootcert = \"{root}\""
        ));
        let (field, why) = validate_postgres_sink(&file, dir.path(), None).unwrap_err();
        format!("{field}: {why}")
    };
    let shown = |name: &str| dir.path().join(name).display().to_string();
    let text = tls_error("missing.pem");
    assert!(
        text.starts_with(&format!(
            "sink.sslrootcert: cannot read {}: ",
            shown("missing.pem")
        )),
        "{text}"
    );
    let text = tls_error("empty.pem");
    assert!(
        text.starts_with(&format!(
            "sink.sslrootcert: {} holds no certificate",
            shown("empty.pem")
        )),
        "{text}"
    );
    let text = tls_error("junk.pem");
    assert!(
        text.starts_with(&format!(
            "sink.sslrootcert: {} is not valid PEM",
            shown("junk.pem")
        )),
        "{text}"
    );
    // At load the error names the config file and line, like every other key.
    let sink = "kind = \"postgres\"\nurl = \"postgresql://u@h/db\"\nsslmode = \"verify-full\"\n\
                sslrootcert = \"nowhere/ca.pem\"";
    let text = VALID.replace("kind = \"sqlite\"\npath = \"out/percore.db\"", sink);
    let text = error_of(&text);
    assert!(
        text.starts_with("conf/fleet.toml:5: sink.sslrootcert: cannot read conf/nowhere/ca.pem"),
        "{text}"
    );
    assert!(error(file("table = \"Jobs\""), None).starts_with("sink.table:"));
    assert!(error(file("table = \"runs\""), None).contains("percore's own tables"));
    assert!(error(file("batch_rows = 0"), None).starts_with("sink.batch_rows: must be from 1"));
    assert!(error(file("connect_timeout_ms = 0"), None).starts_with("sink.connect_timeout_ms"));
    assert!(error(file("linger_ms = 60000"), None).starts_with("sink.linger_ms"));
    // The file's line is named for a bad key too.
    let sink = "kind = \"postgres\"\nurl = \"postgresql://u:secret@h/\"";
    let text = VALID.replace("kind = \"sqlite\"\npath = \"out/percore.db\"", sink);
    let text = error_of(&text);
    assert!(
        text.starts_with("conf/fleet.toml:5: sink.url: has no database"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn the_spill_journal_is_off_by_default_and_its_keys_are_checked() {
    let config = parse(VALID).unwrap();
    assert_eq!(config.sink.journal(), None);
    let with = |keys: &str| {
        VALID.replace(
            "path = \"out/percore.db\"",
            &format!("path = \"out/percore.db\"\n{keys}"),
        )
    };
    let config = parse(&with("journal_dir = \"spill\"")).unwrap();
    assert_eq!(
        config.sink.journal(),
        Some(&JournalConfig::new("conf/spill")),
        "relative to the config file, with the defaults"
    );
    let config = parse(&with(
        "journal_dir = \"/var/spill\"\njournal_fsync = \"interval\"\njournal_fsync_interval_ms = 250\njournal_max_bytes = 1048576\njournal_segment_bytes = 65536",
    ))
    .unwrap();
    assert_eq!(
        config.sink.journal(),
        Some(&JournalConfig {
            dir: "/var/spill".into(),
            fsync: FsyncPolicy::Interval(std::time::Duration::from_millis(250)),
            max_bytes: 1_048_576,
            segment_bytes: 65_536,
        })
    );
    let config = parse(&with("journal_dir = \"j\"\njournal_fsync = \"never\"")).unwrap();
    assert_eq!(config.sink.journal().unwrap().fsync, FsyncPolicy::Never);

    // Each bad value is named with its own line (the [sink] table is line 5).
    let cases = [
        (
            "journal_dir = \"j\"\njournal_fsync = \"sometimes\"",
            "conf/fleet.toml:9: sink.journal_fsync: must be \"always\", \"interval\" or \"never\", found \"sometimes\"",
        ),
        (
            "journal_dir = \"j\"\njournal_fsync = \"interval\"\njournal_fsync_interval_ms = 0",
            "conf/fleet.toml:10: sink.journal_fsync_interval_ms: must be greater than 0",
        ),
        (
            "journal_dir = \"j\"\njournal_fsync_interval_ms = 10",
            "conf/fleet.toml:9: sink.journal_fsync_interval_ms: needs journal_fsync = \"interval\"",
        ),
        (
            "journal_dir = \"j\"\njournal_segment_bytes = 100",
            "conf/fleet.toml:9: sink.journal_segment_bytes: must be at least 4096",
        ),
        (
            "journal_dir = \"j\"\njournal_max_bytes = 5000",
            "conf/fleet.toml:9: sink.journal_max_bytes: must be at least journal_segment_bytes (67108864)",
        ),
        (
            "journal_dir = \" \"",
            "conf/fleet.toml:8: sink.journal_dir: must not be empty",
        ),
        (
            "journal_max_bytes = 5000",
            "conf/fleet.toml:8: sink.journal_max_bytes: has no effect without sink.journal_dir \
             or sink.journal = true (the journal is off)",
        ),
    ];
    for (keys, expected) in cases {
        assert_eq!(error_of(&with(keys)), expected, "{keys}");
    }
}

#[test]
fn devices_need_exactly_one_source() {
    let text = VALID.replace("generate =", "csv = \"d.csv\"\ngenerate =");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:2: devices: set exactly one of csv or generate"
    );
    let text = VALID.replace(
        "generate = { count = 8, mix = { thermostat = 3, camera = 1 } }",
        "",
    );
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:2: devices: set exactly one of csv or generate"
    );
}

#[test]
fn generate_rules() {
    let text = VALID.replace("count = 8", "count = 0");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:3: devices.generate.count: must be greater than 0"
    );
    let text = VALID.replace("count = 8", "count = 4294967296");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:3: devices.generate.count: must be at most 4294967295"
    );
    let text = VALID.replace("{ thermostat = 3, camera = 1 }", "{}");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:3: devices.generate.mix: must name at least one class"
    );
    let text = VALID.replace("thermostat = 3", "thermostat = 0");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:3: devices.generate.mix.thermostat: must be greater than 0"
    );
    let text = VALID.replace("thermostat = 3", "fridge = 3");
    assert_eq!(
        error_of(&text),
        "conf/fleet.toml:3: devices.generate.mix.fridge: \
         unknown class \"fridge\" (known classes: camera, thermostat)"
    );
}

#[test]
fn load_reads_csv_and_tuning_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir(dir.join("hosts")).unwrap();
    std::fs::write(
        dir.join("devices.csv"),
        "id,class\ncam-1,camera\nthermo-1, thermostat\n",
    )
    .unwrap();
    let cpu = crate::tuning::allowed_cpus()[0];
    std::fs::write(
        dir.join("hosts/this.toml"),
        format!("shard_cpus = [{cpu}]\nconnections_per_node = 2\n"),
    )
    .unwrap();
    let text = VALID.replace(
        "generate = { count = 8, mix = { thermostat = 3, camera = 1 } }",
        "csv = \"devices.csv\"",
    );
    let text = format!("tuning = \"hosts/this.toml\"\n{text}");
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();

    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(config.fleet.len(), 2);
    assert_eq!(config.fleet.id(1), "thermo-1");
    assert_eq!(config.fleet.class(1), 1);
    assert_eq!(config.tuning.shard_cpus, vec![cpu]);
    assert_eq!(config.tuning.connections_per_node, 2);
    assert_eq!(config.sink, SinkConfig::sqlite(dir.join("out/percore.db")));
}

#[test]
fn errors_in_referenced_files_name_those_files() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join("devices.csv"), "cam-1,camera\ncam-2,fridge\n").unwrap();
    std::fs::write(dir.join("tuning.toml"), "io_memory_kib = 1\n").unwrap();
    let csv_config = VALID.replace(
        "generate = { count = 8, mix = { thermostat = 3, camera = 1 } }",
        "csv = \"devices.csv\"",
    );
    let path = dir.join("fleet.toml");

    let error = Config::from_str(&csv_config, &path).map(|_| ());
    let expected = format!(
        "{}:2: unknown class \"fridge\" (known classes: camera, thermostat)",
        dir.join("devices.csv").display()
    );
    assert_eq!(error.map_err(|e| e.to_string()), Err(expected));

    let text = format!("tuning = \"tuning.toml\"\n{VALID}");
    let error = Config::from_str(&text, &path).map(|_| ());
    let expected = format!(
        "{}:1: io_memory_kib: must be at least 64",
        dir.join("tuning.toml").display()
    );
    assert_eq!(error.map_err(|e| e.to_string()), Err(expected));

    let text = format!("tuning = \"missing.toml\"\n{VALID}");
    let error = Config::from_str(&text, &path).map(|_| ());
    let expected = format!(
        "{}:1: tuning: cannot read {}: No such file or directory (os error 2)",
        path.display(),
        dir.join("missing.toml").display()
    );
    assert_eq!(error.map_err(|e| e.to_string()), Err(expected));
}

#[test]
fn load_names_an_unreadable_file() {
    let error = Config::load(Path::new("/nonexistent/fleet.toml")).map(|_| ());
    assert_eq!(
        error.map_err(|e| e.to_string()),
        Err(
            "/nonexistent/fleet.toml: cannot read: No such file or directory (os error 2)"
                .to_string()
        )
    );
}

/// The shipped example must stay loadable.
#[test]
fn example_config_loads() {
    // `file!()` is this file's path, relative to the package root or absolute.
    let root = Path::new(file!())
        .ancestors()
        .nth(3)
        .unwrap_or(Path::new(""));
    let path = root.join("examples/percore.toml");
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(error) => panic!("{error}"),
    };
    let names: Vec<&str> = config.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["camera", "thermostat"]);
    assert_eq!(config.fleet.len(), 10);
    assert_eq!(config.tuning, Tuning::default());
}

#[test]
fn credentials_are_read_checked_and_never_shown() {
    // nextest runs each test in a process of its own: the variables are ours.
    std::env::set_var("PERCORE_UNIT_TOKEN", "tok-12345");
    std::env::set_var("PERCORE_UNIT_KEY", "key-67890");
    let with = |keys: &str| format!("{VALID}{keys}\n");
    let config = parse(&with(
        "token_env = \"PERCORE_UNIT_TOKEN\"\n[classes.metadata]\n\
         X-Api-Key = { env = \"PERCORE_UNIT_KEY\" }\nx-team = \"iot\"",
    ))
    .unwrap();
    let metadata = &config.classes[1].metadata;
    assert_eq!(metadata.names(), ["authorization", "x-api-key", "x-team"]);
    assert_eq!(metadata.0[0].1.expose(), "Bearer tok-12345");
    assert_eq!(metadata.0[1].1.expose(), "key-67890");
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("tok-12345")
            && !shown.contains("key-67890")
            && shown.contains("<redacted>"),
        "Debug hides the values"
    );
    assert_eq!(config.classes[0].metadata, Metadata::default());

    let errors = [
        (
            "token_env = \"PERCORE_UNIT_NOT_SET\"",
            "conf/fleet.toml:29: classes[1].token_env: environment variable \"PERCORE_UNIT_NOT_SET\" is not set",
        ),
        (
            "[classes.metadata]\ncontent-type = \"text/plain\"",
            "classes[1].metadata.content-type: is set by percore or reserved by gRPC",
        ),
        (
            "[classes.metadata]\ngrpc-encoding = \"gzip\"",
            "classes[1].metadata.grpc-encoding: is set by percore or reserved by gRPC",
        ),
        (
            "[classes.metadata]\n\"bad header\" = \"x\"",
            "classes[1].metadata.bad header: is not a valid header name",
        ),
        (
            "token_env = \"PERCORE_UNIT_TOKEN\"\n[classes.metadata]\nauthorization = \"Basic x\"",
            "classes[1].metadata.authorization: is set twice",
        ),
    ];
    for (keys, expected) in errors {
        let error = error_of(&with(keys));
        assert!(error.contains(expected), "{keys}\n→ {error}");
    }
    // A value that cannot be a header is refused without repeating it.
    std::env::set_var("PERCORE_UNIT_BAD", "line1\nsecret-part");
    let error = error_of(&with(
        "[classes.metadata]\nx-key = { env = \"PERCORE_UNIT_BAD\" }",
    ));
    assert!(error.contains("classes[1].metadata.x-key: its value is not a valid header value"));
    assert!(!error.contains("secret-part"), "{error}");
}

#[test]
fn a_cluster_section_reads_with_its_defaults_and_a_class_may_discover_its_nodes() {
    let text = VALID.replace(
        "compute_nodes = [\"127.0.0.1:9011\"]",
        "compute_nodes = \"etcd\"",
    )
        + "\n[cluster]\nname = \"prod\"\netcd = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379/\"]\n";
    assert!(
        text.contains("compute_nodes = \"etcd\""),
        "the fixture names the node"
    );
    let config = Config::from_str(&text, Path::new("conf/fleet.toml")).unwrap();
    let cluster = config.cluster.clone();
    assert_eq!(cluster.name, "prod");
    assert_eq!(
        cluster.etcd,
        ["http://10.0.0.1:2379", "http://10.0.0.2:2379/"]
    );
    assert_eq!(cluster.instance, super::host_name());
    assert_eq!(cluster.lease_ttl_s, super::DEFAULT_LEASE_TTL_S);
    assert_eq!(cluster.safety_delay_ms, None);
    let discovered: Vec<bool> = config
        .classes
        .iter()
        .map(|c| c.compute_nodes_from_etcd)
        .collect();
    assert!(discovered.contains(&true));
    let class = config
        .classes
        .iter()
        .find(|c| c.compute_nodes_from_etcd)
        .unwrap();
    assert!(class.compute_nodes.is_empty());
}

#[test]
fn cluster_keys_are_read_and_defaulted() {
    let config = parse(VALID).unwrap();
    assert_eq!(config.cluster, ClusterConfig::default());
    assert!(!config.cluster.uses_etcd());
    assert!(config.cluster.split.keeps_all());
    let text = format!(
        "{VALID}\n[cluster]\nname = \"plant-a\"\netcd = [\"http://127.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n\
         instance = \"host-7\"\nlease_ttl_s = 5\nsafety_delay_ms = 61000\n"
    );
    let cluster = parse(&text).unwrap().cluster;
    assert_eq!(cluster.name, "plant-a");
    assert_eq!(cluster.etcd.len(), 2);
    assert_eq!(cluster.instance, "host-7");
    assert_eq!(cluster.lease_ttl_s, 5);
    assert_eq!(cluster.safety_delay_ms, Some(61_000));
    assert_eq!(cluster.safety_delay_ms(2_000), 61_000);
    let split = parse(&format!(
        "{VALID}\n[cluster]\nclasses = [\"thermostat\"]\nslice = \"2/3\"\n"
    ))
    .unwrap()
    .cluster
    .split;
    assert_eq!(split.classes, Some(vec![1]));
    assert_eq!(split.slice, Some(Slice { index: 1, count: 3 }));
    // Without a configured delay, the largest deadline of the classes involved.
    assert_eq!(ClusterConfig::default().safety_delay_ms(700), 700);
}

#[test]
fn cluster_mistakes_name_their_line() {
    let cases = [
        ("slice = \"4/3\"", "conf/fleet.toml:31: cluster.slice: expected \"K/N\" (the K-th of N slices, 1 ≤ K ≤ N), found \"4/3\""),
        ("classes = [\"camera\", \"fridge\"]", "conf/fleet.toml:31: cluster.classes[1]: unknown class \"fridge\" (known classes: camera, thermostat)"),
        ("classes = [\"camera\", \"camera\"]", "conf/fleet.toml:31: cluster.classes[1]: \"camera\" is listed twice"),
        ("classes = []", "conf/fleet.toml:31: cluster.classes: must name at least one class (or leave the key out: every class)"),
        ("etcd = [\"127.0.0.1:2379\"]", "conf/fleet.toml:31: cluster.etcd[0]: expected \"http://host:port\", found \"127.0.0.1:2379\""),
        ("etcd = []", "conf/fleet.toml:31: cluster.etcd: must list at least one endpoint (or leave the key out: no etcd)"),
        ("lease_ttl_s = 5", "conf/fleet.toml:31: cluster.lease_ttl_s: has no effect without cluster.etcd (only etcd membership moves devices)"),
        ("instance = \"a/b\"", "conf/fleet.toml:31: cluster.instance: \"a/b\": must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-' (it is part of etcd keys)"),
        ("etcd = [\"http://h:1\"]\nslice = \"1/2\"", "conf/fleet.toml:32: cluster.slice: a static split cannot be combined with cluster.etcd: etcd membership places every device on a live instance"),
        ("etcd = [\"http://h:1\"]\nlease_ttl_s = 0", "conf/fleet.toml:32: cluster.lease_ttl_s: must be from 2 (etcd's shortest lease) to 3600 seconds"),
        ("etcd = [\"http://h:1\"]\nsafety_delay_ms = 100", "conf/fleet.toml:32: cluster.safety_delay_ms: must be at least the largest deadline_ms (60000 ms, class \"thermostat\"), so a device's last job on the instance that lost it has ended before the instance that gained it starts it"),
        ("shards = 2", "conf/fleet.toml:31: unknown field `shards`, expected one of `name`, `etcd`, `instance`, `lease_ttl_s`, `safety_delay_ms`, `classes`, `slice`"),
    ];
    for (keys, expected) in cases {
        let text = format!("{VALID}\n[cluster]\n{keys}\n");
        assert_eq!(error_of(&text), expected, "{keys}");
    }
}
