//! Starting and stopping a hub: PKI, store, listeners (gRPC over TLS, QUIC, HTTP) and the
//! background tasks (liveness expiry, status persistence, heartbeat flush, challenge purge).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_clock::{Clock, SystemClock};
use outpost_config::{Config, TlsMode};
use outpost_trust::auth::{TokenAuthority, derive_proof_key};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::api::grpc::HubGrpc;
use crate::credentials::pki::HubPki;
use crate::fleet::links::LinkTable;
use crate::fleet::{FleetPolicy, FleetState, StatusChange};
use crate::state::HubState;
use crate::store::{SqlStore, Store};

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Certificates or secrets.
    #[error(transparent)]
    Pki(#[from] crate::credentials::pki::PkiError),
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The data directory could not be created.
    #[error("creating data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A listener could not bind.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] outpost_trust::tls::TlsError),
    /// gRPC server setup.
    #[error("gRPC server: {0}")]
    Grpc(String),
    /// Configuration.
    #[error("hub configuration: {0}")]
    Config(String),
}

/// Where a running hub listens.
#[derive(Debug, Clone, Copy)]
pub struct HubAddrs {
    /// Internal gRPC (TLS).
    pub grpc: SocketAddr,
    /// REST API (HTTP).
    pub http: SocketAddr,
    /// QUIC session endpoint (UDP).
    pub quic: SocketAddr,
}

/// A running hub.
#[derive(Debug)]
pub struct HubHandle {
    /// Listen addresses.
    pub addrs: HubAddrs,
    /// Shared state (for in-process inspection and tests).
    pub state: Arc<HubState>,
    /// The CA certificate nodes trust, PEM.
    pub ca_pem: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: quinn::Endpoint,
    store: SqlStore,
}

impl HubHandle {
    /// The gRPC URL nodes and the CLI use.
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.addrs.grpc)
    }

    /// Stops listeners and tasks, flushes pending heartbeats and closes the database.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.endpoint.close(
            crate::fleet::sessions::close_code::SHUTDOWN.into(),
            b"hub shutting down",
        );
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        flush_heartbeats(&self.state).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.store.close().await;
    }
}

fn resolve_listen(text: &str, what: &'static str) -> Result<SocketAddr, HubError> {
    text.parse()
        .map_err(|e| HubError::Config(format!("{what} {text:?}: {e}")))
}

/// Starts a hub from `config`.
pub async fn start(config: &Config) -> Result<HubHandle, HubError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// Starts a hub with an injected clock.
pub async fn start_with_clock(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<HubHandle, HubError> {
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir).map_err(|source| HubError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let pki = HubPki::load_or_init(
        &config.cert_dir(),
        &config.internal_grpc.security.server_names,
    )?;
    if !pki.created.is_empty() {
        tracing::info!(cert_dir = %config.cert_dir().display(), created = ?pki.created, "generated hub credentials");
    }
    let secret = config
        .internal_grpc
        .auth
        .shared_secret
        .clone()
        .unwrap_or_else(|| pki.auth_secret_file.clone());
    let auth = TokenAuthority::new(
        secret.as_bytes(),
        &config.internal_grpc.auth.issuer,
        &config.internal_grpc.auth.audience,
        config.internal_grpc.auth.leeway_seconds,
    );
    let url = config
        .storage
        .url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("outpost.db").display()));
    let store = SqlStore::connect(&url).await?;

    // Listeners
    let grpc_addr = resolve_listen(&config.internal_grpc.listen, "internal_grpc.listen")?;
    let grpc_listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .map_err(|source| HubError::Bind {
            what: "internal gRPC",
            addr: grpc_addr.to_string(),
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| HubError::Bind {
            what: "internal gRPC",
            addr: grpc_addr.to_string(),
            source,
        })?;
    let quic_addr = match &config.server.quic_listen {
        Some(text) => resolve_listen(text, "server.quic_listen")?,
        // Same host and port number as gRPC (UDP beside TCP); a fresh port when gRPC asked for 0.
        None if config.internal_grpc.listen.ends_with(":0") => SocketAddr::new(grpc_addr.ip(), 0),
        None => grpc_addr,
    };
    let http_addr = resolve_listen(&config.server.listen, "server.listen")?;
    let http_listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|source| HubError::Bind {
            what: "HTTP",
            addr: http_addr.to_string(),
            source,
        })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| HubError::Bind {
            what: "HTTP",
            addr: http_addr.to_string(),
            source,
        })?;

    let hub_certs = outpost_trust::tls::certs_from_pem(&pki.hub_cert_pem, "hub certificate")?;
    let hub_key = outpost_trust::tls::key_from_pem(&pki.hub_key_pem, "hub key")?;
    let quic_config = outpost_trust::tls::quic_server_config(hub_certs, hub_key, pki.ca.ca_pem())?;
    let heartbeat_channels = Arc::new(crate::fleet::heartbeat_channel::ChannelTable::default());
    let endpoint = crate::fleet::heartbeat_channel::server_endpoint(
        quic_config,
        quic_addr,
        secret.as_bytes(),
        heartbeat_channels.clone(),
    )
    .map_err(|source| HubError::Bind {
        what: "QUIC",
        addr: quic_addr.to_string(),
        source,
    })?;
    let quic_addr = endpoint.local_addr().map_err(|source| HubError::Bind {
        what: "QUIC",
        addr: quic_addr.to_string(),
        source,
    })?;

    // State
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let seed = clock.now_ms().unsigned_abs() ^ u64::from(quic_addr.port());
    let mut fleet = FleetState::new(FleetPolicy::from_config(&config.fleet), seed);
    let known_nodes = store.list_nodes().await?;
    for node in &known_nodes {
        fleet.add_known(&node.id, node.draining);
    }
    let ca_pem = pki.ca.ca_pem().to_string();
    let state = Arc::new(HubState {
        store: Arc::new(store.clone()),
        fleet: Mutex::new(fleet),
        live: Mutex::new(Default::default()),
        links: LinkTable::default(),
        auth,
        ca: pki.ca,
        clock,
        static_token_key: config
            .internal_grpc
            .bootstrap
            .token
            .as_deref()
            .map(|t| derive_proof_key(t.trim())),
        quic_port: quic_addr.port(),
        status_changes: status_tx,
        pending_heartbeats: Mutex::new(Default::default()),
        mtls: config.internal_grpc.security.mode == TlsMode::Mtls,
        scheduler: Mutex::new(crate::work::scheduler::Scheduler::new(
            crate::work::scheduler::Strategy::parse(&config.scheduler.strategy)
                .map_err(HubError::Config)?,
        )),
        dispatch: tokio::sync::Notify::new(),
        lost_nodes: Mutex::new(Vec::new()),
        default_max_attempts: config.scheduler.default_max_attempts,
        preinstall_tools: config.tools.preinstall,
        tool_transfers: tokio::sync::Semaphore::new(crate::work::tools::TRANSFER_CONCURRENCY),
        task_changes: watch::channel(0).0,
        dispatch_passes: watch::channel(0).0,
        placing: tokio::sync::Mutex::new(()),
        queue_backlog: std::sync::atomic::AtomicBool::new(false),
        in_flight: Mutex::new(Default::default()),
        last_finished: watch::channel(None).0,
        tool_meta: Mutex::new(Default::default()),
        heartbeat_channels,
        channel_fallbacks: Mutex::new(Default::default()),
    });
    {
        // Channel heartbeats are handled on the endpoint's receive path; the sink holds the state
        // weakly so the endpoint does not keep it alive.
        let weak = Arc::downgrade(&state);
        state
            .heartbeat_channels
            .set_sink(Box::new(move |node_id, heartbeat| {
                if let Some(state) = weak.upgrade() {
                    crate::fleet::sessions::on_heartbeat(
                        &state,
                        node_id,
                        heartbeat,
                        crate::state::HeartbeatTransport::Channel,
                    );
                }
            }));
    }
    // Everything the store said before this start is stale until nodes reconnect.
    for node in known_nodes {
        if node.status != "offline" {
            state
                .store
                .set_status(
                    &node.id,
                    "offline",
                    "hub restarted; waiting for the node's session",
                )
                .await?;
        }
    }

    let orphans = crate::work::tasks::recover_after_restart(&state).await?;
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "tasks that ran when the hub stopped were queued again"
        );
    }

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // gRPC
    let grpc = HubGrpc::new(state.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<outpost_proto::v1::node_registry_server::NodeRegistryServer<HubGrpc>>()
        .await;
    health_reporter
        .set_serving::<outpost_proto::v1::join_service_server::JoinServiceServer<HubGrpc>>()
        .await;
    health_reporter
        .set_serving::<outpost_proto::v1::task_service_server::TaskServiceServer<HubGrpc>>()
        .await;
    health_reporter
        .set_serving::<outpost_proto::v1::tool_service_server::ToolServiceServer<HubGrpc>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(outpost_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| HubError::Grpc(e.to_string()))?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.hub_cert_pem, &pki.hub_key_pem))
        .client_ca_root(Certificate::from_pem(&ca_pem))
        .client_auth_optional(true);
    let router = Server::builder()
        .tls_config(tls)
        .map_err(|e| HubError::Grpc(e.to_string()))?
        .add_service(health_service)
        .add_service(reflection)
        .add_service(grpc.join_service())
        .add_service(grpc.token_service())
        .add_service(grpc.registry_service())
        .add_service(grpc.task_service())
        .add_service(grpc.tool_service());
    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let signal = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    }));

    // REST
    let app = crate::api::rest::router(state.clone());
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let signal = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(http_listener, app)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }));

    // QUIC sessions
    tasks.push(tokio::spawn(crate::fleet::sessions::serve(
        endpoint.clone(),
        state.clone(),
    )));

    // Background
    tasks.push(tokio::spawn(persist_status(
        state.clone(),
        status_rx,
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::work::tasks::run_dispatcher(
        state.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(liveness_ticker(
        state.clone(),
        config.fleet.min_heartbeat_ttl,
        shutdown_rx.clone(),
    )));

    tracing::info!(grpc = %grpc_addr, http = %http_addr, quic = %quic_addr, "hub listening");
    Ok(HubHandle {
        addrs: HubAddrs {
            grpc: grpc_addr,
            http: http_addr,
            quic: quic_addr,
        },
        state,
        ca_pem,
        shutdown,
        tasks,
        endpoint,
        store,
    })
}

/// Writes status changes to the store in order.
async fn persist_status(
    state: Arc<HubState>,
    mut rx: mpsc::UnboundedReceiver<StatusChange>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let change = tokio::select! {
            change = rx.recv() => change,
            _ = shutdown.changed() => {
                // Write what is queued, then stop.
                while let Ok(change) = rx.try_recv() {
                    persist_one(&state, &change).await;
                }
                return;
            }
        };
        let Some(change) = change else { return };
        persist_one(&state, &change).await;
    }
}

async fn persist_one(state: &HubState, change: &StatusChange) {
    if let Err(e) = state
        .store
        .set_status(&change.node_id, change.to.as_str(), &change.reason)
        .await
    {
        tracing::warn!(node_id = %change.node_id, error = %e, "persisting status failed");
    }
}

/// Expires silent nodes, flushes heartbeat times and purges old join challenges.
async fn liveness_ticker(
    state: Arc<HubState>,
    min_ttl: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let tick = (min_ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = state.now_ms();
        let changes = state.fleet.lock().expire(now);
        state.publish(changes);
        if last_flush.elapsed() >= Duration::from_secs(5) {
            last_flush = tokio::time::Instant::now();
            flush_heartbeats(&state).await;
            if let Err(e) = state.store.purge_challenges(now).await {
                tracing::warn!(error = %e, "purging join challenges failed");
            }
        }
    }
}

async fn flush_heartbeats(state: &HubState) {
    let beats: Vec<(String, i64)> = std::mem::take(&mut *state.pending_heartbeats.lock())
        .into_iter()
        .collect();
    if let Err(e) = state.store.record_heartbeats(&beats).await {
        tracing::warn!(error = %e, count = beats.len(), "persisting heartbeat times failed");
    }
}
