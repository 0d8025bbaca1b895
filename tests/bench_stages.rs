//! `percore bench --stages`: each stage alone at rising load, one table, and a
//! verdict naming the stage that limits the pipeline — infer when the compute
//! node's capacity is low, the sink when the slow-sink testing aid
//! (`--sink-commit-delay-ms`) makes every commit slow. Levels are short and the
//! search coarse, so the whole file stays within a few tens of seconds. The
//! bound is 100 ms, well above the commit stalls of a shared disk.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use percore::mock::{MockKind, MockOptions, ServiceTime};

/// `percore bench --stages` with short levels and a coarse search, `args` added.
fn bench_stages(dir: &Path, args: &[&str]) -> (Output, String) {
    let summary = dir.join("summary.json");
    let report = dir.join("report");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["bench", "--stages", "--duration", "500ms"])
        .args(["--devices", "1000", "--search-precision-pct", "60"])
        .args(["--latency-bound-us", "100000"])
        .arg("--summary-json")
        .arg(&summary)
        .arg("--report")
        .arg(&report)
        .args(args)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "bench --stages failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output, stdout)
}

/// The verdict line of the table.
fn verdict(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|line| line.contains("limits the pipeline"))
        .unwrap_or_else(|| panic!("no verdict line in:\n{stdout}"))
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()))
}

/// The stage named `name` of a stages.json object.
fn stage<'a>(stages: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stages["stages"]
        .as_array()
        .and_then(|all| all.iter().find(|stage| stage["stage"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {stages}"))
}

/// Checks what every stages run writes: stages.json, the same object in the
/// summary, one level entry per measured level with its stage, and the page.
fn assert_outputs(dir: &Path, limiting: &str) -> serde_json::Value {
    let stages = read_json(&dir.join("report/stages.json"));
    assert_eq!(stages["limit"]["stage"], limiting, "{stages}");
    assert_eq!(stages["bound_us"], 100_000);
    for name in ["fetch", "infer", "sink", "job"] {
        let entry = stage(&stages, name);
        assert!(entry["criterion"]
            .as_str()
            .is_some_and(|c| c.contains("≤ bound")));
        assert!(entry["levels"]
            .as_array()
            .is_some_and(|levels| !levels.is_empty()));
    }
    let summary = read_json(&dir.join("summary.json"));
    assert_eq!(summary["stages"], stages);
    let levels = summary["levels"].as_array().expect("a levels array");
    for name in ["fetch", "infer", "sink", "job"] {
        assert!(
            levels.iter().any(|level| level["stage"] == name),
            "no {name} level in {summary}"
        );
    }
    for level in levels {
        assert!(level["summary"]["jobs"].as_u64().is_some(), "{level}");
    }
    let page = std::fs::read_to_string(dir.join("report/stages.html")).expect("stages.html");
    assert!(
        page.contains(&format!("{limiting} limits the pipeline")),
        "{page}"
    );
    stages
}

#[test]
fn a_slow_compute_node_makes_infer_the_limit() {
    // Capacity of the compute node: 4 connections × 1 stream / 50 ms = 80
    // calls/s at most; the data source answers at once. The bound (100 ms) is
    // far above a loaded disk's commit stalls, so only the compute node fails
    // it at these rates.
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            service_time: ServiceTime::Fixed(Duration::from_millis(50)),
            max_concurrent_streams: 1,
            ..MockOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (source, compute) = (source.addr.to_string(), compute.addr.to_string());
    let (_, stdout) = bench_stages(
        dir.path(),
        &[
            "--source",
            &source,
            "--compute",
            &compute,
            "--rate",
            "40,1280",
        ],
    );
    let line = verdict(&stdout);
    assert!(line.starts_with("infer limits the pipeline: "), "{stdout}");
    assert!(line.contains("below the next stage"), "{stdout}");
    // The table has one row per stage, each with its pass criterion.
    for name in ["fetch", "infer", "sink", "job"] {
        assert!(
            stdout
                .lines()
                .any(|row| row.starts_with(name) && row.contains("≤ bound")),
            "no {name} row in:\n{stdout}"
        );
    }
    let stages = assert_outputs(dir.path(), "infer");
    let rate = |name: &str| stage(&stages, name)["best_rate"].as_f64().unwrap_or(0.0);
    assert!(rate("infer") < rate("fetch"), "{stages}");
    assert!(rate("infer") < rate("sink"), "{stages}");
    // The compute node's capacity bounds what infer can pass.
    assert!(rate("infer") <= 160.0, "{stages}");
}

#[test]
fn a_slow_sink_makes_the_sink_the_limit() {
    // Every commit is followed by 300 ms of sleep: rows wait up to that long
    // to be committed, three times the bound, whatever the rate.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (_, stdout) = bench_stages(
        dir.path(),
        &["--sink-commit-delay-ms", "300", "--rate", "100,800"],
    );
    let line = verdict(&stdout);
    assert!(line.starts_with("sink limits the pipeline: "), "{stdout}");
    let stages = assert_outputs(dir.path(), "sink");
    assert_eq!(stage(&stages, "sink")["best_rate"], serde_json::Value::Null);
    assert!(
        stage(&stages, "fetch")["best_rate"].as_f64().is_some(),
        "{stages}"
    );
}
