//! Compiles `proto/` into prost messages at build time, and etcd's API into tonic
//! client stubs.
//!
//! protox parses the .proto files in pure Rust, so building percore needs no system
//! `protoc`. `bytes` fields become `bytes::Bytes`, which lets the dispatcher forward
//! a fetched tensor into a ModelInfer request as a slice of the received buffer.
//! etcd's messages (`proto/etcd_rpc.proto`) go through tonic-prost-build from the
//! same protox descriptors: its client stubs run on the control plane's tokio
//! runtime (`src/cluster/etcd/`), never on a shard.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/grpc_predict_v2.proto",
        "proto/percore_source.proto",
        "proto/grpc_health_v1.proto",
        "proto/percore_journal.proto",
    ];
    let etcd = "proto/etcd_rpc.proto";
    for proto in protos.iter().chain([&etcd]) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    let etcd_descriptors = protox::compile([etcd], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_fds(etcd_descriptors)?;
    Ok(())
}
