//! Per-host tuning: where the shards and the threads around them run, the glommio
//! settings of each shard, and the connection limits and options that depend on
//! the machine rather than on the fleet.
//!
//! Kept apart from the fleet config so one config can run on hosts of different
//! sizes. The file is read in steps, one file each:
//!
//! - [`file`]: TOML → [`file::Parsed`], every rule that needs no host (unknown
//!   keys, CPU lists like `0-` or `3-1`, repeats, limits), errors naming file and line.
//! - [`host`]: the facts of a host from `/sys` and `/proc` under a root a test can
//!   point at a fake tree (topology, NUMA, allowed CPUs, memlock, io_uring,
//!   isolation, governors, NIC IRQs, THP, swappiness).
//! - [`check`]: a parsed file judged against a host, one [`check::Finding`] per
//!   problem with its fix (`percore tune check`); its errors refuse a load, and
//!   [`check::startup`] refuses a run with bad placement before glommio sees it.
//! - [`generate`]: a file written from a host's topology (`percore tune generate`).
//! - [`pin`]: pinning the coordinator, sink and admin threads.
//!
//! [`Config`](crate::config::Config) loads the tuning file it points at (or uses
//! [`Tuning::default`]); start-up reads [`Tuning::resolved_shard_cpus`] to place
//! one shard per CPU and hands [`Tuning::executor`] to each shard's executor.

pub mod check;
pub mod file;
pub mod generate;
pub mod host;
pub mod pin;

use std::path::Path;

use crate::diagnostic::ConfigError;
use crate::runtime::ExecutorTuning;

/// Where the kernel lists the CPUs that are online.
const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";
/// The cgroup v2 cpuset this process is limited to, when there is one.
const CGROUP_CPUSET: &str = "/sys/fs/cgroup/cpuset.cpus.effective";

/// The highest CPU number Linux can have (NR_CPUS is at most 8192): a bound that
/// keeps `"0-99999999999"` from becoming a list of a hundred billion CPUs.
pub const MAX_CPU: usize = 8191;
/// Enough to use HTTP/2 multiplexing while still spreading load over a node's
/// accept queue; more only helps when a node caps `max_concurrent_streams` low.
pub const DEFAULT_CONNECTIONS_PER_NODE: usize = 4;
/// Bounds a shard's memory and queueing when nodes slow down; beyond it ticks are
/// skipped (and recorded as such) instead of piling up.
pub const DEFAULT_MAX_IN_FLIGHT_PER_SHARD: usize = 10_000;
/// glommio's own default; it is locked memory, so `ulimit -l` must allow it per shard.
pub const DEFAULT_IO_MEMORY_KIB: usize = 512;
/// Below this glommio's registered buffers are too small to be worth having.
pub const MIN_IO_MEMORY_KIB: usize = 64;

/// Host-specific settings, validated against the host this process runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// CPUs to pin one shard each on; empty means the default placement: one
    /// per physical core of the allowed CPUs ([`Tuning::resolved_shard_cpus`]).
    pub shard_cpus: Vec<usize>,
    /// Whether the default placement puts shards on hyperthread siblings too;
    /// off, each shard has a physical core of its own.
    pub smt: bool,
    /// CPUs for the built-in mock nodes (demo, bench); empty means pick CPUs the
    /// shards do not use, or share theirs when there are none.
    pub mock_cpus: Vec<usize>,
    /// CPUs the coordinator thread is pinned to; empty leaves it where it is.
    pub coordinator_cpus: Vec<usize>,
    /// CPUs the sink writer thread is pinned to; empty leaves it with the
    /// coordinator's mask, which it inherits.
    pub sink_cpus: Vec<usize>,
    /// CPUs the admin (`/metrics`) thread is pinned to; empty: the caller's mask.
    pub admin_cpus: Vec<usize>,
    /// The NUMA node of each shard as the file expects it, checked at load so a
    /// shard placed on the wrong socket is caught; empty: not checked.
    pub numa_nodes: Vec<usize>,
    /// Whether the shard CPUs must be in `isolcpus` and `nohz_full`: a load on a
    /// host where they are not is refused.
    pub isolated: bool,
    /// Most HTTP/2 connections a shard opens to one node; another is opened only when
    /// every open one has its `max_concurrent_streams` in use.
    pub connections_per_node: usize,
    /// Jobs a shard may have in flight before it skips ticks: its backpressure bound.
    pub max_in_flight_per_shard: usize,
    /// glommio registered-buffer memory per executor, in KiB (locked memory).
    pub io_memory_kib: usize,
    /// glommio settings of each shard executor and the options of its connections
    /// (`[executor]`, `[http2]`, `[socket]`).
    pub executor: ExecutorTuning,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            shard_cpus: Vec::new(),
            smt: false,
            mock_cpus: Vec::new(),
            coordinator_cpus: Vec::new(),
            sink_cpus: Vec::new(),
            admin_cpus: Vec::new(),
            numa_nodes: Vec::new(),
            isolated: false,
            connections_per_node: DEFAULT_CONNECTIONS_PER_NODE,
            max_in_flight_per_shard: DEFAULT_MAX_IN_FLIGHT_PER_SHARD,
            io_memory_kib: DEFAULT_IO_MEMORY_KIB,
            executor: ExecutorTuning::DEFAULT,
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

    /// Parse and validate tuning text; `path` names the file in errors. The
    /// file is checked against this host ([`host::Host::live`]): its first error
    /// finding is the error.
    #[allow(clippy::should_implement_trait)] // needs `path`, so it cannot be `FromStr`
    pub fn from_str(text: &str, path: &Path) -> Result<Tuning, ConfigError> {
        let parsed = file::parse(text, path)?;
        Tuning::resolve(&parsed, &host::Host::live())
    }

    /// `parsed` on `host`: refused with its first error finding, else the typed
    /// tuning, with `shards = N` turned into the CPUs it places.
    pub fn resolve(parsed: &file::Parsed, host: &host::Host) -> Result<Tuning, ConfigError> {
        let findings = check::check(parsed, host);
        if let Some(error) = findings
            .iter()
            .find(|finding| finding.severity == check::Severity::Error)
        {
            let mut config_error = ConfigError::new(
                error.file.clone().unwrap_or_else(|| parsed.file.clone()),
                format!("{}; {}", error.problem, error.fix),
            );
            config_error.line = error.line;
            config_error.field = error.field.clone();
            return Err(config_error);
        }
        let values = |list: &[file::Located<usize>]| list.iter().map(|cpu| cpu.value).collect();
        let shard_cpus = match &parsed.shards {
            Some(_) => check::placement(parsed, host),
            None => values(&parsed.shard_cpus),
        };
        Ok(Tuning {
            shard_cpus,
            smt: parsed.smt.value,
            mock_cpus: values(&parsed.mock_cpus),
            coordinator_cpus: values(&parsed.coordinator_cpus),
            sink_cpus: values(&parsed.sink_cpus),
            admin_cpus: values(&parsed.admin_cpus),
            numa_nodes: values(&parsed.numa_nodes),
            isolated: parsed.isolated.value,
            connections_per_node: parsed.connections_per_node,
            max_in_flight_per_shard: parsed.max_in_flight_per_shard,
            io_memory_kib: parsed.io_memory_kib.value,
            executor: parsed.executor,
        })
    }

    /// `shard_cpus`, or the default placement on this host: one CPU per physical
    /// core of the allowed CPUs (all of them with `smt`), leaving out the cores
    /// of the coordinator, sink and admin CPUs when others remain.
    pub fn resolved_shard_cpus(&self) -> Vec<usize> {
        if !self.shard_cpus.is_empty() {
            return self.shard_cpus.clone();
        }
        let mut host = host::Host::read(Path::new("/"));
        host.affinity = affinity_cpus();
        let reserved: Vec<usize> = [&self.coordinator_cpus, &self.sink_cpus, &self.admin_cpus]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let cpus = check::default_shard_cpus(&host, self.smt, &reserved);
        if cpus.is_empty() {
            allowed_cpus()
        } else {
            cpus
        }
    }
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

/// CPUs this process may run on, ascending: its affinity mask intersected with the
/// online CPUs and the cgroup's cpuset. (glommio's `CpuSet::online` ignores the
/// affinity mask, so a process started under `taskset` or in a cpuset-limited
/// container would pin outside it.) Falls back to whichever of the first two is
/// readable, then to `0..available_parallelism`.
pub fn allowed_cpus() -> Vec<usize> {
    let online = std::fs::read_to_string(ONLINE_CPUS)
        .ok()
        .and_then(|text| parse_cpu_list(&text).ok());
    let cgroup = std::fs::read_to_string(CGROUP_CPUSET)
        .ok()
        .and_then(|text| parse_cpu_list(&text).ok())
        .filter(|cpus| !cpus.is_empty());
    let cpus: Vec<usize> = match (affinity_cpus(), online) {
        (Some(affinity), Some(online)) => affinity
            .into_iter()
            .filter(|cpu| online.binary_search(cpu).is_ok())
            .collect(),
        (Some(only), None) | (None, Some(only)) => only,
        (None, None) => Vec::new(),
    };
    let cpus: Vec<usize> = match cgroup {
        Some(cgroup) => cpus
            .into_iter()
            .filter(|cpu| cgroup.binary_search(cpu).is_ok())
            .collect(),
        None => cpus,
    };
    if !cpus.is_empty() {
        return cpus;
    }
    let count = std::thread::available_parallelism().map_or(1, |count| count.get());
    (0..count).collect()
}

/// The CPUs in the calling thread's affinity mask (the process's, unless the
/// thread was pinned), or `None` if it cannot be read (also on machines with
/// more CPUs than a `cpu_set_t` holds, where the call fails).
#[cfg(target_os = "linux")]
pub fn affinity_cpus() -> Option<Vec<usize>> {
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
pub fn affinity_cpus() -> Option<Vec<usize>> {
    None
}

/// Parse the kernel's CPU list format (`0-3,5,7-8`, as in `/sys/.../cpu/online`),
/// returning the CPUs ascending without repeats. Blank text is an empty list.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let number = |part: &str| {
        part.trim()
            .parse::<usize>()
            .map_err(|_| format!("{:?} is not a CPU number", part.trim()))
            .and_then(|cpu| {
                if cpu > MAX_CPU {
                    Err(format!(
                        "CPU {cpu} is above {MAX_CPU}, the highest Linux supports"
                    ))
                } else {
                    Ok(cpu)
                }
            })
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
    use super::host::{Cpu, Host};
    use super::*;

    /// A host with CPUs 0-6 online, each its own core, of which this process may
    /// use 0-3 and 6; `memlock_kib` is its locked-memory limit.
    fn host(memlock_kib: Option<u64>) -> Host {
        let online: Vec<usize> = (0..=6).collect();
        Host {
            present: online.clone(),
            cpus: online
                .iter()
                .map(|&id| {
                    (
                        id,
                        Cpu {
                            id,
                            core_id: id,
                            package: 0,
                            siblings: vec![id],
                        },
                    )
                })
                .collect(),
            online,
            affinity: Some(vec![0, 1, 2, 3, 6]),
            memlock_kib,
            ..Host::default()
        }
    }

    /// Parse and validate against [`host`] without a locked-memory limit.
    fn parse(text: &str) -> Result<Tuning, String> {
        parse_with_limit(text, None)
    }

    /// [`parse`] under a locked-memory limit of `memlock_limit_kib`.
    fn parse_with_limit(text: &str, memlock_limit_kib: Option<u64>) -> Result<Tuning, String> {
        file::parse(text, Path::new("tuning.toml"))
            .and_then(|parsed| Tuning::resolve(&parsed, &host(memlock_limit_kib)))
            .map_err(|error| error.to_string())
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let expected = Tuning {
            shard_cpus: vec![],
            smt: false,
            mock_cpus: vec![],
            coordinator_cpus: vec![],
            sink_cpus: vec![],
            admin_cpus: vec![],
            numa_nodes: vec![],
            isolated: false,
            connections_per_node: 4,
            max_in_flight_per_shard: 10_000,
            io_memory_kib: 512,
            executor: ExecutorTuning::DEFAULT,
        };
        assert_eq!(parse(""), Ok(expected.clone()));
        assert_eq!(Tuning::default(), expected);
    }

    #[test]
    fn parses_every_top_level_key() {
        let text = "shard_cpus = [3, 1]\nmock_cpus = [6, 6]\nconnections_per_node = 2\n\
                    max_in_flight_per_shard = 5\nio_memory_kib = 64\ncoordinator_cpus = \"0\"\n\
                    sink_cpus = [0]\nadmin_cpus = \"6\"\nnuma_nodes = [0, 0]\nsmt = true\n";
        assert_eq!(
            parse(text),
            Ok(Tuning {
                shard_cpus: vec![3, 1],
                smt: true,
                mock_cpus: vec![6, 6],
                coordinator_cpus: vec![0],
                sink_cpus: vec![0],
                admin_cpus: vec![6],
                numa_nodes: vec![0, 0],
                isolated: false,
                connections_per_node: 2,
                max_in_flight_per_shard: 5,
                io_memory_kib: 64,
                executor: ExecutorTuning::DEFAULT,
            })
        );
    }

    #[test]
    fn shards_become_the_cpus_they_are_placed_on() {
        assert_eq!(
            parse("shards = 3\n").map(|t| t.shard_cpus),
            Ok(vec![0, 1, 2])
        );
        // The coordinator's CPU is left to it.
        assert_eq!(
            parse("shards = 3\ncoordinator_cpus = [0]\n").map(|t| t.shard_cpus),
            Ok(vec![1, 2, 3])
        );
        assert_eq!(
            parse("\nshards = 6\n"),
            Err(
                "tuning.toml:2: shards: 6 shards, but this process may place them on only 5 \
                 physical cores (CPUs 0-3,6); set shards = 5, set smt = true to use hyperthreads \
                 too, or allow more CPUs (CPUAffinity=, taskset, the cgroup's cpuset)"
                    .into()
            )
        );
    }

    #[test]
    fn cpus_must_be_allowed_and_shard_cpus_unique() {
        assert_eq!(
            parse("connections_per_node = 2\nshard_cpus = [0, 4]\n"),
            Err(
                "tuning.toml:2: shard_cpus[1]: CPU 4 is not one this process may run on (its \
                 affinity mask is 0-3,6); start percore with CPUAffinity= in the unit or \
                 taskset -c covering it, or use one of the allowed CPUs 0-3,6"
                    .into()
            )
        );
        assert_eq!(
            parse("mock_cpus = [\n  7,\n]\n"),
            Err(
                "tuning.toml:2: mock_cpus[0]: there is no CPU 7 on this host (CPUs 0-6); use \
                 one of the allowed CPUs 0-3,6"
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
            io_memory(parse_with_limit("io_memory_kib = 1000000\n", None)),
            Ok(1_000_000)
        );
        assert_eq!(
            parse_with_limit(
                "shard_cpus = [0, 1]\n\nio_memory_kib = 1000000\n",
                Some(8192)
            ),
            Err(
                "tuning.toml:3: io_memory_kib: 2 shards × (1000000 KiB + 256 KiB for the \
                 rings) = 2000512 KiB of locked memory, but RLIMIT_MEMLOCK allows 8192 KiB; \
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
        // Deeper rings lock more.
        assert_eq!(
            io_memory(parse_with_limit(
                "shard_cpus = [0]\n[executor]\nring_depth = 4096\n",
                Some(1700)
            )),
            Err(
                "tuning.toml: io_memory_kib: 1 shard × (512 KiB + 1280 KiB for the rings) = \
                 1792 KiB of locked memory, but RLIMIT_MEMLOCK allows 1700 KiB; raise it with \
                 `ulimit -l` or LimitMEMLOCK= in the systemd unit, or a smaller io_memory_kib \
                 (at most 420 fits)"
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
                "tuning.toml:1: unknown field `io_memory`, expected one of `shards`, \
                 `shard_cpus`, `smt`, `isolated`, `mock_cpus`, `coordinator_cpus`, `sink_cpus`, \
                 `admin_cpus`, `numa_nodes`, `connections_per_node`, `max_in_flight_per_shard`, \
                 `io_memory_kib`, `executor`, `http2`, `socket`"
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
        let error = Tuning::from_str(&text, path).map_err(|error| error.to_string());
        assert!(
            error
                .as_ref()
                .is_err_and(|error| error.starts_with("tuning.toml:1: shard_cpus[0]: ")
                    && error.contains(&format!("CPU {outside}"))
                    && error.ends_with(&format!(
                        "use one of the allowed CPUs {}",
                        format_cpu_list(&allowed)
                    ))),
            "{error:?}"
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
    fn resolved_shard_cpus_default_to_one_per_physical_core() {
        let mut live = host::Host::read(Path::new("/"));
        live.affinity = affinity_cpus();
        let expected = live.one_per_core(&allowed_cpus());
        assert_eq!(Tuning::default().resolved_shard_cpus(), expected);
        let smt = Tuning {
            smt: true,
            ..Tuning::default()
        };
        assert_eq!(smt.resolved_shard_cpus(), allowed_cpus());
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
        assert_eq!(
            parse_cpu_list("0-9000"),
            Err("CPU 9000 is above 8191, the highest Linux supports".into())
        );
    }

    #[test]
    fn formats_cpu_lists() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
        assert_eq!(format_cpu_list(&[6, 0, 1]), "0-1,6");
        assert_eq!(format_cpu_list(&[4]), "4");
        assert_eq!(format_cpu_list(&[]), "");
    }

    /// The shipped examples must stay parseable, and the default one loadable
    /// on any machine.
    #[test]
    fn example_files_parse() {
        let root = Path::new(file!())
            .ancestors()
            .nth(3)
            .unwrap_or(Path::new(""));
        let tuning = Tuning::load(&root.join("tuning/example.toml"));
        assert_eq!(tuning, Ok(Tuning::default()));
        let dir = root.join("tuning");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(error) = file::parse(&text, &path) {
                    panic!("{error}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 4, "{seen} examples in {}", dir.display());
    }
}
