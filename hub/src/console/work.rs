//! The work pages: agents (list, create with an execution-node picker, start/stop, a live
//! output pane), the task queue and the tool registry.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use outpost_proto::v1::AgentView;

use super::fleet;
use super::layout::{self, Section};
use super::{Console, Operator, PageError};
use crate::api::access::Subject;
use crate::api::views::{agent_view, task_view};
use crate::store::{AgentRow, TaskRow};
use crate::work::agents::{self, AgentSpec, CreateAgent};
use crate::work::tasks::RequirementsSpec;

fn agent_href(id: &str) -> String {
    format!("/ui/agents/{}", fleet::encode(id))
}

fn runtime(agent: &AgentView) -> String {
    if agent.tool.is_empty() {
        let mut text = agent.command.clone();
        for arg in &agent.args {
            text.push(' ');
            text.push_str(arg);
        }
        format!("native: {text}")
    } else {
        format!("wasm: {}", agent.tool)
    }
}

fn ended(agent: &AgentView) -> String {
    match (agent.exit_code, agent.signal) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => String::new(),
    }
}

/// Agents as a table (the agents page and a node's page).
pub(super) fn agent_table(agents: &[AgentRow]) -> Markup {
    html! {
        @if agents.is_empty() {
            p.muted { "No agents." }
        } @else {
            table.agents {
                thead { tr { th { "Agent" } th { "Node" } th { "Status" } th { "Runtime" } th { "Workdir" } th { "Updated" } } }
                tbody {
                    @for row in agents {
                        @let agent = agent_view(row);
                        tr id={ "agent-" (agent.id) } {
                            td { a href=(agent_href(&agent.id)) { (agent.name) } br; small.muted { (agent.id) } }
                            td { code { "node:" (agent.node) } }
                            td title=(agent.reason) { (layout::status(&agent.status)) " " small { (ended(&agent)) } }
                            td { (runtime(&agent)) }
                            td { code { (agent.workdir) } }
                            td { (layout::time(agent.updated_at_ms)) }
                        }
                    }
                }
            }
        }
    }
}

/// Tasks as a table (the tasks page and a node's page).
pub(super) fn task_table(tasks: &[&TaskRow]) -> Markup {
    html! {
        @if tasks.is_empty() {
            p.muted { "No tasks." }
        } @else {
            table.tasks {
                thead { tr { th { "Task" } th { "Runs" } th { "Status" } th { "Why / how it ended" } th { "Node" } th { "Attempts" } th { "Created" } } }
                tbody {
                    @for row in tasks {
                        @let task = task_view(row);
                        tr id={ "task-" (task.id) } {
                            td { code { (task.id) } }
                            td { @if task.tool.is_empty() { "command: " code { (task.command) } } @else { "tool: " (task.tool) } }
                            td { (layout::status(&task.status)) }
                            td { (task.reason) @if !task.error_kind.is_empty() { " (" (task.error_kind) ")" } }
                            td { @if !task.node.is_empty() { a href={ "/ui/nodes/" (fleet::encode(&task.node)) } { (task.node) } } }
                            td { (task.attempts) " / " (task.max_attempts) }
                            td { (layout::time(task.created_at_ms)) }
                        }
                    }
                }
            }
        }
    }
}

/// The create form's fields, as typed.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub(super) struct AgentForm {
    csrf: String,
    name: String,
    /// A node id, or empty for any node that fits.
    node: String,
    gpus: String,
    gpu_memory: String,
    compute_capability: String,
    labels: String,
    capabilities: String,
    /// `native` or `wasm`.
    kind: String,
    command: String,
    args: String,
    env_allow: String,
    tool: String,
    workdir_mode: String,
    workdir: String,
    repo: String,
    memory: String,
    cpu_seconds: String,
    timeout: String,
    max_output: String,
}

fn words(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

fn optional<T>(
    field: &str,
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, (String, String)> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    parse(text).map(Some).map_err(|e| (field.to_string(), e))
}

impl AgentForm {
    /// The create this form asks for, or the field that is wrong and why.
    fn to_create(&self) -> Result<CreateAgent, (String, String)> {
        let size = |t: &str| outpost_sandbox::policy::parse_bytes(t);
        let duration = |t: &str| {
            humantime::parse_duration(t)
                .map_err(|e| format!("{e} (try 30s, 1h)"))
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let mut labels = std::collections::BTreeMap::new();
        for line in self.labels.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| ("labels".to_string(), format!("{line:?} is not key=value")))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let auto = self.node.trim().is_empty();
        let requirements = RequirementsSpec {
            gpus: optional("gpus", &self.gpus, |t| {
                t.parse::<f64>()
                    .map_err(|e| format!("{e} (a count such as 1 or 0.5)"))
            })?
            .unwrap_or(0.0),
            gpu_memory_mb: optional("gpu_memory", &self.gpu_memory, size)?
                .map_or(0, |b| b / (1024 * 1024)),
            compute_capability: self.compute_capability.trim().to_string(),
            labels,
            capabilities: words(&self.capabilities),
            node: String::new(),
        };
        let wasm = self.kind == "wasm";
        let spec = AgentSpec {
            command: if wasm {
                String::new()
            } else {
                self.command.trim().to_string()
            },
            tool: if wasm {
                self.tool.trim().to_string()
            } else {
                String::new()
            },
            args: if wasm {
                Vec::new()
            } else {
                self.args
                    .lines()
                    .map(|l| l.trim_end_matches('\r').to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            },
            env_allow: if wasm {
                Vec::new()
            } else {
                words(&self.env_allow)
            },
            workdir: self.workdir.trim().to_string(),
            workdir_mode: self.workdir_mode.trim().to_string(),
            repo: self.repo.trim().to_string(),
            memory_bytes: optional("memory", &self.memory, size)?.unwrap_or(0),
            cpu_seconds: optional("cpu_seconds", &self.cpu_seconds, |t| {
                t.parse::<u64>().map_err(|e| e.to_string())
            })?
            .unwrap_or(0),
            timeout_ms: optional("timeout", &self.timeout, duration)?.unwrap_or(0),
            max_output_bytes: optional("max_output", &self.max_output, size)?.unwrap_or(0),
            ..AgentSpec::default()
        };
        let has_requirements = requirements != RequirementsSpec::default();
        if !auto && has_requirements {
            return Err((
                "node".into(),
                "requirements are for \"any node that fits\"; a chosen node takes none".into(),
            ));
        }
        Ok(CreateAgent {
            name: self.name.trim().to_string(),
            node: self.node.trim().to_string(),
            requirements,
            spec,
        })
    }
}

async fn agents_body(
    console: &Console,
    operator: &Operator,
    typed: &AgentForm,
    error: Option<(&str, &str)>,
) -> Result<Markup, PageError> {
    let agents = agents::list(&console.hub, None).await?;
    let nodes = crate::fleet::registry::list(&console.hub).await?;
    let tools = crate::work::tools::list(&console.hub).await?;
    let err = |field: &str| {
        error
            .filter(|(f, _)| *f == field)
            .map(|(_, m)| m.to_string())
    };
    let text_field = |field: &str, label: &str, value: &str, example: &str| {
        html! {
            label for=(field) { (label) }
            input id=(field) name=(field) value=(value) placeholder=(example) aria-invalid=[err(field).map(|_| "true")];
            @if let Some(message) = err(field) { p.field-error id={ (field) "-error" } { (message) } }
        }
    };
    let known_fields = [
        "name",
        "node",
        "gpus",
        "gpu_memory",
        "compute_capability",
        "labels",
        "capabilities",
        "command",
        "args",
        "env_allow",
        "tool",
        "workdir_mode",
        "workdir",
        "repo",
        "memory",
        "cpu_seconds",
        "timeout",
        "max_output",
    ];
    let wasm = typed.kind == "wasm";
    Ok(html! {
        (agent_table(&agents))
        @if operator.can_write() {
            h2 { "Create an agent" }
            @if let Some((field, message)) = error.filter(|(f, _)| !known_fields.contains(f)) {
                p.error role="alert" { @if !field.is_empty() { (field) ": " } (message) }
            }
            form #create-agent method="post" action="/ui/agents" novalidate {
                (layout::csrf(operator))
                (text_field("name", "Name *", &typed.name, "trainer"))
                fieldset {
                    legend { "Execution node" }
                    label for="node" { "Node" }
                    select #node name="node" aria-invalid=[err("node").map(|_| "true")] {
                        option value="" selected[typed.node.is_empty()] { "any node that fits the requirements" }
                        @for view in &nodes {
                            @let id = view.record.as_ref().map_or("", |r| r.id.as_str());
                            option value=(id) selected[typed.node == id] { (id) " (" (view.status) ")" }
                        }
                    }
                    @if let Some(message) = err("node") { p.field-error id="node-error" { (message) } }
                    p.hint { "Requirements (only for any node that fits):" }
                    (text_field("gpus", "GPUs", &typed.gpus, "1 or 0.5"))
                    (text_field("gpu_memory", "GPU memory", &typed.gpu_memory, "16GiB"))
                    (text_field("compute_capability", "Compute capability", &typed.compute_capability, "8.0"))
                    label for="labels" { "Labels (key=value per line)" }
                    textarea #labels name="labels" rows="2" { (typed.labels) }
                    @if let Some(message) = err("labels") { p.field-error id="labels-error" { (message) } }
                    (text_field("capabilities", "Capabilities", &typed.capabilities, "cuda"))
                }
                fieldset {
                    legend { "Runtime" }
                    label.inline { input type="radio" name="kind" value="native" checked[!wasm]; " native program" }
                    label.inline { input type="radio" name="kind" value="wasm" checked[wasm]; " WASM tool" }
                    (text_field("command", "Command (native)", &typed.command, "python3"))
                    label for="args" { "Arguments (one per line)" }
                    textarea #args name="args" rows="3" { (typed.args) }
                    @if let Some(message) = err("args") { p.field-error id="args-error" { (message) } }
                    (text_field("env_allow", "Environment allowed (names)", &typed.env_allow, "HOME PATH"))
                    label for="tool" { "Tool (WASM)" }
                    select #tool name="tool" {
                        option value="" { "-" }
                        @for tool in &tools { option value=(tool.name) selected[typed.tool == tool.name] { (tool.name) " " (tool.version) } }
                    }
                    @if let Some(message) = err("tool") { p.field-error id="tool-error" { (message) } }
                }
                fieldset {
                    legend { "Workdir" }
                    label for="workdir_mode" { "Mode" }
                    select #workdir_mode name="workdir_mode" {
                        @for mode in ["use_existing", "create_worktree", "reuse_worktree"] {
                            option value=(mode) selected[typed.workdir_mode == mode] { (mode) }
                        }
                    }
                    (text_field("workdir", "Path (inside the node's safe_paths)", &typed.workdir, "/srv/work"))
                    (text_field("repo", "Repository (create_worktree)", &typed.repo, "/srv/repos/app"))
                }
                fieldset {
                    legend { "Limits" }
                    (text_field("memory", "Memory", &typed.memory, "512MiB"))
                    (text_field("cpu_seconds", "CPU seconds", &typed.cpu_seconds, "3600"))
                    (text_field("timeout", "Wall time", &typed.timeout, "1h"))
                    (text_field("max_output", "Output kept", &typed.max_output, "16MiB"))
                }
                button type="submit" { "Create agent" }
            }
        }
    })
}

/// `GET /ui/agents`
pub(super) async fn agents_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, "/ui/agents")?;
    let body = agents_body(&console, &operator, &AgentForm::default(), None).await?;
    let page = layout::page(&operator, Section::Agents, "Agents", body);
    Ok(Html(page.into_string()).into_response())
}

/// `POST /ui/agents`: the new agent's page, or the form again with the error by its field.
pub(super) async fn create_agent(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Result<axum::Form<AgentForm>, FormRejection>,
) -> Result<Response, PageError> {
    let typed = body
        .map(|axum::Form(f)| f)
        .map_err(|e| PageError::Status(e.status(), e.body_text()))?;
    let operator =
        console.authorize_post(&headers, &typed.csrf, Subject::Fleet, "create agents")?;
    let outcome = match typed.to_create() {
        Ok(create) => agents::create(&console.hub, create).await.map_err(|e| {
            let (status, message) = crate::api::rest::ApiError::from(e).parts();
            let field = message
                .split_once(':')
                .map(|(f, _)| f.trim().to_string())
                .filter(|f| !f.contains(' '))
                .unwrap_or_default();
            (status, field, message)
        }),
        Err((field, message)) => Err((
            StatusCode::BAD_REQUEST,
            field.clone(),
            format!("{field}: {message}"),
        )),
    };
    match outcome {
        Ok(agent) => Ok(Redirect::to(&agent_href(&agent.id)).into_response()),
        Err((status, field, message)) => {
            let body = agents_body(&console, &operator, &typed, Some((&field, &message))).await?;
            let page = layout::page(&operator, Section::Agents, "Agents", body);
            Ok((status, Html(page.into_string())).into_response())
        }
    }
}

/// `GET /ui/agents/{id}`: the agent, its actions and its output (the retained tail, then live).
pub(super) async fn agent_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, uri.path())?;
    let row = agents::get(&console.hub, &id).await?;
    let agent = agent_view(&row);
    let base = agent_href(&agent.id);
    let body = html! {
        (agent_live(&operator, &agent))
        @if operator.can_write() {
            form.input-line method="post" action={ (base) "/input" } {
                (layout::csrf(&operator))
                label for="text" { "Send a line" }
                input #text name="text" autocomplete="off";
                button type="submit" { "Send" }
            }
        }
        h2 { "Output" }
        pre #output .output data-events={ (base) "/events" } data-live={ (base) "/live" } aria-live="polite" {}
    };
    let page = layout::page(
        &operator,
        Section::Agents,
        &format!("Agent {}", agent.name),
        body,
    );
    Ok(Html(page.into_string()).into_response())
}

/// The part of the agent's page that changes with its status: the facts and the actions.
fn agent_live(operator: &Operator, agent: &AgentView) -> Markup {
    let base = agent_href(&agent.id);
    let active = matches!(agent.status.as_str(), "starting" | "running");
    html! {
        div #agent-live {
            dl.facts {
                dt { "Status" } dd #agent-status { (layout::status(&agent.status)) " " (ended(agent)) " " span.muted { (agent.reason) } }
                dt { "Node" } dd { a href={ "/ui/nodes/" (fleet::encode(&agent.node)) } { code { "node:" (agent.node) } } }
                dt { "Runtime" } dd { (runtime(agent)) }
                dt { "Workdir" } dd { code { (agent.workdir) } " (" (agent.workdir_mode) ")" }
                dt { "Landlock" } dd { (agent.landlock) }
                dt { "Run" } dd { (agent.run) " · started " (layout::time(agent.started_at_ms)) }
                @if agent.gpu_milli > 0 { dt { "GPUs" } dd { (f64::from(agent.gpu_milli) / 1000.0) } }
            }
            @if operator.can_write() {
                div.actions {
                    @if active {
                        (layout::button_form(operator, &format!("{base}/stop"), "Stop", ""))
                    } @else {
                        (layout::button_form(operator, &format!("{base}/start"), "Start", ""))
                    }
                    (layout::button_form(operator, &format!("{base}/restart"), "Restart", ""))
                    (layout::button_form(operator, &format!("{base}/delete"), "Delete", "danger"))
                }
            }
        }
    }
}

/// `GET /ui/agents/{id}/live`: [`agent_live`] alone, fetched by the page when the agent's
/// output says its status changed.
pub(super) async fn agent_live_part(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, "/ui/agents")?;
    let agent = agent_view(&agents::get(&console.hub, &id).await?);
    Ok(Html(agent_live(&operator, &agent).into_string()).into_response())
}

/// `GET /ui/agents/{id}/events`: the output pane's feed (as `/api/agents/{id}/events`).
pub(super) async fn agent_events(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, PageError> {
    console.operator(&headers, "/ui/agents")?;
    agents::get(&console.hub, &id).await?;
    let turn = console.live_feed()?;
    let (tail, live) = console.hub.agents.logs.subscribe(&id);
    use futures::StreamExt as _;
    let stream = crate::api::rest_agents::log_stream(tail, live).map(move |event| {
        // The feed's turn is given back when the stream is dropped.
        let _held = &turn;
        event
    });
    Ok(Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default()))
}

/// The action forms: the CSRF token, and the line for `input`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ActionForm {
    csrf: String,
    #[serde(default)]
    text: String,
}

/// `POST /ui/agents/{id}/start|stop|restart|delete|input`
pub(super) async fn agent_action(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Result<axum::Form<ActionForm>, FormRejection>,
) -> Result<Response, PageError> {
    let body = body
        .map(|axum::Form(f)| f)
        .map_err(|e| PageError::Status(e.status(), e.body_text()))?;
    let what = match action.as_str() {
        "start" => "start agents",
        "stop" => "stop agents",
        "restart" => "restart agents",
        "delete" => "delete agents",
        "input" => "feed agents",
        other => {
            return Err(PageError::Status(
                StatusCode::NOT_FOUND,
                format!("{other:?} is not an agent action"),
            ));
        }
    };
    console.authorize_post(&headers, &body.csrf, Subject::Fleet, what)?;
    let hub = &console.hub;
    match action.as_str() {
        "start" => drop(agents::start(hub, &id).await?),
        "stop" => drop(agents::stop(hub, &id).await?),
        "restart" => drop(agents::restart(hub, &id).await?),
        "input" => agents::input(hub, &id, &body.text).await?,
        _ => {
            agents::delete(hub, &id, false).await?;
            return Ok(Redirect::to("/ui/agents").into_response());
        }
    }
    Ok(Redirect::to(&agent_href(&id)).into_response())
}

/// `GET /ui/tasks`: the newest tasks with why each waits, where it ran and its attempts.
pub(super) async fn tasks_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<axum::extract::Query<TasksQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, &uri.to_string())?;
    let axum::extract::Query(query) =
        query.map_err(|e| PageError::Status(e.status(), e.body_text()))?;
    let page = crate::work::tasks::list(
        &console.hub,
        Some(query.status.as_str()),
        TASKS_PER_PAGE,
        Some(query.before.as_str()).filter(|b| !b.is_empty()),
    )
    .await?;
    let waiting = console.hub.tasks.waiting();
    let rows: Vec<&TaskRow> = page.tasks.iter().collect();
    let statuses = [
        "",
        "queued",
        "placed",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ];
    let body = html! {
        @if !waiting.is_empty() {
            p.summary { "Waiting: " @for (cause, n) in &waiting { (n) " " (cause) "; " } }
        }
        nav.pager #task-statuses {
            @for status in statuses {
                @let label = if status.is_empty() { "all" } else { status };
                a href={ "/ui/tasks" @if !status.is_empty() { "?status=" (status) } }
                    aria-current=[(query.status == status).then_some("page")] { (label) }
            }
        }
        (task_table(&rows))
        @if let Some(next) = &page.next_before {
            nav.pager {
                a #older-tasks href={ "/ui/tasks?status=" (fleet::encode(&query.status)) "&before=" (fleet::encode(next)) } { "older →" }
            }
        }
    };
    let html = layout::page(&operator, Section::Tasks, "Tasks", body);
    Ok(Html(html.into_string()).into_response())
}

/// Tasks on one page of the tasks page.
const TASKS_PER_PAGE: u32 = 100;

/// `?status=…&before=…`
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct TasksQuery {
    /// Only tasks with this status; empty: all.
    status: String,
    /// The page after this task id (newest first).
    before: String,
}

/// `GET /ui/tools`: name, version, digest, policy, and which nodes have it installed.
pub(super) async fn tools_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, "/ui/tools")?;
    let tools = crate::work::tools::list(&console.hub).await?;
    let body = html! {
        @if tools.is_empty() {
            p.muted { "No tools pushed yet: " code { "outpost tool push FILE.wasm --name NAME" } }
        } @else {
            table.tools {
                thead { tr { th { "Tool" } th { "Version" } th { "Digest" } th { "Size" } th { "Publisher" } th { "Installed on" } th { "Policy" } } }
                tbody {
                    @for row in &tools {
                        @let tool = crate::work::tools::view(row);
                        @let nodes = console.hub.tools.installed_on(&tool.name, &tool.digest);
                        tr id={ "tool-" (tool.name) } {
                            td { strong { (tool.name) } br; small.muted { (tool.description) } }
                            td { (tool.version) }
                            td { code title=(tool.digest) { (tool.digest.get(..12).unwrap_or(&tool.digest)) } }
                            td { (layout::bytes(tool.size_bytes)) }
                            td { @if tool.publisher.is_empty() { span.muted { "unsigned" } } @else { code { (tool.publisher) } } }
                            td { @for node in &nodes { code { (node) } " " } @if nodes.is_empty() { span.muted { "none yet" } } }
                            td { details { summary { "policy.toml" } pre { (tool.policy_toml) } } }
                        }
                    }
                }
            }
        }
    };
    let page = layout::page(&operator, Section::Tools, "Tools", body);
    Ok(Html(page.into_string()).into_response())
}

/// `GET /ui/audit`: the newest writes, who made them and how they ended.
pub(super) async fn audit_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, "/ui/audit")?;
    operator.may(
        crate::api::access::Access::Read,
        Subject::Fleet,
        "read the audit log",
    )?;
    let rows = crate::audit::list(&console.hub, 0, 500)
        .await
        .map_err(|e| PageError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let body = html! {
        p.muted { "The newest 500 writes; " code { "outpost audit list --since 24h" } " has the rest." }
        table #audit {
            thead { tr { th { "When" } th { "Who" } th { "Surface" } th { "What" } th { "Target" } th { "Outcome" } } }
            tbody {
                @for row in &rows {
                    tr {
                        td { (layout::time(row.at_ms)) }
                        td { (row.subject) " (" (row.role) ")" }
                        td { (row.surface) }
                        td { code { (row.action) } }
                        td { code { (row.target) } }
                        td { (layout::status(&row.outcome)) " " small.muted { (row.status) } }
                    }
                }
            }
        }
    };
    let page = layout::page(&operator, Section::Audit, "Audit log", body);
    Ok(Html(page.into_string()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_the_create_the_api_takes() {
        let form = AgentForm {
            name: " trainer ".into(),
            gpus: "0.5".into(),
            gpu_memory: "16GiB".into(),
            labels: "zone=eu".into(),
            kind: "native".into(),
            command: "python3".into(),
            args: "train.py\r\n--epochs 3\n".into(),
            memory: "512MiB".into(),
            timeout: "1h".into(),
            ..AgentForm::default()
        };
        let create = form.to_create().unwrap();
        assert_eq!(create.name, "trainer");
        assert_eq!(create.requirements.gpus, 0.5);
        assert_eq!(create.requirements.gpu_memory_mb, 16 * 1024);
        assert_eq!(create.requirements.labels["zone"], "eu");
        assert_eq!(create.spec.args, ["train.py", "--epochs 3"]);
        assert_eq!(create.spec.memory_bytes, 512 * 1024 * 1024);
        assert_eq!(create.spec.timeout_ms, 3_600_000);
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |form: AgentForm| form.to_create().unwrap_err().0;
        assert_eq!(
            bad(AgentForm {
                gpus: "many".into(),
                ..AgentForm::default()
            }),
            "gpus"
        );
        assert_eq!(
            bad(AgentForm {
                memory: "lots".into(),
                ..AgentForm::default()
            }),
            "memory"
        );
        assert_eq!(
            bad(AgentForm {
                timeout: "soon".into(),
                ..AgentForm::default()
            }),
            "timeout"
        );
        assert_eq!(
            bad(AgentForm {
                labels: "x".into(),
                ..AgentForm::default()
            }),
            "labels"
        );
        assert_eq!(
            bad(AgentForm {
                node: "n-1".into(),
                gpus: "1".into(),
                ..AgentForm::default()
            }),
            "node",
            "a chosen node takes no requirements"
        );
    }
}
