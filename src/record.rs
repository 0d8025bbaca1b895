//! What one tick of one device became: the row a shard hands to the sink.
//!
//! A `JobRecord` is built on the shard that owns the device, crosses to the sink
//! thread inside a batch over a bounded flume channel, and becomes exactly one row
//! keyed by (device, tick). It carries indexes, not names, so building one on the
//! hot path allocates nothing but its outputs' list; the sink resolves names from the shared, immutable
//! [`Fleet`](crate::devices::Fleet) and class table.

use std::time::Instant;

pub use crate::tensor::Output;

/// Index of a device in the [`Fleet`](crate::devices::Fleet), stable for a run.
pub type DeviceIndex = u32;

/// Index of a class in the config's class list, stable for a run.
pub type ClassIndex = u16;

/// One tick's result, owned by the shard that made it until it is sent to the sink.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Which device (index into the fleet); with `tick_ms`, the row's primary key.
    pub device: DeviceIndex,
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
