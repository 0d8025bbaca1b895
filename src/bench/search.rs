//! The search for the highest rate that keeps a latency under a bound, apart
//! from what runs a level, so its decisions can be tested on made-up levels.
//!
//! Used by `percore bench --latency-bound-us` and by each stage of
//! `percore bench --stages` (see [`crate::bench::stages`]). The search:
//! 1. runs one untimed warm-up level at the lowest rate and discards it
//!    (connections, caches and the page cache are then warm for the first
//!    measured level);
//! 2. rises from the lowest rate, doubling, until a level fails or the upper
//!    limit passes;
//! 3. bisects between the highest passing and the lowest failing rate until
//!    they are within the precision asked for.
//!
//! A level whose p99 lands within ±[`CLOSE_BAND`] of the bound is a close call:
//! it is run again, [`RUNS_WHEN_CLOSE`] times in all, and decided by majority
//! (its p99 shown is the median of the runs). The answer says how sure it is:
//! how many of the runs at the two edge levels agreed with their verdict.

use std::fmt::Write;

/// A p99 within this fraction of the bound (either side) is too close to decide
/// on one run: the level is run again.
pub const CLOSE_BAND: f64 = 0.15;

/// Runs of a close level in all (odd, so the majority is never a tie).
pub const RUNS_WHEN_CLOSE: usize = 3;

/// What the search asks of whoever runs the levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Probe {
    /// Run a warm-up level at this rate; its result is discarded.
    WarmUp(f64),
    /// Run a measured level at this rate.
    Level(f64),
}

/// What one run of a level says about the bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    /// The latency compared with the bound (µs): p99 end to end, or, for the
    /// sink stage, p99 sink lag; `None` when the level had nothing to measure
    /// (no ok job).
    pub p99_us: Option<u64>,
    /// Whether the level met everything its criterion asks beside the latency
    /// (every job ok, no tick skipped, every row committed): a level that is
    /// not clean fails whatever its latency.
    pub clean: bool,
}

impl Measure {
    /// Whether this run meets the bound.
    pub fn passes(&self, bound_us: u64) -> bool {
        self.clean && self.p99_us.is_some_and(|p99| p99 <= bound_us)
    }

    /// Whether this run's p99 is too close to the bound to trust one run (a
    /// level that is not clean is not close: it fails for another reason).
    pub fn is_close(&self, bound_us: u64) -> bool {
        let band = bound_us as f64 * CLOSE_BAND;
        self.clean
            && self
                .p99_us
                .is_some_and(|p99| (p99 as f64 - bound_us as f64).abs() <= band)
    }
}

/// The search's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchSettings {
    /// The latency bound, µs.
    pub bound_us: u64,
    /// The first rate tried (jobs/s), and the warm-up's.
    pub low: f64,
    /// The highest rate tried (jobs/s).
    pub high: f64,
    /// Bisect until the failing rate is within this fraction above the passing
    /// one (0.05: to within 5 %).
    pub precision: f64,
    /// Whether to run the warm-up level first.
    pub warm_up: bool,
}

/// The decision about one rate: its runs and their majority.
#[derive(Debug, Clone, PartialEq)]
pub struct RateVerdict {
    /// The rate (jobs/s).
    pub rate: f64,
    /// Every run of the level, in order: one, or [`RUNS_WHEN_CLOSE`] for a close call.
    pub runs: Vec<Measure>,
    /// The majority of the runs passed.
    pub passed: bool,
}

impl RateVerdict {
    /// The median p99 of the runs (µs); `None` when no run had one.
    pub fn median_p99_us(&self) -> Option<u64> {
        let mut values: Vec<u64> = self.runs.iter().filter_map(|run| run.p99_us).collect();
        values.sort_unstable();
        values.get(values.len() / 2).copied()
    }

    /// How many runs agreed with the verdict.
    pub fn agreeing(&self, bound_us: u64) -> usize {
        self.runs
            .iter()
            .filter(|run| run.passes(bound_us) == self.passed)
            .count()
    }
}

/// What a search found.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOutcome {
    /// The settings it ran with.
    pub settings: SearchSettings,
    /// Every rate decided, in the order tried.
    pub verdicts: Vec<RateVerdict>,
    /// The highest rate that passed; `None` when even the lowest failed.
    pub best: Option<f64>,
    /// The lowest rate above `best` that failed; `None` when every rate up to
    /// the upper limit passed.
    pub failing: Option<f64>,
}

/// How sure the answer is: of the runs at the edge levels (the best passing
/// rate and the lowest failing one), how many agreed with their level's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confidence {
    /// Runs at the edge levels that agreed with their level's verdict.
    pub agreed: usize,
    /// Runs at the edge levels.
    pub runs: usize,
}

impl SearchOutcome {
    /// The verdict of `rate`, the last one if it was decided more than once.
    fn verdict_at(&self, rate: Option<f64>) -> Option<&RateVerdict> {
        let rate = rate?;
        self.verdicts
            .iter()
            .rev()
            .find(|verdict| verdict.rate == rate)
    }

    /// Agreement of the runs at the edge levels.
    pub fn confidence(&self) -> Confidence {
        let bound = self.settings.bound_us;
        let edges = [self.verdict_at(self.best), self.verdict_at(self.failing)];
        let edges = edges.iter().flatten();
        Confidence {
            agreed: edges.clone().map(|verdict| verdict.agreeing(bound)).sum(),
            runs: edges.map(|verdict| verdict.runs.len()).sum(),
        }
    }

    /// The median p99 (µs) at the best passing rate.
    pub fn best_p99_us(&self) -> Option<u64> {
        self.verdict_at(self.best)
            .and_then(RateVerdict::median_p99_us)
    }

    /// The answer as one line: `what` names the latency bounded ("p99", "p99
    /// sink lag"), e.g. "highest rate with p99 ≤ 5000 µs: 41,000 jobs/s (between
    /// 41,000 passing and 43,000 failing; 3 of 3 runs agreed at the edge)".
    pub fn line(&self, what: &str) -> String {
        let bound = self.settings.bound_us;
        let Confidence { agreed, runs } = self.confidence();
        let agreement = format!("{agreed} of {runs} runs agreed at the edge");
        match (self.best, self.failing) {
            (Some(best), Some(failing)) => format!(
                "highest rate with {what} ≤ {bound} µs: {} jobs/s (between {} passing and {} failing; {agreement})",
                thousands(best),
                thousands(best),
                thousands(failing)
            ),
            (Some(best), None) => format!(
                "highest rate with {what} ≤ {bound} µs: {} jobs/s or more (every rate up to the search's upper limit passed; {agreement})",
                thousands(best)
            ),
            (None, _) => format!(
                "no rate from {} jobs/s up kept {what} ≤ {bound} µs (the lowest failed; {agreement})",
                thousands(self.settings.low)
            ),
        }
    }

    /// The search as JSON: `{bound_us, best_rate, passing, failing,
    /// confidence: {agreed, runs}, levels: [{rate, passed, runs, p99_us}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let Confidence { agreed, runs } = self.confidence();
        serde_json::json!({
            "bound_us": self.settings.bound_us,
            "best_rate": self.best,
            "passing": self.best,
            "failing": self.failing,
            "confidence": {"agreed": agreed, "runs": runs},
            "levels": self.verdicts.iter().map(|verdict| serde_json::json!({
                "rate": verdict.rate,
                "passed": verdict.passed,
                "runs": verdict.runs.len(),
                "p99_us": verdict.median_p99_us(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Searches for the highest rate between `settings.low` and `settings.high`
/// whose levels pass `settings.bound_us`, asking `run` for each warm-up and
/// level. An error from `run` ends the search with it.
pub fn search<E>(
    settings: SearchSettings,
    mut run: impl FnMut(Probe) -> Result<Measure, E>,
) -> Result<SearchOutcome, E> {
    let bound = settings.bound_us;
    let low = settings.low.max(1.0).round();
    let high = settings.high.max(low).round();
    if settings.warm_up {
        // The warm-up's result says nothing about the bound: dropped.
        run(Probe::WarmUp(low))?;
    }
    let mut verdicts = Vec::new();
    let mut decide = |rate: f64| -> Result<bool, E> {
        let mut runs = vec![run(Probe::Level(rate))?];
        if runs[0].is_close(bound) {
            while runs.len() < RUNS_WHEN_CLOSE {
                runs.push(run(Probe::Level(rate))?);
            }
        }
        let passing = runs.iter().filter(|run| run.passes(bound)).count();
        let passed = passing * 2 > runs.len();
        verdicts.push(RateVerdict { rate, runs, passed });
        Ok(passed)
    };
    let (mut best, mut failing) = (None, None);
    let mut rate = low;
    loop {
        if decide(rate)? {
            best = Some(rate);
            if rate >= high {
                break;
            }
            rate = (rate * 2.0).min(high);
        } else {
            failing = Some(rate);
            break;
        }
    }
    if let (Some(mut passing), Some(mut failed)) = (best, failing) {
        while failed > passing * (1.0 + settings.precision) {
            let middle = ((passing + failed) / 2.0).round();
            if middle <= passing || middle >= failed {
                break;
            }
            if decide(middle)? {
                passing = middle;
            } else {
                failed = middle;
            }
        }
        best = Some(passing);
        failing = Some(failed);
    }
    Ok(SearchOutcome {
        settings: SearchSettings {
            low,
            high,
            ..settings
        },
        verdicts,
        best,
        failing,
    })
}

/// A rate with thousands separators: 41000 → "41,000".
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The search's levels as lines for stderr, one per rate decided.
pub fn verdict_lines(outcome: &SearchOutcome) -> String {
    let mut out = String::new();
    for verdict in &outcome.verdicts {
        let p99 = verdict
            .median_p99_us()
            .map_or("–".to_string(), |p99| p99.to_string());
        let _ = writeln!(
            out,
            "  {:>10} jobs/s: p99 {p99} µs over {} run(s) -> {}",
            thousands(verdict.rate),
            verdict.runs.len(),
            if verdict.passed { "pass" } else { "fail" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(bound_us: u64, low: f64, high: f64) -> SearchSettings {
        SearchSettings {
            bound_us,
            low,
            high,
            precision: 0.05,
            warm_up: true,
        }
    }

    fn clean(p99_us: u64) -> Measure {
        Measure {
            p99_us: Some(p99_us),
            clean: true,
        }
    }

    /// A made-up node: p99 1 ms up to `capacity` jobs/s, 50 ms above.
    fn knee(capacity: f64) -> impl FnMut(Probe) -> Result<Measure, String> {
        move |probe| match probe {
            Probe::WarmUp(_) => Ok(clean(1)),
            Probe::Level(rate) if rate <= capacity => Ok(clean(1_000)),
            Probe::Level(_) => Ok(clean(50_000)),
        }
    }

    #[test]
    fn finds_the_knee_to_within_the_precision() {
        let outcome = search(settings(5_000, 100.0, 100_000.0), knee(4_100.0)).unwrap();
        let (best, failing) = (outcome.best.unwrap(), outcome.failing.unwrap());
        assert!(best <= 4_100.0 && failing > 4_100.0, "{best} {failing}");
        assert!(failing <= best * 1.05, "{best} {failing}");
        // No level was close to the bound: one run each, all agreed.
        assert!(outcome
            .verdicts
            .iter()
            .all(|verdict| verdict.runs.len() == 1));
        assert_eq!(outcome.confidence(), Confidence { agreed: 2, runs: 2 });
        let line = outcome.line("p99");
        assert!(
            line.starts_with(&format!(
                "highest rate with p99 ≤ 5000 µs: {} jobs/s (between {} passing and {} failing;",
                thousands(best),
                thousands(best),
                thousands(failing)
            )),
            "{line}"
        );
        assert!(line.ends_with("2 of 2 runs agreed at the edge)"), "{line}");
    }

    #[test]
    fn the_warm_up_comes_first_and_is_not_a_level() {
        let mut probes = Vec::new();
        let outcome = search(settings(5_000, 100.0, 400.0), |probe| {
            probes.push(probe);
            Ok::<_, String>(match probe {
                // A warm-up that fails would end the search at once if counted.
                Probe::WarmUp(_) => clean(1_000_000),
                Probe::Level(_) => clean(1_000),
            })
        })
        .unwrap();
        assert_eq!(probes[0], Probe::WarmUp(100.0));
        assert_eq!(
            probes[1..],
            [
                Probe::Level(100.0),
                Probe::Level(200.0),
                Probe::Level(400.0)
            ]
        );
        assert_eq!((outcome.best, outcome.failing), (Some(400.0), None));
        assert!(outcome.line("p99").contains("or more"));
    }

    #[test]
    fn a_close_level_is_run_three_times_and_the_majority_decides() {
        // At 800/s the p99 lands within 15 % of the bound: pass, fail, pass.
        let mut at_800 = [4_900u64, 5_300, 4_800].into_iter();
        let outcome = search(settings(5_000, 100.0, 1_600.0), |probe| match probe {
            Probe::WarmUp(_) => Ok::<_, String>(clean(1)),
            Probe::Level(rate) if rate < 800.0 => Ok(clean(1_000)),
            Probe::Level(800.0) => Ok(clean(at_800.next().unwrap_or(4_900))),
            Probe::Level(_) => Ok(clean(40_000)),
        })
        .unwrap();
        let at = outcome.verdicts.iter().find(|v| v.rate == 800.0).unwrap();
        assert_eq!(at.runs.len(), RUNS_WHEN_CLOSE);
        assert!(at.passed);
        assert_eq!(at.median_p99_us(), Some(4_900));
        assert_eq!(outcome.best, Some(800.0));
        // The 800/s edge had one dissenting run; the failing edge agreed.
        let confidence = outcome.confidence();
        assert_eq!(confidence.agreed, confidence.runs - 1, "{confidence:?}");
        assert!(
            outcome.line("p99").contains("of 4 runs agreed"),
            "{}",
            outcome.line("p99")
        );
    }

    #[test]
    fn a_close_level_failed_by_the_majority_fails() {
        let mut at_200 = [5_100u64, 4_900, 5_600].into_iter();
        let outcome = search(settings(5_000, 100.0, 400.0), |probe| match probe {
            Probe::WarmUp(_) => Ok::<_, String>(clean(1)),
            Probe::Level(200.0) => Ok(clean(at_200.next().unwrap_or(5_100))),
            Probe::Level(_) => Ok(clean(1_000)),
        })
        .unwrap();
        let at = outcome.verdicts.iter().find(|v| v.rate == 200.0).unwrap();
        assert_eq!((at.runs.len(), at.passed), (3, false));
        assert_eq!(at.agreeing(5_000), 2);
        assert_eq!(outcome.failing, Some(200.0));
        let best = outcome.best.unwrap();
        assert!((190.0..200.0).contains(&best), "{best}");
    }

    #[test]
    fn failed_jobs_fail_a_level_whatever_its_latency() {
        let outcome = search(settings(5_000, 100.0, 1_000.0), |probe| {
            Ok::<_, String>(match probe {
                Probe::WarmUp(_) => clean(1),
                Probe::Level(_) => Measure {
                    p99_us: Some(10),
                    clean: false,
                },
            })
        })
        .unwrap();
        assert_eq!((outcome.best, outcome.failing), (None, Some(100.0)));
        // Not clean is not close: decided on one run.
        assert_eq!(outcome.verdicts.len(), 1);
        assert_eq!(outcome.verdicts[0].runs.len(), 1);
        assert_eq!(
            outcome.line("p99"),
            "no rate from 100 jobs/s up kept p99 ≤ 5000 µs (the lowest failed; 1 of 1 runs agreed at the edge)"
        );
    }

    #[test]
    fn a_level_without_latency_fails_and_errors_end_the_search() {
        let outcome = search(settings(5_000, 100.0, 1_000.0), |_| {
            Ok::<_, String>(Measure {
                p99_us: None,
                clean: true,
            })
        })
        .unwrap();
        assert_eq!(outcome.best, None);
        let error = search(settings(5_000, 100.0, 1_000.0), |probe| match probe {
            Probe::WarmUp(_) => Ok(clean(1)),
            Probe::Level(_) => Err("the nodes went away".to_string()),
        })
        .unwrap_err();
        assert_eq!(error, "the nodes went away");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(4_100.0), "4,100");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
    }
}
