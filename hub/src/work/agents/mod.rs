//! Agents: long-running native programs, or WASM tools invoked once per input, bound to a node,
//! which the hub creates, starts, feeds, watches and stops while their processes and data stay on the node.
//!
//! The lifecycle is pure ([`lifecycle`]); this module wraps it with the store and the node's
//! link. A start counts a new *run*: the node's status events name their run, so a late event of
//! an old run never moves the agent. The node reports the agents it runs in every heartbeat; an
//! agent the hub believes running that two heartbeats in a row do not name is `lost`, and so is
//! every active agent of a node that goes offline.

pub mod lifecycle;

use std::collections::HashMap;
use std::sync::Arc;

use outpost_proto::v1::{AgentInput, AgentRef, AgentStatus, RemoveWorktree, StartAgent};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fleet::links::AgentCommand;
use crate::state::HubState;
use crate::store::{AgentRow, StoreError};
use crate::work::tasks::{RequirementsSpec, TaskError};

pub use lifecycle::AgentState;

/// Longest command, argument or workdir accepted.
const MAX_FIELD_BYTES: usize = 4096;
/// Most arguments.
const MAX_ARGS: usize = 256;
/// Longest agent name.
const MAX_NAME_BYTES: usize = 128;
/// Most teams an agent belongs to.
const MAX_TEAMS: usize = 16;

/// What an agent runs and under which limits (stored as JSON with the agent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSpec {
    /// A native agent's program (a path, or a name found on the node's PATH).
    pub command: String,
    /// A WASM agent's tool (pushed to the hub): invoked once per input line, in its sandbox
    /// under its policy; instead of `command`.
    pub tool: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables of the node's environment it gets (each in the node's `env_allow`).
    pub env_allow: Vec<String>,
    /// Its working directory on the node, inside `safe_paths` (empty: the first; for
    /// `create_worktree`, a new directory under the node's default worktree root).
    pub workdir: String,
    /// How the workdir comes to be: `use_existing` (empty: the same), `create_worktree` (a new
    /// `git worktree` of `repo`, removed on delete) or `reuse_worktree` (an existing one).
    pub workdir_mode: String,
    /// `create_worktree`: the git repository on the node the worktree is added to.
    pub repo: String,
    /// Bytes of address space per process; 0: no limit.
    pub memory_bytes: u64,
    /// CPU seconds per process; 0: no limit.
    pub cpu_seconds: u64,
    /// Wall time of one run; 0: none.
    pub timeout_ms: u64,
    /// Output forwarded per run; 0: the node's default (16 MiB).
    pub max_output_bytes: u64,
    /// GPU share reserved on its node for each run (1000: one whole GPU; 0: none), with the
    /// free memory per GPU and the lowest compute capability: from the create's requirements
    /// (whatever a create sent here directly is replaced by those).
    pub gpu_milli: u32,
    /// Free memory each reserved GPU must have, MiB.
    pub gpu_memory_mb: u64,
    /// Lowest compute capability of the reserved GPUs ("8.0"; empty: any).
    pub compute_capability: String,
    /// The GPUs (uuids) the latest run was given, recorded at its start, so a restarted hub
    /// holds them again for a run still going.
    pub held_devices: Vec<String>,
    /// The actor teams it belongs to (a message to `team:NAME` reaches every member).
    pub teams: Vec<String>,
    /// A message to it while it is not running starts it.
    pub wake_on_message: bool,
}

/// A create, from any surface.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CreateAgent {
    /// Display name.
    pub name: String,
    /// The node to bind it to; empty: the scheduler picks one that fits `requirements`.
    pub node: String,
    /// What any node that fits must have, when `node` is empty.
    pub requirements: RequirementsSpec,
    /// What it runs.
    #[serde(flatten)]
    pub spec: AgentSpec,
}

fn invalid(message: String) -> TaskError {
    TaskError::Invalid(message)
}

fn check_text(field: &str, text: &str) -> Result<(), TaskError> {
    if text.len() > MAX_FIELD_BYTES || text.contains('\0') {
        return Err(invalid(format!(
            "{field}: at most {MAX_FIELD_BYTES} bytes, no NUL"
        )));
    }
    Ok(())
}

impl AgentSpec {
    /// Checks what can be checked without the node.
    pub fn validate(&self) -> Result<(), TaskError> {
        if self.teams.len() > MAX_TEAMS {
            return Err(invalid(format!("teams: at most {MAX_TEAMS}")));
        }
        for team in &self.teams {
            crate::actors::check_team("teams", team)?;
        }
        if !self.tool.is_empty() {
            return self.validate_tool();
        }
        if self.command.trim().is_empty() {
            return Err(invalid(
                "command: an agent needs a command (native) or a tool (WASM)".into(),
            ));
        }
        check_text("command", &self.command)?;
        if self.args.len() > MAX_ARGS {
            return Err(invalid(format!("args: at most {MAX_ARGS}")));
        }
        for arg in &self.args {
            check_text("args", arg)?;
        }
        for key in &self.env_allow {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(invalid(format!(
                    "env_allow: {key:?} is not a variable name"
                )));
            }
        }
        if !self.workdir.is_empty() {
            check_text("workdir", &self.workdir)?;
            if !self.workdir.starts_with('/') {
                return Err(invalid(format!(
                    "workdir: {:?} must be an absolute path on the node",
                    self.workdir
                )));
            }
        }
        match self.workdir_mode.as_str() {
            "" | USE_EXISTING => {
                if !self.repo.is_empty() {
                    return Err(invalid(
                        "repo: only --workdir-mode create_worktree adds a worktree to a repository"
                            .into(),
                    ));
                }
            }
            CREATE_WORKTREE => {
                check_text("repo", &self.repo)?;
                if !self.repo.starts_with('/') {
                    return Err(invalid(
                        "repo: create_worktree needs the repository's absolute path on the node"
                            .into(),
                    ));
                }
            }
            REUSE_WORKTREE => {
                if self.workdir.is_empty() {
                    return Err(invalid(
                        "workdir: reuse_worktree needs the worktree's path".into(),
                    ));
                }
                if !self.repo.is_empty() {
                    return Err(invalid(
                        "repo: reuse_worktree takes the worktree as it is; drop --repo".into(),
                    ));
                }
            }
            other => {
                return Err(invalid(format!(
                    "workdir_mode {other:?}: use use_existing, create_worktree or reuse_worktree"
                )));
            }
        }
        if self.timeout_ms > 30 * 24 * 3600 * 1000 {
            return Err(invalid("timeout_ms: at most 30 days".into()));
        }
        Ok(())
    }
}

impl AgentSpec {
    /// A WASM agent: its tool's policy grants what it may reach, so nothing native applies.
    fn validate_tool(&self) -> Result<(), TaskError> {
        crate::work::tools::validate_name(&self.tool).map_err(|e| invalid(format!("tool: {e}")))?;
        let native_only = [
            ("command", !self.command.is_empty()),
            ("args", !self.args.is_empty()),
            ("env_allow", !self.env_allow.is_empty()),
            ("workdir", !self.workdir.is_empty()),
            (
                "workdir_mode",
                !matches!(self.workdir_mode.as_str(), "" | USE_EXISTING),
            ),
            ("repo", !self.repo.is_empty()),
            ("cpu_seconds", self.cpu_seconds > 0),
        ];
        if let Some((field, _)) = native_only.iter().find(|(_, set)| *set) {
            return Err(invalid(format!(
                "{field}: a WASM agent takes its grants and CPU budget from its tool's policy; \
                 {field} is for native agents"
            )));
        }
        if self.timeout_ms > 30 * 24 * 3600 * 1000 {
            return Err(invalid("timeout_ms: at most 30 days".into()));
        }
        Ok(())
    }

    /// Whether it is a WASM agent.
    pub fn is_tool(&self) -> bool {
        !self.tool.is_empty()
    }
}

/// `workdir_mode` names.
pub const USE_EXISTING: &str = "use_existing";
/// A new worktree, made for the agent.
pub const CREATE_WORKTREE: &str = "create_worktree";
/// An existing worktree, taken over by the agent.
pub const REUSE_WORKTREE: &str = "reuse_worktree";

impl AgentSpec {
    /// The workdir mode's name (`use_existing` when none was given).
    pub fn mode(&self) -> &str {
        if self.workdir_mode.is_empty() {
            USE_EXISTING
        } else {
            &self.workdir_mode
        }
    }

    /// Whether its workdir is a worktree bound to it.
    pub fn in_worktree(&self) -> bool {
        matches!(self.mode(), CREATE_WORKTREE | REUSE_WORKTREE)
    }
}

/// The workdir of a new worktree when none is given: `<root>/<repo>-<agent name>-<short id>`
/// under the node's registered default root, else the one its configuration reports.
async fn default_worktree_dir(
    state: &HubState,
    node: &str,
    id: &str,
    name: &str,
    repo: &str,
) -> Result<String, TaskError> {
    let registered = state
        .store()
        .get_node(node)
        .await?
        .map(|row| row.default_worktree_root)
        .unwrap_or_default();
    let root = if registered.is_empty() {
        state
            .fleet
            .live(node)
            .and_then(|live| live.capabilities)
            .map(|caps| caps.default_worktree_root)
            .unwrap_or_default()
    } else {
        registered
    };
    if root.is_empty() {
        return Err(invalid(format!(
            "workdir: node {node} has no default worktree root (set one with `outpost nodes update \
             {node} --default-worktree-root P` or the node's [worktree] default_root), so \
             create_worktree needs --workdir"
        )));
    }
    let repo_name = std::path::Path::new(repo.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "repo".into());
    let short = id.trim_start_matches("agent-").get(..6).unwrap_or(id);
    Ok(format!(
        "{}/{repo_name}-{name}-{short}",
        root.trim_end_matches('/')
    ))
}

/// Refuses a worktree another agent of the same node is bound to.
async fn check_worktree_free(
    state: &HubState,
    node: &str,
    id: &str,
    workdir: &str,
) -> Result<(), TaskError> {
    let wanted = workdir.trim_end_matches('/');
    for other in state.store().list_agents(Some(node)).await? {
        let spec = spec_of(&other);
        if other.id != id && spec.in_worktree() && spec.workdir.trim_end_matches('/') == wanted {
            return Err(TaskError::Conflict(format!(
                "workdir {workdir}: the worktree is bound to agent {} ({})",
                other.id, other.name
            )));
        }
    }
    Ok(())
}

/// The spec stored with an agent.
pub fn spec_of(row: &AgentRow) -> AgentSpec {
    serde_json::from_str(&row.spec).unwrap_or_default()
}

fn new_agent_id() -> Result<String, TaskError> {
    let mut bytes = [0_u8; 10];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| TaskError::Internal("no randomness for an agent id".into()))?;
    Ok(format!("agent-{}", hex::encode(bytes)))
}

async fn load(state: &HubState, id: &str) -> Result<AgentRow, TaskError> {
    state
        .store()
        .get_agent(id)
        .await?
        .ok_or_else(|| TaskError::NotFound(format!("agent {id:?}")))
}

/// Heartbeats in a row that may miss a running agent before it is `lost`.
const MISSES_BEFORE_LOST: u32 = 2;

/// What the hub keeps of agents beside the store: their output, missed heartbeats, and the
/// nodes that may run agents (only their heartbeats are reconciled).
#[derive(Debug, Default)]
pub struct AgentHub {
    /// Output tails and live subscribers.
    pub logs: crate::work::output::OutputLogs,
    misses: Mutex<HashMap<String, u32>>,
    nodes_with_agents: Mutex<std::collections::HashSet<String>>,
    /// The latest heartbeat's agents of each watched node, waiting for [`reconcile_pending`].
    pending: Mutex<HashMap<String, Vec<String>>>,
    /// GPUs of agents that ran when the hub started, by node, held again by [`restore_holds`].
    pending_holds: Mutex<HashMap<String, Vec<PendingHold>>>,
}

impl AgentHub {
    /// Drops a hold waiting for its node (the run ended first).
    fn forget_hold(&self, agent_id: &str) {
        let mut pending = self.pending_holds.lock();
        for holds in pending.values_mut() {
            holds.retain(|hold| hold.agent_id != agent_id);
        }
        pending.retain(|_, holds| !holds.is_empty());
    }

    /// Notes that `node_id` may run agents, so its heartbeats are reconciled.
    pub fn watch_node(&self, node_id: &str) {
        self.nodes_with_agents.lock().insert(node_id.to_string());
    }

    /// Whether `node_id`'s heartbeats are worth reconciling.
    pub fn watches(&self, node_id: &str) -> bool {
        self.nodes_with_agents.lock().contains(node_id)
    }

    /// A heartbeat of `node_id` named the agents it runs (kept for the next reconcile pass when
    /// the node is watched; cheap otherwise).
    pub fn heartbeat(&self, node_id: &str, running: &[String]) {
        if self.watches(node_id) {
            self.pending
                .lock()
                .insert(node_id.to_string(), running.to_vec());
        }
    }
}

/// Reserves the GPUs a run of `row` asks for on its node, under the agent's id (the scheduler
/// keeps them from tasks and other agents until the run ends); the environment that hands them
/// to the program, and their uuids. Refused, with the scheduler's reason, when they are not
/// free now.
fn reserve_devices(
    state: &HubState,
    row: &AgentRow,
    spec: &AgentSpec,
) -> Result<(HashMap<String, String>, Vec<String>), TaskError> {
    if spec.gpu_milli == 0 {
        return Ok((HashMap::new(), Vec::new()));
    }
    let requirements = RequirementsSpec {
        gpus: f64::from(spec.gpu_milli) / 1000.0,
        gpu_memory_mb: spec.gpu_memory_mb,
        compute_capability: spec.compute_capability.clone(),
        node: row.node_id.clone(),
        ..RequirementsSpec::default()
    }
    .to_requirements()
    .map_err(|e| invalid(format!("requirements: {e}")))?;
    let mut scheduler = state.tasks.scheduler();
    // A reservation left by an earlier run (its end not seen yet) goes first.
    scheduler.release(&row.id);
    match scheduler.place(&row.id, &requirements, state.monotonic_ms()) {
        Ok(Ok(placement)) => Ok((
            crate::work::tasks::device_env(&placement),
            placement.device_uuids,
        )),
        Ok(Err(no_fit)) => Err(TaskError::Conflict(format!(
            "the GPUs agent {} asks for are not free on node {} now: {}",
            row.id, row.node_id, no_fit.reason
        ))),
        Err(e) => Err(TaskError::Internal(e.to_string())),
    }
}

/// Gives back the GPUs an agent's run held, so queued work may take them.
fn release_devices(state: &HubState, id: &str) {
    state.agents.forget_hold(id);
    if state.tasks.scheduler().release(id) {
        state.tasks.wake_dispatcher();
    }
}

/// A running agent's GPUs, to be held again once its node is back in the scheduler.
#[derive(Debug, Clone)]
struct PendingHold {
    agent_id: String,
    devices: Vec<String>,
    share_milli: u32,
    memory_mb: u64,
}

/// The node's capabilities reached the scheduler: the GPUs of its agents that ran when the hub
/// started are held again (once).
pub fn restore_holds(state: &HubState, node_id: &str) {
    let holds = state.agents.pending_holds.lock().remove(node_id);
    let Some(holds) = holds else {
        return;
    };
    let mut scheduler = state.tasks.scheduler();
    for hold in holds {
        if !scheduler.hold(
            &hold.agent_id,
            node_id,
            &hold.devices,
            hold.share_milli,
            hold.memory_mb,
            state.monotonic_ms(),
        ) {
            tracing::warn!(agent_id = %hold.agent_id, node_id, "the GPUs a running agent held are not on its node any more");
        }
    }
}

/// Reconciles the heartbeats that arrived since the last pass (the liveness ticker calls this).
pub async fn reconcile_pending(state: &HubState) {
    let pending = std::mem::take(&mut *state.agents.pending.lock());
    for (node_id, running) in pending {
        reconcile(state, &node_id, &running).await;
    }
}

/// After a hub start: watch the nodes whose agents the store says are active, and keep the
/// GPUs their runs hold to be held again when each node is back.
pub async fn recover(state: &HubState) -> Result<(), StoreError> {
    for row in state.store().list_agents(None).await? {
        if AgentState::parse(&row.status).is_active() {
            state.agents.watch_node(&row.node_id);
            let spec = spec_of(&row);
            if spec.gpu_milli > 0 && !spec.held_devices.is_empty() {
                let hold = PendingHold {
                    agent_id: row.id.clone(),
                    devices: spec.held_devices,
                    share_milli: spec.gpu_milli,
                    memory_mb: spec.gpu_memory_mb,
                };
                state
                    .agents
                    .pending_holds
                    .lock()
                    .entry(row.node_id.clone())
                    .or_default()
                    .push(hold);
            }
        }
    }
    Ok(())
}

/// Creates an agent (status `created`), bound to its node.
pub async fn create(state: &Arc<HubState>, request: CreateAgent) -> Result<AgentRow, TaskError> {
    let name = request.name.trim();
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!("name: 1 to {MAX_NAME_BYTES} bytes")));
    }
    crate::fleet::registry::validate_name(name).map_err(|e| invalid(format!("name: {e}")))?;
    request.spec.validate()?;
    if request.spec.is_tool()
        && state
            .tools
            .meta(state.store().as_ref(), &request.spec.tool)
            .await?
            .is_none()
    {
        return Err(TaskError::NotFound(format!(
            "tool {:?} is not on the hub (push it first)",
            request.spec.tool
        )));
    }
    let id = new_agent_id()?;
    let node = if request.node.is_empty() {
        let requirements = request
            .requirements
            .to_requirements()
            .map_err(|e| invalid(format!("requirements: {e}")))?;
        let mut requirements = requirements;
        if !request.spec.is_tool()
            && !requirements
                .capabilities
                .iter()
                .any(|c| c == crate::work::tasks::spec::NATIVE_CAPABILITY)
        {
            requirements
                .capabilities
                .push(crate::work::tasks::spec::NATIVE_CAPABILITY.into());
        }
        // The scheduler picks the node; agents hold no reservation (yet).
        let mut scheduler = state.tasks.scheduler();
        let placed = scheduler
            .place(&id, &requirements, state.monotonic_ms())
            .map_err(|e| TaskError::Internal(e.to_string()))?;
        match placed {
            Ok(placement) => {
                scheduler.release(&id);
                placement.node_id
            }
            Err(no_fit) => {
                return Err(TaskError::Conflict(format!(
                    "no node fits the agent now: {}",
                    no_fit.reason
                )));
            }
        }
    } else {
        request.node.clone()
    };
    let mut spec = request.spec.clone();
    let gpus = request
        .requirements
        .to_requirements()
        .map_err(|e| invalid(format!("requirements: {e}")))?;
    spec.gpu_milli = gpus.gpu_milli;
    spec.gpu_memory_mb = if gpus.gpu_milli > 0 {
        request.requirements.gpu_memory_mb
    } else {
        0
    };
    spec.compute_capability = if gpus.gpu_milli > 0 {
        request.requirements.compute_capability.trim().to_string()
    } else {
        String::new()
    };
    if spec.is_tool() && spec.gpu_milli > 0 {
        return Err(invalid(
            "requirements: a WASM agent takes no GPUs (its tool has no device access)".into(),
        ));
    }
    if spec.mode() == CREATE_WORKTREE && spec.workdir.is_empty() {
        spec.workdir = default_worktree_dir(state, &node, &id, name, &spec.repo).await?;
    }
    if spec.in_worktree() {
        check_worktree_free(state, &node, &id, &spec.workdir).await?;
    }
    let now = state.now_ms();
    let row = AgentRow {
        id,
        node_id: node.clone(),
        name: name.to_string(),
        status: AgentState::Created.as_str().into(),
        spec: serde_json::to_string(&spec).map_err(|e| TaskError::Internal(e.to_string()))?,
        created_at_ms: now,
        updated_at_ms: now,
        ..AgentRow::default()
    };
    match state.store().insert_agent(&row).await {
        Ok(()) => Ok(row),
        Err(StoreError::NotFound { .. }) => Err(TaskError::NotFound(format!(
            "node {node:?} is not in the registry"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// One agent.
pub async fn get(state: &HubState, id: &str) -> Result<AgentRow, TaskError> {
    load(state, id).await
}

/// Agents, all or on one node.
pub async fn list(state: &HubState, node: Option<&str>) -> Result<Vec<AgentRow>, TaskError> {
    Ok(state.store().list_agents(node).await?)
}

/// Starts a new run on the agent's node (`starting` until the node says `running`).
pub async fn start(state: &Arc<HubState>, id: &str) -> Result<AgentRow, TaskError> {
    let row = load(state, id).await?;
    let now = state.now_ms();
    let starting = lifecycle::start(&row, now).map_err(TaskError::Conflict)?;
    let Some(link) = state.fleet.links().get(&row.node_id) else {
        return Err(TaskError::Conflict(format!(
            "node {} has no session to this hub; the agent starts once it is back",
            row.node_id
        )));
    };
    let mut spec = spec_of(&starting);
    let (devices, held) = reserve_devices(state, &starting, &spec)?;
    let mut starting = starting;
    if !held.is_empty() || !spec.held_devices.is_empty() {
        spec.held_devices = held;
        starting.spec =
            serde_json::to_string(&spec).map_err(|e| TaskError::Internal(e.to_string()))?;
    }
    if let Err(e) = state.store().update_agent(&starting).await {
        release_devices(state, &starting.id);
        return Err(e.into());
    }
    state.agents.watch_node(&starting.node_id);
    let workdir_mode = if spec.is_tool() {
        String::new()
    } else {
        spec.mode().to_string()
    };
    let mut command = StartAgent {
        agent_id: starting.id.clone(),
        run: u64::try_from(starting.run).unwrap_or(0),
        command: spec.command,
        args: spec.args,
        env_allow: spec.env_allow,
        workdir: spec.workdir,
        memory_bytes: spec.memory_bytes,
        cpu_seconds: spec.cpu_seconds,
        timeout_ms: spec.timeout_ms,
        max_output_bytes: spec.max_output_bytes,
        workdir_mode,
        repo: spec.repo,
        env: devices,
        ..StartAgent::default()
    };
    // The run acts as the agent's actor: a native process through the node's relay, a WASM
    // actor through the node's mailbox loop.
    command.actor_token = state
        .credentials
        .actor_token(&starting.id, starting.run, state.now_ms() / 1000)
        .map_err(|e| TaskError::Internal(format!("an actor credential for the run: {e}")))?;
    state.agents.logs.push(
        &starting.id,
        "event",
        format!("starting run {} on {}", starting.run, starting.node_id),
    );
    let sent = match spec.tool.as_str() {
        "" => Ok(()),
        tool => {
            crate::work::tools::install_for_agent(state, &starting.node_id, link.as_ref(), tool)
                .await
                .map(|installed| {
                    command.tool = installed.name.clone();
                    command.tool_digest = installed.digest.clone();
                    command.policy_toml = installed.policy_toml.clone();
                    command.signature = crate::work::tools::signature_of(&installed);
                })
        }
    };
    let answer = match sent {
        Ok(()) => link
            .agent(AgentCommand::Start(Box::new(command)))
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match answer {
        Ok(_) => Ok(load(state, id).await?),
        Err(e) => {
            release_devices(state, &starting.id);
            let failed = lifecycle::fail(
                &starting,
                &format!("the node refused it: {e}"),
                state.now_ms(),
            );
            state.store().update_agent(&failed).await?;
            state
                .agents
                .logs
                .push(&failed.id, "event", format!("failed: {}", failed.reason));
            Ok(failed)
        }
    }
}

/// Asks the node to stop the current run (the agent reads `stopped` once the node says so).
pub async fn stop(state: &Arc<HubState>, id: &str) -> Result<AgentRow, TaskError> {
    let row = load(state, id).await?;
    let state_now = AgentState::parse(&row.status);
    if !state_now.is_active() {
        return Ok(row);
    }
    let stopped_here = || async {
        release_devices(state, &row.id);
        let stopped = lifecycle::stopped_without_node(&row, state.now_ms());
        state.store().update_agent(&stopped).await?;
        Ok::<_, TaskError>(stopped)
    };
    let Some(link) = state.fleet.links().get(&row.node_id) else {
        return stopped_here().await;
    };
    let found = link
        .agent(AgentCommand::Stop(AgentRef {
            agent_id: row.id.clone(),
            run: u64::try_from(row.run).unwrap_or(0),
        }))
        .await
        .map_err(|e| TaskError::Conflict(format!("the node did not take the stop: {e}")))?;
    if !found {
        // The node does not run it: nothing will report its end.
        return stopped_here().await;
    }
    state
        .agents
        .logs
        .push(&row.id, "event", "stop requested".into());
    Ok(row)
}

/// Stops the current run (when one is active), waits for its end, and starts a new run.
pub async fn restart(state: &Arc<HubState>, id: &str) -> Result<AgentRow, TaskError> {
    let row = stop(state, id).await?;
    if AgentState::parse(&row.status).is_active() {
        // The node stops the tree within its grace period and reports it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let now = load(state, id).await?;
            if !AgentState::parse(&now.status).is_active() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TaskError::Conflict(format!(
                    "agent {id} did not stop within 15 s; try again"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    start(state, id).await
}

/// Sends a line to the current run's stdin.
pub async fn input(state: &Arc<HubState>, id: &str, line: &str) -> Result<(), TaskError> {
    let max = outpost_proto::limits::MAX_AGENT_INPUT_LINE;
    if line.len() > max || line.contains('\n') {
        return Err(invalid(format!(
            "input: one line (no newline) of at most {max} bytes"
        )));
    }
    let row = load(state, id).await?;
    if AgentState::parse(&row.status) != AgentState::Running {
        return Err(TaskError::Conflict(format!(
            "agent {id} is {}, not running",
            row.status
        )));
    }
    let link = state.fleet.links().get(&row.node_id).ok_or_else(|| {
        TaskError::Conflict(format!("node {} has no session to this hub", row.node_id))
    })?;
    link.agent(AgentCommand::Input(AgentInput {
        agent_id: row.id.clone(),
        run: u64::try_from(row.run).unwrap_or(0),
        line: line.to_string(),
    }))
    .await
    .map_err(|e| TaskError::Invalid(format!("input: {e}")))?;
    Ok(())
}

/// Deletes an agent (refused while it is active: stop it first). A worktree the node created
/// for it is removed first unless `keep_worktree`; while its node is away that is refused, so
/// nothing is left behind unnoticed.
pub async fn delete(state: &Arc<HubState>, id: &str, keep_worktree: bool) -> Result<(), TaskError> {
    let row = load(state, id).await?;
    if AgentState::parse(&row.status).is_active() {
        return Err(TaskError::Conflict(format!(
            "agent {id} is {}; stop it first",
            row.status
        )));
    }
    let spec = spec_of(&row);
    // Only a run can have made the worktree.
    if spec.mode() == CREATE_WORKTREE && !keep_worktree && row.run > 0 {
        let link = state.fleet.links().get(&row.node_id).ok_or_else(|| {
            TaskError::Conflict(format!(
                "node {} has no session to this hub, so its worktree {} cannot be removed now; \
                 delete with keep_worktree to leave it",
                row.node_id, spec.workdir
            ))
        })?;
        link.agent(AgentCommand::RemoveWorktree(RemoveWorktree {
            agent_id: row.id.clone(),
            workdir: spec.workdir.clone(),
            repo: spec.repo.clone(),
        }))
        .await
        .map_err(|e| {
            TaskError::Conflict(format!(
                "the node did not remove the worktree {}: {e}",
                spec.workdir
            ))
        })?;
    }
    state.store().delete_agent(id).await?;
    state.agents.logs.remove(id);
    Ok(())
}

/// A status event from `node_id`.
pub async fn on_status(state: &HubState, node_id: &str, status: AgentStatus) {
    let Ok(Some(row)) = state.store().get_agent(&status.agent_id).await else {
        return;
    };
    if row.node_id != node_id {
        tracing::warn!(node_id, agent_id = %status.agent_id, "status for an agent of another node ignored");
        return;
    }
    let Some(next) = lifecycle::observe(&row, &status, state.now_ms()) else {
        return;
    };
    if let Err(e) = state.store().update_agent(&next).await {
        tracing::warn!(agent_id = %next.id, error = %e, "recording an agent's status failed");
        return;
    }
    if !AgentState::parse(&next.status).is_active() {
        release_devices(state, &next.id);
    }
    state.agents.misses.lock().remove(&next.id);
    state.agents.watch_node(node_id);
    if AgentState::parse(&next.status) == AgentState::Running
        && let Some(started) = next.started_at_ms
    {
        let took = u64::try_from(state.now_ms() - started).unwrap_or(0);
        state
            .metrics
            .agent_started(std::time::Duration::from_millis(took));
    }
    state
        .agents
        .logs
        .push(&next.id, "event", lifecycle::describe(&next, &status));
}

/// A heartbeat named the agents `node_id` runs: those the hub believes running there that two
/// heartbeats in a row missed are `lost`.
pub async fn reconcile(state: &HubState, node_id: &str, running: &[String]) {
    let Ok(agents) = state.store().list_agents(Some(node_id)).await else {
        return;
    };
    for row in agents {
        if AgentState::parse(&row.status) != AgentState::Running {
            continue;
        }
        if running.contains(&row.id) {
            state.agents.misses.lock().remove(&row.id);
            continue;
        }
        let misses = {
            let mut misses = state.agents.misses.lock();
            let n = misses.entry(row.id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if misses >= MISSES_BEFORE_LOST {
            lose(state, &row, "the node no longer runs it").await;
        }
    }
}

/// Every active agent of a node that went offline (or was lost) is `lost`.
pub async fn node_lost(state: &HubState, node_id: &str, reason: &str) {
    let Ok(agents) = state.store().list_agents(Some(node_id)).await else {
        return;
    };
    for row in agents {
        if AgentState::parse(&row.status).is_active() {
            lose(state, &row, &format!("its node went away: {reason}")).await;
        }
    }
}

async fn lose(state: &HubState, row: &AgentRow, reason: &str) {
    release_devices(state, &row.id);
    let lost = lifecycle::lost(row, reason, state.now_ms());
    if state.store().update_agent(&lost).await.is_ok() {
        state.agents.misses.lock().remove(&row.id);
        state
            .agents
            .logs
            .push(&row.id, "event", format!("lost: {reason}"));
    }
}
