//! A shard's connections to one node.
//!
//! Every shard has its own [`NodePool`] per node (data source or compute node): up
//! to `connections_per_node` HTTP/2 connections, opened lazily, a new one only when
//! every open one is at the peer's `max_concurrent_streams`. A node that cannot be
//! connected to is backed off (from 50 ms, doubling to 1 s, with jitter so shards
//! do not reconnect in step), so a dead node costs a failed call instead of a
//! connect storm. The replica's probe reconnects when the backoff ends, so a node
//! that comes back is used again at once.
//!
//! A pool is made from an [`Endpoint`]: each connect resolves its host again (so a
//! name that moved is followed), speaks TLS when it asks for it, and every error
//! names it as written. The URIs of the per-job methods are built once, here.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use http::Uri;

use crate::endpoint::{Connector, Endpoint};
use crate::error::ConnectError;
use crate::error::ErrorKind;
use crate::grpc::client::{ClientSettings, Connection, Traffic};
use crate::grpc::methods;
use crate::runtime;

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Whether a pool may open a connection now.
#[derive(Debug, Clone)]
enum ConnectState {
    /// Nothing in progress; a connection may be opened when needed.
    Idle,
    /// A connect is under way; callers wait for it instead of starting their own.
    Connecting,
    /// The last connect failed; calls fail fast with `cause` until `retry_at`.
    BackingOff {
        retry_at: Instant,
        cause: ConnectError,
    },
}

/// One shard's connections to one node. Owned by that shard (`Rc`), never shared.
pub struct NodePool {
    /// The node as the config writes it, and how to connect to it (its host
    /// resolved at every connect, TLS with this shard's own client
    /// configuration).
    connector: Connector,
    /// The endpoint as configured, for URIs of other methods (probes).
    endpoint: Endpoint,
    /// Prebuilt URI of `DataSource/Fetch` on this node, so a call only clones it.
    fetch_uri: Uri,
    /// Prebuilt URI of `ModelInfer` on this node.
    infer_uri: Uri,
    /// Open connections; closed ones are pruned when a call looks for one.
    connections: RefCell<Vec<Rc<Connection>>>,
    /// Upper bound on `connections`, from the tuning file.
    max_connections: usize,
    /// Connect progress, so only one connect runs at a time per node and shard.
    state: RefCell<ConnectState>,
    /// Next backoff after a failed connect.
    backoff: Cell<Duration>,
    /// Bumped whenever a connect ends; waiters compare it to know they can retry.
    generation: Cell<u64>,
    /// Calls waiting for a connect to end.
    waiters: RefCell<Vec<Waker>>,
    /// HTTP/2 and connect settings for new connections.
    settings: Rc<ClientSettings>,
    /// Bytes sent and received over all of this pool's connections, past and present.
    traffic: Rc<Traffic>,
    /// xorshift state for backoff jitter, seeded from the node and shard.
    jitter: Cell<u64>,
}

impl NodePool {
    /// `seed` differs per shard, so shards back off from a node out of step.
    pub fn new(
        endpoint: &Endpoint,
        max_connections: usize,
        settings: Rc<ClientSettings>,
        seed: u64,
    ) -> Rc<NodePool> {
        let connector = endpoint.connector();
        let jitter = (crate::devices::stable_hash(&connector.name) ^ seed) | 1;
        Rc::new(NodePool {
            fetch_uri: endpoint.uri(methods::FETCH),
            infer_uri: endpoint.uri(methods::MODEL_INFER),
            connector,
            endpoint: endpoint.clone(),
            connections: RefCell::new(Vec::new()),
            max_connections: max_connections.max(1),
            state: RefCell::new(ConnectState::Idle),
            backoff: Cell::new(FIRST_BACKOFF),
            generation: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
            settings,
            traffic: Rc::new(Traffic::default()),
            jitter: Cell::new(jitter),
        })
    }

    /// The node as the config writes it (`host:port`): errors, rows and
    /// metrics name it so.
    pub fn node(&self) -> Arc<str> {
        self.connector.name.clone()
    }

    pub fn fetch_uri(&self) -> &Uri {
        &self.fetch_uri
    }

    pub fn infer_uri(&self) -> &Uri {
        &self.infer_uri
    }

    /// The URI of any method on this node (probes; not on the per-job path).
    pub fn uri(&self, path: &str) -> Uri {
        self.endpoint.uri(path)
    }

    /// Open connections right now (for gauges and tests).
    pub fn open_connections(&self) -> usize {
        self.connections
            .borrow()
            .iter()
            .filter(|c| !c.is_closed())
            .count()
    }

    /// gRPC message bytes (sent, received) over this pool's connections so far.
    pub fn traffic(&self) -> (u64, u64) {
        (self.traffic.sent.get(), self.traffic.received.get())
    }

    /// Whether calls to this node currently fail fast because a connect failed.
    pub fn is_backing_off(&self, now: Instant) -> bool {
        match &*self.state.borrow() {
            ConnectState::BackingOff { retry_at, .. } => now < *retry_at,
            _ => false,
        }
    }

    /// When the current backoff ends, if the last connect failed.
    pub fn backoff_ends(&self) -> Option<Instant> {
        match &*self.state.borrow() {
            ConnectState::BackingOff { retry_at, .. } => Some(*retry_at),
            _ => None,
        }
    }

    /// Connects ended so far, ok or not: a probe that read something on one
    /// connection knows a new one came after it when this moved.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Whether at least one connection is open and taking calls.
    pub fn is_connected(&self) -> bool {
        self.connections.borrow().iter().any(|c| !c.is_closed())
    }

    /// Opens a connection now if none is open, whatever the backoff says: the
    /// probe calls this when a backoff ends, so a node that came back is known
    /// to be up before a job has to find out.
    pub async fn reconnect(self: &Rc<Self>) -> Result<(), ConnectError> {
        if self.is_connected() {
            return Ok(());
        }
        if !matches!(*self.state.borrow(), ConnectState::Connecting) {
            *self.state.borrow_mut() = ConnectState::Idle;
        }
        match self.connection().await {
            Ok(_) => Ok(()),
            Err(ErrorKind::Connect { cause, .. }) => Err(cause),
            Err(other) => Err(ConnectError::Handshake(other.to_string())),
        }
    }

    /// A connection to make one call on.
    pub async fn connection(self: &Rc<Self>) -> Result<Rc<Connection>, ErrorKind> {
        loop {
            let (usable, least_loaded, open) = self.survey();
            if let Some(connection) = usable {
                return Ok(connection);
            }
            let state = self.state.borrow().clone();
            match state {
                ConnectState::Connecting => {
                    self.connect_ended(self.generation.get()).await;
                }
                ConnectState::BackingOff { retry_at, cause } if Instant::now() < retry_at => {
                    return least_loaded.ok_or_else(|| ErrorKind::Connect {
                        node: self.node(),
                        cause,
                    });
                }
                _ if open < self.max_connections => {
                    let generation = self.generation.get();
                    self.start_connect();
                    self.connect_ended(generation).await;
                }
                // All connections full and no room for another: h2 queues the
                // stream until one of the busy ones frees up.
                _ => {
                    if let Some(connection) = least_loaded {
                        return Ok(connection);
                    }
                }
            }
        }
    }

    /// Prunes closed connections; returns (least-loaded with a free stream,
    /// least-loaded overall, how many are open).
    fn survey(&self) -> (Option<Rc<Connection>>, Option<Rc<Connection>>, usize) {
        let mut connections = self.connections.borrow_mut();
        connections.retain(|connection| !connection.is_closed());
        let least_loaded = connections.iter().min_by_key(|c| c.in_flight()).cloned();
        let usable = least_loaded
            .as_ref()
            .filter(|c| c.has_stream_capacity())
            .cloned()
            .or_else(|| {
                connections
                    .iter()
                    .find(|c| c.has_stream_capacity())
                    .cloned()
            });
        (usable, least_loaded, connections.len())
    }

    fn start_connect(self: &Rc<Self>) {
        *self.state.borrow_mut() = ConnectState::Connecting;
        let pool = self.clone();
        runtime::spawn(async move {
            let result =
                Connection::open(&pool.connector, &pool.settings, pool.traffic.clone()).await;
            let next_state = match result {
                Ok(connection) => {
                    pool.connections.borrow_mut().push(Rc::new(connection));
                    pool.backoff.set(FIRST_BACKOFF);
                    ConnectState::Idle
                }
                Err(cause) => {
                    let backoff = pool.backoff.get();
                    pool.backoff.set((backoff * 2).min(MAX_BACKOFF));
                    ConnectState::BackingOff {
                        retry_at: Instant::now() + pool.jittered(backoff),
                        cause,
                    }
                }
            };
            *pool.state.borrow_mut() = next_state;
            pool.generation.set(pool.generation.get() + 1);
            for waker in pool.waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        })
        .detach();
    }

    /// `backoff` scaled by a random factor in [0.5, 1.5).
    fn jittered(&self, backoff: Duration) -> Duration {
        let mut x = self.jitter.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.set(x);
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        backoff.mul_f64(0.5 + unit)
    }

    /// Resolves once a connect that was under way at `generation` has ended.
    async fn connect_ended(&self, generation: u64) {
        std::future::poll_fn(|cx| {
            if self.generation.get() != generation {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
