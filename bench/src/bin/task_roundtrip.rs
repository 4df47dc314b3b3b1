//! Hub → node → hub round trip of a trivial task on loopback, against a bare QUIC echo measured in
//! the same run (same process, same transport settings, TLS 1.3).
//!
//! - `task`: `tasks::submit` of `echo` + wait until the result is stored: the whole path (store
//!   writes, dispatcher, placement, `RunTask` over the node's QUIC session, the sandbox call, the
//!   result event back, store writes).
//! - `command`: a ping command over the node's session (one bi stream each way), the transport's
//!   share of the task path.
//! - `echo`: a bare quinn echo (open a bi stream, write 64 bytes, read them back).
//! - `hub → node → hub`: the part of `task` from the hub's `task placed` event (the placement is
//!   stored; `RunTask` goes out next) to its `task result received` event, timed by a tracing
//!   layer that listens to those two events only: the transport, the node and the sandbox call,
//!   without the two durable writes.
//!
//! `cargo run --release -p outpost-bench --bin task-roundtrip -- --rounds 300 --runs 5`
//!
//! With `--first-task N` it measures something else: the first task of a tool just pushed (the
//! 2 MB `bulky`, made new for each run by a custom section so no cache knows it), on a hub that
//! installs pushed tools on its nodes and on one that does not (the node then fetches and
//! compiles the tool when the task arrives).

use outpost_bench::{median, percentile};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use outpost_hub::work::tasks::{self, SubmitSpec};

/// Times each task from the hub's `task placed` event to its `task result received` event.
#[derive(Default, Clone)]
struct DispatchMarks {
    placed: Arc<Mutex<HashMap<String, Instant>>>,
    round_trips_us: Arc<Mutex<Vec<u64>>>,
}

impl DispatchMarks {
    fn take(&self) -> Vec<u64> {
        std::mem::take(
            &mut *self
                .round_trips_us
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

#[derive(Default)]
struct EventFields {
    message: String,
    task_id: String,
}

impl tracing::field::Visit for EventFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "task_id" => self.task_id = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DispatchMarks {
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if meta.is_event() && meta.target().starts_with("outpost_hub::work::tasks") {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let now = Instant::now();
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        match fields.message.as_str() {
            "task placed" => {
                placed.insert(fields.task_id, now);
            }
            "task result received" => {
                if let Some(at) = placed.remove(&fields.task_id) {
                    self.round_trips_us
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(now.duration_since(at).as_micros() as u64);
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug, Parser)]
struct Args {
    /// Round trips per run and kind.
    #[arg(long, default_value_t = 300)]
    rounds: usize,
    /// Runs (medians reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Instead of round trips: time the first task of a newly pushed 2 MB tool, this many times
    /// with `[tools] preinstall` on and as many with it off.
    #[arg(long)]
    first_task: Option<usize>,
}

async fn echo_server() -> anyhow::Result<(quinn::Endpoint, std::net::SocketAddr, String)> {
    let (config, cert_pem) = outpost_bench::bare_quic_server_config()?;
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(bytes) = recv.read_to_end(1024).await {
                            let _ = send.write_all(&bytes).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    Ok((endpoint, addr, cert_pem))
}

async fn echo_client(
    addr: std::net::SocketAddr,
    cert_pem: &str,
) -> anyhow::Result<quinn::Connection> {
    let client = outpost_bench::bare_quic_client_config(cert_pem)?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    Ok(endpoint.connect_with(client, addr, "127.0.0.1")?.await?)
}

async fn echo_once(connection: &quinn::Connection) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(&[7u8; 64]).await?;
    send.finish()?;
    let back = recv.read_to_end(1024).await?;
    if back.len() != 64 {
        bail!("echo returned {} bytes", back.len());
    }
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(runs) = args.first_task {
        return first_task(runs).await;
    }
    let marks = DispatchMarks::default();
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(marks.clone()),
        )?;
    }
    let dir = tempfile::tempdir()?;
    let (hub, node) = outpost_bench::hub_and_node(dir.path(), true).await?;
    outpost_hub::work::tools::push(
        &hub.state,
        "echo",
        std::fs::read(outpost_guests::echo())?,
        "",
        None,
    )
    .await?;
    let (_server, addr, cert) = echo_server().await?;
    let echo = echo_client(addr, &cert).await?;
    let link = hub
        .state
        .fleet
        .links()
        .get("rt-node")
        .context("no link to the node")?;

    // What one store operation costs on this hub's database, alone (no other load).
    {
        let probe = tasks::submit(
            &hub.state,
            SubmitSpec {
                tool: "echo".into(),
                input: "store probe".into(),
                ..SubmitSpec::default()
            },
        )
        .await?;
        tasks::wait(&hub.state, &probe.task.id, Duration::from_secs(10)).await?;
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        for _ in 0..500 {
            let start = Instant::now();
            let row = hub
                .state
                .store()
                .get_task(&probe.task.id)
                .await?
                .context("probe task")?;
            reads.push(start.elapsed().as_micros() as u64);
            let start = Instant::now();
            hub.state
                .store()
                .update_task(&row, outpost_hub::store::Guard::of(&row))
                .await?;
            writes.push(start.elapsed().as_micros() as u64);
        }
        reads.sort_unstable();
        writes.sort_unstable();
        println!(
            "store alone: read p50 {} µs, compare-and-set write p50 {} µs",
            percentile(&reads, 0.5),
            percentile(&writes, 0.5)
        );
    }
    println!(
        "round trips on loopback: {} per kind and run, {} runs (µs)",
        args.rounds, args.runs
    );
    let (mut task_p50, mut cmd_p50, mut echo_p50, mut task_p99, mut ratio) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut dispatch_p50, mut dispatch_ratio) = (Vec::new(), Vec::new());
    for run in 0..=args.runs {
        marks.take();
        let mut task_us = Vec::with_capacity(args.rounds);
        let mut cmd_us = Vec::with_capacity(args.rounds);
        let mut echo_us = Vec::with_capacity(args.rounds);
        // Interleaved so the machine's noise hits all three alike.
        for i in 0..args.rounds {
            echo_us.push(echo_once(&echo).await?.as_micros() as u64);
            cmd_us.push(link.ping().await?.as_micros() as u64);
            let start = Instant::now();
            let submitted = tasks::submit(
                &hub.state,
                SubmitSpec {
                    tool: "echo".into(),
                    input: format!("round {run}/{i}"),
                    ..SubmitSpec::default()
                },
            )
            .await?;
            let done = tasks::wait(&hub.state, &submitted.task.id, Duration::from_secs(10)).await?;
            if done.status != tasks::TaskStatus::Succeeded {
                bail!("task {} ended {}: {}", done.id, done.status, done.reason);
            }
            task_us.push(start.elapsed().as_micros() as u64);
        }
        if run == 0 {
            continue; // warm-up
        }
        let mut dispatch_us = marks.take();
        if dispatch_us.len() != args.rounds {
            bail!(
                "timed {} hub -> node -> hub round trips of {} tasks",
                dispatch_us.len(),
                args.rounds
            );
        }
        for v in [&mut task_us, &mut cmd_us, &mut echo_us, &mut dispatch_us] {
            v.sort_unstable();
        }
        let (t, c, e, d) = (
            percentile(&task_us, 0.5),
            percentile(&cmd_us, 0.5),
            percentile(&echo_us, 0.5),
            percentile(&dispatch_us, 0.5),
        );
        println!(
            "  run {run}: task p50 {t} p99 {}, hub -> node -> hub p50 {d}, command p50 {c}, bare echo p50 {e}; task / echo = {:.1}, hub -> node -> hub / echo = {:.1}",
            percentile(&task_us, 0.99),
            t as f64 / e.max(1) as f64,
            d as f64 / e.max(1) as f64
        );
        dispatch_p50.push(d as f64);
        dispatch_ratio.push(d as f64 / e.max(1) as f64);
        task_p50.push(t as f64);
        task_p99.push(percentile(&task_us, 0.99) as f64);
        cmd_p50.push(c as f64);
        echo_p50.push(e as f64);
        ratio.push(t as f64 / e.max(1) as f64);
    }
    println!(
        "median: task {:.0} µs (p99 {:.0}), hub -> node -> hub {:.0} µs, command {:.0} µs, bare echo {:.0} µs; task / echo {:.1}, hub -> node -> hub / echo {:.1}, command / echo {:.1}",
        median(task_p50.clone()),
        median(task_p99),
        median(dispatch_p50),
        median(cmd_p50.clone()),
        median(echo_p50.clone()),
        median(ratio),
        median(dispatch_ratio),
        median(cmd_p50) / median(echo_p50).max(1.0)
    );
    node.shutdown().await;
    hub.shutdown().await;
    Ok(())
}

/// A hub and one node joined to it, online in the scheduler's eyes.
/// `bytes` with a custom section named `outpost-bench` holding `tag` appended: the same
/// component, with a new digest.
fn retagged(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"outpost-bench";
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// The first task of a newly pushed `bulky`, with and without `[tools] preinstall`.
async fn first_task(runs: usize) -> anyhow::Result<()> {
    let bulky = std::fs::read(outpost_guests::bulky())?;
    println!(
        "first task of a newly pushed {} KB tool: {runs} runs each (ms)",
        bulky.len() / 1000
    );
    for install in [false, true] {
        let dir = tempfile::tempdir()?;
        let (hub, node) = outpost_bench::hub_and_node(dir.path(), install).await?;
        let (mut installs, mut firsts, mut seconds) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let bytes = retagged(&bulky, &format!("{install}-{run}"));
            let digest = outpost_trust::auth::sha256_hex(&bytes);
            let name = format!("bulky-{run}");
            outpost_hub::work::tools::push(&hub.state, &name, bytes, "", None).await?;
            let pushed = Instant::now();
            if install {
                let deadline = pushed + Duration::from_secs(120);
                while !node.tool_ready(&digest) {
                    if Instant::now() > deadline {
                        bail!("the node never installed {name}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                installs.push(pushed.elapsed().as_secs_f64() * 1e3);
            }
            for times in [&mut firsts, &mut seconds] {
                let start = Instant::now();
                let submitted = tasks::submit(
                    &hub.state,
                    SubmitSpec {
                        tool: name.clone(),
                        input: "7".into(),
                        ..SubmitSpec::default()
                    },
                )
                .await?;
                let done =
                    tasks::wait(&hub.state, &submitted.task.id, Duration::from_secs(120)).await?;
                if done.status != tasks::TaskStatus::Succeeded {
                    bail!("task {} ended {}: {}", done.id, done.status, done.reason);
                }
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        println!(
            "  preinstall = {install}: first task {:.1} ms (runs {}), second task {:.2} ms{}",
            median(firsts.clone()),
            firsts
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            median(seconds),
            if install {
                format!(
                    "; ready on the node {:.0} ms after the push returned",
                    median(installs)
                )
            } else {
                String::new()
            }
        );
        node.shutdown().await;
        hub.shutdown().await;
    }
    Ok(())
}
