//! [`ActorStore`] in memory: the same delivery rules as the SQL store (see
//! [`crate::store::actors`]), for unit tests of the actor logic above the store.

use std::collections::BTreeMap;

use super::StoreError;
use super::actors::{
    AckOutcome, ActorStore, GrantRow, MessageFilter, MessageRow, MessageState, NewMessage,
    ReviewRow, ReviewState, SentMessage, TriggerRow,
};
use async_trait::async_trait;

/// The actor tables.
#[derive(Debug, Default)]
pub(super) struct ActorTables {
    next_message: i64,
    messages: BTreeMap<i64, MessageRow>,
    reviews: BTreeMap<String, ReviewRow>,
    /// (actor, request key) → grant
    grants: BTreeMap<(String, String), GrantRow>,
    triggers: BTreeMap<String, TriggerRow>,
}

fn dead_reason(m: &MessageRow) -> String {
    format!("not acked after {} deliveries", m.deliveries)
}

fn used_up(m: &MessageRow, now_ms: i64) -> bool {
    m.state == MessageState::Delivered
        && m.visible_at_ms <= now_ms
        && m.deliveries >= m.max_deliveries
}

#[async_trait]
impl ActorStore for super::MemoryStore {
    async fn insert_messages(
        &self,
        messages: &[NewMessage],
    ) -> Result<Vec<SentMessage>, StoreError> {
        let mut t = self.actors.lock();
        let mut sent = Vec::with_capacity(messages.len());
        for m in messages {
            let earlier = m.idempotency_key.as_ref().and_then(|key| {
                t.messages.values().find(|e| {
                    e.sender == m.sender
                        && e.recipient == m.recipient
                        && e.idempotency_key.as_ref() == Some(key)
                })
            });
            if let Some(earlier) = earlier {
                sent.push(SentMessage {
                    message: earlier.clone(),
                    duplicate: true,
                });
                continue;
            }
            t.next_message += 1;
            let row = MessageRow {
                id: t.next_message,
                sender: m.sender.clone(),
                recipient: m.recipient.clone(),
                team: m.team.clone(),
                payload: m.payload.clone(),
                idempotency_key: m.idempotency_key.clone(),
                state: MessageState::Pending,
                deliveries: 0,
                max_deliveries: m.max_deliveries,
                visibility_ms: m.visibility_ms,
                visible_at_ms: m.now_ms,
                created_at_ms: m.now_ms,
                ..MessageRow::default()
            };
            t.messages.insert(row.id, row.clone());
            sent.push(SentMessage {
                message: row,
                duplicate: false,
            });
        }
        Ok(sent)
    }

    async fn receive_messages(
        &self,
        recipient: &str,
        run_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let mut t = self.actors.lock();
        for m in t.messages.values_mut() {
            if m.recipient == recipient && used_up(m, now_ms) {
                m.state = MessageState::Dead;
                m.reason = dead_reason(m);
            }
        }
        // Senders with a message in flight: nothing later of theirs is handed out.
        let mut in_flight: BTreeMap<String, i64> = BTreeMap::new();
        for m in t.messages.values() {
            if m.recipient == recipient
                && m.state == MessageState::Delivered
                && m.visible_at_ms > now_ms
            {
                in_flight.entry(m.sender.clone()).or_insert(m.id);
            }
        }
        let picked: Vec<i64> = t
            .messages
            .values()
            .filter(|m| {
                m.recipient == recipient
                    && matches!(m.state, MessageState::Pending | MessageState::Delivered)
                    && m.visible_at_ms <= now_ms
                    && m.deliveries < m.max_deliveries
                    && in_flight.get(&m.sender).is_none_or(|&first| first > m.id)
            })
            .take(limit as usize)
            .map(|m| m.id)
            .collect();
        let mut out = Vec::with_capacity(picked.len());
        for id in picked {
            if let Some(m) = t.messages.get_mut(&id) {
                m.state = MessageState::Delivered;
                m.deliveries += 1;
                m.visible_at_ms = now_ms + m.visibility_ms;
                m.delivered_at_ms = Some(now_ms);
                m.run_id = run_id.to_string();
                out.push(m.clone());
            }
        }
        Ok(out)
    }

    async fn ack_messages(
        &self,
        recipient: &str,
        ids: &[i64],
        now_ms: i64,
    ) -> Result<Vec<AckOutcome>, StoreError> {
        let mut t = self.actors.lock();
        Ok(ids
            .iter()
            .map(|id| match t.messages.get_mut(id) {
                None => AckOutcome::NotFound,
                Some(m) if m.recipient != recipient => AckOutcome::NotYours,
                Some(m) => match m.state {
                    MessageState::Delivered => {
                        m.state = MessageState::Acked;
                        m.acked_at_ms = Some(now_ms);
                        AckOutcome::Acked
                    }
                    MessageState::Acked => AckOutcome::AlreadyAcked,
                    state => AckOutcome::NotDelivered(state),
                },
            })
            .collect())
    }

    async fn get_message(&self, id: i64) -> Result<Option<MessageRow>, StoreError> {
        Ok(self.actors.lock().messages.get(&id).cloned())
    }

    async fn list_messages(
        &self,
        filter: &MessageFilter<'_>,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let t = self.actors.lock();
        Ok(t.messages
            .values()
            .filter(|m| filter.recipient.is_none_or(|r| m.recipient == r))
            .filter(|m| filter.state.is_none_or(|s| m.state == s))
            .take(filter.limit as usize)
            .cloned()
            .collect())
    }

    async fn sweep_dead_letters(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut t = self.actors.lock();
        let mut swept = 0;
        for m in t.messages.values_mut() {
            if used_up(m, now_ms) {
                m.state = MessageState::Dead;
                m.reason = dead_reason(m);
                swept += 1;
            }
        }
        Ok(swept)
    }

    async fn requeue_message(
        &self,
        id: i64,
        now_ms: i64,
    ) -> Result<Option<MessageRow>, StoreError> {
        let mut t = self.actors.lock();
        let Some(m) = t.messages.get_mut(&id) else {
            return Ok(None);
        };
        if m.state != MessageState::Dead {
            return Err(StoreError::Conflict(format!(
                "message {id} is {}, not dead: only dead letters are requeued",
                m.state.as_str()
            )));
        }
        m.state = MessageState::Pending;
        m.deliveries = 0;
        m.visible_at_ms = now_ms;
        m.reason = "requeued from the dead-letter list".into();
        Ok(Some(m.clone()))
    }

    async fn insert_review(&self, review: &ReviewRow) -> Result<(), StoreError> {
        let mut t = self.actors.lock();
        if t.reviews.contains_key(&review.id) {
            return Err(StoreError::Duplicate {
                what: "permission review",
                id: review.id.clone(),
            });
        }
        t.reviews.insert(review.id.clone(), review.clone());
        Ok(())
    }

    async fn get_review(&self, id: &str) -> Result<Option<ReviewRow>, StoreError> {
        Ok(self.actors.lock().reviews.get(id).cloned())
    }

    async fn list_reviews(
        &self,
        pending_only: bool,
        actor_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        let t = self.actors.lock();
        let mut reviews: Vec<ReviewRow> = t
            .reviews
            .values()
            .filter(|r| !pending_only || r.state == ReviewState::Pending)
            .filter(|r| actor_id.is_none_or(|a| r.actor_id == a))
            .cloned()
            .collect();
        reviews.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
        reviews.truncate(limit as usize);
        Ok(reviews)
    }

    async fn answer_review(
        &self,
        answer: &ReviewRow,
        grant: Option<&GrantRow>,
    ) -> Result<bool, StoreError> {
        let mut t = self.actors.lock();
        let Some(review) = t.reviews.get_mut(&answer.id) else {
            return Ok(false);
        };
        if review.state != ReviewState::Pending {
            return Ok(false);
        }
        review.state = answer.state;
        review.option_id = answer.option_id.clone();
        review.answered_by = answer.answered_by.clone();
        review.answered_at_ms = answer.answered_at_ms;
        if let Some(grant) = grant {
            t.grants.insert(
                (grant.actor_id.clone(), grant.request_key.clone()),
                grant.clone(),
            );
        }
        Ok(true)
    }

    async fn get_grant(
        &self,
        actor_id: &str,
        request_key: &str,
    ) -> Result<Option<GrantRow>, StoreError> {
        Ok(self
            .actors
            .lock()
            .grants
            .get(&(actor_id.to_string(), request_key.to_string()))
            .cloned())
    }

    async fn insert_trigger(&self, trigger: &TriggerRow) -> Result<(), StoreError> {
        let mut t = self.actors.lock();
        if t.triggers.contains_key(&trigger.id) {
            return Err(StoreError::Duplicate {
                what: "time trigger",
                id: trigger.id.clone(),
            });
        }
        t.triggers.insert(trigger.id.clone(), trigger.clone());
        Ok(())
    }

    async fn list_triggers(&self, actor_id: Option<&str>) -> Result<Vec<TriggerRow>, StoreError> {
        let t = self.actors.lock();
        let mut triggers: Vec<TriggerRow> = t
            .triggers
            .values()
            .filter(|tr| actor_id.is_none_or(|a| tr.actor_id == a))
            .cloned()
            .collect();
        triggers.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(triggers)
    }

    async fn get_trigger(&self, id: &str) -> Result<Option<TriggerRow>, StoreError> {
        Ok(self.actors.lock().triggers.get(id).cloned())
    }

    async fn delete_trigger(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.actors.lock().triggers.remove(id).is_some())
    }

    async fn due_triggers(&self, now_ms: i64, limit: u32) -> Result<Vec<TriggerRow>, StoreError> {
        let t = self.actors.lock();
        let mut due: Vec<TriggerRow> = t
            .triggers
            .values()
            .filter(|tr| tr.next_due_ms <= now_ms)
            .cloned()
            .collect();
        due.sort_by(|a, b| (a.next_due_ms, &a.id).cmp(&(b.next_due_ms, &b.id)));
        due.truncate(limit as usize);
        Ok(due)
    }

    async fn fire_trigger(
        &self,
        trigger_id: &str,
        slot_ms: i64,
        next_due_ms: i64,
        message: &NewMessage,
    ) -> Result<bool, StoreError> {
        {
            let mut t = self.actors.lock();
            let Some(trigger) = t.triggers.get_mut(trigger_id) else {
                return Ok(false);
            };
            if trigger.next_due_ms != slot_ms {
                return Ok(false);
            }
            trigger.next_due_ms = next_due_ms;
            trigger.fired += 1;
            trigger.last_fired_ms = Some(slot_ms);
        }
        self.insert_messages(std::slice::from_ref(message)).await?;
        Ok(true)
    }
}
