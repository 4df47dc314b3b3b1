//! Heartbeat ingestion: N simulated nodes join a real hub process (real join, real certificates),
//! hold real QUIC sessions and send heartbeats at a fixed rate, on the heartbeat channel (sealed
//! UDP packets, as nodes do) or as QUIC datagrams (`--transport datagram`, as nodes do where the
//! channel does not get through); the hub's CPU time is read from /proc over a steady window.
//! Also measures a real `outpost-node`'s idle RSS.
//!
//! ```text
//! cargo build --release -p outpost-hub -p outpost-node -p outpost-bench
//! target/release/heartbeat-load --nodes 1000 --window 20s
//! target/release/heartbeat-load rss
//! target/release/heartbeat-load --nodes 10000 --console-clients 200   # + the console (below)
//! ```
//!
//! With `--console-clients K` it also measures the web console under that fleet: the fleet page's
//! response time (median of `--page-requests`, against `/healthz` and the REST node list in the
//! same run), then the hub's CPU with every node's load changing each heartbeat, first with no
//! browser, then with K clients following `/ui/fleet/events` (each row of their page changes
//! every second), and what each delivered row update cost.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt as _;
use outpost_bench::{HubProcess, cpu_seconds, rss_kib};
use outpost_node::join::{JoinRequest, join};
use outpost_proto::framing;
use outpost_proto::heartbeat_channel::{ChannelKey, channel_key};
use outpost_proto::v1::{
    Capabilities, GpuSnapshot, Hardware, Heartbeat, HelloAck, HubCommand, Load, NodeHello,
    NodeReply, node_reply,
};
use outpost_trust::auth::BootstrapToken;
use outpost_trust::identity::JoinedIdentity;
use prost::Message as _;

const TOKEN: &str = "bench-static-token-0123456789";

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Heartbeats per second per node.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Time after all sessions are up before measuring.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Measuring window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Client UDP sockets the simulated nodes share.
    #[arg(long, default_value_t = 8)]
    endpoints: usize,
    /// Also measure a bare quinn datagram sink under the same load, for the ratio.
    #[arg(long)]
    baseline: bool,
    /// How the simulated nodes send heartbeats: `channel` (as nodes do) or `datagram`.
    #[arg(long, default_value = "channel")]
    transport: Transport,
    /// Also drive the hub with QUIC datagrams after the channel run, for the ratio.
    #[arg(long)]
    compare_datagram: bool,
    /// Release binaries directory.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Also measure the console with this many clients on the fleet page's live feed.
    #[arg(long, default_value_t = 0)]
    console_clients: usize,
    /// Fleet page requests timed (each of the three kinds).
    #[arg(long, default_value_t = 20)]
    page_requests: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    /// Sealed UDP packets on the session's heartbeat channel.
    Channel,
    /// QUIC datagrams on the session.
    Datagram,
}

/// One simulated node's session.
struct SimNode {
    id: String,
    connection: quinn::Connection,
    /// The session's heartbeat channel (id and key), when the hub offered one.
    channel: Option<(u64, Arc<ChannelKey>)>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: a bare quinn endpoint that accepts sessions and discards datagrams (the baseline).
    BareSink {
        /// Where to write the sink's certificate (PEM).
        #[arg(long)]
        cert_out: PathBuf,
    },
    /// Idle RSS of a real outpost-node process after it joined.
    Rss {
        /// Seconds to let it settle.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        settle: Duration,
    },
}

fn hub_config(dir: &std::path::Path) -> String {
    format!(
        "[server]\ndata_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[internal_grpc]\nlisten = \"127.0.0.1:0\"\n\
         [internal_grpc.bootstrap]\ntoken = \"{TOKEN}\"\njoins_per_second = 100000\njoins_per_second_per_source = 100000\n[fleet]\nmin_heartbeat_ttl = \"10s\"\nheartbeat_grace = \"10s\"\n\
         max_heartbeats_per_second = 1000000.0\n",
        dir.join("hub").display().to_string()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::BareSink { cert_out }) = &args.command {
        return bare_sink(cert_out).await;
    }
    let dir = tempfile::tempdir()?;
    let hub = HubProcess::start(
        &args.bin_dir.join("outpost"),
        dir.path(),
        &hub_config(dir.path()),
    )?;
    let ca_pem = std::fs::read_to_string(dir.path().join("hub/certs/ca.pem"))?;
    match args.command {
        Some(Cmd::Rss { settle }) => rss(&args, &hub, dir.path(), settle).await,
        Some(Cmd::BareSink { .. }) => Ok(()),
        None => load(&args, &hub, &ca_pem, dir.path()).await,
    }
}

async fn rss(
    args: &Args,
    hub: &HubProcess,
    dir: &std::path::Path,
    settle: Duration,
) -> anyhow::Result<()> {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nrole = \"node\"\nnode_id = \"rss-node\"\ndata_dir = {:?}\n[internal_grpc.bootstrap]\ntoken = \"{TOKEN}\"\n\
             [node]\nhub = \"{}\"\nca_file = {:?}\n[gpu]\nprobe = \"auto\"\n",
            dir.join("node").display().to_string(),
            hub.grpc_url,
            dir.join("hub/certs/ca.pem").display().to_string()
        ),
    )?;
    let mut node = std::process::Command::new(args.bin_dir.join("outpost-node"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()?;
    tokio::time::sleep(settle).await;
    let pid = node.id();
    let rss = rss_kib(pid)?;
    let cpu = cpu_seconds(pid)?;
    let hub_rss = rss_kib(hub.pid())?;
    let _ = node.kill();
    let _ = node.wait();
    println!(
        "{}",
        serde_json::json!({"node_idle_rss_mb": rss as f64 / 1024.0, "node_cpu_s_after_settle": cpu, "settle_s": settle.as_secs_f64(), "hub_rss_mb": hub_rss as f64 / 1024.0})
    );
    Ok(())
}

/// One steady-state measurement of a receiver process under the heartbeat load.
struct Measurement {
    heartbeats_per_s: f64,
    receiver_cores: f64,
    generator_cores: f64,
    failures: u64,
    receiver_rss_mb: f64,
}

/// Sends heartbeats on every connection at `args.rate` (by `transport`) and measures
/// `receiver_pid` over the window.
async fn drive(
    args: &Args,
    nodes: &[SimNode],
    transport: Transport,
    receiver_pid: u32,
    run: u64,
    vary_load: bool,
) -> anyhow::Result<Measurement> {
    let n = nodes.len().max(1);
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let sockets: Vec<Arc<tokio::net::UdpSocket>> = {
        let mut sockets = Vec::new();
        for _ in 0..args.endpoints.max(1) {
            sockets.push(Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?));
        }
        sockets
    };
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (id, connection, sent, failed) = (
            node.id.clone(),
            node.connection.clone(),
            sent.clone(),
            failed.clone(),
        );
        let channel = match transport {
            Transport::Channel => node.channel.clone(),
            Transport::Datagram => None,
        };
        let socket = sockets[i % sockets.len()].clone();
        let hub = connection.remote_address();
        let offset = period.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut ticker = tokio::time::interval(period);
            // Sequence numbers stay above any used in an earlier run on the same session.
            let mut seq = run << 32;
            loop {
                ticker.tick().await;
                seq += 1;
                let heartbeat = Heartbeat {
                    node_id: id.clone(),
                    seq,
                    sent_at_ms: 0,
                    load: Some(Load {
                        // Varied: each heartbeat changes the node's row on the console.
                        cpu_percent: if vary_load { (seq % 97) as f64 } else { 12.5 },
                        memory_used_bytes: 3 << 30,
                        memory_total_bytes: 16 << 30,
                        disk_used_bytes: 100 << 30,
                        disk_total_bytes: 500 << 30,
                        load_avg_1m: 0.7,
                        running_tasks: 1,
                    }),
                    gpus: Some(GpuSnapshot {
                        probe: "none".into(),
                        unavailable_reason: "no GPUs".into(),
                        ..Default::default()
                    }),
                    capabilities_digest: vec![0xab; 64],
                    running_tasks: Vec::new(),
                    running_agents: Vec::new(),
                };
                let ok = match &channel {
                    Some((channel_id, key)) => {
                        let packet = key.seal(*channel_id, seq, &heartbeat.encode_to_vec());
                        socket.try_send_to(&packet, hub).is_ok()
                    }
                    None => connection
                        .send_datagram(heartbeat.encode_to_vec().into())
                        .is_ok(),
                };
                if ok {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(args.warmup).await;
    let self_pid = std::process::id();
    let (rx0, gen0, sent0, t0) = (
        cpu_seconds(receiver_pid)?,
        cpu_seconds(self_pid)?,
        sent.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(args.window).await;
    let (rx1, gen1, sent1, elapsed) = (
        cpu_seconds(receiver_pid)?,
        cpu_seconds(self_pid)?,
        sent.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    for t in tasks {
        t.abort();
    }
    let secs = elapsed.as_secs_f64();
    Ok(Measurement {
        heartbeats_per_s: (sent1 - sent0) as f64 / secs,
        receiver_cores: (rx1 - rx0) / secs,
        generator_cores: (gen1 - gen0) / secs,
        failures: failed.load(Ordering::Relaxed),
        receiver_rss_mb: rss_kib(receiver_pid)? as f64 / 1024.0,
    })
}

fn per_1000(m: &Measurement) -> f64 {
    if m.heartbeats_per_s > 0.0 {
        m.receiver_cores * 100.0 * 1000.0 / m.heartbeats_per_s
    } else {
        f64::NAN
    }
}

async fn load(
    args: &Args,
    hub: &HubProcess,
    ca_pem: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let n = args.nodes;
    let endpoints: Vec<quinn::Endpoint> = (0..args.endpoints.max(1))
        .map(|_| quinn::Endpoint::client("127.0.0.1:0".parse()?).map_err(Into::into))
        .collect::<anyhow::Result<_>>()?;

    let baseline = if args.baseline {
        Some(measure_bare_sink(args, &endpoints, dir).await?)
    } else {
        None
    };

    let token = BootstrapToken::parse(TOKEN);
    let started = Instant::now();
    let joined: Vec<anyhow::Result<JoinedIdentity>> = futures::stream::iter(0..n)
        .map(|i| {
            let token = token.clone();
            let url = hub.grpc_url.clone();
            let ca = ca_pem.to_string();
            async move {
                let id = format!("sim-{i:05}");
                Ok(join(JoinRequest {
                    hub_url: &url,
                    ca_pem: &ca,
                    node_id: &id,
                    name: &id,
                    token: &token,
                    grpc_target: "",
                })
                .await?)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let identities: Vec<JoinedIdentity> = joined.into_iter().collect::<anyhow::Result<_>>()?;
    let join_s = started.elapsed().as_secs_f64();

    let quic_port = identities.first().context("no nodes")?.quic_port;
    let hub_addr: std::net::SocketAddr = format!("127.0.0.1:{quic_port}").parse()?;
    let started = Instant::now();
    let nodes: Vec<anyhow::Result<SimNode>> =
        futures::stream::iter(identities.into_iter().enumerate())
            .map(|(i, identity)| {
                let endpoint = endpoints[i % endpoints.len()].clone();
                async move { connect(&endpoint, hub_addr, &identity).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
    let nodes: Vec<SimNode> = nodes.into_iter().collect::<anyhow::Result<_>>()?;
    let connect_s = started.elapsed().as_secs_f64();
    let with_channel = nodes.iter().filter(|n| n.channel.is_some()).count();

    let outpost = drive(args, &nodes, args.transport, hub.pid(), 1, false).await?;
    let online = online_count(args, hub).await?;
    let datagram = if args.compare_datagram && args.transport == Transport::Channel {
        Some(drive(args, &nodes, Transport::Datagram, hub.pid(), 2, false).await?)
    } else {
        None
    };
    let mut report = serde_json::json!({
        "nodes": n,
        "rate_per_node_hz": args.rate,
        "join_s": join_s,
        "connect_s": connect_s,
        "window_s": args.window.as_secs_f64(),
        "heartbeats_per_s": outpost.heartbeats_per_s,
        "send_failures": outpost.failures,
        "hub_cpu_percent_of_one_core": outpost.receiver_cores * 100.0,
        "hub_cpu_percent_per_1000_hb_per_s": per_1000(&outpost),
        "generator_cpu_percent": outpost.generator_cores * 100.0,
        "hub_rss_mb": outpost.receiver_rss_mb,
        "online_at_end": online,
        "transport": format!("{:?}", args.transport).to_lowercase(),
        "sessions_with_channel": with_channel,
    });
    if let (Some(datagram), serde_json::Value::Object(map)) = (&datagram, &mut report) {
        map.insert(
            "datagram_hub_cpu_percent_of_one_core".into(),
            (datagram.receiver_cores * 100.0).into(),
        );
        map.insert(
            "datagram_generator_cpu_percent".into(),
            (datagram.generator_cores * 100.0).into(),
        );
        map.insert(
            "channel_over_datagram".into(),
            (outpost.receiver_cores / datagram.receiver_cores).into(),
        );
    }
    if let (Some(bare), serde_json::Value::Object(map)) = (&baseline, &mut report) {
        map.insert(
            "bare_quinn_cpu_percent_of_one_core".into(),
            (bare.receiver_cores * 100.0).into(),
        );
        map.insert(
            "bare_quinn_heartbeats_per_s".into(),
            bare.heartbeats_per_s.into(),
        );
        map.insert("bare_quinn_rss_mb".into(), bare.receiver_rss_mb.into());
        map.insert(
            "hub_over_bare_quinn".into(),
            (outpost.receiver_cores / bare.receiver_cores).into(),
        );
    }
    if args.console_clients > 0
        && let serde_json::Value::Object(map) = &mut report
    {
        map.insert(
            "console".into(),
            console::measure(args, hub, &nodes, |run| {
                drive(args, &nodes, args.transport, hub.pid(), run, true)
            })
            .await?,
        );
    }
    println!("{report}");
    if online != n {
        bail!("only {online} of {n} nodes online at the end: heartbeats are being lost");
    }
    Ok(())
}

/// Runs the bare sink as a child process, drives the same load at it, and measures it.
async fn measure_bare_sink(
    args: &Args,
    endpoints: &[quinn::Endpoint],
    dir: &std::path::Path,
) -> anyhow::Result<Measurement> {
    use std::io::BufRead as _;
    let cert_path = dir.join("bare-sink.pem");
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["bare-sink", "--cert-out"])
        .arg(&cert_path)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("sink stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr: std::net::SocketAddr = line
        .trim()
        .parse()
        .with_context(|| format!("sink said {line:?}"))?;
    let cert_pem = std::fs::read_to_string(&cert_path)?;
    let client = outpost_bench::bare_quic_client_config(&cert_pem)?;
    let nodes: Vec<anyhow::Result<SimNode>> = futures::stream::iter(0..args.nodes)
        .map(|i| {
            let (endpoint, client) = (endpoints[i % endpoints.len()].clone(), client.clone());
            async move {
                Ok(SimNode {
                    id: format!("sim-{i:05}"),
                    connection: endpoint.connect_with(client, addr, "127.0.0.1")?.await?,
                    channel: None,
                })
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let nodes: Vec<SimNode> = nodes.into_iter().collect::<anyhow::Result<_>>()?;
    let measurement = drive(args, &nodes, Transport::Datagram, child.id(), 1, false).await;
    for node in &nodes {
        node.connection
            .close(outpost_proto::close_code::SHUTDOWN.into(), b"baseline done");
    }
    let _ = child.kill();
    let _ = child.wait();
    measurement
}

/// The baseline receiver: quinn with the same transport settings, TLS 1.3 server auth only, and
/// nothing done with a datagram but dropping it.
async fn bare_sink(cert_out: &std::path::Path) -> anyhow::Result<()> {
    let (config, cert_pem) = outpost_bench::bare_quic_server_config()?;
    std::fs::write(cert_out, cert_pem)?;
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    println!("{}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            if let Ok(connection) = incoming.await {
                while connection.read_datagram().await.is_ok() {}
            }
        });
    }
    Ok(())
}

async fn connect(
    endpoint: &quinn::Endpoint,
    hub: std::net::SocketAddr,
    identity: &JoinedIdentity,
) -> anyhow::Result<SimNode> {
    let certs = outpost_trust::tls::certs_from_pem(&identity.certificate_pem, "cert")?;
    let key = outpost_trust::tls::key_from_pem(&identity.key_pem, "key")?;
    let config = outpost_trust::tls::quic_client_config(&identity.ca_pem, certs, key)?;
    let connection = endpoint.connect_with(config, hub, "127.0.0.1")?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = NodeHello {
        node_id: identity.node_id.clone(),
        jwt: identity.node_jwt.clone(),
        agent_version: "bench".into(),
        capabilities: Some(Capabilities {
            hardware: Some(Hardware {
                cpu_cores: 8,
                memory_total_bytes: 16 << 30,
                os: "linux".into(),
                arch: "x86_64".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    framing::write_frame(&mut send, &hello).await?;
    let _ = send.finish();
    let ack: HelloAck = framing::read_frame(&mut recv, 64 * 1024).await?;
    let channel = match ack.heartbeat_channel_id {
        0 => None,
        id => Some((id, Arc::new(channel_key(&connection, id)?))),
    };
    // Answer the hub's commands as a node would (the channel confirmation, pings).
    let commands = connection.clone();
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = commands.accept_bi().await {
            if let Ok(command) = framing::read_frame::<HubCommand>(&mut recv, 64 * 1024).await {
                let reply = NodeReply {
                    id: command.id,
                    kind: Some(node_reply::Kind::Ok(true)),
                };
                let _ = framing::write_frame(&mut send, &reply).await;
                let _ = send.finish();
            }
        }
    });
    Ok(SimNode {
        id: identity.node_id.clone(),
        connection,
        channel,
    })
}

async fn online_count(args: &Args, hub: &HubProcess) -> anyhow::Result<usize> {
    let output = tokio::process::Command::new(args.bin_dir.join("outpost"))
        .args(["nodes", "list", "--json", "--config"])
        .arg(&hub.config)
        .args(["--hub", &hub.grpc_url])
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "nodes list failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let nodes: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(nodes
        .as_array()
        .map_or(0, |a| a.iter().filter(|n| n["status"] == "online").count()))
}

/// The console under the simulated fleet.
mod console {
    use std::time::{Duration, Instant};

    use anyhow::{Context as _, bail};
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Empty, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use outpost_bench::{HubProcess, median};

    use super::{Args, Measurement, SimNode};

    type Http = Client<HttpConnector, Full<Bytes>>;

    fn client() -> Http {
        Client::builder(TokioExecutor::new()).build_http()
    }

    fn cookie_of(response: &http::Response<hyper::body::Incoming>, name: &str) -> Option<String> {
        response
            .headers()
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                v.split(';')
                    .next()
                    .and_then(|pair| pair.strip_prefix(&format!("{name}=")))
                    .map(String::from)
            })
    }

    /// Signs in with an admin token minted by the CLI; the session cookie.
    async fn sign_in(args: &Args, hub: &HubProcess) -> anyhow::Result<String> {
        let output = std::process::Command::new(args.bin_dir.join("outpost"))
            .args(["token", "api", "--role", "admin", "--config"])
            .arg(&hub.config)
            .output()?;
        if !output.status.success() {
            bail!("token api: {}", String::from_utf8_lossy(&output.stderr));
        }
        let token = String::from_utf8(output.stdout)?.trim().to_string();
        let http = client();
        let page = http
            .request(
                http::Request::get(format!("{}/ui/sign-in", hub.http_url)).body(Full::default())?,
            )
            .await?;
        let nonce = cookie_of(&page, "outpost_sign_in").context("no sign-in cookie")?;
        let form = format!("token={token}&csrf={nonce}&next=%2F");
        let signed = http
            .request(
                http::Request::post(format!("{}/ui/sign-in", hub.http_url))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("cookie", format!("outpost_sign_in={nonce}"))
                    .body(Full::new(Bytes::from(form)))?,
            )
            .await?;
        let session = cookie_of(&signed, "outpost_session")
            .with_context(|| format!("sign-in answered {}", signed.status()))?;
        Ok(format!("outpost_session={session}"))
    }

    /// Median milliseconds of `n` GETs of `url` (each read to the end).
    async fn timed_gets(
        http: &Http,
        url: &str,
        headers: &[(&str, &str)],
        n: usize,
    ) -> anyhow::Result<(f64, usize)> {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..n {
            let mut request = http::Request::get(url);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            let started = Instant::now();
            let response = http.request(request.body(Full::default())?).await?;
            if !response.status().is_success() {
                bail!("{url}: {}", response.status());
            }
            bytes = response.into_body().collect().await?.to_bytes().len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok((median(times), bytes))
    }

    pub(super) async fn measure<F, Fut>(
        args: &Args,
        hub: &HubProcess,
        nodes: &[SimNode],
        drive: F,
    ) -> anyhow::Result<serde_json::Value>
    where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Measurement>>,
    {
        let cookie = sign_in(args, hub).await?;
        let http = client();
        let n = args.page_requests.max(1);
        let base = &hub.http_url;
        let (page_ms, page_bytes) =
            timed_gets(&http, &format!("{base}/"), &[("cookie", &cookie)], n).await?;
        // Spaced past the snapshot's life: each request reads the registry afresh.
        let mut cold = Vec::new();
        for _ in 0..n.min(10) {
            tokio::time::sleep(Duration::from_millis(700)).await;
            cold.push(
                timed_gets(&http, &format!("{base}/"), &[("cookie", &cookie)], 1)
                    .await?
                    .0,
            );
        }
        let page_cold_ms = median(cold);
        let (healthz_ms, _) = timed_gets(&http, &format!("{base}/healthz"), &[], n).await?;
        let (list_ms, list_bytes) = {
            let output = std::process::Command::new(args.bin_dir.join("outpost"))
                .args(["token", "api", "--role", "viewer", "--config"])
                .arg(&hub.config)
                .output()?;
            let bearer = format!("Bearer {}", String::from_utf8(output.stdout)?.trim());
            timed_gets(
                &http,
                &format!("{base}/api/admin/agent-nodes"),
                &[("authorization", &bearer)],
                n,
            )
            .await?
        };

        // Hub CPU with every row changing each second: no browser, then K following the page.
        let quiet = drive(10).await?;
        let events = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut readers = Vec::new();
        let streaming: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        for _ in 0..args.console_clients {
            let request = http::Request::get(format!("{base}/ui/fleet/events"))
                .header("cookie", &cookie)
                .body(Empty::new())?;
            let response = streaming.request(request).await?;
            if !response.status().is_success() {
                bail!("fleet events: {}", response.status());
            }
            let events = events.clone();
            readers.push(tokio::spawn(async move {
                let mut body = response.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        let rows = data.windows(10).filter(|w| w == b"event: row").count();
                        events.fetch_add(rows as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = events.load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let busy = drive(11).await?;
        let delivered = events.load(std::sync::atomic::Ordering::Relaxed) - before;
        let elapsed = started.elapsed().as_secs_f64();
        for reader in readers {
            reader.abort();
        }
        let row_events_per_s = delivered as f64 / elapsed;
        let extra_cores = busy.receiver_cores - quiet.receiver_cores;
        Ok(serde_json::json!({
            "nodes": nodes.len(),
            "fleet_page_ms_median": page_ms,
            "fleet_page_cold_ms_median": page_cold_ms,
            "fleet_page_bytes": page_bytes,
            "healthz_ms_median": healthz_ms,
            "rest_node_list_ms_median": list_ms,
            "rest_node_list_bytes": list_bytes,
            "page_requests": n,
            "clients": args.console_clients,
            "hub_cpu_percent_no_clients": quiet.receiver_cores * 100.0,
            "hub_cpu_percent_with_clients": busy.receiver_cores * 100.0,
            "row_events_per_s_delivered": row_events_per_s,
            "hub_cpu_percent_per_client": extra_cores * 100.0 / args.console_clients as f64,
            "hub_cpu_us_per_row_event": if row_events_per_s > 0.0 { extra_cores * 1e6 / row_events_per_s } else { f64::NAN },
            "generator_cpu_percent_with_clients": busy.generator_cores * 100.0,
        }))
    }
}
