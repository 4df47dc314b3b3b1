//! The task lifecycle as pure functions: no store, no clock, no tokio.
//!
//! A task moves `queued → placed → running → succeeded | failed | cancelled`, and back from
//! `placed`/`running` to `queued` when its node is lost (or to `failed` with `node_lost` once its
//! attempts are spent). Every function here takes the task as last read and returns the
//! [`Transition`] to write: the rows and the [`Guard`] (status and attempt count) the store's
//! compare-and-set must still find. Two transitions computed from the same read — a result and a
//! node loss, a result and a cancel — carry the same guard, so the store lets exactly one of them
//! through; the loser reads again and asks again. The async engine ([`super`]) only performs the
//! write and its side effects (scheduler reservations, waking waiters, telling nodes).
//!
//! A result is judged against the attempt it names ([`judge_result`]): the task's current
//! attempt finishes the task; an older attempt that never finished (or was marked lost) is
//! recorded on its own row as a late result and never reported; anything else is dropped.

use std::fmt;
use std::str::FromStr;

use outpost_proto::v1::TaskResult;

use crate::store::{AttemptRow, TaskRow};
use crate::work::scheduler::Placement;

/// Where a task is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TaskStatus {
    /// Waiting for a node that fits.
    #[default]
    Queued,
    /// Placed on a node, being sent to it.
    Placed,
    /// The node accepted it and runs it.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error (or out of attempts).
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 6] = [
        Self::Queued,
        Self::Placed,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name stored and shown (`queued`, `placed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Placed => "placed",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the task has ended (nothing changes it any more).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Whether an attempt is out on a node (placed or running).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Placed | Self::Running)
    }
}

/// What one attempt of a task came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttemptStatus {
    /// Sent (or being sent) to its node.
    #[default]
    Placed,
    /// Accepted by its node.
    Running,
    /// Returned a result.
    Succeeded,
    /// Returned an error, or could not be run.
    Failed,
    /// Stopped by a cancel.
    Cancelled,
    /// Its node went away before it reported (a result may still come: a late one).
    Lost,
}

impl AttemptStatus {
    /// Every status.
    pub const ALL: [AttemptStatus; 6] = [
        Self::Placed,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Lost,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
        }
    }
}

/// A status name that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

macro_rules! status_text {
    ($status:ty) => {
        impl FromStr for $status {
            type Err = UnknownStatus;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|status| status.as_str() == text)
                    .ok_or_else(|| UnknownStatus(text.to_string()))
            }
        }

        impl fmt::Display for $status {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
status_text!(TaskStatus);
status_text!(AttemptStatus);

/// What the store's compare-and-set must still find for a transition to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// The status the task was read with.
    pub status: TaskStatus,
    /// The attempt count it was read with.
    pub attempts: i64,
}

impl Guard {
    /// The guard for a change to `task` as read.
    pub fn of(task: &TaskRow) -> Self {
        Self {
            status: task.status,
            attempts: task.attempts,
        }
    }

    /// Whether the stored row still is what the transition was computed from.
    pub fn admits(&self, stored: &TaskRow) -> bool {
        stored.status == self.status && stored.attempts == self.attempts
    }
}

/// One step of the lifecycle: the task row to write, the attempt row written with it in the same
/// transaction (when the step ends or starts an attempt), and the guard both are written under.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// What the stored task must still be.
    pub guard: Guard,
    /// The task after the step.
    pub task: TaskRow,
    /// The attempt row the step writes, if any.
    pub attempt: Option<AttemptRow>,
}

/// The error kind of a task whose node was lost once too often.
pub const NODE_LOST: &str = "node_lost";
/// The error kind of a cancelled task.
pub const CANCELLED: &str = "cancelled";
const CANCELLED_BY_OPERATOR: &str = "cancelled by an operator";

/// The row of the task's current attempt, as the task row describes it.
pub fn current_attempt(task: &TaskRow) -> AttemptRow {
    AttemptRow {
        task_id: task.id.clone(),
        attempt: task.attempts,
        node_id: task.node_id.clone(),
        status: if task.status == TaskStatus::Running {
            AttemptStatus::Running
        } else {
            AttemptStatus::Placed
        },
        started_at_ms: task.started_at_ms.unwrap_or(task.updated_at_ms),
        ..AttemptRow::default()
    }
}

/// The current attempt, ended with `status` and the error (if any) at `now_ms`.
fn ended_attempt(
    task: &TaskRow,
    status: AttemptStatus,
    error_kind: &str,
    error_message: &str,
    now_ms: i64,
) -> AttemptRow {
    AttemptRow {
        status,
        error_kind: error_kind.into(),
        error_message: error_message.into(),
        finished_at_ms: Some(now_ms),
        ..current_attempt(task)
    }
}

/// Placing a queued task on a node: one attempt more, and that attempt's row.
pub fn place(task: &TaskRow, placement: &Placement, now_ms: i64) -> Transition {
    let mut next = task.clone();
    next.status = TaskStatus::Placed;
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
    next.updated_at_ms = now_ms;
    next.started_at_ms = None;
    let attempt = AttemptRow {
        task_id: next.id.clone(),
        attempt: next.attempts,
        node_id: next.node_id.clone(),
        status: AttemptStatus::Placed,
        started_at_ms: now_ms,
        ..AttemptRow::default()
    };
    Transition {
        guard: Guard::of(task),
        task: next,
        attempt: Some(attempt),
    }
}

/// A queued task still fits nowhere: record the new reason (nothing to write when it is the
/// same).
pub fn still_queued(task: &TaskRow, reason: &str, now_ms: i64) -> Option<Transition> {
    if task.status != TaskStatus::Queued || task.reason == reason {
        return None;
    }
    let mut next = task.clone();
    next.reason = reason.into();
    next.updated_at_ms = now_ms;
    Some(Transition {
        guard: Guard::of(task),
        task: next,
        attempt: None,
    })
}

/// The node accepted a placed attempt: it is running. Nothing when the task is no longer placed
/// (a quick result came first).
pub fn mark_running(task: &TaskRow, now_ms: i64) -> Option<Transition> {
    if task.status != TaskStatus::Placed {
        return None;
    }
    let mut next = task.clone();
    next.status = TaskStatus::Running;
    next.started_at_ms = Some(now_ms);
    next.updated_at_ms = now_ms;
    let attempt = AttemptRow {
        status: AttemptStatus::Running,
        started_at_ms: now_ms,
        ..current_attempt(task)
    };
    Some(Transition {
        guard: Guard::of(task),
        task: next,
        attempt: Some(attempt),
    })
}

/// The attempt out on a node is lost (`why`: the node went offline, refused it, forgot it, the
/// hub restarted): the task goes back to the queue, or fails with [`NODE_LOST`] when it has used
/// all its attempts. The attempt's row is marked lost in the same write. Nothing when no attempt
/// is out.
pub fn lose_attempt(task: &TaskRow, why: &str, now_ms: i64) -> Option<Transition> {
    if !task.status.is_active() {
        return None;
    }
    let mut next = task.clone();
    next.updated_at_ms = now_ms;
    next.started_at_ms = None;
    next.devices.clear();
    if task.attempts >= task.max_attempts {
        next.status = TaskStatus::Failed;
        next.error_kind = NODE_LOST.into();
        next.error_message = format!(
            "{why}; no attempts left ({} of {})",
            task.attempts, task.max_attempts
        );
        next.reason = next.error_message.clone();
        next.finished_at_ms = Some(now_ms);
    } else {
        next.status = TaskStatus::Queued;
        next.reason = format!(
            "{why}; waiting to be placed again (attempt {} of {} used)",
            task.attempts, task.max_attempts
        );
    }
    Some(Transition {
        guard: Guard::of(task),
        task: next,
        attempt: Some(ended_attempt(
            task,
            AttemptStatus::Lost,
            NODE_LOST,
            why,
            now_ms,
        )),
    })
}

/// The task cannot run at all (its requirements are unreadable, its tool was removed): it fails
/// with `kind`, and an attempt that was out is ended as failed with it. Nothing when it has
/// already ended.
pub fn fail(task: &TaskRow, kind: &str, message: &str, now_ms: i64) -> Option<Transition> {
    (!task.status.is_terminal()).then(|| {
        end_task(
            task,
            (TaskStatus::Failed, AttemptStatus::Failed),
            kind,
            message,
            now_ms,
        )
    })
}

/// An operator cancels the task; an attempt that was out is ended as cancelled with it. A task
/// that has ended cannot be cancelled: the error says how it ended.
pub fn cancel(task: &TaskRow, now_ms: i64) -> Result<Transition, String> {
    if task.status.is_terminal() {
        return Err(format!(
            "task {:?} has already {} and cannot be cancelled",
            task.id, task.status
        ));
    }
    Ok(end_task(
        task,
        (TaskStatus::Cancelled, AttemptStatus::Cancelled),
        CANCELLED,
        CANCELLED_BY_OPERATOR,
        now_ms,
    ))
}

/// Ends a task that has not ended with `statuses.0`, the error `kind` and `message` (which is also
/// its reason); an attempt that was out ends with `statuses.1` and the same error.
fn end_task(
    task: &TaskRow,
    statuses: (TaskStatus, AttemptStatus),
    kind: &str,
    message: &str,
    now_ms: i64,
) -> Transition {
    let mut next = task.clone();
    next.status = statuses.0;
    next.error_kind = kind.into();
    next.error_message = message.into();
    next.reason = message.into();
    next.updated_at_ms = now_ms;
    next.finished_at_ms = Some(now_ms);
    let attempt = task
        .status
        .is_active()
        .then(|| ended_attempt(task, statuses.1, kind, message, now_ms));
    Transition {
        guard: Guard::of(task),
        task: next,
        attempt,
    }
}

/// Whether a result from `node_id` for `attempt` is the task's current attempt, which is
/// described by the task row itself (any other attempt by its own row).
pub fn is_current(task: &TaskRow, node_id: &str, attempt: i64) -> bool {
    task.attempts == attempt && task.node_id == node_id && task.status.is_active()
}

/// What a node's result for an attempt comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultVerdict {
    /// It is the current attempt's: the task ends with it.
    Finish(Box<Transition>),
    /// An older attempt that had not ended (or was marked lost): its row records the result,
    /// the task counts one late result, and nothing is reported.
    Late(AttemptRow),
    /// The attempt has ended already (a repeated result, or one after a cancel): nothing to do.
    AlreadyEnded,
    /// The node is not the one the attempt was placed on: dropped.
    WrongNode {
        /// Where the attempt was placed.
        placed_on: String,
    },
}

/// Judges `result` from `node_id` against `task` and the row of the attempt it names
/// (`placed`: [`current_attempt`] when [`is_current`], else the attempt's stored row).
pub fn judge_result(
    task: &TaskRow,
    placed: &AttemptRow,
    node_id: &str,
    result: &TaskResult,
    now_ms: i64,
) -> ResultVerdict {
    if placed.node_id != node_id {
        return ResultVerdict::WrongNode {
            placed_on: placed.node_id.clone(),
        };
    }
    let (task_status, attempt_status) = if result.ok {
        (TaskStatus::Succeeded, AttemptStatus::Succeeded)
    } else if result.error_kind == CANCELLED {
        (TaskStatus::Cancelled, AttemptStatus::Cancelled)
    } else {
        (TaskStatus::Failed, AttemptStatus::Failed)
    };
    let output = result.ok.then(|| result.output.clone());
    let attempt = AttemptRow {
        status: attempt_status,
        output: output.clone(),
        error_kind: result.error_kind.clone(),
        error_message: result.error_message.clone(),
        finished_at_ms: Some(now_ms),
        ..placed.clone()
    };
    if !is_current(task, node_id, placed.attempt) {
        // The task moved on (re-run elsewhere, cancelled, or finished): keep, don't report.
        return if placed.finished_at_ms.is_none() || placed.status == AttemptStatus::Lost {
            ResultVerdict::Late(attempt)
        } else {
            ResultVerdict::AlreadyEnded
        };
    }
    let mut next = task.clone();
    next.status = task_status;
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
    next.updated_at_ms = now_ms;
    next.finished_at_ms = Some(now_ms);
    if next.started_at_ms.is_none() {
        next.started_at_ms = Some(placed.started_at_ms);
    }
    ResultVerdict::Finish(Box::new(Transition {
        guard: Guard::of(task),
        task: next,
        attempt: Some(attempt),
    }))
}

#[cfg(test)]
mod tests;
