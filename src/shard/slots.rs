//! A shard's devices, each in a slot: what the schedule and the jobs point at.
//!
//! Devices come and go while a shard runs (a live reload, a handover between
//! instances), so a shard cannot number them once. Each device it gains takes
//! a free slot (or a new one); the schedule refers to slots, and a job to the
//! slot *and its generation*. Removing a device bumps its slot's generation, so
//! when its last job ends after the slot was given to another device, the
//! job's completion sees a different generation and leaves the new occupant
//! alone (its row is still written: the job carries its own device id).

use std::cell::Cell;
use std::collections::HashMap;

use crate::record::{ClassIndex, DeviceId};

/// Where a slot's device is in its life on this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// No device: on the free list.
    Free,
    /// Gained, waiting for the time it may start (a handover's safety delay):
    /// not in the schedule yet.
    Waiting,
    /// In the schedule: its ticks fire.
    Scheduled,
}

/// One device on the shard.
#[derive(Debug)]
pub struct Slot {
    /// The device's id (the last occupant's while the slot is free); each
    /// record of its jobs carries a clone.
    pub id: DeviceId,
    /// The device's class, by index into the class table.
    pub class: ClassIndex,
    /// Bumped each time the slot is emptied: a job started under an older
    /// generation belongs to a device that has left.
    pub generation: u32,
    /// Free, waiting or scheduled.
    pub state: SlotState,
    /// Whether the device's previous job still runs (at most one in flight).
    pub busy: Cell<bool>,
    /// The device's last tick, so closed- and open-loop ticks never repeat a key.
    pub last_tick_ms: Cell<i64>,
}

/// A job's hold on its slot: which slot, under which generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRef {
    /// The slot's index.
    pub slot: u32,
    /// Its generation when the job started.
    pub generation: u32,
}

/// Every slot of a shard, and how to find a device's.
#[derive(Debug, Default)]
pub struct Slots {
    /// By slot index; only grows (a freed slot is reused, never dropped).
    slots: Vec<Slot>,
    /// Free slots, reused last-freed first.
    free: Vec<u32>,
    /// The slot of every device present (waiting or scheduled), to remove one by id.
    index: HashMap<DeviceId, u32>,
}

impl Slots {
    /// Room for `devices` devices.
    pub fn with_capacity(devices: usize) -> Slots {
        Slots {
            slots: Vec::with_capacity(devices),
            free: Vec::new(),
            index: HashMap::with_capacity(devices),
        }
    }

    /// The slot at `slot` (free or not). Panics past [`Slots::len`], like slice indexing.
    pub fn get(&self, slot: u32) -> &Slot {
        &self.slots[slot as usize]
    }

    /// Slots made so far, free ones included.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Devices present (waiting or scheduled).
    pub fn devices(&self) -> usize {
        self.index.len()
    }

    /// The slot of a device present, if it is.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// Puts a device in a slot, waiting; `None` if it is already present.
    pub fn insert(&mut self, id: DeviceId, class: ClassIndex) -> Option<SlotRef> {
        if self.index.contains_key(id.as_str()) {
            return None;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                let entry = &mut self.slots[slot as usize];
                entry.id = id.clone();
                entry.class = class;
                entry.state = SlotState::Waiting;
                entry.busy.set(false);
                entry.last_tick_ms.set(i64::MIN);
                slot
            }
            None => {
                // A shard holds far fewer than 2^32 devices: the fleet's
                // DeviceIndex is a u32 too.
                let slot = self.slots.len() as u32;
                self.slots.push(Slot {
                    id: id.clone(),
                    class,
                    generation: 0,
                    state: SlotState::Waiting,
                    busy: Cell::new(false),
                    last_tick_ms: Cell::new(i64::MIN),
                });
                slot
            }
        };
        self.index.insert(id, slot);
        Some(SlotRef {
            slot,
            generation: self.slots[slot as usize].generation,
        })
    }

    /// Marks a waiting device scheduled, if `held` still names it (it was not
    /// removed meanwhile). Returns whether it did.
    pub fn schedule(&mut self, held: SlotRef) -> bool {
        match self.slots.get_mut(held.slot as usize) {
            Some(slot)
                if slot.generation == held.generation && slot.state == SlotState::Waiting =>
            {
                slot.state = SlotState::Scheduled;
                true
            }
            _ => false,
        }
    }

    /// Takes a device out: its slot is freed under a new generation. Returns
    /// the slot and the state it was in, or `None` if the device is not here.
    pub fn remove(&mut self, id: &str) -> Option<(u32, SlotState)> {
        let slot = self.index.remove(id)?;
        let entry = &mut self.slots[slot as usize];
        let was = entry.state;
        entry.state = SlotState::Free;
        entry.generation = entry.generation.wrapping_add(1);
        // A job still running keeps `busy` set on a slot nobody reads until
        // reuse, which clears it; its completion, of an older generation,
        // leaves the slot alone.
        self.free.push(slot);
        Some((slot, was))
    }

    /// A job that held `held` has ended: the device may start another, unless
    /// the slot has changed hands since.
    pub fn finish(&self, held: SlotRef) {
        if let Some(slot) = self.slots.get(held.slot as usize) {
            if slot.generation == held.generation {
                slot.busy.set(false);
            }
        }
    }

    /// A job starts on `slot`: marks it busy and returns the hold the job keeps.
    pub fn begin(&self, slot: u32) -> SlotRef {
        let entry = &self.slots[slot as usize];
        entry.busy.set(true);
        SlotRef {
            slot,
            generation: entry.generation,
        }
    }

    /// Every scheduled slot with its device's class.
    pub fn scheduled(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.state == SlotState::Scheduled)
            .map(|(index, slot)| (index as u32, slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_is_not_touched_by_its_last_occupants_job() {
        let mut slots = Slots::default();
        let a = slots.insert("dev-a".into(), 0).unwrap();
        assert!(slots.schedule(a));
        // A job of dev-a starts, then dev-a leaves while it runs.
        let job = slots.begin(a.slot);
        assert_eq!(slots.remove("dev-a"), Some((a.slot, SlotState::Scheduled)));
        // dev-b takes the same slot and starts a job of its own.
        let b = slots.insert("dev-b".into(), 1).unwrap();
        assert_eq!(b.slot, a.slot, "the freed slot is reused");
        assert_ne!(b.generation, a.generation);
        assert!(slots.schedule(b));
        assert!(!slots.get(b.slot).busy.get(), "a new occupant starts idle");
        let b_job = slots.begin(b.slot);
        // dev-a's job ends: dev-b's job is still running.
        slots.finish(job);
        assert!(
            slots.get(b.slot).busy.get(),
            "the stale job cleared the new occupant"
        );
        assert_eq!(slots.get(b.slot).id.as_str(), "dev-b");
        slots.finish(b_job);
        assert!(!slots.get(b.slot).busy.get());
    }

    #[test]
    fn a_device_removed_while_waiting_is_never_scheduled() {
        let mut slots = Slots::default();
        let held = slots.insert("dev-a".into(), 0).unwrap();
        assert_eq!(slots.remove("dev-a"), Some((held.slot, SlotState::Waiting)));
        assert!(!slots.schedule(held));
        // Even when the slot is taken again before the wait ends.
        let again = slots.insert("dev-c".into(), 0).unwrap();
        assert!(!slots.schedule(held));
        assert!(slots.schedule(again));
        assert_eq!(slots.scheduled().count(), 1);
    }

    #[test]
    fn inserting_twice_or_removing_a_stranger_changes_nothing() {
        let mut slots = Slots::default();
        assert!(slots.insert("dev-a".into(), 0).is_some());
        assert!(slots.insert("dev-a".into(), 1).is_none());
        assert_eq!(slots.remove("dev-z"), None);
        assert_eq!(slots.devices(), 1);
        assert_eq!(slots.slot_of("dev-a"), Some(0));
        assert_eq!(slots.get(0).class, 0);
    }
}
