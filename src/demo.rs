//! The self-contained demo: built-in mock nodes on loopback and a generated fleet,
//! so `percore demo` shows the whole pipeline with nothing installed. The benchmark
//! and the end-to-end tests build on the same pieces.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};

use crate::config::{Class, Config, GrpcConfig, OutputSpec, SinkConfig, Upstream};
use crate::devices::Fleet;
use crate::mock::{MockKind, MockNode, MockOptions, ServiceTime};
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
    /// What both were started with ([`describe_mocks`]): a run against them
    /// passes it as [`RunOptions::mocks`](crate::dispatcher::RunOptions::mocks),
    /// so the report's configuration says what served the run.
    pub description: Value,
}

/// The mock nodes' settings a report shows: service time, payload and the
/// injected fault rates of each.
pub fn describe_mocks(source: &MockOptions, compute: &MockOptions) -> Value {
    let describe = |options: &MockOptions| {
        let service_time = match options.service_time {
            ServiceTime::Fixed(time) => json!({"fixed_us": time.as_micros() as u64}),
            ServiceTime::Exponential { mean } => {
                json!({"exponential_mean_us": mean.as_micros() as u64})
            }
        };
        json!({
            "service_time": service_time,
            "payload_bytes": options.payload_bytes,
            "error_rate": options.error_rate,
            "hang_rate": options.hang_rate,
            "reset_rate": options.reset_rate,
        })
    };
    json!({"data_source": describe(source), "compute_node": describe(compute)})
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
    let description = describe_mocks(&source, &compute);
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
    Ok(MockPair {
        source,
        compute,
        description,
    })
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
        data_sources: vec![source.into()],
        compute_nodes: vec![compute.into()],
        gateway: None,
        compute_nodes_from_etcd: false,
        input_name: "INPUT0".to_string(),
        requested_outputs: Vec::new(),
        parameters: Default::default(),
        request_id: false,
        store_all_outputs: true,
        contract: crate::config::ContractConfig::default(),
        metadata: crate::config::Metadata::default(),
        output: Some(OutputSpec {
            name: Some("OUTPUT0".to_string()),
            datatype: "FP32".to_string(),
            shape: vec![1, 2],
        }),
        upstream: Upstream::default(),
        batching: None,
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
        cluster: crate::config::ClusterConfig::default(),
    }
}

/// What [`prepare_db`] found in the demo's database file and did with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoDb {
    /// No file was there: the run creates it.
    New,
    /// A file from an earlier run was removed (with its `-wal` and `-shm`); it
    /// held this many rows.
    Removed {
        /// Rows in its `jobs` table.
        rows: u64,
    },
    /// A file from an earlier run is kept (`--keep-db`); the run adds its rows to
    /// the ones it held.
    Kept {
        /// Rows in its `jobs` table before the run.
        rows: u64,
    },
}

impl DemoDb {
    /// One line for the terminal saying what the file held and what happens to it;
    /// `None` for a new file.
    pub fn describe(&self, path: &Path) -> Option<String> {
        let path = path.display();
        match self {
            DemoDb::New => None,
            DemoDb::Removed { rows } => Some(format!(
                "removed {path} from an earlier run ({rows} rows); starting a fresh file (--keep-db appends instead)"
            )),
            DemoDb::Kept { rows } => Some(format!(
                "{path} holds {rows} rows from earlier runs; this run adds to them (--keep-db)"
            )),
        }
    }
}

/// The demo's database file could not be read, or removed, or is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoDbError(pub String);

impl std::fmt::Display for DemoDbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DemoDbError {}

/// Readies the demo's SQLite file before a run: counts the rows an earlier run
/// left, then removes the file and its `-wal` and `-shm` companions unless `keep`.
/// So a demo's database holds what that demo printed, not the sum of every demo
/// run in this folder. A file that is not a percore database (no `jobs` table, or
/// not SQLite at all) is never removed: the error says so and names the file.
pub fn prepare_db(path: &Path, keep: bool) -> Result<DemoDb, DemoDbError> {
    if !path.exists() {
        return Ok(DemoDb::New);
    }
    let rows = count_rows(path)?;
    if keep {
        return Ok(DemoDb::Kept { rows });
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(DemoDbError(format!(
                    "removing {} from an earlier demo: {error} (--keep-db appends to it instead)",
                    file.display()
                )))
            }
        }
    }
    Ok(DemoDb::Removed { rows })
}

/// Rows in the `jobs` table of an existing file; an error when the file is not a
/// SQLite database with that table.
fn count_rows(path: &Path) -> Result<u64, DemoDbError> {
    let not_ours = |why: String| {
        DemoDbError(format!(
            "{}: {why}; the demo only replaces its own databases: give another --db, or remove the file",
            path.display()
        ))
    };
    // Read-write without create, so the WAL of an earlier run is read (and folded
    // in) as any later opener would.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| not_ours(format!("cannot open it as SQLite ({error})")))?;
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
            [],
            |row| row.get(0),
        )
        .map_err(|error| not_ours(format!("not a SQLite database ({error})")))?;
    if tables == 0 {
        return Err(not_ours("it has no jobs table".to_string()));
    }
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))
        .map_err(|error| not_ours(format!("counting its jobs rows: {error}")))?;
    Ok(u64::try_from(rows).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_with_rows(path: &Path, rows: usize) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        conn.execute_batch(crate::sink::sqlite::SCHEMA).unwrap();
        for i in 0..rows {
            conn.execute(
                "INSERT INTO jobs (device_id, tick_ms, class, model, outcome, schedule_lag_us, shard)
                 VALUES (?1, 0, 'c', 'm', 'ok', 0, 0)",
                [format!("d{i}")],
            )
            .unwrap();
        }
    }

    #[test]
    fn a_missing_file_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.db");
        assert_eq!(prepare_db(&path, false), Ok(DemoDb::New));
        assert_eq!(prepare_db(&path, true), Ok(DemoDb::New));
        assert_eq!(DemoDb::New.describe(&path), None);
    }

    #[test]
    fn an_earlier_demo_is_counted_then_removed_or_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.db");
        db_with_rows(&path, 7);
        assert_eq!(prepare_db(&path, true), Ok(DemoDb::Kept { rows: 7 }));
        assert!(path.exists());
        std::fs::write(dir.path().join("demo.db-shm"), b"").unwrap();
        std::fs::write(dir.path().join("demo.db-wal"), b"").unwrap();
        assert_eq!(prepare_db(&path, false), Ok(DemoDb::Removed { rows: 7 }));
        for name in ["demo.db", "demo.db-wal", "demo.db-shm"] {
            assert!(!dir.path().join(name).exists(), "{name} is still there");
        }
        let line = DemoDb::Removed { rows: 7 }.describe(&path).unwrap();
        assert!(
            line.contains("(7 rows)") && line.contains("--keep-db"),
            "{line}"
        );
    }

    #[test]
    fn a_file_that_is_not_ours_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.db");
        std::fs::write(
            &text,
            "not a database, and long enough to have a header of sorts",
        )
        .unwrap();
        let error = prepare_db(&text, false).unwrap_err();
        assert!(error.0.starts_with(&text.display().to_string()), "{error}");
        assert!(text.exists());
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let error = prepare_db(&other, false).unwrap_err();
        assert!(error.0.contains("no jobs table"), "{error}");
        assert!(other.exists());
    }
}
