//! The operator console: server-rendered pages (maud) on the hub's HTTP listener, one small
//! script of our own for live updates (Server-Sent Events), nothing fetched from elsewhere.
//!
//! - Sign-in exchanges an admin or viewer bearer token for a session ([`sessions`]) in an
//!   HttpOnly, SameSite=Strict cookie; a page asked for without one redirects to sign-in.
//! - Every form carries the session's CSRF token and every write is judged by the same rule as
//!   REST and gRPC ([`crate::api::access`]); a viewer sees no write controls and a viewer's post
//!   is refused. A post whose `Origin` is not this hub is refused too.
//! - Pages: the fleet (`nodes`: live rows, filters, sort, pages), one node, joining with a
//!   token and registering a node; agents with a live output pane, tasks and tools (`work`).
//! - Responses carry a strict Content-Security-Policy (no inline script or style), deny framing
//!   and are not cached.

pub mod fleet;
mod layout;
pub mod nodes;
mod reviews;
pub mod sessions;
mod work;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::access::{self, Access, Subject};
use crate::state::HubState;
use sessions::{Session, Sessions};

/// The session cookie.
const SESSION_COOKIE: &str = "outpost_session";
/// The sign-in form's own CSRF cookie (before there is a session).
const SIGN_IN_COOKIE: &str = "outpost_sign_in";

/// What the console needs to know beyond the hub's state.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// The hub's gRPC address as nodes reach it (`https://host:port`), for the join snippet; a
    /// wildcard host is replaced by the host the browser used.
    pub grpc_url: String,
    /// Whether the HTTP listener serves HTTPS (cookies are then `Secure`).
    pub https: bool,
    /// How often live pages are brought up to date.
    pub live_interval: Duration,
}

/// The console's state: the hub, its sessions and settings.
#[derive(Debug)]
pub struct Console {
    hub: Arc<HubState>,
    sessions: Sessions,
    settings: ConsoleSettings,
    fleet: nodes::FleetCache,
    /// Live feeds (fleet rows, agent output) open at once, hub-wide.
    live_feeds: Arc<tokio::sync::Semaphore>,
}

/// Live feeds the console holds open at most; past that a page gets 503 and stays static.
pub const MAX_LIVE_FEEDS: usize = 1024;

/// The console's routes (`/` and `/ui/...`), merged into the hub's HTTP router.
pub fn router(hub: Arc<HubState>, settings: ConsoleSettings) -> Router {
    let console = Arc::new(Console {
        hub,
        sessions: Sessions::default(),
        settings,
        fleet: nodes::FleetCache::default(),
        live_feeds: Arc::new(tokio::sync::Semaphore::new(MAX_LIVE_FEEDS)),
    });
    Router::new()
        .route("/", get(nodes::fleet_page))
        .route("/ui/fleet/events", get(nodes::fleet_events))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/nodes/{id}", get(nodes::node_page))
        .route("/ui/nodes/{id}/health", post(nodes::check_health))
        .route("/ui/nodes/{id}/drain", post(nodes::drain))
        .route("/ui/nodes/{id}/delete", post(nodes::delete))
        .route("/ui/join", get(nodes::join_page).post(nodes::join))
        .route(
            "/ui/register",
            get(nodes::register_page).post(nodes::register),
        )
        .route(
            "/ui/agents",
            get(work::agents_page).post(work::create_agent),
        )
        .route("/ui/agents/{id}", get(work::agent_page))
        .route("/ui/agents/{id}/events", get(work::agent_events))
        .route("/ui/agents/{id}/live", get(work::agent_live_part))
        .route("/ui/agents/{id}/{action}", post(work::agent_action))
        .route("/ui/tasks", get(work::tasks_page))
        .route("/ui/tools", get(work::tools_page))
        .route("/ui/audit", get(work::audit_page))
        .route("/ui/reviews", get(reviews::reviews_page))
        .route("/ui/reviews/{id}", post(reviews::answer))
        .route("/ui/assets/console.js", get(script))
        .route("/ui/assets/console.css", get(style))
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            audit_posts,
        ))
        .layer(axum::middleware::from_fn(page_headers))
        .with_state(console)
}

/// The signed-in operator of a request.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Their session.
    pub session: Session,
}

impl Operator {
    /// Whether they may change things (admin).
    pub fn can_write(&self) -> bool {
        self.session.can_write()
    }

    /// The access rule every surface shares, for this operator: 403 naming the role and
    /// `action` when it says no.
    fn may(&self, access: Access, subject: Subject<'_>, action: &str) -> Result<(), PageError> {
        access::permit(&self.session.claims(), access, subject, action)
            .map_err(|e| PageError::forbidden(e.to_string()))
    }
}

/// Why a console request did not get its page.
#[derive(Debug)]
pub enum PageError {
    /// Not signed in (or the session ended): sign in, then come back to `next`.
    SignIn {
        /// The path to return to.
        next: String,
    },
    /// An answer other than the page, with what to say.
    Status(StatusCode, String),
}

impl PageError {
    fn forbidden(message: impl Into<String>) -> Self {
        Self::Status(StatusCode::FORBIDDEN, message.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn { next } => {
                Redirect::to(&format!("/ui/sign-in?next={}", fleet::encode(&next))).into_response()
            }
            PageError::Status(status, message) => {
                let title = status.canonical_reason().unwrap_or("Error");
                (
                    status,
                    Html(layout::error_page(title, &message).into_string()),
                )
                    .into_response()
            }
        }
    }
}

impl From<crate::api::rest::ApiError> for PageError {
    fn from(e: crate::api::rest::ApiError) -> Self {
        let (status, message) = e.parts();
        PageError::Status(status, message)
    }
}

impl From<crate::fleet::registry::RegistryError> for PageError {
    fn from(e: crate::fleet::registry::RegistryError) -> Self {
        crate::api::rest::ApiError::from(e).into()
    }
}

impl From<crate::work::tasks::TaskError> for PageError {
    fn from(e: crate::work::tasks::TaskError) -> Self {
        crate::api::rest::ApiError::from(e).into()
    }
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

impl Console {
    /// A turn for one more live feed, or 503.
    fn live_feed(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PageError> {
        self.live_feeds.clone().try_acquire_owned().map_err(|_| {
            PageError::Status(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_LIVE_FEEDS} live pages are open on this hub; close some and reload"),
            )
        })
    }

    /// The operator signed in on this request; else sign in first and return to `path`.
    fn operator(&self, headers: &HeaderMap, path: &str) -> Result<Operator, PageError> {
        cookie(headers, SESSION_COOKIE)
            .and_then(|id| self.sessions.get(id, self.hub.now_ms()))
            .map(|session| Operator { session })
            .ok_or_else(|| PageError::SignIn { next: path.into() })
    }

    /// Checks a form post before it changes anything: a session, a same-origin request, the
    /// session's CSRF token, and the access rule for `action` on `subject`.
    fn authorize_post(
        &self,
        headers: &HeaderMap,
        csrf: &str,
        subject: Subject<'_>,
        action: &str,
    ) -> Result<Operator, PageError> {
        let operator = self.check_post(headers, csrf)?;
        operator.may(Access::Write, subject, action)?;
        Ok(operator)
    }

    /// What every post must carry whoever sends it: a session, a same-origin request and the
    /// session's CSRF token.
    fn check_post(&self, headers: &HeaderMap, csrf: &str) -> Result<Operator, PageError> {
        let operator = self.operator(headers, "/")?;
        same_origin(headers)?;
        if !sessions::same_secret(csrf, &operator.session.csrf) {
            return Err(PageError::forbidden(
                "the form's CSRF token does not match this session; reload the page and try again",
            ));
        }
        Ok(operator)
    }

    fn cookie_attributes(&self) -> &'static str {
        if self.settings.https {
            "Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "Path=/; HttpOnly; SameSite=Strict"
        }
    }
}

/// Refuses a post whose `Origin` (or, without one, `Referer`) names another host than the one
/// it was sent to.
fn same_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(from) = from else {
        return Ok(());
    };
    let authority = from
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or_default());
    if !host.is_empty() && authority == host {
        Ok(())
    } else {
        Err(PageError::forbidden(format!(
            "a form posted from {from:?} is not from this console ({host})"
        )))
    }
}

/// Where to go after sign-in: a path on this site, else the fleet.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

/// `?next=/path`
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct NextQuery {
    next: String,
}

async fn sign_in_page(
    State(console): State<Arc<Console>>,
    Query(query): Query<NextQuery>,
) -> Result<Response, PageError> {
    console.sign_in_form(StatusCode::OK, safe_next(&query.next), "")
}

impl Console {
    /// The sign-in page with a fresh nonce for its form (in a short-lived cookie of its own, as
    /// there is no session yet to hold a CSRF token); `error` above the form when not empty.
    fn sign_in_form(
        &self,
        status: StatusCode,
        next: &str,
        error: &str,
    ) -> Result<Response, PageError> {
        let nonce = sessions::random_hex(16).ok_or_else(|| {
            PageError::Status(StatusCode::INTERNAL_SERVER_ERROR, "no randomness".into())
        })?;
        let mut response = (
            status,
            Html(layout::sign_in_page(&nonce, next, error).into_string()),
        )
            .into_response();
        let cookie = format!(
            "{SIGN_IN_COOKIE}={nonce}; Max-Age=900; {}",
            self.cookie_attributes()
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        Ok(response)
    }
}

/// The sign-in form.
#[derive(Debug, serde::Deserialize)]
struct SignInForm {
    token: String,
    csrf: String,
    #[serde(default)]
    next: String,
}

async fn sign_in(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    form: Result<axum::Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let axum::Form(form) = form.map_err(|e| PageError::Status(e.status(), e.body_text()))?;
    same_origin(&headers)?;
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !sessions::same_secret(&form.csrf, expected) {
        return Err(PageError::forbidden(
            "the sign-in form expired or came from elsewhere; open the sign-in page again",
        ));
    }
    let next = safe_next(&form.next);
    let refused = |message: String| console.sign_in_form(StatusCode::UNAUTHORIZED, next, &message);
    let token = form.token.trim();
    let claims = match console.hub.credentials.auth().verify(token) {
        Ok(claims) => claims,
        Err(e) => return refused(format!("that token does not sign in: {e}")),
    };
    let (Some(id), Some(csrf)) = (sessions::random_hex(32), sessions::random_hex(32)) else {
        return Err(PageError::Status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness".into(),
        ));
    };
    let session = match console
        .sessions
        .open(id.clone(), csrf, &claims, console.hub.now_ms())
    {
        Ok(session) => session,
        Err(e) => return refused(e.to_string()),
    };
    tracing::info!(subject = %session.subject, role = %session.role, "console sign-in");
    console.hub.audit(crate::store::AuditRow {
        subject: session.subject.clone(),
        role: session.role.to_string(),
        surface: "console".into(),
        action: "POST /ui/sign-in".into(),
        target: "/ui/sign-in".into(),
        outcome: "ok".into(),
        status: 303,
        ..crate::store::AuditRow::default()
    });
    let max_age = (session.expires_at_ms - console.hub.now_ms()) / 1000;
    let mut response = Redirect::to(next).into_response();
    for value in [
        format!(
            "{SESSION_COOKIE}={id}; Max-Age={max_age}; {}",
            console.cookie_attributes()
        ),
        format!(
            "{SIGN_IN_COOKIE}=; Max-Age=0; {}",
            console.cookie_attributes()
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(response)
}

/// A form that carries only its CSRF token.
#[derive(Debug, serde::Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn sign_out(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    form: Result<axum::Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let axum::Form(form) = form.map_err(|e| PageError::Status(e.status(), e.body_text()))?;
    console.check_post(&headers, &form.csrf)?;
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        console.sessions.close(id);
    }
    let mut response = Redirect::to("/ui/sign-in").into_response();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Max-Age=0; {}",
        console.cookie_attributes()
    )) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Records each post of a signed-in operator (a write, or an attempt at one) in the audit log
/// with how it ended; the sign-in records itself.
async fn audit_posts(
    State(console): State<Arc<Console>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() != axum::http::Method::POST || request.uri().path() == "/ui/sign-in" {
        return next.run(request).await;
    }
    let session = cookie(request.headers(), SESSION_COOKIE)
        .and_then(|id| console.sessions.get(id, console.hub.now_ms()));
    let path = request.uri().path().to_string();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| path.clone(), |m| m.as_str().to_string());
    let response = next.run(request).await;
    if let Some(session) = session {
        let status = response.status().as_u16();
        console.hub.audit(crate::store::AuditRow {
            subject: session.subject,
            role: session.role.to_string(),
            surface: "console".into(),
            action: format!("POST {route}"),
            target: path,
            outcome: crate::audit::http_outcome(status).into(),
            status: i64::from(status),
            ..crate::store::AuditRow::default()
        });
    }
    response
}

/// Headers on every console response: a strict CSP, no framing, no sniffing, no caching of
/// pages (the assets may be cached).
async fn page_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let asset = request.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CACHE_CONTROL,
            if asset {
                "private, max-age=300"
            } else {
                "no-store"
            },
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next("/ui/agents?x=1"), "/ui/agents?x=1");
        for hostile in ["//evil.example/", "https://evil.example/", "/\\evil", ""] {
            assert_eq!(safe_next(hostile), "/", "{hostile}");
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; outpost_session_x=2; outpost_session=abc"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn posts_from_another_origin_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(
            same_origin(&headers).is_ok(),
            "no Origin: a non-browser client"
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&headers).is_ok());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_origin(&headers).is_err());
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&headers).is_err());
    }
}
