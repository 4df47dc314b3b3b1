//! Starting and stopping a hub: PKI, store, listeners (gRPC over TLS, QUIC, HTTP) and the
//! background tasks (liveness expiry, status persistence, heartbeat flush, challenge purge).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_clock::{Clock, SystemClock};
use outpost_config::{Config, TlsMode};
use outpost_trust::auth::{TokenAuthority, derive_proof_key};
use tokio::sync::{mpsc, watch};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::api::grpc::HubGrpc;
use crate::credentials::HubCredentials;
use crate::credentials::join_limit::{JoinLimiter, JoinRates};
use crate::credentials::pki::HubPki;
use crate::fleet::{Fleet, FleetPolicy, FleetState, StatusChange};
use crate::state::HubState;
use crate::store::{SqlStore, Store};
use crate::work::tasks::TaskEngine;
use crate::work::tools::ToolRegistry;

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
    /// REST API and web UI.
    pub http: SocketAddr,
    /// Whether `http` serves HTTPS (`[server] tls`).
    pub http_tls: bool,
    /// QUIC session endpoint (UDP).
    pub quic: SocketAddr,
}

impl HubAddrs {
    /// The base URL of the REST API: `https://…` when `[server] tls` is on.
    pub fn http_url(&self) -> String {
        let scheme = if self.http_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.http)
    }
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
            outpost_proto::close_code::SHUTDOWN.into(),
            b"hub shutting down",
        );
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        flush_heartbeats(&self.state).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.state.store().close().await;
    }
}

fn resolve_listen(text: &str, what: &'static str) -> Result<SocketAddr, HubError> {
    text.parse()
        .map_err(|e| HubError::Config(format!("{what} {text:?}: {e}")))
}

/// Starts a hub from `config`, on the system clock and the configured store.
pub async fn start(config: &Config) -> Result<HubHandle, HubError> {
    HubBuilder::new(config).start().await
}

/// Puts a hub together: the configuration, plus the two things tests replace — the clock (a
/// [`outpost_clock::ManualClock`] drives TTL, grace and challenge expiry in milliseconds) and the
/// store (any [`Store`]; by default the one `[storage] url` names, SQLite in the data dir).
#[derive(Debug)]
pub struct HubBuilder<'a> {
    config: &'a Config,
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn Store>>,
}

impl<'a> HubBuilder<'a> {
    /// A hub from `config` on the system clock and its configured store.
    pub fn new(config: &'a Config) -> Self {
        Self {
            config,
            clock: Arc::new(SystemClock),
            store: None,
        }
    }

    /// Uses `clock` for wall and monotonic time.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses `store` instead of opening `[storage] url`.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Opens credentials and the store, binds the listeners, recovers what the store says, and
    /// starts serving.
    pub async fn start(self) -> Result<HubHandle, HubError> {
        let config = self.config;
        let data_dir = config.data_dir();
        outpost_trust::private_files::ensure_private_dir(&data_dir).map_err(|source| {
            HubError::DataDir {
                path: data_dir.display().to_string(),
                source,
            }
        })?;
        let credentials = Credentials::load(config)?;
        let store = match self.store {
            Some(store) => store,
            None => {
                let url = config.storage.url.clone().unwrap_or_else(|| {
                    format!("sqlite://{}", data_dir.join("outpost.db").display())
                });
                Arc::new(SqlStore::connect(&url).await?)
            }
        };
        let listeners = Listeners::bind(config, &credentials).await?;
        let (state, status_rx) =
            build_state(config, credentials.shared, store, self.clock, &listeners).await?;
        recover(&state).await?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(
            serve_grpc(
                &state,
                &credentials.serving,
                listeners.grpc,
                shutdown_rx.clone(),
            )
            .await?,
        );
        let https = https_config(config, &credentials.serving)?;
        let console = crate::console::ConsoleSettings {
            grpc_url: format!("https://{}", listeners.addrs.grpc),
            https: https.is_some(),
            live_interval: std::time::Duration::from_secs(1),
        };
        let mcp = crate::api::mcp::http::McpSettings {
            enabled: config.mcp.enabled,
            https: https.is_some(),
            allowed_hosts: config
                .internal_grpc
                .security
                .server_names
                .iter()
                .chain(&config.mcp.allowed_hosts)
                .cloned()
                .collect(),
            allowed_origins: config.mcp.allowed_origins.clone(),
        };
        tasks.push(serve_rest(
            &state,
            listeners.http,
            https,
            (console, mcp),
            shutdown_rx.clone(),
        )?);
        if let Some(queue) = state.audit.take_writer() {
            tasks.push(tokio::spawn(crate::audit::run_writer(
                state.store().clone(),
                state.clock().clone(),
                queue,
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(crate::fleet::sessions::serve(
            listeners.endpoint.clone(),
            state.clone(),
        )));
        tasks.push(tokio::spawn(persist_status(
            state.clone(),
            status_rx,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::work::tasks::run_dispatcher(
            state.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::actors::triggers::run(
            state.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(liveness_ticker(
            state.clone(),
            config.fleet.min_heartbeat_ttl,
            shutdown_rx,
        )));

        let addrs = listeners.addrs;
        tracing::info!(grpc = %addrs.grpc, http = %addrs.http, quic = %addrs.quic, "hub listening");
        Ok(HubHandle {
            addrs,
            ca_pem: credentials.serving.ca_pem,
            state,
            shutdown,
            tasks,
            endpoint: listeners.endpoint,
        })
    }
}

/// The hub's credentials: its CA and certificates (generated in `cert_dir` on first start) and
/// the JWT secret, split into what the listeners serve and what the running state keeps.
struct Credentials {
    serving: ServingTls,
    secret: String,
    shared: SharedCredentials,
}

/// The TLS material the listeners present.
struct ServingTls {
    hub_cert_pem: String,
    hub_key_pem: String,
    ca_pem: String,
}

/// What of the credentials the running state keeps.
struct SharedCredentials {
    auth: TokenAuthority,
    ca: crate::credentials::pki::CertAuthority,
    static_token_key: Option<[u8; 32]>,
    /// The names on the hub certificate (loopback, `localhost`, the host name, `server_names`).
    names: Vec<String>,
    /// The hub certificate and key (PEM), presented on nodes' direct routes.
    presented: (String, String),
}

impl Credentials {
    fn load(config: &Config) -> Result<Self, HubError> {
        let pki = HubPki::load_or_init(
            &config.cert_dir(),
            &config.internal_grpc.security.server_names,
        )?;
        if !pki.created.is_empty() {
            tracing::info!(cert_dir = %config.cert_dir().display(), created = ?pki.created, "generated hub credentials");
        }
        let auth = &config.internal_grpc.auth;
        let secret = auth
            .shared_secret
            .clone()
            .unwrap_or_else(|| pki.auth_secret_file.clone());
        let presented = (pki.hub_cert_pem.clone(), pki.hub_key_pem.clone());
        Ok(Self {
            serving: ServingTls {
                ca_pem: pki.ca.ca_pem().to_string(),
                hub_cert_pem: pki.hub_cert_pem,
                hub_key_pem: pki.hub_key_pem,
            },
            shared: SharedCredentials {
                auth: TokenAuthority::new(
                    secret.as_bytes(),
                    &auth.issuer,
                    &auth.audience,
                    auth.leeway_seconds,
                ),
                ca: pki.ca,
                static_token_key: config
                    .internal_grpc
                    .bootstrap
                    .token
                    .as_deref()
                    .map(|t| derive_proof_key(t.trim())),
                names: crate::credentials::pki::hub_names(
                    &config.internal_grpc.security.server_names,
                ),
                presented,
            },
            secret,
        })
    }
}

/// The hub's bound listeners: internal gRPC (TCP), REST (TCP) and the QUIC session endpoint
/// (UDP, with the heartbeat channel on the same socket).
struct Listeners {
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    endpoint: quinn::Endpoint,
    heartbeat_channels: Arc<crate::fleet::heartbeat_channel::ChannelTable>,
    addrs: HubAddrs,
}

impl Listeners {
    async fn bind(config: &Config, credentials: &Credentials) -> Result<Self, HubError> {
        let (grpc, grpc_addr) = bind_tcp(
            &config.internal_grpc.listen,
            "internal_grpc.listen",
            "internal gRPC",
        )
        .await?;
        let quic_addr = match &config.server.quic_listen {
            Some(text) => resolve_listen(text, "server.quic_listen")?,
            // Same host and port number as gRPC (UDP beside TCP); a fresh port when gRPC asked
            // for 0.
            None if config.internal_grpc.listen.ends_with(":0") => {
                SocketAddr::new(grpc_addr.ip(), 0)
            }
            None => grpc_addr,
        };
        let (http, http_addr) = bind_tcp(&config.server.listen, "server.listen", "HTTP").await?;
        let tls = &credentials.serving;
        let hub_certs = outpost_trust::tls::certs_from_pem(&tls.hub_cert_pem, "hub certificate")?;
        let hub_key = outpost_trust::tls::key_from_pem(&tls.hub_key_pem, "hub key")?;
        let quic_config = outpost_trust::tls::quic_server_config(hub_certs, hub_key, &tls.ca_pem)?;
        let heartbeat_channels = Arc::new(crate::fleet::heartbeat_channel::ChannelTable::default());
        let quic_bind_error = |source| HubError::Bind {
            what: "QUIC",
            addr: quic_addr.to_string(),
            source,
        };
        let endpoint = crate::fleet::heartbeat_channel::server_endpoint(
            quic_config,
            quic_addr,
            credentials.secret.as_bytes(),
            heartbeat_channels.clone(),
        )
        .map_err(quic_bind_error)?;
        let quic_addr = endpoint.local_addr().map_err(quic_bind_error)?;
        Ok(Self {
            grpc,
            http,
            endpoint,
            heartbeat_channels,
            addrs: HubAddrs {
                grpc: grpc_addr,
                http: http_addr,
                http_tls: config.server.tls,
                quic: quic_addr,
            },
        })
    }
}

/// Binds a TCP listener for `text` (the config key `key`), returning it with its bound address.
async fn bind_tcp(
    text: &str,
    key: &'static str,
    what: &'static str,
) -> Result<(tokio::net::TcpListener, SocketAddr), HubError> {
    let addr = resolve_listen(text, key)?;
    let bind_error = |source| HubError::Bind {
        what,
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// The state the subsystems share, with the fleet loaded from the store.
async fn build_state(
    config: &Config,
    credentials: SharedCredentials,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    listeners: &Listeners,
) -> Result<(Arc<HubState>, mpsc::UnboundedReceiver<StatusChange>), HubError> {
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let seed = clock.now_ms().unsigned_abs() ^ u64::from(listeners.addrs.quic.port());
    let mut fleet = FleetState::new(FleetPolicy::from_config(&config.fleet), seed);
    for node in store.list_nodes().await? {
        fleet.add_known(&node.id, node.draining);
    }
    let fleet = Fleet::new(
        fleet,
        status_tx,
        listeners.heartbeat_channels.clone(),
        listeners.addrs.quic.port(),
    );
    fleet.set_trust_node_labels(config.scheduler.trust_node_labels);
    let scheduler = crate::work::scheduler::Scheduler::new(
        crate::work::scheduler::Strategy::parse(&config.scheduler.strategy)
            .map_err(HubError::Config)?,
    );
    let tasks = TaskEngine::new(scheduler, config.scheduler.default_max_attempts);
    let tools = ToolRegistry::new(config.tools.preinstall)
        .trusting(config.tools.trusted_publishers.clone());
    let credentials = HubCredentials::new(
        credentials.auth,
        credentials.ca,
        credentials.static_token_key,
        config.internal_grpc.security.mode == TlsMode::Mtls,
        &credentials.names,
        JoinLimiter::new(
            JoinRates {
                per_second: config.internal_grpc.bootstrap.joins_per_second,
                per_source_per_second: config.internal_grpc.bootstrap.joins_per_second_per_source,
            },
            clock.monotonic_ms(),
        ),
        crate::credentials::NodeLifetimes {
            certificate: config.internal_grpc.security.node_certificate_lifetime,
            token: config.internal_grpc.security.node_token_lifetime,
        },
    )
    .presenting(&credentials.presented.0, &credentials.presented.1);
    let mut state = HubState::new(store, clock, fleet, tasks, tools, credentials);
    state.actors = crate::actors::ActorHub::new(
        crate::actors::ActorLimits::from_config(&config.actors),
        config.security.tool_policy.clone(),
    );
    let state = Arc::new(state);
    // Channel heartbeats are handled on the endpoint's receive path; the sink holds the state
    // weakly so the endpoint does not keep it alive.
    let weak = Arc::downgrade(&state);
    state
        .fleet
        .heartbeat_channels()
        .set_sink(Box::new(move |node_id, heartbeat| {
            if let Some(state) = weak.upgrade() {
                crate::fleet::sessions::on_heartbeat(
                    &state,
                    node_id,
                    heartbeat,
                    crate::fleet::HeartbeatTransport::Channel,
                );
            }
        }));
    Ok((state, status_rx))
}

/// Everything the store said before this start is stale: nodes are offline until their session
/// comes back, and the attempts that were out are lost (queued again, or failed when out of
/// attempts).
async fn recover(state: &HubState) -> Result<(), HubError> {
    for node in state.store().list_nodes().await? {
        state
            .fleet
            .set_assigned_labels(&node.id, node.labels.clone());
        if node.status != "offline" {
            state
                .store()
                .set_status(
                    &node.id,
                    "offline",
                    "hub restarted; waiting for the node's session",
                )
                .await?;
        }
    }
    crate::work::agents::recover(state).await?;
    let orphans = crate::work::tasks::recover_after_restart(state).await?;
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "tasks that ran when the hub stopped were queued again"
        );
    }
    Ok(())
}

/// Serves internal gRPC (join, tokens, registry, tasks, tools, health, reflection) over TLS.
/// gRPC connections the hub holds at once.
const GRPC_MAX_CONNECTIONS: usize = 4096;
/// Concurrent gRPC streams one connection may hold.
const GRPC_MAX_STREAMS: u32 = 128;
/// Streams a connection may reset before the server accepted them.
const GRPC_MAX_PENDING_RESETS: usize = 32;
/// Bytes of headers one gRPC request may carry.
const GRPC_MAX_HEADER_BYTES: u32 = 16 * 1024;

async fn serve_grpc(
    state: &Arc<HubState>,
    serving: &ServingTls,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, HubError> {
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
    health_reporter
        .set_serving::<outpost_proto::v1::agent_service_server::AgentServiceServer<HubGrpc>>()
        .await;
    health_reporter
        .set_serving::<outpost_proto::v1::actor_service_server::ActorServiceServer<HubGrpc>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(outpost_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both revisions: older grpcurl builds and grpcio's reflection client speak only v1alpha.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| HubError::Grpc(e.to_string()))?;
    let reflection = reflection()
        .build_v1()
        .map_err(|e| HubError::Grpc(e.to_string()))?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            &serving.hub_cert_pem,
            &serving.hub_key_pem,
        ))
        .client_ca_root(Certificate::from_pem(&serving.ca_pem))
        .client_auth_optional(true);
    let router = Server::builder()
        .tls_config(tls)
        .map_err(|e| HubError::Grpc(e.to_string()))?
        // Bounded per connection: streams at once, streams reset before they were accepted
        // (the rapid-reset flood), and header bytes.
        .max_concurrent_streams(GRPC_MAX_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(GRPC_MAX_PENDING_RESETS))
        .http2_max_header_list_size(GRPC_MAX_HEADER_BYTES)
        .layer(crate::api::gate::GateLayer::new(state.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(grpc.join_service())
        .add_service(grpc.token_service())
        .add_service(grpc.registry_service())
        .add_service(grpc.task_service())
        .add_service(grpc.tool_service())
        .add_service(grpc.agent_service())
        .add_service(grpc.actor_service())
        .add_service(grpc.audit_service());
    let incoming = crate::api::connections::LimitedIncoming::new(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        GRPC_MAX_CONNECTIONS,
    );
    Ok(tokio::spawn(async move {
        let signal = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    }))
}

/// The TLS configuration of the HTTP listener when `[server] tls` is on: the certificate and key
/// files it names, else the hub certificate (which the CLI and nodes already trust).
fn https_config(
    config: &Config,
    serving: &ServingTls,
) -> Result<Option<rustls::ServerConfig>, HubError> {
    use outpost_trust::tls;
    let server = &config.server;
    if !server.tls {
        return Ok(None);
    }
    let (cert_pem, key_pem, what) = match (&server.tls_cert_file, &server.tls_key_file) {
        (Some(cert), Some(key)) => (
            tls::read_text(cert)?,
            tls::read_text(key)?,
            "server.tls_cert_file",
        ),
        _ => (
            serving.hub_cert_pem.clone(),
            serving.hub_key_pem.clone(),
            "the hub certificate",
        ),
    };
    let chain = tls::certs_from_pem(&cert_pem, what)?;
    let key = tls::key_from_pem(&key_pem, what)?;
    Ok(Some(tls::https_server_config(chain, key)?))
}

/// Serves the REST API and the console, over HTTPS when `tls` is given.
fn serve_rest(
    state: &Arc<HubState>,
    listener: tokio::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    (console, mcp): (
        crate::console::ConsoleSettings,
        crate::api::mcp::http::McpSettings,
    ),
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, HubError> {
    let app = crate::api::rest::router(state.clone())
        .merge(crate::console::router(state.clone(), console))
        .merge(crate::api::mcp::http::router(state.clone(), mcp));
    let mcp_shutdown = state.mcp_shutdown.clone();
    let signal = async move {
        let _ = shutdown.wait_for(|s| *s).await;
        // Open MCP streams would hold the graceful shutdown forever.
        mcp_shutdown.cancel();
    };
    let listener = match tls {
        None => {
            use axum::serve::ListenerExt as _;
            // Answers streamed in pieces (SSE, MCP) must not wait on Nagle and delayed ACKs.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            return Ok(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(signal)
                    .await
                {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            }));
        }
        Some(tls) => {
            crate::api::https::TlsListener::new(listener, tls).map_err(|source| HubError::Bind {
                what: "HTTPS",
                addr: "server.listen".into(),
                source,
            })?
        }
    };
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::error!(error = %e, "HTTPS server stopped");
        }
    }))
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
        .store()
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
        let changes = state.fleet.liveness().expire(state.monotonic_ms());
        state.publish(changes);
        crate::work::agents::reconcile_pending(&state).await;
        state.fleet.liveness_pass_done();
        if last_flush.elapsed() >= Duration::from_secs(5) {
            last_flush = tokio::time::Instant::now();
            flush_heartbeats(&state).await;
            if let Err(e) = state.store().purge_challenges(state.now_ms()).await {
                tracing::warn!(error = %e, "purging join challenges failed");
            }
        }
    }
}

async fn flush_heartbeats(state: &HubState) {
    let beats = state.fleet.take_heartbeat_times();
    if let Err(e) = state.store().record_heartbeats(&beats).await {
        tracing::warn!(error = %e, count = beats.len(), "persisting heartbeat times failed");
    }
}
