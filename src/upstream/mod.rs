//! Upstream: a shard's way to the nodes its jobs call.
//!
//! Everything here belongs to one shard (`Rc`, `Cell`, no locks): each shard has
//! its own connections, its own view of every replica's health and its own
//! budget, and never asks another shard.
//!
//! - [`pool`]: the HTTP/2 connections to one node, opened on demand, backed off
//!   with jitter when a connect fails.
//! - [`replica`]: one replica as a shard sees it: pool, weight, health.
//! - [`set`]: a class's replicas for one role, never empty; picks a replica per
//!   attempt, bounds outstanding calls, takes each attempt's outcome back,
//!   ejects outliers.
//! - [`balance`]: the [`balance::Balance`] trait and its algorithms: weighted
//!   round-robin, and power of two choices over peak-EWMA latency × outstanding.
//! - [`health`]: one replica's latency estimate, outstanding calls, readiness,
//!   failure counts and ejection.
//! - [`retry`]: the retry budget (a share of recent calls plus a floor).
//! - [`probe`]: active health checks (KServe readiness, `grpc.health.v1`, or a
//!   connect), which also reconnect replicas that went away.

pub mod balance;
pub mod health;
pub mod pool;
pub mod probe;
pub mod replica;
pub mod retry;
pub mod set;

pub use pool::NodePool;
pub use replica::Replica;
pub use set::{ReplicaSet, Role, SetPolicy};
