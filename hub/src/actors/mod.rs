//! The actor layer: durable mailboxes between actors, teams, time triggers and permission
//! reviews (AgentHub's actor model, kept when agents run on remote nodes).
//!
//! An **actor** is anything that sends or receives messages: an agent (its id, `agent-…`), or an
//! outside participant such as an operator or an MCP client (any id of letters, digits and
//! `._:@-`). Agents belong to the **teams** named in their spec; a message to `team:NAME` fans
//! out to every member but the sender, one message each. The delivery rules (at-least-once,
//! visibility timeout, dead letters, per-pair order, idempotent sends) are the store's
//! ([`crate::store::actors`]); this module validates requests, resolves recipients, wakes
//! waiting receivers and agents marked `wake_on_message`, and runs the time triggers.
//!
//! - [`mailbox`]: send, inbox, ack, dead letters and requeue, team members.
//! - [`reviews`]: permission requests, answers by option id, persistent grants.
//! - [`triggers`]: cron and interval triggers, fired once per slot across hubs.
//! - [`schedule`]: the pure schedule arithmetic.

pub mod mailbox;
pub mod reviews;
pub mod schedule;
pub mod triggers;

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::work::tasks::TaskError;

/// The longest actor id.
pub const MAX_ACTOR_ID_BYTES: usize = 128;

/// The longest a receive or a review wait may block.
pub const MAX_WAIT_MS: u64 = 25_000;

/// The most messages one receive hands out.
pub const MAX_RECEIVE: u32 = 1_000;

/// The sender of the messages the hub itself sends (review decisions).
pub const HUB_SENDER: &str = "outpost";

/// A recipient naming a team.
pub const TEAM_PREFIX: &str = "team:";

/// A recipient naming an agent by name.
pub const AGENT_NAME_PREFIX: &str = "agent:";

/// The mailbox limits, from `[actors]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActorLimits {
    /// How long a hand-out hides a message.
    pub visibility_ms: i64,
    /// Hand-outs before a message goes dead.
    pub max_deliveries: i64,
    /// The largest payload, bytes.
    pub max_payload_bytes: usize,
}

impl Default for ActorLimits {
    fn default() -> Self {
        Self::from_config(&outpost_config::ActorsSection::default())
    }
}

impl ActorLimits {
    /// The limits `[actors]` sets.
    pub fn from_config(section: &outpost_config::ActorsSection) -> Self {
        Self {
            visibility_ms: i64::try_from(section.visibility_timeout.as_millis())
                .unwrap_or(i64::MAX),
            max_deliveries: i64::from(section.max_deliveries),
            max_payload_bytes: section.max_payload_bytes,
        }
    }
}

/// The actor subsystem's shared state: limits, the tool policy, and who is waiting for what.
#[derive(Debug, Default)]
pub struct ActorHub {
    limits: ActorLimits,
    tool_policy: outpost_config::ToolPolicySection,
    /// Receivers blocked in a waiting inbox, by recipient.
    inbox_waiters: Mutex<HashMap<String, Weak<Notify>>>,
    /// Askers blocked waiting for a review, by review id.
    review_waiters: Mutex<HashMap<String, Weak<Notify>>>,
    /// Mailbox writes waiting for the writer that applies them in shared batches.
    pub(crate) writes: mailbox::MailboxWriter,
}

impl ActorHub {
    /// The subsystem under `limits` and `tool_policy`.
    pub fn new(limits: ActorLimits, tool_policy: outpost_config::ToolPolicySection) -> Self {
        Self {
            limits,
            tool_policy,
            ..Self::default()
        }
    }

    /// The mailbox limits.
    pub fn limits(&self) -> ActorLimits {
        self.limits
    }

    /// `[security.tool_policy]`.
    pub fn tool_policy(&self) -> &outpost_config::ToolPolicySection {
        &self.tool_policy
    }

    /// A handle that is notified when `recipient` gets mail (take it before looking, then wait).
    pub(crate) fn inbox_signal(&self, recipient: &str) -> Arc<Notify> {
        signal(&self.inbox_waiters, recipient)
    }

    /// Wakes receivers waiting for `recipient`.
    pub(crate) fn mail_arrived(&self, recipient: &str) {
        notify(&self.inbox_waiters, recipient);
    }

    /// A handle that is notified when review `id` is answered.
    pub(crate) fn review_signal(&self, id: &str) -> Arc<Notify> {
        signal(&self.review_waiters, id)
    }

    /// Wakes askers waiting for review `id`.
    pub(crate) fn review_answered(&self, id: &str) {
        notify(&self.review_waiters, id);
    }
}

fn signal(map: &Mutex<HashMap<String, Weak<Notify>>>, key: &str) -> Arc<Notify> {
    let mut map = map.lock();
    if let Some(existing) = map.get(key).and_then(Weak::upgrade) {
        return existing;
    }
    // Forget keys nobody waits on any more, now and then, so the map stays as large as the
    // number of waiters.
    if map.len() >= 1_024 && map.len().is_power_of_two() {
        map.retain(|_, w| w.strong_count() > 0);
    }
    let fresh = Arc::new(Notify::new());
    map.insert(key.to_string(), Arc::downgrade(&fresh));
    fresh
}

fn notify(map: &Mutex<HashMap<String, Weak<Notify>>>, key: &str) {
    let waiting = map.lock().get(key).and_then(Weak::upgrade);
    if let Some(notify) = waiting {
        notify.notify_waiters();
    }
}

/// Checks an actor id: 1 to [`MAX_ACTOR_ID_BYTES`] letters, digits or `._:@-`, not a team.
pub fn check_actor_id(field: &str, id: &str) -> Result<(), TaskError> {
    if id.is_empty() {
        return Err(TaskError::Invalid(format!(
            "{field}: an actor id is needed"
        )));
    }
    if id.len() > MAX_ACTOR_ID_BYTES {
        return Err(TaskError::Invalid(format!(
            "{field}: an actor id is at most {MAX_ACTOR_ID_BYTES} bytes, this is {}",
            id.len()
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:@-".contains(*c)))
    {
        return Err(TaskError::Invalid(format!(
            "{field}: {id:?} has {bad:?}; an actor id is letters, digits and '.', '_', ':', '@', '-'"
        )));
    }
    if id.starts_with(TEAM_PREFIX) {
        return Err(TaskError::Invalid(format!(
            "{field}: {id:?} names a team; an actor is one participant"
        )));
    }
    Ok(())
}

/// Whether `text` is a short name: 1 to 64 letters, digits or `._-` (teams, option ids).
pub(crate) fn is_short_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Checks a team name: 1 to 64 letters, digits or `._-`.
pub fn check_team(field: &str, team: &str) -> Result<(), TaskError> {
    if is_short_name(team) {
        Ok(())
    } else {
        Err(TaskError::Invalid(format!(
            "{field}: {team:?} is not a team name (1 to 64 letters, digits, '.', '_' or '-')"
        )))
    }
}

/// Checks a JSON payload: valid JSON, at most `max_bytes`; the payload as stored (compact).
pub fn check_payload(field: &str, text: &str, max_bytes: usize) -> Result<String, TaskError> {
    if text.len() > max_bytes {
        return Err(TaskError::Invalid(format!(
            "{field}: {} bytes is over the limit of {max_bytes} bytes ([actors] max_payload_bytes)",
            text.len()
        )));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| TaskError::Invalid(format!("{field}: not JSON: {e}")))?;
    serde_json::to_string(&value).map_err(|e| TaskError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_ids_and_teams() {
        for ok in ["agent-1f3a", "operator", "mcp:claude@laptop", "a.b_c-d"] {
            check_actor_id("actor_id", ok).unwrap();
        }
        let cases = [
            ("", "is needed"),
            ("a b", "has ' '"),
            ("team:x", "names a team"),
            (&"x".repeat(129), "at most 128 bytes"),
        ];
        for (id, needle) in cases {
            let err = check_actor_id("actor_id", id).unwrap_err().to_string();
            assert!(
                err.starts_with("actor_id: ") && err.contains(needle),
                "{err}"
            );
        }
        check_team("team", "build-bots").unwrap();
        assert!(check_team("team", "a:b").is_err());
        assert!(check_team("team", "").is_err());
    }

    #[test]
    fn payloads_are_json_within_the_limit() {
        assert_eq!(
            check_payload("payload", r#"{ "a" : 1 }"#, 64).unwrap(),
            r#"{"a":1}"#
        );
        let err = check_payload("payload", "{", 64).unwrap_err().to_string();
        assert!(err.starts_with("payload: not JSON"), "{err}");
        let err = check_payload("payload", &format!("\"{}\"", "x".repeat(70)), 64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("72 bytes is over the limit of 64 bytes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn signals_wake_waiters_of_their_key_only() {
        let hub = ActorHub::default();
        {
            let a = hub.inbox_signal("a");
            let b = hub.inbox_signal("b");
            let woke_a = a.notified();
            let woke_b = b.notified();
            tokio::pin!(woke_a, woke_b);
            woke_a.as_mut().enable();
            woke_b.as_mut().enable();
            hub.mail_arrived("a");
            tokio::time::timeout(std::time::Duration::from_secs(1), woke_a)
                .await
                .unwrap();
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(20), woke_b)
                    .await
                    .is_err()
            );
        }
        // Nobody waits: nothing to wake, nothing kept alive.
        hub.mail_arrived("a");
        assert!(
            hub.inbox_waiters
                .lock()
                .get("a")
                .unwrap()
                .upgrade()
                .is_none()
        );
    }
}
