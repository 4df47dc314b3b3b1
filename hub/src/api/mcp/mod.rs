//! The fleet as MCP tools: every pushed tool, PRX's `nodes` tool and an `agents` tool, served
//! over Streamable HTTP at `/mcp` ([`http`]) and over stdio by `outpost mcp`.
//!
//! One handler ([`server::FleetMcp`]) serves both. It does nothing the caller could not do
//! through the hub's gRPC API: every call goes through a [`FleetApi`], which is that API —
//! in-process on the hub ([`LocalFleet`], the caller's own bearer token on each call), over the
//! network for `outpost mcp` — so the access rule ([`crate::api::access`]) judges MCP callers
//! exactly as it judges gRPC ones, agent credentials scoped to named tools included.
//!
//! - [`catalog`]: a pushed tool as an MCP tool (schema, arguments → task input, task → result).
//! - [`fleet_tools`]: the `nodes` and `agents` tools.
//! - [`server`]: the `ServerHandler`: list, call (a task followed to its end, with progress and
//!   cancellation), `tools/list_changed`.
//! - [`http`]: the `/mcp` route: `Origin` check, bearer check with the OAuth protected-resource
//!   metadata, and the SDK's Streamable HTTP service.

pub mod approvals;
pub mod catalog;
pub mod fleet_tools;
pub mod http;
pub mod server;

use std::sync::Arc;

use futures::StreamExt as _;
use outpost_proto::v1::agent_service_server::AgentService as _;
use outpost_proto::v1::node_registry_server::NodeRegistry as _;
use outpost_proto::v1::task_service_server::TaskService as _;
use outpost_proto::v1::tool_service_server::ToolService as _;
use outpost_proto::v1::{
    AgentId, AgentInputRequest, AgentLogEntry, AgentLogsRequest, AgentView, CreateAgentRequest,
    ListAgentsRequest, ListNodesRequest, ListToolsRequest, NodeHealth, NodeRef, NodeView,
    SubmitTaskRequest, TaskRef, TaskView, ToolRef, ToolView, WaitTaskRequest,
};
use outpost_trust::auth::{Claims, Role};
use tonic::{Request, Status};

use crate::api::grpc::{HubGrpc, InProcess};

/// Who is calling, as far as choosing what to show goes (the hub's API decides what they may
/// do): the role, and for an agent credential the tools it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The credential's role.
    pub role: Role,
    /// An agent credential's tools.
    pub tools: Vec<String>,
    /// The credential's subject (an agent's actor id, for the reviews it asks).
    pub subject: String,
}

impl Caller {
    /// The caller a credential's claims describe.
    pub fn of(claims: &Claims) -> Self {
        Self {
            role: claims.role,
            tools: claims.tools.clone(),
            subject: claims.sub.clone(),
        }
    }

    /// Whether this caller may see (and try) the tool `name`.
    pub fn sees(&self, name: &str) -> bool {
        match self.role {
            Role::Admin | Role::Viewer => true,
            Role::Agent => self.tools.iter().any(|t| t == name),
            Role::Node | Role::Actor => false,
        }
    }
}

/// The hub's API as the MCP handler uses it: the gRPC calls, with the caller's credential.
#[tonic::async_trait]
pub trait FleetApi: Send + Sync + 'static {
    /// Tools the caller may see.
    async fn list_tools(&self) -> Result<Vec<ToolView>, Status>;
    /// One tool.
    async fn inspect_tool(&self, name: &str) -> Result<ToolView, Status>;
    /// A new task.
    async fn submit_task(&self, request: SubmitTaskRequest) -> Result<TaskView, Status>;
    /// One task.
    async fn get_task(&self, id: &str) -> Result<TaskView, Status>;
    /// The task once finished, or as it is after `wait_ms`.
    async fn wait_task(&self, id: &str, wait_ms: u64) -> Result<TaskView, Status>;
    /// Cancels a task.
    async fn cancel_task(&self, id: &str) -> Result<TaskView, Status>;
    /// Every node.
    async fn list_nodes(&self) -> Result<Vec<NodeView>, Status>;
    /// One node.
    async fn get_node(&self, id: &str) -> Result<NodeView, Status>;
    /// One node's health (pings it).
    async fn node_health(&self, id: &str) -> Result<NodeHealth, Status>;
    /// Agents, on one node or all.
    async fn list_agents(&self, node: &str) -> Result<Vec<AgentView>, Status>;
    /// One agent.
    async fn get_agent(&self, id: &str) -> Result<AgentView, Status>;
    /// A new agent.
    async fn create_agent(&self, request: CreateAgentRequest) -> Result<AgentView, Status>;
    /// Starts an agent.
    async fn start_agent(&self, id: &str) -> Result<AgentView, Status>;
    /// Stops an agent.
    async fn stop_agent(&self, id: &str) -> Result<AgentView, Status>;
    /// A line on an agent's stdin (one invoke for a WASM agent).
    async fn agent_input(&self, id: &str, text: &str) -> Result<(), Status>;
    /// An agent's retained output.
    async fn agent_output(&self, id: &str) -> Result<Vec<AgentLogEntry>, Status>;
    /// `ActorService.RequestPermission` (the caller asks as its own actor).
    async fn request_permission(
        &self,
        request: outpost_proto::v1::PermissionRequest,
    ) -> Result<outpost_proto::v1::PermissionReview, Status>;
    /// `ActorService.WaitPermissionReview`.
    async fn wait_permission_review(
        &self,
        id: &str,
        wait_ms: u64,
    ) -> Result<outpost_proto::v1::PermissionReview, Status>;
}

/// The hub's gRPC services called in-process with the caller's bearer token.
#[derive(Debug, Clone)]
pub struct LocalFleet {
    grpc: HubGrpc,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    /// Who calls, for the audit log.
    subject: String,
    role: Role,
}

impl LocalFleet {
    /// The API as the holder of `token` (already verified by the HTTP layer; verified again by
    /// each call, which also applies the access rule).
    pub fn new(
        state: Arc<crate::state::HubState>,
        token: &str,
        claims: &Claims,
    ) -> Result<Self, Status> {
        let authorization = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::unauthenticated("the bearer token is not valid header text"))?;
        Ok(Self {
            grpc: HubGrpc::new(state),
            authorization,
            subject: claims.sub.clone(),
            role: claims.role,
        })
    }

    /// Records a write made through MCP in the audit log, with how it ended.
    fn audited<T>(
        &self,
        action: &str,
        target: &str,
        answer: Result<T, Status>,
    ) -> Result<T, Status> {
        let code = match &answer {
            Ok(_) => 0,
            Err(status) => i64::from(i32::from(status.code())),
        };
        self.grpc.state().audit(crate::store::AuditRow {
            subject: self.subject.clone(),
            role: self.role.to_string(),
            surface: "mcp".into(),
            action: action.into(),
            target: target.into(),
            outcome: crate::audit::grpc_outcome(code).into(),
            status: code,
            ..crate::store::AuditRow::default()
        });
        answer
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request.extensions_mut().insert(InProcess);
        request
    }
}

#[tonic::async_trait]
impl FleetApi for LocalFleet {
    async fn list_tools(&self) -> Result<Vec<ToolView>, Status> {
        let answer = self
            .grpc
            .list_tools(self.request(ListToolsRequest {}))
            .await?;
        Ok(answer.into_inner().tools)
    }

    async fn inspect_tool(&self, name: &str) -> Result<ToolView, Status> {
        let r = self.request(ToolRef { name: name.into() });
        Ok(self.grpc.inspect_tool(r).await?.into_inner())
    }

    async fn submit_task(&self, request: SubmitTaskRequest) -> Result<TaskView, Status> {
        let what = if request.tool.is_empty() {
            "command".to_string()
        } else {
            request.tool.clone()
        };
        let answer = self.grpc.submit_task(self.request(request)).await;
        let answer = answer.map(tonic::Response::into_inner);
        let target = answer.as_ref().map_or(what.clone(), |task| task.id.clone());
        self.audited(&format!("submit {what}"), &target, answer)
    }

    async fn get_task(&self, id: &str) -> Result<TaskView, Status> {
        let r = self.request(TaskRef { id: id.into() });
        Ok(self.grpc.get_task(r).await?.into_inner())
    }

    async fn wait_task(&self, id: &str, wait_ms: u64) -> Result<TaskView, Status> {
        let r = self.request(WaitTaskRequest {
            id: id.into(),
            wait_ms,
        });
        Ok(self.grpc.wait_task(r).await?.into_inner())
    }

    async fn cancel_task(&self, id: &str) -> Result<TaskView, Status> {
        let r = self.request(TaskRef { id: id.into() });
        let answer = self
            .grpc
            .cancel_task(r)
            .await
            .map(tonic::Response::into_inner);
        self.audited("cancel task", id, answer)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeView>, Status> {
        let r = self.request(ListNodesRequest::default());
        Ok(self.grpc.list_nodes(r).await?.into_inner().nodes)
    }

    async fn get_node(&self, id: &str) -> Result<NodeView, Status> {
        let r = self.request(NodeRef { id: id.into() });
        Ok(self.grpc.get_node(r).await?.into_inner())
    }

    async fn node_health(&self, id: &str) -> Result<NodeHealth, Status> {
        let r = self.request(NodeRef { id: id.into() });
        Ok(self.grpc.node_health(r).await?.into_inner())
    }

    async fn list_agents(&self, node: &str) -> Result<Vec<AgentView>, Status> {
        let r = self.request(ListAgentsRequest { node: node.into() });
        Ok(self.grpc.list_agents(r).await?.into_inner().agents)
    }

    async fn get_agent(&self, id: &str) -> Result<AgentView, Status> {
        let r = self.request(AgentId { id: id.into() });
        Ok(self.grpc.get_agent(r).await?.into_inner())
    }

    async fn create_agent(&self, request: CreateAgentRequest) -> Result<AgentView, Status> {
        let name = request.name.clone();
        let answer = self.grpc.create_agent(self.request(request)).await;
        let answer = answer.map(tonic::Response::into_inner);
        self.audited("create agent", &name, answer)
    }

    async fn start_agent(&self, id: &str) -> Result<AgentView, Status> {
        let r = self.request(AgentId { id: id.into() });
        Ok(self.grpc.start_agent(r).await?.into_inner())
    }

    async fn stop_agent(&self, id: &str) -> Result<AgentView, Status> {
        let r = self.request(AgentId { id: id.into() });
        Ok(self.grpc.stop_agent(r).await?.into_inner())
    }

    async fn agent_input(&self, id: &str, text: &str) -> Result<(), Status> {
        let r = self.request(AgentInputRequest {
            id: id.into(),
            text: text.into(),
        });
        let answer = self.grpc.send_agent_input(r).await.map(|_| ());
        self.audited("send agent input", id, answer)
    }

    async fn agent_output(&self, id: &str) -> Result<Vec<AgentLogEntry>, Status> {
        let r = self.request(AgentLogsRequest {
            id: id.into(),
            follow: false,
        });
        let stream = self.grpc.agent_logs(r).await?.into_inner();
        stream
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
    }

    async fn request_permission(
        &self,
        request: outpost_proto::v1::PermissionRequest,
    ) -> Result<outpost_proto::v1::PermissionReview, Status> {
        use outpost_proto::v1::actor_service_server::ActorService as _;
        let title = request.title.clone();
        let answer = self
            .grpc
            .request_permission(self.request(request))
            .await
            .map(tonic::Response::into_inner);
        let target = answer.as_ref().map_or(title, |r| r.id.clone());
        self.audited("request permission", &target, answer)
    }

    async fn wait_permission_review(
        &self,
        id: &str,
        wait_ms: u64,
    ) -> Result<outpost_proto::v1::PermissionReview, Status> {
        use outpost_proto::v1::actor_service_server::ActorService as _;
        let r = self.request(outpost_proto::v1::WaitPermissionReviewRequest {
            request_id: id.into(),
            wait_ms,
        });
        Ok(self.grpc.wait_permission_review(r).await?.into_inner())
    }
}
