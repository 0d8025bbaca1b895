//! `[sink]`: where job records go, tagged by `kind` — SQLite's keys here,
//! PostgreSQL's in [`super::postgres`] — and the spill journal's `journal_*` keys,
//! which every kind takes.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::postgres::{validate_postgres_sink, PostgresSinkFile, PG_URL_ENV};
use crate::diagnostic::{ConfigError, Source};

pub use crate::sink::journal::{FsyncPolicy, JournalConfig};

/// Where job records go. An enum so other stores (e.g. Postgres) can be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// A SQLite database file, created if missing.
    Sqlite {
        /// The database file, already resolved against the config file's folder.
        path: PathBuf,
        /// How long one write waits for a lock held by another connection before
        /// the writer backs off and tries it again (`busy_timeout_ms`).
        busy_timeout: std::time::Duration,
        /// A testing aid that simulates a slow database: the writer sleeps this
        /// long after each commit (`commit_delay_ms`, default 0). It exists so a
        /// test or `percore bench --stages` can make the sink the bottleneck on
        /// purpose; never set it in production.
        commit_delay: std::time::Duration,
        /// The spill journal (`journal_dir` and the other `journal_*` keys):
        /// where batches go while the database cannot take them. Off (`None`)
        /// unless `journal_dir` is set.
        journal: Option<JournalConfig>,
    },
    /// A PostgreSQL database (`kind = "postgres"`). See [`crate::sink::postgres`].
    Postgres {
        /// Where, which table, how rows are batched, TLS and connect timeout.
        options: crate::sink::postgres::PostgresOptions,
        /// The spill journal: on by default (in [`DEFAULT_JOURNAL_DIR`] beside
        /// the config file), so an outage of the database costs no result;
        /// `journal = false` turns it off.
        journal: Option<JournalConfig>,
    },
}

impl SinkConfig {
    /// A SQLite file with the default busy timeout.
    pub fn sqlite(path: impl Into<PathBuf>) -> SinkConfig {
        SinkConfig::Sqlite {
            path: path.into(),
            busy_timeout: crate::sink::sqlite::DEFAULT_BUSY_TIMEOUT,
            commit_delay: std::time::Duration::ZERO,
            journal: None,
        }
    }

    /// The spill journal, if one is configured.
    pub fn journal(&self) -> Option<&JournalConfig> {
        match self {
            SinkConfig::Sqlite { journal, .. } | SinkConfig::Postgres { journal, .. } => {
                journal.as_ref()
            }
        }
    }

    /// The testing aid's sleep after each commit (zero unless asked for).
    pub fn commit_delay(&self) -> std::time::Duration {
        match self {
            SinkConfig::Sqlite { commit_delay, .. } => *commit_delay,
            SinkConfig::Postgres { .. } => std::time::Duration::ZERO,
        }
    }
}

// ---------------------------------------------------------------------------------
// As written.
// ---------------------------------------------------------------------------------

/// `[sink]`, tagged by `kind`. Fields inside an internally tagged enum cannot be
/// `Spanned` (serde buffers them), so errors point at the `[sink]` table.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub(super) enum SinkFile {
    /// `kind = "sqlite"`.
    #[serde(rename = "sqlite")]
    Sqlite {
        /// Database file, relative to the config file.
        path: String,
        /// See [`SinkConfig::Sqlite::busy_timeout`]; default 5000.
        #[serde(default)]
        busy_timeout_ms: Option<u64>,
        /// See [`SinkConfig::Sqlite::commit_delay`]: a testing aid that
        /// simulates a slow database; default 0.
        #[serde(default)]
        commit_delay_ms: u64,
        /// See [`JournalKeys`]: `true` journals in the default folder.
        journal: Option<bool>,
        /// See [`JournalKeys`]: the spill journal's folder; no journal when absent.
        journal_dir: Option<String>,
        /// See [`JournalKeys`]: `"always"` (default), `"interval"` or `"never"`.
        journal_fsync: Option<String>,
        /// See [`JournalKeys`]: with `journal_fsync = "interval"`; default 100.
        journal_fsync_interval_ms: Option<u64>,
        /// See [`JournalKeys`]: the journal's size bound; default 1 GiB.
        journal_max_bytes: Option<u64>,
        /// See [`JournalKeys`]: a segment file's size; default 64 MiB.
        journal_segment_bytes: Option<u64>,
    },
    /// `kind = "postgres"`; validated by [`validate_postgres_sink`].
    #[serde(rename = "postgres")]
    Postgres(PostgresSinkFile),
}

// ---------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------

pub(super) fn validate_sink(
    sink: &Spanned<SinkFile>,
    base: &Path,
    source: &Source,
) -> Result<SinkConfig, ConfigError> {
    match sink.get_ref() {
        SinkFile::Sqlite {
            path,
            busy_timeout_ms,
            commit_delay_ms,
            journal: journal_on,
            journal_dir,
            journal_fsync,
            journal_fsync_interval_ms,
            journal_max_bytes,
            journal_segment_bytes,
        } => {
            if path.trim().is_empty() {
                return Err(source.error(sink.span(), "sink.path", "must not be empty"));
            }
            let busy_timeout = match busy_timeout_ms {
                None => crate::sink::sqlite::DEFAULT_BUSY_TIMEOUT,
                Some(0) => {
                    let field = "sink.busy_timeout_ms";
                    return Err(source.error(sink.span(), field, "must be greater than 0"));
                }
                Some(ms) => std::time::Duration::from_millis(*ms),
            };
            let journal = JournalKeys {
                enabled: *journal_on,
                default_on: false,
                dir: journal_dir.as_deref(),
                fsync: journal_fsync.as_deref(),
                fsync_interval_ms: *journal_fsync_interval_ms,
                max_bytes: *journal_max_bytes,
                segment_bytes: *journal_segment_bytes,
            }
            .validate(sink.span(), base, source)?;
            Ok(SinkConfig::Sqlite {
                path: base.join(path),
                busy_timeout,
                commit_delay: std::time::Duration::from_millis(*commit_delay_ms),
                journal,
            })
        }
        SinkFile::Postgres(file) => {
            let env_url = std::env::var(PG_URL_ENV).ok();
            let options = validate_postgres_sink(file, base, env_url.as_deref())
                .map_err(|(field, message)| source.error(sink.span(), field, message))?;
            let journal = JournalKeys {
                enabled: file.journal,
                default_on: true,
                dir: file.journal_dir.as_deref(),
                fsync: file.journal_fsync.as_deref(),
                fsync_interval_ms: file.journal_fsync_interval_ms,
                max_bytes: file.journal_max_bytes,
                segment_bytes: file.journal_segment_bytes,
            }
            .validate(sink.span(), base, source)?;
            Ok(SinkConfig::Postgres { options, journal })
        }
    }
}

// ---------------------------------------------------------------------------------
// The spill journal's keys, in `[sink]` whatever its kind. Kept together so a
// new sink kind adds the same six fields to its `SinkFile` variant and calls
// `JournalKeys::validate`, saying whether it journals by default.
// ---------------------------------------------------------------------------------

/// The journal's folder, relative to the config file, when `journal_dir` is not
/// written and the journal is on (PostgreSQL's default, or `journal = true`).
pub const DEFAULT_JOURNAL_DIR: &str = "percore-journal";

/// The `journal_*` keys of one `[sink]` table, as written.
struct JournalKeys<'a> {
    /// `journal`: `false` turns the journal off, `true` turns it on (in
    /// [`DEFAULT_JOURNAL_DIR`] unless `journal_dir` says where); absent: on
    /// when `default_on` or `journal_dir` is set.
    enabled: Option<bool>,
    /// Whether this sink kind journals when `journal` is not written
    /// (PostgreSQL does; SQLite, a local file itself, does not).
    default_on: bool,
    /// `journal_dir`: the folder of the segment files, relative to the config
    /// file.
    dir: Option<&'a str>,
    /// `journal_fsync`: `"always"` (after every batch, the default), `"interval"`
    /// (at most every `journal_fsync_interval_ms`) or `"never"` (left to the OS).
    fsync: Option<&'a str>,
    /// `journal_fsync_interval_ms`: only with `journal_fsync = "interval"`.
    fsync_interval_ms: Option<u64>,
    /// `journal_max_bytes`: the bound past which the writer pushes back instead.
    max_bytes: Option<u64>,
    /// `journal_segment_bytes`: size past which a new segment file is started.
    segment_bytes: Option<u64>,
}

impl JournalKeys<'_> {
    /// The journal these keys describe; `None` when it is off, an error naming
    /// the key's line when a value is wrong or a key is set while it is off.
    fn validate(
        &self,
        table: Range<usize>,
        base: &Path,
        source: &Source,
    ) -> Result<Option<JournalConfig>, ConfigError> {
        let error = |key: &str, message: String| {
            let span = key_line(source, table.clone(), key);
            source.error(span, format!("sink.{key}"), message)
        };
        let on = self
            .enabled
            .unwrap_or(self.default_on || self.dir.is_some());
        let dir = match (on, self.dir) {
            (true, Some(dir)) => Some(dir),
            (true, None) => Some(DEFAULT_JOURNAL_DIR),
            (false, _) => None,
        };
        let Some(dir) = dir else {
            let set = [
                ("journal_dir", self.dir.is_some()),
                ("journal_fsync", self.fsync.is_some()),
                (
                    "journal_fsync_interval_ms",
                    self.fsync_interval_ms.is_some(),
                ),
                ("journal_max_bytes", self.max_bytes.is_some()),
                ("journal_segment_bytes", self.segment_bytes.is_some()),
            ];
            return match set.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(error(
                    key,
                    if self.enabled == Some(false) {
                        "has no effect: sink.journal = false turns the journal off".into()
                    } else {
                        "has no effect without sink.journal_dir or sink.journal = true \
                         (the journal is off)"
                            .into()
                    },
                )),
                None => Ok(None),
            };
        };
        if dir.trim().is_empty() {
            return Err(error("journal_dir", "must not be empty".into()));
        }
        let mut journal = JournalConfig::new(base.join(dir));
        journal.fsync = match (self.fsync, self.fsync_interval_ms) {
            (None | Some("always"), None) => FsyncPolicy::Always,
            (Some("never"), None) => FsyncPolicy::Never,
            (Some("interval"), None) => {
                FsyncPolicy::Interval(crate::sink::journal::DEFAULT_FSYNC_INTERVAL)
            }
            (Some("interval"), Some(0)) => {
                return Err(error(
                    "journal_fsync_interval_ms",
                    "must be greater than 0".into(),
                ))
            }
            (Some("interval"), Some(ms)) => {
                FsyncPolicy::Interval(std::time::Duration::from_millis(ms))
            }
            (None | Some("always" | "never"), Some(_)) => {
                return Err(error(
                    "journal_fsync_interval_ms",
                    "needs journal_fsync = \"interval\"".into(),
                ))
            }
            (Some(other), _) => {
                return Err(error(
                    "journal_fsync",
                    format!("must be \"always\", \"interval\" or \"never\", found {other:?}"),
                ))
            }
        };
        if let Some(bytes) = self.segment_bytes {
            let min = crate::sink::journal::MIN_SEGMENT_BYTES;
            if bytes < min {
                return Err(error(
                    "journal_segment_bytes",
                    format!("must be at least {min}"),
                ));
            }
            journal.segment_bytes = bytes;
        }
        if let Some(bytes) = self.max_bytes {
            journal.max_bytes = bytes;
        }
        if journal.max_bytes < journal.segment_bytes {
            return Err(error(
                "journal_max_bytes",
                format!(
                    "must be at least journal_segment_bytes ({})",
                    journal.segment_bytes
                ),
            ));
        }
        Ok(Some(journal))
    }
}

/// The span of the line of the `[sink]` table (starting at `table`) that sets
/// `key`, so an error points at the key itself: fields of the internally tagged
/// `[sink]` carry no span. The table's own span when no line sets it.
fn key_line(source: &Source, table: Range<usize>, key: &str) -> Range<usize> {
    let Some(text) = source.text.get(table.start..) else {
        return table;
    };
    let mut start = table.start;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        // The next table's header ends this one.
        if index > 0 && trimmed.starts_with('[') {
            break;
        }
        let rest = trimmed.strip_prefix(key).map(str::trim_start);
        if rest.is_some_and(|rest| rest.starts_with('=')) {
            return start..start + line.len();
        }
        start += line.len();
    }
    table
}
