//! Per-shard counters and latency histograms.
//!
//! A shard records into its own [`ShardStats`] without locks (it is the only
//! writer): totals per stage, per class, and an interval set that it hands to the
//! coordinator every second (and then starts afresh), so the coordinator can show
//! the last second's p99 and keep a per-second log. Everything is merged off the
//! shards, from copies sent over a channel.

use std::time::Instant;

use hdrhistogram::Histogram;

use crate::record::{JobRecord, Outcome};

/// Highest latency a histogram tracks exactly: 100 s, in microseconds. Larger
/// values are clamped to it, never dropped; a job's deadline is far below it.
pub const MAX_TRACKED_US: u64 = 100_000_000;

/// Significant decimal digits: 3 gives 0.1% resolution across the range.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Stage names, in report order.
pub const STAGES: [&str; 5] = ["schedule_lag", "fetch", "infer", "sink_lag", "end_to_end"];

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
    /// Planned tick → job start.
    pub schedule_lag: Histogram<u64>,
    /// The data-source call (successful jobs).
    pub fetch: Histogram<u64>,
    /// The compute call (successful jobs).
    pub infer: Histogram<u64>,
    /// Result ready on the shard → row committed; recorded by the sink writer.
    pub sink_lag: Histogram<u64>,
    /// Planned tick → result ready (successful jobs).
    pub end_to_end: Histogram<u64>,
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms {
            schedule_lag: new_histogram(),
            fetch: new_histogram(),
            infer: new_histogram(),
            sink_lag: new_histogram(),
            end_to_end: new_histogram(),
        }
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

    pub fn add(&mut self, other: &StageHistograms) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.schedule_lag.add(&other.schedule_lag);
        let _ = self.fetch.add(&other.fetch);
        let _ = self.infer.add(&other.infer);
        let _ = self.sink_lag.add(&other.sink_lag);
        let _ = self.end_to_end.add(&other.end_to_end);
    }

    /// Records the stages a shard times. Skipped ticks have no stages; failed jobs
    /// count for schedule lag only (a failed call's time says little about a node).
    fn record(&mut self, record: &JobRecord) {
        if matches!(record.outcome, Outcome::Skipped(_)) {
            return;
        }
        let latency = &record.latency;
        self.schedule_lag
            .saturating_record(latency.schedule_lag_us.max(1));
        if matches!(record.outcome, Outcome::Ok) {
            for (histogram, value) in [
                (&mut self.fetch, latency.fetch_us),
                (&mut self.infer, latency.infer_us),
                (&mut self.end_to_end, latency.end_to_end_us),
            ] {
                if let Some(us) = value {
                    histogram.saturating_record(us.max(1));
                }
            }
        }
    }
}

/// Counters and latencies of one class on one shard.
#[derive(Debug, Clone, Default)]
pub struct ClassStats {
    pub counters: Counters,
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
}

impl ShardStats {
    pub fn new(classes: usize) -> ShardStats {
        ShardStats {
            counters: Counters::default(),
            latency: StageHistograms::default(),
            per_class: (0..classes).map(|_| ClassStats::default()).collect(),
            interval: StageHistograms::default(),
            interval_start: Instant::now(),
        }
    }

    /// Records a finished (or skipped) job.
    pub fn record(&mut self, record: &JobRecord) {
        self.counters.count(&record.outcome);
        self.latency.record(record);
        self.interval.record(record);
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

/// What a shard tells the coordinator.
#[derive(Debug)]
pub enum ShardReport {
    /// Once a second: counters so far and the last interval's latencies.
    Progress {
        shard: u16,
        counters: Counters,
        interval: Box<Interval>,
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
            device: 0,
            tick_ms: 0,
            class,
            shard: 0,
            outcome,
            output: bytes::Bytes::new(),
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
    fn outcomes_are_counted_and_only_successes_timed() {
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

    #[test]
    fn values_past_the_range_are_clamped_not_lost() {
        let mut histograms = StageHistograms::default();
        histograms.end_to_end.saturating_record(MAX_TRACKED_US * 10);
        assert_eq!(histograms.end_to_end.len(), 1);
        assert!(histograms.end_to_end.max() >= MAX_TRACKED_US);
    }
}
