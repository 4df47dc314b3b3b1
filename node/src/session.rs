//! The node's persistent QUIC session to the hub.
//!
//! The node dials the hub with mTLS (its join certificate), opens a bi stream and sends
//! [`NodeHello`] (id, JWT, capabilities); the hub answers [`HelloAck`] with the heartbeat interval
//! and the session's heartbeat channel ([`outpost_proto::heartbeat_channel`]). Heartbeats go out
//! as sealed packets on that channel, from the session's own UDP socket; until the hub confirms
//! the first one arrived they also go as QUIC datagrams, and they go only that way when the hub
//! offers no channel, never confirms, or later says the channel's packets stopped arriving (a
//! heartbeat too large for either goes on a uni stream). Capability changes go as events on uni
//! streams, and the hub's commands arrive on bi streams the hub opens. When the connection drops,
//! the node dials again with jittered exponential backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use outpost_proto::framing::{self, FrameError};
use outpost_proto::heartbeat_channel::{self as channel_wire, ChannelKey};
use outpost_proto::v1::{
    Capabilities, GpuSnapshot, HelloAck, HubCommand, NodeEvent, NodeHello, NodeReply, Pong,
    hub_command, node_event, node_reply,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::watch;

use crate::gpu::GpuProbe;
use crate::system::LoadSampler;
use crate::tasks::TaskRunner;

/// Largest hub command frame the node accepts (a `RunTask` may carry a component).
const MAX_COMMAND_FRAME: usize = 64 * 1024 * 1024;

/// Counters a caller (or test) can read while the session runs.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// True while a session is established.
    pub connected: AtomicBool,
    /// Sessions established so far.
    pub sessions: AtomicU64,
    /// Heartbeats sent so far.
    pub heartbeats_sent: AtomicU64,
    /// Heartbeats sent on the heartbeat channel so far (some also went as datagrams).
    pub heartbeats_on_channel: AtomicU64,
    /// True while the hub has confirmed this session's heartbeat channel.
    pub channel_confirmed: AtomicBool,
    /// Commands answered so far.
    pub commands_handled: AtomicU64,
    /// The last reason a session ended or failed to start.
    pub last_error: Mutex<String>,
    /// Certificates renewed in session so far.
    pub certificate_renewals: AtomicU64,
}

/// Why one session attempt ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Dialling failed.
    #[error("connecting to {addr}: {message}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        message: String,
    },
    /// The connection failed or the hub closed it (its reason is included).
    #[error("session closed: {0}")]
    Closed(#[from] quinn::ConnectionError),
    /// A frame was malformed or a stream failed.
    #[error("session framing: {0}")]
    Frame(#[from] FrameError),
    /// The hub did not answer the hello in time.
    #[error("hub did not acknowledge the hello within {0:?}")]
    HelloTimeout(Duration),
    /// Writing a stream failed.
    #[error("session stream: {0}")]
    Stream(String),
}

/// What the session needs to run.
pub struct SessionContext {
    /// This node's id.
    pub node_id: String,
    /// The node's credentials (certificate, key, JWT), renewed in session; `identity_store`
    /// keeps them across restarts.
    pub credentials: Mutex<SessionCredentials>,
    /// Where renewed credentials are saved (none in tests that hold them in memory).
    pub identity_store: Option<outpost_trust::identity::IdentityStore>,
    /// Hub host (name or IP) and QUIC port.
    pub hub_host: String,
    /// QUIC port of the hub.
    pub hub_port: u16,
    /// TLS server name to verify the hub certificate against.
    pub server_name: String,
    /// GPU probe.
    pub gpu_probe: Arc<dyn GpuProbe>,
    /// How often the GPU probe is read.
    pub gpu_refresh: Duration,
    /// Builds capabilities for a GPU snapshot.
    pub capabilities: Box<dyn Fn(GpuSnapshot) -> Capabilities + Send + Sync>,
    /// Load sampler.
    pub load: Mutex<LoadSampler>,
    /// Live counters.
    pub stats: Arc<SessionStats>,
    /// Runs the hub's tasks; `None` when this node cannot (the reason is in the log).
    pub runner: Option<Arc<TaskRunner>>,
    /// Native agents (present where native programs run).
    pub agents: Option<Arc<crate::agents::AgentRunner>>,
    /// The session live output and agent status go over (attached while a session is up).
    pub link: crate::output::SessionLink,
    /// The current session's controls, for commands on the direct route.
    pub controls: Mutex<Option<SessionControls>>,
    /// Where the direct route (`NodeService`) listens, once bound; reported in capabilities.
    pub direct_route: Mutex<Option<SocketAddr>>,
}

/// The credentials a session dials with, and when they were last renewed.
pub struct SessionCredentials {
    /// What the node joined with, as renewed since.
    pub identity: outpost_trust::identity::JoinedIdentity,
    /// mTLS client configuration built from it.
    pub client_config: quinn::ClientConfig,
    /// When a certificate request was last sent (monotonic), so one is not sent every check.
    renewal_asked: Option<std::time::Instant>,
}

impl SessionCredentials {
    /// Credentials from `identity`.
    pub fn new(
        identity: outpost_trust::identity::JoinedIdentity,
    ) -> Result<Self, outpost_trust::tls::TlsError> {
        let client_config = client_config_for(&identity)?;
        Ok(Self {
            identity,
            client_config,
            renewal_asked: None,
        })
    }
}

fn client_config_for(
    identity: &outpost_trust::identity::JoinedIdentity,
) -> Result<quinn::ClientConfig, outpost_trust::tls::TlsError> {
    use outpost_trust::tls;
    let certs = tls::certs_from_pem(&identity.certificate_pem, "node certificate")?;
    let key = tls::key_from_pem(&identity.key_pem, "node key")?;
    tls::quic_client_config(&identity.ca_pem, certs, key)
}

/// Whether a certificate ending at `not_after_s` (Unix seconds) should be renewed at `now_s`,
/// for a hub that makes them last `lifetime_ms`: once less than a third of that is left.
pub fn renewal_due(not_after_s: i64, now_s: i64, lifetime_ms: u64) -> bool {
    if lifetime_ms == 0 {
        return false;
    }
    let third_s = i64::try_from(lifetime_ms / 3000).unwrap_or(i64::MAX);
    not_after_s.saturating_sub(now_s) < third_s
}

impl SessionContext {
    /// Capabilities for a GPU snapshot, with the direct route as bound.
    pub fn capabilities_now(&self, gpus: GpuSnapshot) -> Capabilities {
        let mut capabilities = (self.capabilities)(gpus);
        if let Some(addr) = *self.direct_route.lock() {
            capabilities.direct_route = addr.to_string();
        }
        capabilities
    }

    /// Keeps a fresh JWT from the hub (saved with the identity).
    fn keep_jwt(&self, jwt: String) {
        let identity = {
            let mut credentials = self.credentials.lock();
            credentials.identity.node_jwt = jwt;
            credentials.identity.clone()
        };
        self.save(&identity);
    }

    fn save(&self, identity: &outpost_trust::identity::JoinedIdentity) {
        if let Some(store) = &self.identity_store
            && let Err(e) = store.save(identity)
        {
            tracing::warn!(error = %e, "saving the renewed credentials failed; they last for this process only");
        }
    }

    /// Keeps a renewed certificate (for this node's own key) and JWT; the next dial uses them.
    fn keep_credentials(&self, renewed: outpost_proto::v1::NodeCredentials) -> Result<(), String> {
        use outpost_trust::tls;
        let identity = {
            let mut credentials = self.credentials.lock();
            let new_cert = tls::certs_from_pem(&renewed.certificate_pem, "renewed certificate")
                .map_err(|e| e.to_string())?;
            let old_cert =
                tls::certs_from_pem(&credentials.identity.certificate_pem, "certificate")
                    .map_err(|e| e.to_string())?;
            let (Some(new_leaf), Some(old_leaf)) = (new_cert.first(), old_cert.first()) else {
                return Err("empty certificate".into());
            };
            let same_key = tls::spki_sha256(new_leaf).map_err(|e| e.to_string())?
                == tls::spki_sha256(old_leaf).map_err(|e| e.to_string())?;
            if !same_key {
                return Err("the renewed certificate is for another key".into());
            }
            if tls::node_id_from_cert(new_leaf).map_err(|e| e.to_string())? != self.node_id {
                return Err("the renewed certificate names another node".into());
            }
            let mut identity = credentials.identity.clone();
            identity.certificate_pem = renewed.certificate_pem;
            if !renewed.node_jwt.is_empty() {
                identity.node_jwt = renewed.node_jwt;
            }
            credentials.client_config = client_config_for(&identity).map_err(|e| e.to_string())?;
            credentials.identity = identity.clone();
            credentials.renewal_asked = None;
            identity
        };
        self.save(&identity);
        self.stats
            .certificate_renewals
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A certificate request when the certificate is due for renewal and none was asked for
    /// within `retry_after`.
    fn renewal_request(&self, lifetime_ms: u64, retry_after: Duration) -> Option<NodeEvent> {
        let mut credentials = self.credentials.lock();
        if credentials
            .renewal_asked
            .is_some_and(|at| at.elapsed() < retry_after)
        {
            return None;
        }
        let certs = outpost_trust::tls::certs_from_pem(
            &credentials.identity.certificate_pem,
            "certificate",
        )
        .ok()?;
        let not_after = outpost_trust::tls::not_after_unix(certs.first()?).ok()?;
        let now_s = outpost_clock::Clock::now_ms(&outpost_clock::SystemClock) / 1000;
        if !renewal_due(not_after, now_s, lifetime_ms) {
            return None;
        }
        let csr_pem = match outpost_trust::identity::renewal_csr(
            &self.node_id,
            &credentials.identity.key_pem,
        ) {
            Ok(csr) => csr,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a certificate request");
                return None;
            }
        };
        credentials.renewal_asked = Some(std::time::Instant::now());
        tracing::info!(node_id = %self.node_id, left_s = not_after - now_s, "asking the hub to renew this node's certificate");
        Some(NodeEvent {
            kind: Some(node_event::Kind::CertificateRequest(
                outpost_proto::v1::CertificateRequest { csr_pem },
            )),
        })
    }
}

impl std::fmt::Debug for SessionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionContext")
            .field("node_id", &self.node_id)
            .field("hub_host", &self.hub_host)
            .field("hub_port", &self.hub_port)
            .finish_non_exhaustive()
    }
}

/// Backoff between dial attempts: 200 ms doubling to 10 s, ±20 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
    min: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            current: min,
            min,
            max,
            seed: seed | 1,
        }
    }

    /// The next delay (jittered), and doubles the base for the time after.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: deterministic for a seed, good enough to spread reconnect storms.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = (self.seed % 401) as f64 / 1000.0 - 0.2; // -0.2 ..= +0.2
        let delay = self.current.mul_f64(1.0 + jitter);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// Back to the smallest delay after a good session.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Runs sessions until `shutdown` turns true, dialling again after each failure.
pub async fn run(ctx: Arc<SessionContext>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(10),
        seed_from(&ctx.node_id),
    );
    let (endpoint, socket) = match client_endpoint() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(error = %e, "cannot open a UDP socket for the hub session");
            *ctx.stats.last_error.lock() = format!("opening UDP socket: {e}");
            return;
        }
    };
    let gpu_cache = Arc::new(Mutex::new(ctx.gpu_probe.snapshot()));
    let gpu_task = tokio::spawn(refresh_gpus(
        ctx.clone(),
        gpu_cache.clone(),
        shutdown.clone(),
    ));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let result = tokio::select! {
            r = session_once(&ctx, &endpoint, &socket, &gpu_cache, &mut backoff, shutdown.clone()) => r,
            _ = shutdown.changed() => Ok(()),
        };
        ctx.stats.connected.store(false, Ordering::SeqCst);
        if *shutdown.borrow() {
            break;
        }
        if let Err(e) = result {
            tracing::warn!(node_id = %ctx.node_id, error = %e, "hub session ended");
            *ctx.stats.last_error.lock() = e.to_string();
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }
    gpu_task.abort();
    endpoint.close(
        outpost_proto::close_code::SHUTDOWN.into(),
        b"node shutting down",
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// The session's QUIC endpoint, and its socket (heartbeat channel packets leave from it, so they
/// take the same path and NAT mapping as the session).
fn client_endpoint() -> std::io::Result<(quinn::Endpoint, Arc<dyn quinn::AsyncUdpSocket>)> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = runtime.wrap_udp_socket(socket)?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        socket.clone(),
        runtime,
    )?;
    Ok((endpoint, socket))
}

/// Where heartbeats go in this session.
mod channel_mode {
    /// Sent on the channel and as datagrams, until the hub confirms the channel.
    pub const PROBING: u8 = 0;
    /// Sent on the channel only.
    pub const CONFIRMED: u8 = 1;
    /// Sent as datagrams only.
    pub const OFF: u8 = 2;
}

/// Heartbeats sent both ways without the hub confirming the channel before the node stops
/// trying it for the session.
const CHANNEL_PROBES: u32 = 10;

/// The sending end of a session's heartbeat channel.
struct ChannelSender {
    id: u64,
    key: ChannelKey,
    hub: SocketAddr,
    socket: Arc<dyn quinn::AsyncUdpSocket>,
}

impl ChannelSender {
    /// Seals and sends one heartbeat; false when it did not go (too large, or the socket refused).
    fn send(&self, heartbeat: &outpost_proto::v1::Heartbeat) -> bool {
        let packet = self
            .key
            .seal(self.id, heartbeat.seq, &heartbeat.encode_to_vec());
        if packet.len() > channel_wire::MAX_PACKET {
            return false;
        }
        let transmit = quinn::udp::Transmit {
            destination: self.hub,
            ecn: None,
            contents: &packet,
            segment_size: None,
            src_ip: None,
        };
        match self.socket.try_send(&transmit) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat channel send failed");
                false
            }
        }
    }
}

fn seed_from(text: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    text.bytes().fold(u64::from(nanos) | 1, |acc, b| {
        acc.wrapping_mul(0x100_0000_01b3).wrapping_add(u64::from(b))
    })
}

async fn refresh_gpus(
    ctx: Arc<SessionContext>,
    cache: Arc<Mutex<GpuSnapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ctx.gpu_refresh) => {}
            _ = shutdown.changed() => return,
        }
        let probe = ctx.gpu_probe.clone();
        // NVML calls block; keep them off the async workers.
        if let Ok(snapshot) = tokio::task::spawn_blocking(move || probe.snapshot()).await {
            *cache.lock() = snapshot;
        }
    }
}

/// The part of a GPU snapshot that changes capabilities (not the live load).
fn gpu_shape(snapshot: &GpuSnapshot) -> (Vec<String>, bool, String) {
    (
        snapshot.devices.iter().map(|d| d.uuid.clone()).collect(),
        snapshot.fenced,
        snapshot.unavailable_reason.clone(),
    )
}

async fn session_once(
    ctx: &Arc<SessionContext>,
    endpoint: &quinn::Endpoint,
    socket: &Arc<dyn quinn::AsyncUdpSocket>,
    gpu_cache: &Arc<Mutex<GpuSnapshot>>,
    backoff: &mut Backoff,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let addr = resolve(&ctx.hub_host, ctx.hub_port).await?;
    let (client_config, jwt) = {
        let credentials = ctx.credentials.lock();
        (
            credentials.client_config.clone(),
            credentials.identity.node_jwt.clone(),
        )
    };
    let connecting = endpoint
        .connect_with(client_config, addr, &ctx.server_name)
        .map_err(|e| SessionError::Connect {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    let connection = connecting.await.map_err(|e| SessionError::Connect {
        addr: addr.to_string(),
        message: e.to_string(),
    })?;

    let mut gpus = gpu_cache.lock().clone();
    let mut shape = gpu_shape(&gpus);
    let capabilities = ctx.capabilities_now(gpus.clone());
    let mut capabilities_digest = outpost_trust::auth::sha256_hex(&capabilities.encode_to_vec());

    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = NodeHello {
        node_id: ctx.node_id.clone(),
        jwt,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        capabilities: Some(capabilities),
    };
    framing::write_frame(&mut send, &hello).await?;
    let _ = send.finish();
    let hello_timeout = Duration::from_secs(10);
    let ack: HelloAck = tokio::select! {
        r = tokio::time::timeout(hello_timeout, framing::read_frame(&mut recv, 64 * 1024)) => {
            match r.map_err(|_| SessionError::HelloTimeout(hello_timeout))? {
                Ok(ack) => ack,
                // A refusal closes the connection with the hub's reason: report that, not the
                // stream error it caused.
                Err(e) => return Err(connection
                    .close_reason()
                    .map_or(SessionError::Frame(e), SessionError::Closed)),
            }
        }
        // A refusal arrives as a close with the hub's reason.
        e = connection.closed() => return Err(SessionError::Closed(e)),
    };
    if !ack.node_jwt.is_empty() {
        ctx.keep_jwt(ack.node_jwt.clone());
    }
    let certificate_lifetime_ms = ack.node_certificate_lifetime_ms;
    // Checked often enough for any lifetime the hub sets, at most once a minute.
    let renewal_check = Duration::from_millis((certificate_lifetime_ms / 20).clamp(200, 60_000));
    let mut next_renewal_check = tokio::time::Instant::now();
    let interval_ms = Arc::new(AtomicU32::new(ack.heartbeat_interval_ms.max(100)));
    ctx.stats.connected.store(true, Ordering::SeqCst);
    ctx.stats.sessions.fetch_add(1, Ordering::SeqCst);
    backoff.reset();
    tracing::info!(node_id = %ctx.node_id, hub = %addr, interval_ms = ack.heartbeat_interval_ms, "session established");

    let channel = match ack.heartbeat_channel_id {
        0 => None,
        id => match channel_wire::channel_key(&connection, id) {
            Ok(key) => Some(ChannelSender {
                id,
                key,
                hub: addr,
                socket: socket.clone(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "no key for the heartbeat channel; heartbeats go as datagrams");
                None
            }
        },
    };
    let mode = Arc::new(AtomicU8::new(if channel.is_some() {
        channel_mode::PROBING
    } else {
        channel_mode::OFF
    }));
    ctx.stats.channel_confirmed.store(false, Ordering::SeqCst);
    let mut probes = 0u32;

    let mut seq = 0u64;
    let mut next_beat = tokio::time::Instant::now();
    let runner = ctx.runner.clone();
    // Agents and native commands send their output and status over this session while it lasts.
    struct Detach(crate::output::SessionLink);
    impl Drop for Detach {
        fn drop(&mut self) {
            self.0.detach();
        }
    }
    ctx.link.attach(connection.clone());
    let _detach = Detach(ctx.link.clone());
    // Commands on the direct route change this session while it lasts.
    struct Release(Arc<SessionContext>);
    impl Drop for Release {
        fn drop(&mut self) {
            *self.0.controls.lock() = None;
        }
    }
    let controls = SessionControls {
        interval_ms: interval_ms.clone(),
        mode: mode.clone(),
    };
    *ctx.controls.lock() = Some(controls.clone());
    let _release = Release(ctx.clone());
    loop {
        tokio::select! {
            _ = async { match &runner { Some(r) => r.results_ready().await, None => std::future::pending().await } } => {
                if let Some(runner) = &runner {
                    send_results(&connection, runner).await?;
                }
            }
            _ = shutdown.changed() => {
                connection.close(outpost_proto::close_code::SHUTDOWN.into(), b"node shutting down");
                return Ok(());
            }
            e = connection.closed() => return Err(SessionError::Closed(e)),
            incoming = connection.accept_bi() => {
                let (send, recv) = incoming?;
                tokio::spawn(handle_command(send, recv, controls.clone(), ctx.clone()));
            }
            _ = tokio::time::sleep_until(next_renewal_check) => {
                next_renewal_check = tokio::time::Instant::now() + renewal_check;
                if let Some(request) = ctx.renewal_request(certificate_lifetime_ms, renewal_check * 5) {
                    send_event(&connection, &request).await?;
                }
            }
            _ = tokio::time::sleep_until(next_beat) => {
                next_beat = tokio::time::Instant::now() + Duration::from_millis(u64::from(interval_ms.load(Ordering::Relaxed)));
                gpus = gpu_cache.lock().clone();
                let new_shape = gpu_shape(&gpus);
                if new_shape != shape {
                    shape = new_shape;
                    let capabilities = ctx.capabilities_now(gpus.clone());
                    capabilities_digest = outpost_trust::auth::sha256_hex(&capabilities.encode_to_vec());
                    let event = NodeEvent { kind: Some(node_event::Kind::Capabilities(capabilities)) };
                    send_event(&connection, &event).await?;
                }
                seq += 1;
                let load = ctx.load.lock().sample(0);
                let heartbeat = outpost_proto::v1::Heartbeat {
                    node_id: ctx.node_id.clone(),
                    seq,
                    sent_at_ms: outpost_clock::Clock::now_ms(&outpost_clock::SystemClock),
                    load: Some(load),
                    gpus: Some(gpus.clone()),
                    capabilities_digest: capabilities_digest.as_bytes().to_vec(),
                    running_tasks: runner.as_ref().map(|r| r.running_tasks()).unwrap_or_default(),
                    running_agents: ctx.agents.as_ref().map(|a| a.running()).unwrap_or_default(),
                };
                let current = mode.load(Ordering::Relaxed);
                let on_channel = current != channel_mode::OFF
                    && channel.as_ref().is_some_and(|c| c.send(&heartbeat));
                if on_channel {
                    ctx.stats.heartbeats_on_channel.fetch_add(1, Ordering::Relaxed);
                }
                if current == channel_mode::PROBING {
                    probes += 1;
                    if probes >= CHANNEL_PROBES
                        && mode.compare_exchange(channel_mode::PROBING, channel_mode::OFF, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                    {
                        tracing::warn!(node_id = %ctx.node_id, probes, "the hub never confirmed the heartbeat channel; heartbeats go as QUIC datagrams for this session");
                    }
                }
                if !(on_channel && current == channel_mode::CONFIRMED) {
                    send_heartbeat(&connection, heartbeat).await?;
                }
                ctx.stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends a heartbeat as a datagram, or on a uni stream when it does not fit in one.
pub async fn send_heartbeat(
    connection: &quinn::Connection,
    heartbeat: outpost_proto::v1::Heartbeat,
) -> Result<(), SessionError> {
    let bytes = heartbeat.encode_to_vec();
    let fits = connection
        .max_datagram_size()
        .is_some_and(|max| bytes.len() <= max);
    if fits {
        match connection.send_datagram(bytes.into()) {
            Ok(()) => return Ok(()),
            Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                return Err(SessionError::Closed(e));
            }
            Err(e) => {
                tracing::debug!(error = %e, "datagram refused; sending heartbeat on a stream")
            }
        }
    }
    let event = NodeEvent {
        kind: Some(node_event::Kind::Heartbeat(heartbeat)),
    };
    send_event(connection, &event).await
}

/// Sends one event on a uni stream of its own (for the agents' status events).
pub(crate) async fn send_event_on(
    connection: &quinn::Connection,
    event: &NodeEvent,
) -> Result<(), SessionError> {
    send_event(connection, event).await
}

async fn send_event(connection: &quinn::Connection, event: &NodeEvent) -> Result<(), SessionError> {
    let mut send = connection.open_uni().await?;
    framing::write_frame(&mut send, event).await?;
    send.finish()
        .map_err(|e| SessionError::Stream(e.to_string()))?;
    Ok(())
}

/// Why a result the hub stopped reading is reported as failed.
const REFUSAL_REASON: &str = "the hub could not read it (too large or malformed)";

/// Sends every result in the outbox; a result whose send fails goes back for the next session.
async fn send_results(
    connection: &quinn::Connection,
    runner: &Arc<TaskRunner>,
) -> Result<(), SessionError> {
    while let Some(result) = runner.next_result() {
        let event = NodeEvent {
            kind: Some(node_event::Kind::TaskResult(result.clone())),
        };
        match send_event(connection, &event).await {
            Ok(()) => {}
            // The hub read the stream and refused it: sending it again would be refused again
            // (and hold up every result behind it), so the attempt fails with the reason.
            Err(SessionError::Frame(FrameError::Write(quinn::WriteError::Stopped(code))))
                if connection.close_reason().is_none() =>
            {
                if crate::tasks::is_refusal(&result) {
                    // Even the small refusal was refused: the hub cannot take this result.
                    tracing::error!(task_id = %result.task_id, %code, "the hub refused the report of a refused result; dropped");
                    continue;
                }
                tracing::warn!(task_id = %result.task_id, %code, "the hub refused a result; reporting the refusal instead");
                runner.unsent(crate::tasks::refused_by_hub(result, REFUSAL_REASON));
            }
            Err(e) => {
                runner.unsent(result);
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn handle_command(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    controls: SessionControls,
    ctx: Arc<SessionContext>,
) {
    let command: HubCommand = match framing::read_frame(&mut recv, MAX_COMMAND_FRAME).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable hub command");
            return;
        }
    };
    let kind = answer(command.kind, Some(&controls), &ctx).await;
    let reply = NodeReply {
        id: command.id,
        kind: Some(kind),
    };
    if framing::write_frame(&mut send, &reply).await.is_ok() {
        let _ = send.finish();
        ctx.stats.commands_handled.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a session's commands change of it: the heartbeat interval and where heartbeats go.
#[derive(Debug, Clone)]
pub struct SessionControls {
    interval_ms: Arc<AtomicU32>,
    mode: Arc<AtomicU8>,
}

/// Answers one hub command, from the session or the direct route. `controls` is the current
/// session's (none: the heartbeat commands are refused, as there is nothing to change).
pub async fn answer(
    kind: Option<hub_command::Kind>,
    controls: Option<&SessionControls>,
    ctx: &Arc<SessionContext>,
) -> node_reply::Kind {
    let stats = &ctx.stats;
    let runner = &ctx.runner;
    match kind {
        Some(hub_command::Kind::Ping(ping)) => node_reply::Kind::Pong(Pong {
            sent_at_us: ping.sent_at_us,
        }),
        Some(
            hub_command::Kind::SetHeartbeatIntervalMs(_) | hub_command::Kind::HeartbeatChannel(_),
        ) if controls.is_none() => node_reply::Kind::Error(
            "no session to the hub now: heartbeat settings belong to a session".into(),
        ),
        Some(hub_command::Kind::SetHeartbeatIntervalMs(ms)) => {
            if let Some(controls) = controls {
                controls.interval_ms.store(ms.max(100), Ordering::Relaxed);
            }
            node_reply::Kind::Ok(true)
        }
        Some(hub_command::Kind::HeartbeatChannel(use_channel)) => {
            let Some(SessionControls { mode, .. }) = controls else {
                return node_reply::Kind::Ok(false);
            };
            let to = if use_channel {
                channel_mode::CONFIRMED
            } else {
                channel_mode::OFF
            };
            // A session without a channel stays off; a channel the hub gave up on stays off.
            let moved = mode
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |from| {
                    (from != channel_mode::OFF || !use_channel).then_some(to)
                })
                .is_ok();
            stats
                .channel_confirmed
                .store(moved && use_channel, Ordering::SeqCst);
            if moved && !use_channel {
                tracing::warn!(
                    "the hub stopped receiving the heartbeat channel; heartbeats go as QUIC datagrams for this session"
                );
            }
            node_reply::Kind::Ok(moved)
        }
        Some(hub_command::Kind::RunTask(run)) => match &runner {
            Some(runner) => runner.accept(run),
            None => node_reply::Kind::Error(
                "this node cannot run tasks (its sandbox failed to start; see the node's log)"
                    .into(),
            ),
        },
        Some(hub_command::Kind::InstallTool(install)) => match &runner {
            Some(runner) => runner.install(install),
            None => node_reply::Kind::Error(
                "this node cannot run tools (its sandbox failed to start; see the node's log)"
                    .into(),
            ),
        },
        Some(hub_command::Kind::CancelTask(cancel)) => node_reply::Kind::Ok(
            runner
                .as_ref()
                .is_some_and(|r| r.cancel(&cancel.task_id, cancel.attempt)),
        ),
        Some(hub_command::Kind::Credentials(renewed)) => match ctx.keep_credentials(renewed) {
            Ok(()) => {
                tracing::info!(node_id = %ctx.node_id, "certificate renewed");
                node_reply::Kind::Ok(true)
            }
            Err(e) => {
                tracing::warn!(node_id = %ctx.node_id, error = %e, "renewed credentials refused");
                node_reply::Kind::Error(format!("credentials: {e}"))
            }
        },
        Some(hub_command::Kind::StartAgent(start)) => match &ctx.agents {
            Some(agents) => agents.start(start).await,
            None => node_reply::Kind::Error(
                "this node runs no agents (neither its launcher nor its sandbox started; see the node's log)"
                    .into(),
            ),
        },
        Some(hub_command::Kind::StopAgent(agent)) => match &ctx.agents {
            Some(agents) => agents.stop(&agent),
            None => node_reply::Kind::Ok(false),
        },
        Some(hub_command::Kind::AgentInput(input)) => match &ctx.agents {
            Some(agents) => agents.input(input),
            None => node_reply::Kind::Error("this node runs no agents".into()),
        },
        Some(hub_command::Kind::RemoveWorktree(remove)) => match &ctx.agents {
            Some(agents) => agents.remove_worktree(remove).await,
            None => node_reply::Kind::Error("this node runs no agents".into()),
        },
        None => node_reply::Kind::Error("unknown command (newer hub?)".into()),
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, SessionError> {
    let mut addrs =
        tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| SessionError::Connect {
                addr: format!("{host}:{port}"),
                message: format!("resolving: {e}"),
            })?;
    addrs
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| SessionError::Connect {
            addr: format!("{host}:{port}"),
            message: "no IPv4 address".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_renewed_once_a_third_of_their_lifetime_is_left() {
        let day_ms = 24 * 3600 * 1000;
        let day_s = 24 * 3600;
        // 90-day certificates: due with less than 30 days left.
        assert!(!renewal_due(100 * day_s, 69 * day_s, 90 * day_ms));
        assert!(renewal_due(100 * day_s, 71 * day_s, 90 * day_ms));
        assert!(
            renewal_due(100 * day_s, 101 * day_s, 90 * day_ms),
            "already expired"
        );
        assert!(
            !renewal_due(100 * day_s, 99 * day_s, 0),
            "a hub that does not renew"
        );
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 42);
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(80) && first <= Duration::from_millis(120),
            "{first:?}"
        );
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(1200), "{d:?}");
        }
        let capped = b.next_delay();
        assert!(capped >= Duration::from_millis(800), "{capped:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
