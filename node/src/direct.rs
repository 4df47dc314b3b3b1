//! The direct route: the node serves `NodeService` over gRPC on its own `[internal_grpc] listen`
//! (when `[node] grpc_target` says where the hub reaches it), beside the standard health and
//! reflection services, so the hub can send its commands that way instead of over the session.
//!
//! TLS is the node's own certificate; a caller that presents a certificate must present the
//! hub's ([`outpost_trust::direct_route::node_server_config`]), and `Command` refuses a caller
//! that presented none, so only the hub commands the node while `grpcurl -insecure node:port
//! list` and health probes answer anyone. Commands are answered exactly as over the session
//! ([`crate::session::answer`]); events (results, agent status, output) still go over the
//! session. Connections, handshake time and message sizes are bounded.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use outpost_proto::v1::node_service_server::{NodeService, NodeServiceServer};
use outpost_proto::v1::{HubCommand, NodeReply};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status};

use crate::session::SessionContext;

/// Connections the direct route holds at once (the hub needs one; the rest are probes).
const MAX_CONNECTIONS: usize = 32;
/// Time a caller has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest command (a 32 MiB component and its policy, with room to spare).
const MAX_COMMAND_BYTES: usize = 40 * 1024 * 1024;
/// Concurrent streams on one connection.
const MAX_STREAMS: u32 = 64;

/// Answers the hub's commands.
struct DirectService {
    ctx: Arc<SessionContext>,
}

#[tonic::async_trait]
impl NodeService for DirectService {
    async fn command(&self, request: Request<HubCommand>) -> Result<Response<NodeReply>, Status> {
        // A certificate is there only if the TLS verifier took it for the hub's.
        if request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(Status::unauthenticated(
                "the direct route takes commands only from the hub (present the hub's certificate)",
            ));
        }
        let command = request.into_inner();
        let controls = self.ctx.controls.lock().clone();
        let kind = crate::session::answer(command.kind, controls.as_ref(), &self.ctx).await;
        self.ctx
            .stats
            .commands_handled
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(NodeReply {
            id: command.id,
            kind: Some(kind),
        }))
    }
}

/// A TLS connection holding one of the route's connection permits while it lives.
struct Held {
    stream: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Held {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Held {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The TLS configuration from the node's current credentials (renewals keep the key, which is
/// what the hub checks).
fn server_config(ctx: &SessionContext) -> Result<rustls::ServerConfig, String> {
    use outpost_trust::tls;
    let credentials = ctx.credentials.lock();
    let identity = &credentials.identity;
    let chain = tls::certs_from_pem(&identity.certificate_pem, "node certificate")
        .map_err(|e| e.to_string())?;
    let key = tls::key_from_pem(&identity.key_pem, "node key").map_err(|e| e.to_string())?;
    outpost_trust::direct_route::node_server_config(chain, key, &identity.ca_pem, &ctx.server_name)
        .map_err(|e| e.to_string())
}

/// Accepts connections, at most [`MAX_CONNECTIONS`] at once, each handshake in a task of its
/// own with [`HANDSHAKE_TIMEOUT`].
async fn accept(
    ctx: Arc<SessionContext>,
    listener: TcpListener,
    ready: mpsc::Sender<Result<Held, std::io::Error>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(error = %e, "direct route: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "direct route: {MAX_CONNECTIONS} connections open; closed a new one");
            continue;
        };
        let config = match server_config(&ctx) {
            Ok(config) => Arc::new(config),
            Err(e) => {
                tracing::error!(error = %e, "direct route: no TLS configuration");
                continue;
            }
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => {
                    let _ = ready
                        .send(Ok(Held {
                            stream,
                            _permit: permit,
                        }))
                        .await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "direct route: handshake refused"),
                Err(_) => tracing::debug!(%peer, "direct route: handshake timed out"),
            }
        });
    }
}

/// Binds the direct route's listener.
pub async fn bind(listen: &str) -> Result<TcpListener, crate::NodeError> {
    TcpListener::bind(listen).await.map_err(|e| {
        crate::NodeError::Config(format!(
            "[internal_grpc] listen {listen:?}: the direct route cannot listen there: {e}"
        ))
    })
}

/// Serves the direct route on `listener` until `shutdown`; records the bound address in the
/// context so capabilities report it.
pub fn serve(
    ctx: Arc<SessionContext>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), crate::NodeError> {
    let addr = listener
        .local_addr()
        .map_err(|e| crate::NodeError::Config(format!("direct route: {e}")))?;
    *ctx.direct_route.lock() = Some(addr);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(outpost_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("outpost.v1.NodeService")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
    };
    let reflection_error = |e: tonic_reflection::server::Error| {
        crate::NodeError::Config(format!("direct route: reflection: {e}"))
    };
    // Both revisions: older grpcurl builds and grpcio's reflection client speak only v1alpha.
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let reflection = reflection().build_v1().map_err(reflection_error)?;
    let service = NodeServiceServer::new(DirectService { ctx: ctx.clone() })
        .max_decoding_message_size(MAX_COMMAND_BYTES);
    let (ready, incoming) = mpsc::channel(MAX_CONNECTIONS);
    tokio::spawn(accept(ctx, listener, ready, shutdown.clone()));
    let task = tokio::spawn(async move {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<NodeServiceServer<DirectService>>()
            .await;
        let mut shutdown = shutdown;
        let signal = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        let served = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS)
            .http2_max_pending_accept_reset_streams(Some(32))
            .http2_max_header_list_size(16 * 1024)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(incoming),
                signal,
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "direct route stopped");
        }
    });
    tracing::info!(%addr, "direct route (NodeService) listening");
    Ok((addr, task))
}
