//! `[classes.batching]`: client-side batching of a class's `ModelInfer` calls,
//! off unless the table is there.
//!
//! ```toml
//! [classes.batching]
//! max_batch = 8        # rows per ModelInfer, 2..=1024
//! linger_us = 2000     # or linger_ms; default 1000 µs; shorter than deadline_ms
//! ```
//!
//! Each shard gathers the jobs of the class whose inputs are ready into one
//! `ModelInfer`, stacking every input along its first dimension, and splits
//! the outputs back along theirs (see [`crate::job`]'s `batch` module for the
//! rules). The runtime [`Batching`] is plain data.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{ConfigError, Source};

/// How a class's jobs are gathered into batched `ModelInfer` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most rows (the sum of the jobs' first dimensions; with the usual
    /// `[1, …]` device tensors, jobs) in one call: a batch that reaches it is
    /// sent at once. What the model server accepts as its batch size.
    pub max_batch: usize,
    /// How long a batch waits for more jobs after its first joined; it goes
    /// out earlier when full, or when its earliest deadline is `linger` away.
    pub linger: Duration,
}

/// The largest `max_batch` accepted: past it one call's messages grow past
/// any server's limit, and the gain per job is long gone.
pub const MAX_BATCH_LIMIT: u64 = 1024;

/// The linger when the table names none: short next to a remote node's
/// round trip, long enough to gather what a busy shard finishes meanwhile.
pub const DEFAULT_LINGER: Duration = Duration::from_micros(1000);

/// `[classes.batching]` as written; see [`Batching`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchingFile {
    max_batch: Spanned<u64>,
    linger_us: Option<Spanned<u64>>,
    linger_ms: Option<Spanned<u64>>,
}

impl BatchingFile {
    /// Checks the table against its class's `deadline_ms`; `prefix` names it
    /// (`classes[0].batching`).
    pub(super) fn validate(
        &self,
        deadline_ms: u64,
        prefix: &str,
        source: &Source,
    ) -> Result<Batching, ConfigError> {
        let max_batch = *self.max_batch.get_ref();
        let field = |name: &str| format!("{prefix}.{name}");
        if max_batch < 2 {
            return Err(source.error(
                self.max_batch.span(),
                field("max_batch"),
                format!(
                    "must be at least 2, found {max_batch} (leave [classes.batching] out to \
                     send each job alone)"
                ),
            ));
        }
        if max_batch > MAX_BATCH_LIMIT {
            return Err(source.error(
                self.max_batch.span(),
                field("max_batch"),
                format!("must be at most {MAX_BATCH_LIMIT}, found {max_batch}"),
            ));
        }
        let (linger, span, key) = match (&self.linger_us, &self.linger_ms) {
            (Some(_), Some(ms)) => {
                return Err(source.error(
                    ms.span(),
                    field("linger_ms"),
                    "linger_us is set too: set one of them",
                ));
            }
            (Some(us), None) => (Duration::from_micros(*us.get_ref()), us.span(), "linger_us"),
            (None, Some(ms)) => (Duration::from_millis(*ms.get_ref()), ms.span(), "linger_ms"),
            (None, None) => (DEFAULT_LINGER, self.max_batch.span(), "linger_us"),
        };
        let deadline = Duration::from_millis(deadline_ms);
        if linger >= deadline {
            return Err(source.error(
                span,
                field(key),
                format!(
                    "a linger of {} µs must be shorter than the class's deadline_ms ({deadline_ms}): \
                     a batch never waits into its jobs' last linger of time",
                    linger.as_micros()
                ),
            ));
        }
        Ok(Batching {
            max_batch: max_batch as usize,
            linger,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::Config;

    /// One class whose `[classes.batching]` table is `table` (nothing: none).
    fn config(table: &str) -> String {
        format!(
            r#"[devices]
generate = {{ count = 4, mix = {{ camera = 1 }} }}

[sink]
kind = "sqlite"
path = "out/percore.db"

[[classes]]
name = "camera"
model = "resnet50"
period_ms = 1000
deadline_ms = 50
data_sources = ["127.0.0.1:9000"]
compute_nodes = ["127.0.0.1:9001"]
{table}
"#
        )
    }

    fn parse(table: &str) -> Result<Config, String> {
        Config::from_str(&config(table), Path::new("conf/fleet.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn batching_is_off_by_default_and_read_with_its_linger() {
        assert_eq!(parse("").unwrap().classes[0].batching, None);
        let batching = |table: &str| parse(table).unwrap().classes[0].batching.unwrap();
        let read = batching("[classes.batching]\nmax_batch = 8\nlinger_us = 2500");
        assert_eq!(read.max_batch, 8);
        assert_eq!(read.linger, Duration::from_micros(2500));
        let read = batching("[classes.batching]\nmax_batch = 1024\nlinger_ms = 3");
        assert_eq!(
            (read.max_batch, read.linger),
            (1024, Duration::from_millis(3))
        );
        let read = batching("[classes.batching]\nmax_batch = 2");
        assert_eq!(read.linger, super::DEFAULT_LINGER);
        let read = batching("[classes.batching]\nmax_batch = 2\nlinger_us = 0");
        assert_eq!(read.linger, Duration::ZERO);
    }

    #[test]
    fn batching_errors_name_the_file_line_and_key() {
        // The table starts on line 15 of the file.
        assert_eq!(
            parse("[classes.batching]\nmax_batch = 1").unwrap_err(),
            "conf/fleet.toml:16: classes[0].batching.max_batch: must be at least 2, found 1 \
             (leave [classes.batching] out to send each job alone)"
        );
        assert!(parse("[classes.batching]\nmax_batch = 1025")
            .unwrap_err()
            .starts_with(
                "conf/fleet.toml:16: classes[0].batching.max_batch: must be at most 1024"
            ));
        assert_eq!(
            parse("[classes.batching]\nmax_batch = 4\nlinger_us = 10\nlinger_ms = 1").unwrap_err(),
            "conf/fleet.toml:18: classes[0].batching.linger_ms: linger_us is set too: set one of them"
        );
        assert_eq!(
            parse("[classes.batching]\nmax_batch = 4\nlinger_ms = 50").unwrap_err(),
            "conf/fleet.toml:17: classes[0].batching.linger_ms: a linger of 50000 µs must be \
             shorter than the class's deadline_ms (50): a batch never waits into its jobs' last \
             linger of time"
        );
        let unknown = parse("[classes.batching]\nmax_batch = 4\nmax_rows = 8").unwrap_err();
        assert!(
            unknown.contains("conf/fleet.toml:17") && unknown.contains("max_rows"),
            "{unknown}"
        );
        let negative = parse("[classes.batching]\nmax_batch = -3").unwrap_err();
        assert!(negative.contains("conf/fleet.toml:16"), "{negative}");
        let missing = parse("[classes.batching]\nlinger_us = 5").unwrap_err();
        assert!(missing.contains("max_batch"), "{missing}");
    }
}
