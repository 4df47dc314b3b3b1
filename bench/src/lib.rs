//! Shared pieces of Outpost's benchmarks: starting a real hub process, reading a process's CPU
//! time and memory from `/proc`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

/// A hub running as its own process (so its CPU time is its own).
#[derive(Debug)]
pub struct HubProcess {
    /// The child.
    pub child: Child,
    /// gRPC URL.
    pub grpc_url: String,
    /// The REST API's and console's base URL (`http://…`).
    pub http_url: String,
    /// Config file it runs with.
    pub config: PathBuf,
}

impl HubProcess {
    /// Starts `outpost hub` with `config_text` written into `dir`; waits for its listen line.
    pub fn start(outpost: &Path, dir: &Path, config_text: &str) -> anyhow::Result<Self> {
        let config = dir.join("hub.toml");
        std::fs::write(&config, config_text)?;
        let mut child = Command::new(outpost)
            .args(["hub", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", outpost.display()))?;
        let stdout = child.stdout.take().context("hub stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let grpc_url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .with_context(|| format!("no gRPC URL in the hub's first line: {line:?}"))?
            .to_string();
        let http_url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://") && *w != grpc_url)
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            child,
            grpc_url,
            http_url,
            config,
        })
    }

    /// The hub's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            return Ok(rest.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no VmRSS for pid {pid}")
}

/// A bare quinn baseline's server side: a fresh self-signed certificate for 127.0.0.1, TLS 1.3,
/// the session's ALPN and transport settings. Returns the config and the certificate (PEM) a
/// client must trust.
pub fn bare_quic_server_config() -> anyhow::Result<(quinn::ServerConfig, String)> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let key = outpost_trust::tls::key_from_pem(&certified.signing_key.serialize_pem(), "bare key")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(outpost_trust::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    tls.alpn_protocols = vec![outpost_trust::tls::SESSION_ALPN.to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
    ));
    config.transport_config(std::sync::Arc::new(
        outpost_trust::tls::hub_session_transport(),
    ));
    Ok((config, certified.cert.pem()))
}

/// The client side of [`bare_quic_server_config`]: trusts `cert_pem`, same ALPN and transport.
pub fn bare_quic_client_config(cert_pem: &str) -> anyhow::Result<quinn::ClientConfig> {
    let roots = outpost_trust::tls::roots_from_pem(cert_pem)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(outpost_trust::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![outpost_trust::tls::SESSION_ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    client.transport_config(std::sync::Arc::new(outpost_trust::tls::session_transport()));
    Ok(client)
}

/// The value at quantile `p` (0..=1) of `sorted` (nearest rank); 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The median of `values` (the upper one of an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The static bootstrap token [`hub_and_node`] joins with.
pub const HUB_AND_NODE_TOKEN: &str = "bench-roundtrip-static-token";

/// A hub (loopback, `[tools] preinstall` as given) and one node `rt-node` without GPUs,
/// joined and known to the scheduler.
pub async fn hub_and_node(
    dir: &std::path::Path,
    preinstall: bool,
) -> anyhow::Result<(outpost_hub::HubHandle, outpost_node::NodeHandle)> {
    let mut config = outpost_config::Config::loopback_hub(&dir.join("hub"), HUB_AND_NODE_TOKEN);
    config.tools.preinstall = preinstall;
    let hub = outpost_hub::start(&config).await?;
    let ca = config.cert_dir().join("ca.pem");
    let mut node_config = outpost_config::Config::joining_node(
        "rt-node",
        &hub.grpc_url(),
        &ca,
        HUB_AND_NODE_TOKEN,
        &dir.join("node"),
    );
    node_config.gpu.probe = outpost_config::GpuProbeKind::None;
    let node = outpost_node::Node::start(node_config).await?;
    if !node
        .wait_connected(std::time::Duration::from_secs(15))
        .await
    {
        bail!("node never connected");
    }
    tasks_ready(&hub.state).await?;
    Ok((hub, node))
}

/// Waits until the node is online in the scheduler's eyes.
pub async fn tasks_ready(state: &outpost_hub::state::HubState) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if state.tasks.scheduler().node_count() > 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    bail!("the node never reached the scheduler")
}
