//! One shard's view of one replica's health: its latency estimate, the calls it
//! has outstanding, what its probes say, and whether it is ejected.
//!
//! Everything here is plain `Cell`s on the shard that owns the replica. Calls
//! report to it as they end ([`ReplicaHealth::record`]), probes as they answer
//! ([`ReplicaHealth::set_ready`]); the balancer reads it on every pick.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use crate::config::Ejection;

/// How fast the latency estimate forgets: an observation's weight halves every
/// ~7 s (1/e per 10 s), as in Finagle's and tower's peak EWMA. The estimate
/// also decays toward zero while a replica gets no calls, so a replica that was
/// slow is tried again after a while instead of being starved for good.
const DECAY: Duration = Duration::from_secs(10);

/// What the balancer needs to know about one replica, on one shard.
#[derive(Debug)]
pub struct ReplicaHealth {
    /// Peak-EWMA latency estimate in nanoseconds: jumps to any slower
    /// observation at once, decays toward faster ones (and toward 0 when idle).
    ewma_ns: Cell<f64>,
    /// When `ewma_ns` was last updated, for the decay.
    ewma_at: Cell<Instant>,
    /// Calls sent to this replica and not yet ended.
    outstanding: Cell<usize>,
    /// Failed calls in a row, for the consecutive-failures rule.
    consecutive_failures: Cell<u32>,
    /// Start of the failure-rate window.
    window_start: Cell<Instant>,
    /// Calls ended in the current window.
    window_calls: Cell<u32>,
    /// Failed calls in the current window.
    window_failures: Cell<u32>,
    /// Until when the replica is out of the set, if ejected.
    ejected_until: Cell<Option<Instant>>,
    /// Ejections since the replica last stayed healthy through a whole window;
    /// each doubles the next ejection's length.
    ejections_in_row: Cell<u32>,
    /// What the last probe said (true until a probe says otherwise).
    ready: Cell<bool>,
    /// Why the replica's server, at the last probe, said it cannot serve the
    /// class's model (unknown, not ready, a version or contract it does not
    /// have); `None` while it can, or while the probe could not ask. Unlike a
    /// replica that is only down, a refused one is not sent a job's call as a
    /// last resort: the job fails with this reason instead.
    refusal: RefCell<Option<Box<str>>>,
    /// Calls ended (ok or not), for the metrics.
    pub requests: Cell<u64>,
    /// Calls that failed in a way that counts against the replica.
    pub failures: Cell<u64>,
    /// Times the replica was ejected.
    pub ejections: Cell<u64>,
}

/// How a call on a replica ended, as far as its health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The node answered in a way that says nothing bad about it.
    Success,
    /// The node, or the way to it, failed.
    Failure,
    /// Cancelled by us (a hedge that lost): neither success nor failure, but
    /// its time so far is a lower bound of its latency.
    Cancelled,
}

/// What [`ReplicaHealth::record`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Healthy,
    /// The replica broke an ejection rule; the set decides whether it may go.
    ShouldEject,
}

impl ReplicaHealth {
    pub fn new(now: Instant) -> ReplicaHealth {
        ReplicaHealth {
            ewma_ns: Cell::new(0.0),
            ewma_at: Cell::new(now),
            outstanding: Cell::new(0),
            consecutive_failures: Cell::new(0),
            window_start: Cell::new(now),
            window_calls: Cell::new(0),
            window_failures: Cell::new(0),
            ejected_until: Cell::new(None),
            ejections_in_row: Cell::new(0),
            ready: Cell::new(true),
            refusal: RefCell::new(None),
            requests: Cell::new(0),
            failures: Cell::new(0),
            ejections: Cell::new(0),
        }
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.get()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(ready);
        self.refusal.replace(None);
    }

    /// The probe found the server up but unable to serve the model, for `why`.
    pub fn set_refused(&self, why: &str) {
        self.ready.set(false);
        self.refusal.replace(Some(why.into()));
    }

    /// Why the server refuses the model, if it does (a copy for a job's reason).
    pub fn refusal(&self) -> Option<Box<str>> {
        if self.ready.get() {
            return None;
        }
        self.refusal.borrow().clone()
    }

    /// Whether the replica is ejected at `now`; an ejection that has run out
    /// is cleared here.
    pub fn is_ejected(&self, now: Instant) -> bool {
        match self.ejected_until.get() {
            Some(until) if now < until => true,
            Some(_) => {
                self.ejected_until.set(None);
                false
            }
            None => false,
        }
    }

    /// The latency estimate at `now`, in nanoseconds, decayed for the time since
    /// the last observation.
    pub fn latency_ns(&self, now: Instant) -> f64 {
        let idle = now.saturating_duration_since(self.ewma_at.get());
        self.ewma_ns.get() * decay(idle)
    }

    /// A call starts: one more outstanding.
    pub fn start(&self) {
        self.outstanding.set(self.outstanding.get() + 1);
    }

    /// A call ended after `latency`; updates the estimate and the failure rules.
    pub fn record(
        &self,
        outcome: CallOutcome,
        latency: Duration,
        now: Instant,
        rules: &Ejection,
    ) -> Verdict {
        self.outstanding
            .set(self.outstanding.get().saturating_sub(1));
        self.observe_latency(latency, now);
        if outcome == CallOutcome::Cancelled {
            return Verdict::Healthy;
        }
        self.requests.set(self.requests.get() + 1);
        self.roll_window(now, rules);
        self.window_calls.set(self.window_calls.get() + 1);
        if outcome == CallOutcome::Success {
            self.consecutive_failures.set(0);
            return Verdict::Healthy;
        }
        self.failures.set(self.failures.get() + 1);
        self.window_failures.set(self.window_failures.get() + 1);
        self.consecutive_failures
            .set(self.consecutive_failures.get() + 1);
        let in_a_row = rules.consecutive_failures > 0
            && self.consecutive_failures.get() >= rules.consecutive_failures;
        let calls = self.window_calls.get();
        let rate_broken = calls >= rules.min_requests
            && f64::from(self.window_failures.get()) >= rules.failure_rate * f64::from(calls);
        if (in_a_row || rate_broken) && !self.is_ejected(now) {
            Verdict::ShouldEject
        } else {
            Verdict::Healthy
        }
    }

    /// Takes the replica out until `now` + its ejection time, which doubles with
    /// each ejection in a row up to `rules.max_time`; returns that time.
    pub fn eject(&self, now: Instant, rules: &Ejection) -> Duration {
        let in_row = self.ejections_in_row.get();
        let time = rules
            .base_time
            .saturating_mul(1u32 << in_row.min(16))
            .min(rules.max_time);
        self.ejected_until.set(Some(now + time));
        self.ejections_in_row.set(in_row.saturating_add(1));
        self.ejections.set(self.ejections.get() + 1);
        // A fresh start when it comes back: old failures do not eject it again.
        self.consecutive_failures.set(0);
        self.window_start.set(now + time);
        self.window_calls.set(0);
        self.window_failures.set(0);
        time
    }

    /// Peak EWMA: a slower observation is taken at once, a faster one blended in
    /// with a weight that grows with the time since the last.
    fn observe_latency(&self, latency: Duration, now: Instant) {
        let observed = latency.as_nanos() as f64;
        let current = self.latency_ns(now);
        let estimate = if observed > current {
            observed
        } else {
            let elapsed = now.saturating_duration_since(self.ewma_at.get());
            // Weight of the old estimate; at least a little of the new one counts
            // even for back-to-back calls.
            let keep = decay(elapsed).min(0.95);
            current * keep + observed * (1.0 - keep)
        };
        self.ewma_ns.set(estimate);
        self.ewma_at.set(now);
    }

    /// Starts a new failure-rate window once the current one is over; a replica
    /// that got through a whole window without breaking a rule has its
    /// ejection backoff reset.
    fn roll_window(&self, now: Instant, rules: &Ejection) {
        if now.saturating_duration_since(self.window_start.get()) < rules.window {
            return;
        }
        let calls = self.window_calls.get();
        let failures = self.window_failures.get();
        let clean = calls == 0 || f64::from(failures) < rules.failure_rate * f64::from(calls);
        if clean && self.ejected_until.get().is_none() {
            self.ejections_in_row.set(0);
        }
        self.window_start.set(now);
        self.window_calls.set(0);
        self.window_failures.set(0);
    }
}

/// e^(-elapsed / DECAY).
fn decay(elapsed: Duration) -> f64 {
    (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Ejection {
        Ejection {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(1),
            base_time: Duration::from_millis(100),
            max_time: Duration::from_millis(250),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let start = Instant::now();
        let health = ReplicaHealth::new(start);
        health.start();
        health.record(
            CallOutcome::Success,
            Duration::from_millis(10),
            start,
            &rules(),
        );
        assert_eq!(health.latency_ns(start), 10e6);
        // A slower call is taken at once.
        let later = start + Duration::from_millis(1);
        health.start();
        health.record(
            CallOutcome::Success,
            Duration::from_millis(50),
            later,
            &rules(),
        );
        assert_eq!(health.latency_ns(later), 50e6);
        // Faster calls pull it down, but not all the way at once.
        let t = later + Duration::from_millis(1);
        health.start();
        health.record(CallOutcome::Success, Duration::from_millis(1), t, &rules());
        let blended = health.latency_ns(t);
        assert!(blended < 50e6 && blended > 1e6, "{blended}");
        // Idle, it decays toward zero (so a once-slow replica is tried again).
        assert!(health.latency_ns(t + Duration::from_secs(30)) < blended / 10.0);
        assert_eq!(health.outstanding(), 0);
    }

    #[test]
    fn failures_in_a_row_ask_for_ejection_and_ejections_grow() {
        let now = Instant::now();
        let health = ReplicaHealth::new(now);
        let rules = rules();
        let fail = |at| {
            health.start();
            health.record(CallOutcome::Failure, Duration::from_millis(1), at, &rules)
        };
        assert_eq!(fail(now), Verdict::Healthy);
        assert_eq!(fail(now), Verdict::Healthy);
        assert_eq!(fail(now), Verdict::ShouldEject);
        assert_eq!(health.eject(now, &rules), Duration::from_millis(100));
        assert!(health.is_ejected(now + Duration::from_millis(99)));
        assert!(!health.is_ejected(now + Duration::from_millis(100)));
        let back = now + Duration::from_millis(100);
        for _ in 0..2 {
            assert_eq!(fail(back), Verdict::Healthy);
        }
        assert_eq!(fail(back), Verdict::ShouldEject);
        assert_eq!(health.eject(back, &rules), Duration::from_millis(200));
        let again = back + Duration::from_millis(200);
        for _ in 0..2 {
            fail(again);
        }
        assert_eq!(fail(again), Verdict::ShouldEject);
        assert_eq!(
            health.eject(again, &rules),
            Duration::from_millis(250),
            "capped"
        );
        assert_eq!(health.ejections.get(), 3);
        assert_eq!(health.failures.get(), 9);
    }

    #[test]
    fn a_failure_rate_over_the_window_asks_for_ejection() {
        let now = Instant::now();
        let health = ReplicaHealth::new(now);
        let rules = Ejection {
            consecutive_failures: 0,
            ..rules()
        };
        let mut verdicts = Vec::new();
        for call in 0..10 {
            health.start();
            let outcome = if call % 2 == 0 {
                CallOutcome::Failure
            } else {
                CallOutcome::Success
            };
            verdicts.push(health.record(outcome, Duration::from_millis(1), now, &rules));
        }
        // The tenth call completes the minimum; it succeeded, so the verdict
        // comes with the next failure.
        assert!(verdicts.iter().all(|v| *v == Verdict::Healthy));
        health.start();
        let verdict = health.record(CallOutcome::Failure, Duration::from_millis(1), now, &rules);
        assert_eq!(verdict, Verdict::ShouldEject);
    }

    #[test]
    fn a_cancelled_hedge_counts_only_as_a_lower_bound_of_latency() {
        let now = Instant::now();
        let health = ReplicaHealth::new(now);
        health.start();
        let verdict = health.record(
            CallOutcome::Cancelled,
            Duration::from_millis(30),
            now,
            &rules(),
        );
        assert_eq!(verdict, Verdict::Healthy);
        assert_eq!(health.requests.get(), 0);
        assert_eq!(health.failures.get(), 0);
        // The attempt had run 30 ms without an answer: it is at least that slow.
        assert_eq!(health.latency_ns(now), 30e6);
        assert_eq!(health.outstanding(), 0);
    }
}
