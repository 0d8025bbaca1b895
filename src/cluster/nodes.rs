//! Compute nodes registered in etcd: a registration's value, checked, and the
//! table of every discovered class's nodes the cluster thread keeps current.
//!
//! A value is JSON: `{"addr": "host:port", "weight": 1, "model": "…"}`; only
//! `addr` is required, other fields are ignored (a registering tool may add its
//! own). A value that is not that, an address that does not resolve, or a model
//! other than the class's is ignored with a warning naming the key: one bad
//! registration never takes the class's other nodes with it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::event::NodeRecord;
use super::keys;

/// A registration's value as written.
#[derive(Debug, Deserialize)]
struct NodeValue {
    /// `host:port` of the node's KServe v2 gRPC endpoint.
    addr: String,
    /// Relative weight; 1 when left out.
    weight: Option<serde_json::Value>,
    /// The model it serves, if it says.
    model: Option<String>,
}

/// A registration, checked but not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The node's id (its key's last segment).
    pub id: String,
    /// `host:port` as written.
    pub addr: String,
    /// At least 1.
    pub weight: u32,
    /// As written.
    pub model: Option<String>,
}

/// Checks one registration's value; `class_model` is the model the class
/// runs. The error says what is wrong, for a warning that names the key.
pub fn parse(id: &str, value: &[u8], class_model: &str) -> Result<Registration, String> {
    let text = std::str::from_utf8(value).map_err(|_| "the value is not UTF-8".to_string())?;
    let value: NodeValue = serde_json::from_str(text).map_err(|error| {
        format!("the value is not JSON like {{\"addr\": \"host:port\", \"weight\": 1}} ({error}): {text:?}")
    })?;
    let endpoint = crate::endpoint::Endpoint::parse(value.addr.trim())
        .map_err(|why| format!("addr: {why}"))?;
    if endpoint.scheme() != crate::endpoint::Scheme::Http {
        return Err(format!(
            "addr {:?}: TLS to a node registered in etcd is not supported yet; register host:port",
            value.addr
        ));
    }
    let addr = endpoint.name().to_string();
    let weight = match &value.weight {
        None => 1,
        Some(weight) => match weight.as_u64() {
            Some(weight @ 1..=1_000_000) => weight as u32,
            _ => {
                return Err(format!(
                    "weight {weight} must be a whole number from 1 to 1000000"
                ))
            }
        },
    };
    if let Some(model) = &value.model {
        if model != class_model {
            return Err(format!(
                "it serves model {model:?}, and the class runs {class_model:?}"
            ));
        }
    }
    Ok(Registration {
        id: id.to_string(),
        addr,
        weight,
        model: value.model,
    })
}

/// Checks that a registration's host resolves (an IP is taken as it is), so
/// a typo is a warning naming the key rather than every call failing; the
/// address stays as written, looked up again at every connect as the
/// config's are.
pub async fn resolve(registration: Registration) -> Result<NodeRecord, String> {
    if registration.addr.parse::<std::net::SocketAddr>().is_err() {
        let lookup = tokio::net::lookup_host(registration.addr.clone());
        match tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await {
            Ok(Ok(mut addrs)) => {
                if addrs.next().is_none() {
                    return Err(format!(
                        "addr {:?} resolves to no address",
                        registration.addr
                    ));
                }
            }
            Ok(Err(error)) => {
                return Err(format!(
                    "cannot resolve addr {:?}: {error}",
                    registration.addr
                ))
            }
            Err(_) => {
                return Err(format!(
                    "resolving addr {:?} took more than 2 s",
                    registration.addr
                ))
            }
        }
    }
    Ok(NodeRecord {
        id: registration.id,
        addr: registration.addr,
        weight: registration.weight,
        model: registration.model,
    })
}

/// Every discovered class's nodes, as the cluster thread knows them.
#[derive(Debug, Default)]
pub struct NodeTable {
    /// The classes whose nodes come from etcd, with the model each runs.
    classes: BTreeMap<String, String>,
    /// Per class: its nodes by id.
    nodes: BTreeMap<String, BTreeMap<String, NodeRecord>>,
    /// Keys already warned about, at the revision of their bad value, so a
    /// resync does not repeat the warning.
    warned: BTreeSet<(String, i64)>,
}

/// What one key under the nodes prefix meant.
pub enum KeyChange {
    /// Not a discovered class's node (or not a node key at all).
    Ignored,
    /// The node registered or changed (`None`: its value was bad and warned
    /// about, so it is out of the class).
    Put {
        /// The node's class.
        class: String,
        /// The node's id.
        id: String,
        /// The node, resolved, or `None` when it is unusable.
        node: Option<NodeRecord>,
    },
    /// The node's key went (deleted, or its lease expired).
    Deleted {
        /// The node's class.
        class: String,
        /// The node's id.
        id: String,
    },
}

impl NodeTable {
    /// A table for `classes` (name, model), each starting with no node.
    pub fn new(classes: &[(String, String)]) -> NodeTable {
        NodeTable {
            nodes: classes
                .iter()
                .map(|(name, _)| (name.clone(), BTreeMap::new()))
                .collect(),
            classes: classes.iter().cloned().collect(),
            warned: BTreeSet::new(),
        }
    }

    /// Whether any class discovers its nodes.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// A class's nodes, sorted by id.
    pub fn class_nodes(&self, class: &str) -> Vec<NodeRecord> {
        self.nodes
            .get(class)
            .map(|nodes| nodes.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every discovered class, by name.
    pub fn classes(&self) -> impl Iterator<Item = &String> {
        self.classes.keys()
    }

    /// Reads one put key: checked, resolved, warned about when bad (once per
    /// key and revision).
    pub async fn read_put(&mut self, cluster: &str, kv: &super::etcd::KeyValue) -> KeyChange {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let Some((class, id)) = keys::parse_node_key(cluster, &key) else {
            return KeyChange::Ignored;
        };
        let Some(model) = self.classes.get(class) else {
            return KeyChange::Ignored;
        };
        let checked = match parse(id, &kv.value, model) {
            Ok(registration) => resolve(registration).await,
            Err(why) => Err(why),
        };
        let (class, id) = (class.to_string(), id.to_string());
        match checked {
            Ok(node) => KeyChange::Put {
                class,
                id,
                node: Some(node),
            },
            Err(why) => {
                if self.warned.insert((key.clone(), kv.mod_revision)) {
                    crate::console::err(format_args!(
                        "warning: etcd: ignoring compute node registration {key}: {why}"
                    ));
                }
                KeyChange::Put {
                    class,
                    id,
                    node: None,
                }
            }
        }
    }

    /// Reads one deleted key.
    pub fn read_delete(&self, cluster: &str, key: &[u8]) -> KeyChange {
        let key = String::from_utf8_lossy(key);
        match keys::parse_node_key(cluster, &key) {
            Some((class, id)) if self.classes.contains_key(class) => KeyChange::Deleted {
                class: class.to_string(),
                id: id.to_string(),
            },
            _ => KeyChange::Ignored,
        }
    }

    /// Applies a change; the class it touched, if any.
    pub fn apply(&mut self, change: KeyChange) -> Option<String> {
        match change {
            KeyChange::Ignored => None,
            KeyChange::Put { class, id, node } => {
                let nodes = self.nodes.entry(class.clone()).or_default();
                // A bad value that replaced a good one takes the node out.
                match node {
                    Some(node) => nodes.insert(id, node),
                    None => nodes.remove(&id),
                };
                Some(class)
            }
            KeyChange::Deleted { class, id } => {
                self.nodes.entry(class.clone()).or_default().remove(&id);
                Some(class)
            }
        }
    }

    /// Forgets every node (before a full read of the prefix).
    pub fn clear(&mut self) {
        for nodes in self.nodes.values_mut() {
            nodes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_needs_an_address_and_takes_a_weight_and_model() {
        let node = parse(
            "n1",
            br#"{"addr": "10.0.0.1:8001", "weight": 3, "model": "m", "x": 1}"#,
            "m",
        )
        .unwrap();
        assert_eq!(node.addr, "10.0.0.1:8001");
        assert_eq!(node.weight, 3);
        assert_eq!(node.model.as_deref(), Some("m"));
        let node = parse("n1", br#"{"addr": "host:1"}"#, "m").unwrap();
        assert_eq!((node.weight, node.model), (1, None));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "not JSON"),
            (br#"{"weight": 1}"#, "not JSON"),
            (br#"{"addr": "nohost"}"#, "expected \"host:port\""),
            (br#"{"addr": "h:0"}"#, "port 0"),
            (
                br#"{"addr": "https://h:1"}"#,
                "TLS to a node registered in etcd",
            ),
            (br#"{"addr": "h:1", "weight": 0}"#, "weight 0"),
            (br#"{"addr": "h:1", "weight": "x"}"#, "weight \"x\""),
            (br#"{"addr": "h:1", "model": "other"}"#, "model \"other\""),
        ];
        for (value, expected) in cases {
            let error = parse("n", value, "m").unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        assert!(parse("n", b"\xff", "m").unwrap_err().contains("UTF-8"));
    }
}
