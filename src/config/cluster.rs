//! `[cluster]`: this dispatcher as one instance of several, coordinated through
//! etcd (see [`crate::cluster`]).
//!
//! ```toml
//! [cluster]
//! name = "prod"                                  # the key prefix /percore/prod/
//! etcd = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
//! instance = "host-7"                            # default: the host name
//! lease_ttl_s = 10                               # a dead instance's key goes after this
//! safety_delay_ms = 2000                         # before a gaining instance ticks a device
//! ```

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::cluster::etcd::parse_url;
use crate::cluster::keys::check_segment;
use crate::cluster::membership::host_name;
use crate::diagnostic::{ConfigError, Source};

/// The lease TTL when `lease_ttl_s` is left out.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster's name: every key is under `/percore/<name>/`.
    pub name: String,
    /// etcd's client URLs, normalised to `http://host:port`; empty: no etcd.
    pub etcd: Vec<String>,
    /// This instance's id among the cluster's (unique; default the host name).
    pub instance: String,
    /// The TTL of the instance's lease: how long after it dies (or loses etcd
    /// for good) its registration goes and the others take its devices.
    pub lease_ttl: Duration,
    /// How long a gaining instance waits before ticking a device it took over;
    /// `None`: the largest deadline of the classes.
    pub safety_delay: Option<Duration>,
}

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFile {
    name: Spanned<String>,
    #[serde(default)]
    etcd: Vec<Spanned<String>>,
    instance: Option<Spanned<String>>,
    lease_ttl_s: Option<Spanned<u64>>,
    safety_delay_ms: Option<Spanned<u64>>,
}

impl ClusterFile {
    pub(super) fn validate(&self, source: &Source) -> Result<ClusterConfig, ConfigError> {
        let name = self.name.get_ref().trim().to_string();
        check_segment("the cluster's name", &name)
            .map_err(|why| source.error(self.name.span(), "cluster.name", why))?;
        let mut etcd = Vec::with_capacity(self.etcd.len());
        for (index, url) in self.etcd.iter().enumerate() {
            let parsed = parse_url(url.get_ref())
                .map_err(|why| source.error(url.span(), format!("cluster.etcd[{index}]"), why))?;
            if etcd.contains(&parsed) {
                let why = format!("{parsed:?} is listed twice");
                return Err(source.error(url.span(), format!("cluster.etcd[{index}]"), why));
            }
            etcd.push(parsed);
        }
        let instance = match &self.instance {
            Some(instance) => {
                let text = instance.get_ref().trim().to_string();
                check_segment("the instance id", &text)
                    .map_err(|why| source.error(instance.span(), "cluster.instance", why))?;
                text
            }
            None => host_name(),
        };
        let lease_ttl = match &self.lease_ttl_s {
            None => DEFAULT_LEASE_TTL,
            Some(ttl) => match *ttl.get_ref() {
                2..=3600 => Duration::from_secs(*ttl.get_ref()),
                _ => {
                    return Err(source.error(
                        ttl.span(),
                        "cluster.lease_ttl_s",
                        "must be from 2 (etcd's shortest lease) to 3600 seconds",
                    ))
                }
            },
        };
        let safety_delay = self
            .safety_delay_ms
            .as_ref()
            .map(|delay| Duration::from_millis(*delay.get_ref()));
        Ok(ClusterConfig {
            name,
            etcd,
            instance,
            lease_ttl,
            safety_delay,
        })
    }
}
