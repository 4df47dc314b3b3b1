//! The node's side of a native process: start it through the launcher, feed it, read its
//! output, stop it, and learn how it ended.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use crate::launcher::read_status;
use crate::spec::{Enforcement, LAUNCHER_ARG, LaunchSpec, SPEC_VAR};

/// Why a native process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The spec did not serialise (it always does; kept for the type's honesty).
    #[error("launch spec: {0}")]
    Spec(#[from] serde_json::Error),
    /// The launcher could not be started.
    #[error("cannot start the launcher {launcher}: {source}")]
    Launcher {
        /// The launcher executable.
        launcher: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How a native process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Why it could not start or was refused (Landlock required, rlimits), when that happened.
    pub error: Option<String>,
    /// Landlock as applied to it.
    pub enforcement: Option<Enforcement>,
    /// Its tree was held by a pids cgroup.
    pub pids_cgroup: bool,
    /// Processes it left behind, killed when it ended.
    pub orphans_killed: u32,
}

impl Exit {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.error.is_none()
    }
}

/// A running native process (its supervisor, which owns the tree).
#[derive(Debug)]
pub struct NativeProcess {
    child: Child,
    pid: i32,
    status_file: PathBuf,
    grace: Duration,
}

impl NativeProcess {
    /// Starts `spec` through `launcher` (an Outpost binary; see [`crate::launcher`]) with stdin,
    /// stdout and stderr piped.
    pub fn spawn(launcher: &Path, spec: &LaunchSpec) -> Result<Self, SpawnError> {
        let text = serde_json::to_string(spec)?;
        let _ = std::fs::remove_file(&spec.status_file);
        let child = tokio::process::Command::new(launcher)
            .arg(LAUNCHER_ARG)
            .arg("supervise")
            .env_clear()
            .env(SPEC_VAR, text)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The supervisor outlives a node that crashes (the next node start finds and stops
            // it), so dropping this handle must not kill it.
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| SpawnError::Launcher {
                launcher: launcher.display().to_string(),
                source,
            })?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or_default();
        Ok(Self {
            child,
            pid,
            status_file: spec.status_file.clone(),
            grace: spec.grace,
        })
    }

    /// The supervisor's pid (also the process group and session of the tree).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its stdin, once.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Its stdout, once.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Its stderr, once.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Asks the supervisor to stop the tree (SIGTERM, the grace period, SIGKILL).
    pub fn request_stop(&self) {
        signal(self.pid, Signal::Term);
    }

    /// Waits for the end and reads how it went.
    pub async fn wait(&mut self) -> Exit {
        let status = self.child.wait().await;
        self.exit(status.ok())
    }

    /// Stops the tree and waits for it: SIGTERM through the supervisor, and where the
    /// supervisor itself does not finish in the grace period and five seconds more, every
    /// descendant and the supervisor are SIGKILLed from here.
    pub async fn stop(&mut self) -> Exit {
        self.request_stop();
        let patience = self.grace + Duration::from_secs(5);
        match tokio::time::timeout(patience, self.child.wait()).await {
            Ok(status) => self.exit(status.ok()),
            Err(_) => {
                kill_tree_off_runtime(self.pid).await;
                let status = self.child.wait().await;
                self.exit(status.ok())
            }
        }
    }

    fn exit(&self, status: Option<std::process::ExitStatus>) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        let launch = read_status(&self.status_file);
        let (code, signal) = match (launch.exit_code, launch.signal) {
            (None, None) => {
                // The supervisor did not get to write (killed): its own status is all there is.
                let status = status.as_ref();
                (
                    status.and_then(std::process::ExitStatus::code),
                    status.and_then(ExitStatusExt::signal),
                )
            }
            known => known,
        };
        Exit {
            code,
            signal,
            error: launch.error,
            enforcement: launch.enforcement,
            pids_cgroup: launch.pids_cgroup,
            orphans_killed: launch.orphans_killed,
        }
    }
}

enum Signal {
    Term,
}

#[cfg(target_os = "linux")]
fn signal(pid: i32, which: Signal) {
    let signal = match which {
        Signal::Term => rustix::process::Signal::TERM,
    };
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

#[cfg(not(target_os = "linux"))]
fn signal(_: i32, _: Signal) {}

/// [`kill_tree_from_outside`] on a blocking thread (it reads `/proc` and sleeps between rounds).
async fn kill_tree_off_runtime(pid: i32) {
    let _ = tokio::task::spawn_blocking(move || kill_tree_from_outside(pid)).await;
}

/// SIGKILLs every descendant of `pid`, then `pid`.
#[cfg(target_os = "linux")]
fn kill_tree_from_outside(pid: i32) {
    crate::tree::kill_descendants(pid, Duration::from_secs(5));
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_tree_from_outside(_: i32) {}

/// Asks the supervisor `pid` to stop its tree (SIGTERM): for a caller that holds only the pid
/// (a guard dropped when a task is cancelled).
pub fn signal_stop(pid: i32) {
    signal(pid, Signal::Term);
}

/// Whether `pid` is a launcher's supervisor (and not a pid reused by something else since):
/// what the node checks before stopping a process named in a pid file left by a crash.
pub fn is_supervisor(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.get(1) == Some(&LAUNCHER_ARG.as_bytes()) && args.get(2) == Some(&&b"supervise"[..])
        })
        .unwrap_or(false)
}

/// Stops a supervisor left by an earlier node process (found through its pid file): SIGTERM,
/// then SIGKILL of the tree after `grace`. Returns whether there was one to stop.
pub async fn stop_orphaned_supervisor(pid: i32, grace: Duration) -> bool {
    if !is_supervisor(pid) {
        return false;
    }
    signal(pid, Signal::Term);
    let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if !is_supervisor(pid) || crate::tree::is_zombie(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill_tree_off_runtime(pid).await;
    true
}

/// The last `cap` bytes of a stream, and how many came before them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// The bytes kept.
    pub bytes: Vec<u8>,
    /// Bytes dropped from the front.
    pub dropped: u64,
}

/// Reads `reader` to its end keeping the last `cap` bytes (memory stays at `cap` plus one read).
pub async fn read_tail(mut reader: impl tokio::io::AsyncRead + Unpin, cap: usize) -> Tail {
    let mut tail = Tail::default();
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => {
                tail.bytes.extend_from_slice(&buf[..n]);
                if tail.bytes.len() > cap {
                    let excess = tail.bytes.len() - cap;
                    tail.bytes.drain(..excess);
                    tail.dropped += u64::try_from(excess).unwrap_or(u64::MAX);
                }
            }
        }
    }
}
