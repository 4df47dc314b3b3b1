//! `outpost tasks …`, `outpost nodes send|result` and `outpost tool push|list|inspect`: the CLI
//! side of the task and tool services.
//!
//! A task that finished with a sandbox or policy stop (timeout, out_of_fuel, memory_limit, …)
//! makes `--wait` and `nodes result` exit with 3, a failure of any other kind with 1; either way
//! stdout holds only the task.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use outpost_config::ServerRole;
use outpost_proto::v1::task_service_client::TaskServiceClient;
use outpost_proto::v1::tool_service_client::ToolServiceClient;
use outpost_proto::v1::{
    ListTasksRequest, ListToolsRequest, PushToolRequest, SubmitTaskRequest, TaskLogsRequest,
    TaskRef, TaskRequirements, TaskView, ToolRef, WaitTaskRequest,
};
use outpost_trust::grpc_channel::with_bearer;
use serde_json::Value;
use tonic::transport::Channel;

use crate::{ClientContext, GlobalArgs, load_config, print_table, print_value, status_error};
use outpost_hub::api::views::task_json as view_json;
use outpost_hub::work::tasks::TaskStatus;

/// Error kinds that mean "stopped by a sandbox or policy limit" (exit code 3).
const STOP_KINDS: [&str; 8] = [
    "timeout",
    "out_of_fuel",
    "memory_limit",
    "permission_denied",
    "output_limit",
    "trap",
    "invalid_component",
    "policy_invalid",
];

/// A waited-for task did not succeed. The task (with its error) is already on stdout, so the
/// CLI only says why on stderr and exits with `exit_code`: 3 for a sandbox or policy stop, 1
/// otherwise.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TaskEnded {
    /// 1 or 3.
    pub exit_code: u8,
    /// What happened.
    pub message: String,
}

/// Largest answer the CLI reads from the task service (a task carries its output, up to
/// [`outpost_proto::limits::MAX_RESULT_OUTPUT`]; a list carries many).
const MAX_TASK_ANSWER: usize = 256 * 1024 * 1024;

fn task_client(channel: tonic::transport::Channel) -> TaskServiceClient<tonic::transport::Channel> {
    TaskServiceClient::new(channel).max_decoding_message_size(MAX_TASK_ANSWER)
}

/// `outpost tasks …`
#[derive(Debug, clap::Subcommand)]
pub enum TasksCommand {
    /// Submit a task; prints it (with --wait, once it has finished).
    Submit(Box<SubmitArgs>),
    /// One task.
    Get {
        /// Task id.
        id: String,
    },
    /// Recent tasks, newest first.
    List {
        /// Only this status (queued, placed, running, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only tasks older than this one (the id the previous page ended with).
        #[arg(long)]
        before: Option<String>,
    },
    /// Cancel a task that has not finished.
    Cancel {
        /// Task id.
        id: String,
    },
    /// Its output and state changes; with `-f`, live until it has finished.
    Logs {
        /// Task id.
        id: String,
        /// Follow until the task has finished.
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

/// What to run and with which input.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// A tool pushed to the hub.
    #[arg(long, conflicts_with = "command", required_unless_present = "command")]
    tool: Option<String>,
    /// A native command, run by `/bin/sh -c` on a node that runs native programs.
    #[arg(long)]
    command: Option<String>,
    /// The command's working directory on the node, inside its safe_paths (default: the first).
    #[arg(long, requires = "command")]
    workdir: Option<String>,
    /// Input text for the tool (a command's stdin).
    #[arg(long, conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the input from a file.
    #[arg(long)]
    input_file: Option<PathBuf>,
}

impl WorkArgs {
    fn input(&self) -> anyhow::Result<String> {
        match (&self.input, &self.input_file) {
            (Some(text), _) => Ok(text.clone()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading --input-file {}", path.display())),
            (None, None) => Ok(String::new()),
        }
    }
}

/// `outpost tasks submit`
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    work: WorkArgs,
    /// Pin to this node.
    #[arg(long)]
    node: Option<String>,
    /// GPUs: a share below 1 (0.5) or whole devices (2).
    #[arg(long, default_value_t = 0.0)]
    gpus: f64,
    /// Free memory needed on each GPU: 16GiB, 512MiB, or a number of MiB.
    #[arg(long, value_parser = parse_mib)]
    gpu_memory: Option<u64>,
    /// Lowest CUDA compute capability, e.g. 8.0.
    #[arg(long)]
    compute_capability: Option<String>,
    /// A label the node must carry (k=v); repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// A capability the node must have (python3, docker, gpu, wasm…); repeatable.
    #[arg(long = "capability")]
    capabilities: Vec<String>,
    /// A retried submit with the same key returns the first task.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Placements allowed before the task fails (node losses).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Wall-time limit of each attempt (e.g. 30s); default: the tool policy's.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Wait until the task has finished.
    #[arg(long)]
    wait: bool,
    /// Longest to wait with --wait.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    wait_timeout: Duration,
}

/// `outpost nodes send`
#[derive(Debug, Args)]
pub struct NodeSendArgs {
    /// Node id.
    id: String,
    #[command(flatten)]
    work: WorkArgs,
}

/// `outpost tool push`
#[derive(Debug, Args)]
pub struct ToolPushArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// Name tasks use.
    #[arg(long)]
    name: String,
    /// The tool's policy.toml (grants and limits); default: deny everything, default limits.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The publisher's signature (`outpost tool sign`); default: FILE.sig when it exists.
    #[arg(long)]
    signature: Option<PathBuf>,
}

/// `outpost tool sign FILE --key KEY [--policy FILE] [--out FILE]`
#[derive(Debug, Args)]
pub struct ToolSignArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// The publisher's private key (`outpost keys create`).
    #[arg(long)]
    key: PathBuf,
    /// The policy.toml the tool will be pushed with (the signature covers it).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Where to write the signature; default FILE.sig.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Where a component's signature is kept by default: `FILE.sig`.
fn signature_path(component: &std::path::Path) -> PathBuf {
    let mut path = component.as_os_str().to_owned();
    path.push(".sig");
    PathBuf::from(path)
}

fn read_policy(policy: Option<&PathBuf>) -> anyhow::Result<String> {
    match policy {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the policy {}", path.display())),
        None => Ok(String::new()),
    }
}

/// `outpost tool sign`
pub(crate) fn tool_sign(
    global: &GlobalArgs,
    args: ToolSignArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let component = std::fs::read(&args.file)
        .with_context(|| format!("reading the component {}", args.file.display()))?;
    let policy_toml = read_policy(args.policy.as_ref())?;
    let key = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading the key {}", args.key.display()))?;
    let digest = outpost_trust::auth::sha256_hex(&component);
    let signature = outpost_trust::signing::sign(&key, &digest, &policy_toml)
        .with_context(|| format!("signing with {}", args.key.display()))?;
    let path = args.out.unwrap_or_else(|| signature_path(&args.file));
    std::fs::write(&path, serde_json::to_string_pretty(&signature)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    if global.json {
        print_value(
            &serde_json::json!({"signature": path, "publisher": signature.publisher, "digest": digest}),
            true,
            out,
        )?;
    } else {
        writeln!(
            out,
            "signed {} as {}: {}",
            args.file.display(),
            signature.publisher,
            path.display()
        )?;
    }
    Ok(())
}

/// `outpost keys create NAME [--dir DIR]`
/// Where `keys create` writes: `--out FILE` (and FILE with `.pub`), else DIR/NAME.key and
/// DIR/NAME.pub.
pub(crate) fn key_files(
    name: Option<&str>,
    dir: &std::path::Path,
    out: Option<std::path::PathBuf>,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    if let Some(private) = out {
        let public = private.with_extension("pub");
        anyhow::ensure!(
            public != private,
            "--out {}: the public key would overwrite it; pick a name not ending in .pub",
            private.display()
        );
        return Ok((private, public));
    }
    let name = name.unwrap_or_default();
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "key name {name:?}: use letters, digits, '-', '_' or '.'"
    );
    Ok((
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    ))
}

pub(crate) fn keys_create(
    global: &GlobalArgs,
    private: &std::path::Path,
    public_file: &std::path::Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !private.exists(),
        "{} exists already; a key is never overwritten",
        private.display()
    );
    let (secret, public) = outpost_trust::signing::generate_key()?;
    if let Some(dir) = private.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    outpost_trust::private_files::write_atomically(
        private,
        format!("{secret}\n").as_bytes(),
        0o600,
    )
    .with_context(|| format!("writing {}", private.display()))?;
    std::fs::write(public_file, format!("{public}\n"))
        .with_context(|| format!("writing {}", public_file.display()))?;
    if global.json {
        print_value(
            &serde_json::json!({"publisher": public, "key": private, "public": public_file}),
            true,
            out,
        )?;
    } else {
        writeln!(out, "{public}")?;
    }
    Ok(())
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 30s, 5m)"))
}

pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("label {text:?} must be key=value"))?;
    if k.is_empty() {
        return Err(format!("label {text:?} has an empty key"));
    }
    Ok((k.into(), v.into()))
}

/// `16GiB` → 16384; a bare number is MiB.
pub(crate) fn parse_mib(text: &str) -> Result<u64, String> {
    if let Ok(mib) = text.trim().parse::<u64>() {
        return Ok(mib);
    }
    let bytes = outpost_sandbox::policy::parse_bytes(text)?;
    Ok(bytes.div_ceil(1024 * 1024))
}

pub(crate) async fn channel(global: &GlobalArgs) -> anyhow::Result<(Channel, String)> {
    let config = load_config(global, ServerRole::Hub)?;
    let ctx = ClientContext::discover(&config, global.hub.as_deref())?;
    Ok((ctx.channel().await?, ctx.jwt))
}

fn print_task(task: &TaskView, json_out: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json_out {
        return print_value(&view_json(task), true, out);
    }
    let gpus = task.requirements.as_ref().map_or(0.0, |r| r.gpus);
    writeln!(out, "task     {}", task.id)?;
    writeln!(out, "tool     {}", task.tool)?;
    writeln!(out, "status   {}", task.status)?;
    if !task.node.is_empty() {
        writeln!(out, "node     {}", task.node)?;
    }
    if gpus > 0.0 {
        let devices: Vec<String> = task.devices.iter().map(u32::to_string).collect();
        writeln!(out, "gpus     {gpus} (devices {})", devices.join(","))?;
    }
    writeln!(out, "attempts {}/{}", task.attempts, task.max_attempts)?;
    if !task.reason.is_empty() {
        writeln!(out, "reason   {}", task.reason)?;
    }
    if is_terminal(task) {
        if task.error_kind.is_empty() {
            writeln!(out, "output   {}", task.output)?;
        } else {
            writeln!(out, "error    {}: {}", task.error_kind, task.error_message)?;
        }
    }
    Ok(())
}

/// Whether the task (as the hub's view shows it) has ended.
fn is_terminal(task: &TaskView) -> bool {
    task.status
        .parse::<TaskStatus>()
        .is_ok_and(TaskStatus::is_terminal)
}

/// Exit status for a finished task: ok, a stop (3), or a failure (1).
fn outcome(task: &TaskView) -> anyhow::Result<()> {
    let (exit_code, message) = match task.status.parse::<TaskStatus>() {
        Ok(TaskStatus::Succeeded) => return Ok(()),
        Ok(TaskStatus::Failed) if STOP_KINDS.contains(&task.error_kind.as_str()) => (
            3,
            format!(
                "task {} was stopped: {}: {}",
                task.id, task.error_kind, task.error_message
            ),
        ),
        Ok(TaskStatus::Failed | TaskStatus::Cancelled) => (
            1,
            format!(
                "task {} {}: {}: {}",
                task.id, task.status, task.error_kind, task.error_message
            ),
        ),
        _ => (
            1,
            format!("task {} is still {}: {}", task.id, task.status, task.reason),
        ),
    };
    Err(TaskEnded { exit_code, message }.into())
}

async fn wait_for(
    client: &mut TaskServiceClient<Channel>,
    jwt: &str,
    id: &str,
    max: Duration,
    json: bool,
) -> anyhow::Result<TaskView> {
    let deadline = tokio::time::Instant::now() + max;
    let spinner = crate::progress::Spinner::start(json, format!("waiting for task {id}"));
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Short server-side waits keep each call well under proxies' idle limits.
        let wait_ms = u64::try_from(left.min(Duration::from_secs(60)).as_millis()).unwrap_or(0);
        let task = client
            .wait_task(with_bearer(
                WaitTaskRequest {
                    id: id.into(),
                    wait_ms,
                },
                jwt,
            ))
            .await
            .map_err(status_error)?
            .into_inner();
        if is_terminal(&task) || left.is_zero() {
            return Ok(task);
        }
        let mut status = format!("task {id}: {}", task.status);
        if !task.reason.is_empty() {
            status.push_str(&format!(" ({})", task.reason));
        }
        spinner.say(status);
    }
}

/// `outpost tasks …`
pub(crate) async fn tasks(
    global: &GlobalArgs,
    command: TasksCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (channel, jwt) = channel(global).await?;
    let mut client = task_client(channel);
    let json_out = global.json;
    match command {
        TasksCommand::Submit(args) => {
            let requirements = TaskRequirements {
                gpus: args.gpus,
                gpu_memory_mb: args.gpu_memory.unwrap_or(0),
                compute_capability: args.compute_capability.clone().unwrap_or_default(),
                labels: args.labels.iter().cloned().collect(),
                capabilities: args.capabilities.clone(),
                node: args.node.clone().unwrap_or_default(),
            };
            let request = SubmitTaskRequest {
                tool: args.work.tool.clone().unwrap_or_default(),
                command: args.work.command.clone().unwrap_or_default(),
                workdir: args.work.workdir.clone().unwrap_or_default(),
                input: args.work.input()?,
                requirements: Some(requirements),
                idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
                max_attempts: args.max_attempts.unwrap_or(0),
                timeout_ms: args
                    .timeout
                    .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                ..Default::default()
            };
            let mut task = client
                .submit_task(with_bearer(request, &jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            if args.wait {
                task =
                    wait_for(&mut client, &jwt, &task.id, args.wait_timeout, global.json).await?;
                print_task(&task, json_out, out)?;
                return outcome(&task);
            }
            print_task(&task, json_out, out)?;
        }
        TasksCommand::Get { id } => {
            let task = client
                .get_task(with_bearer(TaskRef { id }, &jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_task(&task, json_out, out)?;
        }
        TasksCommand::List {
            status,
            limit,
            before,
        } => {
            let list = client
                .list_tasks(with_bearer(
                    ListTasksRequest {
                        status: status.unwrap_or_default(),
                        limit,
                        before: before.unwrap_or_default(),
                    },
                    &jwt,
                ))
                .await
                .map_err(status_error)?
                .into_inner()
                .tasks;
            if json_out {
                writeln!(
                    out,
                    "{}",
                    Value::Array(list.iter().map(view_json).collect())
                )?;
            } else {
                let mut rows = vec![
                    ["ID", "TOOL", "STATUS", "NODE", "GPUS", "ATTEMPTS", "REASON"]
                        .map(String::from)
                        .to_vec(),
                ];
                for t in &list {
                    let gpus = t.requirements.as_ref().map_or(0.0, |r| r.gpus);
                    rows.push(vec![
                        t.id.clone(),
                        t.tool.clone(),
                        t.status.clone(),
                        if t.node.is_empty() {
                            "-".into()
                        } else {
                            t.node.clone()
                        },
                        if gpus > 0.0 {
                            gpus.to_string()
                        } else {
                            "-".into()
                        },
                        format!("{}/{}", t.attempts, t.max_attempts),
                        t.reason.clone(),
                    ]);
                }
                print_table(&rows, out)?;
            }
        }
        TasksCommand::Cancel { id } => {
            let task = client
                .cancel_task(with_bearer(TaskRef { id }, &jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_task(&task, json_out, out)?;
        }
        TasksCommand::Logs { id, follow } => {
            let mut stream = client
                .task_logs(with_bearer(TaskLogsRequest { id, follow }, &jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            crate::agents::print_log(&mut stream, json_out, out).await?;
        }
    }
    Ok(())
}

/// `outpost nodes send ID --tool NAME`: a task pinned to the node.
pub(crate) async fn nodes_send(
    global: &GlobalArgs,
    args: NodeSendArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (channel, jwt) = channel(global).await?;
    let mut client = task_client(channel);
    let request = SubmitTaskRequest {
        tool: args.work.tool.clone().unwrap_or_default(),
        command: args.work.command.clone().unwrap_or_default(),
        workdir: args.work.workdir.clone().unwrap_or_default(),
        input: args.work.input()?,
        requirements: Some(TaskRequirements {
            node: args.id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let task = client
        .submit_task(with_bearer(request, &jwt))
        .await
        .map_err(status_error)?
        .into_inner();
    if global.json {
        print_value(&view_json(&task), true, out)?;
    } else {
        writeln!(out, "{}", task.id)?;
    }
    Ok(())
}

/// `outpost nodes result TASK_ID [--wait]`
pub(crate) async fn nodes_result(
    global: &GlobalArgs,
    task_id: &str,
    wait: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (channel, jwt) = channel(global).await?;
    let mut client = task_client(channel);
    let task = if wait {
        wait_for(
            &mut client,
            &jwt,
            task_id,
            Duration::from_secs(600),
            global.json,
        )
        .await?
    } else {
        client
            .get_task(with_bearer(TaskRef { id: task_id.into() }, &jwt))
            .await
            .map_err(status_error)?
            .into_inner()
    };
    print_task(&task, global.json, out)?;
    outcome(&task)
}

/// `outpost tool push FILE --name NAME [--policy FILE]`
pub(crate) async fn tool_push(
    global: &GlobalArgs,
    args: ToolPushArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let component = std::fs::read(&args.file)
        .with_context(|| format!("reading the component {}", args.file.display()))?;
    let policy_toml = read_policy(args.policy.as_ref())?;
    let signature_file = args
        .signature
        .clone()
        .or_else(|| Some(signature_path(&args.file)).filter(|p| p.exists()));
    let signature = match &signature_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the signature {}", path.display()))?;
            let parsed: outpost_trust::signing::ToolSignature = serde_json::from_str(&text)
                .with_context(|| {
                    format!("the signature {} is not a tool signature", path.display())
                })?;
            Some(outpost_proto::v1::ToolSignature {
                publisher: parsed.publisher,
                signature: parsed.signature,
            })
        }
        None => None,
    };
    let (channel, jwt) = channel(global).await?;
    let mut client = ToolServiceClient::new(channel)
        .max_encoding_message_size(outpost_hub::work::tools::MAX_COMPONENT_BYTES + 1024 * 1024);
    let spinner = crate::progress::Spinner::start(
        global.json,
        format!(
            "pushing {} ({} bytes; the hub checks it under the nodes' sandbox)",
            args.name,
            component.len()
        ),
    );
    let tool = client
        .push_tool(with_bearer(
            PushToolRequest {
                name: args.name,
                component,
                policy_toml,
                signature,
            },
            &jwt,
        ))
        .await
        .map_err(status_error)?
        .into_inner();
    drop(spinner);
    if global.json {
        print_value(&outpost_hub::work::tools::view_json(&tool), true, out)?;
    } else {
        writeln!(
            out,
            "pushed {} {} ({} bytes, sha256 {})",
            tool.name, tool.version, tool.size_bytes, tool.digest
        )?;
    }
    Ok(())
}

/// `outpost tool list`
pub(crate) async fn tool_list(global: &GlobalArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (channel, jwt) = channel(global).await?;
    let tools = ToolServiceClient::new(channel)
        .list_tools(with_bearer(ListToolsRequest {}, &jwt))
        .await
        .map_err(status_error)?
        .into_inner()
        .tools;
    if global.json {
        let list: Vec<Value> = tools
            .iter()
            .map(outpost_hub::work::tools::view_json)
            .collect();
        writeln!(out, "{}", Value::Array(list))?;
    } else {
        let mut rows = vec![
            ["NAME", "VERSION", "SIZE", "DIGEST", "DESCRIPTION"]
                .map(String::from)
                .to_vec(),
        ];
        for t in &tools {
            rows.push(vec![
                t.name.clone(),
                t.version.clone(),
                t.size_bytes.to_string(),
                t.digest.chars().take(12).collect(),
                t.description.clone(),
            ]);
        }
        print_table(&rows, out)?;
    }
    Ok(())
}

/// `outpost tool inspect NAME`
pub(crate) async fn tool_inspect(
    global: &GlobalArgs,
    name: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (channel, jwt) = channel(global).await?;
    let tool = ToolServiceClient::new(channel)
        .inspect_tool(with_bearer(ToolRef { name: name.into() }, &jwt))
        .await
        .map_err(status_error)?
        .into_inner();
    print_value(
        &outpost_hub::work::tools::view_json(&tool),
        global.json,
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_labels_parse() {
        assert_eq!(parse_mib("16GiB").unwrap(), 16 * 1024);
        assert_eq!(parse_mib("512").unwrap(), 512);
        assert!(parse_mib("lots").is_err());
        assert_eq!(parse_label("zone=a").unwrap(), ("zone".into(), "a".into()));
        assert!(parse_label("zone").is_err());
        assert!(parse_label("=a").is_err());
    }
}
