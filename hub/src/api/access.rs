//! Who may do what: one rule, role × access × subject, that every surface (gRPC and REST alike)
//! asks through [`authenticate`] and [`permit`]. The adapters only translate the answer into
//! their own status codes.
//!
//! | role     | read the fleet | read one node's own record | write |
//! |----------|----------------|----------------------------|-------|
//! | `admin`  | yes            | yes                        | yes   |
//! | `viewer` | yes            | yes                        | no    |
//! | `node`   | no             | its own only               | no    |
//! | `agent`  | see below      | with `nodes`               | its tools' tasks only |
//! | `actor`  | no             | no                         | its own mailbox only  |
//!
//! "The fleet" is anything not one node's own record: the node list, other nodes, tasks, tools.
//! A node credential is for the node's session; it reads nothing of other nodes' work.
//!
//! An agent credential (`outpost token api --role agent --tool echo --tool nodes`) is for MCP
//! clients: it lists the tools, calls (submits, reads, cancels tasks of) only the tools it names,
//! and with [`NODES_TOOL`] among them reads the node list, node records and any task's result —
//! what PRX's `nodes` tool does. It never runs native commands, and reads nothing else (agents,
//! audit log, tokens, metrics). It is also an outside actor (`sub` = its actor id): its own
//! mailbox and permission requests, which is how it asks for a supervised tool's approval.
//!
//! An actor credential (`sub` = an actor id; a node gives one to each agent run) acts only as
//! that actor: its inbox, acks, sends (as the sender), triggers, team and permission requests.
//! Operators (`admin`) act for any actor and answer reviews; `viewer` reads them.

use outpost_trust::auth::{AuthError, Claims, Role};

use crate::state::HubState;

/// What a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads state.
    Read,
    /// Changes state (registry, tokens, tasks, tools).
    Write,
}

/// The fleet tool's name: an agent credential naming it reads nodes and task results.
pub const NODES_TOOL: &str = "nodes";

/// What a call touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// The fleet as a whole, or anything that is not one node's own record.
    Fleet,
    /// The node list.
    Nodes,
    /// The record (view, health, capabilities) of the node with this id.
    Node(&'a str),
    /// The tool list (names, descriptions, schemas).
    Tools,
    /// Calling this tool: a task of it submitted.
    Tool(&'a str),
    /// A task, by the tool it runs (empty: a native command).
    Task {
        /// The task's tool.
        tool: &'a str,
    },
    /// One actor's mailbox, triggers, team and permission requests.
    Actor(&'a str),
    /// The permission reviews of every actor (listing and answering them).
    Reviews,
}

/// Whether `claims` may do `access` on `subject`; the refusal names the role and `action`.
pub fn permit(
    claims: &Claims,
    access: Access,
    subject: Subject<'_>,
    action: &str,
) -> Result<(), AuthError> {
    let allowed = match (claims.role, access, subject) {
        (Role::Admin, _, _) => true,
        (Role::Viewer, Access::Read, _) => true,
        (Role::Node, Access::Read, Subject::Node(id)) => id == claims.sub,
        (Role::Viewer | Role::Node, _, _) => false,
        (Role::Agent, Access::Read, Subject::Nodes | Subject::Node(_)) => {
            claims.names_tool(NODES_TOOL)
        }
        (Role::Agent, Access::Read, Subject::Tools) => true,
        (Role::Agent, _, Subject::Tool(tool)) => !tool.is_empty() && claims.names_tool(tool),
        (Role::Agent, Access::Read, Subject::Task { tool }) => {
            (!tool.is_empty() && claims.names_tool(tool)) || claims.names_tool(NODES_TOOL)
        }
        (Role::Agent, Access::Write, Subject::Task { tool }) => {
            !tool.is_empty() && claims.names_tool(tool)
        }
        // An MCP client is an outside actor: its own mailbox and permission requests.
        (Role::Agent | Role::Actor, _, Subject::Actor(id)) => id == claims.sub,
        (Role::Agent, _, _) => false,
        (Role::Actor, _, _) => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(AuthError::Forbidden {
            role: claims.role,
            action: match (claims.role, subject) {
                (Role::Node, Subject::Node(_)) => format!("{action} of another node"),
                (Role::Agent, Subject::Tool(tool) | Subject::Task { tool }) if !tool.is_empty() => {
                    format!(
                        "{action}: tool {tool:?} is not one this token names ({})",
                        claims.tools.join(", ")
                    )
                }
                (Role::Actor | Role::Agent, Subject::Actor(_)) => {
                    format!(
                        "{action} of another actor (this credential acts as {:?})",
                        claims.sub
                    )
                }
                (Role::Actor, _) => format!(
                    "{action} (an actor credential acts only as {:?})",
                    claims.sub
                ),
                (Role::Agent, _) => format!(
                    "{action} (an agent token names only the tools it may call: {})",
                    claims.tools.join(", ")
                ),
                _ => action.to_string(),
            },
        })
    }
}

/// The token in an `Authorization` header value (`Bearer <token>`, either case of `bearer`).
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            AuthError::Malformed("the Authorization header must be `Bearer <token>`".into())
        })
}

/// Verifies the bearer JWT in an `Authorization` header value; the caller's claims. A node
/// credential also has to find its node still in the registry, bound to the key it names.
pub async fn authenticate(state: &HubState, header: Option<&str>) -> Result<Claims, AuthError> {
    let claims = state.credentials.auth().verify(bearer_token(header)?)?;
    if claims.role == Role::Node {
        let row = state
            .store()
            .get_node(&claims.sub)
            .await
            .map_err(|e| AuthError::Revoked(format!("the registry cannot be read: {e}")))?;
        check_node_binding(
            &claims,
            row.as_ref().map(|r| r.public_key_sha256.as_deref()),
        )?;
    }
    if claims.role == Role::Actor && !claims.key.is_empty() {
        // An agent run's credential: only while that run is the agent's current one.
        let agent = state
            .store()
            .get_agent(&claims.sub)
            .await
            .map_err(|e| AuthError::Revoked(format!("the agents cannot be read: {e}")))?;
        check_actor_run(&claims, agent.as_ref().map(|a| a.run))?;
    }
    Ok(claims)
}

/// Whether an agent run's actor credential still holds: `current_run` is the agent's current
/// run, `None` when the agent was deleted.
pub fn check_actor_run(claims: &Claims, current_run: Option<i64>) -> Result<(), AuthError> {
    let agent = &claims.sub;
    match current_run {
        None => Err(AuthError::Revoked(format!(
            "agent {agent:?} no longer exists (deleted?)"
        ))),
        Some(run) if claims.key == crate::credentials::actor_run_key(run) => Ok(()),
        Some(run) => Err(AuthError::Revoked(format!(
            "this credential was for {} of agent {agent:?}; its current run is {run}",
            claims.key.replace(':', " ")
        ))),
    }
}

/// Whether a node credential still holds against its registry row: `None` when the node is not
/// in the registry, else the key it is bound to now.
pub fn check_node_binding(claims: &Claims, bound: Option<Option<&str>>) -> Result<(), AuthError> {
    let node = &claims.sub;
    match bound {
        None => Err(AuthError::Revoked(format!(
            "node {node:?} is not in the registry (deleted?)"
        ))),
        _ if claims.key.is_empty() => Err(AuthError::Revoked(format!(
            "this credential for node {node:?} names no key (issued before credentials were bound to keys); the node's session still works, and joining again gives a bound one"
        ))),
        Some(Some(key)) if key == claims.key => Ok(()),
        Some(_) => Err(AuthError::Revoked(format!(
            "node {node:?} is bound to another key now (it joined again)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Role, sub: &str) -> Claims {
        Claims {
            iss: "outpost".into(),
            aud: "outpost-internal".into(),
            sub: sub.into(),
            role,
            iat: 0,
            exp: 0,
            key: String::new(),
            tools: Vec::new(),
        }
    }

    #[test]
    fn node_credentials_hold_while_the_registry_binds_their_key() {
        let bound = Claims {
            key: "k1".into(),
            ..claims(Role::Node, "n-1")
        };
        assert!(check_node_binding(&bound, Some(Some("k1"))).is_ok());
        let cases = [
            (&bound, None, "not in the registry"),
            (&bound, Some(Some("k2")), "bound to another key"),
            (&bound, Some(None), "bound to another key"),
            (&claims(Role::Node, "n-1"), Some(Some("k1")), "names no key"),
        ];
        for (claims, row, needle) in cases {
            let err = check_node_binding(claims, row).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn the_rule_as_a_table() {
        use Access::{Read, Write};
        use Role::{Admin, Node, Viewer};
        use Subject::{Fleet, Node as OneNode};
        let table: [(Role, Access, Subject<'_>, bool); 15] = [
            (Admin, Read, Fleet, true),
            (Admin, Write, Fleet, true),
            (Admin, Read, OneNode("n-1"), true),
            (Admin, Write, OneNode("n-1"), true),
            (Admin, Read, OneNode("other"), true),
            (Viewer, Read, Fleet, true),
            (Viewer, Write, Fleet, false),
            (Viewer, Read, OneNode("n-1"), true),
            (Viewer, Write, OneNode("n-1"), false),
            (Viewer, Read, OneNode("other"), true),
            (Node, Read, Fleet, false),
            (Node, Write, Fleet, false),
            (Node, Read, OneNode("n-1"), true),
            (Node, Write, OneNode("n-1"), false),
            (Node, Read, OneNode("other"), false),
        ];
        for (role, access, subject, allowed) in table {
            let who = claims(role, "n-1");
            let answer = permit(&who, access, subject, "do it");
            assert_eq!(
                answer.is_ok(),
                allowed,
                "{role} {access:?} {subject:?}: {answer:?}"
            );
            if let Err(e) = answer {
                assert!(matches!(e, AuthError::Forbidden { role: r, .. } if r == role));
            }
        }
        // An agent names its tools.
        let agent = Claims {
            tools: vec!["echo".into(), NODES_TOOL.into()],
            ..claims(Role::Agent, "bot")
        };
        let only_echo = Claims {
            tools: vec!["echo".into()],
            ..claims(Role::Agent, "bot")
        };
        let agent_table: [(&Claims, Access, Subject<'_>, bool); 16] = [
            (&agent, Write, Subject::Tool("echo"), true),
            (&agent, Write, Subject::Tool("gpu-job"), false),
            (&agent, Write, Subject::Tool(""), false),
            (&agent, Read, Subject::Tools, true),
            (&agent, Read, Subject::Nodes, true),
            (&agent, Read, OneNode("n-1"), true),
            (&agent, Write, OneNode("n-1"), false),
            (&agent, Read, Subject::Task { tool: "gpu-job" }, true),
            (&agent, Write, Subject::Task { tool: "gpu-job" }, false),
            (&agent, Write, Subject::Task { tool: "echo" }, true),
            (&agent, Read, Fleet, false),
            (&agent, Write, Fleet, false),
            (&only_echo, Read, Subject::Nodes, false),
            (&only_echo, Read, Subject::Task { tool: "echo" }, true),
            (&only_echo, Read, Subject::Task { tool: "" }, false),
            (&only_echo, Write, Subject::Tool(NODES_TOOL), false),
        ];
        for (who, access, subject, allowed) in agent_table {
            let answer = permit(who, access, subject, "call");
            assert_eq!(
                answer.is_ok(),
                allowed,
                "{:?} {access:?} {subject:?}",
                who.tools
            );
        }
        let err = permit(&only_echo, Write, Subject::Tool("gpu-job"), "call tools").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"role agent may not call tools: tool "gpu-job" is not one this token names (echo)"#
        );
        let actor = claims(Role::Actor, "agent-a");
        let actor_table: [(Access, Subject<'_>, bool); 7] = [
            (Read, Subject::Actor("agent-a"), true),
            (Write, Subject::Actor("agent-a"), true),
            (Read, Subject::Actor("agent-b"), false),
            (Write, Subject::Actor("agent-b"), false),
            (Read, Subject::Reviews, false),
            (Read, Fleet, false),
            (Read, Subject::Nodes, false),
        ];
        for (access, subject, allowed) in actor_table {
            let answer = permit(&actor, access, subject, "read the inbox");
            assert_eq!(answer.is_ok(), allowed, "actor {access:?} {subject:?}");
        }
        let err = permit(&actor, Read, Subject::Actor("agent-b"), "read the inbox").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"role actor may not read the inbox of another actor (this credential acts as "agent-a")"#
        );
        assert!(permit(&claims(Viewer, "v"), Read, Subject::Reviews, "list").is_ok());
        assert!(permit(&claims(Viewer, "v"), Write, Subject::Actor("x"), "send").is_err());
        let err = permit(&claims(Node, "n-1"), Read, OneNode("n-2"), "read nodes").unwrap_err();
        assert_eq!(
            err.to_string(),
            "role node may not read nodes of another node"
        );
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer_token(Some("Bearer abc ")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        assert!(matches!(
            bearer_token(Some("Basic dXNlcg==")),
            Err(AuthError::Malformed(m)) if m.contains("Bearer <token>")
        ));
    }
}
