//! The gRPC agent service over [`crate::work::agents`] (what `outpost agents …` calls).

use std::pin::Pin;

use futures::Stream;
use outpost_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use outpost_proto::v1::{
    AgentId, AgentInputRequest, AgentLogEntry, AgentLogsRequest, AgentView, CreateAgentRequest,
    DeleteAgentRequest, ListAgentsRequest, ListAgentsResponse,
};
use tonic::{Request, Response, Status};

use crate::api::grpc::{HubGrpc, Subject};
use crate::api::views::agent_view;
use crate::work::agents::{self, AgentSpec, CreateAgent};
use crate::work::tasks::RequirementsSpec;

impl HubGrpc {
    /// The agent service.
    pub fn agent_service(&self) -> AgentServiceServer<Self> {
        AgentServiceServer::new(self.clone())
    }
}

/// A log entry on the wire.
pub(crate) fn entry(entry: crate::work::output::LogEntry) -> AgentLogEntry {
    AgentLogEntry {
        seq: entry.seq,
        stream: entry.stream,
        data: entry.data,
        at: entry.at,
    }
}

#[tonic::async_trait]
impl AgentService for HubGrpc {
    async fn create_agent(
        &self,
        request: Request<CreateAgentRequest>,
    ) -> Result<Response<AgentView>, Status> {
        self.write(&request, Subject::Fleet, "create agents")
            .await?;
        let r = request.into_inner();
        let create = CreateAgent {
            name: r.name,
            node: r.node,
            requirements: RequirementsSpec::from_proto(r.requirements.as_ref()),
            spec: AgentSpec {
                command: r.command,
                tool: r.tool,
                args: r.args,
                env_allow: r.env_allow,
                workdir: r.workdir,
                memory_bytes: r.memory_bytes,
                cpu_seconds: r.cpu_seconds,
                timeout_ms: r.timeout_ms,
                max_output_bytes: r.max_output_bytes,
                workdir_mode: r.workdir_mode,
                repo: r.repo,
                teams: r.teams,
                wake_on_message: r.wake_on_message,
                // From the requirements, in create.
                ..AgentSpec::default()
            },
        };
        let agent = agents::create(self.state_arc(), create).await?;
        crate::audit::note_target(&agent.id);
        Ok(Response::new(agent_view(&agent)))
    }

    async fn get_agent(&self, request: Request<AgentId>) -> Result<Response<AgentView>, Status> {
        self.read(&request, Subject::Fleet, "read agents").await?;
        let agent = agents::get(self.state_arc(), &request.get_ref().id).await?;
        Ok(Response::new(agent_view(&agent)))
    }

    async fn list_agents(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        self.read(&request, Subject::Fleet, "list agents").await?;
        let node = &request.get_ref().node;
        let node = (!node.is_empty()).then_some(node.as_str());
        let agents = agents::list(self.state_arc(), node).await?;
        Ok(Response::new(ListAgentsResponse {
            agents: agents.iter().map(agent_view).collect(),
        }))
    }

    async fn start_agent(&self, request: Request<AgentId>) -> Result<Response<AgentView>, Status> {
        crate::audit::note_target(&request.get_ref().id);
        self.write(&request, Subject::Fleet, "start agents").await?;
        let agent = agents::start(self.state_arc(), &request.get_ref().id).await?;
        Ok(Response::new(agent_view(&agent)))
    }

    async fn stop_agent(&self, request: Request<AgentId>) -> Result<Response<AgentView>, Status> {
        crate::audit::note_target(&request.get_ref().id);
        self.write(&request, Subject::Fleet, "stop agents").await?;
        let agent = agents::stop(self.state_arc(), &request.get_ref().id).await?;
        Ok(Response::new(agent_view(&agent)))
    }

    async fn restart_agent(
        &self,
        request: Request<AgentId>,
    ) -> Result<Response<AgentView>, Status> {
        crate::audit::note_target(&request.get_ref().id);
        self.write(&request, Subject::Fleet, "restart agents")
            .await?;
        let agent = agents::restart(self.state_arc(), &request.get_ref().id).await?;
        Ok(Response::new(agent_view(&agent)))
    }

    async fn delete_agent(
        &self,
        request: Request<DeleteAgentRequest>,
    ) -> Result<Response<AgentId>, Status> {
        crate::audit::note_target(&request.get_ref().id);
        self.write(&request, Subject::Fleet, "delete agents")
            .await?;
        let request = request.into_inner();
        agents::delete(self.state_arc(), &request.id, request.keep_worktree).await?;
        Ok(Response::new(AgentId { id: request.id }))
    }

    async fn send_agent_input(
        &self,
        request: Request<AgentInputRequest>,
    ) -> Result<Response<AgentId>, Status> {
        crate::audit::note_target(&request.get_ref().id);
        self.write(&request, Subject::Fleet, "feed agents").await?;
        let r = request.into_inner();
        agents::input(self.state_arc(), &r.id, &r.text).await?;
        Ok(Response::new(AgentId { id: r.id }))
    }

    type AgentLogsStream = Pin<Box<dyn Stream<Item = Result<AgentLogEntry, Status>> + Send>>;

    async fn agent_logs(
        &self,
        request: Request<AgentLogsRequest>,
    ) -> Result<Response<Self::AgentLogsStream>, Status> {
        self.read(&request, Subject::Fleet, "read agent output")
            .await?;
        let r = request.into_inner();
        let state = self.state_arc();
        agents::get(state, &r.id).await?;
        let (tail, live) = state.agents.logs.subscribe(&r.id);
        use futures::StreamExt as _;
        let retained = futures::stream::iter(tail);
        if !r.follow {
            return Ok(Response::new(Box::pin(retained.map(|e| Ok(entry(e))))));
        }
        let all = retained.chain(crate::work::output::follow(live));
        Ok(Response::new(Box::pin(all.map(|e| Ok(entry(e))))))
    }
}
