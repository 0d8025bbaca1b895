//! TLS on the runtime's stream: the client's handshake toward a node, the
//! mock nodes' accept, and failures put in words.
//!
//! tokio-rustls drives rustls over any tokio `AsyncRead`/`AsyncWrite` and
//! needs no tokio runtime, so it runs on a shard like the rest of a
//! connection. The layers of a TLS connection, top to bottom: h2 →
//! [`CoalescingStream`](super::coalesce::CoalescingStream) → TLS → TCP. The
//! coalescing sits above TLS, so the frames of one executor round become one
//! write of plaintext, sealed into as few TLS records as fit, sent in one
//! `send`.
//!
//! gRPC over TLS is HTTP/2 chosen by ALPN: a server that does not choose `h2`
//! is refused at connect with a reason, not discovered later as a broken
//! HTTP/2 handshake.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::{AlertDescription, CertificateError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::endpoint::tls::ALPN_H2;
use crate::endpoint::TlsTarget;
use crate::runtime::Stream;

/// A client connection's stream over TLS.
pub type ClientStream = tokio_rustls::client::TlsStream<Stream>;

/// A server connection's stream over TLS (the mock nodes').
pub type ServerStream = tokio_rustls::server::TlsStream<Stream>;

/// Performs the client handshake on a connected `stream` toward `target`:
/// the server's certificate chains to the trusted CAs and names the server
/// name, the server chose `h2` by ALPN. The error says why not, in words.
pub async fn connect(stream: Stream, target: &TlsTarget) -> Result<ClientStream, String> {
    let connector = tokio_rustls::TlsConnector::from(target.config.clone());
    let tls = connector
        .connect(target.server_name.clone(), stream)
        .await
        .map_err(|error| explain_io(&error, Side::Client))?;
    check_alpn(tls.get_ref().1.alpn_protocol())?;
    Ok(tls)
}

/// Whether the protocol a server chose by ALPN is HTTP/2.
fn check_alpn(chosen: Option<&[u8]>) -> Result<(), String> {
    match chosen {
        Some(protocol) if protocol == ALPN_H2 => Ok(()),
        Some(other) => Err(format!(
            "the server chose {:?} by ALPN, not h2: gRPC needs HTTP/2",
            String::from_utf8_lossy(other)
        )),
        None => Err(
            "the server did not choose HTTP/2 by ALPN (it chose nothing): gRPC over \
             TLS needs ALPN h2, which this server does not offer"
                .to_string(),
        ),
    }
}

/// Performs the server handshake on an accepted `stream` (the mock nodes).
/// On failure the socket comes back with the reason: the alert rustls wrote
/// reaches the client only if the socket is not closed under bytes it has
/// not read (a close then sends RST, which can overtake the alert).
pub async fn accept(
    stream: Stream,
    config: &Arc<rustls::ServerConfig>,
) -> Result<ServerStream, (String, Stream)> {
    tokio_rustls::TlsAcceptor::from(config.clone())
        .accept(stream)
        .into_fallible()
        .await
        .map_err(|(error, stream)| (explain_io(&error, Side::Server), stream))
}

/// Which end of a handshake is explaining its failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// The rustls error inside an I/O error, if there is one.
pub fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// An I/O error of a client's TLS connection in words, if it is a TLS error:
/// a failure h2 reports after the handshake (the server refusing the client
/// certificate shows only on the first read, with TLS 1.3).
pub fn explain_client_error(error: &io::Error) -> Option<String> {
    rustls_error(error).map(|tls| explain(tls, Side::Client))
}

fn explain_io(error: &io::Error, side: Side) -> String {
    if let Some(tls) = rustls_error(error) {
        return explain(tls, side);
    }
    match (error.kind(), side) {
        (io::ErrorKind::UnexpectedEof, Side::Client) => {
            "the peer closed the connection during the TLS handshake (a plaintext port? \
             then write its endpoint as http://host:port)"
                .to_string()
        }
        (io::ErrorKind::UnexpectedEof, Side::Server) => {
            "the client closed the connection during the TLS handshake".to_string()
        }
        _ => error.to_string(),
    }
}

/// rustls's reason, then what it most likely means for an operator.
fn explain(error: &rustls::Error, side: Side) -> String {
    let hint = match (error, side) {
        (rustls::Error::InvalidCertificate(cause), Side::Client) => match cause {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Some("the server's certificate is not signed by a CA this class trusts: check ca_file")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Some("the server's certificate does not name this host: set server_name to a name it carries")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                Some("the server's certificate has expired")
            }
            _ => None,
        },
        (rustls::Error::AlertReceived(AlertDescription::CertificateRequired), Side::Client) => {
            Some("the server requires a client certificate: set client_cert and client_key")
        }
        (
            rustls::Error::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::AccessDenied,
            ),
            Side::Client,
        ) => Some("the server refused this client's certificate"),
        (
            rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol)
            | rustls::Error::NoApplicationProtocol,
            Side::Client,
        ) => Some("the server does not offer HTTP/2 (ALPN h2) over TLS"),
        (
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. },
            Side::Client,
        ) => Some(
            "the peer does not speak TLS: a plaintext port? then write its endpoint as http://host:port",
        ),
        (rustls::Error::InvalidMessage(_), Side::Server) => {
            Some("the client does not speak TLS (a plaintext client on a TLS port)")
        }
        (rustls::Error::NoCertificatesPresented, Side::Server) => {
            Some("the client sent no certificate, and this server requires one")
        }
        _ => None,
    };
    match hint {
        Some(hint) => format!("{error} ({hint})"),
        None => error.to_string(),
    }
}

/// What a connection's stream saw that explains a failed HTTP/2 handshake:
/// the peer's first bytes (a TLS record on a plaintext connection means an
/// `https` port reached without TLS) and the TLS error that broke it (h2
/// keeps only an I/O error's text, losing the rustls error inside).
#[derive(Debug, Default)]
pub struct Watch {
    /// The first bytes read from the peer.
    first: Cell<[u8; 3]>,
    /// The TLS failure of a read or write, in words.
    tls_error: RefCell<Option<String>>,
}

impl Watch {
    /// Whether the peer's first bytes were a TLS record.
    pub fn peer_answered_in_tls(&self) -> bool {
        looks_like_tls(self.first.get())
    }

    /// The TLS failure a read or write met, if any.
    pub fn tls_error(&self) -> Option<String> {
        self.tls_error.borrow().clone()
    }
}

/// A stream that tells its [`Watch`] what it saw. Reads and writes pass
/// through; the cost is a counter check per read and nothing per write,
/// except on failure.
pub struct Watched<S> {
    /// The stream below (TCP, or TLS over it).
    inner: S,
    /// Shared with whoever explains a failed handshake.
    watch: Rc<Watch>,
    /// How many of the first bytes are recorded (3 when done).
    count: usize,
}

impl<S> Watched<S> {
    pub fn new(inner: S, watch: Rc<Watch>) -> Watched<S> {
        Watched {
            inner,
            watch,
            count: 0,
        }
    }

    fn saw<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(error)) = &result {
            if let Some(explained) = explain_client_error(error) {
                *self.watch.tls_error.borrow_mut() = Some(explained);
            }
        }
        result
    }
}

/// Whether a peer's first bytes are a TLS record (an alert or a handshake
/// message of TLS 1.0 to 1.3): what a TLS server answers to a plaintext
/// client.
pub fn looks_like_tls(first: [u8; 3]) -> bool {
    (0x15..=0x16).contains(&first[0]) && first[1] == 0x03 && first[2] <= 0x04
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.count < 3 {
            let mut first = self.watch.first.get();
            for &byte in buf.filled()[before..].iter().take(3 - self.count) {
                first[self.count] = byte;
                self.count += 1;
            }
            self.watch.first.set(first);
        }
        self.saw(result)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        self.saw(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.saw(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.saw(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_must_be_h2() {
        assert_eq!(check_alpn(Some(b"h2")), Ok(()));
        let other = check_alpn(Some(b"http/1.1")).unwrap_err();
        assert!(other.contains("\"http/1.1\""), "{other}");
        let none = check_alpn(None).unwrap_err();
        assert!(none.contains("needs ALPN h2"), "{none}");
    }

    #[test]
    fn failures_keep_rustls_words_and_add_what_they_mean() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            explain(&unknown, Side::Client),
            "invalid peer certificate: UnknownIssuer (the server's certificate is not signed \
             by a CA this class trusts: check ca_file)"
        );
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(explain(&required, Side::Client).starts_with(
            "received fatal alert: CertificateRequired (the server requires a client certificate"
        ));
        let io = io::Error::new(io::ErrorKind::InvalidData, required);
        assert!(explain_client_error(&io).is_some());
        assert_eq!(explain_client_error(&io::Error::other("x")), None);
    }

    #[test]
    fn tls_records_are_recognised_by_their_first_bytes() {
        assert!(looks_like_tls([0x15, 0x03, 0x03]));
        assert!(looks_like_tls([0x16, 0x03, 0x01]));
        assert!(!looks_like_tls([0x00, 0x00, 0x12])); // an HTTP/2 SETTINGS frame header
        assert!(!looks_like_tls(*b"HTT"));
    }
}
