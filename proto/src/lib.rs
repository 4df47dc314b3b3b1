//! The hub↔node contract of Outpost.
//!
//! - [`v1`]: the protobuf messages and gRPC services of package `outpost.v1`, generated at build
//!   time from `proto/outpost/v1/outpost.proto` with protox and tonic-prost-build.
//! - [`framing`]: how those messages travel on QUIC streams (length-delimited frames with a size cap).
//! - [`heartbeat_channel`]: heartbeats as sealed UDP packets on the hub's QUIC port, keyed from
//!   the session's TLS exporter.
//! - [`close_code`]: the QUIC application close codes either end of a session sends.
//! - [`limits`]: the sizes both ends of a session hold each other to.
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

/// Sizes both ends of a session hold each other to. The node fits every result inside them (a
/// result that cannot fit fails with `output_limit` on the node), so a result is never refused
/// on the way and never blocks the results behind it.
pub mod limits {
    /// Largest task output (the tool's returned value) a result carries to the hub. A policy's
    /// `max_output` above it is lowered to it on the node, so the sandbox stops such a tool
    /// with `output_limit` as soon as its output passes this.
    pub const MAX_RESULT_OUTPUT: usize = 4 * 1024 * 1024;
    /// How much of a call's stdout, and of its stderr, a result keeps (the tail).
    pub const MAX_RESULT_LOG: usize = 64 * 1024;
    /// Longest error message a result carries.
    pub const MAX_RESULT_MESSAGE: usize = 16 * 1024;
    /// Largest event frame the hub reads: a result at every limit above, with room to spare
    /// for its other fields.
    pub const MAX_EVENT_FRAME: usize =
        MAX_RESULT_OUTPUT + 2 * MAX_RESULT_LOG + MAX_RESULT_MESSAGE + 64 * 1024;
    /// Largest chunk of agent output one `AgentOutput` frame carries.
    pub const MAX_AGENT_CHUNK: usize = 64 * 1024;
    /// Largest `AgentOutput` frame the hub reads.
    pub const MAX_AGENT_FRAME: usize = MAX_AGENT_CHUNK + 1024;
    /// Longest line of input for an agent (checked by the hub and again by the node).
    pub const MAX_AGENT_INPUT_LINE: usize = 64 * 1024;
    /// Longest reason an agent's status carries (a node's longer text is cut).
    pub const MAX_AGENT_REASON: usize = 4 * 1024;
    /// Most bytes of an agent's output the hub keeps for late subscribers (the tail).
    pub const AGENT_TAIL_BYTES: usize = 256 * 1024;
}

/// Generated messages and services of package `outpost.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("outpost.v1");
}

/// Encoded `FileDescriptorSet` of every `.proto` file in this crate, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/outpost_descriptor.bin"));
