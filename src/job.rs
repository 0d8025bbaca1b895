//! One job: fetch a device's data, run it through its class's model, check the
//! result.
//!
//! Runs as a task on the shard that owns the device. Both calls share one
//! deadline, counted from the job's start; whichever call is in progress when it
//! passes is abandoned (its stream reset) and named in the failure. Each call is
//! one or more attempts, each on a replica its [`ReplicaSet`] picks: a failed
//! attempt that another replica might not have is tried again elsewhere within
//! the deadline, the class's attempt limit and the retry budget, and a slow
//! ModelInfer may be hedged on a second replica (the first answer wins, the
//! other is cancelled). Every path ends in a [`JobRecord`](crate::record::JobRecord):
//! a job never panics and is never lost.
//!
//! A class with `[classes.batching]` sends its jobs' ModelInfer through the
//! shard's [`Batcher`] for the class (the `batch` module): many jobs' inputs
//! in one call, each job's share of the answer checked as its own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::config::{OutputSpec, Parameter};
use crate::error::{ErrorKind, JobError, Stage};
use crate::proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use crate::proto::source::{FetchRequest, FetchResponse};
use crate::record::{Output, StageLatency};
use crate::runtime;
use crate::tensor;
use crate::upstream::{NodePool, ReplicaSet};

mod batch;

pub use batch::Batcher;

/// Everything a job needs to know about its device's class, on one shard (built
/// and owned by that shard).
pub struct ClassRoute {
    /// Class name, sent to the data source.
    pub name: String,
    /// Model name for ModelInfer.
    pub model: String,
    /// Model version for ModelInfer; empty lets the server choose.
    pub model_version: String,
    /// Name of the model's input tensor when the data source sends one unnamed
    /// tensor (a source naming its tensors in `inputs` names them itself).
    pub input_name: String,
    /// The outputs every request asks for, by name (`outputs` in the config);
    /// empty asks for all the model has.
    pub requested_outputs: Vec<InferRequestedOutputTensor>,
    /// Request `parameters` from the config, sent with every ModelInfer.
    pub parameters: HashMap<String, InferParameter>,
    /// Whether each request carries an `id` of `<device>@<tick_ms>`, for
    /// servers that log or trace by request id.
    pub request_id: bool,
    /// Time allowed for one job, from its start.
    pub deadline: Duration,
    /// What the output must look like, if the config says.
    pub output: Option<OutputSpec>,
    /// This shard's view of the class's data sources.
    pub sources: Rc<ReplicaSet>,
    /// This shard's view of the class's compute nodes (replicas).
    pub computes: Rc<ReplicaSet>,
    /// Largest response message accepted.
    pub max_message_len: usize,
    /// Most extra attempts of one call (retries and hedges).
    pub retries: u32,
    /// This shard's batcher for the class, when it batches
    /// (`[classes.batching]`); `None` sends each job's ModelInfer alone.
    pub batcher: Option<Batcher>,
}

/// How many attempts one call keeps track of for "not this replica again";
/// more than `[grpc] retries` allows, so never a limit in practice.
const MAX_TRIED: usize = 16;

/// The result of a job that ran: its outputs or why it failed, and its timings.
pub struct Finished {
    /// Every output tensor the model answered, or why the job failed.
    pub result: Result<Vec<Output>, JobError>,
    /// Per-stage timings of this job.
    pub latency: StageLatency,
    /// Attempts made again after a retryable failure, and hedges.
    pub retries: u32,
    /// Attempts sent, fetch and infer together, retries and hedges included (2
    /// for a job that went through the first time).
    pub attempts: u16,
    /// Index in the class's `compute_nodes` of the replica whose answer ended
    /// the job's ModelInfer (an output or an error status); `None` when no
    /// compute node answered.
    pub compute_node: Option<u16>,
}

/// What a job's calls have done so far, filled in as they go.
#[derive(Debug, Default)]
struct Tally {
    retries: u32,
    attempts: u16,
    compute_node: Option<u16>,
}

/// Which method of a node a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Fetch,
    Infer,
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros() as u64
}

/// Runs one job for `device_id` at tick `tick_ms`, planned for `planned`.
pub async fn run(route: &ClassRoute, device_id: &str, tick_ms: i64, planned: Instant) -> Finished {
    let started = Instant::now();
    let deadline = started + route.deadline;
    let mut latency = StageLatency {
        schedule_lag_us: micros(started.saturating_duration_since(planned)),
        ..StageLatency::default()
    };
    let mut tally = Tally::default();
    let result = fetch_and_infer(
        route,
        device_id,
        tick_ms,
        deadline,
        &mut latency,
        &mut tally,
    )
    .await;
    latency.end_to_end_us = Some(micros(planned.elapsed()));
    Finished {
        result,
        latency,
        retries: tally.retries,
        attempts: tally.attempts,
        compute_node: tally.compute_node,
    }
}

async fn fetch_and_infer(
    route: &ClassRoute,
    device_id: &str,
    tick_ms: i64,
    deadline: Instant,
    latency: &mut StageLatency,
    tally: &mut Tally,
) -> Result<Vec<Output>, JobError> {
    let fetched = fetch(route, device_id, tick_ms, deadline, latency, tally).await?;
    let inputs = checked_inputs(route, fetched)?;
    infer_inputs(route, device_id, tick_ms, inputs, deadline, latency, tally).await
}

/// The ModelInfer of one job's checked inputs: alone, or as part of a batch
/// when the class batches. Either way the job's outputs pass the same checks,
/// and `latency.infer_us` runs from the inputs being ready to the answer (a
/// batched job's wait for its batch included).
async fn infer_inputs(
    route: &ClassRoute,
    device_id: &str,
    tick_ms: i64,
    inputs: ModelInputs,
    deadline: Instant,
    latency: &mut StageLatency,
    tally: &mut Tally,
) -> Result<Vec<Output>, JobError> {
    let Some(batcher) = &route.batcher else {
        let request = infer_request(route, device_id, tick_ms, inputs);
        return infer(route, &request, deadline, latency, tally).await;
    };
    let infer_started = Instant::now();
    let outputs = batcher
        .infer(route, device_id, tick_ms, inputs, deadline, tally)
        .await;
    latency.infer_us = Some(micros(infer_started.elapsed()));
    checked_outputs(route, outputs?)
}

/// One unary call: attempts on replicas the set picks, until one answers, the
/// failure is not worth another replica, or the deadline, the attempt limit or
/// the retry budget says stop. A retry never goes to a replica this call already
/// tried, except after a failure the node is known not to have processed (its
/// connection was going away), which may go to the same node on a fresh
/// connection.
async fn call<Req: Message, Resp: Message + Default>(
    method: Method,
    request: &Req,
    deadline: Instant,
    route: &ClassRoute,
    tally: &mut Tally,
) -> Result<Resp, JobError> {
    let (set, stage) = match method {
        Method::Fetch => (&*route.sources, Stage::Fetch),
        Method::Infer => (&*route.computes, Stage::Infer),
    };
    let failed = |kind| JobError::new(stage, kind);
    let mut tried = [0usize; MAX_TRIED];
    let mut tried_count = 0;
    let mut attempts_left = route.retries;
    let now = Instant::now();
    set.budget.record_call(now);
    let mut index = set.pick(now, &[]).map_err(failed)?;
    // A replica the balancer takes only as a last resort may be one whose
    // server refuses the model: sending there would only hide the reason.
    if let Some(reason) = set.refusal(index) {
        return Err(failed(ErrorKind::ModelUnavailable {
            node: set.replica(index).node(),
            reason,
        }));
    }
    loop {
        let hedge = match method {
            Method::Infer if set.hedges() && attempts_left > 0 => set.hedge_delay(Instant::now()),
            _ => None,
        };
        let (result, answered_by, sent) = match hedge {
            None => {
                let result = attempt(set, index, method, request, deadline, route).await;
                (result, index, 1)
            }
            Some(delay) => hedged(set, index, delay, method, request, deadline, route).await,
        };
        tally.attempts = tally.attempts.saturating_add(sent);
        if sent > 1 {
            attempts_left = attempts_left.saturating_sub(sent as u32 - 1);
            tally.retries += sent as u32 - 1;
        }
        let answered = match &result {
            Ok(_) => true,
            Err(kind) => kind.node_answered(),
        };
        if method == Method::Infer {
            tally.compute_node = answered.then_some(answered_by as u16);
        }
        let kind = match result {
            Ok(response) => return Ok(response),
            Err(kind) => kind,
        };
        let error = failed(kind);
        let now = Instant::now();
        if !error.is_retryable(set.retry_on()) || attempts_left == 0 || now >= deadline {
            return Err(error);
        }
        if !error.was_not_sent() && tried_count < MAX_TRIED {
            tried[tried_count] = answered_by;
            tried_count += 1;
        }
        // Another replica first, then the budget: a retry that has nowhere to
        // go spends nothing.
        let Ok(next) = set.pick(now, &tried[..tried_count]) else {
            return Err(error);
        };
        if set.refusal(next).is_some() {
            return Err(error);
        }
        if !set.budget.try_retry(now) {
            return Err(error);
        }
        attempts_left -= 1;
        tally.retries += 1;
        index = next;
    }
}

/// An attempt on replica `first` and, if it has not answered after `delay`, a
/// second one on another replica (within the budget). The first success wins and
/// the other attempt is dropped, which resets its stream (RST_STREAM CANCEL);
/// if one fails, the other still may succeed. Returns the result, the replica
/// it came from and the attempts sent.
async fn hedged<Req: Message, Resp: Message + Default>(
    set: &ReplicaSet,
    first: usize,
    delay: Duration,
    method: Method,
    request: &Req,
    deadline: Instant,
    route: &ClassRoute,
) -> (Result<Resp, ErrorKind>, usize, u16) {
    let mut primary = pin!(attempt(set, first, method, request, deadline, route));
    let hedge_at = Instant::now() + delay;
    if let Some(result) = runtime::until_deadline(hedge_at.min(deadline), primary.as_mut()).await {
        return (result, first, 1);
    }
    let now = Instant::now();
    let second = match set.pick(now, &[first]) {
        Ok(second)
            if now < deadline && set.refusal(second).is_none() && set.budget.try_retry(now) =>
        {
            second
        }
        _ => return (primary.await, first, 1),
    };
    let mut secondary = pin!(attempt(set, second, method, request, deadline, route));
    // Poll both; keep the first failure in case the other succeeds.
    let mut primary_done: Option<Result<Resp, ErrorKind>> = None;
    let mut secondary_done: Option<Result<Resp, ErrorKind>> = None;
    std::future::poll_fn(|cx| {
        if primary_done.is_none() {
            if let Poll::Ready(result) = primary.as_mut().poll(cx) {
                primary_done = Some(result);
            }
        }
        if secondary_done.is_none() {
            if let Poll::Ready(result) = secondary.as_mut().poll(cx) {
                secondary_done = Some(result);
            }
        }
        let any_ok = matches!(primary_done, Some(Ok(_))) || matches!(secondary_done, Some(Ok(_)));
        if any_ok || (primary_done.is_some() && secondary_done.is_some()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    match (primary_done, secondary_done) {
        (Some(Ok(response)), _) => (Ok(response), first, 2),
        (_, Some(Ok(response))) => (Ok(response), second, 2),
        // Both failed: the hedge's error is the later news.
        (_, Some(Err(kind))) => (Err(kind), second, 2),
        (Some(Err(kind)), None) => (Err(kind), first, 2),
        (None, None) => (Err(ErrorKind::DeadlineExceeded), first, 2),
    }
}

/// One attempt on replica `index`, within the attempt timeout; its outcome and
/// latency go back to the replica's health.
async fn attempt<Req: Message, Resp: Message + Default>(
    set: &ReplicaSet,
    index: usize,
    method: Method,
    request: &Req,
    deadline: Instant,
    route: &ClassRoute,
) -> Result<Resp, ErrorKind> {
    let now = Instant::now();
    let attempt_deadline = set.attempt_deadline(now, deadline);
    let attempt = set.start(index, now);
    let pool = &set.replica(index).pool;
    let result = send(
        pool,
        method,
        request,
        attempt_deadline,
        route.max_message_len,
        &set.metadata,
    )
    .await;
    let result = match result {
        Err(ErrorKind::DeadlineExceeded) if attempt_deadline < deadline => {
            Err(ErrorKind::AttemptTimeout {
                node: pool.node(),
                after_ms: attempt_deadline.saturating_duration_since(now).as_millis() as u64,
            })
        }
        other => other,
    };
    attempt.finish(&result);
    result
}

/// One call on one node, abandoned at `deadline`.
async fn send<Req: Message, Resp: Message + Default>(
    pool: &Rc<NodePool>,
    method: Method,
    request: &Req,
    deadline: Instant,
    max_message_len: usize,
    metadata: &http::HeaderMap,
) -> Result<Resp, ErrorKind> {
    let uri = match method {
        Method::Fetch => pool.fetch_uri(),
        Method::Infer => pool.infer_uri(),
    };
    let call = async {
        let connection = pool.connection().await?;
        connection
            .unary_with(uri, request, deadline, max_message_len, metadata)
            .await
    };
    runtime::until_deadline(deadline, call)
        .await
        .unwrap_or(Err(ErrorKind::DeadlineExceeded))
}

/// A data source's answer to one Fetch, kept by a shard for the infer-only
/// stage of `percore bench --stages`: fetched once per class at the shard's
/// start, then sent to ModelInfer by every job, so only the compute node is
/// loaded.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The model inputs one fetch gave, checked; each job's request clones them
    /// (the bytes are shared).
    pub inputs: ModelInputs,
}

/// Fetches one device's data and checks it, as the first half of [`run`] does,
/// to keep as the infer-only stage's [`Payload`].
pub async fn fetch_payload(
    route: &ClassRoute,
    device_id: &str,
    tick_ms: i64,
) -> Result<Payload, JobError> {
    let deadline = Instant::now() + route.deadline;
    let mut latency = StageLatency::default();
    let mut tally = Tally::default();
    let fetched = fetch(
        route,
        device_id,
        tick_ms,
        deadline,
        &mut latency,
        &mut tally,
    )
    .await?;
    Ok(Payload {
        inputs: checked_inputs(route, fetched)?,
    })
}

/// The fetch-only stage of `percore bench --stages`: the job's Fetch (with its
/// deadline, retries and check), and no ModelInfer. The output is empty.
pub async fn run_fetch_only(
    route: &ClassRoute,
    device_id: &str,
    tick_ms: i64,
    planned: Instant,
) -> Finished {
    let started = Instant::now();
    let deadline = started + route.deadline;
    let mut latency = StageLatency {
        schedule_lag_us: micros(started.saturating_duration_since(planned)),
        ..StageLatency::default()
    };
    let mut tally = Tally::default();
    let result = fetch(
        route,
        device_id,
        tick_ms,
        deadline,
        &mut latency,
        &mut tally,
    )
    .await
    .and_then(|fetched| model_inputs(route, fetched))
    .map(|_| Vec::new());
    latency.end_to_end_us = Some(micros(planned.elapsed()));
    Finished {
        result,
        latency,
        retries: tally.retries,
        attempts: tally.attempts,
        compute_node: None,
    }
}

/// The infer-only stage of `percore bench --stages`: the job's ModelInfer (with
/// its deadline, retries, hedges and output check) on a cached `payload`, and no
/// Fetch.
pub async fn run_infer_only(route: &ClassRoute, payload: &Payload, planned: Instant) -> Finished {
    let started = Instant::now();
    let deadline = started + route.deadline;
    let mut latency = StageLatency {
        schedule_lag_us: micros(started.saturating_duration_since(planned)),
        ..StageLatency::default()
    };
    let mut tally = Tally::default();
    let result = infer_inputs(
        route,
        "",
        0,
        payload.inputs.clone(),
        deadline,
        &mut latency,
        &mut tally,
    )
    .await;
    latency.end_to_end_us = Some(micros(planned.elapsed()));
    Finished {
        result,
        latency,
        retries: tally.retries,
        attempts: tally.attempts,
        compute_node: tally.compute_node,
    }
}

/// The output every synthetic row of the sink-only stage carries: the size of
/// the mock model's output (two FP32 values), so rows weigh what real ones do.
const SYNTHETIC_OUTPUT: &[u8] = &[0; 8];

/// The sink-only stage's output tensor: [`SYNTHETIC_OUTPUT`] as the mock's FP32 [1, 2].
fn synthetic_output() -> Output {
    Output {
        name: "OUTPUT0".to_string(),
        datatype: "FP32".to_string(),
        shape: vec![1, 2],
        bytes: Bytes::from_static(SYNTHETIC_OUTPUT),
    }
}

/// The sink-only stage of `percore bench --stages`: no call at all, an ok
/// result with a fixed output, ready at once, so only the sink is loaded.
pub fn synthetic(planned: Instant) -> Finished {
    let lag = micros(planned.elapsed());
    Finished {
        result: Ok(vec![synthetic_output()]),
        latency: StageLatency {
            schedule_lag_us: lag,
            end_to_end_us: Some(lag),
            ..StageLatency::default()
        },
        retries: 0,
        attempts: 0,
        compute_node: None,
    }
}

/// A job that failed before any call, with `error`: the infer-only stage when
/// its payload could not be fetched.
pub fn failed_at_once(error: JobError, planned: Instant) -> Finished {
    let lag = micros(planned.elapsed());
    Finished {
        result: Err(error),
        latency: StageLatency {
            schedule_lag_us: lag,
            end_to_end_us: Some(lag),
            ..StageLatency::default()
        },
        retries: 0,
        attempts: 0,
        compute_node: None,
    }
}

/// The Fetch of one job and its check, timing it in `latency.fetch_us`.
async fn fetch(
    route: &ClassRoute,
    device_id: &str,
    tick_ms: i64,
    deadline: Instant,
    latency: &mut StageLatency,
    tally: &mut Tally,
) -> Result<FetchResponse, JobError> {
    let fetch_started = Instant::now();
    let request = FetchRequest {
        device_id: device_id.to_owned(),
        class: route.name.clone(),
        tick_unix_ms: tick_ms,
    };
    // Timed whether it succeeds or not: a failed call's time is its time to
    // failure, which the shard keeps apart from the ok jobs' latencies.
    let fetched = call::<_, FetchResponse>(Method::Fetch, &request, deadline, route, tally).await;
    latency.fetch_us = Some(micros(fetch_started.elapsed()));
    fetched
}

/// A fetch's tensors as the model's inputs: `datatype`, `shape` and `raw` as one
/// input named by the class's `input_name`, or each of `inputs` under its own
/// name; every one checked (its bytes must fill its shape). The bytes are
/// forwarded as received: slices of the fetch response's buffer.
fn model_inputs(route: &ClassRoute, fetched: FetchResponse) -> Result<ModelInputs, JobError> {
    let bad = |detail: String| JobError::new(Stage::Fetch, ErrorKind::BadResponse(detail.into()));
    if fetched.inputs.is_empty() {
        tensor::check_raw(&fetched.datatype, &fetched.shape, &fetched.raw).map_err(bad)?;
        return Ok(ModelInputs {
            tensors: vec![InferInputTensor {
                name: route.input_name.clone(),
                datatype: fetched.datatype,
                shape: fetched.shape,
                ..Default::default()
            }],
            raw: vec![fetched.raw],
        });
    }
    let mut inputs = ModelInputs {
        tensors: Vec::with_capacity(fetched.inputs.len()),
        raw: Vec::with_capacity(fetched.inputs.len()),
    };
    for input in fetched.inputs {
        tensor::check_raw(&input.datatype, &input.shape, &input.raw)
            .map_err(|detail| bad(format!("input {:?}: {detail}", input.name)))?;
        inputs.tensors.push(InferInputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            ..Default::default()
        });
        inputs.raw.push(input.raw);
    }
    Ok(inputs)
}

/// A fetch's tensors as the model's inputs ([`model_inputs`]), held against
/// the class's model contract when there is one.
fn checked_inputs(route: &ClassRoute, fetched: FetchResponse) -> Result<ModelInputs, JobError> {
    let inputs = model_inputs(route, fetched)?;
    if let Some(contract) = route.computes.contract() {
        contract
            .check_inputs(&inputs.tensors)
            .map_err(|detail| broken_contract(route, detail))?;
    }
    Ok(inputs)
}

/// The failure of a job whose inputs or outputs break the class's contract,
/// told on the terminal the first time.
fn broken_contract(route: &ClassRoute, detail: String) -> JobError {
    route.computes.warn_contract(&detail);
    JobError::new(Stage::Infer, ErrorKind::Contract(detail.into()))
}

/// A requested output of the ModelInfer request, by name.
pub fn requested_output(name: &str) -> InferRequestedOutputTensor {
    InferRequestedOutputTensor {
        name: name.to_string(),
        parameters: HashMap::new(),
    }
}

/// A config parameter as the request carries it.
pub fn parameter(value: &Parameter) -> InferParameter {
    use crate::proto::inference::infer_parameter::ParameterChoice;
    let choice = match value {
        Parameter::Bool(value) => ParameterChoice::BoolParam(*value),
        Parameter::Int(value) => ParameterChoice::Int64Param(*value),
        Parameter::Text(value) => ParameterChoice::StringParam(value.clone()),
    };
    InferParameter {
        parameter_choice: Some(choice),
    }
}

/// A ModelInfer request's inputs: their descriptions and, in the same order,
/// their raw bytes.
#[derive(Debug, Clone)]
pub struct ModelInputs {
    /// Name, datatype and shape of each input.
    pub tensors: Vec<InferInputTensor>,
    /// Each input's little-endian bytes (`raw_input_contents`).
    pub raw: Vec<Bytes>,
}

/// The ModelInfer request of one job: the class's model, version, requested
/// outputs, parameters and (if asked for) an id naming the device and tick.
fn infer_request(
    route: &ClassRoute,
    device_id: &str,
    tick_ms: i64,
    inputs: ModelInputs,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: route.model.clone(),
        model_version: route.model_version.clone(),
        id: if route.request_id {
            format!("{device_id}@{tick_ms}")
        } else {
            String::new()
        },
        parameters: route.parameters.clone(),
        inputs: inputs.tensors,
        outputs: route.requested_outputs.clone(),
        raw_input_contents: inputs.raw,
    }
}

/// The ModelInfer of one job and the check of its outputs, timing it in
/// `latency.infer_us`.
async fn infer(
    route: &ClassRoute,
    request: &ModelInferRequest,
    deadline: Instant,
    latency: &mut StageLatency,
    tally: &mut Tally,
) -> Result<Vec<Output>, JobError> {
    let infer_started = Instant::now();
    let response =
        call::<_, ModelInferResponse>(Method::Infer, request, deadline, route, tally).await;
    latency.infer_us = Some(micros(infer_started.elapsed()));
    let outputs = tensor::outputs(response?).map_err(bad_answer)?;
    checked_outputs(route, outputs)
}

/// A ModelInfer answer that is not what the class expects.
fn bad_answer(detail: String) -> JobError {
    JobError::new(Stage::Infer, ErrorKind::BadResponse(detail.into()))
}

/// One job's outputs held against what its class asks for: every requested
/// output answered, the class's output spec, the model's contract.
fn checked_outputs(route: &ClassRoute, outputs: Vec<Output>) -> Result<Vec<Output>, JobError> {
    let bad = bad_answer;
    for requested in &route.requested_outputs {
        if !outputs.iter().any(|output| output.name == requested.name) {
            return Err(bad(format!(
                "output {:?} was asked for but not answered",
                requested.name
            )));
        }
    }
    if let Some(spec) = &route.output {
        let checked = match &spec.name {
            Some(name) => outputs.iter().find(|output| &output.name == name),
            None => outputs.first(),
        };
        match checked {
            Some(output) => spec
                .check(&output.name, &output.datatype, &output.shape)
                .map_err(bad)?,
            None => {
                let name = spec.name.as_deref().unwrap_or_default();
                return Err(bad(format!("no output named {name:?} in the answer")));
            }
        }
    }
    // After the class's own output spec, whose message is the one its
    // config asked for: the model's contract.
    if let Some(contract) = route.computes.contract() {
        contract
            .check_outputs(&outputs)
            .map_err(|detail| broken_contract(route, detail))?;
    }
    Ok(outputs)
}
