//! A node's result for an attempt: judged by [`lifecycle::judge_result`], then written.
//!
//! The row of an attempt this hub placed is remembered until its result, so the usual result
//! needs no read before its compare-and-set; anything else is read. A lost compare-and-set (a
//! cancel or a node loss got there first) reads again and is judged again.

use std::sync::Arc;

use outpost_proto::v1::TaskResult;

use super::commit;
use super::lifecycle::{self, ResultVerdict};
use crate::state::HubState;
use crate::store::StoreError;

/// A node reported the outcome of an attempt.
pub async fn on_result(state: &HubState, node_id: &str, result: TaskResult) {
    let kind = if result.ok {
        "ok"
    } else {
        result.error_kind.as_str()
    };
    state
        .metrics
        .task_result(std::time::Duration::from_micros(result.duration_us), kind);
    if let Err(e) = apply_result(state, node_id, &result).await {
        tracing::warn!(node_id = %node_id, error = %e, "task result not recorded");
    }
}

/// Attempts at writing one result before giving up (each lost race reads again).
const MAX_RESULT_RACES: usize = 8;

async fn apply_result(
    state: &HubState,
    node_id: &str,
    result: &TaskResult,
) -> Result<(), StoreError> {
    let attempt = i64::from(result.attempt);
    tracing::debug!(task_id = %result.task_id, node_id = %node_id, attempt, ok = result.ok, "task result received");
    for _ in 0..MAX_RESULT_RACES {
        // The attempt this hub placed is remembered as written; anything else is read. Either
        // way the compare-and-set decides, and a lost race reads again.
        let remembered = {
            let mut in_flight = state.tasks.in_flight.lock();
            match in_flight.get(&result.task_id) {
                Some(row) if row.attempts == attempt && row.node_id == node_id => {
                    in_flight.remove(&result.task_id)
                }
                _ => None,
            }
        };
        let task = match remembered {
            Some(task) => task,
            None => match state.store().get_task(&result.task_id).await? {
                Some(task) => task,
                None => {
                    tracing::warn!(node_id = %node_id, task_id = %result.task_id, "result for an unknown task dropped");
                    return Ok(());
                }
            },
        };
        // The current attempt is described by the task row itself; older ones by their rows.
        let placed = if lifecycle::is_current(&task, node_id, attempt) {
            lifecycle::current_attempt(&task)
        } else {
            let attempts = state.store().list_attempts(&task.id).await?;
            let Some(placed) = attempts.into_iter().find(|a| a.attempt == attempt) else {
                tracing::warn!(node_id = %node_id, task_id = %task.id, attempt, "result for an attempt never placed dropped");
                return Ok(());
            };
            placed
        };
        match lifecycle::judge_result(&task, &placed, node_id, result, state.now_ms()) {
            ResultVerdict::Finish(transition) => {
                if !commit(state, &transition).await? {
                    continue; // lost a race (e.g. to a cancel): the current state wins; look again
                }
                state.tasks.scheduler().release(&task.id);
                tracing::info!(task_id = %task.id, node_id = %node_id, status = %transition.task.status, "task finished");
                state
                    .tasks
                    .last_finished
                    .send_replace(Some(Arc::new(transition.task)));
                state.tasks.changed();
                state.tasks.wake_dispatcher();
            }
            ResultVerdict::Late(attempt_row) => {
                state.store().put_attempt(&attempt_row).await?;
                state.store().count_late_result(&task.id).await?;
                // The remembered row of the attempt now running stays what the store holds.
                if let Some(row) = state.tasks.in_flight.lock().get_mut(&task.id) {
                    row.late_results += 1;
                }
                tracing::info!(task_id = %task.id, node_id = %node_id, attempt, task_status = %task.status, "late result recorded, not reported");
            }
            ResultVerdict::AlreadyEnded => {
                tracing::info!(task_id = %task.id, node_id = %node_id, attempt, task_status = %task.status, "result for an attempt that has ended ignored");
            }
            ResultVerdict::WrongNode { placed_on } => {
                tracing::warn!(node_id = %node_id, task_id = %task.id, attempt, placed_on = %placed_on, "result from a node the attempt was not placed on dropped");
            }
        }
        return Ok(());
    }
    tracing::warn!(node_id = %node_id, task_id = %result.task_id, attempt, "task kept changing; result not recorded");
    Ok(())
}
