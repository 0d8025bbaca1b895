//! `percore tune check` and `tune generate` against hand-made hosts: fake `/sys`
//! and `/proc` trees in a temporary directory (2, 16 and 64 CPUs, with and
//! without SMT and NUMA), restricted affinity and cpusets, low memlock, io_uring
//! off, isolation, and the host-wide settings that only warn. Every finding is
//! asserted; what `generate` writes for each host must pass `check` there. Then
//! the binary's exit codes and bad input, naming file and line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use percore::tuning::check::{check, Finding, Severity};
use percore::tuning::file::{parse, Parsed};
use percore::tuning::generate::generate;
use percore::tuning::host::fake::{self, Shape};
use percore::tuning::host::Host;

/// A fake host of `shape` in its own temporary directory; the directory lives
/// as long as the value.
struct FakeHost {
    /// Holds the tree.
    dir: tempfile::TempDir,
    /// Its facts, with the syscall ones set by the test.
    host: Host,
}

impl FakeHost {
    fn new(
        sockets: usize,
        cores_per_socket: usize,
        threads_per_core: usize,
        numa: bool,
    ) -> FakeHost {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let shape = Shape {
            sockets,
            cores_per_socket,
            threads_per_core,
            numa,
        };
        fake::host(dir.path(), &shape).expect("writing the fake tree");
        let mut host = Host::read(dir.path());
        host.memlock_kib = Some(64 * 1024);
        FakeHost { dir, host }
    }

    /// Writes `text` to `relative` in the tree and reads the facts again,
    /// keeping the syscall ones.
    fn set(&mut self, relative: &str, text: &str) {
        fake::write(self.dir.path(), relative, text).expect("writing the fake tree");
        let mut host = Host::read(self.dir.path());
        host.affinity = self.host.affinity.clone();
        host.memlock_kib = self.host.memlock_kib;
        host.privileged = self.host.privileged;
        self.host = host;
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

fn parsed(text: &str) -> Parsed {
    match parse(text, Path::new("host.toml")) {
        Ok(parsed) => parsed,
        Err(error) => panic!("{error}\n{text}"),
    }
}

/// Every finding of `text` on `host`, as printed.
fn findings(text: &str, host: &Host) -> Vec<String> {
    check(&parsed(text), host)
        .iter()
        .map(Finding::to_string)
        .collect()
}

fn errors(text: &str, host: &Host) -> Vec<String> {
    check(&parsed(text), host)
        .into_iter()
        .filter(|finding| finding.severity == Severity::Error)
        .map(|finding| finding.to_string())
        .collect()
}

/// `generate` on `host`, checked there: no finding at all on a clean host.
fn generated_and_clean(host: &Host) -> String {
    let text = generate(host).expect("a file for the host");
    assert_eq!(findings(&text, host), Vec::<String>::new(), "{text}");
    text
}

fn value_of<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key} = ")))
}

#[test]
fn two_cpu_vm() {
    let vm = FakeHost::new(1, 2, 1, false);
    let text = generated_and_clean(&vm.host);
    assert_eq!(value_of(&text, "shard_cpus"), Some("\"0-1\""));
    // Too few cores to keep one for the threads around the shards.
    assert_eq!(value_of(&text, "coordinator_cpus"), None);
    assert_eq!(value_of(&text, "numa_nodes"), None);
    assert_eq!(findings("", &vm.host), Vec::<String>::new());
    assert_eq!(
        findings("shard_cpus = [0, 1,\n  2]\n", &vm.host),
        vec![
            "error: host.toml:2: shard_cpus[2]: there is no CPU 2 on this host (CPUs 0-1); \
             fix: use one of the allowed CPUs 0-1"
        ]
    );
    assert_eq!(
        findings("shards = 3\n", &vm.host),
        vec![
            "error: host.toml:1: shards: 3 shards, but this process may place them on only 2 \
             physical cores (CPUs 0-1); fix: set shards = 2, set smt = true to use hyperthreads \
             too, or allow more CPUs (CPUAffinity=, taskset, the cgroup's cpuset)"
        ]
    );
}

#[test]
fn sixteen_cpus_one_socket_with_smt() {
    let host = FakeHost::new(1, 8, 2, false);
    let text = generated_and_clean(&host.host);
    assert_eq!(value_of(&text, "shard_cpus"), Some("\"1-7\""));
    assert_eq!(value_of(&text, "coordinator_cpus"), Some("\"0,8\""));
    assert_eq!(value_of(&text, "sink_cpus"), Some("\"0,8\""));
    assert_eq!(value_of(&text, "admin_cpus"), Some("\"0,8\""));
    assert!(
        text.contains("the hyperthread siblings (9-15) are left out"),
        "{text}"
    );
}

#[test]
fn sixteen_cpus_siblings_shards_and_control_threads() {
    let host = FakeHost::new(1, 8, 2, false);
    assert_eq!(
        findings("shard_cpus = [1,\n 9]\n", &host.host),
        vec![
            "error: host.toml:2: shard_cpus[1]: CPU 9 is a hyperthread sibling of shard CPU 1: \
             two shards would share one core; fix: list one CPU per physical core, or set smt = \
             true if sharing is meant"
        ]
    );
    assert_eq!(
        findings("smt = true\nshard_cpus = [1, 9]\n", &host.host),
        Vec::<String>::new()
    );
    assert_eq!(
        errors("shards = 9\n", &host.host),
        vec![
            "error: host.toml:1: shards: 9 shards, but this process may place them on only 8 \
             physical cores (CPUs 0-7); fix: set shards = 8, set smt = true to use hyperthreads \
             too, or allow more CPUs (CPUAffinity=, taskset, the cgroup's cpuset)"
        ]
    );
    assert_eq!(
        findings("smt = true\nshards = 16\n", &host.host),
        Vec::<String>::new()
    );
    assert_eq!(
        findings("shard_cpus = \"0-7\"\ncoordinator_cpus = [8]\n", &host.host),
        vec![
            "warning: host.toml:2: coordinator_cpus[0]: CPU 8 shares a core with shard CPU 0; \
             fix: keep the coordinator, sink and admin threads on a core without shards \
             (`percore tune generate` keeps one for them)"
        ]
    );
}

#[test]
fn sixteen_cpus_without_smt() {
    let host = FakeHost::new(1, 16, 1, false);
    let text = generated_and_clean(&host.host);
    assert_eq!(value_of(&text, "shard_cpus"), Some("\"1-15\""));
    assert_eq!(value_of(&text, "coordinator_cpus"), Some("\"0\""));
}

#[test]
fn sixty_four_cpus_two_numa_sockets_with_smt() {
    let host = FakeHost::new(2, 16, 2, true);
    let text = generated_and_clean(&host.host);
    assert_eq!(value_of(&text, "shard_cpus"), Some("\"1-31\""));
    assert_eq!(value_of(&text, "coordinator_cpus"), Some("\"0,32\""));
    let nodes = value_of(&text, "numa_nodes").expect("numa_nodes on a NUMA host");
    assert_eq!(nodes.matches('0').count(), 15, "{nodes}");
    assert_eq!(nodes.matches('1').count(), 16, "{nodes}");

    assert_eq!(
        findings("shard_cpus = [1, 17]\nnuma_nodes = [0,\n  0]\n", &host.host),
        vec![
            "error: host.toml:3: numa_nodes[1]: shard CPU 17 is on NUMA node 1, not 0; fix: \
             write 1 here, or a CPU of node 0 (0-15,32-47) in shard_cpus[1]"
        ]
    );
    assert_eq!(
        findings("shard_cpus = [1, 17]\nnuma_nodes = [0, 1]\n", &host.host),
        Vec::<String>::new()
    );
}

#[test]
fn sixty_four_cpus_two_sockets_without_smt_or_numa() {
    let host = FakeHost::new(2, 32, 1, false);
    let text = generated_and_clean(&host.host);
    assert_eq!(value_of(&text, "shard_cpus"), Some("\"1-63\""));
    assert_eq!(value_of(&text, "numa_nodes"), None);
    assert_eq!(
        findings("shard_cpus = [1]\nnuma_nodes = [1]\n", &host.host),
        vec![
            "error: host.toml:2: numa_nodes[0]: this host has no NUMA node 1 (it shows none, \
             which is node 0); fix: write 0, or leave numa_nodes out"
        ]
    );
}

#[test]
fn restricted_affinity_cpuset_and_offline_cpus() {
    let mut host = FakeHost::new(1, 8, 2, false);
    host.host.affinity = Some(vec![0, 1, 2, 3]);
    let cpu_errors = errors("shard_cpus = \"2-5\"\n", &host.host);
    assert_eq!(
        cpu_errors,
        vec![
            "error: host.toml:1: shard_cpus: CPU 4 is not one this process may run on (its \
             affinity mask is 0-3); fix: start percore with CPUAffinity= in the unit or taskset \
             -c covering it, or use one of the allowed CPUs 0-3",
            "error: host.toml:1: shard_cpus: CPU 5 is not one this process may run on (its \
             affinity mask is 0-3); fix: start percore with CPUAffinity= in the unit or taskset \
             -c covering it, or use one of the allowed CPUs 0-3",
        ]
    );
    // Generated within the mask: 4 cores, the first kept.
    let text = generated_and_clean(&host.host);
    assert_eq!(value_of(&text, "shard_cpus"), Some("\"1-3\""));
    assert_eq!(value_of(&text, "coordinator_cpus"), Some("\"0\""));

    host.set("sys/fs/cgroup/cpuset.cpus.effective", "0-1\n");
    assert_eq!(
        errors("sink_cpus = [3]\nshard_cpus = [1]\n", &host.host),
        vec![
            "error: host.toml:1: sink_cpus[0]: CPU 3 is outside this cgroup's cpuset \
             (cpuset.cpus.effective: 0-1); fix: widen the cpuset (AllowedCPUs= in the unit, \
             docker --cpuset-cpus), or use one of the allowed CPUs 0-1"
        ]
    );
    let text = generated_and_clean(&host.host);
    assert_eq!(value_of(&text, "shard_cpus"), Some("\"0-1\""));

    let mut host = FakeHost::new(1, 16, 1, false);
    host.set("sys/devices/system/cpu/online", "0-14\n");
    assert_eq!(
        errors("shard_cpus = [15]\n", &host.host),
        vec![
            "error: host.toml:1: shard_cpus[0]: CPU 15 is offline; fix: echo 1 > \
             /sys/devices/system/cpu/cpu15/online, or use one of the allowed CPUs 0-14"
        ]
    );
    generated_and_clean(&host.host);
}

#[test]
fn low_memlock() {
    let mut host = FakeHost::new(1, 8, 2, false);
    host.host.memlock_kib = Some(1024);
    // The default places 8 shards, one per core.
    assert_eq!(
        errors("", &host.host),
        vec![
            "error: host.toml: io_memory_kib: 8 shards × (512 KiB + 256 KiB for the rings) = \
             6144 KiB of locked memory, but RLIMIT_MEMLOCK allows 1024 KiB; fix: raise it with \
             `ulimit -l` or LimitMEMLOCK= in the systemd unit, or fewer shard_cpus (not even \
             the smallest io_memory_kib fits)"
        ]
    );
    assert_eq!(
        errors("shard_cpus = [1, 2]\nio_memory_kib = 512\n", &host.host),
        vec![
            "error: host.toml:2: io_memory_kib: 2 shards × (512 KiB + 256 KiB for the rings) = \
             1536 KiB of locked memory, but RLIMIT_MEMLOCK allows 1024 KiB; fix: raise it with \
             `ulimit -l` or LimitMEMLOCK= in the systemd unit, or a smaller io_memory_kib (at \
             most 256 fits)"
        ]
    );
    // generate sizes io_memory_kib to the limit when it can: 7 shards in 4 MiB.
    host.host.memlock_kib = Some(4096);
    let text = generated_and_clean(&host.host);
    assert_eq!(value_of(&text, "io_memory_kib"), Some("329"));
    // ...and says what to raise when it cannot.
    host.host.memlock_kib = Some(1024);
    let text = generate(&host.host).expect("a file");
    assert!(text.contains("raise it to at least 5376K"), "{text}");
    assert_eq!(errors(&text, &host.host).len(), 1, "{text}");
}

#[test]
fn io_uring_disabled_or_restricted() {
    let mut host = FakeHost::new(1, 2, 1, false);
    host.set("proc/sys/kernel/io_uring_disabled", "2\n");
    assert_eq!(
        findings("", &host.host),
        vec![
            "error: host: io_uring is disabled (kernel.io_uring_disabled = 2), and glommio has \
             no other way to do I/O; fix: sysctl -w kernel.io_uring_disabled=0, and put it in \
             /etc/sysctl.d/ to keep it"
        ]
    );
    host.set("proc/sys/kernel/io_uring_disabled", "1\n");
    assert_eq!(
        findings("", &host.host),
        vec![
            "error: host: io_uring is limited to privileged processes and the \
             kernel.io_uring_group (kernel.io_uring_disabled = 1); fix: run percore in the group \
             named by kernel.io_uring_group (SupplementaryGroups= in the unit), or sysctl -w \
             kernel.io_uring_disabled=0"
        ]
    );
    host.host.privileged = true;
    assert_eq!(findings("", &host.host), Vec::<String>::new());
}

#[test]
fn isolation_when_the_file_asks_for_it() {
    let mut host = FakeHost::new(1, 8, 1, false);
    assert_eq!(
        findings("shard_cpus = \"1-7\"\nisolated = true\n", &host.host),
        vec![
            "error: host.toml:2: isolated: isolated = true, but shard CPUs 1-7 are not isolated \
             from the scheduler (isolcpus: none); fix: add isolcpus=1-7 to the kernel command \
             line (GRUB_CMDLINE_LINUX) and reboot, or set isolated = false",
            "error: host.toml:2: isolated: isolated = true, but shard CPUs 1-7 are not running \
             without the scheduler tick (nohz_full: none); fix: add nohz_full=1-7 to the kernel \
             command line (GRUB_CMDLINE_LINUX) and reboot, or set isolated = false",
        ]
    );
    host.set(
        "proc/cmdline",
        "ro isolcpus=managed_irq,domain,1-7 nohz_full=1-5\n",
    );
    assert_eq!(
        errors("shard_cpus = \"1-7\"\nisolated = true\n", &host.host),
        vec![
            "error: host.toml:2: isolated: isolated = true, but shard CPUs 6-7 are not running \
             without the scheduler tick (nohz_full: 1-5); fix: add nohz_full=1-7 to the kernel \
             command line (GRUB_CMDLINE_LINUX) and reboot, or set isolated = false"
        ]
    );
    host.set("proc/cmdline", "ro isolcpus=1-7 nohz_full=1-7\n");
    let text = generated_and_clean(&host.host);
    assert_eq!(value_of(&text, "isolated"), Some("true"));
}

#[test]
fn host_settings_that_only_warn() {
    let mut host = FakeHost::new(1, 4, 1, false);
    host.set(
        "sys/devices/system/cpu/cpu2/cpufreq/scaling_governor",
        "powersave\n",
    );
    host.set(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never\n",
    );
    host.set("proc/sys/vm/swappiness", "60\n");
    host.set("proc/self/status", "Name:\tpercore\nSeccomp:\t2\n");
    std::fs::create_dir_all(host.root().join("sys/class/net/eth0/device")).expect("mkdir");
    host.set(
        "proc/interrupts",
        "           CPU0 CPU1 CPU2 CPU3\n 40: 1 2 3 4 PCI-MSI 1-edge eth0-TxRx-0\n \
         41: 1 2 3 4 PCI-MSI 2-edge eth0-TxRx-1\n 42: 1 2 3 4 PCI-MSI 3-edge nvme0q1\n",
    );
    host.set("proc/irq/40/smp_affinity_list", "0\n");
    host.set("proc/irq/41/smp_affinity_list", "0-3\n");
    let all = check(&parsed("shard_cpus = \"1-3\"\n"), &host.host);
    assert!(
        all.iter()
            .all(|finding| finding.severity == Severity::Warning),
        "{all:?}"
    );
    let lines: Vec<String> = all.iter().map(Finding::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "warning: host: a seccomp filter is on; container runtimes' default profiles block \
             io_uring; fix: allow io_uring_setup, io_uring_enter and io_uring_register in the \
             profile (e.g. docker --security-opt seccomp=<profile>)",
            "warning: host: the cpufreq governor of shard CPUs 2 is powersave, which lowers the \
             clock of a core waiting on the network; fix: cpupower frequency-set -g performance \
             (or write performance to /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)",
            "warning: host: NIC interrupts 41 (eth0-TxRx-1) may be delivered to shard CPUs 1-3; \
             fix: for irq in 41; do echo 0 > /proc/irq/$irq/smp_affinity_list; done, and \
             IRQBALANCE_BANNED_CPULIST=1-3 for irqbalance",
            "warning: host: transparent huge pages are `always`: compaction and khugepaged can \
             stall a shard; fix: echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (or \
             transparent_hugepage=madvise on the kernel command line)",
            "warning: host: vm.swappiness is 60: a shard's memory may be swapped out under \
             pressure; fix: sysctl -w vm.swappiness=1, and put it in /etc/sysctl.d/ to keep it",
        ]
    );
}

#[test]
fn busy_polling_beyond_busy_read_needs_cap_net_admin() {
    let mut host = FakeHost::new(1, 2, 1, false);
    host.set("proc/sys/net/core/busy_read", "0\n");
    assert_eq!(
        findings("[socket]\nnodelay = true\nbusy_poll_us = 50\n", &host.host),
        vec![
            "error: host.toml:3: socket.busy_poll_us: SO_BUSY_POLL of 50 µs is above \
             net.core.busy_read (0 µs) and needs CAP_NET_ADMIN; fix: sysctl -w \
             net.core.busy_read=50, AmbientCapabilities=CAP_NET_ADMIN in the unit, or a smaller \
             busy_poll_us"
        ]
    );
    host.set("proc/sys/net/core/busy_read", "50\n");
    assert_eq!(
        findings("[socket]\nbusy_poll_us = 50\n", &host.host),
        Vec::<String>::new()
    );
}

// ---------------------------------------------------------------------------------
// The binary: exit codes, bad input naming file and line, generate → check.
// ---------------------------------------------------------------------------------

fn percore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a tuning file");
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn generated_file_passes_check_on_this_host() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("this-host.toml");
    let path_text = path.to_str().expect("a UTF-8 path");
    let generated = percore(&["tune", "generate", "--output", path_text]);
    assert_eq!(
        generated.status.code(),
        Some(0),
        "{}",
        text(&generated.stderr)
    );
    let checked = percore(&["tune", "check", path_text]);
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
    assert!(
        !text(&checked.stdout).contains("error:"),
        "{}",
        text(&checked.stdout)
    );
    // stdout and --output write the same file.
    let stdout = percore(&["tune", "generate"]);
    assert_eq!(
        text(&stdout.stdout).trim_end(),
        std::fs::read_to_string(&path).expect("the file").trim_end()
    );
}

#[test]
fn bad_files_exit_2_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, content, expected) in [
        (
            "unknown.toml",
            "connections_per_node = 2\nshard_cpu = [0]\n",
            ":2: unknown field `shard_cpu`, expected one of `shards`",
        ),
        (
            "open.toml",
            "# a host\nshard_cpus = \"0-\"\n",
            ":2: shard_cpus: \"0-\" in \"0-\": a range needs a first and a last CPU, like \"0-3\"",
        ),
        (
            "backwards.toml",
            "shard_cpus = \"3-1\"\n",
            ":1: shard_cpus: range \"3-1\" runs backwards: write \"1-3\"",
        ),
        (
            "twice.toml",
            "shard_cpus = [0,\n  0]\n",
            ":2: shard_cpus[1]: CPU 0 is listed twice",
        ),
        (
            "twice-text.toml",
            "\nshard_cpus = \"0-1,1\"\n",
            ":2: shard_cpus: CPU 1 is listed twice in \"0-1,1\"",
        ),
    ] {
        let path = write(dir.path(), name, content);
        let output = percore(&["tune", "check", path.to_str().expect("UTF-8")]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{name}: {}",
            text(&output.stderr)
        );
        let stderr = text(&output.stderr);
        assert!(
            stderr.starts_with(&format!("error: {}{expected}", path.display())),
            "{name}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
    }
    let missing = dir.path().join("missing.toml");
    let output = percore(&["tune", "check", missing.to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("cannot read"),
        "{}",
        text(&output.stderr)
    );
}

/// The unknown-key message lists every key; the test above checks its start.
fn first_line(output: &Output) -> String {
    text(&output.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn more_shards_than_allowed_cpus_exit_1_naming_the_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let allowed = percore::tuning::allowed_cpus();
    let path = write(
        dir.path(),
        "many.toml",
        &format!("# too many\nshards = {}\n", allowed.len() + 1),
    );
    let output = percore(&["tune", "check", path.to_str().expect("UTF-8")]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let expected = format!(
        "error: {}:2: shards: {} shards, but this process may place them on only ",
        path.display(),
        allowed.len() + 1
    );
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(
        first_line(&output).contains("1 error"),
        "{}",
        text(&output.stderr)
    );

    // A run with that file is refused the same way, before anything starts.
    let outside = write(
        dir.path(),
        "outside.toml",
        &format!("shard_cpus = [{}]\n", allowed[allowed.len() - 1] + 1),
    );
    let config = write(
        dir.path(),
        "percore.toml",
        "[devices]\ngenerate = { count = 1, mix = { meter = 1 } }\n[sink]\nkind = \"sqlite\"\n\
         path = \"out.db\"\n[[classes]]\nname = \"meter\"\nmodel = \"m\"\nperiod_ms = 1000\n\
         deadline_ms = 500\ndata_sources = [\"127.0.0.1:1\"]\ncompute_nodes = [\"127.0.0.1:1\"]\n",
    );
    let run = percore(&[
        "run",
        "--config",
        config.to_str().expect("UTF-8"),
        "--tuning",
        outside.to_str().expect("UTF-8"),
        "--duration",
        "1s",
        "--admin",
        "none",
    ]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = text(&run.stderr);
    assert!(
        stderr.starts_with(&format!("error: {}:1: shard_cpus[0]: ", outside.display())),
        "{stderr}"
    );
    assert!(stderr.contains("use one of the allowed CPUs"), "{stderr}");
    assert!(
        !dir.path().join("out.db").exists(),
        "the run must not have started"
    );
}

#[test]
fn strict_counts_warnings() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let allowed = percore::tuning::allowed_cpus();
    // A control thread on a shard's CPU is a warning on any host.
    let path = write(
        dir.path(),
        "shared.toml",
        &format!("shard_cpus = [{0}]\ncoordinator_cpus = [{0}]\n", allowed[0]),
    );
    let path_text = path.to_str().expect("UTF-8");
    let lenient = percore(&["tune", "check", path_text]);
    assert_eq!(lenient.status.code(), Some(0), "{}", text(&lenient.stdout));
    assert!(
        text(&lenient.stdout).contains(&format!(
            "warning: {}:2: coordinator_cpus[0]: CPU {} shares a core with shard CPU {}",
            path.display(),
            allowed[0],
            allowed[0]
        )),
        "{}",
        text(&lenient.stdout)
    );
    let strict = percore(&["tune", "check", "--strict", path_text]);
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn startup_refuses_low_memlock_with_the_fix() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = dir.path().join("demo.db");
    // 256 KiB holds no shard; the demo's default tuning is checked before
    // glommio is asked for anything.
    let script = format!(
        "ulimit -l 256 && exec {} demo --devices 10 --duration 1s --admin none --db {}",
        env!("CARGO_BIN_EXE_percore"),
        db.display()
    );
    let output = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash runs");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: refusing to start: tuning: io_memory_kib: "),
        "{stderr}"
    );
    assert!(stderr.contains("RLIMIT_MEMLOCK allows 256 KiB"), "{stderr}");
    assert!(stderr.contains("`ulimit -l` or LimitMEMLOCK="), "{stderr}");
}

/// Each example in `tuning/` is clean on the host shape it is written for, and
/// not on the others (so the check is not vacuous).
#[test]
fn shipped_examples_pass_check_on_their_host_shape() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
    let shapes = [
        ("vm-2-core.toml", FakeHost::new(1, 2, 1, false)),
        ("single-socket-16-smt.toml", FakeHost::new(1, 8, 2, false)),
        ("two-socket-numa.toml", FakeHost::new(2, 16, 2, true)),
    ];
    for (name, host) in &shapes {
        let text = std::fs::read_to_string(examples.join(name)).expect("the example");
        assert_eq!(findings(&text, &host.host), Vec::<String>::new(), "{name}");
        for (other, other_host) in &shapes {
            if other != name && other_host.host.online.len() < host.host.online.len() {
                assert!(
                    !errors(&text, &other_host.host).is_empty(),
                    "{name} on {other}"
                );
            }
        }
    }
    let default = std::fs::read_to_string(examples.join("example.toml")).expect("example.toml");
    for (name, host) in &shapes {
        assert_eq!(
            findings(&default, &host.host),
            Vec::<String>::new(),
            "example.toml on {name}"
        );
    }
}
