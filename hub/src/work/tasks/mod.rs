//! The task engine: tasks submitted through gRPC, REST or the CLI, placed by the
//! [`crate::work::scheduler`], run on a node over its QUIC session, finished by the node's result
//! event.
//!
//! - [`lifecycle`]: statuses and every transition as pure functions, with the guard each is
//!   written under; the races (result, node loss, cancel, late result) are unit-tested there.
//! - [`spec`]: what callers submit, and its checks.
//! - `dispatch`: the dispatcher loop, placement, handing attempts to nodes, lost attempts.
//! - `results`: a node's result, judged by the lifecycle and written.
//! - `capacity`: keeping the scheduler's view of each node current.
//!
//! The store holds every task durably; every transition is one compare-and-set on (status,
//! attempts) with its attempt row in the same transaction (`commit`), so a result, a node loss
//! and a cancel racing for the same task never overwrite one another. This module only performs
//! those writes and their side effects: scheduler reservations, waking waiters and the
//! dispatcher, telling nodes.

pub mod lifecycle;
pub mod spec;

mod capacity;
mod dispatch;
mod results;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{Notify, watch};

pub use capacity::{node_report, observe_capabilities, observe_heartbeat};
pub(crate) use dispatch::device_env;
pub use dispatch::{dispatch_once, recover_after_restart, run_dispatcher};
pub use lifecycle::{AttemptStatus, TaskStatus};
pub use results::on_result;
pub use spec::{MAX_INPUT_BYTES, RequirementsSpec, SubmitSpec, TaskError};

use crate::state::HubState;
use crate::store::{StoreError, TaskRow, ToolRow};
use crate::work::scheduler::{PlaceError, Scheduler};
use lifecycle::Transition;

/// The task engine's handle in the hub's state: the scheduler, the dispatcher's wake-ups and pass
/// count, the attempts this hub has in flight, and what waiters watch.
#[derive(Debug)]
pub struct TaskEngine {
    scheduler: Mutex<Scheduler>,
    /// Wakes the dispatcher (a task was submitted, a node changed, capacity freed).
    dispatch: Notify,
    /// Placements a task may take unless it says (`[scheduler] default_max_attempts`).
    default_max_attempts: u32,
    /// Bumped on every task status change (waiters watch it).
    changes: watch::Sender<u64>,
    /// Counts finished dispatcher passes (tests wait for one instead of sleeping).
    dispatch_passes: watch::Sender<u64>,
    /// Held while queued tasks are being placed (a dispatcher pass, or a submit placing its own
    /// task at once), so one task is never placed by both.
    placing: tokio::sync::Mutex<()>,
    /// True when the last dispatcher pass left tasks queued: a new task then waits its turn
    /// instead of being placed at submit.
    queue_backlog: AtomicBool,
    /// Queued tasks the dispatcher's last pass found no node for (up to one batch), by cause.
    waiting: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// The row of each attempt this hub placed and that has not ended, as last written: a
    /// result for it needs no read before its compare-and-set write (which still decides).
    in_flight: Mutex<HashMap<String, TaskRow>>,
    /// The last task that finished on this hub, as written (waiters take it from here).
    last_finished: watch::Sender<Option<Arc<TaskRow>>>,
    /// Live output and state changes of the tasks someone follows (or whose node streams
    /// output), and the tails of the last ones that ended.
    pub logs: crate::work::output::OutputLogs,
}

/// Ended task logs whose tails stay for late readers (older ones are told from the store).
const TASK_LOGS_KEPT: usize = 256;

impl TaskEngine {
    /// An engine placing with `scheduler`, giving tasks `default_max_attempts` unless they say.
    pub fn new(scheduler: Scheduler, default_max_attempts: u32) -> Self {
        Self {
            scheduler: Mutex::new(scheduler),
            dispatch: Notify::new(),
            default_max_attempts,
            changes: watch::channel(0).0,
            dispatch_passes: watch::channel(0).0,
            placing: tokio::sync::Mutex::new(()),
            queue_backlog: AtomicBool::new(false),
            waiting: Mutex::new(std::collections::BTreeMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            last_finished: watch::channel(None).0,
            logs: crate::work::output::OutputLogs::keeping(TASK_LOGS_KEPT),
        }
    }

    /// The scheduler (pure placement over what heartbeats say).
    pub fn scheduler(&self) -> MutexGuard<'_, Scheduler> {
        self.scheduler.lock()
    }

    /// Queued tasks the dispatcher's last pass found no node for (up to one batch), by the
    /// cause that turned down the most nodes.
    pub fn waiting(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.waiting.lock().clone()
    }

    /// Wakes the dispatcher for a pass.
    pub fn wake_dispatcher(&self) {
        self.dispatch.notify_one();
    }

    /// Counts of finished dispatcher passes (watch it to know a pass has run).
    pub fn dispatch_passes(&self) -> watch::Receiver<u64> {
        self.dispatch_passes.subscribe()
    }

    /// Tells task waiters that some task changed.
    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
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

/// Writes a transition: the task under its guard, with its attempt row in the same transaction.
/// False when the guard no longer holds (another writer got there first).
async fn commit(state: &HubState, transition: &Transition) -> Result<bool, StoreError> {
    let written = write(state, transition).await?;
    if written {
        log_transition(state, &transition.task);
    }
    Ok(written)
}

async fn write(state: &HubState, transition: &Transition) -> Result<bool, StoreError> {
    match &transition.attempt {
        Some(attempt) => {
            state
                .store()
                .advance_task(&transition.task, transition.guard, attempt)
                .await
        }
        None => {
            state
                .store()
                .update_task(&transition.task, transition.guard)
                .await
        }
    }
}

/// What a task's log says of its state.
pub fn describe(task: &TaskRow) -> String {
    let attempt = format!("attempt {}/{}", task.attempts, task.max_attempts);
    match task.status {
        TaskStatus::Queued if task.attempts == 0 => format!("queued: {}", task.reason),
        TaskStatus::Queued => format!("queued again ({attempt} done): {}", task.reason),
        TaskStatus::Placed => format!("placed on {} ({attempt})", task.node_id),
        TaskStatus::Running => format!("running on {} ({attempt})", task.node_id),
        TaskStatus::Succeeded => format!(
            "succeeded on {} in {} ms ({attempt})",
            task.node_id,
            task.duration_us / 1000
        ),
        TaskStatus::Failed | TaskStatus::Cancelled => format!(
            "{} ({attempt}): {}: {}",
            task.status.as_str(),
            task.error_kind,
            task.error_message
        ),
    }
}

/// Notes a task's new state in its log when it has one (someone follows it), and ends the log
/// once the task ended. A tool's output arrives with its result, so it goes in then; a
/// command's went live already.
fn log_transition(state: &HubState, task: &TaskRow) {
    let logs = &state.tasks.logs;
    if !logs.contains(&task.id) {
        return;
    }
    if task.status.is_terminal() {
        let mut last = Vec::new();
        if task.command.is_empty()
            && let Some(output) = task.output.as_ref().filter(|o| !o.is_empty())
        {
            last.push(("stdout", output.clone()));
        }
        last.push(("event", describe(task)));
        logs.finish_with(&task.id, last);
    } else {
        logs.push_if_present(&task.id, "event", describe(task));
    }
}

/// A task's log for a follower: what it holds so far, and the live rest (none when the task
/// ended). A task that ended before anyone followed it is told from the store.
pub async fn follow_log(
    state: &HubState,
    id: &str,
) -> Result<
    (
        Vec<crate::work::output::LogEntry>,
        Option<tokio::sync::broadcast::Receiver<crate::work::output::LogEntry>>,
    ),
    TaskError,
> {
    use crate::work::output::LogEntry;
    let task = get(state, id).await?;
    let logs = &state.tasks.logs;
    if task.status.is_terminal() && !logs.contains(id) {
        let mut entries = Vec::new();
        if let Some(output) = task.output.as_ref().filter(|o| !o.is_empty()) {
            entries.push(LogEntry {
                seq: 1,
                stream: "stdout".into(),
                data: output.clone(),
                at: String::new(),
            });
        }
        entries.push(LogEntry::note(describe(&task)));
        return Ok((entries, None));
    }
    let (mut tail, live) = logs.subscribe(id);
    // It may have ended between the read and the subscription: read again, and end the log
    // here when it did (finishing twice is harmless).
    let now = get(state, id).await?;
    if now.status.is_terminal() && live.is_some() {
        log_transition(state, &now);
        let (tail, _) = logs.subscribe(id);
        return Ok((tail, None));
    }
    tail.insert(0, LogEntry::note(describe(&now)));
    Ok((tail, live))
}

/// Validates and stores a task, then wakes the dispatcher.
pub async fn submit(state: &Arc<HubState>, mut spec: SubmitSpec) -> Result<Submitted, TaskError> {
    let mut requirements = spec.validate()?;
    if spec.command.is_empty() {
        let Some(tool) = tool_meta(state, &spec.tool).await? else {
            return Err(TaskError::NotFound(format!(
                "tool {:?} is not on this hub: push it first (`outpost tool push FILE.wasm --name {}`)",
                spec.tool, spec.tool
            )));
        };
        // What the tool's policy declares (`[placement]`) holds for every task of it.
        let declared = crate::work::tools::declared_requirements(&tool);
        if declared != RequirementsSpec::default() {
            spec.requirements = spec.requirements.with_declared(&declared);
            requirements = spec
                .requirements
                .to_requirements()
                .map_err(|e| TaskError::Invalid(format!("requirements: {e}")))?;
        }
    }
    // The stored requirements are what every later placement reads: a command's need for a
    // node that runs native programs goes with them.
    spec.requirements.capabilities = requirements.capabilities.clone();
    let now = state.now_ms();
    let mut row = TaskRow {
        id: new_task_id()?,
        tool: spec.tool.clone(),
        command: spec.command.clone(),
        workdir: spec.workdir.clone(),
        input: spec.input,
        requirements: serde_json::to_string(&spec.requirements)
            .map_err(|e| TaskError::Invalid(format!("requirements: {e}")))?,
        idempotency_key: (!spec.idempotency_key.is_empty()).then_some(spec.idempotency_key),
        status: TaskStatus::Queued,
        reason: "waiting for the scheduler".into(),
        max_attempts: i64::from(if spec.max_attempts == 0 {
            state.tasks.default_max_attempts
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
        .tasks
        .queue_backlog
        .load(std::sync::atomic::Ordering::Acquire)
    {
        None
    } else {
        state.tasks.placing.try_lock().ok()
    };
    let planned = placing.as_ref().map(|_| {
        state
            .tasks
            .scheduler()
            .place(&row.id, &requirements, state.monotonic_ms())
    });
    if let Some(Ok(outcome)) = &planned {
        state.metrics.placement(outcome.is_ok());
    }
    let (stored, placement) = match planned {
        Some(Ok(Ok(placement))) => {
            let placed = lifecycle::place(&row, &placement, now);
            let attempt = placed.attempt.unwrap_or_default();
            match state
                .store()
                .insert_placed_task(&placed.task, &attempt)
                .await
            {
                Ok(stored) if stored.id == placed.task.id => (stored, Some(placement)),
                Ok(taken) => {
                    state.tasks.scheduler().release(&row.id);
                    (taken, None)
                }
                Err(e) => {
                    state.tasks.scheduler().release(&row.id);
                    return Err(e.into());
                }
            }
        }
        Some(Ok(Err(no_fit))) => {
            state
                .tasks
                .queue_backlog
                .store(true, std::sync::atomic::Ordering::Release);
            row.reason = no_fit.reason;
            (state.store().insert_task(&row).await?, None)
        }
        Some(Err(PlaceError::Invalid(e))) => {
            return Err(TaskError::Invalid(format!("requirements: {e}")));
        }
        Some(Err(PlaceError::AlreadyPlaced(_))) | None => {
            (state.store().insert_task(&row).await?, None)
        }
    };
    drop(placing);
    let created = stored.id == row.id;
    if !created && let Some(field) = spec_difference(&stored, &row) {
        return Err(TaskError::Conflict(format!(
            "idempotency key {:?} was used for task {} with another {field}; use a new key for new work",
            row.idempotency_key.as_deref().unwrap_or_default(),
            stored.id
        )));
    }
    if created {
        tracing::info!(task_id = %row.id, tool = %row.tool, "task submitted");
        state.tasks.changed();
        match placement {
            Some(placement) => dispatch::hand_over(state, stored.clone(), placement),
            None => state.tasks.wake_dispatcher(),
        }
    }
    Ok(Submitted {
        task: stored,
        created,
    })
}

/// The first field in which two submissions differ, if any (what a retried submit must repeat).
fn spec_difference(first: &TaskRow, retried: &TaskRow) -> Option<&'static str> {
    [
        ("tool", first.tool == retried.tool),
        ("command", first.command == retried.command),
        ("workdir", first.workdir == retried.workdir),
        ("input", first.input == retried.input),
        ("requirements", first.requirements == retried.requirements),
        ("max_attempts", first.max_attempts == retried.max_attempts),
        ("timeout_ms", first.timeout_ms == retried.timeout_ms),
    ]
    .into_iter()
    .find_map(|(field, same)| (!same).then_some(field))
}

/// A tool's metadata, from the tool registry's short-lived cache.
async fn tool_meta(state: &HubState, name: &str) -> Result<Option<ToolRow>, StoreError> {
    state.tools.meta(state.store().as_ref(), name).await
}

/// One task.
pub async fn get(state: &HubState, id: &str) -> Result<TaskRow, TaskError> {
    state
        .store()
        .get_task(id)
        .await?
        .ok_or_else(|| TaskError::NotFound(format!("task {id:?} not found")))
}

/// Tasks, newest first, optionally of one status (named as stored: `queued`, `running`, …).
pub async fn list(
    state: &HubState,
    status_filter: Option<&str>,
    limit: u32,
    before: Option<&str>,
) -> Result<TaskPage, TaskError> {
    let statuses: Vec<TaskStatus> = match status_filter.filter(|s| !s.is_empty()) {
        Some(s) => vec![s.parse().map_err(|_| {
            let all: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
            TaskError::Invalid(format!("status: {s:?} is not one of {}", all.join(", ")))
        })?],
        None => vec![],
    };
    let limit = if limit == 0 { 100 } else { limit.min(10_000) };
    let cursor = match before.filter(|b| !b.is_empty()) {
        Some(id) => {
            let task = state.store().get_task(id).await?.ok_or_else(|| {
                TaskError::Invalid(format!("before: no task {id:?} to list from"))
            })?;
            Some((task.created_at_ms, task.id))
        }
        None => None,
    };
    let rows = state
        .store()
        .list_tasks(
            &statuses,
            limit,
            cursor.as_ref().map(|(at, id)| (*at, id.as_str())),
        )
        .await?;
    let full = rows.len() == limit as usize;
    // Outputs may be megabytes each: a page ends once they add up to the budget.
    let mut bytes = 0usize;
    let mut tasks = Vec::with_capacity(rows.len());
    for row in rows {
        bytes += row.output.as_ref().map_or(0, String::len) + row.input.len();
        let over = bytes > MAX_PAGE_BYTES && !tasks.is_empty();
        if over {
            let next_before = tasks.last().map(|t: &TaskRow| t.id.clone());
            return Ok(TaskPage { tasks, next_before });
        }
        tasks.push(row);
    }
    let next_before = if full {
        tasks.last().map(|t| t.id.clone())
    } else {
        None
    };
    Ok(TaskPage { tasks, next_before })
}

/// Inputs and outputs one page of a task list carries at most (a single task past it still
/// comes, alone).
pub const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// One page of a task list, newest first.
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<TaskRow>,
    /// The id to list from for the next page; `None` when this page reached the oldest task.
    pub next_before: Option<String>,
}

/// Cancels a task that has not finished; a running attempt is stopped on its node.
pub async fn cancel(state: &Arc<HubState>, id: &str) -> Result<TaskRow, TaskError> {
    for _ in 0..8 {
        let task = get(state, id).await?;
        let transition = lifecycle::cancel(&task, state.now_ms()).map_err(TaskError::Conflict)?;
        if !commit(state, &transition).await? {
            continue; // raced with the dispatcher or a result: look again
        }
        state.tasks.scheduler().release(id);
        state.tasks.in_flight.lock().remove(id);
        if task.status.is_active()
            && let Some(link) = state.fleet.links().get(&task.node_id)
        {
            let attempt = u32::try_from(task.attempts).unwrap_or(0);
            let id = id.to_string();
            tokio::spawn(async move {
                if let Err(e) = link.cancel_task(&id, attempt).await {
                    tracing::debug!(task_id = %id, error = %e, "cancel not delivered");
                }
            });
        }
        state.tasks.changed();
        state.tasks.wake_dispatcher();
        return Ok(transition.task);
    }
    Err(TaskError::Conflict(format!(
        "task {id:?} kept changing; try again"
    )))
}

/// Waits until the task is final or `max_wait` passes; returns it either way.
pub async fn wait(state: &HubState, id: &str, max_wait: Duration) -> Result<TaskRow, TaskError> {
    let mut changes: watch::Receiver<u64> = state.tasks.changes.subscribe();
    let mut finished = state.tasks.last_finished.subscribe();
    let deadline = tokio::time::Instant::now() + max_wait;
    let mut periodic = false;
    loop {
        changes.mark_unchanged();
        finished.mark_unchanged();
        // An attempt this hub placed and has no result for yet is not final: no read needed,
        // except the periodic one (another hub sharing the database may have finished it).
        if periodic || !state.tasks.in_flight.lock().contains_key(id) {
            let task = get(state, id).await?;
            if task.status.is_terminal() {
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
