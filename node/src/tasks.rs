//! Tasks on the node: the hub's `RunTask` commands run here, in the sandbox, and their outcomes
//! wait in an outbox until the session has sent them.
//!
//! Components are kept by digest under `<data dir>/tools/` (the hub sends the bytes only when the
//! node says it lacks them, and the node checks them against the digest). Each attempt resolves
//! the tool's policy against this node's `safe_paths`, adds the hub's extra environment (the GPU
//! devices assigned), and runs in a fresh sandbox instance. Results survive a dropped session: the
//! outbox is emptied only by a successful send.
//!
//! The hub may also install a tool ahead of its first task (`InstallTool`, sent when a tool is
//! pushed and when the session comes up): the component is stored the same way and compiled in
//! the background, one install at a time, so the first attempt finds it compiled. An attempt that
//! arrives while that compile runs waits for it rather than compiling the same component again.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::limits::{MAX_RESULT_LOG, MAX_RESULT_MESSAGE, MAX_RESULT_OUTPUT};
use outpost_proto::v1::{InstallTool, RunTask, StartAgent, TaskResult, node_reply};
use parking_lot::Mutex;
use tokio::sync::{Notify, OnceCell, Semaphore};

use outpost_sandbox::{
    ErrorKind, LoadedTool, ResolvedPolicy, Sandbox, SandboxConfig, SandboxError, ToolPolicy,
};

/// Largest number of loaded (compiled and linked) tools kept in memory.
const LOADED_CAPACITY: usize = 64;

/// Why the runner could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TaskRunnerError {
    /// The tool store directory is unusable.
    #[error("task runner: {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The sandbox could not be built.
    #[error("task runner: {0}")]
    Sandbox(#[from] SandboxError),
}

/// What this node lets any tool reach, whatever its policy asks: a policy is checked against
/// it and refused (`policy_invalid`) where it asks for more.
#[derive(Debug, Clone, Default)]
pub struct ToolBoundary {
    /// Directories grants must lie inside (`[node] safe_paths`).
    pub safe_paths: Vec<PathBuf>,
    /// Directories holding the node's own state, which no grant may overlap.
    pub protected: Vec<PathBuf>,
    /// Variables of the node process a policy may ask for (`[node] env_allow`).
    pub env_allow: Vec<String>,
    /// Hosts a policy may grant (`[node] allow_hosts`).
    pub allow_hosts: Vec<String>,
    /// Publishers whose tools this node runs (`[node] trusted_publishers`); empty: any tool.
    pub trusted_publishers: Vec<String>,
}

struct Running {
    attempt: u32,
    abort: tokio::task::AbortHandle,
}

/// A tool compiled and linked once per digest: the first attempt (or install) to need it fills
/// the slot, the others wait for that.
type LoadSlot = Arc<OnceCell<LoadedTool>>;

/// Runs the hub's tasks on this node.
pub struct TaskRunner {
    sandbox: Sandbox,
    tools_dir: PathBuf,
    boundary: ToolBoundary,
    loaded: Mutex<HashMap<String, LoadSlot>>,
    /// Background installs compile one at a time, beside whatever runs.
    installs: Semaphore,
    /// Counts background installs that have ended, compiled or not.
    installs_ended: tokio::sync::watch::Sender<u64>,
    running: Mutex<HashMap<String, Running>>,
    outbox: Mutex<VecDeque<TaskResult>>,
    results_ready: Notify,
    /// Native commands, where this node runs them (a launcher answered).
    native: Option<crate::native::NativeRunner>,
}

impl std::fmt::Debug for TaskRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRunner")
            .field("tools_dir", &self.tools_dir)
            .field("running", &self.running.lock().len())
            .field("outbox", &self.outbox.lock().len())
            .finish_non_exhaustive()
    }
}

fn is_digest(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl TaskRunner {
    /// A runner keeping components under `data_dir/tools` and compiled code under
    /// `data_dir/compile-cache`, granting tools only what `boundary` allows (`data_dir` is added
    /// to its protected directories).
    pub fn new(
        data_dir: &std::path::Path,
        mut boundary: ToolBoundary,
    ) -> Result<Self, TaskRunnerError> {
        boundary.protected.push(data_dir.to_path_buf());
        let tools_dir = data_dir.join("tools");
        std::fs::create_dir_all(&tools_dir).map_err(|source| TaskRunnerError::Io {
            path: tools_dir.clone(),
            source,
        })?;
        let sandbox = Sandbox::new(SandboxConfig {
            cache_dir: Some(data_dir.join("compile-cache")),
            ..SandboxConfig::default()
        })?;
        Ok(Self {
            sandbox,
            tools_dir,
            boundary,
            loaded: Mutex::new(HashMap::new()),
            installs: Semaphore::new(1),
            installs_ended: tokio::sync::watch::channel(0).0,
            running: Mutex::new(HashMap::new()),
            outbox: Mutex::new(VecDeque::new()),
            results_ready: Notify::new(),
            native: None,
        })
    }

    /// This runner, also running native commands with `native`.
    pub fn with_native(mut self, native: crate::native::NativeRunner) -> Self {
        self.native = Some(native);
        self
    }

    /// The native side, when this node runs native commands.
    pub fn native(&self) -> Option<&crate::native::NativeRunner> {
        self.native.as_ref()
    }

    /// Starts an attempt in the background and records it as running (replacing an older
    /// attempt of the same task, which is stopped).
    fn start_attempt(
        self: &Arc<Self>,
        task_id: String,
        attempt: u32,
        work: impl std::future::Future<Output = TaskResult> + Send + 'static,
    ) {
        let runner = self.clone();
        // The entry goes in before the task can finish and remove it.
        let mut running = self.running.lock();
        let handle = tokio::spawn(async move {
            let result = work.await;
            runner.finish(result);
        });
        if let Some(previous) = running.insert(
            task_id,
            Running {
                attempt,
                abort: handle.abort_handle(),
            },
        ) {
            previous.abort.abort();
        }
    }

    /// Accepts a native command (`RunTask` with `command`).
    fn accept_native(self: &Arc<Self>, command: RunTask) -> node_reply::Kind {
        let Some(native) = self.native.clone() else {
            return node_reply::Kind::Error(
                "run_task: this node runs no native commands (its launcher did not answer; see \
                 [sandbox] launcher)"
                    .into(),
            );
        };
        if let Some(running) = self.running.lock().get(&command.task_id)
            && running.attempt == command.attempt
        {
            return node_reply::Kind::Ok(true);
        }
        let task_id = command.task_id.clone();
        let attempt = command.attempt;
        self.start_attempt(task_id, attempt, async move { native.run(command).await });
        node_reply::Kind::Ok(true)
    }

    /// Accepts a `RunTask` command: answers at once (`ok`, `missing_component` or `error`) and
    /// runs the attempt in the background.
    pub fn accept(self: &Arc<Self>, command: RunTask) -> node_reply::Kind {
        if command.task_id.is_empty() || command.task_id.len() > 128 {
            return node_reply::Kind::Error("run_task: task_id must be 1 to 128 bytes".into());
        }
        if !command.command.is_empty() {
            return self.accept_native(command);
        }
        if !is_digest(&command.tool_digest) {
            return node_reply::Kind::Error(format!(
                "run_task: tool_digest {:?} is not a sha256 in lowercase hex",
                command.tool_digest
            ));
        }
        if let Some(running) = self.running.lock().get(&command.task_id)
            && running.attempt == command.attempt
        {
            // A resend of what already runs.
            return node_reply::Kind::Ok(true);
        }
        let path = match self.stored_component("run_task", &command.tool_digest, &command.component)
        {
            Ok(path) => path,
            Err(reply) => return reply,
        };
        let task_id = command.task_id.clone();
        let attempt = command.attempt;
        let runner = self.clone();
        self.start_attempt(
            task_id,
            attempt,
            async move { runner.run(command, path).await },
        );
        node_reply::Kind::Ok(true)
    }

    /// Accepts an `InstallTool` command: stores the component (answering `missing_component` when
    /// it is neither here nor sent) and compiles it in the background. Answers `ok` at once.
    pub fn install(self: &Arc<Self>, command: InstallTool) -> node_reply::Kind {
        if !is_digest(&command.tool_digest) {
            return node_reply::Kind::Error(format!(
                "install_tool: tool_digest {:?} is not a sha256 in lowercase hex",
                command.tool_digest
            ));
        }
        let path =
            match self.stored_component("install_tool", &command.tool_digest, &command.component) {
                Ok(path) => path,
                Err(reply) => return reply,
            };
        if self.is_loaded(&command.tool_digest) {
            return node_reply::Kind::Ok(true);
        }
        let runner = self.clone();
        tokio::spawn(async move {
            let Ok(_turn) = runner.installs.acquire().await else {
                return;
            };
            let started = std::time::Instant::now();
            match runner.compiled(&command.tool_digest, path).await {
                Ok(tool) => tracing::info!(
                    tool = %command.tool,
                    digest = %command.tool_digest,
                    from_cache = tool.from_cache(),
                    ms = started.elapsed().as_millis() as u64,
                    "tool installed"
                ),
                Err(e) => tracing::warn!(
                    tool = %command.tool,
                    digest = %command.tool_digest,
                    kind = e.kind.as_str(),
                    error = %e.message,
                    "installing the tool failed; its tasks will report why"
                ),
            }
            runner
                .installs_ended
                .send_modify(|n| *n = n.wrapping_add(1));
        });
        node_reply::Kind::Ok(true)
    }

    /// Background installs that have ended so far, compiled or not (watch it to know an install
    /// is over).
    pub fn installs_ended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installs_ended.subscribe()
    }

    /// Whether the component with `digest` is compiled and linked in memory.
    pub fn is_loaded(&self, digest: &str) -> bool {
        self.loaded
            .lock()
            .get(digest)
            .is_some_and(|slot| slot.initialized())
    }

    /// Where the component with `digest` is kept. When it is missing there, `component` is
    /// checked against the digest and written; when none was sent either, the reply asks for it.
    fn stored_component(
        &self,
        command: &str,
        digest: &str,
        component: &[u8],
    ) -> Result<PathBuf, node_reply::Kind> {
        let path = self.tools_dir.join(format!("{digest}.wasm"));
        if path.exists() {
            return Ok(path);
        }
        if component.is_empty() {
            return Err(node_reply::Kind::MissingComponent(digest.into()));
        }
        let actual = outpost_trust::auth::sha256_hex(component);
        if actual != digest {
            return Err(node_reply::Kind::Error(format!(
                "{command}: the component's sha256 is {actual}, not the announced {digest}"
            )));
        }
        write_atomically(&path, component).map_err(|e| {
            node_reply::Kind::Error(format!(
                "{command}: storing the component at {}: {e}",
                path.display()
            ))
        })?;
        Ok(path)
    }

    /// Stops an attempt that still runs; its result says `cancelled`.
    pub fn cancel(&self, task_id: &str, attempt: u32) -> bool {
        let removed = {
            let mut running = self.running.lock();
            match running.get(task_id) {
                Some(r) if r.attempt == attempt || attempt == 0 => running.remove(task_id),
                _ => None,
            }
        };
        let Some(running) = removed else {
            return false;
        };
        running.abort.abort();
        self.push_result(TaskResult {
            task_id: task_id.into(),
            attempt: running.attempt,
            ok: false,
            error_kind: "cancelled".into(),
            error_message: "cancelled by the hub".into(),
            ..Default::default()
        });
        true
    }

    /// Ids of the tasks running now (for heartbeats).
    pub fn running_tasks(&self) -> Vec<String> {
        self.running.lock().keys().cloned().collect()
    }

    /// Waits until a result is in the outbox.
    pub async fn results_ready(&self) {
        if !self.outbox.lock().is_empty() {
            return;
        }
        self.results_ready.notified().await;
    }

    /// The oldest unsent result, removed from the outbox.
    pub fn next_result(&self) -> Option<TaskResult> {
        self.outbox.lock().pop_front()
    }

    /// Puts back a result whose send failed (it goes first next time).
    pub fn unsent(&self, result: TaskResult) {
        self.outbox.lock().push_front(result);
    }

    fn push_result(&self, result: TaskResult) {
        self.outbox.lock().push_back(deliverable(result));
        self.results_ready.notify_one();
    }

    fn finish(&self, result: TaskResult) {
        let mine = {
            let mut running = self.running.lock();
            match running.get(&result.task_id) {
                Some(r) if r.attempt == result.attempt => {
                    running.remove(&result.task_id);
                    true
                }
                _ => false,
            }
        };
        // A cancelled attempt already reported itself.
        if mine {
            self.push_result(result);
        }
    }

    async fn run(&self, command: RunTask, path: PathBuf) -> TaskResult {
        let base = TaskResult {
            task_id: command.task_id.clone(),
            attempt: command.attempt,
            ..Default::default()
        };
        let tool = match self.load(&command, path).await {
            Ok(tool) => tool,
            Err(e) => {
                return TaskResult {
                    ok: false,
                    error_kind: e.kind.as_str().into(),
                    error_message: e.message,
                    ..base
                };
            }
        };
        let report = tool.invoke(&command.input).await;
        let mut result = TaskResult {
            duration_us: u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX),
            fuel_used: report.fuel_used.unwrap_or(0),
            stdout: report.stdout,
            stderr: report.stderr,
            ..base
        };
        match report.result {
            Ok(output) => {
                result.ok = true;
                result.output = output;
            }
            Err(e) => {
                result.error_kind = e.kind.as_str().into();
                result.error_message = e.message;
            }
        }
        result
    }

    /// A WASM agent's tool, bound to its policy and ready to be invoked once per input. It comes
    /// from this node's store (the hub installs it before the start) and is compiled once per
    /// digest; the agent's memory limit, when it names one, lowers the policy's.
    pub async fn agent_tool(&self, start: &StartAgent) -> Result<LoadedTool, SandboxError> {
        if !is_digest(&start.tool_digest) {
            return Err(SandboxError::new(
                ErrorKind::InvalidComponent,
                format!(
                    "tool_digest {:?} is not a sha256 in lowercase hex",
                    start.tool_digest
                ),
            ));
        }
        let path = self.tools_dir.join(format!("{}.wasm", start.tool_digest));
        if !path.exists() {
            return Err(SandboxError::new(
                ErrorKind::InvalidComponent,
                format!(
                    "tool {:?} ({}) is not installed on this node",
                    start.tool, start.tool_digest
                ),
            ));
        }
        let command = RunTask {
            task_id: start.agent_id.clone(),
            tool: start.tool.clone(),
            tool_digest: start.tool_digest.clone(),
            policy_toml: start.policy_toml.clone(),
            signature: start.signature.clone(),
            ..RunTask::default()
        };
        let memory = start.memory_bytes;
        self.load_adjusted(&command, path, |limits| {
            if memory > 0 {
                limits.memory = limits.memory.min(memory);
            }
        })
        .await
    }

    /// The tool bound to this attempt's policy and environment (compiled once per digest).
    async fn load(&self, command: &RunTask, path: PathBuf) -> Result<LoadedTool, SandboxError> {
        self.load_adjusted(command, path, |_| {}).await
    }

    /// [`Self::load`], with the resolved limits adjusted by `adjust` before they are bound.
    async fn load_adjusted(
        &self,
        command: &RunTask,
        path: PathBuf,
        adjust: impl FnOnce(&mut outpost_sandbox::policy::Limits),
    ) -> Result<LoadedTool, SandboxError> {
        check_publisher(&self.boundary.trusted_publishers, command)?;
        let policy = ToolPolicy::from_toml(
            &command.policy_toml,
            &format!("policy of tool {:?}", command.tool),
        )?;
        // Resolving reads the file system and looks names up: off the async workers.
        let boundary = self.boundary.clone();
        let mut resolved = tokio::task::spawn_blocking(move || {
            policy.check_node_allowlists(&boundary.env_allow, &boundary.allow_hosts)?;
            policy.resolve_within(&boundary.safe_paths, &boundary.protected)
        })
        .await
        .map_err(|e| {
            SandboxError::new(
                ErrorKind::Trap,
                format!("resolving the policy panicked: {e}"),
            )
        })??;
        let mut env: Vec<(&String, &String)> = command.env.iter().collect();
        env.sort();
        for (key, value) in env {
            resolved.env.retain(|(k, _)| k != key);
            resolved.env.push((key.clone(), value.clone()));
        }
        if command.timeout_ms > 0 {
            // The hub's timeout never lifts the sandbox's own cap.
            resolved.limits.timeout =
                Duration::from_millis(command.timeout_ms).min(outpost_sandbox::policy::MAX_TIMEOUT);
        }
        // An output the result could not carry stops the tool as soon as it passes the limit.
        resolved.limits.max_output = resolved.limits.max_output.min(MAX_RESULT_OUTPUT as u64);
        adjust(&mut resolved.limits);
        // Compiled and linked once per component; each attempt binds its own policy and env.
        Ok(self
            .compiled(&command.tool_digest, path)
            .await?
            .with_policy(resolved))
    }

    /// The component with `digest`, compiled (or taken from the compile cache) and linked once.
    async fn compiled(&self, digest: &str, path: PathBuf) -> Result<LoadedTool, SandboxError> {
        let slot = {
            let mut loaded = self.loaded.lock();
            if loaded.len() >= LOADED_CAPACITY && !loaded.contains_key(digest) {
                loaded.clear();
            }
            loaded.entry(digest.to_string()).or_default().clone()
        };
        let tool = slot
            .get_or_try_init(|| async move {
                let sandbox = self.sandbox.clone();
                let digest = digest.to_string();
                // Compiling can take seconds: keep it off the async workers. The policy is bound
                // per attempt; linking needs none.
                tokio::task::spawn_blocking(move || {
                    sandbox.load_stored(&path, &digest, ResolvedPolicy::default())
                })
                .await
                .map_err(|e| {
                    SandboxError::new(ErrorKind::Trap, format!("loading the tool panicked: {e}"))
                })?
            })
            .await?;
        Ok(tool.clone())
    }
}

/// Checks a task's tool against the publishers this node trusts: with none configured any tool
/// runs; otherwise it needs a signature by one of them that verifies over its component (by
/// digest, which the node checked the bytes against) and its policy.
fn check_publisher(trusted: &[String], command: &RunTask) -> Result<(), SandboxError> {
    if trusted.is_empty() {
        return Ok(());
    }
    let refused = |why: String| {
        SandboxError::new(
            ErrorKind::PolicyInvalid,
            format!("tool {:?}: {why}", command.tool),
        )
    };
    let Some(signature) = &command.signature else {
        return Err(refused(
            "it is not signed, and this node runs only tools signed by its [node] trusted_publishers"
                .into(),
        ));
    };
    let signature = outpost_trust::signing::ToolSignature {
        publisher: signature.publisher.clone(),
        signature: signature.signature.clone(),
    };
    if !outpost_trust::signing::is_trusted(&signature.publisher, trusted) {
        return Err(refused(format!(
            "it is signed by {}, who is not one of this node's [node] trusted_publishers",
            signature.publisher
        )));
    }
    outpost_trust::signing::verify(&signature, &command.tool_digest, &command.policy_toml)
        .map_err(|e| refused(e.to_string()))
}

/// `result` cut to what a result may carry on its way to the hub
/// ([`outpost_proto::limits`]): the tails of stdout and stderr, the head of the error message,
/// and an output over the limit replaced by an `output_limit` failure that names its size.
pub fn deliverable(mut result: TaskResult) -> TaskResult {
    if result.output.len() > MAX_RESULT_OUTPUT {
        result.error_message = format!(
            "the output is {} bytes; a task's output may be at most {MAX_RESULT_OUTPUT} bytes",
            result.output.len()
        );
        result.ok = false;
        result.error_kind = ErrorKind::OutputLimit.as_str().into();
        result.output = String::new();
    }
    keep_tail(&mut result.stdout, MAX_RESULT_LOG);
    keep_tail(&mut result.stderr, MAX_RESULT_LOG);
    keep_head(&mut result.error_message, MAX_RESULT_MESSAGE);
    result
}

/// `result` replaced by the failure to report when the hub refused to read it.
pub fn refused_by_hub(result: TaskResult, reason: &str) -> TaskResult {
    TaskResult {
        ok: false,
        output: String::new(),
        stdout: String::new(),
        stderr: String::new(),
        error_kind: ErrorKind::OutputLimit.as_str().into(),
        error_message: format!(
            "{REFUSED_PREFIX} ({} bytes): {reason}",
            prost::Message::encoded_len(&result)
        ),
        ..result
    }
}

/// Whether `result` is already the report of a refusal ([`refused_by_hub`]).
pub fn is_refusal(result: &TaskResult) -> bool {
    !result.ok && result.output.is_empty() && result.error_message.starts_with(REFUSED_PREFIX)
}

const REFUSED_PREFIX: &str = "the hub refused this result";

/// Keeps the last `max` bytes of `text` (on a character boundary), saying how many were dropped.
fn keep_tail(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    *text = format!("[{start} bytes dropped]\n{}", &text[start..]);
}

/// Keeps the first `max` bytes of `text` (on a character boundary), saying how many were dropped.
fn keep_head(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = text.len() - end;
    text.truncate(end);
    text.push_str(&format!(" [{dropped} bytes dropped]"));
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    outpost_trust::private_files::write_atomically(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lowercase_sha256_hex() {
        assert!(is_digest(&"a".repeat(64)));
        assert!(!is_digest(&"A".repeat(64)));
        assert!(!is_digest(&"a".repeat(63)));
        assert!(!is_digest("../../etc/passwd"));
    }

    #[test]
    fn every_result_fits_the_hubs_event_frame() {
        let worst = TaskResult {
            task_id: "t".repeat(128),
            ok: true,
            output: "o".repeat(MAX_RESULT_OUTPUT),
            stdout: "s".repeat(10 * MAX_RESULT_LOG),
            stderr: "é".repeat(10 * MAX_RESULT_LOG),
            error_message: "m".repeat(10 * MAX_RESULT_MESSAGE),
            error_kind: "tool_error".into(),
            ..Default::default()
        };
        let fitted = deliverable(worst);
        assert!(fitted.ok, "an output at the limit is delivered");
        assert_eq!(fitted.output.len(), MAX_RESULT_OUTPUT);
        assert!(
            fitted.stdout.starts_with("[589824 bytes dropped]\n"),
            "{}",
            &fitted.stdout[..40]
        );
        assert!(fitted.stdout.len() <= MAX_RESULT_LOG + 40);
        assert!(fitted.stderr.ends_with('é'));
        assert!(fitted.error_message.ends_with(" bytes dropped]"));
        let event = outpost_proto::v1::NodeEvent {
            kind: Some(outpost_proto::v1::node_event::Kind::TaskResult(fitted)),
        };
        assert!(
            prost::Message::encoded_len(&event) <= outpost_proto::limits::MAX_EVENT_FRAME,
            "{} bytes",
            prost::Message::encoded_len(&event)
        );
    }

    #[test]
    fn an_output_past_the_limit_becomes_an_output_limit_failure() {
        let result = deliverable(TaskResult {
            ok: true,
            output: "o".repeat(MAX_RESULT_OUTPUT + 1),
            ..Default::default()
        });
        assert!(!result.ok);
        assert_eq!(result.error_kind, "output_limit");
        assert!(result.output.is_empty());
        assert_eq!(
            result.error_message,
            format!(
                "the output is {} bytes; a task's output may be at most {MAX_RESULT_OUTPUT} bytes",
                MAX_RESULT_OUTPUT + 1
            )
        );
    }
}
