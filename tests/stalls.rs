//! Stall detection and executor statistics: a task that holds its executor
//! past its time slice is reported — once, with glommio's words and a
//! backtrace naming the function that held on — and the executor's counters
//! show the time it ran.

use std::time::{Duration, Instant};

use percore::runtime::{self, ExecutorSpec, ExecutorTuning};

/// Spins for `duration` without yielding: the bug a stall report is for.
#[inline(never)]
fn hold_the_cpu_without_yielding(duration: Duration) {
    let began = Instant::now();
    while began.elapsed() < duration {
        std::hint::spin_loop();
    }
}

fn spec() -> ExecutorSpec {
    ExecutorSpec {
        name: "pc-stall-test".into(),
        cpu: None,
        io_memory_bytes: 64 * 1024,
    }
}

/// A 10 ms time slice, and a stall 10 ms past it.
fn tuning() -> ExecutorTuning {
    ExecutorTuning {
        preempt_timer: Duration::from_millis(10),
        stall_threshold: Some(Duration::from_millis(10)),
        ..ExecutorTuning::DEFAULT
    }
}

#[test]
fn a_task_that_holds_the_executor_is_reported_with_a_backtrace() {
    let executor = runtime::start_with(&spec(), &tuning(), || async {
        // Settle first: the executor's start is not the task under test.
        runtime::sleep(Duration::from_millis(20)).await;
        let _ = runtime::take_stalls();
        let _ = runtime::take_stats();
        hold_the_cpu_without_yielding(Duration::from_millis(200));
        // The report is made when the queue's turn ends: let it.
        runtime::sleep(Duration::from_millis(20)).await;
        (runtime::take_stalls(), runtime::take_stats())
    })
    .expect("an executor");
    let ((stalls, reports), stats) = executor.join().expect("it ran");
    assert_eq!(stalls, 1, "one stall: {reports:?}");
    let report = &reports[0];
    assert!(
        report.starts_with("[stall-detector -- executor "),
        "{report}"
    );
    assert!(report.contains("went over-budget"), "{report}");
    assert!(
        report.contains("hold_the_cpu_without_yielding"),
        "the backtrace names the function that held on: {report}"
    );
    assert!(stats.busy >= Duration::from_millis(200), "{stats:?}");
    assert!(
        stats.tasks_run >= 1 && stats.scheduler_runs >= 1,
        "{stats:?}"
    );
}

#[test]
fn a_task_that_yields_in_time_is_no_stall() {
    let executor = runtime::start_with(&spec(), &tuning(), || async {
        runtime::sleep(Duration::from_millis(20)).await;
        let _ = runtime::take_stalls();
        // The same 200 ms of work, in slices that yield.
        for _ in 0..100 {
            hold_the_cpu_without_yielding(Duration::from_millis(2));
            runtime::yield_if_needed().await;
        }
        runtime::sleep(Duration::from_millis(20)).await;
        runtime::take_stalls()
    })
    .expect("an executor");
    let (stalls, reports) = executor.join().expect("it ran");
    assert_eq!((stalls, reports), (0, Vec::<String>::new()));
}

/// The stall timer is armed lazily (once per threshold while queue runs come
/// and go, not once per run): a stall that begins while the timer is already
/// armed by an earlier, short run is still caught, each stall once.
#[test]
fn stalls_among_many_short_runs_are_each_reported_once() {
    let executor = runtime::start_with(&spec(), &tuning(), || async {
        runtime::sleep(Duration::from_millis(20)).await;
        let _ = runtime::take_stalls();
        let mut reports = Vec::new();
        for _ in 0..2 {
            // Many queue runs, each ended by a short sleep: ~60 ms of them,
            // three times the 20 ms deadline of a run.
            let began = Instant::now();
            while began.elapsed() < Duration::from_millis(60) {
                hold_the_cpu_without_yielding(Duration::from_micros(100));
                runtime::sleep(Duration::from_micros(50)).await;
            }
            hold_the_cpu_without_yielding(Duration::from_millis(100));
            runtime::sleep(Duration::from_millis(20)).await;
            reports.push(runtime::take_stalls());
        }
        reports
    })
    .expect("an executor");
    let reports = executor.join().expect("it ran");
    assert_eq!(reports.len(), 2);
    for (stalls, texts) in reports {
        assert_eq!(stalls, 1, "one stall per long run: {texts:?}");
        assert!(
            texts[0].contains("hold_the_cpu_without_yielding"),
            "{texts:?}"
        );
    }
}
