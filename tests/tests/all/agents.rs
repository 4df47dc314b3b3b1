//! Native agents end to end over REST: created on a node, started, fed lines on stdin, their
//! output followed live as Server-Sent Events, stopped (the tree goes), restarted as a new run,
//! exiting by themselves; the node cannot be deleted while one runs; a hub restart keeps a
//! running agent running; a crashed node's agent is `lost` and the restarted node kills it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt as _;
use outpost_config::{Config, TlsMode};
use outpost_tests::{STATIC_TOKEN, TestHub, eventually, http_json, start_node};
use outpost_trust::auth::Role;
use serde_json::{Value, json};

fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost-test-launcher"))
}

pub(crate) fn agent_node(hub: &TestHub, id: &str) -> (Config, PathBuf) {
    let mut config = hub.node_config(id, STATIC_TOKEN);
    let safe = hub.dir.path().join(format!("{id}-safe"));
    std::fs::create_dir_all(&safe).unwrap();
    config.node.safe_paths = vec![safe.clone()];
    config.sandbox.launcher = Some(launcher());
    (config, std::fs::canonicalize(safe).unwrap())
}

/// An SSE subscription: the raw text received so far.
pub(crate) struct Events {
    body: hyper::body::Incoming,
    text: String,
}

impl Events {
    pub(crate) async fn open(url: &str, token: &str) -> Self {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = http::Request::get(url)
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            body: response.into_body(),
            text: String::new(),
        }
    }

    /// Reads to the end of the stream (15 s at most).
    pub(crate) async fn read_to_end(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("the stream did not end: {}", self.text));
            match frame {
                None => return,
                Some(frame) => {
                    if let Some(data) = frame.unwrap().data_ref() {
                        self.text.push_str(&String::from_utf8_lossy(data));
                    }
                }
            }
        }
    }

    /// Reads until the received text contains `needle` (15 s at most).
    pub(crate) async fn until(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !self.text.contains(needle) {
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("{needle:?} not in the events: {}", self.text));
            let frame = frame.expect("stream open").unwrap();
            if let Some(data) = frame.data_ref() {
                self.text.push_str(&String::from_utf8_lossy(data));
            }
        }
    }
}

async fn agent(hub: &TestHub, token: &str, id: &str) -> Value {
    let (status, body) = http_json(
        "GET",
        &format!("{}/api/agents/{id}", hub.http_url()),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

pub(crate) async fn wait_agent(hub: &TestHub, token: &str, id: &str, status: &str) -> Value {
    eventually(
        &format!("agent {id} {status}"),
        Duration::from_secs(20),
        async || {
            let body = agent(hub, token, id).await;
            if body["status"] == status {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        },
    )
    .await
}

pub(crate) async fn post(
    hub: &TestHub,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let text = body.map(|b| b.to_string());
    http_json(
        "POST",
        &format!("{}{path}", hub.http_url()),
        Some(token),
        text.as_deref(),
    )
    .await
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !outpost_runner::tree::is_zombie(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_started_fed_followed_stopped_and_restarted() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("admin", Role::Admin);
    let viewer = hub.token("viewer", Role::Viewer);
    let (config, safe) = agent_node(&hub, "ag-n");
    let _node = start_node(config).await;
    hub.wait_status("ag-n", "online", Duration::from_secs(15))
        .await;

    let pid_file = safe.join("echoer.pid");
    let script = format!(
        "echo $$ > {}; echo ready; while read line; do echo got:$line; echo warn:$line >&2; done",
        pid_file.display()
    );
    let (status, created) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(
            json!({"name": "echoer", "node": "ag-n", "command": "/bin/sh", "args": ["-c", script]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "created");
    assert_eq!(created["placement"], "node:ag-n");
    let id = created["id"].as_str().unwrap().to_string();

    // A viewer reads but does not start; bad creates name the field.
    let (status, _) = post(&hub, &viewer, &format!("/api/agents/{id}/start"), None).await;
    assert_eq!(status, 403);
    for (body, field) in [
        (
            json!({"name": "x", "node": "ag-n", "command": ""}),
            "command",
        ),
        (
            json!({"name": "x", "node": "ag-n", "command": "sh", "workdir": "rel"}),
            "workdir",
        ),
        (
            json!({"name": "x", "node": "nope", "command": "sh"}),
            "nope",
        ),
        (
            json!({"name": "x", "node": "ag-n", "command": "sh", "colour": 1}),
            "colour",
        ),
    ] {
        let (status, err) = post(&hub, &admin, "/api/agents", Some(body)).await;
        assert!(status == 400 || status == 404, "{status} {err}");
        assert!(err.to_string().contains(field), "{err}");
    }

    let (status, started) = post(&hub, &admin, &format!("/api/agents/{id}/start"), None).await;
    assert_eq!(status, 200, "{started}");
    let running = wait_agent(&hub, &admin, &id, "running").await;
    assert_eq!(running["run"], 1);
    let mut events = Events::open(
        &format!("{}/api/agents/{id}/events", hub.http_url()),
        &viewer,
    )
    .await;
    events.until("ready").await;

    // A line on stdin comes back on stdout and stderr, live.
    let (status, err) = post(
        &hub,
        &admin,
        &format!("/api/agents/{id}/input"),
        Some(json!({"text": "hello"})),
    )
    .await;
    assert_eq!(status, 202, "{err}");
    events.until("got:hello").await;
    // More than one line, or a line past the limit, is refused at the hub.
    for text in ["two\nlines".to_string(), "x".repeat(64 * 1024 + 1)] {
        let (status, err) = post(
            &hub,
            &admin,
            &format!("/api/agents/{id}/input"),
            Some(json!({ "text": text })),
        )
        .await;
        assert_eq!(status, 400, "{err}");
        assert!(err.to_string().contains("one line"), "{err}");
    }
    events.until("warn:hello").await;
    assert!(
        events.text.contains(r#""stream":"stderr""#),
        "{}",
        events.text
    );

    // While it runs, neither it nor its node can be deleted.
    let (status, err) = http_json(
        "DELETE",
        &format!("{}/api/admin/agent-nodes/ag-n", hub.http_url()),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 409, "{err}");
    let (status, _) = http_json(
        "DELETE",
        &format!("{}/api/agents/{id}", hub.http_url()),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 409);

    // Stop: the process goes, the agent reads stopped, the event stream says so.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (status, _) = post(&hub, &admin, &format!("/api/agents/{id}/stop"), None).await;
    assert_eq!(status, 200);
    let stopped = wait_agent(&hub, &admin, &id, "stopped").await;
    assert!(!alive(pid), "the agent's process survived its stop");
    assert!(stopped["signal"].as_i64().is_some() || stopped["exit_code"].as_i64().is_some());
    events.until("stopped").await;

    // Restart: a new run.
    let (status, _) = post(&hub, &admin, &format!("/api/agents/{id}/restart"), None).await;
    assert_eq!(status, 200);
    let again = wait_agent(&hub, &admin, &id, "running").await;
    assert_eq!(again["run"], 2, "{again}");
    let (status, _) = post(&hub, &admin, &format!("/api/agents/{id}/stop"), None).await;
    assert_eq!(status, 200);
    wait_agent(&hub, &admin, &id, "stopped").await;
    let (status, _) = http_json(
        "DELETE",
        &format!("{}/api/agents/{id}", hub.http_url()),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 204);

    // An agent that ends by itself reads exited, with its code; one that cannot start, failed.
    let (_, quick) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(json!({"name": "quick", "node": "ag-n", "command": "/bin/sh", "args": ["-c", "echo bye; exit 4"]})),
    )
    .await;
    let quick_id = quick["id"].as_str().unwrap();
    post(&hub, &admin, &format!("/api/agents/{quick_id}/start"), None).await;
    let exited = wait_agent(&hub, &admin, quick_id, "exited").await;
    assert_eq!(exited["exit_code"], 4, "{exited}");
    let (_, outside) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(json!({"name": "outside", "node": "ag-n", "command": "/bin/true", "workdir": "/etc"})),
    )
    .await;
    let outside_id = outside["id"].as_str().unwrap();
    let (status, failed) = post(
        &hub,
        &admin,
        &format!("/api/agents/{outside_id}/start"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("outside the node's safe_paths"),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_survive_a_hub_restart_and_a_crashed_nodes_agent_is_lost() {
    let mut hub = TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("admin", Role::Admin);
    let (config, safe) = agent_node(&hub, "ag-r");
    let node = start_node(config.clone()).await;
    hub.wait_status("ag-r", "online", Duration::from_secs(15))
        .await;
    let pid_file = safe.join("sleeper.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    let (_, created) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(json!({"name": "sleeper", "node": "ag-r", "command": "/bin/sh", "args": ["-c", script]})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    post(&hub, &admin, &format!("/api/agents/{id}/start"), None).await;
    wait_agent(&hub, &admin, &id, "running").await;

    // The hub restarts: the node comes back and still reports the agent, which stays running.
    hub.restart().await;
    hub.wait_status("ag-r", "online", Duration::from_secs(20))
        .await;
    // A few liveness passes reconcile the node's heartbeats.
    hub.liveness_passes(5).await;
    let after = agent(&hub, &admin, &id).await;
    assert_eq!(after["status"], "running", "{after}");

    // The node crashes: the agent is lost once the node is offline; the restarted node finds
    // the agent's process by its pid file and kills it.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    node.crash();
    let lost = wait_agent(&hub, &admin, &id, "lost").await;
    assert!(!lost["reason"].as_str().unwrap().is_empty(), "{lost}");
    assert!(alive(pid), "the process outlived its node");
    let _again = start_node(config).await;
    eventually("the orphan killed", Duration::from_secs(15), async || {
        if alive(pid) {
            Err(format!("{pid} alive"))
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_cli_drives_an_agent_placed_by_requirement() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let (config, _safe) = agent_node(&hub, "cli-n");
    let _node = start_node(outpost_tests::with_simulated_gpu(config)).await;
    hub.wait_status("cli-n", "online", Duration::from_secs(15))
        .await;
    let parse = |out: &str| -> Value { serde_json::from_str(out).unwrap() };

    // `--auto` with a GPU requirement: the GPU node that runs native programs.
    let (code, out, err) = hub
        .cli(&[
            "agents",
            "create",
            "--name",
            "talker",
            "--auto",
            "--gpus",
            "1",
            "--command",
            "/bin/sh",
            "--arg",
            "-c",
            "--arg",
            "echo gpu=$CUDA_VISIBLE_DEVICES:$OUTPOST_AGENT_ID; while read l; do echo said:$l; done",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let created = parse(&out);
    assert_eq!(created["node"], "cli-n", "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (code, out, err) = hub.cli(&["agents", "start", &id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["run"], 1);
    let admin = hub.token("admin", Role::Admin);
    wait_agent(&hub, &admin, &id, "running").await;
    let (code, _, err) = hub
        .cli(&["agents", "input", &id, "--text", "hi there"])
        .await;
    assert_eq!(code, 0, "{err}");
    let logs = eventually(
        "the reply in the logs",
        Duration::from_secs(15),
        async || {
            let (code, out, err) = hub.cli(&["agents", "logs", &id, "--json"]).await;
            if code != 0 {
                return Err(err);
            }
            if out.contains("said:hi there") {
                Ok(out)
            } else {
                Err(out)
            }
        },
    )
    .await;
    // One JSON event per line, in order, with the agent's own id in its environment.
    let entries: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        entries
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );
    assert!(logs.contains(&format!(":{id}")), "{logs}");
    assert_eq!(created["gpus"]["count"], 1.0, "{created}");

    // The run holds the node's one GPU: its program was handed device 0; a task wanting a
    // whole GPU waits for it, and another GPU agent fits nowhere, until the agent stops.
    assert!(logs.contains("gpu=0:"), "{logs}");
    let waiting =
        crate::tasks::submit(&hub, &["--command", "echo got-the-gpu", "--gpus", "1"]).await;
    let task_id = waiting["id"].as_str().unwrap().to_string();
    let (code, _, err) = hub
        .cli(&[
            "agents",
            "create",
            "--name",
            "rival",
            "--auto",
            "--gpus",
            "1",
            "--command",
            "sh",
        ])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("no node fits"), "{err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = crate::tasks::task_json(&hub, &task_id).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let (code, out, _) = hub.cli(&["agents", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("node:cli-n") && out.contains("running"),
        "{out}"
    );
    let (code, _, err) = hub.cli(&["agents", "stop", &id]).await;
    assert_eq!(code, 0, "{err}");
    wait_agent(&hub, &admin, &id, "stopped").await;
    let ran =
        crate::tasks::wait_task_status(&hub, &task_id, "succeeded", Duration::from_secs(20)).await;
    assert!(ran.to_string().contains("got-the-gpu"), "{ran}");
    let (code, out, err) = hub.cli(&["agents", "delete", &id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["deleted"], id.as_str());

    // No node fits: refused with the reason; a WASM agent needs its tool pushed first.
    let (code, _, err) = hub
        .cli(&[
            "agents",
            "create",
            "--name",
            "big",
            "--auto",
            "--gpus",
            "8",
            "--command",
            "sh",
        ])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("no node fits"), "{err}");
    let (code, _, err) = hub
        .cli(&[
            "agents", "create", "--name", "w", "--node", "cli-n", "--tool", "echo",
        ])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("tool \"echo\" is not on the hub"), "{err}");
    // A new worktree without a workdir needs the node's default root, and it has none.
    let (code, _, err) = hub
        .cli(&[
            "agents",
            "create",
            "--name",
            "wt",
            "--node",
            "cli-n",
            "--workdir-mode",
            "create_worktree",
            "--repo",
            "/srv/repo",
            "--command",
            "sh",
        ])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("no default worktree root"), "{err}");
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {:?}", out);
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_works_in_a_fresh_worktree_followed_over_grpc_and_sse() {
    use outpost_proto::v1::AgentLogsRequest;
    use outpost_proto::v1::agent_service_client::AgentServiceClient;

    let hub = TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("admin", Role::Admin);
    let (mut config, safe) = agent_node(&hub, "wt-n");
    config.worktree.default_root = Some(safe.join("worktrees"));
    let repo = safe.join("project");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "-b", "main"]);
    std::fs::write(repo.join("README"), "the project\n").unwrap();
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "--quiet", "-m", "first"]);
    let _node = start_node(config).await;
    hub.wait_status("wt-n", "online", Duration::from_secs(15))
        .await;

    // No workdir: `<repo>-<name>-<short id>` under the node's [worktree] default_root.
    let script = "pwd; cat README; git -c user.name=agent -c user.email=agent@example.invalid \
                  commit --quiet --allow-empty -m from-agent && echo committed; \
                  while read l; do echo line:$l; done";
    let repo_text = repo.display().to_string();
    let (code, out, err) = hub
        .cli(&[
            "agents",
            "create",
            "--name",
            "coder",
            "--node",
            "wt-n",
            "--workdir-mode",
            "create_worktree",
            "--repo",
            &repo_text,
            "--command",
            "/bin/sh",
            "--arg",
            "-c",
            "--arg",
            script,
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let short = &id["agent-".len().."agent-".len() + 6];
    let workdir = safe.join(format!("worktrees/project-coder-{short}"));
    assert_eq!(
        created["workdir"],
        workdir.display().to_string(),
        "{created}"
    );
    assert_eq!(created["workdir_mode"], "create_worktree");
    assert!(!workdir.exists(), "made at the first start, not before");

    // Followers before the start: SSE, and gRPC server streaming.
    let mut events = Events::open(
        &format!("{}/api/agents/{id}/events", hub.http_url()),
        &admin,
    )
    .await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = outpost_trust::grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let mut stream = AgentServiceClient::new(channel)
        .agent_logs(outpost_trust::grpc_channel::with_bearer(
            AgentLogsRequest {
                id: id.clone(),
                follow: true,
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let (grpc_tx, mut grpc_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok(Some(entry)) = stream.message().await {
            if grpc_tx.send(entry.data).is_err() {
                return;
            }
        }
    });
    let mut grpc_text = String::new();
    let mut grpc_until = async |needle: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !grpc_text.contains(needle) {
            match tokio::time::timeout_at(deadline, grpc_rx.recv()).await {
                Ok(Some(data)) => grpc_text.push_str(&data),
                _ => panic!("{needle:?} not in the gRPC stream: {grpc_text}"),
            }
        }
    };

    let (status, started) = post(&hub, &admin, &format!("/api/agents/{id}/start"), None).await;
    assert_eq!(status, 200, "{started}");
    wait_agent(&hub, &admin, &id, "running").await;
    for needle in [
        workdir.display().to_string().as_str(),
        "the project",
        "committed",
    ] {
        events.until(needle).await;
        grpc_until(needle).await;
    }
    let (status, body) = post(
        &hub,
        &admin,
        &format!("/api/agents/{id}/input"),
        Some(json!({"text": "hello"})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    events.until("line:hello").await;
    grpc_until("line:hello").await;
    // The agent committed on its own branch of the repository.
    let branch = format!("project-coder-{short}");
    assert!(git(&repo, &["log", "--format=%s", &branch]).starts_with("from-agent"));

    // Another agent cannot take the worktree; a non-empty directory is no new worktree.
    let (status, body) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(
            json!({"name": "thief", "node": "wt-n", "command": "/bin/true",
                    "workdir_mode": "reuse_worktree", "workdir": workdir.display().to_string()}),
        ),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&id), "{body}");
    let busy = safe.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("notes"), "mine").unwrap();
    let (status, body) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(
            json!({"name": "busy", "node": "wt-n", "command": "/bin/true",
                    "workdir_mode": "create_worktree", "repo": repo_text,
                    "workdir": busy.display().to_string()}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let busy_id = body["id"].as_str().unwrap().to_string();
    let (status, body) = post(&hub, &admin, &format!("/api/agents/{busy_id}/start"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "failed", "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("not empty"),
        "{body}"
    );
    assert_eq!(std::fs::read_to_string(busy.join("notes")).unwrap(), "mine");

    // Delete while running is refused; after the stop it removes the worktree (the branch and
    // its commit stay in the repository).
    let (code, _, err) = hub.cli(&["agents", "delete", &id]).await;
    assert_eq!(code, 1);
    assert!(err.contains("stop it first"), "{err}");
    let (code, _, err) = hub.cli(&["agents", "stop", &id]).await;
    assert_eq!(code, 0, "{err}");
    wait_agent(&hub, &admin, &id, "stopped").await;
    let (code, _, err) = hub.cli(&["agents", "delete", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!workdir.exists());
    assert!(
        !git(&repo, &["worktree", "list"]).contains(&branch),
        "worktree still listed"
    );
    assert!(git(&repo, &["log", "--format=%s", &branch]).starts_with("from-agent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_agent_invokes_its_tool_once_per_line_until_stopped() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("admin", Role::Admin);
    let viewer = hub.token("viewer", Role::Viewer);
    // A node with no launcher configured: WASM agents need only its sandbox.
    let _node = start_node(hub.node_config("wa-n", STATIC_TOKEN)).await;
    hub.wait_status("wa-n", "online", Duration::from_secs(15))
        .await;
    crate::tasks::push(&hub, "echo", &outpost_guests::echo()).await;
    crate::tasks::push_hostile_with_policy(&hub, "hostile", "[limits]\ntimeout = \"2s\"\n").await;

    // Created from the CLI: the tool is the runtime.
    let (code, out, err) = hub
        .cli(&[
            "agents", "create", "--name", "parrot", "--node", "wa-n", "--tool", "echo", "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let created = crate::tasks::parse(&out);
    assert_eq!(created["runtime"]["kind"], "wasm", "{created}");
    assert_eq!(created["runtime"]["tool"], "echo", "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    // What only native agents have is refused, naming the field; so is a tool not on the hub.
    for (body, field, code) in [
        (
            json!({"name": "x", "node": "wa-n", "tool": "echo", "command": "sh"}),
            "command",
            400,
        ),
        (
            json!({"name": "x", "node": "wa-n", "tool": "echo", "workdir_mode": "create_worktree", "repo": "/r"}),
            "workdir_mode",
            400,
        ),
        (
            json!({"name": "x", "node": "wa-n", "tool": "echo", "cpu_seconds": 5}),
            "cpu_seconds",
            400,
        ),
        (
            json!({"name": "x", "node": "wa-n", "tool": "nope"}),
            "nope",
            404,
        ),
        (
            json!({"name": "x", "node": "wa-n", "tool": "../echo"}),
            "tool",
            400,
        ),
    ] {
        let (status, err) = post(&hub, &admin, "/api/agents", Some(body)).await;
        assert_eq!(status, code, "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }

    let (status, started) = post(&hub, &admin, &format!("/api/agents/{id}/start"), None).await;
    assert_eq!(status, 200, "{started}");
    wait_agent(&hub, &admin, &id, "running").await;
    let mut events = Events::open(
        &format!("{}/api/agents/{id}/events", hub.http_url()),
        &viewer,
    )
    .await;
    for line in ["hello there", "second line"] {
        let (status, err) = post(
            &hub,
            &admin,
            &format!("/api/agents/{id}/input"),
            Some(json!({ "text": line })),
        )
        .await;
        assert_eq!(status, 202, "{err}");
        events.until(line).await;
    }
    // The CLI reads the same tail.
    let (code, out, err) = hub.cli(&["agents", "logs", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hello there\nsecond line\n"), "{out}");

    // A failed call is reported on stderr and the run goes on; a stop ends a call in flight.
    let (status, hostile) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(json!({"name": "rowdy", "node": "wa-n", "tool": "hostile"})),
    )
    .await;
    assert_eq!(status, 201, "{hostile}");
    let rowdy = hostile["id"].as_str().unwrap().to_string();
    post(&hub, &admin, &format!("/api/agents/{rowdy}/start"), None).await;
    wait_agent(&hub, &admin, &rowdy, "running").await;
    let mut rowdy_events = Events::open(
        &format!("{}/api/agents/{rowdy}/events", hub.http_url()),
        &viewer,
    )
    .await;
    for line in ["spin", "sleep 0"] {
        let (status, err) = post(
            &hub,
            &admin,
            &format!("/api/agents/{rowdy}/input"),
            Some(json!({ "text": line })),
        )
        .await;
        assert_eq!(status, 202, "{err}");
    }
    rowdy_events.until("slept 0s").await;
    assert!(
        rowdy_events.text.contains("error: out_of_fuel")
            || rowdy_events.text.contains("error: timeout"),
        "{}",
        rowdy_events.text
    );
    let (status, _) = post(
        &hub,
        &admin,
        &format!("/api/agents/{rowdy}/input"),
        Some(json!({ "text": "sleep 600" })),
    )
    .await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    post(&hub, &admin, &format!("/api/agents/{rowdy}/stop"), None).await;
    let stopped = wait_agent(&hub, &admin, &rowdy, "stopped").await;
    assert!(!stopped.to_string().contains("slept 600s"), "{stopped}");
    rowdy_events.until("stopped").await;

    // Input to a stopped agent is refused; the echo agent still answers.
    let (status, _) = post(
        &hub,
        &admin,
        &format!("/api/agents/{rowdy}/input"),
        Some(json!({ "text": "sleep 0" })),
    )
    .await;
    assert_eq!(status, 409);
    post(
        &hub,
        &admin,
        &format!("/api/agents/{id}/input"),
        Some(json!({ "text": "still here" })),
    )
    .await;
    events.until("still here").await;

    // The run's wall time ends it as failed, with the reason.
    let (status, timed) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(json!({"name": "brief", "node": "wa-n", "tool": "echo", "timeout_ms": 500})),
    )
    .await;
    assert_eq!(status, 201, "{timed}");
    let brief = timed["id"].as_str().unwrap().to_string();
    post(&hub, &admin, &format!("/api/agents/{brief}/start"), None).await;
    let failed = wait_agent(&hub, &admin, &brief, "failed").await;
    assert!(
        failed["reason"].as_str().unwrap().contains("wall-time"),
        "{failed}"
    );
    // The heartbeat no longer names it; the echo agent is still running there.
    post(&hub, &admin, &format!("/api/agents/{id}/stop"), None).await;
    wait_agent(&hub, &admin, &id, "stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agent_is_capped_while_another_agents_lines_still_arrive() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("admin", Role::Admin);
    let (config, _safe) = agent_node(&hub, "flood-n");
    let _node = start_node(config).await;
    hub.wait_status("flood-n", "online", Duration::from_secs(15))
        .await;
    let (status, flood) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(json!({"name": "flood", "node": "flood-n", "command": "yes",
            "args": ["flooding"], "max_output_bytes": 1_048_576})),
    )
    .await;
    assert_eq!(status, 201, "{flood}");
    let flood = flood["id"].as_str().unwrap().to_string();
    let (status, quiet) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(
            json!({"name": "quiet", "node": "flood-n", "command": "/bin/sh",
            "args": ["-c", "while read l; do echo heard:$l; done"]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{quiet}");
    let quiet = quiet["id"].as_str().unwrap().to_string();
    for id in [&flood, &quiet] {
        post(&hub, &admin, &format!("/api/agents/{id}/start"), None).await;
        wait_agent(&hub, &admin, id, "running").await;
    }
    let mut flood_events = Events::open(
        &format!("{}/api/agents/{flood}/events", hub.http_url()),
        &admin,
    )
    .await;
    flood_events.until("flooding").await;
    let mut events = Events::open(
        &format!("{}/api/agents/{quiet}/events", hub.http_url()),
        &admin,
    )
    .await;
    // While the flood runs (past its cap, the node drops and counts the rest), the quiet
    // agent's lines still come through.
    for i in 0..5 {
        let (status, err) = post(
            &hub,
            &admin,
            &format!("/api/agents/{quiet}/input"),
            Some(json!({ "text": format!("line-{i}") })),
        )
        .await;
        assert_eq!(status, 202, "{err}");
        events.until(&format!("heard:line-{i}")).await;
    }
    post(&hub, &admin, &format!("/api/agents/{flood}/stop"), None).await;
    let stopped = wait_agent(&hub, &admin, &flood, "stopped").await;
    let reason = stopped["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("bytes of output past its limit dropped"),
        "{stopped}"
    );
    let dropped: u64 = reason
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "{stopped}");
    // What reached the hub stayed within the cap (its log keeps at most a 256 KiB tail).
    let (code, out, err) = hub.cli(&["agents", "logs", &flood]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.len() <= 300 * 1024, "{} bytes of tail", out.len());
    post(&hub, &admin, &format!("/api/agents/{quiet}/stop"), None).await;
    wait_agent(&hub, &admin, &quiet, "stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_gpu_agent_keeps_its_gpu_across_a_hub_restart() {
    let mut hub = TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("admin", Role::Admin);
    let (config, _safe) = agent_node(&hub, "gpu-r");
    let _node = start_node(outpost_tests::with_simulated_gpu(config)).await;
    hub.wait_status("gpu-r", "online", Duration::from_secs(15))
        .await;
    let (status, created) = post(
        &hub,
        &admin,
        "/api/agents",
        Some(json!({"name": "trainer", "requirements": {"gpus": 1.0},
            "command": "/bin/sh", "args": ["-c", "echo gpu=$CUDA_VISIBLE_DEVICES; exec sleep 300"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["node"], "gpu-r", "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    post(&hub, &admin, &format!("/api/agents/{id}/start"), None).await;
    wait_agent(&hub, &admin, &id, "running").await;

    // The hub restarts; the agent runs on, and its GPU is held again once the node is back:
    // a task wanting the node's one GPU waits.
    hub.restart().await;
    let admin = hub.token("admin", Role::Admin);
    hub.wait_status("gpu-r", "online", Duration::from_secs(20))
        .await;
    hub.liveness_passes(3).await;
    assert_eq!(agent(&hub, &admin, &id).await["status"], "running");
    let waiting = crate::tasks::submit(&hub, &["--command", "echo mine-now", "--gpus", "1"]).await;
    let task_id = waiting["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let queued = crate::tasks::task_json(&hub, &task_id).await;
    assert_eq!(queued["status"], "queued", "{queued}");

    // Its end gives the GPU back.
    post(&hub, &admin, &format!("/api/agents/{id}/stop"), None).await;
    wait_agent(&hub, &admin, &id, "stopped").await;
    let ran =
        crate::tasks::wait_task_status(&hub, &task_id, "succeeded", Duration::from_secs(20)).await;
    assert!(ran.to_string().contains("mine-now"), "{ran}");
}
