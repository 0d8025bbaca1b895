//! The Python side: the venv the benchmark creates (grpcio, grpcio-tools, protobuf
//! at pinned versions) and the gRPC stubs generated from percore's `proto/` into it.
//! Nothing generated is committed: both live under the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Pinned so runs on different days use the same client; versions on PyPI as of
/// this benchmark (grpcio-tools 1.85.1 needs protobuf >= 7.35.1).
const PACKAGES: [&str; 3] = ["grpcio==1.85.1", "grpcio-tools==1.85.1", "protobuf==7.36.2"];

/// The protos percore speaks, generated into the stubs directory.
const PROTOS: [&str; 2] = ["percore_source.proto", "grpc_predict_v2.proto"];

/// A ready Python environment.
pub struct Python {
    /// The venv's interpreter.
    pub interpreter: PathBuf,
    /// Where the generated `*_pb2.py` modules are.
    pub stubs: PathBuf,
    /// `benches/compare/client.py`.
    pub client: PathBuf,
    /// "Python 3.x.y, grpcio 1.85.1", for the report.
    pub versions: String,
}

/// Creates the venv at `venv` if it lacks the packages, then (re)generates the stubs.
pub fn prepare(venv: &Path, manifest_dir: &Path) -> Result<Python, String> {
    let interpreter = venv.join("bin").join("python");
    let has_packages = interpreter.exists()
        && run_quiet(
            Command::new(&interpreter).args(["-c", &import_check()]),
            "python venv: checking the packages",
        )
        .is_ok();
    if !has_packages {
        eprintln!(
            "compare: creating the python venv {} ({})",
            venv.display(),
            PACKAGES.join(" ")
        );
        run_quiet(
            Command::new("python3").arg("-m").arg("venv").arg(venv),
            "python venv: python3 -m venv failed",
        )?;
        run_quiet(
            Command::new(&interpreter)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(PACKAGES),
            "python venv: pip install failed",
        )?;
        run_quiet(
            Command::new(&interpreter).args(["-c", &import_check()]),
            "python venv: the packages do not import after pip install",
        )?;
    }
    let stubs = venv.join("percore_stubs");
    std::fs::create_dir_all(&stubs)
        .map_err(|error| format!("python stubs: cannot create {}: {error}", stubs.display()))?;
    let proto_dir = manifest_dir.join("proto");
    let out = format!("{}", stubs.display());
    run_quiet(
        Command::new(&interpreter)
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", proto_dir.display()))
            .arg(format!("--python_out={out}"))
            .arg(format!("--grpc_python_out={out}"))
            .args(PROTOS.iter().map(|proto| proto_dir.join(proto))),
        "python stubs: grpc_tools.protoc failed",
    )?;
    let versions = run_quiet(
        Command::new(&interpreter).args([
            "-c",
            "import sys, grpc, google.protobuf as p; \
             print(f'Python {sys.version.split()[0]}, grpcio {grpc.__version__}, protobuf {p.__version__}')",
        ]),
        "python venv: reading versions",
    )?;
    Ok(Python {
        interpreter,
        stubs,
        client: manifest_dir
            .join("benches")
            .join("compare")
            .join("client.py"),
        versions: versions.trim().to_string(),
    })
}

fn import_check() -> String {
    let wanted: Vec<String> = PACKAGES
        .iter()
        .map(|pin| {
            let (name, version) = pin.split_once("==").expect("pinned");
            format!("('{name}', '{version}')")
        })
        .collect();
    format!(
        "import grpc, grpc_tools, google.protobuf\n\
         from importlib.metadata import version\n\
         for name, wanted in [{}]:\n    assert version(name) == wanted, (name, version(name))",
        wanted.join(", ")
    )
}

/// Runs a command to completion; its stdout, or `what: …` with its stderr.
fn run_quiet(command: &mut Command, what: &str) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|error| format!("{what}: cannot start {:?}: {error}", command.get_program()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{what} ({}): {}",
            output.status,
            tail.join("\n    ")
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
