//! The fleet as MCP tools, driven by clients Outpost did not write: the MCP SDK's own Rust
//! client launching `outpost mcp` (stdio), the Python SDK from PyPI over Streamable HTTP and
//! stdio, and raw HTTP for what a hostile caller sends.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{TestHub, eventually, start_node, with_simulated_gpu};
use outpost_trust::auth::Role;
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

use crate::tasks::parse;

/// A policy for `name` from `text`, written beside the hub.
fn policy_file(hub: &TestHub, name: &str, text: &str) -> std::path::PathBuf {
    let path = hub.dir.path().join(format!("{name}.policy.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

async fn push_with(hub: &TestHub, name: &str, wasm: &std::path::Path, policy: Option<&str>) {
    let mut args = vec![
        "tool".to_string(),
        "push".into(),
        wasm.display().to_string(),
        "--name".into(),
        name.into(),
    ];
    if let Some(text) = policy {
        args.push("--policy".into());
        args.push(policy_file(hub, name, text).display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = hub.cli(&args).await;
    assert_eq!(code, 0, "push {name}: {err}");
}

/// A hub with a CPU node and a simulated-GPU node, and the tools the MCP tests call: `echo`,
/// `gpu-job` (declaring one GPU in its policy), `add` (an object schema), `spin` (the hostile
/// guest with a small fuel budget) and `huge` (declaring 8 GPUs: fits nowhere).
async fn fleet() -> (TestHub, Vec<outpost_node::NodeHandle>) {
    let hub = TestHub::start(TlsMode::Tls).await;
    let mut cpu_config = hub.node_config("cpu-1", outpost_tests::STATIC_TOKEN);
    cpu_config.node.default_task = Some("echo".into());
    let cpu = start_node(cpu_config).await;
    let gpu = start_node(with_simulated_gpu(
        hub.node_config("gpu-1", outpost_tests::STATIC_TOKEN),
    ))
    .await;
    push_with(&hub, "echo", &outpost_guests::echo(), None).await;
    push_with(
        &hub,
        "gpu-job",
        &outpost_guests::gpu_job(),
        Some("[placement]\ngpus = 1\n"),
    )
    .await;
    push_with(&hub, "add", &outpost_guests::add(), None).await;
    push_with(
        &hub,
        "spin",
        &outpost_guests::hostile(),
        Some("[limits]\nfuel = 1000000\n"),
    )
    .await;
    push_with(
        &hub,
        "huge",
        &outpost_guests::echo(),
        Some("[placement]\ngpus = 8\n"),
    )
    .await;
    (hub, vec![cpu, gpu])
}

fn arguments(value: Value) -> rmcp::model::JsonObject {
    value.as_object().cloned().unwrap()
}

/// What a tool result says, as JSON (its structured content, else its text).
fn said(result: &rmcp::model::CallToolResult) -> (bool, Value, String) {
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    (
        result.is_error == Some(true),
        result.structured_content.clone().unwrap_or(Value::Null),
        text,
    )
}

/// Calls `name` with `args`; what the result says (see [`said`]).
async fn ask(
    client: &rmcp::service::Peer<rmcp::RoleClient>,
    name: &str,
    args: Value,
) -> (bool, Value, String) {
    let params = CallToolRequestParams::new(name.to_string()).with_arguments(arguments(args));
    said(&client.call_tool(params).await.unwrap())
}

/// Tells the test each `tools/list_changed`.
#[derive(Clone)]
struct Listener(tokio::sync::mpsc::UnboundedSender<()>);

impl rmcp::ClientHandler for Listener {
    async fn on_tool_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        let _ = self.0.send(());
    }
}

/// `outpost mcp` as the SDK's client launches it, against `hub`, with `token`.
fn outpost_mcp(hub: &TestHub, token: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(outpost_tests::outpost_binary());
    command
        .arg("mcp")
        .arg("--config")
        .arg(hub.write_config())
        .arg("--hub")
        .arg(hub.grpc_url())
        .env("OUTPOST_TOKEN", token)
        .stderr(std::process::Stdio::inherit());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sdk_client_calls_fleet_tools_through_outpost_mcp() {
    let (hub, _nodes) = fleet().await;
    let admin = hub.token("ops", Role::Admin);
    let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let transport =
        rmcp::transport::TokioChildProcess::new(outpost_mcp(&hub, &admin)).expect("spawn");
    let client = Listener(tx).serve(transport).await.expect("MCP session");

    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for name in ["nodes", "agents", "echo", "gpu-job", "add", "spin", "huge"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let echo = tools.iter().find(|t| t.name == "echo").unwrap();
    assert_eq!(echo.input_schema["properties"]["input"]["type"], "string");
    assert_eq!(
        echo.description.as_deref(),
        Some("Returns its input unchanged. (version 0.1.0)")
    );
    let add = tools.iter().find(|t| t.name == "add").unwrap();
    assert_eq!(add.input_schema["required"], json!(["a", "b"]));
    let gpu = tools.iter().find(|t| t.name == "gpu-job").unwrap();
    assert_eq!(
        gpu.meta
            .as_ref()
            .unwrap()
            .get("outpost/requirements")
            .unwrap()["gpus"],
        1.0
    );

    let call = |name: &str, args: Value| {
        CallToolRequestParams::new(name.to_string()).with_arguments(arguments(args))
    };
    let (failed, details, text) = ask(&client, "echo", json!({"input": "hi"})).await;
    assert!(!failed, "{text}");
    assert_eq!(text, "hi");
    assert!(
        details["task_id"].as_str().unwrap().starts_with("task-"),
        "{details}"
    );

    // The tool's declared GPU places it on the GPU node, with its device.
    let (failed, details, text) = ask(&client, "gpu-job", json!({"input": "train"})).await;
    assert!(!failed, "{text}");
    assert_eq!(details["node"], "gpu-1");
    assert!(text.contains("CUDA_VISIBLE_DEVICES=0"), "{text}");

    let (failed, _, text) = ask(&client, "add", json!({"a": 2, "b": 40})).await;
    assert!(!failed, "{text}");
    assert_eq!(text, "42");
    // Arguments that do not fit the schema are refused before any task is made.
    let (failed, _, text) = ask(&client, "add", json!({"a": "two", "b": 1})).await;
    assert!(
        failed && text.contains("arguments: /a: expected integer"),
        "{text}"
    );

    // A sandbox stop comes back as its kind.
    let (failed, details, text) = ask(&client, "spin", json!({"input": "spin"})).await;
    assert!(failed, "{text}");
    assert_eq!(details["error"]["kind"], "out_of_fuel", "{details}");

    // Unknown tools are a protocol error.
    let err = client
        .call_tool(call("no-such-tool", json!({})))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown tool"), "{err}");

    // PRX's nodes tool.
    let (failed, details, text) = ask(&client, "nodes", json!({"action": "list"})).await;
    assert!(!failed, "{text}");
    assert_eq!(details["success"], true);
    let listing = details["output"].as_str().unwrap();
    assert!(listing.starts_with("Nodes:"), "{listing}");
    assert!(
        listing.contains("gpu-1") && listing.contains("cpu-1"),
        "{listing}"
    );
    assert!(listing.contains("NVIDIA A100"), "{listing}");
    let (_, details, _) = ask(
        &client,
        "nodes",
        json!({"action": "health", "node_id": "gpu-1"}),
    )
    .await;
    assert_eq!(details["success"], true, "{details}");
    assert!(
        details["output"]
            .as_str()
            .unwrap()
            .contains("Reachable: yes"),
        "{details}"
    );
    let (_, details, _) = ask(
        &client,
        "nodes",
        json!({"action": "capabilities", "node_id": "gpu-1"}),
    )
    .await;
    assert!(
        details["output"]
            .as_str()
            .unwrap()
            .contains("GPU 0: NVIDIA A100"),
        "{details}"
    );
    let (_, details, _) = ask(&client, "nodes", json!({"action": "health"})).await;
    assert_eq!(details["success"], false);
    assert_eq!(
        details["error"],
        "node_id is required for action \"health\""
    );
    // send by requirement, then result.
    let (_, sent, _) = ask(
        &client,
        "nodes",
        json!({"action": "send", "tool": "echo", "input": "routed", "gpus": 0.5}),
    )
    .await;
    assert_eq!(sent["success"], true, "{sent}");
    let task_id = sent["task_id"].as_str().unwrap().to_string();
    let result = eventually(
        "the sent task's result",
        Duration::from_secs(20),
        async || {
            let (_, result, _) = ask(
                &client,
                "nodes",
                json!({"action": "result", "task_id": task_id}),
            )
            .await;
            if result["status"] == "succeeded" {
                Ok(result)
            } else {
                Err(result.to_string())
            }
        },
    )
    .await;
    assert_eq!(result["output"], "routed");
    assert_eq!(result["node"], "gpu-1", "half a GPU lands on the GPU node");
    // PRX's send: a task text goes to the node's default handler (cpu-1: the echo tool).
    let (_, done, _) = ask(
        &client,
        "nodes",
        json!({"action": "send", "node_id": "cpu-1", "task": "summarise the logs", "wait": true}),
    )
    .await;
    assert_eq!(done["success"], true, "{done}");
    assert_eq!(done["output"], "summarise the logs");
    assert_eq!(done["node"], "cpu-1");
    // A task text without a default handler on the node says how to set one.
    let (_, details, _) = ask(
        &client,
        "nodes",
        json!({"action": "send", "node_id": "gpu-1", "task": "summarise the logs"}),
    )
    .await;
    assert_eq!(details["success"], false);
    assert!(
        details["error"]
            .as_str()
            .unwrap()
            .contains("[node] default_task"),
        "{details}"
    );

    // A push is announced to the session.
    while changed.try_recv().is_ok() {}
    push_with(&hub, "echo2", &outpost_guests::echo(), None).await;
    tokio::time::timeout(Duration::from_secs(20), changed.recv())
        .await
        .expect("tools/list_changed within 20 s");
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(names.contains(&"echo2".to_string()), "{names:?}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_token_calls_only_the_tools_it_names() {
    let (hub, _nodes) = fleet().await;
    let (code, out, err) = hub
        .cli(&[
            "token",
            "api",
            "--role",
            "agent",
            "--tool",
            "echo",
            "--subject",
            "bot",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let agent = parse(&out)["token"].as_str().unwrap().to_string();
    let (code, _, err) = hub.cli(&["token", "api", "--role", "agent"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("at least one --tool"), "{err}");

    let transport =
        rmcp::transport::TokioChildProcess::new(outpost_mcp(&hub, &agent)).expect("spawn");
    let client = ().serve(transport).await.expect("MCP session");
    let names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["echo"], "an agent sees only its tools");
    let (failed, _, text) = ask(&client, "echo", json!({"input": "ok"})).await;
    assert!(!failed && text == "ok", "{text}");
    let (failed, _, text) = ask(&client, "gpu-job", json!({"input": "x"})).await;
    assert!(
        failed && text.contains("may not call tool \"gpu-job\""),
        "{text}"
    );
    // Nor the fleet tool, nor anything over gRPC beyond its tools.
    let (failed, _, text) = ask(&client, "nodes", json!({"action": "list"})).await;
    assert!(failed, "{text}");
    client.cancel().await.unwrap();
    let (code, _, err) = hub_cli_as(&hub, &agent, &["nodes", "list"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("role agent may not list nodes"), "{err}");
    let (code, _, err) = hub_cli_as(&hub, &agent, &["agents", "list"]).await;
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = hub_cli_as(&hub, &agent, &["tasks", "submit", "--command", "true"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("role agent may not submit tasks"), "{err}");
}

/// The CLI with `token` as its credential.
async fn hub_cli_as(hub: &TestHub, token: &str, args: &[&str]) -> (u8, String, String) {
    let config = hub.write_config();
    let mut child = tokio::process::Command::new(outpost_tests::outpost_binary());
    child
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--hub")
        .arg(hub.grpc_url())
        .env("OUTPOST_TOKEN", token);
    let output = child.output().await.unwrap();
    (
        u8::try_from(output.status.code().unwrap_or(1)).unwrap_or(1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A raw POST to `/mcp`: (status, headers, body).
async fn post(
    hub: &TestHub,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("{}/mcp", hub.http_url()))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the answer ends")
        .unwrap()
        .to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn initialize() -> Vec<u8> {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}
        }
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_endpoint_refuses_bad_callers_and_bad_input_and_stays_up() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("ops", Role::Admin);

    // No credential: 401 and where to learn how to get one.
    let (status, headers, body) = post(&hub, None, &[], initialize()).await;
    assert_eq!(status, 401, "{body}");
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    let metadata_url = format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        hub.http_url()
    );
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    let (code, metadata) = outpost_tests::http_json("GET", &metadata_url, None, None).await;
    assert_eq!(code, 200);
    assert_eq!(metadata["resource"], format!("{}/mcp", hub.http_url()));
    assert!(
        !metadata["authorization_servers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A bad one: 401 saying so.
    let (status, headers, _) = post(&hub, Some("not-a-jwt"), &[], initialize()).await;
    assert_eq!(status, 401);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let other = outpost_trust::auth::TokenAuthority::new(
        b"another-hubs-secret-0000",
        "outpost",
        "outpost-internal",
        5,
    )
    .issue("ops", Role::Admin, outpost_tests::now_s(), 60)
    .unwrap();
    let (status, _, _) = post(&hub, Some(&other), &[], initialize()).await;
    assert_eq!(status, 401);
    // A page on another origin: 403 before anything else.
    let (status, _, body) = post(
        &hub,
        Some(&admin),
        &[("origin", "http://evil.example")],
        initialize(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("http://evil.example"), "{body}");
    // The hub's own origin is fine.
    let (status, headers, body) = post(
        &hub,
        Some(&admin),
        &[("origin", &hub.http_url())],
        initialize(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"protocolVersion\":\"2025-11-25\""),
        "{body}"
    );
    let session = headers["mcp-session-id"].to_str().unwrap().to_string();
    let in_session = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = post(
        &hub,
        Some(&admin),
        &in_session,
        initialized.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    // Not JSON: JSON-RPC's parse error.
    let (status, _, body) = post(&hub, Some(&admin), &in_session, b"{not json".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], -32700, "{body}");
    // An unknown method: method not found.
    let unknown = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/explode", "params": {}});
    let (_, _, body) = post(
        &hub,
        Some(&admin),
        &in_session,
        unknown.to_string().into_bytes(),
    )
    .await;
    assert!(body.contains("-32601"), "{body}");
    // A call of a tool that is not there: invalid params, naming it.
    let missing = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "no-such-tool", "arguments": {}}});
    let (_, _, body) = post(
        &hub,
        Some(&admin),
        &in_session,
        missing.to_string().into_bytes(),
    )
    .await;
    assert!(
        body.contains("-32602") && body.contains("no-such-tool"),
        "{body}"
    );
    // A body past the limit: 413.
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"echo","arguments":{{"input":"{}"}}}}}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    let (status, _, body) = post(&hub, Some(&admin), &in_session, huge.into_bytes()).await;
    assert_eq!(status, 413, "{body}");
    // Still up.
    let (code, _) =
        outpost_tests::http_json("GET", &format!("{}/healthz", hub.http_url()), None, None).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_with_an_unusable_schema_is_refused_at_push() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let (code, _, err) = hub
        .cli(&[
            "tool",
            "push",
            outpost_guests::bad_schema().to_str().unwrap(),
            "--name",
            "bad",
        ])
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("input schema") && err.contains("/properties/n/type"),
        "{err}"
    );
    // Nothing was kept.
    let (code, out, _) = hub.cli(&["tool", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert!(!out.contains("\"bad\""), "{out}");
    // A policy's placement is checked too.
    let policy = policy_file(&hub, "p", "[placement]\ngpus = 1.5\n");
    let (code, _, err) = hub
        .cli(&[
            "tool",
            "push",
            outpost_guests::echo().to_str().unwrap(),
            "--name",
            "odd",
            "--policy",
            policy.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("[placement]"), "{err}");
}

/// The Python SDK's client over Streamable HTTP (both revisions) and over `outpost mcp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_sdk_drives_the_endpoint_and_the_stdio_bridge() {
    let Some(python) = outpost_tests::python_with(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        "mcp",
        &["mcp==2.3.0"],
    ) else {
        return;
    };
    let (hub, _nodes) = fleet().await;
    let admin = hub.token("ops", Role::Admin);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/mcp_client.py");
    let url = format!("{}/mcp", hub.http_url());
    let config = hub.write_config();
    let runs: [(&str, Vec<String>); 3] = [
        (
            "http, 2026-07-28",
            vec!["http".into(), url.clone(), admin.clone(), "auto".into()],
        ),
        (
            "http, 2025-11-25",
            vec!["http".into(), url, admin.clone(), "legacy".into()],
        ),
        (
            "stdio",
            vec![
                "stdio".into(),
                outpost_tests::outpost_binary().display().to_string(),
                config.display().to_string(),
                hub.grpc_url(),
                admin.clone(),
                "legacy".into(),
            ],
        ),
    ];
    for (what, args) in runs {
        let output = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(&python)
                .arg(script)
                .args(&args)
                .output(),
        )
        .await
        .expect("the Python client finishes")
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{what}: {stderr}");
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stderr}"));
        let tools = &report["tools"];
        assert_eq!(
            tools["echo"]["properties"]["input"]["type"], "string",
            "{what}"
        );
        assert_eq!(tools["add"]["required"], json!(["a", "b"]), "{what}");
        assert!(
            tools["nodes"]["properties"]["action"]["enum"].is_array(),
            "{what}"
        );
        assert_eq!(report["echo"]["text"], "hello from python", "{what}");
        assert_eq!(report["gpu"]["structured"]["node"], "gpu-1", "{what}");
        assert_eq!(report["add"]["text"], "42", "{what}");
        assert_eq!(report["spin"]["error"], true, "{what}");
        assert_eq!(
            report["spin"]["structured"]["error"]["kind"], "out_of_fuel",
            "{what}"
        );
        assert_eq!(report["nodes"]["structured"]["success"], true, "{what}");
        let progress = report["huge_progress"].to_string();
        assert!(progress.contains("queued"), "{what}: {progress}");
        assert!(
            progress.to_lowercase().contains("gpu"),
            "{what}: the reason names what is missing: {progress}"
        );
    }
    // Calls over HTTP are in the audit log, as MCP writes by their caller.
    let (code, out, err) = hub.cli(&["audit", "list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let audit = parse(&out);
    let entries = audit
        .as_array()
        .or_else(|| audit["entries"].as_array())
        .unwrap();
    let submit = entries
        .iter()
        .find(|e| e["surface"] == "mcp" && e["action"] == "submit echo")
        .unwrap_or_else(|| panic!("no MCP submit of echo in {out}"));
    assert_eq!(submit["subject"], "ops");
    assert!(
        submit["target"].as_str().unwrap().starts_with("task-"),
        "{submit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["surface"] == "mcp" && e["action"] == "cancel task"),
        "{out}"
    );
    // Every `huge` call was cancelled with its MCP call.
    let (code, out, err) = hub.cli(&["tasks", "list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let tasks = parse(&out);
    let huge: Vec<&Value> = tasks
        .as_array()
        .or_else(|| tasks["tasks"].as_array())
        .unwrap()
        .iter()
        .filter(|t| t["tool"] == "huge")
        .collect();
    assert_eq!(huge.len(), 3, "{out}");
    eventually(
        "the huge tasks cancelled",
        Duration::from_secs(15),
        async || {
            let (_, out, _) = hub.cli(&["tasks", "list", "--json"]).await;
            let tasks = parse(&out);
            let list = tasks
                .as_array()
                .or_else(|| tasks["tasks"].as_array())
                .cloned()
                .unwrap_or_default();
            let waiting: Vec<&Value> = list
                .iter()
                .filter(|t| t["tool"] == "huge" && t["status"] != "cancelled")
                .collect();
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(format!("{waiting:?}"))
            }
        },
    )
    .await;
}

/// Answers the first pending review with request key `key` with `option` (as the operator's
/// CLI); the review's id.
async fn approve(hub: &TestHub, key: &str, option: &str) -> String {
    let id = eventually(
        "the supervision review",
        Duration::from_secs(20),
        async || {
            let (code, out, err) = hub
                .cli(&["actor", "permission-reviews", "--pending", "--json"])
                .await;
            if code != 0 {
                return Err(err);
            }
            let listed = parse(&out);
            listed["reviews"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["request_key"] == key)
                .map(|r| {
                    assert_eq!(r["actor_id"], "bot");
                    assert_eq!(r["options"][1]["id"], "allow_always");
                    r["request_id"].as_str().unwrap().to_string()
                })
                .ok_or(out)
        },
    )
    .await;
    let (code, _, err) = hub
        .cli(&[
            "actor",
            "permission-review-respond",
            "--request-id",
            &id,
            "--option-id",
            option,
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supervised_tools_wait_for_an_operator_and_denied_ones_never_run_for_an_agent() {
    use outpost_config::ToolMode;
    let hub = TestHub::start_adjusted(TlsMode::Tls, |c| {
        let tools = &mut c.security.tool_policy.tools;
        tools.insert("echo".into(), ToolMode::Supervised);
        tools.insert("add".into(), ToolMode::Denied);
        tools.insert("nodes".into(), ToolMode::Supervised);
    })
    .await;
    let mut config = hub.node_config("cpu-s", outpost_tests::STATIC_TOKEN);
    config.node.default_task = Some("echo".into());
    let _node = start_node(config).await;
    push_with(&hub, "echo", &outpost_guests::echo(), None).await;
    push_with(&hub, "add", &outpost_guests::add(), None).await;
    let agent = hub
        .authority()
        .issue_agent(
            "bot",
            vec!["echo".into(), "add".into(), "nodes".into()],
            outpost_tests::now_s(),
            600,
        )
        .unwrap();
    let transport =
        rmcp::transport::TokioChildProcess::new(outpost_mcp(&hub, &agent)).expect("spawn");
    let client = ().serve(transport).await.expect("MCP session");

    // A supervised call waits for the operator's answer, then runs.
    let (call, review) = tokio::join!(
        ask(&client, "echo", json!({"input": "approved once"})),
        approve(&hub, "tool:echo", "allow_once"),
    );
    let (failed, structured, text) = call;
    assert!(!failed && text == "approved once", "{text}");
    let first_task = structured["task_id"].as_str().unwrap().to_string();
    // Denied by the operator: nothing runs.
    let (call, _) = tokio::join!(
        ask(&client, "echo", json!({"input": "refused"})),
        approve(&hub, "tool:echo", "deny"),
    );
    let (failed, _, text) = call;
    assert!(
        failed && text.contains("an operator refused the call"),
        "{text}"
    );
    // Denied by policy: refused at once, no review.
    let (failed, _, text) = ask(&client, "add", json!({"a": 1, "b": 2})).await;
    assert!(
        failed && text.contains("denied to agent credentials"),
        "{text}"
    );
    // Always: this call and every later one without asking again.
    let (call, _) = tokio::join!(
        ask(&client, "echo", json!({"input": "always 1"})),
        approve(&hub, "tool:echo", "allow_always"),
    );
    assert_eq!(call.2, "always 1");
    let (failed, _, text) = ask(&client, "echo", json!({"input": "always 2"})).await;
    assert!(!failed && text == "always 2", "{text}");
    // The fleet tool's sends are supervised by `nodes` itself.
    let (call, _) = tokio::join!(
        ask(
            &client,
            "nodes",
            json!({"action": "send", "node_id": "cpu-s", "task": "via nodes"})
        ),
        approve(&hub, "tool:nodes", "allow_once"),
    );
    let (failed, structured, text) = call;
    assert!(!failed, "{text}");
    assert_eq!(structured["success"], true, "{structured}");
    client.cancel().await.unwrap();

    // Over gRPC: no approval, a refusal that says which review to ask for; one approval makes
    // one task however often it is shown; an approval for something else is refused.
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = outpost_trust::grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let mut tasks = outpost_proto::v1::task_service_client::TaskServiceClient::new(channel);
    let submit = |approval: &str, input: &str| {
        outpost_trust::grpc_channel::with_bearer(
            outpost_proto::v1::SubmitTaskRequest {
                tool: "echo".into(),
                input: input.into(),
                approval: approval.into(),
                ..Default::default()
            },
            &agent,
        )
    };
    let refused = tasks.submit_task(submit("", "again")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.metadata().get("outpost-approval-key").unwrap(),
        "tool:echo"
    );
    let replayed = tasks
        .submit_task(submit(&review, "approved once"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replayed.id, first_task,
        "the approval's one task, not a new one"
    );
    let refused = tasks
        .submit_task(submit(&review, "other work"))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("another input"),
        "{}",
        refused.message()
    );
    let refused = tasks
        .submit_task(submit("r-0000", "again"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("no review has this id"),
        "{}",
        refused.message()
    );
    // An operator is not supervised.
    let (code, out, err) = hub
        .cli(&[
            "tasks",
            "submit",
            "--tool",
            "add",
            "--input",
            r#"{"a":1,"b":2}"#,
            "--wait",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["status"], "succeeded");
}
