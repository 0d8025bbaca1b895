//! The one place that names glommio (with [`watch`]: stalls and executor
//! statistics).
//!
//! Everything the rest of percore needs from a thread-per-core runtime is here:
//! starting a pinned executor on a thread, spawning local tasks, timers, and TCP
//! streams adapted to the tokio I/O traits that `h2` speaks. glommio's upstream is
//! barely maintained; keeping it behind this small surface is what would let a
//! monoio or compio port touch one file.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

pub mod watch;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
pub use watch::{context_switches, take_stalls, take_stats, ExecutorStats};

/// How an idle executor decides to spin before it parks; re-exported so its
/// rules are tested here, beside the runtime that configures it.
pub use glommio::SpinPolicy;

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

/// glommio settings every shard executor is built with, from the tuning file
/// ([`crate::tuning`] documents each value and its default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExecutorTuning {
    /// Entries of each io_uring ring. A network-only shard needs few: a shallow ring
    /// keeps locked memory low; deeper ones help only with many sockets per shard.
    pub ring_depth: usize,
    /// The longest an idle executor spins before it parks in the kernel,
    /// while several calls await their reply ([`expect_replies`]): a reply
    /// due within the spin costs no park and no wake-up. The window actually
    /// spun adapts to how soon replies came ([`SpinPolicy`]); an
    /// executor waiting for one reply or for nothing else parks at once.
    pub spin_before_park: Option<Duration>,
    /// How long a task queue runs before the executor checks whether another needs
    /// the CPU; long loops must still yield (see [`yield_if_needed`]).
    pub preempt_timer: Duration,
    /// How long past its time slice a task queue may run before it counts as a
    /// stall, logged with a backtrace ([`watch`]); `None` turns detection off.
    pub stall_threshold: Option<Duration>,
    /// Options of the connections this executor opens; see [`NetTuning`].
    pub net: NetTuning,
}

impl ExecutorTuning {
    /// The values a shard runs with where the tuning file does not set them.
    pub const DEFAULT: ExecutorTuning = ExecutorTuning {
        ring_depth: 128,
        spin_before_park: Some(Duration::from_micros(120)),
        preempt_timer: Duration::from_millis(100),
        stall_threshold: Some(Duration::from_millis(10)),
        net: NetTuning::DEFAULT,
    };
}

impl Default for ExecutorTuning {
    fn default() -> ExecutorTuning {
        ExecutorTuning::DEFAULT
    }
}

/// Socket options and HTTP/2 settings for the client connections an executor
/// opens. Set once on the executor's thread when it starts ([`start_with`]);
/// `grpc::client::ClientSettings` made on that thread take it by default and
/// hand it to [`connect`] and the h2 builder: executor-local like every other
/// piece of shard state, never shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetTuning {
    /// TCP_NODELAY: gRPC messages are small and latency-bound, so Nagle is off
    /// unless asked for.
    pub nodelay: bool,
    /// SO_SNDBUF in bytes; `None` leaves the kernel's autotuning alone.
    pub send_buffer_bytes: Option<usize>,
    /// SO_RCVBUF in bytes; `None` leaves the kernel's autotuning alone.
    pub recv_buffer_bytes: Option<usize>,
    /// SO_BUSY_POLL in µs: the kernel polls the NIC this long on a blocking read
    /// before it sleeps. Linux only; above `net.core.busy_read` it needs CAP_NET_ADMIN.
    pub busy_poll_us: Option<u32>,
    /// HTTP/2 per-stream receive window in bytes: large enough that a typical
    /// response never waits for a WINDOW_UPDATE round trip.
    pub stream_window: u32,
    /// HTTP/2 connection receive window in bytes, shared by its streams.
    pub connection_window: u32,
    /// Largest HTTP/2 frame payload the peer may send us, in bytes.
    pub max_frame_size: u32,
    /// Streams this side opens at most on one connection, below the peer's own
    /// `max_concurrent_streams`; `None` follows the peer alone.
    pub max_streams_per_connection: Option<usize>,
}

impl NetTuning {
    /// Nagle off, kernel buffers, no busy polling, 1 MiB / 8 MiB windows, 16 KiB frames.
    pub const DEFAULT: NetTuning = NetTuning {
        nodelay: true,
        send_buffer_bytes: None,
        recv_buffer_bytes: None,
        busy_poll_us: None,
        stream_window: 1 << 20,
        connection_window: 8 << 20,
        max_frame_size: 16 << 10,
        max_streams_per_connection: None,
    };
}

impl Default for NetTuning {
    fn default() -> NetTuning {
        NetTuning::DEFAULT
    }
}

thread_local! {
    /// This executor's connection options, set by [`start_with`] on its thread.
    static NET_TUNING: Cell<NetTuning> = const { Cell::new(NetTuning::DEFAULT) };
}

/// The connection options of the executor running on this thread.
pub fn net_tuning() -> NetTuning {
    NET_TUNING.with(Cell::get)
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

/// Starts an executor on its own thread and runs `main()`'s future on it, with
/// the default [`ExecutorTuning`].
///
/// `main` is called on the new thread, so the future it builds need not be `Send`.
pub fn start<G, F, T>(spec: &ExecutorSpec, main: G) -> Result<Executor<T>, RuntimeError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    start_with(spec, &ExecutorTuning::DEFAULT, main)
}

/// [`start`] with the glommio settings and connection options of `tuning`.
pub fn start_with<G, F, T>(
    spec: &ExecutorSpec,
    tuning: &ExecutorTuning,
    main: G,
) -> Result<Executor<T>, RuntimeError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = match spec.cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let mut builder = LocalExecutorBuilder::new(placement)
        .name(&spec.name)
        .io_memory(spec.io_memory_bytes)
        // glommio asserts a depth above zero; the tuning file refuses less than 8.
        .ring_depth(tuning.ring_depth.max(1))
        .preempt_timer(tuning.preempt_timer);
    if let Some(spin) = tuning.spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    if let Some(threshold) = tuning.stall_threshold {
        watch::install_logger();
        builder = builder.detect_stalls(Some(Box::new(watch::StallReporter { threshold })));
    }
    let net = tuning.net;
    let handle = builder
        .spawn(move || {
            NET_TUNING.with(|cell| cell.set(net));
            main()
        })
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

/// Runs `work` on the current executor's blocking thread (glommio's helper
/// thread, on the executor's CPU) and waits for it without blocking the
/// executor: for the few calls that can only block, such as `getaddrinfo`.
/// Dropping the future does not stop `work`; its result is then discarded.
pub async fn spawn_blocking<F, R>(work: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(work).await
}

/// Tells the executor on this thread that `delta` more (or, negative, fewer)
/// calls await their reply: while several do, an idle executor may spin
/// before it parks (at most [`ExecutorTuning::spin_before_park`], as long as
/// [`SpinPolicy`] finds that it pays), so a reply that comes within the spin costs
/// no park and no wake-up; otherwise it parks at once. The gRPC client keeps
/// the count, one per call in flight.
pub fn expect_replies(delta: isize) {
    glommio::expect_replies(delta);
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

/// Lets every other task that is ready now run before this one goes on.
pub async fn yield_now() {
    futures_lite::future::yield_now().await;
}

/// Lets other tasks run if this one has used its time slice.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await;
}

/// Opens a TCP connection with the socket options of `tuning` (by default Nagle
/// off, as gRPC messages are small and latency-bound, and the kernel's buffer
/// sizes). The buffer sizes are set once connected, so the window scale of the
/// handshake is the kernel's; a refused option fails the connect.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tuning: &NetTuning,
) -> io::Result<Stream> {
    let stream = glommio::net::TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(io::Error::from)?;
    apply_socket_options(&stream, tuning)?;
    Ok(stream.compat())
}

/// Sets `tuning`'s socket options on a connected stream.
fn apply_socket_options(stream: &glommio::net::TcpStream, tuning: &NetTuning) -> io::Result<()> {
    // SAFETY: the fd belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let socket = socket2::SockRef::from(&fd);
    socket.set_nodelay(tuning.nodelay)?;
    if let Some(bytes) = tuning.send_buffer_bytes {
        socket.set_send_buffer_size(bytes)?;
    }
    if let Some(bytes) = tuning.recv_buffer_bytes {
        socket.set_recv_buffer_size(bytes)?;
    }
    if let Some(us) = tuning.busy_poll_us {
        set_busy_poll(&fd, us)?;
    }
    Ok(())
}

/// SO_BUSY_POLL, which socket2 does not wrap.
#[cfg(target_os = "linux")]
fn set_busy_poll(fd: &BorrowedFd<'_>, us: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(us).unwrap_or(libc::c_int::MAX);
    // SAFETY: a live socket fd, and a c_int option value of the size passed.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BUSY_POLL,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Busy polling is a Linux socket option; elsewhere it is not applied.
#[cfg(not(target_os = "linux"))]
fn set_busy_poll(_fd: &BorrowedFd<'_>, _us: u32) -> io::Result<()> {
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::SpinPolicy;
    use std::time::Duration;

    const MOST: Duration = Duration::from_micros(120);
    /// A quarter of the most: a cheap catch, and the shortest window.
    const CHEAP: Duration = Duration::from_micros(30);
    const SEVERAL: usize = SpinPolicy::MIN_REPLIES;

    fn us(micros: u64) -> Duration {
        Duration::from_micros(micros)
    }

    /// A policy whose window has been opened and grown to the most.
    fn spinning() -> SpinPolicy {
        let mut policy = SpinPolicy::new(MOST);
        policy.parked(SEVERAL, us(20));
        for _ in 0..4 {
            policy.caught(us(25));
        }
        assert_eq!(policy.window(SEVERAL), MOST);
        policy
    }

    #[test]
    fn a_new_policy_parks_at_once() {
        assert_eq!(SpinPolicy::new(MOST).window(SEVERAL), Duration::ZERO);
    }

    #[test]
    fn a_short_park_opens_a_window_and_cheap_catches_grow_it_to_the_most() {
        let mut policy = SpinPolicy::new(MOST);
        policy.parked(SEVERAL, us(20));
        assert_eq!(policy.window(SEVERAL), CHEAP);
        policy.caught(us(25));
        assert_eq!(policy.window(SEVERAL), us(60));
        policy.caught(us(12));
        assert_eq!(policy.window(SEVERAL), MOST);
        policy.caught(us(12));
        assert_eq!(policy.window(SEVERAL), MOST, "never beyond the most");
    }

    #[test]
    fn a_long_park_keeps_the_window_shut() {
        let mut policy = SpinPolicy::new(MOST);
        policy.parked(SEVERAL, us(31));
        policy.parked(SEVERAL, us(500));
        assert_eq!(policy.window(SEVERAL), Duration::ZERO);
    }

    #[test]
    fn late_catches_and_spins_that_parked_halve_the_window_then_shut_it() {
        let mut policy = spinning();
        policy.caught(us(90));
        assert_eq!(policy.window(SEVERAL), us(60), "a catch after 90 µs");
        policy.parked(SEVERAL, us(200));
        assert_eq!(policy.window(SEVERAL), CHEAP, "a spin that parked");
        policy.caught(us(40));
        assert_eq!(policy.window(SEVERAL), Duration::ZERO, "below cheap: none");
        // Shut, a park that outlasts a cheap catch opens nothing.
        policy.parked(SEVERAL, us(45));
        assert_eq!(policy.window(SEVERAL), Duration::ZERO);
    }

    #[test]
    fn a_reply_already_there_says_nothing() {
        let mut policy = spinning();
        policy.caught(SpinPolicy::ALREADY_THERE - us(1));
        assert_eq!(policy.window(SEVERAL), MOST);
        let mut shut = SpinPolicy::new(MOST);
        shut.caught(us(1));
        assert_eq!(shut.window(SEVERAL), Duration::ZERO);
    }

    #[test]
    fn fewer_replies_than_several_never_spin_nor_teach() {
        let mut policy = spinning();
        for awaited in 0..SEVERAL {
            assert_eq!(policy.window(awaited), Duration::ZERO, "{awaited} awaited");
            // Their long parks (an open loop's trickle) leave the window be.
            policy.parked(awaited, us(800));
        }
        assert_eq!(policy.window(SEVERAL), MOST);
        assert_eq!(policy.window(SEVERAL + 10), MOST);
    }

    #[test]
    fn no_most_never_spins() {
        let mut policy = SpinPolicy::new(Duration::ZERO);
        policy.parked(SEVERAL, Duration::ZERO);
        policy.caught(us(20));
        assert_eq!(policy.window(SEVERAL), Duration::ZERO);
    }
}
