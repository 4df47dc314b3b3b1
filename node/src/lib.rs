//! The Outpost node: the process on each machine of the fleet.
//!
//! A node joins a hub once with a bootstrap token ([`join`]), keeps the certificate and JWT it got
//! ([`identity`]), and from then on holds a QUIC session to the hub ([`session`]) that carries
//! heartbeats (load from [`system`], GPUs from [`gpu`]) and answers the hub's commands.
//!
//! [`Node::start`] runs all of it; the `outpost-node` binary and `outpost node` are thin
//! wrappers around it. What hub and node share lives in `outpost-config`, `outpost-trust` and
//! `outpost-clock`; tools run in `outpost-sandbox`.

pub mod actor_relay;
pub mod agents;
pub mod direct;
pub mod gpu;
pub mod join;
pub mod native;
pub mod output;
pub mod session;
pub mod system;
pub mod tasks;
pub mod worktree;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::gpu::GpuProbe;
use crate::session::{SessionContext, SessionStats};
use outpost_config::Config;
use outpost_trust::auth::BootstrapToken;
use outpost_trust::identity::{self, IdentityStore, JoinedIdentity};
use outpost_trust::{grpc_channel, tls};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Configuration is missing something a node needs.
    #[error("node configuration: {0}")]
    Config(String),
    /// Identity files could not be read or written.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// Joining the hub failed.
    #[error(transparent)]
    Join(#[from] join::JoinError),
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A running node; dropping it does not stop it, [`NodeHandle::shutdown`] does.
#[derive(Debug)]
pub struct NodeHandle {
    /// The node id.
    pub node_id: String,
    /// Live session counters.
    pub stats: Arc<SessionStats>,
    /// True when this start performed a join (false when a stored identity was reused).
    pub joined_now: bool,
    /// Where the direct route (`NodeService`) listens, when this node serves it.
    pub direct_route: Option<std::net::SocketAddr>,
    runner: Option<Arc<tasks::TaskRunner>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl NodeHandle {
    /// Stops the session (closing it cleanly) and waits for the task to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    /// Ends the session at once, as a killed node process would end: nothing is closed or
    /// stopped, and native commands it started keep running (what the next start of a node on
    /// the same data dir must clean up). For tests of crash recovery.
    pub fn crash(self) {
        self.task.abort();
    }

    /// Whether the tool with this component digest is compiled and ready on this node (installed
    /// by the hub, or run here before).
    pub fn tool_ready(&self, digest: &str) -> bool {
        self.runner.as_ref().is_some_and(|r| r.is_loaded(digest))
    }

    /// Background tool installs that have ended on this node so far (compiled or failed); `None`
    /// when the node runs no tasks.
    pub fn installs_ended(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.runner.as_ref().map(|r| r.installs_ended())
    }

    /// Waits until the node has a session to the hub, or `timeout` passes.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self
                .stats
                .connected
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// The node process: join, session, probes and task runner.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Joins (if needed) and starts the session, with the GPU probe from `[gpu]`.
    pub async fn start(config: Config) -> Result<NodeHandle, NodeError> {
        let probe: Arc<dyn GpuProbe> = Arc::from(gpu::probe_from_config(&config.gpu));
        Self::start_with_probe(config, probe).await
    }

    /// Joins (if needed) and starts the session with the given GPU probe.
    pub async fn start_with_probe(
        config: Config,
        gpu_probe: Arc<dyn GpuProbe>,
    ) -> Result<NodeHandle, NodeError> {
        let data_dir = config.data_dir();
        outpost_trust::private_files::ensure_private_dir(&data_dir).map_err(|source| {
            identity::IdentityError::Io {
                action: "creating (owner-only)",
                path: data_dir.clone(),
                source,
            }
        })?;
        // The node's own state stays out of every tool's reach (checked before joining, with
        // symlinks followed now that the data dir exists).
        outpost_sandbox::policy::check_safe_paths(&config.node.safe_paths, &state_dirs(&config))
            .map_err(|why| NodeError::Config(format!("[node] safe_paths: {why}")))?;
        let node_id = node_id(&config)?;
        let store = IdentityStore::new(&data_dir);
        let (identity, joined_now) = match store.load()? {
            Some(identity) if identity.node_id == node_id => (identity, false),
            Some(identity) => {
                return Err(NodeError::Config(format!(
                    "the data dir {} belongs to node {:?}, not {node_id:?}: use another data dir",
                    data_dir.display(),
                    identity.node_id
                )));
            }
            None => {
                let identity = join_hub(&config, &node_id).await?;
                store.save(&identity)?;
                (identity, true)
            }
        };
        tracing::info!(node_id = %node_id, joined_now, "node identity ready");
        let native = probe_native(&config).await;
        tracing::info!(
            native = native.available,
            landlock = native.landlock.enforcement.as_str(),
            landlock_abi = native.landlock.abi,
            "native programs"
        );
        let ctx = session_context(&config, &identity, gpu_probe, native)?;
        if let Some(native) = ctx.runner.as_ref().and_then(|r| r.native()) {
            let stopped = native.stop_orphans().await;
            if stopped > 0 {
                tracing::warn!(
                    stopped,
                    "commands left by an earlier node process were stopped"
                );
            }
        }
        let stats = ctx.stats.clone();
        let runner = ctx.runner.clone();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(ctx);
        // The direct route listens before the session starts, so the first capabilities name it.
        let direct_route = match &config.node.grpc_target {
            Some(_) => {
                let listener = direct::bind(&config.internal_grpc.listen).await?;
                Some(direct::serve(ctx.clone(), listener, shutdown_rx.clone())?.0)
            }
            None => None,
        };
        start_actor_relay(&config, &identity, shutdown_rx.clone());
        let task = tokio::spawn(session::run(ctx, shutdown_rx));
        Ok(NodeHandle {
            node_id,
            stats,
            joined_now,
            direct_route,
            runner,
            shutdown,
            task,
        })
    }
}

/// The hub's actor service as this node reaches it (its client certificate), for the relay and
/// for WASM actor agents; `None` (logged) when the hub URL is unusable.
fn actor_hub(identity: &JoinedIdentity) -> Option<actor_relay::ActorRelay> {
    let client = grpc_channel::ClientIdentity {
        cert_pem: identity.certificate_pem.clone(),
        key_pem: identity.key_pem.clone(),
    };
    match grpc_channel::endpoint(&identity.hub_url, &identity.ca_pem, Some(&client), None) {
        Ok(endpoint) => Some(actor_relay::ActorRelay::new(endpoint)),
        Err(e) => {
            tracing::warn!(error = %e, "no way to the hub's actor service; agents get no mailbox");
            None
        }
    }
}

/// Serves the actor relay to this node's agents (logged and left out when it cannot start:
/// agents then reach no mailbox, everything else works).
fn start_actor_relay(config: &Config, identity: &JoinedIdentity, shutdown: watch::Receiver<bool>) {
    let path = actor_relay::socket_path(&config.data_dir());
    // sun_path holds 108 bytes with the terminating NUL.
    if path.as_os_str().len() > 107 {
        tracing::warn!(path = %path.display(), "the actor relay's socket path is too long for a Unix socket; agents get no relay");
        return;
    }
    let Some(relay) = actor_hub(identity) else {
        return;
    };
    match actor_relay::serve(relay, &path, shutdown) {
        Ok(_) => tracing::info!(path = %path.display(), "actor relay listening"),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the actor relay could not listen; agents get no relay")
        }
    }
}

/// The directories that hold the node's own state, which no tool grant may overlap.
fn state_dirs(config: &Config) -> Vec<std::path::PathBuf> {
    vec![config.data_dir(), config.cert_dir()]
}

/// The node id from `[server] node_id`, else the host name.
pub fn node_id(config: &Config) -> Result<String, NodeError> {
    let id = match &config.server.node_id {
        Some(id) => id.clone(),
        None => sysinfo::System::host_name().ok_or_else(|| {
            NodeError::Config("no [server] node_id and no host name to default to".into())
        })?,
    };
    identity::validate_node_id(&id)
        .map_err(|e| NodeError::Config(format!("[server] node_id: {e}")))?;
    Ok(id)
}

fn ca_file(config: &Config) -> PathBuf {
    config
        .node
        .ca_file
        .clone()
        .unwrap_or_else(|| config.cert_dir().join("ca.pem"))
}

async fn join_hub(config: &Config, node_id: &str) -> Result<JoinedIdentity, NodeError> {
    let hub_url = config.node.hub.as_deref().ok_or_else(|| {
        NodeError::Config(
            "not joined yet and no [node] hub URL to join (e.g. https://hub:50051)".into(),
        )
    })?;
    let token_text = config.internal_grpc.bootstrap.token.as_deref().ok_or_else(|| {
        NodeError::Config(
            "not joined yet and no bootstrap token: set [internal_grpc.bootstrap] token or OUTPOST_INTERNAL_GRPC_BOOTSTRAP_TOKEN"
                .into(),
        )
    })?;
    let ca_path = ca_file(config);
    let ca_pem = tls::read_text(&ca_path).map_err(|e| {
        NodeError::Config(format!(
            "the hub CA is needed for the first join ([node] ca_file): {e}"
        ))
    })?;
    let token = BootstrapToken::parse(token_text);
    let name = config
        .node
        .name
        .clone()
        .unwrap_or_else(|| node_id.to_string());
    let grpc_target = config.node.grpc_target.clone().unwrap_or_default();
    let identity = join::join(join::JoinRequest {
        hub_url,
        ca_pem: &ca_pem,
        node_id,
        name: &name,
        token: &token,
        grpc_target: &grpc_target,
    })
    .await?;
    Ok(identity)
}

/// The executable that launches this node's native programs: `[sandbox] launcher`; else the
/// small `outpost-launch` when it lies beside the running binary (or one directory up): every
/// run executes the launcher twice (supervisor, then the confined stage), and the small binary
/// starts in about half the time of a full `outpost`; else the running binary when it is an
/// Outpost binary (`outpost`, `outpost-node`: each contains the launcher). `None` where there
/// is none (a program embedding the node library must name one): a node never runs an unknown
/// executable as its launcher.
pub fn launcher_path(config: &Config) -> Option<PathBuf> {
    if let Some(launcher) = &config.sandbox.launcher {
        return Some(launcher.clone());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let beside = [
        Some(dir.join("outpost-launch")),
        dir.parent().map(|d| d.join("outpost-launch")),
    ]
    .into_iter()
    .flatten()
    .find(|candidate| candidate.is_file());
    if beside.is_some() {
        return beside;
    }
    let name = exe.file_name()?.to_str()?;
    matches!(name, "outpost" | "outpost-node").then_some(exe)
}

/// Asks the launcher what this node can do with native programs.
async fn probe_native(config: &Config) -> system::NativeSupport {
    let Some(launcher) = launcher_path(config) else {
        return system::NativeSupport::default();
    };
    match outpost_runner::launcher::probe(&launcher).await {
        Some(landlock) => system::NativeSupport {
            available: true,
            landlock,
            require_landlock: config.sandbox.require_landlock,
        },
        None => system::NativeSupport {
            require_landlock: config.sandbox.require_landlock,
            ..system::NativeSupport::default()
        },
    }
}

fn session_context(
    config: &Config,
    identity: &JoinedIdentity,
    gpu_probe: Arc<dyn GpuProbe>,
    native: system::NativeSupport,
) -> Result<SessionContext, NodeError> {
    let credentials = session::SessionCredentials::new(identity.clone())?;
    let hub_host = grpc_channel::url_host(&identity.hub_url).ok_or_else(|| {
        NodeError::Config(format!("stored hub URL {:?} has no host", identity.hub_url))
    })?;
    let server_name = if identity.hub_server_name.is_empty() {
        hub_host.clone()
    } else {
        identity.hub_server_name.clone()
    };
    let labels = config.node.labels.clone();
    let safe_paths = config.node.safe_paths.clone();
    let default_task = config.node.default_task.clone().unwrap_or_default();
    let worktree_root = config
        .worktree
        .default_root
        .as_ref()
        .map(|root| root.display().to_string())
        .unwrap_or_default();
    let boundary = tasks::ToolBoundary {
        safe_paths: safe_paths.clone(),
        protected: state_dirs(config),
        env_allow: config.node.env_allow.clone(),
        allow_hosts: config.node.allow_hosts.clone(),
        trusted_publishers: config.node.trusted_publishers.clone(),
    };
    let link = output::SessionLink::default();
    let open_files = system::raise_open_file_limit();
    tracing::debug!(?open_files, "open-file limit");
    let native_runner = (native.available)
        .then(|| launcher_path(config))
        .flatten()
        .map(|launcher| native::NativeRunner {
            launcher,
            safe_paths: safe_paths.clone(),
            protected: state_dirs(config),
            env_allow: config.node.env_allow.clone(),
            landlock: native.landlock.enforcement != outpost_runner::Enforcement::None,
            require_landlock: config.sandbox.require_landlock,
            tcp_connect: config.sandbox.tcp_connect.clone(),
            runs_dir: config.data_dir().join("native"),
            link: link.clone(),
        });
    let runner = match tasks::TaskRunner::new(&config.data_dir(), boundary) {
        Ok(runner) => Some(Arc::new(match native_runner.clone() {
            Some(native) => runner.with_native(native),
            None => runner,
        })),
        Err(e) => {
            tracing::error!(error = %e, "this node will not run tasks");
            None
        }
    };
    let agents = (native_runner.is_some() || runner.is_some()).then(|| {
        let agents = agents::AgentRunner::new(link.clone(), native_runner, runner.clone())
            .with_actor_socket(actor_relay::socket_path(&config.data_dir()));
        Arc::new(match actor_hub(identity) {
            Some(hub) => agents.with_actor_hub(hub),
            None => agents,
        })
    });
    Ok(SessionContext {
        node_id: identity.node_id.clone(),
        credentials: Mutex::new(credentials),
        identity_store: Some(IdentityStore::new(&config.data_dir())),
        hub_host,
        hub_port: identity.quic_port,
        server_name,
        gpu_probe,
        gpu_refresh: config.gpu.refresh_interval,
        capabilities: Box::new(move |gpus| {
            let mut capabilities = system::capabilities(&labels, &safe_paths, native, gpus);
            capabilities
                .default_worktree_root
                .clone_from(&worktree_root);
            capabilities.default_task.clone_from(&default_task);
            capabilities
        }),
        load: Mutex::new(system::LoadSampler::new(&config.data_dir())),
        stats: Arc::new(SessionStats::default()),
        runner,
        agents,
        link,
        controls: Mutex::new(None),
        direct_route: Mutex::new(None),
    })
}

/// Sets up tracing for a binary: `RUST_LOG` filter (else `default_level`), JSON when `json` is true.
pub fn init_tracing(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
