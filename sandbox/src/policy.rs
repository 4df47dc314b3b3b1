//! A tool's policy (`policy.toml`): what it may touch and how much it may use. Deny by default.
//!
//! ```toml
//! [[fs]]
//! host = "/srv/corpus"      # a directory inside the node's safe_paths
//! guest = "/corpus"         # where the tool sees it (default: the host path)
//! access = "ro"             # "ro" (default) or "rw"
//!
//! [env]
//! allow = ["LANG"]          # variables copied from the node's environment
//!
//! [network]
//! allow_hosts = ["127.0.0.1:8080", "api.internal"]   # host[:port]; no entry, no sockets
//!
//! [limits]
//! memory = "64MiB"          # all linear memories together
//! fuel = 1_000_000_000      # CPU budget, or "unlimited"
//! timeout = "5s"            # wall time
//! max_output = "1MiB"       # each of: returned value, stdout, stderr
//! disk_write = "64MiB"      # bytes one call may write into its read-write grants
//! files_created = 1000      # files, directories and links one call may create there
//!
//! [placement]               # where the hub places the tool's tasks (nodes ignore it)
//! gpus = 1                  # GPUs: 0, a share below 1 (0.5), or whole devices
//! gpu_memory = "16GiB"      # free memory per assigned GPU
//! compute_capability = "8.0"
//! labels = { zone = "lab" } # labels the node must have
//! capabilities = ["cuda"]   # capabilities the node must have
//! ```
//!
//! [`ToolPolicy`] is the parsed file; [`ToolPolicy::resolve`] checks it against the node's
//! `safe_paths` and yields the [`ResolvedPolicy`] the runtime enforces. Parse errors name the line
//! and the key; a grant the node does not allow is refused with the grant named.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::outcome::{ErrorKind, SandboxError};

/// Default memory limit: 64 MiB.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// Default fuel budget (about a second of busy CPU).
pub const DEFAULT_FUEL: u64 = 1_000_000_000;
/// Default wall-time limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default output limit (per stream and for the returned value): 1 MiB.
pub const DEFAULT_MAX_OUTPUT: u64 = 1 << 20;
/// Default bytes one call may write into its read-write grants: 64 MiB.
pub const DEFAULT_DISK_WRITE: u64 = 64 << 20;
/// Default number of files, directories and links one call may create: 1,000.
pub const DEFAULT_FILES_CREATED: u64 = 1000;
/// Most bytes a policy may let one call write: 64 GiB.
pub const MAX_DISK_WRITE: u64 = 64 << 30;
/// Most entries a policy may let one call create.
pub const MAX_FILES_CREATED: u64 = 1_000_000;
/// Largest memory a policy may ask for: the whole 32-bit address space.
pub const MAX_MEMORY: u64 = 4 << 30;
/// Longest wall time a policy may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest output limit a policy may ask for.
pub const MAX_OUTPUT: u64 = 256 << 20;
/// Most table elements a tool may have (a table-growth bomb stops here). Large programs have one
/// element per function whose address is taken: tens of thousands are normal.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// How a granted directory may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsAccess {
    /// Read only: no writes, truncation, creation, removal or renames.
    #[default]
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

impl FsAccess {
    /// Parses `ro` or `rw`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ro" => Some(FsAccess::ReadOnly),
            "rw" => Some(FsAccess::ReadWrite),
            _ => None,
        }
    }
}

impl fmt::Display for FsAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsAccess::ReadOnly => "ro",
            FsAccess::ReadWrite => "rw",
        })
    }
}

impl<'de> Deserialize<'de> for FsAccess {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        FsAccess::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("access must be \"ro\" or \"rw\", not {text:?}"))
        })
    }
}

/// A CPU budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuel {
    /// At most this many units (roughly one per WebAssembly instruction).
    Limited(u64),
    /// No fuel limit; the wall-time limit still applies.
    Unlimited,
}

impl Fuel {
    /// Parses a count or `unlimited`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "unlimited" {
            return Ok(Fuel::Unlimited);
        }
        match text.replace('_', "").parse::<u64>() {
            Ok(0) => Err("fuel must be above 0 (or \"unlimited\")".into()),
            Ok(n) => Ok(Fuel::Limited(n)),
            Err(_) => Err(format!(
                "fuel must be a positive count or \"unlimited\", not {text:?}"
            )),
        }
    }
}

/// A TOML value that may be written as a number or as text (`64MiB`, `unlimited`).
#[derive(Deserialize)]
#[serde(untagged)]
enum CountOrText {
    Count(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Fuel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match CountOrText::deserialize(deserializer)? {
            CountOrText::Count(n) if n > 0 => Ok(Fuel::Limited(n.unsigned_abs())),
            CountOrText::Count(n) => Err(serde::de::Error::custom(format!(
                "fuel must be above 0 (or \"unlimited\"), not {n}"
            ))),
            CountOrText::Text(text) => Fuel::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a byte size: a plain count or a number with `B`, `KiB`, `MiB`, `GiB` (or `KB`, `MB`,
/// `GB`, decimal).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("invalid size {text:?} (use a count of bytes or e.g. \"64MiB\")"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {text:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[derive(Debug, Clone, Copy)]
struct Bytes(u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match CountOrText::deserialize(deserializer)? {
            CountOrText::Count(n) if n >= 0 => Ok(Bytes(n.unsigned_abs())),
            CountOrText::Count(n) => Err(serde::de::Error::custom(format!(
                "size must not be negative, not {n}"
            ))),
            CountOrText::Text(text) => parse_bytes(&text)
                .map(Bytes)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Wall(Duration);

impl<'de> Deserialize<'de> for Wall {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map(Wall).map_err(|err| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {err} (use e.g. \"5s\" or \"250ms\")"
            ))
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    fs: Vec<FsGrantFile>,
    #[serde(default)]
    env: EnvFile,
    #[serde(default)]
    network: NetworkFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    placement: PlacementFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementFile {
    gpus: Option<f64>,
    gpu_memory: Option<Bytes>,
    compute_capability: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    capabilities: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FsGrantFile {
    host: toml::Spanned<PathBuf>,
    guest: Option<String>,
    #[serde(default)]
    access: FsAccess,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvFile {
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    #[serde(default)]
    allow_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    memory: Option<Bytes>,
    fuel: Option<Fuel>,
    timeout: Option<Wall>,
    max_output: Option<Bytes>,
    disk_write: Option<Bytes>,
    files_created: Option<u64>,
}

/// A directory grant as written in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsGrant {
    /// Directory on the node.
    pub host: PathBuf,
    /// Where the tool sees it (absolute, normalised).
    pub guest: String,
    /// Read-only or read-write.
    pub access: FsAccess,
    /// Line of the grant in the policy file, when it came from one.
    pub line: Option<usize>,
}

impl FsGrant {
    /// Parses the CLI form `HOST_PATH[:GUEST_PATH][:ro|:rw]` (read-only when the mode is left out).
    pub fn parse_cli(spec: &str) -> Result<Self, SandboxError> {
        let mut parts: Vec<&str> = spec.split(':').collect();
        let mut access = FsAccess::ReadOnly;
        if parts.len() > 1
            && let Some(last) = parts.last().and_then(|p| FsAccess::parse(p))
        {
            access = last;
            parts.pop();
        }
        let (host, guest) = match parts.as_slice() {
            [host] => (*host, *host),
            [host, guest] => (*host, *guest),
            _ => {
                return Err(policy_error(format!(
                    "--allow-fs {spec:?}: expected HOST_PATH[:GUEST_PATH][:ro|:rw]"
                )));
            }
        };
        if host.is_empty() || guest.is_empty() {
            return Err(policy_error(format!(
                "--allow-fs {spec:?}: a path is empty"
            )));
        }
        Ok(FsGrant {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            access,
            line: None,
        })
    }
}

/// Resource limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of linear memory, all memories together.
    pub memory: u64,
    /// CPU budget.
    pub fuel: Fuel,
    /// Wall time.
    pub timeout: Duration,
    /// Bytes, for the returned value and for each of stdout and stderr.
    pub max_output: u64,
    /// Bytes one call may write into its read-write grants (every write counts, also over old
    /// data; growing a file by `set-size` counts the growth).
    pub disk_write: u64,
    /// Files, directories and links one call may create in its read-write grants.
    pub files_created: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: DEFAULT_MEMORY,
            fuel: Fuel::Limited(DEFAULT_FUEL),
            timeout: DEFAULT_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
            disk_write: DEFAULT_DISK_WRITE,
            files_created: DEFAULT_FILES_CREATED,
        }
    }
}

/// A tool's policy as written: grants and limits, not yet checked against a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolPolicy {
    /// Directory grants.
    pub fs: Vec<FsGrant>,
    /// Environment variables copied from the node's environment.
    pub env: Vec<String>,
    /// Network hosts (`host[:port]`) the tool may connect to.
    pub allow_hosts: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// Where the hub places the tool's tasks (`[placement]`); the sandbox does not read it.
    pub placement: Placement,
}

/// Most GPUs a tool may ask for.
const MAX_PLACEMENT_GPUS: f64 = 1024.0;

/// A tool's declared requirements (`[placement]`): what a node needs to run its tasks. The hub
/// adds them to every task of the tool; how a GPU share is split is the scheduler's rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// GPUs × 1000 (0.5 GPU is 500).
    pub gpu_milli: u32,
    /// Free memory per assigned GPU, MiB.
    pub gpu_memory_mb: u64,
    /// Lowest compute capability, e.g. "8.0" (empty: any).
    pub compute_capability: String,
    /// Labels the node must have.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Capabilities the node must have.
    pub capabilities: Vec<String>,
}

impl Placement {
    /// GPUs as a count (0.5, 1, 2).
    pub fn gpus(&self) -> f64 {
        f64::from(self.gpu_milli) / 1000.0
    }
}

fn policy_error(message: impl Into<String>) -> SandboxError {
    SandboxError::new(ErrorKind::PolicyInvalid, message)
}

/// Line (1-based) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `section.key` for the line holding byte `offset`, read from the text around it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let section = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (section, key) {
        (Some(section), Some(key)) => Some(format!("{section}.{key}")),
        (None, Some(key)) => Some(key.to_owned()),
        (Some(section), None) => Some(section),
        (None, None) => None,
    }
}

fn placement_from(file: PlacementFile) -> Result<Placement, String> {
    let gpus = file.gpus.unwrap_or(0.0);
    if !gpus.is_finite() || !(0.0..=MAX_PLACEMENT_GPUS).contains(&gpus) {
        return Err(format!(
            "gpus: {gpus} is not a GPU count from 0 to {MAX_PLACEMENT_GPUS}"
        ));
    }
    // Exact to a thousandth of a GPU; the bound above keeps it in range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let gpu_milli = (gpus * 1000.0).round() as u32;
    Ok(Placement {
        gpu_milli,
        gpu_memory_mb: file.gpu_memory.map_or(0, |Bytes(b)| b.div_ceil(1 << 20)),
        compute_capability: file.compute_capability.unwrap_or_default(),
        labels: file.labels,
        capabilities: file.capabilities,
    })
}

impl ToolPolicy {
    /// Parses policy TOML. `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, SandboxError> {
        let file: PolicyFile = toml::from_str(text).map_err(|err| {
            let message = err.message().trim().to_owned();
            match err.span() {
                Some(span) => {
                    let line = line_of(text, span.start);
                    match key_at(text, span.start) {
                        Some(key) => {
                            policy_error(format!("{origin}: line {line}: `{key}`: {message}"))
                        }
                        None => policy_error(format!("{origin}: line {line}: {message}")),
                    }
                }
                None => policy_error(format!("{origin}: {message}")),
            }
        })?;
        let mut policy = ToolPolicy::default();
        for grant in file.fs {
            let line = line_of(text, grant.host.span().start);
            let host = grant.host.into_inner();
            let guest = grant
                .guest
                .unwrap_or_else(|| host.to_string_lossy().into_owned());
            policy.fs.push(FsGrant {
                host,
                guest,
                access: grant.access,
                line: Some(line),
            });
        }
        policy.env = file.env.allow;
        policy.allow_hosts = file.network.allow_hosts;
        let limits = file.limits;
        if let Some(Bytes(memory)) = limits.memory {
            policy.limits.memory = memory;
        }
        if let Some(fuel) = limits.fuel {
            policy.limits.fuel = fuel;
        }
        if let Some(Wall(timeout)) = limits.timeout {
            policy.limits.timeout = timeout;
        }
        if let Some(Bytes(max_output)) = limits.max_output {
            policy.limits.max_output = max_output;
        }
        if let Some(Bytes(disk_write)) = limits.disk_write {
            policy.limits.disk_write = disk_write;
        }
        if let Some(files_created) = limits.files_created {
            policy.limits.files_created = files_created;
        }
        policy.placement = placement_from(file.placement)
            .map_err(|message| policy_error(format!("{origin}: [placement] {message}")))?;
        policy
            .validate()
            .map_err(|err| SandboxError::new(err.kind, format!("{origin}: {}", err.message)))?;
        Ok(policy)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Self, SandboxError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| policy_error(format!("cannot read policy {}: {err}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks what can be checked without a node: limits in range, names well formed.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let limits = &self.limits;
        if limits.memory == 0 || limits.memory > MAX_MEMORY {
            return Err(policy_error(format!(
                "limits.memory must be between 1 byte and 4GiB, not {}",
                limits.memory
            )));
        }
        if limits.timeout.is_zero() || limits.timeout > MAX_TIMEOUT {
            return Err(policy_error(format!(
                "limits.timeout must be between 1ms and 1h, not {}",
                humantime::format_duration(limits.timeout)
            )));
        }
        if limits.max_output == 0 || limits.max_output > MAX_OUTPUT {
            return Err(policy_error(format!(
                "limits.max_output must be between 1 byte and 256MiB, not {}",
                limits.max_output
            )));
        }
        if limits.disk_write > MAX_DISK_WRITE {
            return Err(policy_error(format!(
                "limits.disk_write must be at most 64GiB, not {}",
                limits.disk_write
            )));
        }
        if limits.files_created > MAX_FILES_CREATED {
            return Err(policy_error(format!(
                "limits.files_created must be at most 1000000, not {}",
                limits.files_created
            )));
        }
        for key in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(policy_error(format!(
                    "env.allow: {key:?} is not a variable name"
                )));
            }
        }
        for host in &self.allow_hosts {
            if host.trim().is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
                return Err(policy_error(format!(
                    "network.allow_hosts: {host:?} is not HOST or HOST:PORT"
                )));
            }
        }
        let mut guests = BTreeSet::new();
        for grant in &self.fs {
            let at = grant
                .line
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            if !grant.host.is_absolute() {
                // Relative paths would resolve against whatever directory the node runs in.
                return Err(policy_error(format!(
                    "fs grant{at}: host path {} is not absolute",
                    grant.host.display()
                )));
            }
            let guest = normalise_guest_path(&grant.guest).map_err(|why| {
                policy_error(format!("fs grant{at}: guest path {:?} {why}", grant.guest))
            })?;
            if !guests.insert(guest) {
                return Err(policy_error(format!(
                    "fs grant{at}: guest path {:?} is granted twice",
                    grant.guest
                )));
            }
        }
        Ok(())
    }

    /// Checks the policy against the node's own allowlists (`[node] env_allow` and
    /// `allow_hosts`): every variable it asks for and every host it grants must be on them, as
    /// every directory must lie inside `safe_paths`. The refusal names what is missing.
    pub fn check_node_allowlists(
        &self,
        env_allow: &[String],
        allow_hosts: &[String],
    ) -> Result<(), SandboxError> {
        if let Some(key) = self.env.iter().find(|key| !env_allow.contains(key)) {
            return Err(policy_error(format!(
                "env.allow: {key:?} is not in this node's [node] env_allow [{}]",
                env_allow.join(", ")
            )));
        }
        if let Some(host) = self
            .allow_hosts
            .iter()
            .find(|host| !allow_hosts.iter().any(|allowed| host_covers(allowed, host)))
        {
            return Err(policy_error(if allow_hosts.is_empty() {
                format!(
                    "network.allow_hosts: {host:?}: this node grants tools no network ([node] allow_hosts is empty)"
                )
            } else {
                format!(
                    "network.allow_hosts: {host:?} is not in this node's [node] allow_hosts [{}]",
                    allow_hosts.join(", ")
                )
            }));
        }
        Ok(())
    }

    /// Checks the policy against the node: every directory grant must resolve (symlinks
    /// followed) to a directory inside one of `safe_paths`, and every host must resolve.
    pub fn resolve(&self, safe_paths: &[PathBuf]) -> Result<ResolvedPolicy, SandboxError> {
        self.resolve_within(safe_paths, &[])
    }

    /// [`resolve`](Self::resolve), also refusing a grant that overlaps one of `protected` (the
    /// directories that hold the node's own state: its keys, tool store and compile cache),
    /// whether the grant lies inside one of them or holds one.
    pub fn resolve_within(
        &self,
        safe_paths: &[PathBuf],
        protected: &[PathBuf],
    ) -> Result<ResolvedPolicy, SandboxError> {
        self.validate()?;
        let protected: Vec<PathBuf> = protected
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let safe: Vec<PathBuf> = safe_paths
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        let mut fs = Vec::with_capacity(self.fs.len());
        for grant in &self.fs {
            let at = grant
                .line
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            let name = grant.host.display();
            let real = std::fs::canonicalize(&grant.host).map_err(|err| {
                policy_error(format!(
                    "fs grant {name}{at}: cannot resolve it on this node: {err}"
                ))
            })?;
            if !real.is_dir() {
                return Err(policy_error(format!(
                    "fs grant {name}{at}: {} is not a directory",
                    real.display()
                )));
            }
            if !safe.iter().any(|s| real.starts_with(s)) {
                let allowed: Vec<String> =
                    safe_paths.iter().map(|p| p.display().to_string()).collect();
                return Err(policy_error(format!(
                    "fs grant {name}{at}: {} is outside the node's safe_paths [{}]",
                    real.display(),
                    allowed.join(", ")
                )));
            }
            if let Some(state) = protected.iter().find(|p| overlaps(&real, p)) {
                return Err(policy_error(format!(
                    "fs grant {name}{at}: {} overlaps {}, which holds the node's own state",
                    real.display(),
                    state.display()
                )));
            }
            let guest = normalise_guest_path(&grant.guest)
                .map_err(|why| policy_error(format!("fs grant {name}{at}: guest path {why}")))?;
            fs.push(ResolvedGrant {
                host: real,
                guest,
                access: grant.access,
            });
        }
        let env = self
            .env
            .iter()
            .filter_map(|key| std::env::var(key).ok().map(|value| (key.clone(), value)))
            .collect();
        let mut network = Vec::new();
        for host in &self.allow_hosts {
            network.extend(resolve_host(host)?);
        }
        // Name lookups go to the node's resolver, which would carry any name the tool makes
        // up (a channel out through DNS): only the names the policy grants are looked up.
        let mut lookup_names: Vec<String> = self
            .allow_hosts
            .iter()
            .map(|host| host_and_port(host).0)
            .filter(|host| host.parse::<IpAddr>().is_err())
            .map(normalise_name)
            .collect();
        lookup_names.sort();
        lookup_names.dedup();
        Ok(ResolvedPolicy {
            fs,
            env,
            network,
            lookup_names,
            limits: self.limits,
        })
    }
}

/// Whether one of two paths lies inside the other (by whole components: `/data2` is not inside
/// `/data`), or they are the same.
pub fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Checks a node's `safe_paths` against the directories that hold its own state: none may lie
/// inside another or hold one (symlinks followed where the paths exist). Returns the reason.
pub fn check_safe_paths(safe_paths: &[PathBuf], protected: &[PathBuf]) -> Result<(), String> {
    let real = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    for safe in safe_paths {
        let safe_real = real(safe);
        for state in protected {
            if overlaps(&safe_real, &real(state)) {
                return Err(format!(
                    "safe path {} overlaps {}, which holds the node's own state (keys, tool store, compile cache): tools granted it could read or replace them; keep the data and cert dirs outside safe_paths",
                    safe.display(),
                    state.display()
                ));
            }
        }
    }
    Ok(())
}

/// Checks a guest path is absolute and plain, and returns it normalised (no trailing slash).
fn normalise_guest_path(guest: &str) -> Result<String, String> {
    if !guest.starts_with('/') {
        return Err("must be absolute".into());
    }
    let mut parts = Vec::new();
    for component in Path::new(guest).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err("must not contain `.` or `..`".into());
            }
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// `HOST` or `HOST:PORT` (IPv6 in brackets when a port follows) split into host and port.
/// A host name as lookups compare it: lower case, without a trailing dot.
pub fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl ResolvedPolicy {
    /// Whether the tool may look `name` up.
    pub fn may_look_up(&self, name: &str) -> bool {
        let name = normalise_name(name);
        self.lookup_names.contains(&name)
    }
}

fn host_and_port(spec: &str) -> (&str, Option<u16>) {
    let with_port = spec
        .rsplit_once(':')
        .and_then(|(host, port)| port.parse::<u16>().ok().map(|port| (host, port)))
        .filter(|(host, _)| !host.is_empty() && !host.ends_with(':'));
    match with_port {
        Some((host, port)) => (
            host.trim_start_matches('[').trim_end_matches(']'),
            Some(port),
        ),
        None => (spec.trim_start_matches('[').trim_end_matches(']'), None),
    }
}

/// Whether the node's allowlist entry `allowed` covers the policy's host `wanted`: the same host
/// (names compared without case), and the same port unless the entry names none.
fn host_covers(allowed: &str, wanted: &str) -> bool {
    let (allowed_host, allowed_port) = host_and_port(allowed.trim());
    let (wanted_host, wanted_port) = host_and_port(wanted.trim());
    allowed_host.eq_ignore_ascii_case(wanted_host)
        && allowed_port.is_none_or(|port| wanted_port == Some(port))
}

fn resolve_host(spec: &str) -> Result<Vec<NetworkGrant>, SandboxError> {
    let (host, port) = host_and_port(spec);
    let addrs: Vec<SocketAddr> = (host, port.unwrap_or(0))
        .to_socket_addrs()
        .map_err(|err| {
            policy_error(format!(
                "network.allow_hosts: cannot resolve {spec:?}: {err}"
            ))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(policy_error(format!(
            "network.allow_hosts: {spec:?} resolves to no address"
        )));
    }
    Ok(addrs
        .into_iter()
        .map(|addr| NetworkGrant {
            ip: addr.ip(),
            port,
        })
        .collect())
}

/// A directory grant checked against the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedGrant {
    /// Canonical directory on the node, inside its safe_paths.
    pub host: PathBuf,
    /// Normalised guest path.
    pub guest: String,
    /// Read-only or read-write.
    pub access: FsAccess,
}

/// An address the tool may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkGrant {
    /// Address.
    pub ip: IpAddr,
    /// Port, or any port when `None`.
    pub port: Option<u16>,
}

impl NetworkGrant {
    /// Whether `addr` is covered by this grant.
    pub fn allows(&self, addr: &SocketAddr) -> bool {
        self.ip == addr.ip() && self.port.is_none_or(|port| port == addr.port())
    }
}

/// A policy checked against a node: what the runtime enforces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedPolicy {
    /// Directory grants.
    pub fs: Vec<ResolvedGrant>,
    /// Environment the tool sees (only allowlisted keys the node has).
    pub env: Vec<(String, String)>,
    /// Addresses the tool may connect to; empty means no sockets at all.
    pub network: Vec<NetworkGrant>,
    /// The names the tool may look up (the hosts granted by name, lower case, no trailing dot);
    /// every other lookup is refused before it reaches the node's resolver.
    pub lookup_names: Vec<String>,
    /// Limits.
    pub limits: Limits,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_a_full_policy() {
        let text = r#"
[[fs]]
host = "/srv/data"
guest = "/data"
access = "rw"

[[fs]]
host = "/srv/ref"

[env]
allow = ["LANG"]

[network]
allow_hosts = ["127.0.0.1:8080"]

[limits]
memory = "32MiB"
fuel = "unlimited"
timeout = "250ms"
max_output = 4096
"#;
        let policy = ToolPolicy::from_toml(text, "policy.toml").unwrap();
        assert_eq!(policy.fs.len(), 2);
        assert_eq!(policy.fs[0].guest, "/data");
        assert_eq!(policy.fs[0].access, FsAccess::ReadWrite);
        assert_eq!(policy.fs[0].line, Some(3));
        assert_eq!(policy.fs[1].guest, "/srv/ref");
        assert_eq!(policy.fs[1].access, FsAccess::ReadOnly);
        assert_eq!(policy.env, vec!["LANG".to_owned()]);
        assert_eq!(policy.allow_hosts, vec!["127.0.0.1:8080".to_owned()]);
        assert_eq!(policy.limits.memory, 32 << 20);
        assert_eq!(policy.limits.fuel, Fuel::Unlimited);
        assert_eq!(policy.limits.timeout, Duration::from_millis(250));
        assert_eq!(policy.limits.max_output, 4096);
    }

    #[test]
    fn empty_policy_denies_everything_with_default_limits() {
        let policy = ToolPolicy::from_toml("", "p").unwrap();
        assert!(policy.fs.is_empty() && policy.env.is_empty() && policy.allow_hosts.is_empty());
        assert_eq!(policy.limits, Limits::default());
    }

    #[test]
    fn placement_declares_where_the_tool_runs() {
        let policy = ToolPolicy::from_toml(
            "[placement]\ngpus = 0.5\ngpu_memory = \"16GiB\"\ncompute_capability = \"8.0\"\nlabels = { zone = \"lab\" }\ncapabilities = [\"cuda\"]\n",
            "p",
        )
        .unwrap();
        assert_eq!(policy.placement.gpu_milli, 500);
        assert_eq!(policy.placement.gpus(), 0.5);
        assert_eq!(policy.placement.gpu_memory_mb, 16 * 1024);
        assert_eq!(policy.placement.compute_capability, "8.0");
        assert_eq!(policy.placement.labels["zone"], "lab");
        assert_eq!(policy.placement.capabilities, ["cuda"]);
        assert_eq!(
            ToolPolicy::from_toml("", "p").unwrap().placement,
            Placement::default()
        );
        for (text, needle) in [
            ("[placement]\ngpus = -1\n", "[placement] gpus: -1"),
            ("[placement]\ngpus = 5000\n", "from 0 to 1024"),
            ("[placement]\ngpu = 1\n", "unknown field `gpu`"),
        ] {
            let err = ToolPolicy::from_toml(text, "p").unwrap_err();
            assert!(err.message.contains(needle), "{text:?}: {}", err.message);
        }
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let cases = [
            (
                "[limits]\nmemory = \"64XB\"\n",
                "line 2",
                "limits.memory",
                "invalid size unit",
            ),
            (
                "[limits]\n\nfuel = -3\n",
                "line 3",
                "limits.fuel",
                "above 0",
            ),
            (
                "[limits]\ntimeout = \"soon\"\n",
                "line 2",
                "limits.timeout",
                "invalid duration",
            ),
            (
                "[limits]\nstack = 3\n",
                "line 2",
                "limits.stack",
                "unknown field",
            ),
            (
                "[[fs]]\nhost = \"/x\"\naccess = \"write\"\n",
                "line 3",
                "fs.access",
                "\"ro\" or \"rw\"",
            ),
            (
                "[network]\nallow_hosts = \"x\"\n",
                "line 2",
                "network.allow_hosts",
                "invalid type",
            ),
            ("[limits\n", "line 1", "", "unclosed table"),
        ];
        for (text, line, key, cause) in cases {
            let err = ToolPolicy::from_toml(text, "policy.toml").unwrap_err();
            assert_eq!(err.kind, ErrorKind::PolicyInvalid, "{text}");
            assert!(err.message.contains(line), "{text}: {}", err.message);
            assert!(err.message.contains(key), "{text}: {}", err.message);
            assert!(err.message.contains(cause), "{text}: {}", err.message);
            assert!(err.message.starts_with("policy.toml"), "{}", err.message);
        }
    }

    #[test]
    fn limits_and_names_are_range_checked() {
        for (text, cause) in [
            ("[limits]\nmemory = \"8GiB\"", "limits.memory"),
            ("[limits]\nmemory = 0", "limits.memory"),
            ("[limits]\ntimeout = \"2h\"", "limits.timeout"),
            ("[limits]\nmax_output = 0", "limits.max_output"),
            ("[limits]\ndisk_write = \"65GiB\"", "limits.disk_write"),
            ("[limits]\nfiles_created = 1000001", "limits.files_created"),
            ("[env]\nallow = [\"A=B\"]", "env.allow"),
            (
                "[network]\nallow_hosts = [\"http://x\"]",
                "network.allow_hosts",
            ),
            ("[[fs]]\nhost = \"/a\"\nguest = \"rel\"", "must be absolute"),
            ("[[fs]]\nhost = \"/a\"\nguest = \"/x/../y\"", "`..`"),
            (
                "[[fs]]\nhost = \"/a\"\nguest = \"/x\"\n[[fs]]\nhost = \"/b\"\nguest = \"/x/\"",
                "twice",
            ),
        ] {
            let err = ToolPolicy::from_toml(text, "p").unwrap_err();
            assert_eq!(err.kind, ErrorKind::PolicyInvalid);
            assert!(err.message.contains(cause), "{text}: {}", err.message);
        }
    }

    #[test]
    fn grants_may_not_overlap_the_nodes_own_state() {
        let root = tempfile::tempdir().unwrap();
        let safe = root.path().join("safe");
        let state = safe.join("state");
        let beside = safe.join("beside");
        std::fs::create_dir_all(state.join("tools")).unwrap();
        std::fs::create_dir_all(&beside).unwrap();
        std::os::unix::fs::symlink(&state, beside.join("door")).unwrap();
        let grant = |host: &Path| ToolPolicy {
            fs: vec![FsGrant {
                host: host.to_path_buf(),
                guest: "/data".into(),
                access: FsAccess::ReadWrite,
                line: None,
            }],
            ..ToolPolicy::default()
        };
        let safe_paths = vec![safe.clone()];
        let protected = vec![state.clone()];
        for host in [
            safe.clone(),
            state.clone(),
            state.join("tools"),
            beside.join("door"),
        ] {
            let err = grant(&host)
                .resolve_within(&safe_paths, &protected)
                .unwrap_err();
            assert_eq!(err.kind, ErrorKind::PolicyInvalid);
            assert!(
                err.message.contains("which holds the node's own state"),
                "{}: {}",
                host.display(),
                err.message
            );
        }
        grant(&beside)
            .resolve_within(&safe_paths, &protected)
            .unwrap();
        assert!(check_safe_paths(&safe_paths, &protected).is_err());
        assert!(check_safe_paths(std::slice::from_ref(&beside), &protected).is_ok());
        // A safe path that is a link to a parent of the state is seen through.
        std::os::unix::fs::symlink(root.path(), root.path().join("up")).unwrap();
        let why = check_safe_paths(&[root.path().join("up")], &protected).unwrap_err();
        assert!(why.contains("overlaps"), "{why}");
    }

    #[test]
    fn a_policy_asks_no_more_than_the_node_allows() {
        let policy = |env: &[&str], hosts: &[&str]| ToolPolicy {
            env: env.iter().map(|v| v.to_string()).collect(),
            allow_hosts: hosts.iter().map(|v| v.to_string()).collect(),
            ..ToolPolicy::default()
        };
        let env_allow = vec!["LANG".to_string(), "TZ".to_string()];
        let hosts = vec![
            "api.internal".to_string(),
            "10.0.0.5:8080".to_string(),
            "[::1]:9000".to_string(),
        ];
        for ok in [
            policy(&["LANG"], &[]),
            policy(
                &[],
                &[
                    "API.internal:443",
                    "api.internal",
                    "10.0.0.5:8080",
                    "[::1]:9000",
                ],
            ),
        ] {
            ok.check_node_allowlists(&env_allow, &hosts).unwrap();
        }
        for (refused, needle) in [
            (
                policy(&["AWS_SECRET_ACCESS_KEY"], &[]),
                "\"AWS_SECRET_ACCESS_KEY\" is not in this node's [node] env_allow [LANG, TZ]",
            ),
            (
                policy(&[], &["10.0.0.5:22"]),
                "\"10.0.0.5:22\" is not in this node's [node] allow_hosts",
            ),
            (
                policy(&[], &["10.0.0.5"]),
                "\"10.0.0.5\" is not in this node's",
            ),
            (policy(&[], &["api.internal.evil"]), "is not in this node's"),
            (policy(&[], &["::1"]), "is not in this node's"),
        ] {
            let err = refused
                .check_node_allowlists(&env_allow, &hosts)
                .unwrap_err();
            assert_eq!(err.kind, ErrorKind::PolicyInvalid);
            assert!(err.message.contains(needle), "{}", err.message);
        }
        let err = policy(&[], &["10.0.0.5:8080"])
            .check_node_allowlists(&env_allow, &[])
            .unwrap_err();
        assert!(
            err.message.contains("grants tools no network"),
            "{}",
            err.message
        );
    }

    #[test]
    fn names_are_looked_up_only_for_a_host_granted_by_name() {
        let resolved = |hosts: &[&str]| {
            ToolPolicy {
                allow_hosts: hosts.iter().map(|v| v.to_string()).collect(),
                ..ToolPolicy::default()
            }
            .resolve(&[])
            .unwrap()
        };
        assert!(resolved(&[]).lookup_names.is_empty());
        assert!(
            resolved(&["127.0.0.1:80", "[::1]:80"])
                .lookup_names
                .is_empty()
        );
        let by_name = resolved(&["LocalHost:80", "localhost"]);
        assert_eq!(by_name.lookup_names, ["localhost"]);
        assert!(by_name.may_look_up("localhost"));
        assert!(by_name.may_look_up("LOCALHOST."));
        assert!(!by_name.may_look_up("secret.exfil.example"));
        assert!(!by_name.may_look_up("localhost.evil"));
    }

    #[test]
    fn relative_grant_paths_are_refused() {
        let err =
            ToolPolicy::from_toml("[[fs]]\nhost = \"data\"\nguest = \"/data\"\n", "p").unwrap_err();
        assert!(
            err.message.contains("host path data is not absolute"),
            "{}",
            err.message
        );
    }

    #[test]
    fn resolve_intersects_grants_with_safe_paths() {
        let root = tempfile::tempdir().unwrap();
        let safe = root.path().join("safe");
        let inside = safe.join("inside");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, safe.join("sneaky")).unwrap();
        std::fs::write(safe.join("file"), b"x").unwrap();

        let grant = |host: &Path| ToolPolicy {
            fs: vec![FsGrant {
                host: host.to_path_buf(),
                guest: "/data".into(),
                access: FsAccess::ReadOnly,
                line: Some(4),
            }],
            ..ToolPolicy::default()
        };
        let safe_paths = vec![safe.clone()];
        let resolved = grant(&inside).resolve(&safe_paths).unwrap();
        assert_eq!(resolved.fs[0].host, std::fs::canonicalize(&inside).unwrap());

        for (host, cause) in [
            (outside.clone(), "outside the node's safe_paths"),
            (safe.join("sneaky"), "outside the node's safe_paths"),
            (
                safe.join("inside/../../outside"),
                "outside the node's safe_paths",
            ),
            (safe.join("file"), "not a directory"),
            (safe.join("missing"), "cannot resolve"),
        ] {
            let err = grant(&host).resolve(&safe_paths).unwrap_err();
            assert_eq!(err.kind, ErrorKind::PolicyInvalid);
            assert!(err.message.contains(cause), "{}", err.message);
            assert!(err.message.contains("line 4"), "{}", err.message);
        }
        let err = grant(&inside).resolve(&[]).unwrap_err();
        assert!(
            err.message.contains("outside the node's safe_paths []"),
            "{}",
            err.message
        );
    }

    #[test]
    fn cli_grants_parse() {
        let g = FsGrant::parse_cli("/srv/a").unwrap();
        assert_eq!((g.guest.as_str(), g.access), ("/srv/a", FsAccess::ReadOnly));
        let g = FsGrant::parse_cli("/srv/a:/a:rw").unwrap();
        assert_eq!(
            (g.host.to_str().unwrap(), g.guest.as_str(), g.access),
            ("/srv/a", "/a", FsAccess::ReadWrite)
        );
        let g = FsGrant::parse_cli("/srv/a:ro").unwrap();
        assert_eq!((g.guest.as_str(), g.access), ("/srv/a", FsAccess::ReadOnly));
        assert!(FsGrant::parse_cli("/a:/b:/c").is_err());
        assert!(FsGrant::parse_cli(":/b").is_err());
    }

    #[test]
    fn network_grants_match_ip_and_port() {
        let grants = resolve_host("127.0.0.1:8080").unwrap();
        assert!(grants[0].allows(&"127.0.0.1:8080".parse().unwrap()));
        assert!(!grants[0].allows(&"127.0.0.1:8081".parse().unwrap()));
        let any_port = resolve_host("127.0.0.1").unwrap();
        assert!(any_port[0].allows(&"127.0.0.1:9".parse().unwrap()));
        assert!(!any_port[0].allows(&"127.0.0.2:9".parse().unwrap()));
        let v6 = resolve_host("[::1]:53").unwrap();
        assert!(v6[0].allows(&"[::1]:53".parse().unwrap()));
    }

    #[test]
    fn sizes_and_fuel_parse() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1_000").unwrap(), 1000);
        assert_eq!(parse_bytes("2 GB").unwrap(), 2_000_000_000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
        assert_eq!(Fuel::parse("unlimited").unwrap(), Fuel::Unlimited);
        assert_eq!(Fuel::parse("10_000").unwrap(), Fuel::Limited(10_000));
        assert!(Fuel::parse("0").is_err());
    }
}
