//! Helpers shared by the integration tests: mock nodes on loopback, config and fleet
//! builders, one run of the dispatcher, a reader for the `jobs` table, and the checks
//! every run must pass (each due tick exactly once, counts that agree).
//!
//! Each test binary uses a different subset of these.
#![allow(dead_code)]

pub mod browser;
pub mod etcd;
pub mod pg;
pub mod python;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use percore::config::{Class, Config, GrpcConfig, SinkConfig};
use percore::devices::{shard_of, stable_hash, Fleet};
use percore::dispatcher::{self, Load, RunOptions};
use percore::mock::{mock_model_output, mock_payload, MockKind, MockNode, MockOptions};
use percore::record::DeviceIndex;
use percore::summary::RunSummary;
use percore::tick::{phase_ms, ticks_in};
use percore::tuning::{allowed_cpus, Tuning};

/// Registered-buffer memory of each mock executor: glommio's memory is locked, and
/// `ulimit -l` is 8 MiB for every executor of every test running at once.
pub const MOCK_IO_MEMORY: usize = 512 * 1024;

/// What a class of the test fleet looks like; addresses are filled in by [`class`].
#[derive(Debug, Clone, Copy)]
pub struct ClassSpec {
    pub name: &'static str,
    pub model: &'static str,
    pub period_ms: u64,
    pub deadline_ms: u64,
}

/// Shards on the first two CPUs this process may use (one shard on a one-CPU
/// machine: two shards on one CPU is not allowed).
pub fn shard_cpus() -> Vec<usize> {
    allowed_cpus().into_iter().take(2).collect()
}

/// The tuning every test runs with: [`shard_cpus`], defaults otherwise.
pub fn tuning() -> Tuning {
    Tuning {
        shard_cpus: shard_cpus(),
        ..Tuning::default()
    }
}

/// Starts a mock node on a port the OS picks, on one unpinned executor.
pub fn start_mock(kind: MockKind, options: MockOptions) -> MockNode {
    start_mock_at(kind, SocketAddr::from(([127, 0, 0, 1], 0)), options)
}

/// A mock data source serving `tensors` and a mock compute node running
/// `computation`, both otherwise default, on loopback.
pub fn start_tensor_mocks(
    tensors: percore::mock::SourceTensors,
    computation: percore::mock::compute::Computation,
) -> (MockNode, MockNode) {
    let source = start_mock(
        MockKind::Source,
        MockOptions {
            source_tensors: tensors,
            ..MockOptions::default()
        },
    );
    let compute = start_mock(
        MockKind::Compute,
        MockOptions {
            computation,
            ..MockOptions::default()
        },
    );
    (source, compute)
}

/// Starts a mock node on `addr`, on one unpinned executor.
pub fn start_mock_at(kind: MockKind, addr: SocketAddr, options: MockOptions) -> MockNode {
    match MockNode::start(kind, addr, &[None], MOCK_IO_MEMORY, options) {
        Ok(node) => node,
        Err(error) => panic!("cannot start the {kind:?} mock on {addr}: {error}"),
    }
}

/// A class served by one data source and one compute node, whose output must be the
/// mock model's FP32 [1, 2] tensor named OUTPUT0.
pub fn class(spec: ClassSpec, source: SocketAddr, compute: SocketAddr) -> Class {
    percore::demo::mock_class(
        spec.name,
        spec.model,
        spec.period_ms,
        spec.deadline_ms,
        source,
        compute,
    )
}

/// A config for `devices` generated devices spread evenly over `classes`, writing to
/// `db`, on the test [`tuning`].
pub fn config(classes: Vec<Class>, devices: usize, db: PathBuf, grpc: GrpcConfig) -> Config {
    let mix: Vec<(u16, u32)> = (0..classes.len() as u16).map(|class| (class, 1)).collect();
    Config {
        path: PathBuf::from("<integration test>"),
        classes,
        fleet: Fleet::generate(devices, &mix),
        sink: SinkConfig::sqlite(db),
        grpc,
        tuning: tuning(),
        cluster: percore::config::ClusterConfig::default(),
    }
}

/// The options of a tick-driven run of `duration`, without status lines.
pub fn run_options(duration: Duration) -> RunOptions {
    RunOptions {
        duration: Some(duration),
        load: Load::Ticks,
        ..RunOptions::default()
    }
}

/// Runs the dispatcher for `duration`; a run error fails the test with its text.
pub fn run(config: &Config, duration: Duration) -> RunSummary {
    match dispatcher::run(config, &run_options(duration)) {
        Ok(summary) => summary,
        Err(error) => panic!("the run failed: {error}"),
    }
}

/// One row of the `jobs` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device_id: String,
    pub tick_ms: i64,
    pub class: String,
    pub model: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub output: Option<Vec<u8>>,
    pub schedule_lag_us: i64,
    pub fetch_us: Option<i64>,
    pub infer_us: Option<i64>,
    pub end_to_end_us: Option<i64>,
    pub shard: i64,
    /// `host:port` of the compute node that answered, if one did.
    pub compute_node: Option<String>,
    pub attempts: i64,
}

/// Every row of the `jobs` table in `db`, by (device, tick).
pub fn read_rows(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", db.display()));
    let mut statement = conn
        .prepare(
            "SELECT device_id, tick_ms, class, model, outcome, reason, output, schedule_lag_us,
                    fetch_us, infer_us, end_to_end_us, shard, compute_node, attempts
             FROM jobs ORDER BY device_id, tick_ms",
        )
        .unwrap_or_else(|error| panic!("cannot query {}: {error}", db.display()));
    let rows = statement
        .query_map([], |row| {
            Ok(Row {
                device_id: row.get(0)?,
                tick_ms: row.get(1)?,
                class: row.get(2)?,
                model: row.get(3)?,
                outcome: row.get(4)?,
                reason: row.get(5)?,
                output: row.get(6)?,
                schedule_lag_us: row.get(7)?,
                fetch_us: row.get(8)?,
                infer_us: row.get(9)?,
                end_to_end_us: row.get(10)?,
                shard: row.get(11)?,
                compute_node: row.get(12)?,
                attempts: row.get(13)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<Row>, _>>());
    rows.unwrap_or_else(|error| panic!("cannot read rows of {}: {error}", db.display()))
}

/// Every (device id, tick) due in the run's window: for each device, the ticks of
/// its class's grid in `[start, end)`.
pub fn expected_ticks(config: &Config, window_ms: (i64, i64)) -> BTreeSet<(String, i64)> {
    let (start, end) = window_ms;
    let fleet = &config.fleet;
    let mut expected = BTreeSet::new();
    for device in 0..fleet.len() as DeviceIndex {
        let id = fleet.id(device);
        let period = config.classes[usize::from(fleet.class(device))].period_ms;
        let phase = phase_ms(stable_hash(id), period);
        for tick in ticks_in(start, end, phase, period) {
            expected.insert((id.to_string(), tick));
        }
    }
    expected
}

/// Checks that the table holds every tick due in the summary's window exactly once,
/// and nothing else.
pub fn assert_exact_ticks(config: &Config, summary: &RunSummary, rows: &[Row]) {
    let expected = expected_ticks(config, summary.window_ms);
    assert!(
        !expected.is_empty(),
        "no tick was due in the window {:?}",
        summary.window_ms
    );
    let keys: Vec<(String, i64)> = rows
        .iter()
        .map(|row| (row.device_id.clone(), row.tick_ms))
        .collect();
    let actual: BTreeSet<(String, i64)> = keys.iter().cloned().collect();
    assert_eq!(
        actual.len(),
        keys.len(),
        "the table repeats a (device, tick)"
    );
    let missing: Vec<_> = expected.difference(&actual).take(5).collect();
    let extra: Vec<_> = actual.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "window {:?}: {} ticks expected, {} rows; {} missing (first: {missing:?}), {} extra (first: {extra:?})",
        summary.window_ms,
        expected.len(),
        actual.len(),
        expected.difference(&actual).count(),
        actual.difference(&expected).count(),
    );
}

/// Rows by outcome: (ok, failed, skipped). Fails on any other outcome label.
pub fn outcome_counts<'a>(rows: impl IntoIterator<Item = &'a Row>) -> (u64, u64, u64) {
    let mut counts = (0, 0, 0);
    for row in rows {
        match row.outcome.as_str() {
            "ok" => counts.0 += 1,
            "failed" => counts.1 += 1,
            "skipped" => counts.2 += 1,
            other => panic!("row {row:?} has the unknown outcome {other:?}"),
        }
    }
    counts
}

/// Checks that the table, the sink's count and the shards' counters agree, in total
/// and shard by shard: ok + failed + skipped == rows == rows_written == jobs.
pub fn assert_counts(summary: &RunSummary, rows: &[Row]) {
    let counters = &summary.counters;
    let (ok, failed, skipped) = outcome_counts(rows);
    assert_eq!(
        (ok, failed, skipped),
        (counters.ok, counters.failed, counters.skipped),
        "rows by outcome (ok, failed, skipped) against the summary's counters"
    );
    assert_eq!(ok + failed + skipped, rows.len() as u64);
    assert_eq!(summary.rows_written, rows.len() as u64, "rows_written");
    assert_eq!(counters.jobs(), rows.len() as u64, "counters.jobs()");
    assert_eq!(summary.per_shard.len(), summary.shards);
    let mut by_shard: BTreeMap<i64, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        by_shard.entry(row.shard).or_default().push(row);
    }
    for (shard, counters) in summary
        .per_shard
        .iter()
        .map(|shard| &shard.counters)
        .enumerate()
    {
        let shard_rows = by_shard.remove(&(shard as i64)).unwrap_or_default();
        assert_eq!(
            outcome_counts(shard_rows),
            (counters.ok, counters.failed, counters.skipped),
            "shard {shard}: rows by outcome against its counters"
        );
    }
    assert!(
        by_shard.is_empty(),
        "rows name shards that did not run: {:?}",
        by_shard.keys().collect::<Vec<_>>()
    );
}

/// Checks that every row sits on the shard its device hashes to.
pub fn assert_shard_placement(summary: &RunSummary, rows: &[Row]) {
    for row in rows {
        assert_eq!(
            row.shard,
            shard_of(&row.device_id, summary.shards) as i64,
            "row {row:?} is on the wrong shard"
        );
    }
}

/// The bytes the mock model answers for `device_id`: its FP32 [1, 2] output on the
/// device's mock payload, little-endian.
pub fn expected_output(device_id: &str, payload_bytes: usize) -> Vec<u8> {
    mock_model_output(&mock_payload(device_id, payload_bytes))
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// Checks every ok row: the right device's output, every stage timed, no reason.
pub fn assert_ok_rows_are_right(rows: &[Row], payload_bytes: usize) {
    for row in rows.iter().filter(|row| row.outcome == "ok") {
        assert_eq!(
            row.output.as_deref(),
            Some(&expected_output(&row.device_id, payload_bytes)[..]),
            "output of {} at {}",
            row.device_id,
            row.tick_ms
        );
        assert_eq!(row.reason, None, "ok row {row:?} has a reason");
        assert!(
            row.fetch_us.is_some() && row.infer_us.is_some() && row.end_to_end_us.is_some(),
            "ok row {row:?} misses a stage latency"
        );
        assert!(row.schedule_lag_us >= 0, "ok row {row:?}");
    }
}

/// Checks that each row's class and model are those of its device's class.
pub fn assert_classes(config: &Config, rows: &[Row]) {
    let fleet = &config.fleet;
    let class_of: BTreeMap<&str, &Class> = (0..fleet.len() as DeviceIndex)
        .map(|device| {
            (
                fleet.id(device),
                &config.classes[usize::from(fleet.class(device))],
            )
        })
        .collect();
    for row in rows {
        let Some(class) = class_of.get(row.device_id.as_str()) else {
            panic!("row {row:?} names a device outside the fleet");
        };
        assert_eq!(
            (row.class.as_str(), row.model.as_str()),
            (class.name.as_str(), class.model.as_str()),
            "class and model of {}",
            row.device_id
        );
    }
}

/// The distinct reasons of the rows with `outcome`, with how often each occurs.
pub fn reasons(rows: &[Row], outcome: &str) -> BTreeMap<String, u64> {
    let mut reasons = BTreeMap::new();
    for row in rows.iter().filter(|row| row.outcome == outcome) {
        let reason = row.reason.clone().unwrap_or_else(|| "<none>".to_string());
        *reasons.entry(reason).or_insert(0) += 1;
    }
    reasons
}

/// The reason of a skipped tick whose device's previous job is still running: the
/// one skip a healthy shard can produce when a machine stalls.
pub const SKIP_PREVIOUS_RUNNING: &str = "previous job of this device still running";

/// Writes a config file for `percore run` into `dir`: one class `meter` (period
/// `period_ms`, deadline `deadline_ms`) served by `source` and `compute`,
/// `devices` generated devices, SQLite at `db`, shards on the test CPUs, and
/// `sink_extra` added to the `[sink]` table (e.g. `busy_timeout_ms = 200`).
#[allow(clippy::too_many_arguments)]
pub fn write_config_file(
    dir: &Path,
    source: SocketAddr,
    compute: SocketAddr,
    devices: usize,
    period_ms: u64,
    deadline_ms: u64,
    db: &Path,
    sink_extra: &str,
) -> PathBuf {
    let cpus: Vec<String> = shard_cpus().iter().map(|cpu| cpu.to_string()).collect();
    let tuning = dir.join("tuning.toml");
    std::fs::write(&tuning, format!("shard_cpus = [{}]\n", cpus.join(", ")))
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", tuning.display()));
    let text = format!(
        r#"tuning = "{tuning}"

[devices]
generate = {{ count = {devices}, mix = {{ meter = 1 }} }}

[sink]
kind = "sqlite"
path = "{db}"
{sink_extra}

[[classes]]
name = "meter"
model = "mock"
period_ms = {period_ms}
deadline_ms = {deadline_ms}
data_sources = ["{source}"]
compute_nodes = ["{compute}"]
"#,
        tuning = tuning.display(),
        db = db.display(),
    );
    let path = dir.join("percore.toml");
    std::fs::write(&path, text)
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
    path
}

/// `percore run`'s exit code when every job failed.
pub const EXIT_ALL_FAILED: i32 = 4;

/// `percore run --config CONFIG --duration DURATION --summary-json SUMMARY`
/// run to its end; its exit code and stderr (also echoed to the test's). A
/// run that ends otherwise than with 0 or [`EXIT_ALL_FAILED`], or outlives 60
/// s, fails the test.
pub fn run_percore(config: &Path, duration: &str, summary: &Path) -> (i32, String) {
    let summary = summary.to_str().expect("a UTF-8 path");
    let (code, _stdout, stderr) =
        run_percore_with(config, &["--duration", duration, "--summary-json", summary]);
    (code, stderr)
}

/// `percore run --config CONFIG --admin none ARGS…` run to its end; its exit
/// code, stdout and stderr (stderr also echoed to the test's). A run that
/// ends otherwise than with 0 or [`EXIT_ALL_FAILED`], or outlives 60 s,
/// fails the test.
pub fn run_percore_with(config: &Path, args: &[&str]) -> (i32, String, String) {
    use std::io::Read as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--admin", "none"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("percore starts");
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("a stdout pipe")));
    let stderr = read_all(Box::new(child.stderr.take().expect("a stderr pipe")));
    let status = wait_within(&mut child, Duration::from_secs(60), "percore run");
    let stdout = stdout.join().expect("stdout read");
    let stderr = stderr.join().expect("stderr read");
    eprintln!("{stderr}");
    let code = status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == EXIT_ALL_FAILED,
        "percore run exited with {status}: {stderr}"
    );
    (code, stdout, stderr)
}

/// Waits for `child` to end; kills it and fails the test, naming it `what`,
/// if it outlives `limit` (a run that never ends must not hang the suite).
pub fn wait_within(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let began = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if began.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still going after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails the test if `needle` is in any of `texts` (a run's output) or in
/// any file under `dir` (everything the run wrote).
pub fn assert_nowhere(dir: &Path, texts: &[&str], needle: &str) {
    for text in texts {
        assert!(!text.contains(needle), "the secret was printed");
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("a folder") {
                stack.push(entry.expect("an entry").path());
            }
            continue;
        }
        let bytes = std::fs::read(&path).expect("a file");
        assert!(
            !bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes()),
            "the secret is in {}",
            path.display()
        );
    }
}

/// Reads a `--summary-json` file.
pub fn read_summary_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("no summary at {}: {error}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not JSON ({error}): {text}", path.display()))
}

/// Rows in the `jobs` table of `db`.
pub fn count_rows(db: &Path) -> u64 {
    let conn = rusqlite::Connection::open(db)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", db.display()));
    conn.query_row("SELECT count(*) FROM jobs", [], |row| row.get::<_, i64>(0))
        .unwrap_or_else(|error| panic!("cannot count rows of {}: {error}", db.display())) as u64
}

/// Resident memory of this process, from `/proc/self/status`, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// One plain HTTP/1.1 GET to the admin server; the whole response as text.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|error| panic!("cannot connect to the admin server at {addr}: {error}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|error| panic!("cannot send GET {path}: {error}"));
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Samples of one metric family in a Prometheus exposition, keyed by their
/// label text (`{…}`).
pub fn samples(exposition: &str, name: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series[name.len()..].to_string(), value.parse().ok()?))
        })
        .collect()
}

/// One `job_outputs` row: device, tick, output name, datatype, shape text, data.
pub type OutputRow = (String, i64, String, String, String, Vec<u8>);

/// Every `job_outputs` row of the SQLite database `db`, by device, tick and name.
pub fn read_job_outputs(db: &Path) -> Vec<OutputRow> {
    let conn = rusqlite::Connection::open(db)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", db.display()));
    let mut statement = conn
        .prepare(
            "SELECT device_id, tick_ms, name, datatype, shape, data FROM job_outputs \
             ORDER BY device_id, tick_ms, name",
        )
        .expect("job_outputs");
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
            ))
        })
        .expect("the outputs");
    rows.collect::<Result<_, _>>().expect("the outputs")
}

/// A `percore mock-…` process, killed when dropped (a failed test included), so
/// a test can kill -9 or freeze a node for real.
pub struct MockProcess {
    /// The process, killed and reaped on drop.
    pub child: std::process::Child,
    /// Where it listens, read from its "listening on" line.
    pub addr: SocketAddr,
}

impl MockProcess {
    /// Runs `percore` with `args` (`["mock-compute", "--listen", …]`) and waits
    /// for the line that says where it listens.
    pub fn start(args: &[&str]) -> MockProcess {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let (addr, line) = python::read_listening_line(&mut child);
        match addr {
            Some(addr) => MockProcess { child, addr },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the mock printed {line:?}, not its address");
            }
        }
    }

    /// Sends `signal` to the process (SIGKILL, SIGSTOP).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill -{signal}");
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
