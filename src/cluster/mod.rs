//! The control plane's etcd work: dispatcher membership, compute node
//! discovery, and the tools around them (`percore announce`, `percore status`).
//!
//! A run with `[cluster] etcd = […]` starts one **cluster thread** ([`start`]),
//! with a small current-thread tokio runtime of its own — never on a shard, and
//! nothing on a shard ever waits for it. The thread registers the dispatcher
//! under `/percore/<cluster>/dispatchers/<instance>` with a lease, keeps the
//! lease alive, watches the dispatchers and the nodes of every class that
//! discovers them (`compute_nodes = "etcd"`), and tells the coordinator over a
//! bounded channel ([`ClusterEvent`]). When etcd goes away the thread says so,
//! keeps trying (jittered backoff, the next endpoint each time) and, when etcd
//! answers again, resynchronises: lease renewed or granted again, registration
//! put back, each watch resumed from the last revision it applied — or read
//! afresh when that revision was compacted.
//!
//! Files: `event` (what the coordinator hears), `keys` (the key layout),
//! `etcd` (the client over tonic), `session` (the thread's loop), `membership`
//! (a dispatcher's registration), `nodes` (a compute node's registration),
//! `backoff`, `announce` (registering a node that cannot register itself),
//! `readiness` (the checks `announce` makes), `status` (`percore status`).

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::Duration;

pub mod announce;
pub mod backoff;
pub mod etcd;
pub mod event;
pub mod join;
pub mod keys;
pub mod membership;
pub mod nodes;
pub mod readiness;
mod session;
pub mod status;

pub use event::{ClusterEvent, NodeRecord};
pub use join::join;
pub use membership::DispatcherInfo;

/// Events waiting for the coordinator in the channel; the cluster thread
/// keeps only the newest state of each kind beyond that, never blocking.
const EVENTS_QUEUED: usize = 16;

/// How long a dispatcher, `percore status` or `percore announce` tries to
/// reach etcd at its start before giving up with an error naming the URLs.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the cluster thread could not start, or a cluster command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

/// What the cluster thread needs.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The cluster's name: the key prefix `/percore/<cluster>/`.
    pub cluster: String,
    /// etcd's client URLs (`http://host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// This dispatcher's id among the cluster's (unique).
    pub instance: String,
    /// The lease's TTL: how long after this dispatcher dies its key goes.
    pub lease_ttl: Duration,
    /// The classes whose compute nodes come from etcd: (name, model).
    pub discovered: Vec<(String, String)>,
    /// The registration's value.
    pub info: DispatcherInfo,
    /// How long to try at the start before giving up.
    pub start_timeout: Duration,
}

impl ClusterSpec {
    /// The bound on one etcd call: a third of the lease TTL, between 0.5 and
    /// 3 s, so a hung call never costs the lease.
    pub fn request_timeout(&self) -> Duration {
        (self.lease_ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(3))
    }
}

/// What the coordinator tells the cluster thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// How many devices this dispatcher owns now (written into its
    /// registration, at most once a second).
    OwnedDevices(usize),
    /// Revoke the lease and end.
    Stop,
}

/// The state at the start, for the run to begin with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initial {
    /// The live instances (this one included), sorted.
    pub members: Vec<String>,
    /// The revision they are current at.
    pub members_revision: i64,
    /// Each discovered class's nodes.
    pub nodes: BTreeMap<String, Vec<NodeRecord>>,
    /// The revision they are current at.
    pub nodes_revision: i64,
}

/// The running cluster thread: its events, and the way to stop it. Dropping
/// it stops the thread, which revokes the lease first.
pub struct ClusterHandle {
    /// What the thread says, for the coordinator.
    pub events: flume::Receiver<ClusterEvent>,
    /// The state it started with (also sent as the first events).
    pub initial: Initial,
    /// The cluster and instance, for messages.
    pub spec: ClusterSpec,
    /// Commands to the thread.
    commands: flume::Sender<Command>,
    /// Joined at the stop.
    thread: Option<JoinHandle<()>>,
}

/// Starts the cluster thread: connects (bounded by `spec.start_timeout`),
/// registers this dispatcher, reads the members and the discovered nodes,
/// and returns once all that is done — or the error that stopped it (etcd
/// not answering, a duplicate instance id).
pub fn start(spec: ClusterSpec) -> Result<ClusterHandle, ClusterError> {
    for (what, name) in [
        ("[cluster] name", &spec.cluster),
        ("[cluster] instance", &spec.instance),
    ] {
        keys::check_segment(what, name).map_err(ClusterError)?;
    }
    let (events_tx, events) = flume::bounded(EVENTS_QUEUED);
    let (commands, commands_rx) = flume::bounded(16);
    let (ready_tx, ready) = flume::bounded(1);
    let thread_spec = spec.clone();
    let thread = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(ClusterError(format!(
                        "cannot start the cluster thread's runtime: {error}"
                    ))));
                    return;
                }
            };
            runtime.block_on(async move {
                match session::Session::new(thread_spec, events_tx) {
                    Ok(session) => session.run(commands_rx, ready_tx).await,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            });
        })
        .map_err(|error| ClusterError(format!("cannot start the cluster thread: {error}")))?;
    match ready.recv() {
        Ok(Ok(initial)) => Ok(ClusterHandle {
            events,
            initial,
            spec,
            commands,
            thread: Some(thread),
        }),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(ClusterError("the cluster thread ended at its start".into()))
        }
    }
}

/// How the coordinator tells the cluster thread how many devices this
/// dispatcher runs now ([`crate::dispatcher::RunOptions::cluster_devices`]).
#[derive(Clone)]
pub struct DeviceReport {
    /// Commands to the cluster thread.
    commands: flume::Sender<Command>,
}

impl DeviceReport {
    /// Never blocks: a full queue drops the count (the next change sends another).
    pub fn report(&self, count: usize) {
        let _ = self.commands.try_send(Command::OwnedDevices(count));
    }
}

impl ClusterHandle {
    /// Where the coordinator reports the devices it runs.
    pub fn device_report(&self) -> DeviceReport {
        DeviceReport {
            commands: self.commands.clone(),
        }
    }

    /// Revokes the lease (so the others take over at once) and ends the thread.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.commands.send(Command::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
