//! `[classes.upstream]`: how a class's calls are spread over its replicas and what
//! happens when one fails, is slow or goes away.
//!
//! Every key is optional; the defaults are what a production fleet wants (P2C over
//! peak-EWMA latency, KServe readiness probes, retries of UNAVAILABLE,
//! RESOURCE_EXHAUSTED and CANCELLED within the `[grpc]` retry budget, outlier
//! ejection after 5 failures in a row or half the calls failing). The runtime
//! [`Upstream`] is plain data the shards build their replica sets from.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{ConfigError, Source};
use crate::endpoint::Endpoint;
use crate::grpc::status::Code;

/// How a class's calls are balanced, bounded, retried, hedged and health-checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Which algorithm picks the replica for a call.
    pub balancer: BalancerKind,
    /// Relative weight of each compute node, in the order of `compute_nodes`
    /// (empty: all 1). A replica of weight 2 looks half as loaded to P2C and
    /// comes up twice per round in round-robin.
    pub weights: Vec<u32>,
    /// Calls one shard may have outstanding on one replica. When every replica
    /// of the class is full, due ticks are skipped with the reason instead of
    /// queueing without bound.
    pub max_outstanding_per_replica: usize,
    /// Time one attempt may take before it is abandoned and, if the job's
    /// deadline and the budget allow, tried on another replica; `None` = the
    /// job's remaining deadline.
    pub attempt_timeout: Option<Duration>,
    /// gRPC status codes that make an attempt worth trying on another replica.
    /// Broken connections, refused streams and attempt timeouts always are.
    pub retry_on: Vec<Code>,
    /// When to send a second attempt to another replica while the first is slow.
    pub hedge: Option<Hedge>,
    /// Active checks of each compute node.
    pub health_check: HealthCheck,
    /// Time between two probes of a replica that is up; a replica that is down
    /// is probed on its reconnect backoff instead, so it returns quickly.
    pub probe_interval: Duration,
    /// When a failing replica is taken out of a shard's set, and for how long.
    pub ejection: Ejection,
}

/// The replica-picking algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    /// Each replica in turn (weighted), passing over unavailable ones.
    RoundRobin,
    /// Power of two choices: two random available replicas, the one with the
    /// lower peak-EWMA latency × (outstanding + 1) / weight wins.
    PowerOfTwoChoices,
}

/// When a hedged (second) attempt starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hedge {
    /// A fixed delay after the first attempt started.
    After(Duration),
    /// When the first attempt has taken longer than this percentile (0–100,
    /// exclusive) of the class's recent attempt latencies on this shard.
    Percentile(f64),
}

/// Which call a probe makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// KServe v2 `ServerReady` then `ModelReady` for the class's model: what
    /// MLServer, KServe and Triton answer.
    Kserve,
    /// `grpc.health.v1.Health/Check` for this service name (empty = the server).
    Grpc { service: String },
    /// No active probe: only connect success and call outcomes count.
    None,
}

/// Outlier ejection: when a replica leaves a shard's set for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct Ejection {
    /// Failed calls in a row that eject a replica (0 = never by this rule).
    pub consecutive_failures: u32,
    /// Share of failed calls in one window that ejects a replica (1.0 or more =
    /// never by this rule).
    pub failure_rate: f64,
    /// Calls a window needs before its failure rate counts.
    pub min_requests: u32,
    /// Length of the failure-rate window.
    pub window: Duration,
    /// The first ejection's length; each ejection in a row doubles it.
    pub base_time: Duration,
    /// The longest an ejection lasts.
    pub max_time: Duration,
    /// At most this share (0–100) of a class's replicas is ejected at once;
    /// at least one replica always stays in.
    pub max_ejected_percent: u32,
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream {
            balancer: BalancerKind::PowerOfTwoChoices,
            weights: Vec::new(),
            max_outstanding_per_replica: DEFAULT_MAX_OUTSTANDING,
            attempt_timeout: None,
            retry_on: DEFAULT_RETRY_ON.to_vec(),
            hedge: None,
            health_check: HealthCheck::Kserve,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            ejection: Ejection::default(),
        }
    }
}

impl Default for Ejection {
    fn default() -> Ejection {
        Ejection {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(2),
            base_time: Duration::from_secs(1),
            max_time: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

impl Upstream {
    /// The weight of compute node `index` (1 when none was configured).
    pub fn weight(&self, index: usize) -> u32 {
        self.weights.get(index).copied().unwrap_or(1)
    }
}

/// As many calls per replica per shard as the mocks and most servers allow
/// streams per connection: the bound only bites when a replica is stuck.
const DEFAULT_MAX_OUTSTANDING: usize = 1024;
/// A server that is overloaded or draining says so with these.
const DEFAULT_RETRY_ON: [Code; 3] = [Code::UNAVAILABLE, Code::RESOURCE_EXHAUSTED, Code::CANCELLED];
/// Once a second: a model that turns not ready stops getting traffic within it.
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// `[classes.upstream]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    /// `"p2c"` or `"round_robin"`.
    balancer: Option<Spanned<String>>,
    /// `{ "host:port" = weight }`, keys as written in `compute_nodes`.
    weights: Option<BTreeMap<Spanned<String>, Spanned<u32>>>,
    max_outstanding_per_replica: Option<Spanned<usize>>,
    attempt_timeout_ms: Option<Spanned<u64>>,
    /// Status code names, e.g. `["UNAVAILABLE"]`.
    retry_on: Option<Vec<Spanned<String>>>,
    hedge_after_ms: Option<Spanned<u64>>,
    hedge_percentile: Option<Spanned<f64>>,
    /// `"kserve"`, `"grpc"` or `"none"`.
    health_check: Option<Spanned<String>>,
    /// Service name for `health_check = "grpc"`.
    health_service: Option<Spanned<String>>,
    probe_interval_ms: Option<Spanned<u64>>,
    ejection: Option<EjectionFile>,
}

/// `[classes.upstream.ejection]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EjectionFile {
    consecutive_failures: Option<u32>,
    failure_rate: Option<Spanned<f64>>,
    min_requests: Option<u32>,
    window_ms: Option<Spanned<u64>>,
    base_ms: Option<Spanned<u64>>,
    max_ms: Option<Spanned<u64>>,
    max_ejected_percent: Option<Spanned<u32>>,
}

impl UpstreamFile {
    /// `compute_nodes` are the class's nodes as written and as endpoints, so
    /// weights can name them the way the file does (or as `host:port`).
    pub(super) fn validate(
        &self,
        prefix: &str,
        compute_nodes: &[(String, Endpoint)],
        deadline: Duration,
        source: &Source,
    ) -> Result<Upstream, ConfigError> {
        let field = |name: &str| format!("{prefix}.{name}");
        let mut upstream = Upstream::default();
        if let Some(balancer) = &self.balancer {
            upstream.balancer = match balancer.get_ref().as_str() {
                "p2c" => BalancerKind::PowerOfTwoChoices,
                "round_robin" => BalancerKind::RoundRobin,
                other => {
                    return Err(source.error(
                        balancer.span(),
                        field("balancer"),
                        format!("unknown balancer {other:?} (expected \"p2c\" or \"round_robin\")"),
                    ))
                }
            };
        }
        if let Some(weights) = &self.weights {
            let mut by_node = vec![1; compute_nodes.len()];
            for (node, weight) in weights {
                let name = format!("weights.{:?}", node.get_ref());
                let Some(index) = compute_nodes.iter().position(|(text, endpoint)| {
                    text == node.get_ref() || endpoint.name() == node.get_ref()
                }) else {
                    let listed: Vec<&str> = compute_nodes.iter().map(|(t, _)| t.as_str()).collect();
                    return Err(source.error(
                        node.span(),
                        field(&name),
                        format!(
                            "{:?} is not one of the class's compute_nodes ({})",
                            node.get_ref(),
                            listed.join(", ")
                        ),
                    ));
                };
                if *weight.get_ref() == 0 {
                    return Err(source.error(weight.span(), field(&name), "must be at least 1"));
                }
                by_node[index] = *weight.get_ref();
            }
            upstream.weights = by_node;
        }
        if let Some(limit) = &self.max_outstanding_per_replica {
            if *limit.get_ref() == 0 {
                return Err(source.error(
                    limit.span(),
                    field("max_outstanding_per_replica"),
                    "must be at least 1",
                ));
            }
            upstream.max_outstanding_per_replica = *limit.get_ref();
        }
        if let Some(timeout) = &self.attempt_timeout_ms {
            let ms = *timeout.get_ref();
            if ms == 0 || Duration::from_millis(ms) > deadline {
                return Err(source.error(
                    timeout.span(),
                    field("attempt_timeout_ms"),
                    format!(
                        "must be greater than 0 and at most the deadline ({} ms)",
                        deadline.as_millis()
                    ),
                ));
            }
            upstream.attempt_timeout = Some(Duration::from_millis(ms));
        }
        if let Some(codes) = &self.retry_on {
            upstream.retry_on = codes
                .iter()
                .enumerate()
                .map(|(index, name)| {
                    Code::from_name(name.get_ref())
                        .filter(|&code| code != Code::OK)
                        .ok_or_else(|| {
                            source.error(
                                name.span(),
                                field(&format!("retry_on[{index}]")),
                                format!(
                                    "{:?} is not a gRPC status code name other than OK \
                                     (e.g. \"UNAVAILABLE\")",
                                    name.get_ref()
                                ),
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
        }
        upstream.hedge = match (&self.hedge_after_ms, &self.hedge_percentile) {
            (Some(_), Some(percentile)) => {
                return Err(source.error(
                    percentile.span(),
                    field("hedge_percentile"),
                    "set hedge_after_ms or hedge_percentile, not both",
                ))
            }
            (Some(after), None) => {
                let ms = *after.get_ref();
                if ms == 0 || Duration::from_millis(ms) >= deadline {
                    return Err(source.error(
                        after.span(),
                        field("hedge_after_ms"),
                        format!(
                            "must be greater than 0 and less than the deadline ({} ms)",
                            deadline.as_millis()
                        ),
                    ));
                }
                Some(Hedge::After(Duration::from_millis(ms)))
            }
            (None, Some(percentile)) => {
                let value = *percentile.get_ref();
                if !(value > 0.0 && value < 100.0) {
                    return Err(source.error(
                        percentile.span(),
                        field("hedge_percentile"),
                        "must be between 0 and 100, exclusive",
                    ));
                }
                Some(Hedge::Percentile(value))
            }
            (None, None) => None,
        };
        if let Some(check) = &self.health_check {
            upstream.health_check = match check.get_ref().as_str() {
                "kserve" => HealthCheck::Kserve,
                "grpc" => HealthCheck::Grpc {
                    service: self
                        .health_service
                        .as_ref()
                        .map(|service| service.get_ref().clone())
                        .unwrap_or_default(),
                },
                "none" => HealthCheck::None,
                other => {
                    return Err(source.error(
                        check.span(),
                        field("health_check"),
                        format!(
                            "unknown health check {other:?} (expected \"kserve\", \"grpc\" or \"none\")"
                        ),
                    ))
                }
            };
        }
        if let Some(service) = &self.health_service {
            if !matches!(upstream.health_check, HealthCheck::Grpc { .. }) {
                return Err(source.error(
                    service.span(),
                    field("health_service"),
                    "only used with health_check = \"grpc\"",
                ));
            }
        }
        if let Some(interval) = &self.probe_interval_ms {
            upstream.probe_interval = positive_ms(interval, &field("probe_interval_ms"), source)?;
        }
        if let Some(ejection) = &self.ejection {
            upstream.ejection = ejection.validate(&field("ejection"), source)?;
        }
        Ok(upstream)
    }
}

impl EjectionFile {
    fn validate(&self, prefix: &str, source: &Source) -> Result<Ejection, ConfigError> {
        let field = |name: &str| format!("{prefix}.{name}");
        let mut ejection = Ejection::default();
        if let Some(count) = self.consecutive_failures {
            ejection.consecutive_failures = count;
        }
        if let Some(rate) = &self.failure_rate {
            let value = *rate.get_ref();
            if value.is_nan() || value <= 0.0 {
                return Err(source.error(
                    rate.span(),
                    field("failure_rate"),
                    "must be greater than 0 (1 or more turns the rule off)",
                ));
            }
            ejection.failure_rate = value;
        }
        if let Some(count) = self.min_requests {
            ejection.min_requests = count.max(1);
        }
        if let Some(window) = &self.window_ms {
            ejection.window = positive_ms(window, &field("window_ms"), source)?;
        }
        if let Some(base) = &self.base_ms {
            ejection.base_time = positive_ms(base, &field("base_ms"), source)?;
        }
        if let Some(max) = &self.max_ms {
            ejection.max_time = positive_ms(max, &field("max_ms"), source)?;
        }
        if ejection.max_time < ejection.base_time {
            let span = self
                .max_ms
                .as_ref()
                .or(self.base_ms.as_ref())
                .map(Spanned::span);
            return Err(source.error(
                span.unwrap_or(0..0),
                field("max_ms"),
                format!(
                    "must be at least base_ms ({} ms)",
                    ejection.base_time.as_millis()
                ),
            ));
        }
        if let Some(percent) = &self.max_ejected_percent {
            if *percent.get_ref() > 100 {
                return Err(source.error(
                    percent.span(),
                    field("max_ejected_percent"),
                    "must be at most 100",
                ));
            }
            ejection.max_ejected_percent = *percent.get_ref();
        }
        Ok(ejection)
    }
}

fn positive_ms(
    value: &Spanned<u64>,
    field: &str,
    source: &Source,
) -> Result<Duration, ConfigError> {
    match *value.get_ref() {
        0 => Err(source.error(value.span(), field, "must be greater than 0")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// One class with two compute nodes; `upstream` is the text of its
    /// `[classes.upstream]` table, whose first line is line 14.
    fn config_with(upstream: &str) -> Result<Config, String> {
        let text = format!(
            r#"[devices]
generate = {{ count = 4, mix = {{ camera = 1 }} }}
[sink]
kind = "sqlite"
path = "out.db"
[[classes]]
name = "camera"
model = "resnet50"
period_ms = 1000
deadline_ms = 500
data_sources = ["127.0.0.1:9000"]
compute_nodes = ["127.0.0.1:9001", "localhost:9002"]
[classes.upstream]
{upstream}"#
        );
        Config::from_str(&text, Path::new("fleet.toml")).map_err(|error| error.to_string())
    }

    fn upstream_of(text: &str) -> Upstream {
        match config_with(text) {
            Ok(config) => config.classes[0].upstream.clone(),
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn defaults_are_p2c_with_kserve_probes() {
        let upstream = upstream_of("");
        assert_eq!(upstream, Upstream::default());
        assert_eq!(upstream.balancer, BalancerKind::PowerOfTwoChoices);
        assert_eq!(upstream.health_check, HealthCheck::Kserve);
        assert_eq!(upstream.weight(1), 1);
    }

    #[test]
    fn every_key_is_read() {
        let upstream = upstream_of(
            r#"balancer = "round_robin"
weights = { "localhost:9002" = 3 }
max_outstanding_per_replica = 8
attempt_timeout_ms = 200
retry_on = ["UNAVAILABLE", "INTERNAL"]
hedge_percentile = 95.0
health_check = "grpc"
health_service = "inference"
probe_interval_ms = 250
[classes.upstream.ejection]
consecutive_failures = 3
failure_rate = 0.3
min_requests = 5
window_ms = 500
base_ms = 100
max_ms = 400
max_ejected_percent = 34
"#,
        );
        assert_eq!(
            upstream,
            Upstream {
                balancer: BalancerKind::RoundRobin,
                weights: vec![1, 3],
                max_outstanding_per_replica: 8,
                attempt_timeout: Some(Duration::from_millis(200)),
                retry_on: vec![Code::UNAVAILABLE, Code::INTERNAL],
                hedge: Some(Hedge::Percentile(95.0)),
                health_check: HealthCheck::Grpc {
                    service: "inference".into()
                },
                probe_interval: Duration::from_millis(250),
                ejection: Ejection {
                    consecutive_failures: 3,
                    failure_rate: 0.3,
                    min_requests: 5,
                    window: Duration::from_millis(500),
                    base_time: Duration::from_millis(100),
                    max_time: Duration::from_millis(400),
                    max_ejected_percent: 34,
                },
            }
        );
        assert_eq!(
            upstream_of("hedge_after_ms = 50").hedge,
            Some(Hedge::After(Duration::from_millis(50)))
        );
    }

    #[test]
    fn mistakes_name_their_line_and_key() {
        let cases = [
            (
                r#"balancer = "random""#,
                "fleet.toml:14: classes[0].upstream.balancer: unknown balancer \"random\" \
                 (expected \"p2c\" or \"round_robin\")",
            ),
            (
                r#"weights = { "127.0.0.1:9009" = 2 }"#,
                "fleet.toml:14: classes[0].upstream.weights.\"127.0.0.1:9009\": \"127.0.0.1:9009\" \
                 is not one of the class's compute_nodes (127.0.0.1:9001, localhost:9002)",
            ),
            (
                r#"weights = { "127.0.0.1:9001" = 0 }"#,
                "fleet.toml:14: classes[0].upstream.weights.\"127.0.0.1:9001\": must be at least 1",
            ),
            (
                "max_outstanding_per_replica = 0",
                "fleet.toml:14: classes[0].upstream.max_outstanding_per_replica: must be at least 1",
            ),
            (
                "attempt_timeout_ms = 501",
                "fleet.toml:14: classes[0].upstream.attempt_timeout_ms: must be greater than 0 and \
                 at most the deadline (500 ms)",
            ),
            (
                r#"retry_on = ["UNAVAILABLE", "unavailable"]"#,
                "fleet.toml:14: classes[0].upstream.retry_on[1]: \"unavailable\" is not a gRPC \
                 status code name other than OK (e.g. \"UNAVAILABLE\")",
            ),
            (
                "hedge_after_ms = 10\nhedge_percentile = 90.0",
                "fleet.toml:15: classes[0].upstream.hedge_percentile: set hedge_after_ms or \
                 hedge_percentile, not both",
            ),
            (
                "hedge_percentile = 100.0",
                "fleet.toml:14: classes[0].upstream.hedge_percentile: must be between 0 and 100, \
                 exclusive",
            ),
            (
                r#"health_check = "http""#,
                "fleet.toml:14: classes[0].upstream.health_check: unknown health check \"http\" \
                 (expected \"kserve\", \"grpc\" or \"none\")",
            ),
            (
                r#"health_service = "x""#,
                "fleet.toml:14: classes[0].upstream.health_service: only used with \
                 health_check = \"grpc\"",
            ),
            (
                "[classes.upstream.ejection]\nmax_ejected_percent = 101",
                "fleet.toml:15: classes[0].upstream.ejection.max_ejected_percent: must be at most 100",
            ),
            (
                "[classes.upstream.ejection]\nbase_ms = 500\nmax_ms = 100",
                "fleet.toml:16: classes[0].upstream.ejection.max_ms: must be at least base_ms (500 ms)",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                config_with(text).err().as_deref(),
                Some(expected),
                "for {text:?}"
            );
        }
    }

    #[test]
    fn a_node_listed_twice_is_refused() {
        let error = Config::from_str(
            r#"[devices]
generate = { count = 4, mix = { camera = 1 } }
[sink]
kind = "sqlite"
path = "out.db"
[[classes]]
name = "camera"
model = "resnet50"
period_ms = 1000
deadline_ms = 500
data_sources = ["127.0.0.1:9000"]
compute_nodes = ["127.0.0.1:9001", "127.0.0.1:9001"]
"#,
            Path::new("fleet.toml"),
        )
        .map(|_| ())
        .map_err(|error| error.to_string());
        assert_eq!(
            error,
            Err(
                "fleet.toml:12: classes[0].compute_nodes[1]: \"127.0.0.1:9001\" is listed twice"
                    .into()
            )
        );
    }
}
