//! The per-core loop: one shard owns a slice of the fleet and everything its jobs
//! touch.
//!
//! A shard runs on one pinned executor. It holds its devices, their schedule, its
//! own connections to every node, its counters and histograms — all plain or `Rc`
//! state that no other thread sees. It talks to the rest of the process only over
//! the bounded flume channels in [`ShardChannels`], made at start-up: batches of
//! results to the sink, reports to the coordinator, control messages from it.
//!
//! Its devices sit in [`slots`]: each has a slot with a generation, the
//! schedule fires slots, and a job holds its slot and generation, so devices
//! can join and leave while the shard runs ([`Control::Devices`], a live
//! reload) without a job of a device that left touching the one that took its
//! slot. Devices leave at the next round of due ticks; they join at their first
//! tick at or after the time the coordinator says (a handover's safety delay).
//!
//! A job is the whole job ([`job::run`]) except under `bench --stages`, where
//! the run's [`StageMode`] makes it one stage alone: the fetch, the infer on a
//! payload the shard fetched once, or a synthetic row for the sink; the choice
//! is one match per job in `run_job`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Class, HealthCheck, Upstream};
use crate::devices::stable_hash;
use crate::endpoint::Endpoint;
use crate::grpc::client::ClientSettings;
use crate::inbox::Inbox;
use crate::job::{self, ClassRoute, Payload};
use crate::record::{ClassIndex, DeviceId, JobRecord, Outcome, SkipReason, StageLatency};
use crate::reload::Reload;
use crate::runtime;
use crate::stats::{Counters, ShardReport, ShardStats, UpstreamStats};
use crate::tick::{self, Clock, Schedule};
use crate::upstream::probe::{self, ModelRef};
use crate::upstream::{NodePool, Replica, ReplicaSet, Role, SetPolicy};

pub mod slots;

use slots::{SlotRef, SlotState, Slots};

/// How long the first result of a batch waits for others before the batch is
/// handed to the sink, when the shard is awake anyway (a job finishing after
/// this sends it): short enough to keep sink lag low, long enough that
/// batches amortise the channel and the transaction.
const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// How long the first result of a batch waits at most: when no job finishes
/// after FLUSH_INTERVAL to send it, a timer does. Waking only for that would
/// cost a shard at a few thousand jobs a second a wake-up every 5 ms (and the
/// writer a transaction): at that rate a job finishes within a millisecond
/// anyway, and at lower rates a row reaches the sink within this.
const FLUSH_LATEST: Duration = Duration::from_millis(25);

/// How often progress counters go to the coordinator: at every whole second of
/// the run, so each interval covers one second of the run and per-second plots
/// line up with the rows' times.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// What drives jobs on a shard.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    /// Devices fire on their tick grid for ticks in `[start_ms, end_ms)`.
    Ticks { start_ms: i64, end_ms: i64 },
    /// Closed loop (benchmarks): `concurrency` jobs always in flight on this shard,
    /// devices taken in turn, from `start_ms` until `end_ms`.
    ClosedLoop {
        concurrency: usize,
        start_ms: i64,
        end_ms: i64,
    },
    /// Open loop (benchmarks): jobs arrive at `rate_per_s` on this shard, evenly
    /// spaced or as a Poisson process, whatever is in flight; devices taken in turn.
    /// Latency counts from the planned arrival, so falling behind shows.
    OpenLoop {
        rate_per_s: f64,
        poisson: bool,
        start_ms: i64,
        end_ms: i64,
    },
}

impl Workload {
    /// The Unix-ms window `[start, end)` the workload runs in.
    fn window(&self) -> (i64, i64) {
        match *self {
            Workload::Ticks { start_ms, end_ms }
            | Workload::ClosedLoop {
                start_ms, end_ms, ..
            }
            | Workload::OpenLoop {
                start_ms, end_ms, ..
            } => (start_ms, end_ms),
        }
    }
}

/// Which part of a job the shards run: the whole job (always, outside
/// `percore bench --stages`), or one stage alone so that stage alone is loaded.
/// Chosen once per run; the shard matches on it once per job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StageMode {
    /// Fetch, then ModelInfer: the production job.
    #[default]
    Whole,
    /// Only the Fetch (its deadline, retries and check); the row's output is empty.
    FetchOnly,
    /// Only the ModelInfer, on a payload each shard fetched once at its start.
    InferOnly,
    /// No call at all: each job is an ok row made at once, so only the sink
    /// (the real writer and database) is loaded.
    SinkOnly,
}

impl StageMode {
    /// The stage's name in tables, file names and JSON.
    pub fn name(self) -> &'static str {
        match self {
            StageMode::Whole => "job",
            StageMode::FetchOnly => "fetch",
            StageMode::InferOnly => "infer",
            StageMode::SinkOnly => "sink",
        }
    }
}

/// Messages from the coordinator to a shard.
#[derive(Debug, Clone)]
pub enum Control {
    /// Fire no ticks at or after this Unix ms (or after now, if it has passed);
    /// finish the jobs in flight and report. The coordinator picks one time for
    /// all shards so the run's window is the same everywhere.
    StopAt(i64),
    /// Stop now and do not wait for the jobs in flight: their results cannot be
    /// written (the sink failed for good) or the run has already failed.
    Abort,
    /// The coordinator has read this thread's CPU time: the shard may exit.
    Release,
    /// A live reload (tick-driven runs only): applied before the next round of
    /// due ticks.
    Reload(Arc<Reload>),
    /// Devices this shard gains and loses (tick-driven runs only): the losses
    /// before the next round of due ticks, the gains from `start_at_ms` on.
    Devices(Box<DeviceChanges>),
}

/// Devices a shard gains and loses at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChanges {
    /// Devices to run, with their class; one already here is left as it is.
    pub add: Vec<(DeviceId, ClassIndex)>,
    /// Devices to stop: none of their ticks fires from the next round on; a
    /// job in flight ends and is written. One not here is ignored.
    pub remove: Vec<DeviceId>,
    /// The gained devices' first tick is their first at or after this Unix ms
    /// (`i64::MIN`: the next tick).
    pub start_at_ms: i64,
}

impl DeviceChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// A shard's ends of the channels made at start-up.
pub struct ShardChannels {
    /// Batches of results to the sink writer; bounded, so a slow sink pushes back.
    pub results: flume::Sender<Vec<JobRecord>>,
    /// Emptied batch vectors coming back from the writer, to reuse their memory.
    pub recycled: flume::Receiver<Vec<JobRecord>>,
    /// Progress and the final report to the coordinator.
    pub reports: flume::Sender<ShardReport>,
    /// Stop and release from the coordinator.
    pub control: flume::Receiver<Control>,
}

/// Limits and settings every shard gets the same copy of.
#[derive(Debug, Clone)]
pub struct ShardLimits {
    /// Jobs in flight before further ticks are skipped.
    pub max_in_flight: usize,
    /// HTTP/2 connections per node this shard may open.
    pub connections_per_node: usize,
    /// Largest response message accepted.
    pub max_message_len: usize,
    /// Connect plus handshake timeout.
    pub connect_timeout: Duration,
    /// Most extra attempts of one call (retries and hedges).
    pub retries: u32,
    /// Retry budget: a share of a class's calls over the last 10 s...
    pub retry_budget_percent: u32,
    /// ...plus this many per second.
    pub retry_budget_min_per_s: u32,
    /// HTTP/2 keepalive PING interval (`None`: no pings) and its timeout.
    pub keepalive: Option<(Duration, Duration)>,
}

/// Everything a shard starts from; built by the coordinator and moved to the
/// shard's thread.
pub struct ShardPlan {
    /// This shard's number, written in its rows.
    pub index: u16,
    /// The devices this shard starts with, and their classes (more may join
    /// and these may leave while it runs).
    pub devices: Vec<(DeviceId, ClassIndex)>,
    /// The class table, read-only; each shard builds its own routes from it.
    pub classes: Arc<[Class]>,
    /// Shared Unix-to-monotonic mapping, so all shards agree on tick times.
    pub clock: Clock,
    /// What drives jobs, and the run's window.
    pub workload: Workload,
    /// Which part of each job runs (the whole job outside `bench --stages`).
    pub stage: StageMode,
    /// Limits shared by every shard.
    pub limits: ShardLimits,
    /// This shard's ends of the start-up channels.
    pub channels: ShardChannels,
    /// Reports the shard's end if the plan is dropped without finishing: before its
    /// executor starts (glommio failed to create it) or while a panic unwinds it.
    pub exit_notice: ExitNotice,
}

/// A shard's state while it runs. Lives on the shard's thread only.
struct Shard {
    /// This shard's number.
    index: u16,
    /// The routes and this shard's devices: what a reload or a handover
    /// changes. Borrowed briefly (never across an await) by each dispatch and job.
    members: RefCell<Members>,
    /// Builds routes and keeps every node pool, for a reload's new routes.
    builder: RefCell<RouteBuilder>,
    /// Reloads the coordinator sent, for the tick loop to apply between two
    /// rounds of due ticks, in order.
    pending_reloads: RefCell<Vec<Arc<Reload>>>,
    /// Device changes the coordinator sent, for the tick loop to apply
    /// between two rounds of due ticks, in order.
    pending_changes: RefCell<Vec<DeviceChanges>>,
    /// Jobs started and not finished.
    in_flight: Cell<usize>,
    /// Calls retried on another node, for the metrics.
    retries: Cell<u64>,
    /// The executor's own counters so far (glommio resets them on read, so
    /// they are added up here), for the metrics.
    executor: Cell<runtime::ExecutorStats>,
    /// Stalls of this shard's executor so far.
    stalls: Cell<u64>,
    /// From the limits: skip ticks beyond this many jobs in flight.
    max_in_flight: usize,
    /// Results waiting for the flusher; skips start when it holds this many.
    backlog_limit: usize,
    /// Results not yet handed to the sink.
    results: RefCell<Vec<JobRecord>>,
    /// Counters and histograms.
    stats: RefCell<ShardStats>,
    /// Set once no new jobs will start; the flusher then drains and stops.
    no_more_jobs: Cell<bool>,
    /// The flusher while it waits: for a first result (an idle shard sleeps
    /// instead of waking every FLUSH_INTERVAL), then for the push that finds
    /// the batch due. Woken by that push, or when no more jobs will start.
    flusher_waiting: Cell<Option<std::task::Waker>>,
    /// When the results waiting now are due to go to the sink (their first
    /// one's time plus FLUSH_INTERVAL); `None` while there are none.
    flush_due: Cell<Option<Instant>>,
    /// Per class: set when the shard is done or a reload replaced the class's
    /// route, to stop the probes of its replicas.
    probes_stopped: RefCell<Vec<Rc<Cell<bool>>>>,
    /// Control messages from the coordinator as they arrive: a loop sleeps
    /// until its next due time or a message, whichever comes first.
    inbox: Rc<Inbox<Control>>,
    /// Progress and the final report to the coordinator.
    reports: flume::Sender<ShardReport>,
    /// Set when the coordinator asks to stop early: the Unix ms to stop at.
    stop_at_ms: Cell<Option<i64>>,
    /// Set by [`Control::Abort`]: stop without waiting for the jobs in flight.
    aborted: Cell<bool>,
    /// When the next progress report is due: a whole second of the run.
    next_progress: Cell<Instant>,
    /// When the run's first tick is due; progress reports fall on whole seconds
    /// from it.
    run_start: Instant,
    /// Next device in turn for closed-loop workers.
    closed_loop_cursor: Cell<usize>,
    /// The run's shared Unix-to-monotonic mapping.
    clock: Clock,
    /// Which part of each job runs: matched once per job in [`run_job`].
    stage: StageMode,
    /// Infer-only stage: per class, the payload fetched once at the start (or
    /// by the first job of the class whose fetch succeeded); empty otherwise.
    payloads: RefCell<Vec<Option<Rc<Payload>>>>,
}

/// What a live reload or a handover changes on a shard, in one place.
struct Members {
    /// Per class: this shard's replica sets and the class settings a job
    /// needs; a job holds its own `Rc`, so a reload never pulls one from under it.
    routes: Vec<Rc<ClassRoute>>,
    /// Per class: for each of its compute nodes (replica order), its index in
    /// the writer's names of the class's nodes, which only grow; a job holds
    /// the map of its route, so a row names the node that answered even when
    /// the class's nodes changed meanwhile.
    node_names: Vec<Rc<[u16]>>,
    /// Every node pool of this shard, for connection and traffic gauges.
    pools: Vec<Rc<NodePool>>,
    /// This shard's devices, one slot each; the schedule and jobs point here.
    slots: Slots,
}

/// The executor's main future: runs the shard's workload, drains, reports, and
/// waits to be released.
pub async fn run(plan: ShardPlan) {
    let ShardPlan {
        index,
        devices,
        classes,
        clock,
        workload,
        stage,
        limits,
        channels,
        mut exit_notice,
    } = plan;
    let mut builder = RouteBuilder::new(&limits, index);
    let node_names = classes
        .iter()
        .map(|class| (0..class.compute_nodes.len() as u16).collect())
        .collect();
    let mut slots = Slots::with_capacity(devices.len());
    for (count, (id, class)) in devices.into_iter().enumerate() {
        if let Some(held) = slots.insert(id, class) {
            slots.schedule(held);
        }
        // A million devices take tens of ms: in slices, so the executor's
        // stall detector sees no task hold it (the first tick is START_LEAD away).
        if count % 65_536 == 65_535 {
            runtime::yield_if_needed().await;
        }
    }
    let routes = match builder.routes(&classes) {
        Ok(built) => built,
        Err(message) => {
            // The coordinator checks this before starting shards; should it be
            // missed, the exit notice tells it this shard never ran.
            crate::console::err(format_args!("percore: shard {index}: {message}"));
            return;
        }
    };
    let (start_ms, end_ms) = workload.window();
    let run_start = clock.instant_of(start_ms);
    let shard = Rc::new(Shard {
        index,
        members: RefCell::new(Members {
            slots,
            node_names,
            pools: builder.pools(),
            routes,
        }),
        builder: RefCell::new(builder),
        pending_reloads: RefCell::new(Vec::new()),
        pending_changes: RefCell::new(Vec::new()),
        in_flight: Cell::new(0),
        retries: Cell::new(0),
        executor: Cell::new(runtime::ExecutorStats::default()),
        stalls: Cell::new(0),
        max_in_flight: limits.max_in_flight.max(1),
        backlog_limit: (limits.max_in_flight * 4).max(65_536),
        results: RefCell::new(Vec::with_capacity(1024)),
        stats: RefCell::new(ShardStats::new(classes.len())),
        no_more_jobs: Cell::new(false),
        flusher_waiting: Cell::new(None),
        flush_due: Cell::new(None),
        probes_stopped: RefCell::new(Vec::new()),
        stop_at_ms: Cell::new(None),
        aborted: Cell::new(false),
        next_progress: Cell::new(run_start + PROGRESS_INTERVAL),
        run_start,
        closed_loop_cursor: Cell::new(0),
        clock,
        inbox: Inbox::listen(channels.control, |message| {
            matches!(message, Control::Release)
        }),
        reports: channels.reports,
        stage,
        payloads: RefCell::new(Vec::new()),
    });
    if stage == StageMode::InferOnly {
        fetch_payloads(&shard).await;
    }

    shard.start_all_probes();
    let flusher = runtime::spawn(flush_results(
        shard.clone(),
        channels.results,
        channels.recycled,
    ));
    match workload {
        Workload::Ticks { .. } => tick_loop(&shard, &classes, start_ms, end_ms).await,
        Workload::ClosedLoop { concurrency, .. } => {
            closed_loop(&shard, concurrency, start_ms, end_ms).await
        }
        Workload::OpenLoop {
            rate_per_s,
            poisson,
            ..
        } => {
            let arrivals = Arrivals::new(rate_per_s, poisson, index);
            open_loop(&shard, arrivals, start_ms, end_ms).await
        }
    }
    let end_ms = shard.end_ms(end_ms);
    shard.flush_batches();
    while shard.in_flight.get() > 0 && !shard.aborted.get() {
        runtime::sleep(Duration::from_millis(1)).await;
        shard.poll_control();
    }
    shard.no_more_jobs.set(true);
    shard.wake_flusher();
    for stopped in shard.probes_stopped.borrow().iter() {
        stopped.set(true);
    }
    let error = flusher.await.err();
    let interval = Box::new(shard.stats.borrow_mut().take_interval());
    let mut stats = Box::new(shard.stats.borrow().clone());
    stats.counters = shard.counters();
    let upstream = UpstreamStats::collect(&shard.members.borrow().routes, Instant::now());
    let _ = shard
        .reports
        .send_async(ShardReport::Finished {
            shard: index,
            stats,
            interval,
            upstream,
            end_ms,
            error,
        })
        .await;
    exit_notice.finished = true;
    // Stay alive until the coordinator has read this thread's CPU time:
    // Release is the inbox's last message (and a coordinator gone closes it).
    while !shard.inbox.is_closed() {
        shard.inbox.arrival().await;
        while shard.inbox.pop().is_some() {}
    }
}

/// Tells the coordinator if a shard ends without its final report — its executor
/// could not be created, or a panic unwound it — so the run stops instead of
/// waiting for a report that will never come.
pub struct ExitNotice {
    /// The shard it speaks for.
    shard: u16,
    reports: flume::Sender<ShardReport>,
    /// Set once `Finished` has been sent.
    finished: bool,
}

impl ExitNotice {
    pub fn new(shard: u16, reports: flume::Sender<ShardReport>) -> ExitNotice {
        ExitNotice {
            shard,
            reports,
            finished: false,
        }
    }
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self
                .reports
                .try_send(ShardReport::Exited { shard: self.shard });
        }
    }
}

/// Builds a shard's routes, one per class: one pool per node, shared by the
/// classes that use the node, and one replica set per class and role. Kept
/// for the shard's life, so a class rebuilt at a reload keeps the pools (and
/// connections) of the nodes it still uses.
struct RouteBuilder {
    /// Connect timeout and keepalive, shared by every pool.
    settings: Rc<ClientSettings>,
    /// Every node pool of the shard, by endpoint (host and port as written,
    /// scheme, TLS settings, authority): two classes that name one node alike
    /// share its connections.
    pools: HashMap<Endpoint, Rc<NodePool>>,
    /// Connections per node, retries, budget and message limits.
    limits: ShardLimits,
    /// This shard, for the pools' jitter seeds and the sets' log lines.
    shard: u16,
}

impl RouteBuilder {
    fn new(limits: &ShardLimits, shard: u16) -> RouteBuilder {
        RouteBuilder {
            settings: Rc::new(ClientSettings {
                connect_timeout: limits.connect_timeout,
                keepalive_interval: limits.keepalive.map(|(interval, _)| interval),
                keepalive_timeout: limits
                    .keepalive
                    .map_or(Duration::from_secs(5), |(_, timeout)| timeout),
                ..ClientSettings::default()
            }),
            pools: HashMap::new(),
            limits: limits.clone(),
            shard,
        }
    }

    /// Every class's route, in class order.
    fn routes(&mut self, classes: &[Class]) -> Result<Vec<Rc<ClassRoute>>, String> {
        classes.iter().map(|class| self.route(class)).collect()
    }

    /// Every node pool built so far.
    fn pools(&self) -> Vec<Rc<NodePool>> {
        self.pools.values().cloned().collect()
    }

    fn replica_set(&mut self, class: &Class, role: Role) -> Result<Rc<ReplicaSet>, String> {
        let now = Instant::now();
        let nodes = match role {
            Role::DataSource => &class.data_sources,
            Role::ComputeNode => &class.compute_nodes,
        };
        let replicas = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let pool = self.pools.entry(node.clone()).or_insert_with(|| {
                    NodePool::new(
                        node,
                        self.limits.connections_per_node,
                        self.settings.clone(),
                        u64::from(self.shard),
                    )
                });
                let weight = match role {
                    Role::DataSource => 1,
                    Role::ComputeNode => class.upstream.weight(index),
                };
                Replica::new(pool.clone(), weight, now)
            })
            .collect();
        // The class's limits, hedging and weights are about its compute nodes;
        // its data sources get the balancing, retries and ejection only.
        let upstream = match role {
            Role::ComputeNode => class.upstream.clone(),
            Role::DataSource => Upstream {
                weights: Vec::new(),
                max_outstanding_per_replica: Upstream::default().max_outstanding_per_replica,
                hedge: None,
                health_check: HealthCheck::None,
                ..class.upstream.clone()
            },
        };
        let policy = SetPolicy {
            class: class.name.clone(),
            role,
            upstream,
            retry_budget_percent: self.limits.retry_budget_percent,
            retry_budget_min_per_s: self.limits.retry_budget_min_per_s,
            shard: self.shard,
            contract: match role {
                Role::ComputeNode => class.contract.declared.clone(),
                Role::DataSource => None,
            },
            reads_metadata: role == Role::ComputeNode && class.contract.metadata,
            // Credentials are the compute nodes' (the data sources speak
            // percore's own protocol): never sent where they are not asked for.
            metadata: match role {
                Role::ComputeNode => compute_headers(class),
                Role::DataSource => http::HeaderMap::new(),
            },
        };
        ReplicaSet::new(replicas, &policy, now)
            .map(Rc::new)
            .map_err(|_| format!("class {:?} has no {}s", class.name, role.as_str()))
    }

    fn route(&mut self, class: &Class) -> Result<Rc<ClassRoute>, String> {
        Ok(Rc::new(ClassRoute {
            name: class.name.clone(),
            model: class.model.clone(),
            model_version: class.model_version.clone(),
            input_name: class.input_name.clone(),
            requested_outputs: class
                .requested_outputs
                .iter()
                .map(|name| job::requested_output(name))
                .collect(),
            parameters: class
                .parameters
                .iter()
                .map(|(name, value)| (name.clone(), job::parameter(value)))
                .collect(),
            request_id: class.request_id,
            deadline: Duration::from_millis(class.deadline_ms),
            output: class.output.clone(),
            sources: self.replica_set(class, Role::DataSource)?,
            computes: self.replica_set(class, Role::ComputeNode)?,
            max_message_len: self.limits.max_message_len,
            retries: self.limits.retries,
            batcher: class.batching.as_ref().map(job::Batcher::new),
        }))
    }
}

/// The headers of every call to a class's compute nodes (or gateway): its
/// metadata, and in gateway mode the routing headers (class and model names,
/// not secret, so HPACK may index them).
fn compute_headers(class: &Class) -> http::HeaderMap {
    let mut headers = header_map(&class.metadata);
    if let Some(gateway) = &class.gateway {
        for (name, value) in gateway.headers(&class.name, &class.model) {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
    }
    headers
}

/// A class's metadata as request headers, each value marked sensitive so
/// HPACK never indexes it. The config checked every name and value.
fn header_map(metadata: &crate::config::Metadata) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &metadata.0 {
        let (Ok(name), Ok(mut value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value.expose()),
        ) else {
            continue;
        };
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    headers
}

/// One probe task per replica of `route`, until `stopped` is set (the shard
/// is done, or a reload replaced the route).
fn start_probes(route: &ClassRoute, stopped: &Rc<Cell<bool>>) {
    let model = Rc::new(ModelRef {
        name: route.model.clone(),
        version: route.model_version.clone(),
        requested_outputs: route
            .requested_outputs
            .iter()
            .map(|output| output.name.clone())
            .collect(),
    });
    for set in [&route.sources, &route.computes] {
        for index in 0..set.replicas().len() {
            runtime::spawn(probe::run(
                set.clone(),
                index,
                model.clone(),
                stopped.clone(),
            ))
            .detach();
        }
    }
}

/// The period of each class, by class index: the schedule's lanes.
fn periods_of(classes: &[Class]) -> Vec<u64> {
    classes.iter().map(|class| class.period_ms).collect()
}

/// A scheduled slot's entry in the schedule: its class's lane, its phase, the slot.
fn schedule_entry(periods: &[u64], local: u32, slot: &slots::Slot) -> (usize, u64, u32) {
    let class = usize::from(slot.class);
    // Slots only hold classes the shard has routes for, and every route's
    // class has a period; a missing one would be a bug, kept from panicking.
    let period = periods.get(class).copied().unwrap_or(1).max(1);
    (class, tick::phase_ms(stable_hash(&slot.id), period), local)
}

async fn tick_loop(shard: &Rc<Shard>, classes: &[Class], start_ms: i64, end_ms: i64) {
    let mut periods = periods_of(classes);
    let mut schedule = shard.schedule(classes, start_ms);
    // Every tick at or before this has been fired: changes apply after it, so
    // a device that stays is neither skipped nor fired twice.
    let mut fired_through = start_ms - 1;
    // Gained devices waiting for their start, earliest first.
    let mut waiting: Vec<(i64, Vec<SlotRef>)> = Vec::new();
    let mut end_ms = end_ms;
    loop {
        if let Some(stop_ms) = shard.poll_control() {
            end_ms = end_ms.min(stop_ms);
        }
        let reloads = std::mem::take(&mut *shard.pending_reloads.borrow_mut());
        for reload in reloads {
            shard.apply(&reload);
            periods = periods_of(&reload.classes);
            let changes = reload.devices.get(usize::from(shard.index)).cloned();
            if let Some(changes) = changes {
                shard.change_devices(
                    changes,
                    &mut schedule,
                    &periods,
                    &mut waiting,
                    fired_through + 1,
                );
            }
            // Periods may have changed: every phase is placed again.
            schedule = shard.schedule(&reload.classes, fired_through + 1);
        }
        let changes = std::mem::take(&mut *shard.pending_changes.borrow_mut());
        for changes in changes {
            shard.change_devices(
                changes,
                &mut schedule,
                &periods,
                &mut waiting,
                fired_through + 1,
            );
        }
        let through = shard.clock.now_ms().min(end_ms - 1);
        // Gains whose start has come: the ticks before it fire first, so the
        // gained devices' first tick is their first at or after the start.
        while waiting.first().is_some_and(|(start, _)| *start <= through) {
            let (start, held) = waiting.remove(0);
            if start - 1 > fired_through {
                schedule.fire_due(start - 1, |_, local, tick_ms| {
                    shard.dispatch(local, tick_ms, shard.clock.instant_of(tick_ms))
                });
                fired_through = start - 1;
            }
            shard.start_waiting(held, &mut schedule, &periods, fired_through + 1);
        }
        schedule.fire_due(through, |_, local, tick_ms| {
            shard.dispatch(local, tick_ms, shard.clock.instant_of(tick_ms))
        });
        fired_through = fired_through.max(through);
        shard.progress_if_due();
        // No tick left before the end: the shard still waits out the window (a
        // class with a long period, a shard with few devices), so the run lasts
        // what was asked and its summary covers the whole of it.
        let next_due = schedule.next_due_ms().filter(|&next| next < end_ms);
        if next_due.is_none() && shard.clock.now_ms() >= end_ms {
            break;
        }
        let mut wake = shard.next_wake();
        if let Some(next) = next_due {
            wake = wake.min(shard.clock.instant_of(next));
        }
        if let Some((start, _)) = waiting.first() {
            wake = wake.min(shard.clock.instant_of(*start));
        }
        if next_due.is_none() && end_ms < i64::MAX {
            wake = wake.min(shard.clock.instant_of(end_ms));
        }
        shard.sleep_until(wake).await;
    }
}

async fn closed_loop(shard: &Rc<Shard>, concurrency: usize, start_ms: i64, end_ms: i64) {
    if shard.members.borrow().slots.is_empty() {
        return;
    }
    runtime::sleep_until(shard.clock.instant_of(start_ms)).await;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| runtime::spawn(closed_loop_worker(shard.clone(), end_ms)))
        .collect();
    while shard.clock.now_ms() < shard.end_ms(end_ms) {
        let end = shard.clock.instant_of(shard.end_ms(end_ms));
        shard.sleep_until(shard.next_wake().min(end)).await;
        shard.poll_control();
        shard.progress_if_due();
    }
    shard.flush_batches();
    for worker in workers {
        worker.await;
    }
}

async fn closed_loop_worker(shard: Rc<Shard>, end_ms: i64) {
    loop {
        let now_ms = shard.clock.now_ms();
        if now_ms >= shard.end_ms(end_ms) {
            return;
        }
        let Some(local) = shard.next_idle_device() else {
            runtime::sleep(Duration::from_millis(1)).await;
            continue;
        };
        // A device that ran this millisecond takes the next one: keys stay unique.
        let tick_ms = shard.next_tick_ms(local, now_ms);
        let held = shard.begin(local);
        run_job(&shard, held, tick_ms, Instant::now()).await;
        runtime::yield_if_needed().await;
    }
}

/// When open-loop jobs arrive: evenly spaced, or a Poisson process.
struct Arrivals {
    /// Mean time between arrivals.
    mean_gap: Duration,
    /// Exponential gaps instead of `mean_gap` every time.
    poisson: bool,
    /// xorshift state for exponential gaps, seeded per shard.
    rng: u64,
}

impl Arrivals {
    fn new(rate_per_s: f64, poisson: bool, shard: u16) -> Arrivals {
        Arrivals {
            mean_gap: Duration::from_secs_f64(1.0 / rate_per_s.max(1e-3)),
            poisson,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (shard as u64 + 1),
        }
    }

    fn next_gap(&mut self) -> Duration {
        if !self.poisson {
            return self.mean_gap;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let uniform = ((self.rng >> 11) as f64 / (1u64 << 53) as f64).max(f64::MIN_POSITIVE);
        self.mean_gap.mul_f64(-uniform.ln())
    }
}

/// Wakeups closer together than this are merged: arrivals due within it start
/// together (their planned times, and so their latencies, are unchanged).
const OPEN_LOOP_GRANULARITY: Duration = Duration::from_micros(200);

async fn open_loop(shard: &Rc<Shard>, mut arrivals: Arrivals, start_ms: i64, end_ms: i64) {
    if shard.members.borrow().slots.is_empty() {
        return;
    }
    let mut planned = shard.clock.instant_of(start_ms);
    loop {
        shard.poll_control();
        let end = shard.clock.instant_of(shard.end_ms(end_ms));
        let now = Instant::now();
        while planned <= now && planned < end {
            let local = shard.next_device_in_turn();
            let planned_ms = shard.clock.unix_ms_of(planned);
            let tick_ms = shard.next_tick_ms(local, planned_ms);
            shard.dispatch(local, tick_ms, planned);
            planned += arrivals.next_gap();
        }
        shard.progress_if_due();
        if planned >= end {
            return;
        }
        let wake = planned
            .max(now + OPEN_LOOP_GRANULARITY)
            .min(shard.next_wake());
        shard.sleep_until(wake).await;
    }
}

/// Infer-only stage: fetches one payload per class, with a device of that class
/// this shard owns, before the first job is due. A class whose fetch fails is
/// fetched again by its first job.
async fn fetch_payloads(shard: &Shard) {
    let (routes, devices) = {
        let members = shard.members.borrow();
        // One device per class is enough.
        let mut devices: Vec<Option<DeviceId>> = vec![None; members.routes.len()];
        for (_, slot) in members.slots.scheduled() {
            if let Some(first @ None) = devices.get_mut(usize::from(slot.class)) {
                *first = Some(slot.id.clone());
            }
        }
        (members.routes.clone(), devices)
    };
    let mut payloads = vec![None; routes.len()];
    for (class, slot) in payloads.iter_mut().enumerate() {
        if let Some(Some(id)) = devices.get(class) {
            let tick_ms = shard.clock.now_ms();
            if let Ok(payload) = job::fetch_payload(&routes[class], id, tick_ms).await {
                *slot = Some(Rc::new(payload));
            }
        }
    }
    *shard.payloads.borrow_mut() = payloads;
}

/// Infer-only stage: the class's cached payload and its ModelInfer, or, while
/// no payload is cached, a fetch of one first (kept for the jobs after it).
async fn run_infer_only(
    shard: &Shard,
    class: usize,
    route: &ClassRoute,
    device_id: &str,
    tick_ms: i64,
    planned: Instant,
) -> job::Finished {
    let cached = shard.payloads.borrow().get(class).cloned().flatten();
    let payload = match cached {
        Some(payload) => payload,
        None => match job::fetch_payload(route, device_id, tick_ms).await {
            Ok(payload) => {
                let payload = Rc::new(payload);
                let mut payloads = shard.payloads.borrow_mut();
                if payloads.len() <= class {
                    payloads.resize(class + 1, None);
                }
                payloads[class] = Some(payload.clone());
                payload
            }
            Err(error) => return job::failed_at_once(error, planned),
        },
    };
    job::run_infer_only(route, &payload, planned).await
}

/// Runs the job of the device in `held` for one tick and hands its record over.
/// The device's id, class and route are taken at the start: the device may
/// leave (and its slot be reused) while the job runs, and its row is still its own.
async fn run_job(shard: &Shard, held: SlotRef, tick_ms: i64, planned: Instant) {
    let (device, class, route, node_names) = {
        let members = shard.members.borrow();
        let slot = members.slots.get(held.slot);
        let class = slot.class;
        (
            slot.id.clone(),
            class,
            members.routes[class as usize].clone(),
            members.node_names.get(class as usize).cloned(),
        )
    };
    let route = &*route;
    let device_id = device.as_str();
    let finished = match shard.stage {
        StageMode::Whole => job::run(route, device_id, tick_ms, planned).await,
        StageMode::FetchOnly => job::run_fetch_only(route, device_id, tick_ms, planned).await,
        StageMode::InferOnly => {
            run_infer_only(shard, class as usize, route, device_id, tick_ms, planned).await
        }
        StageMode::SinkOnly => job::synthetic(planned),
    };
    shard
        .retries
        .set(shard.retries.get() + finished.retries as u64);
    let (outcome, outputs) = match finished.result {
        Ok(outputs) => (Outcome::Ok, outputs),
        Err(error) => (Outcome::Failed(error), Vec::new()),
    };
    shard.members.borrow().slots.finish(held);
    shard.in_flight.set(shard.in_flight.get() - 1);
    // The node's index among the writer's names of the class's nodes; a
    // replica past the map (none: the map is the route's) names none.
    let compute_node = finished.compute_node.and_then(|replica| {
        node_names
            .as_deref()
            .and_then(|names| names.get(usize::from(replica)).copied())
    });
    shard.push(JobRecord {
        device,
        tick_ms,
        class,
        shard: shard.index,
        outcome,
        outputs,
        latency: finished.latency,
        compute_node,
        attempts: finished.attempts,
        ready_at: Instant::now(),
    });
}

/// Hands results to the sink in batches while there are any, until the shard
/// is done and drained; with none it sleeps until the next one. A batch goes
/// when a result is pushed FLUSH_INTERVAL or more after the batch's first (the
/// shard is awake then anyway), or FLUSH_LATEST after it by a timer, or at the
/// end. Awaiting a full channel is the sink's backpressure.
async fn flush_results(
    shard: Rc<Shard>,
    results: flume::Sender<Vec<JobRecord>>,
    recycled: flume::Receiver<Vec<JobRecord>>,
) -> Result<(), String> {
    loop {
        // Park until there is something to flush (or the end).
        shard
            .flusher_wait(|| !shard.results.borrow().is_empty())
            .await;
        let first = Instant::now();
        shard.flush_due.set(Some(first + FLUSH_INTERVAL));
        // Then until a push finds the batch due, or FLUSH_LATEST.
        runtime::until_deadline(
            first + FLUSH_LATEST,
            shard.flusher_wait(|| shard.flush_due.get().is_none()),
        )
        .await;
        shard.flush_due.set(None);
        let last_round = shard.no_more_jobs.get();
        if !shard.results.borrow().is_empty() {
            let spare = recycled
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(1024));
            let batch = std::mem::replace(&mut *shard.results.borrow_mut(), spare);
            let rows = batch.len();
            if results.send_async(batch).await.is_err() {
                return Err(format!(
                    "shard {}: the sink stopped taking results; {rows} results could not be written",
                    shard.index
                ));
            }
        }
        if last_round {
            return Ok(());
        }
    }
}

impl Shard {
    /// Starts the job for a due tick planned for `planned`, or records why it is
    /// skipped.
    fn dispatch(self: &Rc<Self>, local: u32, tick_ms: i64, planned: Instant) {
        let members = self.members.borrow();
        let slot = members.slots.get(local);
        let class = slot.class;
        let route = &members.routes[class as usize];
        let skip = if slot.busy.get() {
            Some(SkipReason::PreviousJobRunning)
        } else if self.in_flight.get() >= self.max_in_flight {
            Some(SkipReason::ShardAtCapacity)
        } else if self.results.borrow().len() >= self.backlog_limit {
            Some(SkipReason::SinkBacklog)
        } else if !route.computes.has_room(planned.max(Instant::now())) {
            // Only a discovered class's set is ever empty.
            Some(match route.computes.replicas().is_empty() {
                true => SkipReason::NoComputeNode,
                false => SkipReason::ReplicasAtCapacity,
            })
        } else {
            None
        };
        if let Some(reason) = skip {
            let device = slot.id.clone();
            drop(members);
            self.push(JobRecord {
                device,
                tick_ms,
                class,
                shard: self.index,
                outcome: Outcome::Skipped(reason),
                outputs: Vec::new(),
                latency: StageLatency {
                    schedule_lag_us: planned.elapsed().as_micros() as u64,
                    ..StageLatency::default()
                },
                compute_node: None,
                attempts: 0,
                ready_at: Instant::now(),
            });
            return;
        }
        let held = members.slots.begin(local);
        self.in_flight.set(self.in_flight.get() + 1);
        let admitted = route.computes.admit();
        drop(members);
        let shard = self.clone();
        runtime::spawn(async move {
            run_job(&shard, held, tick_ms, planned).await;
            drop(admitted);
        })
        .detach();
    }

    /// A closed-loop job starts on `local`: the hold its job keeps.
    fn begin(&self, local: u32) -> SlotRef {
        self.in_flight.set(self.in_flight.get() + 1);
        self.members.borrow().slots.begin(local)
    }

    /// The next tick key of a closed- or open-loop device: `now_ms`, or one
    /// past its last if that was this millisecond, so keys stay unique.
    fn next_tick_ms(&self, local: u32, now_ms: i64) -> i64 {
        let members = self.members.borrow();
        let last = &members.slots.get(local).last_tick_ms;
        let tick_ms = now_ms.max(last.get() + 1);
        last.set(tick_ms);
        tick_ms
    }

    /// The tick schedule of this shard's scheduled devices under `classes`,
    /// from `start_ms` on.
    fn schedule(&self, classes: &[Class], start_ms: i64) -> Schedule {
        let members = self.members.borrow();
        let periods = periods_of(classes);
        let entries = members
            .slots
            .scheduled()
            .map(|(local, slot)| schedule_entry(&periods, local, slot));
        Schedule::new(&periods, entries, start_ms)
    }

    /// Applies device changes to the slots and the schedule, as of `from_ms`
    /// (every tick before it has fired): losses at once, gains at once when
    /// they may start by then, else kept waiting in `waiting` for their time.
    fn change_devices(
        &self,
        changes: DeviceChanges,
        schedule: &mut Schedule,
        periods: &[u64],
        waiting: &mut Vec<(i64, Vec<SlotRef>)>,
        from_ms: i64,
    ) {
        let mut members = self.members.borrow_mut();
        let classes = members.routes.len();
        let mut removed = Vec::with_capacity(changes.remove.len());
        for id in &changes.remove {
            if let Some((slot, SlotState::Scheduled)) = members.slots.remove(id) {
                removed.push(slot);
            }
        }
        let mut gained = Vec::with_capacity(changes.add.len());
        for (id, class) in changes.add {
            // The coordinator only names classes it sent; one past the routes
            // would have no route to run on.
            if usize::from(class) >= classes {
                crate::console::err(format_args!(
                    "percore: shard {}: device {id} has class {class}, beyond the {classes} known; not run",
                    self.index
                ));
                continue;
            }
            if let Some(held) = members.slots.insert(id, class) {
                gained.push(held);
            }
        }
        let mut added = Vec::new();
        if changes.start_at_ms <= from_ms {
            for held in gained {
                if members.slots.schedule(held) {
                    added.push(schedule_entry(
                        periods,
                        held.slot,
                        members.slots.get(held.slot),
                    ));
                }
            }
        } else if !gained.is_empty() {
            let at = waiting.partition_point(|(start, _)| *start <= changes.start_at_ms);
            waiting.insert(at, (changes.start_at_ms, gained));
        }
        schedule.change(periods, &removed, &added, from_ms);
    }

    /// Gained devices whose wait is over start, as of `start_ms` (every tick
    /// before it has fired).
    fn start_waiting(
        &self,
        held: Vec<SlotRef>,
        schedule: &mut Schedule,
        periods: &[u64],
        start_ms: i64,
    ) {
        let mut members = self.members.borrow_mut();
        let mut added = Vec::with_capacity(held.len());
        for held in held {
            // Removed while it waited: its slot changed generation.
            if members.slots.schedule(held) {
                added.push(schedule_entry(
                    periods,
                    held.slot,
                    members.slots.get(held.slot),
                ));
            }
        }
        schedule.change(periods, &[], &added, start_ms);
    }

    /// Starts the probes of every class's route.
    fn start_all_probes(&self) {
        let members = self.members.borrow();
        let mut stops = self.probes_stopped.borrow_mut();
        for route in &members.routes {
            let stopped = Rc::new(Cell::new(false));
            start_probes(route, &stopped);
            stops.push(stopped);
        }
    }

    /// Applies a live reload: new routes for the classes that changed (their
    /// old probes stop; jobs in flight keep the old route until they end). The
    /// tick loop then applies its device changes and builds its schedule again.
    fn apply(&self, reload: &Reload) {
        let mut routes = Vec::with_capacity(reload.classes.len());
        for (class, settings) in reload.classes.iter().enumerate() {
            let current = self.members.borrow().routes.get(class).cloned();
            let route = match current {
                Some(route) if !reload.changed.get(class).copied().unwrap_or(true) => route,
                _ => match self.builder.borrow_mut().route(settings) {
                    Ok(route) => {
                        let stopped = Rc::new(Cell::new(false));
                        start_probes(&route, &stopped);
                        let mut stops = self.probes_stopped.borrow_mut();
                        if let Some(old) = stops.get(class) {
                            old.set(true);
                            stops[class] = stopped;
                        } else {
                            stops.push(stopped);
                        }
                        route
                    }
                    // The coordinator checked every class; should one still
                    // fail here, the old route (if any) stays.
                    Err(message) => {
                        crate::console::err(format_args!(
                            "percore: shard {}: reload: {message}",
                            self.index
                        ));
                        match self.members.borrow().routes.get(class) {
                            Some(route) => route.clone(),
                            None => return,
                        }
                    }
                },
            };
            routes.push(route);
        }
        self.stats.borrow_mut().add_classes(reload.classes.len());
        let mut members = self.members.borrow_mut();
        members.routes = routes;
        members.node_names = reload
            .node_names
            .iter()
            .map(|names| Rc::from(&names[..]))
            .collect();
        members.pools = self.builder.borrow().pools();
    }

    /// Sends the batches gathering on every class without waiting for more
    /// jobs: no new job starts (the run ends or was aborted).
    fn flush_batches(&self) {
        for route in &self.members.borrow().routes {
            if let Some(batcher) = &route.batcher {
                batcher.flush();
            }
        }
    }

    fn push(&self, record: JobRecord) {
        self.stats.borrow_mut().record(&record);
        let ready_at = record.ready_at;
        self.results.borrow_mut().push(record);
        match self.flush_due.get() {
            // The batch is due: the flusher sends it now, on this wake-up.
            Some(due) if ready_at >= due => {
                self.flush_due.set(None);
                self.wake_flusher();
            }
            Some(_) => {}
            // The batch's first result, if the flusher waits for one.
            None => self.wake_flusher(),
        }
    }

    /// Resolves when `ready()` holds or no more jobs will start; the flusher's
    /// only way to wait for the shard, woken by [`Shard::wake_flusher`].
    async fn flusher_wait(&self, ready: impl Fn() -> bool) {
        std::future::poll_fn(|cx| {
            if self.no_more_jobs.get() || ready() {
                std::task::Poll::Ready(())
            } else {
                self.flusher_waiting.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Wakes the flusher if it is parked waiting for a result (under load it
    /// never is, and this is one `Cell` read).
    fn wake_flusher(&self) {
        if let Some(waker) = self.flusher_waiting.take() {
            waker.wake();
        }
    }

    /// The next device in turn, busy or not (open loop: a busy one is skipped and
    /// recorded as such).
    fn next_device_in_turn(&self) -> u32 {
        let local = self.closed_loop_cursor.get() % self.members.borrow().slots.len();
        self.closed_loop_cursor.set(local + 1);
        local as u32
    }

    /// The next device in turn whose previous job has finished.
    fn next_idle_device(&self) -> Option<u32> {
        let members = self.members.borrow();
        let count = members.slots.len();
        let start = self.closed_loop_cursor.get();
        let found = (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&local| {
                let slot = members.slots.get(local as u32);
                slot.state == SlotState::Scheduled && !slot.busy.get()
            })?;
        self.closed_loop_cursor.set(found + 1);
        Some(found as u32)
    }

    /// Applies pending control messages; returns the stop time if one was asked
    /// for. A stop time already past becomes now: ticks already fired stay fired.
    fn poll_control(&self) -> Option<i64> {
        while let Some(message) = self.inbox.pop() {
            match message {
                Control::StopAt(stop_ms) => {
                    let stop_ms = stop_ms.max(self.clock.now_ms());
                    let earliest = self.stop_at_ms.get().map_or(stop_ms, |s| s.min(stop_ms));
                    self.stop_at_ms.set(Some(earliest));
                }
                Control::Abort => {
                    self.aborted.set(true);
                    self.stop_at_ms.set(Some(self.clock.now_ms()));
                }
                Control::Reload(reload) => {
                    self.pending_reloads.borrow_mut().push(reload);
                }
                Control::Devices(changes) => {
                    self.pending_changes.borrow_mut().push(*changes);
                }
                Control::Release => {}
            }
        }
        self.stop_at_ms.get()
    }

    /// When the loop must look up again even if nothing is due: for the next
    /// progress report (a control message wakes it at once, see
    /// [`Shard::sleep_until`]).
    fn next_wake(&self) -> Instant {
        self.next_progress.get()
    }

    /// Sleeps until `wake`, or until a control message arrives.
    async fn sleep_until(&self, wake: Instant) {
        if self.inbox.is_closed() {
            // Nothing more can arrive (the coordinator is gone): a plain sleep,
            // not a wait that would end at once, every time.
            runtime::sleep_until(wake).await;
        } else {
            runtime::until_deadline(wake, self.inbox.arrival()).await;
        }
    }

    /// Sends progress if a whole second of the run has passed since the last.
    fn progress_if_due(&self) {
        let now = Instant::now();
        if now < self.next_progress.get() {
            return;
        }
        self.send_progress();
        // The next whole second of the run after now (a late wake skips none).
        let seconds = now.saturating_duration_since(self.run_start).as_secs() + 1;
        self.next_progress
            .set(self.run_start + PROGRESS_INTERVAL * seconds as u32);
    }

    /// Adds up the executor's counters and logs its stalls since the last
    /// look, each with the shard's number, glommio's report and backtrace.
    fn watch(&self) {
        let mut executor = self.executor.get();
        executor.add(&runtime::take_stats());
        self.executor.set(executor);
        let (stalls, reports) = runtime::take_stalls();
        if stalls == 0 {
            return;
        }
        self.stalls.set(self.stalls.get() + stalls);
        for report in &reports {
            crate::console::err(format_args!(
                "percore: shard {}: stall: {report}",
                self.index
            ));
        }
        let unreported = stalls - reports.len() as u64;
        if unreported > 0 {
            crate::console::err(format_args!(
                "percore: shard {}: {unreported} more stalls in the last second",
                self.index
            ));
        }
    }

    /// The run's end: the planned one, or an earlier stop.
    fn end_ms(&self, planned_end_ms: i64) -> i64 {
        self.stop_at_ms
            .get()
            .map_or(planned_end_ms, |stop_ms| stop_ms.min(planned_end_ms))
    }

    /// Counters with the gauges and traffic filled in as of now.
    fn counters(&self) -> Counters {
        let mut counters = self.stats.borrow().counters;
        counters.in_flight = self.in_flight.get() as u64;
        counters.retries = self.retries.get();
        self.watch();
        let executor = self.executor.get();
        counters.tasks_run = executor.tasks_run;
        counters.scheduler_runs = executor.scheduler_runs;
        counters.busy_us = executor.busy.as_micros() as u64;
        counters.stalls = self.stalls.get();
        (counters.parks, counters.preemptions) = runtime::context_switches();
        for pool in &self.members.borrow().pools {
            counters.connections += pool.open_connections() as u64;
            let (sent, received) = pool.traffic();
            counters.bytes_sent += sent;
            counters.bytes_received += received;
        }
        counters
    }

    fn send_progress(&self) {
        let counters = self.counters();
        let interval = Box::new(self.stats.borrow_mut().take_interval());
        let upstream = UpstreamStats::collect(&self.members.borrow().routes, Instant::now());
        let failures = self.stats.borrow().failures.clone();
        // Progress is advisory: if the coordinator is behind, drop this one. Its
        // interval's latencies stay in the whole-run histograms.
        let _ = self.reports.try_send(ShardReport::Progress {
            shard: self.index,
            counters,
            interval,
            upstream,
            failures,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_dropped_before_its_report_says_so() {
        let (reports_tx, reports_rx) = flume::bounded(4);
        let notice = ExitNotice {
            shard: 3,
            reports: reports_tx.clone(),
            finished: false,
        };
        // As when a panic unwinds the executor and drops the shard's main future.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _notice = notice;
            panic!("a bug on the shard");
        }));
        assert!(unwound.is_err());
        assert!(matches!(
            reports_rx.try_recv(),
            Ok(ShardReport::Exited { shard: 3 })
        ));

        let finished = ExitNotice {
            shard: 4,
            reports: reports_tx,
            finished: true,
        };
        drop(finished);
        assert!(
            reports_rx.try_recv().is_err(),
            "a finished shard sends nothing more"
        );
    }

    #[test]
    fn workload_windows_are_read_alike() {
        let ticks = Workload::Ticks {
            start_ms: 5,
            end_ms: 9,
        };
        let open = Workload::OpenLoop {
            rate_per_s: 1.0,
            poisson: false,
            start_ms: 5,
            end_ms: 9,
        };
        assert_eq!(ticks.window(), (5, 9));
        assert_eq!(open.window(), (5, 9));
    }
}
