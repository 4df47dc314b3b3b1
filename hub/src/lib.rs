//! The Outpost control plane, as a library; the `outpost` binary (crate `outpost-cli`) runs it.
//!
//! Folders by layer:
//! - [`api`]: the adapters callers reach: internal gRPC, REST, and the JSON views they share.
//! - [`fleet`]: node liveness (pure, injected clock), the QUIC session endpoint, heartbeat
//!   channel, links down to nodes, and the node registry's rules.
//! - [`work`]: placement (pure), the task engine and the tool registry.
//! - [`actors`]: durable mailboxes between actors, teams, time triggers and permission reviews.
//! - [`audit`]: the durable log of every write, who made it and how it ended.
//! - [`console`]: the operator's web console (server-rendered pages, live over SSE).
//! - [`credentials`]: the hub's CA and the join handshake with bootstrap tokens.
//! - [`store`]: durable state behind the [`store::Store`] trait (SQLite, PostgreSQL, in-memory).
//! - [`hub`]: the composition root that starts and stops all of it; [`state`]: what the
//!   subsystems share; [`telemetry`]: the Prometheus metrics.

pub mod actors;
pub mod api;
pub mod audit;
pub mod console;
pub mod credentials;
pub mod fleet;
pub mod hub;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod work;

pub use hub::{HubAddrs, HubHandle, start};
