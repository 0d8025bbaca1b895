//! `percore bench --stages`: each stage of a job alone at rising load, to find
//! which one limits the pipeline and by how much.
//!
//! The stages, in order, each searched by [`crate::bench::search`] for its highest
//! open-loop rate under the latency bound (its pass criterion is
//! [`super::stage_measure`]'s and [`criterion`]'s):
//! - **fetch**: the data source alone — each job is the Fetch only;
//! - **infer**: the compute node alone — each shard fetches one payload at its
//!   start, then every job sends it to ModelInfer;
//! - **sink**: the sink alone — each job is an ok row made at once (no
//!   network), written through the real writer into the real database; the
//!   latency judged is the sink lag (row ready → committed);
//! - **job**: the whole job, fetch then infer then the sink, as `run` does.
//!
//! The pipeline's limit is the slowest of fetch, infer and sink; the whole job's
//! rate is shown beside it, to see what running them together costs.

use std::fmt::Write;

use serde_json::{json, Value};

use crate::bench::search::{thousands, SearchOutcome, SearchSettings};
use crate::bench::{Bench, Level, LevelRun};
use crate::dispatcher::{RunError, StageMode};

/// The stages in the order they run and are shown.
pub const STAGES: [StageMode; 4] = [
    StageMode::FetchOnly,
    StageMode::InferOnly,
    StageMode::SinkOnly,
    StageMode::Whole,
];

/// `--latency-bound-us` when `--stages` is given without it: 10 ms, a bound
/// most pipelines are asked to keep per job, and far enough above loopback
/// round trips that only a stage near its capacity fails it.
pub const DEFAULT_BOUND_US: u64 = 10_000;

/// A stage's pass criterion, in words, for the table, `--help` and JSON.
pub fn criterion(stage: StageMode) -> &'static str {
    match stage {
        StageMode::FetchOnly => "Fetch alone: every job ok, p99 end-to-end ≤ bound",
        StageMode::InferOnly => {
            "ModelInfer alone on a cached payload: every job ok, p99 end-to-end ≤ bound"
        }
        StageMode::SinkOnly => {
            "synthetic rows through the writer: every row committed, no tick skipped (sink backlog), p99 sink lag ≤ bound"
        }
        StageMode::Whole => "the whole job: every job ok, p99 end-to-end ≤ bound",
    }
}

/// The latency a stage's bound applies to, as the search's line names it.
fn bounded(stage: StageMode) -> &'static str {
    match stage {
        StageMode::SinkOnly => "p99 sink lag",
        _ => "p99 end-to-end",
    }
}

/// One stage's search and what it cost.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// Which stage ran alone.
    pub stage: StageMode,
    /// Its search: every rate tried, the best passing and lowest failing one.
    pub outcome: SearchOutcome,
    /// Dispatcher CPU per job (µs) at the best passing rate (the mean of its
    /// runs), or at the lowest rate when none passed: what the stage costs us.
    pub cpu_us_per_job: Option<f64>,
}

impl StageResult {
    /// The rate this stage sustains under the bound: 0 when none passed.
    fn rate(&self) -> f64 {
        self.outcome.best.unwrap_or(0.0)
    }
}

/// Which stage limits the pipeline, and by how much.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// The slowest of fetch, infer and sink.
    pub stage: StageMode,
    /// Its highest passing rate; `None` when no rate passed.
    pub rate: Option<f64>,
    /// The next slowest stage and its highest passing rate.
    pub next: (StageMode, Option<f64>),
    /// How many times faster the next stage is; `None` when the limiting stage
    /// passed no rate.
    pub factor: Option<f64>,
    /// Every one of the three passed every rate up to the upper limit: none
    /// limits the pipeline below it.
    pub none_below_limit: bool,
}

/// Every stage's result, and the bound they were held to.
#[derive(Debug, Clone)]
pub struct StagesReport {
    /// The latency bound, µs.
    pub bound_us: u64,
    /// One per stage, in [`STAGES`] order.
    pub stages: Vec<StageResult>,
}

/// Runs every stage's search on `bench`, one after another; `on_level` sees
/// each measured level of each stage.
pub fn run(
    bench: &Bench,
    settings: SearchSettings,
    mut on_level: impl FnMut(StageMode, Level, &LevelRun),
) -> Result<StagesReport, RunError> {
    let mut stages = Vec::with_capacity(STAGES.len());
    for stage in STAGES {
        let mut cpu: Vec<(f64, f64)> = Vec::new();
        let outcome = bench.max_rate_under(settings, stage, |level, run| {
            if let Level::Rate(rate) = level {
                cpu.push((rate, run.summary.cpu_us_per_job()));
            }
            on_level(stage, level, run);
        })?;
        let at = outcome.best.unwrap_or(outcome.settings.low);
        let at_rate: Vec<f64> = cpu
            .iter()
            .filter(|(rate, _)| *rate == at)
            .map(|(_, cpu)| *cpu)
            .collect();
        let cpu_us_per_job =
            (!at_rate.is_empty()).then(|| at_rate.iter().sum::<f64>() / at_rate.len() as f64);
        stages.push(StageResult {
            stage,
            outcome,
            cpu_us_per_job,
        });
    }
    Ok(StagesReport {
        bound_us: settings.bound_us,
        stages,
    })
}

impl StagesReport {
    /// The slowest of fetch, infer and sink, and the next one; `None` with
    /// fewer than two of them.
    pub fn limit(&self) -> Option<Limit> {
        let mut parts: Vec<&StageResult> = self
            .stages
            .iter()
            .filter(|result| result.stage != StageMode::Whole)
            .collect();
        parts.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let (first, second) = (parts.first()?, parts.get(1)?);
        Some(Limit {
            stage: first.stage,
            rate: first.outcome.best,
            next: (second.stage, second.outcome.best),
            factor: first.outcome.best.map(|rate| second.rate() / rate),
            none_below_limit: parts
                .iter()
                .all(|result| result.outcome.best.is_some() && result.outcome.failing.is_none()),
        })
    }

    /// The verdict line, e.g. "infer limits the pipeline: 4,100 jobs/s, 2.3×
    /// below the next stage (fetch 9,400 jobs/s)".
    pub fn verdict(&self) -> String {
        let Some(limit) = self.limit() else {
            return "not enough stages ran to name a limit".to_string();
        };
        if limit.none_below_limit {
            let high = self
                .stages
                .first()
                .map_or(0.0, |result| result.outcome.settings.high);
            return format!(
                "no stage limits the pipeline below the search's upper limit: fetch, infer and sink each passed {} jobs/s",
                thousands(high)
            );
        }
        let rate_of = |stage: StageMode, rate: Option<f64>| {
            let or_more = self
                .stages
                .iter()
                .find(|result| result.stage == stage)
                .is_some_and(|result| result.outcome.failing.is_none());
            match rate {
                Some(rate) if or_more => {
                    format!("{} {} jobs/s or more", stage.name(), thousands(rate))
                }
                Some(rate) => format!("{} {} jobs/s", stage.name(), thousands(rate)),
                None => format!("{} no rate passed", stage.name()),
            }
        };
        let next = rate_of(limit.next.0, limit.next.1);
        match (limit.rate, limit.factor) {
            (Some(rate), Some(factor)) => format!(
                "{} limits the pipeline: {} jobs/s, {factor:.1}× below the next stage ({next})",
                limit.stage.name(),
                thousands(rate)
            ),
            _ => {
                let low = self
                    .stages
                    .first()
                    .map_or(0.0, |result| result.outcome.settings.low);
                format!(
                    "{} limits the pipeline: no rate from {} jobs/s up passed its bound (next stage: {next})",
                    limit.stage.name(),
                    thousands(low)
                )
            }
        }
    }

    /// The table: one row per stage, then the verdict line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "stages, each alone (bound {} µs):", self.bound_us);
        let _ = writeln!(
            out,
            "{:<6} {:>12} {:>10} {:>10} {:>10} {:>11} {:>9}  criterion",
            "stage", "best jobs/s", "passing", "failing", "p99 µs", "cpu µs/job", "agreed"
        );
        for result in &self.stages {
            let outcome = &result.outcome;
            let best = outcome.best.map_or("–".to_string(), thousands);
            let passing = outcome.best.map_or("none".to_string(), thousands);
            let failing = outcome.failing.map_or("none".to_string(), thousands);
            let p99 = outcome
                .best_p99_us()
                .map_or("–".to_string(), |p99| p99.to_string());
            let cpu = result
                .cpu_us_per_job
                .map_or("–".to_string(), |cpu| format!("{cpu:.1}"));
            let confidence = outcome.confidence();
            let _ = writeln!(
                out,
                "{:<6} {best:>12} {passing:>10} {failing:>10} {p99:>10} {cpu:>11} {:>9}  {}",
                result.stage.name(),
                format!("{} of {}", confidence.agreed, confidence.runs),
                criterion(result.stage)
            );
        }
        for result in &self.stages {
            let _ = writeln!(
                out,
                "{}: {}",
                result.stage.name(),
                result.outcome.line(bounded(result.stage))
            );
        }
        let _ = writeln!(out, "{}", self.verdict());
        out
    }

    /// `stages.json`, and the `stages` of `--summary-json`: `{bound_us,
    /// stages: [{stage, criterion, best_rate, passing, failing, confidence,
    /// p99_us, cpu_us_per_job, levels}], limit: {stage, rate, next_stage,
    /// next_rate, factor}, verdict}`.
    pub fn to_json(&self) -> Value {
        let stages: Vec<Value> = self
            .stages
            .iter()
            .map(|result| {
                let mut search = result.outcome.to_json();
                if let Value::Object(fields) = &mut search {
                    fields.insert("stage".into(), json!(result.stage.name()));
                    fields.insert("criterion".into(), json!(criterion(result.stage)));
                    fields.insert("p99_us".into(), json!(result.outcome.best_p99_us()));
                    fields.insert("cpu_us_per_job".into(), json!(result.cpu_us_per_job));
                    fields.insert(
                        "answer".into(),
                        json!(result.outcome.line(bounded(result.stage))),
                    );
                }
                search
            })
            .collect();
        let limit = self.limit().map(|limit| {
            json!({
                "stage": limit.stage.name(),
                "rate": limit.rate,
                "next_stage": limit.next.0.name(),
                "next_rate": limit.next.1,
                "factor": limit.factor,
                "none_below_limit": limit.none_below_limit,
            })
        });
        json!({
            "bound_us": self.bound_us,
            "stages": stages,
            "limit": limit,
            "verdict": self.verdict(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::search::{Measure, RateVerdict};

    fn result(stage: StageMode, best: Option<f64>, failing: Option<f64>) -> StageResult {
        let settings = SearchSettings {
            bound_us: 10_000,
            low: 500.0,
            high: 64_000.0,
            precision: 0.05,
            warm_up: true,
        };
        let verdict = |rate: f64, passed: bool| RateVerdict {
            rate,
            runs: vec![Measure {
                p99_us: Some(if passed { 1_000 } else { 90_000 }),
                clean: true,
            }],
            passed,
        };
        let mut verdicts = Vec::new();
        verdicts.extend(best.map(|rate| verdict(rate, true)));
        verdicts.extend(failing.map(|rate| verdict(rate, false)));
        StageResult {
            stage,
            outcome: SearchOutcome {
                settings,
                verdicts,
                best,
                failing,
            },
            cpu_us_per_job: Some(12.5),
        }
    }

    fn report(stages: Vec<StageResult>) -> StagesReport {
        StagesReport {
            bound_us: 10_000,
            stages,
        }
    }

    #[test]
    fn the_slowest_stage_is_named_with_its_margin() {
        let report = report(vec![
            result(StageMode::FetchOnly, Some(9_400.0), Some(9_800.0)),
            result(StageMode::InferOnly, Some(4_100.0), Some(4_300.0)),
            result(StageMode::SinkOnly, Some(64_000.0), None),
            result(StageMode::Whole, Some(3_900.0), Some(4_100.0)),
        ]);
        assert_eq!(
            report.verdict(),
            "infer limits the pipeline: 4,100 jobs/s, 2.3× below the next stage (fetch 9,400 jobs/s)"
        );
        let json = report.to_json();
        assert_eq!(json["limit"]["stage"], "infer");
        assert_eq!(json["stages"][1]["best_rate"], 4_100.0);
        assert_eq!(json["stages"][2]["failing"], Value::Null);
        assert!(report.table().contains("infer limits the pipeline"));
    }

    #[test]
    fn a_stage_that_passed_nothing_limits_the_pipeline() {
        let report = report(vec![
            result(StageMode::FetchOnly, Some(9_400.0), Some(9_800.0)),
            result(StageMode::InferOnly, Some(20_000.0), Some(21_000.0)),
            result(StageMode::SinkOnly, None, Some(500.0)),
            result(StageMode::Whole, None, Some(500.0)),
        ]);
        assert_eq!(
            report.verdict(),
            "sink limits the pipeline: no rate from 500 jobs/s up passed its bound (next stage: fetch 9,400 jobs/s)"
        );
        assert_eq!(report.to_json()["limit"]["factor"], Value::Null);
    }

    #[test]
    fn no_stage_limits_below_the_upper_limit_when_all_passed_it() {
        let report = report(vec![
            result(StageMode::FetchOnly, Some(64_000.0), None),
            result(StageMode::InferOnly, Some(64_000.0), None),
            result(StageMode::SinkOnly, Some(64_000.0), None),
        ]);
        assert!(report.verdict().starts_with("no stage limits the pipeline"));
    }
}
