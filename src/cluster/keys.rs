//! Where percore keeps things in etcd: one prefix per cluster,
//! `/percore/<cluster>/`, with
//! - `dispatchers/<instance>`: one per running `percore run` (JSON: host, pid,
//!   shards, devices, started_at…), under the instance's lease;
//! - `nodes/<class>/<node-id>`: one per compute node of a class that discovers
//!   its nodes (JSON `{"addr": "host:port", "weight": 1, "model": "…"}`), under
//!   the registering process's lease.
//!
//! Names are single key segments: not empty, no `/`, no control characters.

/// The root of every cluster's keys.
pub const ROOT: &str = "/percore/";

/// Checks that `name` (a cluster, class, instance or node id) can be one key
/// segment; the error says why not.
pub fn check_segment(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if name.contains('/') {
        return Err(format!("{what} {name:?} must not contain '/'"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "{what} {name:?} must not contain control characters"
        ));
    }
    Ok(())
}

/// `/percore/<cluster>/`.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{ROOT}{cluster}/")
}

/// `/percore/<cluster>/dispatchers/`.
pub fn dispatchers_prefix(cluster: &str) -> String {
    format!("{ROOT}{cluster}/dispatchers/")
}

/// `/percore/<cluster>/dispatchers/<instance>`.
pub fn dispatcher_key(cluster: &str, instance: &str) -> String {
    format!("{}{instance}", dispatchers_prefix(cluster))
}

/// `/percore/<cluster>/nodes/`: every class's nodes.
pub fn nodes_prefix(cluster: &str) -> String {
    format!("{ROOT}{cluster}/nodes/")
}

/// `/percore/<cluster>/nodes/<class>/`.
pub fn class_nodes_prefix(cluster: &str, class: &str) -> String {
    format!("{}{class}/", nodes_prefix(cluster))
}

/// `/percore/<cluster>/nodes/<class>/<id>`.
pub fn node_key(cluster: &str, class: &str, id: &str) -> String {
    format!("{}{id}", class_nodes_prefix(cluster, class))
}

/// The end of the range of every key that starts with `prefix` (etcd's
/// `range_end`): the prefix with its last byte below 0xff incremented and what
/// follows it dropped; `\0` (every key) if all its bytes are 0xff.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The `(class, id)` of a key under [`nodes_prefix`], or `None` for a key that
/// is not `<class>/<id>` there (a stray key someone wrote).
pub fn parse_node_key<'a>(cluster: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(&nodes_prefix(cluster))?;
    let (class, id) = rest.split_once('/')?;
    (!class.is_empty() && !id.is_empty() && !id.contains('/')).then_some((class, id))
}

/// The instance id of a key under [`dispatchers_prefix`], or `None` for a key
/// that is not one segment there.
pub fn parse_dispatcher_key<'a>(cluster: &str, key: &'a str) -> Option<&'a str> {
    let id = key.strip_prefix(&dispatchers_prefix(cluster))?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The cluster name of any key under [`ROOT`].
pub fn parse_cluster(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(ROOT)?;
    let (cluster, _) = rest.split_once('/')?;
    (!cluster.is_empty()).then_some(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end(b"/percore/a/"), b"/percore/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn keys_parse_back_into_their_names() {
        let key = node_key("prod", "camera", "n-1");
        assert_eq!(key, "/percore/prod/nodes/camera/n-1");
        assert_eq!(parse_node_key("prod", &key), Some(("camera", "n-1")));
        assert_eq!(parse_node_key("prod", "/percore/prod/nodes/camera"), None);
        assert_eq!(
            parse_node_key("prod", "/percore/prod/nodes/camera/a/b"),
            None
        );
        assert_eq!(parse_node_key("other", &key), None);
        let key = dispatcher_key("prod", "host-1");
        assert_eq!(parse_dispatcher_key("prod", &key), Some("host-1"));
        assert_eq!(parse_cluster(&key), Some("prod"));
    }

    #[test]
    fn segments_refuse_slashes_and_emptiness() {
        assert!(check_segment("instance", "a-1").is_ok());
        assert!(check_segment("instance", "").unwrap_err().contains("empty"));
        assert!(check_segment("class", "a/b").unwrap_err().contains("'/'"));
        assert!(check_segment("class", "a\nb").is_err());
    }
}
