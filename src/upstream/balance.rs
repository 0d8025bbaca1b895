//! Picking the replica for a call: a small trait and the algorithms beside it.
//!
//! The replica set decides which replicas are usable right now (not ejected,
//! ready, not backing off, below their outstanding limit, not already tried by
//! this call); an algorithm only chooses among those.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use super::replica::Replica;
use crate::config::BalancerKind;

/// Chooses one usable replica, or `None` when none is.
pub trait Balance {
    fn pick(
        &self,
        replicas: &[Replica],
        usable: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize>;
}

/// The algorithm a class's config names, for `count` replicas; `seed` differs
/// per shard so shards do not draw the same pairs.
pub fn for_kind(kind: BalancerKind, count: usize, seed: u64) -> Box<dyn Balance> {
    match kind {
        BalancerKind::RoundRobin => Box::new(RoundRobin::new(count)),
        BalancerKind::PowerOfTwoChoices => Box::new(PowerOfTwoChoices::new(seed)),
    }
}

/// Smooth weighted round-robin (nginx's): every replica comes up in proportion
/// to its weight, spread out rather than in runs.
pub struct RoundRobin {
    /// Per replica: its running score; the highest is picked and pays the total.
    current: RefCell<Vec<i64>>,
}

impl RoundRobin {
    pub fn new(count: usize) -> RoundRobin {
        RoundRobin {
            current: RefCell::new(vec![0; count]),
        }
    }
}

impl Balance for RoundRobin {
    fn pick(
        &self,
        replicas: &[Replica],
        usable: &dyn Fn(usize) -> bool,
        _now: Instant,
    ) -> Option<usize> {
        let mut current = self.current.borrow_mut();
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (index, replica) in replicas.iter().enumerate() {
            if !usable(index) {
                continue;
            }
            let weight = i64::from(replica.weight);
            current[index] += weight;
            total += weight;
            if best.is_none_or(|b| current[index] > current[b]) {
                best = Some(index);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }
}

/// Power of two choices over peak-EWMA latency × (outstanding + 1) / weight, as
/// Finagle, linkerd2 and tower balance: two random usable replicas, the less
/// loaded wins. Sends little to a slow replica without starving it (its
/// estimate decays while idle), and reacts to a replica slowing down within a
/// few calls.
pub struct PowerOfTwoChoices {
    /// xorshift state for the draws.
    rng: Cell<u64>,
}

impl PowerOfTwoChoices {
    pub fn new(seed: u64) -> PowerOfTwoChoices {
        PowerOfTwoChoices {
            rng: Cell::new(seed | 1),
        }
    }

    fn below(&self, bound: usize) -> usize {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        ((x >> 32) as usize * bound) >> 32
    }
}

/// The load P2C compares: latency estimate × (outstanding + 1) / weight. A
/// replica with no estimate yet (it has not answered a call) counts as
/// `unknown_ns`, the set's mean estimate: counted as fast, a new replica would
/// take every call until its first answer, however slow it is.
pub fn load(replica: &Replica, now: Instant, unknown_ns: f64) -> f64 {
    let estimate = replica.health.latency_ns(now);
    let latency = if estimate > 0.0 { estimate } else { unknown_ns };
    let pending = replica.health.outstanding() as f64 + 1.0;
    latency.max(1_000.0) * pending / f64::from(replica.weight)
}

/// The mean latency estimate of the replicas that have one (0 when none has).
fn mean_estimate(replicas: &[Replica], now: Instant) -> f64 {
    let (sum, known) = replicas
        .iter()
        .map(|replica| replica.health.latency_ns(now))
        .filter(|&estimate| estimate > 0.0)
        .fold((0.0, 0u32), |(sum, known), estimate| {
            (sum + estimate, known + 1)
        });
    if known == 0 {
        0.0
    } else {
        sum / f64::from(known)
    }
}

impl Balance for PowerOfTwoChoices {
    fn pick(
        &self,
        replicas: &[Replica],
        usable: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize> {
        let count = replicas.len();
        if count <= 1 {
            return (count == 1 && usable(0)).then_some(0);
        }
        let first = self.below(count);
        let mut second = self.below(count - 1);
        if second >= first {
            second += 1;
        }
        let (a, b) = match (usable(first), usable(second)) {
            (true, true) => (first, second),
            // Some are out: draw two among the usable ones.
            _ => {
                let usable_count = (0..count).filter(|&index| usable(index)).count();
                let nth_usable = |n: usize| (0..count).filter(|&index| usable(index)).nth(n);
                match usable_count {
                    0 => return None,
                    1 => return nth_usable(0),
                    _ => {
                        let a = self.below(usable_count);
                        let mut b = self.below(usable_count - 1);
                        if b >= a {
                            b += 1;
                        }
                        (nth_usable(a)?, nth_usable(b)?)
                    }
                }
            }
        };
        let unknown = if replicas[a].health.latency_ns(now) > 0.0
            && replicas[b].health.latency_ns(now) > 0.0
        {
            0.0
        } else {
            mean_estimate(replicas, now)
        };
        if load(&replicas[b], now, unknown) < load(&replicas[a], now, unknown) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Ejection;
    use crate::upstream::health::CallOutcome;

    fn replicas(weights: &[u32]) -> Vec<Replica> {
        let now = Instant::now();
        weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| {
                let node = format!("127.0.0.1:{}", 9000 + index).parse().unwrap();
                Replica::detached(node, weight, now)
            })
            .collect()
    }

    fn shares(
        balance: &dyn Balance,
        replicas: &[Replica],
        usable: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        let mut counts = vec![0; replicas.len()];
        let now = Instant::now();
        for _ in 0..3000 {
            if let Some(index) = balance.pick(replicas, usable, now) {
                counts[index] += 1;
            }
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_and_skips_the_unusable() {
        let set = replicas(&[1, 2, 3]);
        let counts = shares(&RoundRobin::new(3), &set, &|_| true);
        assert_eq!(counts, vec![500, 1000, 1500]);
        let counts = shares(&RoundRobin::new(3), &set, &|index| index != 1);
        assert_eq!(counts, vec![750, 0, 2250]);
        assert_eq!(
            RoundRobin::new(3).pick(&set, &|_| false, Instant::now()),
            None
        );
    }

    #[test]
    fn p2c_sends_little_to_a_slow_replica() {
        let set = replicas(&[1, 1, 1]);
        let now = Instant::now();
        let rules = Ejection::default();
        for (index, millis) in [(0, 1), (1, 1), (2, 10)] {
            set[index].health.start();
            set[index].health.record(
                CallOutcome::Success,
                Duration::from_millis(millis),
                now,
                &rules,
            );
        }
        let counts = shares(&PowerOfTwoChoices::new(7), &set, &|_| true);
        // With nothing outstanding the slow one only wins when it is not drawn.
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1000 && counts[1] > 1000, "{counts:?}");
    }

    #[test]
    fn p2c_weighs_outstanding_calls_and_weights() {
        let set = replicas(&[1, 4]);
        // Equal latency (none known), the heavier replica looks 4× less loaded,
        // so it wins every draw until it has 4× the calls outstanding.
        for _ in 0..2 {
            set[1].health.start();
        }
        let p2c = PowerOfTwoChoices::new(3);
        assert_eq!(p2c.pick(&set, &|_| true, Instant::now()), Some(1));
        set[1].health.start();
        set[1].health.start();
        assert_eq!(p2c.pick(&set, &|_| true, Instant::now()), Some(0));
    }

    #[test]
    fn p2c_draws_only_usable_replicas() {
        let set = replicas(&[1, 1, 1, 1]);
        let counts = shares(&PowerOfTwoChoices::new(11), &set, &|index| index == 2);
        assert_eq!(counts, vec![0, 0, 3000, 0]);
        let counts = shares(&PowerOfTwoChoices::new(11), &set, &|index| index >= 2);
        assert_eq!(counts[0] + counts[1], 0);
        assert!(counts[2] > 1000 && counts[3] > 1000, "{counts:?}");
        assert_eq!(
            PowerOfTwoChoices::new(1).pick(&set, &|_| false, Instant::now()),
            None
        );
    }
}
