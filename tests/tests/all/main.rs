//! End-to-end tests: one binary, a module per area (as wasmtime's `tests/all`).

mod auth;
mod fleet;
mod grpc_surface;
mod rest;
