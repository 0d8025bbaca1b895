//! `report.html` renders in a real browser: headless Chromium (Debian's `chromium`,
//! installed by `tests/run-all.sh`) loads the page from disk with the network
//! unused, runs its script, and the DOM it dumps must hold one spectrum `<svg>` per
//! stage with a real curve, and the percentile table must list every stage. A
//! screenshot is saved under the test's temp dir (kept and printed when
//! `PERCORE_KEEP_REPORT=1`).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::browser::{chromium, dump_dom};

use percore::report::{
    new_histogram, render_comparison_html, write_dir, Interval, Recording, STAGES,
};
use serde_json::json;

/// A small deterministic generator, so the page always shows the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Latency around `median` µs with a long tail.
    fn latency(&mut self, median: f64) -> u64 {
        let u = self.next().max(1e-12);
        let tail = (1.0 / u).powf(0.35);
        (median * tail * (0.7 + 0.3 * self.next())).max(1.0) as u64
    }
}

/// All five stages, `seconds` seconds of intervals, two classes, two shards.
fn recording(seconds: u64, jobs_per_second: u64, scale: f64) -> Recording {
    let medians = [
        ("schedule_lag", 40.0),
        ("fetch", 300.0),
        ("infer", 2_100.0),
        ("sink_lag", 900.0),
        ("end_to_end", 2_600.0),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut intervals = Vec::new();
    for second in 0..seconds {
        // A slow second in the middle, as a real run might have.
        let slow = if second == seconds / 2 { 3.0 } else { 1.0 };
        for (stage, median) in medians {
            let mut histogram = new_histogram();
            let n = jobs_per_second - second * 7;
            for _ in 0..n {
                histogram.saturating_record(rng.latency(median * scale * slow));
            }
            intervals.push(Interval {
                start: Duration::from_secs(second),
                length: Duration::from_secs(1),
                stage: stage.to_string(),
                histogram,
            });
        }
    }
    // Failed jobs' time to failure and skipped ticks, a few each second: more
    // in the slow second.
    let (failed_per_second, skipped_per_second) = (jobs_per_second / 20, jobs_per_second / 40);
    for second in 0..seconds {
        let slow = if second == seconds / 2 { 3 } else { 1 };
        for (tag, median, n) in [
            ("failed_infer", 4_000.0, failed_per_second * slow),
            ("failed_end_to_end", 4_500.0, failed_per_second * slow),
            ("skipped", 30.0, skipped_per_second * slow),
        ] {
            let mut histogram = new_histogram();
            for _ in 0..n {
                histogram.saturating_record(rng.latency(median * scale));
            }
            intervals.push(Interval {
                start: Duration::from_secs(second),
                length: Duration::from_secs(1),
                stage: tag.to_string(),
                histogram,
            });
        }
    }
    let jobs: u64 = (0..seconds).map(|s| jobs_per_second - s * 7).sum();
    let class_latency = |p50: u64| {
        json!({"end_to_end": {"p50": p50, "p90": p50 * 2, "p99": p50 * 5, "p999": p50 * 9, "max": p50 * 14, "count": jobs / 2},
                                         "infer": {"p50": p50 * 4 / 5, "p90": p50, "p99": p50 * 4, "p999": p50 * 8, "max": p50 * 12, "count": jobs / 2}})
    };
    Recording {
        summary: json!({
            "jobs": jobs, "ok": jobs - 12, "failed": 9, "skipped": 3, "rows_written": jobs,
            "elapsed_s": seconds as f64, "jobs_per_s": jobs as f64 / seconds as f64,
            "cpu_us_per_job": 11.4 * scale, "dispatcher_cpu_s": 0.42, "shards": 2,
            "window_unix_ms": [1_714_564_800_000_i64, 1_714_564_800_000_i64 + seconds as i64 * 1000],
            "sink": "/tmp/run/jobs.db",
            "per_class": [
                {"class": "camera", "model": "resnet50", "ok": jobs / 2 - 7, "failed": 5, "skipped": 2, "latency_us": class_latency(2_400)},
                {"class": "thermo", "model": "tinyml", "ok": jobs / 2 - 5, "failed": 4, "skipped": 1, "latency_us": class_latency(1_100)},
                // Every job of this class failed: its ok latencies are "–", not 0.
                {"class": "doorbell", "model": "gone", "ok": 0, "failed": 40, "skipped": 0,
                 "latency_us": {"infer": {"p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "count": 0},
                                "end_to_end": {"p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "count": 0}}},
            ],
            "replicas": [
                {"class": "camera", "role": "data_source", "replica": "10.0.0.5:7001", "requests": jobs / 2, "failures": 0, "ejections": 0, "ewma_latency_us": 310.0, "ready_shards": 2, "shards": 2},
                {"class": "camera", "role": "compute_node", "replica": "10.0.0.7:8001", "requests": jobs / 4 + 40, "failures": 5, "ejections": 1, "ewma_latency_us": 2_250.0, "ready_shards": 2, "shards": 2},
                {"class": "camera", "role": "compute_node", "replica": "10.0.0.8:8001", "requests": jobs / 4 - 40, "failures": 0, "ejections": 0, "ewma_latency_us": 1_980.0, "ready_shards": 2, "shards": 2},
                {"class": "thermo", "role": "compute_node", "replica": "10.0.0.7:8001", "requests": jobs / 2, "failures": 4, "ejections": 0, "ewma_latency_us": 900.0, "ready_shards": 2, "shards": 2},
            ],
            "per_shard": [
                {"shard": 0, "ok": jobs / 2 - 6, "failed": 5, "skipped": 1, "latency_us": class_latency(2_000)},
                {"shard": 1, "ok": jobs / 2 - 6, "failed": 4, "skipped": 2, "latency_us": class_latency(2_100)},
            ],
            "config": {
                "shards": [0, 1], "load": {"mode": "closed", "concurrency": 64},
                "classes": [{"name": "camera", "period_ms": 1000, "model": "resnet50"},
                            {"name": "thermo", "period_ms": 250, "model": "tinyml"}],
                "grpc": {"retries": 1, "connect_timeout_ms": 1000, "retry_budget_percent": 20},
                "mocks": {"compute_node": {"service_time": {"fixed_us": 2000}, "payload_bytes": 1024, "error_rate": 0.001}},
            },
        }),
        intervals,
    }
}

/// The opening tag and contents of the `<svg>` whose `data-stage` is `stage`.
fn stage_svg<'a>(dom: &'a str, stage: &str) -> Option<&'a str> {
    let mut rest = dom;
    while let Some(start) = rest.find("<svg") {
        let svg = &rest[start..];
        let end = svg.find("</svg>")?;
        let open_tag = &svg[..svg.find('>')?];
        if open_tag.contains(&format!("data-stage=\"{stage}\"")) {
            return Some(&svg[..end]);
        }
        rest = &svg[end..];
    }
    None
}

/// The `<svg>` whose `data-timeline` is `timeline`.
fn timeline_svg<'a>(dom: &'a str, timeline: &str) -> Option<&'a str> {
    let start = dom.find(&format!("data-timeline=\"{timeline}\""))?;
    let svg = &dom[dom[..start].rfind("<svg")?..];
    Some(&svg[..svg.find("</svg>")?])
}

/// (bottom, top) in SVG y of each bar of `series`, in drawing order (by second).
fn bar_edges(svg: &str, series: &str) -> Vec<(f64, f64)> {
    let attribute = |tag: &str, name: &str| -> Option<f64> {
        tag.split(&format!(" {name}=\""))
            .nth(1)?
            .split('"')
            .next()?
            .parse()
            .ok()
    };
    svg.split("<rect")
        .skip(1)
        .map(|rect| &rect[..rect.find('>').unwrap_or(rect.len())])
        .filter(|tag| tag.contains(&format!("class=\"bar\" data-series=\"{series}\"")))
        .filter_map(|tag| {
            let (y, height) = (attribute(tag, "y")?, attribute(tag, "height")?);
            Some((y + height, y))
        })
        .collect()
}

/// The coordinate pairs of every curve (`<path class="curve" d="M x,y L x,y …">`).
fn curves(svg: &str) -> Vec<Vec<(f64, f64)>> {
    let mut curves = Vec::new();
    for path in svg.split("<path").skip(1) {
        let tag = &path[..path.find('>').unwrap_or(path.len())];
        if !tag.contains("class=\"curve\"") {
            continue;
        }
        let Some(d) = tag.split("d=\"").nth(1).and_then(|d| d.split('"').next()) else {
            continue;
        };
        let points: Vec<(f64, f64)> = d
            .split(['M', 'L', ' '])
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (x, y) = p.split_once(',')?;
                Some((x.parse().ok()?, y.parse().ok()?))
            })
            .collect();
        curves.push(points);
    }
    curves
}

/// A curve that is really drawn: several distinct, finite points that go right.
fn assert_real_curve(stage: &str, points: &[(f64, f64)]) {
    assert!(points.len() >= 5, "{stage}: only {} points", points.len());
    assert!(
        points.iter().all(|(x, y)| x.is_finite() && y.is_finite()),
        "{stage}: {points:?}"
    );
    let (first, last) = (points[0], points[points.len() - 1]);
    assert!(
        last.0 > first.0 + 100.0,
        "{stage}: the curve does not span the x axis: {points:?}"
    );
    // Latency grows with the percentile: the last point is higher (smaller SVG y).
    assert!(
        last.1 < first.1,
        "{stage}: the curve does not rise: {points:?}"
    );
}

#[test]
fn report_page_draws_every_stage_in_headless_chromium() {
    let dir = tempfile::Builder::new()
        .prefix("percore-report-html-")
        .tempdir()
        .unwrap();
    let report = dir.path().join("report");
    write_dir(&report, &recording(8, 400, 1.0)).unwrap();
    let page = report.join("report.html");

    let dom = dump_dom(&page, dir.path());
    assert!(
        dom.contains("data-rendered=\"true\""),
        "the page's script did not finish:\n{dom}"
    );
    for stage in STAGES {
        let svg = stage_svg(&dom, stage)
            .unwrap_or_else(|| panic!("no <svg data-stage=\"{stage}\"> in the DOM"));
        let curves = curves(svg);
        assert_eq!(curves.len(), 1, "{stage}: one run, one curve");
        assert_real_curve(stage, &curves[0]);
        assert!(
            dom.contains(&format!("<tr data-stage=\"{stage}\"><td>{stage}</td>")),
            "the percentile table has no row for {stage}"
        );
    }
    // Failed jobs' time to failure beside the ok spectra, labelled, for the
    // stages that had failures.
    assert!(
        dom.contains("Failed jobs: time to failure"),
        "no failed-latency heading"
    );
    for stage in ["failed_infer", "failed_end_to_end"] {
        let svg = stage_svg(&dom, stage)
            .unwrap_or_else(|| panic!("no <svg data-stage=\"{stage}\"> in the DOM"));
        assert_real_curve(stage, &curves(svg)[0]);
        assert!(
            dom.contains(&format!(
                "<tr data-stage=\"{stage}\"><td>{stage}</td><td class=\"text\">failed</td>"
            )),
            "the failed percentile table has no row for {stage}"
        );
    }
    assert!(
        stage_svg(&dom, "failed_fetch").is_none(),
        "no fetch failed, so no failed fetch spectrum"
    );
    // The class whose jobs all failed: "–" for its ok latencies, never 0.
    assert!(
        dom.contains(
            "<td class=\"text\">doorbell</td><td class=\"text\">gone</td><td>0</td><td>40</td><td>0</td>\
             <td>–</td><td>–</td><td>–</td><td>–</td><td>–</td><td>–</td></tr>"
        ),
        "the all-failed class's row"
    );
    // The stacked per-second plot of outcomes: every second a bar of each
    // series, and a legend naming them.
    let outcomes = timeline_svg(&dom, "outcomes").expect("no outcomes plot");
    for series in ["ok", "failed", "skipped"] {
        let bars = outcomes
            .matches(&format!("class=\"bar\" data-series=\"{series}\""))
            .count();
        assert_eq!(bars, 8, "{series}: one bar per second");
        assert!(
            outcomes.contains(&format!(">{series}</text>")),
            "{series} missing from the legend"
        );
    }
    assert!(outcomes.contains("class=\"legend\""), "no legend");
    // Stacked: each second's failed bar sits on its ok bar.
    let top_of_ok = bar_edges(outcomes, "ok");
    let bottom_of_failed = bar_edges(outcomes, "failed");
    for ((_, ok_top), (failed_bottom, _)) in top_of_ok.iter().zip(&bottom_of_failed) {
        assert!(
            (ok_top - failed_bottom).abs() < 0.2,
            "failed bars are not stacked on ok bars: {top_of_ok:?} {bottom_of_failed:?}"
        );
    }
    // The plots over time and the tables from the summary are there too.
    for timeline in ["throughput", "latency"] {
        assert!(
            dom.contains(&format!("data-timeline=\"{timeline}\"")),
            "no {timeline} plot"
        );
    }
    for text in [
        "resnet50",
        "tinyml",
        "classes[1].period_ms",
        "99.99%",
        "grpc.connect_timeout_ms",
        "mocks.compute_node.service_time.fixed_us",
        "mocks.compute_node.payload_bytes",
    ] {
        assert!(dom.contains(text), "{text} missing from the page");
    }
    // The Replicas table: one row per replica of each class's sets, the same
    // node once per class it serves.
    assert!(dom.contains("<h2>Replicas</h2>"), "no Replicas section");
    for replica in ["10.0.0.5:7001", "10.0.0.7:8001", "10.0.0.8:8001"] {
        assert!(
            dom.contains(&format!("<tr data-replica=\"{replica}\">")),
            "the Replicas table has no row for {replica}"
        );
    }
    assert_eq!(dom.matches("<tr data-replica=").count(), 4);
    assert!(
        dom.contains("<td class=\"text\">thermo</td><td class=\"text\">compute node</td><td class=\"text\">10.0.0.7:8001</td>"),
        "the thermo row of the shared node is missing"
    );

    let screenshot = dir.path().join("report.png");
    chromium(
        &page,
        &dir.path().join("profile-shot"),
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,2400".to_string(),
        ],
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    assert!(
        png.len() > 10 * 1024,
        "the screenshot is only {} bytes: a blank page?",
        png.len()
    );
    keep_if_asked(dir, "report");
}

#[test]
fn comparison_page_overlays_both_runs() {
    let dir = tempfile::Builder::new()
        .prefix("percore-report-compare-")
        .tempdir()
        .unwrap();
    let page = dir.path().join("compare.html");
    let html = render_comparison_html(
        &recording(6, 300, 1.6),
        "tonic",
        &recording(6, 420, 1.0),
        "percore",
    );
    std::fs::write(&page, html).unwrap();

    let dom = dump_dom(&page, dir.path());
    assert!(
        dom.contains("data-rendered=\"true\""),
        "the page's script did not finish:\n{dom}"
    );
    for stage in STAGES {
        let svg = stage_svg(&dom, stage)
            .unwrap_or_else(|| panic!("no <svg data-stage=\"{stage}\"> in the DOM"));
        let curves = curves(svg);
        assert_eq!(curves.len(), 2, "{stage}: two runs, two curves");
        for curve in &curves {
            assert_real_curve(stage, curve);
        }
        assert!(
            svg.contains(">A tonic</text>") && svg.contains(">B percore</text>"),
            "{stage}: no legend"
        );
    }
    assert!(dom.contains("<td>jobs/s</td>"), "no side-by-side table");

    let screenshot = dir.path().join("compare.png");
    chromium(
        &page,
        &dir.path().join("profile-shot"),
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,2400".to_string(),
        ],
    );
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10 * 1024);
    keep_if_asked(dir, "comparison");
}

/// With `PERCORE_KEEP_REPORT=1` the temp dir outlives the test, to look at.
fn keep_if_asked(dir: tempfile::TempDir, what: &str) {
    if std::env::var_os("PERCORE_KEEP_REPORT").is_some() {
        let path: PathBuf = dir.keep();
        eprintln!("{what} page and screenshot kept in {}", path.display());
    }
}
