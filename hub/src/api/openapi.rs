//! The REST API's OpenAPI 3.1 document, served at `/api/openapi.json`.
//!
//! The router is built from the documented handlers ([`utoipa_axum::router::OpenApiRouter`] in
//! [`crate::api::rest::router`]), so a route cannot be served without being in the document.
//! The JSON views are hand-built ([`crate::api::views`]); their schemas here are checked
//! against what the views produce by the tests below, key by key.
// Schema types describe JSON the views build; they are never constructed.
#![allow(dead_code)]

use std::collections::BTreeMap;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's fixed parts; the paths come from the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Outpost hub REST API",
        description = "The node registry (AgentHub's /api/admin/agent-nodes), tasks, agents, tools and the audit log. Every /api call needs `Authorization: Bearer <JWT>` (outpost token api --role viewer|admin): a viewer reads, an admin writes. Errors are JSON {\"error\", \"field\"?}.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorJson, NodeJson, NodeRecordBody, HealthJson, GpuJson, LoadJson, TaskJson, AgentJson, ToolJson, AuditJson)),
    tags(
        (name = "nodes", description = "The node registry with live state"),
        (name = "tasks", description = "Work placed on nodes by requirement"),
        (name = "agents", description = "Long-running programs bound to nodes"),
        (name = "actors", description = "Mailboxes, teams, time triggers and permission reviews"),
        (name = "tools", description = "WebAssembly tools pushed to the hub"),
        (name = "audit", description = "Every write, who made it and how it ended"),
        (name = "operations", description = "Liveness and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// An error: what went wrong, and the field it is about when one is.
#[derive(ToSchema)]
pub struct ErrorJson {
    error: String,
    field: Option<String>,
}

/// A registry record as sent to register or update a node (the seed's field names).
#[derive(ToSchema)]
pub struct NodeRecordBody {
    /// Required to register; must match the path to update.
    id: Option<String>,
    /// Required to register.
    name: Option<String>,
    /// `https://host:port` where the node serves NodeService (the direct route).
    grpc_target: Option<String>,
    tls_server_name: Option<String>,
    default_worktree_root: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

/// One GPU as last reported.
#[derive(ToSchema)]
pub struct GpuJson {
    index: u32,
    uuid: String,
    name: String,
    memory_total_mb: u64,
    memory_used_mb: u64,
    memory_free_mb: u64,
    utilization_percent: u32,
    temperature_c: u32,
    power_mw: u32,
    compute_capability: String,
    mig_parent_uuid: Option<String>,
    mig_enabled: bool,
}

/// Load from the latest heartbeat.
#[derive(ToSchema)]
pub struct LoadJson {
    cpu_percent: f64,
    memory_used_bytes: u64,
    memory_total_bytes: u64,
    disk_used_bytes: u64,
    disk_total_bytes: u64,
    load_avg_1m: f64,
    running_tasks: u32,
}

/// A node: the registry's fields, then live state.
#[derive(ToSchema)]
pub struct NodeJson {
    id: String,
    name: String,
    grpc_target: String,
    tls_server_name: String,
    default_worktree_root: String,
    labels: BTreeMap<String, String>,
    /// online | offline | draining | fenced
    status: String,
    status_reason: String,
    joined: bool,
    /// RFC 3339
    joined_at: Option<String>,
    last_heartbeat: Option<String>,
    last_heartbeat_ms: i64,
    session_addr: String,
    load: Option<LoadJson>,
    gpus: Vec<GpuJson>,
    /// Hardware, software, labels, sandbox (Landlock ABI and enforcement), GPUs, agent
    /// version, safe paths.
    capabilities: Option<serde_json::Value>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

/// A node's health: a ping over its session now.
#[derive(ToSchema)]
pub struct HealthJson {
    id: String,
    status: String,
    reachable: bool,
    ping_rtt_us: u64,
    session_rtt_us: u64,
    last_heartbeat: Option<String>,
    heartbeats_received: u64,
    /// channel | datagram | stream
    heartbeat_transport: Option<String>,
    session_reconnects: u64,
    /// session | direct
    route: Option<String>,
    route_target: Option<String>,
    load: Option<LoadJson>,
    error: Option<String>,
}

/// A task.
#[derive(ToSchema)]
pub struct TaskJson {
    id: String,
    tool: String,
    command: String,
    workdir: String,
    input: String,
    requirements: crate::work::tasks::RequirementsSpec,
    /// queued | placed | running | succeeded | failed | cancelled
    status: String,
    node: String,
    /// Why it is queued, or how it ended.
    reason: String,
    attempts: u32,
    max_attempts: u32,
    timeout_ms: u64,
    /// GPU indexes on the node.
    devices: Vec<u32>,
    output: String,
    /// `{kind, message}`: the sandbox's typed error (out_of_fuel, timeout, …).
    error: Option<serde_json::Value>,
    idempotency_key: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    started_at_ms: i64,
    finished_at_ms: i64,
    duration_us: u64,
    fuel_used: u64,
    late_results: u32,
}

/// An agent; `placement` is `node:<id>` as the seed's card shows it.
#[derive(ToSchema)]
pub struct AgentJson {
    id: String,
    name: String,
    node: String,
    placement: String,
    /// created | starting | running | exited | stopped | failed | lost
    status: String,
    run: i64,
    exit_code: Option<i64>,
    signal: Option<i64>,
    reason: String,
    landlock: String,
    /// `{kind: native, command, args, env_allow}` or `{kind: wasm, tool}`
    runtime: serde_json::Value,
    workdir: String,
    workdir_mode: String,
    repo: String,
    /// `{count, memory_mb, compute_capability}`
    gpus: serde_json::Value,
    /// `{memory_bytes, cpu_seconds, timeout_ms, max_output_bytes}`
    limits: serde_json::Value,
    /// The actor teams it belongs to.
    teams: Vec<String>,
    /// A message starts it when it is not running.
    wake_on_message: bool,
    created_at: Option<String>,
    updated_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

/// A mailbox message.
#[derive(ToSchema)]
pub struct MessageJson {
    id: i64,
    from: String,
    to: String,
    /// The team it was sent to, if any.
    team: Option<String>,
    /// The JSON sent.
    payload: serde_json::Value,
    idempotency_key: Option<String>,
    /// pending | delivered | acked | dead
    state: String,
    deliveries: i64,
    max_deliveries: i64,
    /// The recipient's run at the last hand-out.
    run_id: String,
    reason: String,
    created_at: Option<String>,
    delivered_at: Option<String>,
    acked_at: Option<String>,
    /// When a delivered message is handed out again unless acked.
    visible_at: Option<String>,
}

/// A permission review.
#[derive(ToSchema)]
pub struct ReviewJson {
    request_id: String,
    actor_id: String,
    title: String,
    detail: String,
    request_key: String,
    /// `[{id, label, persistent}]`
    options: Vec<serde_json::Value>,
    /// pending | answered | cancelled
    state: String,
    option_id: Option<String>,
    /// selected | cancelled (null while pending)
    outcome: Option<String>,
    /// An operator's subject, or `grant:<review id>` when a persistent answer resolved it.
    answered_by: String,
    created_at: Option<String>,
    answered_at: Option<String>,
}

/// A time trigger.
#[derive(ToSchema)]
pub struct TriggerJson {
    id: String,
    actor_id: String,
    /// `cron 0 9 * * 1-5` or `every 5m`
    schedule: String,
    payload: serde_json::Value,
    next_due_at: Option<String>,
    fired: i64,
    last_fired_at: Option<String>,
    created_at: Option<String>,
}

/// A pushed tool.
#[derive(ToSchema)]
pub struct ToolJson {
    name: String,
    /// sha256 of the component, hex
    digest: String,
    size_bytes: u64,
    policy_toml: String,
    version: String,
    description: String,
    input_schema: String,
    /// `ed25519:<base64>`; null when unsigned
    publisher: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

/// One audit entry.
#[derive(ToSchema)]
pub struct AuditJson {
    id: i64,
    at: Option<String>,
    at_ms: i64,
    subject: String,
    role: String,
    /// rest | grpc | console
    surface: String,
    action: String,
    target: String,
    /// ok | refused | failed
    outcome: String,
    /// HTTP status or gRPC code
    status: i64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use outpost_proto::v1::{
        AgentView, AuditEntry, GpuDevice, Load, NodeHealth, NodeRecord, NodeView, TaskView,
        ToolView,
    };
    use serde_json::Value;

    use crate::api::views;

    fn document() -> Value {
        serde_json::to_value(crate::api::rest::openapi()).unwrap()
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn the_schemas_name_exactly_the_keys_the_views_write() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let node = NodeView {
            record: Some(NodeRecord::default()),
            ..NodeView::default()
        };
        let cases = [
            ("NodeJson", views::node_json(&node)),
            ("HealthJson", views::health_json(&NodeHealth::default())),
            ("GpuJson", views::gpu_json(&GpuDevice::default())),
            ("LoadJson", views::load_json(&Load::default())),
            ("TaskJson", views::task_json(&TaskView::default())),
            ("AgentJson", views::agent_json(&AgentView::default())),
            (
                "ToolJson",
                crate::work::tools::view_json(&ToolView::default()),
            ),
            ("AuditJson", views::audit_json(&AuditEntry::default())),
        ];
        for (name, view) in cases {
            let schema = &schemas[name]["properties"];
            assert!(schema.is_object(), "{name} is not in the document");
            assert_eq!(keys(schema), keys(&view), "{name} and its view differ");
        }
    }

    #[test]
    fn it_is_openapi_3_1_and_every_api_call_but_the_document_needs_a_bearer_token() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let paths = doc["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                let secured = operation["security"].is_array();
                let public = ["/healthz", "/api/openapi.json"].contains(&path.as_str());
                assert_eq!(secured, !public, "{method} {path}");
                assert!(
                    operation["summary"].is_string(),
                    "{method} {path} has no summary"
                );
                assert!(operation["tags"].is_array(), "{method} {path} has no tag");
            }
        }
        assert!(operations >= 26, "{operations} operations");
        for path in [
            "/api/admin/agent-nodes",
            "/api/admin/agent-nodes/{id}",
            "/api/admin/agent-nodes/{id}/health",
            "/api/agents",
            "/api/agents/{id}/events",
            "/api/tasks/{id}/events",
            "/api/admin/audit",
            "/metrics",
        ] {
            assert!(
                paths.contains_key(path),
                "{path} (INTERFACE.md) is not documented"
            );
        }
    }
}
