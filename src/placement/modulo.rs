//! `stable_hash(id) % owners`: a single instance's shards.

use super::Placement;

/// Devices spread over `owners` numbered owners by their hash modulo the count:
/// even and cheap, but a change of the count moves almost every device, so it
/// is for owners that never change while a run lasts (an instance's shards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modulo {
    /// How many owners.
    owners: usize,
}

impl Modulo {
    pub fn new(owners: usize) -> Modulo {
        Modulo { owners }
    }
}

impl Placement for Modulo {
    fn owners(&self) -> usize {
        self.owners
    }

    fn place(&self, _id: &str, hash: u64) -> Option<usize> {
        (self.owners > 0).then(|| (hash % self.owners as u64) as usize)
    }
}
