//! The hub side of joining a node: issue single-use nonces, check the token-keyed answer, sign the
//! node's CSR with the hub CA (the hub alone decides the certificate's name: SAN = node id), bind
//! the node id to that key, and mint the node JWT. Also creates bootstrap tokens.

use outpost_proto::v1::{
    BeginJoinResponse, CompleteJoinRequest, CompleteJoinResponse, CreateBootstrapTokenResponse,
};
use outpost_trust::auth::{BootstrapToken, STATIC_TOKEN_ID, verify_join_proof};

use crate::state::HubState;
use crate::store::{BindOutcome, ChallengeRow, JoinedNode, StoreError, TokenRow};

/// How long a join nonce may be answered.
pub const CHALLENGE_TTL_MS: i64 = 60_000;
/// Default bootstrap token lifetime.
pub const DEFAULT_TOKEN_TTL_S: u64 = 3600;

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// Bad node id.
    #[error("invalid node id: {0}")]
    InvalidNodeId(String),
    /// No such outstanding challenge: never issued, already answered (a replay), or purged.
    #[error("unknown or already answered join challenge (replayed answer?)")]
    UnknownChallenge,
    /// The challenge timed out.
    #[error("join challenge expired; start the join again")]
    ChallengeExpired,
    /// Answered for another node id than it was issued for.
    #[error("join challenge was issued for node {issued:?}, not {claimed:?}")]
    ChallengeForOtherNode {
        /// Issued for.
        issued: String,
        /// Claimed.
        claimed: String,
    },
    /// Token id unknown.
    #[error("unknown bootstrap token")]
    UnknownToken,
    /// Token expired.
    #[error("bootstrap token expired")]
    TokenExpired,
    /// Token used up.
    #[error("bootstrap token already used")]
    TokenUsedUp,
    /// HMAC does not verify.
    #[error("join proof does not verify: wrong bootstrap token")]
    BadProof,
    /// CSR unusable.
    #[error("{0}")]
    BadCsr(String),
    /// The name or gRPC target the node gave breaks the registry's rules.
    #[error("{0}")]
    InvalidRecord(String),
    /// The id is bound to another key.
    #[error(
        "node id {0:?} is already held by another key; delete the node on the hub before re-joining under that id"
    )]
    HeldByAnotherKey(String),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failure.
    #[error("signing: {0}")]
    Signing(String),
    /// Too many joins began lately (hub-wide or from this address).
    #[error(transparent)]
    RateLimited(#[from] crate::credentials::join_limit::RateLimited),
}

impl From<AdmissionError> for tonic::Status {
    fn from(e: AdmissionError) -> Self {
        use tonic::Status;
        match e {
            AdmissionError::InvalidNodeId(_)
            | AdmissionError::BadCsr(_)
            | AdmissionError::InvalidRecord(_) => Status::invalid_argument(e.to_string()),
            AdmissionError::HeldByAnotherKey(_) => Status::already_exists(e.to_string()),
            AdmissionError::RateLimited(limited) => {
                let mut status = Status::resource_exhausted(limited.to_string());
                if let Ok(value) = limited.retry_after_ms.to_string().parse() {
                    status.metadata_mut().insert(RETRY_AFTER_MS, value);
                }
                status
            }
            AdmissionError::Store(_) | AdmissionError::Signing(_) => {
                // The caller is not authenticated yet: the cause goes to the hub's log only.
                tracing::error!(error = %e, "join failed inside the hub");
                Status::internal("the hub could not complete the join; its log says why")
            }
            _ => Status::permission_denied(e.to_string()),
        }
    }
}

/// Bytes from the system's secure random generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], ring::error::Unspecified> {
    let rng = ring::rand::SystemRandom::new();
    ring::rand::generate(&rng).map(|r| r.expose())
}

fn join_random<const N: usize>() -> Result<[u8; N], AdmissionError> {
    random_bytes().map_err(|_| AdmissionError::Signing("random generator failed".into()))
}

/// The metadata key of a rate-limited join's answer: milliseconds until a join would pass.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Issues a nonce for `node_id`, when the join rate from `source` (and hub-wide) allows.
pub async fn begin(
    state: &HubState,
    node_id: &str,
    source: Option<std::net::IpAddr>,
) -> Result<BeginJoinResponse, AdmissionError> {
    state
        .credentials
        .admit_join(source, state.monotonic_ms().unsigned_abs())?;
    state
        .credentials
        .check_node_id(node_id)
        .map_err(AdmissionError::InvalidNodeId)?;
    let now = state.now_ms();
    let id = hex::encode(join_random::<16>()?);
    let nonce = join_random::<32>()?.to_vec();
    let expires_at_ms = now + CHALLENGE_TTL_MS;
    state
        .store()
        .insert_challenge(&ChallengeRow {
            id: id.clone(),
            node_id: node_id.into(),
            nonce: nonce.clone(),
            expires_at_ms,
        })
        .await?;
    Ok(BeginJoinResponse {
        challenge_id: id,
        nonce,
        expires_at_ms,
    })
}

/// Checks the answer and, when it holds, signs the node in.
pub async fn complete(
    state: &HubState,
    request: &CompleteJoinRequest,
) -> Result<CompleteJoinResponse, AdmissionError> {
    let name = if request.name.trim().is_empty() {
        request.node_id.as_str()
    } else {
        request.name.trim()
    };
    // What a node says of itself meets the registry's rules (it is shown to operators).
    crate::fleet::registry::validate_name(name)
        .and_then(|()| crate::fleet::registry::validate_grpc_target(&request.grpc_target, false))
        .map_err(|e| AdmissionError::InvalidRecord(e.to_string()))?;
    let now = state.now_ms();
    // Taking the challenge first makes every answer single-use, right or wrong.
    let challenge = state
        .store()
        .take_challenge(&request.challenge_id)
        .await?
        .ok_or(AdmissionError::UnknownChallenge)?;
    if challenge.expires_at_ms <= now {
        return Err(AdmissionError::ChallengeExpired);
    }
    if challenge.node_id != request.node_id {
        return Err(AdmissionError::ChallengeForOtherNode {
            issued: challenge.node_id,
            claimed: request.node_id.clone(),
        });
    }
    let one_shot = request.token_id != STATIC_TOKEN_ID;
    let proof_key: [u8; 32] = if one_shot {
        let token = state
            .store()
            .get_token(&request.token_id)
            .await?
            .ok_or(AdmissionError::UnknownToken)?;
        if token.expires_at_ms <= now {
            return Err(AdmissionError::TokenExpired);
        }
        if token.uses_left <= 0 {
            return Err(AdmissionError::TokenUsedUp);
        }
        token
            .proof_key
            .as_slice()
            .try_into()
            .map_err(|_| AdmissionError::UnknownToken)?
    } else {
        state
            .credentials
            .static_token_key
            .ok_or(AdmissionError::UnknownToken)?
    };
    let csr_der = crate::credentials::pki::csr_der_from_pem(&request.csr_pem)
        .map_err(|e| AdmissionError::BadCsr(e.to_string()))?;
    if !verify_join_proof(
        &proof_key,
        &challenge.nonce,
        &request.node_id,
        &csr_der,
        &request.proof,
    ) {
        return Err(AdmissionError::BadProof);
    }
    let (certificate_pem, spki) = state
        .credentials
        .sign_node_csr(&csr_der, &request.node_id)
        .map_err(|e| AdmissionError::BadCsr(e.to_string()))?;
    // Refuse before spending the token when the id is taken by another key.
    if let Some(existing) = state.store().get_node(&request.node_id).await?
        && existing
            .public_key_sha256
            .as_deref()
            .is_some_and(|k| k != spki)
    {
        return Err(AdmissionError::HeldByAnotherKey(request.node_id.clone()));
    }
    if one_shot && !state.store().consume_token(&request.token_id, now).await? {
        return Err(AdmissionError::TokenUsedUp);
    }
    let bound = state
        .store()
        .bind_joined_node(&JoinedNode {
            id: &request.node_id,
            name,
            grpc_target: &request.grpc_target,
            public_key_sha256: &spki,
            now_ms: now,
        })
        .await?;
    if bound == BindOutcome::HeldByAnotherKey {
        return Err(AdmissionError::HeldByAnotherKey(request.node_id.clone()));
    }
    let draining = state
        .store()
        .get_node(&request.node_id)
        .await?
        .is_some_and(|n| n.draining);
    state.fleet.liveness().add_known(&request.node_id, draining);
    let node_jwt = state
        .credentials
        .node_token(&request.node_id, &spki, now / 1000)
        .map_err(|e| AdmissionError::Signing(e.to_string()))?;
    tracing::info!(node_id = %request.node_id, token = %request.token_id, "node joined");
    Ok(CompleteJoinResponse {
        certificate_pem,
        ca_pem: state.credentials.ca.ca_pem().to_string(),
        node_jwt,
        quic_port: u32::from(state.fleet.quic_port()),
        hub_server_name: String::new(),
    })
}

/// Creates a bootstrap token valid for `ttl_s` seconds and `uses` joins.
pub async fn create_token(
    state: &HubState,
    ttl_s: u64,
    uses: u32,
) -> Result<CreateBootstrapTokenResponse, AdmissionError> {
    let token = BootstrapToken::generate()
        .map_err(|_| AdmissionError::Signing("random generator failed".into()))?;
    let now = state.now_ms();
    let ttl_s = if ttl_s == 0 {
        DEFAULT_TOKEN_TTL_S
    } else {
        ttl_s
    };
    let uses = if uses == 0 { 1 } else { uses };
    let expires_at_ms = now.saturating_add(
        i64::try_from(ttl_s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000),
    );
    state
        .store()
        .insert_token(&TokenRow {
            id: token.id.clone(),
            proof_key: token.proof_key().to_vec(),
            uses_left: i64::from(uses),
            expires_at_ms,
            created_at_ms: now,
        })
        .await?;
    Ok(CreateBootstrapTokenResponse {
        token: token.text(),
        token_id: token.id.clone(),
        expires_at_ms,
        uses,
    })
}
