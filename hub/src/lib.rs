//! The Outpost control plane.
//!
//! - [`hub`]: start and stop a hub (PKI, store, listeners, background tasks).
//! - [`fleet`]: node liveness as a pure state machine (heartbeat TTL, offline, draining, fenced).
//! - [`join`]: the hub side of the token challenge-response and CSR signing; [`pki`]: the CA.
//! - [`store`]: durable state behind the [`store::Store`] trait (SQLite, PostgreSQL, in-memory).
//! - [`registry`]: the node registry rules shared by [`rest`] (axum) and [`grpc`] (tonic).
//! - [`session_server`]: the QUIC endpoint for node sessions; [`links`]: commands down to nodes.
//! - [`scheduler`]: task placement as pure logic; [`tasks`]: submit, dispatch, results, requeue.
//! - [`cli`]: the `outpost` command line; [`demo`]: `outpost demo`.

pub mod cli;
pub mod demo;
pub mod fleet;
pub mod grpc;
pub mod grpc_tasks;
pub mod heartbeat_channel;
pub mod hub;
pub mod join;
pub mod links;
pub mod pki;
pub mod registry;
pub mod rest;
pub mod scheduler;
pub mod session_server;
pub mod state;
pub mod store;
pub mod task_cli;
pub mod tasks;
pub mod tool_cli;
pub mod tools;
pub mod views;

pub use hub::{HubAddrs, HubHandle, start};
