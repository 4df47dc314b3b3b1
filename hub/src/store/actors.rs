//! The actor layer's durable state: mailbox messages, permission reviews with the grants their
//! persistent options leave, and time triggers — the rows and the [`ActorStore`] trait that
//! [`super::SqlStore`] and [`super::MemoryStore`] implement (every [`super::Store`] is one).
//!
//! The delivery rules live here, in one place per backend, because they must hold under
//! concurrency (several hubs on one PostgreSQL, many receivers):
//! - a message is `pending` until a receive hands it out; it is then `delivered` and invisible
//!   for its visibility timeout; a delivered message not acked by then is handed out again;
//! - a message handed out `max_deliveries` times and still not acked goes `dead` (the
//!   dead-letter list) instead of being handed out once more; a requeue makes it `pending` again
//!   with its deliveries reset;
//! - a receive never hands out a message while an earlier message of the same sender to the same
//!   recipient is in flight (delivered, not acked, still invisible), so each sender → recipient
//!   pair is handed out in send order (two receives for one recipient at the same instant on
//!   PostgreSQL each see the other's picks only once committed, so there the order holds per
//!   receive; one receiver per actor, the usual case, sees it whole);
//! - a send with an idempotency key the same sender already used for the same recipient makes no
//!   second message: the first is returned.

use async_trait::async_trait;

use super::StoreError;

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MessageState {
    /// Sent, not yet handed out (or requeued).
    #[default]
    Pending,
    /// Handed out, not acked yet.
    Delivered,
    /// Acked by its recipient.
    Acked,
    /// Handed out `max_deliveries` times without an ack.
    Dead,
}

impl MessageState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Acked => "acked",
            Self::Dead => "dead",
        }
    }
}

impl std::str::FromStr for MessageState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "acked" => Self::Acked,
            "dead" => Self::Dead,
            other => return Err(format!("unknown message state {other:?}")),
        })
    }
}

/// A mailbox message, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageRow {
    /// Assigned by the store, increasing.
    pub id: i64,
    /// The sending actor.
    pub sender: String,
    /// The receiving actor.
    pub recipient: String,
    /// The team it was sent to (fan-out), empty when sent to the actor itself.
    pub team: String,
    /// JSON text.
    pub payload: String,
    /// The sender's key for retries.
    pub idempotency_key: Option<String>,
    /// Where it is in its life.
    pub state: MessageState,
    /// Times handed out so far.
    pub deliveries: i64,
    /// Hand-outs allowed before it goes dead.
    pub max_deliveries: i64,
    /// How long a hand-out hides it from the next receive.
    pub visibility_ms: i64,
    /// When a receive may hand it out (again).
    pub visible_at_ms: i64,
    /// The recipient's run at the last hand-out.
    pub run_id: String,
    /// Why it is dead, or was requeued.
    pub reason: String,
    /// Sent.
    pub created_at_ms: i64,
    /// Last handed out.
    pub delivered_at_ms: Option<i64>,
    /// Acked.
    pub acked_at_ms: Option<i64>,
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    /// The sending actor.
    pub sender: String,
    /// The receiving actor.
    pub recipient: String,
    /// The team it was sent to, or empty.
    pub team: String,
    /// JSON text.
    pub payload: String,
    /// The sender's key for retries.
    pub idempotency_key: Option<String>,
    /// Hand-outs allowed.
    pub max_deliveries: i64,
    /// Visibility timeout of each hand-out.
    pub visibility_ms: i64,
    /// Now.
    pub now_ms: i64,
}

/// What storing a message came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// The message (the earlier one, for a duplicate).
    pub message: MessageRow,
    /// An earlier send with the same key made it.
    pub duplicate: bool,
}

/// What acking one message came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Acked now.
    Acked,
    /// It was acked before (acking twice is not an error).
    AlreadyAcked,
    /// No message has this id.
    NotFound,
    /// It is another actor's message.
    NotYours,
    /// It has not been handed out (pending), or went dead: nothing to ack.
    NotDelivered(MessageState),
}

/// A permission review's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReviewState {
    /// Waiting for an operator.
    #[default]
    Pending,
    /// Answered with one of its options.
    Answered,
    /// Closed without an option (`--outcome cancelled`).
    Cancelled,
}

impl ReviewState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Answered => "answered",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for ReviewState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "answered" => Self::Answered,
            "cancelled" => Self::Cancelled,
            other => return Err(format!("unknown review state {other:?}")),
        })
    }
}

/// One answer a review offers.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ReviewOption {
    /// What the answer names (`allow_once`, `allow_always`, `deny`, …).
    pub id: String,
    /// Shown to the operator (the id when not given).
    #[serde(default)]
    pub label: String,
    /// Choosing it answers the same actor's same request later by itself.
    #[serde(default)]
    pub persistent: bool,
}

/// A permission review, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReviewRow {
    /// Unique id (`r-…`).
    pub id: String,
    /// The asking actor.
    pub actor_id: String,
    /// What is asked.
    pub title: String,
    /// More about it.
    pub detail: String,
    /// What makes two requests "the same request" for a persistent answer.
    pub request_key: String,
    /// The answers it offers.
    pub options: Vec<ReviewOption>,
    /// Where it is.
    pub state: ReviewState,
    /// The chosen option (answered), empty otherwise.
    pub option_id: String,
    /// Who answered: an operator's subject, or `grant:<review id>` when a persistent answer of
    /// an earlier review resolved it.
    pub answered_by: String,
    /// Asked.
    pub created_at_ms: i64,
    /// Answered or cancelled.
    pub answered_at_ms: Option<i64>,
}

/// A persistent answer: the same actor's same request is answered with `option_id`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrantRow {
    /// The actor.
    pub actor_id: String,
    /// The request it covers.
    pub request_key: String,
    /// The answer.
    pub option_id: String,
    /// The review whose answer made it.
    pub review_id: String,
    /// Made.
    pub created_at_ms: i64,
}

/// A time trigger, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TriggerRow {
    /// Unique id (`t-…`).
    pub id: String,
    /// The actor it sends to.
    pub actor_id: String,
    /// `cron:<expr>` or `every:<ms>`.
    pub schedule: String,
    /// JSON text each message carries.
    pub payload: String,
    /// The next slot (Unix ms).
    pub next_due_ms: i64,
    /// Slots fired so far.
    pub fired: i64,
    /// The last slot fired.
    pub last_fired_ms: Option<i64>,
    /// Created.
    pub created_at_ms: i64,
}

/// Which messages a listing wants.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter<'a> {
    /// Only this recipient's.
    pub recipient: Option<&'a str>,
    /// Only in this state.
    pub state: Option<MessageState>,
    /// At most this many (oldest first).
    pub limit: u32,
}

/// One mailbox write of a batch ([`ActorStore::write_batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxOp {
    /// [`ActorStore::insert_messages`].
    Insert(Vec<NewMessage>),
    /// [`ActorStore::receive_messages`].
    Receive {
        /// Whose inbox.
        recipient: String,
        /// The receiving run.
        run_id: String,
        /// Now.
        now_ms: i64,
        /// At most this many.
        limit: u32,
    },
    /// [`ActorStore::ack_messages`].
    Ack {
        /// Whose messages.
        recipient: String,
        /// Which.
        ids: Vec<i64>,
        /// Now.
        now_ms: i64,
    },
}

/// What one [`MailboxOp`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxAnswer {
    /// The stored messages.
    Inserted(Vec<SentMessage>),
    /// The messages handed out.
    Received(Vec<MessageRow>),
    /// One outcome per id.
    Acked(Vec<AckOutcome>),
}

impl MailboxOp {
    /// Parameters the op binds in a statement list (for batch budgets).
    pub fn parameters(&self) -> usize {
        match self {
            Self::Insert(messages) => messages.len() * 10,
            Self::Receive { .. } => 4,
            Self::Ack { ids, .. } => ids.len() + 2,
        }
    }
}

/// Applies `ops` one after another with the single-op methods (what a store without a faster
/// way does).
pub async fn apply_each<S: ActorStore + ?Sized>(
    store: &S,
    ops: &[MailboxOp],
) -> Result<Vec<MailboxAnswer>, StoreError> {
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        answers.push(match op {
            MailboxOp::Insert(messages) => {
                MailboxAnswer::Inserted(store.insert_messages(messages).await?)
            }
            MailboxOp::Receive {
                recipient,
                run_id,
                now_ms,
                limit,
            } => MailboxAnswer::Received(
                store
                    .receive_messages(recipient, run_id, *now_ms, *limit)
                    .await?,
            ),
            MailboxOp::Ack {
                recipient,
                ids,
                now_ms,
            } => MailboxAnswer::Acked(store.ack_messages(recipient, ids, *now_ms).await?),
        });
    }
    Ok(answers)
}

/// The actor layer's durable state.
#[async_trait]
pub trait ActorStore: Send + Sync {
    /// Applies mailbox writes of many callers at once, in order, each as its own method would;
    /// one answer per op. SQLite commits them together (one statement list, one round trip to
    /// its single writer: if it fails, none happened); other stores apply them one by one.
    async fn write_batch(&self, ops: &[MailboxOp]) -> Result<Vec<MailboxAnswer>, StoreError> {
        apply_each(self, ops).await
    }

    /// Stores messages in one transaction, in order; a message whose (sender, recipient,
    /// idempotency key) exists already returns that one as a duplicate.
    async fn insert_messages(
        &self,
        messages: &[NewMessage],
    ) -> Result<Vec<SentMessage>, StoreError>;

    /// Hands out up to `limit` of `recipient`'s visible messages (oldest first, per-pair order
    /// kept), marking them delivered to `run_id`; first sends to the dead-letter list those that
    /// used up their deliveries.
    async fn receive_messages(
        &self,
        recipient: &str,
        run_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError>;

    /// Acks `recipient`'s messages `ids` in one transaction; one outcome per id, in order.
    async fn ack_messages(
        &self,
        recipient: &str,
        ids: &[i64],
        now_ms: i64,
    ) -> Result<Vec<AckOutcome>, StoreError>;

    /// One message.
    async fn get_message(&self, id: i64) -> Result<Option<MessageRow>, StoreError>;

    /// Messages matching `filter`, oldest first.
    async fn list_messages(
        &self,
        filter: &MessageFilter<'_>,
    ) -> Result<Vec<MessageRow>, StoreError>;

    /// Sends every delivered message that used up its deliveries and whose visibility ran out to
    /// the dead-letter list; how many went.
    async fn sweep_dead_letters(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Makes a dead message pending again with its deliveries reset; `None` when no message has
    /// this id, [`StoreError::Conflict`] when it is not dead.
    async fn requeue_message(&self, id: i64, now_ms: i64)
    -> Result<Option<MessageRow>, StoreError>;

    /// Stores a new review.
    async fn insert_review(&self, review: &ReviewRow) -> Result<(), StoreError>;

    /// One review.
    async fn get_review(&self, id: &str) -> Result<Option<ReviewRow>, StoreError>;

    /// Reviews, newest first: only pending ones when asked, only one actor's when named.
    async fn list_reviews(
        &self,
        pending_only: bool,
        actor_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ReviewRow>, StoreError>;

    /// Closes a pending review as `answer` says (state, option, who, when) and, when `grant`,
    /// records the persistent answer in the same transaction; `false` when it was not pending
    /// (answered first by someone else).
    async fn answer_review(
        &self,
        answer: &ReviewRow,
        grant: Option<&GrantRow>,
    ) -> Result<bool, StoreError>;

    /// The persistent answer to `actor_id`'s `request_key`, if one was given.
    async fn get_grant(
        &self,
        actor_id: &str,
        request_key: &str,
    ) -> Result<Option<GrantRow>, StoreError>;

    /// Stores a new trigger.
    async fn insert_trigger(&self, trigger: &TriggerRow) -> Result<(), StoreError>;

    /// Triggers, of one actor when named, oldest first.
    async fn list_triggers(&self, actor_id: Option<&str>) -> Result<Vec<TriggerRow>, StoreError>;

    /// One trigger.
    async fn get_trigger(&self, id: &str) -> Result<Option<TriggerRow>, StoreError>;

    /// Deletes a trigger; whether it existed.
    async fn delete_trigger(&self, id: &str) -> Result<bool, StoreError>;

    /// Triggers whose next slot is at or before `now_ms`, soonest first.
    async fn due_triggers(&self, now_ms: i64, limit: u32) -> Result<Vec<TriggerRow>, StoreError>;

    /// Fires `trigger`'s slot `slot_ms` once: moves its next slot to `next_due_ms` only if it is
    /// still `slot_ms`, and in the same transaction stores `message`. `false` when another hub
    /// (or an earlier pass) fired the slot first — then nothing is written.
    async fn fire_trigger(
        &self,
        trigger_id: &str,
        slot_ms: i64,
        next_due_ms: i64,
        message: &NewMessage,
    ) -> Result<bool, StoreError>;
}

/// The rules above, checked against every backend (called from the store's tests).
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use crate::store::Store;

    fn message(sender: &str, recipient: &str, key: Option<&str>, now_ms: i64) -> NewMessage {
        NewMessage {
            sender: sender.into(),
            recipient: recipient.into(),
            team: String::new(),
            payload: format!(r#"{{"from":"{sender}","at":{now_ms}}}"#),
            idempotency_key: key.map(String::from),
            max_deliveries: 2,
            visibility_ms: 1_000,
            now_ms,
        }
    }

    fn ids(messages: &[MessageRow]) -> Vec<i64> {
        messages.iter().map(|m| m.id).collect()
    }

    /// Mailboxes: idempotency, hand-out, per-pair order, redelivery, dead letters, requeue.
    pub(crate) async fn mailboxes(store: &dyn Store) {
        let sent = store
            .insert_messages(&[
                message("a", "r", Some("k1"), 10),
                message("a", "r", None, 10),
                message("b", "r", None, 10),
            ])
            .await
            .unwrap();
        assert!(sent.iter().all(|s| !s.duplicate));
        let (a1, a2, b1) = (sent[0].message.id, sent[1].message.id, sent[2].message.id);
        assert!(a1 < a2 && a2 < b1, "ids increase in send order");
        // The same key from the same sender to the same recipient is one message; another
        // recipient or sender with that key is a new one.
        let again = store
            .insert_messages(&[
                message("a", "r", Some("k1"), 11),
                message("a", "other", Some("k1"), 11),
            ])
            .await
            .unwrap();
        assert!(again[0].duplicate);
        assert_eq!(again[0].message.id, a1);
        assert_eq!(again[0].message.created_at_ms, 10);
        assert!(!again[1].duplicate);

        // One hand-out of a1 only: a2 waits behind it (same pair), b1 is free.
        let first = store.receive_messages("r", "run-1", 20, 1).await.unwrap();
        assert_eq!(ids(&first), [a1]);
        assert_eq!(first[0].state, MessageState::Delivered);
        assert_eq!(
            (first[0].deliveries, first[0].run_id.as_str()),
            (1, "run-1")
        );
        assert_eq!(first[0].visible_at_ms, 1_020);
        let next = store.receive_messages("r", "run-1", 30, 10).await.unwrap();
        assert_eq!(
            ids(&next),
            [b1],
            "a2 is not handed out while a1 is in flight"
        );
        assert!(
            store
                .receive_messages("r", "run-1", 40, 10)
                .await
                .unwrap()
                .is_empty()
        );

        // Acks: one outcome per id, in order.
        let outcomes = store
            .ack_messages("r", &[b1, b1, 999_999, again[1].message.id, a2], 50)
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [
                AckOutcome::Acked,
                AckOutcome::AlreadyAcked,
                AckOutcome::NotFound,
                AckOutcome::NotYours,
                AckOutcome::NotDelivered(MessageState::Pending),
            ]
        );

        // a1 not acked: after its visibility it comes back, before a2.
        let redelivered = store
            .receive_messages("r", "run-2", 1_020, 10)
            .await
            .unwrap();
        assert_eq!(ids(&redelivered), [a1, a2], "a1 again, then a2 after it");
        assert_eq!(redelivered[0].deliveries, 2);
        assert_eq!(redelivered[0].run_id, "run-2");
        assert_eq!(
            store.ack_messages("r", &[a2], 1_030).await.unwrap(),
            [AckOutcome::Acked]
        );
        // Its deliveries used up: the next receive sends it to the dead letters.
        assert!(
            store
                .receive_messages("r", "run-2", 2_100, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let dead = store
            .list_messages(&MessageFilter {
                recipient: Some("r"),
                state: Some(MessageState::Dead),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(ids(&dead), [a1]);
        assert_eq!(dead[0].reason, "not acked after 2 deliveries");
        assert_eq!(
            store.ack_messages("r", &[a1], 2_100).await.unwrap(),
            [AckOutcome::NotDelivered(MessageState::Dead)]
        );

        // Requeue: pending again, deliveries reset; only dead letters requeue.
        let requeued = store.requeue_message(a1, 3_000).await.unwrap().unwrap();
        assert_eq!(
            (requeued.state, requeued.deliveries),
            (MessageState::Pending, 0)
        );
        let err = store.requeue_message(a1, 3_000).await.unwrap_err();
        assert!(err.to_string().contains("is pending, not dead"), "{err}");
        assert!(
            store
                .requeue_message(999_999, 3_000)
                .await
                .unwrap()
                .is_none()
        );
        let back = store
            .receive_messages("r", "run-3", 3_001, 10)
            .await
            .unwrap();
        assert_eq!(ids(&back), [a1]);

        // The global sweep finds used-up messages no receive came for.
        let lone = store
            .insert_messages(&[NewMessage {
                max_deliveries: 1,
                ..message("a", "quiet", None, 4_000)
            }])
            .await
            .unwrap();
        store
            .receive_messages("quiet", "", 4_000, 10)
            .await
            .unwrap();
        assert_eq!(store.sweep_dead_letters(4_500).await.unwrap(), 0);
        assert_eq!(store.sweep_dead_letters(5_000).await.unwrap(), 1);
        let row = store
            .get_message(lone[0].message.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, MessageState::Dead);
    }

    /// Two stores on one database (two hubs): a trigger's slot fires once however many try at
    /// once, and concurrent receives for one recipient never hand out one message twice.
    pub(crate) async fn two_hubs(a: &dyn Store, b: &dyn Store) {
        let trigger = TriggerRow {
            id: "t-two".into(),
            actor_id: "both".into(),
            schedule: "every:1000".into(),
            payload: "{}".into(),
            next_due_ms: 5_000,
            created_at_ms: 1,
            ..TriggerRow::default()
        };
        a.insert_trigger(&trigger).await.unwrap();
        let tick = NewMessage {
            idempotency_key: Some("slot:5000".into()),
            ..message("trigger:t-two", "both", None, 5_000)
        };
        let attempts = (0..16).map(|i| {
            let store = if i % 2 == 0 { a } else { b };
            let tick = tick.clone();
            async move {
                store
                    .fire_trigger("t-two", 5_000, 6_000, &tick)
                    .await
                    .unwrap()
            }
        });
        let fired = futures::future::join_all(attempts).await;
        assert_eq!(fired.iter().filter(|f| **f).count(), 1, "{fired:?}");
        let new: Vec<NewMessage> = (0..120)
            .map(|i| message(&format!("s{}", i % 7), "many", None, 10_000 + i))
            .collect();
        a.insert_messages(&new).await.unwrap();
        let receiver = |store: &'static str| {
            let store = if store == "a" { a } else { b };
            async move {
                let mut seen = Vec::new();
                loop {
                    let got = store.receive_messages("many", "", 20_000, 5).await.unwrap();
                    if got.is_empty() {
                        return seen;
                    }
                    let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
                    store.ack_messages("many", &ids, 20_000).await.unwrap();
                    seen.extend(ids);
                }
            }
        };
        let (from_a, from_b) = futures::join!(receiver("a"), receiver("b"));
        let mut all: Vec<i64> = from_a.iter().chain(&from_b).copied().collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "a message was handed out twice");
        assert_eq!(count, 120);
    }

    /// A batch of writes answers each as its own method would, in order.
    pub(crate) async fn batches(store: &dyn Store) {
        let ops = vec![
            MailboxOp::Insert(vec![
                message("b1", "batch", None, 1),
                message("b2", "batch", None, 1),
                message("b1", "batch", None, 1),
            ]),
            MailboxOp::Receive {
                recipient: "batch".into(),
                run_id: "r".into(),
                now_ms: 2,
                limit: 10,
            },
            MailboxOp::Insert(vec![message("b3", "batch", None, 3)]),
        ];
        let answers = store.write_batch(&ops).await.unwrap();
        let [
            MailboxAnswer::Inserted(sent),
            MailboxAnswer::Received(got),
            MailboxAnswer::Inserted(later),
        ] = &answers[..]
        else {
            panic!("{answers:?}");
        };
        let sent_ids: Vec<i64> = sent.iter().map(|s| s.message.id).collect();
        assert!(sent_ids.windows(2).all(|w| w[0] < w[1]), "{sent_ids:?}");
        assert_eq!(sent[1].message.sender, "b2");
        // All three were visible: handed out together, in order.
        assert_eq!(ids(got), sent_ids);
        assert!(later[0].message.id > sent_ids[2]);
        let ops = vec![
            MailboxOp::Ack {
                recipient: "batch".into(),
                ids: vec![sent_ids[0], sent_ids[0], 987_654],
                now_ms: 4,
            },
            MailboxOp::Receive {
                recipient: "batch".into(),
                run_id: "r".into(),
                now_ms: 5,
                limit: 10,
            },
            MailboxOp::Ack {
                recipient: "batch".into(),
                ids: vec![sent_ids[1]],
                now_ms: 6,
            },
        ];
        let answers = store.write_batch(&ops).await.unwrap();
        assert_eq!(
            answers[0],
            MailboxAnswer::Acked(vec![
                AckOutcome::Acked,
                AckOutcome::AlreadyAcked,
                AckOutcome::NotFound
            ])
        );
        let MailboxAnswer::Received(got) = &answers[1] else {
            panic!("{answers:?}");
        };
        // The first three are in flight: only the later one.
        assert_eq!(ids(got), [later[0].message.id]);
        assert_eq!(answers[2], MailboxAnswer::Acked(vec![AckOutcome::Acked]));
    }

    /// Reviews and grants; triggers fired once per slot.
    pub(crate) async fn reviews_and_triggers(store: &dyn Store) {
        let review = ReviewRow {
            id: "r-1".into(),
            actor_id: "a".into(),
            title: "push to main".into(),
            request_key: "push to main".into(),
            options: vec![
                ReviewOption {
                    id: "allow_always".into(),
                    label: "Always".into(),
                    persistent: true,
                },
                ReviewOption {
                    id: "deny".into(),
                    ..ReviewOption::default()
                },
            ],
            created_at_ms: 1,
            ..ReviewRow::default()
        };
        store.insert_review(&review).await.unwrap();
        assert!(matches!(
            store.insert_review(&review).await,
            Err(StoreError::Duplicate { .. })
        ));
        assert_eq!(store.get_review("r-1").await.unwrap().unwrap(), review);
        store
            .insert_review(&ReviewRow {
                id: "r-2".into(),
                actor_id: "b".into(),
                created_at_ms: 2,
                ..review.clone()
            })
            .await
            .unwrap();
        let pending = store.list_reviews(true, None, 10).await.unwrap();
        assert_eq!(
            pending.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["r-2", "r-1"],
            "newest first"
        );
        let answer = ReviewRow {
            state: ReviewState::Answered,
            option_id: "allow_always".into(),
            answered_by: "ops".into(),
            answered_at_ms: Some(5),
            ..review.clone()
        };
        let grant = GrantRow {
            actor_id: "a".into(),
            request_key: "push to main".into(),
            option_id: "allow_always".into(),
            review_id: "r-1".into(),
            created_at_ms: 5,
        };
        assert!(store.answer_review(&answer, Some(&grant)).await.unwrap());
        assert!(
            !store.answer_review(&answer, None).await.unwrap(),
            "answered once only"
        );
        assert_eq!(store.get_review("r-1").await.unwrap().unwrap(), answer);
        assert_eq!(
            store.get_grant("a", "push to main").await.unwrap(),
            Some(grant)
        );
        assert!(
            store
                .get_grant("b", "push to main")
                .await
                .unwrap()
                .is_none()
        );
        let pending = store.list_reviews(true, None, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            store
                .list_reviews(false, Some("a"), 10)
                .await
                .unwrap()
                .len(),
            1
        );

        let trigger = TriggerRow {
            id: "t-1".into(),
            actor_id: "a".into(),
            schedule: "every:1000".into(),
            payload: "{}".into(),
            next_due_ms: 1_000,
            created_at_ms: 1,
            ..TriggerRow::default()
        };
        store.insert_trigger(&trigger).await.unwrap();
        assert!(store.due_triggers(999, 10).await.unwrap().is_empty());
        assert_eq!(
            store.due_triggers(1_000, 10).await.unwrap(),
            std::slice::from_ref(&trigger)
        );
        let tick = NewMessage {
            idempotency_key: Some("t-1:1000".into()),
            ..message("trigger:t-1", "a", None, 1_000)
        };
        assert!(
            store
                .fire_trigger("t-1", 1_000, 2_000, &tick)
                .await
                .unwrap()
        );
        assert!(
            !store
                .fire_trigger("t-1", 1_000, 2_000, &tick)
                .await
                .unwrap(),
            "a slot fires once"
        );
        let fired = store.get_trigger("t-1").await.unwrap().unwrap();
        assert_eq!(
            (fired.next_due_ms, fired.fired, fired.last_fired_ms),
            (2_000, 1, Some(1_000))
        );
        let inbox = store
            .list_messages(&MessageFilter {
                recipient: Some("a"),
                state: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].sender, "trigger:t-1");
        assert_eq!(store.list_triggers(Some("a")).await.unwrap().len(), 1);
        assert!(store.list_triggers(Some("b")).await.unwrap().is_empty());
        assert!(store.delete_trigger("t-1").await.unwrap());
        assert!(!store.delete_trigger("t-1").await.unwrap());
    }
}
