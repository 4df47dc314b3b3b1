//! `outpost demo`: a hub and two nodes on loopback (one with a simulated GPU), joined with a
//! one-shot token and the static token; then sample tools pushed to the hub and three tasks: one
//! without requirements, one that needs a GPU (placed on the GPU node, which hands it its device
//! in `CUDA_VISIBLE_DEVICES`), and one that fits nowhere and waits with the reason.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use outpost_config::{Config, GpuProbeKind, SimulatedGpu};
use outpost_proto::v1::ListNodesRequest;
use outpost_proto::v1::node_registry_client::NodeRegistryClient;
use serde_json::{Value, json};

use crate::ClientContext;
use outpost_hub::api::views;
use outpost_hub::store::TaskRow;
use outpost_hub::work::tasks::{self, RequirementsSpec, SubmitSpec};

/// The demo's static bootstrap token (loopback only).
const DEMO_STATIC_TOKEN: &str = "outpost-demo-static-token";

fn hub_config(data_dir: &Path) -> Config {
    let mut config = Config::loopback_hub(&data_dir.join("hub"), DEMO_STATIC_TOKEN);
    config.fleet.min_heartbeat_ttl = Duration::from_secs(2);
    config.fleet.heartbeat_grace = Duration::from_secs(2);
    config
}

fn node_config(data_dir: &Path, hub_url: &str, ca_file: &Path, id: &str, token: &str) -> Config {
    let node_dir = data_dir.join("nodes").join(id);
    // Tools reach `work` only; the node's own state lies beside it, out of their reach.
    let mut config = Config::joining_node(id, hub_url, ca_file, token, &node_dir.join("state"));
    config.node.safe_paths = vec![node_dir.join("work")];
    config.gpu.refresh_interval = Duration::from_secs(1);
    config
}

/// Runs the demo; with `keep_running` serves until Ctrl-C.
pub async fn run(
    data_dir: Option<&Path>,
    keep_running: bool,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let temp;
    let data_dir = match data_dir {
        Some(dir) => dir.to_path_buf(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("outpost-demo-")
                .tempdir()
                .context("creating a temporary data dir")?;
            temp.path().to_path_buf()
        }
    };
    let config = hub_config(&data_dir);
    let hub = outpost_hub::hub::start(&config)
        .await
        .context("starting the demo hub")?;
    let hub_url = hub.grpc_url();
    let ca_file = config
        .cert_dir()
        .join(outpost_hub::credentials::pki::files::CA_CERT);
    if !json_out {
        writeln!(
            out,
            "hub      grpc {hub_url}  rest {}  quic {} (udp)",
            hub.addrs.http_url(),
            hub.addrs.quic
        )?;
    }

    // One node joins with a fresh one-shot token, the other with the static token.
    let one_shot = outpost_hub::credentials::join::create_token(&hub.state, 600, 1).await?;
    let mut cpu = node_config(&data_dir, &hub_url, &ca_file, "edge-cpu", &one_shot.token);
    cpu.node.name = Some("Edge CPU node".into());
    cpu.node.labels.insert("zone".into(), "edge".into());
    let mut gpu = node_config(&data_dir, &hub_url, &ca_file, "gpu-sim", DEMO_STATIC_TOKEN);
    gpu.node.name = Some("Simulated GPU node".into());
    gpu.gpu.probe = GpuProbeKind::Simulated;
    gpu.gpu.simulated = vec![SimulatedGpu {
        name: "NVIDIA A100-SXM4-80GB (simulated)".into(),
        memory_total_mb: 81920,
        memory_used_mb: 2048,
        compute_capability: "8.0".into(),
        utilization_percent: 3,
        mig: Vec::new(),
    }];
    let mut nodes = Vec::new();
    for config in [cpu, gpu] {
        let id = config.server.node_id.clone().unwrap_or_default();
        let node = outpost_node::Node::start(config)
            .await
            .with_context(|| format!("starting node {id}"))?;
        if !json_out {
            let how = if node.joined_now {
                "joined"
            } else {
                "reused its stored identity"
            };
            writeln!(out, "node     {id}: {how}")?;
        }
        nodes.push(node);
    }
    let spinner = crate::progress::Spinner::start(
        json_out,
        "waiting for the nodes' sessions and first heartbeats".into(),
    );
    for node in &nodes {
        if !node.wait_connected(Duration::from_secs(15)).await {
            bail!(
                "node {} did not establish its session: {}",
                node.node_id,
                node.stats.last_error.lock()
            );
        }
    }
    // Wait for a heartbeat with load from each node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let ready = nodes.iter().all(|n| {
            hub.state
                .fleet
                .live(&n.node_id)
                .is_some_and(|l| l.load.is_some())
        });
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(spinner);

    // Ask the hub the way an operator would: the CLI's gRPC client with the generated credentials.
    let ctx = ClientContext::discover(&config, Some(&hub_url))?;
    let mut client = NodeRegistryClient::new(ctx.channel().await?);
    let fleet = client
        .list_nodes(outpost_trust::grpc_channel::with_bearer(
            ListNodesRequest {},
            &ctx.jwt,
        ))
        .await
        .map_err(|s| anyhow::anyhow!("listing nodes: {}", s.message()))?
        .into_inner()
        .nodes;
    if !json_out {
        writeln!(out)?;
        crate::print_node_table(&fleet, out)?;
        writeln!(out)?;
    }
    let tasks = run_sample_tasks(&hub.state, json_out, out).await?;
    // With --keep-running the console stays up: an admin token to sign in with, for the
    // demo's lifetime (12 h at most).
    let console_url = format!("{}/", hub.addrs.http_url());
    let console_token = if keep_running {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        Some(hub.state.credentials.auth().issue(
            "demo",
            outpost_trust::auth::Role::Admin,
            now_s,
            12 * 3600,
        )?)
    } else {
        None
    };
    if json_out {
        let value = json!({
            "hub": {"grpc": hub_url, "http": hub.addrs.http_url(), "quic": hub.addrs.quic.to_string()},
            "console": {"url": console_url, "token": console_token},
            "nodes": fleet.iter().map(views::node_json).collect::<Vec<Value>>(),
            "tasks": tasks.iter().map(|t| views::task_json(&views::task_view(t))).collect::<Vec<Value>>(),
        });
        writeln!(out, "{value}")?;
    }
    if keep_running {
        if !json_out {
            writeln!(
                out,
                "\nconsole  {console_url}\n         sign in with this admin token (valid 12 h):\n         {}",
                console_token.as_deref().unwrap_or_default()
            )?;
            writeln!(
                out,
                "\nserving until Ctrl-C; data in {}",
                data_dir.display()
            )?;
        }
        out.flush()?;
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    for node in nodes {
        node.shutdown().await;
    }
    hub.shutdown().await;
    Ok(())
}

/// Pushes the sample tools and runs the sample tasks; returns them as they ended (or wait).
async fn run_sample_tasks(
    state: &std::sync::Arc<outpost_hub::state::HubState>,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Vec<TaskRow>> {
    for (name, bytes) in [
        ("echo", outpost_guests::ECHO_COMPONENT),
        ("gpu-job", outpost_guests::GPU_JOB_COMPONENT),
    ] {
        let tool = outpost_hub::work::tools::push(state, name, bytes.to_vec(), "", None)
            .await
            .with_context(|| format!("pushing the sample tool {name}"))?;
        if !json_out {
            writeln!(
                out,
                "tool     {name} {} pushed ({} bytes)",
                tool.version, tool.size_bytes
            )?;
        }
    }
    let gpu = RequirementsSpec {
        gpus: 1.0,
        gpu_memory_mb: 16 * 1024,
        compute_capability: "8.0".into(),
        ..RequirementsSpec::default()
    };
    let too_big = RequirementsSpec {
        gpus: 2.0,
        ..RequirementsSpec::default()
    };
    let samples = [
        ("echo", "hello from the demo", RequirementsSpec::default()),
        ("gpu-job", "matrix multiply", gpu),
        ("gpu-job", "needs two GPUs", too_big),
    ];
    let mut ids = Vec::new();
    for (tool, input, requirements) in samples {
        let submitted = tasks::submit(
            state,
            SubmitSpec {
                tool: tool.into(),
                input: input.into(),
                requirements,
                ..SubmitSpec::default()
            },
        )
        .await
        .with_context(|| format!("submitting a {tool} task"))?;
        ids.push(submitted.task.id);
    }
    let mut finished = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // The last one cannot fit: give the scheduler a moment to say why, not to finish.
        let wait = if i + 1 == ids.len() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(60)
        };
        finished.push(tasks::wait(state, id, wait).await?);
    }
    if !json_out {
        for task in &finished {
            let what = match task.status {
                tasks::TaskStatus::Succeeded => format!(
                    "{} on {}{} -> {:?}",
                    task.status,
                    task.node_id,
                    if task.devices.is_empty() {
                        String::new()
                    } else {
                        format!(" (GPU {})", task.devices)
                    },
                    task.output.clone().unwrap_or_default()
                ),
                _ => format!("{}: {}", task.status, task.reason),
            };
            writeln!(out, "task     {} {:<8} {what}", task.id, task.tool)?;
        }
    }
    Ok(finished)
}
