//! What one run measured, the medians per (client, service time, concurrency), and
//! the markdown table and JSON written at the end.

use std::path::Path;

use serde_json::{json, Value};

use crate::machine::{Usage, DISTURBED_CORES};
use crate::process::{self, Exit};

/// One run of one client.
pub struct Measured {
    /// Jobs finished in the measured window, and how many of them failed.
    pub jobs: u64,
    pub failed: u64,
    pub jobs_per_s: f64,
    /// CPU (user + system) of the client's process(es) over the measured window,
    /// per job of that window.
    pub cpu_us_per_job: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Cross-check: the whole process's CPU from `wait4` (start-up, warm-up and
    /// draining included) over every job it ran.
    pub process_cpu_us_per_job: f64,
    /// What the client printed, kept in the JSON.
    pub raw: Value,
    /// Who used the CPUs during the measured window.
    pub usage: Usage,
}

fn field(json: &Value, path: &[&str], who: &str) -> Result<f64, String> {
    let mut value = json;
    for key in path {
        value = &value[*key];
    }
    value
        .as_f64()
        .ok_or(format!("{who}: no number at {} in {json}", path.join(".")))
}

impl Measured {
    /// From `percore bench --summary-json` (`{"levels": [{level, slug,
    /// summary}]}`; the one level's summary is read): its figures count the
    /// dispatcher's threads over its run.
    pub fn from_percore(json: Value, process_cpu: std::time::Duration) -> Result<Measured, String> {
        let who = "percore bench summary";
        let json = match json["levels"].as_array().map(Vec::as_slice) {
            Some([level]) => level["summary"].clone(),
            _ => return Err(format!("{who}: no one level in {json}")),
        };
        let jobs = field(&json, &["jobs"], who)? as u64;
        let latency = |key: &str| field(&json, &["latency_us", "end_to_end", key], who);
        Ok(Measured {
            jobs,
            failed: json["failed"].as_u64().unwrap_or(0),
            jobs_per_s: field(&json, &["jobs_per_s"], who)?,
            cpu_us_per_job: field(&json, &["cpu_us_per_job"], who)?,
            p50_us: latency("p50")?,
            p99_us: latency("p99")?,
            p999_us: latency("p999")?,
            max_us: latency("max")?,
            process_cpu_us_per_job: process_cpu.as_secs_f64() * 1e6 / jobs.max(1) as f64,
            raw: json,
            usage: Usage::default(),
        })
    }

    /// From the JSON line the tonic and Python clients print.
    pub fn from_client_line(who: &str, exit: &Exit, log: &Path) -> Result<Measured, String> {
        if exit.code != Some(0) {
            return Err(format!(
                "{who} exited with {:?}{}",
                exit.code,
                process::log_tail(log)
            ));
        }
        let line = exit
            .stdout
            .lines()
            .rev()
            .find(|line| line.trim_start().starts_with('{'))
            .ok_or(format!(
                "{who} printed no JSON line{}",
                process::log_tail(log)
            ))?;
        let json: Value = serde_json::from_str(line)
            .map_err(|error| format!("{who}: bad JSON line {line:?}: {error}"))?;
        let jobs = field(&json, &["jobs"], who)? as u64;
        let jobs_total = field(&json, &["jobs_total"], who)? as u64;
        let rows_written = field(&json, &["rows_written"], who)? as u64;
        if rows_written != jobs_total {
            return Err(format!(
                "{who}: ran {jobs_total} jobs but its writer wrote {rows_written} rows"
            ));
        }
        let elapsed = field(&json, &["elapsed_s"], who)?;
        let cpu = field(&json, &["cpu_s"], who)?;
        let jobs_per_s = match json["jobs_per_s"].as_f64() {
            Some(rate) => rate,
            None => jobs as f64 / elapsed,
        };
        let latency = |key: &str| field(&json, &["latency_us", key], who);
        Ok(Measured {
            jobs,
            failed: json["failed"].as_u64().unwrap_or(0),
            jobs_per_s,
            cpu_us_per_job: cpu * 1e6 / jobs.max(1) as f64,
            p50_us: latency("p50")?,
            p99_us: latency("p99")?,
            p999_us: latency("p999")?,
            max_us: latency("max")?,
            process_cpu_us_per_job: exit.cpu.as_secs_f64() * 1e6 / jobs_total.max(1) as f64,
            raw: json,
            usage: Usage::default(),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "jobs": self.jobs,
            "failed": self.failed,
            "jobs_per_s": self.jobs_per_s,
            "cpu_us_per_job": self.cpu_us_per_job,
            "latency_us": {
                "p50": self.p50_us, "p99": self.p99_us, "p999": self.p999_us, "max": self.max_us,
            },
            "process_cpu_us_per_job": self.process_cpu_us_per_job,
            "cpu_usage_cores": {
                "window_s": self.usage.seconds,
                "client_cpu0_busy": self.usage.cpu0_busy,
                "mock_cpu_busy": self.usage.mock_cpu_busy,
                "client": self.usage.client_cores,
                "mocks": self.usage.mock_cores,
                "others": self.usage.other_cores,
            },
            "disturbed": self.usage.other_cores > DISTURBED_CORES,
            "client_output": self.raw,
        })
    }
}

/// One row of the table: a client at one service time and concurrency.
pub struct Cell {
    pub client: String,
    pub label: String,
    pub client_cpus: Vec<usize>,
    pub service_time_us: u64,
    pub concurrency: usize,
    pub runs: Vec<Measured>,
    pub errors: Vec<String>,
}

/// Medians of the runs, each figure on its own.
struct Medians {
    jobs_per_s: f64,
    cpu_us_per_job: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    process_cpu_us_per_job: f64,
    cpu0_busy: f64,
    mock_cpu_busy: f64,
    mock_cores: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl Cell {
    fn medians(&self) -> Option<Medians> {
        if self.runs.is_empty() {
            return None;
        }
        let of = |get: fn(&Measured) -> f64| median(self.runs.iter().map(get).collect());
        Some(Medians {
            jobs_per_s: of(|m| m.jobs_per_s),
            cpu_us_per_job: of(|m| m.cpu_us_per_job),
            p50_us: of(|m| m.p50_us),
            p99_us: of(|m| m.p99_us),
            p999_us: of(|m| m.p999_us),
            process_cpu_us_per_job: of(|m| m.process_cpu_us_per_job),
            cpu0_busy: of(|m| m.usage.cpu0_busy),
            mock_cpu_busy: of(|m| m.usage.mock_cpu_busy),
            mock_cores: of(|m| m.usage.mock_cores),
        })
    }
}

/// How the comparison was run, for the report's header.
pub struct Settings {
    pub duration_s: u64,
    pub warmup_s: u64,
    pub runs: usize,
    pub payload_bytes: usize,
    pub devices: usize,
    pub mock_cpu: usize,
    pub python: Option<String>,
    /// Whether `percore bench` took `--warmup` too.
    pub percore_warmup: bool,
    pub command: String,
}

/// 12345.6 → "12,346".
fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0.0 {
        out.insert(0, '-');
    }
    out
}

pub fn markdown(settings: &Settings, cells: &[Cell]) -> String {
    let mut out = String::new();
    let warmup = if settings.percore_warmup {
        format!("each after a {} s warm-up", settings.warmup_s)
    } else {
        format!(
            "tonic and Python measured after a {} s warm-up; `percore bench` over its whole run",
            settings.warmup_s
        )
    };
    out.push_str(&format!(
        "Closed loop, C jobs in flight in total; one job = Fetch + ModelInfer ({} B tensor) + \
         its row persisted in SQLite by an asynchronous writer; {} devices. Mock nodes: two \
         processes of the percore binary on CPU {}. Medians of {} run(s) of {} s ({warmup}). \
         Client CPU = user + system time of the client's own process(es), per job. \
         Busy = share of each CPU in use during the measured window, whoever used it \
         (CPU {} runs the mocks, and the second shard or process where there is one).\n\n",
        thousands(settings.payload_bytes as f64),
        thousands(settings.devices as f64),
        settings.mock_cpu,
        settings.runs,
        settings.duration_s,
        settings.mock_cpu,
    ));
    out.push_str(
        "| client | client CPUs | service time | in flight | jobs/s | client CPU µs/job | e2e p50 µs | e2e p99 µs | e2e p99.9 µs | busy CPU 0 / 1 |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for cell in cells {
        let cpus = cell
            .client_cpus
            .iter()
            .map(|cpu| {
                if *cpu == settings.mock_cpu {
                    format!("{cpu} (shared with mocks)")
                } else {
                    cpu.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let figures = match cell.medians() {
            Some(m) => format!(
                "{} | {:.1} | {} | {} | {} | {:.0} % / {:.0} %",
                thousands(m.jobs_per_s),
                m.cpu_us_per_job,
                thousands(m.p50_us),
                thousands(m.p99_us),
                thousands(m.p999_us),
                m.cpu0_busy * 100.0,
                m.mock_cpu_busy * 100.0,
            ),
            None => "failed | | | | |".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} µs | {} | {} |\n",
            cell.label,
            cpus,
            thousands(cell.service_time_us as f64),
            cell.concurrency,
            figures
        ));
    }
    let mut notes = Vec::new();
    for cell in cells {
        let failed: u64 = cell.runs.iter().map(|m| m.failed).sum();
        if failed > 0 {
            notes.push(format!(
                "{} at {} µs, {} in flight: {failed} failed jobs over its runs",
                cell.client, cell.service_time_us, cell.concurrency
            ));
        }
        let disturbed = cell
            .runs
            .iter()
            .filter(|m| m.usage.other_cores > DISTURBED_CORES)
            .count();
        if disturbed > 0 {
            notes.push(format!(
                "{} at {} µs, {} in flight: {disturbed} run(s) disturbed by other processes \
                 (> {DISTURBED_CORES} cores) even after two retries",
                cell.client, cell.service_time_us, cell.concurrency
            ));
        }
        for error in &cell.errors {
            notes.push(format!(
                "{} at {} µs, {} in flight: {error}",
                cell.client, cell.service_time_us, cell.concurrency
            ));
        }
    }
    if let Some(python) = &settings.python {
        out.push_str(&format!("\nPython: {python}.\n"));
    }
    if !notes.is_empty() {
        out.push_str("\nProblems:\n");
        for note in notes {
            out.push_str(&format!("- {}\n", note.replace('\n', " ")));
        }
    }
    out.push_str(&format!("\nCommand: `{}`\n", settings.command));
    out
}

pub fn json(settings: &Settings, cells: &[Cell]) -> Value {
    let results: Vec<Value> = cells
        .iter()
        .map(|cell| {
            let median = cell.medians().map(|m| {
                json!({
                    "jobs_per_s": m.jobs_per_s,
                    "cpu_us_per_job": m.cpu_us_per_job,
                    "latency_us": { "p50": m.p50_us, "p99": m.p99_us, "p999": m.p999_us },
                    "process_cpu_us_per_job": m.process_cpu_us_per_job,
                    "client_cpu0_busy": m.cpu0_busy,
                    "mock_cpu_busy": m.mock_cpu_busy,
                    "mock_cores": m.mock_cores,
                })
            });
            json!({
                "client": cell.client,
                "label": cell.label,
                "client_cpus": cell.client_cpus,
                "service_time_us": cell.service_time_us,
                "concurrency": cell.concurrency,
                "median": median,
                "runs": cell.runs.iter().map(Measured::to_json).collect::<Vec<_>>(),
                "errors": cell.errors,
            })
        })
        .collect();
    json!({
        "settings": {
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "runs": settings.runs,
            "payload_bytes": settings.payload_bytes,
            "devices": settings.devices,
            "mock_cpu": settings.mock_cpu,
            "percore_warmup": settings.percore_warmup,
            "python": settings.python,
            "command": settings.command,
        },
        "results": results,
    })
}
