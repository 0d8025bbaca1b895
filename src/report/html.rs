//! `report.html`: one self-contained page per run (or per pair of runs) that opens
//! offline: no network, no fonts, no libraries.
//!
//! The tables (percentiles per stage, per class, per replica, per shard,
//! configuration) are
//! plain HTML written here, so they read without JavaScript. The plots are drawn
//! in the browser by [`SCRIPT`], a small vanilla-JS renderer that turns the data
//! embedded in `<script type="application/json" id="percore-data">` into inline
//! SVG: a percentile spectrum per stage (x in "nines": 0%, 90%, 99%, 99.9% …,
//! i.e. log10(1/(1-p))) of ok jobs and, apart and labelled, of failed jobs' time
//! to failure; jobs per second by outcome (ok / failed / skipped, stacked bars),
//! throughput of ok jobs per second and their end-to-end latency per second.
//! A comparison page draws both runs on the same axes.

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::hgrm::{percentile_steps, PercentileStep};
use super::{
    failed_totals, failure_rows, new_histogram, ratio, replica_rows, replica_shares, stage_jobs,
    stage_totals, summary_number, FailureRow, Recording, ReplicaRow, FORMAT_VERSION, SKIPPED_TAG,
};

/// Percentile steps per half distance in the plotted spectra: twice the `.hgrm`
/// density, for smoother curves.
const SPECTRUM_TICKS_PER_HALF_DISTANCE: u32 = 10;

/// The page for one run.
pub fn render_html(recording: &Recording) -> String {
    let summary = &recording.summary;
    let totals = stage_totals(recording);
    let mut body = String::new();

    let _ = write!(
        body,
        "<header><h1>percore run report</h1><p class=\"sub\">{}</p></header>",
        escape(&run_facts(summary))
    );
    body.push_str(&cards(recording, &totals));

    body.push_str(
        "<section><div class=\"section-head\"><h2>Latency by percentile</h2>\
         <div class=\"toggle\" role=\"group\" aria-label=\"latency axis\">\
         <button type=\"button\" data-scale=\"linear\" class=\"on\">linear</button>\
         <button type=\"button\" data-scale=\"log\">log</button></div></div>\
         <p class=\"note\">Each stage's whole-run distribution: x is the percentile on a \
         \"nines\" scale (log10 of 1/(1−p)), y the latency. The last point is the maximum.</p>",
    );
    body.push_str(&spectrum_figures(&[&totals]));
    // Failed jobs' time to failure beside the ok jobs', each stage only when
    // some job failed in it.
    let failed: Vec<(String, Histogram<u64>)> = failed_totals(recording)
        .into_iter()
        .filter(|(_, h)| !h.is_empty())
        .collect();
    if !failed.is_empty() {
        body.push_str(
            "<h3 id=\"failed-latency\">Failed jobs: time to failure</h3><p class=\"note\">\
             Kept apart from the ok jobs' latencies above: how long the stage that \
             failed took until it failed (fetch, infer), and each failed job end to end.</p>",
        );
        body.push_str(&spectrum_figures(&[&failed]));
    }
    body.push_str("</section>");

    body.push_str(
        "<section><h2>Over time</h2><p class=\"note\">One point per second of the run: \
         ok jobs completed per second (from the ok end-to-end samples), that second's \
         end-to-end latency of ok jobs, and every job by outcome, stacked: ok and failed \
         by the second they completed in, skipped by the second they were skipped in.</p>\
         <div class=\"plots\">\
         <figure data-plot=\"outcomes\"><figcaption>Jobs per second by outcome</figcaption></figure>\
         <figure data-plot=\"throughput\"><figcaption>Throughput of ok jobs</figcaption></figure>\
         <figure data-plot=\"latency-over-time\"><figcaption>End-to-end latency per second (ok jobs)</figcaption></figure>\
         </div></section>",
    );

    body.push_str(
        "<section><h2>Percentiles (µs)</h2><p class=\"note\">Fetch, infer and end to end \
         are of ok jobs; schedule lag of every job that ran; sink lag of every row.</p>",
    );
    body.push_str(&percentile_table(&totals));
    if !failed.is_empty() {
        body.push_str("<h3>Failed jobs: time to failure (µs)</h3>");
        body.push_str(&percentile_table(&failed));
    }
    body.push_str("</section>");

    body.push_str("<section><h2>Failures</h2>");
    body.push_str(&failures_table(&failure_rows(summary)));
    body.push_str("</section>");

    body.push_str("<section><h2>Per class</h2>");
    body.push_str(&rows_table(
        summary.get("per_class"),
        &[("class", "class"), ("model", "model")],
        "No per-class rows in this run's summary.",
    ));
    body.push_str("</section><section><h2>Replicas</h2>");
    body.push_str(&replicas_table(&replica_rows(summary)));
    body.push_str("</section><section><h2>Per shard</h2>");
    body.push_str(&rows_table(
        summary.get("per_shard"),
        &[("shard", "shard")],
        "No per-shard rows in this run's summary.",
    ));
    body.push_str("</section><section><h2>Configuration</h2>");
    body.push_str(&config_table(&[summary.get("config")], &["value"]));
    body.push_str("</section>");

    let data = json!({
        "kind": "run",
        "runs": [run_data(recording, "run", &totals)],
    });
    page("percore run report", &body, &data)
}

/// The page comparing two runs: A (`a_name`) and B (`b_name`).
pub fn render_comparison_html(a: &Recording, a_name: &str, b: &Recording, b_name: &str) -> String {
    let totals_a = stage_totals(a);
    let totals_b = stage_totals(b);
    let mut body = String::new();
    let _ = write!(
        body,
        "<header><h1>percore comparison</h1>\
         <p class=\"sub\"><span class=\"swatch a\"></span><b>A</b> {} — {}</p>\
         <p class=\"sub\"><span class=\"swatch b\"></span><b>B</b> {} — {}</p></header>",
        escape(a_name),
        escape(&run_facts(&a.summary)),
        escape(b_name),
        escape(&run_facts(&b.summary)),
    );
    body.push_str(&comparison_cards(a, b, &totals_a, &totals_b));

    body.push_str(
        "<section><div class=\"section-head\"><h2>Latency by percentile</h2>\
         <div class=\"toggle\" role=\"group\" aria-label=\"latency axis\">\
         <button type=\"button\" data-scale=\"linear\" class=\"on\">linear</button>\
         <button type=\"button\" data-scale=\"log\">log</button></div></div>\
         <p class=\"note\">Both runs' whole-run distributions on the same axes; x is the \
         percentile on a \"nines\" scale (log10 of 1/(1−p)).</p>",
    );
    body.push_str(&spectrum_figures(&[&totals_a, &totals_b]));
    body.push_str("</section>");

    body.push_str(
        "<section><h2>Over time</h2><div class=\"plots\">\
         <figure data-plot=\"throughput\"><figcaption>Throughput</figcaption></figure>\
         <figure data-plot=\"latency-over-time\"><figcaption>End-to-end p99 per second</figcaption></figure>\
         </div></section>",
    );

    body.push_str(
        "<section><h2>Side by side</h2><p class=\"note\">B/A below 1 means B is lower; \
         green where B is better by more than 2%, red where it is worse.</p>",
    );
    body.push_str(&comparison_tables(
        a, a_name, b, b_name, &totals_a, &totals_b,
    ));
    body.push_str("</section>");

    body.push_str("<section><h2>Configuration</h2>");
    body.push_str(&config_table(
        &[a.summary.get("config"), b.summary.get("config")],
        &[&format!("A {a_name}"), &format!("B {b_name}")],
    ));
    body.push_str("</section>");

    let data = json!({
        "kind": "comparison",
        "runs": [run_data(a, a_name, &totals_a), run_data(b, b_name, &totals_b)],
    });
    page(&format!("percore: {a_name} vs {b_name}"), &body, &data)
}

/// The whole document around `body`, with the data for the script.
fn page(title: &str, body: &str, data: &Value) -> String {
    // "<", ">" and "&" only occur inside JSON strings, where \u escapes mean the
    // same: nothing in the data can close the script element.
    let data = serde_json::to_string(data)
        .expect("a serde_json::Value always serializes")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"percore report format {FORMAT_VERSION}\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}\n\
         <noscript><p class=\"note\">The plots need JavaScript; the tables do not.</p></noscript>\n\
         <p id=\"render-error\" class=\"error\" hidden></p>\n\
         <footer>Written by percore (report format {FORMAT_VERSION}). The same data: \
         <code>summary.json</code>, <code>&lt;stage&gt;.hgrm</code> and \
         <code>failed_&lt;stage&gt;.hgrm</code> (HdrHistogram percentile distributions), \
         <code>histograms.hlog</code> (per-second interval log).</footer>\n\
         </main>\n<script type=\"application/json\" id=\"percore-data\">{data}</script>\n\
         <script>{SCRIPT}</script>\n</body>\n</html>\n",
        escape(title)
    )
}

/// What the script needs of one run: per-stage spectra and percentiles, and the
/// per-second series.
fn run_data(recording: &Recording, name: &str, totals: &[(String, Histogram<u64>)]) -> Value {
    let failed: Vec<(String, Histogram<u64>)> = failed_totals(recording)
        .into_iter()
        .filter(|(_, h)| !h.is_empty())
        .collect();
    let stages: Vec<Value> = totals
        .iter()
        .chain(&failed)
        .map(|(stage, h)| {
            let spectrum: Vec<Value> = percentile_steps(h, SPECTRUM_TICKS_PER_HALF_DISTANCE)
                .iter()
                .map(
                    |PercentileStep {
                         value, percentile, ..
                     }| json!([percentile, value]),
                )
                .collect();
            json!({
                "stage": stage,
                "count": h.len(),
                "p50": h.value_at_quantile(0.5),
                "p99": h.value_at_quantile(0.99),
                "max": h.max(),
                "spectrum": spectrum,
            })
        })
        .collect();

    // End-to-end intervals by start (ms): throughput and latency per second.
    let mut seconds: BTreeMap<u128, (f64, Histogram<u64>)> = BTreeMap::new();
    for interval in recording
        .intervals
        .iter()
        .filter(|i| i.stage == "end_to_end")
    {
        let (length, h) = seconds
            .entry(interval.start.as_millis())
            .or_insert_with(|| (interval.length.as_secs_f64(), new_histogram()));
        *length = length.max(interval.length.as_secs_f64());
        h.auto(true);
        let _ = h.add(&interval.histogram);
    }
    let mut t = Vec::new();
    let mut jobs_per_s = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for (start_ms, (length, h)) in &seconds {
        t.push(*start_ms as f64 / 1000.0);
        jobs_per_s.push(if *length > 0.0 {
            h.len() as f64 / length
        } else {
            0.0
        });
        // A second without samples has no latency: null, a gap in the line.
        p50.push((!h.is_empty()).then(|| h.value_at_quantile(0.5)));
        p99.push((!h.is_empty()).then(|| h.value_at_quantile(0.99)));
    }
    json!({
        "name": name,
        "stages": stages,
        "timeline": {"t": t, "jobs_per_s": jobs_per_s, "p50": p50, "p99": p99},
        "outcomes": outcomes_per_second(recording),
    })
}

/// Jobs per second by outcome, one entry per second of the log: ok and failed
/// from the end-to-end samples (`end_to_end`, `failed_end_to_end`), skipped
/// from the `skipped` samples. A log without the failed or skipped tags (an
/// older run) reads as none.
fn outcomes_per_second(recording: &Recording) -> Value {
    // Start (ms) → (length s, ok, failed, skipped).
    let mut seconds: BTreeMap<u128, (f64, [u64; 3])> = BTreeMap::new();
    for interval in &recording.intervals {
        let slot = match interval.stage.as_str() {
            "end_to_end" => 0,
            "failed_end_to_end" => 1,
            SKIPPED_TAG => 2,
            _ => continue,
        };
        let (length, counts) = seconds
            .entry(interval.start.as_millis())
            .or_insert((0.0, [0; 3]));
        *length = length.max(interval.length.as_secs_f64());
        counts[slot] += interval.histogram.len();
    }
    let mut t = Vec::new();
    let mut per_s: [Vec<f64>; 3] = Default::default();
    for (start_ms, (length, counts)) in &seconds {
        t.push(*start_ms as f64 / 1000.0);
        for (series, count) in per_s.iter_mut().zip(counts) {
            series.push(if *length > 0.0 {
                *count as f64 / length
            } else {
                0.0
            });
        }
    }
    let [ok, failed, skipped] = per_s;
    json!({"t": t, "ok": ok, "failed": failed, "skipped": skipped})
}

/// "started 2024-05-01 12:00:00 UTC · 10.0 s · 2 shards · sink x.db".
fn run_facts(summary: &Value) -> String {
    let mut facts = Vec::new();
    if let Some(ms) = summary
        .get("window_unix_ms")
        .and_then(|w| w.get(0))
        .and_then(Value::as_i64)
    {
        facts.push(format!("started {}", utc_time(ms)));
    }
    if let Some(s) = summary_number(summary, "elapsed_s") {
        facts.push(format!("{s:.1} s"));
    }
    if let Some(n) = summary.get("shards").and_then(Value::as_u64) {
        facts.push(format!("{n} shard{}", if n == 1 { "" } else { "s" }));
    }
    if let Some(sink) = summary.get("sink").and_then(Value::as_str) {
        facts.push(format!("sink {sink}"));
    }
    if facts.is_empty() {
        "no run facts in the summary".into()
    } else {
        facts.join(" · ")
    }
}

/// The headline numbers of one run.
fn cards(recording: &Recording, totals: &[(String, Histogram<u64>)]) -> String {
    let s = &recording.summary;
    let e2e = totals
        .iter()
        .find(|(stage, _)| stage == "end_to_end")
        .map(|(_, h)| h);
    let mut out = String::from("<div class=\"cards\">");
    let mut card = |key: &str, value: String, detail: String| {
        let _ = write!(
            out,
            "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{}</div><div class=\"d\">{}</div></div>",
            escape(key),
            escape(&value),
            escape(&detail)
        );
    };
    card(
        "throughput",
        summary_number(s, "jobs_per_s").map_or("–".into(), |v| format!("{} jobs/s", group(v, 0))),
        summary_number(s, "jobs").map_or(String::new(), |v| format!("{} jobs", group(v, 0))),
    );
    card(
        "outcomes",
        summary_number(s, "ok").map_or("–".into(), |v| format!("{} ok", group(v, 0))),
        format!(
            "{} failed · {} skipped",
            summary_number(s, "failed").map_or("–".into(), |v| group(v, 0)),
            summary_number(s, "skipped").map_or("–".into(), |v| group(v, 0)),
        ),
    );
    card(
        "ok end-to-end p99",
        e2e.filter(|h| !h.is_empty())
            .map_or("–".into(), |h| micros(h.value_at_quantile(0.99))),
        e2e.filter(|h| !h.is_empty()).map_or(String::new(), |h| {
            format!(
                "p50 {} · max {}",
                micros(h.value_at_quantile(0.5)),
                micros(h.max())
            )
        }),
    );
    card(
        "dispatcher CPU",
        summary_number(s, "cpu_us_per_job").map_or("–".into(), |v| format!("{v:.1} µs/job")),
        summary_number(s, "dispatcher_cpu_s").map_or(String::new(), |v| format!("{v:.2} s in all")),
    );
    card(
        "rows written",
        summary_number(s, "rows_written").map_or("–".into(), |v| group(v, 0)),
        s.get("sink")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    );
    out.push_str("</div>");
    out
}

/// A comparison card: title, A's and B's value, whether lower is better, format.
type CardRow = (
    &'static str,
    Option<f64>,
    Option<f64>,
    bool,
    fn(f64) -> String,
);

/// Headline numbers of two runs, with B/A.
fn comparison_cards(
    a: &Recording,
    b: &Recording,
    totals_a: &[(String, Histogram<u64>)],
    totals_b: &[(String, Histogram<u64>)],
) -> String {
    let e2e = |totals: &[(String, Histogram<u64>)], q: f64| {
        totals
            .iter()
            .find(|(stage, _)| stage == "end_to_end")
            .filter(|(_, h)| !h.is_empty())
            .map(|(_, h)| h.value_at_quantile(q) as f64)
    };
    let rows: [CardRow; 4] = [
        (
            "throughput (jobs/s)",
            summary_number(&a.summary, "jobs_per_s"),
            summary_number(&b.summary, "jobs_per_s"),
            false,
            |v| group(v, 0),
        ),
        (
            "dispatcher CPU (µs/job)",
            summary_number(&a.summary, "cpu_us_per_job"),
            summary_number(&b.summary, "cpu_us_per_job"),
            true,
            |v| format!("{v:.1}"),
        ),
        (
            "end-to-end p50",
            e2e(totals_a, 0.5),
            e2e(totals_b, 0.5),
            true,
            |v| micros(v as u64),
        ),
        (
            "ok end-to-end p99",
            e2e(totals_a, 0.99),
            e2e(totals_b, 0.99),
            true,
            |v| micros(v as u64),
        ),
    ];
    let mut out = String::from("<div class=\"cards\">");
    for (key, va, vb, lower_is_better, fmt) in rows {
        let show = |v: Option<f64>| v.map_or("–".to_string(), fmt);
        let r = ratio(va, vb);
        let _ = write!(
            out,
            "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\"><span class=\"a\">{}</span> → <span class=\"b\">{}</span></div><div class=\"d {}\">{}</div></div>",
            escape(key),
            escape(&show(va)),
            escape(&show(vb)),
            verdict(r, lower_is_better),
            r.map_or("B/A –".into(), |r| format!("B/A {r:.2}×")),
        );
    }
    out.push_str("</div>");
    out
}

/// CSS class for a B/A ratio: green when B is better by more than 2%, red when worse.
fn verdict(r: Option<f64>, lower_is_better: bool) -> &'static str {
    match r {
        Some(r) if r < 0.98 => {
            if lower_is_better {
                "better"
            } else {
                "worse"
            }
        }
        Some(r) if r > 1.02 => {
            if lower_is_better {
                "worse"
            } else {
                "better"
            }
        }
        _ => "",
    }
}

/// One `<figure>` per stage; the script puts an `<svg data-stage=…>` in each.
/// `runs` holds one or two runs' totals; the caption counts each run's samples.
fn spectrum_figures(runs: &[&[(String, Histogram<u64>)]]) -> String {
    let mut out = String::from("<div class=\"plots\">");
    for (index, (stage, _)) in runs[0].iter().enumerate() {
        let counts: Vec<String> = runs
            .iter()
            .zip(["A ", "B "])
            .map(|(totals, label)| {
                let n = totals.get(index).map_or(0, |(_, h)| h.len());
                let label = if runs.len() > 1 { label } else { "" };
                format!("{label}{}", group(n as f64, 0))
            })
            .collect();
        let _ = write!(
            out,
            "<figure data-plot=\"spectrum\" data-for=\"{0}\"><figcaption>{1} \
             <span class=\"muted\">{2} · {3} samples</span></figcaption></figure>",
            escape(stage),
            escape(stage.strip_prefix("failed_").unwrap_or(stage)),
            stage_jobs(stage),
            counts.join(" · ")
        );
    }
    out.push_str("</div>");
    out
}

/// Stage × (count, mean, p50, p90, p99, p99.9, max), in µs.
fn percentile_table(totals: &[(String, Histogram<u64>)]) -> String {
    let mut out = String::from(
        "<div class=\"scroll\"><table class=\"percentiles\"><thead><tr><th>stage</th>\
         <th class=\"text\">jobs</th><th>count</th>\
         <th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr></thead><tbody>",
    );
    for (stage, h) in totals {
        let _ = write!(
            out,
            "<tr data-stage=\"{0}\"><td>{0}</td><td class=\"text\">{1}</td><td>{2}</td>",
            escape(stage),
            stage_jobs(stage),
            group(h.len() as f64, 0)
        );
        if h.is_empty() {
            out.push_str(&"<td>–</td>".repeat(6));
        } else {
            let _ = write!(out, "<td>{}</td>", group(h.mean(), 0));
            for q in [0.5, 0.9, 0.99, 0.999] {
                let _ = write!(out, "<td>{}</td>", group(h.value_at_quantile(q) as f64, 0));
            }
            let _ = write!(out, "<td>{}</td>", group(h.max() as f64, 0));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A table of per-class or per-shard rows: the `keys` columns, outcomes, then the
/// infer and end-to-end percentiles from each row's `latency_us`.
fn rows_table(rows: Option<&Value>, keys: &[(&str, &str)], empty: &str) -> String {
    let Some(rows) = rows.and_then(Value::as_array).filter(|r| !r.is_empty()) else {
        return format!("<p class=\"note\">{}</p>", escape(empty));
    };
    let latency_columns = [
        ("infer", "p50"),
        ("infer", "p99"),
        ("end_to_end", "p50"),
        ("end_to_end", "p99"),
        ("end_to_end", "p999"),
        ("end_to_end", "max"),
    ];
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for (_, title) in keys {
        let _ = write!(out, "<th class=\"text\">{}</th>", escape(title));
    }
    out.push_str("<th>ok</th><th>failed</th><th>skipped</th>");
    for (stage, p) in latency_columns {
        let stage = if stage == "end_to_end" { "e2e" } else { stage };
        let p = if p == "p999" { "p99.9" } else { p };
        let _ = write!(out, "<th>ok {stage} {p} µs</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for (key, _) in keys {
            let _ = write!(
                out,
                "<td class=\"text\">{}</td>",
                escape(&scalar(row.get(*key)))
            );
        }
        for key in ["ok", "failed", "skipped"] {
            let _ = write!(out, "<td>{}</td>", number_cell(row.get(key)));
        }
        for (stage, p) in latency_columns {
            let stage = row.get("latency_us").and_then(|l| l.get(stage));
            // No ok job (a class whose jobs all failed): no latency, not 0.
            let none = stage.and_then(|s| s.get("count")).and_then(Value::as_u64) == Some(0);
            let v = stage.and_then(|s| s.get(p)).filter(|_| !none);
            let _ = write!(out, "<td>{}</td>", number_cell(v));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Failed jobs and skipped ticks by outcome, stage and reason class, most
/// frequent first: count, share of all jobs, the exact reasons kept (most
/// frequent first) with their counts, and an example device.
fn failures_table(rows: &[FailureRow]) -> String {
    if rows.is_empty() {
        return "<p class=\"note\">No failed jobs or skipped ticks in this run's summary.</p>"
            .into();
    }
    let mut out = String::from(
        "<div class=\"scroll\"><table class=\"failures\"><thead><tr><th class=\"text\">outcome</th>\
         <th class=\"text\">stage</th><th class=\"text\">reason</th><th>count</th>\
         <th>share of jobs</th><th class=\"text\">most frequent reason</th>\
         <th class=\"text\">example device</th><th class=\"text\">other reasons</th></tr></thead><tbody>",
    );
    for row in rows {
        let top = row.top_reason();
        let mut others: Vec<_> = row
            .reasons
            .iter()
            .filter(|text| !top.is_some_and(|top| std::ptr::eq(*text, top)))
            .collect();
        others.sort_by_key(|text| std::cmp::Reverse(text.count));
        let mut other_cell: Vec<String> = others
            .iter()
            .map(|text| format!("{} × {}", escape(&text.text), group(text.count as f64, 0)))
            .collect();
        if row.other_reasons > 0 {
            other_cell.push(format!(
                "{} more with other texts",
                group(row.other_reasons as f64, 0)
            ));
        }
        let _ = write!(
            out,
            "<tr data-failure=\"{}/{}/{}\"><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td><td>{}</td><td>{:.1}%</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td><td class=\"text\">{}</td></tr>",
            escape(&row.outcome),
            escape(&row.stage),
            escape(&row.reason),
            escape(&row.outcome),
            escape(&row.stage),
            escape(&row.reason),
            group(row.count as f64, 0),
            row.share * 100.0,
            top.map_or_else(
                || "–".to_string(),
                |t| format!("{} × {}", escape(&t.text), group(t.count as f64, 0))
            ),
            top.map_or_else(|| "–".to_string(), |t| escape(&t.example_device)),
            if other_cell.is_empty() {
                "–".to_string()
            } else {
                other_cell.join("<br>")
            },
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Every replica of every class: its counters, its latency estimate, and its
/// share of the requests of its class's set (same class and role).
fn replicas_table(rows: &[ReplicaRow]) -> String {
    if rows.is_empty() {
        return "<p class=\"note\">No per-replica rows in this run's summary.</p>".into();
    }
    let mut out = String::from(
        "<div class=\"scroll\"><table class=\"replicas\"><thead><tr><th class=\"text\">class</th>\
         <th class=\"text\">role</th><th class=\"text\">replica</th><th>requests</th>\
         <th>failures</th><th>ejections</th><th>EWMA latency ms</th>\
         <th>share of class</th></tr></thead><tbody>",
    );
    for (row, share) in rows.iter().zip(replica_shares(rows)) {
        let _ = write!(
            out,
            "<tr data-replica=\"{}\"><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&row.replica),
            escape(&row.class),
            escape(&row.role.replace('_', " ")),
            escape(&row.replica),
            group(row.requests as f64, 0),
            group(row.failures as f64, 0),
            group(row.ejections as f64, 0),
            group(row.ewma_latency_us / 1e3, 2),
            share.map_or_else(|| "–".to_string(), |share| format!("{:.1}%", share * 100.0)),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// The configuration objects flattened to `a.b[0].c` keys, one column per run.
/// With two runs, rows that differ are marked.
fn config_table(configs: &[Option<&Value>], titles: &[&str]) -> String {
    let flat: Vec<BTreeMap<String, String>> = configs
        .iter()
        .map(|c| {
            let mut map = BTreeMap::new();
            if let Some(c) = c {
                flatten("", c, &mut map);
            }
            map
        })
        .collect();
    let mut keys: Vec<&String> = flat.iter().flat_map(|m| m.keys()).collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return "<p class=\"note\">No configuration recorded in the summary.</p>".into();
    }
    let mut out =
        String::from("<div class=\"scroll\"><table class=\"config\"><thead><tr><th>setting</th>");
    for title in titles {
        let _ = write!(out, "<th>{}</th>", escape(title));
    }
    out.push_str("</tr></thead><tbody>");
    for key in keys {
        let values: Vec<&str> = flat
            .iter()
            .map(|m| m.get(key).map_or("–", String::as_str))
            .collect();
        let differs = values.len() > 1 && values.iter().any(|v| *v != values[0]);
        let _ = write!(
            out,
            "<tr{}><td>{}</td>",
            if differs { " class=\"differs\"" } else { "" },
            escape(key)
        );
        for v in values {
            let _ = write!(out, "<td>{}</td>", escape(v));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(items)
            if !items.is_empty() && items.iter().any(|i| i.is_object() || i.is_array()) =>
        {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => {
            out.insert(
                if prefix.is_empty() {
                    "config".into()
                } else {
                    prefix.to_string()
                },
                scalar(Some(other)),
            );
        }
    }
}

/// Two runs side by side: their totals, then every stage's latency percentiles,
/// each with B/A.
fn comparison_tables(
    a: &Recording,
    a_name: &str,
    b: &Recording,
    b_name: &str,
    totals_a: &[(String, Histogram<u64>)],
    totals_b: &[(String, Histogram<u64>)],
) -> String {
    let ratio_cell = |va: Option<f64>, vb: Option<f64>, lower_is_better: bool| {
        let r = ratio(va, vb);
        format!(
            "<td class=\"ratio {}\">{}</td>",
            verdict(r, lower_is_better),
            r.map_or("–".into(), |r| format!("{r:.2}"))
        )
    };
    let show = |v: Option<f64>| {
        v.map_or("–".to_string(), |v| {
            if v.fract() == 0.0 {
                group(v, 0)
            } else {
                group(v, 1)
            }
        })
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<div class=\"twocol\"><div class=\"scroll\"><table class=\"comparison totals\"><thead><tr><th>run</th>\
         <th><span class=\"swatch a\"></span>A {}</th><th><span class=\"swatch b\"></span>B {}</th>\
         <th>B/A</th></tr></thead><tbody>",
        escape(a_name),
        escape(b_name)
    );
    let totals_rows = [
        ("jobs/s", "jobs_per_s", false),
        ("cpu µs/job", "cpu_us_per_job", true),
        ("jobs", "jobs", false),
        ("ok", "ok", false),
        ("failed", "failed", true),
        ("skipped", "skipped", true),
    ];
    for (label, key, lower_is_better) in totals_rows {
        let (va, vb) = (
            summary_number(&a.summary, key),
            summary_number(&b.summary, key),
        );
        let _ = write!(
            out,
            "<tr><td>{label}</td><td>{}</td><td>{}</td>{}</tr>",
            show(va),
            show(vb),
            ratio_cell(va, vb, lower_is_better)
        );
    }
    out.push_str("</tbody></table></div><div></div></div>");

    let columns: [(&str, Option<f64>); 4] = [
        ("p50", Some(0.5)),
        ("p99", Some(0.99)),
        ("p99.9", Some(0.999)),
        ("max", None),
    ];
    out.push_str(
        "<h3>Latency (µs)</h3><div class=\"scroll\"><table class=\"comparison latency\"><thead>\
         <tr><th rowspan=\"2\">stage</th>",
    );
    for (name, _) in columns {
        let _ = write!(out, "<th colspan=\"3\" class=\"group\">{name}</th>");
    }
    out.push_str("</tr><tr>");
    for _ in columns {
        out.push_str("<th class=\"group\"><span class=\"swatch a\"></span>A</th><th><span class=\"swatch b\"></span>B</th><th>B/A</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for ((stage, ha), (_, hb)) in totals_a.iter().zip(totals_b) {
        let _ = write!(out, "<tr data-stage=\"{0}\"><td>{0}</td>", escape(stage));
        for (_, q) in columns {
            let value = |h: &Histogram<u64>| {
                (!h.is_empty()).then(|| q.map_or(h.max(), |q| h.value_at_quantile(q)) as f64)
            };
            let (va, vb) = (value(ha), value(hb));
            let _ = write!(
                out,
                "<td class=\"group\">{}</td><td>{}</td>{}",
                show(va),
                show(vb),
                ratio_cell(va, vb, true)
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A JSON scalar as text: strings without quotes, others as JSON.
fn scalar(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "–".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "[]".into(),
        Some(Value::Object(map)) if map.is_empty() => "{}".into(),
        Some(other) => other.to_string(),
    }
}

/// A numeric cell with digit grouping, or the value as text when it is not a number.
fn number_cell(value: Option<&Value>) -> String {
    match value.and_then(Value::as_f64) {
        Some(v) if v.fract() == 0.0 => group(v, 0),
        Some(v) => group(v, 1),
        None => escape(&scalar(value)),
    }
}

/// `1234567.8` → `"1,234,567.8"` with `decimals` decimals.
fn group(v: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, v.abs());
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    if v < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.push('-');
    }
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// A latency for people: "850 µs", "12.3 ms", "2.05 s".
fn micros(us: u64) -> String {
    let three = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else if x >= 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    };
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{} ms", three(us as f64 / 1e3)),
        _ => format!("{} s", three(us as f64 / 1e6)),
    }
}

/// Unix ms → "2024-05-01 12:00:00 UTC" (proleptic Gregorian, no time-zone data needed).
fn utc_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Text made safe for HTML element content and quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r##"
:root { --fg: #1f2933; --muted: #66788a; --line: #e3e8ee; --bg: #f5f7fa; --card: #fff;
  --a: #2563eb; --b: #ea580c; --good: #047857; --bad: #b91c1c; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 28px 40px; }
header h1 { font-size: 22px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 16px; margin: 0 0 6px; }
h3 { font-size: 14px; margin: 18px 0 8px; }
.sub { color: var(--muted); margin: 2px 0; }
.note { color: var(--muted); margin: 0 0 12px; font-size: 13px; }
.muted { color: var(--muted); font-weight: 400; font-size: 12px; margin-left: 6px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; margin: 20px 0 4px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px; }
.card .k { color: var(--muted); font-size: 12px; font-weight: 600; }
.card .v { font-size: 21px; font-weight: 650; font-variant-numeric: tabular-nums; margin-top: 2px; }
.card .d { color: var(--muted); font-size: 12px; min-height: 1em; }
.card .v .a { color: var(--a); } .card .v .b { color: var(--b); }
section { margin-top: 30px; }
.section-head { display: flex; align-items: baseline; justify-content: space-between; gap: 12px; }
.toggle button { font: inherit; font-size: 12px; border: 1px solid var(--line); background: var(--card);
  color: var(--muted); padding: 3px 10px; cursor: pointer; }
.toggle button:first-child { border-radius: 6px 0 0 6px; } .toggle button:last-child { border-radius: 0 6px 6px 0; margin-left: -1px; }
.toggle button.on { background: #e8eefc; color: var(--a); border-color: #c7d4f5; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 14px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 12px 4px; }
figcaption { font-weight: 600; font-size: 13px; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart .grid line { stroke: #edf0f4; }
svg.chart .frame { fill: none; stroke: #c9d2dc; }
svg.chart .tick { font-size: 11px; fill: var(--muted); }
svg.chart .tick.y { text-anchor: end; } svg.chart .tick.x { text-anchor: middle; }
svg.chart .axis-label { font-size: 12px; fill: var(--muted); text-anchor: middle; }
svg.chart .curve { fill: none; stroke-linejoin: round; stroke-linecap: round; }
svg.chart .legend text { font-size: 12px; fill: var(--fg); }
svg.chart .legend rect { fill: #fff; fill-opacity: 0.85; stroke: var(--line); }
svg.chart .empty { font-size: 13px; fill: var(--muted); text-anchor: middle; }
svg.chart .cursor line { stroke: #9aa5b1; stroke-dasharray: 3 3; }
svg.chart .cursor rect { fill: #1f2933; fill-opacity: 0.88; }
svg.chart .cursor text { font-size: 11px; fill: #fff; }
.scroll { overflow-x: auto; }
table { border-collapse: separate; border-spacing: 0; background: var(--card); border: 1px solid var(--line);
  border-radius: 10px; overflow: hidden; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 14px; text-align: right; border-bottom: 1px solid var(--line); white-space: nowrap; }
tbody tr:last-child td { border-bottom: 0; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f3f7; color: #445566; font-size: 12px; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
table.percentiles td:first-child, table.comparison td:first-child { font-weight: 600; }
table.config td { text-align: left; font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, monospace; font-size: 12.5px; }
table.config tr.differs td { background: #fff7e6; }
td.better { color: var(--good); font-weight: 600; } td.worse { color: var(--bad); font-weight: 600; }
table.comparison .group { border-left: 1px solid var(--line); }
thead th[colspan] { text-align: center; }
table.comparison td.ratio { color: var(--muted); }
table.comparison td.ratio.better { color: var(--good); } table.comparison td.ratio.worse { color: var(--bad); }
th.text, td.text { text-align: left; }
table.config th { text-align: left; }
.card .d.better { color: var(--good); } .card .d.worse { color: var(--bad); }
.twocol { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 14px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; vertical-align: 0; }
.swatch.a { background: var(--a); } .swatch.b { background: var(--b); }
.error { color: var(--bad); font-weight: 600; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
code { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 12px; }
"##;

/// The renderer: reads `#percore-data`, draws every `figure[data-plot]`.
const SCRIPT: &str = r##"
(function () {
  "use strict";
  var SVG_NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#2563eb", "#ea580c"];
  var LIGHT = ["#93b4f5", "#f6b48a"];
  var NINES = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%", "99.99999%", "99.999999%"];
  var data = JSON.parse(document.getElementById("percore-data").textContent);
  var comparison = data.kind === "comparison";
  // "#log" in the address starts the spectra on a log latency axis.
  var logScale = location.hash === "#log";

  function el(tag, attrs, parent, text) {
    var e = document.createElementNS(SVG_NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function trimNumber(x) {
    var s = x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
    if (s.indexOf(".") >= 0) s = s.replace(/0+$/, "").replace(/\.$/, "");
    return s;
  }
  function fmtUs(v) {
    if (v >= 1e6) return trimNumber(v / 1e6) + " s";
    if (v >= 1e3) return trimNumber(v / 1e3) + " ms";
    return trimNumber(v) + " µs";
  }
  function fmtCount(v) {
    if (v >= 1e6) return trimNumber(v / 1e6) + "M";
    if (v >= 1e3) return trimNumber(v / 1e3) + "k";
    return trimNumber(v);
  }
  function fmtPercent(p) {
    if (p >= 100) return "max";
    var s = p.toFixed(p < 90 ? 1 : 5).replace(/0+$/, "").replace(/\.$/, "");
    return "p" + s;
  }
  function niceStep(span, count) {
    var raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw))), err = raw / mag;
    return mag * (err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1);
  }
  function linearAxis(max) {
    if (!(max > 0)) max = 1;
    var step = niceStep(max, 5), top = Math.ceil(max / step) * step, ticks = [];
    for (var v = 0; v <= top + step / 2; v += step) ticks.push(v);
    return { lo: 0, hi: top, ticks: ticks, scale: function (v) { return v / top; } };
  }
  function logAxis(min, max) {
    if (!(min > 0)) min = 1;
    if (!(max > min)) max = min * 10;
    var lo = Math.pow(10, Math.floor(Math.log10(min))), hi = Math.pow(10, Math.ceil(Math.log10(max)));
    if (hi <= lo) hi = lo * 10;
    var decades = Math.round(Math.log10(hi / lo)), ticks = [];
    for (var d = lo; d <= hi * 1.0001; d *= 10) {
      ticks.push(d);
      if (decades <= 2 && d < hi) { ticks.push(2 * d); ticks.push(5 * d); }
    }
    var l = Math.log10(lo), h = Math.log10(hi);
    return { lo: lo, hi: hi, ticks: ticks, scale: function (v) { return (Math.log10(Math.max(v, lo)) - l) / (h - l); } };
  }

  // A line chart. o: {attrs, xMin, xMax, xTicks: [[v, label]], xLabel, yLabel, yFormat,
  // log, series: [{name, color, width, dash, points: [[x, y, label], ...]}], legend}
  function chart(target, o) {
    var W = 600, H = 320, m = { l: 66, r: 30, t: 14, b: 46 };
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, "class": "chart", role: "img" });
    for (var k in (o.attrs || {})) svg.setAttribute(k, o.attrs[k]);
    target.appendChild(svg);
    var yMin = Infinity, yMax = 0, count = 0;
    o.series.forEach(function (s) {
      s.points.forEach(function (p) {
        if (p[1] === null) return;
        count++;
        if (p[1] > yMax) yMax = p[1];
        if (p[1] > 0 && p[1] < yMin) yMin = p[1];
      });
    });
    var axis = o.log ? logAxis(yMin, yMax) : linearAxis(yMax * 1.04);
    var xs = function (x) { return m.l + (x - o.xMin) / (o.xMax - o.xMin) * pw; };
    var ys = function (y) { return m.t + ph - axis.scale(y) * ph; };
    var grid = el("g", { "class": "grid" }, svg);
    axis.ticks.forEach(function (v) {
      var y = ys(v);
      el("line", { x1: m.l, x2: m.l + pw, y1: y, y2: y }, grid);
      el("text", { x: m.l - 7, y: y + 4, "class": "tick y" }, svg, o.yFormat(v));
    });
    o.xTicks.forEach(function (t) {
      var x = xs(t[0]);
      el("line", { x1: x, x2: x, y1: m.t, y2: m.t + ph }, grid);
      el("text", { x: x, y: m.t + ph + 17, "class": "tick x" }, svg, t[1]);
    });
    el("rect", { x: m.l, y: m.t, width: pw, height: ph, "class": "frame" }, svg);
    el("text", { x: m.l + pw / 2, y: H - 7, "class": "axis-label" }, svg, o.xLabel);
    el("text", { "class": "axis-label", transform: "translate(15," + (m.t + ph / 2) + ") rotate(-90)" }, svg, o.yLabel);
    if (count === 0) {
      el("text", { x: m.l + pw / 2, y: m.t + ph / 2, "class": "empty" }, svg, "no samples");
      return svg;
    }
    o.series.forEach(function (s) {
      var d = "", pen = "M";
      s.points.forEach(function (p) {
        if (p[1] === null) { pen = "M"; return; }
        d += pen + xs(p[0]).toFixed(1) + "," + ys(p[1]).toFixed(1) + " ";
        pen = "L";
      });
      if (!d) return;
      el("path", { d: d.trim(), "class": "curve", stroke: s.color, "stroke-width": s.width || 2,
        "stroke-dasharray": s.dash || "none", "data-series": s.name }, svg);
      if (s.dots) s.points.forEach(function (p) {
        if (p[1] !== null) el("circle", { cx: xs(p[0]).toFixed(1), cy: ys(p[1]).toFixed(1), r: 2.2, fill: s.color }, svg);
      });
    });
    if (o.legend) {
      var widest = 0;
      o.series.forEach(function (s) { widest = Math.max(widest, s.name.length); });
      var bw = 34 + widest * 6.6, bh = 8 + 17 * o.series.length;
      // The first corner the curves stay out of (checked along every segment).
      var corners = [[m.l + 10, m.t + 8], [m.l + pw - 10 - bw, m.t + 8],
                     [m.l + pw - 10 - bw, m.t + ph - 8 - bh], [m.l + 10, m.t + ph - 8 - bh]];
      var clear = function (c) {
        return o.series.every(function (s) {
          var prev = null;
          return s.points.every(function (p) {
            if (p[1] === null) { prev = null; return true; }
            var cur = [xs(p[0]), ys(p[1])], ok = true;
            for (var t = 0; t <= 1 && ok; t += 0.1) {
              var q = prev ? [prev[0] + (cur[0] - prev[0]) * t, prev[1] + (cur[1] - prev[1]) * t] : cur;
              ok = !(q[0] > c[0] - 4 && q[0] < c[0] + bw + 4 && q[1] > c[1] - 4 && q[1] < c[1] + bh + 4);
            }
            prev = cur;
            return ok;
          });
        });
      };
      var corner = corners.filter(clear)[0] || corners[0], lx = corner[0], ly = corner[1];
      var lg = el("g", { "class": "legend" }, svg);
      el("rect", { x: lx, y: ly, width: bw, height: bh, rx: 4 }, lg);
      o.series.forEach(function (s, i) {
        var y = ly + 13 + 17 * i;
        el("line", { x1: lx + 8, x2: lx + 24, y1: y, y2: y, stroke: s.color, "stroke-width": 3, "stroke-dasharray": s.dash || "none" }, lg);
        el("text", { x: lx + 30, y: y + 4 }, lg, s.name);
      });
    }
    hover(svg, o, xs, ys, m, pw, ph);
    return svg;
  }

  // Stacked bars, one per second. o: {attrs, xMax, xTicks, yLabel, t: [...],
  // series: [{name, color, values: [...]}]}; each bar is `width` 1 s wide and
  // its series stack bottom up in the given order.
  function bars(target, o) {
    var W = 600, H = 320, m = { l: 66, r: 30, t: 30, b: 46 };
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, "class": "chart", role: "img" });
    for (var k in (o.attrs || {})) svg.setAttribute(k, o.attrs[k]);
    target.appendChild(svg);
    var totals = o.t.map(function (_, j) {
      return o.series.reduce(function (sum, s) { return sum + (s.values[j] || 0); }, 0);
    });
    var axis = linearAxis(Math.max.apply(null, [0].concat(totals)) * 1.04);
    var xs = function (x) { return m.l + x / o.xMax * pw; };
    var ys = function (y) { return m.t + ph - axis.scale(y) * ph; };
    var grid = el("g", { "class": "grid" }, svg);
    axis.ticks.forEach(function (v) {
      var y = ys(v);
      el("line", { x1: m.l, x2: m.l + pw, y1: y, y2: y }, grid);
      el("text", { x: m.l - 7, y: y + 4, "class": "tick y" }, svg, fmtCount(v));
    });
    o.xTicks.forEach(function (t) {
      var x = xs(t[0]);
      el("line", { x1: x, x2: x, y1: m.t, y2: m.t + ph }, grid);
      el("text", { x: x, y: m.t + ph + 17, "class": "tick x" }, svg, t[1]);
    });
    el("rect", { x: m.l, y: m.t, width: pw, height: ph, "class": "frame" }, svg);
    el("text", { x: m.l + pw / 2, y: H - 7, "class": "axis-label" }, svg, "seconds since start");
    el("text", { "class": "axis-label", transform: "translate(15," + (m.t + ph / 2) + ") rotate(-90)" }, svg, o.yLabel);
    if (!totals.some(function (v) { return v > 0; })) {
      el("text", { x: m.l + pw / 2, y: m.t + ph / 2, "class": "empty" }, svg, "no samples");
      return svg;
    }
    var barW = Math.max(pw / o.xMax * 0.86, 1);
    o.series.forEach(function (s) {
      var g = el("g", { "class": "bars", "data-series": s.name }, svg);
      o.t.forEach(function (t, j) {
        var below = 0;
        for (var i = 0; o.series[i] !== s; i++) below += o.series[i].values[j] || 0;
        var v = s.values[j] || 0;
        if (!(v > 0)) return;
        var y0 = ys(below), y1 = ys(below + v);
        var r = el("rect", { x: (xs(t) + (pw / o.xMax - barW) / 2).toFixed(1), y: y1.toFixed(1),
          width: barW.toFixed(1), height: Math.max(y0 - y1, 0.5).toFixed(1),
          style: "fill:" + s.color, "class": "bar", "data-series": s.name }, g);
        el("title", {}, r, trimNumber(t) + " s: " + fmtCount(v) + " " + s.name + "/s");
      });
    });
    // The legend in one row above the plot, right-aligned, where no bar can be.
    var lg = el("g", { "class": "legend" }, svg), lx = m.l + pw, y = m.t - 12;
    o.series.slice().reverse().forEach(function (s) {
      lx -= 30 + s.name.length * 6.6 + 10;
      el("rect", { x: lx, y: y - 5, width: 16, height: 10, style: "fill:" + s.color + ";stroke:none", "class": "swatch" }, lg);
      el("text", { x: lx + 22, y: y + 4 }, lg, s.name);
    });
    return svg;
  }

  // A dashed cursor with the nearest point of every series.
  function hover(svg, o, xs, ys, m, pw, ph) {
    var cursor = el("g", { "class": "cursor", visibility: "hidden" }, svg);
    var line = el("line", { y1: m.t, y2: m.t + ph }, cursor);
    var dots = o.series.map(function (s) { return el("circle", { r: 3.5, fill: s.color }, cursor); });
    var box = el("rect", { rx: 4 }, cursor);
    var text = el("text", {}, cursor);
    svg.addEventListener("mousemove", function (ev) {
      var pt = svg.createSVGPoint();
      pt.x = ev.clientX; pt.y = ev.clientY;
      var p = pt.matrixTransform(svg.getScreenCTM().inverse());
      if (p.x < m.l || p.x > m.l + pw || p.y < m.t || p.y > m.t + ph) { cursor.setAttribute("visibility", "hidden"); return; }
      var xv = o.xMin + (p.x - m.l) / pw * (o.xMax - o.xMin), lines = [], x0 = null;
      o.series.forEach(function (s, i) {
        var best = null;
        s.points.forEach(function (q) { if (q[1] !== null && (best === null || Math.abs(q[0] - xv) < Math.abs(best[0] - xv))) best = q; });
        if (best === null) { dots[i].setAttribute("visibility", "hidden"); return; }
        dots[i].setAttribute("visibility", "visible");
        dots[i].setAttribute("cx", xs(best[0])); dots[i].setAttribute("cy", ys(best[1]));
        if (x0 === null) x0 = xs(best[0]);
        lines.push((o.series.length > 1 ? s.name + " " : "") + best[2]);
      });
      if (x0 === null) return;
      line.setAttribute("x1", x0); line.setAttribute("x2", x0);
      while (text.firstChild) text.removeChild(text.firstChild);
      lines.forEach(function (l, i) { el("tspan", { x: 0, dy: i ? 14 : 0 }, text, l); });
      var tw = 8 + 6.2 * Math.max.apply(null, lines.map(function (l) { return l.length; })), th = 8 + 14 * lines.length;
      var tx = x0 + 10 + tw > m.l + pw ? x0 - 10 - tw : x0 + 10, ty = m.t + 8;
      box.setAttribute("x", tx); box.setAttribute("y", ty); box.setAttribute("width", tw); box.setAttribute("height", th);
      text.setAttribute("transform", "translate(" + (tx + 5) + "," + (ty + 15) + ")");
      Array.prototype.forEach.call(text.childNodes, function (t) { t.setAttribute("x", 0); });
      cursor.setAttribute("visibility", "visible");
    });
    svg.addEventListener("mouseleave", function () { cursor.setAttribute("visibility", "hidden"); });
  }

  // x position of a spectrum step: log10(1/(1-p)); the 100% step (the max) goes
  // where a sample of 1 in `count` would be, never left of the step before it.
  function spectrumPoints(stage) {
    var pts = [], last = 0;
    stage.spectrum.forEach(function (step) {
      var pct = step[0], value = step[1];
      var x = pct >= 100 ? Math.max(last, Math.log10(Math.max(stage.count, 1))) : -Math.log10(1 - pct / 100);
      last = x;
      pts.push([x, value, fmtPercent(pct) + ": " + fmtUs(value)]);
    });
    return pts;
  }

  function drawSpectra() {
    var maxX = 5;
    data.runs.forEach(function (run) {
      run.stages.forEach(function (st) {
        spectrumPoints(st).forEach(function (p) { if (p[0] > maxX) maxX = p[0]; });
      });
    });
    maxX = Math.min(Math.ceil(maxX - 1e-9), NINES.length - 1);
    var ticks = [];
    for (var i = 0; i <= maxX; i++) ticks.push([i, NINES[i]]);
    document.querySelectorAll("figure[data-plot=spectrum]").forEach(function (fig) {
      var old = fig.querySelector("svg");
      if (old) old.remove();
      var stageName = fig.getAttribute("data-for");
      var series = data.runs.map(function (run, i) {
        var st = run.stages.filter(function (s) { return s.stage === stageName; })[0];
        return { name: (comparison ? (i ? "B " : "A ") : "") + run.name, color: COLORS[i],
          width: 2.2, points: st ? spectrumPoints(st) : [] };
      });
      chart(fig, { attrs: { "data-stage": stageName }, xMin: 0, xMax: maxX, xTicks: ticks,
        xLabel: "percentile", yLabel: "latency", yFormat: fmtUs, log: logScale,
        series: series, legend: comparison });
    });
  }

  function drawTimelines() {
    var tMax = 1;
    data.runs.forEach(function (run) {
      run.timeline.t.forEach(function (t) { if (t + 1 > tMax) tMax = t + 1; });
    });
    var step = niceStep(tMax, 8), ticks = [];
    tMax = Math.ceil(tMax / step) * step;
    for (var v = 0; v <= tMax + step / 2; v += step) ticks.push([v, trimNumber(v) + " s"]);
    function series(field, label, light) {
      return data.runs.map(function (run, i) {
        var tl = run.timeline;
        return { name: (comparison ? (i ? "B " : "A ") + run.name + " " : "") + label,
          color: light ? LIGHT[i] : COLORS[i], width: light ? 1.5 : 2.2, dots: tl.t.length < 40,
          points: tl.t.map(function (t, j) {
            var y = tl[field][j];
            return [t, y, trimNumber(t) + " s: " + (y === null ? "–" : field === "jobs_per_s" ? fmtCount(y) + " jobs/s" : label + " " + fmtUs(y))];
          }) };
      });
    }
    document.querySelectorAll("figure[data-plot=throughput]").forEach(function (fig) {
      chart(fig, { attrs: { "data-timeline": "throughput" }, xMin: 0, xMax: tMax, xTicks: ticks,
        xLabel: "seconds since start", yLabel: "jobs/s", yFormat: fmtCount,
        series: series("jobs_per_s", "jobs/s", false), legend: comparison });
    });
    document.querySelectorAll("figure[data-plot=outcomes]").forEach(function (fig) {
      var run = data.runs[0], oc = run.outcomes || { t: [], ok: [], failed: [], skipped: [] };
      var oMax = tMax;
      oc.t.forEach(function (t) { if (t + 1 > oMax) oMax = t + 1; });
      bars(fig, { attrs: { "data-timeline": "outcomes" }, xMax: oMax, xTicks: ticks.filter(function (t) { return t[0] <= oMax; }),
        yLabel: "jobs/s", t: oc.t, series: [
          { name: "ok", color: "#2f855a", values: oc.ok },
          { name: "failed", color: "#dc2626", values: oc.failed },
          { name: "skipped", color: "#d97706", values: oc.skipped }] });
    });
    document.querySelectorAll("figure[data-plot=latency-over-time]").forEach(function (fig) {
      var s = comparison ? series("p99", "p99", false) : series("p50", "p50", true).concat(series("p99", "p99", false));
      chart(fig, { attrs: { "data-timeline": "latency" }, xMin: 0, xMax: tMax, xTicks: ticks,
        xLabel: "seconds since start", yLabel: "end-to-end latency", yFormat: fmtUs,
        series: s, legend: true });
    });
  }

  try {
    drawSpectra();
    drawTimelines();
    document.querySelectorAll(".toggle button").forEach(function (b) {
      b.classList.toggle("on", (b.getAttribute("data-scale") === "log") === logScale);
    });
    document.querySelectorAll(".toggle button").forEach(function (button) {
      button.addEventListener("click", function () {
        logScale = button.getAttribute("data-scale") === "log";
        document.querySelectorAll(".toggle button").forEach(function (b) { b.classList.toggle("on", b === button); });
        drawSpectra();
      });
    });
    document.body.setAttribute("data-rendered", "true");
  } catch (e) {
    var p = document.getElementById("render-error");
    p.hidden = false;
    p.textContent = "The plots could not be drawn: " + e;
  }
})();
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Interval;
    use std::time::Duration;

    fn recording() -> Recording {
        let mut intervals = Vec::new();
        for second in 0..3 {
            for stage in super::super::STAGES {
                let mut histogram = new_histogram();
                for v in 1..=200 {
                    histogram.record(v * 10 + second).unwrap();
                }
                intervals.push(Interval {
                    start: Duration::from_secs(second),
                    length: Duration::from_secs(1),
                    stage: stage.to_string(),
                    histogram,
                });
            }
        }
        Recording {
            summary: json!({
                "jobs": 600, "ok": 600, "failed": 0, "skipped": 0, "jobs_per_s": 200.0,
                "window_unix_ms": [1_714_564_800_000_i64, 1_714_564_803_000_i64],
                "sink": "</script><b>x.db",
                "per_class": [{"class": "cam<1>", "model": "m", "ok": 1, "failed": 0, "skipped": 0,
                               "latency_us": {"end_to_end": {"p50": 5, "p99": 9, "p999": 9, "max": 9}}}],
                "replicas": [
                    {"class": "cam<1>", "role": "compute_node", "replica": "127.0.0.1:9001",
                     "requests": 1500, "failures": 3, "ejections": 1, "ewma_latency_us": 2345.0},
                    {"class": "cam<1>", "role": "compute_node", "replica": "127.0.0.1:9002",
                     "requests": 500, "failures": 0, "ejections": 0, "ewma_latency_us": 1000.0},
                ],
                "failures": [
                    {"outcome": "failed", "stage": "infer", "reason": "grpc NOT_FOUND",
                     "count": 1200, "share": 0.3, "other_reasons": 4,
                     "reasons": [
                        {"text": "infer: grpc status 5 NOT_FOUND: <m>", "count": 100, "example_device": "d<7>"},
                        {"text": "infer: grpc status 5 NOT_FOUND: m2", "count": 1096, "example_device": "d-2"},
                     ]},
                ],
                "config": {"shards": 2, "classes": [{"name": "a", "period_ms": 100}], "load": "open"},
            }),
            intervals,
        }
    }

    #[test]
    fn page_is_self_contained_and_escapes_run_text() {
        let html = render_html(&recording());
        assert!(html.starts_with("<!DOCTYPE html>"));
        for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
            // The SVG namespace URI is an identifier, not a fetch.
            let uses = html.matches(external).count()
                - if external == "http://" {
                    html.matches("http://www.w3.org/2000/svg").count()
                } else {
                    0
                };
            assert_eq!(uses, 0, "{external} in the page");
        }
        // Exactly two scripts: the data and the renderer; the sink name cannot close them.
        assert_eq!(html.matches("</script>").count(), 2);
        assert!(html.contains("&lt;/script&gt;&lt;b&gt;x.db"));
        assert!(html.contains("<td class=\"text\">cam&lt;1&gt;</td>"));
        for stage in super::super::STAGES {
            assert!(html.contains(&format!("<tr data-stage=\"{stage}\">")));
            assert!(html.contains(&format!("data-plot=\"spectrum\" data-for=\"{stage}\"")));
        }
        assert!(html.contains("classes[0].period_ms"));
        assert!(html.contains("started 2024-05-01 12:00:00 UTC"));
        assert!(html.contains("<h2>Replicas</h2>"));
        assert!(
            html.contains(
                "<tr data-replica=\"127.0.0.1:9001\"><td class=\"text\">cam&lt;1&gt;</td>\
                 <td class=\"text\">compute node</td><td class=\"text\">127.0.0.1:9001</td>\
                 <td>1,500</td><td>3</td><td>1</td><td>2.35</td><td>75.0%</td></tr>"
            ),
            "{html}"
        );
        assert!(html.contains("<td>1.00</td><td>25.0%</td></tr>"));
    }

    #[test]
    fn failures_show_their_most_frequent_reason_and_an_example_device() {
        let html = render_html(&recording());
        assert!(html.contains("<h2>Failures</h2>"));
        assert!(
            html.contains(
                "<tr data-failure=\"failed/infer/grpc NOT_FOUND\"><td class=\"text\">failed</td>\
                 <td class=\"text\">infer</td><td class=\"text\">grpc NOT_FOUND</td><td>1,200</td>\
                 <td>30.0%</td><td class=\"text\">infer: grpc status 5 NOT_FOUND: m2 × 1,096</td>\
                 <td class=\"text\">d-2</td><td class=\"text\">infer: grpc status 5 NOT_FOUND: \
                 &lt;m&gt; × 100<br>4 more with other texts</td></tr>"
            ),
            "{html}"
        );
        let mut old = recording();
        old.summary
            .as_object_mut()
            .expect("an object")
            .remove("failures");
        let html = render_html(&old);
        assert!(html.contains("<h2>Failures</h2><p class=\"note\">No failed jobs"));
        assert!(!html.contains("data-failure="));
    }

    #[test]
    fn a_summary_from_before_replicas_were_reported_still_renders() {
        let mut old = recording();
        old.summary
            .as_object_mut()
            .expect("an object")
            .remove("replicas");
        let html = render_html(&old);
        assert!(html.contains("<h2>Replicas</h2><p class=\"note\">No per-replica rows"));
        assert!(!html.contains("data-replica="));
    }

    #[test]
    fn embedded_data_has_spectra_and_per_second_series() {
        let recording = recording();
        let data = run_data(&recording, "run", &stage_totals(&recording));
        let fetch = &data["stages"][1];
        assert_eq!(fetch["stage"], "fetch");
        assert_eq!(fetch["count"], 600);
        let spectrum = fetch["spectrum"].as_array().unwrap();
        assert_eq!(spectrum.first().unwrap()[0], 0.0);
        assert_eq!(spectrum.last().unwrap()[0], 100.0);
        assert_eq!(spectrum.last().unwrap()[1], fetch["max"]);
        assert_eq!(data["timeline"]["t"], json!([0.0, 1.0, 2.0]));
        assert_eq!(data["timeline"]["jobs_per_s"], json!([200.0, 200.0, 200.0]));
        // 10, 20 … 2000 µs: the 198th of 200 samples.
        assert_eq!(data["timeline"]["p99"][0], 1_980);
        // A log without failed or skipped tags (an older run): none of either.
        assert_eq!(data["stages"].as_array().unwrap().len(), 5);
        assert_eq!(data["outcomes"]["ok"], json!([200.0, 200.0, 200.0]));
        assert_eq!(data["outcomes"]["failed"], json!([0.0, 0.0, 0.0]));
        assert_eq!(data["outcomes"]["skipped"], json!([0.0, 0.0, 0.0]));
        let html = render_html(&recording);
        assert!(!html.contains("Failed jobs: time to failure"));
        assert!(html.contains("data-plot=\"outcomes\""));
    }

    #[test]
    fn failed_and_skipped_intervals_are_counted_per_second_and_shown_apart() {
        let mut recording = recording();
        let at = |second: u64, stage: &str, n: u64| Interval {
            start: Duration::from_secs(second),
            length: Duration::from_secs(1),
            stage: stage.into(),
            histogram: {
                let mut h = new_histogram();
                for v in 1..=n {
                    h.record(v * 100).unwrap();
                }
                h
            },
        };
        recording.intervals.extend([
            at(0, "failed_end_to_end", 30),
            at(0, "failed_fetch", 30),
            at(2, "failed_end_to_end", 5),
            at(2, "failed_fetch", 5),
            at(1, "skipped", 7),
            // A second with failures only (jobs draining after the window).
            at(3, "failed_end_to_end", 2),
            at(3, "failed_fetch", 2),
        ]);
        let data = run_data(&recording, "run", &stage_totals(&recording));
        assert_eq!(data["outcomes"]["t"], json!([0.0, 1.0, 2.0, 3.0]));
        assert_eq!(data["outcomes"]["ok"], json!([200.0, 200.0, 200.0, 0.0]));
        assert_eq!(data["outcomes"]["failed"], json!([30.0, 0.0, 5.0, 2.0]));
        assert_eq!(data["outcomes"]["skipped"], json!([0.0, 7.0, 0.0, 0.0]));
        let stages: Vec<&str> = data["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        assert_eq!(
            stages[5..],
            ["failed_fetch", "failed_end_to_end"],
            "failed stages after the ok ones, only those with samples"
        );
        let html = render_html(&recording);
        assert!(html.contains("<h3 id=\"failed-latency\">Failed jobs: time to failure</h3>"));
        assert!(html.contains("data-plot=\"spectrum\" data-for=\"failed_end_to_end\""));
        assert!(!html.contains("data-for=\"failed_infer\""));
        assert!(html.contains(
            "<tr data-stage=\"failed_fetch\"><td>failed_fetch</td><td class=\"text\">failed</td><td>37</td>"
        ));
    }

    #[test]
    fn helpers_format_for_people() {
        assert_eq!(group(1_234_567.0, 0), "1,234,567");
        assert_eq!(group(999.0, 0), "999");
        assert_eq!(group(1_234.56, 1), "1,234.6");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(12_345), "12.3 ms");
        assert_eq!(micros(2_050_000), "2.05 s");
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn comparison_page_has_both_runs() {
        let a = recording();
        let mut b = recording();
        b.summary["jobs_per_s"] = json!(400.0);
        let html = render_comparison_html(&a, "tonic", &b, "percore");
        assert!(html.contains("\"kind\":\"comparison\""));
        // Run names go into the embedded JSON too: they cannot close its script.
        let odd = render_comparison_html(&a, "</script>a", &b, "b");
        assert_eq!(odd.matches("</script>").count(), 2);
        assert!(odd.contains("\"name\":\"\\u003c/script\\u003ea\""));
        assert!(html.contains("A tonic") && html.contains("B percore"));
        assert!(html.contains(
            "<tr><td>jobs/s</td><td>200</td><td>400</td><td class=\"ratio better\">2.00</td></tr>"
        ));
        // Same latencies in both: every ratio 1.00, neither better nor worse.
        assert!(
            html.contains("<tr data-stage=\"end_to_end\"><td>end_to_end</td><td class=\"group\">")
        );
        assert!(html.contains("<td class=\"ratio \">1.00</td>"));
    }
}
