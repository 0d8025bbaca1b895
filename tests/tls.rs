//! TLS to compute nodes, through the binary: a CA made here (rcgen) signs the
//! mock compute node's certificate and a client's; percore verifies the node
//! against `[classes.tls] ca_file`, presents its client certificate (mTLS) and
//! speaks HTTP/2 chosen by ALPN.
//!
//! A verified connection carries every job; another CA, a node that requires
//! a client certificate percore does not have, a TLS port reached in the
//! clear, a plaintext port reached with TLS, and a server that does not
//! choose `h2` each fail every job with a reason that says which. A host name
//! endpoint (`localhost:PORT`) is resolved at connect and named in rows as
//! written, and the class's token is in no output or file of the run.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use percore::mock::{MockKind, MockNode, MockOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The token the compute node demands in the happy path.
const TOKEN: &str = "tls-t0ken-9d2e7b41";

/// A certificate authority of the test's own.
fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("a CA key");
    CertifiedIssuer::self_signed(params, key).expect("a CA certificate")
}

/// A certificate for `names` signed by `ca`, for a server or a client; its
/// PEM and its key's PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, "percore tls test");
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, ca).expect("a certificate");
    (cert.pem(), key.serialize_pem())
}

/// Every file a test needs, in one folder that is also where the run writes.
struct Pki {
    /// The folder: PEM files, the config, the database, the report.
    dir: tempfile::TempDir,
}

impl Pki {
    /// `ca.pem` (signs everything), `other-ca.pem` (signs nothing here),
    /// `server.pem`/`server.key` for localhost and 127.0.0.1, and
    /// `client.pem`/`client.key`.
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = new_ca("percore test CA");
        let other = new_ca("another CA");
        let (server, server_key) = leaf(
            &ca,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(&ca, &["dispatcher"], ExtendedKeyUsagePurpose::ClientAuth);
        for (name, text) in [
            ("ca.pem", ca.as_ref().pem()),
            ("other-ca.pem", other.as_ref().pem()),
            ("server.pem", server),
            ("server.key", server_key),
            ("client.pem", client),
            ("client.key", client_key),
        ] {
            std::fs::write(dir.path().join(name), text).expect("a PEM file");
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The mock's TLS: the server certificate, and a required client
    /// certificate signed by `ca.pem` when `mtls`.
    fn server_tls(&self, mtls: bool) -> Arc<rustls::ServerConfig> {
        let client_ca = self.path("ca.pem");
        percore::endpoint::tls::server_config(
            &self.path("server.pem"),
            &self.path("server.key"),
            mtls.then_some(client_ca.as_path()),
        )
        .expect("the server's TLS configuration")
    }
}

/// A compute mock with `tls`, demanding the token when `token` is set.
fn compute_node(tls: Option<Arc<rustls::ServerConfig>>, token: bool) -> MockNode {
    common::start_mock(
        MockKind::Compute,
        MockOptions {
            tls,
            required_header: token
                .then(|| ("authorization".to_string(), format!("Bearer {TOKEN}"))),
            ..MockOptions::default()
        },
    )
}

/// Writes a config for 40 devices of class `meter` whose compute node is
/// `compute` (as written), with `class_keys` (lines of the class) and
/// `tables` (its sub-tables) added; paths in them are relative to `dir`.
fn write_config(
    dir: &Path,
    source: &str,
    compute: &str,
    class_keys: &str,
    tables: &str,
) -> PathBuf {
    let cpus: Vec<String> = common::shard_cpus()
        .iter()
        .map(|cpu| cpu.to_string())
        .collect();
    std::fs::write(
        dir.join("tuning.toml"),
        format!("shard_cpus = [{}]\n", cpus.join(", ")),
    )
    .expect("the tuning file");
    let text = format!(
        r#"tuning = "tuning.toml"

[devices]
generate = {{ count = 40, mix = {{ meter = 1 }} }}

[sink]
kind = "sqlite"
path = "jobs.db"

[[classes]]
name = "meter"
model = "mock"
period_ms = 250
deadline_ms = 250
data_sources = ["{source}"]
compute_nodes = ["{compute}"]
{class_keys}
{tables}
"#
    );
    let path = dir.join("percore.toml");
    std::fs::write(&path, text).expect("the config");
    path
}

/// What a run of 2 s left: exit code, stdout, stderr, rows.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    rows: Vec<common::Row>,
}

fn run(dir: &Path, config: &Path) -> Run {
    let report = dir.join("report");
    let summary = dir.join("summary.json");
    let (code, stdout, stderr) = common::run_percore_with(
        config,
        &[
            "--duration",
            "2s",
            "--summary-json",
            summary.to_str().expect("UTF-8"),
            "--report",
            report.to_str().expect("UTF-8"),
        ],
    );
    let rows = common::read_rows(&dir.join("jobs.db"));
    Run {
        code,
        stdout,
        stderr,
        rows,
    }
}

/// Every row failed, each with a reason containing every one of `words`.
fn assert_every_job_failed_saying(run: &Run, words: &[&str]) {
    assert_eq!(run.code, common::EXIT_ALL_FAILED, "{}", run.stderr);
    assert!(!run.rows.is_empty());
    let failed = common::reasons(&run.rows, "failed");
    assert!(!failed.is_empty(), "{:?}", common::reasons(&run.rows, "ok"));
    for reason in failed.keys() {
        for word in words {
            assert!(reason.contains(word), "{word:?} not in {reason:?}");
        }
    }
}

#[test]
fn a_verified_mtls_connection_by_host_name_carries_every_job_and_the_token_is_written_nowhere() {
    let pki = Pki::new();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = compute_node(Some(pki.server_tls(true)), true);
    // A host name, no scheme: TLS because the class has a TLS table.
    let endpoint = format!("localhost:{}", compute.addr.port());
    let config = write_config(
        pki.dir.path(),
        &source.addr.to_string(),
        &endpoint,
        "token_env = \"PERCORE_TEST_TLS_TOKEN\"",
        "[classes.tls]\nca_file = \"ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"\n",
    );
    // Each test runs in a process of its own (nextest).
    std::env::set_var("PERCORE_TEST_TLS_TOKEN", TOKEN);
    let run = run(pki.dir.path(), &config);
    let calls = compute.control().calls();
    source.stop();
    compute.stop();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.rows.is_empty());
    assert_eq!(
        common::reasons(&run.rows, "failed"),
        Default::default(),
        "every job ok"
    );
    assert_eq!(calls, run.rows.len() as u64, "every job reached the node");
    for row in &run.rows {
        assert_eq!(row.compute_node.as_deref(), Some(endpoint.as_str()));
    }
    let summary = common::read_summary_json(&pki.dir.path().join("summary.json"));
    let transport = &summary["config"]["classes"][0]["transport"];
    let described = transport["compute_tls"].as_str().expect("TLS described");
    assert!(
        described.contains("ca.pem") && described.contains("client certificate"),
        "{described}"
    );
    common::assert_nowhere(pki.dir.path(), &[&run.stdout, &run.stderr], TOKEN);
}

#[test]
fn another_ca_fails_every_job_naming_the_unknown_issuer() {
    let pki = Pki::new();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = compute_node(Some(pki.server_tls(false)), false);
    let endpoint = format!("https://127.0.0.1:{}", compute.addr.port());
    let config = write_config(
        pki.dir.path(),
        &source.addr.to_string(),
        &endpoint,
        "",
        "[classes.tls]\nca_file = \"other-ca.pem\"\n",
    );
    let run = run(pki.dir.path(), &config);
    let calls = compute.control().calls();
    source.stop();
    compute.stop();
    assert_every_job_failed_saying(
        &run,
        &[
            &format!(
                "infer: connect error to 127.0.0.1:{}",
                compute_port(&endpoint)
            ),
            "TLS: invalid peer certificate: UnknownIssuer",
            "check ca_file",
        ],
    );
    assert_eq!(calls, 0, "no call crosses an unverified connection");
}

/// The port of an endpoint written `scheme://host:port`.
fn compute_port(endpoint: &str) -> &str {
    endpoint.rsplit(':').next().expect("a port")
}

#[test]
fn a_node_that_requires_a_client_certificate_fails_every_job_without_one() {
    let pki = Pki::new();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    // The binary's own flags this time.
    let arg = |name: &str| pki.path(name).to_str().expect("UTF-8").to_string();
    let compute = common::MockProcess::start(&[
        "mock-compute",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &arg("server.pem"),
        "--tls-key",
        &arg("server.key"),
        "--client-ca",
        &arg("ca.pem"),
    ]);
    let config = write_config(
        pki.dir.path(),
        &source.addr.to_string(),
        &format!("https://127.0.0.1:{}", compute.addr.port()),
        "",
        "[classes.tls]\nca_file = \"ca.pem\"\n",
    );
    let run = run(pki.dir.path(), &config);
    source.stop();
    drop(compute);
    assert_every_job_failed_saying(
        &run,
        &[
            "TLS: received fatal alert: CertificateRequired",
            "set client_cert and client_key",
        ],
    );
}

#[test]
fn a_tls_port_reached_in_the_clear_fails_every_job_saying_so() {
    let pki = Pki::new();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = compute_node(Some(pki.server_tls(false)), false);
    let config = write_config(
        pki.dir.path(),
        &source.addr.to_string(),
        &format!("http://127.0.0.1:{}", compute.addr.port()),
        "",
        "",
    );
    let run = run(pki.dir.path(), &config);
    source.stop();
    compute.stop();
    assert_every_job_failed_saying(&run, &["the peer does not speak HTTP/2", "https://"]);
}

#[test]
fn a_plaintext_port_reached_with_tls_fails_every_job_saying_so() {
    let pki = Pki::new();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let compute = compute_node(None, false);
    let config = write_config(
        pki.dir.path(),
        &source.addr.to_string(),
        &format!("https://127.0.0.1:{}", compute.addr.port()),
        "",
        "[classes.tls]\nca_file = \"ca.pem\"\n",
    );
    let run = run(pki.dir.path(), &config);
    let calls = compute.control().calls();
    source.stop();
    compute.stop();
    assert_every_job_failed_saying(&run, &["TLS: ", "plaintext port", "http://host:port"]);
    assert_eq!(calls, 0);
}

#[test]
fn a_server_that_does_not_choose_h2_by_alpn_is_refused() {
    let pki = Pki::new();
    let source = common::start_mock(MockKind::Source, MockOptions::default());
    let mut tls = (*pki.server_tls(false)).clone();
    tls.alpn_protocols.clear();
    let compute = compute_node(Some(Arc::new(tls)), false);
    let config = write_config(
        pki.dir.path(),
        &source.addr.to_string(),
        &format!("https://localhost:{}", compute.addr.port()),
        "",
        "[classes.tls]\nca_file = \"ca.pem\"\n",
    );
    let run = run(pki.dir.path(), &config);
    source.stop();
    compute.stop();
    assert_every_job_failed_saying(
        &run,
        &[
            "TLS: the server did not choose HTTP/2 by ALPN",
            "needs ALPN h2",
        ],
    );
}

#[test]
fn tls_settings_that_cannot_work_stop_the_start_naming_file_and_line() {
    let pki = Pki::new();
    let cases = [
        (
            "[classes.tls]\nca_file = \"missing.pem\"\n",
            "classes[0].tls.ca_file: cannot read",
        ),
        (
            "[classes.tls]\nca_file = \"ca.pem\"\nclient_cert = \"client.pem\"\n",
            "classes[0].tls.client_cert: needs client_key",
        ),
        (
            "[classes.tls]\nca_file = \"ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"ca.pem\"\n",
            "classes[0].tls.client_key:",
        ),
    ];
    for (tables, expected) in cases {
        let config = write_config(pki.dir.path(), "127.0.0.1:9", "localhost:9", "", tables);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["run", "--config"])
            .arg(&config)
            .args(["--duration", "1s", "--admin", "none"])
            .output()
            .expect("percore runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let line = format!("{}:", config.display());
        assert!(
            stderr.contains(&line) && stderr.contains(expected),
            "{expected:?} with its file and line: {stderr}"
        );
    }
}
