//! End-to-end tests: one binary, a module per area (as wasmtime's `tests/all`).
// Tests and their helpers fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod actors;
mod agents;
mod audit;
mod auth;
mod clocks;
mod console;
mod credentials;
mod direct_route;
mod doctor;
mod fleet;
mod fuzz;
mod grpc_surface;
mod heartbeat_channel;
mod https;
mod in_memory;
mod mcp;
mod metrics;
mod native;
mod nvml;
mod own_state;
mod rest;
mod results;
mod sandbox;
mod signed_tools;
mod tasks;
