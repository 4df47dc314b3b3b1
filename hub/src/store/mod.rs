//! The hub's durable state behind one trait, [`Store`].
//!
//! [`SqlStore`] implements it for SQLite (the embedded default, WAL, in the data dir) and for
//! PostgreSQL (several hubs sharing one database), each with its own migrations under
//! `hub/migrations/`. [`MemoryStore`] is the in-memory twin for unit tests of logic above the store.
//! The actor layer's rows and rules are in [`actors`].

pub mod actors;
mod memory;
mod memory_actors;
pub mod sql;

pub use memory::MemoryStore;
pub use sql::SqlStore;

use async_trait::async_trait;

pub use crate::work::tasks::lifecycle::{AttemptStatus, Guard, TaskStatus, UnknownStatus};

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
    /// The database file's mode could not be made owner-only.
    #[error("making {0} owner-only: {1}")]
    Files(String, std::io::Error),
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
    /// Labels an operator assigned (placement trusts them over what the node reports).
    pub labels: std::collections::BTreeMap<String, String>,
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

/// The statuses of an agent that hold a node (it may not be deleted while one does).
pub const ACTIVE_AGENT_STATUSES: [&str; 2] = ["starting", "running"];

/// An agent: a long-running program bound to a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentRow {
    /// Unique id (`agent-…`).
    pub id: String,
    /// The node it runs on.
    pub node_id: String,
    /// Display name.
    pub name: String,
    /// created | starting | running | exited | stopped | failed | lost
    pub status: String,
    /// What to run and under which limits (`work::agents::AgentSpec`, JSON).
    pub spec: String,
    /// Its starts so far (the current run's number).
    pub run: i64,
    /// How the last run exited.
    pub exit_code: Option<i64>,
    /// The signal that ended the last run.
    pub signal: Option<i64>,
    /// Why it failed, was lost or stopped.
    pub reason: String,
    /// Landlock as applied to the last run.
    pub landlock: String,
    /// Created.
    pub created_at_ms: i64,
    /// Last changed.
    pub updated_at_ms: i64,
    /// The current run started.
    pub started_at_ms: Option<i64>,
    /// The last run ended.
    pub finished_at_ms: Option<i64>,
}

/// One entry of the audit log: a write, who made it, through which surface, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditRow {
    /// Assigned by the store, increasing (0 before it is stored).
    pub id: i64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// The credential's subject.
    pub subject: String,
    /// Its role.
    pub role: String,
    /// `rest`, `grpc`, `console` or `mcp`.
    pub surface: String,
    /// What was asked: the route (`POST /api/agents/{id}/start`) or gRPC method.
    pub action: String,
    /// What it was asked of: the concrete path, or the node or token concerned.
    pub target: String,
    /// `ok`, `refused` (credential or role) or `failed`.
    pub outcome: String,
    /// The HTTP status, or the gRPC code.
    pub status: i64,
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

/// A tool pushed to the hub: a component and its policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolRow {
    /// Unique name tasks use.
    pub name: String,
    /// sha256 (hex) of the component.
    pub digest: String,
    /// Component size.
    pub size_bytes: i64,
    /// The component.
    pub component: Vec<u8>,
    /// policy.toml text.
    pub policy_toml: String,
    /// From `describe()`.
    pub version: String,
    /// From `describe()`.
    pub description: String,
    /// From `describe()`.
    pub input_schema: String,
    /// The publisher's public key (`ed25519:<base64>`), empty when unsigned.
    pub publisher: String,
    /// The publisher's signature over the component and policy (base64), empty when unsigned.
    pub signature: String,
    /// First push.
    pub created_at_ms: i64,
    /// Last push.
    pub updated_at_ms: i64,
}

/// A task, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskRow {
    /// Unique id.
    pub id: String,
    /// Tool name (empty for a native command).
    pub tool: String,
    /// Native command (empty for a tool), run by `/bin/sh -c`.
    pub command: String,
    /// Working directory of a native command (empty: the node's first safe path).
    pub workdir: String,
    /// Input text.
    pub input: String,
    /// Requirements, JSON.
    pub requirements: String,
    /// Retried submits with the same key return this task.
    pub idempotency_key: Option<String>,
    /// Where it is in its lifecycle.
    pub status: TaskStatus,
    /// Node of the current (or last) attempt.
    pub node_id: String,
    /// Why queued, or how it ended.
    pub reason: String,
    /// Placements so far.
    pub attempts: i64,
    /// Placements allowed.
    pub max_attempts: i64,
    /// Wall-time limit per attempt (0: the tool policy's).
    pub timeout_ms: i64,
    /// GPU indexes of the current placement, comma-separated.
    pub devices: String,
    /// Result text on success.
    pub output: Option<String>,
    /// Error kind on failure.
    pub error_kind: String,
    /// Error message on failure.
    pub error_message: String,
    /// Run time of the attempt that finished it.
    pub duration_us: i64,
    /// Fuel that attempt used.
    pub fuel_used: i64,
    /// Results that came from superseded attempts.
    pub late_results: i64,
    /// Submitted.
    pub created_at_ms: i64,
    /// Last change.
    pub updated_at_ms: i64,
    /// When the current attempt started on its node.
    pub started_at_ms: Option<i64>,
    /// When it ended.
    pub finished_at_ms: Option<i64>,
}

/// One placement of a task and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptRow {
    /// Task id.
    pub task_id: String,
    /// 1-based attempt number.
    pub attempt: i64,
    /// Where it ran.
    pub node_id: String,
    /// What the attempt came to.
    pub status: AttemptStatus,
    /// Result text.
    pub output: Option<String>,
    /// Error kind.
    pub error_kind: String,
    /// Error message.
    pub error_message: String,
    /// Placed.
    pub started_at_ms: i64,
    /// Ended.
    pub finished_at_ms: Option<i64>,
}

/// Durable hub state.
#[async_trait]
pub trait Store: actors::ActorStore + Send + Sync + std::fmt::Debug {
    /// Adds a node to the registry; [`StoreError::Duplicate`] if the id exists.
    async fn insert_node(&self, node: &NodeRow) -> Result<(), StoreError>;
    /// One node.
    async fn get_node(&self, id: &str) -> Result<Option<NodeRow>, StoreError>;
    /// Every node, by id.
    async fn list_nodes(&self) -> Result<Vec<NodeRow>, StoreError>;
    /// Replaces the operator-set fields (name, grpc_target, tls_server_name,
    /// default_worktree_root, labels).
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
    /// Agents on a node that are starting or running.
    async fn count_active_agents(&self, node_id: &str) -> Result<i64, StoreError>;
    /// Adds an agent (Duplicate when the id is taken, NotFound when the node is unknown).
    async fn insert_agent(&self, agent: &AgentRow) -> Result<(), StoreError>;
    /// Replaces an agent's row (NotFound when it is gone).
    async fn update_agent(&self, agent: &AgentRow) -> Result<(), StoreError>;
    /// One agent.
    async fn get_agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError>;
    /// Agents, by id; only those on `node` when given.
    async fn list_agents(&self, node: Option<&str>) -> Result<Vec<AgentRow>, StoreError>;
    /// Removes an agent (NotFound when it is gone).
    async fn delete_agent(&self, id: &str) -> Result<(), StoreError>;
    /// Adds or replaces a tool (its first push time is kept).
    async fn put_tool(&self, tool: &ToolRow) -> Result<(), StoreError>;
    /// One tool, component included.
    async fn get_tool(&self, name: &str) -> Result<Option<ToolRow>, StoreError>;
    /// One tool without its component (`component` is empty).
    async fn get_tool_meta(&self, name: &str) -> Result<Option<ToolRow>, StoreError>;
    /// Every tool by name, without components.
    async fn list_tools(&self) -> Result<Vec<ToolRow>, StoreError>;
    /// Stores a new task. When its idempotency key is taken, stores nothing and returns the
    /// task that holds the key; otherwise returns `task` as stored.
    async fn insert_task(&self, task: &TaskRow) -> Result<TaskRow, StoreError>;
    /// Stores a new task that was placed as it was submitted, with its first attempt, as one
    /// transaction where the backend has them. Idempotency as in [`Store::insert_task`]: when the
    /// key is taken nothing is stored (no attempt either) and the task holding it is returned.
    async fn insert_placed_task(
        &self,
        task: &TaskRow,
        attempt: &AttemptRow,
    ) -> Result<TaskRow, StoreError> {
        let stored = self.insert_task(task).await?;
        if stored.id == task.id {
            self.put_attempt(attempt).await?;
        }
        Ok(stored)
    }
    /// One task.
    async fn get_task(&self, id: &str) -> Result<Option<TaskRow>, StoreError>;
    /// Tasks in any of `statuses` (all when empty), newest first, at most `limit`; with
    /// `before` (a task's creation time and id) only tasks older than that one.
    async fn list_tasks(
        &self,
        statuses: &[TaskStatus],
        limit: u32,
        before: Option<(i64, &str)>,
    ) -> Result<Vec<TaskRow>, StoreError>;
    /// Tasks in any of `statuses`, oldest first (the queue order), at most `limit`.
    async fn queue(&self, statuses: &[TaskStatus], limit: u32) -> Result<Vec<TaskRow>, StoreError>;
    /// Writes `task` only if the stored row still has the status and attempt count of `guard`;
    /// false when another writer got there first.
    async fn update_task(&self, task: &TaskRow, guard: Guard) -> Result<bool, StoreError>;
    /// [`Store::update_task`] and, only when it wrote, [`Store::put_attempt`], as one
    /// transaction where the backend has them.
    async fn advance_task(
        &self,
        task: &TaskRow,
        guard: Guard,
        attempt: &AttemptRow,
    ) -> Result<bool, StoreError> {
        if !self.update_task(task, guard).await? {
            return Ok(false);
        }
        self.put_attempt(attempt).await?;
        Ok(true)
    }
    /// Adds one to a task's count of late results.
    async fn count_late_result(&self, id: &str) -> Result<(), StoreError>;
    /// Adds or replaces an attempt.
    async fn put_attempt(&self, attempt: &AttemptRow) -> Result<(), StoreError>;
    /// A task's attempts in order.
    async fn list_attempts(&self, task_id: &str) -> Result<Vec<AttemptRow>, StoreError>;
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
    /// Appends audit entries, in order (their ids are assigned here).
    async fn append_audit(&self, entries: &[AuditRow]) -> Result<(), StoreError>;
    /// Audit entries at or after `since_ms`, newest first, at most `limit`.
    async fn list_audit(&self, since_ms: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
    /// Drops audit entries older than `before_ms`; how many.
    async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Releases connections (waits for those in use); nothing for stores that hold none.
    async fn close(&self) {}
}

/// One behaviour suite run against every [`Store`]: in memory, SQLite, and PostgreSQL when
/// `OUTPOST_TEST_DATABASE_URL` is set.
#[cfg(test)]
mod conformance {
    use super::*;

    fn guard(status: TaskStatus, attempts: i64) -> Guard {
        Guard { status, attempts }
    }

    fn node(id: &str) -> NodeRow {
        NodeRow {
            id: id.into(),
            name: format!("Node {id}"),
            grpc_target: "https://n:1".into(),
            status: "offline".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            ..NodeRow::default()
        }
    }

    async fn exercise(store: &dyn Store) {
        // The audit log: appended in order, listed newest first from a time on.
        let entry = |at_ms: i64, action: &str| AuditRow {
            at_ms,
            subject: "ops".into(),
            role: "admin".into(),
            surface: "rest".into(),
            action: action.into(),
            target: "/api/x".into(),
            outcome: "ok".into(),
            status: 201,
            ..AuditRow::default()
        };
        store
            .append_audit(&[entry(10, "first"), entry(20, "second \"quoted\"")])
            .await
            .unwrap();
        store.append_audit(&[entry(30, "third")]).await.unwrap();
        let all = store.list_audit(0, 100).await.unwrap();
        let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["third", "second \"quoted\"", "first"]);
        assert!(all[0].id > all[1].id && all[1].id > all[2].id);
        assert_eq!(
            all[2],
            AuditRow {
                id: all[2].id,
                ..entry(10, "first")
            }
        );
        assert_eq!(store.list_audit(20, 100).await.unwrap().len(), 2);
        assert_eq!(store.list_audit(0, 1).await.unwrap()[0].action, "third");
        assert_eq!(store.prune_audit(20).await.unwrap(), 1);
        assert_eq!(store.list_audit(0, 100).await.unwrap().len(), 2);
        assert_eq!(store.prune_audit(20).await.unwrap(), 0);
        // Registry CRUD.
        store.insert_node(&node("a")).await.unwrap();
        assert!(matches!(
            store.insert_node(&node("a")).await,
            Err(StoreError::Duplicate { .. })
        ));
        store.insert_node(&node("b")).await.unwrap();
        let ids: Vec<String> = store
            .list_nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(ids, vec!["a", "b"]);
        let mut a = store.get_node("a").await.unwrap().unwrap();
        a.name = "Renamed".into();
        a.default_worktree_root = "/w".into();
        a.labels = [("zone".to_string(), "edge \"1\"".to_string())].into();
        a.updated_at_ms = 2;
        store.update_node_record(&a).await.unwrap();
        let got = store.get_node("a").await.unwrap().unwrap();
        assert_eq!(
            (
                got.name.as_str(),
                got.default_worktree_root.as_str(),
                got.updated_at_ms
            ),
            ("Renamed", "/w", 2)
        );
        assert_eq!(got.labels, a.labels);
        assert!(matches!(
            store.update_node_record(&node("zz")).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(store.get_node("zz").await.unwrap().is_none());

        // Live fields.
        store.set_draining("a", true, 3).await.unwrap();
        store.set_status("a", "online", "").await.unwrap();
        store
            .record_heartbeats(&[("a".into(), 77), ("b".into(), 78)])
            .await
            .unwrap();
        store.set_capabilities("a", &[1, 2, 3]).await.unwrap();
        let got = store.get_node("a").await.unwrap().unwrap();
        assert!(got.draining);
        assert_eq!(got.status, "online");
        assert_eq!(got.last_heartbeat_ms, Some(77));
        assert_eq!(got.capabilities.as_deref(), Some(&[1u8, 2, 3][..]));
        // The list reads every field as a single read does (b without capabilities).
        let listed = store.list_nodes().await.unwrap();
        assert_eq!(listed.len(), 2);
        for row in &listed {
            assert_eq!(Some(row), store.get_node(&row.id).await.unwrap().as_ref());
        }
        assert!(listed[1].capabilities.is_none());
        assert!(matches!(
            store.set_draining("zz", true, 3).await,
            Err(StoreError::NotFound { .. })
        ));

        // Join binding.
        let join = |id, key| JoinedNode {
            id,
            name: "J",
            grpc_target: "https://j:1",
            public_key_sha256: key,
            now_ms: 10,
        };
        assert_eq!(
            store.bind_joined_node(&join("j", "k1")).await.unwrap(),
            BindOutcome::Bound
        );
        assert_eq!(
            store.bind_joined_node(&join("j", "k1")).await.unwrap(),
            BindOutcome::AlreadyBound
        );
        assert_eq!(
            store.bind_joined_node(&join("j", "k2")).await.unwrap(),
            BindOutcome::HeldByAnotherKey
        );
        // A registered node without a key takes the first joiner's, keeps its own target.
        assert_eq!(
            store.bind_joined_node(&join("b", "kb")).await.unwrap(),
            BindOutcome::Bound
        );
        let b = store.get_node("b").await.unwrap().unwrap();
        assert_eq!(
            (
                b.public_key_sha256.as_deref(),
                b.grpc_target.as_str(),
                b.joined_at_ms
            ),
            (Some("kb"), "https://n:1", Some(10))
        );

        // Agents: round trip, update, list by node; active ones block deletion.
        let agent = AgentRow {
            id: "ag".into(),
            node_id: "a".into(),
            name: "builder".into(),
            status: "created".into(),
            spec: r#"{"command":"sh"}"#.into(),
            created_at_ms: 5,
            updated_at_ms: 5,
            ..AgentRow::default()
        };
        store.insert_agent(&agent).await.unwrap();
        assert!(matches!(
            store.insert_agent(&agent).await,
            Err(StoreError::Duplicate { .. })
        ));
        assert!(matches!(
            store
                .insert_agent(&AgentRow {
                    id: "ag2".into(),
                    node_id: "zz".into(),
                    ..agent.clone()
                })
                .await,
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.count_active_agents("a").await.unwrap(), 0);
        let running = AgentRow {
            status: "running".into(),
            run: 2,
            exit_code: Some(-1),
            signal: Some(9),
            reason: "r".into(),
            landlock: "full".into(),
            updated_at_ms: 7,
            started_at_ms: Some(6),
            finished_at_ms: Some(7),
            ..agent.clone()
        };
        store.update_agent(&running).await.unwrap();
        assert_eq!(store.get_agent("ag").await.unwrap(), Some(running.clone()));
        assert_eq!(store.list_agents(Some("a")).await.unwrap(), vec![running]);
        assert!(store.list_agents(Some("b")).await.unwrap().is_empty());
        assert!(matches!(
            store
                .update_agent(&AgentRow {
                    id: "nope".into(),
                    ..agent.clone()
                })
                .await,
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.count_active_agents("a").await.unwrap(), 1);
        assert!(matches!(
            store.delete_node("a").await,
            Err(StoreError::Conflict(_))
        ));
        assert!(
            store.get_node("a").await.unwrap().is_some(),
            "refused delete keeps the node"
        );
        store.delete_node("b").await.unwrap();
        assert!(matches!(
            store.delete_node("b").await,
            Err(StoreError::NotFound { .. })
        ));

        // Tokens: atomic, bounded use.
        let token = TokenRow {
            id: "t".into(),
            proof_key: vec![9; 32],
            uses_left: 2,
            expires_at_ms: 100,
            created_at_ms: 0,
        };
        store.insert_token(&token).await.unwrap();
        assert!(matches!(
            store.insert_token(&token).await,
            Err(StoreError::Duplicate { .. })
        ));
        assert_eq!(
            store.get_token("t").await.unwrap().unwrap().proof_key,
            vec![9; 32]
        );
        assert!(store.consume_token("t", 50).await.unwrap());
        assert!(!store.consume_token("t", 100).await.unwrap(), "expired");
        assert!(store.consume_token("t", 60).await.unwrap());
        assert!(!store.consume_token("t", 60).await.unwrap(), "used up");
        assert!(!store.consume_token("none", 0).await.unwrap());

        // Challenges: taken once.
        let ch = ChallengeRow {
            id: "c".into(),
            node_id: "j".into(),
            nonce: vec![1; 32],
            expires_at_ms: 20,
        };
        store.insert_challenge(&ch).await.unwrap();
        assert_eq!(store.take_challenge("c").await.unwrap(), Some(ch.clone()));
        assert_eq!(store.take_challenge("c").await.unwrap(), None);
        store
            .insert_challenge(&ChallengeRow {
                id: "old".into(),
                ..ch.clone()
            })
            .await
            .unwrap();
        store
            .insert_challenge(&ChallengeRow {
                id: "new".into(),
                expires_at_ms: 99,
                ..ch
            })
            .await
            .unwrap();
        assert_eq!(store.purge_challenges(50).await.unwrap(), 1);
        assert!(store.take_challenge("new").await.unwrap().is_some());

        exercise_tools_and_tasks(store).await;
    }

    fn task(id: &str, key: Option<&str>, created: i64) -> TaskRow {
        TaskRow {
            id: id.into(),
            tool: "echo".into(),
            input: "hi".into(),
            requirements: r#"{"gpus":0.5}"#.into(),
            workdir: "/data/w".into(),
            idempotency_key: key.map(Into::into),
            status: TaskStatus::Queued,
            reason: "waiting".into(),
            max_attempts: 3,
            created_at_ms: created,
            updated_at_ms: created,
            ..TaskRow::default()
        }
    }

    async fn exercise_tools_and_tasks(store: &dyn Store) {
        // Tools: upsert keeps the first push time, bytes round-trip exactly.
        let component: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let tool = ToolRow {
            name: "echo".into(),
            digest: "d1".into(),
            size_bytes: component.len() as i64,
            component: component.clone(),
            policy_toml: "[limits]\nfuel = 10\n".into(),
            version: "0.1.0".into(),
            created_at_ms: 5,
            updated_at_ms: 5,
            ..ToolRow::default()
        };
        store.put_tool(&tool).await.unwrap();
        store
            .put_tool(&ToolRow {
                digest: "d2".into(),
                created_at_ms: 9,
                updated_at_ms: 9,
                ..tool.clone()
            })
            .await
            .unwrap();
        let got = store.get_tool("echo").await.unwrap().unwrap();
        assert_eq!(
            (got.digest.as_str(), got.created_at_ms, got.updated_at_ms),
            ("d2", 5, 9)
        );
        assert_eq!(got.component, component);
        assert!(store.get_tool("nope").await.unwrap().is_none());
        let meta = store.get_tool_meta("echo").await.unwrap().unwrap();
        assert!(
            meta.component.is_empty(),
            "metadata leaves the bytes in the store"
        );
        assert_eq!(
            ToolRow {
                component: component.clone(),
                ..meta
            },
            got
        );
        assert!(store.get_tool_meta("nope").await.unwrap().is_none());
        let listed = store.list_tools().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].component.is_empty());
        assert_eq!(listed[0].digest, "d2");

        // Tasks: idempotency returns the first task, duplicates are refused.
        let first = store.insert_task(&task("t1", Some("k"), 10)).await.unwrap();
        assert_eq!(first.id, "t1");
        let again = store.insert_task(&task("t2", Some("k"), 11)).await.unwrap();
        assert_eq!(again.id, "t1", "same key returns the first task");
        assert!(store.get_task("t2").await.unwrap().is_none());
        assert!(matches!(
            store.insert_task(&task("t1", None, 12)).await,
            Err(StoreError::Duplicate { .. })
        ));
        store.insert_task(&task("t3", None, 13)).await.unwrap();
        store.insert_task(&task("t4", None, 14)).await.unwrap();

        // Compare-and-set updates.
        let mut placed = store.get_task("t1").await.unwrap().unwrap();
        assert_eq!(placed, task("t1", Some("k"), 10));
        placed.status = TaskStatus::Placed;
        placed.attempts = 1;
        placed.node_id = "gpu".into();
        placed.devices = "0,1".into();
        placed.started_at_ms = Some(20);
        assert!(
            store
                .update_task(&placed, guard(TaskStatus::Queued, 0))
                .await
                .unwrap()
        );
        assert!(
            !store
                .update_task(&placed, guard(TaskStatus::Queued, 0))
                .await
                .unwrap(),
            "stale writer loses"
        );
        let mut done = placed.clone();
        done.status = TaskStatus::Succeeded;
        done.output = Some("out ✓".into());
        done.duration_us = 42;
        done.finished_at_ms = Some(30);
        assert!(
            store
                .update_task(&done, guard(TaskStatus::Placed, 1))
                .await
                .unwrap()
        );
        store.count_late_result("t1").await.unwrap();
        let got = store.get_task("t1").await.unwrap().unwrap();
        assert_eq!(got.late_results, 1);
        assert_eq!(
            TaskRow {
                late_results: 0,
                ..got
            },
            done
        );

        // Listing: newest first, queue oldest first, filtered by status.
        let ids = |rows: Vec<TaskRow>| rows.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.list_tasks(&[], 10, None).await.unwrap()),
            ["t4", "t3", "t1"]
        );
        assert_eq!(
            ids(store.list_tasks(&[], 2, None).await.unwrap()),
            ["t4", "t3"]
        );
        let t3 = store.get_task("t3").await.unwrap().unwrap();
        assert_eq!(
            ids(store
                .list_tasks(&[], 10, Some((t3.created_at_ms, "t3")))
                .await
                .unwrap()),
            ["t1"],
            "the page after t3"
        );
        assert_eq!(
            ids(store.queue(&[TaskStatus::Queued], 10).await.unwrap()),
            ["t3", "t4"]
        );
        assert_eq!(
            ids(store
                .queue(&[TaskStatus::Placed, TaskStatus::Succeeded], 10)
                .await
                .unwrap()),
            ["t1"]
        );

        // Attempts: upsert by (task, attempt), listed in order.
        let attempt = AttemptRow {
            task_id: "t1".into(),
            attempt: 2,
            node_id: "b".into(),
            status: AttemptStatus::Running,
            started_at_ms: 21,
            ..AttemptRow::default()
        };
        store.put_attempt(&attempt).await.unwrap();
        store
            .put_attempt(&AttemptRow {
                attempt: 1,
                node_id: "a".into(),
                status: AttemptStatus::Lost,
                ..attempt.clone()
            })
            .await
            .unwrap();
        store
            .put_attempt(&AttemptRow {
                status: AttemptStatus::Succeeded,
                output: Some("late".into()),
                finished_at_ms: Some(40),
                ..attempt.clone()
            })
            .await
            .unwrap();
        let attempts = store.list_attempts("t1").await.unwrap();
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].status, AttemptStatus::Lost);
        assert_eq!(attempts[1].output.as_deref(), Some("late"));
        assert!(store.list_attempts("t3").await.unwrap().is_empty());

        // Advance: the update and its attempt together, or neither.
        let queued = store.get_task("t3").await.unwrap().unwrap();
        let mut placed = queued.clone();
        placed.status = TaskStatus::Placed;
        placed.attempts = 1;
        placed.node_id = "a".into();
        let first = AttemptRow {
            task_id: "t3".into(),
            attempt: 1,
            node_id: "a".into(),
            status: AttemptStatus::Placed,
            started_at_ms: 50,
            ..AttemptRow::default()
        };
        assert!(
            store
                .advance_task(&placed, guard(TaskStatus::Queued, 0), &first)
                .await
                .unwrap()
        );
        let stale = AttemptRow {
            attempt: 9,
            ..first.clone()
        };
        assert!(
            !store
                .advance_task(&placed, guard(TaskStatus::Queued, 0), &stale)
                .await
                .unwrap(),
            "a stale advance loses and writes no attempt"
        );
        assert_eq!(store.get_task("t3").await.unwrap().unwrap(), placed);
        assert_eq!(
            store.list_attempts("t3").await.unwrap(),
            std::slice::from_ref(&first)
        );
        let mut finished = placed.clone();
        finished.status = TaskStatus::Succeeded;
        finished.output = Some("ok".into());
        finished.finished_at_ms = Some(60);
        let done = AttemptRow {
            status: AttemptStatus::Succeeded,
            output: Some("ok".into()),
            finished_at_ms: Some(60),
            ..first.clone()
        };
        assert!(
            store
                .advance_task(&finished, guard(TaskStatus::Placed, 1), &done)
                .await
                .unwrap()
        );
        assert_eq!(store.get_task("t3").await.unwrap().unwrap(), finished);
        assert_eq!(store.list_attempts("t3").await.unwrap(), [done]);

        // A task placed as it is submitted: task and first attempt in one write; a taken
        // idempotency key stores neither and returns the holder.
        let mut at_submit = task("t5", Some("k5"), 15);
        at_submit.status = TaskStatus::Placed;
        at_submit.attempts = 1;
        at_submit.node_id = "b".into();
        let attempt_one = AttemptRow {
            task_id: "t5".into(),
            attempt: 1,
            node_id: "b".into(),
            status: AttemptStatus::Placed,
            started_at_ms: 15,
            ..AttemptRow::default()
        };
        let stored = store
            .insert_placed_task(&at_submit, &attempt_one)
            .await
            .unwrap();
        assert_eq!(stored, at_submit);
        assert_eq!(store.get_task("t5").await.unwrap().unwrap(), at_submit);
        assert_eq!(
            store.list_attempts("t5").await.unwrap(),
            std::slice::from_ref(&attempt_one)
        );
        let mut twin = at_submit.clone();
        twin.id = "t6".into();
        let twin_attempt = AttemptRow {
            task_id: "t6".into(),
            ..attempt_one.clone()
        };
        let holder = store
            .insert_placed_task(&twin, &twin_attempt)
            .await
            .unwrap();
        assert_eq!(holder.id, "t5", "same key returns the first task");
        assert!(store.get_task("t6").await.unwrap().is_none());
        assert!(store.list_attempts("t6").await.unwrap().is_empty());
        assert!(matches!(
            store
                .insert_placed_task(
                    &TaskRow {
                        idempotency_key: None,
                        ..at_submit.clone()
                    },
                    &attempt_one
                )
                .await,
            Err(StoreError::Duplicate { .. })
        ));
    }

    /// Whether `err` names a foreign-key violation (SQLite says "FOREIGN KEY", PostgreSQL
    /// "foreign key").
    fn names_foreign_key(err: &StoreError) -> bool {
        err.to_string().to_lowercase().contains("foreign key")
    }

    /// SQL stores write a task and its attempt in one transaction: when the attempt cannot be
    /// written (here: it names a task that does not exist), the task is left as it was and the
    /// store goes on serving writes.
    async fn exercise_transactions(store: &SqlStore) {
        store.insert_task(&task("tx1", None, 1)).await.unwrap();
        let queued = store.get_task("tx1").await.unwrap().unwrap();
        let mut placed = queued.clone();
        placed.status = TaskStatus::Placed;
        placed.attempts = 1;
        let orphan = AttemptRow {
            task_id: "no-such-task".into(),
            attempt: 1,
            node_id: "a".into(),
            status: AttemptStatus::Placed,
            started_at_ms: 2,
            ..AttemptRow::default()
        };
        let err = store
            .advance_task(&placed, guard(TaskStatus::Queued, 0), &orphan)
            .await
            .unwrap_err();
        assert!(names_foreign_key(&err), "{err}");
        assert_eq!(
            store.get_task("tx1").await.unwrap().unwrap(),
            queued,
            "the update rolled back with the attempt"
        );
        let err = store
            .insert_placed_task(&task("tx2", None, 3), &orphan)
            .await
            .unwrap_err();
        assert!(names_foreign_key(&err), "{err}");
        assert!(
            store.get_task("tx2").await.unwrap().is_none(),
            "the insert rolled back"
        );
        // The writer is free again: the next writes go through.
        let attempt = AttemptRow {
            task_id: "tx1".into(),
            ..orphan.clone()
        };
        assert!(
            store
                .advance_task(&placed, guard(TaskStatus::Queued, 0), &attempt)
                .await
                .unwrap()
        );
        assert_eq!(store.list_attempts("tx1").await.unwrap(), [attempt]);
        store.insert_task(&task("tx3", None, 4)).await.unwrap();
    }

    #[tokio::test]
    async fn memory_store() {
        let store = MemoryStore::new();
        exercise(&store).await;
        actors::conformance::mailboxes(&store).await;
        actors::conformance::reviews_and_triggers(&store).await;
        actors::conformance::batches(&store).await;
    }

    #[tokio::test]
    async fn sqlite_store_in_wal_mode_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let store = SqlStore::connect(&url).await.unwrap();
        assert_eq!(
            store.sqlite_journal_mode().await.unwrap().as_deref(),
            Some("wal")
        );
        exercise(&store).await;
        exercise_transactions(&store).await;
        actors::conformance::mailboxes(&store).await;
        actors::conformance::reviews_and_triggers(&store).await;
        actors::conformance::batches(&store).await;
        let second = SqlStore::connect(&url).await.unwrap();
        actors::conformance::two_hubs(&store, &second).await;
        second.close().await;
        store.close().await;
        let reopened = SqlStore::connect(&url).await.unwrap();
        assert_eq!(
            reopened.get_node("a").await.unwrap().unwrap().name,
            "Renamed"
        );
        assert!(reopened.get_node("j").await.unwrap().is_some());
    }

    #[tokio::test]
    #[cfg_attr(
        not(outpost_postgres_tests),
        ignore = "OUTPOST_TEST_DATABASE_URL was not set when the tests were built"
    )]
    async fn postgres_store_when_configured() {
        let base = std::env::var("OUTPOST_TEST_DATABASE_URL")
            .expect("OUTPOST_TEST_DATABASE_URL names the PostgreSQL database to test against");
        // A schema of its own, so parallel runs never meet.
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&base).await.unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let schema = format!("outpost_test_{}_{nanos}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let store = SqlStore::connect(&url).await.unwrap();
        assert_eq!(store.backend(), sql::Backend::Postgres);
        exercise(&store).await;
        exercise_transactions(&store).await;
        actors::conformance::mailboxes(&store).await;
        actors::conformance::reviews_and_triggers(&store).await;
        actors::conformance::batches(&store).await;
        let second = SqlStore::connect(&url).await.unwrap();
        actors::conformance::two_hubs(&store, &second).await;
        second.close().await;
        store.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn unsupported_url_is_named() {
        let err = SqlStore::connect("mysql://x").await.unwrap_err();
        assert!(err.to_string().contains("mysql://x"), "{err}");
    }
}
