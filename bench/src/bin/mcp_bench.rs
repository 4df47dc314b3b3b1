//! MCP against the hub's own API, in one run on one hub and node (loopback):
//!
//! - `call`: `tools/call` of `echo` over `/mcp` (a 2025-11-25 session, Streamable HTTP) against
//!   what `outpost tasks submit --wait` does for the same task (gRPC `SubmitTask` + `WaitTask`),
//!   interleaved, p50 per run; the ratio is MCP ÷ gRPC.
//! - `list`: `tools/list` with `--tools` tools in the registry (rows copied from `echo` under new
//!   names, as a push stores them), p50 and the answer's size.
//! - `sessions`: `--sessions` MCP sessions at once, each calling `echo` `--calls` times; calls/s
//!   and the p50/p99 of one call.
//!
//! `cargo run --release -p outpost-bench --bin mcp-bench -- --rounds 200 --runs 5`
//!
//! The client is a minimal one written here on hyper (JSON-RPC over POST, answers read from the
//! SSE body), so what is timed is the server.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use outpost_bench::{median, percentile};
use outpost_proto::v1::task_service_client::TaskServiceClient;
use outpost_proto::v1::{SubmitTaskRequest, WaitTaskRequest};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Calls per run and kind.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Runs (medians reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Tools in the registry for `tools/list`.
    #[arg(long, default_value_t = 1000)]
    tools: usize,
    /// Concurrent MCP sessions.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Calls per session.
    #[arg(long, default_value_t = 20)]
    calls: usize,
}

/// One MCP session over HTTP (the initialize handshake of 2025-11-25).
struct Session {
    http: Client<HttpConnector, Full<Bytes>>,
    url: String,
    token: String,
    id: Option<String>,
    next: u64,
}

impl Session {
    async fn open(url: &str, token: &str) -> anyhow::Result<Self> {
        let mut session = Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
            url: url.into(),
            token: token.into(),
            id: None,
            next: 1,
        };
        session
            .request(
                "initialize",
                json!({
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "mcp-bench", "version": "0"}
                }),
            )
            .await?;
        session
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(session)
    }

    async fn post(&mut self, message: Value) -> anyhow::Result<(http::HeaderMap, Bytes)> {
        let mut request = http::Request::post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {}", self.token))
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(id) = &self.id {
            request = request.header("mcp-session-id", id);
        }
        let response = self
            .http
            .request(request.body(Full::new(Bytes::from(message.to_string())))?)
            .await?;
        if !response.status().is_success() {
            bail!("{} from /mcp", response.status());
        }
        let headers = response.headers().clone();
        Ok((headers, response.into_body().collect().await?.to_bytes()))
    }

    /// Sends a request; its result.
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next;
        self.next += 1;
        let (headers, body) = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        if let Some(session) = headers.get("mcp-session-id") {
            self.id = Some(session.to_str()?.to_string());
        }
        let text = std::str::from_utf8(&body)?;
        let messages: Vec<Value> = if text.trim_start().starts_with('{') {
            vec![serde_json::from_str(text)?]
        } else {
            text.lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter_map(|data| serde_json::from_str(data.trim()).ok())
                .collect()
        };
        let answer = messages
            .into_iter()
            .find(|m| m["id"] == id)
            .with_context(|| format!("no answer to {method} in {text}"))?;
        if let Some(error) = answer.get("error") {
            bail!("{method}: {error}");
        }
        Ok(answer["result"].clone())
    }

    async fn call_echo(&mut self, input: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let result = self
            .request(
                "tools/call",
                json!({"name": "echo", "arguments": {"input": input}}),
            )
            .await?;
        let elapsed = start.elapsed();
        if result["isError"] == true || result["content"][0]["text"] != input {
            bail!("echo answered {result}");
        }
        Ok(elapsed)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let (hub, _node) = outpost_bench::hub_and_node(dir.path(), true).await?;
    let state = hub.state.clone();
    outpost_hub::work::tools::push(
        &state,
        "echo",
        std::fs::read(outpost_guests::echo())?,
        "",
        None,
    )
    .await?;
    let token = state.credentials.auth().issue(
        "bench",
        outpost_trust::auth::Role::Admin,
        state.now_ms() / 1000,
        3600,
    )?;
    let url = format!("{}/mcp", hub.addrs.http_url());
    let ca = std::fs::read_to_string(dir.path().join("hub").join("certs").join("ca.pem"))?;
    let channel = outpost_trust::grpc_channel::connect(&hub.grpc_url(), &ca, None, None).await?;
    let mut grpc = TaskServiceClient::new(channel);
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut session = Session::open(&url, &token).await?;

    println!(
        "tools/call echo over MCP against gRPC submit + wait: {} calls per kind and run, {} runs (µs)",
        args.rounds, args.runs
    );
    let (mut mcp_p50, mut grpc_p50, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=args.runs {
        let (mut mcp_us, mut grpc_us) = (Vec::new(), Vec::new());
        for i in 0..args.rounds {
            mcp_us.push(micros(session.call_echo(&format!("mcp {run}/{i}")).await?));
            let start = Instant::now();
            let mut submit = tonic::Request::new(SubmitTaskRequest {
                tool: "echo".into(),
                input: format!("grpc {run}/{i}"),
                ..SubmitTaskRequest::default()
            });
            submit
                .metadata_mut()
                .insert("authorization", bearer.clone());
            let task = grpc.submit_task(submit).await?.into_inner();
            let mut wait = tonic::Request::new(WaitTaskRequest {
                id: task.id,
                wait_ms: 10_000,
            });
            wait.metadata_mut().insert("authorization", bearer.clone());
            let done = grpc.wait_task(wait).await?.into_inner();
            if done.status != "succeeded" {
                bail!("grpc task ended {}", done.status);
            }
            grpc_us.push(micros(start.elapsed()));
        }
        if run == 0 {
            continue; // warm-up
        }
        mcp_us.sort_unstable();
        grpc_us.sort_unstable();
        let (m, g) = (percentile(&mcp_us, 0.5), percentile(&grpc_us, 0.5));
        println!(
            "  run {run}: MCP p50 {m} p99 {}, gRPC p50 {g} p99 {}, ratio {:.2}",
            percentile(&mcp_us, 0.99),
            percentile(&grpc_us, 0.99),
            m as f64 / g as f64
        );
        mcp_p50.push(m as f64);
        grpc_p50.push(g as f64);
        ratios.push(m as f64 / g as f64);
    }
    println!(
        "  median: MCP p50 {:.0} µs, gRPC p50 {:.0} µs, MCP ÷ gRPC {:.2}",
        median(mcp_p50),
        median(grpc_p50),
        median(ratios)
    );

    // tools/list with many tools.
    let echo = state
        .store()
        .get_tool("echo")
        .await?
        .context("echo is stored")?;
    for i in 0..args.tools.saturating_sub(1) {
        let mut row = echo.clone();
        row.name = format!("echo-{i:04}");
        state.store().put_tool(&row).await?;
    }
    let mut list_us = Vec::new();
    let mut size = 0;
    for round in 0..(args.runs * 10 + 1) {
        let start = Instant::now();
        let result = session.request("tools/list", json!({})).await?;
        let elapsed = micros(start.elapsed());
        let listed = result["tools"].as_array().map_or(0, Vec::len);
        if listed < args.tools {
            bail!("tools/list listed {listed} of {} tools", args.tools);
        }
        size = result.to_string().len();
        if round > 0 {
            list_us.push(elapsed);
        }
    }
    list_us.sort_unstable();
    println!(
        "tools/list with {} tools (+ nodes, agents): p50 {} µs, p99 {} µs, {} KB",
        args.tools,
        percentile(&list_us, 0.5),
        percentile(&list_us, 0.99),
        size / 1000
    );

    // Many sessions at once.
    let mut sessions = Vec::with_capacity(args.sessions);
    for _ in 0..args.sessions {
        sessions.push(Session::open(&url, &token).await?);
    }
    let start = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for (n, mut session) in sessions.into_iter().enumerate() {
        let calls = args.calls;
        running.spawn(async move {
            let mut took = Vec::with_capacity(calls);
            for i in 0..calls {
                took.push(micros(session.call_echo(&format!("s{n}/{i}")).await?));
            }
            anyhow::Ok(took)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = running.join_next().await {
        all.extend(done??);
    }
    let wall = start.elapsed();
    all.sort_unstable();
    println!(
        "{} sessions × {} calls of echo at once: {:.0} calls/s, one call p50 {} µs, p99 {} µs",
        args.sessions,
        args.calls,
        all.len() as f64 / wall.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    // The same load as gRPC submit + wait from as many clients (the baseline for the above).
    let start = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for n in 0..args.sessions {
        let (mut grpc, bearer, calls) = (grpc.clone(), bearer.clone(), args.calls);
        running.spawn(async move {
            let mut took = Vec::with_capacity(calls);
            for i in 0..calls {
                let one = Instant::now();
                let mut submit = tonic::Request::new(SubmitTaskRequest {
                    tool: "echo".into(),
                    input: format!("g{n}/{i}"),
                    ..SubmitTaskRequest::default()
                });
                submit
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                let task = grpc.submit_task(submit).await?.into_inner();
                let mut wait = tonic::Request::new(WaitTaskRequest {
                    id: task.id,
                    wait_ms: 60_000,
                });
                wait.metadata_mut().insert("authorization", bearer.clone());
                grpc.wait_task(wait).await?;
                took.push(micros(one.elapsed()));
            }
            anyhow::Ok(took)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = running.join_next().await {
        all.extend(done??);
    }
    let wall = start.elapsed();
    all.sort_unstable();
    println!(
        "{} gRPC clients × {} submit + wait of echo at once: {:.0} tasks/s, one p50 {} µs, p99 {} µs",
        args.sessions,
        args.calls,
        all.len() as f64 / wall.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    Ok(())
}
