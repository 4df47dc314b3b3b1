//! Building gRPC channels to the hub over TLS (and mTLS when a client identity is given), and
//! attaching a bearer JWT to every call.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a valid endpoint.
    #[error("invalid hub URL {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// TLS setup or the connection failed.
    #[error("connecting to {url}: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// Why, with the transport's own words.
        message: String,
    },
}

/// Client certificate and key (PEM) for mTLS.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

/// Connects to `url` (`https://host:port`) trusting `ca_pem`; presents `identity` when given.
pub async fn connect(
    url: &str,
    ca_pem: &str,
    identity: Option<&ClientIdentity>,
    server_name: Option<&str>,
) -> Result<Channel, ConnectError> {
    let endpoint = endpoint(url, ca_pem, identity, server_name)?;
    endpoint.connect().await.map_err(|e| ConnectError::Connect {
        url: url.into(),
        message: error_chain(&e),
    })
}

/// The endpoint for `url`, without connecting.
pub fn endpoint(
    url: &str,
    ca_pem: &str,
    identity: Option<&ClientIdentity>,
    server_name: Option<&str>,
) -> Result<Endpoint, ConnectError> {
    let url_err = |message: String| ConnectError::Url {
        url: url.into(),
        message,
    };
    if !url.starts_with("https://") {
        return Err(url_err(
            "the internal API is TLS only: use https://host:port".into(),
        ));
    }
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(name) = server_name {
        tls = tls.domain_name(name);
    }
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    }
    Endpoint::from_shared(url.to_string())
        .map_err(|e| url_err(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| url_err(error_chain(&e)))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(30))
        })
}

/// Adds `authorization: Bearer <jwt>` to a request.
pub fn with_bearer<T>(message: T, jwt: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = MetadataValue::try_from(format!("Bearer {jwt}")) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The error and its sources, joined with ": ", so transport errors name their real cause.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Host part of an `https://host:port` URL (brackets removed from IPv6).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h.to_string());
    }
    Some(
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            url_host("https://127.0.0.1:50051").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            url_host("https://hub.example:1/x").as_deref(),
            Some("hub.example")
        );
        assert_eq!(url_host("https://[::1]:5").as_deref(), Some("::1"));
    }

    #[test]
    fn plain_http_is_refused() {
        let err = endpoint("http://127.0.0.1:1", "", None, None).unwrap_err();
        assert!(err.to_string().contains("TLS only"), "{err}");
    }
}
