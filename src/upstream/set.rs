//! A class's replicas for one role (its data sources, or its compute nodes) on
//! one shard, and the rules every call on them follows.
//!
//! A data sources' [`ReplicaSet`] is never empty: [`ReplicaSet::new`] refuses an
//! empty list. A compute nodes' set may be, for a class that discovers its nodes
//! in etcd while none is registered: it has no room, so the class's ticks are
//! skipped with that reason.
//! It answers the questions a call asks — which replica now
//! ([`ReplicaSet::pick`]), may I retry ([`RetryBudget`]), when do I hedge — and
//! takes every attempt's outcome back ([`Attempt::finish`]) into the replica's
//! health, ejecting a replica that keeps failing.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::balance::{self, Balance};
use super::health::{CallOutcome, Verdict};
use super::replica::Replica;
use super::retry::RetryBudget;
use crate::config::{Ejection, HealthCheck, Hedge, Upstream};
use crate::contract::Contract;
use crate::error::ErrorKind;
use crate::grpc::status::Code;

/// Which role a set plays for its class, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    DataSource,
    ComputeNode,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::DataSource => "data source",
            Role::ComputeNode => "compute node",
        }
    }
}

/// The settings a set is built with (from the class's `[classes.upstream]` and
/// `[grpc]`).
#[derive(Debug, Clone)]
pub struct SetPolicy {
    /// The class and role, for log lines.
    pub class: String,
    pub role: Role,
    /// Balancing, limits, retries, hedging, health checks, ejection.
    pub upstream: Upstream,
    /// Retry budget (see [`RetryBudget`]).
    pub retry_budget_percent: u32,
    pub retry_budget_min_per_s: u32,
    /// This shard, for log lines and to seed the balancer's draws.
    pub shard: u16,
    /// Compute nodes: the model contract the config declares, if any.
    pub contract: Option<Contract>,
    /// Compute nodes: whether the probes read `ModelMetadata`.
    pub reads_metadata: bool,
    /// Headers every call to the set's nodes carries (the class's
    /// credentials, for compute nodes), values marked sensitive.
    pub metadata: http::HeaderMap,
}

/// Refused: a data sources' set needs at least one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptySet;

/// A class's replicas for one role, on one shard.
pub struct ReplicaSet {
    /// At least one for data sources, by construction (see the module docs).
    replicas: Vec<Replica>,
    /// The algorithm that chooses among usable replicas.
    balance: Box<dyn Balance>,
    /// Calls one replica may have outstanding before it is passed over.
    max_outstanding: usize,
    /// Jobs of the class in flight on this shard that will call this set; the
    /// shard admits a new job only while this is below the set's capacity.
    jobs: Cell<usize>,
    /// Statuses worth another replica.
    retry_on: Vec<Code>,
    /// Time one attempt may take.
    attempt_timeout: Option<Duration>,
    /// When to hedge, with the latency history a percentile needs.
    hedge: Option<HedgeTimer>,
    /// Outlier ejection rules.
    ejection: Ejection,
    /// At most this many replicas ejected at once (at least one stays in).
    max_ejected: usize,
    /// Retries (and hedges) this shard may still add for the set.
    pub budget: RetryBudget,
    /// What the probes ask.
    pub health_check: HealthCheck,
    /// Time between probes of a replica that is up.
    pub probe_interval: Duration,
    /// Class, role and shard, for log lines.
    policy_name: (String, Role, u16),
    /// Whether the probes read `ModelMetadata` (compute nodes only).
    pub reads_metadata: bool,
    /// Headers every call to these nodes carries, probes included.
    pub metadata: http::HeaderMap,
    /// The contract the config declares: every replica's metadata must agree
    /// with it.
    declared: Option<Rc<Contract>>,
    /// The contract jobs check against: the declared one, else the one the
    /// first replica's metadata described; `None` checks nothing.
    contract: RefCell<Option<Rc<Contract>>>,
    /// The replica whose metadata `contract` is, when it was learned; the
    /// other replicas must describe the same model.
    learned_from: Cell<Option<usize>>,
    /// Whether a job's contract failure was told on the terminal: once per
    /// shard and class, so a source sending the wrong tensor is seen at
    /// once, and the rows and the failure breakdown count the rest.
    contract_warned: Cell<bool>,
}

/// What a replica's `ModelMetadata` meant for its set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// It agrees with the contract already held.
    Agrees,
    /// It is the class's contract on this shard from now on (worth a log line).
    Learned,
}

impl ReplicaSet {
    pub fn new(
        replicas: Vec<Replica>,
        policy: &SetPolicy,
        now: Instant,
    ) -> Result<ReplicaSet, EmptySet> {
        if replicas.is_empty() && policy.role == Role::DataSource {
            return Err(EmptySet);
        }
        let upstream = &policy.upstream;
        let count = replicas.len();
        let seed = crate::devices::stable_hash(&policy.class)
            ^ (u64::from(policy.shard) << 32)
            ^ policy.role as u64;
        let max_ejected = (count * upstream.ejection.max_ejected_percent as usize / 100)
            .min(count.saturating_sub(1));
        Ok(ReplicaSet {
            balance: balance::for_kind(upstream.balancer, count, seed),
            replicas,
            max_outstanding: upstream.max_outstanding_per_replica.max(1),
            jobs: Cell::new(0),
            retry_on: upstream.retry_on.clone(),
            attempt_timeout: upstream.attempt_timeout,
            hedge: upstream.hedge.map(|hedge| HedgeTimer::new(hedge, now)),
            ejection: upstream.ejection.clone(),
            max_ejected,
            budget: RetryBudget::new(
                policy.retry_budget_percent,
                policy.retry_budget_min_per_s,
                now,
            ),
            health_check: upstream.health_check.clone(),
            probe_interval: upstream.probe_interval,
            policy_name: (policy.class.clone(), policy.role, policy.shard),
            reads_metadata: policy.reads_metadata,
            metadata: policy.metadata.clone(),
            declared: policy.contract.clone().map(Rc::new),
            contract: RefCell::new(policy.contract.clone().map(Rc::new)),
            learned_from: Cell::new(None),
            contract_warned: Cell::new(false),
        })
    }

    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    pub fn replica(&self, index: usize) -> &Replica {
        &self.replicas[index]
    }

    pub fn retry_on(&self) -> &[Code] {
        &self.retry_on
    }

    pub fn role(&self) -> Role {
        self.policy_name.1
    }

    pub fn class(&self) -> &str {
        &self.policy_name.0
    }

    pub fn shard(&self) -> u16 {
        self.policy_name.2
    }

    /// The contract a job checks its inputs and outputs against, if any.
    pub fn contract(&self) -> Option<Rc<Contract>> {
        self.contract.borrow().clone()
    }

    /// Takes in what replica `index`'s `ModelMetadata` described: checked
    /// against the declared contract, or against the one another replica
    /// described; without either it becomes the contract. The error says why
    /// the replica cannot serve the class.
    pub fn admit_metadata(&self, index: usize, served: Contract) -> Result<Admitted, String> {
        if let Some(declared) = &self.declared {
            return declared.agrees_with(&served).map(|()| Admitted::Agrees);
        }
        match self.learned_from.get() {
            Some(from) if from != index => {
                let current = self.contract().ok_or("no contract was kept")?;
                let same = current.inputs == served.inputs && current.outputs == served.outputs;
                if same {
                    return Ok(Admitted::Agrees);
                }
                Err(format!(
                    "it describes model {:?} as {}, {} describes it as {}",
                    served.model,
                    served.describe(),
                    current.origin,
                    current.describe()
                ))
            }
            _ => {
                let changed = self.contract().is_none_or(|current| {
                    current.inputs != served.inputs || current.outputs != served.outputs
                });
                self.learned_from.set(Some(index));
                if !changed {
                    return Ok(Admitted::Agrees);
                }
                self.contract.replace(Some(Rc::new(served)));
                Ok(Admitted::Learned)
            }
        }
    }

    /// A job broke the class's contract for `detail`: said on the terminal the
    /// first time on this shard.
    pub fn warn_contract(&self, detail: &str) {
        if self.contract_warned.replace(true) {
            return;
        }
        let (class, _, shard) = &self.policy_name;
        crate::console::err(format_args!(
            "percore: shard {shard}: class {class:?} breaks its model contract: {detail} \
             (such jobs fail with this reason; said once per shard)"
        ));
    }

    /// Whether replica `index` should get new calls now.
    fn is_usable(&self, index: usize, now: Instant) -> bool {
        let replica = &self.replicas[index];
        replica.health.outstanding() < self.max_outstanding
            && replica.health.is_ready()
            && !replica.health.is_ejected(now)
            && !replica.pool.is_backing_off(now)
    }

    /// Why replica `index`'s server refuses the class's model, if it does: a
    /// job that [`pick`](Self::pick) sends there fails with this instead.
    pub fn refusal(&self, index: usize) -> Option<Box<str>> {
        self.replicas[index].health.refusal()
    }

    /// The replica for the next attempt, never one in `tried`. Prefers usable
    /// replicas; when none is (all down or not ready), takes one that is only
    /// unhealthy, so the call fails with that replica's own reason rather than
    /// a vague one; fails only when every replica is full or ejected.
    pub fn pick(&self, now: Instant, tried: &[usize]) -> Result<usize, ErrorKind> {
        let untried = |index: usize| !tried.contains(&index);
        if let Some(index) = self.balance.pick(
            &self.replicas,
            &|index| untried(index) && self.is_usable(index, now),
            now,
        ) {
            return Ok(index);
        }
        let admissible = |index: usize| {
            let health = &self.replicas[index].health;
            untried(index) && health.outstanding() < self.max_outstanding && !health.is_ejected(now)
        };
        self.balance
            .pick(&self.replicas, &admissible, now)
            .ok_or(ErrorKind::NoReplica(
                "every replica is at its outstanding limit, ejected or already tried",
            ))
    }

    /// Whether another job that will call this set may start: the jobs in
    /// flight stay below what the replicas that are not ejected may hold.
    pub fn has_room(&self, now: Instant) -> bool {
        let capacity = self
            .replicas
            .iter()
            .filter(|replica| !replica.health.is_ejected(now))
            .count()
            * self.max_outstanding;
        self.jobs.get() < capacity
    }

    /// A job that will call this set is admitted; it counts until the slot is
    /// dropped. Taken when the tick is dispatched, before the job's task runs,
    /// so a burst of due ticks cannot all pass [`ReplicaSet::has_room`] at once.
    pub fn admit(self: &Rc<Self>) -> JobSlot {
        self.jobs.set(self.jobs.get() + 1);
        JobSlot(self.clone())
    }

    /// The deadline of one attempt starting `now` within the call's `deadline`.
    pub fn attempt_deadline(&self, now: Instant, deadline: Instant) -> Instant {
        match self.attempt_timeout {
            Some(timeout) => deadline.min(now + timeout),
            None => deadline,
        }
    }

    /// Whether the class hedges at all (no clock read when it does not).
    pub fn hedges(&self) -> bool {
        self.hedge.is_some()
    }

    /// When a hedge should start after the first attempt, if hedging is on.
    pub fn hedge_delay(&self, now: Instant) -> Option<Duration> {
        self.hedge.as_ref().and_then(|hedge| hedge.delay(now))
    }

    /// An attempt on replica `index` starts now.
    pub fn start(&self, index: usize, now: Instant) -> Attempt<'_> {
        self.replicas[index].health.start();
        Attempt {
            set: self,
            index,
            started: now,
            finished: false,
        }
    }

    /// Records an ended attempt; ejects the replica when it broke a rule and
    /// the set may lose one more.
    fn record(&self, index: usize, outcome: CallOutcome, latency: Duration, now: Instant) {
        if let Some(hedge) = &self.hedge {
            if outcome != CallOutcome::Cancelled {
                hedge.observe(latency);
            }
        }
        let replica = &self.replicas[index];
        if replica.health.record(outcome, latency, now, &self.ejection) != Verdict::ShouldEject {
            return;
        }
        let ejected = self
            .replicas
            .iter()
            .filter(|replica| replica.health.is_ejected(now))
            .count();
        if ejected >= self.max_ejected {
            return;
        }
        let time = replica.health.eject(now, &self.ejection);
        let (class, role, shard) = &self.policy_name;
        crate::console::err(format_args!(
            "percore: shard {shard}: {} {} of class {class:?} ejected for {} ms ({} of its last calls failed)",
            role.as_str(),
            replica.node(),
            time.as_millis(),
            replica.health.failures.get(),
        ));
    }
}

/// Counts a job against its set's capacity while it lives.
pub struct JobSlot(Rc<ReplicaSet>);

impl Drop for JobSlot {
    fn drop(&mut self) {
        let jobs = &self.0.jobs;
        jobs.set(jobs.get().saturating_sub(1));
    }
}

/// One attempt in progress on one replica. Dropped unfinished (a hedge that
/// lost, a shard aborted), it counts as cancelled: outstanding goes down, and
/// the time it ran is only a lower bound of the replica's latency.
pub struct Attempt<'a> {
    set: &'a ReplicaSet,
    index: usize,
    started: Instant,
    finished: bool,
}

impl Attempt<'_> {
    pub fn index(&self) -> usize {
        self.index
    }

    /// The attempt ended with `result`: its latency and outcome go to the
    /// replica's health and the balancer.
    pub fn finish<T>(mut self, result: &Result<T, ErrorKind>) {
        self.finished = true;
        let outcome = match result {
            Ok(_) => CallOutcome::Success,
            Err(kind) if kind.is_replica_failure() => CallOutcome::Failure,
            Err(_) => CallOutcome::Success,
        };
        let now = Instant::now();
        self.set
            .record(self.index, outcome, now - self.started, now);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let now = Instant::now();
            self.set
                .record(self.index, CallOutcome::Cancelled, now - self.started, now);
        }
    }
}

/// How long to wait before hedging: fixed, or a percentile of recent attempt
/// latencies on this shard, recomputed once a second.
struct HedgeTimer {
    /// What the config asked for.
    hedge: Hedge,
    /// Recent attempt latencies in µs (percentile hedging only), cleared every
    /// [`HEDGE_HISTORY`] so the percentile follows the replicas.
    history: RefCell<Option<hdrhistogram::Histogram<u64>>>,
    /// The current delay; `None` until the history has enough calls.
    delay: Cell<Option<Duration>>,
    /// When the delay is next recomputed.
    refresh_at: Cell<Instant>,
    /// When the history is next cleared.
    clear_at: Cell<Instant>,
}

/// How long the latency history behind a percentile hedge lasts.
const HEDGE_HISTORY: Duration = Duration::from_secs(10);
/// Calls the history needs before a percentile means anything.
const HEDGE_MIN_SAMPLES: u64 = 100;

impl HedgeTimer {
    fn new(hedge: Hedge, now: Instant) -> HedgeTimer {
        let (history, delay) = match hedge {
            Hedge::After(delay) => (None, Some(delay)),
            Hedge::Percentile(_) => (
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).ok(),
                None,
            ),
        };
        HedgeTimer {
            hedge,
            history: RefCell::new(history),
            delay: Cell::new(delay),
            refresh_at: Cell::new(now + Duration::from_secs(1)),
            clear_at: Cell::new(now + HEDGE_HISTORY),
        }
    }

    fn observe(&self, latency: Duration) {
        if let Some(history) = self.history.borrow_mut().as_mut() {
            history.saturating_record((latency.as_micros() as u64).max(1));
        }
    }

    fn delay(&self, now: Instant) -> Option<Duration> {
        let Hedge::Percentile(percentile) = self.hedge else {
            return self.delay.get();
        };
        if now >= self.refresh_at.get() {
            self.refresh_at.set(now + Duration::from_secs(1));
            let mut history = self.history.borrow_mut();
            if let Some(history) = history.as_mut() {
                if history.len() >= HEDGE_MIN_SAMPLES {
                    let micros = history.value_at_quantile(percentile / 100.0);
                    self.delay.set(Some(Duration::from_micros(micros)));
                }
                if now >= self.clear_at.get() {
                    self.clear_at.set(now + HEDGE_HISTORY);
                    history.reset();
                }
            }
        }
        self.delay.get()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn policy(upstream: Upstream) -> SetPolicy {
        SetPolicy {
            class: "camera".into(),
            role: Role::ComputeNode,
            upstream,
            retry_budget_percent: 20,
            retry_budget_min_per_s: 10,
            shard: 0,
            contract: None,
            reads_metadata: true,
            metadata: http::HeaderMap::new(),
        }
    }

    fn set(count: usize, upstream: Upstream) -> ReplicaSet {
        let now = Instant::now();
        let replicas = (0..count)
            .map(|index| {
                let node = SocketAddr::from(([127, 0, 0, 1], 9000 + index as u16));
                Replica::detached(node, 1, now)
            })
            .collect();
        match ReplicaSet::new(replicas, &policy(upstream), now) {
            Ok(set) => set,
            Err(EmptySet) => panic!("a set of {count}"),
        }
    }

    #[test]
    fn an_empty_data_source_set_cannot_be_built() {
        let policy = SetPolicy {
            role: Role::DataSource,
            ..policy(Upstream::default())
        };
        let result = ReplicaSet::new(Vec::new(), &policy, Instant::now());
        assert!(matches!(result, Err(EmptySet)));
    }

    #[test]
    fn an_empty_compute_set_has_no_room_and_picks_nothing() {
        // A discovered class while no node is registered.
        let now = Instant::now();
        let set = ReplicaSet::new(Vec::new(), &policy(Upstream::default()), now)
            .expect("a compute set may be empty");
        assert!(!set.has_room(now));
        assert!(set.pick(now, &[]).is_err());
    }

    #[test]
    fn retries_avoid_replicas_already_tried() {
        let set = set(3, Upstream::default());
        let now = Instant::now();
        for _ in 0..50 {
            let index = set.pick(now, &[0, 2]).expect("replica 1 is left");
            assert_eq!(index, 1);
        }
        assert!(set.pick(now, &[0, 1, 2]).is_err());
    }

    #[test]
    fn a_failing_replica_is_ejected_but_never_the_last_ones() {
        let set = set(
            3,
            Upstream {
                ejection: Ejection {
                    consecutive_failures: 2,
                    max_ejected_percent: 100,
                    ..Ejection::default()
                },
                ..Upstream::default()
            },
        );
        let fail = |index| {
            let attempt = set.start(index, Instant::now());
            attempt.finish::<()>(&Err(ErrorKind::Protocol("bad".into())));
        };
        for index in 0..3 {
            fail(index);
            fail(index);
        }
        let now = Instant::now();
        let ejected: Vec<bool> = set
            .replicas()
            .iter()
            .map(|replica| replica.health.is_ejected(now))
            .collect();
        // 100 % allowed, but one always stays in.
        assert_eq!(ejected, vec![true, true, false]);
        for _ in 0..20 {
            assert_eq!(set.pick(now, &[]), Ok(2));
        }
    }

    #[test]
    fn a_full_replica_is_passed_over_and_admission_follows_capacity() {
        let set = Rc::new(set(
            2,
            Upstream {
                max_outstanding_per_replica: 2,
                ..Upstream::default()
            },
        ));
        let now = Instant::now();
        let slots: Vec<_> = (0..3).map(|_| set.admit()).collect();
        assert!(set.has_room(now));
        let _a = set.start(0, now);
        let _b = set.start(0, now);
        for _ in 0..20 {
            assert_eq!(set.pick(now, &[]), Ok(1));
        }
        let _c = set.start(1, now);
        let _d = set.start(1, now);
        assert!(matches!(set.pick(now, &[]), Err(ErrorKind::NoReplica(_))));
        let _slot = set.admit();
        assert!(!set.has_room(now), "4 jobs fill 2 replicas × 2");
        drop(slots);
        assert!(set.has_room(now));
    }

    #[test]
    fn a_percentile_hedge_waits_for_enough_history_then_follows_it() {
        let start = Instant::now();
        let timer = HedgeTimer::new(Hedge::Percentile(90.0), start);
        assert_eq!(timer.delay(start), None, "no history, no hedging");
        for micros in 1..=1000u64 {
            timer.observe(Duration::from_micros(micros * 10));
        }
        // Recomputed once a second: not yet...
        assert_eq!(timer.delay(start + Duration::from_millis(500)), None);
        // ...then the 90th percentile of 10 µs .. 10 ms, to the histogram's
        // two significant digits.
        let delay = timer
            .delay(start + Duration::from_secs(1))
            .expect("a delay once there are 1,000 calls");
        assert!((8_900..=9_100).contains(&delay.as_micros()), "{delay:?}");
        let fixed = HedgeTimer::new(Hedge::After(Duration::from_millis(7)), start);
        assert_eq!(fixed.delay(start), Some(Duration::from_millis(7)));
    }

    #[test]
    fn a_cancelled_attempt_frees_its_slot() {
        let set = set(1, Upstream::default());
        let attempt = set.start(0, Instant::now());
        assert_eq!(set.replica(0).health.outstanding(), 1);
        drop(attempt);
        assert_eq!(set.replica(0).health.outstanding(), 0);
        assert_eq!(set.replica(0).health.requests.get(), 0);
    }
}
