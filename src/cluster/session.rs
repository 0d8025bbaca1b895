//! The cluster thread's work: register this dispatcher under a lease, keep the
//! lease alive, watch the dispatchers and the discovered classes' nodes, and
//! tell the coordinator ([`ClusterEvent`]); ride out etcd outages.
//!
//! One session is a connection's life: [`Session::sync`] brings the state up to
//! date (the lease checked or granted again, the registration put back if it
//! went, each watch resumed from the revision after the last one applied, or,
//! when that revision was compacted, a fresh read and a watch from the current
//! revision) and [`Session::serve`] then follows the watches and renews the
//! lease until something fails. A failure is an outage: the coordinator hears
//! `Connection { up: false }` and keeps its assignment, the session moves to
//! the next endpoint and tries again with a jittered backoff, and after a
//! successful sync the coordinator hears the new state, then `up: true`.
//!
//! Nothing here ever waits for the coordinator: events are states, queued in
//! an [`Outbox`] that keeps only the newest of each kind and hands them over
//! when the bounded channel has room, so a slow coordinator never delays a
//! lease renewal.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::etcd::{Claim, Etcd, EtcdError, EtcdErrorKind, Watch, WatchBatch};
use super::event::{ClusterEvent, NodeRecord};
use super::membership::{DispatcherInfo, Members};
use super::nodes::NodeTable;
use super::{keys, ClusterError, ClusterSpec, Command, Initial};
use crate::console;
use crate::proto::etcd::event::EventType;

/// First and largest wait between two attempts to reach etcd.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often queued events are offered to the coordinator again, and the
/// registration's value rewritten when it changed.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The registration's value is rewritten at most this often (the owned
/// device count changes at every handover).
const REWRITE_EVERY: Duration = Duration::from_secs(1);

/// Events kept waiting for the coordinator, beyond which the oldest
/// connection notices go (states are coalesced and never pile up).
const OUTBOX_LIMIT: usize = 64;

/// Why [`Session::serve`] returned.
enum Ended {
    /// The coordinator asked to stop (or is gone).
    Stop,
    /// etcd failed: an outage to ride out.
    Lost(EtcdError),
}

/// The streams a synced session follows.
struct Streams {
    /// The dispatchers' prefix.
    members: Watch,
    /// The nodes' prefix, when a class discovers its nodes.
    nodes: Option<Watch>,
    /// This dispatcher's lease renewals.
    keep_alive: super::etcd::KeepAlive,
}

/// Events for the coordinator, newest state of each kind.
pub(super) struct Outbox {
    /// To the coordinator (bounded).
    sender: flume::Sender<ClusterEvent>,
    /// Waiting for room, oldest first.
    queue: VecDeque<ClusterEvent>,
    /// The members last queued, to queue only changes.
    last_members: Option<Vec<String>>,
    /// Each class's nodes last queued.
    last_nodes: BTreeMap<String, Vec<NodeRecord>>,
}

impl Outbox {
    pub(super) fn new(sender: flume::Sender<ClusterEvent>) -> Outbox {
        Outbox {
            sender,
            queue: VecDeque::new(),
            last_members: None,
            last_nodes: BTreeMap::new(),
        }
    }

    /// Queues the members if they changed (replacing a queued older list).
    fn members(&mut self, instances: Vec<String>, revision: i64) {
        if self.last_members.as_ref() == Some(&instances) {
            return;
        }
        self.last_members = Some(instances.clone());
        self.queue
            .retain(|event| !matches!(event, ClusterEvent::Members { .. }));
        self.queue.push_back(ClusterEvent::Members {
            instances,
            revision,
        });
    }

    /// Queues a class's nodes if they changed.
    fn nodes(&mut self, class: &str, nodes: Vec<NodeRecord>, revision: i64) {
        if self.last_nodes.get(class) == Some(&nodes) {
            return;
        }
        self.last_nodes.insert(class.to_string(), nodes.clone());
        self.queue.retain(
            |event| !matches!(event, ClusterEvent::Nodes { class: queued, .. } if queued == class),
        );
        self.queue.push_back(ClusterEvent::Nodes {
            class: class.to_string(),
            nodes,
            revision,
        });
    }

    /// Queues a connection notice.
    fn connection(&mut self, up: bool, detail: String) {
        if self.queue.len() >= OUTBOX_LIMIT {
            if let Some(at) = self
                .queue
                .iter()
                .position(|event| matches!(event, ClusterEvent::Connection { .. }))
            {
                self.queue.remove(at);
            }
        }
        self.queue
            .push_back(ClusterEvent::Connection { up, detail });
    }

    /// Hands over what the channel has room for.
    fn flush(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            match self.sender.try_send(event) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(event)) => {
                    self.queue.push_front(event);
                    return;
                }
                // The run is over: nobody listens.
                Err(flume::TrySendError::Disconnected(_)) => {
                    self.queue.clear();
                    return;
                }
            }
        }
    }
}

/// One dispatcher's etcd session, across reconnections.
pub(super) struct Session {
    /// What to register and watch.
    spec: ClusterSpec,
    /// The client, rotating over the endpoints.
    etcd: Etcd,
    /// Our key under the dispatchers' prefix.
    key: String,
    /// Our registration's value.
    info: DispatcherInfo,
    /// Whether `info` changed since it was last written.
    info_dirty: bool,
    /// When `info` was last written.
    info_written: Instant,
    /// Our lease, once granted (it may have expired since).
    lease: Option<i64>,
    /// The live instances.
    members: Members,
    /// The revision `members` is current at (0: never read).
    members_revision: i64,
    /// The discovered classes' nodes.
    nodes: NodeTable,
    /// The revision `nodes` is current at (0: never read).
    nodes_revision: i64,
    /// Events for the coordinator.
    outbox: Outbox,
    /// Waits between attempts.
    backoff: Backoff,
}

impl Session {
    /// A session for `spec`; must be made inside the tokio runtime.
    pub(super) fn new(
        spec: ClusterSpec,
        events: flume::Sender<ClusterEvent>,
    ) -> Result<Session, ClusterError> {
        let etcd = Etcd::new(&spec.endpoints, spec.request_timeout())
            .map_err(|error| ClusterError(format!("[cluster] etcd: {error}")))?;
        Ok(Session {
            key: keys::dispatcher_key(&spec.cluster, &spec.instance),
            info: spec.info.clone(),
            info_dirty: false,
            info_written: Instant::now(),
            lease: None,
            members: Members::default(),
            members_revision: 0,
            nodes: NodeTable::new(&spec.discovered),
            nodes_revision: 0,
            outbox: Outbox::new(events),
            backoff: Backoff::new(BACKOFF_FIRST, BACKOFF_MAX),
            etcd,
            spec,
        })
    }

    /// The thread's whole life: the bounded start (its outcome to `ready`),
    /// then serve, ride out outages, and revoke the lease at the stop.
    pub(super) async fn run(
        mut self,
        commands: flume::Receiver<Command>,
        ready: flume::Sender<Result<Initial, ClusterError>>,
    ) {
        let mut streams = match self.start(&commands).await {
            Ok(streams) => {
                let initial = Initial {
                    members: self.members.ids(),
                    members_revision: self.members_revision,
                    nodes: self
                        .nodes
                        .classes()
                        .map(|class| (class.clone(), self.nodes.class_nodes(class)))
                        .collect(),
                    nodes_revision: self.nodes_revision,
                };
                let _ = ready.send(Ok(initial));
                streams
            }
            Err(error) => {
                let _ = ready.send(Err(error));
                self.revoke().await;
                return;
            }
        };
        loop {
            match self.serve(&mut streams, &commands).await {
                Ended::Stop => break,
                Ended::Lost(error) => {
                    self.outbox.connection(false, error.to_string());
                    self.outbox.flush();
                    match self.reconnect(&commands).await {
                        Some(resynced) => streams = resynced,
                        None => break,
                    }
                }
            }
        }
        self.revoke().await;
    }

    /// The first sync, tried until `spec.start_timeout`: an etcd that never
    /// answers is a clear error naming every endpoint and its last error.
    async fn start(
        &mut self,
        commands: &flume::Receiver<Command>,
    ) -> Result<Streams, ClusterError> {
        let began = Instant::now();
        let mut attempts = 0u32;
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        loop {
            attempts += 1;
            match self.sync(true).await {
                Ok(streams) => {
                    self.outbox.flush();
                    return Ok(streams);
                }
                Err(SyncError::Fatal(message)) => return Err(ClusterError(message)),
                Err(SyncError::Etcd(error)) if error.kind == EtcdErrorKind::Refused => {
                    return Err(ClusterError(format!(
                        "{error} (cluster {:?}, instance {:?})",
                        self.spec.cluster, self.spec.instance
                    )));
                }
                Err(SyncError::Etcd(error)) => {
                    last.insert(error.url.clone(), error.detail.clone());
                }
            }
            let delay = self.backoff.next_delay();
            if began.elapsed() + delay > self.spec.start_timeout {
                let tried: Vec<String> = self
                    .etcd
                    .urls()
                    .into_iter()
                    .map(|url| match last.get(&url) {
                        Some(why) => format!("{url} ({why})"),
                        None => url,
                    })
                    .collect();
                return Err(ClusterError(format!(
                    "etcd does not answer: {} — {attempts} attempts in {:.1} s ([cluster] etcd); is etcd running there?",
                    tried.join(", "),
                    began.elapsed().as_secs_f64()
                )));
            }
            self.etcd.rotate();
            if wait_or_stop(delay, commands, &mut self.info).await {
                return Err(ClusterError("stopped while connecting to etcd".into()));
            }
        }
    }

    /// Tries again after an outage until a sync succeeds; `None` when the
    /// coordinator asked to stop meanwhile.
    async fn reconnect(&mut self, commands: &flume::Receiver<Command>) -> Option<Streams> {
        let lost = Instant::now();
        let mut last_said = Instant::now();
        loop {
            self.etcd.rotate();
            let delay = self.backoff.next_delay();
            if wait_or_stop(delay, commands, &mut self.info).await {
                return None;
            }
            match self.sync(false).await {
                Ok(streams) => {
                    self.backoff.reset();
                    self.outbox.connection(
                        true,
                        format!(
                            "etcd answers again at {} after {:.1} s; resynchronised at revision {}",
                            self.etcd.url(),
                            lost.elapsed().as_secs_f64(),
                            self.members_revision.max(self.nodes_revision)
                        ),
                    );
                    self.outbox.flush();
                    return Some(streams);
                }
                Err(error) => {
                    // A line every 10 s while it lasts, not one per attempt.
                    if last_said.elapsed() >= Duration::from_secs(10) {
                        last_said = Instant::now();
                        let why = match error {
                            SyncError::Etcd(error) => error.to_string(),
                            SyncError::Fatal(message) => message,
                        };
                        self.outbox
                            .connection(false, format!("still retrying: {why}"));
                    }
                    self.outbox.flush();
                }
            }
        }
    }

    /// Brings everything up to date on the current endpoint: lease,
    /// registration, members, nodes; then the streams to follow.
    async fn sync(&mut self, at_start: bool) -> Result<Streams, SyncError> {
        let lease = self.ensure_lease().await?;
        self.register(lease, at_start).await?;
        let prefix = keys::dispatchers_prefix(&self.spec.cluster);
        let members = match self.resume(&prefix, self.members_revision).await? {
            Some(watch) => watch,
            None => self.fresh_members().await?,
        };
        let nodes = match self.nodes.is_empty() {
            true => None,
            false => {
                let prefix = keys::nodes_prefix(&self.spec.cluster);
                Some(match self.resume(&prefix, self.nodes_revision).await? {
                    Some(watch) => watch,
                    None => self.fresh_nodes().await?,
                })
            }
        };
        let (keep_alive, ttl) = self.etcd.keep_alive(lease).await?;
        if ttl.is_none() {
            return Err(SyncError::Etcd(EtcdError::new(
                self.etcd.url(),
                EtcdErrorKind::LeaseNotFound,
                format!("lease {lease:x} expired while syncing"),
            )));
        }
        Ok(Streams {
            members,
            nodes,
            keep_alive,
        })
    }

    /// The dispatchers read afresh, and a watch from the revision after.
    async fn fresh_members(&mut self) -> Result<Watch, EtcdError> {
        let prefix = keys::dispatchers_prefix(&self.spec.cluster);
        let (kvs, revision) = self.etcd.range_prefix(&prefix).await?;
        self.members.reset(&self.spec.cluster, &kvs);
        self.members_revision = revision;
        self.outbox.members(self.members.ids(), revision);
        self.etcd.watch_prefix(&prefix, revision + 1).await
    }

    /// The discovered classes' nodes read afresh, and a watch from the
    /// revision after.
    async fn fresh_nodes(&mut self) -> Result<Watch, EtcdError> {
        let prefix = keys::nodes_prefix(&self.spec.cluster);
        let (kvs, revision) = self.etcd.range_prefix(&prefix).await?;
        self.nodes.clear();
        for kv in &kvs {
            let change = self.nodes.read_put(&self.spec.cluster, kv).await;
            self.nodes.apply(change);
        }
        self.nodes_revision = revision;
        let classes: Vec<String> = self.nodes.classes().cloned().collect();
        for class in classes {
            let nodes = self.nodes.class_nodes(&class);
            self.outbox.nodes(&class, nodes, revision);
        }
        self.etcd.watch_prefix(&prefix, revision + 1).await
    }

    /// A watch resumed after `revision` (the events missed meanwhile come
    /// through it); `None` when there is nothing to resume or the revision
    /// was compacted, so the caller reads the prefix afresh.
    async fn resume(&self, prefix: &str, revision: i64) -> Result<Option<Watch>, EtcdError> {
        if revision == 0 {
            return Ok(None);
        }
        match self.etcd.watch_prefix(prefix, revision + 1).await {
            Ok(watch) => Ok(Some(watch)),
            Err(error) if error.kind == EtcdErrorKind::Compacted => {
                compacted(prefix, revision);
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Our lease, renewed if it still lives, else a new one.
    async fn ensure_lease(&mut self) -> Result<i64, EtcdError> {
        if let Some(lease) = self.lease {
            match self.etcd.keep_alive_once(lease).await {
                Ok(Some(_)) => return Ok(lease),
                Ok(None) => {}
                Err(error) if error.kind == EtcdErrorKind::LeaseNotFound => {}
                Err(error) => return Err(error),
            }
            console::err(format_args!(
                "cluster: the lease of instance {:?} expired while etcd was away; registering again",
                self.spec.instance
            ));
        }
        let ttl = self.spec.lease_ttl.as_secs().max(1) as i64;
        let (lease, _) = self.etcd.grant(ttl).await?;
        self.lease = Some(lease);
        Ok(lease)
    }

    /// Puts our registration under `lease`. Someone else's key at our place
    /// is a duplicate instance id: at the start, we wait up to a lease TTL
    /// for it to go (a crashed predecessor's key expires; a live one's does
    /// not), then refuse to start.
    async fn register(&mut self, lease: i64, at_start: bool) -> Result<(), SyncError> {
        let value = self.value();
        let waited = Instant::now();
        let mut said = false;
        loop {
            match self.etcd.put_if_free(&self.key, &value, lease).await? {
                Claim::Ours { .. } => {
                    self.info_dirty = false;
                    self.info_written = Instant::now();
                    return Ok(());
                }
                Claim::Held { holder } => {
                    let other: Option<DispatcherInfo> = serde_json::from_slice(&holder.value).ok();
                    let who = match &other {
                        Some(info) => format!(
                            "host {}, pid {}, started at Unix ms {}",
                            info.host, info.pid, info.started_at_ms
                        ),
                        None => String::from_utf8_lossy(&holder.value).into_owned(),
                    };
                    if holder.lease == 0 {
                        return Err(SyncError::Fatal(format!(
                            "etcd key {} exists without a lease ({who}); a dispatcher's key always has one: \
                             delete it (`etcdctl del {}`) or choose another [cluster] instance",
                            self.key, self.key
                        )));
                    }
                    let patience = self.spec.lease_ttl + Duration::from_secs(1);
                    if !at_start || waited.elapsed() >= patience {
                        return Err(SyncError::Fatal(format!(
                            "instance {:?} is already registered in etcd cluster {:?} by a live dispatcher \
                             ({who}; key {}, its lease kept alive for {:.1} s): give each dispatcher its own \
                             [cluster] instance",
                            self.spec.instance,
                            self.spec.cluster,
                            self.key,
                            waited.elapsed().as_secs_f64()
                        )));
                    }
                    if !said {
                        said = true;
                        console::err(format_args!(
                            "cluster: instance {:?} is registered already ({who}); waiting up to {:.0} s for that \
                             registration to expire (a restarted instance's old lease does)",
                            self.spec.instance,
                            patience.as_secs_f64()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    // Our own lease must outlive the wait.
                    if self.etcd.keep_alive_once(lease).await?.is_none() {
                        return Err(SyncError::Etcd(EtcdError::new(
                            self.etcd.url(),
                            EtcdErrorKind::LeaseNotFound,
                            format!("lease {lease:x} expired"),
                        )));
                    }
                }
            }
        }
    }

    /// Our registration's value.
    fn value(&self) -> Vec<u8> {
        serde_json::to_vec(&self.info).unwrap_or_default()
    }

    /// Follows the watches and renews the lease until etcd fails or the
    /// coordinator says stop.
    async fn serve(&mut self, streams: &mut Streams, commands: &flume::Receiver<Command>) -> Ended {
        let Some(lease) = self.lease else {
            return Ended::Lost(EtcdError::new(
                self.etcd.url(),
                EtcdErrorKind::LeaseNotFound,
                "no lease",
            ));
        };
        let renew_every = (self.spec.lease_ttl / 3).max(Duration::from_millis(200));
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        // When the oldest unanswered renewal went out.
        let mut unanswered: Option<Instant> = None;
        loop {
            let result: Result<(), EtcdError> = tokio::select! {
                batch = streams.members.next() => match batch {
                    Ok(batch) => self.apply_members(batch, lease).await,
                    // etcd may say so only after creating the watch: read afresh.
                    Err(error) if error.kind == EtcdErrorKind::Compacted => {
                        compacted(&keys::dispatchers_prefix(&self.spec.cluster), self.members_revision);
                        self.fresh_members().await.map(|watch| streams.members = watch)
                    }
                    Err(error) => Err(error),
                },
                batch = next_batch(&mut streams.nodes) => match batch {
                    Ok(batch) => {
                        self.apply_nodes(batch).await;
                        Ok(())
                    }
                    Err(error) if error.kind == EtcdErrorKind::Compacted => {
                        compacted(&keys::nodes_prefix(&self.spec.cluster), self.nodes_revision);
                        self.fresh_nodes().await.map(|watch| streams.nodes = Some(watch))
                    }
                    Err(error) => Err(error),
                },
                answer = streams.keep_alive.next() => match answer {
                    Ok(Some(_)) => {
                        unanswered = None;
                        Ok(())
                    }
                    Ok(None) => Err(EtcdError::new(
                        self.etcd.url(),
                        EtcdErrorKind::LeaseNotFound,
                        format!("lease {lease:x} expired"),
                    )),
                    Err(error) => Err(error),
                },
                _ = renew.tick() => {
                    match unanswered {
                        // Two renewals unanswered: the lease is about to go.
                        Some(since) if since.elapsed() >= renew_every * 2 => Err(EtcdError::new(
                            self.etcd.url(),
                            EtcdErrorKind::Unavailable,
                            format!("no lease renewal answered for {} ms", since.elapsed().as_millis()),
                        )),
                        _ => {
                            unanswered.get_or_insert_with(Instant::now);
                            streams.keep_alive.send(lease)
                        }
                    }
                },
                command = commands.recv_async() => match command {
                    Ok(Command::OwnedDevices(count)) => {
                        if self.info.devices != Some(count) {
                            self.info.devices = Some(count);
                            self.info_dirty = true;
                        }
                        Ok(())
                    }
                    Ok(Command::Stop) | Err(_) => return Ended::Stop,
                },
                _ = flush.tick() => {
                    self.outbox.flush();
                    if self.info_dirty && self.info_written.elapsed() >= REWRITE_EVERY {
                        self.rewrite(lease).await
                    } else {
                        Ok(())
                    }
                },
            };
            if let Err(error) = result {
                return Ended::Lost(error);
            }
        }
    }

    /// Writes our registration's value again (it changed).
    async fn rewrite(&mut self, lease: i64) -> Result<(), EtcdError> {
        let value = self.value();
        match self.etcd.put_if_free(&self.key, &value, lease).await? {
            Claim::Ours { .. } => {
                self.info_dirty = false;
                self.info_written = Instant::now();
                Ok(())
            }
            Claim::Held { .. } => Err(EtcdError::new(
                self.etcd.url(),
                EtcdErrorKind::Refused,
                format!("another dispatcher registered as {:?}", self.spec.instance),
            )),
        }
    }

    /// Applies a batch of the dispatchers' watch; puts our registration back
    /// if someone deleted it.
    async fn apply_members(&mut self, batch: WatchBatch, lease: i64) -> Result<(), EtcdError> {
        let mut ours_gone = false;
        for event in &batch.events {
            let Some(kv) = &event.kv else { continue };
            if event.r#type == EventType::Delete as i32 {
                if self.members.delete(&self.spec.cluster, &kv.key).as_deref()
                    == Some(self.spec.instance.as_str())
                {
                    ours_gone = true;
                }
            } else if self.members.put(&self.spec.cluster, kv).as_deref()
                == Some(self.spec.instance.as_str())
            {
                ours_gone = false;
            }
        }
        self.members_revision = self.members_revision.max(batch.revision);
        self.outbox
            .members(self.members.ids(), self.members_revision);
        if ours_gone {
            console::err(format_args!(
                "cluster: the registration of instance {:?} was deleted from etcd; putting it back",
                self.spec.instance
            ));
            self.rewrite(lease).await?;
        }
        Ok(())
    }

    /// Applies a batch of the nodes' watch: each touched class's list to the
    /// coordinator.
    async fn apply_nodes(&mut self, batch: WatchBatch) {
        let mut touched = Vec::new();
        for event in &batch.events {
            let Some(kv) = &event.kv else { continue };
            let change = if event.r#type == EventType::Delete as i32 {
                self.nodes.read_delete(&self.spec.cluster, &kv.key)
            } else {
                self.nodes.read_put(&self.spec.cluster, kv).await
            };
            if let Some(class) = self.nodes.apply(change) {
                if !touched.contains(&class) {
                    touched.push(class);
                }
            }
        }
        self.nodes_revision = self.nodes_revision.max(batch.revision);
        for class in touched {
            let nodes = self.nodes.class_nodes(&class);
            self.outbox.nodes(&class, nodes, self.nodes_revision);
        }
    }

    /// Revokes our lease, so our key goes now rather than at its expiry;
    /// bounded by the request timeout (an etcd that is away lets it expire).
    async fn revoke(&mut self) {
        if let Some(lease) = self.lease.take() {
            if let Err(error) = self.etcd.revoke(lease).await {
                console::err(format_args!(
                    "cluster: could not revoke the lease of instance {:?} ({error}); its key expires within {} s",
                    self.spec.instance,
                    self.spec.lease_ttl.as_secs()
                ));
            }
        }
        self.outbox.flush();
    }
}

/// Says that a watch could not resume after `revision` (compacted).
fn compacted(prefix: &str, revision: i64) {
    console::err(format_args!(
        "cluster: {prefix}: revision {} was compacted while etcd was away; reading it afresh",
        revision + 1
    ));
}

/// Why a sync failed.
enum SyncError {
    /// etcd failed: try again (or, at the start, report after the bound).
    Etcd(EtcdError),
    /// Something retrying will not fix (a duplicate instance).
    Fatal(String),
}

impl From<EtcdError> for SyncError {
    fn from(error: EtcdError) -> SyncError {
        SyncError::Etcd(error)
    }
}

/// The next batch of an optional watch; never ready without one.
async fn next_batch(watch: &mut Option<Watch>) -> Result<WatchBatch, EtcdError> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps `delay`; `true` when the coordinator asked to stop meanwhile (or
/// is gone). An owned-device count goes into `info`, written at the next sync.
async fn wait_or_stop(
    delay: Duration,
    commands: &flume::Receiver<Command>,
    info: &mut DispatcherInfo,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return false,
            command = commands.recv_async() => match command {
                Ok(Command::Stop) | Err(_) => return true,
                // Written with the registration at the next sync.
                Ok(Command::OwnedDevices(count)) => info.devices = Some(count),
            },
        }
    }
}
