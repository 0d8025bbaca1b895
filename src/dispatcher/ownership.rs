//! Which devices this instance runs, on which shard, and the handover when the
//! live instances change.
//!
//! Every instance loads the same device list; none tells another what it owns.
//! A device is this instance's when the static split keeps it and, with etcd,
//! when rendezvous hashing over the live instances picks this one
//! ([`crate::placement`]); it then runs on the shard the shard placement picks.
//! The coordinator keeps, per device of the fleet, the shard running it here
//! (or none) and turns every change — a membership change, a live reload — into
//! the [`DeviceChanges`] of each shard.
//!
//! **Handover.** On `Members`, an instance stops the devices it lost at once
//! (their shards' next round of due ticks; a job in flight ends and is
//! written) and starts the ones it gained at their first tick at or after
//! *now + safety delay* (`[cluster] safety_delay_ms`, at least the largest
//! `deadline_ms` of the gained devices' classes), so the loser's last job has
//! ended before the gainer's first starts. Ticks due between the loser's stop
//! and the gainer's start are not run (the handover gap; see the README). Tick
//! times are a pure function of the device, and rows are keyed by (device,
//! tick), so an instance that is late to stop can never write a tick twice.
//!
//! Before its first `Members`, a clustered instance runs nothing; its first
//! assignment starts after the safety delay like any gain. An empty member
//! list keeps the last assignment (never drop everything on a bad read). A
//! list without this instance means its registration lapsed and the others
//! are taking its devices: it stops them all, and gets its share back (after
//! the delay) once the cluster thread has registered it again — so no device
//! runs on two instances that see the same membership. An older revision than
//! the last one applied is ignored. An instance cut off from etcd hears
//! nothing and keeps what it runs.

use serde_json::{json, Value};

use crate::cluster::event::NodeRecord;
use crate::config::{Class, ClusterConfig};
use crate::console;
use crate::devices::stable_hash;
use crate::endpoint::Endpoint;
use crate::placement::{shard_placement, Placement, Rendezvous};
use crate::record::{ClassIndex, DeviceId, DeviceIndex};
use crate::reload::{Live, Merged};
use crate::shard::DeviceChanges;

/// `assigned` value of a device this instance does not run.
const NOT_HERE: u16 = u16::MAX;

/// This instance's share of the fleet, and what to say about it.
pub(super) struct Ownership {
    /// `[cluster]`: this instance's id, etcd or not, the split, the delay.
    cluster: ClusterConfig,
    /// How this instance's devices spread over its shards.
    shards: Box<dyn Placement + Send>,
    /// Per device of the fleet ([`DeviceIndex`]): the shard running it here,
    /// or [`NOT_HERE`].
    assigned: Vec<u16>,
    /// The live instances as last applied (with this one); `None` before the
    /// first membership with etcd, and always without.
    instances: Option<Rendezvous>,
    /// The etcd revision of the last membership applied.
    revision: i64,
    /// Per class: the revision of its last compute node list applied.
    node_revisions: Vec<i64>,
    /// What the status line, the log and the summary say.
    pub(super) status: ClusterStatus,
}

/// The cluster as this instance sees it, for people.
#[derive(Debug, Clone, Default)]
pub(super) struct ClusterStatus {
    /// Live instances in the last membership applied (0 before one).
    pub(super) instances: usize,
    /// Its etcd revision.
    pub(super) revision: i64,
    /// Devices this instance runs or waits to run now.
    pub(super) devices: usize,
    /// Membership changes that moved devices.
    pub(super) handovers: u64,
    /// Devices gained and lost over the run.
    pub(super) gained: u64,
    pub(super) lost: u64,
    /// The last `Connection` event: `None` before any, or up and its detail.
    pub(super) connection: Option<(bool, String)>,
}

/// What one membership change did, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handover {
    /// Devices this instance gained, starting at `start_at_ms`.
    pub(super) gained: usize,
    /// Devices it stopped.
    pub(super) lost: usize,
    /// The gained devices' first tick is their first at or after this.
    pub(super) start_at_ms: i64,
}

impl Ownership {
    pub(super) fn new(cluster: &ClusterConfig, shard_count: usize, classes: usize) -> Ownership {
        Ownership {
            shards: shard_placement(shard_count, cluster.uses_etcd()),
            cluster: cluster.clone(),
            assigned: Vec::new(),
            instances: None,
            revision: i64::MIN,
            node_revisions: vec![i64::MIN; classes],
            status: ClusterStatus::default(),
        }
    }

    /// Whether etcd membership decides what this instance runs.
    pub(super) fn clustered(&self) -> bool {
        self.cluster.uses_etcd()
    }

    /// The devices each shard starts with: what the static split keeps, or
    /// (with etcd) none until the first membership.
    pub(super) fn initial(&mut self, live: &Live) -> Vec<Vec<(DeviceId, ClassIndex)>> {
        let mut per_shard = vec![Vec::new(); self.shards.owners()];
        self.assigned = vec![NOT_HERE; live.fleet.len()];
        for device in 0..live.fleet.len() as DeviceIndex {
            if let Some(shard) = self.target(live, device) {
                self.assigned[device as usize] = shard;
                let id = live.fleet.id(device);
                per_shard[usize::from(shard)].push((DeviceId::new(id), live.fleet.class(device)));
            }
        }
        self.status.devices = per_shard.iter().map(Vec::len).sum();
        per_shard
    }

    /// The shard a device runs on here, or `None` if it is not this instance's.
    fn target(&self, live: &Live, device: DeviceIndex) -> Option<u16> {
        if !live.is_scheduled(device) {
            return None;
        }
        let id = live.fleet.id(device);
        let hash = stable_hash(id);
        if !self.cluster.split.keeps(live.fleet.class(device), hash) {
            return None;
        }
        if self.clustered() {
            let instances = self.instances.as_ref()?;
            let owner = instances.place(id, hash)?;
            if instances.names()[owner] != self.cluster.instance {
                return None;
            }
        }
        // Shard counts fit a u16: rows carry the shard as one.
        self.shards.place(id, hash).map(|shard| shard as u16)
    }

    /// Applies a membership: the shards' changes (gains after the safety
    /// delay from `now_ms`), or `None` when nothing is to change (an empty or
    /// stale list). Logs what it did.
    pub(super) fn members(
        &mut self,
        live: &Live,
        instances: &[String],
        revision: i64,
        now_ms: i64,
    ) -> Option<(Vec<DeviceChanges>, Handover)> {
        if !self.clustered() {
            console::err(format_args!(
                "cluster: a membership arrived but [cluster] has no etcd; ignored"
            ));
            return None;
        }
        if instances.is_empty() {
            console::err(format_args!(
                "cluster: warning: the membership at revision {revision} lists no instance; \
                 keeping the last assignment ({} devices)",
                self.status.devices
            ));
            return None;
        }
        if revision < self.revision {
            console::err(format_args!(
                "cluster: ignored a membership of revision {revision}, older than {} already applied",
                self.revision
            ));
            return None;
        }
        if !instances.contains(&self.cluster.instance) {
            console::err(format_args!(
                "cluster: warning: this instance ({}) is not among the live ones at revision \
                 {revision} (its registration lapsed?): the others take its devices; it stops them",
                self.cluster.instance
            ));
        }
        let instances = Rendezvous::new(instances.to_vec());
        self.revision = revision;
        self.status.instances = instances.owners();
        self.status.revision = revision;
        self.instances = Some(instances);
        let (mut changes, handover) = self.diff(live, now_ms, true);
        if handover.gained + handover.lost > 0 {
            self.status.handovers += 1;
        }
        console::err(format_args!(
            "cluster: {} live instances at revision {revision}: {} devices gained (starting at \
             {} ms, in {} ms), {} lost; {} run here",
            self.status.instances,
            handover.gained,
            handover.start_at_ms,
            (handover.start_at_ms - now_ms).max(0),
            handover.lost,
            self.status.devices
        ));
        for change in &mut changes {
            change.start_at_ms = handover.start_at_ms;
        }
        Some((changes, handover))
    }

    /// A live reload's devices placed on the shards: the added ones this
    /// instance owns start at their next tick, the retired ones it ran stop.
    pub(super) fn reload(&mut self, live: &Live, merged: &Merged) -> Vec<DeviceChanges> {
        self.assigned.resize(live.fleet.len(), NOT_HERE);
        let mut changes = vec![DeviceChanges::default(); self.shards.owners()];
        for &device in &merged.retired {
            let shard = std::mem::replace(&mut self.assigned[device as usize], NOT_HERE);
            if shard != NOT_HERE {
                changes[usize::from(shard)]
                    .remove
                    .push(DeviceId::new(live.fleet.id(device)));
                self.status.devices -= 1;
            }
        }
        for &device in &merged.added {
            if let Some(shard) = self.target(live, device) {
                self.assigned[device as usize] = shard;
                changes[usize::from(shard)].add.push((
                    DeviceId::new(live.fleet.id(device)),
                    live.fleet.class(device),
                ));
                self.status.devices += 1;
            }
        }
        for change in &mut changes {
            change.start_at_ms = i64::MIN;
        }
        changes
    }

    /// Every device whose owner changed under the current instances: the
    /// shards' changes and what moved (gains start after the safety delay).
    fn diff(&mut self, live: &Live, now_ms: i64, count: bool) -> (Vec<DeviceChanges>, Handover) {
        self.assigned.resize(live.fleet.len(), NOT_HERE);
        let mut changes = vec![DeviceChanges::default(); self.shards.owners()];
        let mut largest_deadline = 0;
        let (mut gained, mut lost) = (0, 0);
        for device in 0..live.fleet.len() as DeviceIndex {
            let now = self.assigned[device as usize];
            let next = self.target(live, device).unwrap_or(NOT_HERE);
            if now == next {
                continue;
            }
            let id = live.fleet.id(device);
            if now != NOT_HERE {
                changes[usize::from(now)].remove.push(DeviceId::new(id));
                lost += 1;
            }
            if next != NOT_HERE {
                let class = live.fleet.class(device);
                changes[usize::from(next)]
                    .add
                    .push((DeviceId::new(id), class));
                largest_deadline = largest_deadline.max(
                    live.classes
                        .get(usize::from(class))
                        .map_or(0, |class| class.deadline_ms),
                );
                gained += 1;
            }
            self.assigned[device as usize] = next;
        }
        if count {
            self.status.gained += gained as u64;
            self.status.lost += lost as u64;
        }
        self.status.devices = self.status.devices + gained - lost;
        let delay = self.cluster.safety_delay_ms(largest_deadline);
        let handover = Handover {
            gained,
            lost,
            start_at_ms: now_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)),
        };
        (changes, handover)
    }

    /// A class's registered compute nodes as endpoints (names are resolved at
    /// each connect, as the config's are): the endpoints and weights to apply,
    /// or `None` when the list is stale or the class unknown. An `https` node
    /// speaks TLS with the class's settings (those of its configured compute
    /// nodes). Nodes that cannot be used are left out with a warning; none left
    /// is the registry's word that the class has no node now.
    pub(super) fn nodes(
        &mut self,
        classes: &[Class],
        class: &str,
        nodes: &[NodeRecord],
        revision: i64,
    ) -> Option<Vec<(Endpoint, u32)>> {
        let Some(index) = classes.iter().position(|known| known.name == class) else {
            console::err(format_args!(
                "cluster: warning: compute nodes registered for class {class:?}, which the config does not have; ignored"
            ));
            return None;
        };
        self.node_revisions.resize(classes.len(), i64::MIN);
        if revision < self.node_revisions[index] {
            return None;
        }
        self.node_revisions[index] = revision;
        let model = &classes[index].model;
        let tls = classes[index]
            .compute_nodes
            .iter()
            .find_map(|node| node.tls().cloned());
        let mut resolved: Vec<(Endpoint, u32)> = Vec::with_capacity(nodes.len());
        for node in nodes {
            if let Some(theirs) = node.model.as_deref().filter(|theirs| theirs != model) {
                console::err(format_args!(
                    "cluster: warning: compute node {:?} of class {class:?} serves model {theirs:?}, \
                     not the class's {model:?}; left out",
                    node.id
                ));
                continue;
            }
            let endpoint = Endpoint::parse(&node.addr).and_then(|endpoint| {
                match (endpoint.scheme(), &tls) {
                    (crate::endpoint::Scheme::Http, _) => Ok(endpoint),
                    (crate::endpoint::Scheme::Https, Some(tls)) => endpoint.with_tls(tls.clone()),
                    (crate::endpoint::Scheme::Https, None) => Err(format!(
                        "{:?} is https but the class has no TLS settings (its compute nodes speak plaintext)",
                        node.addr
                    )),
                }
            });
            match endpoint {
                Ok(endpoint)
                    if resolved
                        .iter()
                        .any(|(known, _)| known.name() == endpoint.name()) =>
                {
                    console::err(format_args!(
                        "cluster: warning: compute node {:?} of class {class:?} repeats {endpoint}; left out",
                        node.id
                    ));
                }
                Ok(endpoint) => resolved.push((endpoint, node.weight.max(1))),
                Err(why) => console::err(format_args!(
                    "cluster: warning: compute node {:?} of class {class:?}: {why}; left out",
                    node.id
                )),
            }
        }
        if resolved.is_empty() {
            console::err(format_args!(
                "cluster: warning: class {class:?} has no usable registered compute node at \
                 revision {revision}"
            ));
        }
        Some(resolved)
    }

    /// The summary's `cluster` object.
    pub(super) fn summary(&self) -> Value {
        json!({
            "instance": self.cluster.instance,
            "etcd": self.clustered(),
            "slice": self.cluster.split.slice.map(|slice| slice.to_string()),
            "instances": self.status.instances,
            "revision": self.clustered().then_some(self.status.revision),
            "devices": self.status.devices,
            "handovers": self.status.handovers,
            "devices_gained": self.status.gained,
            "devices_lost": self.status.lost,
            "etcd_up": self.status.connection.as_ref().map(|(up, _)| *up),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn config(cluster: &str, devices: usize) -> Config {
        let text = format!(
            "[devices]\ngenerate = {{ count = {devices}, mix = {{ a = 1, b = 1 }} }}\n\
             [sink]\nkind = \"sqlite\"\npath = \"x.db\"\n\
             [[classes]]\nname = \"a\"\nmodel = \"m\"\nperiod_ms = 1000\ndeadline_ms = 300\n\
             data_sources = [\"127.0.0.1:1\"]\ncompute_nodes = [\"127.0.0.1:2\"]\n\
             [[classes]]\nname = \"b\"\nmodel = \"m\"\nperiod_ms = 1000\ndeadline_ms = 700\n\
             data_sources = [\"127.0.0.1:1\"]\ncompute_nodes = [\"127.0.0.1:2\"]\n{cluster}"
        );
        Config::from_str(&text, Path::new("c.toml")).unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn count(changes: &[DeviceChanges]) -> (usize, usize) {
        (
            changes.iter().map(|c| c.add.len()).sum(),
            changes.iter().map(|c| c.remove.len()).sum(),
        )
    }

    #[test]
    fn without_etcd_the_static_split_decides_at_start() {
        let config = config("[cluster]\nslice = \"2/3\"\nclasses = [\"b\"]\n", 3000);
        let live = Live::new(&config);
        let mut ownership = Ownership::new(&config.cluster, 2, 2);
        let per_shard = ownership.initial(&live);
        let kept: usize = per_shard.iter().map(Vec::len).sum();
        // A third of half the fleet, give or take.
        assert!((400..600).contains(&kept), "{kept}");
        for (shard, devices) in per_shard.iter().enumerate() {
            for (id, class) in devices {
                assert_eq!(*class, 1);
                assert!(config
                    .cluster
                    .split
                    .slice
                    .unwrap()
                    .contains(stable_hash(id)));
                assert_eq!(crate::devices::shard_of(id, 2), shard);
            }
        }
        assert_eq!(ownership.status.devices, kept);
    }

    #[test]
    fn a_membership_moves_about_one_nth_and_gains_wait_the_delay() {
        let config = config(
            "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\ninstance = \"b\"\n",
            9000,
        );
        let live = Live::new(&config);
        let mut ownership = Ownership::new(&config.cluster, 2, 2);
        assert!(
            ownership.initial(&live).iter().all(Vec::is_empty),
            "nothing before a membership"
        );
        // First assignment: alone, b runs everything after the delay (the
        // largest deadline of its classes, 700 ms).
        let (changes, handover) = ownership.members(&live, &names(&["b"]), 5, 1_000).unwrap();
        assert_eq!(count(&changes), (9000, 0));
        assert_eq!(handover.start_at_ms, 1_700);
        assert!(changes.iter().all(|c| c.start_at_ms == 1_700));
        // A joins: b loses about half, at once (losses have no start).
        let (changes, handover) = ownership
            .members(&live, &names(&["a", "b"]), 6, 2_000)
            .unwrap();
        let (added, removed) = count(&changes);
        assert_eq!(added, 0);
        assert!((3_900..5_100).contains(&removed), "{removed}");
        assert_eq!(handover.lost, removed);
        // An empty list, or an older revision, changes nothing.
        assert!(ownership.members(&live, &[], 7, 3_000).is_none());
        assert!(ownership.members(&live, &names(&["b"]), 4, 3_000).is_none());
        assert_eq!(ownership.status.devices, 9000 - removed);
        // C joins too: b only loses (to c), a keeps all of its own.
        let (changes, _) = ownership
            .members(&live, &names(&["a", "b", "c"]), 8, 4_000)
            .unwrap();
        let (added, lost_to_c) = count(&changes);
        assert_eq!(added, 0);
        assert!((1_000..2_000).contains(&lost_to_c), "{lost_to_c}");
        // A leaves: b gains a's share of what it would own among {b, c}.
        let (changes, handover) = ownership
            .members(&live, &names(&["b", "c"]), 9, 5_000)
            .unwrap();
        let (gained, removed) = count(&changes);
        assert_eq!(removed, 0);
        assert!((1_000..2_000).contains(&gained), "{gained}");
        assert_eq!(handover.start_at_ms, 5_700);
        // This instance missing from the list: it stops everything it runs.
        let run_here = ownership.status.devices;
        let (changes, _) = ownership.members(&live, &names(&["c"]), 10, 6_000).unwrap();
        assert_eq!(count(&changes), (0, run_here));
        assert_eq!(ownership.status.devices, 0);
        assert_eq!(ownership.status.handovers, 5);
    }

    #[test]
    fn a_configured_delay_is_used_when_longer_than_the_deadlines() {
        let config = config(
            "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\ninstance = \"b\"\nsafety_delay_ms = 2500\n",
            10,
        );
        let live = Live::new(&config);
        let mut ownership = Ownership::new(&config.cluster, 1, 2);
        ownership.initial(&live);
        let (_, handover) = ownership.members(&live, &names(&["b"]), 1, 10_000).unwrap();
        assert_eq!(handover.start_at_ms, 12_500);
    }

    #[test]
    fn registered_nodes_are_resolved_checked_and_deduplicated() {
        let config = config("", 10);
        let mut ownership = Ownership::new(&config.cluster, 1, 2);
        let node = |id: &str, addr: &str, model: Option<&str>| NodeRecord {
            id: id.into(),
            addr: addr.into(),
            weight: 2,
            model: model.map(str::to_string),
        };
        let nodes = [
            node("n1", "127.0.0.1:7001", Some("m")),
            node("n2", "127.0.0.1:7001", None),
            node("n3", "127.0.0.1:0", None),
            node("n4", "nowhere", None),
            node("n5", "127.0.0.1:7002", Some("other")),
            node("n6", "127.0.0.1:7003", None),
            node("n7", "https://127.0.0.1:7004", None),
        ];
        let resolved = ownership.nodes(&config.classes, "a", &nodes, 3).unwrap();
        let addresses: Vec<String> = resolved.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(addresses, ["127.0.0.1:7001", "127.0.0.1:7003"]);
        assert!(resolved.iter().all(|(_, weight)| *weight == 2));
        // Older than applied, or an unknown class: nothing to do.
        assert!(ownership.nodes(&config.classes, "a", &nodes, 2).is_none());
        assert!(ownership.nodes(&config.classes, "zzz", &nodes, 9).is_none());
        // Nothing usable: the class has no node.
        assert_eq!(
            ownership
                .nodes(&config.classes, "b", &nodes[2..4], 9)
                .map(|nodes| nodes.len()),
            Some(0)
        );
    }
}
