//! Compiles `pivot/v1/*.proto` with protox (pure Rust: no protoc needed) and generates the
//! tonic/prost code, plus the encoded descriptor set that gRPC server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "pivot/v1/devices.proto",
    "pivot/v1/intents.proto",
    "pivot/v1/agent.proto",
    "pivot/v1/fleet.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=pivot");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["."])?;
    std::fs::write(out_dir.join("pivot_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::PivotCodec")
        .compile_fds(fds)?;
    Ok(())
}
