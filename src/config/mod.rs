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

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

mod upstream;

pub use upstream::{BalancerKind, Ejection, HealthCheck, Hedge, Upstream};

/// Where it always was, for callers; defined in [`crate::diagnostic`] so the device
/// list and the tuning file can raise it without importing this module.
pub use crate::diagnostic::ConfigError;
use crate::diagnostic::Source;

use crate::contract::{Contract, Origin, TensorContract};
use crate::devices::Fleet;
use crate::record::ClassIndex;
use crate::tuning::Tuning;


// ---------------------------------------------------------------------------------
// Runtime config: what the rest of the crate reads.
// ---------------------------------------------------------------------------------

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file it came from, for messages and reports.
    pub path: PathBuf,
    /// Device classes; a device's [`ClassIndex`] is its class's position here.
    pub classes: Vec<Class>,
    /// Every device, with its class.
    pub fleet: Fleet,
    /// Where job records are written.
    pub sink: SinkConfig,
    /// Limits for every gRPC call.
    pub grpc: GrpcConfig,
    /// Per-host settings (CPUs, connection and in-flight limits).
    pub tuning: Tuning,
}

/// A kind of device: which model it runs, how often, and which nodes serve it.
#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    /// Unique name, used in the device list and the sink's rows.
    pub name: String,
    /// Model the compute nodes run for this class.
    pub model: String,
    /// Model version to ask for; empty lets the server choose.
    pub model_version: String,
    /// Every device of the class ticks once per period.
    pub period_ms: u64,
    /// Time from a job's start until it counts as failed (`deadline exceeded`); at
    /// most the period, so a device rarely has a tick skipped behind its own job.
    pub deadline_ms: u64,
    /// Data sources to fetch inputs from; each shard balances over them.
    pub data_sources: Vec<SocketAddr>,
    /// Compute nodes (replicas) serving the model; each shard balances over them.
    pub compute_nodes: Vec<SocketAddr>,
    /// Name of the model's input tensor in the infer request.
    pub input_name: String,
    /// What every response's output must look like; `None` accepts any output.
    pub output: Option<OutputSpec>,
    /// The outputs every request asks for by name (`outputs = ["max", "l2"]`), in
    /// that order; empty asks for every output the model has. Each must be in
    /// the answer, or the job fails saying which is missing.
    pub requested_outputs: Vec<String>,
    /// Request parameters sent with every ModelInfer (`[classes.parameters]`),
    /// for servers that take options per request.
    pub parameters: BTreeMap<String, Parameter>,
    /// Whether every ModelInfer carries an `id` of `<device_id>@<tick_ms>`
    /// (`request_id = true`), for servers that log or trace by request id.
    pub request_id: bool,
    /// Whether every output goes into `job_outputs` with its name, datatype and
    /// shape (`store_outputs = "all"`, the default), or only the first one's
    /// bytes into `jobs.output` (`"first"`): a `job_outputs` row costs the
    /// writer about as much again as the `jobs` row, which a single-output
    /// class at a high rate may not want to pay.
    pub store_all_outputs: bool,
    /// The model's contract (`[classes.contract]`): the tensors it takes and
    /// gives as the config declares them, and whether the probes read the
    /// server's `ModelMetadata` to learn or check them.
    pub contract: ContractConfig,
    /// Balancing, admission, retries, hedging, health checks and ejection over
    /// the class's replicas (`[classes.upstream]`).
    pub upstream: Upstream,
}

/// `[classes.contract]`: what a class's model takes and gives, and where
/// percore learns it. See [`crate::contract`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractConfig {
    /// Whether the KServe probe reads `ModelMetadata` at start and on every
    /// reconnect (`metadata = true`, the default with `health_check =
    /// "kserve"`): a declared contract is then checked against it, and without
    /// one the server's answer becomes the class's contract.
    pub metadata: bool,
    /// The contract written in the config, if any (`inputs` / `outputs`).
    pub declared: Option<Contract>,
}

impl Default for ContractConfig {
    fn default() -> ContractConfig {
        ContractConfig {
            metadata: true,
            declared: None,
        }
    }
}

/// One request parameter's value: KServe v2 parameters are booleans, integers
/// or strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Parameter {
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// Text.
    Text(String),
}

/// The expected output tensor of a class's model, checked on every response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Tensor name; `None` accepts any name.
    pub name: Option<String>,
    /// KServe v2 datatype, e.g. `FP32`.
    pub datatype: String,
    /// Expected shape; `-1` accepts any size in that dimension.
    pub shape: Vec<i64>,
}

impl OutputSpec {
    /// Whether a response's output tensor matches; the error text goes into the
    /// job's `reason`. Allocates only when the output does not match.
    pub fn check(&self, name: &str, datatype: &str, shape: &[i64]) -> Result<(), String> {
        if let Some(expected) = &self.name {
            if name != expected {
                return Err(format!("output name is {name:?}, expected {expected:?}"));
            }
        }
        if datatype != self.datatype {
            return Err(format!(
                "output datatype is {datatype:?}, expected {:?}",
                self.datatype
            ));
        }
        let shape_matches = shape.len() == self.shape.len()
            && shape
                .iter()
                .zip(&self.shape)
                .all(|(&got, &expected)| expected == -1 || got == expected);
        if !shape_matches {
            return Err(format!(
                "output shape is {shape:?}, expected {:?}",
                self.shape
            ));
        }
        Ok(())
    }
}

/// Where job records go. An enum so other stores (e.g. Postgres) can be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// A SQLite database file, created if missing.
    Sqlite {
        /// The database file, already resolved against the config file's folder.
        path: PathBuf,
        /// How long one write waits for a lock held by another connection before
        /// the writer backs off and tries it again (`busy_timeout_ms`).
        busy_timeout: std::time::Duration,
        /// A testing aid that simulates a slow database: the writer sleeps this
        /// long after each commit (`commit_delay_ms`, default 0). It exists so a
        /// test or `percore bench --stages` can make the sink the bottleneck on
        /// purpose; never set it in production.
        commit_delay: std::time::Duration,
        /// The spill journal (`journal_dir` and the other `journal_*` keys):
        /// where batches go while the database cannot take them. Off (`None`)
        /// unless `journal_dir` is set.
        journal: Option<JournalConfig>,
    },
    /// A PostgreSQL database (`kind = "postgres"`). See [`crate::sink::postgres`].
    Postgres {
        /// Where, which table, how rows are batched, TLS and connect timeout.
        options: crate::sink::postgres::PostgresOptions,
        /// The spill journal: on by default (in [`DEFAULT_JOURNAL_DIR`] beside
        /// the config file), so an outage of the database costs no result;
        /// `journal = false` turns it off.
        journal: Option<JournalConfig>,
    },
}

impl SinkConfig {
    /// A SQLite file with the default busy timeout.
    pub fn sqlite(path: impl Into<PathBuf>) -> SinkConfig {
        SinkConfig::Sqlite {
            path: path.into(),
            busy_timeout: crate::sink::sqlite::DEFAULT_BUSY_TIMEOUT,
            commit_delay: std::time::Duration::ZERO,
            journal: None,
        }
    }

    /// The spill journal, if one is configured.
    pub fn journal(&self) -> Option<&JournalConfig> {
        match self {
            SinkConfig::Sqlite { journal, .. } | SinkConfig::Postgres { journal, .. } => {
                journal.as_ref()
            }
        }
    }

    /// The testing aid's sleep after each commit (zero unless asked for).
    pub fn commit_delay(&self) -> std::time::Duration {
        match self {
            SinkConfig::Sqlite { commit_delay, .. } => *commit_delay,
            SinkConfig::Postgres { .. } => std::time::Duration::ZERO,
        }
    }
}

/// Limits applied to every gRPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcConfig {
    /// Largest response message accepted; bounds the memory one job can take.
    pub max_message_bytes: usize,
    /// How long opening a connection to a node may take before trying the next.
    pub connect_timeout_ms: u64,
    /// Most extra attempts of one call that failed in a way another node might
    /// not (connect refused, connection lost, attempt timeout, a `retry_on`
    /// status), each on another replica, within the job's deadline and the retry
    /// budget. A call the node never took may go to the same node again.
    pub retries: u32,
    /// Retry budget: retries a shard may send per class, as a percentage of its
    /// calls over the last 10 s (as linkerd2 and Envoy bound them), so retries
    /// cannot multiply the load on a fleet that is already failing.
    pub retry_budget_percent: u32,
    /// Retries a shard may send per class per second whatever the budget says, so
    /// a quiet class still rides over a single failure.
    pub retry_budget_min_per_s: u32,
    /// An HTTP/2 PING is sent on a connection this often; 0 turns keepalive off.
    pub keepalive_interval_ms: u64,
    /// A connection whose PING is not answered within this is closed and its
    /// calls fail (a dead peer, a silent network partition).
    pub keepalive_timeout_ms: u64,
}

/// gRPC's own default maximum message size.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Long enough for a LAN or a loaded host, short enough to fail over within a tick.
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;
/// One more node before giving up: enough to ride over one dead replica.
const DEFAULT_RETRIES: u32 = 1;
/// Retries may add a fifth to a class's calls, as linkerd2's default budget does.
const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
/// Enough to ride over one failed replica at low rates.
const DEFAULT_RETRY_BUDGET_MIN_PER_S: u32 = 10;
/// Finds a dead peer within 15 s even on an idle connection.
const DEFAULT_KEEPALIVE_INTERVAL_MS: u64 = 10_000;
const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 5_000;
/// More attempts than this cannot fit a job's deadline in any useful way.
const MAX_RETRIES: u32 = 10;
/// Below this not even a small tensor with its metadata fits.
const MIN_MESSAGE_BYTES: usize = 1024;
/// Name KServe examples (and Triton) use for a model's first input.
const DEFAULT_INPUT_NAME: &str = "INPUT0";

/// The tensor datatypes of the KServe v2 protocol.
const KSERVE_DATATYPES: [&str; 13] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BYTES",
];

impl Default for GrpcConfig {
    fn default() -> GrpcConfig {
        GrpcConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            retries: DEFAULT_RETRIES,
            retry_budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            retry_budget_min_per_s: DEFAULT_RETRY_BUDGET_MIN_PER_S,
            keepalive_interval_ms: DEFAULT_KEEPALIVE_INTERVAL_MS,
            keepalive_timeout_ms: DEFAULT_KEEPALIVE_TIMEOUT_MS,
        }
    }
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
// File format: what serde reads. Values validation can reject are `Spanned`, so
// their errors carry a line.
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
}

/// `[devices]`: exactly one of the two ways to get a fleet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesFile {
    /// A CSV device list, relative to the config file.
    csv: Option<Spanned<String>>,
    /// A synthetic fleet, for demos and benchmarks.
    generate: Option<Spanned<GenerateFile>>,
}

/// `[devices] generate = { count = …, mix = { class = weight, … } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateFile {
    /// How many devices.
    count: Spanned<usize>,
    /// Relative share of each class; a map keyed by class name.
    mix: Spanned<BTreeMap<Spanned<String>, Spanned<u32>>>,
}

/// `[sink]`, tagged by `kind`. Fields inside an internally tagged enum cannot be
/// `Spanned` (serde buffers them), so errors point at the `[sink]` table.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum SinkFile {
    /// `kind = "sqlite"`.
    #[serde(rename = "sqlite")]
    Sqlite {
        /// Database file, relative to the config file.
        path: String,
        /// See [`SinkConfig::Sqlite::busy_timeout`]; default 5000.
        #[serde(default)]
        busy_timeout_ms: Option<u64>,
        /// See [`SinkConfig::Sqlite::commit_delay`]: a testing aid that
        /// simulates a slow database; default 0.
        #[serde(default)]
        commit_delay_ms: u64,
        /// See [`JournalKeys`]: `true` journals in the default folder.
        journal: Option<bool>,
        /// See [`JournalKeys`]: the spill journal's folder; no journal when absent.
        journal_dir: Option<String>,
        /// See [`JournalKeys`]: `"always"` (default), `"interval"` or `"never"`.
        journal_fsync: Option<String>,
        /// See [`JournalKeys`]: with `journal_fsync = "interval"`; default 100.
        journal_fsync_interval_ms: Option<u64>,
        /// See [`JournalKeys`]: the journal's size bound; default 1 GiB.
        journal_max_bytes: Option<u64>,
        /// See [`JournalKeys`]: a segment file's size; default 64 MiB.
        journal_segment_bytes: Option<u64>,
    },
    /// `kind = "postgres"`; validated by [`validate_postgres_sink`].
    #[serde(rename = "postgres")]
    Postgres(PostgresSinkFile),
}

/// `[grpc]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcFile {
    /// See [`GrpcConfig::max_message_bytes`].
    #[serde(default = "default_max_message_bytes")]
    max_message_bytes: Spanned<usize>,
    /// See [`GrpcConfig::connect_timeout_ms`].
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: Spanned<u64>,
    /// See [`GrpcConfig::retries`].
    #[serde(default = "default_retries")]
    retries: Spanned<u32>,
    /// See [`GrpcConfig::retry_budget_percent`].
    retry_budget_percent: Option<Spanned<u32>>,
    /// See [`GrpcConfig::retry_budget_min_per_s`].
    retry_budget_min_per_s: Option<u32>,
    /// See [`GrpcConfig::keepalive_interval_ms`].
    keepalive_interval_ms: Option<u64>,
    /// See [`GrpcConfig::keepalive_timeout_ms`].
    keepalive_timeout_ms: Option<Spanned<u64>>,
}

impl GrpcFile {
    fn defaults() -> GrpcFile {
        GrpcFile {
            max_message_bytes: default_max_message_bytes(),
            connect_timeout_ms: default_connect_timeout_ms(),
            retries: default_retries(),
            retry_budget_percent: None,
            retry_budget_min_per_s: None,
            keepalive_interval_ms: None,
            keepalive_timeout_ms: None,
        }
    }
}

// Defaults have no place in the file; they are valid, so their span is never shown.
fn default_max_message_bytes() -> Spanned<usize> {
    Spanned::new(0..0, DEFAULT_MAX_MESSAGE_BYTES)
}

fn default_connect_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_CONNECT_TIMEOUT_MS)
}

fn default_retries() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_RETRIES)
}

fn default_input_name() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_INPUT_NAME.to_string())
}

/// `outputs` when absent: ask for every output.
fn no_outputs() -> Spanned<Vec<Spanned<String>>> {
    Spanned::new(0..0, Vec::new())
}

/// One `[[classes]]` table; see [`Class`] for what each field means.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassFile {
    name: Spanned<String>,
    model: Spanned<String>,
    #[serde(default = "String::new")]
    model_version: String,
    period_ms: Spanned<u64>,
    deadline_ms: Spanned<u64>,
    data_sources: Spanned<Vec<Spanned<String>>>,
    compute_nodes: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_input_name")]
    input_name: Spanned<String>,
    output: Option<OutputFile>,
    #[serde(default = "no_outputs")]
    outputs: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    parameters: BTreeMap<String, Parameter>,
    #[serde(default)]
    request_id: bool,
    store_outputs: Option<Spanned<String>>,
    contract: Option<Spanned<ContractFile>>,
    #[serde(default)]
    upstream: upstream::UpstreamFile,
}

/// `[classes.contract]`; see [`ContractConfig`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractFile {
    metadata: Option<Spanned<bool>>,
    #[serde(default)]
    inputs: Vec<Spanned<TensorFile>>,
    #[serde(default)]
    outputs: Vec<Spanned<TensorFile>>,
}

/// One tensor of `[classes.contract]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorFile {
    name: Spanned<String>,
    datatype: Spanned<String>,
    shape: Vec<Spanned<i64>>,
}

/// `[classes.output]`; see [`OutputSpec`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputFile {
    name: Option<Spanned<String>>,
    datatype: Spanned<String>,
    shape: Vec<Spanned<i64>>,
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
        let classes = validate_classes(&self.classes, source)?;
        let class_names: Vec<&str> = classes.iter().map(|class| class.name.as_str()).collect();
        let grpc = self.grpc.validate(source)?;
        let sink = validate_sink(&self.sink, base, source)?;
        let fleet_source =
            self.devices
                .get_ref()
                .validate(self.devices.span(), &class_names, base, source)?;
        let tuning = match (&self.tuning, running) {
            (_, Some(running)) => running.clone(),
            (None, None) => Tuning::default(),
            (Some(tuning_path), None) => {
                let path = base.join(tuning_path.get_ref());
                let text = read_referenced(&path, tuning_path, "tuning", source, |path| {
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
        })
    }
}

/// Read a file this config points at with `read` (as text or as bytes); an error
/// names the config line that points.
fn read_referenced<T>(
    path: &Path,
    pointer: &Spanned<String>,
    field: &str,
    source: &Source,
    read: impl FnOnce(&Path) -> std::io::Result<T>,
) -> Result<T, ConfigError> {
    read(path).map_err(|error| {
        source.error(
            pointer.span(),
            field,
            format!("cannot read {}: {error}", path.display()),
        )
    })
}

fn validate_classes(
    classes: &[Spanned<ClassFile>],
    source: &Source,
) -> Result<Vec<Class>, ConfigError> {
    if classes.is_empty() {
        return Err(
            ConfigError::new(source.file, "at least one [[classes]] table is required")
                .in_field("classes"),
        );
    }
    // A device's class is a ClassIndex, so the list must fit it.
    let max_classes = usize::from(ClassIndex::MAX) + 1;
    if classes.len() > max_classes {
        return Err(ConfigError::new(
            source.file,
            format!("at most {max_classes} classes are supported"),
        )
        .in_field("classes"));
    }
    let mut seen = HashSet::new();
    let mut validated = Vec::with_capacity(classes.len());
    for (index, class) in classes.iter().enumerate() {
        let class = class.get_ref();
        let prefix = format!("classes[{index}]");
        if !seen.insert(class.name.get_ref().as_str()) {
            return Err(source.error(
                class.name.span(),
                format!("{prefix}.name"),
                format!("class {:?} is defined twice", class.name.get_ref()),
            ));
        }
        validated.push(class.validate(&prefix, source)?);
    }
    Ok(validated)
}

impl ClassFile {
    fn validate(&self, prefix: &str, source: &Source) -> Result<Class, ConfigError> {
        let field = |name: &str| format!("{prefix}.{name}");
        non_empty(&self.name, &field("name"), source)?;
        non_empty(&self.model, &field("model"), source)?;
        non_empty(&self.input_name, &field("input_name"), source)?;
        let period_ms = *self.period_ms.get_ref();
        if period_ms == 0 {
            return Err(source.error(
                self.period_ms.span(),
                field("period_ms"),
                "must be greater than 0",
            ));
        }
        let deadline_ms = *self.deadline_ms.get_ref();
        if deadline_ms == 0 {
            return Err(source.error(
                self.deadline_ms.span(),
                field("deadline_ms"),
                "must be greater than 0",
            ));
        }
        if deadline_ms > period_ms {
            return Err(source.error(
                self.deadline_ms.span(),
                field("deadline_ms"),
                format!("must not exceed period_ms ({period_ms})"),
            ));
        }
        let output = match &self.output {
            None => None,
            Some(output) => Some(output.validate(&field("output"), source)?),
        };
        let mut requested_outputs: Vec<String> = Vec::new();
        for name in self.outputs.get_ref() {
            non_empty(name, &field("outputs"), source)?;
            if requested_outputs.contains(name.get_ref()) {
                let why = format!("{:?} is listed twice", name.get_ref());
                return Err(source.error(name.span(), field("outputs"), why));
            }
            requested_outputs.push(name.get_ref().clone());
        }
        if let Some(OutputSpec {
            name: Some(name), ..
        }) = &output
        {
            if !requested_outputs.is_empty() && !requested_outputs.contains(name) {
                let why = format!(
                    "output.name {name:?} is not among the requested outputs {requested_outputs:?}: \
                     no answer would have it"
                );
                return Err(source.error(self.outputs.span(), field("outputs"), why));
            }
        }
        let store_all_outputs = match &self.store_outputs {
            None => true,
            Some(store) => match store.get_ref().as_str() {
                "all" => true,
                "first" => false,
                other => {
                    let why = format!("must be \"all\" or \"first\", found {other:?}");
                    return Err(source.error(store.span(), field("store_outputs"), why));
                }
            },
        };
        let compute_nodes = resolve_nodes(&self.compute_nodes, &field("compute_nodes"), source)?;
        let upstream = self.upstream.validate(
            &field("upstream"),
            &compute_nodes,
            std::time::Duration::from_millis(deadline_ms),
            source,
        )?;
        let contract = match &self.contract {
            None => ContractConfig {
                metadata: matches!(upstream.health_check, HealthCheck::Kserve),
                declared: None,
            },
            Some(contract) => contract.get_ref().validate(
                self.model.get_ref(),
                &requested_outputs,
                &upstream.health_check,
                &field("contract"),
                source,
            )?,
        };
        Ok(Class {
            name: self.name.get_ref().clone(),
            model: self.model.get_ref().clone(),
            model_version: self.model_version.clone(),
            period_ms,
            deadline_ms,
            data_sources: resolve_nodes(&self.data_sources, &field("data_sources"), source)?
                .into_iter()
                .map(|(_, address)| address)
                .collect(),
            compute_nodes: compute_nodes
                .into_iter()
                .map(|(_, address)| address)
                .collect(),
            input_name: self.input_name.get_ref().clone(),
            output,
            requested_outputs,
            parameters: self.parameters.clone(),
            request_id: self.request_id,
            store_all_outputs,
            contract,
            upstream,
        })
    }
}

impl ContractFile {
    fn validate(
        &self,
        model: &str,
        requested_outputs: &[String],
        health_check: &HealthCheck,
        prefix: &str,
        source: &Source,
    ) -> Result<ContractConfig, ConfigError> {
        let kserve = matches!(health_check, HealthCheck::Kserve);
        let metadata = match &self.metadata {
            None => kserve,
            Some(metadata) if *metadata.get_ref() && !kserve => {
                return Err(source.error(
                    metadata.span(),
                    format!("{prefix}.metadata"),
                    "ModelMetadata is read by the KServe probe: needs upstream.health_check = \"kserve\"",
                ));
            }
            Some(metadata) => *metadata.get_ref(),
        };
        let tensors = |list: &[Spanned<TensorFile>], what: &str| {
            let mut tensors: Vec<TensorContract> = Vec::with_capacity(list.len());
            for (index, tensor) in list.iter().enumerate() {
                let field = format!("{prefix}.{what}[{index}]");
                let tensor = tensor.get_ref();
                let checked = tensor.validate(&field, source)?;
                if tensors.iter().any(|known| known.name == checked.name) {
                    let why = format!("{:?} is declared twice", checked.name);
                    return Err(source.error(tensor.name.span(), format!("{field}.name"), why));
                }
                tensors.push(checked);
            }
            Ok(tensors)
        };
        let inputs = tensors(&self.inputs, "inputs")?;
        let outputs = tensors(&self.outputs, "outputs")?;
        if !outputs.is_empty() {
            if let Some(missing) = requested_outputs
                .iter()
                .find(|name| !outputs.iter().any(|output| &output.name == *name))
            {
                let why = format!(
                    "the class asks for output {missing:?} (`outputs`), which the contract's outputs do not declare"
                );
                let span = self.outputs.first().map_or(0..0, Spanned::span);
                return Err(source.error(span, format!("{prefix}.outputs"), why));
            }
        }
        let declared = (!inputs.is_empty() || !outputs.is_empty()).then(|| Contract {
            model: model.to_string(),
            inputs,
            outputs,
            versions: Vec::new(),
            origin: Origin::Config,
        });
        Ok(ContractConfig { metadata, declared })
    }
}

impl TensorFile {
    fn validate(&self, prefix: &str, source: &Source) -> Result<TensorContract, ConfigError> {
        non_empty(&self.name, &format!("{prefix}.name"), source)?;
        let datatype = known_datatype(&self.datatype, &format!("{prefix}.datatype"), source)?;
        let shape = valid_shape(&self.shape, prefix, source)?;
        Ok(TensorContract {
            name: self.name.get_ref().clone(),
            datatype,
            shape,
        })
    }
}

/// A KServe v2 datatype, or an error naming the field and the known ones.
fn known_datatype(
    datatype: &Spanned<String>,
    field: &str,
    source: &Source,
) -> Result<String, ConfigError> {
    let name = datatype.get_ref();
    if !KSERVE_DATATYPES.contains(&name.as_str()) {
        return Err(source.error(
            datatype.span(),
            field.to_string(),
            format!(
                "unknown datatype {name:?} (KServe v2 datatypes: {})",
                KSERVE_DATATYPES.join(", ")
            ),
        ));
    }
    Ok(name.clone())
}

/// A shape whose dimensions are sizes or -1 (any size), or an error naming the
/// dimension.
fn valid_shape(
    shape: &[Spanned<i64>],
    prefix: &str,
    source: &Source,
) -> Result<Vec<i64>, ConfigError> {
    for (index, dim) in shape.iter().enumerate() {
        if *dim.get_ref() < -1 {
            return Err(source.error(
                dim.span(),
                format!("{prefix}.shape[{index}]"),
                "must be -1 (any size) or at least 0",
            ));
        }
    }
    Ok(shape.iter().map(|dim| *dim.get_ref()).collect())
}

impl OutputFile {
    fn validate(&self, prefix: &str, source: &Source) -> Result<OutputSpec, ConfigError> {
        if let Some(name) = &self.name {
            non_empty(name, &format!("{prefix}.name"), source)?;
        }
        Ok(OutputSpec {
            name: self.name.as_ref().map(|name| name.get_ref().clone()),
            datatype: known_datatype(&self.datatype, &format!("{prefix}.datatype"), source)?,
            shape: valid_shape(&self.shape, prefix, source)?,
        })
    }
}

fn non_empty(value: &Spanned<String>, field: &str, source: &Source) -> Result<(), ConfigError> {
    if value.get_ref().trim().is_empty() {
        return Err(source.error(value.span(), field, "must not be empty"));
    }
    Ok(())
}

/// Resolve each `host:port` once, at load, so a typo (or port 0) stops the start
/// instead of failing every job. A name that resolves to several addresses takes the first,
/// as a plain `connect` would; write an IP literal to be explicit. Each address
/// comes with its text as written, for keys that name a node.
fn resolve_nodes(
    nodes: &Spanned<Vec<Spanned<String>>>,
    field: &str,
    source: &Source,
) -> Result<Vec<(String, SocketAddr)>, ConfigError> {
    if nodes.get_ref().is_empty() {
        return Err(source.error(nodes.span(), field, "must list at least one address"));
    }
    let mut addresses = Vec::with_capacity(nodes.get_ref().len());
    for (index, node) in nodes.get_ref().iter().enumerate() {
        let text = node.get_ref().as_str();
        let error =
            |message: String| source.error(node.span(), format!("{field}[{index}]"), message);
        let port = text
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .and_then(|(_, port)| port.parse::<u16>().ok());
        let Some(port) = port else {
            return Err(error(format!("expected \"host:port\", found {text:?}")));
        };
        // Connecting to port 0 always fails, so every job would.
        if port == 0 {
            return Err(error(format!("port 0 is not a usable port in {text:?}")));
        }
        let address = text
            .to_socket_addrs()
            .map_err(|cause| error(format!("cannot resolve {text:?}: {cause}")))?
            .next()
            .ok_or_else(|| error(format!("{text:?} resolves to no address")))?;
        if addresses.iter().any(|(_, known)| *known == address) {
            return Err(error(format!("{text:?} is listed twice")));
        }
        addresses.push((text.to_string(), address));
    }
    Ok(addresses)
}

fn validate_sink(
    sink: &Spanned<SinkFile>,
    base: &Path,
    source: &Source,
) -> Result<SinkConfig, ConfigError> {
    match sink.get_ref() {
        SinkFile::Sqlite {
            path,
            busy_timeout_ms,
            commit_delay_ms,
            journal: journal_on,
            journal_dir,
            journal_fsync,
            journal_fsync_interval_ms,
            journal_max_bytes,
            journal_segment_bytes,
        } => {
            if path.trim().is_empty() {
                return Err(source.error(sink.span(), "sink.path", "must not be empty"));
            }
            let busy_timeout = match busy_timeout_ms {
                None => crate::sink::sqlite::DEFAULT_BUSY_TIMEOUT,
                Some(0) => {
                    let field = "sink.busy_timeout_ms";
                    return Err(source.error(sink.span(), field, "must be greater than 0"));
                }
                Some(ms) => std::time::Duration::from_millis(*ms),
            };
            let journal = JournalKeys {
                enabled: *journal_on,
                default_on: false,
                dir: journal_dir.as_deref(),
                fsync: journal_fsync.as_deref(),
                fsync_interval_ms: *journal_fsync_interval_ms,
                max_bytes: *journal_max_bytes,
                segment_bytes: *journal_segment_bytes,
            }
            .validate(sink.span(), base, source)?;
            Ok(SinkConfig::Sqlite {
                path: base.join(path),
                busy_timeout,
                commit_delay: std::time::Duration::from_millis(*commit_delay_ms),
                journal,
            })
        }
        SinkFile::Postgres(file) => {
            let env_url = std::env::var(PG_URL_ENV).ok();
            let options = validate_postgres_sink(file, base, env_url.as_deref())
                .map_err(|(field, message)| source.error(sink.span(), field, message))?;
            let journal = JournalKeys {
                enabled: file.journal,
                default_on: true,
                dir: file.journal_dir.as_deref(),
                fsync: file.journal_fsync.as_deref(),
                fsync_interval_ms: file.journal_fsync_interval_ms,
                max_bytes: file.journal_max_bytes,
                segment_bytes: file.journal_segment_bytes,
            }
            .validate(sink.span(), base, source)?;
            Ok(SinkConfig::Postgres { options, journal })
        }
    }
}

// ---------------------------------------------------------------------------------
// [sink] kind = "postgres" (the PostgreSQL sink's keys; kept apart from the SQLite
// and journal keys so each part can change without touching the others).
// ---------------------------------------------------------------------------------

/// The environment variable read for the database URL when `[sink] url` is
/// absent: keeps a password out of the config file.
pub const PG_URL_ENV: &str = "PERCORE_PG_URL";

/// `[sink]` for `kind = "postgres"`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresSinkFile {
    /// `postgresql://user[:password]@host:port/db`; absent: [`PG_URL_ENV`].
    url: Option<String>,
    /// The jobs table; default `jobs`.
    table: Option<String>,
    /// Most rows per transaction; default the writer's 8192.
    batch_rows: Option<usize>,
    /// Wait for more rows before writing a smaller batch; default 0.
    linger_ms: Option<u64>,
    /// libpq's `disable`, `prefer` (default), `require`, `verify-ca` or
    /// `verify-full`: how much TLS the connection insists on.
    sslmode: Option<String>,
    /// The CA certificates (PEM) the server's certificate must chain to,
    /// relative to the config file; needed by `verify-ca` and `verify-full`.
    sslrootcert: Option<String>,
    /// Time to open a connection; default 5000.
    connect_timeout_ms: Option<u64>,
    /// See [`JournalKeys`]: on unless `false`.
    journal: Option<bool>,
    /// See [`JournalKeys`]: default [`DEFAULT_JOURNAL_DIR`].
    journal_dir: Option<String>,
    /// See [`JournalKeys`].
    journal_fsync: Option<String>,
    /// See [`JournalKeys`].
    journal_fsync_interval_ms: Option<u64>,
    /// See [`JournalKeys`].
    journal_max_bytes: Option<u64>,
    /// See [`JournalKeys`].
    journal_segment_bytes: Option<u64>,
}

/// Checks the PostgreSQL `[sink]` keys (reading the `sslrootcert` file, which
/// is relative to `base`, the config file's folder); `env_url` is
/// [`PG_URL_ENV`]'s value (a parameter, so tests need not touch the process
/// environment). Errors are (field, message) for [`Source::error`].
fn validate_postgres_sink(
    file: &PostgresSinkFile,
    base: &Path,
    env_url: Option<&str>,
) -> Result<crate::sink::postgres::PostgresOptions, (&'static str, String)> {
    use crate::sink::postgres::{self as pg, PgUrl, PostgresOptions, SslMode};
    let url = match (&file.url, env_url) {
        (Some(url), _) => PgUrl::parse(url).map_err(|why| ("sink.url", why))?,
        (None, Some(url)) => {
            PgUrl::parse(url).map_err(|why| ("sink.url", format!("{PG_URL_ENV} {why}")))?
        }
        (None, None) => {
            let why =
                format!("missing: set url = \"postgresql://user@host:port/db\" or {PG_URL_ENV}");
            return Err(("sink.url", why));
        }
    };
    let mut options = PostgresOptions::new(url);
    if let Some(table) = &file.table {
        pg::check_table_name(table).map_err(|why| ("sink.table", why))?;
        options.table = table.clone();
    }
    if let Some(rows) = file.batch_rows {
        if rows == 0 || rows > pg::MAX_BATCH_ROWS {
            let why = format!("must be from 1 to {}", pg::MAX_BATCH_ROWS);
            return Err(("sink.batch_rows", why));
        }
        options.batch_rows = rows;
    }
    if let Some(ms) = file.linger_ms {
        if ms > 10_000 {
            return Err(("sink.linger_ms", "must be at most 10000".into()));
        }
        options.linger = std::time::Duration::from_millis(ms);
    }
    if let Some(text) = &file.sslmode {
        options.ssl_mode = SslMode::parse(text).ok_or_else(|| {
            let names: Vec<String> = SslMode::ALL
                .iter()
                .map(|m| format!("{:?}", m.name()))
                .collect();
            (
                "sink.sslmode",
                format!("{text:?} is not one of {}", names.join(", ")),
            )
        })?;
    }
    let mode = options.ssl_mode;
    match &file.sslrootcert {
        Some(_) if !mode.reads_root_cert() => {
            let why = format!(
                "is not read with sslmode = \"{mode}\" (which checks no certificate): \
                 set sslmode = \"verify-full\" (or \"verify-ca\", \"require\") to use it"
            );
            return Err(("sink.sslrootcert", why));
        }
        Some(path) => {
            let path = base.join(path);
            pg::tls::load_root_certs(&path).map_err(|why| ("sink.sslrootcert", why))?;
            options.ssl_root_cert = Some(path);
        }
        None if mode.needs_root_cert() => {
            let why = format!(
                "missing: sslmode = \"{mode}\" checks the server's certificate against \
                 the CAs in this PEM file (the system's CAs are not read)"
            );
            return Err(("sink.sslrootcert", why));
        }
        None => {}
    }
    if let Some(ms) = file.connect_timeout_ms {
        if ms == 0 {
            return Err(("sink.connect_timeout_ms", "must be greater than 0".into()));
        }
        options.connect_timeout = std::time::Duration::from_millis(ms);
    }
    Ok(options)
}

// ---------------------------------------------------------------------------------
// The spill journal's keys, in `[sink]` whatever its kind. Kept together here so a
// new sink kind adds the same six fields to its `SinkFile` variant and calls
// `JournalKeys::validate`, saying whether it journals by default.
// ---------------------------------------------------------------------------------

pub use crate::sink::journal::{FsyncPolicy, JournalConfig};

/// The journal's folder, relative to the config file, when `journal_dir` is not
/// written and the journal is on (PostgreSQL's default, or `journal = true`).
pub const DEFAULT_JOURNAL_DIR: &str = "percore-journal";

/// The `journal_*` keys of one `[sink]` table, as written.
struct JournalKeys<'a> {
    /// `journal`: `false` turns the journal off, `true` turns it on (in
    /// [`DEFAULT_JOURNAL_DIR`] unless `journal_dir` says where); absent: on
    /// when `default_on` or `journal_dir` is set.
    enabled: Option<bool>,
    /// Whether this sink kind journals when `journal` is not written
    /// (PostgreSQL does; SQLite, a local file itself, does not).
    default_on: bool,
    /// `journal_dir`: the folder of the segment files, relative to the config
    /// file.
    dir: Option<&'a str>,
    /// `journal_fsync`: `"always"` (after every batch, the default), `"interval"`
    /// (at most every `journal_fsync_interval_ms`) or `"never"` (left to the OS).
    fsync: Option<&'a str>,
    /// `journal_fsync_interval_ms`: only with `journal_fsync = "interval"`.
    fsync_interval_ms: Option<u64>,
    /// `journal_max_bytes`: the bound past which the writer pushes back instead.
    max_bytes: Option<u64>,
    /// `journal_segment_bytes`: size past which a new segment file is started.
    segment_bytes: Option<u64>,
}

impl JournalKeys<'_> {
    /// The journal these keys describe; `None` when it is off, an error naming
    /// the key's line when a value is wrong or a key is set while it is off.
    fn validate(
        &self,
        table: Range<usize>,
        base: &Path,
        source: &Source,
    ) -> Result<Option<JournalConfig>, ConfigError> {
        let error = |key: &str, message: String| {
            let span = key_line(source, table.clone(), key);
            source.error(span, format!("sink.{key}"), message)
        };
        let on = self
            .enabled
            .unwrap_or(self.default_on || self.dir.is_some());
        let dir = match (on, self.dir) {
            (true, Some(dir)) => Some(dir),
            (true, None) => Some(DEFAULT_JOURNAL_DIR),
            (false, _) => None,
        };
        let Some(dir) = dir else {
            let set = [
                ("journal_dir", self.dir.is_some()),
                ("journal_fsync", self.fsync.is_some()),
                (
                    "journal_fsync_interval_ms",
                    self.fsync_interval_ms.is_some(),
                ),
                ("journal_max_bytes", self.max_bytes.is_some()),
                ("journal_segment_bytes", self.segment_bytes.is_some()),
            ];
            return match set.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(error(
                    key,
                    if self.enabled == Some(false) {
                        "has no effect: sink.journal = false turns the journal off".into()
                    } else {
                        "has no effect without sink.journal_dir or sink.journal = true \
                         (the journal is off)"
                            .into()
                    },
                )),
                None => Ok(None),
            };
        };
        if dir.trim().is_empty() {
            return Err(error("journal_dir", "must not be empty".into()));
        }
        let mut journal = JournalConfig::new(base.join(dir));
        journal.fsync = match (self.fsync, self.fsync_interval_ms) {
            (None | Some("always"), None) => FsyncPolicy::Always,
            (Some("never"), None) => FsyncPolicy::Never,
            (Some("interval"), None) => {
                FsyncPolicy::Interval(crate::sink::journal::DEFAULT_FSYNC_INTERVAL)
            }
            (Some("interval"), Some(0)) => {
                return Err(error(
                    "journal_fsync_interval_ms",
                    "must be greater than 0".into(),
                ))
            }
            (Some("interval"), Some(ms)) => {
                FsyncPolicy::Interval(std::time::Duration::from_millis(ms))
            }
            (None | Some("always" | "never"), Some(_)) => {
                return Err(error(
                    "journal_fsync_interval_ms",
                    "needs journal_fsync = \"interval\"".into(),
                ))
            }
            (Some(other), _) => {
                return Err(error(
                    "journal_fsync",
                    format!("must be \"always\", \"interval\" or \"never\", found {other:?}"),
                ))
            }
        };
        if let Some(bytes) = self.segment_bytes {
            let min = crate::sink::journal::MIN_SEGMENT_BYTES;
            if bytes < min {
                return Err(error(
                    "journal_segment_bytes",
                    format!("must be at least {min}"),
                ));
            }
            journal.segment_bytes = bytes;
        }
        if let Some(bytes) = self.max_bytes {
            journal.max_bytes = bytes;
        }
        if journal.max_bytes < journal.segment_bytes {
            return Err(error(
                "journal_max_bytes",
                format!(
                    "must be at least journal_segment_bytes ({})",
                    journal.segment_bytes
                ),
            ));
        }
        Ok(Some(journal))
    }
}

/// The span of the line of the `[sink]` table (starting at `table`) that sets
/// `key`, so an error points at the key itself: fields of the internally tagged
/// `[sink]` carry no span. The table's own span when no line sets it.
fn key_line(source: &Source, table: Range<usize>, key: &str) -> Range<usize> {
    let Some(text) = source.text.get(table.start..) else {
        return table;
    };
    let mut start = table.start;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        // The next table's header ends this one.
        if index > 0 && trimmed.starts_with('[') {
            break;
        }
        let rest = trimmed.strip_prefix(key).map(str::trim_start);
        if rest.is_some_and(|rest| rest.starts_with('=')) {
            return start..start + line.len();
        }
        start += line.len();
    }
    table
}

impl GrpcFile {
    fn validate(&self, source: &Source) -> Result<GrpcConfig, ConfigError> {
        let max_message_bytes = *self.max_message_bytes.get_ref();
        if max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(source.error(
                self.max_message_bytes.span(),
                "grpc.max_message_bytes",
                format!("must be at least {MIN_MESSAGE_BYTES}"),
            ));
        }
        let connect_timeout_ms = *self.connect_timeout_ms.get_ref();
        if connect_timeout_ms == 0 {
            return Err(source.error(
                self.connect_timeout_ms.span(),
                "grpc.connect_timeout_ms",
                "must be greater than 0",
            ));
        }
        let retries = *self.retries.get_ref();
        if retries > MAX_RETRIES {
            return Err(source.error(
                self.retries.span(),
                "grpc.retries",
                format!("must be at most {MAX_RETRIES}"),
            ));
        }
        let defaults = GrpcConfig::default();
        let retry_budget_percent = match &self.retry_budget_percent {
            Some(percent) if *percent.get_ref() > 100 => {
                return Err(source.error(
                    percent.span(),
                    "grpc.retry_budget_percent",
                    "must be at most 100",
                ))
            }
            Some(percent) => *percent.get_ref(),
            None => defaults.retry_budget_percent,
        };
        let keepalive_timeout_ms = match &self.keepalive_timeout_ms {
            Some(timeout) if *timeout.get_ref() == 0 => {
                return Err(source.error(
                    timeout.span(),
                    "grpc.keepalive_timeout_ms",
                    "must be greater than 0",
                ))
            }
            Some(timeout) => *timeout.get_ref(),
            None => defaults.keepalive_timeout_ms,
        };
        Ok(GrpcConfig {
            max_message_bytes,
            connect_timeout_ms,
            retries,
            retry_budget_percent,
            retry_budget_min_per_s: self
                .retry_budget_min_per_s
                .unwrap_or(defaults.retry_budget_min_per_s),
            keepalive_interval_ms: self
                .keepalive_interval_ms
                .unwrap_or(defaults.keepalive_interval_ms),
            keepalive_timeout_ms,
        })
    }
}

/// Where the fleet will come from, once the cheap checks have passed.
enum FleetSource {
    /// A device list already read from disk, as bytes so that text which is not
    /// UTF-8 is reported at its own line of the list.
    Csv { path: PathBuf, bytes: Vec<u8> },
    /// A synthetic fleet, weights by class index.
    Generate {
        count: usize,
        mix: Vec<(ClassIndex, u32)>,
    },
}

impl DevicesFile {
    fn validate(
        &self,
        span: Range<usize>,
        class_names: &[&str],
        base: &Path,
        source: &Source,
    ) -> Result<FleetSource, ConfigError> {
        match (&self.csv, &self.generate) {
            (Some(csv), None) => {
                let path = base.join(csv.get_ref());
                let bytes = read_referenced(&path, csv, "devices.csv", source, |path| {
                    std::fs::read(path)
                })?;
                Ok(FleetSource::Csv { path, bytes })
            }
            (None, Some(generate)) => generate.get_ref().validate(class_names, source),
            _ => Err(source.error(span, "devices", "set exactly one of csv or generate")),
        }
    }
}

impl GenerateFile {
    fn validate(&self, class_names: &[&str], source: &Source) -> Result<FleetSource, ConfigError> {
        let count = *self.count.get_ref();
        if count == 0 {
            return Err(source.error(
                self.count.span(),
                "devices.generate.count",
                "must be greater than 0",
            ));
        }
        // A device is addressed by a DeviceIndex (u32).
        if count > u32::MAX as usize {
            return Err(source.error(
                self.count.span(),
                "devices.generate.count",
                format!("must be at most {}", u32::MAX),
            ));
        }
        if self.mix.get_ref().is_empty() {
            return Err(source.error(
                self.mix.span(),
                "devices.generate.mix",
                "must name at least one class",
            ));
        }
        let mut mix = Vec::with_capacity(self.mix.get_ref().len());
        for (name, weight) in self.mix.get_ref() {
            let field = format!("devices.generate.mix.{}", name.get_ref());
            let Some(class) = class_names.iter().position(|known| known == name.get_ref()) else {
                return Err(source.error(
                    name.span(),
                    field,
                    format!(
                        "unknown class {:?} (known classes: {})",
                        name.get_ref(),
                        class_names.join(", ")
                    ),
                ));
            };
            if *weight.get_ref() == 0 {
                return Err(source.error(weight.span(), field, "must be greater than 0"));
            }
            // `validate_classes` capped the class count to what a ClassIndex holds.
            let class = ClassIndex::try_from(class).map_err(|_| {
                source.error(name.span(), "devices.generate.mix", "too many classes")
            })?;
            mix.push((class, *weight.get_ref()));
        }
        // Class order, not name order, so the spread follows the config's class list.
        mix.sort_unstable_by_key(|&(class, _)| class);
        Ok(FleetSource::Generate { count, mix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid config with a generated fleet, so no file is needed.
    const VALID: &str = r#"
[devices]
generate = { count = 8, mix = { thermostat = 3, camera = 1 } }

[sink]
kind = "sqlite"
path = "out/percore.db"

[[classes]]
name = "camera"
model = "resnet50"
period_ms = 10000
deadline_ms = 2000
data_sources = ["127.0.0.1:9000"]
compute_nodes = ["127.0.0.1:9001", "[::1]:9002"]
[classes.output]
datatype = "FP32"
shape = [1, -1]

[[classes]]
name = "thermostat"
model = "lstm"
model_version = "3"
period_ms = 60000
deadline_ms = 60000
data_sources = ["127.0.0.1:9010"]
compute_nodes = ["127.0.0.1:9011"]
input_name = "series"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Path::new("conf/fleet.toml"))
    }

    /// The error text for `text`, which must fail.
    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn parses_a_valid_config_with_defaults() {
        let config = match parse(VALID) {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(config.path, Path::new("conf/fleet.toml"));
        assert_eq!(config.classes.len(), 2);
        let camera = &config.classes[0];
        assert_eq!(camera.name, "camera");
        assert_eq!(camera.model_version, "");
        assert_eq!(camera.input_name, "INPUT0");
        assert_eq!(camera.period_ms, 10000);
        assert_eq!(camera.deadline_ms, 2000);
        assert_eq!(
            camera.compute_nodes,
            vec![
                "127.0.0.1:9001".parse::<SocketAddr>().unwrap(),
                "[::1]:9002".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(
            camera.output,
            Some(OutputSpec {
                name: None,
                datatype: "FP32".into(),
                shape: vec![1, -1]
            })
        );
        let thermostat = &config.classes[1];
        assert_eq!(thermostat.model_version, "3");
        assert_eq!(thermostat.input_name, "series");
        assert_eq!(thermostat.output, None);
        assert_eq!(
            config.sink,
            SinkConfig::sqlite(PathBuf::from("conf/out/percore.db"))
        );
        assert_eq!(config.grpc, GrpcConfig::default());
        assert_eq!(config.grpc.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(config.grpc.connect_timeout_ms, 1000);
        assert_eq!(config.tuning, Tuning::default());
        // camera:thermostat = 1:3 over 8 devices.
        assert_eq!(config.fleet.len(), 8);
        let cameras = (0..8).filter(|&d| config.fleet.class(d) == 0).count();
        assert_eq!(cameras, 2);
        assert_eq!(config.fleet.id(0), "dev-0000001");
    }

    #[test]
    fn grpc_table_overrides_defaults() {
        let text = format!(
            "[grpc]\nmax_message_bytes = 1024\nconnect_timeout_ms = 5\nretries = 2\n\
             retry_budget_percent = 50\nretry_budget_min_per_s = 3\n\
             keepalive_interval_ms = 0\nkeepalive_timeout_ms = 7\n{VALID}"
        );
        let config = parse(&text).map_err(|e| e.to_string());
        let grpc = config.map(|config| config.grpc);
        assert_eq!(
            grpc,
            Ok(GrpcConfig {
                max_message_bytes: 1024,
                connect_timeout_ms: 5,
                retries: 2,
                retry_budget_percent: 50,
                retry_budget_min_per_s: 3,
                keepalive_interval_ms: 0,
                keepalive_timeout_ms: 7,
            })
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let text = format!("\u{feff}{VALID}");
        assert_eq!(parse(&text).map(|config| config.classes.len()), Ok(2));
        // The first line's key is still found, so the error names it.
        let text = format!("\u{feff}tuning = 5\n{VALID}");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:1: tuning: invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn syntax_errors_keep_tomls_message_and_line() {
        assert_eq!(
            error_of("[devices]\ncsv = \"a\"\n[sink\n"),
            "conf/fleet.toml:3: invalid table header; expected `.`, `]`"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_line() {
        let text = VALID.replace("period_ms = 10000", "period_ms = 10000\nperiod = 5");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:13: unknown field `period`, expected one of `name`, `model`, \
             `model_version`, `period_ms`, `deadline_ms`, `data_sources`, `compute_nodes`, \
             `input_name`, `output`, `outputs`, `parameters`, `request_id`, `store_outputs`, `contract`, `upstream`"
        );
        let text = format!("{VALID}\n[extra]\n");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:30: unknown field `extra`, expected one of `tuning`, `devices`, \
             `sink`, `grpc`, `classes`"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let text = VALID.replace("period_ms = 10000", "period_ms = -1");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:12: period_ms: invalid value: integer `-1`, expected u64"
        );
        let text = VALID.replace("count = 8", "count = \"8\"");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:3: count: invalid type: string \"8\", expected usize"
        );
    }

    #[test]
    fn missing_required_keys_are_named() {
        let text = VALID.replace("model = \"lstm\"\n", "");
        assert_eq!(error_of(&text), "conf/fleet.toml:20: missing field `model`");
        let text = VALID.replace("[sink]\nkind = \"sqlite\"\npath = \"out/percore.db\"\n", "");
        assert_eq!(error_of(&text), "conf/fleet.toml: missing field `sink`");
    }

    #[test]
    fn period_and_deadline_rules() {
        let text = VALID.replace("period_ms = 60000", "period_ms = 0");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:24: classes[1].period_ms: must be greater than 0"
        );
        let text = VALID.replace("deadline_ms = 2000", "deadline_ms = 0");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:13: classes[0].deadline_ms: must be greater than 0"
        );
        let text = VALID.replace("deadline_ms = 2000", "deadline_ms = 10001");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:13: classes[0].deadline_ms: must not exceed period_ms (10000)"
        );
    }

    #[test]
    fn classes_are_required_unique_and_named() {
        let without_classes = &VALID[..VALID.find("[[classes]]").unwrap_or(VALID.len())];
        assert_eq!(
            error_of(without_classes),
            "conf/fleet.toml: classes: at least one [[classes]] table is required"
        );
        let text = VALID.replace("name = \"thermostat\"", "name = \"camera\"");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:21: classes[1].name: class \"camera\" is defined twice"
        );
        let text = VALID.replace("name = \"camera\"", "name = \" \"");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:10: classes[0].name: must not be empty"
        );
        let text = VALID.replace("model = \"resnet50\"", "model = \"\"");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:11: classes[0].model: must not be empty"
        );
    }

    #[test]
    fn node_addresses_must_be_host_port_and_resolve() {
        let text = VALID.replace("[\"127.0.0.1:9000\"]", "[]");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:14: classes[0].data_sources: must list at least one address"
        );
        let text = VALID.replace(
            "\"127.0.0.1:9001\", \"[::1]:9002\"",
            "\"127.0.0.1:9001\",\n  \"127.0.0.1\"",
        );
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:16: classes[0].compute_nodes[1]: \
             expected \"host:port\", found \"127.0.0.1\""
        );
        let text = VALID.replace(
            "\"127.0.0.1:9001\", \"[::1]:9002\"",
            "\"127.0.0.1:9001\",\n  \"127.0.0.1:0\"",
        );
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:16: classes[0].compute_nodes[1]: \
             port 0 is not a usable port in \"127.0.0.1:0\""
        );
        let text = VALID.replace("127.0.0.1:9010", "[::1]:00");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:26: classes[1].data_sources[0]: \
             port 0 is not a usable port in \"[::1]:00\""
        );
        let text = VALID.replace("127.0.0.1:9010", "127.0.0.1:99999");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:26: classes[1].data_sources[0]: \
             expected \"host:port\", found \"127.0.0.1:99999\""
        );
    }

    #[test]
    fn output_spec_rules() {
        let text = VALID.replace("datatype = \"FP32\"", "datatype = \"fp32\"");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:17: classes[0].output.datatype: unknown datatype \"fp32\" \
             (KServe v2 datatypes: BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, \
             INT64, FP16, FP32, FP64, BYTES)"
        );
        let text = VALID.replace("shape = [1, -1]", "shape = [1,\n -2]");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:19: classes[0].output.shape[1]: must be -1 (any size) or at least 0"
        );
    }

    #[test]
    fn output_check_accepts_matches_and_explains_mismatches() {
        let spec = OutputSpec {
            name: Some("OUTPUT0".into()),
            datatype: "FP32".into(),
            shape: vec![1, -1, 2],
        };
        assert_eq!(spec.check("OUTPUT0", "FP32", &[1, 7, 2]), Ok(()));
        assert_eq!(
            spec.check("logits", "FP32", &[1, 7, 2]),
            Err("output name is \"logits\", expected \"OUTPUT0\"".into())
        );
        assert_eq!(
            spec.check("OUTPUT0", "INT64", &[1, 7, 2]),
            Err("output datatype is \"INT64\", expected \"FP32\"".into())
        );
        assert_eq!(
            spec.check("OUTPUT0", "FP32", &[1, 3]),
            Err("output shape is [1, 3], expected [1, -1, 2]".into())
        );
        assert_eq!(
            spec.check("OUTPUT0", "FP32", &[2, 7, 2]),
            Err("output shape is [2, 7, 2], expected [1, -1, 2]".into())
        );
        let any_name = OutputSpec { name: None, ..spec };
        assert_eq!(any_name.check("whatever", "FP32", &[1, 0, 2]), Ok(()));
    }

    #[test]
    fn requested_outputs_parameters_and_request_ids_are_read_and_checked() {
        let with =
            |keys: &str| VALID.replace("[classes.output]", &format!("{keys}\n[classes.output]"));
        let config = parse(&with(
            "outputs = [\"max\", \"l2\"]\nrequest_id = true\nstore_outputs = \"first\"\n\
             [classes.parameters]\npriority = 2\nfast = true\nmode = \"x\"",
        ))
        .unwrap();
        let class = &config.classes[0];
        assert_eq!(class.requested_outputs, ["max", "l2"]);
        assert!(class.request_id && !class.store_all_outputs);
        assert_eq!(
            class.parameters.values().cloned().collect::<Vec<_>>(),
            [
                Parameter::Bool(true),
                Parameter::Text("x".into()),
                Parameter::Int(2)
            ]
        );
        assert!(
            config.classes[1].store_all_outputs,
            "the default keeps every output"
        );
        assert!(error_of(&with("outputs = [\"a\", \"a\"]")).contains("\"a\" is listed twice"));
        assert!(error_of(&with("store_outputs = \"some\""))
            .contains("classes[0].store_outputs: must be \"all\" or \"first\", found \"some\""));
        // An output spec naming an output no request asks for could never pass.
        let text = with("outputs = [\"max\"]").replace(
            "datatype = \"FP32\"\nshape = [1, -1]",
            "name = \"l2\"\ndatatype = \"FP32\"\nshape = [1, -1]",
        );
        assert!(
            error_of(&text).contains("output.name \"l2\" is not among the requested outputs"),
            "{}",
            error_of(&text)
        );
    }

    #[test]
    fn a_model_contract_is_read_and_checked_with_its_line() {
        // The thermostat class is the file's last table, so a contract appended
        // to the text is its.
        let with = |keys: &str| format!("{VALID}{keys}\n");
        let config = parse(&with(
            "outputs = [\"max\"]\n[classes.contract]\n\
             inputs = [{ name = \"series\", datatype = \"FP32\", shape = [-1, 256] }]\n\
             outputs = [{ name = \"max\", datatype = \"FP32\", shape = [-1, 1] }]",
        ))
        .unwrap();
        let contract = &config.classes[1].contract;
        assert!(contract.metadata, "read by default with the KServe probe");
        let declared = contract.declared.as_ref().expect("declared");
        assert_eq!(declared.model, "lstm");
        assert_eq!(declared.origin, Origin::Config);
        assert_eq!(
            declared.inputs,
            [TensorContract {
                name: "series".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 256],
            }]
        );
        assert_eq!(declared.outputs[0].shape, [-1, 1]);
        assert_eq!(config.classes[0].contract, ContractConfig::default());

        let off = parse(&with("[classes.contract]\nmetadata = false")).unwrap();
        assert_eq!(
            off.classes[1].contract,
            ContractConfig {
                metadata: false,
                declared: None
            }
        );
        let errors = [
            (
                "[classes.contract]\ninputs = [{ name = \"x\", datatype = \"FLOAT\", shape = [1] }]",
                "conf/fleet.toml:30: classes[1].contract.inputs[0].datatype: unknown datatype \"FLOAT\"",
            ),
            (
                "[classes.contract]\ninputs = [{ name = \"x\", datatype = \"FP32\", shape = [1, -2] }]",
                "conf/fleet.toml:30: classes[1].contract.inputs[0].shape[1]: must be -1 (any size) or at least 0",
            ),
            (
                "[classes.contract]\ninputs = [\n{ name = \"x\", datatype = \"FP32\", shape = [1] },\n\
                 { name = \"x\", datatype = \"FP16\", shape = [1] }]",
                "conf/fleet.toml:32: classes[1].contract.inputs[1].name: \"x\" is declared twice",
            ),
            (
                "[classes.contract]\noutputs = [{ name = \"\", datatype = \"FP32\", shape = [1] }]",
                "classes[1].contract.outputs[0].name: must not be empty",
            ),
            (
                "outputs = [\"l2\"]\n[classes.contract]\n\
                 outputs = [{ name = \"max\", datatype = \"FP32\", shape = [1] }]",
                "conf/fleet.toml:31: classes[1].contract.outputs: the class asks for output \"l2\"",
            ),
            (
                "[classes.upstream]\nhealth_check = \"none\"\n[classes.contract]\nmetadata = true",
                "conf/fleet.toml:32: classes[1].contract.metadata: ModelMetadata is read by the KServe probe",
            ),
            (
                "[classes.contract]\ninput = []",
                "conf/fleet.toml:30: unknown field `input`, expected one of `metadata`, `inputs`, `outputs`",
            ),
        ];
        for (keys, expected) in errors {
            let error = error_of(&with(keys));
            assert!(error.contains(expected), "{keys}\n→ {error}");
        }
        // Without the KServe probe there is no metadata to read.
        let grpc = parse(&with(
            "[classes.upstream]\nhealth_check = \"none\"\n[classes.contract]",
        ))
        .unwrap();
        assert!(!grpc.classes[1].contract.metadata);
    }

    #[test]
    fn grpc_limits() {
        let text = format!("[grpc]\nmax_message_bytes = 1023\n{VALID}");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:2: grpc.max_message_bytes: must be at least 1024"
        );
        let text = format!("[grpc]\nretries = 11\n{VALID}");
        assert_eq!(
            parse(&text).map_err(|e| e.to_string()).err().as_deref(),
            Some("conf/fleet.toml:2: grpc.retries: must be at most 10")
        );
        let text = format!("[grpc]\nconnect_timeout_ms = 0\n{VALID}");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:2: grpc.connect_timeout_ms: must be greater than 0"
        );
    }

    #[test]
    fn sink_commit_delay_is_a_testing_aid_off_by_default() {
        let config = parse(VALID).unwrap();
        assert_eq!(config.sink.commit_delay(), std::time::Duration::ZERO);
        let text = VALID.replace(
            "path = \"out/percore.db\"",
            "path = \"out/percore.db\"\ncommit_delay_ms = 25",
        );
        let config = parse(&text).unwrap();
        assert_eq!(
            config.sink.commit_delay(),
            std::time::Duration::from_millis(25)
        );
    }

    #[test]
    fn sink_kind_is_checked() {
        let text = VALID.replace("kind = \"sqlite\"", "kind = \"mysql\"");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:6: kind: unknown variant `mysql`, expected `sqlite` or `postgres`"
        );
        let text = VALID.replace("path = \"out/percore.db\"", "path = \"\"");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:5: sink.path: must not be empty"
        );
    }

    #[test]
    fn postgres_sink_keys_are_read_with_their_defaults() {
        use crate::sink::postgres::{SslMode, DEFAULT_CONNECT_TIMEOUT};
        let sink = "kind = \"postgres\"\nurl = \"postgresql://percore:pw@127.0.0.1:5433/results\"";
        let text = VALID.replace("kind = \"sqlite\"\npath = \"out/percore.db\"", sink);
        let config = parse(&text).unwrap();
        let SinkConfig::Postgres { options, journal } = &config.sink else {
            panic!("expected a postgres sink, got {:?}", config.sink);
        };
        let journal = journal.as_ref().expect("the journal is on by default");
        assert_eq!(journal.dir, Path::new("conf").join(DEFAULT_JOURNAL_DIR));
        assert_eq!(journal.fsync, FsyncPolicy::Always);
        assert_eq!(
            options.url.location(),
            "postgresql://percore@127.0.0.1:5433/results"
        );
        assert!(options.url.has_password());
        assert_eq!(options.table, "jobs");
        assert_eq!(options.batch_rows, crate::sink::writer::MAX_GROUP_ROWS);
        assert_eq!(options.linger, std::time::Duration::ZERO);
        assert_eq!(options.ssl_mode, SslMode::Prefer);
        assert_eq!(options.ssl_root_cert, None);
        assert_eq!(options.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(
            !format!("{config:?}").contains(":pw@"),
            "Debug shows no password"
        );

        let sink = format!(
            "{sink}\ntable = \"jobs_b\"\nbatch_rows = 1000\nlinger_ms = 20\n\
             sslmode = \"disable\"\nconnect_timeout_ms = 300\njournal = false"
        );
        let text = VALID.replace("kind = \"sqlite\"\npath = \"out/percore.db\"", &sink);
        let SinkConfig::Postgres { options, journal } = parse(&text).unwrap().sink else {
            panic!("expected a postgres sink");
        };
        assert_eq!(journal, None, "journal = false turns it off");
        assert_eq!(options.table, "jobs_b");
        assert_eq!(options.batch_rows, 1000);
        assert_eq!(options.linger, std::time::Duration::from_millis(20));
        assert_eq!(options.ssl_mode, SslMode::Disable);
        assert_eq!(
            options.connect_timeout,
            std::time::Duration::from_millis(300)
        );

        // sslrootcert is read relative to the config file's folder.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls/ca.pem"), test_ca_pem()).unwrap();
        for mode in ["require", "verify-ca", "verify-full"] {
            let file: PostgresSinkFile = toml::from_str(&format!(
                "url = \"postgresql://u@h/db\"\nsslmode = \"{mode}\"\nsslrootcert = \"tls/ca.pem\""
            ))
            .unwrap();
            let options = validate_postgres_sink(&file, dir.path(), None).unwrap();
            assert_eq!(options.ssl_mode.name(), mode);
            assert_eq!(options.ssl_root_cert, Some(dir.path().join("tls/ca.pem")));
        }
        let file: PostgresSinkFile =
            toml::from_str("url = \"postgresql://u@h/db\"\nsslmode = \"require\"").unwrap();
        let options = validate_postgres_sink(&file, dir.path(), None).unwrap();
        assert_eq!(
            (options.ssl_mode, options.ssl_root_cert),
            (SslMode::Require, None)
        );
    }

    /// A self-signed CA certificate, PEM.
    fn test_ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn the_postgres_journal_takes_the_journal_keys_and_can_be_turned_off() {
        let sink = "kind = \"postgres\"\nurl = \"postgresql://percore@127.0.0.1/results\"";
        let with = |keys: &str| {
            VALID.replace(
                "kind = \"sqlite\"\npath = \"out/percore.db\"",
                &format!("{sink}\n{keys}"),
            )
        };
        let config = parse(&with("journal_dir = \"spill\"\njournal_fsync = \"never\"")).unwrap();
        let journal = config.sink.journal().expect("on");
        assert_eq!(journal.dir, Path::new("conf/spill"));
        assert_eq!(journal.fsync, FsyncPolicy::Never);
        assert_eq!(
            error_of(&with("journal = false\njournal_dir = \"spill\"")),
            "conf/fleet.toml:9: sink.journal_dir: has no effect: sink.journal = false turns \
             the journal off"
        );
        // SQLite journals only when asked, in the same default folder.
        let text = VALID.replace(
            "path = \"out/percore.db\"",
            "path = \"out/percore.db\"\njournal = true",
        );
        let journal = parse(&text).unwrap().sink.journal().cloned().expect("on");
        assert_eq!(journal.dir, Path::new("conf").join(DEFAULT_JOURNAL_DIR));
    }

    #[test]
    fn postgres_sink_errors_name_the_key() {
        let file = |extra: &str| -> PostgresSinkFile {
            toml::from_str(&format!("url = \"postgresql://u@h/db\"\n{extra}")).unwrap()
        };
        let error = |file: PostgresSinkFile, env: Option<&str>| {
            let (field, why) = validate_postgres_sink(&file, Path::new("conf"), env).unwrap_err();
            format!("{field}: {why}")
        };
        let no_url: PostgresSinkFile = toml::from_str("").unwrap();
        assert!(error(no_url, None).starts_with("sink.url: missing: set url"));
        let no_url: PostgresSinkFile = toml::from_str("").unwrap();
        let options =
            validate_postgres_sink(&no_url, Path::new("conf"), Some("postgresql://e@h:1/d"))
                .unwrap();
        assert_eq!(
            options.url.location(),
            "postgresql://e@h:1/d",
            "the env var is read"
        );
        let no_url: PostgresSinkFile = toml::from_str("").unwrap();
        assert!(
            error(no_url, Some("mysql://x")).starts_with("sink.url: PERCORE_PG_URL must start"),
        );
        assert_eq!(
            error(file("sslmode = \"verify_full\""), None),
            "sink.sslmode: \"verify_full\" is not one of \"disable\", \"prefer\", \
             \"require\", \"verify-ca\", \"verify-full\""
        );
        assert!(error(file("sslmode = \"verify-full\""), None)
            .starts_with("sink.sslrootcert: missing: sslmode = \"verify-full\" checks"));
        assert!(
            error(file("sslmode = \"verify-ca\""), None).starts_with("sink.sslrootcert: missing")
        );
        assert!(
            error(file("sslmode = \"prefer\"\nsslrootcert = \"ca.pem\""), None)
                .starts_with("sink.sslrootcert: is not read with sslmode = \"prefer\"")
        );
        assert!(error(
            file("sslmode = \"disable\"\nsslrootcert = \"ca.pem\""),
            None
        )
        .starts_with("sink.sslrootcert: is not read with sslmode = \"disable\""));
        // A missing, empty or non-PEM file is named with its path under the config's folder.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        std::fs::write(
            dir.path().join("junk.pem"),
            "-----BEGIN CERTIFICATE-----\nnot base64!\n",
        )
        .unwrap();
        let tls_error = |root: &str| {
            let file = file(&format!(
                "sslmode = \"verify-full\"\nsslrootcert = \"{root}\""
            ));
            let (field, why) = validate_postgres_sink(&file, dir.path(), None).unwrap_err();
            format!("{field}: {why}")
        };
        let shown = |name: &str| dir.path().join(name).display().to_string();
        let text = tls_error("missing.pem");
        assert!(
            text.starts_with(&format!(
                "sink.sslrootcert: cannot read {}: ",
                shown("missing.pem")
            )),
            "{text}"
        );
        let text = tls_error("empty.pem");
        assert!(
            text.starts_with(&format!(
                "sink.sslrootcert: {} holds no certificate",
                shown("empty.pem")
            )),
            "{text}"
        );
        let text = tls_error("junk.pem");
        assert!(
            text.starts_with(&format!(
                "sink.sslrootcert: {} is not valid PEM",
                shown("junk.pem")
            )),
            "{text}"
        );
        // At load the error names the config file and line, like every other key.
        let sink =
            "kind = \"postgres\"\nurl = \"postgresql://u@h/db\"\nsslmode = \"verify-full\"\n\
                    sslrootcert = \"nowhere/ca.pem\"";
        let text = VALID.replace("kind = \"sqlite\"\npath = \"out/percore.db\"", sink);
        let text = error_of(&text);
        assert!(
            text.starts_with(
                "conf/fleet.toml:5: sink.sslrootcert: cannot read conf/nowhere/ca.pem"
            ),
            "{text}"
        );
        assert!(error(file("table = \"Jobs\""), None).starts_with("sink.table:"));
        assert!(error(file("table = \"runs\""), None).contains("percore's own tables"));
        assert!(error(file("batch_rows = 0"), None).starts_with("sink.batch_rows: must be from 1"));
        assert!(error(file("connect_timeout_ms = 0"), None).starts_with("sink.connect_timeout_ms"));
        assert!(error(file("linger_ms = 60000"), None).starts_with("sink.linger_ms"));
        // The file's line is named for a bad key too.
        let sink = "kind = \"postgres\"\nurl = \"postgresql://u:secret@h/\"";
        let text = VALID.replace("kind = \"sqlite\"\npath = \"out/percore.db\"", sink);
        let text = error_of(&text);
        assert!(
            text.starts_with("conf/fleet.toml:5: sink.url: has no database"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn the_spill_journal_is_off_by_default_and_its_keys_are_checked() {
        let config = parse(VALID).unwrap();
        assert_eq!(config.sink.journal(), None);
        let with = |keys: &str| {
            VALID.replace(
                "path = \"out/percore.db\"",
                &format!("path = \"out/percore.db\"\n{keys}"),
            )
        };
        let config = parse(&with("journal_dir = \"spill\"")).unwrap();
        assert_eq!(
            config.sink.journal(),
            Some(&JournalConfig::new("conf/spill")),
            "relative to the config file, with the defaults"
        );
        let config = parse(&with(
            "journal_dir = \"/var/spill\"\njournal_fsync = \"interval\"\njournal_fsync_interval_ms = 250\njournal_max_bytes = 1048576\njournal_segment_bytes = 65536",
        ))
        .unwrap();
        assert_eq!(
            config.sink.journal(),
            Some(&JournalConfig {
                dir: "/var/spill".into(),
                fsync: FsyncPolicy::Interval(std::time::Duration::from_millis(250)),
                max_bytes: 1_048_576,
                segment_bytes: 65_536,
            })
        );
        let config = parse(&with("journal_dir = \"j\"\njournal_fsync = \"never\"")).unwrap();
        assert_eq!(config.sink.journal().unwrap().fsync, FsyncPolicy::Never);

        // Each bad value is named with its own line (the [sink] table is line 5).
        let cases = [
            (
                "journal_dir = \"j\"\njournal_fsync = \"sometimes\"",
                "conf/fleet.toml:9: sink.journal_fsync: must be \"always\", \"interval\" or \"never\", found \"sometimes\"",
            ),
            (
                "journal_dir = \"j\"\njournal_fsync = \"interval\"\njournal_fsync_interval_ms = 0",
                "conf/fleet.toml:10: sink.journal_fsync_interval_ms: must be greater than 0",
            ),
            (
                "journal_dir = \"j\"\njournal_fsync_interval_ms = 10",
                "conf/fleet.toml:9: sink.journal_fsync_interval_ms: needs journal_fsync = \"interval\"",
            ),
            (
                "journal_dir = \"j\"\njournal_segment_bytes = 100",
                "conf/fleet.toml:9: sink.journal_segment_bytes: must be at least 4096",
            ),
            (
                "journal_dir = \"j\"\njournal_max_bytes = 5000",
                "conf/fleet.toml:9: sink.journal_max_bytes: must be at least journal_segment_bytes (67108864)",
            ),
            (
                "journal_dir = \" \"",
                "conf/fleet.toml:8: sink.journal_dir: must not be empty",
            ),
            (
                "journal_max_bytes = 5000",
                "conf/fleet.toml:8: sink.journal_max_bytes: has no effect without sink.journal_dir \
                 or sink.journal = true (the journal is off)",
            ),
        ];
        for (keys, expected) in cases {
            assert_eq!(error_of(&with(keys)), expected, "{keys}");
        }
    }

    #[test]
    fn devices_need_exactly_one_source() {
        let text = VALID.replace("generate =", "csv = \"d.csv\"\ngenerate =");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:2: devices: set exactly one of csv or generate"
        );
        let text = VALID.replace(
            "generate = { count = 8, mix = { thermostat = 3, camera = 1 } }",
            "",
        );
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:2: devices: set exactly one of csv or generate"
        );
    }

    #[test]
    fn generate_rules() {
        let text = VALID.replace("count = 8", "count = 0");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:3: devices.generate.count: must be greater than 0"
        );
        let text = VALID.replace("count = 8", "count = 4294967296");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:3: devices.generate.count: must be at most 4294967295"
        );
        let text = VALID.replace("{ thermostat = 3, camera = 1 }", "{}");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:3: devices.generate.mix: must name at least one class"
        );
        let text = VALID.replace("thermostat = 3", "thermostat = 0");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:3: devices.generate.mix.thermostat: must be greater than 0"
        );
        let text = VALID.replace("thermostat = 3", "fridge = 3");
        assert_eq!(
            error_of(&text),
            "conf/fleet.toml:3: devices.generate.mix.fridge: \
             unknown class \"fridge\" (known classes: camera, thermostat)"
        );
    }

    #[test]
    fn load_reads_csv_and_tuning_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::fs::create_dir(dir.join("hosts")).unwrap();
        std::fs::write(
            dir.join("devices.csv"),
            "id,class\ncam-1,camera\nthermo-1, thermostat\n",
        )
        .unwrap();
        let cpu = crate::tuning::allowed_cpus()[0];
        std::fs::write(
            dir.join("hosts/this.toml"),
            format!("shard_cpus = [{cpu}]\nconnections_per_node = 2\n"),
        )
        .unwrap();
        let text = VALID.replace(
            "generate = { count = 8, mix = { thermostat = 3, camera = 1 } }",
            "csv = \"devices.csv\"",
        );
        let text = format!("tuning = \"hosts/this.toml\"\n{text}");
        let path = dir.join("fleet.toml");
        std::fs::write(&path, text).unwrap();

        let config = match Config::load(&path) {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(config.fleet.len(), 2);
        assert_eq!(config.fleet.id(1), "thermo-1");
        assert_eq!(config.fleet.class(1), 1);
        assert_eq!(config.tuning.shard_cpus, vec![cpu]);
        assert_eq!(config.tuning.connections_per_node, 2);
        assert_eq!(config.sink, SinkConfig::sqlite(dir.join("out/percore.db")));
    }

    #[test]
    fn errors_in_referenced_files_name_those_files() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::fs::write(dir.join("devices.csv"), "cam-1,camera\ncam-2,fridge\n").unwrap();
        std::fs::write(dir.join("tuning.toml"), "io_memory_kib = 1\n").unwrap();
        let csv_config = VALID.replace(
            "generate = { count = 8, mix = { thermostat = 3, camera = 1 } }",
            "csv = \"devices.csv\"",
        );
        let path = dir.join("fleet.toml");

        let error = Config::from_str(&csv_config, &path).map(|_| ());
        let expected = format!(
            "{}:2: unknown class \"fridge\" (known classes: camera, thermostat)",
            dir.join("devices.csv").display()
        );
        assert_eq!(error.map_err(|e| e.to_string()), Err(expected));

        let text = format!("tuning = \"tuning.toml\"\n{VALID}");
        let error = Config::from_str(&text, &path).map(|_| ());
        let expected = format!(
            "{}:1: io_memory_kib: must be at least 64",
            dir.join("tuning.toml").display()
        );
        assert_eq!(error.map_err(|e| e.to_string()), Err(expected));

        let text = format!("tuning = \"missing.toml\"\n{VALID}");
        let error = Config::from_str(&text, &path).map(|_| ());
        let expected = format!(
            "{}:1: tuning: cannot read {}: No such file or directory (os error 2)",
            path.display(),
            dir.join("missing.toml").display()
        );
        assert_eq!(error.map_err(|e| e.to_string()), Err(expected));
    }

    #[test]
    fn load_names_an_unreadable_file() {
        let error = Config::load(Path::new("/nonexistent/fleet.toml")).map(|_| ());
        assert_eq!(
            error.map_err(|e| e.to_string()),
            Err(
                "/nonexistent/fleet.toml: cannot read: No such file or directory (os error 2)"
                    .to_string()
            )
        );
    }

    /// The shipped example must stay loadable.
    #[test]
    fn example_config_loads() {
        // `file!()` is this file's path, relative to the package root or absolute.
        let root = Path::new(file!())
            .ancestors()
            .nth(3)
            .unwrap_or(Path::new(""));
        let path = root.join("examples/percore.toml");
        let config = match Config::load(&path) {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        };
        let names: Vec<&str> = config.classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["camera", "thermostat"]);
        assert_eq!(config.fleet.len(), 10);
        assert_eq!(config.tuning, Tuning::default());
    }
}
