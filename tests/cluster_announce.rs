//! `percore announce`: a compute node that cannot register itself is
//! registered by a sidecar, under a lease kept alive only while the node is
//! ready; the dispatchers send it traffic while its key is there.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use percore::config::Config;
use percore::mock::{MockKind, MockOptions};

/// The announcer's lease TTL (s) and check interval (ms).
const TTL_S: u64 = 2;
const INTERVAL_MS: u64 = 250;

/// A `percore announce` process, killed when dropped.
struct Announcer(Child);

impl Announcer {
    fn start(etcd: &Etcd, id: &str, addr: std::net::SocketAddr) -> Announcer {
        let child = Command::new(env!("CARGO_BIN_EXE_percore"))
            .args([
                "announce",
                "--etcd",
                &etcd.urls().join(","),
                "--cluster",
                "ann",
                "--class",
                "meter",
            ])
            .args([
                "--id",
                id,
                "--addr",
                &addr.to_string(),
                "--model",
                "mock",
                "--health",
                "kserve",
            ])
            .args([
                "--ttl",
                &TTL_S.to_string(),
                "--interval",
                &format!("{INTERVAL_MS}ms"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("percore announce starts");
        Announcer(child)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        self.0.wait().expect("the announcer exits")
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long until `condition` holds (polled every 20 ms), at most `limit`.
fn time_until(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let began = Instant::now();
    while began.elapsed() < limit {
        if condition() {
            return Some(began.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn an_announced_node_gets_traffic_while_ready_and_none_after_its_lease_is_dropped() {
    let etcd = Etcd::single();
    let dir = tempfile::tempdir().unwrap();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let a = common::start_mock(MockKind::Compute, MockOptions::default());
    let b = common::start_mock(MockKind::Compute, MockOptions::default());
    let mut announce_a = Announcer::start(&etcd, "a", a.addr);
    let mut announce_b = Announcer::start(&etcd, "b", b.addr);
    let prefix = "/percore/ann/nodes/meter/";
    let both = time_until(Duration::from_secs(10), || etcd.keys(prefix).len() == 2);
    assert!(
        both.is_some(),
        "both announcers register: {:?}",
        etcd.get_prefix(prefix)
    );
    for (_, _, lease) in etcd.get_prefix(prefix) {
        assert_ne!(lease, 0, "a registration is under a lease");
    }

    let cpus: Vec<String> = common::shard_cpus()
        .iter()
        .map(|cpu| cpu.to_string())
        .collect();
    std::fs::write(
        dir.path().join("tuning.toml"),
        format!("shard_cpus = [{}]\n", cpus.join(", ")),
    )
    .unwrap();
    let text = format!(
        r#"tuning = "tuning.toml"
[devices]
generate = {{ count = 200, mix = {{ meter = 1 }} }}
[sink]
kind = "sqlite"
path = "results.db"
[cluster]
name = "ann"
etcd = [{urls}]
instance = "d1"
lease_ttl_s = 3
[[classes]]
name = "meter"
model = "mock"
period_ms = 100
deadline_ms = 100
data_sources = ["{source}"]
compute_nodes = "etcd"
"#,
        urls = etcd.toml_urls(),
        source = source.addr,
    );
    let path = dir.path().join("percore.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).expect("the config loads");
    let run = std::thread::spawn(move || {
        common::etcd::run_in_cluster(&config, common::run_options(Duration::from_secs(10)))
    });

    let traffic = time_until(Duration::from_secs(5), || {
        a.control().calls() > 50 && b.control().calls() > 50
    });
    assert!(
        traffic.is_some(),
        "both announced nodes get traffic: a {}, b {}",
        a.control().calls(),
        b.control().calls()
    );

    // a fails its readiness check: its key goes within TTL + 1 s, and its
    // traffic stops within the same bound.
    a.control().set_ready(false);
    let failed_at = Instant::now();
    let gone = time_until(Duration::from_secs(TTL_S + 3), || {
        etcd.keys(prefix) == [format!("{prefix}b")]
    });
    let gone =
        gone.unwrap_or_else(|| panic!("a's key is still there: {:?}", etcd.get_prefix(prefix)));
    assert!(
        gone < Duration::from_secs(TTL_S + 1),
        "a's key went {gone:?} after it failed"
    );
    let bound = Duration::from_secs(TTL_S + 1).saturating_sub(failed_at.elapsed());
    std::thread::sleep(bound);
    let calls = a.control().calls();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        a.control().calls(),
        calls,
        "a still gets calls {TTL_S} s + 1 s after it failed"
    );

    // Ready again: registered again, traffic again.
    a.control().set_ready(true);
    assert!(
        time_until(Duration::from_secs(5), || a.control().calls() > calls + 20).is_some(),
        "a gets traffic again once ready"
    );
    assert_eq!(etcd.keys(prefix).len(), 2);

    // SIGTERM revokes the lease: b's key goes at once.
    let status = announce_b.terminate();
    assert!(status.success(), "announce exits 0 on SIGTERM: {status}");
    assert_eq!(
        etcd.keys(prefix),
        [format!("{prefix}a")],
        "b's key went with its lease"
    );
    let _ = announce_a.terminate();
    let summary = run.join().expect("the run thread");
    assert!(summary.counters.ok > 0);
}
