//! The comparison: the same workload through percore and through every design it
//! was weighed against, at every load, in one set of tables.
//!
//! ```text
//! cargo bench --bench compare -- [--quick] [--duration SECS] [--warmup SECS] [--runs N]
//!     [--concurrency 1,4,64,256] [--rates 1000,5000,20000] [--service-times 0,2000]
//!     [--service-time-levels c1,c64,r1000|all] [--open-loop-threads 64]
//!     [--clients percore-1,percore-2,tonic,python-asyncio,python-mp,python-threads,python-seq]
//!     [--no-co-runner] [--no-perf] [--validate | --no-validate] [--lock FILE]
//! ```
//!
//! One job = `Fetch` from a data source, `ModelInfer` with the fetched 1,024-byte
//! tensor on a compute node, the row handed to an asynchronous writer that
//! persists it in SQLite (percore's schema: a `jobs` row and a `job_outputs` row
//! per ok job). Clients, each in its own process:
//!
//! - `percore-1`, `percore-2`: `percore bench --shards 1|2` (this crate's binary);
//! - `tonic`: a tokio multi-thread runtime + tonic client, this binary re-executed
//!   with `--tonic-client` ([`tonic_client`]);
//! - `python-asyncio`: grpcio's `grpc.aio`, one process;
//! - `python-mp`: one asyncio process per CPU (multiprocessing), each with its share
//!   of the load;
//! - `python-threads`: a `ThreadPoolExecutor` of N threads with the synchronous
//!   stub (N = jobs in flight; `--open-loop-threads` in the open loop);
//! - `python-seq`: one thread, synchronous calls one after another (1 in flight and
//!   the open loop only). The Python designs are in `compare/client.py`, which says
//!   how each makes open-loop arrivals.
//!
//! Loads ([`load`]): closed loop with C jobs in flight (`--concurrency`), open loop
//! at R jobs/s evenly spaced (`--rates`; latency from each job's planned arrival);
//! either list may be empty. The first service time runs every level, the others
//! only those of `--service-time-levels`.
//!
//! Every run starts both mock nodes afresh as processes of the percore binary,
//! pinned to the last CPU; clients run on CPU 0, except percore-2 and python-mp,
//! which take one shard or process per CPU (so they share the mocks' CPU). Before
//! each run: wait for a quiet machine (others' builds). A run disturbed by other
//! processes is made again (twice at most). Each (client, service time, load) gets
//! three kinds of runs, because measuring changes what is measured:
//!
//! - **plain** (`--runs`): nothing else runs; jobs/s, own CPU, latency, and each
//!   CPU's busy share from `/proc/stat`;
//! - **co-run** (`--runs`, unless `--no-co-runner`): with the co-runner
//!   ([`corunner`]: one `SCHED_IDLE` spinner per CPU, calibrated just before): the
//!   CPU the client causes machine-wide (IPIs, softirqs, kernel threads included) is
//!   the work the spinners lose less what everyone else used. No CPU ever idles,
//!   as on a busy host — at low load that alone changes latency and CPU a lot (a
//!   halted vCPU is slow to wake), hence runs of their own;
//! - **perf** (one, at most 2 s, unless `--no-perf`): `perf stat` counts the
//!   client's syscalls and context switches and the machine's IPIs ([`perf`]); the
//!   syscall tracepoint slows every syscall (tonic at 1 in flight: +25–45 % CPU),
//!   so only its counts are used.
//!
//! Before the runs the co-runner is checked against known loads ([`validate`];
//! `--validate` runs only that). Writes `target/compare/results.md` and
//! `results.json` (medians and every run).
//!
//! **Time**: a plain run takes its warm-up and duration plus ~1.2 s, a co-run
//! 1.1 s more (calibration). The defaults — 7 clients; closed loop at 1, 4, 64, 256
//! and open loop at 1,000, 5,000, 20,000 jobs/s with service time 0, and 1 in
//! flight, 64 in flight and 1,000 jobs/s with 2 ms; 3 plain and 3 co-run runs of
//! 5 s after 1 s, and one perf run — are 66 cells and 462 runs, about an hour
//! (results.md's last line says how long it took). `--quick` (1 run each of 2 s
//! at 1 and 64 in flight and 1,000 jobs/s, service time 0, and the co-runner
//! check) takes about 5 minutes: a smoke run, not a measurement.
//!
//! Measure on a machine to itself: run it through `/work/bin/cpu-exclusive`, or,
//! for a long table on a shared machine, with `--lock /tmp/percore-cpu.lock` (the
//! lock `cpu-exclusive` takes), which holds it exclusively around each run only.

#[path = "compare/corunner.rs"]
mod corunner;
#[path = "compare/load.rs"]
mod load;
#[path = "compare/lock.rs"]
mod lock;
#[path = "compare/machine.rs"]
mod machine;
#[path = "compare/nodes.rs"]
mod nodes;
#[path = "compare/perf.rs"]
mod perf;
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
#[path = "compare/validate.rs"]
mod validate;
#[path = "compare/window.rs"]
mod window;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use load::Load;
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
/// The measured window starts this long after the client starts measuring and
/// ends this long before it stops, so both edges are in steady state.
const MARGIN: Duration = Duration::from_millis(250);
/// A perf run's duration at most, in seconds.
const PERF_DURATION_S: u64 = 2;
/// Longest wait for a client's `measuring` line beyond its warm-up (imports,
/// spawning processes, connecting).
const START_LIMIT: Duration = Duration::from_secs(60);

/// The clients compared, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Percore { shards: usize },
    Tonic,
    PythonAsyncio,
    PythonMultiprocessing,
    PythonThreads,
    PythonSequential,
}

impl Client {
    const ALL: [Client; 7] = [
        Client::Percore { shards: 1 },
        Client::Percore { shards: 2 },
        Client::Tonic,
        Client::PythonAsyncio,
        Client::PythonMultiprocessing,
        Client::PythonThreads,
        Client::PythonSequential,
    ];

    /// The name `--clients` takes and the JSON uses.
    pub fn key(self) -> String {
        match self {
            Client::Percore { shards } => format!("percore-{shards}"),
            Client::Tonic => "tonic".into(),
            Client::PythonAsyncio => "python-asyncio".into(),
            Client::PythonMultiprocessing => "python-mp".into(),
            Client::PythonThreads => "python-threads".into(),
            Client::PythonSequential => "python-seq".into(),
        }
    }

    /// How the table names it at `load`; * marks clients that share the mocks' CPU.
    pub fn label(self, cpus: &[usize], load: Load, open_loop_threads: usize) -> String {
        let shared = if cpus.len() > 1 { "*" } else { "" };
        match self {
            Client::Percore { shards: 1 } => "percore, 1 shard".into(),
            Client::Percore { shards } => format!("percore, {shards} shards{shared}"),
            Client::Tonic => "tokio + tonic".into(),
            Client::PythonAsyncio => "Python grpc.aio, 1 process".into(),
            Client::PythonMultiprocessing => {
                format!("Python grpc.aio, {} processes{shared}", cpus.len())
            }
            Client::PythonThreads => match self.threads(load, open_loop_threads) {
                1 => "Python thread pool (1 thread)".into(),
                threads => format!("Python thread pool ({threads} threads)"),
            },
            Client::PythonSequential => "Python sequential".into(),
        }
    }

    /// The thread pool's size: jobs in flight, or `open_loop_threads`.
    fn threads(self, load: Load, open_loop_threads: usize) -> usize {
        match load {
            Load::Closed(c) => c,
            Load::Open(_) => open_loop_threads,
        }
    }

    /// The CPUs the client runs on: CPU 0 alone, or every CPU for the designs
    /// that take one shard or process per core.
    pub fn cpus(self, all: &[usize]) -> Vec<usize> {
        match self {
            Client::Percore { shards } => all[..shards.min(all.len())].to_vec(),
            Client::PythonMultiprocessing => all.to_vec(),
            _ => all[..1].to_vec(),
        }
    }

    /// Whether the client runs at `load`: one job at a time cannot keep more in flight.
    pub fn runs_at(self, load: Load) -> bool {
        match self {
            Client::PythonSequential => matches!(load, Load::Closed(1) | Load::Open(_)),
            _ => true,
        }
    }

    fn is_python(self) -> bool {
        matches!(
            self,
            Client::PythonAsyncio
                | Client::PythonMultiprocessing
                | Client::PythonThreads
                | Client::PythonSequential
        )
    }
}

/// Whether to check the co-runner against known loads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Validate {
    /// Before the runs.
    First,
    /// Only that, no runs.
    Only,
    Skip,
}

/// Command-line settings.
pub struct Args {
    pub duration_s: u64,
    pub warmup_s: u64,
    pub runs: usize,
    pub service_times_us: Vec<u64>,
    pub concurrency: Vec<usize>,
    pub rates: Vec<u64>,
    /// Levels run at every service time but the first; `None`: all of them.
    pub service_time_levels: Option<Vec<Load>>,
    pub open_loop_threads: usize,
    pub clients: Vec<Client>,
    pub co_runner: bool,
    pub perf: bool,
    pub validate: Validate,
    /// Hold this file's exclusive flock around each run.
    pub lock: Option<PathBuf>,
}

impl Args {
    fn defaults() -> Args {
        Args {
            duration_s: 5,
            warmup_s: 1,
            runs: 3,
            service_times_us: vec![0, 2000],
            concurrency: vec![1, 4, 64, 256],
            rates: vec![1000, 5000, 20000],
            service_time_levels: Some(vec![Load::Closed(1), Load::Closed(64), Load::Open(1000)]),
            open_loop_threads: 64,
            clients: Client::ALL.to_vec(),
            co_runner: true,
            perf: true,
            validate: Validate::First,
            lock: None,
        }
    }

    /// `--quick`: a smoke run of everything, a few minutes.
    fn quick() -> Args {
        Args {
            duration_s: 2,
            runs: 1,
            service_times_us: vec![0],
            concurrency: vec![1, 64],
            rates: vec![1000],
            ..Args::defaults()
        }
    }

    /// Every (service time, load) to run, in order.
    fn levels(&self) -> Vec<(u64, Load)> {
        let all: Vec<Load> = self
            .concurrency
            .iter()
            .map(|&c| Load::Closed(c))
            .chain(self.rates.iter().map(|&r| Load::Open(r)))
            .collect();
        let mut levels = Vec::new();
        for (index, &service_time) in self.service_times_us.iter().enumerate() {
            for &load in &all {
                let wanted = index == 0
                    || self
                        .service_time_levels
                        .as_ref()
                        .is_none_or(|only| only.contains(&load));
                if wanted {
                    levels.push((service_time, load));
                }
            }
        }
        levels
    }
}

fn parse_args(words: &[String]) -> Result<Args, String> {
    let mut args = if words.iter().any(|w| w == "--quick") {
        Args::quick()
    } else {
        Args::defaults()
    };
    let mut words = words.iter();
    while let Some(flag) = words.next() {
        match flag.as_str() {
            "--bench" | "--quick" => continue, // `--bench` is added by `cargo bench`
            "--no-co-runner" => {
                args.co_runner = false;
                continue;
            }
            "--no-perf" => {
                args.perf = false;
                continue;
            }
            "--validate" => {
                args.validate = Validate::Only;
                continue;
            }
            "--no-validate" => {
                args.validate = Validate::Skip;
                continue;
            }
            _ => {}
        }
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number = |word: &str| -> Result<u64, String> {
            word.trim()
                .parse()
                .map_err(|_| format!("{flag}: {word:?} is not a whole number"))
        };
        let list = |text: &str| -> Result<Vec<u64>, String> {
            text.split(',')
                .filter(|w| !w.trim().is_empty() && w.trim() != "none")
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
            "--rates" => args.rates = list(value)?,
            "--open-loop-threads" => args.open_loop_threads = number(value)? as usize,
            "--lock" => args.lock = Some(PathBuf::from(value)),
            "--service-time-levels" => {
                args.service_time_levels = if value == "all" {
                    None
                } else {
                    Some(
                        value
                            .split(',')
                            .filter(|w| !w.is_empty())
                            .map(Load::parse)
                            .collect::<Result<_, _>>()
                            .map_err(|error| format!("--service-time-levels: {error}"))?,
                    )
                }
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
    if args.concurrency.contains(&0) || args.rates.contains(&0) {
        return Err("--concurrency and --rates: every level must be at least 1".into());
    }
    if args.open_loop_threads == 0 {
        return Err("--open-loop-threads must be at least 1".into());
    }
    if args.validate != Validate::Only
        && (args.service_times_us.is_empty()
            || (args.concurrency.is_empty() && args.rates.is_empty())
            || args.clients.is_empty())
    {
        return Err(
            "--service-times, --clients and one of --concurrency and --rates need a value".into(),
        );
    }
    if args.validate == Validate::Only && !args.co_runner {
        return Err("--validate checks the co-runner: not with --no-co-runner".into());
    }
    Ok(args)
}

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    match words.first().map(String::as_str) {
        Some("--tonic-client") => {
            let result = tonic_client::Options::parse(&words[1..]).and_then(tonic_client::run);
            if let Err(error) = result {
                eprintln!("{error}");
                std::process::exit(1);
            }
            return;
        }
        Some("--burn") => {
            if let Err(error) = validate::burn_main(&words[1..]) {
                eprintln!("{error}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
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
    /// The crate's directory: the Python stubs are generated from its `proto/`.
    manifest: PathBuf,
    /// `target/compare`: results, logs, databases.
    out: PathBuf,
    /// One directory per run's client and mock logs, under `out`.
    logs: PathBuf,
    /// The percore binary: `percore bench` and the mock nodes.
    percore: PathBuf,
    /// Where the Python clients' venv lives.
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
        // Built by `cargo bench` itself, with this bench's feature set: a
        // `cargo build --bin percore` from here would rebuild the crate without the
        // dev-dependencies' features, and the next `cargo bench` rebuild it back.
        percore: PathBuf::from(env!("CARGO_BIN_EXE_percore")),
        venv: target.join("compare-venv"),
        out,
    })
}

/// Runs the check and every (service time, load, run, client); true if nothing failed.
fn run(args: &Args) -> Result<bool, String> {
    let started = Instant::now();
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
    let co_runner = if args.co_runner {
        Some(corunner::CoRunner::start(&cpus)?)
    } else {
        None
    };

    let mut validation = None;
    if let Some(co_runner) = &co_runner {
        if args.validate != Validate::Skip {
            eprintln!("compare: checking the co-runner against known loads");
            let checked = validate::run(co_runner, &cpus, &paths.logs, args.lock.as_deref())?;
            validation = Some((
                validate::markdown(&checked, &cpus),
                validate::json(&checked),
            ));
        }
    }
    if args.validate == Validate::Only {
        let (markdown, json) = validation.ok_or("no co-runner check ran")?;
        print!("{markdown}");
        let path = paths.out.join("co-runner-check.json");
        let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
        std::fs::write(&path, text)
            .map_err(|error| format!("writing {}: {error}", path.display()))?;
        eprintln!("compare: wrote {}", path.display());
        return Ok(true);
    }

    let python = if args.clients.iter().any(|c| c.is_python()) {
        Some(python::prepare(&paths.venv, &paths.manifest)?)
    } else {
        None
    };
    let perf_state = args.perf.then(|| perf::check(&paths.out));
    if let Some(Err(why)) = &perf_state {
        eprintln!("compare: not counting syscalls: {why}");
    }
    let use_perf = matches!(perf_state, Some(Ok(())));

    // Groups of cells at one (service time, load), clients in table order.
    let mut groups: Vec<Vec<(Client, Cell)>> = Vec::new();
    for (service_time_us, load) in args.levels() {
        let group: Vec<(Client, Cell)> = args
            .clients
            .iter()
            .filter(|client| client.runs_at(load))
            .map(|&client| {
                let client_cpus = client.cpus(&cpus);
                let cell = Cell {
                    client: client.key(),
                    label: client.label(&client_cpus, load, args.open_loop_threads),
                    client_cpus,
                    service_time_us,
                    load,
                    runs: Vec::new(),
                    co_runs: Vec::new(),
                    perf_runs: Vec::new(),
                    errors: Vec::new(),
                };
                (client, cell)
            })
            .collect();
        if !group.is_empty() {
            groups.push(group);
        }
    }
    // Each run of a cell is made plain, then with the co-runner; the cell's one
    // perf run comes last.
    let mut kinds = vec![RunKind::Plain];
    if co_runner.is_some() {
        kinds.push(RunKind::CoRun);
    }
    let cells_count: usize = groups.iter().map(Vec::len).sum();
    let total = cells_count * (args.runs * kinds.len() + usize::from(use_perf));
    // Measured: about 1.2 s per run besides warm-up and duration, and the
    // co-runner's 1.1 s calibration.
    let seconds = cells_count as f64
        * (args.runs as f64 * (args.warmup_s + args.duration_s) as f64 * kinds.len() as f64
            + args.runs as f64 * (1.2 * kinds.len() as f64 + 1.1 * (kinds.len() - 1) as f64)
            + if use_perf {
                (args.warmup_s + args.duration_s.min(PERF_DURATION_S)) as f64 + 1.2
            } else {
                0.0
            });
    eprintln!("compare: {total} runs, about {:.0} minutes", seconds / 60.0);
    let mut done = 0;
    for group in &mut groups {
        // Runs interleave the clients, so drift over time hits all of them alike.
        let mut schedule: Vec<(usize, RunKind)> = Vec::new();
        for run in 1..=args.runs {
            schedule.extend(kinds.iter().map(|&kind| (run, kind)));
        }
        if use_perf {
            schedule.push((1, RunKind::Perf));
        }
        for (run, kind) in schedule {
            for (client, cell) in group.iter_mut() {
                done += 1;
                let what = format!(
                    "[{done}/{total}] {} service time {} µs, {}, {} run {run}",
                    cell.client,
                    cell.service_time_us,
                    cell.load.label(),
                    kind.name(),
                );
                let run_settings = RunSettings {
                    client: *client,
                    client_cpus: &cell.client_cpus,
                    cpus: &cpus,
                    service_time_us: cell.service_time_us,
                    load: cell.load,
                    duration: match kind {
                        // Counts per job need no long run.
                        RunKind::Perf => Duration::from_secs(args.duration_s.min(PERF_DURATION_S)),
                        _ => Duration::from_secs(args.duration_s),
                    },
                    warmup: Duration::from_secs(args.warmup_s),
                    open_loop_threads: args.open_loop_threads,
                    paths: &paths,
                    python: python.as_ref(),
                    co_runner: match kind {
                        RunKind::CoRun => co_runner.as_ref(),
                        _ => None,
                    },
                    perf: kind == RunKind::Perf,
                    lock: args.lock.as_deref(),
                };
                match run_quietly(&run_settings) {
                    Ok(measured) => {
                        eprintln!(
                            "{what}: {:.0} jobs/s, own {:.1} µs CPU/job, caused {} µs/job, \
                             p50 {:.0} µs, p99 {:.0} µs, busy {:?}{}",
                            measured.jobs_per_s,
                            measured.cpu_us_per_job,
                            measured
                                .caused_us_per_job()
                                .map_or("–".into(), |c| format!("{c:.1}")),
                            measured.p50_us,
                            measured.p99_us,
                            measured
                                .busy()
                                .iter()
                                .map(|b| format!("{:.0}%", b * 100.0))
                                .collect::<Vec<_>>(),
                            measured.perf.as_ref().map_or(String::new(), |p| format!(
                                ", {:.2} syscalls/job",
                                p.syscalls / measured.jobs_per_s
                            )),
                        );
                        match kind {
                            RunKind::Plain => cell.runs.push(measured),
                            RunKind::CoRun => cell.co_runs.push(measured),
                            RunKind::Perf => cell.perf_runs.push(measured),
                        }
                    }
                    Err(error) => {
                        eprintln!("{what}: FAILED: {error}");
                        cell.errors
                            .push(format!("{} run {run}: {error}", kind.name()));
                    }
                }
            }
        }
    }
    drop(co_runner);
    let cells: Vec<Cell> = groups.into_iter().flatten().map(|(_, cell)| cell).collect();

    let (validation_md, validation_json) = match validation {
        Some((markdown, json)) => (Some(markdown), Some(json)),
        None => (None, None),
    };
    let settings = report::Settings {
        duration_s: args.duration_s,
        warmup_s: args.warmup_s,
        runs: args.runs,
        payload_bytes: PAYLOAD_BYTES,
        devices: DEVICES,
        client_cpu: cpus[0],
        mock_cpu,
        open_loop_threads: args.open_loop_threads,
        python: python.as_ref().map(|p| p.versions.clone()),
        co_runner: args.co_runner,
        perf: perf_state,
        command: command_line(),
        validation: validation_md,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let markdown = report::markdown(&settings, &cells);
    let json = report::json(&settings, &cells, validation_json);
    print!("{markdown}");
    let md_path = paths.out.join("results.md");
    let json_path = paths.out.join("results.json");
    std::fs::write(&md_path, &markdown)
        .map_err(|error| format!("writing {}: {error}", md_path.display()))?;
    let json_text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
    std::fs::write(&json_path, json_text)
        .map_err(|error| format!("writing {}: {error}", json_path.display()))?;
    eprintln!(
        "compare: wrote {} and {} ({:.1} min)",
        md_path.display(),
        json_path.display(),
        settings.elapsed_s / 60.0
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

/// The three kinds of run of a cell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RunKind {
    /// Nothing else runs: jobs/s, own CPU, latency, `/proc/stat`.
    Plain,
    /// With the co-runner (a busy host): caused CPU.
    CoRun,
    /// With `perf stat` counting (which slows syscalls): counts only.
    Perf,
}

impl RunKind {
    fn name(self) -> &'static str {
        match self {
            RunKind::Plain => "plain",
            RunKind::CoRun => "co-run",
            RunKind::Perf => "perf",
        }
    }
}

/// One run of one client.
struct RunSettings<'a> {
    client: Client,
    client_cpus: &'a [usize],
    /// The compared CPUs: client CPU, mock CPU.
    cpus: &'a [usize],
    service_time_us: u64,
    load: Load,
    duration: Duration,
    warmup: Duration,
    open_loop_threads: usize,
    paths: &'a Paths,
    python: Option<&'a python::Python>,
    /// The co-runner, in a co-run run.
    co_runner: Option<&'a corunner::CoRunner>,
    /// Count syscalls and IPIs with `perf stat` (a perf run).
    perf: bool,
    /// Hold this file's exclusive flock during the run (`--lock`).
    lock: Option<&'a Path>,
}

impl RunSettings<'_> {
    fn mock_cpu(&self) -> usize {
        self.cpus[self.cpus.len() - 1]
    }
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
        if let Some(co_runner) = run.co_runner {
            co_runner.pause();
        }
        let held = lock::maybe(run.lock)?;
        machine::wait_until_quiet(QUIET_WAIT, run.cpus);
        let measured = run_one(run);
        if let Some(co_runner) = run.co_runner {
            co_runner.pause();
        }
        drop(held);
        let measured = measured?;
        if !measured.disturbed() || attempt == 3 {
            return Ok(measured);
        }
        eprintln!(
            "compare: other processes used {:.2} cores during the run; running it again",
            measured.other_cores()
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
    let (level_flag, level) = match run.load {
        Load::Closed(c) => ("--concurrency", c.to_string()),
        Load::Open(r) => ("--rate", r.to_string()),
    };
    Ok(match run.client {
        Client::Percore { shards } => {
            let summary = logs.join("summary.json");
            // No warm-up flag: it runs the warm-up too, and reports over it all.
            let words: Vec<String> = vec![
                "bench".into(),
                "--shards".into(),
                shards.to_string(),
                level_flag.into(),
                level,
                "--duration".into(),
                format!("{}ms", (run.warmup + run.duration).as_millis()),
                "--source".into(),
                source,
                "--compute".into(),
                compute,
                "--payload-bytes".into(),
                PAYLOAD_BYTES.to_string(),
                "--summary-json".into(),
                summary.display().to_string(),
            ];
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
                concurrency: match run.load {
                    Load::Closed(c) => c,
                    Load::Open(_) => 0,
                },
                rate: match run.load {
                    Load::Closed(_) => None,
                    Load::Open(r) => Some(r),
                },
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
        client => {
            let python = run.python.ok_or("python was not prepared")?;
            let mode = match client {
                Client::PythonAsyncio => "asyncio",
                Client::PythonMultiprocessing => "mp",
                Client::PythonThreads => "threads",
                _ => "seq",
            };
            let mut words: Vec<String> = vec![
                python.client.display().to_string(),
                "--mode".into(),
                mode.into(),
                "--source".into(),
                source,
                "--compute".into(),
                compute,
                level_flag.into(),
                level,
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
            if client == Client::PythonMultiprocessing {
                words.extend([
                    "--procs".into(),
                    run.client_cpus.len().to_string(),
                    "--cpus".into(),
                    cpu_list(run.client_cpus),
                ]);
            }
            if client == Client::PythonThreads {
                words.extend([
                    "--threads".into(),
                    client.threads(run.load, run.open_loop_threads).to_string(),
                ]);
            }
            ClientCommand {
                name: format!("python client ({})", client.key()),
                program: python.interpreter.clone(),
                words,
                summary: None,
            }
        }
    })
}

/// Calibrates the co-runner, starts fresh mock nodes, runs the client against
/// them, measures the window, stops them.
fn run_one(run: &RunSettings) -> Result<Measured, String> {
    let logs = run.paths.logs.join(format!(
        "{}-st{}-{}",
        run.client.key(),
        run.service_time_us,
        run.load.slug()
    ));
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)
        .map_err(|error| format!("cannot create {}: {error}", logs.display()))?;
    let calibrated = match run.co_runner {
        Some(co_runner) => Some(window::calibrate(co_runner)?),
        None => None,
    };
    let mocks = nodes::start(
        &run.paths.percore,
        run.mock_cpu(),
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
    let spawned = Instant::now();
    let mut child = process::spawn(
        &command.name,
        &cpu_list(run.client_cpus),
        &command.program,
        &command.words,
        &log,
    )?;

    // The window: from MARGIN after the client starts measuring to MARGIN before
    // it stops. percore bench says nothing when its warm-up ends: it is timed.
    let measuring_since = if command.summary.is_some() {
        std::thread::sleep(run.warmup);
        spawned + run.warmup
    } else {
        child.wait_for_line("measuring", run.warmup + START_LIMIT)?;
        Instant::now()
    };
    std::thread::sleep(MARGIN);
    let before = window::Edge::take(run.co_runner);
    let window_end = measuring_since + run.duration.saturating_sub(MARGIN);
    let perf_run = if run.perf {
        let pids = before.sample().client_tree(child.pid());
        let length = window_end
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(100));
        Some(perf::start(&pids, length, &logs))
    } else {
        None
    };
    std::thread::sleep(window_end.saturating_duration_since(Instant::now()));
    let after = window::Edge::take(run.co_runner);
    let figures = window::figures(
        &before,
        &after,
        calibrated.as_ref(),
        child.pid(),
        &mocks.pids(),
        run.cpus,
    );
    if let Some(co_runner) = run.co_runner {
        co_runner.pause();
    }
    let perf = match perf_run {
        Some(Ok(perf_run)) => Some(perf_run.finish()),
        Some(Err(error)) => Some(Err(error)),
        None => None,
    };

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
    measured.figures = Some(figures);
    measured.perf = match perf {
        Some(Ok(rates)) => Some(rates),
        Some(Err(error)) => {
            eprintln!("compare: perf: {error}");
            None
        }
        None => None,
    };
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
