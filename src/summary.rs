//! What a run reports at its end: the `--summary-json` object, the per-stage
//! percentile table and the per-replica table.

use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::failures::FailureBreakdown;
use crate::report::{self, hlog, FailureRow, ReasonTextRow, Recording, ReplicaRow, ReportError};
use crate::sink::writer::JournalTotals;
use crate::stats::{ClassStats, Counters, StageHistograms, UpstreamTotals};

/// The merged result of one run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Number of shards that ran.
    pub shards: usize,
    /// Unix-ms window whose ticks were dispatched: `[start, end)`.
    pub window_ms: (i64, i64),
    /// Length of that window.
    pub elapsed: Duration,
    /// CPU time (user + system) of all dispatcher threads, mock nodes excluded.
    pub dispatcher_cpu: Duration,
    /// The part of `dispatcher_cpu` used by the shard threads (and glommio's helpers).
    pub shard_cpu: Duration,
    /// The part used by the sink writer thread.
    pub writer_cpu: Duration,
    /// Rows the sink committed in this run; equals `counters.jobs()` unless the
    /// sink failed, when it is what was committed before the failure.
    pub rows_written: u64,
    /// What went through the spill journal and what is still in it (all 0,
    /// `dir` `None`, without a journal). `rows_written` plus
    /// `journal.run_rows_left` equals `counters.jobs()` unless the sink failed.
    pub journal: JournalTotals,
    /// Where the rows are (e.g. the SQLite file).
    pub sink_location: String,
    /// The error that stopped the sink for good, if one did: the run was stopped
    /// and results computed after it were not written.
    pub sink_error: Option<String>,
    /// All shards together.
    pub counters: Counters,
    /// Latencies of all shards together (sink lag from the writer).
    pub latency: StageHistograms,
    /// Every shard's counters and latencies, by shard index.
    pub per_shard: Vec<ShardSummary>,
    /// Every class's counters and latencies, by class index.
    pub per_class: Vec<ClassSummary>,
    /// Every replica's counters as the shards last reported them, and each
    /// class's retry-budget refusals.
    pub upstream: UpstreamTotals,
    /// Failed jobs and skipped ticks by outcome, stage and reason class, all
    /// shards, most frequent first, with device ids resolved: the end-of-run
    /// failure table and the summary's `failures`.
    pub failures: Vec<FailureRow>,
    /// The interval log the run streamed its per-second latencies to (all shards
    /// together, second 0 = the first second after the first tick), when it kept one.
    pub interval_log: Option<PathBuf>,
    /// What was run: load, fleet, classes, tuning — for reports.
    pub config: Value,
    /// The run's id, as every row's `run_id` and the `runs` table hold it.
    pub run_id: String,
    /// What this instance ran of a shared fleet (`[cluster]`): its id, the
    /// live instances, devices run, handovers; `None` for runs not made by
    /// the dispatcher (tests that build a summary).
    pub cluster: Option<Value>,
}

/// One shard's share of a run.
#[derive(Debug, Clone)]
pub struct ShardSummary {
    pub counters: Counters,
    pub latency: StageHistograms,
    /// The shard's failure breakdown: the final metrics snapshot labels it by shard.
    pub failures: FailureBreakdown,
}

/// One class's share of a run.
#[derive(Debug, Clone)]
pub struct ClassSummary {
    /// Class and model names, as in the rows.
    pub class: String,
    pub model: String,
    /// This class's counters and latencies, all shards together.
    pub stats: ClassStats,
}

fn latency_json(latency: &StageHistograms) -> Value {
    let mut stages = serde_json::Map::new();
    for (stage, histogram) in latency.stages() {
        stages.insert(stage.to_string(), percentiles(histogram));
    }
    Value::Object(stages)
}

/// The failed jobs' time to failure, in the shape of [`latency_json`].
fn failed_latency_json(latency: &StageHistograms) -> Value {
    let mut stages = serde_json::Map::new();
    for (stage, histogram) in latency.failed.stages() {
        let stage = stage.strip_prefix("failed_").unwrap_or(stage);
        stages.insert(stage.to_string(), percentiles(histogram));
    }
    Value::Object(stages)
}

/// What `latency_us` holds, written beside it: it has always been the ok jobs'.
pub const LATENCY_US_OF: &str = "ok jobs (schedule_lag: every job that ran; sink_lag: every row)";

/// What `latency_failed_us` holds, written beside it.
pub const LATENCY_FAILED_US_OF: &str =
    "failed jobs: time to failure of the stage that failed (fetch, infer) and end to end";

fn percentiles(histogram: &Histogram<u64>) -> Value {
    json!({
        "p50": histogram.value_at_quantile(0.50),
        "p90": histogram.value_at_quantile(0.90),
        "p99": histogram.value_at_quantile(0.99),
        "p999": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
        "count": histogram.len(),
    })
}

impl RunSummary {
    pub fn jobs_per_s(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.counters.jobs() as f64 / seconds
        } else {
            0.0
        }
    }

    pub fn cpu_us_per_job(&self) -> f64 {
        match self.counters.jobs() {
            0 => 0.0,
            jobs => self.dispatcher_cpu.as_secs_f64() * 1e6 / jobs as f64,
        }
    }

    /// The `--summary-json` object.
    pub fn to_json(&self) -> Value {
        let jobs = self.counters.jobs().max(1) as f64;
        let per_job = |cpu: Duration| cpu.as_secs_f64() * 1e6 / jobs;
        json!({
            "run_id": self.run_id,
            "cluster": self.cluster,
            "jobs": self.counters.jobs(),
            "ok": self.counters.ok,
            "failed": self.counters.failed,
            "skipped": self.counters.skipped,
            "retries": self.counters.retries,
            "rows_written": self.rows_written,
            "results_not_written": self.counters.jobs().saturating_sub(self.rows_written),
            "sink_error": self.sink_error,
            "sink_journal_dir": self.journal.dir.as_ref().map(|dir| dir.display().to_string()),
            "sink_rows_journaled": self.journal.rows_journaled,
            "sink_rows_replayed": self.journal.rows_replayed,
            "sink_leftover_rows_replayed": self.journal.leftover_rows_replayed,
            "sink_journal_bytes": self.journal.bytes,
            "sink_journal_rows_left": self.journal.rows_left,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "jobs_per_s": self.jobs_per_s(),
            "cpu_us_per_job": self.cpu_us_per_job(),
            "dispatcher_cpu_s": self.dispatcher_cpu.as_secs_f64(),
            "cpu_us_per_job_by_thread": {
                "shards": per_job(self.shard_cpu),
                "sink_writer": per_job(self.writer_cpu),
                "coordinator": per_job(self.dispatcher_cpu.saturating_sub(self.shard_cpu + self.writer_cpu)),
            },
            "shards": self.shards,
            "window_unix_ms": [self.window_ms.0, self.window_ms.1],
            "sink": self.sink_location,
            "latency_us": latency_json(&self.latency),
            "latency_us_of": LATENCY_US_OF,
            "latency_failed_us": failed_latency_json(&self.latency),
            "latency_failed_us_of": LATENCY_FAILED_US_OF,
            "per_shard": self.per_shard.iter().enumerate().map(|(shard, s)| json!({
                "shard": shard, "ok": s.counters.ok, "failed": s.counters.failed,
                "skipped": s.counters.skipped, "retries": s.counters.retries,
                "bytes_sent": s.counters.bytes_sent,
                "bytes_received": s.counters.bytes_received,
                "latency_us": latency_json(&s.latency),
                "latency_failed_us": failed_latency_json(&s.latency),
            })).collect::<Vec<_>>(),
            "per_class": self.per_class.iter().enumerate().map(|(index, c)| json!({
                "class": c.class, "model": c.model, "ok": c.stats.counters.ok,
                "failed": c.stats.counters.failed, "skipped": c.stats.counters.skipped,
                "retry_budget_exhausted": self.upstream.retry_budget_exhausted.get(index).copied().unwrap_or(0),
                "latency_us": latency_json(&c.stats.latency),
                "latency_failed_us": failed_latency_json(&c.stats.latency),
            })).collect::<Vec<_>>(),
            "replicas": serde_json::to_value(self.replica_rows()).unwrap_or_default(),
            "failures": serde_json::to_value(&self.failures).unwrap_or_default(),
            "config": self.config,
        })
    }

    /// The end-of-run table: one row per stage, latencies in microseconds, each
    /// labelled with the jobs it counts; the failed jobs' time to failure in
    /// rows of their own when any job failed.
    pub fn latency_table(&self) -> String {
        report::latency_table(&self.latency.stages(), &self.latency.failed.stages())
    }

    /// Every replica, as the summary's `replicas` array holds it: class names
    /// instead of indices.
    pub fn replica_rows(&self) -> Vec<ReplicaRow> {
        self.upstream
            .replicas
            .iter()
            .map(|replica| ReplicaRow {
                class: self
                    .per_class
                    .get(usize::from(replica.class))
                    .map_or_else(|| replica.class.to_string(), |c| c.class.clone()),
                role: replica.role.label().to_string(),
                replica: replica.node.to_string(),
                requests: replica.requests,
                failures: replica.failures,
                ejections: replica.ejections,
                ewma_latency_us: replica.ewma_latency_us,
                outstanding: replica.outstanding,
                ready_shards: replica.ready_shards,
                ejected_shards: replica.ejected_shards,
                shards: replica.shards,
            })
            .collect()
    }

    /// The end-of-run failure table (empty when nothing failed or was skipped).
    pub fn failure_table(&self) -> String {
        report::failure_table(&self.failures)
    }

    /// Whether every job that ran failed: at least one ran and none was ok.
    /// Skipped ticks did not run, so they neither count nor prevent it.
    pub fn every_job_failed(&self) -> bool {
        self.counters.failed > 0 && self.counters.ok == 0
    }

    /// The end-of-run replica table (empty when no replica was reported).
    pub fn replica_table(&self) -> String {
        report::replica_table(&self.replica_rows())
    }

    /// The run as the report layer stores it: the summary object and one interval
    /// histogram per stage per second, read back from the run's interval log
    /// (none when the run kept no log).
    pub fn recording(&self) -> Result<Recording, ReportError> {
        let intervals = match &self.interval_log {
            None => Vec::new(),
            Some(path) => {
                let text =
                    std::fs::read(path).map_err(|error| ReportError::io(path, "read", error))?;
                hlog::read_log(&text, path)?
            }
        };
        Ok(Recording {
            summary: self.to_json(),
            intervals,
        })
    }

    /// One line on the spill journal, when rows went through it or are left
    /// in it: how many were journaled and replayed, and what stays on disk.
    pub fn journal_line(&self) -> Option<String> {
        let journal = &self.journal;
        let dir = journal.dir.as_ref()?;
        if journal.rows_journaled == 0 && journal.rows_replayed == 0 && journal.rows_left == 0 {
            return None;
        }
        let mut line = format!(
            "journal {}: {} rows journaled, {} replayed",
            dir.display(),
            journal.rows_journaled,
            journal.rows_replayed
        );
        if journal.leftover_rows_replayed > 0 {
            line.push_str(&format!(
                " ({} of them left by an earlier run)",
                journal.leftover_rows_replayed
            ));
        }
        if journal.rows_left > 0 {
            line.push_str(&format!(
                "; {} rows ({} bytes) are still in it and are replayed at the next start",
                journal.rows_left, journal.bytes
            ));
        }
        if journal.rows_lost > 0 {
            line.push_str(&format!(
                "; {} rows lost to damaged journal records",
                journal.rows_lost
            ));
        }
        Some(line)
    }

    /// One line with the totals.
    pub fn totals_line(&self) -> String {
        format!(
            "{} jobs in {:.1} s ({:.0} jobs/s): ok {}, failed {}, skipped {}; dispatcher CPU {:.1} µs/job on {} shard(s)",
            self.counters.jobs(),
            self.elapsed.as_secs_f64(),
            self.jobs_per_s(),
            self.counters.ok,
            self.counters.failed,
            self.counters.skipped,
            self.cpu_us_per_job(),
            self.shards,
        )
    }
}

/// A merged breakdown as the summary's rows: most frequent first, shares out
/// of `jobs` (all outcomes).
pub fn failure_rows(breakdown: &FailureBreakdown, jobs: u64) -> Vec<FailureRow> {
    breakdown
        .by_count()
        .into_iter()
        .map(|entry| FailureRow {
            outcome: entry.outcome().to_string(),
            stage: entry.stage_label().to_string(),
            reason: entry.class.label().to_string(),
            count: entry.count,
            share: entry.count as f64 / jobs.max(1) as f64,
            reasons: entry
                .texts
                .iter()
                .map(|text| ReasonTextRow {
                    text: text.text.to_string(),
                    count: text.count,
                    example_device: text.example_device.to_string(),
                })
                .collect(),
            other_reasons: entry.other_texts,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, JobError, Stage};
    use crate::grpc::status::Code;
    use crate::record::{JobRecord, Outcome, SkipReason, StageLatency};
    use crate::stats::{ReplicaRole, ReplicaTotals};

    #[test]
    fn json_has_the_documented_shape_and_derived_rates() {
        // 600 NOT_FOUND on infer (two texts), 300 deadlines on fetch, 100 skips.
        let mut breakdown = FailureBreakdown::default();
        let mut buffer = String::new();
        let mut push = |device: u32, outcome: Outcome| {
            let record = JobRecord {
                device: crate::record::DeviceId::new(&format!("dev-{device}")),
                tick_ms: 0,
                class: 0,
                shard: 0,
                outcome,
                outputs: Vec::new(),
                latency: StageLatency::default(),
                compute_node: None,
                attempts: 1,
                ready_at: std::time::Instant::now(),
            };
            breakdown.record(&record, &mut buffer);
        };
        for device in 0..600 {
            let message = if device % 3 == 0 {
                "model b"
            } else {
                "model a"
            };
            let kind = ErrorKind::Status {
                code: Code::NOT_FOUND,
                message: message.into(),
            };
            push(device, Outcome::Failed(JobError::new(Stage::Infer, kind)));
        }
        for device in 0..300 {
            let kind = ErrorKind::DeadlineExceeded;
            push(
                device + 7,
                Outcome::Failed(JobError::new(Stage::Fetch, kind)),
            );
        }
        for device in 0..100 {
            push(device, Outcome::Skipped(SkipReason::SinkBacklog));
        }
        let mut latency = StageHistograms::default();
        for us in 1..=1000 {
            latency.end_to_end.record(us).unwrap();
        }
        for us in 1..=900 {
            latency.failed.end_to_end.record(us * 2).unwrap();
            latency.failed.infer.record(us).unwrap();
        }
        let summary = RunSummary {
            shards: 2,
            window_ms: (1_000, 11_000),
            elapsed: Duration::from_secs(10),
            dispatcher_cpu: Duration::from_millis(50),
            shard_cpu: Duration::from_millis(30),
            writer_cpu: Duration::from_millis(15),
            rows_written: 5_000,
            journal: JournalTotals {
                dir: Some("spill".into()),
                rows_journaled: 300,
                rows_replayed: 320,
                leftover_rows_replayed: 20,
                leftover_rows: 20,
                ..JournalTotals::default()
            },
            sink_location: "x.db".into(),
            sink_error: None,
            run_id: "6f1c2d3e-0000-4000-8000-000000000001".into(),
            cluster: None,
            counters: Counters {
                ok: 4_000,
                failed: 900,
                skipped: 100,
                ..Counters::default()
            },
            latency: latency.clone(),
            per_shard: vec![ShardSummary {
                counters: Counters {
                    ok: 4_000,
                    ..Counters::default()
                },
                latency: latency.clone(),
                failures: FailureBreakdown::default(),
            }],
            per_class: vec![ClassSummary {
                class: "camera".into(),
                model: "resnet50".into(),
                stats: ClassStats {
                    counters: Counters {
                        failed: 900,
                        ..Counters::default()
                    },
                    latency,
                },
            }],
            upstream: UpstreamTotals {
                replicas: vec![
                    ReplicaTotals {
                        class: 0,
                        role: ReplicaRole::ComputeNode,
                        node: "127.0.0.1:9001".into(),
                        requests: 3_000,
                        failures: 600,
                        ejections: 2,
                        ewma_latency_us: 800.0,
                        outstanding: 0,
                        ready_shards: 2,
                        ejected_shards: 0,
                        shards: 2,
                    },
                    ReplicaTotals {
                        class: 0,
                        role: ReplicaRole::ComputeNode,
                        node: "127.0.0.1:9002".into(),
                        requests: 1_000,
                        failures: 300,
                        ..ReplicaTotals::default()
                    },
                ],
                retry_budget_exhausted: vec![12],
            },
            failures: failure_rows(&breakdown, 5_000),
            interval_log: None,
            config: json!({"load": {"mode": "ticks"}}),
        };
        let json = summary.to_json();
        assert_eq!(json["jobs"], 5_000);
        assert_eq!(json["sink_rows_journaled"], 300);
        assert_eq!(json["sink_rows_replayed"], 320);
        assert_eq!(json["sink_leftover_rows_replayed"], 20);
        assert_eq!(json["sink_journal_bytes"], 0);
        assert_eq!(json["sink_journal_dir"], "spill");
        assert_eq!(
            summary.journal_line().as_deref(),
            Some("journal spill: 300 rows journaled, 320 replayed (20 of them left by an earlier run)")
        );
        assert_eq!(json["jobs_per_s"], 500.0);
        assert_eq!(json["cpu_us_per_job"], 10.0);
        assert_eq!(json["cpu_us_per_job_by_thread"]["shards"], 6.0);
        assert_eq!(json["cpu_us_per_job_by_thread"]["coordinator"], 1.0);
        assert_eq!(json["latency_us"]["end_to_end"]["p50"], 500);
        assert_eq!(json["latency_us"]["end_to_end"]["max"], 1000);
        assert!(json["latency_us"]["fetch"]["p999"].is_u64());
        // Failed jobs' time to failure beside the ok jobs', in the same shape.
        assert_eq!(json["latency_us_of"], LATENCY_US_OF);
        assert_eq!(json["latency_failed_us"]["end_to_end"]["count"], 900);
        assert_eq!(json["latency_failed_us"]["end_to_end"]["max"], 1800);
        assert_eq!(json["latency_failed_us"]["infer"]["p50"], 450);
        assert_eq!(json["latency_failed_us"]["fetch"]["count"], 0);
        assert_eq!(
            json["per_class"][0]["latency_failed_us"]["end_to_end"]["count"],
            900
        );
        assert_eq!(json["per_shard"][0]["ok"], 4_000);
        assert_eq!(json["per_shard"][0]["latency_us"]["end_to_end"]["p50"], 500);
        assert_eq!(json["per_class"][0]["class"], "camera");
        assert_eq!(json["per_class"][0]["failed"], 900);
        assert_eq!(json["config"]["load"]["mode"], "ticks");
        assert_eq!(json["per_class"][0]["retry_budget_exhausted"], 12);
        assert_eq!(json["replicas"][0]["class"], "camera");
        assert_eq!(json["replicas"][0]["role"], "compute_node");
        assert_eq!(json["replicas"][0]["replica"], "127.0.0.1:9001");
        assert_eq!(json["replicas"][0]["requests"], 3_000);
        assert_eq!(json["replicas"][1]["failures"], 300);
        // What `percore report` reads back is what was written.
        assert_eq!(crate::report::replica_rows(&json), summary.replica_rows());
        assert_eq!(crate::report::failure_rows(&json), summary.failures);
        assert_eq!(json["failures"][0]["outcome"], "failed");
        assert_eq!(json["failures"][0]["stage"], "infer");
        assert_eq!(json["failures"][0]["reason"], "grpc NOT_FOUND");
        assert_eq!(json["failures"][0]["count"], 600);
        assert_eq!(json["failures"][0]["share"], 0.12);
        assert_eq!(json["failures"][1]["reason"], "deadline");
        assert_eq!(json["failures"][1]["reasons"][0]["example_device"], "dev-7");
        assert_eq!(json["failures"][2]["stage"], "start");
        let top = summary.failures[0].top_reason().unwrap();
        assert_eq!(top.text, "infer: grpc status 5 NOT_FOUND: model a");
        assert_eq!((top.count, top.example_device.as_str()), (400, "dev-1"));
        let table = summary.failure_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[1].starts_with("failed   infer  grpc NOT_FOUND")
                && lines[1].contains(" 600 ")
                && lines[1].contains("12.0%")
                && lines[1].contains("dev-1")
                && lines[1].ends_with("infer: grpc status 5 NOT_FOUND: model a"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("skipped  start  sink backlog"),
            "{table}"
        );
        assert!(!summary.every_job_failed());
        let table = summary.replica_table();
        assert!(
            table.lines().any(|l| l.starts_with("camera")
                && l.contains("127.0.0.1:9002")
                && l.ends_with("25.0%")),
            "{table}"
        );
        let table = summary.latency_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[5].starts_with("end_to_end    ok ") && lines[5].contains(" 500 "),
            "{table}"
        );
        assert_eq!(lines[6], "failed: time to failure", "{table}");
        assert!(
            lines[8].starts_with("infer         failed        900")
                && lines[9].starts_with("end_to_end    failed        900")
                && lines[9].ends_with(" 1800"),
            "{table}"
        );
    }
}
