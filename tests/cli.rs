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
        "--stages",
        "--sink-commit-delay-ms",
        "--search-precision-pct",
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

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn duration_flags_refuse_zero_and_unknown_units_naming_the_flag() {
    for command in [
        &["demo", "--admin", "none"][..],
        &["run", "--config", "unused.toml"][..],
        &["bench"][..],
    ] {
        for (value, why) in [
            ("0", "is zero"),
            ("0ms", "is zero"),
            ("5x", "unknown time unit"),
        ] {
            let mut args = command.to_vec();
            args.extend(["--duration", value]);
            let output = percore(&args);
            assert_eq!(output.status.code(), Some(2), "{args:?}");
            let text = stderr(&output);
            assert!(
                text.starts_with(&format!("error: invalid value '{value}' for '--duration")),
                "{args:?}: {text}"
            );
            assert!(text.contains(why), "{args:?}: {text}");
        }
    }
}

#[test]
fn duration_flags_take_units_and_bare_seconds() {
    // Past flag parsing, `run` fails on the missing config: the duration was taken.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("missing.toml");
    for value in ["5s", "500ms", "2m", "10"] {
        let output = percore(&[
            "run",
            "--config",
            missing.to_str().expect("a UTF-8 path"),
            "--admin",
            "none",
            "--duration",
            value,
        ]);
        assert_eq!(output.status.code(), Some(1), "--duration {value}");
        let text = stderr(&output);
        assert!(
            text.contains(&missing.display().to_string()) && !text.contains("--duration"),
            "--duration {value}: {text}"
        );
    }
    let help = stdout(&percore(&["demo", "--help"]));
    assert!(help.contains("[default: 10s]"), "{help}");
}

#[test]
fn each_mock_lists_and_takes_only_its_own_flags() {
    let source = stdout(&percore(&["mock-source", "--help"]));
    let compute = stdout(&percore(&["mock-compute", "--help"]));
    for shared in [
        "--listen",
        "--service-time-us",
        "--error-rate",
        "--truncated-frame",
    ] {
        assert!(
            source.contains(shared),
            "mock-source --help lacks {shared}:\n{source}"
        );
        assert!(
            compute.contains(shared),
            "mock-compute --help lacks {shared}:\n{compute}"
        );
    }
    assert!(source.contains("--payload-bytes"), "{source}");
    assert!(!compute.contains("--payload-bytes"), "{compute}");
    for own in ["--model", "--output-datatype", "--output-shape"] {
        assert!(
            compute.contains(own),
            "mock-compute --help lacks {own}:\n{compute}"
        );
        assert!(
            !source.contains(own),
            "mock-source --help lists {own}:\n{source}"
        );
    }
    for (command, flag, value) in [
        ("mock-source", "--model", "resnet50"),
        ("mock-source", "--output-datatype", "INT8"),
        ("mock-source", "--output-shape", "1,3"),
        ("mock-compute", "--payload-bytes", "64"),
    ] {
        let output = percore(&[command, flag, value]);
        assert_eq!(output.status.code(), Some(2), "{command} {flag}");
        let text = stderr(&output);
        assert!(
            text.starts_with(&format!("error: unexpected argument '{flag}' found")),
            "{command} {flag}: {text}"
        );
    }
}

#[test]
fn bench_search_limits_are_checked_before_anything_starts() {
    for (args, message) in [
        (
            &["bench", "--stages", "--search-precision-pct", "0"][..],
            "error: --search-precision-pct: 0 must be greater than 0\n",
        ),
        (
            &["bench", "--latency-bound-us", "0"][..],
            "error: --latency-bound-us must be greater than 0\n",
        ),
    ] {
        let output = percore(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&output), message, "{args:?}");
    }
    let output = percore(&["bench", "--stages", "--concurrency", "8"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("'--stages' cannot be used with '--concurrency"));
}
