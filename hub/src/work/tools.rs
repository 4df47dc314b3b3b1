//! The hub's tool registry: components pushed by plugin authors, checked before they are stored.
//!
//! A push is refused unless the policy parses and validates, and the component compiles under the
//! same sandbox the nodes use, implements the `outpost:guest/tool` world, and answers `describe`
//! within its limits. The name, version and input schema it describes are kept beside the bytes;
//! nodes fetch the bytes by digest the first time a task needs them, or ahead of it: with
//! `[tools] preinstall` (the default) a push installs the tool on every node connected to this
//! hub, and a node that connects is sent every tool, so the node compiles each in the background
//! and a tool's first task there does not wait seconds for the compiler. Each install names the
//! digest first; the bytes go only to a node that lacks them, a few transfers at a time.

use std::sync::Arc;

use outpost_proto::v1::{InstallTool, ToolView};
use outpost_sandbox::{Sandbox, SandboxConfig, ToolPolicy};
use outpost_trust::signing::ToolSignature;

use crate::fleet::links::{NodeLink, RunAnswer};

use crate::state::HubState;
use crate::store::ToolRow;
use crate::work::tasks::TaskError;

/// Nodes a push installs on at the same time.
const INSTALL_CONCURRENCY: usize = 4;

/// Installs carrying a component's bytes at the same time, over all nodes (hub-wide).
const TRANSFER_CONCURRENCY: usize = 4;
/// How long tool metadata read from the store is reused. A push through this hub replaces it at
/// once; a push through another hub sharing the database is seen within this time.
const META_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Most tools whose metadata is cached.
const META_CACHE_ENTRIES: usize = 1024;

/// The tool registry's handle in the hub's state: a short-lived cache of tool metadata, whether
/// tools are preinstalled on nodes, and the hub-wide limit on byte transfers to nodes.
#[derive(Debug)]
pub struct ToolRegistry {
    /// Tool metadata (no component bytes) by name, with when it was read.
    meta: parking_lot::Mutex<std::collections::HashMap<String, (ToolRow, std::time::Instant)>>,
    /// `[tools] preinstall`: install tools on the connected nodes at push and when a node
    /// connects.
    preinstall: bool,
    /// Tool transfers to nodes running at once (installs that carry a component's bytes).
    transfers: tokio::sync::Semaphore,
    /// `[tools] trusted_publishers`: when not empty, only tools signed by one of these are
    /// accepted.
    trusted_publishers: Vec<String>,
    /// The digest of each tool each node took (installed and compiled), by tool name, then node.
    installed: parking_lot::Mutex<
        std::collections::HashMap<String, std::collections::BTreeMap<String, String>>,
    >,
    /// Bumped when a tool is pushed through this hub (MCP's `tools/list_changed`).
    changes: tokio::sync::watch::Sender<u64>,
}

impl ToolRegistry {
    /// A registry that preinstalls tools on nodes when `preinstall` is set.
    pub fn new(preinstall: bool) -> Self {
        Self {
            meta: parking_lot::Mutex::new(std::collections::HashMap::new()),
            preinstall,
            transfers: tokio::sync::Semaphore::new(TRANSFER_CONCURRENCY),
            trusted_publishers: Vec::new(),
            installed: parking_lot::Mutex::new(std::collections::HashMap::new()),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Ticks each time a tool is pushed through this hub.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Records that `node_id` took `digest` of the tool `name`.
    pub fn note_installed(&self, name: &str, digest: &str, node_id: &str) {
        self.installed
            .lock()
            .entry(name.to_string())
            .or_default()
            .insert(node_id.to_string(), digest.to_string());
    }

    /// The nodes that took this `digest` of the tool `name` since the hub started, in order.
    pub fn installed_on(&self, name: &str, digest: &str) -> Vec<String> {
        self.installed
            .lock()
            .get(name)
            .map_or_else(Vec::new, |nodes| {
                nodes
                    .iter()
                    .filter(|(_, d)| d.as_str() == digest)
                    .map(|(node, _)| node.clone())
                    .collect()
            })
    }

    /// A turn to send a component's bytes to a node: at most a few transfers (installs and
    /// tasks alike) run at once, hub-wide. `None` once the hub is shutting down.
    pub async fn transfer_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.transfers.acquire().await.ok()
    }

    /// Accepts pushes only of tools signed by one of `publishers` (none: any tool, signed or
    /// not; a signature that does not verify is refused either way).
    pub fn trusting(mut self, publishers: Vec<String>) -> Self {
        self.trusted_publishers = publishers;
        self
    }

    /// Whether tools are installed on nodes ahead of their first task.
    pub fn preinstall(&self) -> bool {
        self.preinstall
    }

    /// A tool's metadata, from the cache when read less than two seconds ago (so a push through
    /// another hub sharing the database is seen within that time).
    pub async fn meta(
        &self,
        store: &dyn crate::store::Store,
        name: &str,
    ) -> Result<Option<ToolRow>, crate::store::StoreError> {
        if let Some((tool, read_at)) = self.meta.lock().get(name)
            && read_at.elapsed() < META_TTL
        {
            return Ok(Some(tool.clone()));
        }
        let tool = store.get_tool_meta(name).await?;
        let mut cache = self.meta.lock();
        match &tool {
            Some(tool) => {
                if cache.len() >= META_CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(name.to_string(), (tool.clone(), std::time::Instant::now()));
            }
            None => {
                cache.remove(name);
            }
        }
        Ok(tool)
    }
}

/// Largest component accepted.
pub const MAX_COMPONENT_BYTES: usize = 32 * 1024 * 1024;

/// Checks a tool name: 1–64 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_len = (1..=64).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(format!(
            "name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// Checks a push's signature: any signature must verify over the component and policy, and
/// when the hub trusts only some publishers, one of them must have signed.
fn check_signature(
    registry: &ToolRegistry,
    digest: &str,
    policy_toml: &str,
    signature: Option<&ToolSignature>,
) -> Result<(), TaskError> {
    let refused = |why: String| TaskError::Invalid(format!("signature: {why}"));
    match signature {
        Some(signature) => {
            outpost_trust::signing::verify(signature, digest, policy_toml)
                .map_err(|e| refused(e.to_string()))?;
            if !registry.trusted_publishers.is_empty()
                && !outpost_trust::signing::is_trusted(
                    &signature.publisher,
                    &registry.trusted_publishers,
                )
            {
                return Err(refused(format!(
                    "{} is not one of this hub's [tools] trusted_publishers",
                    signature.publisher
                )));
            }
            Ok(())
        }
        None if registry.trusted_publishers.is_empty() => Ok(()),
        None => Err(refused(
            "this hub accepts only tools signed by its [tools] trusted_publishers (`outpost tool sign`)".into(),
        )),
    }
}

/// Validates and stores a tool (replacing one of the same name).
pub async fn push(
    state: &Arc<HubState>,
    name: &str,
    component: Vec<u8>,
    policy_toml: &str,
    signature: Option<&ToolSignature>,
) -> Result<ToolRow, TaskError> {
    validate_name(name).map_err(TaskError::Invalid)?;
    if component.len() > MAX_COMPONENT_BYTES {
        return Err(TaskError::Invalid(format!(
            "component: {} bytes is more than the {MAX_COMPONENT_BYTES} allowed",
            component.len()
        )));
    }
    let digest = outpost_trust::auth::sha256_hex(&component);
    check_signature(&state.tools, &digest, policy_toml, signature)?;
    let policy = ToolPolicy::from_toml(policy_toml, &format!("policy of tool {name:?}"))
        .map_err(|e| TaskError::Invalid(format!("policy: {}", e.message)))?;
    // The describe check runs with the policy's limits but no grants (none resolve on the hub).
    let probe_policy = ToolPolicy {
        limits: policy.limits,
        ..ToolPolicy::default()
    };
    placement_spec(&policy.placement)
        .to_requirements()
        .map_err(|e| TaskError::Invalid(format!("policy: [placement] {e}")))?;
    let resolved = probe_policy
        .resolve(&[])
        .map_err(|e| TaskError::Invalid(format!("policy: {}", e.message)))?;
    let bytes = component.clone();
    let description = tokio::task::spawn_blocking(move || {
        let sandbox = Sandbox::new(SandboxConfig {
            pooling: false,
            max_concurrent_calls: 1,
            ..SandboxConfig::default()
        })?;
        let tool = sandbox.load(&bytes, resolved)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| {
                outpost_sandbox::SandboxError::new(
                    outpost_sandbox::ErrorKind::Trap,
                    format!("starting the describe check: {e}"),
                )
            })?;
        runtime.block_on(tool.describe())
    })
    .await
    .map_err(|e| TaskError::Invalid(format!("component: the check panicked: {e}")))?
    .map_err(|e| TaskError::Invalid(format!("component ({}): {}", e.kind.as_str(), e.message)))?;
    crate::work::schema::check(&description.input_schema).map_err(|e| {
        TaskError::Invalid(format!(
            "component: the input schema its describe() returns is not a usable JSON Schema: {e}"
        ))
    })?;
    let now = state.now_ms();
    let row = ToolRow {
        name: name.into(),
        digest,
        publisher: signature.map(|s| s.publisher.clone()).unwrap_or_default(),
        signature: signature.map(|s| s.signature.clone()).unwrap_or_default(),
        size_bytes: i64::try_from(component.len()).unwrap_or(i64::MAX),
        component,
        policy_toml: policy_toml.into(),
        version: description.version,
        description: description.description,
        input_schema: description.input_schema,
        created_at_ms: now,
        updated_at_ms: now,
    };
    state.store().put_tool(&row).await?;
    state.tools.meta.lock().remove(name);
    state.tools.changes.send_modify(|n| *n += 1);
    tracing::info!(tool = %row.name, digest = %row.digest, size = row.size_bytes, "tool pushed");
    if state.tools.preinstall {
        install_on_nodes(state, state.fleet.links().all(), &row);
    }
    Ok(state.store().get_tool_meta(name).await?.unwrap_or(row))
}

/// Installs a tool on `nodes` in the background, a few at a time.
fn install_on_nodes(
    state: &Arc<HubState>,
    nodes: Vec<(String, Arc<dyn NodeLink>)>,
    tool: &ToolRow,
) {
    if nodes.is_empty() {
        return;
    }
    let announce = announcement(tool);
    let component = Arc::new(tool.component.clone());
    let state = state.clone();
    tokio::spawn(async move {
        let total = nodes.len();
        let mut waiting = nodes.into_iter();
        let mut sending = tokio::task::JoinSet::new();
        let mut installed = 0usize;
        loop {
            while sending.len() < INSTALL_CONCURRENCY {
                let Some((node_id, link)) = waiting.next() else {
                    break;
                };
                let (state, announce, component) =
                    (state.clone(), announce.clone(), component.clone());
                sending.spawn(async move {
                    install_on_node(&state, &node_id, link.as_ref(), announce, async || {
                        Some(component.to_vec())
                    })
                    .await
                });
            }
            match sending.join_next().await {
                Some(Ok(true)) => installed += 1,
                Some(_) => {}
                None => break,
            }
        }
        tracing::info!(tool = %announce.tool, digest = %announce.tool_digest, installed, nodes = total, "tool sent to the connected nodes");
    });
}

/// Installs every tool of this hub on a node that just connected, one after the other (by digest;
/// the bytes, read from the store, only for what the node lacks).
pub async fn install_all_on(state: Arc<HubState>, node_id: String, link: Arc<dyn NodeLink>) {
    let tools = match state.store().list_tools().await {
        Ok(tools) => tools,
        Err(e) => {
            tracing::warn!(node_id = %node_id, error = %e, "listing the tools to install failed");
            return;
        }
    };
    if tools.is_empty() {
        return;
    }
    let total = tools.len();
    let mut installed = 0usize;
    for tool in tools {
        let announce = announcement(&tool);
        let from_store = async || match state.store().get_tool(&tool.name).await {
            // Pushed again meanwhile: the push installs the new one.
            Ok(Some(full)) if full.digest == tool.digest => Some(full.component),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(tool = %tool.name, error = %e, "reading the tool to install failed");
                None
            }
        };
        if install_on_node(&state, &node_id, link.as_ref(), announce, from_store).await {
            installed += 1;
        }
    }
    tracing::info!(node_id = %node_id, installed, tools = total, "tools sent to the node");
}

/// The install of `tool` by digest alone (the bytes follow only if the node asks).
fn announcement(tool: &ToolRow) -> InstallTool {
    InstallTool {
        tool: tool.name.clone(),
        tool_digest: tool.digest.clone(),
        component: Vec::new(),
    }
}

/// Installs a tool on one node: by digest, then with the bytes from `component` (within the
/// hub-wide transfer limit) if the node lacks them. True when the node took it.
async fn install_on_node(
    state: &HubState,
    node_id: &str,
    link: &dyn NodeLink,
    announce: InstallTool,
    component: impl AsyncFnOnce() -> Option<Vec<u8>>,
) -> bool {
    let mut answer = link.install_tool(announce.clone()).await;
    if let Ok(RunAnswer::MissingComponent(_)) = answer {
        let Ok(_transfer) = state.tools.transfers.acquire().await else {
            return false;
        };
        let Some(component) = component().await else {
            return false;
        };
        answer = link
            .install_tool(InstallTool {
                component,
                ..announce.clone()
            })
            .await;
    }
    match answer {
        Ok(RunAnswer::Accepted) => {
            state
                .tools
                .note_installed(&announce.tool, &announce.tool_digest, node_id);
            true
        }
        Ok(RunAnswer::MissingComponent(_)) => {
            tracing::warn!(node_id = %node_id, tool = %announce.tool, "the node still lacks the tool after it was sent");
            false
        }
        Err(e) => {
            tracing::warn!(node_id = %node_id, tool = %announce.tool, error = %e, "installing the tool failed; the node fetches it for its first task");
            false
        }
    }
}

/// Installs the tool a WASM agent runs on its node before the start (its bytes go only if the
/// node lacks them): the tool as installed, or why it could not be.
pub async fn install_for_agent(
    state: &HubState,
    node_id: &str,
    link: &dyn NodeLink,
    name: &str,
) -> Result<ToolRow, String> {
    let tool = state
        .tools
        .meta(state.store().as_ref(), name)
        .await
        .map_err(|e| format!("reading tool {name:?}: {e}"))?
        .ok_or_else(|| format!("tool {name:?} was removed from the hub"))?;
    let digest = tool.digest.clone();
    let from_store = async || match state.store().get_tool(name).await {
        Ok(Some(full)) if full.digest == digest => Some(full.component),
        _ => None,
    };
    if install_on_node(state, node_id, link, announcement(&tool), from_store).await {
        Ok(tool)
    } else {
        Err(format!(
            "tool {name:?} ({}) could not be installed on node {node_id}",
            tool.digest
        ))
    }
}

/// A tool's `[placement]` as task requirements.
pub fn placement_spec(
    placement: &outpost_sandbox::Placement,
) -> crate::work::tasks::RequirementsSpec {
    crate::work::tasks::RequirementsSpec {
        gpus: placement.gpus(),
        gpu_memory_mb: placement.gpu_memory_mb,
        compute_capability: placement.compute_capability.clone(),
        labels: placement.labels.clone(),
        capabilities: placement.capabilities.clone(),
        node: String::new(),
    }
}

/// The requirements a tool's policy declares (`[placement]`); none when the policy does not
/// parse (it did when the tool was pushed).
pub fn declared_requirements(tool: &ToolRow) -> crate::work::tasks::RequirementsSpec {
    ToolPolicy::from_toml(&tool.policy_toml, &tool.name)
        .map(|policy| placement_spec(&policy.placement))
        .unwrap_or_default()
}

/// Whether `claims` may call the tool `name`: an agent credential only the tools it names,
/// every other role by its role's rule.
pub fn may_call(claims: &outpost_trust::auth::Claims, name: &str) -> bool {
    claims.role != outpost_trust::auth::Role::Agent || claims.names_tool(name)
}

/// One tool (without its component's bytes).
pub async fn inspect(state: &HubState, name: &str) -> Result<ToolRow, TaskError> {
    state
        .store()
        .get_tool_meta(name)
        .await?
        .ok_or_else(|| TaskError::NotFound(format!("tool {name:?} is not on this hub")))
}

/// Every tool (without components).
pub async fn list(state: &HubState) -> Result<Vec<ToolRow>, TaskError> {
    Ok(state.store().list_tools().await?)
}

/// The protobuf view (no bytes).
pub fn view(tool: &ToolRow) -> ToolView {
    ToolView {
        name: tool.name.clone(),
        digest: tool.digest.clone(),
        size_bytes: u64::try_from(tool.size_bytes).unwrap_or(0),
        policy_toml: tool.policy_toml.clone(),
        version: tool.version.clone(),
        description: tool.description.clone(),
        input_schema: tool.input_schema.clone(),
        created_at_ms: tool.created_at_ms,
        updated_at_ms: tool.updated_at_ms,
        publisher: tool.publisher.clone(),
    }
}

/// A tool's signature as it travels to nodes, when it has one.
pub fn signature_of(tool: &ToolRow) -> Option<outpost_proto::v1::ToolSignature> {
    (!tool.publisher.is_empty()).then(|| outpost_proto::v1::ToolSignature {
        publisher: tool.publisher.clone(),
        signature: tool.signature.clone(),
    })
}

/// The JSON shape of a tool.
pub fn view_json(tool: &ToolView) -> serde_json::Value {
    serde_json::json!({
        "name": tool.name,
        "digest": tool.digest,
        "size_bytes": tool.size_bytes,
        "version": tool.version,
        "description": tool.description,
        "input_schema": tool.input_schema,
        "policy_toml": tool.policy_toml,
        "publisher": if tool.publisher.is_empty() { serde_json::Value::Null } else { tool.publisher.clone().into() },
        "created_at_ms": tool.created_at_ms,
        "updated_at_ms": tool.updated_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("echo").is_ok());
        assert!(validate_name("gpu-infer_v2.1").is_ok());
        for bad in ["", "-x", "../x", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
