//! Time triggers: per actor, a cron expression or an interval with a payload; each due slot
//! sends the actor one message (and wakes it when it is an agent marked `wake_on_message`).
//!
//! Exactly once per slot: firing moves the trigger's next slot forward only if it still is the
//! slot being fired, and stores the message in the same transaction ([`ActorStore::fire_trigger`]),
//! so of two hubs on one PostgreSQL, or a hub and its own restarted self, one fires the slot and
//! the other finds it gone. Slots that passed while no hub ran (a restart) come as one message,
//! for the latest of them; the trigger then goes on from the next slot still ahead.
//!
//! [`ActorStore::fire_trigger`]: crate::store::actors::ActorStore::fire_trigger

use std::sync::Arc;
use std::time::Duration;

use crate::actors::schedule::Schedule;
use crate::actors::{check_actor_id, check_payload, mailbox};
use crate::state::HubState;
use crate::store::actors::{NewMessage, TriggerRow};
use crate::work::tasks::TaskError;

/// How often the hub looks for due triggers (and sweeps dead letters every tenth time).
pub const TICK: Duration = Duration::from_millis(250);

/// Most triggers one actor may have.
pub const MAX_PER_ACTOR: usize = 100;

/// The sender of a trigger's messages.
pub fn sender_of(trigger_id: &str) -> String {
    format!("trigger:{trigger_id}")
}

/// A create, from any surface: exactly one of `cron` and `every`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateTrigger {
    /// The actor it sends to.
    pub actor_id: String,
    /// A five-field cron expression (UTC).
    pub cron: String,
    /// An interval (`30s`, `5m`).
    pub every: String,
    /// JSON text each message carries (empty: `{}`).
    pub payload: String,
}

fn new_trigger_id() -> Result<String, TaskError> {
    let mut bytes = [0_u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| TaskError::Internal("no randomness for a trigger id".into()))?;
    Ok(format!("t-{}", hex::encode(bytes)))
}

/// The schedule a create names.
fn schedule_of(request: &CreateTrigger) -> Result<Schedule, TaskError> {
    match (request.cron.trim(), request.every.trim()) {
        ("", "") => Err(TaskError::Invalid(
            "schedule: give a cron expression (--cron) or an interval (--every)".into(),
        )),
        (cron, "") => Schedule::cron(cron).map_err(|e| TaskError::Invalid(format!("cron: {e}"))),
        ("", every) => {
            Schedule::every(every).map_err(|e| TaskError::Invalid(format!("every: {e}")))
        }
        _ => Err(TaskError::Invalid(
            "schedule: give a cron expression or an interval, not both".into(),
        )),
    }
}

/// Creates a trigger; its first slot is the first one after now.
pub async fn create(state: &HubState, request: CreateTrigger) -> Result<TriggerRow, TaskError> {
    check_actor_id("actor_id", &request.actor_id)?;
    let schedule = schedule_of(&request)?;
    let payload = if request.payload.trim().is_empty() {
        "{}".to_string()
    } else {
        check_payload(
            "payload",
            &request.payload,
            state.actors.limits().max_payload_bytes,
        )?
    };
    let existing = state.store().list_triggers(Some(&request.actor_id)).await?;
    if existing.len() >= MAX_PER_ACTOR {
        return Err(TaskError::Conflict(format!(
            "actor_id: {} has {MAX_PER_ACTOR} triggers already (the most one actor may have)",
            request.actor_id
        )));
    }
    let now = state.now_ms();
    let Some(next) = schedule.next_after(now, now) else {
        return Err(TaskError::Invalid(format!(
            "schedule: {} is never due",
            schedule.display()
        )));
    };
    let trigger = TriggerRow {
        id: new_trigger_id()?,
        actor_id: request.actor_id,
        schedule: schedule.stored(),
        payload,
        next_due_ms: next,
        fired: 0,
        last_fired_ms: None,
        created_at_ms: now,
    };
    state.store().insert_trigger(&trigger).await?;
    Ok(trigger)
}

/// The actor's triggers (all when `None`).
pub async fn list(state: &HubState, actor_id: Option<&str>) -> Result<Vec<TriggerRow>, TaskError> {
    if let Some(actor) = actor_id {
        check_actor_id("actor_id", actor)?;
    }
    Ok(state.store().list_triggers(actor_id).await?)
}

/// One trigger.
pub async fn get(state: &HubState, id: &str) -> Result<TriggerRow, TaskError> {
    state
        .store()
        .get_trigger(id)
        .await?
        .ok_or_else(|| TaskError::NotFound(format!("trigger_id: no trigger has id {id:?}")))
}

/// Deletes a trigger.
pub async fn delete(state: &HubState, id: &str) -> Result<(), TaskError> {
    if state.store().delete_trigger(id).await? {
        Ok(())
    } else {
        Err(TaskError::NotFound(format!(
            "trigger_id: no trigger has id {id:?}"
        )))
    }
}

/// What a person reads for a stored schedule.
pub fn describe(trigger: &TriggerRow) -> String {
    Schedule::from_stored(&trigger.schedule)
        .map(|s| s.display())
        .unwrap_or_else(|e| e)
}

/// Fires every due slot once; how many fired here.
pub async fn fire_due(state: &Arc<HubState>) -> Result<usize, TaskError> {
    let now = state.now_ms();
    let due = state.store().due_triggers(now, 256).await?;
    let limits = state.actors.limits();
    let mut fired = 0;
    for trigger in due {
        let slot = trigger.next_due_ms;
        // The next slot still ahead: the ones passed while no hub ran are this one message.
        let next = Schedule::from_stored(&trigger.schedule)
            .ok()
            .and_then(|s| s.next_after(trigger.created_at_ms, now.max(slot)))
            .unwrap_or(i64::MAX);
        let message = NewMessage {
            sender: sender_of(&trigger.id),
            recipient: trigger.actor_id.clone(),
            team: String::new(),
            payload: trigger.payload.clone(),
            idempotency_key: Some(format!("slot:{slot}")),
            max_deliveries: limits.max_deliveries,
            visibility_ms: limits.visibility_ms,
            now_ms: now,
        };
        if state
            .store()
            .fire_trigger(&trigger.id, slot, next, &message)
            .await?
        {
            fired += 1;
            tracing::debug!(trigger = %trigger.id, actor = %trigger.actor_id, slot, "time trigger fired");
            state.actors.mail_arrived(&trigger.actor_id);
            if let Ok(Some(agent)) = state.store().get_agent(&trigger.actor_id).await {
                mailbox::wake(state, std::slice::from_ref(&agent));
            }
        }
    }
    Ok(fired)
}

/// Fires due triggers every [`TICK`] and sweeps used-up messages to the dead-letter list, until
/// `shutdown`.
pub async fn run(state: Arc<HubState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = fire_due(&state).await {
            tracing::warn!(error = %e, "firing time triggers failed");
        }
        n += 1;
        if n.is_multiple_of(10)
            && let Err(e) = state.store().sweep_dead_letters(state.now_ms()).await
        {
            tracing::warn!(error = %e, "sweeping dead letters failed");
        }
    }
}
