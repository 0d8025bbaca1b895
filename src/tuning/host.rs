//! Facts about the host a tuning file is meant for, read from `/sys` and `/proc`.
//!
//! [`Host::read`] takes the root of the tree it reads (`/` on a real host), so a
//! test can lay out a fake `sys/devices/system/cpu/...` in a temporary directory
//! and get the facts of a 64-CPU, two-socket machine on a 2-CPU VM. The facts only
//! a syscall gives (the affinity mask, RLIMIT_MEMLOCK, the effective user) are
//! plain fields that [`Host::live`] fills in and a test sets by hand. Nothing here
//! changes the host: this module reads, [`super::check`] judges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::parse_cpu_list;

/// One logical CPU as the kernel describes it under `cpu<N>/topology`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    /// The CPU's number, as used in affinity masks and tuning files.
    pub id: usize,
    /// Its physical core within the package (`core_id`): two CPUs with the same
    /// core and package are hyperthread siblings.
    pub core_id: usize,
    /// Its socket (`physical_package_id`), which together with `core_id` names a
    /// physical core.
    pub package: usize,
    /// Every CPU on its physical core, itself included (`thread_siblings_list`):
    /// more than one means SMT is on for this core.
    pub siblings: Vec<usize>,
}

/// A NIC interrupt and where the kernel may deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Irq {
    /// The IRQ number, the directory under `/proc/irq`.
    pub number: u32,
    /// Its name in `/proc/interrupts` (e.g. `eth0-TxRx-0`), for the finding.
    pub name: String,
    /// CPUs in its `smp_affinity_list`: a shard there loses time to the NIC.
    pub cpus: Vec<usize>,
}

/// Everything [`super::check`] and [`super::generate`] need to know about a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The root the files were read under (`/` on a real host), for messages
    /// that name a file to edit.
    pub root: PathBuf,
    /// CPUs the kernel has online (`/sys/devices/system/cpu/online`).
    pub online: Vec<usize>,
    /// CPUs that exist (`/sys/devices/system/cpu/present`, else the `cpu<N>`
    /// directories): one that exists but is not online is "offline", not "unknown".
    pub present: Vec<usize>,
    /// Topology of every online CPU whose `topology/` could be read, by id.
    pub cpus: BTreeMap<usize, Cpu>,
    /// NUMA nodes and their CPUs (`/sys/devices/system/node/node<N>/cpulist`);
    /// empty when the kernel has no NUMA support, which means one node.
    pub numa_nodes: BTreeMap<usize, Vec<usize>>,
    /// The process's affinity mask (sched_getaffinity), `None` when unknown.
    pub affinity: Option<Vec<usize>>,
    /// The cgroup v2 cpuset (`/sys/fs/cgroup/cpuset.cpus.effective`), `None` when
    /// there is none: a container may be limited there without `taskset`.
    pub cgroup_cpuset: Option<Vec<usize>>,
    /// Soft RLIMIT_MEMLOCK in KiB, `None` when unlimited or unknown.
    pub memlock_kib: Option<u64>,
    /// `/proc/sys/kernel/io_uring_disabled`: 0 allowed, 1 only for privileged
    /// processes (or the `io_uring_group`), 2 off; `None` on kernels without it.
    pub io_uring_disabled: Option<u32>,
    /// Whether the process is privileged (euid 0), which a setting of 1 allows.
    pub privileged: bool,
    /// `Seccomp:` of `/proc/self/status`: 2 means a filter is on, which in a
    /// container usually blocks io_uring (Docker's default profile does).
    pub seccomp: Option<u32>,
    /// CPUs isolated from the scheduler (`isolcpus=`, `/sys/devices/system/cpu/isolated`).
    pub isolated: Vec<usize>,
    /// CPUs running without the scheduler tick (`nohz_full=`), from sysfs or
    /// `/proc/cmdline`.
    pub nohz_full: Vec<usize>,
    /// cpufreq governor per CPU (`cpu<N>/cpufreq/scaling_governor`); empty on hosts
    /// (VMs, mostly) without cpufreq.
    pub governors: BTreeMap<usize, String>,
    /// Interrupts of network interfaces backed by a device (not `lo`, bridges).
    pub nic_irqs: Vec<Irq>,
    /// Transparent huge pages mode, the bracketed word of
    /// `/sys/kernel/mm/transparent_hugepage/enabled` (`always`, `madvise`, `never`).
    pub transparent_hugepages: Option<String>,
    /// `vm.swappiness` (`/proc/sys/vm/swappiness`).
    pub swappiness: Option<u32>,
}

impl Host {
    /// Reads the facts files under `root`. Files that are missing leave their
    /// fact empty or `None`; syscall facts stay unset (see [`Host::live`]).
    pub fn read(root: &Path) -> Host {
        let sys_cpu = root.join("sys/devices/system/cpu");
        let cpu_list = |path: PathBuf| -> Option<Vec<usize>> {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|text| parse_cpu_list(&text).ok())
        };
        let number = |path: PathBuf| -> Option<u32> {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
        };
        let cpu_dirs = numbered_entries(&sys_cpu, "cpu");
        let present = cpu_list(sys_cpu.join("present")).unwrap_or_else(|| cpu_dirs.clone());
        let online = cpu_list(sys_cpu.join("online")).unwrap_or_else(|| present.clone());
        let mut cpus = BTreeMap::new();
        let mut governors = BTreeMap::new();
        for &id in &online {
            let dir = sys_cpu.join(format!("cpu{id}"));
            let topology = dir.join("topology");
            let core_id = number(topology.join("core_id")).map(|n| n as usize);
            let package = number(topology.join("physical_package_id")).map(|n| n as usize);
            let siblings = cpu_list(topology.join("thread_siblings_list"));
            if let (Some(core_id), Some(package), Some(siblings)) = (core_id, package, siblings) {
                cpus.insert(
                    id,
                    Cpu {
                        id,
                        core_id,
                        package,
                        siblings,
                    },
                );
            }
            if let Ok(governor) = std::fs::read_to_string(dir.join("cpufreq/scaling_governor")) {
                governors.insert(id, governor.trim().to_string());
            }
        }
        let node_dir = root.join("sys/devices/system/node");
        let numa_nodes = numbered_entries(&node_dir, "node")
            .into_iter()
            .filter_map(|node| {
                cpu_list(node_dir.join(format!("node{node}/cpulist"))).map(|cpus| (node, cpus))
            })
            .collect();
        let cmdline = std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default();
        let from_cmdline = |key: &str| -> Vec<usize> {
            let Some(value) = cmdline
                .split_whitespace()
                .find_map(|word| word.strip_prefix(key))
            else {
                return Vec::new();
            };
            // isolcpus may carry flags before the CPUs: isolcpus=nohz,domain,2-5.
            let cpus: Vec<&str> = value
                .split(',')
                .filter(|part| !part.chars().any(char::is_alphabetic))
                .collect();
            parse_cpu_list(&cpus.join(",")).unwrap_or_default()
        };
        let isolated = cpu_list(sys_cpu.join("isolated"))
            .filter(|cpus| !cpus.is_empty())
            .unwrap_or_else(|| from_cmdline("isolcpus="));
        let nohz_full = cpu_list(sys_cpu.join("nohz_full"))
            .filter(|cpus| !cpus.is_empty())
            .unwrap_or_else(|| from_cmdline("nohz_full="));
        let seccomp = std::fs::read_to_string(root.join("proc/self/status"))
            .ok()
            .and_then(|status| {
                status.lines().find_map(|line| {
                    line.strip_prefix("Seccomp:")
                        .and_then(|value| value.trim().parse().ok())
                })
            });
        let transparent_hugepages =
            std::fs::read_to_string(root.join("sys/kernel/mm/transparent_hugepage/enabled"))
                .ok()
                .and_then(|text| {
                    let start = text.find('[')?;
                    let end = text[start..].find(']')? + start;
                    Some(text[start + 1..end].to_string())
                });
        Host {
            root: root.to_path_buf(),
            online,
            present,
            cpus,
            numa_nodes,
            affinity: None,
            cgroup_cpuset: cpu_list(root.join("sys/fs/cgroup/cpuset.cpus.effective"))
                .filter(|cpus| !cpus.is_empty()),
            memlock_kib: None,
            io_uring_disabled: number(root.join("proc/sys/kernel/io_uring_disabled")),
            privileged: false,
            seccomp,
            isolated,
            nohz_full,
            governors,
            nic_irqs: read_nic_irqs(root),
            transparent_hugepages,
            swappiness: number(root.join("proc/sys/vm/swappiness")),
        }
    }

    /// This host and this process: [`Host::read`] of `/` plus the affinity
    /// mask, the locked-memory limit and the effective user.
    pub fn live() -> Host {
        let mut host = Host::read(Path::new("/"));
        host.affinity = super::affinity_cpus();
        host.memlock_kib = super::memlock_limit_kib();
        host.privileged = is_privileged();
        host
    }

    /// CPUs this process may run on: online, in its affinity mask and in its
    /// cgroup's cpuset, ascending.
    pub fn allowed_cpus(&self) -> Vec<usize> {
        self.online
            .iter()
            .copied()
            .filter(|cpu| self.affinity.as_ref().is_none_or(|set| set.contains(cpu)))
            .filter(|cpu| {
                self.cgroup_cpuset
                    .as_ref()
                    .is_none_or(|set| set.contains(cpu))
            })
            .collect()
    }

    /// The physical core (package, core) of `cpu`, or `None` if its topology is
    /// unknown, in which case it counts as a core of its own.
    pub fn core_of(&self, cpu: usize) -> Option<(usize, usize)> {
        self.cpus.get(&cpu).map(|cpu| (cpu.package, cpu.core_id))
    }

    /// The hyperthread siblings of `cpu`, itself left out.
    pub fn siblings_of(&self, cpu: usize) -> Vec<usize> {
        self.cpus
            .get(&cpu)
            .map(|info| {
                info.siblings
                    .iter()
                    .copied()
                    .filter(|&other| other != cpu)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any core runs more than one thread.
    pub fn has_smt(&self) -> bool {
        self.cpus.values().any(|cpu| cpu.siblings.len() > 1)
    }

    /// The NUMA node `cpu` is on, `None` without NUMA information.
    pub fn node_of(&self, cpu: usize) -> Option<usize> {
        self.numa_nodes
            .iter()
            .find(|(_, cpus)| cpus.contains(&cpu))
            .map(|(&node, _)| node)
    }

    /// Of `cpus` (ascending), the first CPU of each physical core: one shard per
    /// core, the hyperthread siblings left out.
    pub fn one_per_core(&self, cpus: &[usize]) -> Vec<usize> {
        let mut seen = Vec::new();
        let mut chosen = Vec::new();
        for &cpu in cpus {
            match self.core_of(cpu) {
                Some(core) if seen.contains(&core) => {}
                Some(core) => {
                    seen.push(core);
                    chosen.push(cpu);
                }
                None => chosen.push(cpu),
            }
        }
        chosen
    }

    /// The host in one line, for `tune check`'s summary and `tune generate`'s header.
    pub fn describe(&self) -> String {
        let allowed = self.allowed_cpus();
        let cores = self.one_per_core(&allowed).len();
        format!(
            "{} CPUs online ({}), {} allowed to this process on {} physical core{}, {} NUMA node{}{}",
            self.online.len(),
            super::format_cpu_list(&self.online),
            allowed.len(),
            cores,
            if cores == 1 { "" } else { "s" },
            self.numa_nodes.len().max(1),
            if self.numa_nodes.len() > 1 { "s" } else { "" },
            if self.has_smt() { ", SMT on" } else { "" },
        )
    }
}

/// The numbers N of the `<prefix>N` entries of `dir`, ascending.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut numbers: Vec<usize> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_prefix(prefix))
                .and_then(|rest| rest.parse().ok())
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Interrupts whose `/proc/interrupts` name mentions a network interface that has
/// a device behind it (`/sys/class/net/<if>/device`), or that the device lists in
/// its `msi_irqs`, with their `/proc/irq/<n>/smp_affinity_list`.
fn read_nic_irqs(root: &Path) -> Vec<Irq> {
    let net = root.join("sys/class/net");
    let mut interfaces = Vec::new();
    let mut msi = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&net) {
        for entry in entries.filter_map(|entry| entry.ok()) {
            let device = entry.path().join("device");
            if !device.exists() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                interfaces.push(name.to_string());
            }
            if let Ok(irqs) = std::fs::read_dir(device.join("msi_irqs")) {
                msi.extend(
                    irqs.filter_map(|irq| irq.ok())
                        .filter_map(|irq| irq.file_name().to_str()?.parse::<u32>().ok()),
                );
            }
        }
    }
    if interfaces.is_empty() {
        return Vec::new();
    }
    let text = std::fs::read_to_string(root.join("proc/interrupts")).unwrap_or_default();
    let mut irqs = Vec::new();
    for line in text.lines() {
        let Some((number, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        let Ok(number) = number.trim().parse::<u32>() else {
            continue; // NMI, LOC and the other per-CPU rows
        };
        let name = rest.split_whitespace().last().unwrap_or("").to_string();
        let named = interfaces.iter().any(|interface| {
            rest.split_whitespace()
                .any(|word| word.starts_with(interface.as_str()))
        });
        if !named && !msi.contains(&number) {
            continue;
        }
        let affinity = root.join(format!("proc/irq/{number}/smp_affinity_list"));
        let cpus = std::fs::read_to_string(affinity)
            .ok()
            .and_then(|text| parse_cpu_list(&text).ok())
            .unwrap_or_default();
        irqs.push(Irq { number, name, cpus });
    }
    irqs
}

/// Whether this process runs as root, which io_uring_disabled = 1 still allows.
#[cfg(target_os = "linux")]
fn is_privileged() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(not(target_os = "linux"))]
fn is_privileged() -> bool {
    false
}

/// Builds fake `/sys` and `/proc` trees for tests, here and in `tests/`.
pub mod fake {
    use std::path::Path;

    /// The shape of a made-up host.
    #[derive(Debug, Clone)]
    pub struct Shape {
        /// Sockets (packages); each is its own NUMA node when `numa` is set.
        pub sockets: usize,
        /// Physical cores per socket.
        pub cores_per_socket: usize,
        /// Threads per core: 1 without SMT, 2 with.
        pub threads_per_core: usize,
        /// Whether to write `sys/devices/system/node`.
        pub numa: bool,
    }

    impl Shape {
        /// Logical CPUs in total.
        pub fn cpus(&self) -> usize {
            self.sockets * self.cores_per_socket * self.threads_per_core
        }
    }

    /// Writes `relative` under `root`, making its directories.
    pub fn write(root: &Path, relative: &str, text: &str) -> std::io::Result<()> {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)
    }

    /// Lays out a host of `shape` under `root` the way Linux numbers CPUs: first
    /// thread of every core (socket by socket), then the second threads, so the
    /// siblings of CPU 0 on a 16-thread host are `0,8`. Writes a clean host:
    /// io_uring allowed, THP `madvise`, swappiness 10, governor `performance`.
    pub fn host(root: &Path, shape: &Shape) -> std::io::Result<()> {
        let total = shape.cpus();
        let cores = shape.sockets * shape.cores_per_socket;
        let last = total.saturating_sub(1);
        write(
            root,
            "sys/devices/system/cpu/online",
            &format!("0-{last}\n"),
        )?;
        write(
            root,
            "sys/devices/system/cpu/present",
            &format!("0-{last}\n"),
        )?;
        write(root, "sys/devices/system/cpu/isolated", "\n")?;
        for cpu in 0..total {
            let core = cpu % cores; // global physical core number
            let socket = core / shape.cores_per_socket;
            let siblings: Vec<String> = (0..shape.threads_per_core)
                .map(|thread| (core + thread * cores).to_string())
                .collect();
            let dir = format!("sys/devices/system/cpu/cpu{cpu}");
            write(
                root,
                &format!("{dir}/topology/core_id"),
                &format!("{}\n", core % shape.cores_per_socket),
            )?;
            write(
                root,
                &format!("{dir}/topology/physical_package_id"),
                &format!("{socket}\n"),
            )?;
            write(
                root,
                &format!("{dir}/topology/thread_siblings_list"),
                &format!("{}\n", siblings.join(",")),
            )?;
            write(
                root,
                &format!("{dir}/cpufreq/scaling_governor"),
                "performance\n",
            )?;
        }
        if shape.numa {
            for socket in 0..shape.sockets {
                let cpus: Vec<String> = (0..total)
                    .filter(|cpu| (cpu % cores) / shape.cores_per_socket == socket)
                    .map(|cpu| cpu.to_string())
                    .collect();
                write(
                    root,
                    &format!("sys/devices/system/node/node{socket}/cpulist"),
                    &format!(
                        "{}\n",
                        super::super::format_cpu_list(
                            &cpus
                                .iter()
                                .filter_map(|c| c.parse().ok())
                                .collect::<Vec<usize>>()
                        )
                    ),
                )?;
            }
        }
        write(root, "proc/sys/kernel/io_uring_disabled", "0\n")?;
        write(root, "proc/sys/vm/swappiness", "10\n")?;
        write(
            root,
            "proc/cmdline",
            "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro\n",
        )?;
        write(root, "proc/self/status", "Name:\tpercore\nSeccomp:\t0\n")?;
        write(
            root,
            "sys/kernel/mm/transparent_hugepage/enabled",
            "always [madvise] never\n",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{host, write, Shape};
    use super::*;

    fn shape(sockets: usize, cores: usize, threads: usize, numa: bool) -> Shape {
        Shape {
            sockets,
            cores_per_socket: cores,
            threads_per_core: threads,
            numa,
        }
    }

    #[test]
    fn reads_topology_of_a_two_socket_smt_host() {
        let dir = tempfile::tempdir().unwrap();
        host(dir.path(), &shape(2, 16, 2, true)).unwrap();
        let facts = Host::read(dir.path());
        assert_eq!(facts.online, (0..64).collect::<Vec<_>>());
        assert_eq!(facts.cpus.len(), 64);
        assert_eq!(facts.siblings_of(0), vec![32]);
        assert_eq!(facts.siblings_of(47), vec![15]);
        assert_eq!(facts.core_of(16), Some((1, 0)));
        assert!(facts.has_smt());
        assert_eq!(facts.node_of(17), Some(1));
        assert_eq!(facts.node_of(48), Some(1));
        assert_eq!(facts.node_of(40), Some(0));
        assert_eq!(
            facts.one_per_core(&facts.allowed_cpus()),
            (0..32).collect::<Vec<_>>()
        );
        assert_eq!(facts.io_uring_disabled, Some(0));
        assert_eq!(facts.transparent_hugepages.as_deref(), Some("madvise"));
        assert_eq!(facts.swappiness, Some(10));
        assert_eq!(facts.seccomp, Some(0));
        assert_eq!(
            facts.governors.get(&63).map(String::as_str),
            Some("performance")
        );
    }

    #[test]
    fn allowed_cpus_intersect_online_affinity_and_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        host(dir.path(), &shape(1, 4, 1, false)).unwrap();
        write(dir.path(), "sys/devices/system/cpu/online", "0-2\n").unwrap();
        write(dir.path(), "sys/fs/cgroup/cpuset.cpus.effective", "1-3\n").unwrap();
        let mut facts = Host::read(dir.path());
        assert_eq!(facts.present, vec![0, 1, 2, 3]);
        assert_eq!(facts.allowed_cpus(), vec![1, 2]);
        facts.affinity = Some(vec![0, 2, 3]);
        assert_eq!(facts.allowed_cpus(), vec![2]);
    }

    #[test]
    fn isolation_comes_from_sysfs_or_the_kernel_command_line() {
        let dir = tempfile::tempdir().unwrap();
        host(dir.path(), &shape(1, 8, 1, false)).unwrap();
        write(
            dir.path(),
            "proc/cmdline",
            "ro isolcpus=nohz,domain,2-5 nohz_full=2-5,7 quiet\n",
        )
        .unwrap();
        let facts = Host::read(dir.path());
        assert_eq!(facts.isolated, vec![2, 3, 4, 5]);
        assert_eq!(facts.nohz_full, vec![2, 3, 4, 5, 7]);
        write(dir.path(), "sys/devices/system/cpu/isolated", "6\n").unwrap();
        assert_eq!(Host::read(dir.path()).isolated, vec![6]);
    }

    #[test]
    fn nic_irqs_are_found_by_interface_name_and_msi_list() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        host(root, &shape(1, 4, 1, false)).unwrap();
        std::fs::create_dir_all(root.join("sys/class/net/eth0/device/msi_irqs/51")).unwrap();
        std::fs::create_dir_all(root.join("sys/class/net/lo")).unwrap();
        write(
            root,
            "proc/interrupts",
            "           CPU0 CPU1 CPU2 CPU3\n  \
             0:   9 0 0 0  IO-APIC   2-edge      timer\n \
             50:  1 2 3 4  PCI-MSI 524288-edge   eth0-TxRx-0\n \
             51:  1 2 3 4  PCI-MSI 524289-edge   virtio0-input.0\n \
             52:  1 2 3 4  PCI-MSI 524290-edge   lo-fake\n\
             NMI:  0 0 0 0  Non-maskable interrupts\n",
        )
        .unwrap();
        write(root, "proc/irq/50/smp_affinity_list", "0-3\n").unwrap();
        write(root, "proc/irq/51/smp_affinity_list", "1\n").unwrap();
        let irqs = Host::read(root).nic_irqs;
        assert_eq!(
            irqs,
            vec![
                Irq {
                    number: 50,
                    name: "eth0-TxRx-0".into(),
                    cpus: vec![0, 1, 2, 3]
                },
                Irq {
                    number: 51,
                    name: "virtio0-input.0".into(),
                    cpus: vec![1]
                },
            ]
        );
    }

    #[test]
    fn a_missing_tree_gives_empty_facts() {
        let dir = tempfile::tempdir().unwrap();
        let facts = Host::read(&dir.path().join("nothing"));
        assert!(facts.online.is_empty());
        assert_eq!(facts.io_uring_disabled, None);
        assert_eq!(facts.transparent_hugepages, None);
    }

    #[test]
    fn the_live_host_has_at_least_one_allowed_cpu() {
        let facts = Host::live();
        assert!(!facts.allowed_cpus().is_empty(), "{facts:?}");
    }
}
