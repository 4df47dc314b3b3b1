//! Native commands end to end: `tasks submit --command` and `nodes send --command` placed by the
//! scheduler (GPU requirements included) on nodes whose launcher answered, run by `/bin/sh -c`
//! in a workdir inside `safe_paths`, with stdin, exit status, timeout and cancel (the whole
//! process tree goes), and a node restarted after a crash stopping what it left running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_config::{Config, TlsMode};
use outpost_tests::{STATIC_TOKEN, TestHub, eventually, start_node, with_simulated_gpu};
use serde_json::Value;

use crate::tasks::{parse, submit, task_json, wait_task_status};

fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost-test-launcher"))
}

/// A node config that runs native commands, with `safe/project` as its safe path's content.
fn native_node(hub: &TestHub, id: &str) -> (Config, PathBuf) {
    let mut config = hub.node_config(id, STATIC_TOKEN);
    let safe = hub.dir.path().join(format!("{id}-safe"));
    std::fs::create_dir_all(safe.join("project")).unwrap();
    config.node.safe_paths = vec![safe.clone()];
    config.sandbox.launcher = Some(launcher());
    (config, std::fs::canonicalize(safe).unwrap())
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !outpost_runner::tree::is_zombie(pid)
}

async fn wait_gone(pid: i32) {
    eventually(
        &format!("process {pid} gone"),
        Duration::from_secs(15),
        async || {
            if alive(pid) {
                Err(format!("{pid} still runs"))
            } else {
                Ok(())
            }
        },
    )
    .await;
}

async fn read_pid(path: &Path) -> i32 {
    eventually(
        &format!("{} written", path.display()),
        Duration::from_secs(15),
        async || {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await
}

/// `tasks submit ARGS --wait --json` for a task that ends as `status`, with the exit code the
/// CLI gives it (0 succeeded, 1 failed, 3 stopped by a limit); returns the task.
async fn submit_ending(hub: &TestHub, args: &[&str], code: u8) -> Value {
    let mut all = vec!["tasks", "submit"];
    all.extend_from_slice(args);
    all.extend(["--wait", "--json"]);
    let (got, out, err) = hub.cli(&all).await;
    assert_eq!(got, code, "tasks submit {args:?}: {out} {err}");
    parse(&out)
}

fn error_of(task: &Value) -> (String, String) {
    (
        task["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        task["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_on_a_node_that_fits_in_its_safe_paths() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let (gpu_config, safe) = native_node(&hub, "gpu-n");
    let _gpu = start_node(with_simulated_gpu(gpu_config)).await;
    // A node whose launcher does not answer runs no commands.
    let mut plain = hub.node_config("plain", STATIC_TOKEN);
    plain.sandbox.launcher = Some(PathBuf::from("/nonexistent/outpost-launch"));
    let _plain = start_node(plain).await;
    let plain_json = hub
        .wait_status("plain", "online", Duration::from_secs(15))
        .await;
    assert_eq!(
        plain_json["capabilities"]["sandbox"]["native"], false,
        "{plain_json}"
    );
    hub.wait_status("gpu-n", "online", Duration::from_secs(15))
        .await;

    // "Any node with one GPU": placed on the GPU node, with its device, its stdin and a
    // workdir inside the safe path.
    let project = safe.join("project");
    let task = submit(
        &hub,
        &[
            "--command",
            "echo in $(pwd); echo gpu=$CUDA_VISIBLE_DEVICES; cat; echo home=$HOME",
            "--input",
            "from stdin",
            "--workdir",
            project.to_str().unwrap(),
            "--gpus",
            "1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["node"], "gpu-n", "{task}");
    assert!(
        task["command"].as_str().unwrap().starts_with("echo in"),
        "{task}"
    );
    let output = task["output"].as_str().unwrap();
    assert!(
        output.contains(&format!("in {}", project.display())),
        "{output}"
    );
    assert!(output.contains("gpu=0"), "{output}");
    assert!(output.contains("from stdin"), "{output}");
    assert!(
        output.contains(&format!("home={}", project.display())),
        "{output}"
    );

    // The node's own environment stays with the node (an in-process node's environment is
    // this test process's, which holds much more than these).
    let task = submit(&hub, &["--command", "env", "--wait"]).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        task["node"], "gpu-n",
        "only the native node takes commands: {task}"
    );
    let names: Vec<&str> = task["output"]
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.split('=').next())
        .collect();
    for name in &names {
        assert!(
            [
                "PATH",
                "HOME",
                "PWD",
                "SHLVL",
                "_",
                "LANG",
                "LC_ALL",
                "LC_CTYPE",
                "TZ",
                "OUTPOST_TASK_ID"
            ]
            .contains(name),
            "{name} leaked into the command's environment: {names:?}"
        );
    }

    // A failing command says how it ended, with the end of its stderr.
    let task = submit_ending(&hub, &["--command", "echo broken >&2; exit 3"], 1).await;
    assert_eq!(task["status"], "failed", "{task}");
    let (kind, message) = error_of(&task);
    assert_eq!(kind, "tool_error", "{task}");
    assert!(
        message.contains("code 3") && message.contains("broken"),
        "{message}"
    );

    // A workdir outside the safe paths, or escaping them by a symlink, is refused on the node.
    std::os::unix::fs::symlink("/etc", safe.join("project/etc-link")).unwrap();
    for workdir in [
        "/etc".to_string(),
        safe.join("project/etc-link").display().to_string(),
    ] {
        let task = submit_ending(&hub, &["--command", "true", "--workdir", &workdir], 3).await;
        assert_eq!(task["status"], "failed", "{task}");
        let (kind, message) = error_of(&task);
        assert_eq!(kind, "policy_invalid", "{task}");
        assert!(
            message.contains("outside the node's safe_paths"),
            "{message}"
        );
    }

    // `nodes send` pins a command to the node (PRX's send action).
    let (code, out, err) = hub
        .cli(&["nodes", "send", "gpu-n", "--command", "echo sent"])
        .await;
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let (code, out, err) = hub.cli(&["nodes", "result", &id, "--wait", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["output"], "sent\n", "{out}");

    // Pinned to the node that runs no commands, a command waits and says why.
    let (code, out, err) = hub
        .cli(&["nodes", "send", "plain", "--command", "echo never"])
        .await;
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let waiting = eventually("the reason", Duration::from_secs(15), async || {
        let task = task_json(&hub, &id).await;
        match task["reason"].as_str() {
            Some(r) if r.contains("missing capabilities") && r.contains("native") => Ok(task),
            _ => Err(task.to_string()),
        }
    })
    .await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    let (code, _, err) = hub.cli(&["tasks", "cancel", &id]).await;
    assert_eq!(code, 0, "{err} {}", task_json(&hub, &id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_cancels_take_the_whole_process_tree() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let (config, safe) = native_node(&hub, "cpu-n");
    let _node = start_node(config).await;
    hub.wait_status("cpu-n", "online", Duration::from_secs(15))
        .await;

    // Past its wall time the command and what it started are stopped.
    let pid_file = safe.join("timeout.pid");
    let script = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 300' & sleep 300",
        pid_file.display()
    );
    let task = submit_ending(&hub, &["--command", &script, "--timeout", "1s"], 3).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(error_of(&task).0, "timeout", "{task}");
    wait_gone(read_pid(&pid_file).await).await;

    // A cancel stops a running command's tree too.
    let pid_file = safe.join("cancel.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    let id = submit(&hub, &["--command", &script]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_task_status(&hub, &id, "running", Duration::from_secs(15)).await;
    let pid = read_pid(&pid_file).await;
    assert!(alive(pid));
    let (code, _, err) = hub.cli(&["tasks", "cancel", &id]).await;
    assert_eq!(code, 0, "{err}");
    wait_gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_a_crash_stops_the_commands_it_left() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let (config, safe) = native_node(&hub, "crashy");
    let node = start_node(config.clone()).await;
    hub.wait_status("crashy", "online", Duration::from_secs(15))
        .await;
    let pid_file = safe.join("left.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    // One attempt only: the lost attempt is not placed again once the node is back.
    let id = submit(&hub, &["--command", &script, "--max-attempts", "1"]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_task_status(&hub, &id, "running", Duration::from_secs(15)).await;
    let pid = read_pid(&pid_file).await;

    // The node process "crashes": its session ends without stopping anything it started (an
    // in-process node's task is aborted, as a SIGKILL would end it; the supervisor survives).
    node.crash();
    assert!(alive(pid), "the command outlives its node");
    let runs: Vec<_> = std::fs::read_dir(config.data_dir().join("native"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!runs.is_empty(), "the pid file is still there");

    // Started again, the node finds the supervisor by its pid file and stops it.
    let _again = start_node(config).await;
    wait_gone(pid).await;
    let _ = hub.cli(&["tasks", "cancel", &id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_output_is_followed_live_until_it_ends() {
    use crate::agents::Events;
    use outpost_trust::auth::Role;

    let hub = TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("admin", Role::Admin);
    let (config, safe) = native_node(&hub, "live-n");
    let _node = start_node(config).await;
    hub.wait_status("live-n", "online", Duration::from_secs(15))
        .await;

    // It prints, then waits for the test before it prints again and ends.
    let gate = safe.join("project/go");
    let command = format!(
        "echo first; echo to-stderr >&2; while [ ! -e {} ]; do sleep 0.05; done; echo second",
        gate.display()
    );
    let task = submit(&hub, &["--command", &command]).await;
    let id = task["id"].as_str().unwrap().to_string();
    let mut events =
        Events::open(&format!("{}/api/tasks/{id}/events", hub.http_url()), &admin).await;
    events.until("first").await;
    events.until("to-stderr").await;
    // Live: the task has not ended yet.
    let status = task_json(&hub, &id).await["status"].clone();
    assert!(status == "placed" || status == "running", "{status}");

    // A CLI follower joins midway (the tail, then live) and returns when the task ends.
    let follow_args = ["tasks", "logs", &id, "-f"];
    let follow = hub.cli(&follow_args);
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(&gate, "").unwrap();
    };
    let ((code, followed, err), ()) = tokio::join!(follow, release);
    assert_eq!(code, 0, "{err}");
    for needle in ["first", "to-stderr", "second", "succeeded on live-n"] {
        assert!(followed.contains(needle), "{needle:?} not in: {followed}");
    }
    events.until("second").await;
    events.until("succeeded on live-n").await;
    events.read_to_end().await;

    // After the end the log is still there, and so is a task nobody followed (from the store).
    let (code, out, _) = hub.cli(&["tasks", "logs", &id, "--json"]).await;
    assert_eq!(code, 0);
    let entries: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        entries
            .iter()
            .any(|e| e["stream"] == "stderr" && e["data"] == "to-stderr\n"),
        "{out}"
    );
    let quiet = submit_ending(&hub, &["--command", "echo quietly"], 0).await;
    let (code, out, _) = hub
        .cli(&["tasks", "logs", quiet["id"].as_str().unwrap()])
        .await;
    assert_eq!(code, 0);
    assert!(
        out.contains("quietly") && out.contains("succeeded"),
        "{out}"
    );
    let (code, _, err) = hub.cli(&["tasks", "logs", "task-nope"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("not found") || err.contains("task-nope"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_programs_connect_only_to_the_tcp_ports_the_node_allows() {
    let support = outpost_runner::launcher::probe_landlock(&launcher()).await;
    if support.abi < 4 {
        eprintln!(
            "skipped: this kernel's Landlock (ABI {}) has no network rules",
            support.abi
        );
        return;
    }
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (allowed_port, other_port) = (
        allowed.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
    );
    let hub = TestHub::start(TlsMode::Tls).await;
    let (mut config, _safe) = native_node(&hub, "tcp-n");
    config.sandbox.tcp_connect = Some(vec![allowed_port]);
    let _node = start_node(config).await;
    hub.wait_status("tcp-n", "online", Duration::from_secs(15))
        .await;
    let script = format!(
        "bash -c '(exec 3<>/dev/tcp/127.0.0.1/{allowed_port}) && echo allowed-connected; \
         (exec 3<>/dev/tcp/127.0.0.1/{other_port}) 2>/dev/null && echo other-connected \
         || echo other-refused'"
    );
    let task = submit(&hub, &["--command", &script, "--node", "tcp-n", "--wait"]).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let output = task["output"].as_str().unwrap();
    assert!(output.contains("allowed-connected"), "{task}");
    assert!(output.contains("other-refused"), "{task}");
    assert!(!output.contains("other-connected"), "{task}");
}
