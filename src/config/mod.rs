//! The run's configuration: classes of devices, the fleet, the sink, gRPC limits and
//! the host tuning, loaded once at start-up and never changed during the run.
//!
//! The binary calls [`Config::load`]; shards, the gRPC clients and the sink then read
//! the resulting [`Config`]. Loading goes in steps, like pingora's: read the file →
//! parse it into the serde "file" structs ([`Config::from_str`], unit-tested on inline
//! strings) → `validate()` them into the typed runtime structs, which are plain data so
//! code (the demo, tests) can also build a [`Config`] directly.
//!
//! Every start-up mistake, here or in the files this one points at (the device list,
//! the tuning file), is a [`ConfigError`] naming the file, line and field.
//!
//! One file per section of the config file, each with its runtime types, its tables as
//! written and the checks between them:
//!
//! - this file: [`Config`], its loading, and the top level of the file;
//! - `class`: `[[classes]]` with `[classes.output]`, `[classes.parameters]` and
//!   `[classes.contract]` ([`Class`], [`OutputSpec`], [`Parameter`],
//!   [`ContractConfig`]); `upstream`: `[classes.upstream]` ([`Upstream`]);
//!   `endpoint`: where a class's calls go — `data_sources`, `compute_nodes` or
//!   a `gateway` ([`Gateway`]), `authority`, `[classes.tls]` and
//!   `[classes.source_tls]` — as [`crate::endpoint::Endpoint`]s;
//!   `batching`: `[classes.batching]` ([`Batching`]);
//! - `devices`: `[devices]`, a device list or a generated fleet;
//! - `sink`: `[sink]` ([`SinkConfig`]), SQLite's keys and the spill journal's;
//!   `postgres`: PostgreSQL's keys;
//! - `grpc`: `[grpc]` ([`GrpcConfig`]);
//! - `cluster`: `[cluster]` ([`ClusterConfig`]): etcd membership (the cluster's
//!   name, etcd, the instance id, its lease, the handover's safety delay) or a
//!   static split.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod batching;
mod class;
mod cluster;
mod devices;
mod endpoint;
mod grpc;
mod metadata;
mod postgres;
mod sink;
#[cfg(test)]
mod tests;
mod upstream;

pub use batching::{Batching, DEFAULT_LINGER, MAX_BATCH_LIMIT};
pub use class::{Class, ContractConfig, OutputSpec, Parameter};
pub use cluster::{
    host_name, ClusterConfig, Slice, StaticSplit, DEFAULT_CLUSTER_NAME, DEFAULT_LEASE_TTL_S,
};
pub use endpoint::{Gateway, DEFAULT_CLASS_HEADER, DEFAULT_MODEL_HEADER};
pub use grpc::GrpcConfig;
pub use metadata::{Metadata, Secret};
pub use postgres::PG_URL_ENV;
pub use sink::{FsyncPolicy, JournalConfig, SinkConfig, DEFAULT_JOURNAL_DIR};
pub use upstream::{BalancerKind, Ejection, HealthCheck, Hedge, Upstream};

/// Where it always was, for callers; defined in [`crate::diagnostic`] so the device
/// list and the tuning file can raise it without importing this module.
pub use crate::diagnostic::ConfigError;

use class::{validate_classes, ClassFile};
use cluster::ClusterFile;
use devices::{DevicesFile, FleetSource};
use grpc::GrpcFile;
use sink::{validate_sink, SinkFile};

use crate::devices::Fleet;
use crate::diagnostic::Source;
use crate::tuning::Tuning;

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file it came from, for messages and reports.
    pub path: PathBuf,
    /// Device classes; a device's [`ClassIndex`](crate::record::ClassIndex) is its
    /// class's position here.
    pub classes: Vec<Class>,
    /// Every device, with its class.
    pub fleet: Fleet,
    /// Where job records are written.
    pub sink: SinkConfig,
    /// Limits for every gRPC call.
    pub grpc: GrpcConfig,
    /// Per-host settings (CPUs, connection and in-flight limits).
    pub tuning: Tuning,
    /// How this instance shares the fleet with others: etcd membership, a
    /// static split, or (the default) not at all.
    pub cluster: ClusterConfig,
}

impl Config {
    /// Read, parse and validate the config file at `path`, with the device list and
    /// tuning file it points at.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::new(path, format!("cannot read: {error}")))?;
        Config::from_str(&text, path)
    }

    /// Parse and validate config text. `path` names the file in errors and is the base
    /// for the relative paths inside it (device list, sink, tuning file), which are
    /// read from disk.
    #[allow(clippy::should_implement_trait)] // needs `path`, so it cannot be `FromStr`
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let source = Source::new(path, text);
        let file: ConfigFile = source.parse()?;
        file.validate(&source, None)
    }

    /// Read the config at `path` again for a live reload: as [`Config::load`],
    /// except that its tuning file is not read and `tuning` (the running one)
    /// is kept. Tuning is how the run is laid out on the host, which only a
    /// restart changes — and the coordinator, pinned by then, would check
    /// shard CPUs against its own narrower mask.
    pub fn reload(path: &Path, tuning: &Tuning) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::new(path, format!("cannot read: {error}")))?;
        let source = Source::new(path, &text);
        let file: ConfigFile = source.parse()?;
        file.validate(&source, Some(tuning))
    }
}

// ---------------------------------------------------------------------------------
// As written: the top level of the file; each section's tables are in its file.
// ---------------------------------------------------------------------------------

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Path of the tuning file, relative to this file; absent means `Tuning::default()`.
    tuning: Option<Spanned<String>>,
    /// Where the fleet comes from.
    devices: Spanned<DevicesFile>,
    /// Where records go.
    sink: Spanned<SinkFile>,
    /// gRPC limits; the whole table may be left out.
    #[serde(default = "GrpcFile::defaults")]
    grpc: GrpcFile,
    /// Left out means none, which validation rejects with a clear message.
    #[serde(default = "Vec::new")]
    classes: Vec<Spanned<ClassFile>>,
    /// Sharing the fleet with other instances; left out, this one runs it all.
    #[serde(default)]
    cluster: ClusterFile,
}

// ---------------------------------------------------------------------------------
// Validation: file structs → runtime structs.
// ---------------------------------------------------------------------------------

impl ConfigFile {
    /// Check every rule, resolve addresses and relative paths, then read the device
    /// list and tuning file. Cheap checks come first so a typo is reported before
    /// a million-line device list is read.
    fn validate(self, source: &Source, running: Option<&Tuning>) -> Result<Config, ConfigError> {
        let base = source.file.parent().unwrap_or_else(|| Path::new(""));
        // `compute_nodes = "etcd"` needs `[cluster] etcd`, which is checked after the classes.
        let classes = validate_classes(&self.classes, self.cluster.names_etcd(), source)?;
        let class_names: Vec<&str> = classes.iter().map(|class| class.name.as_str()).collect();
        let grpc = self.grpc.validate(source)?;
        let sink = validate_sink(&self.sink, base, source)?;
        let cluster = self.cluster.validate(&classes, source)?;
        let fleet_source =
            self.devices
                .get_ref()
                .validate(self.devices.span(), &class_names, base, source)?;
        let tuning = match (&self.tuning, running) {
            (_, Some(running)) => running.clone(),
            (None, None) => Tuning::default(),
            (Some(tuning_path), None) => {
                let path = base.join(tuning_path.get_ref());
                let text = source.read_referenced(&path, tuning_path, "tuning", |path| {
                    std::fs::read_to_string(path)
                })?;
                Tuning::from_str(&text, &path)?
            }
        };
        let fleet = match fleet_source {
            FleetSource::Csv { path, bytes } => Fleet::from_csv_bytes(&bytes, &path, &class_names)?,
            FleetSource::Generate { count, mix } => Fleet::generate(count, &mix),
        };
        Ok(Config {
            path: source.file.to_path_buf(),
            classes,
            fleet,
            sink,
            grpc,
            tuning,
            cluster,
        })
    }
}
