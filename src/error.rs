//! Error taxonomy.
//!
//! Two families, kept apart on purpose:
//! - [`JobError`]: why one job failed at run time. Built on the shard, stored in the
//!   job's row; a small enum with the stage that failed and whether a retry could
//!   help, in the manner of pingora's `ErrorType` + `ErrorSource`.
//! - Start-up errors (config, device list, tuning) are [`ConfigError`](crate::config::ConfigError)s
//!   that name the file, line and field; the binary wraps them in `anyhow` at its edge.

use std::sync::Arc;
use std::time::Duration;

use crate::grpc::status::Code;

/// Which call of a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The data-source `Fetch` call.
    Fetch,
    /// The compute node's `ModelInfer` call.
    Infer,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Infer => "infer",
        }
    }
}

/// Why one job failed. `Display` gives the text written to the row's `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// The call that failed.
    pub stage: Stage,
    /// What went wrong.
    pub kind: ErrorKind,
}

/// What went wrong in one call; the variants are the cases an operator acts on differently.
/// A `node` is the endpoint as the config writes it (`host:port`), the
/// shard's own copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection to the node could be opened (refused, unreachable, timed out).
    Connect { node: Arc<str>, cause: ConnectError },
    /// An open connection broke, or the peer reset the stream, mid-call.
    ConnectionLost { node: Arc<str>, detail: Box<str> },
    /// The node did not take the call: its connection was closing (GOAWAY) or
    /// broke before the request went out, or it refused the stream. Nothing was
    /// processed, so the call may be sent again, to this node too.
    Refused { node: Arc<str>, detail: Box<str> },
    /// The job's deadline passed before the call answered.
    DeadlineExceeded,
    /// One attempt took longer than the class's `attempt_timeout_ms` and was
    /// abandoned (its stream reset); another replica may be faster.
    AttemptTimeout { node: Arc<str>, after_ms: u64 },
    /// No replica of the class could take the call: every one is ejected, not
    /// ready or at its outstanding limit on this shard.
    NoReplica(&'static str),
    /// The server answered with a non-OK gRPC status.
    Status { code: Code, message: Box<str> },
    /// The response message is larger than the configured maximum.
    MessageTooLarge { len: usize, max: usize },
    /// The response broke the gRPC-over-HTTP/2 rules (bad framing, HTTP status, no
    /// grpc-status, truncated body).
    Protocol(Box<str>),
    /// The response message did not decode as the expected protobuf.
    Decode(Box<str>),
    /// The response decoded but its content is not what the class expects
    /// (wrong datatype, wrong shape, missing tensor).
    BadResponse(Box<str>),
    /// No replica can serve the class's model: the one picked last is up but
    /// its server said, at its last probe, that it cannot (the model unknown
    /// or not ready, another version, a contract that does not fit). The call
    /// was not sent.
    ModelUnavailable { node: Arc<str>, reason: Box<str> },
    /// What the job would send, or what the model answered, breaks the class's
    /// model contract (see [`crate::contract`]).
    Contract(Box<str>),
}

/// Why a connection to a node could not be opened. The text goes into the
/// reasons of the calls that needed it, so it names the step that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable, reset).
    Tcp(std::io::ErrorKind),
    /// Connect plus handshake took longer than the connect timeout.
    TimedOut(Duration),
    /// The endpoint's host name did not resolve (looked up at every connect).
    Resolve(String),
    /// TCP connected but TLS failed: the handshake (the server's certificate,
    /// a client certificate it refused, no ALPN `h2`), or a TLS alert on the
    /// first read; the text is rustls's reason and what it means.
    Tls(String),
    /// TCP connected but the HTTP/2 handshake failed: the peer is not an HTTP/2
    /// server (an HTTP/1.1 port, TLS expected) or it closed the connection.
    Handshake(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Tcp(kind) => write!(f, "{kind}"),
            ConnectError::TimedOut(after) => {
                write!(f, "no HTTP/2 connection within {} ms", after.as_millis())
            }
            ConnectError::Resolve(detail) => f.write_str(detail),
            ConnectError::Tls(detail) => write!(f, "TLS: {detail}"),
            ConnectError::Handshake(detail) => {
                write!(f, "the peer does not speak HTTP/2 ({detail})")
            }
        }
    }
}

impl JobError {
    pub fn new(stage: Stage, kind: ErrorKind) -> JobError {
        JobError { stage, kind }
    }

    /// Whether the call is known not to have been processed, so sending it again
    /// to the same node is as safe as to another.
    pub fn was_not_sent(&self) -> bool {
        matches!(self.kind, ErrorKind::Refused { .. })
    }

    /// Whether trying the same call again on another node could succeed: a
    /// broken or refused connection, an attempt timeout, or a status in
    /// `retry_on` (the class's list).
    pub fn is_retryable(&self, retry_on: &[Code]) -> bool {
        self.kind.is_retryable(retry_on)
    }
}

impl ErrorKind {
    /// See [`JobError::is_retryable`].
    pub fn is_retryable(&self, retry_on: &[Code]) -> bool {
        match self {
            ErrorKind::Connect { .. }
            | ErrorKind::ConnectionLost { .. }
            | ErrorKind::Refused { .. }
            | ErrorKind::AttemptTimeout { .. } => true,
            ErrorKind::Status { code, .. } => retry_on.contains(code),
            _ => false,
        }
    }

    /// Whether the node answered the call (with any status or content), as
    /// opposed to the call never reaching an answer.
    pub fn node_answered(&self) -> bool {
        matches!(
            self,
            ErrorKind::Status { .. }
                | ErrorKind::MessageTooLarge { .. }
                | ErrorKind::Decode(_)
                | ErrorKind::BadResponse(_)
        )
    }

    /// Whether this outcome counts against the replica's health: the node (or
    /// the way to it) failed, not the content of a call it served. A status a
    /// healthy node gives for a bad request (NOT_FOUND, INVALID_ARGUMENT) does
    /// not eject it.
    pub fn is_replica_failure(&self) -> bool {
        match self {
            ErrorKind::Connect { .. }
            | ErrorKind::ConnectionLost { .. }
            | ErrorKind::AttemptTimeout { .. }
            | ErrorKind::DeadlineExceeded
            | ErrorKind::Protocol(_)
            | ErrorKind::MessageTooLarge { .. }
            | ErrorKind::Decode(_) => true,
            ErrorKind::Status { code, .. } => matches!(
                *code,
                Code::UNAVAILABLE
                    | Code::RESOURCE_EXHAUSTED
                    | Code::INTERNAL
                    | Code::UNKNOWN
                    | Code::CANCELLED
                    | Code::DEADLINE_EXCEEDED
            ),
            ErrorKind::Refused { .. }
            | ErrorKind::NoReplica(_)
            | ErrorKind::BadResponse(_)
            | ErrorKind::ModelUnavailable { .. }
            | ErrorKind::Contract(_) => false,
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage.as_str(), self.kind)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorKind::Connect { node, cause } => write!(f, "connect error to {node}: {cause}"),
            ErrorKind::ConnectionLost { node, detail } => {
                write!(f, "connection to {node} lost: {detail}")
            }
            ErrorKind::Refused { node, detail } => {
                write!(f, "{node} did not take the call: {detail}")
            }
            ErrorKind::DeadlineExceeded => f.write_str("deadline exceeded"),
            ErrorKind::AttemptTimeout { node, after_ms } => {
                write!(
                    f,
                    "{node} did not answer within the attempt timeout of {after_ms} ms"
                )
            }
            ErrorKind::NoReplica(why) => write!(f, "no replica available: {why}"),
            ErrorKind::Status { code, message } if message.is_empty() => {
                write!(f, "grpc status {code}")
            }
            ErrorKind::Status { code, message } => write!(f, "grpc status {code}: {message}"),
            ErrorKind::MessageTooLarge { len, max } => {
                write!(
                    f,
                    "response of {len} bytes exceeds the maximum message size of {max} bytes"
                )
            }
            ErrorKind::Protocol(detail) => write!(f, "protocol error: {detail}"),
            ErrorKind::Decode(detail) => write!(f, "undecodable response: {detail}"),
            ErrorKind::BadResponse(detail) => write!(f, "bad response: {detail}"),
            ErrorKind::ModelUnavailable { node, reason } => {
                write!(f, "model unavailable on {node}: {reason}")
            }
            ErrorKind::Contract(detail) => write!(f, "model contract: {detail}"),
        }
    }
}

impl std::error::Error for JobError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_stage_and_cause() {
        let error = JobError::new(
            Stage::Infer,
            ErrorKind::Status {
                code: Code::INTERNAL,
                message: "boom".into(),
            },
        );
        assert_eq!(error.to_string(), "infer: grpc status 13 INTERNAL: boom");
        assert!(!error.is_retryable(&[Code::UNAVAILABLE]));
        assert!(error.is_retryable(&[Code::INTERNAL]));
        let error = JobError::new(Stage::Fetch, ErrorKind::DeadlineExceeded);
        assert_eq!(error.to_string(), "fetch: deadline exceeded");
    }
}
