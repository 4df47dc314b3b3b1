//! The gRPC audit service over [`crate::audit`]: a viewer or admin lists the log.

use outpost_proto::v1::audit_service_server::{AuditService, AuditServiceServer};
use outpost_proto::v1::{ListAuditRequest, ListAuditResponse};
use tonic::{Request, Response, Status};

use crate::api::grpc::{HubGrpc, Subject};

impl HubGrpc {
    /// The audit service.
    pub fn audit_service(&self) -> AuditServiceServer<Self> {
        AuditServiceServer::new(self.clone())
    }
}

#[tonic::async_trait]
impl AuditService for HubGrpc {
    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        self.read(&request, Subject::Fleet, "read the audit log")
            .await?;
        let r = request.get_ref();
        let rows = crate::audit::list(self.state(), r.since_ms, r.limit)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ListAuditResponse {
            entries: rows.iter().map(crate::api::views::audit_view).collect(),
        }))
    }
}
