//! Console sign-in sessions: a bearer token, checked once at sign-in, exchanged for a random
//! session id kept in an HttpOnly cookie.
//!
//! Pure state with time passed in: a session lasts [`SESSION_TTL_MS`] and never past the expiry
//! of the token it came from; at most [`MAX_SESSIONS`] are held (the one closest to expiry makes
//! room for a new one). Each session carries its own CSRF token, which every form posts back.

use std::collections::HashMap;

use outpost_trust::auth::{Claims, Role};
use parking_lot::Mutex;

/// How long a sign-in lasts at most.
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// Sessions held at once.
pub const MAX_SESSIONS: usize = 10_000;

/// Who a session is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token's subject.
    pub subject: String,
    /// The token's role (admin or viewer).
    pub role: Role,
    /// The value every form of this session must post as `csrf`.
    pub csrf: String,
    /// When it ends (Unix ms).
    pub expires_at_ms: i64,
}

impl Session {
    /// The session as claims, for the access rule every surface shares.
    pub fn claims(&self) -> Claims {
        Claims {
            iss: String::new(),
            aud: String::new(),
            sub: self.subject.clone(),
            role: self.role,
            iat: 0,
            exp: self.expires_at_ms / 1000,
            key: String::new(),
            tools: Vec::new(),
        }
    }

    /// Whether the session may change things.
    pub fn can_write(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Why a token cannot sign in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// Node credentials are for node sessions.
    #[error(
        "a node credential cannot sign in to the console; use an admin or viewer token (outpost token api --role viewer)"
    )]
    NodeCredential,
    /// An agent's credential: it calls tools over MCP and signs in nowhere.
    #[error("an agent token calls tools over MCP (/mcp); sign in with an admin or viewer token")]
    AgentCredential,
    /// An actor's credential: it is for `outpost actor …` inside an agent.
    #[error(
        "an actor token acts as one actor (`outpost actor …`); sign in with an admin or viewer token"
    )]
    ActorCredential,
    /// Expired already.
    #[error("the token has expired")]
    Expired,
}

/// The sessions of one hub.
#[derive(Debug, Default)]
pub struct Sessions {
    held: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session for verified `claims` under `id` (random, from the caller) with its CSRF
    /// token; the session as stored.
    pub fn open(
        &self,
        id: String,
        csrf: String,
        claims: &Claims,
        now_ms: i64,
    ) -> Result<Session, SignInError> {
        match claims.role {
            Role::Node => return Err(SignInError::NodeCredential),
            Role::Agent => return Err(SignInError::AgentCredential),
            Role::Actor => return Err(SignInError::ActorCredential),
            Role::Admin | Role::Viewer => {}
        }
        let token_end = claims.exp.saturating_mul(1000);
        if token_end <= now_ms {
            return Err(SignInError::Expired);
        }
        let session = Session {
            subject: claims.sub.clone(),
            role: claims.role,
            csrf,
            expires_at_ms: token_end.min(now_ms.saturating_add(SESSION_TTL_MS)),
        };
        let mut held = self.held.lock();
        if held.len() >= MAX_SESSIONS {
            held.retain(|_, s| s.expires_at_ms > now_ms);
        }
        while held.len() >= MAX_SESSIONS {
            let Some(oldest) = held
                .iter()
                .min_by_key(|(_, s)| s.expires_at_ms)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            held.remove(&oldest);
        }
        held.insert(id, session.clone());
        Ok(session)
    }

    /// The session `id` while it lasts.
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut held = self.held.lock();
        match held.get(id) {
            Some(s) if s.expires_at_ms > now_ms => Some(s.clone()),
            Some(_) => {
                held.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id`.
    pub fn close(&self, id: &str) {
        self.held.lock().remove(id);
    }

    /// Sessions held now (expired ones included until they are next swept).
    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `bytes` random bytes as hex, from the system's generator.
pub fn random_hex(bytes: usize) -> Option<String> {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut buf).ok()?;
    Some(hex::encode(buf))
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Role, exp_s: i64) -> Claims {
        Claims {
            iss: "outpost".into(),
            aud: "outpost-internal".into(),
            sub: "ops".into(),
            role,
            iat: 0,
            exp: exp_s,
            key: String::new(),
            tools: Vec::new(),
        }
    }

    #[test]
    fn a_session_ends_with_its_token_or_after_twelve_hours() {
        let sessions = Sessions::default();
        let now = 1_000_000;
        let short = sessions
            .open("a".into(), "c".into(), &claims(Role::Viewer, 1_060), now)
            .unwrap();
        assert_eq!(short.expires_at_ms, 1_060_000);
        let long = sessions
            .open("b".into(), "c".into(), &claims(Role::Admin, i64::MAX), now)
            .unwrap();
        assert_eq!(long.expires_at_ms, now + SESSION_TTL_MS);
        assert!(sessions.get("a", 1_059_999).is_some());
        assert!(sessions.get("a", 1_060_000).is_none());
        assert!(sessions.get("a", 0).is_none(), "an expired one is gone");
        assert!(sessions.get("b", now + SESSION_TTL_MS - 1).is_some());
        sessions.close("b");
        assert!(sessions.get("b", now).is_none());
    }

    #[test]
    fn node_credentials_and_expired_tokens_cannot_sign_in() {
        let sessions = Sessions::default();
        assert_eq!(
            sessions.open("a".into(), "c".into(), &claims(Role::Node, i64::MAX), 0),
            Err(SignInError::NodeCredential)
        );
        assert_eq!(
            sessions.open("a".into(), "c".into(), &claims(Role::Agent, i64::MAX), 0),
            Err(SignInError::AgentCredential)
        );
        assert_eq!(
            sessions.open("a".into(), "c".into(), &claims(Role::Admin, 10), 10_000),
            Err(SignInError::Expired)
        );
        assert!(sessions.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_makes_room_from_the_soonest_to_expire() {
        let sessions = Sessions::default();
        for i in 0..MAX_SESSIONS {
            let exp = 10_000 + i64::try_from(i).unwrap();
            sessions
                .open(format!("s{i}"), "c".into(), &claims(Role::Viewer, exp), 0)
                .unwrap();
        }
        sessions
            .open("new".into(), "c".into(), &claims(Role::Viewer, 99_999), 0)
            .unwrap();
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(
            sessions.get("s0", 0).is_none(),
            "the soonest to expire made room"
        );
        assert!(sessions.get("s1", 0).is_some());
        assert!(sessions.get("new", 0).is_some());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(random_hex(32).is_some_and(|h| h.len() == 64));
    }
}
