//! One measured window of a run, machine-wide: the co-runner's calibration before
//! the run, then what the spinners lost and what every process was charged while
//! the client worked, and from both the client's caused CPU.

use std::time::Duration;

use crate::corunner::{self, Calibration, CoRunner, Known, Lost, Snapshot};
use crate::machine::{Sample, Usage, DISTURBED_CORES};

/// How long the spinners run alone to measure their speed.
pub const CALIBRATION: Duration = Duration::from_secs(1);
/// Spinners run this long before a calibration starts (wake-up, migration).
const SETTLE: Duration = Duration::from_millis(100);
/// Calibrations made again when other processes disturbed them.
const CALIBRATION_ATTEMPTS: usize = 3;

/// The calibration of one run.
#[derive(Debug, Clone)]
pub struct Calibrated {
    pub calibration: Calibration,
    /// What the spinners lost while calibrating, in cores (all CPUs).
    pub lost: f64,
    /// What known processes were charged meanwhile.
    pub known: Known,
    /// This calibration's unexplained background, in cores.
    pub unexplained: f64,
    /// The background subtracted: the median of the last calibrations'.
    pub background: f64,
}

/// Both ends' state of a window.
pub struct Edge {
    snapshot: Option<Snapshot>,
    sample: Sample,
}

impl Edge {
    pub fn take(co_runner: Option<&CoRunner>) -> Edge {
        Edge {
            snapshot: co_runner.map(CoRunner::snapshot),
            sample: Sample::take(),
        }
    }

    pub fn sample(&self) -> &Sample {
        &self.sample
    }
}

/// What a window showed.
#[derive(Debug, Clone)]
pub struct Figures {
    /// By the kernel's accounting.
    pub usage: Usage,
    /// By the co-runner, with its calibration; `None` without one.
    pub co_runner: Option<CoRunnerFigures>,
}

#[derive(Debug, Clone)]
pub struct CoRunnerFigures {
    pub calibrated: Calibrated,
    /// What the spinners lost on each CPU.
    pub lost: Lost,
    /// What known processes other than the client were charged (mocks, ours, others).
    pub known: Known,
    /// The client's caused CPU in cores ([`corunner::caused_cores`]).
    pub caused_cores: f64,
    /// What the kernel charged the mocks for the spinner's time on their CPU.
    pub mock_overcharge: f64,
}

/// Lets the spinners run alone and measures their speed (again, when other
/// processes took more than [`DISTURBED_CORES`] meanwhile). Leaves them running.
pub fn calibrate(co_runner: &CoRunner) -> Result<Calibrated, String> {
    co_runner.resume();
    let mut attempt = 0;
    loop {
        attempt += 1;
        std::thread::sleep(SETTLE);
        let before = Edge::take(Some(co_runner));
        std::thread::sleep(CALIBRATION);
        let after = Edge::take(Some(co_runner));
        let (Some(b), Some(a)) = (&before.snapshot, &after.snapshot) else {
            unreachable!("both edges were taken with the co-runner");
        };
        let calibration = Calibration::from_snapshots(co_runner.cpus(), b, a)?;
        let usage = before
            .sample
            .usage(&after.sample, -1, &[], co_runner.cpus());
        let known = Known {
            mocks: 0.0,
            ours: usage.ours_cores,
            others: usage.other_cores,
        };
        if known.others <= DISTURBED_CORES || attempt == CALIBRATION_ATTEMPTS {
            let lost = calibration.background().total();
            let unexplained = corunner::unexplained(lost, &known);
            return Ok(Calibrated {
                calibration,
                lost,
                known,
                unexplained,
                background: co_runner.background(unexplained),
            });
        }
        eprintln!(
            "compare: other processes used {:.2} cores while calibrating; again",
            known.others
        );
    }
}

/// The figures of the window between `before` and `after`, for the client rooted
/// at `client` and the mocks `mocks`.
pub fn figures(
    before: &Edge,
    after: &Edge,
    calibrated: Option<&Calibrated>,
    client: i32,
    mocks: &[i32],
    cpus: &[usize],
) -> Figures {
    let usage = before.sample.usage(&after.sample, client, mocks, cpus);
    let co_runner = match (calibrated, &before.snapshot, &after.snapshot) {
        (Some(calibrated), Some(b), Some(a)) => {
            let lost = calibrated.calibration.lost(b, a);
            let known = Known {
                mocks: usage.mock_cores,
                ours: usage.ours_cores,
                others: usage.other_cores,
            };
            // The mocks run on the last CPU.
            let mock_overcharge = lost.undercharged(lost.lost.len().saturating_sub(1));
            let caused_cores = corunner::caused_cores(
                lost.total(),
                &known,
                calibrated.background,
                mock_overcharge,
            );
            Some(CoRunnerFigures {
                calibrated: calibrated.clone(),
                lost,
                known,
                caused_cores,
                mock_overcharge,
            })
        }
        _ => None,
    };
    Figures { usage, co_runner }
}
