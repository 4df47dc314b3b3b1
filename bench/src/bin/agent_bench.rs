//! Agents end to end on loopback, each against a baseline measured in the same run:
//!
//! - `start`: REST `POST /api/agents/{id}/start` → the run's first output byte at an SSE client
//!   of `/api/agents/{id}/events`, for a native agent (`/bin/sh -c 'echo r$OUTPOST_RUN_ID'`)
//!   against a bare `tokio::process` spawn of the same shell line (to its first stdout byte);
//!   and for a WASM agent (`echo` tool): start, then its first input once it runs, → the echoed
//!   line at the SSE client.
//! - `stream`: an agent writing N bytes (`head -c N /dev/zero | tr '\0' a`) → all of them at an
//!   SSE client, against the same bytes over one bare QUIC stream (16 KiB writes).
//! - `fairness`: while 10 agents flood output as fast as they can, a quiet agent prints its
//!   clock every 50 ms; the delay from its print to the SSE client (p50, p99).
//!
//! `cargo run --release -p outpost-bench --bin agent-bench -- --rounds 50 --runs 5`

use outpost_bench::{median, percentile};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use http_body_util::BodyExt as _;
use outpost_config::{Config, GpuProbeKind};
use serde_json::{Value, json};

const TOKEN: &str = "bench-agent-static-token";

#[derive(Debug, Parser)]
struct Args {
    /// Start rounds per run and kind.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Runs (medians reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Bytes the streaming agent writes per run.
    #[arg(long, default_value_t = 64 << 20)]
    stream_bytes: u64,
    /// Seconds of the fairness run.
    #[arg(long, default_value_t = 10)]
    fairness_secs: u64,
    /// Only this part: start, stream or fairness.
    #[arg(long)]
    only: Option<String>,
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// The hub's REST API with an admin token.
struct Api {
    client: Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }

    async fn status(&self, id: &str) -> anyhow::Result<String> {
        let agent = self.call("GET", &format!("/api/agents/{id}"), None).await?;
        Ok(agent["status"].as_str().unwrap_or_default().to_string())
    }

    async fn wait_status(&self, id: &str, wanted: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status(id).await?;
            if wanted.contains(&status.as_str()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent {id} is {status}, not {wanted:?}");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    async fn create(&self, body: Value) -> anyhow::Result<String> {
        let agent = self.call("POST", "/api/agents", Some(body)).await?;
        agent["id"]
            .as_str()
            .map(str::to_string)
            .context("created agent has no id")
    }

    /// An SSE subscription to an agent's events.
    async fn events(&self, id: &str) -> anyhow::Result<Sse> {
        let request = http::Request::get(format!("{}/api/agents/{id}/events", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .body(http_body_util::Full::new(bytes::Bytes::new()))?;
        let response = self.client.request(request).await?;
        if !response.status().is_success() {
            bail!("events of {id}: {}", response.status());
        }
        Ok(Sse {
            body: response.into_body(),
            window: String::new(),
            received: 0,
            missed: 0,
        })
    }
}

/// An SSE stream read as text: a window of the latest text, the byte count, and how many
/// times the hub said this client missed entries (it fell behind the live backlog).
struct Sse {
    body: hyper::body::Incoming,
    window: String,
    received: u64,
    missed: u64,
}

impl Sse {
    /// Reads until `needle` arrives; the instant it did. What came before it is dropped (so
    /// each frame is searched once, not the whole window again).
    async fn until(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = self.window.find(needle) {
                self.window.drain(..at + needle.len());
                return Ok(Instant::now());
            }
            // Kept: enough for a needle split across frames, and the last text for errors.
            if self.window.len() > 8192 + needle.len() {
                let cut = self.window.len() - 4096 - needle.len();
                let cut = (cut..self.window.len())
                    .find(|&i| self.window.is_char_boundary(i))
                    .unwrap_or(0);
                self.window.drain(..cut);
            }
            if let Err(e) = self.next_frame(deadline).await {
                let from = self.window.len().saturating_sub(600);
                let from = (from..self.window.len())
                    .find(|&i| self.window.is_char_boundary(i))
                    .unwrap_or(0);
                bail!(
                    "waiting for {needle}: {e}; last text: {}",
                    &self.window[from..]
                );
            }
        }
    }

    async fn next_frame(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<()> {
        let frame = tokio::time::timeout_at(deadline, self.body.frame())
            .await
            .context("the event stream went quiet")?
            .context("the event stream ended")??;
        if let Some(data) = frame.data_ref() {
            self.received += data.len() as u64;
            let text = match std::str::from_utf8(data) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(data),
            };
            // The hub's note to a client that fell behind: `{"seq":0,…"N entries missed"`.
            if text.contains("entries missed") {
                self.missed += 1;
            }
            self.window.push_str(&text);
        }
        Ok(())
    }
}

async fn bare_spawn(script: &str) -> anyhow::Result<Duration> {
    use tokio::io::AsyncReadExt as _;
    let start = Instant::now();
    let mut child = tokio::process::Command::new("/bin/sh")
        .args(["-c", script])
        .env_clear()
        .env("OUTPOST_RUN_ID", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut byte = [0_u8; 1];
    stdout.read_exact(&mut byte).await?;
    let elapsed = start.elapsed();
    child.wait().await?;
    Ok(elapsed)
}

/// `bytes` over one bare QUIC uni stream in 16 KiB writes; the time until the reader has all.
async fn bare_stream(bytes: u64) -> anyhow::Result<Duration> {
    let (config, cert) = outpost_bench::bare_quic_server_config()?;
    let server = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let reader = tokio::spawn(async move {
        let connection = server.accept().await.context("no connection")?.await?;
        let mut recv = connection.accept_uni().await?;
        let mut total = 0_u64;
        let mut buf = vec![0_u8; 64 << 10];
        while let Some(n) = recv.read(&mut buf).await? {
            total += n as u64;
        }
        anyhow::Ok((total, Instant::now()))
    });
    let client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let connection = client
        .connect_with(
            outpost_bench::bare_quic_client_config(&cert)?,
            addr,
            "127.0.0.1",
        )?
        .await?;
    let chunk = vec![b'a'; 16 << 10];
    let start = Instant::now();
    let mut send = connection.open_uni().await?;
    let mut sent = 0_u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        send.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    send.finish()?;
    let (total, done) = reader.await??;
    if total != bytes {
        bail!("bare stream carried {total} of {bytes} bytes");
    }
    Ok(done.duration_since(start))
}

fn main() -> anyhow::Result<()> {
    // This binary is also the node's launcher (`[sandbox] launcher` names it below).
    if let Some(code) = outpost_runner::run_if_launcher() {
        std::process::exit(code);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(Args::parse()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Config::loopback_hub(&dir.path().join("hub"), TOKEN);
    let hub = outpost_hub::start(&config).await?;
    let safe = dir.path().join("safe");
    std::fs::create_dir_all(&safe)?;
    let mut node_config = Config::joining_node(
        "bench-node",
        &hub.grpc_url(),
        &config.cert_dir().join("ca.pem"),
        TOKEN,
        &dir.path().join("node"),
    );
    node_config.gpu.probe = GpuProbeKind::None;
    node_config.node.safe_paths = vec![safe.canonicalize()?];
    // The node's launcher: `outpost-launch` beside this binary as an installed node finds it
    // (`cargo build --release -p outpost-runner`), else this binary (see `main`).
    let exe = std::env::current_exe()?;
    let small = exe.with_file_name("outpost-launch");
    let launcher = if small.is_file() { small } else { exe };
    println!("launcher: {}", launcher.display());
    node_config.sandbox.launcher = Some(launcher);
    let node = outpost_node::Node::start(node_config).await?;
    if !node.wait_connected(Duration::from_secs(15)).await {
        bail!("node never connected");
    }
    let secret = std::fs::read_to_string(config.cert_dir().join("auth_secret.txt"))?;
    let authority = outpost_trust::auth::TokenAuthority::new(
        secret.trim().as_bytes(),
        "outpost",
        "outpost-internal",
        30,
    );
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let api = Api {
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
        base: hub.addrs.http_url(),
        token: authority.issue("bench", outpost_trust::auth::Role::Admin, now_s, 3600)?,
    };
    outpost_hub::work::tools::push(
        &hub.state,
        "echo",
        std::fs::read(outpost_guests::echo())?,
        "",
        None,
    )
    .await?;
    // Wait for the node to report capabilities (it takes agents once it has a link).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let part = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    if part("start") {
        start_latency(&api, &args).await?;
    }
    if part("stream") {
        streaming(&api, &hub.state, &args).await?;
    }
    if part("fairness") {
        fairness(&api, &args).await?;
    }
    drop(node);
    drop(hub);
    Ok(())
}

async fn start_latency(api: &Api, args: &Args) -> anyhow::Result<()> {
    let script = "echo r$OUTPOST_RUN_ID";
    let native = api
        .create(json!({"name": "starter", "node": "bench-node", "command": "/bin/sh", "args": ["-c", script]}))
        .await?;
    let wasm = api
        .create(json!({"name": "parrot", "node": "bench-node", "tool": "echo"}))
        .await?;
    println!(
        "agent start → first output byte at an SSE client: {} rounds per kind and run, {} runs (µs)",
        args.rounds, args.runs
    );
    let (mut native_p50, mut spawn_p50, mut wasm_p50, mut over) = (vec![], vec![], vec![], vec![]);
    let mut run_no = 0_u64;
    let mut wasm_run = 0_u64;
    for run in 0..=args.runs {
        let (mut n_us, mut s_us, mut w_us, mut call_us) = (vec![], vec![], vec![], vec![]);
        let mut native_events = api.events(&native).await?;
        let mut wasm_events = api.events(&wasm).await?;
        for _ in 0..args.rounds {
            s_us.push(bare_spawn(script).await?.as_micros() as u64);

            run_no += 1;
            let needle = format!("\"r{run_no}\\n\"");
            let start = Instant::now();
            api.call("POST", &format!("/api/agents/{native}/start"), None)
                .await?;
            call_us.push(start.elapsed().as_micros() as u64);
            let at = native_events
                .until(&needle, Duration::from_secs(10))
                .await?;
            n_us.push(at.duration_since(start).as_micros() as u64);
            api.wait_status(&native, &["exited"]).await?;

            wasm_run += 1;
            let line = format!("w{wasm_run}");
            let start = Instant::now();
            api.call("POST", &format!("/api/agents/{wasm}/start"), None)
                .await?;
            api.wait_status(&wasm, &["running"]).await?;
            api.call(
                "POST",
                &format!("/api/agents/{wasm}/input"),
                Some(json!({ "text": line })),
            )
            .await?;
            let at = wasm_events
                .until(&format!("\"{line}\\n\""), Duration::from_secs(10))
                .await?;
            w_us.push(at.duration_since(start).as_micros() as u64);
            api.call("POST", &format!("/api/agents/{wasm}/stop"), None)
                .await?;
            api.wait_status(&wasm, &["stopped"]).await?;
        }
        if run == 0 {
            continue; // warm-up
        }
        for v in [&mut n_us, &mut s_us, &mut w_us, &mut call_us] {
            v.sort_unstable();
        }
        let (n, s, w) = (
            percentile(&n_us, 0.5),
            percentile(&s_us, 0.5),
            percentile(&w_us, 0.5),
        );
        println!(
            "  run {run}: native p50 {n} p99 {} (the start call itself p50 {}), bare spawn p50 {s} p99 {}, native − spawn {} µs; wasm p50 {w} p99 {}",
            percentile(&n_us, 0.99),
            percentile(&call_us, 0.5),
            percentile(&s_us, 0.99),
            n as i64 - s as i64,
            percentile(&w_us, 0.99)
        );
        native_p50.push(n as f64);
        spawn_p50.push(s as f64);
        wasm_p50.push(w as f64);
        over.push(n as f64 - s as f64);
    }
    println!(
        "median of runs: native p50 {:.0} µs, bare spawn p50 {:.0} µs, native − spawn {:.0} µs (target ≤ 3000); wasm p50 {:.0} µs (target ≤ 2000)",
        median(native_p50),
        median(spawn_p50),
        median(over),
        median(wasm_p50)
    );
    Ok(())
}

async fn streaming(
    api: &Api,
    state: &std::sync::Arc<outpost_hub::state::HubState>,
    args: &Args,
) -> anyhow::Result<()> {
    let bytes = args.stream_bytes;
    let script = format!("head -c {bytes} /dev/zero | tr '\\0' a; echo; echo end-$OUTPOST_RUN_ID");
    let id = api
        .create(
            json!({"name": "streamer", "node": "bench-node", "command": "/bin/sh",
            "args": ["-c", script], "max_output_bytes": bytes + 4096}),
        )
        .await?;
    println!(
        "output streaming node → hub → SSE client: {} MiB per run, {} runs (MB/s)",
        bytes >> 20,
        args.runs
    );
    let (mut agent_rate, mut bare_rate, mut ratio) = (vec![], vec![], vec![]);
    for run in 0..=args.runs {
        let run_no = run + 1;
        let bare = bare_stream(bytes).await?;
        let mut events = api.events(&id).await?;
        // What the hub itself receives, beside what reaches the SSE client.
        let (_, live) = state.agents.logs.subscribe(&id);
        let mut live = live.context("the agent's log has ended")?;
        let end_marker = format!("end-{run_no}");
        let hub_side = tokio::spawn(async move {
            let (mut entries, mut bytes) = (0_u64, 0_u64);
            loop {
                match live.recv().await {
                    Ok(entry) => {
                        if entry.stream == "stdout" {
                            entries += 1;
                            bytes += entry.data.len() as u64;
                        }
                        if entry.data.contains(&end_marker) {
                            return (entries, bytes, Instant::now());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return (entries, bytes, Instant::now()),
                }
            }
        });
        // The tail of earlier runs arrives first: skip it.
        let before = events.received;
        let start = Instant::now();
        api.call("POST", &format!("/api/agents/{id}/start"), None)
            .await?;
        events
            .until(&format!("end-{run_no}\\n"), Duration::from_secs(120))
            .await?;
        let elapsed = start.elapsed();
        let carried = events.received - before;
        let (entries, hub_bytes, hub_done) = hub_side.await?;
        let hub_rate = hub_bytes as f64 / hub_done.duration_since(start).as_secs_f64() / 1e6;
        let missed = events.missed;
        api.wait_status(&id, &["exited"]).await?;
        if run == 0 {
            continue;
        }
        let a = carried as f64 / elapsed.as_secs_f64() / 1e6;
        let b = bytes as f64 / bare.as_secs_f64() / 1e6;
        println!(
            "  run {run}: agent → SSE {a:.0} MB/s ({} MB of events in {:.2} s{}), at the hub {hub_rate:.0} MB/s ({entries} chunks of {} B on average), bare QUIC stream {b:.0} MB/s; ratio {:.2}",
            carried / 1_000_000,
            elapsed.as_secs_f64(),
            if missed > 0 {
                ", some entries missed"
            } else {
                ""
            },
            hub_bytes / entries.max(1),
            a / b
        );
        agent_rate.push(a);
        bare_rate.push(b);
        ratio.push(a / b);
    }
    println!(
        "median of runs: agent → SSE {:.0} MB/s, bare QUIC {:.0} MB/s, ratio {:.2} (target ≥ 0.50)",
        median(agent_rate),
        median(bare_rate),
        median(ratio)
    );
    Ok(())
}

async fn fairness(api: &Api, args: &Args) -> anyhow::Result<()> {
    let mut floods = Vec::new();
    for i in 0..10 {
        let id = api
            .create(
                json!({"name": format!("flood-{i}"), "node": "bench-node", "command": "/bin/sh",
                "args": ["-c", "yes flooding-the-hub-with-lines-as-fast-as-a-pipe-takes-them"],
                "max_output_bytes": 1_u64 << 40}),
            )
            .await?;
        floods.push(id);
    }
    let quiet = api
        .create(
            json!({"name": "quiet", "node": "bench-node", "command": "/bin/sh",
            "args": ["-c", "while true; do echo t$(date +%s%N); sleep 0.05; done"]}),
        )
        .await?;
    for id in &floods {
        api.call("POST", &format!("/api/agents/{id}/start"), None)
            .await?;
    }
    api.call("POST", &format!("/api/agents/{quiet}/start"), None)
        .await?;
    let mut events = api.events(&quiet).await?;
    let mut delays_us = Vec::new();
    let end = Instant::now() + Duration::from_secs(args.fairness_secs);
    let mut seen = std::collections::HashSet::new();
    while Instant::now() < end {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        events.next_frame(deadline).await?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as i128;
        // Whole events only; the rest waits for its next frame.
        let Some(end) = events.window.rfind("\n\n") else {
            continue;
        };
        let done: String = events.window.drain(..end + 2).collect();
        for printed in timestamps(&done) {
            if seen.insert(printed) {
                delays_us.push(((now_ns - printed) / 1000).max(0) as u64);
            }
        }
    }
    for id in floods.iter().chain([&quiet]) {
        api.call("POST", &format!("/api/agents/{id}/stop"), None)
            .await?;
    }
    // The first lines printed before the stream opened arrive as the tail: leave them out.
    let mut delays = delays_us.split_off(delays_us.len().min(3));
    delays.sort_unstable();
    println!(
        "fairness: 10 agents flooding, a quiet agent's line print → SSE client over {} s: {} lines, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 ≤ 50 ms)",
        args.fairness_secs,
        delays.len(),
        percentile(&delays, 0.5) as f64 / 1000.0,
        percentile(&delays, 0.99) as f64 / 1000.0,
        delays.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    Ok(())
}

/// The clock readings (`t` and 19 digits of nanoseconds) in `text`.
fn timestamps(text: &str) -> Vec<i128> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 20 <= bytes.len() {
        if bytes[i] == b't' && bytes[i + 1..i + 20].iter().all(u8::is_ascii_digit) {
            if let Ok(n) = text[i + 1..i + 20].parse::<i128>() {
                found.push(n);
            }
            i += 20;
        } else {
            i += 1;
        }
    }
    found
}
