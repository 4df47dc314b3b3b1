//! `outpost mcp`: the hub's MCP server over stdio, for MCP clients that launch servers as
//! subprocesses. The same handler as `/mcp` on the hub ([`outpost_hub::api::mcp::server`]),
//! over the hub's gRPC API with this process's credential (`OUTPOST_TOKEN`, or an admin token
//! minted from the config's auth secret): what it may do is what that credential may.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use outpost_hub::api::mcp::server::{ApiSource, FleetMcp};
use outpost_hub::api::mcp::{Caller, FleetApi};
use outpost_proto::v1::actor_service_client::ActorServiceClient;
use outpost_proto::v1::agent_service_client::AgentServiceClient;
use outpost_proto::v1::node_registry_client::NodeRegistryClient;
use outpost_proto::v1::task_service_client::TaskServiceClient;
use outpost_proto::v1::tool_service_client::ToolServiceClient;
use outpost_proto::v1::{
    AgentId, AgentInputRequest, AgentLogEntry, AgentLogsRequest, AgentView, CreateAgentRequest,
    ListAgentsRequest, ListNodesRequest, ListToolsRequest, NodeHealth, NodeRef, NodeView,
    SubmitTaskRequest, TaskRef, TaskView, ToolRef, ToolView, WaitTaskRequest,
};
use outpost_trust::auth::{Claims, Role};
use rmcp::ServiceExt as _;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::GlobalArgs;

/// How often the tool list is compared with the hub's, for `tools/list_changed`.
const TOOL_POLL: Duration = Duration::from_secs(5);

/// The hub's gRPC API over one channel, with one credential.
#[derive(Debug, Clone)]
struct GrpcFleet {
    channel: Channel,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl GrpcFleet {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    fn tasks(&self) -> TaskServiceClient<Channel> {
        TaskServiceClient::new(self.channel.clone())
    }

    fn tools(&self) -> ToolServiceClient<Channel> {
        ToolServiceClient::new(self.channel.clone())
    }

    fn nodes(&self) -> NodeRegistryClient<Channel> {
        NodeRegistryClient::new(self.channel.clone())
    }

    fn agents(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel.clone())
    }

    fn actors(&self) -> ActorServiceClient<Channel> {
        ActorServiceClient::new(self.channel.clone())
    }
}

#[tonic::async_trait]
impl FleetApi for GrpcFleet {
    async fn list_tools(&self) -> Result<Vec<ToolView>, Status> {
        let r = self.request(ListToolsRequest {});
        Ok(self.tools().list_tools(r).await?.into_inner().tools)
    }

    async fn inspect_tool(&self, name: &str) -> Result<ToolView, Status> {
        let r = self.request(ToolRef { name: name.into() });
        Ok(self.tools().inspect_tool(r).await?.into_inner())
    }

    async fn submit_task(&self, request: SubmitTaskRequest) -> Result<TaskView, Status> {
        Ok(self
            .tasks()
            .submit_task(self.request(request))
            .await?
            .into_inner())
    }

    async fn get_task(&self, id: &str) -> Result<TaskView, Status> {
        let r = self.request(TaskRef { id: id.into() });
        Ok(self.tasks().get_task(r).await?.into_inner())
    }

    async fn wait_task(&self, id: &str, wait_ms: u64) -> Result<TaskView, Status> {
        let r = self.request(WaitTaskRequest {
            id: id.into(),
            wait_ms,
        });
        Ok(self.tasks().wait_task(r).await?.into_inner())
    }

    async fn cancel_task(&self, id: &str) -> Result<TaskView, Status> {
        let r = self.request(TaskRef { id: id.into() });
        Ok(self.tasks().cancel_task(r).await?.into_inner())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeView>, Status> {
        let r = self.request(ListNodesRequest::default());
        Ok(self.nodes().list_nodes(r).await?.into_inner().nodes)
    }

    async fn get_node(&self, id: &str) -> Result<NodeView, Status> {
        let r = self.request(NodeRef { id: id.into() });
        Ok(self.nodes().get_node(r).await?.into_inner())
    }

    async fn node_health(&self, id: &str) -> Result<NodeHealth, Status> {
        let r = self.request(NodeRef { id: id.into() });
        Ok(self.nodes().node_health(r).await?.into_inner())
    }

    async fn list_agents(&self, node: &str) -> Result<Vec<AgentView>, Status> {
        let r = self.request(ListAgentsRequest { node: node.into() });
        Ok(self.agents().list_agents(r).await?.into_inner().agents)
    }

    async fn get_agent(&self, id: &str) -> Result<AgentView, Status> {
        let r = self.request(AgentId { id: id.into() });
        Ok(self.agents().get_agent(r).await?.into_inner())
    }

    async fn create_agent(&self, request: CreateAgentRequest) -> Result<AgentView, Status> {
        Ok(self
            .agents()
            .create_agent(self.request(request))
            .await?
            .into_inner())
    }

    async fn start_agent(&self, id: &str) -> Result<AgentView, Status> {
        let r = self.request(AgentId { id: id.into() });
        Ok(self.agents().start_agent(r).await?.into_inner())
    }

    async fn stop_agent(&self, id: &str) -> Result<AgentView, Status> {
        let r = self.request(AgentId { id: id.into() });
        Ok(self.agents().stop_agent(r).await?.into_inner())
    }

    async fn agent_input(&self, id: &str, text: &str) -> Result<(), Status> {
        let r = self.request(AgentInputRequest {
            id: id.into(),
            text: text.into(),
        });
        self.agents().send_agent_input(r).await?;
        Ok(())
    }

    async fn agent_output(&self, id: &str) -> Result<Vec<AgentLogEntry>, Status> {
        let r = self.request(AgentLogsRequest {
            id: id.into(),
            follow: false,
        });
        let stream = self.agents().agent_logs(r).await?.into_inner();
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
        let r = self.request(request);
        Ok(self.actors().request_permission(r).await?.into_inner())
    }

    async fn wait_permission_review(
        &self,
        id: &str,
        wait_ms: u64,
    ) -> Result<outpost_proto::v1::PermissionReview, Status> {
        let r = self.request(outpost_proto::v1::WaitPermissionReviewRequest {
            request_id: id.into(),
            wait_ms,
        });
        Ok(self.actors().wait_permission_review(r).await?.into_inner())
    }
}

/// One API and one caller for the whole stdio session.
struct StdioSource {
    api: Arc<GrpcFleet>,
    caller: Caller,
    changes: watch::Receiver<u64>,
    catalog: outpost_hub::api::mcp::catalog::Catalog,
}

impl ApiSource for StdioSource {
    fn api_for(
        &self,
        _extensions: &rmcp::model::Extensions,
    ) -> Result<(Arc<dyn FleetApi>, Caller), rmcp::ErrorData> {
        Ok((self.api.clone(), self.caller.clone()))
    }

    fn tool_changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    fn catalog(&self) -> &outpost_hub::api::mcp::catalog::Catalog {
        &self.catalog
    }
}

/// Ticks `changes` whenever the hub's tool list (names and digests) differs from the last look.
async fn watch_tools(api: Arc<GrpcFleet>, changes: watch::Sender<u64>) {
    let mut seen: Option<Vec<(String, String)>> = None;
    loop {
        if let Ok(tools) = api.list_tools().await {
            let now: Vec<(String, String)> =
                tools.into_iter().map(|t| (t.name, t.digest)).collect();
            if seen.as_ref().is_some_and(|before| *before != now) {
                changes.send_modify(|n| *n += 1);
            }
            seen = Some(now);
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(TOOL_POLL).await;
    }
}

/// Serves MCP on stdin/stdout until the client closes it.
pub async fn serve_stdio(global: &GlobalArgs) -> anyhow::Result<()> {
    let (channel, jwt) = crate::work::channel(global).await?;
    let authorization = format!("Bearer {jwt}")
        .parse()
        .context("the token is not valid header text")?;
    let api = Arc::new(GrpcFleet {
        channel,
        authorization,
    });
    let caller = Claims::unverified(&jwt).map_or(
        Caller {
            role: Role::Viewer,
            tools: Vec::new(),
            subject: String::new(),
        },
        |claims| Caller::of(&claims),
    );
    let (changes_tx, changes) = watch::channel(0);
    let watcher = tokio::spawn(watch_tools(api.clone(), changes_tx));
    let source: Arc<dyn ApiSource> = Arc::new(StdioSource {
        api,
        caller,
        changes,
        catalog: outpost_hub::api::mcp::catalog::Catalog::default(),
    });
    let server = FleetMcp::new(source);
    let running = server
        .clone()
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    let ended = running.waiting().await;
    watcher.abort();
    // The client is gone: what its calls started must not run on unobserved.
    server.cancel_unfinished().await;
    ended.context("the MCP session on stdio")?;
    Ok(())
}
