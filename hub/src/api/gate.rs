//! What a call must carry before the hub reads its body.
//!
//! tonic decodes a request's whole message before a handler runs, so a handler's checks come
//! after the bytes are in memory (up to 33 MiB for a tool push). The gate sits in front of every
//! gRPC service and answers from the headers alone: calls that need a credential (all but the
//! join, health and reflection) are refused without a valid bearer JWT — and in mTLS mode
//! without a client certificate — and a tool push needs the admin role. Nothing is read from a
//! refused call's body. The handlers still apply the whole rule ([`crate::api::access`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use outpost_trust::auth::Role;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::state::HubState;

/// Services anyone may call: the join (its proof is the credential), health and reflection.
const OPEN_SERVICES: [&str; 4] = [
    "/outpost.v1.JoinService/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Calls whose bodies are large enough that only an admin may send one.
const ADMIN_ONLY: [&str; 1] = ["/outpost.v1.ToolService/PushTool"];

/// Whether a call to `path` with these headers may go on to its handler.
pub fn admit(
    state: &HubState,
    path: &str,
    headers: &http::HeaderMap,
    has_client_cert: bool,
) -> Result<(), Status> {
    if OPEN_SERVICES.iter().any(|open| path.starts_with(open)) {
        return Ok(());
    }
    if state.credentials.mtls() && !has_client_cert {
        return Err(Status::unauthenticated(
            "mTLS mode: this call needs a client certificate signed by the hub CA (cert_dir/client.pem)",
        ));
    }
    let header = headers
        .get(http::header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default());
    let token = crate::api::access::bearer_token(header)
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let claims = state
        .credentials
        .auth()
        .verify(token)
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    if ADMIN_ONLY.contains(&path) && claims.role != Role::Admin {
        return Err(Status::permission_denied(format!(
            "role {} may not call {path}",
            claims.role
        )));
    }
    Ok(())
}

/// Records a gRPC write in the audit log.
fn audit_call(
    state: &HubState,
    claims: outpost_trust::auth::Claims,
    path: &str,
    target: &str,
    code: i64,
) {
    state.audit(crate::store::AuditRow {
        subject: claims.sub,
        role: claims.role.to_string(),
        surface: "grpc".into(),
        action: path.to_string(),
        target: target.to_string(),
        outcome: crate::audit::grpc_outcome(code).into(),
        status: code,
        ..crate::store::AuditRow::default()
    });
}

/// The [`tower::Layer`] that puts a [`Gate`] in front of the gRPC services.
#[derive(Debug, Clone)]
pub struct GateLayer {
    state: Arc<HubState>,
}

impl GateLayer {
    /// A gate judging by `state`'s credentials.
    pub fn new(state: Arc<HubState>) -> Self {
        Self { state }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            state: self.state.clone(),
        }
    }
}

/// Answers refused calls from their headers; passes the rest on.
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    state: Arc<HubState>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Gate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let has_client_cert = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .is_some_and(|certs| !certs.is_empty());
        let started = std::time::Instant::now();
        let path = request.uri().path().to_string();
        // A write by an authenticated caller is recorded with how it ended.
        let writer = crate::audit::is_grpc_write(&path)
            .then(|| {
                let header = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|value| value.to_str().unwrap_or_default());
                crate::api::access::bearer_token(header)
                    .ok()
                    .and_then(|token| self.state.credentials.auth().verify(token).ok())
            })
            .flatten();
        match admit(
            &self.state,
            request.uri().path(),
            request.headers(),
            has_client_cert,
        ) {
            Ok(()) => {
                let state = self.state.clone();
                let call = self.inner.call(request);
                Box::pin(async move {
                    let (answer, target) = crate::audit::hearing_target(call).await;
                    state.metrics.grpc_call(&path, false, started.elapsed());
                    if let (Some(claims), Ok(response)) = (writer, &answer) {
                        // A unary call that fails answers "trailers-only": the code is in the
                        // headers; without one the call succeeded.
                        let code = response
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i64>().ok())
                            .unwrap_or(0);
                        audit_call(&state, claims, &path, &target, code);
                    }
                    answer
                })
            }
            Err(status) => {
                self.state.metrics.grpc_call(&path, true, started.elapsed());
                if let Some(claims) = writer {
                    audit_call(
                        &self.state,
                        claims,
                        &path,
                        "",
                        i64::from(i32::from(status.code())),
                    );
                }
                tracing::debug!(
                    path = request.uri().path(),
                    reason = status.message(),
                    "call refused at the gate"
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
