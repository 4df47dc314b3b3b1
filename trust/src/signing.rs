//! Signed tools: a publisher signs a component and its policy with an Ed25519 key (ring); the
//! hub accepts pushes only from trusted publishers when it is told to, and nodes check the
//! signature before they run a tool.
//!
//! What is signed is the component's sha256 and the policy's sha256, under a domain prefix, so
//! a signature can be checked wherever the digest is known (the node has the component by
//! digest) and a changed policy voids it. Keys and signatures are text:
//!
//! | what | form |
//! |---|---|
//! | public key (a publisher) | `ed25519:<base64 of the 32-byte key>` |
//! | private key file | the base64 of its PKCS#8 document, one line, owner-only |
//! | signature file (`tool.wasm.sig`) | JSON `{"publisher": "ed25519:…", "signature": "<base64>"}` |

use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Prefix of a publisher's public key text.
const KEY_PREFIX: &str = "ed25519:";
/// Domain of what a tool signature covers (a signature of anything else never passes as one).
const DOMAIN: &[u8] = b"outpost tool signature v1\n";

/// Why a key or signature is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key or signature text does not parse.
    #[error("{0}")]
    Malformed(String),
    /// The signature does not verify for this component and policy.
    #[error("the signature by {publisher} does not match this component and policy")]
    Mismatch {
        /// Who it claims to be from.
        publisher: String,
    },
    /// Key generation failed.
    #[error("generating a key: {0}")]
    Random(String),
}

/// A publisher's signature over a component and its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSignature {
    /// The publisher's public key, `ed25519:<base64>`.
    pub publisher: String,
    /// The Ed25519 signature, base64.
    pub signature: String,
}

/// A new publisher key: its PKCS#8 document (base64, to keep in an owner-only file) and its
/// public key text.
pub fn generate_key() -> Result<(String, String), SignatureError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| SignatureError::Random(e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| SignatureError::Malformed(format!("new key: {e}")))?;
    Ok((
        b64().encode(pkcs8.as_ref()),
        public_text(pair.public_key().as_ref()),
    ))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn public_text(key: &[u8]) -> String {
    format!("{KEY_PREFIX}{}", b64().encode(key))
}

/// The 32 bytes of a public key text; the error names what is wrong.
pub fn parse_publisher(text: &str) -> Result<Vec<u8>, SignatureError> {
    let body = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(|| {
        SignatureError::Malformed(format!(
            "publisher key {text:?} does not start with {KEY_PREFIX}"
        ))
    })?;
    let key = b64()
        .decode(body)
        .map_err(|e| SignatureError::Malformed(format!("publisher key {text:?}: {e}")))?;
    if key.len() != 32 {
        return Err(SignatureError::Malformed(format!(
            "publisher key {text:?} is {} bytes, not 32",
            key.len()
        )));
    }
    Ok(key)
}

fn message(component_digest: &str, policy_toml: &str) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(component_digest.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(crate::auth::sha256_hex(policy_toml.as_bytes()).as_bytes());
    message.push(b'\n');
    message
}

/// Signs the component with sha256 `component_digest` and its policy with the key in
/// `private_key` (the text of a key file).
pub fn sign(
    private_key: &str,
    component_digest: &str,
    policy_toml: &str,
) -> Result<ToolSignature, SignatureError> {
    let pkcs8 = b64()
        .decode(private_key.trim())
        .map_err(|e| SignatureError::Malformed(format!("private key: {e}")))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| SignatureError::Malformed(format!("private key: {e}")))?;
    let signature = pair.sign(&message(component_digest, policy_toml));
    Ok(ToolSignature {
        publisher: public_text(pair.public_key().as_ref()),
        signature: b64().encode(signature.as_ref()),
    })
}

/// Checks `signature` over the component with sha256 `component_digest` and `policy_toml`.
pub fn verify(
    signature: &ToolSignature,
    component_digest: &str,
    policy_toml: &str,
) -> Result<(), SignatureError> {
    let key = parse_publisher(&signature.publisher)?;
    let bytes = b64()
        .decode(signature.signature.trim())
        .map_err(|e| SignatureError::Malformed(format!("signature: {e}")))?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&message(component_digest, policy_toml), &bytes)
        .map_err(|_| SignatureError::Mismatch {
            publisher: signature.publisher.clone(),
        })
}

/// Whether `publisher` is one of `trusted` (compared as keys, not as text).
pub fn is_trusted(publisher: &str, trusted: &[String]) -> bool {
    let Ok(key) = parse_publisher(publisher) else {
        return false;
    };
    trusted
        .iter()
        .any(|t| parse_publisher(t).is_ok_and(|k| k == key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_the_component_and_the_policy() {
        let (private, public) = generate_key().unwrap();
        let digest = crate::auth::sha256_hex(b"component");
        let signed = sign(&private, &digest, "[limits]\n").unwrap();
        assert_eq!(signed.publisher, public);
        verify(&signed, &digest, "[limits]\n").unwrap();
        assert!(is_trusted(&public, &[format!(" {public} ")]));

        let other = crate::auth::sha256_hex(b"other component");
        assert!(matches!(
            verify(&signed, &other, "[limits]\n"),
            Err(SignatureError::Mismatch { .. })
        ));
        assert!(verify(&signed, &digest, "[network]\nallow_hosts = [\"x\"]\n").is_err());
        let (_, stranger) = generate_key().unwrap();
        let forged = ToolSignature {
            publisher: stranger.clone(),
            ..signed.clone()
        };
        assert!(verify(&forged, &digest, "[limits]\n").is_err());
        assert!(!is_trusted(&stranger, &[public]));
        assert!(parse_publisher("rsa:abc").is_err());
        assert!(
            parse_publisher("ed25519:AAAA")
                .unwrap_err()
                .to_string()
                .contains("not 32")
        );
    }
}
