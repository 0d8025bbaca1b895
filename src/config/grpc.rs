//! `[grpc]`: the limits every gRPC call runs under (message size, connect
//! timeout, retries and their budget, HTTP/2 keepalive), each with its default.

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{ConfigError, Source};

/// Limits applied to every gRPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcConfig {
    /// Largest response message accepted; bounds the memory one job can take.
    pub max_message_bytes: usize,
    /// How long opening a connection to a node may take before trying the next.
    pub connect_timeout_ms: u64,
    /// Most extra attempts of one call that failed in a way another node might
    /// not (connect refused, connection lost, attempt timeout, a `retry_on`
    /// status), each on another replica, within the job's deadline and the retry
    /// budget. A call the node never took may go to the same node again.
    pub retries: u32,
    /// Retry budget: retries a shard may send per class, as a percentage of its
    /// calls over the last 10 s (as linkerd2 and Envoy bound them), so retries
    /// cannot multiply the load on a fleet that is already failing.
    pub retry_budget_percent: u32,
    /// Retries a shard may send per class per second whatever the budget says, so
    /// a quiet class still rides over a single failure.
    pub retry_budget_min_per_s: u32,
    /// An HTTP/2 PING is sent on a connection this often; 0 turns keepalive off.
    pub keepalive_interval_ms: u64,
    /// A connection whose PING is not answered within this is closed and its
    /// calls fail (a dead peer, a silent network partition).
    pub keepalive_timeout_ms: u64,
}

/// gRPC's own default maximum message size.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Long enough for a LAN or a loaded host, short enough to fail over within a tick.
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;
/// One more node before giving up: enough to ride over one dead replica.
const DEFAULT_RETRIES: u32 = 1;
/// Retries may add a fifth to a class's calls, as linkerd2's default budget does.
const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// Enough to ride over one failed replica at low rates.
const DEFAULT_RETRY_BUDGET_MIN_PER_S: u32 = 10;
/// Finds a dead peer within 15 s even on an idle connection.
const DEFAULT_KEEPALIVE_INTERVAL_MS: u64 = 10_000;
const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 5_000;
/// More attempts than this cannot fit a job's deadline in any useful way.
const MAX_RETRIES: u32 = 10;
/// Below this not even a small tensor with its metadata fits.
const MIN_MESSAGE_BYTES: usize = 1024;

impl Default for GrpcConfig {
    fn default() -> GrpcConfig {
        GrpcConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            retries: DEFAULT_RETRIES,
            retry_budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            retry_budget_min_per_s: DEFAULT_RETRY_BUDGET_MIN_PER_S,
            keepalive_interval_ms: DEFAULT_KEEPALIVE_INTERVAL_MS,
            keepalive_timeout_ms: DEFAULT_KEEPALIVE_TIMEOUT_MS,
        }
    }
}

// ---------------------------------------------------------------------------------
// As written.
// ---------------------------------------------------------------------------------

/// `[grpc]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrpcFile {
    /// See [`GrpcConfig::max_message_bytes`].
    #[serde(default = "default_max_message_bytes")]
    max_message_bytes: Spanned<usize>,
    /// See [`GrpcConfig::connect_timeout_ms`].
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: Spanned<u64>,
    /// See [`GrpcConfig::retries`].
    #[serde(default = "default_retries")]
    retries: Spanned<u32>,
    /// See [`GrpcConfig::retry_budget_percent`].
    retry_budget_percent: Option<Spanned<u32>>,
    /// See [`GrpcConfig::retry_budget_min_per_s`].
    retry_budget_min_per_s: Option<u32>,
    /// See [`GrpcConfig::keepalive_interval_ms`].
    keepalive_interval_ms: Option<u64>,
    /// See [`GrpcConfig::keepalive_timeout_ms`].
    keepalive_timeout_ms: Option<Spanned<u64>>,
}

impl GrpcFile {
    pub(super) fn defaults() -> GrpcFile {
        GrpcFile {
            max_message_bytes: default_max_message_bytes(),
            connect_timeout_ms: default_connect_timeout_ms(),
            retries: default_retries(),
            retry_budget_percent: None,
            retry_budget_min_per_s: None,
            keepalive_interval_ms: None,
            keepalive_timeout_ms: None,
        }
    }
}

// Defaults have no place in the file; they are valid, so their span is never shown.
fn default_max_message_bytes() -> Spanned<usize> {
    Spanned::new(0..0, DEFAULT_MAX_MESSAGE_BYTES)
}

fn default_connect_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_CONNECT_TIMEOUT_MS)
}

fn default_retries() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_RETRIES)
}

// ---------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------

impl GrpcFile {
    pub(super) fn validate(&self, source: &Source) -> Result<GrpcConfig, ConfigError> {
        let max_message_bytes = *self.max_message_bytes.get_ref();
        if max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(source.error(
                self.max_message_bytes.span(),
                "grpc.max_message_bytes",
                format!("must be at least {MIN_MESSAGE_BYTES}"),
            ));
        }
        let connect_timeout_ms = *self.connect_timeout_ms.get_ref();
        if connect_timeout_ms == 0 {
            return Err(source.error(
                self.connect_timeout_ms.span(),
                "grpc.connect_timeout_ms",
                "must be greater than 0",
            ));
        }
        let retries = *self.retries.get_ref();
        if retries > MAX_RETRIES {
            return Err(source.error(
                self.retries.span(),
                "grpc.retries",
                format!("must be at most {MAX_RETRIES}"),
            ));
        }
        let defaults = GrpcConfig::default();
        let retry_budget_percent = match &self.retry_budget_percent {
            Some(percent) if *percent.get_ref() > 100 => {
                return Err(source.error(
                    percent.span(),
                    "grpc.retry_budget_percent",
                    "must be at most 100",
                ))
            }
            Some(percent) => *percent.get_ref(),
            None => defaults.retry_budget_percent,
        };
        let keepalive_timeout_ms = match &self.keepalive_timeout_ms {
            Some(timeout) if *timeout.get_ref() == 0 => {
                return Err(source.error(
                    timeout.span(),
                    "grpc.keepalive_timeout_ms",
                    "must be greater than 0",
                ))
            }
            Some(timeout) => *timeout.get_ref(),
            None => defaults.keepalive_timeout_ms,
        };
        Ok(GrpcConfig {
            max_message_bytes,
            connect_timeout_ms,
            retries,
            retry_budget_percent,
            retry_budget_min_per_s: self
                .retry_budget_min_per_s
                .unwrap_or(defaults.retry_budget_min_per_s),
            keepalive_interval_ms: self
                .keepalive_interval_ms
                .unwrap_or(defaults.keepalive_interval_ms),
            keepalive_timeout_ms,
        })
    }
}
