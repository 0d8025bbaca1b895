//! `percore bench --source S --compute C` against given nodes: the model and
//! tensors asked for come from flags or from a class of a config file, the reasons
//! of failed jobs are printed, and failed calls are never counted as throughput.

mod common;

use std::net::SocketAddr;
use std::process::Output;

use percore::mock::{MockKind, MockNode, MockOptions};

/// A mock data source and a mock compute node that serves `model` only.
fn nodes(model: &str) -> (MockNode, MockNode) {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            model: Some(model.to_string()),
            ..MockOptions::default()
        },
    );
    (source, compute)
}

/// A short closed-loop bench with `args` added.
fn bench(args: &[String]) -> Output {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["bench", "--concurrency", "8", "--duration", "1s"])
        .args(["--devices", "1000"])
        .args(args)
        .output()
        .expect("the binary runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "bench failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn against(source: SocketAddr, compute: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--source".to_string(),
        source.to_string(),
        "--compute".to_string(),
        compute.to_string(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

/// The numbers of the table row of the one level: (ok/s, tried/s, failed).
fn level_row(stdout: &str) -> (f64, f64, u64) {
    let row = stdout
        .lines()
        .find(|line| line.starts_with("concurrency 8"))
        .unwrap_or_else(|| panic!("no level row in:\n{stdout}"));
    let fields: Vec<&str> = row["concurrency 8".len()..].split_whitespace().collect();
    let number = |index: usize| -> f64 {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .unwrap_or_else(|| panic!("field {index} of {row:?} is not a number"))
    };
    (number(0), number(1), number(3) as u64)
}

#[test]
fn the_model_flag_reaches_the_compute_node() {
    let (source, compute) = nodes("M");
    let output = bench(&against(
        source.addr,
        compute.addr,
        &[
            "--model",
            "M",
            "--output-datatype",
            "FP32",
            "--output-shape",
            "1,2",
        ],
    ));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (ok_per_s, tried_per_s, failed) = level_row(&stdout);
    assert!(ok_per_s > 0.0, "no ok jobs:\n{stdout}");
    assert_eq!(failed, 0, "{stdout}");
    assert!(ok_per_s <= tried_per_s, "{stdout}");
    assert!(!stdout.contains("why jobs did not end ok"), "{stdout}");
}

#[test]
fn a_wrong_model_prints_not_found_and_no_throughput() {
    let (source, compute) = nodes("M");
    let output = bench(&against(source.addr, compute.addr, &["--model", "other"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (ok_per_s, tried_per_s, failed) = level_row(&stdout);
    assert_eq!(
        ok_per_s, 0.0,
        "failed calls counted as throughput:\n{stdout}"
    );
    assert!(tried_per_s > 0.0 && failed > 0, "{stdout}");
    let reasons = stdout
        .split_once("why jobs did not end ok (concurrency 8), most frequent first:")
        .unwrap_or_else(|| panic!("no reasons printed:\n{stdout}"))
        .1;
    let first = reasons.lines().nth(1).unwrap_or_default();
    assert!(
        first.contains("failed") && first.contains("NOT_FOUND"),
        "the top reason is not NOT_FOUND:\n{stdout}"
    );
    // Latencies of a level without ok jobs are "–", not 0.
    let row = stdout
        .lines()
        .find(|line| line.starts_with("concurrency 8"))
        .unwrap_or_default();
    assert!(row.contains('–'), "{row}");
}

#[test]
fn a_class_of_a_config_file_is_benched_as_written() {
    let (source, compute) = nodes("mock");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = common::write_config_file(
        dir.path(),
        source.addr,
        compute.addr,
        100,
        1_000,
        500,
        &dir.path().join("unused.db"),
        "",
    );
    let config = config.to_str().expect("a UTF-8 path").to_string();
    let output = bench(&[
        "--config".to_string(),
        config.clone(),
        "--class".to_string(),
        "meter".to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (ok_per_s, _, failed) = level_row(&stdout);
    assert!(ok_per_s > 0.0 && failed == 0, "{stdout}");

    let unknown = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["bench", "--config", &config, "--class", "fridge"])
        .output()
        .expect("the binary runs");
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&unknown.stderr),
        format!("error: --class \"fridge\": {config} has no such class (its classes: meter)\n")
    );
}

#[test]
fn model_flags_need_given_nodes_and_a_good_datatype() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
            .arg("bench")
            .args(args)
            .output()
            .expect("the binary runs")
    };
    let alone = run(&["--model", "M"]);
    assert_eq!(alone.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&alone.stderr).contains("--source <SOURCE>"),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );
    let bad = run(&[
        "--source",
        "127.0.0.1:1",
        "--compute",
        "127.0.0.1:2",
        "--output-datatype",
        "fp32",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .starts_with("error: --output-datatype \"fp32\" is not a KServe v2 datatype"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
