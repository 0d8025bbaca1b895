//! Credentials: a class's token (`token_env`) and headers (`[classes.metadata]`)
//! go with every call to its compute nodes, probes included, and appear in no
//! output, file or log of the run.

mod common;

use percore::mock::{MockKind, MockOptions};

/// What the compute node demands, and what the test environment holds.
const TOKEN: &str = "s3cr3t-T0KEN-4f9a1c";

/// A run of 50 devices for 2 s against a node requiring `Bearer TOKEN`, with
/// the environment variable `var` holding `sent`; its exit code, stderr and
/// rows, and the folder it wrote.
fn run_with_token(var: &str, sent: &str) -> (i32, String, Vec<common::Row>, tempfile::TempDir) {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            required_header: Some(("authorization".into(), format!("Bearer {TOKEN}"))),
            ..MockOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config =
        common::write_config_file(dir.path(), source.addr, compute.addr, 50, 250, 250, &db, "");
    let mut text = std::fs::read_to_string(&config).expect("the config");
    text.push_str(&format!(
        "token_env = \"{var}\"\n[classes.metadata]\nx-percore-class = \"meter\"\n"
    ));
    std::fs::write(&config, text).expect("the config");
    // Each test runs in a process of its own (nextest): nothing else reads
    // the environment meanwhile.
    std::env::set_var(var, sent);
    let (code, stderr) = common::run_percore(&config, "2s", &dir.path().join("summary.json"));
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    (code, stderr, rows, dir)
}

#[test]
fn the_token_opens_the_node_and_is_written_nowhere() {
    let (code, stderr, rows, dir) = run_with_token("PERCORE_TEST_TOKEN_OK", TOKEN);
    assert_eq!(code, 0, "{stderr}");
    assert!(!rows.is_empty());
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    let summary = common::read_summary_json(&dir.path().join("summary.json"));
    assert_eq!(
        summary["config"]["classes"][0]["metadata"],
        serde_json::json!(["authorization", "x-percore-class"]),
        "the configuration names the headers, not their values"
    );
    common::assert_nowhere(dir.path(), &[&stderr], TOKEN);
}

#[test]
fn a_wrong_token_fails_every_job_as_unauthenticated_and_is_written_nowhere() {
    let wrong = "not-the-t0ken-77e2";
    let (code, stderr, rows, dir) = run_with_token("PERCORE_TEST_TOKEN_WRONG", wrong);
    assert_eq!(code, common::EXIT_ALL_FAILED, "{stderr}");
    let failed = common::reasons(&rows, "failed");
    assert!(!failed.is_empty());
    for reason in failed.keys() {
        assert!(
            reason.contains("16 UNAUTHENTICATED: the authorization header is wrong"),
            "{reason}"
        );
    }
    common::assert_nowhere(dir.path(), &[&stderr], wrong);
    common::assert_nowhere(dir.path(), &[&stderr], TOKEN);
}

#[test]
fn a_token_variable_that_is_not_set_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().expect("an address");
    let config = common::write_config_file(
        dir.path(),
        addr,
        addr,
        1,
        250,
        250,
        &dir.path().join("jobs.db"),
        "",
    );
    let mut text = std::fs::read_to_string(&config).expect("the config");
    text.push_str("token_env = \"PERCORE_TEST_TOKEN_UNSET\"\n");
    std::fs::write(&config, text).expect("the config");
    std::env::remove_var("PERCORE_TEST_TOKEN_UNSET");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--duration", "1s", "--admin", "none"])
        .output()
        .expect("percore runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "classes[0].token_env: environment variable \"PERCORE_TEST_TOKEN_UNSET\" is not set"
        ),
        "{stderr}"
    );
}
