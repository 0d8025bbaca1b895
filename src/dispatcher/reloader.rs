//! A live reload on the coordinator: the config file read again, merged
//! ([`crate::reload`]), its names to the writer, then the reload to the shards.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::console;
use crate::reload::Live;
use crate::shard::Control;
use crate::sink::{self, ClassNames, RowNames};

/// Reload requests, and their names for the writer, that may wait at once: a
/// burst of SIGHUPs is one reload.
pub(super) const RELOADS_QUEUED: usize = 4;

/// What a live reload needs on the coordinator.
pub(super) struct Reloader {
    /// The config file, read again at each request.
    pub(super) path: PathBuf,
    /// The config as the shards run it.
    pub(super) live: Live,
    /// The run's identity, for the writer's new names.
    pub(super) run: sink::run::RunIdentity,
    /// New names to the sink writer, sent before the shards hear of a reload.
    pub(super) names: flume::Sender<Arc<RowNames>>,
}

impl Reloader {
    /// Reads the config file again and applies its device list and classes:
    /// the writer gets the new names first, then every shard the reload. A file
    /// that does not load changes nothing; its error is logged. Returns the
    /// class names after it, for the metrics.
    pub(super) fn reload(&mut self, controls: &[flume::Sender<Control>]) -> Option<Arc<[String]>> {
        let next = match Config::reload(&self.path, self.live.tuning()) {
            Ok(next) => next,
            Err(error) => {
                console::err(format_args!(
                    "reload: {error}; the run goes on with the config it has"
                ));
                return None;
            }
        };
        // Kept to undo the merge if the writer cannot take the names: the
        // shards must never run ahead of what the writer can resolve.
        let before = self.live.clone();
        let (reload, changes) = match self.live.merge(&next) {
            Ok(merged) => merged,
            Err(error) => {
                console::err(format_args!(
                    "reload: {}: {error}; the run goes on with the config it has",
                    self.path.display()
                ));
                return None;
            }
        };
        let names = Arc::new(RowNames {
            run: self.run.clone(),
            fleet: reload.fleet.clone(),
            classes: reload.classes.iter().map(class_names).collect(),
        });
        // Never blocks the coordinator: a writer that has not yet taken the
        // names of the last reloads (it takes them with its next batch) has
        // this one refused, to be asked again.
        if let Err(error) = self.names.try_send(names) {
            self.live = before;
            let why = match error {
                flume::TrySendError::Full(_) => {
                    "the sink writer has not taken the last reloads' names yet; send SIGHUP again"
                }
                flume::TrySendError::Disconnected(_) => "the sink writer has stopped",
            };
            console::err(format_args!("reload: {why}; nothing reloaded"));
            return None;
        }
        let class_names: Arc<[String]> = reload.classes.iter().map(|c| c.name.clone()).collect();
        let reload = Arc::new(reload);
        for control in controls {
            let _ = control.send(Control::Reload(reload.clone()));
        }
        console::err(format_args!("reload: {}: {changes}", self.path.display()));
        Some(class_names)
    }
}

impl Reloader {
    /// Gives a class that discovers its compute nodes the ones etcd has now:
    /// the writer gets the new names first, then every shard the reload. A
    /// writer that cannot take the names yet leaves the nodes as they are
    /// (the cluster thread's next change, or this one asked again, applies).
    /// Returns whether it was applied.
    pub(super) fn apply_nodes(
        &mut self,
        class: &str,
        nodes: &[crate::cluster::NodeRecord],
        controls: &[flume::Sender<Control>],
    ) -> bool {
        let before = self.live.clone();
        let Some(reload) = self.live.set_compute_nodes(class, nodes) else {
            return true;
        };
        let names = Arc::new(RowNames {
            run: self.run.clone(),
            fleet: reload.fleet.clone(),
            classes: reload.classes.iter().map(class_names).collect(),
        });
        if self.names.try_send(names).is_err() {
            self.live = before;
            return false;
        }
        let reload = Arc::new(reload);
        for control in controls {
            let _ = control.send(Control::Reload(reload.clone()));
        }
        console::err(format_args!(
            "cluster: class {class:?}: {}",
            crate::cluster::join::describe(nodes)
        ));
        true
    }
}

/// A class's names as rows carry them.
pub(super) fn class_names(class: &crate::config::Class) -> ClassNames {
    ClassNames {
        all_outputs: class.store_all_outputs,
        class: class.name.clone(),
        model: class.model.clone(),
        compute_nodes: class.compute_nodes.iter().map(|n| n.to_string()).collect(),
    }
}
