//! The one place that names glommio.
//!
//! Everything the rest of percore needs from a thread-per-core runtime is here:
//! starting a pinned executor on a thread, spawning local tasks, timers, and TCP
//! streams adapted to the tokio I/O traits that `h2` speaks. glommio's upstream is
//! barely maintained; keeping it behind this small surface is what would let a
//! monoio or compio port touch one file.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// A TCP stream that implements tokio's `AsyncRead`/`AsyncWrite`, as `h2` wants.
pub type Stream = Compat<glommio::net::TcpStream>;

/// A local task handle; dropping it cancels the task, `detach` lets it run on.
pub type Task<T> = glommio::Task<T>;

/// How to start one executor.
#[derive(Debug, Clone)]
pub struct ExecutorSpec {
    /// Thread name; dispatcher threads start with `pc-` so CPU accounting can find
    /// them (glommio appends `-<id>`, and its helper thread inherits the name).
    pub name: String,
    /// The CPU to pin to, or `None` to let the kernel place the thread.
    pub cpu: Option<usize>,
    /// Registered io_uring buffer memory, which counts against RLIMIT_MEMLOCK; a
    /// network-only executor needs little (glommio's 10 MiB default fails where the
    /// limit is 8 MiB).
    pub io_memory_bytes: usize,
}

/// Why an executor could not be started or did not finish.
#[derive(Debug)]
pub struct RuntimeError(pub String);

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuntimeError {}

/// A running executor thread.
pub struct Executor<T: Send + 'static> {
    /// glommio's join handle for the thread.
    handle: glommio::ExecutorJoinHandle<T>,
    /// Copied from the spec, for error messages.
    name: String,
}

impl<T: Send + 'static> Executor<T> {
    /// Waits for the executor's main future to finish and returns its output.
    pub fn join(self) -> Result<T, RuntimeError> {
        self.handle
            .join()
            .map_err(|error| RuntimeError(format!("executor {} failed: {error}", self.name)))
    }
}

/// Starts an executor on its own thread and runs `main()`'s future on it.
///
/// `main` is called on the new thread, so the future it builds need not be `Send`.
pub fn start<G, F, T>(spec: &ExecutorSpec, main: G) -> Result<Executor<T>, RuntimeError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = match spec.cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let handle = LocalExecutorBuilder::new(placement)
        .name(&spec.name)
        .io_memory(spec.io_memory_bytes)
        // A shard is network-only: a shallow ring is plenty and keeps locked memory low.
        .ring_depth(128)
        .spawn(main)
        .map_err(|error| {
            RuntimeError(format!(
                "cannot start executor {} on {}: {error} (glommio needs io_uring and \
                 RLIMIT_MEMLOCK of at least 512 KiB per executor; raise it with \
                 `ulimit -l` or LimitMEMLOCK= in the systemd unit)",
                spec.name,
                spec.cpu
                    .map_or("any CPU".to_string(), |cpu| format!("CPU {cpu}")),
            ))
        })?;
    Ok(Executor {
        handle,
        name: spec.name.clone(),
    })
}

/// Spawns a task on the current executor.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(future)
}

/// Sleeps on the current executor's timer.
pub async fn sleep(duration: Duration) {
    glommio::timer::Timer::new(duration).await;
}

/// Sleeps until `when` (returns at once if it has passed).
pub async fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        sleep(when - now).await;
    }
}

/// Runs `future`, giving up at `deadline`: `None` means the deadline passed first.
pub async fn until_deadline<T>(deadline: Instant, future: impl Future<Output = T>) -> Option<T> {
    let timer = async {
        sleep_until(deadline).await;
        None
    };
    futures_lite::future::or(async { Some(future.await) }, timer).await
}

/// Lets other tasks run if this one has used its time slice.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await;
}

/// Opens a TCP connection with Nagle off (gRPC messages are small and latency-bound).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Stream> {
    let stream = glommio::net::TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(io::Error::from)?;
    stream.set_nodelay(true).map_err(io::Error::from)?;
    Ok(stream.compat())
}

/// A listening socket on the current executor. glommio sets SO_REUSEPORT, so one
/// listener per executor on the same port shards accepts across executors.
pub struct Listener(glommio::net::TcpListener);

impl Listener {
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        glommio::net::TcpListener::bind(addr)
            .map(Listener)
            .map_err(io::Error::from)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr().map_err(io::Error::from)
    }

    /// The next connection, with the peer's address (for logs).
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let stream = self.0.accept().await.map_err(io::Error::from)?;
        stream.set_nodelay(true).map_err(io::Error::from)?;
        let peer = stream.peer_addr().map_err(io::Error::from)?;
        Ok((stream.compat(), peer))
    }
}
