//! `/mcp` on the hub's HTTP listener: the SDK's Streamable HTTP service behind Outpost's own
//! checks, in this order, before any JSON-RPC is read:
//!
//! 1. `Origin`: a request carrying one (a browser) must come from the hub's own origin or one
//!    of `[mcp] allowed_origins`; any other gets 403 with a JSON-RPC error naming it.
//! 2. `Authorization: Bearer <JWT>`, as the REST API: none or a bad one gets 401 with
//!    `WWW-Authenticate: Bearer resource_metadata="…"` (RFC 9728) pointing at
//!    `/.well-known/oauth-protected-resource/mcp`; a node credential gets 403
//!    (`error="insufficient_scope"`).
//! 3. `Host` (the SDK's check, against DNS rebinding): loopback names, `[internal_grpc.security]
//!    server_names` and `[mcp] allowed_hosts`.
//!
//! Bodies above [`MAX_BODY_BYTES`] get 413. Both the current revision (2026-07-28, stateless)
//! and the one before (2025-11-25, with sessions) are served.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_trust::auth::{AuthError, Claims, Role};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio::sync::watch;

use super::server::{ApiSource, FleetMcp};
use super::{Caller, FleetApi, LocalFleet};
use crate::state::HubState;

/// Largest request body: a task input (1 MiB) with room for its JSON-RPC envelope.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Sessions (of the 2025-11-25 revision) held at once; an `initialize` past that gets 503. Idle
/// ones close after five minutes.
pub const MAX_SESSIONS: usize = 4096;
/// Where the protected-resource metadata is.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";

/// How the endpoint is set up (from `[mcp]`, `[server]` and `[internal_grpc.security]`).
#[derive(Debug, Clone, Default)]
pub struct McpSettings {
    /// Serve `/mcp`.
    pub enabled: bool,
    /// The HTTP listener speaks TLS.
    pub https: bool,
    /// `Host` names besides the loopback ones.
    pub allowed_hosts: Vec<String>,
    /// Browser origins besides the hub's own.
    pub allowed_origins: Vec<String>,
}

/// The verified credential of an MCP request, for the handler.
#[derive(Debug, Clone)]
struct McpCredential {
    claims: Claims,
    token: String,
}

struct HubSource {
    state: Arc<HubState>,
    catalog: super::catalog::Catalog,
}

impl ApiSource for HubSource {
    fn api_for(
        &self,
        extensions: &rmcp::model::Extensions,
    ) -> Result<(Arc<dyn FleetApi>, Caller), rmcp::ErrorData> {
        let credential = extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<McpCredential>())
            .ok_or_else(|| {
                rmcp::ErrorData::internal_error("the request carries no credential", None)
            })?;
        let api = LocalFleet::new(self.state.clone(), &credential.token, &credential.claims)
            .map_err(|s| rmcp::ErrorData::invalid_request(s.message().to_string(), None))?;
        Ok((Arc::new(api), Caller::of(&credential.claims)))
    }

    fn tool_changes(&self) -> watch::Receiver<u64> {
        self.state.tools.changes()
    }

    fn catalog(&self) -> &super::catalog::Catalog {
        &self.catalog
    }
}

#[derive(Clone)]
struct Guard {
    state: Arc<HubState>,
    settings: Arc<McpSettings>,
    sessions: Arc<LocalSessionManager>,
}

/// The `/mcp` route and its metadata; empty when `[mcp] enabled = false`.
pub fn router(state: Arc<HubState>, settings: McpSettings) -> Router {
    if !settings.enabled {
        return Router::new();
    }
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1", "[::1]"]
        .into_iter()
        .map(String::from)
        .collect();
    hosts.extend(settings.allowed_hosts.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .with_cancellation_token(state.mcp_shutdown.clone());
    let source: Arc<dyn ApiSource> = Arc::new(HubSource {
        state: state.clone(),
        catalog: super::catalog::Catalog::default(),
    });
    let sessions = Arc::new(LocalSessionManager::default());
    let service = StreamableHttpService::new(
        move || Ok(FleetMcp::new(source.clone())),
        sessions.clone(),
        config,
    );
    let guard = Guard {
        state,
        settings: Arc::new(settings),
        sessions,
    };
    Router::new()
        .nest_service("/mcp", service)
        .route_layer(axum::middleware::from_fn_with_state(guard.clone(), check))
        .route(METADATA_PATH, axum::routing::get(metadata))
        .route(
            "/.well-known/oauth-protected-resource",
            axum::routing::get(metadata),
        )
        .with_state(guard)
}

/// `scheme://host` of the request as the client addressed it.
fn base_url(https: bool, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// RFC 9728 protected-resource metadata for `/mcp`.
async fn metadata(State(guard): State<Guard>, headers: HeaderMap) -> Response {
    let base = base_url(guard.settings.https, &headers);
    let body = json!({
        "resource": format!("{base}/mcp"),
        "authorization_servers": [base],
        "bearer_methods_supported": ["header"],
        "resource_name": "Outpost hub",
        "resource_documentation": format!("{base}/api/openapi.json"),
        "scopes_supported": ["admin", "viewer", "agent"],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Whether an `Origin` value is the hub's own or one allowed by `[mcp] allowed_origins`
/// (`:*` there matches any port).
pub fn origin_allowed(origin: &str, own: &str, allowed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    if origin.eq_ignore_ascii_case(own) {
        return true;
    }
    allowed.iter().any(|entry| {
        let entry = entry.trim().trim_end_matches('/');
        match entry.strip_suffix(":*") {
            Some(prefix) => {
                origin
                    .get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
                    && port_or_nothing(&origin[prefix.len()..])
            }
            None => origin.eq_ignore_ascii_case(entry),
        }
    })
}

/// Whether what follows a host is nothing or `:PORT`.
fn port_or_nothing(rest: &str) -> bool {
    rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

fn rpc_error(status: StatusCode, message: &str, challenge: Option<String>) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "error": {"code": -32600, "message": message},
    });
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(challenge) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// Quotes a value for a `WWW-Authenticate` parameter.
fn quoted(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .map(|c| if c == '"' { '\'' } else { c })
        .collect();
    format!("\"{clean}\"")
}

async fn check(
    State(guard): State<Guard>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let base = base_url(guard.settings.https, request.headers());
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        if !origin_allowed(origin, &base, &guard.settings.allowed_origins) {
            tracing::info!(origin, "MCP request from a foreign origin refused");
            return rpc_error(
                StatusCode::FORBIDDEN,
                &format!(
                    "origin {origin:?} may not call this hub's MCP endpoint (allow it in [mcp] allowed_origins)"
                ),
                None,
            );
        }
    }
    let metadata = format!(
        "resource_metadata={}",
        quoted(&format!("{base}{METADATA_PATH}"))
    );
    let header_value = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    let token = match crate::api::access::bearer_token(header_value) {
        Ok(token) => token.to_string(),
        Err(e) => {
            return rpc_error(
                StatusCode::UNAUTHORIZED,
                &format!("{e}: send Authorization: Bearer <token> (outpost token api)"),
                Some(format!("Bearer realm=\"outpost\", {metadata}")),
            );
        }
    };
    let claims = match crate::api::access::authenticate(&guard.state, header_value).await {
        Ok(claims) => claims,
        Err(e) => {
            let error = match e {
                AuthError::Missing => String::new(),
                _ => format!(
                    ", error=\"invalid_token\", error_description={}",
                    quoted(&e.to_string())
                ),
            };
            return rpc_error(
                StatusCode::UNAUTHORIZED,
                &e.to_string(),
                Some(format!("Bearer realm=\"outpost\"{error}, {metadata}")),
            );
        }
    };
    if matches!(claims.role, Role::Node | Role::Actor) {
        return rpc_error(
            StatusCode::FORBIDDEN,
            &format!(
                "a {} credential is not for MCP; MCP takes an admin, viewer or agent token",
                claims.role
            ),
            Some(format!(
                "Bearer realm=\"outpost\", error=\"insufficient_scope\", {metadata}"
            )),
        );
    }
    request
        .extensions_mut()
        .insert(McpCredential { claims, token });
    if request.method() == axum::http::Method::POST {
        // Read here, within the limit, so a body too large or not JSON gets JSON-RPC's answer.
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return rpc_error_coded(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    -32600,
                    &format!("the request body is larger than the {MAX_BODY_BYTES} bytes allowed"),
                );
            }
        };
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return rpc_error_coded(
                StatusCode::BAD_REQUEST,
                -32700,
                &format!("parse error: the body is not JSON ({e})"),
            );
        }
        #[derive(serde::Deserialize)]
        struct Envelope {
            method: Option<String>,
        }
        let initialize = serde_json::from_slice::<Envelope>(&bytes)
            .ok()
            .and_then(|e| e.method)
            .is_some_and(|m| m == "initialize");
        if initialize && guard.sessions.sessions.read().await.len() >= MAX_SESSIONS {
            return rpc_error_coded(
                StatusCode::SERVICE_UNAVAILABLE,
                -32603,
                &format!("this hub holds {MAX_SESSIONS} MCP sessions already; try again later"),
            );
        }
        request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    next.run(request).await
}

fn rpc_error_coded(status: StatusCode, code: i64, message: &str) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_the_hubs_own_or_allowed() {
        let own = "http://127.0.0.1:8080";
        let allowed = vec![
            "https://app.example:443".to_string(),
            "http://localhost:*".to_string(),
        ];
        for ok in [
            "http://127.0.0.1:8080",
            "https://app.example:443",
            "http://localhost:3000",
            "http://localhost",
        ] {
            assert!(origin_allowed(ok, own, &allowed), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:9999",
            "null",
            "http://localhost.evil:80",
            "http://localhostx:1",
            "https://app.example:444",
        ] {
            assert!(!origin_allowed(bad, own, &allowed), "{bad}");
        }
    }

    #[test]
    fn challenge_values_stay_one_quoted_string() {
        assert_eq!(quoted("a \"b\"\nc"), "\"a 'b'c\"");
    }
}
