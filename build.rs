//! Generates the config service's gRPC code from proto/ at build time (no
//! generated code is checked in). protox compiles the proto in Rust, so no
//! `protoc` binary is needed; the descriptor set also feeds server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tenantconfig/v1/config.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tenantconfig_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
