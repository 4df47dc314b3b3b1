//! The hub's internal gRPC API (tonic over rustls): join, bootstrap tokens and the node registry,
//! plus the standard health and reflection services so `grpcurl` can list and call them.
//!
//! Every call except the join handshake carries `authorization: Bearer <JWT>`; in `mtls` mode it
//! must also come over a connection with a client certificate signed by the hub CA.

use std::sync::Arc;

use outpost_proto::v1::join_service_server::{JoinService, JoinServiceServer};
use outpost_proto::v1::node_registry_server::{NodeRegistry, NodeRegistryServer};
use outpost_proto::v1::token_service_server::{TokenService, TokenServiceServer};
use outpost_proto::v1::{
    BeginJoinRequest, BeginJoinResponse, Capabilities, CompleteJoinRequest, CompleteJoinResponse,
    CreateBootstrapTokenRequest, CreateBootstrapTokenResponse, DeleteNodeResponse,
    DrainNodeRequest, ListNodesRequest, ListNodesResponse, NodeHealth, NodeRecord, NodeRef,
    NodeView, UpdateNodeRequest,
};
use outpost_trust::auth::{AuthError, Claims, Role};
use tonic::{Request, Response, Status};

use crate::fleet::registry::{self, NodePatch};
use crate::state::HubState;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read the registry (admin, viewer, or a node reading itself).
    Read,
    /// Change anything (admin).
    Write,
}

/// Checks transport (mTLS) and JWT; returns the caller's claims.
pub fn authorize<T>(
    state: &HubState,
    request: &Request<T>,
    access: Access,
    action: &str,
) -> Result<Claims, Status> {
    if state.mtls && request.peer_certs().is_none_or(|certs| certs.is_empty()) {
        return Err(Status::unauthenticated(
            "mTLS mode: this call needs a client certificate signed by the hub CA (cert_dir/client.pem)",
        ));
    }
    let header = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated(AuthError::Missing.to_string()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .ok_or_else(|| Status::unauthenticated("authorization header must be `Bearer <token>`"))?;
    let claims = state
        .auth
        .verify(token.trim())
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let allowed = match (access, claims.role) {
        (_, Role::Admin) | (Access::Read, Role::Viewer | Role::Node) => true,
        (Access::Write, _) => false,
    };
    if !allowed {
        return Err(Status::permission_denied(
            AuthError::Forbidden {
                role: claims.role,
                action: action.into(),
            }
            .to_string(),
        ));
    }
    Ok(claims)
}

fn node_may_only_see_itself(claims: &Claims, id: &str) -> Result<(), Status> {
    if claims.role == Role::Node && claims.sub != id {
        return Err(Status::permission_denied(format!(
            "node {:?} may only read its own record",
            claims.sub
        )));
    }
    Ok(())
}

/// Implements the gRPC services over [`HubState`].
#[derive(Debug, Clone)]
pub struct HubGrpc {
    state: Arc<HubState>,
}

impl HubGrpc {
    /// Services over `state`.
    pub fn new(state: Arc<HubState>) -> Self {
        Self { state }
    }

    /// The join service (no JWT: the bootstrap-token proof authenticates).
    pub fn join_service(&self) -> JoinServiceServer<Self> {
        JoinServiceServer::new(self.clone())
    }

    /// The token service.
    pub fn token_service(&self) -> TokenServiceServer<Self> {
        TokenServiceServer::new(self.clone())
    }

    /// The registry service.
    pub fn registry_service(&self) -> NodeRegistryServer<Self> {
        NodeRegistryServer::new(self.clone())
    }

    /// The shared hub state.
    pub fn state(&self) -> &HubState {
        &self.state
    }

    /// The shared hub state, for work that outlives the call.
    pub fn state_arc(&self) -> &Arc<HubState> {
        &self.state
    }
}

#[tonic::async_trait]
impl JoinService for HubGrpc {
    async fn begin_join(
        &self,
        request: Request<BeginJoinRequest>,
    ) -> Result<Response<BeginJoinResponse>, Status> {
        Ok(Response::new(
            crate::credentials::join::begin(&self.state, &request.get_ref().node_id).await?,
        ))
    }

    async fn complete_join(
        &self,
        request: Request<CompleteJoinRequest>,
    ) -> Result<Response<CompleteJoinResponse>, Status> {
        Ok(Response::new(
            crate::credentials::join::complete(&self.state, request.get_ref()).await?,
        ))
    }
}

#[tonic::async_trait]
impl TokenService for HubGrpc {
    async fn create_bootstrap_token(
        &self,
        request: Request<CreateBootstrapTokenRequest>,
    ) -> Result<Response<CreateBootstrapTokenResponse>, Status> {
        authorize(
            &self.state,
            &request,
            Access::Write,
            "create bootstrap tokens",
        )?;
        let r = request.get_ref();
        Ok(Response::new(
            crate::credentials::join::create_token(&self.state, r.ttl_seconds, r.uses).await?,
        ))
    }
}

#[tonic::async_trait]
impl NodeRegistry for HubGrpc {
    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let claims = authorize(&self.state, &request, Access::Read, "list nodes")?;
        let mut nodes = registry::list(&self.state).await?;
        if claims.role == Role::Node {
            nodes.retain(|n| n.record.as_ref().is_some_and(|r| r.id == claims.sub));
        }
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, request: Request<NodeRef>) -> Result<Response<NodeView>, Status> {
        let claims = authorize(&self.state, &request, Access::Read, "read nodes")?;
        node_may_only_see_itself(&claims, &request.get_ref().id)?;
        Ok(Response::new(
            registry::get(&self.state, &request.get_ref().id).await?,
        ))
    }

    async fn node_health(&self, request: Request<NodeRef>) -> Result<Response<NodeHealth>, Status> {
        let claims = authorize(&self.state, &request, Access::Read, "read node health")?;
        node_may_only_see_itself(&claims, &request.get_ref().id)?;
        Ok(Response::new(
            registry::health(&self.state, &request.get_ref().id).await?,
        ))
    }

    async fn node_capabilities(
        &self,
        request: Request<NodeRef>,
    ) -> Result<Response<Capabilities>, Status> {
        let claims = authorize(
            &self.state,
            &request,
            Access::Read,
            "read node capabilities",
        )?;
        node_may_only_see_itself(&claims, &request.get_ref().id)?;
        Ok(Response::new(
            registry::capabilities(&self.state, &request.get_ref().id).await?,
        ))
    }

    async fn register_node(
        &self,
        request: Request<NodeRecord>,
    ) -> Result<Response<NodeView>, Status> {
        authorize(&self.state, &request, Access::Write, "register nodes")?;
        Ok(Response::new(
            registry::register(&self.state, request.into_inner()).await?,
        ))
    }

    async fn update_node(
        &self,
        request: Request<UpdateNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        authorize(&self.state, &request, Access::Write, "update nodes")?;
        let r = request.into_inner();
        let patch = NodePatch {
            name: r.name,
            grpc_target: r.grpc_target,
            tls_server_name: r.tls_server_name,
            default_worktree_root: r.default_worktree_root,
        };
        Ok(Response::new(
            registry::update(&self.state, &r.id, patch).await?,
        ))
    }

    async fn delete_node(
        &self,
        request: Request<NodeRef>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        authorize(&self.state, &request, Access::Write, "delete nodes")?;
        let id = request.into_inner().id;
        registry::delete(&self.state, &id).await?;
        Ok(Response::new(DeleteNodeResponse { id }))
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        authorize(&self.state, &request, Access::Write, "drain nodes")?;
        let r = request.into_inner();
        Ok(Response::new(
            registry::drain(&self.state, &r.id, r.drain).await?,
        ))
    }
}
