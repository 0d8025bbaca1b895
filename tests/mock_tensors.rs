//! The mock nodes' real tensors, called over gRPC with percore's own client:
//! the source's content is the documented formula (recomputed here from the
//! README, not with the library's function), several inputs come back named,
//! `max-l2` computes what an independent computation does, requested outputs
//! are picked in order and unknown ones refused, typed contents carry the same
//! values, ModelMetadata describes the model, and bad flags are refused.

mod common;

use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use prost::Message;

use percore::config::GrpcConfig;
use percore::error::ErrorKind;
use percore::grpc::client::{ClientSettings, Connection, Traffic};
use percore::grpc::methods;
use percore::grpc::status::Code;
use percore::mock::{Computation, MockKind, MockOptions, SourceTensors, TensorSpec};
use percore::proto::inference::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use percore::proto::inference::model_metadata_response::TensorMetadata;
use percore::proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
};
use percore::proto::source::{FetchRequest, FetchResponse};
use percore::runtime::{self, ExecutorSpec};

const DEVICE: &str = "cam-0042";
const TICK_MS: i64 = 1_700_000_000_123;

/// Calls `path` of the node at `addr` once with `request`, from a fresh
/// executor and connection, as a shard would.
fn call<Req, Resp>(
    addr: std::net::SocketAddr,
    path: &'static str,
    request: Req,
) -> Result<Resp, ErrorKind>
where
    Req: Message + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    let spec = ExecutorSpec {
        name: "pc-test".into(),
        cpu: None,
        io_memory_bytes: common::MOCK_IO_MEMORY,
    };
    let task = move || async move {
        let settings = ClientSettings::default();
        let connector = percore::endpoint::Endpoint::from(addr).connector();
        let connection =
            match Connection::open(&connector, &settings, Rc::new(Traffic::default())).await {
                Ok(connection) => connection,
                Err(error) => panic!("cannot connect to {addr}: {error}"),
            };
        let uri: Uri = format!("http://{addr}{path}").parse().expect("a valid URI");
        let deadline = Instant::now() + Duration::from_secs(5);
        connection.unary(&uri, &request, deadline, 4 << 20).await
    };
    runtime::start(&spec, task)
        .expect("an executor starts")
        .join()
        .expect("the executor finishes")
}

fn fetch(addr: std::net::SocketAddr) -> FetchResponse {
    let request = FetchRequest {
        device_id: DEVICE.into(),
        class: "camera".into(),
        tick_unix_ms: TICK_MS,
    };
    call(addr, methods::FETCH, request).expect("Fetch answers")
}

fn spec(name: &str, datatype: &str, shape: &[i64]) -> TensorSpec {
    TensorSpec::new(name, datatype, shape.to_vec()).expect("a valid spec")
}

// The content formula, written again from the README, independently of the
// library's implementation.

fn fnv1a64(key: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn draw(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn expected_fp32(key: &str, count: u64) -> Vec<f32> {
    let seed = fnv1a64(key);
    (0..count)
        .map(|i| (draw(seed, i) >> 40) as f32 / 16_777_216.0)
        .collect()
}

fn fp32_values(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn fp32_bytes(values: &[f32]) -> Bytes {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn the_fp32_source_content_is_the_documented_formula() {
    let source = common::start_mock(
        MockKind::Source,
        MockOptions {
            source_tensors: SourceTensors::Tensor(spec("", "FP32", &[2, 3])),
            ..MockOptions::default()
        },
    );
    let response = fetch(source.addr);
    source.stop();
    assert_eq!(response.datatype, "FP32");
    assert_eq!(response.shape, vec![2, 3]);
    assert!(response.inputs.is_empty());
    let values = fp32_values(&response.raw);
    assert_eq!(values, expected_fp32("cam-0042@1700000000123", 6));
    assert!(values.iter().all(|v| (0.0..1.0).contains(v)), "{values:?}");
    // Not a constant: six draws are not all equal.
    assert!(values.windows(2).any(|w| w[0] != w[1]), "{values:?}");
}

#[test]
fn several_inputs_come_back_named_with_their_shapes() {
    let inputs = vec![
        spec("image", "FP32", &[1, 4]),
        spec("ids", "INT64", &[2]),
        spec("flags", "BOOL", &[1, 3]),
        spec("tags", "BYTES", &[2]),
    ];
    let source = common::start_mock(
        MockKind::Source,
        MockOptions {
            source_tensors: SourceTensors::Inputs(inputs),
            ..MockOptions::default()
        },
    );
    let response = fetch(source.addr);
    source.stop();
    let seen: Vec<(&str, &str, &[i64], usize)> = response
        .inputs
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.datatype.as_str(),
                &t.shape[..],
                t.raw.len(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("image", "FP32", &[1, 4][..], 16),
            ("ids", "INT64", &[2][..], 16),
            ("flags", "BOOL", &[1, 3][..], 3),
            ("tags", "BYTES", &[2][..], 2 * (4 + 16)),
        ]
    );
    // Fields 1-3 are left empty when `inputs` is used.
    assert!(response.datatype.is_empty() && response.shape.is_empty() && response.raw.is_empty());
    // Each input's seed has its name in it.
    let image = fp32_values(&response.inputs[0].raw);
    assert_eq!(image, expected_fp32("cam-0042@1700000000123/image", 4));
    let ids_seed = fnv1a64("cam-0042@1700000000123/ids");
    let ids: Vec<u8> = (0..2)
        .flat_map(|i| draw(ids_seed, i).to_le_bytes())
        .collect();
    assert_eq!(&response.inputs[1].raw[..], &ids[..]);
    let flags_seed = fnv1a64("cam-0042@1700000000123/flags");
    let flags: Vec<u8> = (0..3).map(|i| (draw(flags_seed, i) & 1) as u8).collect();
    assert_eq!(&response.inputs[2].raw[..], &flags[..]);
    let tags_seed = fnv1a64("cam-0042@1700000000123/tags");
    let tags: Vec<u8> = (0..2)
        .flat_map(|i| {
            let text = format!("{:016x}", draw(tags_seed, i));
            [16u32.to_le_bytes().to_vec(), text.into_bytes()].concat()
        })
        .collect();
    assert_eq!(&response.inputs[3].raw[..], &tags[..]);
}

/// A ModelInfer request of one FP32 input `name` of `shape`, asking for `outputs`.
fn fp32_request(name: &str, shape: &[i64], values: &[f32], outputs: &[&str]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "stats".into(),
        inputs: vec![InferInputTensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape: shape.to_vec(),
            ..Default::default()
        }],
        outputs: outputs
            .iter()
            .map(|&name| InferRequestedOutputTensor {
                name: name.into(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: vec![fp32_bytes(values)],
        ..Default::default()
    }
}

fn max_l2_options() -> MockOptions {
    MockOptions {
        computation: Computation::MaxL2,
        input_name: "x".into(),
        model: Some("stats".into()),
        ..MockOptions::default()
    }
}

fn names(response: &ModelInferResponse) -> Vec<&str> {
    response.outputs.iter().map(|o| o.name.as_str()).collect()
}

#[test]
fn max_l2_equals_an_independent_computation() {
    let compute = common::start_mock(MockKind::Compute, max_l2_options());
    let rows: Vec<Vec<f32>> = vec![
        vec![0.5, -3.25, 2.0, 1e-3, 7.0],
        vec![-1.0, -2.0, -0.5, -8.0, -0.25],
        vec![1e3, 2e3, -3e3, 0.0, 1.5],
    ];
    let flat: Vec<f32> = rows.concat();
    let response: ModelInferResponse = call(
        compute.addr,
        methods::MODEL_INFER,
        fp32_request("x", &[3, 5], &flat, &[]),
    )
    .expect("ModelInfer answers");
    compute.stop();
    assert_eq!(names(&response), ["max", "l2"]);
    for output in &response.outputs {
        assert_eq!(
            (output.datatype.as_str(), &output.shape[..]),
            ("FP32", &[3, 1][..])
        );
    }
    let max = fp32_values(&response.raw_output_contents[0]);
    let l2 = fp32_values(&response.raw_output_contents[1]);
    for (r, row) in rows.iter().enumerate() {
        let mut expected_max = row[0];
        for &v in row {
            if v > expected_max {
                expected_max = v;
            }
        }
        assert_eq!(max[r], expected_max, "max of row {r}");
        let expected_l2 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let error = (l2[r] as f64 - expected_l2).abs() / expected_l2;
        assert!(
            error <= f32::EPSILON as f64,
            "l2 of row {r}: {} vs {expected_l2}",
            l2[r]
        );
    }
}

#[test]
fn requested_outputs_are_answered_alone_and_in_their_order() {
    let compute = common::start_mock(MockKind::Compute, max_l2_options());
    let values = [3.0, 4.0, -6.0, 8.0];
    let ask = |outputs: &[&str]| -> Result<ModelInferResponse, ErrorKind> {
        call(
            compute.addr,
            methods::MODEL_INFER,
            fp32_request("x", &[2, 2], &values, outputs),
        )
    };
    let l2_only = ask(&["l2"]).expect("ModelInfer answers");
    let reversed = ask(&["l2", "max"]).expect("ModelInfer answers");
    let unknown = ask(&["max", "mean"]);
    compute.stop();
    assert_eq!(names(&l2_only), ["l2"]);
    assert_eq!(fp32_values(&l2_only.raw_output_contents[0]), [5.0, 10.0]);
    assert_eq!(names(&reversed), ["l2", "max"]);
    assert_eq!(fp32_values(&reversed.raw_output_contents[1]), [4.0, 8.0]);
    match unknown {
        Err(ErrorKind::Status { code, message }) => {
            assert_eq!(code, Code::INVALID_ARGUMENT);
            assert!(message.contains("\"mean\""), "{message}");
        }
        other => panic!("an unknown output was answered: {other:?}"),
    }
}

#[test]
fn max_l2_refuses_another_datatype_rank_or_input_name() {
    let compute = common::start_mock(MockKind::Compute, max_l2_options());
    let infer = |request: ModelInferRequest| -> Result<ModelInferResponse, ErrorKind> {
        call(compute.addr, methods::MODEL_INFER, request)
    };
    let mut int32 = fp32_request("x", &[1, 2], &[1.0, 2.0], &[]);
    int32.inputs[0].datatype = "INT32".into();
    let results = [
        ("datatype", infer(int32), "needs an FP32 input"),
        (
            "rank",
            infer(fp32_request("x", &[2], &[1.0, 2.0], &[])),
            "rank 2",
        ),
        (
            "name",
            infer(fp32_request("y", &[1, 2], &[1.0, 2.0], &[])),
            "reads the input \"x\"",
        ),
    ];
    compute.stop();
    for (what, result, expected) in results {
        match result {
            Err(ErrorKind::Status { code, message }) => {
                assert_eq!(code, Code::INVALID_ARGUMENT, "{what}");
                assert!(message.contains(expected), "{what}: {message}");
            }
            other => panic!("{what}: answered {other:?}"),
        }
    }
}

#[test]
fn outputs_as_contents_carry_the_same_values_typed() {
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            outputs_as_contents: true,
            ..max_l2_options()
        },
    );
    let response: ModelInferResponse = call(
        compute.addr,
        methods::MODEL_INFER,
        fp32_request("x", &[1, 2], &[3.0, -4.0], &[]),
    )
    .expect("ModelInfer answers");
    compute.stop();
    assert!(response.raw_output_contents.is_empty());
    let typed: Vec<Vec<f32>> = response
        .outputs
        .iter()
        .map(|o| o.contents.clone().unwrap_or_default().fp32_contents)
        .collect();
    assert_eq!(typed, vec![vec![3.0], vec![5.0]]);
}

#[test]
fn echo_returns_every_input_under_its_name() {
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            computation: Computation::Echo,
            ..MockOptions::default()
        },
    );
    let mut request = fp32_request("a", &[1, 2], &[1.0, 2.0], &[]);
    request.inputs.push(InferInputTensor {
        name: "b".into(),
        datatype: "UINT8".into(),
        shape: vec![3],
        ..Default::default()
    });
    request
        .raw_input_contents
        .push(Bytes::from_static(&[7, 8, 9]));
    let response: ModelInferResponse =
        call(compute.addr, methods::MODEL_INFER, request.clone()).expect("ModelInfer answers");
    compute.stop();
    let seen: Vec<(&str, &str, &[i64])> = response
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.datatype.as_str(), &o.shape[..]))
        .collect();
    assert_eq!(
        seen,
        vec![("a", "FP32", &[1, 2][..]), ("b", "UINT8", &[3][..])]
    );
    assert_eq!(response.raw_output_contents, request.raw_input_contents);
}

#[test]
fn model_metadata_describes_max_l2_and_skips_faults() {
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            // Every ModelInfer fails; metadata, like the readiness probes, does not.
            error_rate: 1.0,
            ..max_l2_options()
        },
    );
    let ask = |name: &str| -> Result<ModelMetadataResponse, ErrorKind> {
        let request = ModelMetadataRequest {
            name: name.into(),
            version: String::new(),
        };
        call(compute.addr, methods::MODEL_METADATA, request)
    };
    let metadata = ask("stats").expect("ModelMetadata answers");
    let other = ask("resnet");
    let calls = compute.control().calls();
    compute.stop();
    let tensor = |name: &str, shape: &[i64]| TensorMetadata {
        name: name.into(),
        datatype: "FP32".into(),
        shape: shape.to_vec(),
    };
    assert_eq!(metadata.name, "stats");
    assert_eq!(metadata.versions, ["1"]);
    assert_eq!(metadata.inputs, vec![tensor("x", &[-1, -1])]);
    assert_eq!(
        metadata.outputs,
        vec![tensor("max", &[-1, 1]), tensor("l2", &[-1, 1])]
    );
    assert!(
        matches!(other, Err(ErrorKind::Status { code, .. }) if code == Code::NOT_FOUND),
        "{other:?}"
    );
    assert_eq!(calls, 0, "metadata is a probe, not a counted call");
}

#[test]
fn typed_outputs_of_the_default_model_are_stored_like_raw_ones() {
    // End to end: the dispatcher reads the byte-sum model's typed fp32_contents
    // into the same row bytes the raw answer gives.
    let options = MockOptions {
        payload_bytes: 64,
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, options.clone());
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            outputs_as_contents: true,
            ..options
        },
    );
    let spec = common::ClassSpec {
        name: "meter",
        model: "m",
        period_ms: 200,
        deadline_ms: 150,
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let classes = vec![common::class(spec, source.addr, compute.addr)];
    let config = common::config(classes, 20, db.clone(), GrpcConfig::default());
    let summary = common::run(&config, Duration::from_secs(1));
    source.stop();
    compute.stop();
    let rows = common::read_rows(&db);
    // A tick skipped on a busy machine is no concern here; a typed answer the
    // dispatcher could not read would be a failed row.
    assert!(rows.iter().any(|row| row.outcome == "ok"), "{summary:?}");
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    common::assert_ok_rows_are_right(&rows, 64);
}

#[test]
fn the_cli_flags_reach_the_mocks() {
    let source = common::MockProcess::start(&[
        "mock-source",
        "--input",
        "image:fp32:2,2",
        "--input",
        "n:UINT16:3",
    ]);
    let response = fetch(source.addr);
    drop(source);
    let seen: Vec<(&str, &str, &[i64])> = response
        .inputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str(), &t.shape[..]))
        .collect();
    assert_eq!(
        seen,
        vec![("image", "FP32", &[2, 2][..]), ("n", "UINT16", &[3][..])]
    );
    assert_eq!(
        fp32_values(&response.inputs[0].raw),
        expected_fp32("cam-0042@1700000000123/image", 4)
    );

    let single =
        common::MockProcess::start(&["mock-source", "--datatype", "FP32", "--shape", "1,3"]);
    let response = fetch(single.addr);
    drop(single);
    assert_eq!(
        (response.datatype.as_str(), &response.shape[..]),
        ("FP32", &[1, 3][..])
    );
    assert_eq!(
        fp32_values(&response.raw),
        expected_fp32("cam-0042@1700000000123", 3)
    );

    let compute = common::MockProcess::start(&[
        "mock-compute",
        "--compute",
        "max-l2",
        "--input-name",
        "x",
        "--outputs-as-contents",
    ]);
    let response: ModelInferResponse = call(
        compute.addr,
        methods::MODEL_INFER,
        fp32_request("x", &[1, 2], &[6.0, 8.0], &["l2"]),
    )
    .expect("ModelInfer answers");
    drop(compute);
    assert_eq!(names(&response), ["l2"]);
    assert_eq!(
        response.outputs[0]
            .contents
            .clone()
            .unwrap_or_default()
            .fp32_contents,
        [10.0]
    );
}

#[test]
fn bad_tensor_flags_are_refused_with_a_clear_line() {
    let refused = |args: &[&str], expected: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(args)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    refused(
        &["mock-source", "--datatype", "FP8", "--shape", "1"],
        "not a KServe v2 datatype",
    );
    refused(
        &["mock-source", "--datatype", "FP32", "--shape", "1,x"],
        "not a dimension",
    );
    refused(
        &["mock-source", "--datatype", "FP32", "--shape", "-1,2"],
        "not a dimension",
    );
    refused(&["mock-source", "--datatype", "FP32"], "--shape");
    refused(
        &[
            "mock-source",
            "--datatype",
            "FP32",
            "--shape",
            "100000,100000",
        ],
        "larger than",
    );
    refused(
        &["mock-source", "--input", "image:FP32"],
        "name:DATATYPE:shape",
    );
    refused(
        &["mock-source", "--input", "a:INT4:1"],
        "not a KServe v2 datatype",
    );
    refused(
        &["mock-compute", "--compute", "softmax"],
        "not a computation",
    );
    refused(&["mock-source", "--compute", "max-l2"], "--compute");
}
