//! Rendezvous (highest random weight) hashing over named owners.
//!
//! Each owner draws a weight for each device, a pure function of the two
//! names; the device goes to the owner with the highest. Removing an owner
//! moves only its own devices (each to its second-highest owner); adding one
//! takes from every other owner exactly the devices where the newcomer draws
//! the highest weight, about `1/n` of them. Nothing moves between owners that
//! stay, and nothing depends on the order the owners are listed in.
//!
//! The weight, frozen (every process of a cluster must compute the same):
//! `w(owner, device) = splitmix64_finalise(stable_hash(owner) ^ stable_hash(device))`,
//! with [`stable_hash`](crate::devices::stable_hash) (FNV-1a 64 of the UTF-8
//! bytes, then splitmix64's finaliser) and splitmix64's finaliser
//! `z = (z ^ z>>30)·0xbf58476d1ce4e5b9; z = (z ^ z>>27)·0x94d049bb133111eb; z ^ z>>31`
//! (mod 2^64). Ties (two equal 64-bit weights) go to the smaller owner name.
//! Placing one device over `n` owners costs `n` such mixes (~2 ns each).

use super::Placement;
use crate::devices::{splitmix64_finalise, stable_hash};

/// The weight `owner` draws for the device `device`; see the module docs.
pub fn rendezvous_weight(owner: &str, device: &str) -> u64 {
    weight(stable_hash(owner), stable_hash(device))
}

fn weight(owner_hash: u64, device_hash: u64) -> u64 {
    splitmix64_finalise(owner_hash ^ device_hash)
}

/// Named owners, placed over by highest random weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// The owners' names, sorted and without duplicates: index order is name
    /// order, so ties go to the smaller name.
    names: Vec<String>,
    /// Each owner's `stable_hash`, by the same index, computed once.
    hashes: Vec<u64>,
}

impl Rendezvous {
    /// Over these owners; their order does not matter, duplicates count once.
    pub fn new(mut names: Vec<String>) -> Rendezvous {
        names.sort_unstable();
        names.dedup();
        let hashes = names.iter().map(|name| stable_hash(name)).collect();
        Rendezvous { names, hashes }
    }

    /// The owners, sorted: `place` returns an index into this.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Placement for Rendezvous {
    fn owners(&self) -> usize {
        self.names.len()
    }

    fn place(&self, _id: &str, hash: u64) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (index, &owner) in self.hashes.iter().enumerate() {
            let drawn = weight(owner, hash);
            // Strictly greater: on a tie the earlier (smaller) name stays.
            if best.is_none_or(|(top, _)| drawn > top) {
                best = Some((drawn, index));
            }
        }
        best.map(|(_, index)| index)
    }
}
