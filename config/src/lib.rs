//! Outpost's configuration: one typed struct for hub and node, layered as file → `OUTPOST_*`
//! environment → command-line flags.
//!
//! The sections follow AgentHub's (`[server]`, `[internal_grpc]` with `.security`, `.auth` and
//! `.bootstrap`, `[worktree]`) plus Outpost's own (`[node]`, `[gpu]`, `[storage]`, `[fleet]`).
//! Unknown keys are an error that names the key; every key has a default that runs on one machine.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Parses "8.0" / "9.0" into (major, minor).
pub fn parse_compute_capability(text: &str) -> Result<(u32, u32), String> {
    let (major, minor) = text
        .split_once('.')
        .ok_or_else(|| format!("compute capability {text:?} must look like \"8.0\""))?;
    let major = major
        .parse()
        .map_err(|_| format!("compute capability {text:?}: bad major version"))?;
    let minor = minor
        .parse()
        .map_err(|_| format!("compute capability {text:?}: bad minor version"))?;
    Ok((major, minor))
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or names an unknown key or a wrong type.
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when the error came from one.
        path: Option<PathBuf>,
        /// The parser's message (names the key and the line).
        message: String,
    },
    /// An `OUTPOST_*` environment variable has a value of the wrong type.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("invalid config value for `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `internal_grpc.listen`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Whether this process is the control plane or a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// The hub: registry, REST, internal gRPC, QUIC session endpoint. Written `hub`; AgentHub's
    /// `main` is accepted too.
    #[default]
    #[serde(alias = "main")]
    Hub,
    /// A node: joins a hub and serves only the internal surface.
    Node,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// `main` or `node`.
    pub role: ServerRole,
    /// HTTP listener for the REST API and web UI (hub only).
    pub listen: String,
    /// This node's id (node only); defaults to the host name.
    pub node_id: Option<String>,
    /// Where state lives (SQLite database, certificates, node identity).
    pub data_dir: Option<PathBuf>,
    /// UDP address of the hub's QUIC session endpoint; defaults to the gRPC listen address.
    pub quic_listen: Option<String>,
    /// Hub: serve `listen` (REST API and web UI) over HTTPS, with the hub certificate unless
    /// `tls_cert_file` and `tls_key_file` name another (one a browser trusts, say).
    pub tls: bool,
    /// Hub: PEM certificate chain for HTTPS on `listen` (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// Hub: PEM private key for `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Hub: allow plain HTTP on an address other than loopback (behind a TLS-terminating
    /// proxy). Without it such a `listen` is refused, because bearer tokens would cross the
    /// network in the clear.
    pub allow_plain_http: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            role: ServerRole::Hub,
            listen: "127.0.0.1:8080".into(),
            node_id: None,
            data_dir: None,
            quic_listen: None,
            tls: false,
            tls_cert_file: None,
            tls_key_file: None,
            allow_plain_http: false,
        }
    }
}

/// `[internal_grpc]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InternalGrpcSection {
    /// AgentHub's switch, kept so its configs load: only `true` is accepted, because the hub's
    /// internal gRPC carries node joins and every CLI command (bind `listen` to loopback to keep
    /// it private).
    pub enabled: bool,
    /// TCP address of the internal gRPC API.
    pub listen: String,
    /// `[internal_grpc.security]`
    pub security: SecuritySection,
    /// `[internal_grpc.auth]`
    pub auth: AuthSection,
    /// `[internal_grpc.bootstrap]`
    pub bootstrap: BootstrapSection,
}

impl Default for InternalGrpcSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:50051".into(),
            security: SecuritySection::default(),
            auth: AuthSection::default(),
            bootstrap: BootstrapSection::default(),
        }
    }
}

/// TLS mode of the internal gRPC API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Server authentication only; callers prove themselves with a JWT.
    #[default]
    Tls,
    /// Callers must also present a certificate signed by the hub CA (join excepted).
    Mtls,
}

/// `[internal_grpc.security]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// `tls` or `mtls`.
    pub mode: TlsMode,
    /// Directory of the CA, hub certificate and auth secret; defaults to `<data_dir>/certs`.
    pub cert_dir: Option<PathBuf>,
    /// Extra DNS names or IPs for the hub certificate generated on first start.
    pub server_names: Vec<String>,
    /// Hub: how long a node certificate lasts; nodes renew theirs in session once less than a
    /// third is left.
    #[serde(with = "duration_text")]
    pub node_certificate_lifetime: Duration,
    /// Hub: how long a node JWT lasts; the hub hands the node a fresh one on every session.
    #[serde(with = "duration_text")]
    pub node_token_lifetime: Duration,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            mode: TlsMode::default(),
            cert_dir: None,
            server_names: Vec::new(),
            node_certificate_lifetime: Duration::from_secs(90 * 24 * 3600),
            node_token_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[internal_grpc.auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 secret; when absent the hub generates `cert_dir/auth_secret.txt` and the CLI reads it.
    pub shared_secret: Option<String>,
    /// JWT `iss`.
    pub issuer: String,
    /// JWT `aud`.
    pub audience: String,
    /// Clock-skew leeway for `exp`, in seconds.
    pub leeway_seconds: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            shared_secret: None,
            issuer: "outpost".into(),
            audience: "outpost-internal".into(),
            leeway_seconds: 30,
        }
    }
}

/// `[internal_grpc.bootstrap]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapSection {
    /// Static join token (hub: accepted; node: used to join). At least
    /// [`MIN_STATIC_TOKEN_LEN`] characters.
    pub token: Option<String>,
    /// Hub: joins that may begin per second, hub-wide (bursts of four seconds' worth pass).
    pub joins_per_second: u32,
    /// Hub: joins that may begin per second from one source address.
    pub joins_per_second_per_source: u32,
}

impl Default for BootstrapSection {
    fn default() -> Self {
        Self {
            token: None,
            joins_per_second: 50,
            joins_per_second_per_source: 10,
        }
    }
}

/// Shortest static bootstrap token accepted: it is a shared secret that admits any node id.
pub const MIN_STATIC_TOKEN_LEN: usize = 16;

/// `[worktree]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorktreeSection {
    /// Base directory for `create_worktree` workdirs.
    pub default_root: Option<PathBuf>,
}

/// `[node]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// The hub's internal gRPC URL, e.g. `https://hub.example:50051`.
    pub hub: Option<String>,
    /// Human-readable name; defaults to the node id.
    pub name: Option<String>,
    /// CA certificate that signs the hub's certificate, for the first join. Defaults to
    /// `<cert_dir>/ca.pem` when that file exists.
    pub ca_file: Option<PathBuf>,
    /// Directories work on this node may touch.
    pub safe_paths: Vec<PathBuf>,
    /// Where the hub can reach this node's own gRPC service (registry `grpc_target`).
    pub grpc_target: Option<String>,
    /// Labels advertised in capabilities (`gpu-class = "a100"`).
    pub labels: BTreeMap<String, String>,
    /// Environment variables of the node process a tool's policy may ask for (`[env] allow`);
    /// a policy asking for another is refused on this node.
    pub env_allow: Vec<String>,
    /// Hosts (`HOST` for any port, or `HOST:PORT`) a tool's policy may grant
    /// (`[network] allow_hosts`); a policy granting another is refused on this node. Empty: no
    /// tool gets a socket here.
    pub allow_hosts: Vec<String>,
    /// Publishers (`ed25519:<base64>`) whose tools this node runs; when not empty, a tool
    /// without a valid signature by one of them is refused before it runs.
    pub trusted_publishers: Vec<String>,
    /// What a `task` text sent to this node (the `nodes` tool's `send`) runs: a tool name, the
    /// text as its input, or `agent:NAME`, the text as a line to that agent on this node.
    pub default_task: Option<String>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            hub: None,
            name: None,
            ca_file: None,
            safe_paths: Vec::new(),
            grpc_target: None,
            labels: BTreeMap::new(),
            env_allow: DEFAULT_NODE_ENV_ALLOW
                .iter()
                .map(|v| v.to_string())
                .collect(),
            allow_hosts: Vec::new(),
            trusted_publishers: Vec::new(),
            default_task: None,
        }
    }
}

/// The node process's variables a tool may read unless `[node] env_allow` says otherwise:
/// locale and time zone, nothing that holds a secret.
pub const DEFAULT_NODE_ENV_ALLOW: [&str; 4] = ["LANG", "LC_ALL", "LC_CTYPE", "TZ"];

/// Which GPU probe a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuProbeKind {
    /// NVML when it loads, otherwise none (the reason is reported).
    #[default]
    Auto,
    /// NVML only.
    Nvml,
    /// Devices described in `[[gpu.simulated]]`.
    Simulated,
    /// No GPU probing.
    None,
}

/// `[gpu]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuSection {
    /// `auto`, `nvml`, `simulated` or `none`.
    pub probe: GpuProbeKind,
    /// How often the probe is refreshed.
    #[serde(with = "duration_text")]
    pub refresh_interval: Duration,
    /// The NVML library to load; by default the driver's `libnvidia-ml.so.1` found by the
    /// dynamic loader (set this where the driver lives elsewhere, as on WSL or NixOS).
    pub nvml_library: Option<PathBuf>,
    /// Simulated devices (`probe = "simulated"`).
    pub simulated: Vec<SimulatedGpu>,
    /// How the simulated devices change over time (`[[gpu.script]]`, in order of `at`).
    pub script: Vec<GpuScriptStep>,
}

impl Default for GpuSection {
    fn default() -> Self {
        Self {
            probe: GpuProbeKind::Auto,
            refresh_interval: Duration::from_secs(5),
            nvml_library: None,
            simulated: Vec::new(),
            script: Vec::new(),
        }
    }
}

/// One `[[gpu.simulated]]` device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedGpu {
    /// Marketing name, e.g. "NVIDIA A100-SXM4-80GB".
    pub name: String,
    /// Total memory in MiB.
    pub memory_total_mb: u64,
    /// Used memory in MiB.
    #[serde(default)]
    pub memory_used_mb: u64,
    /// CUDA compute capability, e.g. "8.0".
    #[serde(default = "default_compute_capability")]
    pub compute_capability: String,
    /// GPU utilisation in percent.
    #[serde(default)]
    pub utilization_percent: u32,
    /// MIG instances (`[[gpu.simulated.mig]]`); with any, the GPU is in MIG mode and work is
    /// placed on its instances only.
    #[serde(default)]
    pub mig: Vec<SimulatedMig>,
}

/// One MIG instance of a simulated GPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedMig {
    /// MIG profile, e.g. "3g.40gb" (shown in the instance's name).
    pub profile: String,
    /// The instance's memory in MiB.
    pub memory_total_mb: u64,
    /// Used memory in MiB.
    #[serde(default)]
    pub memory_used_mb: u64,
}

/// One `[[gpu.script]]` step: `at` after the node starts, the simulated probe changes. A step
/// either changes one device (`device` and the fields to set), makes the probe fail the way NVML
/// fails after it worked (`fail = "reason"`: the node is fenced for GPU work), or makes it work
/// again (`recover = true`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuScriptStep {
    /// When, counted from the node's start ("30s").
    #[serde(with = "duration_text")]
    pub at: Duration,
    /// The device the changes below apply to (its index in `[[gpu.simulated]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
    /// New used memory in MiB (free memory follows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_mb: Option<u64>,
    /// New utilisation in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<u32>,
    /// New temperature in °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    /// The probe fails from now on, with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
    /// The probe works again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recover: bool,
}

impl GpuScriptStep {
    /// Why this step cannot run against `devices` simulated GPUs.
    fn check(&self, devices: usize) -> Result<(), (&'static str, String)> {
        let changes_device = self.memory_used_mb.is_some()
            || self.utilization_percent.is_some()
            || self.temperature_c.is_some();
        match (
            self.device,
            changes_device,
            self.fail.is_some(),
            self.recover,
        ) {
            (Some(index), true, false, false) => {
                if usize::try_from(index).map_or(true, |i| i >= devices) {
                    return Err((
                        "device",
                        format!("no simulated device {index} ({devices} configured)"),
                    ));
                }
                if self.utilization_percent.is_some_and(|u| u > 100) {
                    return Err(("utilization_percent", "must be at most 100".into()));
                }
                Ok(())
            }
            (Some(_), false, false, false) => Err((
                "device",
                "names a device but changes nothing (set memory_used_mb, utilization_percent or \
                 temperature_c)"
                    .into(),
            )),
            (None, true, false, false) => Err((
                "device",
                "missing: which device do the changes apply to?".into(),
            )),
            (None, false, true, false) => match &self.fail {
                Some(reason) if reason.trim().is_empty() => Err((
                    "fail",
                    "needs a reason, e.g. \"GPU has fallen off the bus\"".into(),
                )),
                _ => Ok(()),
            },
            (None, false, false, true) => Ok(()),
            (None, false, false, false) => Err((
                "at",
                "the step changes nothing (give device changes, fail or recover)".into(),
            )),
            _ => Err((
                "fail",
                "a step does one thing: change a device, fail, or recover".into(),
            )),
        }
    }
}

fn default_compute_capability() -> String {
    "8.0".into()
}

/// `[storage]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `sqlite://PATH` or `postgres://…`; defaults to `sqlite://<data_dir>/outpost.db`.
    pub url: Option<String>,
}

/// `[fleet]`: heartbeat TTL in the manner of Nomad.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// Smallest heartbeat TTL, whatever the fleet size.
    #[serde(with = "duration_text")]
    pub min_heartbeat_ttl: Duration,
    /// Extra time after the TTL before a node is marked offline.
    #[serde(with = "duration_text")]
    pub heartbeat_grace: Duration,
    /// The TTL grows so that the whole fleet sends at most this many heartbeats per second.
    pub max_heartbeats_per_second: f64,
}

impl Default for FleetSection {
    fn default() -> Self {
        Self {
            min_heartbeat_ttl: Duration::from_secs(10),
            heartbeat_grace: Duration::from_secs(10),
            max_heartbeats_per_second: 50.0,
        }
    }
}

/// `[scheduler]`: how the hub places tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    /// `binpack` (fill the fullest node and GPU that fits) or `spread`.
    pub strategy: String,
    /// Placements a task may take (node losses) before it fails, unless the task says.
    pub default_max_attempts: u32,
    /// Whether placement uses the labels a node reports about itself (`[node] labels`). Labels
    /// an operator assigns (`nodes update ID --label k=v`) always count and win over a node's
    /// own; set this to false so that only assigned labels place work (a node that lies about
    /// itself then attracts nothing by it).
    pub trust_node_labels: bool,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            strategy: "binpack".into(),
            default_max_attempts: 3,
            trust_node_labels: true,
        }
    }
}

/// `[tools]`: the hub's tool registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsSection {
    /// Keep every tool installed on the nodes connected to this hub: sent when it is pushed and
    /// when a node connects (by digest; the bytes only where missing), and compiled there in the
    /// background, so a tool's first task does not wait for the compiler. Off: a node fetches and
    /// compiles a tool when its first task there needs it.
    pub preinstall: bool,
    /// Hub: publishers (`ed25519:<base64>`, from `outpost keys create`) whose signed tools are
    /// accepted; when not empty, an unsigned tool or one signed by anyone else is refused.
    pub trusted_publishers: Vec<String>,
}

impl Default for ToolsSection {
    fn default() -> Self {
        Self {
            preinstall: true,
            trusted_publishers: Vec::new(),
        }
    }
}

/// `[mcp]`: the hub's MCP endpoint (`/mcp` on the HTTP listener).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpSection {
    /// Serve `/mcp`.
    pub enabled: bool,
    /// `Host` names (or `host:port`) clients reach the hub by, besides the loopback names and
    /// `[internal_grpc.security] server_names`: a request for another host is refused (DNS
    /// rebinding).
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://app.example:443`, `http://localhost:*`) allowed besides the
    /// hub's own; a request with any other `Origin` is refused with 403. Requests without an
    /// `Origin` (programs, not browsers) pass.
    pub allowed_origins: Vec<String>,
}

impl Default for McpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// `[actors]`: the hub's mailboxes (delivery rules in the hub's `store::actors`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorsSection {
    /// How long a message handed out by `inbox` stays hidden before it is handed out again,
    /// unless acked.
    #[serde(with = "duration_text")]
    pub visibility_timeout: Duration,
    /// Hand-outs without an ack before a message goes to the dead-letter list.
    pub max_deliveries: u32,
    /// The largest message payload (JSON text), bytes.
    pub max_payload_bytes: usize,
}

impl Default for ActorsSection {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            max_payload_bytes: 64 * 1024,
        }
    }
}

/// How a tool may be called (PRX's `[security.tool_policy.tools]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolMode {
    /// Called at once.
    #[default]
    Allowed,
    /// A call by an agent credential waits for an operator's answer to a permission review.
    Supervised,
    /// Never called by an agent credential.
    Denied,
}

/// `[security.tool_policy]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolPolicySection {
    /// Per tool (a pushed tool's name, or `nodes` for the fleet tool): `allowed`,
    /// `supervised` or `denied`. Tools not named are allowed.
    pub tools: std::collections::BTreeMap<String, ToolMode>,
}

/// `[security]`: what agents may do without an operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// `[security.tool_policy]`
    pub tool_policy: ToolPolicySection,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: ServerSection,
    /// `[internal_grpc]`
    pub internal_grpc: InternalGrpcSection,
    /// `[worktree]`
    pub worktree: WorktreeSection,
    /// `[node]`
    pub node: NodeSection,
    /// `[gpu]`
    pub gpu: GpuSection,
    /// `[storage]`
    pub storage: StorageSection,
    /// `[fleet]`
    pub fleet: FleetSection,
    /// `[scheduler]`
    pub scheduler: SchedulerSection,
    /// `[tools]`
    pub tools: ToolsSection,
    /// `[sandbox]`
    pub sandbox: SandboxSection,
    /// `[mcp]`
    pub mcp: McpSection,
    /// `[actors]`
    pub actors: ActorsSection,
    /// `[security]`
    pub security: PolicySection,
}

/// `[sandbox]`: how a node runs native programs (agents and `--command` tasks).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// The executable that launches native programs (an `outpost`, `outpost-node` or
    /// `outpost-launch` binary); default: the running binary.
    pub launcher: Option<PathBuf>,
    /// Refuse native programs unless Landlock fully enforces their confinement here.
    pub require_landlock: bool,
    /// TCP ports native programs may connect to, enforced by Landlock where the kernel's ABI
    /// has network rules (4 and up; elsewhere the confinement reports `partial`). Absent: TCP
    /// is not restricted; `[]`: no TCP connection at all.
    pub tcp_connect: Option<Vec<u16>>,
}

/// Keys that `OUTPOST_<SECTION>_<KEY>` variables may set (dotted paths).
pub const ENV_KEYS: &[&str] = &[
    "server.role",
    "server.listen",
    "server.node_id",
    "server.data_dir",
    "server.quic_listen",
    "server.tls",
    "server.tls_cert_file",
    "server.tls_key_file",
    "server.allow_plain_http",
    "internal_grpc.enabled",
    "internal_grpc.listen",
    "internal_grpc.security.mode",
    "internal_grpc.security.cert_dir",
    "internal_grpc.security.node_certificate_lifetime",
    "internal_grpc.security.node_token_lifetime",
    "internal_grpc.security.server_names",
    "internal_grpc.auth.shared_secret",
    "internal_grpc.auth.issuer",
    "internal_grpc.auth.audience",
    "internal_grpc.auth.leeway_seconds",
    "internal_grpc.bootstrap.token",
    "internal_grpc.bootstrap.joins_per_second",
    "internal_grpc.bootstrap.joins_per_second_per_source",
    "worktree.default_root",
    "node.hub",
    "node.name",
    "node.ca_file",
    "node.safe_paths",
    "node.grpc_target",
    "node.env_allow",
    "node.allow_hosts",
    "node.trusted_publishers",
    "node.default_task",
    "gpu.probe",
    "gpu.refresh_interval",
    "gpu.nvml_library",
    "storage.url",
    "fleet.min_heartbeat_ttl",
    "fleet.heartbeat_grace",
    "fleet.max_heartbeats_per_second",
    "scheduler.strategy",
    "scheduler.default_max_attempts",
    "scheduler.trust_node_labels",
    "tools.preinstall",
    "tools.trusted_publishers",
    "sandbox.launcher",
    "sandbox.require_landlock",
    "sandbox.tcp_connect",
    "mcp.enabled",
    "mcp.allowed_hosts",
    "mcp.allowed_origins",
    "actors.visibility_timeout",
    "actors.max_deliveries",
    "actors.max_payload_bytes",
];

/// The environment variable that overrides a dotted key: `internal_grpc.auth.issuer` →
/// `OUTPOST_INTERNAL_GRPC_AUTH_ISSUER`.
pub fn env_var_for(key: &str) -> String {
    format!("OUTPOST_{}", key.replace('.', "_").to_ascii_uppercase())
}

impl Config {
    /// Loads the file (if any), then applies `OUTPOST_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: Some(path.to_path_buf()),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        // Check the file alone first so that its errors name the file.
        if path.is_some() {
            Self::from_table(table.clone(), path)?;
        }
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for key in ENV_KEYS {
            let var = env_var_for(key);
            if let Some(raw) = env.get(&var) {
                let value = env_value(key, raw);
                set_path(&mut table, key, value).map_err(|message| ConfigError::Env {
                    var: var.clone(),
                    message,
                })?;
                Self::from_table(table.clone(), None).map_err(|e| ConfigError::Env {
                    var: var.clone(),
                    message: e.to_string(),
                })?;
            }
        }
        let mut config = Self::from_table(table, path)?;
        config.settle_dirs(&env);
        config.validate()?;
        Ok(config)
    }

    /// Makes the data and cert dirs absolute: a relative one is taken against the directory the
    /// process runs in now (so a later change of directory cannot move them), and an unset data
    /// dir becomes the user's state directory (`$XDG_STATE_HOME/outpost`, else
    /// `$HOME/.local/state/outpost`), else [`DEFAULT_DATA_DIR`].
    fn settle_dirs(&mut self, env: &BTreeMap<String, String>) {
        let absolute =
            |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        self.server.data_dir = Some(match &self.server.data_dir {
            Some(dir) => absolute(dir),
            None => default_data_dir(env),
        });
        if let Some(dir) = &self.internal_grpc.security.cert_dir {
            self.internal_grpc.security.cert_dir = Some(absolute(dir));
        }
    }

    /// Parses TOML text (no environment), for tests and embedding.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Parse {
                path: None,
                message: e.to_string(),
            })?;
        let mut config = Self::from_table(table, None)?;
        config.settle_dirs(&BTreeMap::new());
        config.validate()?;
        Ok(config)
    }

    fn from_table(table: toml::Table, path: Option<&Path>) -> Result<Self, ConfigError> {
        Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            message: e.to_string().trim().to_string(),
        })
    }

    /// The hub's HTTP listener: TLS files come in pairs with `tls` on, and plain HTTP stays on
    /// loopback unless `allow_plain_http` says a proxy in front terminates TLS.
    fn validate_http_tls(&self, http: SocketAddr) -> Result<(), ConfigError> {
        let server = &self.server;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        match (&server.tls_cert_file, &server.tls_key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "server.tls_key_file",
                    "is needed with server.tls_cert_file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "server.tls_cert_file",
                    "is needed with server.tls_key_file".into(),
                ));
            }
            (Some(_), Some(_)) if !server.tls => {
                return Err(invalid(
                    "server.tls",
                    "is false but server.tls_cert_file is set: set `tls = true` to serve HTTPS"
                        .into(),
                ));
            }
            _ => {}
        }
        if !server.tls && !server.allow_plain_http && !http.ip().is_loopback() {
            return Err(invalid(
                "server.listen",
                format!(
                    "{http} is not a loopback address, and without TLS bearer tokens would cross \
                     the network in the clear: set `server.tls = true` (the hub certificate, or \
                     tls_cert_file and tls_key_file), or `server.allow_plain_http = true` when a \
                     proxy in front terminates TLS"
                ),
            ));
        }
        Ok(())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        if let Some(task) = &self.node.default_task {
            check_default_task(task).map_err(|m| invalid("node.default_task", m))?;
        }
        if self.actors.max_deliveries == 0 || self.actors.max_deliveries > 1_000 {
            return Err(invalid(
                "actors.max_deliveries",
                format!("{} is outside 1..=1000", self.actors.max_deliveries),
            ));
        }
        if self.actors.visibility_timeout < Duration::from_millis(100)
            || self.actors.visibility_timeout > Duration::from_secs(12 * 3600)
        {
            return Err(invalid(
                "actors.visibility_timeout",
                format!(
                    "{} is outside 100ms..=12h",
                    humantime::format_duration(self.actors.visibility_timeout)
                ),
            ));
        }
        if self.actors.max_payload_bytes == 0 || self.actors.max_payload_bytes > 16 << 20 {
            return Err(invalid(
                "actors.max_payload_bytes",
                format!("{} is outside 1..=16 MiB", self.actors.max_payload_bytes),
            ));
        }
        if !self.internal_grpc.enabled {
            return Err(invalid(
                "internal_grpc.enabled",
                "cannot be false: internal gRPC carries node joins and every CLI command; bind \
                 `internal_grpc.listen` to a loopback address to keep it private"
                    .into(),
            ));
        }
        self.internal_grpc
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("internal_grpc.listen", format!("{e} (expected host:port)")))?;
        if self.server.role == ServerRole::Hub {
            let http = self
                .server
                .listen
                .parse::<SocketAddr>()
                .map_err(|e| invalid("server.listen", format!("{e} (expected host:port)")))?;
            self.validate_http_tls(http)?;
        }
        if let Some(quic) = &self.server.quic_listen {
            quic.parse::<SocketAddr>()
                .map_err(|e| invalid("server.quic_listen", format!("{e} (expected host:port)")))?;
        }
        if let Some(id) = &self.server.node_id {
            outpost_trust::identity::validate_node_id(id)
                .map_err(|e| invalid("server.node_id", e))?;
        }
        if let Some(secret) = &self.internal_grpc.auth.shared_secret
            && secret.len() < 16
        {
            return Err(invalid(
                "internal_grpc.auth.shared_secret",
                "must be at least 16 characters".into(),
            ));
        }
        if self.fleet.max_heartbeats_per_second <= 0.0
            || !self.fleet.max_heartbeats_per_second.is_finite()
        {
            return Err(invalid(
                "fleet.max_heartbeats_per_second",
                "must be a positive number".into(),
            ));
        }
        if !matches!(
            self.scheduler.strategy.as_str(),
            "binpack" | "bin-pack" | "spread"
        ) {
            return Err(invalid(
                "scheduler.strategy",
                format!(
                    "{:?}: use \"binpack\" or \"spread\"",
                    self.scheduler.strategy
                ),
            ));
        }
        if !(1..=100).contains(&self.scheduler.default_max_attempts) {
            return Err(invalid(
                "scheduler.default_max_attempts",
                format!(
                    "{} must be between 1 and 100",
                    self.scheduler.default_max_attempts
                ),
            ));
        }
        if self.fleet.min_heartbeat_ttl.is_zero() {
            return Err(invalid(
                "fleet.min_heartbeat_ttl",
                "must be greater than zero".into(),
            ));
        }
        for (i, gpu) in self.gpu.simulated.iter().enumerate() {
            if gpu.memory_used_mb > gpu.memory_total_mb {
                return Err(invalid(
                    &format!("gpu.simulated[{i}].memory_used_mb"),
                    format!(
                        "{} exceeds memory_total_mb {}",
                        gpu.memory_used_mb, gpu.memory_total_mb
                    ),
                ));
            }
            parse_compute_capability(&gpu.compute_capability)
                .map_err(|e| invalid(&format!("gpu.simulated[{i}].compute_capability"), e))?;
            let mut instances_mb = 0u64;
            for (k, instance) in gpu.mig.iter().enumerate() {
                let field = |name: &str| format!("gpu.simulated[{i}].mig[{k}].{name}");
                if instance.profile.trim().is_empty() {
                    return Err(invalid(&field("profile"), "must not be empty".into()));
                }
                if instance.memory_total_mb == 0 {
                    return Err(invalid(
                        &field("memory_total_mb"),
                        "must be greater than zero".into(),
                    ));
                }
                if instance.memory_used_mb > instance.memory_total_mb {
                    return Err(invalid(
                        &field("memory_used_mb"),
                        format!(
                            "{} exceeds memory_total_mb {}",
                            instance.memory_used_mb, instance.memory_total_mb
                        ),
                    ));
                }
                instances_mb = instances_mb.saturating_add(instance.memory_total_mb);
                if instances_mb > gpu.memory_total_mb {
                    return Err(invalid(
                        &field("memory_total_mb"),
                        format!(
                            "the instances hold {instances_mb} MiB, more than the GPU's {} MiB",
                            gpu.memory_total_mb
                        ),
                    ));
                }
            }
        }
        if self.gpu.nvml_library.is_some()
            && matches!(self.gpu.probe, GpuProbeKind::Simulated | GpuProbeKind::None)
        {
            return Err(invalid(
                "gpu.nvml_library",
                "only the NVML probe loads a library: set [gpu] probe = \"nvml\" or \"auto\""
                    .into(),
            ));
        }
        if !self.gpu.script.is_empty() && self.gpu.probe != GpuProbeKind::Simulated {
            return Err(invalid(
                "gpu.script",
                "scripts drive the simulated probe only: set [gpu] probe = \"simulated\"".into(),
            ));
        }
        let mut previous = Duration::ZERO;
        for (i, step) in self.gpu.script.iter().enumerate() {
            if step.at < previous {
                return Err(invalid(
                    &format!("gpu.script[{i}].at"),
                    format!(
                        "{} comes before the previous step's {}: steps go in time order",
                        humantime::format_duration(step.at),
                        humantime::format_duration(previous)
                    ),
                ));
            }
            previous = step.at;
            step.check(self.gpu.simulated.len())
                .map_err(|(field, message)| {
                    invalid(&format!("gpu.script[{i}].{field}"), message)
                })?;
        }
        for (key, publishers) in [
            ("tools.trusted_publishers", &self.tools.trusted_publishers),
            ("node.trusted_publishers", &self.node.trusted_publishers),
        ] {
            for publisher in publishers {
                outpost_trust::signing::parse_publisher(publisher).map_err(|e| {
                    invalid(
                        key,
                        format!("{e} (a key as `outpost keys create` prints it)"),
                    )
                })?;
            }
        }
        let security = &self.internal_grpc.security;
        for (key, lifetime) in [
            (
                "internal_grpc.security.node_certificate_lifetime",
                security.node_certificate_lifetime,
            ),
            (
                "internal_grpc.security.node_token_lifetime",
                security.node_token_lifetime,
            ),
        ] {
            if lifetime < Duration::from_secs(1) || lifetime > Duration::from_secs(3650 * 24 * 3600)
            {
                return Err(invalid(
                    key,
                    format!(
                        "{} is outside 1s to 3650 days",
                        humantime::format_duration(lifetime)
                    ),
                ));
            }
        }
        let bootstrap = &self.internal_grpc.bootstrap;
        if let Some(token) = &bootstrap.token
            && token.chars().count() < MIN_STATIC_TOKEN_LEN
        {
            return Err(invalid(
                "internal_grpc.bootstrap.token",
                format!(
                    "is {} characters; a bootstrap token admits any node id, so it needs at least {MIN_STATIC_TOKEN_LEN} (e.g. `openssl rand -hex 24`)",
                    token.chars().count()
                ),
            ));
        }
        for (key, rate) in [
            (
                "internal_grpc.bootstrap.joins_per_second",
                bootstrap.joins_per_second,
            ),
            (
                "internal_grpc.bootstrap.joins_per_second_per_source",
                bootstrap.joins_per_second_per_source,
            ),
        ] {
            if rate == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        let state_dirs = [self.data_dir(), self.cert_dir()];
        for path in &self.node.safe_paths {
            if !path.is_absolute() {
                return Err(invalid(
                    "node.safe_paths",
                    format!("{} is not an absolute path", path.display()),
                ));
            }
            if let Some(dir) = state_dirs
                .iter()
                .find(|dir| path.starts_with(dir) || dir.starts_with(path))
            {
                return Err(invalid(
                    "node.safe_paths",
                    format!(
                        "{} overlaps {}, which holds the node's own state (keys, tool store, compile cache): tools granted it could read or replace them; keep the data and cert dirs outside safe_paths",
                        path.display(),
                        dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A hub on loopback with every listener on a free port (`127.0.0.1:0`), its state in
    /// `data_dir`, accepting joins with the static `token`; everything else at its default.
    pub fn loopback_hub(data_dir: &Path, token: &str) -> Self {
        let mut config = Self::default();
        config.server.role = ServerRole::Hub;
        config.server.data_dir = Some(data_dir.to_path_buf());
        config.server.listen = "127.0.0.1:0".into();
        config.internal_grpc.listen = "127.0.0.1:0".into();
        config.internal_grpc.bootstrap.token = Some(token.into());
        config
    }

    /// A node that joins `hub_url` as `node_id` with `token`, trusting `ca_file` for the first
    /// join and keeping its state in `data_dir`; everything else at its default.
    pub fn joining_node(
        node_id: &str,
        hub_url: &str,
        ca_file: &Path,
        token: &str,
        data_dir: &Path,
    ) -> Self {
        let mut config = Self::default();
        config.server.role = ServerRole::Node;
        config.server.node_id = Some(node_id.into());
        config.server.data_dir = Some(data_dir.to_path_buf());
        config.internal_grpc.bootstrap.token = Some(token.into());
        config.node.hub = Some(hub_url.into());
        config.node.ca_file = Some(ca_file.to_path_buf());
        config
    }

    /// The data directory: `[server] data_dir` (made absolute when the config was loaded), else
    /// [`DEFAULT_DATA_DIR`].
    pub fn data_dir(&self) -> PathBuf {
        self.server
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// The certificate directory: `[internal_grpc.security] cert_dir`, else `<data_dir>/certs`.
    pub fn cert_dir(&self) -> PathBuf {
        self.internal_grpc
            .security
            .cert_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join("certs"))
    }
}

/// The data directory when neither the config nor the environment names one.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/outpost";

/// The user's state directory for Outpost, from `env`: `$XDG_STATE_HOME/outpost`, else
/// `$HOME/.local/state/outpost`, else [`DEFAULT_DATA_DIR`] (only absolute values count).
fn default_data_dir(env: &BTreeMap<String, String>) -> PathBuf {
    let from = |var: &str, rest: &[&str]| {
        env.get(var)
            .map(PathBuf::from)
            .filter(|base| base.is_absolute())
            .map(|base| rest.iter().fold(base, |path, part| path.join(part)))
    };
    from("XDG_STATE_HOME", &["outpost"])
        .or_else(|| from("HOME", &[".local", "state", "outpost"]))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// `[node] default_task`: a tool name, or `agent:NAME`.
fn check_default_task(task: &str) -> Result<(), String> {
    let name = task.strip_prefix("agent:").unwrap_or(task);
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{task:?}: name a tool (`echo`) or an agent on this node (`agent:NAME`), 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// Turns an environment value into a TOML value of the type the key expects.
fn env_value(key: &str, raw: &str) -> toml::Value {
    let trimmed = raw.trim();
    if key.ends_with("safe_paths")
        || key.ends_with("server_names")
        || key.ends_with("env_allow")
        || key.ends_with("allow_hosts")
        || key.ends_with("trusted_publishers")
        || key.ends_with("tcp_connect")
        || key.ends_with("allowed_hosts")
        || key.ends_with("allowed_origins")
    {
        if trimmed.starts_with('[')
            && let Ok(v) = format!("v = {trimmed}").parse::<toml::Table>()
            && let Some(value) = v.get("v")
        {
            return value.clone();
        }
        let sep = if key.ends_with("safe_paths") {
            ':'
        } else {
            ','
        };
        return toml::Value::Array(
            trimmed
                .split(sep)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s.parse::<i64>() {
                    // Ports are numbers; a word stays text, so the error names it.
                    Ok(n) if key.ends_with("tcp_connect") => toml::Value::Integer(n),
                    _ => toml::Value::String(s.into()),
                })
                .collect(),
        );
    }
    match trimmed {
        "true" => return toml::Value::Boolean(true),
        "false" => return toml::Value::Boolean(false),
        _ => {}
    }
    if (key.ends_with("leeway_seconds") || key.contains("joins_per_second"))
        && let Ok(n) = trimmed.parse::<i64>()
    {
        return toml::Value::Integer(n);
    }
    if key.ends_with("max_heartbeats_per_second")
        && let Ok(n) = trimmed.parse::<f64>()
    {
        return toml::Value::Float(n);
    }
    toml::Value::String(raw.to_string())
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().ok_or_else(|| "empty key".to_string())?;
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// Durations written as text: "10s", "1h 30m", "250ms".
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises as humantime text.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    /// Parses humantime text.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {e} (try \"10s\" or \"500ms\")"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_role_is_written_hub_and_main_is_accepted() {
        for (text, role) in [
            ("hub", ServerRole::Hub),
            ("main", ServerRole::Hub),
            ("node", ServerRole::Node),
        ] {
            let config = Config::from_toml(&format!("[server]\nrole = \"{text}\"\n")).unwrap();
            assert_eq!(config.server.role, role, "{text}");
        }
        let err = Config::from_toml("[server]\nrole = \"primary\"\n").unwrap_err();
        assert!(err.to_string().contains("primary"), "{err}");
    }

    #[test]
    fn internal_grpc_cannot_be_disabled() {
        let err = Config::from_toml("[internal_grpc]\nenabled = false\n").unwrap_err();
        assert!(err.to_string().contains("internal_grpc.enabled"), "{err}");
        assert!(err.to_string().contains("loopback"), "{err}");
        assert!(Config::from_toml("[internal_grpc]\nenabled = true\n").is_ok());
    }

    #[test]
    fn compute_capability_parsing() {
        assert_eq!(parse_compute_capability("8.6"), Ok((8, 6)));
        assert!(parse_compute_capability("8").is_err());
        assert!(parse_compute_capability("x.1").is_err());
    }

    #[test]
    fn defaults_run() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.server.role, ServerRole::Hub);
        assert_eq!(c.internal_grpc.listen, "127.0.0.1:50051");
        assert_eq!(c.internal_grpc.security.mode, TlsMode::Tls);
        assert_eq!(c.cert_dir(), PathBuf::from("/var/lib/outpost/certs"));
        assert!(c.tools.preinstall, "pushed tools are installed by default");
    }

    #[test]
    fn a_default_task_names_a_tool_or_an_agent() {
        for good in ["echo", "agent:assistant"] {
            let c = Config::from_toml(&format!("[node]\ndefault_task = \"{good}\"\n")).unwrap();
            assert_eq!(c.node.default_task.as_deref(), Some(good));
        }
        for bad in ["", "agent:", "a b", "../x"] {
            let err = Config::from_toml(&format!("[node]\ndefault_task = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("node.default_task"), "{bad:?}: {err}");
        }
        let c =
            Config::from_toml("[mcp]\nallowed_origins = [\"https://app.example:443\"]\n").unwrap();
        assert!(c.mcp.enabled && c.mcp.allowed_origins == ["https://app.example:443"]);
    }

    #[test]
    fn trusted_publishers_are_publisher_keys() {
        let err = Config::from_toml("[tools]\ntrusted_publishers = [\"alice\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tools.trusted_publishers") && err.contains("\"alice\""),
            "{err}"
        );
        let key = format!("ed25519:{}=", "A".repeat(43));
        Config::from_toml(&format!("[node]\ntrusted_publishers = [\"{key}\"]\n")).unwrap();
    }

    #[test]
    fn a_static_token_needs_some_strength() {
        let err = Config::from_toml("[internal_grpc.bootstrap]\ntoken = \"hunter2\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("internal_grpc.bootstrap.token") && err.contains("is 7 characters"),
            "{err}"
        );
        Config::from_toml("[internal_grpc.bootstrap]\ntoken = \"0123456789abcdef\"\n").unwrap();
        let err = Config::from_toml("[internal_grpc.bootstrap]\njoins_per_second = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("joins_per_second"), "{err}");
    }

    #[test]
    fn the_data_dir_is_always_absolute() {
        let home = |vars: &[(&str, &str)]| {
            Config::load(
                None,
                vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .unwrap()
            .data_dir()
        };
        assert_eq!(
            home(&[("HOME", "/home/ops")]),
            PathBuf::from("/home/ops/.local/state/outpost")
        );
        assert_eq!(
            home(&[("HOME", "/home/ops"), ("XDG_STATE_HOME", "/srv/state")]),
            PathBuf::from("/srv/state/outpost")
        );
        assert_eq!(
            home(&[("HOME", "relative")]),
            PathBuf::from(DEFAULT_DATA_DIR)
        );
        let relative = Config::from_toml("[server]\ndata_dir = \"state\"\n").unwrap();
        assert_eq!(
            relative.data_dir(),
            std::env::current_dir().unwrap().join("state")
        );
        assert!(relative.cert_dir().is_absolute());
    }

    #[test]
    fn safe_paths_may_not_overlap_the_nodes_own_state() {
        for (safe, data, needle) in [
            ("/srv", "/srv/outpost", "/srv overlaps /srv/outpost"),
            (
                "/srv/outpost/tools",
                "/srv/outpost",
                "overlaps /srv/outpost",
            ),
            ("/srv/outpost", "/srv/outpost", "overlaps"),
        ] {
            let err = Config::from_toml(&format!(
                "[server]\ndata_dir = \"{data}\"\n[node]\nsafe_paths = [\"{safe}\"]\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("node.safe_paths") && err.contains(needle),
                "{err}"
            );
        }
        let err = Config::from_toml(
            "[server]\ndata_dir = \"/var/lib/o\"\n[internal_grpc.security]\ncert_dir = \"/data/certs\"\n[node]\nsafe_paths = [\"/data\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/data overlaps /data/certs"), "{err}");
        // Whole components: /srv/outpost2 is not inside /srv/outpost.
        Config::from_toml(
            "[server]\ndata_dir = \"/srv/outpost\"\n[node]\nsafe_paths = [\"/srv/outpost2\"]\n",
        )
        .unwrap();
    }

    #[test]
    fn plain_http_beyond_loopback_is_refused_and_tls_files_come_in_pairs() {
        let err = Config::from_toml("[server]\nlisten = \"0.0.0.0:8080\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.listen") && err.contains("server.tls = true"),
            "{err}"
        );
        let err = Config::from_toml("[server]\nlisten = \"[::]:8080\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("in the clear"), "{err}");
        // TLS, or an explicit acknowledgement of a proxy in front, lets it bind anywhere.
        let tls = Config::from_toml("[server]\nlisten = \"0.0.0.0:8080\"\ntls = true\n").unwrap();
        assert!(tls.server.tls);
        Config::from_toml("[server]\nlisten = \"0.0.0.0:8080\"\nallow_plain_http = true\n")
            .unwrap();
        // Loopback stays plain by default; a node has no HTTP listener to check.
        Config::from_toml("[server]\nlisten = \"127.0.0.2:8080\"\n").unwrap();
        Config::from_toml("[server]\nrole = \"node\"\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        for (text, key) in [
            (
                "[server]\ntls = true\ntls_cert_file = \"/c.pem\"\n",
                "server.tls_key_file",
            ),
            (
                "[server]\ntls = true\ntls_key_file = \"/k.pem\"\n",
                "server.tls_cert_file",
            ),
            (
                "[server]\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"\n",
                "server.tls",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn seed_sections_parse() {
        let c = Config::from_toml(
            r#"
            [server]
            role = "node"
            node_id = "gpu-01"
            [internal_grpc]
            enabled = true
            listen = "0.0.0.0:50051"
            [internal_grpc.security]
            mode = "mtls"
            cert_dir = "/etc/outpost/certs"
            [internal_grpc.auth]
            shared_secret = "CHANGE-ME-256-BIT-SECRET"
            issuer = "agenthub"
            audience = "agenthub-internal"
            [internal_grpc.bootstrap]
            token = "bootstrap-token-for-remote-nodes"
            [worktree]
            default_root = "/data/worktrees"
            [node]
            hub = "https://127.0.0.1:50051"
            safe_paths = ["/data"]
            labels = { zone = "edge" }
            [gpu]
            probe = "simulated"
            refresh_interval = "2s"
            [[gpu.simulated]]
            name = "NVIDIA A100"
            memory_total_mb = 81920
            compute_capability = "8.0"
            "#,
        )
        .unwrap();
        assert_eq!(c.server.role, ServerRole::Node);
        assert_eq!(c.internal_grpc.security.mode, TlsMode::Mtls);
        assert_eq!(c.internal_grpc.auth.issuer, "agenthub");
        assert_eq!(c.gpu.simulated.len(), 1);
        assert_eq!(c.gpu.refresh_interval, Duration::from_secs(2));
        assert_eq!(c.node.labels.get("zone").map(String::as_str), Some("edge"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            Config::from_toml("[internal_grpc.security]\nmode = \"tls\"\ncert_dri = \"/x\"\n")
                .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cert_dri"), "{text}");
        let err = Config::from_toml("[nonsense]\na = 1\n").unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    #[test]
    fn wrong_type_and_bad_values_are_named() {
        let err =
            Config::from_toml("[internal_grpc.security]\nmode = \"plaintext\"\n").unwrap_err();
        assert!(err.to_string().contains("plaintext"), "{err}");
        let err = Config::from_toml("[internal_grpc]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("internal_grpc.listen"), "{err}");
        let err = Config::from_toml("[fleet]\nheartbeat_grace = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
        let err = Config::from_toml("[server]\nnode_id = \"../etc\"\n").unwrap_err();
        assert!(err.to_string().contains("server.node_id"), "{err}");
    }

    #[test]
    fn gpu_script_parses_and_bad_steps_are_named() {
        let base = "[gpu]\nprobe = \"simulated\"\n[[gpu.simulated]]\nname = \"A100\"\nmemory_total_mb = 81920\n";
        let c = Config::from_toml(&format!(
            "{base}[[gpu.script]]\nat = \"10s\"\ndevice = 0\nmemory_used_mb = 60000\n\
             [[gpu.script]]\nat = \"20s\"\nfail = \"GPU has fallen off the bus\"\n\
             [[gpu.script]]\nat = \"30s\"\nrecover = true\n"
        ))
        .unwrap();
        assert_eq!(c.gpu.script.len(), 3);
        assert_eq!(c.gpu.script[0].at, Duration::from_secs(10));
        assert_eq!(c.gpu.script[0].memory_used_mb, Some(60000));
        assert!(c.gpu.script[2].recover);
        for (step, named) in [
            (
                "at = \"5s\"\ndevice = 3\nmemory_used_mb = 1",
                "gpu.script[0].device",
            ),
            ("at = \"5s\"\nmemory_used_mb = 1", "gpu.script[0].device"),
            ("at = \"5s\"\ndevice = 0", "gpu.script[0].device"),
            ("at = \"5s\"", "gpu.script[0].at"),
            ("at = \"5s\"\nfail = \" \"", "gpu.script[0].fail"),
            (
                "at = \"5s\"\nfail = \"x\"\nrecover = true",
                "gpu.script[0].fail",
            ),
            (
                "at = \"5s\"\ndevice = 0\nutilization_percent = 101",
                "gpu.script[0].utilization_percent",
            ),
            ("at = \"soon\"\nrecover = true", "soon"),
            ("at = \"5s\"\nrecover = true\ncolour = 1", "colour"),
        ] {
            let err = Config::from_toml(&format!("{base}[[gpu.script]]\n{step}\n")).unwrap_err();
            assert!(err.to_string().contains(named), "{step}: {err}");
        }
        let err = Config::from_toml(&format!(
            "{base}[[gpu.script]]\nat = \"9s\"\nrecover = true\n[[gpu.script]]\nat = \"2s\"\nrecover = true\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("gpu.script[1].at"), "{err}");
        let err = Config::from_toml("[gpu]\nprobe = \"simulated\"\nnvml_library = \"/x.so\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("gpu.nvml_library"), "{err}");
        let err =
            Config::from_toml("[gpu]\nprobe = \"none\"\nnvml_library = \"/x.so\"\n").unwrap_err();
        assert!(err.to_string().contains("gpu.nvml_library"), "{err}");
        let c = Config::from_toml(
            "[gpu]\nprobe = \"nvml\"\nnvml_library = \"/usr/lib/wsl/lib/libnvidia-ml.so.1\"\n",
        )
        .unwrap();
        assert!(c.gpu.nvml_library.is_some());
        let err = Config::from_toml("[[gpu.script]]\nat = \"1s\"\nrecover = true\n").unwrap_err();
        assert!(err.to_string().contains("simulated"), "{err}");
    }

    #[test]
    fn simulated_mig_instances_parse_and_bad_ones_are_named() {
        let base = "[gpu]\nprobe = \"simulated\"\n[[gpu.simulated]]\nname = \"A100\"\nmemory_total_mb = 81920\n";
        let c = Config::from_toml(&format!(
            "{base}[[gpu.simulated.mig]]\nprofile = \"3g.40gb\"\nmemory_total_mb = 40960\n\
             [[gpu.simulated.mig]]\nprofile = \"1g.10gb\"\nmemory_total_mb = 10240\nmemory_used_mb = 100\n"
        ))
        .unwrap();
        assert_eq!(c.gpu.simulated[0].mig.len(), 2);
        assert_eq!(c.gpu.simulated[0].mig[1].memory_used_mb, 100);
        for (mig, named) in [
            (
                "profile = \" \"\nmemory_total_mb = 1",
                "gpu.simulated[0].mig[0].profile",
            ),
            (
                "profile = \"1g\"\nmemory_total_mb = 0",
                "gpu.simulated[0].mig[0].memory_total_mb",
            ),
            (
                "profile = \"1g\"\nmemory_total_mb = 10\nmemory_used_mb = 11",
                "gpu.simulated[0].mig[0].memory_used_mb",
            ),
            (
                "profile = \"7g\"\nmemory_total_mb = 90000",
                "more than the GPU's 81920 MiB",
            ),
            (
                "profile = \"1g\"\nmemory_total_mb = 10\nslices = 1",
                "slices",
            ),
        ] {
            let err =
                Config::from_toml(&format!("{base}[[gpu.simulated.mig]]\n{mig}\n")).unwrap_err();
            assert!(err.to_string().contains(named), "{mig}: {err}");
        }
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.toml");
        std::fs::write(&path, "[internal_grpc]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let env = vec![
            (
                "OUTPOST_INTERNAL_GRPC_LISTEN".to_string(),
                "127.0.0.1:2".to_string(),
            ),
            (
                "OUTPOST_INTERNAL_GRPC_SECURITY_MODE".to_string(),
                "mtls".to_string(),
            ),
            ("OUTPOST_NODE_SAFE_PATHS".to_string(), "/a:/b".to_string()),
            (
                "OUTPOST_FLEET_HEARTBEAT_GRACE".to_string(),
                "3s".to_string(),
            ),
            ("OUTPOST_TOOLS_PREINSTALL".to_string(), "false".to_string()),
            (
                "OUTPOST_NODE_ENV_ALLOW".to_string(),
                "LANG,HOME".to_string(),
            ),
            (
                "OUTPOST_NODE_ALLOW_HOSTS".to_string(),
                "127.0.0.1:8080,example.internal".to_string(),
            ),
            (
                "OUTPOST_INTERNAL_GRPC_BOOTSTRAP_JOINS_PER_SECOND".to_string(),
                "7".to_string(),
            ),
            (
                "OUTPOST_HUB".to_string(),
                "ignored: not a config key".to_string(),
            ),
        ];
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.internal_grpc.listen, "127.0.0.1:2");
        assert_eq!(c.internal_grpc.security.mode, TlsMode::Mtls);
        assert_eq!(
            c.node.safe_paths,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(c.fleet.heartbeat_grace, Duration::from_secs(3));
        assert!(!c.tools.preinstall);
        assert_eq!(c.node.env_allow, ["LANG", "HOME"]);
        assert_eq!(c.node.allow_hosts, ["127.0.0.1:8080", "example.internal"]);
        assert_eq!(c.internal_grpc.bootstrap.joins_per_second, 7);
        assert_eq!(
            Config::default().node.env_allow,
            DEFAULT_NODE_ENV_ALLOW.map(String::from)
        );
        let err = Config::load(
            None,
            vec![("OUTPOST_INTERNAL_GRPC_ENABLED".into(), "maybe".into())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("OUTPOST_INTERNAL_GRPC_ENABLED"),
            "{err}"
        );
    }
}
