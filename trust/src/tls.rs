//! rustls configuration for both ends, with ring as the only crypto provider.
//!
//! - QUIC session: TLS 1.3, ALPN `outpost/1`, the node presents its join certificate and the hub
//!   requires it ([`quic_server_config`], [`quic_client_config`]).
//! - Reading the node id out of a peer certificate ([`node_id_from_cert`]) and the digest of its
//!   public key ([`spki_sha256`]), which the hub binds to the node id at join.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// ALPN of the node session.
pub const SESSION_ALPN: &[u8] = b"outpost/1";

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM holds nothing usable.
    #[error("{what}: {message}")]
    Pem {
        /// What was being parsed.
        what: String,
        /// Why it failed.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// quinn refused the rustls configuration.
    #[error("quic crypto: {0}")]
    Quic(String),
    /// A certificate does not carry what it should.
    #[error("certificate: {0}")]
    Certificate(String),
}

/// The process-wide crypto provider (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a file to a string, naming the file in the error.
pub fn read_text(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        what: what.into(),
        message: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.into(),
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Parses a private key from PEM text.
pub fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: what.into(),
        message: e.to_string(),
    })
}

/// A root store holding the CA certificates in `ca_pem`.
pub fn roots_from_pem(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem, "CA certificate")? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Certificate(format!("CA certificate rejected: {e}")))?;
    }
    Ok(roots)
}

/// Server side of the QUIC session: hub certificate, client certificate required and verified
/// against the hub CA.
pub fn quic_server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca_pem: &str,
) -> Result<quinn::ServerConfig, TlsError> {
    let roots = Arc::new(roots_from_pem(client_ca_pem)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert_chain, key)?;
    tls.alpn_protocols = vec![SESSION_ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(hub_session_transport()));
    Ok(config)
}

/// The hub's HTTPS listener (REST API and web UI): TLS 1.2 and 1.3, no client certificate
/// (callers prove themselves with a bearer token), HTTP/2 and HTTP/1.1 by ALPN.
pub fn https_server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// Client side of the QUIC session: trusts the hub CA, presents the node certificate.
pub fn quic_client_config(
    ca_pem: &str,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ClientConfig, TlsError> {
    let roots = roots_from_pem(ca_pem)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(cert_chain, key)?;
    tls.alpn_protocols = vec![SESSION_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(session_transport()));
    Ok(config)
}

/// Event streams (uni streams) a node may have open towards the hub at once.
pub const MAX_NODE_EVENT_STREAMS: u32 = 16;
/// Agents one node runs at once: each holds one output stream to the hub beside the events.
pub const MAX_AGENTS_PER_NODE: u32 = 64;

/// Idle timeout of a session: a peer gone without a word is noticed after this long.
pub const SESSION_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);
/// How often the node keeps a quiet session alive (heartbeats travel outside QUIC, on the
/// heartbeat channel, so the session itself can be quiet for long).
pub const SESSION_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Transport settings of the node's side of the session: keep-alives well inside the idle
/// timeout, so a quiet but healthy session is never dropped (and a NAT keeps its mapping).
pub fn session_transport() -> quinn::TransportConfig {
    let mut transport = hub_session_transport();
    transport.keep_alive_interval(Some(SESSION_KEEP_ALIVE));
    transport
}

/// Transport settings of the hub's side: the same idle timeout, no keep-alives of its own (the
/// node's keep the session up; ten thousand sessions pinging from the hub would cost a core's
/// fraction for nothing).
///
/// A node may have at most [`MAX_NODE_EVENT_STREAMS`] event streams open at once, so what one
/// node can make the hub hold is bounded by that many frames.
pub fn hub_session_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    if let Ok(idle) = quinn::IdleTimeout::try_from(SESSION_IDLE_TIMEOUT) {
        transport.max_idle_timeout(Some(idle));
    }
    // Event streams, and one output stream per running agent.
    transport.max_concurrent_uni_streams((MAX_NODE_EVENT_STREAMS + MAX_AGENTS_PER_NODE).into());
    transport
}

/// The node id a certificate was issued for: its first DNS subject-alternative name.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Certificate(format!("unparsable: {e}")))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::Certificate(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| TlsError::Certificate("no subjectAltName".into()))?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_string()),
            _ => None,
        })
        .ok_or_else(|| TlsError::Certificate("no DNS subjectAltName".into()))
}

/// Hex SHA-256 of a certificate's SubjectPublicKeyInfo: the key the hub binds a node id to.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Certificate(format!("unparsable: {e}")))?;
    Ok(crate::auth::sha256_hex(parsed.public_key().raw))
}

/// When a certificate stops being valid (its `notAfter`), in seconds since the Unix epoch.
pub fn not_after_unix(cert: &CertificateDer<'_>) -> Result<i64, TlsError> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Certificate(format!("unparsable: {e}")))?;
    Ok(parsed.validity().not_after.timestamp())
}
