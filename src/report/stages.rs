//! `stages.html`: the page `percore bench --stages --report DIR` writes beside
//! `stages.json` — the stage table and the verdict, self-contained (no script,
//! no outside resource), in the palette of the run report's page.

use std::fmt::Write;

use crate::bench::search::thousands;
use crate::bench::stages::{criterion, StagesReport};

/// The page for `report`.
pub fn render_stages_html(report: &StagesReport) -> String {
    let mut rows = String::new();
    for result in &report.stages {
        let outcome = &result.outcome;
        let rate = |rate: Option<f64>| rate.map_or("–".to_string(), thousands);
        let confidence = outcome.confidence();
        let _ = writeln!(
            rows,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} of {}</td><td class=\"left\">{}</td></tr>",
            escape(result.stage.name()),
            rate(outcome.best),
            rate(outcome.best),
            rate(outcome.failing),
            outcome
                .best_p99_us()
                .map_or("–".to_string(), |p99| p99.to_string()),
            result
                .cpu_us_per_job
                .map_or("–".to_string(), |cpu| format!("{cpu:.1}")),
            confidence.agreed,
            confidence.runs,
            escape(criterion(result.stage)),
        );
    }
    let mut levels = String::new();
    for result in &report.stages {
        for verdict in &result.outcome.verdicts {
            let _ = writeln!(
                levels,
                "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                escape(result.stage.name()),
                thousands(verdict.rate),
                verdict.runs.len(),
                verdict
                    .median_p99_us()
                    .map_or("–".to_string(), |p99| p99.to_string()),
                if verdict.passed { "good" } else { "bad" },
                if verdict.passed { "pass" } else { "fail" },
            );
        }
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>percore bench --stages</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n\
         <header><h1>Stage by stage</h1>\
         <p class=\"sub\">Each stage alone at rising load; bound {bound} µs.</p></header>\n\
         <p class=\"verdict\" id=\"verdict\">{verdict}</p>\n\
         <section><h2>Highest rate under the bound</h2>\n\
         <table id=\"stages\"><thead><tr><th>stage</th><th>best jobs/s</th><th>passing</th>\
         <th>failing</th><th>p99 µs at best</th><th>cpu µs/job</th><th>runs agreed at the edge</th>\
         <th class=\"left\">pass criterion</th></tr></thead>\n<tbody>\n{rows}</tbody></table></section>\n\
         <section><h2>Every rate tried</h2>\n\
         <table id=\"levels\"><thead><tr><th>stage</th><th>jobs/s</th><th>runs</th>\
         <th>median p99 µs</th><th>verdict</th></tr></thead>\n<tbody>\n{levels}</tbody></table></section>\n\
         <footer>Written by percore bench --stages. The same data: <code>stages.json</code>.</footer>\n\
         </main>\n</body>\n</html>\n",
        bound = report.bound_us,
        verdict = escape(&report.verdict()),
    )
}

/// Text made safe for HTML element content.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The run report's palette and type, cut to what a table page needs.
const STYLE: &str = r##"
:root { --fg: #1f2933; --muted: #66788a; --line: #e3e8ee; --bg: #f5f7fa; --card: #fff;
  --a: #2563eb; --good: #047857; --bad: #b91c1c; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 28px 40px; }
header h1 { font-size: 22px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 16px; margin: 0 0 6px; }
.sub { color: var(--muted); margin: 2px 0; }
.verdict { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 12px 16px; font-size: 16px; font-weight: 600; margin: 20px 0 4px; }
section { margin-top: 30px; }
table { border-collapse: collapse; background: var(--card); border: 1px solid var(--line);
  border-radius: 10px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: right; }
thead th { color: var(--muted); font-size: 12px; font-weight: 600; }
tbody th { text-align: left; }
.left { text-align: left; }
.good { color: var(--good); } .bad { color: var(--bad); }
footer { color: var(--muted); font-size: 12px; margin-top: 36px; }
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::search::{Measure, RateVerdict, SearchOutcome, SearchSettings};
    use crate::bench::stages::StageResult;
    use crate::dispatcher::StageMode;

    #[test]
    fn the_page_carries_the_table_and_the_verdict() {
        let settings = SearchSettings {
            bound_us: 10_000,
            low: 100.0,
            high: 800.0,
            precision: 0.05,
            warm_up: true,
        };
        let result = |stage, best: f64| StageResult {
            stage,
            outcome: SearchOutcome {
                settings,
                verdicts: vec![RateVerdict {
                    rate: best,
                    runs: vec![Measure {
                        p99_us: Some(900),
                        clean: true,
                    }],
                    passed: true,
                }],
                best: Some(best),
                failing: Some(best * 1.04),
            },
            cpu_us_per_job: Some(3.25),
        };
        let report = StagesReport {
            bound_us: 10_000,
            stages: vec![
                result(StageMode::FetchOnly, 800.0),
                result(StageMode::InferOnly, 200.0),
                result(StageMode::SinkOnly, 400.0),
            ],
        };
        let page = render_stages_html(&report);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains(
            "infer limits the pipeline: 200 jobs/s, 2.0× below the next stage (sink 400 jobs/s)"
        ));
        assert!(page.contains("<tr><th>infer</th><td>200</td>"), "{page}");
        assert!(page.contains("3.2") || page.contains("3.3"), "{page}");
        // Self-contained: nothing loaded from elsewhere.
        assert!(!page.contains("src=") && !page.contains("href="));
    }
}
