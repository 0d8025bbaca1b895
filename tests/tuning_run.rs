//! A run with a tuning file: each shard pinned to its CPU, the coordinator, sink
//! and admin threads on theirs (read from `/proc/<pid>/task/*/status` while the
//! run goes on), and the executor's connection options on its sockets.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ClassSpec, MOCK_IO_MEMORY};
use percore::config::GrpcConfig;
use percore::grpc::client::ClientSettings;
use percore::mock::{MockKind, MockOptions};
use percore::runtime::{self, ExecutorSpec, ExecutorTuning, NetTuning};
use percore::tuning::{allowed_cpus, parse_cpu_list, Tuning};

const METER: ClassSpec = ClassSpec {
    name: "meter",
    model: "mock",
    period_ms: 100,
    deadline_ms: 80,
};

/// Each thread of process `pid` as (name, CPUs it may run on).
fn threads(pid: u32) -> Vec<(String, Vec<usize>)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for task in tasks.filter_map(|task| task.ok()) {
        let dir = task.path();
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // the thread ended between listing and reading
        };
        let cpus = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .and_then(|list| parse_cpu_list(list.trim()).ok())
            .unwrap_or_default();
        let tid: u64 = task
            .file_name()
            .to_str()
            .and_then(|tid| tid.parse().ok())
            .unwrap_or(0);
        found.push((format!("{}#{tid}", name.trim()), cpus));
    }
    found
}

/// The shard threads of `pid` (glommio names them `pc-shard-<executor id>`,
/// and its helper thread inherits name and mask), by executor id: ids rise in
/// the order the shards start, which is shard order.
fn shard_masks(pid: u32) -> BTreeMap<u64, Vec<Vec<usize>>> {
    let mut shards: BTreeMap<u64, Vec<Vec<usize>>> = BTreeMap::new();
    for (name, cpus) in threads(pid) {
        let Some(rest) = name.strip_prefix("pc-shard-") else {
            continue;
        };
        let id = rest
            .split('#')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or(0);
        shards.entry(id).or_default().push(cpus);
    }
    shards
}

/// Polls until `pid` has `count` shard executors, or 10 s pass.
fn wait_for_shards(pid: u32, count: usize) -> BTreeMap<u64, Vec<Vec<usize>>> {
    let started = Instant::now();
    loop {
        let shards = shard_masks(pid);
        if shards.len() >= count || started.elapsed() > Duration::from_secs(10) {
            return shards;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test's shard CPUs in reverse, so shard 0 is not simply on the first CPU.
fn reversed_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = allowed_cpus().into_iter().take(2).collect();
    cpus.reverse();
    cpus
}

#[test]
fn an_in_process_run_pins_each_shard_to_its_cpu() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = common::config(
        vec![common::class(METER, source.addr, compute.addr)],
        20,
        dir.path().join("jobs.db"),
        GrpcConfig::default(),
    );
    let cpus = reversed_cpus();
    config.tuning = Tuning {
        shard_cpus: cpus.clone(),
        ..Tuning::default()
    };
    let run = std::thread::spawn(move || common::run(&config, Duration::from_secs(2)));
    let shards = wait_for_shards(std::process::id(), cpus.len());
    let summary = run.join().expect("the run thread");
    assert!(summary.counters.ok > 0, "ok jobs: {}", summary.counters.ok);
    let by_shard: Vec<&Vec<Vec<usize>>> = shards.values().collect();
    assert_eq!(by_shard.len(), cpus.len(), "{shards:?}");
    for (masks, &cpu) in by_shard.iter().zip(&cpus) {
        assert!(
            masks.iter().all(|mask| mask == &vec![cpu]),
            "shard on {cpu}: {shards:?}"
        );
    }
}

#[test]
fn percore_run_with_tuning_pins_shards_and_the_threads_around_them() {
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config =
        common::write_config_file(dir.path(), source.addr, compute.addr, 20, 100, 80, &db, "");
    let cpus = reversed_cpus();
    let first = cpus[cpus.len() - 1];
    let last = cpus[0];
    let list = |cpus: &[usize]| {
        cpus.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Overrides the tuning.toml the config names (shards in ascending order).
    let tuning = dir.path().join("host.toml");
    std::fs::write(
        &tuning,
        format!(
            "shard_cpus = [{}]\ncoordinator_cpus = [{first}]\nsink_cpus = \"{last}\"\n\
             admin_cpus = [{last}]\nio_memory_kib = 256\n[executor]\nring_depth = 64\n\
             [http2]\nstream_window_kib = 256\n[socket]\nrecv_buffer_kib = 512\n",
            list(&cpus)
        ),
    )
    .expect("writing host.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args([
            "run",
            "--config",
            config.to_str().expect("UTF-8"),
            "--tuning",
            tuning.to_str().expect("UTF-8"),
            "--duration",
            "3s",
            "--admin",
            "127.0.0.1:0",
            "--summary-json",
        ])
        .arg(dir.path().join("summary.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("percore starts");
    let shards = wait_for_shards(child.id(), cpus.len());
    let all = threads(child.id());
    let output = child.wait_with_output().expect("percore ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let by_shard: Vec<&Vec<Vec<usize>>> = shards.values().collect();
    assert_eq!(by_shard.len(), cpus.len(), "{shards:?}");
    for (masks, &cpu) in by_shard.iter().zip(&cpus) {
        assert!(
            masks.iter().all(|mask| mask == &vec![cpu]),
            "shard on {cpu}: {shards:?}"
        );
    }
    let mask_of = |prefix: &str| -> Vec<Vec<usize>> {
        all.iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, cpus)| cpus.clone())
            .collect()
    };
    // The main thread (the coordinator) is named after the binary.
    assert!(mask_of("percore#").contains(&vec![first]), "{all:?}");
    assert_eq!(mask_of("pc-sink#"), vec![vec![last]], "{all:?}");
    assert_eq!(mask_of("pc-admin#"), vec![vec![last]], "{all:?}");
    let summary = common::read_summary_json(&dir.path().join("summary.json"));
    assert!(summary["ok"].as_u64().unwrap_or(0) > 0, "{summary}");
}

/// The connection options of an executor's tuning are on the sockets it opens.
#[test]
fn executor_tuning_sets_socket_options() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let addr: SocketAddr = listener.local_addr().expect("its address");
    let tuning = ExecutorTuning {
        ring_depth: 32,
        spin_before_park: Some(Duration::from_micros(10)),
        preempt_timer: Duration::from_millis(5),
        net: NetTuning {
            nodelay: false,
            send_buffer_bytes: Some(256 << 10),
            recv_buffer_bytes: Some(128 << 10),
            ..NetTuning::DEFAULT
        },
        ..ExecutorTuning::DEFAULT
    };
    let spec = ExecutorSpec {
        name: "tuned".into(),
        cpu: None,
        io_memory_bytes: MOCK_IO_MEMORY,
    };
    let read_options = |tuning: ExecutorTuning| {
        let executor = runtime::start_with(&spec, &tuning, move || async move {
            assert_eq!(runtime::net_tuning(), tuning.net);
            // What a shard's connections are opened with.
            let settings = ClientSettings::default();
            assert_eq!(settings.net, tuning.net);
            let stream = runtime::connect(addr, Duration::from_secs(2), &settings.net)
                .await
                .expect("connected");
            // SAFETY: the fd belongs to `stream`, alive for this borrow.
            let fd = unsafe { BorrowedFd::borrow_raw(stream.get_ref().as_raw_fd()) };
            let socket = socket2::SockRef::from(&fd);
            (
                socket.nodelay().expect("TCP_NODELAY"),
                socket.send_buffer_size().expect("SO_SNDBUF"),
                socket.recv_buffer_size().expect("SO_RCVBUF"),
            )
        })
        .expect("the executor starts");
        executor.join().expect("the executor ends")
    };
    let (nodelay, send, recv) = read_options(tuning);
    assert!(!nodelay);
    // Linux doubles the value asked for, to make room for its bookkeeping.
    assert_eq!(send, 2 * (256 << 10));
    assert_eq!(recv, 2 * (128 << 10));
    let (nodelay, _, _) = read_options(ExecutorTuning::DEFAULT);
    assert!(nodelay, "the default keeps Nagle off");
    drop(listener);
}

/// With `coordinator_cpus` and no `shard_cpus`, the shards are placed by default
/// on the other cores — decided before the coordinator is pinned, whose mask
/// would otherwise leave the shards only its own CPU.
#[test]
fn default_placement_leaves_the_coordinators_core_alone() {
    let cpus = allowed_cpus();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = common::start_mock(MockKind::Compute, MockOptions::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("jobs.db");
    let config =
        common::write_config_file(dir.path(), source.addr, compute.addr, 10, 100, 80, &db, "");
    let tuning = dir.path().join("host.toml");
    std::fs::write(&tuning, format!("coordinator_cpus = [{}]\n", cpus[0])).expect("host.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["run", "--config", config.to_str().expect("UTF-8")])
        .args(["--tuning", tuning.to_str().expect("UTF-8")])
        .args(["--duration", "2s", "--admin", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("percore starts");
    // Every CPU but the coordinator's (on a one-CPU host, that one).
    let expected: Vec<usize> = if cpus.len() > 1 {
        let host = percore::tuning::host::Host::live();
        host.one_per_core(&cpus)
            .into_iter()
            .filter(|&cpu| host.core_of(cpu) != host.core_of(cpus[0]))
            .collect()
    } else {
        cpus.clone()
    };
    let shards = wait_for_shards(child.id(), expected.len());
    let output = child.wait_with_output().expect("percore ends");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let placed: Vec<Vec<usize>> = shards.values().map(|masks| masks[0].clone()).collect();
    let wanted: Vec<Vec<usize>> = expected.iter().map(|&cpu| vec![cpu]).collect();
    assert_eq!(placed, wanted, "{shards:?}");
}
