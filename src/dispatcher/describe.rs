//! What the run was, in words for its reports: enough to tell two runs apart.

use super::{Load, RunOptions};
use crate::config::Config;

/// What the run was, for reports: enough to tell two runs apart.
pub(super) fn config_description(config: &Config, options: &RunOptions) -> serde_json::Value {
    let load = match options.load {
        Load::Ticks => serde_json::json!({"mode": "ticks"}),
        Load::ClosedLoop { concurrency } => {
            serde_json::json!({"mode": "closed_loop", "concurrency": concurrency})
        }
        Load::OpenLoop { rate, poisson } => serde_json::json!({
            "mode": "open_loop", "rate_per_s": rate,
            "arrivals": if poisson { "poisson" } else { "constant" },
        }),
    };
    serde_json::json!({
        "config_file": config.path.display().to_string(),
        "devices": config.fleet.len(),
        "load": load,
        "duration_s": options.duration.map(|d| d.as_secs_f64()),
        "shard_cpus": config.tuning.resolved_shard_cpus(),
        "connections_per_node": config.tuning.connections_per_node,
        "max_in_flight_per_shard": config.tuning.max_in_flight_per_shard,
        "max_message_bytes": config.grpc.max_message_bytes,
        "grpc": grpc_description(&config.grpc),
        "classes": config.classes.iter().map(|class| serde_json::json!({
            "name": class.name, "model": class.model, "period_ms": class.period_ms,
            "deadline_ms": class.deadline_ms,
            "data_sources": class.data_sources.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "compute_nodes": class.compute_nodes.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "transport": transport_description(class),
            "upstream": upstream_description(&class.upstream),
            // Names only: the values are credentials.
            "metadata": class.metadata.names(),
        })).collect::<Vec<_>>(),
        "mocks": options.mocks,
    })
}

/// How a class's calls travel: TLS per role (paths and names, nothing read
/// from the files), the `:authority` override, and the gateway's routing
/// headers in gateway mode.
fn transport_description(class: &crate::config::Class) -> serde_json::Value {
    let tls = |endpoints: &[crate::endpoint::Endpoint]| {
        endpoints
            .iter()
            .find_map(|endpoint| endpoint.tls().map(|tls| tls.describe()))
    };
    let authority = class
        .compute_nodes
        .first()
        .filter(|endpoint| endpoint.authority() != endpoint.name())
        .map(|endpoint| endpoint.authority().to_string());
    serde_json::json!({
        "compute_tls": tls(&class.compute_nodes),
        "data_source_tls": tls(&class.data_sources),
        "authority": authority,
        "gateway": class.gateway.as_ref().map(|gateway| serde_json::json!({
            "endpoint": class.compute_nodes.first().map(|e| e.to_string()),
            "class_header": gateway.class_header,
            "model_header": gateway.model_header,
        })),
    })
}

/// The `[grpc]` settings that decide how a failing call is treated.
pub(super) fn grpc_description(grpc: &crate::config::GrpcConfig) -> serde_json::Value {
    serde_json::json!({
        "retries": grpc.retries,
        "connect_timeout_ms": grpc.connect_timeout_ms,
        "retry_budget_percent": grpc.retry_budget_percent,
        "retry_budget_min_per_s": grpc.retry_budget_min_per_s,
        "keepalive_interval_ms": grpc.keepalive_interval_ms,
        "keepalive_timeout_ms": grpc.keepalive_timeout_ms,
    })
}

/// A class's balancing, attempt timeout and hedging, as the config spells them.
pub(super) fn upstream_description(upstream: &crate::config::Upstream) -> serde_json::Value {
    use crate::config::{BalancerKind, Hedge};
    let hedge = match upstream.hedge {
        None => serde_json::Value::Null,
        Some(Hedge::After(delay)) => serde_json::json!({"after_ms": delay.as_millis() as u64}),
        Some(Hedge::Percentile(p)) => serde_json::json!({"percentile": p}),
    };
    serde_json::json!({
        "balancer": match upstream.balancer {
            BalancerKind::PowerOfTwoChoices => "p2c",
            BalancerKind::RoundRobin => "round_robin",
        },
        "attempt_timeout_ms": upstream.attempt_timeout.map(|t| t.as_millis() as u64),
        "hedge": hedge,
        "max_outstanding_per_replica": upstream.max_outstanding_per_replica,
        "retry_on": upstream.retry_on.iter().map(|code| code.0).collect::<Vec<_>>(),
    })
}
