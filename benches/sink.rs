//! The sink benchmark: synthetic records through the real sink path
//! (`Sink::write_batch`: resolving names, then SQLite's upsert or PostgreSQL's
//! binary COPY + INSERT … ON CONFLICT; each record with one output, so also its
//! `job_outputs` row) at batch sizes of 1,000 and 10,000 rows,
//! printing rows/s and the writer thread's CPU per row.
//!
//! ```text
//! cargo bench --bench sink -- [--rows N] [--devices N]
//! ```
//! PostgreSQL is measured when `PERCORE_BENCH_PG_URL` (or `PERCORE_TEST_PG_URL`)
//! is set, into a table of the benchmark's own that is dropped afterwards;
//! otherwise it is skipped with a note. Rows are ok results with a 16-byte output,
//! ticks advancing so every row is new (the insert path, not the conflict path).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use percore::record::{DeviceId, JobRecord, Outcome, Output, StageLatency};
use percore::sink::postgres::{PgUrl, PostgresOptions};
use percore::sink::run::RunIdentity;
use percore::sink::{self, ClassNames, RowNames, Sink, SinkTarget};

/// The batch sizes measured.
const BATCH_SIZES: [usize; 2] = [1_000, 10_000];

/// One measured line of the table.
struct Measurement {
    /// `sqlite` or `postgres`.
    backend: &'static str,
    /// Rows per `write_batch`.
    batch: usize,
    /// Rows written.
    rows: usize,
    /// Wall time of all the writes.
    elapsed: Duration,
    /// The calling (writer) thread's CPU time of all the writes.
    cpu: Duration,
}

fn parse_args() -> Result<(usize, usize), String> {
    let (mut rows, mut devices) = (200_000, 10_000);
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        if flag == "--bench" {
            continue; // added by `cargo bench`
        }
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number: usize = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a whole number"))?;
        match flag.as_str() {
            "--rows" => rows = number.max(BATCH_SIZES[1]),
            "--devices" => devices = number.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok((rows, devices))
}

/// `all_outputs`: whether rows carry their output for `job_outputs`
/// (`store_outputs = "all"`) or only `jobs.output` (`"first"`).
fn names(all_outputs: bool) -> Arc<RowNames> {
    Arc::new(RowNames {
        classes: vec![ClassNames {
            all_outputs,
            class: "camera".into(),
            model: "resnet50".into(),
            compute_nodes: vec!["127.0.0.1:8001".into()],
        }],
        run: RunIdentity::new("benches/sink.rs"),
    })
}

/// Writes `rows` synthetic records in batches of `batch` and measures it.
fn measure(
    backend: &'static str,
    sink: &mut dyn Sink,
    batch: usize,
    rows: usize,
    devices: usize,
) -> Result<Measurement, String> {
    // One FP32 [1, 4] output, as a small model answers: a `jobs` row and a
    // `job_outputs` row per record.
    let output = Output {
        name: "OUTPUT0".to_string(),
        datatype: "FP32".to_string(),
        shape: vec![1, 4],
        bytes: Bytes::from_static(&[7; 16]),
    };
    let mut records = Vec::with_capacity(batch);
    let ids: Vec<DeviceId> = (0..devices)
        .map(|d| DeviceId::new(&format!("bench-{d:06}")))
        .collect();
    let cpu_start = percore::cpu::current_thread();
    let start = Instant::now();
    let mut written = 0;
    // Each batch size starts on ticks of its own, so nothing conflicts.
    let base_ms = 1_700_000_000_000
        + batch as i64 * 1_000_000_000
        + i64::from(backend.contains("1st")) * 100_000_000_000;
    while written < rows {
        records.clear();
        for index in written..(written + batch).min(rows) {
            records.push(JobRecord {
                device: ids[index % devices].clone(),
                tick_ms: base_ms + (index / devices) as i64 * 1_000,
                class: 0,
                shard: (index % 2) as u16,
                outcome: Outcome::Ok,
                outputs: vec![output.clone()],
                latency: StageLatency {
                    schedule_lag_us: 12,
                    fetch_us: Some(300),
                    infer_us: Some(900),
                    end_to_end_us: Some(1_250),
                },
                compute_node: Some(0),
                attempts: 2,
                ready_at: Instant::now(),
            });
        }
        sink.write_batch(&records)
            .map_err(|error| error.to_string())?;
        written += records.len();
    }
    Ok(Measurement {
        backend,
        batch,
        rows: written,
        elapsed: start.elapsed(),
        cpu: percore::cpu::current_thread().saturating_sub(cpu_start),
    })
}

fn run() -> Result<Vec<Measurement>, String> {
    let (rows, devices) = parse_args()?;
    let mut results = Vec::new();
    let scratch = std::env::temp_dir().join(format!("percore-bench-sink-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|error| format!("{}: {error}", scratch.display()))?;
    for (all_outputs, backend) in [(true, "sqlite"), (false, "sqlite/1st")] {
        for batch in BATCH_SIZES {
            let path = scratch.join(format!("sink-{all_outputs}-{batch}.db"));
            let mut sink = sink::open(&SinkTarget::sqlite(&path), names(all_outputs), false)
                .map_err(|error| error.to_string())?
                .sink;
            results.push(measure(backend, &mut *sink, batch, rows, devices)?);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let url =
        std::env::var("PERCORE_BENCH_PG_URL").or_else(|_| std::env::var("PERCORE_TEST_PG_URL"));
    let Ok(url) = url else {
        println!("postgres: skipped (set PERCORE_BENCH_PG_URL=postgresql://user@host:port/db)");
        return Ok(results);
    };
    let url = PgUrl::parse(&url).map_err(|why| format!("PERCORE_BENCH_PG_URL {why}"))?;
    let table = format!("bench_jobs_{}", std::process::id());
    let mut options = PostgresOptions::new(url.clone());
    options.table = table.clone();
    let mut measured = Ok(());
    'levels: for (all_outputs, backend) in [(true, "postgres"), (false, "pg/1st")] {
        for batch in BATCH_SIZES {
            let result = sink::open(
                &SinkTarget::Postgres(options.clone()),
                names(all_outputs),
                false,
            )
            .map_err(|error| error.to_string())
            .and_then(|mut opened| measure(backend, &mut *opened.sink, batch, rows, devices));
            match result {
                Ok(measurement) => results.push(measurement),
                Err(error) => {
                    measured = Err(error);
                    break 'levels;
                }
            }
        }
    }
    // The benchmark's table and its runs go; the database stays as it was.
    let cleanup = url
        .client_config()
        .connect(postgres::NoTls)
        .and_then(|mut client| {
            client.batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}, {table}_outputs; DELETE FROM percore_schema WHERE table_name = '{table}';
                 DELETE FROM runs WHERE config_digest = 'benches/sink.rs'"
            ))
        });
    if let Err(error) = cleanup {
        eprintln!("sink: warning: could not drop {table}: {error}");
    }
    measured.map(|()| results)
}

fn main() {
    match run() {
        Ok(results) => {
            println!(
                "{:<9} {:>7} {:>9} {:>12} {:>14}",
                "backend", "batch", "rows", "rows/s", "writer µs/row"
            );
            for m in &results {
                let rows = m.rows.max(1) as f64;
                println!(
                    "{:<9} {:>7} {:>9} {:>12.0} {:>14.2}",
                    m.backend,
                    m.batch,
                    m.rows,
                    rows / m.elapsed.as_secs_f64().max(1e-9),
                    m.cpu.as_secs_f64() * 1e6 / rows,
                );
            }
        }
        Err(error) => {
            eprintln!("sink: {error}");
            std::process::exit(1);
        }
    }
}
