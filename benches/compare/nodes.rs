//! The mock data source and compute node every client runs against: two processes
//! of the percore binary (`percore mock-source`, `percore mock-compute`), pinned to
//! the CPU the clients leave free, started afresh for every run.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::process::{self, Child};

/// How long a mock has to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Both mock nodes of one run; dropping it stops them.
pub struct MockNodes {
    pub source: SocketAddr,
    pub compute: SocketAddr,
    /// The processes, stopped on drop.
    processes: [Child; 2],
}

impl MockNodes {
    /// Process ids of both mocks, for CPU accounting.
    pub fn pids(&self) -> [i32; 2] {
        [self.processes[0].pid(), self.processes[1].pid()]
    }
}

/// Starts both mocks on `cpu` with the given service time and payload size.
pub fn start(
    percore: &Path,
    cpu: usize,
    service_time_us: u64,
    payload_bytes: usize,
    logs: &Path,
) -> Result<MockNodes, String> {
    let start_one = |kind: &str| -> Result<(Child, SocketAddr), String> {
        let mut args: Vec<String> = [
            kind,
            "--listen",
            "127.0.0.1:0",
            "--cpus",
            &cpu.to_string(),
            "--service-time-us",
            &service_time_us.to_string(),
        ]
        .iter()
        .map(|word| word.to_string())
        .collect();
        // The compute node answers whatever it is sent; only the source makes data.
        if kind == "mock-source" {
            args.extend(["--payload-bytes".into(), payload_bytes.to_string()]);
        }
        let log = logs.join(format!("{kind}.log"));
        let mut child = process::spawn(kind, &cpu.to_string(), percore, &args, &log)?;
        let text = child.wait_for_line("listening on ", START_TIMEOUT)?;
        let addr = text
            .parse()
            .map_err(|_| format!("{kind}: printed \"listening on {text}\", not an address"))?;
        Ok((child, addr))
    };
    let (source_child, source) = start_one("mock-source")?;
    let (compute_child, compute) = start_one("mock-compute")?;
    Ok(MockNodes {
        source,
        compute,
        processes: [source_child, compute_child],
    })
}
