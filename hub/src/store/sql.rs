//! [`Store`] on SQLite or PostgreSQL through sqlx's `Any` driver: one set of queries (`$N`
//! placeholders work on both), one migration folder per dialect.

mod actors;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::{
    AgentRow, AttemptRow, AuditRow, BindOutcome, ChallengeRow, Guard, JoinedNode, NodeRow, Store,
    StoreError, TaskRow, TaskStatus, TokenRow, ToolRow, UnknownStatus,
};

/// Which database the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// SQL-backed store.
///
/// On SQLite, writes go through a pool of one connection (`writer`) and reads through their own
/// pool: SQLite allows one writer at a time, and two connections that both want to write make one
/// of them sleep in SQLite's busy handler (milliseconds); queueing for the single writer
/// connection instead costs a wake-up. Readers never wait for the writer in WAL mode. On
/// PostgreSQL both are the same pool.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    writer: AnyPool,
    backend: Backend,
}

const NODE_COLUMNS: &str = "id, name, grpc_target, tls_server_name, default_worktree_root, labels, public_key_sha256, \
    joined_at_ms, draining, status, status_reason, last_heartbeat_ms, capabilities, created_at_ms, updated_at_ms";

fn node_from_row(row: &AnyRow) -> Result<NodeRow, sqlx::Error> {
    Ok(NodeRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        grpc_target: row.try_get("grpc_target")?,
        tls_server_name: row.try_get("tls_server_name")?,
        default_worktree_root: row.try_get("default_worktree_root")?,
        labels: labels_from_json(&row.try_get::<String, _>("labels")?)?,
        public_key_sha256: row.try_get("public_key_sha256")?,
        joined_at_ms: row.try_get("joined_at_ms")?,
        draining: row.try_get::<i64, _>("draining")? != 0,
        status: row.try_get("status")?,
        status_reason: row.try_get("status_reason")?,
        last_heartbeat_ms: row.try_get("last_heartbeat_ms")?,
        capabilities: row.try_get("capabilities")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

/// One node as the registry's JSON aggregate lists it (columns in [`SqlStore::list_nodes`]'s
/// order, the capabilities in hex).
type NodeTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    i64,
    String,
    String,
    Option<i64>,
    Option<String>,
    i64,
    i64,
);

fn nodes_from_json(text: &str) -> Result<Vec<NodeRow>, String> {
    let tuples: Vec<NodeTuple> =
        serde_json::from_str(text).map_err(|e| format!("the node list: {e}"))?;
    tuples
        .into_iter()
        .map(|t| {
            Ok(NodeRow {
                id: t.0,
                name: t.1,
                grpc_target: t.2,
                tls_server_name: t.3,
                default_worktree_root: t.4,
                labels: labels_from_json(&t.5).map_err(|e| e.to_string())?,
                public_key_sha256: t.6,
                joined_at_ms: t.7,
                draining: t.8 != 0,
                status: t.9,
                status_reason: t.10,
                last_heartbeat_ms: t.11,
                capabilities: match t.12 {
                    Some(h) => Some(hex::decode(&h).map_err(|e| format!("capabilities: {e}"))?),
                    None => None,
                },
                created_at_ms: t.13,
                updated_at_ms: t.14,
            })
        })
        .collect()
}

fn labels_from_json(text: &str) -> Result<std::collections::BTreeMap<String, String>, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn labels_json(labels: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

const AGENT_COLUMNS: &str = "id, node_id, name, status, spec, run, exit_code, signal, reason, \
    landlock, created_at_ms, updated_at_ms, started_at_ms, finished_at_ms";

fn agent_from_row(row: &AnyRow) -> Result<AgentRow, sqlx::Error> {
    Ok(AgentRow {
        id: row.try_get("id")?,
        node_id: row.try_get("node_id")?,
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        spec: row.try_get("spec")?,
        run: row.try_get("run")?,
        exit_code: row.try_get("exit_code")?,
        signal: row.try_get("signal")?,
        reason: row.try_get("reason")?,
        landlock: row.try_get("landlock")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

/// Binds an agent's columns in [`AGENT_COLUMNS`] order.
fn bind_agent<'q>(query: AnyQuery<'q>, agent: &'q AgentRow) -> AnyQuery<'q> {
    query
        .bind(&agent.id)
        .bind(&agent.node_id)
        .bind(&agent.name)
        .bind(&agent.status)
        .bind(&agent.spec)
        .bind(agent.run)
        .bind(agent.exit_code)
        .bind(agent.signal)
        .bind(&agent.reason)
        .bind(&agent.landlock)
        .bind(agent.created_at_ms)
        .bind(agent.updated_at_ms)
        .bind(agent.started_at_ms)
        .bind(agent.finished_at_ms)
}

/// Every tool column but the component itself.
const TOOL_META_COLUMNS: &str = "name, digest, size_bytes, policy_toml, version, description, \
    input_schema, publisher, signature, created_at_ms, updated_at_ms";

/// A tool row; the component is read only when the query selected it.
fn tool_from_row(row: &AnyRow, with_component: bool) -> Result<ToolRow, sqlx::Error> {
    Ok(ToolRow {
        name: row.try_get("name")?,
        digest: row.try_get("digest")?,
        size_bytes: row.try_get("size_bytes")?,
        component: if with_component {
            row.try_get("component")?
        } else {
            Vec::new()
        },
        policy_toml: row.try_get("policy_toml")?,
        version: row.try_get("version")?,
        description: row.try_get("description")?,
        input_schema: row.try_get("input_schema")?,
        publisher: row.try_get("publisher")?,
        signature: row.try_get("signature")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

const TASK_COLUMNS: &str = "id, tool, command, input, requirements, idempotency_key, status, node_id, \
    reason, attempts, max_attempts, timeout_ms, devices, output, error_kind, error_message, duration_us, \
    fuel_used, late_results, created_at_ms, updated_at_ms, started_at_ms, finished_at_ms, workdir";

/// A stored status name as its enum; a name no version of Outpost writes is a decode error.
fn status_column<S: std::str::FromStr<Err = UnknownStatus>>(
    row: &AnyRow,
) -> Result<S, sqlx::Error> {
    let text: String = row.try_get("status")?;
    text.parse()
        .map_err(|e: UnknownStatus| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: Box::new(e),
        })
}

fn task_from_row(row: &AnyRow) -> Result<TaskRow, sqlx::Error> {
    Ok(TaskRow {
        id: row.try_get("id")?,
        tool: row.try_get("tool")?,
        command: row.try_get("command")?,
        input: row.try_get("input")?,
        requirements: row.try_get("requirements")?,
        idempotency_key: row.try_get("idempotency_key")?,
        status: status_column(row)?,
        node_id: row.try_get("node_id")?,
        reason: row.try_get("reason")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        timeout_ms: row.try_get("timeout_ms")?,
        devices: row.try_get("devices")?,
        output: row.try_get("output")?,
        error_kind: row.try_get("error_kind")?,
        error_message: row.try_get("error_message")?,
        duration_us: row.try_get("duration_us")?,
        fuel_used: row.try_get("fuel_used")?,
        late_results: row.try_get("late_results")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
        workdir: row.try_get("workdir")?,
    })
}

fn attempt_from_row(row: &AnyRow) -> Result<AttemptRow, sqlx::Error> {
    Ok(AttemptRow {
        task_id: row.try_get("task_id")?,
        attempt: row.try_get("attempt")?,
        node_id: row.try_get("node_id")?,
        status: status_column(row)?,
        output: row.try_get("output")?,
        error_kind: row.try_get("error_kind")?,
        error_message: row.try_get("error_message")?,
        started_at_ms: row.try_get("started_at_ms")?,
        finished_at_ms: row.try_get("finished_at_ms")?,
    })
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

// The task statements are written once, as macros, so the single statements and the SQLite
// statement lists below are built from the same text (`concat!` takes only literals).

/// The compare-and-set update of a task: parameters `$1` to `$16`.
macro_rules! update_task_sql {
    () => {
        "UPDATE tasks SET status = $2, node_id = $3, reason = $4, attempts = $5, \
         devices = $6, output = $7, error_kind = $8, error_message = $9, duration_us = $10, \
         fuel_used = $11, updated_at_ms = $12, started_at_ms = $13, finished_at_ms = $14 \
         WHERE id = $1 AND status = $15 AND attempts = $16"
    };
}

/// A new task: parameters `$1` to `$24`.
macro_rules! insert_task_sql {
    () => {
        "INSERT INTO tasks (id, tool, command, input, requirements, \
         idempotency_key, status, node_id, reason, attempts, max_attempts, timeout_ms, devices, \
         output, error_kind, error_message, duration_us, fuel_used, late_results, created_at_ms, \
         updated_at_ms, started_at_ms, finished_at_ms, workdir) VALUES ($1, $2, $3, $4, $5, $6, \
         $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
    };
}

/// The head of an attempt insert; the values (or a `SELECT`) follow.
macro_rules! insert_attempt_head {
    () => {
        "INSERT INTO task_attempts (task_id, attempt, node_id, status, output, \
         error_kind, error_message, started_at_ms, finished_at_ms) "
    };
}

/// What makes an attempt insert an upsert by (task, attempt).
macro_rules! upsert_attempt_tail {
    () => {
        " ON CONFLICT (task_id, attempt) DO UPDATE SET node_id = excluded.node_id, \
         status = excluded.status, output = excluded.output, error_kind = excluded.error_kind, \
         error_message = excluded.error_message, finished_at_ms = excluded.finished_at_ms"
    };
}

/// The compare-and-set update of a task (see [`Store::update_task`]).
const UPDATE_TASK_SQL: &str = update_task_sql!();

/// The upsert of an attempt (see [`Store::put_attempt`]): parameters `$1` to `$9`.
const PUT_ATTEMPT_SQL: &str = concat!(
    insert_attempt_head!(),
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    upsert_attempt_tail!()
);

/// [`Store::advance_task`] on SQLite as one statement list, so the whole transaction is one
/// round trip to the connection's worker thread instead of four (begin, update, upsert, commit).
/// The attempt is written only when the update changed the row (`changes() = 1`), and the
/// `SELECT` reports whether it did. Parameters: the update's `$1` to `$16`, the attempt's `$17`
/// to `$25`. A failed statement leaves the transaction open; the caller rolls it back.
const ADVANCE_TASK_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE; ",
    update_task_sql!(),
    "; ",
    insert_attempt_head!(),
    "SELECT $17, $18, $19, $20, $21, $22, $23, $24, $25 WHERE changes() = 1",
    upsert_attempt_tail!(),
    "; SELECT changes() AS advanced; COMMIT"
);

/// A new task (see [`Store::insert_task`]).
const INSERT_TASK_SQL: &str = insert_task_sql!();

/// [`Store::insert_placed_task`] on SQLite as one statement list (one round trip to the worker):
/// the task's `$1` to `$24`, then its first attempt's `$25` to `$33`. A failed statement leaves
/// the transaction open; the caller rolls it back.
const INSERT_PLACED_TASK_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE; ",
    insert_task_sql!(),
    "; ",
    insert_attempt_head!(),
    "VALUES ($25, $26, $27, $28, $29, $30, $31, $32, $33); COMMIT"
);

/// Binds a new task's parameters (see [`INSERT_TASK_SQL`]) after those already bound.
fn bind_task_insert<'q>(query: AnyQuery<'q>, task: &'q TaskRow) -> AnyQuery<'q> {
    query
        .bind(&task.id)
        .bind(&task.tool)
        .bind(&task.command)
        .bind(&task.input)
        .bind(&task.requirements)
        .bind(&task.idempotency_key)
        .bind(task.status.as_str())
        .bind(&task.node_id)
        .bind(&task.reason)
        .bind(task.attempts)
        .bind(task.max_attempts)
        .bind(task.timeout_ms)
        .bind(&task.devices)
        .bind(&task.output)
        .bind(&task.error_kind)
        .bind(&task.error_message)
        .bind(task.duration_us)
        .bind(task.fuel_used)
        .bind(task.late_results)
        .bind(task.created_at_ms)
        .bind(task.updated_at_ms)
        .bind(task.started_at_ms)
        .bind(task.finished_at_ms)
        .bind(&task.workdir)
}

/// Ends a transaction a failed statement list left open on `connection` ("no transaction is
/// active" when BEGIN itself failed: then there is nothing to undo).
async fn rollback_quietly(connection: &mut sqlx::pool::PoolConnection<sqlx::Any>) {
    if let Err(e) = sqlx::query("ROLLBACK").execute(&mut **connection).await {
        tracing::debug!(error = %e, "rollback after a failed task write");
    }
}

/// Binds a task update's parameters (see [`UPDATE_TASK_SQL`]) after those already bound.
fn bind_task_update<'q>(query: AnyQuery<'q>, task: &'q TaskRow, guard: Guard) -> AnyQuery<'q> {
    query
        .bind(&task.id)
        .bind(task.status.as_str())
        .bind(&task.node_id)
        .bind(&task.reason)
        .bind(task.attempts)
        .bind(&task.devices)
        .bind(&task.output)
        .bind(&task.error_kind)
        .bind(&task.error_message)
        .bind(task.duration_us)
        .bind(task.fuel_used)
        .bind(task.updated_at_ms)
        .bind(task.started_at_ms)
        .bind(task.finished_at_ms)
        .bind(guard.status.as_str())
        .bind(guard.attempts)
}

/// Binds an attempt's parameters (see [`PUT_ATTEMPT_SQL`]) after those already bound.
fn bind_attempt<'q>(query: AnyQuery<'q>, attempt: &'q AttemptRow) -> AnyQuery<'q> {
    query
        .bind(&attempt.task_id)
        .bind(attempt.attempt)
        .bind(&attempt.node_id)
        .bind(attempt.status.as_str())
        .bind(&attempt.output)
        .bind(&attempt.error_kind)
        .bind(&attempt.error_message)
        .bind(attempt.started_at_ms)
        .bind(attempt.finished_at_ms)
}

fn update_task_query<'q>(task: &'q TaskRow, guard: Guard) -> AnyQuery<'q> {
    bind_task_update(sqlx::query(UPDATE_TASK_SQL), task, guard)
}

fn put_attempt_query(attempt: &AttemptRow) -> AnyQuery<'_> {
    bind_attempt(sqlx::query(PUT_ATTEMPT_SQL), attempt)
}

/// The database file a `sqlite:` URL names (`None` for an in-memory database).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// `status IN ($2, $3, …)` for `statuses` (placeholders from `first`), or `TRUE` when empty.
fn status_filter(statuses: &[TaskStatus], first: usize) -> String {
    if statuses.is_empty() {
        return "1 = 1".into();
    }
    let marks: Vec<String> = (0..statuses.len())
        .map(|i| format!("${}", first + i))
        .collect();
    format!("status IN ({})", marks.join(", "))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// Pool options for a SQLite file: `synchronous = NORMAL` on every connection.
fn sqlite_pool(max_connections: u32) -> AnyPoolOptions {
    // In WAL mode, NORMAL syncs at checkpoints instead of on every commit: the database stays
    // consistent after a power loss (the last commits may roll back) and a commit costs
    // microseconds instead of an fsync.
    AnyPoolOptions::new()
        .max_connections(max_connections)
        // A pooled connection to a local file cannot go stale; a liveness ping before every
        // use would be one more round trip to the connection's worker thread per query.
        .test_before_acquire(false)
        .after_connect(|connection, _| {
            Box::pin(async move {
                sqlx::query("PRAGMA synchronous = NORMAL")
                    .execute(connection)
                    .await?;
                Ok(())
            })
        })
}

impl SqlStore {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`), creating a SQLite file when
    /// missing, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.into()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_string(),
        };
        let store = match backend {
            Backend::Sqlite => {
                // The file holds token proof keys (enough to join): owner-only, and so are the
                // WAL and shared-memory files SQLite creates beside it (with the file's mode).
                let file = sqlite_file(&url);
                if let Some(file) = &file {
                    outpost_trust::private_files::ensure_private_file(file)
                        .map_err(|e| StoreError::Files(file.display().to_string(), e))?;
                }
                // WAL is a property of the file: set once (by the writer), kept by every later
                // connection.
                let writer = sqlite_pool(1).connect(&url).await?;
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&writer)
                    .await?;
                if let Some(file) = &file {
                    for suffix in ["-wal", "-shm"] {
                        let mut companion = file.clone().into_os_string();
                        companion.push(suffix);
                        let companion = std::path::PathBuf::from(companion);
                        outpost_trust::private_files::restrict_if_present(&companion)
                            .map_err(|e| StoreError::Files(companion.display().to_string(), e))?;
                    }
                }
                let pool = sqlite_pool(4).connect(&url).await?;
                Self {
                    pool,
                    writer,
                    backend,
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .connect(&url)
                    .await?;
                Self {
                    writer: pool.clone(),
                    pool,
                    backend,
                }
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations for the backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.writer)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.writer)
                    .await?
            }
        }
        Ok(())
    }

    /// A transaction that will write. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads first and then writes cannot be retried by
    /// the busy handler in WAL mode and fails at once with "database is locked" under contention.
    async fn write_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.writer.begin().await,
        }
    }

    /// Tasks in any of `statuses` (all when empty), in `order`, at most `limit`.
    async fn select_tasks(
        &self,
        statuses: &[TaskStatus],
        limit: u32,
        before: Option<(i64, &str)>,
        order: &str,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let cursor = match before {
            Some(_) => {
                let (at, id) = (statuses.len() + 1, statuses.len() + 2);
                format!(" AND (created_at_ms < ${at} OR (created_at_ms = ${at} AND id < ${id}))")
            }
            None => String::new(),
        };
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE {}{cursor} ORDER BY {order} LIMIT {limit}",
            status_filter(statuses, 1),
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for status in statuses {
            query = query.bind(status.as_str());
        }
        if let Some((at, id)) = before {
            query = query.bind(at).bind(id.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows.iter().map(task_from_row).collect::<Result<_, _>>()?)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// What an insert that hit a unique constraint found: the task holding `task`'s idempotency
    /// key, or a duplicate-id error.
    async fn taken_task(&self, task: &TaskRow) -> Result<TaskRow, StoreError> {
        if let Some(key) = &task.idempotency_key {
            let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = $1");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                return Ok(task_from_row(&row)?);
            }
        }
        Err(StoreError::Duplicate {
            what: "task",
            id: task.id.clone(),
        })
    }

    /// [`Store::advance_task`] on SQLite in one round trip (see [`ADVANCE_TASK_SQLITE`]). If a
    /// statement fails, the transaction it left open is rolled back before the connection goes
    /// back to the pool.
    async fn advance_task_sqlite(
        &self,
        task: &TaskRow,
        guard: Guard,
        attempt: &AttemptRow,
    ) -> Result<bool, StoreError> {
        let mut connection = self.writer.acquire().await?;
        let query = bind_attempt(
            bind_task_update(sqlx::query(ADVANCE_TASK_SQLITE), task, guard),
            attempt,
        );
        // `fetch_all` runs every statement (a row limit would stop before the COMMIT).
        match query.fetch_all(&mut *connection).await {
            Ok(rows) => {
                let advanced: i64 = match rows.first() {
                    Some(row) => row.try_get("advanced")?,
                    None => 0,
                };
                Ok(advanced == 1)
            }
            Err(e) => {
                rollback_quietly(&mut connection).await;
                Err(e.into())
            }
        }
    }

    /// The SQLite journal mode (for checks), `None` on PostgreSQL.
    pub async fn sqlite_journal_mode(&self) -> Result<Option<String>, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(row.try_get::<String, _>(0)?))
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn insert_node(&self, node: &NodeRow) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO nodes (id, name, grpc_target, tls_server_name, default_worktree_root, public_key_sha256, \
             joined_at_ms, draining, status, status_reason, last_heartbeat_ms, capabilities, created_at_ms, updated_at_ms, labels) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&node.id)
        .bind(&node.name)
        .bind(&node.grpc_target)
        .bind(&node.tls_server_name)
        .bind(&node.default_worktree_root)
        .bind(&node.public_key_sha256)
        .bind(node.joined_at_ms)
        .bind(i64::from(node.draining))
        .bind(&node.status)
        .bind(&node.status_reason)
        .bind(node.last_heartbeat_ms)
        .bind(&node.capabilities)
        .bind(node.created_at_ms)
        .bind(node.updated_at_ms)
        .bind(labels_json(&node.labels))
        .execute(&self.writer)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                what: "node",
                id: node.id.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRow>, StoreError> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(node_from_row).transpose()?)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        // The whole registry as one JSON value built by the database: one row crosses to the
        // async side instead of one per node (sqlx hands SQLite rows over one by one from its
        // worker thread, ~8 µs each; 10,000 nodes took 85 ms that way).
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT COALESCE(json_group_array(json_array(id, name, grpc_target, tls_server_name, \
                 default_worktree_root, labels, public_key_sha256, joined_at_ms, draining, status, \
                 status_reason, last_heartbeat_ms, \
                 CASE WHEN capabilities IS NULL THEN NULL ELSE hex(capabilities) END, \
                 created_at_ms, updated_at_ms)), '[]') FROM (SELECT * FROM nodes ORDER BY id)"
            }
            Backend::Postgres => {
                "SELECT COALESCE(json_agg(json_build_array(id, name, grpc_target, tls_server_name, \
                 default_worktree_root, labels, public_key_sha256, joined_at_ms, draining, status, \
                 status_reason, last_heartbeat_ms, encode(capabilities, 'hex'), created_at_ms, \
                 updated_at_ms) ORDER BY id), '[]')::text FROM nodes"
            }
        };
        let row = sqlx::query(sql).fetch_one(&self.pool).await?;
        let text: String = row.try_get(0)?;
        nodes_from_json(&text).map_err(|e| StoreError::from(sqlx::Error::Decode(e.into())))
    }

    async fn update_node_record(&self, node: &NodeRow) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE nodes SET name = $2, grpc_target = $3, tls_server_name = $4, default_worktree_root = $5, \
             updated_at_ms = $6, labels = $7 WHERE id = $1",
        )
        .bind(&node.id)
        .bind(&node.name)
        .bind(&node.grpc_target)
        .bind(&node.tls_server_name)
        .bind(&node.default_worktree_root)
        .bind(node.updated_at_ms)
        .bind(labels_json(&node.labels))
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "node",
                id: node.id.clone(),
            });
        }
        Ok(())
    }

    async fn delete_node(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_transaction().await?;
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) FROM agents WHERE node_id = $1 AND status IN ('starting', 'running')",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if active > 0 {
            return Err(StoreError::Conflict(format!(
                "node {id:?} has {active} active agent(s); stop or move them first"
            )));
        }
        sqlx::query("DELETE FROM agents WHERE node_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "node",
                id: id.into(),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    async fn set_draining(&self, id: &str, draining: bool, now_ms: i64) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE nodes SET draining = $2, updated_at_ms = $3 WHERE id = $1")
            .bind(id)
            .bind(i64::from(draining))
            .bind(now_ms)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "node",
                id: id.into(),
            });
        }
        Ok(())
    }

    async fn set_status(&self, id: &str, status: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET status = $2, status_reason = $3 WHERE id = $1")
            .bind(id)
            .bind(status)
            .bind(reason)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn record_heartbeats(&self, beats: &[(String, i64)]) -> Result<(), StoreError> {
        // One multi-row UPDATE per chunk (VALUES columns are column1, column2 in both dialects);
        // 500 rows = 1,000 parameters, well inside SQLite's limit.
        const CHUNK: usize = 500;
        if beats.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction().await?;
        for chunk in beats.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "UPDATE nodes SET last_heartbeat_ms = v.column2 FROM (VALUES {}) AS v WHERE nodes.id = v.column1",
                values.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, at) in chunk {
                query = query.bind(id.as_str()).bind(*at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn set_capabilities(&self, id: &str, capabilities: &[u8]) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET capabilities = $2 WHERE id = $1")
            .bind(id)
            .bind(capabilities.to_vec())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn bind_joined_node(&self, node: &JoinedNode<'_>) -> Result<BindOutcome, StoreError> {
        let mut tx = self.write_transaction().await?;
        let existing: Option<Option<String>> =
            sqlx::query("SELECT public_key_sha256 FROM nodes WHERE id = $1")
                .bind(node.id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get::<Option<String>, _>(0))
                .transpose()?;
        let outcome = match existing {
            None => {
                let inserted = sqlx::query(
                    "INSERT INTO nodes (id, name, grpc_target, public_key_sha256, joined_at_ms, status, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, 'offline', $5, $5)",
                )
                .bind(node.id)
                .bind(node.name)
                .bind(node.grpc_target)
                .bind(node.public_key_sha256)
                .bind(node.now_ms)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Ok(_) => BindOutcome::Bound,
                    // Another hub sharing the database bound it in between.
                    Err(e) if is_unique_violation(&e) => BindOutcome::HeldByAnotherKey,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(None) => {
                let done = sqlx::query(
                    "UPDATE nodes SET public_key_sha256 = $2, joined_at_ms = $3, updated_at_ms = $3, \
                     grpc_target = CASE WHEN grpc_target = '' THEN $4 ELSE grpc_target END \
                     WHERE id = $1 AND public_key_sha256 IS NULL",
                )
                .bind(node.id)
                .bind(node.public_key_sha256)
                .bind(node.now_ms)
                .bind(node.grpc_target)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 1 {
                    BindOutcome::Bound
                } else {
                    BindOutcome::HeldByAnotherKey
                }
            }
            Some(Some(key)) if key == node.public_key_sha256 => BindOutcome::AlreadyBound,
            Some(Some(_)) => BindOutcome::HeldByAnotherKey,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn count_active_agents(&self, node_id: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM agents WHERE node_id = $1 AND status IN ('starting', 'running')",
        )
        .bind(node_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    async fn insert_agent(&self, agent: &AgentRow) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        );
        let result = bind_agent(sqlx::query(sqlx::AssertSqlSafe(sql)), agent)
            .execute(&self.writer)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                what: "agent",
                id: agent.id.clone(),
            }),
            Err(sqlx::Error::Database(db))
                if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation =>
            {
                Err(StoreError::NotFound {
                    what: "node",
                    id: agent.node_id.clone(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn update_agent(&self, agent: &AgentRow) -> Result<(), StoreError> {
        let done = bind_agent(
            sqlx::query(
                "UPDATE agents SET node_id = $2, name = $3, status = $4, spec = $5, run = $6, \
                 exit_code = $7, signal = $8, reason = $9, landlock = $10, created_at_ms = $11, \
                 updated_at_ms = $12, started_at_ms = $13, finished_at_ms = $14 WHERE id = $1",
            ),
            agent,
        )
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "agent",
                id: agent.id.clone(),
            });
        }
        Ok(())
    }

    async fn get_agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(agent_from_row).transpose()?)
    }

    async fn list_agents(&self, node: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        let rows = match node {
            Some(node) => {
                let sql =
                    format!("SELECT {AGENT_COLUMNS} FROM agents WHERE node_id = $1 ORDER BY id");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(node)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY id");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(agent_from_row).collect::<Result<_, _>>()?)
    }

    async fn delete_agent(&self, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "agent",
                id: id.into(),
            });
        }
        Ok(())
    }

    async fn put_tool(&self, tool: &ToolRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tools (name, digest, size_bytes, component, policy_toml, version, description, \
             input_schema, created_at_ms, updated_at_ms, publisher, signature) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, size_bytes = excluded.size_bytes, \
             component = excluded.component, policy_toml = excluded.policy_toml, version = excluded.version, \
             description = excluded.description, input_schema = excluded.input_schema, \
             updated_at_ms = excluded.updated_at_ms, publisher = excluded.publisher, \
             signature = excluded.signature",
        )
        .bind(&tool.name)
        .bind(&tool.digest)
        .bind(tool.size_bytes)
        .bind(&tool.component)
        .bind(&tool.policy_toml)
        .bind(&tool.version)
        .bind(&tool.description)
        .bind(&tool.input_schema)
        .bind(tool.created_at_ms)
        .bind(tool.updated_at_ms)
        .bind(&tool.publisher)
        .bind(&tool.signature)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_tool(&self, name: &str) -> Result<Option<ToolRow>, StoreError> {
        let sql = format!("SELECT {TOOL_META_COLUMNS}, component FROM tools WHERE name = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(|r| tool_from_row(r, true)).transpose()?)
    }

    async fn get_tool_meta(&self, name: &str) -> Result<Option<ToolRow>, StoreError> {
        let sql = format!("SELECT {TOOL_META_COLUMNS} FROM tools WHERE name = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(|r| tool_from_row(r, false)).transpose()?)
    }

    async fn list_tools(&self) -> Result<Vec<ToolRow>, StoreError> {
        let sql = format!("SELECT {TOOL_META_COLUMNS} FROM tools ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| tool_from_row(r, false))
            .collect::<Result<_, _>>()?)
    }

    async fn insert_task(&self, task: &TaskRow) -> Result<TaskRow, StoreError> {
        match bind_task_insert(sqlx::query(INSERT_TASK_SQL), task)
            .execute(&self.writer)
            .await
        {
            Ok(_) => Ok(task.clone()),
            Err(e) if is_unique_violation(&e) => self.taken_task(task).await,
            Err(e) => Err(e.into()),
        }
    }

    async fn insert_placed_task(
        &self,
        task: &TaskRow,
        attempt: &AttemptRow,
    ) -> Result<TaskRow, StoreError> {
        let mut connection = self.writer.acquire().await?;
        let written = match self.backend {
            // One round trip: see INSERT_PLACED_TASK_SQLITE.
            Backend::Sqlite => bind_attempt(
                bind_task_insert(sqlx::query(INSERT_PLACED_TASK_SQLITE), task),
                attempt,
            )
            .execute(&mut *connection)
            .await
            .map(|_| ()),
            Backend::Postgres => {
                let mut tx = sqlx::Connection::begin(&mut *connection).await?;
                let inserted = bind_task_insert(sqlx::query(INSERT_TASK_SQL), task)
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Ok(_) => {
                        put_attempt_query(attempt).execute(&mut *tx).await?;
                        tx.commit().await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match written {
            Ok(_) => Ok(task.clone()),
            Err(e) => {
                if self.backend == Backend::Sqlite {
                    rollback_quietly(&mut connection).await;
                }
                drop(connection);
                if is_unique_violation(&e) {
                    self.taken_task(task).await
                } else {
                    Err(e.into())
                }
            }
        }
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(task_from_row).transpose()?)
    }

    async fn list_tasks(
        &self,
        statuses: &[TaskStatus],
        limit: u32,
        before: Option<(i64, &str)>,
    ) -> Result<Vec<TaskRow>, StoreError> {
        self.select_tasks(statuses, limit, before, "created_at_ms DESC, id DESC")
            .await
    }

    async fn queue(&self, statuses: &[TaskStatus], limit: u32) -> Result<Vec<TaskRow>, StoreError> {
        self.select_tasks(statuses, limit, None, "created_at_ms, id")
            .await
    }

    async fn update_task(&self, task: &TaskRow, guard: Guard) -> Result<bool, StoreError> {
        let done = update_task_query(task, guard).execute(&self.writer).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn advance_task(
        &self,
        task: &TaskRow,
        guard: Guard,
        attempt: &AttemptRow,
    ) -> Result<bool, StoreError> {
        if self.backend == Backend::Sqlite {
            return self.advance_task_sqlite(task, guard, attempt).await;
        }
        let mut tx = self.write_transaction().await?;
        let done = update_task_query(task, guard).execute(&mut *tx).await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        put_attempt_query(attempt).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn count_late_result(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE tasks SET late_results = late_results + 1 WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn put_attempt(&self, attempt: &AttemptRow) -> Result<(), StoreError> {
        put_attempt_query(attempt).execute(&self.writer).await?;
        Ok(())
    }

    async fn list_attempts(&self, task_id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT task_id, attempt, node_id, status, output, error_kind, error_message, started_at_ms, \
             finished_at_ms FROM task_attempts WHERE task_id = $1 ORDER BY attempt",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(attempt_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn append_audit(&self, entries: &[AuditRow]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for e in entries {
            sqlx::query(
                "INSERT INTO audit_log (at_ms, subject, role, surface, action, target, outcome, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(e.at_ms)
            .bind(&e.subject)
            .bind(&e.role)
            .bind(&e.surface)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.outcome)
            .bind(e.status)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM audit_log WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn list_audit(&self, since_ms: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, subject, role, surface, action, target, outcome, status FROM audit_log WHERE at_ms >= $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(since_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let entry = |row: &AnyRow| -> Result<AuditRow, sqlx::Error> {
            Ok(AuditRow {
                id: row.try_get("id")?,
                at_ms: row.try_get("at_ms")?,
                subject: row.try_get("subject")?,
                role: row.try_get("role")?,
                surface: row.try_get("surface")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                outcome: row.try_get("outcome")?,
                status: row.try_get("status")?,
            })
        };
        Ok(rows.iter().map(entry).collect::<Result<_, _>>()?)
    }

    async fn insert_token(&self, token: &TokenRow) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO bootstrap_tokens (id, proof_key, uses_left, expires_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.id)
        .bind(&token.proof_key)
        .bind(token.uses_left)
        .bind(token.expires_at_ms)
        .bind(token.created_at_ms)
        .execute(&self.writer)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
                what: "token",
                id: token.id.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query("SELECT id, proof_key, uses_left, expires_at_ms, created_at_ms FROM bootstrap_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|row| -> Result<TokenRow, sqlx::Error> {
                Ok(TokenRow {
                    id: row.try_get("id")?,
                    proof_key: row.try_get("proof_key")?,
                    uses_left: row.try_get("uses_left")?,
                    expires_at_ms: row.try_get("expires_at_ms")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                })
            })
            .transpose()?)
    }

    async fn consume_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE bootstrap_tokens SET uses_left = uses_left - 1 WHERE id = $1 AND uses_left > 0 AND expires_at_ms > $2",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_challenge(&self, challenge: &ChallengeRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO join_challenges (id, node_id, nonce, expires_at_ms) VALUES ($1, $2, $3, $4)")
            .bind(&challenge.id)
            .bind(&challenge.node_id)
            .bind(&challenge.nonce)
            .bind(challenge.expires_at_ms)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn take_challenge(&self, id: &str) -> Result<Option<ChallengeRow>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM join_challenges WHERE id = $1 RETURNING id, node_id, nonce, expires_at_ms",
        )
        .bind(id)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row
            .map(|row| -> Result<ChallengeRow, sqlx::Error> {
                Ok(ChallengeRow {
                    id: row.try_get("id")?,
                    node_id: row.try_get("node_id")?,
                    nonce: row.try_get("nonce")?,
                    expires_at_ms: row.try_get("expires_at_ms")?,
                })
            })
            .transpose()?)
    }

    async fn purge_challenges(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM join_challenges WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn close(&self) {
        SqlStore::close(self).await;
    }
}
