//! The model contract end to end: a model the server does not know, a version
//! it lacks, an input of the wrong datatype or shape according to its
//! `ModelMetadata`, a declared contract the server contradicts, a model that
//! stops being ready. Each is a warning on the terminal at start and failed
//! rows that say so, every due tick one row, no crash — and the run goes on
//! to succeed once the model is back.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{ClassSpec, Row};
use percore::config::{GrpcConfig, Upstream};
use percore::mock::{Computation, MockKind, MockOptions, SourceTensors, TensorSpec};

/// What one `percore run` left: its rows, its stderr, its summary and its
/// exit code.
struct Run {
    rows: Vec<Row>,
    stderr: String,
    summary: serde_json::Value,
    code: i32,
}

use common::EXIT_ALL_FAILED;

/// Runs `percore run` for 3 s over 50 devices ticking every 250 ms, against a
/// source and a compute node with these options; `class_keys` is appended to
/// the class's table (`model_version = "2"`, a `[classes.contract]`, …).
fn run(source: MockOptions, compute: MockOptions, class_keys: &str) -> Run {
    let source = common::start_mock(MockKind::Source, source);
    let compute = common::start_mock(MockKind::Compute, compute);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config =
        common::write_config_file(dir.path(), source.addr, compute.addr, 50, 250, 250, &db, "");
    append(&config, class_keys);
    let summary_path = dir.path().join("summary.json");
    let (code, stderr) = common::run_percore(&config, "3s", &summary_path);
    source.stop();
    compute.stop();
    let summary = common::read_summary_json(&summary_path);
    let rows = common::read_rows(&db);
    assert_eq!(
        summary["ok"].as_u64().unwrap_or(0) + summary["failed"].as_u64().unwrap_or(0),
        rows.iter().filter(|row| row.outcome != "skipped").count() as u64,
        "the summary counts every row"
    );
    assert!(!rows.is_empty(), "ticks ran: {stderr}");
    Run {
        rows,
        stderr,
        summary,
        code,
    }
}

fn append(path: &PathBuf, text: &str) {
    let mut config = std::fs::read_to_string(path).expect("the config");
    config.push_str(text);
    config.push('\n');
    std::fs::write(path, config).expect("the config is written");
}

/// Asserts that no job succeeded and that every failure reason contains one
/// of `any_of`, and that most (jobs after the first probe) contain `most`.
fn assert_failed_saying(run: &Run, any_of: &[&str], most: &str) {
    let failed = common::reasons(&run.rows, "failed");
    assert_eq!(
        run.summary["ok"].as_u64(),
        Some(0),
        "no job can succeed: {failed:?}"
    );
    assert_eq!(run.code, EXIT_ALL_FAILED);
    assert!(run.stderr.contains("error: every job of the run failed"));
    assert!(!failed.is_empty(), "jobs ran");
    for reason in failed.keys() {
        assert!(
            any_of.iter().any(|needle| reason.contains(needle)),
            "{reason:?} should say one of {any_of:?}"
        );
    }
    let total: u64 = failed.values().sum();
    let saying: u64 = failed
        .iter()
        .filter(|(reason, _)| reason.contains(most))
        .map(|(_, count)| count)
        .sum();
    assert!(
        saying * 10 >= total * 9,
        "{saying} of {total} failures say {most:?}: {failed:?}"
    );
}

fn compute_serving(model: &str) -> MockOptions {
    MockOptions {
        model: Some(model.to_string()),
        ..MockOptions::default()
    }
}

#[test]
fn a_model_the_server_does_not_know_is_a_warning_and_failed_rows_naming_it() {
    // The class asks for "mock"; the node serves only "rowstats".
    let run = run(MockOptions::default(), compute_serving("rowstats"), "");
    assert!(
        run.stderr.contains(
            "is not ready: it cannot serve model \"mock\": ModelReady for \"mock\": \
             grpc status 5 NOT_FOUND: model \"mock\" not found"
        ),
        "a warning names the model and what the server said"
    );
    assert_failed_saying(
        &run,
        &["model \"mock\" not found"],
        "infer: model unavailable on 127.0.0.1:",
    );
    // Refused jobs were never sent: no compute node answered them.
    for row in run.rows.iter().filter(|row| {
        row.reason
            .as_deref()
            .is_some_and(|reason| reason.contains("model unavailable"))
    }) {
        assert_eq!(
            (row.compute_node.as_deref(), row.attempts),
            (None, 1),
            "{row:?}"
        );
    }
}

#[test]
fn a_version_the_server_lacks_is_a_warning_and_failed_rows_naming_it() {
    let run = run(
        MockOptions::default(),
        compute_serving("mock"),
        "model_version = \"2\"",
    );
    assert!(
        run.stderr
            .contains("ModelReady for \"mock\" version \"2\": grpc status 5 NOT_FOUND"),
        "the warning names the version"
    );
    assert_failed_saying(
        &run,
        &["model \"mock\" version \"2\" not found"],
        "infer: model unavailable on 127.0.0.1:",
    );
}

/// A max-l2 node (its metadata: INPUT0 FP32 [-1, -1]) fed `datatype` `shape`.
fn max_l2_fed(datatype: &str, shape: Vec<i64>) -> (MockOptions, MockOptions) {
    let source = MockOptions {
        source_tensors: SourceTensors::Tensor(
            TensorSpec::new("INPUT0", datatype, shape).expect("a spec"),
        ),
        ..MockOptions::default()
    };
    let compute = MockOptions {
        computation: Computation::MaxL2,
        ..compute_serving("mock")
    };
    (source, compute)
}

/// max-l2's outputs, for the class's output check.
const MAX_L2_CLASS: &str = "outputs = [\"max\", \"l2\"]\n[classes.output]\nname = \"max\"\n\
                            datatype = \"FP32\"\nshape = [-1, 1]";

#[test]
fn an_input_of_the_wrong_datatype_per_model_metadata_fails_its_jobs_saying_so() {
    let (source, compute) = max_l2_fed("FP64", vec![2, 4]);
    let run = run(source, compute, MAX_L2_CLASS);
    let expected = "infer: model contract: input \"INPUT0\" is FP64 [2, 4], model \"mock\" \
                    takes FP32 [-1, -1] according to ModelMetadata of 127.0.0.1:";
    assert!(
        run.stderr.contains(
            "describes it: inputs INPUT0 FP32 [-1, -1]; outputs max FP32 [-1, 1], l2 FP32 [-1, 1]"
        ),
        "the contract read at start is logged"
    );
    assert!(
        run.stderr
            .contains("breaks its model contract: input \"INPUT0\" is FP64 [2, 4]"),
        "a warning when the first job breaks it"
    );
    // Jobs started before the first probe answered reach the node, which
    // refuses FP64 itself.
    assert_failed_saying(&run, &[expected, "FP32"], expected);
}

#[test]
fn an_input_of_the_wrong_shape_per_model_metadata_fails_its_jobs_saying_so() {
    let (source, compute) = max_l2_fed("FP32", vec![8]);
    let run = run(source, compute, MAX_L2_CLASS);
    let expected = "infer: model contract: input \"INPUT0\" is FP32 [8], model \"mock\" \
                    takes FP32 [-1, -1] according to ModelMetadata of 127.0.0.1:";
    assert_failed_saying(&run, &[expected, "rank 2"], expected);
}

#[test]
fn the_right_tensor_under_a_contract_succeeds_every_job() {
    // The same node and class fed what its metadata says: nothing fails, so
    // the checks above fail for their reason only.
    let (source, compute) = max_l2_fed("FP32", vec![2, 4]);
    let declared = format!(
        "{MAX_L2_CLASS}\n[classes.contract]\n\
         inputs = [{{ name = \"INPUT0\", datatype = \"FP32\", shape = [2, 4] }}]\n\
         outputs = [{{ name = \"max\", datatype = \"FP32\", shape = [2, 1] }}, \
                    {{ name = \"l2\", datatype = \"FP32\", shape = [2, 1] }}]"
    );
    for keys in [MAX_L2_CLASS, declared.as_str()] {
        let run = run(source.clone(), compute.clone(), keys);
        assert_eq!(common::reasons(&run.rows, "failed"), Default::default());
        assert_eq!(run.code, 0);
        assert_eq!(run.summary["ok"].as_u64(), Some(run.rows.len() as u64));
    }
}

#[test]
fn a_declared_contract_the_server_contradicts_refuses_the_replica() {
    // The source sends what the config declares; the server's metadata says
    // otherwise.
    let (source, compute) = max_l2_fed("FP16", vec![2, 4]);
    let keys = format!(
        "{MAX_L2_CLASS}\n[classes.contract]\n\
         inputs = [{{ name = \"INPUT0\", datatype = \"FP16\", shape = [-1, 4] }}]"
    );
    let run = run(source, compute, &keys);
    let expected = "its ModelMetadata does not fit the class: input \"INPUT0\" is FP16 [-1, 4] \
                    in the class's contract in the config, FP32 [-1, -1] in ModelMetadata of 127.0.0.1:";
    assert!(
        run.stderr.contains(expected),
        "the warning names the difference"
    );
    // Jobs started before the first probe answered reach the node, which
    // refuses FP16 itself.
    assert_failed_saying(&run, &[expected, "FP32"], expected);
}

#[test]
fn a_model_that_stops_being_ready_fails_jobs_saying_so_until_it_is_back() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let control = compute.control();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let spec = ClassSpec {
        name: "meter",
        model: "mock",
        period_ms: 100,
        deadline_ms: 100,
    };
    let mut class = common::class(spec, source.addr, compute.addr);
    class.upstream = Upstream {
        probe_interval: Duration::from_millis(100),
        ..Upstream::default()
    };
    let config = common::config(vec![class], 100, db.clone(), GrpcConfig::default());
    let run_config = config.clone();
    let run = std::thread::spawn(move || common::run(&run_config, Duration::from_secs(4)));
    std::thread::sleep(Duration::from_millis(1_000));
    control.set_model_ready(false);
    let down_ms = now_ms();
    std::thread::sleep(Duration::from_millis(1_500));
    control.set_model_ready(true);
    let up_ms = now_ms();
    let summary = run.join().expect("the run ends");
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);

    let failed = common::reasons(&rows, "failed");
    let refused = "infer: model unavailable on ";
    assert!(
        failed.keys().all(|reason| reason.starts_with(refused)
            && reason.ends_with("ModelReady for \"mock\" answered false")),
        "{failed:?}"
    );
    let during: Vec<&Row> = rows
        .iter()
        .filter(|row| row.tick_ms > down_ms + 300 && row.tick_ms < up_ms - 100)
        .collect();
    assert!(!during.is_empty());
    assert!(
        during.iter().all(|row| row.outcome == "failed"),
        "jobs while the model was not ready failed"
    );
    let after: Vec<&Row> = rows
        .iter()
        .filter(|row| row.tick_ms > up_ms + 400)
        .collect();
    assert!(after.len() > 100, "{} rows after", after.len());
    assert!(
        after.iter().all(|row| row.outcome == "ok"),
        "jobs succeed once the model is ready again"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}
