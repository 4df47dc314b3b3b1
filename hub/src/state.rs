//! What every surface of the hub (gRPC, REST, QUIC sessions, background tasks) shares.

use std::collections::HashMap;
use std::sync::Arc;

use outpost_clock::Clock;
use outpost_proto::v1::{Capabilities, GpuSnapshot, Load};
use outpost_trust::auth::TokenAuthority;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::credentials::pki::CertAuthority;
use crate::fleet::links::LinkTable;
use crate::fleet::{FleetState, NodeStatus, StatusChange};
use crate::store::Store;
use crate::work::scheduler::Scheduler;

/// What the hub knows of a node that is not worth a database write per heartbeat.
#[derive(Debug, Clone, Default)]
pub struct LiveNode {
    /// Latest load.
    pub load: Option<Load>,
    /// Latest GPU snapshot.
    pub gpus: Option<GpuSnapshot>,
    /// Latest capabilities.
    pub capabilities: Option<Capabilities>,
    /// Where the session comes from.
    pub session_addr: String,
    /// Heartbeats received since the hub started.
    pub heartbeats: u64,
    /// Sessions established since the hub started.
    pub sessions: u64,
    /// Highest heartbeat sequence number seen in the current session.
    pub last_seq: u64,
    /// How the latest heartbeat came.
    pub heartbeat_transport: Option<HeartbeatTransport>,
    /// Wall time (Unix ms) of the latest heartbeat or session hello, as shown and stored.
    pub last_heartbeat_ms: Option<i64>,
}

/// The ways a heartbeat reaches the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatTransport {
    /// A sealed packet on the heartbeat channel (the normal way).
    Channel,
    /// A QUIC datagram on the session (a hub or network without the channel).
    Datagram,
    /// An event on a QUIC stream (a heartbeat too large for a datagram).
    Stream,
}

impl HeartbeatTransport {
    /// The name shown in `nodes health`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Channel => "channel",
            Self::Datagram => "datagram",
            Self::Stream => "stream",
        }
    }
}

/// Shared hub state.
#[derive(Debug)]
pub struct HubState {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Liveness.
    pub fleet: Mutex<FleetState>,
    /// Live, non-durable node data.
    pub live: Mutex<HashMap<String, LiveNode>>,
    /// Sessions to nodes.
    pub links: LinkTable,
    /// JWT minting and checking.
    pub auth: TokenAuthority,
    /// The CA signing node certificates.
    pub ca: CertAuthority,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Proof key of the static bootstrap token, when one is configured.
    pub static_token_key: Option<[u8; 32]>,
    /// UDP port of the QUIC session endpoint.
    pub quic_port: u16,
    /// Status changes waiting to be persisted.
    pub status_changes: mpsc::UnboundedSender<StatusChange>,
    /// Heartbeat times waiting to be persisted (latest per node).
    pub pending_heartbeats: Mutex<HashMap<String, i64>>,
    /// Which mode the internal API runs in.
    pub mtls: bool,
    /// Task placement.
    pub scheduler: Mutex<Scheduler>,
    /// Wakes the task dispatcher (a task was submitted, a node changed, capacity freed).
    pub dispatch: tokio::sync::Notify,
    /// Nodes that went offline, with the reason, whose tasks must be placed again.
    pub lost_nodes: Mutex<Vec<(String, String)>>,
    /// Placements a task may take unless it says (`[scheduler] default_max_attempts`).
    pub default_max_attempts: u32,
    /// Whether tools are installed on the connected nodes at push and when a node connects
    /// (`[tools] preinstall`).
    pub preinstall_tools: bool,
    /// Tool transfers to nodes running at once (installs that carry a component's bytes).
    pub tool_transfers: tokio::sync::Semaphore,
    /// Counts finished liveness passes (expiry of silent nodes; tests wait for one instead of
    /// sleeping).
    pub liveness_passes: tokio::sync::watch::Sender<u64>,
    /// Counts finished dispatcher passes (tests wait for one instead of sleeping).
    pub dispatch_passes: tokio::sync::watch::Sender<u64>,
    /// Bumped on every task status change (waiters watch it).
    pub task_changes: tokio::sync::watch::Sender<u64>,
    /// Held while queued tasks are being placed (a dispatcher pass, or a submit placing its own
    /// task at once), so one task is never placed by both.
    pub placing: tokio::sync::Mutex<()>,
    /// True when the last dispatcher pass left tasks queued: a new task then waits its turn
    /// instead of being placed at submit.
    pub queue_backlog: std::sync::atomic::AtomicBool,
    /// The row of each attempt this hub placed and that has not ended, as last written: a
    /// result for it needs no read before its compare-and-set write (which still decides).
    pub in_flight: Mutex<HashMap<String, crate::store::TaskRow>>,
    /// The last task that finished on this hub, as written (waiters take it from here).
    pub last_finished: tokio::sync::watch::Sender<Option<Arc<crate::store::TaskRow>>>,
    /// Tool metadata (no component bytes) by name, with when it was read.
    pub tool_meta: Mutex<HashMap<String, (crate::store::ToolRow, std::time::Instant)>>,
    /// The heartbeat channels of the live sessions.
    pub heartbeat_channels: Arc<crate::fleet::heartbeat_channel::ChannelTable>,
    /// Moves of silent sessions from the channel to datagrams still allowed in this window.
    pub channel_fallbacks: Mutex<crate::fleet::heartbeat_channel::FallbackBudget>,
}

impl HubState {
    /// Wall time from the injected clock (Unix ms): for what is stored or shown.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Monotonic time from the injected clock (ms since its origin): for TTLs, grace and
    /// deadlines, which no wall-clock step may move.
    pub fn monotonic_ms(&self) -> i64 {
        i64::try_from(self.clock.monotonic_ms()).unwrap_or(i64::MAX)
    }

    /// Queues status changes for the persister and tells placement about them.
    pub fn publish(&self, changes: impl IntoIterator<Item = StatusChange>) {
        let mut woke = false;
        for change in changes {
            tracing::info!(node_id = %change.node_id, from = %change.from, to = %change.to, reason = %change.reason, "node status");
            let placement = self.fleet.lock().placement_state(&change.node_id);
            if let Some((accepting, fence)) = placement {
                let mut scheduler = self.scheduler.lock();
                scheduler.set_accepting(&change.node_id, accepting);
                scheduler.set_gpu_fence(&change.node_id, fence);
            }
            if change.to == NodeStatus::Offline {
                self.lost_nodes
                    .lock()
                    .push((change.node_id.clone(), change.reason.clone()));
                self.heartbeats_lost_on_live_session(&change.node_id);
            }
            woke = true;
            let _ = self.status_changes.send(change);
        }
        if woke {
            self.dispatch.notify_one();
        }
    }

    /// A node went offline for want of heartbeats: if its session is still up, its heartbeats
    /// are being lost on the way (a network that drops the channel's packets), so it is told to
    /// send them as QUIC datagrams from now on; the next one brings it back online.
    /// Only a few sessions move per window ([`FallbackBudget`]): a wave of nodes going silent
    /// together is the hub or the network, not one path, and datagrams would only cost more.
    ///
    /// [`FallbackBudget`]: crate::fleet::heartbeat_channel::FallbackBudget
    fn heartbeats_lost_on_live_session(&self, node_id: &str) {
        let (Some(link), Ok(runtime)) = (
            self.links.get(node_id),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        if !self.channel_fallbacks.lock().allow(self.monotonic_ms()) {
            tracing::debug!(node_id = %node_id, "many sessions went silent at once; this one stays on the heartbeat channel");
            return;
        }
        let node_id = node_id.to_string();
        runtime.spawn(async move {
            match link.set_heartbeat_channel(false).await {
                Ok(()) => tracing::warn!(node_id = %node_id, "heartbeats stopped arriving on the heartbeat channel while the session is up; the node now sends them as QUIC datagrams"),
                Err(e) => tracing::debug!(node_id = %node_id, error = %e, "could not move a silent node's heartbeats to datagrams"),
            }
        });
    }

    /// Tells task waiters that some task changed.
    pub fn task_changed(&self) {
        self.task_changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}
