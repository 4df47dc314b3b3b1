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
        Ok(Self {
            child,
            grpc_url,
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
