//! Properties of the response decoding path, from HTTP/2 DATA chunks to the bytes
//! a job stores: gRPC message framing ([`percore::grpc::frame`]), the
//! `grpc-status` / `grpc-message` trailers ([`percore::grpc::status`]), prost
//! decoding of the two responses percore reads (`FetchResponse`,
//! `ModelInferResponse`), the tensor checks ([`percore::tensor`]) and a class's
//! expected output ([`percore::config::OutputSpec`]).
//!
//! The resilience issue asked for a fuzz target; `cargo fuzz` needs a nightly
//! compiler, so these are proptest properties instead. Each one compares the code
//! with an oracle written here from the protocol, not from the code: the framing
//! outcome from the whole byte string and where it was cut, tensor sizes in
//! saturating `i128` arithmetic, BYTES elements by walking their length prefixes.
//! Inputs lean towards the hostile: lengths at and past the limit, dimensions of
//! `i64::MAX` and below zero, unknown datatypes, typed values out of range.
//!
//! **Time bound.** 130 000 cases in all (each property's count is in its
//! `check` call), every input a few hundred bytes at most: the whole file runs
//! in 1.3-2.6 s in release on a 2-core machine (nextest, 2 threads; the slower
//! figure with other builds running), and must stay well under 20 s. The
//! slowest property, `hostile_responses_…`, takes about 1.7 s of that. A failing
//! property also stops shrinking after `MAX_SHRINK_MS`. `PROPTEST_CASES=N`
//! runs N cases per property instead, for a longer search outside CI.
//!
//! **Reproducing a failure.** Every property runs from one seed, printed when it
//! starts and again, with the shrunk input and the command that replays it, when
//! it fails (nextest shows both):
//! `PROPTEST_RNG_SEED=<seed> cargo test --release --test decode_props -- --exact <test>`.
//! Failure persistence is off, so CI writes nothing into the tree; a case worth
//! keeping becomes a unit test beside the code it pins, as the bugs these
//! properties found did (see `src/tensor.rs` and `src/grpc/status.rs`).

use std::fmt::Debug;
use std::hash::{BuildHasher, Hasher};

use bytes::{BufMut, Bytes};
use http::{HeaderMap, HeaderValue};
use percore::config::OutputSpec;
use percore::grpc::frame::{self, FrameError, MessageDecoder, HEADER_LEN};
use percore::grpc::status::{self, Code, StatusError};
use percore::proto::inference::infer_parameter::ParameterChoice;
use percore::proto::inference::model_infer_response::InferOutputTensor;
use percore::proto::inference::{InferParameter, InferTensorContents, ModelInferResponse};
use percore::proto::source::FetchResponse;
use percore::tensor::{self, Output};
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{RngSeed, TestCaseResult, TestRunner};
use prost::Message;

// ---------------------------------------------------------------------------------
// Running a property.
// ---------------------------------------------------------------------------------

/// Longest a failing property may spend shrinking its input, so that even a
/// failing CI run stays bounded.
const MAX_SHRINK_MS: u32 = 10_000;

/// Runs `property` on `cases` inputs drawn from `strategy`, from a seed printed
/// up front; panics with the shrunk input and the replay command if it fails.
/// `name` is the test function's, so the command replays just that test.
fn check<S>(name: &str, cases: u32, strategy: S, property: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    // The default reads PROPTEST_CASES, PROPTEST_RNG_SEED and the other knobs.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config.failure_persistence = None;
    config.max_shrink_time = MAX_SHRINK_MS;
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => fresh_seed(),
    };
    config.rng_seed = RngSeed::Fixed(seed);
    eprintln!("{name}: {} cases from seed {seed}", config.cases);
    let mut runner = TestRunner::new(config);
    if let Err(failure) = runner.run(&strategy, property) {
        panic!(
            "{name}: {failure}\nreplay: PROPTEST_RNG_SEED={seed} \
             cargo test --release --test decode_props -- --exact {name}"
        );
    }
}

/// A seed that differs from run to run, so CI keeps searching new inputs.
fn fresh_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

// ---------------------------------------------------------------------------------
// Framing: what MessageDecoder makes of a stream of chunks.
// ---------------------------------------------------------------------------------

/// What one stream decoded to: the message, or the first error and the step
/// that gave it (`Some(i)` for the i-th push, `None` for `finish`).
#[derive(Debug, PartialEq)]
struct Decoded {
    /// The message without its prefix, or the error.
    result: Result<Vec<u8>, FrameError>,
    /// Which step failed; `None` when `finish` decided (either way).
    failed_push: Option<usize>,
}

/// Feeds `chunks` to a decoder as a client does: stop at the first failing push,
/// otherwise finish.
fn decode_chunks(max: usize, chunks: &[Bytes]) -> Decoded {
    let mut decoder = MessageDecoder::new(max);
    for (i, chunk) in chunks.iter().enumerate() {
        if let Err(error) = decoder.push(chunk.clone()) {
            return Decoded {
                result: Err(error),
                failed_push: Some(i),
            };
        }
    }
    Decoded {
        result: decoder.finish().map(|message| message.to_vec()),
        failed_push: None,
    }
}

/// The oracle: what a stream of `bytes`, cut after each offset in `ends` (the
/// chunks' cumulative ends, the last being `bytes.len()`), must decode to. The
/// prefix is judged by the push that completes it, data past the message by the
/// first push that reaches past it (reporting the bytes seen so far), the rest
/// once the stream has ended.
fn expected_decode(bytes: &[u8], max: usize, ends: &[usize]) -> Decoded {
    let first_reaching = |offset: usize| ends.iter().position(|&end| end >= offset);
    let at_finish = |result| Decoded {
        result,
        failed_push: None,
    };
    if bytes.is_empty() {
        return at_finish(Err(FrameError::Empty));
    }
    if bytes.len() < HEADER_LEN {
        return at_finish(Err(FrameError::Truncated {
            expected: HEADER_LEN,
            received: bytes.len(),
        }));
    }
    let prefix_push = first_reaching(HEADER_LEN);
    if bytes[0] != 0 {
        return Decoded {
            result: Err(FrameError::Compressed),
            failed_push: prefix_push,
        };
    }
    let announced = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if announced > max {
        return Decoded {
            result: Err(FrameError::TooLarge {
                len: announced,
                max,
            }),
            failed_push: prefix_push,
        };
    }
    let total = HEADER_LEN + announced;
    if bytes.len() > total {
        let push = first_reaching(total + 1);
        let seen = push.map_or(bytes.len(), |i| ends[i]);
        return Decoded {
            result: Err(FrameError::TrailingData {
                extra: seen - total,
            }),
            failed_push: push,
        };
    }
    if bytes.len() < total {
        return at_finish(Err(FrameError::Truncated {
            expected: total,
            received: bytes.len(),
        }));
    }
    at_finish(Ok(bytes[HEADER_LEN..].to_vec()))
}

/// The error with what depends on chunking (how much trailing data was seen
/// when it was noticed) left out.
fn chunking_free(result: &Result<Vec<u8>, FrameError>) -> Result<Vec<u8>, FrameError> {
    match result {
        Err(FrameError::TrailingData { .. }) => Err(FrameError::TrailingData { extra: 0 }),
        other => other.clone(),
    }
}

/// Cuts `whole` at the given points (empty chunks included, as a peer may send
/// them); returns the chunks, slices of one buffer like h2's, and their ends.
fn cut(whole: &Bytes, points: &[Index]) -> (Vec<Bytes>, Vec<usize>) {
    let mut ends: Vec<usize> = points
        .iter()
        .map(|point| point.index(whole.len() + 1))
        .collect();
    ends.sort_unstable();
    ends.push(whole.len());
    let mut start = 0;
    let chunks = ends
        .iter()
        .map(|&end| {
            let chunk = whole.slice(start..end);
            start = end;
            chunk
        })
        .collect();
    (chunks, ends)
}

/// Where to cut a stream: up to 6 points, so up to 7 chunks.
fn cut_points() -> impl Strategy<Value = Vec<Index>> {
    vec(any::<Index>(), 0..7)
}

/// A byte stream a peer might send: noise, or a prefix (usually uncompressed)
/// announcing the body's own length, one a few bytes off, or any other, then a
/// body.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let flag = prop_oneof![9 => Just(0u8), 1 => any::<u8>()];
    // How far the announced length is from the body's: 0 is a valid frame.
    let offset = prop_oneof![
        3 => Just(Some(0i64)),
        3 => (-4i64..=4).prop_map(Some),
        2 => Just(None),
    ];
    let other = prop_oneof![3 => 0u32..64, 1 => any::<u32>(), 1 => Just(u32::MAX)];
    let framed =
        (flag, offset, other, vec(any::<u8>(), 0..64)).prop_map(|(flag, offset, other, body)| {
            let len = match offset {
                Some(offset) => u32::try_from(body.len() as i64 + offset).unwrap_or(0),
                None => other,
            };
            let mut bytes = vec![flag];
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&body);
            bytes
        });
    prop_oneof![1 => vec(any::<u8>(), 0..16), 1 => vec(any::<u8>(), 0..96), 8 => framed]
}

/// A message limit: small ones the streams reach, and the extremes.
fn max_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0usize..80,
        3 => 64usize..256,
        1 => any::<u32>().prop_map(|max| max as usize),
        1 => Just(u32::MAX as usize),
        1 => Just(usize::MAX),
    ]
}

#[test]
fn any_stream_any_chunking_decodes_as_the_oracle_says() {
    let input = (stream(), max_len(), cut_points(), cut_points());
    check(
        "any_stream_any_chunking_decodes_as_the_oracle_says",
        20000,
        input,
        |(bytes, max, cuts_a, cuts_b)| {
            let whole = Bytes::from(bytes.clone());
            let (chunks_a, ends_a) = cut(&whole, &cuts_a);
            let (chunks_b, ends_b) = cut(&whole, &cuts_b);
            let a = decode_chunks(max, &chunks_a);
            let b = decode_chunks(max, &chunks_b);
            let one = decode_chunks(max, std::slice::from_ref(&whole));
            prop_assert_eq!(&a, &expected_decode(&bytes, max, &ends_a));
            prop_assert_eq!(&b, &expected_decode(&bytes, max, &ends_b));
            prop_assert_eq!(&one, &expected_decode(&bytes, max, &[bytes.len()]));
            // How the bytes were cut changes when an error shows, never which one.
            prop_assert_eq!(chunking_free(&a.result), chunking_free(&b.result));
            prop_assert_eq!(chunking_free(&a.result), chunking_free(&one.result));
            if let Err(error) = &a.result {
                prop_assert!(!error.to_string().is_empty());
            }
            Ok(())
        },
    );
}

#[test]
fn a_valid_frame_however_cut_decodes_to_exactly_its_message() {
    let input = (response(), 0usize..16, cut_points());
    check(
        "a_valid_frame_however_cut_decodes_to_exactly_its_message",
        5000,
        input,
        |(response, slack, cuts)| {
            let frame = frame::encode(&response);
            let body = response.encode_to_vec();
            prop_assert_eq!(
                &frame[..HEADER_LEN],
                &[&[0][..], &(body.len() as u32).to_be_bytes()].concat()[..]
            );
            let (chunks, _) = cut(&frame, &cuts);
            let decoded = decode_chunks(body.len() + slack, &chunks);
            prop_assert_eq!(decoded.result.as_deref(), Ok(&body[..]));
            let message = ModelInferResponse::decode(&body[..]);
            prop_assert_eq!(message.as_ref(), Ok(&response));

            // All of it in one chunk: the message is that chunk, not a copy.
            let mut decoder = MessageDecoder::new(body.len());
            prop_assert_eq!(decoder.push(frame.clone()), Ok(()));
            let message = decoder.finish();
            prop_assert_eq!(
                message.as_ref().map(|m| m.as_ptr()),
                Ok(frame[HEADER_LEN..].as_ptr())
            );

            // One byte over the limit is refused.
            if !body.is_empty() {
                let decoded = decode_chunks(body.len() - 1, &chunks);
                let too_large = FrameError::TooLarge {
                    len: body.len(),
                    max: body.len() - 1,
                };
                prop_assert_eq!(decoded.result, Err(too_large));
            }
            Ok(())
        },
    );
}

#[test]
fn an_oversized_or_compressed_prefix_is_refused_before_any_body() {
    let announced_over = (0usize..1 << 20, any::<u32>()).prop_filter_map(
        "the announced length must exceed the limit",
        |(max, announced)| (announced as usize > max).then_some((0u8, max, announced)),
    );
    let compressed = (1u8..=255, max_len(), any::<u32>());
    let input = (prop_oneof![announced_over, compressed], cut_points());
    check(
        "an_oversized_or_compressed_prefix_is_refused_before_any_body",
        5000,
        input,
        |((flag, max, announced), cuts)| {
            let mut prefix = vec![flag];
            prefix.extend_from_slice(&announced.to_be_bytes());
            let prefix = Bytes::from(prefix);
            let (chunks, _) = cut(&prefix, &cuts);
            let decoded = decode_chunks(max, &chunks);
            let expected = if flag != 0 {
                FrameError::Compressed
            } else {
                FrameError::TooLarge {
                    len: announced as usize,
                    max,
                }
            };
            // Refused by the push that completed the prefix: no body was waited for.
            let last_nonempty = chunks.iter().rposition(|chunk| !chunk.is_empty());
            prop_assert_eq!(decoded.result, Err(expected));
            prop_assert_eq!(decoded.failed_push, last_nonempty);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------
// Status trailers.
// ---------------------------------------------------------------------------------

/// Bytes a header value may hold (visible ASCII, space, tab, obs-text), weighted
/// towards what status parsing and percent decoding look at.
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => select(b"0123456789".to_vec()),
        2 => select(b"%+- \taAfFgG".to_vec()),
        2 => 0x20u8..=0x7e,
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ]
}

/// A header value: a few bytes, or a long run of digits.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(header_byte(), 0..12),
        1 => vec(select(b"0123456789".to_vec()), 9..24),
        1 => vec(header_byte(), 0..64),
    ]
}

/// The oracle for `grpc-status`: a decimal number within u32, surrounding
/// whitespace and a leading `+` allowed (as grpc-go's ParseInt allows).
fn expected_code(raw: &[u8]) -> Result<Code, StatusError> {
    let text = std::str::from_utf8(raw).map_err(|_| StatusError::Malformed)?;
    let text = text.trim_matches(char::is_whitespace);
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StatusError::Malformed);
    }
    let mut value: u64 = 0;
    for digit in digits.bytes() {
        value = value * 10 + u64::from(digit - b'0');
        if value > u64::from(u32::MAX) {
            return Err(StatusError::Malformed);
        }
    }
    Ok(Code(value as u32))
}

/// The oracle for `grpc-message`: `%` and two hex digits is that byte, anything
/// else is itself, and the result is read as UTF-8 with invalid bytes replaced.
fn expected_message(raw: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut bytes = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(high), Some(low)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                bytes.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        bytes.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn any_status_trailers_read_as_the_oracle_says() {
    let input = (
        proptest::option::of(header_value()),
        proptest::option::of(header_value()),
        proptest::option::of(header_value()),
    );
    check(
        "any_status_trailers_read_as_the_oracle_says",
        10000,
        input,
        |(code, message, second_code)| {
            let mut headers = HeaderMap::new();
            let value = |raw: &[u8]| {
                HeaderValue::from_bytes(raw)
                    .map_err(|_| TestCaseError::fail(format!("{raw:?} is not a header value")))
            };
            if let Some(raw) = &code {
                headers.append("grpc-status", value(raw)?);
            }
            if let Some(raw) = &second_code {
                headers.append("grpc-status", value(raw)?);
            }
            if let Some(raw) = &message {
                headers.insert("grpc-message", value(raw)?);
            }
            let read = status::read_status(&headers);
            // Of two grpc-status values the first counts.
            let expected = match code.as_ref().or(second_code.as_ref()) {
                None => Err(StatusError::Missing),
                Some(raw) => expected_code(raw).map(|code| status::Status {
                    code,
                    message: message.as_deref().map(expected_message).unwrap_or_default(),
                }),
            };
            prop_assert_eq!(&read, &expected);
            if let Ok(status) = read {
                prop_assert!(!status.code.to_string().is_empty());
            }
            Ok(())
        },
    );
}

#[test]
fn percent_decoding_any_bytes_follows_the_oracle() {
    let raw = prop_oneof![
        3 => vec(header_byte(), 0..32),
        1 => vec(any::<u8>(), 0..64),
    ];
    check(
        "percent_decoding_any_bytes_follows_the_oracle",
        10000,
        raw,
        |raw| {
            prop_assert_eq!(status::percent_decode(&raw), expected_message(&raw));
            Ok(())
        },
    );
}

#[test]
fn any_message_survives_percent_encoding_into_a_trailer_and_back() {
    let message = prop_oneof![any::<String>(), "[ -~]{0,24}", "[%a-fA-F0-9 ]{0,12}"];
    check(
        "any_message_survives_percent_encoding_into_a_trailer_and_back",
        5000,
        message,
        |message| {
            let encoded = status::percent_encode(&message);
            prop_assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            if message
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b'%')
            {
                prop_assert_eq!(&encoded, &message);
            }
            prop_assert_eq!(&status::percent_decode(encoded.as_bytes()), &message);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("14"));
            let value =
                HeaderValue::from_str(&encoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
            trailers.insert("grpc-message", value);
            let status = status::read_status(&trailers);
            prop_assert_eq!(
                status.map(|s| (s.code, s.message)),
                Ok((Code::UNAVAILABLE, message))
            );
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------
// Messages and tensors.
// ---------------------------------------------------------------------------------

/// Every KServe v2 datatype name.
const DATATYPES: [&str; 14] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "BF16", "FP32", "FP64", "BYTES",
];

/// A datatype label: a real one mostly, sometimes a name the protocol lacks.
fn datatype() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(&DATATYPES[..]).prop_map(String::from),
        1 => select(&["", "fp32", "FP8", "STRING", "UINT128", "BYTES "][..]).prop_map(String::from),
        1 => "[A-Z0-9]{0,6}",
    ]
}

/// A dimension: small mostly, sometimes zero, negative or enormous.
fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        12 => 0i64..5,
        1 => Just(i64::MAX),
        1 => Just(1 << 62),
        1 => Just(1 << 32),
        1 => Just(u32::MAX as i64 + 1),
        1 => Just(-1),
        1 => Just(i64::MIN),
        1 => any::<i64>(),
    ]
}

/// A shape of up to 5 dimensions (the empty shape is a scalar).
fn shape() -> impl Strategy<Value = Vec<i64>> {
    vec(dim(), 0..6)
}

/// Floats without NaN, so that decoded messages compare equal to the original.
fn non_nan_f32() -> impl Strategy<Value = f32> {
    use proptest::num::f32::*;
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO | INFINITE
}

/// The f64 counterpart of [`non_nan_f32`].
fn non_nan_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::*;
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO | INFINITE
}

/// Typed tensor contents: short lists, values at and past the narrow types' ranges.
fn contents() -> impl Strategy<Value = InferTensorContents> {
    let int = prop_oneof![4 => -128i32..256, 1 => any::<i32>(), 1 => Just(i32::MIN)];
    let uint = prop_oneof![4 => 0u32..300, 1 => 65_530u32..65_540, 1 => any::<u32>()];
    let bytes = vec(vec(any::<u8>(), 0..6).prop_map(Bytes::from), 0..5);
    (
        vec(any::<bool>(), 0..5),
        vec(int, 0..5),
        vec(any::<i64>(), 0..5),
        vec(uint, 0..5),
        vec(any::<u64>(), 0..5),
        vec(non_nan_f32(), 0..5),
        vec(non_nan_f64(), 0..5),
        bytes,
    )
        .prop_map(
            |(b, i, i64s, u, u64s, f32s, f64s, bytes)| InferTensorContents {
                bool_contents: b,
                int_contents: i,
                int64_contents: i64s,
                uint_contents: u,
                uint64_contents: u64s,
                fp32_contents: f32s,
                fp64_contents: f64s,
                bytes_contents: bytes,
            },
        )
}

/// Parameters, which outputs ignores but prost must get through.
fn parameters() -> impl Strategy<Value = std::collections::HashMap<String, InferParameter>> {
    let choice = prop_oneof![
        any::<bool>().prop_map(ParameterChoice::BoolParam),
        any::<i64>().prop_map(ParameterChoice::Int64Param),
        "[a-z]{0,4}".prop_map(ParameterChoice::StringParam),
    ];
    let parameter = proptest::option::of(choice)
        .prop_map(|parameter_choice| InferParameter { parameter_choice });
    hash_map("[a-z]{0,4}", parameter, 0..3)
}

/// One output tensor as a server might label it.
fn output_tensor() -> impl Strategy<Value = InferOutputTensor> {
    let name = prop_oneof![Just(String::from("OUTPUT0")), ".{0,6}"];
    (
        name,
        datatype(),
        shape(),
        parameters(),
        proptest::option::of(contents()),
    )
        .prop_map(
            |(name, datatype, shape, parameters, contents)| InferOutputTensor {
                name,
                datatype,
                shape,
                parameters,
                contents,
            },
        )
}

/// A ModelInfer response, possibly hostile: no outputs or several, raw bytes or
/// typed contents or both, lengths unrelated to the shapes.
fn response() -> impl Strategy<Value = ModelInferResponse> {
    let raw = vec(vec(any::<u8>(), 0..40).prop_map(Bytes::from), 0..3);
    (
        ".{0,8}",
        "[0-9]{0,2}",
        ".{0,8}",
        parameters(),
        vec(output_tensor(), 0..3),
        raw,
    )
        .prop_map(
            |(model_name, model_version, id, parameters, outputs, raw_output_contents)| {
                ModelInferResponse {
                    model_name,
                    model_version,
                    id,
                    parameters,
                    outputs,
                    raw_output_contents,
                }
            },
        )
}

/// A response that is more often right than chance would make it: when `fix` is
/// set, the first output's bytes (raw or typed) are resized to fill its shape.
fn response_often_consistent() -> impl Strategy<Value = ModelInferResponse> {
    (response(), any::<bool>(), vec(0u8..4, 1..6)).prop_map(|(mut response, fix, filler)| {
        if fix {
            fill_outputs(&mut response, &filler);
        }
        response
    })
}

/// Resizes every output's bytes to what its datatype and shape call for, when
/// that is at most 64 elements; `filler` gives BYTES elements' lengths.
fn fill_outputs(response: &mut ModelInferResponse, filler: &[u8]) {
    for (index, output) in response.outputs.iter_mut().enumerate() {
        let Some(count) = element_count(&output.shape).filter(|&n| n <= 64) else {
            continue;
        };
        let count = count as usize;
        if let Some(raw) = response.raw_output_contents.get_mut(index) {
            let mut bytes = raw.to_vec();
            fill(&mut bytes, &output.datatype, &output.shape, filler);
            *raw = Bytes::from(bytes);
            continue;
        }
        let contents = output.contents.get_or_insert_with(Default::default);
        match output.datatype.as_str() {
            "BOOL" => contents.bool_contents.resize(count, true),
            "INT8" | "INT16" | "INT32" => contents.int_contents.resize(count, -3),
            "INT64" => contents.int64_contents.resize(count, i64::MIN),
            "UINT8" | "UINT16" | "UINT32" => contents.uint_contents.resize(count, 200),
            "UINT64" => contents.uint64_contents.resize(count, u64::MAX),
            "FP32" => contents.fp32_contents.resize(count, -0.5),
            "FP64" => contents.fp64_contents.resize(count, 1e300),
            "BYTES" => contents
                .bytes_contents
                .resize(count, Bytes::from_static(b"ok")),
            _ => {}
        }
    }
}

/// The KServe v2 element sizes, written out again from the protocol's table.
fn element_size(datatype: &str) -> Option<u128> {
    match datatype {
        "BOOL" | "UINT8" | "INT8" => Some(1),
        "UINT16" | "INT16" | "FP16" | "BF16" => Some(2),
        "UINT32" | "INT32" | "FP32" => Some(4),
        "UINT64" | "INT64" | "FP64" => Some(8),
        _ => None,
    }
}

/// Elements in a shape, saturating at `i128::MAX`; `None` for a negative
/// dimension. A zero dimension makes the tensor empty however large the rest.
fn element_count(shape: &[i64]) -> Option<i128> {
    if shape.iter().any(|&dim| dim < 0) {
        return None;
    }
    if shape.contains(&0) {
        return Some(0);
    }
    Some(
        shape
            .iter()
            .fold(1i128, |count, &dim| count.saturating_mul(i128::from(dim))),
    )
}

/// How many length-prefixed BYTES elements `raw` holds; `None` unless they fill
/// it exactly.
fn bytes_elements(raw: &[u8]) -> Option<i128> {
    let mut rest = raw;
    let mut count = 0;
    while !rest.is_empty() {
        let prefix: [u8; 4] = rest.get(..4)?.try_into().ok()?;
        let len = u32::from_le_bytes(prefix) as usize;
        rest = rest.get(4..)?.get(len..)?;
        count += 1;
    }
    Some(count)
}

/// The oracle for `check_raw`: is `raw` exactly a `datatype` tensor of `shape`?
fn is_consistent(datatype: &str, shape: &[i64], raw: &[u8]) -> bool {
    let Some(count) = element_count(shape) else {
        return false;
    };
    match element_size(datatype) {
        Some(size) => count.saturating_mul(size as i128) == raw.len() as i128,
        None if datatype == "BYTES" => bytes_elements(raw) == Some(count),
        None => false,
    }
}

/// The oracle for typed contents: the raw bytes they stand for, `None` when the
/// datatype has no typed form or a value does not fit it.
fn typed_bytes(datatype: &str, contents: &InferTensorContents) -> Option<Vec<u8>> {
    fn each<T: Copy, const N: usize>(
        values: &[T],
        to_le: impl Fn(T) -> Option<[u8; N]>,
    ) -> Option<Vec<u8>> {
        values.iter().try_fold(Vec::new(), |mut out, &value| {
            out.extend_from_slice(&to_le(value)?);
            Some(out)
        })
    }
    match datatype {
        "BOOL" => each(&contents.bool_contents, |v| Some([u8::from(v)])),
        "INT8" => each(&contents.int_contents, |v| {
            i8::try_from(v).ok().map(i8::to_le_bytes)
        }),
        "INT16" => each(&contents.int_contents, |v| {
            i16::try_from(v).ok().map(i16::to_le_bytes)
        }),
        "INT32" => each(&contents.int_contents, |v| Some(v.to_le_bytes())),
        "INT64" => each(&contents.int64_contents, |v| Some(v.to_le_bytes())),
        "UINT8" => each(&contents.uint_contents, |v| {
            u8::try_from(v).ok().map(u8::to_le_bytes)
        }),
        "UINT16" => each(&contents.uint_contents, |v| {
            u16::try_from(v).ok().map(u16::to_le_bytes)
        }),
        "UINT32" => each(&contents.uint_contents, |v| Some(v.to_le_bytes())),
        "UINT64" => each(&contents.uint64_contents, |v| Some(v.to_le_bytes())),
        "FP32" => each(&contents.fp32_contents, |v| Some(v.to_le_bytes())),
        "FP64" => each(&contents.fp64_contents, |v| Some(v.to_le_bytes())),
        "BYTES" => Some(
            contents
                .bytes_contents
                .iter()
                .fold(Vec::new(), |mut out, value| {
                    out.put_u32_le(value.len() as u32);
                    out.extend_from_slice(value);
                    out
                }),
        ),
        _ => None,
    }
}

/// The oracle for `outputs`: every output, each with its raw buffer when the
/// response gives one per output, else with its typed contents; the whole
/// answer refused when any output is not self-consistent, when raw buffers are
/// given for some outputs only, or when there is no output.
fn expected_outputs(response: &ModelInferResponse) -> Option<Vec<Output>> {
    if response.outputs.is_empty() {
        return None;
    }
    let raw = &response.raw_output_contents;
    if !raw.is_empty() && raw.len() != response.outputs.len() {
        return None;
    }
    let mut expected = Vec::new();
    for (index, tensor) in response.outputs.iter().enumerate() {
        let bytes = match raw.get(index) {
            Some(raw) => raw.to_vec(),
            None => typed_bytes(
                &tensor.datatype,
                &tensor.contents.clone().unwrap_or_default(),
            )?,
        };
        if !is_consistent(&tensor.datatype, &tensor.shape, &bytes) {
            return None;
        }
        expected.push(Output {
            name: tensor.name.clone(),
            datatype: tensor.datatype.clone(),
            shape: tensor.shape.clone(),
            bytes: Bytes::from(bytes),
        });
    }
    Some(expected)
}

/// Compares `outputs` with the oracle; an error must say something.
fn outputs_agree(response: ModelInferResponse) -> TestCaseResult {
    let expected = expected_outputs(&response);
    let got = tensor::outputs(response);
    match (got, expected) {
        (Ok(got), Some(expected)) => prop_assert_eq!(got, expected),
        (Err(reason), None) => prop_assert!(!reason.is_empty()),
        (got, expected) => {
            prop_assert!(false, "outputs gave {got:?}, the oracle {expected:?}")
        }
    }
    Ok(())
}

#[test]
fn hostile_responses_give_exactly_the_self_consistent_outputs() {
    check(
        "hostile_responses_give_exactly_the_self_consistent_outputs",
        20000,
        response_often_consistent(),
        outputs_agree,
    );
}

/// How to size the bytes of a tensor under test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fit {
    /// As generated: almost never the right length.
    Leave,
    /// Exactly what datatype and shape call for.
    Exact,
    /// One byte short of that.
    OneShort,
    /// One byte past it.
    OneOver,
}

/// Rewrites `raw` to hold exactly a `datatype` tensor of `shape`, when that is
/// small; BYTES elements take their lengths from `lengths`, cycled.
fn fill(raw: &mut Vec<u8>, datatype: &str, shape: &[i64], lengths: &[u8]) {
    match (element_count(shape), element_size(datatype)) {
        (Some(count), Some(size)) if count.saturating_mul(size as i128) <= 256 => {
            raw.resize(count as usize * size as usize, 0xA5);
        }
        (Some(count), None) if datatype == "BYTES" && count <= 64 => {
            raw.clear();
            for i in 0..count as usize {
                let len = lengths.get(i % lengths.len().max(1)).copied().unwrap_or(1);
                raw.put_u32_le(u32::from(len));
                raw.extend(std::iter::repeat_n(b'x', usize::from(len)));
            }
        }
        _ => {}
    }
}

#[test]
fn check_raw_accepts_exactly_the_bytes_that_fill_the_shape() {
    let raw = prop_oneof![vec(any::<u8>(), 0..64), vec(0u8..3, 0..64)];
    let fit = prop_oneof![
        Just(Fit::Leave),
        Just(Fit::Exact),
        Just(Fit::OneShort),
        Just(Fit::OneOver)
    ];
    let input = (datatype(), shape(), raw, fit, vec(0u8..4, 1..6));
    check(
        "check_raw_accepts_exactly_the_bytes_that_fill_the_shape",
        20000,
        input,
        |(datatype, shape, mut raw, fit, lengths)| {
            if fit != Fit::Leave {
                fill(&mut raw, &datatype, &shape, &lengths);
                match fit {
                    Fit::OneShort => {
                        raw.pop();
                    }
                    Fit::OneOver => raw.push(0),
                    _ => {}
                }
            }
            let result = tensor::check_raw(&datatype, &shape, &raw);
            prop_assert_eq!(
                result.is_ok(),
                is_consistent(&datatype, &shape, &raw),
                "{:?}",
                result
            );
            Ok(())
        },
    );
}

#[test]
fn any_bytes_decode_as_messages_without_panicking() {
    let raw = prop_oneof![vec(any::<u8>(), 0..64), vec(any::<u8>(), 0..256)];
    check(
        "any_bytes_decode_as_messages_without_panicking",
        10000,
        raw,
        |raw| {
            if let Ok(response) = ModelInferResponse::decode(&raw[..]) {
                outputs_agree(response)?;
            }
            if let Ok(fetched) = FetchResponse::decode(&raw[..]) {
                let result = tensor::check_raw(&fetched.datatype, &fetched.shape, &fetched.raw);
                prop_assert_eq!(
                    result.is_ok(),
                    is_consistent(&fetched.datatype, &fetched.shape, &fetched.raw)
                );
            }
            Ok(())
        },
    );
}

/// One way to damage an encoded message.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Cut the message short.
    Truncate(Index),
    /// Insert a byte.
    Insert(Index, u8),
    /// Copy a slice of the message onto its end (repeated fields, duplicates).
    Repeat(Index, Index),
}

/// Up to four damages.
fn damages() -> impl Strategy<Value = Vec<Damage>> {
    let damage = prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip(at, mask)),
        1 => any::<Index>().prop_map(Damage::Truncate),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Damage::Insert(at, byte)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Damage::Repeat(a, b)),
    ];
    vec(damage, 1..5)
}

/// Applies `damages` to `bytes` in order.
fn damage(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for damage in damages {
        match damage {
            Damage::Flip(at, mask) if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
            Damage::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            Damage::Insert(at, byte) => bytes.insert(at.index(bytes.len() + 1), *byte),
            Damage::Repeat(a, b) => {
                let (a, b) = (a.index(bytes.len() + 1), b.index(bytes.len() + 1));
                let copy = bytes[a.min(b)..a.max(b)].to_vec();
                bytes.extend_from_slice(&copy);
            }
            Damage::Flip(..) => {}
        }
    }
    bytes
}

#[test]
fn damaged_responses_decode_or_fail_without_panicking() {
    let input = (response_often_consistent(), damages());
    check(
        "damaged_responses_decode_or_fail_without_panicking",
        10000,
        input,
        |(response, damages)| {
            let damaged = damage(response.encode_to_vec(), &damages);
            if let Ok(response) = ModelInferResponse::decode(&damaged[..]) {
                outputs_agree(response)?;
            }
            let fetched = FetchResponse {
                datatype: response
                    .outputs
                    .first()
                    .map(|o| o.datatype.clone())
                    .unwrap_or_default(),
                shape: response
                    .outputs
                    .first()
                    .map(|o| o.shape.clone())
                    .unwrap_or_default(),
                raw: response
                    .raw_output_contents
                    .first()
                    .cloned()
                    .unwrap_or_default(),
                captured_unix_ms: 1_700_000_000_000,
                inputs: Vec::new(),
            };
            let damaged = damage(fetched.encode_to_vec(), &damages);
            if let Ok(fetched) = FetchResponse::decode(&damaged[..]) {
                let result = tensor::check_raw(&fetched.datatype, &fetched.shape, &fetched.raw);
                prop_assert_eq!(
                    result.is_ok(),
                    is_consistent(&fetched.datatype, &fetched.shape, &fetched.raw)
                );
            }
            Ok(())
        },
    );
}

#[test]
fn the_whole_path_from_chunks_to_output_matches_the_oracle() {
    let input = (response_often_consistent(), cut_points(), max_len());
    check(
        "the_whole_path_from_chunks_to_output_matches_the_oracle",
        5000,
        input,
        |(response, cuts, max)| {
            let frame = frame::encode(&response);
            let (chunks, ends) = cut(&frame, &cuts);
            let decoded = decode_chunks(max, &chunks);
            prop_assert_eq!(&decoded, &expected_decode(&frame, max, &ends));
            if let Ok(message) = decoded.result {
                let decoded = ModelInferResponse::decode(&message[..]);
                prop_assert_eq!(decoded.as_ref(), Ok(&response));
                outputs_agree(response)?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------
// The configured output check.
// ---------------------------------------------------------------------------------

/// A dimension of an expected shape: `-1` (any) often.
fn spec_dim() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(-1i64), 3 => 0i64..4, 1 => dim()]
}

/// One change to a shape the output check should notice (or not, for `-1`).
#[derive(Debug, Clone)]
enum Reshape {
    /// Keep the shape.
    Same,
    /// Set one dimension.
    Set(Index, i64),
    /// Add a dimension at the end.
    Push(i64),
    /// Drop the last dimension.
    Pop,
}

#[test]
fn the_output_check_follows_the_spec() {
    let name = proptest::option::of(select(&["OUTPUT0", "logits", ""][..]).prop_map(String::from));
    let spec =
        (name, datatype(), vec(spec_dim(), 0..5)).prop_map(|(name, datatype, shape)| OutputSpec {
            name,
            datatype,
            shape,
        });
    let reshape = prop_oneof![
        2 => Just(Reshape::Same),
        2 => (any::<Index>(), dim()).prop_map(|(at, dim)| Reshape::Set(at, dim)),
        1 => dim().prop_map(Reshape::Push),
        1 => Just(Reshape::Pop),
    ];
    let got_name = select(&["OUTPUT0", "logits", "", "output0"][..]);
    let input = (
        spec,
        got_name,
        prop_oneof![3 => Just(None), 1 => datatype().prop_map(Some)],
        vec(reshape, 0..3),
    );
    check(
        "the_output_check_follows_the_spec",
        10000,
        input,
        |(spec, name, datatype, reshapes)| {
            let datatype = datatype.unwrap_or_else(|| spec.datatype.clone());
            // The shape the output came with: the spec's, -1s filled in, then changed.
            let mut shape: Vec<i64> = spec
                .shape
                .iter()
                .map(|&d| if d == -1 { 7 } else { d })
                .collect();
            for reshape in &reshapes {
                match reshape {
                    Reshape::Same => {}
                    Reshape::Set(at, dim) if !shape.is_empty() => {
                        let i = at.index(shape.len());
                        shape[i] = *dim;
                    }
                    Reshape::Set(..) => {}
                    Reshape::Push(dim) => shape.push(*dim),
                    Reshape::Pop => {
                        shape.pop();
                    }
                }
            }
            let matches = spec.name.as_deref().is_none_or(|expected| expected == name)
                && datatype == spec.datatype
                && shape.len() == spec.shape.len()
                && shape
                    .iter()
                    .zip(&spec.shape)
                    .all(|(&got, &want)| want == -1 || got == want);
            let result = spec.check(name, &datatype, &shape);
            prop_assert_eq!(result.is_ok(), matches, "{:?}", result);
            if let Err(reason) = result {
                prop_assert!(!reason.is_empty());
            }
            Ok(())
        },
    );
}
