//! A dispatcher's registration under `/percore/<cluster>/dispatchers/<instance>`:
//! what its value says, and the set of live instances the watch keeps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys;

/// The value of a dispatcher's key: who it is, for `percore status` and for
/// people reading etcd. Only the key's presence counts for membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatcherInfo {
    /// The instance id (also the key's last segment).
    pub instance: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id, to find it on that host.
    pub pid: u32,
    /// How many shards it runs.
    pub shards: usize,
    /// Devices it owns now, as its coordinator last said (`None` until it says).
    #[serde(default)]
    pub devices: Option<usize>,
    /// Devices in its configured fleet (owned or not).
    pub fleet_devices: usize,
    /// The classes it runs, by name.
    pub classes: Vec<String>,
    /// When it started, Unix milliseconds.
    pub started_at_ms: i64,
    /// percore's version.
    pub version: String,
}

/// The live instances: every key under the dispatchers' prefix, with its value
/// read when it is a [`DispatcherInfo`].
#[derive(Debug, Default, Clone)]
pub struct Members {
    /// By instance id.
    by_id: BTreeMap<String, Option<DispatcherInfo>>,
}

impl Members {
    /// Replaces the set with the keys of a full read.
    pub fn reset(&mut self, cluster: &str, kvs: &[super::etcd::KeyValue]) {
        self.by_id.clear();
        for kv in kvs {
            self.put(cluster, kv);
        }
    }

    /// A key was put; the instance it names, if it is one.
    pub fn put(&mut self, cluster: &str, kv: &super::etcd::KeyValue) -> Option<String> {
        let key = String::from_utf8_lossy(&kv.key);
        let id = keys::parse_dispatcher_key(cluster, &key)?.to_string();
        let info = serde_json::from_slice(&kv.value).ok();
        self.by_id.insert(id.clone(), info);
        Some(id)
    }

    /// A key was deleted; the instance it named, if it was one.
    pub fn delete(&mut self, cluster: &str, key: &[u8]) -> Option<String> {
        let key = String::from_utf8_lossy(key);
        let id = keys::parse_dispatcher_key(cluster, &key)?.to_string();
        self.by_id.remove(&id);
        Some(id)
    }

    /// The instance ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.by_id.keys().cloned().collect()
    }

    /// Whether `instance` is registered.
    pub fn contains(&self, instance: &str) -> bool {
        self.by_id.contains_key(instance)
    }
}

/// This host's name, the default instance id.
pub use crate::config::host_name;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
