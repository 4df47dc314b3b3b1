//! Task placement as pure logic: no I/O, no clock of its own (calls that need time take `now_ms`).
//!
//! The hub feeds the [`Scheduler`] what heartbeats say (devices, free memory, which tasks a node
//! runs) and what the fleet state says (online, draining, offline, fenced); it asks for a
//! [`Placement`] per task and releases it when the task ends. Placement is Nomad's shape on live
//! GPU state:
//!
//! 1. **Filter**: the node is up (not draining, and not fenced when the task wants a GPU), carries
//!    the labels and capabilities asked for, and has devices that fit: enough compute capability,
//!    enough *effective* free memory, and — for whole GPUs — nobody else on them; for a fraction,
//!    the device's shares stay ≤ 1.
//! 2. **Score** a bounded number of feasible nodes (bin-pack by default: the fullest node and device
//!    that still fit; spread as an option) and take the best.
//! 3. **Reserve**: the placed memory and shares are held by the scheduler at once, so two
//!    placements between heartbeats never double-book a device.
//!
//! Effective free memory of a device is `min(reported_free − unconfirmed, total − allocated)`:
//! memory placed on a device counts against the reported free memory until a heartbeat lists the
//! task as running on that node (from then on the driver's own numbers include it), and the sum of
//! all requests on a device never exceeds its total. A request that fits nowhere gets a [`NoFit`]
//! naming why each node was turned down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// One GPU in thousandths ("milli-GPUs"): 500 is half a device.
pub const WHOLE_GPU_MILLI: u32 = 1000;

/// CUDA compute capability, ordered (8.6 < 9.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct ComputeCapability {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl ComputeCapability {
    /// Parses `"8.0"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (major, minor) = outpost_config::parse_compute_capability(text.trim())?;
        Ok(Self { major, minor })
    }
}

impl fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Scoring strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Fill the fullest node and device that fits (keeps whole devices free for big requests).
    #[default]
    BinPack,
    /// Put work where the most is free.
    Spread,
}

impl Strategy {
    /// Parses `binpack` / `spread`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "binpack" | "bin-pack" => Ok(Self::BinPack),
            "spread" => Ok(Self::Spread),
            other => Err(format!(
                "unknown placement strategy {other:?}: use \"binpack\" or \"spread\""
            )),
        }
    }
}

/// What a task needs from a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requirements {
    /// GPUs in milli-GPUs: 0 none, below 1000 a share of one device, otherwise whole devices.
    pub gpu_milli: u32,
    /// Free memory needed on each assigned device, MiB.
    pub gpu_memory_mb: u64,
    /// Lowest acceptable compute capability.
    pub min_compute_capability: Option<ComputeCapability>,
    /// Labels the node must carry with these values.
    pub labels: BTreeMap<String, String>,
    /// Capabilities the node must have (software on PATH, hardware tags, `wasm`, `landlock`).
    pub capabilities: Vec<String>,
    /// Only this node.
    pub node: Option<String>,
}

impl Requirements {
    /// Converts a GPU count such as `0.5` or `2` to milli-GPUs, refusing what cannot be placed.
    pub fn gpu_milli_from_count(count: f64) -> Result<u32, String> {
        if !count.is_finite() || count < 0.0 {
            return Err(format!("gpus must be a non-negative number, got {count}"));
        }
        if count > 1024.0 {
            return Err(format!("gpus {count} is more than any node has"));
        }
        let milli = (count * f64::from(WHOLE_GPU_MILLI)).round() as u32;
        if count > 0.0 && milli == 0 {
            return Err(format!("gpus {count} is below the smallest share (0.001)"));
        }
        if milli > WHOLE_GPU_MILLI && !milli.is_multiple_of(WHOLE_GPU_MILLI) {
            return Err(format!(
                "gpus {count}: more than one GPU must be a whole number (a share is below 1)"
            ));
        }
        Ok(milli)
    }

    /// The GPU count as a number (`0.5`, `2`).
    pub fn gpu_count(&self) -> f64 {
        f64::from(self.gpu_milli) / f64::from(WHOLE_GPU_MILLI)
    }

    /// Checks the combination makes sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.gpu_milli > WHOLE_GPU_MILLI && !self.gpu_milli.is_multiple_of(WHOLE_GPU_MILLI) {
            return Err("gpus: more than one GPU must be a whole number".into());
        }
        if self.gpu_milli == 0 && self.gpu_memory_mb > 0 {
            return Err("gpu_memory needs gpus > 0 (memory is asked per assigned GPU)".into());
        }
        if self.gpu_milli == 0 && self.min_compute_capability.is_some() {
            return Err("compute_capability needs gpus > 0".into());
        }
        if self.labels.keys().any(String::is_empty) {
            return Err("labels: a label key is empty".into());
        }
        if self.capabilities.iter().any(String::is_empty) {
            return Err("capabilities: a capability name is empty".into());
        }
        Ok(())
    }

    /// Whole devices wanted (0 for a share or none).
    fn whole_devices(&self) -> usize {
        if self.gpu_milli >= WHOLE_GPU_MILLI {
            (self.gpu_milli / WHOLE_GPU_MILLI) as usize
        } else {
            0
        }
    }

    /// A share of one device (0 when whole devices or none).
    fn share_milli(&self) -> u32 {
        if self.gpu_milli < WHOLE_GPU_MILLI {
            self.gpu_milli
        } else {
            0
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.gpu_milli > 0 {
            let mut gpu = format!("{} GPU", self.gpu_count());
            if self.gpu_memory_mb > 0 {
                gpu.push_str(&format!(" with {} MiB free", self.gpu_memory_mb));
            }
            if let Some(cc) = self.min_compute_capability {
                gpu.push_str(&format!(", compute capability ≥ {cc}"));
            }
            parts.push(gpu);
        }
        for (k, v) in &self.labels {
            parts.push(format!("label {k}={v}"));
        }
        for c in &self.capabilities {
            parts.push(format!("capability {c}"));
        }
        if let Some(node) = &self.node {
            parts.push(format!("node {node}"));
        }
        if parts.is_empty() {
            "any node".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A GPU as a heartbeat reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    /// NVML index (what `CUDA_VISIBLE_DEVICES` names).
    pub index: u32,
    /// Stable id.
    pub uuid: String,
    /// Total memory, MiB.
    pub memory_total_mb: u64,
    /// Free memory the driver reports, MiB.
    pub memory_free_mb: u64,
    /// Compute capability.
    pub compute_capability: ComputeCapability,
    /// Physical GPU this MIG instance lives on (empty for a whole GPU).
    pub parent_uuid: String,
    /// A physical GPU in MIG mode: only its instances take work, even while it has none.
    pub mig_enabled: bool,
}

/// Everything the scheduler needs to know about one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    /// Node id.
    pub id: String,
    /// `Ok` when the node takes new work; otherwise why not (offline, draining).
    pub accepting: Result<(), String>,
    /// Set when the node is fenced for GPU work, with the reason.
    pub gpu_fence: Option<String>,
    /// Labels from its config.
    pub labels: HashMap<String, String>,
    /// Capability names.
    pub capabilities: HashSet<String>,
    /// GPUs (and MIG instances).
    pub devices: Vec<DeviceReport>,
}

/// Where a task goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Node id.
    pub node_id: String,
    /// Device indexes assigned (empty without GPUs).
    pub devices: Vec<u32>,
    /// Their uuids, in the same order.
    pub device_uuids: Vec<String>,
    /// How CUDA names each of them, in the same order: a GPU by its NVML index (with
    /// `CUDA_DEVICE_ORDER=PCI_BUS_ID`, CUDA numbers GPUs as NVML does), a MIG instance by its
    /// `MIG-` uuid (CUDA has no index for one).
    pub cuda_devices: Vec<String>,
    /// Share of each device, milli-GPUs (1000 when exclusive).
    pub share_milli: u32,
    /// Memory held on each device, MiB.
    pub memory_mb: u64,
}

impl Placement {
    /// The NVML indexes of the devices assigned, comma-separated (empty without GPUs): what a
    /// task shows as its devices.
    pub fn device_indexes(&self) -> String {
        self.devices
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The value for `CUDA_VISIBLE_DEVICES` (empty without GPUs).
    pub fn cuda_visible_devices(&self) -> String {
        self.cuda_devices.join(",")
    }
}

/// Why nothing fits, per cause, with one sentence for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFit {
    /// The sentence shown as the queued task's reason.
    pub reason: String,
    /// How many nodes were turned down for each cause.
    pub by_cause: BTreeMap<&'static str, usize>,
}

impl fmt::Display for NoFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Why a placement call was refused outright (as opposed to not fitting yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// The task holds a placement already.
    #[error("task {0:?} is placed already")]
    AlreadyPlaced(String),
    /// The requirements make no sense.
    #[error("invalid requirements: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
struct Device {
    report: DeviceReport,
    /// A MIG-partitioned GPU: its instances are placed, never the parent.
    partitioned: bool,
    shares_milli: u32,
    exclusive: bool,
    allocated_mb: u64,
    unconfirmed_mb: u64,
}

impl Device {
    fn effective_free_mb(&self) -> u64 {
        let by_report = self
            .report
            .memory_free_mb
            .saturating_sub(self.unconfirmed_mb);
        let by_requests = self
            .report
            .memory_total_mb
            .saturating_sub(self.allocated_mb);
        by_report.min(by_requests)
    }

    fn idle(&self) -> bool {
        !self.partitioned && !self.exclusive && self.shares_milli == 0
    }
}

#[derive(Debug, Clone)]
struct Node {
    id: String,
    accepting: Result<(), String>,
    gpu_fence: Option<String>,
    labels: HashMap<String, String>,
    capabilities: HashSet<String>,
    devices: Vec<Device>,
    tasks: Vec<String>,
    // Summary for the fast pre-filter, kept current by `summarise`.
    idle_devices: usize,
    max_free_mb: u64,
    min_shares_milli: u32,
    max_cc: ComputeCapability,
}

impl Node {
    fn summarise(&mut self) {
        self.idle_devices = 0;
        self.max_free_mb = 0;
        self.min_shares_milli = u32::MAX;
        self.max_cc = ComputeCapability::default();
        for d in &self.devices {
            if d.partitioned {
                continue;
            }
            if d.idle() {
                self.idle_devices += 1;
            }
            if !d.exclusive {
                self.min_shares_milli = self.min_shares_milli.min(d.shares_milli);
            }
            self.max_free_mb = self.max_free_mb.max(d.effective_free_mb());
            self.max_cc = self.max_cc.max(d.report.compute_capability);
        }
    }
}

#[derive(Debug, Clone)]
struct Allocation {
    node_id: String,
    /// Device uuids.
    devices: Vec<String>,
    share_milli: u32,
    memory_mb: u64,
    confirmed: bool,
    placed_at_ms: i64,
    /// When a heartbeat first failed to list a confirmed task (it may have vanished).
    missing_since_ms: Option<i64>,
}

/// Placement state of the fleet.
#[derive(Debug, Clone)]
pub struct Scheduler {
    strategy: Strategy,
    candidate_limit: usize,
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    allocations: HashMap<String, Allocation>,
    cursor: usize,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new(Strategy::BinPack)
    }
}

/// The causes a [`NoFit`] counts, in the order they are checked.
mod cause {
    pub const NOT_PINNED: &str = "not the pinned node";
    pub const NOT_ACCEPTING: &str = "not accepting work";
    pub const FENCED: &str = "fenced for GPU work";
    pub const LABELS: &str = "missing labels";
    pub const CAPABILITIES: &str = "missing capabilities";
    pub const NO_GPUS: &str = "no GPUs";
    pub const TOO_FEW_GPUS: &str = "too few GPUs";
    pub const COMPUTE: &str = "compute capability too low";
    pub const MEMORY: &str = "not enough free GPU memory";
    pub const BUSY: &str = "GPUs taken by other tasks";
}

impl Scheduler {
    /// An empty fleet.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            candidate_limit: 16,
            nodes: Vec::new(),
            index: HashMap::new(),
            allocations: HashMap::new(),
            cursor: 0,
        }
    }

    /// How many feasible nodes are scored per placement (more packs better, costs more).
    pub fn with_candidate_limit(mut self, limit: usize) -> Self {
        self.candidate_limit = limit.max(1);
        self
    }

    /// Nodes known.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Adds a node or replaces what is known of it, keeping the allocations it holds.
    pub fn upsert_node(&mut self, report: NodeReport) {
        let parents: HashSet<String> = report
            .devices
            .iter()
            .filter(|d| !d.parent_uuid.is_empty())
            .map(|d| d.parent_uuid.clone())
            .collect();
        let devices = report
            .devices
            .into_iter()
            .map(|d| Device {
                partitioned: d.mig_enabled || parents.contains(&d.uuid),
                report: d,
                shares_milli: 0,
                exclusive: false,
                allocated_mb: 0,
                unconfirmed_mb: 0,
            })
            .collect();
        let position = match self.index.get(&report.id) {
            Some(&i) => {
                let node = &mut self.nodes[i];
                node.accepting = report.accepting;
                node.gpu_fence = report.gpu_fence;
                node.labels = report.labels;
                node.capabilities = report.capabilities;
                node.devices = devices;
                i
            }
            None => {
                self.nodes.push(Node {
                    id: report.id.clone(),
                    accepting: report.accepting,
                    gpu_fence: report.gpu_fence,
                    labels: report.labels,
                    capabilities: report.capabilities,
                    devices,
                    tasks: Vec::new(),
                    idle_devices: 0,
                    max_free_mb: 0,
                    min_shares_milli: 0,
                    max_cc: ComputeCapability::default(),
                });
                self.index.insert(report.id, self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        self.reapply_allocations(position);
    }

    /// Whether the node takes new work (`Err(reason)` when not); GPU fence separately.
    pub fn set_accepting(&mut self, node_id: &str, accepting: Result<(), String>) {
        if let Some(&i) = self.index.get(node_id) {
            self.nodes[i].accepting = accepting;
        }
    }

    /// Fences (Some(reason)) or unfences (None) the node for GPU work.
    pub fn set_gpu_fence(&mut self, node_id: &str, fence: Option<String>) {
        if let Some(&i) = self.index.get(node_id) {
            self.nodes[i].gpu_fence = fence;
        }
    }

    /// A heartbeat: fresh free memory per device (by uuid) and the tasks the node says it runs.
    /// Tasks it lists have their memory confirmed: the driver's numbers include it from now on.
    ///
    /// A confirmed task the node stops listing (without a result releasing it) starts a clock;
    /// [`Scheduler::vanished`] reports it once the clock runs past a grace period.
    pub fn observe_heartbeat<'a>(
        &mut self,
        node_id: &str,
        free_mb_by_uuid: impl IntoIterator<Item = (&'a str, u64)>,
        running_tasks: &[String],
        now_ms: i64,
    ) {
        let Some(&i) = self.index.get(node_id) else {
            return;
        };
        for task in running_tasks {
            if let Some(a) = self.allocations.get_mut(task)
                && a.node_id == node_id
            {
                a.confirmed = true;
                a.missing_since_ms = None;
            }
        }
        for task in &self.nodes[i].tasks {
            if let Some(a) = self.allocations.get_mut(task)
                && a.confirmed
                && !running_tasks.contains(task)
            {
                a.missing_since_ms.get_or_insert(now_ms);
            }
        }
        let node = &mut self.nodes[i];
        for (uuid, free) in free_mb_by_uuid {
            if let Some(d) = node.devices.iter_mut().find(|d| d.report.uuid == uuid) {
                d.report.memory_free_mb = free.min(d.report.memory_total_mb);
            }
        }
        self.reapply_allocations(i);
    }

    /// Forgets a node; returns the tasks that were placed on it (their allocations are dropped).
    pub fn remove_node(&mut self, node_id: &str) -> Vec<String> {
        let Some(i) = self.index.remove(node_id) else {
            return Vec::new();
        };
        let node = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].id.clone(), i);
        }
        if self.cursor >= self.nodes.len() {
            self.cursor = 0;
        }
        for task in &node.tasks {
            self.allocations.remove(task);
        }
        node.tasks
    }

    /// Tasks holding a placement on `node_id`.
    pub fn tasks_on(&self, node_id: &str) -> Vec<String> {
        self.index
            .get(node_id)
            .map(|&i| self.nodes[i].tasks.clone())
            .unwrap_or_default()
    }

    /// Tasks a node stopped listing in its heartbeats more than `grace_ms` ago without their
    /// result arriving (the node restarted and lost them), and tasks placed more than
    /// `unconfirmed_grace_ms` ago that no heartbeat ever listed nor a result released.
    pub fn vanished(&self, now_ms: i64, grace_ms: i64, unconfirmed_grace_ms: i64) -> Vec<String> {
        let mut tasks: Vec<String> = self
            .allocations
            .iter()
            .filter(|(_, a)| match a.missing_since_ms {
                Some(since) => now_ms - since > grace_ms,
                None => !a.confirmed && now_ms - a.placed_at_ms > unconfirmed_grace_ms,
            })
            .map(|(t, _)| t.clone())
            .collect();
        tasks.sort();
        tasks
    }

    /// Whether `task_id` holds a placement.
    pub fn is_placed(&self, task_id: &str) -> bool {
        self.allocations.contains_key(task_id)
    }

    /// Gives back what `task_id` held. Returns false when it held nothing.
    pub fn release(&mut self, task_id: &str) -> bool {
        let Some(allocation) = self.allocations.remove(task_id) else {
            return false;
        };
        if let Some(&i) = self.index.get(&allocation.node_id) {
            self.nodes[i].tasks.retain(|t| t != task_id);
            self.reapply_allocations(i);
        }
        true
    }

    /// Takes back a hold that already runs (work a node reports after a hub restart): `id`
    /// holds `share_milli` of each device in `device_uuids` (1000 or more: whole devices) with
    /// `memory_mb` on each, on `node_id`, confirmed (the driver's numbers already include it).
    /// Nothing is checked against capacity — the work runs there — but the node and every
    /// device must be known; false (nothing held) otherwise, or when `id` holds something.
    pub fn hold(
        &mut self,
        id: &str,
        node_id: &str,
        device_uuids: &[String],
        share_milli: u32,
        memory_mb: u64,
        now_ms: i64,
    ) -> bool {
        if self.allocations.contains_key(id) || device_uuids.is_empty() {
            return false;
        }
        let Some(&i) = self.index.get(node_id) else {
            return false;
        };
        let node = &mut self.nodes[i];
        if !device_uuids
            .iter()
            .all(|uuid| node.devices.iter().any(|d| &d.report.uuid == uuid))
        {
            return false;
        }
        node.tasks.push(id.into());
        self.allocations.insert(
            id.into(),
            Allocation {
                node_id: node_id.into(),
                devices: device_uuids.to_vec(),
                share_milli: share_milli.min(WHOLE_GPU_MILLI),
                memory_mb,
                confirmed: true,
                placed_at_ms: now_ms,
                missing_since_ms: None,
            },
        );
        self.reapply_allocations(i);
        true
    }

    /// Re-derives a node's per-device accounting from the allocations it holds.
    fn reapply_allocations(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        for d in &mut node.devices {
            d.shares_milli = 0;
            d.exclusive = false;
            d.allocated_mb = 0;
            d.unconfirmed_mb = 0;
        }
        for task in &node.tasks {
            let Some(a) = self.allocations.get(task) else {
                continue;
            };
            for uuid in &a.devices {
                if let Some(d) = node.devices.iter_mut().find(|d| &d.report.uuid == uuid) {
                    if a.share_milli >= WHOLE_GPU_MILLI {
                        d.exclusive = true;
                    } else {
                        d.shares_milli += a.share_milli;
                    }
                    d.allocated_mb += a.memory_mb;
                    if !a.confirmed {
                        d.unconfirmed_mb += a.memory_mb;
                    }
                }
            }
        }
        node.summarise();
    }

    /// Places `task_id` on the best node that fits, reserving what it takes.
    ///
    /// `Ok(Err(NoFit))` means nothing fits now (queue it); `Err` means the call itself is wrong.
    pub fn place(
        &mut self,
        task_id: &str,
        req: &Requirements,
        now_ms: i64,
    ) -> Result<Result<Placement, NoFit>, PlaceError> {
        if self.allocations.contains_key(task_id) {
            return Err(PlaceError::AlreadyPlaced(task_id.into()));
        }
        req.validate().map_err(PlaceError::Invalid)?;
        let chosen = match &req.node {
            Some(pinned) => self
                .index
                .get(pinned)
                .and_then(|&i| self.fit(&self.nodes[i], req).map(|pick| (i, pick))),
            None => self.search(req),
        };
        let Some((i, pick)) = chosen else {
            return Ok(Err(self.explain(req)));
        };
        let node = &mut self.nodes[i];
        let devices: Vec<&Device> = pick.iter().map(|&d| &node.devices[d]).collect();
        let placement = Placement {
            node_id: node.id.clone(),
            devices: devices.iter().map(|d| d.report.index).collect(),
            device_uuids: devices.iter().map(|d| d.report.uuid.clone()).collect(),
            cuda_devices: devices
                .iter()
                .map(|d| {
                    if d.report.parent_uuid.is_empty() {
                        d.report.index.to_string()
                    } else {
                        d.report.uuid.clone()
                    }
                })
                .collect(),
            share_milli: if req.gpu_milli >= WHOLE_GPU_MILLI {
                WHOLE_GPU_MILLI
            } else {
                req.gpu_milli
            },
            memory_mb: req.gpu_memory_mb,
        };
        node.tasks.push(task_id.into());
        self.allocations.insert(
            task_id.into(),
            Allocation {
                node_id: placement.node_id.clone(),
                devices: placement.device_uuids.clone(),
                share_milli: placement.share_milli,
                memory_mb: placement.memory_mb,
                confirmed: false,
                placed_at_ms: now_ms,
                missing_since_ms: None,
            },
        );
        self.reapply_allocations(i);
        // Bin-pack keeps filling where it placed; spread moves on.
        self.cursor = match self.strategy {
            BinPack => i,
            Spread => (i + 1) % self.nodes.len().max(1),
        };
        Ok(Ok(placement))
    }

    /// Scans from the cursor for up to `candidate_limit` feasible nodes and keeps the best.
    fn search(&self, req: &Requirements) -> Option<(usize, Vec<usize>)> {
        let n = self.nodes.len();
        let mut best: Option<(f64, usize, Vec<usize>)> = None;
        let mut found = 0;
        for step in 0..n {
            let i = (self.cursor + step) % n;
            let node = &self.nodes[i];
            if !Self::quick_fit(node, req) {
                continue;
            }
            let Some(pick) = self.fit(node, req) else {
                continue;
            };
            let score = self.score(node, &pick, req);
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, i, pick));
            }
            found += 1;
            if found >= self.candidate_limit {
                break;
            }
        }
        best.map(|(_, i, pick)| (i, pick))
    }

    /// The cheap summary check that rejects most non-fitting nodes without touching devices.
    fn quick_fit(node: &Node, req: &Requirements) -> bool {
        if node.accepting.is_err() {
            return false;
        }
        if req.gpu_milli == 0 {
            return true;
        }
        if node.gpu_fence.is_some()
            || node.max_free_mb < req.gpu_memory_mb
            || req
                .min_compute_capability
                .is_some_and(|cc| node.max_cc < cc)
        {
            return false;
        }
        let whole = req.whole_devices();
        if whole > 0 {
            node.idle_devices >= whole
        } else {
            node.min_shares_milli.saturating_add(req.share_milli()) <= WHOLE_GPU_MILLI
        }
    }

    fn device_fits(d: &Device, req: &Requirements) -> bool {
        if d.partitioned
            || d.effective_free_mb() < req.gpu_memory_mb
            || req
                .min_compute_capability
                .is_some_and(|cc| d.report.compute_capability < cc)
        {
            return false;
        }
        if req.whole_devices() > 0 {
            d.idle()
        } else {
            !d.exclusive && d.shares_milli + req.share_milli() <= WHOLE_GPU_MILLI
        }
    }

    /// The devices `req` would take on `node` (indexes into its device list), or None.
    fn fit(&self, node: &Node, req: &Requirements) -> Option<Vec<usize>> {
        if node.accepting.is_err() {
            return None;
        }
        if !req
            .labels
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            return None;
        }
        if !req
            .capabilities
            .iter()
            .all(|c| node.capabilities.contains(c))
        {
            return None;
        }
        if req.gpu_milli == 0 {
            return Some(Vec::new());
        }
        if node.gpu_fence.is_some() {
            return None;
        }
        let mut fitting: Vec<usize> = (0..node.devices.len())
            .filter(|&d| Self::device_fits(&node.devices[d], req))
            .collect();
        let wanted = req.whole_devices().max(1);
        if fitting.len() < wanted {
            return None;
        }
        // Bin-pack: the busiest shared device, then the least free memory (best fit);
        // spread: the opposite.
        let key = |d: &usize| {
            let dev = &node.devices[*d];
            (
                dev.shares_milli,
                u64::MAX - dev.effective_free_mb(),
                dev.report.index,
            )
        };
        match self.strategy {
            BinPack => fitting.sort_by_key(|d| std::cmp::Reverse(key(d))),
            Spread => fitting.sort_by_key(key),
        }
        fitting.truncate(wanted);
        fitting.sort_by_key(|&d| node.devices[d].report.index);
        Some(fitting)
    }

    /// Higher is better.
    fn score(&self, node: &Node, pick: &[usize], req: &Requirements) -> f64 {
        let fullness = if req.gpu_milli == 0 {
            // Work without GPUs: by tasks held, and keep GPU nodes for GPU work.
            -(node.devices.len() as f64) * 10.0 + (node.tasks.len() as f64).min(100.0) / 100.0
        } else {
            let devices = node
                .devices
                .iter()
                .filter(|d| !d.partitioned)
                .count()
                .max(1) as f64;
            let busy_devices = node.devices.iter().filter(|d| !d.idle()).count() as f64;
            let used_after: f64 = pick
                .iter()
                .map(|&d| {
                    let dev = &node.devices[d];
                    let total = dev.report.memory_total_mb.max(1) as f64;
                    1.0 - (dev.effective_free_mb().saturating_sub(req.gpu_memory_mb) as f64 / total)
                })
                .sum::<f64>()
                / pick.len().max(1) as f64;
            busy_devices / devices + used_after
        };
        match self.strategy {
            BinPack => fullness,
            Spread if req.gpu_milli == 0 => {
                -(node.devices.len() as f64) * 10.0 - node.tasks.len() as f64
            }
            Spread => -fullness,
        }
    }

    /// Why nothing fits: every node's first reason, counted.
    fn explain(&self, req: &Requirements) -> NoFit {
        let mut by_cause: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut details: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut max_free = 0u64;
        let mut max_cc: Option<ComputeCapability> = None;
        for node in &self.nodes {
            let cause = match &req.node {
                Some(pinned) if pinned != &node.id => cause::NOT_PINNED,
                _ => {
                    let (cause, detail) = self.reject_cause(node, req);
                    if let Some(detail) = detail {
                        details.entry(cause).or_insert(detail);
                    }
                    cause
                }
            };
            *by_cause.entry(cause).or_default() += 1;
            for d in node.devices.iter().filter(|d| !d.partitioned) {
                max_free = max_free.max(d.effective_free_mb());
                max_cc = max_cc.max(Some(d.report.compute_capability));
            }
        }
        by_cause.remove(cause::NOT_PINNED);
        let wanted = req.describe();
        let reason = if let Some(pinned) =
            req.node.as_ref().filter(|p| !self.index.contains_key(*p))
        {
            format!(
                "waiting for {wanted}: node {pinned:?} is not known to the scheduler (never joined, or offline)"
            )
        } else if self.nodes.is_empty() {
            format!("waiting for {wanted}: no nodes are online")
        } else {
            let parts: Vec<String> = by_cause
                .iter()
                .map(|(cause, count)| {
                    let mut part = format!("{count} {cause}");
                    if let Some(detail) = details.get(cause) {
                        part.push_str(&format!(" ({detail})"));
                    }
                    if *cause == cause::MEMORY {
                        part.push_str(&format!(", most free on any GPU: {max_free} MiB"));
                    }
                    if *cause == cause::COMPUTE
                        && let Some(cc) = max_cc
                    {
                        part.push_str(&format!(", highest: {cc}"));
                    }
                    part
                })
                .collect();
            let total: usize = by_cause.values().sum();
            let noun = if total == 1 { "node" } else { "nodes" };
            format!(
                "no node fits {wanted}: of {total} {noun}, {}",
                parts.join("; ")
            )
        };
        NoFit { reason, by_cause }
    }

    /// The first reason `node` cannot take `req`, with a detail worth showing.
    fn reject_cause(&self, node: &Node, req: &Requirements) -> (&'static str, Option<String>) {
        if let Err(why) = &node.accepting {
            return (cause::NOT_ACCEPTING, Some(format!("{}: {why}", node.id)));
        }
        if let Some((k, v)) = req
            .labels
            .iter()
            .find(|(k, v)| node.labels.get(*k) != Some(*v))
        {
            return (cause::LABELS, Some(format!("{k}={v}")));
        }
        if let Some(c) = req
            .capabilities
            .iter()
            .find(|c| !node.capabilities.contains(*c))
        {
            return (cause::CAPABILITIES, Some(c.clone()));
        }
        if req.gpu_milli == 0 {
            // Only a transient state can get here (the node fits); count it as accepting.
            return (cause::NOT_ACCEPTING, None);
        }
        if let Some(why) = &node.gpu_fence {
            return (cause::FENCED, Some(format!("{}: {why}", node.id)));
        }
        let usable: Vec<&Device> = node.devices.iter().filter(|d| !d.partitioned).collect();
        if usable.is_empty() {
            return (cause::NO_GPUS, None);
        }
        let wanted = req.whole_devices().max(1);
        if usable.len() < wanted {
            return (cause::TOO_FEW_GPUS, None);
        }
        let cc_ok: Vec<&&Device> = usable
            .iter()
            .filter(|d| {
                req.min_compute_capability
                    .is_none_or(|cc| d.report.compute_capability >= cc)
            })
            .collect();
        if cc_ok.len() < wanted {
            return (cause::COMPUTE, None);
        }
        let mem_ok = cc_ok
            .iter()
            .filter(|d| d.effective_free_mb() >= req.gpu_memory_mb)
            .count();
        if mem_ok < wanted {
            return (cause::MEMORY, None);
        }
        (cause::BUSY, None)
    }

    /// Checks the accounting invariants (used by tests and debug assertions): no device's shares
    /// exceed one GPU, an exclusive device carries nothing else, and requests never exceed memory.
    pub fn check_invariants(&self) -> Result<(), String> {
        for node in &self.nodes {
            for d in &node.devices {
                if d.shares_milli > WHOLE_GPU_MILLI {
                    return Err(format!(
                        "{} device {} shares {} > 1000",
                        node.id, d.report.index, d.shares_milli
                    ));
                }
                if d.exclusive && d.shares_milli > 0 {
                    return Err(format!(
                        "{} device {} exclusive and shared",
                        node.id, d.report.index
                    ));
                }
                if d.allocated_mb > d.report.memory_total_mb {
                    return Err(format!(
                        "{} device {} has {} MiB requested of {} MiB",
                        node.id, d.report.index, d.allocated_mb, d.report.memory_total_mb
                    ));
                }
            }
        }
        Ok(())
    }
}

use Strategy::{BinPack, Spread};

#[cfg(test)]
mod tests;
