//! etcd for the tests: a single member or a cluster of three, each member a
//! real `etcd` (Debian's etcd-server, installed by tests/run-all.sh) on free
//! loopback ports with a temporary data folder and short election timeouts;
//! killed when dropped. Members can be stopped (SIGKILL) and started again on
//! the same ports and data, or frozen (SIGSTOP).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Heartbeat and election timeout of the test members (ms): elections settle
/// in a second, so a killed member costs the others little.
const HEARTBEAT_MS: u64 = 50;
const ELECTION_MS: u64 = 500;

/// One member: its ports, data folder and process.
struct Member {
    /// `m0`, `m1`, …: its name in `--initial-cluster`.
    name: String,
    /// Where clients connect (`--listen-client-urls`).
    client_port: u16,
    /// Where the other members connect (`--listen-peer-urls`).
    peer_port: u16,
    /// Its data folder, kept across a kill so a restart rejoins.
    data: PathBuf,
    /// Its log (stderr), shown when the cluster does not come up.
    log: PathBuf,
    /// The running process; `None` while killed.
    child: Option<Child>,
}

/// A running etcd cluster (one or three members).
pub struct Etcd {
    /// One or three.
    members: Vec<Member>,
    /// The members' `--initial-cluster`.
    initial_cluster: String,
    /// Holds every member's data and log.
    dir: tempfile::TempDir,
}

/// The `etcd` binary: `PERCORE_TEST_ETCD`, else `etcd` on the PATH.
fn binary() -> String {
    std::env::var("PERCORE_TEST_ETCD").unwrap_or_else(|_| "etcd".to_string())
}

impl Etcd {
    /// A single member, ready to answer.
    pub fn single() -> Etcd {
        Etcd::start(1)
    }

    /// Three members, a leader elected.
    pub fn cluster() -> Etcd {
        Etcd::start(3)
    }

    fn start(count: usize) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("percore-etcd.")
            .tempdir_in("/tmp")
            .expect("a temporary folder");
        let members: Vec<Member> = (0..count)
            .map(|index| Member {
                name: format!("m{index}"),
                client_port: super::pg::free_port(),
                peer_port: super::pg::free_port(),
                data: dir.path().join(format!("m{index}.data")),
                log: dir.path().join(format!("m{index}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial_cluster,
            dir,
        };
        for index in 0..count {
            etcd.spawn(index);
        }
        etcd.wait_healthy(Duration::from_secs(30));
        etcd
    }

    fn spawn(&mut self, index: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let member = &mut self.members[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("an etcd log file");
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let child = Command::new(binary())
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "percore-test"])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_MS.to_string()])
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {} ({error}); tests/run-all.sh installs etcd-server",
                    binary()
                )
            });
        member.child = Some(child);
    }

    /// Every member's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The URLs as a TOML array's inside: `"http://…", "http://…"`.
    pub fn toml_urls(&self) -> String {
        self.urls()
            .iter()
            .map(|url| format!("{url:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Kills member `index` (SIGKILL): its data stays, for [`Etcd::restart`].
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }

    /// Starts a killed member again on its ports and data.
    pub fn restart(&mut self, index: usize) {
        if self.members[index].child.is_none() {
            self.spawn(index);
        }
    }

    /// Starts every killed member again and waits until the cluster answers.
    pub fn restart_all(&mut self) {
        for index in 0..self.members.len() {
            self.restart(index);
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Waits until every running member says it is healthy (it has a
    /// leader); panics with the logs after `limit`.
    pub fn wait_healthy(&self, limit: Duration) {
        let began = Instant::now();
        loop {
            let healthy = self
                .members
                .iter()
                .filter(|m| m.child.is_some())
                .all(|m| health(m.client_port));
            if healthy {
                return;
            }
            if began.elapsed() > limit {
                panic!("etcd not healthy after {limit:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Puts `value` at `key` (no lease), through the library's own client.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let (key, value) = (key.to_string(), value.to_string());
        self.with_client(|etcd| {
            let (key, value) = (key.clone(), value.clone());
            async move { etcd.put(&key, value.as_bytes(), 0).await }
        })
        .unwrap_or_else(|error| panic!("put: {error}"))
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) {
        let key = key.to_string();
        self.with_client(|etcd| {
            let key = key.clone();
            async move { etcd.delete(key.as_bytes(), &[]).await }
        })
        .unwrap_or_else(|error| panic!("delete: {error}"));
    }

    /// Every key under `prefix` with its value and lease.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String, i64)> {
        let prefix = prefix.to_string();
        let (kvs, _) = self
            .with_client(|etcd| {
                let prefix = prefix.clone();
                async move { etcd.range_prefix(&prefix).await }
            })
            .unwrap_or_else(|error| panic!("range: {error}"));
        kvs.into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.lease,
                )
            })
            .collect()
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.get_prefix(prefix)
            .into_iter()
            .map(|(key, _, _)| key)
            .collect()
    }

    /// Compacts the store up to its current revision; that revision.
    pub fn compact(&self) -> i64 {
        self.with_client(|etcd| async move {
            let (_, revision) = etcd.range(b"/", &[]).await?;
            etcd.compact(revision).await?;
            Ok(revision)
        })
        .unwrap_or_else(|error| panic!("compact: {error}"))
    }

    /// Runs `call` with a client of the running members, on a runtime of its
    /// own; tried again on the next member while etcd does not answer (an
    /// election after a kill), for up to 20 s.
    pub fn with_client<T, F, Fut>(&self, call: F) -> Result<T, percore::cluster::etcd::EtcdError>
    where
        F: Fn(percore::cluster::etcd::Etcd) -> Fut,
        Fut: std::future::Future<Output = Result<T, percore::cluster::etcd::EtcdError>>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let urls: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect();
        let began = Instant::now();
        let mut first = 0;
        loop {
            let mut rotated = urls.clone();
            rotated.rotate_left(first % urls.len().max(1));
            let result = runtime.block_on(async {
                let etcd = percore::cluster::etcd::Etcd::new(&rotated, Duration::from_secs(3))
                    .expect("a client");
                call(etcd).await
            });
            match result {
                Err(error)
                    if error.is_unavailable() && began.elapsed() < Duration::from_secs(20) =>
                {
                    first += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                result => return result,
            }
        }
    }

    /// The folder holding the members' data and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Whether the member on `port` answers `GET /health` with `"health":"true"`.
fn health(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

/// Runs `config` as a member of its `[cluster]`, as `percore run` does: the
/// cluster thread started (this instance registered) first, its events and
/// device reports wired into the run, its lease revoked after the run.
pub fn run_in_cluster(
    config: &percore::config::Config,
    options: percore::dispatcher::RunOptions,
) -> percore::summary::RunSummary {
    let cluster = percore::cluster::join(config).expect("joins the cluster");
    let options = percore::dispatcher::RunOptions {
        cluster: cluster.as_ref().map(|handle| handle.events.clone()),
        cluster_devices: cluster.as_ref().map(|handle| handle.device_report()),
        ..options
    };
    let summary = percore::dispatcher::run(config, &options).expect("the run");
    drop(cluster);
    summary
}
