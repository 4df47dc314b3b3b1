//! The fleet: which nodes exist, which are alive, and how the hub reaches them.
//!
//! - [`liveness`]: node liveness as a pure state machine ([`FleetState`]: heartbeat TTL, grace,
//!   offline, draining, fenced) on an injected clock.
//! - [`sessions`]: the QUIC endpoint that accepts node sessions and feeds heartbeats and events in.
//! - [`heartbeat_channel`]: the sealed UDP heartbeat packets on the QUIC port.
//! - [`links`]: commands from the hub down to one node ([`links::NodeLink`]).
//! - [`registry`]: the operator-facing node records, with the rules REST and gRPC share.

pub mod heartbeat_channel;
pub mod links;
pub mod liveness;
pub mod registry;
pub mod sessions;

pub use liveness::{FleetPolicy, FleetState, NodeStatus, StatusChange};
