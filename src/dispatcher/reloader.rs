//! Live changes on the coordinator: a reload (the config file read again,
//! merged by [`crate::reload`]), a membership change (handover, in
//! [`super::ownership`]) and a class's compute nodes registered in etcd. Each
//! gives the writer its new names first, then the shards their changes.

use std::path::PathBuf;
use std::sync::Arc;

use super::ownership::{Handover, Ownership};
use crate::cluster::event::NodeRecord;
use crate::config::Config;
use crate::console;
use crate::reload::{Live, Merged, Reload};
use crate::shard::{Control, DeviceChanges};
use crate::sink::{self, ClassNames, RowNames};

/// Reload requests, and their names for the writer, that may wait at once: a
/// burst of SIGHUPs is one reload.
pub(super) const RELOADS_QUEUED: usize = 4;

/// What a live change needs on the coordinator.
pub(super) struct Reloader {
    /// The config file, read again at each request.
    pub(super) path: PathBuf,
    /// The config as the shards run it.
    pub(super) live: Live,
    /// Which devices run here, on which shard.
    pub(super) ownership: Ownership,
    /// The run's identity, for the writer's new names.
    pub(super) run: sink::run::RunIdentity,
    /// New names to the sink writer, sent before the shards hear of a change.
    pub(super) names: flume::Sender<Arc<RowNames>>,
}

impl Reloader {
    /// Reads the config file again and applies its device list and classes:
    /// the writer gets the new names first, then every shard the reload. A file
    /// that does not load changes nothing; its error is logged. Returns the
    /// class names after it, for the metrics.
    pub(super) fn reload(&mut self, controls: &[flume::Sender<Control>]) -> Option<Arc<[String]>> {
        // The shards must never run ahead of what the writer can resolve: a
        // writer that has not yet taken the last changes' names (it takes
        // them with its next batch) has this one refused, to be asked again.
        // Only the coordinator sends, so room now is room at the send.
        if self.names.is_full() {
            console::err(format_args!(
                "reload: the sink writer has not taken the last reloads' names yet; send SIGHUP again; nothing reloaded"
            ));
            return None;
        }
        let next = match Config::reload(&self.path, self.live.tuning()) {
            Ok(next) => next,
            Err(error) => {
                console::err(format_args!(
                    "reload: {error}; the run goes on with the config it has"
                ));
                return None;
            }
        };
        let (merged, changes) = match self.live.merge(&next) {
            Ok(merged) => merged,
            Err(error) => {
                console::err(format_args!(
                    "reload: {}: {error}; the run goes on with the config it has",
                    self.path.display()
                ));
                return None;
            }
        };
        let devices = self.ownership.reload(&self.live, &merged);
        let class_names: Arc<[String]> = merged.classes.iter().map(|c| c.name.clone()).collect();
        if let Err(why) = self.publish(merged, devices, controls) {
            console::err(format_args!("reload: {why}; nothing reloaded"));
            return None;
        }
        console::err(format_args!("reload: {}: {changes}", self.path.display()));
        Some(class_names)
    }

    /// A membership change: each shard stops what it lost and starts what it
    /// gained after the safety delay. Records carry their device's id, so the
    /// writer needs no new names.
    pub(super) fn members(
        &mut self,
        instances: &[String],
        revision: i64,
        now_ms: i64,
        controls: &[flume::Sender<Control>],
    ) -> Option<Handover> {
        let (changes, handover) = self
            .ownership
            .members(&self.live, instances, revision, now_ms)?;
        send_devices(changes, controls);
        Some(handover)
    }

    /// A class's compute nodes as registered in etcd replace its list: the
    /// class is rebuilt on every shard, as a reload that changed it would.
    /// Returns `false` when it must be asked again (the sink writer has not
    /// taken the last names yet; the supervisor retries at its next status tick).
    pub(super) fn nodes(
        &mut self,
        class: &str,
        nodes: &[NodeRecord],
        revision: i64,
        controls: &[flume::Sender<Control>],
    ) -> bool {
        if self.names.is_full() {
            return false;
        }
        let Some(resolved) = self
            .ownership
            .nodes(&self.live.classes, class, nodes, revision)
        else {
            return true;
        };
        let merged = match self.live.replace_nodes(class, &resolved) {
            Ok(merged) => merged,
            Err(why) => {
                console::err(format_args!("cluster: warning: {why}; nothing changed"));
                return true;
            }
        };
        if !merged.changed.iter().any(|&changed| changed) {
            return true;
        }
        let listed: Vec<String> = resolved
            .iter()
            .map(|(addr, w)| format!("{addr} (weight {w})"))
            .collect();
        match self.publish(merged, Vec::new(), controls) {
            Ok(()) if listed.is_empty() => console::err(format_args!(
                "cluster: class {class:?} has no compute node at revision {revision}: \
                 its ticks are skipped (\"no compute node registered\") until one registers"
            )),
            Ok(()) => console::err(format_args!(
                "cluster: class {class:?} compute nodes at revision {revision}: {}",
                listed.join(", ")
            )),
            Err(why) => console::err(format_args!("cluster: {why}; compute nodes not changed")),
        }
        true
    }

    /// The writer's new names, then one [`Reload`] to every shard.
    fn publish(
        &mut self,
        merged: Merged,
        devices: Vec<DeviceChanges>,
        controls: &[flume::Sender<Control>],
    ) -> Result<(), &'static str> {
        let node_names = self.live.node_index();
        let names = Arc::new(RowNames {
            run: self.run.clone(),
            classes: self
                .live
                .classes
                .iter()
                .zip(&self.live.node_names)
                .map(|(class, nodes)| class_names(class, nodes))
                .collect(),
        });
        self.names.try_send(names).map_err(|error| match error {
            flume::TrySendError::Full(_) => "the sink writer has not taken the last names yet",
            flume::TrySendError::Disconnected(_) => "the sink writer has stopped",
        })?;
        let reload = Arc::new(Reload {
            classes: merged.classes,
            changed: merged.changed,
            node_names,
            devices,
        });
        for control in controls {
            let _ = control.send(Control::Reload(reload.clone()));
        }
        Ok(())
    }
}

/// Each shard's changes, to the shards that have any.
fn send_devices(changes: Vec<DeviceChanges>, controls: &[flume::Sender<Control>]) {
    for (changes, control) in changes.into_iter().zip(controls) {
        if !changes.is_empty() {
            let _ = control.send(Control::Devices(Box::new(changes)));
        }
    }
}

/// A class's names as rows carry them; `compute_nodes` every node its rows
/// may name ([`Live::node_names`]).
pub(super) fn class_names(class: &crate::config::Class, compute_nodes: &[String]) -> ClassNames {
    ClassNames {
        all_outputs: class.store_all_outputs,
        class: class.name.clone(),
        model: class.model.clone(),
        compute_nodes: compute_nodes.to_vec(),
    }
}
