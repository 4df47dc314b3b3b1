//! The node's identity: its id, its key pair, the certificate the hub signed at join, the hub CA
//! and the node JWT, kept in `<data_dir>/identity/` and reused on every restart.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Checks a node id: 1–63 characters of `[A-Za-z0-9._-]`, starting with a letter or digit (so it
/// is usable as a DNS name in the node certificate and as a path component), and not a name
/// that means "this machine" to a client — `localhost` or an IP address — which a node
/// certificate must never carry.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 63 {
        return Err(format!(
            "node id must be 1 to 63 characters, got {}",
            id.len()
        ));
    }
    let mut chars = id.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("node id {id:?} must start with a letter or digit"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "node id {id:?} contains {bad:?}; use letters, digits, '-', '_' or '.'"
        ));
    }
    let lower = id.to_ascii_lowercase();
    if lower == "localhost"
        || lower.ends_with(".localhost")
        || id.parse::<std::net::IpAddr>().is_ok()
    {
        return Err(format!(
            "node id {id:?} names a host address, not a node (set [server] node_id to the node's own name)"
        ));
    }
    Ok(())
}

/// Why the identity could not be created, stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// File system trouble.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Key or CSR generation failed.
    #[error("generating node key: {0}")]
    Keygen(#[from] rcgen::Error),
    /// The stored files are inconsistent.
    #[error("stored identity in {path} is unusable: {message}")]
    Corrupt {
        /// The identity directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What a joined node keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinedIdentity {
    /// The node id the certificate was issued for.
    pub node_id: String,
    /// Node certificate, PEM.
    pub certificate_pem: String,
    /// Node private key, PEM (PKCS#8).
    pub key_pem: String,
    /// Hub CA certificate, PEM.
    pub ca_pem: String,
    /// Node JWT.
    pub node_jwt: String,
    /// The hub's QUIC port.
    pub quic_port: u16,
    /// TLS server name of the hub.
    pub hub_server_name: String,
    /// The gRPC URL the node joined through.
    pub hub_url: String,
}

/// Files of the identity under a data directory.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    dir: PathBuf,
}

impl IdentityStore {
    /// The identity directory under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("identity"),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("identity.json")
    }

    /// The stored identity, if the node has joined before.
    pub fn load(&self) -> Result<Option<JoinedIdentity>, IdentityError> {
        let path = self.file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IdentityError::Io {
                    action: "reading",
                    path,
                    source,
                });
            }
        };
        let identity: JoinedIdentity =
            serde_json::from_str(&text).map_err(|e| IdentityError::Corrupt {
                path: self.dir.clone(),
                message: e.to_string(),
            })?;
        Ok(Some(identity))
    }

    /// Writes the identity atomically (temp file + rename, never through a symlink), readable by
    /// the owner only.
    pub fn save(&self, identity: &JoinedIdentity) -> Result<(), IdentityError> {
        crate::private_files::ensure_private_dir(&self.dir).map_err(|source| {
            IdentityError::Io {
                action: "creating (owner-only)",
                path: self.dir.clone(),
                source,
            }
        })?;
        let text = serde_json::to_string_pretty(identity).map_err(|e| IdentityError::Corrupt {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        write_private(&self.file(), text.as_bytes())
    }
}

/// Writes `bytes` to `path` with mode 0600 on Unix, atomically and without following a symlink
/// at `path` ([`crate::private_files::write_atomically`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    crate::private_files::write_atomically(path, bytes, 0o600).map_err(|source| IdentityError::Io {
        action: "writing",
        path: path.to_path_buf(),
        source,
    })
}

/// A fresh key pair and a CSR for `node_id` (CN and DNS SAN = node id).
pub fn new_key_and_csr(
    node_id: &str,
) -> Result<(rcgen::KeyPair, rcgen::CertificateSigningRequest), IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = csr_for(node_id, &key)?;
    Ok((key, csr))
}

/// A CSR for `node_id` signed with the key in `key_pem` (a renewal keeps the key), PEM.
pub fn renewal_csr(node_id: &str, key_pem: &str) -> Result<String, IdentityError> {
    let key = rcgen::KeyPair::from_pem(key_pem)?;
    Ok(csr_for(node_id, &key)?.pem()?)
}

fn csr_for(
    node_id: &str,
    key: &rcgen::KeyPair,
) -> Result<rcgen::CertificateSigningRequest, IdentityError> {
    let mut params = rcgen::CertificateParams::new(vec![node_id.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_id);
    Ok(params.serialize_request(key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(validate_node_id("gpu-01").is_ok());
        assert!(validate_node_id("edge.node_7").is_ok());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("-x").is_err());
        assert!(validate_node_id("a/b").unwrap_err().contains("'/'"));
        assert!(validate_node_id(&"a".repeat(64)).is_err());
        for address in [
            "localhost",
            "LocalHost",
            "hub.localhost",
            "127.0.0.1",
            "10.0.0.7",
        ] {
            let err = validate_node_id(address).unwrap_err();
            assert!(err.contains("names a host address"), "{address}: {err}");
        }
        assert!(validate_node_id("localhost-2").is_ok());
        assert!(validate_node_id("10.0.0.7.lab").is_ok());
    }

    #[test]
    fn identity_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::new(dir.path());
        assert!(store.load().unwrap().is_none());
        let id = JoinedIdentity {
            node_id: "n1".into(),
            certificate_pem: "c".into(),
            key_pem: "k".into(),
            ca_pem: "ca".into(),
            node_jwt: "j".into(),
            quic_port: 5,
            hub_server_name: "localhost".into(),
            hub_url: "https://127.0.0.1:1".into(),
        };
        store.save(&id).unwrap();
        assert_eq!(store.load().unwrap().unwrap().node_jwt, "j");
        std::fs::write(dir.path().join("identity/identity.json"), "{").unwrap();
        assert!(matches!(store.load(), Err(IdentityError::Corrupt { .. })));
    }
}
