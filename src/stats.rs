//! Per-shard counters and latency histograms.
//!
//! A shard records into its own [`ShardStats`] without locks (it is the only
//! writer): totals per stage, per class, and an interval set that it hands to the
//! coordinator every second (and then starts afresh), so the coordinator can show
//! the last second's p99 and keep a per-second log. Everything is merged off the
//! shards, from copies sent over a channel.
//!
//! The same goes for the upstreams: with each report a shard reads its own
//! replicas' counters and gauges into an [`UpstreamStats`] (a few dozen
//! `Cell` reads, once a second, never per job), and the coordinator merges the
//! shards' latest copies into [`UpstreamTotals`] for `/metrics` and the summary.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::error::Stage;
use crate::failures::FailureBreakdown;
use crate::job::ClassRoute;
use crate::record::{ClassIndex, JobRecord, Outcome};
use crate::upstream::{ReplicaSet, Role};

/// Highest latency a histogram tracks exactly: 100 s, in microseconds. Larger
/// values are clamped to it, never dropped; a job's deadline is far below it.
pub const MAX_TRACKED_US: u64 = 100_000_000;

/// Significant decimal digits: 3 gives 0.1% resolution across the range.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Stage names, in report order. Fetch, infer and end-to-end are of ok jobs.
pub const STAGES: [&str; 5] = ["schedule_lag", "fetch", "infer", "sink_lag", "end_to_end"];

/// Names of the failed jobs' time-to-failure histograms, in report order: the
/// interval log's tags and the `.hgrm` files' names for [`FailedHistograms`].
pub const FAILED_STAGES: [&str; 3] = ["failed_fetch", "failed_infer", "failed_end_to_end"];

/// The interval log's tag for the schedule lag of skipped ticks: one sample per
/// skipped tick, so each second's skips can be counted from the log.
pub const SKIPPED_TAG: &str = "skipped";

/// Every tag the interval log may carry, in the order it writes them within a
/// second: the ok stages, the failed ones, the skips.
pub const LOG_TAGS: [&str; 9] = [
    STAGES[0],
    STAGES[1],
    STAGES[2],
    STAGES[3],
    STAGES[4],
    FAILED_STAGES[0],
    FAILED_STAGES[1],
    FAILED_STAGES[2],
    SKIPPED_TAG,
];

/// Counts by outcome, plus gauges and traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Jobs that succeeded, failed, and ticks skipped.
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Jobs started and not yet finished, at the time of the copy.
    pub in_flight: u64,
    /// Open HTTP/2 connections, at the time of the copy.
    pub connections: u64,
    /// Calls retried on another node after a retryable failure.
    pub retries: u64,
    /// gRPC message bytes sent and received (framing included, HTTP/2 headers not).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The shard's executor: tasks polled, how often its scheduler chose a
    /// task queue, and the time it spent running tasks (µs), from glommio.
    pub tasks_run: u64,
    pub scheduler_runs: u64,
    pub busy_us: u64,
    /// Times a task queue of the shard ran past its time slice by the stall
    /// threshold (each logged with a backtrace).
    pub stalls: u64,
    /// The shard thread's voluntary context switches (parks: it slept
    /// waiting for I/O or a timer) and involuntary ones (the kernel gave its
    /// CPU to another thread), from the kernel.
    pub parks: u64,
    pub preemptions: u64,
}

impl Counters {
    pub fn jobs(&self) -> u64 {
        self.ok + self.failed + self.skipped
    }

    pub fn add(&mut self, other: &Counters) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.in_flight += other.in_flight;
        self.connections += other.connections;
        self.retries += other.retries;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.tasks_run += other.tasks_run;
        self.scheduler_runs += other.scheduler_runs;
        self.busy_us += other.busy_us;
        self.stalls += other.stalls;
        self.parks += other.parks;
        self.preemptions += other.preemptions;
    }

    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Skipped(_) => self.skipped += 1,
        }
    }
}

/// A latency histogram with percore's bounds (µs, 1..=100 s, 3 digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// One histogram per stage, in microseconds.
#[derive(Debug, Clone)]
pub struct StageHistograms {
    /// Planned tick → job start, of every job that ran (ok or failed).
    pub schedule_lag: Histogram<u64>,
    /// The data-source call (successful jobs).
    pub fetch: Histogram<u64>,
    /// The compute call (successful jobs).
    pub infer: Histogram<u64>,
    /// Result ready on the shard → row committed; recorded by the sink writer.
    pub sink_lag: Histogram<u64>,
    /// Planned tick → result ready (successful jobs).
    pub end_to_end: Histogram<u64>,
    /// Failed jobs' time to failure, kept apart so a fast failure does not
    /// flatter the ok jobs' latencies nor a slow one spoil them.
    pub failed: FailedHistograms,
    /// Planned tick → the skip, of skipped ticks: its count per second is the
    /// per-second skip count the report plots.
    pub skipped: Histogram<u64>,
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms {
            schedule_lag: new_histogram(),
            fetch: new_histogram(),
            infer: new_histogram(),
            sink_lag: new_histogram(),
            end_to_end: new_histogram(),
            failed: FailedHistograms::default(),
            skipped: new_histogram(),
        }
    }
}

/// Time to failure of failed jobs, per stage, in microseconds.
#[derive(Debug, Clone)]
pub struct FailedHistograms {
    /// Jobs that failed in Fetch (or its check): the fetch's start → the failure.
    pub fetch: Histogram<u64>,
    /// Jobs that failed in ModelInfer (or its output check): the call's start →
    /// the failure.
    pub infer: Histogram<u64>,
    /// Every failed job: planned tick → the failure, ready for the sink.
    pub end_to_end: Histogram<u64>,
}

impl Default for FailedHistograms {
    fn default() -> Self {
        FailedHistograms {
            fetch: new_histogram(),
            infer: new_histogram(),
            end_to_end: new_histogram(),
        }
    }
}

impl FailedHistograms {
    /// The histograms in report order ([`FAILED_STAGES`]), with their names.
    pub fn stages(&self) -> [(&'static str, &Histogram<u64>); 3] {
        [
            (FAILED_STAGES[0], &self.fetch),
            (FAILED_STAGES[1], &self.infer),
            (FAILED_STAGES[2], &self.end_to_end),
        ]
    }

    /// Whether no failed job was recorded.
    pub fn is_empty(&self) -> bool {
        self.end_to_end.is_empty() && self.fetch.is_empty() && self.infer.is_empty()
    }

    pub fn add(&mut self, other: &FailedHistograms) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.fetch.add(&other.fetch);
        let _ = self.infer.add(&other.infer);
        let _ = self.end_to_end.add(&other.end_to_end);
    }
}

impl StageHistograms {
    /// The stages in report order ([`STAGES`]), with their names.
    pub fn stages(&self) -> [(&'static str, &Histogram<u64>); 5] {
        [
            (STAGES[0], &self.schedule_lag),
            (STAGES[1], &self.fetch),
            (STAGES[2], &self.infer),
            (STAGES[3], &self.sink_lag),
            (STAGES[4], &self.end_to_end),
        ]
    }

    /// Every histogram the interval log keeps, with its tag ([`LOG_TAGS`] order).
    pub fn tagged(&self) -> [(&'static str, &Histogram<u64>); 9] {
        let [a, b, c, d, e] = self.stages();
        let [f, g, h] = self.failed.stages();
        [a, b, c, d, e, f, g, h, (SKIPPED_TAG, &self.skipped)]
    }

    pub fn add(&mut self, other: &StageHistograms) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.schedule_lag.add(&other.schedule_lag);
        let _ = self.fetch.add(&other.fetch);
        let _ = self.infer.add(&other.infer);
        let _ = self.sink_lag.add(&other.sink_lag);
        let _ = self.end_to_end.add(&other.end_to_end);
        self.failed.add(&other.failed);
        let _ = self.skipped.add(&other.skipped);
    }

    /// Records the stages a shard times. Ok jobs go to the stage histograms;
    /// failed ones to [`FailedHistograms`] (the failing stage's time to
    /// failure, and end to end), so neither hides the other; both count for
    /// schedule lag. A skipped tick records its lag to `skipped` only.
    fn record(&mut self, record: &JobRecord) {
        let latency = &record.latency;
        let at_least_1 = |us: Option<u64>| us.map(|us| us.max(1));
        match &record.outcome {
            Outcome::Skipped(_) => {
                self.skipped
                    .saturating_record(latency.schedule_lag_us.max(1));
                return;
            }
            Outcome::Ok => {
                for (histogram, value) in [
                    (&mut self.fetch, latency.fetch_us),
                    (&mut self.infer, latency.infer_us),
                    (&mut self.end_to_end, latency.end_to_end_us),
                ] {
                    if let Some(us) = at_least_1(value) {
                        histogram.saturating_record(us);
                    }
                }
            }
            Outcome::Failed(error) => {
                let (histogram, value) = match error.stage {
                    Stage::Fetch => (&mut self.failed.fetch, latency.fetch_us),
                    Stage::Infer => (&mut self.failed.infer, latency.infer_us),
                };
                if let Some(us) = at_least_1(value) {
                    histogram.saturating_record(us);
                }
                if let Some(us) = at_least_1(latency.end_to_end_us) {
                    self.failed.end_to_end.saturating_record(us);
                }
            }
        }
        self.schedule_lag
            .saturating_record(latency.schedule_lag_us.max(1));
    }
}

/// Counters and latencies of one class on one shard.
#[derive(Debug, Clone, Default)]
pub struct ClassStats {
    /// The class's outcome counts.
    pub counters: Counters,
    /// The class's latencies: ok jobs' stages, failed jobs' time to failure.
    pub latency: StageHistograms,
}

/// Everything a shard counts, owned by that shard.
#[derive(Debug, Clone)]
pub struct ShardStats {
    /// Whole-run counters (gauges filled in when a copy is sent).
    pub counters: Counters,
    /// Whole-run latencies.
    pub latency: StageHistograms,
    /// The same, per class (by class index).
    pub per_class: Vec<ClassStats>,
    /// Latencies since the last progress report; swapped out once a second.
    pub interval: StageHistograms,
    /// When the current interval started.
    pub interval_start: Instant,
    /// Failed jobs and skipped ticks by stage and reason class, with their
    /// most frequent exact reasons: why a run went bad, without the database.
    pub failures: FailureBreakdown,
    /// Reused buffer a failure's reason text is formatted into, so counting a
    /// failure allocates only for a text not seen before.
    reason_text: String,
}

impl ShardStats {
    /// Grows the per-class statistics to `classes` (a live reload added some).
    pub fn add_classes(&mut self, classes: usize) {
        while self.per_class.len() < classes {
            self.per_class.push(ClassStats::default());
        }
    }

    pub fn new(classes: usize) -> ShardStats {
        ShardStats {
            counters: Counters::default(),
            latency: StageHistograms::default(),
            per_class: (0..classes).map(|_| ClassStats::default()).collect(),
            interval: StageHistograms::default(),
            interval_start: Instant::now(),
            failures: FailureBreakdown::default(),
            reason_text: String::new(),
        }
    }

    /// Records a finished (or skipped) job.
    pub fn record(&mut self, record: &JobRecord) {
        self.counters.count(&record.outcome);
        self.latency.record(record);
        self.interval.record(record);
        self.failures.record(record, &mut self.reason_text);
        if let Some(class) = self.per_class.get_mut(record.class as usize) {
            class.counters.count(&record.outcome);
            class.latency.record(record);
        }
    }

    /// Hands out the current interval and starts the next one.
    pub fn take_interval(&mut self) -> Interval {
        let now = Instant::now();
        Interval {
            start: std::mem::replace(&mut self.interval_start, now),
            end: now,
            latency: std::mem::take(&mut self.interval),
        }
    }
}

/// Latencies recorded between two instants.
#[derive(Debug, Clone)]
pub struct Interval {
    /// When the interval began and ended (monotonic).
    pub start: Instant,
    pub end: Instant,
    pub latency: StageHistograms,
}

/// Which of its class's two replica sets a replica is in. The upstream
/// [`Role`] is for log lines; this one orders, hashes and has the spelling the
/// metrics' `role` label and the summary's JSON use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplicaRole {
    /// One of the class's data sources (`Fetch`).
    DataSource,
    /// One of the class's compute nodes (`ModelInfer`).
    ComputeNode,
}

impl ReplicaRole {
    /// `data_source` or `compute_node`: the label value and the JSON value.
    pub fn label(self) -> &'static str {
        match self {
            ReplicaRole::DataSource => "data_source",
            ReplicaRole::ComputeNode => "compute_node",
        }
    }
}

impl From<Role> for ReplicaRole {
    fn from(role: Role) -> ReplicaRole {
        match role {
            Role::DataSource => ReplicaRole::DataSource,
            Role::ComputeNode => ReplicaRole::ComputeNode,
        }
    }
}

/// One replica as one shard sees it, at the time of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStats {
    /// The class whose set holds the replica: the metrics and the summary name
    /// it, and the same node may serve several classes.
    pub class: ClassIndex,
    /// Data source or compute node: one node may be both for a class.
    pub role: ReplicaRole,
    /// The node as the config writes it (`host:port`): what identifies a
    /// replica to an operator.
    pub node: Arc<str>,
    /// Attempts on it that ended (ok or not; cancelled hedges excluded), so
    /// far: its share of the load.
    pub requests: u64,
    /// Attempts that failed in a way that counts against it, so far.
    pub failures: u64,
    /// Times this shard ejected it, so far.
    pub ejections: u64,
    /// This shard's peak-EWMA latency estimate now, in µs: what the balancer
    /// weighs it by.
    pub ewma_latency_us: f64,
    /// Attempts on it now in flight: a stuck replica shows here first.
    pub outstanding: u64,
    /// Whether its last probe said it is ready.
    pub ready: bool,
    /// Whether this shard has it ejected now.
    pub ejected: bool,
}

impl ReplicaStats {
    /// The merge key: one replica of one set of one class.
    fn key(&self) -> (ClassIndex, ReplicaRole, Arc<str>) {
        (self.class, self.role, self.node.clone())
    }
}

/// What a shard reports about its upstreams with each progress report and its
/// final one: read from its replica sets when the report is built.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamStats {
    /// Every replica of every class, data sources then compute nodes per class,
    /// in config order.
    pub replicas: Vec<ReplicaStats>,
    /// Per class index: retries and hedges the class's retry budgets (data
    /// sources' and compute nodes' together) refused, so far. A budget that
    /// keeps refusing says the whole class is failing, not one replica.
    pub retry_budget_exhausted: Vec<u64>,
}

impl UpstreamStats {
    /// Reads every replica set of `routes` (a shard's routes, by class index)
    /// at `now`. Cheap — a few `Cell` reads per replica — but it allocates, so
    /// it belongs in a report, not on a job's path.
    pub fn collect(routes: &[Rc<ClassRoute>], now: Instant) -> UpstreamStats {
        let replica_count = routes
            .iter()
            .map(|route| route.sources.replicas().len() + route.computes.replicas().len())
            .sum();
        let mut stats = UpstreamStats {
            replicas: Vec::with_capacity(replica_count),
            retry_budget_exhausted: Vec::with_capacity(routes.len()),
        };
        for (class, route) in routes.iter().enumerate() {
            // Classes are capped to ClassIndex's range when the fleet is read.
            let class = ClassIndex::try_from(class).unwrap_or(ClassIndex::MAX);
            for set in [&route.sources, &route.computes] {
                stats.push_set(class, set, now);
            }
            stats
                .retry_budget_exhausted
                .push(route.sources.budget.exhausted.get() + route.computes.budget.exhausted.get());
        }
        stats
    }

    fn push_set(&mut self, class: ClassIndex, set: &ReplicaSet, now: Instant) {
        let role = ReplicaRole::from(set.role());
        for replica in set.replicas() {
            let health = &replica.health;
            self.replicas.push(ReplicaStats {
                class,
                role,
                node: replica.node(),
                requests: health.requests.get(),
                failures: health.failures.get(),
                ejections: health.ejections.get(),
                ewma_latency_us: health.latency_ns(now) / 1e3,
                outstanding: health.outstanding() as u64,
                ready: health.is_ready(),
                ejected: health.is_ejected(now),
            });
        }
    }
}

/// One replica, all shards together.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaTotals {
    /// The class whose set holds the replica (index into the config's classes).
    pub class: ClassIndex,
    /// Data source or compute node.
    pub role: ReplicaRole,
    /// The node as the config writes it.
    pub node: Arc<str>,
    /// Attempts that ended, summed over shards.
    pub requests: u64,
    /// Attempts that counted against the replica, summed over shards.
    pub failures: u64,
    /// Ejections, summed over shards (each shard ejects on its own view).
    pub ejections: u64,
    /// The shards' latency estimates, in µs, averaged with each shard weighted
    /// by its requests to the replica. Weighted, because a shard that sent
    /// nothing has an estimate decayed toward 0 that says nothing; a mean, not a
    /// max, because peak EWMA already jumps to any slow call, and the max of
    /// such peaks would show one shard's worst moment instead of the replica.
    pub ewma_latency_us: f64,
    /// Attempts in flight now, summed over shards.
    pub outstanding: u64,
    /// Shards whose probe last found the replica ready.
    pub ready_shards: u32,
    /// Shards that have the replica ejected now.
    pub ejected_shards: u32,
    /// Shards that reported the replica: what the two counts above are out of.
    pub shards: u32,
}

impl Default for ReplicaTotals {
    /// Nothing counted yet, for an unspecified replica; the merge fills in
    /// the key first.
    fn default() -> ReplicaTotals {
        ReplicaTotals {
            class: 0,
            role: ReplicaRole::ComputeNode,
            node: Arc::from(""),
            requests: 0,
            failures: 0,
            ejections: 0,
            ewma_latency_us: 0.0,
            outstanding: 0,
            ready_shards: 0,
            ejected_shards: 0,
            shards: 0,
        }
    }
}

/// The upstreams of all shards together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamTotals {
    /// One entry per (class, role, node), in the order the first shard listed
    /// them (config order).
    pub replicas: Vec<ReplicaTotals>,
    /// Per class index: retries refused by the retry budgets, all shards.
    pub retry_budget_exhausted: Vec<u64>,
}

impl UpstreamTotals {
    /// Merges the shards' latest reports: counters and gauges add, latency is
    /// the request-weighted mean (see [`ReplicaTotals::ewma_latency_us`]),
    /// readiness and ejection become counts of shards.
    pub fn merge<'a>(shards: impl IntoIterator<Item = &'a UpstreamStats>) -> UpstreamTotals {
        let mut totals = UpstreamTotals::default();
        let mut index: HashMap<(ClassIndex, ReplicaRole, Arc<str>), usize> = HashMap::new();
        // Per entry: Σ requests × estimate, divided by Σ requests at the end.
        let mut weighted_us: Vec<f64> = Vec::new();
        for shard in shards {
            for replica in &shard.replicas {
                let slot = *index.entry(replica.key()).or_insert_with(|| {
                    totals.replicas.push(ReplicaTotals {
                        class: replica.class,
                        role: replica.role,
                        node: replica.node.clone(),
                        ..ReplicaTotals::default()
                    });
                    weighted_us.push(0.0);
                    totals.replicas.len() - 1
                });
                let total = &mut totals.replicas[slot];
                total.requests += replica.requests;
                total.failures += replica.failures;
                total.ejections += replica.ejections;
                total.outstanding += replica.outstanding;
                total.ready_shards += u32::from(replica.ready);
                total.ejected_shards += u32::from(replica.ejected);
                total.shards += 1;
                weighted_us[slot] += replica.requests as f64 * replica.ewma_latency_us;
            }
            let exhausted = &mut totals.retry_budget_exhausted;
            if exhausted.len() < shard.retry_budget_exhausted.len() {
                exhausted.resize(shard.retry_budget_exhausted.len(), 0);
            }
            for (total, refused) in exhausted.iter_mut().zip(&shard.retry_budget_exhausted) {
                *total += refused;
            }
        }
        for (total, weighted) in totals.replicas.iter_mut().zip(weighted_us) {
            if total.requests > 0 {
                total.ewma_latency_us = weighted / total.requests as f64;
            }
        }
        totals
    }
}

/// What a shard tells the coordinator.
#[derive(Debug)]
pub enum ShardReport {
    /// Once a second: counters so far and the last interval's latencies.
    Progress {
        shard: u16,
        counters: Counters,
        interval: Box<Interval>,
        /// Its replicas as of now.
        upstream: UpstreamStats,
        /// Its failure breakdown so far (a copy: a few entries, once a second).
        failures: FailureBreakdown,
    },
    /// Sent instead of `Finished` when a shard's main future is dropped without
    /// finishing (a panic on the shard): the coordinator stops the run.
    Exited { shard: u16 },
    /// Once, when the shard has run its last job and sent its last result.
    Finished {
        shard: u16,
        stats: Box<ShardStats>,
        /// Latencies since the last progress report.
        interval: Box<Interval>,
        /// Its replicas at the end.
        upstream: UpstreamStats,
        /// End of the window whose ticks this shard dispatched (Unix ms, exclusive).
        end_ms: i64,
        /// Set when the shard stopped early, e.g. because the sink went away.
        error: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, JobError, Stage};
    use crate::record::{SkipReason, StageLatency};

    fn record(class: u16, outcome: Outcome, end_to_end_us: u64) -> JobRecord {
        JobRecord {
            device: "dev-0".into(),
            tick_ms: 0,
            class,
            shard: 0,
            outcome,
            outputs: Vec::new(),
            latency: StageLatency {
                schedule_lag_us: 5,
                fetch_us: Some(10),
                infer_us: Some(20),
                end_to_end_us: Some(end_to_end_us),
            },
            compute_node: None,
            attempts: 0,
            ready_at: Instant::now(),
        }
    }

    #[test]
    fn outcomes_are_counted_and_failures_timed_apart() {
        let mut stats = ShardStats::new(2);
        for us in 1..=100 {
            stats.record(&record(0, Outcome::Ok, us * 10));
        }
        let failure = JobError::new(Stage::Infer, ErrorKind::DeadlineExceeded);
        stats.record(&record(1, Outcome::Failed(failure), 1_000_000));
        stats.record(&record(
            1,
            Outcome::Skipped(SkipReason::PreviousJobRunning),
            0,
        ));
        let counters = stats.counters;
        assert_eq!(
            (counters.ok, counters.failed, counters.skipped),
            (100, 1, 1)
        );
        assert_eq!(stats.latency.end_to_end.len(), 100);
        assert_eq!(stats.latency.end_to_end.value_at_quantile(0.5), 500);
        assert_eq!(stats.latency.end_to_end.max(), 1000);
        assert_eq!(stats.latency.schedule_lag.len(), 101);
        assert_eq!(stats.per_class[0].counters.ok, 100);
        assert_eq!(
            (
                stats.per_class[1].counters.failed,
                stats.per_class[1].counters.skipped
            ),
            (1, 1)
        );
        assert_eq!(stats.per_class[1].latency.end_to_end.len(), 0);
        // The failed job's time to failure: its failing stage and end to end,
        // never in the ok histograms; the skip counts in `skipped` only.
        for latency in [&stats.latency, &stats.per_class[1].latency, &stats.interval] {
            let failed = &latency.failed;
            assert_eq!(failed.fetch.len(), 0, "the fetch did not fail");
            assert_eq!((failed.infer.len(), failed.infer.max()), (1, 20));
            assert_eq!(failed.end_to_end.len(), 1);
            assert!(failed.end_to_end.value_at_quantile(1.0) >= 999_000);
            assert_eq!(latency.skipped.len(), 1);
        }
        assert_eq!(stats.latency.infer.len(), 100);
        assert!(stats.per_class[0].latency.failed.is_empty());
        // The failure breakdown is recorded beside the counters; ok jobs are not in it.
        let breakdown: Vec<_> = stats
            .failures
            .by_count()
            .iter()
            .map(|e| (e.outcome(), e.stage_label(), e.class.label(), e.count))
            .collect();
        assert_eq!(
            breakdown,
            vec![
                ("failed", "infer", "deadline", 1),
                ("skipped", "start", "previous job running", 1),
            ]
        );
        let fetch_failure = JobError::new(Stage::Fetch, ErrorKind::DeadlineExceeded);
        stats.record(&record(0, Outcome::Failed(fetch_failure), 7_000));
        assert_eq!(
            (
                stats.latency.failed.fetch.len(),
                stats.latency.failed.fetch.max()
            ),
            (1, 10)
        );
        let mut merged = StageHistograms::default();
        merged.add(&stats.latency);
        merged.add(&stats.latency);
        assert_eq!(merged.failed.end_to_end.len(), 4);
        assert_eq!(merged.skipped.len(), 2);
        let tags: Vec<_> = merged.tagged().iter().map(|(tag, _)| *tag).collect();
        assert_eq!(tags, LOG_TAGS);
    }

    #[test]
    fn intervals_hold_only_what_came_since_the_last_one() {
        let mut stats = ShardStats::new(1);
        stats.record(&record(0, Outcome::Ok, 100));
        let first = stats.take_interval();
        stats.record(&record(0, Outcome::Ok, 200));
        stats.record(&record(0, Outcome::Ok, 300));
        let second = stats.take_interval();
        assert_eq!(first.latency.end_to_end.len(), 1);
        assert_eq!(second.latency.end_to_end.len(), 2);
        assert_eq!(second.latency.end_to_end.min(), 200);
        assert!(second.start >= first.end);
        assert_eq!(stats.latency.end_to_end.len(), 3);
    }

    /// The port of a `127.0.0.1:PORT` node name.
    fn port_of(node: &str) -> u16 {
        node.rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap()
    }

    fn replica(class: ClassIndex, port: u16, requests: u64, ewma_latency_us: f64) -> ReplicaStats {
        ReplicaStats {
            class,
            role: ReplicaRole::ComputeNode,
            node: format!("127.0.0.1:{port}").into(),
            requests,
            failures: requests / 10,
            ejections: 1,
            ewma_latency_us,
            outstanding: 2,
            ready: true,
            ejected: false,
        }
    }

    #[test]
    fn replicas_merge_by_class_role_and_node() {
        let first = UpstreamStats {
            replicas: vec![replica(0, 9001, 100, 1_000.0), replica(0, 9002, 0, 0.0)],
            retry_budget_exhausted: vec![3],
        };
        let mut second = UpstreamStats {
            replicas: vec![
                replica(0, 9001, 300, 2_000.0),
                replica(0, 9002, 50, 400.0),
                // Same node, another class: its own entry.
                replica(1, 9001, 10, 10.0),
            ],
            retry_budget_exhausted: vec![1, 7],
        };
        second.replicas[1].ready = false;
        second.replicas[1].ejected = true;
        // The same node as a data source of class 0: its own entry too.
        second.replicas.push(ReplicaStats {
            role: ReplicaRole::DataSource,
            ..replica(0, 9001, 5, 5.0)
        });
        let totals = UpstreamTotals::merge([&first, &second]);
        let keys: Vec<_> = totals
            .replicas
            .iter()
            .map(|r| (r.class, r.role, port_of(&r.node)))
            .collect();
        assert_eq!(
            keys,
            vec![
                (0, ReplicaRole::ComputeNode, 9001),
                (0, ReplicaRole::ComputeNode, 9002),
                (1, ReplicaRole::ComputeNode, 9001),
                (0, ReplicaRole::DataSource, 9001),
            ],
            "first-seen (config) order"
        );
        let busy = &totals.replicas[0];
        assert_eq!(
            (
                busy.requests,
                busy.failures,
                busy.ejections,
                busy.outstanding
            ),
            (400, 40, 2, 4)
        );
        // (100 × 1000 + 300 × 2000) / 400.
        assert_eq!(busy.ewma_latency_us, 1_750.0);
        assert_eq!(
            (busy.ready_shards, busy.ejected_shards, busy.shards),
            (2, 0, 2)
        );
        let quiet = &totals.replicas[1];
        // The shard that sent nothing does not pull the estimate down.
        assert_eq!(quiet.ewma_latency_us, 400.0);
        assert_eq!((quiet.ready_shards, quiet.ejected_shards), (1, 1));
        assert_eq!(totals.retry_budget_exhausted, vec![4, 7]);
        assert_eq!(UpstreamTotals::merge([]), UpstreamTotals::default());
    }

    #[test]
    fn a_shards_replicas_are_read_from_its_routes() {
        use crate::error::ErrorKind;
        use crate::upstream::{Replica, SetPolicy};

        let now = Instant::now();
        let set = |role: Role, ports: &[u16]| {
            let replicas = ports
                .iter()
                .map(|&port| {
                    Replica::detached(std::net::SocketAddr::from(([127, 0, 0, 1], port)), 1, now)
                })
                .collect();
            let policy = SetPolicy {
                class: "camera".into(),
                role,
                upstream: crate::config::Upstream::default(),
                retry_budget_percent: 0,
                retry_budget_min_per_s: 0,
                shard: 0,
                contract: None,
                reads_metadata: false,
                metadata: http::HeaderMap::new(),
            };
            match ReplicaSet::new(replicas, &policy, now) {
                Ok(set) => Rc::new(set),
                Err(_) => panic!("a set of {}", ports.len()),
            }
        };
        let route = Rc::new(ClassRoute {
            name: "camera".into(),
            model: "m".into(),
            model_version: String::new(),
            input_name: "INPUT0".into(),
            requested_outputs: Vec::new(),
            parameters: Default::default(),
            request_id: false,
            deadline: std::time::Duration::from_secs(1),
            output: None,
            sources: set(Role::DataSource, &[9000]),
            computes: set(Role::ComputeNode, &[9001, 9002]),
            max_message_len: 1 << 20,
            retries: 1,
            batcher: None,
        });
        route
            .computes
            .start(1, now)
            .finish::<()>(&Err(ErrorKind::Protocol("bad".into())));
        route.computes.start(1, now).finish(&Ok(()));
        let _in_flight = route.computes.start(0, now);
        // A budget of nothing: the retry is refused and counted.
        assert!(!route.computes.budget.try_retry(now));

        let stats = UpstreamStats::collect(std::slice::from_ref(&route), Instant::now());
        let rows: Vec<_> = stats
            .replicas
            .iter()
            .map(|r| {
                (
                    r.class,
                    r.role,
                    port_of(&r.node),
                    r.requests,
                    r.failures,
                    r.outstanding,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (0, ReplicaRole::DataSource, 9000, 0, 0, 0),
                (0, ReplicaRole::ComputeNode, 9001, 0, 0, 1),
                (0, ReplicaRole::ComputeNode, 9002, 2, 1, 0),
            ]
        );
        assert!(stats.replicas[2].ewma_latency_us >= 0.0);
        assert!(stats.replicas.iter().all(|r| r.ready && !r.ejected));
        assert_eq!(stats.retry_budget_exhausted, vec![1]);
        assert_eq!(ReplicaRole::from(Role::ComputeNode).label(), "compute_node");
    }

    #[test]
    fn values_past_the_range_are_clamped_not_lost() {
        let mut histograms = StageHistograms::default();
        histograms.end_to_end.saturating_record(MAX_TRACKED_US * 10);
        assert_eq!(histograms.end_to_end.len(), 1);
        assert!(histograms.end_to_end.max() >= MAX_TRACKED_US);
    }
}
