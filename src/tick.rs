//! When devices fire: the tick grid and a shard's schedule.
//!
//! A device of a class with period `P` ms fires at every Unix millisecond `t` with
//! `t mod P == phase`, where `phase` is a pure function of the device id's stable
//! hash. Any process computes the same ticks for the same device, so a tick is
//! identified by (device, t) everywhere — in rows, across restarts, across hosts.
//!
//! Periodic timers on a fixed grid need no general timer wheel: a shard sorts its
//! devices of each class by phase once, and a cursor walks that ring as time
//! passes. Firing costs O(1) per tick, the structure is 8 bytes per device, and the
//! shard wakes at most once per millisecond (ticks are whole milliseconds).
//!
//! Devices join and leave a running schedule in batches ([`Schedule::change`]):
//! the leavers are filtered out and the joiners, sorted, merged in — O(n + k log k)
//! for k changes on a ring of n, one pass over 8 bytes per device.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The phase (0..period) of a device with this stable hash.
pub fn phase_ms(device_hash: u64, period_ms: u64) -> u64 {
    // Use the high half: shard placement uses the hash modulo the shard count, and
    // phase must not correlate with it.
    (device_hash >> 32 ^ device_hash.rotate_left(17)) % period_ms
}

/// The first tick of a device at or after `t_ms`.
pub fn first_tick_at_or_after(t_ms: i64, phase: u64, period_ms: u64) -> i64 {
    let period = period_ms as i64;
    let cycle_start = t_ms.div_euclid(period) * period;
    let candidate = cycle_start + phase as i64;
    if candidate >= t_ms {
        candidate
    } else {
        candidate + period
    }
}

/// Every tick of a device in `[start_ms, end_ms)`, in order.
pub fn ticks_in(
    start_ms: i64,
    end_ms: i64,
    phase: u64,
    period_ms: u64,
) -> impl Iterator<Item = i64> {
    let first = first_tick_at_or_after(start_ms, phase, period_ms);
    (0..)
        .map(move |k| first + k * period_ms as i64)
        .take_while(move |&t| t < end_ms)
}

/// Maps Unix milliseconds to the monotonic clock, fixed once per run so every shard
/// agrees on when a tick is due and latencies never jump with wall-clock changes.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// A monotonic instant...
    base: Instant,
    /// ...and the Unix time in ms it corresponds to.
    base_unix_ms: i64,
}

impl Clock {
    pub fn now_from_system() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let base = Instant::now();
        Clock {
            base: base - Duration::from_nanos(unix.subsec_nanos() as u64 % 1_000_000),
            base_unix_ms: unix.as_millis() as i64,
        }
    }

    /// Current Unix time in whole milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as i64
    }

    /// The Unix millisecond an instant falls in.
    pub fn unix_ms_of(&self, instant: Instant) -> i64 {
        if instant >= self.base {
            self.base_unix_ms + (instant - self.base).as_millis() as i64
        } else {
            self.base_unix_ms - (self.base - instant).as_millis() as i64 - 1
        }
    }

    /// The monotonic instant of a Unix millisecond.
    pub fn instant_of(&self, unix_ms: i64) -> Instant {
        let offset = unix_ms - self.base_unix_ms;
        if offset >= 0 {
            self.base + Duration::from_millis(offset as u64)
        } else {
            self.base
                .checked_sub(Duration::from_millis(offset.unsigned_abs()))
                .unwrap_or(self.base)
        }
    }
}

/// One class's devices on one shard, as a ring sorted by phase.
struct Lane {
    /// The class's period: the ring's length in ms.
    period_ms: u64,
    /// (phase, shard-local device index), sorted by phase.
    ring: Vec<(u32, u32)>,
    /// Next entry to fire.
    cursor: usize,
    /// Unix ms at which the current cycle of the ring started (a multiple of the period).
    cycle_start_ms: i64,
}

impl Lane {
    /// Points the cursor at the first entry due at or after `from_ms`.
    fn position(&mut self, from_ms: i64) {
        let period = self.period_ms as i64;
        self.cycle_start_ms = from_ms.div_euclid(period) * period;
        let offset = from_ms - self.cycle_start_ms;
        self.cursor = self
            .ring
            .partition_point(|&(phase, _)| (phase as i64) < offset);
        if self.cursor == self.ring.len() {
            self.cursor = 0;
            self.cycle_start_ms += period;
        }
    }

    fn next_tick_ms(&self) -> Option<i64> {
        self.ring
            .get(self.cursor)
            .map(|&(phase, _)| self.cycle_start_ms + phase as i64)
    }
}

/// Two rings sorted by (phase, slot) as one.
fn merge_sorted(ring: Vec<(u32, u32)>, joiners: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut merged = Vec::with_capacity(ring.len() + joiners.len());
    let (mut old, mut new) = (ring.iter().peekable(), joiners.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (Some(&&a), Some(&&b)) => {
                if a <= b {
                    merged.push(a);
                    old.next();
                } else {
                    merged.push(b);
                    new.next();
                }
            }
            (Some(_), None) => {
                merged.extend(old);
                break;
            }
            (None, Some(_)) => {
                merged.extend(new);
                break;
            }
            (None, None) => break,
        }
    }
    merged
}

/// A shard's schedule: which of its devices are due when.
pub struct Schedule {
    /// One ring per class, by class index.
    lanes: Vec<Lane>,
}

impl Schedule {
    /// Builds the schedule from `(class lane, period, phase, local index)` entries;
    /// the first tick of each device is its first at or after `start_ms`.
    pub fn new(
        periods_ms: &[u64],
        devices: impl Iterator<Item = (usize, u64, u32)>,
        start_ms: i64,
    ) -> Schedule {
        let mut lanes: Vec<Lane> = periods_ms
            .iter()
            .map(|&period_ms| Lane {
                period_ms,
                ring: Vec::new(),
                cursor: 0,
                cycle_start_ms: start_ms.div_euclid(period_ms as i64) * period_ms as i64,
            })
            .collect();
        for (lane, phase, local) in devices {
            lanes[lane].ring.push((phase as u32, local));
        }
        for lane in &mut lanes {
            lane.ring.sort_unstable();
            lane.position(start_ms);
        }
        Schedule { lanes }
    }

    /// Fires every tick due at or before `now_ms`, in time order within a class:
    /// `fire(class lane, local device, tick_ms)`.
    pub fn fire_due(&mut self, now_ms: i64, mut fire: impl FnMut(usize, u32, i64)) {
        for (index, lane) in self.lanes.iter_mut().enumerate() {
            while let Some(tick_ms) = lane.next_tick_ms() {
                if tick_ms > now_ms {
                    break;
                }
                fire(index, lane.ring[lane.cursor].1, tick_ms);
                lane.cursor += 1;
                if lane.cursor == lane.ring.len() {
                    lane.cursor = 0;
                    lane.cycle_start_ms += lane.period_ms as i64;
                }
            }
        }
    }

    /// Takes the devices in `removed` slots out and puts `added` ones
    /// (`(class lane, phase, slot)`) in, as of `from_ms`: every tick before it
    /// counts as fired (the caller fired through `from_ms - 1`), so a joiner's
    /// first tick is its first at or after `from_ms` and a device that stays
    /// neither misses a tick nor fires one twice. `periods_ms` gives the period
    /// of any lane a joiner opens (a class new to this schedule).
    pub fn change(
        &mut self,
        periods_ms: &[u64],
        removed: &[u32],
        added: &[(usize, u64, u32)],
        from_ms: i64,
    ) {
        if removed.is_empty() && added.is_empty() {
            return;
        }
        while self.lanes.len() < periods_ms.len() {
            let period_ms = periods_ms[self.lanes.len()];
            self.lanes.push(Lane {
                period_ms,
                ring: Vec::new(),
                cursor: 0,
                cycle_start_ms: from_ms.div_euclid(period_ms as i64) * period_ms as i64,
            });
        }
        let mut gone = Vec::new();
        if let Some(&largest) = removed.iter().max() {
            gone = vec![false; largest as usize + 1];
            for &slot in removed {
                gone[slot as usize] = true;
            }
        }
        let mut joining: Vec<Vec<(u32, u32)>> = vec![Vec::new(); self.lanes.len()];
        for &(lane, phase, slot) in added {
            // A lane beyond the periods given has no period to fire on; the
            // caller passes every class's, so this never drops one.
            if let Some(entries) = joining.get_mut(lane) {
                entries.push((phase as u32, slot));
            }
        }
        for (lane, mut joiners) in self.lanes.iter_mut().zip(joining) {
            let before = lane.ring.len();
            if !gone.is_empty() {
                lane.ring
                    .retain(|&(_, slot)| !gone.get(slot as usize).copied().unwrap_or(false));
            }
            if joiners.is_empty() && lane.ring.len() == before {
                continue;
            }
            if !joiners.is_empty() {
                joiners.sort_unstable();
                lane.ring = merge_sorted(std::mem::take(&mut lane.ring), &joiners);
            }
            lane.position(from_ms);
        }
    }

    /// Devices in the schedule.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(|lane| lane.ring.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest tick not yet fired, if the shard has any devices.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.lanes.iter().filter_map(Lane::next_tick_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_tick_lands_on_the_grid() {
        assert_eq!(first_tick_at_or_after(10_000, 250, 1000), 10_250);
        assert_eq!(first_tick_at_or_after(10_250, 250, 1000), 10_250);
        assert_eq!(first_tick_at_or_after(10_251, 250, 1000), 11_250);
        assert_eq!(first_tick_at_or_after(-5, 0, 1000), 0);
    }

    #[test]
    fn phase_is_deterministic_and_in_range() {
        for hash in [0u64, 1, u64::MAX, 0xdead_beef_cafe_f00d] {
            let phase = phase_ms(hash, 7_000);
            assert!(phase < 7_000);
            assert_eq!(phase, phase_ms(hash, 7_000));
        }
        // Phases spread over the period rather than clustering.
        let mut buckets = [0u32; 10];
        for i in 0..10_000u64 {
            let hash = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            buckets[(phase_ms(hash, 1000) / 100) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
    }

    /// The schedule fires exactly the ticks `ticks_in` lists, however the time
    /// between calls is sliced.
    #[test]
    fn schedule_fires_every_grid_tick_exactly_once() {
        let periods = [1000u64, 300];
        let devices: Vec<(usize, u64, u32)> = (0..50u32)
            .map(|i| {
                let lane = (i % 2) as usize;
                (lane, (i as u64 * 37) % periods[lane], i)
            })
            .collect();
        let (start, end) = (123_456i64, 126_789i64);
        let mut schedule = Schedule::new(&periods, devices.iter().copied(), start);
        let mut fired = Vec::new();
        let mut now = start;
        while now < end {
            schedule.fire_due(now.min(end - 1), |lane, local, tick| {
                fired.push((lane, local, tick))
            });
            now += 1 + now % 7; // uneven steps
        }
        schedule.fire_due(end - 1, |lane, local, tick| fired.push((lane, local, tick)));
        let mut expected: Vec<(usize, u32, i64)> = devices
            .iter()
            .flat_map(|&(lane, phase, local)| {
                ticks_in(start, end, phase, periods[lane]).map(move |t| (lane, local, t))
            })
            .collect();
        fired.sort_unstable();
        expected.sort_unstable();
        assert_eq!(fired, expected);
        assert!(schedule.next_due_ms().unwrap() >= end);
    }

    #[test]
    fn ticks_fire_in_time_order_within_a_class() {
        let devices = (0..100u32).map(|i| (0usize, (i as u64 * 7919) % 500, i));
        let mut schedule = Schedule::new(&[500], devices, 1_000_000);
        let mut last = i64::MIN;
        schedule.fire_due(1_002_000, |_, _, tick| {
            assert!(tick >= last);
            last = tick;
        });
        assert_eq!(schedule.next_due_ms().map(|t| t > 1_002_000), Some(true));
    }

    /// A million devices on one shard: one period fires each exactly once, and the
    /// next period starts over. (Correctness at scale; speed is in the benchmark.)
    #[test]
    fn a_million_devices_fire_once_per_period() {
        const DEVICES: u32 = 1_000_000;
        let period = 60_000u64;
        let devices = (0..DEVICES).map(|i| {
            let hash = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (0usize, phase_ms(hash, period), i)
        });
        let start = 1_700_000_000_000i64;
        let mut schedule = Schedule::new(&[period], devices, start);
        let mut seen = vec![0u8; DEVICES as usize];
        let mut now = start;
        while now < start + period as i64 {
            schedule.fire_due(now, |_, local, tick| {
                assert!(tick <= now && tick >= start);
                seen[local as usize] += 1;
            });
            now += 7;
        }
        schedule.fire_due(start + period as i64 - 1, |_, local, _| {
            seen[local as usize] += 1
        });
        assert!(
            seen.iter().all(|&n| n == 1),
            "some device fired {} times",
            seen.iter().max().unwrap()
        );
        let next = schedule.next_due_ms().unwrap();
        assert!((start + period as i64..start + 2 * period as i64).contains(&next));
    }

    /// Devices leave and join between two rounds: leavers fire nothing after
    /// the change, joiners start at their first tick at or after it, and the
    /// devices that stay fire exactly their grid ticks, none twice or missed.
    #[test]
    fn changes_take_effect_at_the_next_tick_and_spare_the_stayers() {
        let periods = [1000u64, 300];
        let phase_of = |slot: u32, lane: usize| (slot as u64 * 37 + 11) % periods[lane];
        let device = |slot: u32| {
            let lane = (slot % 2) as usize;
            (lane, phase_of(slot, lane), slot)
        };
        let (start, change, end) = (100_000i64, 102_345i64, 105_000i64);
        let mut schedule = Schedule::new(&periods, (0..40).map(device), start);
        let mut fired = Vec::new();
        schedule.fire_due(change - 1, |lane, slot, tick| {
            fired.push((lane, slot, tick))
        });
        // Slots 0..10 leave; 40..50 join; slot 3 is reused by a joiner at once.
        let removed: Vec<u32> = (0..10).collect();
        let mut added: Vec<(usize, u64, u32)> = (40..50).map(device).collect();
        added.push((1, 7, 3));
        schedule.change(&periods, &removed, &added, change);
        assert_eq!(schedule.len(), 40 - 10 + 11);
        let mut now = change;
        while now < end {
            schedule.fire_due(now, |lane, slot, tick| fired.push((lane, slot, tick)));
            now += 13;
        }
        schedule.fire_due(end - 1, |lane, slot, tick| fired.push((lane, slot, tick)));
        let mut expected: Vec<(usize, u32, i64)> = Vec::new();
        for slot in 0..40u32 {
            let (lane, phase, _) = device(slot);
            let until = if slot < 10 { change } else { end };
            expected.extend(ticks_in(start, until, phase, periods[lane]).map(|t| (lane, slot, t)));
        }
        for &(lane, phase, slot) in &added {
            expected.extend(ticks_in(change, end, phase, periods[lane]).map(|t| (lane, slot, t)));
        }
        fired.sort_unstable();
        expected.sort_unstable();
        assert_eq!(fired, expected);
    }

    #[test]
    fn a_joiner_may_open_a_lane() {
        let mut schedule = Schedule::new(&[1000], std::iter::empty(), 0);
        assert_eq!(schedule.next_due_ms(), None);
        schedule.change(&[1000, 500], &[], &[(1, 250, 0)], 600);
        assert_eq!(schedule.next_due_ms(), Some(750));
        schedule.change(&[1000, 500], &[0], &[], 600);
        assert!(schedule.is_empty());
    }

    #[test]
    fn clock_maps_unix_ms_to_instants_consistently() {
        let clock = Clock::now_from_system();
        let now = clock.now_ms();
        let later = clock.instant_of(now + 250);
        assert_eq!(later - clock.instant_of(now), Duration::from_millis(250));
        assert_eq!(clock.unix_ms_of(later), now + 250);
        assert_eq!(
            clock.unix_ms_of(later + Duration::from_micros(999)),
            now + 250
        );
    }
}
