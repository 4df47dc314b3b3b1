//! `outpost actor …`: AgentHub's actor CLI over the hub's actor service.
//!
//! Output is JSON, always (the seed's CLI prints JSON): one item prints its object. Batch flags
//! repeat (`--message-id 101 --message-id 102`, `--request-id r1 --request-id r2`); the items
//! are handled one after another, one call each, and several print a JSON array of per-item
//! results (`{"ok": true, …}` or `{"ok": false, "error": …}`); one failed item does not stop the
//! others, and the command exits 1 when any failed.
//!
//! Inside an agent's process the node sets `OUTPOST_ACTOR_ID`, `OUTPOST_RUN_ID` and
//! `OUTPOST_TOKEN` (a credential that acts only as that actor), so the flags that name them may
//! be left out there.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use outpost_hub::api::actor_views::{member_json, message_json, review_json, trigger_json};
use outpost_proto::v1::actor_service_client::ActorServiceClient;
use outpost_proto::v1::{
    AckRequest, ActorRef, CreateTimeTriggerRequest, InboxRequest, ListDeadLettersRequest,
    ListPermissionReviewsRequest, MessageRef, PermissionRequest, RespondPermissionReviewRequest,
    ReviewOption, SendMessageRequest, TriggerRef, WaitPermissionReviewRequest,
};
use outpost_trust::grpc_channel::with_bearer;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::work::{channel, parse_duration};
use crate::{GlobalArgs, status_error};

/// The actor a command acts as.
#[derive(Debug, Args)]
pub struct ActorArg {
    /// The actor (inside an agent: its own, from OUTPOST_ACTOR_ID).
    #[arg(long = "actor-id", env = "OUTPOST_ACTOR_ID")]
    actor_id: String,
}

/// `outpost actor …`
#[derive(Debug, Subcommand)]
pub enum ActorCommand {
    /// The other members of the actor's teams, with their status and node.
    TeamMembers(ActorArg),
    /// Take the actor's visible messages; each comes again after the visibility timeout unless
    /// acked.
    Inbox {
        /// The actor.
        #[command(flatten)]
        actor: ActorArg,
        /// The receiving run (an agent's current run, from OUTPOST_RUN_ID).
        #[arg(long, env = "OUTPOST_RUN_ID")]
        run_id: Option<String>,
        /// Ack what is taken at once.
        #[arg(long)]
        auto_ack: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Wait up to this long for a message when there is none (at most 25s).
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Ack taken messages; repeat --message-id for several.
    Ack {
        /// The actor.
        #[command(flatten)]
        actor: ActorArg,
        /// A message id; repeatable.
        #[arg(long = "message-id", required = true)]
        message_ids: Vec<i64>,
    },
    /// Send a message to an actor, `agent:NAME`, or `team:NAME`.
    Send {
        /// The actor.
        #[command(flatten)]
        actor: ActorArg,
        /// The recipient.
        #[arg(long)]
        to: String,
        /// JSON.
        #[arg(long)]
        payload: String,
        /// A retried send with the same key makes no second message.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// The actor's time triggers.
    TimeTriggerList(ActorArg),
    /// A time trigger: a message to the actor at each slot.
    TimeTriggerCreate {
        /// The actor.
        #[command(flatten)]
        actor: ActorArg,
        /// Five cron fields, UTC ("0 9 * * 1-5").
        #[arg(long, conflicts_with = "every", required_unless_present = "every")]
        cron: Option<String>,
        /// An interval (30s, 5m, 1h).
        #[arg(long)]
        every: Option<String>,
        /// JSON each message carries.
        #[arg(long)]
        payload: Option<String>,
    },
    /// Delete time triggers; repeat --trigger-id for several.
    TimeTriggerDelete {
        /// A trigger id; repeatable.
        #[arg(long = "trigger-id", required = true)]
        trigger_ids: Vec<String>,
    },
    /// Ask the operators; with --wait, block until answered and exit 1 unless an option was
    /// chosen.
    PermissionRequest {
        /// The actor.
        #[command(flatten)]
        actor: ActorArg,
        /// What is asked.
        #[arg(long)]
        title: String,
        /// More about it.
        #[arg(long, default_value = "")]
        detail: String,
        /// An option: ID, or ID:persistent (answers the same request later by itself);
        /// repeatable.
        #[arg(long = "option", required = true)]
        options: Vec<String>,
        /// What "the same request" is for a persistent answer (default: the title).
        #[arg(long, default_value = "")]
        request_key: String,
        /// Wait for the answer.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Permission reviews, newest first.
    PermissionReviews {
        /// Only those waiting for an answer.
        #[arg(long)]
        pending: bool,
        /// Only this actor's.
        #[arg(long = "actor-id")]
        actor_id: Option<String>,
    },
    /// Answer reviews with one of each request's own option ids, or --outcome cancelled; repeat
    /// --request-id for several.
    PermissionReviewRespond {
        /// A review id; repeatable.
        #[arg(long = "request-id", visible_alias = "permission-id", required = true)]
        request_ids: Vec<String>,
        /// The option chosen (one of the request's own ids).
        #[arg(long, conflicts_with = "outcome", required_unless_present = "outcome")]
        option_id: Option<String>,
        /// `cancelled` (the only outcome).
        #[arg(long, value_parser = ["cancelled"])]
        outcome: Option<String>,
    },
    /// Messages that went unacked too often.
    DeadLetters {
        /// Only this actor's.
        #[arg(long = "actor-id")]
        actor_id: Option<String>,
    },
    /// Put dead letters back in their inbox; repeat --message-id for several.
    Requeue {
        /// A message id; repeatable.
        #[arg(long = "message-id", required = true)]
        message_ids: Vec<i64>,
    },
}

/// Several items failed (their errors are in the printed array).
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} items failed (see each item's error)")]
pub struct BatchFailed {
    failed: usize,
    total: usize,
}

/// Runs items one after another: one prints its object (its error is the command's); several
/// print an array of per-item results and fail when any did.
async fn batch<I, F, Fut>(
    items: Vec<I>,
    key: &str,
    mut each: F,
    out: &mut dyn Write,
) -> anyhow::Result<()>
where
    I: Clone + Into<Value>,
    F: FnMut(I) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    if let [one] = &items[..] {
        let value = each(one.clone()).await?;
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let total = items.len();
    let mut results = Vec::with_capacity(total);
    let mut failed = 0;
    for item in items {
        let id: Value = item.clone().into();
        match each(item).await {
            Ok(value) => results.push(json!({key: id, "ok": true, "result": value})),
            Err(e) => {
                failed += 1;
                results.push(json!({key: id, "ok": false, "error": e.to_string()}));
            }
        }
    }
    writeln!(out, "{}", Value::Array(results))?;
    if failed > 0 {
        return Err(BatchFailed { failed, total }.into());
    }
    Ok(())
}

fn parse_option(text: &str) -> anyhow::Result<ReviewOption> {
    let (id, persistent) = match text.split_once(':') {
        Some((id, "persistent")) => (id, true),
        Some((_, other)) => {
            anyhow::bail!("--option {text:?}: {other:?} is not a flag; write ID or ID:persistent")
        }
        None => (text, false),
    };
    Ok(ReviewOption {
        id: id.to_string(),
        label: String::new(),
        persistent,
    })
}

/// `outpost actor …`
pub(crate) async fn actor(
    global: &GlobalArgs,
    command: ActorCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (channel, jwt) = match std::env::var_os(SOCKET_VARIABLE) {
        // Inside an agent: through its node's relay, with the run's own credential.
        Some(socket) if global.hub.is_none() => {
            let jwt = std::env::var("OUTPOST_TOKEN").map_err(|_| {
                anyhow::anyhow!("{SOCKET_VARIABLE} is set but OUTPOST_TOKEN is not: the node gives both to an agent's run")
            })?;
            (relay_channel(socket.into()).await?, jwt)
        }
        _ => channel(global).await?,
    };
    let client = ActorServiceClient::new(channel);
    let call = Caller { client, jwt };
    match command {
        ActorCommand::TeamMembers(actor) => {
            let members = call
                .client()
                .team_members(call.req(ActorRef {
                    actor_id: actor.actor_id.clone(),
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            let value = json!({
                "actor_id": actor.actor_id,
                "members": members.members.iter().map(member_json).collect::<Vec<_>>(),
            });
            writeln!(out, "{value}")?;
        }
        ActorCommand::Inbox {
            actor,
            run_id,
            auto_ack,
            limit,
            wait,
        } => {
            let inbox = call
                .client()
                .inbox(call.req(InboxRequest {
                    actor_id: actor.actor_id.clone(),
                    run_id: run_id.unwrap_or_default(),
                    auto_ack,
                    limit,
                    wait_ms: wait.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            let value = json!({
                "actor_id": actor.actor_id,
                "messages": inbox.messages.iter().map(message_json).collect::<Vec<_>>(),
            });
            writeln!(out, "{value}")?;
        }
        ActorCommand::Ack { actor, message_ids } => {
            let actor_id = actor.actor_id;
            batch(
                message_ids,
                "message_id",
                |id| {
                    let call = &call;
                    let actor_id = actor_id.clone();
                    async move {
                        let acked = call
                            .client()
                            .ack(call.req(AckRequest {
                                actor_id,
                                message_id: id,
                            }))
                            .await
                            .map_err(status_error)?
                            .into_inner();
                        Ok(json!({
                            "message_id": acked.message_id,
                            "acked": true,
                            "already_acked": acked.already_acked,
                        }))
                    }
                },
                out,
            )
            .await?;
        }
        ActorCommand::Send {
            actor,
            to,
            payload,
            idempotency_key,
        } => {
            let sent = call
                .client()
                .send_message(call.req(SendMessageRequest {
                    actor_id: actor.actor_id,
                    to,
                    payload,
                    idempotency_key: idempotency_key.unwrap_or_default(),
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            let messages: Vec<Value> = sent.messages.iter().map(message_json).collect();
            let value = json!({
                "message_id": messages.first().and_then(|m| m.get("id").cloned()),
                "duplicate": sent.duplicate,
                "messages": messages,
            });
            writeln!(out, "{value}")?;
        }
        ActorCommand::TimeTriggerList(actor) => {
            let list = call
                .client()
                .list_time_triggers(call.req(ActorRef {
                    actor_id: actor.actor_id.clone(),
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            let value = json!({
                "actor_id": actor.actor_id,
                "triggers": list.triggers.iter().map(trigger_json).collect::<Vec<_>>(),
            });
            writeln!(out, "{value}")?;
        }
        ActorCommand::TimeTriggerCreate {
            actor,
            cron,
            every,
            payload,
        } => {
            let trigger = call
                .client()
                .create_time_trigger(call.req(CreateTimeTriggerRequest {
                    actor_id: actor.actor_id,
                    cron: cron.unwrap_or_default(),
                    every: every.unwrap_or_default(),
                    payload: payload.unwrap_or_default(),
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            writeln!(out, "{}", trigger_json(&trigger))?;
        }
        ActorCommand::TimeTriggerDelete { trigger_ids } => {
            batch(
                trigger_ids,
                "trigger_id",
                |id| {
                    let call = &call;
                    async move {
                        let deleted = call
                            .client()
                            .delete_time_trigger(call.req(TriggerRef { trigger_id: id }))
                            .await
                            .map_err(status_error)?
                            .into_inner();
                        Ok(json!({"trigger_id": deleted.id, "deleted": true}))
                    }
                },
                out,
            )
            .await?;
        }
        ActorCommand::PermissionRequest {
            actor,
            title,
            detail,
            options,
            request_key,
            wait,
            timeout,
        } => {
            let options = options
                .iter()
                .map(|o| parse_option(o))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut review = call
                .client()
                .request_permission(call.req(PermissionRequest {
                    actor_id: actor.actor_id,
                    title,
                    detail,
                    options,
                    request_key,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            let deadline = tokio::time::Instant::now() + timeout;
            while wait && review.state == "pending" {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    writeln!(out, "{}", review_json(&review))?;
                    anyhow::bail!(
                        "review {} is still pending after {}",
                        review.id,
                        humantime::format_duration(timeout)
                    );
                }
                review = call
                    .client()
                    .wait_permission_review(
                        call.req(WaitPermissionReviewRequest {
                            request_id: review.id.clone(),
                            wait_ms: u64::try_from(left.as_millis())
                                .unwrap_or(u64::MAX)
                                .min(25_000),
                        }),
                    )
                    .await
                    .map_err(status_error)?
                    .into_inner();
            }
            writeln!(out, "{}", review_json(&review))?;
            if wait && review.state == "cancelled" {
                anyhow::bail!("review {} was cancelled", review.id);
            }
        }
        ActorCommand::PermissionReviews { pending, actor_id } => {
            let list = call
                .client()
                .list_permission_reviews(call.req(ListPermissionReviewsRequest {
                    pending_only: pending,
                    actor_id: actor_id.unwrap_or_default(),
                    limit: 0,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            let value = json!({
                "reviews": list.reviews.iter().map(review_json).collect::<Vec<_>>(),
            });
            writeln!(out, "{value}")?;
        }
        ActorCommand::PermissionReviewRespond {
            request_ids,
            option_id,
            outcome,
        } => {
            batch(
                request_ids,
                "request_id",
                |id| {
                    let call = &call;
                    let option_id = option_id.clone().unwrap_or_default();
                    let outcome = outcome.clone().unwrap_or_default();
                    async move {
                        let review = call
                            .client()
                            .respond_permission_review(call.req(RespondPermissionReviewRequest {
                                request_id: id,
                                option_id,
                                outcome,
                            }))
                            .await
                            .map_err(status_error)?
                            .into_inner();
                        Ok(review_json(&review))
                    }
                },
                out,
            )
            .await?;
        }
        ActorCommand::DeadLetters { actor_id } => {
            let dead = call
                .client()
                .list_dead_letters(call.req(ListDeadLettersRequest {
                    actor_id: actor_id.unwrap_or_default(),
                    limit: 0,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            let value = json!({
                "messages": dead.messages.iter().map(message_json).collect::<Vec<_>>(),
            });
            writeln!(out, "{value}")?;
        }
        ActorCommand::Requeue { message_ids } => {
            batch(
                message_ids,
                "message_id",
                |id| {
                    let call = &call;
                    async move {
                        let message = call
                            .client()
                            .requeue(call.req(MessageRef { message_id: id }))
                            .await
                            .map_err(status_error)?
                            .into_inner();
                        Ok(message_json(&message))
                    }
                },
                out,
            )
            .await?;
        }
    }
    Ok(())
}

/// Names the node's actor relay socket inside an agent's run.
pub const SOCKET_VARIABLE: &str = "OUTPOST_ACTOR_SOCKET";

/// A channel to the node's actor relay on its Unix socket.
async fn relay_channel(socket: std::path::PathBuf) -> anyhow::Result<Channel> {
    outpost_node::actor_relay::connect(socket)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "the node's actor relay ({SOCKET_VARIABLE}): {}",
                outpost_trust::grpc_channel::error_chain(&e)
            )
        })
}

/// A client and the bearer every call carries.
struct Caller {
    client: ActorServiceClient<Channel>,
    jwt: String,
}

impl Caller {
    /// A clone of the client (cheap: the channel is shared), for one call.
    fn client(&self) -> ActorServiceClient<Channel> {
        self.client.clone()
    }

    /// `message` with the bearer.
    fn req<T>(&self, message: T) -> tonic::Request<T> {
        with_bearer(message, &self.jwt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_their_persistence() {
        let o = parse_option("allow_always:persistent").unwrap();
        assert_eq!((o.id.as_str(), o.persistent), ("allow_always", true));
        let o = parse_option("deny").unwrap();
        assert_eq!((o.id.as_str(), o.persistent), ("deny", false));
        let err = parse_option("x:forever").unwrap_err().to_string();
        assert!(err.contains("ID:persistent"), "{err}");
    }

    #[tokio::test]
    async fn one_item_prints_its_object_and_several_an_array_that_names_each_failure() {
        let mut out = Vec::new();
        batch(
            vec![7_i64],
            "message_id",
            |id| async move { Ok(json!({"id": id})) },
            &mut out,
        )
        .await
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap().trim(), r#"{"id":7}"#);

        let mut out = Vec::new();
        let err = batch(
            vec![1_i64, 2, 3],
            "message_id",
            |id| async move {
                if id == 2 {
                    anyhow::bail!("not found: message_id: no message has id 2")
                }
                Ok(json!({"id": id}))
            },
            &mut out,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("1 of 3 items failed"), "{err}");
        let printed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(printed[0]["ok"], true);
        assert_eq!(printed[1]["message_id"], 2);
        assert_eq!(printed[1]["ok"], false);
        assert!(
            printed[1]["error"]
                .as_str()
                .unwrap()
                .contains("no message has id 2")
        );
        assert_eq!(
            printed[2]["result"]["id"], 3,
            "the item after a failure ran"
        );
    }
}
