//! A report directory round-trips: `write_dir` then `load_dir` gives the same
//! summary and the same interval histograms; and `load_dir` on a bad directory
//! says exactly what is wrong and where (missing directory, truncated log, a log of
//! another format version, no summary).

use std::path::Path;
use std::time::Duration;

use percore::report::{
    load_dir, new_histogram, stage_totals, text_table, write_dir, Interval, Recording, STAGES,
};
use serde_json::json;

/// Five stages × four seconds, each interval with its own shape and count.
fn recording() -> Recording {
    let mut intervals = Vec::new();
    for second in 0..4_u64 {
        for (rank, stage) in STAGES.iter().enumerate() {
            let mut histogram = new_histogram();
            let n = 50 + 10 * second + rank as u64;
            for i in 1..=n {
                histogram
                    .record(i * i * (rank as u64 + 1) + second)
                    .unwrap();
            }
            intervals.push(Interval {
                start: Duration::from_millis(second * 1_000 + 5),
                length: Duration::from_secs(1),
                stage: stage.to_string(),
                histogram,
            });
        }
    }
    Recording {
        summary: json!({
            "jobs": 1234, "ok": 1200, "failed": 30, "skipped": 4, "jobs_per_s": 308.5,
            "cpu_us_per_job": 9.75, "window_unix_ms": [1_700_000_000_000_i64, 1_700_000_004_000_i64],
            "latency_us": {"end_to_end": {"p50": 10, "p90": 20, "p99": 30, "p999": 40, "max": 50, "count": 1200}},
            "per_class": [{"class": "a", "model": "m", "ok": 1200, "failed": 30, "skipped": 4}],
            "per_shard": [{"shard": 0, "ok": 1200, "failed": 30, "skipped": 4}],
            "config": {"shards": 1, "classes": [{"name": "a", "period_ms": 100}]},
        }),
        intervals,
    }
}

#[test]
fn a_written_directory_loads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("nested/report");
    let written = recording();
    write_dir(&report, &written).unwrap();

    for file in ["summary.json", "histograms.hlog", "report.html"] {
        assert!(report.join(file).is_file(), "{file} not written");
    }
    for stage in STAGES {
        let hgrm = std::fs::read_to_string(report.join(format!("{stage}.hgrm"))).unwrap();
        assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        let total: u64 = written
            .intervals
            .iter()
            .filter(|i| i.stage == stage)
            .map(|i| i.histogram.len())
            .sum();
        assert!(
            hgrm.contains(&format!("Total count    = {total:>12}]")),
            "{stage}.hgrm:\n{hgrm}"
        );
    }

    let loaded = load_dir(&report).unwrap();
    assert_eq!(loaded.summary, written.summary);
    assert_eq!(loaded.intervals.len(), written.intervals.len());
    for (read, wrote) in loaded.intervals.iter().zip(&written.intervals) {
        assert_eq!(read.stage, wrote.stage);
        assert_eq!(read.start, wrote.start);
        assert_eq!(read.length, wrote.length);
        assert_eq!(read.histogram.len(), wrote.histogram.len());
        assert_eq!(read.histogram, wrote.histogram);
    }
    assert_eq!(stage_totals(&loaded), stage_totals(&written));
    assert_eq!(text_table(&loaded), text_table(&written));
    // Nothing failed: no failed_<stage>.hgrm, no time-to-failure rows.
    for stage in percore::report::FAILED_STAGES {
        assert!(
            !report.join(format!("{stage}.hgrm")).exists(),
            "{stage}.hgrm"
        );
    }
    assert!(!text_table(&loaded).contains("failed"));
}

#[test]
fn failed_and_skipped_intervals_round_trip_and_an_old_directory_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let mut written = recording();
    let old = written.clone();
    for (second, stage, values) in [
        (0, "failed_infer", vec![4_000, 5_000]),
        (0, "failed_end_to_end", vec![4_100, 5_200]),
        (1, "failed_end_to_end", vec![900]),
        (1, "failed_fetch", vec![800]),
        (1, "skipped", vec![12, 13, 14]),
    ] {
        let mut histogram = new_histogram();
        for v in values {
            histogram.record(v).unwrap();
        }
        written.intervals.push(Interval {
            start: Duration::from_secs(second),
            length: Duration::from_secs(1),
            stage: stage.into(),
            histogram,
        });
    }
    write_dir(&report, &written).unwrap();
    let hgrm = std::fs::read_to_string(report.join("failed_end_to_end.hgrm")).unwrap();
    assert!(
        hgrm.contains(&format!("Total count    = {:>12}]", 3)),
        "{hgrm}"
    );
    assert!(report.join("failed_fetch.hgrm").is_file());
    let loaded = load_dir(&report).unwrap();
    assert_eq!(loaded.intervals.len(), written.intervals.len());
    let tags = |r: &Recording| {
        let mut tags: Vec<(u64, String, u64)> = r
            .intervals
            .iter()
            .map(|i| (i.start.as_secs(), i.stage.clone(), i.histogram.len()))
            .collect();
        tags.sort();
        tags
    };
    assert_eq!(tags(&loaded), tags(&written));
    assert!(text_table(&loaded).contains("failed: time to failure"));

    // A directory from before failed latencies existed: no failed_*.hgrm, no
    // failed or skipped tags in its log. It loads and renders as "none failed".
    let old_dir = dir.path().join("old");
    write_dir(&old_dir, &old).unwrap();
    for stage in percore::report::FAILED_STAGES {
        let _ = std::fs::remove_file(old_dir.join(format!("{stage}.hgrm")));
    }
    let loaded = load_dir(&old_dir).unwrap();
    assert!(percore::report::failed_totals(&loaded)
        .iter()
        .all(|(_, h)| h.is_empty()));
    let html = percore::report::render_html(&loaded);
    assert!(!html.contains("Failed jobs: time to failure"));
}

/// `load_dir`'s error, as the operator reads it.
fn load_error(dir: &Path) -> String {
    match load_dir(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-run");
    assert_eq!(
        load_error(&missing),
        format!("percore report: {}: no such directory", missing.display())
    );
}

#[test]
fn a_truncated_log_names_the_line_it_ends_in() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &recording()).unwrap();
    let log_path = dir.path().join("histograms.hlog");
    let log = std::fs::read(&log_path).unwrap();
    // Cut in the middle of the line that spans the file's midpoint.
    let middle = log.len() / 2;
    let line_start = log[..middle].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    let line_end = middle + log[middle..].iter().position(|&b| b == b'\n').unwrap();
    let cut = (line_start + line_end) / 2;
    assert!(cut > line_start && cut < line_end);
    std::fs::write(&log_path, &log[..cut]).unwrap();
    let line = log[..line_start].iter().filter(|&&b| b == b'\n').count() + 1;
    assert_eq!(
        load_error(dir.path()),
        format!(
            "percore report: {} line {line}: truncated: the file ends in the middle of this line",
            log_path.display()
        )
    );

    // Cut at the end of a line, the end marker is what is missing.
    std::fs::write(&log_path, &log[..line_start]).unwrap();
    assert_eq!(
        load_error(dir.path()),
        format!(
            "percore report: {}: truncated: the file ends before its end marker",
            log_path.display()
        )
    );
}

#[test]
fn a_log_of_another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &recording()).unwrap();
    let log_path = dir.path().join("histograms.hlog");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.starts_with("#[percore report format 1]\n"));
    std::fs::write(
        &log_path,
        log.replacen(
            "#[percore report format 1]",
            "#[percore report format 3]",
            1,
        ),
    )
    .unwrap();
    assert_eq!(
        load_error(dir.path()),
        format!(
            "percore report: {}: written by percore report format 3, this is percore report format 1",
            log_path.display()
        )
    );

    // A log with no format line at all, e.g. one written by Java's HistogramLogWriter.
    std::fs::write(
        &log_path,
        log.replacen("#[percore report format 1]\n", "", 1),
    )
    .unwrap();
    assert_eq!(
        load_error(dir.path()),
        format!(
            "percore report: {}: not written by percore report (no \"#[percore report format 1]\" line before the first histogram)",
            log_path.display()
        )
    );
}

#[test]
fn a_missing_summary_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &recording()).unwrap();
    let summary = dir.path().join("summary.json");
    std::fs::remove_file(&summary).unwrap();
    assert_eq!(
        load_error(dir.path()),
        format!(
            "percore report: {}: missing (not a percore report directory?)",
            summary.display()
        )
    );

    // A summary that is not JSON names its line.
    std::fs::write(&summary, "{\n  \"jobs\": 12,\n  oops\n}\n").unwrap();
    let error = load_error(dir.path());
    assert!(
        error.starts_with(&format!(
            "percore report: {} line 3: invalid JSON: ",
            summary.display()
        )),
        "{error}"
    );
}

#[test]
fn a_sweep_root_points_to_its_levels() {
    let root = tempfile::tempdir().unwrap();
    for level in ["rate-20000", "rate-40000"] {
        write_dir(&root.path().join(level), &recording()).unwrap();
    }
    std::fs::create_dir(root.path().join("not-a-report")).unwrap();
    assert_eq!(
        load_error(root.path()),
        format!(
            "percore report: {}: a sweep's reports, one per level; run percore report on one of: \
             rate-20000/, rate-40000/",
            root.path().display()
        )
    );
    // Each level loads on its own.
    assert!(load_dir(&root.path().join("rate-40000")).is_ok());
}
