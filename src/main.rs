//! The `percore` binary: parses flags, wires signals, calls the library, prints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use percore::admin::AdminServer;
use percore::bench::search::{Measure, SearchSettings};
use percore::bench::stages;
use percore::bench::{self, Bench, BenchOptions, Level};
use percore::config::Config;
use percore::console;
use percore::demo;
use percore::dispatcher::{self, Load, RunOptions, StageMode};
use percore::mock::{MockKind, MockNode, MockOptions, ServiceTime};
use percore::report;
use percore::summary::RunSummary;
use percore::tuning::check::Severity;
use percore::tuning::host::Host;
use percore::tuning::{self as tuning_file, parse_cpu_list, pin, Tuning};

/// Prints to stdout through [`console::out`]: a closed stdout is not an error.
macro_rules! say {
    ($($arg:tt)*) => { console::out(format_args!($($arg)*)) };
}

/// Prints a line to stderr through [`console::err`].
macro_rules! note {
    ($($arg:tt)*) => { console::err(format_args!($($arg)*)) };
}

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
    /// Load-test the dispatcher: closed loop (--concurrency) or open loop (--rate),
    /// one level or a sweep, against built-in mock nodes or given ones.
    Bench(BenchArgs),
    /// Re-render a saved run's report (DIR), or compare two runs (DIR_A DIR_B).
    Report(ReportArgs),
    /// Serve the mock data source (percore.source.v1.DataSource/Fetch) until Ctrl-C.
    MockSource(MockSourceArgs),
    /// Serve a mock KServe v2 compute node (ModelInfer) until Ctrl-C.
    MockCompute(MockComputeArgs),
    /// Check a host tuning file against this host, or write one from its topology.
    #[command(subcommand)]
    Tune(TuneCommand),
    /// Register a compute node that cannot register itself (an MLServer, a
    /// Triton) in etcd, for the dispatchers of a cluster whose class has
    /// `compute_nodes = "etcd"`, for as long as the node is ready.
    ///
    /// Puts /percore/<cluster>/nodes/<class>/<id> = {"addr", "weight", "model"}
    /// under a lease of --ttl seconds. Every --interval the node's readiness is
    /// checked (--health): while it passes the lease is renewed; when it fails
    /// the lease is revoked (the key goes at once, or at the latest when the
    /// lease expires if etcd is away), and the node is registered again when it
    /// passes again. SIGINT or SIGTERM revokes the lease and exits.
    Announce(AnnounceArgs),
    /// Show what etcd says about a cluster: its dispatchers (instance, host,
    /// shards, devices owned) and each class's registered compute nodes.
    Status(StatusArgs),
}

/// `percore announce`'s flags.
#[derive(Args)]
struct AnnounceArgs {
    /// etcd client URL (http://host:port); repeat, or separate with commas,
    /// for every member of the etcd cluster.
    #[arg(long, required = true, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The percore cluster ([cluster] name of the dispatchers).
    #[arg(long)]
    cluster: String,
    /// The class the node serves (a [[classes]] name with compute_nodes = "etcd").
    #[arg(long)]
    class: String,
    /// Where the node serves KServe v2 gRPC: host:port.
    #[arg(long)]
    addr: String,
    /// The node's id in etcd; default: --addr.
    #[arg(long)]
    id: Option<String>,
    /// The model the node serves: checked with ModelReady (--health kserve),
    /// and registered (the dispatchers ignore a node whose model is not the class's).
    #[arg(long)]
    model: Option<String>,
    /// The node's weight among the class's replicas.
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Readiness check: kserve (ServerReady, then ModelReady for --model), grpc
    /// (grpc.health.v1 Health/Check) or none (a TCP connect).
    #[arg(long, default_value = "kserve", value_parser = ["kserve", "grpc", "none"])]
    health: String,
    /// With --health grpc: the service name asked about (default: the server).
    #[arg(long, default_value = "")]
    health_service: String,
    /// The lease's TTL in seconds: how long the key outlives this process if it
    /// dies without revoking it.
    #[arg(long, default_value_t = 5)]
    ttl: u64,
    /// Time between two readiness checks (and lease renewals): 1s, 500ms, …
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
}

/// `percore status`'s flags.
#[derive(Args)]
struct StatusArgs {
    /// etcd client URL (http://host:port); repeat, or separate with commas.
    #[arg(long, required = true, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Only this cluster; default: every percore cluster in etcd.
    #[arg(long)]
    cluster: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TuneCommand {
    /// Validate a tuning file against this host: one line per finding with its
    /// fix. Exit 0 when clean, 1 when something needs fixing, 2 when the file
    /// cannot be read or is invalid.
    Check(TuneCheckArgs),
    /// Write a tuning file from this host's topology: shards on distinct
    /// physical cores, one core kept for the coordinator, sink and admin threads
    /// when there are at least 4.
    Generate(TuneGenerateArgs),
}

#[derive(Args)]
struct TuneCheckArgs {
    /// The tuning file to check.
    file: PathBuf,
    /// Exit 1 on warnings too (governor, NIC IRQs on shard CPUs, THP, swappiness…),
    /// not only on errors.
    #[arg(long)]
    strict: bool,
}

#[derive(Args)]
struct TuneGenerateArgs {
    /// Write the file here instead of to stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Devices in the generated fleet, spread evenly over 4 classes.
    #[arg(long, default_value_t = 100_000)]
    devices: usize,
    /// How long to dispatch: 10s, 500ms, 2m, … (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Mock nodes' service time per call, in microseconds.
    #[arg(long, default_value_t = 1_000)]
    service_time_us: u64,
    /// Bytes of raw data per device fetch.
    #[arg(long, default_value_t = 1_024)]
    payload_bytes: usize,
    /// SQLite file for the results. An earlier demo's file is removed first (with
    /// its -wal and -shm), so it holds this run's rows only; see --keep-db.
    #[arg(long, default_value = "percore-demo.db")]
    db: PathBuf,
    /// Append to the --db file of an earlier demo instead of starting a fresh one.
    #[arg(long)]
    keep_db: bool,
    /// Tuning file (shard CPUs, connections, limits); default: every CPU.
    #[arg(long)]
    tuning: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

impl OutputArgs {
    /// Where the run streams its per-second latencies: the report's own log.
    fn interval_log(&self) -> Option<PathBuf> {
        self.report.as_ref().map(|dir| dir.join(report::LOG_FILE))
    }
}

/// Where a run's results go besides the terminal.
#[derive(Args)]
struct OutputArgs {
    /// Write the run's summary as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Write the run's report files to this directory: one .hgrm per stage,
    /// histograms.hlog (per-second interval log), summary.json, report.html.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Serve Prometheus /metrics and /healthz on this address during the run
    /// ("none" to turn off).
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin: String,
}

#[derive(Args)]
struct BenchArgs {
    /// Dispatcher shards, on the first CPUs this process may use.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Closed loop: jobs kept in flight in total; a list sweeps levels (1,16,64,256).
    #[arg(long, conflicts_with_all = ["rate", "latency_bound_us", "stages"])]
    concurrency: Option<String>,
    /// Open loop: jobs/s arriving in total; a list sweeps levels (5000,20000,50000).
    /// With --latency-bound-us or --stages, the search's limits: the largest
    /// value is the upper one (default 200000), and with two or more values the
    /// smallest is where the search starts (default 100).
    #[arg(long)]
    rate: Option<String>,
    /// Open-loop arrivals as a Poisson process instead of evenly spaced.
    #[arg(long)]
    poisson: bool,
    /// Find the highest open-loop rate whose p99 end-to-end latency stays
    /// under this bound (µs) with no failed or skipped job: a warm-up level
    /// (at most 1 s at the lowest rate, discarded), then rates doubling from
    /// the lowest until one fails, then bisection to within
    /// --search-precision-pct. A level whose p99 is within ±15 % of the bound
    /// is run 3 times and decided by majority; the answer says how many runs
    /// at the edge agreed. With --stages the default is 10000 (10 ms).
    #[arg(long)]
    latency_bound_us: Option<u64>,
    /// Stress each stage alone, then the whole job, and name the one that
    /// limits the pipeline. Each stage gets the --latency-bound-us search
    /// (default bound 10000 µs), against the given nodes or the mocks:
    /// fetch (Fetch only; passes with every job ok and p99 end-to-end ≤
    /// bound), infer (ModelInfer only, on a payload each shard fetched once
    /// at its start; same criterion), sink (synthetic ok rows, no network,
    /// through the real writer; passes with every row committed, no tick
    /// skipped for sink backlog, and p99 sink lag, ready → committed, ≤
    /// bound), job (the whole job; as fetch). Prints one table; with
    /// --report, writes DIR/stages.html and DIR/stages.json.
    #[arg(long)]
    stages: bool,
    /// Bisect the search until the lowest failing rate is within this many
    /// percent of the highest passing one.
    #[arg(long, default_value_t = 5.0)]
    search_precision_pct: f64,
    /// A testing aid that simulates a slow database: the sink writer sleeps
    /// this long (ms) after each commit, so the sink becomes the bottleneck.
    /// Never a real measurement.
    #[arg(long, default_value_t = 0)]
    sink_commit_delay_ms: u64,
    /// How long each level runs: 10s, 500ms, 2m, … (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Mock nodes' service time per call, in microseconds.
    #[arg(long, default_value_t = 0)]
    service_time_us: u64,
    /// Bytes of raw data per fetch.
    #[arg(long, default_value_t = 1_024)]
    payload_bytes: usize,
    /// Devices in the generated fleet.
    #[arg(long, default_value_t = 100_000)]
    devices: usize,
    /// Use this data source instead of a built-in mock (with --compute).
    #[arg(long, requires = "compute", conflicts_with = "config")]
    source: Option<SocketAddr>,
    /// Use this compute node instead of a built-in mock (with --source).
    #[arg(long, requires = "source", conflicts_with = "config")]
    compute: Option<SocketAddr>,
    /// With --source/--compute: the model to ask the compute node for.
    #[arg(long, default_value = "mock", requires = "source")]
    model: String,
    /// With --source/--compute: the model version; default: the server chooses.
    #[arg(long, default_value = "", requires = "source")]
    model_version: String,
    /// With --source/--compute: the name of the input tensor sent to the model.
    #[arg(long, default_value = "INPUT0", requires = "source")]
    input_name: String,
    /// With --source/--compute: check each answer's output tensor has this
    /// datatype (FP32, INT64, BYTES, …); without it, any output is accepted.
    #[arg(long, requires = "source")]
    output_datatype: Option<String>,
    /// With --output-datatype: the output's shape, -1 for any size (1,-1).
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        requires = "output_datatype"
    )]
    output_shape: Option<Vec<i64>>,
    /// With --output-datatype: the output tensor's name; default: any name.
    #[arg(long, requires = "output_datatype")]
    output_name: Option<String>,
    /// Run as a class of this config file (--class): its nodes, model, version,
    /// input name, output check, deadline and upstream settings.
    #[arg(long, requires = "class")]
    config: Option<PathBuf>,
    /// The class of --config to run as.
    #[arg(long, requires = "config")]
    class: Option<String>,
    /// Write the summary JSON here, one shape for one level and for many:
    /// {"levels": [{"level": "rate 5000/s", "slug": "rate-5000", "summary":
    /// {...}}, ...]}; with --latency-bound-us also "search": {bound_us,
    /// best_rate, passing, failing, confidence: {agreed, runs}, levels}; with
    /// --stages each level also has "stage", and "stages" is stages.json's object.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Write report files here (one subdirectory per level for a sweep; with
    /// --stages, stages.html and stages.json).
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// A directory written by --report.
    dir: PathBuf,
    /// A second run to compare with the first.
    other: Option<PathBuf>,
    /// Where to write the comparison page (two runs only).
    #[arg(long, default_value = "comparison.html")]
    output: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// The TOML config (classes, device list, sink, tuning).
    #[arg(long)]
    config: PathBuf,
    /// Host tuning file to run with instead of the one the config names.
    #[arg(long)]
    tuning: Option<PathBuf>,
    /// How long to dispatch: 10s, 500ms, 2m, … (a bare number is seconds);
    /// without it, until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    output: OutputArgs,
}

/// `mock-source`: the flags both mocks take, and the data source's own.
#[derive(Args)]
struct MockSourceArgs {
    /// Listening, timing, failure and fault flags shared with `mock-compute`.
    #[command(flatten)]
    common: MockArgs,
    /// Bytes of raw data per fetch: UINT8 [1, N] (without --datatype or --input).
    #[arg(long, default_value_t = 1_024)]
    payload_bytes: usize,
    /// Answer one tensor of this KServe v2 datatype (BOOL, UINT8…UINT64,
    /// INT8…INT64, FP16, BF16, FP32, FP64, BYTES) and --shape, its content a
    /// documented function of device, tick and element (see README).
    #[arg(long, requires = "shape", value_parser = percore::mock::parse_datatype)]
    datatype: Option<String>,
    /// The shape of --datatype's tensor: comma-separated dimensions, e.g. 1,256.
    #[arg(long, requires = "datatype", allow_hyphen_values = true)]
    shape: Option<String>,
    /// Answer several named tensors (FetchResponse.inputs), one per flag, in
    /// order: name:DATATYPE:shape, e.g. --input image:FP32:1,3,8,8 --input mask:BOOL:1,8.
    #[arg(long = "input", value_name = "NAME:DATATYPE:SHAPE",
          conflicts_with_all = ["datatype", "shape"], value_parser = percore::mock::parse_input)]
    inputs: Vec<percore::mock::TensorSpec>,
}

/// `mock-compute`: the flags both mocks take, and the compute node's own (the
/// model served and the output faults), which `mock-source` refuses.
#[derive(Args)]
struct MockComputeArgs {
    /// Listening, timing, failure and fault flags shared with `mock-source`.
    #[command(flatten)]
    common: MockArgs,
    /// The only model served (others get NOT_FOUND); default: any.
    #[arg(long)]
    model: Option<String>,
    /// Fault: label every output with this datatype instead of FP32.
    #[arg(long, conflicts_with_all = ["output_shape", "truncated_frame", "overrunning_bytes"])]
    output_datatype: Option<String>,
    /// Fault: label every output with this shape instead of 1,2; huge
    /// dimensions (1,4294967296,4294967296) overflow a reader's size arithmetic.
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        conflicts_with_all = ["truncated_frame", "overrunning_bytes"]
    )]
    output_shape: Option<Vec<i64>>,
    /// What the node computes: byte-sum (the default: FP32 [1,2] OUTPUT0 = sum and
    /// count of the input's bytes), max-l2 (outputs max and l2, FP32 [rows,1], of an
    /// FP32 [rows,cols] input) or echo (every input back under its name).
    #[arg(long, default_value = "byte-sum", value_parser = percore::mock::Computation::parse)]
    compute: percore::mock::Computation,
    /// The input max-l2 reads and ModelMetadata names.
    #[arg(long, default_value = "INPUT0")]
    input_name: String,
    /// Answer outputs as typed contents (fp32_contents, …) instead of raw_output_contents.
    #[arg(long)]
    outputs_as_contents: bool,
}

/// The flags both mock nodes take.
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
    /// Fraction of calls answered with --error-code instead of a result (0..1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// The status --error-rate answers with: a name (UNAVAILABLE, RESOURCE_EXHAUSTED,
    /// INTERNAL, DEADLINE_EXCEEDED, …, any case) or a number.
    #[arg(long, default_value = "INTERNAL", value_parser = percore::mock::parse_code)]
    error_code: percore::grpc::status::Code,
    /// Fraction of calls left unanswered for --hang-ms (0..1).
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// How long a hung call stays unanswered, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    hang_ms: u64,
    /// Fraction of calls whose stream is reset with RST_STREAM(INTERNAL_ERROR) instead
    /// of answered (0..1). --hang-rate, --reset-rate and --error-rate are slices of one
    /// draw: their sum is at most 1.
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// HTTP/2 streams allowed per connection.
    #[arg(long, default_value_t = 1024)]
    max_concurrent_streams: u32,
    /// Locked io_uring memory per executor, in KiB.
    #[arg(long, default_value_t = 512)]
    io_memory_kib: usize,
    /// Fault: drop each connection's socket without a word after this many calls.
    #[arg(long)]
    drop_after_calls: Option<u64>,
    /// Fault: send GOAWAY on each connection after this many calls.
    #[arg(long)]
    goaway_after_calls: Option<u64>,
    /// Fault: answer this many calls on each connection, then write bytes that are
    /// not HTTP/2 (an HTTP/1.1 400) onto its socket and close it.
    #[arg(long)]
    garbage_after_calls: Option<u64>,
    /// Fault: answer every connection's HTTP/2 preface as a plain HTTP/1.1 server
    /// does (400 Bad Request) and close it, like a gRPC client pointed at a web port.
    #[arg(long)]
    http1: bool,
    /// Fault: pad every answer (still a valid message) to this many bytes, to exceed
    /// the client's maximum message size.
    #[arg(long)]
    oversized_reply_bytes: Option<usize>,
    /// Fault: announce a longer message than is sent in every answer, then end it.
    #[arg(long, conflicts_with = "overrunning_bytes")]
    truncated_frame: bool,
    /// Fault: answer a BYTES [1,2] tensor whose second length prefix claims
    /// 1,000 bytes where 2 follow (a data source's fetch, a compute node's
    /// every output).
    #[arg(long)]
    overrunning_bytes: bool,
    /// Report not ready (ServerReady, ModelReady, grpc.health.v1 Health/Check) while
    /// this file exists; it is looked up on every probe, so `touch` and `rm` take a
    /// node out of service and back.
    #[arg(long)]
    not_ready_file: Option<PathBuf>,
    /// Serve over TLS with this certificate chain (PEM); needs --tls-key. ALPN h2.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by one of these CAs (PEM): mTLS.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

/// Parses a duration flag: `5s`, `500ms`, `2m`, `1h 30m` (humantime's units), or
/// a bare number of seconds (`10`, `0.5`), as the flags took before units. Zero
/// is refused: a run of no time dispatches nothing and prints only zeros.
fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let trimmed = text.trim();
    let duration = match trimmed.parse::<f64>() {
        Ok(seconds) => Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("{text:?} is not a number of seconds of 0 or more"))?,
        Err(_) => humantime::parse_duration(trimmed).map_err(|error| {
            format!("{text:?} is not a duration like 10s, 500ms or 2m ({error})")
        })?,
    };
    if duration.is_zero() {
        return Err(format!(
            "{text:?} is zero: give a duration longer than 0, like 10s"
        ));
    }
    Ok(duration)
}

/// Exit status of a run that stopped because its sink failed for good (the
/// summary is still written, counting the rows that were committed).
const EXIT_SINK_FAILED: i32 = 3;

/// Exit status of a run in which every job failed: at least one job ran and
/// none was ok (skipped ticks aside). The run is complete and its rows are
/// written, but it did nothing useful; the top reasons are printed.
const EXIT_ALL_FAILED: i32 = 4;

/// Failure rows repeated in the error message of a run where every job failed.
const REASONS_IN_ALL_FAILED_ERROR: usize = 3;

fn main() {
    let cli = Cli::parse();
    // SIGPIPE stays ignored, as Rust's runtime leaves it: a peer that closes its
    // socket makes a send fail with EPIPE, which the connection reports (and the
    // job records), instead of killing the process with everything in flight. A
    // closed stdout is handled the same way, by `say` below.
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            // The cause chain on one line; no backtrace, whatever RUST_BACKTRACE says.
            note!("error: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Runs the command; `Ok` carries the exit status (0, [`EXIT_SINK_FAILED`] or
/// [`EXIT_ALL_FAILED`]).
fn run(cli: Cli) -> Result<i32> {
    // Before any thread starts, so no window exists where a signal kills the
    // process with its results unwritten.
    let Signals { stop, reload } = listen_for_signals()?;
    // Only `percore run` has a config file to read again; elsewhere the
    // receiver is dropped, and a SIGHUP says it is ignored.
    let reload = matches!(cli.command, Command::Run(_)).then_some(reload);
    let done = |result: Result<()>| result.map(|()| 0);
    match cli.command {
        Command::Demo(args) => demo_command(args, stop),
        Command::Run(args) => run_command(args, stop, reload),
        Command::Bench(args) => done(bench_command(args)),
        Command::Report(args) => done(report_command(args)),
        Command::MockSource(args) => {
            let source_tensors = match (args.datatype, args.shape, args.inputs) {
                (Some(datatype), Some(shape), _) => {
                    let spec = percore::mock::parse_shape(&shape)
                        .and_then(|dims| percore::mock::TensorSpec::new("", &datatype, dims));
                    match spec {
                        Ok(spec) => percore::mock::SourceTensors::Tensor(spec),
                        Err(error) => bail!("--datatype {datatype} --shape {shape}: {error}"),
                    }
                }
                (_, _, inputs) if !inputs.is_empty() => {
                    percore::mock::SourceTensors::Inputs(inputs)
                }
                _ => percore::mock::SourceTensors::Payload,
            };
            let options = MockOptions {
                payload_bytes: args.payload_bytes,
                source_tensors,
                ..MockOptions::default()
            };
            done(mock_command(MockKind::Source, args.common, options, stop))
        }
        Command::MockCompute(args) => {
            let fault = match (args.output_datatype, args.output_shape) {
                (Some(datatype), _) => Some(percore::mock::Fault::OutputDatatype(datatype)),
                (None, Some(shape)) => Some(percore::mock::Fault::OutputShape(shape)),
                (None, None) => None,
            };
            let options = MockOptions {
                model: args.model,
                fault,
                computation: args.compute,
                input_name: args.input_name,
                outputs_as_contents: args.outputs_as_contents,
                ..MockOptions::default()
            };
            done(mock_command(MockKind::Compute, args.common, options, stop))
        }
        Command::Announce(args) => done(announce_command(args, stop)),
        Command::Status(args) => done(status_command(&args)),
        Command::Tune(TuneCommand::Check(args)) => Ok(tune_check(&args)),
        Command::Tune(TuneCommand::Generate(args)) => done(tune_generate(&args)),
    }
}

/// `percore announce`: registers the node until a signal.
fn announce_command(args: AnnounceArgs, stop: flume::Receiver<()>) -> Result<()> {
    use percore::cluster::readiness::Check;
    let check = match args.health.as_str() {
        "grpc" => Check::Grpc {
            service: args.health_service.clone(),
        },
        "none" => Check::Connect,
        _ => Check::Kserve {
            model: args.model.clone(),
        },
    };
    let spec = percore::cluster::announce::AnnounceSpec {
        endpoints: args.etcd,
        cluster: args.cluster,
        class: args.class,
        id: args.id.unwrap_or_else(|| args.addr.clone()),
        addr: args.addr,
        model: args.model,
        weight: args.weight,
        check,
        ttl: Duration::from_secs(args.ttl),
        interval: args.interval,
    };
    percore::cluster::announce::run(spec, stop)?;
    Ok(())
}

/// `percore status`: the cluster's dispatchers and compute nodes, from etcd.
fn status_command(args: &StatusArgs) -> Result<()> {
    let report = percore::cluster::status::read(&args.etcd, args.cluster.as_deref())?;
    if args.json {
        say!("{}\n", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        say!("{}", report.table());
    }
    Ok(())
}

/// Exit status of `tune check` when the file cannot be read or is invalid.
const EXIT_TUNE_INVALID: i32 = 2;

/// `percore tune check FILE`: prints every finding, returns the exit status.
fn tune_check(args: &TuneCheckArgs) -> i32 {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(error) => {
            note!("error: {}: cannot read: {error}", args.file.display());
            return EXIT_TUNE_INVALID;
        }
    };
    let parsed = match tuning_file::file::parse(&text, &args.file) {
        Ok(parsed) => parsed,
        Err(error) => {
            note!("error: {error}");
            return EXIT_TUNE_INVALID;
        }
    };
    let host = Host::live();
    let findings = tuning_file::check::check(&parsed, &host);
    for finding in &findings {
        say!("{finding}\n");
    }
    let errors = findings
        .iter()
        .filter(|finding| finding.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    note!(
        "{}: {errors} error{}, {warnings} warning{} on this host ({})",
        args.file.display(),
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
        host.describe()
    );
    if errors > 0 || (args.strict && warnings > 0) {
        1
    } else {
        0
    }
}

/// `percore tune generate`: a tuning file for this host, to stdout or `--output`.
fn tune_generate(args: &TuneGenerateArgs) -> Result<()> {
    let text = tuning_file::generate::generate(&Host::live()).map_err(anyhow::Error::msg)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            note!(
                "wrote {}; check it with `percore tune check {}`",
                path.display(),
                path.display()
            );
        }
        None => say!("{text}"),
    }
    Ok(())
}

/// Refuses a run whose tuning cannot work on this host, with each problem's fix,
/// before glommio would fail with its own error.
fn check_placement(tuning: &Tuning) -> Result<()> {
    tuning_file::check::startup(tuning).map_err(anyhow::Error::msg)
}

/// Starts the admin server with its thread on the tuning's `admin_cpus`, then
/// pins this thread, the coordinator, to `coordinator_cpus` (the sink writer it
/// starts inherits that unless `sink_cpus` is set). The default shard placement
/// is fixed first: it reads this thread's mask, which pinning narrows.
fn start_admin_and_pin(addr: &str, tuning: &mut Tuning) -> Result<Option<AdminServer>> {
    tuning.shard_cpus = tuning.resolved_shard_cpus();
    let admin = pin::with_mask(&tuning.admin_cpus, || start_admin(addr))
        .context("pinning the admin thread to admin_cpus")?;
    if !tuning.coordinator_cpus.is_empty() {
        pin::pin_current_thread(&tuning.coordinator_cpus)
            .context("pinning the coordinator to coordinator_cpus")?;
    }
    Ok(admin)
}

fn demo_command(args: DemoArgs, stop: flume::Receiver<()>) -> Result<i32> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let tuning = match &args.tuning {
        Some(path) => Tuning::load(path)?,
        None => Tuning::default(),
    };
    check_placement(&tuning)?;
    let db = demo::prepare_db(&args.db, args.keep_db)?;
    if let Some(line) = db.describe(&args.db) {
        note!("{line}");
    }
    let mock = MockOptions {
        service_time: ServiceTime::Fixed(Duration::from_micros(args.service_time_us)),
        payload_bytes: args.payload_bytes,
        ..MockOptions::default()
    };
    let mocks =
        demo::start_mocks(&tuning, mock.clone(), mock).context("starting the mock nodes")?;
    note!(
        "mock data source on {}, mock compute node on {}; {} devices, {}",
        mocks.source.addr,
        mocks.compute.addr,
        args.devices,
        humantime::format_duration(args.duration)
    );
    let mut config = demo::demo_config(
        args.devices,
        mocks.source.addr,
        mocks.compute.addr,
        args.db,
        tuning,
    );
    let admin = start_admin_and_pin(&args.output.admin, &mut config.tuning)?;
    let options = RunOptions {
        duration: Some(args.duration),
        load: Load::Ticks,
        print_status: true,
        stop: Some(stop),
        metrics: admin.as_ref().map(AdminServer::publisher),
        interval_log: args.output.interval_log(),
        mocks: Some(mocks.description.clone()),
        stage: StageMode::Whole,
        // The demo's config is built in, with no file to read again.
        reload: None,
        ..RunOptions::default()
    };
    let result = dispatcher::run(&config, &options);
    mocks.stop();
    let finished = result
        .map_err(anyhow::Error::from)
        .and_then(|summary| finish(&summary, &args.output));
    if let Some(admin) = admin {
        admin.stop();
    }
    finished
}

fn run_command(
    args: RunArgs,
    stop: flume::Receiver<()>,
    reload: Option<flume::Receiver<()>>,
) -> Result<i32> {
    let mut config = Config::load(&args.config)?;
    if let Some(path) = &args.tuning {
        config.tuning = Tuning::load(path)?;
    }
    check_placement(&config.tuning)?;
    let admin = start_admin_and_pin(&args.output.admin, &mut config.tuning)?;
    // After pinning: the cluster thread shares the coordinator's CPUs.
    // Registered before the run starts: the first membership includes this instance.
    let cluster = percore::cluster::join(&config)?;
    let options = RunOptions {
        duration: args.duration,
        load: Load::Ticks,
        print_status: true,
        stop: Some(stop),
        metrics: admin.as_ref().map(AdminServer::publisher),
        interval_log: args.output.interval_log(),
        mocks: None,
        stage: StageMode::Whole,
        reload,
        cluster: cluster.as_ref().map(|handle| handle.events.clone()),
        cluster_devices: cluster.as_ref().map(|handle| handle.device_report()),
    };
    let finished = dispatcher::run(&config, &options)
        .map_err(anyhow::Error::from)
        .and_then(|summary| finish(&summary, &args.output));
    // The lease is revoked here, once every result is written: the other
    // instances take this one's devices over now rather than at its expiry.
    drop(options);
    drop(cluster);
    if let Some(admin) = admin {
        admin.stop();
    }
    finished
}

/// Starts the admin server unless turned off; a busy port is a warning, not a
/// reason to refuse the run.
fn start_admin(addr: &str) -> Option<AdminServer> {
    if addr == "none" {
        return None;
    }
    let Ok(parsed) = addr.parse::<SocketAddr>() else {
        note!(
            "warning: --admin {addr:?} is not an address like 127.0.0.1:9464; no metrics endpoint"
        );
        return None;
    };
    match AdminServer::start(parsed) {
        Ok(server) => {
            note!("metrics on http://{}/metrics", server.addr());
            Some(server)
        }
        Err(error) => {
            note!("warning: cannot serve metrics on {parsed}: {error}; continuing without");
            None
        }
    }
}

/// Writes the run's files, then prints its totals; returns the exit status.
fn finish(summary: &RunSummary, output: &OutputArgs) -> Result<i32> {
    // Files first: they must not depend on the terminal still being there.
    let written = write_outputs(
        summary,
        output.summary_json.as_deref(),
        output.report.as_deref(),
    );
    say!("{}\n", summary.totals_line());
    say!("{}", summary.latency_table());
    say!("{}", summary.replica_table());
    say!("{}", summary.failure_table());
    say!("results: {}\n", summary.sink_location);
    say!("run id: {}\n", summary.run_id);
    if let Some(line) = summary.journal_line() {
        say!("{line}\n");
    }
    written?;
    match &summary.sink_error {
        None if summary.every_job_failed() => {
            let mut why = String::new();
            for row in summary
                .failures
                .iter()
                .filter(|row| row.outcome == "failed")
                .take(REASONS_IN_ALL_FAILED_ERROR)
            {
                let text = row.top_reason().map_or("", |t| t.text.as_str());
                why.push_str(&format!(
                    "\n  {} {} × {}: {text}",
                    row.stage, row.reason, row.count
                ));
            }
            note!(
                "error: every job of the run failed ({} failed, none ok); top reasons:{why}",
                summary.counters.failed
            );
            Ok(EXIT_ALL_FAILED)
        }
        None => Ok(0),
        Some(error) => {
            note!(
                "error: the run stopped because the sink failed: {error}\n\
                 {} rows were committed; {} results computed after the failure were not written",
                summary.rows_written,
                summary.counters.jobs().saturating_sub(summary.rows_written),
            );
            Ok(EXIT_SINK_FAILED)
        }
    }
}

fn write_outputs(
    summary: &RunSummary,
    summary_json: Option<&Path>,
    report_dir: Option<&Path>,
) -> Result<()> {
    if let Some(path) = summary_json {
        let text = serde_json::to_string_pretty(&summary.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = report_dir {
        report::write_dir(dir, &summary.recording()?)?;
        say!("report: {}\n", dir.join("report.html").display());
    }
    Ok(())
}

fn bench_command(args: BenchArgs) -> Result<()> {
    let levels = match (&args.concurrency, &args.rate, args.latency_bound_us) {
        (Some(list), _, _) => {
            bench::parse_levels("--concurrency", list, |v| Level::Concurrency(v as usize))
                .map_err(anyhow::Error::msg)?
        }
        (None, Some(list), _) => {
            bench::parse_levels("--rate", list, Level::Rate).map_err(anyhow::Error::msg)?
        }
        (None, None, Some(_)) => vec![Level::Rate(200_000.0)],
        (None, None, None) if args.stages => vec![Level::Rate(200_000.0)],
        (None, None, None) => vec![Level::Concurrency(64)],
    };
    // The search's limits are checked before any node or mock starts.
    let bound_us = match args.stages {
        true => Some(args.latency_bound_us.unwrap_or(stages::DEFAULT_BOUND_US)),
        false => args.latency_bound_us,
    };
    let settings = match bound_us {
        Some(bound_us) => Some(search_settings(&args, &levels, bound_us)?),
        None => None,
    };
    let scratch_dir = std::env::temp_dir().join(format!("percore-bench-{}", std::process::id()));
    let bench = Bench::start(BenchOptions {
        shards: args.shards,
        poisson: args.poisson,
        duration: args.duration,
        service_time: Duration::from_micros(args.service_time_us),
        payload_bytes: args.payload_bytes,
        devices: args.devices,
        external: external_class(&args)?,
        scratch_dir: scratch_dir.clone(),
        postgres: None,
        sink_commit_delay: Duration::from_millis(args.sink_commit_delay_ms),
    })?;
    let result = run_bench(&bench, &args, &levels, settings);
    bench.stop();
    let _ = std::fs::remove_dir_all(scratch_dir);
    result
}

/// The class `bench` runs as against given nodes: one of `--config`, or one made
/// of `--source`, `--compute` and the model flags; `None` for the built-in mocks.
fn external_class(args: &BenchArgs) -> Result<Option<percore::config::Class>> {
    if let (Some(path), Some(name)) = (&args.config, &args.class) {
        let config = Config::load(path)?;
        let known: Vec<&str> = config.classes.iter().map(|c| c.name.as_str()).collect();
        let Some(class) = config.classes.iter().find(|c| &c.name == name) else {
            bail!(
                "--class {name:?}: {} has no such class (its classes: {})",
                path.display(),
                known.join(", ")
            );
        };
        return Ok(Some(class.clone()));
    }
    let (Some(source), Some(compute)) = (args.source, args.compute) else {
        return Ok(None);
    };
    let output = match &args.output_datatype {
        None => None,
        Some(datatype) => {
            if datatype != "BYTES" && percore::tensor::element_size(datatype).is_none() {
                bail!(
                    "--output-datatype {datatype:?} is not a KServe v2 datatype                      (BOOL, UINT8…UINT64, INT8…INT64, FP16, BF16, FP32, FP64, BYTES)"
                );
            }
            let shape = args.output_shape.clone().unwrap_or_else(|| vec![-1]);
            if let Some(dim) = shape.iter().find(|&&dim| dim < -1) {
                bail!("--output-shape: {dim} must be -1 (any size) or at least 0");
            }
            Some(percore::config::OutputSpec {
                name: args.output_name.clone(),
                datatype: datatype.clone(),
                shape,
            })
        }
    };
    if args.model.is_empty() {
        bail!("--model must not be empty");
    }
    Ok(Some(percore::config::Class {
        model_version: args.model_version.clone(),
        input_name: args.input_name.clone(),
        requested_outputs: Vec::new(),
        parameters: Default::default(),
        request_id: false,
        store_all_outputs: true,
        contract: percore::config::ContractConfig::default(),
        metadata: percore::config::Metadata::default(),
        output,
        ..demo::mock_class("bench", &args.model, 10_000, 2_000, source, compute)
    }))
}

/// The search's limits from --rate (see its help) and the bound.
fn search_settings(args: &BenchArgs, levels: &[Level], bound_us: u64) -> Result<SearchSettings> {
    let rates: Vec<f64> = levels
        .iter()
        .filter_map(|level| match level {
            Level::Rate(rate) => Some(*rate),
            _ => None,
        })
        .collect();
    let high = rates.iter().copied().fold(0.0, f64::max);
    let low = match rates.len() {
        0 | 1 => 100.0_f64.min(high),
        _ => rates.iter().copied().fold(f64::INFINITY, f64::min),
    };
    let precision = args.search_precision_pct;
    if !(precision > 0.0 && precision.is_finite()) {
        bail!("--search-precision-pct: {precision} must be greater than 0");
    }
    if bound_us == 0 {
        bail!("--latency-bound-us must be greater than 0");
    }
    Ok(SearchSettings {
        bound_us,
        low,
        high,
        precision: precision / 100.0,
        warm_up: true,
    })
}

/// One line on stderr for a measured level of a search.
fn search_level_line(
    label: &str,
    level: Level,
    run: &bench::LevelRun,
    measure: Measure,
    bound_us: u64,
) {
    let summary = &run.summary;
    let p99 = measure
        .p99_us
        .map_or("–".to_string(), |p99| p99.to_string());
    let top_reason = match run.failures.first() {
        Some(failure) => format!(" (most: {} {})", failure.outcome, failure.reason),
        None => String::new(),
    };
    note!(
        "{label}{level}: ok {:.0}/s, p99 {p99} µs, failed {}, skipped {}{top_reason} -> {}",
        bench::ok_per_s(summary),
        summary.counters.failed,
        summary.counters.skipped,
        if measure.passes(bound_us) {
            "within bound"
        } else if measure.is_close(bound_us) {
            "over (close: run again)"
        } else {
            "over"
        }
    );
}

/// One measured level and the stage it ran (the whole job outside --stages).
struct BenchRow {
    /// The stage the level ran alone, to label its row and its JSON entry.
    stage: StageMode,
    /// The level's load (an open-loop rate under a search).
    level: Level,
    /// Its summary and failure reasons.
    run: bench::LevelRun,
}

/// Runs the levels, the search (`settings`, with --latency-bound-us) or every
/// stage's search (--stages), prints the tables and writes the outputs.
fn run_bench(
    bench: &Bench,
    args: &BenchArgs,
    levels: &[Level],
    settings: Option<SearchSettings>,
) -> Result<()> {
    let mut rows: Vec<BenchRow> = Vec::new();
    let mut extra = serde_json::Map::new();
    let mut stages_report = None;
    if let (true, Some(settings)) = (args.stages, settings) {
        let bound_us = settings.bound_us;
        let report = stages::run(bench, settings, |stage, level, run| {
            let measure = bench::stage_measure(&run.summary, stage);
            search_level_line(
                &format!("{}: ", stage.name()),
                level,
                run,
                measure,
                bound_us,
            );
            rows.push(BenchRow {
                stage,
                level,
                run: run.clone(),
            });
        })?;
        say!("{}", bench_tables(&rows));
        say!("{}", report.table());
        extra.insert("stages".into(), report.to_json());
        stages_report = Some(report);
    } else if let Some(settings) = settings {
        let bound_us = settings.bound_us;
        let outcome = bench.max_rate_under(settings, StageMode::Whole, |level, run| {
            let measure = bench::stage_measure(&run.summary, StageMode::Whole);
            search_level_line("", level, run, measure, bound_us);
            rows.push(BenchRow {
                stage: StageMode::Whole,
                level,
                run: run.clone(),
            });
        })?;
        say!("{}", bench_tables(&rows));
        say!("{}\n", outcome.line("p99 end-to-end"));
        extra.insert("search".into(), outcome.to_json());
    } else {
        for &level in levels {
            let run = bench.run_level(level)?;
            note!("{}", bench::level_line(level, &run.summary));
            rows.push(BenchRow {
                stage: StageMode::Whole,
                level,
                run,
            });
        }
        say!("{}", bench_tables(&rows));
    }
    // Each level's name for files: its slug, the stage first under --stages,
    // and a count when a close level ran more than once.
    let mut seen = std::collections::BTreeMap::new();
    let slugs: Vec<String> = rows
        .iter()
        .map(|row| {
            let base = match args.stages {
                true => format!("{}-{}", row.stage.name(), row.level.slug()),
                false => row.level.slug(),
            };
            let count = seen.entry(base.clone()).or_insert(0);
            *count += 1;
            match *count {
                1 => base,
                n => format!("{base}-run{n}"),
            }
        })
        .collect();
    if let Some(path) = &args.summary_json {
        let levels: Vec<serde_json::Value> = rows
            .iter()
            .zip(&slugs)
            .map(|(row, slug)| {
                let mut entry = serde_json::json!({
                    "level": row.level.to_string(),
                    "slug": slug,
                    "summary": row.run.summary.to_json(),
                });
                if args.stages {
                    entry["stage"] = serde_json::json!(row.stage.name());
                }
                entry
            })
            .collect();
        let mut all = serde_json::Map::new();
        all.insert("levels".into(), serde_json::Value::Array(levels));
        all.extend(extra);
        std::fs::write(path, serde_json::to_string_pretty(&all)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.report {
        if let Some(report) = &stages_report {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let json = dir.join("stages.json");
            std::fs::write(
                &json,
                serde_json::to_string_pretty(&report.to_json())? + "\n",
            )
            .with_context(|| format!("writing {}", json.display()))?;
            let page = dir.join("stages.html");
            std::fs::write(&page, percore::report::stages::render_stages_html(report))
                .with_context(|| format!("writing {}", page.display()))?;
            say!("report: {}\n", page.display());
        } else if let [row] = rows.as_slice() {
            report::write_dir(dir, &row.run.summary.recording()?)?;
            say!("report: {}\n", dir.join("report.html").display());
        } else {
            for (row, slug) in rows.iter().zip(&slugs) {
                report::write_dir(&dir.join(slug), &row.run.summary.recording()?)?;
            }
            say!(
                "reports: {}/{{{}}}/report.html\n",
                dir.display(),
                slugs.join(",")
            );
        }
    }
    Ok(())
}

/// The level table, then why jobs failed in the levels where some did.
fn bench_tables(rows: &[BenchRow]) -> String {
    let label = |row: &BenchRow| match row.stage {
        StageMode::Whole => row.level.to_string(),
        stage => format!("{} {}", stage.name(), row.level),
    };
    let summaries: Vec<(String, RunSummary)> = rows
        .iter()
        .map(|row| (label(row), row.run.summary.clone()))
        .collect();
    let runs: Vec<(String, bench::LevelRun)> = rows
        .iter()
        .map(|row| (label(row), row.run.clone()))
        .collect();
    bench::table(&summaries) + &bench::failure_table(&runs)
}

fn report_command(args: ReportArgs) -> Result<()> {
    let first = report::load_dir(&args.dir)?;
    match &args.other {
        None => {
            say!("{}", report::text_table(&first));
            if let Some(totals) = report::totals_line(&first.summary) {
                say!("{totals}\n");
            }
            say!(
                "{}",
                report::replica_table(&report::replica_rows(&first.summary))
            );
            say!(
                "{}",
                report::failure_table(&report::failure_rows(&first.summary))
            );
            let page = args.dir.join("report.html");
            std::fs::write(&page, report::render_html(&first))
                .with_context(|| format!("writing {}", page.display()))?;
            say!("report: {}\n", page.display());
        }
        Some(other) => {
            let second = report::load_dir(other)?;
            let (a, b) = (args.dir.display().to_string(), other.display().to_string());
            say!("{}", report::comparison_table(&first, &a, &second, &b));
            std::fs::write(
                &args.output,
                report::render_comparison_html(&first, &a, &second, &b),
            )
            .with_context(|| format!("writing {}", args.output.display()))?;
            say!("comparison: {}\n", args.output.display());
        }
    }
    Ok(())
}

/// Serves one mock node until a signal; `own` carries the kind's own options
/// (payload, or model and output fault), the shared ones come from `args`.
fn mock_command(
    kind: MockKind,
    args: MockArgs,
    own: MockOptions,
    stop: flume::Receiver<()>,
) -> Result<()> {
    for (flag, rate) in [
        ("--error-rate", args.error_rate),
        ("--hang-rate", args.hang_rate),
        ("--reset-rate", args.reset_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            bail!("{flag} must be between 0 and 1, got {rate}");
        }
    }
    let failing = args.error_rate + args.hang_rate + args.reset_rate;
    if failing > 1.0 {
        bail!(
            "--error-rate, --hang-rate and --reset-rate are slices of one draw: \
             their sum must be at most 1, got {failing}"
        );
    }
    if args.error_code == percore::grpc::status::Code::OK {
        bail!("--error-code OK is not an error: name a failing status such as UNAVAILABLE");
    }
    let fault = if args.truncated_frame {
        Some(percore::mock::Fault::TruncatedFrame)
    } else if args.overrunning_bytes {
        Some(percore::mock::Fault::OverrunningBytes)
    } else {
        own.fault
    };
    let cpus: Vec<Option<usize>> = match &args.cpus {
        Some(list) => parse_cpu_list(list)
            .map_err(|error| anyhow::anyhow!("--cpus {list:?}: {error}"))?
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None],
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            percore::endpoint::tls::server_config(cert, key, args.client_ca.as_deref())
                .map_err(anyhow::Error::msg)
                .context("--tls-cert/--tls-key/--client-ca")?,
        ),
        _ => None,
    };
    let scheme = match (&tls, &args.client_ca) {
        (None, _) => "",
        (Some(_), None) => " (TLS)",
        (Some(_), Some(_)) => " (TLS, client certificate required)",
    };
    let service_time = Duration::from_micros(args.service_time_us);
    let options = MockOptions {
        service_time: if args.exponential {
            ServiceTime::Exponential { mean: service_time }
        } else {
            ServiceTime::Fixed(service_time)
        },
        payload_bytes: own.payload_bytes,
        source_tensors: own.source_tensors,
        computation: own.computation,
        input_name: own.input_name,
        outputs_as_contents: own.outputs_as_contents,
        error_rate: args.error_rate,
        error_code: args.error_code,
        hang_rate: args.hang_rate,
        hang_for: Duration::from_millis(args.hang_ms),
        reset_rate: args.reset_rate,
        model: own.model,
        fault,
        oversized_reply_bytes: args.oversized_reply_bytes,
        max_concurrent_streams: args.max_concurrent_streams,
        drop_after_calls: args.drop_after_calls,
        goaway_after_calls: args.goaway_after_calls,
        garbage_after_calls: args.garbage_after_calls,
        http1_only: args.http1,
        not_ready_file: args.not_ready_file,
        tls,
        ..MockOptions::default()
    };
    let node = MockNode::start(kind, args.listen, &cpus, args.io_memory_kib * 1024, options)?;
    say!("listening on {}{scheme}\n", node.addr);
    let _ = stop.recv();
    node.stop();
    Ok(())
}

/// What the signals thread says: stop (SIGINT, SIGTERM), reload (SIGHUP).
struct Signals {
    /// One message at the first SIGINT or SIGTERM; a second exits at once (130).
    stop: flume::Receiver<()>,
    /// One message per SIGHUP (a burst waiting is one reload).
    reload: flume::Receiver<()>,
}

/// Turns SIGINT and SIGTERM into a stop message and SIGHUP into a reload
/// request, from a dedicated thread, so a run can stop cleanly and write what
/// it has, or take its edited config file without stopping.
///
/// signal-hook installs the handlers and hands the signals to that thread over
/// its self-pipe: no signal masks or `sigwait` of ours, and SIGPIPE keeps the
/// ignored disposition Rust's runtime gives it, so a peer that closes its socket
/// fails a send instead of killing the process.
fn listen_for_signals() -> Result<Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (stop_tx, stop) = flume::bounded(1);
    let (reload_tx, reload) = flume::bounded(1);
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing the SIGINT/SIGTERM/SIGHUP handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                if signal == SIGHUP {
                    match reload_tx.try_send(()) {
                        Ok(()) => note!("SIGHUP: reloading the config"),
                        // One is already waiting: it reads the file as it is now.
                        Err(flume::TrySendError::Full(())) => {}
                        Err(flume::TrySendError::Disconnected(())) => {
                            note!("SIGHUP ignored: this command has no config file to reload")
                        }
                    }
                } else if !stopping {
                    stopping = true;
                    note!("stopping: finishing the jobs in flight (signal again to abort)");
                    let _ = stop_tx.send(());
                } else {
                    std::process::exit(130);
                }
            }
        })?;
    Ok(Signals { stop, reload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        let cases = [
            ("5s", Duration::from_secs(5)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1m 30s", Duration::from_secs(90)),
            ("10", Duration::from_secs(10)),
            ("0.25", Duration::from_millis(250)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn zero_negative_and_unknown_units_are_refused() {
        for text in ["0", "0s", "0ms", "-5", "5x", "", "nan"] {
            let error = parse_duration(text).expect_err(text);
            assert!(error.contains(&format!("{text:?}")), "{text}: {error}");
        }
        assert!(parse_duration("0s").unwrap_err().contains("longer than 0"));
    }
}
