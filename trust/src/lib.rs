//! What proves who is who in Outpost, shared by hub, node and the command line.
//!
//! - [`auth`]: credential roles, JWTs (HS256 with issuer, audience, expiry and leeway) minted and
//!   checked by [`auth::TokenAuthority`], bootstrap tokens and the join proof.
//! - [`identity`]: node ids, a node's stored identity (key, certificate, CA, JWT) and its CSR.
//! - [`tls`]: rustls configuration for the QUIC session (ring only), and reading a peer's node id
//!   and key digest out of its certificate.
//! - [`grpc_channel`]: gRPC channels to the hub over TLS or mTLS with a bearer JWT.
//! - [`private_files`]: owner-only directories and files for secrets.
//! - [`signing`]: Ed25519 signatures of tools by their publishers.

pub mod auth;
pub mod direct_route;
pub mod grpc_channel;
pub mod identity;
pub mod private_files;
pub mod signing;
pub mod tls;
