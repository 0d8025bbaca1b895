//! What one run measured, the medians per (client, service time, load), and the
//! markdown tables and JSON written at the end.

use std::path::Path;

use serde_json::{json, Value};

use crate::corunner::per_job_us;
use crate::load::Load;
use crate::machine::DISTURBED_CORES;
use crate::perf::PerfRates;
use crate::process::{self, Exit};
use crate::window::Figures;

/// One run of one client.
pub struct Measured {
    /// Jobs finished in the measured window, and how many of them failed.
    pub jobs: u64,
    pub failed: u64,
    pub jobs_per_s: f64,
    /// CPU (user + system) of the client's process(es) over its measured window,
    /// per job of that window, as the client measured it.
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
    /// Machine-wide figures of the measured window.
    pub figures: Option<Figures>,
    /// Kernel event counts over the window, per second.
    pub perf: Option<PerfRates>,
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
            failed: json["failed"].as_u64().unwrap_or(0) + json["skipped"].as_u64().unwrap_or(0),
            jobs_per_s: field(&json, &["jobs_per_s"], who)?,
            cpu_us_per_job: field(&json, &["cpu_us_per_job"], who)?,
            p50_us: latency("p50")?,
            p99_us: latency("p99")?,
            p999_us: latency("p999")?,
            max_us: latency("max")?,
            process_cpu_us_per_job: process_cpu.as_secs_f64() * 1e6 / jobs.max(1) as f64,
            raw: json,
            figures: None,
            perf: None,
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
            figures: None,
            perf: None,
        })
    }

    /// CPU the client caused on the whole machine, per job (co-runner method).
    pub fn caused_us_per_job(&self) -> Option<f64> {
        let co = self.figures.as_ref()?.co_runner.as_ref()?;
        Some(per_job_us(co.caused_cores, self.jobs_per_s))
    }

    /// The client's processes' CPU by the kernel's accounting over the window,
    /// per job.
    pub fn charged_us_per_job(&self) -> Option<f64> {
        let figures = self.figures.as_ref()?;
        Some(per_job_us(figures.usage.client_cores, self.jobs_per_s))
    }

    /// Busy share of each compared CPU: what the co-runner lost there, or, without
    /// it, `/proc/stat`'s busy share.
    pub fn busy(&self) -> Vec<f64> {
        match &self.figures {
            Some(Figures {
                co_runner: Some(co),
                ..
            }) => co.lost.lost.clone(),
            Some(figures) => figures.usage.stat_busy.clone(),
            None => Vec::new(),
        }
    }

    pub fn disturbed(&self) -> bool {
        self.other_cores() > DISTURBED_CORES
    }

    pub fn other_cores(&self) -> f64 {
        self.figures.as_ref().map_or(0.0, |f| f.usage.other_cores)
    }

    fn per_job(&self, rate: f64) -> f64 {
        per_job_us(rate, self.jobs_per_s) * 1e-6
    }

    fn to_json(&self) -> Value {
        let usage = self.figures.as_ref().map(|f| {
            let u = &f.usage;
            json!({
                "window_s": u.seconds,
                "stat_busy": u.stat_busy,
                "stat_steal": u.steal,
                "client": u.client_cores,
                "mocks": u.mock_cores,
                "ours": u.ours_cores,
                "kernel_threads": u.kernel_cores,
                "others": u.other_cores,
            })
        });
        let co_runner = self
            .figures
            .as_ref()
            .and_then(|f| f.co_runner.as_ref())
            .map(|co| {
                json!({
                    "calibration": {
                        "seconds": co.calibrated.calibration.seconds,
                        "iterations_per_cpu_second": co.calibrated.calibration.speed,
                        "lost": co.calibrated.calibration.lost,
                        "known_ours": co.calibrated.known.ours,
                        "known_others": co.calibrated.known.others,
                        "lost_total": co.calibrated.lost,
                        "unexplained": co.calibrated.unexplained,
                        "background_used": co.calibrated.background,
                    },
                    "lost": co.lost.lost,
                    "scheduled_away": co.lost.scheduled_away,
                    "speed": co.lost.speed,
                    "known_mocks": co.known.mocks,
                    "known_ours": co.known.ours,
                    "known_others": co.known.others,
                    "mock_overcharge": co.mock_overcharge,
                    "caused_cores": co.caused_cores,
                })
            });
        let perf = self.perf.as_ref().map(|p| {
            let per_job = |rate: f64| self.per_job(rate);
            json!({
                "syscalls_per_job": per_job(p.syscalls),
                "context_switches_per_job": per_job(p.context_switches),
                "migrations_per_job": per_job(p.migrations),
                "syscalls_per_job_by_name": p.by_syscall.iter()
                    .map(|(name, rate)| (name.clone(), json!(per_job(*rate))))
                    .collect::<serde_json::Map<_, _>>(),
                "machine_per_job": p.machine.iter()
                    .map(|(name, rate)| (name.clone(), json!(per_job(*rate))))
                    .collect::<serde_json::Map<_, _>>(),
                "machine_per_s": p.machine.iter()
                    .map(|(name, rate)| (name.clone(), json!(rate)))
                    .collect::<serde_json::Map<_, _>>(),
            })
        });
        json!({
            "jobs": self.jobs,
            "failed": self.failed,
            "jobs_per_s": self.jobs_per_s,
            "cpu_us_per_job": self.cpu_us_per_job,
            "charged_us_per_job": self.charged_us_per_job(),
            "caused_us_per_job": self.caused_us_per_job(),
            "latency_us": {
                "p50": self.p50_us, "p99": self.p99_us, "p999": self.p999_us, "max": self.max_us,
            },
            "process_cpu_us_per_job": self.process_cpu_us_per_job,
            "cpu_usage_cores": usage,
            "co_runner": co_runner,
            "perf": perf,
            "disturbed": self.disturbed(),
            "client_output": self.raw,
        })
    }
}

/// One row of the tables: a client at one service time and load.
pub struct Cell {
    pub client: String,
    pub label: String,
    pub client_cpus: Vec<usize>,
    pub service_time_us: u64,
    pub load: Load,
    /// Plain runs: nothing else on the machine.
    pub runs: Vec<Measured>,
    /// Runs with the co-runner: a busy host, and the caused CPU.
    pub co_runs: Vec<Measured>,
    /// The run with `perf stat` counting: only its counts are used.
    pub perf_runs: Vec<Measured>,
    pub errors: Vec<String>,
}

/// Medians of some runs, each figure on its own; `NAN` where no run has it.
struct Medians {
    jobs_per_s: f64,
    cpu_us_per_job: f64,
    caused_us_per_job: f64,
    charged_us_per_job: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    process_cpu_us_per_job: f64,
    syscalls_per_job: f64,
    context_switches_per_job: f64,
    ipis_per_job: f64,
    busy: Vec<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    crate::corunner::median(values)
}

impl Medians {
    fn of(runs: &[Measured]) -> Option<Medians> {
        if runs.is_empty() {
            return None;
        }
        let of =
            |get: &dyn Fn(&Measured) -> Option<f64>| median(runs.iter().filter_map(get).collect());
        let cpus = runs.iter().map(|m| m.busy().len()).max().unwrap_or(0);
        Some(Medians {
            jobs_per_s: of(&|m| Some(m.jobs_per_s)),
            cpu_us_per_job: of(&|m| Some(m.cpu_us_per_job)),
            caused_us_per_job: of(&|m| m.caused_us_per_job()),
            charged_us_per_job: of(&|m| m.charged_us_per_job()),
            p50_us: of(&|m| Some(m.p50_us)),
            p99_us: of(&|m| Some(m.p99_us)),
            p999_us: of(&|m| Some(m.p999_us)),
            process_cpu_us_per_job: of(&|m| Some(m.process_cpu_us_per_job)),
            syscalls_per_job: of(&|m| m.perf.as_ref().map(|p| m.per_job(p.syscalls))),
            context_switches_per_job: of(&|m| {
                m.perf.as_ref().map(|p| m.per_job(p.context_switches))
            }),
            ipis_per_job: of(&|m| m.perf.as_ref().map(|p| m.per_job(p.ipis()))),
            busy: (0..cpus)
                .map(|cpu| of(&|m| m.busy().get(cpu).copied()))
                .collect(),
        })
    }

    /// Own CPU for the tables: the window's figure, read the same way for every
    /// client (`percore bench`'s own counts its warm-up too), or what the client
    /// said where the window has none.
    fn own_cpu_us_per_job(&self) -> f64 {
        if self.charged_us_per_job.is_finite() {
            self.charged_us_per_job
        } else {
            self.cpu_us_per_job
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "jobs_per_s": self.jobs_per_s,
            "cpu_us_per_job": self.cpu_us_per_job,
            "caused_us_per_job": self.caused_us_per_job,
            "charged_us_per_job": self.charged_us_per_job,
            "latency_us": { "p50": self.p50_us, "p99": self.p99_us, "p999": self.p999_us },
            "process_cpu_us_per_job": self.process_cpu_us_per_job,
            "syscalls_per_job": self.syscalls_per_job,
            "context_switches_per_job": self.context_switches_per_job,
            "ipis_per_job": self.ipis_per_job,
            "busy": self.busy,
        })
    }
}

/// "12 % / 80 %", or "–".
fn busy(shares: &[f64]) -> String {
    if shares.is_empty() {
        return "–".into();
    }
    shares
        .iter()
        .map(|b| {
            if b.is_finite() {
                format!("{:.0} %", b * 100.0)
            } else {
                "–".into()
            }
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// How the comparison was run, for the report's header.
pub struct Settings {
    pub duration_s: u64,
    pub warmup_s: u64,
    pub runs: usize,
    pub payload_bytes: usize,
    pub devices: usize,
    pub client_cpu: usize,
    pub mock_cpu: usize,
    pub open_loop_threads: usize,
    pub python: Option<String>,
    pub co_runner: bool,
    pub perf: Option<Result<(), String>>,
    pub command: String,
    /// The co-runner check's table, if it ran.
    pub validation: Option<String>,
    /// Wall time of the whole command, seconds.
    pub elapsed_s: f64,
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
    if value < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// A figure with one decimal, or "–".
fn one_decimal(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.1}")
    } else {
        "–".into()
    }
}

/// A per-job count: two decimals below 10, one above.
fn count(value: f64) -> String {
    if !value.is_finite() {
        "–".into()
    } else if value < 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

pub fn markdown(settings: &Settings, cells: &[Cell]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "One job = Fetch + ModelInfer ({} B tensor) + its row persisted in SQLite by an \
         asynchronous writer ({} devices; percore's schema: a `jobs` row and a `job_outputs` \
         row per ok job). Mock nodes: two processes of the percore binary on CPU {mock}; \
         clients on CPU {client} (those marked * take CPU {mock} too, shared with the mocks). \
         Closed loop: C jobs in flight in total; open loop: R jobs/s arriving evenly spaced, \
         latency counted from each job's planned arrival. Every figure is the median of {} \
         run(s) of {} s after a {} s warm-up (`percore bench` reports over its whole run, \
         warm-up included).\n\n\
         - **Idle host** (nothing else runs; CPUs idle between jobs, and a vCPU that halts \
         takes long to wake): **jobs/s**, **own CPU** (CPU time of the client's own \
         process(es) per job over the measured window, read from \
         `/proc/PID/task/*/schedstat` the same way for every client; what each client \
         reported itself is in results.json), **e2e** latency, and **stat busy**: each CPU's busy share by `/proc/stat` \
         (tick-sampled at 250 Hz, machine-wide, mocks included).\n\
         - **Busy host** (runs of their own with the co-runner: a `SCHED_IDLE` spinner on \
         each CPU, so no CPU ever idles): jobs/s, own CPU, and **caused CPU**: what the \
         client cost the whole machine per job — the work the spinners lost, less the mocks' \
         and every other process's charged CPU and the idle machine's background (measured \
         before each run) — IPIs, softirqs, kernel threads and other work done outside its \
         own threads included; **busy**: share of each CPU the spinner lost, whoever took \
         it{}.\n\
         - **Counts** (one run of its own with `perf stat`, which slows every syscall): \
         **syscalls** and **ctx sw**(context switches) per job on the client's threads, \
         **IPIs** per job on every CPU (mocks included){}.\n",
        thousands(settings.payload_bytes as f64),
        thousands(settings.devices as f64),
        settings.runs,
        settings.duration_s,
        settings.warmup_s,
        if settings.co_runner {
            ""
        } else {
            " — not run this time"
        },
        match &settings.perf {
            Some(Ok(())) => String::new(),
            Some(Err(why)) => format!(" — not counted: {why}"),
            None => " — not run this time".into(),
        },
        mock = settings.mock_cpu,
        client = settings.client_cpu,
    ));
    // One table per (service time, loop kind), rows grouped by load.
    let mut sections: Vec<(u64, bool)> = Vec::new();
    for cell in cells {
        let key = (cell.service_time_us, matches!(cell.load, Load::Open(_)));
        if !sections.contains(&key) {
            sections.push(key);
        }
    }
    for (service_time_us, open) in sections {
        out.push_str(&format!(
            "\n### {}, service time {} µs\n\n",
            if open { "Open loop" } else { "Closed loop" },
            thousands(service_time_us as f64)
        ));
        out.push_str(
            "| client | load | jobs/s | own CPU µs/job | e2e p50 µs | e2e p99 µs | e2e p99.9 µs | stat busy CPU 0 / 1 | busy host: jobs/s | own CPU µs/job | **caused CPU µs/job** | busy CPU 0 / 1 | syscalls/job | ctx sw/job | IPIs/job |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for cell in cells.iter().filter(|c| {
            c.service_time_us == service_time_us && matches!(c.load, Load::Open(_)) == open
        }) {
            let plain = match Medians::of(&cell.runs) {
                Some(m) => format!(
                    "{} | {} | {} | {} | {} | {}",
                    thousands(m.jobs_per_s),
                    one_decimal(m.own_cpu_us_per_job()),
                    thousands(m.p50_us),
                    thousands(m.p99_us),
                    thousands(m.p999_us),
                    busy(&m.busy),
                ),
                None => "failed | | | | |".into(),
            };
            let co_run = match Medians::of(&cell.co_runs) {
                Some(m) => format!(
                    "{} | {} | **{}** | {}",
                    thousands(m.jobs_per_s),
                    one_decimal(m.own_cpu_us_per_job()),
                    one_decimal(m.caused_us_per_job),
                    busy(&m.busy),
                ),
                None => "– | – | – | –".into(),
            };
            let counts = match Medians::of(&cell.perf_runs) {
                Some(m) => format!(
                    "{} | {} | {}",
                    count(m.syscalls_per_job),
                    count(m.context_switches_per_job),
                    count(m.ipis_per_job),
                ),
                None => "– | – | –".into(),
            };
            out.push_str(&format!(
                "| {} | {} | {plain} | {co_run} | {counts} |\n",
                cell.label,
                cell.load.label(),
            ));
        }
    }
    out.push_str(&format!(
        "\n\\* also on CPU {} (with the mocks). Python thread pool in the open loop: {} \
         threads. Python sequential runs one job at a time, so only 1 in flight and the \
         open loop.\n",
        settings.mock_cpu, settings.open_loop_threads
    ));
    if let Some(python) = &settings.python {
        out.push_str(&format!("\nPython: {python}.\n"));
    }
    if let Some(validation) = &settings.validation {
        out.push_str(
            "\n### Co-runner check\n\nKnown loads (a process using exact fractions of a CPU, \
             by its own CPU time) read back by the caused-CPU method, no mocks running:\n\n",
        );
        out.push_str(validation);
    }
    let mut notes = Vec::new();
    for cell in cells {
        let what = format!(
            "{} at {} µs, {}",
            cell.client,
            cell.service_time_us,
            cell.load.label()
        );
        let all = || cell.runs.iter().chain(&cell.co_runs).chain(&cell.perf_runs);
        let failed: u64 = all().map(|m| m.failed).sum();
        if failed > 0 {
            notes.push(format!(
                "{what}: {failed} failed jobs over its runs (counted in jobs/s)"
            ));
        }
        let disturbed = all().filter(|m| m.disturbed()).count();
        if disturbed > 0 {
            notes.push(format!(
                "{what}: {disturbed} run(s) disturbed by other processes (> {DISTURBED_CORES} \
                 cores) even after two retries"
            ));
        }
        for error in &cell.errors {
            notes.push(format!("{what}: {error}"));
        }
    }
    if !notes.is_empty() {
        out.push_str("\nProblems:\n");
        for note in notes {
            out.push_str(&format!("- {}\n", note.replace('\n', " ")));
        }
    }
    out.push_str(&format!(
        "\nCommand: `{}` ({:.0} min)\n",
        settings.command,
        settings.elapsed_s / 60.0
    ));
    out
}

pub fn json(settings: &Settings, cells: &[Cell], validation: Option<Value>) -> Value {
    let results: Vec<Value> = cells
        .iter()
        .map(|cell| {
            json!({
                "client": cell.client,
                "label": cell.label,
                "client_cpus": cell.client_cpus,
                "service_time_us": cell.service_time_us,
                "load": cell.load.slug(),
                "median": Medians::of(&cell.runs).map(|m| m.to_json()),
                "median_co_run": Medians::of(&cell.co_runs).map(|m| m.to_json()),
                "median_perf": Medians::of(&cell.perf_runs).map(|m| m.to_json()),
                "runs": cell.runs.iter().map(Measured::to_json).collect::<Vec<_>>(),
                "co_runs": cell.co_runs.iter().map(Measured::to_json).collect::<Vec<_>>(),
                "perf_runs": cell.perf_runs.iter().map(Measured::to_json).collect::<Vec<_>>(),
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
            "client_cpu": settings.client_cpu,
            "mock_cpu": settings.mock_cpu,
            "open_loop_threads": settings.open_loop_threads,
            "python": settings.python,
            "co_runner": settings.co_runner,
            "perf": settings.perf.as_ref().map(|p| p.clone().err().unwrap_or_else(|| "on".into())),
            "command": settings.command,
            "elapsed_s": settings.elapsed_s,
        },
        "co_runner_check": validation,
        "results": results,
    })
}
