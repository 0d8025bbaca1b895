//! The readiness checks `percore announce` makes of the node it registers, with
//! tonic on the announcer's tokio runtime — the same questions the shards' probes
//! ask ([`crate::upstream::probe`]), which run on glommio and so cannot run here.

use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use crate::grpc::methods;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::inference::{
    ModelReadyRequest, ModelReadyResponse, ServerReadyRequest, ServerReadyResponse,
};

/// Which question makes a node ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// KServe v2 `ServerReady`, then `ModelReady` for the model when one is named.
    Kserve {
        /// The model whose readiness counts, if any.
        model: Option<String>,
    },
    /// `grpc.health.v1.Health/Check` for this service ("" = the server).
    Grpc {
        /// The service name asked about.
        service: String,
    },
    /// Only that a TCP connection opens.
    Connect,
}

impl Check {
    /// How it is named on the command line, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Check::Kserve { .. } => "kserve",
            Check::Grpc { .. } => "grpc",
            Check::Connect => "none",
        }
    }
}

/// A node to check, with its connection kept between checks.
pub struct Node {
    /// `host:port`.
    addr: String,
    /// The gRPC channel (connects on first use, again after a failure).
    channel: Channel,
    /// The question.
    check: Check,
    /// Bound on one check.
    timeout: Duration,
}

impl Node {
    /// A node at `addr` (`host:port`); must be made inside a tokio runtime.
    pub fn new(addr: &str, check: Check, timeout: Duration) -> Result<Node, String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|error| format!("--addr {addr:?}: {error}"))?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        Ok(Node {
            addr: addr.to_string(),
            channel: endpoint.connect_lazy(),
            check,
            timeout,
        })
    }

    /// `Ok` when the node is ready; else why not.
    pub async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.ask()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    async fn ask(&self) -> Result<(), String> {
        match &self.check {
            Check::Connect => tokio::net::TcpStream::connect(&self.addr)
                .await
                .map(drop)
                .map_err(|error| format!("cannot connect: {error}")),
            Check::Kserve { model } => {
                let server: Result<ServerReadyResponse, _> = self
                    .call(methods::SERVER_READY, ServerReadyRequest {})
                    .await;
                match server {
                    Ok(answer) if !answer.ready => return Err("ServerReady answered false".into()),
                    Ok(_) => {}
                    Err(status) if status.code() == tonic::Code::Unimplemented => {}
                    Err(status) => return Err(format!("ServerReady: {}", describe(&status))),
                }
                let Some(model) = model else { return Ok(()) };
                let request = ModelReadyRequest {
                    name: model.clone(),
                    version: String::new(),
                };
                let answer: Result<ModelReadyResponse, _> =
                    self.call(methods::MODEL_READY, request).await;
                match answer {
                    Ok(answer) if answer.ready => Ok(()),
                    Ok(_) => Err(format!("ModelReady for {model:?} answered false")),
                    Err(status) if status.code() == tonic::Code::Unimplemented => Ok(()),
                    Err(status) => Err(format!("ModelReady for {model:?}: {}", describe(&status))),
                }
            }
            Check::Grpc { service } => {
                let request = HealthCheckRequest {
                    service: service.clone(),
                };
                let answer: Result<HealthCheckResponse, _> =
                    self.call(methods::HEALTH_CHECK, request).await;
                match answer {
                    Ok(answer) if answer.status == ServingStatus::Serving as i32 => Ok(()),
                    Ok(answer) => Err(format!(
                        "Health/Check says {}",
                        ServingStatus::try_from(answer.status)
                            .map_or("an unknown status", |status| status.as_str_name())
                    )),
                    Err(status) if status.code() == tonic::Code::Unimplemented => Ok(()),
                    Err(status) => Err(format!("Health/Check: {}", describe(&status))),
                }
            }
        }
    }

    /// One unary call of `path`.
    async fn call<Q, R>(&self, path: &'static str, request: Q) -> Result<R, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|error| tonic::Status::unavailable(format!("cannot connect: {error}")))?;
        let codec = tonic_prost::ProstCodec::<Q, R>::default();
        grpc.unary(
            tonic::Request::new(request),
            PathAndQuery::from_static(path),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
    }
}

/// A status in words: its code, and its message when it has one.
fn describe(status: &tonic::Status) -> String {
    match status.message() {
        "" => format!("{:?}", status.code()),
        message => format!("{:?}: {message}", status.code()),
    }
}
