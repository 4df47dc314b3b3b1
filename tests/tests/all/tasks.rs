//! Tasks end to end: tools pushed through the CLI, placed by requirement on real nodes over real
//! QUIC sessions, run in the nodes' sandboxes; GPU work on the GPU node with its devices in
//! `CUDA_VISIBLE_DEVICES`; no-fit reasons; cancel; idempotent resubmit; sandbox stops with exit 3;
//! and a GPU node lost mid-task with the task finishing on another GPU node.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{STATIC_TOKEN, TestHub, eventually, http_json, start_node, with_simulated_gpu};
use serde_json::Value;

pub(super) fn parse(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

pub(super) async fn push(hub: &TestHub, name: &str, path: &std::path::Path) {
    let (code, out, err) = hub
        .cli(&[
            "tool",
            "push",
            path.to_str().unwrap(),
            "--name",
            name,
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "push {name}: {err}");
    let tool = parse(&out);
    assert_eq!(tool["name"], name);
    assert_eq!(tool["digest"].as_str().unwrap().len(), 64);
}

pub(super) async fn task_json(hub: &TestHub, id: &str) -> Value {
    let (code, out, err) = hub.cli(&["tasks", "get", id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    parse(&out)
}

/// Sends `tool` with `input` to `node`, waits (up to 60 s) for its end; returns the task.
pub(super) async fn send_and_wait(hub: &TestHub, node: &str, tool: &str, input: &str) -> Value {
    let (code, out, err) = hub
        .cli(&["nodes", "send", node, "--tool", tool, "--input", input])
        .await;
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let (code, _, err) = tokio::time::timeout(
        Duration::from_secs(60),
        hub.cli(&["nodes", "result", &id, "--wait", "--json"]),
    )
    .await
    .expect("the task ends within 60 s");
    // 0: succeeded; 1: failed or cancelled; 3: the sandbox stopped the tool.
    assert!(matches!(code, 0 | 1 | 3), "{code}: {err}");
    task_json(hub, &id).await
}

/// Pushes the hostile guest as `name` with the policy `policy_toml`.
pub(super) async fn push_hostile_with_policy(hub: &TestHub, name: &str, policy_toml: &str) {
    let policy = hub.dir.path().join(format!("{name}.toml"));
    std::fs::write(&policy, policy_toml).unwrap();
    let (code, _, err) = hub
        .cli(&[
            "tool",
            "push",
            outpost_guests::hostile().to_str().unwrap(),
            "--name",
            name,
            "--policy",
            policy.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "push {name}: {err}");
}

/// Pushes the hostile guest as `slow`, with room to sleep (30 s, unlimited fuel).
async fn push_slow_tool(hub: &TestHub) {
    push_hostile_with_policy(
        hub,
        "slow",
        "[limits]\ntimeout = \"30s\"\nfuel = \"unlimited\"\n",
    )
    .await;
}

/// Submits `slow` (sleeps 2 s) needing one GPU; returns the task id.
async fn submit_slow_gpu_task(hub: &TestHub, max_attempts: u32) -> String {
    let attempts = max_attempts.to_string();
    let (code, out, err) = hub
        .cli(&[
            "tasks",
            "submit",
            "--tool",
            "slow",
            "--input",
            "sleep 2",
            "--gpus",
            "1",
            "--max-attempts",
            &attempts,
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    parse(&out)["id"].as_str().unwrap().to_string()
}

/// Waits until task `id`'s reason contains `needle`; returns the task.
async fn wait_reason(hub: &TestHub, id: &str, needle: &str) -> Value {
    let what = format!("task {id} giving the reason {needle:?}");
    eventually(&what, Duration::from_secs(15), async || {
        let task = task_json(hub, id).await;
        match task["reason"].as_str() {
            Some(reason) if reason.contains(needle) => Ok(task),
            _ => Err(task.to_string()),
        }
    })
    .await
}

pub(super) async fn wait_task_status(
    hub: &TestHub,
    id: &str,
    status: &str,
    timeout: Duration,
) -> Value {
    eventually(&format!("task {id} {status}"), timeout, async || {
        let task = task_json(hub, id).await;
        if task["status"] == status {
            Ok(task)
        } else {
            Err(task.to_string())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_placed_by_requirement_and_run_in_the_sandbox() {
    let hub = TestHub::start(TlsMode::Tls).await;

    // Tools go to the hub first; a file that is not a component is refused with the reason.
    push(&hub, "echo", &outpost_guests::echo()).await;
    push(&hub, "hostile", &outpost_guests::hostile()).await;
    let junk = hub.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let (code, _, err) = hub
        .cli(&["tool", "push", junk.to_str().unwrap(), "--name", "junk"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid_component"), "{err}");
    let (code, _, err) = hub
        .cli(&["tool", "push", junk.to_str().unwrap(), "--name", "../x"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("name"), "{err}");
    let (code, out, _) = hub.cli(&["tool", "list", "--json"]).await;
    assert_eq!(code, 0);
    let names: Vec<String> = parse(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo", "hostile"]);
    let (code, out, _) = hub.cli(&["tool", "inspect", "echo", "--json"]).await;
    assert_eq!(code, 0);
    assert!(!parse(&out)["version"].as_str().unwrap().is_empty());

    let token = hub.one_shot_token().await;
    let cpu = start_node(hub.node_config("cpu-1", &token)).await;
    let gpu = start_node(with_simulated_gpu(hub.node_config("gpu-1", STATIC_TOKEN))).await;
    hub.wait_status("cpu-1", "online", Duration::from_secs(10))
        .await;
    hub.wait_status("gpu-1", "online", Duration::from_secs(10))
        .await;

    // A GPU task lands on the GPU node and sees its device.
    let (code, out, err) = hub
        .cli(&[
            "tasks",
            "submit",
            "--tool",
            "hostile",
            "--input",
            "env CUDA_VISIBLE_DEVICES",
            "--gpus",
            "1",
            "--gpu-memory",
            "16GiB",
            "--compute-capability",
            "8.0",
            "--wait",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{out} {err}");
    let task = parse(&out);
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["node"], "gpu-1");
    assert_eq!(task["devices"], serde_json::json!([0]));
    assert_eq!(
        task["output"], "0",
        "CUDA_VISIBLE_DEVICES names the assigned GPU"
    );
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["requirements"]["gpus"], 1.0);
    assert_eq!(task["requirements"]["gpu_memory_mb"], 16384);

    // Work without GPUs keeps the GPU node free; the tool's output comes back.
    let (code, out, err) = hub
        .cli(&[
            "tasks",
            "submit",
            "--tool",
            "echo",
            "--input",
            "hello fleet",
            "--wait",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let task = parse(&out);
    assert_eq!(task["output"], "hello fleet");
    assert_eq!(task["node"], "cpu-1");
    assert!(task["duration_us"].as_u64().unwrap() > 0);
    assert!(task["fuel_used"].as_u64().unwrap() > 0);

    // What cannot fit waits with the reason, until cancelled.
    let (code, out, err) = hub
        .cli(&[
            "tasks",
            "submit",
            "--tool",
            "echo",
            "--gpus",
            "1",
            "--gpu-memory",
            "200GiB",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let waiting_id = parse(&out)["id"].as_str().unwrap().to_string();
    let waiting = wait_reason(&hub, &waiting_id, "not enough free GPU memory").await;
    assert_eq!(waiting["status"], "queued");
    assert!(
        waiting["reason"].as_str().unwrap().contains("80896 MiB"),
        "the reason says how much is free: {waiting}"
    );
    let (code, out, err) = hub.cli(&["tasks", "cancel", &waiting_id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["status"], "cancelled");
    let (code, _, err) = hub.cli(&["tasks", "cancel", &waiting_id]).await;
    assert_eq!(code, 1);
    assert!(err.contains("already cancelled"), "{err}");

    // Cancelling a running task stops it on its node; the node keeps serving.
    let (code, out, err) = hub
        .cli(&[
            "tasks",
            "submit",
            "--tool",
            "hostile",
            "--input",
            "sleep 20",
            "--timeout",
            "60s",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let long_id = parse(&out)["id"].as_str().unwrap().to_string();
    wait_task_status(&hub, &long_id, "running", Duration::from_secs(10)).await;
    let (code, out, err) = hub.cli(&["tasks", "cancel", &long_id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let cancelled = parse(&out);
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["error"]["kind"], "cancelled");
    let (code, out, err) = hub
        .cli(&["nodes", "result", &long_id, "--wait", "--json"])
        .await;
    assert_eq!(code, 1, "a cancelled task is not a success: {err}");
    assert_eq!(parse(&out)["status"], "cancelled");

    // A retried submit with the same idempotency key returns the first task.
    let submit_keyed = [
        "tasks",
        "submit",
        "--tool",
        "echo",
        "--input",
        "once",
        "--idempotency-key",
        "job-42",
        "--json",
    ];
    let (_, first, _) = hub.cli(&submit_keyed).await;
    let (_, second, _) = hub.cli(&submit_keyed).await;
    let first_id = parse(&first)["id"].as_str().unwrap().to_string();
    assert_eq!(parse(&second)["id"], first_id.as_str());
    wait_task_status(&hub, &first_id, "succeeded", Duration::from_secs(20)).await;

    // PRX parity: send to a node, read the result.
    let (code, out, err) = hub
        .cli(&[
            "nodes", "send", "gpu-1", "--tool", "echo", "--input", "pinned",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let sent_id = out.trim().to_string();
    let (code, out, err) = hub
        .cli(&["nodes", "result", &sent_id, "--wait", "--json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let sent = parse(&out);
    assert_eq!(sent["node"], "gpu-1", "pinned work runs where it was sent");
    assert_eq!(sent["output"], "pinned");

    // A sandbox stop fails the task with its kind, and the CLI exits with 3.
    let (code, out, _) = hub
        .cli(&[
            "tasks", "submit", "--tool", "hostile", "--input", "spin", "--wait", "--json",
        ])
        .await;
    assert_eq!(code, 3, "{out}");
    let stopped = parse(&out);
    assert_eq!(stopped["status"], "failed");
    assert_eq!(stopped["error"]["kind"], "out_of_fuel", "{stopped}");
    // A tool's own error is a failure (exit 1), not a stop.
    let (code, out, _) = hub
        .cli(&[
            "tasks",
            "submit",
            "--tool",
            "hostile",
            "--input",
            "sleep soon",
            "--wait",
            "--json",
        ])
        .await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(parse(&out)["error"]["kind"], "tool_error");

    // Bad submits name the cause.
    let (code, _, err) = hub.cli(&["tasks", "submit", "--tool", "nope"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not on this hub"), "{err}");
    let (code, _, err) = hub
        .cli(&["tasks", "submit", "--tool", "echo", "--gpus", "1.5"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("whole number"), "{err}");
    let (code, _, err) = hub
        .cli(&[
            "tasks",
            "submit",
            "--command",
            "ls",
            "--workdir",
            "relative/dir",
        ])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("workdir") && err.contains("absolute"), "{err}");
    let (code, _, err) = hub.cli(&["tasks", "get", "task-missing"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");

    // REST: list, get, and a bad body that names the field.
    let (code, out, _) = hub
        .cli(&["token", "api", "--role", "admin", "--json"])
        .await;
    assert_eq!(code, 0);
    let admin = parse(&out)["token"].as_str().unwrap().to_string();
    let (status, list) = http_json(
        "GET",
        &format!("{}/api/admin/tasks?status=succeeded", hub.http_url()),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(list.as_array().unwrap().len() >= 4, "{list}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "succeeded")
    );
    let (status, body) = http_json(
        "POST",
        &format!("{}/api/admin/tasks", hub.http_url()),
        Some(&admin),
        Some(r#"{"tool":"echo","requirements":{"gpus":-1}}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "requirements", "{body}");
    let (status, body) = http_json(
        "POST",
        &format!("{}/api/admin/tasks", hub.http_url()),
        Some(&admin),
        Some(r#"{"tool":"echo","gpu":1}"#),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `gpu`"),
        "{body}"
    );
    let (status, created) = http_json(
        "POST",
        &format!("{}/api/admin/tasks", hub.http_url()),
        Some(&admin),
        Some(r#"{"tool":"echo","input":"rest","idempotency_key":"rest-1"}"#),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, again) = http_json(
        "POST",
        &format!("{}/api/admin/tasks", hub.http_url()),
        Some(&admin),
        Some(r#"{"tool":"echo","input":"rest","idempotency_key":"rest-1"}"#),
    )
    .await;
    assert_eq!(status, 200, "a replayed submit is not a new task");
    assert_eq!(again["id"], created["id"]);
    // The same key for other work is a mistake, not a replay.
    let (status, conflict) = http_json(
        "POST",
        &format!("{}/api/admin/tasks", hub.http_url()),
        Some(&admin),
        Some(r#"{"tool":"echo","input":"other work","idempotency_key":"rest-1"}"#),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    assert!(
        conflict["error"].as_str().unwrap().contains(&format!(
            "idempotency key \"rest-1\" was used for task {} with another input",
            created["id"].as_str().unwrap()
        )),
        "{conflict}"
    );
    let (status, tools) = http_json(
        "GET",
        &format!("{}/api/admin/tools", hub.http_url()),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(tools.as_array().unwrap().len(), 2);

    cpu.shutdown().await;
    gpu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_node_lost_mid_task_hands_the_task_to_another() {
    let hub = TestHub::start(TlsMode::Tls).await;
    push(&hub, "hostile", &outpost_guests::hostile()).await;
    push_slow_tool(&hub).await;

    let mut nodes = std::collections::HashMap::new();
    for id in ["gpu-a", "gpu-b"] {
        let node = start_node(with_simulated_gpu(hub.node_config(id, STATIC_TOKEN))).await;
        hub.wait_status(id, "online", Duration::from_secs(10)).await;
        nodes.insert(id.to_string(), node);
    }

    let id = submit_slow_gpu_task(&hub, 3).await;
    let running = wait_task_status(&hub, &id, "running", Duration::from_secs(10)).await;
    let first = running["node"].as_str().unwrap().to_string();
    let other = if first == "gpu-a" { "gpu-b" } else { "gpu-a" };

    // The node dies mid-task: after TTL + grace the task goes to the other GPU node.
    nodes.remove(&first).unwrap().shutdown().await;
    let (code, out, err) = hub.cli(&["nodes", "result", &id, "--wait", "--json"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let done = parse(&out);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["node"], other, "{done}");
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["output"], "slept 2s");
    let (code, out, _) = hub.cli(&["tasks", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        parse(&out).as_array().unwrap().len(),
        1,
        "nothing lost, nothing duplicated"
    );

    // Out of attempts: a task whose only GPU node dies fails with node_lost instead of waiting.
    let id = submit_slow_gpu_task(&hub, 1).await;
    wait_task_status(&hub, &id, "running", Duration::from_secs(10)).await;
    nodes.remove(other).unwrap().shutdown().await;
    let failed = wait_task_status(&hub, &id, "failed", Duration::from_secs(10)).await;
    assert_eq!(failed["error"]["kind"], "node_lost", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("went offline"),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_follows_a_scripted_gpu_that_fills_fails_and_recovers() {
    use outpost_config::GpuScriptStep;
    let hub = TestHub::start(TlsMode::Tls).await;
    push(&hub, "echo", &outpost_guests::echo()).await;
    let mut config = with_simulated_gpu(hub.node_config("gpu-s", STATIC_TOKEN));
    let step = |secs: u64| GpuScriptStep {
        at: Duration::from_secs(secs),
        ..GpuScriptStep::default()
    };
    // Another process fills the GPU, then the driver fails, then it comes back.
    config.gpu.script = vec![
        GpuScriptStep {
            device: Some(0),
            memory_used_mb: Some(75_000),
            utilization_percent: Some(97),
            ..step(1)
        },
        GpuScriptStep {
            fail: Some("GPU has fallen off the bus".into()),
            ..step(6)
        },
        GpuScriptStep {
            recover: true,
            ..step(10)
        },
    ];
    let _node = start_node(config).await;

    // The filled GPU shows in the fleet, and a task that needs more memory waits, saying why.
    hub.wait_node(
        "gpu-s",
        "free memory 6920 MiB",
        Duration::from_secs(15),
        |n| n["gpus"][0]["memory_free_mb"] == 6920,
    )
    .await;
    let (code, out, err) = hub
        .cli(&[
            "tasks",
            "submit",
            "--tool",
            "echo",
            "--gpus",
            "1",
            "--gpu-memory",
            "40GiB",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let big = parse(&out)["id"].as_str().unwrap().to_string();
    let task = wait_reason(&hub, &big, "not enough free GPU memory").await;
    assert_eq!(task["status"], "queued");
    assert!(
        task["reason"].as_str().unwrap().contains("6920 MiB"),
        "{task}"
    );

    // The probe fails after working: the node is fenced for GPU work, with the reason; small GPU
    // work waits too, CPU work still runs there.
    let fenced = hub
        .wait_node("gpu-s", "fenced", Duration::from_secs(10), |n| {
            n["status"] == "fenced"
        })
        .await;
    assert!(
        fenced["status_reason"]
            .as_str()
            .unwrap()
            .contains("fallen off the bus"),
        "{fenced}"
    );
    let (code, out, err) = hub
        .cli(&[
            "tasks", "submit", "--tool", "echo", "--input", "cpu", "--wait", "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["node"], "gpu-s");
    let (code, out, err) = hub
        .cli(&[
            "tasks", "submit", "--tool", "echo", "--input", "small", "--gpus", "0.5", "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let small = parse(&out)["id"].as_str().unwrap().to_string();
    hub.dispatch_passes(2).await;
    let task = task_json(&hub, &small).await;
    assert_eq!(
        task["status"], "queued",
        "no GPU work on a fenced node: {task}"
    );

    // Recovered: the node is online again and the small task runs; the big one still waits.
    hub.wait_node("gpu-s", "online again", Duration::from_secs(10), |n| {
        n["status"] == "online"
    })
    .await;
    let done = wait_task_status(&hub, &small, "succeeded", Duration::from_secs(10)).await;
    assert_eq!(done["output"], "small");
    assert_eq!(done["devices"], serde_json::json!([0]));
    assert_eq!(task_json(&hub, &big).await["status"], "queued");
    let (code, _, err) = hub.cli(&["tasks", "cancel", &big]).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_result_from_a_lost_attempt_is_recorded_not_reported() {
    let hub = TestHub::start(TlsMode::Tls).await;
    push_slow_tool(&hub).await;
    let mut nodes = Vec::new();
    for id in ["gpu-a", "gpu-b"] {
        nodes.push(start_node(with_simulated_gpu(hub.node_config(id, STATIC_TOKEN))).await);
        hub.wait_status(id, "online", Duration::from_secs(10)).await;
    }
    let id = submit_slow_gpu_task(&hub, 3).await;
    let running = wait_task_status(&hub, &id, "running", Duration::from_secs(10)).await;
    let first = running["node"].as_str().unwrap().to_string();
    let other = if first == "gpu-a" { "gpu-b" } else { "gpu-a" };

    // The hub loses sight of the first node (as in a partition) while the node keeps running
    // the attempt: the task is placed again, on the other node.
    let (code, _, err) = hub.cli(&["nodes", "drain", &first]).await;
    assert_eq!(code, 0, "{err}");
    let state = hub.hub().state.clone();
    state.fleet.lose_node(&first, "partitioned in this test");
    state.tasks.wake_dispatcher();

    // The first attempt's result still arrives, and is kept on its attempt without finishing
    // the task; the second attempt's result is the one reported.
    let (code, out, err) = hub.cli(&["nodes", "result", &id, "--wait", "--json"]).await;
    assert_eq!(code, 0, "{out} {err}");
    let done = parse(&out);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["node"], other, "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    // (Which attempt ends first depends on when each node had compiled the tool.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let task = loop {
        let task = task_json(&hub, &id).await;
        if task["late_results"] == 1 {
            break task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first attempt's result never came: {task}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        task["node"], other,
        "the late result does not replace the reported one"
    );
    assert_eq!(task["attempts"], 2);
    let attempts = state.store().list_attempts(&id).await.unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].node_id, first);
    assert_eq!(
        attempts[0].status,
        outpost_hub::store::AttemptStatus::Succeeded,
        "the late result is kept: {attempts:?}"
    );
    assert_eq!(attempts[0].output.as_deref(), Some("slept 2s"));
    assert_eq!(attempts[1].node_id, other);
    assert_eq!(
        attempts[1].status,
        outpost_hub::store::AttemptStatus::Succeeded
    );
    let (code, out, _) = hub.cli(&["tasks", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(parse(&out).as_array().unwrap().len(), 1, "reported once");
}

/// Waits until `node` has compiled the component with `digest` (`what` names the wait).
async fn tool_installed(node: &outpost_node::NodeHandle, digest: &str, what: &str) {
    eventually(what, Duration::from_secs(60), async || {
        if node.tool_ready(digest) {
            Ok(())
        } else {
            Err(format!("{} has not compiled {digest}", node.node_id))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_installed_on_the_nodes_before_their_first_task() {
    use outpost_hub::fleet::links::{LinkError, RunAnswer};
    use outpost_proto::v1::InstallTool;

    let hub = TestHub::start(TlsMode::Tls).await;
    let configs = [
        hub.node_config("inst-1", STATIC_TOKEN),
        hub.node_config("inst-2", STATIC_TOKEN),
    ];
    let mut nodes = Vec::new();
    for config in &configs {
        nodes.push(start_node(config.clone()).await);
    }
    for id in ["inst-1", "inst-2"] {
        hub.wait_status(id, "online", Duration::from_secs(10)).await;
    }

    // The push returns at once; both nodes receive the component and compile it in the
    // background, before any task asks for it.
    push(&hub, "echo", &outpost_guests::echo()).await;
    let wasm = std::fs::read(outpost_guests::echo()).unwrap();
    let digest = outpost_trust::auth::sha256_hex(&wasm);
    for (node, config) in nodes.iter().zip(&configs) {
        tool_installed(node, &digest, "the tool installed at push").await;
        let data = config.data_dir();
        assert_eq!(
            std::fs::read(data.join("tools").join(format!("{digest}.wasm"))).unwrap(),
            wasm,
            "the stored component is the pushed one"
        );
        let compiled: Vec<_> = std::fs::read_dir(data.join("compile-cache"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&digest))
            .collect();
        assert_eq!(compiled.len(), 1, "one compiled entry for the component");
    }
    // A node that connects after the push is sent every tool as its session comes up.
    let late_config = hub.node_config("inst-3", STATIC_TOKEN);
    let late = start_node(late_config.clone()).await;
    tool_installed(
        &late,
        &digest,
        "the tool installed on a node connecting later",
    )
    .await;
    assert!(
        late_config
            .data_dir()
            .join("tools")
            .join(format!("{digest}.wasm"))
            .is_file()
    );
    nodes.push(late);
    let task = submit(&hub, &["--tool", "echo", "--input", "installed", "--wait"]).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["output"], "installed");

    // What a node refuses to install, and says why; it keeps serving afterwards.
    let link = hub
        .hub()
        .state
        .fleet
        .links()
        .get("inst-1")
        .expect("link to inst-1");
    let refused = |answer: Result<RunAnswer, LinkError>| match answer {
        Err(LinkError::Refused(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let message = refused(
        link.install_tool(InstallTool {
            tool: "bad".into(),
            tool_digest: "../../etc/passwd".into(),
            component: Vec::new(),
        })
        .await,
    );
    assert!(message.contains("not a sha256"), "{message}");
    let message = refused(
        link.install_tool(InstallTool {
            tool: "bad".into(),
            tool_digest: "0".repeat(64),
            component: b"some other bytes".to_vec(),
        })
        .await,
    );
    assert!(
        message.contains("sha256") && message.contains("not the announced"),
        "{message}"
    );
    assert!(
        !configs[0]
            .data_dir()
            .join("tools")
            .join(format!("{}.wasm", "0".repeat(64)))
            .exists(),
        "bytes that do not match their digest are not stored"
    );
    let answer = link
        .install_tool(InstallTool {
            tool: "lost".into(),
            tool_digest: "1".repeat(64),
            component: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(answer, RunAnswer::MissingComponent("1".repeat(64)));
    // Bytes that match their digest but are no component: stored, never ready, and the node
    // goes on running tasks.
    let junk = b"not a component".to_vec();
    let junk_digest = outpost_trust::auth::sha256_hex(&junk);
    let mut installs_ended = nodes[0].installs_ended().unwrap();
    let ended_before = *installs_ended.borrow_and_update();
    let answer = link
        .install_tool(InstallTool {
            tool: "junk".into(),
            tool_digest: junk_digest.clone(),
            component: junk,
        })
        .await
        .unwrap();
    assert_eq!(answer, RunAnswer::Accepted);
    tokio::time::timeout(
        Duration::from_secs(15),
        installs_ended.wait_for(|n| *n > ended_before),
    )
    .await
    .expect("the junk install ends")
    .unwrap();
    assert!(!nodes[0].tool_ready(&junk_digest));
    let after = submit(
        &hub,
        &[
            "--tool", "echo", "--input", "after", "--node", "inst-1", "--wait",
        ],
    )
    .await;
    assert_eq!(after["output"], "after", "{after}");

    for node in nodes {
        node.shutdown().await;
    }
}

/// `outpost tasks submit ARGS --json`, which must succeed; returns the task.
pub(super) async fn submit(hub: &TestHub, args: &[&str]) -> Value {
    let mut all = vec!["tasks", "submit"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = hub.cli(&all).await;
    assert_eq!(code, 0, "tasks submit {args:?}: {out} {err}");
    parse(&out)
}

/// Runs `hostile` reading env var `name` with `requirements`, waiting for it; returns the task.
pub(super) async fn submit_env_probe(hub: &TestHub, name: &str, requirements: &[&str]) -> Value {
    let input = format!("env {name}");
    let mut args = vec!["--tool", "hostile", "--input", &input, "--wait"];
    args.extend_from_slice(requirements);
    submit(hub, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_instances_take_gpu_work_and_cuda_names_them_by_uuid() {
    use outpost_config::SimulatedMig;
    let hub = TestHub::start(TlsMode::Tls).await;
    push(&hub, "hostile", &outpost_guests::hostile()).await;
    let mut config = with_simulated_gpu(hub.node_config("mig-1", STATIC_TOKEN));
    config.gpu.simulated[0].mig = vec![
        SimulatedMig {
            profile: "3g.40gb".into(),
            memory_total_mb: 40_960,
            memory_used_mb: 0,
        },
        SimulatedMig {
            profile: "1g.10gb".into(),
            memory_total_mb: 10_240,
            memory_used_mb: 0,
        },
    ];
    let _node = start_node(config).await;
    let node = hub
        .wait_node("mig-1", "three devices", Duration::from_secs(15), |n| {
            n["gpus"].as_array().is_some_and(|g| g.len() == 3)
        })
        .await;
    assert_eq!(node["gpus"][0]["mig_enabled"], true, "{node}");
    assert_eq!(node["gpus"][1]["mig_parent_uuid"], node["gpus"][0]["uuid"]);
    assert_eq!(node["gpus"][2]["name"], "NVIDIA A100-SXM4-80GB MIG 1g.10gb");

    // 20 GiB fits only the 3g.40gb instance; a task holds it.
    push_slow_tool(&hub).await;
    let holder = submit(
        &hub,
        &[
            "--tool",
            "slow",
            "--input",
            "sleep 20",
            "--gpus",
            "1",
            "--gpu-memory",
            "20GiB",
        ],
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let running = wait_task_status(&hub, &holder, "running", Duration::from_secs(15)).await;
    assert_eq!(
        running["devices"],
        serde_json::json!([0]),
        "its GPU's index"
    );

    // Exclusive by default: the next task gets the other instance, named by its MIG uuid.
    let task = submit_env_probe(
        &hub,
        "CUDA_VISIBLE_DEVICES",
        &["--gpus", "1", "--gpu-memory", "1GiB"],
    )
    .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["output"], "MIG-sim-0000-1", "{task}");

    // The GPU itself (80 GB, 78 GB free) is never handed out: 60 GiB fits no instance.
    let big = submit(
        &hub,
        &["--tool", "hostile", "--gpus", "1", "--gpu-memory", "60GiB"],
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let waiting = wait_reason(&hub, &big, "no node fits").await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    let (code, _, err) = hub.cli(&["tasks", "cancel", &big]).await;
    assert_eq!(code, 0, "{err}");

    // Once the holder is gone the larger instance takes work again; GPU indexes follow NVML's
    // (PCI bus) order and the task is told so.
    let (code, _, err) = hub.cli(&["tasks", "cancel", &holder]).await;
    assert_eq!(code, 0, "{err}");
    let task = submit_env_probe(
        &hub,
        "CUDA_VISIBLE_DEVICES",
        &["--gpus", "1", "--gpu-memory", "20GiB"],
    )
    .await;
    assert_eq!(task["output"], "MIG-sim-0000-0", "{task}");
    let task = submit_env_probe(
        &hub,
        "CUDA_DEVICE_ORDER",
        &["--gpus", "1", "--gpu-memory", "1GiB"],
    )
    .await;
    assert_eq!(task["output"], "PCI_BUS_ID", "{task}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_an_operator_assigns_place_work_and_a_nodes_own_claims_need_not() {
    // The hub trusts only labels it assigned: a node that calls itself `zone=secure` attracts
    // no work by saying so.
    let hub = TestHub::start_adjusted(TlsMode::Tls, |config| {
        config.scheduler.trust_node_labels = false;
    })
    .await;
    let mut config = hub.node_config("liar", STATIC_TOKEN);
    config.node.labels = [("zone".to_string(), "secure".to_string())].into();
    let _node = start_node(config).await;
    hub.wait_status("liar", "online", Duration::from_secs(15))
        .await;
    push(&hub, "echo", &outpost_guests::echo()).await;

    let waiting = submit(
        &hub,
        &["--tool", "echo", "--input", "hi", "--label", "zone=secure"],
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let task = wait_reason(&hub, &waiting, "missing labels").await;
    assert_eq!(task["status"], "queued", "{task}");

    // Bad labels are refused with the field named, and nothing changes.
    let (code, _, err) = hub
        .cli(&["nodes", "update", "liar", "--label", "bad key=x"])
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("labels"), "{err}");

    // The operator assigns the label (CLI over gRPC); the waiting task is placed and runs.
    let (code, out, err) = hub
        .cli(&[
            "nodes",
            "update",
            "liar",
            "--label",
            "zone=secure",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["labels"]["zone"], "secure", "{out}");
    let task = wait_task_status(&hub, &waiting, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(task["node"], "liar", "{task}");

    // Over REST too: clearing them queues such work again.
    let admin = hub.token("admin", outpost_trust::auth::Role::Admin);
    let url = format!("{}/api/admin/agent-nodes/liar", hub.http_url());
    let (status, body) = http_json("GET", &url, Some(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["labels"]["zone"], "secure", "{body}");
    let (status, body) = http_json(
        "PUT",
        &url,
        Some(&admin),
        Some(r#"{"labels": {"zone": 7}}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("must be a string"),
        "{body}"
    );
    let (status, body) = http_json("PUT", &url, Some(&admin), Some(r#"{"labels": {}}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["labels"], serde_json::json!({}), "{body}");
    let again = submit(
        &hub,
        &["--tool", "echo", "--input", "hi", "--label", "zone=secure"],
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_reason(&hub, &again, "missing labels").await;
}
