//! Compute node discovery from etcd: a class with `compute_nodes = "etcd"` takes
//! its replicas from `/percore/<cluster>/nodes/<class>/`, kept current by a watch.
//! Against a real etcd (tests/common/etcd.rs).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use percore::config::Config;
use percore::mock::{MockKind, MockOptions};

/// A config file for one discovered class `meter` (period 100 ms) of
/// `devices` devices, in cluster `cluster` as `instance`, SQLite in `dir`.
fn config_text(
    dir: &Path,
    etcd: &Etcd,
    cluster: &str,
    instance: &str,
    source: SocketAddr,
    devices: usize,
) -> PathBuf {
    let cpus: Vec<String> = common::shard_cpus()
        .iter()
        .map(|cpu| cpu.to_string())
        .collect();
    let tuning = dir.join("tuning.toml");
    std::fs::write(&tuning, format!("shard_cpus = [{}]\n", cpus.join(", "))).unwrap();
    let text = format!(
        r#"tuning = "{tuning}"

[devices]
generate = {{ count = {devices}, mix = {{ meter = 1 }} }}

[sink]
kind = "sqlite"
path = "{db}"

[cluster]
name = "{cluster}"
etcd = [{urls}]
instance = "{instance}"
lease_ttl_s = 3

[[classes]]
name = "meter"
model = "mock"
period_ms = 100
deadline_ms = 100
data_sources = ["{source}"]
compute_nodes = "etcd"

[classes.upstream]
probe_interval_ms = 200
"#,
        tuning = tuning.display(),
        db = dir.join("results.db").display(),
        urls = etcd.toml_urls(),
    );
    let path = dir.join("percore.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the dispatcher for `duration` in a thread, joined to its cluster.
fn run_in_thread(
    config: Config,
    duration: Duration,
) -> std::thread::JoinHandle<(Config, percore::summary::RunSummary)> {
    std::thread::spawn(move || {
        let summary = common::etcd::run_in_cluster(&config, common::run_options(duration));
        (config, summary)
    })
}

/// Waits until `condition` holds, at most `limit`; whether it did.
fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let began = Instant::now();
    while began.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

#[test]
fn registered_nodes_join_the_class_and_a_deleted_one_stops_getting_traffic() {
    let etcd = Etcd::single();
    let dir = tempfile::tempdir().unwrap();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let a = common::start_mock(MockKind::Compute, MockOptions::default());
    let b = common::start_mock(MockKind::Compute, MockOptions::default());
    etcd.put(
        "/percore/disc/nodes/meter/a",
        &format!(r#"{{"addr": "{}", "weight": 1, "model": "mock"}}"#, a.addr),
    );
    let path = config_text(dir.path(), &etcd, "disc", "d1", source.addr, 200);
    let config = Config::load(&path).expect("the config loads");
    assert!(config.classes[0].compute_nodes_from_etcd);
    assert!(
        config.classes[0].compute_nodes.is_empty(),
        "nodes come at the join"
    );
    let run = run_in_thread(config, Duration::from_secs(9));

    // a alone, then b joins.
    assert!(
        eventually(Duration::from_secs(5), || a.control().calls() > 50),
        "a gets traffic"
    );
    assert_eq!(b.control().calls(), 0, "b is not registered yet");
    etcd.put(
        "/percore/disc/nodes/meter/b",
        &format!(r#"{{"addr": "{}"}}"#, b.addr),
    );
    assert!(
        eventually(Duration::from_secs(3), || b.control().calls() > 50),
        "b gets traffic once registered"
    );
    // a's key goes: a gets no new call once the shards have the new list.
    etcd.delete("/percore/disc/nodes/meter/a");
    std::thread::sleep(Duration::from_secs(1));
    let a_calls = a.control().calls();
    let b_calls = b.control().calls();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        a.control().calls(),
        a_calls,
        "a still got calls after its key was deleted"
    );
    assert!(
        b.control().calls() > b_calls + 100,
        "b takes the whole load"
    );

    let (config, summary) = run.join().expect("the run thread");
    let rows = common::read_rows(&dir.path().join("results.db"));
    common::assert_exact_ticks(&config, &summary, &rows);
    let (ok, failed, skipped) = common::outcome_counts(&rows);
    assert!(
        ok > 0 && failed == 0 && skipped == 0,
        "ok {ok}, failed {failed}, skipped {skipped}: {:?}",
        common::reasons(&rows, "failed")
    );
    // The registration is revoked at the end of the run.
    assert!(etcd.keys("/percore/disc/dispatchers/").is_empty());
}

#[test]
fn a_class_with_no_registered_node_skips_its_ticks_until_one_registers() {
    let etcd = Etcd::single();
    let dir = tempfile::tempdir().unwrap();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let path = config_text(dir.path(), &etcd, "empty", "d1", source.addr, 50);
    let config = Config::load(&path).expect("the config loads");
    let run = run_in_thread(config, Duration::from_secs(4));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(compute.control().calls(), 0);
    etcd.put(
        "/percore/empty/nodes/meter/n1",
        &format!(r#"{{"addr": "{}"}}"#, compute.addr),
    );
    let (config, summary) = run.join().expect("the run thread");
    let rows = common::read_rows(&dir.path().join("results.db"));
    common::assert_exact_ticks(&config, &summary, &rows);
    let skipped = common::reasons(&rows, "skipped");
    assert_eq!(
        skipped.keys().collect::<Vec<_>>(),
        ["no compute node of the class is registered in etcd"],
        "{skipped:?}"
    );
    let (ok, failed, _) = common::outcome_counts(&rows);
    assert!(ok > 0, "the node registered mid-run serves the rest");
    assert_eq!(failed, 0, "{:?}", common::reasons(&rows, "failed"));
}

#[test]
fn a_malformed_registration_is_ignored_with_a_warning_naming_the_key() {
    let etcd = Etcd::single();
    let dir = tempfile::tempdir().unwrap();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    etcd.put(
        "/percore/bad/nodes/meter/good",
        &format!(r#"{{"addr": "{}"}}"#, compute.addr),
    );
    etcd.put("/percore/bad/nodes/meter/broken", "{addr: nope");
    etcd.put(
        "/percore/bad/nodes/meter/other-model",
        &format!(r#"{{"addr": "{}", "model": "resnet"}}"#, compute.addr),
    );
    let path = config_text(dir.path(), &etcd, "bad", "d1", source.addr, 50);
    let summary = dir.path().join("summary.json");
    let (code, stderr) = common::run_percore(&path, "3s", &summary);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("ignoring compute node registration /percore/bad/nodes/meter/broken: the value is not JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ignoring compute node registration /percore/bad/nodes/meter/other-model: it serves model \"resnet\""),
        "{stderr}"
    );
    let rows = common::read_rows(&dir.path().join("results.db"));
    let (ok, failed, skipped) = common::outcome_counts(&rows);
    assert!(
        ok > 0 && failed == 0 && skipped == 0,
        "the good node serves every tick"
    );
    // percore status says the same about the bad ones.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["status", "--etcd", &etcd.urls()[0], "--cluster", "bad"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    assert!(
        table.contains("broken") && table.contains("ignored: the value is not JSON"),
        "{table}"
    );
    assert!(
        table.contains("no dispatcher registered"),
        "the run revoked its lease: {table}"
    );
}
