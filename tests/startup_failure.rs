//! A shard whose executor cannot be created (here: a locked-memory limit too low
//! for io_uring) makes the run fail with glommio's reason, promptly, instead of
//! leaving the coordinator waiting for a shard that never started.

mod common;

use std::time::Duration;

use common::ClassSpec;
use percore::config::GrpcConfig;
use percore::dispatcher::{self, RunOptions};
use percore::mock::{MockKind, MockOptions};

const SENSOR: ClassSpec = ClassSpec {
    name: "sensor",
    model: "anomaly-ae",
    period_ms: 200,
    deadline_ms: 200,
};

#[test]
fn an_executor_that_cannot_start_fails_the_run_instead_of_hanging_it() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = common::config(
        vec![common::class(SENSOR, source.addr, compute.addr)],
        100,
        dir.path().join("jobs.db"),
        GrpcConfig::default(),
    );
    // glommio refuses to create an executor below 512 KiB of RLIMIT_MEMLOCK. The
    // mocks are already running; the shards start after this. (nextest runs each
    // test in a process of its own, so no other test sees the lowered limit.)
    let limit = libc::rlimit {
        rlim_cur: 64 * 1024,
        rlim_max: libc::RLIM_INFINITY,
    };
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on structs we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut current), 0);
        let lowered = libc::rlimit {
            rlim_cur: limit.rlim_cur,
            rlim_max: current.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &lowered), 0);
    }

    let (done_tx, done_rx) = flume::bounded(1);
    std::thread::spawn(move || {
        let options = RunOptions {
            duration: Some(Duration::from_secs(2)),
            ..RunOptions::default()
        };
        let _ = done_tx.send(dispatcher::run(&config, &options).map(|s| s.counters.jobs()));
    });
    let outcome = done_rx.recv_timeout(Duration::from_secs(30));
    source.stop();
    compute.stop();
    let error = match outcome {
        Ok(Err(error)) => error.to_string(),
        Ok(Ok(jobs)) => panic!("the run succeeded with {jobs} jobs despite its executors"),
        Err(_) => panic!("the run hung for 30 s instead of failing"),
    };
    // glommio's own reason, e.g. "executor pc-shard failed: … MemLockLimit(65536/524288)".
    assert!(
        error.contains("pc-shard") && error.contains("MemLock"),
        "{error}"
    );
}
