//! TLS for the PostgreSQL sink: `[sink] sslmode` and `sslrootcert`, with
//! libpq's meanings, on rustls (the `ring` provider, so building needs neither
//! OpenSSL headers nor cmake/nasm).
//!
//! | `sslmode`     | encrypted            | chain checked               | host name checked |
//! |---------------|----------------------|-----------------------------|-------------------|
//! | `disable`     | never                | —                           | —                 |
//! | `prefer`      | if the server offers | no                          | no                |
//! | `require`     | always, or refused   | only if `sslrootcert` given | no                |
//! | `verify-ca`   | always, or refused   | to `sslrootcert`            | no                |
//! | `verify-full` | always, or refused   | to `sslrootcert`            | yes (DNS or IP)   |
//!
//! Whatever the mode, the server's handshake signatures are checked against the
//! certificate it presents, so an encrypted connection is one with the holder
//! of that certificate's key. The trusted CAs are only those in `sslrootcert`
//! (PEM); the system's store is not read, so what is trusted is in the config.
//! The crypto provider is passed to every rustls builder, never installed
//! process-wide.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// `sslmode`: whether the connection is encrypted and what of the server's
/// certificate is checked. See the module's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain text, never TLS.
    Disable,
    /// TLS if the server offers it, else plain text; the certificate unchecked.
    #[default]
    Prefer,
    /// TLS or no connection; the chain checked only when `sslrootcert` is given.
    Require,
    /// TLS, the chain checked against `sslrootcert`; any host name.
    VerifyCa,
    /// TLS, the chain checked against `sslrootcert` and the URL's host in the
    /// certificate's subjectAltName.
    VerifyFull,
}

impl SslMode {
    /// Every mode, in the order of libpq's documentation.
    pub const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The mode as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode a config value names, if any.
    pub fn parse(text: &str) -> Option<SslMode> {
        SslMode::ALL.into_iter().find(|mode| mode.name() == text)
    }

    /// Whether the mode reads `sslrootcert` (`disable` and `prefer` do not:
    /// a CA that is never checked would only look like protection).
    pub fn reads_root_cert(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// Whether the mode cannot work without `sslrootcert` (no system roots are read).
    pub fn needs_root_cert(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// The driver's mode: it knows only whether TLS is off, optional or required;
    /// what is checked is up to the verifier [`connector`] builds.
    pub(super) fn driver(self) -> postgres::config::SslMode {
        match self {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads the CA certificates of an `sslrootcert` file (PEM, one or more).
/// Errors name the path: unreadable, not PEM, a certificate rustls cannot use
/// as a trust anchor, or no certificate at all.
pub fn load_root_certs(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|error| format!("cannot read {shown}: {error}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|error| format!("{shown} is not valid PEM: {error}"))?;
        roots
            .add(cert)
            .map_err(|error| format!("{shown} holds a certificate that cannot be a CA: {error}"))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (expected PEM blocks \
             -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(roots)
}

/// The TLS connector for `mode`, trusting the CAs in `root_cert` (read now; a
/// reconnect reuses them). `disable` gets one too: the driver never calls it.
pub fn connector(mode: SslMode, root_cert: Option<&Path>) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match root_cert {
        Some(path) if mode.reads_root_cert() => Some(Arc::new(load_root_certs(path)?)),
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| format!("cannot check certificates: {error}"))?
        }
        (mode, None) if mode.needs_root_cert() => {
            return Err(format!(
                "sslmode={mode} needs sslrootcert (the CA to trust)"
            ));
        }
        (_, roots) => Arc::new(NoNameCheck {
            roots,
            algorithms: provider.signature_verification_algorithms,
        }),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot set up TLS: {error}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The verifier of `prefer`, `require` and `verify-ca`: checks the handshake
/// signatures always, the chain to `roots` when there are roots, the host name
/// never (libpq's behaviour in these modes).
#[derive(Debug)]
struct NoNameCheck {
    /// The `sslrootcert` CAs; `None`: any certificate is taken (`prefer`,
    /// `require` without `sslrootcert`).
    roots: Option<Arc<RootCertStore>>,
    /// The provider's signature algorithms, for the chain and the handshake.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoNameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a failed connect says when TLS is why: `None` for any other failure
/// (which keeps the driver's own message and transient verdict). A TLS failure
/// is permanent: trying again meets the same server and certificate.
pub fn failure(
    error: &(dyn Error + 'static),
    mode: SslMode,
    root_cert: Option<&Path>,
    host: &str,
) -> Option<String> {
    let mut source = Some(error);
    while let Some(cause) = source {
        // tokio-rustls hands rustls' error over inside an io::Error.
        let rustls_error = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls_error) = rustls_error {
            return Some(explain(rustls_error, mode, root_cert, host));
        }
        // tokio-postgres's own words when the server answers the SSLRequest with N.
        if cause.to_string() == "server does not support TLS" {
            return Some(format!(
                "the server does not support TLS (sslmode={mode}): turn on ssl in its \
                 postgresql.conf, or set sslmode = \"prefer\" to accept plain text"
            ));
        }
        source = cause.source();
    }
    None
}

/// One rustls error in an operator's words.
fn explain(error: &rustls::Error, mode: SslMode, root_cert: Option<&Path>, host: &str) -> String {
    let roots = root_cert.map_or_else(|| PathBuf::from("(none)"), Path::to_path_buf);
    let roots = roots.display();
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate is not valid for {host} (sslmode={mode}): {error}; \
             connect by a name the certificate lists, or reissue it with {host} in its \
             subjectAltName"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "the server's certificate is not trusted by sslrootcert {roots} (sslmode={mode}): \
             {error}; set sslrootcert to the CA that signed the server's certificate"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "the server's certificate was refused (sslmode={mode}, sslrootcert {roots}): {error}"
        ),
        _ => format!("the TLS handshake with the server failed (sslmode={mode}): {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_through_their_names() {
        for mode in SslMode::ALL {
            assert_eq!(SslMode::parse(mode.name()), Some(mode));
        }
        assert_eq!(SslMode::parse("verify_full"), None);
        assert_eq!(SslMode::default(), SslMode::Prefer);
    }

    #[test]
    fn verifying_modes_need_a_root_cert_and_a_bad_file_is_named() {
        let error = connector(SslMode::VerifyCa, None).err().unwrap();
        assert!(error.contains("needs sslrootcert"), "{error}");
        assert!(connector(SslMode::Require, None).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = connector(SslMode::VerifyFull, Some(&empty)).err().unwrap();
        assert!(error.contains("empty.pem holds no certificate"), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = load_root_certs(&missing).unwrap_err();
        assert!(
            error.starts_with("cannot read ") && error.contains("missing.pem"),
            "{error}"
        );
        // prefer never reads it, so a missing file does not matter there.
        assert!(connector(SslMode::Prefer, Some(&missing)).is_ok());
    }

    #[test]
    fn tls_failures_are_told_in_words() {
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, name);
        let text = failure(&wrapped, SslMode::VerifyFull, None, "10.0.0.9").unwrap();
        assert!(
            text.starts_with("the server's certificate is not valid for 10.0.0.9"),
            "{text}"
        );
        let issuer = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let text = failure(
            &issuer,
            SslMode::VerifyCa,
            Some(Path::new("/etc/ca.pem")),
            "h",
        )
        .unwrap();
        assert!(
            text.contains("not trusted by sslrootcert /etc/ca.pem"),
            "{text}"
        );
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(failure(&other, SslMode::Require, None, "h"), None);
    }
}
