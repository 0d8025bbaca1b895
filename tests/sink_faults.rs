//! A sink that fails is seen at once. A permanent error (full disk) stops the run
//! within a second, with a non-zero exit and a summary that counts only the rows
//! committed; a transient one (a lock held by another process) is retried until
//! every row is written, with `/healthz` answering 503 while it lasts; a database
//! that cannot be written is refused at start.
//!
//! The full and read-only file systems are real tmpfs mounts: the tests run as
//! root (as CI does) and say so clearly when they cannot mount.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use percore::admin::AdminServer;
use percore::config::{Config, GrpcConfig, SinkConfig};
use percore::dispatcher::{self, Load, RunOptions};
use percore::mock::{MockKind, MockOptions, ServiceTime};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    /// The mount point, inside a temporary directory.
    path: PathBuf,
    /// Keeps the mount point's parent alive until after the unmount.
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("a mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} ({status}): these tests need root, as CI has",
            path.display()
        );
        Tmpfs { path, _dir: dir }
    }

    fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot remount {} read-only",
            self.path.display()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn a_full_disk_stops_the_run_at_once_and_counts_only_committed_rows() {
    let disk = Tmpfs::mount("1m");
    let source = common::start_mock(
        MockKind::Source,
        MockOptions {
            payload_bytes: 256,
            ..MockOptions::default()
        },
    );
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = disk.path.join("jobs.db");
    // 5,000 rows a second fill 1 MiB of database and WAL within a few seconds.
    let config = common::write_config_file(
        dir.path(),
        source.addr,
        compute.addr,
        5_000,
        1_000,
        500,
        &db,
        "",
    );
    let summary_path = dir.path().join("summary.json");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--admin", "none", "--duration", "60", "--config"])
        .arg(&config)
        .arg("--summary-json")
        .arg(&summary_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("percore starts");
    // Note when percore says the sink failed, then when it exits.
    let stderr = BufReader::new(child.stderr.take().expect("a stderr pipe"));
    let mut failure_seen: Option<Instant> = None;
    let mut lines = Vec::new();
    for line in stderr.lines() {
        let Ok(line) = line else { break };
        if failure_seen.is_none() && line.contains("stopping the run") {
            failure_seen = Some(Instant::now());
        }
        lines.push(line);
    }
    let status = child.wait().expect("percore ends");
    let ended = Instant::now();
    source.stop();
    compute.stop();
    let stderr = lines.join("\n");

    assert_eq!(status.code(), Some(3), "exit status; stderr:\n{stderr}");
    let failure_seen = failure_seen.unwrap_or_else(|| panic!("no failure line in:\n{stderr}"));
    assert!(
        ended.duration_since(failure_seen) < Duration::from_millis(1_500),
        "percore exited {:?} after the sink failed",
        ended.duration_since(failure_seen)
    );
    assert!(
        ended.duration_since(started) < Duration::from_secs(30),
        "the run went on for {:?} after its disk was full",
        ended.duration_since(started)
    );
    assert!(
        stderr.contains("database or disk is full"),
        "the cause is not named:\n{stderr}"
    );
    let summary = common::read_summary_json(&summary_path);
    let committed = common::count_rows(&db);
    assert!(
        committed > 0,
        "nothing was committed before the disk filled"
    );
    assert_eq!(
        summary["rows_written"].as_u64(),
        Some(committed),
        "{summary}"
    );
    assert!(
        summary["sink_error"]
            .as_str()
            .is_some_and(|error| error.contains("database or disk is full")),
        "{summary}"
    );
    let jobs = summary["jobs"].as_u64().expect("jobs");
    assert_eq!(
        summary["results_not_written"].as_u64(),
        Some(jobs - committed),
        "{summary}"
    );
}

#[test]
fn a_lock_held_past_the_busy_timeout_is_retried_until_every_row_is_written() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            service_time: ServiceTime::Fixed(Duration::from_millis(1)),
            ..MockOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let spec = common::ClassSpec {
        name: "meter",
        model: "mock",
        period_ms: 1_000,
        deadline_ms: 500,
    };
    let mut config: Config = common::config(
        vec![common::class(spec, source.addr, compute.addr)],
        2_000,
        db.clone(),
        GrpcConfig::default(),
    );
    config.sink = SinkConfig::Sqlite {
        path: db.clone(),
        busy_timeout: Duration::from_millis(100),
        commit_delay: Duration::ZERO,
        journal: None,
    };
    let admin = AdminServer::start("127.0.0.1:0".parse().expect("an address")).expect("admin");
    let admin_addr = admin.addr();
    let options = RunOptions {
        duration: Some(Duration::from_secs(5)),
        load: Load::Ticks,
        metrics: Some(admin.publisher()),
        ..RunOptions::default()
    };
    let run_config = config.clone();
    let run = std::thread::spawn(move || dispatcher::run(&run_config, &options));

    // Another process's write lock, held 2 s, from 1.5 s into the run: twenty
    // times the busy timeout.
    std::thread::sleep(Duration::from_millis(1_500));
    let other = rusqlite::Connection::open(&db).expect("a second connection");
    other
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("the lock is taken");
    let locked_until = Instant::now() + Duration::from_secs(2);
    let mut unhealthy = None;
    while Instant::now() < locked_until {
        let health = http_get(admin_addr, "/healthz");
        if health.starts_with("HTTP/1.1 503") {
            unhealthy = Some(health);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    other.execute_batch("ROLLBACK").expect("the lock is let go");
    drop(other);

    let summary = run
        .join()
        .expect("the run thread")
        .expect("the run succeeds once the lock is gone");
    let health_after = http_get(admin_addr, "/healthz");
    admin.stop();
    source.stop();
    compute.stop();

    let unhealthy = unhealthy.expect("/healthz never answered 503 while the sink was locked");
    assert!(unhealthy.contains("database is locked"), "{unhealthy}");
    assert!(health_after.ends_with("\r\n\r\nok\n"), "{health_after}");
    assert_eq!(summary.sink_error, None);
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
}

/// A WAL database whose `-wal` file was left behind, as after a crash.
fn database_with_leftover_wal(dir: &Path) {
    let db = dir.join("jobs.db");
    let writer = rusqlite::Connection::open(&db).expect("a database");
    writer
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .expect("a write");
    // Copy the files while the connection is open, so the WAL is still there.
    let copy = dir.join("copy");
    std::fs::create_dir(&copy).expect("a folder");
    for suffix in ["", "-wal"] {
        std::fs::copy(
            format!("{}{suffix}", db.display()),
            format!("{}/jobs.db{suffix}", copy.display()),
        )
        .expect("a copy");
    }
    drop(writer);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    for suffix in ["", "-wal"] {
        std::fs::rename(
            format!("{}/jobs.db{suffix}", copy.display()),
            format!("{}{suffix}", db.display()),
        )
        .expect("a move");
    }
}

#[test]
fn a_read_only_database_with_a_leftover_wal_is_refused_at_start() {
    let disk = Tmpfs::mount("4m");
    database_with_leftover_wal(&disk.path);
    assert!(disk.path.join("jobs.db-wal").exists());
    disk.remount_read_only();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = disk.path.join("jobs.db");
    // No node needs to answer: the run must not get that far.
    let unused: SocketAddr = "127.0.0.1:9".parse().expect("an address");
    let config = common::write_config_file(dir.path(), unused, unused, 10, 1_000, 500, &db, "");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--admin", "none", "--duration", "30", "--config"])
        .arg(&config)
        .output()
        .expect("percore runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused only after {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&db.display().to_string()) && stderr.contains("Read-only file system"),
        "the error does not name the file and the cause:\n{stderr}"
    );
}
