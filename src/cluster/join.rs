//! A run joins its cluster: the cluster thread started from `[cluster]`.
//!
//! The thread registers this instance before it says anything, then sends the
//! members and each discovered class's nodes as its first events; the
//! coordinator applies them as it applies every later change
//! (`dispatcher::ownership`): nothing runs here before the first membership,
//! and a discovered class has no compute node before its first list.

use std::time::Duration;

use super::event::NodeRecord;
use super::membership::{host_name, now_ms, DispatcherInfo};
use super::{ClusterError, ClusterHandle, ClusterSpec, START_TIMEOUT};
use crate::config::Config;
use crate::console;

/// Starts the cluster thread when the config has `[cluster] etcd`; `None` for
/// a run without etcd. Errors: etcd does not answer within
/// [`START_TIMEOUT`], or the instance id is taken.
pub fn join(config: &Config) -> Result<Option<ClusterHandle>, ClusterError> {
    let cluster = &config.cluster;
    if !cluster.uses_etcd() {
        return Ok(None);
    }
    let endpoints = cluster
        .etcd
        .iter()
        .map(|url| super::etcd::parse_url(url).map_err(ClusterError))
        .collect::<Result<Vec<String>, ClusterError>>()?;
    let spec = ClusterSpec {
        cluster: cluster.name.clone(),
        endpoints,
        instance: cluster.instance.clone(),
        lease_ttl: Duration::from_secs(cluster.lease_ttl_s),
        discovered: config
            .classes
            .iter()
            .filter(|class| class.compute_nodes_from_etcd)
            .map(|class| (class.name.clone(), class.model.clone()))
            .collect(),
        info: DispatcherInfo {
            instance: cluster.instance.clone(),
            host: host_name(),
            pid: std::process::id(),
            shards: config.tuning.resolved_shard_cpus().len(),
            devices: None,
            fleet_devices: config.fleet.len(),
            classes: config.classes.iter().map(|c| c.name.clone()).collect(),
            started_at_ms: now_ms(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        start_timeout: START_TIMEOUT,
    };
    let handle = super::start(spec)?;
    console::err(format_args!(
        "cluster {:?}: instance {:?} registered in etcd ({}); {} dispatcher{} live: {}",
        handle.spec.cluster,
        handle.spec.instance,
        handle.spec.endpoints.join(", "),
        handle.initial.members.len(),
        if handle.initial.members.len() == 1 {
            ""
        } else {
            "s"
        },
        handle.initial.members.join(", ")
    ));
    for class in &config.classes {
        if let Some(nodes) = handle.initial.nodes.get(&class.name) {
            console::err(format_args!(
                "cluster: class {:?}: {}",
                class.name,
                describe(nodes)
            ));
        }
    }
    Ok(Some(handle))
}

/// `2 compute nodes: a (10.0.0.1:8001), b (10.0.0.2:8001, weight 2)`.
pub fn describe(nodes: &[NodeRecord]) -> String {
    if nodes.is_empty() {
        return "no compute node registered in etcd (its ticks are skipped until one is)".into();
    }
    let listed: Vec<String> = nodes
        .iter()
        .map(|node| match node.weight {
            1 => format!("{} ({})", node.id, node.addr),
            weight => format!("{} ({}, weight {weight})", node.id, node.addr),
        })
        .collect();
    format!(
        "{} compute node{} from etcd: {}",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        listed.join(", ")
    )
}
