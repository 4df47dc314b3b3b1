//! What the hub issues and checks to let a node in: its certificate authority ([`pki`]) and the
//! join handshake with bootstrap tokens ([`join`]). [`HubCredentials`] is the subsystem's handle
//! in the hub's state.

pub mod join;
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
}

impl HubCredentials {
    /// Holds `auth`, `ca` and the static token's proof key; `mtls` when callers must present a
    /// client certificate.
    pub fn new(
        auth: TokenAuthority,
        ca: pki::CertAuthority,
        static_token_key: Option<[u8; 32]>,
        mtls: bool,
    ) -> Self {
        Self {
            auth,
            ca,
            static_token_key,
            mtls,
        }
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
