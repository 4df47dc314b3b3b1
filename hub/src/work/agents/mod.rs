//! Agents: long-running native programs bound to a node, which the hub creates, starts, feeds,
//! watches and stops while their processes and data stay on the node.
//!
//! The lifecycle is pure ([`lifecycle`]); this module wraps it with the store and the node's
//! link. A start counts a new *run*: the node's status events name their run, so a late event of
//! an old run never moves the agent. The node reports the agents it runs in every heartbeat; an
//! agent the hub believes running that two heartbeats in a row do not name is `lost`, and so is
//! every active agent of a node that goes offline.

pub mod lifecycle;
pub mod log;

use std::collections::HashMap;
use std::sync::Arc;

use outpost_proto::v1::{AgentInput, AgentRef, AgentStatus, StartAgent};
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

/// What an agent runs and under which limits (stored as JSON with the agent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSpec {
    /// The program (a path, or a name found on the node's PATH).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables of the node's environment it gets (each in the node's `env_allow`).
    pub env_allow: Vec<String>,
    /// Its working directory on the node, inside `safe_paths` (empty: the first).
    pub workdir: String,
    /// Bytes of address space per process; 0: no limit.
    pub memory_bytes: u64,
    /// CPU seconds per process; 0: no limit.
    pub cpu_seconds: u64,
    /// Wall time of one run; 0: none.
    pub timeout_ms: u64,
    /// Output forwarded per run; 0: the node's default (16 MiB).
    pub max_output_bytes: u64,
}

/// A create, from any surface.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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
        if self.command.trim().is_empty() {
            return Err(invalid("command: an agent needs a command".into()));
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
        if self.timeout_ms > 30 * 24 * 3600 * 1000 {
            return Err(invalid("timeout_ms: at most 30 days".into()));
        }
        Ok(())
    }
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
    pub logs: log::AgentLogs,
    misses: Mutex<HashMap<String, u32>>,
    nodes_with_agents: Mutex<std::collections::HashSet<String>>,
    /// The latest heartbeat's agents of each watched node, waiting for [`reconcile_pending`].
    pending: Mutex<HashMap<String, Vec<String>>>,
}

impl AgentHub {
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

/// Reconciles the heartbeats that arrived since the last pass (the liveness ticker calls this).
pub async fn reconcile_pending(state: &HubState) {
    let pending = std::mem::take(&mut *state.agents.pending.lock());
    for (node_id, running) in pending {
        reconcile(state, &node_id, &running).await;
    }
}

/// After a hub start: watch the nodes whose agents the store says are active.
pub async fn recover(state: &HubState) -> Result<(), StoreError> {
    for row in state.store().list_agents(None).await? {
        if AgentState::parse(&row.status).is_active() {
            state.agents.watch_node(&row.node_id);
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
    let id = new_agent_id()?;
    let node = if request.node.is_empty() {
        let requirements = request
            .requirements
            .to_requirements()
            .map_err(|e| invalid(format!("requirements: {e}")))?;
        let mut requirements = requirements;
        if !requirements
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
    let now = state.now_ms();
    let row = AgentRow {
        id,
        node_id: node.clone(),
        name: name.to_string(),
        status: AgentState::Created.as_str().into(),
        spec: serde_json::to_string(&request.spec)
            .map_err(|e| TaskError::Internal(e.to_string()))?,
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
    state.store().update_agent(&starting).await?;
    state.agents.watch_node(&starting.node_id);
    let spec = spec_of(&starting);
    let command = StartAgent {
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
    };
    state.agents.logs.push(
        &starting.id,
        "event",
        format!("starting run {} on {}", starting.run, starting.node_id),
    );
    match link.agent(AgentCommand::Start(command)).await {
        Ok(_) => Ok(load(state, id).await?),
        Err(e) => {
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

/// Deletes an agent (refused while it is active: stop it first).
pub async fn delete(state: &Arc<HubState>, id: &str) -> Result<(), TaskError> {
    let row = load(state, id).await?;
    if AgentState::parse(&row.status).is_active() {
        return Err(TaskError::Conflict(format!(
            "agent {id} is {}; stop it first",
            row.status
        )));
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
    state.agents.misses.lock().remove(&next.id);
    state.agents.watch_node(node_id);
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
    let lost = lifecycle::lost(row, reason, state.now_ms());
    if state.store().update_agent(&lost).await.is_ok() {
        state.agents.misses.lock().remove(&row.id);
        state
            .agents
            .logs
            .push(&row.id, "event", format!("lost: {reason}"));
    }
}
