//! The comparison benchmark's plumbing (`benches/compare.rs`), cheaply: the
//! co-runner's arithmetic and its spinners, the tonic client's closed and open
//! loop, and every Python design in both loops, against in-process mock nodes.
//! What is checked is that each runs and accounts for every job — never how fast.

#[allow(dead_code)]
#[path = "../benches/compare/corunner.rs"]
mod corunner;
#[path = "../benches/compare/sql.rs"]
mod sql;
#[allow(dead_code)]
#[path = "../benches/compare/tonic_client.rs"]
mod tonic_client;

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use corunner::{Calibration, CoRunner, Known, SpinnerWork};
use percore::mock::{MockKind, MockNode, MockOptions};

/// How long a bounded wait for a spinner to get any CPU may last (the tests of
/// this suite run two at a time on two cores, and the spinner has the lowest
/// priority there is).
const SPINNER_PATIENCE: Duration = Duration::from_secs(60);

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn lost_share_and_caused_cpu_arithmetic() {
    // Half the wall time at full speed: half the CPU was lost.
    let work = SpinnerWork {
        wall_s: 2.0,
        iterations: 1e9,
        runtime_s: 1.0,
    };
    assert!(close(corunner::lost_share(&work, 1e9), 0.5));
    // Interrupts in the spinner's own time: its CPU time says 1.0 s, its work 0.8 s.
    let interrupted = SpinnerWork {
        wall_s: 1.0,
        iterations: 0.8e9,
        runtime_s: 1.0,
    };
    assert!(close(corunner::lost_share(&interrupted, 1e9), 0.2));
    // Never below 0 or above 1.
    assert!(close(corunner::lost_share(&work, 0.4e9), 0.0));
    assert!(close(
        corunner::lost_share(
            &SpinnerWork {
                iterations: 0.0,
                ..work
            },
            1e9
        ),
        1.0
    ));

    // Calibration: speed per second of own CPU time; what it lost is background.
    let (speed, lost) = corunner::calibrate_one(&SpinnerWork {
        wall_s: 1.0,
        iterations: 0.9e9,
        runtime_s: 0.9,
    })
    .expect("a spinner that ran");
    assert!(close(speed, 1e9));
    assert!(close(lost, 0.1));
    let error = corunner::calibrate_one(&SpinnerWork {
        wall_s: 1.0,
        iterations: 0.0,
        runtime_s: 0.0,
    })
    .expect_err("a spinner that never ran has no speed");
    assert!(error.contains("did not run"), "{error}");

    // The background: lost while calibrating, less the known processes then;
    // never negative.
    let cal_known = Known {
        mocks: 0.0,
        ours: 0.01,
        others: 0.02,
    };
    assert!(close(corunner::unexplained(0.05, &cal_known), 0.02));
    assert!(close(corunner::unexplained(0.01, &cal_known), 0.0));
    assert!(close(corunner::median(vec![0.03, 0.01, 0.5]), 0.03));
    assert!(close(corunner::median(vec![0.01, 0.03]), 0.02));

    // Caused: lost in the run, less the known processes (the mocks' overcharge
    // given back), less the background.
    let run_known = Known {
        mocks: 0.6,
        ours: 0.01,
        others: 0.02,
    };
    let caused = corunner::caused_cores(1.3, &run_known, 0.02, 0.05);
    assert!(close(caused, 1.3 - (0.63 - 0.05) - 0.02), "{caused}");
    // The spinner's undercharge: it worked more than it was charged for.
    let lost = corunner::Lost {
        lost: vec![0.60, 0.70],
        scheduled_away: vec![0.58, 0.75],
        speed: vec![1e9, 1e9],
    };
    assert!(close(lost.undercharged(0), 0.0));
    assert!(close(lost.undercharged(1), 0.05));
    assert!(close(lost.total(), 1.3));
    assert!(close(corunner::per_job_us(0.5, 1000.0), 500.0));
    assert!(corunner::per_job_us(0.5, 0.0).is_nan());
}

#[test]
fn spinners_work_only_while_resumed() {
    let cpu = percore::tuning::allowed_cpus()[0];
    let co_runner = CoRunner::start(&[cpu]).expect("a spinner pinned to an allowed CPU");
    // Started paused: nothing moves.
    let paused = co_runner.snapshot();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        co_runner.snapshot().spinners[0].iterations,
        paused.spinners[0].iterations
    );

    co_runner.resume();
    let started = Instant::now();
    let mut running = co_runner.snapshot();
    while running.spinners[0].iterations == paused.spinners[0].iterations
        && started.elapsed() < SPINNER_PATIENCE
    {
        std::thread::sleep(Duration::from_millis(10));
        running = co_runner.snapshot();
    }
    std::thread::sleep(Duration::from_millis(20));
    co_runner.pause();
    let after = co_runner.snapshot();
    assert!(
        after.spinners[0].iterations > paused.spinners[0].iterations,
        "the spinner never ran in {SPINNER_PATIENCE:?}"
    );
    assert!(after.spinners[0].runtime_s > paused.spinners[0].runtime_s);
    let calibration =
        Calibration::from_snapshots(&[cpu], &paused, &after).expect("a spinner that ran");
    assert!(calibration.speed[0].is_finite() && calibration.speed[0] > 0.0);
    assert!((0.0..=1.0).contains(&calibration.lost[0]));

    // Paused again: `pause` returned once it was parked, so nothing moves.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        co_runner.snapshot().spinners[0].iterations,
        after.spinners[0].iterations
    );
}

#[test]
fn burner_uses_its_share_of_its_own_cpu_time() {
    // 30 % for 100 ms is 30 ms of CPU at least: the burner counts its own time,
    // so a busy machine makes it take longer, never burn less.
    let used = corunner::burn(0.3, Duration::from_millis(100));
    assert!(used >= Duration::from_millis(30), "{used:?}");
}

/// A mock data source and compute node in this process.
fn mocks() -> (MockNode, MockNode) {
    (
        common::start_mock(MockKind::Source, MockOptions::default()),
        common::start_mock(MockKind::Compute, MockOptions::default()),
    )
}

/// (rows of `jobs`, ok rows of `jobs`, rows of `job_outputs`) in a database.
fn count_rows(db: &Path) -> (u64, u64, u64) {
    let conn = rusqlite::Connection::open(db).expect("the client's database");
    let count = |sql: &str| -> u64 { conn.query_row(sql, [], |row| row.get(0)).expect(sql) };
    (
        count("SELECT COUNT(*) FROM jobs"),
        count("SELECT COUNT(*) FROM jobs WHERE outcome = 'ok'"),
        count("SELECT COUNT(*) FROM job_outputs"),
    )
}

fn number(json: &serde_json::Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}

/// Every job of the run is a row and every measured job is ok.
fn assert_accounted(what: &str, json: &serde_json::Value, db: &Path) {
    let (jobs, total, written) = (
        number(json, "jobs"),
        number(json, "jobs_total"),
        number(json, "rows_written"),
    );
    assert!(jobs > 0, "{what}: no job measured: {json}");
    assert_eq!(number(json, "failed"), 0, "{what}: {json}");
    assert_eq!(total, written, "{what}: jobs run and rows written differ");
    assert!(
        json["latency_us"]["p50"].as_u64().unwrap_or(0) > 0,
        "{what}"
    );
    let (rows, ok_rows, outputs) = count_rows(db);
    assert_eq!(rows, written, "{what}: rows in the database");
    assert_eq!(outputs, ok_rows, "{what}: one job_outputs row per ok job");
}

#[test]
fn tonic_client_runs_closed_and_open_loops() {
    let (source, compute) = mocks();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    for (what, concurrency, rate) in [("closed loop", 4, None), ("open loop", 0, Some(200))] {
        let db = scratch.path().join(format!("{}.db", rate.unwrap_or(0)));
        let options = tonic_client::Options {
            source: source.addr.to_string(),
            compute: compute.addr.to_string(),
            concurrency,
            rate,
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(800),
            devices: 1000,
            db: db.display().to_string(),
        };
        let json = tonic_client::run_to_json(&options).expect("the tonic client runs");
        assert_accounted(&format!("tonic, {what}"), &json, &db);
        if let Some(rate) = rate {
            // An open loop starts its arrivals whatever happens: about rate × 0.8 s.
            let jobs = number(&json, "jobs");
            assert!(jobs <= rate, "{jobs} jobs at {rate}/s in 0.8 s");
        }
    }
}

/// Runs `client.py` with `args` against the mocks; its JSON line.
fn python_client(source: SocketAddr, compute: SocketAddr, db: &Path, args: &[&str]) -> String {
    let venv = common::python::venv();
    let stubs = common::python::python_dir().join("generated");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/compare/client.py");
    let output = Command::new(venv.join("bin/python"))
        .arg(&script)
        .args(["--source", &source.to_string()])
        .args(["--compute", &compute.to_string()])
        .args(["--warmup", "0.3", "--duration", "0.8", "--devices", "1000"])
        .arg("--db")
        .arg(db)
        .arg("--stubs")
        .arg(&stubs)
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "client.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.lines().any(|line| line == "measuring"),
        "client.py {args:?} never said it was measuring:\n{stdout}"
    );
    stdout
}

#[test]
fn python_designs_run_closed_and_open_loops() {
    let (source, compute) = mocks();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let cpus: Vec<String> = percore::tuning::allowed_cpus()
        .iter()
        .take(2)
        .map(usize::to_string)
        .collect();
    let procs = cpus.len().to_string();
    let cpu_list = cpus.join(",");
    let cases: Vec<Vec<&str>> = vec![
        vec!["--mode", "seq", "--concurrency", "1"],
        vec!["--mode", "seq", "--rate", "100"],
        vec!["--mode", "threads", "--concurrency", "4"],
        vec!["--mode", "threads", "--rate", "200", "--threads", "8"],
        vec!["--mode", "asyncio", "--concurrency", "4"],
        vec!["--mode", "asyncio", "--rate", "200"],
        vec![
            "--mode", "mp", "--rate", "200", "--procs", &procs, "--cpus", &cpu_list,
        ],
    ];
    for (index, args) in cases.iter().enumerate() {
        let db = scratch.path().join(format!("{index}.db"));
        let stdout = python_client(source.addr, compute.addr, &db, args);
        let line = stdout
            .lines()
            .rev()
            .find(|line| line.starts_with('{'))
            .unwrap_or_else(|| panic!("client.py {args:?} printed no JSON line:\n{stdout}"));
        let json: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if args.contains(&"mp") {
            // One database per process: the rows are counted in each.
            let total: u64 = (0..cpus.len())
                .map(|i| count_rows(&db.with_extension(format!("db.{i}"))).0)
                .sum();
            assert_eq!(total, number(&json, "rows_written"), "mp: rows");
            assert!(number(&json, "jobs") > 0 && number(&json, "failed") == 0);
        } else {
            assert_accounted(&format!("client.py {args:?}"), &json, &db);
        }
    }
}
