//! What the cluster thread (etcd) tells the coordinator.
//!
//! The one interface between the control plane's etcd work ([`crate::cluster`])
//! and the coordinator that turns it into device ownership and replica lists:
//! states, not deltas, so a coordinator that reads late only needs the newest.

/// What the cluster thread (etcd) tells the coordinator, over a bounded flume channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// The live dispatcher instances (ids, sorted, deduplicated) as of an etcd revision.
    Members {
        /// Every instance registered under `/percore/<cluster>/dispatchers/`.
        instances: Vec<String>,
        /// The etcd revision the list is current at.
        revision: i64,
    },
    /// A class's compute nodes as registered in etcd (replacing the config's list for that class).
    Nodes {
        /// The class, by name (`compute_nodes = "etcd"` in its `[[classes]]`).
        class: String,
        /// Every well-formed registration under `/percore/<cluster>/nodes/<class>/`,
        /// sorted by id; empty when none is registered.
        nodes: Vec<NodeRecord>,
        /// The etcd revision the list is current at.
        revision: i64,
    },
    /// etcd became unreachable (up = false) or reachable again; ownership stays as it is.
    Connection {
        /// Whether etcd answers again (`true`) or stopped answering (`false`).
        up: bool,
        /// What happened, for the log: the URL and the error, or the resync.
        detail: String,
    },
}

/// One compute node registered in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's id: the last segment of its key.
    pub id: String,
    /// Where it serves KServe v2 gRPC, `host:port` as registered (its host
    /// checked to resolve by the cluster thread, and looked up again at every
    /// connect, as the config's endpoints are).
    pub addr: String,
    /// Its relative weight among the class's replicas (at least 1).
    pub weight: u32,
    /// The model it says it serves, if the registration says.
    pub model: Option<String>,
}
