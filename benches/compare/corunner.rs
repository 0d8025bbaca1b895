//! The co-runner: what a client costs the whole machine, not only what the kernel
//! charges to its process.
//!
//! A client can cause CPU work outside its own threads: interrupts and softirqs
//! (loopback delivery) that run in whatever context they land on, IPIs (glommio's
//! `membarrier` on every park, wake-ups of other CPUs), io_uring task work, timers,
//! kernel threads. Per-process accounting misses it and this VM's `/proc/stat` tick
//! sampling (250 Hz) cannot be trusted to see it, so this measures it by the work it
//! takes away from someone else:
//!
//! - one spinner thread per CPU, pinned, at `SCHED_IDLE` and nice 19, runs a tiny
//!   register-only loop and counts its iterations. It runs whenever nothing else
//!   wants the CPU; anything that wakes preempts it at once.
//! - **Calibration**, alone on the machine just before each run: its speed in
//!   iterations per second *of its own CPU time* (its thread's CPU clock, read
//!   live). That speed is steady (±0.5 % here) even while other processes
//!   take the CPU, which a plain iterations-per-second figure is not.
//! - **During the run**: the share of each CPU the spinner did *not* get to work,
//!   `lost = 1 − iterations / (speed × wall time)`. Time other tasks ran is lost,
//!   and so is time interrupts, softirqs and IPIs took while the spinner was
//!   running, which the kernel (no `IRQ_TIME_ACCOUNTING` here) charges to the
//!   spinner's own CPU time but during which it did no iterations.
//! - **Caused CPU** ([`caused_cores`]): what was lost on all CPUs, less what the
//!   processes known not to be the client used (the mock nodes, this benchmark's
//!   own main thread and tools, anything else that ran), less the unexplained
//!   background of the idle machine (the median of the last calibrations). What
//!   remains is the client's own CPU plus everything it made the kernel do
//!   elsewhere.
//! - The kernel's own accounting is not the truth either: a task woken onto a CPU
//!   that runs another task is charged from the moment of the wake-up on the
//!   waker's CPU, IPI delivery included, while the other task still ran (the
//!   spinner works on, uncharged: its iterations per CPU second rise above the
//!   calibration's, 990 against 916 with a cross-CPU ping-pong here). So a client
//!   on a busy host is charged more than it used, and the mocks are too: their
//!   overcharge is given back before they are subtracted ([`Lost::undercharged`]).
//!
//! [`burn`] makes a known load (a fraction of one core, by its own CPU time) to
//! validate the method against (`cargo bench --bench compare -- --validate`).

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Iterations between two updates of the shared counter and checks of the state:
/// a few microseconds of work, so pausing is quick and the counter's cache line
/// moves rarely.
const CHUNK: u64 = 4096;

/// Spinner threads are named with this, so CPU accounting can leave them out.
pub const SPINNER_PREFIX: &str = "co-runner";

/// Spinner states, set by [`CoRunner`].
const RUN: u8 = 0;
const PAUSE: u8 = 1;
const STOP: u8 = 2;

/// What one spinner shares with the benchmark.
struct SpinnerShared {
    /// Iterations done so far (a multiple of [`CHUNK`]).
    iterations: AtomicU64,
    /// Why it could not set itself up (pin, policy), if it could not.
    error: Mutex<Option<String>>,
}

/// State every spinner reads.
struct Control {
    /// RUN, PAUSE or STOP.
    state: AtomicU8,
    /// Spinners currently parked, so `pause` can wait until all are.
    parked: Mutex<usize>,
    /// Spinners wait here while paused; `pause` waits here for them to park.
    changed: Condvar,
}

/// One spinner per CPU; paused (parked, using nothing) until [`CoRunner::resume`].
pub struct CoRunner {
    /// The CPUs, in the order of `spinners`.
    cpus: Vec<usize>,
    spinners: Vec<Arc<SpinnerShared>>,
    /// Each spinner's CPU-time clock (`pthread_getcpuclockid`): read live, where
    /// `/proc/…/schedstat` of a running thread lags by up to a scheduler tick.
    clocks: Vec<libc::clockid_t>,
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    /// The last calibrations' unexplained backgrounds, newest last (see
    /// [`CoRunner::background`]).
    backgrounds: std::cell::RefCell<std::collections::VecDeque<f64>>,
}

/// Calibrations whose unexplained background makes the median used.
const BACKGROUND_HISTORY: usize = 9;

/// One spinner at one moment.
#[derive(Debug, Clone, Copy)]
pub struct SpinnerSample {
    pub at: Instant,
    pub iterations: u64,
    /// Its CPU time (the kernel's precise per-task clock), in seconds.
    pub runtime_s: f64,
}

/// Every spinner at one moment, in CPU order.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub spinners: Vec<SpinnerSample>,
}

/// What a spinner did over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpinnerWork {
    pub wall_s: f64,
    pub iterations: f64,
    pub runtime_s: f64,
}

/// Each CPU's spinner speed, measured alone.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Iterations per second of the spinner's own CPU time, by CPU (in CPU order).
    pub speed: Vec<f64>,
    /// Share of each CPU the spinner lost while calibrating: the idle machine's
    /// background (kernel threads, timers, other sessions' shells).
    pub lost: Vec<f64>,
    /// Calibration length in seconds.
    pub seconds: f64,
}

/// How each CPU's time went over a measured interval, in cores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lost {
    /// Share of the CPU the spinner could not work: everything else on that CPU.
    pub lost: Vec<f64>,
    /// The part of `lost` other tasks ran (wall time minus the spinner's CPU time).
    pub scheduled_away: Vec<f64>,
    /// The spinner's speed over the interval, iterations per second of its CPU
    /// time (against the calibration's: interrupts in its time slow it).
    pub speed: Vec<f64>,
}

impl Lost {
    /// Everything lost on every CPU, in cores.
    pub fn total(&self) -> f64 {
        self.lost.iter().sum()
    }

    /// Share of CPU `index`'s time the spinner worked but was not charged for
    /// (charged to tasks woken onto it instead; see [`caused_cores`]): its work at
    /// the calibrated speed, less its CPU time, when positive.
    pub fn undercharged(&self, index: usize) -> f64 {
        match (self.scheduled_away.get(index), self.lost.get(index)) {
            (Some(away), Some(lost)) => (away - lost).max(0.0),
            _ => 0.0,
        }
    }
}

impl SpinnerWork {
    pub fn between(before: &SpinnerSample, after: &SpinnerSample) -> SpinnerWork {
        SpinnerWork {
            wall_s: after.at.duration_since(before.at).as_secs_f64(),
            iterations: after.iterations.saturating_sub(before.iterations) as f64,
            runtime_s: (after.runtime_s - before.runtime_s).max(0.0),
        }
    }
}

/// Speed (iterations per second of own CPU time) and lost share of one
/// calibration interval.
pub fn calibrate_one(work: &SpinnerWork) -> Result<(f64, f64), String> {
    if work.runtime_s <= 0.0 || work.iterations <= 0.0 || work.wall_s <= 0.0 {
        return Err(format!(
            "the spinner did not run while calibrating ({work:?}): is another process \
             keeping the CPU busy?"
        ));
    }
    let speed = work.iterations / work.runtime_s;
    Ok((speed, lost_share(work, speed)))
}

/// Share of the CPU the spinner did not work over `work`, at `speed`: 0 when it
/// ran undisturbed, 1 when it never ran. Clamped to 0..=1 (a speed measured a
/// fraction of a percent low can make an idle CPU read slightly negative).
pub fn lost_share(work: &SpinnerWork, speed: f64) -> f64 {
    if work.wall_s <= 0.0 || speed <= 0.0 {
        return 0.0;
    }
    (1.0 - work.iterations / (speed * work.wall_s)).clamp(0.0, 1.0)
}

/// Everything known that ran during an interval besides the client, in cores
/// (process CPU time as the kernel charged it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Known {
    /// The mock nodes (zero while calibrating: they are not running yet).
    pub mocks: f64,
    /// This benchmark's own threads other than the spinners, and its tools (perf).
    pub ours: f64,
    /// Every other process of the machine (other sessions), kernel threads excluded.
    pub others: f64,
}

impl Known {
    pub fn total(&self) -> f64 {
        self.mocks + self.ours + self.others
    }
}

/// The unexplained background of one calibration, in cores: what the spinners
/// lost while alone, less what known processes were charged meanwhile (kernel
/// housekeeping, and the resolution of other processes' accounting).
pub fn unexplained(cal_lost: f64, cal_known: &Known) -> f64 {
    (cal_lost - cal_known.total()).max(0.0)
}

/// The client's caused CPU in cores: what the spinners lost during the run, less
/// what known processes really used — their charged CPU, less `mock_overcharge`
/// (below) — less the idle machine's `background` ([`unexplained`]).
///
/// `mock_overcharge`: when a task is woken onto a CPU that runs the spinner, the
/// kernel stops the spinner's clock at the wake-up (on the waker's CPU) and starts
/// the woken task's there, so the task is charged for the IPI's delivery while the
/// spinner still worked (`wakeup_preempt` skips the next clock update). On the
/// mocks' CPU that charge lands on the mocks: it is the spinner's undercharge
/// there ([`Lost::undercharged`]), given back before the mocks are subtracted.
pub fn caused_cores(
    run_lost: f64,
    run_known: &Known,
    background: f64,
    mock_overcharge: f64,
) -> f64 {
    run_lost - (run_known.total() - mock_overcharge) - background
}

/// The median of some values (0 for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Caused CPU per job in microseconds, from cores and the client's throughput.
pub fn per_job_us(cores: f64, jobs_per_s: f64) -> f64 {
    if jobs_per_s > 0.0 {
        cores * 1e6 / jobs_per_s
    } else {
        f64::NAN
    }
}

impl CoRunner {
    /// Starts one paused spinner pinned to each of `cpus`.
    pub fn start(cpus: &[usize]) -> Result<CoRunner, String> {
        let control = Arc::new(Control {
            state: AtomicU8::new(PAUSE),
            parked: Mutex::new(0),
            changed: Condvar::new(),
        });
        let mut spinners = Vec::new();
        let mut threads = Vec::new();
        let mut clocks = Vec::new();
        for &cpu in cpus {
            let shared = Arc::new(SpinnerShared {
                iterations: AtomicU64::new(0),
                error: Mutex::new(None),
            });
            let thread = std::thread::Builder::new()
                .name(format!("{SPINNER_PREFIX}-{cpu}"))
                .spawn({
                    let shared = shared.clone();
                    let control = control.clone();
                    move || spin(cpu, &shared, &control)
                })
                .map_err(|error| format!("co-runner: cannot start a thread: {error}"))?;
            let mut clock: libc::clockid_t = 0;
            // SAFETY: the thread is alive (parked or spinning until dropped), and
            // the call only writes the clockid we own.
            let result = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
            if result != 0 {
                return Err(format!(
                    "co-runner: pthread_getcpuclockid failed ({})",
                    std::io::Error::from_raw_os_error(result)
                ));
            }
            spinners.push(shared);
            threads.push(thread);
            clocks.push(clock);
        }
        let co_runner = CoRunner {
            cpus: cpus.to_vec(),
            spinners,
            clocks,
            control,
            threads,
            backgrounds: Default::default(),
        };
        co_runner.wait_parked();
        for (cpu, spinner) in co_runner.cpus.iter().zip(&co_runner.spinners) {
            if let Some(error) = spinner.error.lock().map_err(|_| "poisoned")?.clone() {
                return Err(format!("co-runner on CPU {cpu}: {error}"));
            }
        }
        Ok(co_runner)
    }

    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Records one calibration's unexplained background and returns the median
    /// of the last few: one second of calibration reads the background only to
    /// ±0.02 cores (other sessions' commands come and go), its median over the
    /// last calibrations to much better, and it changes slowly.
    pub fn background(&self, unexplained: f64) -> f64 {
        let mut history = self.backgrounds.borrow_mut();
        history.push_back(unexplained);
        while history.len() > BACKGROUND_HISTORY {
            history.pop_front();
        }
        median(history.iter().copied().collect())
    }

    /// Lets the spinners run.
    pub fn resume(&self) {
        let _parked = self.control.parked.lock();
        self.control.state.store(RUN, Ordering::SeqCst);
        self.control.changed.notify_all();
    }

    /// Stops the spinners and returns once every one is parked (using no CPU).
    pub fn pause(&self) {
        self.control.state.store(PAUSE, Ordering::SeqCst);
        self.wait_parked();
    }

    fn wait_parked(&self) {
        let Ok(mut parked) = self.control.parked.lock() else {
            return;
        };
        while *parked < self.spinners.len() {
            match self.control.changed.wait(parked) {
                Ok(guard) => parked = guard,
                Err(_) => return,
            }
        }
    }

    /// Every spinner's count and CPU time now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            spinners: self
                .spinners
                .iter()
                .zip(&self.clocks)
                .map(|(spinner, &clock)| {
                    let iterations = spinner.iterations.load(Ordering::Relaxed);
                    let runtime_s = clock_s(clock);
                    SpinnerSample {
                        at: Instant::now(),
                        iterations,
                        runtime_s,
                    }
                })
                .collect(),
        }
    }
}

impl Calibration {
    /// The speed of each spinner between two snapshots taken while they ran alone
    /// (the caller sleeps between them and accounts what else ran meanwhile).
    pub fn from_snapshots(
        cpus: &[usize],
        before: &Snapshot,
        after: &Snapshot,
    ) -> Result<Calibration, String> {
        let mut speed = Vec::new();
        let mut lost = Vec::new();
        for (cpu, (b, a)) in cpus.iter().zip(before.spinners.iter().zip(&after.spinners)) {
            let (s, l) = calibrate_one(&SpinnerWork::between(b, a))
                .map_err(|error| format!("co-runner on CPU {cpu}: {error}"))?;
            speed.push(s);
            lost.push(l);
        }
        let seconds = match (before.spinners.first(), after.spinners.first()) {
            (Some(b), Some(a)) => a.at.duration_since(b.at).as_secs_f64(),
            _ => 0.0,
        };
        Ok(Calibration {
            speed,
            lost,
            seconds,
        })
    }

    /// Each CPU's lost share between two snapshots taken while the spinners ran.
    pub fn lost(&self, before: &Snapshot, after: &Snapshot) -> Lost {
        let mut lost = Lost::default();
        for ((b, a), &speed) in before.spinners.iter().zip(&after.spinners).zip(&self.speed) {
            let work = SpinnerWork::between(b, a);
            lost.lost.push(lost_share(&work, speed));
            lost.scheduled_away.push(if work.wall_s > 0.0 {
                (1.0 - work.runtime_s / work.wall_s).clamp(0.0, 1.0)
            } else {
                0.0
            });
            lost.speed.push(if work.runtime_s > 0.0 {
                work.iterations / work.runtime_s
            } else {
                f64::NAN
            });
        }
        lost
    }

    /// The calibration's lost shares, as a [`Lost`].
    pub fn background(&self) -> Lost {
        Lost {
            lost: self.lost.clone(),
            scheduled_away: self.lost.clone(),
            speed: self.speed.clone(),
        }
    }
}

impl Drop for CoRunner {
    fn drop(&mut self) {
        {
            let _parked = self.control.parked.lock();
            self.control.state.store(STOP, Ordering::SeqCst);
            self.control.changed.notify_all();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A spinner thread: pin, lowest priority, then count until told to stop.
fn spin(cpu: usize, shared: &SpinnerShared, control: &Control) {
    if let Err(error) = lowest_priority_on(cpu) {
        if let Ok(mut slot) = shared.error.lock() {
            *slot = Some(error);
        }
        // Park for good: `start` reports the error.
        park_until(control, |state| state == STOP);
        return;
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut count: u64 = 0;
    loop {
        match control.state.load(Ordering::Relaxed) {
            RUN => {}
            STOP => return,
            _ => {
                if park_until(control, |state| state != PAUSE) == STOP {
                    return;
                }
            }
        }
        for _ in 0..CHUNK {
            x = std::hint::black_box(
                x.wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407),
            );
        }
        count += CHUNK;
        shared.iterations.store(count, Ordering::Relaxed);
    }
}

/// Parks the calling spinner until `done(state)`; returns that state.
fn park_until(control: &Control, done: impl Fn(u8) -> bool) -> u8 {
    let Ok(mut parked) = control.parked.lock() else {
        return STOP;
    };
    *parked += 1;
    control.changed.notify_all();
    loop {
        let state = control.state.load(Ordering::SeqCst);
        if done(state) {
            *parked -= 1;
            return state;
        }
        match control.changed.wait(parked) {
            Ok(guard) => parked = guard,
            Err(_) => return STOP,
        }
    }
}

/// Pins the calling thread to `cpu`, `SCHED_IDLE`, nice 19 (its time then shows
/// in `/proc/stat`'s "nice" column, apart from everyone else's).
fn lowest_priority_on(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it
    // for cpu < CPU_SETSIZE, checked first.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(format!("CPU {cpu} is beyond CPU_SETSIZE"));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            return Err(format!(
                "cannot take SCHED_IDLE: {}",
                std::io::Error::last_os_error()
            ));
        }
        // Best effort: only where its time is shown depends on it.
        libc::setpriority(libc::PRIO_PROCESS, gettid() as libc::id_t, 19);
    }
    Ok(())
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// A CPU-time clock's reading in seconds, 0 if it cannot be read.
fn clock_s(clock: libc::clockid_t) -> f64 {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return 0.0;
    }
    time.tv_sec as f64 + time.tv_nsec as f64 * 1e-9
}

/// CPU time (user + system) the calling thread has used.
pub fn thread_cpu() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// A known load for validating the method: uses `fraction` (0..=1) of the CPU the
/// calling thread runs on, measured by its own CPU time, for `length` of wall
/// time: in every 10 ms period it spins until it has used `fraction` × 10 ms of
/// CPU, then sleeps to the period's end. Returns the CPU time it used.
pub fn burn(fraction: f64, length: Duration) -> Duration {
    const PERIOD: Duration = Duration::from_millis(10);
    let fraction = fraction.clamp(0.0, 1.0);
    let started = Instant::now();
    let cpu_started = thread_cpu();
    let mut period_start = started;
    let mut x: u64 = 1;
    while period_start.duration_since(started) < length {
        let budget = PERIOD.mul_f64(fraction);
        let cpu_at_start = thread_cpu();
        while thread_cpu().saturating_sub(cpu_at_start) < budget {
            for _ in 0..256 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        period_start += PERIOD;
        if fraction < 1.0 {
            if let Some(left) = period_start.checked_duration_since(Instant::now()) {
                std::thread::sleep(left);
            }
        } else {
            // A full core: no sleeping, and no falling behind the periods either.
            period_start = period_start.max(Instant::now());
        }
    }
    thread_cpu().saturating_sub(cpu_started)
}

/// Pins the calling thread to `cpu` (for [`burn`]).
pub fn pin_to(cpu: usize) -> Result<(), String> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is beyond CPU_SETSIZE"));
    }
    // SAFETY: as in lowest_priority_on.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}
