//! The Python side of the tests against a real inference server: the data source of
//! `examples/python/source_server.py` and an MLServer serving the test model of
//! `examples/python/mlserver_model/`, each a child process killed on drop.
//!
//! Both run from the venv `tests/run-all.sh` sets up and names in
//! `PERCORE_TEST_VENV` (default: `target/percore-venv` of this checkout).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long MLServer may take to come up (import, model load, three listeners).
pub const MLSERVER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of the test model in `examples/python/mlserver_model/model-settings.json`.
pub const MODEL: &str = "rowstats";

/// `examples/python/` of this checkout.
pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python")
}

/// The venv with MLServer, grpcio and the generated stubs' dependencies.
pub fn venv() -> PathBuf {
    let venv = std::env::var_os("PERCORE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/percore-venv"));
    let stubs = python_dir().join("generated/percore_source_pb2.py");
    assert!(
        venv.join("bin/python").exists() && venv.join("bin/mlserver").exists() && stubs.exists(),
        "no Python venv with MLServer at {} (or no stubs at {}): run the tests with \
         `bash tests/run-all.sh`, which sets it up",
        venv.display(),
        stubs.display(),
    );
    venv
}

/// A loopback port free when asked (the OS picks it; nothing holds it afterwards).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// `source_server.py` in a process of its own, killed when dropped.
pub struct PythonSource {
    child: Child,
    /// Where it listens, read from its first line.
    pub addr: SocketAddr,
}

impl PythonSource {
    /// Starts the source answering FP32 tensors of `shape`, on a port the OS
    /// picks, and waits for its `listening on` line.
    pub fn start(shape: &[usize]) -> PythonSource {
        let shape: Vec<String> = shape.iter().map(usize::to_string).collect();
        let mut child = Command::new(venv().join("bin/python"))
            .arg(python_dir().join("source_server.py"))
            .args(["--port", "0", "--shape", &shape.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python starts");
        match read_listening_line(&mut child) {
            (Some(addr), _) => PythonSource { child, addr },
            (None, line) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("source_server.py printed {line:?}, not its address");
            }
        }
    }
}
/// Reads a child's first line of stdout, `listening on ADDR` (what the mocks and
/// the Python source print once they take calls; a TLS mock adds `(TLS)`):
/// the address, and the line itself for a failure message.
pub fn read_listening_line(child: &mut Child) -> (Option<SocketAddr>, String) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    if let Some(stdout) = child.stdout.as_mut() {
        while stdout.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok());
    (addr, line)
}

impl Drop for PythonSource {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MLServer serving `examples/python/mlserver_model/`, on ports chosen free
/// at start and kept across [`MlServer::stop`] and [`MlServer::start_again`];
/// killed when dropped. Its stdout and stderr go to a log file, shown when it
/// does not come up.
pub struct MlServer {
    child: Option<Child>,
    /// The KServe v2 gRPC endpoint.
    pub grpc: SocketAddr,
    /// The KServe v2 REST endpoint (health checks).
    pub http: SocketAddr,
    metrics_port: u16,
    /// Working directory (MLServer writes `.metrics`, `.envs` there) and log.
    dir: tempfile::TempDir,
    starts: u32,
}

impl MlServer {
    /// Starts MLServer on free loopback ports and waits until it and the model
    /// are ready.
    /// A port found free may be taken by another process before MLServer binds
    /// it: then it starts again on other free ports, up to 5 times.
    pub fn start() -> MlServer {
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut server = MlServer {
                child: None,
                grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
                http: SocketAddr::from(([127, 0, 0, 1], free_port())),
                metrics_port: free_port(),
                dir: tempfile::tempdir().expect("a temporary directory"),
                starts: 0,
            };
            match server.try_start() {
                Ok(_) => return server,
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("MLServer exited before it was ready; its log:\n{log}"),
            }
        }
        panic!("MLServer found its ports taken 5 times; the last log:\n{last_log}")
    }

    /// The log of the latest start.
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("mlserver-{}.log", self.starts))
    }

    /// The log of the latest start, as text.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same ports and waits until it is ready;
    /// returns how long that took.
    pub fn start_again(&mut self) -> Duration {
        self.try_start()
            .unwrap_or_else(|log| panic!("MLServer exited before it was ready; its log:\n{log}"))
    }

    /// Starts the server on its ports and waits until it is ready; an `Err`
    /// with its log when it exits first.
    fn try_start(&mut self) -> Result<Duration, String> {
        assert!(self.child.is_none(), "MLServer is already running");
        let began = Instant::now();
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("a log file");
        let child = Command::new(venv().join("bin/mlserver"))
            .arg("start")
            .arg(python_dir().join("mlserver_model"))
            .current_dir(self.dir.path())
            .env("MLSERVER_HOST", "127.0.0.1")
            .env("MLSERVER_GRPC_PORT", self.grpc.port().to_string())
            .env("MLSERVER_HTTP_PORT", self.http.port().to_string())
            .env("MLSERVER_METRICS_PORT", self.metrics_port.to_string())
            .env("MLSERVER_PARALLEL_WORKERS", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("mlserver starts");
        self.child = Some(child);
        self.wait_ready(began)?;
        Ok(began.elapsed())
    }

    /// Polls `/v2/health/ready` and the model's `/ready` on the REST port and a
    /// connect to the gRPC port until all answer, the process exits, or
    /// [`MLSERVER_START_TIMEOUT`] passes; the last two fail with the log.
    fn wait_ready(&mut self, began: Instant) -> Result<(), String> {
        let ready = format!("/v2/models/{MODEL}/ready");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("(exit status {status})\n{}", self.log()));
            }
            let up = http_status(self.http, "/v2/health/ready") == Some(200)
                && http_status(self.http, &ready) == Some(200)
                && TcpStream::connect_timeout(&self.grpc, Duration::from_millis(200)).is_ok();
            if up {
                return Ok(());
            }
            if began.elapsed() > MLSERVER_START_TIMEOUT {
                self.stop();
                panic!(
                    "MLServer was not ready within {MLSERVER_START_TIMEOUT:?} (gRPC {}, HTTP {}); its log:\n{}",
                    self.grpc,
                    self.http,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status code of one plain HTTP/1.1 GET, or `None` when nothing answers.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::Write;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split(' ').nth(1)?.parse().ok()
}

/// One HTTP/1.1 POST of a JSON body; the status code and the response body.
pub fn http_post_json(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    use std::io::Write;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|error| panic!("cannot connect to {addr}: {error}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap_or_else(|error| panic!("cannot send POST {path}: {error}"));
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Held by a test that puts load through MLServer, so that no two such tests
/// share the CPUs at once (nextest runs each test in a process of its own): on a
/// 2-core machine two MLServers and two Python sources at a few hundred jobs/s
/// each are more than it has, and deadlines would fail for want of CPU. An
/// exclusive `flock` on `target/percore-mlserver.lock`, let go on drop.
pub struct Exclusive(#[allow(dead_code)] std::fs::File);

/// Waits for, then takes, the [`Exclusive`] lock.
pub fn exclusive() -> Exclusive {
    use std::os::fd::AsRawFd;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/percore-mlserver.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    // SAFETY: flock(2) on a descriptor this File owns and keeps open.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock {}", path.display());
    Exclusive(file)
}
