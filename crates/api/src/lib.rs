//! Generated types, clients and servers for every imaged contract.
//!
//! All wire types come from `proto/` through this one crate, so no service
//! or client writes a wire type by hand.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

/// The `imaged.v1` package: the public `Images` API and the internal
/// `Metadata`, `Transfer` and `EventLog` contracts.
pub mod v1 {
    tonic::include_proto!("imaged.v1");
}

/// The encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/imaged_descriptor.bin"));
