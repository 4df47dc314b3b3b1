//! The dispatcher: places queued tasks in submit order, hands each attempt to its node, and puts
//! back the attempts of lost nodes.
//!
//! It wakes on every submit, result, node change and freed capacity (and every half second);
//! each pass first ends the attempts of nodes that went offline or forgot their tasks
//! ([`lifecycle::lose_attempt`]: queued again, or failed once out of attempts), then places the
//! queue. Every pass is counted ([`super::TaskEngine::dispatch_passes`]), so a test can wait
//! for a pass to have happened instead of sleeping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::v1::RunTask;
use tokio::sync::watch;

use super::lifecycle::{self, TaskStatus};
use super::{RequirementsSpec, commit, tool_meta};
use crate::fleet::links::{LinkError, RunAnswer};
use crate::state::HubState;
use crate::store::{StoreError, TaskRow};
use crate::work::scheduler::{PlaceError, Placement};

/// How long a placed task may go unlisted by its node's heartbeats before it counts as lost.
const UNCONFIRMED_GRACE_MS: i64 = 60_000;
/// Queued tasks looked at per dispatcher pass.
const QUEUE_BATCH: u32 = 1000;
/// How long after the node accepts an attempt it is marked `running`. Attempts that finish
/// sooner go from `placed` to their result in one write.
const RUNNING_MARK_DELAY: Duration = Duration::from_millis(50);
/// The statuses of a task whose attempt is out on a node.
const ACTIVE: [TaskStatus; 2] = [TaskStatus::Placed, TaskStatus::Running];

/// Places queued tasks and handles lost nodes until `shutdown` turns true.
pub async fn run_dispatcher(state: Arc<HubState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = state.tasks.dispatch.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = dispatch_once(&state).await {
            tracing::warn!(error = %e, "task dispatch pass failed");
        }
        state
            .tasks
            .dispatch_passes
            .send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Tasks that were placed or running when the hub stopped: their attempts are lost (the
/// sessions that carried them are gone), so they go back to the queue (or fail when out of
/// attempts). A result that still arrives from such an attempt is recorded as late.
pub async fn recover_after_restart(state: &HubState) -> Result<usize, StoreError> {
    let orphans = state.store().queue(&ACTIVE, u32::MAX).await?;
    for task in &orphans {
        lose_attempt(
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
    let lost = state.fleet.take_lost_nodes();
    for (node_id, reason) in &lost {
        crate::work::agents::node_lost(state, node_id, reason).await;
    }
    if !lost.is_empty() {
        let active = state.store().queue(&ACTIVE, u32::MAX).await?;
        let lost: HashMap<String, String> = lost.into_iter().collect();
        for task in active {
            if let Some(reason) = lost.get(&task.node_id) {
                let why = format!("node {} went offline ({reason})", task.node_id);
                lose_attempt(state, &task, &why).await?;
            }
        }
    }
    // Tasks their node no longer runs (it restarted inside the TTL and lost them) go back too.
    let now = state.monotonic_ms();
    let grace = 2 * state.fleet.liveness().base_ttl_ms();
    let vanished = state
        .tasks
        .scheduler()
        .vanished(now, grace, UNCONFIRMED_GRACE_MS.max(grace));
    for id in vanished {
        match state.store().get_task(&id).await? {
            Some(task) if task.status.is_active() => {
                let why = format!(
                    "node {} stopped reporting the task without a result (restarted?)",
                    task.node_id
                );
                lose_attempt(state, &task, &why).await?;
            }
            // Finished or cancelled meanwhile: only the reservation was left.
            _ => {
                state.tasks.scheduler().release(&id);
            }
        }
    }
    let _placing = state.tasks.placing.lock().await;
    let queued = state
        .store()
        .queue(&[TaskStatus::Queued], QUEUE_BATCH)
        .await?;
    let full = queued.len() >= QUEUE_BATCH as usize;
    let mut waiting = std::collections::BTreeMap::<&'static str, u64>::new();
    for task in queued {
        if let Some(cause) = place_queued(state, &task).await? {
            *waiting.entry(cause).or_default() += 1;
        }
    }
    let any_waiting = !waiting.is_empty();
    *state.tasks.waiting.lock() = waiting;
    let waiting = any_waiting;
    state
        .tasks
        .queue_backlog
        .store(waiting || full, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Why a queued task still waits, by the cause that turned down the most nodes (the scheduler's
/// fixed cause names), or that there is no node to ask.
fn waiting_cause(no_fit: &crate::work::scheduler::NoFit) -> &'static str {
    no_fit
        .by_cause
        .iter()
        .max_by_key(|(_, count)| **count)
        .map_or("no node to place it on", |(cause, _)| *cause)
}

/// Tries to place one queued task; `Some(cause)` when it stays queued (no node fits, and why).
/// Callers hold `state.tasks.placing`.
async fn place_queued(
    state: &Arc<HubState>,
    task: &TaskRow,
) -> Result<Option<&'static str>, StoreError> {
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
            return Ok(None);
        }
    };
    let req = match spec.to_requirements() {
        Ok(req) => req,
        Err(e) => {
            fail(state, task, "invalid_requirements", &e).await?;
            return Ok(None);
        }
    };
    let placed = state
        .tasks
        .scheduler()
        .place(&task.id, &req, state.monotonic_ms());
    if let Ok(outcome) = &placed {
        state.metrics.placement(outcome.is_ok());
    }
    match placed {
        Ok(Ok(placement)) => place(state, task, placement).await?,
        Ok(Err(no_fit)) => {
            if let Some(transition) = lifecycle::still_queued(task, &no_fit.reason, state.now_ms())
                && commit(state, &transition).await?
            {
                state.tasks.changed();
            }
            return Ok(Some(waiting_cause(&no_fit)));
        }
        Err(PlaceError::AlreadyPlaced(_)) => {
            // A leftover reservation (a race with a cancel): free it; next pass places it.
            state.tasks.scheduler().release(&task.id);
            return Ok(Some("placed again next pass"));
        }
        Err(PlaceError::Invalid(e)) => fail(state, task, "invalid_requirements", &e).await?,
    }
    Ok(None)
}

async fn place(
    state: &Arc<HubState>,
    task: &TaskRow,
    placement: Placement,
) -> Result<(), StoreError> {
    let transition = lifecycle::place(task, &placement, state.now_ms());
    if !commit(state, &transition).await? {
        state.tasks.scheduler().release(&task.id);
        return Ok(());
    }
    hand_over(state, transition.task, placement);
    Ok(())
}

/// A placement is stored: remember the row and send the attempt to its node.
pub(super) fn hand_over(state: &Arc<HubState>, placed: TaskRow, placement: Placement) {
    state
        .tasks
        .in_flight
        .lock()
        .insert(placed.id.clone(), placed.clone());
    tracing::info!(task_id = %placed.id, node_id = %placed.node_id, devices = %placed.devices, attempt = placed.attempts, "task placed");
    state.tasks.changed();
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = send_to_node(&state, &placed, &placement).await {
            tracing::warn!(task_id = %placed.id, error = %e, "task could not be handed to its node");
        }
    });
}

/// The environment that hands a placement's GPU devices to a program: CUDA's and NVIDIA's
/// device lists (none without GPUs).
pub(crate) fn device_env(placement: &Placement) -> HashMap<String, String> {
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
    env
}

/// Sends a placed attempt to its node (with the component when the node lacks it).
async fn send_to_node(
    state: &Arc<HubState>,
    task: &TaskRow,
    placement: &Placement,
) -> Result<(), StoreError> {
    let tool_removed = || format!("tool {:?} was removed from the hub", task.tool);
    // A native command has no tool; a tool's component bytes are read only if the node turns
    // out to lack them.
    let tool = if task.command.is_empty() {
        match tool_meta(state, &task.tool).await? {
            Some(tool) => Some(tool),
            None => return fail(state, task, "tool_missing", &tool_removed()).await,
        }
    } else {
        None
    };
    let Some(link) = state.fleet.links().get(&placement.node_id) else {
        return lose_attempt(
            state,
            task,
            &format!("node {} has no session to this hub", placement.node_id),
        )
        .await;
    };
    let mut env = device_env(placement);
    env.insert("OUTPOST_TASK_ID".to_string(), task.id.clone());
    let mut run = RunTask {
        task_id: task.id.clone(),
        attempt: u32::try_from(task.attempts).unwrap_or(u32::MAX),
        input: task.input.clone(),
        env,
        timeout_ms: u64::try_from(task.timeout_ms).unwrap_or(0),
        command: task.command.clone(),
        workdir: task.workdir.clone(),
        ..RunTask::default()
    };
    if let Some(tool) = &tool {
        run.tool = tool.name.clone();
        run.tool_digest = tool.digest.clone();
        run.policy_toml = tool.policy_toml.clone();
        run.signature = crate::work::tools::signature_of(tool);
    }
    let mut sent_tool = (run.tool.clone(), run.tool_digest.clone());
    let mut answer = link.run_task(run.clone()).await;
    if let Ok(RunAnswer::MissingComponent(_)) = &answer {
        // The bytes go within the hub-wide transfer limit, as installs do.
        let _turn = state.tools.transfer_turn().await;
        let Some(full) = state.store().get_tool(&task.tool).await? else {
            return fail(state, task, "tool_missing", &tool_removed()).await;
        };
        // Cached metadata may predate a push through another hub: the bytes read now decide.
        run.tool_digest = full.digest;
        sent_tool.1 = run.tool_digest.clone();
        run.policy_toml = full.policy_toml;
        run.component = full.component;
        answer = link.run_task(run).await;
    }
    let why = match answer {
        Ok(RunAnswer::Accepted) => {
            if !sent_tool.0.is_empty() {
                // The node took the task, so it holds (and compiled) this component.
                state
                    .tools
                    .note_installed(&sent_tool.0, &sent_tool.1, &task.node_id);
            }
            mark_running_soon(state, task);
            return Ok(());
        }
        Ok(RunAnswer::MissingComponent(digest)) => format!(
            "node {} still lacks component {digest} after it was sent",
            task.node_id
        ),
        Err(LinkError::Refused(message)) => {
            format!("node {} refused the task: {message}", task.node_id)
        }
        Err(e) => format!("sending the task to node {} failed: {e}", task.node_id),
    };
    lose_attempt(state, task, &why).await
}

/// The node accepted the attempt: it is marked running a little later, and only if no result
/// came first, so a quick attempt goes from placed to its result in one write.
fn mark_running_soon(state: &Arc<HubState>, placed: &TaskRow) {
    let state = state.clone();
    let placed = placed.clone();
    tokio::spawn(async move {
        tokio::time::sleep(RUNNING_MARK_DELAY).await;
        let Some(transition) = lifecycle::mark_running(&placed, state.now_ms()) else {
            return;
        };
        match commit(&state, &transition).await {
            Ok(true) => {
                if let Some(row) = state.tasks.in_flight.lock().get_mut(&placed.id)
                    && row.attempts == transition.task.attempts
                {
                    *row = transition.task;
                }
                state.tasks.changed();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(task_id = %placed.id, error = %e, "marking the task running failed")
            }
        }
    });
}

/// Ends a placed or running attempt as lost: the task is queued again, or fails when out of
/// attempts; the attempt row is written in the same transaction.
pub(super) async fn lose_attempt(
    state: &HubState,
    task: &TaskRow,
    why: &str,
) -> Result<(), StoreError> {
    let transition = lifecycle::lose_attempt(task, why, state.now_ms());
    if end_attempt(state, task, transition).await? {
        tracing::warn!(task_id = %task.id, node_id = %task.node_id, "{why}");
        state.tasks.wake_dispatcher();
    }
    Ok(())
}

/// Fails a task that cannot run (with the attempt that was out, if any).
async fn fail(
    state: &HubState,
    task: &TaskRow,
    kind: &str,
    message: &str,
) -> Result<(), StoreError> {
    let transition = lifecycle::fail(task, kind, message, state.now_ms());
    end_attempt(state, task, transition).await?;
    Ok(())
}

/// Frees what the task's attempt held (its reservation, its in-flight row) and writes
/// `transition`, if the lifecycle gave one; true when it was written.
async fn end_attempt(
    state: &HubState,
    task: &TaskRow,
    transition: Option<lifecycle::Transition>,
) -> Result<bool, StoreError> {
    state.tasks.scheduler().release(&task.id);
    state.tasks.in_flight.lock().remove(&task.id);
    let Some(transition) = transition else {
        return Ok(false);
    };
    let written = commit(state, &transition).await?;
    if written {
        state.tasks.changed();
    }
    Ok(written)
}
