//! The hub's Prometheus metrics, served as text at `GET /metrics`.
//!
//! Counters and histograms are recorded where things happen, through handles registered with
//! this hub's own recorder (nothing global, so several hubs in one process keep theirs apart):
//! a heartbeat costs one atomic add. Gauges of the fleet — each node's GPUs (memory, utilisation,
//! temperature), its disk use, nodes by status, tasks waiting — are computed from the live state
//! when a scrape asks, so they are exact and cost nothing between scrapes. Label values come
//! from fixed sets (or node ids from the registry), never from what a caller sends.

use std::fmt::Write as _;
use std::time::Duration;

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder as _};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Histogram buckets, seconds: from a millisecond (a gRPC call, a task) to two minutes (an
/// agent start that waits for git).
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Sandbox outcome kinds counted by name; anything else counts as `other`.
const OUTCOMES: [&str; 13] = [
    "ok",
    "timeout",
    "out_of_fuel",
    "memory_limit",
    "permission_denied",
    "output_limit",
    "trap",
    "invalid_component",
    "policy_invalid",
    "tool_error",
    "cancelled",
    "node_error",
    "exit",
];

/// gRPC services labelled by name; a call to anything else counts as `other`.
const SERVICES: [&str; 8] = [
    "outpost.v1.JoinService",
    "outpost.v1.TokenService",
    "outpost.v1.NodeRegistry",
    "outpost.v1.TaskService",
    "outpost.v1.ToolService",
    "outpost.v1.AgentService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The hub's metrics: its recorder and the handles of the hot paths.
pub struct HubMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    heartbeats_accepted: Counter,
    heartbeats_stale: Counter,
    heartbeats_foreign: Counter,
    sessions_accepted: Counter,
    placements_placed: Counter,
    placements_no_fit: Counter,
    task_duration: Histogram,
    agent_start: Histogram,
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubMetrics").finish_non_exhaustive()
    }
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, *v))
            .collect::<Vec<_>>(),
    )
}

impl HubMetrics {
    /// A recorder with every metric described and the hot paths' handles registered.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        // The buckets are constant and valid; a builder that refused them would leave summaries.
        let builder = match builder.set_buckets(&BUCKETS) {
            Ok(with) => with,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        for (name, help) in [
            (
                "outpost_heartbeats_total",
                "Heartbeats received, by result (accepted, stale: older than one already seen, foreign: naming another node).",
            ),
            (
                "outpost_node_sessions_total",
                "Node sessions, by result (accepted; refused, with the close code; handshake_failed, handshake_timeout, busy).",
            ),
            (
                "outpost_placements_total",
                "Placement attempts of queued tasks, by result (placed, no_fit).",
            ),
            (
                "outpost_sandbox_outcomes_total",
                "Task results, by kind (ok, or the sandbox's error kind).",
            ),
            (
                "outpost_grpc_requests_total",
                "gRPC calls, by service and result (ok, refused at the gate).",
            ),
        ] {
            recorder.describe_counter(name.into(), None, help.into());
        }
        for (name, help) in [
            (
                "outpost_task_duration_seconds",
                "Time a task's attempt ran on its node.",
            ),
            (
                "outpost_agent_start_seconds",
                "Time from an agent's start to its node reporting it running.",
            ),
            (
                "outpost_grpc_request_duration_seconds",
                "Time from a gRPC call's arrival to its response headers, by service.",
            ),
        ] {
            recorder.describe_histogram(name.into(), Some(metrics::Unit::Seconds), help.into());
        }
        let counter = |name, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &METADATA)
        };
        Self {
            heartbeats_accepted: counter("outpost_heartbeats_total", &[("result", "accepted")]),
            heartbeats_stale: counter("outpost_heartbeats_total", &[("result", "stale")]),
            heartbeats_foreign: counter("outpost_heartbeats_total", &[("result", "foreign")]),
            sessions_accepted: counter("outpost_node_sessions_total", &[("result", "accepted")]),
            placements_placed: counter("outpost_placements_total", &[("result", "placed")]),
            placements_no_fit: counter("outpost_placements_total", &[("result", "no_fit")]),
            task_duration: recorder
                .register_histogram(&key("outpost_task_duration_seconds", &[]), &METADATA),
            agent_start: recorder
                .register_histogram(&key("outpost_agent_start_seconds", &[]), &METADATA),
            recorder,
            handle,
        }
    }

    /// A heartbeat was taken.
    pub fn heartbeat_accepted(&self) {
        self.heartbeats_accepted.increment(1);
    }

    /// A heartbeat older than one already seen was dropped.
    pub fn heartbeat_stale(&self) {
        self.heartbeats_stale.increment(1);
    }

    /// A heartbeat naming another node than its session's was dropped.
    pub fn heartbeat_foreign(&self) {
        self.heartbeats_foreign.increment(1);
    }

    /// A node session was accepted.
    pub fn session_accepted(&self) {
        self.sessions_accepted.increment(1);
    }

    /// A node's connection ended before it was a session: `why` is `handshake_failed`,
    /// `handshake_timeout` or `busy` (too many handshakes in progress).
    pub fn session_not_established(&self, why: &'static str) {
        self.recorder
            .register_counter(
                &key("outpost_node_sessions_total", &[("result", why)]),
                &METADATA,
            )
            .increment(1);
    }

    /// A node session was refused with close code `code`.
    pub fn session_refused(&self, code: u32) {
        let code = Label::new("code", code.to_string());
        let key = Key::from_parts(
            "outpost_node_sessions_total",
            vec![Label::new("result", "refused"), code],
        );
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// A queued task was placed (true) or fits nowhere now (false).
    pub fn placement(&self, placed: bool) {
        if placed {
            self.placements_placed.increment(1);
        } else {
            self.placements_no_fit.increment(1);
        }
    }

    /// A task's result arrived: how long it ran and how it ended (`ok` or an error kind).
    pub fn task_result(&self, ran: Duration, kind: &str) {
        self.task_duration.record(ran.as_secs_f64());
        let kind = OUTCOMES
            .iter()
            .find(|known| **known == kind)
            .copied()
            .unwrap_or("other");
        self.recorder
            .register_counter(
                &key("outpost_sandbox_outcomes_total", &[("kind", kind)]),
                &METADATA,
            )
            .increment(1);
    }

    /// An agent's run was reported running `took` after its start.
    pub fn agent_started(&self, took: Duration) {
        self.agent_start.record(took.as_secs_f64());
    }

    /// A gRPC call to `path` was answered (`refused` at the gate, or passed on) after `took`.
    pub fn grpc_call(&self, path: &str, refused: bool, took: Duration) {
        let service = path
            .strip_prefix('/')
            .and_then(|rest| rest.split('/').next())
            .and_then(|service| SERVICES.iter().find(|known| **known == service))
            .copied()
            .unwrap_or("other");
        let result = if refused { "refused" } else { "ok" };
        self.recorder
            .register_counter(
                &key(
                    "outpost_grpc_requests_total",
                    &[("service", service), ("result", result)],
                ),
                &METADATA,
            )
            .increment(1);
        self.recorder
            .register_histogram(
                &key(
                    "outpost_grpc_request_duration_seconds",
                    &[("service", service)],
                ),
                &METADATA,
            )
            .record(took.as_secs_f64());
    }

    /// The recorded metrics as Prometheus text.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// One node's state for the fleet gauges.
#[derive(Debug, Clone, Default)]
pub struct NodeGauges {
    /// Node id.
    pub node_id: String,
    /// online, offline, ...
    pub status: String,
    /// Disk used and total, bytes (0 total: unknown).
    pub disk_used_bytes: u64,
    /// Disk total, bytes.
    pub disk_total_bytes: u64,
    /// Per device: index, memory used and total (MiB), utilisation (percent), temperature (°C).
    pub gpus: Vec<GpuGauges>,
}

/// One device's readings.
#[derive(Debug, Clone, Default)]
pub struct GpuGauges {
    /// NVML index.
    pub index: u32,
    /// Its uuid (a MIG instance shares its GPU's index, not its uuid).
    pub uuid: String,
    /// Model name.
    pub name: String,
    /// Memory used, MiB.
    pub memory_used_mb: u64,
    /// Memory total, MiB.
    pub memory_total_mb: u64,
    /// Utilisation, percent.
    pub utilization_percent: u32,
    /// Temperature, °C.
    pub temperature_c: u32,
}

/// The heartbeat channel's packet counts as a Prometheus counter, by result.
pub fn channel_text(counts: &crate::fleet::heartbeat_channel::ChannelCounts) -> String {
    let mut out = String::from(
        "# HELP outpost_heartbeat_channel_packets_total Heartbeat channel packets, by result (accepted, or why refused).\n# TYPE outpost_heartbeat_channel_packets_total counter\n",
    );
    for (result, n) in [
        ("accepted", counts.accepted),
        ("malformed", counts.malformed),
        ("unknown_channel", counts.unknown_channel),
        ("unauthentic", counts.unauthentic),
        ("replayed", counts.replayed),
        ("undecodable", counts.undecodable),
    ] {
        let _ = writeln!(
            out,
            "outpost_heartbeat_channel_packets_total{{result=\"{result}\"}} {n}"
        );
    }
    out
}

/// A label value in Prometheus text: backslash, quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The fleet gauges as Prometheus text: nodes by status, each node's disk use and GPUs, and the
/// tasks waiting for a node.
pub fn fleet_text(
    nodes: &[NodeGauges],
    tasks_waiting: &std::collections::BTreeMap<&'static str, u64>,
) -> String {
    let mut out = String::new();
    let mut by_status = std::collections::BTreeMap::<&str, u64>::new();
    for node in nodes {
        *by_status.entry(node.status.as_str()).or_default() += 1;
    }
    out.push_str("# HELP outpost_nodes Registered nodes, by status.\n# TYPE outpost_nodes gauge\n");
    for (status, count) in &by_status {
        let _ = writeln!(
            out,
            "outpost_nodes{{status=\"{}\"}} {count}",
            label_value(status)
        );
    }
    out.push_str("# HELP outpost_tasks_waiting Queued tasks no node fits now, by the cause that turned down the most nodes (as of the dispatcher's last pass).\n# TYPE outpost_tasks_waiting gauge\n");
    for (cause, count) in tasks_waiting {
        let _ = writeln!(
            out,
            "outpost_tasks_waiting{{cause=\"{}\"}} {count}",
            label_value(cause)
        );
    }
    out.push_str("# HELP outpost_node_disk_used_ratio Share of the node's data disk in use (from its heartbeats).\n# TYPE outpost_node_disk_used_ratio gauge\n");
    for node in nodes.iter().filter(|n| n.disk_total_bytes > 0) {
        let _ = writeln!(
            out,
            "outpost_node_disk_used_ratio{{node=\"{}\"}} {}",
            label_value(&node.node_id),
            node.disk_used_bytes as f64 / node.disk_total_bytes as f64
        );
    }
    for (name, help, unit_value) in [
        (
            "outpost_node_gpu_memory_used_bytes",
            "GPU memory in use, per node and device (from heartbeats).",
            0_u8,
        ),
        (
            "outpost_node_gpu_memory_total_bytes",
            "GPU memory, per node and device.",
            1,
        ),
        (
            "outpost_node_gpu_utilization_ratio",
            "GPU utilisation, per node and device (from heartbeats).",
            2,
        ),
        (
            "outpost_node_gpu_temperature_celsius",
            "GPU temperature, per node and device (from heartbeats).",
            3,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for node in nodes {
            for gpu in &node.gpus {
                let value = match unit_value {
                    0 => (gpu.memory_used_mb * 1024 * 1024) as f64,
                    1 => (gpu.memory_total_mb * 1024 * 1024) as f64,
                    2 => f64::from(gpu.utilization_percent) / 100.0,
                    _ => f64::from(gpu.temperature_c),
                };
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{}\",gpu=\"{}\",uuid=\"{}\",model=\"{}\"}} {value}",
                    label_value(&node.node_id),
                    gpu.index,
                    label_value(&gpu.uuid),
                    label_value(&gpu.name)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_alert_rules_name_only_metrics_the_hub_serves() {
        let rules = include_str!("../../deploy/prometheus/outpost-alerts.yml");
        let metrics = HubMetrics::new();
        metrics.task_result(Duration::from_millis(1), "ok");
        metrics.agent_started(Duration::from_millis(1));
        metrics.grpc_call(
            "/grpc.health.v1.Health/Check",
            false,
            Duration::from_millis(1),
        );
        metrics.session_accepted();
        metrics.session_refused(4);
        let nodes = [NodeGauges {
            node_id: "n".into(),
            status: "online".into(),
            disk_used_bytes: 1,
            disk_total_bytes: 2,
            gpus: Vec::new(),
        }];
        let served = format!(
            "{}{}",
            metrics.render(),
            fleet_text(&nodes, &std::collections::BTreeMap::new())
        );
        let mut named = 0;
        for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("outpost_") {
                named += 1;
                assert!(
                    served.lines().any(|line| line.starts_with(word)),
                    "the rules name {word}, which the hub does not serve"
                );
            }
        }
        assert!(named >= 8, "{named}");
    }

    #[test]
    fn counters_and_fleet_gauges_render_as_prometheus_text() {
        let metrics = HubMetrics::new();
        metrics.heartbeat_accepted();
        metrics.heartbeat_accepted();
        metrics.session_refused(4);
        metrics.task_result(Duration::from_millis(3), "out_of_fuel");
        metrics.task_result(Duration::from_millis(3), "a label an attacker chose");
        metrics.grpc_call(
            "/outpost.v1.TaskService/SubmitTask",
            false,
            Duration::from_millis(2),
        );
        metrics.grpc_call("/made.up/Path", true, Duration::from_millis(1));
        let text = metrics.render();
        assert!(
            text.contains("outpost_heartbeats_total{result=\"accepted\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("outpost_node_sessions_total{result=\"refused\",code=\"4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("outpost_sandbox_outcomes_total{kind=\"out_of_fuel\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("outpost_sandbox_outcomes_total{kind=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("outpost_task_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("outpost_grpc_requests_total{service=\"other\",result=\"refused\"} 1"),
            "{text}"
        );
        assert!(!text.contains("made.up"), "{text}");

        let nodes = [NodeGauges {
            node_id: "gpu-\"1\"".into(),
            status: "online".into(),
            disk_used_bytes: 25,
            disk_total_bytes: 100,
            gpus: vec![GpuGauges {
                index: 0,
                uuid: "GPU-1".into(),
                name: "A100".into(),
                memory_used_mb: 1024,
                memory_total_mb: 81920,
                utilization_percent: 50,
                temperature_c: 40,
            }],
        }];
        let waiting = std::collections::BTreeMap::from([("too few GPUs", 3)]);
        let text = fleet_text(&nodes, &waiting);
        assert!(
            text.contains("outpost_nodes{status=\"online\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("outpost_tasks_waiting{cause=\"too few GPUs\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("outpost_node_disk_used_ratio{node=\"gpu-\\\"1\\\"\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains(
                "outpost_node_gpu_memory_used_bytes{node=\"gpu-\\\"1\\\"\",gpu=\"0\",uuid=\"GPU-1\",model=\"A100\"} 1073741824"
            ),
            "{text}"
        );
        assert!(text.contains("outpost_node_gpu_utilization_ratio{node=\"gpu-\\\"1\\\"\",gpu=\"0\",uuid=\"GPU-1\",model=\"A100\"} 0.5"), "{text}");
    }
}
