//! The throwaway PostgreSQL server `tests/run-all.sh` starts: its URL, a fresh
//! database per test (so tests run in parallel), and readers of the jobs and
//! `runs` tables.
//!
//! Without `PERCORE_TEST_PG_URL` every helper fails the test with how to run it:
//! a test that needs PostgreSQL never passes by skipping.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use percore::record::{JobRecord, Outcome, StageLatency};
use percore::sink::postgres::{PgUrl, PostgresOptions};
use percore::sink::run::RunIdentity;
use percore::sink::{self, ClassNames, RowNames, Sink, SinkError, SinkTarget};
use postgres::{Client, NoTls};

use super::Row;

/// The server's URL (a trust-authenticated role that may create databases).
pub const URL_ENV: &str = "PERCORE_TEST_PG_URL";

/// A role that logs in with a password only, and that password.
pub const PASSWORD_USER_ENV: &str = "PERCORE_TEST_PG_PASSWORD_USER";
pub const PASSWORD_ENV: &str = "PERCORE_TEST_PG_PASSWORD";

/// The value of `name`, or a failure saying how to get the server.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the PostgreSQL tests need the throwaway server that \
             tests/run-all.sh starts; run them through it, e.g. \
             `ulimit -l 8192; bash tests/run-all.sh --test postgres`"
        )
    })
}

/// The test server, logged in as the test role, database `postgres`.
pub fn server() -> PgUrl {
    PgUrl::parse(&env(URL_ENV)).unwrap_or_else(|why| panic!("{URL_ENV} {why}"))
}

/// A connection to `url`; failing to connect fails the test.
pub fn connect(url: &PgUrl) -> Client {
    url.client_config()
        .connect(NoTls)
        .unwrap_or_else(|error| panic!("cannot connect to {}: {error:?}", url.location()))
}

/// The devices [`record`] names by number.
const DEVICE_IDS: [&str; 2] = ["dev-a", "dev-b"];

/// The names a directly opened sink resolves records against: one class.
pub fn names() -> Arc<RowNames> {
    Arc::new(RowNames {
        classes: vec![ClassNames {
            all_outputs: true,
            class: "meter".into(),
            model: "mock".into(),
            compute_nodes: vec!["127.0.0.1:1".into()],
        }],
        run: RunIdentity::new("tests/common/pg.rs"),
    })
}

/// A record of device `device` (0: `dev-a`, 1: `dev-b`) at `tick_ms`.
pub fn record(device: u32, tick_ms: i64, outcome: Outcome, output: &'static [u8]) -> JobRecord {
    JobRecord {
        device: DEVICE_IDS[device as usize].into(),
        tick_ms,
        class: 0,
        shard: 1,
        outcome,
        outputs: vec![percore::record::Output::uint8(
            "OUTPUT0",
            Bytes::from_static(output),
        )],
        latency: StageLatency {
            schedule_lag_us: 3,
            fetch_us: Some(100),
            infer_us: Some(200),
            end_to_end_us: Some(310),
        },
        compute_node: Some(0),
        attempts: 2,
        ready_at: Instant::now(),
    }
}

/// The sink `options` open (no journal), or why the open was refused.
pub fn open_sink(options: PostgresOptions) -> Result<Box<dyn Sink>, SinkError> {
    sink::open(&SinkTarget::Postgres(options), names(), false).map(|opened| opened.sink)
}

/// Why opening the sink with `options` is refused; an open that succeeds fails the test.
pub fn open_error(options: PostgresOptions) -> SinkError {
    match open_sink(options) {
        Ok(_) => panic!("the open should have been refused"),
        Err(error) => error,
    }
}

/// A new, empty database named `percore_test_<name>` (a leftover of an earlier
/// run is dropped first), and its URL.
pub fn fresh_database(name: &str) -> PgUrl {
    let server = server();
    let database = format!("percore_test_{name}");
    let mut admin = connect(&server);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .and_then(|()| admin.batch_execute(&format!("CREATE DATABASE {database}")))
        .unwrap_or_else(|error| panic!("cannot create database {database}: {error:?}"));
    server.with_dbname(&database)
}

/// Runs `sql` on `url`'s database.
pub fn execute(url: &PgUrl, sql: &str) {
    connect(url)
        .batch_execute(sql)
        .unwrap_or_else(|error| panic!("{sql}: {error:?}"));
}

/// Every row of `table` by (device, tick), with each row's `run_id`.
pub fn read_rows(url: &PgUrl, table: &str) -> (Vec<Row>, Vec<Option<String>>) {
    let rows = connect(url)
        .query(
            &format!(
                "SELECT device_id, tick_ms, class, model, outcome, reason, output,
                        schedule_lag_us, fetch_us, infer_us, end_to_end_us, shard,
                        compute_node, attempts, run_id
                 FROM {table} ORDER BY device_id, tick_ms"
            ),
            &[],
        )
        .unwrap_or_else(|error| panic!("cannot read {table}: {error:?}"));
    let mut read = Vec::with_capacity(rows.len());
    let mut run_ids = Vec::with_capacity(rows.len());
    for row in &rows {
        read.push(Row {
            device_id: row.get(0),
            tick_ms: row.get(1),
            class: row.get(2),
            model: row.get(3),
            outcome: row.get(4),
            reason: row.get(5),
            output: row.get(6),
            schedule_lag_us: row.get(7),
            fetch_us: row.get(8),
            infer_us: row.get(9),
            end_to_end_us: row.get(10),
            shard: i64::from(row.get::<_, i32>(11)),
            compute_node: row.get(12),
            attempts: i64::from(row.get::<_, i32>(13)),
        });
        run_ids.push(row.get(14));
    }
    (read, run_ids)
}

/// One row of the `runs` table.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    pub host: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub config_digest: String,
    pub jobs: Option<i64>,
    pub ok: Option<i64>,
    pub failed: Option<i64>,
    pub skipped: Option<i64>,
}

/// Every row of `runs`, oldest first.
pub fn read_runs(url: &PgUrl) -> Vec<RunRow> {
    connect(url)
        .query(
            "SELECT run_id, host, started_at_ms, ended_at_ms, config_digest, jobs, ok, failed,
                    skipped FROM runs ORDER BY started_at_ms, run_id",
            &[],
        )
        .unwrap_or_else(|error| panic!("cannot read runs: {error:?}"))
        .iter()
        .map(|row| RunRow {
            run_id: row.get(0),
            host: row.get(1),
            started_at_ms: row.get(2),
            ended_at_ms: row.get(3),
            config_digest: row.get(4),
            jobs: row.get(5),
            ok: row.get(6),
            failed: row.get(7),
            skipped: row.get(8),
        })
        .collect()
}

/// `pg_ctl`, the data folder of the shared server and the OS user it runs as.
pub const CTL_ENV: &str = "PERCORE_TEST_PG_CTL";
pub const OS_USER_ENV: &str = "PERCORE_TEST_PG_OS_USER";

/// A PostgreSQL server of one test's own, in a temporary folder on a free
/// loopback port, for tests that stop and start it (an outage must not take
/// the shared server from the tests running beside it) or configure it (TLS).
/// Built from the same binaries as the shared server; stopped when dropped.
pub struct PrivateServer {
    /// Holds the data folder, the log and the socket; removed when dropped.
    dir: tempfile::TempDir,
    /// `pg_ctl`, beside `initdb` and `postgres`.
    ctl: std::path::PathBuf,
    /// The OS user the server runs as (`postgres` when the tests run as root).
    os_user: String,
    /// The loopback port it listens on.
    pub port: u16,
}

impl PrivateServer {
    /// initdb, `extra_conf` appended to its configuration, and a start. The
    /// superuser `percore_admin` logs in by trust over TCP.
    pub fn start(extra_conf: &str) -> PrivateServer {
        PrivateServer::start_with_files(&[], extra_conf)
    }

    /// As [`PrivateServer::start`], with `files` (name, contents) written into
    /// [`PrivateServer::dir`] first, mode 0600 and owned by the server's OS user
    /// (PostgreSQL refuses a key file others can read). `extra_conf` names
    /// them relative to the data folder: `ssl_key_file = '../server.key'`.
    pub fn start_with_files(files: &[(&str, &str)], extra_conf: &str) -> PrivateServer {
        let ctl = std::path::PathBuf::from(env(CTL_ENV));
        let os_user = env(OS_USER_ENV);
        let dir = tempfile::Builder::new()
            .prefix("percore-pg-private.")
            .tempdir_in("/tmp")
            .expect("a temporary folder");
        give(dir.path(), &os_user);
        for (name, contents) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("a file for the server");
            let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
            std::fs::set_permissions(&path, private).expect("mode 0600");
            give(&path, &os_user);
        }
        let initdb = ctl.with_file_name("initdb");
        let data = dir.path().join("data");
        let server = PrivateServer {
            port: free_port(),
            dir,
            ctl,
            os_user,
        };
        let output = server
            .command(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-U", "percore_admin", "-A", "trust", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\n{extra_conf}\n",
            server.port,
            server.dir.path().display()
        );
        std::fs::write(data.join("percore-test.conf"), conf).expect("the server's config");
        let mut main_conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(&mut main_conf, b"include 'percore-test.conf'\n")
            .expect("postgresql.conf");
        server.start_again();
        server
    }

    /// The folder the data, the log and anything a test puts beside them
    /// (certificates) live in; readable by the server's OS user.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The superuser's URL, database `postgres`.
    pub fn url(&self) -> PgUrl {
        PgUrl::parse(&format!(
            "postgresql://percore_admin@127.0.0.1:{}/postgres",
            self.port
        ))
        .expect("a url")
    }

    /// Stops the server (`fast`: connections are closed, nothing committed is lost).
    pub fn stop(&self) {
        self.ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Starts the stopped server again, on the same port, and waits for it.
    pub fn start_again(&self) {
        let log = self.dir.path().join("server.log");
        let log = log.to_string_lossy().into_owned();
        self.ctl(&["-l", &log, "-w", "-t", "30", "start"]);
    }

    /// The server's log so far, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let output = self
            .command(&self.ctl)
            .arg("-D")
            .arg(&data)
            .args(args)
            .output()
            .expect("pg_ctl runs");
        assert!(
            output.status.success(),
            "pg_ctl {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// `program` as the server's OS user, from `/` (which that user can enter).
    fn command(&self, program: &std::path::Path) -> std::process::Command {
        let mut command = if self.os_user == whoami() {
            std::process::Command::new(program)
        } else {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", &self.os_user, "--"]).arg(program);
            command
        };
        command.current_dir("/");
        command
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command(&self.ctl)
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Makes `os_user` the owner of `path` (the server runs as that user).
fn give(path: &std::path::Path, os_user: &str) {
    let chown = std::process::Command::new("chown")
        .arg(format!("{os_user}:"))
        .arg(path)
        .status()
        .expect("chown runs");
    assert!(chown.success(), "cannot give {path:?} to {os_user}");
}

/// This process's OS user name.
fn whoami() -> String {
    std::process::Command::new("id")
        .arg("-un")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A loopback port nothing listens on (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
