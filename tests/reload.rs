//! Live reload: `percore run` re-reads its config file on SIGHUP. An edited
//! device list changes the devices ticked — those added start at their next
//! tick, those removed stop, the others lose and repeat no tick — and a class
//! whose period changed ticks on its new grid from then on; a broken file
//! leaves the run on the config it has.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Row;
use percore::devices::stable_hash;
use percore::mock::{MockKind, MockNode, MockOptions};
use percore::tick::{phase_ms, ticks_in};

/// Every device of the test's class ticks this often (before a period change).
const PERIOD_MS: u64 = 200;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// A config for `percore run` in `dir`: classes `meter` (period `period_ms`)
/// and, if `with_gauge`, `gauge` (period 300 ms), both on the mocks, and the
/// device list `devices.csv` beside it.
fn write_config(
    dir: &Path,
    source: &str,
    compute: &str,
    period_ms: u64,
    with_gauge: bool,
) -> PathBuf {
    let cpus: Vec<String> = common::shard_cpus().iter().map(usize::to_string).collect();
    std::fs::write(
        dir.join("tuning.toml"),
        format!("shard_cpus = [{}]\n", cpus.join(", ")),
    )
    .expect("tuning");
    let class = |name: &str, period_ms: u64| {
        format!(
            "[[classes]]\nname = \"{name}\"\nmodel = \"mock\"\nperiod_ms = {period_ms}\n\
             deadline_ms = {period_ms}\ndata_sources = [\"{source}\"]\ncompute_nodes = [\"{compute}\"]\n"
        )
    };
    let mut text = format!(
        "tuning = \"tuning.toml\"\n[devices]\ncsv = \"devices.csv\"\n[sink]\nkind = \"sqlite\"\n\
         path = \"jobs.db\"\n{}",
        class("meter", period_ms)
    );
    if with_gauge {
        text.push_str(&class("gauge", 300));
    }
    let path = dir.join("percore.toml");
    std::fs::write(&path, text).expect("the config");
    path
}

fn write_devices(dir: &Path, devices: &[(String, &str)]) {
    let mut text = String::from("id,class\n");
    for (id, class) in devices {
        text.push_str(&format!("{id},{class}\n"));
    }
    std::fs::write(dir.join("devices.csv"), text).expect("the device list");
}

fn ids(
    prefix: &str,
    range: std::ops::Range<usize>,
    class: &'static str,
) -> Vec<(String, &'static str)> {
    range.map(|n| (format!("{prefix}{n:03}"), class)).collect()
}

fn spawn(config: &Path, duration: &str, summary: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--duration", duration, "--admin", "none", "--summary-json"])
        .arg(summary)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("percore starts")
}

fn sighup(child: &Child) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
}

/// Waits for the run (at most 60 s); returns its stderr. It must exit 0.
fn finish(mut child: Child) -> String {
    use std::io::Read as _;
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
    stderr
}

/// Each device's ticks in the table, in order; a (device, tick) twice fails.
fn ticks_by_device(rows: &[Row]) -> BTreeMap<String, Vec<i64>> {
    let mut by_device: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for row in rows {
        assert!(
            seen.insert((row.device_id.clone(), row.tick_ms)),
            "a tick twice: {row:?}"
        );
        assert_eq!(row.outcome, "ok", "{row:?}");
        by_device
            .entry(row.device_id.clone())
            .or_default()
            .push(row.tick_ms);
    }
    for ticks in by_device.values_mut() {
        ticks.sort_unstable();
    }
    by_device
}

/// The grid ticks of `id` (period `period_ms`) in `[start, end)`.
fn grid(id: &str, period_ms: u64, start: i64, end: i64) -> Vec<i64> {
    ticks_in(start, end, phase_ms(stable_hash(id), period_ms), period_ms).collect()
}

fn window(summary: &serde_json::Value) -> (i64, i64) {
    let window = &summary["window_unix_ms"];
    (
        window[0].as_i64().expect("a window"),
        window[1].as_i64().expect("a window"),
    )
}

/// Mock nodes, and a config of class `meter` with its device list, in a
/// temporary directory.
struct Fixture {
    source: MockNode,
    compute: MockNode,
    dir: tempfile::TempDir,
    /// The config file `percore run` reads (and re-reads on SIGHUP).
    config: PathBuf,
}

/// What a run left: its stderr, its window and its rows.
struct Ran {
    stderr: String,
    summary: serde_json::Value,
    window: (i64, i64),
    rows: Vec<Row>,
}

impl Fixture {
    fn new(devices: &[(String, &str)]) -> Fixture {
        let source = common::start_mock(MockKind::Source, MockOptions::default());
        let compute = common::start_mock(MockKind::Compute, MockOptions::default());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("percore.toml");
        let fixture = Fixture {
            source,
            compute,
            dir,
            config,
        };
        fixture.write_config(PERIOD_MS, false);
        fixture.write_devices(devices);
        fixture
    }

    fn write_config(&self, period_ms: u64, with_gauge: bool) {
        let (source, compute) = (self.source.addr.to_string(), self.compute.addr.to_string());
        write_config(self.dir.path(), &source, &compute, period_ms, with_gauge);
    }

    fn write_devices(&self, devices: &[(String, &str)]) {
        write_devices(self.dir.path(), devices);
    }

    /// Runs `percore run` for `duration`, calling `during` while it runs.
    fn run(self, duration: &str, during: impl FnOnce(&Fixture, &Child)) -> Ran {
        let summary_path = self.dir.path().join("summary.json");
        let run = spawn(&self.config, duration, &summary_path);
        during(&self, &run);
        let stderr = finish(run);
        let summary = common::read_summary_json(&summary_path);
        let rows = common::read_rows(&self.dir.path().join("jobs.db"));
        self.source.stop();
        self.compute.stop();
        Ran {
            stderr,
            window: window(&summary),
            summary,
            rows,
        }
    }
}

#[test]
fn an_edited_device_list_changes_the_devices_ticked_and_loses_no_tick_of_the_others() {
    // old000..old019 go at the reload, kept000..kept059 stay, new000..new029 come.
    let kept = ids("kept", 0..60, "meter");
    let old = ids("old", 0..20, "meter");
    let new = ids("new", 0..30, "meter");
    let fixture = Fixture::new(&[kept.clone(), old.clone()].concat());
    let mut signalled_ms = 0;
    let Ran {
        stderr,
        summary,
        window: (start, end),
        rows,
    } = fixture.run("6s", |fixture, run| {
        std::thread::sleep(Duration::from_millis(2_500));
        fixture.write_devices(&[kept.clone(), new.clone()].concat());
        signalled_ms = now_ms();
        sighup(run);
    });
    assert!(
        stderr.contains("SIGHUP: reloading the config"),
        "the signal is acknowledged"
    );
    assert!(
        stderr.contains("percore.toml: 30 devices added, 20 retired"),
        "the reload says what it did"
    );
    assert_eq!(summary["ok"].as_u64(), Some(rows.len() as u64));
    let ticks = ticks_by_device(&rows);

    // The devices that stayed: every tick of the window, exactly once.
    for (id, _) in &kept {
        assert_eq!(
            ticks.get(id.as_str()).cloned().unwrap_or_default(),
            grid(id, PERIOD_MS, start, end),
            "{id}: a tick lost or repeated across the reload"
        );
    }
    // The removed ones: every tick until they stopped, none after the reload
    // (applied within the coordinator's second, plus a period).
    let mut last_old = i64::MIN;
    for (id, _) in &old {
        let got = ticks.get(id.as_str()).cloned().unwrap_or_default();
        let last = *got.last().expect("it ticked before the reload");
        assert_eq!(got, grid(id, PERIOD_MS, start, last + 1), "{id}");
        assert!(
            last < signalled_ms + 1_300,
            "{id} ticked at {last} after the reload"
        );
        last_old = last_old.max(last);
    }
    // The added ones: from their first tick, after the signal, every tick to
    // the end.
    let mut first_new = i64::MAX;
    for (id, _) in &new {
        let got = ticks.get(id.as_str()).cloned().unwrap_or_default();
        let first = *got.first().expect("it ticked after the reload");
        assert!(
            // The shard's last fired tick may trail the signal by a little.
            first >= signalled_ms - PERIOD_MS as i64,
            "{id} ticked at {first}, before the reload"
        );
        assert_eq!(got, grid(id, PERIOD_MS, first, end), "{id}");
        first_new = first_new.min(first);
    }
    eprintln!(
        "signalled at {signalled_ms}: last old tick {} ms after, first new tick {} ms after",
        last_old - signalled_ms,
        first_new - signalled_ms
    );
    assert_eq!(
        ticks.len(),
        kept.len() + old.len() + new.len(),
        "no other device ticked"
    );
}

#[test]
fn a_class_changed_or_added_takes_effect_at_the_next_tick() {
    let meters = ids("m", 0..40, "meter");
    let gauges = ids("g", 0..10, "gauge");
    let fixture = Fixture::new(&meters);
    let mut signalled_ms = 0;
    let Ran {
        stderr,
        summary,
        window: (start, end),
        rows,
    } = fixture.run("6s", |fixture, run| {
        std::thread::sleep(Duration::from_millis(2_500));
        // meter now ticks every 400 ms, and a new class gauge brings its devices.
        fixture.write_config(2 * PERIOD_MS, true);
        fixture.write_devices(&[meters.clone(), gauges.clone()].concat());
        signalled_ms = now_ms();
        sighup(run);
    });
    assert!(
        stderr.contains(
            "10 devices added, 0 retired; new classes [\"gauge\"]; classes changed [\"meter\"]"
        ),
        "the reload says what changed"
    );
    let ticks = ticks_by_device(&rows);
    for (id, _) in &meters {
        let got = ticks.get(id.as_str()).cloned().unwrap_or_default();
        // The old grid until the reload took effect, at some T around the
        // signal, and the new grid from T to the end: nothing else, nothing
        // twice. T may be a little before the signal: a tick due just before
        // it that the shard had not fired yet is the new class's to fire.
        let took_effect = (signalled_ms - PERIOD_MS as i64..signalled_ms + 1_500).find(|&t| {
            let mut expected = grid(id, PERIOD_MS, start, t);
            expected.extend(grid(id, 2 * PERIOD_MS, t, end));
            got == expected
        });
        assert!(
            took_effect.is_some(),
            "{id}: not the old grid, then the new one from a time around the signal at \
             {signalled_ms}: {got:?}"
        );
    }
    for (id, _) in &gauges {
        let got = ticks.get(id.as_str()).cloned().unwrap_or_default();
        let first = *got.first().expect("a gauge ticked");
        assert!(first >= signalled_ms - PERIOD_MS as i64);
        assert_eq!(got, grid(id, 300, first, end), "{id}");
    }
    // The new class has its own row names and summary entry.
    assert!(rows
        .iter()
        .filter(|row| row.device_id.starts_with('g'))
        .all(|row| row.class == "gauge"));
    let classes: Vec<&str> = summary["per_class"]
        .as_array()
        .expect("per-class summaries")
        .iter()
        .filter_map(|class| class["class"].as_str())
        .collect();
    assert_eq!(classes, ["meter", "gauge"]);
}

#[test]
fn a_broken_file_keeps_the_run_on_the_config_it_has() {
    let meters = ids("m", 0..40, "meter");
    let fixture = Fixture::new(&meters);
    let Ran {
        stderr,
        window: (start, end),
        rows,
        ..
    } = fixture.run("4s", |fixture, run| {
        std::thread::sleep(Duration::from_millis(1_500));
        // A device of a class the config does not have.
        fixture.write_devices(&[meters.clone(), ids("x", 0..1, "nosuch")].concat());
        sighup(run);
        std::thread::sleep(Duration::from_millis(1_200));
        // And a config that is not TOML.
        std::fs::write(&fixture.config, "[[classes]\nname = ").expect("a broken config");
        sighup(run);
    });
    let kept_going = stderr
        .lines()
        .filter(|line| line.contains("the run goes on with the config it has"))
        .collect::<Vec<_>>();
    assert_eq!(
        kept_going.len(),
        2,
        "each bad reload is said: {kept_going:?}"
    );
    assert!(kept_going[0].contains("devices.csv:"), "{}", kept_going[0]);
    assert!(kept_going[0].contains("nosuch"), "{}", kept_going[0]);
    assert!(kept_going[1].contains("percore.toml:"), "{}", kept_going[1]);
    let ticks = ticks_by_device(&rows);
    assert_eq!(ticks.len(), meters.len());
    for (id, _) in &meters {
        assert_eq!(
            ticks.get(id.as_str()).cloned().unwrap_or_default(),
            grid(id, PERIOD_MS, start, end),
            "{id}"
        );
    }
}
