//! Bad cluster input: an etcd that does not answer (a clear error naming the
//! URL, after bounded retries), and `[cluster]` / `compute_nodes = "etcd"`
//! mistakes (file:line errors).

mod common;

use std::time::{Duration, Instant};

/// The bound on a start against an etcd that never answers: the retries'
/// 10 s, a call's timeout, and the process's own start.
const START_BOUND: Duration = Duration::from_secs(20);

fn write_config(dir: &std::path::Path, cluster: &str, compute_nodes: &str) -> std::path::PathBuf {
    let cpus: Vec<String> = common::shard_cpus()
        .iter()
        .map(|cpu| cpu.to_string())
        .collect();
    let text = format!(
        r#"tuning = "tuning.toml"

[devices]
generate = {{ count = 10, mix = {{ meter = 1 }} }}

[sink]
kind = "sqlite"
path = "results.db"
{cluster}
[[classes]]
name = "meter"
model = "mock"
period_ms = 100
deadline_ms = 100
data_sources = ["127.0.0.1:9"]
compute_nodes = {compute_nodes}
"#
    );
    std::fs::write(
        dir.join("tuning.toml"),
        format!("shard_cpus = [{}]\n", cpus.join(", ")),
    )
    .unwrap();
    let path = dir.join("percore.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn percore(args: &[&str]) -> (i32, String, Duration) {
    let began = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(args)
        .output()
        .expect("percore runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr, began.elapsed())
}

#[test]
fn an_etcd_that_does_not_answer_stops_the_start_with_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::pg::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let cluster = format!("\n[cluster]\nname = \"c\"\netcd = [\"{url}\"]\ninstance = \"a\"\n");
    let path = write_config(dir.path(), &cluster, "\"etcd\"");
    let (code, stderr, took) = percore(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--duration",
        "2s",
        "--admin",
        "none",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("etcd does not answer") && stderr.contains(&url),
        "{stderr}"
    );
    assert!(
        stderr.contains("attempts in"),
        "the bound is said: {stderr}"
    );
    assert!(took < START_BOUND, "gave up after {took:?}");
    assert!(!dir.path().join("results.db").exists(), "nothing ran");

    for command in [
        &["status", "--etcd", &url][..],
        &[
            "announce",
            "--etcd",
            &url,
            "--cluster",
            "c",
            "--class",
            "meter",
            "--addr",
            "127.0.0.1:9",
        ][..],
    ] {
        let (code, stderr, took) = percore(command);
        assert_eq!(code, 1, "{command:?}: {stderr}");
        assert!(
            stderr.contains("etcd does not answer") && stderr.contains(&url),
            "{stderr}"
        );
        assert!(took < START_BOUND, "{command:?} gave up after {took:?}");
    }
}

#[test]
fn cluster_mistakes_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("", "\"etcd\"", "percore.toml:16: classes[0].compute_nodes: \"etcd\" needs [cluster] with etcd"),
        ("", "\"consul\"", "expected a list of \"host:port\", or \"etcd\", found \"consul\""),
        ("\n[cluster]\nname = \"c\"\netcd = [\"https://10.0.0.1:2379\"]\n", "\"etcd\"", "percore.toml:12: cluster.etcd[0]: \"https://10.0.0.1:2379\": TLS to etcd is not supported"),
        ("\n[cluster]\nname = \"c\"\netcd = [\"127.0.0.1\"]\n", "\"etcd\"", "percore.toml:12: cluster.etcd[0]: expected \"http://host:port\", found \"127.0.0.1\""),
        ("\n[cluster]\nname = \"a/b\"\netcd = [\"http://127.0.0.1:2379\"]\n", "\"etcd\"", "percore.toml:11: cluster.name: \"a/b\": must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-'"),
        ("\n[cluster]\nname = \"c\"\netcd = [\"http://127.0.0.1:2379\"]\nlease_ttl_s = 1\n", "\"etcd\"", "cluster.lease_ttl_s: must be from 2"),
        ("\n[cluster]\nname = \"c\"\netcd = [\"http://127.0.0.1:2379\"]\nleases = 1\n", "\"etcd\"", "unknown field `leases`"),
    ];
    for (cluster, nodes, expected) in cases {
        let path = write_config(dir.path(), cluster, nodes);
        let (code, stderr, _) = percore(&[
            "run",
            "--config",
            path.to_str().unwrap(),
            "--duration",
            "1s",
            "--admin",
            "none",
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
    }
}
