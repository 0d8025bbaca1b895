//! What the mock compute node computes, and how it answers: the default
//! byte-sum model, `max-l2` (a real computation on an FP32 matrix), `echo`
//! (every input back), requested outputs picked by name, typed `contents`
//! instead of raw bytes, and the `ModelMetadata` that describes it all.
//!
//! - **default**: one FP32 output `OUTPUT0` = [sum of the first input's
//!   bytes, their count] ([`super::mock_model_output`]), whatever the input's
//!   datatype, per row of an input of rank 2 or more (`[rows, …]` gives
//!   `[rows, 2]`, so a batch of devices gets each one's answer alone), else
//!   over the whole input (`[1, 2]`); requested outputs are not looked at.
//! - **max-l2**: the input named `input_name` must be FP32 of rank 2,
//!   `[rows, cols]` with `cols >= 1`; outputs `max` (FP32 [rows, 1], each
//!   row's maximum, NaNs ignored unless the row is all NaN) and `l2` (FP32
//!   [rows, 1], each row's `sqrt(sum x²)`, summed in f64 and rounded once to
//!   f32), in that order.
//! - **echo**: every input back as an output of the same name, datatype,
//!   shape and bytes, in the request's order.
//!
//! With `max-l2` and `echo`, a request naming `outputs` gets only those, in
//! the order asked; an unknown name is INVALID_ARGUMENT naming it, as Triton
//! answers.

use bytes::{Buf, Bytes};

use crate::grpc::status::Code;
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::model_metadata_response::TensorMetadata;
use crate::proto::inference::{InferTensorContents, ModelInferRequest};
use crate::tensor;

/// What the compute mock computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Computation {
    /// FP32 [rows, 2] `OUTPUT0` = [byte sum, byte count] of each row of the
    /// first input.
    #[default]
    ByteSum,
    /// Per-row maximum and L2 norm of an FP32 [rows, cols] input.
    MaxL2,
    /// Every input back, named as it came.
    Echo,
}

impl Computation {
    /// Reads `--compute`'s value: `max-l2`, `echo` or `byte-sum` (the default).
    pub fn parse(text: &str) -> Result<Computation, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "byte-sum" | "default" => Ok(Computation::ByteSum),
            "max-l2" => Ok(Computation::MaxL2),
            "echo" => Ok(Computation::Echo),
            _ => Err(format!(
                "{text:?} is not a computation: use max-l2, echo or byte-sum"
            )),
        }
    }
}

/// One output tensor computed, before it is laid out as raw or typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// The output's name, which requested outputs are matched against.
    pub name: String,
    /// KServe v2 datatype.
    pub datatype: String,
    /// Shape; `raw` fills it exactly.
    pub shape: Vec<i64>,
    /// Little-endian, row-major bytes.
    pub raw: Bytes,
}

/// Per-row maximum and L2 norm of an FP32 `[rows, cols]` matrix, as the
/// [module](self) doc defines them; errors say what is wrong with the shape.
pub fn max_l2(shape: &[i64], raw: &[u8]) -> Result<(Vec<f32>, Vec<f32>), String> {
    let &[rows, cols] = shape else {
        return Err(format!(
            "max-l2 needs an FP32 input of rank 2 [rows, cols], got shape {shape:?}"
        ));
    };
    tensor::check_raw("FP32", shape, raw)?;
    if cols < 1 {
        return Err(format!(
            "max-l2 needs at least one column, got shape [{rows}, {cols}]"
        ));
    }
    let values: Vec<f32> = raw
        .chunks_exact(4)
        .map(|mut chunk| chunk.get_f32_le())
        .collect();
    Ok(values
        .chunks_exact(cols as usize)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NAN, f32::max);
            let squares: f64 = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            (max, squares.sqrt() as f32)
        })
        .unzip())
}

/// A column of f32 as an FP32 [rows, 1] output.
fn column(name: &str, values: &[f32]) -> Computed {
    Computed {
        name: name.to_string(),
        datatype: "FP32".into(),
        shape: vec![values.len() as i64, 1],
        raw: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The request's inputs paired with their raw bytes; an input without raw
/// bytes is refused (the mocks read raw inputs only, as percore sends them).
fn raw_inputs(request: &ModelInferRequest) -> Result<Vec<(&InferInputTensor, &Bytes)>, String> {
    if request.raw_input_contents.len() != request.inputs.len() {
        return Err(format!(
            "{} inputs but {} raw_input_contents: the mock reads raw inputs only",
            request.inputs.len(),
            request.raw_input_contents.len()
        ));
    }
    let pairs: Vec<_> = request
        .inputs
        .iter()
        .zip(&request.raw_input_contents)
        .collect();
    for (input, raw) in &pairs {
        tensor::check_raw(&input.datatype, &input.shape, raw)
            .map_err(|error| format!("input {:?}: {error}", input.name))?;
    }
    Ok(pairs)
}

/// The byte-sum model's one output, refused as it always was: INTERNAL for a
/// request without a raw first input or whose bytes do not fill its shape.
fn byte_sum(request: &ModelInferRequest) -> Result<Vec<Computed>, (Code, String)> {
    let (Some(input), Some(raw)) = (request.inputs.first(), request.raw_input_contents.first())
    else {
        return Err((Code::INTERNAL, "request has no raw input tensor".into()));
    };
    tensor::check_raw(&input.datatype, &input.shape, raw).map_err(|e| (Code::INTERNAL, e))?;
    // Row by row along the first dimension of a [rows, …] input, so a
    // batch of devices gets each device's answer to it alone; anything
    // else, as one row.
    let offsets = match input.shape.as_slice() {
        [rows, _, ..] if *rows >= 1 => tensor::row_offsets(&input.datatype, &input.shape, raw)
            .map_err(|e| (Code::INTERNAL, e))?,
        _ => vec![0, raw.len()],
    };
    let rows = offsets.len() - 1;
    let mut values = Vec::with_capacity(rows * 8);
    for row in offsets.windows(2) {
        let [sum, len] = super::mock_model_output(&raw[row[0]..row[1]]);
        values.extend_from_slice(&sum.to_le_bytes());
        values.extend_from_slice(&len.to_le_bytes());
    }
    Ok(vec![Computed {
        name: "OUTPUT0".into(),
        datatype: "FP32".into(),
        shape: vec![rows as i64, 2],
        raw: values.into(),
    }])
}

/// Runs the computation on a request: its outputs, or the status to answer
/// (INVALID_ARGUMENT for what `max-l2` and `echo` refuse). `input_name` is the
/// input `max-l2` reads.
pub fn compute(
    computation: Computation,
    input_name: &str,
    request: &ModelInferRequest,
) -> Result<Vec<Computed>, (Code, String)> {
    if computation == Computation::ByteSum {
        return byte_sum(request);
    }
    max_l2_or_echo(computation, input_name, request).map_err(|e| (Code::INVALID_ARGUMENT, e))
}

/// `max-l2` or `echo`, and the requested outputs picked; errors are messages.
fn max_l2_or_echo(
    computation: Computation,
    input_name: &str,
    request: &ModelInferRequest,
) -> Result<Vec<Computed>, String> {
    let inputs = raw_inputs(request)?;
    let outputs = match computation {
        Computation::MaxL2 => {
            let Some((input, raw)) = inputs.iter().find(|(input, _)| input.name == input_name)
            else {
                let names: Vec<&str> = inputs.iter().map(|(i, _)| i.name.as_str()).collect();
                return Err(format!(
                    "max-l2 reads the input {input_name:?}, the request has {names:?}"
                ));
            };
            if input.datatype != "FP32" {
                return Err(format!(
                    "max-l2 needs an FP32 input, {input_name:?} is {}",
                    input.datatype
                ));
            }
            let (max, l2) = max_l2(&input.shape, raw)?;
            vec![column("max", &max), column("l2", &l2)]
        }
        Computation::Echo => inputs
            .iter()
            .map(|(input, raw)| Computed {
                name: input.name.clone(),
                datatype: input.datatype.clone(),
                shape: input.shape.clone(),
                raw: (*raw).clone(),
            })
            .collect(),
        Computation::ByteSum => byte_sum(request).map_err(|(_, message)| message)?,
    };
    select_outputs(outputs, request)
}

/// The outputs the request asked for, in its order (all, when it names none);
/// an unknown name is an error naming it and the outputs there are.
fn select_outputs(
    computed: Vec<Computed>,
    request: &ModelInferRequest,
) -> Result<Vec<Computed>, String> {
    if request.outputs.is_empty() {
        return Ok(computed);
    }
    request
        .outputs
        .iter()
        .map(|wanted| {
            computed
                .iter()
                .find(|output| output.name == wanted.name)
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> = computed.iter().map(|o| o.name.as_str()).collect();
                    format!(
                        "unknown output {:?} requested: the model has {names:?}",
                        wanted.name
                    )
                })
        })
        .collect()
}

/// The output tensor's label, without contents.
pub fn label(output: &Computed) -> InferOutputTensor {
    InferOutputTensor {
        name: output.name.clone(),
        datatype: output.datatype.clone(),
        shape: output.shape.clone(),
        ..Default::default()
    }
}

/// Raw little-endian bytes of `datatype` as KServe v2 typed contents (the
/// inverse of the dispatcher's reading of them): INT8/16/32 in
/// `int_contents`, UINT8/16/32 in `uint_contents`, BOOL, INT64, UINT64, FP32,
/// FP64 and BYTES in their own lists. FP16 and BF16 have no typed form.
pub fn typed_contents(datatype: &str, raw: &[u8]) -> Result<InferTensorContents, String> {
    let mut contents = InferTensorContents::default();
    let mut raw = raw;
    let size = tensor::element_size(datatype).unwrap_or(1);
    let count = raw.len() / size;
    match datatype {
        "BOOL" => contents.bool_contents = raw.iter().map(|&b| b != 0).collect(),
        "INT8" => contents.int_contents = raw.iter().map(|&b| i32::from(b as i8)).collect(),
        "INT16" => {
            contents.int_contents = (0..count).map(|_| i32::from(raw.get_i16_le())).collect()
        }
        "INT32" => contents.int_contents = (0..count).map(|_| raw.get_i32_le()).collect(),
        "INT64" => contents.int64_contents = (0..count).map(|_| raw.get_i64_le()).collect(),
        "UINT8" => contents.uint_contents = raw.iter().map(|&b| u32::from(b)).collect(),
        "UINT16" => {
            contents.uint_contents = (0..count).map(|_| u32::from(raw.get_u16_le())).collect()
        }
        "UINT32" => contents.uint_contents = (0..count).map(|_| raw.get_u32_le()).collect(),
        "UINT64" => contents.uint64_contents = (0..count).map(|_| raw.get_u64_le()).collect(),
        "FP32" => contents.fp32_contents = (0..count).map(|_| raw.get_f32_le()).collect(),
        "FP64" => contents.fp64_contents = (0..count).map(|_| raw.get_f64_le()).collect(),
        "BYTES" => {
            while raw.len() >= 4 {
                let len = (raw.get_u32_le() as usize).min(raw.len());
                contents.bytes_contents.push(raw.copy_to_bytes(len));
            }
        }
        other => {
            return Err(format!(
                "{other} has no typed contents in KServe v2: answer it raw"
            ))
        }
    }
    Ok(contents)
}

/// What `ModelMetadata` says the computation takes and gives: (inputs,
/// outputs), -1 for a dimension of any size. Echo gives back whatever it is
/// sent, which metadata cannot describe: it lists none.
pub fn metadata(
    computation: Computation,
    input_name: &str,
) -> (Vec<TensorMetadata>, Vec<TensorMetadata>) {
    let tensor = |name: &str, datatype: &str, shape: &[i64]| TensorMetadata {
        name: name.to_string(),
        datatype: datatype.to_string(),
        shape: shape.to_vec(),
    };
    match computation {
        Computation::ByteSum => (
            vec![tensor(input_name, "UINT8", &[-1, -1])],
            vec![tensor("OUTPUT0", "FP32", &[-1, 2])],
        ),
        Computation::MaxL2 => (
            vec![tensor(input_name, "FP32", &[-1, -1])],
            vec![
                tensor("max", "FP32", &[-1, 1]),
                tensor("l2", "FP32", &[-1, 1]),
            ],
        ),
        Computation::Echo => (Vec::new(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::model_infer_request::InferRequestedOutputTensor;

    fn fp32(values: &[f32]) -> Bytes {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn max_l2_is_per_row_and_refuses_other_shapes() {
        let (max, l2) = max_l2(&[2, 2], &fp32(&[3.0, -4.0, -1.0, -2.0])).unwrap();
        assert_eq!(max, vec![3.0, -1.0]);
        assert_eq!(l2, vec![5.0, 5f32.sqrt()]);
        assert!(max_l2(&[4], &fp32(&[1.0; 4]))
            .unwrap_err()
            .contains("rank 2"));
        assert!(max_l2(&[2, 0], &[]).unwrap_err().contains("one column"));
        assert!(max_l2(&[1, 3], &fp32(&[1.0])).is_err());
        assert_eq!(max_l2(&[0, 3], &[]).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn a_batch_gets_from_each_computation_what_each_row_gets_alone() {
        let request = |shape: Vec<i64>, datatype: &str, raw: Bytes| ModelInferRequest {
            inputs: vec![InferInputTensor {
                name: "INPUT0".into(),
                datatype: datatype.into(),
                shape,
                ..Default::default()
            }],
            raw_input_contents: vec![raw],
            ..Default::default()
        };
        let rows: Vec<Bytes> = (0..3u8)
            .map(|row| fp32(&[f32::from(row), -2.5, f32::from(row) * 7.0]))
            .collect();
        let stacked: Bytes = rows.concat().into();
        for computation in [Computation::ByteSum, Computation::MaxL2, Computation::Echo] {
            let batched = compute(
                computation,
                "INPUT0",
                &request(vec![3, 3], "FP32", stacked.clone()),
            )
            .unwrap();
            for (index, row) in rows.iter().enumerate() {
                let alone = compute(
                    computation,
                    "INPUT0",
                    &request(vec![1, 3], "FP32", row.clone()),
                )
                .unwrap();
                for (batch_output, alone_output) in batched.iter().zip(&alone) {
                    assert_eq!(batch_output.shape[0], 3, "{computation:?}");
                    let size = batch_output.raw.len() / 3;
                    assert_eq!(
                        &batch_output.raw[index * size..(index + 1) * size],
                        &alone_output.raw[..],
                        "{computation:?} row {index}"
                    );
                }
            }
        }
        // Rank 1 stays one row, as before.
        let whole = compute(
            Computation::ByteSum,
            "INPUT0",
            &request(vec![3], "UINT8", Bytes::from_static(&[1, 2, 3])),
        )
        .unwrap();
        assert_eq!(whole[0].shape, vec![1, 2]);
        assert_eq!(&whole[0].raw[..], &fp32(&[6.0, 3.0])[..]);
    }

    #[test]
    fn requested_outputs_are_picked_in_order_and_unknown_ones_named() {
        let mut request = ModelInferRequest {
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                ..Default::default()
            }],
            raw_input_contents: vec![fp32(&[1.0, 2.0])],
            ..Default::default()
        };
        let names = |outputs: Vec<Computed>| -> Vec<String> {
            outputs.into_iter().map(|o| o.name).collect()
        };
        let all = max_l2_or_echo(Computation::MaxL2, "x", &request).unwrap();
        assert_eq!(names(all), ["max", "l2"]);
        request.outputs = ["l2", "max"]
            .map(|name| InferRequestedOutputTensor {
                name: name.into(),
                ..Default::default()
            })
            .to_vec();
        assert_eq!(
            names(max_l2_or_echo(Computation::MaxL2, "x", &request).unwrap()),
            ["l2", "max"]
        );
        request.outputs[1].name = "mean".into();
        let error = max_l2_or_echo(Computation::MaxL2, "x", &request).unwrap_err();
        assert!(error.contains("\"mean\""), "{error}");
        assert!(max_l2_or_echo(Computation::MaxL2, "y", &request)
            .unwrap_err()
            .contains("reads the input \"y\""));
        request.inputs[0].datatype = "INT32".into();
        request.outputs.clear();
        assert!(max_l2_or_echo(Computation::MaxL2, "x", &request)
            .unwrap_err()
            .contains("needs an FP32 input"));
    }

    #[test]
    fn typed_contents_read_back_as_the_same_raw_bytes() {
        use crate::proto::inference::ModelInferResponse;
        for datatype in super::super::content::DATATYPES {
            let raw = super::super::tensor_content(datatype, &[1, 5], "d", 1, "").unwrap();
            let Ok(contents) = typed_contents(datatype, &raw) else {
                assert!(matches!(datatype, "FP16" | "BF16"), "{datatype}");
                continue;
            };
            let response = ModelInferResponse {
                outputs: vec![InferOutputTensor {
                    name: "o".into(),
                    datatype: datatype.into(),
                    shape: vec![1, 5],
                    contents: Some(contents),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let read = tensor::first_output(response).unwrap();
            assert_eq!(read.bytes, raw, "{datatype}");
        }
    }
}
