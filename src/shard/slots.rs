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
use std::hash::{BuildHasherDefault, Hasher};

use crate::devices::stable_hash;
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

/// Hashes a key that is already a well-mixed hash ([`stable_hash`]) by
/// taking it as it is: the index costs no second hash of the id.
#[derive(Debug, Default, Clone, Copy)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in anyway.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Every slot of a shard, and how to find a device's.
#[derive(Debug, Default)]
pub struct Slots {
    /// By slot index; only grows (a freed slot is reused, never dropped).
    slots: Vec<Slot>,
    /// Free slots, reused last-freed first.
    free: Vec<u32>,
    /// The slot of every device present (waiting or scheduled), by the
    /// [`stable_hash`] of its id: 16 bytes an entry and no hashing of the
    /// text, so a shard takes a million devices at start in a few tens of ms.
    index: HashMap<u64, u32, BuildHasherDefault<PreHashed>>,
    /// Devices whose id hashes like another present one's (a 64-bit
    /// collision: never seen in practice, handled all the same), by id.
    collided: HashMap<DeviceId, u32>,
    /// Devices present.
    present: usize,
}

impl Slots {
    /// Room for `devices` devices.
    pub fn with_capacity(devices: usize) -> Slots {
        Slots {
            slots: Vec::with_capacity(devices),
            free: Vec::new(),
            index: HashMap::with_capacity_and_hasher(devices, BuildHasherDefault::default()),
            collided: HashMap::new(),
            present: 0,
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
        self.present
    }

    /// The slot of a device present, if it is.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.find(id, stable_hash(id))
    }

    /// The slot of the device `id`, whose stable hash is `hash`, if present.
    fn find(&self, id: &str, hash: u64) -> Option<u32> {
        match self.index.get(&hash) {
            Some(&slot) if self.slots[slot as usize].id.as_str() == id => Some(slot),
            Some(_) => self.collided.get(id).copied(),
            None => None,
        }
    }

    /// Puts a device in a slot, waiting; `None` if it is already present.
    pub fn insert(&mut self, id: DeviceId, class: ClassIndex) -> Option<SlotRef> {
        let hash = stable_hash(&id);
        if self.find(&id, hash).is_some() {
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
        match self.index.entry(hash) {
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(slot);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(id, slot);
            }
        }
        self.present += 1;
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
        let hash = stable_hash(id);
        let slot = self.find(id, hash)?;
        if self.index.get(&hash) == Some(&slot) {
            self.index.remove(&hash);
        } else {
            self.collided.remove(id);
        }
        self.present -= 1;
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

    /// Two ids with one stable hash (forced through the collision map, as a
    /// real 64-bit collision would go) are still told apart.
    #[test]
    fn ids_that_share_a_hash_are_told_apart() {
        let mut slots = Slots::default();
        let a = slots.insert("dev-a".into(), 0).unwrap();
        // As if "dev-b" hashed like "dev-a": its slot goes in the collision map.
        let b = slots.insert("dev-b".into(), 0).unwrap();
        let hash_b = stable_hash("dev-b");
        slots.index.remove(&hash_b);
        slots.collided.insert("dev-b".into(), b.slot);
        let hash_a = stable_hash("dev-a");
        slots.index.insert(hash_b, a.slot);
        assert_eq!(slots.find("dev-b", hash_b), Some(b.slot));
        assert_eq!(slots.find("dev-a", hash_a), Some(a.slot));
        assert_eq!(slots.remove("dev-b").map(|(slot, _)| slot), Some(b.slot));
        assert_eq!(slots.find("dev-b", hash_b), None);
        assert_eq!(slots.devices(), 1);
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
