//! `GET /metrics`: Prometheus text with the seed's monitoring figures (gRPC latency, session
//! failures, agent start time, node disk use) and the fleet's GPUs, behind a bearer token.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{STATIC_TOKEN, TestHub, start_node, with_simulated_gpu};
use outpost_trust::auth::Role;

async fn scrape(hub: &TestHub, token: Option<&str>) -> (u16, String, String) {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(format!("{}/metrics", hub.http_url()));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_sessions_heartbeats_tasks_grpc_and_gpus() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let viewer = hub.token("viewer", Role::Viewer);
    let _node = start_node(with_simulated_gpu(hub.node_config("m-n", STATIC_TOKEN))).await;
    hub.wait_status("m-n", "online", Duration::from_secs(15))
        .await;
    crate::tasks::push(&hub, "echo", &outpost_guests::echo()).await;
    let task = crate::tasks::send_and_wait(&hub, "m-n", "echo", "counted").await;
    assert_eq!(task["status"], "succeeded", "{task}");

    let (status, _, _) = scrape(&hub, None).await;
    assert_eq!(status, 401);
    let (status, content_type, text) = scrape(&hub, Some(&viewer)).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let at_least = |series: &str, floor: f64| {
        let value = sample(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"));
        assert!(value >= floor, "{series} = {value}");
    };
    at_least("outpost_node_sessions_total{result=\"accepted\"}", 1.0);
    at_least("outpost_heartbeats_total{result=\"accepted\"}", 1.0);
    // The node's heartbeats come on the authenticated channel.
    at_least(
        "outpost_heartbeat_channel_packets_total{result=\"accepted\"}",
        1.0,
    );
    assert_eq!(
        sample(
            &text,
            "outpost_heartbeat_channel_packets_total{result=\"unauthentic\"}"
        ),
        Some(0.0),
        "{text}"
    );
    at_least("outpost_placements_total{result=\"placed\"}", 1.0);
    at_least("outpost_sandbox_outcomes_total{kind=\"ok\"}", 1.0);
    at_least("outpost_task_duration_seconds_count", 1.0);
    at_least(
        "outpost_grpc_requests_total{service=\"outpost.v1.ToolService\",result=\"ok\"}",
        1.0,
    );
    at_least(
        "outpost_grpc_request_duration_seconds_count{service=\"outpost.v1.TaskService\"}",
        1.0,
    );
    assert!(
        text.contains("# TYPE outpost_grpc_request_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "outpost_nodes{status=\"online\"}"),
        Some(1.0),
        "{text}"
    );
    // The simulated A100 reports 1024 MiB in use of 81920.
    let gpu = text
        .lines()
        .find(|l| l.starts_with("outpost_node_gpu_memory_used_bytes{node=\"m-n\",gpu=\"0\""))
        .unwrap_or_else(|| panic!("no GPU gauge in {text}"));
    assert!(gpu.ends_with(" 1073741824"), "{gpu}");
    assert!(gpu.contains("model=\"NVIDIA A100-SXM4-80GB\""), "{gpu}");
    let disk = sample(&text, "outpost_node_disk_used_ratio{node=\"m-n\"}")
        .unwrap_or_else(|| panic!("no disk gauge in {text}"));
    assert!((0.0..=1.0).contains(&disk), "{disk}");

    // A task that fits nowhere waits, counted by why.
    crate::tasks::submit(&hub, &["--tool", "echo", "--input", "x", "--gpus", "8"]).await;
    outpost_tests::eventually(
        "the waiting task in the metrics",
        Duration::from_secs(15),
        async || {
            let (_, _, text) = scrape(&hub, Some(&viewer)).await;
            match sample(&text, "outpost_tasks_waiting{cause=\"too few GPUs\"}") {
                Some(n) if n >= 1.0 => Ok(()),
                _ => Err(text),
            }
        },
    )
    .await;

    // A join with a wrong token fails, and its call is counted with the others.
    let forged = hub.node_config("m-forged", "not-the-token-at-all-0000");
    assert!(outpost_node::Node::start(forged).await.is_err());
    let (_, _, text) = scrape(&hub, Some(&viewer)).await;
    let joins = sample(
        &text,
        "outpost_grpc_requests_total{service=\"outpost.v1.JoinService\",result=\"ok\"}",
    );
    assert!(joins.is_some_and(|n| n >= 2.0), "{text}");
}
