//! The failure breakdown of a run fed with known failures (30% NOT_FOUND and
//! 10% hung calls that meet the deadline): the terminal table, the status
//! line, `summary.json`, `report.html` in headless Chromium and `/metrics` all
//! show the same (outcome, stage, reason) counts as the rows in SQLite, with
//! the rows' most frequent exact reason and a device that had it. And a run in
//! which every job failed exits 4 and says why.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{ClassSpec, Row};
use percore::admin::AdminServer;
use percore::config::GrpcConfig;
use percore::dispatcher::{self, RunOptions};
use percore::grpc::status::Code;
use percore::mock::{MockKind, MockOptions};

/// Ticks every 200 ms, and a deadline (100 ms) a hung call always meets before
/// the device's next tick, so no tick is skipped.
const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 200,
    deadline_ms: 100,
};

/// The compute node's faults: 30% NOT_FOUND, 10% hung for far longer than
/// the deadline.
fn faulty_compute() -> MockOptions {
    MockOptions {
        error_rate: 0.3,
        error_code: Code::NOT_FOUND,
        hang_rate: 0.1,
        hang_for: Duration::from_secs(5),
        ..MockOptions::default()
    }
}

/// A skipped row's reason when the device's previous job had not ended.
const PREVIOUS_RUNNING: &str = "previous job of this device still running";

/// (outcome, stage, reason class) of a row, classified from its `reason` the
/// way an operator would read it; `None` for an ok row.
fn class_of(row: &Row) -> Option<(String, String, String)> {
    let reason = row.reason.as_deref()?;
    if reason == PREVIOUS_RUNNING {
        return Some((
            row.outcome.clone(),
            "start".into(),
            "previous job running".into(),
        ));
    }
    let (stage, cause) = reason.split_once(": ")?;
    let class = if cause.starts_with("grpc status 5 NOT_FOUND") {
        "grpc NOT_FOUND"
    } else if cause == "deadline exceeded" {
        "deadline"
    } else {
        // Anything else is unexpected here: keep its text so a failure shows it.
        cause
    };
    Some((row.outcome.clone(), stage.to_string(), class.to_string()))
}

/// What the rows say: per (outcome, stage, class), the count and each exact
/// reason with its count.
type Expected = BTreeMap<(String, String, String), (u64, BTreeMap<String, u64>)>;

fn expected(rows: &[Row]) -> Expected {
    let mut expected = Expected::new();
    for row in rows {
        if let Some(key) = class_of(row) {
            let entry = expected.entry(key).or_default();
            entry.0 += 1;
            let text = row.reason.clone().unwrap_or_default();
            *entry.1.entry(text).or_insert(0) += 1;
        }
    }
    expected
}

/// The known failures are there in the expected proportions (loosely: the
/// mock draws at random), and nothing else failed.
fn assert_known_failures(expected: &Expected, jobs: usize) {
    let key = |stage: &str, class: &str| ("failed".to_string(), stage.into(), class.into());
    // A machine loaded enough to end a hung job late may skip the next tick.
    let late = (
        "skipped".to_string(),
        "start".into(),
        "previous job running".into(),
    );
    // And one loaded enough (the suite's etcd clusters and fleets beside this
    // test) can hold a fetch past the 100 ms deadline now and then: a real
    // outcome, labelled as such, but not one of the faults under test — a few
    // are allowed, no more than 1 % of the jobs.
    let slow_fetch = key("fetch", "deadline");
    if let Some((count, _)) = expected.get(&slow_fetch) {
        assert!(
            *count as f64 <= jobs as f64 * 0.01,
            "{count} fetches met the deadline: {expected:?}"
        );
    }
    let keys: Vec<_> = expected
        .keys()
        .filter(|k| **k != late && **k != slow_fetch)
        .cloned()
        .collect();
    assert_eq!(
        keys,
        vec![key("infer", "deadline"), key("infer", "grpc NOT_FOUND")],
        "only the faults the compute node was given"
    );
    let share = |class: &str| expected[&key("infer", class)].0 as f64 / jobs as f64;
    assert!(
        (0.2..0.4).contains(&share("grpc NOT_FOUND")),
        "{expected:?}"
    );
    assert!((0.04..0.18).contains(&share("deadline")), "{expected:?}");
}

/// `1,234`, as the page groups counts.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks the summary's `failures` against the rows: the same keys in order
/// of count, the same counts, shares of all jobs, each kept text's count, the
/// most frequent text, and an example device that had it.
fn assert_summary_failures(summary: &serde_json::Value, expected: &Expected, rows: &[Row]) {
    let failures = summary["failures"].as_array().expect("a failures array");
    assert_eq!(failures.len(), expected.len(), "{failures:?}");
    let jobs = rows.len() as f64;
    let mut last_count = u64::MAX;
    for failure in failures {
        let key = (
            failure["outcome"].as_str().unwrap_or("").to_string(),
            failure["stage"].as_str().unwrap_or("").to_string(),
            failure["reason"].as_str().unwrap_or("").to_string(),
        );
        let (count, texts) = expected
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} is not in the rows: {expected:?}"));
        assert_eq!(failure["count"], *count, "{key:?}");
        assert!(*count <= last_count, "most frequent first");
        last_count = *count;
        let share = failure["share"].as_f64().unwrap_or(-1.0);
        assert!(
            (share - *count as f64 / jobs).abs() < 1e-9,
            "{key:?}: {share}"
        );
        let reasons = failure["reasons"].as_array().expect("reasons");
        assert!(!reasons.is_empty());
        for reason in reasons {
            let text = reason["text"].as_str().unwrap_or("");
            assert_eq!(reason["count"], texts[text], "{text}");
            let device = reason["example_device"].as_str().unwrap_or("");
            assert!(
                rows.iter()
                    .any(|row| row.device_id == device && row.reason.as_deref() == Some(text)),
                "{device} never failed with {text}"
            );
        }
        let kept: u64 = reasons.iter().filter_map(|r| r["count"].as_u64()).sum();
        assert_eq!(
            kept + failure["other_reasons"].as_u64().unwrap_or(0),
            *count
        );
    }
}

/// The most frequent exact reason of the rows of `key`, and its count.
fn top_text(expected: &Expected, key: &(String, String, String)) -> (String, u64) {
    let (_, texts) = &expected[key];
    let (text, count) = texts
        .iter()
        .max_by_key(|(_, count)| **count)
        .expect("a text");
    (text.clone(), *count)
}

#[test]
fn known_failures_show_the_same_in_terminal_summary_and_page() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, faulty_compute());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config = common::write_config_file(
        dir.path(),
        source.addr,
        compute.addr,
        300,
        METER.period_ms,
        METER.deadline_ms,
        &db,
        "",
    );
    let summary_path = dir.path().join("summary.json");
    let report_dir = dir.path().join("report");
    let output = percore(&[
        "run",
        "--config",
        &config.display().to_string(),
        "--duration",
        "3",
        "--admin",
        "none",
        "--summary-json",
        &summary_path.display().to_string(),
        "--report",
        &report_dir.display().to_string(),
    ]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(
        output.status.code(),
        Some(0),
        "some jobs were ok:\n{stdout}\n{stderr}"
    );

    let rows = common::read_rows(&db);
    let expected = expected(&rows);
    assert_known_failures(&expected, rows.len());
    let not_found = (
        "failed".to_string(),
        "infer".to_string(),
        "grpc NOT_FOUND".to_string(),
    );
    let deadline = (
        "failed".to_string(),
        "infer".to_string(),
        "deadline".to_string(),
    );

    // summary.json, both the --summary-json file and the report's copy.
    for path in [summary_path.clone(), report_dir.join("summary.json")] {
        assert_summary_failures(&common::read_summary_json(&path), &expected, &rows);
    }

    // The terminal table: one line per key, most frequent first, with the
    // count, the share, the most frequent exact text and a device that had it.
    let header = stdout
        .lines()
        .position(|line| line.starts_with("outcome ") && line.contains("most frequent reason"))
        .unwrap_or_else(|| panic!("no failure table in:\n{stdout}"));
    let table: Vec<&str> = stdout.lines().skip(header + 1).take(2).collect();
    for (line, key) in table.iter().zip([&not_found, &deadline]) {
        let (count, _) = expected[key];
        let (text, _) = top_text(&expected, key);
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[..2], &["failed", "infer"], "{line}");
        assert!(line.contains(&format!(" {} ", key.2)), "{line}");
        assert!(line.contains(&format!(" {count} ")), "{line}");
        let share = format!("{:.1}%", count as f64 * 100.0 / rows.len() as f64);
        assert!(line.contains(&share), "{line} lacks {share}");
        assert!(line.ends_with(&text), "{line} does not end with {text}");
        let device = line[..line.len() - text.len()]
            .split_whitespace()
            .last()
            .unwrap_or("");
        assert!(
            rows.iter()
                .any(|row| row.device_id == device && row.reason.as_deref() == Some(&text)),
            "{device} never failed with {text}"
        );
    }

    // The status line names the failed share and the top reason once jobs failed.
    assert!(
        stderr.lines().any(|line| line.contains("| failed ")
            && line.contains("%, top: infer grpc NOT_FOUND (infer: grpc status 5 NOT_FOUND")),
        "no status line with the failure note:\n{stderr}"
    );

    // The page, as Chromium renders it.
    let dom = common::browser::dump_dom(&report_dir.join("report.html"), dir.path());
    assert!(dom.contains("<h2>Failures</h2>"), "no Failures section");
    for key in [&not_found, &deadline] {
        let marker = format!("data-failure=\"{}/{}/{}\"", key.0, key.1, key.2);
        let start = dom
            .find(&marker)
            .unwrap_or_else(|| panic!("no {marker} row in the page"));
        let row = &dom[start..start + dom[start..].find("</tr>").unwrap_or(0)];
        let (count, _) = expected[key];
        assert!(
            row.contains(&format!("<td>{}</td>", grouped(count))),
            "{row}"
        );
        let (text, text_count) = top_text(&expected, key);
        assert!(
            row.contains(&format!("{text} × {}", grouped(text_count))),
            "{row} lacks {text}"
        );
    }

    // Failed jobs' time to failure beside the ok latencies (infer and end to
    // end: every failure here is an infer one), and the stacked per-second
    // plot of outcomes with bars of all three.
    assert!(
        dom.contains("Failed jobs: time to failure"),
        "no failed latencies"
    );
    for stage in ["failed_infer", "failed_end_to_end"] {
        assert!(
            dom.contains(&format!(
                "<svg viewBox=\"0 0 600 320\" class=\"chart\" role=\"img\" data-stage=\"{stage}\">"
            )),
            "no {stage} spectrum"
        );
    }
    assert!(
        !dom.contains("data-stage=\"failed_fetch\""),
        "no fetch failed"
    );
    for series in ["ok", "failed"] {
        assert!(
            dom.contains(&format!("class=\"bar\" data-series=\"{series}\"")),
            "no {series} bar in the outcomes plot"
        );
    }
    assert!(report_dir.join("failed_end_to_end.hgrm").is_file());
    assert!(!report_dir.join("failed_fetch.hgrm").exists());

    // `percore report` on the directory prints the same table, and the run's
    // totals line.
    let report = percore(&["report", &report_dir.display().to_string()]);
    let report_stdout = text(&report.stdout);
    for line in &table {
        assert!(
            report_stdout.contains(line),
            "{line} not in:\n{report_stdout}"
        );
    }
    for output in [&stdout, &report_stdout] {
        assert!(
            output.contains("failed: time to failure\nfetch         failed"),
            "no time-to-failure rows in:\n{output}"
        );
    }
    let totals = format!("{stdout}{stderr}")
        .lines()
        .find(|line| line.contains(" jobs in ") && line.contains("dispatcher CPU"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no totals line from the run:\n{stdout}\n{stderr}"));
    assert!(
        report_stdout.contains(&totals),
        "{totals} not in:\n{report_stdout}"
    );
}

#[test]
fn metrics_label_jobs_by_outcome_stage_and_reason_as_the_rows_do() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, faulty_compute());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config = common::config(
        vec![common::class(METER, source.addr, compute.addr)],
        300,
        db.clone(),
        GrpcConfig::default(),
    );
    let admin =
        AdminServer::start("127.0.0.1:0".parse().expect("an address")).expect("admin starts");
    let options = RunOptions {
        duration: Some(Duration::from_secs(3)),
        metrics: Some(admin.publisher()),
        mocks: Some(percore::demo::describe_mocks(
            &MockOptions::default(),
            &faulty_compute(),
        )),
        ..RunOptions::default()
    };
    let summary = match dispatcher::run(&config, &options) {
        Ok(summary) => summary,
        Err(error) => panic!("the run failed: {error}"),
    };
    let metrics = common::http_get(admin.addr(), "/metrics");
    admin.stop();

    let rows = common::read_rows(&db);
    let expected = expected(&rows);
    assert_known_failures(&expected, rows.len());
    // Sum the series over shards, by (outcome, stage, reason).
    let mut scraped: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for (labels, value) in common::samples(&metrics, "percore_jobs_total") {
        let label = |name: &str| {
            let start = labels
                .find(&format!("{name}=\""))
                .map(|i| i + name.len() + 2);
            start
                .and_then(|start| {
                    Some(labels[start..start + labels[start..].find('"')?].to_string())
                })
                .unwrap_or_else(|| panic!("no {name} label in {labels}"))
        };
        *scraped
            .entry((label("outcome"), label("stage"), label("reason")))
            .or_insert(0) += value as u64;
    }
    let ok = rows.iter().filter(|row| row.outcome == "ok").count() as u64;
    let mut want: BTreeMap<(String, String, String), u64> = expected
        .iter()
        .map(|(key, (count, _))| (key.clone(), *count))
        .collect();
    want.insert(("ok".into(), String::new(), String::new()), ok);
    // A shard with no skips still says so, with empty stage and reason.
    want.insert(("skipped".into(), String::new(), String::new()), 0);
    scraped.retain(|key, value| *value > 0 || key.0 == "skipped");
    assert_eq!(scraped, want, "{metrics}");
    // And the summary the run returned says the same.
    let json = summary.to_json();
    assert_summary_failures(&json, &expected, &rows);

    // Failed jobs' time to failure, kept apart: one end-to-end sample per
    // failed row, one infer sample per row that failed in infer (all of them
    // here), none in the ok jobs' histograms.
    let failed = rows.iter().filter(|row| row.outcome == "failed").count() as u64;
    let latency_failed = &json["latency_failed_us"];
    assert_eq!(
        latency_failed["end_to_end"]["count"], failed,
        "{latency_failed}"
    );
    assert_eq!(latency_failed["infer"]["count"], failed, "{latency_failed}");
    assert_eq!(latency_failed["fetch"]["count"], 0, "{latency_failed}");
    assert_eq!(json["latency_us"]["end_to_end"]["count"], ok);
    // The hung calls failed at the deadline: the slowest failure took about
    // that long, the NOT_FOUND ones far less.
    let deadline_us = METER.deadline_ms * 1_000;
    let slowest = latency_failed["infer"]["max"].as_u64().unwrap_or(0);
    assert!(
        slowest >= deadline_us * 9 / 10 && slowest <= deadline_us * 2,
        "slowest failed infer {slowest} µs, deadline {deadline_us} µs"
    );
    assert!(
        latency_failed["infer"]["p50"].as_u64().unwrap_or(u64::MAX) < deadline_us / 2,
        "{latency_failed}"
    );
    assert!(
        summary.latency_table().contains("failed: time to failure"),
        "{}",
        summary.latency_table()
    );
    // What served the run, in its configuration: the mocks, [grpc], the
    // class's upstream settings.
    let config = &json["config"];
    assert_eq!(
        config["mocks"]["compute_node"]["error_rate"], 0.3,
        "{config}"
    );
    assert_eq!(
        config["mocks"]["compute_node"]["hang_rate"], 0.1,
        "{config}"
    );
    assert_eq!(
        config["mocks"]["data_source"]["payload_bytes"], 1024,
        "{config}"
    );
    assert_eq!(
        config["grpc"]["retries"],
        GrpcConfig::default().retries,
        "{config}"
    );
    assert!(config["grpc"]["connect_timeout_ms"].is_u64(), "{config}");
    assert_eq!(
        config["classes"][0]["upstream"]["balancer"], "p2c",
        "{config}"
    );
    assert!(
        config["classes"][0]["upstream"]["hedge"].is_null(),
        "{config}"
    );
}

#[test]
fn a_run_where_every_job_failed_exits_4_and_says_why() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            error_rate: 1.0,
            error_code: Code::NOT_FOUND,
            ..MockOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config = common::write_config_file(
        dir.path(),
        source.addr,
        compute.addr,
        50,
        METER.period_ms,
        METER.deadline_ms,
        &db,
        "",
    );
    let output = run_binary(&config, "2");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    let rows = common::read_rows(&db);
    // None ok; a loaded machine may skip a tick or two besides.
    let failed = rows.iter().filter(|row| row.outcome == "failed").count();
    assert!(failed > 0);
    assert!(rows.iter().all(|row| row.outcome != "ok"));
    assert!(
        stderr.contains(&format!(
            "error: every job of the run failed ({failed} failed, none ok); top reasons:\n  infer grpc NOT_FOUND × {failed}: infer: grpc status 5 NOT_FOUND"
        )),
        "{stderr}"
    );

    // The same node healthy: exit 0, and no such message.
    let healthy = common::start_mock(MockKind::Compute, MockOptions::default());
    let config = common::write_config_file(
        dir.path(),
        source.addr,
        healthy.addr,
        50,
        METER.period_ms,
        METER.deadline_ms,
        &dir.path().join("healthy.db"),
        "",
    );
    let output = run_binary(&config, "1");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(!text(&output.stderr).contains("every job"));
}

fn run_binary(config: &Path, duration: &str) -> Output {
    percore(&[
        "run",
        "--config",
        &config.display().to_string(),
        "--duration",
        duration,
        "--admin",
        "none",
    ])
}
