//! JSON shapes of the contract's messages, shared by the REST API and the CLI's `--json` output,
//! so both print the same field names (AgentHub's registry names, INTERFACE.md's GPU names),
//! and the protobuf view of a stored task ([`task_view`]).

use outpost_proto::v1::{
    Capabilities, GpuDevice, GpuSnapshot, Load, NodeHealth, NodeRecord, NodeView, TaskView,
};
use serde_json::{Value, json};

use crate::store::TaskRow;
use crate::work::tasks::RequirementsSpec;

/// RFC 3339 text for a millisecond timestamp; `null` for 0.
pub fn time_json(ms: i64) -> Value {
    if ms <= 0 {
        return Value::Null;
    }
    let Ok(ms) = u64::try_from(ms) else {
        return Value::Null;
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Value::String(humantime::format_rfc3339_millis(at).to_string())
}

/// The registry fields.
pub fn record_json(record: &NodeRecord) -> Value {
    json!({
        "id": record.id,
        "name": record.name,
        "grpc_target": record.grpc_target,
        "tls_server_name": record.tls_server_name,
        "default_worktree_root": record.default_worktree_root,
        "labels": record.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
    })
}

/// One GPU.
pub fn gpu_json(gpu: &GpuDevice) -> Value {
    json!({
        "index": gpu.index,
        "uuid": gpu.uuid,
        "name": gpu.name,
        "memory_total_mb": gpu.memory_total_mb,
        "memory_used_mb": gpu.memory_used_mb,
        "memory_free_mb": gpu.memory_free_mb,
        "utilization_percent": gpu.utilization_percent,
        "temperature_c": gpu.temperature_c,
        "power_mw": gpu.power_mw,
        "compute_capability": gpu.compute_capability,
        "mig_parent_uuid": if gpu.parent_uuid.is_empty() { Value::Null } else { Value::String(gpu.parent_uuid.clone()) },
        "mig_enabled": gpu.mig_enabled,
    })
}

/// A GPU snapshot.
pub fn gpus_json(snapshot: &GpuSnapshot) -> Value {
    json!({
        "probe": snapshot.probe,
        "driver_version": snapshot.driver_version,
        "devices": snapshot.devices.iter().map(gpu_json).collect::<Vec<_>>(),
        "unavailable_reason": snapshot.unavailable_reason,
        "fenced": snapshot.fenced,
    })
}

/// Load.
pub fn load_json(load: &Load) -> Value {
    json!({
        "cpu_percent": (load.cpu_percent * 10.0).round() / 10.0,
        "memory_used_bytes": load.memory_used_bytes,
        "memory_total_bytes": load.memory_total_bytes,
        "disk_used_bytes": load.disk_used_bytes,
        "disk_total_bytes": load.disk_total_bytes,
        "load_avg_1m": load.load_avg_1m,
        "running_tasks": load.running_tasks,
    })
}

/// Capabilities in PRX's groups.
pub fn capabilities_json(caps: &Capabilities) -> Value {
    let hardware = caps.hardware.clone().unwrap_or_default();
    let sandbox = caps.sandbox.clone().unwrap_or_default();
    json!({
        "hardware": {
            "cpu_cores": hardware.cpu_cores,
            "memory_total_bytes": hardware.memory_total_bytes,
            "os": hardware.os,
            "arch": hardware.arch,
            "hostname": hardware.hostname,
            "tags": hardware.tags,
        },
        "software": caps.software.iter().map(|s| json!({"name": s.name, "path": s.path})).collect::<Vec<_>>(),
        "labels": caps.labels,
        "sandbox": {
            "wasm": sandbox.wasm,
            "native": sandbox.native,
            "landlock": sandbox.landlock,
            "landlock_abi": sandbox.landlock_abi,
            "landlock_enforcement": sandbox.landlock_enforcement,
            "require_landlock": sandbox.require_landlock,
            "detail": sandbox.detail,
        },
        "gpus": caps.gpus.as_ref().map(gpus_json),
        "agent_version": caps.agent_version,
        "safe_paths": caps.safe_paths,
    })
}

/// A node: registry fields at the top level, then live state.
pub fn node_json(view: &NodeView) -> Value {
    let mut value = view
        .record
        .as_ref()
        .map(record_json)
        .unwrap_or_else(|| json!({}));
    let gpus: Vec<Value> = view
        .capabilities
        .as_ref()
        .and_then(|c| c.gpus.as_ref())
        .map(|g| g.devices.iter().map(gpu_json).collect())
        .unwrap_or_default();
    if let Value::Object(map) = &mut value {
        map.insert("status".into(), json!(view.status));
        map.insert("status_reason".into(), json!(view.status_reason));
        map.insert("joined".into(), json!(view.joined));
        map.insert("joined_at".into(), time_json(view.joined_at_ms));
        map.insert("last_heartbeat".into(), time_json(view.last_heartbeat_ms));
        map.insert("last_heartbeat_ms".into(), json!(view.last_heartbeat_ms));
        map.insert("session_addr".into(), json!(view.session_addr));
        map.insert(
            "load".into(),
            view.load.as_ref().map_or(Value::Null, load_json),
        );
        map.insert("gpus".into(), Value::Array(gpus));
        map.insert(
            "capabilities".into(),
            view.capabilities
                .as_ref()
                .map_or(Value::Null, capabilities_json),
        );
        map.insert("created_at".into(), time_json(view.created_at_ms));
        map.insert("updated_at".into(), time_json(view.updated_at_ms));
    }
    value
}

/// Health.
pub fn health_json(health: &NodeHealth) -> Value {
    json!({
        "id": health.id,
        "status": health.status,
        "reachable": health.reachable,
        "ping_rtt_us": health.ping_rtt_us,
        "session_rtt_us": health.session_rtt_us,
        "last_heartbeat": time_json(health.last_heartbeat_ms),
        "heartbeats_received": health.heartbeats_received,
        "heartbeat_transport": if health.heartbeat_transport.is_empty() { Value::Null } else { Value::String(health.heartbeat_transport.clone()) },
        "session_reconnects": health.session_reconnects,
        "route": if health.route.is_empty() { Value::Null } else { Value::String(health.route.clone()) },
        "route_target": if health.route_target.is_empty() { Value::Null } else { Value::String(health.route_target.clone()) },
        "load": health.load.as_ref().map_or(Value::Null, load_json),
        "error": if health.error.is_empty() { Value::Null } else { Value::String(health.error.clone()) },
    })
}

/// The protobuf view of a task.
pub fn task_view(task: &TaskRow) -> TaskView {
    let requirements: RequirementsSpec =
        serde_json::from_str(&task.requirements).unwrap_or_default();
    TaskView {
        id: task.id.clone(),
        tool: task.tool.clone(),
        command: task.command.clone(),
        input: task.input.clone(),
        requirements: Some(requirements.to_proto()),
        status: task.status.as_str().into(),
        node: task.node_id.clone(),
        reason: task.reason.clone(),
        attempts: u32::try_from(task.attempts).unwrap_or(0),
        max_attempts: u32::try_from(task.max_attempts).unwrap_or(0),
        timeout_ms: u64::try_from(task.timeout_ms).unwrap_or(0),
        devices: task
            .devices
            .split(',')
            .filter_map(|d| d.parse().ok())
            .collect(),
        output: task.output.clone().unwrap_or_default(),
        error_kind: task.error_kind.clone(),
        error_message: task.error_message.clone(),
        idempotency_key: task.idempotency_key.clone().unwrap_or_default(),
        created_at_ms: task.created_at_ms,
        updated_at_ms: task.updated_at_ms,
        started_at_ms: task.started_at_ms.unwrap_or(0),
        finished_at_ms: task.finished_at_ms.unwrap_or(0),
        duration_us: u64::try_from(task.duration_us).unwrap_or(0),
        fuel_used: u64::try_from(task.fuel_used).unwrap_or(0),
        late_results: u32::try_from(task.late_results).unwrap_or(0),
        workdir: task.workdir.clone(),
    }
}

/// The JSON shape of a task (REST and `--json`).
pub fn task_json(task: &TaskView) -> serde_json::Value {
    let requirements = RequirementsSpec::from_proto(task.requirements.as_ref());
    serde_json::json!({
        "id": task.id,
        "tool": task.tool,
        "command": task.command,
        "workdir": task.workdir,
        "input": task.input,
        "requirements": requirements,
        "status": task.status,
        "node": task.node,
        "reason": task.reason,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "timeout_ms": task.timeout_ms,
        "devices": task.devices,
        "output": task.output,
        "error": if task.error_kind.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!({"kind": task.error_kind, "message": task.error_message})
        },
        "idempotency_key": task.idempotency_key,
        "created_at_ms": task.created_at_ms,
        "updated_at_ms": task.updated_at_ms,
        "started_at_ms": task.started_at_ms,
        "finished_at_ms": task.finished_at_ms,
        "duration_us": task.duration_us,
        "fuel_used": task.fuel_used,
        "late_results": task.late_results,
    })
}

/// The protobuf view of an agent.
pub fn agent_view(agent: &crate::store::AgentRow) -> outpost_proto::v1::AgentView {
    let spec = crate::work::agents::spec_of(agent);
    let workdir_mode = if spec.is_tool() {
        String::new()
    } else {
        spec.mode().to_string()
    };
    outpost_proto::v1::AgentView {
        id: agent.id.clone(),
        name: agent.name.clone(),
        node: agent.node_id.clone(),
        status: agent.status.clone(),
        run: agent.run,
        exit_code: agent.exit_code,
        signal: agent.signal,
        reason: agent.reason.clone(),
        landlock: agent.landlock.clone(),
        command: spec.command,
        args: spec.args,
        env_allow: spec.env_allow,
        workdir: spec.workdir,
        memory_bytes: spec.memory_bytes,
        cpu_seconds: spec.cpu_seconds,
        timeout_ms: spec.timeout_ms,
        max_output_bytes: spec.max_output_bytes,
        created_at_ms: agent.created_at_ms,
        updated_at_ms: agent.updated_at_ms,
        started_at_ms: agent.started_at_ms.unwrap_or(0),
        finished_at_ms: agent.finished_at_ms.unwrap_or(0),
        workdir_mode,
        repo: spec.repo,
        tool: spec.tool,
        gpu_milli: spec.gpu_milli,
        gpu_memory_mb: spec.gpu_memory_mb,
        compute_capability: spec.compute_capability,
        teams: spec.teams,
        wake_on_message: spec.wake_on_message,
    }
}

/// The JSON shape of an agent (REST and `--json`): the seed's card shows `node:<id>`.
pub fn agent_json(agent: &outpost_proto::v1::AgentView) -> Value {
    json!({
        "id": agent.id,
        "name": agent.name,
        "node": agent.node,
        "placement": format!("node:{}", agent.node),
        "status": agent.status,
        "run": agent.run,
        "exit_code": agent.exit_code,
        "signal": agent.signal,
        "reason": agent.reason,
        "landlock": agent.landlock,
        "runtime": if agent.tool.is_empty() {
            json!({
                "kind": "native",
                "command": agent.command,
                "args": agent.args,
                "env_allow": agent.env_allow,
            })
        } else {
            json!({ "kind": "wasm", "tool": agent.tool })
        },
        "workdir": agent.workdir,
        "workdir_mode": agent.workdir_mode,
        "repo": agent.repo,
        "gpus": {
            "count": f64::from(agent.gpu_milli) / 1000.0,
            "memory_mb": agent.gpu_memory_mb,
            "compute_capability": agent.compute_capability,
        },
        "limits": {
            "memory_bytes": agent.memory_bytes,
            "cpu_seconds": agent.cpu_seconds,
            "timeout_ms": agent.timeout_ms,
            "max_output_bytes": agent.max_output_bytes,
        },
        "teams": agent.teams,
        "wake_on_message": agent.wake_on_message,
        "created_at": time_json(agent.created_at_ms),
        "updated_at": time_json(agent.updated_at_ms),
        "started_at": time_json(agent.started_at_ms),
        "finished_at": time_json(agent.finished_at_ms),
    })
}

/// An audit entry on the wire.
pub fn audit_view(row: &crate::store::AuditRow) -> outpost_proto::v1::AuditEntry {
    outpost_proto::v1::AuditEntry {
        id: row.id,
        at_ms: row.at_ms,
        subject: row.subject.clone(),
        role: row.role.clone(),
        surface: row.surface.clone(),
        action: row.action.clone(),
        target: row.target.clone(),
        outcome: row.outcome.clone(),
        status: row.status,
    }
}

/// An audit entry as JSON (REST and `outpost audit list --json`).
pub fn audit_json(entry: &outpost_proto::v1::AuditEntry) -> Value {
    json!({
        "id": entry.id,
        "at": time_json(entry.at_ms),
        "at_ms": entry.at_ms,
        "subject": entry.subject,
        "role": entry.role,
        "surface": entry.surface,
        "action": entry.action,
        "target": entry.target,
        "outcome": entry.outcome,
        "status": entry.status,
    })
}
