//! The tokio + tonic client: the usual Rust way to write the same job.
//!
//! Runs in its own process (the benchmark re-executes itself with `--tonic-client`,
//! pinned with taskset) so its CPU time can be measured alone. A tokio multi-thread
//! runtime with one worker per CPU it may use runs `concurrency` tasks in a closed
//! loop; each takes the next device in turn, calls `Fetch`, forwards the tensor to
//! `ModelInfer` (one tonic `Channel`, that is one HTTP/2 connection, per node, like a
//! percore shard), checks the output and sends the row over a bounded tokio channel
//! to a writer thread. The writer drains what is queued every [`FLUSH_INTERVAL`]
//! into one SQLite transaction (same schema, pragmas and upsert as percore's sink).
//!
//! Prints one JSON line on stdout: jobs, CPU (`getrusage(RUSAGE_SELF)`: every thread,
//! tokio workers and the writer included) and latency percentiles, all over the
//! measured window that follows the warm-up.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
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

/// Phases of a run, shared by every task.
const WARMING_UP: u8 = 0;
const MEASURING: u8 = 1;
const STOPPING: u8 = 2;

/// What the parent passes after `--tonic-client`.
pub struct Options {
    pub source: String,
    pub compute: String,
    pub concurrency: usize,
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
            self.warmup.as_millis().to_string(),
            self.duration.as_millis().to_string(),
            self.devices.to_string(),
            self.db.clone(),
        ]
    }

    /// Reads the words after `--tonic-client`.
    pub fn parse(words: &[String]) -> Result<Options, String> {
        let [source, compute, concurrency, warmup_ms, duration_ms, devices, db] = words else {
            return Err(format!("--tonic-client takes 7 values, got {words:?}"));
        };
        let number = |word: &str| -> Result<u64, String> {
            word.parse()
                .map_err(|_| format!("--tonic-client: {word:?} is not a whole number"))
        };
        Ok(Options {
            source: source.clone(),
            compute: compute.clone(),
            concurrency: number(concurrency)? as usize,
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
}

/// What one task counted while the phase was [`MEASURING`].
struct TaskTally {
    ok: u64,
    failed: u64,
    /// Jobs finished in any phase, to check against the rows written.
    total: u64,
    end_to_end: Histogram<u64>,
}

/// Everything shared by the tasks.
struct Shared {
    fleet: Arc<Fleet>,
    /// Next device in turn.
    cursor: AtomicUsize,
    phase: AtomicU8,
    source: Channel,
    compute: Channel,
}

/// Runs the client and prints its JSON line; the error names what failed.
pub fn run(options: Options) -> Result<(), String> {
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
        .spawn(move || write_rows(conn, writer_fleet, rows_rx))
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
        });
        let tasks: Vec<_> = (0..options.concurrency.max(1))
            .map(|_| tokio::spawn(job_loop(shared.clone(), rows_tx.clone())))
            .collect();
        drop(rows_tx);
        tokio::time::sleep(options.warmup).await;
        let cpu_start = rusage_self();
        let started = Instant::now();
        shared.phase.store(MEASURING, Ordering::Relaxed);
        tokio::time::sleep(options.duration).await;
        shared.phase.store(STOPPING, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let cpu = rusage_self().saturating_sub(cpu_start);
        let mut tally = TaskTally::new();
        for task in tasks {
            let one = task
                .await
                .map_err(|error| format!("tonic client: a task panicked: {error}"))?;
            tally.ok += one.ok;
            tally.failed += one.failed;
            tally.total += one.total;
            tally
                .end_to_end
                .add(&one.end_to_end)
                .map_err(|error| format!("tonic client: merging histograms: {error}"))?;
        }
        Ok::<_, String>((tally, elapsed, cpu))
    })?;
    let (tally, elapsed, cpu) = measured;
    let rows_written = writer
        .join()
        .map_err(|_| "tonic client: the writer thread panicked".to_string())??;
    let jobs = tally.ok + tally.failed;
    let hist = &tally.end_to_end;
    let line = serde_json::json!({
        "jobs": jobs,
        "ok": tally.ok,
        "failed": tally.failed,
        "jobs_total": tally.total,
        "rows_written": rows_written,
        "elapsed_s": elapsed.as_secs_f64(),
        "cpu_s": cpu.as_secs_f64(),
        "workers": workers,
        "latency_us": {
            "p50": hist.value_at_quantile(0.5),
            "p99": hist.value_at_quantile(0.99),
            "p999": hist.value_at_quantile(0.999),
            "max": hist.max(),
        },
    });
    println!("{line}");
    Ok(())
}

impl TaskTally {
    fn new() -> TaskTally {
        TaskTally {
            ok: 0,
            failed: 0,
            total: 0,
            end_to_end: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }
}

/// One closed-loop task: a job, its row to the writer, the next job.
async fn job_loop(shared: Arc<Shared>, rows: tokio::sync::mpsc::Sender<Row>) -> TaskTally {
    let mut tally = TaskTally::new();
    let mut source = tonic::client::Grpc::new(shared.source.clone());
    let mut compute = tonic::client::Grpc::new(shared.compute.clone());
    let devices = shared.fleet.len();
    while shared.phase.load(Ordering::Relaxed) != STOPPING {
        let device = (shared.cursor.fetch_add(1, Ordering::Relaxed) % devices) as u32;
        let tick_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        let started = Instant::now();
        let mut row = Row {
            device,
            tick_ms,
            result: Err(String::new()),
            fetch_us: None,
            infer_us: None,
            end_to_end_us: 0,
        };
        let job = run_job(
            &mut source,
            &mut compute,
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
        let end_to_end_us = started.elapsed().as_micros() as i64;
        row.end_to_end_us = end_to_end_us;
        if shared.phase.load(Ordering::Relaxed) == MEASURING {
            match row.result {
                Ok(_) => tally.ok += 1,
                Err(_) => tally.failed += 1,
            }
            tally
                .end_to_end
                .saturating_record(end_to_end_us.max(1) as u64);
        }
        tally.total += 1;
        if rows.send(row).await.is_err() {
            break; // the writer failed; it reports why
        }
    }
    tally
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
/// becomes one transaction. Returns the rows written.
fn write_rows(
    mut conn: Connection,
    fleet: Arc<Fleet>,
    mut rows: tokio::sync::mpsc::Receiver<Row>,
) -> Result<u64, String> {
    let mut batch: Vec<Row> = Vec::with_capacity(MAX_BATCH_ROWS);
    let mut written = 0u64;
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
            for row in batch.drain(..) {
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
                    ])
                    .map_err(|error| format!("tonic client: sqlite: upsert failed: {error}"))?;
                written += 1;
            }
        }
        tx.commit()
            .map_err(|error| format!("tonic client: sqlite: COMMIT failed: {error}"))?;
        if let Some(left) = FLUSH_INTERVAL.checked_sub(round.elapsed()) {
            std::thread::sleep(left);
        }
    }
    Ok(written)
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
