//! The run's per-second latencies while they can still change, and the
//! interval log they are streamed to.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::RunError;
use crate::report::hlog::LogWriter;
use crate::stats::StageHistograms;

/// The run's per-second latencies while they can still change. A second stays
/// open for [`SECONDS_KEPT_OPEN`] seconds, until every shard's interval and the
/// sink's lag for it have come in; then it is appended to the interval log (if
/// the run keeps one) and dropped, so a run of any length holds a few seconds.
pub(super) struct PerSecond {
    /// Seconds of the run (0 = the first second after the first tick) still open.
    pub(super) open: BTreeMap<u64, StageHistograms>,
    /// Where closed seconds go, if anywhere; `None` also after a write error.
    pub(super) log: Option<LogWriter<BufWriter<File>>>,
    /// The log's path, handed to the summary once the log is complete.
    pub(super) path: Option<PathBuf>,
    /// Seconds before this one were closed: an interval arriving for one of them
    /// is filed under this one instead (it cannot be appended to the log any more).
    pub(super) first_open: u64,
    /// Seconds from this one on are past the run's window (known at the end):
    /// their empty stages are not written.
    pub(super) after_window: u64,
}

impl PerSecond {
    /// Starts the interval log at `path` for a run starting at `start_ms`.
    pub(super) fn open(path: Option<PathBuf>, start_ms: i64) -> Result<PerSecond, RunError> {
        let log = match &path {
            None => None,
            Some(path) => {
                let cannot = |error: std::io::Error| {
                    RunError(format!(
                        "cannot write the interval log {}: {error}",
                        path.display()
                    ))
                };
                if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(cannot)?;
                }
                let file = BufWriter::new(File::create(path).map_err(cannot)?);
                Some(LogWriter::begin(file, start_ms).map_err(cannot)?)
            }
        };
        Ok(PerSecond {
            open: BTreeMap::new(),
            log,
            path,
            first_open: 0,
            after_window: u64::MAX,
        })
    }

    pub(super) fn slot(&mut self, second: u64) -> &mut StageHistograms {
        self.open.entry(second.max(self.first_open)).or_default()
    }

    pub(super) fn add_shard(&mut self, second: u64, latency: &StageHistograms) {
        self.slot(second).add(latency);
    }

    pub(super) fn add_sink_lag(&mut self, second: u64, lag: &Histogram<u64>) {
        let _ = self.slot(second).sink_lag.add(lag);
    }

    pub(super) fn get(&self, second: u64) -> Option<&StageHistograms> {
        self.open.get(&second)
    }

    /// Writes every open second before `second` to the log and drops it.
    pub(super) fn close_before(&mut self, second: u64) {
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= second {
                break;
            }
            let (closed, latency) = entry.remove_entry();
            self.write(closed, &latency);
        }
        self.first_open = self.first_open.max(second);
    }

    pub(super) fn write(&mut self, second: u64, latency: &StageHistograms) {
        let Some(log) = &mut self.log else { return };
        for (index, (stage, histogram)) in latency.tagged().into_iter().enumerate() {
            // The failed and skipped tags only when there were some: an absent
            // tag reads as none, and a healthy run's log stays as it was.
            let ok_stage = index < crate::stats::STAGES.len();
            if (second >= self.after_window || !ok_stage) && histogram.is_empty() {
                continue;
            }
            let interval = crate::report::Interval {
                start: Duration::from_secs(second),
                length: Duration::from_secs(1),
                stage: stage.to_string(),
                histogram: histogram.clone(),
            };
            if let Err(error) = log.append(&interval) {
                // The run goes on: its rows matter more than its plots.
                crate::console::err(format_args!("warning: interval log stopped: {error}"));
                self.log = None;
                self.path = None;
                return;
            }
        }
    }

    /// Closes every second and the log; returns the log's path if it is whole.
    /// From `window_seconds` on (after the run's window: jobs draining, the
    /// writer's last commits) only stages that had samples are written: an
    /// empty end-to-end interval there would be drawn as a drop to zero that
    /// did not happen.
    pub(super) fn finish(&mut self, window_seconds: u64) -> Option<PathBuf> {
        self.after_window = window_seconds;
        self.close_before(u64::MAX);
        let log = self.log.take()?;
        match log.finish() {
            Ok(_) => self.path.take(),
            Err(error) => {
                crate::console::err(format_args!(
                    "warning: cannot finish the interval log: {error}"
                ));
                None
            }
        }
    }
}
