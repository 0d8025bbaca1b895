//! Built-in mock nodes: a data source and a KServe v2 compute node.
//!
//! They let the whole system run on one machine with nothing installed, and let
//! tests inject the failures real nodes produce: a service time (fixed or
//! exponential), an error rate, a hang rate, and faults a real server would only
//! produce when broken (a wrong output tensor, a cut-off frame). Each mock serves
//! from its own executors, away from the dispatcher's shards.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::devices::stable_hash;
use crate::grpc::methods;
use crate::grpc::server::{self, Reply, ServerSettings, Service};
use crate::grpc::status::Code;
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::{ModelInferRequest, ModelInferResponse};
use crate::proto::source::{FetchRequest, FetchResponse};
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

/// A deliberate protocol or content fault, for failure-path tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Announce a longer message than is sent, then end the stream.
    TruncatedFrame,
    /// Compute node: label the output with this datatype instead of FP32.
    OutputDatatype(String),
    /// Compute node: label the output with this shape instead of [1, 2].
    OutputShape(Vec<i64>),
}

/// How a mock node behaves.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Time before each answer (not taken by hung calls).
    pub service_time: ServiceTime,
    /// Data source: bytes of UINT8 tensor per fetch.
    pub payload_bytes: usize,
    /// Fraction of calls answered with INTERNAL.
    pub error_rate: f64,
    /// Fraction of calls not answered until `hang_for` has passed (or the client
    /// gives up).
    pub hang_rate: f64,
    /// How long a hung call stays unanswered.
    pub hang_for: Duration,
    /// Compute node: the model it serves; other names get NOT_FOUND, as from a
    /// real server. `None` accepts any.
    pub model: Option<String>,
    /// A deliberate fault on every answer, for tests.
    pub fault: Option<Fault>,
    /// Streams per connection the mock allows.
    pub max_concurrent_streams: u32,
    /// Fault: drop each connection's socket after this many calls on it.
    pub drop_after_calls: Option<u64>,
    /// Fault: send GOAWAY on each connection after this many calls on it.
    pub goaway_after_calls: Option<u64>,
    /// Seed of the mock's random choices, so a failing test can be replayed.
    pub seed: u64,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            service_time: ServiceTime::Fixed(Duration::ZERO),
            payload_bytes: 1024,
            error_rate: 0.0,
            hang_rate: 0.0,
            hang_for: Duration::from_secs(60),
            model: None,
            fault: None,
            max_concurrent_streams: 1024,
            drop_after_calls: None,
            goaway_after_calls: None,
            seed: 0x5eed,
        }
    }
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
    /// Behaviour: timing, failures, faults.
    options: MockOptions,
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
        match self.options.service_time {
            ServiceTime::Fixed(duration) => duration,
            ServiceTime::Exponential { mean } => {
                let u = self.uniform().max(f64::MIN_POSITIVE);
                mean.mul_f64(-u.ln())
            }
        }
    }

    fn fetch(&self, message: Bytes) -> Reply {
        let Ok(request) = FetchRequest::decode(message) else {
            return status(Code::INVALID_ARGUMENT, "undecodable FetchRequest");
        };
        let response = FetchResponse {
            datatype: "UINT8".into(),
            shape: vec![1, self.options.payload_bytes as i64],
            raw: mock_payload(&request.device_id, self.options.payload_bytes),
            captured_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        };
        Reply::Message(response.encode_to_vec().into())
    }

    fn infer(&self, message: Bytes) -> Reply {
        let Ok(request) = ModelInferRequest::decode(message) else {
            return status(Code::INVALID_ARGUMENT, "undecodable ModelInferRequest");
        };
        if let Some(model) = &self.options.model {
            if &request.model_name != model {
                return status(
                    Code::NOT_FOUND,
                    &format!("model {:?} not found", request.model_name),
                );
            }
        }
        let (Some(input), Some(raw)) = (request.inputs.first(), request.raw_input_contents.first())
        else {
            return status(Code::INTERNAL, "request has no raw input tensor");
        };
        if let Err(detail) = tensor::check_raw(&input.datatype, &input.shape, raw) {
            return status(Code::INTERNAL, &detail);
        }
        let [sum, len] = mock_model_output(raw);
        let mut output = BytesMut::with_capacity(8);
        output.put_f32_le(sum);
        output.put_f32_le(len);
        let (datatype, shape) = match &self.options.fault {
            Some(Fault::OutputDatatype(datatype)) => {
                // Two elements of the named type, so the tensor is self-consistent
                // and only its datatype is wrong.
                if let Some(size) = tensor::element_size(datatype) {
                    output = BytesMut::zeroed(2 * size);
                }
                (datatype.clone(), vec![1, 2])
            }
            Some(Fault::OutputShape(shape)) => ("FP32".to_string(), shape.clone()),
            _ => ("FP32".to_string(), vec![1, 2]),
        };
        let response = ModelInferResponse {
            model_name: request.model_name,
            model_version: request.model_version,
            id: request.id,
            outputs: vec![InferOutputTensor {
                name: "OUTPUT0".into(),
                datatype,
                shape,
                ..Default::default()
            }],
            raw_output_contents: vec![output.freeze()],
            ..Default::default()
        };
        Reply::Message(response.encode_to_vec().into())
    }
}

fn status(code: Code, message: &str) -> Reply {
    Reply::Status {
        code,
        message: message.to_string(),
    }
}

impl Service for Mock {
    async fn call(self: Rc<Self>, path: &str, message: Bytes) -> Reply {
        let expected = match self.kind {
            MockKind::Source => methods::FETCH,
            MockKind::Compute => methods::MODEL_INFER,
        };
        if path != expected {
            return status(Code::UNIMPLEMENTED, &format!("unknown method {path}"));
        }
        let draw = self.uniform();
        if draw < self.options.hang_rate {
            return Reply::Hang(self.options.hang_for);
        }
        let service_time = self.service_time();
        if !service_time.is_zero() {
            runtime::sleep(service_time).await;
        }
        if draw < self.options.hang_rate + self.options.error_rate {
            return status(Code::INTERNAL, "injected failure");
        }
        let reply = match self.kind {
            MockKind::Source => self.fetch(message),
            MockKind::Compute => self.infer(message),
        };
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
}

/// A running mock node: one or more executors serving one address.
pub struct MockNode {
    /// Where it listens (the real port when asked for port 0).
    pub addr: SocketAddr,
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
                    ..ServerSettings::default()
                };
                let mock = Rc::new(Mock {
                    kind,
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
            stops,
            executors,
        })
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
