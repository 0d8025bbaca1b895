//! Load generation against mock or real nodes: one level, a sweep of levels, or a
//! search for the highest rate that keeps p99 under a latency bound (the search's
//! decisions are in [`search`]; each stage alone is [`stages`]).
//!
//! Used by `percore bench` and `benches/pipeline.rs`. A level is a closed loop
//! (C jobs always in flight, like perf_analyzer's `--concurrency-range`) or an
//! open loop (R jobs/s arriving whatever is in flight, constant or Poisson, like
//! wrk2 and perf_analyzer's `--request-rate-range`); latency always counts from
//! the planned start, so a dispatcher that falls behind shows it.

pub mod search;
pub mod stages;

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Class, Config, GrpcConfig, SinkConfig};
use crate::demo::{self, MockPair};
use crate::devices::Fleet;
use crate::dispatcher::{self, Load, RunError, RunOptions, StageMode};
use crate::mock::{MockOptions, ServiceTime};
use crate::summary::RunSummary;
use crate::tuning::{allowed_cpus, Tuning};
use search::{Measure, Probe, SearchOutcome, SearchSettings};

/// One load level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    /// Closed loop with this many jobs in flight.
    Concurrency(usize),
    /// Open loop at this many jobs/s.
    Rate(f64),
    /// The production mode: devices tick on their grid, with the class period set
    /// so the fleet makes this many jobs/s.
    TickRate(f64),
}

impl Level {
    /// The level as a file name: `concurrency-64`, `rate-20000`, `ticks-10000`.
    pub fn slug(&self) -> String {
        match self {
            Level::Concurrency(c) => format!("concurrency-{c}"),
            Level::Rate(r) => format!("rate-{r:.0}"),
            Level::TickRate(r) => format!("ticks-{r:.0}"),
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Concurrency(c) => write!(f, "concurrency {c}"),
            Level::Rate(r) => write!(f, "rate {r:.0}/s"),
            Level::TickRate(r) => write!(f, "ticks {r:.0}/s"),
        }
    }
}

/// What to run, beyond the level.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Dispatcher shards, on the first allowed CPUs.
    pub shards: usize,
    /// Open-loop arrivals as a Poisson process instead of evenly spaced.
    pub poisson: bool,
    /// How long each level runs.
    pub duration: Duration,
    /// Mock nodes' service time (ignored with external nodes).
    pub service_time: Duration,
    /// Bytes of data per fetch (mock source).
    pub payload_bytes: usize,
    /// Devices in the generated fleet.
    pub devices: usize,
    /// Run as this class against its nodes instead of starting mocks: its data
    /// sources, compute nodes, model, version, input name, output check, deadline
    /// and `[classes.upstream]`; the bench sets its period.
    pub external: Option<Class>,
    /// Where the SQLite file goes; removed after each level.
    pub scratch_dir: PathBuf,
    /// Write the rows into this PostgreSQL database instead of a scratch SQLite
    /// file: each level into a table of its own (`table` then `_<level>`, no
    /// journal), dropped after the level; for the pipeline's rate with the
    /// production sink.
    pub postgres: Option<crate::sink::postgres::PostgresOptions>,
    /// A testing aid that simulates a slow database: the sink writer sleeps this
    /// long after each commit (`[sink] commit_delay_ms`); zero in real benches.
    pub sink_commit_delay: Duration,
}

/// The longest warm-up level before a search: long enough to open every
/// connection and warm the nodes, short next to the levels measured after it.
pub const WARM_UP: Duration = Duration::from_secs(1);

/// Runs levels one after another against one set of nodes.
pub struct Bench {
    /// What every level runs with.
    options: BenchOptions,
    /// The class every level runs as (the bench sets its period): the mock model on
    /// the mocks, or [`BenchOptions::external`].
    class: Class,
    /// Mock nodes started by us, stopped when the bench is dropped.
    mocks: Option<MockPair>,
    /// Shard and mock CPUs, chosen once for all levels.
    tuning: Tuning,
    /// Levels run so far, to give each level's interval log its own file.
    levels_run: std::cell::Cell<usize>,
}

impl Bench {
    /// Places shards and (unless external nodes are given) starts the mock nodes
    /// on the CPUs the shards leave free.
    pub fn start(options: BenchOptions) -> Result<Bench, RunError> {
        let cpus = allowed_cpus();
        if options.shards == 0 || options.shards > cpus.len() {
            return Err(RunError(format!(
                "--shards must be between 1 and {} (the CPUs this process may use)",
                cpus.len()
            )));
        }
        let tuning = Tuning {
            shard_cpus: cpus[..options.shards].to_vec(),
            mock_cpus: cpus[options.shards..].to_vec(),
            max_in_flight_per_shard: 100_000,
            ..Tuning::default()
        };
        let (class, mocks) = match &options.external {
            Some(class) => (class.clone(), None),
            None => {
                let mock = MockOptions {
                    service_time: ServiceTime::Fixed(options.service_time),
                    payload_bytes: options.payload_bytes,
                    ..MockOptions::default()
                };
                let mocks = demo::start_mocks(&tuning, mock.clone(), mock)
                    .map_err(|error| RunError(format!("starting the mock nodes: {error}")))?;
                let class = demo::mock_class(
                    "bench",
                    "mock",
                    10_000,
                    2_000,
                    mocks.source.addr,
                    mocks.compute.addr,
                );
                (class, Some(mocks))
            }
        };
        std::fs::create_dir_all(&options.scratch_dir).map_err(|error| {
            RunError(format!(
                "creating {}: {error}",
                options.scratch_dir.display()
            ))
        })?;
        Ok(Bench {
            options,
            class,
            mocks,
            tuning,
            levels_run: std::cell::Cell::new(0),
        })
    }

    /// The config of one level: one class whose period spreads the fleet's ticks
    /// over time (ticks are not used by closed or open loops but must be valid),
    /// and whose deadline is cut to the period if longer.
    fn config(&self, sink: SinkConfig, period_ms: u64) -> Config {
        let class = Class {
            period_ms,
            deadline_ms: self.class.deadline_ms.min(period_ms),
            ..self.class.clone()
        };
        Config {
            path: PathBuf::from("<bench>"),
            classes: vec![class],
            fleet: Fleet::generate(self.options.devices, &[(0, 1)]),
            sink,
            grpc: GrpcConfig::default(),
            tuning: self.tuning.clone(),
            cluster: crate::config::ClusterConfig::default(),
        }
    }

    /// A fresh interval-log file in the scratch folder for the next level; it
    /// stays there until the caller has written the level's report.
    fn next_interval_log(&self) -> (usize, PathBuf) {
        let level = self.levels_run.get();
        self.levels_run.set(level + 1);
        let path = self.options.scratch_dir.join(format!("level-{level}.hlog"));
        (level, path)
    }

    /// Runs one level and returns its summary.
    pub fn run(&self, level: Level) -> Result<RunSummary, RunError> {
        self.run_level(level).map(|run| run.summary)
    }

    /// Runs one level and returns its summary and the most frequent reasons its
    /// jobs failed or were skipped, read from the level's rows before the scratch
    /// database is removed.
    pub fn run_level(&self, level: Level) -> Result<LevelRun, RunError> {
        self.run_stage(level, StageMode::Whole, self.options.duration)
    }

    /// Runs one level of `stage` alone (or the whole job) for `duration`.
    pub fn run_stage(
        &self,
        level: Level,
        stage: StageMode,
        duration: Duration,
    ) -> Result<LevelRun, RunError> {
        let db = self
            .options
            .scratch_dir
            .join(format!("bench-{}.db", std::process::id()));
        let (level_index, interval_log) = self.next_interval_log();
        let sink = match &self.options.postgres {
            Some(postgres) => {
                let mut options = postgres.clone();
                options.table = format!("{}_{level_index}", postgres.table);
                SinkConfig::Postgres {
                    options,
                    journal: None,
                }
            }
            None => SinkConfig::Sqlite {
                path: db.clone(),
                busy_timeout: crate::sink::sqlite::DEFAULT_BUSY_TIMEOUT,
                commit_delay: self.options.sink_commit_delay,
                journal: None,
            },
        };
        let options = RunOptions {
            duration: Some(duration),
            stage,
            load: match level {
                Level::Concurrency(concurrency) => Load::ClosedLoop { concurrency },
                Level::Rate(rate) => Load::OpenLoop {
                    rate,
                    poisson: self.options.poisson,
                },
                Level::TickRate(_) => Load::Ticks,
            },
            interval_log: Some(interval_log),
            // The report's configuration names the mocks' service time and payload.
            mocks: self.mocks.as_ref().map(|mocks| mocks.description.clone()),
            ..RunOptions::default()
        };
        let period_ms = match level {
            Level::TickRate(rate) => ((self.options.devices as f64 * 1000.0 / rate) as u64).max(1),
            _ => 10_000,
        };
        let config = self.config(sink, period_ms);
        let result = dispatcher::run(&config, &options);
        let not_ok = result
            .as_ref()
            .is_ok_and(|summary| summary.counters.failed + summary.counters.skipped > 0);
        let mut failures = Vec::new();
        match &config.sink {
            SinkConfig::Postgres { options, .. } => {
                if not_ok {
                    failures = postgres_failure_reasons(options, TOP_REASONS);
                }
                if let Err(error) = crate::sink::postgres::drop_table(options) {
                    crate::console::err(format_args!("warning: {error}"));
                }
            }
            SinkConfig::Sqlite { .. } => {
                if not_ok {
                    failures = failure_reasons(&db, TOP_REASONS);
                }
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
                }
            }
        }
        result.map(|summary| LevelRun { summary, failures })
    }

    /// The highest open-loop rate of `stage` that meets `settings.bound_us`
    /// by [`stage_measure`]'s criterion, found by [`search::search`]: a warm-up
    /// of at most [`WARM_UP`] first, close levels run again. `on_level` sees
    /// every measured level.
    pub fn max_rate_under(
        &self,
        settings: SearchSettings,
        stage: StageMode,
        mut on_level: impl FnMut(Level, &LevelRun),
    ) -> Result<SearchOutcome, RunError> {
        search::search(settings, |probe| match probe {
            Probe::WarmUp(rate) => {
                let warm_up = self.options.duration.min(WARM_UP);
                self.run_stage(Level::Rate(rate), stage, warm_up)?;
                Ok(Measure {
                    p99_us: None,
                    clean: true,
                })
            }
            Probe::Level(rate) => {
                let run = self.run_stage(Level::Rate(rate), stage, self.options.duration)?;
                on_level(Level::Rate(rate), &run);
                Ok(stage_measure(&run.summary, stage))
            }
        })
    }

    /// Every level from now on batches its class's ModelInfer calls so
    /// (`[classes.batching]`), or sends each job alone (`None`).
    pub fn with_batching(mut self, batching: Option<crate::config::Batching>) -> Bench {
        self.class.batching = batching;
        self
    }

    /// ModelInfer calls the mock compute node took so far, all levels
    /// together; `None` against external nodes. With batching, jobs / calls
    /// is the mean batch size.
    pub fn infer_calls(&self) -> Option<u64> {
        self.mocks
            .as_ref()
            .map(|mocks| mocks.compute.control().calls())
    }

    pub fn stop(mut self) {
        if let Some(mocks) = self.mocks.take() {
            mocks.stop();
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mocks) = self.mocks.take() {
            mocks.stop();
        }
    }
}

/// How many of the most frequent failure reasons a level keeps.
pub const TOP_REASONS: usize = 5;

/// One level's results: the run's summary and why jobs did not end ok.
#[derive(Debug, Clone)]
pub struct LevelRun {
    /// The level's run summary (counters, latencies, CPU).
    pub summary: RunSummary,
    /// The most frequent reasons for failed and skipped jobs, most frequent
    /// first; empty when every job was ok.
    pub failures: Vec<FailureReason>,
}

/// One reason jobs ended failed or skipped, and how many did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReason {
    /// `failed` or `skipped`, as in the rows' `outcome` column.
    pub outcome: String,
    /// The rows' `reason` text (empty when a row has none).
    pub reason: String,
    /// Jobs that ended with this outcome and reason.
    pub jobs: u64,
}

/// The `limit` most frequent (outcome, reason) pairs of the rows that are not ok.
/// A diagnostic: a database that cannot be read gives one reason saying so, and
/// never fails the level.
pub fn failure_reasons(db: &Path, limit: usize) -> Vec<FailureReason> {
    let read = || -> rusqlite::Result<Vec<FailureReason>> {
        let conn = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut statement = conn.prepare(
            "SELECT outcome, coalesce(reason, ''), count(*) FROM jobs WHERE outcome != 'ok'
             GROUP BY outcome, reason ORDER BY count(*) DESC, outcome, reason LIMIT ?1",
        )?;
        let rows = statement.query_map([limit as i64], |row| {
            Ok(FailureReason {
                outcome: row.get(0)?,
                reason: row.get(1)?,
                jobs: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
            })
        })?;
        rows.collect()
    };
    read().unwrap_or_else(|error| {
        vec![FailureReason {
            outcome: "unknown".to_string(),
            reason: format!("cannot read the reasons from {}: {error}", db.display()),
            jobs: 0,
        }]
    })
}

/// As [`failure_reasons`], from a level's PostgreSQL table.
fn postgres_failure_reasons(
    options: &crate::sink::postgres::PostgresOptions,
    limit: usize,
) -> Vec<FailureReason> {
    match crate::sink::postgres::failure_reasons(options, limit) {
        Ok(reasons) => reasons
            .into_iter()
            .map(|(outcome, reason, jobs)| FailureReason {
                outcome,
                reason,
                jobs,
            })
            .collect(),
        Err(error) => vec![FailureReason {
            outcome: "unknown".to_string(),
            reason: format!("cannot read the reasons: {error}"),
            jobs: 0,
        }],
    }
}

/// Jobs per second that ended ok: the throughput a level delivered. Failed and
/// skipped jobs are attempts, not throughput.
pub fn ok_per_s(summary: &RunSummary) -> f64 {
    let seconds = summary.elapsed.as_secs_f64();
    if seconds > 0.0 {
        summary.counters.ok as f64 / seconds
    } else {
        0.0
    }
}

/// One line for a finished level: ok throughput apart from attempts, and the
/// failed and skipped counts.
pub fn level_line(level: Level, summary: &RunSummary) -> String {
    format!(
        "{level}: {} jobs attempted in {:.1} s ({:.0}/s): ok {} ({:.0} ok jobs/s), failed {}, skipped {}",
        summary.counters.jobs(),
        summary.elapsed.as_secs_f64(),
        summary.jobs_per_s(),
        summary.counters.ok,
        ok_per_s(summary),
        summary.counters.failed,
        summary.counters.skipped,
    )
}

/// The reasons of each level with failed or skipped jobs, most frequent first;
/// empty when every job of every level was ok.
pub fn failure_table(rows: &[(String, LevelRun)]) -> String {
    let mut out = String::new();
    for (level, run) in rows {
        if run.failures.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "why jobs did not end ok ({level}), most frequent first:"
        );
        for failure in &run.failures {
            let reason = if failure.reason.is_empty() {
                "(no reason recorded)"
            } else {
                &failure.reason
            };
            let _ = writeln!(
                out,
                "  {:>10} {:<8} {reason}",
                failure.jobs, failure.outcome
            );
        }
    }
    out
}

/// Whether a level meets a p99 bound: every job ok and p99 end-to-end ≤ bound.
pub fn passes(summary: &RunSummary, bound_us: u64) -> bool {
    stage_measure(summary, StageMode::Whole).passes(bound_us)
}

/// What a level of `stage` says about a latency bound: each stage's pass
/// criterion.
/// - **fetch**, **infer**, **job**: every job ok (none failed, no tick skipped),
///   and the p99 end-to-end latency (planned start → result ready: the stage's
///   call alone for fetch and infer) measured against the bound.
/// - **sink**: every synthetic row ok and committed (no tick skipped: a skip
///   here is `sink backlog`, the shards' results piling up), and the p99 *sink
///   lag* (row ready → committed) measured against the bound.
pub fn stage_measure(summary: &RunSummary, stage: StageMode) -> Measure {
    let counters = &summary.counters;
    let mut clean = counters.failed == 0 && counters.skipped == 0 && counters.ok > 0;
    let latency = match stage {
        StageMode::SinkOnly => {
            clean = clean && summary.sink_error.is_none() && summary.rows_written >= counters.ok;
            &summary.latency.sink_lag
        }
        _ => &summary.latency.end_to_end,
    };
    Measure {
        p99_us: (!latency.is_empty()).then(|| latency.value_at_quantile(0.99)),
        clean,
    }
}

/// The sweep table: one row per level (named by the caller), like
/// perf_analyzer's. `ok/s` is the throughput (jobs that ended ok), `tried/s`
/// every job started; each latency column names its stage (`e2e`: planned
/// start → result ready; `fetch`, `infer`: the call alone; `sink`: sink lag,
/// ready → committed), all of ok jobs, µs, `–` when there was none.
pub fn table(rows: &[(String, RunSummary)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>8} {:>8} {:>8} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "level",
        "ok/s",
        "tried/s",
        "cpu µs",
        "failed",
        "skipped",
        "e2e p50 µs",
        "e2e p90",
        "e2e p99",
        "e2e p99.9",
        "e2e max",
        "e2e mean",
        "fetch p99",
        "infer p99",
        "sink p99",
    );
    for (level, summary) in rows {
        let latency = &summary.latency;
        let at = |histogram: &hdrhistogram::Histogram<u64>, quantile: f64| match histogram.len() {
            0 => "–".to_string(),
            _ => histogram.value_at_quantile(quantile).to_string(),
        };
        let e2e = &latency.end_to_end;
        let (max, mean) = match e2e.len() {
            0 => ("–".to_string(), "–".to_string()),
            _ => (e2e.max().to_string(), format!("{:.0}", e2e.mean())),
        };
        let _ = writeln!(
            out,
            "{:<24} {:>10.0} {:>10.0} {:>8.1} {:>8} {:>8} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            level,
            ok_per_s(summary),
            summary.jobs_per_s(),
            summary.cpu_us_per_job(),
            summary.counters.failed,
            summary.counters.skipped,
            at(e2e, 0.5),
            at(e2e, 0.9),
            at(e2e, 0.99),
            at(e2e, 0.999),
            max,
            mean,
            at(&latency.fetch, 0.99),
            at(&latency.infer, 0.99),
            at(&latency.sink_lag, 0.99),
        );
    }
    out
}

/// Parses `1,16,64` (or one value) into levels; names the flag in errors.
pub fn parse_levels(flag: &str, text: &str, make: fn(f64) -> Level) -> Result<Vec<Level>, String> {
    text.split(',')
        .map(|part| {
            let value: f64 = part
                .trim()
                .parse()
                .map_err(|_| format!("{flag}: {part:?} is not a number"))?;
            if !(value > 0.0 && value.is_finite()) {
                return Err(format!("{flag}: {part:?} must be greater than 0"));
            }
            Ok(make(value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_bad_ones_are_named() {
        let levels = parse_levels("--concurrency", "1, 16,64", |v| {
            Level::Concurrency(v as usize)
        })
        .unwrap();
        assert_eq!(
            levels,
            vec![
                Level::Concurrency(1),
                Level::Concurrency(16),
                Level::Concurrency(64)
            ]
        );
        assert_eq!(
            parse_levels("--rate", "5000,x", Level::Rate).unwrap_err(),
            "--rate: \"x\" is not a number"
        );
        assert_eq!(
            parse_levels("--rate", "0", Level::Rate).unwrap_err(),
            "--rate: \"0\" must be greater than 0"
        );
    }
}
