//! The self-contained demo: built-in mock nodes on loopback and a generated fleet,
//! so `percore demo` shows the whole pipeline with nothing installed. The benchmark
//! and the end-to-end tests build on the same pieces.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use crate::config::{Class, Config, GrpcConfig, OutputSpec, SinkConfig, Upstream};
use crate::devices::Fleet;
use crate::mock::{MockKind, MockNode, MockOptions};
use crate::runtime::RuntimeError;
use crate::tuning::{allowed_cpus, Tuning};

/// The demo's classes: (name, model, period in ms). Periods differ so the load is
/// uneven over time, as in a real fleet.
pub const DEMO_CLASSES: [(&str, &str, u64); 4] = [
    ("camera", "resnet50", 5_000),
    ("microphone", "whisper-tiny", 10_000),
    ("vibration", "anomaly-ae", 20_000),
    ("thermostat", "forecast-lstm", 30_000),
];

/// A data source and a compute node running as mocks in this process.
pub struct MockPair {
    /// Serves `DataSource/Fetch`.
    pub source: MockNode,
    /// Serves KServe v2 `ModelInfer`.
    pub compute: MockNode,
}

impl MockPair {
    pub fn stop(self) {
        self.source.stop();
        self.compute.stop();
    }
}

/// CPUs for mock executors: the tuning's `mock_cpus`, else CPUs no shard uses,
/// else unpinned (sharing the shards' CPUs).
pub fn mock_placement(tuning: &Tuning) -> Vec<Option<usize>> {
    if !tuning.mock_cpus.is_empty() {
        return tuning.mock_cpus.iter().map(|&cpu| Some(cpu)).collect();
    }
    let shards = tuning.resolved_shard_cpus();
    let free: Vec<Option<usize>> = allowed_cpus()
        .into_iter()
        .filter(|cpu| !shards.contains(cpu))
        .map(Some)
        .collect();
    if free.is_empty() {
        vec![None]
    } else {
        free
    }
}

/// Starts a mock data source and compute node on loopback ports chosen by the OS.
pub fn start_mocks(
    tuning: &Tuning,
    source: MockOptions,
    compute: MockOptions,
) -> Result<MockPair, RuntimeError> {
    let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let cpus = mock_placement(tuning);
    let io_memory = tuning.io_memory_kib * 1024;
    let source = MockNode::start(MockKind::Source, any_port, &cpus, io_memory, source)?;
    let compute = match MockNode::start(MockKind::Compute, any_port, &cpus, io_memory, compute) {
        Ok(compute) => compute,
        Err(error) => {
            source.stop();
            return Err(error);
        }
    };
    Ok(MockPair { source, compute })
}

/// A class served by one data source and one compute node running the mock model,
/// whose output must be its FP32 [1, 2] tensor named OUTPUT0.
pub fn mock_class(
    name: &str,
    model: &str,
    period_ms: u64,
    deadline_ms: u64,
    source: SocketAddr,
    compute: SocketAddr,
) -> Class {
    Class {
        name: name.to_string(),
        model: model.to_string(),
        model_version: String::new(),
        period_ms,
        deadline_ms,
        data_sources: vec![source],
        compute_nodes: vec![compute],
        input_name: "INPUT0".to_string(),
        output: Some(OutputSpec {
            name: Some("OUTPUT0".to_string()),
            datatype: "FP32".to_string(),
            shape: vec![1, 2],
        }),
        upstream: Upstream::default(),
    }
}

/// A config for the demo classes, served by one source and one compute node.
pub fn demo_config(
    devices: usize,
    source: SocketAddr,
    compute: SocketAddr,
    db: PathBuf,
    tuning: Tuning,
) -> Config {
    let classes: Vec<Class> = DEMO_CLASSES
        .iter()
        .map(|&(name, model, period_ms)| mock_class(name, model, period_ms, 1_000, source, compute))
        .collect();
    let mix: Vec<(u16, u32)> = (0..classes.len() as u16).map(|class| (class, 1)).collect();
    Config {
        path: PathBuf::from("<demo>"),
        classes,
        fleet: Fleet::generate(devices, &mix),
        sink: SinkConfig::sqlite(db),
        grpc: GrpcConfig::default(),
        tuning,
    }
}
