//! The direct route: a node that serves `NodeService` on its own listener gets the hub's
//! commands there (a native agent and a WASM task run over it), health and reflection answer a
//! client without credentials as `grpcurl -insecure` would be, commands are refused to anyone
//! but the hub, and a route that leads to another node is refused by the hub's key pin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_config::TlsMode;
use outpost_proto::v1::node_service_client::NodeServiceClient;
use outpost_proto::v1::{HubCommand, Ping, hub_command, node_reply};
use outpost_tests::{TestHub, start_node};
use outpost_trust::auth::Role;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use crate::agents::{Events, agent_node, post, wait_agent};
use crate::tasks::{parse, push, send_and_wait};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Accepts any server certificate, as `grpcurl -insecure` does.
#[derive(Debug)]
struct Insecure(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Insecure {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
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

    fn verify_tls13_signature(
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

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A channel to `addr` that trusts any server, presenting `client` (certificate and key PEM)
/// when given.
async fn insecure_channel(
    addr: SocketAddr,
    client: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    use outpost_trust::tls;
    let provider = tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Insecure(provider)));
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                tls::certs_from_pem(cert, "cert").unwrap(),
                tls::key_from_pem(key, "key").unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
}

/// Calls `method` on `addr` with curl (HTTP/2, no verification), the request message being a
/// proto whose field 1 is `field`; the response body and the headers with trailers. `None`
/// where no curl can speak HTTP/2.
async fn curl_grpc(addr: SocketAddr, method: &str, field: &[u8]) -> Option<(Vec<u8>, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut message = Vec::new();
    if !field.is_empty() {
        message.push(0x0a);
        message.push(u8::try_from(field.len()).unwrap());
        message.extend_from_slice(field);
    }
    let mut frame = vec![0_u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    let request = dir.path().join("request");
    std::fs::write(&request, &frame).unwrap();
    let (body, headers) = (dir.path().join("body"), dir.path().join("headers"));
    let status = tokio::process::Command::new("curl")
        .args(["-sk", "--http2", "-X", "POST"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", request.display()))
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&headers)
        .arg(format!("https://{addr}{method}"))
        .status()
        .await
        .ok()?;
    if !status.success() {
        return None;
    }
    Some((
        std::fs::read(&body).unwrap_or_default(),
        std::fs::read_to_string(&headers).unwrap_or_default(),
    ))
}

fn ping() -> HubCommand {
    HubCommand {
        id: 7,
        kind: Some(hub_command::Kind::Ping(Ping { sent_at_us: 1 })),
    }
}

async fn health_json(hub: &TestHub, id: &str) -> (u8, serde_json::Value, String) {
    let (code, out, err) = hub.cli(&["nodes", "health", id, "--json"]).await;
    // An unreachable node's health is printed before the error.
    (code, parse(out.lines().next().unwrap_or_default()), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_tasks_run_over_the_direct_route_and_only_the_hub_commands_it() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("admin", Role::Admin);
    let viewer = hub.token("viewer", Role::Viewer);
    let (mut config, _safe) = agent_node(&hub, "dr-n");
    let port = free_port();
    let target = format!("https://127.0.0.1:{port}");
    config.node.grpc_target = Some(target.clone());
    config.internal_grpc.listen = format!("127.0.0.1:{port}");
    let data_dir = config.data_dir();
    let node = start_node(config).await;
    let direct = node.direct_route.expect("the node serves the direct route");
    assert_eq!(direct.port(), port);
    hub.wait_status("dr-n", "online", Duration::from_secs(15))
        .await;

    // The hub's commands go there: its health ping took the direct route.
    let (code, health, err) = health_json(&hub, "dr-n").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(health["route"], "direct", "{health}");
    assert_eq!(health["route_target"], target.as_str(), "{health}");
    assert_eq!(health["reachable"], true, "{health}");

    // A native agent is started, fed and stopped over it; its output still comes live.
    let (status, created) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(
            json!({"name": "direct", "node": "dr-n", "command": "/bin/sh",
            "args": ["-c", "echo ready; while read l; do echo got:$l; done"]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, started) = post(&hub, &admin, &format!("/api/agents/{id}/start"), None).await;
    assert_eq!(status, 200, "{started}");
    wait_agent(&hub, &admin, &id, "running").await;
    let mut events = Events::open(
        &format!("{}/api/agents/{id}/events", hub.http_url()),
        &viewer,
    )
    .await;
    events.until("ready").await;
    let (status, err) = post(
        &hub,
        &admin,
        &format!("/api/agents/{id}/input"),
        Some(json!({"text": "over-grpc"})),
    )
    .await;
    assert_eq!(status, 202, "{err}");
    events.until("got:over-grpc").await;
    post(&hub, &admin, &format!("/api/agents/{id}/stop"), None).await;
    wait_agent(&hub, &admin, &id, "stopped").await;

    // A WASM task too: the node asks for the component, which follows over the same route.
    push(&hub, "echo", &outpost_guests::echo()).await;
    let task = send_and_wait(&hub, "dr-n", "echo", "via the direct route").await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["output"], "via the direct route", "{task}");

    // Health and reflection answer a client with no certificate; a command does not.
    let anonymous = insecure_channel(direct, None).await.unwrap();
    let serving = tonic_health::pb::health_client::HealthClient::new(anonymous.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "outpost.v1.NodeService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let names = crate::grpc_surface::service_names(anonymous.clone()).await;
    assert!(
        names.iter().any(|n| n == "outpost.v1.NodeService"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "outpost.v1.TaskService"),
        "the node lists the hub's services: {names:?}"
    );
    let older = crate::grpc_surface::service_names_v1alpha(anonymous.clone()).await;
    assert!(
        older.iter().any(|n| n == "outpost.v1.NodeService"),
        "{older:?}"
    );
    let refused = NodeServiceClient::new(anonymous)
        .command(ping())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");

    // Clients we did not write: curl without verification (what `grpcurl -insecure` does)
    // calls the health service over HTTP/2 and is refused a command; `openssl s_client` (the
    // seed's troubleshooting step) sees the node's certificate and h2.
    match curl_grpc(
        direct,
        "/grpc.health.v1.Health/Check",
        b"outpost.v1.NodeService",
    )
    .await
    {
        None => eprintln!("skipped the curl check: no curl with HTTP/2 here"),
        Some((body, headers)) => {
            assert!(headers.contains("grpc-status: 0"), "{headers}");
            // HealthCheckResponse { status: SERVING }.
            assert_eq!(body, [0, 0, 0, 0, 2, 0x08, 0x01], "{headers}");
            let (_, headers) = curl_grpc(direct, "/outpost.v1.NodeService/Command", b"")
                .await
                .unwrap();
            assert!(headers.contains("grpc-status: 16"), "{headers}");
        }
    }
    match tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &direct.to_string(),
            "-servername",
            "dr-n",
            "-alpn",
            "h2",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
    {
        Err(e) => eprintln!("skipped the openssl check: {e}"),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("CN = dr-n"), "{text}");
            assert!(text.contains("ALPN protocol: h2"), "{text}");
        }
    }

    // A node's own certificate is not the hub's: the node lets it do nothing.
    let identity = outpost_trust::identity::IdentityStore::new(&data_dir)
        .load()
        .unwrap()
        .unwrap();
    let as_node = match insecure_channel(
        direct,
        Some((&identity.certificate_pem, &identity.key_pem)),
    )
    .await
    {
        Ok(channel) => NodeServiceClient::new(channel)
            .command(ping())
            .await
            .map(|r| r.into_inner()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(
        !matches!(
            as_node.as_ref().map(|r| r.kind.clone()),
            Ok(Some(node_reply::Kind::Pong(_)))
        ),
        "a node certificate commanded the node: {as_node:?}"
    );

    // A route that leads to another node is refused by the hub: the key is not the one that
    // node joined with.
    let (mut other, _) = agent_node(&hub, "dr-other");
    let other_port = free_port();
    other.node.grpc_target = Some(format!("https://127.0.0.1:{other_port}"));
    other.internal_grpc.listen = format!("127.0.0.1:{other_port}");
    let other_node = start_node(other.clone()).await;
    hub.wait_status("dr-other", "online", Duration::from_secs(15))
        .await;
    let (code, _, err) = hub
        .cli(&["nodes", "update", "dr-other", "--grpc-target", &target])
        .await;
    assert_eq!(code, 0, "{err}");
    // The route is read when the session comes up.
    other_node.shutdown().await;
    let _other_node = start_node(other).await;
    let (code, health, _) = health_json(&hub, "dr-other").await;
    assert_ne!(code, 0, "{health}");
    assert_eq!(health["route"], "direct", "{health}");
    assert!(
        health["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not the key node dr-other joined with"),
        "{health}"
    );
    drop(node);
}
