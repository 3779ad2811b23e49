//! The generated gRPC code of `proto/tenantconfig/v1/config.proto`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("tenantconfig.v1");

/// The encoded descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tenantconfig_descriptor");
