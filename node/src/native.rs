//! Native commands on the node (`tasks submit --command`): run by `/bin/sh -c` through the
//! launcher ([`outpost_runner`]), in a workdir inside `safe_paths`, with a cleared environment,
//! Landlock where the kernel has it, a pids cgroup where one can be made, a wall-time limit and
//! capped output.
//!
//! Each attempt leaves a pid file in `<data dir>/native/` while it runs. A node that crashed
//! leaves its supervisors running; the next start finds them by those files and stops them
//! ([`NativeRunner::stop_orphans`]), so an attempt the hub placed again never runs twice.
//!
//! An attempt's output goes to the hub live on a stream of its own ([`crate::output`]) while
//! its tails are kept for the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use outpost_proto::limits::{MAX_RESULT_LOG, MAX_RESULT_OUTPUT};
use outpost_proto::v1::{
    AgentOutput, NodeEvent, RunTask, TaskOutputStream, TaskResult, node_event,
};
use outpost_runner::process::Tail;
use outpost_runner::{Confinement, LaunchSpec, NativeProcess, Rlimits};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

/// Wall-time limit of a command that names none.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wall time a command may ask for (the hub's cap too).
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);
/// Processes (and threads) one command's tree may hold where a pids cgroup can be made.
pub const MAX_COMMAND_PROCESSES: u64 = 1024;
/// Time between SIGTERM and SIGKILL when a command is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// The PATH a command gets when the node has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What the node lets native commands reach and how it starts them.
#[derive(Debug, Clone)]
pub struct NativeRunner {
    /// The launcher executable.
    pub launcher: PathBuf,
    /// Where workdirs must lie (`[node] safe_paths`); also what commands may read.
    pub safe_paths: Vec<PathBuf>,
    /// The node's own state, which no workdir may overlap.
    pub protected: Vec<PathBuf>,
    /// Variables of the node's environment passed on (`[node] env_allow`), beside PATH.
    pub env_allow: Vec<String>,
    /// Apply Landlock (the probe found it in this kernel).
    pub landlock: bool,
    /// `[sandbox] require_landlock`.
    pub require_landlock: bool,
    /// `[sandbox] tcp_connect`: the TCP ports programs may connect to (`None`: any).
    pub tcp_connect: Option<Vec<u16>>,
    /// Pid and status files of running attempts.
    pub runs_dir: PathBuf,
    /// The hub session live output goes over.
    pub link: crate::output::SessionLink,
}

/// How long a finished attempt waits for its live output to reach the hub before reporting.
const LIVE_DRAIN: Duration = Duration::from_secs(5);

/// Reads a pipe to its end keeping the last `cap` bytes, and sends what it reads on `live` as
/// `stream` chunks while `live` takes them (it waits when `live` is full: backpressure).
async fn read_tail_live(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    cap: usize,
    stream: &'static str,
    live: mpsc::Sender<AgentOutput>,
) -> Tail {
    use tokio::io::AsyncReadExt as _;
    let mut live = Some(live);
    let mut tail = Tail::default();
    let mut buf = vec![0_u8; outpost_proto::limits::MAX_AGENT_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => {
                if let Some(sender) = &live {
                    let chunk = AgentOutput {
                        stream: stream.into(),
                        data: buf[..n].to_vec(),
                    };
                    if sender.send(chunk).await.is_err() {
                        live = None;
                    }
                }
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

/// Sends SIGTERM to a supervisor when dropped while armed: an attempt aborted (cancelled, or the
/// node stopping) takes its process tree with it.
struct StopOnDrop(Option<i32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            outpost_runner::process::signal_stop(pid);
        }
    }
}

fn failure(base: TaskResult, kind: &str, message: String) -> TaskResult {
    TaskResult {
        ok: false,
        error_kind: kind.into(),
        error_message: message,
        ..base
    }
}

fn text(tail: &Tail) -> String {
    let body = String::from_utf8_lossy(&tail.bytes);
    if tail.dropped == 0 {
        body.into_owned()
    } else {
        format!("[{} bytes dropped]\n{body}", tail.dropped)
    }
}

impl NativeRunner {
    /// What every native program gets: PATH (the node's, or a default) and HOME (its workdir).
    pub fn base_environment(&self, workdir: &Path) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
        );
        env.insert("HOME".to_string(), workdir.display().to_string());
        env
    }

    /// The environment of a command: PATH, HOME (its workdir), the allowed variables the node
    /// has, then what the hub adds (GPU devices, the task id).
    fn environment(
        &self,
        workdir: &Path,
        extra: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()),
        );
        env.insert("HOME".to_string(), workdir.display().to_string());
        for key in &self.env_allow {
            if let Ok(value) = std::env::var(key) {
                env.insert(key.clone(), value);
            }
        }
        env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Runs one attempt of a command to its end and reports it.
    pub async fn run(&self, command: RunTask) -> TaskResult {
        let started = Instant::now();
        let base = TaskResult {
            task_id: command.task_id.clone(),
            attempt: command.attempt,
            ..TaskResult::default()
        };
        let asked = if command.workdir.is_empty() {
            match self.safe_paths.first() {
                Some(first) => first.clone(),
                None => {
                    return failure(
                        base,
                        "policy_invalid",
                        "this node has no safe_paths, so a command has nowhere to run: set \
                         [node] safe_paths"
                            .into(),
                    );
                }
            }
        } else {
            PathBuf::from(&command.workdir)
        };
        let workdir =
            match outpost_runner::workdir::resolve(&asked, &self.safe_paths, &self.protected) {
                Ok(workdir) => workdir,
                Err(e) => return failure(base, "policy_invalid", e.to_string()),
            };
        let timeout = match command.timeout_ms {
            0 => DEFAULT_COMMAND_TIMEOUT,
            ms => Duration::from_millis(ms).min(MAX_COMMAND_TIMEOUT),
        };
        let run_name = format!("{}-{}", safe_name(&command.task_id), command.attempt);
        if let Err(e) = std::fs::create_dir_all(&self.runs_dir) {
            return failure(
                base,
                "node_error",
                format!("cannot create {}: {e}", self.runs_dir.display()),
            );
        }
        let extra: BTreeMap<String, String> = command.env.clone().into_iter().collect();
        let spec = LaunchSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), command.command.clone()],
            env: self.environment(&workdir, &extra),
            workdir: workdir.clone(),
            rlimits: Rlimits::default(),
            confinement: Confinement {
                enabled: self.landlock || self.require_landlock,
                read: self.safe_paths.clone(),
                write: vec![workdir.clone()],
                tcp_connect: self.tcp_connect.clone(),
                require_full: self.require_landlock,
            },
            max_processes: Some(MAX_COMMAND_PROCESSES),
            grace: STOP_GRACE,
            status_file: self.runs_dir.join(format!("{run_name}.status")),
        };
        let mut process = match NativeProcess::spawn(&self.launcher, &spec) {
            Ok(process) => process,
            Err(e) => return failure(base, "node_error", e.to_string()),
        };
        let pid_file = self.runs_dir.join(format!("{run_name}.pid"));
        let _ = std::fs::write(&pid_file, process.pid().to_string());
        let mut guard = StopOnDrop(Some(process.pid()));
        if let Some(mut stdin) = process.take_stdin() {
            let input = command.input.clone().into_bytes();
            tokio::spawn(async move {
                // A command that never reads its stdin closes it: that is no error.
                let _ = stdin.write_all(&input).await;
            });
        }
        // The output goes live to the hub (as far as the result holds it) while the tails
        // for the result are kept here.
        let (chunks, chunks_rx) = mpsc::channel::<AgentOutput>(8);
        let forwarder = tokio::spawn(crate::output::forward(
            self.link.subscribe(),
            NodeEvent {
                kind: Some(node_event::Kind::TaskOutputStream(TaskOutputStream {
                    task_id: command.task_id.clone(),
                    attempt: command.attempt,
                })),
            },
            chunks_rx,
            u64::try_from(MAX_RESULT_OUTPUT + MAX_RESULT_LOG).unwrap_or(u64::MAX),
            Arc::new(AtomicU64::new(0)),
        ));
        let stdout = process.take_stdout().map(|out| {
            tokio::spawn(read_tail_live(
                out,
                MAX_RESULT_OUTPUT,
                "stdout",
                chunks.clone(),
            ))
        });
        let stderr = process.take_stderr().map(|err| {
            tokio::spawn(read_tail_live(
                err,
                MAX_RESULT_LOG,
                "stderr",
                chunks.clone(),
            ))
        });
        drop(chunks);
        let (exit, timed_out) = match tokio::time::timeout(timeout, process.wait()).await {
            Ok(exit) => (exit, false),
            Err(_) => (process.stop().await, true),
        };
        guard.0 = None;
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(&spec.status_file);
        let collect = async |reader: Option<tokio::task::JoinHandle<Tail>>| match reader {
            Some(reader) => reader.await.unwrap_or_default(),
            None => Tail::default(),
        };
        let stdout = collect(stdout).await;
        let stderr = collect(stderr).await;
        // Everything live is with the hub before the result, so a follower sees it all.
        let _ = tokio::time::timeout(LIVE_DRAIN, forwarder).await;
        let mut result = TaskResult {
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            output: text(&stdout),
            stderr: text(&stderr),
            ..base
        };
        if timed_out {
            result.error_kind = "timeout".into();
            result.error_message = format!(
                "the command ran past its wall-time limit of {} and was stopped",
                humantime_secs(timeout)
            );
        } else if exit.success() {
            result.ok = true;
        } else if let Some(error) = exit.error.clone() {
            result.error_kind = if exit.code == Some(126) {
                "policy_invalid".into()
            } else {
                "tool_error".into()
            };
            result.error_message = error;
        } else {
            result.error_kind = "tool_error".into();
            let how = match (exit.code, exit.signal) {
                (Some(code), _) => format!("the command exited with code {code}"),
                (None, Some(signal)) => format!("the command was killed by signal {signal}"),
                _ => "the command ended without a status".into(),
            };
            let last: String = result
                .stderr
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            result.error_message = if last.is_empty() {
                how
            } else {
                format!("{how}; stderr ends: {last}")
            };
        }
        result
    }

    /// Stops the supervisors a crashed node process left running (named by pid files), and
    /// removes the files. Returns how many were stopped.
    pub async fn stop_orphans(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.runs_dir) else {
            return 0;
        };
        let mut stopped = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pid") {
                continue;
            }
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok());
            if let Some(pid) = pid
                && outpost_runner::process::stop_orphaned_supervisor(pid, STOP_GRACE).await
            {
                tracing::warn!(pid, file = %path.display(), "stopped a command left running by an earlier node process");
                stopped += 1;
            }
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(path.with_extension("status"));
        }
        stopped
    }
}

/// A task or agent id as a file name: letters, digits, `-` and `_` kept, everything else `_`.
pub(crate) fn safe_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_become_plain_file_names() {
        assert_eq!(safe_name("task-01_x"), "task-01_x");
        assert_eq!(safe_name("../../etc/passwd"), "______etc_passwd");
    }
}
