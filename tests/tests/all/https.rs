//! The REST API over HTTPS (`[server] tls = true`): served with the hub certificate, reached
//! by curl and by a rustls client that trust the hub CA, refused to plain HTTP and to clients
//! that trust another CA, and not held up by a client that never finishes its handshake.

use std::sync::Arc;

use outpost_config::TlsMode;
use outpost_tests::TestHub;
use outpost_trust::auth::Role;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One HTTP/1.1 GET over TLS with a bearer token, trusting `ca_pem`; the status line and body.
async fn https_get(addr: &str, ca_pem: &str, path: &str, token: &str) -> Result<String, String> {
    let roots = outpost_trust::tls::roots_from_pem(ca_pem).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(outpost_trust::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_serves_https_with_the_hub_certificate() {
    let hub = TestHub::start_adjusted(TlsMode::Tls, |config| config.server.tls = true).await;
    assert!(hub.http_url().starts_with("https://"), "{}", hub.http_url());
    assert!(hub.hub().addrs.http_url().starts_with("https://"));
    let addr = hub.config.server.listen.clone();
    let ca_pem = std::fs::read_to_string(hub.ca_file()).unwrap();
    let admin = hub.token("admin", Role::Admin);

    // A client that never says a word holds one handshake slot, not the listener.
    let _silent = tokio::net::TcpStream::connect(&addr).await.unwrap();

    let response = https_get(&addr, &ca_pem, "/api/admin/agent-nodes", &admin)
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("[]"), "{response}");

    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"GET /api/admin/agent-nodes HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "plain HTTP was served: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // A client that trusts another CA refuses the hub.
    let other = tempfile::tempdir().unwrap();
    let other_pki = outpost_hub::credentials::pki::HubPki::load_or_init(other.path(), &[]).unwrap();
    let err = https_get(
        &addr,
        other_pki.ca.ca_pem(),
        "/api/admin/agent-nodes",
        &admin,
    )
    .await
    .unwrap_err();
    assert!(err.contains("handshake"), "{err}");

    // curl, a client we did not write, with the hub CA.
    let curl = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--cacert"])
        .arg(hub.ca_file())
        .args(["-H", &format!("authorization: Bearer {admin}")])
        .arg(format!(
            "https://localhost:{}/api/admin/agent-nodes",
            hub.hub().addrs.http.port()
        ))
        .output()
        .await;
    match curl {
        Ok(out) => {
            assert!(
                out.status.success(),
                "curl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
        }
        Err(err) => eprintln!("curl not run ({err}); the rustls client above covered HTTPS"),
    }
}
