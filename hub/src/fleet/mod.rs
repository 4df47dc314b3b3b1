//! The fleet: which nodes exist, which are alive, and how the hub reaches them.
//!
//! - [`liveness`]: node liveness as a pure state machine ([`FleetState`]: heartbeat TTL, grace,
//!   offline, draining, fenced) on an injected clock.
//! - [`sessions`]: the QUIC endpoint that accepts node sessions and feeds heartbeats and events in.
//! - [`heartbeat_channel`]: the sealed UDP heartbeat packets on the QUIC port.
//! - [`links`]: commands from the hub down to one node ([`links::NodeLink`]).
//! - [`registry`]: the operator-facing node records, with the rules REST and gRPC share.
//!
//! [`Fleet`] is the subsystem's handle in the hub's state: the liveness machine behind its lock,
//! what heartbeats say of each node ([`LiveNode`]), the links, and the queues to the status
//! persister and the task dispatcher.

pub mod direct_route;
pub mod heartbeat_channel;
pub mod links;
pub mod liveness;
pub mod registry;
pub mod sessions;

pub use liveness::{FleetPolicy, FleetState, NodeStatus, StatusChange};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use outpost_proto::v1::{Capabilities, GpuSnapshot, Load};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};

use heartbeat_channel::{ChannelTable, FallbackBudget};
use links::LinkTable;

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

/// The fleet subsystem: liveness, live node data, links to the nodes' sessions, heartbeat
/// channels, and the queues that carry status changes to the persister and lost nodes to the
/// dispatcher.
#[derive(Debug)]
pub struct Fleet {
    liveness: Mutex<FleetState>,
    live: Mutex<HashMap<String, LiveNode>>,
    links: LinkTable,
    status_changes: mpsc::UnboundedSender<StatusChange>,
    /// Wall time of the latest heartbeat per node, waiting to be persisted.
    heartbeat_times: Mutex<HashMap<String, i64>>,
    /// Nodes that went offline (or were deleted), with the reason, whose tasks must be placed
    /// again.
    lost_nodes: Mutex<Vec<(String, String)>>,
    heartbeat_channels: Arc<ChannelTable>,
    /// Moves of silent sessions from the channel to datagrams still allowed in this window.
    channel_fallbacks: Mutex<FallbackBudget>,
    /// Counts finished liveness passes (tests wait for one instead of sleeping).
    liveness_passes: watch::Sender<u64>,
    quic_port: u16,
    /// Labels operators assigned, and whether nodes' own labels count for placement.
    labels: Mutex<AssignedLabels>,
}

/// Labels operators assigned to nodes (from the registry), and whether placement also trusts
/// the labels nodes report about themselves.
#[derive(Debug)]
struct AssignedLabels {
    trust_node_labels: bool,
    by_node: HashMap<String, BTreeMap<String, String>>,
}

/// The labels placement sees for a node: those it reports (when trusted), overlaid by those an
/// operator assigned.
pub fn placement_labels(
    reported: &HashMap<String, String>,
    assigned: Option<&BTreeMap<String, String>>,
    trust_reported: bool,
) -> HashMap<String, String> {
    let mut labels = if trust_reported {
        reported.clone()
    } else {
        HashMap::new()
    };
    if let Some(assigned) = assigned {
        labels.extend(assigned.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    labels
}

impl Fleet {
    /// A fleet over `liveness` (loaded with the known nodes), sending status changes to
    /// `status_changes`, with the QUIC endpoint's heartbeat channels and port.
    pub fn new(
        liveness: FleetState,
        status_changes: mpsc::UnboundedSender<StatusChange>,
        heartbeat_channels: Arc<ChannelTable>,
        quic_port: u16,
    ) -> Self {
        Self {
            liveness: Mutex::new(liveness),
            live: Mutex::new(HashMap::new()),
            links: LinkTable::default(),
            status_changes,
            heartbeat_times: Mutex::new(HashMap::new()),
            lost_nodes: Mutex::new(Vec::new()),
            heartbeat_channels,
            channel_fallbacks: Mutex::new(FallbackBudget::default()),
            liveness_passes: watch::channel(0).0,
            quic_port,
            labels: Mutex::new(AssignedLabels {
                trust_node_labels: true,
                by_node: HashMap::new(),
            }),
        }
    }

    /// Whether placement uses the labels nodes report about themselves (`[scheduler]
    /// trust_node_labels`).
    pub fn set_trust_node_labels(&self, trust: bool) {
        self.labels.lock().trust_node_labels = trust;
    }

    /// Records the labels an operator assigned to `node_id` (empty clears them).
    pub fn set_assigned_labels(&self, node_id: &str, labels: BTreeMap<String, String>) {
        let mut assigned = self.labels.lock();
        if labels.is_empty() {
            assigned.by_node.remove(node_id);
        } else {
            assigned.by_node.insert(node_id.to_string(), labels);
        }
    }

    /// The labels placement sees for `node_id`, given those it reports.
    pub fn placement_labels(
        &self,
        node_id: &str,
        reported: &HashMap<String, String>,
    ) -> HashMap<String, String> {
        let assigned = self.labels.lock();
        placement_labels(
            reported,
            assigned.by_node.get(node_id),
            assigned.trust_node_labels,
        )
    }

    /// The liveness state machine (pure; every time it takes is monotonic).
    pub fn liveness(&self) -> MutexGuard<'_, FleetState> {
        self.liveness.lock()
    }

    /// What the hub's sessions know of a node now (load, GPUs, capabilities, heartbeat counts).
    pub fn live(&self, node_id: &str) -> Option<LiveNode> {
        self.live.lock().get(node_id).cloned()
    }

    /// The links to the nodes' sessions.
    pub fn links(&self) -> &LinkTable {
        &self.links
    }

    /// The heartbeat channels of the live sessions.
    pub fn heartbeat_channels(&self) -> &Arc<ChannelTable> {
        &self.heartbeat_channels
    }

    /// UDP port of the QUIC session endpoint.
    pub fn quic_port(&self) -> u16 {
        self.quic_port
    }

    /// Notes that `node_id`'s tasks must be placed again (it went offline, or was deleted).
    pub fn lose_node(&self, node_id: &str, reason: &str) {
        self.lost_nodes
            .lock()
            .push((node_id.to_string(), reason.to_string()));
    }

    /// The nodes lost since the last call, with the reasons.
    pub fn take_lost_nodes(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.lost_nodes.lock())
    }

    /// The latest heartbeat time per node since the last call (for one batched write).
    pub fn take_heartbeat_times(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.heartbeat_times.lock())
            .into_iter()
            .collect()
    }

    /// Counts of finished liveness passes (watch it to know a pass has run).
    pub fn liveness_passes(&self) -> watch::Receiver<u64> {
        self.liveness_passes.subscribe()
    }

    /// A liveness pass has finished.
    pub fn liveness_pass_done(&self) {
        self.liveness_passes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Hands a status change to the persister.
    pub(crate) fn persist_status(&self, change: StatusChange) {
        let _ = self.status_changes.send(change);
    }

    /// Forgets a node deleted from the registry: its liveness, live data and session.
    pub fn forget(&self, node_id: &str) {
        self.labels.lock().by_node.remove(node_id);
        self.liveness.lock().remove(node_id);
        self.live.lock().remove(node_id);
        self.links.remove(node_id, "node deleted from the registry");
    }

    /// A node went offline for want of heartbeats: if its session is still up, its heartbeats
    /// are being lost on the way (a network that drops the channel's packets), so it is told to
    /// send them as QUIC datagrams from now on; the next one brings it back online.
    /// Only a few sessions move per window ([`FallbackBudget`]): a wave of nodes going silent
    /// together is the hub or the network, not one path, and datagrams would only cost more.
    pub(crate) fn heartbeats_lost_on_live_session(&self, node_id: &str, now_ms: i64) {
        let (Some(link), Ok(runtime)) = (
            self.links.get(node_id),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        if !self.channel_fallbacks.lock().allow(now_ms) {
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
}
