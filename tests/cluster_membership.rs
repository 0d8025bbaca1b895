//! Dispatcher membership in etcd: each instance registers under a lease and
//! watches the others; a killed one's key goes within its TTL; a second
//! process with a taken instance id is refused with a clear error.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use percore::cluster::{self, ClusterEvent, ClusterHandle, ClusterSpec, DispatcherInfo};

const TTL: Duration = Duration::from_secs(2);

fn spec(etcd_urls: Vec<String>, cluster: &str, instance: &str) -> ClusterSpec {
    ClusterSpec {
        cluster: cluster.into(),
        endpoints: etcd_urls,
        instance: instance.into(),
        lease_ttl: TTL,
        discovered: Vec::new(),
        info: DispatcherInfo {
            instance: instance.into(),
            host: "test".into(),
            pid: std::process::id(),
            shards: 1,
            devices: None,
            fleet_devices: 0,
            classes: Vec::new(),
            started_at_ms: 0,
            version: "test".into(),
        },
        start_timeout: Duration::from_secs(5),
    }
}

/// Waits for a `Members` event with exactly `expected`; how long it took.
fn wait_members(handle: &ClusterHandle, expected: &[&str], limit: Duration) -> Duration {
    let began = Instant::now();
    let mut seen = Vec::new();
    while let Some(left) = limit.checked_sub(began.elapsed()) {
        match handle.events.recv_timeout(left) {
            Ok(ClusterEvent::Members { instances, .. }) => {
                if instances == expected {
                    return began.elapsed();
                }
                seen.push(instances);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no Members {expected:?} within {limit:?}; saw {seen:?}");
}

/// A `percore run` of instance `instance` in cluster `cluster`, in `dir`.
fn dispatcher_process(
    dir: &std::path::Path,
    etcd: &Etcd,
    cluster: &str,
    instance: &str,
) -> std::process::Command {
    let cpus: Vec<String> = common::shard_cpus()
        .iter()
        .map(|cpu| cpu.to_string())
        .collect();
    std::fs::write(
        dir.join("tuning.toml"),
        format!("shard_cpus = [{}]\n", cpus.join(", ")),
    )
    .unwrap();
    let text = format!(
        r#"tuning = "tuning.toml"
[devices]
generate = {{ count = 10, mix = {{ meter = 1 }} }}
[sink]
kind = "sqlite"
path = "results.db"
[cluster]
name = "{cluster}"
etcd = [{urls}]
instance = "{instance}"
lease_ttl_s = {ttl}
[[classes]]
name = "meter"
model = "mock"
period_ms = 1000
deadline_ms = 100
data_sources = ["127.0.0.1:9"]
compute_nodes = ["127.0.0.1:9"]
"#,
        urls = etcd.toml_urls(),
        ttl = TTL.as_secs(),
    );
    std::fs::write(dir.join("percore.toml"), text).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_percore"));
    command
        .current_dir(dir)
        .args([
            "run",
            "--config",
            "percore.toml",
            "--duration",
            "60s",
            "--admin",
            "none",
        ])
        .stdout(std::process::Stdio::null());
    command
}

#[test]
fn instances_see_each_other_and_a_killed_one_goes_within_its_ttl() {
    let etcd = Etcd::single();
    let a = cluster::start(spec(etcd.urls(), "m", "a")).expect("a starts");
    assert_eq!(a.initial.members, ["a"]);
    let value = etcd.get_prefix("/percore/m/dispatchers/a");
    assert_eq!(value.len(), 1);
    assert_ne!(value[0].2, 0, "the registration is under a lease");
    let info: DispatcherInfo =
        serde_json::from_str(&value[0].1).expect("the value is the registration");
    assert_eq!(info.instance, "a");

    let dir = tempfile::tempdir().unwrap();
    let mut b = dispatcher_process(dir.path(), &etcd, "m", "b")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("b starts");
    wait_members(&a, &["a", "b"], Duration::from_secs(10));
    // The owned devices a says it has land in its registration.
    a.device_report().report(1234);
    let written = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        etcd.get_prefix("/percore/m/dispatchers/a")[0]
            .1
            .contains("\"devices\":1234")
    });
    assert!(written, "{:?}", etcd.get_prefix("/percore/m/dispatchers/a"));

    // kill -9: no revoke; the lease expires.
    b.kill().unwrap();
    let _ = b.wait();
    let took = wait_members(&a, &["a"], TTL * 3);
    assert!(
        took < TTL + Duration::from_secs(1),
        "b went {took:?} after its kill (TTL {TTL:?})"
    );

    // A clean stop revokes at once.
    a.stop();
    assert!(etcd.keys("/percore/m/dispatchers/").is_empty());
}

#[test]
fn a_taken_instance_id_is_refused_with_a_clear_error() {
    let etcd = Etcd::single();
    let _a = cluster::start(spec(etcd.urls(), "dup", "same")).expect("the first starts");
    let dir = tempfile::tempdir().unwrap();
    let began = Instant::now();
    let output = dispatcher_process(dir.path(), &etcd, "dup", "same")
        .output()
        .expect("the second runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "instance \"same\" is already registered in etcd cluster \"dup\" by a live dispatcher"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("give each dispatcher its own [cluster] instance"),
        "{stderr}"
    );
    // It waited for the key to expire (a restarted instance's would), no longer.
    assert!(
        began.elapsed() < TTL + Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
}

#[test]
fn a_restarted_instance_takes_its_crashed_predecessors_place() {
    let etcd = Etcd::single();
    let dir = tempfile::tempdir().unwrap();
    let mut first = dispatcher_process(dir.path(), &etcd, "re", "x")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    let registered = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !etcd.keys("/percore/re/dispatchers/x").is_empty()
    });
    assert!(registered);
    first.kill().unwrap();
    let _ = first.wait();
    // At once, while the old key still lives: the new one waits for it to expire.
    let handle =
        cluster::start(spec(etcd.urls(), "re", "x")).expect("the restarted instance starts");
    assert_eq!(handle.initial.members, ["x"]);
}
