//! Native processes on an Outpost node: agents and one-shot `--command` tasks.
//!
//! The node never forks a program itself. It starts the *launcher* (any Outpost binary given
//! [`spec::LAUNCHER_ARG`] as its first argument; see [`launcher`]), which supervises the
//! program's whole process tree and applies rlimits and Landlock before `exec`. The node then
//! talks to the supervisor: pipes for stdin, stdout and stderr, SIGTERM to stop, its exit
//! status and a status file for how the program ended ([`process`]).
//!
//! - [`spec`]: what to run and under which limits.
//! - [`workdir`]: a working directory checked against the node's `safe_paths`.
//! - [`tree`]: a process tree read from `/proc`, and signalling it.
//! - [`launcher`]: the supervisor, the exec stage and the Landlock probe.
//! - [`process`]: the node's handle on a running process.

pub mod launcher;
pub mod process;
pub mod spec;
pub mod tree;
pub mod workdir;

pub use launcher::run_if_launcher;
pub use process::{Exit, NativeProcess};
pub use spec::{Confinement, Enforcement, LaunchSpec, Rlimits};
