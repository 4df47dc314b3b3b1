//! Paths of the guest tools, built for `wasm32-wasip2` by this crate's build script.
//!
//! The tools live in `guests/tools` (their own workspace): `echo`, `wordcount`, `hostile`, `busy`,
//! `bulky`, `gpu-job`, `add`, `bad-schema` and `ponger` (an actor). Tests and benches depend on this crate and name a tool by function; the build
//! script has already built it, so no test spells a build command.

use std::path::PathBuf;

/// Folder holding the built components (`<name>.wasm`).
pub const GUESTS_DIR: &str = env!("OUTPOST_GUESTS_DIR");

/// Path of the built component for the guest crate `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(GUESTS_DIR).join(format!("{name}.wasm"))
}

/// `echo`: returns its input.
pub fn echo() -> PathBuf {
    path("echo")
}

/// `wordcount`: counts words in the files (granted) named by its input.
pub fn wordcount() -> PathBuf {
    path("wordcount")
}

/// `hostile`: attacks its sandbox; the input selects the attack.
pub fn hostile() -> PathBuf {
    path("hostile")
}

/// `busy`: CPU-bound, no host calls.
pub fn busy() -> PathBuf {
    path("busy")
}

/// `bulky`: about 2 MB of code, for compile benchmarks.
pub fn bulky() -> PathBuf {
    path("bulky")
}

/// `gpu-job`: reports the GPUs assigned to it (`CUDA_VISIBLE_DEVICES`); the demo's GPU task.
pub fn gpu_job() -> PathBuf {
    path("gpu_job")
}

/// `add`: sums `{"a": N, "b": N}` (an input schema that describes an object).
pub fn add() -> PathBuf {
    path("add")
}

/// `bad-schema`: describes an unusable input schema; pushes of it are refused.
pub fn bad_schema() -> PathBuf {
    path("bad_schema")
}

/// `ponger`: an actor agent answering each message with a pong (the `actor` world).
pub fn ponger() -> PathBuf {
    path("ponger")
}

/// The `echo` component's bytes, built into the binary (for `outpost demo`).
pub const ECHO_COMPONENT: &[u8] = include_bytes!(concat!(env!("OUTPOST_GUESTS_DIR"), "/echo.wasm"));

/// The `gpu-job` component's bytes, built into the binary (for `outpost demo`).
pub const GPU_JOB_COMPONENT: &[u8] =
    include_bytes!(concat!(env!("OUTPOST_GUESTS_DIR"), "/gpu_job.wasm"));
