//! Credentials shared by hub and node: JWTs (HS256 with issuer, audience, expiry and a clock-skew
//! leeway) and the join proof (an HMAC over the hub's nonce, the node id and the CSR digest, keyed
//! by the bootstrap token, which therefore never crosses the wire).

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: registry writes, tokens.
    Admin,
    /// Read-only.
    Viewer,
    /// A node, acting only as itself (`sub` = node id).
    Node,
    /// An AI agent's credential (MCP): may call only the tools named in [`Claims::tools`]
    /// (`nodes` among them for the fleet tool), and read nothing else.
    Agent,
    /// One actor's credential (`sub` = the actor id): its own mailbox, triggers, team and
    /// permission requests, nothing else. A node hands one to each agent run.
    Actor,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Node => "node",
            Role::Agent => "agent",
            Role::Actor => "actor",
        })
    }
}

/// Claims of every Outpost JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: a node id, or the operator's name.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Node credentials: hex SHA-256 of the public key (SubjectPublicKeyInfo) the node joined
    /// with, so the credential holds only while the registry binds the node to that key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Agent credentials: the tools this credential may call (`nodes` for the fleet tool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

impl Claims {
    /// The claims a token says it carries, **not verified**: for a client choosing what to
    /// show (the hub verifies every call). `None` when it is not a JWT.
    pub fn unverified(token: &str) -> Option<Self> {
        use base64::Engine as _;
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether an agent credential names `tool` (any other role: false; their rule is the role).
    pub fn names_tool(&self, tool: &str) -> bool {
        self.role == Role::Agent && self.tools.iter().any(|t| t == tool)
    }
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential at all.
    #[error("missing bearer token")]
    Missing,
    /// The token is expired beyond the leeway.
    #[error("token expired")]
    Expired,
    /// Wrong `aud`.
    #[error("token has the wrong audience (expected {expected:?})")]
    WrongAudience {
        /// The audience this hub accepts.
        expected: String,
    },
    /// Wrong `iss`.
    #[error("token has the wrong issuer (expected {expected:?})")]
    WrongIssuer {
        /// The issuer this hub accepts.
        expected: String,
    },
    /// The signature does not verify with this hub's secret.
    #[error("token signature does not verify (shared_secret mismatch?)")]
    BadSignature,
    /// Not a JWT, or not one of ours.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// A node credential whose node is gone from the registry, or bound to another key now.
    #[error("node credential no longer holds: {0}")]
    Revoked(String),
    /// The credential is valid but may not do this.
    #[error("role {role} may not {action}")]
    Forbidden {
        /// The caller's role.
        role: Role,
        /// What it tried.
        action: String,
    },
}

/// Mints and verifies JWTs with one HS256 secret.
#[derive(Clone)]
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    audience: String,
    leeway_seconds: u64,
}

impl fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenAuthority {
    /// An authority for `secret`, issuer and audience.
    pub fn new(secret: &[u8], issuer: &str, audience: &str, leeway_seconds: u64) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_seconds,
        }
    }

    /// Mints a token for `sub` with `role`, valid from `now_s` for `ttl_s` seconds.
    pub fn issue(
        &self,
        sub: &str,
        role: Role,
        now_s: i64,
        ttl_s: i64,
    ) -> Result<String, AuthError> {
        self.mint(sub, role, "", Vec::new(), now_s, ttl_s)
    }

    /// An agent credential for `sub` that may call only `tools`.
    pub fn issue_agent(
        &self,
        sub: &str,
        tools: Vec<String>,
        now_s: i64,
        ttl_s: i64,
    ) -> Result<String, AuthError> {
        if tools.is_empty() {
            return Err(AuthError::Malformed(
                "an agent credential names at least one tool".into(),
            ));
        }
        self.mint(sub, Role::Agent, "", tools, now_s, ttl_s)
    }

    /// [`issue`](Self::issue) bound to the key with hex SHA-256 `key` (a node's credential).
    pub fn issue_bound(
        &self,
        sub: &str,
        role: Role,
        key: &str,
        now_s: i64,
        ttl_s: i64,
    ) -> Result<String, AuthError> {
        self.mint(sub, role, key, Vec::new(), now_s, ttl_s)
    }

    fn mint(
        &self,
        sub: &str,
        role: Role,
        key: &str,
        tools: Vec<String>,
        now_s: i64,
        ttl_s: i64,
    ) -> Result<String, AuthError> {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.into(),
            role,
            iat: now_s,
            exp: now_s.saturating_add(ttl_s),
            key: key.into(),
            tools,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Malformed(e.to_string()))
    }

    /// Verifies signature, issuer, audience and expiry (with leeway); returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_with(token, true)
    }

    /// [`verify`](Self::verify) without the expiry check: for a node's session hello, where
    /// the node's certificate (checked by TLS) and its registry binding authenticate the node,
    /// and the JWT, however old, must still be this hub's, for this node and key. The hub
    /// answers the hello with a fresh one.
    pub fn verify_ignoring_expiry(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_with(token, false)
    }

    fn verify_with(&self, token: &str, check_expiry: bool) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = check_expiry;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.leeway = self.leeway_seconds;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience {
                        expected: self.audience.clone(),
                    },
                    ErrorKind::InvalidIssuer => AuthError::WrongIssuer {
                        expected: self.issuer.clone(),
                    },
                    ErrorKind::InvalidSignature => AuthError::BadSignature,
                    other => AuthError::Malformed(format!("{other:?}")),
                }
            })
    }
}

/// Token id used for the static `[internal_grpc.bootstrap] token`.
pub const STATIC_TOKEN_ID: &str = "static";

/// A bootstrap token split into the id the hub looks it up by and the secret that keys the proof.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// Public id (`static` for the configured token).
    pub id: String,
    secret: String,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl BootstrapToken {
    /// Parses a token as printed by `outpost token create` (`<16 hex id>.<secret>`); any other
    /// text is the static token.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        if let Some((id, secret)) = text.split_once('.')
            && id.len() == 16
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && !secret.is_empty()
        {
            return Self {
                id: id.to_ascii_lowercase(),
                secret: secret.into(),
            };
        }
        Self {
            id: STATIC_TOKEN_ID.into(),
            secret: text.into(),
        }
    }

    /// A fresh random token.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        let id: [u8; 8] = ring::rand::generate(&rng)?.expose();
        let secret: [u8; 24] = ring::rand::generate(&rng)?.expose();
        use base64::Engine as _;
        Ok(Self {
            id: hex::encode(id),
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        })
    }

    /// The whole token text, `<id>.<secret>` (for the static token, the secret alone).
    pub fn text(&self) -> String {
        if self.id == STATIC_TOKEN_ID {
            self.secret.clone()
        } else {
            format!("{}.{}", self.id, self.secret)
        }
    }

    /// The HMAC key derived from the secret; the hub stores this, never the secret.
    pub fn proof_key(&self) -> [u8; 32] {
        derive_proof_key(&self.secret)
    }
}

/// Key of the join proof for a token secret: SHA-256("outpost-join-key-v1" | secret).
pub fn derive_proof_key(secret: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"outpost-join-key-v1");
    ctx.update(secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn proof_message(nonce: &[u8], node_id: &str, csr_der: &[u8]) -> Vec<u8> {
    let csr_digest = digest::digest(&digest::SHA256, csr_der);
    let mut msg = Vec::with_capacity(16 + nonce.len() + node_id.len() + 32 + 8);
    msg.extend_from_slice(b"outpost-join-v1");
    for part in [nonce, node_id.as_bytes(), csr_digest.as_ref()] {
        msg.extend_from_slice(&(part.len() as u32).to_be_bytes());
        msg.extend_from_slice(part);
    }
    msg
}

/// The node's answer to a join challenge.
pub fn join_proof(proof_key: &[u8; 32], nonce: &[u8], node_id: &str, csr_der: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, proof_key);
    hmac::sign(&key, &proof_message(nonce, node_id, csr_der))
        .as_ref()
        .to_vec()
}

/// Checks a join answer in constant time.
pub fn verify_join_proof(
    proof_key: &[u8; 32],
    nonce: &[u8],
    node_id: &str,
    csr_der: &[u8],
    proof: &[u8],
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, proof_key);
    hmac::verify(&key, &proof_message(nonce, node_id, csr_der), proof).is_ok()
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn jwt_round_trip_and_refusals() {
        let auth = TokenAuthority::new(b"0123456789abcdef0123", "outpost", "outpost-internal", 5);
        let token = auth.issue("node-1", Role::Node, now(), 60).unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(claims.sub, "node-1");
        assert_eq!(claims.role, Role::Node);

        let other_aud = TokenAuthority::new(b"0123456789abcdef0123", "outpost", "elsewhere", 5);
        assert!(matches!(
            other_aud.verify(&token),
            Err(AuthError::WrongAudience { .. })
        ));
        let other_iss =
            TokenAuthority::new(b"0123456789abcdef0123", "someone", "outpost-internal", 5);
        assert!(matches!(
            other_iss.verify(&token),
            Err(AuthError::WrongIssuer { .. })
        ));
        let other_secret =
            TokenAuthority::new(b"a-different-secret-000", "outpost", "outpost-internal", 5);
        assert_eq!(other_secret.verify(&token), Err(AuthError::BadSignature));
        assert!(matches!(
            auth.verify("not.a.jwt"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn agent_credentials_carry_their_tools_and_need_one() {
        let auth = TokenAuthority::new(b"0123456789abcdef0123", "outpost", "outpost-internal", 5);
        let token = auth
            .issue_agent("bot", vec!["echo".into(), "nodes".into()], now(), 60)
            .unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(claims.role, Role::Agent);
        assert!(claims.names_tool("echo") && claims.names_tool("nodes"));
        assert_eq!(Claims::unverified(&token), Some(claims.clone()));
        assert_eq!(Claims::unverified("not a token"), None);
        assert!(!claims.names_tool("gpu-job"));
        let admin = auth
            .verify(&auth.issue("a", Role::Admin, now(), 60).unwrap())
            .unwrap();
        assert!(admin.tools.is_empty() && !admin.names_tool("echo"));
        assert!(matches!(
            auth.issue_agent("bot", Vec::new(), now(), 60),
            Err(AuthError::Malformed(m)) if m.contains("at least one tool")
        ));
    }

    #[test]
    fn expiry_honours_leeway() {
        let auth = TokenAuthority::new(b"0123456789abcdef0123", "outpost", "outpost-internal", 30);
        let within = auth.issue("a", Role::Admin, now() - 100, 80).unwrap();
        assert!(
            auth.verify(&within).is_ok(),
            "expired 20 s ago, inside 30 s leeway"
        );
        let beyond = auth.issue("a", Role::Admin, now() - 100, 40).unwrap();
        assert_eq!(auth.verify(&beyond), Err(AuthError::Expired));
    }

    #[test]
    fn bootstrap_token_forms() {
        let t = BootstrapToken::generate().unwrap();
        let parsed = BootstrapToken::parse(&t.text());
        assert_eq!(parsed, t);
        assert_ne!(t.id, STATIC_TOKEN_ID);
        let s = BootstrapToken::parse("bootstrap-token-for-remote-nodes");
        assert_eq!(s.id, STATIC_TOKEN_ID);
        assert_eq!(s.text(), "bootstrap-token-for-remote-nodes");
    }

    #[test]
    fn join_proof_binds_every_input() {
        let key = derive_proof_key("secret");
        let proof = join_proof(&key, b"nonce", "node-1", b"csr");
        assert!(verify_join_proof(&key, b"nonce", "node-1", b"csr", &proof));
        assert!(!verify_join_proof(
            &key, b"nonce2", "node-1", b"csr", &proof
        ));
        assert!(!verify_join_proof(&key, b"nonce", "node-2", b"csr", &proof));
        assert!(!verify_join_proof(
            &key, b"nonce", "node-1", b"csr2", &proof
        ));
        assert!(!verify_join_proof(
            &derive_proof_key("other"),
            b"nonce",
            "node-1",
            b"csr",
            &proof
        ));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        let p1 = join_proof(&key, b"ab", "c", b"");
        assert!(!verify_join_proof(&key, b"a", "bc", b"", &p1));
    }
}
