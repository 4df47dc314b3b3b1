//! The fleet's own tools: PRX's `nodes` (list, health, send, result, capabilities — its
//! parameters and its `{success, output, error}` answer) and `agents` (list, get, create,
//! start, stop, input, output).
//!
//! `nodes` `send` takes PRX's `node_id` + `task` (the text goes to the node's
//! `[node] default_task`: a tool, given the text as input, or `agent:NAME`, given it as a line)
//! and Outpost's extras: a pushed `tool` or a native `command` with its `input`, placed by
//! requirements (`gpus`, `gpu_memory`, `compute_capability`, `labels`, `capabilities`) instead
//! of a `node_id`, and `wait` to answer with the result.

use std::sync::Arc;

use outpost_proto::v1::{
    Capabilities, CreateAgentRequest, NodeView, SubmitTaskRequest, TaskRequirements, TaskView,
};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool};
use serde::Deserialize;
use serde_json::{Value, json};

use super::FleetApi;
use super::approvals::Approvals;
use super::catalog::progress_message;

/// The `nodes` tool's name (PRX's).
pub const NODES: &str = crate::api::access::NODES_TOOL;
/// The `agents` tool's name.
pub const AGENTS: &str = "agents";

/// What a fleet tool answers: PRX's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Whether the operation completed.
    pub success: bool,
    /// What it produced (node list, health, task result, …).
    pub output: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Extra fields for programs (`task_id`, `node`), beside PRX's three.
    pub extra: serde_json::Map<String, Value>,
}

impl Answer {
    fn ok(output: impl Into<String>) -> Self {
        Self {
            success: true,
            output: output.into(),
            error: None,
            extra: serde_json::Map::new(),
        }
    }

    fn failed(error: impl Into<String>) -> Self {
        Self {
            success: false,
            output: String::new(),
            error: Some(error.into()),
            extra: serde_json::Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The tool result: the answer as JSON text and as structured content; an error result
    /// when the operation failed.
    pub fn into_result(self) -> CallToolResult {
        let mut object = json!({
            "success": self.success,
            "output": self.output,
            "error": self.error,
        });
        if let Value::Object(fields) = &mut object {
            fields.extend(self.extra);
        }
        let text = ContentBlock::text(object.to_string());
        let mut result = if self.success {
            CallToolResult::success(vec![text])
        } else {
            CallToolResult::error(vec![text])
        };
        result.structured_content = Some(object);
        result
    }
}

fn schema(value: Value) -> Arc<JsonObject> {
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

/// The `nodes` tool's definition.
pub fn nodes_tool() -> Tool {
    Tool::new(
        NODES,
        "Outpost's fleet: list the nodes, check one's health and capabilities, send work to a \
         node (a task text for its default handler, a pushed tool, or a command; or let the hub \
         place it by GPU and label requirements), and read a task's result.",
        schema(json!({
            "type": "object",
            "properties": {
                "action": {
                    "type": "string",
                    "enum": ["list", "health", "send", "result", "capabilities"],
                    "description": "Node action"
                },
                "node_id": {"type": "string", "description": "Target node (health, capabilities; send, unless requirements place it)"},
                "task": {"type": "string", "description": "Task text for the node's default handler (send)"},
                "task_id": {"type": "string", "description": "Task identifier (result)"},
                "tool": {"type": "string", "description": "send: a pushed tool to run"},
                "command": {"type": "string", "description": "send: a native command to run (admin credentials only)"},
                "input": {"type": "string", "description": "send: the tool's or command's input"},
                "gpus": {"type": "number", "minimum": 0, "description": "send: GPUs needed (0.5 shares one)"},
                "gpu_memory": {"type": "string", "description": "send: free memory per GPU, e.g. 16GiB"},
                "compute_capability": {"type": "string", "description": "send: lowest compute capability, e.g. 8.0"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "send: labels the node must have"},
                "capabilities": {"type": "array", "items": {"type": "string"}, "description": "send: capabilities the node must have"},
                "wait": {"type": "boolean", "description": "send: answer with the task's result instead of its id"}
            },
            "required": ["action"],
            "additionalProperties": false
        })),
    )
}

/// The `agents` tool's definition.
pub fn agents_tool() -> Tool {
    Tool::new(
        AGENTS,
        "Outpost's agents: long-running programs bound to nodes. List them, read one, create \
         one on a node, start or stop it, send it a line of input, read its output.",
        schema(json!({
            "type": "object",
            "properties": {
                "action": {
                    "type": "string",
                    "enum": ["list", "get", "create", "start", "stop", "input", "output"]
                },
                "agent_id": {"type": "string", "description": "get, start, stop, input, output"},
                "node_id": {"type": "string", "description": "list: only this node's; create: the node to bind it to"},
                "name": {"type": "string", "description": "create: its name"},
                "command": {"type": "string", "description": "create: the program (native)"},
                "args": {"type": "array", "items": {"type": "string"}, "description": "create: its arguments"},
                "tool": {"type": "string", "description": "create: a pushed tool to run as the agent (WASM)"},
                "workdir": {"type": "string", "description": "create: its working directory, inside the node's safe_paths"},
                "workdir_mode": {"type": "string", "enum": ["use_existing", "create_worktree", "reuse_worktree"]},
                "text": {"type": "string", "description": "input: the line to send"}
            },
            "required": ["action"],
            "additionalProperties": false
        })),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NodesArgs {
    action: String,
    node_id: String,
    task: String,
    task_id: String,
    tool: String,
    command: String,
    input: String,
    gpus: f64,
    gpu_memory: String,
    compute_capability: String,
    labels: std::collections::BTreeMap<String, String>,
    capabilities: Vec<String>,
    wait: bool,
}

fn parse<T: for<'de> Deserialize<'de>>(arguments: Option<&JsonObject>) -> Result<T, String> {
    let value = Value::Object(arguments.cloned().unwrap_or_default());
    serde_json::from_value(value).map_err(|e| format!("arguments: {e}"))
}

/// What a send asks to follow to its end: the task, and whether to wait for it.
pub enum Sent {
    /// The answer is ready.
    Answer(Answer),
    /// The task was made; the caller follows it (progress, cancellation) and answers with its
    /// result.
    Follow(Box<TaskView>),
}

/// Runs a `nodes` call.
pub async fn nodes(
    api: &dyn FleetApi,
    arguments: Option<&JsonObject>,
    approvals: &Approvals<'_>,
) -> Sent {
    let args: NodesArgs = match parse(arguments) {
        Ok(args) => args,
        Err(e) => return Sent::Answer(Answer::failed(e)),
    };
    let need = |field: &str, value: &str| {
        if value.trim().is_empty() {
            Err(Answer::failed(format!(
                "{field} is required for action {:?}",
                args.action
            )))
        } else {
            Ok(())
        }
    };
    let answer = match args.action.as_str() {
        "list" => list(api).await,
        "health" => match need("node_id", &args.node_id) {
            Ok(()) => health(api, &args.node_id).await,
            Err(a) => a,
        },
        "capabilities" => match need("node_id", &args.node_id) {
            Ok(()) => match api.get_node(&args.node_id).await {
                Ok(node) => {
                    Answer::ok(describe_capabilities(&node)).with("node_id", node_id(&node))
                }
                Err(e) => Answer::failed(e.message().to_string()),
            },
            Err(a) => a,
        },
        "result" => match need("task_id", &args.task_id) {
            Ok(()) => match api.get_task(&args.task_id).await {
                Ok(task) => task_answer(&task),
                Err(e) => Answer::failed(e.message().to_string()),
            },
            Err(a) => a,
        },
        "send" => return send(api, args, approvals).await,
        "" => Answer::failed("action is required: list, health, send, result or capabilities"),
        other => Answer::failed(format!(
            "action {other:?} is not one of list, health, send, result, capabilities"
        )),
    };
    Sent::Answer(answer)
}

async fn send(api: &dyn FleetApi, args: NodesArgs, approvals: &Approvals<'_>) -> Sent {
    if !args.tool.trim().is_empty() && !args.command.trim().is_empty() {
        return Sent::Answer(Answer::failed("give a tool or a command, not both"));
    }
    let gpu_memory_mb = match args.gpu_memory.trim() {
        "" => 0,
        text => match outpost_sandbox::policy::parse_bytes(text) {
            Ok(bytes) => bytes.div_ceil(1 << 20),
            Err(e) => return Sent::Answer(Answer::failed(format!("gpu_memory: {e}"))),
        },
    };
    let requirements = TaskRequirements {
        gpus: args.gpus,
        gpu_memory_mb,
        compute_capability: args.compute_capability.clone(),
        labels: args.labels.clone().into_iter().collect(),
        capabilities: args.capabilities.clone(),
        node: args.node_id.clone(),
    };
    let (tool, input) = match (args.tool.trim(), args.command.trim(), args.task.trim()) {
        ("", "", "") => {
            return Sent::Answer(Answer::failed(
                "send needs a task (for the node's default handler), a tool or a command",
            ));
        }
        ("", "", _) => match default_handler(api, &args.node_id).await {
            Ok(Handler::Tool(tool)) => (tool, args.task.clone()),
            Ok(Handler::Agent(name)) => {
                return Sent::Answer(to_agent(api, &args.node_id, &name, &args.task).await);
            }
            Err(answer) => return Sent::Answer(answer),
        },
        (_, _, task) if !task.is_empty() => {
            return Sent::Answer(Answer::failed(
                "give a task (for the node's default handler) or a tool or command with its input, not both",
            ));
        }
        (tool, _, _) => (tool.to_string(), args.input.clone()),
    };
    let request = SubmitTaskRequest {
        tool,
        // Not both: refused above.
        command: args.command.clone(),
        input,
        requirements: Some(requirements),
        via: NODES.into(),
        ..SubmitTaskRequest::default()
    };
    match approvals.submit(api, request).await {
        Ok(task) if args.wait => Sent::Follow(Box::new(task)),
        Ok(task) => Sent::Answer(
            Answer::ok(format!(
                "{} ({})",
                progress_message(&task),
                sent_hint(&task)
            ))
            .with("task_id", task.id.clone())
            .with("status", task.status.clone()),
        ),
        Err(e) => Sent::Answer(Answer::failed(e.message().to_string())),
    }
}

fn sent_hint(task: &TaskView) -> String {
    format!("read it with action \"result\", task_id \"{}\"", task.id)
}

enum Handler {
    Tool(String),
    Agent(String),
}

async fn default_handler(api: &dyn FleetApi, node_id: &str) -> Result<Handler, Answer> {
    if node_id.trim().is_empty() {
        return Err(Answer::failed(
            "node_id is required to send a task text (it goes to that node's default handler)",
        ));
    }
    let node = api
        .get_node(node_id)
        .await
        .map_err(|e| Answer::failed(e.message().to_string()))?;
    let handler = node
        .capabilities
        .as_ref()
        .map(|c| c.default_task.trim().to_string())
        .unwrap_or_default();
    match handler.strip_prefix("agent:") {
        _ if handler.is_empty() => Err(Answer::failed(format!(
            "node {node_id} has no default handler for task texts: set `[node] default_task` \
             in its config to a tool or `agent:NAME`, or send a tool or command instead"
        ))),
        Some(agent) => Ok(Handler::Agent(agent.to_string())),
        None => Ok(Handler::Tool(handler)),
    }
}

async fn to_agent(api: &dyn FleetApi, node_id: &str, name: &str, text: &str) -> Answer {
    let agents = match api.list_agents(node_id).await {
        Ok(agents) => agents,
        Err(e) => return Answer::failed(e.message().to_string()),
    };
    let Some(agent) = agents.iter().find(|a| a.name == name) else {
        return Answer::failed(format!(
            "node {node_id}'s default handler is agent {name:?}, and no agent of that name is bound to it"
        ));
    };
    match api.agent_input(&agent.id, text).await {
        Ok(()) => Answer::ok(format!(
            "sent to agent {name} ({}) on node {node_id}; its output: agents action \"output\"",
            agent.id
        ))
        .with("agent_id", agent.id.clone()),
        Err(e) => Answer::failed(e.message().to_string()),
    }
}

/// The answer for a task as it is now: its output once it succeeded, its error once it failed,
/// where it stands while it has not finished.
pub fn task_answer(task: &TaskView) -> Answer {
    let answer = match task.status.as_str() {
        "succeeded" => Answer::ok(task.output.clone()),
        "failed" | "cancelled" => {
            let kind = if task.error_kind.is_empty() {
                task.status.clone()
            } else {
                task.error_kind.clone()
            };
            let message = if task.error_message.is_empty() {
                task.reason.clone()
            } else {
                task.error_message.clone()
            };
            Answer::failed(format!("{kind}: {message}")).with("error_kind", kind)
        }
        _ => Answer::ok(format!("{} (not finished yet)", progress_message(task))),
    };
    answer
        .with("task_id", task.id.clone())
        .with("status", task.status.clone())
        .with("node", task.node.clone())
}

fn node_id(node: &NodeView) -> String {
    node.record
        .as_ref()
        .map(|r| r.id.clone())
        .unwrap_or_default()
}

fn node_line(node: &NodeView) -> (String, String) {
    let record = node.record.clone().unwrap_or_default();
    let address = if record.grpc_target.is_empty() {
        node.session_addr.clone()
    } else {
        record.grpc_target.clone()
    };
    let name = if record.name.is_empty() || record.name == record.id {
        record.id.clone()
    } else {
        format!("{} \"{}\"", record.id, record.name)
    };
    let place = if address.is_empty() {
        String::new()
    } else {
        format!(" ({address})")
    };
    (
        format!("{name}{place} - {}", node.status.to_uppercase()),
        record.id,
    )
}

/// The names a node's capabilities come to: hardware tags, software, GPUs.
fn capability_names(caps: &Capabilities) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if let Some(gpus) = &caps.gpus
        && !gpus.devices.is_empty()
    {
        names.push("gpu".into());
    }
    if let Some(hardware) = &caps.hardware {
        names.extend(hardware.tags.iter().cloned());
    }
    names.extend(caps.software.iter().map(|s| s.name.clone()));
    if caps.sandbox.as_ref().is_some_and(|s| s.native) {
        names.push("native".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

async fn list(api: &dyn FleetApi) -> Answer {
    let nodes = match api.list_nodes().await {
        Ok(nodes) => nodes,
        Err(e) => return Answer::failed(e.message().to_string()),
    };
    if nodes.is_empty() {
        return Answer::ok("No nodes.").with("count", 0);
    }
    let mut text = String::from("Nodes:\n");
    for (i, node) in nodes.iter().enumerate() {
        let (line, _) = node_line(node);
        text.push_str(&format!("  {}. {line}\n", i + 1));
        if let Some(caps) = &node.capabilities {
            let names = capability_names(caps);
            if !names.is_empty() {
                text.push_str(&format!("     Capabilities: {}\n", names.join(", ")));
            }
            if let Some(gpus) = &caps.gpus {
                for gpu in &gpus.devices {
                    text.push_str(&format!(
                        "     GPU {}: {} ({} MiB free of {}, compute {})\n",
                        gpu.index,
                        gpu.name,
                        gpu.memory_free_mb,
                        gpu.memory_total_mb,
                        gpu.compute_capability
                    ));
                }
            }
        }
        if let Some(load) = &node.load {
            text.push_str(&format!(
                "     Load: {:.0}% ({} running)\n",
                load.cpu_percent, load.running_tasks
            ));
        }
    }
    Answer::ok(text.trim_end().to_string()).with("count", nodes.len())
}

async fn health(api: &dyn FleetApi, id: &str) -> Answer {
    match api.node_health(id).await {
        Ok(health) => {
            let mut text = format!(
                "Node {id}: {}\n  Reachable: {}",
                health.status.to_uppercase(),
                if health.reachable { "yes" } else { "no" }
            );
            if health.reachable {
                text.push_str(&format!(" (ping {} µs)", health.ping_rtt_us));
            }
            if !health.error.is_empty() {
                text.push_str(&format!("\n  Error: {}", health.error));
            }
            if health.last_heartbeat_ms > 0 {
                text.push_str(&format!(
                    "\n  Last heartbeat: {} ({} received)",
                    crate::api::views::time_json(health.last_heartbeat_ms)
                        .as_str()
                        .unwrap_or_default(),
                    health.heartbeats_received
                ));
            }
            if let Some(load) = &health.load {
                text.push_str(&format!(
                    "\n  Load: {:.0}% CPU, {} running, memory {} of {} MiB",
                    load.cpu_percent,
                    load.running_tasks,
                    load.memory_used_bytes >> 20,
                    load.memory_total_bytes >> 20
                ));
            }
            text.push_str(&format!("\n  Route: {}", health.route));
            let answer = if health.reachable || health.status == "online" {
                Answer::ok(text)
            } else {
                Answer {
                    output: text,
                    ..Answer::failed(format!("node {id} is unreachable: {}", health.error))
                }
            };
            answer
                .with("status", health.status.clone())
                .with("reachable", health.reachable)
        }
        Err(e) => Answer::failed(e.message().to_string()),
    }
}

fn describe_capabilities(node: &NodeView) -> String {
    let id = node_id(node);
    let Some(caps) = &node.capabilities else {
        return format!("Node {id} has not reported its capabilities yet.");
    };
    let mut text = format!("Node {id}:");
    if let Some(hw) = &caps.hardware {
        text.push_str(&format!(
            "\n  Hardware: {} cores, {} MiB memory, {} {}{}",
            hw.cpu_cores,
            hw.memory_total_bytes >> 20,
            hw.os,
            hw.arch,
            if hw.tags.is_empty() {
                String::new()
            } else {
                format!(" ({})", hw.tags.join(", "))
            }
        ));
    }
    if !caps.software.is_empty() {
        let software: Vec<String> = caps
            .software
            .iter()
            .map(|s| {
                if s.version.is_empty() {
                    s.name.clone()
                } else {
                    format!("{} {}", s.name, s.version)
                }
            })
            .collect();
        text.push_str(&format!("\n  Software: {}", software.join(", ")));
    }
    match &caps.gpus {
        Some(gpus) if !gpus.devices.is_empty() => {
            for gpu in &gpus.devices {
                text.push_str(&format!(
                    "\n  GPU {}: {} ({} MiB total, {} MiB free, compute {}, {}% busy)",
                    gpu.index,
                    gpu.name,
                    gpu.memory_total_mb,
                    gpu.memory_free_mb,
                    gpu.compute_capability,
                    gpu.utilization_percent
                ));
            }
        }
        Some(gpus) if !gpus.unavailable_reason.is_empty() => {
            text.push_str(&format!("\n  GPUs: none ({})", gpus.unavailable_reason));
        }
        _ => text.push_str("\n  GPUs: none"),
    }
    if !caps.labels.is_empty() {
        let labels: std::collections::BTreeMap<_, _> = caps.labels.iter().collect();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        text.push_str(&format!("\n  Labels: {}", labels.join(", ")));
    }
    if let Some(sandbox) = &caps.sandbox {
        text.push_str(&format!(
            "\n  Sandbox: wasm {}, native {}, landlock {} (ABI {})",
            yes(sandbox.wasm),
            yes(sandbox.native),
            sandbox.landlock_enforcement,
            sandbox.landlock_abi
        ));
    }
    if !caps.default_task.is_empty() {
        text.push_str(&format!("\n  Default task handler: {}", caps.default_task));
    }
    text
}

fn yes(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AgentsArgs {
    action: String,
    agent_id: String,
    node_id: String,
    name: String,
    command: String,
    args: Vec<String>,
    tool: String,
    workdir: String,
    workdir_mode: String,
    text: String,
}

fn agent_text(agent: &outpost_proto::v1::AgentView) -> String {
    let what = if agent.tool.is_empty() {
        format!("{} {}", agent.command, agent.args.join(" "))
    } else {
        format!("tool {}", agent.tool)
    };
    let mut text = format!(
        "{} \"{}\" on node {}: {} ({})",
        agent.id,
        agent.name,
        agent.node,
        agent.status,
        what.trim()
    );
    if let Some(code) = agent.exit_code {
        text.push_str(&format!(", exit code {code}"));
    }
    if !agent.reason.is_empty() {
        text.push_str(&format!(", {}", agent.reason));
    }
    text
}

/// Runs an `agents` call.
pub async fn agents(api: &dyn FleetApi, arguments: Option<&JsonObject>) -> Answer {
    let args: AgentsArgs = match parse(arguments) {
        Ok(args) => args,
        Err(e) => return Answer::failed(e),
    };
    let need_id = || {
        if args.agent_id.trim().is_empty() {
            Err(Answer::failed(format!(
                "agent_id is required for action {:?}",
                args.action
            )))
        } else {
            Ok(args.agent_id.as_str())
        }
    };
    let shown = |result: Result<outpost_proto::v1::AgentView, tonic::Status>| match result {
        Ok(agent) => Answer::ok(agent_text(&agent))
            .with("agent_id", agent.id.clone())
            .with("status", agent.status.clone()),
        Err(e) => Answer::failed(e.message().to_string()),
    };
    match args.action.as_str() {
        "list" => match api.list_agents(&args.node_id).await {
            Ok(agents) if agents.is_empty() => Answer::ok("No agents."),
            Ok(agents) => {
                let lines: Vec<String> = agents.iter().map(agent_text).collect();
                Answer::ok(lines.join("\n")).with("count", agents.len())
            }
            Err(e) => Answer::failed(e.message().to_string()),
        },
        "get" => match need_id() {
            Ok(id) => shown(api.get_agent(id).await),
            Err(a) => a,
        },
        "start" => match need_id() {
            Ok(id) => shown(api.start_agent(id).await),
            Err(a) => a,
        },
        "stop" => match need_id() {
            Ok(id) => shown(api.stop_agent(id).await),
            Err(a) => a,
        },
        "input" => match need_id() {
            Ok(id) => match api.agent_input(id, &args.text).await {
                Ok(()) => Answer::ok(format!("sent to {id}")),
                Err(e) => Answer::failed(e.message().to_string()),
            },
            Err(a) => a,
        },
        "output" => match need_id() {
            Ok(id) => match api.agent_output(id).await {
                Ok(entries) => {
                    let text: String = entries
                        .iter()
                        .filter(|e| e.stream != "event")
                        .map(|e| e.data.as_str())
                        .collect();
                    Answer::ok(text).with("entries", entries.len())
                }
                Err(e) => Answer::failed(e.message().to_string()),
            },
            Err(a) => a,
        },
        "create" => {
            let request = CreateAgentRequest {
                name: args.name.clone(),
                node: args.node_id.clone(),
                command: args.command.clone(),
                args: args.args.clone(),
                tool: args.tool.clone(),
                workdir: args.workdir.clone(),
                workdir_mode: args.workdir_mode.clone(),
                ..CreateAgentRequest::default()
            };
            shown(api.create_agent(request).await)
        }
        "" => Answer::failed("action is required: list, get, create, start, stop, input or output"),
        other => Answer::failed(format!(
            "action {other:?} is not one of list, get, create, start, stop, input, output"
        )),
    }
}
