//! Permission reviews: an actor asks (a title and the options it offers), an operator answers
//! with one of the request's own option ids or cancels it, and the asker gets the decision — by
//! waiting on the review or as a message from [`HUB_SENDER`]. An option marked persistent
//! answers the same actor's same request (its `request_key`, the title unless given) later by
//! itself; such a review is stored answered, with the option id and `answered_by =
//! "grant:<the review that made it>"`.
//!
//! PRX's `supervised` tool policy asks through here too (see `crate::work::supervision`).

use std::sync::Arc;
use std::time::Duration;

use crate::actors::{HUB_SENDER, MAX_WAIT_MS, check_actor_id};
use crate::state::HubState;
use crate::store::actors::{GrantRow, NewMessage, ReviewOption, ReviewRow, ReviewState};
use crate::work::tasks::TaskError;

/// Longest title.
pub const MAX_TITLE_BYTES: usize = 512;
/// Longest detail.
pub const MAX_DETAIL_BYTES: usize = 8 * 1024;
/// Most options a review offers.
pub const MAX_OPTIONS: usize = 16;
/// Most reviews one actor may have waiting for an answer.
pub const MAX_PENDING_PER_ACTOR: u32 = 100;

/// A request, from any surface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionRequest {
    /// The asking actor.
    pub actor_id: String,
    /// What is asked.
    pub title: String,
    /// More about it.
    pub detail: String,
    /// The answers offered.
    pub options: Vec<ReviewOption>,
    /// What "the same request" is for a persistent answer (empty: the title).
    pub request_key: String,
}

/// How an operator answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// One of the request's option ids.
    Option(String),
    /// Closed without an option.
    Cancelled,
}

fn check_option_id(id: &str) -> Result<(), TaskError> {
    if crate::actors::is_short_name(id) {
        Ok(())
    } else {
        Err(TaskError::Invalid(format!(
            "option: {id:?} is not an option id (1 to 64 letters, digits, '.', '_' or '-')"
        )))
    }
}

impl PermissionRequest {
    /// Checks sizes, option ids (unique) and labels.
    pub fn validate(&self) -> Result<(), TaskError> {
        check_actor_id("actor_id", &self.actor_id)?;
        let title = self.title.trim();
        if title.is_empty() || title.len() > MAX_TITLE_BYTES {
            return Err(TaskError::Invalid(format!(
                "title: 1 to {MAX_TITLE_BYTES} bytes"
            )));
        }
        if self.detail.len() > MAX_DETAIL_BYTES {
            return Err(TaskError::Invalid(format!(
                "detail: at most {MAX_DETAIL_BYTES} bytes"
            )));
        }
        if self.request_key.len() > MAX_TITLE_BYTES {
            return Err(TaskError::Invalid(format!(
                "request_key: at most {MAX_TITLE_BYTES} bytes"
            )));
        }
        if self.options.is_empty() || self.options.len() > MAX_OPTIONS {
            return Err(TaskError::Invalid(format!(
                "option: a review offers 1 to {MAX_OPTIONS} options"
            )));
        }
        for (i, option) in self.options.iter().enumerate() {
            check_option_id(&option.id)?;
            if option.label.len() > 256 {
                return Err(TaskError::Invalid(format!(
                    "option: the label of {:?} is over 256 bytes",
                    option.id
                )));
            }
            if self.options[..i].iter().any(|o| o.id == option.id) {
                return Err(TaskError::Invalid(format!(
                    "option: {:?} is offered twice",
                    option.id
                )));
            }
        }
        Ok(())
    }
}

fn new_review_id() -> Result<String, TaskError> {
    let mut bytes = [0_u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| TaskError::Internal("no randomness for a review id".into()))?;
    Ok(format!("r-{}", hex::encode(bytes)))
}

/// Opens a review, or answers it at once from a persistent grant for the same request.
pub async fn request(
    state: &Arc<HubState>,
    request: PermissionRequest,
) -> Result<ReviewRow, TaskError> {
    request.validate()?;
    let request_key = if request.request_key.is_empty() {
        request.title.trim().to_string()
    } else {
        request.request_key.clone()
    };
    let now = state.now_ms();
    let mut review = ReviewRow {
        id: new_review_id()?,
        actor_id: request.actor_id.clone(),
        title: request.title.trim().to_string(),
        detail: request.detail,
        request_key,
        options: request
            .options
            .into_iter()
            .map(|o| ReviewOption {
                label: if o.label.is_empty() {
                    o.id.clone()
                } else {
                    o.label
                },
                ..o
            })
            .collect(),
        created_at_ms: now,
        ..ReviewRow::default()
    };
    let grant = state
        .store()
        .get_grant(&review.actor_id, &review.request_key)
        .await?;
    let granted = grant.filter(|g| review.options.iter().any(|o| o.id == g.option_id));
    if granted.is_none() {
        let waiting = state
            .store()
            .list_reviews(true, Some(&review.actor_id), MAX_PENDING_PER_ACTOR)
            .await?;
        if waiting.len() >= MAX_PENDING_PER_ACTOR as usize {
            return Err(TaskError::Conflict(format!(
                "actor_id: {} has {MAX_PENDING_PER_ACTOR} reviews waiting for an answer already (the most one actor may have)",
                review.actor_id
            )));
        }
    }
    if let Some(grant) = granted {
        review.state = ReviewState::Answered;
        review.option_id = grant.option_id;
        review.answered_by = format!("grant:{}", grant.review_id);
        review.answered_at_ms = Some(now);
    }
    state.store().insert_review(&review).await?;
    if review.state != ReviewState::Pending {
        tell_asker(state, &review).await;
    }
    Ok(review)
}

/// Answers a pending review as `by`: with one of its own option ids (a persistent one also
/// records the grant) or cancelled.
pub async fn respond(
    state: &Arc<HubState>,
    id: &str,
    answer: Answer,
    by: &str,
) -> Result<ReviewRow, TaskError> {
    let review = get(state, id).await?;
    if review.state != ReviewState::Pending {
        return Err(TaskError::Conflict(format!(
            "request_id: review {id} is {} already{}",
            review.state.as_str(),
            if review.option_id.is_empty() {
                String::new()
            } else {
                format!(" (option {:?} by {})", review.option_id, review.answered_by)
            }
        )));
    }
    let now = state.now_ms();
    let (answered, grant) = match answer {
        Answer::Option(option_id) => {
            let Some(option) = review.options.iter().find(|o| o.id == option_id) else {
                return Err(TaskError::Invalid(format!(
                    "option_id: {option_id:?} is not one of review {id}'s options ({})",
                    review
                        .options
                        .iter()
                        .map(|o| o.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let grant = option.persistent.then(|| GrantRow {
                actor_id: review.actor_id.clone(),
                request_key: review.request_key.clone(),
                option_id: option_id.clone(),
                review_id: review.id.clone(),
                created_at_ms: now,
            });
            (
                ReviewRow {
                    state: ReviewState::Answered,
                    option_id,
                    answered_by: by.to_string(),
                    answered_at_ms: Some(now),
                    ..review
                },
                grant,
            )
        }
        Answer::Cancelled => (
            ReviewRow {
                state: ReviewState::Cancelled,
                answered_by: by.to_string(),
                answered_at_ms: Some(now),
                ..review
            },
            None,
        ),
    };
    if !state
        .store()
        .answer_review(&answered, grant.as_ref())
        .await?
    {
        return Err(TaskError::Conflict(format!(
            "request_id: review {id} was answered by someone else first"
        )));
    }
    state.actors.review_answered(id);
    tell_asker(state, &answered).await;
    Ok(answered)
}

/// Sends the decision to the asker's mailbox (once per review: the key is the review id).
async fn tell_asker(state: &HubState, review: &ReviewRow) {
    let payload = serde_json::json!({
        "type": "permission_decision",
        "request_id": review.id,
        "title": review.title,
        "outcome": review.state.as_str(),
        "option_id": review.option_id,
        "answered_by": review.answered_by,
    });
    let limits = state.actors.limits();
    let message = NewMessage {
        sender: HUB_SENDER.into(),
        recipient: review.actor_id.clone(),
        team: String::new(),
        payload: payload.to_string(),
        idempotency_key: Some(format!("review:{}", review.id)),
        max_deliveries: limits.max_deliveries,
        visibility_ms: limits.visibility_ms,
        now_ms: state.now_ms(),
    };
    match state
        .store()
        .insert_messages(std::slice::from_ref(&message))
        .await
    {
        Ok(_) => state.actors.mail_arrived(&review.actor_id),
        // The review itself is answered and durable; only the courtesy message is lost.
        Err(e) => {
            tracing::warn!(review = %review.id, error = %e, "telling the asker of a decision failed")
        }
    }
}

/// One review.
pub async fn get(state: &HubState, id: &str) -> Result<ReviewRow, TaskError> {
    state
        .store()
        .get_review(id)
        .await?
        .ok_or_else(|| TaskError::NotFound(format!("request_id: no review has id {id:?}")))
}

/// Waits up to `wait_ms` (capped at [`MAX_WAIT_MS`]) for review `id` to be answered; the review
/// as it is then.
pub async fn wait(state: &HubState, id: &str, wait_ms: u64) -> Result<ReviewRow, TaskError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
    loop {
        let signal = state.actors.review_signal(id);
        let answered = signal.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        let review = get(state, id).await?;
        let now = tokio::time::Instant::now();
        if review.state != ReviewState::Pending || now >= deadline {
            return Ok(review);
        }
        // Another hub may answer it: look again every second too.
        let _ = tokio::time::timeout_at(deadline.min(now + Duration::from_secs(1)), answered).await;
    }
}

/// Reviews, newest first.
pub async fn list(
    state: &HubState,
    pending_only: bool,
    actor_id: Option<&str>,
    limit: u32,
) -> Result<Vec<ReviewRow>, TaskError> {
    Ok(state
        .store()
        .list_reviews(pending_only, actor_id, limit.clamp(1, 10_000))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(id: &str) -> ReviewOption {
        ReviewOption {
            id: id.into(),
            ..ReviewOption::default()
        }
    }

    #[test]
    fn requests_are_checked() {
        let ok = PermissionRequest {
            actor_id: "agent-1".into(),
            title: "deploy".into(),
            options: vec![option("allow_once"), option("deny")],
            ..PermissionRequest::default()
        };
        ok.validate().unwrap();
        let cases = [
            (
                PermissionRequest {
                    title: " ".into(),
                    ..ok.clone()
                },
                "title: 1 to 512 bytes",
            ),
            (
                PermissionRequest {
                    options: Vec::new(),
                    ..ok.clone()
                },
                "1 to 16 options",
            ),
            (
                PermissionRequest {
                    options: vec![option("deny"), option("deny")],
                    ..ok.clone()
                },
                "\"deny\" is offered twice",
            ),
            (
                PermissionRequest {
                    options: vec![option("allow once")],
                    ..ok.clone()
                },
                "is not an option id",
            ),
            (
                PermissionRequest {
                    actor_id: "team:x".into(),
                    ..ok.clone()
                },
                "names a team",
            ),
        ];
        for (request, needle) in cases {
            let err = request.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
