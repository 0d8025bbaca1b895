//! Who used the two CPUs during a run: each CPU's busy time (`/proc/stat`), the
//! client's process tree and the mock nodes (`/proc/PID/stat`), and whatever else
//! ran on the machine. Tells a client that saturates CPU 0 from mocks that
//! saturate CPU 1, and flags runs disturbed by other work (builds, tests).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A run is called disturbed when other processes used more than this share of
/// a core on average.
pub const DISTURBED_CORES: f64 = 0.10;

/// The CPU counters at one moment.
pub struct Sample {
    at: Instant,
    /// Busy jiffies (everything but idle and iowait) per CPU, by CPU number.
    busy: HashMap<usize, u64>,
    /// utime + stime jiffies per live process.
    processes: HashMap<i32, (i32, u64)>,
}

/// CPU shares over the interval between two samples, in cores (1.0 = one CPU).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub seconds: f64,
    /// Busy share of each of the two CPUs used (client CPU 0, mock CPU).
    pub cpu0_busy: f64,
    pub mock_cpu_busy: f64,
    /// The client's process and its children.
    pub client_cores: f64,
    /// Both mock node processes.
    pub mock_cores: f64,
    /// Busy time of every CPU not explained by the client or the mocks.
    pub other_cores: f64,
}

fn jiffy() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1.0 / if ticks > 0 { ticks as f64 } else { 100.0 }
}

impl Sample {
    pub fn take() -> Sample {
        let mut busy = HashMap::new();
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
                // user nice system idle iowait irq softirq steal (guest is in user)
                let total: u64 = values.iter().take(8).sum();
                let idle =
                    values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
                busy.insert(cpu, total.saturating_sub(idle));
            }
        }
        let mut processes = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                if let Some(usage) = process_jiffies(pid) {
                    processes.insert(pid, usage);
                }
            }
        }
        Sample {
            at: Instant::now(),
            busy,
            processes,
        }
    }

    /// Shares between `self` (earlier) and `later`, for a client rooted at
    /// `client` and mocks `mocks`, on CPUs `cpu0` and `mock_cpu`.
    pub fn usage(
        &self,
        later: &Sample,
        client: i32,
        mocks: &[i32],
        cpu0: usize,
        mock_cpu: usize,
    ) -> Usage {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let cores = |jiffies: u64| jiffies as f64 * jiffy() / seconds;
        let cpu_busy = |cpu: usize| {
            let before = self.busy.get(&cpu).copied().unwrap_or(0);
            cores(
                later
                    .busy
                    .get(&cpu)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(before),
            )
        };
        let used = |pid: &i32| {
            let after = later.processes.get(pid).map_or(0, |&(_, jiffies)| jiffies);
            let before = self.processes.get(pid).map_or(0, |&(_, jiffies)| jiffies);
            after.saturating_sub(before)
        };
        // The client and its children (Python's worker processes, taskset's exec
        // keeps the pid).
        let client_jiffies: u64 = later
            .processes
            .iter()
            .filter(|(pid, (parent, _))| **pid == client || *parent == client)
            .map(|(pid, _)| used(pid))
            .sum();
        let mock_jiffies: u64 = mocks.iter().map(used).sum();
        let all_busy: f64 = later.busy.keys().map(|&cpu| cpu_busy(cpu)).sum();
        let client_cores = cores(client_jiffies);
        let mock_cores = cores(mock_jiffies);
        Usage {
            seconds,
            cpu0_busy: cpu_busy(cpu0),
            mock_cpu_busy: cpu_busy(mock_cpu),
            client_cores,
            mock_cores,
            other_cores: (all_busy - client_cores - mock_cores).max(0.0),
        }
    }
}

/// (parent pid, utime + stime) of a process, from `/proc/PID/stat`.
fn process_jiffies(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name, from 0: state, ppid (1), …, utime (11), stime (12).
    let parent = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((parent, utime + stime))
}

/// Waits (up to `limit`) until other processes leave the machine nearly idle, so a
/// run does not start on top of a build. Returns the cores they still used.
pub fn wait_until_quiet(limit: Duration) -> f64 {
    let started = Instant::now();
    let mut told = false;
    loop {
        let before = Sample::take();
        std::thread::sleep(Duration::from_millis(500));
        let after = Sample::take();
        let usage = before.usage(&after, -1, &[], 0, 0);
        if usage.other_cores < DISTURBED_CORES || started.elapsed() >= limit {
            return usage.other_cores;
        }
        if !told {
            eprintln!(
                "compare: other processes keep {:.2} cores busy; waiting up to {} s for them",
                usage.other_cores,
                limit.as_secs()
            );
            told = true;
        }
    }
}
