//! Supervised calls (see [`crate::work::supervision`]): a submit the hub refuses until an
//! operator approves it opens a permission review as the caller, says "waiting for an operator's
//! approval (review r-…)" as progress, waits for the answer, and submits again with the approval
//! — or ends the call with the operator's refusal. Cancelling the call stops the wait (the
//! review stays, unanswered or answered, and makes no task).

use outpost_proto::v1::{PermissionRequest, PermissionReview, SubmitTaskRequest, TaskView};
use rmcp::model::ProgressNotificationParam;
use rmcp::service::{RequestContext, RoleServer};
use tonic::Status;

use crate::api::actor_views::option_view;
use crate::api::mcp::FleetApi;
use crate::work::supervision;

/// How long one wait for the answer blocks (the hub's limit is 25 s).
const WAIT_MS: u64 = 20_000;

/// The progress value of "waiting for approval": below the task's first step (1), so the
/// task's own progress still increases after it.
const WAITING_PROGRESS: f64 = 0.5;

/// Asks for approvals on behalf of one call.
pub struct Approvals<'a> {
    /// The call: progress and cancellation.
    pub ctx: &'a RequestContext<RoleServer>,
    /// The caller's actor id (its credential's subject).
    pub actor: &'a str,
}

fn allows(review: &PermissionReview) -> bool {
    review.state == "answered"
        && matches!(
            review.option_id.as_str(),
            supervision::ALLOW_ONCE | supervision::ALLOW_ALWAYS
        )
}

impl Approvals<'_> {
    /// Submits `request`; when the hub wants an approval for it, gets one first.
    pub async fn submit(
        &self,
        api: &dyn FleetApi,
        mut request: SubmitTaskRequest,
    ) -> Result<TaskView, Status> {
        let refusal = match api.submit_task(request.clone()).await {
            Ok(task) => return Ok(task),
            Err(status) => status,
        };
        let key = match refusal
            .metadata()
            .get(supervision::APPROVAL_KEY_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            Some(key) if refusal.code() == tonic::Code::FailedPrecondition => key.to_string(),
            _ => return Err(refusal),
        };
        let what = if request.tool.is_empty() {
            "a command".to_string()
        } else {
            format!("tool {}", request.tool)
        };
        let mut detail = request.input.clone();
        if detail.len() > 1_024 {
            let mut end = 1_024;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push('…');
        }
        let mut review = api
            .request_permission(PermissionRequest {
                actor_id: self.actor.to_string(),
                title: format!("{} calls {what} ({key})", self.actor),
                detail: format!("input: {detail}"),
                options: supervision::options().iter().map(option_view).collect(),
                request_key: key,
            })
            .await?;
        if review.state == "pending" {
            self.progress(format!(
                "waiting for an operator's approval (review {})",
                review.id
            ))
            .await;
        }
        while review.state == "pending" {
            tokio::select! {
                () = self.ctx.ct.cancelled() => {
                    return Err(Status::cancelled(format!(
                        "the call was cancelled while waiting for approval (review {}); nothing ran",
                        review.id
                    )));
                }
                answer = api.wait_permission_review(&review.id, WAIT_MS) => review = answer?,
            }
        }
        if !allows(&review) {
            return Err(Status::permission_denied(format!(
                "an operator refused the call (review {} {}{}): nothing ran",
                review.id,
                review.state,
                if review.option_id.is_empty() {
                    String::new()
                } else {
                    format!(" with {:?}", review.option_id)
                }
            )));
        }
        request.approval = review.id;
        api.submit_task(request).await
    }

    async fn progress(&self, message: String) {
        if let Some(token) = self.ctx.meta.get_progress_token() {
            let note =
                ProgressNotificationParam::new(token, WAITING_PROGRESS).with_message(message);
            if let Err(e) = self.ctx.peer.notify_progress(note).await {
                tracing::debug!(error = %e, "a progress notification was not delivered");
            }
        }
    }
}
