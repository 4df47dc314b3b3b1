//! A hub and two nodes: join with a one-shot and the static token, see them online with
//! capabilities and a simulated GPU, lose one to the TTL, bring it back with the same identity,
//! restart the hub and watch both return without a new token.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{STATIC_TOKEN, TestHub, start_node, with_simulated_gpu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_lifecycle_over_real_transports() {
    let mut hub = TestHub::start(TlsMode::Tls).await;
    let token = hub.one_shot_token().await;
    let mut cpu_config = hub.node_config("cpu-1", &token);
    let launcher = std::path::PathBuf::from(env!("CARGO_BIN_EXE_outpost-test-launcher"));
    cpu_config.sandbox.launcher = Some(launcher.clone());
    let gpu_config = with_simulated_gpu(hub.node_config("gpu-1", STATIC_TOKEN));
    let cpu = start_node(cpu_config.clone()).await;
    let gpu = start_node(gpu_config).await;
    assert!(cpu.joined_now && gpu.joined_now);

    // Both online, with capabilities and the simulated GPU, as `nodes list --json` shows them.
    let cpu_json = hub
        .wait_status("cpu-1", "online", Duration::from_secs(10))
        .await;
    let gpu_json = hub
        .wait_status("gpu-1", "online", Duration::from_secs(10))
        .await;
    assert_eq!(cpu_json["joined"], true);
    assert!(
        cpu_json["capabilities"]["hardware"]["cpu_cores"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(cpu_json["gpus"].as_array().unwrap().len(), 0);
    assert_eq!(
        cpu_json["capabilities"]["sandbox"]["wasm"], true,
        "nodes advertise the wasm sandbox: {cpu_json}"
    );
    // And native programs, with the Landlock their launcher found in this kernel.
    let landlock = outpost_runner::launcher::probe_landlock(&launcher).await;
    let sandbox = &cpu_json["capabilities"]["sandbox"];
    assert_eq!(sandbox["native"], true, "{sandbox}");
    assert_eq!(
        sandbox["landlock_enforcement"],
        landlock.enforcement.as_str(),
        "{sandbox}"
    );
    assert_eq!(sandbox["landlock_abi"], landlock.abi, "{sandbox}");
    assert!(
        !cpu_json["capabilities"]["gpus"]["unavailable_reason"]
            .as_str()
            .unwrap()
            .is_empty(),
        "a node without GPUs says why: {cpu_json}"
    );
    let gpus = gpu_json["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 1, "{gpu_json}");
    assert_eq!(gpus[0]["memory_total_mb"], 81920);
    assert_eq!(gpus[0]["compute_capability"], "8.0");
    assert!(
        gpu_json["capabilities"]["hardware"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "gpu")
    );

    // Heartbeats carry load.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let nodes = hub.nodes_json().await;
        if nodes
            .iter()
            .all(|n| n["load"]["memory_total_bytes"].as_u64().unwrap_or(0) > 0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no load in heartbeats: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Health pings the node over its QUIC session.
    let (code, out, err) = hub.cli(&["nodes", "health", "cpu-1", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let health: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(health["reachable"], true, "{health}");
    assert!(health["ping_rtt_us"].as_u64().unwrap() > 0);

    // Stop one node: offline after TTL + grace, the other stays online.
    let joined_at = cpu_json["joined_at"].clone();
    cpu.shutdown().await;
    let offline = hub
        .wait_status("cpu-1", "offline", Duration::from_secs(10))
        .await;
    assert!(
        offline["status_reason"]
            .as_str()
            .unwrap()
            .contains("no heartbeat"),
        "{offline}"
    );
    let (code, _, err) = hub.cli(&["nodes", "health", "cpu-1"]).await;
    assert_eq!(code, 1, "health of an offline node fails");
    assert!(err.contains("not reachable"), "{err}");
    hub.wait_status("gpu-1", "online", Duration::from_secs(10))
        .await;

    // Restart it: same identity (the one-shot token is spent, so a new join would fail), no duplicate.
    let cpu = start_node(cpu_config.clone()).await;
    assert!(!cpu.joined_now, "the stored identity is reused");
    let back = hub
        .wait_status("cpu-1", "online", Duration::from_secs(10))
        .await;
    assert_eq!(back["joined_at"], joined_at);
    assert_eq!(hub.nodes_json().await.len(), 2);

    // Restart the hub: both nodes reconnect by themselves, the registry survives.
    let sessions_before = gpu.stats.sessions.load(std::sync::atomic::Ordering::SeqCst);
    hub.restart().await;
    hub.wait_status("cpu-1", "online", Duration::from_secs(20))
        .await;
    let gpu_back = hub
        .wait_status("gpu-1", "online", Duration::from_secs(20))
        .await;
    // The hub shows the node online at its hello, a moment before the node reads the ack and
    // counts the session.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while gpu.stats.sessions.load(std::sync::atomic::Ordering::SeqCst) <= sessions_before
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gpu.stats.sessions.load(std::sync::atomic::Ordering::SeqCst) > sessions_before);
    assert_eq!(gpu_back["gpus"][0]["memory_total_mb"], 81920);
    let nodes = hub.nodes_json().await;
    assert_eq!(nodes.len(), 2);
    assert_eq!(
        nodes.iter().find(|n| n["id"] == "cpu-1").unwrap()["joined_at"],
        joined_at
    );

    // Draining shows in the status and survives in the store.
    let (code, _, err) = hub.cli(&["nodes", "drain", "gpu-1"]).await;
    assert_eq!(code, 0, "{err}");
    hub.wait_status("gpu-1", "draining", Duration::from_secs(10))
        .await;
    let (code, _, _) = hub.cli(&["nodes", "drain", "gpu-1", "--undo"]).await;
    assert_eq!(code, 0);
    hub.wait_status("gpu-1", "online", Duration::from_secs(10))
        .await;

    cpu.shutdown().await;
    gpu.shutdown().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_node_loses_its_session_and_cannot_return_with_its_old_certificate() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let node = start_node(hub.node_config("gone-1", STATIC_TOKEN)).await;
    hub.wait_status("gone-1", "online", Duration::from_secs(10))
        .await;
    let (code, _, err) = hub.cli(&["nodes", "delete", "gone-1"]).await;
    assert_eq!(code, 0, "{err}");
    // The node keeps dialling; every session is refused because the registry no longer knows it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = node.stats.last_error.lock().clone();
        if last.contains("not in the registry") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected a refusal, last error: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hub.nodes_json().await.is_empty());
    node.shutdown().await;
}
