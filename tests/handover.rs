//! Handover between instances, driven in-process through the coordinator's
//! `ClusterEvent` channel as the etcd thread would drive it (no etcd here):
//! two dispatcher instances, `a` and `b`, share one fleet and one SQLite file
//! and are told the same memberships. A device an instance loses stops at
//! once — a job it has in flight ends and is written — and one it gains starts
//! at its first tick after the safety delay; no tick is ever written twice,
//! and a moved device's ticks have no longer gap than the README states.
//!
//! Also: compute nodes registered for a class (`ClusterEvent::Nodes`) take
//! its traffic from then on, and rows name the node that answered.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::ClassSpec;
use percore::cluster::event::{ClusterEvent, NodeRecord};
use percore::config::{ClusterConfig, Config, GrpcConfig};
use percore::dispatcher::{self, Load, RunOptions};
use percore::mock::{MockKind, MockOptions, ServiceTime};
use percore::summary::RunSummary;

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 500,
    deadline_ms: 400,
};

/// Longer than the deadline, and not a multiple of the period, so gains start
/// mid-cycle.
const SAFETY_DELAY_MS: u64 = 650;

/// How late, at most, the gaining coordinator may read a membership after the
/// losing one stopped the device (the *skew* of the README's bound). Both read
/// from channels the test fills at the same moment; this allows for a loaded
/// machine's scheduling.
const SKEW_ALLOWANCE_MS: i64 = 250;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// The config of instance `name`: one shard on its own CPU (when there are two).
fn instance(base: &Config, name: &str, cpu: usize) -> Config {
    let mut config = base.clone();
    config.tuning.shard_cpus = vec![cpu];
    config.cluster = ClusterConfig {
        etcd: vec!["http://127.0.0.1:2379".into()],
        instance: name.into(),
        safety_delay_ms: Some(SAFETY_DELAY_MS),
        ..ClusterConfig::default()
    };
    config
}

/// Rows by device: (tick, run id, outcome, end-to-end µs).
type Ticks = BTreeMap<String, Vec<(i64, String, String, Option<i64>)>>;

fn rows_by_device(db: &Path) -> Ticks {
    let conn = rusqlite::Connection::open(db).expect("the database");
    let mut statement = conn
        .prepare("SELECT device_id, tick_ms, run_id, outcome, end_to_end_us FROM jobs ORDER BY device_id, tick_ms")
        .expect("query");
    let mut by_device = Ticks::new();
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<i64>>(4)?,
            ))
        })
        .expect("rows");
    for row in rows {
        let (device, tick, run, outcome, e2e) = row.expect("a row");
        by_device
            .entry(device)
            .or_default()
            .push((tick, run, outcome, e2e));
    }
    by_device
}

#[test]
fn devices_move_between_instances_without_a_tick_twice() {
    let options = MockOptions {
        // Jobs long enough that a device lost mid-job is common.
        service_time: ServiceTime::Fixed(Duration::from_millis(120)),
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, options);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let base = common::config(
        vec![common::class(METER, source.addr, compute.addr)],
        300,
        db.clone(),
        GrpcConfig::default(),
    );
    let cpus = common::shard_cpus();
    let configs = [
        instance(&base, "a", cpus[0]),
        instance(&base, "b", *cpus.last().unwrap_or(&cpus[0])),
    ];
    let duration = Duration::from_millis(7_500);
    let mut events = Vec::new();
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<RunSummary, String>)>();
    std::thread::scope(|scope| {
        for (index, config) in configs.iter().enumerate() {
            let (tx, rx) = flume::bounded(16);
            events.push(tx);
            let done = done_tx.clone();
            scope.spawn(move || {
                let options = RunOptions {
                    duration: Some(duration),
                    load: Load::Ticks,
                    cluster: Some(rx),
                    ..RunOptions::default()
                };
                let result = dispatcher::run(config, &options).map_err(|e| e.to_string());
                let _ = done.send((index, result));
            });
        }
        drop(done_tx);
        let members = |instances: &[&str], revision: i64| {
            let sent = now_ms();
            for tx in &events {
                let event = ClusterEvent::Members {
                    instances: instances.iter().map(|s| s.to_string()).collect(),
                    revision,
                };
                if tx.send(event).is_err() {
                    // The run ended early: say why.
                    let ended: Vec<_> = done_rx.try_iter().collect();
                    panic!("an instance stopped listening: {ended:?}");
                }
            }
            sent
        };
        // Both up: each starts its share after the delay.
        let t1 = members(&["a", "b"], 1);
        std::thread::sleep(Duration::from_millis(2_200));
        // b is gone for a: b stops everything at once, a takes it after the delay.
        let t2 = members(&["a"], 2);
        std::thread::sleep(Duration::from_millis(1_000));
        // An empty list (a bad read) drops nothing.
        members(&[], 3);
        std::thread::sleep(Duration::from_millis(1_000));
        // b is back: a hands b's share back.
        let t3 = members(&["a", "b"], 4);
        let mut summaries: Vec<Option<RunSummary>> = vec![None, None];
        for (index, result) in done_rx.iter() {
            match result {
                Ok(summary) => summaries[index] = Some(summary),
                Err(error) => panic!("instance {index} failed: {error}"),
            }
        }
        source.stop();
        compute.stop();
        let [Some(a), Some(b)] = [summaries[0].take(), summaries[1].take()] else {
            panic!("an instance did not report");
        };
        check(&db, &a, &b, [t1, t2, t3]);
    });
}

fn check(db: &Path, a: &RunSummary, b: &RunSummary, [t1, t2, t3]: [i64; 3]) {
    let by_device = rows_by_device(db);
    let rows: usize = by_device.values().map(Vec::len).sum();
    // (a) No tick run twice: a tick both ran would be one row for two jobs.
    assert_eq!(
        a.counters.jobs() + b.counters.jobs(),
        rows as u64,
        "jobs of a ({}) and b ({}) against rows",
        a.counters.jobs(),
        b.counters.jobs()
    );
    assert_eq!(by_device.len(), 300, "every device ran");
    let cluster = a.cluster.as_ref().expect("a's cluster summary");
    assert_eq!(cluster["handovers"], 3, "{cluster}");
    assert_eq!(cluster["revision"], 4, "the empty list changed nothing");
    let delay = SAFETY_DELAY_MS as i64;
    let period = METER.period_ms as i64;
    let mut lost_mid_job = 0;
    let mut moved = 0;
    for (device, ticks) in &by_device {
        // (b) Every job ended ok, those cut off by a handover included.
        for (tick, _, outcome, _) in ticks {
            assert_eq!(outcome, "ok", "{device} at {tick}");
        }
        // (c) Nothing before the first assignment's delay.
        assert!(
            ticks[0].0 >= t1 + delay,
            "{device} ticked at {} before {}",
            ticks[0].0,
            t1 + delay
        );
        let runs: Vec<&str> = ticks.iter().map(|(_, run, _, _)| run.as_str()).collect();
        let b_run = b.run_id.as_str();
        if runs.contains(&b_run) {
            moved += 1;
            // b's device: b ran it until t2, a from t2 + delay until t3 at
            // most, b again from t3 + delay.
            for (tick, run, _, e2e) in ticks {
                let by_b = run == b_run;
                // b stops when its coordinator reads the change, which a
                // loaded machine may do a little after the test sent it.
                if *tick >= t2 + SKEW_ALLOWANCE_MS && *tick < t3 {
                    assert!(
                        !by_b,
                        "{device} at {tick}: b ran it {} ms after it lost it",
                        tick - t2
                    );
                }
                if !by_b && *tick < t2 {
                    panic!("{device} at {tick}: a ran it before it gained it");
                }
                if by_b && *tick >= t3 {
                    assert!(
                        *tick >= t3 + delay,
                        "{device} at {tick}: b started before the delay"
                    );
                }
                if !by_b && *tick >= t2 && *tick < t3 {
                    assert!(
                        *tick >= t2 + delay,
                        "{device} at {tick}: a started before the delay"
                    );
                }
                if by_b && *tick < t2 && tick + e2e.unwrap_or(0) / 1000 > t2 {
                    lost_mid_job += 1;
                }
            }
        } else {
            assert!(runs.iter().all(|run| *run == a.run_id), "{device}");
        }
        // (d) The gap: consecutive rows of a device are at most
        // safety delay + skew + 2 periods apart (one period for a device that stays).
        for pair in ticks.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap <= delay + SKEW_ALLOWANCE_MS + 2 * period,
                "{device}: {gap} ms between the ticks {} and {}",
                pair[0].0,
                pair[1].0
            );
            assert_eq!(gap % period, 0, "{device}: off its grid");
        }
    }
    assert!(
        (100..200).contains(&moved),
        "b's share of 300 devices: {moved}"
    );
    assert!(
        lost_mid_job > 0,
        "no job of b was in flight when it lost its devices"
    );
}

#[test]
fn registered_compute_nodes_take_a_class_s_traffic() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let first = common::start_mock(MockKind::Compute, MockOptions::default());
    let second = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let meter = ClassSpec {
        period_ms: 200,
        deadline_ms: 200,
        ..METER
    };
    let config = common::config(
        vec![common::class(meter, source.addr, first.addr)],
        100,
        db.clone(),
        GrpcConfig::default(),
    );
    let (tx, rx) = flume::bounded(4);
    let options = RunOptions {
        duration: Some(Duration::from_millis(3_000)),
        load: Load::Ticks,
        cluster: Some(rx),
        ..RunOptions::default()
    };
    let summary = std::thread::scope(|scope| {
        let run = scope.spawn(|| dispatcher::run(&config, &options));
        std::thread::sleep(Duration::from_millis(1_300));
        tx.send(ClusterEvent::Connection {
            up: false,
            detail: "test: etcd gone".into(),
        })
        .expect("listening");
        let node = |id: &str, addr: String| NodeRecord {
            id: id.into(),
            addr,
            weight: 1,
            model: Some("mock".into()),
        };
        let switched = now_ms();
        tx.send(ClusterEvent::Nodes {
            class: "meter".into(),
            nodes: vec![
                node("n2", second.addr.to_string()),
                node("bad", "nowhere:x".into()),
            ],
            revision: 10,
        })
        .expect("listening");
        // An older list afterwards changes nothing.
        tx.send(ClusterEvent::Nodes {
            class: "meter".into(),
            nodes: vec![node("n1", first.addr.to_string())],
            revision: 9,
        })
        .expect("listening");
        let summary = run.join().expect("the run thread").expect("the run");
        (summary, switched)
    });
    let (summary, switched) = summary;
    let rows = common::read_rows(&db);
    common::assert_exact_ticks(&config, &summary, &rows);
    common::assert_counts(&summary, &rows);
    let (first_name, second_name) = (first.addr.to_string(), second.addr.to_string());
    let mut on_second = 0;
    for row in &rows {
        assert_eq!(row.outcome, "ok", "{row:?}");
        let node = row.compute_node.as_deref();
        if row.tick_ms < switched {
            assert_eq!(node, Some(first_name.as_str()), "{row:?}");
        } else if row.tick_ms > switched + 300 {
            assert_eq!(node, Some(second_name.as_str()), "{row:?}");
            on_second += 1;
        }
    }
    assert!(on_second > 100, "{on_second} rows from the registered node");
    assert!(second.control().calls() > 0);
    source.stop();
    first.stop();
    second.stop();
    assert_eq!(
        summary.cluster.as_ref().map(|c| c["etcd_up"].clone()),
        Some(serde_json::json!(false))
    );
}
