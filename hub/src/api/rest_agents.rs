//! `/api/agents`: create, list, get, delete, start, stop, restart, input, and the output as
//! Server-Sent Events (the retained tail, then live).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde_json::Value;

use crate::api::openapi::{AgentJson, ErrorJson};
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
pub fn routes() -> utoipa_axum::router::OpenApiRouter<Arc<HubState>> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, delete))
        .routes(routes!(start))
        .routes(routes!(stop))
        .routes(routes!(restart))
        .routes(routes!(input))
        .routes(routes!(events))
        .routes(routes!(task_events))
        .routes(routes!(admin_task_events))
}

fn body_error(e: serde_json::Error) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, format!("body: {e}"))
}

#[utoipa::path(post, path = "/api/agents", tag = "agents", summary = "Create an agent on a node, or on any node that fits", request_body = crate::work::agents::CreateAgent, responses((status = 201, body = AgentJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
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
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this node's agents.
    node: Option<String>,
}

#[utoipa::path(get, path = "/api/agents", tag = "agents", summary = "Every agent, or one node's", params(ListQuery), responses((status = 200, body = [AgentJson]), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
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

#[utoipa::path(get, path = "/api/agents/{id}", tag = "agents", summary = "One agent", params(("id" = String, Path, description = "Agent id")), responses((status = 200, body = AgentJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn get_one(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Fleet, "read agents").await?;
    Ok(axum::Json(agent_json(&agents::get(&state, &id).await?)))
}

/// `DELETE /api/agents/{id}?keep_worktree=true` leaves the worktree the node made for it.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, default)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    /// Leave the worktree the node made for it.
    keep_worktree: bool,
}

#[utoipa::path(delete, path = "/api/agents/{id}", tag = "agents", summary = "Delete a stopped agent (and its worktree unless kept)", params(("id" = String, Path, description = "Agent id"), DeleteQuery), responses((status = 204, description = "Deleted"), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
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

#[utoipa::path(post, path = "/api/agents/{id}/start", tag = "agents", summary = "Start a run", params(("id" = String, Path, description = "Agent id")), responses((status = 200, body = AgentJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn start(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Fleet, "start agents").await?;
    Ok(axum::Json(agent_json(&agents::start(&state, &id).await?)))
}

#[utoipa::path(post, path = "/api/agents/{id}/stop", tag = "agents", summary = "Stop the run (graceful, then kill)", params(("id" = String, Path, description = "Agent id")), responses((status = 200, body = AgentJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn stop(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Fleet, "stop agents").await?;
    Ok(axum::Json(agent_json(&agents::stop(&state, &id).await?)))
}

#[utoipa::path(post, path = "/api/agents/{id}/restart", tag = "agents", summary = "Stop, then start a new run", params(("id" = String, Path, description = "Agent id")), responses((status = 200, body = AgentJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn restart(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Fleet, "restart agents").await?;
    Ok(axum::Json(agent_json(&agents::restart(&state, &id).await?)))
}

/// `{"text": "one line"}`
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputBody {
    /// The line (native) or the invoke's input (WASM).
    text: String,
}

#[utoipa::path(post, path = "/api/agents/{id}/input", tag = "agents", summary = "A line on stdin (native) or one invoke (WASM)", params(("id" = String, Path, description = "Agent id")), request_body = InputBody, responses((status = 202, description = "Delivered to the node"), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/api/agents/{id}/events", tag = "agents", summary = "The output as Server-Sent Events: the retained tail, then live", params(("id" = String, Path, description = "Agent id")), responses((status = 200, description = "Each event: id = seq, data = {seq, stream, data, at}", content_type = "text/event-stream", body = String), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/api/tasks/{id}/events", tag = "tasks", summary = "A task's output and state changes as Server-Sent Events, until it ends", params(("id" = String, Path, description = "Task id")), responses((status = 200, description = "Each event: id = seq, data = {seq, stream, data, at}", content_type = "text/event-stream", body = String), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn task_events(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    read(&state, &headers, Subject::Fleet, "read task output").await?;
    let (tail, live) = crate::work::tasks::follow_log(&state, &id).await?;
    Ok(log_events(tail, live))
}

/// `GET /api/admin/tasks/{id}/events`: the same as `/api/tasks/{id}/events`.
#[utoipa::path(get, path = "/api/admin/tasks/{id}/events", tag = "tasks", summary = "The same as /api/tasks/{id}/events", params(("id" = String, Path, description = "Task id")), responses((status = 200, description = "Each event: id = seq, data = {seq, stream, data, at}", content_type = "text/event-stream", body = String), (status = "4XX", description = "Refused", body = ErrorJson)), security(("bearer" = [])))]
async fn admin_task_events(
    state: State<Arc<HubState>>,
    headers: HeaderMap,
    id: Path<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    task_events(state, headers, id).await
}

/// Entries as Server-Sent Events: each an event whose id is its `seq` and whose data is the
/// entry as JSON.
pub(crate) fn log_events(
    tail: Vec<LogEntry>,
    live: Option<tokio::sync::broadcast::Receiver<LogEntry>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    Sse::new(log_stream(tail, live)).keep_alive(KeepAlive::default())
}

/// The events of [`log_events`], as a stream.
pub(crate) fn log_stream(
    tail: Vec<LogEntry>,
    live: Option<tokio::sync::broadcast::Receiver<LogEntry>>,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let to_event = |entry: LogEntry| {
        Ok::<_, Infallible>(
            Event::default()
                .id(entry.seq.to_string())
                .data(serde_json::to_string(&entry).unwrap_or_default()),
        )
    };
    use futures::StreamExt as _;
    futures::stream::iter(tail)
        .chain(crate::work::output::follow(live))
        .map(to_event)
}
