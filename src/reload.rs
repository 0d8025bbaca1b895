//! A live reload: the config file read again while the run goes on, merged
//! into what the shards run.
//!
//! Only the device list and the class table change live. Everything else in
//! the file (the sink, `[grpc]`) is the run's shape and needs a restart: a
//! reload that changes it says so and leaves it as it was. The tuning file is
//! not read at all ([`Config::reload`]): it is how the run sits on the host.
//!
//! The merge keeps every index the run has handed out. Records name a device
//! by its [`DeviceIndex`] and a class by its [`ClassIndex`]; the writer, the
//! statistics and the failure breakdown resolve them later, so an index is
//! never given to anything else:
//! - the fleet only grows. A device that stays with its class keeps its index;
//!   a new one, or one that moved to another class, gets a new one, appended;
//!   one that went away (or moved) is *retired*. Its index stays in the fleet,
//!   and no shard schedules it again.
//! - classes are matched by name. A changed one keeps its index and its new
//!   settings take effect at the next tick; a new one is appended; one no
//!   longer in the file keeps its index, with no device left in it.
//!
//! The coordinator holds the [`Live`] state and computes a [`Reload`] from it.
//! It hands the new names to the sink writer first, then the [`Reload`] to
//! every shard, so no record reaches the writer before the names it needs.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Class, Config};
use crate::devices::{shard_of, Fleet};
use crate::record::{ClassIndex, DeviceIndex};

/// What every shard applies at a reload (one copy, shared read-only).
#[derive(Debug)]
pub struct Reload {
    /// The fleet after the reload: the old one plus the devices added.
    pub fleet: Arc<Fleet>,
    /// The class table after the reload, by [`ClassIndex`].
    pub classes: Arc<[Class]>,
    /// Per class: whether its settings changed or it is new, so a shard builds
    /// its routes (replica sets, probes) again.
    pub changed: Vec<bool>,
    /// Per shard: the devices it starts scheduling at their next tick.
    pub added: Vec<Vec<DeviceIndex>>,
    /// Per shard: the devices it stops scheduling (their job in flight ends).
    pub retired: Vec<Vec<DeviceIndex>>,
}

/// What a reload did, for the log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Devices added (new, or moved to another class).
    pub added: usize,
    /// Devices retired (gone, or moved to another class).
    pub retired: usize,
    /// Classes whose settings changed, by name.
    pub changed_classes: Vec<String>,
    /// Classes new in this reload, by name.
    pub new_classes: Vec<String>,
    /// Parts of the file that changed but need a restart, by name.
    pub ignored: Vec<&'static str>,
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} devices added, {} retired", self.added, self.retired)?;
        if !self.new_classes.is_empty() {
            write!(f, "; new classes {:?}", self.new_classes)?;
        }
        if !self.changed_classes.is_empty() {
            write!(f, "; classes changed {:?}", self.changed_classes)?;
        }
        if !self.ignored.is_empty() {
            write!(
                f,
                "; not applied (needs a restart): {}",
                self.ignored.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The run's config as the shards run it, kept by the coordinator.
#[derive(Debug, Clone)]
pub struct Live {
    /// The config the run started with (its sink, gRPC and tuning stay).
    started: Config,
    /// The class table, by [`ClassIndex`]: every class the run has known.
    pub classes: Vec<Class>,
    /// Every device the run has known, by [`DeviceIndex`].
    pub fleet: Arc<Fleet>,
    /// Per device: whether it is scheduled (not retired).
    scheduled: Vec<bool>,
    /// How many shards the devices are spread over.
    shards: usize,
}

impl Live {
    /// The tuning the run started with, which a reload keeps.
    pub fn tuning(&self) -> &crate::tuning::Tuning {
        &self.started.tuning
    }

    /// The state of a run that starts with `config` over `shards` shards.
    pub fn new(config: &Config, shards: usize) -> Live {
        Live {
            started: config.clone(),
            classes: config.classes.clone(),
            fleet: Arc::new(config.fleet.clone()),
            scheduled: vec![true; config.fleet.len()],
            shards,
        }
    }

    /// Merges `next` (the file read again) into the run: what each shard must
    /// do, and what changed. Nothing changes here when the merge is refused
    /// (too many classes or devices for their indexes).
    pub fn merge(&mut self, next: &Config) -> Result<(Reload, Changes), String> {
        let mut changes = Changes::default();
        if next.sink != self.started.sink {
            changes.ignored.push("[sink]");
        }
        if next.grpc != self.started.grpc {
            changes.ignored.push("[grpc]");
        }

        // Classes, by name; the new file's index → the run's.
        let mut classes = self.classes.clone();
        let mut changed = vec![false; classes.len()];
        let mut class_of_next = Vec::with_capacity(next.classes.len());
        for class in &next.classes {
            match classes.iter().position(|known| known.name == class.name) {
                Some(index) => {
                    // A discovered class's nodes are etcd's, not the file's.
                    let class = &keep_discovered_nodes(class, &classes[index]);
                    if classes[index] != *class {
                        classes[index] = class.clone();
                        changed[index] = true;
                        changes.changed_classes.push(class.name.clone());
                    }
                    class_of_next.push(index);
                }
                None => {
                    classes.push(class.clone());
                    changed.push(true);
                    changes.new_classes.push(class.name.clone());
                    class_of_next.push(classes.len() - 1);
                }
            }
        }
        if classes.len() > usize::from(ClassIndex::MAX) + 1 {
            return Err(format!(
                "the run would know {} classes, more than {}",
                classes.len(),
                usize::from(ClassIndex::MAX) + 1
            ));
        }

        // Devices, by id: the scheduled ones the run knows, and where they are.
        let mut known: HashMap<&str, DeviceIndex> = HashMap::with_capacity(self.fleet.len());
        for device in 0..self.fleet.len() as DeviceIndex {
            if self.scheduled[device as usize] {
                known.insert(self.fleet.id(device), device);
            }
        }
        let mut kept = vec![false; self.fleet.len()];
        let mut appended: Vec<(String, ClassIndex)> = Vec::new();
        for device in 0..next.fleet.len() as DeviceIndex {
            let id = next.fleet.id(device);
            let class = class_of_next[next.fleet.class(device) as usize] as ClassIndex;
            match known.get(id) {
                Some(&index) if self.fleet.class(index) == class => kept[index as usize] = true,
                _ => appended.push((id.to_string(), class)),
            }
        }
        let total = self.fleet.len() + appended.len();
        if total > DeviceIndex::MAX as usize {
            return Err(format!(
                "the run would know {total} devices, more than {}",
                DeviceIndex::MAX
            ));
        }

        let mut added = vec![Vec::new(); self.shards];
        let mut retired = vec![Vec::new(); self.shards];
        for (device, scheduled) in self.scheduled.iter_mut().enumerate() {
            if *scheduled && !kept[device] {
                *scheduled = false;
                let index = device as DeviceIndex;
                retired[shard_of(self.fleet.id(index), self.shards)].push(index);
                changes.retired += 1;
            }
        }
        let fleet = Arc::new(self.fleet.appended(&appended));
        for (offset, (id, _)) in appended.iter().enumerate() {
            let index = (self.fleet.len() + offset) as DeviceIndex;
            added[shard_of(id, self.shards)].push(index);
            self.scheduled.push(true);
        }
        changes.added = appended.len();
        self.fleet = fleet.clone();
        self.classes = classes.clone();
        Ok((
            Reload {
                fleet,
                classes: classes.into(),
                changed,
                added,
                retired,
            },
            changes,
        ))
    }
}

/// `class` as read from the file, with the compute nodes (and their weights)
/// the run has from etcd when both it and the running `known` discover them.
fn keep_discovered_nodes(class: &Class, known: &Class) -> Class {
    let mut class = class.clone();
    if class.compute_nodes_from_etcd && known.compute_nodes_from_etcd {
        class.compute_nodes = known.compute_nodes.clone();
        class.upstream.weights = known.upstream.weights.clone();
    }
    class
}

impl Live {
    /// Gives the class named `class` the compute nodes etcd has for it now:
    /// the reload every shard applies (that class's routes built again, no
    /// device moved); `None` when the class is unknown or nothing changed.
    pub fn set_compute_nodes(
        &mut self,
        class: &str,
        nodes: &[crate::cluster::NodeRecord],
    ) -> Option<Reload> {
        let index = self.classes.iter().position(|known| known.name == class)?;
        let mut updated = self.classes[index].clone();
        if !updated.compute_nodes_from_etcd {
            return None;
        }
        crate::cluster::join::set_nodes(&mut updated, nodes);
        if updated == self.classes[index] {
            return None;
        }
        self.classes[index] = updated;
        let mut changed = vec![false; self.classes.len()];
        changed[index] = true;
        Some(Reload {
            fleet: self.fleet.clone(),
            classes: self.classes.clone().into(),
            changed,
            added: vec![Vec::new(); self.shards],
            retired: vec![Vec::new(); self.shards],
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(classes: &str, devices: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("devices.csv");
        std::fs::write(&list, devices).unwrap();
        let text = format!(
            "[devices]\ncsv = {list:?}\n[sink]\nkind = \"sqlite\"\npath = \"x.db\"\n{classes}"
        );
        Config::from_str(&text, Path::new("fleet.toml")).unwrap()
    }

    fn class(name: &str, period_ms: u64) -> String {
        format!(
            "[[classes]]\nname = \"{name}\"\nmodel = \"m\"\nperiod_ms = {period_ms}\n\
             deadline_ms = 100\ndata_sources = [\"127.0.0.1:1\"]\ncompute_nodes = [\"127.0.0.1:2\"]\n"
        )
    }

    fn ids(fleet: &Fleet, devices: &[Vec<DeviceIndex>]) -> Vec<String> {
        let mut ids: Vec<String> = devices
            .iter()
            .flatten()
            .map(|&device| fleet.id(device).to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn devices_keep_their_index_and_new_ones_are_appended() {
        let a = class("a", 1000);
        let b = class("b", 1000);
        let start = config(&format!("{a}{b}"), "d1,a\nd2,a\nd3,b\n");
        let mut live = Live::new(&start, 2);
        // d1 stays, d2 goes, d3 moves to a, d4 is new.
        let next = config(&format!("{a}{b}"), "d1,a\nd3,a\nd4,b\n");
        let (reload, changes) = live.merge(&next).unwrap();
        assert_eq!((changes.added, changes.retired), (2, 2));
        assert!(changes.ignored.is_empty() && changes.changed_classes.is_empty());
        assert_eq!(reload.fleet.len(), 5, "the fleet only grows");
        for device in 0..3 {
            assert_eq!(reload.fleet.id(device), start.fleet.id(device));
        }
        assert_eq!(ids(&reload.fleet, &reload.retired), ["d2", "d3"]);
        assert_eq!(ids(&reload.fleet, &reload.added), ["d3", "d4"]);
        assert_eq!(reload.fleet.class(3), 0, "d3 is in a now");
        // The same file again changes nothing.
        let (again, changes) = live.merge(&next).unwrap();
        assert_eq!(changes, Changes::default());
        assert_eq!(again.fleet.len(), 5);
        assert!(again.added.iter().chain(&again.retired).all(Vec::is_empty));
    }

    #[test]
    fn classes_are_matched_by_name_and_keep_their_index() {
        let start = config(
            &format!("{}{}", class("a", 1000), class("b", 1000)),
            "d1,b\n",
        );
        let mut live = Live::new(&start, 1);
        // a goes, b changes its period, c is new and listed first.
        let next = config(
            &format!("{}{}", class("c", 500), class("b", 2000)),
            "d1,b\nd2,c\n",
        );
        let (reload, changes) = live.merge(&next).unwrap();
        let names: Vec<&str> = reload.classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(reload.changed, [false, true, true]);
        assert_eq!(changes.changed_classes, ["b"]);
        assert_eq!(changes.new_classes, ["c"]);
        assert_eq!(reload.classes[1].period_ms, 2000);
        assert_eq!(reload.fleet.class(1), 2, "d2 is in c, the run's class 2");
        assert_eq!((changes.added, changes.retired), (1, 0), "d1 stays in b");
    }

    #[test]
    fn what_needs_a_restart_is_named_and_left_alone() {
        let a = class("a", 1000);
        let start = config(&a, "d1,a\n");
        let mut live = Live::new(&start, 1);
        let mut next = config(&a, "d1,a\n");
        next.grpc.retries += 1;
        next.sink = crate::config::SinkConfig::sqlite("other.db");
        let (_, changes) = live.merge(&next).unwrap();
        assert_eq!(changes.ignored, ["[sink]", "[grpc]"]);
        assert_eq!(
            changes.to_string(),
            "0 devices added, 0 retired; not applied (needs a restart): [sink], [grpc]"
        );
    }
}
