//! What the hub issues and checks to let a node in: its certificate authority ([`pki`]) and the
//! join handshake with bootstrap tokens ([`join`]), limited in rate ([`join_limit`]). [`HubCredentials`] is the subsystem's handle
//! in the hub's state.

pub mod join;
pub mod join_limit;
pub mod pki;

use outpost_trust::auth::TokenAuthority;

/// The credentials the running hub holds: the JWT authority, the CA that signs node
/// certificates, the static bootstrap token's proof key, and whether internal calls need mTLS.
#[derive(Debug)]
pub struct HubCredentials {
    auth: TokenAuthority,
    ca: pki::CertAuthority,
    static_token_key: Option<[u8; 32]>,
    mtls: bool,
    /// The names on the hub's own certificate, lower-cased: no node may take one as its id.
    hub_names: Vec<String>,
    /// How fast joins may begin.
    join_limiter: parking_lot::Mutex<join_limit::JoinLimiter>,
    /// How long node certificates and node JWTs last.
    lifetimes: NodeLifetimes,
    /// The hub's certificate and key (PEM), which it presents on nodes' direct routes.
    presented: Option<(String, String)>,
}

/// How long what the hub issues to a node lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLifetimes {
    /// A node certificate (renewed in session once a third is left).
    pub certificate: std::time::Duration,
    /// A node JWT (a fresh one comes with every session).
    pub token: std::time::Duration,
}

impl Default for NodeLifetimes {
    fn default() -> Self {
        Self {
            certificate: std::time::Duration::from_secs(90 * 24 * 3600),
            token: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

impl HubCredentials {
    /// Holds `auth`, `ca` and the static token's proof key; `mtls` when callers must present a
    /// client certificate; `hub_names` are the names on the hub's certificate.
    pub fn new(
        auth: TokenAuthority,
        ca: pki::CertAuthority,
        static_token_key: Option<[u8; 32]>,
        mtls: bool,
        hub_names: &[String],
        join_limiter: join_limit::JoinLimiter,
        lifetimes: NodeLifetimes,
    ) -> Self {
        Self {
            auth,
            ca,
            static_token_key,
            mtls,
            hub_names: hub_names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            join_limiter: parking_lot::Mutex::new(join_limiter),
            lifetimes,
            presented: None,
        }
    }

    /// Presents `cert_pem` and `key_pem` (the hub's own certificate) on nodes' direct routes.
    pub fn presenting(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.presented = Some((cert_pem.to_string(), key_pem.to_string()));
        self
    }

    /// The certificate and key the hub presents on a node's direct route (none: it dials none).
    pub fn presented(&self) -> Option<(&str, &str)> {
        self.presented
            .as_ref()
            .map(|(cert, key)| (cert.as_str(), key.as_str()))
    }

    /// Refuses a node id that is one of the hub's own names: a node certificate for it would name
    /// the hub (clients also refuse node certificates as servers, this keeps the names apart).
    pub fn check_node_id(&self, node_id: &str) -> Result<(), String> {
        outpost_trust::identity::validate_node_id(node_id)?;
        if self.hub_names.contains(&node_id.to_ascii_lowercase()) {
            return Err(format!(
                "node id {node_id:?} is one of the hub's own names (on its certificate); give the node a name of its own"
            ));
        }
        Ok(())
    }

    /// Takes a join's turn from `source` at monotonic `now_ms`, or says how long to wait.
    pub fn admit_join(
        &self,
        source: Option<std::net::IpAddr>,
        now_ms: u64,
    ) -> Result<(), join_limit::RateLimited> {
        self.join_limiter.lock().admit(source, now_ms)
    }

    /// How long node certificates and JWTs last.
    pub fn lifetimes(&self) -> NodeLifetimes {
        self.lifetimes
    }

    /// A node JWT for `node_id` bound to the key with hex SHA-256 `key`, issued at `now_s`.
    pub fn node_token(
        &self,
        node_id: &str,
        key: &str,
        now_s: i64,
    ) -> Result<String, outpost_trust::auth::AuthError> {
        let ttl = i64::try_from(self.lifetimes.token.as_secs()).unwrap_or(i64::MAX / 2);
        self.auth
            .issue_bound(node_id, outpost_trust::auth::Role::Node, key, now_s, ttl)
    }

    /// An actor JWT for agent `agent_id`'s run `run`: it acts only as that actor, and only
    /// while that run is the agent's current one (the hub checks the run on every call).
    pub fn actor_token(
        &self,
        agent_id: &str,
        run: i64,
        now_s: i64,
    ) -> Result<String, outpost_trust::auth::AuthError> {
        self.auth.issue_bound(
            agent_id,
            outpost_trust::auth::Role::Actor,
            &actor_run_key(run),
            now_s,
            ACTOR_TOKEN_TTL_S,
        )
    }

    /// Signs a node's CSR (DER) for `node_id` with the node certificate lifetime; the PEM and
    /// the hex SHA-256 of the certified key.
    pub fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node_id: &str,
    ) -> Result<(String, String), pki::PkiError> {
        self.ca
            .sign_node_csr(csr_der, node_id, self.lifetimes.certificate)
    }

    /// Mints and verifies JWTs.
    pub fn auth(&self) -> &TokenAuthority {
        &self.auth
    }

    /// The CA certificate nodes trust, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.ca_pem()
    }

    /// Whether internal gRPC calls need a CA-signed client certificate.
    pub fn mtls(&self) -> bool {
        self.mtls
    }
}

/// How long an agent run's actor credential lasts at most (a run that ends, or a new run,
/// retires it sooner: see [`actor_run_key`]).
pub const ACTOR_TOKEN_TTL_S: i64 = 30 * 24 * 3600;

/// What an agent run's actor credential is bound to (its `key` claim): `run:<n>`.
pub fn actor_run_key(run: i64) -> String {
    format!("run:{run}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_may_not_take_the_hubs_own_names() {
        let dir = tempfile::tempdir().unwrap();
        let server_names = ["Hub.Example".to_string()];
        let pki = pki::HubPki::load_or_init(dir.path(), &server_names).unwrap();
        let auth = TokenAuthority::new(b"0123456789abcdef", "outpost", "outpost-internal", 30);
        let names = pki::hub_names(&server_names);
        let limiter = join_limit::JoinLimiter::new(
            join_limit::JoinRates {
                per_second: 1,
                per_source_per_second: 1,
            },
            0,
        );
        let credentials = HubCredentials::new(
            auth,
            pki.ca,
            None,
            false,
            &names,
            limiter,
            NodeLifetimes::default(),
        );
        for taken in ["hub.example", "HUB.EXAMPLE"] {
            let err = credentials.check_node_id(taken).unwrap_err();
            assert!(err.contains("one of the hub's own names"), "{taken}: {err}");
        }
        let err = credentials.check_node_id("localhost").unwrap_err();
        assert!(err.contains("names a host address"), "{err}");
        assert!(credentials.check_node_id("hub-example-2").is_ok());
    }
}
