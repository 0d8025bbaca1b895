//! The `percore` binary at its edges: help texts, and bad input refused with one
//! clear line on stderr and a non-zero exit, never a panic or a backtrace.

use std::process::{Command, Output};

fn percore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(args)
        // A user's RUST_BACKTRACE must not turn an error message into a dump.
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_every_command_and_flag() {
    let help = String::from_utf8_lossy(&percore(&["--help"]).stdout).into_owned();
    for command in [
        "demo",
        "run",
        "bench",
        "report",
        "mock-source",
        "mock-compute",
    ] {
        assert!(
            help.contains(command),
            "--help does not mention {command}:\n{help}"
        );
    }
    let bench = String::from_utf8_lossy(&percore(&["bench", "--help"]).stdout).into_owned();
    for flag in [
        "--concurrency",
        "--rate",
        "--poisson",
        "--latency-bound-us",
        "--report",
        "--source",
    ] {
        assert!(
            bench.contains(flag),
            "bench --help does not mention {flag}:\n{bench}"
        );
    }
}

#[test]
fn report_on_a_missing_directory_is_one_clear_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("no-such-run");
    let output = percore(&["report", missing.to_str().expect("a UTF-8 path")]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!(
            "error: percore report: {}: no such directory\n",
            missing.display()
        )
    );
}

#[test]
fn a_bad_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        "[devices]\ngenerate = { count = 10, mix = { cam = 1 } }\n\n[sink]\nkind = \"sqlite\"\npath = \"x.db\"\n\n[[classes]]\nname = \"cam\"\nmodel = \"m\"\nperiod_ms = 0\ndeadline_ms = 10\ndata_sources = [\"127.0.0.1:1\"]\ncompute_nodes = [\"127.0.0.1:2\"]\n",
    )
    .expect("config written");
    let output = percore(&[
        "run",
        "--config",
        config.to_str().expect("a UTF-8 path"),
        "--admin",
        "none",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.starts_with(&format!(
            "error: {}:11: classes[0].period_ms:",
            config.display()
        )),
        "{text}"
    );
    assert!(
        !text.contains("panicked") && !text.contains("backtrace"),
        "{text}"
    );
}
