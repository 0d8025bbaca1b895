//! What the cluster thread (etcd) tells the coordinator.
//!
//! The cluster thread owns every etcd call; the coordinator
//! ([`crate::dispatcher::run`], through
//! [`RunOptions::cluster`](crate::dispatcher::RunOptions::cluster)) only
//! receives these, over a bounded flume channel, and acts on them: a
//! membership change moves devices between instances (handover), a class's
//! registered compute nodes replace its list on every shard, a lost
//! connection is logged and shown while ownership stays as it is.

/// What the cluster thread (etcd) tells the coordinator, over a bounded flume channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// The live dispatcher instances (ids, sorted, deduplicated) as of an etcd revision.
    Members {
        instances: Vec<String>,
        revision: i64,
    },
    /// A class's compute nodes as registered in etcd (replacing the config's list for that class).
    Nodes {
        class: String,
        nodes: Vec<NodeRecord>,
        revision: i64,
    },
    /// etcd became unreachable (up = false) or reachable again; ownership stays as it is.
    Connection { up: bool, detail: String },
}

/// One compute node as registered in etcd under `/percore/<cluster>/nodes/<class>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's id: the last part of its key.
    pub id: String,
    /// Where it listens, `host:port`; resolved like the config's addresses.
    pub addr: String,
    /// Its balancing weight (at least 1; 0 is taken as 1).
    pub weight: u32,
    /// The model it serves, when it says; a node naming another model than
    /// its class's is left out, with a warning.
    pub model: Option<String>,
}
