//! A live reload: the config file read again while the run goes on, merged
//! into what the shards run.
//!
//! Only the device list and the class table change live. Everything else in
//! the file (the sink, `[grpc]`) is the run's shape and needs a restart: a
//! reload that changes it says so and leaves it as it was. The tuning file is
//! not read at all ([`Config::reload`]): it is how the run sits on the host.
//!
//! The merge keeps every index the run has handed out. Records name a class
//! by its [`ClassIndex`] and the compute node that answered by its index in
//! the class's node names; the writer, the statistics and the failure
//! breakdown resolve them later, so an index is never given to anything else:
//! - the coordinator's fleet only grows. A device that stays with its class
//!   keeps its [`DeviceIndex`]; a new one, or one that moved to another class,
//!   gets a new one, appended; one that went away (or moved) is *retired*. Its
//!   index stays in the fleet, and no shard runs it again.
//! - classes are matched by name. A changed one keeps its index and its new
//!   settings take effect at the next tick; a new one is appended; one no
//!   longer in the file keeps its index, with no device left in it.
//! - each class's compute node names only grow ([`Live::node_names`]): a row
//!   of a job that ran on a node the class no longer lists still names it.
//!
//! The same machinery carries a class's compute nodes registered in etcd
//! ([`Live::replace_nodes`]): a changed class like any other.
//!
//! The coordinator holds the [`Live`] state and computes a [`Merged`] from it;
//! which shard gets which device is the coordinator's ownership
//! ([`crate::dispatcher`]). It hands the new names to the sink writer first,
//! then a [`Reload`] to every shard, so no record reaches the writer before
//! the names it needs.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Class, Config};
use crate::devices::Fleet;
use crate::endpoint::Endpoint;
use crate::record::{ClassIndex, DeviceIndex};
use crate::shard::DeviceChanges;

/// What every shard applies at a reload (one copy, shared read-only).
#[derive(Debug)]
pub struct Reload {
    /// The class table after the reload, by [`ClassIndex`].
    pub classes: Arc<[Class]>,
    /// Per class: whether its settings changed or it is new, so a shard builds
    /// its routes (replica sets, probes) again.
    pub changed: Vec<bool>,
    /// Per class: each compute node's index (in `compute_nodes` order) in
    /// the writer's names of the class's nodes, for the rows' `compute_node`.
    pub node_names: Vec<Arc<[u16]>>,
    /// Per shard: the devices it gains (at their next tick) and loses.
    pub devices: Vec<DeviceChanges>,
}

/// A merge's outcome, before the coordinator places its devices on shards.
#[derive(Debug)]
pub struct Merged {
    /// The class table after it, by [`ClassIndex`].
    pub classes: Arc<[Class]>,
    /// Per class: whether its settings changed or it is new.
    pub changed: Vec<bool>,
    /// Devices new to the run (indexes into the grown [`Live::fleet`]).
    pub added: Vec<DeviceIndex>,
    /// Devices the run no longer runs.
    pub retired: Vec<DeviceIndex>,
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
    /// Per class: every compute node (`host:port`) rows of the run may name,
    /// in the order first seen; only grows, so a record's node index always
    /// names the node that answered.
    pub node_names: Vec<Vec<String>>,
}

impl Live {
    /// The tuning the run started with, which a reload keeps.
    pub fn tuning(&self) -> &crate::tuning::Tuning {
        &self.started.tuning
    }

    /// The config the run started with.
    pub fn started(&self) -> &Config {
        &self.started
    }

    /// Whether the device is run (not retired by a reload).
    pub fn is_scheduled(&self, device: DeviceIndex) -> bool {
        self.scheduled
            .get(device as usize)
            .copied()
            .unwrap_or(false)
    }

    /// The state of a run that starts with `config`.
    pub fn new(config: &Config) -> Live {
        Live {
            started: config.clone(),
            classes: config.classes.clone(),
            fleet: Arc::new(config.fleet.clone()),
            scheduled: vec![true; config.fleet.len()],
            node_names: config
                .classes
                .iter()
                .map(|class| class.compute_nodes.iter().map(|n| n.to_string()).collect())
                .collect(),
        }
    }

    /// Per class: where each of its compute nodes is in [`Live::node_names`],
    /// which learns the nodes it did not know. A class with more than 65,535
    /// distinct nodes in one run names the rest as none.
    pub fn node_index(&mut self) -> Vec<Arc<[u16]>> {
        self.node_names.resize(self.classes.len(), Vec::new());
        self.classes
            .iter()
            .zip(&mut self.node_names)
            .map(|(class, names)| {
                class
                    .compute_nodes
                    .iter()
                    .map(|node| {
                        let name = node.to_string();
                        let at = names
                            .iter()
                            .position(|known| *known == name)
                            .unwrap_or_else(|| {
                                names.push(name);
                                names.len() - 1
                            });
                        u16::try_from(at).unwrap_or(u16::MAX)
                    })
                    .collect()
            })
            .collect()
    }

    /// The class named `class` served by `nodes` (address and weight) from now
    /// on, as a compute node registry says: its compute nodes and their weights
    /// are replaced, nothing else. Refused for an unknown class. An empty list
    /// is the registry's word too: the class has no compute node (a shard that
    /// cannot build a class without one keeps its last, and says so).
    pub fn replace_nodes(
        &mut self,
        class: &str,
        nodes: &[(Endpoint, u32)],
    ) -> Result<Merged, String> {
        let Some(index) = self.classes.iter().position(|known| known.name == class) else {
            return Err(format!("no class {class:?} in the config"));
        };
        let mut changed = vec![false; self.classes.len()];
        let current = &self.classes[index];
        let addresses: Vec<Endpoint> = nodes.iter().map(|(node, _)| node.clone()).collect();
        let weights: Vec<u32> = nodes.iter().map(|&(_, weight)| weight.max(1)).collect();
        if current.compute_nodes != addresses || current.upstream.weights != weights {
            let class = &mut self.classes[index];
            class.compute_nodes = addresses;
            class.upstream.weights = weights;
            changed[index] = true;
        }
        Ok(Merged {
            classes: self.classes.clone().into(),
            changed,
            added: Vec::new(),
            retired: Vec::new(),
        })
    }

    /// Merges `next` (the file read again) into the run: its classes and the
    /// devices added and retired, and what changed. Nothing changes here when
    /// the merge is refused (too many classes or devices for their indexes).
    pub fn merge(&mut self, next: &Config) -> Result<(Merged, Changes), String> {
        let mut changes = Changes::default();
        if next.sink != self.started.sink {
            changes.ignored.push("[sink]");
        }
        if next.grpc != self.started.grpc {
            changes.ignored.push("[grpc]");
        }
        if next.cluster != self.started.cluster {
            changes.ignored.push("[cluster]");
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

        let mut retired = Vec::new();
        for (device, scheduled) in self.scheduled.iter_mut().enumerate() {
            if *scheduled && !kept[device] {
                *scheduled = false;
                retired.push(device as DeviceIndex);
            }
        }
        changes.retired = retired.len();
        let first_new = self.fleet.len() as DeviceIndex;
        let added: Vec<DeviceIndex> =
            (first_new..first_new + appended.len() as DeviceIndex).collect();
        self.fleet = Arc::new(self.fleet.appended(&appended));
        self.scheduled.resize(self.fleet.len(), true);
        changes.added = appended.len();
        self.classes = classes.clone();
        Ok((
            Merged {
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

    fn ids(fleet: &Fleet, devices: &[DeviceIndex]) -> Vec<String> {
        let mut ids: Vec<String> = devices
            .iter()
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
        let mut live = Live::new(&start);
        // d1 stays, d2 goes, d3 moves to a, d4 is new.
        let next = config(&format!("{a}{b}"), "d1,a\nd3,a\nd4,b\n");
        let (merged, changes) = live.merge(&next).unwrap();
        assert_eq!((changes.added, changes.retired), (2, 2));
        assert!(changes.ignored.is_empty() && changes.changed_classes.is_empty());
        assert_eq!(live.fleet.len(), 5, "the fleet only grows");
        for device in 0..3 {
            assert_eq!(live.fleet.id(device), start.fleet.id(device));
        }
        assert_eq!(ids(&live.fleet, &merged.retired), ["d2", "d3"]);
        assert_eq!(ids(&live.fleet, &merged.added), ["d3", "d4"]);
        assert_eq!(live.fleet.class(3), 0, "d3 is in a now");
        assert!(!live.is_scheduled(1) && live.is_scheduled(0) && live.is_scheduled(4));
        // The same file again changes nothing.
        let (again, changes) = live.merge(&next).unwrap();
        assert_eq!(changes, Changes::default());
        assert_eq!(live.fleet.len(), 5);
        assert!(again.added.is_empty() && again.retired.is_empty());
    }

    #[test]
    fn classes_are_matched_by_name_and_keep_their_index() {
        let start = config(
            &format!("{}{}", class("a", 1000), class("b", 1000)),
            "d1,b\n",
        );
        let mut live = Live::new(&start);
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
        assert_eq!(live.fleet.class(1), 2, "d2 is in c, the run's class 2");
        assert_eq!((changes.added, changes.retired), (1, 0), "d1 stays in b");
    }

    #[test]
    fn registered_nodes_replace_a_class_s_and_node_names_only_grow() {
        let start = config(&class("a", 1000), "d1,a\n");
        let mut live = Live::new(&start);
        assert_eq!(live.node_index()[0][..], [0]);
        let first = Endpoint::parse("127.0.0.1:7001").unwrap();
        let second = Endpoint::parse("127.0.0.1:7002").unwrap();
        let merged = live
            .replace_nodes("a", &[(first.clone(), 3), (second.clone(), 0)])
            .unwrap();
        assert_eq!(merged.changed, [true]);
        assert_eq!(
            merged.classes[0].compute_nodes,
            [first.clone(), second.clone()]
        );
        assert_eq!(merged.classes[0].upstream.weights, [3, 1], "0 counts as 1");
        // The config's node stays named (index 0): rows of jobs it ran still say so.
        assert_eq!(live.node_index()[0][..], [1, 2]);
        assert_eq!(
            live.node_names[0],
            ["127.0.0.1:2", "127.0.0.1:7001", "127.0.0.1:7002"]
        );
        // The same nodes again change nothing; an unknown class is refused.
        let again = live
            .replace_nodes("a", &[(first.clone(), 3), (second.clone(), 1)])
            .unwrap();
        assert_eq!(again.changed, [false]);
        assert!(live.replace_nodes("zzz", &[(first.clone(), 1)]).is_err());
        assert_eq!(live.classes[0].compute_nodes, [first, second]);
        // No node registered any more: the class has none.
        assert_eq!(live.replace_nodes("a", &[]).unwrap().changed, [true]);
        assert!(live.classes[0].compute_nodes.is_empty());
    }

    #[test]
    fn what_needs_a_restart_is_named_and_left_alone() {
        let a = class("a", 1000);
        let start = config(&a, "d1,a\n");
        let mut live = Live::new(&start);
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
