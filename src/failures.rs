//! The failure breakdown: what failed, where and why, counted per shard.
//!
//! Every failed job and skipped tick is counted by (stage, reason class), where
//! the class is one of a bounded set (a gRPC status code, `deadline`,
//! `connect`, …, or the skip's cause), so it can be a Prometheus label. Beside
//! each count a few of the exact reason texts (the row's `reason`) are kept with
//! their counts and one example device, so an operator sees *why* without
//! opening the database.
//!
//! A shard records into its own [`FailureBreakdown`] from
//! [`ShardStats::record`](crate::stats::ShardStats::record): an `ok` job costs
//! nothing here; a failure formats its reason into a reused buffer and
//! allocates only for a (stage, class) or an exact text not seen before. The
//! coordinator merges the shards' copies, off the shards.

use std::fmt::Write as _;

use crate::error::{ConnectError, ErrorKind, Stage};
use crate::grpc::status::Code;
use crate::record::{DeviceId, JobRecord, Outcome, SkipReason};

/// Distinct exact reason texts kept per (stage, class); more are only counted
/// (in [`FailureCount::other_texts`]). Five is enough to see a pattern (one
/// text per node, say) and bounds the memory a reason with a varying text
/// (a node address, a size) can take.
pub const TEXTS_PER_REASON: usize = 5;

/// Label of the stage of a skipped tick: it never started a call.
pub const SKIPPED_STAGE: &str = "start";

/// Label values of the gRPC status classes, by code (0..=16), then one for a
/// code outside the standard range, so the label set stays bounded whatever a
/// server sends.
const GRPC_LABELS: [&str; 18] = [
    "grpc OK",
    "grpc CANCELLED",
    "grpc UNKNOWN",
    "grpc INVALID_ARGUMENT",
    "grpc DEADLINE_EXCEEDED",
    "grpc NOT_FOUND",
    "grpc ALREADY_EXISTS",
    "grpc PERMISSION_DENIED",
    "grpc RESOURCE_EXHAUSTED",
    "grpc FAILED_PRECONDITION",
    "grpc ABORTED",
    "grpc OUT_OF_RANGE",
    "grpc UNIMPLEMENTED",
    "grpc INTERNAL",
    "grpc UNAVAILABLE",
    "grpc DATA_LOSS",
    "grpc UNAUTHENTICATED",
    "grpc NON_STANDARD",
];

/// The bounded class of a failure or skip reason: what an operator acts on,
/// without the details (node, message) that make the exact text unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonClass {
    /// A non-OK gRPC status, by code; codes past 16 share index 17.
    Grpc(u8),
    /// The job's deadline passed.
    Deadline,
    /// An attempt outlived the class's attempt timeout.
    AttemptTimeout,
    /// No connection to the node could be opened.
    Connect,
    /// TCP connected but TLS failed (a certificate, a client certificate the
    /// server refused, no ALPN `h2`): a configuration to fix, not a node down.
    Tls,
    /// A connection broke mid-call.
    ConnectionLost,
    /// The node did not take the call.
    Refused,
    /// The response broke gRPC-over-HTTP/2.
    Protocol,
    /// The response did not decode.
    Decode,
    /// The response exceeded the maximum message size.
    MessageTooLarge,
    /// The response failed the class's tensor checks.
    TensorCheck,
    /// No replica could take the call.
    NoReplica,
    /// The servers up cannot serve the class's model (see the probe).
    ModelUnavailable,
    /// The request or the answer broke the model's contract.
    Contract,
    /// A tick that was not run, and why.
    Skipped(SkipReason),
}

impl ReasonClass {
    /// The class of a failed call's error.
    pub fn of_error(kind: &ErrorKind) -> ReasonClass {
        match kind {
            ErrorKind::Status { code, .. } => ReasonClass::grpc(*code),
            ErrorKind::DeadlineExceeded => ReasonClass::Deadline,
            ErrorKind::AttemptTimeout { .. } => ReasonClass::AttemptTimeout,
            ErrorKind::Connect {
                cause: ConnectError::Tls(_),
                ..
            } => ReasonClass::Tls,
            ErrorKind::Connect { .. } => ReasonClass::Connect,
            ErrorKind::ConnectionLost { .. } => ReasonClass::ConnectionLost,
            ErrorKind::Refused { .. } => ReasonClass::Refused,
            ErrorKind::Protocol(_) => ReasonClass::Protocol,
            ErrorKind::Decode(_) => ReasonClass::Decode,
            ErrorKind::MessageTooLarge { .. } => ReasonClass::MessageTooLarge,
            ErrorKind::BadResponse(_) => ReasonClass::TensorCheck,
            ErrorKind::NoReplica(_) => ReasonClass::NoReplica,
            ErrorKind::ModelUnavailable { .. } => ReasonClass::ModelUnavailable,
            ErrorKind::Contract(_) => ReasonClass::Contract,
        }
    }

    /// The class of a status code, non-standard codes together.
    fn grpc(code: Code) -> ReasonClass {
        let last = (GRPC_LABELS.len() - 1) as u32;
        // At most 17 after the min: the cast cannot truncate.
        ReasonClass::Grpc(code.0.min(last) as u8)
    }

    /// The label value: `grpc NOT_FOUND`, `deadline`, `sink backlog`, …
    pub fn label(self) -> &'static str {
        match self {
            ReasonClass::Grpc(index) => GRPC_LABELS
                .get(usize::from(index))
                .copied()
                .unwrap_or("grpc NON_STANDARD"),
            ReasonClass::Deadline => "deadline",
            ReasonClass::AttemptTimeout => "attempt timeout",
            ReasonClass::Connect => "connect",
            ReasonClass::Tls => "tls",
            ReasonClass::ConnectionLost => "connection lost",
            ReasonClass::Refused => "refused",
            ReasonClass::Protocol => "protocol",
            ReasonClass::Decode => "decode",
            ReasonClass::MessageTooLarge => "message too large",
            ReasonClass::TensorCheck => "tensor check",
            ReasonClass::NoReplica => "no replica",
            ReasonClass::ModelUnavailable => "model unavailable",
            ReasonClass::Contract => "model contract",
            ReasonClass::Skipped(reason) => match reason {
                SkipReason::PreviousJobRunning => "previous job running",
                SkipReason::ShardAtCapacity => "shard at capacity",
                SkipReason::SinkBacklog => "sink backlog",
                SkipReason::ReplicasAtCapacity => "replicas at capacity",
                SkipReason::NoComputeNode => "no compute node registered",
            },
        }
    }
}

/// One exact reason text, as written in the rows' `reason` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonText {
    /// The text itself.
    pub text: Box<str>,
    /// Records with exactly this text.
    pub count: u64,
    /// The first device seen with it: where to start looking.
    pub example_device: DeviceId,
}

/// The failed jobs (or skipped ticks) of one stage and reason class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCount {
    /// The call that failed; `None` for a skipped tick, which made none.
    pub stage: Option<Stage>,
    /// Why, bounded.
    pub class: ReasonClass,
    /// Records counted here.
    pub count: u64,
    /// The first [`TEXTS_PER_REASON`] distinct exact texts, with their counts.
    pub texts: Vec<ReasonText>,
    /// Records whose text was not among those kept: the texts' counts plus
    /// this make `count`.
    pub other_texts: u64,
}

impl FailureCount {
    fn new(stage: Option<Stage>, class: ReasonClass) -> FailureCount {
        FailureCount {
            stage,
            class,
            count: 0,
            texts: Vec::new(),
            other_texts: 0,
        }
    }

    /// `failed` or `skipped`: the rows' `outcome`.
    pub fn outcome(&self) -> &'static str {
        match self.class {
            ReasonClass::Skipped(_) => "skipped",
            _ => "failed",
        }
    }

    /// `fetch`, `infer`, or [`SKIPPED_STAGE`].
    pub fn stage_label(&self) -> &'static str {
        self.stage.map_or(SKIPPED_STAGE, Stage::as_str)
    }

    /// The most frequent kept text (the first seen among equals).
    pub fn top_text(&self) -> Option<&ReasonText> {
        self.texts
            .iter()
            .reduce(|best, text| if text.count > best.count { text } else { best })
    }

    /// Counts `count` records with `text` (first seen on `device`).
    fn add_text(&mut self, text: &str, count: u64, device: &DeviceId) {
        self.count += count;
        if let Some(kept) = self.texts.iter_mut().find(|kept| *kept.text == *text) {
            kept.count += count;
        } else if self.texts.len() < TEXTS_PER_REASON {
            self.texts.push(ReasonText {
                text: text.into(),
                count,
                example_device: device.clone(),
            });
        } else {
            self.other_texts += count;
        }
    }
}

/// Failed jobs and skipped ticks by (stage, reason class), in first-seen
/// order. A few dozen entries at most (see [`ReasonClass`]), so a linear
/// search finds one faster than a hash would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureBreakdown {
    /// One entry per (stage, class) seen.
    pub entries: Vec<FailureCount>,
}

impl FailureBreakdown {
    /// Counts a finished record; `ok` costs one match. `text` is a buffer the
    /// caller keeps between calls, so formatting a reason reuses its memory.
    pub fn record(&mut self, record: &JobRecord, text: &mut String) {
        let (stage, class) = match &record.outcome {
            Outcome::Ok => return,
            Outcome::Failed(error) => {
                text.clear();
                let _ = write!(text, "{error}");
                (Some(error.stage), ReasonClass::of_error(&error.kind))
            }
            Outcome::Skipped(reason) => {
                text.clear();
                let _ = write!(text, "{reason}");
                (None, ReasonClass::Skipped(*reason))
            }
        };
        self.entry(stage, class).add_text(text, 1, &record.device);
    }

    fn entry(&mut self, stage: Option<Stage>, class: ReasonClass) -> &mut FailureCount {
        let found = self
            .entries
            .iter()
            .position(|entry| entry.stage == stage && entry.class == class);
        let index = found.unwrap_or_else(|| {
            self.entries.push(FailureCount::new(stage, class));
            self.entries.len() - 1
        });
        &mut self.entries[index]
    }

    /// Adds another shard's breakdown: counts add, texts merge by equality
    /// (the first example device stays), up to [`TEXTS_PER_REASON`] per entry.
    pub fn add(&mut self, other: &FailureBreakdown) {
        for theirs in &other.entries {
            let ours = self.entry(theirs.stage, theirs.class);
            for text in &theirs.texts {
                ours.add_text(&text.text, text.count, &text.example_device);
            }
            ours.count += theirs.other_texts;
            ours.other_texts += theirs.other_texts;
        }
    }

    /// The shards' breakdowns merged.
    pub fn merge<'a>(shards: impl IntoIterator<Item = &'a FailureBreakdown>) -> FailureBreakdown {
        let mut total = FailureBreakdown::default();
        shards.into_iter().for_each(|shard| total.add(shard));
        total
    }

    /// The entries, most frequent first (first-seen order among equals).
    pub fn by_count(&self) -> Vec<&FailureCount> {
        let mut entries: Vec<&FailureCount> = self.entries.iter().collect();
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.count));
        entries
    }

    /// Failed jobs counted (skips excluded).
    pub fn failed(&self) -> u64 {
        self.entries
            .iter()
            .filter(|entry| entry.stage.is_some())
            .map(|entry| entry.count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::JobError;
    use crate::record::StageLatency;
    use std::sync::Arc;
    use std::time::Instant;

    fn record(device: u32, outcome: Outcome) -> JobRecord {
        JobRecord {
            device: DeviceId::new(&device.to_string()),
            tick_ms: 0,
            class: 0,
            shard: 0,
            outcome,
            outputs: Vec::new(),
            latency: StageLatency::default(),
            compute_node: None,
            attempts: 1,
            ready_at: Instant::now(),
        }
    }

    fn failed(stage: Stage, kind: ErrorKind) -> Outcome {
        Outcome::Failed(JobError::new(stage, kind))
    }

    fn status(code: Code, message: &str) -> ErrorKind {
        ErrorKind::Status {
            code,
            message: message.into(),
        }
    }

    #[test]
    fn every_error_kind_has_its_bounded_class() {
        let node: Arc<str> = "127.0.0.1:9001".into();
        let cases = [
            (status(Code::NOT_FOUND, "no such model"), "grpc NOT_FOUND"),
            (status(Code(16), ""), "grpc UNAUTHENTICATED"),
            (status(Code(99), "odd"), "grpc NON_STANDARD"),
            (status(Code(u32::MAX), ""), "grpc NON_STANDARD"),
            (ErrorKind::DeadlineExceeded, "deadline"),
            (
                ErrorKind::AttemptTimeout {
                    node: node.clone(),
                    after_ms: 50,
                },
                "attempt timeout",
            ),
            (
                ErrorKind::Connect {
                    node: node.clone(),
                    cause: crate::error::ConnectError::Tcp(std::io::ErrorKind::ConnectionRefused),
                },
                "connect",
            ),
            (
                ErrorKind::Connect {
                    node: node.clone(),
                    cause: crate::error::ConnectError::Tls("invalid peer certificate".into()),
                },
                "tls",
            ),
            (
                ErrorKind::ConnectionLost {
                    node: node.clone(),
                    detail: "reset".into(),
                },
                "connection lost",
            ),
            (
                ErrorKind::Refused {
                    node: node.clone(),
                    detail: "goaway".into(),
                },
                "refused",
            ),
            (ErrorKind::Protocol("x".into()), "protocol"),
            (ErrorKind::Decode("x".into()), "decode"),
            (
                ErrorKind::MessageTooLarge { len: 9, max: 1 },
                "message too large",
            ),
            (ErrorKind::BadResponse("shape".into()), "tensor check"),
            (ErrorKind::NoReplica("all ejected"), "no replica"),
            (
                ErrorKind::ModelUnavailable {
                    node,
                    reason: "ModelReady answered false".into(),
                },
                "model unavailable",
            ),
            (ErrorKind::Contract("input".into()), "model contract"),
        ];
        for (kind, label) in cases {
            assert_eq!(ReasonClass::of_error(&kind).label(), label, "{kind}");
        }
        for (reason, label) in [
            (SkipReason::PreviousJobRunning, "previous job running"),
            (SkipReason::ShardAtCapacity, "shard at capacity"),
            (SkipReason::SinkBacklog, "sink backlog"),
            (SkipReason::ReplicasAtCapacity, "replicas at capacity"),
        ] {
            assert_eq!(ReasonClass::Skipped(reason).label(), label);
        }
    }

    #[test]
    fn records_count_by_stage_and_class_with_bounded_texts() {
        let mut breakdown = FailureBreakdown::default();
        let mut buffer = String::new();
        breakdown.record(&record(1, Outcome::Ok), &mut buffer);
        assert!(breakdown.entries.is_empty(), "ok jobs are not entries");
        for device in 0..10 {
            // Seven distinct texts for one class: five kept, two only counted.
            let message = format!("model m{}", device % 7);
            let outcome = failed(Stage::Infer, status(Code::NOT_FOUND, &message));
            breakdown.record(&record(device, outcome), &mut buffer);
        }
        breakdown.record(
            &record(3, failed(Stage::Fetch, status(Code::NOT_FOUND, "x"))),
            &mut buffer,
        );
        breakdown.record(
            &record(4, Outcome::Skipped(SkipReason::SinkBacklog)),
            &mut buffer,
        );
        let rows: Vec<_> = breakdown
            .by_count()
            .iter()
            .map(|e| (e.outcome(), e.stage_label(), e.class.label(), e.count))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("failed", "infer", "grpc NOT_FOUND", 10),
                ("failed", "fetch", "grpc NOT_FOUND", 1),
                ("skipped", "start", "sink backlog", 1),
            ]
        );
        let infer = &breakdown.entries[0];
        assert_eq!(infer.texts.len(), TEXTS_PER_REASON);
        // Devices 0 and 7 share a text; 5, 6 (texts m5, m6) are past the limit.
        assert_eq!(infer.other_texts, 2);
        let top = infer.top_text().unwrap();
        assert_eq!(
            (&*top.text, top.count, top.example_device.as_str()),
            ("infer: grpc status 5 NOT_FOUND: model m0", 2, "0")
        );
        assert_eq!(
            infer.texts.iter().map(|t| t.count).sum::<u64>() + infer.other_texts,
            infer.count
        );
        assert_eq!(breakdown.failed(), 11);
        assert_eq!(
            &*breakdown.entries[2].texts[0].text, "sink backlog",
            "skips keep their SkipReason text"
        );
    }

    #[test]
    fn shards_merge_by_stage_class_and_text() {
        let mut buffer = String::new();
        let mut first = FailureBreakdown::default();
        let mut second = FailureBreakdown::default();
        for device in 0..3 {
            first.record(
                &record(device, failed(Stage::Infer, ErrorKind::DeadlineExceeded)),
                &mut buffer,
            );
        }
        for device in 10..15 {
            second.record(
                &record(device, failed(Stage::Infer, ErrorKind::DeadlineExceeded)),
                &mut buffer,
            );
        }
        second.record(
            &record(20, failed(Stage::Fetch, ErrorKind::Protocol("cut".into()))),
            &mut buffer,
        );
        // A full set of texts on one side: its extra count carries over.
        for n in 0..(TEXTS_PER_REASON as u32 + 2) {
            first.record(
                &record(
                    30 + n,
                    failed(Stage::Infer, ErrorKind::Decode(format!("n{n}").into())),
                ),
                &mut buffer,
            );
        }
        let total = FailureBreakdown::merge([&first, &second]);
        let deadline = total
            .entries
            .iter()
            .find(|e| e.class == ReasonClass::Deadline)
            .unwrap();
        assert_eq!(deadline.count, 8);
        assert_eq!(deadline.texts.len(), 1, "same text on both shards");
        assert_eq!(deadline.texts[0].count, 8);
        assert_eq!(
            deadline.texts[0].example_device.as_str(),
            "0",
            "the first shard's"
        );
        let decode = total
            .entries
            .iter()
            .find(|e| e.class == ReasonClass::Decode)
            .unwrap();
        assert_eq!((decode.count, decode.other_texts), (7, 2));
        assert_eq!(total.failed(), 3 + 5 + 1 + 7);
        assert_eq!(total.by_count()[0].class, ReasonClass::Deadline);
        assert_eq!(FailureBreakdown::merge([]), FailureBreakdown::default());
    }
}
