//! Per-shard counters and latency histograms.
//!
//! A shard records into its own [`ShardStats`] without locks (it is the only
//! writer), and sends copies to the coordinator over a channel: counters every
//! second for the status line, everything when it finishes. Merging happens off
//! the shards.

use hdrhistogram::Histogram;

use crate::record::{JobRecord, Outcome};

/// Highest latency a histogram tracks exactly: one hour, in microseconds. Larger
/// values are clamped, never dropped.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// Significant decimal digits: 3 gives 0.1% resolution across the range.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Counts by outcome, plus the in-flight gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub ok: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Jobs started and not yet finished, at the time of the copy.
    pub in_flight: u64,
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
    }
}

/// One histogram per stage, in microseconds.
#[derive(Debug, Clone)]
pub struct StageHistograms {
    pub schedule_lag: Histogram<u64>,
    pub fetch: Histogram<u64>,
    pub infer: Histogram<u64>,
    pub end_to_end: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms {
            schedule_lag: histogram(),
            fetch: histogram(),
            infer: histogram(),
            end_to_end: histogram(),
        }
    }
}

impl StageHistograms {
    /// The stages in report order, with their names.
    pub fn stages(&self) -> [(&'static str, &Histogram<u64>); 4] {
        [
            ("schedule_lag", &self.schedule_lag),
            ("fetch", &self.fetch),
            ("infer", &self.infer),
            ("end_to_end", &self.end_to_end),
        ]
    }

    pub fn add(&mut self, other: &StageHistograms) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.schedule_lag.add(&other.schedule_lag);
        let _ = self.fetch.add(&other.fetch);
        let _ = self.infer.add(&other.infer);
        let _ = self.end_to_end.add(&other.end_to_end);
    }
}

/// Everything a shard counts, owned by that shard.
#[derive(Debug, Clone, Default)]
pub struct ShardStats {
    pub counters: Counters,
    pub latency: StageHistograms,
}

impl ShardStats {
    /// Records a finished (or skipped) job.
    pub fn record(&mut self, record: &JobRecord) {
        match record.outcome {
            Outcome::Ok => self.counters.ok += 1,
            Outcome::Failed(_) => self.counters.failed += 1,
            Outcome::Skipped(_) => {
                // A skipped tick has no stages; its lag is not a job's latency.
                self.counters.skipped += 1;
                return;
            }
        }
        let latency = &record.latency;
        self.latency
            .schedule_lag
            .saturating_record(latency.schedule_lag_us.max(1));
        // Only successful stages are timed; a failed call's time says little about the node.
        if matches!(record.outcome, Outcome::Ok) {
            if let Some(us) = latency.fetch_us {
                self.latency.fetch.saturating_record(us.max(1));
            }
            if let Some(us) = latency.infer_us {
                self.latency.infer.saturating_record(us.max(1));
            }
            if let Some(us) = latency.end_to_end_us {
                self.latency.end_to_end.saturating_record(us.max(1));
            }
        }
    }
}

/// What a shard tells the coordinator.
#[derive(Debug)]
pub enum ShardReport {
    /// Once a second: counters so far.
    Progress { shard: u16, counters: Counters },
    /// Once, when the shard has run its last job and sent its last result.
    Finished {
        shard: u16,
        stats: Box<ShardStats>,
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

    fn record(outcome: Outcome, end_to_end_us: u64) -> JobRecord {
        JobRecord {
            device: 0,
            tick_ms: 0,
            class: 0,
            shard: 0,
            outcome,
            output: bytes::Bytes::new(),
            latency: StageLatency {
                schedule_lag_us: 5,
                fetch_us: Some(10),
                infer_us: Some(20),
                end_to_end_us: Some(end_to_end_us),
            },
        }
    }

    #[test]
    fn outcomes_are_counted_and_only_successes_timed() {
        let mut stats = ShardStats::default();
        for us in 1..=100 {
            stats.record(&record(Outcome::Ok, us * 10));
        }
        let failure = JobError::new(Stage::Infer, ErrorKind::DeadlineExceeded);
        stats.record(&record(Outcome::Failed(failure), 1_000_000));
        stats.record(&record(Outcome::Skipped(SkipReason::PreviousJobRunning), 0));
        assert_eq!(
            (
                stats.counters.ok,
                stats.counters.failed,
                stats.counters.skipped
            ),
            (100, 1, 1)
        );
        assert_eq!(stats.latency.end_to_end.len(), 100);
        assert_eq!(stats.latency.end_to_end.value_at_quantile(0.5), 500);
        assert_eq!(stats.latency.end_to_end.max(), 1000);
        assert_eq!(stats.latency.schedule_lag.len(), 101);
    }
}
