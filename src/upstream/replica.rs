//! One replica as one shard sees it: the way to the node, its weight and its
//! health. The balancer reads it, the replica set owns it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::health::ReplicaHealth;
use super::pool::NodePool;
use crate::grpc::client::ClientSettings;

/// One replica as one shard sees it.
pub struct Replica {
    /// This shard's connections to the node (shared with other classes that
    /// use the same node).
    pub pool: Rc<NodePool>,
    /// Relative weight from the config (at least 1).
    pub weight: u32,
    /// Latency, outstanding calls, readiness, ejection.
    pub health: ReplicaHealth,
}

impl Replica {
    pub fn new(pool: Rc<NodePool>, weight: u32, now: Instant) -> Replica {
        Replica {
            pool,
            weight: weight.max(1),
            health: ReplicaHealth::new(now),
        }
    }

    /// A replica with a pool of its own, for tests of the algorithms.
    pub fn detached(node: SocketAddr, weight: u32, now: Instant) -> Replica {
        let pool = NodePool::new(&node.into(), 1, Rc::new(ClientSettings::default()), 0);
        Replica::new(pool, weight, now)
    }

    /// The node as the config writes it (`host:port`).
    pub fn node(&self) -> Arc<str> {
        self.pool.node()
    }
}
