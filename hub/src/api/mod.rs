//! The hub's adapters for callers: they authenticate, translate the wire format and call the
//! subsystems, and hold no rules of their own.
//!
//! - [`access`]: who may do what — one rule for every surface.
//! - [`gate`]: what a gRPC call must carry before its body is read; [`connections`]: how many
//!   gRPC connections the hub holds at once.
//! - [`grpc`]: internal gRPC (tonic over rustls): join, bootstrap tokens, the node registry,
//!   health and reflection; [`grpc_tasks`]: the task and tool services.
//! - [`rest`]: the REST API (axum) under `/api/admin/`.
//! - [`openapi`]: the REST API's OpenAPI 3.1 document (the router is built from it).
//! - [`mcp`]: the fleet as MCP tools, at `/mcp` and over stdio (`outpost mcp`).
//! - [`views`]: JSON shapes shared by REST and the CLI's `--json` output; [`actor_views`]: the
//!   actor layer's, and [`grpc_actors`] its gRPC service.

pub mod access;
pub mod actor_views;
pub mod connections;
pub mod gate;
pub mod grpc;
pub mod grpc_actors;
pub mod grpc_agents;
pub mod grpc_audit;
pub mod grpc_tasks;
pub mod https;
pub mod mcp;
pub mod openapi;
pub mod rest;
pub mod rest_actors;
pub mod rest_agents;
pub mod views;
