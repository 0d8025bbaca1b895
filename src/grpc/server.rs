//! A gRPC unary server on `h2`, for percore's built-in mock nodes.
//!
//! One accept loop per executor (the listener uses SO_REUSEPORT, so several
//! executors can serve one port); one task per connection drives `h2`; one task per
//! call reads the request, asks the [`Service`] for a [`Reply`] and writes it back.
//!
//! Connection faults live here, because they need the socket rather than a
//! reply: dropping it, GOAWAY, writing bytes that are not HTTP/2 after some calls,
//! or answering the HTTP/2 preface as an HTTP/1.1 server would.
//!
//! With a TLS configuration ([`ServerSettings::tls`]) every connection speaks
//! TLS first (ALPN `h2`; with client CAs, a client certificate is required),
//! then the same HTTP/2 over it.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::coalesce::CoalescingStream;
use super::frame::MessageDecoder;
use super::status::{percent_encode, Code};
use super::tls;
use crate::runtime::{self, Listener, Stream};

/// What a service answers to one call.
#[derive(Debug)]
pub enum Reply {
    /// An encoded response message (without the 5-byte prefix): sent with status OK.
    Message(Bytes),
    /// A non-OK status, sent as a trailers-only response.
    Status { code: Code, message: String },
    /// Send nothing for this long (or until the client gives up), then answer
    /// UNAVAILABLE: simulates a hung node.
    Hang(Duration),
    /// Raw body bytes sent as they are, then OK trailers: lets tests send malformed
    /// frames a well-behaved server never would.
    RawBody(Bytes),
    /// No answer: the stream is reset with RST_STREAM(INTERNAL_ERROR), as a
    /// server that failed mid-call does. The connection stays up.
    Reset,
}

/// A unary gRPC service. `path` is the request's `/package.Service/Method`.
pub trait Service: 'static {
    fn call(self: Rc<Self>, path: &str, message: Bytes) -> impl Future<Output = Reply>;

    /// Whether a call on `path` is a health or readiness probe. Probes are left
    /// out of the per-connection call counts that trigger connection faults, so
    /// "after N calls" means N calls of real work however often a node is probed.
    fn is_probe(&self, path: &str) -> bool {
        let _ = path;
        false
    }

    /// Whether a call with these request headers may be served; the error is
    /// the UNAUTHENTICATED message (it must not repeat what was sent).
    fn authorize(&self, headers: &http::HeaderMap) -> Result<(), String> {
        let _ = headers;
        Ok(())
    }
}

/// HTTP/2 settings a server connection announces, and the connection faults a
/// mock node can inject.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Streams a client may have open on one connection; clients open more
    /// connections past it.
    pub max_concurrent_streams: u32,
    /// Largest request message accepted.
    pub max_message_len: usize,
    /// How many streams reset by the client (before accept), and resets this
    /// server had to send, it tolerates before ending a connection as abusive.
    pub reset_limit: usize,
    /// Name in log lines ("mock-compute"), so an operator knows who closed what.
    pub name: &'static str,
    /// Fault: drop the socket without a word after this many calls on a
    /// connection (calls in flight are cut off, the client's next send fails).
    pub drop_after_calls: Option<u64>,
    /// Fault: send GOAWAY after this many calls on a connection and finish the
    /// calls already taken, as a server that is shutting down or rotating does.
    pub goaway_after_calls: Option<u64>,
    /// Fault: take this many calls on a connection, then, when the next one
    /// arrives, write [`NOT_HTTP2`] onto the socket instead of any frame and
    /// close it: the client sees invalid HTTP/2 (a proxy or a crashed server
    /// answering in its place). Calls still in flight are cut off.
    pub garbage_after_calls: Option<u64>,
    /// Fault: answer every connection's HTTP/2 preface with [`NOT_HTTP2`] and
    /// close it, as a plain HTTP/1.1 server does when a gRPC client is pointed
    /// at its port.
    pub http1_only: bool,
    /// TLS every connection speaks before HTTP/2 (certificate, key, ALPN
    /// `h2`, and the client CAs when a client certificate is required);
    /// `None` serves HTTP/2 in the clear.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_concurrent_streams: 1024,
            max_message_len: 64 << 20,
            reset_limit: 1024,
            name: "grpc server",
            drop_after_calls: None,
            goaway_after_calls: None,
            garbage_after_calls: None,
            http1_only: false,
            tls: None,
        }
    }
}

/// What the connection faults write instead of HTTP/2: what an HTTP/1.1 server
/// answers to the HTTP/2 preface. Read as an HTTP/2 frame header it announces a
/// 4.7 MB frame, which every client rejects as a connection error.
pub const NOT_HTTP2: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// How long a faulty connection waits for the client's first bytes, and then for
/// it to close, before the socket is dropped: enough for a client on loopback or
/// a LAN, short enough that silent clients do not pile up.
const FAULT_LINGER: Duration = Duration::from_secs(1);

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` and serves `service` on them until `stop` completes.
pub async fn serve<S: Service>(
    listener: Listener,
    service: Rc<S>,
    settings: ServerSettings,
    stop: impl Future<Output = ()>,
) {
    let settings = Rc::new(settings);
    let accept_loop = async {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    runtime::spawn(serve_connection(
                        stream,
                        peer,
                        service.clone(),
                        settings.clone(),
                    ))
                    .detach();
                }
                // Out of descriptors or the like: wait a little rather than spin.
                Err(_) => runtime::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    futures_lite::future::or(accept_loop, stop).await;
}

async fn serve_connection<S: Service>(
    stream: Stream,
    peer: std::net::SocketAddr,
    service: Rc<S>,
    settings: Rc<ServerSettings>,
) {
    if settings.http1_only {
        answer_as_http1(stream).await;
        return;
    }
    let Some(config) = settings.tls.clone() else {
        serve_http2(stream, peer, service, settings).await;
        return;
    };
    let deadline = Instant::now() + TLS_HANDSHAKE_TIMEOUT;
    let name = settings.name;
    match runtime::until_deadline(deadline, tls::accept(stream, &config)).await {
        Some(Ok(stream)) => serve_http2(stream, peer, service, settings).await,
        Some(Err((why, stream))) => {
            crate::console::err(format_args!(
                "{name}: TLS handshake with {peer} failed: {why}"
            ));
            // Close as a TLS server should: the alert written, then the
            // client's bytes read until it closes, so no RST overtakes it.
            write_and_close(stream, b"").await;
        }
        None => crate::console::err(format_args!(
            "{name}: TLS handshake with {peer} not done within {} s; closing",
            TLS_HANDSHAKE_TIMEOUT.as_secs()
        )),
    }
}

/// Serves HTTP/2 on a connection, plaintext or TLS.
async fn serve_http2<S: Service, T>(
    stream: T,
    peer: std::net::SocketAddr,
    service: Rc<S>,
    settings: Rc<ServerSettings>,
) where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // The connection task can take the socket back from h2 to inject a fault.
    let socket = Rc::new(RefCell::new(Some(stream)));
    // A server's responses are queued as calls complete, when a count of calls
    // in flight has already dropped: always batch a round's responses.
    let always_batch = Rc::new(Cell::new(usize::MAX));
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        // A load generator cancels every call that passes its deadline. h2 counts
        // streams reset before this server accepted them (past 20 by default it
        // ends the connection with "too_many_resets") and the resets it had to send
        // (past 1024, "excessive load generating behavior"): its rapid-reset
        // protection. A node serving percore under overload would then drop its
        // busiest clients; the mock nodes' peer is our own dispatcher, so they
        // lift both limits.
        .max_pending_accept_reset_streams(settings.reset_limit)
        .max_local_error_reset_streams(Some(settings.reset_limit))
        .handshake::<_, Bytes>(CoalescingStream::new(
            TakeableStream(socket.clone()),
            always_batch,
        ));
    let mut connection = match handshake.await {
        Ok(connection) => connection,
        Err(error) => {
            let name = settings.name;
            crate::console::err(format_args!(
                "{name}: HTTP/2 handshake with {peer} failed: {error}"
            ));
            return;
        }
    };
    // Calls of real work taken on this connection (probes are not counted).
    let mut calls: u64 = 0;
    loop {
        match connection.accept().await {
            Some(Ok((request, respond))) => {
                if !service.is_probe(request.uri().path()) {
                    if settings.garbage_after_calls == Some(calls) {
                        let taken = socket.borrow_mut().take();
                        // h2 no longer has a socket: drop it before it notices.
                        drop(connection);
                        if let Some(stream) = taken {
                            write_and_close(stream, NOT_HTTP2).await;
                        }
                        return;
                    }
                    calls += 1;
                }
                runtime::spawn(serve_call(
                    request,
                    respond,
                    service.clone(),
                    settings.max_message_len,
                ))
                .detach();
                if settings.drop_after_calls == Some(calls) {
                    // Dropping the connection closes the socket under the calls.
                    return;
                }
                if settings.goaway_after_calls == Some(calls) {
                    connection.graceful_shutdown();
                }
            }
            Some(Err(error)) => {
                // Why a connection ends is the first thing an operator asks.
                let name = settings.name;
                crate::console::err(format_args!(
                    "{name}: closing the connection from {peer}: {error}"
                ));
                return;
            }
            None => return,
        }
    }
}

/// The `http1_only` fault: waits for the client's first bytes (its HTTP/2
/// preface), then answers as an HTTP/1.1 server and closes.
async fn answer_as_http1(mut stream: Stream) {
    let mut preface = [0u8; 1024];
    let deadline = Instant::now() + FAULT_LINGER;
    // Whatever came (or nothing, by the deadline), the answer is the same.
    let _ = runtime::until_deadline(deadline, read_some(&mut stream, &mut preface)).await;
    write_and_close(stream, NOT_HTTP2).await;
}

/// Writes `bytes`, shuts the sending side, and reads until the client closes
/// (or [`FAULT_LINGER`] passes). Closing a socket with unread bytes in it sends
/// RST, which can overtake the bytes written and hide them from the client.
async fn write_and_close<T: AsyncRead + AsyncWrite + Unpin>(mut stream: T, bytes: &[u8]) {
    let mut written = 0;
    while written < bytes.len() {
        match poll_fn(|cx| Pin::new(&mut stream).poll_write(cx, &bytes[written..])).await {
            Ok(0) | Err(_) => return,
            Ok(n) => written += n,
        }
    }
    if poll_fn(|cx| Pin::new(&mut stream).poll_shutdown(cx))
        .await
        .is_err()
    {
        return;
    }
    let deadline = Instant::now() + FAULT_LINGER;
    let mut sink = [0u8; 4096];
    while let Some(Ok(n)) =
        runtime::until_deadline(deadline, read_some(&mut stream, &mut sink)).await
    {
        if n == 0 {
            return;
        }
    }
}

/// Reads what is available into `buf`; `Ok(0)` is the end of the stream.
async fn read_some<T: AsyncRead + Unpin>(stream: &mut T, buf: &mut [u8]) -> io::Result<usize> {
    let mut buf = ReadBuf::new(buf);
    poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut buf)).await?;
    Ok(buf.filled().len())
}

/// The socket under an h2 connection, which the connection's task can take
/// back (to write bytes h2 never would); once taken, h2's reads and writes fail
/// as on a broken socket.
struct TakeableStream<T>(
    /// The socket, shared with the connection's task; `None` once it took it.
    Rc<RefCell<Option<T>>>,
);

impl<T> TakeableStream<T> {
    fn with<R>(&self, io: impl FnOnce(Pin<&mut T>) -> Poll<io::Result<R>>) -> Poll<io::Result<R>>
    where
        T: Unpin,
    {
        match self.0.borrow_mut().as_mut() {
            Some(stream) => io(Pin::new(stream)),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TakeableStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|stream| stream.poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TakeableStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|stream| stream.poll_write(cx, data))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|stream| stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|stream| stream.poll_shutdown(cx))
    }
}

async fn serve_call<S: Service>(
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    service: Rc<S>,
    max_message_len: usize,
) {
    let (head, mut body) = request.into_parts();
    if let Err(why) = service.authorize(&head.headers) {
        send_status(&mut respond, Code::UNAUTHENTICATED, &why);
        return;
    }
    let mut decoder = MessageDecoder::new(max_message_len);
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        if let Err(error) = decoder.push(chunk) {
            let code = match error {
                super::frame::FrameError::TooLarge { .. } => Code::RESOURCE_EXHAUSTED,
                _ => Code::INTERNAL,
            };
            send_status(&mut respond, code, &error.to_string());
            return;
        }
    }
    let message = match decoder.finish() {
        Ok(message) => message,
        Err(error) => {
            send_status(&mut respond, Code::INTERNAL, &error.to_string());
            return;
        }
    };
    match service.call(head.uri.path(), message).await {
        Reply::Message(message) => {
            let mut framed = bytes::BytesMut::with_capacity(5 + message.len());
            framed.extend_from_slice(&[0]);
            framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
            framed.extend_from_slice(&message);
            send_body(&mut respond, framed.freeze());
        }
        Reply::RawBody(body) => send_body(&mut respond, body),
        Reply::Status { code, message } => send_status(&mut respond, code, &message),
        Reply::Reset => respond.send_reset(h2::Reason::INTERNAL_ERROR),
        Reply::Hang(duration) => {
            let client_gave_up = std::future::poll_fn(|cx| respond.poll_reset(cx));
            let hang = async {
                runtime::sleep(duration).await;
                Ok(h2::Reason::NO_ERROR)
            };
            if futures_lite::future::or(hang, client_gave_up).await.is_ok() {
                send_status(&mut respond, Code::UNAVAILABLE, "hung node woke up");
            }
        }
    }
}

fn grpc_response(headers: HeaderMap) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

fn send_body(respond: &mut SendResponse<Bytes>, body: Bytes) {
    let Ok(mut stream) = respond.send_response(grpc_response(HeaderMap::new()), false) else {
        return;
    };
    // Mock replies are small next to the 1 MiB windows both sides announce; h2
    // buffers whatever exceeds the current window and sends it as WINDOW_UPDATEs arrive.
    if stream.send_data(body, false).is_err() {
        return;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = stream.send_trailers(trailers);
}

fn send_status(respond: &mut SendResponse<Bytes>, code: Code, message: &str) {
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", HeaderValue::from(code.0));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    let _ = respond.send_response(grpc_response(headers), true);
}
