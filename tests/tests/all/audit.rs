//! The audit log end to end: writes through gRPC (the CLI), REST and the join are recorded with
//! who made them and how they ended, reads and anonymous calls are not, `outpost audit list`
//! shows them, and they survive a hub restart.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{STATIC_TOKEN, TestHub, eventually, http_json, start_node};
use outpost_trust::auth::Role;
use serde_json::Value;

async fn audit(hub: &TestHub, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "list", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = hub.cli(&all).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn find<'a>(entries: &'a [Value], action: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["action"] == action).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_write_is_recorded_with_who_and_how_it_ended() {
    let mut hub = TestHub::start(TlsMode::Tls).await;
    let base = hub.http_url();
    let admin = hub.token("ops", Role::Admin);
    let viewer = hub.token("watcher", Role::Viewer);

    // gRPC through the CLI, REST by an admin, REST refused for a viewer, reads, an anonymous
    // write, and a node's join.
    let (code, _, err) = hub
        .cli(&[
            "nodes",
            "register",
            "--id",
            "n-cli",
            "--name",
            "From the CLI",
            "--grpc-target",
            "https://127.0.0.1:1",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let nodes = format!("{base}/api/admin/agent-nodes");
    let (code, _) = http_json(
        "POST",
        &nodes,
        Some(&admin),
        Some(r#"{"id":"n-rest","name":"From REST","grpc_target":"https://127.0.0.1:1"}"#),
    )
    .await;
    assert_eq!(code, 201);
    let (code, _) = http_json("DELETE", &format!("{nodes}/n-rest"), Some(&viewer), None).await;
    assert_eq!(code, 403);
    let (code, _) = http_json("DELETE", &format!("{nodes}/n-missing"), Some(&admin), None).await;
    assert_eq!(code, 404);
    let (code, _) = http_json("GET", &nodes, Some(&admin), None).await;
    assert_eq!(code, 200);
    let (code, _) = http_json("POST", &nodes, None, Some("{}")).await;
    assert_eq!(code, 401);
    let _node = start_node(hub.node_config("n-joined", STATIC_TOKEN)).await;

    let entries = eventually(
        "the writes in the log",
        Duration::from_secs(10),
        async || {
            let entries = audit(&hub, &[]).await;
            if entries.len() >= 5 {
                Ok(entries)
            } else {
                Err(format!("{entries:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        entries.len(),
        5,
        "reads and the anonymous call are not recorded: {entries:#?}"
    );
    let grpc = find(&entries, "/outpost.v1.NodeRegistry/RegisterNode");
    assert_eq!(grpc.len(), 1, "{entries:#?}");
    assert_eq!(grpc[0]["surface"], "grpc");
    assert_eq!(grpc[0]["role"], "admin");
    assert_eq!(grpc[0]["outcome"], "ok");
    assert_eq!(
        grpc[0]["target"], "n-cli",
        "the handler names what it acted on"
    );
    let created = find(&entries, "POST /api/admin/agent-nodes");
    assert_eq!(created.len(), 1, "{entries:#?}");
    assert_eq!(
        (
            created[0]["subject"].as_str(),
            created[0]["status"].as_i64()
        ),
        (Some("ops"), Some(201))
    );
    let deletes = find(&entries, "DELETE /api/admin/agent-nodes/{id}");
    assert_eq!(deletes.len(), 2, "{entries:#?}");
    let refused = deletes.iter().find(|e| e["subject"] == "watcher").unwrap();
    assert_eq!(
        (refused["outcome"].as_str(), refused["status"].as_i64()),
        (Some("refused"), Some(403))
    );
    assert_eq!(refused["target"], "/api/admin/agent-nodes/n-rest");
    let missing = deletes.iter().find(|e| e["subject"] == "ops").unwrap();
    assert_eq!(missing["outcome"], "failed");
    let joined = find(&entries, "/outpost.v1.JoinService/CompleteJoin");
    assert_eq!(joined.len(), 1);
    assert_eq!(
        (joined[0]["subject"].as_str(), joined[0]["role"].as_str()),
        (Some("n-joined"), Some("node"))
    );
    // Newest first, with times.
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert!(entries.iter().all(|e| e["at"].is_string()));

    // A viewer may read the log over REST; --since and limits narrow it; bad queries are named.
    let (code, body) = http_json(
        "GET",
        &format!("{base}/api/admin/audit?since=1h&limit=2"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body.as_array().unwrap().len(), 2);
    let (code, body) = http_json(
        "GET",
        &format!("{base}/api/admin/audit?since=soon"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("since")),
        "{body}"
    );
    let future = (std::time::SystemTime::now() + Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let (_, body) = http_json(
        "GET",
        &format!("{base}/api/admin/audit?since_ms={future}"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(body, Value::Array(vec![]));
    assert_eq!(
        audit(&hub, &["--since", "1h", "--limit", "3"]).await.len(),
        3
    );

    // Durable: the same entries after a restart.
    hub.restart().await;
    let after = audit(&hub, &[]).await;
    assert_eq!(after[..5], entries[..], "the log survives a restart");
    let (code, out, _) = hub.cli(&["audit", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("RegisterNode") && out.contains("refused (403)"),
        "{out}"
    );
}
