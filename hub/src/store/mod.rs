//! The hub's durable state behind one trait, [`Store`].
//!
//! [`SqlStore`] implements it for SQLite (the embedded default, WAL, in the data dir) and for
//! PostgreSQL (several hubs sharing one database), each with its own migrations under
//! `hub/migrations/`. [`MemoryStore`] is the in-memory twin for unit tests of logic above the store.

mod memory;
mod sql;

pub use memory::MemoryStore;
pub use sql::SqlStore;

use async_trait::async_trait;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with this key exists already.
    #[error("{what} {id:?} already exists")]
    Duplicate {
        /// Kind of row.
        what: &'static str,
        /// Its key.
        id: String,
    },
    /// No such row.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// Kind of row.
        what: &'static str,
        /// Its key.
        id: String,
    },
    /// The operation would break a rule (e.g. deleting a node with active agents).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL names no supported database.
    #[error("unsupported storage URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
}

/// A node in the registry, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeRow {
    /// Stable unique id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Where the hub can reach the node's gRPC service.
    pub grpc_target: String,
    /// TLS SNI override.
    pub tls_server_name: String,
    /// Base directory for `create_worktree`.
    pub default_worktree_root: String,
    /// SHA-256 of the public key the node joined with; `None` until it joins.
    pub public_key_sha256: Option<String>,
    /// When it joined.
    pub joined_at_ms: Option<i64>,
    /// Operator asked to drain it.
    pub draining: bool,
    /// Last status recorded (`online`, `offline`, `fenced`).
    pub status: String,
    /// Why, when offline or fenced.
    pub status_reason: String,
    /// Last heartbeat persisted.
    pub last_heartbeat_ms: Option<i64>,
    /// Encoded `outpost.v1.Capabilities`.
    pub capabilities: Option<Vec<u8>>,
    /// Created.
    pub created_at_ms: i64,
    /// Last changed by an operator or a join.
    pub updated_at_ms: i64,
}

/// A one-shot or multi-use bootstrap token (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Public id.
    pub id: String,
    /// HMAC key derived from the secret.
    pub proof_key: Vec<u8>,
    /// Joins left.
    pub uses_left: i64,
    /// Expiry.
    pub expires_at_ms: i64,
    /// Created.
    pub created_at_ms: i64,
}

/// An outstanding join challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRow {
    /// Public id.
    pub id: String,
    /// The node id it was issued for.
    pub node_id: String,
    /// The nonce.
    pub nonce: Vec<u8>,
    /// Expiry.
    pub expires_at_ms: i64,
}

/// Outcome of binding a joined key to a node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// New node, or a registered one that had no key yet.
    Bound,
    /// Same key as before (a node re-joining after losing its certificate but not its key).
    AlreadyBound,
    /// Another key holds this id.
    HeldByAnotherKey,
}

/// What a join writes.
#[derive(Debug, Clone)]
pub struct JoinedNode<'a> {
    /// Node id.
    pub id: &'a str,
    /// Display name (used only when the node is new).
    pub name: &'a str,
    /// gRPC target (used only when the registry has none).
    pub grpc_target: &'a str,
    /// Public key digest.
    pub public_key_sha256: &'a str,
    /// Now.
    pub now_ms: i64,
}

/// Durable hub state.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Adds a node to the registry; [`StoreError::Duplicate`] if the id exists.
    async fn insert_node(&self, node: &NodeRow) -> Result<(), StoreError>;
    /// One node.
    async fn get_node(&self, id: &str) -> Result<Option<NodeRow>, StoreError>;
    /// Every node, by id.
    async fn list_nodes(&self) -> Result<Vec<NodeRow>, StoreError>;
    /// Replaces the operator-set fields (name, grpc_target, tls_server_name, default_worktree_root).
    async fn update_node_record(&self, node: &NodeRow) -> Result<(), StoreError>;
    /// Deletes a node; [`StoreError::Conflict`] while it has active agents.
    async fn delete_node(&self, id: &str) -> Result<(), StoreError>;
    /// Sets or clears draining.
    async fn set_draining(&self, id: &str, draining: bool, now_ms: i64) -> Result<(), StoreError>;
    /// Records a status change.
    async fn set_status(&self, id: &str, status: &str, reason: &str) -> Result<(), StoreError>;
    /// Records the latest heartbeat times of many nodes at once.
    async fn record_heartbeats(&self, beats: &[(String, i64)]) -> Result<(), StoreError>;
    /// Stores a node's capabilities.
    async fn set_capabilities(&self, id: &str, capabilities: &[u8]) -> Result<(), StoreError>;
    /// Binds a joined key to a node id, creating the node when new; refuses another key.
    async fn bind_joined_node(&self, node: &JoinedNode<'_>) -> Result<BindOutcome, StoreError>;
    /// Agents on a node that are not stopped.
    async fn count_active_agents(&self, node_id: &str) -> Result<i64, StoreError>;
    /// Records an agent (the agents API builds on this).
    async fn insert_agent(
        &self,
        id: &str,
        node_id: &str,
        name: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Stores a new bootstrap token.
    async fn insert_token(&self, token: &TokenRow) -> Result<(), StoreError>;
    /// One token.
    async fn get_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError>;
    /// Uses a token once, atomically; false when expired or used up.
    async fn consume_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Stores a join challenge.
    async fn insert_challenge(&self, challenge: &ChallengeRow) -> Result<(), StoreError>;
    /// Removes and returns a challenge, so it can be answered once only.
    async fn take_challenge(&self, id: &str) -> Result<Option<ChallengeRow>, StoreError>;
    /// Drops expired challenges; returns how many.
    async fn purge_challenges(&self, now_ms: i64) -> Result<u64, StoreError>;
}
