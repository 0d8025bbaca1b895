//! What one tick of one device became: the row a shard hands to the sink.
//!
//! A `JobRecord` is built on the shard that owns the device, crosses to the sink
//! thread inside a batch over a bounded flume channel, and becomes exactly one row
//! keyed by (device, tick). It carries the device's id itself ([`DeviceId`], a
//! shared reference-counted string: one count per job, no copy), so a shard can
//! run a device that is in no list the writer knows (one it gained from another
//! instance); the class and the compute node stay indexes, which the sink
//! resolves from the class table. Building one on the hot path allocates
//! nothing but its outputs' list.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

pub use crate::tensor::Output;

/// Index of a device in the [`Fleet`](crate::devices::Fleet), the coordinator's
/// list of every device; stable for a run. Records carry the [`DeviceId`] instead.
pub type DeviceIndex = u32;

/// A device's id as shards hold it and records carry it: immutable text behind
/// one reference count. A shard makes it once when it gains the device; each
/// job's record takes a clone (one count increment, no allocation) that the
/// writer drops after the commit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    pub fn new(id: &str) -> DeviceId {
        DeviceId(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for DeviceId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by id are looked up with a plain `&str`.
impl Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for DeviceId {
    fn from(id: &str) -> DeviceId {
        DeviceId::new(id)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Index of a class in the config's class list, stable for a run.
pub type ClassIndex = u16;

/// One tick's result, owned by the shard that made it until it is sent to the sink.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Which device, by its id; with `tick_ms`, the row's primary key.
    pub device: DeviceId,
    /// Planned tick time in Unix milliseconds: the grid point, not when the job ran,
    /// so every process computes the same key for the same tick.
    pub tick_ms: i64,
    /// The device's class, so the sink can write class and model names.
    pub class: ClassIndex,
    /// The shard that ran (or skipped) the tick, to audit the device-to-shard mapping.
    pub shard: u16,
    /// ok, failed with a reason, or skipped with a reason.
    pub outcome: Outcome,
    /// Every output tensor the model answered, in its order, each with its name,
    /// datatype and shape (empty unless the job succeeded). The `jobs` table's
    /// `output` column is the first one's bytes, `job_outputs` has them all. The
    /// bytes are slices of the received HTTP/2 buffer: no copy on the shard.
    pub outputs: Vec<Output>,
    /// Per-stage latencies, in microseconds.
    pub latency: StageLatency,
    /// Index in the class's `compute_nodes` of the replica that gave the job's
    /// final ModelInfer answer (written as its `host:port`); `None` when no
    /// compute node answered.
    pub compute_node: Option<u16>,
    /// Attempts sent for the job, fetch and infer together, retries and hedges
    /// included; 0 for a skipped tick.
    pub attempts: u16,
    /// When the result was ready on the shard; the sink writer measures sink lag
    /// (ready → committed) from it.
    pub ready_at: Instant,
}

/// Per-stage latencies of one job, in microseconds. A stage that did not run is `None`;
/// a stage that failed has its time to failure (its start → the failure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageLatency {
    /// Planned tick time to the moment the job started (or was skipped).
    pub schedule_lag_us: u64,
    /// The data-source `Fetch` call, until it answered or failed.
    pub fetch_us: Option<u64>,
    /// The compute node's `ModelInfer` call, until it answered or failed.
    pub infer_us: Option<u64>,
    /// Planned tick time to the result (or the failure) being ready for the sink.
    pub end_to_end_us: Option<u64>,
}

/// What became of a tick.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Both calls succeeded and the output passed validation.
    Ok,
    /// The job ran and failed; the reason says which stage and why.
    Failed(crate::error::JobError),
    /// The job was not started; the reason says why.
    Skipped(SkipReason),
}

/// Why a due tick was not run. Every skip is still written as a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The device's previous job was still running when this tick came due.
    PreviousJobRunning,
    /// The shard already had its configured maximum of jobs in flight.
    ShardAtCapacity,
    /// Results were piling up faster than the sink could take them.
    SinkBacklog,
    /// Every compute replica of the class already had its configured maximum
    /// of calls outstanding from this shard: compute capacity is below the load.
    ReplicasAtCapacity,
    /// The class discovers its compute nodes in etcd, and none is registered.
    NoComputeNode,
}

impl Outcome {
    /// The label stored in the `outcome` column.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
        }
    }

    /// The text stored in the `reason` column; `None` for `ok`.
    pub fn reason(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Failed(error) => Some(error.to_string()),
            Outcome::Skipped(reason) => Some(reason.to_string()),
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::PreviousJobRunning => "previous job of this device still running",
            SkipReason::ShardAtCapacity => "shard at its in-flight limit",
            SkipReason::SinkBacklog => "sink backlog",
            SkipReason::ReplicasAtCapacity => {
                "every compute replica of the class at its outstanding limit"
            }
            SkipReason::NoComputeNode => "no compute node of the class is registered in etcd",
        })
    }
}
