//! The permission reviews page: what agents are asking, each with the request's own options as
//! buttons (admins only) and a cancel, and the latest answers with who gave them.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;

use super::layout::{self, Section};
use super::{Console, PageError};
use crate::actors::reviews::{self, Answer};
use crate::api::access::{Access, Subject};
use crate::store::actors::ReviewState;

/// `GET /ui/reviews`
pub(super) async fn reviews_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let operator = console.operator(&headers, "/ui/reviews")?;
    operator.may(Access::Read, Subject::Reviews, "list permission reviews")?;
    let all = reviews::list(&console.hub, false, None, 200).await?;
    let (pending, answered): (Vec<_>, Vec<_>) =
        all.iter().partition(|r| r.state == ReviewState::Pending);
    let can_answer = operator.can_write();
    let body = html! {
        h2 { "Waiting for an answer" }
        @if pending.is_empty() {
            p.muted #no-pending { "Nothing is waiting." }
        } @else {
            table #pending-reviews {
                thead { tr { th { "Asked" } th { "Actor" } th { "Request" } th { "Answer" } } }
                tbody {
                    @for review in &pending {
                        tr data-review=(review.id) {
                            td { (layout::time(review.created_at_ms)) }
                            td { code { (review.actor_id) } }
                            td {
                                strong { (review.title) }
                                @if !review.detail.is_empty() { br; small.muted { (review.detail) } }
                                br; small.muted { code { (review.id) } }
                            }
                            td {
                                @if can_answer {
                                    form.inline method="post" action=(format!("/ui/reviews/{}", super::fleet::encode(&review.id))) {
                                        (layout::csrf(&operator))
                                        @for option in &review.options {
                                            button type="submit" name="option_id" value=(option.id) title=(if option.persistent { "answers this request from now on" } else { "" }) {
                                                (option.label) @if option.persistent { " ∞" }
                                            }
                                            " "
                                        }
                                        button.secondary type="submit" name="outcome" value="cancelled" { "Cancel" }
                                    }
                                } @else {
                                    @for option in &review.options { code { (option.id) } " " }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Answered" }
        table #answered-reviews {
            thead { tr { th { "Answered" } th { "Actor" } th { "Request" } th { "Outcome" } th { "By" } } }
            tbody {
                @for review in answered.iter().take(50) {
                    tr {
                        td { (layout::time(review.answered_at_ms.unwrap_or(0))) }
                        td { code { (review.actor_id) } }
                        td { (review.title) }
                        td {
                            @if review.state == ReviewState::Cancelled { "cancelled" }
                            @else { code { (review.option_id) } }
                        }
                        td { (review.answered_by) }
                    }
                }
            }
        }
    };
    let page = layout::page(&operator, Section::Reviews, "Permission reviews", body);
    Ok(Html(page.into_string()).into_response())
}

/// The answer form: the CSRF token, and an option id or `outcome=cancelled`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct AnswerForm {
    csrf: String,
    #[serde(default)]
    option_id: String,
    #[serde(default)]
    outcome: String,
}

/// `POST /ui/reviews/{id}`: answers a review as the signed-in operator.
pub(super) async fn answer(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<axum::Form<AnswerForm>, FormRejection>,
) -> Result<Response, PageError> {
    let form = form
        .map(|axum::Form(f)| f)
        .map_err(|e| PageError::Status(e.status(), e.body_text()))?;
    let operator = console.authorize_post(
        &headers,
        &form.csrf,
        Subject::Reviews,
        "answer permission reviews",
    )?;
    let answer = match (form.option_id.as_str(), form.outcome.as_str()) {
        ("", "cancelled") => Answer::Cancelled,
        (option, "") if !option.is_empty() => Answer::Option(option.to_string()),
        _ => {
            return Err(PageError::Status(
                StatusCode::BAD_REQUEST,
                "choose one of the request's options, or cancel it".into(),
            ));
        }
    };
    reviews::respond(&console.hub, &id, answer, &operator.session.subject).await?;
    Ok(Redirect::to("/ui/reviews").into_response())
}
