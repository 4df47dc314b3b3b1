//! `outpost agents …`: the CLI side of the agent service.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use outpost_proto::v1::agent_service_client::AgentServiceClient;
use outpost_proto::v1::{
    AgentId, AgentInputRequest, AgentLogEntry, AgentLogsRequest, AgentView, CreateAgentRequest,
    DeleteAgentRequest, ListAgentsRequest, TaskRequirements,
};
use outpost_trust::grpc_channel::with_bearer;

use crate::work::{channel, parse_duration, parse_label, parse_mib};
use crate::{GlobalArgs, print_table, print_value, status_error};
use outpost_hub::api::views::agent_json;

/// `outpost agents …`
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Create an agent on a node (`--node ID`), or on any node that fits (`--auto`).
    Create(Box<CreateArgs>),
    /// Start a new run.
    Start {
        /// Agent id.
        id: String,
    },
    /// Stop the current run (SIGTERM to its process tree, SIGKILL after a grace).
    Stop {
        /// Agent id.
        id: String,
    },
    /// Stop the current run and start a new one.
    Restart {
        /// Agent id.
        id: String,
    },
    /// Delete an agent that is not running (and the worktree the node made for it).
    Delete {
        /// Agent id.
        id: String,
        /// Leave the worktree the node created for it in place.
        #[arg(long)]
        keep_worktree: bool,
    },
    /// One agent.
    Get {
        /// Agent id.
        id: String,
    },
    /// Every agent, or those of one node.
    List {
        /// Only this node's agents.
        #[arg(long)]
        node: Option<String>,
    },
    /// A line on the agent's stdin.
    Input {
        /// Agent id.
        id: String,
        /// The line.
        #[arg(long)]
        text: String,
    },
    /// Its output: the retained tail, then live with `-f`.
    Logs {
        /// Agent id.
        id: String,
        /// Keep following the output.
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

/// `outpost agents create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Display name.
    #[arg(long)]
    name: String,
    /// The node to run on.
    #[arg(long, conflicts_with = "auto", required_unless_present = "auto")]
    node: Option<String>,
    /// Any node that fits the requirements below (and runs native programs, for --command).
    #[arg(long)]
    auto: bool,
    /// GPUs the node must have free.
    #[arg(long, default_value_t = 0.0, requires = "auto")]
    gpus: f64,
    /// Free memory on each of those GPUs: 16GiB, or a number of MiB.
    #[arg(long, value_parser = parse_mib, requires = "auto")]
    gpu_memory: Option<u64>,
    /// Lowest CUDA compute capability.
    #[arg(long, requires = "auto")]
    compute_capability: Option<String>,
    /// A label the node must carry (k=v); repeatable.
    #[arg(long = "label", value_parser = parse_label, requires = "auto")]
    labels: Vec<(String, String)>,
    /// A capability the node must have; repeatable.
    #[arg(long = "capability", requires = "auto")]
    capabilities: Vec<String>,
    /// The program to run (a path, or a name on the node's PATH).
    #[arg(long, required_unless_present = "tool")]
    command: Option<String>,
    /// A pushed WASM tool as the agent: each input line is one `invoke`, in its sandbox under
    /// its policy (instead of --command).
    #[arg(long, conflicts_with_all = ["command", "args", "env_allow", "workdir", "workdir_mode", "repo", "cpu_seconds"])]
    tool: Option<String>,
    /// An argument; repeatable.
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// A variable of the node's environment to pass on (in its env_allow); repeatable.
    #[arg(long = "env-allow")]
    env_allow: Vec<String>,
    /// Working directory on the node, inside its safe_paths (default: the first; with
    /// create_worktree, `<repo>-<name>-<id>` under the node's default worktree root).
    #[arg(long)]
    workdir: Option<String>,
    /// How the workdir comes to be: use_existing (it must exist), create_worktree (a new git
    /// worktree of --repo, removed on delete) or reuse_worktree (an existing worktree).
    #[arg(long, value_parser = ["use_existing", "create_worktree", "reuse_worktree"])]
    workdir_mode: Option<String>,
    /// create_worktree: the git repository on the node (inside its safe_paths).
    #[arg(long)]
    repo: Option<String>,
    /// Address space per process (512MiB).
    #[arg(long, value_parser = outpost_sandbox::policy::parse_bytes)]
    memory: Option<u64>,
    /// CPU seconds per process.
    #[arg(long)]
    cpu_seconds: Option<u64>,
    /// Wall time of one run (1h).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Output forwarded per run (16MiB).
    #[arg(long, value_parser = outpost_sandbox::policy::parse_bytes)]
    max_output: Option<u64>,
    /// An actor team it belongs to (`outpost actor send --to team:NAME` reaches it); repeatable.
    #[arg(long = "team")]
    teams: Vec<String>,
    /// A message to it while it is not running starts it.
    #[arg(long)]
    wake_on_message: bool,
}

/// Prints a log stream as it arrives: output as is (made safe for the terminal), events on
/// lines of their own; with `--json`, one entry per line.
pub(crate) async fn print_log(
    stream: &mut tonic::Streaming<AgentLogEntry>,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    while let Some(entry) = stream.message().await.map_err(status_error)? {
        if json_out {
            let line = serde_json::json!({
                "seq": entry.seq,
                "stream": entry.stream,
                "data": entry.data,
                "at": entry.at,
            });
            writeln!(out, "{line}")?;
        } else if entry.stream == "event" {
            writeln!(out, "[{}] {}", entry.at, crate::terminal_safe(&entry.data))?;
        } else {
            write!(out, "{}", crate::terminal_safe_output(&entry.data))?;
        }
        out.flush()?;
    }
    Ok(())
}

fn print_agent(agent: &AgentView, json_out: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    print_value(&agent_json(agent), json_out, out)
}

/// `outpost agents …`
pub(crate) async fn agents(
    global: &GlobalArgs,
    command: AgentsCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (channel, jwt) = channel(global).await?;
    let mut client = AgentServiceClient::new(channel);
    let json_out = global.json;
    let id_request = |id: String| with_bearer(AgentId { id }, &jwt);
    match command {
        AgentsCommand::Create(args) => {
            let args = *args;
            let requirements = TaskRequirements {
                gpus: args.gpus,
                gpu_memory_mb: args.gpu_memory.unwrap_or(0),
                compute_capability: args.compute_capability.unwrap_or_default(),
                labels: args.labels.into_iter().collect(),
                capabilities: args.capabilities,
                node: String::new(),
            };
            let request = CreateAgentRequest {
                name: args.name,
                node: args.node.unwrap_or_default(),
                requirements: Some(requirements),
                command: args.command.unwrap_or_default(),
                tool: args.tool.unwrap_or_default(),
                args: args.args,
                env_allow: args.env_allow,
                workdir: args.workdir.unwrap_or_default(),
                memory_bytes: args.memory.unwrap_or(0),
                cpu_seconds: args.cpu_seconds.unwrap_or(0),
                timeout_ms: args
                    .timeout
                    .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                max_output_bytes: args.max_output.unwrap_or(0),
                workdir_mode: args.workdir_mode.unwrap_or_default(),
                repo: args.repo.unwrap_or_default(),
                teams: args.teams,
                wake_on_message: args.wake_on_message,
            };
            let agent = client
                .create_agent(with_bearer(request, &jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_agent(&agent, json_out, out)
        }
        AgentsCommand::Start { id } => {
            let agent = client
                .start_agent(id_request(id))
                .await
                .map_err(status_error)?;
            print_agent(&agent.into_inner(), json_out, out)
        }
        AgentsCommand::Stop { id } => {
            let agent = client
                .stop_agent(id_request(id))
                .await
                .map_err(status_error)?;
            print_agent(&agent.into_inner(), json_out, out)
        }
        AgentsCommand::Restart { id } => {
            let agent = client
                .restart_agent(id_request(id))
                .await
                .map_err(status_error)?;
            print_agent(&agent.into_inner(), json_out, out)
        }
        AgentsCommand::Delete { id, keep_worktree } => {
            let deleted = client
                .delete_agent(with_bearer(DeleteAgentRequest { id, keep_worktree }, &jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_value(&serde_json::json!({"deleted": deleted.id}), json_out, out)
        }
        AgentsCommand::Get { id } => {
            let agent = client
                .get_agent(id_request(id))
                .await
                .map_err(status_error)?;
            print_agent(&agent.into_inner(), json_out, out)
        }
        AgentsCommand::List { node } => {
            let agents = client
                .list_agents(with_bearer(
                    ListAgentsRequest {
                        node: node.unwrap_or_default(),
                    },
                    &jwt,
                ))
                .await
                .map_err(status_error)?
                .into_inner()
                .agents;
            if json_out {
                let all: Vec<_> = agents.iter().map(agent_json).collect();
                return print_value(&serde_json::Value::Array(all), true, out);
            }
            let mut rows = vec![vec![
                "ID".to_string(),
                "NAME".into(),
                "NODE".into(),
                "STATUS".into(),
                "RUN".into(),
                "EXIT".into(),
                "REASON".into(),
            ]];
            for agent in &agents {
                let exit = match (agent.exit_code, agent.signal) {
                    (Some(code), _) => code.to_string(),
                    (None, Some(signal)) => format!("signal {signal}"),
                    _ => String::new(),
                };
                rows.push(vec![
                    agent.id.clone(),
                    agent.name.clone(),
                    format!("node:{}", agent.node),
                    agent.status.clone(),
                    agent.run.to_string(),
                    exit,
                    agent.reason.clone(),
                ]);
            }
            print_table(&rows, out)
        }
        AgentsCommand::Input { id, text } => {
            client
                .send_agent_input(with_bearer(AgentInputRequest { id, text }, &jwt))
                .await
                .map_err(status_error)?;
            Ok(())
        }
        AgentsCommand::Logs { id, follow } => {
            let mut stream = client
                .agent_logs(with_bearer(AgentLogsRequest { id, follow }, &jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_log(&mut stream, json_out, out).await
        }
    }
}
