//! Who used the two CPUs during a run, by the kernel's own accounting: each CPU's
//! busy time from `/proc/stat` (machine-wide, sampled at every tick) and each
//! process's charged CPU from `/proc/PID/stat` — the client's process tree, the mock
//! nodes, this benchmark, kernel threads and everything else (other sessions'
//! commands, counted with the children their parents reaped, so short-lived
//! commands are seen too). Flags runs disturbed by other work (builds, tests) and
//! feeds the co-runner's estimate ([`crate::corunner`]) what it must subtract.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::corunner::SPINNER_PREFIX;

/// A run is called disturbed when other processes used more than this share of
/// a core on average.
pub const DISTURBED_CORES: f64 = 0.10;

/// What `/proc/PID/stat` says of one process.
#[derive(Debug, Clone)]
struct ProcessTimes {
    parent: i32,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: children it reaped, in clock ticks.
    children: u64,
    /// Its live threads' CPU time in nanoseconds by thread id
    /// (`/proc/PID/task/*/schedstat`; co-runner spinners left out), precise where
    /// `own` has a resolution of 10 ms. Sorted by thread id.
    threads: Vec<(i32, u64)>,
}

impl ProcessTimes {
    /// CPU seconds used since `before`: from its threads when none of them ended
    /// meanwhile (then the threads' sum is exact), else from `own`; with
    /// `threads_only` (this process, whose `own` counts the spinners) always from
    /// its threads, a thread that ended counting nothing.
    fn used_since(&self, before: &ProcessTimes, threads_only: bool) -> f64 {
        let mut ended = false;
        let mut before_sum = 0;
        for (tid, nanos) in &before.threads {
            if self.threads.binary_search_by_key(tid, |t| t.0).is_ok() {
                before_sum += nanos;
            } else {
                ended = true;
            }
        }
        if !threads_only && (ended || self.threads.is_empty()) {
            return self.own.saturating_sub(before.own) as f64 * jiffy();
        }
        let after_sum: u64 = self.threads.iter().map(|t| t.1).sum();
        after_sum.saturating_sub(before_sum) as f64 * 1e-9
    }
}

/// The CPU counters at one moment.
pub struct Sample {
    at: Instant,
    /// `/proc/stat` per CPU: (busy, steal) jiffies; busy = user + system + irq +
    /// softirq, leaving out idle, iowait, steal and nice (the co-runner's column).
    cpus: HashMap<usize, (u64, u64)>,
    processes: HashMap<i32, ProcessTimes>,
}

/// CPU shares over the interval between two samples, in cores (1.0 = one CPU).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub seconds: f64,
    /// `/proc/stat` busy share of each CPU compared (client CPU 0, mock CPU), by
    /// tick sampling, nice (the co-runner) left out.
    pub stat_busy: Vec<f64>,
    /// `/proc/stat` steal share of each of those CPUs (the hypervisor's).
    pub steal: Vec<f64>,
    /// The client's process and its children.
    pub client_cores: f64,
    /// Both mock node processes.
    pub mock_cores: f64,
    /// This benchmark's process (co-runner spinners left out) and its children
    /// other than the client and the mocks (perf).
    pub ours_cores: f64,
    /// Kernel threads (kworkers, ksoftirqd, …), which the client can cause.
    pub kernel_cores: f64,
    /// Every other process, with the children it reaped.
    pub other_cores: f64,
}

fn jiffy() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1.0 / if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Who a process is to this benchmark.
#[derive(PartialEq)]
enum Role {
    Client,
    Mock,
    Ours,
    Kernel,
    Other,
}

impl Sample {
    /// The counters now.
    pub fn take() -> Sample {
        let mut cpus = HashMap::new();
        if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
            for line in stat.lines() {
                let mut fields = line.split_whitespace();
                let Some(name) = fields.next() else { continue };
                let Some(cpu) = name
                    .strip_prefix("cpu")
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                let values: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
                let at = |i: usize| values.get(i).copied().unwrap_or(0);
                // user nice system idle iowait irq softirq steal (guest is in user)
                let busy = at(0) + at(2) + at(5) + at(6);
                cpus.insert(cpu, (busy, at(7)));
            }
        }
        let mut processes = HashMap::new();
        let ours = std::process::id() as i32;
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                if let Some(mut times) = process_times(pid) {
                    times.threads = threads_runtime_ns(pid, pid == ours);
                    processes.insert(pid, times);
                }
            }
        }
        Sample {
            at: Instant::now(),
            cpus,
            processes,
        }
    }

    /// The client's process and its children (Python's worker processes) now.
    pub fn client_tree(&self, client: i32) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .processes
            .iter()
            .filter(|(pid, times)| **pid == client || times.parent == client)
            .map(|(pid, _)| *pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Shares between `self` (earlier) and `later`, for a client rooted at
    /// `client` (-1: none) and mocks `mocks`, on the CPUs `cpus`.
    pub fn usage(&self, later: &Sample, client: i32, mocks: &[i32], cpus: &[usize]) -> Usage {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let cores = |jiffies: u64| jiffies as f64 * jiffy() / seconds;
        let cpu_delta = |cpu: usize, pick: fn(&(u64, u64)) -> u64| {
            let before = self.cpus.get(&cpu).map_or(0, pick);
            cores(later.cpus.get(&cpu).map_or(0, pick).saturating_sub(before))
        };
        let ours = std::process::id() as i32;
        let role = |pid: i32, times: &ProcessTimes| {
            if pid == client || times.parent == client {
                Role::Client
            } else if mocks.contains(&pid) {
                Role::Mock
            } else if pid == ours || times.parent == ours {
                Role::Ours
            } else if pid == 2 || times.parent == 2 {
                Role::Kernel
            } else {
                Role::Other
            }
        };
        let mut usage = Usage {
            seconds,
            stat_busy: cpus.iter().map(|&cpu| cpu_delta(cpu, |c| c.0)).collect(),
            steal: cpus.iter().map(|&cpu| cpu_delta(cpu, |c| c.1)).collect(),
            ..Usage::default()
        };
        for (pid, after) in &later.processes {
            let before = self.processes.get(pid);
            let role = role(*pid, after);
            // A process started meanwhile: everything it used is in the interval.
            let started = ProcessTimes {
                parent: after.parent,
                own: 0,
                children: 0,
                threads: Vec::new(),
            };
            let own = after.used_since(before.unwrap_or(&started), *pid == ours);
            // What children that exited meanwhile used, seen in their reaper: only
            // for other sessions' processes (ours are measured by themselves).
            let reaped = match (&role, before) {
                (Role::Other | Role::Kernel, Some(b)) => after.children.saturating_sub(b.children),
                _ => 0,
            };
            let used = own / seconds + cores(reaped);
            match role {
                Role::Client => usage.client_cores += used,
                Role::Mock => usage.mock_cores += used,
                Role::Ours => usage.ours_cores += used,
                Role::Kernel => usage.kernel_cores += used,
                Role::Other => usage.other_cores += used,
            }
        }
        // Processes that exited meanwhile are in their reaper's children time; the
        // part they had used before `self` was taken was counted there too: take
        // it out again.
        for (pid, before) in &self.processes {
            if !later.processes.contains_key(pid) && role(*pid, before) == Role::Other {
                usage.other_cores -= cores(before.own + before.children);
            }
        }
        // (Kernel threads never exit in practice; ours are reaped by us.)
        usage.other_cores = usage.other_cores.max(0.0);
        usage
    }
}

/// The fields of `/proc/PID/stat` this module reads.
fn process_times(pid: i32) -> Option<ProcessTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name, from 0: state, ppid (1), …, utime (11), stime (12),
    // cutime (13), cstime (14).
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(ProcessTimes {
        parent: fields.get(1)?.parse().ok()?,
        own: number(11)? + number(12)?,
        children: number(13)? + number(14)?,
        threads: Vec::new(),
    })
}

/// CPU time of each live thread of a process in nanoseconds, sorted by thread id;
/// with `skip_spinners`, the co-runner's threads are left out.
fn threads_runtime_ns(pid: i32, skip_spinners: bool) -> Vec<(i32, u64)> {
    let mut threads = Vec::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for entry in entries.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let task = entry.path();
        if skip_spinners
            && std::fs::read_to_string(task.join("comm"))
                .is_ok_and(|name| name.starts_with(SPINNER_PREFIX))
        {
            continue;
        }
        // A thread may exit between listing and reading: skip it.
        if let Some(nanos) = std::fs::read_to_string(task.join("schedstat"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        {
            threads.push((tid, nanos));
        }
    }
    threads.sort_unstable();
    threads
}

/// Waits (up to `limit`) until the machine is nearly idle (by `/proc/stat`), so a
/// run does not start on top of a build. Returns the cores still in use.
pub fn wait_until_quiet(limit: Duration, cpus: &[usize]) -> f64 {
    let started = Instant::now();
    let mut told = false;
    loop {
        let before = Sample::take();
        std::thread::sleep(Duration::from_millis(500));
        let after = Sample::take();
        let usage = before.usage(&after, -1, &[], cpus);
        let busy: f64 = usage.stat_busy.iter().sum();
        if busy < DISTURBED_CORES || started.elapsed() >= limit {
            return busy;
        }
        if !told {
            eprintln!(
                "compare: other processes keep {busy:.2} cores busy; waiting up to {} s for them",
                limit.as_secs()
            );
            told = true;
        }
    }
}
