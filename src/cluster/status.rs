//! `percore status`: what etcd says about one cluster, or all of them — the
//! live dispatchers (from their registrations) and each class's compute nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::etcd::Etcd;
use super::membership::DispatcherInfo;
use super::{keys, ClusterError};

/// One cluster as etcd has it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStatus {
    /// Its name.
    pub name: String,
    /// Its dispatchers, by instance id.
    pub instances: Vec<InstanceStatus>,
    /// Per class, its registered compute nodes, by id.
    pub nodes: BTreeMap<String, Vec<NodeStatus>>,
}

/// One dispatcher's registration.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    /// The instance id.
    pub instance: String,
    /// What it registered, when the value reads as a registration.
    pub info: Option<DispatcherInfo>,
    /// Its lease's id, hexadecimal as etcdctl shows it.
    pub lease: String,
}

/// One compute node's registration.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// The node's id.
    pub id: String,
    /// `host:port` as registered.
    pub addr: Option<String>,
    /// Its weight (1 when not said).
    pub weight: Option<u64>,
    /// The model it says it serves.
    pub model: Option<String>,
    /// Why the dispatchers ignore it, when its value is bad.
    pub invalid: Option<String>,
    /// Its lease's id (`0`: none: it stays until deleted).
    pub lease: String,
}

/// Everything `percore status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The etcd member that answered.
    pub etcd: String,
    /// The revision the report is current at.
    pub revision: i64,
    /// Every cluster found (or the one asked for, even when empty).
    pub clusters: Vec<ClusterStatus>,
}

/// Reads the status from etcd (trying for up to [`super::START_TIMEOUT`]).
pub fn read(endpoints: &[String], cluster: Option<&str>) -> Result<StatusReport, ClusterError> {
    if let Some(name) = cluster {
        keys::check_segment("--cluster", name).map_err(ClusterError)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClusterError(format!("cannot start a tokio runtime: {error}")))?;
    runtime.block_on(async {
        let mut etcd = Etcd::new(endpoints, Duration::from_secs(3))
            .map_err(|error| ClusterError(format!("--etcd: {error}")))?;
        let prefix = match cluster {
            Some(name) => keys::cluster_prefix(name),
            None => keys::ROOT.to_string(),
        };
        super::announce::reach(&mut etcd, &prefix).await?;
        let (kvs, revision) = etcd
            .range_prefix(&prefix)
            .await
            .map_err(|error| ClusterError(error.to_string()))?;
        let mut clusters: BTreeMap<String, ClusterStatus> = BTreeMap::new();
        if let Some(name) = cluster {
            clusters.insert(name.to_string(), ClusterStatus::default());
        }
        for kv in &kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let Some(name) = keys::parse_cluster(&key) else {
                continue;
            };
            let entry = clusters.entry(name.to_string()).or_default();
            let lease = format!("{:x}", kv.lease);
            if let Some(instance) = keys::parse_dispatcher_key(name, &key) {
                entry.instances.push(InstanceStatus {
                    instance: instance.to_string(),
                    info: serde_json::from_slice(&kv.value).ok(),
                    lease,
                });
            } else if let Some((class, id)) = keys::parse_node_key(name, &key) {
                let node = node_status(id, &kv.value, lease);
                entry.nodes.entry(class.to_string()).or_default().push(node);
            }
        }
        Ok(StatusReport {
            etcd: etcd.url().to_string(),
            revision,
            clusters: clusters
                .into_iter()
                .map(|(name, status)| ClusterStatus { name, ..status })
                .collect(),
        })
    })
}

/// A node registration read for display: what it says, and why the
/// dispatchers would ignore it.
fn node_status(id: &str, value: &[u8], lease: String) -> NodeStatus {
    let json: Option<serde_json::Value> = serde_json::from_slice(value).ok();
    let field = |name: &str| json.as_ref().and_then(|json| json.get(name).cloned());
    let model = field("model").and_then(|model| model.as_str().map(str::to_string));
    let invalid = super::nodes::parse(id, value, model.as_deref().unwrap_or("")).err();
    NodeStatus {
        id: id.to_string(),
        addr: field("addr").and_then(|addr| addr.as_str().map(str::to_string)),
        weight: field("weight").and_then(|weight| weight.as_u64()),
        model,
        invalid,
        lease,
    }
}

impl StatusReport {
    /// The report as tables, one block per cluster.
    pub fn table(&self) -> String {
        let mut out = format!("etcd {} at revision {}\n", self.etcd, self.revision);
        if self.clusters.is_empty() {
            out.push_str("no percore cluster registered\n");
        }
        for cluster in &self.clusters {
            out.push_str(&format!(
                "\ncluster {}: {} dispatcher{}\n",
                cluster.name,
                cluster.instances.len(),
                if cluster.instances.len() == 1 {
                    ""
                } else {
                    "s"
                }
            ));
            if cluster.instances.is_empty() {
                out.push_str("no dispatcher registered\n");
            }
            let mut rows = vec![vec![
                "INSTANCE".to_string(),
                "HOST".into(),
                "PID".into(),
                "SHARDS".into(),
                "DEVICES".into(),
                "FLEET".into(),
                "UP".into(),
                "LEASE".into(),
            ]];
            let now = super::membership::now_ms();
            for instance in &cluster.instances {
                let row = match &instance.info {
                    Some(info) => vec![
                        instance.instance.clone(),
                        info.host.clone(),
                        info.pid.to_string(),
                        info.shards.to_string(),
                        info.devices.map_or("–".into(), |n| n.to_string()),
                        info.fleet_devices.to_string(),
                        humantime::format_duration(Duration::from_secs(
                            ((now - info.started_at_ms).max(0) / 1000) as u64,
                        ))
                        .to_string(),
                        instance.lease.clone(),
                    ],
                    None => vec![
                        instance.instance.clone(),
                        "(unreadable value)".into(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        instance.lease.clone(),
                    ],
                };
                rows.push(row);
            }
            if rows.len() > 1 {
                out.push_str(&columns(&rows));
            }
            if cluster.nodes.is_empty() {
                out.push_str("no compute node registered\n");
                continue;
            }
            out.push_str("compute nodes:\n");
            let mut rows = vec![vec![
                "CLASS".to_string(),
                "NODE".into(),
                "ADDR".into(),
                "WEIGHT".into(),
                "MODEL".into(),
                "LEASE".into(),
                "NOTE".into(),
            ]];
            for (class, nodes) in &cluster.nodes {
                for node in nodes {
                    rows.push(vec![
                        class.clone(),
                        node.id.clone(),
                        node.addr.clone().unwrap_or_default(),
                        node.weight.map_or("1".into(), |w| w.to_string()),
                        node.model.clone().unwrap_or_default(),
                        node.lease.clone(),
                        node.invalid
                            .as_ref()
                            .map_or(String::new(), |why| format!("ignored: {why}")),
                    ]);
                }
            }
            out.push_str(&columns(&rows));
        }
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Left-aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(index) {
                Some(known) => *known = (*known).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if index + 1 < row.len() {
                let pad = widths[index] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
