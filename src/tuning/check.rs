//! A tuning file judged against one host: one [`Finding`] per problem, each with
//! the fix. `percore tune check` prints them all; loading a tuning file for a run
//! refuses the first [`Severity::Error`]; start-up checks a [`Tuning`] built in
//! code the same way ([`startup`]).

use std::fmt;
use std::path::PathBuf;

use super::file::{Located, Parsed};
use super::host::Host;
use super::{format_cpu_list, Tuning, MIN_IO_MEMORY_KIB};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The file cannot run as written on this host: start-up refuses it and
    /// `tune check` exits 1.
    Error,
    /// It runs, but slower or less predictably than it could; `tune check`
    /// exits 1 on these only with `--strict`.
    Warning,
}

/// One problem of a tuning file on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Whether it stops a run.
    pub severity: Severity,
    /// The tuning file, or `None` for a fact of the host alone (governor, THP).
    pub file: Option<PathBuf>,
    /// 1-based line of the offending value, when it is in the file.
    pub line: Option<usize>,
    /// The offending key, e.g. `shard_cpus[2]`.
    pub field: Option<String>,
    /// What is wrong.
    pub problem: String,
    /// What to do about it: a command, a unit setting or the value to write.
    pub fix: String,
}

impl Finding {
    /// A finding about `value` in the file `parsed` came from.
    fn at<T>(
        severity: Severity,
        parsed: &Parsed,
        value: &Located<T>,
        problem: String,
        fix: String,
    ) -> Finding {
        Finding {
            severity,
            file: Some(parsed.file.clone()),
            line: value.line,
            field: Some(value.field.clone()),
            problem,
            fix,
        }
    }

    /// A finding about the file as a whole, or a key given by default.
    fn in_file(
        severity: Severity,
        parsed: &Parsed,
        field: &str,
        problem: String,
        fix: String,
    ) -> Finding {
        Finding {
            severity,
            file: Some(parsed.file.clone()),
            line: None,
            field: Some(field.to_string()),
            problem,
            fix,
        }
    }

    /// A finding about the host, whatever the file says.
    fn host(severity: Severity, problem: String, fix: String) -> Finding {
        Finding {
            severity,
            file: None,
            line: None,
            field: None,
            problem,
            fix,
        }
    }

    /// `file:line: field: problem` without the severity and fix, as a
    /// [`crate::config::ConfigError`] shows it.
    pub fn location(&self) -> String {
        let mut text = match &self.file {
            Some(file) => file.display().to_string(),
            None => "host".to_string(),
        };
        if let Some(line) = self.line {
            text.push_str(&format!(":{line}"));
        }
        if let Some(field) = &self.field {
            text.push_str(&format!(": {field}"));
        }
        text
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{severity}: {}: {}; fix: {}",
            self.location(),
            self.problem,
            self.fix
        )
    }
}

/// Locked memory an executor takes besides its `io_memory_kib`: its three io_uring
/// rings (submission entries of 64 bytes, twice as many completions of 16) plus
/// margin; at the default depth of 128 this is the 256 KiB percore always assumed.
pub fn ring_memory_kib(ring_depth: usize) -> u64 {
    let rings = 3 * 96 * ring_depth as u64 / 1024;
    (rings + 128).max(256)
}

/// Where the shards go: `shard_cpus` when given, else one shard per physical
/// core (every allowed CPU with `smt`) of the allowed CPUs, leaving out the
/// cores of the coordinator, sink and admin threads when that leaves any, and
/// only the first `shards` of them when that is set.
pub fn placement(parsed: &Parsed, host: &Host) -> Vec<usize> {
    if !parsed.shard_cpus.is_empty() {
        return parsed.shard_cpus.iter().map(|cpu| cpu.value).collect();
    }
    let reserved: Vec<usize> = [
        &parsed.coordinator_cpus,
        &parsed.sink_cpus,
        &parsed.admin_cpus,
    ]
    .into_iter()
    .flatten()
    .map(|cpu| cpu.value)
    .collect();
    let cpus = default_shard_cpus(host, parsed.smt.value, &reserved);
    match &parsed.shards {
        Some(shards) => cpus.into_iter().take(shards.value).collect(),
        None => cpus,
    }
}

/// One CPU per physical core of the allowed ones (all of them with `smt`), the
/// cores of `reserved` CPUs left out unless nothing else is left.
pub fn default_shard_cpus(host: &Host, smt: bool, reserved: &[usize]) -> Vec<usize> {
    let allowed = host.allowed_cpus();
    let reserved_cores: Vec<_> = reserved
        .iter()
        .map(|&cpu| host.core_of(cpu).unwrap_or((usize::MAX, cpu)))
        .collect();
    let free: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|&cpu| {
            !reserved.contains(&cpu)
                && !host
                    .core_of(cpu)
                    .is_some_and(|core| reserved_cores.contains(&core))
        })
        .collect();
    let pool = if free.is_empty() { allowed } else { free };
    if smt {
        pool
    } else {
        host.one_per_core(&pool)
    }
}

/// Every finding of `parsed` on `host`, errors first, in the file's order.
pub fn check(parsed: &Parsed, host: &Host) -> Vec<Finding> {
    let mut findings = Vec::new();
    let allowed = host.allowed_cpus();
    let shard_cpus = placement(parsed, host);

    // CPUs: present, online, in the affinity mask and the cgroup's cpuset.
    for list in [
        &parsed.shard_cpus,
        &parsed.mock_cpus,
        &parsed.coordinator_cpus,
        &parsed.sink_cpus,
        &parsed.admin_cpus,
    ] {
        for cpu in list {
            if let Some(finding) = cpu_finding(parsed, host, &allowed, cpu) {
                findings.push(finding);
            }
        }
    }
    if let Some(shards) = &parsed.shards {
        if shard_cpus.len() < shards.value {
            let unit = if parsed.smt.value {
                "CPUs"
            } else {
                "physical cores"
            };
            findings.push(Finding::at(
                Severity::Error,
                parsed,
                shards,
                format!(
                    "{} shards, but this process may place them on only {} {unit} (CPUs {})",
                    shards.value,
                    shard_cpus.len(),
                    format_cpu_list(&shard_cpus)
                ),
                format!(
                    "set shards = {}{}, or allow more CPUs (CPUAffinity=, taskset, the cgroup's cpuset)",
                    shard_cpus.len(),
                    if parsed.smt.value { "" } else { ", set smt = true to use hyperthreads too" }
                ),
            ));
        }
    }
    if shard_cpus.is_empty() {
        findings.push(Finding::in_file(
            Severity::Error,
            parsed,
            "shard_cpus",
            "no CPU is left to run a shard on".into(),
            "list shard_cpus this process may use, or allow it more CPUs".into(),
        ));
    }

    // Hyperthreads: with smt = false each shard has a core of its own.
    if !parsed.smt.value {
        for (index, cpu) in parsed.shard_cpus.iter().enumerate() {
            let earlier = parsed.shard_cpus[..index].iter().find(|other| {
                host.core_of(other.value)
                    .is_some_and(|core| Some(core) == host.core_of(cpu.value))
            });
            if let Some(other) = earlier {
                findings.push(Finding::at(
                    Severity::Error,
                    parsed,
                    cpu,
                    format!(
                        "CPU {} is a hyperthread sibling of shard CPU {}: two shards would share one core",
                        cpu.value, other.value
                    ),
                    "list one CPU per physical core, or set smt = true if sharing is meant".into(),
                ));
            }
        }
    }

    // The threads around the shards, on a shard's CPU or core.
    for list in [
        &parsed.coordinator_cpus,
        &parsed.sink_cpus,
        &parsed.admin_cpus,
    ] {
        for cpu in list {
            let same_core = shard_cpus.iter().find(|&&shard| {
                shard == cpu.value
                    || host
                        .core_of(shard)
                        .is_some_and(|core| Some(core) == host.core_of(cpu.value))
            });
            if let Some(&shard) = same_core {
                findings.push(Finding::at(
                    Severity::Warning,
                    parsed,
                    cpu,
                    format!("CPU {} shares a core with shard CPU {shard}", cpu.value),
                    "keep the coordinator, sink and admin threads on a core without shards \
                     (`percore tune generate` keeps one for them)"
                        .into(),
                ));
            }
        }
    }

    // NUMA nodes as the file expects them.
    for (cpu, node) in parsed.shard_cpus.iter().zip(&parsed.numa_nodes) {
        match host.node_of(cpu.value) {
            Some(actual) if actual != node.value => findings.push(Finding::at(
                Severity::Error,
                parsed,
                node,
                format!(
                    "shard CPU {} is on NUMA node {actual}, not {}",
                    cpu.value, node.value
                ),
                format!(
                    "write {actual} here, or a CPU of node {} ({}) in {}",
                    node.value,
                    host.numa_nodes
                        .get(&node.value)
                        .map_or_else(|| "none on this host".into(), |cpus| format_cpu_list(cpus)),
                    cpu.field
                ),
            )),
            None if node.value != 0 => findings.push(Finding::at(
                Severity::Error,
                parsed,
                node,
                format!(
                    "this host has no NUMA node {} (it shows none, which is node 0)",
                    node.value
                ),
                "write 0, or leave numa_nodes out".into(),
            )),
            _ => {}
        }
    }

    // Locked memory for every shard's executor.
    if let Some(limit_kib) = host.memlock_kib {
        if let Some(finding) = memlock_finding(parsed, shard_cpus.len(), limit_kib) {
            findings.push(finding);
        }
    }

    // io_uring.
    match host.io_uring_disabled {
        Some(2) => findings.push(Finding::host(
            Severity::Error,
            "io_uring is disabled (kernel.io_uring_disabled = 2), and glommio has no other way to do I/O".into(),
            "sysctl -w kernel.io_uring_disabled=0, and put it in /etc/sysctl.d/ to keep it".into(),
        )),
        Some(1) if !host.privileged => findings.push(Finding::host(
            Severity::Error,
            "io_uring is limited to privileged processes and the kernel.io_uring_group \
             (kernel.io_uring_disabled = 1)"
                .into(),
            "run percore in the group named by kernel.io_uring_group (SupplementaryGroups= in \
             the unit), or sysctl -w kernel.io_uring_disabled=0"
                .into(),
        )),
        _ => {}
    }
    if host.seccomp == Some(2) {
        findings.push(Finding::host(
            Severity::Warning,
            "a seccomp filter is on; container runtimes' default profiles block io_uring".into(),
            "allow io_uring_setup, io_uring_enter and io_uring_register in the profile \
             (e.g. docker --security-opt seccomp=<profile>)"
                .into(),
        ));
    }

    // Busy polling beyond what the kernel lets an unprivileged socket ask.
    if let Some(us) = parsed.executor.net.busy_poll_us {
        let busy_read = host_busy_read(host);
        if !host.privileged && busy_read.is_some_and(|allowed| us > allowed) {
            findings.push(Finding {
                severity: Severity::Error,
                file: Some(parsed.file.clone()),
                line: parsed.busy_poll_line,
                field: Some("socket.busy_poll_us".into()),
                problem: format!(
                    "SO_BUSY_POLL of {us} µs is above net.core.busy_read ({} µs) and needs CAP_NET_ADMIN",
                    busy_read.unwrap_or(0)
                ),
                fix: format!(
                    "sysctl -w net.core.busy_read={us}, AmbientCapabilities=CAP_NET_ADMIN in the unit, \
                     or a smaller busy_poll_us"
                ),
            });
        }
    }

    // Isolation, when the file asks for it.
    if parsed.isolated.value {
        for (name, list, param) in [
            ("isolated from the scheduler", &host.isolated, "isolcpus"),
            (
                "running without the scheduler tick",
                &host.nohz_full,
                "nohz_full",
            ),
        ] {
            let missing: Vec<usize> = shard_cpus
                .iter()
                .copied()
                .filter(|cpu| !list.contains(cpu))
                .collect();
            if !missing.is_empty() {
                findings.push(Finding::at(
                    Severity::Error,
                    parsed,
                    &parsed.isolated,
                    format!(
                        "isolated = true, but shard CPUs {} are not {name} ({param}: {})",
                        format_cpu_list(&missing),
                        if list.is_empty() { "none".into() } else { format_cpu_list(list) }
                    ),
                    format!(
                        "add {param}={} to the kernel command line (GRUB_CMDLINE_LINUX) and reboot, \
                         or set isolated = false",
                        format_cpu_list(&shard_cpus)
                    ),
                ));
            }
        }
    }

    // Host-wide settings that cost a shard latency.
    let slow: Vec<usize> = shard_cpus
        .iter()
        .copied()
        .filter(|cpu| {
            host.governors
                .get(cpu)
                .is_some_and(|governor| governor != "performance")
        })
        .collect();
    if let Some(governor) = slow.first().and_then(|cpu| host.governors.get(cpu)) {
        findings.push(Finding::host(
            Severity::Warning,
            format!(
                "the cpufreq governor of shard CPUs {} is {governor}, which lowers the clock of a core waiting on the network",
                format_cpu_list(&slow)
            ),
            "cpupower frequency-set -g performance (or write performance to \
             /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)"
                .into(),
        ));
    }
    let noisy: Vec<&super::host::Irq> = host
        .nic_irqs
        .iter()
        .filter(|irq| irq.cpus.iter().any(|cpu| shard_cpus.contains(cpu)))
        .collect();
    if !noisy.is_empty() {
        let numbers: Vec<String> = noisy.iter().map(|irq| irq.number.to_string()).collect();
        let hit: Vec<usize> = shard_cpus
            .iter()
            .copied()
            .filter(|cpu| noisy.iter().any(|irq| irq.cpus.contains(cpu)))
            .collect();
        let spare: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|cpu| !shard_cpus.contains(cpu))
            .collect();
        let target = if spare.is_empty() {
            "a CPU without a shard (keep one free: `percore tune generate` does when there are enough)".to_string()
        } else {
            format_cpu_list(&spare)
        };
        findings.push(Finding::host(
            Severity::Warning,
            format!(
                "NIC interrupts {} ({}) may be delivered to shard CPUs {}",
                numbers.join(","),
                noisy
                    .iter()
                    .map(|irq| irq.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                format_cpu_list(&hit)
            ),
            format!(
                "for irq in {}; do echo {target} > /proc/irq/$irq/smp_affinity_list; done, and \
                 IRQBALANCE_BANNED_CPULIST={} for irqbalance",
                numbers.join(" "),
                format_cpu_list(&shard_cpus)
            ),
        ));
    }
    if host.transparent_hugepages.as_deref() == Some("always") {
        findings.push(Finding::host(
            Severity::Warning,
            "transparent huge pages are `always`: compaction and khugepaged can stall a shard"
                .into(),
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (or \
             transparent_hugepage=madvise on the kernel command line)"
                .into(),
        ));
    }
    if let Some(swappiness) = host.swappiness.filter(|&value| value > 10) {
        findings.push(Finding::host(
            Severity::Warning,
            format!(
                "vm.swappiness is {swappiness}: a shard's memory may be swapped out under pressure"
            ),
            "sysctl -w vm.swappiness=1, and put it in /etc/sysctl.d/ to keep it".into(),
        ));
    }
    findings.sort_by_key(|finding| finding.severity);
    findings
}

/// `net.core.busy_read` of the host, which a socket may ask for without CAP_NET_ADMIN.
fn host_busy_read(host: &Host) -> Option<u32> {
    std::fs::read_to_string(host.root.join("proc/sys/net/core/busy_read"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// Why `cpu` cannot be used here, if it cannot: unknown, offline, outside the
/// affinity mask or outside the cgroup's cpuset.
fn cpu_finding(
    parsed: &Parsed,
    host: &Host,
    allowed: &[usize],
    cpu: &Located<usize>,
) -> Option<Finding> {
    let id = cpu.value;
    if allowed.contains(&id) {
        return None;
    }
    let others = if allowed.is_empty() {
        "this process may use no CPU at all".to_string()
    } else {
        format!("use one of the allowed CPUs {}", format_cpu_list(allowed))
    };
    let (problem, fix) = if !host.present.contains(&id) && !host.online.contains(&id) {
        (
            format!(
                "there is no CPU {id} on this host (CPUs {})",
                format_cpu_list(&host.online)
            ),
            others,
        )
    } else if !host.online.contains(&id) {
        (
            format!("CPU {id} is offline"),
            format!("echo 1 > /sys/devices/system/cpu/cpu{id}/online, or {others}"),
        )
    } else if host.affinity.as_ref().is_some_and(|set| !set.contains(&id)) {
        (
            format!(
                "CPU {id} is not one this process may run on (its affinity mask is {})",
                format_cpu_list(host.affinity.as_deref().unwrap_or_default())
            ),
            format!("start percore with CPUAffinity= in the unit or taskset -c covering it, or {others}"),
        )
    } else {
        (
            format!(
                "CPU {id} is outside this cgroup's cpuset (cpuset.cpus.effective: {})",
                format_cpu_list(host.cgroup_cpuset.as_deref().unwrap_or_default())
            ),
            format!(
                "widen the cpuset (AllowedCPUs= in the unit, docker --cpuset-cpus), or {others}"
            ),
        )
    };
    Some(Finding::at(Severity::Error, parsed, cpu, problem, fix))
}

/// Every shard's executor locks `io_memory_kib` plus its rings; when the soft
/// RLIMIT_MEMLOCK cannot hold that for all shards, glommio fails to start (or
/// leaves its buffers unregistered).
fn memlock_finding(parsed: &Parsed, shards: usize, limit_kib: u64) -> Option<Finding> {
    let per_shard = parsed.io_memory_kib.value;
    let rings = ring_memory_kib(parsed.executor.ring_depth);
    let shards_u64 = u64::try_from(shards).unwrap_or(u64::MAX);
    let needed = u64::try_from(per_shard)
        .unwrap_or(u64::MAX)
        .saturating_add(rings)
        .saturating_mul(shards_u64);
    if needed <= limit_kib {
        return None;
    }
    let plural = if shards == 1 { "" } else { "s" };
    let fits = (limit_kib / shards_u64.max(1)).saturating_sub(rings);
    let smaller = if fits >= MIN_IO_MEMORY_KIB as u64 {
        format!("or a smaller io_memory_kib (at most {fits} fits)")
    } else {
        "or fewer shard_cpus (not even the smallest io_memory_kib fits)".to_string()
    };
    Some(Finding::at(
        Severity::Error,
        parsed,
        &parsed.io_memory_kib,
        format!(
            "{shards} shard{plural} × ({per_shard} KiB + {rings} KiB for the rings) = \
             {needed} KiB of locked memory, but RLIMIT_MEMLOCK allows {limit_kib} KiB"
        ),
        format!("raise it with `ulimit -l` or LimitMEMLOCK= in the systemd unit, {smaller}"),
    ))
}

/// Start-up's check of a [`Tuning`] however it was made (a file, a demo, a
/// benchmark) against this host: the errors, one line each with its fix, so a
/// run is refused in plain words instead of with glommio's error.
pub fn startup(tuning: &Tuning) -> Result<(), String> {
    let parsed = Parsed::from_tuning(tuning);
    let errors: Vec<String> = check(&parsed, &Host::live())
        .into_iter()
        .filter(|finding| finding.severity == Severity::Error)
        .map(|finding| {
            format!(
                "{}: {}; {}",
                finding.location(),
                finding.problem,
                finding.fix
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("refusing to start: {}", errors.join("\n  ")))
    }
}

impl Parsed {
    /// A [`Tuning`] as if it had been read from a file, with no lines: the
    /// values start-up checks.
    pub fn from_tuning(tuning: &Tuning) -> Parsed {
        let list = |cpus: &[usize], name: &str| -> Vec<Located<usize>> {
            cpus.iter()
                .enumerate()
                .map(|(index, &cpu)| Located::unplaced(cpu, format!("{name}[{index}]")))
                .collect()
        };
        Parsed {
            file: PathBuf::from("tuning"),
            shards: None,
            shard_cpus: list(&tuning.shard_cpus, "shard_cpus"),
            smt: Located::unplaced(tuning.smt, "smt"),
            isolated: Located::unplaced(tuning.isolated, "isolated"),
            mock_cpus: list(&tuning.mock_cpus, "mock_cpus"),
            coordinator_cpus: list(&tuning.coordinator_cpus, "coordinator_cpus"),
            sink_cpus: list(&tuning.sink_cpus, "sink_cpus"),
            admin_cpus: list(&tuning.admin_cpus, "admin_cpus"),
            numa_nodes: list(&tuning.numa_nodes, "numa_nodes"),
            connections_per_node: tuning.connections_per_node,
            max_in_flight_per_shard: tuning.max_in_flight_per_shard,
            io_memory_kib: Located::unplaced(tuning.io_memory_kib, "io_memory_kib"),
            executor: tuning.executor,
            busy_poll_line: None,
        }
    }
}
