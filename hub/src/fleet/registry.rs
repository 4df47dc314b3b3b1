//! The node registry: the operator-facing record of every node (AgentHub's fields) joined with its
//! live state. REST and gRPC both go through here, so validation and rules are written once.

use std::collections::BTreeMap;

use outpost_proto::v1::{Capabilities, NodeHealth, NodeRecord, NodeView};
use prost::Message;

use crate::fleet::NodeStatus;
use crate::state::HubState;
use crate::store::{NodeRow, StoreError};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A field is missing or malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// The field's name.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such node.
    #[error("node {0:?} not found")]
    NotFound(String),
    /// Duplicate id, or a node that may not be deleted.
    #[error("{0}")]
    Conflict(String),
    /// Store failure.
    #[error("store: {0}")]
    Store(StoreError),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { id, .. } => RegistryError::NotFound(id),
            StoreError::Duplicate { what, id } => {
                RegistryError::Conflict(format!("{what} {id:?} already exists"))
            }
            StoreError::Conflict(message) => RegistryError::Conflict(message),
            other => RegistryError::Store(other),
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::Invalid { .. } => tonic::Status::invalid_argument(e.to_string()),
            RegistryError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            RegistryError::Conflict(_) => tonic::Status::failed_precondition(e.to_string()),
            RegistryError::Store(_) => tonic::Status::internal(e.to_string()),
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Changes to the operator-set fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct NodePatch {
    /// New name.
    pub name: Option<String>,
    /// New gRPC target.
    pub grpc_target: Option<String>,
    /// New TLS server name.
    pub tls_server_name: Option<String>,
    /// New default worktree root.
    pub default_worktree_root: Option<String>,
    /// New assigned labels (replacing the old ones; empty clears them).
    pub labels: Option<BTreeMap<String, String>>,
}

/// Most labels an operator may assign to one node.
pub const MAX_LABELS: usize = 64;

/// Checks assigned labels: at most [`MAX_LABELS`]; keys of 1 to 63 letters, digits, `-`, `_`,
/// `.` or `/`; values of at most 256 bytes without control or formatting characters.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(
            "labels",
            format!("{} labels; at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (key, value) in labels {
        if key.is_empty()
            || key.len() > 63
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        {
            return Err(invalid(
                "labels",
                format!("key {key:?}: use 1 to 63 letters, digits, '-', '_', '.' or '/'"),
            ));
        }
        if value.len() > 256
            || value
                .chars()
                .any(|c| c.is_control() || is_format_character(c))
        {
            return Err(invalid(
                "labels",
                format!("value of {key:?}: at most 256 bytes, no control or formatting characters"),
            ));
        }
    }
    Ok(())
}

/// A node's placement view changed (labels assigned): place against it afresh.
fn refresh_placement(state: &HubState, id: &str) {
    if let Some(caps) = state.fleet.live(id).and_then(|live| live.capabilities) {
        crate::work::tasks::observe_capabilities(state, id, &caps);
    }
}

/// Checks a node's display name: 1 to 128 bytes, no control characters (terminal escapes) and
/// no bidirectional or invisible formatting characters (which make a name read as another).
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    if name.trim().is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.len() > 128 {
        return Err(invalid("name", "must be at most 128 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    if let Some(c) = name.chars().find(|&c| is_format_character(c)) {
        return Err(invalid(
            "name",
            format!(
                "must not contain the invisible formatting character U+{:04X}",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// Bidirectional controls, zero-width characters and other invisible formatting: what makes one
/// text read as another (refused in names, escaped by the CLI).
pub fn is_format_character(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

/// Checks a gRPC target (`https://host:port`); an empty one passes unless `required`.
pub fn validate_grpc_target(target: &str, required: bool) -> Result<(), RegistryError> {
    if target.is_empty() {
        return if required {
            Err(invalid(
                "grpc_target",
                "is required (e.g. https://node1.internal:50051)",
            ))
        } else {
            Ok(())
        };
    }
    let rest = target
        .strip_prefix("https://")
        .or_else(|| target.strip_prefix("http://"))
        .ok_or_else(|| {
            invalid(
                "grpc_target",
                format!("{target:?} must start with https:// or http://"),
            )
        })?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| {
        invalid(
            "grpc_target",
            format!("{target:?} must name a port (https://host:port)"),
        )
    })?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
        return Err(invalid(
            "grpc_target",
            format!("{target:?} has no valid host"),
        ));
    }
    port.parse::<u16>().map_err(|_| {
        invalid(
            "grpc_target",
            format!("{target:?} has an invalid port {port:?}"),
        )
    })?;
    Ok(())
}

fn validate_tls_server_name(name: &str) -> Result<(), RegistryError> {
    if name.is_empty() {
        return Ok(());
    }
    if name.len() > 253
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
    {
        return Err(invalid(
            "tls_server_name",
            format!("{name:?} is not a DNS name or IP address"),
        ));
    }
    Ok(())
}

fn validate_worktree_root(root: &str) -> Result<(), RegistryError> {
    if root.is_empty() {
        return Ok(());
    }
    if !root.starts_with('/') {
        return Err(invalid(
            "default_worktree_root",
            format!("{root:?} must be an absolute path"),
        ));
    }
    if root.split('/').any(|part| part == "..") {
        return Err(invalid(
            "default_worktree_root",
            format!("{root:?} must not contain '..'"),
        ));
    }
    Ok(())
}

/// Checks a full record (registration).
pub fn validate_record(record: &NodeRecord) -> Result<(), RegistryError> {
    outpost_trust::identity::validate_node_id(&record.id).map_err(|e| invalid("id", e))?;
    validate_name(&record.name)?;
    validate_grpc_target(&record.grpc_target, true)?;
    validate_tls_server_name(&record.tls_server_name)?;
    validate_worktree_root(&record.default_worktree_root)?;
    validate_labels(&record.labels.clone().into_iter().collect())
}

/// Registers a node ahead of its join.
pub async fn register(state: &HubState, record: NodeRecord) -> Result<NodeView, RegistryError> {
    validate_record(&record)?;
    // No node may take one of the hub's own names.
    state
        .credentials
        .check_node_id(&record.id)
        .map_err(|e| invalid("id", e))?;
    let now = state.now_ms();
    let row = NodeRow {
        id: record.id.clone(),
        name: record.name.trim().to_string(),
        grpc_target: record.grpc_target,
        tls_server_name: record.tls_server_name,
        default_worktree_root: record.default_worktree_root,
        labels: record.labels.into_iter().collect(),
        status: NodeStatus::Offline.as_str().into(),
        status_reason: "registered; not joined yet".into(),
        created_at_ms: now,
        updated_at_ms: now,
        ..NodeRow::default()
    };
    state.store().insert_node(&row).await?;
    state.fleet.set_assigned_labels(&row.id, row.labels.clone());
    state.fleet.liveness().add_known(&row.id, false);
    get(state, &row.id).await
}

/// Changes operator-set fields.
pub async fn update(
    state: &HubState,
    id: &str,
    patch: NodePatch,
) -> Result<NodeView, RegistryError> {
    let mut row = state
        .store()
        .get_node(id)
        .await?
        .ok_or_else(|| RegistryError::NotFound(id.into()))?;
    if let Some(name) = patch.name {
        validate_name(&name)?;
        row.name = name.trim().to_string();
    }
    if let Some(target) = patch.grpc_target {
        validate_grpc_target(&target, false)?;
        row.grpc_target = target;
    }
    if let Some(sni) = patch.tls_server_name {
        validate_tls_server_name(&sni)?;
        row.tls_server_name = sni;
    }
    if let Some(root) = patch.default_worktree_root {
        validate_worktree_root(&root)?;
        row.default_worktree_root = root;
    }
    let relabelled = patch.labels.is_some();
    if let Some(labels) = patch.labels {
        validate_labels(&labels)?;
        row.labels = labels;
    }
    row.updated_at_ms = state.now_ms();
    state.store().update_node_record(&row).await?;
    if relabelled {
        state.fleet.set_assigned_labels(id, row.labels.clone());
        refresh_placement(state, id);
    }
    get(state, id).await
}

/// Deletes a node (refused while it has active agents) and closes its session.
pub async fn delete(state: &HubState, id: &str) -> Result<(), RegistryError> {
    state.store().delete_node(id).await?;
    state.fleet.forget(id);
    // Its tasks go back to the queue on the dispatcher's next pass.
    state.tasks.scheduler().remove_node(id);
    state.fleet.lose_node(id, "deleted from the registry");
    state.tasks.wake_dispatcher();
    Ok(())
}

/// Sets or clears draining.
pub async fn drain(state: &HubState, id: &str, draining: bool) -> Result<NodeView, RegistryError> {
    state
        .store()
        .set_draining(id, draining, state.now_ms())
        .await?;
    let change = {
        let mut fleet = state.fleet.liveness();
        fleet.add_known(id, draining);
        fleet.set_draining(id, draining)
    };
    state.publish(change);
    get(state, id).await
}

/// One node with live state.
pub async fn get(state: &HubState, id: &str) -> Result<NodeView, RegistryError> {
    let row = state
        .store()
        .get_node(id)
        .await?
        .ok_or_else(|| RegistryError::NotFound(id.into()))?;
    Ok(view(state, row))
}

/// Every node with live state.
pub async fn list(state: &HubState) -> Result<Vec<NodeView>, RegistryError> {
    let rows = state.store().list_nodes().await?;
    Ok(rows.into_iter().map(|row| view(state, row)).collect())
}

/// A node's capabilities (live when it has a session, else as last stored).
pub async fn capabilities(state: &HubState, id: &str) -> Result<Capabilities, RegistryError> {
    get(state, id)
        .await?
        .capabilities
        .ok_or_else(|| RegistryError::NotFound(format!("{id} (no capabilities reported yet)")))
}

/// Health: status, and a ping over the session right now.
pub async fn health(state: &HubState, id: &str) -> Result<NodeHealth, RegistryError> {
    let view = get(state, id).await?;
    let live = state.fleet.live.lock().get(id).cloned().unwrap_or_default();
    let mut health = NodeHealth {
        id: id.into(),
        status: view.status.clone(),
        last_heartbeat_ms: view.last_heartbeat_ms,
        heartbeats_received: live.heartbeats,
        load: view.load,
        session_reconnects: live.sessions.saturating_sub(1),
        heartbeat_transport: live
            .heartbeat_transport
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        ..NodeHealth::default()
    };
    match state.fleet.links().get(id) {
        None => {
            health.error = format!(
                "no session to this hub ({})",
                if view.status_reason.is_empty() {
                    "offline"
                } else {
                    &view.status_reason
                }
            )
        }
        Some(link) => {
            health.route = link.route().to_string();
            if health.route == "direct" {
                health.route_target = link.remote();
            }
            health.session_rtt_us = link
                .rtt()
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
            match link.ping().await {
                Ok(rtt) => {
                    health.reachable = true;
                    health.ping_rtt_us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                }
                Err(e) => health.error = e.to_string(),
            }
        }
    }
    Ok(health)
}

fn view(state: &HubState, row: NodeRow) -> NodeView {
    let (status, reason) = match state.fleet.liveness().status_with_reason(&row.id) {
        Some((status, reason)) => (status.as_str().to_string(), reason),
        None => (row.status.clone(), row.status_reason.clone()),
    };
    let live = state.fleet.live.lock().get(&row.id).cloned();
    let last_seen = live.as_ref().and_then(|l| l.last_heartbeat_ms);
    // The stored capabilities are decoded only for a node without live ones.
    let mut capabilities = live
        .as_ref()
        .and_then(|l| l.capabilities.clone())
        .or_else(|| {
            row.capabilities
                .as_deref()
                .and_then(|bytes| Capabilities::decode(bytes).ok())
        });
    // The latest heartbeat's GPU snapshot is fresher than the one in the capabilities.
    if let (Some(caps), Some(gpus)) = (
        capabilities.as_mut(),
        live.as_ref().and_then(|l| l.gpus.clone()),
    ) {
        caps.gpus = Some(gpus);
    }
    NodeView {
        record: Some(NodeRecord {
            id: row.id,
            name: row.name,
            grpc_target: row.grpc_target,
            tls_server_name: row.tls_server_name,
            default_worktree_root: row.default_worktree_root,
            labels: row.labels.into_iter().collect(),
        }),
        status,
        joined: row.public_key_sha256.is_some(),
        joined_at_ms: row.joined_at_ms.unwrap_or(0),
        last_heartbeat_ms: last_seen.or(row.last_heartbeat_ms).unwrap_or(0),
        load: live.as_ref().and_then(|l| l.load),
        capabilities,
        status_reason: reason,
        session_addr: live.map(|l| l.session_addr).unwrap_or_default(),
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: "Node".into(),
            grpc_target: "https://node1.internal:50051".into(),
            tls_server_name: "node1.internal".into(),
            default_worktree_root: "/data/worktrees".into(),
            labels: [("zone".to_string(), "edge".to_string())].into(),
        }
    }

    #[test]
    fn assigned_labels_are_checked() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(validate_labels(&labels(&[("gpu.tier", "a100"), ("team/ml", "")])).is_ok());
        for bad in [
            labels(&[("", "x")]),
            labels(&[("bad key", "x")]),
            labels(&[("k", "\u{1b}[2J")]),
            labels(&[("k", "\u{202e}evil")]),
            labels(&[("k", &"v".repeat(257))]),
            (0..=MAX_LABELS)
                .map(|i| (format!("k{i}"), String::new()))
                .collect(),
        ] {
            assert_eq!(field_of(validate_labels(&bad).unwrap_err()), "labels");
        }
    }

    #[test]
    fn assigned_labels_win_and_node_labels_count_only_when_trusted() {
        let reported: std::collections::HashMap<String, String> = [
            ("zone".to_string(), "secure".to_string()),
            ("os".to_string(), "linux".to_string()),
        ]
        .into();
        let assigned: BTreeMap<String, String> = [("zone".to_string(), "edge".to_string())].into();
        let trusted = crate::fleet::placement_labels(&reported, Some(&assigned), true);
        assert_eq!(trusted.get("zone").map(String::as_str), Some("edge"));
        assert_eq!(trusted.get("os").map(String::as_str), Some("linux"));
        let untrusted = crate::fleet::placement_labels(&reported, Some(&assigned), false);
        assert_eq!(untrusted.len(), 1);
        assert_eq!(untrusted.get("zone").map(String::as_str), Some("edge"));
        assert!(crate::fleet::placement_labels(&reported, None, false).is_empty());
    }

    fn field_of(e: RegistryError) -> String {
        match e {
            RegistryError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        assert!(validate_record(&record("node-01")).is_ok());
        assert_eq!(
            field_of(
                validate_record(&NodeRecord {
                    id: "bad id".into(),
                    ..record("x")
                })
                .unwrap_err()
            ),
            "id"
        );
        assert_eq!(
            field_of(
                validate_record(&NodeRecord {
                    name: " ".into(),
                    ..record("x")
                })
                .unwrap_err()
            ),
            "name"
        );
        assert_eq!(
            field_of(
                validate_record(&NodeRecord {
                    grpc_target: String::new(),
                    ..record("x")
                })
                .unwrap_err()
            ),
            "grpc_target"
        );
        assert_eq!(
            field_of(
                validate_record(&NodeRecord {
                    grpc_target: "ftp://x:1".into(),
                    ..record("x")
                })
                .unwrap_err()
            ),
            "grpc_target"
        );
        assert_eq!(
            field_of(
                validate_record(&NodeRecord {
                    grpc_target: "https://x".into(),
                    ..record("x")
                })
                .unwrap_err()
            ),
            "grpc_target"
        );
        assert_eq!(
            field_of(
                validate_record(&NodeRecord {
                    grpc_target: "https://x:99999".into(),
                    ..record("x")
                })
                .unwrap_err()
            ),
            "grpc_target"
        );
        assert_eq!(
            field_of(
                validate_record(&NodeRecord {
                    tls_server_name: "a b".into(),
                    ..record("x")
                })
                .unwrap_err()
            ),
            "tls_server_name"
        );
        assert_eq!(
            field_of(
                validate_record(&NodeRecord {
                    default_worktree_root: "relative".into(),
                    ..record("x")
                })
                .unwrap_err()
            ),
            "default_worktree_root"
        );
        assert_eq!(
            field_of(
                validate_record(&NodeRecord {
                    default_worktree_root: "/a/../etc".into(),
                    ..record("x")
                })
                .unwrap_err()
            ),
            "default_worktree_root"
        );
    }
}
