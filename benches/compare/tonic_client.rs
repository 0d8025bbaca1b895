//! The tokio + tonic client: the usual Rust way to write the same job.
//!
//! Runs in its own process (the benchmark re-executes itself with `--tonic-client`,
//! pinned with taskset) so its CPU time can be measured alone. A tokio multi-thread
//! runtime with one worker per CPU it may use runs the jobs; each takes the next
//! device in turn, calls `Fetch`, forwards the tensor to `ModelInfer` (one tonic
//! `Channel`, that is one HTTP/2 connection, per node, like a percore shard), checks
//! the output and sends the row over a bounded tokio channel to a writer thread. The
//! writer drains what is queued every [`FLUSH_INTERVAL`] into one SQLite transaction
//! (same schema, pragmas and upsert as percore's sink), and counts the jobs.
//!
//! - Closed loop: `concurrency` tasks, each running one job after another.
//! - Open loop (`rate`): a pacer thread spawns one task per arrival, evenly spaced;
//!   arrivals due within [`OPEN_LOOP_GRANULARITY`] start together, as in percore's
//!   shards (tokio's own timer has a 1 ms resolution). Latency counts from each
//!   job's planned arrival.
//!
//! Prints `measuring` when its measured window starts, then one JSON line on stdout
//! at the end: jobs, CPU (`getrusage(RUSAGE_SELF)`: every thread, tokio workers, the
//! pacer and the writer included) and latency percentiles, all over the measured
//! window that follows the warm-up.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use rusqlite::{params, Connection, TransactionBehavior};
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use percore::devices::Fleet;
use percore::proto::inference::model_infer_request::InferInputTensor;
use percore::proto::inference::{ModelInferRequest, ModelInferResponse};
use percore::proto::source::{FetchRequest, FetchResponse};

use crate::sql;

/// Rows the channel to the writer holds before tasks wait (backpressure).
const CHANNEL_ROWS: usize = 65_536;
/// The writer takes what is queued this often: percore's shards hand their
/// results to its writer every 5 ms, so transactions are of the same size.
const FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// Most rows per transaction, as in percore's writer.
const MAX_BATCH_ROWS: usize = 8192;
/// Time allowed for one job (both calls), sent as `grpc-timeout` too.
const JOB_DEADLINE: Duration = Duration::from_secs(2);
/// Open loop: arrivals due within this much of each other start together
/// (percore's `OPEN_LOOP_GRANULARITY`).
const OPEN_LOOP_GRANULARITY: Duration = Duration::from_micros(200);

/// The rows' `run_id` (percore's names its run; one name does here).
const RUN_ID: &str = "compare-tonic";

/// Phases of a run, shared by every task.
const WARMING_UP: u8 = 0;
const MEASURING: u8 = 1;
const STOPPING: u8 = 2;

/// What the parent passes after `--tonic-client`.
pub struct Options {
    pub source: String,
    pub compute: String,
    /// Closed loop: jobs in flight (ignored with `rate`).
    pub concurrency: usize,
    /// Open loop: jobs/s, evenly spaced.
    pub rate: Option<u64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub devices: usize,
    pub db: String,
}

impl Options {
    /// The arguments that [`Options::parse`] reads back.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--tonic-client".into(),
            self.source.clone(),
            self.compute.clone(),
            self.concurrency.to_string(),
            self.rate.unwrap_or(0).to_string(),
            self.warmup.as_millis().to_string(),
            self.duration.as_millis().to_string(),
            self.devices.to_string(),
            self.db.clone(),
        ]
    }

    /// Reads the words after `--tonic-client`.
    pub fn parse(words: &[String]) -> Result<Options, String> {
        let [source, compute, concurrency, rate, warmup_ms, duration_ms, devices, db] = words
        else {
            return Err(format!("--tonic-client takes 8 values, got {words:?}"));
        };
        let number = |word: &str| -> Result<u64, String> {
            word.parse()
                .map_err(|_| format!("--tonic-client: {word:?} is not a whole number"))
        };
        Ok(Options {
            source: source.clone(),
            compute: compute.clone(),
            concurrency: number(concurrency)? as usize,
            rate: Some(number(rate)?).filter(|&rate| rate > 0),
            warmup: Duration::from_millis(number(warmup_ms)?),
            duration: Duration::from_millis(number(duration_ms)?),
            devices: number(devices)? as usize,
            db: db.clone(),
        })
    }
}

/// One finished job on its way to the writer.
struct Row {
    device: u32,
    tick_ms: i64,
    /// `Err(reason)` for a failed job.
    result: Result<Bytes, String>,
    fetch_us: Option<i64>,
    infer_us: Option<i64>,
    end_to_end_us: i64,
    /// It finished while the phase was [`MEASURING`]: counted in the figures.
    measured: bool,
}

/// What the writer counted: the jobs that finished while [`MEASURING`], and
/// every row it wrote.
struct Tally {
    ok: u64,
    failed: u64,
    end_to_end: Histogram<u64>,
    /// Rows written, of every phase: each job finished is one row.
    written: u64,
}

/// Everything shared by the tasks.
struct Shared {
    fleet: Arc<Fleet>,
    /// Next device in turn.
    cursor: AtomicUsize,
    phase: AtomicU8,
    source: Channel,
    compute: Channel,
    /// Open loop: jobs started and not yet finished, so the end can wait for them.
    in_flight: AtomicUsize,
    /// Jobs finished in any phase, to check against the rows the writer wrote.
    finished: AtomicU64,
}

/// Runs the client and prints its JSON line; the error names what failed.
pub fn run(options: Options) -> Result<(), String> {
    let line = run_to_json(&options)?;
    println!("{line}");
    Ok(())
}

/// Runs the client; its figures as the JSON line `run` prints.
pub fn run_to_json(options: &Options) -> Result<serde_json::Value, String> {
    let workers = percore::tuning::allowed_cpus().len().max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|error| format!("tonic client: cannot build the tokio runtime: {error}"))?;
    let conn = sql::open(&options.db)?;
    let fleet = Arc::new(Fleet::generate(options.devices, &[(0, 1)]));
    let writer_fleet = fleet.clone();
    let (rows_tx, rows_rx) = tokio::sync::mpsc::channel::<Row>(CHANNEL_ROWS);
    let writer = std::thread::Builder::new()
        .name("writer".into())
        .spawn({
            let compute_node = options.compute.clone();
            move || write_rows(conn, writer_fleet, compute_node, rows_rx)
        })
        .map_err(|error| format!("tonic client: cannot start the writer thread: {error}"))?;

    let measured = runtime.block_on(async {
        let connect = |addr: &str| {
            let uri = format!("http://{addr}");
            async move {
                Endpoint::from_shared(uri.clone())
                    .map_err(|error| format!("tonic client: bad address {uri}: {error}"))?
                    .connect()
                    .await
                    .map_err(|error| format!("tonic client: cannot connect to {uri}: {error}"))
            }
        };
        let shared = Arc::new(Shared {
            fleet,
            cursor: AtomicUsize::new(0),
            phase: AtomicU8::new(WARMING_UP),
            source: connect(&options.source).await?,
            compute: connect(&options.compute).await?,
            in_flight: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        let mut pacer = None;
        match options.rate {
            None => {
                for _ in 0..options.concurrency.max(1) {
                    tasks.push(tokio::spawn(job_loop(shared.clone(), rows_tx.clone())));
                }
            }
            Some(rate) => {
                let handle = tokio::runtime::Handle::current();
                let (shared, rows) = (shared.clone(), rows_tx.clone());
                pacer = Some(
                    std::thread::Builder::new()
                        .name("pacer".into())
                        .spawn(move || pace(handle, shared, rows, rate))
                        .map_err(|error| {
                            format!("tonic client: cannot start the pacer thread: {error}")
                        })?,
                );
            }
        }
        drop(rows_tx);
        tokio::time::sleep(options.warmup).await;
        let cpu_start = rusage_self();
        let started = Instant::now();
        shared.phase.store(MEASURING, Ordering::Relaxed);
        println!("measuring");
        let _ = std::io::stdout().flush();
        tokio::time::sleep(options.duration).await;
        shared.phase.store(STOPPING, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let cpu = rusage_self().saturating_sub(cpu_start);
        for task in tasks {
            task.await
                .map_err(|error| format!("tonic client: a task panicked: {error}"))?;
        }
        if let Some(pacer) = pacer {
            pacer
                .join()
                .map_err(|_| "tonic client: the pacer thread panicked".to_string())?;
            // Jobs in flight end within their deadline.
            let limit = Instant::now() + JOB_DEADLINE + Duration::from_secs(1);
            while shared.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < limit {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok::<_, String>((elapsed, cpu, shared))
    })?;
    let (elapsed, cpu, shared) = measured;
    let finished = shared.finished.load(Ordering::Relaxed);
    drop(shared);
    drop(runtime);
    let tally = writer
        .join()
        .map_err(|_| "tonic client: the writer thread panicked".to_string())??;
    let jobs = tally.ok + tally.failed;
    let hist = &tally.end_to_end;
    Ok(serde_json::json!({
        "jobs": jobs,
        "ok": tally.ok,
        "failed": tally.failed,
        "jobs_total": finished,
        "rows_written": tally.written,
        "elapsed_s": elapsed.as_secs_f64(),
        "cpu_s": cpu.as_secs_f64(),
        "workers": workers,
        "latency_us": {
            "p50": hist.value_at_quantile(0.5),
            "p99": hist.value_at_quantile(0.99),
            "p999": hist.value_at_quantile(0.999),
            "max": hist.max(),
        },
    }))
}

/// One closed-loop task: a job, its row to the writer, the next job.
async fn job_loop(shared: Arc<Shared>, rows: tokio::sync::mpsc::Sender<Row>) {
    let mut clients = Clients::new(&shared);
    while shared.phase.load(Ordering::Relaxed) != STOPPING {
        let row = one_job(&shared, &mut clients, Instant::now()).await;
        if rows.send(row).await.is_err() {
            break; // the writer failed; it reports why
        }
    }
}

/// The open loop's pacer thread: spawns one job per planned arrival until the
/// phase is [`STOPPING`].
fn pace(
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
    rows: tokio::sync::mpsc::Sender<Row>,
    rate: u64,
) {
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut planned = Instant::now();
    while shared.phase.load(Ordering::Relaxed) != STOPPING {
        let now = Instant::now();
        while planned <= now {
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let (shared, rows) = (shared.clone(), rows.clone());
            runtime.spawn(async move {
                let mut clients = Clients::new(&shared);
                let row = one_job(&shared, &mut clients, planned).await;
                let _ = rows.send(row).await; // the writer failed: it reports why
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
            planned += gap;
        }
        let wake = planned.max(now + OPEN_LOOP_GRANULARITY);
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
}

/// A task's gRPC clients of both nodes (handles on the shared channels).
struct Clients {
    source: tonic::client::Grpc<Channel>,
    compute: tonic::client::Grpc<Channel>,
}

impl Clients {
    fn new(shared: &Shared) -> Clients {
        Clients {
            source: tonic::client::Grpc::new(shared.source.clone()),
            compute: tonic::client::Grpc::new(shared.compute.clone()),
        }
    }
}

/// One job; its end-to-end latency counts from `since` (its start, or its
/// planned arrival in the open loop).
async fn one_job(shared: &Shared, clients: &mut Clients, since: Instant) -> Row {
    let device = (shared.cursor.fetch_add(1, Ordering::Relaxed) % shared.fleet.len()) as u32;
    let tick_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    let mut row = Row {
        device,
        tick_ms,
        result: Err(String::new()),
        fetch_us: None,
        infer_us: None,
        end_to_end_us: 0,
        measured: false,
    };
    let job = run_job(
        &mut clients.source,
        &mut clients.compute,
        shared.fleet.id(device),
        tick_ms,
        &mut row,
    );
    row.result = match tokio::time::timeout(JOB_DEADLINE, job).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{}: deadline exceeded",
            if row.fetch_us.is_none() {
                "fetch"
            } else {
                "infer"
            }
        )),
    };
    row.end_to_end_us = since.elapsed().as_micros() as i64;
    row.measured = shared.phase.load(Ordering::Relaxed) == MEASURING;
    shared.finished.fetch_add(1, Ordering::Relaxed);
    row
}

/// Fetch, then ModelInfer with the fetched tensor, then the output check.
async fn run_job(
    source: &mut tonic::client::Grpc<Channel>,
    compute: &mut tonic::client::Grpc<Channel>,
    device_id: &str,
    tick_ms: i64,
    row: &mut Row,
) -> Result<Bytes, String> {
    let fetch_started = Instant::now();
    let mut request = tonic::Request::new(FetchRequest {
        device_id: device_id.to_owned(),
        class: "bench".into(),
        tick_unix_ms: tick_ms,
    });
    request.set_timeout(JOB_DEADLINE);
    source
        .ready()
        .await
        .map_err(|error| format!("fetch: connection: {error}"))?;
    let fetched: FetchResponse = source
        .unary(
            request,
            PathAndQuery::from_static("/percore.source.v1.DataSource/Fetch"),
            ProstCodec::<FetchRequest, FetchResponse>::default(),
        )
        .await
        .map_err(|status| format!("fetch: {status}"))?
        .into_inner();
    row.fetch_us = Some(fetch_started.elapsed().as_micros() as i64);

    let infer_started = Instant::now();
    let mut request = tonic::Request::new(ModelInferRequest {
        model_name: "mock".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: fetched.datatype,
            shape: fetched.shape,
            ..Default::default()
        }],
        raw_input_contents: vec![fetched.raw],
        ..Default::default()
    });
    request.set_timeout(JOB_DEADLINE.saturating_sub(fetch_started.elapsed()));
    compute
        .ready()
        .await
        .map_err(|error| format!("infer: connection: {error}"))?;
    let response: ModelInferResponse = compute
        .unary(
            request,
            PathAndQuery::from_static("/inference.GRPCInferenceService/ModelInfer"),
            ProstCodec::<ModelInferRequest, ModelInferResponse>::default(),
        )
        .await
        .map_err(|status| format!("infer: {status}"))?
        .into_inner();
    row.infer_us = Some(infer_started.elapsed().as_micros() as i64);
    check_output(response).map_err(|detail| format!("infer: bad response: {detail}"))
}

/// The mock model answers FP32 [1, 2] as raw bytes: the same check percore makes.
fn check_output(mut response: ModelInferResponse) -> Result<Bytes, String> {
    let output = response.outputs.first().ok_or("no output tensor")?;
    if output.datatype != "FP32" || output.shape != [1, 2] {
        return Err(format!(
            "expected FP32 [1, 2], got {} {:?}",
            output.datatype, output.shape
        ));
    }
    if response.raw_output_contents.is_empty() {
        return Err("no raw output contents".into());
    }
    let raw = response.raw_output_contents.swap_remove(0);
    if raw.len() != 8 {
        return Err(format!("FP32 [1, 2] needs 8 bytes, got {}", raw.len()));
    }
    Ok(raw)
}

/// The writer thread: every FLUSH_INTERVAL, what is queued (up to MAX_BATCH_ROWS)
/// becomes one transaction. Returns the rows written and the measured jobs' figures.
fn write_rows(
    mut conn: Connection,
    fleet: Arc<Fleet>,
    compute_node: String,
    mut rows: tokio::sync::mpsc::Receiver<Row>,
) -> Result<Tally, String> {
    let mut batch: Vec<Row> = Vec::with_capacity(MAX_BATCH_ROWS);
    let mut tally = Tally {
        ok: 0,
        failed: 0,
        end_to_end: Histogram::new_with_bounds(1, 60_000_000, 3)
            .map_err(|error| format!("tonic client: histogram: {error}"))?,
        written: 0,
    };
    while let Some(first) = rows.blocking_recv() {
        let round = Instant::now();
        batch.push(first);
        while batch.len() < MAX_BATCH_ROWS {
            match rows.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|error| format!("tonic client: sqlite: BEGIN failed: {error}"))?;
        {
            let mut upsert = tx
                .prepare_cached(sql::UPSERT)
                .map_err(|error| format!("tonic client: sqlite: preparing the upsert: {error}"))?;
            let mut output_upsert = tx.prepare_cached(sql::OUTPUT_UPSERT).map_err(|error| {
                format!("tonic client: sqlite: preparing the output upsert: {error}")
            })?;
            for row in batch.drain(..) {
                if row.measured {
                    match row.result {
                        Ok(_) => tally.ok += 1,
                        Err(_) => tally.failed += 1,
                    }
                    tally
                        .end_to_end
                        .saturating_record(row.end_to_end_us.max(1) as u64);
                }
                let (outcome, reason, output) = match &row.result {
                    Ok(output) => ("ok", None, Some(&output[..])),
                    Err(reason) => ("failed", Some(reason.as_str()), None),
                };
                upsert
                    .execute(params![
                        fleet.id(row.device),
                        row.tick_ms,
                        "bench",
                        "mock",
                        outcome,
                        reason,
                        output,
                        0i64,
                        row.fetch_us,
                        row.infer_us,
                        row.end_to_end_us,
                        0i64,
                        compute_node,
                        1i64,
                        RUN_ID,
                    ])
                    .map_err(|error| format!("tonic client: sqlite: upsert failed: {error}"))?;
                if let Some(output) = output {
                    output_upsert
                        .execute(params![
                            fleet.id(row.device),
                            row.tick_ms,
                            "OUTPUT0",
                            "FP32",
                            "1,2",
                            output,
                        ])
                        .map_err(|error| {
                            format!("tonic client: sqlite: output upsert failed: {error}")
                        })?;
                }
                tally.written += 1;
            }
        }
        tx.commit()
            .map_err(|error| format!("tonic client: sqlite: COMMIT failed: {error}"))?;
        if let Some(left) = FLUSH_INTERVAL.checked_sub(round.elapsed()) {
            std::thread::sleep(left);
        }
    }
    Ok(tally)
}

/// User + system CPU of this process, every thread included.
fn rusage_self() -> Duration {
    // SAFETY: getrusage writes into the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}
