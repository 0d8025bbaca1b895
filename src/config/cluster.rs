//! `[cluster]`: how this instance shares the fleet with others.
//!
//! Two forms, never both:
//! - **etcd** (`etcd = ["http://host:2379", …]`): the instances register in
//!   etcd under `/percore/<name>/dispatchers/<instance>` with a lease of
//!   `lease_ttl_s` and each owns the devices rendezvous hashing gives it over
//!   the live instances ([`crate::placement`]); a device that changes owner
//!   starts on its gainer `safety_delay_ms` after the change is seen. The etcd
//!   side ([`crate::cluster`]) reads `name`, `etcd`, `instance` and
//!   `lease_ttl_s`; the coordinator the rest.
//! - **static split** (no etcd): `classes = ["camera", …]` keeps only devices
//!   of those classes, `slice = "K/N"` only the K-th of N equal slices of the
//!   devices' 64-bit [`stable_hash`](crate::devices::stable_hash) space (device
//!   `d` is in slice `K` when `floor(stable_hash(d) · N / 2^64) = K - 1`);
//!   both together keep what both keep. Devices outside are neither scheduled
//!   nor written. N instances with slices `1/N` … `N/N` cover every device once.
//!
//! Without `[cluster]` the instance runs the whole fleet.

use serde::Deserialize;
use toml::Spanned;

use super::Class;
use crate::diagnostic::{ConfigError, Source};
use crate::record::ClassIndex;

/// The cluster's name when the file gives none: the etcd prefix `/percore/percore/`.
pub const DEFAULT_CLUSTER_NAME: &str = "percore";

/// An instance's registration lives this long without a keep-alive: a dead
/// instance's devices move after at most this (plus the safety delay).
pub const DEFAULT_LEASE_TTL_S: u64 = 10;

/// Shortest lease accepted: etcd's shortest.
const MIN_LEASE_TTL_S: u64 = 2;

/// Longest lease accepted: an hour. Longer would leave a dead instance's
/// devices unserved for longer than anyone would want.
const MAX_LEASE_TTL_S: u64 = 3_600;

/// `[cluster]`, validated. [`Default`] is a lone instance running every device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster's name: the etcd key prefix `/percore/<name>/`, so several
    /// clusters can share one etcd.
    pub name: String,
    /// etcd endpoints (`http://host:port`); empty means
    /// no etcd: this instance owns what its static split keeps.
    pub etcd: Vec<String>,
    /// This instance's id among the live ones (the host name unless set): its
    /// registration key, and the owner name rendezvous hashing weighs.
    pub instance: String,
    /// The registration's lease, in seconds: how long a dead instance keeps
    /// its devices before the others take them.
    pub lease_ttl_s: u64,
    /// How long after it sees a membership change an instance waits before it
    /// starts the devices it gained; `None` waits the largest `deadline_ms` of
    /// the gained devices' classes, so the loser's last jobs have ended. Never
    /// less than that largest deadline either way.
    pub safety_delay_ms: Option<u64>,
    /// The static split (no etcd): which devices this instance keeps.
    pub split: StaticSplit,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            name: DEFAULT_CLUSTER_NAME.to_string(),
            etcd: Vec::new(),
            instance: host_name(),
            lease_ttl_s: DEFAULT_LEASE_TTL_S,
            safety_delay_ms: None,
            split: StaticSplit::default(),
        }
    }
}

impl ClusterConfig {
    /// Whether ownership comes from etcd membership (else: the static split).
    pub fn uses_etcd(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// The delay before gained devices start, for gained devices of classes
    /// whose largest `deadline_ms` is `largest_deadline_ms`.
    pub fn safety_delay_ms(&self, largest_deadline_ms: u64) -> u64 {
        self.safety_delay_ms
            .map_or(largest_deadline_ms, |delay| delay.max(largest_deadline_ms))
    }
}

/// The static split: what part of the fleet this instance keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticSplit {
    /// Only devices of these classes (by [`ClassIndex`], sorted); `None`: all.
    pub classes: Option<Vec<ClassIndex>>,
    /// Only devices in this slice of the hash space; `None`: all.
    pub slice: Option<Slice>,
}

impl StaticSplit {
    /// Whether this instance keeps a device of `class` whose stable hash is `hash`.
    pub fn keeps(&self, class: ClassIndex, hash: u64) -> bool {
        self.classes
            .as_ref()
            .is_none_or(|classes| classes.binary_search(&class).is_ok())
            && self.slice.is_none_or(|slice| slice.contains(hash))
    }

    /// Whether it keeps every device.
    pub fn keeps_all(&self) -> bool {
        self.classes.is_none() && self.slice.is_none()
    }
}

/// `slice = "K/N"`: the K-th (from 1) of N equal ranges of the 64-bit hash space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// K - 1: which range, from 0.
    pub index: u32,
    /// N: how many ranges.
    pub count: u32,
}

impl Slice {
    /// Whether a device with this stable hash is in the slice:
    /// `floor(hash · N / 2^64) == K - 1`.
    pub fn contains(&self, hash: u64) -> bool {
        ((u128::from(hash) * u128::from(self.count)) >> 64) as u32 == self.index
    }
}

impl std::fmt::Display for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// This machine's host name (`gethostname`), or `"localhost"` if it has none.
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the pointer and length describe `buffer`, which outlives the call;
    // gethostname writes at most that many bytes.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if status == 0 && valid_name(name) => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// Names that go into etcd keys: non-empty, at most 128 bytes of `A-Z a-z 0-9 . _ -`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

// ---------------------------------------------------------------------------------
// As written.
// ---------------------------------------------------------------------------------

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFile {
    /// See [`ClusterConfig::name`].
    name: Option<Spanned<String>>,
    /// See [`ClusterConfig::etcd`].
    etcd: Option<Spanned<Vec<Spanned<String>>>>,
    /// See [`ClusterConfig::instance`].
    instance: Option<Spanned<String>>,
    /// See [`ClusterConfig::lease_ttl_s`].
    lease_ttl_s: Option<Spanned<u64>>,
    /// See [`ClusterConfig::safety_delay_ms`].
    safety_delay_ms: Option<Spanned<u64>>,
    /// Class names, see [`StaticSplit::classes`].
    classes: Option<Spanned<Vec<Spanned<String>>>>,
    /// `"K/N"`, see [`Slice`].
    slice: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------

impl ClusterFile {
    /// Whether `etcd` lists any endpoint (its entries are checked by [`Self::validate`]).
    pub(super) fn names_etcd(&self) -> bool {
        self.etcd
            .as_ref()
            .is_some_and(|endpoints| !endpoints.get_ref().is_empty())
    }

    pub(super) fn validate(
        &self,
        classes: &[Class],
        source: &Source,
    ) -> Result<ClusterConfig, ConfigError> {
        let mut cluster = ClusterConfig::default();
        if let Some(name) = &self.name {
            if !valid_name(name.get_ref()) {
                return Err(source.error(
                    name.span(),
                    "cluster.name",
                    format!(
                        "{:?}: must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-' \
                         (it is part of etcd keys)",
                        name.get_ref()
                    ),
                ));
            }
            cluster.name = name.get_ref().clone();
        }
        if let Some(instance) = &self.instance {
            if !valid_name(instance.get_ref()) {
                return Err(source.error(
                    instance.span(),
                    "cluster.instance",
                    format!(
                        "{:?}: must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-' \
                         (it is part of etcd keys)",
                        instance.get_ref()
                    ),
                ));
            }
            cluster.instance = instance.get_ref().clone();
        }
        if let Some(endpoints) = &self.etcd {
            if endpoints.get_ref().is_empty() {
                return Err(source.error(
                    endpoints.span(),
                    "cluster.etcd",
                    "must list at least one endpoint (or leave the key out: no etcd)",
                ));
            }
            for (index, endpoint) in endpoints.get_ref().iter().enumerate() {
                check_endpoint(endpoint.get_ref()).map_err(|why| {
                    source.error(endpoint.span(), format!("cluster.etcd[{index}]"), why)
                })?;
                if cluster.etcd.contains(endpoint.get_ref()) {
                    return Err(source.error(
                        endpoint.span(),
                        format!("cluster.etcd[{index}]"),
                        format!("{:?} is listed twice", endpoint.get_ref()),
                    ));
                }
                cluster.etcd.push(endpoint.get_ref().clone());
            }
        }
        let without_etcd = |span: std::ops::Range<usize>, key: &str| {
            source.error(
                span,
                format!("cluster.{key}"),
                "has no effect without cluster.etcd (only etcd membership moves devices)",
            )
        };
        if let Some(ttl) = &self.lease_ttl_s {
            if !cluster.uses_etcd() {
                return Err(without_etcd(ttl.span(), "lease_ttl_s"));
            }
            if !(MIN_LEASE_TTL_S..=MAX_LEASE_TTL_S).contains(ttl.get_ref()) {
                return Err(source.error(
                    ttl.span(),
                    "cluster.lease_ttl_s",
                    format!(
                        "must be from {MIN_LEASE_TTL_S} (etcd's shortest lease) to {MAX_LEASE_TTL_S} seconds"
                    ),
                ));
            }
            cluster.lease_ttl_s = *ttl.get_ref();
        }
        if let Some(delay) = &self.safety_delay_ms {
            if !cluster.uses_etcd() {
                return Err(without_etcd(delay.span(), "safety_delay_ms"));
            }
            // Shorter than a deadline, a gainer could start a device whose
            // loser still runs its last job.
            if let Some(longest) = classes.iter().max_by_key(|class| class.deadline_ms) {
                if *delay.get_ref() < longest.deadline_ms {
                    return Err(source.error(
                        delay.span(),
                        "cluster.safety_delay_ms",
                        format!(
                            "must be at least the largest deadline_ms ({} ms, class {:?}), \
                             so a device's last job on the instance that lost it has ended \
                             before the instance that gained it starts it",
                            longest.deadline_ms, longest.name
                        ),
                    ));
                }
            }
            cluster.safety_delay_ms = Some(*delay.get_ref());
        }
        let split_with_etcd = |span: std::ops::Range<usize>, key: &str| {
            source.error(
                span,
                format!("cluster.{key}"),
                "a static split cannot be combined with cluster.etcd: etcd membership \
                 places every device on a live instance",
            )
        };
        if let Some(names) = &self.classes {
            if cluster.uses_etcd() {
                return Err(split_with_etcd(names.span(), "classes"));
            }
            if names.get_ref().is_empty() {
                return Err(source.error(
                    names.span(),
                    "cluster.classes",
                    "must name at least one class (or leave the key out: every class)",
                ));
            }
            let mut kept: Vec<ClassIndex> = Vec::with_capacity(names.get_ref().len());
            for (index, name) in names.get_ref().iter().enumerate() {
                let field = format!("cluster.classes[{index}]");
                let Some(class) = classes.iter().position(|c| c.name == *name.get_ref()) else {
                    let known: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
                    return Err(source.error(
                        name.span(),
                        field,
                        format!(
                            "unknown class {:?} (known classes: {})",
                            name.get_ref(),
                            known.join(", ")
                        ),
                    ));
                };
                // validate_classes capped the class count to what a ClassIndex holds.
                let class = ClassIndex::try_from(class)
                    .map_err(|_| source.error(name.span(), field.clone(), "too many classes"))?;
                if kept.contains(&class) {
                    return Err(source.error(
                        name.span(),
                        field,
                        format!("{:?} is listed twice", name.get_ref()),
                    ));
                }
                kept.push(class);
            }
            kept.sort_unstable();
            cluster.split.classes = Some(kept);
        }
        if let Some(slice) = &self.slice {
            if cluster.uses_etcd() {
                return Err(split_with_etcd(slice.span(), "slice"));
            }
            cluster.split.slice = Some(
                parse_slice(slice.get_ref())
                    .map_err(|why| source.error(slice.span(), "cluster.slice", why))?,
            );
        }
        Ok(cluster)
    }
}

/// `"K/N"` with 1 ≤ K ≤ N.
fn parse_slice(text: &str) -> Result<Slice, String> {
    let expected = || format!("expected \"K/N\" (the K-th of N slices, 1 ≤ K ≤ N), found {text:?}");
    let (k, n) = text.split_once('/').ok_or_else(expected)?;
    let (Ok(k), Ok(n)) = (k.trim().parse::<u32>(), n.trim().parse::<u32>()) else {
        return Err(expected());
    };
    if n == 0 || k == 0 || k > n {
        return Err(expected());
    }
    Ok(Slice {
        index: k - 1,
        count: n,
    })
}

/// `http://host:port`, optionally with a trailing `/` (the etcd client speaks
/// plaintext only: `https://` is refused, saying so).
fn check_endpoint(text: &str) -> Result<(), String> {
    let expected = || format!("expected \"http://host:port\", found {text:?}");
    if text.starts_with("https://") {
        return Err(format!(
            "{text:?}: TLS to etcd is not supported yet; use an http:// URL (a local proxy can add TLS)"
        ));
    }
    let rest = text.strip_prefix("http://").ok_or_else(expected)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = authority.rsplit_once(':').ok_or_else(expected)?;
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err(expected());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(expected()),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_hash_space_once() {
        for count in [1u32, 2, 3, 7] {
            for hash in [0u64, 1, u64::MAX / 3, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                let owners = (0..count)
                    .filter(|&index| Slice { index, count }.contains(hash))
                    .count();
                assert_eq!(owners, 1, "hash {hash:#x} in {count} slices");
            }
        }
        assert!(Slice { index: 0, count: 3 }.contains(0));
        assert!(Slice { index: 2, count: 3 }.contains(u64::MAX));
        assert_eq!(Slice { index: 1, count: 3 }.to_string(), "2/3");
    }

    #[test]
    fn slice_text_is_checked() {
        assert_eq!(parse_slice("2/3"), Ok(Slice { index: 1, count: 3 }));
        assert_eq!(parse_slice("1/1"), Ok(Slice { index: 0, count: 1 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "-1/3", ""] {
            assert!(parse_slice(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(check_endpoint("http://127.0.0.1:2379").is_ok());
        assert!(check_endpoint("http://etcd-1.example:2379/").is_ok());
        assert!(check_endpoint("https://etcd-1.example:2379")
            .unwrap_err()
            .contains("TLS to etcd is not supported"));
        assert!(check_endpoint("http://[::1]:2379").is_ok());
        for bad in [
            "127.0.0.1:2379",
            "http://host",
            "http://:2379",
            "tcp://h:1",
            "http://h:0",
            "http://h:1/x",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_host_name_is_a_valid_instance_name() {
        assert!(valid_name(&host_name()));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }
}
