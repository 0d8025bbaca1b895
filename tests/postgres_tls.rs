//! The PostgreSQL sink's TLS (`sslmode`, `sslrootcert`) against real servers:
//! each test starts a server of its own with `ssl = on` and a certificate made
//! here by a CA made here (rcgen), or uses the shared server, which has TLS
//! off. `verify-full` with the right CA and `require` without one encrypt (the
//! server's `pg_stat_ssl` says so for the sink's own connection), as does
//! `prefer` when the server offers TLS; another CA,
//! a host the certificate does not name, and `require` against a server
//! without TLS are refused at open, permanently, in words; `prefer` against
//! that server writes in plain text.

mod common;

use std::path::PathBuf;

use common::pg::{self, open_error, open_sink, record, PrivateServer};
use percore::record::Outcome;
use percore::sink::postgres::{PgUrl, PostgresOptions, SslMode};
use percore::sink::Sink;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority of the test's own.
fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("a CA key");
    CertifiedIssuer::self_signed(params, key).expect("a CA certificate")
}

/// A server with TLS on, its certificate valid for `names` (IP addresses or
/// DNS names) and signed by `ca`; `ca.pem` (that CA) beside its data.
fn tls_server(ca: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> PrivateServer {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "percore test server");
    let key = KeyPair::generate().expect("a server key");
    let cert = params.signed_by(&key, ca).expect("a server certificate");
    let server = PrivateServer::start_with_files(
        &[
            ("server.crt", &cert.pem()),
            ("server.key", &key.serialize_pem()),
        ],
        // Relative to the data folder, which is beside the files.
        "ssl = on\nssl_cert_file = '../server.crt'\nssl_key_file = '../server.key'",
    );
    std::fs::write(server.dir().join("ca.pem"), ca.as_ref().pem()).expect("ca.pem");
    server
}

/// The sink's options for `url` with `mode` and `root_cert`.
fn options(url: &PgUrl, mode: SslMode, root_cert: Option<PathBuf>) -> PostgresOptions {
    let mut options = PostgresOptions::new(url.clone());
    options.ssl_mode = mode;
    options.ssl_root_cert = root_cert;
    options
}

/// `(ssl, version)` from `pg_stat_ssl` of each connection in `url`'s database
/// whose application_name is `percore` (the sink's), asked over a connection
/// with another name.
fn sink_connections(url: &PgUrl) -> Vec<(bool, Option<String>)> {
    let mut config = url.client_config();
    config.application_name("percore_tls_test");
    let mut client = config
        .connect(postgres::NoTls)
        .unwrap_or_else(|error| panic!("cannot connect to {}: {error:?}", url.location()));
    client
        .query(
            "SELECT ssl, version FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'percore' AND datname = current_database()",
            &[],
        )
        .expect("pg_stat_ssl")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Writes two rows through `sink` and reads them back from `url`.
fn write_and_read_back(sink: &mut dyn Sink, url: &PgUrl) {
    let records = [
        record(0, 1_700_000_000_000, Outcome::Ok, b"over tls"),
        record(1, 1_700_000_000_000, Outcome::Ok, b"also"),
    ];
    sink.write_batch(&records).expect("the batch is written");
    let (rows, _) = pg::read_rows(url, "jobs");
    let landed: Vec<(&str, Option<&[u8]>)> = rows
        .iter()
        .map(|row| (row.device_id.as_str(), row.output.as_deref()))
        .collect();
    assert_eq!(
        landed,
        [
            ("dev-a", Some(&b"over tls"[..])),
            ("dev-b", Some(&b"also"[..]))
        ]
    );
}

/// Asserts the sink's one connection is encrypted with TLS 1.2 or 1.3.
fn assert_encrypted(url: &PgUrl) {
    let connections = sink_connections(url);
    assert_eq!(connections.len(), 1, "one sink connection: {connections:?}");
    let (ssl, version) = &connections[0];
    assert!(
        *ssl,
        "the sink's connection is not encrypted: {connections:?}"
    );
    assert!(
        matches!(version.as_deref(), Some("TLSv1.3" | "TLSv1.2")),
        "{connections:?}"
    );
}

#[test]
fn verify_full_with_the_right_ca_encrypts_and_the_rows_land() {
    let ca = new_ca("percore test CA");
    let server = tls_server(&ca, &["127.0.0.1", "localhost"]);
    let url = server.url();
    let root = server.dir().join("ca.pem");
    let mut sink = open_sink(options(&url, SslMode::VerifyFull, Some(root)))
        .unwrap_or_else(|error| panic!("verify-full opens: {error}\n{}", server.log()));
    write_and_read_back(sink.as_mut(), &url);
    assert_encrypted(&url);
}

#[test]
fn require_without_sslrootcert_and_prefer_encrypt() {
    let ca = new_ca("percore test CA");
    let server = tls_server(&ca, &["127.0.0.1"]);
    let url = server.url();
    let mut sink = open_sink(options(&url, SslMode::Require, None))
        .unwrap_or_else(|error| panic!("require opens: {error}\n{}", server.log()));
    write_and_read_back(sink.as_mut(), &url);
    assert_encrypted(&url);
    // prefer takes the TLS the server offers (in a database of its own, so the
    // require sink's connection is not counted).
    pg::execute(&url, "CREATE DATABASE prefer_db");
    let url = url.with_dbname("prefer_db");
    let mut sink = open_sink(options(&url, SslMode::Prefer, None)).expect("prefer opens");
    write_and_read_back(sink.as_mut(), &url);
    assert_encrypted(&url);
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let ca = new_ca("percore test CA");
    let server = tls_server(&ca, &["127.0.0.1", "localhost"]);
    let other = server.dir().join("other-ca.pem");
    std::fs::write(&other, new_ca("someone else").as_ref().pem()).expect("other-ca.pem");
    // require with sslrootcert checks the chain too, as libpq's does.
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa, SslMode::Require] {
        let error = open_error(options(&server.url(), mode, Some(other.clone())));
        assert!(!error.transient, "{mode}: a wrong CA is permanent: {error}");
        let cause = error.cause.to_string();
        let expected = format!(
            "the server's certificate is not trusted by sslrootcert {} (sslmode={mode})",
            other.display()
        );
        assert!(cause.starts_with(&expected), "{mode}: {cause}");
    }
}

#[test]
fn verify_full_refuses_a_host_the_certificate_does_not_name() {
    let ca = new_ca("percore test CA");
    // The certificate names localhost only; the URL says 127.0.0.1.
    let server = tls_server(&ca, &["localhost"]);
    let url = server.url();
    let root = server.dir().join("ca.pem");
    let error = open_error(options(&url, SslMode::VerifyFull, Some(root.clone())));
    assert!(!error.transient, "a wrong name is permanent: {error}");
    let cause = error.cause.to_string();
    assert!(
        cause.starts_with(
            "the server's certificate is not valid for 127.0.0.1 (sslmode=verify-full)"
        ),
        "{cause}"
    );
    // verify-ca checks the chain only, so the same server is accepted.
    let mut sink = open_sink(options(&url, SslMode::VerifyCa, Some(root)))
        .unwrap_or_else(|error| panic!("verify-ca opens: {error}"));
    write_and_read_back(sink.as_mut(), &url);
    assert_encrypted(&url);
}

#[test]
fn require_is_refused_by_a_server_without_tls_and_prefer_writes_plain_text() {
    // The shared server has ssl off.
    let url = pg::fresh_database("tls_off");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, new_ca("unused").as_ref().pem()).expect("ca.pem");
    for (mode, root) in [(SslMode::Require, None), (SslMode::VerifyFull, Some(ca))] {
        let error = open_error(options(&url, mode, root));
        assert!(!error.transient, "{mode}: {error}");
        let cause = error.cause.to_string();
        assert!(
            cause.starts_with(&format!("the server does not support TLS (sslmode={mode})")),
            "{cause}"
        );
    }
    let mut sink = open_sink(options(&url, SslMode::Prefer, None)).expect("prefer opens");
    write_and_read_back(sink.as_mut(), &url);
    let connections = sink_connections(&url);
    assert_eq!(
        connections,
        [(false, None)],
        "prefer falls back to plain text"
    );
}
