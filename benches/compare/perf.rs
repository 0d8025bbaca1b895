//! Kernel event counts over the measured window, with `perf stat` (tracepoints and
//! software events; this VM has no hardware counters): the client's syscalls (all,
//! and the ones that explain where its system time goes) and context switches,
//! counted on its own threads, and interrupts that can land anywhere (IPIs, timer
//! interrupts, softirqs), counted on every CPU.
//!
//! Counting costs a little: with a syscall tracepoint enabled every syscall on the
//! machine takes the kernel's slower traced entry path. `--no-perf` turns it off.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Counted on the client's threads.
const CLIENT_EVENTS: [&str; 3] = [
    "raw_syscalls:sys_enter",
    "context-switches",
    "cpu-migrations",
];

/// Syscalls counted one by one on the client's threads (their sum is not the total:
/// the total counts every syscall).
const SYSCALLS: [&str; 20] = [
    "io_uring_enter",
    "sendmsg",
    "sendto",
    "recvmsg",
    "recvfrom",
    "read",
    "write",
    "writev",
    "epoll_wait",
    "epoll_pwait",
    "poll",
    "ppoll",
    "futex",
    "membarrier",
    "clock_nanosleep",
    "nanosleep",
    "sched_yield",
    "pwrite64",
    "fdatasync",
    "timerfd_settime",
];

/// Counted on every CPU: what no process is charged for.
const MACHINE_EVENTS: [(&str, &str); 6] = [
    ("irq_vectors:call_function_entry", "ipi_call_function"),
    (
        "irq_vectors:call_function_single_entry",
        "ipi_call_function_single",
    ),
    ("irq_vectors:reschedule_entry", "ipi_reschedule"),
    ("irq_vectors:local_timer_entry", "local_timer"),
    ("irq:softirq_entry", "softirqs"),
    ("io_uring:io_uring_task_add", "io_uring_task_work"),
];

/// Whether the kernel has tracepoint `event` ("group:name"); true when no tracing
/// directory can be read (then perf says what is missing).
fn has_tracepoint(event: &str) -> bool {
    let Some((group, name)) = event.split_once(':') else {
        return true; // a software event
    };
    let roots = [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ];
    let readable: Vec<&str> = roots
        .into_iter()
        .filter(|root| Path::new(root).is_dir())
        .collect();
    readable.is_empty()
        || readable
            .iter()
            .any(|root| Path::new(root).join(group).join(name).is_dir())
}

/// Two `perf stat` processes counting for a fixed time.
pub struct PerfRun {
    client: Child,
    machine: Child,
    client_out: PathBuf,
    machine_out: PathBuf,
    /// How long they count.
    seconds: f64,
}

/// Counts over the window, per second.
#[derive(Debug, Clone, Default)]
pub struct PerfRates {
    /// Every syscall of the client's threads.
    pub syscalls: f64,
    pub context_switches: f64,
    pub migrations: f64,
    /// Syscalls one by one, those seen at all.
    pub by_syscall: Vec<(String, f64)>,
    /// Machine-wide interrupt counts by name (see `MACHINE_EVENTS`).
    pub machine: Vec<(String, f64)>,
}

impl PerfRates {
    /// IPIs of any kind on every CPU, per second.
    pub fn ipis(&self) -> f64 {
        self.machine
            .iter()
            .filter(|(name, _)| name.starts_with("ipi_"))
            .map(|(_, rate)| rate)
            .sum()
    }
}

/// Whether `perf stat` with tracepoints works here; the reason if not.
pub fn check(scratch: &Path) -> Result<(), String> {
    let out = scratch.join("perf-check.txt");
    let status = Command::new("perf")
        .args(["stat", "-x", ",", "-o"])
        .arg(&out)
        .args(["-e", "raw_syscalls:sys_enter", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|error| format!("cannot run perf: {error}"))?;
    if !status.success() {
        return Err(format!(
            "perf stat -e raw_syscalls:sys_enter failed ({status})"
        ));
    }
    Ok(())
}

/// Starts counting the threads of `pids` and the whole machine for `length`.
pub fn start(pids: &[i32], length: Duration, dir: &Path) -> Result<PerfRun, String> {
    let client_out = dir.join("perf-client.csv");
    let machine_out = dir.join("perf-machine.csv");
    let seconds = format!("{:.3}", length.as_secs_f64());
    let pid_list = pids
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut events: Vec<String> = CLIENT_EVENTS.iter().map(|e| e.to_string()).collect();
    events.extend(
        SYSCALLS
            .iter()
            .map(|s| format!("syscalls:sys_enter_{s}"))
            .filter(|event| has_tracepoint(event)),
    );
    let spawn = |args: Vec<String>, what: &str| {
        Command::new("perf")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("perf ({what}): cannot start: {error}"))
    };
    let mut client_args: Vec<String> = vec!["stat".into(), "-x".into(), ",".into(), "-o".into()];
    client_args.push(client_out.display().to_string());
    client_args.extend(["-e".into(), events.join(","), "-p".into(), pid_list]);
    client_args.extend(["--".into(), "sleep".into(), seconds.clone()]);
    let client = spawn(client_args, "client")?;
    let mut machine_args: Vec<String> = vec![
        "stat".into(),
        "-a".into(),
        "-x".into(),
        ",".into(),
        "-o".into(),
    ];
    machine_args.push(machine_out.display().to_string());
    let machine_events: Vec<&str> = MACHINE_EVENTS
        .iter()
        .map(|(event, _)| *event)
        .filter(|event| has_tracepoint(event))
        .collect();
    machine_args.extend(["-e".into(), machine_events.join(",")]);
    machine_args.extend(["--".into(), "sleep".into(), seconds]);
    let machine = spawn(machine_args, "machine")?;
    Ok(PerfRun {
        client,
        machine,
        client_out,
        machine_out,
        seconds: length.as_secs_f64(),
    })
}

impl PerfRun {
    /// Waits for both to finish and reads their counts.
    pub fn finish(mut self) -> Result<PerfRates, String> {
        let client = self.client.wait();
        let machine = self.machine.wait();
        for (what, status) in [("client", client), ("machine", machine)] {
            match status {
                Ok(status) if status.success() => {}
                Ok(status) => return Err(format!("perf ({what}) exited with {status}")),
                Err(error) => return Err(format!("perf ({what}): {error}")),
            }
        }
        let client = parse(&self.client_out)?;
        let machine = parse(&self.machine_out)?;
        let rate = |count: u64| count as f64 / self.seconds;
        let get = |name: &str| client.iter().find(|(e, _)| e == name).map(|(_, c)| *c);
        let mut rates = PerfRates {
            syscalls: rate(get("raw_syscalls:sys_enter").ok_or("perf: no syscall count")?),
            context_switches: rate(get("context-switches").unwrap_or(0)),
            migrations: rate(get("cpu-migrations").unwrap_or(0)),
            ..PerfRates::default()
        };
        for syscall in SYSCALLS {
            if let Some(count) = get(&format!("syscalls:sys_enter_{syscall}")) {
                if count > 0 {
                    rates.by_syscall.push((syscall.to_string(), rate(count)));
                }
            }
        }
        for (event, name) in MACHINE_EVENTS {
            if let Some((_, count)) = machine.iter().find(|(e, _)| e == event) {
                rates.machine.push((name.to_string(), rate(*count)));
            }
        }
        Ok(rates)
    }
}

impl Drop for PerfRun {
    fn drop(&mut self) {
        for child in [&mut self.client, &mut self.machine] {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `perf stat -x ,` output: `count,unit,event,…` lines; `<not counted>` and
/// `<not supported>` events are left out.
fn parse(path: &Path) -> Result<Vec<(String, u64)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("perf: reading {}: {error}", path.display()))?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let count = fields.first()?.trim().parse::<u64>().ok()?;
            let event = fields.get(2)?.trim().to_string();
            Some((event, count))
        })
        .collect())
}
