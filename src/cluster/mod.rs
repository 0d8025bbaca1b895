//! The cluster: several percore instances sharing one fleet through etcd.
//!
//! [`event`] is the one interface between the etcd side (its own thread) and
//! the coordinator: what the cluster thread tells the coordinator.
pub mod event;
