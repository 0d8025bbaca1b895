//! A gRPC unary client on one HTTP/2 connection.
//!
//! [`Connection`] owns one `h2` client connection to one node, driven by a task on
//! the shard that opened it; nothing about it is shared with another shard. A call
//! is: open a stream with the gRPC request headers, send the framed message within
//! the stream's flow-control capacity, read the response headers, body and
//! trailers, and turn everything that can go wrong into an [`ErrorKind`].

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use prost::Message;

use super::coalesce::CoalescingStream;
use super::frame::{self, FrameError, MessageDecoder};
use super::status::{read_status, Code, StatusError};
use super::tls::{self, Watch, Watched};
use crate::endpoint::{resolve, Connector};
use crate::error::{ConnectError, ErrorKind};
use crate::runtime;

/// Streams cancelled by a call's deadline that a connection remembers, so the
/// node's frames still in flight for them are dropped quietly.
const RESET_STREAMS_REMEMBERED: usize = 4096;

/// HTTP/2 settings a client connection asks for.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Time allowed for TCP connect plus the HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// Socket options, HTTP/2 windows, frame size and stream cap: host tuning
    /// (the tuning file's `[socket]` and `[http2]`). The default is the current
    /// executor's [`runtime::net_tuning`], so settings made on a shard carry
    /// that shard's tuning.
    pub net: runtime::NetTuning,
    /// How often an HTTP/2 PING checks that the peer is still there; `None` sends
    /// none. A dead peer (host gone, partition) otherwise shows only when each
    /// call's deadline passes.
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed and its
    /// calls fail as lost.
    pub keepalive_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(1),
            net: runtime::net_tuning(),
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

/// gRPC message bytes moved over a node's connections, for the metrics.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes of framed request messages written.
    pub sent: Cell<u64>,
    /// Bytes of response DATA received.
    pub received: Cell<u64>,
}

/// One HTTP/2 connection to one node, owned by one shard.
pub struct Connection {
    /// h2's handle for opening streams; cloned per call, as `ready()` consumes it.
    send: SendRequest<Bytes>,
    /// The node as the config writes it (`host:port`), for error messages.
    node: Arc<str>,
    /// Calls open on this connection, so the pool can pick the least loaded one and
    /// open another connection when the peer's stream limit is reached; shared with
    /// the write coalescing, which batches only when there are several.
    in_flight: Rc<Cell<usize>>,
    /// Set by the connection's driver task when the connection ends, and by a
    /// call that found it unable to take new streams (the peer sent GOAWAY, the
    /// socket broke): the pool then opens a fresh one instead of reusing it.
    closed: Rc<Cell<bool>>,
    /// Byte counters of the node's pool, outliving this connection.
    traffic: Rc<Traffic>,
    /// Our own cap on streams open at once, below the peer's
    /// `max_concurrent_streams` (the tuning file's `max_streams_per_connection`).
    max_streams: Option<usize>,
    /// The last `grpc-timeout` value sent and its whole milliseconds: calls of
    /// one class have one deadline, so most calls send the same value, made
    /// once instead of formatted per call.
    last_timeout: RefCell<(u64, HeaderValue)>,
    /// Ends the driver task, and with it the connection, when sent to (or when
    /// every sender is gone); held here so the driver lives as long as this.
    _kill: flume::Sender<()>,
}

impl Connection {
    /// Resolves the endpoint, connects (to each of its addresses in turn
    /// until one answers), speaks TLS if the endpoint asks for it, and performs
    /// the HTTP/2 handshake, all within the connect timeout; the connection is
    /// then driven by a task on the current executor until it closes, and
    /// pinged every `keepalive_interval`.
    pub async fn open(
        target: &Connector,
        settings: &ClientSettings,
        traffic: Rc<Traffic>,
    ) -> Result<Connection, ConnectError> {
        let deadline = Instant::now() + settings.connect_timeout;
        let timed_out = || ConnectError::TimedOut(settings.connect_timeout);
        let addresses =
            runtime::until_deadline(deadline, resolve::resolve(&target.host, target.port))
                .await
                .ok_or_else(timed_out)?
                .map_err(ConnectError::Resolve)?;
        let stream = connect_any(&addresses, deadline, settings).await?;
        // What the stream saw, should the HTTP/2 handshake fail: a TLS record
        // from a peer reached in the clear, a TLS alert after the handshake.
        let watch = Rc::new(Watch::default());
        let opened = match &target.tls {
            None => {
                let stream = Watched::new(stream, watch.clone());
                Connection::handshake(stream, target, deadline, settings, traffic).await
            }
            Some(tls_target) => {
                let stream = runtime::until_deadline(deadline, tls::connect(stream, tls_target))
                    .await
                    .ok_or_else(timed_out)?
                    .map_err(ConnectError::Tls)?;
                let stream = Watched::new(stream, watch.clone());
                Connection::handshake(stream, target, deadline, settings, traffic).await
            }
        };
        match opened {
            Err(ConnectError::Handshake(detail)) => {
                if let Some(tls_error) = watch.tls_error() {
                    return Err(ConnectError::Tls(tls_error));
                }
                if target.tls.is_none() && watch.peer_answered_in_tls() {
                    return Err(ConnectError::Handshake(
                        "it answered in TLS: write its endpoint as https://host:port, \
                         or give its class a TLS table"
                            .to_string(),
                    ));
                }
                Err(ConnectError::Handshake(detail))
            }
            other => other,
        }
    }

    /// The HTTP/2 handshake on a connected `stream` (plaintext or TLS),
    /// with the write coalescing between h2 and it.
    async fn handshake<S>(
        stream: S,
        target: &Connector,
        deadline: Instant,
        settings: &ClientSettings,
        traffic: Rc<Traffic>,
    ) -> Result<Connection, ConnectError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let timed_out = || ConnectError::TimedOut(settings.connect_timeout);
        let node = target.name.clone();
        let in_flight = Rc::new(Cell::new(0));
        let tuning = settings.net;
        let handshake = h2::client::Builder::new()
            .initial_window_size(tuning.stream_window)
            .initial_connection_window_size(tuning.connection_window)
            .max_frame_size(tuning.max_frame_size)
            .enable_push(false)
            // Calls past their deadline are cancelled (RST_STREAM), thousands a
            // second under overload. h2 remembers only 10 reset streams by
            // default; the node's late frames for the others then make h2 reset
            // them again itself, and past 1024 such resets it ends the connection
            // with "too_many_internal_resets". Remember enough, and do not count
            // the consequences of our own cancels against the node.
            .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
            .max_local_error_reset_streams(None)
            .handshake::<_, Bytes>(CoalescingStream::new(stream, in_flight.clone()));
        let (send, mut connection) = runtime::until_deadline(deadline, handshake)
            .await
            .ok_or_else(timed_out)?
            .map_err(|error| handshake_failed(&error))?;
        let ping_pong = connection.ping_pong();
        let closed = Rc::new(Cell::new(false));
        let closed_by_driver = closed.clone();
        // Why the connection ended, when h2 says: a ping only learns that it
        // did (a broken pipe), the driver learns why (a TLS alert, bad frames).
        let ended_with = Rc::new(RefCell::new(None::<h2::Error>));
        let ended_with_by_driver = ended_with.clone();
        let (kill, killed) = flume::bounded::<()>(1);
        runtime::spawn(async move {
            // The error, if any, reaches callers through their streams. Dropping
            // the connection (when killed) fails every open stream.
            let run = async {
                if let Err(error) = connection.await {
                    *ended_with_by_driver.borrow_mut() = Some(error);
                }
            };
            let kill_signal = async {
                let _ = killed.recv_async().await;
            };
            futures_lite::future::or(run, kill_signal).await;
            closed_by_driver.set(true);
        })
        .detach();
        // One PING round trip: the peer's SETTINGS come before its PONG, so after
        // it `max_concurrent_streams` is the peer's real limit, not h2's unbounded
        // initial guess, and the pool knows when to open another connection. A
        // peer that is not an HTTP/2 server fails here, on the first frame it
        // sends back.
        if let Some(mut ping_pong) = ping_pong {
            let answered = runtime::until_deadline(deadline, ping_pong.ping(h2::Ping::opaque()))
                .await
                .ok_or_else(timed_out)?;
            if let Err(error) = answered {
                // Let the driver record why, if it has not yet.
                futures_lite::future::yield_now().await;
                let cause = ended_with.borrow_mut().take();
                return Err(handshake_failed(cause.as_ref().unwrap_or(&error)));
            }
            if let Some(interval) = settings.keepalive_interval {
                runtime::spawn(keepalive(
                    ping_pong,
                    interval,
                    settings.keepalive_timeout,
                    closed.clone(),
                    kill.clone(),
                    node.clone(),
                ))
                .detach();
            }
        }
        Ok(Connection {
            send,
            node,
            in_flight,
            closed,
            traffic,
            max_streams: tuning.max_streams_per_connection,
            last_timeout: RefCell::new((0, HeaderValue::from_static("0m"))),
            _kill: kill,
        })
    }

    /// The node as the config writes it.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Whether another call fits under the peer's `max_concurrent_streams` and
    /// under our own cap, when the tuning file sets one.
    pub fn has_stream_capacity(&self) -> bool {
        let peer = self.send.current_max_send_streams();
        let limit = self.max_streams.map_or(peer, |ours| ours.min(peer));
        self.in_flight.get() < limit
    }

    /// Makes one unary call. `uri` is `http://<authority>/<package.Service>/<Method>`,
    /// built once per node and method; `deadline` becomes `grpc-timeout`.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        uri: &Uri,
        request: &Req,
        deadline: Instant,
        max_message_len: usize,
    ) -> Result<Resp, ErrorKind> {
        self.unary_with(uri, request, deadline, max_message_len, &HeaderMap::new())
            .await
    }

    /// [`Connection::unary`] with `metadata` (a class's credentials and other
    /// headers, marked sensitive) added to the request's headers.
    pub async fn unary_with<Req: Message, Resp: Message + Default>(
        &self,
        uri: &Uri,
        request: &Req,
        deadline: Instant,
        max_message_len: usize,
        metadata: &HeaderMap,
    ) -> Result<Resp, ErrorKind> {
        let _in_flight = InFlight::enter(&self.in_flight);
        let message = self
            .call(
                uri,
                frame::encode(request),
                deadline,
                max_message_len,
                metadata,
            )
            .await?;
        Resp::decode(message).map_err(|error| ErrorKind::Decode(error.to_string().into()))
    }

    async fn call(
        &self,
        uri: &Uri,
        body: Bytes,
        deadline: Instant,
        max_message_len: usize,
        metadata: &HeaderMap,
    ) -> Result<Bytes, ErrorKind> {
        let lost = |error: h2::Error| self.lost(error);
        let not_sent = |error: h2::Error| self.not_sent(error);
        let traffic = &self.traffic;
        traffic.sent.set(traffic.sent.get() + body.len() as u64);
        let mut send = self.send.clone().ready().await.map_err(not_sent)?;
        let timeout = self.timeout_header(deadline);
        let (response, mut stream) = send
            .send_request(grpc_request(uri, timeout, metadata), false)
            .map_err(not_sent)?;
        // The whole message goes to h2 in the same executor round as the
        // HEADERS frame, so both leave in one write: waiting for capacity
        // first would let the connection task flush HEADERS alone and cost a
        // second `send` (and a second wake-up of the node) per call. h2 keeps
        // the `Bytes` (no copy) and sends it as the peer's window allows; the
        // message is in memory already, so nothing more is buffered.
        stream.send_data(body, true).map_err(lost)?;

        let response = response.await.map_err(lost)?;
        let (head, mut body) = response.into_parts();
        if head.status != StatusCode::OK {
            return Err(self.broken(format!("HTTP status {}", head.status)));
        }
        // A trailers-only response carries grpc-status in the headers and no body.
        match read_status(&head.headers) {
            Ok(status) if status.code != Code::OK => return Err(status_error(status)),
            Ok(_) => return Err(ErrorKind::Protocol("OK status without a message".into())),
            Err(StatusError::Malformed) => return Err(malformed_status()),
            Err(StatusError::Missing) => check_content_type(&head.headers)?,
        }

        let mut decoder = MessageDecoder::new(max_message_len);
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(lost)?;
            // Give the window back at once so the peer never stalls on us.
            let _ = body.flow_control().release_capacity(chunk.len());
            traffic
                .received
                .set(traffic.received.get() + chunk.len() as u64);
            decoder
                .push(chunk)
                .map_err(|error| self.frame_error(error))?;
        }
        let trailers = body.trailers().await.map_err(lost)?;
        match trailers.as_ref().map(read_status) {
            Some(Ok(status)) if status.code != Code::OK => return Err(status_error(status)),
            Some(Ok(_)) => {}
            Some(Err(StatusError::Malformed)) => return Err(malformed_status()),
            Some(Err(StatusError::Missing)) | None => {
                // The body may explain why (a cut-off frame); say that first.
                decoder.finish().map_err(|error| self.frame_error(error))?;
                return Err(self.broken("response ended without grpc-status".into()));
            }
        }
        decoder.finish().map_err(|error| self.frame_error(error))
    }

    /// The `grpc-timeout` header for a call ending at `deadline`, in whole
    /// milliseconds, rounded down (the node gives up no later than we do).
    /// Millisecond values repeat from call to call, so HPACK's table keeps
    /// them: microseconds made every call's value new, inserted and evicted
    /// one more entry of the connection's table each time.
    fn timeout_header(&self, deadline: Instant) -> HeaderValue {
        let millis = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(MAX_TIMEOUT_MS as u128) as u64;
        let mut last = self.last_timeout.borrow_mut();
        if last.0 != millis {
            *last = (millis, grpc_timeout_ms(millis));
        }
        last.1.clone()
    }

    /// The node broke the gRPC framing on a stream. The connection itself may
    /// still be sound, but a node that does this cannot be trusted with more
    /// calls on it: it takes no new ones, and the pool opens a fresh connection.
    fn broken(&self, detail: String) -> ErrorKind {
        self.closed.set(true);
        ErrorKind::Protocol(detail.into())
    }

    /// A framing error: too large a message (the node is fine, the reply is too
    /// big) or broken framing (see [`Connection::broken`]).
    fn frame_error(&self, error: FrameError) -> ErrorKind {
        match error {
            FrameError::TooLarge { len, max } => ErrorKind::MessageTooLarge { len, max },
            other => self.broken(other.to_string()),
        }
    }

    /// A call failed on its stream. A stream the peer refused (REFUSED_STREAM,
    /// or cut off by its GOAWAY) was not processed and may be sent again, even to
    /// this node; any other break is a lost connection. Either way a connection
    /// that broke or is going away takes no new calls.
    fn lost(&self, error: h2::Error) -> ErrorKind {
        if error.is_io() || error.is_go_away() {
            self.closed.set(true);
        }
        let refused = error.reason() == Some(h2::Reason::REFUSED_STREAM)
            || (error.is_go_away() && error.is_remote());
        if refused {
            return ErrorKind::Refused {
                node: self.node.clone(),
                detail: error.to_string().into(),
            };
        }
        ErrorKind::ConnectionLost {
            node: self.node.clone(),
            detail: error.to_string().into(),
        }
    }

    /// The connection could not open a stream for the call (it is closing, or
    /// broke): nothing was sent, and the connection takes no new calls.
    fn not_sent(&self, error: h2::Error) -> ErrorKind {
        self.closed.set(true);
        ErrorKind::Refused {
            node: self.node.clone(),
            detail: error.to_string().into(),
        }
    }
}

/// Connects to the first of `addresses` that answers, within `deadline`; the
/// error is the last address's.
async fn connect_any(
    addresses: &[SocketAddr],
    deadline: Instant,
    settings: &ClientSettings,
) -> Result<runtime::Stream, ConnectError> {
    let timed_out = || ConnectError::TimedOut(settings.connect_timeout);
    let mut last = ConnectError::Tcp(std::io::ErrorKind::AddrNotAvailable);
    for &address in addresses {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        let connected =
            runtime::until_deadline(deadline, runtime::connect(address, left, &settings.net))
                .await
                .ok_or_else(timed_out)?;
        match connected {
            Ok(stream) => return Ok(stream),
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return Err(timed_out()),
            Err(error) => last = ConnectError::Tcp(error.kind()),
        }
    }
    Err(last)
}

/// A failed HTTP/2 handshake: a peer that does not speak HTTP/2 (or broke
/// the connection under it; [`Connection::open`] puts a TLS cause first).
fn handshake_failed(error: &h2::Error) -> ConnectError {
    ConnectError::Handshake(format!("h2 handshake: {error}"))
}

/// Pings the peer every `interval` while the connection is open; a PING not
/// answered within `timeout` closes the connection, which fails its calls.
async fn keepalive(
    mut ping_pong: h2::PingPong,
    interval: Duration,
    timeout: Duration,
    closed: Rc<Cell<bool>>,
    kill: flume::Sender<()>,
    node: Arc<str>,
) {
    loop {
        runtime::sleep(interval).await;
        if closed.get() {
            return;
        }
        let answered =
            runtime::until_deadline(Instant::now() + timeout, ping_pong.ping(h2::Ping::opaque()))
                .await;
        match answered {
            Some(Ok(_)) => {}
            // The connection ended on its own; the driver has seen it.
            Some(Err(_)) => return,
            None => {
                crate::console::err(format_args!(
                    "percore: {node} did not answer a keepalive PING within {} ms; \
                     closing the connection",
                    timeout.as_millis()
                ));
                closed.set(true);
                let _ = kill.try_send(());
                return;
            }
        }
    }
}

/// Counts a call as in flight until it ends or is dropped by a deadline: on
/// its connection, and on the executor, which spins before parking while
/// replies are awaited ([`runtime::expect_replies`]).
struct InFlight<'a>(&'a Cell<usize>);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a Cell<usize>) -> InFlight<'a> {
        counter.set(counter.get() + 1);
        runtime::expect_replies(1);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
        runtime::expect_replies(-1);
    }
}

fn grpc_request(uri: &Uri, timeout: HeaderValue, metadata: &HeaderMap) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.reserve(3 + metadata.len());
    // `append`: the names are not there yet, so no lookup for one to replace.
    headers.append(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.append(TE, HeaderValue::from_static("trailers"));
    headers.append(GRPC_TIMEOUT.clone(), timeout);
    for (name, value) in metadata {
        headers.insert(name.clone(), value.clone());
    }
    request
}

/// `grpc-timeout`, made once.
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The largest timeout gRPC can say in milliseconds: at most 8 digits.
const MAX_TIMEOUT_MS: u64 = 99_999_999;

/// Formats a timeout of whole milliseconds as gRPC wants it: at most 8
/// digits and the unit `m`.
fn grpc_timeout_ms(millis: u64) -> HeaderValue {
    let text = format!("{}m", millis.min(MAX_TIMEOUT_MS));
    // Digits and a unit letter are always a valid header value.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("99999999m"))
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ErrorKind> {
    let content_type = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    match content_type {
        Some(value) if value.starts_with(b"application/grpc") => Ok(()),
        Some(value) => Err(ErrorKind::Protocol(
            format!(
                "content-type {:?} is not application/grpc",
                String::from_utf8_lossy(value)
            )
            .into(),
        )),
        None => Err(ErrorKind::Protocol("response has no content-type".into())),
    }
}

fn status_error(status: super::status::Status) -> ErrorKind {
    ErrorKind::Status {
        code: status.code,
        message: status.message.into(),
    }
}

fn malformed_status() -> ErrorKind {
    ErrorKind::Protocol("malformed grpc-status".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_uses_at_most_eight_digits() {
        assert_eq!(grpc_timeout_ms(1500), "1500m");
        assert_eq!(grpc_timeout_ms(100_000), "100000m");
        assert_eq!(grpc_timeout_ms(10_000_000_000), "99999999m");
        assert_eq!(grpc_timeout_ms(0), "0m");
    }
}
