//! A pushed tool as an MCP tool: its schema as MCP wants it (arguments are always an object),
//! the task input made of a call's arguments, and the tool result made of the finished task.
//!
//! A tool whose input schema describes an object takes the call's arguments as its input, as
//! JSON text. Any other tool (most take text: `{"type":"string"}`) is offered with one argument,
//! `input`, holding what its schema describes; a text value is passed as is, anything else as
//! JSON text. Arguments are checked against the schema before a task is made of them.

use std::sync::Arc;

use outpost_proto::v1::{TaskView, ToolView};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{Map, Value, json};

use crate::work::schema;

/// The argument that carries the input of a tool whose schema is not an object.
pub const INPUT_ARGUMENT: &str = "input";

/// How a call's arguments become the task's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputShape {
    /// The arguments object is the input (as JSON text).
    Whole,
    /// The `input` argument is (text as is, anything else as JSON text).
    Field,
}

/// The schema a tool describes (checked when it was pushed; an older, unchecked one that does
/// not parse is offered as text input).
fn described(tool: &ToolView) -> Value {
    schema::check(&tool.input_schema).unwrap_or_else(|_| json!({"type": "string"}))
}

/// The MCP arguments schema for a tool's own schema, and how arguments become its input.
pub fn arguments_schema(described: &Value) -> (JsonObject, InputShape) {
    if schema::is_object_schema(described)
        && let Value::Object(object) = described
    {
        return (object.clone(), InputShape::Whole);
    }
    let mut wrapped = Map::new();
    wrapped.insert("type".into(), json!("object"));
    wrapped.insert(
        "properties".into(),
        json!({ INPUT_ARGUMENT: described.clone() }),
    );
    wrapped.insert("required".into(), json!([INPUT_ARGUMENT]));
    wrapped.insert("additionalProperties".into(), json!(false));
    (wrapped, InputShape::Field)
}

/// The MCP tool for a pushed tool.
pub fn mcp_tool(tool: &ToolView) -> Tool {
    let (input_schema, _) = arguments_schema(&described(tool));
    let description = match (tool.description.trim(), tool.version.trim()) {
        ("", "") => format!("Outpost tool {}", tool.name),
        ("", version) => format!("Outpost tool {} {version}", tool.name),
        (text, "") => text.to_string(),
        (text, version) => format!("{text} (version {version})"),
    };
    let mut mcp = Tool::new_with_raw(
        tool.name.clone(),
        Some(description.into()),
        Arc::new(input_schema),
    );
    let policy = outpost_sandbox::ToolPolicy::from_toml(&tool.policy_toml, &tool.name).ok();
    let mut annotations = ToolAnnotations::default();
    annotations.title = Some(tool.name.clone());
    // A tool runs in a sandbox on some node: it reaches the network only by its policy's grants.
    annotations.open_world_hint = Some(policy.as_ref().is_some_and(|p| !p.allow_hosts.is_empty()));
    mcp.annotations = Some(annotations);
    let mut meta = rmcp::model::MetaObject::new();
    meta.insert("outpost/digest".into(), json!(tool.digest));
    if let Some(policy) = &policy
        && policy.placement != outpost_sandbox::Placement::default()
    {
        let declared = crate::work::tools::placement_spec(&policy.placement);
        meta.insert("outpost/requirements".into(), json!(declared));
    }
    if !tool.publisher.is_empty() {
        meta.insert("outpost/publisher".into(), json!(tool.publisher));
    }
    mcp.meta = Some(meta);
    mcp
}

/// Most tool definitions a [`Catalog`] keeps.
const CATALOG_ENTRIES: usize = 8192;

/// MCP definitions of pushed tools, kept by name, digest and push time, so `tools/list` does not
/// parse every tool's policy and schema again on every call.
#[derive(Debug, Default)]
pub struct Catalog {
    tools: parking_lot::Mutex<std::collections::HashMap<(String, String, i64), Tool>>,
}

impl Catalog {
    /// The MCP tool for `tool`, made once per version of it.
    pub fn tool(&self, tool: &ToolView) -> Tool {
        let key = (tool.name.clone(), tool.digest.clone(), tool.updated_at_ms);
        if let Some(known) = self.tools.lock().get(&key) {
            return known.clone();
        }
        let made = mcp_tool(tool);
        let mut tools = self.tools.lock();
        if tools.len() >= CATALOG_ENTRIES {
            tools.clear();
        }
        tools.insert(key, made.clone());
        made
    }
}

/// The task input for a call of `tool` with `arguments`, or why the arguments do not fit its
/// schema.
pub fn input_of(tool: &ToolView, arguments: Option<&JsonObject>) -> Result<String, String> {
    let described = described(tool);
    let (_, shape) = arguments_schema(&described);
    let empty = Map::new();
    let arguments = arguments.unwrap_or(&empty);
    match shape {
        InputShape::Whole => {
            let value = Value::Object(arguments.clone());
            schema::validate(&described, &value)
                .map_err(|e| e.replacen("the input", "the arguments", 1))?;
            serde_json::to_string(&value).map_err(|e| e.to_string())
        }
        InputShape::Field => {
            if let Some(other) = arguments.keys().find(|k| k.as_str() != INPUT_ARGUMENT) {
                return Err(format!(
                    "{other:?} is not an argument of {} (it takes {INPUT_ARGUMENT:?})",
                    tool.name
                ));
            }
            let Some(input) = arguments.get(INPUT_ARGUMENT) else {
                return Err(format!("{INPUT_ARGUMENT:?} is required"));
            };
            schema::validate(&described, input)
                .map_err(|e| e.replacen("the input", &format!("/{INPUT_ARGUMENT}"), 1))?;
            Ok(match input {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
        }
    }
}

/// The tool result for a finished task: its output, or the typed error it ended with
/// (`out_of_fuel`, `timeout`, …) as an error result. `structuredContent` carries the task's
/// id, node and, for errors, `{"kind","message"}`.
pub fn result_of(task: &TaskView) -> CallToolResult {
    let mut details = json!({
        "task_id": task.id,
        "status": task.status,
        "node": task.node,
        "duration_us": task.duration_us,
        "fuel_used": task.fuel_used,
    });
    match task.status.as_str() {
        "succeeded" => {
            details["output"] = json!(task.output);
            let mut result = CallToolResult::success(vec![ContentBlock::text(task.output.clone())]);
            result.structured_content = Some(details);
            result
        }
        status => {
            let (kind, message) = if task.error_kind.is_empty() {
                (status.to_string(), task.reason.clone())
            } else {
                (task.error_kind.clone(), task.error_message.clone())
            };
            details["error"] = json!({"kind": kind, "message": message});
            let mut result =
                CallToolResult::error(vec![ContentBlock::text(format!("{kind}: {message}"))]);
            result.structured_content = Some(details);
            result
        }
    }
}

/// What to tell the caller about a task that has not finished: where it is and why.
pub fn progress_message(task: &TaskView) -> String {
    match task.status.as_str() {
        "queued" if task.reason.is_empty() => format!("task {} queued", task.id),
        "queued" => format!("task {} queued: {}", task.id, task.reason),
        "placed" => format!("task {} placed on node {}", task.id, task.node),
        "running" => format!("task {} running on node {}", task.id, task.node),
        other => format!("task {} {other}", task.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(schema: &str) -> ToolView {
        ToolView {
            name: "t".into(),
            input_schema: schema.into(),
            description: "does t".into(),
            version: "1.0".into(),
            ..ToolView::default()
        }
    }

    fn args(value: Value) -> JsonObject {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn a_text_tool_takes_one_input_argument() {
        let t = tool(r#"{"type":"string","maxLength":5}"#);
        let mcp = mcp_tool(&t);
        assert_eq!(mcp.input_schema["type"], "object");
        assert_eq!(mcp.input_schema["properties"]["input"]["type"], "string");
        assert_eq!(mcp.input_schema["required"], json!(["input"]));
        assert_eq!(mcp.description.as_deref(), Some("does t (version 1.0)"));
        assert_eq!(
            input_of(&t, Some(&args(json!({"input": "hi"})))).unwrap(),
            "hi"
        );
        let cases = [
            (json!({}), "\"input\" is required"),
            (json!({"input": 5}), "/input: expected string, got a number"),
            (json!({"input": "toolong"}), "/input: 7 characters"),
            (
                json!({"input": "a", "x": 1}),
                "\"x\" is not an argument of t",
            ),
        ];
        for (value, needle) in cases {
            let err = input_of(&t, Some(&args(value.clone()))).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
        let n = tool(r#"{"type":"integer","minimum":0}"#);
        assert_eq!(
            input_of(&n, Some(&args(json!({"input": 42})))).unwrap(),
            "42"
        );
    }

    #[test]
    fn an_object_tool_takes_the_arguments_as_json() {
        let t = tool(r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#);
        let mcp = mcp_tool(&t);
        assert_eq!(mcp.input_schema["properties"]["n"]["type"], "integer");
        assert_eq!(
            input_of(&t, Some(&args(json!({"n": 3})))).unwrap(),
            r#"{"n":3}"#
        );
        assert!(
            input_of(&t, None)
                .unwrap_err()
                .contains("\"n\" is required")
        );
    }

    #[test]
    fn results_carry_the_output_or_the_typed_error() {
        let done = TaskView {
            id: "task-1".into(),
            status: "succeeded".into(),
            node: "n-1".into(),
            output: "hello".into(),
            ..TaskView::default()
        };
        let ok = result_of(&done);
        assert_eq!(ok.is_error, Some(false));
        assert_eq!(ok.structured_content.as_ref().unwrap()["node"], "n-1");
        let fuel = TaskView {
            status: "failed".into(),
            error_kind: "out_of_fuel".into(),
            error_message: "used 1000 fuel".into(),
            ..done.clone()
        };
        let err = result_of(&fuel);
        assert_eq!(err.is_error, Some(true));
        assert_eq!(
            err.structured_content.as_ref().unwrap()["error"]["kind"],
            "out_of_fuel"
        );
        let cancelled = TaskView {
            status: "cancelled".into(),
            reason: "cancelled by the caller".into(),
            ..done
        };
        let err = result_of(&cancelled);
        assert_eq!(
            err.structured_content.as_ref().unwrap()["error"]["kind"],
            "cancelled"
        );
    }
}
