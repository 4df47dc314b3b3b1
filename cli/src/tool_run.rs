//! `outpost tool run`: runs a component locally under exactly the sandbox a node uses, so a
//! plugin author sees the same limits, grants and typed errors before pushing the tool.
//!
//! Exit codes: 0 the tool returned output; 1 the tool reported a failure of its own (or the file
//! could not be read); 2 usage; 3 a sandbox or policy stop (the JSON's `error.kind` says which).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use outpost_config::Config;
use outpost_sandbox::policy::parse_bytes;
use outpost_sandbox::{
    CallReport, ErrorKind, FsGrant, Fuel, Sandbox, SandboxConfig, SandboxError, ToolPolicy,
};
use serde_json::json;

/// Flags of `outpost tool run`.
#[derive(Debug, Args)]
pub struct ToolRunArgs {
    /// The component (`.wasm`, built for wasm32-wasip2).
    pub file: PathBuf,
    /// Input passed to `invoke`.
    #[arg(long, conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the input from a file (`-` for stdin).
    #[arg(long)]
    pub input_file: Option<PathBuf>,
    /// Policy file (TOML); the flags below add to it and override its limits.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Directories to grant, each `HOST_PATH[:GUEST_PATH][:ro|:rw]`.
    #[arg(
        long = "allow-fs",
        value_name = "SPEC",
        help = "Grant a directory: HOST_PATH[:GUEST_PATH][:ro|:rw] (read-only unless `:rw`)"
    )]
    pub allow_fs: Vec<String>,
    /// Pass one environment variable through.
    #[arg(long = "allow-env", value_name = "KEY")]
    pub allow_env: Vec<String>,
    /// Allow connections to HOST or HOST:PORT.
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_host: Vec<String>,
    /// Memory limit, e.g. 64MiB.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Fuel (CPU) budget, or `unlimited`.
    #[arg(long, value_parser = parse_fuel)]
    pub fuel: Option<Fuel>,
    /// Wall-time limit, e.g. 5s.
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Output limit for the returned value and for each of stdout and stderr, e.g. 1MiB.
    #[arg(long, value_parser = parse_size)]
    pub max_output: Option<u64>,
    /// Directories grants must stay inside (default: the config's `[node] safe_paths`, else the
    /// current directory).
    #[arg(long = "safe-path", value_name = "DIR")]
    pub safe_paths: Vec<PathBuf>,
    /// Print the tool's description instead of invoking it.
    #[arg(long)]
    pub describe: bool,
    /// Where compiled components are cached (default: ~/.cache/outpost/components).
    #[arg(long, conflicts_with = "no_cache")]
    pub cache_dir: Option<PathBuf>,
    /// Compile without the on-disk cache.
    #[arg(long)]
    pub no_cache: bool,
}

fn parse_size(text: &str) -> Result<u64, String> {
    parse_bytes(text)
}

fn parse_fuel(text: &str) -> Result<Fuel, String> {
    Fuel::parse(text)
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 5s, 250ms)"))
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("outpost").join("components"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| {
            PathBuf::from(home)
                .join(".cache")
                .join("outpost")
                .join("components")
        })
}

/// The policy from `--policy` with the flags applied.
fn build_policy(args: &ToolRunArgs) -> Result<ToolPolicy, SandboxError> {
    let mut policy = match &args.policy {
        Some(path) => ToolPolicy::load(path)?,
        None => ToolPolicy::default(),
    };
    for spec in &args.allow_fs {
        policy.fs.push(FsGrant::parse_cli(spec)?);
    }
    policy.env.extend(args.allow_env.iter().cloned());
    policy.allow_hosts.extend(args.allow_host.iter().cloned());
    if let Some(memory) = args.memory {
        policy.limits.memory = memory;
    }
    if let Some(fuel) = args.fuel {
        policy.limits.fuel = fuel;
    }
    if let Some(timeout) = args.timeout {
        policy.limits.timeout = timeout;
    }
    if let Some(max_output) = args.max_output {
        policy.limits.max_output = max_output;
    }
    policy.validate()?;
    Ok(policy)
}

fn safe_paths(args: &ToolRunArgs, config: Option<&PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    if !args.safe_paths.is_empty() {
        return Ok(args.safe_paths.clone());
    }
    if let Some(path) = config {
        let config = Config::load(Some(path), std::env::vars())?;
        if !config.node.safe_paths.is_empty() {
            return Ok(config.node.safe_paths);
        }
    }
    Ok(vec![
        std::env::current_dir().context("reading the current directory")?,
    ])
}

fn read_input(args: &ToolRunArgs) -> anyhow::Result<String> {
    match (&args.input, &args.input_file) {
        (Some(text), _) => Ok(text.clone()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading stdin")?;
            Ok(text)
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading input file {}", path.display())),
        (None, None) => Ok(String::new()),
    }
}

/// Exit code for a stop of `kind`.
fn exit_code(kind: ErrorKind) -> u8 {
    if kind.is_sandbox_stop() { 3 } else { 1 }
}

fn write_stop(
    json: bool,
    error: &SandboxError,
    report: Option<&CallReport>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    if json {
        let mut value =
            json!({"ok": false, "error": {"kind": error.kind, "message": error.message}});
        if let Some(report) = report {
            value["stdout"] = json!(report.stdout);
            value["stderr"] = json!(report.stderr);
            value["fuel_used"] = json!(report.fuel_used);
            value["duration_us"] = json!(report.duration.as_micros());
        }
        let _ = writeln!(out, "{value}");
    } else if let Some(report) = report {
        write_captured(report, err);
    }
    let _ = writeln!(err, "error: {}: {}", error.kind, error.message);
    exit_code(error.kind)
}

fn write_captured(report: &CallReport, err: &mut dyn Write) {
    for line in report.stdout.lines() {
        let _ = writeln!(err, "[stdout] {line}");
    }
    for line in report.stderr.lines() {
        let _ = writeln!(err, "[stderr] {line}");
    }
    for record in &report.logs {
        let level = format!("{:?}", record.level).to_lowercase();
        let _ = writeln!(err, "[log {level}] {}", record.message);
    }
    if report.logs_dropped > 0 {
        let _ = writeln!(
            err,
            "[log] {} more line(s) dropped at the output limit",
            report.logs_dropped
        );
    }
}

/// Runs `outpost tool run`; returns the exit code.
pub async fn run(
    args: ToolRunArgs,
    config: Option<&PathBuf>,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let prepared = (|| -> anyhow::Result<(Vec<u8>, String, Vec<PathBuf>)> {
        let wasm = std::fs::read(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        let input = read_input(&args)?;
        Ok((wasm, input, safe_paths(&args, config)?))
    })();
    let (wasm, input, safe) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return crate::report_failure(json, &e, out, err),
    };
    let loaded = build_policy(&args)
        .and_then(|policy| policy.resolve(&safe))
        .and_then(|policy| {
            let cache_dir = if args.no_cache {
                None
            } else {
                args.cache_dir.clone().or_else(default_cache_dir)
            };
            let sandbox = Sandbox::new(SandboxConfig {
                cache_dir,
                max_concurrent_calls: 1,
                ..SandboxConfig::default()
            })?;
            sandbox.load(&wasm, policy)
        });
    let tool = match loaded {
        Ok(tool) => tool,
        Err(error) => return write_stop(json, &error, None, out, err),
    };
    if args.describe {
        return match tool.describe().await {
            Ok(info) => {
                if json {
                    let _ = writeln!(
                        out,
                        "{}",
                        json!({"ok": true, "tool": info, "digest": tool.digest()})
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "{} {}: {}\ninput schema: {}\nsha256: {}",
                        info.name,
                        info.version,
                        info.description,
                        info.input_schema,
                        tool.digest()
                    );
                }
                0
            }
            Err(error) => write_stop(json, &error, None, out, err),
        };
    }
    let report = tool.invoke(&input).await;
    match &report.result {
        Ok(output) => {
            if json {
                let value = json!({
                    "ok": true,
                    "output": output,
                    "stdout": report.stdout,
                    "stderr": report.stderr,
                    "logs": report.logs,
                    "fuel_used": report.fuel_used,
                    "duration_us": report.duration.as_micros(),
                });
                let _ = writeln!(out, "{value}");
            } else {
                write_captured(&report, err);
                let _ = writeln!(out, "{output}");
            }
            0
        }
        Err(error) => write_stop(json, error, Some(&report), out, err),
    }
}
