//! The gRPC actor service over [`crate::actors`] (what `outpost actor …` calls).
//!
//! Who may: an actor credential acts only as its own actor (`Subject::Actor`); operators act for
//! any actor; only `admin` answers reviews — an actor never approves its own request.

use outpost_proto::v1::actor_service_server::{ActorService, ActorServiceServer};
use outpost_proto::v1::{
    AckRequest, AckResponse, ActorMessage, ActorRef, CreateTimeTriggerRequest, InboxRequest,
    InboxResponse, ListDeadLettersRequest, ListPermissionReviewsRequest,
    ListPermissionReviewsResponse, ListTimeTriggersResponse, MessageRef, PermissionRequest,
    PermissionReview, RespondPermissionReviewRequest, ReviewRef, SendMessageRequest,
    SendMessageResponse, TeamMembersResponse, TimeTrigger, TriggerRef, WaitPermissionReviewRequest,
};
use tonic::{Request, Response, Status};

use crate::actors::{mailbox, reviews, triggers};
use crate::api::actor_views::{member_view, message_view, option_row, review_view, trigger_view};
use crate::api::grpc::{HubGrpc, Subject};

impl HubGrpc {
    /// The actor service.
    pub fn actor_service(&self) -> ActorServiceServer<Self> {
        ActorServiceServer::new(self.clone())
    }
}

#[tonic::async_trait]
impl ActorService for HubGrpc {
    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let actor = request.get_ref().actor_id.clone();
        self.write(&request, Subject::Actor(&actor), "send messages")
            .await?;
        let r = request.into_inner();
        crate::audit::note_target(&r.to);
        let sent = mailbox::send(
            self.state_arc(),
            mailbox::SendRequest {
                sender: r.actor_id,
                to: r.to,
                payload: r.payload,
                idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
            },
        )
        .await?;
        Ok(Response::new(SendMessageResponse {
            messages: sent.messages.iter().map(message_view).collect(),
            duplicate: sent.duplicate,
        }))
    }

    async fn inbox(
        &self,
        request: Request<InboxRequest>,
    ) -> Result<Response<InboxResponse>, Status> {
        let actor = request.get_ref().actor_id.clone();
        // A hand-out changes the messages' state: a write.
        self.write(&request, Subject::Actor(&actor), "read the inbox")
            .await?;
        let r = request.into_inner();
        let messages = mailbox::inbox(
            self.state(),
            &mailbox::InboxRequest {
                actor_id: r.actor_id,
                run_id: r.run_id,
                limit: r.limit,
                wait_ms: r.wait_ms,
                auto_ack: r.auto_ack,
            },
        )
        .await?;
        Ok(Response::new(InboxResponse {
            messages: messages.iter().map(message_view).collect(),
        }))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let actor = request.get_ref().actor_id.clone();
        self.write(&request, Subject::Actor(&actor), "ack messages")
            .await?;
        let id = request.get_ref().message_id;
        crate::audit::note_target(&id.to_string());
        let outcomes = mailbox::ack(self.state(), &actor, &[id]).await?;
        let Some(&outcome) = outcomes.first() else {
            return Err(Status::internal("the store answered no outcome"));
        };
        let already_acked = mailbox::ack_result(id, outcome)?;
        Ok(Response::new(AckResponse {
            message_id: id,
            already_acked,
        }))
    }

    async fn team_members(
        &self,
        request: Request<ActorRef>,
    ) -> Result<Response<TeamMembersResponse>, Status> {
        let actor = request.get_ref().actor_id.clone();
        self.read(&request, Subject::Actor(&actor), "list team members")
            .await?;
        let members = mailbox::team_members(self.state(), &actor).await?;
        Ok(Response::new(TeamMembersResponse {
            members: members.iter().map(member_view).collect(),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<InboxResponse>, Status> {
        let actor = request.get_ref().actor_id.clone();
        let subject = if actor.is_empty() {
            Subject::Reviews
        } else {
            Subject::Actor(&actor)
        };
        self.read(&request, subject, "list dead letters").await?;
        let limit = match request.get_ref().limit {
            0 => 1_000,
            n => n,
        };
        let dead = mailbox::dead_letters(
            self.state(),
            (!actor.is_empty()).then_some(actor.as_str()),
            limit,
        )
        .await?;
        Ok(Response::new(InboxResponse {
            messages: dead.iter().map(message_view).collect(),
        }))
    }

    async fn requeue(
        &self,
        request: Request<MessageRef>,
    ) -> Result<Response<ActorMessage>, Status> {
        let id = request.get_ref().message_id;
        crate::audit::note_target(&id.to_string());
        // Whose message it is decides who may requeue it: authenticate first, then look.
        let claims = crate::api::grpc::authenticate(self.state(), &request).await?;
        let message = self
            .state()
            .store()
            .get_message(id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let recipient = message.map(|m| m.recipient).unwrap_or_default();
        crate::api::access::permit(
            &claims,
            crate::api::access::Access::Write,
            Subject::Actor(&recipient),
            "requeue messages",
        )
        .map_err(|e| Status::permission_denied(e.to_string()))?;
        let message = mailbox::requeue(self.state(), id).await?;
        Ok(Response::new(message_view(&message)))
    }

    async fn list_time_triggers(
        &self,
        request: Request<ActorRef>,
    ) -> Result<Response<ListTimeTriggersResponse>, Status> {
        let actor = request.get_ref().actor_id.clone();
        self.read(&request, Subject::Actor(&actor), "list time triggers")
            .await?;
        let list = triggers::list(self.state(), Some(&actor)).await?;
        Ok(Response::new(ListTimeTriggersResponse {
            triggers: list.iter().map(trigger_view).collect(),
        }))
    }

    async fn create_time_trigger(
        &self,
        request: Request<CreateTimeTriggerRequest>,
    ) -> Result<Response<TimeTrigger>, Status> {
        let actor = request.get_ref().actor_id.clone();
        self.write(&request, Subject::Actor(&actor), "create time triggers")
            .await?;
        let r = request.into_inner();
        let trigger = triggers::create(
            self.state(),
            triggers::CreateTrigger {
                actor_id: r.actor_id,
                cron: r.cron,
                every: r.every,
                payload: r.payload,
            },
        )
        .await?;
        crate::audit::note_target(&trigger.id);
        Ok(Response::new(trigger_view(&trigger)))
    }

    async fn delete_time_trigger(
        &self,
        request: Request<TriggerRef>,
    ) -> Result<Response<TimeTrigger>, Status> {
        let id = request.get_ref().trigger_id.clone();
        crate::audit::note_target(&id);
        let claims = crate::api::grpc::authenticate(self.state(), &request).await?;
        let trigger = self
            .state()
            .store()
            .get_trigger(&id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let owner = trigger
            .as_ref()
            .map(|t| t.actor_id.clone())
            .unwrap_or_default();
        crate::api::access::permit(
            &claims,
            crate::api::access::Access::Write,
            Subject::Actor(&owner),
            "delete time triggers",
        )
        .map_err(|e| Status::permission_denied(e.to_string()))?;
        let trigger = triggers::get(self.state(), &id).await?;
        triggers::delete(self.state(), &id).await?;
        Ok(Response::new(trigger_view(&trigger)))
    }

    async fn request_permission(
        &self,
        request: Request<PermissionRequest>,
    ) -> Result<Response<PermissionReview>, Status> {
        let actor = request.get_ref().actor_id.clone();
        self.write(&request, Subject::Actor(&actor), "request permission")
            .await?;
        let r = request.into_inner();
        let review = reviews::request(
            self.state_arc(),
            reviews::PermissionRequest {
                actor_id: r.actor_id,
                title: r.title,
                detail: r.detail,
                options: r.options.iter().map(option_row).collect(),
                request_key: r.request_key,
            },
        )
        .await?;
        crate::audit::note_target(&review.id);
        Ok(Response::new(review_view(&review)))
    }

    async fn get_permission_review(
        &self,
        request: Request<ReviewRef>,
    ) -> Result<Response<PermissionReview>, Status> {
        let id = request.get_ref().request_id.clone();
        let claims = crate::api::grpc::authenticate(self.state(), &request).await?;
        let review = reviews::get(self.state(), &id).await;
        permit_review_read(&claims, review.as_ref().ok())?;
        Ok(Response::new(review_view(&review?)))
    }

    async fn wait_permission_review(
        &self,
        request: Request<WaitPermissionReviewRequest>,
    ) -> Result<Response<PermissionReview>, Status> {
        let id = request.get_ref().request_id.clone();
        let claims = crate::api::grpc::authenticate(self.state(), &request).await?;
        let review = reviews::get(self.state(), &id).await;
        permit_review_read(&claims, review.as_ref().ok())?;
        review?;
        let review = reviews::wait(self.state(), &id, request.get_ref().wait_ms).await?;
        Ok(Response::new(review_view(&review)))
    }

    async fn list_permission_reviews(
        &self,
        request: Request<ListPermissionReviewsRequest>,
    ) -> Result<Response<ListPermissionReviewsResponse>, Status> {
        let actor = request.get_ref().actor_id.clone();
        let subject = if actor.is_empty() {
            Subject::Reviews
        } else {
            Subject::Actor(&actor)
        };
        self.read(&request, subject, "list permission reviews")
            .await?;
        let r = request.get_ref();
        let limit = match r.limit {
            0 => 1_000,
            n => n,
        };
        let list = reviews::list(
            self.state(),
            r.pending_only,
            (!actor.is_empty()).then_some(actor.as_str()),
            limit,
        )
        .await?;
        Ok(Response::new(ListPermissionReviewsResponse {
            reviews: list.iter().map(review_view).collect(),
        }))
    }

    async fn respond_permission_review(
        &self,
        request: Request<RespondPermissionReviewRequest>,
    ) -> Result<Response<PermissionReview>, Status> {
        let id = request.get_ref().request_id.clone();
        crate::audit::note_target(&id);
        let claims = self
            .write(&request, Subject::Reviews, "answer permission reviews")
            .await?;
        let r = request.into_inner();
        let answer = match (r.option_id.trim(), r.outcome.trim()) {
            ("", "cancelled") => reviews::Answer::Cancelled,
            ("", "") => {
                return Err(Status::invalid_argument(
                    "give --option-id (one of the request's own option ids) or --outcome cancelled",
                ));
            }
            ("", other) => {
                return Err(Status::invalid_argument(format!(
                    "outcome: {other:?} is not an outcome; `cancelled` is the only one (answer with --option-id otherwise)"
                )));
            }
            (option, "") => reviews::Answer::Option(option.to_string()),
            _ => {
                return Err(Status::invalid_argument(
                    "give --option-id or --outcome cancelled, not both",
                ));
            }
        };
        let review = reviews::respond(self.state_arc(), &id, answer, &claims.sub).await?;
        Ok(Response::new(review_view(&review)))
    }
}

/// Reading a review: the asker's own, or any for `admin` and `viewer`. A review that does not
/// exist is checked as nobody's, so a refusal and a miss look alike to an actor credential.
fn permit_review_read(
    claims: &outpost_trust::auth::Claims,
    review: Option<&crate::store::actors::ReviewRow>,
) -> Result<(), Status> {
    let owner = review.map(|r| r.actor_id.as_str()).unwrap_or_default();
    crate::api::access::permit(
        claims,
        crate::api::access::Access::Read,
        Subject::Actor(owner),
        "read permission reviews",
    )
    .map_err(|e| Status::permission_denied(e.to_string()))
}
