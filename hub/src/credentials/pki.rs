//! The hub's certificate authority and credentials, kept as files in `cert_dir`:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the CA that signs the hub certificate and every node certificate |
//! | `hub.pem`, `hub-key.pem` | the hub's server certificate (gRPC and QUIC) |
//! | `client.pem`, `client-key.pem` | an operator client certificate for the CLI in mTLS mode |
//! | `auth_secret.txt` | the HS256 secret for JWTs, when none is configured |
//!
//! First start creates whatever is missing; the CLI reads the same files, so nobody copies
//! secrets by hand on one machine.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use outpost_trust::identity::write_private;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Validity of the hub's own server and client certificates.
const LEAF_DAYS: i64 = 365;
/// Validity of the CA.
const CA_DAYS: i64 = 3650;

/// Why PKI material could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// File trouble.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rcgen refused.
    #[error("certificate operation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A stored file is unusable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A CSR is unusable.
    #[error("certificate signing request rejected: {0}")]
    BadCsr(String),
    /// The secret could not be generated.
    #[error("random generator failed")]
    Random,
}

/// File names inside `cert_dir`.
pub mod files {
    /// CA certificate.
    pub const CA_CERT: &str = "ca.pem";
    /// CA key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// Hub certificate.
    pub const HUB_CERT: &str = "hub.pem";
    /// Hub key.
    pub const HUB_KEY: &str = "hub-key.pem";
    /// Operator client certificate.
    pub const CLIENT_CERT: &str = "client.pem";
    /// Operator client key.
    pub const CLIENT_KEY: &str = "client-key.pem";
    /// JWT secret.
    pub const AUTH_SECRET: &str = "auth_secret.txt";
}

/// The loaded CA, able to sign node certificates.
pub struct CertAuthority {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

/// Everything in `cert_dir`, loaded.
#[derive(Debug)]
pub struct HubPki {
    /// The CA.
    pub ca: CertAuthority,
    /// Hub certificate, PEM.
    pub hub_cert_pem: String,
    /// Hub key, PEM.
    pub hub_key_pem: String,
    /// The auth secret from `auth_secret.txt`.
    pub auth_secret_file: String,
    /// What `init` created this time (file names), for the operator's log.
    pub created: Vec<&'static str>,
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "reading",
        path: path.into(),
        source,
    })
}

fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    outpost_trust::private_files::write_atomically(path, text.as_bytes(), 0o644).map_err(|source| {
        PkiError::Io {
            action: "writing",
            path: path.into(),
            source,
        }
    })
}

fn write_secret(path: &Path, text: &str) -> Result<(), PkiError> {
    write_private(path, text.as_bytes()).map_err(|e| PkiError::Invalid {
        path: path.into(),
        message: e.to_string(),
    })
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// The hub and client certificates are issued again at start once this close to expiry.
const RENEW_BEFORE_DAYS: i64 = 30;

/// Whether the certificate in `path` ends within [`RENEW_BEFORE_DAYS`] (or cannot be read).
fn expires_soon(path: &Path) -> bool {
    let ends = std::fs::read_to_string(path)
        .ok()
        .and_then(|pem| outpost_trust::tls::certs_from_pem(&pem, "certificate").ok())
        .and_then(|certs| {
            certs
                .first()
                .and_then(|c| outpost_trust::tls::not_after_unix(c).ok())
        });
    let horizon = time::OffsetDateTime::now_utc() + time::Duration::days(RENEW_BEFORE_DAYS);
    ends.is_none_or(|ends| ends < horizon.unix_timestamp())
}

fn san_for(name: &str) -> Result<SanType, PkiError> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

/// Every name on the hub certificate: the defaults, then `server_names` not already among them.
pub fn hub_names(server_names: &[String]) -> Vec<String> {
    let mut names = default_server_names();
    for name in server_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Default names on the hub certificate: loopback, `localhost` and the host name.
pub fn default_server_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(host) = sysinfo::System::host_name()
        && !names.contains(&host)
    {
        names.push(host);
    }
    names
}

impl HubPki {
    /// Loads `cert_dir`, creating whatever is missing (CA, hub certificate for `server_names`
    /// plus the defaults, operator client certificate, auth secret).
    pub fn load_or_init(cert_dir: &Path, server_names: &[String]) -> Result<Self, PkiError> {
        outpost_trust::private_files::ensure_private_dir(cert_dir).map_err(|source| {
            PkiError::Io {
                action: "creating (owner-only)",
                path: cert_dir.into(),
                source,
            }
        })?;
        let mut created = Vec::new();
        let p = |name: &str| cert_dir.join(name);

        // CA
        let (ca_pem, ca_key) = if p(files::CA_CERT).exists() && p(files::CA_KEY).exists() {
            let key =
                KeyPair::from_pem(&read(&p(files::CA_KEY))?).map_err(|e| PkiError::Invalid {
                    path: p(files::CA_KEY),
                    message: e.to_string(),
                })?;
            (read(&p(files::CA_CERT))?, key)
        } else {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, "Outpost CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, CA_DAYS);
            let cert = params.self_signed(&key)?;
            write_secret(&p(files::CA_KEY), &key.serialize_pem())?;
            write_public(&p(files::CA_CERT), &cert.pem())?;
            created.extend([files::CA_CERT, files::CA_KEY]);
            (cert.pem(), key)
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| PkiError::Invalid {
            path: p(files::CA_CERT),
            message: e.to_string(),
        })?;
        let ca = CertAuthority { ca_pem, issuer };

        // Hub server certificate (issued again when it is within RENEW_BEFORE_DAYS of expiry)
        if !(p(files::HUB_CERT).exists() && p(files::HUB_KEY).exists())
            || expires_soon(&p(files::HUB_CERT))
        {
            let names = hub_names(server_names);
            let (cert, key) =
                ca.issue_leaf("outpost-hub", &names, ExtendedKeyUsagePurpose::ServerAuth)?;
            write_secret(&p(files::HUB_KEY), &key)?;
            write_public(&p(files::HUB_CERT), &cert)?;
            created.extend([files::HUB_CERT, files::HUB_KEY]);
        }
        // Operator client certificate (mTLS CLI)
        if !(p(files::CLIENT_CERT).exists() && p(files::CLIENT_KEY).exists())
            || expires_soon(&p(files::CLIENT_CERT))
        {
            let (cert, key) = ca.issue_leaf(
                "outpost-operator",
                &["outpost-operator".to_string()],
                ExtendedKeyUsagePurpose::ClientAuth,
            )?;
            write_secret(&p(files::CLIENT_KEY), &key)?;
            write_public(&p(files::CLIENT_CERT), &cert)?;
            created.extend([files::CLIENT_CERT, files::CLIENT_KEY]);
        }
        // Auth secret
        if !p(files::AUTH_SECRET).exists() {
            let rng = ring::rand::SystemRandom::new();
            let bytes: [u8; 32] = ring::rand::generate(&rng)
                .map_err(|_| PkiError::Random)?
                .expose();
            write_secret(&p(files::AUTH_SECRET), &format!("{}\n", hex::encode(bytes)))?;
            created.push(files::AUTH_SECRET);
        }
        let auth_secret_file = read(&p(files::AUTH_SECRET))?.trim().to_string();
        if auth_secret_file.len() < 16 {
            return Err(PkiError::Invalid {
                path: p(files::AUTH_SECRET),
                message: "secret shorter than 16 characters".into(),
            });
        }
        Ok(Self {
            ca,
            hub_cert_pem: read(&p(files::HUB_CERT))?,
            hub_key_pem: read(&p(files::HUB_KEY))?,
            auth_secret_file,
            created,
        })
    }
}

impl CertAuthority {
    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn issue_leaf(
        &self,
        common_name: &str,
        names: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = names.iter().map(|n| san_for(n)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_DAYS);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the hub alone decides the subject
    /// (CN and DNS SAN = `node_id`), the usage and validity. The usage is client authentication
    /// only: clients verifying a server against the same CA (the CLI, other nodes) refuse a node
    /// certificate, so a node cannot pose as the hub.
    /// Returns the certificate PEM and the hex SHA-256 of the node's public key.
    pub fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node_id: &str,
        lifetime: std::time::Duration,
    ) -> Result<(String, String), PkiError> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der);
        let csr = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node_id);
        params.subject_alt_names = vec![SanType::DnsName(node_id.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now
            + time::Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2));
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let der = cert.der().clone();
        let spki =
            outpost_trust::tls::spki_sha256(&der).map_err(|e| PkiError::BadCsr(e.to_string()))?;
        Ok((cert.pem(), spki))
    }
}

/// Hex SHA-256 of the public key a CSR (DER) asks to be certified, read without signing anything.
pub fn csr_key_sha256(csr_der: &[u8]) -> Result<String, PkiError> {
    let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der);
    let csr = rcgen::CertificateSigningRequestParams::from_der(&der)
        .map_err(|e| PkiError::BadCsr(e.to_string()))?;
    Ok(outpost_trust::auth::sha256_hex(
        &rcgen::PublicKeyData::subject_public_key_info(&csr.public_key),
    ))
}

/// Reads the CSR's DER from PEM: the one reading of a join's CSR, whose bytes the join proof
/// covers and the CA signs (two readers could disagree on which request a text holds).
pub fn csr_der_from_pem(csr_pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::CertificateSigningRequestDer;
    use rustls::pki_types::pem::PemObject;
    CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| PkiError::BadCsr(format!("not a PEM certificate request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_signs_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let first = HubPki::load_or_init(dir.path(), &["hub.example".into()]).unwrap();
        assert_eq!(first.created.len(), 7);
        let second = HubPki::load_or_init(dir.path(), &[]).unwrap();
        assert!(second.created.is_empty());
        assert_eq!(first.ca.ca_pem(), second.ca.ca_pem());
        assert_eq!(first.auth_secret_file, second.auth_secret_file);

        let (_key, csr) = outpost_trust::identity::new_key_and_csr("node-a").unwrap();
        let (cert_pem, spki) = second
            .ca
            .sign_node_csr(csr.der(), "node-a", std::time::Duration::from_secs(3600))
            .unwrap();
        let cert = outpost_trust::tls::certs_from_pem(&cert_pem, "node").unwrap();
        assert_eq!(
            outpost_trust::tls::node_id_from_cert(&cert[0]).unwrap(),
            "node-a"
        );
        assert_eq!(outpost_trust::tls::spki_sha256(&cert[0]).unwrap(), spki);
        // A node certificate authenticates a client only: it can never serve as the hub.
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert[0]).unwrap();
        let usage = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(usage.client_auth && !usage.server_auth, "{usage:?}");
        // The CSR asked for node-a, but the hub decides the name.
        let (forced, _) = second
            .ca
            .sign_node_csr(csr.der(), "node-b", std::time::Duration::from_secs(3600))
            .unwrap();
        let forced = outpost_trust::tls::certs_from_pem(&forced, "node").unwrap();
        assert_eq!(
            outpost_trust::tls::node_id_from_cert(&forced[0]).unwrap(),
            "node-b"
        );
        assert!(
            second
                .ca
                .sign_node_csr(b"garbage", "n", std::time::Duration::from_secs(3600))
                .is_err()
        );
    }

    #[test]
    fn the_certified_key_is_the_one_the_proof_covers() {
        let dir = tempfile::tempdir().unwrap();
        let pki = HubPki::load_or_init(dir.path(), &[]).unwrap();
        let (proved_key, proved) = outpost_trust::identity::new_key_and_csr("node-a").unwrap();
        let (_, other) = outpost_trust::identity::new_key_and_csr("node-a").unwrap();
        // Two requests in one text: whatever is read from it is what gets signed.
        let text = format!("{}{}", proved.pem().unwrap(), other.pem().unwrap());
        let der = csr_der_from_pem(&text).unwrap();
        assert_eq!(der, proved.der().as_ref());
        let (_, spki) = pki
            .ca
            .sign_node_csr(&der, "node-a", std::time::Duration::from_secs(3600))
            .unwrap();
        assert_eq!(
            csr_key_sha256(&der).unwrap(),
            spki,
            "read from the CSR as signed"
        );
        assert_eq!(
            spki,
            outpost_trust::auth::sha256_hex(&rcgen::PublicKeyData::subject_public_key_info(
                &proved_key
            ))
        );
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        HubPki::load_or_init(dir.path(), &[]).unwrap();
        for f in [
            files::CA_KEY,
            files::HUB_KEY,
            files::CLIENT_KEY,
            files::AUTH_SECRET,
        ] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
}
