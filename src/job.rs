//! One job: fetch a device's data, run it through its class's model, check the
//! result.
//!
//! Runs as a task on the shard that owns the device. Both calls share one
//! deadline, counted from the job's start; whichever call is in progress when it
//! passes is abandoned (its stream reset) and named in the failure. Every path ends
//! in a [`JobRecord`]: a job never panics and is never lost.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::config::OutputSpec;
use crate::error::{ErrorKind, JobError, Stage};
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::{ModelInferRequest, ModelInferResponse};
use crate::proto::source::{FetchRequest, FetchResponse};
use crate::record::StageLatency;
use crate::runtime;
use crate::tensor;
use crate::upstream::{Balancer, NodePool};

/// Everything a job needs to know about its device's class, on one shard (built
/// and owned by that shard).
pub struct ClassRoute {
    /// Class name, sent to the data source.
    pub name: String,
    /// Model name for ModelInfer.
    pub model: String,
    /// Model version for ModelInfer; empty lets the server choose.
    pub model_version: String,
    /// Name of the model's input tensor.
    pub input_name: String,
    /// Time allowed for one job, from its start.
    pub deadline: Duration,
    /// What the output must look like, if the config says.
    pub output: Option<OutputSpec>,
    /// This shard's pools for the class's data sources, taken in turn.
    pub sources: Balancer,
    /// This shard's pools for the class's compute nodes, taken in turn.
    pub computes: Balancer,
    /// Largest response message accepted.
    pub max_message_len: usize,
    /// Extra attempts of a retryable call on the class's next node.
    pub retries: u32,
}

/// The result of a job that ran: its output or why it failed, and its timings.
pub struct Finished {
    /// The output tensor's bytes, or why the job failed.
    pub result: Result<Bytes, JobError>,
    /// Per-stage timings of this job.
    pub latency: StageLatency,
    /// Calls made again on another node after a retryable failure.
    pub retries: u32,
}

/// Which method of a node a call goes to.
#[derive(Debug, Clone, Copy)]
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
    let mut retries = 0;
    let result = fetch_and_infer(
        route,
        device_id,
        tick_ms,
        deadline,
        &mut latency,
        &mut retries,
    )
    .await;
    latency.end_to_end_us = Some(micros(planned.elapsed()));
    Finished {
        result,
        latency,
        retries,
    }
}

async fn fetch_and_infer(
    route: &ClassRoute,
    device_id: &str,
    tick_ms: i64,
    deadline: Instant,
    latency: &mut StageLatency,
    retries: &mut u32,
) -> Result<Bytes, JobError> {
    let fetch_started = Instant::now();
    let request = FetchRequest {
        device_id: device_id.to_owned(),
        class: route.name.clone(),
        tick_unix_ms: tick_ms,
    };
    let fetched: FetchResponse = call(Method::Fetch, &request, deadline, route, retries).await?;
    latency.fetch_us = Some(micros(fetch_started.elapsed()));
    tensor::check_raw(&fetched.datatype, &fetched.shape, &fetched.raw)
        .map_err(|detail| JobError::new(Stage::Fetch, ErrorKind::BadResponse(detail.into())))?;

    let infer_started = Instant::now();
    let request = ModelInferRequest {
        model_name: route.model.clone(),
        model_version: route.model_version.clone(),
        inputs: vec![InferInputTensor {
            name: route.input_name.clone(),
            datatype: fetched.datatype,
            shape: fetched.shape,
            ..Default::default()
        }],
        // Forwarded as received: a slice of the fetch response's buffer.
        raw_input_contents: vec![fetched.raw],
        ..Default::default()
    };
    let response: ModelInferResponse =
        call(Method::Infer, &request, deadline, route, retries).await?;
    latency.infer_us = Some(micros(infer_started.elapsed()));

    let bad = |detail: String| JobError::new(Stage::Infer, ErrorKind::BadResponse(detail.into()));
    let output = tensor::first_output(response).map_err(bad)?;
    if let Some(spec) = &route.output {
        spec.check(&output.name, &output.datatype, &output.shape)
            .map_err(bad)?;
    }
    Ok(output.bytes)
}

/// One unary call on the class's next node, with the job's deadline around
/// connecting and calling. A failure another node might not have (connect refused,
/// connection lost, UNAVAILABLE) is tried again on the next node, up to
/// `route.retries` times, while the deadline allows and the class has another node;
/// a call the node never took (its connection was going away) may go to the same
/// node again, on a fresh connection.
async fn call<Req: Message, Resp: Message + Default>(
    method: Method,
    request: &Req,
    deadline: Instant,
    route: &ClassRoute,
    retries: &mut u32,
) -> Result<Resp, JobError> {
    let (balancer, stage) = match method {
        Method::Fetch => (&route.sources, Stage::Fetch),
        Method::Infer => (&route.computes, Stage::Infer),
    };
    let can_fail_over = balancer.pools().len() > 1;
    let mut attempts_left = route.retries;
    loop {
        let pool = balancer.pick();
        let result = attempt(pool, method, request, deadline, route.max_message_len).await;
        match result {
            Err(kind) => {
                let error = JobError::new(stage, kind);
                if error.is_retryable()
                    && (can_fail_over || error.was_not_sent())
                    && attempts_left > 0
                    && Instant::now() < deadline
                {
                    attempts_left -= 1;
                    *retries += 1;
                    continue;
                }
                return Err(error);
            }
            Ok(response) => return Ok(response),
        }
    }
}

/// One attempt on one node.
async fn attempt<Req: Message, Resp: Message + Default>(
    pool: &Rc<NodePool>,
    method: Method,
    request: &Req,
    deadline: Instant,
    max_message_len: usize,
) -> Result<Resp, ErrorKind> {
    let uri = match method {
        Method::Fetch => pool.fetch_uri(),
        Method::Infer => pool.infer_uri(),
    };
    let call = async {
        let connection = pool.connection().await?;
        connection
            .unary(uri, request, deadline, max_message_len)
            .await
    };
    runtime::until_deadline(deadline, call)
        .await
        .unwrap_or(Err(ErrorKind::DeadlineExceeded))
}
