//! What the scheduler knows of each node, kept current from the fleet: capabilities (devices,
//! labels, software, sandbox) when a session comes up or they change, free GPU memory and the
//! tasks a node runs from every heartbeat.

use std::collections::HashSet;

use outpost_proto::v1::{Capabilities, Heartbeat};

use crate::state::HubState;
use crate::work::scheduler::{ComputeCapability, DeviceReport, NodeReport};

/// What the scheduler needs from a node's capabilities and fleet state.
pub fn node_report(node_id: &str, caps: &Capabilities, state: &HubState) -> NodeReport {
    let (accepting, gpu_fence) = state
        .fleet
        .liveness()
        .placement_state(node_id)
        .unwrap_or((Err("unknown to the fleet".into()), None));
    let mut capabilities: HashSet<String> = caps.software.iter().map(|s| s.name.clone()).collect();
    if let Some(hw) = &caps.hardware {
        capabilities.extend(hw.tags.iter().cloned());
    }
    if let Some(sandbox) = &caps.sandbox {
        if sandbox.wasm {
            capabilities.insert("wasm".into());
        }
        if sandbox.landlock {
            capabilities.insert("landlock".into());
        }
        if sandbox.native {
            capabilities.insert(crate::work::tasks::spec::NATIVE_CAPABILITY.into());
        }
    }
    let devices = caps
        .gpus
        .as_ref()
        .filter(|g| !g.fenced)
        .map(|g| {
            g.devices
                .iter()
                .map(|d| DeviceReport {
                    index: d.index,
                    uuid: d.uuid.clone(),
                    memory_total_mb: d.memory_total_mb,
                    memory_free_mb: d.memory_free_mb,
                    compute_capability: ComputeCapability::parse(&d.compute_capability)
                        .unwrap_or_default(),
                    parent_uuid: d.parent_uuid.clone(),
                    mig_enabled: d.mig_enabled,
                })
                .collect()
        })
        .unwrap_or_default();
    NodeReport {
        id: node_id.into(),
        accepting,
        gpu_fence,
        labels: state.fleet.placement_labels(node_id, &caps.labels),
        capabilities,
        devices,
    }
}

/// A node's capabilities arrived (session hello or a change): refresh its placement view.
pub fn observe_capabilities(state: &HubState, node_id: &str, caps: &Capabilities) {
    let report = node_report(node_id, caps, state);
    state.tasks.scheduler().upsert_node(report);
    crate::work::agents::restore_holds(state, node_id);
    state.tasks.wake_dispatcher();
}

/// A heartbeat, arrived at monotonic `now_ms`: fresh free memory, and which tasks and agents
/// run (confirming their reservations).
pub fn observe_heartbeat(state: &HubState, node_id: &str, heartbeat: &Heartbeat, now_ms: i64) {
    let free = heartbeat
        .gpus
        .iter()
        .flat_map(|g| &g.devices)
        .map(|d| (d.uuid.as_str(), d.memory_free_mb));
    // Agents hold reservations under their ids too.
    let running: std::borrow::Cow<'_, [String]> = if heartbeat.running_agents.is_empty() {
        std::borrow::Cow::Borrowed(&heartbeat.running_tasks)
    } else {
        std::borrow::Cow::Owned(
            heartbeat
                .running_tasks
                .iter()
                .chain(&heartbeat.running_agents)
                .cloned()
                .collect(),
        )
    };
    state
        .tasks
        .scheduler()
        .observe_heartbeat(node_id, free, &running, now_ms);
}
