//! etcd outages: every member stopped for 10 s, one of three killed, and a
//! watch whose revision was compacted while etcd was away. Dispatchers keep
//! their assignment and keep working, then resynchronise.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use percore::cluster::{self, ClusterEvent, ClusterSpec, DispatcherInfo, NodeRecord};
use percore::mock::{MockKind, MockOptions};

const PERIOD_MS: i64 = 200;

/// A `percore run` in `dir` for `duration`, its stderr collected.
struct Run {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

fn start_run(
    dir: &Path,
    urls: &[String],
    cluster: &str,
    source: SocketAddr,
    duration: &str,
) -> Run {
    let cpus: Vec<String> = common::shard_cpus()
        .iter()
        .map(|cpu| cpu.to_string())
        .collect();
    std::fs::write(
        dir.join("tuning.toml"),
        format!("shard_cpus = [{}]\n", cpus.join(", ")),
    )
    .unwrap();
    let urls: Vec<String> = urls.iter().map(|url| format!("{url:?}")).collect();
    let text = format!(
        r#"tuning = "tuning.toml"
[devices]
generate = {{ count = 100, mix = {{ meter = 1 }} }}
[sink]
kind = "sqlite"
path = "results.db"
[cluster]
name = "{cluster}"
etcd = [{urls}]
instance = "d1"
lease_ttl_s = 3
[[classes]]
name = "meter"
model = "mock"
period_ms = {PERIOD_MS}
deadline_ms = 200
data_sources = ["{source}"]
compute_nodes = "etcd"
"#,
        urls = urls.join(", "),
    );
    std::fs::write(dir.join("percore.toml"), text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .current_dir(dir)
        .args([
            "run",
            "--config",
            "percore.toml",
            "--duration",
            duration,
            "--admin",
            "none",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("percore run starts");
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    Run { child, stderr }
}

impl Run {
    fn finish(mut self) -> String {
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.join().unwrap();
        eprintln!("{stderr}");
        assert!(status.success(), "percore run: {status}\n{stderr}");
        stderr
    }
}

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

/// Every row ok, and every device ticked at every period from its first
/// row to its last: the run never stopped working.
fn assert_no_gap(db: &Path) {
    let rows = common::read_rows(db);
    let (ok, failed, skipped) = common::outcome_counts(&rows);
    assert!(
        ok > 0 && failed == 0 && skipped == 0,
        "ok {ok}, failed {failed} {:?}, skipped {skipped} {:?}",
        common::reasons(&rows, "failed"),
        common::reasons(&rows, "skipped")
    );
    let mut ticks: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for row in &rows {
        ticks.entry(&row.device_id).or_default().push(row.tick_ms);
    }
    for (device, mut ticks) in ticks {
        ticks.sort();
        for pair in ticks.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                PERIOD_MS,
                "{device}: a gap from {} to {}",
                pair[0],
                pair[1]
            );
        }
    }
}

#[test]
fn every_member_stopped_for_10_s_the_dispatcher_keeps_working_then_watches_again() {
    let mut etcd = Etcd::single();
    let dir = tempfile::tempdir().unwrap();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let a = common::start_mock(MockKind::Compute, MockOptions::default());
    let b = common::start_mock(MockKind::Compute, MockOptions::default());
    etcd.put(
        "/percore/out/nodes/meter/a",
        &format!(r#"{{"addr": "{}"}}"#, a.addr),
    );
    let run = start_run(dir.path(), &etcd.urls(), "out", source.addr, "22s");
    assert!(
        eventually(Duration::from_secs(10), || a.control().calls() > 20),
        "the run starts"
    );

    etcd.kill_all();
    let calls = a.control().calls();
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        a.control().calls() > calls + 1000,
        "dispatching goes on while etcd is away"
    );
    etcd.restart_all();

    // Registered again (or its lease survived the restart), watching again.
    assert!(
        eventually(Duration::from_secs(8), || !etcd
            .keys("/percore/out/dispatchers/")
            .is_empty()),
        "the dispatcher is registered after etcd's return"
    );
    etcd.put(
        "/percore/out/nodes/meter/b",
        &format!(r#"{{"addr": "{}"}}"#, b.addr),
    );
    assert!(
        eventually(Duration::from_secs(5), || b.control().calls() > 20),
        "a node registered after the outage gets traffic: the watch resumed"
    );
    let stderr = run.finish();
    assert!(stderr.contains("etcd unreachable"), "{stderr}");
    assert!(stderr.contains("etcd answers again"), "{stderr}");
    assert_no_gap(&dir.path().join("results.db"));
    assert!(
        etcd.keys("/percore/out/dispatchers/").is_empty(),
        "revoked at the end"
    );
}

#[test]
fn one_of_three_members_killed_costs_nothing() {
    let mut etcd = Etcd::cluster();
    let dir = tempfile::tempdir().unwrap();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let a = common::start_mock(MockKind::Compute, MockOptions::default());
    let b = common::start_mock(MockKind::Compute, MockOptions::default());
    etcd.put(
        "/percore/three/nodes/meter/a",
        &format!(r#"{{"addr": "{}"}}"#, a.addr),
    );
    let run = start_run(dir.path(), &etcd.urls(), "three", source.addr, "12s");
    let key = "/percore/three/dispatchers/d1";
    assert!(
        eventually(Duration::from_secs(10), || a.control().calls() > 20),
        "the run starts"
    );
    let lease = etcd.get_prefix(key)[0].2;
    // The member the dispatcher talks to first.
    etcd.kill(0);
    std::thread::sleep(Duration::from_secs(1));
    etcd.put(
        "/percore/three/nodes/meter/b",
        &format!(r#"{{"addr": "{}"}}"#, b.addr),
    );
    assert!(
        eventually(Duration::from_secs(3), || b.control().calls() > 20),
        "a node registered after the kill gets traffic: the watch moved to another member"
    );
    for _ in 0..20 {
        let now = etcd.get_prefix(key);
        assert_eq!(now.len(), 1, "the registration never went");
        assert_eq!(now[0].2, lease, "the same lease: it never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    run.finish();
    assert_no_gap(&dir.path().join("results.db"));
}

#[test]
fn a_watch_whose_revision_was_compacted_reads_the_nodes_afresh() {
    let mut etcd = Etcd::cluster();
    etcd.put(
        "/percore/cmp/nodes/meter/n1",
        r#"{"addr": "127.0.0.1:9001"}"#,
    );
    // Only member 0: while it is down, the others move on and compact.
    let handle = cluster::start(ClusterSpec {
        cluster: "cmp".into(),
        endpoints: vec![etcd.urls()[0].clone()],
        instance: "d1".into(),
        lease_ttl: Duration::from_secs(2),
        discovered: vec![("meter".into(), "mock".into())],
        info: DispatcherInfo {
            instance: "d1".into(),
            host: "test".into(),
            pid: 1,
            shards: 1,
            devices: None,
            fleet_devices: 0,
            classes: vec!["meter".into()],
            started_at_ms: 0,
            version: "test".into(),
        },
        start_timeout: Duration::from_secs(5),
    })
    .expect("starts");
    assert_eq!(handle.initial.nodes["meter"].len(), 1);
    etcd.kill(0);
    etcd.put(
        "/percore/cmp/nodes/meter/n2",
        r#"{"addr": "127.0.0.1:9002", "weight": 3}"#,
    );
    etcd.delete("/percore/cmp/nodes/meter/n1");
    for index in 0..20 {
        etcd.put("/percore/cmp/filler", &index.to_string());
    }
    etcd.compact();
    etcd.restart(0);
    etcd.wait_healthy(Duration::from_secs(30));

    let expected = vec![NodeRecord {
        id: "n2".into(),
        addr: "127.0.0.1:9002".into(),
        weight: 3,
        model: None,
    }];
    let began = Instant::now();
    let (mut down, mut nodes, mut up) = (false, false, false);
    while began.elapsed() < Duration::from_secs(20) && !(nodes && up) {
        let event = handle.events.recv_timeout(Duration::from_millis(500));
        eprintln!("{:.1} s: {event:?}", began.elapsed().as_secs_f64());
        match event {
            Ok(ClusterEvent::Connection { up: false, .. }) => down = true,
            Ok(ClusterEvent::Connection { up: true, .. }) => up = true,
            Ok(ClusterEvent::Nodes {
                class, nodes: list, ..
            }) if class == "meter" => {
                nodes = list == expected;
            }
            _ => {}
        }
    }
    assert!(down, "the coordinator heard of the outage");
    assert!(nodes, "the nodes were read afresh after the compaction");
    assert!(up, "and that etcd answers again");
}
