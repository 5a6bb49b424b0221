//! Pivot's v1 gRPC contract: generated messages and services, and the checked conversions
//! from wire messages to the domain types the agent and controller work with.
//!
//! The `.proto` files under `proto/pivot/v1/` are the API. Everything that crosses a socket is
//! converted here, at the edge, into types whose invariants hold (a known enum value, a present
//! field, a finite number); a message that does not convert is answered with `InvalidArgument`
//! naming the field, and nothing changes.

pub mod codec;
pub mod model;
pub mod report;

/// Generated code for package `pivot.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("pivot.v1");
}

/// Encoded `FileDescriptorSet` of the v1 contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pivot_v1_descriptor.bin"));

pub use model::FieldError;
