//! The node side of joining: ask for a nonce, answer it with the token-keyed HMAC over (nonce,
//! node id, CSR digest), receive the signed certificate and the node JWT.

use std::time::Duration;

use outpost_proto::v1::join_service_client::JoinServiceClient;
use outpost_proto::v1::{BeginJoinRequest, CompleteJoinRequest};

use outpost_trust::auth::{BootstrapToken, join_proof};
use outpost_trust::grpc_channel::{self, ConnectError};
use outpost_trust::identity::{self, IdentityError, JoinedIdentity};

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The hub could not be reached.
    #[error(transparent)]
    Channel(#[from] ConnectError),
    /// Key or CSR generation failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The hub refused; its message says why.
    #[error("hub refused the join: {0}")]
    Refused(String),
    /// The hub answered something unusable.
    #[error("bad join response: {0}")]
    BadResponse(String),
}

/// What the node brings to a join.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    /// `https://host:port` of the hub's internal gRPC.
    pub hub_url: &'a str,
    /// The CA that signed the hub's certificate, PEM.
    pub ca_pem: &'a str,
    /// This node's id.
    pub node_id: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Bootstrap token.
    pub token: &'a BootstrapToken,
    /// Where the hub can reach this node's gRPC service, if anywhere.
    pub grpc_target: &'a str,
}

/// Longest a join waits in all for a hub that is busy with other joins.
const MAX_JOIN_WAIT: Duration = Duration::from_secs(120);

/// Runs the join handshake and returns the identity to store.
pub async fn join(request: JoinRequest<'_>) -> Result<JoinedIdentity, JoinError> {
    let channel = grpc_channel::connect(request.hub_url, request.ca_pem, None, None).await?;
    let mut client = JoinServiceClient::new(channel);
    let refused = |status: tonic::Status| {
        JoinError::Refused(format!("{:?}: {}", status.code(), status.message()))
    };
    // A hub busy with other joins says when to come back; a node waits that long (up to a
    // bound) rather than failing its start.
    let mut waited = Duration::ZERO;
    let challenge = loop {
        match client
            .begin_join(BeginJoinRequest {
                node_id: request.node_id.into(),
            })
            .await
        {
            Ok(answer) => break answer.into_inner(),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                let hint = status
                    .metadata()
                    .get("retry-after-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1000);
                let delay = Duration::from_millis(hint.clamp(50, 10_000));
                if waited + delay > MAX_JOIN_WAIT {
                    return Err(refused(status));
                }
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    reason = status.message(),
                    "the hub is busy with joins; waiting"
                );
                tokio::time::sleep(delay).await;
                waited += delay;
            }
            Err(status) => return Err(refused(status)),
        }
    };
    let (key, csr) = identity::new_key_and_csr(request.node_id)?;
    let csr_der = csr.der().to_vec();
    let csr_pem = csr.pem().map_err(IdentityError::from)?;
    let proof = join_proof(
        &request.token.proof_key(),
        &challenge.nonce,
        request.node_id,
        &csr_der,
    );
    let response = client
        .complete_join(CompleteJoinRequest {
            challenge_id: challenge.challenge_id,
            node_id: request.node_id.into(),
            csr_pem,
            token_id: request.token.id.clone(),
            proof,
            name: request.name.into(),
            grpc_target: request.grpc_target.into(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let quic_port = u16::try_from(response.quic_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            JoinError::BadResponse(format!("quic_port {} out of range", response.quic_port))
        })?;
    if response.certificate_pem.is_empty()
        || response.node_jwt.is_empty()
        || response.ca_pem.is_empty()
    {
        return Err(JoinError::BadResponse(
            "certificate, CA or JWT missing".into(),
        ));
    }
    Ok(JoinedIdentity {
        node_id: request.node_id.into(),
        certificate_pem: response.certificate_pem,
        key_pem: key.serialize_pem(),
        ca_pem: response.ca_pem,
        node_jwt: response.node_jwt,
        quic_port,
        hub_server_name: response.hub_server_name,
        hub_url: request.hub_url.into(),
    })
}
