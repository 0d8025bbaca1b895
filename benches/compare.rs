//! The comparison: the same workload through percore and through the designs it
//! replaces, one table.
//!
//! ```text
//! cargo bench --bench compare -- [--duration SECS] [--runs N] [--warmup SECS]
//!     [--service-times 0,2000] [--concurrency 64,256]
//!     [--clients percore-1,percore-2,tonic,python-asyncio,python-mp]
//! ```
//!
//! One job = `Fetch` from a data source, `ModelInfer` with the fetched 1,024-byte
//! tensor on a compute node, the row handed to an asynchronous writer that
//! persists it in SQLite (percore's schema). Clients, each in its own process:
//!
//! - `percore-1`, `percore-2`: `percore bench --shards 1|2` (this crate's binary);
//! - `tonic`: a tokio multi-thread runtime + tonic client, this binary re-executed
//!   with `--tonic-client` ([`tonic_client`]);
//! - `python-asyncio`: grpcio's `grpc.aio`, one process;
//! - `python-mp`: one asyncio process per CPU (multiprocessing), each with its share
//!   of the jobs in flight (`compare/client.py`).
//!
//! Every run starts both mock nodes afresh as processes of the percore binary,
//! pinned to the last CPU; clients run on CPU 0, except percore-2 and python-mp,
//! which take one process or shard per CPU (so they share the mocks' CPU). Closed
//! loop with C jobs in flight in total over the fleet `dev-0000001`…`dev-0100000`.
//! Writes `target/compare/results.md` and `results.json` (medians and every run).

#[path = "compare/machine.rs"]
mod machine;
#[path = "compare/nodes.rs"]
mod nodes;
#[path = "compare/process.rs"]
mod process;
#[path = "compare/python.rs"]
mod python;
#[path = "compare/report.rs"]
mod report;
#[path = "compare/sql.rs"]
mod sql;
#[path = "compare/tonic_client.rs"]
mod tonic_client;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use report::{Cell, Measured};

/// Bytes of the tensor the mock source returns per fetch.
const PAYLOAD_BYTES: usize = 1024;
/// Devices in the fleet, as `Fleet::generate(100_000, …)` names them.
const DEVICES: usize = 100_000;
/// Time a client may take beyond warm-up and duration (start-up, draining) before
/// it is killed.
const CLIENT_SLACK: Duration = Duration::from_secs(60);
/// Longest wait for other processes (builds, tests) to leave the CPUs before a run.
const QUIET_WAIT: Duration = Duration::from_secs(120);

/// The clients compared, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Percore { shards: usize },
    Tonic,
    PythonAsyncio,
    PythonMultiprocessing,
}

impl Client {
    const ALL: [Client; 5] = [
        Client::Percore { shards: 1 },
        Client::Percore { shards: 2 },
        Client::Tonic,
        Client::PythonAsyncio,
        Client::PythonMultiprocessing,
    ];

    /// The name `--clients` takes and the JSON uses.
    pub fn key(self) -> String {
        match self {
            Client::Percore { shards } => format!("percore-{shards}"),
            Client::Tonic => "tonic".into(),
            Client::PythonAsyncio => "python-asyncio".into(),
            Client::PythonMultiprocessing => "python-mp".into(),
        }
    }

    /// How the table names it.
    pub fn label(self, cpus: &[usize]) -> String {
        match self {
            Client::Percore { shards: 1 } => "percore, 1 shard".into(),
            Client::Percore { shards } => format!("percore, {shards} shards"),
            Client::Tonic => "tokio + tonic (1 worker)".into(),
            Client::PythonAsyncio => "Python grpc.aio, 1 process".into(),
            Client::PythonMultiprocessing => {
                format!("Python grpc.aio, {} processes", cpus.len())
            }
        }
    }

    /// The CPUs the client runs on: CPU 0 alone, or every CPU for the designs
    /// that take one shard or process per core.
    pub fn cpus(self, all: &[usize]) -> Vec<usize> {
        match self {
            Client::Percore { shards } => all[..shards.min(all.len())].to_vec(),
            Client::PythonMultiprocessing => all.to_vec(),
            Client::Tonic | Client::PythonAsyncio => all[..1].to_vec(),
        }
    }
}

/// Command-line settings.
pub struct Args {
    pub duration_s: u64,
    pub warmup_s: u64,
    pub runs: usize,
    pub service_times_us: Vec<u64>,
    pub concurrency: Vec<usize>,
    pub clients: Vec<Client>,
}

fn parse_args(words: &[String]) -> Result<Args, String> {
    let mut args = Args {
        duration_s: 10,
        warmup_s: 2,
        runs: 3,
        service_times_us: vec![0, 2000],
        concurrency: vec![64, 256],
        clients: Client::ALL.to_vec(),
    };
    let mut words = words.iter();
    while let Some(flag) = words.next() {
        if flag == "--bench" {
            continue; // added by `cargo bench`
        }
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number = |word: &str| -> Result<u64, String> {
            word.trim()
                .parse()
                .map_err(|_| format!("{flag}: {word:?} is not a whole number"))
        };
        let list = |text: &str| -> Result<Vec<u64>, String> {
            text.split(',')
                .filter(|w| !w.is_empty())
                .map(number)
                .collect()
        };
        match flag.as_str() {
            "--duration" => args.duration_s = number(value)?,
            "--warmup" => args.warmup_s = number(value)?,
            "--runs" => args.runs = number(value)? as usize,
            "--service-times" => args.service_times_us = list(value)?,
            "--concurrency" => {
                args.concurrency = list(value)?.into_iter().map(|c| c as usize).collect()
            }
            "--clients" => {
                args.clients = value
                    .split(',')
                    .map(|key| {
                        Client::ALL
                            .into_iter()
                            .find(|c| c.key() == key)
                            .ok_or(format!(
                                "--clients: unknown client {key:?} (known: {})",
                                Client::ALL.map(Client::key).join(", ")
                            ))
                    })
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.duration_s == 0 || args.runs == 0 {
        return Err("--duration and --runs must be at least 1".into());
    }
    if args.concurrency.contains(&0) {
        return Err("--concurrency: every level must be at least 1".into());
    }
    if args.service_times_us.is_empty() || args.concurrency.is_empty() || args.clients.is_empty() {
        return Err("--service-times, --concurrency and --clients need at least one value".into());
    }
    Ok(args)
}

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    if words.first().map(String::as_str) == Some("--tonic-client") {
        let result = tonic_client::Options::parse(&words[1..]).and_then(tonic_client::run);
        if let Err(error) = result {
            eprintln!("{error}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args(&words) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("compare: {error}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(all_ok) => std::process::exit(if all_ok { 0 } else { 1 }),
        Err(error) => {
            eprintln!("compare: {error}");
            std::process::exit(1);
        }
    }
}

/// Where things are: the crate, the target directory, the percore binary.
struct Paths {
    manifest: PathBuf,
    /// `target/compare`: results, logs, databases.
    out: PathBuf,
    logs: PathBuf,
    percore: PathBuf,
    venv: PathBuf,
}

fn paths() -> Result<Paths, String> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe =
        std::env::current_exe().map_err(|error| format!("cannot find this binary: {error}"))?;
    // target/<profile>/deps/compare-<hash>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .ok_or(format!("unexpected bench binary path {}", exe.display()))?;
    let target = profile
        .parent()
        .ok_or(format!("unexpected bench binary path {}", exe.display()))?;
    let out = target.join("compare");
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|error| format!("cannot create {}: {error}", logs.display()))?;
    Ok(Paths {
        manifest,
        logs,
        percore: target.join("release").join("percore"),
        venv: target.join("compare-venv"),
        out,
    })
}

/// Runs every (service time, concurrency, run, client); true if nothing failed.
fn run(args: &Args) -> Result<bool, String> {
    let paths = paths()?;
    let cpus = percore::tuning::allowed_cpus();
    if cpus.len() < 2 {
        return Err(format!(
            "needs 2 CPUs (clients on one, mock nodes on another); this process may use {cpus:?}"
        ));
    }
    let mock_cpu = *cpus.last().expect("two CPUs");
    // The comparison is made on two CPUs: client CPU 0, mocks CPU 1.
    let cpus = vec![cpus[0], mock_cpu];

    eprintln!("compare: cargo build --release --bin percore");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "--bin", "percore"])
        .current_dir(&paths.manifest)
        .status()
        .map_err(|error| format!("cannot run {cargo} build: {error}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --release --bin percore failed ({status})"
        ));
    }
    let percore_bench = percore_bench_flags(&paths.percore);
    let python = if args
        .clients
        .iter()
        .any(|c| matches!(c, Client::PythonAsyncio | Client::PythonMultiprocessing))
    {
        Some(python::prepare(&paths.venv, &paths.manifest)?)
    } else {
        None
    };

    let mut cells: Vec<Cell> = Vec::new();
    for &service_time_us in &args.service_times_us {
        for &concurrency in &args.concurrency {
            for &client in &args.clients {
                cells.push(Cell {
                    client: client.key(),
                    label: client.label(&client.cpus(&cpus)),
                    client_cpus: client.cpus(&cpus),
                    service_time_us,
                    concurrency,
                    runs: Vec::new(),
                    errors: Vec::new(),
                });
            }
        }
    }
    let total = cells.len() * args.runs;
    let mut done = 0;
    for group in cells.chunks_mut(args.clients.len()) {
        // Runs interleave the clients, so drift over time hits all of them alike.
        for run in 1..=args.runs {
            for (cell, &client) in group.iter_mut().zip(&args.clients) {
                done += 1;
                let what = format!(
                    "[{done}/{total}] {} service time {} µs, {} in flight, run {run}",
                    cell.client, cell.service_time_us, cell.concurrency
                );
                let run_settings = RunSettings {
                    client,
                    client_cpus: &cell.client_cpus,
                    mock_cpu,
                    service_time_us: cell.service_time_us,
                    concurrency: cell.concurrency,
                    duration: Duration::from_secs(args.duration_s),
                    warmup: Duration::from_secs(args.warmup_s),
                    paths: &paths,
                    python: python.as_ref(),
                    percore_bench: &percore_bench,
                };
                match run_quietly(&run_settings) {
                    Ok(measured) => {
                        let usage = &measured.usage;
                        eprintln!(
                            "{what}: {:.0} jobs/s, {:.1} µs CPU/job, p99 {:.0} µs; \
                             CPU {} {:.0}% busy, CPU {mock_cpu} {:.0}% (mocks {:.2} cores, others {:.2})",
                            measured.jobs_per_s,
                            measured.cpu_us_per_job,
                            measured.p99_us,
                            cpus[0],
                            usage.cpu0_busy * 100.0,
                            usage.mock_cpu_busy * 100.0,
                            usage.mock_cores,
                            usage.other_cores,
                        );
                        cell.runs.push(measured);
                    }
                    Err(error) => {
                        eprintln!("{what}: FAILED: {error}");
                        cell.errors.push(format!("run {run}: {error}"));
                    }
                }
            }
        }
    }

    let settings = report::Settings {
        duration_s: args.duration_s,
        warmup_s: args.warmup_s,
        runs: args.runs,
        payload_bytes: PAYLOAD_BYTES,
        devices: DEVICES,
        mock_cpu,
        python: python.as_ref().map(|p| p.versions.clone()),
        percore_warmup: percore_bench.as_ref().is_ok_and(|flags| flags.warmup),
        command: command_line(),
    };
    let markdown = report::markdown(&settings, &cells);
    let json = report::json(&settings, &cells);
    print!("{markdown}");
    let md_path = paths.out.join("results.md");
    let json_path = paths.out.join("results.json");
    std::fs::write(&md_path, &markdown)
        .map_err(|error| format!("writing {}: {error}", md_path.display()))?;
    let json_text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
    std::fs::write(&json_path, json_text)
        .map_err(|error| format!("writing {}: {error}", json_path.display()))?;
    eprintln!(
        "compare: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(cells.iter().all(|cell| cell.errors.is_empty()))
}

/// The command as typed: `cargo bench --bench compare -- …`.
fn command_line() -> String {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|w| w != "--bench")
        .collect();
    if words.is_empty() {
        "cargo bench --bench compare".into()
    } else {
        format!("cargo bench --bench compare -- {}", words.join(" "))
    }
}

/// What `percore bench` accepts, learned from its `--help`.
struct PercoreBenchFlags {
    /// It takes `--warmup SECS`: give it the same warm-up as the other clients.
    warmup: bool,
}

/// `Err` (kept, reported for every percore run) if the binary has no `bench`.
fn percore_bench_flags(percore: &Path) -> Result<PercoreBenchFlags, String> {
    let output = Command::new(percore)
        .args(["bench", "--help"])
        .output()
        .map_err(|error| format!("cannot run {}: {error}", percore.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{} has no working `bench` subcommand: {}",
            percore.display(),
            stderr.lines().next().unwrap_or("").trim()
        ));
    }
    let help = String::from_utf8_lossy(&output.stdout);
    Ok(PercoreBenchFlags {
        warmup: help.contains("--warmup"),
    })
}

/// One run of one client.
struct RunSettings<'a> {
    client: Client,
    client_cpus: &'a [usize],
    mock_cpu: usize,
    service_time_us: u64,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    paths: &'a Paths,
    python: Option<&'a python::Python>,
    percore_bench: &'a Result<PercoreBenchFlags, String>,
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs one client once, on a quiet machine: a run that other processes disturbed
/// (more than [`machine::DISTURBED_CORES`]) is made again, at most twice; the last
/// attempt is kept, marked if still disturbed.
fn run_quietly(run: &RunSettings) -> Result<Measured, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        machine::wait_until_quiet(QUIET_WAIT);
        let measured = run_one(run)?;
        if measured.usage.other_cores <= machine::DISTURBED_CORES || attempt == 3 {
            return Ok(measured);
        }
        eprintln!(
            "compare: other processes used {:.2} cores during the run; running it again",
            measured.usage.other_cores
        );
    }
}

/// What to start for a client: its name, the program and its arguments, and
/// where `percore bench` writes its summary.
struct ClientCommand {
    name: String,
    program: PathBuf,
    words: Vec<String>,
    summary: Option<PathBuf>,
}

fn client_command(
    run: &RunSettings,
    source: String,
    compute: String,
    db: String,
    logs: &Path,
) -> Result<ClientCommand, String> {
    Ok(match run.client {
        Client::Percore { shards } => {
            let flags = run.percore_bench.as_ref().map_err(Clone::clone)?;
            let summary = logs.join("summary.json");
            let mut words: Vec<String> = vec![
                "bench".into(),
                "--shards".into(),
                shards.to_string(),
                "--concurrency".into(),
                run.concurrency.to_string(),
                "--duration".into(),
                run.duration.as_secs().to_string(),
                "--source".into(),
                source,
                "--compute".into(),
                compute,
                "--payload-bytes".into(),
                PAYLOAD_BYTES.to_string(),
                "--summary-json".into(),
                summary.display().to_string(),
            ];
            if flags.warmup {
                words.extend(["--warmup".into(), run.warmup.as_secs().to_string()]);
            }
            ClientCommand {
                name: "percore bench".into(),
                program: run.paths.percore.clone(),
                words,
                summary: Some(summary),
            }
        }
        Client::Tonic => {
            let options = tonic_client::Options {
                source,
                compute,
                concurrency: run.concurrency,
                warmup: run.warmup,
                duration: run.duration,
                devices: DEVICES,
                db,
            };
            ClientCommand {
                name: "tonic client".into(),
                program: std::env::current_exe()
                    .map_err(|error| format!("cannot find this binary: {error}"))?,
                words: options.to_args(),
                summary: None,
            }
        }
        Client::PythonAsyncio | Client::PythonMultiprocessing => {
            let python = run.python.ok_or("python was not prepared")?;
            let multi = run.client == Client::PythonMultiprocessing;
            let mut words: Vec<String> = vec![
                python.client.display().to_string(),
                "--mode".into(),
                if multi { "mp" } else { "asyncio" }.into(),
                "--source".into(),
                source,
                "--compute".into(),
                compute,
                "--concurrency".into(),
                run.concurrency.to_string(),
                "--warmup".into(),
                run.warmup.as_secs().to_string(),
                "--duration".into(),
                run.duration.as_secs().to_string(),
                "--devices".into(),
                DEVICES.to_string(),
                "--db".into(),
                db,
                "--stubs".into(),
                python.stubs.display().to_string(),
            ];
            if multi {
                words.extend([
                    "--procs".into(),
                    run.client_cpus.len().to_string(),
                    "--cpus".into(),
                    cpu_list(run.client_cpus),
                ]);
            }
            ClientCommand {
                name: format!("python client ({})", run.client.key()),
                program: python.interpreter.clone(),
                words,
                summary: None,
            }
        }
    })
}

/// Starts fresh mock nodes, runs the client against them, stops them.
fn run_one(run: &RunSettings) -> Result<Measured, String> {
    let logs = run.paths.logs.join(format!(
        "{}-st{}-c{}",
        run.client.key(),
        run.service_time_us,
        run.concurrency
    ));
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)
        .map_err(|error| format!("cannot create {}: {error}", logs.display()))?;
    let mocks = nodes::start(
        &run.paths.percore,
        run.mock_cpu,
        run.service_time_us,
        PAYLOAD_BYTES,
        &logs,
    )
    .map_err(|error| format!("mock nodes: {error}"))?;
    let db_dir = run.paths.out.join("db");
    let _ = std::fs::remove_dir_all(&db_dir);
    std::fs::create_dir_all(&db_dir)
        .map_err(|error| format!("cannot create {}: {error}", db_dir.display()))?;
    let db = db_dir.join("jobs.db").display().to_string();
    let command = client_command(
        run,
        mocks.source.to_string(),
        mocks.compute.to_string(),
        db,
        &logs,
    )?;
    let log = logs.join("client.log");
    let child = process::spawn(
        &command.name,
        &cpu_list(run.client_cpus),
        &command.program,
        &command.words,
        &log,
    )?;

    // CPU shares over (about) the client's measured window: from half a second
    // after its warm-up to half a second before its end.
    let spawned = Instant::now();
    let warmup = if command.summary.is_some() && !matches!(run.percore_bench, Ok(f) if f.warmup) {
        Duration::ZERO
    } else {
        run.warmup
    };
    let margin = Duration::from_millis(500);
    std::thread::sleep(warmup + margin);
    let before = machine::Sample::take();
    std::thread::sleep((warmup + run.duration - margin).saturating_sub(spawned.elapsed()));
    let after = machine::Sample::take();
    let usage = before.usage(
        &after,
        child.pid(),
        &mocks.pids(),
        run.client_cpus[0],
        run.mock_cpu,
    );

    let exit = child.wait(run.warmup + run.duration + CLIENT_SLACK)?;
    let mut measured = match &command.summary {
        Some(summary) => {
            if exit.code != Some(0) {
                return Err(format!(
                    "percore bench exited with {:?}{}",
                    exit.code,
                    process::log_tail(&log)
                ));
            }
            let text = std::fs::read_to_string(summary).map_err(|error| {
                format!("percore bench: reading {}: {error}", summary.display())
            })?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
                format!("percore bench: {} is not JSON: {error}", summary.display())
            })?;
            Measured::from_percore(json, exit.cpu)?
        }
        None => Measured::from_client_line(&command.name, &exit, &log)?,
    };
    measured.usage = usage;
    drop(mocks);
    let _ = std::fs::remove_dir_all(&db_dir);
    if measured.jobs == 0 {
        return Err(format!(
            "no job finished in the measured window{}",
            process::log_tail(&log)
        ));
    }
    Ok(measured)
}
