//! The hub's QUIC endpoint for node sessions.
//!
//! Each connection must present a node certificate signed by the hub CA (rustls checks the chain).
//! The first bi stream carries the node's hello: its JWT must verify, be a node credential for the
//! same id the certificate names, and the certificate's key must be the one bound to that id at
//! join; otherwise the connection is closed with the reason. The hub then opens the session's
//! heartbeat channel ([`crate::fleet::heartbeat_channel`]) and names it in the `HelloAck`. Heartbeats
//! (on the channel, or as datagrams where the channel does not get through) and events (uni
//! streams) feed the fleet state, and the hub's commands go down through a [`QuicLink`].

use std::sync::Arc;
use std::time::Duration;

use outpost_proto::framing;
use outpost_proto::v1::{Heartbeat, HelloAck, NodeEvent, NodeHello, node_event};
use outpost_trust::auth::Role;
use prost::Message;

use crate::fleet::FleetState;
use crate::fleet::HeartbeatTransport;
use crate::fleet::direct_route::{DirectLink, DirectRoute};
use crate::fleet::links::{NodeLink, QuicLink};
use crate::state::HubState;

pub use outpost_proto::close_code;

/// Largest hello accepted (capabilities included).
const MAX_HELLO: usize = 1024 * 1024;
/// Largest event frame accepted: a result at every limit the node fits results into.
const MAX_EVENT: usize = outpost_proto::limits::MAX_EVENT_FRAME;

/// The stream error code of an event the hub could not read (too large or malformed).
pub const EVENT_REFUSED: u32 = 1;

/// Handshakes in progress past which a new one must first prove its address (a QUIC retry,
/// one round trip, so spoofed sources cost the hub nothing but a packet).
const RETRY_ABOVE_HANDSHAKES: usize = 64;
/// Handshakes in progress past which new ones are refused outright.
const MAX_HANDSHAKES: usize = 1024;
/// Longest a session handshake plus hello may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint does with a new connection, given the handshakes in progress and whether
/// its source address is already validated (it came back from a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go on with the handshake.
    Accept,
    /// Ask the peer to prove its address first.
    Retry,
    /// Refuse (the hub is at its handshake limit).
    Refuse,
}

/// The admission rule for new connections (pure).
pub fn admission(in_progress: usize, address_validated: bool) -> Admission {
    if in_progress >= MAX_HANDSHAKES {
        Admission::Refuse
    } else if in_progress >= RETRY_ABOVE_HANDSHAKES && !address_validated {
        Admission::Retry
    } else {
        Admission::Accept
    }
}

/// Accepts sessions until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, state: Arc<HubState>) {
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        let in_progress = handshakes.load(std::sync::atomic::Ordering::Relaxed);
        match admission(in_progress, incoming.remote_address_validated()) {
            Admission::Accept => {}
            Admission::Retry if incoming.may_retry() => {
                let _ = incoming.retry();
                continue;
            }
            Admission::Retry => {}
            Admission::Refuse => {
                state.metrics.session_not_established("busy");
                tracing::warn!(remote = %incoming.remote_address(), in_progress, "session handshake refused: too many in progress");
                incoming.refuse();
                continue;
            }
        }
        let state = state.clone();
        let handshakes = handshakes.clone();
        handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await;
            handshakes.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            match connected {
                Ok(Ok(connection)) => handle(connection, state).await,
                Ok(Err(e)) => {
                    state.metrics.session_not_established("handshake_failed");
                    tracing::debug!(%remote, error = %e, "session handshake failed");
                }
                Err(_) => {
                    state.metrics.session_not_established("handshake_timeout");
                    tracing::debug!(%remote, "session handshake timed out");
                }
            }
        });
    }
}

fn refuse(connection: &quinn::Connection, code: u32, reason: &str) {
    tracing::warn!(remote = %connection.remote_address(), code, reason, "session refused");
    connection.close(code.into(), reason.as_bytes());
}

/// Checks the peer certificate and hello; returns the node id on success.
/// A session that proved its node: what the node said, and its registry route.
struct Authenticated {
    node_id: String,
    hello: NodeHello,
    send: quinn::SendStream,
    /// Hex SHA-256 of the node's key.
    key: String,
    /// The registry's `grpc_target` and `tls_server_name`.
    grpc_target: String,
    tls_server_name: String,
}

/// The link to a node: over its direct route when the registry names one and the node says it
/// serves it there, else over the session.
fn link_for(
    state: &HubState,
    connection: &quinn::Connection,
    node: &Authenticated,
) -> Arc<dyn NodeLink> {
    let session = QuicLink::new(connection.clone());
    let serves = node
        .hello
        .capabilities
        .as_ref()
        .is_some_and(|caps| !caps.direct_route.is_empty());
    if node.grpc_target.is_empty() || !serves {
        return Arc::new(session);
    }
    let Some((hub_cert_pem, hub_key_pem)) = state.credentials.presented() else {
        return Arc::new(session);
    };
    let route = DirectRoute {
        node_id: &node.node_id,
        target: &node.grpc_target,
        tls_server_name: &node.tls_server_name,
        key_sha256: &node.key,
        hub_cert_pem,
        hub_key_pem,
    };
    match DirectLink::new(session, route) {
        Ok(direct) => {
            tracing::info!(node_id = %node.node_id, target = %node.grpc_target, "commands go over the node's direct route");
            Arc::new(direct)
        }
        Err(e) => {
            tracing::warn!(node_id = %node.node_id, target = %node.grpc_target, error = %e, "the direct route is unusable; commands go over the session");
            Arc::new(QuicLink::new(connection.clone()))
        }
    }
}

async fn authenticate(
    connection: &quinn::Connection,
    state: &HubState,
) -> Result<Authenticated, (u32, String)> {
    let certs = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or((
            close_code::UNAUTHORIZED,
            "no client certificate".to_string(),
        ))?;
    let leaf = certs.first().ok_or((
        close_code::UNAUTHORIZED,
        "empty client certificate chain".to_string(),
    ))?;
    let cert_node_id = outpost_trust::tls::node_id_from_cert(leaf)
        .map_err(|e| (close_code::UNAUTHORIZED, format!("node certificate: {e}")))?;
    let spki = outpost_trust::tls::spki_sha256(leaf)
        .map_err(|e| (close_code::UNAUTHORIZED, format!("node certificate: {e}")))?;

    let (send, mut recv) = tokio::time::timeout(Duration::from_secs(10), connection.accept_bi())
        .await
        .map_err(|_| (close_code::PROTOCOL, "no hello within 10 s".to_string()))?
        .map_err(|e| (close_code::PROTOCOL, format!("hello stream: {e}")))?;
    let hello: NodeHello = tokio::time::timeout(
        Duration::from_secs(10),
        framing::read_frame(&mut recv, MAX_HELLO),
    )
    .await
    .map_err(|_| {
        (
            close_code::PROTOCOL,
            "hello not received within 10 s".to_string(),
        )
    })?
    .map_err(|e| (close_code::PROTOCOL, format!("hello: {e}")))?;

    // The certificate (checked by TLS) and its registry binding authenticate the node; the
    // JWT must be this hub's, for this node and key, however old: the ack brings a fresh one.
    let claims = state
        .credentials
        .auth()
        .verify_ignoring_expiry(&hello.jwt)
        .map_err(|e| (close_code::UNAUTHORIZED, format!("node JWT: {e}")))?;
    if claims.role != Role::Node {
        return Err((
            close_code::UNAUTHORIZED,
            format!("JWT role {} is not a node credential", claims.role),
        ));
    }
    if hello.node_id != cert_node_id || claims.sub != cert_node_id {
        return Err((
            close_code::UNAUTHORIZED,
            format!(
                "certificate is for node {cert_node_id:?} but the session claims {:?} (JWT subject {:?})",
                hello.node_id, claims.sub
            ),
        ));
    }
    let row = state
        .store()
        .get_node(&cert_node_id)
        .await
        .map_err(|e| (close_code::SHUTDOWN, format!("hub store unavailable: {e}")))?
        .ok_or((
            close_code::UNKNOWN_NODE,
            format!("node {cert_node_id:?} is not in the registry (deleted?); join again"),
        ))?;
    if !claims.key.is_empty() && claims.key != spki {
        return Err((
            close_code::UNAUTHORIZED,
            format!(
                "the node JWT for {cert_node_id:?} is bound to another key than its certificate's"
            ),
        ));
    }
    if row.public_key_sha256.as_deref() != Some(spki.as_str()) {
        return Err((
            close_code::UNAUTHORIZED,
            format!("node {cert_node_id:?} joined with another key"),
        ));
    }
    let expires_s = outpost_trust::tls::not_after_unix(leaf)
        .map_err(|e| (close_code::UNAUTHORIZED, format!("node certificate: {e}")))?;
    let left_s = expires_s - state.now_ms() / 1000;
    let lifetime_s =
        i64::try_from(state.credentials.lifetimes().certificate.as_secs()).unwrap_or(i64::MAX);
    if left_s < lifetime_s / 3 {
        tracing::warn!(node_id = %cert_node_id, left_s, "the node's certificate expires soon; it renews it in this session");
    }
    Ok(Authenticated {
        node_id: cert_node_id,
        hello,
        send,
        key: spki,
        grpc_target: row.grpc_target,
        tls_server_name: row.tls_server_name,
    })
}

async fn handle(connection: quinn::Connection, state: Arc<HubState>) {
    let node = match authenticate(&connection, &state).await {
        Ok(ok) => ok,
        Err((code, reason)) => {
            state.metrics.session_refused(code);
            refuse(&connection, code, &reason);
            return;
        }
    };
    state.metrics.session_accepted();
    let link = link_for(&state, &connection, &node);
    let Authenticated {
        node_id,
        hello,
        mut send,
        key,
        ..
    } = node;
    let connection_id = link.connection_id();
    let (interval_ms, change) = {
        let mut fleet = state.fleet.liveness();
        let change = fleet.observe_heartbeat(&node_id, state.monotonic_ms());
        let ttl = fleet.assign_ttl_ms(&node_id);
        (FleetState::heartbeat_interval_ms(ttl), change)
    };
    state.publish(change);
    if let Some(caps) = &hello.capabilities
        && let Err(e) = state
            .store()
            .set_capabilities(&node_id, &caps.encode_to_vec())
            .await
    {
        tracing::warn!(node_id = %node_id, error = %e, "storing capabilities failed");
    }
    {
        let mut live = state.fleet.live.lock();
        let entry = live.entry(node_id.clone()).or_default();
        entry.capabilities = hello.capabilities.clone();
        entry.gpus = hello.capabilities.as_ref().and_then(|c| c.gpus.clone());
        entry.session_addr = connection.remote_address().to_string();
        entry.sessions += 1;
        entry.last_seq = 0;
        entry.last_heartbeat_ms = Some(state.now_ms());
    }
    apply_fence(
        &state,
        &node_id,
        hello.capabilities.as_ref().and_then(|c| c.gpus.as_ref()),
    );
    state.fleet.links().insert(&node_id, link.clone());
    if let Some(caps) = &hello.capabilities {
        crate::work::tasks::observe_capabilities(&state, &node_id, caps);
    }
    let channel = match state.fleet.heartbeat_channels().open(&node_id, |id| {
        outpost_proto::heartbeat_channel::channel_key(&connection, id)
    }) {
        Ok(channel) => Some(channel),
        Err(e) => {
            tracing::warn!(node_id = %node_id, error = %e, "no heartbeat channel for this session; heartbeats come as datagrams");
            None
        }
    };
    let node_jwt = match state
        .credentials
        .node_token(&node_id, &key, state.now_ms() / 1000)
    {
        Ok(token) => token,
        Err(e) => {
            tracing::warn!(node_id = %node_id, error = %e, "no fresh node JWT for this session");
            String::new()
        }
    };
    let ack = HelloAck {
        heartbeat_interval_ms: interval_ms,
        hub_id: "outpost-hub".into(),
        heartbeat_channel_id: channel.as_ref().map_or(0, |c| c.id()),
        node_jwt,
        node_certificate_lifetime_ms: u64::try_from(
            state.credentials.lifetimes().certificate.as_millis(),
        )
        .unwrap_or(u64::MAX),
    };
    if framing::write_frame(&mut send, &ack).await.is_err() {
        state
            .fleet
            .links()
            .remove_if_current(&node_id, connection_id);
        return;
    }
    let _ = send.finish();
    tracing::info!(node_id = %node_id, remote = %connection.remote_address(), interval_ms, "node session up");
    if state.tools.preinstall() {
        tokio::spawn(crate::work::tools::install_all_on(
            state.clone(),
            node_id.clone(),
            link.clone(),
        ));
    }

    // Events on uni streams in their own task, so the datagram path below is a single await.
    let events = {
        let (state, node_id, connection) = (state.clone(), node_id.clone(), connection.clone());
        let session = Arc::new(SessionPeer {
            key,
            link: link.clone(),
            last_renewal: parking_lot::Mutex::new(None),
        });
        tokio::spawn(async move {
            while let Ok(mut recv) = connection.accept_uni().await {
                let (state, node_id, session) = (state.clone(), node_id.clone(), session.clone());
                tokio::spawn(async move {
                    match framing::read_frame::<NodeEvent>(&mut recv, MAX_EVENT).await {
                        Ok(NodeEvent {
                            kind: Some(node_event::Kind::AgentOutputStream(header)),
                        }) => read_agent_output(&state, &node_id, header, recv).await,
                        Ok(NodeEvent {
                            kind: Some(node_event::Kind::TaskOutputStream(header)),
                        }) => read_task_output(&state, &node_id, header, recv).await,
                        Ok(event) => on_event(&state, &node_id, &session, event).await,
                        Err(e) => {
                            // Told at once (not by a silent drop), so the node can report
                            // what it could not deliver instead of sending it again.
                            let _ = recv.stop(EVENT_REFUSED.into());
                            tracing::warn!(node_id = %node_id, error = %e, "event refused")
                        }
                    }
                });
            }
        })
    };
    // Until the first channel heartbeat arrives the node sends each heartbeat both ways; then it
    // is told to use the channel alone.
    let confirm = channel.as_ref().map(|channel| {
        let (first, link, node_id) = (channel.first_heartbeat(), link.clone(), node_id.clone());
        tokio::spawn(async move {
            first.await;
            if let Err(e) = link.set_heartbeat_channel(true).await {
                tracing::debug!(node_id = %node_id, error = %e, "confirming the heartbeat channel failed");
            }
        })
    });
    while let Ok(bytes) = connection.read_datagram().await {
        match Heartbeat::decode(bytes) {
            Ok(heartbeat) => {
                on_heartbeat(&state, &node_id, heartbeat, HeartbeatTransport::Datagram)
            }
            Err(e) => {
                tracing::debug!(node_id = %node_id, error = %e, "malformed heartbeat datagram dropped")
            }
        }
    }
    events.abort();
    if let Some(confirm) = confirm {
        confirm.abort();
    }
    drop(channel);
    state
        .fleet
        .links()
        .remove_if_current(&node_id, connection_id);
    tracing::info!(node_id = %node_id, reason = %connection.close_reason().map(|r| r.to_string()).unwrap_or_default(), "node session closed");
}

/// The fence a GPU snapshot asks for: its reason when the probe failed after working.
fn fence_reason(gpus: Option<&outpost_proto::v1::GpuSnapshot>) -> Option<String> {
    gpus.filter(|g| g.fenced)
        .map(|g| g.unavailable_reason.clone())
}

fn apply_fence(state: &HubState, node_id: &str, gpus: Option<&outpost_proto::v1::GpuSnapshot>) {
    let fence = fence_reason(gpus);
    let change = state.fleet.liveness().set_fenced(node_id, fence);
    state.publish(change);
}

/// A heartbeat from the session of `node_id`, come by `transport`.
pub fn on_heartbeat(
    state: &HubState,
    node_id: &str,
    heartbeat: Heartbeat,
    transport: HeartbeatTransport,
) {
    if heartbeat.node_id != node_id {
        state.metrics.heartbeat_foreign();
        tracing::warn!(session = %node_id, claimed = %heartbeat.node_id, "heartbeat for another node dropped");
        return;
    }
    let now = state.now_ms();
    {
        let mut live = state.fleet.live.lock();
        let entry = live.entry(node_id.to_string()).or_default();
        // Datagrams may arrive out of order: keep the newest.
        if heartbeat.seq != 0 && heartbeat.seq <= entry.last_seq {
            state.metrics.heartbeat_stale();
            return;
        }
        entry.last_seq = heartbeat.seq;
        entry.heartbeats += 1;
        entry.heartbeat_transport = Some(transport);
        entry.last_heartbeat_ms = Some(now);
        entry.load = heartbeat.load;
        if heartbeat.gpus.is_some() {
            entry.gpus.clone_from(&heartbeat.gpus);
        }
    }
    state.metrics.heartbeat_accepted();
    let monotonic = state.monotonic_ms();
    crate::work::tasks::observe_heartbeat(state, node_id, &heartbeat, monotonic);
    state.agents.heartbeat(node_id, &heartbeat.running_agents);
    let fence = fence_reason(heartbeat.gpus.as_ref());
    let (came_back, fence_change) = {
        let mut fleet = state.fleet.liveness();
        (
            fleet.observe_heartbeat(node_id, monotonic),
            fleet.set_fenced(node_id, fence),
        )
    };
    state.publish(came_back.into_iter().chain(fence_change));
    let mut pending = state.fleet.heartbeat_times.lock();
    match pending.get_mut(node_id) {
        Some(at) => *at = now,
        None => {
            pending.insert(node_id.to_string(), now);
        }
    }
}

/// What the hub knows of a session's peer besides its id.
struct SessionPeer {
    /// Hex SHA-256 of the key its certificate holds.
    key: String,
    /// Its commands link.
    link: Arc<dyn NodeLink>,
    /// When its certificate was last renewed in this session (renewals are spaced out, so a
    /// node cannot keep the CA signing).
    last_renewal: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// A node asks for a new certificate for the key its session authenticated with: signed and
/// handed back with a fresh JWT. A CSR for any other key is refused (a renewal never moves a
/// node to a new key; joining again does).
async fn renew_certificate(
    state: &HubState,
    node_id: &str,
    session: &SessionPeer,
    request: &outpost_proto::v1::CertificateRequest,
) -> Result<(), String> {
    let spacing = (state.credentials.lifetimes().certificate / 10).min(Duration::from_secs(60));
    {
        let mut last = session.last_renewal.lock();
        if last.is_some_and(|at| at.elapsed() < spacing) {
            return Err(format!(
                "renewed less than {} ago in this session",
                humantime::format_duration(spacing)
            ));
        }
        *last = Some(std::time::Instant::now());
    }
    let der =
        crate::credentials::pki::csr_der_from_pem(&request.csr_pem).map_err(|e| e.to_string())?;
    // Refused before the CA signs anything.
    if crate::credentials::pki::csr_key_sha256(&der).map_err(|e| e.to_string())? != session.key {
        return Err("the request is for another key than the session's".into());
    }
    let (certificate_pem, key) = state
        .credentials
        .sign_node_csr(&der, node_id)
        .map_err(|e| e.to_string())?;
    let node_jwt = state
        .credentials
        .node_token(node_id, &key, state.now_ms() / 1000)
        .map_err(|e| e.to_string())?;
    session
        .link
        .send_credentials(outpost_proto::v1::NodeCredentials {
            certificate_pem,
            node_jwt,
        })
        .await
        .map_err(|e| format!("handing over the new certificate: {e}"))
}

/// Reads one agent's output stream (opened by `header`) to its end, into the agent's log.
async fn read_agent_output(
    state: &HubState,
    node_id: &str,
    header: outpost_proto::v1::AgentOutputStream,
    mut recv: quinn::RecvStream,
) {
    let owned = matches!(
        state.store().get_agent(&header.agent_id).await,
        Ok(Some(row)) if row.node_id == node_id && u64::try_from(row.run).ok() == Some(header.run)
    );
    if !owned {
        let _ = recv.stop(EVENT_REFUSED.into());
        tracing::warn!(node_id = %node_id, agent_id = %header.agent_id, "output of an agent this node does not run refused");
        return;
    }
    read_output(recv, |stream, text| {
        state.agents.logs.push(&header.agent_id, stream, text);
    })
    .await;
}

/// Reads one native task attempt's output stream to its end, into the task's log (refused
/// unless the attempt is this node's and still going).
async fn read_task_output(
    state: &HubState,
    node_id: &str,
    header: outpost_proto::v1::TaskOutputStream,
    mut recv: quinn::RecvStream,
) {
    let owned = matches!(
        state.store().get_task(&header.task_id).await,
        Ok(Some(row)) if row.node_id == node_id
            && row.attempts == i64::from(header.attempt)
            && !row.status.is_terminal()
    );
    if !owned {
        let _ = recv.stop(EVENT_REFUSED.into());
        tracing::warn!(node_id = %node_id, task_id = %header.task_id, "output of a task attempt this node does not run refused");
        return;
    }
    read_output(recv, |stream, text| {
        state.tasks.logs.push(&header.task_id, stream, text);
    })
    .await;
}

/// Reads `AgentOutput` frames to the stream's end. The stream's QUIC flow control is the
/// backpressure: the hub reads one frame at a time.
async fn read_output(mut recv: quinn::RecvStream, mut keep: impl FnMut(&str, String)) {
    while let Ok(chunk) = framing::read_frame::<outpost_proto::v1::AgentOutput>(
        &mut recv,
        outpost_proto::limits::MAX_AGENT_FRAME,
    )
    .await
    {
        let stream = if chunk.stream == "stderr" {
            "stderr"
        } else {
            "stdout"
        };
        // Valid UTF-8 (the usual case) is kept without a copy.
        let text = String::from_utf8(chunk.data)
            .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned());
        keep(stream, text);
    }
}

async fn on_event(state: &HubState, node_id: &str, session: &SessionPeer, event: NodeEvent) {
    match event.kind {
        Some(node_event::Kind::CertificateRequest(request)) => {
            match renew_certificate(state, node_id, session, &request).await {
                Ok(()) => tracing::info!(node_id = %node_id, "node certificate renewed"),
                Err(e) => {
                    tracing::warn!(node_id = %node_id, error = %e, "node certificate not renewed")
                }
            }
        }
        Some(node_event::Kind::Heartbeat(heartbeat)) => {
            on_heartbeat(state, node_id, heartbeat, HeartbeatTransport::Stream)
        }
        Some(node_event::Kind::Capabilities(caps)) => {
            if let Err(e) = state
                .store()
                .set_capabilities(node_id, &caps.encode_to_vec())
                .await
            {
                tracing::warn!(node_id = %node_id, error = %e, "storing capabilities failed");
            }
            apply_fence(state, node_id, caps.gpus.as_ref());
            crate::work::tasks::observe_capabilities(state, node_id, &caps);
            state
                .fleet
                .live
                .lock()
                .entry(node_id.to_string())
                .or_default()
                .capabilities = Some(caps);
        }
        Some(node_event::Kind::TaskResult(result)) => {
            crate::work::tasks::on_result(state, node_id, result).await;
        }
        Some(node_event::Kind::AgentStatus(status)) => {
            crate::work::agents::on_status(state, node_id, status).await;
        }
        Some(node_event::Kind::AgentOutputStream(_) | node_event::Kind::TaskOutputStream(_)) => {
            tracing::debug!(node_id = %node_id, "an output stream header out of place dropped");
        }
        None => tracing::debug!(node_id = %node_id, "empty event dropped"),
    }
}

#[cfg(test)]
mod admission_tests {
    use super::*;

    #[test]
    fn handshakes_are_retried_under_load_and_refused_at_the_limit() {
        assert_eq!(admission(0, false), Admission::Accept);
        assert_eq!(
            admission(RETRY_ABOVE_HANDSHAKES - 1, false),
            Admission::Accept
        );
        assert_eq!(admission(RETRY_ABOVE_HANDSHAKES, false), Admission::Retry);
        assert_eq!(admission(RETRY_ABOVE_HANDSHAKES, true), Admission::Accept);
        assert_eq!(admission(MAX_HANDSHAKES, true), Admission::Refuse);
    }
}
