//! PRX's tool policy (`[security.tool_policy.tools] NAME = "supervised" | "denied"`), enforced
//! where tasks are submitted, for agent credentials (MCP clients); operators are the humans the
//! policy defers to and pass.
//!
//! A `denied` tool is never run for an agent. A `supervised` one runs only with an operator's
//! approval: a permission review ([`crate::actors::reviews`]) asked by the agent (its actor id is
//! the credential's subject) with request key `tool:<name>`, answered `allow_once` or
//! `allow_always` (persistent: later requests are answered by themselves). The submit names the
//! review as its `approval`; the task's idempotency key becomes `approval:<review id>`, so one
//! approval makes one task however often it is presented. `nodes = "supervised"` supervises
//! every task sent through the fleet tool (`via = "nodes"`); a tool's own entry supervises it on
//! every surface.
//!
//! The MCP endpoint asks by itself: a submit refused with [`APPROVAL_KEY_METADATA`] opens the
//! review, reports "waiting for an operator's approval" as progress, and submits again with the
//! approval once it is answered.

use outpost_config::ToolMode;
use outpost_trust::auth::{Claims, Role};

use crate::api::access::NODES_TOOL;
use crate::state::HubState;
use crate::store::actors::{ReviewOption, ReviewRow, ReviewState};

/// The option that allows one call.
pub const ALLOW_ONCE: &str = "allow_once";
/// The persistent option that allows this call and every later one.
pub const ALLOW_ALWAYS: &str = "allow_always";
/// The option that refuses the call.
pub const DENY: &str = "deny";

/// gRPC metadata on a refusal that an approval would lift: the request key to ask with.
pub const APPROVAL_KEY_METADATA: &str = "outpost-approval-key";

/// What a submit by this caller of this tool needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Nothing: it runs as submitted.
    Open,
    /// Approved by review `review_id`: the task takes `idempotency_key`.
    Approved {
        /// The review.
        review_id: String,
        /// `approval:<review id>`.
        idempotency_key: String,
    },
}

/// Why a submit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The tool is denied to agents.
    #[error(
        "tool {0:?} is denied to agent credentials by [security.tool_policy.tools]; an operator may run it"
    )]
    Denied(String),
    /// An approval is needed (ask with this request key).
    #[error(
        "tool {tool:?} is supervised: an operator approves each call by an agent ([security.tool_policy.tools]); ask with a permission review (request key {key}) and submit again with its id as the approval"
    )]
    NeedsApproval {
        /// The supervised tool.
        tool: String,
        /// The request key to ask with.
        key: String,
    },
    /// The approval named does not allow this call.
    #[error("approval {review}: {why}")]
    BadApproval {
        /// The review named.
        review: String,
        /// Why it does not allow this.
        why: String,
    },
}

/// The request key of a review approving calls of `tool`.
pub fn request_key(tool: &str) -> String {
    format!("tool:{tool}")
}

/// The options a supervision review offers.
pub fn options() -> Vec<ReviewOption> {
    vec![
        ReviewOption {
            id: ALLOW_ONCE.into(),
            label: "Allow this call".into(),
            persistent: false,
        },
        ReviewOption {
            id: ALLOW_ALWAYS.into(),
            label: "Always allow this agent this tool".into(),
            persistent: true,
        },
        ReviewOption {
            id: DENY.into(),
            label: "Deny".into(),
            persistent: false,
        },
    ]
}

/// Whether an answered review allows the call.
pub fn allows(review: &ReviewRow) -> bool {
    review.state == ReviewState::Answered
        && matches!(review.option_id.as_str(), ALLOW_ONCE | ALLOW_ALWAYS)
}

fn mode(state: &HubState, tool: &str) -> ToolMode {
    state
        .actors
        .tool_policy()
        .tools
        .get(tool)
        .copied()
        .unwrap_or_default()
}

/// Checks a submit of `tool` (sent `via` the fleet tool when `via` is `nodes`) by `claims`
/// carrying `approval` (a review id, or empty).
pub async fn check_submit(
    state: &HubState,
    claims: &Claims,
    tool: &str,
    via: &str,
    approval: &str,
) -> Result<Gate, Refusal> {
    if claims.role != Role::Agent {
        return Ok(Gate::Open);
    }
    let mut governing = vec![tool];
    if via == NODES_TOOL {
        governing.insert(0, NODES_TOOL);
    }
    if let Some(denied) = governing
        .iter()
        .find(|t| mode(state, t) == ToolMode::Denied)
    {
        return Err(Refusal::Denied((*denied).to_string()));
    }
    let Some(supervised) = governing
        .iter()
        .find(|t| mode(state, t) == ToolMode::Supervised)
    else {
        return Ok(Gate::Open);
    };
    let key = request_key(supervised);
    if approval.is_empty() {
        return Err(Refusal::NeedsApproval {
            tool: (*supervised).to_string(),
            key,
        });
    }
    let bad = |why: String| Refusal::BadApproval {
        review: approval.to_string(),
        why,
    };
    let review = state
        .store()
        .get_review(approval)
        .await
        .map_err(|e| bad(format!("the reviews cannot be read: {e}")))?
        .ok_or_else(|| bad("no review has this id".into()))?;
    if review.actor_id != claims.sub {
        return Err(bad("it was asked by another actor".into()));
    }
    if review.request_key != key {
        return Err(bad(format!(
            "it approves {:?}, not {key:?}",
            review.request_key
        )));
    }
    if !allows(&review) {
        return Err(bad(match review.state {
            ReviewState::Pending => "an operator has not answered it yet".into(),
            ReviewState::Cancelled => "it was cancelled".into(),
            ReviewState::Answered => format!("it was answered {:?}", review.option_id),
        }));
    }
    Ok(Gate::Approved {
        idempotency_key: format!("approval:{}", review.id),
        review_id: review.id,
    })
}
