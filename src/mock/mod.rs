//! Built-in mock nodes: a data source and a KServe v2 compute node.
//!
//! They let the whole system run on one machine with nothing installed, and let
//! tests inject the failures real nodes produce. Each mock serves from its own
//! executors, away from the dispatcher's shards. What a mock can be made to do:
//!
//! - **Timing**: a service time (fixed or exponential) per call, plus an added
//!   latency that can be changed while it runs ([`MockControl::set_added_latency`]).
//! - **Failures at a rate**, drawn per call: a gRPC status of any code
//!   (`error_rate`, `error_code`), a hang (`hang_rate`, `hang_for`), a stream
//!   reset with RST_STREAM(INTERNAL_ERROR) (`reset_rate`). The three rates are
//!   slices of one draw, so their sum is the fraction of calls that fail.
//! - **Hostile replies** on every call ([`Fault`]): a cut-off frame, a wrong
//!   output datatype or shape (huge dimensions included), and, on their own,
//!   answers padded past the client's message limit (`oversized_reply_bytes`).
//! - **Connection faults** (served by [`crate::grpc::server`]): drop the socket,
//!   GOAWAY, or bytes that are not HTTP/2 after some calls, or an HTTP/1.1
//!   answer to the preface.
//! - **Health and readiness**: the compute mock answers KServe v2 `ServerLive`,
//!   `ServerReady`, `ModelReady` and `ModelMetadata`, both mocks answer
//!   `grpc.health.v1.Health/Check`. Readiness follows [`MockControl::set_ready`]
//!   and `set_model_ready`, and is off while `not_ready_file` exists. Probes are
//!   answered at once, without faults, and are not counted in [`MockControl::calls`].
//! - **Real tensors** ([`content`], [`compute`]): the source answers any
//!   datatype and shape, or several named inputs, whose content is a documented
//!   function of device, tick and element index ([`tensor_content`]); the
//!   compute node computes `max-l2` or `echo`, answers only the outputs a
//!   request names, typed `contents` on demand, and `ModelMetadata`.
//!
//! [`MockNode::control`] changes rates, latency and readiness of a running node,
//! and counts the calls each replica took, so tests can check balancing and
//! ejection from outside. It is one `Arc` shared by the node's executors: mock
//! nodes are not the dispatcher's hot path.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

pub mod compute;
pub mod content;

pub use compute::{max_l2, Computation};
pub use content::{
    parse_datatype, parse_input, parse_shape, tensor_content, SourceTensors, TensorSpec,
};

use crate::devices::stable_hash;
use crate::grpc::methods;
use crate::grpc::server::{self, Reply, ServerSettings, Service};
use crate::grpc::status::Code;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ServerLiveResponse, ServerReadyResponse,
};
use crate::proto::source::{FetchRequest, FetchResponse, NamedTensor};
use crate::runtime::{self, Executor, ExecutorSpec, Listener, RuntimeError};
use crate::tensor;

/// How long a mock takes to answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceTime {
    Fixed(Duration),
    /// Exponentially distributed with this mean (a memoryless server).
    Exponential {
        mean: Duration,
    },
}

/// A deliberate protocol or content fault on every answer, for failure-path tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Announce a longer message than is sent, then end the stream.
    TruncatedFrame,
    /// Compute node: label the output with this datatype instead of FP32.
    OutputDatatype(String),
    /// Compute node: label the output with this shape instead of [1, 2]; huge
    /// dimensions (whose product overflows) are the "huge dimensions" fault.
    OutputShape(Vec<i64>),
    /// A BYTES tensor whose last length prefix claims more bytes than follow
    /// ([`overrunning_bytes`]): a data source answers every fetch with it, a
    /// compute node labels every output so.
    OverrunningBytes,
}

/// The model version the mock compute node serves; a request naming another
/// is answered NOT_FOUND, as by a real server.
pub const MOCK_MODEL_VERSION: &str = "1";

/// BYTES [1, 2] whose second element's prefix says 1,000 bytes and 2 follow.
pub fn overrunning_bytes() -> Bytes {
    let mut raw = Vec::new();
    raw.extend_from_slice(&3u32.to_le_bytes());
    raw.extend_from_slice(b"abc");
    raw.extend_from_slice(&1_000u32.to_le_bytes());
    raw.extend_from_slice(b"xy");
    Bytes::from(raw)
}

/// How a mock node behaves. Rates, the error code and readiness are where a
/// node starts; [`MockControl`] changes them while it runs.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Time before each answer (not taken by hung calls).
    pub service_time: ServiceTime,
    /// Data source: bytes of UINT8 tensor per fetch (with the default
    /// [`SourceTensors::Payload`]).
    pub payload_bytes: usize,
    /// Data source: which tensors a fetch answers, and so their content.
    pub source_tensors: SourceTensors,
    /// Compute node: what it computes from the inputs.
    pub computation: Computation,
    /// Compute node: the input `max-l2` reads and ModelMetadata names.
    pub input_name: String,
    /// Compute node: answer outputs as typed `contents` instead of
    /// `raw_output_contents`, to test a client's reading of typed answers.
    pub outputs_as_contents: bool,
    /// Fraction of calls answered with `error_code`.
    pub error_rate: f64,
    /// The status of the calls `error_rate` fails: INTERNAL by default, or
    /// UNAVAILABLE, RESOURCE_EXHAUSTED… to see how each is retried.
    pub error_code: Code,
    /// Fraction of calls not answered until `hang_for` has passed (or the client
    /// gives up).
    pub hang_rate: f64,
    /// How long a hung call stays unanswered.
    pub hang_for: Duration,
    /// Fraction of calls whose stream is reset (RST_STREAM, INTERNAL_ERROR)
    /// instead of answered, as by a server that failed mid-call.
    pub reset_rate: f64,
    /// Compute node: the model it serves; other names get NOT_FOUND, as from a
    /// real server. `None` accepts any.
    pub model: Option<String>,
    /// A deliberate fault on every answer, for tests.
    pub fault: Option<Fault>,
    /// Fault: every answer is a valid message padded (with a field decoders
    /// skip) to at least this many bytes, to exceed the client's message limit.
    pub oversized_reply_bytes: Option<usize>,
    /// Streams per connection the mock allows.
    pub max_concurrent_streams: u32,
    /// Fault: drop each connection's socket after this many calls on it.
    pub drop_after_calls: Option<u64>,
    /// Fault: send GOAWAY on each connection after this many calls on it.
    pub goaway_after_calls: Option<u64>,
    /// Fault: answer this many calls on each connection, then write bytes that
    /// are not HTTP/2 onto its socket and close it.
    pub garbage_after_calls: Option<u64>,
    /// Fault: answer every connection's HTTP/2 preface as a plain HTTP/1.1
    /// server would, and close it.
    pub http1_only: bool,
    /// TLS on every connection (`--tls-cert`, `--tls-key`, `--client-ca`):
    /// the server configuration, with client CAs when mTLS is required;
    /// `None` serves in the clear.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Compute node: a header every call must carry with this value
    /// (`authorization`, `Bearer …`), else UNAUTHENTICATED, as a server behind
    /// a token check answers.
    pub required_header: Option<(String, String)>,
    /// While this file exists the node reports not ready (looked up on every
    /// probe), so a script can take a node out of service without restarting it.
    pub not_ready_file: Option<PathBuf>,
    /// Seed of the mock's random choices, so a failing test can be replayed.
    pub seed: u64,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            service_time: ServiceTime::Fixed(Duration::ZERO),
            payload_bytes: 1024,
            source_tensors: SourceTensors::Payload,
            computation: Computation::ByteSum,
            input_name: "INPUT0".to_string(),
            outputs_as_contents: false,
            error_rate: 0.0,
            error_code: Code::INTERNAL,
            hang_rate: 0.0,
            hang_for: Duration::from_secs(60),
            reset_rate: 0.0,
            model: None,
            fault: None,
            oversized_reply_bytes: None,
            max_concurrent_streams: 1024,
            drop_after_calls: None,
            goaway_after_calls: None,
            garbage_after_calls: None,
            http1_only: false,
            tls: None,
            required_header: None,
            not_ready_file: None,
            seed: 0x5eed,
        }
    }
}

/// Runtime control of a running mock node, shared by all its executors: fault
/// rates, added latency and readiness can change while it serves, and it counts
/// the calls the node took. Values are read on each call; every setter takes
/// `&self`, so a test holds an `Arc` and turns a replica bad and good again.
#[derive(Debug)]
pub struct MockControl {
    /// Time added to every answer's service time, in nanoseconds: slows one
    /// replica down while it serves, for latency-aware balancing tests.
    added_latency_ns: AtomicU64,
    /// The error fault in one word, so a new rate never pairs with the old
    /// code: the rate as `f32` bits in the low half, the code in the high half.
    error: AtomicU64,
    /// Fraction of calls left hanging, as `f64` bits.
    hang_rate: AtomicU64,
    /// Fraction of calls whose stream is reset, as `f64` bits.
    reset_rate: AtomicU64,
    /// Whether the server says it is ready (ServerReady, Health/Check).
    ready: AtomicBool,
    /// Whether the model says it is ready (ModelReady, Health/Check of the model).
    model_ready: AtomicBool,
    /// ModelInfer or Fetch calls this node took, whatever their fate (answer,
    /// error, hang, reset): each replica's share of the traffic.
    calls: AtomicU64,
    /// While this file exists the node is not ready, whatever `ready` says.
    not_ready_file: Option<PathBuf>,
}

/// A rate as the mocks use it: NaN is 0, anything else is clamped to [0, 1].
fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

impl MockControl {
    /// The control a node starts with: rates and code from `options`, ready.
    pub fn new(options: &MockOptions) -> MockControl {
        let control = MockControl {
            added_latency_ns: AtomicU64::new(0),
            error: AtomicU64::new(0),
            hang_rate: AtomicU64::new(0),
            reset_rate: AtomicU64::new(0),
            ready: AtomicBool::new(true),
            model_ready: AtomicBool::new(true),
            calls: AtomicU64::new(0),
            not_ready_file: options.not_ready_file.clone(),
        };
        control.set_error_rate(options.error_rate, options.error_code);
        control.set_hang_rate(options.hang_rate);
        control.set_reset_rate(options.reset_rate);
        control
    }

    /// Adds `latency` to the service time of every call from now on (not to
    /// probes, which are answered at once).
    pub fn set_added_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.added_latency_ns.store(nanos, Relaxed);
    }

    pub fn added_latency(&self) -> Duration {
        Duration::from_nanos(self.added_latency_ns.load(Relaxed))
    }

    /// Answers this fraction of calls (clamped to [0, 1]) with status `code`.
    pub fn set_error_rate(&self, rate: f64, code: Code) {
        let rate = clamp_rate(rate) as f32;
        self.error
            .store(u64::from(code.0) << 32 | u64::from(rate.to_bits()), Relaxed);
    }

    /// The fraction of calls failed with a status, and that status.
    pub fn error_rate(&self) -> (f64, Code) {
        let word = self.error.load(Relaxed);
        let rate = f32::from_bits(word as u32);
        (f64::from(rate), Code((word >> 32) as u32))
    }

    /// Leaves this fraction of calls (clamped to [0, 1]) unanswered for the
    /// node's `hang_for`.
    pub fn set_hang_rate(&self, rate: f64) {
        self.hang_rate.store(clamp_rate(rate).to_bits(), Relaxed);
    }

    pub fn hang_rate(&self) -> f64 {
        f64::from_bits(self.hang_rate.load(Relaxed))
    }

    /// Resets the stream of this fraction of calls (clamped to [0, 1]).
    pub fn set_reset_rate(&self, rate: f64) {
        self.reset_rate.store(clamp_rate(rate).to_bits(), Relaxed);
    }

    pub fn reset_rate(&self) -> f64 {
        f64::from_bits(self.reset_rate.load(Relaxed))
    }

    /// Whether the server reports ready (ServerReady, Health/Check); the
    /// `not_ready_file` overrides it while it exists.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    /// Whether the served model reports ready (ModelReady, Health/Check with
    /// the model's name).
    pub fn set_model_ready(&self, ready: bool) {
        self.model_ready.store(ready, Relaxed);
    }

    /// Whether the node is ready: set so, and no `not_ready_file` exists. Looks
    /// the file up each time (probes are rare next to calls).
    pub fn is_ready(&self) -> bool {
        let file_says_not = self
            .not_ready_file
            .as_ref()
            .is_some_and(|path| path.exists());
        self.ready.load(Relaxed) && !file_says_not
    }

    /// Whether the model is ready: set so, on a node that is ready (a node out
    /// of service serves no model).
    pub fn is_model_ready(&self) -> bool {
        self.model_ready.load(Relaxed) && self.is_ready()
    }

    /// ModelInfer or Fetch calls taken so far, by every executor of the node,
    /// whatever their fate; probes and calls cut off by connection faults before
    /// they reached the service are not counted.
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }
}

/// Reads a gRPC status code as the CLI takes it: a canonical name
/// (`UNAVAILABLE`, case-insensitive) or its number.
pub fn parse_code(text: &str) -> Result<Code, String> {
    let text = text.trim();
    if let Ok(number) = text.parse::<u32>() {
        return Ok(Code(number));
    }
    (0..=16)
        .map(Code)
        .find(|code| code.name().eq_ignore_ascii_case(text))
        .ok_or_else(|| {
            format!("{text:?} is not a gRPC status code: use a name like UNAVAILABLE or a number")
        })
}

/// Field number of the padding added to oversized replies: unused by every
/// message the mocks answer, so decoders skip it as an unknown field.
const PADDING_FIELD: u32 = 4095;

/// Appends to an encoded message one unknown length-delimited field, so that the
/// whole is at least `target` bytes: exactly, unless the padding's own key and
/// length prefix make that impossible (then a few bytes more). A message
/// already that long is left as it is.
fn pad_message(message: Bytes, target: usize) -> Bytes {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    if message.len() >= target {
        return message;
    }
    let room = target.saturating_sub(message.len() + key_len(PADDING_FIELD));
    // The smallest padding whose length prefix plus bytes fill the room.
    let mut len = room.saturating_sub(encoded_len_varint(room as u64));
    while len + encoded_len_varint(len as u64) < room {
        len += 1;
    }
    let mut padded = BytesMut::with_capacity(target + 1);
    padded.put_slice(&message);
    encode_key(PADDING_FIELD, WireType::LengthDelimited, &mut padded);
    encode_varint(len as u64, &mut padded);
    padded.put_bytes(0, len);
    padded.freeze()
}

/// Which service a mock node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockKind {
    /// `percore.source.v1.DataSource`.
    Source,
    /// `inference.GRPCInferenceService` (KServe v2).
    Compute,
}

/// The output every mock model computes: FP32 [1, 2] = [sum of input bytes, input
/// length]. Tests recompute it to check rows hold the right device's result.
pub fn mock_model_output(input: &[u8]) -> [f32; 2] {
    let sum: u64 = input.iter().map(|&b| b as u64).sum();
    [sum as f32, input.len() as f32]
}

/// The tensor a mock source returns for a device: `payload_bytes` bytes whose first
/// eight are the device id's stable hash (little-endian), the rest a fixed pattern.
pub fn mock_payload(device_id: &str, payload_bytes: usize) -> Bytes {
    let mut payload: Vec<u8> = (0..payload_bytes).map(|i| (i % 251) as u8).collect();
    let hash = stable_hash(device_id).to_le_bytes();
    let head = payload_bytes.min(hash.len());
    payload[..head].copy_from_slice(&hash[..head]);
    Bytes::from(payload)
}

/// What one mock executor serves.
struct Mock {
    /// Which service this executor answers.
    kind: MockKind,
    /// Behaviour: timing, faults; rates and readiness are read from `control`.
    options: MockOptions,
    /// The node's runtime control, shared with its other executors and the test.
    control: Arc<MockControl>,
    /// xorshift state for this executor's random choices.
    rng: Cell<u64>,
}

impl Mock {
    fn uniform(&self) -> f64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn service_time(&self) -> Duration {
        let base = match self.options.service_time {
            ServiceTime::Fixed(duration) => duration,
            ServiceTime::Exponential { mean } => {
                let u = self.uniform().max(f64::MIN_POSITIVE);
                mean.mul_f64(-u.ln())
            }
        };
        base.saturating_add(self.control.added_latency())
    }

    /// The one method of real work this mock serves.
    fn work_path(&self) -> &'static str {
        match self.kind {
            MockKind::Source => methods::FETCH,
            MockKind::Compute => methods::MODEL_INFER,
        }
    }

    /// The gRPC service name a health check may ask about, besides "".
    fn service_name(&self) -> &'static str {
        match self.kind {
            MockKind::Source => "percore.source.v1.DataSource",
            MockKind::Compute => "inference.GRPCInferenceService",
        }
    }

    /// Whether `name` is a model this node serves (any, when none is
    /// configured), in `version` (empty: the server's choice).
    fn serves_model(&self, name: &str, version: &str) -> bool {
        (version.is_empty() || version == MOCK_MODEL_VERSION)
            && self
                .options
                .model
                .as_deref()
                .is_none_or(|model| model == name)
    }

    /// The NOT_FOUND a real server answers for a model or version it lacks.
    fn model_not_found(name: &str, version: &str) -> Reply {
        if version.is_empty() {
            status(Code::NOT_FOUND, &format!("model {name:?} not found"))
        } else {
            status(
                Code::NOT_FOUND,
                &format!("model {name:?} version {version:?} not found"),
            )
        }
    }

    /// Answers a health or readiness probe, at once and without faults.
    fn probe(&self, path: &str, message: Bytes) -> Reply {
        match path {
            methods::HEALTH_CHECK => {
                let Ok(request) = HealthCheckRequest::decode(message) else {
                    return status(Code::INVALID_ARGUMENT, "undecodable HealthCheckRequest");
                };
                // "" and the service's name ask about the server; on a compute
                // node a model's name asks about the model. Anything else is
                // unknown, which the health protocol answers with NOT_FOUND.
                let serving = if request.service.is_empty()
                    || request.service == self.service_name()
                {
                    self.control.is_ready()
                } else if self.kind == MockKind::Compute && self.serves_model(&request.service, "")
                {
                    self.control.is_model_ready()
                } else {
                    return status(
                        Code::NOT_FOUND,
                        &format!("unknown service {:?}", request.service),
                    );
                };
                let status = if serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                encoded(&HealthCheckResponse {
                    status: status as i32,
                })
            }
            methods::SERVER_READY => encoded(&ServerReadyResponse {
                ready: self.control.is_ready(),
            }),
            methods::SERVER_LIVE => encoded(&ServerLiveResponse { live: true }),
            methods::MODEL_METADATA => {
                let Ok(request) = ModelMetadataRequest::decode(message) else {
                    return status(Code::INVALID_ARGUMENT, "undecodable ModelMetadataRequest");
                };
                if !self.serves_model(&request.name, &request.version) {
                    return Self::model_not_found(&request.name, &request.version);
                }
                let (inputs, outputs) =
                    compute::metadata(self.options.computation, &self.options.input_name);
                encoded(&ModelMetadataResponse {
                    name: self.options.model.clone().unwrap_or(request.name),
                    versions: vec![MOCK_MODEL_VERSION.to_string()],
                    platform: "percore-mock".to_string(),
                    inputs,
                    outputs,
                })
            }
            methods::MODEL_READY => {
                let Ok(request) = ModelReadyRequest::decode(message) else {
                    return status(Code::INVALID_ARGUMENT, "undecodable ModelReadyRequest");
                };
                if !self.serves_model(&request.name, &request.version) {
                    return Self::model_not_found(&request.name, &request.version);
                }
                encoded(&ModelReadyResponse {
                    ready: self.control.is_model_ready(),
                })
            }
            _ => status(Code::UNIMPLEMENTED, &format!("unknown method {path}")),
        }
    }

    fn fetch(&self, message: Bytes) -> Reply {
        let Ok(request) = FetchRequest::decode(message) else {
            return status(Code::INVALID_ARGUMENT, "undecodable FetchRequest");
        };
        let mut response = FetchResponse {
            captured_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            ..FetchResponse::default()
        };
        let content = |spec: &TensorSpec| spec.content(&request.device_id, request.tick_unix_ms);
        if self.options.fault == Some(Fault::OverrunningBytes) {
            response.datatype = "BYTES".into();
            response.shape = vec![1, 2];
            response.raw = overrunning_bytes();
            return encoded(&response);
        }
        match &self.options.source_tensors {
            SourceTensors::Payload => {
                response.datatype = "UINT8".into();
                response.shape = vec![1, self.options.payload_bytes as i64];
                response.raw = mock_payload(&request.device_id, self.options.payload_bytes);
            }
            SourceTensors::Tensor(spec) => {
                response.raw = match content(spec) {
                    Ok(raw) => raw,
                    Err(error) => return status(Code::INTERNAL, &error),
                };
                response.datatype = spec.datatype.clone();
                response.shape = spec.shape.clone();
            }
            SourceTensors::Inputs(specs) => {
                for spec in specs {
                    let raw = match content(spec) {
                        Ok(raw) => raw,
                        Err(error) => return status(Code::INTERNAL, &error),
                    };
                    response.inputs.push(NamedTensor {
                        name: spec.name.clone(),
                        datatype: spec.datatype.clone(),
                        shape: spec.shape.clone(),
                        raw,
                    });
                }
            }
        }
        encoded(&response)
    }

    fn infer(&self, message: Bytes) -> Reply {
        let Ok(request) = ModelInferRequest::decode(message) else {
            return status(Code::INVALID_ARGUMENT, "undecodable ModelInferRequest");
        };
        if !self.serves_model(&request.model_name, &request.model_version) {
            return Self::model_not_found(&request.model_name, &request.model_version);
        }
        let outputs =
            match compute::compute(self.options.computation, &self.options.input_name, &request) {
                Ok(outputs) => outputs,
                Err((code, message)) => return status(code, &message),
            };
        let outputs = outputs.into_iter().map(|output| self.mislabelled(output));
        let mut response = ModelInferResponse {
            model_name: request.model_name,
            model_version: request.model_version,
            id: request.id,
            ..Default::default()
        };
        for output in outputs {
            let mut label = compute::label(&output);
            if self.options.outputs_as_contents {
                match compute::typed_contents(&output.datatype, &output.raw) {
                    Ok(contents) => label.contents = Some(contents),
                    Err(error) => return status(Code::INVALID_ARGUMENT, &error),
                }
            } else {
                response.raw_output_contents.push(output.raw);
            }
            response.outputs.push(label);
        }
        encoded(&response)
    }

    /// An output as the node's label fault has it: another datatype (with as
    /// many zeroed elements of it, so only the label is wrong) or another shape.
    fn mislabelled(&self, mut output: compute::Computed) -> compute::Computed {
        match &self.options.fault {
            Some(Fault::OutputDatatype(datatype)) => {
                if let Some(size) = tensor::element_size(datatype) {
                    let count: i64 = output.shape.iter().product();
                    output.raw = Bytes::from(vec![0; count.max(0) as usize * size]);
                }
                output.datatype = datatype.clone();
            }
            Some(Fault::OutputShape(shape)) => output.shape = shape.clone(),
            Some(Fault::OverrunningBytes) => {
                output.datatype = "BYTES".into();
                output.shape = vec![1, 2];
                output.raw = overrunning_bytes();
            }
            _ => {}
        }
        output
    }
}

fn encoded(message: &impl Message) -> Reply {
    Reply::Message(message.encode_to_vec().into())
}

fn status(code: Code, message: &str) -> Reply {
    Reply::Status {
        code,
        message: message.to_string(),
    }
}

impl Service for Mock {
    fn authorize(&self, headers: &http::HeaderMap) -> Result<(), String> {
        let Some((name, value)) = &self.options.required_header else {
            return Ok(());
        };
        match headers.get(name.as_str()) {
            Some(sent) if sent.as_bytes() == value.as_bytes() => Ok(()),
            Some(_) => Err(format!("the {name} header is wrong")),
            None => Err(format!("no {name} header")),
        }
    }

    async fn call(self: Rc<Self>, path: &str, message: Bytes) -> Reply {
        if self.is_probe(path) {
            return self.probe(path, message);
        }
        if path != self.work_path() {
            return status(Code::UNIMPLEMENTED, &format!("unknown method {path}"));
        }
        self.control.calls.fetch_add(1, Relaxed);
        // One draw, sliced: [hang | reset | error | answer].
        let draw = self.uniform();
        let hang_below = self.control.hang_rate();
        if draw < hang_below {
            return Reply::Hang(self.options.hang_for);
        }
        let service_time = self.service_time();
        if !service_time.is_zero() {
            runtime::sleep(service_time).await;
        }
        let reset_below = hang_below + self.control.reset_rate();
        if draw < reset_below {
            return Reply::Reset;
        }
        let (error_rate, error_code) = self.control.error_rate();
        if draw < reset_below + error_rate {
            return status(error_code, "injected failure");
        }
        let mut reply = match self.kind {
            MockKind::Source => self.fetch(message),
            MockKind::Compute => self.infer(message),
        };
        if let (Some(target), Reply::Message(message)) =
            (self.options.oversized_reply_bytes, &reply)
        {
            reply = Reply::Message(pad_message(message.clone(), target));
        }
        match (&self.options.fault, reply) {
            (Some(Fault::TruncatedFrame), Reply::Message(message)) => {
                let mut body = BytesMut::with_capacity(5 + message.len() / 2);
                body.put_u8(0);
                body.put_u32(message.len() as u32);
                body.put_slice(&message[..message.len() / 2]);
                Reply::RawBody(body.freeze())
            }
            (_, reply) => reply,
        }
    }

    fn is_probe(&self, path: &str) -> bool {
        match self.kind {
            MockKind::Source => path == methods::HEALTH_CHECK,
            MockKind::Compute => matches!(
                path,
                methods::HEALTH_CHECK
                    | methods::SERVER_READY
                    | methods::MODEL_READY
                    | methods::SERVER_LIVE
                    | methods::MODEL_METADATA
            ),
        }
    }
}

/// A running mock node: one or more executors serving one address.
pub struct MockNode {
    /// Where it listens (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// Rates, latency, readiness and the call count, shared by the executors.
    control: Arc<MockControl>,
    /// One stop signal per executor.
    stops: Vec<flume::Sender<()>>,
    /// The serving executors, joined by `stop`.
    executors: Vec<Executor<()>>,
}

impl MockNode {
    /// Starts a mock on `listen`, one executor per entry of `cpus` (`None` = not
    /// pinned); the executors share the port through SO_REUSEPORT.
    pub fn start(
        kind: MockKind,
        listen: SocketAddr,
        cpus: &[Option<usize>],
        io_memory_bytes: usize,
        options: MockOptions,
    ) -> Result<MockNode, RuntimeError> {
        let mut addr = listen;
        let control = Arc::new(MockControl::new(&options));
        let mut stops = Vec::new();
        let mut executors = Vec::new();
        let name = match kind {
            MockKind::Source => "mock-source",
            MockKind::Compute => "mock-compute",
        };
        for (index, &cpu) in cpus.iter().enumerate().take(cpus.len().max(1)) {
            let (stop_tx, stop_rx) = flume::bounded::<()>(1);
            let (bound_tx, bound_rx) = flume::bounded::<Result<SocketAddr, String>>(1);
            let mut options = options.clone();
            let control = control.clone();
            options.seed = options.seed.wrapping_add(index as u64 * 0x9E37_79B9);
            let spec = ExecutorSpec {
                name: name.to_string(),
                cpu,
                io_memory_bytes,
            };
            let executor = runtime::start(&spec, move || async move {
                let listener =
                    match Listener::bind(addr).and_then(|l| l.local_addr().map(|a| (l, a))) {
                        Ok((listener, bound)) => {
                            let _ = bound_tx.send(Ok(bound));
                            listener
                        }
                        Err(error) => {
                            let _ = bound_tx.send(Err(format!("cannot listen on {addr}: {error}")));
                            return;
                        }
                    };
                let settings = ServerSettings {
                    max_concurrent_streams: options.max_concurrent_streams,
                    // The peer is our own load generator: cancelled calls are
                    // its normal behaviour under overload, not an attack.
                    reset_limit: usize::MAX,
                    name,
                    drop_after_calls: options.drop_after_calls,
                    goaway_after_calls: options.goaway_after_calls,
                    garbage_after_calls: options.garbage_after_calls,
                    http1_only: options.http1_only,
                    tls: options.tls.clone(),
                    ..ServerSettings::default()
                };
                let mock = Rc::new(Mock {
                    kind,
                    control,
                    rng: Cell::new(options.seed | 1),
                    options,
                });
                server::serve(listener, mock, settings, async move {
                    let _ = stop_rx.recv_async().await;
                })
                .await;
            })?;
            let bound = bound_rx
                .recv()
                .map_err(|_| RuntimeError(format!("{name} executor exited before listening")))?
                .map_err(RuntimeError)?;
            addr = bound;
            stops.push(stop_tx);
            executors.push(executor);
        }
        Ok(MockNode {
            addr,
            control,
            stops,
            executors,
        })
    }

    /// The node's runtime control: change its fault rates, latency and
    /// readiness while it serves, and read how many calls it took.
    pub fn control(&self) -> Arc<MockControl> {
        self.control.clone()
    }

    /// Stops serving and waits for the executors to exit.
    pub fn stop(self) {
        for stop in &self.stops {
            let _ = stop.send(());
        }
        for executor in self.executors {
            let _ = executor.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_by_name_or_number() {
        assert_eq!(parse_code("UNAVAILABLE"), Ok(Code::UNAVAILABLE));
        assert_eq!(
            parse_code("resource_exhausted"),
            Ok(Code::RESOURCE_EXHAUSTED)
        );
        assert_eq!(parse_code(" 13 "), Ok(Code::INTERNAL));
        assert_eq!(parse_code("DATA_LOSS"), Ok(Code(15)));
        assert_eq!(parse_code("99"), Ok(Code(99)));
        assert!(parse_code("NOT_A_CODE").is_err());
        assert!(parse_code("").is_err());
        assert!(parse_code("-1").is_err());
    }

    #[test]
    fn padded_messages_decode_to_the_same_answer_and_reach_the_size() {
        let response = FetchResponse {
            datatype: "UINT8".into(),
            shape: vec![1, 4],
            raw: Bytes::from_static(&[1, 2, 3, 4]),
            captured_unix_ms: 7,
            inputs: Vec::new(),
        };
        let message: Bytes = response.encode_to_vec().into();
        // Around each length-prefix boundary of the padding, and far past it.
        for target in [
            message.len() + 1,
            100,
            130,
            131,
            132,
            16_400,
            16_500,
            1 << 20,
        ] {
            let padded = pad_message(message.clone(), target);
            assert!(
                padded.len() >= target && padded.len() <= target + 4,
                "target {target}: {} bytes",
                padded.len()
            );
            assert_eq!(
                FetchResponse::decode(padded).as_ref(),
                Ok(&response),
                "target {target}"
            );
        }
        // Exact where a prefix allows it, which is almost everywhere.
        assert_eq!(pad_message(message.clone(), 1 << 20).len(), 1 << 20);
        assert_eq!(pad_message(message.clone(), 5000).len(), 5000);
        // Nothing to add to a message already that long.
        assert_eq!(pad_message(message.clone(), 3), message);
    }

    #[test]
    fn control_clamps_rates_and_keeps_rate_and_code_together() {
        let options = MockOptions {
            error_rate: 0.25,
            error_code: Code::UNAVAILABLE,
            hang_rate: 0.5,
            ..MockOptions::default()
        };
        let control = MockControl::new(&options);
        assert_eq!(control.error_rate(), (0.25, Code::UNAVAILABLE));
        assert_eq!(control.hang_rate(), 0.5);
        assert_eq!(control.reset_rate(), 0.0);
        control.set_error_rate(1.5, Code::RESOURCE_EXHAUSTED);
        assert_eq!(control.error_rate(), (1.0, Code::RESOURCE_EXHAUSTED));
        control.set_error_rate(f64::NAN, Code(99));
        assert_eq!(control.error_rate(), (0.0, Code(99)));
        control.set_hang_rate(-1.0);
        assert_eq!(control.hang_rate(), 0.0);
        control.set_reset_rate(0.125);
        assert_eq!(control.reset_rate(), 0.125);
        control.set_added_latency(Duration::from_millis(3));
        assert_eq!(control.added_latency(), Duration::from_millis(3));
        control.set_added_latency(Duration::MAX);
        assert_eq!(control.added_latency(), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn readiness_is_off_while_the_file_exists_and_the_model_follows_the_server() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("not-ready");
        let control = MockControl::new(&MockOptions {
            not_ready_file: Some(file.clone()),
            ..MockOptions::default()
        });
        assert!(control.is_ready() && control.is_model_ready());
        std::fs::write(&file, b"").expect("the flag file is written");
        assert!(!control.is_ready() && !control.is_model_ready());
        std::fs::remove_file(&file).expect("the flag file is removed");
        assert!(control.is_ready());
        control.set_model_ready(false);
        assert!(control.is_ready() && !control.is_model_ready());
        control.set_model_ready(true);
        control.set_ready(false);
        assert!(!control.is_ready() && !control.is_model_ready());
    }
}
