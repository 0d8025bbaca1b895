//! The gateway topology through a real nginx: Debian's, started here on a
//! free loopback port with the repository's `examples/nginx/percore-gateway.conf`
//! (its example addresses replaced by this test's), in front of two groups
//! of mock compute nodes, each serving one model only.
//!
//! percore runs two classes in gateway mode: `camera` (model `alpha`) is
//! routed by its class header, `meter` (model `beta`) sends no class header
//! and is routed by its model header. Every job must be ok, which a call that
//! reached the wrong group cannot be (that group answers NOT_FOUND); the
//! nodes' call counts show each group took exactly its class's jobs, and
//! rows name the gateway as written.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use percore::mock::{MockKind, MockNode, MockOptions};

const NGINX: &str = "/usr/sbin/nginx";

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// nginx running in the foreground; stopped (SIGTERM, then waited for) on drop.
struct Nginx {
    child: Child,
}

impl Nginx {
    /// Runs `nginx -p dir -c conf -e stderr -g "daemon off;"` and waits until
    /// `listen` takes connections.
    fn start(dir: &Path, conf: &Path, listen: SocketAddr) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: run the tests through tests/run-all.sh, which installs nginx"
        );
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(conf)
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx { child };
        let began = Instant::now();
        while TcpStream::connect(listen).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited with {status} before listening on {listen}");
            }
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "nginx is not listening on {listen} after 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers (a killed
        // master would leave them holding the port).
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example config with its addresses replaced; each example address
/// must be in it exactly once, so the test fails if the example changes
/// under it.
fn templated_config(replacements: &[(&str, String)]) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nginx/percore-gateway.conf");
    let mut text = std::fs::read_to_string(&example).expect("the example nginx config");
    for (from, to) in replacements {
        let from = format!("{from};");
        assert_eq!(
            text.matches(&from).count(),
            1,
            "{from} once in {}",
            example.display()
        );
        text = text.replace(&from, &format!("{to};"));
    }
    text
}

/// Two mock compute nodes serving `model` only.
fn group(model: &str) -> Vec<MockNode> {
    (0..2)
        .map(|_| {
            common::start_mock(
                MockKind::Compute,
                MockOptions {
                    model: Some(model.to_string()),
                    ..MockOptions::default()
                },
            )
        })
        .collect()
}

fn write_percore_config(dir: &Path, source: SocketAddr, gateway: SocketAddr) -> PathBuf {
    let cpus: Vec<String> = common::shard_cpus()
        .iter()
        .map(|cpu| cpu.to_string())
        .collect();
    std::fs::write(
        dir.join("tuning.toml"),
        format!("shard_cpus = [{}]\n", cpus.join(", ")),
    )
    .expect("the tuning file");
    let text = format!(
        r#"tuning = "tuning.toml"

[devices]
generate = {{ count = 60, mix = {{ camera = 1, meter = 1 }} }}

[sink]
kind = "sqlite"
path = "jobs.db"

[[classes]]
name = "camera"
model = "alpha"
period_ms = 250
deadline_ms = 250
data_sources = ["{source}"]
gateway = "{gateway}"

[[classes]]
name = "meter"
model = "beta"
period_ms = 250
deadline_ms = 250
data_sources = ["{source}"]
gateway = {{ endpoint = "{gateway}", class_header = "" }}
"#
    );
    let path = dir.join("percore.toml");
    std::fs::write(&path, text).expect("the percore config");
    path
}

#[test]
fn nginx_routes_each_class_to_its_group_by_class_or_by_model() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let cameras = group("alpha");
    let meters = group("beta");
    let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let nginx_conf = dir.path().join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        templated_config(&[
            (
                "listen 127.0.0.1:8443 http2",
                format!("listen {gateway} http2"),
            ),
            (
                "server 127.0.0.1:9101",
                format!("server {}", cameras[0].addr),
            ),
            (
                "server 127.0.0.1:9102",
                format!("server {}", cameras[1].addr),
            ),
            (
                "server 127.0.0.1:9201",
                format!("server {}", meters[0].addr),
            ),
            (
                "server 127.0.0.1:9202",
                format!("server {}", meters[1].addr),
            ),
        ]),
    )
    .expect("the nginx config");
    std::fs::create_dir_all(dir.path().join("temp")).expect("nginx's temp folder");
    let nginx = Nginx::start(dir.path(), &nginx_conf, gateway);

    let config = write_percore_config(dir.path(), source.addr, gateway);
    let (code, stderr) = common::run_percore(&config, "3s", &dir.path().join("summary.json"));
    drop(nginx);
    let calls = |nodes: &[MockNode]| -> Vec<u64> {
        nodes.iter().map(|node| node.control().calls()).collect()
    };
    let (camera_calls, meter_calls) = (calls(&cameras), calls(&meters));
    source.stop();
    for node in cameras.into_iter().chain(meters) {
        node.stop();
    }

    assert_eq!(code, 0, "{stderr}");
    let rows = common::read_rows(&dir.path().join("jobs.db"));
    assert_eq!(common::reasons(&rows, "failed"), Default::default());
    assert_eq!(common::reasons(&rows, "skipped"), Default::default());
    let ok_of = |class: &str| rows.iter().filter(|row| row.class == class).count() as u64;
    let (camera_jobs, meter_jobs) = (ok_of("camera"), ok_of("meter"));
    assert!(
        camera_jobs > 0 && meter_jobs > 0,
        "{camera_jobs} {meter_jobs}"
    );
    assert_eq!(
        camera_calls.iter().sum::<u64>(),
        camera_jobs,
        "the camera group took every camera job and nothing else: {camera_calls:?}"
    );
    assert_eq!(
        meter_calls.iter().sum::<u64>(),
        meter_jobs,
        "the meter group took every meter job and nothing else: {meter_calls:?}"
    );
    assert!(
        camera_calls.iter().chain(&meter_calls).all(|&n| n > 0),
        "nginx balances within each group: {camera_calls:?} {meter_calls:?}"
    );
    let gateway_name = gateway.to_string();
    assert!(
        rows.iter()
            .all(|row| row.compute_node.as_deref() == Some(gateway_name.as_str())),
        "rows name the gateway as written"
    );
}
