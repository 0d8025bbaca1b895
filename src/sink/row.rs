//! The row every sink writes: a [`JobRecord`] with its names resolved, in the
//! columns of the `jobs` table — the one place the column mapping lives.
//!
//! The writer resolves a batch of records once ([`Resolver::resolve`]) and hands
//! the same rows to whichever backend it drives (SQLite, PostgreSQL) or to the
//! spill journal; rows read back from the journal are the same type, owning
//! their text. Resolving allocates one vector per batch: device ids are borrowed
//! from the records, class names from the class table, and failure reasons are
//! formatted into one text buffer the batch's rows borrow from.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::RowNames;
use crate::record::{JobRecord, Outcome, Output};

/// The columns of the `jobs` table, in the order [`Row`] lists them and every
/// backend writes them.
pub const COLUMNS: [&str; 15] = [
    "device_id",
    "tick_ms",
    "class",
    "model",
    "outcome",
    "reason",
    "output",
    "schedule_lag_us",
    "fetch_us",
    "infer_us",
    "end_to_end_us",
    "shard",
    "compute_node",
    "attempts",
    "run_id",
];

/// One row of the `jobs` table. Keyed by (`device_id`, `tick_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    /// The device's id.
    pub device_id: Cow<'a, str>,
    /// The planned tick, Unix ms: with the device, the row's key.
    pub tick_ms: i64,
    /// The device's class, as the config names it.
    pub class: Cow<'a, str>,
    /// The model the class's jobs run.
    pub model: Cow<'a, str>,
    /// `ok`, `failed` or `skipped` ([`Outcome::label`]).
    pub outcome: Cow<'a, str>,
    /// Why a job failed or a tick was skipped; `None` for an ok job.
    pub reason: Option<Cow<'a, str>>,
    /// The first output tensor's bytes; empty (NULL in the table) unless ok.
    pub output: Bytes,
    /// Every output tensor, the first included: the `job_outputs` rows of this
    /// (device, tick). Empty unless ok.
    pub outputs: Cow<'a, [Output]>,
    /// Planned tick → job start, µs.
    pub schedule_lag_us: i64,
    /// The fetch's time (to its answer or its failure), µs; `None` if not run.
    pub fetch_us: Option<i64>,
    /// The infer's time (to its answer or its failure), µs; `None` if not run.
    pub infer_us: Option<i64>,
    /// Planned tick → result, µs; `None` for a skipped tick.
    pub end_to_end_us: Option<i64>,
    /// The shard that ran or skipped the tick.
    pub shard: i64,
    /// The compute replica (`host:port`) whose answer ended the job, if one did.
    pub compute_node: Option<Cow<'a, str>>,
    /// Attempts sent, fetch and infer together.
    pub attempts: i64,
    /// The run that computed the row ([`super::run::RunIdentity::run_id`]); a row
    /// replayed from a journal keeps the run it came from.
    pub run_id: Cow<'a, str>,
}

impl Row<'_> {
    /// The same row owning all its text (for the journal's reader, or to keep
    /// a row past its batch).
    pub fn into_owned(self) -> Row<'static> {
        let own = |text: Cow<'_, str>| Cow::Owned(text.into_owned());
        Row {
            device_id: own(self.device_id),
            tick_ms: self.tick_ms,
            class: own(self.class),
            model: own(self.model),
            outcome: own(self.outcome),
            reason: self.reason.map(own),
            output: self.output,
            outputs: Cow::Owned(self.outputs.into_owned()),
            schedule_lag_us: self.schedule_lag_us,
            fetch_us: self.fetch_us,
            infer_us: self.infer_us,
            end_to_end_us: self.end_to_end_us,
            shard: self.shard,
            compute_node: self.compute_node.map(own),
            attempts: self.attempts,
            run_id: own(self.run_id),
        }
    }

    /// The output column's value: `None` (NULL) when there is no output.
    pub fn output(&self) -> Option<&[u8]> {
        (!self.output.is_empty()).then_some(&self.output[..])
    }
}

/// A record whose indexes do not resolve: a bug upstream, reported as the
/// batch's failure rather than a panic of the writer thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveError {
    /// The record's tick, to find it.
    pub tick_ms: i64,
    /// What did not resolve.
    pub detail: String,
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resolving the names of row (tick {}): {}",
            self.tick_ms, self.detail
        )
    }
}

impl std::error::Error for ResolveError {}

/// Turns batches of records into rows; owned by the writer thread.
pub struct Resolver {
    /// Device ids and class names the records' indexes point into.
    names: Arc<RowNames>,
    /// The batch's failure reasons, one after another; the rows borrow slices.
    text: String,
    /// Per record of the batch: where its reason is in `text`.
    spans: Vec<Option<Range<usize>>>,
}

impl Resolver {
    pub fn new(names: Arc<RowNames>) -> Resolver {
        Resolver {
            names,
            text: String::new(),
            spans: Vec::new(),
        }
    }

    /// The names the records are resolved against.
    pub fn names(&self) -> &RowNames {
        &self.names
    }

    /// Resolves with `names` from now on (a live reload's classes or compute nodes).
    pub fn rename(&mut self, names: Arc<RowNames>) {
        self.names = names;
    }

    /// The rows of `records`, in the same order; fails on the first record
    /// whose class index is out of range.
    pub fn resolve<'s>(
        &'s mut self,
        records: &'s [JobRecord],
    ) -> Result<Vec<Row<'s>>, ResolveError> {
        self.text.clear();
        self.spans.clear();
        for record in records {
            let start = self.text.len();
            // Writing to a String cannot fail; a failing Display would only cut the text.
            let _ = match &record.outcome {
                Outcome::Ok => {
                    self.spans.push(None);
                    continue;
                }
                Outcome::Failed(error) => write!(self.text, "{error}"),
                Outcome::Skipped(reason) => write!(self.text, "{reason}"),
            };
            self.spans.push(Some(start..self.text.len()));
        }
        let names = &*self.names;
        let text = self.text.as_str();
        records
            .iter()
            .zip(&self.spans)
            .map(|(record, span)| {
                let bad = |detail: String| ResolveError {
                    tick_ms: record.tick_ms,
                    detail,
                };
                let class = names
                    .classes
                    .get(usize::from(record.class))
                    .ok_or_else(|| {
                        bad(format!(
                            "class index {} is outside the {} configured classes",
                            record.class,
                            names.classes.len()
                        ))
                    })?;
                let latency = &record.latency;
                Ok(Row {
                    device_id: Cow::Borrowed(record.device.as_str()),
                    tick_ms: record.tick_ms,
                    class: Cow::Borrowed(&class.class),
                    model: Cow::Borrowed(&class.model),
                    outcome: Cow::Borrowed(record.outcome.label()),
                    reason: span.clone().map(|span| Cow::Borrowed(&text[span])),
                    output: record
                        .outputs
                        .first()
                        .map(|output| output.bytes.clone())
                        .unwrap_or_default(),
                    outputs: if class.all_outputs {
                        Cow::Borrowed(&record.outputs)
                    } else {
                        Cow::Borrowed(&[])
                    },
                    schedule_lag_us: micros(latency.schedule_lag_us),
                    fetch_us: latency.fetch_us.map(micros),
                    infer_us: latency.infer_us.map(micros),
                    end_to_end_us: latency.end_to_end_us.map(micros),
                    shard: i64::from(record.shard),
                    compute_node: record
                        .compute_node
                        .and_then(|index| class.compute_nodes.get(usize::from(index)))
                        .map(|node| Cow::Borrowed(node.as_str())),
                    attempts: i64::from(record.attempts),
                    run_id: Cow::Borrowed(&names.run.run_id),
                })
            })
            .collect()
    }
}

/// A duration for an integer column. Both databases' integers are i64; 2^63 µs
/// is ~292,000 years, so saturating never changes a real value and keeps a
/// corrupt one from failing the batch.
fn micros(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, JobError, Stage};
    use crate::grpc::status::Code;
    use crate::record::{SkipReason, StageLatency};
    use crate::sink::ClassNames;

    fn names() -> Arc<RowNames> {
        Arc::new(RowNames {
            classes: vec![
                ClassNames {
                    all_outputs: true,
                    class: "camera".into(),
                    model: "yolo".into(),
                    compute_nodes: vec!["10.0.0.1:8001".into(), "10.0.0.2:8001".into()],
                },
                ClassNames {
                    all_outputs: true,
                    class: "thermostat".into(),
                    model: "anomaly".into(),
                    compute_nodes: Vec::new(),
                },
            ],
            run: crate::sink::run::RunIdentity::new("row-test"),
        })
    }

    fn record(device: &str, class: u16, outcome: Outcome) -> JobRecord {
        JobRecord {
            device: crate::record::DeviceId::new(device),
            tick_ms: 1_700_000_000_000,
            class,
            shard: 1,
            outcome,
            outputs: Vec::new(),
            latency: StageLatency {
                schedule_lag_us: 5,
                fetch_us: Some(300),
                infer_us: None,
                end_to_end_us: Some(u64::MAX),
            },
            compute_node: Some(1),
            attempts: 3,
            ready_at: std::time::Instant::now(),
        }
    }

    #[test]
    fn records_become_rows_with_names_reasons_and_nodes() {
        let failed = Outcome::Failed(JobError::new(
            Stage::Infer,
            ErrorKind::Status {
                code: Code::NOT_FOUND,
                message: "no model".into(),
            },
        ));
        let records = [
            JobRecord {
                outputs: vec![crate::record::Output::uint8(
                    "OUTPUT0",
                    Bytes::from_static(b"out"),
                )],
                ..record("cam-01", 0, Outcome::Ok)
            },
            record("thermo-02", 1, failed),
            record(
                "thermo-02",
                1,
                Outcome::Skipped(SkipReason::PreviousJobRunning),
            ),
        ];
        let mut resolver = Resolver::new(names());
        let rows = resolver.resolve(&records).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].device_id, "cam-01");
        assert_eq!(rows[0].class, "camera");
        assert_eq!(rows[0].model, "yolo");
        assert_eq!(rows[0].outcome, "ok");
        assert_eq!(rows[0].reason, None);
        assert_eq!(rows[0].output(), Some(&b"out"[..]));
        assert_eq!(rows[0].compute_node.as_deref(), Some("10.0.0.2:8001"));
        assert_eq!(
            rows[0].end_to_end_us,
            Some(i64::MAX),
            "saturated, not failed"
        );
        assert_eq!(rows[0].attempts, 3);
        assert_eq!(rows[0].run_id, rows[2].run_id);
        assert_eq!(rows[0].run_id.len(), 36, "{}", rows[0].run_id);
        assert_eq!(rows[1].outcome, "failed");
        assert_eq!(
            rows[1].reason.as_deref(),
            Some(records[1].outcome.reason().unwrap().as_str())
        );
        // A class without that node index writes NULL, not a panic.
        assert_eq!(rows[1].compute_node, None);
        assert_eq!(rows[1].output(), None);
        assert_eq!(rows[2].outcome, "skipped");
        assert_eq!(
            rows[2].reason.as_deref(),
            Some(SkipReason::PreviousJobRunning.to_string().as_str())
        );
        let owned = rows[1].clone().into_owned();
        assert_eq!(owned, rows[1]);
    }

    #[test]
    fn out_of_range_indexes_are_named() {
        let mut resolver = Resolver::new(names());
        // Any device id resolves: records carry it.
        let elsewhere = [record("elsewhere-7", 0, Outcome::Ok)];
        let rows = resolver.resolve(&elsewhere).unwrap();
        assert_eq!(rows[0].device_id, "elsewhere-7");
        drop(rows);
        let error = resolver
            .resolve(&[record("cam-01", 9, Outcome::Ok)])
            .unwrap_err();
        assert!(
            error.to_string().contains("class index 9 is outside the 2"),
            "{error}"
        );
    }
}
