//! Placement: which owner a device belongs to, behind one small trait with its
//! algorithms beside it (as pingora keeps its selection algorithms).
//!
//! An *owner* is a dispatcher instance of a cluster, or a shard of one
//! instance. A device's owner is a pure function of its id and the owners, so
//! every process that knows the same owners places every device alike, with no
//! message between them:
//! - [`Modulo`] (`modulo.rs`): `stable_hash(id) % owners` — how a single
//!   instance spreads its devices over its shards, today's behaviour. Cheap,
//!   but changing the number of owners moves almost every device.
//! - [`Rendezvous`] (`rendezvous.rs`): highest random weight over a set of
//!   named owners. Adding or removing one of `n` owners moves about `1/n` of
//!   the devices, and none between owners that stay: how a cluster spreads its
//!   devices over its live instances.
//!
//! In a cluster a device belongs to the instance [`Rendezvous`] picks among the
//! live ones, then to that instance's shard [`Rendezvous`] picks among its
//! shard names (`"0"`, `"1"`, …); a single instance uses [`Modulo`] over its
//! shards. The coordinator ([`crate::dispatcher`]) computes both; shards only
//! receive their devices.

mod modulo;
mod rendezvous;

pub use modulo::Modulo;
pub use rendezvous::{rendezvous_weight, Rendezvous};

/// Places devices on one of a fixed set of owners.
pub trait Placement {
    /// How many owners devices are placed on; `place` returns less than this.
    fn owners(&self) -> usize;

    /// The owner (by index, `0..owners()`) of the device with this id and its
    /// [`stable_hash`](crate::devices::stable_hash) `hash`, which callers
    /// usually have already. `None` only when there are no owners.
    fn place(&self, id: &str, hash: u64) -> Option<usize>;
}

/// The shard placement of an instance with `shards` shards: [`Modulo`] alone,
/// [`Rendezvous`] over the shard names `"0"`, `"1"`, … in a cluster.
pub fn shard_placement(shards: usize, clustered: bool) -> Box<dyn Placement + Send> {
    if clustered {
        Box::new(Rendezvous::new(
            (0..shards).map(|shard| shard.to_string()).collect(),
        ))
    } else {
        Box::new(Modulo::new(shards))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{stable_hash, Fleet};
    use crate::record::DeviceIndex;

    /// Owner of every device of the fleet under `placement`.
    fn owners_of(fleet: &Fleet, placement: &dyn Placement) -> Vec<usize> {
        (0..fleet.len() as DeviceIndex)
            .map(|device| {
                let id = fleet.id(device);
                placement.place(id, stable_hash(id)).unwrap()
            })
            .collect()
    }

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|n| format!("host-{n:02}")).collect()
    }

    #[test]
    fn modulo_is_todays_shard_of() {
        let fleet = Fleet::generate(1000, &[(0, 1)]);
        let modulo = Modulo::new(4);
        for device in 0..1000 {
            let id = fleet.id(device);
            assert_eq!(
                modulo.place(id, stable_hash(id)),
                Some(crate::devices::shard_of(id, 4))
            );
        }
        assert_eq!(Modulo::new(0).place("a", 1), None);
    }

    /// Adding one owner to `n`: about 1/(n+1) of 100,000 devices move (at most
    /// 1.5/(n+1)), all of them to the new owner; removing one of `n`: only its
    /// devices move. Nothing moves between owners that stay.
    #[test]
    fn rendezvous_moves_about_one_nth_and_nothing_between_stayers() {
        const DEVICES: usize = 100_000;
        let fleet = Fleet::generate(DEVICES, &[(0, 1)]);
        for n in [2usize, 3, 4, 10] {
            let before_names = names(n);
            let before = owners_of(&fleet, &Rendezvous::new(before_names.clone()));
            // Join: a new owner, sorted into the middle of the names.
            let mut joined = before_names.clone();
            joined.push("host-05a".into());
            let rendezvous = Rendezvous::new(joined.clone());
            let after = owners_of(&fleet, &rendezvous);
            let mut moved = 0;
            for (&old, &new) in before.iter().zip(&after) {
                let (old, new) = (&before_names[old], &rendezvous.names()[new]);
                if old != new {
                    moved += 1;
                    assert_eq!(
                        new, "host-05a",
                        "a device moved between two owners that stay"
                    );
                }
            }
            let bound = DEVICES as f64 * 1.5 / (n + 1) as f64;
            assert!(
                (moved as f64) <= bound,
                "join to {n}: {moved} of {DEVICES} moved, bound {bound}"
            );
            assert!(
                (moved as f64) >= DEVICES as f64 * 0.5 / (n + 1) as f64,
                "join to {n}: only {moved} moved"
            );
            // Leave: the first owner goes.
            let left_names: Vec<String> = before_names[1..].to_vec();
            let left = Rendezvous::new(left_names.clone());
            let after = owners_of(&fleet, &left);
            let mut moved = 0;
            for (&old, &new) in before.iter().zip(&after) {
                let (old, new) = (&before_names[old], &left.names()[new]);
                if old != new {
                    moved += 1;
                    assert_eq!(old, &before_names[0], "a device of a staying owner moved");
                }
            }
            let bound = DEVICES as f64 * 1.5 / n as f64;
            assert!(
                (moved as f64) <= bound,
                "leave from {n}: {moved} of {DEVICES} moved, bound {bound}"
            );
        }
    }

    #[test]
    fn rendezvous_spreads_evenly_and_ignores_name_order() {
        let fleet = Fleet::generate(100_000, &[(0, 1)]);
        let owners = names(5);
        let placed = owners_of(&fleet, &Rendezvous::new(owners.clone()));
        let mut counts = [0usize; 5];
        for &owner in &placed {
            counts[owner] += 1;
        }
        for &count in &counts {
            assert!(count.abs_diff(20_000) <= 1_000, "{counts:?}");
        }
        let mut reversed = owners.clone();
        reversed.reverse();
        let shuffled = Rendezvous::new(reversed);
        for (device, &owner) in placed.iter().enumerate().take(1000) {
            let id = fleet.id(device as DeviceIndex);
            let other = shuffled.place(id, stable_hash(id)).unwrap();
            assert_eq!(shuffled.names()[other], owners[owner]);
        }
    }

    #[test]
    fn rendezvous_weight_never_changes() {
        // Frozen (and what the formula in rendezvous.rs gives, computed apart):
        // if these change, every cluster's ownership moves at upgrade.
        assert_eq!(
            rendezvous_weight("host-a", "dev-0000001"),
            0x64d0_0c6f_6344_7fb5
        );
        assert_eq!(rendezvous_weight("0", "dev-0000001"), 0x4153_c9d6_b1f0_cb9f);
        assert_eq!(Rendezvous::new(Vec::new()).place("x", 0), None);
    }

    #[test]
    fn shard_placement_is_modulo_alone_and_rendezvous_in_a_cluster() {
        let id = "dev-0000001";
        let hash = stable_hash(id);
        assert_eq!(
            shard_placement(4, false).place(id, hash),
            Modulo::new(4).place(id, hash)
        );
        let names: Vec<String> = (0..4).map(|n| n.to_string()).collect();
        assert_eq!(
            shard_placement(4, true).place(id, hash),
            Rendezvous::new(names).place(id, hash)
        );
    }
}
