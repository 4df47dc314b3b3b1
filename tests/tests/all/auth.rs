//! Every way in that must be refused, each with a clear error: join with a wrong, expired or
//! reused token, a replayed answer, a node id held by another key; JWTs with the wrong audience,
//! the wrong secret or expired; mTLS without a client certificate; a node certificate used to
//! claim another node id on the QUIC session.

use std::sync::Arc;
use std::time::Duration;

use outpost_config::TlsMode;
use outpost_hub::store::TokenRow;
use outpost_node::join::{JoinError, JoinRequest, join};
use outpost_proto::v1::join_service_client::JoinServiceClient;
use outpost_proto::v1::node_registry_client::NodeRegistryClient;
use outpost_proto::v1::task_service_client::TaskServiceClient;
use outpost_proto::v1::{
    BeginJoinRequest, CompleteJoinRequest, ListNodesRequest, ListTasksRequest, NodeRef,
};
use outpost_tests::{STATIC_TOKEN, TestHub, start_node};
use outpost_trust::auth::{BootstrapToken, Role, TokenAuthority, join_proof};
use outpost_trust::grpc_channel::{self, ClientIdentity, with_bearer};
use outpost_trust::identity::{IdentityStore, new_key_and_csr};

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn try_join(hub: &TestHub, node_id: &str, token: &str) -> Result<(), String> {
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let token = BootstrapToken::parse(token);
    let url = hub.grpc_url();
    join(JoinRequest {
        hub_url: &url,
        ca_pem: &ca,
        node_id,
        name: node_id,
        token: &token,
        grpc_target: "",
    })
    .await
    .map(|_| ())
    .map_err(|e| match e {
        JoinError::Refused(message) => message,
        other => panic!("expected a refusal, got {other}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refusals_name_their_cause() {
    let hub = TestHub::start(TlsMode::Tls).await;

    // Wrong static token, and a one-shot id with a wrong secret.
    let err = try_join(&hub, "n-wrong", "not-the-static-token")
        .await
        .unwrap_err();
    assert!(err.contains("wrong bootstrap token"), "{err}");
    let real = hub.one_shot_token().await;
    let forged = format!("{}.forged-secret", real.split('.').next().unwrap());
    let err = try_join(&hub, "n-forged", &forged).await.unwrap_err();
    assert!(err.contains("wrong bootstrap token"), "{err}");

    // Unknown one-shot id.
    let err = try_join(&hub, "n-unknown", "0123456789abcdef.secret")
        .await
        .unwrap_err();
    assert!(err.contains("unknown bootstrap token"), "{err}");

    // Expired token.
    let expired = BootstrapToken::generate().unwrap();
    let now_ms = now_s() * 1000;
    hub.hub()
        .state
        .store()
        .insert_token(&TokenRow {
            id: expired.id.clone(),
            proof_key: expired.proof_key().to_vec(),
            uses_left: 1,
            expires_at_ms: now_ms - 1_000,
            created_at_ms: now_ms - 10_000,
        })
        .await
        .unwrap();
    let err = try_join(&hub, "n-expired", &expired.text())
        .await
        .unwrap_err();
    assert!(err.contains("expired"), "{err}");

    // A one-shot token works once.
    assert!(try_join(&hub, "n-first", &real).await.is_ok());
    let err = try_join(&hub, "n-second", &real).await.unwrap_err();
    assert!(err.contains("already used"), "{err}");

    // A node id already bound to another key (same id, new key) is refused.
    let err = try_join(&hub, "n-first", STATIC_TOKEN).await.unwrap_err();
    assert!(err.contains("already held by another key"), "{err}");

    // None of the refusals left a node behind.
    let ids: Vec<String> = hub
        .nodes_json()
        .await
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["n-first".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_meets_the_registrys_rules_and_the_cli_prints_names_inert() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let url = hub.grpc_url();
    let token = BootstrapToken::parse(STATIC_TOKEN);
    let attempt = async |node_id: &str, name: &str, grpc_target: &str| {
        join(JoinRequest {
            hub_url: &url,
            ca_pem: &ca,
            node_id,
            name,
            token: &token,
            grpc_target,
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let err = attempt("n-escape", "\u{1b}[2J\u{1b}[Hall nodes healthy", "")
        .await
        .unwrap_err();
    assert!(
        err.contains("name") && err.contains("control characters"),
        "{err}"
    );
    let err = attempt("n-bidi", "gpu-\u{202e}10-ugp", "")
        .await
        .unwrap_err();
    assert!(err.contains("U+202E"), "{err}");
    let err = attempt("n-target", "fine", "file:///etc/passwd")
        .await
        .unwrap_err();
    assert!(err.contains("grpc_target"), "{err}");
    assert!(
        hub.nodes_json().await.is_empty(),
        "no refused join left a node"
    );

    // A row written before these rules (or by another tool) still prints inert.
    attempt("n-old", "old", "").await.unwrap();
    let store = hub.hub().state.store();
    let mut row = store.get_node("n-old").await.unwrap().unwrap();
    row.name = "\u{1b}]0;pwned\u{7}evil".into();
    store.update_node_record(&row).await.unwrap();
    let (code, out, err) = hub.cli(&["nodes", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("\\u{1b}]0;pwned\\u{7}evil"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_flood_is_refused_before_it_writes_and_real_nodes_still_join() {
    let hub = TestHub::start_adjusted(TlsMode::Tls, |config| {
        config.internal_grpc.bootstrap.joins_per_second = 100;
        config.internal_grpc.bootstrap.joins_per_second_per_source = 2;
    })
    .await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = outpost_trust::grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let mut client = JoinServiceClient::new(channel);
    let (mut admitted, mut refused) = (0, Vec::new());
    let started = std::time::Instant::now();
    for i in 0..200 {
        match client
            .begin_join(BeginJoinRequest {
                node_id: format!("flood-{i}"),
            })
            .await
        {
            Ok(_) => admitted += 1,
            Err(status) => refused.push(status),
        }
    }
    // The burst (four seconds at 2 a second) and the tokens refilled while the loop ran.
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    assert!(
        (8..=8 + refilled).contains(&admitted),
        "{admitted} admitted in {:?}",
        started.elapsed()
    );
    let first = &refused[0];
    assert_eq!(first.code(), tonic::Code::ResourceExhausted);
    assert!(
        first
            .message()
            .contains("too many joins from 127.0.0.1: at most 2 a second"),
        "{}",
        first.message()
    );
    let retry: u64 = first
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=500).contains(&retry), "{retry}");
    // A real node joining from the same address waits its turn and gets in.
    let node = start_node(hub.node_config("after-flood", STATIC_TOKEN)).await;
    assert!(node.joined_now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_join_answer_is_refused() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let mut client = JoinServiceClient::new(channel);
    let challenge = client
        .begin_join(BeginJoinRequest {
            node_id: "replay-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (_key, csr) = new_key_and_csr("replay-1").unwrap();
    let token = BootstrapToken::parse(STATIC_TOKEN);
    let request = CompleteJoinRequest {
        challenge_id: challenge.challenge_id.clone(),
        node_id: "replay-1".into(),
        csr_pem: csr.pem().unwrap(),
        token_id: token.id.clone(),
        proof: join_proof(&token.proof_key(), &challenge.nonce, "replay-1", csr.der()),
        name: "replay".into(),
        grpc_target: String::new(),
    };
    let first = client
        .complete_join(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.certificate_pem.contains("BEGIN CERTIFICATE"));
    let replay = client.complete_join(request.clone()).await.unwrap_err();
    assert_eq!(replay.code(), tonic::Code::PermissionDenied);
    assert!(
        replay.message().contains("already answered"),
        "{}",
        replay.message()
    );

    // An answer bound to another node id than the challenge's is refused too.
    let challenge = client
        .begin_join(BeginJoinRequest {
            node_id: "replay-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut other = request;
    other.challenge_id = challenge.challenge_id;
    other.node_id = "replay-3".into();
    let err = client.complete_join(other).await.unwrap_err();
    assert!(
        err.message().contains("issued for node"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jwts_are_refused_with_the_reason() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let secret = std::fs::read_to_string(hub.config.cert_dir().join("auth_secret.txt")).unwrap();
    let secret = secret.trim().as_bytes();
    let channel = grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let mut client = NodeRegistryClient::new(channel.clone());
    let good = TokenAuthority::new(secret, "outpost", "outpost-internal", 30);
    let cases = [
        (
            TokenAuthority::new(secret, "outpost", "someone-else", 30)
                .issue("a", Role::Admin, now_s(), 60)
                .unwrap(),
            "audience",
        ),
        (
            TokenAuthority::new(
                b"a-completely-different-secret",
                "outpost",
                "outpost-internal",
                30,
            )
            .issue("a", Role::Admin, now_s(), 60)
            .unwrap(),
            "signature",
        ),
        (
            good.issue("a", Role::Admin, now_s() - 3600, 60).unwrap(),
            "expired",
        ),
        ("garbage".to_string(), "malformed"),
    ];
    for (token, expected) in cases {
        let err = client
            .list_nodes(with_bearer(ListNodesRequest {}, &token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{expected}");
        assert!(
            err.message().contains(expected),
            "{expected}: {}",
            err.message()
        );
    }
    let err = client.list_nodes(ListNodesRequest {}).await.unwrap_err();
    assert!(
        err.message().contains("missing bearer token"),
        "{}",
        err.message()
    );
    // A viewer reads but cannot write.
    let viewer = good.issue("v", Role::Viewer, now_s(), 60).unwrap();
    assert!(
        client
            .list_nodes(with_bearer(ListNodesRequest {}, &viewer))
            .await
            .is_ok()
    );
    let err = client
        .register_node(with_bearer(
            outpost_proto::v1::NodeRecord {
                id: "x".into(),
                name: "x".into(),
                grpc_target: "https://x:1".into(),
                ..Default::default()
            },
            &viewer,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "{}",
        err.message()
    );

    // A node credential (the real one, from a joined node's files) reads its own record only:
    // not the fleet, not another node, no tasks.
    let config = hub.node_config("n-self", STATIC_TOKEN);
    let data_dir = config.data_dir();
    let joined = start_node(config).await;
    let node = IdentityStore::new(&data_dir)
        .load()
        .unwrap()
        .unwrap()
        .node_jwt;
    let own = client
        .get_node(with_bearer(
            NodeRef {
                id: "n-self".into(),
            },
            &node,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.record.unwrap().id, "n-self");
    let refusals = [
        client
            .list_nodes(with_bearer(ListNodesRequest {}, &node))
            .await
            .unwrap_err(),
        client
            .get_node(with_bearer(
                NodeRef {
                    id: "n-other".into(),
                },
                &node,
            ))
            .await
            .unwrap_err(),
        TaskServiceClient::new(channel.clone())
            .list_tasks(with_bearer(ListTasksRequest::default(), &node))
            .await
            .unwrap_err(),
    ];
    for err in refusals {
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().starts_with("role node may not"),
            "{}",
            err.message()
        );
    }

    // Deleted, the node's credential stops at once, though its JWT has a year to run.
    joined.shutdown().await;
    let (code, _, err) = hub.cli(&["nodes", "delete", "n-self"]).await;
    assert_eq!(code, 0, "{err}");
    let err = client
        .get_node(with_bearer(
            NodeRef {
                id: "n-self".into(),
            },
            &node,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(
        err.message()
            .contains("node credential no longer holds: node \"n-self\" is not in the registry"),
        "{}",
        err.message()
    );
    let rest = format!("{}/api/admin/agent-nodes/n-self", hub.http_url());
    let (status, body) = outpost_tests::http_json("GET", &rest, Some(&node), None).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_mode_requires_a_client_certificate() {
    let hub = TestHub::start(TlsMode::Mtls).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let secret = std::fs::read_to_string(hub.config.cert_dir().join("auth_secret.txt")).unwrap();
    let admin = TokenAuthority::new(secret.trim().as_bytes(), "outpost", "outpost-internal", 30)
        .issue("a", Role::Admin, now_s(), 60)
        .unwrap();

    let bare = grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let err = NodeRegistryClient::new(bare)
        .list_nodes(with_bearer(ListNodesRequest {}, &admin))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("client certificate"),
        "{}",
        err.message()
    );

    let cert_dir = hub.config.cert_dir();
    let identity = ClientIdentity {
        cert_pem: std::fs::read_to_string(cert_dir.join("client.pem")).unwrap(),
        key_pem: std::fs::read_to_string(cert_dir.join("client-key.pem")).unwrap(),
    };
    let with_cert = grpc_channel::connect(&hub.grpc_url(), &ca, Some(&identity), None)
        .await
        .unwrap();
    assert!(
        NodeRegistryClient::new(with_cert)
            .list_nodes(with_bearer(ListNodesRequest {}, &admin))
            .await
            .is_ok()
    );

    // Nodes still join (the token proof authenticates) and hold their session.
    let node = start_node(hub.node_config("mtls-node", STATIC_TOKEN)).await;
    hub.wait_status("mtls-node", "online", Duration::from_secs(10))
        .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificate_cannot_claim_another_node() {
    let hub = TestHub::start(TlsMode::Tls).await;
    // Two real nodes join; then n-a's certificate tries to speak for n-b.
    for id in ["n-a", "n-b"] {
        let node = start_node(hub.node_config(id, STATIC_TOKEN)).await;
        node.shutdown().await;
    }
    let a = IdentityStore::new(&hub.dir.path().join("nodes").join("n-a"))
        .load()
        .unwrap()
        .unwrap();
    let b = IdentityStore::new(&hub.dir.path().join("nodes").join("n-b"))
        .load()
        .unwrap()
        .unwrap();
    let certs = outpost_trust::tls::certs_from_pem(&a.certificate_pem, "cert").unwrap();
    let key = outpost_trust::tls::key_from_pem(&a.key_pem, "key").unwrap();
    let client_config = outpost_trust::tls::quic_client_config(&a.ca_pem, certs, key).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();

    for (claimed, jwt) in [
        ("n-b", a.node_jwt.clone()),
        ("n-b", b.node_jwt.clone()),
        ("n-a", b.node_jwt.clone()),
    ] {
        let connection = endpoint
            .connect_with(client_config.clone(), hub.hub().addrs.quic, "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        let hello = outpost_proto::v1::NodeHello {
            node_id: claimed.into(),
            jwt,
            ..Default::default()
        };
        outpost_proto::framing::write_frame(&mut send, &hello)
            .await
            .unwrap();
        let _ = send.finish();
        let reason = tokio::time::timeout(Duration::from_secs(15), connection.closed())
            .await
            .expect("hub closes the session");
        let text = reason.to_string();
        assert!(
            text.contains("certificate is for node \"n-a\""),
            "claiming {claimed}: {text}"
        );
    }

    // A connection without any client certificate does not get through the handshake.
    let roots = outpost_trust::tls::roots_from_pem(&a.ca_pem).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(outpost_trust::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![outpost_trust::tls::SESSION_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let anonymous = quinn::ClientConfig::new(Arc::new(crypto));
    let attempt = endpoint
        .connect_with(anonymous, hub.hub().addrs.quic, "127.0.0.1")
        .unwrap();
    let outcome: Result<(), String> = tokio::time::timeout(Duration::from_secs(15), async {
        match attempt.await {
            Err(e) => Err(e.to_string()),
            Ok(connection) => {
                // TLS 1.3 may finish the client side before the server rejects: the close follows.
                Err(connection.closed().await.to_string())
            }
        }
    })
    .await
    .expect("decided within 5 s");
    let text = outcome.unwrap_err();
    assert!(text.to_lowercase().contains("certificate"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_pose_as_the_hub() {
    let hub = TestHub::start(TlsMode::Tls).await;

    // Ids that name a host address, or the hub itself, are refused at join and at registration.
    let err = try_join(&hub, "localhost", STATIC_TOKEN).await.unwrap_err();
    assert!(err.contains("names a host address"), "{err}");
    let err = try_join(&hub, "127.0.0.1", STATIC_TOKEN).await.unwrap_err();
    assert!(err.contains("names a host address"), "{err}");
    let own_names = outpost_hub::credentials::pki::default_server_names();
    if let Some(host) = own_names
        .iter()
        .find(|n| outpost_trust::identity::validate_node_id(n).is_ok())
    {
        let err = try_join(&hub, host, STATIC_TOKEN).await.unwrap_err();
        assert!(err.contains("one of the hub's own names"), "{err}");
        let secret =
            std::fs::read_to_string(hub.config.cert_dir().join("auth_secret.txt")).unwrap();
        let admin =
            TokenAuthority::new(secret.trim().as_bytes(), "outpost", "outpost-internal", 30)
                .issue("a", Role::Admin, now_s(), 60)
                .unwrap();
        let body =
            serde_json::json!({"id": host, "name": "impostor", "grpc_target": "https://x:1"});
        let (status, answer) = outpost_tests::http_json(
            "POST",
            &format!("{}/api/admin/agent-nodes", hub.http_url()),
            Some(&admin),
            Some(&body.to_string()),
        )
        .await;
        assert_eq!((status, &answer["field"]), (400, &"id".into()), "{answer}");
    }

    // Even a certificate the CA signed for "localhost" (as a node certificate is) does not pass
    // as a server: a client of the hub refuses it, so it never gets a token to steal.
    let pki =
        outpost_hub::credentials::pki::HubPki::load_or_init(&hub.config.cert_dir(), &[]).unwrap();
    let (key, csr) = new_key_and_csr("localhost").unwrap();
    let (cert_pem, _) = pki
        .ca
        .sign_node_csr(csr.der(), "localhost", Duration::from_secs(3600))
        .unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&cert_pem, key.serialize_pem()),
    );
    let impostor = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(health)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let impostor = tokio::spawn(impostor);
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let refused =
        match grpc_channel::connect(&format!("https://localhost:{port}"), &ca, None, None).await {
            Err(e) => grpc_channel::error_chain(&e),
            Ok(channel) => {
                let answer = tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await;
                match answer {
                    Err(status) => format!("{status:?}"),
                    Ok(_) => panic!("a node certificate was accepted as the hub's"),
                }
            }
        };
    assert!(
        refused.contains("does not allow extended key usage for server authentication"),
        "refused for the certificate's purpose: {refused}"
    );
    impostor.abort();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_live_in_owner_only_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let hub = TestHub::start(TlsMode::Tls).await;
    let node_config = hub.node_config("private-1", STATIC_TOKEN);
    let node = start_node(node_config.clone()).await;
    hub.wait_status("private-1", "online", Duration::from_secs(15))
        .await;

    let data = hub.config.data_dir();
    assert_eq!(mode(&data), 0o700, "hub data dir");
    assert_eq!(mode(&hub.config.cert_dir()), 0o700, "cert dir");
    assert_eq!(mode(&hub.config.cert_dir().join("ca-key.pem")), 0o600);
    if hub.config.storage.url.is_none() {
        // SQLite: the database and its WAL hold token proof keys.
        assert_eq!(mode(&data.join("outpost.db")), 0o600, "database");
        assert_eq!(mode(&data.join("outpost.db-wal")), 0o600, "database WAL");
    }
    let node_data = node_config.data_dir();
    assert_eq!(mode(&node_data), 0o700, "node data dir");
    assert_eq!(mode(&node_data.join("identity")), 0o700, "identity dir");
    assert_eq!(
        mode(&node_data.join("identity").join("identity.json")),
        0o600
    );
    node.shutdown().await;
}
