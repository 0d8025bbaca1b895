//! One run of the dispatcher as the database sees it: the identity stamped on
//! every row (`run_id`) and the `runs` table's row, inserted when the sink opens
//! and completed when the writer ends.
//!
//! A run's row is written in two steps on purpose: `ended_at_ms` and the counts
//! stay NULL until the writer has committed its last batch, so a run that
//! crashed (or was killed) is told apart from one that finished by that NULL.

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::record::{JobRecord, Outcome};

/// Who writes the rows: one run, as its `runs` row records it. Made once at
/// start-up, before the sink opens, and shared read-only with the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// Random, UUID-shaped (version 4 layout): two runs, even two runs of one
    /// process in the same millisecond, never share one. Written on every row.
    pub run_id: String,
    /// The machine the run ran on (`/proc/sys/kernel/hostname`), so runs of
    /// several hosts into one database can be told apart.
    pub host: String,
    /// When the run started, Unix ms.
    pub started_at_ms: i64,
    /// A digest of what was run (see [`config_digest`]): two runs with the same
    /// digest ran the same configuration.
    pub config_digest: String,
}

impl RunIdentity {
    /// A new run, starting now, of the configuration `config_digest` names.
    pub fn new(config_digest: impl Into<String>) -> RunIdentity {
        RunIdentity {
            run_id: random_run_id(),
            host: host_name(),
            started_at_ms: now_ms(),
            config_digest: config_digest.into(),
        }
    }
}

/// What a run committed, by outcome, for its `runs` row at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Rows committed (ok + failed + skipped).
    pub jobs: u64,
    /// Rows whose job succeeded.
    pub ok: u64,
    /// Rows whose job failed.
    pub failed: u64,
    /// Rows of skipped ticks.
    pub skipped: u64,
}

impl RunCounts {
    /// Counts the records of one committed group.
    pub fn add(&mut self, records: &[JobRecord]) {
        for record in records {
            match record.outcome {
                Outcome::Ok => self.ok += 1,
                Outcome::Failed(_) => self.failed += 1,
                Outcome::Skipped(_) => self.skipped += 1,
            }
        }
        self.jobs += records.len() as u64;
    }
}

/// A 16-hex-digit digest of `text` (a configuration's description): FNV-1a
/// with a final mix, stable across builds and machines, so equal digests mean
/// equal configurations. Not cryptographic: it tells runs apart, it does not
/// guard anything.
pub fn config_digest(text: &str) -> String {
    format!("{:016x}", crate::devices::stable_hash(text))
}

/// Now, Unix ms (0 should the clock be before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// 122 random bits in the UUID v4 layout. The randomness is the standard
/// library's per-process random hash keys (seeded from the OS), mixed with the
/// time and the process id, so no random-number crate is needed for one id.
fn random_run_id() -> String {
    let random = |salt: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos()),
        );
        hasher.write_u32(std::process::id());
        hasher.finish()
    };
    let high = random(1);
    let low = random(2);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0x0fff,
        0x8000 | ((low >> 48) & 0x3fff),
        low & 0xffff_ffff_ffff,
    )
}

/// The kernel's host name, or `unknown` where it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_uuid_shaped_and_distinct() {
        let ids: Vec<String> = (0..100).map(|_| random_run_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 36, "{id}");
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        }
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn digests_are_stable_and_tell_texts_apart() {
        assert_eq!(config_digest("a = 1"), config_digest("a = 1"));
        assert_ne!(config_digest("a = 1"), config_digest("a = 2"));
        assert_eq!(config_digest("").len(), 16);
        let run = RunIdentity::new("d");
        assert!(!run.host.is_empty());
        assert!(run.started_at_ms > 1_600_000_000_000);
    }
}
