//! Agents on the node: long-running processes the hub starts, feeds, watches and stops, and WASM
//! agents, a tool invoked once per line of input.
//!
//! Each native run goes through the launcher like a native command ([`crate::native`]): workdir inside
//! `safe_paths`, cleared environment, rlimits, Landlock, a pids cgroup, the whole tree stopped.
//! Its output goes to the hub on a QUIC uni stream of its own (an `AgentOutputStream` frame, then
//! `AgentOutput` frames), so one chatty agent never waits for another; a pump holds at most one
//! chunk, so when the hub reads slowly (or the session is down) the pipe fills and the agent's
//! own writes wait: backpressure, never unbounded buffering. Status changes go as events and are
//! sent again until a session takes them.
//!
//! A WASM agent's run holds no process: its tool (installed on the node before the start) is
//! compiled once, and each input line is one `invoke` in a fresh instance under the tool's policy
//! and limits; what the call printed and returned goes out on the agent's output stream like a
//! native agent's output, and a failed call is reported there without ending the run. A stop or
//! the run's wall-time limit interrupts a call in flight.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use outpost_proto::limits::MAX_AGENT_INPUT_LINE as MAX_INPUT_LINE;
use outpost_proto::v1::{
    AgentInput, AgentOutput, AgentOutputStream, AgentRef, AgentStatus, NodeEvent, RemoveWorktree,
    StartAgent, node_event, node_reply,
};
use outpost_runner::{Confinement, LaunchSpec, NativeProcess, Rlimits};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{Notify, mpsc};

use crate::native::{MAX_COMMAND_PROCESSES, NativeRunner, STOP_GRACE, safe_name};
use crate::output::{self, SessionLink};
use crate::tasks::TaskRunner;
use crate::worktree::{self, PathRules, WorkdirMode};

/// Output one run forwards when its start names no limit.
pub const DEFAULT_MAX_OUTPUT: u64 = 16 << 20;
/// How long a run that ended waits for the rest of its output to reach the hub.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// What the hub's `env` may set: the devices it reserved for the run.
const DEVICE_VARIABLES: [&str; 3] = [
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
];
/// Lines of input waiting for an agent's stdin.
const INPUT_QUEUE: usize = 64;

/// How a stop reaches a run.
enum StopHandle {
    /// The supervisor's pid: SIGTERM to the tree, SIGKILL after the grace.
    Process(i32),
    /// The WASM run's loop, which drops a call in flight.
    Tool(Arc<Notify>),
}

struct Run {
    run: u64,
    stop: StopHandle,
    /// A native run's workdir (worktrees are bound to one run at a time).
    workdir: Option<PathBuf>,
    input: mpsc::Sender<String>,
    stopping: Arc<AtomicBool>,
}

/// What a WASM run does next.
enum Work {
    /// A line of input (`None`: the input closed).
    Line(Option<String>),
    /// A message from the mailbox (`None`: the mailbox closed).
    Message(Option<Box<crate::actor_relay::TakenMessage>>),
}

/// The next message of a run's mailbox; never, for a run without one.
async fn next_message(
    mail: &mut Option<mpsc::Receiver<crate::actor_relay::TakenMessage>>,
) -> Option<crate::actor_relay::TakenMessage> {
    match mail {
        Some(mail) => mail.recv().await,
        None => std::future::pending().await,
    }
}

/// How a WASM run ended.
enum ToolRunEnd {
    Stopped,
    TimedOut,
}

/// The agents running on this node.
pub struct AgentRunner {
    /// Native programs, where this node runs them.
    native: Option<NativeRunner>,
    /// WASM tools, where this node's sandbox started.
    tools: Option<Arc<TaskRunner>>,
    runs: Mutex<HashMap<String, Run>>,
    /// Held while a start prepares its workdir (git may take a while): starts one at a time.
    preparing: tokio::sync::Mutex<()>,
    link: SessionLink,
    /// The actor relay's socket, told to native runs that get an actor credential.
    actor_socket: Option<PathBuf>,
    /// The hub's actor service, through which WASM actor agents take and send their messages.
    actor_hub: Option<crate::actor_relay::ActorRelay>,
}

impl std::fmt::Debug for AgentRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRunner")
            .field("running", &self.runs.lock().len())
            .finish_non_exhaustive()
    }
}

fn error(message: String) -> node_reply::Kind {
    node_reply::Kind::Error(message)
}

impl AgentRunner {
    /// Agents send their output and status over `link`; native ones run with `native`'s
    /// launcher, paths and environment rules, WASM ones with `tools`' sandbox and store.
    pub fn new(
        link: SessionLink,
        native: Option<NativeRunner>,
        tools: Option<Arc<TaskRunner>>,
    ) -> Self {
        Self {
            native,
            tools,
            runs: Mutex::new(HashMap::new()),
            preparing: tokio::sync::Mutex::new(()),
            link,
            actor_socket: None,
            actor_hub: None,
        }
    }

    /// Lets WASM actor agents reach their mailboxes through `hub`.
    pub fn with_actor_hub(mut self, hub: crate::actor_relay::ActorRelay) -> Self {
        self.actor_hub = Some(hub);
        self
    }

    /// Tells native runs with an actor credential where the actor relay listens.
    pub fn with_actor_socket(mut self, path: PathBuf) -> Self {
        self.actor_socket = Some(path);
        self
    }

    /// Ids of the agents running now (for heartbeats).
    pub fn running(&self) -> Vec<String> {
        self.runs.lock().keys().cloned().collect()
    }

    /// Starts a run: answers once its process started (or why it did not).
    pub async fn start(self: &Arc<Self>, start: StartAgent) -> node_reply::Kind {
        let _preparing = self.preparing.lock().await;
        if start.agent_id.is_empty() || start.agent_id.len() > 128 {
            return error("start_agent: agent_id must be 1 to 128 bytes".into());
        }
        if let Some(run) = self.runs.lock().get(&start.agent_id) {
            return if run.run == start.run {
                node_reply::Kind::Ok(true)
            } else {
                error(format!(
                    "start_agent: {} already runs (run {}); stop it first",
                    start.agent_id, run.run
                ))
            };
        }
        if self.runs.lock().len() >= outpost_trust::tls::MAX_AGENTS_PER_NODE as usize {
            return error(format!(
                "start_agent: this node runs {} agents, the most it runs at once",
                outpost_trust::tls::MAX_AGENTS_PER_NODE
            ));
        }
        if !start.tool.is_empty() {
            return self.start_tool(start).await;
        }
        let Some(native) = &self.native else {
            return error(
                "start_agent: this node runs no native agents (its launcher did not answer; see \
                 [sandbox] launcher)"
                    .into(),
            );
        };
        if let Some(key) = start
            .env_allow
            .iter()
            .find(|key| !native.env_allow.contains(key))
        {
            return error(format!(
                "start_agent: {key} is not in this node's [node] env_allow"
            ));
        }
        if start.command.is_empty() || start.command.contains('\0') {
            return error("start_agent: the command is empty or holds a NUL byte".into());
        }
        let mode = match WorkdirMode::parse(&start.workdir_mode) {
            Ok(mode) => mode,
            Err(e) => return error(format!("start_agent: {e}")),
        };
        let asked = if start.workdir.is_empty() {
            if mode != WorkdirMode::UseExisting {
                return error("start_agent: a worktree mode needs a workdir".into());
            }
            match native.safe_paths.first() {
                Some(first) => first.clone(),
                None => return error("start_agent: this node has no safe_paths".into()),
            }
        } else {
            PathBuf::from(&start.workdir)
        };
        let rules = PathRules {
            safe_paths: &native.safe_paths,
            protected: &native.protected,
        };
        let prepared =
            match worktree::prepare(mode, &asked, &start.repo, &start.agent_id, rules).await {
                Ok(prepared) => prepared,
                Err(e) => return error(format!("start_agent: {e}")),
            };
        let workdir = prepared.workdir;
        if mode != WorkdirMode::UseExisting
            && let Some((other, _)) = self
                .runs
                .lock()
                .iter()
                .find(|(_, run)| run.workdir.as_ref() == Some(&workdir))
        {
            return error(format!(
                "start_agent: agent {other} works in {} now",
                workdir.display()
            ));
        }
        if let Err(e) = std::fs::create_dir_all(&native.runs_dir) {
            return error(format!("start_agent: {}: {e}", native.runs_dir.display()));
        }
        let name = format!("agent-{}", safe_name(&start.agent_id));
        let mut env = native.base_environment(&workdir);
        for key in &start.env_allow {
            if let Ok(value) = std::env::var(key) {
                env.insert(key.clone(), value);
            }
        }
        for (key, value) in &start.env {
            if !DEVICE_VARIABLES.contains(&key.as_str()) {
                return error(format!(
                    "start_agent: {key} is not a device variable the hub may set"
                ));
            }
            env.insert(key.clone(), value.clone());
        }
        env.insert("OUTPOST_AGENT_ID".into(), start.agent_id.clone());
        env.insert("OUTPOST_RUN_ID".into(), start.run.to_string());
        if !start.actor_token.is_empty() {
            // `outpost actor …` inside the run acts as the agent, through this node.
            env.insert("OUTPOST_ACTOR_ID".into(), start.agent_id.clone());
            env.insert("OUTPOST_TOKEN".into(), start.actor_token.clone());
            if let Some(socket) = &self.actor_socket {
                env.insert("OUTPOST_ACTOR_SOCKET".into(), socket.display().to_string());
            }
        }
        let nonzero = |v: u64| (v > 0).then_some(v);
        let spec = LaunchSpec {
            program: start.command.clone(),
            args: start.args.clone(),
            env,
            workdir: workdir.clone(),
            rlimits: Rlimits {
                address_space: nonzero(start.memory_bytes),
                cpu_seconds: nonzero(start.cpu_seconds),
                ..Rlimits::default()
            },
            confinement: Confinement {
                enabled: native.landlock || native.require_landlock,
                read: native.safe_paths.clone(),
                write: std::iter::once(workdir).chain(prepared.git_dir).collect(),
                tcp_connect: native.tcp_connect.clone(),
                require_full: native.require_landlock,
            },
            max_processes: Some(MAX_COMMAND_PROCESSES),
            grace: STOP_GRACE,
            status_file: native.runs_dir.join(format!("{name}.status")),
        };
        let mut process = match NativeProcess::spawn(&native.launcher, &spec) {
            Ok(process) => process,
            Err(e) => return error(format!("start_agent: {e}")),
        };
        let pid_file = native.runs_dir.join(format!("{name}.pid"));
        let _ = std::fs::write(&pid_file, process.pid().to_string());
        let (input, mut lines) = mpsc::channel::<String>(INPUT_QUEUE);
        let stopping = Arc::new(AtomicBool::new(false));
        self.runs.lock().insert(
            start.agent_id.clone(),
            Run {
                run: start.run,
                stop: StopHandle::Process(process.pid()),
                workdir: Some(spec.workdir.clone()),
                input,
                stopping: stopping.clone(),
            },
        );
        if let Some(mut stdin) = process.take_stdin() {
            tokio::spawn(async move {
                while let Some(line) = lines.recv().await {
                    if stdin.write_all(line.as_bytes()).await.is_err()
                        || stdin.write_all(b"\n").await.is_err()
                        || stdin.flush().await.is_err()
                    {
                        return;
                    }
                }
            });
        }
        // Both pipes feed one bounded channel; one forwarder writes the agent's stream.
        let (chunks, chunks_rx) = mpsc::channel::<AgentOutput>(8);
        for (stream, reader) in [
            (
                "stdout",
                process
                    .take_stdout()
                    .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
            (
                "stderr",
                process
                    .take_stderr()
                    .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            ),
        ] {
            if let Some(reader) = reader {
                tokio::spawn(output::pump(stream, reader, chunks.clone()));
            }
        }
        drop(chunks);
        let (forwarder, dropped) = self.forward_output(&start, chunks_rx);
        let runner = self.clone();
        let (agent_id, run) = (start.agent_id.clone(), start.run);
        let timeout = nonzero(start.timeout_ms).map(Duration::from_millis);
        tokio::spawn(async move {
            runner.deliver(running(&agent_id, run)).await;
            let (exit, timed_out) = match timeout {
                Some(limit) => match tokio::time::timeout(limit, process.wait()).await {
                    Ok(exit) => (exit, false),
                    Err(_) => (process.stop().await, true),
                },
                None => (process.wait().await, false),
            };
            // The output is all forwarded before the end is reported, unless something the
            // supervisor did not take with it still holds the pipes open.
            if tokio::time::timeout(OUTPUT_DRAIN, forwarder).await.is_err() {
                tracing::warn!(agent_id = %agent_id, "the agent's output did not end with it");
            }
            runner.runs.lock().remove(&agent_id);
            let _ = std::fs::remove_file(&pid_file);
            let _ = std::fs::remove_file(&spec.status_file);
            let mut status = AgentStatus {
                agent_id,
                run,
                exit_code: exit.code.unwrap_or(0),
                signal: exit.signal.unwrap_or(0),
                landlock: exit
                    .enforcement
                    .map(|e| e.as_str().to_string())
                    .unwrap_or_default(),
                output_dropped: dropped.load(Ordering::Relaxed),
                ..AgentStatus::default()
            };
            if timed_out {
                status.status = "failed".into();
                status.reason = format!(
                    "ran past its wall-time limit of {}s and was stopped",
                    timeout.map_or(0.0, |t| t.as_secs_f64())
                );
            } else if stopping.load(Ordering::Relaxed) {
                status.status = "stopped".into();
            } else if let Some(error) = exit.error {
                status.status = "failed".into();
                status.reason = error;
            } else {
                status.status = "exited".into();
            }
            runner.deliver(status).await;
        });
        node_reply::Kind::Ok(true)
    }

    /// Starts a WASM agent's run: its tool, installed here beforehand, invoked once per input.
    async fn start_tool(self: &Arc<Self>, start: StartAgent) -> node_reply::Kind {
        let Some(tools) = &self.tools else {
            return error(
                "start_agent: this node runs no WASM tools (its sandbox did not start; see the \
                 node's log)"
                    .into(),
            );
        };
        if !start.command.is_empty()
            || !start.env.is_empty()
            || !start.args.is_empty()
            || !start.env_allow.is_empty()
            || !start.workdir.is_empty()
            || !start.repo.is_empty()
            || !matches!(start.workdir_mode.as_str(), "" | "use_existing")
        {
            return error(
                "start_agent: a WASM agent takes its grants from its tool's policy: no command, \
                 args, env_allow, workdir or worktree"
                    .into(),
            );
        }
        let tool = match tools.agent_tool(&start).await {
            Ok(tool) => tool,
            Err(e) => {
                return error(format!(
                    "start_agent: tool {:?} ({}): {}",
                    start.tool,
                    e.kind.as_str(),
                    e.message
                ));
            }
        };
        let (input, mut lines) = mpsc::channel::<String>(INPUT_QUEUE);
        let stop = Arc::new(Notify::new());
        let stopping = Arc::new(AtomicBool::new(false));
        self.runs.lock().insert(
            start.agent_id.clone(),
            Run {
                run: start.run,
                stop: StopHandle::Tool(stop.clone()),
                workdir: None,
                input,
                stopping,
            },
        );
        let (chunks, chunks_rx) = mpsc::channel::<AgentOutput>(8);
        let (forwarder, dropped) = self.forward_output(&start, chunks_rx);
        let runner = self.clone();
        let (agent_id, run) = (start.agent_id.clone(), start.run);
        let deadline = (start.timeout_ms > 0)
            .then(|| tokio::time::Instant::now() + Duration::from_millis(start.timeout_ms));
        // An actor tool with a credential takes its mailbox: one on-message per message.
        let mailbox = match (
            &self.actor_hub,
            tool.is_actor(),
            start.actor_token.is_empty(),
        ) {
            (Some(hub), true, false) => Some(crate::actor_relay::open_mailbox(
                hub.clone(),
                &start.agent_id,
                start.run,
                &start.actor_token,
            )),
            _ => None,
        };
        tokio::spawn(async move {
            runner.deliver(running(&agent_id, run)).await;
            let (mut mail, poller) = match mailbox {
                Some((mail, poller)) => (Some(mail), Some(poller)),
                None => (None, None),
            };
            let end = loop {
                let next = tokio::select! {
                    biased;
                    () = stop.notified() => break ToolRunEnd::Stopped,
                    () = until(deadline) => break ToolRunEnd::TimedOut,
                    line = lines.recv() => Work::Line(line),
                    message = next_message(&mut mail) => Work::Message(message.map(Box::new)),
                };
                match next {
                    // The sender lives in the run's entry, which only this task removes.
                    Work::Line(None) => break ToolRunEnd::Stopped,
                    Work::Line(Some(line)) => {
                        let report = tokio::select! {
                            biased;
                            () = stop.notified() => break ToolRunEnd::Stopped,
                            () = until(deadline) => break ToolRunEnd::TimedOut,
                            report = tool.invoke(&line) => report,
                        };
                        send_report(&chunks, report).await;
                    }
                    Work::Message(None) => mail = None,
                    Work::Message(Some(message)) => {
                        let report = tokio::select! {
                            biased;
                            () = stop.notified() => break ToolRunEnd::Stopped,
                            () = until(deadline) => break ToolRunEnd::TimedOut,
                            report = tool.on_message(&message.handed) => report,
                        };
                        let done = message.finish(&report).await;
                        let mut report = report;
                        report.result = report.result.map(|_| done);
                        send_report(&chunks, report).await;
                    }
                }
            };
            if let Some(poller) = poller {
                poller.abort();
            }
            drop(chunks);
            if tokio::time::timeout(OUTPUT_DRAIN, forwarder).await.is_err() {
                tracing::warn!(agent_id = %agent_id, "the agent's output did not reach the hub in time");
            }
            runner.runs.lock().remove(&agent_id);
            let mut status = AgentStatus {
                agent_id,
                run,
                output_dropped: dropped.load(Ordering::Relaxed),
                ..AgentStatus::default()
            };
            match end {
                ToolRunEnd::Stopped => status.status = "stopped".into(),
                ToolRunEnd::TimedOut => {
                    status.status = "failed".into();
                    status.reason = format!(
                        "ran past its wall-time limit of {}s and was stopped",
                        Duration::from_millis(start.timeout_ms).as_secs_f64()
                    );
                }
            }
            runner.deliver(status).await;
        });
        node_reply::Kind::Ok(true)
    }

    /// Forwards a run's output chunks on a stream of their own; the bytes dropped past the
    /// run's limit are counted in the returned counter.
    fn forward_output(
        &self,
        start: &StartAgent,
        chunks: mpsc::Receiver<AgentOutput>,
    ) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
        let limit = if start.max_output_bytes == 0 {
            DEFAULT_MAX_OUTPUT
        } else {
            start.max_output_bytes
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let forwarder = tokio::spawn(output::forward(
            self.link.subscribe(),
            NodeEvent {
                kind: Some(node_event::Kind::AgentOutputStream(AgentOutputStream {
                    agent_id: start.agent_id.clone(),
                    run: start.run,
                })),
            },
            chunks,
            limit,
            dropped.clone(),
        ));
        (forwarder, dropped)
    }

    /// Removes the worktree the node created for an agent (which must not be running).
    pub async fn remove_worktree(&self, remove: RemoveWorktree) -> node_reply::Kind {
        let Some(native) = &self.native else {
            return error("remove_worktree: this node runs no native agents".into());
        };
        let _preparing = self.preparing.lock().await;
        if self.runs.lock().contains_key(&remove.agent_id) {
            return error(format!(
                "remove_worktree: {} is running; stop it first",
                remove.agent_id
            ));
        }
        let rules = PathRules {
            safe_paths: &native.safe_paths,
            protected: &native.protected,
        };
        match worktree::remove(
            Path::new(&remove.workdir),
            &remove.repo,
            &remove.agent_id,
            rules,
        )
        .await
        {
            Ok(removed) => node_reply::Kind::Ok(removed),
            Err(e) => error(format!("remove_worktree: {e}")),
        }
    }

    /// Stops a run (SIGTERM to its tree, SIGKILL after the grace); false when it does not run.
    pub fn stop(&self, agent: &AgentRef) -> node_reply::Kind {
        let runs = self.runs.lock();
        match runs.get(&agent.agent_id) {
            Some(run) if agent.run == 0 || run.run == agent.run => {
                run.stopping.store(true, Ordering::Relaxed);
                match &run.stop {
                    StopHandle::Process(pid) => outpost_runner::process::signal_stop(*pid),
                    // A permit is kept when the loop is not waiting right now.
                    StopHandle::Tool(stop) => stop.notify_one(),
                }
                node_reply::Kind::Ok(true)
            }
            _ => node_reply::Kind::Ok(false),
        }
    }

    /// Queues a line for a run's stdin.
    pub fn input(&self, input: AgentInput) -> node_reply::Kind {
        if input.line.len() > MAX_INPUT_LINE || input.line.contains('\n') {
            return error(format!(
                "agent_input: one line of at most {MAX_INPUT_LINE} bytes"
            ));
        }
        let runs = self.runs.lock();
        match runs.get(&input.agent_id) {
            Some(run) if input.run == 0 || run.run == input.run => {
                match run.input.try_send(input.line) {
                    Ok(()) => node_reply::Kind::Ok(true),
                    Err(_) => error(format!(
                        "agent_input: {} has {INPUT_QUEUE} lines waiting already",
                        input.agent_id
                    )),
                }
            }
            _ => error(format!(
                "agent_input: {} is not running here",
                input.agent_id
            )),
        }
    }

    /// Sends a status event, again on each new session until one takes it.
    async fn deliver(&self, status: AgentStatus) {
        let event = NodeEvent {
            kind: Some(node_event::Kind::AgentStatus(status)),
        };
        let mut connection = self.link.subscribe();
        loop {
            let current = connection.borrow_and_update().clone();
            if let Some(conn) = current
                && crate::session::send_event_on(&conn, &event).await.is_ok()
            {
                return;
            }
            if connection.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The `running` status of a run.
fn running(agent_id: &str, run: u64) -> AgentStatus {
    AgentStatus {
        agent_id: agent_id.to_string(),
        run,
        status: "running".into(),
        ..AgentStatus::default()
    }
}

/// Waits until `deadline`, or forever when there is none.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends `text` as chunks of `stream`; false once the forwarder is gone.
async fn send_text(chunks: &mpsc::Sender<AgentOutput>, stream: &str, text: &[u8]) -> bool {
    for piece in text.chunks(outpost_proto::limits::MAX_AGENT_CHUNK) {
        let chunk = AgentOutput {
            stream: stream.into(),
            data: piece.to_vec(),
        };
        if chunks.send(chunk).await.is_err() {
            return false;
        }
    }
    true
}

/// What one `invoke` of a WASM agent printed, logged and returned, as output chunks: its
/// stdout and stderr, its log lines on stderr, then the returned value on stdout (a newline
/// added) or the failure on stderr as `error: <kind>: <message>`.
async fn send_report(chunks: &mpsc::Sender<AgentOutput>, report: outpost_sandbox::CallReport) {
    let mut err = report.stderr.into_bytes();
    for record in &report.logs {
        err.extend_from_slice(
            format!("{}: {}\n", record.level.as_str(), record.message).as_bytes(),
        );
    }
    let ended = match report.result {
        Ok(mut output) => {
            if !output.ends_with('\n') {
                output.push('\n');
            }
            ("stdout", output)
        }
        Err(e) => (
            "stderr",
            format!("error: {}: {}\n", e.kind.as_str(), e.message),
        ),
    };
    let _ = send_text(chunks, "stdout", report.stdout.as_bytes()).await
        && send_text(chunks, "stderr", &err).await
        && send_text(chunks, ended.0, ended.1.as_bytes()).await;
}
