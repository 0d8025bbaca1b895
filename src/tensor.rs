//! KServe v2 tensors as percore sees them: a datatype name, a shape and
//! little-endian row-major bytes.
//!
//! The job checks a fetched tensor before forwarding it (its bytes must fill its
//! shape) and turns a ModelInfer response into the output bytes it stores, whether
//! the server answered with `raw_output_contents` or with typed `contents`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::proto::inference::{InferTensorContents, ModelInferResponse};

/// Size in bytes of one element of a datatype; `None` for BYTES (variable-size) and
/// for names the protocol does not define.
pub fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" | "FP16" | "BF16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None,
    })
}

/// Checks that `raw` holds exactly the bytes `datatype` x `shape` calls for; for
/// BYTES, exactly as many length-prefixed elements as the shape has.
pub fn check_raw(datatype: &str, shape: &[i64], raw: &[u8]) -> Result<(), String> {
    if shape.iter().any(|&dim| dim < 0) {
        return Err(format!("tensor shape {shape:?} has a negative dimension"));
    }
    // A hostile shape must not wrap around to the length it was sent with.
    let too_large = || format!("tensor of {datatype} {shape:?} is larger than any message can be");
    match element_size(datatype) {
        Some(size) => {
            let expected = element_count(shape)
                .and_then(|count| count.checked_mul(size))
                .ok_or_else(too_large)?;
            if raw.len() != expected {
                return Err(format!(
                    "tensor of {datatype} {shape:?} needs {expected} bytes, got {}",
                    raw.len()
                ));
            }
            Ok(())
        }
        None if datatype == "BYTES" => {
            let expected = element_count(shape).ok_or_else(too_large)?;
            let Some(elements) = bytes_elements(raw) else {
                return Err(format!(
                    "tensor of BYTES {shape:?}: {} bytes are not whole length-prefixed elements",
                    raw.len()
                ));
            };
            if elements != expected {
                return Err(format!(
                    "tensor of BYTES {shape:?} needs {expected} elements, got {elements}"
                ));
            }
            Ok(())
        }
        None => Err(format!("unknown tensor datatype {datatype:?}")),
    }
}

/// Number of elements in a shape of non-negative dimensions; `None` when it does
/// not fit in `usize`. A zero dimension empties the tensor whatever the others
/// are, so it is looked for first: `[2^62, 4, 0]` is as empty as `[0, 2^62, 4]`.
fn element_count(shape: &[i64]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |count, &dim| {
        count.checked_mul(usize::try_from(dim).ok()?)
    })
}

/// How many BYTES elements `raw` holds, each a 4-byte little-endian length and
/// that many bytes; `None` unless they fill `raw` exactly.
fn bytes_elements(mut raw: &[u8]) -> Option<usize> {
    let mut count = 0;
    while let Some((prefix, rest)) = raw.split_first_chunk::<4>() {
        let len = usize::try_from(u32::from_le_bytes(*prefix)).ok()?;
        raw = rest.get(len..)?;
        count += 1;
    }
    raw.is_empty().then_some(count)
}

/// Most rows [`row_offsets`] splits a tensor whose rows hold no bytes (a zero
/// dimension after the first) into: a hostile shape such as `[2^40, 0]` must
/// not make it allocate an offset per row.
const MAX_EMPTY_ROWS: usize = 4096;

/// Where each row of a tensor starts along its first dimension, in bytes:
/// `rows + 1` offsets from 0 to `raw.len()`, row `i` being
/// `raw[offsets[i]..offsets[i + 1]]` (for BYTES, whole length-prefixed
/// elements). `raw` must fill `datatype` × `shape` ([`check_raw`]); a tensor
/// of rank 0 has no rows to split.
pub fn row_offsets(datatype: &str, shape: &[i64], raw: &[u8]) -> Result<Vec<usize>, String> {
    check_raw(datatype, shape, raw)?;
    let Some((&rows, inner)) = shape.split_first() else {
        return Err(format!(
            "tensor of {datatype} {shape:?} has no first dimension to split"
        ));
    };
    let rows = usize::try_from(rows).map_err(|_| format!("tensor shape {shape:?}"))?;
    if rows > raw.len() && rows > MAX_EMPTY_ROWS {
        return Err(format!(
            "tensor of {datatype} {shape:?}: {rows} rows of no bytes are not split"
        ));
    }
    let mut offsets = Vec::with_capacity(rows + 1);
    match element_size(datatype) {
        Some(_) => {
            let row_bytes = raw.len().checked_div(rows).unwrap_or(0);
            offsets.extend((0..=rows).map(|row| row * row_bytes));
        }
        None => {
            // BYTES: walk the length prefixes, `per_row` elements a row.
            let per_row = element_count(inner).unwrap_or(0);
            let mut at = 0;
            offsets.push(0);
            for _ in 0..rows {
                for _ in 0..per_row {
                    let prefix = raw
                        .get(at..at + 4)
                        .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                        .ok_or_else(|| format!("tensor of BYTES {shape:?} ends inside a row"))?;
                    at += 4 + u32::from_le_bytes(prefix) as usize;
                }
                offsets.push(at);
            }
        }
    }
    Ok(offsets)
}

/// One output tensor of a ModelInfer response, as stored (a `job_outputs` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Name, as the server labelled it; checked against the class's output spec.
    pub name: String,
    /// KServe v2 datatype, as the server labelled it.
    pub datatype: String,
    /// Shape, as the server labelled it; `bytes` fills it exactly.
    pub shape: Vec<i64>,
    /// Little-endian, row-major bytes.
    pub bytes: Bytes,
}

impl Output {
    /// A UINT8 vector output of `bytes` named `name`: what a test or a
    /// synthetic row stores when the tensor's layout does not matter.
    pub fn uint8(name: &str, bytes: Bytes) -> Output {
        Output {
            name: name.to_string(),
            datatype: "UINT8".to_string(),
            shape: vec![bytes.len() as i64],
            bytes,
        }
    }

    /// The shape as the `job_outputs.shape` column writes it: `1,256`.
    pub fn shape_text(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(self.shape.len() * 4);
        for (index, dim) in self.shape.iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            let _ = write!(text, "{dim}");
        }
        text
    }
}

/// Every output tensor of a response, in the order the server answered, each
/// turned into raw little-endian bytes (from `raw_output_contents`, or from typed
/// `contents`) and checked against its datatype and shape. A response must give
/// raw contents for all its outputs or for none (KServe v2); one without any
/// output is refused.
pub fn outputs(response: ModelInferResponse) -> Result<Vec<Output>, String> {
    if response.outputs.is_empty() {
        return Err("response has no output tensor".into());
    }
    let raw_count = response.raw_output_contents.len();
    if raw_count != 0 && raw_count != response.outputs.len() {
        return Err(format!(
            "response has {} outputs but {raw_count} raw_output_contents (all or none)",
            response.outputs.len()
        ));
    }
    let mut raw = response.raw_output_contents.into_iter();
    response
        .outputs
        .into_iter()
        .map(|tensor| {
            let bytes = match raw.next() {
                Some(bytes) => bytes,
                None => typed_to_raw(&tensor.datatype, &tensor.contents.unwrap_or_default())?,
            };
            check_raw(&tensor.datatype, &tensor.shape, &bytes)
                .map_err(|detail| format!("output {:?}: {detail}", tensor.name))?;
            Ok(Output {
                name: tensor.name,
                datatype: tensor.datatype,
                shape: tensor.shape,
                bytes,
            })
        })
        .collect()
}

/// The first output tensor of a response, raw or typed (see [`outputs`]).
pub fn first_output(response: ModelInferResponse) -> Result<Output, String> {
    outputs(response)?
        .into_iter()
        .next()
        .ok_or_else(|| "response has no output tensor".into())
}

/// Serialises typed `contents` to the raw little-endian layout.
fn typed_to_raw(datatype: &str, contents: &InferTensorContents) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    match datatype {
        "BOOL" => contents
            .bool_contents
            .iter()
            .for_each(|&v| out.put_u8(v as u8)),
        "INT8" => narrowed(&contents.int_contents, datatype, |v| out.put_i8(v))?,
        "INT16" => narrowed(&contents.int_contents, datatype, |v| out.put_i16_le(v))?,
        "INT32" => contents
            .int_contents
            .iter()
            .for_each(|&v| out.put_i32_le(v)),
        "INT64" => contents
            .int64_contents
            .iter()
            .for_each(|&v| out.put_i64_le(v)),
        "UINT8" => narrowed(&contents.uint_contents, datatype, |v| out.put_u8(v))?,
        "UINT16" => narrowed(&contents.uint_contents, datatype, |v| out.put_u16_le(v))?,
        "UINT32" => contents
            .uint_contents
            .iter()
            .for_each(|&v| out.put_u32_le(v)),
        "UINT64" => contents
            .uint64_contents
            .iter()
            .for_each(|&v| out.put_u64_le(v)),
        "FP32" => contents
            .fp32_contents
            .iter()
            .for_each(|&v| out.put_f32_le(v)),
        "FP64" => contents
            .fp64_contents
            .iter()
            .for_each(|&v| out.put_f64_le(v)),
        "BYTES" => contents.bytes_contents.iter().for_each(|v| {
            out.put_u32_le(v.len() as u32);
            out.put_slice(v);
        }),
        other => return Err(format!("cannot read typed contents of datatype {other:?}")),
    }
    Ok(out.freeze())
}

/// Hands `put` each value of a 32-bit contents list narrowed to a smaller type
/// (KServe v2 carries INT8/INT16 in `int_contents`, UINT8/UINT16 in
/// `uint_contents`). A value that does not fit is refused, not wrapped: 300 must
/// not be stored as the INT8 44.
fn narrowed<T, N>(values: &[T], datatype: &str, mut put: impl FnMut(N)) -> Result<(), String>
where
    T: Copy + std::fmt::Display,
    N: TryFrom<T>,
{
    for &value in values {
        let narrow = N::try_from(value)
            .map_err(|_| format!("typed {datatype} output holds {value}, outside its range"))?;
        put(narrow);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::model_infer_response::InferOutputTensor;

    fn output(
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> InferOutputTensor {
        InferOutputTensor {
            name: "OUTPUT0".into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn raw_output_is_taken_as_is() {
        let response = ModelInferResponse {
            outputs: vec![output("FP32", vec![1, 2], None)],
            raw_output_contents: vec![Bytes::from_static(&[0, 0, 128, 63, 0, 0, 0, 64])],
            ..Default::default()
        };
        let output = first_output(response).unwrap();
        assert_eq!(output.shape, vec![1, 2]);
        assert_eq!(&output.bytes[..], &[0, 0, 128, 63, 0, 0, 0, 64]);
    }

    #[test]
    fn typed_output_becomes_the_same_raw_bytes() {
        let contents = InferTensorContents {
            fp32_contents: vec![1.0, 2.0],
            ..Default::default()
        };
        let response = ModelInferResponse {
            outputs: vec![output("FP32", vec![1, 2], Some(contents))],
            ..Default::default()
        };
        assert_eq!(
            &first_output(response).unwrap().bytes[..],
            &[0, 0, 128, 63, 0, 0, 0, 64]
        );
    }

    #[test]
    fn a_shape_whose_size_overflows_is_refused_not_wrapped() {
        // 2^62 × 4 × 4 bytes wraps to 0 in 64 bits: an empty tensor would pass.
        let error = check_raw("FP32", &[1 << 62, 4], &[]).unwrap_err();
        assert_eq!(
            error,
            "tensor of FP32 [4611686018427387904, 4] is larger than any message can be"
        );
        assert!(check_raw("UINT8", &[i64::MAX, i64::MAX], &[]).is_err());
    }

    #[test]
    fn typed_values_outside_a_narrow_datatype_are_refused_not_wrapped() {
        // Found by tests/decode_props.rs: INT8 [128] was stored as the byte 0x80
        // (-128), UINT8 [256] as 0.
        let typed = |datatype: &str, contents: InferTensorContents| ModelInferResponse {
            outputs: vec![output(datatype, vec![], Some(contents))],
            ..Default::default()
        };
        let ints = |values: Vec<i32>| InferTensorContents {
            int_contents: values,
            ..Default::default()
        };
        let uints = |values: Vec<u32>| InferTensorContents {
            uint_contents: values,
            ..Default::default()
        };
        assert_eq!(
            first_output(typed("INT8", ints(vec![128]))).unwrap_err(),
            "typed INT8 output holds 128, outside its range"
        );
        assert!(first_output(typed("INT16", ints(vec![-32_769]))).is_err());
        assert_eq!(
            first_output(typed("UINT8", uints(vec![256]))).unwrap_err(),
            "typed UINT8 output holds 256, outside its range"
        );
        assert!(first_output(typed("UINT16", uints(vec![65_536]))).is_err());
        // The ends of the ranges still fit.
        let fits = first_output(typed("INT8", ints(vec![-128]))).unwrap();
        assert_eq!(&fits.bytes[..], &[0x80]);
        let fits = first_output(typed("UINT16", uints(vec![65_535]))).unwrap();
        assert_eq!(&fits.bytes[..], &[0xff, 0xff]);
    }

    #[test]
    fn bytes_tensors_must_hold_one_element_per_shape_entry() {
        // Found by tests/decode_props.rs: a BYTES output of shape [i64::MAX] with
        // no elements passed, as did any bytes at all under a BYTES label.
        let element = |text: &[u8]| [&(text.len() as u32).to_le_bytes()[..], text].concat();
        let two = [element(b"ab"), element(b"")].concat();
        assert_eq!(check_raw("BYTES", &[2], &two), Ok(()));
        assert_eq!(check_raw("BYTES", &[1, 2], &two), Ok(()));
        assert_eq!(check_raw("BYTES", &[0], &[]), Ok(()));
        assert_eq!(check_raw("BYTES", &[], &element(b"scalar")), Ok(()));
        assert_eq!(
            check_raw("BYTES", &[i64::MAX], &[]).unwrap_err(),
            "tensor of BYTES [9223372036854775807] needs 9223372036854775807 elements, got 0"
        );
        assert_eq!(
            check_raw("BYTES", &[3], &two).unwrap_err(),
            "tensor of BYTES [3] needs 3 elements, got 2"
        );
        assert_eq!(
            check_raw("BYTES", &[2], &two[..two.len() - 1]).unwrap_err(),
            "tensor of BYTES [2]: 9 bytes are not whole length-prefixed elements"
        );
        assert!(check_raw("BYTES", &[1], &[7, 0, 0]).is_err());
        assert!(check_raw("BYTES", &[i64::MAX, 4], &[]).is_err());
        // Typed BYTES contents are counted the same way.
        let typed = |shape: Vec<i64>| ModelInferResponse {
            outputs: vec![output(
                "BYTES",
                shape,
                Some(InferTensorContents {
                    bytes_contents: vec![Bytes::from_static(b"x")],
                    ..Default::default()
                }),
            )],
            ..Default::default()
        };
        assert_eq!(
            &first_output(typed(vec![1])).unwrap().bytes[..],
            &element(b"x")[..]
        );
        assert!(first_output(typed(vec![2])).is_err());
    }

    #[test]
    fn rows_are_split_along_the_first_dimension_whatever_the_datatype() {
        let fp32: Vec<u8> = (0..24).collect();
        assert_eq!(row_offsets("FP32", &[3, 2], &fp32), Ok(vec![0, 8, 16, 24]));
        assert_eq!(row_offsets("UINT8", &[1, 24], &fp32), Ok(vec![0, 24]));
        assert_eq!(row_offsets("FP32", &[0, 2], &[]), Ok(vec![0]));
        assert_eq!(row_offsets("FP32", &[2, 0], &[]), Ok(vec![0, 0, 0]));
        let element = |text: &[u8]| [&(text.len() as u32).to_le_bytes()[..], text].concat();
        // BYTES [2, 2]: rows of unequal byte lengths.
        let raw = [element(b"a"), element(b"bcd"), element(b""), element(b"ef")].concat();
        assert_eq!(row_offsets("BYTES", &[2, 2], &raw), Ok(vec![0, 12, 22]));
        assert!(row_offsets("FP32", &[], &fp32[..4])
            .unwrap_err()
            .contains("no first dimension"));
        assert!(row_offsets("FP32", &[3, 2], &fp32[..20]).is_err());
        assert!(row_offsets("FP32", &[1 << 40, 0], &[])
            .unwrap_err()
            .contains("rows of no bytes"));
    }

    #[test]
    fn a_zero_dimension_empties_the_tensor_wherever_it_is() {
        // Found by tests/decode_props.rs: UINT32 [i64::MAX, 0] with no bytes was
        // refused as too large, while [0, i64::MAX] passed.
        assert_eq!(check_raw("UINT32", &[i64::MAX, 0], &[]), Ok(()));
        assert_eq!(check_raw("UINT32", &[0, i64::MAX], &[]), Ok(()));
        assert_eq!(check_raw("BOOL", &[3, i64::MAX, 0], &[]), Ok(()));
        assert_eq!(
            check_raw("FP32", &[i64::MAX, 0], &[0; 4]).unwrap_err(),
            "tensor of FP32 [9223372036854775807, 0] needs 0 bytes, got 4"
        );
    }

    #[test]
    fn bytes_that_do_not_fill_the_shape_are_refused() {
        let response = ModelInferResponse {
            outputs: vec![output("FP32", vec![1, 3], None)],
            raw_output_contents: vec![Bytes::from_static(&[0; 8])],
            ..Default::default()
        };
        assert_eq!(
            first_output(response).unwrap_err(),
            "output \"OUTPUT0\": tensor of FP32 [1, 3] needs 12 bytes, got 8"
        );
        assert_eq!(
            first_output(ModelInferResponse::default()).unwrap_err(),
            "response has no output tensor"
        );
        assert_eq!(
            check_raw("FP8", &[1], &[0]).unwrap_err(),
            "unknown tensor datatype \"FP8\""
        );
    }
}
