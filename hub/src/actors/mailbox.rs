//! Send, inbox, ack, dead letters and requeue, and team members: the mailbox operations every
//! surface (gRPC, REST, the CLI through them) calls.

use std::sync::Arc;
use std::time::Duration;

use crate::actors::{
    AGENT_NAME_PREFIX, MAX_RECEIVE, MAX_WAIT_MS, TEAM_PREFIX, check_actor_id, check_payload,
    check_team,
};
use crate::state::HubState;
use crate::store::actors::{
    AckOutcome, MailboxAnswer, MailboxOp, MessageFilter, MessageRow, MessageState, NewMessage,
    SentMessage,
};
use crate::store::{AgentRow, Store, StoreError};
use crate::work::agents::{self, AgentState};
use crate::work::tasks::TaskError;

/// The longest idempotency key.
pub const MAX_KEY_BYTES: usize = 256;

/// A send, from any surface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendRequest {
    /// The sending actor.
    pub sender: String,
    /// An actor id, `agent:NAME`, or `team:NAME` (every member but the sender).
    pub to: String,
    /// JSON text.
    pub payload: String,
    /// A retried send with the same key makes no second message.
    pub idempotency_key: Option<String>,
}

/// What a send came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// One message per recipient (the earlier ones for a retried key).
    pub messages: Vec<MessageRow>,
    /// Every message existed already (a retry).
    pub duplicate: bool,
}

/// A team member, as `team-members` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its actor id (the agent's id).
    pub actor_id: String,
    /// Its name.
    pub name: String,
    /// Its agent status.
    pub status: String,
    /// The node it runs on.
    pub node_id: String,
    /// The teams it shares with the asker.
    pub teams: Vec<String>,
}

fn teams_of(agent: &AgentRow) -> Vec<String> {
    agents::spec_of(agent).teams
}

/// The most recipients one send reaches (a team's fan-out).
pub const MAX_FANOUT: usize = 1_000;

/// Whom a send reaches.
struct Recipients {
    /// Their actor ids.
    ids: Vec<String>,
    /// The agents among them, as read (for waking).
    agents: Vec<AgentRow>,
    /// The team it named, or empty.
    team: String,
}

/// The recipients `to` names.
async fn recipients(state: &HubState, sender: &str, to: &str) -> Result<Recipients, TaskError> {
    let one = |agent: AgentRow| Recipients {
        ids: vec![agent.id.clone()],
        agents: vec![agent],
        team: String::new(),
    };
    if let Some(team) = to.strip_prefix(TEAM_PREFIX) {
        check_team("to", team)?;
        let members: Vec<AgentRow> = state
            .store()
            .list_agents(None)
            .await?
            .into_iter()
            .filter(|a| a.id != sender && teams_of(a).iter().any(|t| t == team))
            .collect();
        if members.is_empty() {
            return Err(TaskError::NotFound(format!(
                "to: team {team:?} has no members besides the sender"
            )));
        }
        if members.len() > MAX_FANOUT {
            return Err(TaskError::Invalid(format!(
                "to: team {team:?} has {} members; one message reaches at most {MAX_FANOUT}",
                members.len()
            )));
        }
        return Ok(Recipients {
            ids: members.iter().map(|a| a.id.clone()).collect(),
            agents: members,
            team: team.to_string(),
        });
    }
    if let Some(name) = to.strip_prefix(AGENT_NAME_PREFIX) {
        let mut named: Vec<AgentRow> = state
            .store()
            .list_agents(None)
            .await?
            .into_iter()
            .filter(|a| a.name == name)
            .collect();
        return match named.len() {
            1 => Ok(one(named.remove(0))),
            0 => Err(TaskError::NotFound(format!(
                "to: no agent is named {name:?}"
            ))),
            n => Err(TaskError::Invalid(format!(
                "to: {n} agents are named {name:?}; name one by id ({})",
                named
                    .iter()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        };
    }
    check_actor_id("to", to)?;
    if to.starts_with("agent-") {
        // An agent id that names no agent is a typo, not a new outside participant.
        return match state.store().get_agent(to).await? {
            Some(agent) => Ok(one(agent)),
            None => Err(TaskError::NotFound(format!("to: no agent has id {to:?}"))),
        };
    }
    Ok(Recipients {
        ids: vec![to.to_string()],
        agents: Vec::new(),
        team: String::new(),
    })
}

/// Stores a message for each recipient `to` names, wakes their waiting receivers, and starts
/// recipients marked `wake_on_message` that are not running.
pub async fn send(state: &Arc<HubState>, request: SendRequest) -> Result<Sent, TaskError> {
    check_actor_id("actor_id", &request.sender)?;
    if let Some(key) = &request.idempotency_key
        && (key.is_empty() || key.len() > MAX_KEY_BYTES)
    {
        return Err(TaskError::Invalid(format!(
            "idempotency_key: 1 to {MAX_KEY_BYTES} bytes"
        )));
    }
    let limits = state.actors.limits();
    let payload = check_payload("payload", &request.payload, limits.max_payload_bytes)?;
    let Recipients {
        ids: to,
        agents: to_agents,
        team,
    } = recipients(state, &request.sender, request.to.trim()).await?;
    let now = state.now_ms();
    let new: Vec<NewMessage> = to
        .iter()
        .map(|recipient| NewMessage {
            sender: request.sender.clone(),
            recipient: recipient.clone(),
            team: team.clone(),
            payload: payload.clone(),
            idempotency_key: request.idempotency_key.clone(),
            max_deliveries: limits.max_deliveries,
            visibility_ms: limits.visibility_ms,
            now_ms: now,
        })
        .collect();
    let stored = state.actors.writes.insert(state.store(), new).await?;
    let duplicate = stored.iter().all(|s| s.duplicate);
    for recipient in &to {
        state.actors.mail_arrived(recipient);
    }
    wake(state, &to_agents);
    Ok(Sent {
        messages: stored.into_iter().map(|s| s.message).collect(),
        duplicate,
    })
}

/// Most parameters one shared statement list binds (SQLite allows 32,766).
const MAX_BATCH_PARAMETERS: usize = 16_000;
/// Most callers' writes in one shared statement list.
const MAX_BATCH_OPS: usize = 256;

/// Mailbox writes (sends, receives, acks) from any number of callers, applied by one writer in
/// shared batches (group commit): on SQLite a batch is one statement list and one commit on the
/// single writer connection, so many callers share a round trip instead of queueing for one
/// each. A batch that fails is applied again one write at a time, so each caller gets its own
/// answer.
#[derive(Debug, Default)]
pub struct MailboxWriter {
    queue: std::sync::OnceLock<tokio::sync::mpsc::Sender<PendingWrite>>,
}

#[derive(Debug)]
struct PendingWrite {
    op: MailboxOp,
    reply: tokio::sync::oneshot::Sender<Result<MailboxAnswer, StoreError>>,
}

fn unexpected() -> StoreError {
    StoreError::Conflict("the mailbox writer answered another kind of write".into())
}

impl MailboxWriter {
    async fn apply(
        &self,
        store: &Arc<dyn Store>,
        op: MailboxOp,
    ) -> Result<MailboxAnswer, StoreError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(4 * MAX_BATCH_OPS);
            tokio::spawn(write_batches(Arc::downgrade(store), rx));
            tx
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || StoreError::Conflict("the hub is stopping: the write was not made".into());
        queue
            .send(PendingWrite { op, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Stores `messages`.
    pub async fn insert(
        &self,
        store: &Arc<dyn Store>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>, StoreError> {
        match self.apply(store, MailboxOp::Insert(messages)).await? {
            MailboxAnswer::Inserted(sent) => Ok(sent),
            _ => Err(unexpected()),
        }
    }

    /// Hands out `recipient`'s visible messages.
    pub async fn receive(
        &self,
        store: &Arc<dyn Store>,
        recipient: &str,
        run_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let op = MailboxOp::Receive {
            recipient: recipient.into(),
            run_id: run_id.into(),
            now_ms,
            limit,
        };
        match self.apply(store, op).await? {
            MailboxAnswer::Received(messages) => Ok(messages),
            _ => Err(unexpected()),
        }
    }

    /// Acks `recipient`'s messages `ids`.
    pub async fn ack(
        &self,
        store: &Arc<dyn Store>,
        recipient: &str,
        ids: &[i64],
        now_ms: i64,
    ) -> Result<Vec<AckOutcome>, StoreError> {
        let op = MailboxOp::Ack {
            recipient: recipient.into(),
            ids: ids.to_vec(),
            now_ms,
        };
        match self.apply(store, op).await? {
            MailboxAnswer::Acked(outcomes) => Ok(outcomes),
            _ => Err(unexpected()),
        }
    }
}

/// The writer: takes what is waiting, applies it as one batch, answers each caller.
async fn write_batches(
    store: std::sync::Weak<dyn Store>,
    mut queue: tokio::sync::mpsc::Receiver<PendingWrite>,
) {
    while let Some(first) = queue.recv().await {
        let mut parameters = first.op.parameters();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_OPS && parameters < MAX_BATCH_PARAMETERS {
            match queue.try_recv() {
                Ok(next) => {
                    parameters += next.op.parameters();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let Some(store) = store.upgrade() else {
            return;
        };
        let ops: Vec<MailboxOp> = batch.iter().map(|p| p.op.clone()).collect();
        match store.write_batch(&ops).await {
            Ok(answers) if answers.len() == batch.len() => {
                for (pending, answer) in batch.into_iter().zip(answers) {
                    let _ = pending.reply.send(Ok(answer));
                }
            }
            Ok(_) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(StoreError::Conflict(
                        "the store answered a batch with the wrong number of answers".into(),
                    )));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(pending) = batch.pop() {
                    let _ = pending.reply.send(Err(e));
                }
            }
            // One write may have failed them all: each again on its own, for its own answer.
            Err(_) => {
                for pending in batch {
                    let alone = store
                        .write_batch(std::slice::from_ref(&pending.op))
                        .await
                        .and_then(|mut answers| answers.pop().ok_or_else(unexpected));
                    let _ = pending.reply.send(alone);
                }
            }
        }
    }
}

/// Starts the agents among `recipients` marked `wake_on_message` that are not running (in the
/// background: a send never waits for a node).
pub(crate) fn wake(state: &Arc<HubState>, recipients: &[AgentRow]) {
    for agent in recipients {
        let asleep = matches!(
            AgentState::parse(&agent.status),
            AgentState::Created | AgentState::Exited | AgentState::Stopped
        );
        if asleep && agents::spec_of(agent).wake_on_message {
            let state = state.clone();
            let id = agent.id.clone();
            tokio::spawn(async move {
                match agents::start(&state, &id).await {
                    Ok(_) => tracing::info!(agent_id = %id, "woken by a message"),
                    Err(e) => {
                        tracing::warn!(agent_id = %id, error = %e, "waking on a message failed")
                    }
                }
            });
        }
    }
}

/// A receive, from any surface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxRequest {
    /// Whose inbox.
    pub actor_id: String,
    /// The receiving run: for an agent, its current run (a process of an earlier run may not
    /// take its messages); recorded on each message handed out.
    pub run_id: String,
    /// At most this many (0: 100).
    pub limit: u32,
    /// When none is visible, wait up to this long for one (capped at [`MAX_WAIT_MS`]).
    pub wait_ms: u64,
    /// Ack what is handed out at once (at-most-once from then on).
    pub auto_ack: bool,
}

/// Checks `run_id` against the agent's current run, when the actor is an agent.
async fn check_run(state: &HubState, actor_id: &str, run_id: &str) -> Result<(), TaskError> {
    if run_id.is_empty() || !actor_id.starts_with("agent-") {
        return Ok(());
    }
    let Some(agent) = state.store().get_agent(actor_id).await? else {
        return Ok(());
    };
    if agent.run.to_string() != run_id {
        return Err(TaskError::Conflict(format!(
            "run_id: run {run_id} is not {actor_id}'s current run ({}); a process of an earlier run may not take its messages",
            agent.run
        )));
    }
    Ok(())
}

/// Hands out the actor's visible messages, waiting up to `wait_ms` for one when there is none.
pub async fn inbox(state: &HubState, request: &InboxRequest) -> Result<Vec<MessageRow>, TaskError> {
    check_actor_id("actor_id", &request.actor_id)?;
    check_run(state, &request.actor_id, &request.run_id).await?;
    let limit = match request.limit {
        0 => 100,
        n => n.min(MAX_RECEIVE),
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(request.wait_ms.min(MAX_WAIT_MS));
    loop {
        let signal = state.actors.inbox_signal(&request.actor_id);
        let arrived = signal.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let messages = state
            .actors
            .writes
            .receive(
                state.store(),
                &request.actor_id,
                &request.run_id,
                state.now_ms(),
                limit,
            )
            .await?;
        let now = tokio::time::Instant::now();
        if !messages.is_empty() || now >= deadline {
            if request.auto_ack && !messages.is_empty() {
                let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
                state
                    .actors
                    .writes
                    .ack(state.store(), &request.actor_id, &ids, state.now_ms())
                    .await?;
                return Ok(messages
                    .into_iter()
                    .map(|m| MessageRow {
                        state: MessageState::Acked,
                        ..m
                    })
                    .collect());
            }
            return Ok(messages);
        }
        // New mail wakes the wait; a message whose visibility runs out does not, so look again
        // at least every second.
        let _ = tokio::time::timeout_at(deadline.min(now + Duration::from_secs(1)), arrived).await;
    }
}

/// Acks the actor's messages `ids`, one after another in one transaction; one outcome each.
pub async fn ack(
    state: &HubState,
    actor_id: &str,
    ids: &[i64],
) -> Result<Vec<AckOutcome>, TaskError> {
    check_actor_id("actor_id", actor_id)?;
    if ids.is_empty() {
        return Err(TaskError::Invalid("message_id: name at least one".into()));
    }
    if ids.len() > MAX_RECEIVE as usize {
        return Err(TaskError::Invalid(format!(
            "message_id: at most {MAX_RECEIVE} per ack"
        )));
    }
    Ok(state
        .actors
        .writes
        .ack(state.store(), actor_id, ids, state.now_ms())
        .await?)
}

/// What an ack outcome says, for a per-item result: `Ok(already acked)` or the error.
pub fn ack_result(id: i64, outcome: AckOutcome) -> Result<bool, TaskError> {
    match outcome {
        AckOutcome::Acked => Ok(false),
        AckOutcome::AlreadyAcked => Ok(true),
        AckOutcome::NotFound => Err(TaskError::NotFound(format!(
            "message_id: no message has id {id}"
        ))),
        AckOutcome::NotYours => Err(TaskError::NotFound(format!(
            "message_id: message {id} is not in this actor's inbox"
        ))),
        AckOutcome::NotDelivered(state) => Err(TaskError::Conflict(format!(
            "message_id: message {id} is {}: only a delivered message is acked{}",
            state.as_str(),
            if state == MessageState::Dead {
                " (requeue it first)"
            } else {
                " (take it from the inbox first)"
            }
        ))),
    }
}

/// The dead-letter list, of one recipient when named, oldest first.
pub async fn dead_letters(
    state: &HubState,
    actor_id: Option<&str>,
    limit: u32,
) -> Result<Vec<MessageRow>, TaskError> {
    if let Some(actor) = actor_id {
        check_actor_id("actor_id", actor)?;
    }
    state.store().sweep_dead_letters(state.now_ms()).await?;
    Ok(state
        .store()
        .list_messages(&MessageFilter {
            recipient: actor_id,
            state: Some(MessageState::Dead),
            limit: limit.clamp(1, 10_000),
        })
        .await?)
}

/// Makes a dead letter pending again (deliveries reset) and wakes its recipient.
pub async fn requeue(state: &HubState, id: i64) -> Result<MessageRow, TaskError> {
    let message = match state.store().requeue_message(id, state.now_ms()).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Err(TaskError::NotFound(format!(
                "message_id: no message has id {id}"
            )));
        }
        Err(crate::store::StoreError::Conflict(m)) => {
            return Err(TaskError::Conflict(format!("message_id: {m}")));
        }
        Err(e) => return Err(e.into()),
    };
    state.actors.mail_arrived(&message.recipient);
    Ok(message)
}

/// The other members of the actor's teams, with their status and node.
pub async fn team_members(state: &HubState, actor_id: &str) -> Result<Vec<Member>, TaskError> {
    check_actor_id("actor_id", actor_id)?;
    let all = state.store().list_agents(None).await?;
    let Some(me) = all.iter().find(|a| a.id == actor_id) else {
        return Err(TaskError::NotFound(format!(
            "actor_id: {actor_id:?} is not an agent; teams are made of agents"
        )));
    };
    let mine = teams_of(me);
    Ok(all
        .iter()
        .filter(|a| a.id != actor_id)
        .filter_map(|a| {
            let shared: Vec<String> = teams_of(a)
                .into_iter()
                .filter(|t| mine.contains(t))
                .collect();
            (!shared.is_empty()).then(|| Member {
                actor_id: a.id.clone(),
                name: a.name.clone(),
                status: a.status.clone(),
                node_id: a.node_id.clone(),
                teams: shared,
            })
        })
        .collect())
}
