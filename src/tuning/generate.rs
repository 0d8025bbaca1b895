//! `percore tune generate`: a tuning file written from a host's topology.
//!
//! Shards go on distinct physical cores of the CPUs this process may use (the
//! hyperthread siblings left out); on a host with at least
//! [`RESERVE_FROM_CORES`] cores, the first one is kept for the coordinator, sink
//! and admin threads. The locked-memory limit sizes `io_memory_kib`. What it
//! writes passes `percore tune check` on the same host (see the tests).

use super::check::ring_memory_kib;
use super::host::Host;
use super::{format_cpu_list, DEFAULT_IO_MEMORY_KIB, MIN_IO_MEMORY_KIB};
use crate::runtime::ExecutorTuning;

/// With fewer physical cores than this every core runs a shard, and the threads
/// around them share: giving a quarter or more of the host to threads that are
/// mostly idle costs more than their noise.
pub const RESERVE_FROM_CORES: usize = 4;

/// A tuning file for `host`, as TOML text with comments; an error when the
/// process may use no CPU at all.
pub fn generate(host: &Host) -> Result<String, String> {
    let allowed = host.allowed_cpus();
    let cores = host.one_per_core(&allowed);
    if cores.is_empty() {
        return Err("this process may use no CPU: nothing to place shards on".into());
    }
    let (control, shards): (Vec<usize>, Vec<usize>) = if cores.len() >= RESERVE_FROM_CORES {
        let kept = cores[0];
        let mut control: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|&cpu| {
                cpu == kept
                    || host
                        .core_of(cpu)
                        .is_some_and(|core| Some(core) == host.core_of(kept))
            })
            .collect();
        control.sort_unstable();
        (control, cores[1..].to_vec())
    } else {
        (Vec::new(), cores.clone())
    };
    let siblings: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|cpu| !shards.contains(cpu) && !control.contains(cpu))
        .collect();

    let mut text = String::new();
    let mut line = |content: String| {
        text.push_str(&content);
        text.push('\n');
    };
    line("# percore tuning, written by `percore tune generate` from this host's topology:".into());
    line(format!("# {}.", host.describe()));
    line("# Check it on the host it is for with `percore tune check FILE`; every key, its".into());
    line("# meaning and its default are documented in tuning/example.toml.".into());
    line(String::new());
    line(format!(
        "# One shard per physical core{}.",
        if siblings.is_empty() {
            String::new()
        } else {
            format!(
                "; the hyperthread siblings ({}) are left out",
                format_cpu_list(&siblings)
            )
        }
    ));
    line(format!("shard_cpus = \"{}\"", format_cpu_list(&shards)));
    line("smt = false".into());
    if host.numa_nodes.len() > 1 {
        let nodes: Vec<String> = shards
            .iter()
            .map(|&cpu| host.node_of(cpu).unwrap_or(0).to_string())
            .collect();
        line("# The NUMA node of each shard, in shard order, checked against the host.".into());
        line(format!("numa_nodes = [{}]", nodes.join(", ")));
    }
    if control.is_empty() {
        line(format!(
            "# Fewer than {RESERVE_FROM_CORES} cores: none is kept for the coordinator, sink and admin"
        ));
        line("# threads, which the kernel places.".into());
    } else {
        let list = format_cpu_list(&control);
        line(format!(
            "# The first core ({list}) is kept for the threads around the shards."
        ));
        line(format!("coordinator_cpus = \"{list}\""));
        line(format!("sink_cpus = \"{list}\""));
        line(format!("admin_cpus = \"{list}\""));
    }
    let isolated = shards
        .iter()
        .all(|cpu| host.isolated.contains(cpu) && host.nohz_full.contains(cpu));
    line(format!(
        "# {}",
        if isolated {
            "Every shard CPU is in isolcpus and nohz_full: keep it that way."
        } else {
            "Set to true once the shard CPUs are in isolcpus= and nohz_full= (kernel command line)."
        }
    ));
    line(format!("isolated = {isolated}"));
    line(String::new());
    let defaults = ExecutorTuning::DEFAULT;
    let rings = ring_memory_kib(defaults.ring_depth);
    let io_memory_kib = match host.memlock_kib {
        None => DEFAULT_IO_MEMORY_KIB as u64,
        Some(limit) => {
            let fits = (limit / shards.len() as u64).saturating_sub(rings);
            if fits >= MIN_IO_MEMORY_KIB as u64 {
                fits.min(DEFAULT_IO_MEMORY_KIB as u64)
            } else {
                line(format!(
                    "# RLIMIT_MEMLOCK ({limit} KiB) cannot hold even the smallest io_memory_kib for {} shards:",
                    shards.len()
                ));
                line(format!(
                    "# raise it to at least {}K (LimitMEMLOCK= in deploy/percore.service, or `ulimit -l`).",
                    (DEFAULT_IO_MEMORY_KIB as u64 + rings) * shards.len() as u64
                ));
                DEFAULT_IO_MEMORY_KIB as u64
            }
        }
    };
    line("# Locked memory per shard: glommio's registered buffers (the rings come on top).".into());
    line(format!("io_memory_kib = {io_memory_kib}"));
    line("connections_per_node = 4".into());
    line("max_in_flight_per_shard = 10000".into());
    line(String::new());
    line("[executor]".into());
    line(format!("ring_depth = {}", defaults.ring_depth));
    line(format!(
        "spin_before_park_us = {}",
        defaults.spin_before_park.map_or(0, |spin| spin.as_micros())
    ));
    line(format!(
        "preempt_timer_ms = {}",
        defaults.preempt_timer.as_millis()
    ));
    line(format!(
        "stall_threshold_ms = {}",
        defaults
            .stall_threshold
            .map_or(0, |threshold| threshold.as_millis())
    ));
    line(String::new());
    line("[http2]".into());
    let net = defaults.net;
    line(format!("stream_window_kib = {}", net.stream_window / 1024));
    line(format!(
        "connection_window_kib = {}",
        net.connection_window / 1024
    ));
    line(format!(
        "max_frame_size_kib = {}",
        net.max_frame_size / 1024
    ));
    line("max_streams_per_connection = 0".into());
    line(String::new());
    line("[socket]".into());
    line(format!("nodelay = {}", net.nodelay));
    line("send_buffer_kib = 0".into());
    line("recv_buffer_kib = 0".into());
    line("busy_poll_us = 0".into());
    Ok(text)
}
