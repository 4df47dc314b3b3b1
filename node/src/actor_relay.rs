//! The actor relay: the hub's `ActorService`, served to this node's agents on a Unix socket in
//! the node's data dir and relayed to the hub over internal gRPC (AgentHub's "relayed over
//! internal gRPC"), so `outpost actor …` inside an agent needs no route to the hub.
//!
//! The relay adds no authority of its own: every call must carry an actor credential (the one
//! the hub minted for the agent's run, in the process's `OUTPOST_TOKEN`), which the relay passes
//! on unchanged and the hub verifies. A call without one, or with any other kind of credential,
//! is refused here before anything is sent. The socket is owner-only (the node's user, which
//! its agents run as).

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_proto::v1::actor_service_client::ActorServiceClient;
use outpost_proto::v1::actor_service_server::{ActorService, ActorServiceServer};
use outpost_proto::v1::{
    AckRequest, AckResponse, ActorMessage, ActorRef, CreateTimeTriggerRequest, InboxRequest,
    InboxResponse, ListDeadLettersRequest, ListPermissionReviewsRequest,
    ListPermissionReviewsResponse, ListTimeTriggersResponse, MessageRef, PermissionRequest,
    PermissionReview, RespondPermissionReviewRequest, ReviewRef, SendMessageRequest,
    SendMessageResponse, TeamMembersResponse, TimeTrigger, TriggerRef, WaitPermissionReviewRequest,
};
use outpost_trust::auth::{Claims, Role};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// The socket's file name in the data dir.
pub const SOCKET_FILE: &str = "actor.sock";

/// The longest a relayed call may take (the hub's waiting calls block up to 25 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest message relayed either way.
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Where the relay listens for a node with this data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// The relay: a client of the hub's actor service.
#[derive(Debug, Clone)]
pub struct ActorRelay {
    hub: ActorServiceClient<Channel>,
}

impl ActorRelay {
    /// A relay to the hub at `endpoint` (connected on first use, and again after a failure).
    pub fn new(endpoint: Endpoint) -> Self {
        let channel = endpoint.timeout(CALL_TIMEOUT).connect_lazy();
        Self {
            hub: ActorServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        }
    }

    /// The call to send on: the same message with the caller's actor credential, or the refusal.
    fn forward<T>(request: Request<T>) -> Result<Request<T>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .cloned()
            .ok_or_else(|| {
                Status::unauthenticated(
                    "the actor relay needs the agent's actor credential (OUTPOST_TOKEN)",
                )
            })?;
        let token = authorization
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .unwrap_or_default();
        let role = Claims::unverified(token.trim()).map(|c| c.role);
        if role != Some(Role::Actor) {
            return Err(Status::permission_denied(format!(
                "the actor relay carries actor credentials only (this is {}); other callers reach the hub directly",
                role.map_or_else(|| "not a JWT".to_string(), |r| format!("a {r} credential"))
            )));
        }
        let mut forwarded = Request::new(request.into_inner());
        forwarded
            .metadata_mut()
            .insert("authorization", authorization);
        Ok(forwarded)
    }
}

/// Each method: refuse or pass the call on, and hand back the hub's answer.
macro_rules! relay_methods {
    ($($method:ident($request:ty) -> $response:ty;)*) => {
        #[tonic::async_trait]
        impl ActorService for ActorRelay {
            $(
                async fn $method(
                    &self,
                    request: Request<$request>,
                ) -> Result<Response<$response>, Status> {
                    let forwarded = Self::forward(request)?;
                    let answer = self.hub.clone().$method(forwarded).await?;
                    Ok(Response::new(answer.into_inner()))
                }
            )*
        }
    };
}

relay_methods! {
    send_message(SendMessageRequest) -> SendMessageResponse;
    inbox(InboxRequest) -> InboxResponse;
    ack(AckRequest) -> AckResponse;
    team_members(ActorRef) -> TeamMembersResponse;
    list_dead_letters(ListDeadLettersRequest) -> InboxResponse;
    requeue(MessageRef) -> ActorMessage;
    list_time_triggers(ActorRef) -> ListTimeTriggersResponse;
    create_time_trigger(CreateTimeTriggerRequest) -> TimeTrigger;
    delete_time_trigger(TriggerRef) -> TimeTrigger;
    request_permission(PermissionRequest) -> PermissionReview;
    get_permission_review(ReviewRef) -> PermissionReview;
    wait_permission_review(WaitPermissionReviewRequest) -> PermissionReview;
    list_permission_reviews(ListPermissionReviewsRequest) -> ListPermissionReviewsResponse;
    respond_permission_review(RespondPermissionReviewRequest) -> PermissionReview;
}

/// A channel to a node's relay on its socket (plain gRPC: the socket is local and owner-only;
/// the credential authenticates), for `outpost actor …` inside an agent.
pub async fn connect(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://actor-relay")
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Serves `relay` on the Unix socket at `path` (replacing a stale one, owner-only) until
/// `shutdown`.
pub fn serve(
    relay: ActorRelay,
    path: &Path,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let service = ActorServiceServer::new(relay)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let path = path.to_path_buf();
    Ok(tokio::spawn(async move {
        let stopped = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stopped)
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the actor relay stopped");
        }
        let _ = std::fs::remove_file(&path);
    }))
}

/// A message taken for a WASM actor run, and how to settle it.
#[derive(Debug)]
pub struct TakenMessage {
    /// What `on-message` gets.
    pub handed: outpost_sandbox::ActorMessage,
    hub: ActorServiceClient<Channel>,
    actor_id: String,
    token: String,
}

/// How long one take waits at the hub for a message.
const TAKE_WAIT_MS: u64 = 20_000;

/// A WASM actor agent's mailbox: starts taking `agent_id`'s messages for run `run` from the hub,
/// one at a time, with the run's own actor credential. The receiver yields each one; the task
/// (to abort when the run ends) takes the next only once the last was received.
pub fn open_mailbox(
    hub: ActorRelay,
    agent_id: &str,
    run: u64,
    token: &str,
) -> (
    tokio::sync::mpsc::Receiver<TakenMessage>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let (actor_id, token) = (agent_id.to_string(), token.to_string());
    let poller = tokio::spawn(async move {
        let mut client = hub.hub.clone();
        loop {
            // Take a message only when the run can hold it.
            let Ok(permit) = tx.reserve().await else {
                return;
            };
            let taken = client
                .inbox(outpost_trust::grpc_channel::with_bearer(
                    InboxRequest {
                        actor_id: actor_id.clone(),
                        run_id: run.to_string(),
                        limit: 1,
                        wait_ms: TAKE_WAIT_MS,
                        auto_ack: false,
                    },
                    &token,
                ))
                .await;
            match taken {
                Ok(answer) => {
                    if let Some(m) = answer.into_inner().messages.into_iter().next() {
                        permit.send(TakenMessage {
                            handed: outpost_sandbox::ActorMessage {
                                id: m.id,
                                sender: m.from,
                                team: m.team,
                                payload: m.payload,
                            },
                            hub: client.clone(),
                            actor_id: actor_id.clone(),
                            token: token.clone(),
                        });
                    }
                }
                Err(status) => {
                    tracing::warn!(agent_id = %actor_id, error = %status.message(), "taking an actor agent's messages failed; trying again");
                    drop(permit);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    (rx, poller)
}

impl TakenMessage {
    /// After `on-message`: when it succeeded, sends what it queued (each with a key made from
    /// this message's id, so a redelivery after a crash sends nothing twice) and acks the
    /// message; otherwise leaves it for redelivery. What happened, as a line for the run's
    /// output.
    pub async fn finish(&self, report: &outpost_sandbox::CallReport) -> String {
        let id = self.handed.id;
        if report.result.is_err() {
            return format!("message {id} not acked: it comes again");
        }
        let mut hub = self.hub.clone();
        let mut failed = Vec::new();
        for (i, queued) in report.sent.iter().enumerate() {
            let sent = hub
                .send_message(outpost_trust::grpc_channel::with_bearer(
                    SendMessageRequest {
                        actor_id: self.actor_id.clone(),
                        to: queued.to.clone(),
                        payload: queued.payload.clone(),
                        idempotency_key: format!("on-message:{id}:{i}"),
                    },
                    &self.token,
                ))
                .await;
            if let Err(status) = sent {
                failed.push(format!("to {}: {}", queued.to, status.message()));
            }
        }
        if !failed.is_empty() {
            // Not acked: the message comes again, and the sends that did go through are not
            // repeated (their keys).
            return format!(
                "message {id} not acked: {} of {} sends failed ({})",
                failed.len(),
                report.sent.len(),
                failed.join("; ")
            );
        }
        let acked = hub
            .ack(outpost_trust::grpc_channel::with_bearer(
                AckRequest {
                    actor_id: self.actor_id.clone(),
                    message_id: id,
                },
                &self.token,
            ))
            .await;
        match acked {
            Ok(_) => format!(
                "message {id} from {} handled; {} sent",
                self.handed.sender,
                report.sent.len()
            ),
            Err(status) => format!(
                "message {id} handled, but the ack failed: {}",
                status.message()
            ),
        }
    }
}
