//! `percore bench --summary-json` has one shape for one level and for a sweep:
//! `{"levels": [{"level", "slug", "summary"}]}`, so a reader needs one parser.

use std::path::Path;

fn bench_summary(dir: &Path, concurrency: &str) -> serde_json::Value {
    let path = dir.join(format!("summary-{concurrency}.json"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["bench", "--concurrency", concurrency, "--duration", "300ms"])
        .args(["--devices", "200"])
        .arg("--summary-json")
        .arg(&path)
        .output()
        .expect("the binary runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "bench failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("the summary was written");
    serde_json::from_str(&text).expect("the summary is JSON")
}

/// The keys of an object, sorted.
fn keys(value: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn one_level_and_a_sweep_write_the_same_shape() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let one = bench_summary(dir.path(), "4");
    let sweep = bench_summary(dir.path(), "2,4");
    assert_eq!(keys(&one), vec!["levels"]);
    assert_eq!(keys(&sweep), keys(&one));
    let one_levels = one["levels"].as_array().expect("levels is an array");
    let sweep_levels = sweep["levels"].as_array().expect("levels is an array");
    assert_eq!(one_levels.len(), 1);
    assert_eq!(sweep_levels.len(), 2);
    for level in one_levels.iter().chain(sweep_levels) {
        assert_eq!(keys(level), vec!["level", "slug", "summary"]);
        assert_eq!(keys(&level["summary"]), keys(&one_levels[0]["summary"]));
        assert!(level["summary"]["jobs"]
            .as_u64()
            .is_some_and(|jobs| jobs > 0));
    }
    assert_eq!(one_levels[0]["level"], "concurrency 4");
    assert_eq!(one_levels[0]["slug"], "concurrency-4");
    assert_eq!(sweep_levels[0]["slug"], "concurrency-2");
    assert_eq!(sweep_levels[1]["slug"], "concurrency-4");
}
