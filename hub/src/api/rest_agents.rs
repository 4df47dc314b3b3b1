//! `/api/agents`: create, list, get, delete, start, stop, restart, input, and the output as
//! Server-Sent Events (the retained tail, then live).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use serde_json::Value;

use crate::work::output::LogEntry;

use super::access::Subject;
use super::rest::{ApiError, read, write};
use super::views::{agent_json as view_json, agent_view};
use crate::state::HubState;
use crate::work::agents::{self, CreateAgent};

fn agent_json(agent: &crate::store::AgentRow) -> Value {
    view_json(&agent_view(agent))
}

/// The agents' routes (merged into the REST router, behind its credential check).
pub fn routes() -> Router<Arc<HubState>> {
    Router::new()
        .route("/api/agents", get(list).post(create))
        .route("/api/agents/{id}", get(get_one).delete(delete))
        .route("/api/agents/{id}/start", post(start))
        .route("/api/agents/{id}/stop", post(stop))
        .route("/api/agents/{id}/restart", post(restart))
        .route("/api/agents/{id}/input", post(input))
        .route("/api/agents/{id}/events", get(events))
        .route("/api/tasks/{id}/events", get(task_events))
        .route("/api/admin/tasks/{id}/events", get(task_events))
}

fn body_error(e: serde_json::Error) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, format!("body: {e}"))
}

async fn create(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    write(&state, &headers, Subject::Fleet, "create agents").await?;
    let request: CreateAgent = serde_json::from_slice(&body).map_err(body_error)?;
    let agent = agents::create(&state, request).await?;
    Ok((StatusCode::CREATED, axum::Json(agent_json(&agent))))
}

/// `?node=ID`
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    node: Option<String>,
}

async fn list(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Fleet, "list agents").await?;
    let agents = agents::list(&state, query.node.as_deref()).await?;
    Ok(axum::Json(Value::Array(
        agents.iter().map(agent_json).collect(),
    )))
}

async fn get_one(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Fleet, "read agents").await?;
    Ok(axum::Json(agent_json(&agents::get(&state, &id).await?)))
}

/// `DELETE /api/agents/{id}?keep_worktree=true` leaves the worktree the node made for it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DeleteQuery {
    keep_worktree: bool,
}

async fn delete(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    write(&state, &headers, Subject::Fleet, "delete agents").await?;
    agents::delete(&state, &id, query.keep_worktree).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Fleet, "start agents").await?;
    Ok(axum::Json(agent_json(&agents::start(&state, &id).await?)))
}

async fn stop(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Fleet, "stop agents").await?;
    Ok(axum::Json(agent_json(&agents::stop(&state, &id).await?)))
}

async fn restart(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Fleet, "restart agents").await?;
    Ok(axum::Json(agent_json(&agents::restart(&state, &id).await?)))
}

/// `{"text": "one line"}`
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    text: String,
}

async fn input(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    write(&state, &headers, Subject::Fleet, "feed agents").await?;
    let body: InputBody = serde_json::from_slice(&body).map_err(body_error)?;
    agents::input(&state, &id, &body.text).await?;
    Ok(StatusCode::ACCEPTED)
}

/// The agent's output as Server-Sent Events: every retained entry, then what arrives, each an
/// event whose id is its `seq` and whose data is the entry as JSON. A subscriber that falls
/// behind by more than the live backlog gets an `event` entry saying how many it missed.
async fn events(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    read(&state, &headers, Subject::Fleet, "read agent output").await?;
    agents::get(&state, &id).await?;
    let (tail, live) = state.agents.logs.subscribe(&id);
    Ok(log_events(tail, live))
}

/// A task's output and state changes as Server-Sent Events, like an agent's; the stream ends
/// when the task has finished.
async fn task_events(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    read(&state, &headers, Subject::Fleet, "read task output").await?;
    let (tail, live) = crate::work::tasks::follow_log(&state, &id).await?;
    Ok(log_events(tail, live))
}

/// Entries as Server-Sent Events: each an event whose id is its `seq` and whose data is the
/// entry as JSON.
pub(crate) fn log_events(
    tail: Vec<LogEntry>,
    live: Option<tokio::sync::broadcast::Receiver<LogEntry>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let to_event = |entry: LogEntry| {
        Ok::<_, Infallible>(
            Event::default()
                .id(entry.seq.to_string())
                .data(serde_json::to_string(&entry).unwrap_or_default()),
        )
    };
    use futures::StreamExt as _;
    let stream = futures::stream::iter(tail)
        .chain(crate::work::output::follow(live))
        .map(to_event);
    Sse::new(stream).keep_alive(KeepAlive::default())
}
