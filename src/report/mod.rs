//! Run reports: the files `--report DIR` writes and `percore report DIR [DIR_B]` reads.
//!
//! The report layer sees a run as a [`Recording`]: the `--summary-json` object
//! (plus per-class, per-shard and config rows) and one HDR histogram per stage per
//! second. From it [`write_dir`] makes:
//!
//! | file | what | module |
//! | --- | --- | --- |
//! | `summary.json` | the summary object, pretty-printed | here |
//! | `<stage>.hgrm` | the stage's whole-run percentile distribution (ok jobs), Java's `outputPercentileDistribution` text | [`hgrm`] |
//! | `failed_<stage>.hgrm` | failed jobs' time to failure (fetch, infer, end to end); only when some failed there | [`hgrm`] |
//! | `histograms.hlog` | every interval histogram, HdrHistogram interval log V2 (deflate, base64), tagged by stage (and `failed_*`, `skipped`) | [`hlog`] |
//! | `report.html` | one self-contained page: spectra, throughput and p99 over time, tables, config | [`html`] |
//!
//! [`load_dir`] reads `summary.json` and `histograms.hlog` back (the `.hgrm` files
//! and the page are derived), so a saved run can be re-rendered or compared with
//! another. Everything here runs on the coordinator after a run, never on a shard.

use std::fmt::{self, Write};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod hgrm;
pub mod hlog;
pub mod html;
pub mod stages;

pub use html::{render_comparison_html, render_html};

/// Stage names in report order: a job's life from its planned tick to its row.
pub use crate::stats::STAGES;

/// Failed jobs' time-to-failure histograms, the interval log's other tags and
/// the skipped ticks' tag.
pub use crate::stats::{FAILED_STAGES, LOG_TAGS, SKIPPED_TAG};

/// Version of the files this module writes. [`load_dir`] reads only this version,
/// and says so when it meets another: bump it when a file's meaning changes.
pub const FORMAT_VERSION: u32 = 1;

pub use crate::stats::{new_histogram, MAX_TRACKED_US, SIGNIFICANT_DIGITS};

/// File names inside a report directory.
pub const SUMMARY_FILE: &str = "summary.json";
pub const LOG_FILE: &str = "histograms.hlog";
pub const HTML_FILE: &str = "report.html";

/// One run as the report layer sees it.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The run's summary object: what `--summary-json` writes, plus `per_class`,
    /// `per_shard` (with `latency_us`), `replicas` ([`ReplicaRow`]) and `config`. Read defensively: a field may
    /// be missing in an older or partial run.
    pub summary: Value,
    /// Per-second interval histograms, one per stage per second (µs).
    pub intervals: Vec<Interval>,
}

/// One stage's histogram over one interval of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// Start, relative to the run's start.
    pub start: Duration,
    /// Length of the interval (one second, shorter at the end of a run).
    pub length: Duration,
    /// One of [`LOG_TAGS`]: a stage of ok jobs, a failed stage or `skipped`.
    pub stage: String,
    /// Samples that finished the stage in this interval, in µs.
    pub histogram: Histogram<u64>,
}

/// What went wrong, and in which file (and line) it did.
#[derive(Debug)]
pub struct ReportError {
    /// The directory or file the problem is in.
    pub path: PathBuf,
    /// 1-based line in `path`, when the problem is on one line.
    pub line: Option<usize>,
    /// What went wrong there.
    pub kind: ReportErrorKind,
}

/// The kinds of report errors; `Display` of [`ReportError`] words each one.
#[derive(Debug)]
pub enum ReportErrorKind {
    /// The report directory does not exist.
    NoSuchDirectory,
    /// The path exists but is a file.
    NotADirectory,
    /// A file the report needs is absent.
    MissingFile,
    /// The directory holds no report but a sweep's levels, one report each:
    /// their names, sorted.
    SweepRoot(Vec<String>),
    /// Reading or writing failed; `action` is "read", "write" or "create".
    Io {
        action: &'static str,
        source: io::Error,
    },
    /// The file ends in the middle of `line`, or before its end marker.
    Truncated { mid_line: bool },
    /// A line (or the JSON) does not parse; the text says what was expected.
    Malformed(String),
    /// The log was written by another version of this module, or by another writer.
    OtherFormat { found: Option<String> },
}

impl ReportError {
    pub(crate) fn new(path: impl Into<PathBuf>, kind: ReportErrorKind) -> Self {
        ReportError {
            path: path.into(),
            line: None,
            kind,
        }
    }

    pub(crate) fn at_line(path: impl Into<PathBuf>, line: usize, kind: ReportErrorKind) -> Self {
        ReportError {
            path: path.into(),
            line: Some(line),
            kind,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        Self::new(path, ReportErrorKind::Io { action, source })
    }
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "percore report: {}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        match &self.kind {
            ReportErrorKind::NoSuchDirectory => write!(f, ": no such directory"),
            ReportErrorKind::NotADirectory => write!(f, ": not a directory"),
            ReportErrorKind::MissingFile => {
                write!(f, ": missing (not a percore report directory?)")
            }
            ReportErrorKind::SweepRoot(levels) => write!(
                f,
                ": a sweep's reports, one per level; run percore report on one of: {}",
                levels.join(", ")
            ),
            ReportErrorKind::Io { action, source } => write!(f, ": cannot {action}: {source}"),
            ReportErrorKind::Truncated { mid_line: true } => {
                write!(f, ": truncated: the file ends in the middle of this line")
            }
            ReportErrorKind::Truncated { mid_line: false } => {
                write!(f, ": truncated: the file ends before its end marker")
            }
            ReportErrorKind::Malformed(what) => write!(f, ": {what}"),
            ReportErrorKind::OtherFormat { found: Some(found) } => {
                write!(
                    f,
                    ": written by {found}, this is percore report format {FORMAT_VERSION}"
                )
            }
            ReportErrorKind::OtherFormat { found: None } => write!(
                f,
                ": not written by percore report (no \"{}\" line before the first histogram)",
                hlog::format_marker(FORMAT_VERSION)
            ),
        }
    }
}

impl std::error::Error for ReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ReportErrorKind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Creates `dir` (and its parents) and writes `summary.json`, one `<stage>.hgrm`
/// per stage, `histograms.hlog` and `report.html` into it.
pub fn write_dir(dir: &Path, recording: &Recording) -> Result<(), ReportError> {
    // The log tags each histogram with its stage and `load_dir` accepts only
    // these: refuse up front what could not be read back.
    if let Some(odd) = recording
        .intervals
        .iter()
        .find(|i| !LOG_TAGS.contains(&i.stage.as_str()))
    {
        return Err(ReportError::new(
            dir.join(LOG_FILE),
            ReportErrorKind::Malformed(format!(
                "cannot write an interval of unknown stage \"{}\" (stages: {})",
                odd.stage,
                LOG_TAGS.join(", ")
            )),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, "create", e))?;
    let write = |name: &str, contents: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|e| ReportError::io(path, "write", e))
    };
    let mut summary = serde_json::to_string_pretty(&recording.summary)
        .expect("a serde_json::Value always serializes");
    summary.push('\n');
    write(SUMMARY_FILE, summary.as_bytes())?;
    // Failed stages only when some job failed there: a healthy run's directory
    // stays as it was.
    let failed = failed_totals(recording)
        .into_iter()
        .filter(|(_, histogram)| !histogram.is_empty());
    for (stage, histogram) in stage_totals(recording).into_iter().chain(failed) {
        write(
            &format!("{stage}.hgrm"),
            hgrm::percentile_distribution(&histogram, 1.0).as_bytes(),
        )?;
    }
    write(LOG_FILE, &hlog::write_log(recording))?;
    write(HTML_FILE, render_html(recording).as_bytes())?;
    Ok(())
}

/// Reads a directory [`write_dir`] wrote: `summary.json` and `histograms.hlog`.
pub fn load_dir(dir: &Path) -> Result<Recording, ReportError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(ReportError::new(dir, ReportErrorKind::NotADirectory)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReportError::new(dir, ReportErrorKind::NoSuchDirectory))
        }
        Err(e) => return Err(ReportError::io(dir, "read", e)),
    }
    let summary_path = dir.join(SUMMARY_FILE);
    if !summary_path.exists() {
        let levels = sweep_levels(dir);
        if !levels.is_empty() {
            return Err(ReportError::new(dir, ReportErrorKind::SweepRoot(levels)));
        }
    }
    let summary_text = read_file(&summary_path)?;
    let summary: Value = serde_json::from_slice(&summary_text).map_err(|e| {
        ReportError::at_line(
            &summary_path,
            e.line(),
            ReportErrorKind::Malformed(format!("invalid JSON: {e}")),
        )
    })?;
    let log_path = dir.join(LOG_FILE);
    let log_text = read_file(&log_path)?;
    let intervals = hlog::read_log(&log_text, &log_path)?;
    Ok(Recording { summary, intervals })
}

/// Subdirectories of `dir` that hold a report (a sweep written by `bench
/// --report`), by name.
fn sweep_levels(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut levels: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join(SUMMARY_FILE).is_file())
        .map(|entry| format!("{}/", entry.file_name().to_string_lossy()))
        .collect();
    levels.sort();
    levels
}

fn read_file(path: &Path) -> Result<Vec<u8>, ReportError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ReportError::new(path, ReportErrorKind::MissingFile),
        _ => ReportError::io(path, "read", e),
    })
}

/// Every stage's intervals added up, in [`STAGES`] order (empty histograms for
/// stages without intervals): the ok jobs' latencies.
pub fn stage_totals(recording: &Recording) -> Vec<(String, Histogram<u64>)> {
    tag_totals(recording, &STAGES)
}

/// Failed jobs' time to failure, each of [`FAILED_STAGES`] added up over the
/// run (empty when none failed there, or the log predates them).
pub fn failed_totals(recording: &Recording) -> Vec<(String, Histogram<u64>)> {
    tag_totals(recording, &FAILED_STAGES)
}

/// The intervals of each of `tags` added up, in that order.
fn tag_totals(recording: &Recording, tags: &[&str]) -> Vec<(String, Histogram<u64>)> {
    tags.iter()
        .map(|&stage| {
            // Auto-resizing, so an interval recorded with wider bounds loses nothing.
            let mut total = new_histogram();
            total.auto(true);
            for interval in recording.intervals.iter().filter(|i| i.stage == stage) {
                total
                    .add(&interval.histogram)
                    .expect("an auto-resizing histogram accepts any other");
            }
            (stage.to_string(), total)
        })
        .collect()
}

/// The percentiles every table shows, with their column titles.
pub(crate) const TABLE_PERCENTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

/// Per-stage percentile table (µs), like the one printed at the end of a run.
/// The run's totals line from a report's summary, as `percore run` prints it
/// at the end; `None` when the summary lacks the counts (not a run's).
pub fn totals_line(summary: &Value) -> Option<String> {
    let count = |key: &str| summary.get(key).and_then(Value::as_u64);
    let number = |key: &str| summary.get(key).and_then(Value::as_f64);
    Some(format!(
        "{} jobs in {:.1} s ({:.0} jobs/s): ok {}, failed {}, skipped {}; dispatcher CPU {:.1} µs/job on {} shard(s)",
        count("jobs")?,
        number("elapsed_s")?,
        number("jobs_per_s")?,
        count("ok")?,
        count("failed")?,
        count("skipped")?,
        number("cpu_us_per_job")?,
        count("shards")?,
    ))
}

pub fn text_table(recording: &Recording) -> String {
    let ok = stage_totals(recording);
    let failed = failed_totals(recording);
    let ok: Vec<_> = ok.iter().map(|(s, h)| (s.as_str(), h)).collect();
    let failed: Vec<_> = failed.iter().map(|(s, h)| (s.as_str(), h)).collect();
    latency_table(&ok, &failed)
}

/// Which jobs a stage's histogram holds, as the tables label it.
pub fn stage_jobs(stage: &str) -> &'static str {
    match stage {
        "schedule_lag" => "ran",
        "sink_lag" => "rows",
        _ if stage.starts_with("failed_") => "failed",
        _ => "ok",
    }
}

/// The per-stage percentile table (µs) the end of a run and `percore report`
/// print: the stages with the jobs each counts (`ok`, `ran`: ok and failed,
/// `rows`: every row), then, when any job failed, the failed jobs' time to
/// failure under its own heading.
pub fn latency_table(ok: &[(&str, &Histogram<u64>)], failed: &[(&str, &Histogram<u64>)]) -> String {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<13} {:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "stage (µs)", "jobs", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (stage, histogram) in ok {
        latency_row(&mut table, stage, histogram);
    }
    if failed.iter().any(|(_, histogram)| !histogram.is_empty()) {
        let _ = writeln!(table, "failed: time to failure");
        for (stage, histogram) in failed {
            latency_row(&mut table, stage, histogram);
        }
    }
    table
}

/// One stage's row of [`latency_table`].
fn latency_row(table: &mut String, stage: &str, histogram: &Histogram<u64>) {
    let name = stage.strip_prefix("failed_").unwrap_or(stage);
    let _ = write!(
        table,
        "{:<13} {:<6} {:>10}",
        name,
        stage_jobs(stage),
        histogram.len()
    );
    for (_, q) in TABLE_PERCENTILES {
        let _ = write!(
            table,
            " {:>10}",
            cell(histogram, histogram.value_at_quantile(q))
        );
    }
    let _ = writeln!(table, " {:>10}", cell(histogram, histogram.max()));
}

/// A latency cell: the value, or "-" when the stage has no samples.
fn cell(histogram: &Histogram<u64>, value: u64) -> String {
    if histogram.is_empty() {
        "-".into()
    } else {
        value.to_string()
    }
}

/// One entry of the summary's `replicas` array: one replica of one class's
/// data sources or compute nodes, all shards together.
///
/// Every field has a default, so an entry written before a field existed still
/// reads; a summary written before replicas were reported has no array and
/// reads as no rows ([`replica_rows`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicaRow {
    /// The class's name, as in the rows.
    pub class: String,
    /// `data_source` or `compute_node`: which of the class's sets.
    pub role: String,
    /// The node's `host:port`.
    pub replica: String,
    /// Attempts that ended on it (ok or not; cancelled hedges excluded).
    pub requests: u64,
    /// Attempts that failed in a way that counts against it.
    pub failures: u64,
    /// Times a shard ejected it.
    pub ejections: u64,
    /// Peak-EWMA latency estimate at the end, µs, shards weighted by requests.
    pub ewma_latency_us: f64,
    /// Attempts in flight at the end (0 unless the run was cut short).
    pub outstanding: u64,
    /// Shards whose last probe found it ready, at the end.
    pub ready_shards: u32,
    /// Shards that had it ejected at the end.
    pub ejected_shards: u32,
    /// Shards that reported it: what the two counts above are out of.
    pub shards: u32,
}

/// The summary's `replicas` entries; none when the array is missing (an older
/// run), and an entry that does not read as a [`ReplicaRow`] is left out.
pub fn replica_rows(summary: &Value) -> Vec<ReplicaRow> {
    summary
        .get("replicas")
        .and_then(Value::as_array)
        .map_or_else(Vec::new, |rows| {
            rows.iter()
                .filter_map(|row| ReplicaRow::deserialize(row).ok())
                .collect()
        })
}

/// One entry of the summary's `failures` array: the failed jobs (or skipped
/// ticks) of one stage and reason class, all shards together, most frequent
/// first.
///
/// Every field has a default, and a summary written before failures were
/// reported has no array and reads as no rows ([`failure_rows`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailureRow {
    /// `failed` or `skipped`, as in the rows' `outcome`.
    pub outcome: String,
    /// `fetch` or `infer` for a failed job; `start` for a skipped tick.
    pub stage: String,
    /// The bounded reason class (`grpc NOT_FOUND`, `deadline`, `sink backlog`,
    /// …): the `reason` label of `percore_jobs_total`.
    pub reason: String,
    /// Records of this outcome, stage and class.
    pub count: u64,
    /// `count` out of all the run's jobs (ok, failed and skipped).
    pub share: f64,
    /// The most frequent exact reasons, as in the rows' `reason` column (up
    /// to five distinct texts, in the order they were first seen).
    pub reasons: Vec<ReasonTextRow>,
    /// Records whose exact text was not among those kept.
    pub other_reasons: u64,
}

/// One exact reason text of a [`FailureRow`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReasonTextRow {
    /// The text, as in the rows' `reason` column.
    pub text: String,
    /// Records with exactly this text.
    pub count: u64,
    /// The id of the first device seen with it.
    pub example_device: String,
}

impl FailureRow {
    /// The most frequent exact reason (the first seen among equals).
    pub fn top_reason(&self) -> Option<&ReasonTextRow> {
        self.reasons
            .iter()
            .reduce(|best, text| if text.count > best.count { text } else { best })
    }
}

/// The summary's `failures`, or no rows when it has none (an older summary,
/// or a run where nothing failed).
pub fn failure_rows(summary: &Value) -> Vec<FailureRow> {
    summary
        .get("failures")
        .and_then(Value::as_array)
        .map_or_else(Vec::new, |rows| {
            rows.iter()
                .filter_map(|row| FailureRow::deserialize(row).ok())
                .collect()
        })
}

/// Rows the end-of-run failure table shows; the rest are summed in one line.
pub const FAILURE_TABLE_ROWS: usize = 10;

/// The failure table printed after a run (and by `percore report DIR`): the
/// [`FAILURE_TABLE_ROWS`] most frequent (outcome, stage, reason) with their
/// count, share of all jobs, most frequent exact reason and an example device.
/// Empty when nothing failed or was skipped.
pub fn failure_table(rows: &[FailureRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let shown = &rows[..rows.len().min(FAILURE_TABLE_ROWS)];
    let width = |title: &str, cell: fn(&FailureRow) -> &str| {
        shown
            .iter()
            .map(|row| cell(row).chars().count())
            .chain([title.chars().count()])
            .max()
            .unwrap_or(0)
    };
    let reason_w = width("reason", |row| &row.reason);
    let device_w = width("example device", |row| {
        row.top_reason().map_or("-", |t| &t.example_device)
    });
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<8} {:<6} {:<reason_w$} {:>10} {:>7}  {:<device_w$}  most frequent reason",
        "outcome", "stage", "reason", "count", "share", "example device"
    );
    for row in shown {
        let (text, device) = row
            .top_reason()
            .map_or(("-", "-"), |t| (t.text.as_str(), t.example_device.as_str()));
        let _ = writeln!(
            table,
            "{:<8} {:<6} {:<reason_w$} {:>10} {:>6.1}%  {:<device_w$}  {text}",
            row.outcome,
            row.stage,
            row.reason,
            row.count,
            row.share * 100.0,
            device,
        );
    }
    if rows.len() > shown.len() {
        let rest = &rows[shown.len()..];
        let _ = writeln!(
            table,
            "… and {} more (outcome, stage, reason) with {} records: see summary.json",
            rest.len(),
            rest.iter().map(|row| row.count).sum::<u64>()
        );
    }
    table
}

/// Each row's share of the requests its class's set (same class and role)
/// received; `None` where that set received none.
pub fn replica_shares(rows: &[ReplicaRow]) -> Vec<Option<f64>> {
    rows.iter()
        .map(|row| {
            let set_total: u64 = rows
                .iter()
                .filter(|other| other.class == row.class && other.role == row.role)
                .map(|other| other.requests)
                .sum();
            (set_total > 0).then(|| row.requests as f64 / set_total as f64)
        })
        .collect()
}

/// The per-replica table printed after a run (and by `percore report DIR`):
/// requests, failures, ejections, EWMA latency and share of the class's set.
/// Empty when there are no rows.
pub fn replica_table(rows: &[ReplicaRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let width = |title: &str, cell: fn(&ReplicaRow) -> &str| {
        rows.iter()
            .map(|row| cell(row).chars().count())
            .chain([title.chars().count()])
            .max()
            .unwrap_or(0)
    };
    let class_w = width("class", |row| &row.class);
    let role_w = width("role", |row| &row.role);
    let replica_w = width("replica", |row| &row.replica);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<class_w$} {:<role_w$} {:<replica_w$} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "class", "role", "replica", "requests", "failures", "ejections", "ewma ms", "share"
    );
    for (row, share) in rows.iter().zip(replica_shares(rows)) {
        let _ = writeln!(
            table,
            "{:<class_w$} {:<role_w$} {:<replica_w$} {:>10} {:>9} {:>9} {:>9.3} {:>7}",
            row.class,
            row.role,
            row.replica,
            row.requests,
            row.failures,
            row.ejections,
            row.ewma_latency_us / 1e3,
            share.map_or_else(|| "-".to_string(), |share| format!("{:.1}%", share * 100.0)),
        );
    }
    table
}

/// A number from the summary object, if it is there and numeric.
pub(crate) fn summary_number(summary: &Value, key: &str) -> Option<f64> {
    summary.get(key).and_then(Value::as_f64)
}

/// The rows a comparison shows: (label, value in A, value in B, lower is better).
pub(crate) fn comparison_rows(
    a: &Recording,
    b: &Recording,
) -> Vec<(String, Option<f64>, Option<f64>, bool)> {
    let mut rows = vec![
        (
            "jobs/s".to_string(),
            summary_number(&a.summary, "jobs_per_s"),
            summary_number(&b.summary, "jobs_per_s"),
            false,
        ),
        (
            "cpu µs/job".to_string(),
            summary_number(&a.summary, "cpu_us_per_job"),
            summary_number(&b.summary, "cpu_us_per_job"),
            true,
        ),
    ];
    let totals_a = stage_totals(a);
    let totals_b = stage_totals(b);
    for ((stage, ha), (_, hb)) in totals_a.iter().zip(&totals_b) {
        let value = |h: &Histogram<u64>, q: Option<f64>| {
            (!h.is_empty()).then(|| match q {
                Some(q) => h.value_at_quantile(q) as f64,
                None => h.max() as f64,
            })
        };
        for (name, q) in TABLE_PERCENTILES
            .iter()
            .map(|&(n, q)| (n, Some(q)))
            .chain([("max", None)])
        {
            rows.push((
                format!("{stage} {name} (µs)"),
                value(ha, q),
                value(hb, q),
                true,
            ));
        }
    }
    rows
}

/// B / A, when both are there and A is not zero.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => Some(b / a),
        _ => None,
    }
}

/// Two runs side by side: jobs/s, CPU per job, and every stage's percentiles, with
/// B/A ratios (below 1 means B is lower).
pub fn comparison_table(a: &Recording, a_name: &str, b: &Recording, b_name: &str) -> String {
    let width = a_name
        .chars()
        .count()
        .max(b_name.chars().count())
        .clamp(12, 40);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<26} {:>width$} {:>width$} {:>8}",
        "", a_name, b_name, "B/A"
    );
    let number = |v: Option<f64>| match v {
        None => "-".to_string(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    };
    for (label, va, vb, _) in comparison_rows(a, b) {
        let r = ratio(va, vb).map_or_else(|| "-".to_string(), |r| format!("{r:.2}"));
        let _ = writeln!(
            table,
            "{:<26} {:>width$} {:>width$} {:>8}",
            label,
            number(va),
            number(vb),
            r
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failure_rows_read_back_with_defaults_and_the_table_shows_ten() {
        // A summary from before failures were reported: no rows, no table.
        assert!(failure_rows(&json!({"jobs": 5})).is_empty());
        assert_eq!(failure_table(&[]), "");
        // A row missing fields (an older or partial writer) still reads.
        let partial = failure_rows(&json!({"failures": [{"outcome": "failed", "count": 3}]}));
        assert_eq!(partial.len(), 1);
        assert_eq!((partial[0].count, partial[0].stage.as_str()), (3, ""));
        assert!(partial[0].top_reason().is_none());
        let line = failure_table(&partial).lines().nth(1).map(str::to_string);
        let words: Vec<String> = line
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(&words[words.len() - 2..], ["-", "-"], "no device, no text");
        let rows: Vec<FailureRow> = (0..12u64)
            .map(|n| FailureRow {
                outcome: "failed".into(),
                stage: "infer".into(),
                reason: format!("grpc C{n}"),
                count: 100 - n,
                share: 0.01,
                reasons: vec![ReasonTextRow {
                    text: format!("infer: grpc status {n}"),
                    count: 100 - n,
                    example_device: format!("d{n}"),
                }],
                other_reasons: 0,
            })
            .collect();
        let table = failure_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 1 + FAILURE_TABLE_ROWS + 1, "{table}");
        assert!(lines[1].contains("grpc C0") && lines[1].ends_with("infer: grpc status 0"));
        assert!(lines[10].contains("grpc C9"), "{table}");
        assert_eq!(
            lines[11],
            "… and 2 more (outcome, stage, reason) with 179 records: see summary.json"
        );
    }

    pub(crate) fn interval(
        second: u64,
        stage: &str,
        values: impl IntoIterator<Item = u64>,
    ) -> Interval {
        let mut histogram = new_histogram();
        for v in values {
            histogram.record(v).unwrap();
        }
        Interval {
            start: Duration::from_secs(second),
            length: Duration::from_secs(1),
            stage: stage.to_string(),
            histogram,
        }
    }

    #[test]
    fn totals_add_every_interval_of_a_stage_in_stage_order() {
        let recording = Recording {
            summary: json!({}),
            intervals: vec![
                interval(0, "fetch", 1..=5_000),
                interval(1, "fetch", 5_001..=10_000),
                interval(0, "infer", [7]),
            ],
        };
        let totals = stage_totals(&recording);
        let names: Vec<&str> = totals.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, STAGES);
        let fetch = &totals[1].1;
        assert_eq!(fetch.len(), 10_000);
        assert_eq!(fetch.value_at_quantile(0.5), 5_003);
        assert_eq!(fetch.value_at_quantile(0.9), 9_007);
        // 3 significant digits: 9,990 shares a bucket of 8 with 9,984..=9,991.
        assert_eq!(fetch.value_at_quantile(0.999), 9_991);
        assert_eq!(fetch.max(), 10_007);
        assert_eq!(totals[2].1.max(), 7);
        assert!(totals[0].1.is_empty());
    }

    #[test]
    fn text_table_has_a_row_per_stage_with_percentiles() {
        let recording = Recording {
            summary: json!({}),
            intervals: vec![interval(0, "end_to_end", 1..=1_000)],
        };
        let table = text_table(&recording);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 1 + STAGES.len());
        assert!(lines[0].contains("p99.9"));
        let e2e: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(
            e2e,
            [
                "end_to_end",
                "ok",
                "1000",
                "500",
                "900",
                "990",
                "999",
                "1000"
            ]
        );
        let fetch: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(fetch, ["fetch", "ok", "0", "-", "-", "-", "-", "-"]);
        assert!(lines[1].starts_with("schedule_lag  ran "), "{table}");

        // With failed jobs, their time to failure under its own heading.
        let recording = Recording {
            summary: json!({}),
            intervals: vec![
                interval(0, "end_to_end", 1..=10),
                interval(0, "failed_end_to_end", 1..=4),
                interval(1, "failed_infer", 3..=3),
            ],
        };
        let table = text_table(&recording);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines.len(),
            1 + STAGES.len() + 1 + FAILED_STAGES.len(),
            "{table}"
        );
        assert_eq!(lines[6], "failed: time to failure");
        let words = |line: &str| {
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            words(lines[7]),
            ["fetch", "failed", "0", "-", "-", "-", "-", "-"]
        );
        assert_eq!(
            words(lines[8]),
            ["infer", "failed", "1", "3", "3", "3", "3", "3"]
        );
        assert_eq!(words(lines[9])[..3], ["end_to_end", "failed", "4"]);
    }

    #[test]
    fn replica_rows_read_defensively_and_shares_are_per_set() {
        let summary = json!({"replicas": [
            {"class": "camera", "role": "compute_node", "replica": "10.0.0.1:8001",
             "requests": 300, "failures": 3, "ejections": 1, "ewma_latency_us": 2500.0},
            {"class": "camera", "role": "compute_node", "replica": "10.0.0.2:8001", "requests": 100},
            {"class": "camera", "role": "data_source", "replica": "10.0.0.3:7001", "requests": 400},
            {"class": "meter", "role": "compute_node", "replica": "10.0.0.1:8001"},
            "not an object",
            {"class": 5},
        ]});
        let rows = replica_rows(&summary);
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(rows[1].failures, 0, "a missing field reads as 0");
        assert_eq!(
            replica_shares(&rows),
            vec![Some(0.75), Some(0.25), Some(1.0), None]
        );
        let table = replica_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5);
        let first: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            first,
            [
                "camera",
                "compute_node",
                "10.0.0.1:8001",
                "300",
                "3",
                "1",
                "2.500",
                "75.0%"
            ]
        );
        assert!(lines[4].ends_with(" -"), "{}", lines[4]);
        // A run from before replicas were reported.
        assert!(replica_rows(&json!({"jobs": 5})).is_empty());
        assert_eq!(replica_table(&[]), "");
    }

    #[test]
    fn comparison_table_shows_both_runs_and_ratios() {
        let a = Recording {
            summary: json!({"jobs_per_s": 1000.0, "cpu_us_per_job": 20.0}),
            intervals: vec![interval(0, "end_to_end", 1..=1_000)],
        };
        let b = Recording {
            summary: json!({"jobs_per_s": 2500.0, "cpu_us_per_job": 5.0}),
            intervals: vec![interval(0, "end_to_end", (1..=1_000).map(|v| v * 2))],
        };
        let table = comparison_table(&a, "python", &b, "percore");
        let row = |label: &str| -> Vec<String> {
            let line = table.lines().find(|l| l.starts_with(label)).unwrap();
            line[26..].split_whitespace().map(str::to_string).collect()
        };
        assert!(table.lines().next().unwrap().contains("python"));
        assert_eq!(row("jobs/s"), ["1000", "2500", "2.50"]);
        assert_eq!(row("cpu µs/job"), ["20", "5", "0.25"]);
        assert_eq!(row("end_to_end p50 (µs)"), ["500", "1000", "2.00"]);
        assert_eq!(row("fetch p99 (µs)"), ["-", "-", "-"]);
    }

    #[test]
    fn intervals_of_unknown_stages_are_refused_before_writing() {
        let dir = std::env::temp_dir().join(format!(
            "percore-report-unknown-stage-{}",
            std::process::id()
        ));
        let recording = Recording {
            summary: json!({}),
            intervals: vec![interval(0, "fetch", [1]), interval(0, "warm up", [1])],
        };
        let e = write_dir(&dir, &recording).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "percore report: {}: cannot write an interval of unknown stage \"warm up\" \
                 (stages: schedule_lag, fetch, infer, sink_lag, end_to_end, \
                 failed_fetch, failed_infer, failed_end_to_end, skipped)",
                dir.join(LOG_FILE).display()
            )
        );
        assert!(!dir.exists(), "nothing is written");
    }

    #[test]
    fn errors_name_the_place_and_the_problem() {
        let e = ReportError::new("/x/y", ReportErrorKind::NoSuchDirectory);
        assert_eq!(e.to_string(), "percore report: /x/y: no such directory");
        let e = ReportError::at_line(
            "/x/y/histograms.hlog",
            17,
            ReportErrorKind::Truncated { mid_line: true },
        );
        assert_eq!(
            e.to_string(),
            "percore report: /x/y/histograms.hlog line 17: truncated: the file ends in the middle of this line"
        );
        let e = ReportError::new(
            "/x/histograms.hlog",
            ReportErrorKind::OtherFormat {
                found: Some("percore report format 3".into()),
            },
        );
        assert_eq!(
            e.to_string(),
            "percore report: /x/histograms.hlog: written by percore report format 3, this is percore report format 1"
        );
    }
}
