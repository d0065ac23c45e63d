//! Compiles `proto/` without a system `protoc` (protox, pure Rust) and writes
//! the file descriptor set next to the generated code, for server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/segmenta/v1/segmenta.proto";
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("segmenta_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Raw row bytes stay a view of the received buffer (no copy).
        .bytes(".segmenta.v1.RowBlock.values_f32le")
        .compile_fds(fds)?;
    Ok(())
}
