//! Fleet liveness as a pure state machine: no I/O, no clock of its own, a seeded generator for
//! jitter. Every `now_ms` it takes is **monotonic** time ([`outpost_clock::Clock::monotonic_ms`]):
//! a wall-clock step (NTP, an operator fixing the date) neither marks the fleet offline nor keeps
//! a dead node online. The hub's QUIC server feeds it heartbeats and a ticker calls
//! [`FleetState::expire`]; both persist the [`StatusChange`]s it returns.
//!
//! Heartbeat TTLs follow Nomad: the base TTL grows with the fleet so the whole fleet sends at most
//! `max_heartbeats_per_second` (never below `min_heartbeat_ttl`), each node gets the base plus a
//! random stagger of up to a quarter of it (so a fleet that started together does not beat in
//! lockstep), heartbeats every half TTL, and is marked offline once TTL + grace pass without one.

use std::collections::HashMap;
use std::fmt;

/// What operators and the scheduler see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Heartbeating, accepting work.
    Online,
    /// No heartbeat within TTL + grace (or never connected to this hub).
    Offline,
    /// Heartbeating, but the operator asked that no new work go there.
    Draining,
    /// Heartbeating, but its GPU probe failed after working: no GPU work.
    Fenced,
}

impl NodeStatus {
    /// The wire and JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Online => "online",
            NodeStatus::Offline => "offline",
            NodeStatus::Draining => "draining",
            NodeStatus::Fenced => "fenced",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tuning of the TTL.
#[derive(Debug, Clone, Copy)]
pub struct FleetPolicy {
    /// Smallest TTL.
    pub min_ttl_ms: i64,
    /// Time after the TTL before a node is offline.
    pub grace_ms: i64,
    /// Ceiling on the fleet's total heartbeat rate.
    pub max_heartbeats_per_second: f64,
}

impl FleetPolicy {
    /// From the `[fleet]` config section.
    pub fn from_config(section: &outpost_config::FleetSection) -> Self {
        Self {
            min_ttl_ms: i64::try_from(section.min_heartbeat_ttl.as_millis()).unwrap_or(i64::MAX),
            grace_ms: i64::try_from(section.heartbeat_grace.as_millis()).unwrap_or(i64::MAX),
            max_heartbeats_per_second: section.max_heartbeats_per_second,
        }
    }
}

/// A node's status changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Which node.
    pub node_id: String,
    /// Before.
    pub from: NodeStatus,
    /// After.
    pub to: NodeStatus,
    /// Why (for offline and fenced).
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    up: bool,
    last_seen_ms: Option<i64>,
    ttl_ms: i64,
    draining: bool,
    fenced: Option<String>,
    offline_reason: String,
}

impl Entry {
    fn status(&self) -> NodeStatus {
        if !self.up {
            NodeStatus::Offline
        } else if self.fenced.is_some() {
            NodeStatus::Fenced
        } else if self.draining {
            NodeStatus::Draining
        } else {
            NodeStatus::Online
        }
    }

    fn reason(&self) -> String {
        match self.status() {
            NodeStatus::Offline => self.offline_reason.clone(),
            NodeStatus::Fenced => self.fenced.clone().unwrap_or_default(),
            NodeStatus::Draining => "draining: no new work is placed here".into(),
            NodeStatus::Online => String::new(),
        }
    }
}

/// Liveness of every node this hub knows.
#[derive(Debug, Clone)]
pub struct FleetState {
    policy: FleetPolicy,
    nodes: HashMap<String, Entry>,
    up_count: usize,
    rng: u64,
}

impl FleetState {
    /// An empty fleet; `seed` drives the TTL stagger.
    pub fn new(policy: FleetPolicy, seed: u64) -> Self {
        Self {
            policy,
            nodes: HashMap::new(),
            up_count: 0,
            rng: seed | 1,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Adds a node known from the store, offline until its session comes. A node already known
    /// is left as it is: its draining flag changes through [`FleetState::set_draining`], which
    /// reports the change.
    pub fn add_known(&mut self, node_id: &str, draining: bool) {
        self.nodes
            .entry(node_id.to_string())
            .or_insert_with(|| Entry {
                offline_reason: "no session to this hub yet".into(),
                draining,
                ..Entry::default()
            });
    }

    /// Forgets a node (deleted from the registry).
    pub fn remove(&mut self, node_id: &str) {
        if let Some(entry) = self.nodes.remove(node_id)
            && entry.up
        {
            self.up_count -= 1;
        }
    }

    /// Base TTL for the current fleet size.
    pub fn base_ttl_ms(&self) -> i64 {
        let scaled =
            (self.up_count.max(1) as f64 / self.policy.max_heartbeats_per_second * 1000.0) as i64;
        scaled.max(self.policy.min_ttl_ms)
    }

    /// A fresh TTL for one node: the base plus up to 25 % stagger.
    pub fn assign_ttl_ms(&mut self, node_id: &str) -> i64 {
        let base = self.base_ttl_ms();
        let stagger = (self.next_random() % (base as u64 / 4 + 1)) as i64;
        let ttl = base + stagger;
        if let Some(entry) = self.nodes.get_mut(node_id) {
            entry.ttl_ms = ttl;
        }
        ttl
    }

    /// How often a node with `ttl_ms` should heartbeat.
    pub fn heartbeat_interval_ms(ttl_ms: i64) -> u32 {
        u32::try_from((ttl_ms / 2).max(100)).unwrap_or(u32::MAX)
    }

    /// A heartbeat (or session hello) arrived; returns the change if the node came back.
    pub fn observe_heartbeat(&mut self, node_id: &str, now_ms: i64) -> Option<StatusChange> {
        let base = self.base_ttl_ms();
        let entry = self.nodes.entry(node_id.to_string()).or_default();
        if entry.ttl_ms == 0 {
            entry.ttl_ms = base;
        }
        entry.last_seen_ms = Some(entry.last_seen_ms.map_or(now_ms, |prev| prev.max(now_ms)));
        if entry.up {
            return None;
        }
        let from = entry.status();
        entry.up = true;
        entry.offline_reason.clear();
        let change = StatusChange {
            node_id: node_id.into(),
            from,
            to: entry.status(),
            reason: entry.reason(),
        };
        self.up_count += 1;
        Some(change)
    }

    /// Marks nodes whose TTL + grace has passed as offline.
    pub fn expire(&mut self, now_ms: i64) -> Vec<StatusChange> {
        let grace = self.policy.grace_ms;
        let mut changes = Vec::new();
        for (id, entry) in &mut self.nodes {
            if !entry.up {
                continue;
            }
            let last = entry.last_seen_ms.unwrap_or(now_ms);
            let silent = now_ms - last;
            if silent > entry.ttl_ms + grace {
                let from = entry.status();
                entry.up = false;
                entry.offline_reason = format!(
                    "no heartbeat for {} ms (ttl {} ms + grace {} ms)",
                    silent, entry.ttl_ms, grace
                );
                changes.push(StatusChange {
                    node_id: id.clone(),
                    from,
                    to: NodeStatus::Offline,
                    reason: entry.reason(),
                });
            }
        }
        self.up_count -= changes.len();
        changes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        changes
    }

    fn change(&mut self, node_id: &str, apply: impl FnOnce(&mut Entry)) -> Option<StatusChange> {
        let entry = self.nodes.get_mut(node_id)?;
        let from = entry.status();
        apply(entry);
        let to = entry.status();
        (from != to).then(|| StatusChange {
            node_id: node_id.into(),
            from,
            to,
            reason: entry.reason(),
        })
    }

    /// Sets or clears draining.
    pub fn set_draining(&mut self, node_id: &str, draining: bool) -> Option<StatusChange> {
        self.change(node_id, |e| e.draining = draining)
    }

    /// Fences a node for GPU work (`Some(reason)`) or lifts the fence (`None`).
    pub fn set_fenced(&mut self, node_id: &str, reason: Option<String>) -> Option<StatusChange> {
        self.change(node_id, |e| e.fenced = reason)
    }

    /// A node's status, if known.
    pub fn status(&self, node_id: &str) -> Option<NodeStatus> {
        self.nodes.get(node_id).map(Entry::status)
    }

    /// A node's status and the reason for it.
    pub fn status_with_reason(&self, node_id: &str) -> Option<(NodeStatus, String)> {
        self.nodes.get(node_id).map(|e| (e.status(), e.reason()))
    }

    /// Monotonic time of the last heartbeat seen, if any (not a time to show: the wall time of
    /// a node's last heartbeat is kept beside the session, [`crate::fleet::LiveNode`]).
    pub fn last_seen_ms(&self, node_id: &str) -> Option<i64> {
        self.nodes.get(node_id).and_then(|e| e.last_seen_ms)
    }

    /// What placement needs: `Ok` when the node takes new work (else why not), and the GPU
    /// fence reason when fenced. `None` for an unknown node.
    pub fn placement_state(&self, node_id: &str) -> Option<(Result<(), String>, Option<String>)> {
        self.nodes.get(node_id).map(|e| {
            let accepting = if !e.up {
                Err(format!("offline: {}", e.offline_reason))
            } else if e.draining {
                Err("draining".to_string())
            } else {
                Ok(())
            };
            (accepting, e.fenced.clone())
        })
    }

    /// Nodes currently heartbeating.
    pub fn up_count(&self) -> usize {
        self.up_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FleetPolicy {
        FleetPolicy {
            min_ttl_ms: 10_000,
            grace_ms: 10_000,
            max_heartbeats_per_second: 50.0,
        }
    }

    #[test]
    fn draining_a_known_node_is_reported_once() {
        let mut fleet = FleetState::new(policy(), 1);
        fleet.add_known("a", false);
        fleet.observe_heartbeat("a", 0).unwrap();
        // The registry's drain path: make sure it is known, then set the flag.
        fleet.add_known("a", true);
        let change = fleet.set_draining("a", true).expect("drain reported");
        assert_eq!(change.to, NodeStatus::Draining);
        assert!(
            matches!(fleet.placement_state("a"), Some((Err(_), _))),
            "a draining node accepts no work"
        );
        assert!(
            fleet.set_draining("a", true).is_none(),
            "no change, no report"
        );
    }

    #[test]
    fn online_offline_online() {
        let mut fleet = FleetState::new(policy(), 1);
        fleet.add_known("a", false);
        assert_eq!(fleet.status("a"), Some(NodeStatus::Offline));
        let change = fleet.observe_heartbeat("a", 0).unwrap();
        assert_eq!(
            (change.from, change.to),
            (NodeStatus::Offline, NodeStatus::Online)
        );
        let ttl = fleet.assign_ttl_ms("a");
        assert!((10_000..=12_500).contains(&ttl), "{ttl}");
        // Steady heartbeats keep it up.
        for t in (0..60_000).step_by(5_000) {
            assert!(fleet.observe_heartbeat("a", t).is_none());
            assert!(fleet.expire(t).is_empty());
        }
        let last = 55_000;
        // Just inside TTL + grace: still online.
        assert!(fleet.expire(last + ttl + 10_000).is_empty());
        let changes = fleet.expire(last + ttl + 10_001);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to, NodeStatus::Offline);
        assert!(
            changes[0].reason.contains("no heartbeat"),
            "{}",
            changes[0].reason
        );
        assert_eq!(fleet.up_count(), 0);
        // Expire again: nothing new.
        assert!(fleet.expire(last + 100_000).is_empty());
        // Next heartbeat brings it back.
        let back = fleet.observe_heartbeat("a", last + 100_000).unwrap();
        assert_eq!(back.to, NodeStatus::Online);
        assert_eq!(fleet.up_count(), 1);
    }

    #[test]
    fn ttl_grows_with_fleet_size() {
        let mut fleet = FleetState::new(policy(), 7);
        assert_eq!(fleet.base_ttl_ms(), 10_000);
        for i in 0..10_000 {
            fleet.observe_heartbeat(&format!("n{i}"), 0);
        }
        // 10,000 nodes at ≤ 50 heartbeats/s → 200 s.
        assert_eq!(fleet.base_ttl_ms(), 200_000);
        let ttls: Vec<i64> = (0..100)
            .map(|i| fleet.assign_ttl_ms(&format!("n{i}")))
            .collect();
        assert!(ttls.iter().all(|t| (200_000..=250_000).contains(t)));
        let distinct: std::collections::HashSet<_> = ttls.iter().collect();
        assert!(
            distinct.len() > 50,
            "stagger spreads TTLs: {} distinct",
            distinct.len()
        );
        assert_eq!(FleetState::heartbeat_interval_ms(200_000), 100_000);
    }

    #[test]
    fn draining_and_fencing_layer_over_liveness() {
        let mut fleet = FleetState::new(policy(), 3);
        fleet.observe_heartbeat("g", 0);
        let c = fleet.set_draining("g", true).unwrap();
        assert_eq!(c.to, NodeStatus::Draining);
        assert!(
            fleet.set_draining("g", true).is_none(),
            "no change, no event"
        );
        let c = fleet.set_fenced("g", Some("NVML failed".into())).unwrap();
        assert_eq!(
            (c.to, c.reason.as_str()),
            (NodeStatus::Fenced, "NVML failed")
        );
        let c = fleet.set_fenced("g", None).unwrap();
        assert_eq!(c.to, NodeStatus::Draining);
        let c = fleet.set_draining("g", false).unwrap();
        assert_eq!(c.to, NodeStatus::Online);
        // An offline node that is draining comes back as draining.
        fleet.set_draining("g", true);
        let ttl = fleet.assign_ttl_ms("g");
        assert_eq!(fleet.expire(ttl + 10_001).len(), 1);
        assert_eq!(
            fleet.observe_heartbeat("g", ttl + 20_000).unwrap().to,
            NodeStatus::Draining
        );
        assert!(fleet.set_draining("unknown", true).is_none());
    }

    #[test]
    fn removal_keeps_counts_right() {
        let mut fleet = FleetState::new(policy(), 5);
        fleet.observe_heartbeat("a", 0);
        fleet.observe_heartbeat("b", 0);
        fleet.remove("a");
        assert_eq!(fleet.up_count(), 1);
        assert_eq!(fleet.status("a"), None);
        // A late heartbeat from the past does not move last_seen backwards.
        fleet.observe_heartbeat("b", 50);
        fleet.observe_heartbeat("b", 10);
        assert_eq!(fleet.last_seen_ms("b"), Some(50));
    }
}
