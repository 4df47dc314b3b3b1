//! `/api/actors` and `/api/permission-reviews`: the actor layer over REST, with the same rules
//! as its gRPC service (an actor credential acts only as its own actor; only `admin` answers
//! reviews). Batch calls take a list and answer one result per item, in order (200 whatever each
//! came to: the items say).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::access::{Access, Subject};
use super::rest::{ApiError, authenticate, permit, read, write, write_as};
use crate::actors::{mailbox, reviews, triggers};
use crate::api::actor_views::{
    member_json, member_view, message_json, message_view, review_json, review_view, trigger_json,
    trigger_view,
};
use crate::api::openapi::{ErrorJson, MessageJson, ReviewJson, TriggerJson};
use crate::state::HubState;
use crate::store::actors::{MessageRow, ReviewOption};

/// The actor routes (merged into the REST router, behind its credential check).
pub fn routes() -> utoipa_axum::router::OpenApiRouter<Arc<HubState>> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(inbox))
        .routes(routes!(ack))
        .routes(routes!(team_members))
        .routes(routes!(list_triggers, create_trigger))
        .routes(routes!(delete_trigger))
        .routes(routes!(dead_letters))
        .routes(routes!(requeue))
        .routes(routes!(request_permission))
        .routes(routes!(list_reviews))
        .routes(routes!(get_review))
        .routes(routes!(respond))
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

fn message(m: &MessageRow) -> Value {
    message_json(&message_view(m))
}

/// A send.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// An actor id, `agent:NAME`, or `team:NAME`.
    to: String,
    /// Any JSON.
    payload: Value,
    /// A retried send with the same key makes no second message.
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[utoipa::path(post, path = "/api/actors/{id}/messages", tag = "actors", summary = "Send a message as this actor (200 when the key names an earlier send)", params(("id" = String, Path, description = "The sending actor")), request_body = SendBody, responses((status = 201, description = "`{message_id, duplicate, messages}`", body = Object), (status = 200, description = "A retried key: the earlier messages", body = Object), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found", body = ErrorJson)), security(("bearer" = [])))]
async fn send(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    write(&state, &headers, Subject::Actor(&id), "send messages").await?;
    let request: SendBody = body(&bytes)?;
    let sent = mailbox::send(
        &state,
        mailbox::SendRequest {
            sender: id,
            to: request.to,
            payload: request.payload.to_string(),
            idempotency_key: request.idempotency_key,
        },
    )
    .await?;
    let status = if sent.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        axum::Json(json!({
            "message_id": sent.messages.first().map(|m| m.id),
            "duplicate": sent.duplicate,
            "messages": sent.messages.iter().map(message).collect::<Vec<_>>(),
        })),
    ))
}

/// A receive.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InboxBody {
    /// The receiving run (an agent's current run).
    run_id: String,
    /// Ack what is handed out at once.
    auto_ack: bool,
    /// At most this many (0: 100).
    limit: u32,
    /// Wait up to this long for a message when none is visible (at most 25,000).
    wait_ms: u64,
}

#[utoipa::path(post, path = "/api/actors/{id}/inbox", tag = "actors", summary = "Take the actor's visible messages (each comes again after the visibility timeout unless acked)", params(("id" = String, Path, description = "The receiving actor")), request_body = InboxBody, responses((status = 200, description = "`{actor_id, messages}`", body = [MessageJson]), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 409 not the agent's current run", body = ErrorJson)), security(("bearer" = [])))]
async fn inbox(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Actor(&id), "read the inbox").await?;
    let request: InboxBody = if bytes.is_empty() {
        InboxBody::default()
    } else {
        body(&bytes)?
    };
    let messages = mailbox::inbox(
        &state,
        &mailbox::InboxRequest {
            actor_id: id.clone(),
            run_id: request.run_id,
            limit: request.limit,
            wait_ms: request.wait_ms,
            auto_ack: request.auto_ack,
        },
    )
    .await?;
    Ok(axum::Json(json!({
        "actor_id": id,
        "messages": messages.iter().map(message).collect::<Vec<_>>(),
    })))
}

/// An ack of one or several messages.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// The messages, acked one after another.
    message_ids: Vec<i64>,
}

#[utoipa::path(post, path = "/api/actors/{id}/ack", tag = "actors", summary = "Ack taken messages: one result per id, in order", params(("id" = String, Path, description = "The receiving actor")), request_body = AckBody, responses((status = 200, description = "`[{message_id, ok, already_acked | error}]`", body = [Object]), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not", body = ErrorJson)), security(("bearer" = [])))]
async fn ack(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Actor(&id), "ack messages").await?;
    let request: AckBody = body(&bytes)?;
    let outcomes = mailbox::ack(&state, &id, &request.message_ids).await?;
    let items: Vec<Value> = request
        .message_ids
        .iter()
        .zip(outcomes)
        .map(
            |(&message_id, outcome)| match mailbox::ack_result(message_id, outcome) {
                Ok(already_acked) => {
                    json!({"message_id": message_id, "ok": true, "already_acked": already_acked})
                }
                Err(e) => json!({"message_id": message_id, "ok": false, "error": e.to_string()}),
            },
        )
        .collect();
    Ok(axum::Json(Value::Array(items)))
}

#[utoipa::path(get, path = "/api/actors/{id}/team-members", tag = "actors", summary = "The other members of the actor's teams", params(("id" = String, Path, description = "An agent's id")), responses((status = 200, description = "`{actor_id, members: [{actor_id, name, status, node, teams}]}`", body = Object), (status = "4XX", description = "Refused: 401 no valid token, 403 the role may not, 404 not an agent", body = ErrorJson)), security(("bearer" = [])))]
async fn team_members(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Actor(&id), "list team members").await?;
    let members = mailbox::team_members(&state, &id).await?;
    Ok(axum::Json(json!({
        "actor_id": id,
        "members": members.iter().map(|m| member_json(&member_view(m))).collect::<Vec<_>>(),
    })))
}

#[utoipa::path(get, path = "/api/actors/{id}/time-triggers", tag = "actors", summary = "The actor's time triggers", params(("id" = String, Path, description = "The actor")), responses((status = 200, body = [TriggerJson]), (status = "4XX", description = "Refused: 401 no valid token, 403 the role may not", body = ErrorJson)), security(("bearer" = [])))]
async fn list_triggers(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Actor(&id), "list time triggers").await?;
    let list = triggers::list(&state, Some(&id)).await?;
    Ok(axum::Json(Value::Array(
        list.iter()
            .map(|t| trigger_json(&trigger_view(t)))
            .collect(),
    )))
}

/// A trigger: exactly one of `cron` and `every`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerBody {
    /// Five cron fields, UTC.
    cron: String,
    /// An interval (`30s`, `5m`).
    every: String,
    /// Any JSON each message carries (default `{}`).
    payload: Option<Value>,
}

#[utoipa::path(post, path = "/api/actors/{id}/time-triggers", tag = "actors", summary = "A time trigger: a message to the actor at each slot", params(("id" = String, Path, description = "The actor")), request_body = TriggerBody, responses((status = 201, body = TriggerJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 409 too many", body = ErrorJson)), security(("bearer" = [])))]
async fn create_trigger(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    write(
        &state,
        &headers,
        Subject::Actor(&id),
        "create time triggers",
    )
    .await?;
    let request: TriggerBody = body(&bytes)?;
    let trigger = triggers::create(
        &state,
        triggers::CreateTrigger {
            actor_id: id,
            cron: request.cron,
            every: request.every,
            payload: request.payload.map(|p| p.to_string()).unwrap_or_default(),
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(trigger_json(&trigger_view(&trigger))),
    ))
}

#[utoipa::path(delete, path = "/api/actors/time-triggers/{trigger_id}", tag = "actors", summary = "Delete a time trigger", params(("trigger_id" = String, Path, description = "The trigger")), responses((status = 204), (status = "4XX", description = "Refused: 401 no valid token, 403 the role may not, 404 not found", body = ErrorJson)), security(("bearer" = [])))]
async fn delete_trigger(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(trigger_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let claims = authenticate(&state, &headers).await?;
    let owner = state
        .store()
        .get_trigger(&trigger_id)
        .await
        .map_err(crate::work::tasks::TaskError::from)?
        .map(|t| t.actor_id)
        .unwrap_or_default();
    permit(
        &claims,
        Access::Write,
        Subject::Actor(&owner),
        "delete time triggers",
    )?;
    triggers::delete(&state, &trigger_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?actor_id=…`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ActorQuery {
    /// Only this actor's.
    actor_id: Option<String>,
}

#[utoipa::path(get, path = "/api/actors/dead-letters", tag = "actors", summary = "Messages that went unacked too often", params(ActorQuery), responses((status = 200, body = [MessageJson]), (status = "4XX", description = "Refused: 401 no valid token, 403 the role may not", body = ErrorJson)), security(("bearer" = [])))]
async fn dead_letters(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Query(query): Query<ActorQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let subject = match &query.actor_id {
        Some(actor) => Subject::Actor(actor),
        None => Subject::Reviews,
    };
    read(&state, &headers, subject, "list dead letters").await?;
    let dead = mailbox::dead_letters(&state, query.actor_id.as_deref(), 1_000).await?;
    Ok(axum::Json(Value::Array(dead.iter().map(message).collect())))
}

#[utoipa::path(post, path = "/api/actors/dead-letters/{message_id}/requeue", tag = "actors", summary = "Put a dead letter back in its inbox", params(("message_id" = i64, Path, description = "The message")), responses((status = 200, body = MessageJson), (status = "4XX", description = "Refused: 401 no valid token, 403 the role may not, 404 not found, 409 not dead", body = ErrorJson)), security(("bearer" = [])))]
async fn requeue(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(message_id): Path<i64>,
) -> Result<axum::Json<Value>, ApiError> {
    let claims = authenticate(&state, &headers).await?;
    let recipient = state
        .store()
        .get_message(message_id)
        .await
        .map_err(crate::work::tasks::TaskError::from)?
        .map(|m| m.recipient)
        .unwrap_or_default();
    permit(
        &claims,
        Access::Write,
        Subject::Actor(&recipient),
        "requeue messages",
    )?;
    let requeued = mailbox::requeue(&state, message_id).await?;
    Ok(axum::Json(message(&requeued)))
}

/// A permission request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionBody {
    /// What is asked.
    title: String,
    /// More about it.
    #[serde(default)]
    detail: String,
    /// The answers offered: `[{id, label?, persistent?}]`.
    #[schema(value_type = Vec<Object>)]
    options: Vec<ReviewOption>,
    /// What "the same request" is for a persistent answer (default: the title).
    #[serde(default)]
    request_key: String,
}

#[utoipa::path(post, path = "/api/actors/{id}/permission-requests", tag = "actors", summary = "Ask the operators (answered at once when a persistent answer covers it)", params(("id" = String, Path, description = "The asking actor")), request_body = PermissionBody, responses((status = 201, body = ReviewJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not", body = ErrorJson)), security(("bearer" = [])))]
async fn request_permission(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    write(&state, &headers, Subject::Actor(&id), "request permission").await?;
    let request: PermissionBody = body(&bytes)?;
    let review = reviews::request(
        &state,
        reviews::PermissionRequest {
            actor_id: id,
            title: request.title,
            detail: request.detail,
            options: request.options,
            request_key: request.request_key,
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(review_json(&review_view(&review))),
    ))
}

/// `?pending=true&actor_id=…`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ReviewsQuery {
    /// Only those waiting for an answer.
    pending: Option<bool>,
    /// Only this actor's.
    actor_id: Option<String>,
}

#[utoipa::path(get, path = "/api/permission-reviews", tag = "actors", summary = "Permission reviews, newest first", params(ReviewsQuery), responses((status = 200, body = [ReviewJson]), (status = "4XX", description = "Refused: 401 no valid token, 403 the role may not", body = ErrorJson)), security(("bearer" = [])))]
async fn list_reviews(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Query(query): Query<ReviewsQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let subject = match &query.actor_id {
        Some(actor) => Subject::Actor(actor),
        None => Subject::Reviews,
    };
    read(&state, &headers, subject, "list permission reviews").await?;
    let list = reviews::list(
        &state,
        query.pending.unwrap_or(false),
        query.actor_id.as_deref(),
        1_000,
    )
    .await?;
    Ok(axum::Json(Value::Array(
        list.iter().map(|r| review_json(&review_view(r))).collect(),
    )))
}

/// `?wait_ms=…`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// Wait up to this long for an answer (at most 25,000).
    wait_ms: Option<u64>,
}

#[utoipa::path(get, path = "/api/permission-reviews/{request_id}", tag = "actors", summary = "One review, after waiting up to wait_ms for its answer", params(("request_id" = String, Path, description = "The review"), WaitQuery), responses((status = 200, body = ReviewJson), (status = "4XX", description = "Refused: 401 no valid token, 403 the role may not, 404 not found", body = ErrorJson)), security(("bearer" = [])))]
async fn get_review(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let claims = authenticate(&state, &headers).await?;
    let found = reviews::get(&state, &request_id).await;
    let owner = found
        .as_ref()
        .map(|r| r.actor_id.clone())
        .unwrap_or_default();
    permit(
        &claims,
        Access::Read,
        Subject::Actor(&owner),
        "read permission reviews",
    )?;
    found?;
    let review = reviews::wait(&state, &request_id, query.wait_ms.unwrap_or(0)).await?;
    Ok(axum::Json(review_json(&review_view(&review))))
}

/// An answer: one of the request's own option ids, or `outcome: cancelled`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RespondBody {
    /// The option chosen.
    option_id: String,
    /// `cancelled` (the only outcome).
    outcome: String,
}

#[utoipa::path(post, path = "/api/permission-reviews/{request_id}/respond", tag = "actors", summary = "Answer a review with one of its option ids, or cancel it (admin)", params(("request_id" = String, Path, description = "The review")), request_body = RespondBody, responses((status = 200, body = ReviewJson), (status = "4XX", description = "Refused: 400 names the field (a wrong option names the valid ones), 401 no valid token, 403 the role may not, 404 not found, 409 answered already", body = ErrorJson)), security(("bearer" = [])))]
async fn respond(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
    bytes: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let claims = write_as(
        &state,
        &headers,
        Subject::Reviews,
        "answer permission reviews",
    )
    .await?;
    let request: RespondBody = body(&bytes)?;
    let answer = match (request.option_id.trim(), request.outcome.trim()) {
        ("", "cancelled") => reviews::Answer::Cancelled,
        (option, "") if !option.is_empty() => reviews::Answer::Option(option.to_string()),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "body: give option_id (one of the request's own option ids) or outcome \"cancelled\", not both",
            ));
        }
    };
    let review = reviews::respond(&state, &request_id, answer, &claims.sub).await?;
    Ok(axum::Json(review_json(&review_view(&review))))
}
