//! What every surface of the hub (gRPC, REST, QUIC sessions, background tasks) shares: the store
//! and the clock, and one handle per subsystem — [`Fleet`], [`TaskEngine`], [`ToolRegistry`] and
//! [`HubCredentials`] — each keeping its state private behind a small API.
//!
//! The only rule that crosses subsystems lives here: a node's status change ([`HubState::publish`])
//! tells placement whether the node takes work, and sends its tasks back to the queue when it went
//! offline.

use std::sync::Arc;

use outpost_clock::Clock;

use crate::credentials::HubCredentials;
use crate::fleet::{Fleet, NodeStatus, StatusChange};
use crate::store::Store;
use crate::work::tasks::TaskEngine;
use crate::work::tools::ToolRegistry;

/// Shared hub state.
#[derive(Debug)]
pub struct HubState {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Nodes: liveness, live data, sessions, links and heartbeat channels.
    pub fleet: Fleet,
    /// Tasks: placement, dispatch, attempts in flight and waiters.
    pub tasks: TaskEngine,
    /// Tools: metadata cache, preinstall and transfers to nodes.
    pub tools: ToolRegistry,
    /// What the hub issues and checks: JWTs, node certificates, the static bootstrap token.
    pub credentials: HubCredentials,
    /// Agents: their output and reconciliation.
    pub agents: crate::work::agents::AgentHub,
    /// Actors: mailbox limits, the tool policy, and who waits for mail or a review.
    pub actors: crate::actors::ActorHub,
    /// Prometheus metrics.
    pub metrics: crate::telemetry::HubMetrics,
    /// Every write, queued for the store.
    pub audit: crate::audit::AuditLog,
    /// Cancelled when the hub stops: ends the MCP endpoint's open streams and sessions.
    pub mcp_shutdown: tokio_util::sync::CancellationToken,
}

impl HubState {
    /// Puts the subsystems together over one store and one clock.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        fleet: Fleet,
        tasks: TaskEngine,
        tools: ToolRegistry,
        credentials: HubCredentials,
    ) -> Self {
        Self {
            store,
            clock,
            fleet,
            tasks,
            tools,
            credentials,
            agents: crate::work::agents::AgentHub::default(),
            actors: crate::actors::ActorHub::default(),
            metrics: crate::telemetry::HubMetrics::new(),
            audit: crate::audit::AuditLog::default(),
            mcp_shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Records a write in the audit log, stamped now.
    pub fn audit(&self, entry: crate::store::AuditRow) {
        self.audit.record(crate::store::AuditRow {
            at_ms: self.now_ms(),
            ..entry
        });
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Durable state.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Wall time from the injected clock (Unix ms): for what is stored or shown.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Monotonic time from the injected clock (ms since its origin): for TTLs, grace and
    /// deadlines, which no wall-clock step may move.
    pub fn monotonic_ms(&self) -> i64 {
        i64::try_from(self.clock.monotonic_ms()).unwrap_or(i64::MAX)
    }

    /// Queues status changes for the persister and tells placement about them: whether the node
    /// takes work and is fenced, and, when it went offline, that its tasks must be placed again.
    pub fn publish(&self, changes: impl IntoIterator<Item = StatusChange>) {
        let mut woke = false;
        for change in changes {
            tracing::info!(node_id = %change.node_id, from = %change.from, to = %change.to, reason = %change.reason, "node status");
            let placement = self.fleet.liveness().placement_state(&change.node_id);
            if let Some((accepting, fence)) = placement {
                let mut scheduler = self.tasks.scheduler();
                scheduler.set_accepting(&change.node_id, accepting);
                scheduler.set_gpu_fence(&change.node_id, fence);
            }
            if change.to == NodeStatus::Offline {
                self.fleet.lose_node(&change.node_id, &change.reason);
                self.fleet
                    .heartbeats_lost_on_live_session(&change.node_id, self.monotonic_ms());
            }
            woke = true;
            self.fleet.persist_status(change);
        }
        if woke {
            self.tasks.wake_dispatcher();
        }
    }
}
