//! The static split, percore's first distributed form (no etcd): three
//! `percore run` processes load the same 30,000 devices, each with
//! `[cluster] slice = "K/3"`, and write into one SQLite file. Each writes
//! exactly the ticks of its own slice's devices due in its own window, once;
//! together they cover every device, so every tick due while all three run is
//! written exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use percore::config::Slice;
use percore::devices::{stable_hash, Fleet};
use percore::mock::{MockKind, MockOptions};
use percore::record::DeviceIndex;
use percore::tick::{phase_ms, ticks_in};

const DEVICES: usize = 30_000;
const PERIOD_MS: u64 = 10_000;
const INSTANCES: u32 = 3;

/// The config of the instance with slice `k`/3, on the shard CPU `cpu`.
fn write_config(dir: &Path, k: u32, cpu: usize, source: &str, compute: &str) -> PathBuf {
    let tuning = dir.join(format!("tuning-{k}.toml"));
    std::fs::write(
        &tuning,
        format!("shard_cpus = [{cpu}]\nio_memory_kib = 512\n"),
    )
    .expect("tuning");
    let text = format!(
        "tuning = \"tuning-{k}.toml\"\n\
         [devices]\ngenerate = {{ count = {DEVICES}, mix = {{ meter = 1 }} }}\n\
         [sink]\nkind = \"sqlite\"\npath = \"jobs.db\"\n\
         [[classes]]\nname = \"meter\"\nmodel = \"mock\"\nperiod_ms = {PERIOD_MS}\ndeadline_ms = 2000\n\
         data_sources = [\"{source}\"]\ncompute_nodes = [\"{compute}\"]\n\
         [cluster]\nslice = \"{k}/{INSTANCES}\"\n"
    );
    let path = dir.join(format!("percore-{k}.toml"));
    std::fs::write(&path, text).expect("the config");
    path
}

/// Waits for a run (at most 60 s); returns its summary JSON. It must exit 0.
fn finish(mut child: Child, summary: &Path) -> serde_json::Value {
    let mut pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let status = common::wait_within(&mut child, Duration::from_secs(60), "percore run");
    let stderr = reader.join().expect("stderr");
    eprintln!("{stderr}");
    assert!(status.success(), "percore run exited with {status}");
    assert!(stderr.contains("static split, slice"), "{stderr}");
    let text = std::fs::read_to_string(summary).expect("the summary");
    serde_json::from_str(&text).expect("summary JSON")
}

#[test]
fn three_slices_write_every_tick_once() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cpus = common::shard_cpus();
    let children: Vec<(Child, PathBuf)> = (1..=INSTANCES)
        .map(|k| {
            let cpu = cpus[k as usize % cpus.len()];
            let config = write_config(
                dir.path(),
                k,
                cpu,
                &source.addr.to_string(),
                &compute.addr.to_string(),
            );
            let summary = dir.path().join(format!("summary-{k}.json"));
            let child = Command::new(env!("CARGO_BIN_EXE_percore"))
                .args(["run", "--config"])
                .arg(&config)
                .args(["--duration", "10s", "--admin", "none", "--summary-json"])
                .arg(&summary)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("percore starts");
            (child, summary)
        })
        .collect();
    let summaries: Vec<serde_json::Value> = children
        .into_iter()
        .map(|(child, summary)| finish(child, &summary))
        .collect();
    source.stop();
    compute.stop();

    // Rows by run: (device, tick).
    let conn = rusqlite::Connection::open(dir.path().join("jobs.db")).expect("the database");
    let mut by_run: BTreeMap<String, BTreeSet<(String, i64)>> = BTreeMap::new();
    let mut statement = conn
        .prepare("SELECT run_id, device_id, tick_ms, outcome FROM jobs")
        .expect("query");
    let mut rows = 0usize;
    for row in statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, String>(3)?,
            ))
        })
        .expect("rows")
    {
        let (run, device, tick, outcome) = row.expect("a row");
        assert_eq!(outcome, "ok", "{device} at {tick}");
        by_run.entry(run).or_default().insert((device, tick));
        rows += 1;
    }

    let fleet = Fleet::generate(DEVICES, &[(0, 1)]);
    let mut all_ticks = 0;
    let mut common_window = (i64::MIN, i64::MAX);
    for (index, summary) in summaries.iter().enumerate() {
        let slice = Slice {
            index: index as u32,
            count: INSTANCES,
        };
        let (start, end) = (
            summary["window_unix_ms"][0].as_i64().expect("window"),
            summary["window_unix_ms"][1].as_i64().expect("window"),
        );
        common_window = (common_window.0.max(start), common_window.1.min(end));
        assert_eq!(summary["cluster"]["slice"], slice.to_string());
        let mut expected = BTreeSet::new();
        let mut kept = 0usize;
        for device in 0..DEVICES as DeviceIndex {
            let id = fleet.id(device);
            let hash = stable_hash(id);
            if !slice.contains(hash) {
                continue;
            }
            kept += 1;
            for tick in ticks_in(start, end, phase_ms(hash, PERIOD_MS), PERIOD_MS) {
                expected.insert((id.to_string(), tick));
            }
        }
        assert_eq!(summary["cluster"]["devices"], kept, "slice {slice}");
        assert!(
            kept.abs_diff(DEVICES / 3) < DEVICES / 30,
            "slice {slice}: {kept}"
        );
        let run = summary["run_id"].as_str().expect("run_id");
        let written = by_run.remove(run).unwrap_or_default();
        let missing: Vec<_> = expected.difference(&written).take(3).collect();
        let extra: Vec<_> = written.difference(&expected).take(3).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "slice {slice}: {} expected, {} written; missing {missing:?}, extra {extra:?}",
            expected.len(),
            written.len()
        );
        assert_eq!(summary["jobs"], expected.len(), "slice {slice}");
        all_ticks += expected.len();
    }
    assert!(
        by_run.is_empty(),
        "rows of another run: {:?}",
        by_run.keys()
    );
    // No (device, tick) twice across the three: every row is one job.
    assert_eq!(rows, all_ticks);
    // While all three ran, every device's ticks were written.
    assert!(
        common_window.0 < common_window.1,
        "the runs never overlapped"
    );
    let mut while_all_ran = 0;
    for device in 0..DEVICES as DeviceIndex {
        let id = fleet.id(device);
        while_all_ran += ticks_in(
            common_window.0,
            common_window.1,
            phase_ms(stable_hash(id), PERIOD_MS),
            PERIOD_MS,
        )
        .count();
    }
    assert!(
        while_all_ran > 10_000,
        "{while_all_ran} ticks in {common_window:?}"
    );
}
