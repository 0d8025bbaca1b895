//! TLS settings of endpoints, read when the config is loaded: which CAs a
//! server's certificate must chain to (a PEM file, or the system's store),
//! the name it must carry, and a client certificate and key for mTLS. Also
//! the mock nodes' server side (certificate, key, the CAs a client
//! certificate must chain to), from the same PEM readers.
//!
//! rustls with the `ring` provider (nothing to build against OpenSSL), passed
//! to every builder, never installed process-wide. Protocol versions are
//! rustls's safe defaults (TLS 1.2 and 1.3); ALPN is `h2` on both sides, as
//! gRPC over TLS requires.
//!
//! Files are read once per load of the config (at start and at each reload):
//! a reload that finds other bytes in them gives the class new TLS settings,
//! so its pools, and their connections, are made again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The ALPN protocol gRPC over TLS speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// TLS sessions a shard remembers per endpoint, to resume on reconnect.
const SESSIONS_PER_SHARD: usize = 32;

/// Where the trusted CAs of a [`ClientTls`] come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trust {
    /// A PEM file of CA certificates (`ca_file`).
    File {
        /// The file, for descriptions.
        path: PathBuf,
        /// Its bytes as read: two loads of the same bytes are the same trust.
        pem: Arc<[u8]>,
    },
    /// The system's store (`/etc/ssl/certs`, `SSL_CERT_FILE`, …), read at load.
    System,
}

/// A client certificate chain and its key, for mTLS.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Identity {
    /// `client_cert`, for messages.
    cert_path: PathBuf,
    /// `client_key`, for messages.
    key_path: PathBuf,
    /// Both files' bytes as read: two loads with the same bytes are the same
    /// settings (a reload keeps the connections).
    pem: Arc<[u8]>,
}

/// How TLS is spoken to the endpoints of one class and role. Cheap to clone;
/// two settings are equal when they were read from the same bytes.
#[derive(Clone)]
pub struct ClientTls {
    /// The CAs a server's certificate must chain to.
    trust: Trust,
    /// The client certificate, for a server that asks for one.
    identity: Option<Identity>,
    /// The name every server certificate must carry (and SNI), instead of
    /// each endpoint's host.
    server_name: Option<ServerName<'static>>,
    /// The validated configuration: trust, client certificate, ALPN `h2`.
    /// Each shard gets its own copy ([`ClientTls::config_for_shard`]).
    config: Arc<ClientConfig>,
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        self.trust == other.trust
            && self.identity == other.identity
            && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}

impl std::hash::Hash for ClientTls {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.trust.hash(state);
        self.identity.hash(state);
        self.server_name.hash(state);
    }
}

impl std::fmt::Debug for ClientTls {
    /// Paths and names only: nothing read from the files.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What a config's TLS table asks for, paths already relative to the config.
#[derive(Debug, Clone, Default)]
pub struct ClientTlsSpec {
    /// `ca_file`: PEM CA certificates; `None` trusts the system's store.
    pub ca_file: Option<PathBuf>,
    /// `client_cert`: the chain presented to servers that ask (mTLS); needs
    /// `client_key`.
    pub client_cert: Option<PathBuf>,
    /// `client_key`: the private key of `client_cert`; needs it.
    pub client_key: Option<PathBuf>,
    /// `server_name`: the name certificates must carry instead of the host.
    pub server_name: Option<String>,
}

/// Which key of a TLS table an error is about, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// `ca_file`, `client_cert`, `client_key` or `server_name`.
    pub key: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

impl TlsError {
    fn new(key: &'static str, message: impl Into<String>) -> TlsError {
        TlsError {
            key,
            message: message.into(),
        }
    }
}

impl ClientTls {
    /// Reads the files `spec` names and checks they make a working client
    /// configuration (a key that fits its certificate, CAs rustls can use).
    pub fn load(spec: &ClientTlsSpec) -> Result<ClientTls, TlsError> {
        match (&spec.client_cert, &spec.client_key) {
            (Some(_), None) => {
                return Err(TlsError::new(
                    "client_cert",
                    "needs client_key (the certificate's private key)",
                ))
            }
            (None, Some(_)) => {
                return Err(TlsError::new(
                    "client_key",
                    "needs client_cert (the certificate it is the key of)",
                ))
            }
            _ => {}
        }
        let (trust, roots) = match &spec.ca_file {
            Some(path) => {
                let pem = read(path).map_err(|message| TlsError::new("ca_file", message))?;
                let roots =
                    root_store(path, &pem).map_err(|message| TlsError::new("ca_file", message))?;
                (
                    Trust::File {
                        path: path.clone(),
                        pem: pem.into(),
                    },
                    roots,
                )
            }
            None => (
                Trust::System,
                system_roots().map_err(|message| TlsError::new("ca_file", message))?,
            ),
        };
        let (identity, signing) = match (&spec.client_cert, &spec.client_key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read(cert).map_err(|m| TlsError::new("client_cert", m))?;
                let key_pem = read(key).map_err(|m| TlsError::new("client_key", m))?;
                let chain =
                    certificates(cert, &cert_pem).map_err(|m| TlsError::new("client_cert", m))?;
                let key_der =
                    private_key(key, &key_pem).map_err(|m| TlsError::new("client_key", m))?;
                let mut pem = cert_pem;
                pem.push(0);
                pem.extend_from_slice(&key_pem);
                let identity = Identity {
                    cert_path: cert.clone(),
                    key_path: key.clone(),
                    pem: pem.into(),
                };
                (Some(identity), Some((chain, key_der)))
            }
            _ => (None, None),
        };
        let server_name = match &spec.server_name {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|error| {
                TlsError::new(
                    "server_name",
                    format!("{name:?} is not a DNS name or IP address ({error})"),
                )
            })?),
        };
        let config = client_config(roots, signing, identity.as_ref())?;
        Ok(ClientTls {
            trust,
            identity,
            server_name,
            config: Arc::new(config),
        })
    }

    /// The name certificates must carry instead of each endpoint's host.
    pub fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }

    /// Where the trusted CAs come from.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Whether a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// A copy of the configuration for one shard, with a session cache of its
    /// own: nothing a handshake changes is shared between shards.
    pub fn config_for_shard(&self) -> Arc<ClientConfig> {
        let mut config = (*self.config).clone();
        config.resumption = Resumption::in_memory_sessions(SESSIONS_PER_SHARD);
        Arc::new(config)
    }

    /// The settings in words, for the run's description: paths and names,
    /// nothing read from the files.
    pub fn describe(&self) -> String {
        let trust = match &self.trust {
            Trust::File { path, .. } => format!("CAs of {}", path.display()),
            Trust::System => "the system's CAs".to_string(),
        };
        let mut text = format!("TLS, trusting {trust}");
        if let Some(name) = &self.server_name {
            text.push_str(&format!(", certificates for {}", name.to_str()));
        }
        if let Some(identity) = &self.identity {
            text.push_str(&format!(
                ", client certificate {} (key {})",
                identity.cert_path.display(),
                identity.key_path.display()
            ));
        }
        text
    }
}

/// The client configuration for `roots`, presenting `signing` (a chain and
/// its key, read from `identity`'s files) when given.
fn client_config(
    roots: RootCertStore,
    signing: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    identity: Option<&Identity>,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::new("ca_file", format!("rustls: {error}")))?
        .with_root_certificates(Arc::new(roots));
    let mut config = match (signing, identity) {
        (Some((chain, key)), Some(identity)) => {
            builder.with_client_auth_cert(chain, key).map_err(|error| {
                TlsError::new(
                    "client_key",
                    format!(
                        "{} cannot sign for {}: {error}",
                        identity.key_path.display(),
                        identity.cert_path.display()
                    ),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A file's bytes, or why not, naming it.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

/// Every certificate of a PEM file: at least one.
pub fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        certs.push(cert.map_err(|error| format!("{shown} is not valid PEM: {error}"))?);
    }
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (expected PEM blocks -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|error| {
        format!(
            "{} holds no private key in PEM (PKCS#8, PKCS#1 or SEC1): {error}",
            path.display()
        )
    })
}

/// The CA certificates of a PEM file as trust anchors.
fn root_store(path: &Path, pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, pem)? {
        roots.add(cert).map_err(|error| {
            format!(
                "{} holds a certificate that cannot be a CA: {error}",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// The system's CA store. Certificates rustls cannot use are skipped, as
/// other TLS clients do; a store without one usable certificate is an error.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or(String::new(), |error| format!(" ({error})"));
        return Err(format!(
            "no ca_file, and the system's CA store has no certificate{why}: \
             install ca-certificates or name the CAs to trust with ca_file"
        ));
    }
    Ok(roots)
}

/// A TLS server configuration (the mock nodes'): the certificate chain and
/// key of `cert` and `key`, ALPN `h2`; with `client_ca`, every client must
/// present a certificate chaining to one of its CAs (mTLS).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, String> {
    let chain = certificates(cert, &read(cert)?)?;
    let key_der = private_key(key, &read(key)?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("rustls: {error}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = root_store(path, &read(path)?)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| format!("cannot check client certificates: {error}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|error| {
        format!(
            "{} cannot sign for {}: {error}",
            key.display(),
            cert.display()
        )
    })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_missing_or_not_pem_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = ClientTls::load(&ClientTlsSpec {
            ca_file: Some(missing.clone()),
            ..ClientTlsSpec::default()
        })
        .unwrap_err();
        assert_eq!(error.key, "ca_file");
        assert!(
            error
                .message
                .starts_with(&format!("cannot read {}", missing.display())),
            "{}",
            error.message
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let error = ClientTls::load(&ClientTlsSpec {
            ca_file: Some(junk.clone()),
            ..ClientTlsSpec::default()
        })
        .unwrap_err();
        assert!(error.message.contains("holds no certificate"), "{error:?}");
        let error = ClientTls::load(&ClientTlsSpec {
            ca_file: Some(junk.clone()),
            client_cert: Some(junk),
            ..ClientTlsSpec::default()
        })
        .unwrap_err();
        assert_eq!(error.key, "client_cert");
        assert!(error.message.contains("needs client_key"), "{error:?}");
    }
}
