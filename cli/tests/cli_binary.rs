//! The `outpost` binary itself: exit codes and messages a script relies on.
// Tests and their helpers fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn outpost(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env_remove("OUTPOST_HUB")
        .env_remove("OUTPOST_TOKEN")
        .env_remove("OUTPOST_CONFIG")
        .output()
        .expect("run outpost");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = outpost(&["nodes", "frobnicate"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = outpost(&["token", "create", "--ttl", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("soon"), "{err}");
    let (code, out, _) = outpost(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains("outpost"));
}

#[test]
fn certs_init_creates_then_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    let (code, out, err) = outpost(&["certs", "init", "--dir", certs_arg, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["created"].as_array().unwrap().len(), 7);
    for f in [
        "ca.pem",
        "ca-key.pem",
        "hub.pem",
        "hub-key.pem",
        "client.pem",
        "client-key.pem",
        "auth_secret.txt",
    ] {
        assert!(certs.join(f).exists(), "{f}");
    }
    let (code, out, _) = outpost(&["certs", "init", "--dir", certs_arg]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing changed"), "{out}");
}

#[test]
fn failures_exit_1_and_name_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    // No hub CA where the config says: the message names the file.
    let config = dir.path().join("outpost.toml");
    let data_dir_config = format!(
        "[server]\ndata_dir = {:?}\n",
        dir.path().join("data").display().to_string()
    );
    std::fs::write(&config, &data_dir_config).unwrap();
    let (code, _, err) = outpost(&["nodes", "list", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ca.pem"), "{err}");
    // A config with an unknown key: the key is named.
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap();
    let (code, _, err) = outpost(&["nodes", "list", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("lisen"), "{err}");
    // Nothing listening: the connection error says where.
    outpost(&[
        "certs",
        "init",
        "--dir",
        dir.path().join("data/certs").to_str().unwrap(),
    ]);
    std::fs::write(&config, &data_dir_config).unwrap();
    let (code, out, err) = outpost(&[
        "nodes",
        "list",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--hub",
        "https://127.0.0.1:9",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], false);
}

/// `outpost tool run` with a scratch cache and safe path; returns (code, parsed JSON, stderr).
fn tool_run(wasm: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let scratch = tempfile::tempdir().unwrap();
    let mut args = vec![
        "tool".to_string(),
        "run".into(),
        wasm.display().to_string(),
        "--json".into(),
        "--cache-dir".into(),
        scratch.path().join("cache").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = outpost(&args);
    let value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?} {err}"));
    (code, value, err)
}

#[test]
fn tool_run_prints_output_fuel_and_time() {
    let (code, v, err) = tool_run(&outpost_guests::echo(), &["--input", "hello tool"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["output"], "hello tool");
    assert_eq!(v["stdout"], "");
    assert!(v["fuel_used"].as_u64().unwrap() > 0);
    assert!(v["duration_us"].as_u64().is_some());

    let (code, v, _) = tool_run(&outpost_guests::hostile(), &["--input", "print captured"]);
    assert_eq!(code, 0);
    assert_eq!(v["stdout"], "captured\n");
    assert_eq!(v["stderr"], "to stderr: captured\n");
    assert_eq!(v["logs"][0]["level"], "info");
}

#[test]
fn tool_run_grants_come_from_flags_and_policy_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a.txt"), "alpha beta gamma").unwrap();
    let safe = dir.path().display().to_string();
    let grant = format!("{}:/data", data.display());
    let (code, v, err) = tool_run(
        &outpost_guests::wordcount(),
        &[
            "--input",
            "/data/a.txt",
            "--allow-fs",
            &grant,
            "--safe-path",
            &safe,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let counts: serde_json::Value = serde_json::from_str(v["output"].as_str().unwrap()).unwrap();
    assert_eq!(counts["total_words"], 3);

    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[fs]]\nhost = {:?}\nguest = \"/data\"\n\n[limits]\nfuel = 2_000_000_000\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let policy_arg = policy.display().to_string();
    let (code, v, err) = tool_run(
        &outpost_guests::wordcount(),
        &[
            "--input",
            "/data",
            "--policy",
            &policy_arg,
            "--safe-path",
            &safe,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(v["output"].as_str().unwrap().contains("/data/a.txt"));

    // Without the grant the same read is refused: exit 3, kind permission_denied.
    let (code, v, _) = tool_run(
        &outpost_guests::wordcount(),
        &["--input", "/data/a.txt", "--safe-path", &safe],
    );
    assert_eq!(code, 3);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "permission_denied");
}

#[test]
fn tool_run_stops_exit_3_with_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let safe = dir.path().display().to_string();
    let hostile = outpost_guests::hostile();
    let cases: &[(&[&str], &str)] = &[
        (&["--input", "spin", "--fuel", "1000000"], "out_of_fuel"),
        (
            &[
                "--input",
                "spin",
                "--fuel",
                "unlimited",
                "--timeout",
                "200ms",
            ],
            "timeout",
        ),
        (
            &["--input", "memory-bomb", "--memory", "16MiB"],
            "memory_limit",
        ),
        (
            &["--input", "stdout-flood", "--max-output", "4KiB"],
            "output_limit",
        ),
        (&["--input", "panic"], "trap"),
        (&["--input", "env HOME"], "permission_denied"),
        (&["--allow-fs", "/etc:/etc"], "policy_invalid"),
    ];
    for (flags, kind) in cases {
        let mut args = vec!["--safe-path", &safe];
        args.extend_from_slice(flags);
        let (code, v, err) = tool_run(&hostile, &args);
        assert_eq!(code, 3, "{flags:?}: {v} {err}");
        assert_eq!(v["ok"], false, "{flags:?}");
        assert_eq!(v["error"]["kind"], *kind, "{flags:?}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }

    let policy = dir.path().join("bad.toml");
    std::fs::write(&policy, "[limits]\nmemory = \"lots\"\n").unwrap();
    let (code, v, _) = tool_run(&hostile, &["--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert_eq!(v["error"]["kind"], "policy_invalid");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("line 2") && message.contains("limits.memory"),
        "{message}"
    );

    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, "plain text").unwrap();
    let (code, v, _) = tool_run(&not_wasm, &[]);
    assert_eq!(code, 3);
    assert_eq!(v["error"]["kind"], "invalid_component");

    // The tool's own failure is exit 1, and a missing file is an ordinary failure.
    let (code, v, _) = tool_run(&outpost_guests::busy(), &["--input", "not a number"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["kind"], "tool_error");
    let (code, v, err) = tool_run(&dir.path().join("missing.wasm"), &[]);
    assert_eq!(code, 1);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing.wasm"),
        "{err}"
    );
}

/// The README's first command: a hub, two nodes, sample tools and tasks, in one JSON object.
#[test]
fn demo_routes_the_gpu_task_to_the_gpu_node_and_says_why_one_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = outpost(&["demo", "--json", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let demo: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes = demo["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{demo}");
    assert!(nodes.iter().all(|n| n["status"] == "online"), "{demo}");
    let tasks = demo["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3, "{demo}");
    assert_eq!(tasks[0]["status"], "succeeded", "{demo}");
    assert_eq!(tasks[0]["node"], "edge-cpu");
    assert_eq!(tasks[1]["status"], "succeeded", "{demo}");
    assert_eq!(tasks[1]["node"], "gpu-sim");
    assert_eq!(tasks[1]["requirements"]["gpus"], 1.0);
    assert!(
        tasks[1]["output"]
            .as_str()
            .unwrap()
            .contains("CUDA_VISIBLE_DEVICES=0"),
        "{demo}"
    );
    assert_eq!(tasks[2]["status"], "queued");
    assert!(
        tasks[2]["reason"]
            .as_str()
            .unwrap()
            .contains("too few GPUs"),
        "{demo}"
    );
}

/// `demo --keep-running` serves the console until Ctrl-C and prints an admin token that works.
#[test]
fn demo_keep_running_serves_the_console_with_a_token_until_interrupted() {
    use std::io::{BufRead as _, Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["demo", "--json", "--keep-running", "--data-dir"])
        .arg(dir.path())
        .env_remove("OUTPOST_HUB")
        .env_remove("OUTPOST_TOKEN")
        .env_remove("OUTPOST_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let demo: serde_json::Value = serde_json::from_str(&line).unwrap();
    let url = demo["console"]["url"].as_str().unwrap();
    let token = demo["console"]["token"].as_str().unwrap();
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let get = |path: &str, bearer: Option<&str>| -> String {
        let mut stream = std::net::TcpStream::connect(&authority).unwrap();
        let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let console = get("/", None);
    assert!(console.starts_with("HTTP/1.1 303"), "{console}");
    assert!(console.contains("location: /ui/sign-in"), "{console}");
    let nodes = get("/api/admin/agent-nodes", Some(token));
    assert!(nodes.starts_with("HTTP/1.1 200"), "{nodes}");
    assert!(
        nodes.contains("gpu-sim") && nodes.contains("edge-cpu"),
        "{nodes}"
    );
    // Ctrl-C: the demo stops its nodes and hub and exits 0.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn the_binary_is_its_own_launcher_and_reports_landlock() {
    let (code, out, err) = outpost(&["__outpost-launch", "probe"]);
    assert_eq!(code, 0, "{err}");
    let probe: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let enforcement = probe["enforcement"].as_str().unwrap();
    assert!(
        ["full", "partial", "none"].contains(&enforcement),
        "{probe}"
    );
    // ABI 5 holds everything native programs are confined by; a kernel with it enforces all.
    if probe["abi"].as_u64().unwrap() >= 5 {
        assert_eq!(enforcement, "full", "{probe}");
    }
    // A stage it does not know, or no spec, is a usage error naming the cause.
    let (code, _, err) = outpost(&["__outpost-launch", "dance"]);
    assert_eq!(code, 2);
    assert!(err.contains("dance"), "{err}");
    let (code, _, err) = outpost(&["__outpost-launch", "supervise"]);
    assert_eq!(code, 2);
    assert!(err.contains("OUTPOST_LAUNCH_SPEC"), "{err}");
}

#[test]
fn completion_scripts_load_in_their_shells_and_complete_subcommands() {
    let (code, script, err) = outpost(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    // Loaded by bash itself, the script completes `outpost ag` to `agents`.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outpost.bash");
    std::fs::write(&file, &script).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(outpost ag); COMP_CWORD=1; _outpost outpost ag outpost; echo \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    match Command::new("bash").args(["-c", &probe]).output() {
        Ok(output) => {
            let words = String::from_utf8_lossy(&output.stdout);
            assert!(
                words.split_whitespace().any(|w| w == "agents"),
                "{words} / {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Err(e) => eprintln!("skipped the bash check: {e}"),
    }
    let (code, zsh, _) = outpost(&["completions", "zsh"]);
    assert_eq!(code, 0);
    assert!(zsh.starts_with("#compdef outpost"), "{zsh}");
    let (code, fish, _) = outpost(&["completions", "fish"]);
    assert_eq!(code, 0);
    assert!(fish.contains("complete -c outpost"), "{fish}");
    let (code, _, err) = outpost(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("bash, zsh, fish"), "{err}");
}
