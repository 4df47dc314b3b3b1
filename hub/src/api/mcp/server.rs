//! The MCP `ServerHandler` over a [`FleetApi`]: `tools/list` (the fleet tools the caller may
//! use, then every pushed tool it may call), `tools/call` (a pushed tool becomes a task placed
//! by the scheduler, followed to its end with progress notifications and cancelled when the
//! call is) and `notifications/tools/list_changed` when a tool is pushed or removed (over a
//! `subscriptions/listen` stream on the 2026-07-28 revision, to each session before it).

use std::sync::Arc;
use std::time::Duration;

use outpost_proto::v1::{SubmitTaskRequest, TaskView};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig,
    SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use tokio::sync::watch;

use super::approvals::Approvals;
use super::catalog;
use super::fleet_tools::{self, AGENTS, NODES, Sent};
use super::{Caller, FleetApi};

/// How long one wait for a task lasts before the state is looked at again (what progress
/// notifications report).
const PROGRESS_POLL: Duration = Duration::from_millis(500);

/// Where the handler gets the hub's API for a request, and the feed of tool list changes.
pub trait ApiSource: Send + Sync + 'static {
    /// The API as this request's caller, and who that is.
    fn api_for(
        &self,
        extensions: &rmcp::model::Extensions,
    ) -> Result<(Arc<dyn FleetApi>, Caller), McpError>;

    /// Ticks when the tool list may have changed.
    fn tool_changes(&self) -> watch::Receiver<u64>;

    /// The MCP definitions of pushed tools made so far.
    fn catalog(&self) -> &catalog::Catalog;
}

/// Tasks this server's calls are following, to cancel should a call be dropped unfinished
/// (its session closed, its client gone).
type Following = Arc<parking_lot::Mutex<std::collections::HashMap<String, Arc<dyn FleetApi>>>>;

/// The fleet's MCP server.
#[derive(Clone)]
pub struct FleetMcp {
    source: Arc<dyn ApiSource>,
    following: Following,
}

impl std::fmt::Debug for FleetMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetMcp").finish_non_exhaustive()
    }
}

impl FleetMcp {
    /// A server over `source`.
    pub fn new(source: Arc<dyn ApiSource>) -> Self {
        Self {
            source,
            following: Following::default(),
        }
    }

    /// Cancels the tasks of calls that have not finished: for a session that ended with calls
    /// in flight (`outpost mcp` once its client closes stdin).
    pub async fn cancel_unfinished(&self) {
        let unfinished: Vec<(String, Arc<dyn FleetApi>)> = self.following.lock().drain().collect();
        for (id, api) in unfinished {
            let cancelled = api.cancel_task(&id).await;
            tracing::info!(task_id = %id, ok = cancelled.is_ok(), "MCP session ended; its unfinished task cancelled");
        }
    }
}

/// A task a call follows: cancelled if the call is dropped before the task finished.
struct Followed {
    following: Following,
    id: String,
}

impl Drop for Followed {
    fn drop(&mut self) {
        let Some(api) = self.following.lock().remove(&self.id) else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let cancelled = api.cancel_task(&id).await;
                tracing::info!(task_id = %id, ok = cancelled.is_ok(), "MCP call dropped; its task cancelled");
            });
        }
    }
}

fn status_error(status: &tonic::Status) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(status.message().to_string())])
}

fn is_finished(task: &TaskView) -> bool {
    matches!(task.status.as_str(), "succeeded" | "failed" | "cancelled")
}

/// Follows a task to its end: a progress notification each time where it stands changes
/// (queued and why, placed, running), when the caller asked for them; the task cancelled when
/// the call is.
async fn follow(
    following: &Following,
    api: &Arc<dyn FleetApi>,
    mut task: TaskView,
    ctx: &RequestContext<RoleServer>,
) -> Result<TaskView, tonic::Status> {
    following.lock().insert(task.id.clone(), api.clone());
    let guard = Followed {
        following: following.clone(),
        id: task.id.clone(),
    };
    let answer = follow_to_end(api.as_ref(), &mut task, ctx).await;
    // Finished or cancelled here: nothing for the guard to do.
    following.lock().remove(&guard.id);
    answer.map(|()| task)
}

async fn follow_to_end(
    api: &dyn FleetApi,
    task: &mut TaskView,
    ctx: &RequestContext<RoleServer>,
) -> Result<(), tonic::Status> {
    let token = ctx.meta.get_progress_token();
    let mut step = 0.0;
    let mut said = String::new();
    loop {
        if is_finished(task) {
            return Ok(());
        }
        let message = catalog::progress_message(task);
        if message != said {
            if let Some(token) = &token {
                step += 1.0;
                let note = ProgressNotificationParam::new(token.clone(), step)
                    .with_message(message.clone());
                if let Err(e) = ctx.peer.notify_progress(note).await {
                    tracing::debug!(error = %e, "a progress notification was not delivered");
                }
            }
            said = message;
        }
        let wait_ms = u64::try_from(PROGRESS_POLL.as_millis()).unwrap_or(500);
        tokio::select! {
            () = ctx.ct.cancelled() => {
                let cancelled = api.cancel_task(&task.id).await;
                tracing::info!(task_id = %task.id, ok = cancelled.is_ok(), "MCP call cancelled; task cancelled");
                return Err(tonic::Status::cancelled(format!("the call was cancelled; task {} cancelled", task.id)));
            }
            next = api.wait_task(&task.id, wait_ms) => *task = next?,
        }
    }
}

async fn call_pushed_tool(
    following: &Following,
    api: &Arc<dyn FleetApi>,
    caller: &Caller,
    name: &str,
    request: &CallToolRequestParams,
    ctx: &RequestContext<RoleServer>,
) -> Result<CallToolResult, McpError> {
    let tool = match api.inspect_tool(name).await {
        Ok(tool) => tool,
        Err(status) if status.code() == tonic::Code::NotFound => {
            return Err(McpError::invalid_params(
                format!("unknown tool {name:?}: tools/list names the tools this hub has"),
                None,
            ));
        }
        Err(status) => return Ok(status_error(&status)),
    };
    let input = match catalog::input_of(&tool, request.arguments.as_ref()) {
        Ok(input) => input,
        Err(e) => {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "arguments: {e}"
            ))]));
        }
    };
    let submit = SubmitTaskRequest {
        tool: tool.name.clone(),
        input,
        ..SubmitTaskRequest::default()
    };
    let approvals = Approvals {
        ctx,
        actor: &caller.subject,
    };
    let task = match approvals.submit(api.as_ref(), submit).await {
        Ok(task) => task,
        Err(status) => return Ok(status_error(&status)),
    };
    match follow(following, api, task, ctx).await {
        Ok(done) => Ok(catalog::result_of(&done)),
        Err(status) => Ok(status_error(&status)),
    }
}

impl ServerHandler for FleetMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("outpost", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Outpost runs work on a fleet of nodes. Every tool here but `nodes` and `agents` is a \
             sandboxed component: a call becomes a task the hub places on a node that fits its \
             requirements (GPUs included) and answers with its output. `nodes` lists the fleet \
             and sends work to a node; `agents` manages long-running programs on nodes.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let (api, caller) = self.source.api_for(&ctx.extensions)?;
        let pushed = api
            .list_tools()
            .await
            .map_err(|s| McpError::internal_error(s.message().to_string(), None))?;
        let mut tools = Vec::with_capacity(pushed.len() + 2);
        if caller.sees(NODES) {
            tools.push(fleet_tools::nodes_tool());
        }
        if matches!(
            caller.role,
            outpost_trust::auth::Role::Admin | outpost_trust::auth::Role::Viewer
        ) {
            tools.push(fleet_tools::agents_tool());
        }
        tools.extend(
            pushed
                .iter()
                .filter(|t| t.name != NODES && t.name != AGENTS && caller.sees(&t.name))
                .map(|tool| self.source.catalog().tool(tool)),
        );
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, McpError> {
        let (api, caller) = self.source.api_for(&ctx.extensions)?;
        let name = request.name.to_string();
        let result = match name.as_str() {
            NODES => match fleet_tools::nodes(
                api.as_ref(),
                request.arguments.as_ref(),
                &Approvals {
                    ctx: &ctx,
                    actor: &caller.subject,
                },
            )
            .await
            {
                Sent::Answer(answer) => answer.into_result(),
                Sent::Follow(task) => match follow(&self.following, &api, *task, &ctx).await {
                    Ok(done) => fleet_tools::task_answer(&done).into_result(),
                    Err(status) => status_error(&status),
                },
            },
            AGENTS => fleet_tools::agents(api.as_ref(), request.arguments.as_ref())
                .await
                .into_result(),
            tool if !caller.sees(tool) => CallToolResult::error(vec![ContentBlock::text(format!(
                "this credential may not call tool {tool:?} (an agent token calls only the tools it names: {})",
                caller.tools.join(", ")
            ))]),
            tool => call_pushed_tool(&self.following, &api, &caller, tool, &request, &ctx).await?,
        };
        Ok(result.into())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        (requested.tools_list_changed == Some(true)).then(|| {
            let mut accepted = SubscriptionFilter::new();
            accepted.tools_list_changed = Some(true);
            accepted
        })
    }

    async fn listen(&self, context: rmcp::service::SubscriptionContext) -> Result<(), McpError> {
        let mut changes = self.source.tool_changes();
        changes.mark_unchanged();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if context.sink().notify_tool_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // A session of a revision before 2026-07-28: tell it of changes while it lasts.
        let mut changes = self.source.tool_changes();
        changes.mark_unchanged();
        let peer = context.peer.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if peer.is_transport_closed() || peer.notify_tool_list_changed().await.is_err() {
                    break;
                }
            }
        });
    }
}
