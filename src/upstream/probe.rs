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

use std::rc::Rc;
use std::time::{Duration, Instant};

use prost::Message;

use super::set::{ReplicaSet, Role};
use crate::config::HealthCheck;
use crate::error::ErrorKind;
use crate::grpc::methods;
use crate::grpc::status::Code;
use crate::proto::health::{
    health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
};
use crate::proto::inference::{
    ModelReadyRequest, ModelReadyResponse, ServerReadyRequest, ServerReadyResponse,
};
use crate::runtime;

/// Largest answer a probe accepts: readiness answers are a few bytes.
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
    /// Not ready, and why (shown in the log).
    NotReady(String),
}

/// The model a probe asks about (compute nodes only).
#[derive(Debug, Clone)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
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
    loop {
        runtime::sleep(wait).await;
        if stopped.get() {
            return;
        }
        let replica = set.replica(index);
        let timeout = set.probe_interval.min(MAX_PROBE_TIMEOUT);
        let found =
            runtime::until_deadline(Instant::now() + timeout, probe_once(&set, index, &model))
                .await
                .unwrap_or_else(|| {
                    Probe::NotReady(format!(
                        "no answer to the probe within {} ms",
                        timeout.as_millis()
                    ))
                });
        replica.health.set_ready(found == Probe::Ready);
        if found != last {
            let what = match &found {
                Probe::Ready => "is ready again".to_string(),
                Probe::NotReady(why) => format!("is not ready: {why}"),
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
            Probe::NotReady(_) => {
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

/// One probe: connect if needed, then the class's health check.
async fn probe_once(set: &ReplicaSet, index: usize, model: &ModelRef) -> Probe {
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
                Err(Failed(why)) => return Probe::NotReady(format!("ServerReady: {why}")),
            }
            let request = ModelReadyRequest {
                name: model.name.clone(),
                version: model.version.clone(),
            };
            let answer: Result<ModelReadyResponse, _> =
                call(set, index, methods::MODEL_READY, &request).await;
            match answer {
                Ok(answer) if answer.ready => Probe::Ready,
                Ok(_) => Probe::NotReady(format!("ModelReady for {:?} answered false", model.name)),
                // A server without the readiness API is as ready as it is reachable.
                Err(Unimplemented) => Probe::Ready,
                Err(Failed(why)) => {
                    Probe::NotReady(format!("ModelReady for {:?}: {why}", model.name))
                }
            }
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
                Err(Failed(why)) => Probe::NotReady(format!("Health/Check: {why}")),
            }
        }
    }
}

/// Why a probe call gave no answer.
enum ProbeError {
    /// The server does not implement the method.
    Unimplemented,
    /// Anything else, as text for the log.
    Failed(String),
}
use ProbeError::{Failed, Unimplemented};

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
        .unary(&pool.uri(path), request, deadline, PROBE_MAX_MESSAGE)
        .await
        .map_err(|kind| match kind {
            ErrorKind::Status { code, .. } if code == Code::UNIMPLEMENTED => Unimplemented,
            other => Failed(other.to_string()),
        })
}
