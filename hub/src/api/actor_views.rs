//! The actor layer on the wire: protobuf views of its rows, and the JSON shapes of those views
//! that REST and the CLI's output share (`from`/`to`, option ids, RFC 3339 times).

use outpost_proto::v1 as pb;
use serde_json::{Value, json};

use crate::actors::{mailbox::Member, triggers};
use crate::api::views::time_json;
use crate::store::actors::{MessageRow, ReviewOption, ReviewRow, TriggerRow};

/// A message on the wire.
pub fn message_view(m: &MessageRow) -> pb::ActorMessage {
    pb::ActorMessage {
        id: m.id,
        from: m.sender.clone(),
        to: m.recipient.clone(),
        team: m.team.clone(),
        payload: m.payload.clone(),
        idempotency_key: m.idempotency_key.clone().unwrap_or_default(),
        state: m.state.as_str().into(),
        deliveries: m.deliveries,
        max_deliveries: m.max_deliveries,
        run_id: m.run_id.clone(),
        reason: m.reason.clone(),
        created_at_ms: m.created_at_ms,
        delivered_at_ms: m.delivered_at_ms.unwrap_or(0),
        acked_at_ms: m.acked_at_ms.unwrap_or(0),
        visible_at_ms: m.visible_at_ms,
    }
}

/// A message's JSON: the payload as JSON (not text).
pub fn message_json(m: &pb::ActorMessage) -> Value {
    let payload: Value =
        serde_json::from_str(&m.payload).unwrap_or_else(|_| Value::String(m.payload.clone()));
    json!({
        "id": m.id,
        "from": m.from,
        "to": m.to,
        "team": if m.team.is_empty() { Value::Null } else { Value::String(m.team.clone()) },
        "payload": payload,
        "idempotency_key": if m.idempotency_key.is_empty() { Value::Null } else { Value::String(m.idempotency_key.clone()) },
        "state": m.state,
        "deliveries": m.deliveries,
        "max_deliveries": m.max_deliveries,
        "run_id": m.run_id,
        "reason": m.reason,
        "created_at": time_json(m.created_at_ms),
        "delivered_at": time_json(m.delivered_at_ms),
        "acked_at": time_json(m.acked_at_ms),
        "visible_at": if m.state == "delivered" { time_json(m.visible_at_ms) } else { Value::Null },
    })
}

/// A team member on the wire.
pub fn member_view(m: &Member) -> pb::TeamMember {
    pb::TeamMember {
        actor_id: m.actor_id.clone(),
        name: m.name.clone(),
        status: m.status.clone(),
        node: m.node_id.clone(),
        teams: m.teams.clone(),
    }
}

/// A team member's JSON.
pub fn member_json(m: &pb::TeamMember) -> Value {
    json!({
        "actor_id": m.actor_id,
        "name": m.name,
        "status": m.status,
        "node": m.node,
        "teams": m.teams,
    })
}

/// A trigger on the wire.
pub fn trigger_view(t: &TriggerRow) -> pb::TimeTrigger {
    pb::TimeTrigger {
        id: t.id.clone(),
        actor_id: t.actor_id.clone(),
        schedule: triggers::describe(t),
        payload: t.payload.clone(),
        next_due_ms: t.next_due_ms,
        fired: t.fired,
        last_fired_ms: t.last_fired_ms.unwrap_or(0),
        created_at_ms: t.created_at_ms,
    }
}

/// A trigger's JSON.
pub fn trigger_json(t: &pb::TimeTrigger) -> Value {
    let payload: Value =
        serde_json::from_str(&t.payload).unwrap_or_else(|_| Value::String(t.payload.clone()));
    json!({
        "id": t.id,
        "actor_id": t.actor_id,
        "schedule": t.schedule,
        "payload": payload,
        "next_due_at": if t.next_due_ms == i64::MAX { Value::Null } else { time_json(t.next_due_ms) },
        "fired": t.fired,
        "last_fired_at": time_json(t.last_fired_ms),
        "created_at": time_json(t.created_at_ms),
    })
}

/// An option on the wire.
pub fn option_view(o: &ReviewOption) -> pb::ReviewOption {
    pb::ReviewOption {
        id: o.id.clone(),
        label: o.label.clone(),
        persistent: o.persistent,
    }
}

/// An option from the wire.
pub fn option_row(o: &pb::ReviewOption) -> ReviewOption {
    ReviewOption {
        id: o.id.clone(),
        label: o.label.clone(),
        persistent: o.persistent,
    }
}

/// A review on the wire.
pub fn review_view(r: &ReviewRow) -> pb::PermissionReview {
    pb::PermissionReview {
        id: r.id.clone(),
        actor_id: r.actor_id.clone(),
        title: r.title.clone(),
        detail: r.detail.clone(),
        request_key: r.request_key.clone(),
        options: r.options.iter().map(option_view).collect(),
        state: r.state.as_str().into(),
        option_id: r.option_id.clone(),
        answered_by: r.answered_by.clone(),
        created_at_ms: r.created_at_ms,
        answered_at_ms: r.answered_at_ms.unwrap_or(0),
    }
}

/// A review's JSON.
pub fn review_json(r: &pb::PermissionReview) -> Value {
    json!({
        "request_id": r.id,
        "actor_id": r.actor_id,
        "title": r.title,
        "detail": r.detail,
        "request_key": r.request_key,
        "options": r.options.iter().map(|o| json!({"id": o.id, "label": o.label, "persistent": o.persistent})).collect::<Vec<_>>(),
        "state": r.state,
        "option_id": if r.option_id.is_empty() { Value::Null } else { Value::String(r.option_id.clone()) },
        "outcome": match r.state.as_str() {
            "answered" => Value::String("selected".into()),
            "cancelled" => Value::String("cancelled".into()),
            _ => Value::Null,
        },
        "answered_by": r.answered_by,
        "created_at": time_json(r.created_at_ms),
        "answered_at": time_json(r.answered_at_ms),
    })
}
