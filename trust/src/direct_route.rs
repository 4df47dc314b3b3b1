//! TLS of the direct route, where the hub dials a node's own gRPC service (`NodeService`).
//!
//! Neither side uses a name the other could share: the node serves the certificate the hub
//! issued it, and the hub accepts exactly the key it bound that node id to at join
//! ([`hub_client_config`], a pin on the key's SHA-256, the registry's `public_key_sha256`); the
//! hub presents its own server certificate as its client certificate, and the node lets in only a
//! certificate that verifies against the hub CA *as the hub's server certificate* for the name
//! it dials the hub by ([`node_server_config`]) — another node's certificate (client
//! authentication only) or the operator's never passes. Presenting no certificate is allowed at
//! the TLS level so health and reflection answer anyone; the node's `NodeService` refuses a call
//! without a verified peer certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::tls::{TlsError, provider, roots_from_pem};

/// ALPN of gRPC over TLS.
const H2: &[u8] = b"h2";

/// Checks TLS 1.2 and 1.3 handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct Signatures(Arc<rustls::crypto::CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The hub's check of a node's server certificate: the node id it was issued for and the key
/// the registry holds for that node.
#[derive(Debug)]
struct PinnedNode {
    node_id: String,
    key_sha256: String,
    signatures: Signatures,
}

impl ServerCertVerifier for PinnedNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refuse = |why: String| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(TlsError::Certificate(why)),
            )))
        };
        let key = crate::tls::spki_sha256(end_entity).map_err(|e| refuse(e.to_string()))?;
        if key != self.key_sha256 {
            return Err(refuse(format!(
                "the direct route's certificate holds key {key}, not the key node {} joined with",
                self.node_id
            )));
        }
        let node_id =
            crate::tls::node_id_from_cert(end_entity).map_err(|e| refuse(e.to_string()))?;
        if node_id != self.node_id {
            return Err(refuse(format!(
                "the direct route's certificate is for node {node_id:?}, not {:?}",
                self.node_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// The node's check of a caller's certificate: the hub's server certificate, for the hub's name.
#[derive(Debug)]
struct HubOnly {
    hub: Arc<rustls::client::WebPkiServerVerifier>,
    hub_name: ServerName<'static>,
    signatures: Signatures,
}

impl ClientCertVerifier for HubOnly {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.hub
            .verify_server_cert(end_entity, intermediates, &self.hub_name, &[], now)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// The node's side: it serves `cert_chain` (the certificate the hub issued it) and lets in, of
/// the callers that present a certificate, only the hub (verified against `ca_pem` for
/// `hub_name`, the name the node verifies the hub's session by).
pub fn node_server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca_pem: &str,
    hub_name: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let roots = Arc::new(roots_from_pem(ca_pem)?);
    let hub = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let hub_name = ServerName::try_from(hub_name.to_string())
        .map_err(|e| TlsError::Verifier(format!("hub name {hub_name:?}: {e}")))?;
    let verifier = HubOnly {
        hub,
        hub_name,
        signatures: Signatures(provider()),
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert_chain, key)?;
    tls.alpn_protocols = vec![H2.to_vec()];
    Ok(tls)
}

/// The hub's side: it presents its own certificate (`cert_chain`, `key`) and accepts only the
/// node `node_id` holding the key whose SubjectPublicKeyInfo hashes to `key_sha256`.
pub fn hub_client_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    node_id: &str,
    key_sha256: &str,
) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = PinnedNode {
        node_id: node_id.to_string(),
        key_sha256: key_sha256.to_string(),
        signatures: Signatures(provider()),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert_chain, key)?;
    tls.alpn_protocols = vec![H2.to_vec()];
    Ok(tls)
}
