//! The direct route to a node (the seed's model): when a node is registered with a
//! `grpc_target` and says it serves `NodeService` there, the hub sends its commands over gRPC to
//! that target instead of over the node's QUIC session. The session stays: it authenticates the
//! node, carries heartbeats and events (results, agent status and output), and a link is
//! replaced or closed with it. Both routes are [`NodeLink`]s, so nothing above knows which one
//! a node uses.
//!
//! The heartbeat settings (interval, channel) change the session itself, so they still go over
//! it; every other command takes the direct route.
//!
//! TLS: the hub presents its own certificate and accepts only the key the node joined with
//! ([`outpost_trust::direct_route`]); `tls_server_name`, when registered, is the SNI sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use outpost_proto::v1::node_service_client::NodeServiceClient;
use outpost_proto::v1::{HubCommand, hub_command, node_reply};
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use crate::fleet::links::{LinkError, NodeLink, QuicLink, answer_to, command_timeout};

/// Largest command sent (a 32 MiB component and its policy, with room to spare).
const MAX_COMMAND_BYTES: usize = 40 * 1024 * 1024;
/// Largest answer read.
const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Commands over the node's `NodeService`, everything else over its session.
#[derive(Debug)]
pub struct DirectLink {
    session: QuicLink,
    client: NodeServiceClient<Channel>,
    target: String,
    next_id: AtomicU64,
}

/// What the hub needs to dial a node's direct route.
#[derive(Debug, Clone, Copy)]
pub struct DirectRoute<'a> {
    /// The node.
    pub node_id: &'a str,
    /// The registry's `grpc_target` (`https://host:port`).
    pub target: &'a str,
    /// The registry's `tls_server_name` (empty: the target's host).
    pub tls_server_name: &'a str,
    /// Hex SHA-256 of the key the node joined with.
    pub key_sha256: &'a str,
    /// The hub's certificate and key, PEM.
    pub hub_cert_pem: &'a str,
    /// The hub's key, PEM.
    pub hub_key_pem: &'a str,
}

impl DirectLink {
    /// A link sending commands to `route` (connected on first use, again after a failure) and
    /// using `session` for the rest.
    pub fn new(session: QuicLink, route: DirectRoute<'_>) -> Result<Self, String> {
        use outpost_trust::tls;
        let target = route.target;
        let authority = target
            .split_once("://")
            .map_or(target, |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let host = outpost_trust::grpc_channel::url_host(target)
            .ok_or_else(|| format!("grpc_target {target:?} has no host"))?;
        let sni = if route.tls_server_name.is_empty() {
            host
        } else {
            route.tls_server_name.to_string()
        };
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|e| format!("tls_server_name {sni:?}: {e}"))?;
        let chain = tls::certs_from_pem(route.hub_cert_pem, "hub certificate")
            .map_err(|e| e.to_string())?;
        let key = tls::key_from_pem(route.hub_key_pem, "hub key").map_err(|e| e.to_string())?;
        let config = Arc::new(
            outpost_trust::direct_route::hub_client_config(
                chain,
                key,
                route.node_id,
                route.key_sha256,
            )
            .map_err(|e| e.to_string())?,
        );
        let dial = authority.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let (config, dial, server_name) = (config.clone(), dial.clone(), server_name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(dial.as_str()).await?;
                tcp.set_nodelay(true)?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(server_name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        // The scheme only names the connection to tonic: TLS is the connector's.
        let channel = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| format!("grpc_target {target:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector);
        let client = NodeServiceClient::new(channel)
            .max_encoding_message_size(MAX_COMMAND_BYTES)
            .max_decoding_message_size(MAX_REPLY_BYTES);
        Ok(Self {
            session,
            client,
            target: target.to_string(),
            next_id: AtomicU64::new(1),
        })
    }
}

#[async_trait]
impl NodeLink for DirectLink {
    async fn command_within(
        &self,
        kind: hub_command::Kind,
        at_least: Duration,
    ) -> Result<node_reply::Kind, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let command = HubCommand {
            id,
            kind: Some(kind),
        };
        let timeout = command_timeout(prost::Message::encoded_len(&command)).max(at_least);
        let mut request = tonic::Request::new(command);
        request.set_timeout(timeout);
        let mut client = self.client.clone();
        let reply = match tokio::time::timeout(timeout, client.command(request)).await {
            Err(_) => return Err(LinkError::Timeout(timeout)),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(LinkError::Timeout(timeout));
            }
            Ok(Err(status)) => {
                return Err(LinkError::Transport(format!(
                    "direct route {}: {}",
                    self.target,
                    status.message()
                )));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        answer_to(id, reply)
    }

    // The heartbeat settings belong to the session they change: they go over it, so they never
    // reach the node before its session loop is ready for them.
    async fn set_heartbeat_interval(&self, interval_ms: u32) -> Result<(), LinkError> {
        self.session.set_heartbeat_interval(interval_ms).await
    }

    async fn set_heartbeat_channel(&self, use_channel: bool) -> Result<(), LinkError> {
        self.session.set_heartbeat_channel(use_channel).await
    }

    fn route(&self) -> &'static str {
        "direct"
    }

    fn rtt(&self) -> Option<Duration> {
        self.session.rtt()
    }

    fn remote(&self) -> String {
        self.target.clone()
    }

    fn connection_id(&self) -> u64 {
        self.session.connection_id()
    }

    fn close(&self, reason: &str) {
        self.session.close(reason);
    }
}
