//! Typed results of loading and calling a sandboxed tool.
//!
//! Every way a call can end is one [`ErrorKind`]; the CLI prints it as `error.kind` and exits 3 for
//! the sandbox and policy stops (everything but [`ErrorKind::ToolError`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a load or a call did not produce an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The wall-time limit was reached (epoch deadline, or a host call that blocked too long).
    Timeout,
    /// The fuel (CPU) budget ran out.
    OutOfFuel,
    /// The tool tried to grow its memory or tables past the limit.
    MemoryLimit,
    /// The sandbox refused something the tool tried (reported by the tool, which saw the refusal).
    PermissionDenied,
    /// stdout, stderr or the returned value went past the output limit.
    OutputLimit,
    /// The tool trapped: a panic, `unreachable`, stack exhaustion, an explicit exit.
    Trap,
    /// The bytes are not a component, or not one this node can run (missing imports, wrong world).
    InvalidComponent,
    /// The policy does not parse, or grants something the node does not allow.
    PolicyInvalid,
    /// The tool ran and reported a failure of its own (`invalid-input` or `failed`).
    ToolError,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Timeout,
        ErrorKind::OutOfFuel,
        ErrorKind::MemoryLimit,
        ErrorKind::PermissionDenied,
        ErrorKind::OutputLimit,
        ErrorKind::Trap,
        ErrorKind::InvalidComponent,
        ErrorKind::PolicyInvalid,
        ErrorKind::ToolError,
    ];

    /// The wire name (`out_of_fuel`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::OutOfFuel => "out_of_fuel",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::OutputLimit => "output_limit",
            ErrorKind::Trap => "trap",
            ErrorKind::InvalidComponent => "invalid_component",
            ErrorKind::PolicyInvalid => "policy_invalid",
            ErrorKind::ToolError => "tool_error",
        }
    }

    /// Whether the sandbox or the policy stopped the work (CLI exit code 3), as opposed to the
    /// tool reporting its own failure.
    pub fn is_sandbox_stop(self) -> bool {
        self != ErrorKind::ToolError
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A load or call that ended without output: its kind and a message that names the cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct SandboxError {
    /// What stopped it.
    pub kind: ErrorKind,
    /// The cause, in words (limit values, paths, the trap message).
    pub message: String,
}

impl SandboxError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Severity of a log line written through `outpost:guest/host.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Detail for debugging.
    Debug,
    /// Normal progress.
    Info,
    /// Something odd.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The lowercase name (`info`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One log line written by the tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// Text.
    pub message: String,
}

/// Everything one call produced, whether it succeeded or not.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// The tool's output, or why there is none.
    pub result: Result<String, SandboxError>,
    /// Captured stdout (up to the output limit).
    pub stdout: String,
    /// Captured stderr (up to the output limit).
    pub stderr: String,
    /// Log lines, in order.
    pub logs: Vec<LogRecord>,
    /// Log lines dropped because the output limit was reached.
    pub logs_dropped: u64,
    /// Fuel the call used; `None` when fuel metering is off.
    pub fuel_used: Option<u64>,
    /// Wall time from instantiation to the end of the call.
    pub duration: Duration,
    /// What an actor's `on-message` call queued with `mailbox.send`, in order (empty for
    /// other calls): to be sent only because the call succeeded.
    pub sent: Vec<QueuedMessage>,
}

/// A message handed to an actor agent's `on-message`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActorMessage {
    /// Its id in the mailbox.
    pub id: i64,
    /// The sending actor.
    pub sender: String,
    /// The team it was sent to, or empty.
    pub team: String,
    /// JSON text.
    pub payload: String,
}

/// A message an actor agent queued with `mailbox.send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// An actor id, `agent:NAME` or `team:NAME`.
    pub to: String,
    /// JSON text.
    pub payload: String,
}

/// What a tool says about itself (`describe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolDescription {
    /// Short name.
    pub name: String,
    /// Version.
    pub version: String,
    /// One line for humans.
    pub description: String,
    /// JSON Schema of the input, as JSON text.
    pub input_schema: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn kinds_serialise_to_their_wire_names() {
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: ErrorKind = serde_json::from_str(&json).unwrap();
            assert_eq!(back, kind);
        }
        assert!(!ErrorKind::ToolError.is_sandbox_stop());
        assert!(ErrorKind::OutOfFuel.is_sandbox_stop());
    }
}
