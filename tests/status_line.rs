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

/// On a terminal (a pty from util-linux `script`), a progress bar is drawn
/// under the status lines: every status line still arrives whole, above the
/// bar, and the bar's line is cleared before the summary is printed.
#[test]
fn on_a_terminal_a_progress_bar_sits_under_whole_status_lines() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("demo.db");
    let demo = format!(
        "{} demo --devices 400 --duration 3s --admin none --db {}",
        env!("CARGO_BIN_EXE_percore"),
        db.display()
    );
    let output = Command::new("script")
        .args(["-qec", &demo, "/dev/null"])
        .output()
        .expect("util-linux script runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let bar = on_one_line(&text, "] ", "% · ");
    assert!(bar, "no progress bar drawn on the terminal:\n{text:?}");
    assert!(text.contains("of 3s"), "{text:?}");
    // Every status line begins at a cleared line or a line start and is whole.
    let status: Vec<&str> = text
        .split(['\r', '\n'])
        .map(|line| line.trim_start_matches("\u{1b}[2K"))
        .filter(|line| line.starts_with("[   ") && line.contains("jobs/s"))
        .collect();
    assert!(status.len() >= 2, "{text:?}");
    for line in &status {
        assert!(line.contains("| committed"), "torn status line {line:?}");
    }
    // The summary comes after the bar was cleared, and no bar follows it.
    let summary = text.find(" jobs in ").expect("the summary is printed");
    assert!(text[..summary].rfind("\u{1b}[2K").is_some(), "{text:?}");
    assert!(!text[summary..].contains("% · "), "{text:?}");
}

/// Whether `text` has `start` followed later by `end` on one line.
fn on_one_line(text: &str, start: &str, end: &str) -> bool {
    text.split(['\r', '\n'])
        .any(|line| line.find(start).is_some_and(|at| line[at..].contains(end)))
}
