//! A run joins its cluster: the cluster thread started from `[cluster]`, and
//! the discovered classes' compute nodes filled in before the shards start.

use super::event::NodeRecord;
use super::membership::{host_name, now_ms, DispatcherInfo};
use super::{ClusterError, ClusterHandle, ClusterSpec, START_TIMEOUT};
use crate::config::{Class, Config};
use crate::console;
use crate::endpoint::Endpoint;

/// Starts the cluster thread when the config has `[cluster] etcd`, and gives
/// each class that discovers its nodes the ones registered now; `None` for a
/// run without etcd. Errors: etcd does not answer within
/// [`START_TIMEOUT`], or the instance id is taken.
pub fn join(config: &mut Config) -> Result<Option<ClusterHandle>, ClusterError> {
    let Some(cluster) = &config.cluster else {
        return Ok(None);
    };
    if cluster.etcd.is_empty() {
        return Ok(None);
    }
    let spec = ClusterSpec {
        cluster: cluster.name.clone(),
        endpoints: cluster.etcd.clone(),
        instance: cluster.instance.clone(),
        lease_ttl: cluster.lease_ttl,
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
    // Until device ownership is shared, this instance runs the whole fleet.
    handle.report_owned_devices(config.fleet.len());
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
    for class in config.classes.iter_mut() {
        if let Some(nodes) = handle.initial.nodes.get(&class.name) {
            set_nodes(class, nodes);
            console::err(format_args!(
                "cluster: class {:?}: {}",
                class.name,
                describe(nodes)
            ));
        }
    }
    Ok(Some(handle))
}

/// A class's compute nodes and their weights, from its registrations.
pub fn set_nodes(class: &mut Class, nodes: &[NodeRecord]) {
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(nodes.len());
    let mut weights = Vec::with_capacity(nodes.len());
    for node in nodes {
        // The cluster thread checked every address; two ids on one address
        // are one replica.
        let Ok(endpoint) = Endpoint::parse(&node.addr) else {
            continue;
        };
        if endpoints
            .iter()
            .any(|known| known.name() == endpoint.name())
        {
            continue;
        }
        endpoints.push(endpoint);
        weights.push(node.weight);
    }
    class.compute_nodes = endpoints;
    class.upstream.weights = weights;
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
