//! Tasks: submitted through gRPC, REST or the CLI, placed by the [`crate::work::scheduler`], run on a
//! node over its QUIC session, finished by the node's result event.
//!
//! The store holds every task durably; each status change is a compare-and-set on (status,
//! attempts), so a result, a node loss and a cancel racing for the same task never overwrite one
//! another. The dispatcher ([`run_dispatcher`]) wakes on every submit, node change and freed
//! capacity (and every half second): it first puts the tasks of lost nodes back in the queue (or
//! fails them after `max_attempts` placements), then places queued tasks in submit order and
//! sends each placement to its node. A result from an attempt that is no longer the task's
//! current one is kept in the attempt's row and counted, never reported as the task's outcome.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::v1::{Capabilities, Heartbeat, RunTask, TaskRequirements, TaskResult, TaskView};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::fleet::links::{LinkError, RunAnswer};
use crate::state::HubState;
use crate::store::{AttemptRow, StoreError, TaskRow};
use crate::work::scheduler::{
    ComputeCapability, DeviceReport, NodeReport, PlaceError, Placement, Requirements,
};

/// Task statuses.
pub mod status {
    /// Waiting for a node that fits.
    pub const QUEUED: &str = "queued";
    /// Placed on a node, being sent to it.
    pub const PLACED: &str = "placed";
    /// The node accepted it and runs it.
    pub const RUNNING: &str = "running";
    /// Finished with a result.
    pub const SUCCEEDED: &str = "succeeded";
    /// Finished with an error (or out of attempts).
    pub const FAILED: &str = "failed";
    /// Cancelled by an operator.
    pub const CANCELLED: &str = "cancelled";
    /// Every status, for validation.
    pub const ALL: [&str; 6] = [QUEUED, PLACED, RUNNING, SUCCEEDED, FAILED, CANCELLED];
}

/// Whether a status is final.
pub fn is_terminal(status: &str) -> bool {
    matches!(
        status,
        status::SUCCEEDED | status::FAILED | status::CANCELLED
    )
}

/// Largest task input accepted.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Longest idempotency key.
const MAX_KEY_BYTES: usize = 200;
/// Longest per-attempt timeout a task may ask for.
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// How long a placed task may go unlisted by its node's heartbeats before it counts as lost.
const UNCONFIRMED_GRACE_MS: i64 = 60_000;
/// Queued tasks looked at per dispatcher pass.
const QUEUE_BATCH: u32 = 1000;
/// How long tool metadata read from the store is reused. A push through this hub replaces it at
/// once; a push through another hub sharing the database is seen within this time.
const TOOL_META_TTL: Duration = Duration::from_secs(2);
/// How long after the node accepts an attempt it is marked `running`. Attempts that finish
/// sooner go from `placed` to their result in one write.
const RUNNING_MARK_DELAY: Duration = Duration::from_millis(50);

/// Requirements as JSON (REST bodies, the store) — the same fields as the protobuf message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequirementsSpec {
    /// GPUs: 0, a share below 1 (0.5), or whole devices.
    pub gpus: f64,
    /// Free memory per assigned GPU, MiB.
    pub gpu_memory_mb: u64,
    /// Lowest compute capability, "8.0".
    #[serde(skip_serializing_if = "String::is_empty")]
    pub compute_capability: String,
    /// Labels the node must have.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Capabilities the node must have.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Pinned node.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
}

impl RequirementsSpec {
    /// Checks the fields and converts them for the scheduler.
    pub fn to_requirements(&self) -> Result<Requirements, String> {
        let gpu_milli = Requirements::gpu_milli_from_count(self.gpus)?;
        let min_compute_capability = if self.compute_capability.trim().is_empty() {
            None
        } else {
            Some(
                ComputeCapability::parse(&self.compute_capability)
                    .map_err(|e| format!("compute_capability: {e}"))?,
            )
        };
        let req = Requirements {
            gpu_milli,
            gpu_memory_mb: self.gpu_memory_mb,
            min_compute_capability,
            labels: self.labels.clone(),
            capabilities: self.capabilities.clone(),
            node: (!self.node.is_empty()).then(|| self.node.clone()),
        };
        req.validate()?;
        Ok(req)
    }

    /// From the protobuf message.
    pub fn from_proto(req: Option<&TaskRequirements>) -> Self {
        let Some(req) = req else {
            return Self::default();
        };
        Self {
            gpus: req.gpus,
            gpu_memory_mb: req.gpu_memory_mb,
            compute_capability: req.compute_capability.clone(),
            labels: req.labels.clone().into_iter().collect(),
            capabilities: req.capabilities.clone(),
            node: req.node.clone(),
        }
    }

    /// To the protobuf message.
    pub fn to_proto(&self) -> TaskRequirements {
        TaskRequirements {
            gpus: self.gpus,
            gpu_memory_mb: self.gpu_memory_mb,
            compute_capability: self.compute_capability.clone(),
            labels: self.labels.clone().into_iter().collect(),
            capabilities: self.capabilities.clone(),
            node: self.node.clone(),
        }
    }
}

/// A submit, from any surface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitSpec {
    /// Tool name.
    pub tool: String,
    /// Native command (refused until native execution exists).
    pub command: String,
    /// Input text.
    pub input: String,
    /// Requirements.
    pub requirements: RequirementsSpec,
    /// Retries with the same key return the first task.
    pub idempotency_key: String,
    /// Placements allowed (0: the hub default).
    pub max_attempts: u32,
    /// Wall-time limit per attempt (0: the tool policy's).
    pub timeout_ms: u64,
}

/// Why a task call failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such task (or tool).
    #[error("{0}")]
    NotFound(String),
    /// The task is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something inside the hub failed.
    #[error("{0}")]
    Internal(String),
}

/// What a submit returns.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The task (the first one when the idempotency key was used before).
    pub task: TaskRow,
    /// False when an earlier task with the same idempotency key was returned.
    pub created: bool,
}

fn new_task_id() -> Result<String, TaskError> {
    let bytes = crate::credentials::join::random_bytes::<10>().map_err(|_| {
        TaskError::Internal("the system random generator failed to make a task id".into())
    })?;
    Ok(format!("task-{}", hex::encode(bytes)))
}

/// Validates and stores a task, then wakes the dispatcher.
pub async fn submit(state: &Arc<HubState>, spec: SubmitSpec) -> Result<Submitted, TaskError> {
    let invalid = |m: String| TaskError::Invalid(m);
    match (spec.tool.trim().is_empty(), spec.command.trim().is_empty()) {
        (true, true) => return Err(invalid("a task needs a tool (or a command)".into())),
        (false, false) => return Err(invalid("give a tool or a command, not both".into())),
        (true, false) => {
            return Err(invalid(
                "command: native commands are not supported by this hub yet; push the work as a \
                 WASM tool (`outpost tool push`) and submit it with --tool"
                    .into(),
            ));
        }
        (false, true) => {}
    }
    if spec.input.len() > MAX_INPUT_BYTES {
        return Err(invalid(format!(
            "input: {} bytes is more than the {MAX_INPUT_BYTES} allowed",
            spec.input.len()
        )));
    }
    if spec.idempotency_key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "idempotency_key: longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    if spec.max_attempts > 100 {
        return Err(invalid("max_attempts: at most 100".into()));
    }
    if spec.timeout_ms > MAX_TIMEOUT_MS {
        return Err(invalid("timeout_ms: at most 24 hours".into()));
    }
    let requirements = spec
        .requirements
        .to_requirements()
        .map_err(|e| invalid(format!("requirements: {e}")))?;
    if tool_meta(state, &spec.tool).await?.is_none() {
        return Err(TaskError::NotFound(format!(
            "tool {:?} is not on this hub: push it first (`outpost tool push FILE.wasm --name {}`)",
            spec.tool, spec.tool
        )));
    }
    let now = state.now_ms();
    let mut row = TaskRow {
        id: new_task_id()?,
        tool: spec.tool.clone(),
        command: String::new(),
        input: spec.input,
        requirements: serde_json::to_string(&spec.requirements)
            .map_err(|e| invalid(format!("requirements: {e}")))?,
        idempotency_key: (!spec.idempotency_key.is_empty()).then_some(spec.idempotency_key),
        status: status::QUEUED.into(),
        reason: "waiting for the scheduler".into(),
        max_attempts: i64::from(if spec.max_attempts == 0 {
            state.default_max_attempts
        } else {
            spec.max_attempts
        }),
        timeout_ms: i64::try_from(spec.timeout_ms).unwrap_or(i64::MAX),
        created_at_ms: now,
        updated_at_ms: now,
        ..TaskRow::default()
    };
    // Placed as it is submitted, in the same write, when nothing older waits and no dispatcher
    // pass runs (the dispatcher keeps submit order); otherwise the dispatcher places it.
    let placing = if state
        .queue_backlog
        .load(std::sync::atomic::Ordering::Acquire)
    {
        None
    } else {
        state.placing.try_lock().ok()
    };
    let planned = placing
        .as_ref()
        .map(|_| state.scheduler.lock().place(&row.id, &requirements, now));
    let (stored, placement) = match planned {
        Some(Ok(Ok(placement))) => {
            let (placed, attempt) = placed_rows(&row, &placement, now);
            match state.store.insert_placed_task(&placed, &attempt).await {
                Ok(stored) if stored.id == placed.id => (stored, Some(placement)),
                Ok(taken) => {
                    state.scheduler.lock().release(&row.id);
                    (taken, None)
                }
                Err(e) => {
                    state.scheduler.lock().release(&row.id);
                    return Err(e.into());
                }
            }
        }
        Some(Ok(Err(no_fit))) => {
            state
                .queue_backlog
                .store(true, std::sync::atomic::Ordering::Release);
            row.reason = no_fit.reason;
            (state.store.insert_task(&row).await?, None)
        }
        Some(Err(PlaceError::Invalid(e))) => {
            return Err(invalid(format!("requirements: {e}")));
        }
        Some(Err(PlaceError::AlreadyPlaced(_))) | None => {
            (state.store.insert_task(&row).await?, None)
        }
    };
    drop(placing);
    let created = stored.id == row.id;
    if created {
        tracing::info!(task_id = %row.id, tool = %row.tool, "task submitted");
        state.task_changed();
        match placement {
            Some(placement) => hand_over(state, stored.clone(), placement),
            None => state.dispatch.notify_one(),
        }
    }
    Ok(Submitted {
        task: stored,
        created,
    })
}

/// A tool's metadata, from the cache when read less than [`TOOL_META_TTL`] ago.
async fn tool_meta(
    state: &HubState,
    name: &str,
) -> Result<Option<crate::store::ToolRow>, StoreError> {
    if let Some((tool, read_at)) = state.tool_meta.lock().get(name)
        && read_at.elapsed() < TOOL_META_TTL
    {
        return Ok(Some(tool.clone()));
    }
    let tool = state.store.get_tool_meta(name).await?;
    let mut cache = state.tool_meta.lock();
    match &tool {
        Some(tool) => {
            if cache.len() >= 1024 {
                cache.clear();
            }
            cache.insert(name.to_string(), (tool.clone(), std::time::Instant::now()));
        }
        None => {
            cache.remove(name);
        }
    }
    Ok(tool)
}

/// One task.
pub async fn get(state: &HubState, id: &str) -> Result<TaskRow, TaskError> {
    state
        .store
        .get_task(id)
        .await?
        .ok_or_else(|| TaskError::NotFound(format!("task {id:?} not found")))
}

/// Tasks, newest first, optionally of one status.
pub async fn list(
    state: &HubState,
    status_filter: Option<&str>,
    limit: u32,
) -> Result<Vec<TaskRow>, TaskError> {
    let statuses: Vec<&str> = match status_filter.filter(|s| !s.is_empty()) {
        Some(s) if status::ALL.contains(&s) => vec![s],
        Some(s) => {
            return Err(TaskError::Invalid(format!(
                "status: {s:?} is not one of {}",
                status::ALL.join(", ")
            )));
        }
        None => vec![],
    };
    let limit = if limit == 0 { 100 } else { limit.min(10_000) };
    Ok(state.store.list_tasks(&statuses, limit).await?)
}

/// Cancels a task that has not finished; a running attempt is stopped on its node.
pub async fn cancel(state: &Arc<HubState>, id: &str) -> Result<TaskRow, TaskError> {
    for _ in 0..8 {
        let task = get(state, id).await?;
        if is_terminal(&task.status) {
            return Err(TaskError::Conflict(format!(
                "task {id:?} has already {} and cannot be cancelled",
                task.status
            )));
        }
        let now = state.now_ms();
        let mut next = task.clone();
        next.status = status::CANCELLED.into();
        next.reason = "cancelled by an operator".into();
        next.error_kind = "cancelled".into();
        next.error_message = "cancelled by an operator".into();
        next.updated_at_ms = now;
        next.finished_at_ms = Some(now);
        if !state
            .store
            .update_task(&next, &task.status, task.attempts)
            .await?
        {
            continue; // raced with the dispatcher or a result: look again
        }
        state.scheduler.lock().release(id);
        state.in_flight.lock().remove(id);
        if task.status != status::QUEUED {
            finish_attempt(
                state,
                &task,
                "cancelled",
                None,
                "cancelled",
                "cancelled by an operator",
            )
            .await;
            if let Some(link) = state.links.get(&task.node_id) {
                let attempt = u32::try_from(task.attempts).unwrap_or(0);
                let id = id.to_string();
                tokio::spawn(async move {
                    if let Err(e) = link.cancel_task(&id, attempt).await {
                        tracing::debug!(task_id = %id, error = %e, "cancel not delivered");
                    }
                });
            }
        }
        state.task_changed();
        state.dispatch.notify_one();
        return Ok(next);
    }
    Err(TaskError::Conflict(format!(
        "task {id:?} kept changing; try again"
    )))
}

/// Waits until the task is final or `max_wait` passes; returns it either way.
pub async fn wait(state: &HubState, id: &str, max_wait: Duration) -> Result<TaskRow, TaskError> {
    let mut changes: watch::Receiver<u64> = state.task_changes.subscribe();
    let mut finished = state.last_finished.subscribe();
    let deadline = tokio::time::Instant::now() + max_wait;
    let mut periodic = false;
    loop {
        changes.mark_unchanged();
        finished.mark_unchanged();
        // An attempt this hub placed and has no result for yet is not final: no read needed,
        // except the periodic one (another hub sharing the database may have finished it).
        if periodic || !state.in_flight.lock().contains_key(id) {
            let task = get(state, id).await?;
            if is_terminal(&task.status) {
                return Ok(task);
            }
        }
        periodic = false;
        let tick = tokio::time::sleep(Duration::from_millis(500));
        tokio::select! {
            biased;
            // The finished row itself, when it is this task (no read needed).
            _ = finished.changed() => {
                let row = finished.borrow_and_update().clone();
                if let Some(row) = row.filter(|row| row.id == id) {
                    return Ok((*row).clone());
                }
            }
            _ = changes.changed() => {}
            _ = tick => periodic = true,
            _ = tokio::time::sleep_until(deadline) => return get(state, id).await,
        }
    }
}

/// The protobuf view of a task.
pub fn view(task: &TaskRow) -> TaskView {
    let requirements: RequirementsSpec =
        serde_json::from_str(&task.requirements).unwrap_or_default();
    TaskView {
        id: task.id.clone(),
        tool: task.tool.clone(),
        command: task.command.clone(),
        input: task.input.clone(),
        requirements: Some(requirements.to_proto()),
        status: task.status.clone(),
        node: task.node_id.clone(),
        reason: task.reason.clone(),
        attempts: u32::try_from(task.attempts).unwrap_or(0),
        max_attempts: u32::try_from(task.max_attempts).unwrap_or(0),
        timeout_ms: u64::try_from(task.timeout_ms).unwrap_or(0),
        devices: task
            .devices
            .split(',')
            .filter_map(|d| d.parse().ok())
            .collect(),
        output: task.output.clone().unwrap_or_default(),
        error_kind: task.error_kind.clone(),
        error_message: task.error_message.clone(),
        idempotency_key: task.idempotency_key.clone().unwrap_or_default(),
        created_at_ms: task.created_at_ms,
        updated_at_ms: task.updated_at_ms,
        started_at_ms: task.started_at_ms.unwrap_or(0),
        finished_at_ms: task.finished_at_ms.unwrap_or(0),
        duration_us: u64::try_from(task.duration_us).unwrap_or(0),
        fuel_used: u64::try_from(task.fuel_used).unwrap_or(0),
        late_results: u32::try_from(task.late_results).unwrap_or(0),
    }
}

/// The JSON shape of a task (REST and `--json`).
pub fn view_json(task: &TaskView) -> serde_json::Value {
    let requirements = RequirementsSpec::from_proto(task.requirements.as_ref());
    serde_json::json!({
        "id": task.id,
        "tool": task.tool,
        "input": task.input,
        "requirements": requirements,
        "status": task.status,
        "node": task.node,
        "reason": task.reason,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "timeout_ms": task.timeout_ms,
        "devices": task.devices,
        "output": task.output,
        "error": if task.error_kind.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!({"kind": task.error_kind, "message": task.error_message})
        },
        "idempotency_key": task.idempotency_key,
        "created_at_ms": task.created_at_ms,
        "updated_at_ms": task.updated_at_ms,
        "started_at_ms": task.started_at_ms,
        "finished_at_ms": task.finished_at_ms,
        "duration_us": task.duration_us,
        "fuel_used": task.fuel_used,
        "late_results": task.late_results,
    })
}

// ---------------------------------------------------------------- fleet → scheduler

/// What the scheduler needs from a node's capabilities and fleet state.
pub fn node_report(node_id: &str, caps: &Capabilities, state: &HubState) -> NodeReport {
    let (accepting, gpu_fence) = state
        .fleet
        .lock()
        .placement_state(node_id)
        .unwrap_or((Err("unknown to the fleet".into()), None));
    let mut capabilities: HashSet<String> = caps.software.iter().map(|s| s.name.clone()).collect();
    if let Some(hw) = &caps.hardware {
        capabilities.extend(hw.tags.iter().cloned());
    }
    if let Some(sandbox) = &caps.sandbox {
        if sandbox.wasm {
            capabilities.insert("wasm".into());
        }
        if sandbox.landlock {
            capabilities.insert("landlock".into());
        }
    }
    let devices = caps
        .gpus
        .as_ref()
        .filter(|g| !g.fenced)
        .map(|g| {
            g.devices
                .iter()
                .map(|d| DeviceReport {
                    index: d.index,
                    uuid: d.uuid.clone(),
                    memory_total_mb: d.memory_total_mb,
                    memory_free_mb: d.memory_free_mb,
                    compute_capability: ComputeCapability::parse(&d.compute_capability)
                        .unwrap_or_default(),
                    parent_uuid: d.parent_uuid.clone(),
                    mig_enabled: d.mig_enabled,
                })
                .collect()
        })
        .unwrap_or_default();
    NodeReport {
        id: node_id.into(),
        accepting,
        gpu_fence,
        labels: caps.labels.clone().into_iter().collect(),
        capabilities,
        devices,
    }
}

/// A node's capabilities arrived (session hello or a change): refresh its placement view.
pub fn observe_capabilities(state: &HubState, node_id: &str, caps: &Capabilities) {
    let report = node_report(node_id, caps, state);
    state.scheduler.lock().upsert_node(report);
    state.dispatch.notify_one();
}

/// A heartbeat: fresh free memory, and which tasks run (confirming their reservations).
pub fn observe_heartbeat(state: &HubState, node_id: &str, heartbeat: &Heartbeat) {
    let free = heartbeat
        .gpus
        .iter()
        .flat_map(|g| &g.devices)
        .map(|d| (d.uuid.as_str(), d.memory_free_mb));
    let now = state.now_ms();
    state
        .scheduler
        .lock()
        .observe_heartbeat(node_id, free, &heartbeat.running_tasks, now);
}

// ---------------------------------------------------------------- dispatcher

/// Places queued tasks and handles lost nodes until `shutdown` turns true.
pub async fn run_dispatcher(state: Arc<HubState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = state.dispatch.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = dispatch_once(&state).await {
            tracing::warn!(error = %e, "task dispatch pass failed");
        }
    }
}

/// Tasks that were placed or running when the hub stopped: their attempts are lost (the
/// sessions that carried them are gone), so they go back to the queue (or fail when out of
/// attempts). A result that still arrives from such an attempt is recorded as late.
pub async fn recover_after_restart(state: &HubState) -> Result<usize, StoreError> {
    let orphans = state
        .store
        .queue(&[status::PLACED, status::RUNNING], u32::MAX)
        .await?;
    for task in &orphans {
        requeue(
            state,
            task,
            &format!("the hub restarted during attempt {}", task.attempts),
        )
        .await?;
    }
    Ok(orphans.len())
}

/// One pass: lost nodes first, then the queue in submit order.
pub async fn dispatch_once(state: &Arc<HubState>) -> Result<(), StoreError> {
    let lost: Vec<(String, String)> = std::mem::take(&mut *state.lost_nodes.lock());
    if !lost.is_empty() {
        let active = state
            .store
            .queue(&[status::PLACED, status::RUNNING], u32::MAX)
            .await?;
        let lost: HashMap<String, String> = lost.into_iter().collect();
        for task in active {
            if let Some(reason) = lost.get(&task.node_id) {
                let why = format!("node {} went offline ({reason})", task.node_id);
                requeue(state, &task, &why).await?;
            }
        }
    }
    // Tasks their node no longer runs (it restarted inside the TTL and lost them) go back too.
    let now = state.now_ms();
    let grace = 2 * state.fleet.lock().base_ttl_ms();
    let vanished = state
        .scheduler
        .lock()
        .vanished(now, grace, UNCONFIRMED_GRACE_MS.max(grace));
    for id in vanished {
        match state.store.get_task(&id).await? {
            Some(task) if matches!(task.status.as_str(), status::PLACED | status::RUNNING) => {
                let why = format!(
                    "node {} stopped reporting the task without a result (restarted?)",
                    task.node_id
                );
                requeue(state, &task, &why).await?;
            }
            // Finished or cancelled meanwhile: only the reservation was left.
            _ => {
                state.scheduler.lock().release(&id);
            }
        }
    }
    let _placing = state.placing.lock().await;
    let queued = state.store.queue(&[status::QUEUED], QUEUE_BATCH).await?;
    let full = queued.len() >= QUEUE_BATCH as usize;
    let mut waiting = false;
    for task in queued {
        waiting |= !place_queued(state, &task).await?;
    }
    state
        .queue_backlog
        .store(waiting || full, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Tries to place one queued task; false when it stays queued (no node fits). Callers hold
/// `state.placing`.
async fn place_queued(state: &Arc<HubState>, task: &TaskRow) -> Result<bool, StoreError> {
    let spec: RequirementsSpec = match serde_json::from_str(&task.requirements) {
        Ok(spec) => spec,
        Err(e) => {
            fail(
                state,
                task,
                "invalid_requirements",
                &format!("stored requirements unreadable: {e}"),
            )
            .await?;
            return Ok(true);
        }
    };
    let req = match spec.to_requirements() {
        Ok(req) => req,
        Err(e) => {
            fail(state, task, "invalid_requirements", &e).await?;
            return Ok(true);
        }
    };
    let now = state.now_ms();
    let placed = state.scheduler.lock().place(&task.id, &req, now);
    match placed {
        Ok(Ok(placement)) => place(state, task, placement).await?,
        Ok(Err(no_fit)) => {
            if task.reason != no_fit.reason {
                let mut next = task.clone();
                next.reason = no_fit.reason;
                next.updated_at_ms = now;
                if state
                    .store
                    .update_task(&next, status::QUEUED, task.attempts)
                    .await?
                {
                    state.task_changed();
                }
            }
            return Ok(false);
        }
        Err(PlaceError::AlreadyPlaced(_)) => {
            // A leftover reservation (a race with a cancel): free it; next pass places it.
            state.scheduler.lock().release(&task.id);
            return Ok(false);
        }
        Err(PlaceError::Invalid(e)) => fail(state, task, "invalid_requirements", &e).await?,
    }
    Ok(true)
}

async fn place(
    state: &Arc<HubState>,
    task: &TaskRow,
    placement: Placement,
) -> Result<(), StoreError> {
    let (next, attempt) = placed_rows(task, &placement, state.now_ms());
    if !state
        .store
        .advance_task(&next, status::QUEUED, task.attempts, &attempt)
        .await?
    {
        state.scheduler.lock().release(&task.id);
        return Ok(());
    }
    hand_over(state, next, placement);
    Ok(())
}

/// What placing `task` writes: the task as placed (one attempt more) and that attempt.
fn placed_rows(task: &TaskRow, placement: &Placement, now: i64) -> (TaskRow, AttemptRow) {
    let mut next = task.clone();
    next.status = status::PLACED.into();
    next.node_id = placement.node_id.clone();
    next.devices = placement.device_indexes();
    next.attempts = task.attempts + 1;
    next.reason = if placement.devices.is_empty() {
        format!("placed on {}", placement.node_id)
    } else {
        format!(
            "placed on {} (GPU {}{})",
            placement.node_id,
            next.devices,
            if placement.share_milli < 1000 {
                format!(", share {:.3}", f64::from(placement.share_milli) / 1000.0)
            } else {
                String::new()
            }
        )
    };
    next.updated_at_ms = now;
    next.started_at_ms = None;
    let attempt = AttemptRow {
        task_id: next.id.clone(),
        attempt: next.attempts,
        node_id: next.node_id.clone(),
        status: status::PLACED.into(),
        started_at_ms: now,
        ..AttemptRow::default()
    };
    (next, attempt)
}

/// A placement is stored: remember the row and send the attempt to its node.
fn hand_over(state: &Arc<HubState>, placed: TaskRow, placement: Placement) {
    state
        .in_flight
        .lock()
        .insert(placed.id.clone(), placed.clone());
    tracing::info!(task_id = %placed.id, node_id = %placed.node_id, devices = %placed.devices, attempt = placed.attempts, "task placed");
    state.task_changed();
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = send_to_node(&state, &placed, &placement).await {
            tracing::warn!(task_id = %placed.id, error = %e, "task could not be handed to its node");
        }
    });
}

/// Sends a placed attempt to its node (with the component when the node lacks it).
async fn send_to_node(
    state: &Arc<HubState>,
    task: &TaskRow,
    placement: &Placement,
) -> Result<(), StoreError> {
    let tool_removed = || format!("tool {:?} was removed from the hub", task.tool);
    // The component's bytes are read only if the node turns out to lack them.
    let Some(tool) = tool_meta(state, &task.tool).await? else {
        return fail(state, task, "tool_missing", &tool_removed()).await;
    };
    let Some(link) = state.links.get(&placement.node_id) else {
        return requeue(
            state,
            task,
            &format!("node {} has no session to this hub", placement.node_id),
        )
        .await;
    };
    let mut env = HashMap::new();
    if !placement.devices.is_empty() {
        env.insert(
            "CUDA_VISIBLE_DEVICES".to_string(),
            placement.cuda_visible_devices(),
        );
        // CUDA's own default order is fastest first; the indexes above are NVML's (PCI bus).
        env.insert("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string());
        env.insert(
            "NVIDIA_VISIBLE_DEVICES".to_string(),
            placement.device_uuids.join(","),
        );
    }
    env.insert("OUTPOST_TASK_ID".to_string(), task.id.clone());
    let mut command = RunTask {
        task_id: task.id.clone(),
        attempt: u32::try_from(task.attempts).unwrap_or(u32::MAX),
        tool: tool.name.clone(),
        tool_digest: tool.digest.clone(),
        component: Vec::new(),
        policy_toml: tool.policy_toml.clone(),
        input: task.input.clone(),
        env,
        timeout_ms: u64::try_from(task.timeout_ms).unwrap_or(0),
    };
    let mut answer = link.run_task(command.clone()).await;
    if let Ok(RunAnswer::MissingComponent(_)) = &answer {
        let Some(full) = state.store.get_tool(&task.tool).await? else {
            return fail(state, task, "tool_missing", &tool_removed()).await;
        };
        // Cached metadata may predate a push through another hub: the bytes read now decide.
        command.tool_digest = full.digest;
        command.policy_toml = full.policy_toml;
        command.component = full.component;
        answer = link.run_task(command).await;
    }
    match answer {
        Ok(RunAnswer::Accepted) => {
            let mut next = task.clone();
            let now = state.now_ms();
            next.status = status::RUNNING.into();
            next.started_at_ms = Some(now);
            next.updated_at_ms = now;
            // A fast result may have finished it already: then this write loses, as it should.
            let attempt = AttemptRow {
                task_id: task.id.clone(),
                attempt: task.attempts,
                node_id: task.node_id.clone(),
                status: status::RUNNING.into(),
                started_at_ms: now,
                ..AttemptRow::default()
            };
            // Marked a little later, and only if no result came first: a quick attempt goes
            // from placed to its result in one write.
            let state = state.clone();
            let expected_attempts = task.attempts;
            tokio::spawn(async move {
                tokio::time::sleep(RUNNING_MARK_DELAY).await;
                match state
                    .store
                    .advance_task(&next, status::PLACED, expected_attempts, &attempt)
                    .await
                {
                    Ok(true) => {
                        if let Some(row) = state.in_flight.lock().get_mut(&next.id)
                            && row.attempts == next.attempts
                        {
                            *row = next;
                        }
                        state.task_changed();
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(task_id = %next.id, error = %e, "marking the task running failed")
                    }
                }
            });
            Ok(())
        }
        Ok(RunAnswer::MissingComponent(digest)) => {
            requeue(
                state,
                task,
                &format!(
                    "node {} still lacks component {digest} after it was sent",
                    task.node_id
                ),
            )
            .await
        }
        Err(LinkError::Refused(message)) => {
            requeue(
                state,
                task,
                &format!("node {} refused the task: {message}", task.node_id),
            )
            .await
        }
        Err(e) => {
            requeue(
                state,
                task,
                &format!("sending the task to node {} failed: {e}", task.node_id),
            )
            .await
        }
    }
}

/// Puts a placed or running task back in the queue, or fails it when out of attempts.
async fn requeue(state: &HubState, task: &TaskRow, why: &str) -> Result<(), StoreError> {
    state.scheduler.lock().release(&task.id);
    state.in_flight.lock().remove(&task.id);
    let now = state.now_ms();
    let mut next = task.clone();
    next.updated_at_ms = now;
    next.started_at_ms = None;
    next.devices.clear();
    if task.attempts >= task.max_attempts {
        next.status = status::FAILED.into();
        next.error_kind = "node_lost".into();
        next.error_message = format!(
            "{why}; no attempts left ({} of {})",
            task.attempts, task.max_attempts
        );
        next.reason = next.error_message.clone();
        next.finished_at_ms = Some(now);
    } else {
        next.status = status::QUEUED.into();
        next.reason = format!(
            "{why}; waiting to be placed again (attempt {} of {} used)",
            task.attempts, task.max_attempts
        );
    }
    if state
        .store
        .update_task(&next, &task.status, task.attempts)
        .await?
    {
        finish_attempt(state, task, "lost", None, "node_lost", why).await;
        tracing::warn!(task_id = %task.id, node_id = %task.node_id, status = %next.status, "{why}");
        state.task_changed();
        state.dispatch.notify_one();
    }
    Ok(())
}

async fn fail(
    state: &HubState,
    task: &TaskRow,
    kind: &str,
    message: &str,
) -> Result<(), StoreError> {
    state.scheduler.lock().release(&task.id);
    state.in_flight.lock().remove(&task.id);
    let now = state.now_ms();
    let mut next = task.clone();
    next.status = status::FAILED.into();
    next.error_kind = kind.into();
    next.error_message = message.into();
    next.reason = message.into();
    next.updated_at_ms = now;
    next.finished_at_ms = Some(now);
    if state
        .store
        .update_task(&next, &task.status, task.attempts)
        .await?
    {
        state.task_changed();
    }
    Ok(())
}

async fn finish_attempt(
    state: &HubState,
    task: &TaskRow,
    attempt_status: &str,
    output: Option<String>,
    error_kind: &str,
    error_message: &str,
) {
    let result = state
        .store
        .put_attempt(&AttemptRow {
            task_id: task.id.clone(),
            attempt: task.attempts,
            node_id: task.node_id.clone(),
            status: attempt_status.into(),
            output,
            error_kind: error_kind.into(),
            error_message: error_message.into(),
            started_at_ms: task.started_at_ms.unwrap_or(task.updated_at_ms),
            finished_at_ms: Some(state.now_ms()),
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(task_id = %task.id, error = %e, "recording the attempt failed");
    }
}

/// A node reported the outcome of an attempt.
pub async fn on_result(state: &HubState, node_id: &str, result: TaskResult) {
    if let Err(e) = apply_result(state, node_id, result).await {
        tracing::warn!(node_id = %node_id, error = %e, "task result not recorded");
    }
}

async fn apply_result(
    state: &HubState,
    node_id: &str,
    result: TaskResult,
) -> Result<(), StoreError> {
    let attempt = i64::from(result.attempt);
    tracing::debug!(task_id = %result.task_id, node_id = %node_id, attempt, ok = result.ok, "task result received");
    // The attempt this hub placed is remembered as written; anything else is read. Either way
    // the compare-and-set below decides, and a lost race reads again.
    let remembered = {
        let mut in_flight = state.in_flight.lock();
        match in_flight.get(&result.task_id) {
            Some(row) if row.attempts == attempt && row.node_id == node_id => {
                in_flight.remove(&result.task_id)
            }
            _ => None,
        }
    };
    let task = match remembered {
        Some(task) => task,
        None => match state.store.get_task(&result.task_id).await? {
            Some(task) => task,
            None => {
                tracing::warn!(node_id = %node_id, task_id = %result.task_id, "result for an unknown task dropped");
                return Ok(());
            }
        },
    };
    let current = task.attempts == attempt
        && task.node_id == node_id
        && matches!(task.status.as_str(), status::PLACED | status::RUNNING);
    // The current attempt is described by the task row itself; older ones by their rows.
    let placed = if current {
        AttemptRow {
            task_id: task.id.clone(),
            attempt,
            node_id: task.node_id.clone(),
            status: task.status.clone(),
            started_at_ms: task.started_at_ms.unwrap_or(task.updated_at_ms),
            ..AttemptRow::default()
        }
    } else {
        let attempts = state.store.list_attempts(&task.id).await?;
        let Some(placed) = attempts.into_iter().find(|a| a.attempt == attempt) else {
            tracing::warn!(node_id = %node_id, task_id = %task.id, attempt, "result for an attempt never placed dropped");
            return Ok(());
        };
        placed
    };
    let placed = &placed;
    if placed.node_id != node_id {
        tracing::warn!(node_id = %node_id, task_id = %task.id, attempt, placed_on = %placed.node_id, "result from a node the attempt was not placed on dropped");
        return Ok(());
    }
    let attempt_status = if result.ok {
        status::SUCCEEDED
    } else if result.error_kind == "cancelled" {
        status::CANCELLED
    } else {
        status::FAILED
    };
    let output = result.ok.then(|| result.output.clone());
    let mut attempt_row = placed.clone();
    attempt_row.status = attempt_status.into();
    attempt_row.output = output.clone();
    attempt_row.error_kind = result.error_kind.clone();
    attempt_row.error_message = result.error_message.clone();
    attempt_row.finished_at_ms = Some(state.now_ms());
    if !current {
        // The task moved on (re-run elsewhere, cancelled, or already finished): keep, don't report.
        if placed.finished_at_ms.is_none() || placed.status == "lost" {
            state.store.put_attempt(&attempt_row).await?;
            state.store.count_late_result(&task.id).await?;
            // The remembered row of the attempt now running stays what the store holds.
            if let Some(row) = state.in_flight.lock().get_mut(&task.id) {
                row.late_results += 1;
            }
        }
        tracing::info!(task_id = %task.id, node_id = %node_id, attempt, task_status = %task.status, "late result recorded, not reported");
        return Ok(());
    }
    let now = state.now_ms();
    let mut next = task.clone();
    next.status = attempt_status.into();
    next.output = output;
    next.error_kind = result.error_kind.clone();
    next.error_message = result.error_message.clone();
    next.reason = if result.ok {
        format!("succeeded on {node_id}")
    } else {
        format!(
            "{} on {node_id}: {}",
            result.error_kind, result.error_message
        )
    };
    next.duration_us = i64::try_from(result.duration_us).unwrap_or(i64::MAX);
    next.fuel_used = i64::try_from(result.fuel_used).unwrap_or(i64::MAX);
    next.updated_at_ms = now;
    next.finished_at_ms = Some(now);
    if next.started_at_ms.is_none() {
        next.started_at_ms = Some(placed.started_at_ms);
    }
    if state
        .store
        .advance_task(&next, &task.status, task.attempts, &attempt_row)
        .await?
    {
        state.scheduler.lock().release(&task.id);
        tracing::info!(task_id = %task.id, node_id = %node_id, status = %next.status, "task finished");
        state.last_finished.send_replace(Some(Arc::new(next)));
        state.task_changed();
        state.dispatch.notify_one();
    } else {
        // Lost a race (e.g. to a cancel): the current state wins; look again.
        Box::pin(apply_result(state, node_id, result)).await?;
    }
    Ok(())
}

impl From<TaskError> for tonic::Status {
    fn from(e: TaskError) -> Self {
        match &e {
            TaskError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
            TaskError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            TaskError::Conflict(_) => tonic::Status::failed_precondition(e.to_string()),
            TaskError::Store(_) | TaskError::Internal(_) => tonic::Status::internal(e.to_string()),
        }
    }
}
