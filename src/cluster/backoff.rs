//! Jittered exponential backoff between attempts to reach etcd.

use std::time::Duration;

/// Attempts wait `first`, doubling up to `max`, each drawn uniformly from
/// [half, all] of its step ("equal jitter"), so many dispatchers that lost etcd
/// together do not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first step.
    first: Duration,
    /// The largest step.
    max: Duration,
    /// The next step, before jitter.
    next: Duration,
    /// xorshift state for the jitter (seeded per process).
    seed: u64,
}

impl Backoff {
    /// A backoff from `first` to `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Backoff {
            first,
            max,
            next: first,
            seed: seed | 1,
        }
    }

    /// Starts again from the first step (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
        step.mul_f64(0.5 + 0.5 * fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_up_to_the_cap_with_jitter_below_each_step() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let mut caps = Vec::new();
        for _ in 0..6 {
            let delay = backoff.next_delay();
            caps.push(delay);
        }
        let steps = [100, 200, 400, 800, 800, 800];
        for (delay, step) in caps.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delay:?} for {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
