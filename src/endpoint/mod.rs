//! An endpoint: a node (data source, compute node or gateway) as the config
//! names it, carried unchanged from the config to the shard's connection pool.
//!
//! `host:port`, `http://host:port` or `https://host:port` (the scheme's port,
//! 80 or 443, when a scheme is written and the port is not). The host stays as
//! written: an IP literal is used as it is, a name is resolved when a
//! connection is opened ([`resolve`]), every time, so a DNS change is followed
//! at the next reconnect. Rows, metrics, logs and errors name the endpoint as
//! written, `host:port` without its scheme ([`Endpoint::name`]).
//!
//! An `https` endpoint carries its [`tls::ClientTls`]: the CAs it is verified
//! against, the name its certificate must carry, and a client certificate for
//! mTLS. Any endpoint may carry an `:authority` override for its calls (a
//! gateway that routes by host name, a server behind an ingress).
//!
//! What a shard holds per endpoint is a [`Connector`] ([`Endpoint::connector`]):
//! its own copy of the name, the host and port to resolve, and its own rustls
//! client configuration, so no TLS state (session tickets) is shared between
//! shards.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::Uri;
use rustls::pki_types::ServerName;

pub mod resolve;
pub mod tls;

pub use tls::ClientTls;

/// How an endpoint is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// HTTP/2 in the clear (h2c, prior knowledge).
    Http,
    /// HTTP/2 over TLS, negotiated with ALPN `h2`.
    Https,
}

impl Scheme {
    /// The URI scheme, which h2 sends as `:scheme`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// An endpoint's host as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IP literal (`127.0.0.1`, `[::1]`): connected to without a lookup.
    Ip(IpAddr),
    /// A name, resolved at every connect.
    Name(Box<str>),
}

/// A node as the config names it: see the module documentation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `host:port` as written, without the scheme: what rows (`compute_node`),
    /// metrics, logs and errors call the node, so an operator finds it in the
    /// config.
    name: Arc<str>,
    /// The host to connect to (resolved at connect when it is a name).
    host: Host,
    /// The TCP port.
    port: u16,
    /// Plaintext or TLS.
    scheme: Scheme,
    /// How TLS is spoken (`https` only): trust, server name, client certificate.
    tls: Option<ClientTls>,
    /// The name its certificate must carry, also sent as SNI when it is a DNS
    /// name: the TLS settings' `server_name`, else the host (`https` only).
    server_name: Option<ServerName<'static>>,
    /// The `:authority` of every call, when the config overrides it; `None`
    /// sends `name`.
    authority: Option<Arc<str>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.name)?;
        if let Some(authority) = &self.authority {
            write!(f, " (authority {authority})")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Endpoint {
    /// `host:port` as written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl From<SocketAddr> for Endpoint {
    /// A plaintext endpoint at an address (tests, the demo, benchmarks).
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint {
            name: addr.to_string().into(),
            host: Host::Ip(addr.ip()),
            port: addr.port(),
            scheme: Scheme::Http,
            tls: None,
            server_name: None,
            authority: None,
        }
    }
}

impl Endpoint {
    /// Reads `host:port`, `http://host:port` or `https://host:port`. The
    /// error says what is wrong with `text` (the config adds where it is).
    /// An `https` endpoint has no TLS settings yet: [`Endpoint::with_tls`]
    /// gives it its class's.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let expected = || format!("expected \"host:port\", found {text:?}");
        let (scheme, rest) = match text.split_once("://") {
            None => (None, text),
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => (Some(Scheme::Http), rest),
                "https" => (Some(Scheme::Https), rest),
                _ => {
                    return Err(format!(
                        "unknown scheme {scheme:?} in {text:?} (expected http:// or https://)"
                    ))
                }
            },
        };
        // A trailing slash is how URLs are often copied; a path is not an endpoint.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') || rest.chars().any(char::is_whitespace) {
            return Err(expected());
        }
        let (host_text, port) = split_host_port(rest);
        let port = match (port, scheme) {
            (Some(port), _) => port.parse::<u16>().map_err(|_| expected())?,
            (None, Some(Scheme::Http)) => 80,
            (None, Some(Scheme::Https)) => 443,
            (None, None) => return Err(expected()),
        };
        // Connecting to port 0 always fails, so every job would.
        if port == 0 {
            return Err(format!("port 0 is not a usable port in {text:?}"));
        }
        let host = parse_host(host_text).ok_or_else(|| {
            if host_text.contains(':') && !host_text.starts_with('[') {
                format!("write an IPv6 address in brackets, like [::1]:9000, in {text:?}")
            } else {
                expected()
            }
        })?;
        Ok(Endpoint {
            name: format!("{host_text}:{port}").into(),
            host,
            port,
            scheme: scheme.unwrap_or(Scheme::Http),
            tls: None,
            server_name: None,
            authority: None,
        })
    }

    /// Whether `text` (as [`Endpoint::parse`] took it) named a scheme.
    pub fn names_scheme(text: &str) -> bool {
        text.contains("://")
    }

    /// The same endpoint spoken to over TLS with `tls`; refused when the
    /// name its certificate must carry (the settings' `server_name`, else the
    /// host) cannot be a TLS server name.
    pub fn with_tls(mut self, tls: ClientTls) -> Result<Endpoint, String> {
        let server_name = match (tls.server_name(), &self.host) {
            (Some(name), _) => name.clone(),
            (None, Host::Ip(ip)) => ServerName::IpAddress((*ip).into()),
            (None, Host::Name(name)) => {
                ServerName::try_from(name.to_string()).map_err(|error| {
                    format!("{name:?} cannot be a TLS server name ({error}): set server_name")
                })?
            }
        };
        self.scheme = Scheme::Https;
        self.tls = Some(tls);
        self.server_name = Some(server_name);
        Ok(self)
    }

    /// The same endpoint with its calls' `:authority` set to `authority`.
    pub fn with_authority(mut self, authority: &str) -> Endpoint {
        self.authority = Some(authority.into());
        self
    }

    /// `host:port` as written: how rows, metrics, logs and errors name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Its TLS settings (`https` endpoints that were given them).
    pub fn tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    /// The `:authority` its calls carry: the override, or `host:port`.
    pub fn authority(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.name)
    }

    /// The URI of a method on this endpoint, as a call sends it:
    /// `<scheme>://<authority><path>`. Built once per pool and method; a
    /// malformed authority (the config checks it) gives an empty URI.
    pub fn uri(&self, path: &str) -> Uri {
        format!("{}://{}{path}", self.scheme.as_str(), self.authority())
            .parse()
            .unwrap_or_default()
    }

    /// How one shard connects to this endpoint. With TLS this builds the
    /// shard's own rustls client configuration.
    pub fn connector(&self) -> Connector {
        let tls = match (&self.tls, &self.server_name) {
            (Some(tls), Some(server_name)) => Some(TlsTarget {
                config: tls.config_for_shard(),
                server_name: server_name.clone(),
            }),
            _ => None,
        };
        Connector {
            name: Arc::from(&*self.name),
            host: self.host.clone(),
            port: self.port,
            tls,
        }
    }
}

/// Splits `host:port` at its last colon outside brackets; `None` when no port
/// is written.
fn split_host_port(text: &str) -> (&str, Option<&str>) {
    if let Some(inside) = text.strip_prefix('[') {
        return match inside.split_once(']') {
            Some((_, "")) => (text, None),
            Some((address, port)) => match port.strip_prefix(':') {
                Some(port) => (&text[..address.len() + 2], Some(port)),
                None => (text, Some("")),
            },
            None => (text, Some("")),
        };
    }
    match text.rsplit_once(':') {
        // `::1:9000` splits too, and is refused by the host check.
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    }
}

/// An IP literal (IPv6 in brackets) or a host name of letters, digits, `-`,
/// `_` and dots.
fn parse_host(text: &str) -> Option<Host> {
    if let Some(inside) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inside
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| Host::Ip(IpAddr::V6(ip)));
    }
    if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    let valid = !text.is_empty()
        && text.len() <= 253
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    valid.then(|| Host::Name(text.into()))
}

/// How one shard reaches one endpoint: made per shard by
/// [`Endpoint::connector`], owned by its pool.
pub struct Connector {
    /// The endpoint's `host:port` as written, the shard's own copy: every
    /// error of a call to it carries one.
    pub name: Arc<str>,
    /// What to resolve (or the address itself).
    pub host: Host,
    /// The TCP port.
    pub port: u16,
    /// TLS to speak after TCP connects; `None` is plaintext.
    pub tls: Option<TlsTarget>,
}

/// TLS toward one endpoint, on one shard.
pub struct TlsTarget {
    /// This shard's rustls client configuration: the class's trust and client
    /// certificate, ALPN `h2`, and session tickets of its own.
    pub config: Arc<rustls::ClientConfig>,
    /// The name sent as SNI (for a DNS name) and checked in the certificate.
    pub server_name: ServerName<'static>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (String, Host, u16, Scheme) {
        let endpoint = Endpoint::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
        (
            endpoint.name().to_string(),
            endpoint.host.clone(),
            endpoint.port,
            endpoint.scheme,
        )
    }

    #[test]
    fn endpoints_parse_with_or_without_a_scheme_and_keep_their_name() {
        let v4 = Host::Ip("127.0.0.1".parse().unwrap());
        assert_eq!(
            parsed("127.0.0.1:9001"),
            ("127.0.0.1:9001".into(), v4.clone(), 9001, Scheme::Http)
        );
        assert_eq!(
            parsed("http://127.0.0.1:9001"),
            ("127.0.0.1:9001".into(), v4, 9001, Scheme::Http)
        );
        assert_eq!(
            parsed("https://Gateway.example.com:8443"),
            (
                "Gateway.example.com:8443".into(),
                Host::Name("Gateway.example.com".into()),
                8443,
                Scheme::Https
            )
        );
        assert_eq!(
            parsed("https://gw.internal").0,
            "gw.internal:443",
            "a scheme brings its port"
        );
        assert_eq!(parsed("http://gw.internal/").0, "gw.internal:80");
        assert_eq!(
            parsed("[::1]:9002"),
            (
                "[::1]:9002".into(),
                Host::Ip("::1".parse().unwrap()),
                9002,
                Scheme::Http
            )
        );
        assert_eq!(parsed("localhost:9000").1, Host::Name("localhost".into()));
    }

    #[test]
    fn bad_endpoints_say_what_is_wrong() {
        let error = |text: &str| Endpoint::parse(text).unwrap_err();
        assert_eq!(
            error("127.0.0.1"),
            "expected \"host:port\", found \"127.0.0.1\""
        );
        assert_eq!(
            error("127.0.0.1:99999"),
            "expected \"host:port\", found \"127.0.0.1:99999\""
        );
        assert_eq!(
            error("127.0.0.1:0"),
            "port 0 is not a usable port in \"127.0.0.1:0\""
        );
        assert_eq!(
            error("ftp://host:21"),
            "unknown scheme \"ftp\" in \"ftp://host:21\" (expected http:// or https://)"
        );
        assert!(
            error("::1:9000").contains("in brackets"),
            "{}",
            error("::1:9000")
        );
        assert!(error("https://host:1/v2").starts_with("expected"));
        assert!(error("bad host:1").starts_with("expected"));
        assert!(error("[::1]9000").starts_with("expected"));
        assert!(error(":9000").starts_with("expected"));
    }

    #[test]
    fn uris_carry_the_scheme_and_the_authority() {
        let endpoint = Endpoint::parse("localhost:9001").unwrap();
        assert_eq!(
            endpoint.uri("/inference.GRPCInferenceService/ModelInfer"),
            "http://localhost:9001/inference.GRPCInferenceService/ModelInfer"
        );
        let endpoint = endpoint.with_authority("models.example.com");
        assert_eq!(endpoint.uri("/x/Y"), "http://models.example.com/x/Y");
        assert_eq!(endpoint.name(), "localhost:9001");
        let from_addr = Endpoint::from(SocketAddr::from(([127, 0, 0, 1], 7)));
        assert_eq!(from_addr.to_string(), "127.0.0.1:7");
        assert_eq!(from_addr, Endpoint::parse("127.0.0.1:7").unwrap());
    }
}
