//! The `percore` binary: parses flags, wires signals, calls the library, prints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use percore::config::Config;
use percore::demo;
use percore::dispatcher::{self, Load, RunOptions};
use percore::mock::{MockKind, MockNode, MockOptions, ServiceTime};
use percore::summary::RunSummary;
use percore::tuning::{parse_cpu_list, Tuning};

/// Thread-per-core dispatcher of AI inference jobs for IoT fleets.
///
/// Each job fetches a device's data from a data source (gRPC), runs it through the
/// model of the device's class on a KServe v2 compute node (gRPC ModelInfer), and
/// writes the result to the sink.
#[derive(Parser)]
#[command(name = "percore", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on this machine: built-in mock nodes on loopback, a
    /// generated fleet, SQLite.
    Demo(DemoArgs),
    /// Dispatch for the fleet described by a config file, against real nodes.
    Run(RunArgs),
    /// Serve the mock data source (percore.source.v1.DataSource/Fetch) until Ctrl-C.
    MockSource(MockArgs),
    /// Serve a mock KServe v2 compute node (ModelInfer) until Ctrl-C.
    MockCompute(MockArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Devices in the generated fleet, spread evenly over 4 classes.
    #[arg(long, default_value_t = 100_000)]
    devices: usize,
    /// How long to dispatch, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Mock nodes' service time per call, in microseconds.
    #[arg(long, default_value_t = 1_000)]
    service_time_us: u64,
    /// Bytes of raw data per device fetch.
    #[arg(long, default_value_t = 1_024)]
    payload_bytes: usize,
    /// SQLite file for the results (created if missing).
    #[arg(long, default_value = "percore-demo.db")]
    db: PathBuf,
    /// Tuning file (shard CPUs, connections, limits); default: every CPU.
    #[arg(long)]
    tuning: Option<PathBuf>,
    /// Write the run's summary as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// The TOML config (classes, device list, sink, tuning).
    #[arg(long)]
    config: PathBuf,
    /// How long to dispatch, in seconds; without it, until Ctrl-C or SIGTERM.
    #[arg(long)]
    duration: Option<u64>,
    /// Write the run's summary as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
}

#[derive(Args)]
struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// CPUs to serve from, one executor each, e.g. "1" or "2-3" (default: one, unpinned).
    #[arg(long)]
    cpus: Option<String>,
    /// Service time per call, in microseconds (the mean, with --exponential).
    #[arg(long, default_value_t = 0)]
    service_time_us: u64,
    /// Draw service times from an exponential distribution with that mean.
    #[arg(long)]
    exponential: bool,
    /// Source: bytes of raw data per fetch.
    #[arg(long, default_value_t = 1_024)]
    payload_bytes: usize,
    /// Fraction of calls answered with INTERNAL (0..1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fraction of calls left unanswered for --hang-ms (0..1).
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// How long a hung call stays unanswered, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    hang_ms: u64,
    /// Compute: the only model served (others get NOT_FOUND); default: any.
    #[arg(long)]
    model: Option<String>,
    /// HTTP/2 streams allowed per connection.
    #[arg(long, default_value_t = 1024)]
    max_concurrent_streams: u32,
    /// Locked io_uring memory per executor, in KiB.
    #[arg(long, default_value_t = 512)]
    io_memory_kib: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Before any thread starts, so every thread inherits the blocked mask and the
    // signal thread alone receives SIGINT/SIGTERM.
    let stop = stop_on_signal()?;
    match cli.command {
        Command::Demo(args) => demo_command(args, stop),
        Command::Run(args) => run_command(args, stop),
        Command::MockSource(args) => mock_command(MockKind::Source, args, stop),
        Command::MockCompute(args) => mock_command(MockKind::Compute, args, stop),
    }
}

fn demo_command(args: DemoArgs, stop: flume::Receiver<()>) -> Result<()> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let tuning = match &args.tuning {
        Some(path) => Tuning::load(path)?,
        None => Tuning::default(),
    };
    let mock = MockOptions {
        service_time: ServiceTime::Fixed(Duration::from_micros(args.service_time_us)),
        payload_bytes: args.payload_bytes,
        ..MockOptions::default()
    };
    let mocks =
        demo::start_mocks(&tuning, mock.clone(), mock).context("starting the mock nodes")?;
    eprintln!(
        "mock data source on {}, mock compute node on {}; {} devices, {} s",
        mocks.source.addr, mocks.compute.addr, args.devices, args.duration
    );
    let config = demo::demo_config(
        args.devices,
        mocks.source.addr,
        mocks.compute.addr,
        args.db,
        tuning,
    );
    let options = RunOptions {
        duration: Some(Duration::from_secs(args.duration)),
        load: Load::Ticks,
        print_status: true,
        stop: Some(stop),
    };
    let result = dispatcher::run(&config, &options);
    mocks.stop();
    finish(result?, args.summary_json.as_deref())
}

fn run_command(args: RunArgs, stop: flume::Receiver<()>) -> Result<()> {
    let config = Config::load(&args.config)?;
    let options = RunOptions {
        duration: args.duration.map(Duration::from_secs),
        load: Load::Ticks,
        print_status: true,
        stop: Some(stop),
    };
    let summary = dispatcher::run(&config, &options)?;
    finish(summary, args.summary_json.as_deref())
}

fn finish(summary: RunSummary, summary_json: Option<&Path>) -> Result<()> {
    println!("{}", summary.totals_line());
    print!("{}", summary.latency_table());
    println!("results: {}", summary.sink_location);
    if let Some(path) = summary_json {
        let text = serde_json::to_string_pretty(&summary.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn mock_command(kind: MockKind, args: MockArgs, stop: flume::Receiver<()>) -> Result<()> {
    for (flag, rate) in [
        ("--error-rate", args.error_rate),
        ("--hang-rate", args.hang_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            bail!("{flag} must be between 0 and 1, got {rate}");
        }
    }
    let cpus: Vec<Option<usize>> = match &args.cpus {
        Some(list) => parse_cpu_list(list)
            .map_err(|error| anyhow::anyhow!("--cpus {list:?}: {error}"))?
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None],
    };
    let service_time = Duration::from_micros(args.service_time_us);
    let options = MockOptions {
        service_time: if args.exponential {
            ServiceTime::Exponential { mean: service_time }
        } else {
            ServiceTime::Fixed(service_time)
        },
        payload_bytes: args.payload_bytes,
        error_rate: args.error_rate,
        hang_rate: args.hang_rate,
        hang_for: Duration::from_millis(args.hang_ms),
        model: args.model,
        max_concurrent_streams: args.max_concurrent_streams,
        ..MockOptions::default()
    };
    let node = MockNode::start(kind, args.listen, &cpus, args.io_memory_kib * 1024, options)?;
    println!("listening on {}", node.addr);
    let _ = stop.recv();
    node.stop();
    Ok(())
}

/// Blocks SIGINT and SIGTERM in every thread and turns them into a message from a
/// dedicated thread, so a run can stop cleanly and write what it has.
fn stop_on_signal() -> Result<flume::Receiver<()>> {
    let (tx, rx) = flume::bounded(1);
    // SAFETY: plain libc signal-mask calls on a sigset we own.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("cannot block SIGINT/SIGTERM");
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: sigwait reads the set we own and writes the signal number.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                eprintln!("stopping: finishing the jobs in flight (signal again to abort)");
                let _ = tx.send(());
                // A second signal aborts at once.
                unsafe { libc::sigwait(&set, &mut signal) };
                std::process::exit(130);
            }
        })?;
    Ok(rx)
}
