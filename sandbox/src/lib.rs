//! The WebAssembly sandbox: runs agent tools (components of the `outpost:guest/tool` world) under
//! the limits and grants of their policy.
//!
//! - [`policy`]: `policy.toml`, parsed with line-and-key errors, resolved against `safe_paths`.
//! - [`runtime`]: one [`Sandbox`] per node (engine with pooling and epoch ticker, linker, compile
//!   cache), a [`LoadedTool`] per tool, a fresh limited store per call.
//! - [`outcome`]: [`ErrorKind`], [`SandboxError`] and the [`CallReport`] of a call.
//! - [`capture`]: capped stdout/stderr.
//! - [`cache`]: compiled components on disk, keyed by content and engine.

/// What nodes advertise about the sandbox in their capabilities.
pub const RUNTIME_DESCRIPTION: &str = "wasmtime 48 running outpost:guest/tool@0.1.0 components \
     (WASI preview 2; fuel, wall-time, memory, table and output limits; fs, env and network grants)";

pub mod cache;
pub mod capture;
mod guarded_fs;
mod guarded_net;
pub mod outcome;
pub mod policy;
pub mod runtime;

pub use outcome::{
    ActorMessage, CallReport, ErrorKind, LogLevel, LogRecord, QueuedMessage, SandboxError,
    ToolDescription,
};
pub use policy::{FsAccess, FsGrant, Fuel, Limits, Placement, ResolvedPolicy, ToolPolicy};
pub use runtime::{LoadedTool, Sandbox, SandboxConfig};

/// The digest that names a component everywhere (tool store, compile cache, `RunTask`): the
/// lower-case hex SHA-256 of its bytes.
pub fn component_digest(wasm: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, wasm))
}
