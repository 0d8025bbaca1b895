//! gRPC over HTTP/2, written directly on `h2` (no tonic, no tokio runtime).
//!
//! - [`frame`]: the 5-byte length-prefixed message framing.
//! - [`status`]: status codes and the `grpc-status`/`grpc-message` trailers.
//! - [`methods`]: the request paths percore calls and the mocks serve.
//! - [`client`]: one unary call on one shard-owned connection.
//! - [`server`]: the unary server the built-in mock nodes run on.
//! - [`coalesce`]: gathers a scheduler round's HTTP/2 writes into one `send`.
//! - [`tls`]: TLS under the coalescing (client handshake with ALPN `h2`, the
//!   mocks' accept), and TLS failures in words.

pub mod client;
pub mod coalesce;
pub mod frame;
pub mod methods;
pub mod server;
pub mod status;
pub mod tls;
