//! The retry budget: how many retries a shard may add to a class's calls.
//!
//! Retries help when one replica fails; when the whole class fails they only
//! multiply the load on it. So, as linkerd2 and Envoy do, retries are capped at
//! a share of the calls made over the last [`WINDOW_SECONDS`] seconds, plus a
//! small floor per second so a quiet class can still ride over one failure.
//! Hedged attempts draw from the same budget.

use std::cell::{Cell, RefCell};
use std::time::Instant;

/// The budget's memory, in one-second buckets (linkerd2's default TTL is 10 s).
pub const WINDOW_SECONDS: usize = 10;

/// One shard's retry budget for one class and role.
#[derive(Debug)]
pub struct RetryBudget {
    /// Retries allowed per 100 calls in the window.
    percent: u32,
    /// Retries allowed per second of the window whatever the calls.
    min_per_s: u32,
    /// Where bucket 0 starts; bucket `n` covers second `n` after it, modulo the
    /// window.
    epoch: Instant,
    /// Per bucket: (the second it holds, calls, retries).
    buckets: RefCell<[(u64, u32, u32); WINDOW_SECONDS]>,
    /// Retries refused because the budget was spent, for the metrics.
    pub exhausted: Cell<u64>,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_s: u32, now: Instant) -> RetryBudget {
        RetryBudget {
            percent,
            min_per_s,
            epoch: now,
            buckets: RefCell::new([(u64::MAX, 0, 0); WINDOW_SECONDS]),
            exhausted: Cell::new(0),
        }
    }

    /// A first attempt of a call: it adds to what retries may be spent.
    pub fn record_call(&self, now: Instant) {
        let second = self.second(now);
        let mut buckets = self.buckets.borrow_mut();
        let bucket = bucket(&mut buckets, second);
        bucket.1 = bucket.1.saturating_add(1);
    }

    /// Takes one retry if the budget has one; counts a refusal otherwise.
    pub fn try_retry(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut buckets = self.buckets.borrow_mut();
        let (mut calls, mut retries) = (0u64, 0u64);
        for &(held, bucket_calls, bucket_retries) in buckets.iter() {
            if held != u64::MAX && second.saturating_sub(held) < WINDOW_SECONDS as u64 {
                calls += u64::from(bucket_calls);
                retries += u64::from(bucket_retries);
            }
        }
        let allowed = calls * u64::from(self.percent) / 100
            + u64::from(self.min_per_s) * WINDOW_SECONDS as u64;
        if retries >= allowed {
            self.exhausted.set(self.exhausted.get() + 1);
            return false;
        }
        let bucket = bucket(&mut buckets, second);
        bucket.2 = bucket.2.saturating_add(1);
        true
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }
}

/// The bucket for `second`, emptied first if it still holds an older second.
fn bucket(buckets: &mut [(u64, u32, u32); WINDOW_SECONDS], second: u64) -> &mut (u64, u32, u32) {
    let slot = &mut buckets[(second % WINDOW_SECONDS as u64) as usize];
    if slot.0 != second {
        *slot = (second, 0, 0);
    }
    slot
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retries_are_a_share_of_calls_plus_a_floor() {
        let start = Instant::now();
        let budget = RetryBudget::new(20, 1, start);
        for _ in 0..100 {
            budget.record_call(start);
        }
        // 20 % of 100 calls plus 1 per second of the 10 s window.
        let granted = (0..100).filter(|_| budget.try_retry(start)).count();
        assert_eq!(granted, 30);
        assert_eq!(budget.exhausted.get(), 70);
    }

    #[test]
    fn the_window_forgets_old_calls_and_retries() {
        let start = Instant::now();
        let budget = RetryBudget::new(50, 0, start);
        for _ in 0..10 {
            budget.record_call(start);
        }
        assert_eq!((0..10).filter(|_| budget.try_retry(start)).count(), 5);
        let later = start + Duration::from_secs(WINDOW_SECONDS as u64);
        assert!(!budget.try_retry(later), "the calls left the window too");
        budget.record_call(later);
        budget.record_call(later);
        assert!(budget.try_retry(later));
        assert!(!budget.try_retry(later));
    }
}
