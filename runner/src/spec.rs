//! What to run and under which limits: the [`LaunchSpec`] the node hands the launcher.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The environment variable that carries the spec (JSON) from the node to the launcher and from
/// the supervisor to the exec stage. It lives only in those two processes: the program itself
/// gets exactly [`LaunchSpec::env`].
pub const SPEC_VAR: &str = "OUTPOST_LAUNCH_SPEC";

/// The first argument that turns an Outpost binary into the launcher.
pub const LAUNCHER_ARG: &str = "__outpost-launch";

/// Resource limits of a native process, each applied with `setrlimit` before `exec` (and so to
/// everything it starts). `None` leaves the node's own limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimits {
    /// Bytes of address space (`RLIMIT_AS`) of each process.
    pub address_space: Option<u64>,
    /// CPU seconds (`RLIMIT_CPU`) of each process: SIGXCPU, then SIGKILL a second later.
    pub cpu_seconds: Option<u64>,
    /// Open files (`RLIMIT_NOFILE`) of each process.
    pub open_files: Option<u64>,
    /// Processes of the user (`RLIMIT_NPROC`; the kernel does not apply it to root, so the pids
    /// controller of a cgroup bounds the tree as well where the node may create one).
    pub processes: Option<u64>,
}

/// The Landlock rules of a native process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// Apply Landlock at all.
    pub enabled: bool,
    /// Directories (and files) it may read and execute from, beside the system directories.
    pub read: Vec<PathBuf>,
    /// Directories it may write in (its workdir and read-write grants).
    pub write: Vec<PathBuf>,
    /// TCP ports it may connect to, where the kernel's ABI can restrict connections (4 and up);
    /// `None` leaves TCP alone.
    pub tcp_connect: Option<Vec<u16>>,
    /// Refuse to run the program unless every restriction is enforced.
    pub require_full: bool,
}

/// One native process: what to run, where, with which environment and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The program (a path, or a name looked up in `PATH` from [`Self::env`]).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (nothing of the node's is passed on otherwise).
    pub env: BTreeMap<String, String>,
    /// Its working directory (checked against `safe_paths` by [`crate::workdir`]).
    pub workdir: PathBuf,
    /// Resource limits.
    pub rlimits: Rlimits,
    /// Landlock rules.
    pub confinement: Confinement,
    /// Most processes the tree may hold at once, through a cgroup's pids controller where one
    /// can be made (`None`: no cgroup).
    pub max_processes: Option<u64>,
    /// How long the tree has between SIGTERM and SIGKILL when stopped.
    #[serde(with = "millis")]
    pub grace: Duration,
    /// Where the launcher writes what happened (confinement applied, how the program ended).
    pub status_file: PathBuf,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// How far Landlock could be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Every rule asked for is enforced.
    Full,
    /// Some are (an older kernel ABI: no TCP rules, say).
    Partial,
    /// None (no Landlock in this kernel, or not asked for).
    None,
}

impl Enforcement {
    /// The name used in capabilities and status files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Partial => "partial",
            Self::None => "none",
        }
    }
}

/// What the launcher writes to [`LaunchSpec::status_file`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchStatus {
    /// Landlock as applied before `exec` (`None` until the exec stage ran).
    pub enforcement: Option<Enforcement>,
    /// The kernel's Landlock ABI (0: none).
    pub landlock_abi: u32,
    /// Whether the program's process tree is in its own cgroup with a pids limit.
    pub pids_cgroup: bool,
    /// The program's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Why the program could not be started or was stopped, when it was.
    pub error: Option<String>,
    /// Processes of its tree still alive when it ended, and killed then.
    pub orphans_killed: u32,
}
