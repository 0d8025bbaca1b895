//! Load generation against mock or real nodes: one level, a sweep of levels, or a
//! search for the highest rate that keeps p99 under a latency bound.
//!
//! Used by `percore bench` and `benches/pipeline.rs`. A level is a closed loop
//! (C jobs always in flight, like perf_analyzer's `--concurrency-range`) or an
//! open loop (R jobs/s arriving whatever is in flight, constant or Poisson, like
//! wrk2 and perf_analyzer's `--request-rate-range`); latency always counts from
//! the planned start, so a dispatcher that falls behind shows it.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, GrpcConfig, SinkConfig};
use crate::demo::{self, MockPair};
use crate::devices::Fleet;
use crate::dispatcher::{self, Load, RunError, RunOptions};
use crate::mock::{MockOptions, ServiceTime};
use crate::summary::RunSummary;
use crate::tuning::{allowed_cpus, Tuning};

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
    /// Use these nodes (data source, compute node) instead of starting mocks.
    pub external: Option<(SocketAddr, SocketAddr)>,
    /// Where the SQLite file goes; removed after each level.
    pub scratch_dir: PathBuf,
}

/// Runs levels one after another against one set of nodes.
pub struct Bench {
    /// What every level runs with.
    options: BenchOptions,
    /// The nodes' addresses.
    nodes: (SocketAddr, SocketAddr),
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
        let (nodes, mocks) = match options.external {
            Some(nodes) => (nodes, None),
            None => {
                let mock = MockOptions {
                    service_time: ServiceTime::Fixed(options.service_time),
                    payload_bytes: options.payload_bytes,
                    ..MockOptions::default()
                };
                let mocks = demo::start_mocks(&tuning, mock.clone(), mock)
                    .map_err(|error| RunError(format!("starting the mock nodes: {error}")))?;
                ((mocks.source.addr, mocks.compute.addr), Some(mocks))
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
            nodes,
            mocks,
            tuning,
            levels_run: std::cell::Cell::new(0),
        })
    }

    /// The config of one level: one class whose period spreads the fleet's ticks
    /// over time (ticks are not used by closed or open loops but must be valid).
    fn config(&self, db: PathBuf, period_ms: u64) -> Config {
        let (source, compute) = self.nodes;
        Config {
            path: PathBuf::from("<bench>"),
            classes: vec![demo::mock_class(
                "bench",
                "mock",
                period_ms,
                period_ms.min(2_000),
                source,
                compute,
            )],
            fleet: Fleet::generate(self.options.devices, &[(0, 1)]),
            sink: SinkConfig::sqlite(db),
            grpc: GrpcConfig::default(),
            tuning: self.tuning.clone(),
        }
    }

    /// A fresh interval-log file in the scratch folder for the next level; it
    /// stays there until the caller has written the level's report.
    fn next_interval_log(&self) -> PathBuf {
        let level = self.levels_run.get();
        self.levels_run.set(level + 1);
        self.options.scratch_dir.join(format!("level-{level}.hlog"))
    }

    /// Runs one level and returns its summary.
    pub fn run(&self, level: Level) -> Result<RunSummary, RunError> {
        let db = self
            .options
            .scratch_dir
            .join(format!("bench-{}.db", std::process::id()));
        let options = RunOptions {
            duration: Some(self.options.duration),
            load: match level {
                Level::Concurrency(concurrency) => Load::ClosedLoop { concurrency },
                Level::Rate(rate) => Load::OpenLoop {
                    rate,
                    poisson: self.options.poisson,
                },
                Level::TickRate(_) => Load::Ticks,
            },
            interval_log: Some(self.next_interval_log()),
            ..RunOptions::default()
        };
        let period_ms = match level {
            Level::TickRate(rate) => ((self.options.devices as f64 * 1000.0 / rate) as u64).max(1),
            _ => 10_000,
        };
        let result = dispatcher::run(&self.config(db.clone(), period_ms), &options);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        result
    }

    /// The highest rate between `low` and `high` whose p99 end-to-end latency stays
    /// under `bound_us` with no failed or skipped job, by binary search to within
    /// 5 %. Returns every level tried, and the best passing one.
    pub fn max_rate_under(
        &self,
        bound_us: u64,
        mut low: f64,
        mut high: f64,
        mut on_level: impl FnMut(Level, &RunSummary),
    ) -> Result<Option<(f64, RunSummary)>, RunError> {
        let mut best = None;
        while high > low * 1.05 {
            let rate = ((low + high) / 2.0).round();
            let summary = self.run(Level::Rate(rate))?;
            on_level(Level::Rate(rate), &summary);
            if passes(&summary, bound_us) {
                low = rate;
                best = Some((rate, summary));
            } else {
                high = rate;
            }
        }
        Ok(best)
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

/// Whether a level meets a p99 bound: every job ok and p99 end-to-end ≤ bound.
pub fn passes(summary: &RunSummary, bound_us: u64) -> bool {
    summary.counters.failed == 0
        && summary.counters.skipped == 0
        && summary.counters.ok > 0
        && summary.latency.end_to_end.value_at_quantile(0.99) <= bound_us
}

/// The sweep table: one row per level, like perf_analyzer's.
pub fn table(rows: &[(Level, RunSummary)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "level", "jobs/s", "cpu µs", "failed", "skipped", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    for (level, summary) in rows {
        let e2e = &summary.latency.end_to_end;
        let _ = writeln!(
            out,
            "{:<18} {:>10.0} {:>8.1} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
            level.to_string(),
            summary.jobs_per_s(),
            summary.cpu_us_per_job(),
            summary.counters.failed,
            summary.counters.skipped,
            e2e.value_at_quantile(0.5),
            e2e.value_at_quantile(0.99),
            e2e.value_at_quantile(0.999),
            e2e.max(),
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
