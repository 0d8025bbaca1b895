//! Checks the co-runner method against known loads before anything is measured
//! with it: a burner process (this binary re-executed with `--burn`) uses exact
//! fractions of chosen CPUs, by its own CPU time, and the method must read them
//! back as caused CPU — with no mocks running, the burner is the "client".

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::corunner::{self, CoRunner};
use crate::machine;
use crate::process;
use crate::window::{self, Edge};

/// How long each case is measured.
const WINDOW: Duration = Duration::from_secs(3);
/// The burner's start-up before the window opens.
const SETTLE: Duration = Duration::from_millis(300);

/// One known load: (CPU index among the compared CPUs, fraction of it).
struct Case {
    name: &'static str,
    burns: &'static [(usize, f64)],
}

const CASES: [Case; 6] = [
    Case {
        name: "idle",
        burns: &[],
    },
    Case {
        name: "25 % of CPU 0",
        burns: &[(0, 0.25)],
    },
    Case {
        name: "50 % of CPU 0",
        burns: &[(0, 0.5)],
    },
    Case {
        name: "100 % of CPU 0",
        burns: &[(0, 1.0)],
    },
    Case {
        name: "50 % of CPU 1",
        burns: &[(1, 0.5)],
    },
    Case {
        name: "50 % of each CPU",
        burns: &[(0, 0.5), (1, 0.5)],
    },
];

/// One case's outcome.
pub struct Checked {
    pub name: String,
    /// Cores the burner was asked to use.
    pub expected: f64,
    /// Cores the kernel charged the burner process.
    pub charged: f64,
    /// What the spinners lost on each CPU, less the calibration's background.
    pub lost: Vec<f64>,
    /// The caused-CPU estimate, in cores.
    pub caused: f64,
    /// The details, for the JSON.
    pub details: Value,
}

/// `--burn 0:0.5,1:0.25 SECONDS`: one thread per CPU given, each pinned and
/// burning its fraction; prints the CPU seconds each used.
pub fn burn_main(words: &[String]) -> Result<(), String> {
    let [spec, seconds] = words else {
        return Err(format!(
            "--burn takes CPU:FRACTION[,…] SECONDS, got {words:?}"
        ));
    };
    let seconds: f64 = seconds
        .parse()
        .map_err(|_| format!("--burn: {seconds:?} is not a number of seconds"))?;
    let mut burns = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (cpu, fraction) = part
            .split_once(':')
            .ok_or(format!("--burn: {part:?} is not CPU:FRACTION"))?;
        let cpu: usize = cpu
            .parse()
            .map_err(|_| format!("--burn: {cpu:?} is not a CPU"))?;
        let fraction: f64 = fraction
            .parse()
            .map_err(|_| format!("--burn: {fraction:?} is not a fraction"))?;
        burns.push((cpu, fraction));
    }
    let threads: Vec<_> = burns
        .into_iter()
        .map(|(cpu, fraction)| {
            std::thread::spawn(move || {
                corunner::pin_to(cpu)?;
                Ok::<_, String>(corunner::burn(fraction, Duration::from_secs_f64(seconds)))
            })
        })
        .collect();
    for thread in threads {
        let used = thread.join().map_err(|_| "--burn: a thread panicked")??;
        println!("burned {:.3}", used.as_secs_f64());
    }
    Ok(())
}

/// Runs every case; `cpus` are the compared CPUs (client CPU, mock CPU).
pub fn run(
    co_runner: &CoRunner,
    cpus: &[usize],
    logs: &Path,
    lock: Option<&Path>,
) -> Result<Vec<Checked>, String> {
    let exe =
        std::env::current_exe().map_err(|error| format!("cannot find this binary: {error}"))?;
    let mut checked = Vec::new();
    for case in &CASES {
        let held = crate::lock::maybe(lock)?;
        machine::wait_until_quiet(Duration::from_secs(120), cpus);
        let calibrated = window::calibrate(co_runner)?;
        let spec = case
            .burns
            .iter()
            .map(|(index, fraction)| format!("{}:{fraction}", cpus[*index]))
            .collect::<Vec<_>>()
            .join(",");
        let length = SETTLE + WINDOW + Duration::from_millis(300);
        let burner = process::spawn(
            "burner",
            &cpus
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(","),
            &exe,
            &[
                "--burn".into(),
                spec,
                format!("{:.3}", length.as_secs_f64()),
            ],
            &logs.join("burner.log"),
        )?;
        std::thread::sleep(SETTLE);
        let pid = burner.pid();
        let before = Edge::take(Some(co_runner));
        std::thread::sleep(WINDOW);
        let after = Edge::take(Some(co_runner));
        let figures = window::figures(&before, &after, Some(&calibrated), pid, &[], cpus);
        co_runner.pause();
        let exit = burner.wait(length + Duration::from_secs(10))?;
        drop(held);
        if exit.code != Some(0) {
            return Err(format!(
                "burner exited with {:?}{}",
                exit.code,
                process::log_tail(&logs.join("burner.log"))
            ));
        }
        let co = figures.co_runner.ok_or("the co-runner gave no figures")?;
        let background = co.calibrated.calibration.background();
        checked.push(Checked {
            name: case.name.to_string(),
            expected: case.burns.iter().map(|(_, f)| f).sum(),
            charged: figures.usage.client_cores,
            lost: co
                .lost
                .lost
                .iter()
                .zip(&background.lost)
                .map(|(lost, background)| lost - background)
                .collect(),
            caused: co.caused_cores,
            details: json!({
                "calibration_lost": co.calibrated.calibration.lost,
                "calibration_known_ours": co.calibrated.known.ours,
                "calibration_known_others": co.calibrated.known.others,
                "background_used": co.calibrated.background,
                "speed": co.calibrated.calibration.speed,
                "window_lost": co.lost.lost,
                "window_scheduled_away": co.lost.scheduled_away,
                "window_known_ours": co.known.ours,
                "window_known_others": co.known.others,
                "kernel_threads": figures.usage.kernel_cores,
                "stat_busy": figures.usage.stat_busy,
            }),
        });
        let last = checked.last().expect("just pushed");
        eprintln!(
            "compare: co-runner check, {}: expected {:.3} cores, burner charged {:.3}, \
             lost {:?}, caused {:.3}",
            last.name, last.expected, last.charged, last.lost, last.caused
        );
    }
    Ok(checked)
}

/// The cases as a markdown table.
pub fn markdown(checked: &[Checked], cpus: &[usize]) -> String {
    let mut out = format!(
        "| known load | expected cores | burner charged | spinner lost CPU {} / {} (less background) | caused estimate | error |\n\
         |---|---:|---:|---:|---:|---:|\n",
        cpus[0], cpus[1]
    );
    for c in checked {
        out.push_str(&format!(
            "| {} | {:.3} | {:.3} | {} | {:.3} | {:+.3} |\n",
            c.name,
            c.expected,
            c.charged,
            c.lost
                .iter()
                .map(|l| format!("{l:.3}"))
                .collect::<Vec<_>>()
                .join(" / "),
            c.caused,
            c.caused - c.expected,
        ));
    }
    out
}

pub fn json(checked: &[Checked]) -> Value {
    Value::Array(
        checked
            .iter()
            .map(|c| {
                json!({
                    "case": c.name,
                    "expected_cores": c.expected,
                    "burner_charged_cores": c.charged,
                    "spinner_lost_less_background": c.lost,
                    "caused_cores": c.caused,
                    "details": c.details,
                })
            })
            .collect(),
    )
}
