//! Compiles `proto/` into prost messages at build time.
//!
//! protox parses the .proto files in pure Rust, so building percore needs no system
//! `protoc`. `bytes` fields become `bytes::Bytes`, which lets the dispatcher forward
//! a fetched tensor into a ModelInfer request as a slice of the received buffer.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/grpc_predict_v2.proto",
        "proto/percore_source.proto",
        "proto/grpc_health_v1.proto",
        "proto/percore_journal.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
