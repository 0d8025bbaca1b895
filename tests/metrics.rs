//! The admin endpoint during a real run: Prometheus metrics scraped while jobs run
//! and after, with counters that add up to the run's totals.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::ClassSpec;
use percore::admin::AdminServer;
use percore::config::GrpcConfig;
use percore::dispatcher::{self, RunOptions};
use percore::mock::{MockKind, MockOptions};

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "forecast-lstm",
    period_ms: 200,
    deadline_ms: 200,
};

fn total(exposition: &str, name: &str, label: &str) -> f64 {
    common::samples(exposition, name)
        .iter()
        .filter(|(labels, _)| labels.contains(label))
        .map(|(_, value)| value)
        .sum()
}

#[test]
fn scraped_counters_add_up_to_the_run_totals() {
    let options = MockOptions {
        payload_bytes: 64,
        error_rate: 0.05,
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, options.clone());
    let compute = common::start_mock(MockKind::Compute, options);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = common::config(
        vec![common::class(METER, source.addr, compute.addr)],
        1_000,
        dir.path().join("jobs.db"),
        GrpcConfig::default(),
    );
    let admin =
        AdminServer::start("127.0.0.1:0".parse().expect("an address")).expect("admin starts");
    let addr = admin.addr();
    let publisher = admin.publisher();
    let run = std::thread::spawn(move || {
        let options = RunOptions {
            duration: Some(Duration::from_secs(3)),
            metrics: Some(publisher),
            ..RunOptions::default()
        };
        dispatcher::run(&config, &options)
    });

    // Snapshots are published once a second: poll until one shows jobs, within
    // the 3 s run.
    let polling_until = std::time::Instant::now() + Duration::from_millis(2_800);
    let mut during = common::http_get(addr, "/metrics");
    while total(&during, "percore_jobs_total", "outcome=") == 0.0
        && std::time::Instant::now() < polling_until
    {
        std::thread::sleep(Duration::from_millis(100));
        during = common::http_get(addr, "/metrics");
    }
    let summary = run
        .join()
        .expect("the run thread")
        .expect("the run succeeds");
    source.stop();
    compute.stop();
    let after = common::http_get(addr, "/metrics");
    let health = common::http_get(addr, "/healthz");
    admin.stop();

    assert!(during.starts_with("HTTP/1.1 200 OK"), "{during}");
    assert!(
        during.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{during}"
    );
    assert!(during.ends_with("# EOF\n"), "{during}");
    let jobs_during = total(&during, "percore_jobs_total", "outcome=");
    assert!(jobs_during > 0.0, "no jobs counted mid-run:\n{during}");
    assert!(jobs_during < summary.counters.jobs() as f64);

    let counters = &summary.counters;
    assert_eq!(
        total(&after, "percore_jobs_total", "outcome=\"ok\""),
        counters.ok as f64
    );
    assert_eq!(
        total(&after, "percore_jobs_total", "outcome=\"failed\""),
        counters.failed as f64
    );
    assert_eq!(
        total(&after, "percore_jobs_total", "outcome=\"skipped\""),
        counters.skipped as f64
    );
    assert!(counters.failed > 0, "the 5% error rate produced no failure");
    for (shard, shard_summary) in summary.per_shard.iter().enumerate() {
        let label = format!("shard=\"{shard}\",outcome=\"ok\"");
        assert_eq!(
            total(&after, "percore_jobs_total", &label),
            shard_summary.counters.ok as f64
        );
    }
    assert_eq!(
        total(&after, "percore_bytes_received_total", "shard="),
        summary
            .per_shard
            .iter()
            .map(|s| s.counters.bytes_received)
            .sum::<u64>() as f64
    );
    assert!(total(&after, "percore_bytes_sent_total", "shard=") > 0.0);
    // Each shard's executor ran tasks, and for some of the run's time.
    for shard in 0..summary.per_shard.len() {
        let label = format!("shard=\"{shard}\"");
        assert!(total(&after, "percore_shard_tasks_run_total", &label) > 0.0);
        assert!(total(&after, "percore_shard_scheduler_runs_total", &label) > 0.0);
        let busy = total(&after, "percore_shard_busy_seconds_total", &label);
        assert!(busy > 0.0 && busy < 10.0, "shard {shard} busy {busy} s");
        assert_eq!(total(&after, "percore_shard_stalls_total", &label), 0.0);
        // An idle moment of a shard is a park: a 3 s run has many.
        assert!(total(&after, "percore_shard_parks_total", &label) > 10.0);
    }
    assert_eq!(total(&after, "percore_in_flight", "shard="), 0.0);
    for (stage, histogram) in summary.latency.stages() {
        let count = total(
            &after,
            "percore_stage_latency_seconds_count",
            &format!("stage=\"{stage}\""),
        );
        assert_eq!(count, histogram.len() as f64, "stage {stage}");
        let inf = format!("le=\"+Inf\",stage=\"{stage}\"");
        assert_eq!(
            total(&after, "percore_stage_latency_seconds_bucket", &inf),
            count
        );
    }
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
}

/// The ok, failed and skipped counts of a status line.
fn status_counts(line: &str) -> Option<(u64, u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let rest = line.split(&format!("| {name} ")).nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    Some((field("ok")?, field("failed")?, field("skipped")?))
}

#[test]
fn a_scrape_right_after_a_status_line_shows_that_lines_counts() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::Instant;

    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(
        MockKind::Compute,
        MockOptions {
            error_rate: 0.1,
            ..MockOptions::default()
        },
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config = common::write_config_file(
        dir.path(),
        source.addr,
        compute.addr,
        2_000,
        500,
        400,
        &db,
        "",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args([
            "run",
            "--admin",
            "127.0.0.1:0",
            "--duration",
            "6",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("percore starts");
    // Every stderr line, with when it arrived.
    let (lines_tx, lines) = mpsc::channel::<(Instant, String)>();
    let stderr = child.stderr.take().expect("a stderr pipe");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send((Instant::now(), line));
        }
    });
    let mut admin: Option<SocketAddr> = None;
    let mut matched = 0;
    let mut pending: Vec<(Instant, String)> = Vec::new();
    loop {
        let (_, line) = match pending.pop() {
            Some(entry) => entry,
            None => match lines.recv_timeout(Duration::from_secs(20)) {
                Ok(entry) => entry,
                Err(_) => break,
            },
        };
        if let Some(address) = line
            .strip_prefix("metrics on http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
        {
            admin = Some(address.parse().expect("the admin address"));
            continue;
        }
        let (Some(addr), Some(counts)) = (admin, status_counts(&line)) else {
            continue;
        };
        let metrics = common::http_get(addr, "/metrics");
        // A newer status line may have come during the scrape: then the scrape
        // may show newer counts, and this sample says nothing.
        if let Ok(next) = lines.try_recv() {
            pending.push(next);
            continue;
        }
        let scraped = (
            total(&metrics, "percore_jobs_total", "outcome=\"ok\"") as u64,
            total(&metrics, "percore_jobs_total", "outcome=\"failed\"") as u64,
            total(&metrics, "percore_jobs_total", "outcome=\"skipped\"") as u64,
        );
        assert_eq!(scraped, counts, "scrape after the line {line:?}");
        matched += 1;
    }
    let status = child.wait().expect("percore ends");
    let _ = reader.join();
    source.stop();
    compute.stop();
    assert!(status.success(), "percore ended with {status}");
    assert!(
        matched >= 3,
        "only {matched} status lines could be checked against a scrape"
    );
}
