//! Client-side batching (`[classes.batching]`) end to end, through the mock
//! nodes: a device's outputs in a batch are byte for byte its outputs alone,
//! the compute node's count of ModelInfer calls shows the batches, a failed
//! batch call fails each of its jobs with the reason, a device whose tensor
//! breaks the contract fails alone, and a lone job goes out when its linger
//! ends rather than waiting for company.
//!
//! The oracle for "alone" is the mock compute node's own computation run on
//! one device's request (`percore::mock::compute::compute`), the very code that
//! answers an unbatched call; an unbatched run is held to the same oracle, and
//! its call count to one call per job.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::ClassSpec;
use percore::config::{Batching, Class, Config, ContractConfig, GrpcConfig};
use percore::contract::{Contract, Origin, TensorContract};
use percore::mock::compute::{self, Computation};
use percore::mock::{tensor_content, MockKind, MockOptions, SourceTensors, TensorSpec};
use percore::proto::inference::model_infer_request::InferInputTensor;
use percore::proto::inference::ModelInferRequest;
use percore::summary::RunSummary;

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 500,
    deadline_ms: 500,
};

/// How long each batched run lasts.
const RUN: Duration = Duration::from_secs(2);

/// `job_outputs` of `db` by (device, tick): (name, datatype, shape, data) in
/// name order.
type Outputs = BTreeMap<(String, i64), Vec<(String, String, String, Vec<u8>)>>;

fn read_outputs(db: &Path) -> Outputs {
    let mut outputs = Outputs::new();
    for (device, tick, name, datatype, shape, data) in common::read_job_outputs(db) {
        outputs
            .entry((device, tick))
            .or_default()
            .push((name, datatype, shape, data));
    }
    outputs
}

/// What the mock compute node answers one device's request alone: `specs`'
/// content for (device, tick) run through `computation`, in name order as
/// `job_outputs` is read.
fn alone(
    computation: Computation,
    specs: &[TensorSpec],
    device: &str,
    tick_ms: i64,
) -> Vec<(String, String, String, Vec<u8>)> {
    let mut request = ModelInferRequest::default();
    for spec in specs {
        let name = if spec.name.is_empty() {
            "INPUT0"
        } else {
            &spec.name
        };
        request.inputs.push(InferInputTensor {
            name: name.to_string(),
            datatype: spec.datatype.clone(),
            shape: spec.shape.clone(),
            ..Default::default()
        });
        request.raw_input_contents.push(
            tensor_content(&spec.datatype, &spec.shape, device, tick_ms, &spec.name)
                .expect("the mock's content"),
        );
    }
    let computed = match compute::compute(computation, "INPUT0", &request) {
        Ok(computed) => computed,
        Err((code, message)) => panic!("the mock refuses one device's request: {code} {message}"),
    };
    let mut outputs: Vec<_> = computed
        .into_iter()
        .map(|output| {
            let shape: Vec<String> = output.shape.iter().map(i64::to_string).collect();
            (
                output.name,
                output.datatype,
                shape.join(","),
                output.raw.to_vec(),
            )
        })
        .collect();
    outputs.sort();
    outputs
}

/// Checks that every ok row's stored outputs are what the device gets alone,
/// and that only ok rows stored any.
fn assert_outputs_alone(db: &Path, computation: Computation, specs: &[TensorSpec]) -> u64 {
    let rows = common::read_rows(db);
    let outputs = read_outputs(db);
    let mut ok = 0;
    for row in rows.iter().filter(|row| row.outcome == "ok") {
        let key = (row.device_id.clone(), row.tick_ms);
        let stored = outputs
            .get(&key)
            .unwrap_or_else(|| panic!("no job_outputs for ok row {key:?}"));
        assert_eq!(
            stored,
            &alone(computation, specs, &row.device_id, row.tick_ms),
            "outputs of {}@{}",
            row.device_id,
            row.tick_ms
        );
        ok += 1;
    }
    assert_eq!(outputs.len() as u64, ok, "only ok jobs store outputs");
    ok
}

/// The most ModelInfer calls a batched run may make, and why: per shard,
/// batches that went out full (at most its jobs / B), batches that went out
/// when their linger ended (each was open for a whole linger, and a shard has
/// one batch of a layout open at a time, so at most one per linger of the
/// time jobs joined: the window plus a deadline for the last fetches, plus
/// one), and the one batch the shard's stop flushed.
fn max_calls(summary: &RunSummary, batching: Batching, deadline: Duration) -> u64 {
    let active = Duration::from_millis((summary.window_ms.1 - summary.window_ms.0) as u64)
        + deadline
        + batching.linger;
    let lingers = (active.as_micros() / batching.linger.as_micros()) as u64 + 1;
    summary
        .per_shard
        .iter()
        .map(|shard| {
            let jobs = shard.counters.ok + shard.counters.failed;
            jobs / batching.max_batch as u64 + lingers + 1
        })
        .sum()
}

/// The fewest calls `jobs` jobs can take in batches of at most B rows.
fn min_calls(jobs: u64, batching: Batching) -> u64 {
    jobs.div_ceil(batching.max_batch as u64)
}

fn config(class: Class, devices: usize, db: &Path) -> Config {
    common::config(
        vec![class],
        devices,
        db.to_path_buf(),
        GrpcConfig::default(),
    )
}

#[test]
fn each_device_gets_its_own_answer_from_a_batch_in_fewer_calls() {
    let spec = TensorSpec::new("", "FP32", vec![1, 8]).expect("a spec");
    let (source, compute) =
        common::start_tensor_mocks(SourceTensors::Tensor(spec.clone()), Computation::MaxL2);
    let calls = compute.control();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let batching = Batching {
        max_batch: 8,
        linger: Duration::from_millis(20),
    };
    let mut class = common::class(METER, source.addr, compute.addr);
    class.output = None;

    // Unbatched: one call per job, each the device's answer alone.
    let plain_db = dir.path().join("plain.db");
    let plain = config(class.clone(), 400, &plain_db);
    let summary = common::run(&plain, RUN);
    let plain_calls = calls.calls();
    let rows = common::read_rows(&plain_db);
    common::assert_exact_ticks(&plain, &summary, &rows);
    common::assert_counts(&summary, &rows);
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    let plain_ok = assert_outputs_alone(&plain_db, Computation::MaxL2, std::slice::from_ref(&spec));
    assert_eq!(plain_calls, plain_ok, "unbatched: one ModelInfer per job");

    // Batched: the same answers per device, fewer calls.
    let db = dir.path().join("batched.db");
    class.batching = Some(batching);
    let batched = config(class, 400, &db);
    let summary = common::run(&batched, RUN);
    let batched_calls = calls.calls() - plain_calls;
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&batched, &summary, &rows);
    common::assert_counts(&summary, &rows);
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    let ok = assert_outputs_alone(&db, Computation::MaxL2, &[spec]);
    assert!(ok > 0);
    let bound = max_calls(&summary, batching, Duration::from_millis(METER.deadline_ms));
    eprintln!(
        "{ok} jobs in {batched_calls} ModelInfer calls (at least {}, at most {bound})",
        min_calls(ok, batching)
    );
    assert!(
        batched_calls <= bound,
        "{batched_calls} calls for {ok} jobs: more than the bound {bound}"
    );
    assert!(
        batched_calls >= min_calls(ok, batching),
        "{batched_calls} calls for {ok} jobs: some batch held more than {} rows",
        batching.max_batch
    );
    assert!(
        batched_calls < ok,
        "{batched_calls} calls for {ok} jobs: nothing was batched"
    );
    // Every job counts its fetch and the batch's one call.
    assert!(
        rows.iter()
            .filter(|row| row.outcome == "ok")
            .all(|row| row.attempts == 2),
        "attempts"
    );
}

#[test]
fn several_inputs_bytes_included_are_stacked_and_split_per_device() {
    let specs = vec![
        TensorSpec::new("pixels", "FP32", vec![1, 3]).expect("a spec"),
        TensorSpec::new("labels", "BYTES", vec![1, 2]).expect("a spec"),
        TensorSpec::new("flags", "BOOL", vec![1, 5]).expect("a spec"),
    ];
    let (source, compute) =
        common::start_tensor_mocks(SourceTensors::Inputs(specs.clone()), Computation::Echo);
    let calls = compute.control();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let batching = Batching {
        max_batch: 4,
        linger: Duration::from_millis(20),
    };
    let mut class = common::class(METER, source.addr, compute.addr);
    class.output = None;
    class.request_id = true;
    class.batching = Some(batching);
    let config = config(class, 300, &db);
    let summary = common::run(&config, RUN);
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    let ok = assert_outputs_alone(&db, Computation::Echo, &specs);
    let calls = calls.calls();
    let bound = max_calls(&summary, batching, Duration::from_millis(METER.deadline_ms));
    assert!(
        calls <= bound && calls >= min_calls(ok, batching) && calls < ok,
        "{calls} calls for {ok} jobs (bound {bound})"
    );
}

#[test]
fn a_failed_batch_call_fails_every_job_in_it_with_the_reason() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            error_rate: 1.0,
            ..MockOptions::default()
        },
    );
    let calls = compute.control();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let batching = Batching {
        max_batch: 8,
        linger: Duration::from_millis(20),
    };
    let mut class = common::class(METER, source.addr, compute.addr);
    class.batching = Some(batching);
    let config = config(class, 400, &db);
    let summary = common::run(&config, RUN);
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    let failed = common::reasons(&rows, "failed");
    let jobs = summary.counters.failed;
    assert_eq!(
        failed,
        BTreeMap::from([(
            "infer: grpc status 13 INTERNAL: injected failure".to_string(),
            jobs
        )]),
        "every job fails with the batch's reason"
    );
    assert_eq!(summary.counters.ok, 0);
    assert!(
        rows.iter()
            .filter(|row| row.outcome == "failed")
            .all(|row| row.attempts == 2 && row.output.is_none()),
        "each failed job counts its fetch and the batch's call, and stores nothing"
    );
    let calls = calls.calls();
    let bound = max_calls(&summary, batching, Duration::from_millis(METER.deadline_ms));
    assert!(
        calls <= bound && calls >= min_calls(jobs, batching) && calls < jobs,
        "{calls} calls for {jobs} jobs (bound {bound})"
    );
}

#[test]
fn a_device_whose_tensor_breaks_the_contract_fails_alone() {
    // Two data sources: one sends what the model takes, FP32 [1, 8], the
    // other FP32 [1, 9]; each fetch goes to one of them.
    let good_spec = TensorSpec::new("", "FP32", vec![1, 8]).expect("a spec");
    let source = |spec: &TensorSpec| {
        common::start_mock(
            MockKind::Source,
            MockOptions {
                source_tensors: SourceTensors::Tensor(spec.clone()),
                ..MockOptions::default()
            },
        )
    };
    let good = source(&good_spec);
    let bad = source(&TensorSpec::new("", "FP32", vec![1, 9]).expect("a spec"));
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            computation: Computation::MaxL2,
            ..MockOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let batching = Batching {
        max_batch: 8,
        linger: Duration::from_millis(20),
    };
    let mut class = common::class(METER, good.addr, compute.addr);
    class.data_sources = vec![good.addr.into(), bad.addr.into()];
    class.output = None;
    class.batching = Some(batching);
    class.contract = ContractConfig {
        metadata: true,
        declared: Some(Contract {
            model: METER.model.to_string(),
            inputs: vec![TensorContract {
                name: "INPUT0".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 8],
            }],
            outputs: Vec::new(),
            versions: Vec::new(),
            origin: Origin::Config,
        }),
    };
    let config = config(class, 400, &db);
    let summary = common::run(&config, RUN);
    let (good_fetches, bad_fetches) = (good.control().calls(), bad.control().calls());
    let infer_calls = compute.control().calls();
    good.stop();
    bad.stop();
    compute.stop();

    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    let failed = common::reasons(&rows, "failed");
    let reason = "infer: model contract: input \"INPUT0\" is FP32 [1, 9], model \"mock\" takes \
                  FP32 [-1, 8] according to the class's contract in the config";
    assert!(bad_fetches > 0 && good_fetches > 0, "both sources served");
    assert_eq!(
        failed,
        BTreeMap::from([(reason.to_string(), bad_fetches)]),
        "exactly the jobs fetched from the bad source fail, each with the contract's reason"
    );
    let ok = assert_outputs_alone(&db, Computation::MaxL2, &[good_spec]);
    assert_eq!(ok, good_fetches, "every other job succeeds");
    // The bad tensors never reach the compute node: its calls carry the good ones.
    let bound = max_calls(&summary, batching, Duration::from_millis(METER.deadline_ms));
    assert!(
        infer_calls <= bound && infer_calls >= min_calls(ok, batching) && infer_calls < ok,
        "{infer_calls} calls for {ok} good jobs (bound {bound})"
    );
}

#[test]
fn a_lone_job_goes_out_when_its_linger_ends() {
    // One device, a tick every 200 ms: a batch never fills, so each job goes
    // out alone when its linger ends. A linger that waited for a full batch
    // would keep the device busy, and its next ticks would be skipped.
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let linger = Duration::from_millis(20);
    let spec = ClassSpec {
        period_ms: 200,
        deadline_ms: 200,
        ..METER
    };
    let mut class = common::class(spec, source.addr, compute.addr);
    class.batching = Some(Batching {
        max_batch: 8,
        linger,
    });
    let config = config(class, 1, &db);
    let summary = common::run(&config, Duration::from_secs(3));
    let calls = compute.control().calls();
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    common::assert_ok_rows_are_right(&rows, MockOptions::default().payload_bytes);
    let (ok, failed, skipped) = common::outcome_counts(&rows);
    assert_eq!(failed, 0, "{:?}", common::reasons(&rows, "failed"));
    // A stalled machine may delay one tick past the next; a job kept until a
    // batch filled would skip every other one.
    assert!(
        skipped <= rows.len() as u64 / 10,
        "{skipped} of {} ticks skipped: {:?}",
        rows.len(),
        common::reasons(&rows, "skipped")
    );
    assert_eq!(calls, ok, "each lone job is a call of its own");
    // Two rules send a batch before its linger, as documented: the run's stop
    // sends the one gathering (the last job: one device, one job at a time),
    // and a job ready less than a linger before its deadline goes at once (a
    // fetch slowed by a loaded machine).
    let last_ok_tick = rows
        .iter()
        .filter(|row| row.outcome == "ok")
        .map(|row| row.tick_ms)
        .max();
    let deadline_us = spec.deadline_ms as i64 * 1000;
    let lingers = |row: &&common::Row| {
        let ready_us = row.schedule_lag_us + row.fetch_us.unwrap_or(0);
        row.outcome == "ok"
            && Some(row.tick_ms) != last_ok_tick
            && ready_us + linger.as_micros() as i64 <= deadline_us
    };
    let checked = rows.iter().filter(lingers).count() as u64;
    assert!(
        checked * 2 >= ok,
        "only {checked} of {ok} ok jobs could linger"
    );
    for row in rows.iter().filter(lingers) {
        let infer_us = row.infer_us.expect("an infer time") as u128;
        assert!(
            infer_us >= linger.as_micros(),
            "{}@{} waited {infer_us} µs: less than its linger",
            row.device_id,
            row.tick_ms
        );
    }
}
