//! The tuning file as written: TOML → [`Parsed`], with every rule that needs no
//! host checked here (unknown keys, CPU list syntax, repeats, limits). What the
//! values mean on a given machine is [`super::check`]'s business.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::{
    DEFAULT_CONNECTIONS_PER_NODE, DEFAULT_IO_MEMORY_KIB, DEFAULT_MAX_IN_FLIGHT_PER_SHARD, MAX_CPU,
    MIN_IO_MEMORY_KIB,
};
use crate::diagnostic::{ConfigError, Source};
use crate::runtime::{ExecutorTuning, NetTuning};

/// A value from the file with where it was written; `line` is `None` for a
/// default or a value built in code, which have no place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value itself.
    pub value: T,
    /// 1-based line of the file it came from, to put in findings.
    pub line: Option<usize>,
    /// The key it was given to, e.g. `shard_cpus[2]`, to put in findings.
    pub field: String,
}

impl<T> Located<T> {
    /// A value with no place in a file.
    pub fn unplaced(value: T, field: impl Into<String>) -> Located<T> {
        Located {
            value,
            line: None,
            field: field.into(),
        }
    }
}

/// A tuning file parsed and checked on its own, before any host is consulted;
/// [`super::check::check`] judges it against one, [`super::Tuning::load`] turns
/// it into a [`super::Tuning`] when it has no error there.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The file, as the caller named it, for findings.
    pub file: PathBuf,
    /// `shards = N`: how many shards to place by default, when `shard_cpus` is not given.
    pub shards: Option<Located<usize>>,
    /// Explicit shard CPUs, in shard order; empty means placed by default.
    pub shard_cpus: Vec<Located<usize>>,
    /// Whether hyperthread siblings may each carry a shard.
    pub smt: Located<bool>,
    /// Whether the shard CPUs must be isolated (`isolcpus`, `nohz_full`).
    pub isolated: Located<bool>,
    /// CPUs of the built-in mock nodes (may repeat).
    pub mock_cpus: Vec<Located<usize>>,
    /// CPUs the coordinator thread may run on; empty means not pinned.
    pub coordinator_cpus: Vec<Located<usize>>,
    /// CPUs the sink writer thread may run on; empty means not pinned.
    pub sink_cpus: Vec<Located<usize>>,
    /// CPUs the admin (`/metrics`) thread may run on; empty means not pinned.
    pub admin_cpus: Vec<Located<usize>>,
    /// The NUMA node of each shard, as the operator expects it; empty: unchecked.
    pub numa_nodes: Vec<Located<usize>>,
    /// Most HTTP/2 connections per node per shard.
    pub connections_per_node: usize,
    /// Jobs in flight per shard before ticks are skipped.
    pub max_in_flight_per_shard: usize,
    /// glommio registered-buffer memory per shard, KiB.
    pub io_memory_kib: Located<usize>,
    /// `[executor]`, `[http2]` and `[socket]`, as the runtime takes them.
    pub executor: ExecutorTuning,
    /// Where `[socket] busy_poll_us` was written, for the permission finding.
    pub busy_poll_line: Option<usize>,
}

/// The file's keys; see `tuning/example.toml` for what each means and its default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TuningFile {
    /// How many shards the default placement makes ([`Parsed::shards`]).
    shards: Option<Spanned<usize>>,
    /// Explicit shard CPUs, in shard order.
    shard_cpus: Option<Spanned<CpuList>>,
    /// Whether hyperthread siblings may carry shards.
    smt: Option<Spanned<bool>>,
    /// Whether the shard CPUs must be in isolcpus and nohz_full.
    isolated: Option<Spanned<bool>>,
    /// CPUs of the built-in mock nodes.
    mock_cpus: Option<Spanned<CpuList>>,
    /// CPUs of the coordinator thread.
    coordinator_cpus: Option<Spanned<CpuList>>,
    /// CPUs of the sink writer thread.
    sink_cpus: Option<Spanned<CpuList>>,
    /// CPUs of the admin thread.
    admin_cpus: Option<Spanned<CpuList>>,
    /// The NUMA node of each shard CPU, each with its place for findings.
    numa_nodes: Option<Spanned<Vec<Spanned<usize>>>>,
    /// Most HTTP/2 connections per node per shard.
    connections_per_node: Option<Spanned<usize>>,
    /// A shard's bound on jobs in flight.
    max_in_flight_per_shard: Option<Spanned<usize>>,
    /// glommio registered-buffer memory per shard, KiB.
    io_memory_kib: Option<Spanned<usize>>,
    /// `[executor]`.
    executor: Option<ExecutorSection>,
    /// `[http2]`.
    http2: Option<Http2Section>,
    /// `[socket]`.
    socket: Option<SocketSection>,
}

/// `[executor]`: glommio settings of every shard executor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutorSection {
    /// Entries per io_uring ring.
    ring_depth: Option<Spanned<usize>>,
    /// Longest idle spin before parking while several replies are awaited,
    /// µs; 0 is none.
    spin_before_park_us: Option<Spanned<u64>>,
    /// glommio's preempt timer, ms.
    preempt_timer_ms: Option<Spanned<u64>>,
    /// Stall threshold, ms; 0 turns detection off.
    stall_threshold_ms: Option<Spanned<u64>>,
}

/// `[http2]`: the client side of every connection to a node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http2Section {
    /// Per-stream receive window, KiB.
    stream_window_kib: Option<Spanned<u64>>,
    /// Connection receive window, KiB.
    connection_window_kib: Option<Spanned<u64>>,
    /// Largest frame the peer may send, KiB.
    max_frame_size_kib: Option<Spanned<u64>>,
    /// Our cap on open streams per connection; 0 follows the peer.
    max_streams_per_connection: Option<Spanned<usize>>,
}

/// `[socket]`: options set on every client socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketSection {
    /// TCP_NODELAY.
    nodelay: Option<bool>,
    /// SO_SNDBUF, KiB; 0 leaves the kernel's.
    send_buffer_kib: Option<Spanned<u64>>,
    /// SO_RCVBUF, KiB; 0 leaves the kernel's.
    recv_buffer_kib: Option<Spanned<u64>>,
    /// SO_BUSY_POLL, µs; 0 is off.
    busy_poll_us: Option<Spanned<u64>>,
}

/// A CPU list as written: an array of numbers (`[0, 2]`), each with its own
/// place, or a string in the kernel's list format (`"0-3,6"`).
#[derive(Debug)]
enum CpuList {
    /// `[0, 2, 3]`.
    Items(Vec<Spanned<usize>>),
    /// `"0-3,6"`.
    Text(String),
}

impl<'de> Deserialize<'de> for CpuList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CpuList, D::Error> {
        struct CpuListVisitor;
        impl<'de> Visitor<'de> for CpuListVisitor {
            type Value = CpuList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of CPU numbers like [0, 2] or a CPU list like \"0-3,6\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<CpuList, E> {
                Ok(CpuList::Text(text.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CpuList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<usize>>()? {
                    items.push(item);
                }
                Ok(CpuList::Items(items))
            }
        }
        deserializer.deserialize_any(CpuListVisitor)
    }
}

/// Parse the file's text and check every rule that needs no host; `path` names
/// the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Parsed, ConfigError> {
    let source = Source::new(path, text);
    let file: TuningFile = source.parse()?;
    file.validate(&source)
}

/// A count or size that must lie in `min..=max`.
fn bounded<T: Copy + PartialOrd + fmt::Display>(
    value: &Option<Spanned<T>>,
    default: T,
    field: &str,
    (min, max): (T, T),
    source: &Source,
) -> Result<T, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let number = *value.get_ref();
    if number < min {
        return Err(source.error(value.span(), field, format!("must be at least {min}")));
    }
    if number > max {
        return Err(source.error(value.span(), field, format!("must be at most {max}")));
    }
    Ok(number)
}

impl TuningFile {
    fn validate(self, source: &Source) -> Result<Parsed, ConfigError> {
        let line = |span: std::ops::Range<usize>| Some(source.line_of(span.start));
        let flag = |value: &Option<Spanned<bool>>, field: &str| match value {
            Some(value) => Located {
                value: *value.get_ref(),
                line: line(value.span()),
                field: field.to_string(),
            },
            None => Located::unplaced(false, field),
        };
        let shard_cpus = cpu_list(&self.shard_cpus, "shard_cpus", true, source)?;
        let shards = match &self.shards {
            None => None,
            Some(shards) => {
                if !shard_cpus.is_empty() {
                    return Err(source.error(
                        shards.span(),
                        "shards",
                        "give shards (placed for you) or shard_cpus (placed by you), not both",
                    ));
                }
                let count = bounded(&self.shards, 1, "shards", (1, MAX_CPU + 1), source)?;
                Some(Located {
                    value: count,
                    line: line(shards.span()),
                    field: "shards".into(),
                })
            }
        };
        let numa_nodes = match &self.numa_nodes {
            None => Vec::new(),
            Some(nodes) => {
                if nodes.get_ref().len() != shard_cpus.len() {
                    let message = if shard_cpus.is_empty() {
                        "needs shard_cpus: it names the NUMA node of each listed shard CPU"
                            .to_string()
                    } else {
                        format!(
                            "has {} entries but shard_cpus has {}: one node per shard",
                            nodes.get_ref().len(),
                            shard_cpus.len()
                        )
                    };
                    return Err(source.error(nodes.span(), "numa_nodes", message));
                }
                nodes
                    .get_ref()
                    .iter()
                    .enumerate()
                    .map(|(index, node)| Located {
                        value: *node.get_ref(),
                        line: line(node.span()),
                        field: format!("numa_nodes[{index}]"),
                    })
                    .collect()
            }
        };
        let io_memory_kib = bounded(
            &self.io_memory_kib,
            DEFAULT_IO_MEMORY_KIB,
            "io_memory_kib",
            (MIN_IO_MEMORY_KIB, 1 << 30),
            source,
        )?;
        let executor = self.executor_tuning(source)?;
        Ok(Parsed {
            file: source.file.to_path_buf(),
            shards,
            shard_cpus,
            smt: flag(&self.smt, "smt"),
            isolated: flag(&self.isolated, "isolated"),
            mock_cpus: cpu_list(&self.mock_cpus, "mock_cpus", false, source)?,
            coordinator_cpus: cpu_list(&self.coordinator_cpus, "coordinator_cpus", true, source)?,
            sink_cpus: cpu_list(&self.sink_cpus, "sink_cpus", true, source)?,
            admin_cpus: cpu_list(&self.admin_cpus, "admin_cpus", true, source)?,
            numa_nodes,
            connections_per_node: bounded(
                &self.connections_per_node,
                DEFAULT_CONNECTIONS_PER_NODE,
                "connections_per_node",
                (1, 1 << 16),
                source,
            )?,
            max_in_flight_per_shard: bounded(
                &self.max_in_flight_per_shard,
                DEFAULT_MAX_IN_FLIGHT_PER_SHARD,
                "max_in_flight_per_shard",
                (1, 1 << 30),
                source,
            )?,
            io_memory_kib: Located {
                value: io_memory_kib,
                line: self.io_memory_kib.as_ref().and_then(|v| line(v.span())),
                field: "io_memory_kib".into(),
            },
            executor,
            busy_poll_line: self
                .socket
                .as_ref()
                .and_then(|socket| socket.busy_poll_us.as_ref())
                .and_then(|value| line(value.span())),
        })
    }

    /// `[executor]`, `[http2]` and `[socket]` checked and turned into the runtime's
    /// settings; absent keys keep [`ExecutorTuning::DEFAULT`].
    fn executor_tuning(&self, source: &Source) -> Result<ExecutorTuning, ConfigError> {
        let defaults = ExecutorTuning::DEFAULT;
        let net = NetTuning::DEFAULT;
        let mut tuning = defaults;
        if let Some(section) = &self.executor {
            tuning.ring_depth = bounded(
                &section.ring_depth,
                defaults.ring_depth,
                "executor.ring_depth",
                (8, 32_768),
                source,
            )?;
            let spin = bounded(
                &section.spin_before_park_us,
                defaults
                    .spin_before_park
                    .map_or(0, |spin| spin.as_micros() as u64),
                "executor.spin_before_park_us",
                (0, 1_000_000),
                source,
            )?;
            tuning.spin_before_park = (spin > 0).then(|| Duration::from_micros(spin));
            let preempt = bounded(
                &section.preempt_timer_ms,
                100,
                "executor.preempt_timer_ms",
                (1, 10_000),
                source,
            )?;
            tuning.preempt_timer = Duration::from_millis(preempt);
            let stall = bounded(
                &section.stall_threshold_ms,
                10,
                "executor.stall_threshold_ms",
                (0, 60_000),
                source,
            )?;
            tuning.stall_threshold = (stall > 0).then(|| Duration::from_millis(stall));
        }
        // The largest window HTTP/2 allows is 2^31 - 1 bytes.
        const MAX_WINDOW_KIB: u64 = ((1 << 31) - 1) / 1024;
        if let Some(section) = &self.http2 {
            let stream = bounded(
                &section.stream_window_kib,
                u64::from(net.stream_window / 1024),
                "http2.stream_window_kib",
                (64, MAX_WINDOW_KIB),
                source,
            )?;
            let connection = bounded(
                &section.connection_window_kib,
                u64::from(net.connection_window / 1024).max(stream),
                "http2.connection_window_kib",
                (stream, MAX_WINDOW_KIB),
                source,
            )?;
            // HTTP/2 frames carry 16 KiB to 16 MiB - 1 byte.
            let frame = bounded(
                &section.max_frame_size_kib,
                u64::from(net.max_frame_size / 1024),
                "http2.max_frame_size_kib",
                (16, 16_383),
                source,
            )?;
            let streams = bounded(
                &section.max_streams_per_connection,
                0,
                "http2.max_streams_per_connection",
                (0, 1 << 20),
                source,
            )?;
            // Each bound above keeps these within u32.
            tuning.net.stream_window = (stream * 1024) as u32;
            tuning.net.connection_window = (connection * 1024) as u32;
            tuning.net.max_frame_size = (frame * 1024) as u32;
            tuning.net.max_streams_per_connection = (streams > 0).then_some(streams);
        }
        if let Some(section) = &self.socket {
            tuning.net.nodelay = section.nodelay.unwrap_or(net.nodelay);
            let buffer = |value: &Option<Spanned<u64>>, field: &str| {
                bounded(value, 0, field, (0, 1 << 20), source)
                    .map(|kib| (kib > 0).then_some(kib as usize * 1024))
            };
            tuning.net.send_buffer_bytes =
                buffer(&section.send_buffer_kib, "socket.send_buffer_kib")?;
            tuning.net.recv_buffer_bytes =
                buffer(&section.recv_buffer_kib, "socket.recv_buffer_kib")?;
            let busy = bounded(
                &section.busy_poll_us,
                0,
                "socket.busy_poll_us",
                (0, 1_000_000),
                source,
            )?;
            tuning.net.busy_poll_us = (busy > 0).then_some(busy as u32);
        }
        Ok(tuning)
    }
}

/// A CPU list field, each CPU with its own place (the array element's line, or
/// the string's); with `unique`, a CPU listed twice is an error.
fn cpu_list(
    value: &Option<Spanned<CpuList>>,
    field: &str,
    unique: bool,
    source: &Source,
) -> Result<Vec<Located<usize>>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let mut cpus: Vec<Located<usize>> = Vec::new();
    match value.get_ref() {
        CpuList::Items(items) => {
            for (index, item) in items.iter().enumerate() {
                let cpu = *item.get_ref();
                let name = format!("{field}[{index}]");
                if cpu > MAX_CPU {
                    return Err(source.error(item.span(), name, above_max(cpu)));
                }
                if unique && cpus.iter().any(|seen| seen.value == cpu) {
                    return Err(source.error(
                        item.span(),
                        name,
                        format!("CPU {cpu} is listed twice"),
                    ));
                }
                cpus.push(Located {
                    value: cpu,
                    line: Some(source.line_of(item.span().start)),
                    field: name,
                });
            }
        }
        CpuList::Text(text) => {
            let line = Some(source.line_of(value.span().start));
            let listed = parse_strict(text, unique)
                .map_err(|message| source.error(value.span(), field, message))?;
            cpus.extend(listed.into_iter().map(|cpu| Located {
                value: cpu,
                line,
                field: field.to_string(),
            }));
        }
    }
    Ok(cpus)
}

fn above_max(cpu: usize) -> String {
    format!("CPU {cpu} is above {MAX_CPU}, the highest CPU number Linux supports")
}

/// A CPU list string in the order written (`"4-5,0"` is 4, 5, 0), each part a
/// CPU or an ascending range; with `unique`, repeats are errors.
pub fn parse_strict(text: &str, unique: bool) -> Result<Vec<usize>, String> {
    let number = |part: &str, item: &str| -> Result<usize, String> {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "{item:?} in {text:?}: a range needs a first and a last CPU, like \"0-3\""
            ));
        }
        let cpu = part
            .parse::<usize>()
            .map_err(|_| format!("{part:?} in {text:?} is not a CPU number"))?;
        if cpu > MAX_CPU {
            return Err(above_max(cpu));
        }
        Ok(cpu)
    };
    let mut cpus: Vec<usize> = Vec::new();
    if text.trim().is_empty() {
        return Ok(cpus);
    }
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("{text:?} has an empty entry between commas"));
        }
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (number(first, item)?, number(last, item)?),
            None => {
                let cpu = number(item, item)?;
                (cpu, cpu)
            }
        };
        if first > last {
            return Err(format!(
                "range {item:?} runs backwards: write \"{last}-{first}\""
            ));
        }
        for cpu in first..=last {
            if unique && cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} is listed twice in {text:?}"));
            }
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Parsed, String> {
        parse(text, Path::new("host.toml")).map_err(|error| error.to_string())
    }

    fn cpus(list: &[Located<usize>]) -> Vec<usize> {
        list.iter().map(|cpu| cpu.value).collect()
    }

    #[test]
    fn cpu_lists_take_arrays_and_strings() {
        let parsed = parse_text(
            "shard_cpus = \"4-5,1\"\ncoordinator_cpus = [0]\nsink_cpus = \"0\"\nadmin_cpus = []\n",
        )
        .unwrap();
        assert_eq!(cpus(&parsed.shard_cpus), vec![4, 5, 1]);
        assert_eq!(parsed.shard_cpus[2].line, Some(1));
        assert_eq!(parsed.shard_cpus[2].field, "shard_cpus");
        assert_eq!(cpus(&parsed.coordinator_cpus), vec![0]);
        assert_eq!(parsed.coordinator_cpus[0].field, "coordinator_cpus[0]");
        assert_eq!(cpus(&parsed.sink_cpus), vec![0]);
        assert!(parsed.admin_cpus.is_empty());
    }

    #[test]
    fn bad_cpu_lists_name_file_line_and_field() {
        assert_eq!(
            parse_text("# host\nshard_cpus = \"0-\"\n").map(|_| ()),
            Err(
                "host.toml:2: shard_cpus: \"0-\" in \"0-\": a range needs a first and a last \
                 CPU, like \"0-3\""
                    .into()
            )
        );
        assert_eq!(
            parse_text("\n\nshard_cpus = \"3-1\"\n").map(|_| ()),
            Err("host.toml:3: shard_cpus: range \"3-1\" runs backwards: write \"1-3\"".into())
        );
        assert_eq!(
            parse_text("sink_cpus = \"0-2,2\"\n").map(|_| ()),
            Err("host.toml:1: sink_cpus: CPU 2 is listed twice in \"0-2,2\"".into())
        );
        assert_eq!(
            parse_text("shard_cpus = [1,\n 2,\n 1]\n").map(|_| ()),
            Err("host.toml:3: shard_cpus[2]: CPU 1 is listed twice".into())
        );
        assert_eq!(
            parse_text("shard_cpus = \"0,,1\"\n").map(|_| ()),
            Err("host.toml:1: shard_cpus: \"0,,1\" has an empty entry between commas".into())
        );
        assert_eq!(
            parse_text("shard_cpus = \"0-99999999999\"\n").map(|_| ()),
            Err(
                "host.toml:1: shard_cpus: CPU 99999999999 is above 8191, the highest CPU \
                 number Linux supports"
                    .into()
            )
        );
        assert!(parse_text("shard_cpus = 3\n")
            .unwrap_err()
            .starts_with("host.toml:1: shard_cpus: invalid type: integer `3`, expected a list"));
        // mock CPUs may repeat: two mock nodes can share a CPU.
        assert_eq!(
            cpus(&parse_text("mock_cpus = \"1,1\"\n").unwrap().mock_cpus),
            vec![1, 1]
        );
    }

    #[test]
    fn unknown_keys_are_refused_in_every_section() {
        assert!(parse_text("\nshard_cpu = [0]\n")
            .unwrap_err()
            .starts_with("host.toml:2: unknown field `shard_cpu`, expected one of `shards`"));
        assert!(parse_text("[http2]\nwindow = 1\n")
            .unwrap_err()
            .starts_with("host.toml:2: unknown field `window`, expected one of"));
        assert!(parse_text("[socket]\nnodelay = true\nreuse = 1\n")
            .unwrap_err()
            .starts_with("host.toml:3: unknown field `reuse`"));
    }

    #[test]
    fn shards_and_numa_nodes_are_checked() {
        assert_eq!(
            parse_text("shard_cpus = [0]\nshards = 2\n").map(|_| ()),
            Err(
                "host.toml:2: shards: give shards (placed for you) or shard_cpus (placed by \
                 you), not both"
                    .into()
            )
        );
        assert_eq!(
            parse_text("shards = 0\n").map(|_| ()),
            Err("host.toml:1: shards: must be at least 1".into())
        );
        assert_eq!(
            parse_text("shard_cpus = [0, 1]\nnuma_nodes = [0]\n").map(|_| ()),
            Err(
                "host.toml:2: numa_nodes: has 1 entries but shard_cpus has 2: one node per shard"
                    .into()
            )
        );
        assert_eq!(
            parse_text("numa_nodes = [0]\n").map(|_| ()),
            Err(
                "host.toml:1: numa_nodes: needs shard_cpus: it names the NUMA node of each \
                 listed shard CPU"
                    .into()
            )
        );
        let parsed = parse_text("shard_cpus = [0, 8]\nnuma_nodes = [0,\n 1]\n").unwrap();
        assert_eq!(parsed.numa_nodes[1].line, Some(3));
    }

    #[test]
    fn sections_become_runtime_settings() {
        let parsed = parse_text(
            "[executor]\nring_depth = 256\nspin_before_park_us = 50\npreempt_timer_ms = 5\n\
             stall_threshold_ms = 0\n[http2]\nstream_window_kib = 256\nconnection_window_kib = 512\n\
             max_frame_size_kib = 64\nmax_streams_per_connection = 100\n[socket]\nnodelay = false\n\
             send_buffer_kib = 4096\nrecv_buffer_kib = 2048\nbusy_poll_us = 50\n",
        )
        .unwrap();
        let tuning = parsed.executor;
        assert_eq!(tuning.ring_depth, 256);
        assert_eq!(tuning.spin_before_park, Some(Duration::from_micros(50)));
        assert_eq!(tuning.preempt_timer, Duration::from_millis(5));
        assert_eq!(tuning.stall_threshold, None);
        let net = tuning.net;
        assert_eq!(
            (net.stream_window, net.connection_window, net.max_frame_size),
            (256 << 10, 512 << 10, 64 << 10)
        );
        assert_eq!(net.max_streams_per_connection, Some(100));
        // The spin is on by default (adaptive, at most 120 µs); 0 turns it off.
        let default = parse_text("[executor]\nring_depth = 64\n")
            .unwrap()
            .executor;
        assert_eq!(default.spin_before_park, Some(Duration::from_micros(120)));
        let off = parse_text("[executor]\nspin_before_park_us = 0\n")
            .unwrap()
            .executor;
        assert_eq!(off.spin_before_park, None);
        assert!(!net.nodelay);
        assert_eq!(net.send_buffer_bytes, Some(4 << 20));
        assert_eq!(net.recv_buffer_bytes, Some(2 << 20));
        assert_eq!(net.busy_poll_us, Some(50));
        assert_eq!(parsed.busy_poll_line, Some(15));
        assert_eq!(parse_text("").unwrap().executor, ExecutorTuning::DEFAULT);
    }

    #[test]
    fn section_limits_name_the_dotted_key() {
        assert_eq!(
            parse_text("[executor]\nring_depth = 4\n").map(|_| ()),
            Err("host.toml:2: executor.ring_depth: must be at least 8".into())
        );
        assert_eq!(
            parse_text("[http2]\nstream_window_kib = 1024\nconnection_window_kib = 512\n")
                .map(|_| ()),
            Err("host.toml:3: http2.connection_window_kib: must be at least 1024".into())
        );
        assert_eq!(
            parse_text("[http2]\nstream_window_kib = 4194304\n").map(|_| ()),
            Err("host.toml:2: http2.stream_window_kib: must be at most 2097151".into())
        );
        assert_eq!(
            parse_text("[executor]\npreempt_timer_ms = 0\n").map(|_| ()),
            Err("host.toml:2: executor.preempt_timer_ms: must be at least 1".into())
        );
    }

    #[test]
    fn strict_lists_keep_the_order_written() {
        assert_eq!(parse_strict("4-5,0", true), Ok(vec![4, 5, 0]));
        assert_eq!(parse_strict(" ", true), Ok(vec![]));
        assert_eq!(parse_strict("1,1", false), Ok(vec![1, 1]));
        assert_eq!(
            parse_strict("-2", true),
            Err("\"-2\" in \"-2\": a range needs a first and a last CPU, like \"0-3\"".into())
        );
    }
}
