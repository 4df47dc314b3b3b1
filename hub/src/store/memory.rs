//! [`Store`] in memory: the twin of [`super::SqlStore`] for unit tests of logic above the store.
//! Same rules (duplicates, active agents, one-shot challenges, atomic token use), no durability.

use std::collections::BTreeMap;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    ACTIVE_AGENT_STATUSES, AgentRow, AttemptRow, AuditRow, BindOutcome, ChallengeRow, Guard,
    JoinedNode, NodeRow, Store, StoreError, TaskRow, TaskStatus, TokenRow, ToolRow,
};

#[derive(Debug, Default)]
struct Tables {
    nodes: BTreeMap<String, NodeRow>,
    tokens: BTreeMap<String, TokenRow>,
    challenges: BTreeMap<String, ChallengeRow>,
    /// agent id → agent
    agents: BTreeMap<String, AgentRow>,
    tools: BTreeMap<String, ToolRow>,
    tasks: BTreeMap<String, TaskRow>,
    /// (task id, attempt) → attempt
    attempts: BTreeMap<(String, i64), AttemptRow>,
    audit: Vec<AuditRow>,
}

/// In-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    /// The actor layer's tables (see `memory_actors`).
    pub(super) actors: Mutex<super::memory_actors::ActorTables>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn without_component(tool: &ToolRow) -> ToolRow {
    ToolRow {
        name: tool.name.clone(),
        digest: tool.digest.clone(),
        size_bytes: tool.size_bytes,
        component: Vec::new(),
        policy_toml: tool.policy_toml.clone(),
        version: tool.version.clone(),
        description: tool.description.clone(),
        input_schema: tool.input_schema.clone(),
        publisher: tool.publisher.clone(),
        signature: tool.signature.clone(),
        created_at_ms: tool.created_at_ms,
        updated_at_ms: tool.updated_at_ms,
    }
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        what: "node",
        id: id.into(),
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_node(&self, node: &NodeRow) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        if t.nodes.contains_key(&node.id) {
            return Err(StoreError::Duplicate {
                what: "node",
                id: node.id.clone(),
            });
        }
        t.nodes.insert(node.id.clone(), node.clone());
        Ok(())
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRow>, StoreError> {
        Ok(self.tables.lock().nodes.get(id).cloned())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        Ok(self.tables.lock().nodes.values().cloned().collect())
    }

    async fn update_node_record(&self, node: &NodeRow) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        let row = t
            .nodes
            .get_mut(&node.id)
            .ok_or_else(|| not_found(&node.id))?;
        row.name.clone_from(&node.name);
        row.grpc_target.clone_from(&node.grpc_target);
        row.tls_server_name.clone_from(&node.tls_server_name);
        row.default_worktree_root
            .clone_from(&node.default_worktree_root);
        row.labels.clone_from(&node.labels);
        row.updated_at_ms = node.updated_at_ms;
        Ok(())
    }

    async fn delete_node(&self, id: &str) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        let active = t
            .agents
            .values()
            .filter(|a| a.node_id == id && ACTIVE_AGENT_STATUSES.contains(&a.status.as_str()))
            .count();
        if active > 0 {
            return Err(StoreError::Conflict(format!(
                "node {id:?} has {active} active agent(s); stop or move them first"
            )));
        }
        t.nodes.remove(id).ok_or_else(|| not_found(id))?;
        t.agents.retain(|_, a| a.node_id != id);
        Ok(())
    }

    async fn set_draining(&self, id: &str, draining: bool, now_ms: i64) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        let row = t.nodes.get_mut(id).ok_or_else(|| not_found(id))?;
        row.draining = draining;
        row.updated_at_ms = now_ms;
        Ok(())
    }

    async fn set_status(&self, id: &str, status: &str, reason: &str) -> Result<(), StoreError> {
        if let Some(row) = self.tables.lock().nodes.get_mut(id) {
            row.status = status.into();
            row.status_reason = reason.into();
        }
        Ok(())
    }

    async fn record_heartbeats(&self, beats: &[(String, i64)]) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        for (id, at) in beats {
            if let Some(row) = t.nodes.get_mut(id) {
                row.last_heartbeat_ms = Some(*at);
            }
        }
        Ok(())
    }

    async fn set_capabilities(&self, id: &str, capabilities: &[u8]) -> Result<(), StoreError> {
        if let Some(row) = self.tables.lock().nodes.get_mut(id) {
            row.capabilities = Some(capabilities.to_vec());
        }
        Ok(())
    }

    async fn bind_joined_node(&self, node: &JoinedNode<'_>) -> Result<BindOutcome, StoreError> {
        let mut t = self.tables.lock();
        match t.nodes.get_mut(node.id) {
            None => {
                t.nodes.insert(
                    node.id.into(),
                    NodeRow {
                        id: node.id.into(),
                        name: node.name.into(),
                        grpc_target: node.grpc_target.into(),
                        public_key_sha256: Some(node.public_key_sha256.into()),
                        joined_at_ms: Some(node.now_ms),
                        status: "offline".into(),
                        created_at_ms: node.now_ms,
                        updated_at_ms: node.now_ms,
                        ..NodeRow::default()
                    },
                );
                Ok(BindOutcome::Bound)
            }
            Some(row) => match &row.public_key_sha256 {
                None => {
                    row.public_key_sha256 = Some(node.public_key_sha256.into());
                    row.joined_at_ms = Some(node.now_ms);
                    row.updated_at_ms = node.now_ms;
                    if row.grpc_target.is_empty() {
                        row.grpc_target = node.grpc_target.into();
                    }
                    Ok(BindOutcome::Bound)
                }
                Some(key) if key == node.public_key_sha256 => Ok(BindOutcome::AlreadyBound),
                Some(_) => Ok(BindOutcome::HeldByAnotherKey),
            },
        }
    }

    async fn count_active_agents(&self, node_id: &str) -> Result<i64, StoreError> {
        Ok(self
            .tables
            .lock()
            .agents
            .values()
            .filter(|a| a.node_id == node_id && ACTIVE_AGENT_STATUSES.contains(&a.status.as_str()))
            .count() as i64)
    }

    async fn insert_agent(&self, agent: &AgentRow) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        if !t.nodes.contains_key(&agent.node_id) {
            return Err(not_found(&agent.node_id));
        }
        if t.agents.contains_key(&agent.id) {
            return Err(StoreError::Duplicate {
                what: "agent",
                id: agent.id.clone(),
            });
        }
        t.agents.insert(agent.id.clone(), agent.clone());
        Ok(())
    }

    async fn update_agent(&self, agent: &AgentRow) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        match t.agents.get_mut(&agent.id) {
            Some(row) => {
                *row = agent.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound {
                what: "agent",
                id: agent.id.clone(),
            }),
        }
    }

    async fn get_agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        Ok(self.tables.lock().agents.get(id).cloned())
    }

    async fn list_agents(&self, node: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        Ok(self
            .tables
            .lock()
            .agents
            .values()
            .filter(|a| node.is_none_or(|n| a.node_id == n))
            .cloned()
            .collect())
    }

    async fn delete_agent(&self, id: &str) -> Result<(), StoreError> {
        self.tables
            .lock()
            .agents
            .remove(id)
            .map(|_| ())
            .ok_or(StoreError::NotFound {
                what: "agent",
                id: id.into(),
            })
    }

    async fn put_tool(&self, tool: &ToolRow) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        let mut row = tool.clone();
        if let Some(old) = t.tools.get(&tool.name) {
            row.created_at_ms = old.created_at_ms;
        }
        t.tools.insert(tool.name.clone(), row);
        Ok(())
    }

    async fn get_tool(&self, name: &str) -> Result<Option<ToolRow>, StoreError> {
        Ok(self.tables.lock().tools.get(name).cloned())
    }

    async fn get_tool_meta(&self, name: &str) -> Result<Option<ToolRow>, StoreError> {
        Ok(self.tables.lock().tools.get(name).map(without_component))
    }

    async fn list_tools(&self) -> Result<Vec<ToolRow>, StoreError> {
        Ok(self
            .tables
            .lock()
            .tools
            .values()
            .map(without_component)
            .collect())
    }

    async fn insert_task(&self, task: &TaskRow) -> Result<TaskRow, StoreError> {
        let mut t = self.tables.lock();
        if let Some(key) = &task.idempotency_key
            && let Some(first) = t
                .tasks
                .values()
                .find(|other| other.idempotency_key.as_ref() == Some(key))
        {
            return Ok(first.clone());
        }
        if t.tasks.contains_key(&task.id) {
            return Err(StoreError::Duplicate {
                what: "task",
                id: task.id.clone(),
            });
        }
        t.tasks.insert(task.id.clone(), task.clone());
        Ok(task.clone())
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        Ok(self.tables.lock().tasks.get(id).cloned())
    }

    async fn list_tasks(
        &self,
        statuses: &[TaskStatus],
        limit: u32,
        before: Option<(i64, &str)>,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let mut rows = self.queue(statuses, u32::MAX).await?;
        rows.reverse();
        if let Some((at, id)) = before {
            rows.retain(|t| (t.created_at_ms, t.id.as_str()) < (at, id));
        }
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn queue(&self, statuses: &[TaskStatus], limit: u32) -> Result<Vec<TaskRow>, StoreError> {
        let t = self.tables.lock();
        let mut rows: Vec<TaskRow> = t
            .tasks
            .values()
            .filter(|task| statuses.is_empty() || statuses.contains(&task.status))
            .cloned()
            .collect();
        rows.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn update_task(&self, task: &TaskRow, guard: Guard) -> Result<bool, StoreError> {
        let mut t = self.tables.lock();
        let Some(row) = t.tasks.get_mut(&task.id) else {
            return Ok(false);
        };
        if !guard.admits(row) {
            return Ok(false);
        }
        // The columns an update may change (as the SQL store's UPDATE).
        row.status = task.status;
        row.node_id.clone_from(&task.node_id);
        row.reason.clone_from(&task.reason);
        row.attempts = task.attempts;
        row.devices.clone_from(&task.devices);
        row.output.clone_from(&task.output);
        row.error_kind.clone_from(&task.error_kind);
        row.error_message.clone_from(&task.error_message);
        row.duration_us = task.duration_us;
        row.fuel_used = task.fuel_used;
        row.updated_at_ms = task.updated_at_ms;
        row.started_at_ms = task.started_at_ms;
        row.finished_at_ms = task.finished_at_ms;
        Ok(true)
    }

    async fn count_late_result(&self, id: &str) -> Result<(), StoreError> {
        if let Some(row) = self.tables.lock().tasks.get_mut(id) {
            row.late_results += 1;
        }
        Ok(())
    }

    async fn put_attempt(&self, attempt: &AttemptRow) -> Result<(), StoreError> {
        self.tables
            .lock()
            .attempts
            .insert((attempt.task_id.clone(), attempt.attempt), attempt.clone());
        Ok(())
    }

    async fn list_attempts(&self, task_id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        Ok(self
            .tables
            .lock()
            .attempts
            .values()
            .filter(|a| a.task_id == task_id)
            .cloned()
            .collect())
    }

    async fn append_audit(&self, entries: &[AuditRow]) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        for entry in entries {
            let id = t.audit.last().map_or(1, |e| e.id + 1);
            t.audit.push(AuditRow {
                id,
                ..entry.clone()
            });
        }
        Ok(())
    }

    async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut t = self.tables.lock();
        let before = t.audit.len();
        t.audit.retain(|e| e.at_ms >= before_ms);
        Ok(u64::try_from(before - t.audit.len()).unwrap_or(0))
    }

    async fn list_audit(&self, since_ms: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let t = self.tables.lock();
        Ok(t.audit
            .iter()
            .rev()
            .filter(|e| e.at_ms >= since_ms)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn insert_token(&self, token: &TokenRow) -> Result<(), StoreError> {
        let mut t = self.tables.lock();
        if t.tokens.contains_key(&token.id) {
            return Err(StoreError::Duplicate {
                what: "token",
                id: token.id.clone(),
            });
        }
        t.tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        Ok(self.tables.lock().tokens.get(id).cloned())
    }

    async fn consume_token(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut t = self.tables.lock();
        match t.tokens.get_mut(id) {
            Some(token) if token.uses_left > 0 && token.expires_at_ms > now_ms => {
                token.uses_left -= 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn insert_challenge(&self, challenge: &ChallengeRow) -> Result<(), StoreError> {
        self.tables
            .lock()
            .challenges
            .insert(challenge.id.clone(), challenge.clone());
        Ok(())
    }

    async fn take_challenge(&self, id: &str) -> Result<Option<ChallengeRow>, StoreError> {
        Ok(self.tables.lock().challenges.remove(id))
    }

    async fn purge_challenges(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut t = self.tables.lock();
        let before = t.challenges.len();
        t.challenges.retain(|_, c| c.expires_at_ms > now_ms);
        Ok((before - t.challenges.len()) as u64)
    }
}
