//! The once-a-second status line of `percore run`: no empty first line, and
//! the latency column keeps one unit (ms) for the whole run.

mod common;

use std::process::Command;

use percore::mock::{MockKind, MockOptions, ServiceTime};

#[test]
fn status_lines_start_with_the_first_whole_second_and_keep_their_unit() {
    // 4 ms per call: latencies around the old 10 ms switch from µs to ms.
    let slowish = MockOptions {
        service_time: ServiceTime::Exponential {
            mean: std::time::Duration::from_millis(4),
        },
        ..MockOptions::default()
    };
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, slowish);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config = common::write_config_file(
        dir.path(),
        source.addr,
        compute.addr,
        500,
        500,
        500,
        &db,
        "",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--admin", "none", "--duration", "3s", "--config"])
        .arg(&config)
        .output()
        .expect("the binary runs");
    source.stop();
    compute.stop();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with('['))
        .collect();
    assert!(lines.len() >= 2, "status lines: {lines:?}");
    for line in &lines {
        let p99 = line
            .split(" | ")
            .find_map(|part| part.trim().strip_prefix("p99 e2e"))
            .unwrap_or_else(|| panic!("no p99 in {line:?}"))
            .trim();
        assert!(p99.ends_with(" ms"), "p99 in ms: {line:?}");
        let jobs: u64 = line
            .split(" | ")
            .next()
            .and_then(|part| part.split_whitespace().last())
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("no jobs/s in {line:?}"));
        // 500 devices every 500 ms: about 1,000 jobs a second, never an empty
        // line (a line after the 3 s window, while the last jobs drain, may be).
        let at: u64 = line
            .trim_start_matches('[')
            .split('s')
            .next()
            .and_then(|seconds| seconds.trim().parse().ok())
            .unwrap_or_else(|| panic!("no time in {line:?}"));
        if at <= 3 {
            assert!(jobs > 500, "{line:?}");
        }
    }
}
