//! The gRPC task and tool services over [`crate::work::tasks`] and [`crate::work::tools`].

use std::time::Duration;

use outpost_proto::v1::task_service_server::{TaskService, TaskServiceServer};
use outpost_proto::v1::tool_service_server::{ToolService, ToolServiceServer};
use outpost_proto::v1::{
    AgentLogEntry, ListTasksRequest, ListTasksResponse, ListToolsRequest, ListToolsResponse,
    PushToolRequest, SubmitTaskRequest, TaskLogsRequest, TaskRef, TaskView, ToolRef, ToolView,
    WaitTaskRequest,
};
use tonic::{Request, Response, Status};

use crate::api::grpc::{Access, HubGrpc, Subject};
use crate::api::views;
use crate::work::tasks::{self, RequirementsSpec, SubmitSpec, TaskError};
use crate::work::{supervision, tools};

/// Longest a `WaitTask` call holds on.
const MAX_WAIT: Duration = Duration::from_secs(300);

impl HubGrpc {
    /// The task `id` once the caller may do `access` on tasks of its tool (the rule needs the
    /// task's tool, so it is read after the credential is checked and before anything else).
    async fn task_for<T>(
        &self,
        request: &Request<T>,
        id: &str,
        access: Access,
        action: &str,
    ) -> Result<crate::store::TaskRow, Status> {
        let claims = crate::api::grpc::authenticate(self.state(), request).await?;
        if claims.role == outpost_trust::auth::Role::Node {
            return Err(Status::permission_denied(
                "role node may not read or change tasks",
            ));
        }
        let task = tasks::get(self.state(), id).await?;
        crate::api::access::permit(&claims, access, Subject::Task { tool: &task.tool }, action)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        Ok(task)
    }

    /// The task service.
    pub fn task_service(&self) -> TaskServiceServer<Self> {
        TaskServiceServer::new(self.clone())
    }

    /// The tool service (pushes may carry components up to 32 MiB).
    pub fn tool_service(&self) -> ToolServiceServer<Self> {
        ToolServiceServer::new(self.clone())
            .max_decoding_message_size(tools::MAX_COMPONENT_BYTES + 1024 * 1024)
    }
}

#[tonic::async_trait]
impl TaskService for HubGrpc {
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<TaskView>, Status> {
        let subject = match request.get_ref().tool.as_str() {
            "" => Subject::Fleet,
            tool => Subject::Tool(tool),
        };
        let claims = self.write(&request, subject, "submit tasks").await?;
        let r = request.into_inner();
        let gate = supervision::check_submit(self.state(), &claims, &r.tool, &r.via, &r.approval)
            .await
            .map_err(|refusal| {
                let mut status = tonic::Status::permission_denied(refusal.to_string());
                if let supervision::Refusal::NeedsApproval { key, .. } = &refusal {
                    status = tonic::Status::failed_precondition(refusal.to_string());
                    if let Ok(value) = key.parse() {
                        status
                            .metadata_mut()
                            .insert(supervision::APPROVAL_KEY_METADATA, value);
                    }
                }
                status
            })?;
        let idempotency_key = match gate {
            supervision::Gate::Open => r.idempotency_key,
            supervision::Gate::Approved {
                idempotency_key, ..
            } => idempotency_key,
        };
        let spec = SubmitSpec {
            tool: r.tool,
            command: r.command,
            input: r.input,
            requirements: RequirementsSpec::from_proto(r.requirements.as_ref()),
            idempotency_key,
            max_attempts: r.max_attempts,
            timeout_ms: r.timeout_ms,
            workdir: r.workdir,
        };
        let submitted = tasks::submit(self.state_arc(), spec).await?;
        crate::audit::note_target(&submitted.task.id);
        Ok(Response::new(views::task_view(&submitted.task)))
    }

    async fn get_task(&self, request: Request<TaskRef>) -> Result<Response<TaskView>, Status> {
        let task = self
            .task_for(&request, &request.get_ref().id, Access::Read, "read tasks")
            .await?;
        Ok(Response::new(views::task_view(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        self.read(&request, Subject::Fleet, "list tasks").await?;
        let r = request.get_ref();
        let page = tasks::list(
            self.state(),
            Some(r.status.as_str()),
            r.limit,
            Some(&r.before),
        )
        .await?;
        Ok(Response::new(ListTasksResponse {
            tasks: page.tasks.iter().map(views::task_view).collect(),
            next_before: page.next_before.unwrap_or_default(),
        }))
    }

    async fn cancel_task(&self, request: Request<TaskRef>) -> Result<Response<TaskView>, Status> {
        crate::audit::note_target(&request.get_ref().id);
        self.task_for(
            &request,
            &request.get_ref().id,
            Access::Write,
            "cancel tasks",
        )
        .await?;
        let task = tasks::cancel(self.state_arc(), &request.get_ref().id).await?;
        Ok(Response::new(views::task_view(&task)))
    }

    async fn wait_task(
        &self,
        request: Request<WaitTaskRequest>,
    ) -> Result<Response<TaskView>, Status> {
        self.task_for(&request, &request.get_ref().id, Access::Read, "read tasks")
            .await?;
        let r = request.get_ref();
        let wait = Duration::from_millis(r.wait_ms).min(MAX_WAIT);
        let task = tasks::wait(self.state(), &r.id, wait).await?;
        Ok(Response::new(views::task_view(&task)))
    }

    type TaskLogsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<AgentLogEntry, Status>> + Send>>;

    async fn task_logs(
        &self,
        request: Request<TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        self.task_for(
            &request,
            &request.get_ref().id,
            Access::Read,
            "read task output",
        )
        .await?;
        let r = request.into_inner();
        let (tail, live) = tasks::follow_log(self.state(), &r.id).await?;
        use futures::StreamExt as _;
        let retained = futures::stream::iter(tail);
        let entry = crate::api::grpc_agents::entry;
        if !r.follow {
            return Ok(Response::new(Box::pin(retained.map(move |e| Ok(entry(e))))));
        }
        let all = retained.chain(crate::work::output::follow(live));
        Ok(Response::new(Box::pin(all.map(move |e| Ok(entry(e))))))
    }
}

#[tonic::async_trait]
impl ToolService for HubGrpc {
    async fn push_tool(
        &self,
        request: Request<PushToolRequest>,
    ) -> Result<Response<ToolView>, Status> {
        crate::audit::note_target(&request.get_ref().name);
        self.write(&request, Subject::Fleet, "push tools").await?;
        let r = request.into_inner();
        let signature = r
            .signature
            .as_ref()
            .map(|s| outpost_trust::signing::ToolSignature {
                publisher: s.publisher.clone(),
                signature: s.signature.clone(),
            });
        let tool = tools::push(
            self.state_arc(),
            &r.name,
            r.component,
            &r.policy_toml,
            signature.as_ref(),
        )
        .await?;
        Ok(Response::new(tools::view(&tool)))
    }

    async fn list_tools(
        &self,
        request: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        let claims = self.read(&request, Subject::Tools, "list tools").await?;
        let rows = tools::list(self.state()).await?;
        Ok(Response::new(ListToolsResponse {
            tools: rows
                .iter()
                .filter(|tool| tools::may_call(&claims, &tool.name))
                .map(tools::view)
                .collect(),
        }))
    }

    async fn inspect_tool(&self, request: Request<ToolRef>) -> Result<Response<ToolView>, Status> {
        let name = &request.get_ref().name;
        self.read(&request, Subject::Tool(name), "read tools")
            .await?;
        let tool = tools::inspect(self.state(), &request.get_ref().name).await?;
        Ok(Response::new(tools::view(&tool)))
    }
}

impl From<TaskError> for tonic::Status {
    fn from(e: TaskError) -> Self {
        match &e {
            TaskError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
            TaskError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            TaskError::Conflict(_) => tonic::Status::failed_precondition(e.to_string()),
            TaskError::Store(_) | TaskError::Internal(_) => tonic::Status::internal(e.to_string()),
        }
    }
}
