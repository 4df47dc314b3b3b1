//! The `outpost` command line: hub and node modes, certificates, tokens and the node registry.
//!
//! Commands find the hub from `--hub`, `OUTPOST_HUB` or the config's `[internal_grpc] listen`, and
//! their credential from `OUTPOST_TOKEN` or by minting an admin JWT from the configured
//! `shared_secret` or the hub's generated `cert_dir/auth_secret.txt`. In mTLS mode the operator
//! certificate in `cert_dir` is presented. Exit codes: 0 ok, 1 failure, 2 usage, 3 stopped by a
//! sandbox or policy limit.

pub mod actor;
pub mod agents;
mod audit;
pub mod demo;
mod doctor;
mod mcp;
mod progress;
pub mod tool_run;
pub mod work;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use outpost_config::{Config, ServerRole};
use outpost_proto::v1::node_registry_client::NodeRegistryClient;
use outpost_proto::v1::token_service_client::TokenServiceClient;
use outpost_proto::v1::{
    CreateBootstrapTokenRequest, DrainNodeRequest, ListNodesRequest, NodeRecord, NodeRef, NodeView,
    UpdateNodeRequest,
};
use outpost_trust::auth::{Role, TokenAuthority};
use outpost_trust::grpc_channel::{self, ClientIdentity, with_bearer};
use serde_json::{Value, json};
use tonic::transport::Channel;

use outpost_hub::api::views;
use outpost_hub::credentials::pki::{HubPki, files};

/// Outpost: a hub and nodes for running tools and agents across a fleet.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "OUTPOST_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Hub's internal gRPC URL (https://host:port).
    #[arg(long, global = true, env = "OUTPOST_HUB")]
    pub(crate) hub: Option<String>,
    /// Machine-readable output: one JSON value on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Data directory (overrides [server] data_dir).
    #[arg(long, global = true)]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub (control plane).
    Hub,
    /// Run a node (same as `outpost-node`).
    Node,
    /// Start a hub and two nodes on loopback, join them and show the fleet.
    Demo {
        /// Keep serving until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
    /// Certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Tokens: bootstrap tokens for joining nodes, API tokens for people and scripts.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The node registry.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Agents: long-running native programs on nodes.
    Agents {
        #[command(subcommand)]
        command: crate::agents::AgentsCommand,
    },
    /// Actors: mailboxes, teams, time triggers and permission reviews (AgentHub's actor CLI).
    Actor {
        #[command(subcommand)]
        command: crate::actor::ActorCommand,
    },
    /// Tasks: work the hub places on nodes by requirement.
    Tasks {
        #[command(subcommand)]
        command: crate::work::TasksCommand,
    },
    /// Agent tools (WebAssembly components).
    Tool {
        #[command(subcommand)]
        command: ToolCommand,
    },
    /// Publisher keys that sign tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check the way to the hub (and to a node): reachable, TLS, gRPC health, the token, the
    /// node's session; each check ok or the cause and the fix; exit 1 when one fails.
    Doctor {
        /// Also check this node's session.
        #[arg(long)]
        node: Option<String>,
    },
    /// Serve the hub's MCP tools over stdio (for MCP clients that launch servers), with the
    /// credential of OUTPOST_TOKEN or the config's auth secret.
    Mcp,
    /// The audit log: every write, who made it and how it ended.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// A completion script for a shell, on stdout (`outpost completions bash >
    /// /etc/bash_completion.d/outpost`; zsh: into a directory on `$fpath` as `_outpost`).
    Completions {
        /// The shell.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a publisher key: DIR/NAME.key (private, owner-only) and DIR/NAME.pub, or the file
    /// `--out` names and the same name with `.pub`; prints the public key to put in
    /// `[tools] trusted_publishers` and `[node] trusted_publishers`.
    Create {
        /// Name of the key files.
        #[arg(required_unless_present = "out")]
        name: Option<String>,
        /// Directory to write to (default: the current one).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The private key file to write (its public half goes beside it, ending in `.pub`).
        #[arg(long, conflicts_with = "name")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ToolCommand {
    /// Run a component locally under exactly the sandbox the nodes use.
    Run(Box<crate::tool_run::ToolRunArgs>),
    /// Push a component to the hub so tasks can run it.
    Push(crate::work::ToolPushArgs),
    /// Tools on the hub.
    List,
    /// One tool on the hub.
    Inspect {
        /// Tool name.
        name: String,
    },
    /// Sign a component and its policy with a publisher key (writes FILE.sig).
    Sign(crate::work::ToolSignArgs),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create the CA, hub certificate, operator client certificate and auth secret in DIR.
    Init {
        /// Directory to write to (existing files are kept).
        #[arg(long)]
        dir: PathBuf,
        /// Extra names or IPs for the hub certificate.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token for joining nodes.
    Create {
        /// Lifetime, e.g. 1h, 30m.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many joins it allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Mint an API token (JWT) from the hub's auth secret.
    Api {
        /// admin, viewer, agent (MCP only, limited to the --tool names), or actor (acts only
        /// as the actor named by --subject: its mailbox, triggers and permission requests).
        #[arg(long, default_value = "viewer", value_parser = parse_role)]
        role: Role,
        /// With --role agent: a tool it may call (`nodes` for the fleet tool); repeat.
        #[arg(long = "tool", value_name = "NAME")]
        tools: Vec<String>,
        /// Lifetime.
        #[arg(long, default_value = "12h", value_parser = parse_duration)]
        ttl: Duration,
        /// Subject (who it is for).
        #[arg(long, default_value = "operator")]
        subject: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Entries newest first.
    List {
        /// Only entries from this long ago on, e.g. 1h, 7d.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
enum NodesCommand {
    /// Every node with status, load, GPUs and last heartbeat.
    List,
    /// One node.
    Get {
        /// Node id.
        id: String,
    },
    /// Ping a node over its session and show its health.
    Health {
        /// Node id.
        id: String,
    },
    /// What a node advertises.
    Capabilities {
        /// Node id.
        id: String,
    },
    /// Register a node ahead of its join.
    Register {
        /// Node id.
        #[arg(long)]
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// gRPC endpoint of the node.
        #[arg(long, default_value = "")]
        grpc_target: String,
        /// TLS SNI override.
        #[arg(long, default_value = "")]
        tls_server_name: String,
        /// Default base for create_worktree.
        #[arg(long, default_value = "")]
        default_worktree_root: String,
        /// A label the hub assigns (k=v; repeatable); placement trusts it over the node's own.
        #[arg(long = "label", value_parser = work::parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Change a node's registry fields.
    Update {
        /// Node id.
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New gRPC target.
        #[arg(long)]
        grpc_target: Option<String>,
        /// New TLS server name.
        #[arg(long)]
        tls_server_name: Option<String>,
        /// New default worktree root.
        #[arg(long)]
        default_worktree_root: Option<String>,
        /// Assigned labels (k=v; repeatable): replace the node's assigned labels.
        #[arg(long = "label", value_parser = work::parse_label)]
        labels: Vec<(String, String)>,
        /// Remove every assigned label.
        #[arg(long, conflicts_with = "labels")]
        clear_labels: bool,
    },
    /// Remove a node (refused while it has active agents).
    Delete {
        /// Node id.
        id: String,
    },
    /// Stop placing new work on a node (`--undo` to resume).
    Drain {
        /// Node id.
        id: String,
        /// Take the node out of draining.
        #[arg(long)]
        undo: bool,
    },
    /// Run a tool on this node (a task pinned to it); prints the task id.
    Send(crate::work::NodeSendArgs),
    /// The result of a task sent with `nodes send`.
    Result {
        /// Task id.
        task_id: String,
        /// Wait until it finishes.
        #[arg(long)]
        wait: bool,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 1h, 30m, 90s)"))
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "admin" => Ok(Role::Admin),
        "viewer" => Ok(Role::Viewer),
        "agent" => Ok(Role::Agent),
        "actor" => Ok(Role::Actor),
        other => Err(format!(
            "{other:?} is not a role: use admin, viewer, agent or actor"
        )),
    }
}

/// Parses `args` and runs the command on stdout/stderr; returns the process exit code.
pub async fn main_with_args(args: Vec<String>) -> u8 {
    main_with_io(args, &mut std::io::stdout(), &mut std::io::stderr()).await
}

/// Parses `args` and runs the command, writing to `out` and `err`; returns the exit code
/// (0 ok, 1 failure, 2 usage, 3 a sandbox or policy stop).
pub async fn main_with_io(args: Vec<String>, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let target: &mut dyn Write = if e.use_stderr() { err } else { out };
            let _ = write!(target, "{}", e.render());
            return code;
        }
    };
    let json = cli.global.json;
    if let Command::Tool {
        command: ToolCommand::Run(args),
    } = cli.command
    {
        return crate::tool_run::run(*args, cli.global.config.as_ref(), json, out, err).await;
    }
    if matches!(cli.command, Command::Hub | Command::Node) {
        outpost_node::init_tracing(false, "info");
    } else if matches!(cli.command, Command::Demo { .. }) {
        outpost_node::init_tracing(false, "warn");
    }
    match run(cli, out).await {
        Ok(()) => 0,
        Err(e) if e.downcast_ref::<crate::work::TaskEnded>().is_some() => {
            // The task (with its error kind) is already on stdout.
            let _ = writeln!(err, "error: {e:#}");
            e.downcast_ref::<crate::work::TaskEnded>()
                .map_or(1, |ended| ended.exit_code)
        }
        Err(e) if e.downcast_ref::<crate::actor::BatchFailed>().is_some() => {
            // Each item's result, its error among them, is already on stdout.
            let _ = writeln!(err, "error: {e:#}");
            1
        }
        Err(e) => report_failure(json, &e, out, err),
    }
}

/// Reports a failure (exit code 1): on stderr, and as `{"ok":false,"error":{"message"}}` on
/// stdout when `json`.
pub fn report_failure(
    json: bool,
    e: &anyhow::Error,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    if json {
        let _ = writeln!(
            out,
            "{}",
            json!({"ok": false, "error": {"message": format!("{e:#}")}})
        );
    }
    let _ = writeln!(err, "error: {e:#}");
    1
}

/// Runs a parsed command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Hub => {
            let config = load_config(&global, ServerRole::Hub)?;
            let hub = outpost_hub::hub::start(&config).await?;
            writeln!(
                out,
                "outpost hub: grpc https://{} | rest {} | quic {} (udp)",
                hub.addrs.grpc,
                hub.addrs.http_url(),
                hub.addrs.quic
            )?;
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            hub.shutdown().await;
            Ok(())
        }
        Command::Node => {
            let config = load_config(&global, ServerRole::Node)?;
            let node = outpost_node::Node::start(config).await?;
            writeln!(
                out,
                "outpost node {}: {}",
                node.node_id,
                if node.joined_now {
                    "joined"
                } else {
                    "identity reused"
                }
            )?;
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            node.shutdown().await;
            Ok(())
        }
        Command::Demo { keep_running } => {
            crate::demo::run(global.data_dir.as_deref(), keep_running, global.json, out).await
        }
        Command::Doctor { node } => crate::doctor::doctor(&global, node, out).await,
        Command::Mcp => crate::mcp::serve_stdio(&global).await,
        Command::Audit {
            command: AuditCommand::List { since, limit },
        } => crate::audit::list(&global, since, limit, out).await,
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let shell = match shell.as_str() {
                "zsh" => clap_complete::Shell::Zsh,
                "fish" => clap_complete::Shell::Fish,
                _ => clap_complete::Shell::Bash,
            };
            let mut command = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "outpost", &mut script);
            out.write_all(&script)?;
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Init { dir, server_names },
        } => {
            let pki = HubPki::load_or_init(&dir, &server_names)?;
            if global.json {
                writeln!(out, "{}", json!({"dir": dir, "created": pki.created}))?;
            } else if pki.created.is_empty() {
                writeln!(
                    out,
                    "{}: everything already present; nothing changed",
                    dir.display()
                )?;
            } else {
                writeln!(out, "{}: created {}", dir.display(), pki.created.join(", "))?;
            }
            Ok(())
        }
        Command::Token { command } => token(&global, command, out).await,
        Command::Nodes {
            command: NodesCommand::Send(args),
        } => crate::work::nodes_send(&global, args, out).await,
        Command::Nodes {
            command: NodesCommand::Result { task_id, wait },
        } => crate::work::nodes_result(&global, &task_id, wait, out).await,
        Command::Nodes { command } => nodes(&global, command, out).await,
        Command::Tasks { command } => crate::work::tasks(&global, command, out).await,
        Command::Agents { command } => crate::agents::agents(&global, command, out).await,
        Command::Actor { command } => crate::actor::actor(&global, command, out).await,
        Command::Tool {
            command: ToolCommand::Push(args),
        } => crate::work::tool_push(&global, args, out).await,
        Command::Tool {
            command: ToolCommand::List,
        } => crate::work::tool_list(&global, out).await,
        Command::Tool {
            command: ToolCommand::Sign(args),
        } => crate::work::tool_sign(&global, args, out),
        Command::Keys {
            command:
                KeysCommand::Create {
                    name,
                    dir,
                    out: file,
                },
        } => {
            let (private, public) = crate::work::key_files(name.as_deref(), &dir, file)?;
            crate::work::keys_create(&global, &private, &public, out)
        }
        Command::Tool {
            command: ToolCommand::Inspect { name },
        } => crate::work::tool_inspect(&global, &name, out).await,
        Command::Tool {
            command: ToolCommand::Run(args),
        } => {
            let mut err = std::io::stderr();
            match crate::tool_run::run(*args, global.config.as_ref(), global.json, out, &mut err)
                .await
            {
                0 => Ok(()),
                code => Err(anyhow!("the tool run ended with exit code {code}")),
            }
        }
    }
}

pub(crate) fn load_config(global: &GlobalArgs, role: ServerRole) -> anyhow::Result<Config> {
    let mut config = Config::load(global.config.as_deref(), std::env::vars())?;
    if role == ServerRole::Node || global.config.is_none() {
        config.server.role = role;
    }
    if let Some(dir) = &global.data_dir {
        config.server.data_dir = Some(dir.clone());
    }
    config.validate()?;
    Ok(config)
}

/// Where the CLI connects and with what.
#[derive(Debug, Clone)]
pub struct ClientContext {
    /// Hub gRPC URL.
    pub hub_url: String,
    /// CA that signs the hub certificate.
    pub ca_pem: String,
    /// Operator certificate (presented when present).
    pub identity: Option<ClientIdentity>,
    /// Bearer JWT.
    pub jwt: String,
}

impl ClientContext {
    /// From the config and environment, as the CLI does.
    pub fn discover(config: &Config, hub: Option<&str>) -> anyhow::Result<Self> {
        let cert_dir = config.cert_dir();
        let ca_path = config
            .node
            .ca_file
            .clone()
            .unwrap_or_else(|| cert_dir.join(files::CA_CERT));
        let ca_pem = std::fs::read_to_string(&ca_path).with_context(|| {
            format!("reading the hub CA at {} (point --config at the hub's config or set [internal_grpc.security] cert_dir)", ca_path.display())
        })?;
        let hub_url = match hub {
            Some(url) => url.to_string(),
            None => {
                let listen = config.internal_grpc.listen.replace("0.0.0.0", "127.0.0.1");
                format!("https://{listen}")
            }
        };
        let identity = read_identity(&cert_dir);
        let jwt = match std::env::var("OUTPOST_TOKEN") {
            Ok(token) if !token.trim().is_empty() => token.trim().to_string(),
            _ => mint_admin_token(config, &cert_dir)?,
        };
        Ok(Self {
            hub_url,
            ca_pem,
            identity,
            jwt,
        })
    }

    /// A connected channel.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(
            grpc_channel::connect(&self.hub_url, &self.ca_pem, self.identity.as_ref(), None)
                .await?,
        )
    }
}

fn read_identity(cert_dir: &Path) -> Option<ClientIdentity> {
    let cert_pem = std::fs::read_to_string(cert_dir.join(files::CLIENT_CERT)).ok()?;
    let key_pem = std::fs::read_to_string(cert_dir.join(files::CLIENT_KEY)).ok()?;
    Some(ClientIdentity { cert_pem, key_pem })
}

fn authority(config: &Config, cert_dir: &Path) -> anyhow::Result<TokenAuthority> {
    let secret = match &config.internal_grpc.auth.shared_secret {
        Some(secret) => secret.clone(),
        None => {
            let path = cert_dir.join(files::AUTH_SECRET);
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "no shared_secret configured and no generated secret at {}",
                        path.display()
                    )
                })?
                .trim()
                .to_string()
        }
    };
    Ok(TokenAuthority::new(
        secret.as_bytes(),
        &config.internal_grpc.auth.issuer,
        &config.internal_grpc.auth.audience,
        config.internal_grpc.auth.leeway_seconds,
    ))
}

fn now_s() -> i64 {
    outpost_clock::Clock::now_ms(&outpost_clock::SystemClock) / 1000
}

fn mint_admin_token(config: &Config, cert_dir: &Path) -> anyhow::Result<String> {
    Ok(authority(config, cert_dir)?.issue("cli", Role::Admin, now_s(), 300)?)
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    let code = match status.code() {
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::FailedPrecondition => "refused",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::Unavailable => "hub unavailable",
        _ => "hub error",
    };
    anyhow!("{code}: {}", status.message())
}

async fn token(
    global: &GlobalArgs,
    command: TokenCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let config = load_config(global, ServerRole::Hub)?;
    match command {
        TokenCommand::Create { ttl, uses } => {
            let ctx = ClientContext::discover(&config, global.hub.as_deref())?;
            let mut client = TokenServiceClient::new(ctx.channel().await?);
            let created = client
                .create_bootstrap_token(with_bearer(
                    CreateBootstrapTokenRequest {
                        ttl_seconds: ttl.as_secs(),
                        uses,
                    },
                    &ctx.jwt,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            if global.json {
                writeln!(
                    out,
                    "{}",
                    json!({"token": created.token, "token_id": created.token_id, "expires_at": views::time_json(created.expires_at_ms), "uses": created.uses})
                )?;
            } else {
                writeln!(out, "{}", created.token)?;
                writeln!(
                    out,
                    "# valid for {} join(s) until {}; give it to the node as [internal_grpc.bootstrap] token",
                    created.uses,
                    views::time_json(created.expires_at_ms)
                        .as_str()
                        .unwrap_or("?")
                )?;
            }
        }
        TokenCommand::Api {
            role,
            ttl,
            subject,
            tools,
        } => {
            let ttl = i64::try_from(ttl.as_secs()).context("ttl too large")?;
            let authority = authority(&config, &config.cert_dir())?;
            let token = match role {
                Role::Agent if tools.is_empty() => anyhow::bail!(
                    "--role agent needs at least one --tool NAME (`nodes` for the fleet tool)"
                ),
                Role::Agent => {
                    for tool in &tools {
                        outpost_hub::work::tools::validate_name(tool)
                            .map_err(|e| anyhow::anyhow!("--tool {e}"))?;
                    }
                    authority.issue_agent(&subject, tools.clone(), now_s(), ttl)?
                }
                _ if !tools.is_empty() => {
                    anyhow::bail!("--tool limits an agent token; {role} tokens are not limited")
                }
                Role::Node => anyhow::bail!("node credentials come from joining, not from here"),
                Role::Actor => {
                    outpost_hub::actors::check_actor_id("--subject", &subject)
                        .map_err(|e| anyhow::anyhow!("{e} (an actor token acts as --subject)"))?;
                    authority.issue(&subject, role, now_s(), ttl)?
                }
                _ => authority.issue(&subject, role, now_s(), ttl)?,
            };
            if global.json {
                writeln!(
                    out,
                    "{}",
                    json!({"token": token, "role": role.to_string(), "tools": tools})
                )?;
            } else {
                writeln!(out, "{token}")?;
            }
        }
    }
    Ok(())
}

async fn nodes(
    global: &GlobalArgs,
    command: NodesCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let config = load_config(global, ServerRole::Hub)?;
    let ctx = ClientContext::discover(&config, global.hub.as_deref())?;
    let mut client = NodeRegistryClient::new(ctx.channel().await?);
    let jwt = ctx.jwt.as_str();
    let json_out = global.json;
    match command {
        NodesCommand::List => {
            let nodes = client
                .list_nodes(with_bearer(ListNodesRequest {}, jwt))
                .await
                .map_err(status_error)?
                .into_inner()
                .nodes;
            if json_out {
                writeln!(
                    out,
                    "{}",
                    Value::Array(nodes.iter().map(views::node_json).collect())
                )?;
            } else {
                print_node_table(&nodes, out)?;
            }
        }
        NodesCommand::Get { id } => {
            let node = client
                .get_node(with_bearer(NodeRef { id }, jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_value(&views::node_json(&node), json_out, out)?;
        }
        NodesCommand::Health { id } => {
            let health = client
                .node_health(with_bearer(NodeRef { id }, jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_value(&views::health_json(&health), json_out, out)?;
            if !health.reachable {
                bail!("node {} is not reachable: {}", health.id, health.error);
            }
        }
        NodesCommand::Capabilities { id } => {
            let caps = client
                .node_capabilities(with_bearer(NodeRef { id }, jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_value(&views::capabilities_json(&caps), json_out, out)?;
        }
        NodesCommand::Register {
            id,
            name,
            grpc_target,
            tls_server_name,
            default_worktree_root,
            labels,
        } => {
            let record = NodeRecord {
                id,
                name,
                grpc_target,
                tls_server_name,
                default_worktree_root,
                labels: labels.into_iter().collect(),
            };
            let node = client
                .register_node(with_bearer(record, jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_value(&views::node_json(&node), json_out, out)?;
        }
        NodesCommand::Update {
            id,
            name,
            grpc_target,
            tls_server_name,
            default_worktree_root,
            labels,
            clear_labels,
        } => {
            let request = UpdateNodeRequest {
                id,
                name,
                grpc_target,
                tls_server_name,
                default_worktree_root,
                replace_labels: clear_labels || !labels.is_empty(),
                labels: labels.into_iter().collect(),
            };
            let node = client
                .update_node(with_bearer(request, jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_value(&views::node_json(&node), json_out, out)?;
        }
        NodesCommand::Delete { id } => {
            let deleted = client
                .delete_node(with_bearer(NodeRef { id }, jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_value(&json!({"deleted": deleted.id}), json_out, out)?;
        }
        NodesCommand::Drain { id, undo } => {
            let node = client
                .drain_node(with_bearer(DrainNodeRequest { id, drain: !undo }, jwt))
                .await
                .map_err(status_error)?
                .into_inner();
            print_value(&views::node_json(&node), json_out, out)?;
        }
        NodesCommand::Send(args) => crate::work::nodes_send(global, args, out).await?,
        NodesCommand::Result { task_id, wait } => {
            crate::work::nodes_result(global, &task_id, wait, out).await?;
        }
    }
    Ok(())
}

pub(crate) fn print_value(
    value: &Value,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if json_out {
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    format!("{:.1}G", bytes as f64 / GIB)
}

/// Prints nodes as a table.
pub fn print_node_table(nodes: &[NodeView], out: &mut dyn Write) -> anyhow::Result<()> {
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "STATUS",
            "CPU",
            "MEMORY",
            "GPUS",
            "LAST HEARTBEAT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for node in nodes {
        let record = node.record.clone().unwrap_or_default();
        let load = node.load.unwrap_or_default();
        let gpus = node
            .capabilities
            .as_ref()
            .and_then(|c| c.gpus.clone())
            .unwrap_or_default();
        let gpu_text = if gpus.devices.is_empty() {
            "-".to_string()
        } else {
            gpus.devices
                .iter()
                .map(|g| {
                    if g.mig_enabled {
                        // Its memory belongs to its instances, listed after it.
                        format!("{} (MIG mode)", g.name)
                    } else {
                        format!(
                            "{} ({}/{} MiB free)",
                            g.name, g.memory_free_mb, g.memory_total_mb
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let status = if node.status_reason.is_empty() || node.status == "online" {
            node.status.clone()
        } else {
            format!("{} ({})", node.status, node.status_reason)
        };
        rows.push(vec![
            record.id,
            record.name,
            status,
            if node.load.is_some() {
                format!("{:.0}%", load.cpu_percent)
            } else {
                "-".into()
            },
            if node.load.is_some() {
                format!(
                    "{}/{}",
                    human_bytes(load.memory_used_bytes),
                    human_bytes(load.memory_total_bytes)
                )
            } else {
                "-".into()
            },
            gpu_text,
            views::time_json(node.last_heartbeat_ms)
                .as_str()
                .unwrap_or("never")
                .to_string(),
        ]);
    }
    print_table(&rows, out)
}

/// `text` with every control character (escape sequences, carriage returns) and invisible
/// formatting character written as a `\u{…}` escape, so it prints as what it is.
pub fn terminal_safe(text: &str) -> String {
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || outpost_hub::fleet::registry::is_format_character(c) {
            safe.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            safe.push(c);
        }
    }
    safe
}

/// A program's output for the terminal: lines and tabs kept, every other control or
/// formatting character escaped (an agent cannot repaint the operator's terminal).
pub fn terminal_safe_output(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            line.split('\t')
                .map(terminal_safe)
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints rows (the first is the header) in aligned columns, each cell [`terminal_safe`].
pub fn print_table(rows: &[Vec<String>], out: &mut dyn Write) -> anyhow::Result<()> {
    // Cells come from the hub (names, labels, reasons): nothing in them may reach the terminal
    // as a control sequence.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| terminal_safe(cell)).collect())
        .collect();
    let rows = rows.as_slice();
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}
