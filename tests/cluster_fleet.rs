//! Several `percore run` processes sharing one fleet through a real etcd
//! (Debian's etcd-server, started by the harness on loopback ports), end to end:
//! 30,000 devices every 10 s (3,000 jobs/s in all), one SQLite file for every
//! instance, in-process mock nodes.
//!
//! The file is prepared with a trigger that records every second write of a
//! (device, tick): the sink's upsert would otherwise hide it. Each check window
//! starts once every instance has logged that it applied the membership, plus
//! the safety delay, and lasts one period, so every device has exactly one tick
//! due in it; every such tick must be in the table once, written by the
//! instance that rendezvous hashing over the live instances names.
//!
//! - `a_fleet_on_one_etcd_survives_a_join_and_a_kill`: three dispatchers, every
//!   tick once; a fourth joins (≤ 1.5 × 1/4 of the devices move, all to it,
//!   each at most one handover gap); one is killed with SIGKILL (its devices
//!   resume on the survivors within lease TTL + safety delay + one period + 1 s
//!   of the kill; nobody else's device misses a tick).
//! - `a_fleet_on_three_etcd_members_rides_out_their_outages`: three dispatchers
//!   over a three-member etcd; one member killed, then all of them stopped for
//!   10 s and started again: every tick of the whole span once, by its owner;
//!   afterwards a dispatcher that leaves is seen (the others watch again) and
//!   its devices move.

mod common;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::etcd::Etcd;
use percore::devices::{stable_hash, Fleet};
use percore::mock::{MockKind, MockOptions};
use percore::placement::{Placement, Rendezvous};
use percore::record::DeviceIndex;
use percore::tick::{phase_ms, ticks_in};

const DEVICES: usize = 30_000;
const PERIOD_MS: i64 = 10_000;
const DEADLINE_MS: i64 = 1_000;
/// `[cluster] safety_delay_ms`: the deadline, the least allowed.
const SAFETY_DELAY_MS: i64 = 1_000;
/// Added to a window's start beyond the delay: the test reads an instance's
/// log line a little after the instance applied what it says.
const MARGIN_MS: i64 = 200;
/// The handover skew allowed between the loser and the gainer applying one
/// membership (the README's bound), for a loaded 2-core machine.
const SKEW_MS: i64 = 1_000;
/// etcd checks lease expiry every 500 ms.
const LEASE_CHECK_MS: i64 = 500;
/// Before a SIGKILL, time for the victim's writer to commit the rows of the
/// window just checked (a killed instance loses what it had not written).
const BEFORE_KILL_MS: i64 = 1_500;
const CLUSTER: &str = "fleet";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

fn sleep_until(unix_ms: i64) {
    let left = unix_ms - now_ms();
    if left > 0 {
        std::thread::sleep(Duration::from_millis(left as u64));
    }
}

/// One `percore run` process, instance `name`; killed when dropped.
struct Dispatcher {
    /// Its instance id.
    name: String,
    /// The process.
    child: Child,
    /// Its `--summary-json`.
    summary: PathBuf,
    /// Its stderr so far, read by a thread as it comes.
    log: Arc<Mutex<String>>,
    /// The reader of its stderr.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Where the instances and their mocks are.
struct Setup<'a> {
    /// The test's folder: configs, the database, the summaries.
    dir: &'a Path,
    /// etcd's client URLs as a TOML array's inside.
    etcd: String,
    /// The mock data source and compute node.
    source: String,
    compute: String,
    /// `[cluster] lease_ttl_s`.
    ttl_s: u64,
}

impl Setup<'_> {
    fn start(&self, name: &str, cpu: usize) -> Dispatcher {
        let dir = self.dir;
        std::fs::write(
            dir.join(format!("tuning-{name}.toml")),
            format!("shard_cpus = [{cpu}]\nio_memory_kib = 512\n"),
        )
        .expect("tuning");
        let text = format!(
            "tuning = \"tuning-{name}.toml\"\n\
             [devices]\ngenerate = {{ count = {DEVICES}, mix = {{ meter = 1 }} }}\n\
             [sink]\nkind = \"sqlite\"\npath = \"jobs.db\"\n\
             [cluster]\nname = \"{CLUSTER}\"\netcd = [{etcd}]\ninstance = \"{name}\"\n\
             lease_ttl_s = {ttl}\nsafety_delay_ms = {SAFETY_DELAY_MS}\n\
             [[classes]]\nname = \"meter\"\nmodel = \"mock\"\nperiod_ms = {PERIOD_MS}\n\
             deadline_ms = {DEADLINE_MS}\n\
             data_sources = [\"{source}\"]\ncompute_nodes = [\"{compute}\"]\n",
            etcd = self.etcd,
            ttl = self.ttl_s,
            source = self.source,
            compute = self.compute,
        );
        let config = dir.join(format!("percore-{name}.toml"));
        std::fs::write(&config, text).expect("the config");
        let summary = dir.join(format!("summary-{name}.json"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
            .current_dir(dir)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--duration", "300s", "--admin", "none", "--summary-json"])
            .arg(&summary)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("percore starts");
        let pipe = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let into = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut log = into.lock().expect("the log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Dispatcher {
            name: name.to_string(),
            child,
            summary,
            log,
            reader: Some(reader),
        }
    }
}

impl Dispatcher {
    fn log(&self) -> String {
        self.log.lock().expect("the log").clone()
    }

    /// The log's length now: where [`Dispatcher::wait_for`] starts looking.
    fn mark(&self) -> usize {
        self.log.lock().expect("the log").len()
    }

    /// Waits (at most `limit`) until the log after `from` has `needle`;
    /// returns when the test saw it.
    fn wait_for(&mut self, needle: &str, from: usize, limit: Duration) -> i64 {
        let began = Instant::now();
        loop {
            if self.log()[from..].contains(needle) {
                return now_ms();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log());
            }
            assert!(
                began.elapsed() < limit,
                "{}: no {needle:?} within {limit:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no summary, no revoked lease, its last rows lost.
    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and the run's end: its summary (the run must exit 0).
    fn stop(mut self) -> serde_json::Value {
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let began = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "{} still running 60 s after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let log = self.log();
        assert!(status.success(), "{}: {status}\n{log}", self.name);
        let text = std::fs::read_to_string(&self.summary).expect("the summary");
        let summary: serde_json::Value = serde_json::from_str(&text).expect("summary JSON");
        assert_eq!(summary["cluster"]["instance"], self.name.as_str());
        summary
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The jobs table made before any instance opens it, with a trigger that
/// keeps every overwrite of a (device, tick) in `rewritten`.
fn prepare_database(path: &Path) {
    let conn = rusqlite::Connection::open(path).expect("the database");
    conn.execute_batch(percore::sink::sqlite::SCHEMA)
        .expect("the jobs table");
    conn.execute_batch(
        "CREATE TABLE rewritten (device_id TEXT, tick_ms INTEGER, first_run TEXT, second_run TEXT);
         CREATE TRIGGER a_tick_written_twice BEFORE UPDATE ON jobs BEGIN
           INSERT INTO rewritten VALUES (old.device_id, old.tick_ms, old.run_id, new.run_id);
         END;",
    )
    .expect("the trigger");
}

/// Every row: (device, tick) → run id; and what the trigger saw.
struct Written {
    /// Every row's run, by (device, tick).
    by_key: BTreeMap<(String, i64), String>,
    /// Per device, its ticks in order.
    by_device: BTreeMap<String, Vec<i64>>,
    /// Every (device, tick, first run, second run) written twice.
    twice: Vec<(String, i64, Option<String>, Option<String>)>,
    /// Every run id in the `runs` table.
    runs: Vec<String>,
}

fn read_written(path: &Path) -> Written {
    let conn = rusqlite::Connection::open(path).expect("the database");
    let mut by_key = BTreeMap::new();
    let mut by_device: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut statement = conn
        .prepare("SELECT device_id, tick_ms, run_id FROM jobs ORDER BY device_id, tick_ms")
        .expect("query");
    for row in statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .expect("rows")
    {
        let (device, tick, run) = row.expect("a row");
        by_device.entry(device.clone()).or_default().push(tick);
        by_key.insert((device, tick), run);
    }
    let mut statement = conn
        .prepare("SELECT device_id, tick_ms, first_run, second_run FROM rewritten")
        .expect("query");
    let twice = statement
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .expect("rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("the rewrites");
    let mut statement = conn.prepare("SELECT run_id FROM runs").expect("query");
    let runs = statement
        .query_map([], |row| row.get(0))
        .expect("rows")
        .collect::<Result<Vec<String>, _>>()
        .expect("the runs");
    Written {
        by_key,
        by_device,
        twice,
        runs,
    }
}

/// Each device's owner among `instances` (rendezvous, as the instances place).
fn owners(fleet: &Fleet, instances: &[&str]) -> BTreeMap<String, String> {
    let rendezvous = Rendezvous::new(instances.iter().map(|s| s.to_string()).collect());
    (0..fleet.len() as DeviceIndex)
        .map(|device| {
            let id = fleet.id(device);
            let owner = rendezvous
                .place(id, stable_hash(id))
                .expect("an owner among live instances");
            (id.to_string(), rendezvous.names()[owner].clone())
        })
        .collect()
}

/// Every tick due in `[start, end)` is in the table once, written by the run
/// of the device's owner; and nothing else is in the window. Returns how
/// many ticks were due.
fn assert_window(
    what: &str,
    written: &Written,
    fleet: &Fleet,
    window: (i64, i64),
    owner: &BTreeMap<String, String>,
    run_of: &BTreeMap<String, String>,
) -> usize {
    let (start, end) = window;
    assert!(
        end - start >= PERIOD_MS,
        "{what}: a window under one period"
    );
    let mut due = 0;
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for device in 0..fleet.len() as DeviceIndex {
        let id = fleet.id(device);
        let phase = phase_ms(stable_hash(id), PERIOD_MS as u64);
        let expected_run = &run_of[&owner[id]];
        for tick in ticks_in(start, end, phase, PERIOD_MS as u64) {
            due += 1;
            match written.by_key.get(&(id.to_string(), tick)) {
                None => missing.push((id.to_string(), tick)),
                Some(run) if run != expected_run => {
                    let by = run_of.iter().find(|(_, r)| *r == run).map(|(n, _)| n);
                    wrong.push((id.to_string(), tick, by.cloned(), owner[id].clone()));
                }
                Some(_) => {}
            }
        }
    }
    let in_window = written
        .by_key
        .keys()
        .filter(|(_, tick)| (start..end).contains(tick))
        .count();
    assert!(
        missing.is_empty() && wrong.is_empty() && in_window == due,
        "{what}: window {window:?}: {due} ticks due, {in_window} rows; {} missing (first {:?}); \
         {} by another instance than the owner (first (device, tick, by, owner) {:?})",
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        wrong.len(),
        wrong.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        due >= DEVICES,
        "{what}: every device has a tick in a period"
    );
    due
}

/// The longest time between two consecutive rows of `device` with both
/// ticks in `[start, end)`.
fn longest_gap(written: &Written, device: &str, (start, end): (i64, i64)) -> i64 {
    let ticks: Vec<i64> = written.by_device[device]
        .iter()
        .copied()
        .filter(|tick| (start..end).contains(tick))
        .collect();
    ticks
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or(0)
}

/// The README's handover gap: consecutive rows of a moved device at most
/// this far apart when the gainer starts it `delay_ms` (safety delay and
/// skew) after the loser stopped it.
fn handover_gap_bound(delay_ms: i64) -> i64 {
    PERIOD_MS * ((delay_ms + PERIOD_MS - 1) / PERIOD_MS + 1)
}

/// The mock data source and compute node every instance of a test shares.
fn mocks() -> (percore::mock::MockNode, percore::mock::MockNode) {
    (
        common::start_mock(MockKind::Source, MockOptions::default()),
        common::start_mock(MockKind::Compute, MockOptions::default()),
    )
}

/// Waits until every instance in `dispatchers` logged (after its mark) that
/// it applied a membership of `count` instances; returns the last sighting.
fn all_applied(dispatchers: &mut [&mut Dispatcher], marks: &[usize], count: usize) -> i64 {
    let needle = format!("cluster: {count} live instances at revision");
    dispatchers
        .iter_mut()
        .zip(marks)
        .map(|(d, &mark)| d.wait_for(&needle, mark, Duration::from_secs(30)))
        .max()
        .expect("instances")
}

#[test]
fn a_fleet_on_one_etcd_survives_a_join_and_a_kill() {
    let etcd = Etcd::single();
    let (source, compute) = mocks();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    prepare_database(&db);
    const TTL_S: i64 = 2;
    let setup = Setup {
        dir: dir.path(),
        etcd: etcd.toml_urls(),
        source: source.addr.to_string(),
        compute: compute.addr.to_string(),
        ttl_s: TTL_S as u64,
    };
    let cpus = common::shard_cpus();
    let cpu = |i: usize| cpus[i % cpus.len()];
    let fleet = Fleet::generate(DEVICES, &[(0, 1)]);

    // Three instances: each applies the membership of three.
    let mut d1 = setup.start("d1", cpu(0));
    let mut d2 = setup.start("d2", cpu(1));
    let mut d3 = setup.start("d3", cpu(2));
    let seen = all_applied(&mut [&mut d1, &mut d2, &mut d3], &[0, 0, 0], 3);
    let w1 = (seen + SAFETY_DELAY_MS + MARGIN_MS, 0);
    let w1 = (w1.0, w1.0 + PERIOD_MS);
    sleep_until(w1.1 + MARGIN_MS);

    // A fourth joins.
    let marks = [d1.mark(), d2.mark(), d3.mark(), 0];
    let joined = now_ms();
    let mut d4 = setup.start("d4", cpu(3));
    let seen = all_applied(&mut [&mut d1, &mut d2, &mut d3, &mut d4], &marks, 4);
    let join_skew = seen - joined;
    let w2 = (seen + SAFETY_DELAY_MS + MARGIN_MS, 0);
    let w2 = (w2.0, w2.0 + PERIOD_MS);
    // `percore status` shows the four, and their device counts add up to the
    // fleet once each has reported what it runs.
    let prefix = format!("/percore/{CLUSTER}/dispatchers/");
    let began = Instant::now();
    let reported = loop {
        let total: u64 = etcd
            .get_prefix(&prefix)
            .iter()
            .filter_map(|(_, value, _)| {
                serde_json::from_str::<serde_json::Value>(value).ok()?["devices"].as_u64()
            })
            .sum();
        if total == DEVICES as u64 || began.elapsed() > Duration::from_secs(10) {
            break total;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        reported,
        DEVICES as u64,
        "the registrations' device counts: {:?}",
        etcd.get_prefix(&prefix)
    );
    let status = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["status", "--etcd", &etcd.urls()[0], "--cluster", CLUSTER])
        .output()
        .expect("percore status");
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && status_text.contains("cluster fleet: 4 dispatchers"),
        "{status_text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    sleep_until(w2.1 + BEFORE_KILL_MS);

    // d1 dies without a word.
    let marks = [d2.mark(), d3.mark(), d4.mark()];
    let killed = now_ms();
    d1.kill_9();
    let seen = all_applied(&mut [&mut d2, &mut d3, &mut d4], &marks, 3);
    let w3 = (seen + SAFETY_DELAY_MS + MARGIN_MS, 0);
    let w3 = (w3.0, w3.0 + PERIOD_MS);
    sleep_until(w3.1 + MARGIN_MS);

    let summaries = [d2.stop(), d3.stop(), d4.stop()];
    source.stop();
    compute.stop();
    let written = read_written(&db);
    assert!(
        written.twice.is_empty(),
        "{} (device, tick) written twice, e.g. {:?}",
        written.twice.len(),
        written.twice.iter().take(3).collect::<Vec<_>>()
    );
    let mut run_of: BTreeMap<String, String> = ["d2", "d3", "d4"]
        .iter()
        .zip(&summaries)
        .map(|(name, s)| (name.to_string(), s["run_id"].as_str().unwrap().to_string()))
        .collect();
    let d1_runs: Vec<&String> = written
        .runs
        .iter()
        .filter(|run| !run_of.values().any(|known| known == *run))
        .collect();
    assert_eq!(
        d1_runs.len(),
        1,
        "one run besides d2-d4's: {:?}",
        written.runs
    );
    run_of.insert("d1".into(), d1_runs[0].clone());

    let three = owners(&fleet, &["d1", "d2", "d3"]);
    let four = owners(&fleet, &["d1", "d2", "d3", "d4"]);
    let survivors = owners(&fleet, &["d2", "d3", "d4"]);
    assert_window("three instances", &written, &fleet, w1, &three, &run_of);
    assert_window("four instances", &written, &fleet, w2, &four, &run_of);
    assert_window(
        "after d1's death",
        &written,
        &fleet,
        w3,
        &survivors,
        &run_of,
    );

    // The join moved about a quarter of the devices, all to d4.
    let moved: Vec<&String> = three.keys().filter(|id| three[*id] != four[*id]).collect();
    assert!(
        moved.iter().all(|id| four[*id] == "d4"),
        "only to the new instance"
    );
    assert!(
        !moved.is_empty() && moved.len() * 4 * 2 <= DEVICES * 3,
        "{} of {DEVICES} devices moved at the join (at most 1.5 × 1/4)",
        moved.len()
    );
    // None lost beyond the handover gap; a device that stayed lost nothing.
    let join_bound = handover_gap_bound(SAFETY_DELAY_MS + SKEW_MS.max(join_skew));
    let mut longest_join_gap = 0;
    for (id, owner) in &three {
        let gap = longest_gap(&written, id, (w1.0, w2.1));
        if four[id] == *owner {
            assert_eq!(gap, PERIOD_MS, "{id} stayed on {owner} yet missed a tick");
        } else {
            assert!(
                gap <= join_bound,
                "{id}: {gap} ms between two rows at the join"
            );
            longest_join_gap = longest_join_gap.max(gap);
        }
    }

    // d1's devices resumed on the survivors; nobody else's missed a tick.
    let resume_bound = TTL_S * 1_000 + SAFETY_DELAY_MS + PERIOD_MS + 1_000;
    let gap_bound = handover_gap_bound(SAFETY_DELAY_MS + TTL_S * 1_000 + LEASE_CHECK_MS + SKEW_MS);
    let (mut longest_unserved, mut longest_kill_gap, mut of_d1) = (0, 0, 0);
    for (id, owner) in &four {
        let ticks = &written.by_device[id];
        if owner == "d1" {
            of_d1 += 1;
            let next = *ticks
                .iter()
                .find(|&&tick| tick >= killed)
                .unwrap_or_else(|| panic!("{id}: no tick after d1 was killed"));
            let by = &written.by_key[&(id.clone(), next)];
            assert_eq!(
                *by, run_of[&survivors[id]],
                "{id} at {next}: not its new owner"
            );
            let unserved = next - killed;
            assert!(
                unserved < resume_bound,
                "{id}: first tick {unserved} ms after the kill (bound {resume_bound} ms)"
            );
            let gap = longest_gap(&written, id, (w2.0, w3.1));
            assert!(gap <= gap_bound, "{id}: {gap} ms between two rows");
            longest_unserved = longest_unserved.max(unserved);
            longest_kill_gap = longest_kill_gap.max(gap);
        } else {
            let gap = longest_gap(&written, id, (w2.0, w3.1));
            assert_eq!(gap, PERIOD_MS, "{id} ({owner}) missed a tick when d1 died");
        }
    }
    assert!(of_d1 > 0);
    eprintln!(
        "join: {} of {DEVICES} devices moved, longest gap {longest_join_gap} ms (bound {join_bound}); \
         kill -9: {of_d1} devices resumed, longest time from the kill to their next tick \
         {longest_unserved} ms (bound {resume_bound}), longest gap between two rows \
         {longest_kill_gap} ms (bound {gap_bound})",
        moved.len()
    );
}

#[test]
fn a_fleet_on_three_etcd_members_rides_out_their_outages() {
    let mut etcd = Etcd::cluster();
    let (source, compute) = mocks();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    prepare_database(&db);
    let setup = Setup {
        dir: dir.path(),
        etcd: etcd.toml_urls(),
        source: source.addr.to_string(),
        compute: compute.addr.to_string(),
        ttl_s: 3,
    };
    let cpus = common::shard_cpus();
    let cpu = |i: usize| cpus[i % cpus.len()];
    let fleet = Fleet::generate(DEVICES, &[(0, 1)]);

    let mut d1 = setup.start("d1", cpu(0));
    let mut d2 = setup.start("d2", cpu(1));
    let mut d3 = setup.start("d3", cpu(2));
    let seen = all_applied(&mut [&mut d1, &mut d2, &mut d3], &[0, 0, 0], 3);
    let start = seen + SAFETY_DELAY_MS + MARGIN_MS;
    sleep_until(start + 3_000);

    // One member killed: nothing to see.
    etcd.kill(0);
    std::thread::sleep(Duration::from_secs(5));

    // All of them stopped for 10 s: the dispatchers say so and go on.
    let marks = [d1.mark(), d2.mark(), d3.mark()];
    etcd.kill_all();
    for (d, &mark) in [&mut d1, &mut d2, &mut d3].into_iter().zip(&marks) {
        d.wait_for("etcd unreachable", mark, Duration::from_secs(10));
    }
    std::thread::sleep(Duration::from_secs(10));
    etcd.restart_all();
    for (d, &mark) in [&mut d1, &mut d2, &mut d3].into_iter().zip(&marks) {
        d.wait_for("etcd reachable again", mark, Duration::from_secs(20));
    }
    std::thread::sleep(Duration::from_secs(2));

    // They watch again: d3 leaves, and the others take its devices.
    let marks = [d1.mark(), d2.mark()];
    let left = now_ms();
    let s3 = d3.stop();
    let seen = all_applied(&mut [&mut d1, &mut d2], &marks, 2);
    let after = (seen + SAFETY_DELAY_MS + MARGIN_MS, 0);
    let after = (after.0, after.0 + PERIOD_MS);
    sleep_until(after.1 + MARGIN_MS);
    let (s1, s2) = (d1.stop(), d2.stop());
    source.stop();
    compute.stop();

    let written = read_written(&db);
    assert!(
        written.twice.is_empty(),
        "{} (device, tick) written twice, e.g. {:?}",
        written.twice.len(),
        written.twice.iter().take(3).collect::<Vec<_>>()
    );
    let run_of: BTreeMap<String, String> = [("d1", &s1), ("d2", &s2), ("d3", &s3)]
        .iter()
        .map(|(name, s)| (name.to_string(), s["run_id"].as_str().unwrap().to_string()))
        .collect();
    let due = assert_window(
        "through a member's death and a full outage",
        &written,
        &fleet,
        (start, left),
        &owners(&fleet, &["d1", "d2", "d3"]),
        &run_of,
    );
    assert_window(
        "after d3 left",
        &written,
        &fleet,
        after,
        &owners(&fleet, &["d1", "d2"]),
        &run_of,
    );
    eprintln!(
        "{due} ticks due over {} s through the outages, each written once by its owner",
        (left - start) / 1_000
    );
}
