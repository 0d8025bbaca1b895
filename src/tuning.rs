//! Per-host tuning: which CPUs the shards and mock nodes run on, and the limits that
//! depend on the machine rather than on the fleet.
//!
//! Kept apart from the fleet config so one config can run on hosts of different
//! sizes. [`Config`](crate::config::Config) loads the tuning file it points at (or
//! uses [`Tuning::default`]); start-up reads [`Tuning::resolved_shard_cpus`] to place
//! one shard per CPU, and the shards read the limits.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source};

/// Where the kernel lists the CPUs that are online.
const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";

/// Enough to use HTTP/2 multiplexing while still spreading load over a node's
/// accept queue; more only helps when a node caps `max_concurrent_streams` low.
const DEFAULT_CONNECTIONS_PER_NODE: usize = 4;
/// Bounds a shard's memory and queueing when nodes slow down; beyond it ticks are
/// skipped (and recorded as such) instead of piling up.
const DEFAULT_MAX_IN_FLIGHT_PER_SHARD: usize = 10_000;
/// glommio's own default; it is locked memory, so `ulimit -l` must allow it per shard.
const DEFAULT_IO_MEMORY_KIB: usize = 512;
/// Below this glommio's registered buffers are too small to be worth having.
const MIN_IO_MEMORY_KIB: usize = 64;
/// Locked memory an executor takes besides its `io_memory_kib`: its three io_uring
/// rings of depth 128 need well under this, the rest is margin.
const RING_MEMORY_KIB: u64 = 256;

/// Host-specific settings, validated against the CPUs this process may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// CPUs to pin one shard each on; empty means every CPU from [`allowed_cpus`].
    pub shard_cpus: Vec<usize>,
    /// CPUs for the built-in mock nodes (demo, bench); empty means pick CPUs the
    /// shards do not use, or share theirs when there are none.
    pub mock_cpus: Vec<usize>,
    /// Most HTTP/2 connections a shard opens to one node; another is opened only when
    /// every open one has its `max_concurrent_streams` in use.
    pub connections_per_node: usize,
    /// Jobs a shard may have in flight before it skips ticks: its backpressure bound.
    pub max_in_flight_per_shard: usize,
    /// glommio registered-buffer memory per executor, in KiB (locked memory).
    pub io_memory_kib: usize,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            shard_cpus: Vec::new(),
            mock_cpus: Vec::new(),
            connections_per_node: DEFAULT_CONNECTIONS_PER_NODE,
            max_in_flight_per_shard: DEFAULT_MAX_IN_FLIGHT_PER_SHARD,
            io_memory_kib: DEFAULT_IO_MEMORY_KIB,
        }
    }
}

impl Tuning {
    /// Read, parse and validate the tuning file at `path`.
    pub fn load(path: &Path) -> Result<Tuning, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::new(path, format!("cannot read: {error}")))?;
        Tuning::from_str(&text, path)
    }

    /// Parse and validate tuning text; `path` names the file in errors. CPUs are
    /// checked against [`allowed_cpus`] of this process, the shards' locked memory
    /// against its [`memlock_limit_kib`].
    #[allow(clippy::should_implement_trait)] // needs `path`, so it cannot be `FromStr`
    pub fn from_str(text: &str, path: &Path) -> Result<Tuning, ConfigError> {
        let source = Source::new(path, text);
        let file: TuningFile = source.parse()?;
        file.validate(&source, &allowed_cpus(), memlock_limit_kib())
    }

    /// `shard_cpus`, or every allowed CPU when empty.
    pub fn resolved_shard_cpus(&self) -> Vec<usize> {
        if self.shard_cpus.is_empty() {
            allowed_cpus()
        } else {
            self.shard_cpus.clone()
        }
    }
}

/// The tuning file as written; see [`Tuning`] for what each field means.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TuningFile {
    #[serde(default = "Vec::new")]
    shard_cpus: Vec<Spanned<usize>>,
    #[serde(default = "Vec::new")]
    mock_cpus: Vec<Spanned<usize>>,
    #[serde(default = "default_connections_per_node")]
    connections_per_node: Spanned<usize>,
    #[serde(default = "default_max_in_flight_per_shard")]
    max_in_flight_per_shard: Spanned<usize>,
    #[serde(default = "default_io_memory_kib")]
    io_memory_kib: Spanned<usize>,
}

// Defaults have no place in the file; they are valid, so their span is never shown.
fn default_connections_per_node() -> Spanned<usize> {
    Spanned::new(0..0, DEFAULT_CONNECTIONS_PER_NODE)
}

fn default_max_in_flight_per_shard() -> Spanned<usize> {
    Spanned::new(0..0, DEFAULT_MAX_IN_FLIGHT_PER_SHARD)
}

fn default_io_memory_kib() -> Spanned<usize> {
    Spanned::new(0..0, DEFAULT_IO_MEMORY_KIB)
}

impl TuningFile {
    /// Check every rule; `allowed` is the CPU set to check against and
    /// `memlock_limit_kib` the locked-memory limit (`None`: unlimited), parameters so
    /// tests do not depend on the machine.
    fn validate(
        self,
        source: &Source,
        allowed: &[usize],
        memlock_limit_kib: Option<u64>,
    ) -> Result<Tuning, ConfigError> {
        let shard_cpus = check_cpus(&self.shard_cpus, "shard_cpus", true, source, allowed)?;
        let mock_cpus = check_cpus(&self.mock_cpus, "mock_cpus", false, source, allowed)?;
        let at_least = |value: &Spanned<usize>, field: &str, min: usize| {
            if *value.get_ref() < min {
                return Err(source.error(value.span(), field, format!("must be at least {min}")));
            }
            Ok(*value.get_ref())
        };
        let io_memory_kib = at_least(&self.io_memory_kib, "io_memory_kib", MIN_IO_MEMORY_KIB)?;
        if let Some(limit_kib) = memlock_limit_kib {
            let shards = if shard_cpus.is_empty() {
                allowed.len()
            } else {
                shard_cpus.len()
            };
            check_locked_memory(&self.io_memory_kib, shards, limit_kib, source)?;
        }
        Ok(Tuning {
            shard_cpus,
            mock_cpus,
            connections_per_node: at_least(&self.connections_per_node, "connections_per_node", 1)?,
            max_in_flight_per_shard: at_least(
                &self.max_in_flight_per_shard,
                "max_in_flight_per_shard",
                1,
            )?,
            io_memory_kib,
        })
    }
}

/// Every shard's executor locks `io_memory_kib` plus its rings. When the soft
/// RLIMIT_MEMLOCK cannot hold that for all shards, glommio still starts but silently
/// leaves its buffers unregistered, so the limit is checked here, at load.
fn check_locked_memory(
    io_memory_kib: &Spanned<usize>,
    shards: usize,
    limit_kib: u64,
    source: &Source,
) -> Result<(), ConfigError> {
    let per_shard = *io_memory_kib.get_ref();
    let shards_u64 = u64::try_from(shards).unwrap_or(u64::MAX);
    let needed = u64::try_from(per_shard)
        .unwrap_or(u64::MAX)
        .saturating_add(RING_MEMORY_KIB)
        .saturating_mul(shards_u64);
    if needed <= limit_kib {
        return Ok(());
    }
    let plural = if shards == 1 { "" } else { "s" };
    let fits = (limit_kib / shards_u64.max(1)).saturating_sub(RING_MEMORY_KIB);
    let smaller = if fits >= MIN_IO_MEMORY_KIB as u64 {
        format!("or a smaller io_memory_kib (at most {fits} fits)")
    } else {
        "or fewer shard_cpus (not even the smallest io_memory_kib fits)".to_string()
    };
    let message = format!(
        "{shards} shard{plural} × ({per_shard} KiB + {RING_MEMORY_KIB} KiB for the rings) = \
         {needed} KiB of locked memory, but RLIMIT_MEMLOCK allows {limit_kib} KiB; raise it \
         with `ulimit -l` or LimitMEMLOCK= in the systemd unit, {smaller}"
    );
    // A default has no place in the file: name the field, not a line.
    if io_memory_kib.span() == (0..0) {
        return Err(ConfigError::new(source.file, message).in_field("io_memory_kib"));
    }
    Err(source.error(io_memory_kib.span(), "io_memory_kib", message))
}

/// The soft RLIMIT_MEMLOCK of this process in KiB, or `None` when it is unlimited
/// (or cannot be read), in which case nothing is checked against it.
#[cfg(target_os = "linux")]
pub fn memlock_limit_kib() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live, writable rlimit; getrlimit only writes into it.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur / 1024)
}

#[cfg(not(target_os = "linux"))]
pub fn memlock_limit_kib() -> Option<u64> {
    None
}

/// Every CPU must be one this process may run on; with `unique`, each at most once
/// (two shards pinned to one CPU would defeat thread-per-core).
fn check_cpus(
    cpus: &[Spanned<usize>],
    field: &str,
    unique: bool,
    source: &Source,
    allowed: &[usize],
) -> Result<Vec<usize>, ConfigError> {
    let mut checked: Vec<usize> = Vec::with_capacity(cpus.len());
    for (index, cpu) in cpus.iter().enumerate() {
        let value = *cpu.get_ref();
        let field = format!("{field}[{index}]");
        if !allowed.contains(&value) {
            return Err(source.error(
                cpu.span(),
                field,
                format!(
                    "CPU {value} is not one this process may run on (allowed CPUs: {})",
                    format_cpu_list(allowed)
                ),
            ));
        }
        if unique && checked.contains(&value) {
            return Err(source.error(cpu.span(), field, format!("CPU {value} is listed twice")));
        }
        checked.push(value);
    }
    Ok(checked)
}

/// CPUs this process may run on, ascending: its affinity mask intersected with the
/// online CPUs. (glommio's `CpuSet::online` ignores the affinity mask, so a process
/// started under `taskset` or in a cpuset-limited container would pin outside it.)
/// Falls back to whichever of the two is readable, then to `0..available_parallelism`.
pub fn allowed_cpus() -> Vec<usize> {
    let online = std::fs::read_to_string(ONLINE_CPUS)
        .ok()
        .and_then(|text| parse_cpu_list(&text).ok());
    let cpus = match (affinity_cpus(), online) {
        (Some(affinity), Some(online)) => affinity
            .into_iter()
            .filter(|cpu| online.binary_search(cpu).is_ok())
            .collect(),
        (Some(only), None) | (None, Some(only)) => only,
        (None, None) => Vec::new(),
    };
    if !cpus.is_empty() {
        return cpus;
    }
    let count = std::thread::available_parallelism().map_or(1, |count| count.get());
    (0..count).collect()
}

/// The CPUs in this process's affinity mask, or `None` if it cannot be read (also on
/// machines with more CPUs than a `cpu_set_t` holds, where the call fails).
#[cfg(target_os = "linux")]
fn affinity_cpus() -> Option<Vec<usize>> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live, writable cpu_set_t of exactly `size` bytes; pid 0 is us.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return None;
    }
    // SAFETY: every index is below the set's size in bits, as CPU_ISSET requires.
    let cpus = (0..size * 8)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    Some(cpus)
}

#[cfg(not(target_os = "linux"))]
fn affinity_cpus() -> Option<Vec<usize>> {
    None
}

/// Parse the kernel's CPU list format (`0-3,5,7-8`, as in `/sys/.../cpu/online`),
/// returning the CPUs ascending without repeats. Blank text is an empty list.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let number = |part: &str| {
        part.trim()
            .parse::<usize>()
            .map_err(|_| format!("{:?} is not a CPU number", part.trim()))
    };
    let mut cpus = Vec::new();
    for item in text
        .trim()
        .split(',')
        .filter(|item| !item.trim().is_empty())
    {
        match item.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if first > last {
                    return Err(format!("range {:?} runs backwards", item.trim()));
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(number(item)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Write CPUs in the kernel's list format, e.g. `0-3,5`, for messages.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<String> = Vec::new();
    let mut rest = sorted.as_slice();
    while let Some(&first) = rest.first() {
        let run = rest
            .iter()
            .enumerate()
            .take_while(|&(offset, &cpu)| cpu == first + offset)
            .count();
        let last = rest[run - 1];
        ranges.push(if run == 1 {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
        rest = &rest[run..];
    }
    ranges.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse and validate against a fixed CPU set, 0-3 and 6, without a
    /// locked-memory limit.
    fn parse(text: &str) -> Result<Tuning, String> {
        parse_with_limit(text, None)
    }

    /// [`parse`] under a locked-memory limit of `memlock_limit_kib`.
    fn parse_with_limit(text: &str, memlock_limit_kib: Option<u64>) -> Result<Tuning, String> {
        let source = Source::new(Path::new("tuning.toml"), text);
        source
            .parse::<TuningFile>()
            .and_then(|file| file.validate(&source, &[0, 1, 2, 3, 6], memlock_limit_kib))
            .map_err(|error| error.to_string())
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let expected = Tuning {
            shard_cpus: vec![],
            mock_cpus: vec![],
            connections_per_node: 4,
            max_in_flight_per_shard: 10_000,
            io_memory_kib: 512,
        };
        assert_eq!(parse(""), Ok(expected.clone()));
        assert_eq!(Tuning::default(), expected);
    }

    #[test]
    fn parses_every_key() {
        let text = "shard_cpus = [3, 1]\nmock_cpus = [6, 6]\nconnections_per_node = 2\n\
                    max_in_flight_per_shard = 5\nio_memory_kib = 64\n";
        assert_eq!(
            parse(text),
            Ok(Tuning {
                shard_cpus: vec![3, 1],
                mock_cpus: vec![6, 6],
                connections_per_node: 2,
                max_in_flight_per_shard: 5,
                io_memory_kib: 64,
            })
        );
    }

    #[test]
    fn cpus_must_be_allowed_and_shard_cpus_unique() {
        assert_eq!(
            parse("connections_per_node = 2\nshard_cpus = [0, 4]\n"),
            Err(
                "tuning.toml:2: shard_cpus[1]: CPU 4 is not one this process may run on \
                 (allowed CPUs: 0-3,6)"
                    .into()
            )
        );
        assert_eq!(
            parse("mock_cpus = [\n  7,\n]\n"),
            Err(
                "tuning.toml:2: mock_cpus[0]: CPU 7 is not one this process may run on \
                 (allowed CPUs: 0-3,6)"
                    .into()
            )
        );
        assert_eq!(
            parse("shard_cpus = [1,\n 2,\n 1]\n"),
            Err("tuning.toml:3: shard_cpus[2]: CPU 1 is listed twice".into())
        );
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(
            parse("connections_per_node = 0\n"),
            Err("tuning.toml:1: connections_per_node: must be at least 1".into())
        );
        assert_eq!(
            parse("\nmax_in_flight_per_shard = 0\n"),
            Err("tuning.toml:2: max_in_flight_per_shard: must be at least 1".into())
        );
        assert_eq!(
            parse("io_memory_kib = 63\n"),
            Err("tuning.toml:1: io_memory_kib: must be at least 64".into())
        );
    }

    #[test]
    fn io_memory_must_fit_the_locked_memory_limit() {
        // 5 shards (every allowed CPU) × (512 + 256) KiB = 3840 KiB.
        let io_memory = |tuning: Result<Tuning, String>| tuning.map(|t| t.io_memory_kib);
        assert_eq!(io_memory(parse_with_limit("", Some(3840))), Ok(512));
        assert_eq!(
            io_memory(parse_with_limit("io_memory_kib = 10000000\n", None)),
            Ok(10_000_000)
        );
        assert_eq!(
            parse_with_limit(
                "shard_cpus = [0, 1]\n\nio_memory_kib = 10000000\n",
                Some(8192)
            ),
            Err(
                "tuning.toml:3: io_memory_kib: 2 shards × (10000000 KiB + 256 KiB for the \
                 rings) = 20000512 KiB of locked memory, but RLIMIT_MEMLOCK allows 8192 KiB; \
                 raise it with `ulimit -l` or LimitMEMLOCK= in the systemd unit, or a smaller \
                 io_memory_kib (at most 3840 fits)"
                    .into()
            )
        );
        // The default, for more shards than the limit holds: no line to name.
        assert_eq!(
            parse_with_limit("", Some(3839)),
            Err(
                "tuning.toml: io_memory_kib: 5 shards × (512 KiB + 256 KiB for the rings) = \
                 3840 KiB of locked memory, but RLIMIT_MEMLOCK allows 3839 KiB; raise it with \
                 `ulimit -l` or LimitMEMLOCK= in the systemd unit, or a smaller io_memory_kib \
                 (at most 511 fits)"
                    .into()
            )
        );
        assert_eq!(
            parse_with_limit("shard_cpus = [6]\nio_memory_kib = 64\n", Some(64)),
            Err(
                "tuning.toml:2: io_memory_kib: 1 shard × (64 KiB + 256 KiB for the rings) = \
                 320 KiB of locked memory, but RLIMIT_MEMLOCK allows 64 KiB; raise it with \
                 `ulimit -l` or LimitMEMLOCK= in the systemd unit, or fewer shard_cpus (not \
                 even the smallest io_memory_kib fits)"
                    .into()
            )
        );
        // Values no arithmetic holds are refused, not wrapped around.
        let text = format!("io_memory_kib = {}\n", i64::MAX);
        assert!(parse_with_limit(&text, Some(u64::MAX - 1)).is_err());
    }

    #[test]
    fn memlock_limit_is_read() {
        // This machine's limit, whatever it is; RLIM_INFINITY must come back as
        // `None`, never as a huge number of KiB.
        if let Some(limit_kib) = memlock_limit_kib() {
            assert!(limit_kib < u64::MAX / 1024, "{limit_kib}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_are_rejected() {
        assert_eq!(
            parse("io_memory = 512\n"),
            Err(
                "tuning.toml:1: unknown field `io_memory`, expected one of `shard_cpus`, \
                 `mock_cpus`, `connections_per_node`, `max_in_flight_per_shard`, `io_memory_kib`"
                    .into()
            )
        );
        assert_eq!(
            parse("\nio_memory_kib = -1\n"),
            Err("tuning.toml:2: io_memory_kib: invalid value: integer `-1`, expected usize".into())
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        assert_eq!(
            parse("\u{feff}connections_per_node = 2\n").map(|t| t.connections_per_node),
            Ok(2)
        );
        assert_eq!(
            parse("\u{feff}io_memory_kib = -1\n"),
            Err("tuning.toml:1: io_memory_kib: invalid value: integer `-1`, expected usize".into())
        );
    }

    #[test]
    fn from_str_checks_against_this_machine() {
        let allowed = allowed_cpus();
        let path = Path::new("tuning.toml");
        let text = format!("shard_cpus = [{}]\n", allowed[0]);
        assert_eq!(
            Tuning::from_str(&text, path).map(|tuning| tuning.shard_cpus),
            Ok(vec![allowed[0]])
        );
        let outside = allowed[allowed.len() - 1] + 1;
        let text = format!("shard_cpus = [{outside}]\n");
        assert_eq!(
            Tuning::from_str(&text, path).map_err(|error| error.to_string()),
            Err(format!(
                "tuning.toml:1: shard_cpus[0]: CPU {outside} is not one this process may run on \
                 (allowed CPUs: {})",
                format_cpu_list(&allowed)
            ))
        );
    }

    #[test]
    fn load_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        std::fs::write(&path, "max_in_flight_per_shard = 7\n").unwrap();
        assert_eq!(
            Tuning::load(&path).map(|tuning| tuning.max_in_flight_per_shard),
            Ok(7)
        );
        let missing = dir.path().join("missing.toml");
        assert_eq!(
            Tuning::load(&missing).map_err(|error| error.to_string()),
            Err(format!(
                "{}: cannot read: No such file or directory (os error 2)",
                missing.display()
            ))
        );
    }

    #[test]
    fn resolved_shard_cpus_defaults_to_allowed_cpus() {
        assert_eq!(Tuning::default().resolved_shard_cpus(), allowed_cpus());
        let pinned = Tuning {
            shard_cpus: vec![5, 2],
            ..Tuning::default()
        };
        assert_eq!(pinned.resolved_shard_cpus(), vec![5, 2]);
    }

    #[test]
    fn allowed_cpus_are_ascending_unique_and_within_affinity() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|pair| pair[0] < pair[1]), "{cpus:?}");
        if let Some(affinity) = affinity_cpus() {
            assert!(cpus.iter().all(|cpu| affinity.contains(cpu)), "{cpus:?}");
        }
    }

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5,7-8\n"), Ok(vec![0, 1, 2, 3, 5, 7, 8]));
        assert_eq!(parse_cpu_list("0"), Ok(vec![0]));
        assert_eq!(parse_cpu_list(" 4-4 , 2 "), Ok(vec![2, 4]));
        assert_eq!(parse_cpu_list("5,1-2,2"), Ok(vec![1, 2, 5]));
        assert_eq!(parse_cpu_list("\n"), Ok(vec![]));
        assert_eq!(
            parse_cpu_list("3-1"),
            Err("range \"3-1\" runs backwards".into())
        );
        assert_eq!(
            parse_cpu_list("0-x"),
            Err("\"x\" is not a CPU number".into())
        );
        assert_eq!(
            parse_cpu_list("1,,a"),
            Err("\"a\" is not a CPU number".into())
        );
    }

    #[test]
    fn formats_cpu_lists() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
        assert_eq!(format_cpu_list(&[6, 0, 1]), "0-1,6");
        assert_eq!(format_cpu_list(&[4]), "4");
        assert_eq!(format_cpu_list(&[]), "");
    }

    /// The shipped example must stay loadable on any machine.
    #[test]
    fn example_file_loads() {
        let root = Path::new(file!())
            .ancestors()
            .nth(2)
            .unwrap_or(Path::new(""));
        let tuning = Tuning::load(&root.join("tuning/example.toml"));
        assert_eq!(tuning, Ok(Tuning::default()));
    }
}
