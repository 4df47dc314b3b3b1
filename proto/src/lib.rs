//! The hub↔node contract of Outpost.
//!
//! - [`v1`]: the protobuf messages and gRPC services of package `outpost.v1`, generated at build
//!   time from `proto/outpost/v1/outpost.proto` with protox and tonic-prost-build.
//! - [`framing`]: how those messages travel on QUIC streams (length-delimited frames with a size cap).
//! - [`heartbeat_channel`]: heartbeats as sealed UDP packets on the hub's QUIC port, keyed from
//!   the session's TLS exporter.
//! - [`close_code`]: the QUIC application close codes either end of a session sends.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC reflection.

pub mod framing;
pub mod heartbeat_channel;

/// QUIC application close codes of a node session, sent with a reason text the other end logs.
pub mod close_code {
    /// The side closing is shutting down (hub or node).
    pub const SHUTDOWN: u32 = 0;
    /// Credentials refused.
    pub const UNAUTHORIZED: u32 = 1;
    /// The node is not (or no longer) in the registry.
    pub const UNKNOWN_NODE: u32 = 2;
    /// A newer session from the same node replaced this one.
    pub const SUPERSEDED: u32 = 3;
    /// The peer broke the protocol.
    pub const PROTOCOL: u32 = 4;
}

/// Generated messages and services of package `outpost.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("outpost.v1");
}

/// Encoded `FileDescriptorSet` of every `.proto` file in this crate, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/outpost_descriptor.bin"));
