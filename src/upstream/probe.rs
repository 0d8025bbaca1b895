//! Active health checks: each shard probes each of its replicas.
//!
//! A replica that is up is probed every `probe_interval` with the class's
//! health check — KServe v2 `ServerReady` then `ModelReady` for the class's model
//! (what MLServer, KServe and Triton answer), or `grpc.health.v1.Health/Check`,
//! or only a connect. A replica that is down (its connect failed, or its probe
//! said not ready) is probed again when its reconnect backoff ends, and at
//! least every 250 ms, so it is re-admitted within about a quarter of a second
//! of coming back instead of waiting for a job to find out. What a probe says is the replica's readiness: the balancer sends
//! no new calls to a replica that is not ready. Every change is logged.
//!
//! With the KServe check, the probe also reads the model's `ModelMetadata` at
//! start and on every new connection, and holds it against the class's
//! [`Contract`]: the version asked for, the outputs requested, and the declared
//! contract (or the one another replica described). A server that answers but
//! cannot serve the model — unknown to it (MLServer answers `ModelReady` with an
//! error then, others with `ready = false`), not ready, another version or
//! another contract — *refuses* the replica: jobs that find no other replica
//! fail with that reason instead of being sent there.

use std::rc::Rc;
use std::time::{Duration, Instant};

use prost::Message;

use super::set::{Admitted, ReplicaSet, Role};
use crate::config::HealthCheck;
use crate::contract::Contract;
use crate::error::ErrorKind;
use crate::grpc::methods;
use crate::grpc::status::Code;
use crate::proto::health::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};
use crate::proto::inference::{
    ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse,
    ServerReadyRequest, ServerReadyResponse,
};
use crate::runtime;

/// Largest answer a probe accepts: readiness answers are a few bytes, model
/// metadata a few kilobytes.
const PROBE_MAX_MESSAGE: usize = 64 * 1024;
/// A probe of a replica that is down waits at least this long between tries...
const MIN_DOWN_WAIT: Duration = Duration::from_millis(50);
/// ...and at most this long (or the probe interval if shorter), whatever the
/// connect backoff says: a probe is one connect per shard, not a storm, and it
/// bounds how long a replica that came back waits to be used again.
const MAX_DOWN_WAIT: Duration = Duration::from_millis(250);
/// A probe gives up after this, or after the probe interval if shorter.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Ready for calls.
    Ready,
    /// Not ready, and why (shown in the log): down, unreachable, or a server
    /// that says it is not ready as a whole.
    NotReady(String),
    /// The server answered, and cannot serve the class's model, for this
    /// reason (shown in the log and in the failed rows of jobs sent nowhere else).
    Refused(String),
}

/// The model a probe asks about (compute nodes only).
#[derive(Debug, Clone)]
pub struct ModelRef {
    /// Model name, as in ModelInfer.
    pub name: String,
    /// Model version asked for; empty lets the server choose.
    pub version: String,
    /// The outputs the class asks for, which the metadata must list.
    pub requested_outputs: Vec<String>,
}

/// Probes replica `index` of `set` until `stopped` says so. Runs as a task on
/// the shard that owns the set.
pub async fn run(
    set: Rc<ReplicaSet>,
    index: usize,
    model: Rc<ModelRef>,
    stopped: Rc<std::cell::Cell<bool>>,
) {
    // The first probe goes out at once, so a replica that is down at start-up
    // is known before the first ticks.
    let mut wait = Duration::ZERO;
    // Probes are logged when what they say changes; the first "ready" is not news.
    let mut last = Probe::Ready;
    // The connection generation whose ModelMetadata was read and admitted: a
    // new connection (the node may have restarted with another model) reads it
    // again, and so does a replica that was not ready.
    let mut metadata_read: Option<u64> = None;
    loop {
        runtime::sleep(wait).await;
        if stopped.get() {
            return;
        }
        let replica = set.replica(index);
        let timeout = set.probe_interval.min(MAX_PROBE_TIMEOUT);
        let found = runtime::until_deadline(
            Instant::now() + timeout,
            probe_once(&set, index, &model, &mut metadata_read),
        )
        .await
        .unwrap_or_else(|| {
            Probe::NotReady(format!(
                "no answer to the probe within {} ms",
                timeout.as_millis()
            ))
        });
        match &found {
            Probe::Ready => replica.health.set_ready(true),
            Probe::NotReady(_) => replica.health.set_ready(false),
            Probe::Refused(why) => replica.health.set_refused(why),
        }
        if found != Probe::Ready {
            metadata_read = None;
        }
        if found != last {
            let what = match &found {
                Probe::Ready => "is ready again".to_string(),
                Probe::NotReady(why) => format!("is not ready: {why}"),
                Probe::Refused(why) => {
                    format!(
                        "is not ready: it cannot serve model {:?}: {why}",
                        model.name
                    )
                }
            };
            crate::console::err(format_args!(
                "percore: shard {}: {} {} of class {:?} {what}",
                set.shard(),
                set.role().as_str(),
                replica.node(),
                set.class(),
            ));
            last = found.clone();
        }
        wait = match found {
            Probe::Ready => set.probe_interval,
            Probe::NotReady(_) | Probe::Refused(_) => {
                let now = Instant::now();
                replica
                    .pool
                    .backoff_ends()
                    .map_or(MIN_DOWN_WAIT, |ends| ends.saturating_duration_since(now))
                    .min(set.probe_interval.min(MAX_DOWN_WAIT))
                    // Never spin: at least MIN_DOWN_WAIT, even with a shorter
                    // probe interval configured.
                    .max(MIN_DOWN_WAIT)
            }
        };
    }
}

/// One probe: connect if needed, then the class's health check (and the
/// model's metadata, when not yet read on this connection).
async fn probe_once(
    set: &ReplicaSet,
    index: usize,
    model: &ModelRef,
    metadata_read: &mut Option<u64>,
) -> Probe {
    let pool = &set.replica(index).pool;
    if let Err(cause) = pool.reconnect().await {
        return Probe::NotReady(format!("cannot connect: {cause}"));
    }
    // Data sources have no readiness call of their own in percore's protocol.
    let check = match set.role() {
        Role::DataSource => &HealthCheck::None,
        Role::ComputeNode => &set.health_check,
    };
    match check {
        HealthCheck::None => Probe::Ready,
        HealthCheck::Kserve => {
            let server: Result<ServerReadyResponse, _> =
                call(set, index, methods::SERVER_READY, &ServerReadyRequest {}).await;
            match server {
                Ok(answer) if !answer.ready => {
                    return Probe::NotReady("ServerReady answered false".into())
                }
                Ok(_) | Err(Unimplemented) => {}
                Err(Answered(why) | Failed(why)) => {
                    return Probe::NotReady(format!("ServerReady: {why}"))
                }
            }
            let request = ModelReadyRequest {
                name: model.name.clone(),
                version: model.version.clone(),
            };
            let answer: Result<ModelReadyResponse, _> =
                call(set, index, methods::MODEL_READY, &request).await;
            let asked = model_named(model);
            match answer {
                Ok(answer) if answer.ready => {}
                Ok(_) => return Probe::Refused(format!("ModelReady for {asked} answered false")),
                // A server without the readiness API is as ready as it is reachable.
                Err(Unimplemented) => {}
                Err(Answered(why)) => {
                    return Probe::Refused(format!("ModelReady for {asked}: {why}"))
                }
                Err(Failed(why)) => {
                    return Probe::NotReady(format!("ModelReady for {asked}: {why}"))
                }
            }
            if set.reads_metadata {
                let generation = set.replica(index).pool.generation();
                if *metadata_read != Some(generation) {
                    if let Some(refused) = read_metadata(set, index, model).await {
                        return refused;
                    }
                    *metadata_read = Some(generation);
                }
            }
            Probe::Ready
        }
        HealthCheck::Grpc { service } => {
            let request = HealthCheckRequest {
                service: service.clone(),
            };
            let answer: Result<HealthCheckResponse, _> =
                call(set, index, methods::HEALTH_CHECK, &request).await;
            match answer {
                Ok(answer) if answer.status == ServingStatus::Serving as i32 => Probe::Ready,
                Ok(answer) => Probe::NotReady(format!(
                    "Health/Check says {}",
                    ServingStatus::try_from(answer.status)
                        .map_or("an unknown status", |status| status.as_str_name())
                )),
                Err(Unimplemented) => Probe::Ready,
                Err(Answered(why) | Failed(why)) => Probe::NotReady(format!("Health/Check: {why}")),
            }
        }
    }
}

/// `"rowstats"`, or `"rowstats" version "2"` when the class names a version.
fn model_named(model: &ModelRef) -> String {
    if model.version.is_empty() {
        format!("{:?}", model.name)
    } else {
        format!("{:?} version {:?}", model.name, model.version)
    }
}

/// Reads replica `index`'s `ModelMetadata` and admits it into the set's
/// contract; `None` when it fits (or the server has no metadata call), else
/// the probe's verdict.
async fn read_metadata(set: &ReplicaSet, index: usize, model: &ModelRef) -> Option<Probe> {
    let request = ModelMetadataRequest {
        name: model.name.clone(),
        version: model.version.clone(),
    };
    let answer: Result<ModelMetadataResponse, _> =
        call(set, index, methods::MODEL_METADATA, &request).await;
    let asked = model_named(model);
    let metadata = match answer {
        Ok(metadata) => metadata,
        Err(Unimplemented) => return None,
        Err(Answered(why)) => {
            return Some(Probe::Refused(format!("ModelMetadata for {asked}: {why}")))
        }
        Err(Failed(why)) => {
            return Some(Probe::NotReady(format!("ModelMetadata for {asked}: {why}")))
        }
    };
    let node = set.replica(index).node();
    let served = Contract::from_metadata(&metadata, node.clone());
    if let Err(why) = served.serves(&model.version, &model.requested_outputs) {
        return Some(Probe::Refused(why));
    }
    let described = served.describe();
    match set.admit_metadata(index, served) {
        Err(why) => Some(Probe::Refused(format!(
            "its ModelMetadata does not fit the class: {why}"
        ))),
        Ok(Admitted::Learned) => {
            // Every shard learns it; one line says it.
            if set.shard() == 0 {
                crate::console::err(format_args!(
                    "percore: class {:?}: model {asked} as ModelMetadata of {node} describes it: {described}",
                    set.class(),
                ));
            }
            None
        }
        Ok(Admitted::Agrees) => None,
    }
}

/// Why a probe call gave no answer.
enum ProbeError {
    /// The server does not implement the method.
    Unimplemented,
    /// The server answered with another error status: it is up, and says no.
    Answered(String),
    /// No answer (connection, deadline, protocol), as text for the log.
    Failed(String),
}
use ProbeError::{Answered, Failed, Unimplemented};

async fn call<Req: Message, Resp: Message + Default>(
    set: &ReplicaSet,
    index: usize,
    path: &str,
    request: &Req,
) -> Result<Resp, ProbeError> {
    let pool = &set.replica(index).pool;
    let connection = pool
        .connection()
        .await
        .map_err(|kind| Failed(kind.to_string()))?;
    let deadline = Instant::now() + set.probe_interval.min(MAX_PROBE_TIMEOUT);
    connection
        .unary_with(
            &pool.uri(path),
            request,
            deadline,
            PROBE_MAX_MESSAGE,
            &set.metadata,
        )
        .await
        .map_err(|kind| match kind {
            ErrorKind::Status { code, .. } if code == Code::UNIMPLEMENTED => Unimplemented,
            status @ ErrorKind::Status { .. } => Answered(status.to_string()),
            other => Failed(other.to_string()),
        })
}
