//! `[[classes]]`: a kind of device, the model that serves it and how often it
//! ticks, with its `[classes.output]`, `[classes.parameters]` and
//! `[classes.contract]` tables (`[classes.upstream]` is [`super::upstream`]'s,
//! `[classes.batching]` [`super::batching`]'s).
//!
//! The runtime [`Class`] the shards and jobs read, the table as written
//! ([`ClassFile`]), and the checks between them: names, periods and deadlines,
//! KServe v2 datatypes and shapes. Where its calls go (endpoints, gateway, TLS)
//! is [`super::endpoint`]'s.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use toml::Spanned;

use super::batching::{Batching, BatchingFile};
use super::endpoint::{self, EndpointKeys, Gateway, GatewayFile, TlsFile};
use super::metadata::{self, Metadata, MetadataValueFile};
use super::upstream::{HealthCheck, Upstream, UpstreamFile};
use crate::contract::{Contract, Origin, TensorContract};
use crate::diagnostic::{ConfigError, Source};
use crate::endpoint::Endpoint;
use crate::record::ClassIndex;

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
    pub data_sources: Vec<Endpoint>,
    /// Compute nodes (replicas) serving the model; each shard balances over
    /// them. In gateway mode, the gateway alone. For a class that discovers
    /// them in etcd, the nodes registered now (empty until one registers: the
    /// class's ticks are then skipped, saying so).
    pub compute_nodes: Vec<Endpoint>,
    /// Whether the compute nodes come from etcd (`compute_nodes = "etcd"`):
    /// registrations under `/percore/<cluster>/nodes/<class>/`, kept current by
    /// a watch, each with its weight.
    pub compute_nodes_from_etcd: bool,
    /// Set when the class calls a routing gateway (`gateway = …`) instead of
    /// its replicas: the routing headers its calls carry. The gateway is
    /// `compute_nodes[0]`, and balancing over the replicas is the gateway's.
    pub gateway: Option<Gateway>,
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
    /// Headers sent with every call of the class, credentials above all
    /// (`token_env`, `[classes.metadata]`); never shown (see
    /// [`Secret`](crate::config::Secret)).
    pub metadata: Metadata,
    /// Balancing, admission, retries, hedging, health checks and ejection over
    /// the class's replicas (`[classes.upstream]`).
    pub upstream: Upstream,
    /// Client-side batching of the class's ModelInfer calls
    /// (`[classes.batching]`); `None`, the default, sends each job alone.
    pub batching: Option<Batching>,
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

/// Name KServe examples (and Triton) use for a model's first input.
const DEFAULT_INPUT_NAME: &str = "INPUT0";

/// The tensor datatypes of the KServe v2 protocol.
const KSERVE_DATATYPES: [&str; 13] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BYTES",
];

// ---------------------------------------------------------------------------------
// As written: what serde reads. Values validation can reject are `Spanned`, so
// their errors carry a line.
// ---------------------------------------------------------------------------------

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
pub(super) struct ClassFile {
    name: Spanned<String>,
    model: Spanned<String>,
    #[serde(default = "String::new")]
    model_version: String,
    period_ms: Spanned<u64>,
    deadline_ms: Spanned<u64>,
    data_sources: Spanned<Vec<Spanned<String>>>,
    compute_nodes: Option<Spanned<NodesFile>>,
    gateway: Option<Spanned<GatewayFile>>,
    authority: Option<Spanned<String>>,
    tls: Option<Spanned<TlsFile>>,
    source_tls: Option<Spanned<TlsFile>>,
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
    token_env: Option<Spanned<String>>,
    #[serde(default)]
    metadata: BTreeMap<String, Spanned<MetadataValueFile>>,
    #[serde(default)]
    upstream: UpstreamFile,
    batching: Option<BatchingFile>,
}

/// A list of endpoints as written, each with its place in the file.
type NodeList = Spanned<Vec<Spanned<String>>>;

/// `compute_nodes` as written: a list of `"host:port"`, or a word saying where
/// the list comes from (`"etcd"`).
#[derive(Debug)]
pub(super) enum NodesFile {
    /// The nodes, each with its place in the file.
    List(Vec<Spanned<String>>),
    /// A source, as written.
    Source(String),
}

impl<'de> Deserialize<'de> for NodesFile {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<NodesFile, D::Error> {
        struct Nodes;
        impl<'de> serde::de::Visitor<'de> for Nodes {
            type Value = NodesFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of \"host:port\", or \"etcd\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<NodesFile, E> {
                Ok(NodesFile::Source(text.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<NodesFile, A::Error> {
                let mut nodes = Vec::new();
                while let Some(node) = seq.next_element::<Spanned<String>>()? {
                    nodes.push(node);
                }
                Ok(NodesFile::List(nodes))
            }
        }
        deserializer.deserialize_any(Nodes)
    }
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

/// Checks every class; `etcd` says whether `[cluster] etcd` is set, which a
/// class that discovers its nodes needs.
pub(super) fn validate_classes(
    classes: &[Spanned<ClassFile>],
    etcd: bool,
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
        validated.push(class.validate(&prefix, etcd, source)?);
    }
    Ok(validated)
}

impl ClassFile {
    /// Where the class's compute nodes come from: the list as written (for
    /// the endpoint checks), or etcd (`true`), which needs `[cluster] etcd`
    /// and no gateway.
    fn compute_node_source(
        &self,
        field: &str,
        etcd: bool,
        source: &Source,
    ) -> Result<(Option<NodeList>, bool), ConfigError> {
        let Some(nodes) = &self.compute_nodes else {
            return Ok((None, false));
        };
        let span = nodes.span();
        match nodes.get_ref() {
            NodesFile::List(list) => Ok((Some(Spanned::new(span, list.clone())), false)),
            NodesFile::Source(word) if word == "etcd" => {
                if !etcd {
                    return Err(source.error(
                        span,
                        field,
                        "\"etcd\" needs [cluster] with etcd = [\"http://host:2379\", …] to read the nodes from",
                    ));
                }
                if let Some(gateway) = &self.gateway {
                    return Err(source.error(
                        gateway.span(),
                        field.replace("compute_nodes", "gateway"),
                        "a class has compute_nodes = \"etcd\" or a gateway, not both",
                    ));
                }
                Ok((None, true))
            }
            NodesFile::Source(word) => Err(source.error(
                span,
                field,
                format!("expected a list of \"host:port\", or \"etcd\", found {word:?}"),
            )),
        }
    }

    fn validate(&self, prefix: &str, etcd: bool, source: &Source) -> Result<Class, ConfigError> {
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
        let metadata = metadata::validate(
            self.token_env.as_ref(),
            &self.metadata,
            prefix,
            source,
            &|var| std::env::var(var).ok(),
        )?;
        let (listed, compute_nodes_from_etcd) =
            self.compute_node_source(&field("compute_nodes"), etcd, source)?;
        let endpoints = endpoint::validate(
            &EndpointKeys {
                name: &self.name,
                model: self.model.get_ref(),
                data_sources: &self.data_sources,
                compute_nodes: listed.as_ref(),
                discovered: compute_nodes_from_etcd,
                gateway: self.gateway.as_ref(),
                authority: self.authority.as_ref(),
                tls: self.tls.as_ref(),
                source_tls: self.source_tls.as_ref(),
            },
            &metadata,
            prefix,
            source,
        )?;
        let compute_nodes = endpoints.compute_nodes;
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
        let batching = match &self.batching {
            None => None,
            Some(batching) => Some(batching.validate(deadline_ms, &field("batching"), source)?),
        };
        Ok(Class {
            name: self.name.get_ref().clone(),
            model: self.model.get_ref().clone(),
            model_version: self.model_version.clone(),
            period_ms,
            deadline_ms,
            data_sources: endpoints.data_sources,
            compute_nodes: compute_nodes
                .into_iter()
                .map(|(_, endpoint)| endpoint)
                .collect(),
            compute_nodes_from_etcd,
            gateway: endpoints.gateway,
            input_name: self.input_name.get_ref().clone(),
            output,
            requested_outputs,
            parameters: self.parameters.clone(),
            request_id: self.request_id,
            store_all_outputs,
            contract,
            metadata,
            upstream,
            batching,
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
