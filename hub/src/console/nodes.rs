//! The fleet pages: the fleet (live rows over SSE), one node with its actions, joining a node
//! with a one-shot token, and registering a node.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use outpost_proto::v1::{NodeHealth, NodeRecord, NodeView};

use super::fleet::{self, FleetQuery};
use super::layout::{self, Section};
use super::{Console, Operator, PageError};
use crate::api::access::Subject;
use crate::fleet::registry::{self, RegistryError};

const STATUSES: [&str; 4] = ["online", "offline", "draining", "fenced"];
const SORTS: [(&str, &str); 5] = [
    ("", "id"),
    ("name", "name"),
    ("status", "status"),
    ("gpu_free", "most free GPU memory"),
    ("cpu", "busiest CPU"),
];

fn node_id(view: &NodeView) -> &str {
    view.record.as_ref().map_or("", |r| r.id.as_str())
}

fn node_href(id: &str) -> String {
    format!("/ui/nodes/{}", fleet::encode(id))
}

fn path_of(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string())
}

/// One row of the fleet table.
fn fleet_row(view: &NodeView) -> Markup {
    let id = node_id(view);
    let name = view.record.as_ref().map_or("", |r| r.name.as_str());
    html! {
        tr id={ "node-" (id) } {
            td {
                a href=(node_href(id)) { (id) }
                @if name != id { br; small { (name) } }
            }
            td title=(view.status_reason) { (layout::status(&view.status)) }
            td {
                @if let Some(load) = view.load.as_ref() {
                    (format!("{:.0}", load.cpu_percent)) "% CPU · "
                    (layout::bytes(load.memory_used_bytes)) " / " (layout::bytes(load.memory_total_bytes))
                    " · " (load.running_tasks) " running"
                } @else { "-" }
            }
            td {
                @for device in fleet::gpus(view) { (layout::gpu(device)) }
                @if fleet::gpus(view).is_empty() { span.muted { "none" } }
            }
            td { (layout::time(view.last_heartbeat_ms)) }
        }
    }
}

fn fleet_rows(page: &fleet::FleetPage<'_>) -> Markup {
    html! {
        @for view in &page.rows { (fleet_row(view)) }
        @if page.rows.is_empty() {
            tr { td colspan="5" .muted { "No node matches." } }
        }
    }
}

fn summary(page: &fleet::FleetPage<'_>) -> String {
    format!(
        "{} of {} nodes · page {} of {}",
        page.matching, page.total, page.page, page.pages
    )
}

/// `GET /`: the fleet.
pub(super) async fn fleet_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<FleetQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, &path_of(&uri))?;
    let Query(query) = query.map_err(|e| PageError::Status(e.status(), e.body_text()))?;
    // The page the live feeds share (from a snapshot at most half an interval old; they bring
    // it up to date within one interval).
    let page = console.fleet_page(&query).await?;
    let live = format!("/ui/fleet/events?{}", query.to_query(page.page));
    let body = html! {
        form.filters method="get" action="/" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[query.status == s] { (s) } }
                }
            }
            label { "Label " input name="label" value=(query.label) placeholder="zone=eu"; }
            label { "GPU model " input name="gpu" value=(query.gpu) placeholder="A100"; }
            label { "Sort by "
                select name="sort" {
                    @for (value, text) in SORTS { option value=(value) selected[query.sort == value] { (text) } }
                }
            }
            button type="submit" { "Apply" }
        }
        p #fleet-summary .summary { (page.summary) }
        table #fleet data-live=(live) {
            thead { tr { th { "Node" } th { "Status" } th { "Load" } th { "GPUs" } th { "Last heartbeat" } } }
            tbody #fleet-rows { (maud::PreEscaped(&page.body)) }
        }
        nav.pager {
            @if page.page > 1 { a href={ "/?" (query.to_query(page.page - 1)) } { "← previous" } }
            @if page.page < page.pages { a href={ "/?" (query.to_query(page.page + 1)) } { "next →" } }
        }
    };
    Ok(Html(layout::page(&operator, Section::Fleet, "Fleet", body).into_string()).into_response())
}

/// One page of the fleet as rendered for one selection of one snapshot: shared by every
/// subscriber with the same query.
#[derive(Debug)]
pub struct RenderedPage {
    /// The snapshot it was made from.
    generation: u64,
    /// The node ids on it, in order.
    order: Vec<String>,
    /// Each row's HTML, by node id.
    rows: HashMap<String, Arc<str>>,
    /// The whole table body.
    body: String,
    /// "N of M nodes · page P of Q".
    summary: String,
    /// This page (from 1) and how many there are.
    page: usize,
    /// Pages of the selection.
    pages: usize,
}

/// The fleet as the live pages see it: one registry read per half interval, whatever the number
/// of subscribers, and one selection and render per query and snapshot.
#[derive(Debug, Default)]
pub struct FleetCache {
    snapshot: tokio::sync::Mutex<Option<Snapshot>>,
    pages: parking_lot::Mutex<HashMap<String, Arc<RenderedPage>>>,
}

/// When a snapshot was read, its generation, and the views.
type Snapshot = (tokio::time::Instant, u64, Arc<Vec<NodeView>>);

/// Queries whose rendered page is kept at once (past that the cache starts again).
const MAX_CACHED_QUERIES: usize = 256;

impl Console {
    /// The registry with live state, at most half an interval old.
    async fn fleet_snapshot(&self) -> Result<(u64, Arc<Vec<NodeView>>), RegistryError> {
        let mut snapshot = self.fleet.snapshot.lock().await;
        let fresh_for = self.settings.live_interval / 2;
        if let Some((at, generation, views)) = snapshot.as_ref()
            && at.elapsed() < fresh_for
        {
            return Ok((*generation, views.clone()));
        }
        let views = Arc::new(registry::list(&self.hub).await?);
        let generation = snapshot.as_ref().map_or(1, |(_, g, _)| g + 1);
        *snapshot = Some((tokio::time::Instant::now(), generation, views.clone()));
        Ok((generation, views))
    }

    /// The page `query` selects from the current snapshot, rendered once for everyone.
    async fn fleet_page(&self, query: &FleetQuery) -> Result<Arc<RenderedPage>, RegistryError> {
        let (generation, views) = self.fleet_snapshot().await?;
        let key = query.to_query(query.page.max(1));
        if let Some(page) = self.fleet.pages.lock().get(&key)
            && page.generation == generation
        {
            return Ok(page.clone());
        }
        let page = Arc::new(render_page(generation, &views, query));
        let mut pages = self.fleet.pages.lock();
        if pages.len() >= MAX_CACHED_QUERIES {
            pages.clear();
        }
        pages.insert(key, page.clone());
        Ok(page)
    }
}

/// Selects and renders one page of `views`.
pub fn render_page(generation: u64, views: &[NodeView], query: &FleetQuery) -> RenderedPage {
    let page = fleet::select(views, query);
    RenderedPage {
        generation,
        order: page.rows.iter().map(|v| node_id(v).to_string()).collect(),
        rows: page
            .rows
            .iter()
            .map(|v| {
                (
                    node_id(v).to_string(),
                    Arc::from(fleet_row(v).into_string()),
                )
            })
            .collect(),
        body: fleet_rows(&page).into_string(),
        summary: summary(&page),
        page: page.page,
        pages: page.pages,
    }
}

/// What brings a subscriber that was sent `last` up to date with `now`: the whole body when
/// the rows on the page changed, else each row whose HTML changed (empty: nothing did).
pub fn page_events(last: Option<&RenderedPage>, now: &RenderedPage) -> Vec<Event> {
    let Some(last) = last.filter(|last| last.order == now.order) else {
        let data = serde_json::json!({ "html": now.body, "summary": now.summary });
        return vec![Event::default().event("rows").data(data.to_string())];
    };
    now.order
        .iter()
        .filter(|id| last.rows.get(*id) != now.rows.get(*id))
        .map(|id| {
            let data = serde_json::json!({
                "id": format!("node-{id}"),
                "html": now.rows.get(id).map_or("", |h| h.as_ref()),
            });
            Event::default().event("row").data(data.to_string())
        })
        .collect()
}

/// What one fleet subscriber has been sent.
struct FleetFeed {
    console: Arc<Console>,
    session_id: String,
    query: FleetQuery,
    sent: Option<Arc<RenderedPage>>,
    /// Held while the feed is open.
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl FleetFeed {
    /// The events that bring the subscriber's page up to date. `None` when the session ended.
    async fn next_events(&mut self) -> Option<Vec<Event>> {
        loop {
            if self.sent.is_some() {
                tokio::time::sleep(self.console.settings.live_interval).await;
            }
            self.console
                .sessions
                .get(&self.session_id, self.console.hub.now_ms())?;
            let Ok(page) = self.console.fleet_page(&self.query).await else {
                tokio::time::sleep(self.console.settings.live_interval).await;
                continue;
            };
            let events = page_events(self.sent.as_deref(), &page);
            self.sent = Some(page);
            if !events.is_empty() {
                return Some(events);
            }
        }
    }
}

/// `GET /ui/fleet/events?…`: the fleet page's rows as they change (SSE), until the session ends.
pub(super) async fn fleet_events(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    query: Result<Query<FleetQuery>, QueryRejection>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, PageError> {
    console.operator(&headers, "/")?;
    let Query(query) = query.map_err(|e| PageError::Status(e.status(), e.body_text()))?;
    let turn = console.live_feed()?;
    let session_id = super::cookie(&headers, super::SESSION_COOKIE)
        .unwrap_or_default()
        .to_string();
    let feed = FleetFeed {
        console,
        session_id,
        query,
        sent: None,
        _turn: turn,
    };
    use futures::StreamExt as _;
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let events = feed.next_events().await?;
        Some((futures::stream::iter(events.into_iter().map(Ok)), feed))
    })
    .flatten();
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What the node page shows beside the node itself.
#[derive(Default)]
struct NodeNotes {
    health: Option<NodeHealth>,
    error: Option<String>,
}

async fn render_node(
    console: &Console,
    operator: &Operator,
    id: &str,
    notes: NodeNotes,
) -> Result<Markup, PageError> {
    let view = registry::get(&console.hub, id).await?;
    let agents = crate::work::agents::list(&console.hub, Some(id)).await?;
    let recent = crate::work::tasks::list(&console.hub, None, 200, None).await?;
    let tasks: Vec<_> = recent
        .tasks
        .iter()
        .filter(|t| t.node_id == id)
        .take(20)
        .collect();
    let record = view.record.clone().unwrap_or_default();
    let caps = view.capabilities.clone().unwrap_or_default();
    let base = node_href(id);
    let draining = view.status == "draining";
    let body = html! {
        @if let Some(error) = &notes.error { p.error role="alert" { (error) } }
        @if let Some(health) = &notes.health {
            section.health {
                h2 { "Health" }
                @if health.reachable {
                    p.ok { "Reachable: answered a ping in " (health.ping_rtt_us) " µs over " (health.route) "." }
                } @else {
                    p.error { "Not reachable: " (health.error) }
                }
                p { (health.heartbeats_received) " heartbeats received · " (health.session_reconnects) " reconnects · last " (layout::time(health.last_heartbeat_ms)) }
            }
        }
        dl.facts {
            dt { "Status" } dd { (layout::status(&view.status)) " " span.muted { (view.status_reason) } }
            dt { "Name" } dd { (record.name) }
            dt { "Session from" } dd { (view.session_addr) }
            dt { "Last heartbeat" } dd { (layout::time(view.last_heartbeat_ms)) }
            dt { "Joined" } dd { (layout::time(view.joined_at_ms)) }
            dt { "gRPC target" } dd { (record.grpc_target) }
            dt { "Labels" } dd { @for (k, v) in &record.labels { code { (k) "=" (v) } " " } }
            dt { "Agent version" } dd { (caps.agent_version) }
        }
        @if operator.can_write() {
            div.actions {
                (layout::button_form(operator, &format!("{base}/health"), "Check health", ""))
                form.inline method="post" action={ (base) "/drain" } {
                    (layout::csrf(operator))
                    input type="hidden" name="draining" value=(if draining { "false" } else { "true" });
                    button type="submit" { (if draining { "Stop draining" } else { "Drain" }) }
                }
                (layout::button_form(operator, &format!("{base}/delete"), "Delete", "danger"))
            }
        }
        h2 { "GPUs" }
        @if let Some(gpus) = caps.gpus.as_ref() {
            p.muted { "probe " (gpus.probe) " · driver " (gpus.driver_version) " " (gpus.unavailable_reason) @if gpus.fenced { " · fenced for GPU work" } }
            @for device in &gpus.devices { (layout::gpu(device)) }
        } @else { p.muted { "none reported" } }
        h2 { "Capabilities" }
        dl.facts {
            @if let Some(hw) = caps.hardware.as_ref() {
                dt { "Hardware" } dd { (hw.cpu_cores) " cores · " (layout::bytes(hw.memory_total_bytes)) " · " (hw.os) "/" (hw.arch) " · " (hw.hostname) }
                dt { "Tags" } dd { (hw.tags.join(", ")) }
            }
            @if let Some(sandbox) = caps.sandbox.as_ref() {
                dt { "Sandbox" } dd {
                    "WASM " (if sandbox.wasm { "yes" } else { "no" })
                    " · native " (if sandbox.native { "yes" } else { "no" })
                    " · Landlock ABI " (sandbox.landlock_abi) " (" (sandbox.landlock_enforcement) ")"
                    @if sandbox.require_landlock { " · Landlock required" }
                }
                @if !sandbox.detail.is_empty() { dt { "Sandbox detail" } dd { (sandbox.detail) } }
            }
            dt { "Safe paths" } dd { @for p in &caps.safe_paths { code { (p) } " " } }
            dt { "Worktree root" } dd { (caps.default_worktree_root) }
            dt { "Direct route" } dd { (caps.direct_route) }
            dt { "Software" } dd { @for s in &caps.software { (s.name) " " (s.version) "; " } }
        }
        h2 { "Agents" }
        (super::work::agent_table(&agents))
        h2 { "Recent tasks" }
        (super::work::task_table(&tasks))
    };
    Ok(layout::page(
        operator,
        Section::Fleet,
        &format!("Node {id}"),
        body,
    ))
}

/// `GET /ui/nodes/{id}`
pub(super) async fn node_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, &path_of(&uri))?;
    let page = render_node(&console, &operator, &id, NodeNotes::default()).await?;
    Ok(Html(page.into_string()).into_response())
}

/// A form with only its CSRF token.
#[derive(Debug, serde::Deserialize)]
pub(super) struct CsrfOnly {
    csrf: String,
}

fn form<T>(form: Result<axum::Form<T>, FormRejection>) -> Result<T, PageError> {
    form.map(|axum::Form(f)| f)
        .map_err(|e| PageError::Status(e.status(), e.body_text()))
}

/// `POST /ui/nodes/{id}/health`: pings the node and shows the answer on its page.
pub(super) async fn check_health(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<axum::Form<CsrfOnly>, FormRejection>,
) -> Result<Response, PageError> {
    let body = form(body)?;
    let operator = console.authorize_post(
        &headers,
        &body.csrf,
        Subject::Node(&id),
        "check node health",
    )?;
    let health = registry::health(&console.hub, &id).await?;
    let notes = NodeNotes {
        health: Some(health),
        error: None,
    };
    let page = render_node(&console, &operator, &id, notes).await?;
    Ok(Html(page.into_string()).into_response())
}

/// The drain form.
#[derive(Debug, serde::Deserialize)]
pub(super) struct DrainForm {
    csrf: String,
    draining: bool,
}

/// `POST /ui/nodes/{id}/drain`
pub(super) async fn drain(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<axum::Form<DrainForm>, FormRejection>,
) -> Result<Response, PageError> {
    let body = form(body)?;
    console.authorize_post(&headers, &body.csrf, Subject::Node(&id), "drain nodes")?;
    registry::drain(&console.hub, &id, body.draining).await?;
    Ok(Redirect::to(&node_href(&id)).into_response())
}

/// `POST /ui/nodes/{id}/delete`: the fleet when done; the node's page with the reason when
/// refused (agents still active).
pub(super) async fn delete(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<axum::Form<CsrfOnly>, FormRejection>,
) -> Result<Response, PageError> {
    let body = form(body)?;
    let operator =
        console.authorize_post(&headers, &body.csrf, Subject::Node(&id), "delete nodes")?;
    match registry::delete(&console.hub, &id).await {
        Ok(()) => Ok(Redirect::to("/").into_response()),
        Err(e @ RegistryError::Conflict(_)) => {
            let notes = NodeNotes {
                health: None,
                error: Some(format!("Not deleted: {e}")),
            };
            let page = render_node(&console, &operator, &id, notes).await?;
            Ok((StatusCode::CONFLICT, Html(page.into_string())).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

const TTLS: [(&str, u64); 4] = [("15m", 900), ("1h", 3600), ("24h", 86_400), ("7d", 604_800)];

fn join_form(operator: &Operator, node_id: &str, error: Option<&str>) -> Markup {
    html! {
        p { "A one-shot token lets one node join this hub. It is shown once." }
        @if let Some(error) = error { p.error role="alert" { (error) } }
        form method="post" action="/ui/join" {
            (layout::csrf(operator))
            label for="node_id" { "Node id (for the config snippet; optional)" }
            input #node_id name="node_id" value=(node_id) placeholder="gpu-01";
            label for="ttl" { "Valid for" }
            select #ttl name="ttl" {
                @for (text, _) in TTLS { option value=(text) selected[text == "1h"] { (text) } }
            }
            label for="uses" { "Joins it allows" }
            input #uses name="uses" type="number" min="1" max="100" value="1";
            button type="submit" { "Create token" }
        }
    }
}

fn admin_only(operator: &Operator, action: &str) -> Result<(), PageError> {
    operator.may(crate::api::access::Access::Write, Subject::Fleet, action)
}

/// `GET /ui/join` (admin)
pub(super) async fn join_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, "/ui/join")?;
    admin_only(&operator, "create join tokens")?;
    let page = layout::page(
        &operator,
        Section::Join,
        "Join node with token",
        join_form(&operator, "", None),
    );
    Ok(Html(page.into_string()).into_response())
}

/// The join form.
#[derive(Debug, serde::Deserialize)]
pub(super) struct JoinForm {
    csrf: String,
    #[serde(default)]
    node_id: String,
    ttl: String,
    uses: u32,
}

/// The node config that joins this hub with `token`.
pub fn node_snippet(grpc_url: &str, node_id: &str, token: &str) -> String {
    let node_id = if node_id.is_empty() {
        "my-node"
    } else {
        node_id
    };
    format!(
        "[server]\nrole = \"node\"\nnode_id = \"{node_id}\"\ndata_dir = \"/var/lib/outpost\"\n\n\
         [internal_grpc.bootstrap]\ntoken = \"{token}\"\n\n\
         [node]\nhub = \"{grpc_url}\"\nca_file = \"/etc/outpost/ca.pem\"\n"
    )
}

/// The hub's gRPC URL as this browser's host reaches it (a wildcard listen address is replaced
/// by the host the page was asked from).
fn reachable_grpc_url(configured: &str, headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .unwrap_or_default();
    for wildcard in ["0.0.0.0", "[::]"] {
        if configured.contains(wildcard) && !host.is_empty() {
            return configured.replacen(wildcard, host, 1);
        }
    }
    configured.to_string()
}

/// `POST /ui/join`: creates the token and shows it once with the node's config.
pub(super) async fn join(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Result<axum::Form<JoinForm>, FormRejection>,
) -> Result<Response, PageError> {
    let body = form(body)?;
    let operator =
        console.authorize_post(&headers, &body.csrf, Subject::Fleet, "create join tokens")?;
    let node_id = body.node_id.trim();
    let invalid = if !node_id.is_empty() {
        console.hub.credentials.check_node_id(node_id).err()
    } else {
        None
    };
    let ttl_s = TTLS
        .iter()
        .find(|(text, _)| *text == body.ttl)
        .map(|(_, s)| *s);
    let problem = if let Some(e) = invalid {
        Some(format!("node id: {e}"))
    } else if ttl_s.is_none() {
        Some(format!(
            "valid for: {:?} is not one of the choices",
            body.ttl
        ))
    } else if !(1..=100).contains(&body.uses) {
        Some("joins: between 1 and 100".to_string())
    } else {
        None
    };
    if let Some(problem) = problem {
        let page = layout::page(
            &operator,
            Section::Join,
            "Join node with token",
            join_form(&operator, node_id, Some(&problem)),
        );
        return Ok((StatusCode::BAD_REQUEST, Html(page.into_string())).into_response());
    }
    let created =
        crate::credentials::join::create_token(&console.hub, ttl_s.unwrap_or(3600), body.uses)
            .await
            .map_err(|e| PageError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(subject = %operator.session.subject, token_id = %created.token_id, "join token created in the console");
    let grpc_url = reachable_grpc_url(&console.settings.grpc_url, &headers);
    let snippet = node_snippet(&grpc_url, node_id, &created.token);
    let body = html! {
        p.ok { "Token created: valid until " (layout::time(created.expires_at_ms)) " for " (created.uses) " join(s). It is not shown again." }
        label for="join-token" { "Token" }
        input #join-token readonly value=(created.token);
        h2 { "1. Save the hub's CA certificate on the node as /etc/outpost/ca.pem" }
        pre #join-ca { (console.hub.credentials.ca_pem()) }
        h2 { "2. Save this as /etc/outpost/node.toml" }
        pre #join-config { (snippet) }
        h2 { "3. Start the node" }
        pre #join-command { "outpost node --config /etc/outpost/node.toml" }
        p { "It appears on the " a href="/" { "fleet page" } " as soon as it has joined." }
    };
    let page = layout::page(&operator, Section::Join, "Join node with token", body);
    Ok(Html(page.into_string()).into_response())
}

/// The register form's fields, as typed.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct RegisterForm {
    csrf: String,
    id: String,
    name: String,
    grpc_target: String,
    tls_server_name: String,
    default_worktree_root: String,
    labels: String,
}

fn register_form(operator: &Operator, typed: &RegisterForm, error: Option<(&str, &str)>) -> Markup {
    let field_error = |field: &str| {
        error
            .filter(|(f, _)| *f == field)
            .map(|(_, m)| m.to_string())
    };
    let fields = [
        ("id", "Node id", typed.id.as_str(), true, "gpu-01"),
        ("name", "Name", typed.name.as_str(), true, "GPU box 1"),
        (
            "grpc_target",
            "gRPC target",
            typed.grpc_target.as_str(),
            false,
            "https://10.0.0.5:50052",
        ),
        (
            "tls_server_name",
            "TLS server name",
            typed.tls_server_name.as_str(),
            false,
            "gpu-01.internal",
        ),
        (
            "default_worktree_root",
            "Default worktree root",
            typed.default_worktree_root.as_str(),
            false,
            "/srv/worktrees",
        ),
    ];
    html! {
        p { "Registers a node before it joins, with the fields the seed's registry has." }
        @if let Some((field, message)) = error.filter(|(f, _)| !fields.iter().any(|(n, ..)| n == f) && *f != "labels") {
            p.error role="alert" { (field) ": " (message) }
        }
        form method="post" action="/ui/register" novalidate {
            (layout::csrf(operator))
            @for (field, label, value, required, example) in fields {
                label for=(field) { (label) @if required { " *" } }
                input id=(field) name=(field) value=(value) placeholder=(example)
                    aria-invalid=[field_error(field).map(|_| "true")];
                @if let Some(message) = field_error(field) {
                    p.field-error id={ (field) "-error" } { (message) }
                }
            }
            label for="labels" { "Labels (one key=value per line)" }
            textarea #labels name="labels" rows="3" aria-invalid=[field_error("labels").map(|_| "true")] { (typed.labels) }
            @if let Some(message) = field_error("labels") {
                p.field-error id="labels-error" { (message) }
            }
            button type="submit" { "Register node" }
        }
    }
}

/// `GET /ui/register` (admin)
pub(super) async fn register_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, "/ui/register")?;
    admin_only(&operator, "register nodes")?;
    let page = layout::page(
        &operator,
        Section::Register,
        "Register node",
        register_form(&operator, &RegisterForm::default(), None),
    );
    Ok(Html(page.into_string()).into_response())
}

fn parse_labels(text: &str) -> Result<std::collections::HashMap<String, String>, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("{line:?} is not key=value"))
        })
        .collect()
}

/// `POST /ui/register`: the new node's page, or the form again with the error by its field.
pub(super) async fn register(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Result<axum::Form<RegisterForm>, FormRejection>,
) -> Result<Response, PageError> {
    let typed = form(body)?;
    let operator =
        console.authorize_post(&headers, &typed.csrf, Subject::Fleet, "register nodes")?;
    let again = |status: StatusCode, field: &str, message: &str| {
        let page = layout::page(
            &operator,
            Section::Register,
            "Register node",
            register_form(&operator, &typed, Some((field, message))),
        );
        (status, Html(page.into_string())).into_response()
    };
    let labels = match parse_labels(&typed.labels) {
        Ok(labels) => labels,
        Err(message) => return Ok(again(StatusCode::BAD_REQUEST, "labels", &message)),
    };
    for (field, value) in [("id", &typed.id), ("name", &typed.name)] {
        if value.trim().is_empty() {
            return Ok(again(StatusCode::BAD_REQUEST, field, "is required"));
        }
    }
    let record = NodeRecord {
        id: typed.id.trim().to_string(),
        name: typed.name.trim().to_string(),
        grpc_target: typed.grpc_target.trim().to_string(),
        tls_server_name: typed.tls_server_name.trim().to_string(),
        default_worktree_root: typed.default_worktree_root.trim().to_string(),
        labels,
    };
    match registry::register(&console.hub, record).await {
        Ok(view) => Ok(Redirect::to(&node_href(node_id(&view))).into_response()),
        Err(RegistryError::Invalid { field, message }) => {
            Ok(again(StatusCode::BAD_REQUEST, &field, &message))
        }
        Err(e @ RegistryError::Conflict(_)) => {
            Ok(again(StatusCode::CONFLICT, "id", &e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_snippet_is_a_node_config_this_version_loads() {
        let token = outpost_trust::auth::BootstrapToken::generate()
            .unwrap()
            .text();
        let text = node_snippet("https://hub.example:50051", "gpu-01", &token);
        let config = outpost_config::Config::from_toml(&text).unwrap();
        assert_eq!(config.server.node_id.as_deref(), Some("gpu-01"));
        assert_eq!(
            config.node.hub.as_deref(),
            Some("https://hub.example:50051")
        );
        assert_eq!(
            config.internal_grpc.bootstrap.token.as_deref(),
            Some(token.as_str())
        );
    }

    #[test]
    fn a_wildcard_listen_address_becomes_the_browsers_host() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::HOST,
            axum::http::HeaderValue::from_static("hub.lan:8080"),
        );
        assert_eq!(
            reachable_grpc_url("https://0.0.0.0:50051", &headers),
            "https://hub.lan:50051"
        );
        assert_eq!(
            reachable_grpc_url("https://10.0.0.1:50051", &headers),
            "https://10.0.0.1:50051"
        );
    }

    fn views(n: usize, cpu: f64) -> Vec<NodeView> {
        (0..n)
            .map(|i| NodeView {
                record: Some(NodeRecord {
                    id: format!("n-{i:05}"),
                    name: format!("n-{i:05}"),
                    ..NodeRecord::default()
                }),
                status: "online".into(),
                load: Some(outpost_proto::v1::Load {
                    cpu_percent: cpu,
                    ..Default::default()
                }),
                ..NodeView::default()
            })
            .collect()
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        // An event's wire form starts with its name.
        events
            .iter()
            .map(|e| format!("{e:?}"))
            .map(|text| {
                if text.contains("rows") {
                    "rows".into()
                } else {
                    "row".into()
                }
            })
            .collect()
    }

    #[test]
    fn subscribers_get_the_body_once_then_only_the_rows_that_changed() {
        let query = FleetQuery::default();
        let mut fleet = views(120, 10.0);
        let first = render_page(1, &fleet, &query);
        assert_eq!(kinds(&page_events(None, &first)), ["rows"]);
        let same = render_page(2, &fleet, &query);
        assert!(
            page_events(Some(&first), &same).is_empty(),
            "nothing changed"
        );
        fleet[3].load = Some(outpost_proto::v1::Load {
            cpu_percent: 99.0,
            ..Default::default()
        });
        fleet[100].status = "offline".into(); // not on the first page
        let changed = render_page(3, &fleet, &query);
        let events = page_events(Some(&same), &changed);
        assert_eq!(kinds(&events), ["row"]);
        assert!(format!("{:?}", events[0]).contains("node-n-00003"));
        fleet.remove(0);
        let shifted = render_page(4, &fleet, &query);
        assert_eq!(
            kinds(&page_events(Some(&changed), &shifted)),
            ["rows"],
            "the page's rows moved"
        );
    }

    #[test]
    fn labels_are_key_value_lines() {
        let labels = parse_labels("zone = eu\n\n gpu=a100 ").unwrap();
        assert_eq!(labels["zone"], "eu");
        assert_eq!(labels["gpu"], "a100");
        assert!(parse_labels("nonsense").unwrap_err().contains("key=value"));
    }
}
