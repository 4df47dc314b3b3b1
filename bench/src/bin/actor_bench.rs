//! The actor layer's mailboxes, in one run on one hub (loopback, SQLite in a temp dir):
//!
//! - `throughput`: `--senders` senders each sending `--messages` messages (spread over
//!   `--recipients` recipients) while one receiver per recipient takes its inbox in batches and
//!   acks each batch: every message durable (SQLite, WAL) at each step. Messages/s from the first
//!   send to the last ack, through the hub's mailbox API in-process (what every surface calls)
//!   and through its gRPC service (one call per send and per batch; one TLS channel per sender).
//!   The same run measures the bare store storing the same number of messages one transaction
//!   each (what sends cost without sharing commits) as the baseline.
//! - `latency`: a message from a client on node A's actor relay to a receiver long-polling on
//!   node B's relay (client → node A → hub → node B → client), against a task round trip
//!   (`SubmitTask` of `echo` + `WaitTask`) on the same hub, interleaved; p50 per run.
//!
//! `cargo run --release -p outpost-bench --bin actor-bench -- --runs 5`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use outpost_bench::{median, percentile};
use outpost_hub::actors::mailbox;
use outpost_hub::store::actors::NewMessage;
use outpost_proto::v1::actor_service_client::ActorServiceClient;
use outpost_proto::v1::task_service_client::TaskServiceClient;
use outpost_proto::v1::{
    AckRequest, InboxRequest, SendMessageRequest, SubmitTaskRequest, WaitTaskRequest,
};
use outpost_trust::auth::Role;
use outpost_trust::grpc_channel::with_bearer;

#[derive(Debug, Parser)]
struct Args {
    /// What to measure: throughput, latency or all.
    #[arg(long, default_value = "all")]
    only: String,
    /// Runs (medians reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 64)]
    senders: usize,
    /// Messages per sender.
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Recipients (one receiver each).
    #[arg(long, default_value_t = 8)]
    recipients: usize,
    /// Round trips per run for `latency`.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.only == "all" || args.only == "throughput" {
        throughput(&args).await?;
    }
    if args.only == "all" || args.only == "latency" {
        latency(&args).await?;
    }
    Ok(())
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn hub_config(dir: &std::path::Path) -> outpost_config::Config {
    let mut config = outpost_config::Config::loopback_hub(&dir.join("hub"), "bench-actor-token");
    config.actors.visibility_timeout = Duration::from_secs(60);
    config
}

/// Messages/s of `total` messages sent by `senders` and received and acked by one receiver per
/// recipient, through `surface`.
async fn throughput(args: &Args) -> anyhow::Result<()> {
    let total = args.senders * args.messages;
    let (mut in_process, mut over_grpc, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let dir = tempfile::tempdir()?;
        let hub = outpost_hub::start(&hub_config(dir.path())).await?;
        let state = hub.state.clone();

        // Baseline: the store, one transaction per message.
        let start = Instant::now();
        for n in 0..total {
            let message = NewMessage {
                sender: format!("base-{}", n % args.senders),
                recipient: format!("base-r{}", n % args.recipients),
                payload: format!(r#"{{"n":{n}}}"#),
                max_deliveries: 5,
                visibility_ms: 60_000,
                now_ms: state.now_ms(),
                ..NewMessage::default()
            };
            state
                .store()
                .insert_messages(std::slice::from_ref(&message))
                .await?;
        }
        bare.push(total as f64 / start.elapsed().as_secs_f64());

        in_process.push(in_process_run(&state, args, &format!("p{run}")).await?);
        over_grpc.push(grpc_run(&hub, args, &format!("g{run}")).await?);
        hub.shutdown().await;
        eprintln!(
            "run {run}: in-process {:.0}/s, gRPC {:.0}/s, bare store (one commit each) {:.0}/s",
            in_process[run], over_grpc[run], bare[run]
        );
    }
    let (p, g, b) = (median(in_process), median(over_grpc), median(bare));
    println!(
        "throughput ({} senders x {} messages, {} recipients, send -> inbox -> ack, SQLite): in-process {p:.0} msg/s, gRPC {g:.0} msg/s; bare store one commit per message {b:.0}/s (in-process / bare {:.1}x)",
        args.senders,
        args.messages,
        args.recipients,
        p / b
    );
    Ok(())
}

async fn in_process_run(
    state: &Arc<outpost_hub::state::HubState>,
    args: &Args,
    tag: &str,
) -> anyhow::Result<f64> {
    let total = args.senders * args.messages;
    let start = Instant::now();
    let mut receivers = tokio::task::JoinSet::new();
    for r in 0..args.recipients {
        let state = state.clone();
        let me = format!("{tag}-r{r}");
        let expected = (0..total).filter(|n| n % args.recipients == r).count();
        receivers.spawn(async move {
            let (mut got, mut takes) = (0, 0_usize);
            while got < expected {
                let taken = mailbox::inbox(
                    &state,
                    &mailbox::InboxRequest {
                        actor_id: me.clone(),
                        limit: 500,
                        wait_ms: 5_000,
                        ..Default::default()
                    },
                )
                .await?;
                if taken.is_empty() {
                    bail!("{me}: nothing for 5 s with {got} of {expected}");
                }
                let ids: Vec<i64> = taken.iter().map(|m| m.id).collect();
                mailbox::ack(&state, &me, &ids).await?;
                got += taken.len();
                takes += 1;
            }
            Ok(takes)
        });
    }
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..args.senders {
        let state = state.clone();
        let (messages, recipients, tag) = (args.messages, args.recipients, tag.to_string());
        senders.spawn(async move {
            for i in 0..messages {
                let n = s * messages + i;
                mailbox::send(
                    &state,
                    mailbox::SendRequest {
                        sender: format!("{tag}-s{s}"),
                        to: format!("{tag}-r{}", n % recipients),
                        payload: format!(r#"{{"n":{n}}}"#),
                        idempotency_key: None,
                    },
                )
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = senders.join_next().await {
        done??;
    }
    let mut takes = 0;
    while let Some(done) = receivers.join_next().await {
        takes += done??;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    eprintln!(
        "  in-process: {takes} takes, {:.1} messages each",
        total as f64 / takes.max(1) as f64
    );
    Ok(rate)
}

async fn grpc_run(hub: &outpost_hub::HubHandle, args: &Args, tag: &str) -> anyhow::Result<f64> {
    let total = args.senders * args.messages;
    let ca = hub.ca_pem.clone();
    let admin = hub
        .state
        .credentials
        .auth()
        .issue("bench", Role::Admin, now_s(), 3600)?;
    // A few channels, shared: a client machine's worth of connections.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels
            .push(outpost_trust::grpc_channel::connect(&hub.grpc_url(), &ca, None, None).await?);
    }
    let start = Instant::now();
    let mut receivers = tokio::task::JoinSet::new();
    for r in 0..args.recipients {
        let mut client = ActorServiceClient::new(channels[r % channels.len()].clone());
        let (me, token) = (format!("{tag}-r{r}"), admin.clone());
        let expected = (0..total).filter(|n| n % args.recipients == r).count();
        receivers.spawn(async move {
            let mut got = 0;
            while got < expected {
                let taken = client
                    .inbox(with_bearer(
                        InboxRequest {
                            actor_id: me.clone(),
                            limit: 500,
                            wait_ms: 5_000,
                            ..Default::default()
                        },
                        &token,
                    ))
                    .await?
                    .into_inner()
                    .messages;
                if taken.is_empty() {
                    bail!("{me}: nothing for 5 s with {got} of {expected}");
                }
                for m in &taken {
                    client
                        .ack(with_bearer(
                            AckRequest {
                                actor_id: me.clone(),
                                message_id: m.id,
                            },
                            &token,
                        ))
                        .await?;
                }
                got += taken.len();
            }
            Ok(())
        });
    }
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..args.senders {
        let mut client = ActorServiceClient::new(channels[s % channels.len()].clone());
        let (messages, recipients, tag, token) = (
            args.messages,
            args.recipients,
            tag.to_string(),
            admin.clone(),
        );
        senders.spawn(async move {
            for i in 0..messages {
                let n = s * messages + i;
                client
                    .send_message(with_bearer(
                        SendMessageRequest {
                            actor_id: format!("{tag}-s{s}"),
                            to: format!("{tag}-r{}", n % recipients),
                            payload: format!(r#"{{"n":{n}}}"#),
                            idempotency_key: String::new(),
                        },
                        &token,
                    ))
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = senders.join_next().await {
        done??;
    }
    while let Some(done) = receivers.join_next().await {
        done??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Cross-node delivery through two nodes' relays against a task round trip, interleaved.
async fn latency(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (hub, node_a) = outpost_bench::hub_and_node(dir.path(), true).await?;
    outpost_hub::work::tools::push(
        &hub.state,
        "echo",
        std::fs::read(outpost_guests::echo())?,
        "",
        None,
    )
    .await?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &hub.ca_pem).context("the hub CA")?;
    let mut b_config = outpost_config::Config::joining_node(
        "rt-node-b",
        &hub.grpc_url(),
        &ca,
        outpost_bench::HUB_AND_NODE_TOKEN,
        &dir.path().join("node-b"),
    );
    b_config.gpu.probe = outpost_config::GpuProbeKind::None;
    let node_b = outpost_node::Node::start(b_config.clone()).await?;
    if !node_b.wait_connected(Duration::from_secs(15)).await {
        bail!("node b never connected");
    }
    let socket_a = outpost_node::actor_relay::socket_path(&dir.path().join("node"));
    let socket_b = outpost_node::actor_relay::socket_path(&b_config.data_dir());
    let auth = hub.state.credentials.auth();
    let now = now_s();
    let (token_a, token_b) = (
        auth.issue("bench-a", Role::Actor, now, 3600)?,
        auth.issue("bench-b", Role::Actor, now, 3600)?,
    );
    let admin = auth.issue("bench", Role::Admin, now, 3600)?;
    let mut on_a = ActorServiceClient::new(outpost_node::actor_relay::connect(socket_a).await?);
    let on_b = ActorServiceClient::new(outpost_node::actor_relay::connect(socket_b).await?);
    let channel =
        outpost_trust::grpc_channel::connect(&hub.grpc_url(), &hub.ca_pem, None, None).await?;
    let mut tasks = TaskServiceClient::new(channel);
    let (mut relay_p50, mut task_p50, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let (mut relayed, mut round_trips) = (Vec::new(), Vec::new());
        for i in 0..args.rounds {
            // The receiver waits first, as an agent blocked in `outpost actor inbox --wait`.
            let mut receiver = on_b.clone();
            let token = token_b.clone();
            let waiting = tokio::spawn(async move {
                receiver
                    .inbox(with_bearer(
                        InboxRequest {
                            actor_id: "bench-b".into(),
                            wait_ms: 10_000,
                            auto_ack: true,
                            ..Default::default()
                        },
                        &token,
                    ))
                    .await
                    .map(|r| (r.into_inner().messages.len(), Instant::now()))
            });
            // Let the receive reach the hub and block there.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let start = Instant::now();
            on_a.send_message(with_bearer(
                SendMessageRequest {
                    actor_id: "bench-a".into(),
                    to: "bench-b".into(),
                    payload: format!(r#"{{"i":{i}}}"#),
                    idempotency_key: String::new(),
                },
                &token_a,
            ))
            .await?;
            let (got, at) = waiting.await??;
            if got != 1 {
                bail!("the receiver got {got} messages");
            }
            relayed.push(u64::try_from(at.duration_since(start).as_micros())?);

            let start = Instant::now();
            let task = tasks
                .submit_task(with_bearer(
                    SubmitTaskRequest {
                        tool: "echo".into(),
                        input: format!("rt {i}"),
                        ..Default::default()
                    },
                    &admin,
                ))
                .await?
                .into_inner();
            let done = tasks
                .wait_task(with_bearer(
                    WaitTaskRequest {
                        id: task.id,
                        wait_ms: 10_000,
                    },
                    &admin,
                ))
                .await?
                .into_inner();
            if done.status != "succeeded" {
                bail!("echo task {}: {}", done.status, done.error_message);
            }
            round_trips.push(u64::try_from(start.elapsed().as_micros())?);
        }
        relayed.sort_unstable();
        round_trips.sort_unstable();
        let (r, t) = (percentile(&relayed, 0.5), percentile(&round_trips, 0.5));
        eprintln!(
            "run {run}: relay A -> hub -> relay B p50 {r} us (p99 {}), task round trip p50 {t} us (p99 {})",
            percentile(&relayed, 0.99),
            percentile(&round_trips, 0.99)
        );
        relay_p50.push(r as f64);
        task_p50.push(t as f64);
        ratio.push(r as f64 / t as f64);
    }
    println!(
        "cross-node delivery (node A's relay -> hub -> node B's relay, receiver waiting): p50 {:.0} us; task round trip (echo, submit + wait) p50 {:.0} us; delivery / round trip {:.2}",
        median(relay_p50),
        median(task_p50),
        median(ratio)
    );
    node_b.shutdown().await;
    node_a.shutdown().await;
    hub.shutdown().await;
    Ok(())
}
