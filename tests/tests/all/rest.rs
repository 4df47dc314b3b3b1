//! The REST registry at `/api/admin/agent-nodes`: CRUD round trip, every 400/404/409 case,
//! 401 without a token, 403 for a viewer writing.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{TestHub, http_json};
use outpost_trust::auth::Role;
use serde_json::json;

/// The key node-x is bound to in these tests (as a join would bind it).
const NODE_X_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn tokens(hub: &TestHub) -> (String, String, String) {
    (
        hub.token("admin", Role::Admin),
        hub.token("viewer", Role::Viewer),
        hub.authority()
            .issue_bound(
                "node-x",
                Role::Node,
                NODE_X_KEY,
                outpost_tests::now_s(),
                600,
            )
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_crud_and_every_error() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let (admin, viewer, node) = tokens(&hub);
    let base = format!("{}/api/admin/agent-nodes", hub.http_url());
    let body = json!({
        "id": "node-01",
        "name": "Production Node 01",
        "grpc_target": "https://node01.prod.internal:50051",
        "tls_server_name": "node01.prod.internal",
        "default_worktree_root": "/data/worktrees"
    })
    .to_string();

    // Create, read, list.
    let (status, created) = http_json("POST", &base, Some(&admin), Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "node-01");
    assert_eq!(created["status"], "offline");
    assert_eq!(created["joined"], false);
    let (status, got) = http_json("GET", &format!("{base}/node-01"), Some(&viewer), None).await;
    assert_eq!(status, 200);
    assert_eq!(got["tls_server_name"], "node01.prod.internal");
    assert_eq!(got["default_worktree_root"], "/data/worktrees");
    let (status, list) = http_json("GET", &base, Some(&viewer), None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Update (partial).
    let (status, updated) = http_json(
        "PUT",
        &format!("{base}/node-01"),
        Some(&admin),
        Some(r#"{"name":"Updated Name","default_worktree_root":"/new/path"}"#),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["name"], "Updated Name");
    assert_eq!(updated["default_worktree_root"], "/new/path");
    assert_eq!(
        updated["grpc_target"], "https://node01.prod.internal:50051",
        "untouched fields stay"
    );

    // Health of a registered node that never connected: answered, not reachable.
    let (status, health) = http_json(
        "GET",
        &format!("{base}/node-01/health"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(health["reachable"], false);
    assert!(
        health["error"].as_str().unwrap().contains("no session"),
        "{health}"
    );

    // 400s name the field.
    let bad = [
        (r#"{"name":"x","grpc_target":"https://a:1"}"#, "id"),
        (r#"{"id":"n2","grpc_target":"https://a:1"}"#, "name"),
        (r#"{"id":"n2","name":"x"}"#, "grpc_target"),
        (
            r#"{"id":"n2","name":"x","grpc_target":"node1:50051"}"#,
            "grpc_target",
        ),
        (
            r#"{"id":"n2","name":"x","grpc_target":"https://a:1","default_worktree_root":"rel"}"#,
            "default_worktree_root",
        ),
        (
            r#"{"id":"bad id","name":"x","grpc_target":"https://a:1"}"#,
            "id",
        ),
        (
            r#"{"id":"n2","name":7,"grpc_target":"https://a:1"}"#,
            "name",
        ),
        (
            r#"{"id":"n2","name":"x","grpc_target":"https://a:1","colour":"red"}"#,
            "colour",
        ),
    ];
    for (body, field) in bad {
        let (status, err) = http_json("POST", &base, Some(&admin), Some(body)).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["field"], field, "{body}: {err}");
        assert!(err["error"].as_str().unwrap().contains(field), "{err}");
    }
    let (status, err) = http_json("POST", &base, Some(&admin), Some("{not json")).await;
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("JSON"), "{err}");
    let (status, err) = http_json(
        "PUT",
        &format!("{base}/node-01"),
        Some(&admin),
        Some(r#"{"id":"other"}"#),
    )
    .await;
    assert_eq!((status, err["field"].as_str()), (400, Some("id")), "{err}");
    let (status, err) = http_json(
        "PUT",
        &format!("{base}/node-01"),
        Some(&admin),
        Some(r#"{"grpc_target":"ftp://x:1"}"#),
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("grpc_target")),
        "{err}"
    );

    // 404s.
    for (method, path, body) in [
        ("GET", "nope", None),
        ("PUT", "nope", Some(r#"{"name":"x"}"#)),
        ("DELETE", "nope", None),
        ("GET", "nope/health", None),
    ] {
        let (status, err) = http_json(method, &format!("{base}/{path}"), Some(&admin), body).await;
        assert_eq!(status, 404, "{method} {path}: {err}");
        assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");
    }

    // 409: duplicate id, and deleting a node with an active agent.
    let (status, err) = http_json("POST", &base, Some(&admin), Some(&body)).await;
    assert_eq!(status, 409, "{err}");
    hub.hub()
        .state
        .store()
        .insert_agent(&outpost_hub::store::AgentRow {
            id: "agent-1".into(),
            node_id: "node-01".into(),
            name: "builder".into(),
            status: "running".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, err) = http_json("DELETE", &format!("{base}/node-01"), Some(&admin), None).await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("active agent"),
        "{err}"
    );
    let (status, _) = http_json("GET", &format!("{base}/node-01"), Some(&admin), None).await;
    assert_eq!(status, 200, "a refused delete loses nothing");

    // 401 and 403.
    let (status, err) = http_json("GET", &base, None, None).await;
    assert_eq!(status, 401, "{err}");
    let (status, _) = http_json("GET", &base, Some("not-a-jwt"), None).await;
    assert_eq!(status, 401);
    let (status, err) = http_json(
        "POST",
        &base,
        Some(&viewer),
        Some(&body.replace("node-01", "node-02")),
    )
    .await;
    assert_eq!(status, 403, "{err}");
    let (status, _) = http_json("DELETE", &format!("{base}/node-01"), Some(&viewer), None).await;
    assert_eq!(status, 403);
    // A node credential reads its own record only, while its node is registered with its key.
    let (status, err) = http_json("GET", &format!("{base}/node-x"), Some(&node), None).await;
    assert_eq!(status, 401, "not registered: {err}");
    hub.hub()
        .state
        .store()
        .bind_joined_node(&outpost_hub::store::JoinedNode {
            id: "node-x",
            name: "node-x",
            grpc_target: "",
            public_key_sha256: NODE_X_KEY,
            now_ms: 0,
        })
        .await
        .unwrap();
    let (status, _) = http_json("GET", &base, Some(&node), None).await;
    assert_eq!(status, 403, "node credentials do not list the fleet");
    let (status, err) = http_json("GET", &format!("{base}/node-01"), Some(&node), None).await;
    assert_eq!(status, 403, "nor read another node: {err}");
    let (status, own) = http_json("GET", &format!("{base}/node-x"), Some(&node), None).await;
    assert_eq!(status, 200, "its own record: {own}");
    assert_eq!(own["id"], "node-x");
    let tasks = format!("{}/api/admin/tasks", hub.http_url());
    let (status, _) = http_json("GET", &tasks, Some(&node), None).await;
    assert_eq!(status, 403, "nor the fleet's tasks");

    // Delete once the agent is gone.
    let second =
        json!({"id": "node-02", "name": "Two", "grpc_target": "http://10.0.0.2:50051"}).to_string();
    let (status, _) = http_json("POST", &base, Some(&admin), Some(&second)).await;
    assert_eq!(status, 201);
    let (status, _) = http_json("DELETE", &format!("{base}/node-02"), Some(&admin), None).await;
    assert_eq!(status, 204);
    let (status, _) = http_json("GET", &format!("{base}/node-02"), Some(&admin), None).await;
    assert_eq!(status, 404);
}

/// Sends a request head announcing a `length`-byte body, sends none of it, and returns the
/// status line the hub answers with within `wait`.
async fn answer_without_body(
    hub: &TestHub,
    path: &str,
    bearer: Option<&str>,
    length: usize,
    wait: Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = hub.http_url().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0_u8; 512];
    let n = tokio::time::timeout(wait, stream.read(&mut answer))
        .await
        .map_or(0, |read| read.unwrap());
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or("no answer")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_credential_are_refused_before_their_body_is_read() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let (admin, _, _) = tokens(&hub);
    let tasks = "/api/admin/tasks";
    let (long, short) = (Duration::from_secs(10), Duration::from_secs(1));
    // The answer comes though not one byte of the announced body was sent.
    let anonymous = answer_without_body(&hub, tasks, None, 1 << 20, long).await;
    assert_eq!(anonymous, "HTTP/1.1 401 Unauthorized");
    let forged = answer_without_body(&hub, tasks, Some("forged"), 1 << 20, long).await;
    assert_eq!(forged, "HTTP/1.1 401 Unauthorized");
    // With a credential the hub waits for the body it was promised.
    let admin = answer_without_body(&hub, tasks, Some(&admin), 1 << 20, short).await;
    assert_eq!(admin, "no answer");
}

/// The document at `/api/openapi.json` is served without a credential and matches the router:
/// every documented operation answers (401 without a token, never 404 or 405), and the public
/// ones answer without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_served_routes() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let base = hub.http_url();
    let (code, doc) = http_json("GET", &format!("{base}/api/openapi.json"), None, None).await;
    assert_eq!(code, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let body = (method == "POST" || method == "PUT").then_some("{}");
            let (code, answer) = http_json(&method, &format!("{base}{concrete}"), None, body).await;
            let public = ["/healthz", "/api/openapi.json"].contains(&path.as_str());
            let expected = if public { 200 } else { 401 };
            assert_eq!(code, expected, "{method} {path}: {answer}");
            checked += 1;
        }
    }
    assert!(checked >= 26, "{checked}");
    // An undocumented path is not served.
    let (code, _) = http_json("GET", &format!("{base}/api/admin/nothing-here"), None, None).await;
    assert_eq!(code, 404);
}

/// The document passes the OpenAPI project's reference validator (`openapi-spec-validator`
/// from PyPI), a checker Outpost did not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_passes_the_reference_validator() {
    let Some(python) = outpost_tests::python_with(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        "openapi",
        &["openapi-spec-validator==0.7.1"],
    ) else {
        return;
    };
    let hub = TestHub::start(TlsMode::Tls).await;
    let (code, doc) = http_json(
        "GET",
        &format!("{}/api/openapi.json", hub.http_url()),
        None,
        None,
    )
    .await;
    assert_eq!(code, 200);
    let file = hub.dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let output = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(said.contains("OK"), "{said}");
}
