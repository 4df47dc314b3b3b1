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
use outpost_trust::auth::Claims;
use tonic::{Request, Response, Status};

use crate::api::access;
pub use crate::api::access::{Access, Subject};
use crate::fleet::registry::{self, NodePatch};
use crate::state::HubState;

/// Checks transport (mTLS) and JWT, then applies [`access::permit`]; returns the caller's claims.
pub async fn authorize<T>(
    state: &HubState,
    request: &Request<T>,
    access: Access,
    subject: Subject<'_>,
    action: &str,
) -> Result<Claims, Status> {
    let claims = authenticate(state, request).await?;
    access::permit(&claims, access, subject, action)
        .map_err(|e| Status::permission_denied(e.to_string()))?;
    Ok(claims)
}

/// Checks transport (mTLS) and JWT; the caller's claims, for a rule applied after a lookup.
pub async fn authenticate<T>(state: &HubState, request: &Request<T>) -> Result<Claims, Status> {
    let in_process = request.extensions().get::<InProcess>().is_some();
    if !in_process
        && state.credentials.mtls()
        && request.peer_certs().is_none_or(|certs| certs.is_empty())
    {
        return Err(Status::unauthenticated(
            "mTLS mode: this call needs a client certificate signed by the hub CA (cert_dir/client.pem)",
        ));
    }
    let header = request
        .metadata()
        .get("authorization")
        .map(|value| value.to_str().unwrap_or_default());
    access::authenticate(state, header)
        .await
        .map_err(|e| Status::unauthenticated(e.to_string()))
}

/// Marks a call the hub makes to its own services in-process (the MCP endpoint calling on
/// behalf of its caller): no transport to check, only the caller's bearer JWT. Extensions are
/// set by the hub, never read from the wire.
#[derive(Debug, Clone, Copy)]
pub struct InProcess;

/// Largest join message accepted (the service anyone may call).
const MAX_JOIN_MESSAGE: usize = 64 * 1024;

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
        // Anyone may call it: a join carries an id, a CSR and a proof, nothing large.
        JoinServiceServer::new(self.clone()).max_decoding_message_size(MAX_JOIN_MESSAGE)
    }

    /// The token service.
    pub fn token_service(&self) -> TokenServiceServer<Self> {
        TokenServiceServer::new(self.clone())
    }

    /// The registry service.
    pub fn registry_service(&self) -> NodeRegistryServer<Self> {
        NodeRegistryServer::new(self.clone())
    }

    /// [`authorize`] for a read of `subject`.
    pub async fn read<T>(
        &self,
        request: &Request<T>,
        subject: Subject<'_>,
        action: &str,
    ) -> Result<Claims, Status> {
        authorize(&self.state, request, Access::Read, subject, action).await
    }

    /// [`authorize`] for a change to `subject`.
    pub async fn write<T>(
        &self,
        request: &Request<T>,
        subject: Subject<'_>,
        action: &str,
    ) -> Result<Claims, Status> {
        if let Subject::Node(id) = subject {
            crate::audit::note_target(id);
        }
        authorize(&self.state, request, Access::Write, subject, action).await
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
            crate::credentials::join::begin(
                &self.state,
                &request.get_ref().node_id,
                request.remote_addr().map(|addr| addr.ip()),
            )
            .await?,
        ))
    }

    async fn complete_join(
        &self,
        request: Request<CompleteJoinRequest>,
    ) -> Result<Response<CompleteJoinResponse>, Status> {
        let joined = crate::credentials::join::complete(&self.state, request.get_ref()).await?;
        // A join that succeeded is recorded with the node it admitted (one that failed had no
        // credential to name).
        let node_id = request.get_ref().node_id.clone();
        self.state.audit(crate::store::AuditRow {
            subject: node_id.clone(),
            role: "node".into(),
            surface: "grpc".into(),
            action: "/outpost.v1.JoinService/CompleteJoin".into(),
            target: node_id,
            outcome: "ok".into(),
            status: 0,
            ..crate::store::AuditRow::default()
        });
        Ok(Response::new(joined))
    }
}

#[tonic::async_trait]
impl TokenService for HubGrpc {
    async fn create_bootstrap_token(
        &self,
        request: Request<CreateBootstrapTokenRequest>,
    ) -> Result<Response<CreateBootstrapTokenResponse>, Status> {
        self.write(&request, Subject::Fleet, "create bootstrap tokens")
            .await?;
        let r = request.get_ref();
        let created =
            crate::credentials::join::create_token(&self.state, r.ttl_seconds, r.uses).await?;
        crate::audit::note_target(&format!("token {}", created.token_id));
        Ok(Response::new(created))
    }
}

#[tonic::async_trait]
impl NodeRegistry for HubGrpc {
    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.read(&request, Subject::Nodes, "list nodes").await?;
        let nodes = registry::list(&self.state).await?;
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, request: Request<NodeRef>) -> Result<Response<NodeView>, Status> {
        let id = &request.get_ref().id;
        self.read(&request, Subject::Node(id), "read nodes").await?;
        Ok(Response::new(
            registry::get(&self.state, &request.get_ref().id).await?,
        ))
    }

    async fn node_health(&self, request: Request<NodeRef>) -> Result<Response<NodeHealth>, Status> {
        let id = &request.get_ref().id;
        self.read(&request, Subject::Node(id), "read node health")
            .await?;
        Ok(Response::new(
            registry::health(&self.state, &request.get_ref().id).await?,
        ))
    }

    async fn node_capabilities(
        &self,
        request: Request<NodeRef>,
    ) -> Result<Response<Capabilities>, Status> {
        let id = &request.get_ref().id;
        self.read(&request, Subject::Node(id), "read node capabilities")
            .await?;
        Ok(Response::new(
            registry::capabilities(&self.state, &request.get_ref().id).await?,
        ))
    }

    async fn register_node(
        &self,
        request: Request<NodeRecord>,
    ) -> Result<Response<NodeView>, Status> {
        crate::audit::note_target(&request.get_ref().id);
        self.write(&request, Subject::Fleet, "register nodes")
            .await?;
        Ok(Response::new(
            registry::register(&self.state, request.into_inner()).await?,
        ))
    }

    async fn update_node(
        &self,
        request: Request<UpdateNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        let id = &request.get_ref().id;
        self.write(&request, Subject::Node(id), "update nodes")
            .await?;
        let r = request.into_inner();
        let patch = NodePatch {
            name: r.name,
            grpc_target: r.grpc_target,
            tls_server_name: r.tls_server_name,
            default_worktree_root: r.default_worktree_root,
            labels: r.replace_labels.then(|| r.labels.into_iter().collect()),
        };
        Ok(Response::new(
            registry::update(&self.state, &r.id, patch).await?,
        ))
    }

    async fn delete_node(
        &self,
        request: Request<NodeRef>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        let id = &request.get_ref().id;
        self.write(&request, Subject::Node(id), "delete nodes")
            .await?;
        let id = request.into_inner().id;
        registry::delete(&self.state, &id).await?;
        Ok(Response::new(DeleteNodeResponse { id }))
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        let id = &request.get_ref().id;
        self.write(&request, Subject::Node(id), "drain nodes")
            .await?;
        let r = request.into_inner();
        Ok(Response::new(
            registry::drain(&self.state, &r.id, r.drain).await?,
        ))
    }
}
