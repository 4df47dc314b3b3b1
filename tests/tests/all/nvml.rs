//! The NVML probe end to end, through nvml-wrapper's real FFI: a node loads a stand-in for
//! `libnvidia-ml.so` (`tests/fake-nvml/fake_nvml.c`, built here with the system C compiler, which
//! Rust already needs as its linker) that answers with NVML's signatures, struct layouts and
//! error codes from a state file the test rewrites. GPUs and MIG instances reach the hub, a task
//! lands on a MIG instance named by its uuid, and a driver that fails after working fences the
//! node until it answers again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_config::{GpuProbeKind, TlsMode};
use outpost_node::NodeHandle;
use outpost_tests::{STATIC_TOKEN, TestHub, start_node};
use serde_json::Value;

use super::tasks::{push, submit, submit_env_probe, task_json, wait_task_status};

/// Builds the stand-in library into `dir` with the C `defines` given; its state file is
/// `dir/nvml-state.txt`.
fn build_fake_nvml(dir: &Path, defines: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("fake-nvml/fake_nvml.c");
    let library = dir.join("libfake-nvml.so");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = std::process::Command::new(&compiler)
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror"])
        .args(defines.iter().map(|name| format!("-D{name}")))
        .arg("-o")
        .arg(&library)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {compiler:?}: {e}"));
    assert!(
        output.status.success(),
        "building {}: {}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    library
}

/// Starts node `name` with the NVML probe reading `library`.
async fn start_nvml_node(hub: &TestHub, name: &str, library: PathBuf) -> NodeHandle {
    let mut config = hub.node_config(name, STATIC_TOKEN);
    config.gpu.probe = GpuProbeKind::Nvml;
    config.gpu.nvml_library = Some(library);
    start_node(config).await
}

const H100_MIG: &str = "driver 550.54.15\n\
gpu GPU-1111 81559 0 9 0 0 7 NVIDIA H100 80GB HBM3\n\
gpu GPU-2222 81559 512 9 0 1 7 NVIDIA H100 80GB HBM3\n\
mig 0 MIG-aaaa 40192 0 NVIDIA H100 80GB HBM3 MIG 3g.40gb\n\
mig 3 MIG-bbbb 9984 0 NVIDIA H100 80GB HBM3 MIG 1g.10gb\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nvml_probe_reads_gpus_and_mig_instances_through_the_driver_library() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let library = build_fake_nvml(hub.dir.path(), &[]);
    let state = hub.dir.path().join("nvml-state.txt");
    std::fs::write(&state, H100_MIG).unwrap();
    push(&hub, "hostile", &outpost_guests::hostile()).await;

    let _node = start_nvml_node(&hub, "nvml-1", library).await;

    // Every field NVML gave, in the fleet view: the MIG-mode GPU, then its instances (slot 3
    // after slot 0; the empty slots in between skipped), which inherit its compute capability.
    let node = hub
        .wait_node("nvml-1", "four devices", Duration::from_secs(10), |n| {
            n["gpus"].as_array().is_some_and(|g| g.len() == 4)
        })
        .await;
    let gpus = node["gpus"].as_array().unwrap();
    let summary: Vec<(u64, &str, bool, Value)> = gpus
        .iter()
        .map(|g| {
            (
                g["index"].as_u64().unwrap(),
                g["uuid"].as_str().unwrap(),
                g["mig_enabled"].as_bool().unwrap(),
                g["mig_parent_uuid"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, "GPU-1111", false, Value::Null),
            (1, "GPU-2222", true, Value::Null),
            (1, "MIG-aaaa", false, "GPU-2222".into()),
            (1, "MIG-bbbb", false, "GPU-2222".into()),
        ],
        "{node}"
    );
    assert_eq!(gpus[0]["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(gpus[0]["memory_total_mb"], 81559);
    assert_eq!(gpus[0]["temperature_c"], 41);
    assert_eq!(gpus[0]["power_mw"], 71000);
    assert_eq!(gpus[0]["compute_capability"], "9.0");
    assert_eq!(gpus[1]["memory_free_mb"], 81047);
    assert_eq!(gpus[2]["compute_capability"], "9.0", "inherited");
    assert_eq!(gpus[2]["memory_total_mb"], 40192);
    assert_eq!(gpus[3]["name"], "NVIDIA H100 80GB HBM3 MIG 1g.10gb");
    // The table shows the MIG-mode GPU as such, not as 80 GB free to take.
    let (code, out, err) = hub.cli(&["nodes", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("NVIDIA H100 80GB HBM3 (MIG mode)")
            && out.contains("MIG 3g.40gb (40192/40192 MiB free)"),
        "{out}"
    );

    // 60 GiB fits only the whole GPU 0; 30 GiB then fits only the 3g.40gb instance.
    let whole = submit_env_probe(
        &hub,
        "CUDA_VISIBLE_DEVICES",
        &["--gpus", "1", "--gpu-memory", "60GiB"],
    )
    .await;
    assert_eq!(whole["status"], "succeeded", "{whole}");
    assert_eq!(whole["output"], "0");
    let slice = submit_env_probe(
        &hub,
        "CUDA_VISIBLE_DEVICES",
        &[
            "--gpus",
            "1",
            "--gpu-memory",
            "30GiB",
            "--compute-capability",
            "9.0",
        ],
    )
    .await;
    assert_eq!(slice["status"], "succeeded", "{slice}");
    assert_eq!(slice["output"], "MIG-aaaa", "{slice}");

    // The driver fails after working: the node is fenced for GPU work, saying why.
    std::fs::write(&state, format!("{H100_MIG}fail\n")).unwrap();
    let fenced = hub
        .wait_node("nvml-1", "fenced", Duration::from_secs(10), |n| {
            n["status"] == "fenced"
        })
        .await;
    let reason = fenced["status_reason"].as_str().unwrap();
    assert!(reason.contains("NVML failed after working"), "{fenced}");
    let waiting = submit(
        &hub,
        &[
            "--tool",
            "hostile",
            "--input",
            "env CUDA_VISIBLE_DEVICES",
            "--gpus",
            "1",
        ],
    )
    .await;
    let id = waiting["id"].as_str().unwrap().to_string();
    hub.dispatch_passes(2).await;
    let task = task_json(&hub, &id).await;
    assert_eq!(task["status"], "queued", "no GPU work while fenced: {task}");

    // The driver answers again: the node is back and the waiting task runs.
    std::fs::write(&state, H100_MIG).unwrap();
    hub.wait_node("nvml-1", "online again", Duration::from_secs(10), |n| {
        n["status"] == "online"
    })
    .await;
    let done = wait_task_status(&hub, &id, "succeeded", Duration::from_secs(10)).await;
    // Bin-packing: the smallest free device that fits, the 1g.10gb instance.
    assert_eq!(done["output"], "MIG-bbbb", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_nvml_library_is_reported_not_fenced() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let missing = hub.dir.path().join("no-such-libnvidia-ml.so");
    let _node = start_nvml_node(&hub, "nvml-none", missing).await;
    let node = hub
        .wait_node(
            "nvml-none",
            "the probe's reason",
            Duration::from_secs(10),
            |n| !n["capabilities"]["gpus"]["unavailable_reason"].is_null(),
        )
        .await;
    let reason = node["capabilities"]["gpus"]["unavailable_reason"]
        .as_str()
        .unwrap();
    assert!(
        reason.contains("NVML unavailable from") && reason.contains("no-such-libnvidia-ml.so"),
        "the reason names the library: {node}"
    );
    assert_eq!(node["status"], "online", "never worked, so not fenced");
    assert_eq!(node["gpus"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_before_r510_reads_memory_through_the_original_call() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let library = build_fake_nvml(hub.dir.path(), &["FAKE_NVML_BEFORE_R510"]);
    // Symbol names live in the library's dynamic string table (it is built without debug info).
    let image = std::fs::read(&library).unwrap();
    let names = |name: &[u8]| image.windows(name.len()).any(|w| w == name);
    assert!(
        names(b"nvmlDeviceGetMemoryInfo\0") && !names(b"nvmlDeviceGetMemoryInfo_v2"),
        "the stand-in must have the original memory call and lack the v2 one"
    );
    std::fs::write(
        hub.dir.path().join("nvml-state.txt"),
        "driver 470.256.02\ngpu GPU-7777 15109 4096 7 5 0 0 Tesla T4\n",
    )
    .unwrap();
    let _node = start_nvml_node(&hub, "nvml-470", library).await;

    let node = hub
        .wait_node("nvml-470", "the T4", Duration::from_secs(10), |n| {
            n["gpus"].as_array().is_some_and(|g| g.len() == 1)
        })
        .await;
    let gpu = &node["gpus"][0];
    assert_eq!(gpu["uuid"], "GPU-7777", "{node}");
    assert_eq!(gpu["memory_total_mb"], 15109);
    assert_eq!(gpu["memory_used_mb"], 4096);
    assert_eq!(gpu["memory_free_mb"], 11013);
    assert_eq!(gpu["compute_capability"], "7.5");
    assert_eq!(node["status"], "online", "{node}");
    assert_eq!(
        node["capabilities"]["gpus"]["unavailable_reason"], "",
        "{node}"
    );
    assert_eq!(
        node["capabilities"]["gpus"]["driver_version"], "470.256.02",
        "{node}"
    );
}
