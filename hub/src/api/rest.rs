//! The REST API (axum): AgentHub's node registry at `/api/admin/agent-nodes`, tasks at
//! `/api/admin/tasks` and the tool registry at `/api/admin/tools`.
//!
//! Bearer JWT on every call, judged by the one rule of [`crate::api::access`]: admin may write,
//! viewer may read, a node may read only its own record. Errors are JSON
//! `{"error": "...", "field": "..."}`: 400 names the offending field, 401/403 say what credential
//! is missing, 404 and 409 name the node.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_proto::v1::NodeRecord;
use outpost_trust::auth::AuthError;
use serde_json::{Map, Value, json};

use crate::api::access::{self, Access, Subject};
use crate::api::openapi::{
    AuditJson, ErrorJson, HealthJson, NodeJson, NodeRecordBody, TaskJson, ToolJson,
};
use crate::api::views;
use crate::fleet::registry::{self, NodePatch, RegistryError};
use crate::state::HubState;
use crate::work::tasks::{self, SubmitSpec, TaskError};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// The status and the message, for surfaces that render errors their own way.
    pub(crate) fn parts(self) -> (StatusCode, String) {
        (self.status, self.message)
    }

    fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("{field}: {}", message.into()),
            field: Some(field.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let (Some(field), Value::Object(map)) = (self.field, &mut body) {
            map.insert("field".into(), Value::String(field));
        }
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid { field, message } => ApiError::field(&field, message),
            RegistryError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            RegistryError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            RegistryError::Store(_) => {
                tracing::error!(error = %e, "registry store failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

/// [`authorize`] for a read of `subject`.
pub(super) async fn read(
    state: &HubState,
    headers: &HeaderMap,
    subject: Subject<'_>,
    action: &str,
) -> Result<(), ApiError> {
    authorize(state, headers, Access::Read, subject, action)
        .await
        .map(|_| ())
}

/// [`authorize`] for a change to `subject`.
pub(super) async fn write(
    state: &HubState,
    headers: &HeaderMap,
    subject: Subject<'_>,
    action: &str,
) -> Result<(), ApiError> {
    authorize(state, headers, Access::Write, subject, action)
        .await
        .map(|_| ())
}

/// [`write`], with the caller's claims (for a change that records who made it).
pub(super) async fn write_as(
    state: &HubState,
    headers: &HeaderMap,
    subject: Subject<'_>,
    action: &str,
) -> Result<outpost_trust::auth::Claims, ApiError> {
    authorize(state, headers, Access::Write, subject, action).await
}

/// Authenticates the caller without applying a rule yet (for a rule that needs a lookup first).
pub(super) async fn authenticate(
    state: &HubState,
    headers: &HeaderMap,
) -> Result<outpost_trust::auth::Claims, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default());
    access::authenticate(state, header)
        .await
        .map_err(|e| unauthorized(&e))
}

/// [`access::permit`] as a REST refusal (403).
pub(super) fn permit(
    claims: &outpost_trust::auth::Claims,
    access: Access,
    subject: Subject<'_>,
    action: &str,
) -> Result<(), ApiError> {
    access::permit(claims, access, subject, action)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))
}

/// Authenticates the caller and applies [`access::permit`]: 401 when the credential is missing or
/// does not verify, 403 when it may not do this.
async fn authorize(
    state: &HubState,
    headers: &HeaderMap,
    access: Access,
    subject: Subject<'_>,
    action: &str,
) -> Result<outpost_trust::auth::Claims, ApiError> {
    let claims = authenticate(state, headers).await?;
    permit(&claims, access, subject, action)?;
    Ok(claims)
}

/// The router for the REST API, every route documented in its OpenAPI document (served at
/// `/api/openapi.json`, without a credential).
pub fn router(state: Arc<HubState>) -> Router {
    let (routes, doc) = documented_routes().split_for_parts();
    let _ = OPENAPI_JSON.set(doc.to_pretty_json().unwrap_or_default());
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_credential,
        ))
        .with_state(state)
}

/// The REST routes with their documentation.
pub fn documented_routes() -> utoipa_axum::router::OpenApiRouter<Arc<HubState>> {
    use utoipa::OpenApi as _;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(crate::api::openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(list_nodes, create_node))
        .routes(routes!(get_node, update_node, delete_node))
        .routes(routes!(node_health))
        .routes(routes!(list_tasks, submit_task))
        .routes(routes!(get_task))
        .routes(routes!(cancel_task))
        .routes(routes!(list_tools))
        .routes(routes!(get_tool))
        .routes(routes!(list_audit))
        .merge(super::rest_agents::routes())
        .merge(super::rest_actors::routes())
}

/// The OpenAPI document of the REST API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes().into_openapi()
}

/// The document as served, made once.
static OPENAPI_JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", summary = "This document (no credential needed)", responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON.get().cloned().unwrap_or_default(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Liveness (no credential needed)", responses((status = 200, description = "The hub answers", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /metrics`: Prometheus text (a viewer's bearer token or better: the fleet's names and
/// load are in it).
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics (viewer or admin)", responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn metrics(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read(&state, &headers, Subject::Fleet, "read metrics").await?;
    let rows = state
        .store()
        .list_nodes()
        .await
        .map_err(crate::work::tasks::TaskError::from)?;
    let live: Vec<Option<crate::fleet::LiveNode>> =
        rows.iter().map(|row| state.fleet.live(&row.id)).collect();
    let nodes: Vec<crate::telemetry::NodeGauges> = {
        let liveness = state.fleet.liveness();
        rows.iter()
            .zip(&live)
            .map(|(row, entry)| {
                let entry = entry.as_ref();
                let load = entry.and_then(|l| l.load.as_ref());
                let status = liveness
                    .status_with_reason(&row.id)
                    .map_or_else(|| row.status.clone(), |(s, _)| s.as_str().to_string());
                crate::telemetry::NodeGauges {
                    node_id: row.id.clone(),
                    status,
                    disk_used_bytes: load.map_or(0, |l| l.disk_used_bytes),
                    disk_total_bytes: load.map_or(0, |l| l.disk_total_bytes),
                    gpus: entry
                        .and_then(|l| l.gpus.as_ref())
                        .map(|g| {
                            g.devices
                                .iter()
                                .map(|d| crate::telemetry::GpuGauges {
                                    index: d.index,
                                    uuid: d.uuid.clone(),
                                    name: d.name.clone(),
                                    memory_used_mb: d
                                        .memory_total_mb
                                        .saturating_sub(d.memory_free_mb),
                                    memory_total_mb: d.memory_total_mb,
                                    utilization_percent: d.utilization_percent,
                                    temperature_c: d.temperature_c,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect()
    };
    let mut body = state.metrics.render();
    body.push_str(&crate::telemetry::fleet_text(
        &nodes,
        &state.tasks.waiting(),
    ));
    body.push_str(&crate::telemetry::channel_text(
        &state.fleet.heartbeat_channels().counts(),
    ));
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// Refuses an `/api` call without a valid bearer JWT before its body is read (the handlers then
/// apply the whole rule), and records every authenticated write in the audit log with how it
/// ended.
async fn require_credential(
    State(state): State<Arc<HubState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_string();
    let mut caller = None;
    if path.starts_with("/api/") && path != "/api/openapi.json" {
        let header = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .map(|value| value.to_str().unwrap_or_default());
        match access::bearer_token(header).and_then(|token| state.credentials.auth().verify(token))
        {
            Ok(claims) => caller = Some(claims),
            Err(e) => return unauthorized(&e).into_response(),
        }
    }
    let method = request.method().clone();
    let write = !matches!(
        method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| path.clone(), |m| m.as_str().to_string());
    let response = next.run(request).await;
    if write && let Some(claims) = caller {
        let status = response.status().as_u16();
        state.audit(crate::store::AuditRow {
            subject: claims.sub,
            role: claims.role.to_string(),
            surface: "rest".into(),
            action: format!("{method} {route}"),
            target: path,
            outcome: crate::audit::http_outcome(status).into(),
            status: i64::from(status),
            ..crate::store::AuditRow::default()
        });
    }
    response
}

/// The 401 for a credential that is missing or does not verify.
fn unauthorized(e: &AuthError) -> ApiError {
    let hint = if *e == AuthError::Missing {
        " (Authorization: Bearer <token>)"
    } else {
        ""
    };
    ApiError::new(StatusCode::UNAUTHORIZED, format!("{e}{hint}"))
}

const RECORD_FIELDS: [&str; 6] = [
    "id",
    "name",
    "grpc_target",
    "tls_server_name",
    "default_worktree_root",
    "labels",
];

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(map) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body must be a JSON object",
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !RECORD_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            unknown,
            format!(
                "unknown field; expected one of {}",
                RECORD_FIELDS.join(", ")
            ),
        ));
    }
    Ok(map)
}

/// An optional object of string values (`labels`).
fn labels_field(
    map: &Map<String, Value>,
    field: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(labels)) => labels
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(ApiError::field(
                    field,
                    format!("{k:?} must be a string, got {other}"),
                )),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(other) => Err(ApiError::field(
            field,
            format!("must be an object of strings, got {other}"),
        )),
    }
}

fn string_field(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::field(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

#[utoipa::path(get, path = "/api/admin/agent-nodes", tag = "nodes", summary = "Every node with live state", responses((status = 200, body = [NodeJson]), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn list_nodes(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Nodes, "list nodes").await?;
    let nodes = registry::list(&state).await?;
    Ok(axum::Json(Value::Array(
        nodes.iter().map(views::node_json).collect(),
    )))
}

#[utoipa::path(post, path = "/api/admin/agent-nodes", tag = "nodes", summary = "Register a node", request_body = NodeRecordBody, responses((status = 201, body = NodeJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn create_node(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    write(&state, &headers, Subject::Fleet, "register nodes").await?;
    let map = parse_object(&body)?;
    let required = |field: &str| -> Result<String, ApiError> {
        string_field(&map, field)?.ok_or_else(|| ApiError::field(field, "is required"))
    };
    let record = NodeRecord {
        id: required("id")?,
        name: required("name")?,
        grpc_target: required("grpc_target")?,
        tls_server_name: string_field(&map, "tls_server_name")?.unwrap_or_default(),
        default_worktree_root: string_field(&map, "default_worktree_root")?.unwrap_or_default(),
        labels: labels_field(&map, "labels")?
            .unwrap_or_default()
            .into_iter()
            .collect(),
    };
    let view = registry::register(&state, record).await?;
    Ok((StatusCode::CREATED, axum::Json(views::node_json(&view))))
}

#[utoipa::path(get, path = "/api/admin/agent-nodes/{id}", tag = "nodes", summary = "One node", params(("id" = String, Path, description = "Node id")), responses((status = 200, body = NodeJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn get_node(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Node(&id), "read nodes").await?;
    Ok(axum::Json(views::node_json(
        &registry::get(&state, &id).await?,
    )))
}

#[utoipa::path(put, path = "/api/admin/agent-nodes/{id}", tag = "nodes", summary = "Change a node's registry fields", params(("id" = String, Path, description = "Node id")), request_body = NodeRecordBody, responses((status = 200, body = NodeJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn update_node(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Node(&id), "update nodes").await?;
    let map = parse_object(&body)?;
    if let Some(body_id) = string_field(&map, "id")?
        && body_id != id
    {
        return Err(ApiError::field(
            "id",
            format!("{body_id:?} does not match the path's {id:?}; ids cannot change"),
        ));
    }
    let patch = NodePatch {
        name: string_field(&map, "name")?,
        grpc_target: string_field(&map, "grpc_target")?,
        tls_server_name: string_field(&map, "tls_server_name")?,
        default_worktree_root: string_field(&map, "default_worktree_root")?,
        labels: labels_field(&map, "labels")?,
    };
    Ok(axum::Json(views::node_json(
        &registry::update(&state, &id, patch).await?,
    )))
}

#[utoipa::path(delete, path = "/api/admin/agent-nodes/{id}", tag = "nodes", summary = "Delete a node (409 while it has active agents)", params(("id" = String, Path, description = "Node id")), responses((status = 204, description = "Deleted"), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn delete_node(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    write(&state, &headers, Subject::Node(&id), "delete nodes").await?;
    registry::delete(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/admin/agent-nodes/{id}/health", tag = "nodes", summary = "Ping the node over its session", params(("id" = String, Path, description = "Node id")), responses((status = 200, body = HealthJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn node_health(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Node(&id), "read node health").await?;
    Ok(axum::Json(views::health_json(
        &registry::health(&state, &id).await?,
    )))
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        match &e {
            TaskError::Invalid(message) => {
                // Messages start with the field they are about ("requirements: …").
                let field = message
                    .split_once(':')
                    .map(|(f, _)| f)
                    .filter(|f| !f.contains(' '))
                    .map(String::from);
                ApiError {
                    status: StatusCode::BAD_REQUEST,
                    message: message.clone(),
                    field,
                }
            }
            TaskError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            TaskError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            TaskError::Store(_) | TaskError::Internal(_) => {
                tracing::error!(error = %e, "task failure inside the hub");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

fn task_json(task: &crate::store::TaskRow) -> Value {
    views::task_json(&views::task_view(task))
}

#[utoipa::path(post, path = "/api/admin/tasks", tag = "tasks", summary = "Submit a task (200 when the idempotency key names an earlier one)", request_body = crate::work::tasks::SubmitSpec, responses((status = 201, body = TaskJson), (status = 200, body = TaskJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn submit_task(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    write(&state, &headers, Subject::Fleet, "submit tasks").await?;
    let spec: SubmitSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let submitted = tasks::submit(&state, spec).await?;
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(task_json(&submitted.task))))
}

/// `?status=…&limit=…`
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListTasksQuery {
    status: Option<String>,
    limit: Option<u32>,
    before: Option<String>,
}

#[utoipa::path(get, path = "/api/admin/tasks", tag = "tasks", summary = "Tasks, newest first (x-next-before: the next page)", params(ListTasksQuery), responses((status = 200, body = [TaskJson]), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn list_tasks(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    query: Result<Query<ListTasksQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    read(&state, &headers, Subject::Fleet, "list tasks").await?;
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("query: {e}")))?;
    let page = tasks::list(
        &state,
        query.status.as_deref(),
        query.limit.unwrap_or(100),
        query.before.as_deref(),
    )
    .await?;
    let body = axum::Json(Value::Array(page.tasks.iter().map(task_json).collect()));
    // The next page: `?before=<this id>`; absent on the last page.
    Ok(match page.next_before {
        Some(next) => ([("x-next-before", next)], body).into_response(),
        None => body.into_response(),
    })
}

#[utoipa::path(get, path = "/api/admin/tasks/{id}", tag = "tasks", summary = "One task", params(("id" = String, Path, description = "Task id")), responses((status = 200, body = TaskJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn get_task(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Fleet, "read tasks").await?;
    Ok(axum::Json(task_json(&tasks::get(&state, &id).await?)))
}

#[utoipa::path(post, path = "/api/admin/tasks/{id}/cancel", tag = "tasks", summary = "Cancel a task that has not finished", params(("id" = String, Path, description = "Task id")), responses((status = 200, body = TaskJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn cancel_task(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    write(&state, &headers, Subject::Fleet, "cancel tasks").await?;
    Ok(axum::Json(task_json(&tasks::cancel(&state, &id).await?)))
}

#[utoipa::path(get, path = "/api/admin/tools", tag = "tools", summary = "Every pushed tool", responses((status = 200, body = [ToolJson]), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn list_tools(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Fleet, "list tools").await?;
    let rows = crate::work::tools::list(&state).await?;
    Ok(axum::Json(Value::Array(
        rows.iter()
            .map(|t| crate::work::tools::view_json(&crate::work::tools::view(t)))
            .collect(),
    )))
}

#[utoipa::path(get, path = "/api/admin/tools/{name}", tag = "tools", summary = "One tool", params(("name" = String, Path, description = "Tool name")), responses((status = 200, body = ToolJson), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn get_tool(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Fleet, "read tools").await?;
    let tool = crate::work::tools::inspect(&state, &name).await?;
    Ok(axum::Json(crate::work::tools::view_json(
        &crate::work::tools::view(&tool),
    )))
}

/// `?since=1h` (or `since_ms=…`) `&limit=…`
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, default)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only entries from this long ago on (`1h`, `7d`).
    since: Option<String>,
    /// Only entries at or after this Unix time (ms).
    since_ms: Option<i64>,
    /// At most this many (default 100, at most 10,000).
    limit: Option<u32>,
}

/// `GET /api/admin/audit`: the audit log, newest first.
#[utoipa::path(get, path = "/api/admin/audit", tag = "audit", summary = "The audit log, newest first", params(AuditQuery), responses((status = 200, body = [AuditJson]), (status = "4XX", description = "Refused: 400 names the field, 401 no valid token, 403 the role may not, 404 not found, 409 conflict", body = ErrorJson)), security(("bearer" = [])))]
async fn list_audit(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    read(&state, &headers, Subject::Fleet, "read the audit log").await?;
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("query: {e}")))?;
    let since_ms = match (&query.since, query.since_ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("since", "give since or since_ms, not both"));
        }
        (Some(text), None) => {
            let ago = humantime::parse_duration(text)
                .map_err(|e| ApiError::field("since", format!("{e} (try 1h, 30m)")))?;
            state
                .now_ms()
                .saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
        }
        (None, Some(ms)) => ms,
        (None, None) => 0,
    };
    let rows = crate::audit::list(&state, since_ms, query.limit.unwrap_or(100))
        .await
        .map_err(TaskError::from)?;
    Ok(axum::Json(Value::Array(
        rows.iter()
            .map(|row| views::audit_json(&views::audit_view(row)))
            .collect(),
    )))
}
