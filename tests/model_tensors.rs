//! Several inputs and several outputs end to end, through the mock nodes: a
//! source sending named tensors of several datatypes, a compute node echoing
//! them back as outputs (or computing `max` and `l2`), and the rows checked
//! value by value — `job_outputs` holds every output asked for, with its
//! datatype and shape, and `jobs.output` the first.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::ClassSpec;
use percore::config::GrpcConfig;
use percore::mock::{tensor_content, Computation, SourceTensors, TensorSpec};

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 500,
    deadline_ms: 500,
};

/// `job_outputs` of `db` by (device, tick): each output's (name, datatype, shape, data),
/// in name order.
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

#[test]
fn named_inputs_of_several_datatypes_come_back_as_the_outputs_asked_for() {
    let inputs = vec![
        TensorSpec::new("pixels", "FP32", vec![2, 3]).expect("a spec"),
        TensorSpec::new("ids", "INT64", vec![1, 4]).expect("a spec"),
        TensorSpec::new("labels", "BYTES", vec![2]).expect("a spec"),
    ];
    let (source, compute) =
        common::start_tensor_mocks(SourceTensors::Inputs(inputs.clone()), Computation::Echo);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let mut class = common::class(METER, source.addr, compute.addr);
    class.output = None;
    // Two of the three, in an order of our own: the answer follows it.
    class.requested_outputs = vec!["labels".into(), "pixels".into()];
    let config = common::config(vec![class], 50, db.clone(), GrpcConfig::default());
    let summary = common::run(&config, Duration::from_secs(2));
    source.stop();
    compute.stop();

    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    let outputs = read_outputs(&db);
    assert_eq!(outputs.len(), rows.len(), "a job_outputs entry per ok job");
    for row in &rows {
        let content = |spec: &TensorSpec| {
            tensor_content(
                &spec.datatype,
                &spec.shape,
                &row.device_id,
                row.tick_ms,
                &spec.name,
            )
            .expect("the mock's content")
            .to_vec()
        };
        let stored = &outputs[&(row.device_id.clone(), row.tick_ms)];
        let expected = vec![
            (
                "labels".to_string(),
                "BYTES".to_string(),
                "2".to_string(),
                content(&inputs[2]),
            ),
            (
                "pixels".to_string(),
                "FP32".to_string(),
                "2,3".to_string(),
                content(&inputs[0]),
            ),
        ];
        assert_eq!(stored, &expected, "{}@{}", row.device_id, row.tick_ms);
        // jobs.output is the first output answered: the first asked for.
        assert_eq!(row.output.as_deref(), Some(&content(&inputs[2])[..]));
    }
}

#[test]
fn max_and_l2_are_stored_with_their_values_and_a_missing_output_fails_the_job() {
    let (source, compute) = common::start_tensor_mocks(
        SourceTensors::Tensor(TensorSpec::new("", "FP32", vec![3, 5]).expect("a spec")),
        Computation::MaxL2,
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let mut class = common::class(METER, source.addr, compute.addr);
    class.output = None;
    let config = common::config(vec![class.clone()], 40, db.clone(), GrpcConfig::default());
    let summary = common::run(&config, Duration::from_secs(2));

    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    let outputs = read_outputs(&db);
    for row in &rows {
        let input = tensor_content("FP32", &[3, 5], &row.device_id, row.tick_ms, "")
            .expect("the mock's content");
        let x: Vec<f32> = input
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let bytes =
            |values: Vec<f32>| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        let max = bytes(
            x.chunks(5)
                .map(|r| r.iter().copied().fold(f32::MIN, f32::max))
                .collect(),
        );
        let l2 = bytes(
            x.chunks(5)
                .map(|r| {
                    r.iter()
                        .map(|&v| f64::from(v) * f64::from(v))
                        .sum::<f64>()
                        .sqrt() as f32
                })
                .collect(),
        );
        let stored = &outputs[&(row.device_id.clone(), row.tick_ms)];
        let names: Vec<&str> = stored.iter().map(|o| o.0.as_str()).collect();
        assert_eq!(names, ["l2", "max"]);
        for (name, datatype, shape, data) in stored {
            assert_eq!((datatype.as_str(), shape.as_str()), ("FP32", "3,1"));
            let expected = if name == "max" { &max } else { &l2 };
            assert_eq!(
                data, expected,
                "{name} of {}@{}",
                row.device_id, row.tick_ms
            );
        }
    }

    // Asking for an output the model does not have fails every job, saying so.
    let db = dir.path().join("missing.db");
    class.requested_outputs = vec!["max".into(), "mean".into()];
    let config = common::config(vec![class], 10, db.clone(), GrpcConfig::default());
    common::run(&config, Duration::from_secs(1));
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    let failed = common::reasons(&rows, "failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let reason = failed.keys().next().expect("a reason");
    assert!(reason.contains("\"mean\""), "{reason}");
    assert!(
        read_outputs(&db).is_empty(),
        "a failed job stores no output"
    );
}
