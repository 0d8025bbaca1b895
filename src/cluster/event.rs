//! What the cluster thread (etcd) tells the coordinator.
//!
//! The one interface between the control plane's etcd work ([`crate::cluster`])
//! and the coordinator: the cluster thread owns every etcd call; the
//! coordinator ([`crate::dispatcher::run`], through
//! [`RunOptions::cluster`](crate::dispatcher::RunOptions::cluster)) only
//! receives these, over a bounded flume channel, and acts on them: a
//! membership change moves devices between instances (handover, in
//! `dispatcher::ownership`), a class's registered compute nodes replace its
//! list on every shard, a lost connection is logged and shown while ownership
//! stays as it is. States, not deltas, so a coordinator that reads late only
//! needs the newest. The thread registers this instance before it sends the
//! first `Members`, so the first membership a run applies includes it.

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
    /// Its relative weight among the class's replicas (at least 1; 0 is taken as 1).
    pub weight: u32,
    /// The model it says it serves, if the registration says; a node naming
    /// another model than its class's is left out, with a warning.
    pub model: Option<String>,
}
