//! What callers hand the task engine: a [`SubmitSpec`] with its [`RequirementsSpec`] (the same
//! fields on REST, gRPC and the CLI), checked by [`SubmitSpec::validate`] before anything is
//! stored, and the [`TaskError`] every task call returns.

use std::collections::BTreeMap;

use outpost_proto::v1::TaskRequirements;
use serde::{Deserialize, Serialize};

use crate::store::StoreError;
use crate::work::scheduler::{ComputeCapability, Requirements};

/// Largest task input accepted.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Longest idempotency key.
const MAX_KEY_BYTES: usize = 200;
/// Longest per-attempt timeout a task may ask for: the sandbox's wall-time cap, which every
/// node enforces.
const MAX_TIMEOUT_MS: u64 = outpost_sandbox::policy::MAX_TIMEOUT.as_millis() as u64;
/// Most placements a task may ask for.
const MAX_ATTEMPTS: u32 = 100;
/// Longest native command accepted.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Longest workdir accepted.
const MAX_WORKDIR_BYTES: usize = 4096;
/// The capability a node needs to run native commands (its launcher answered).
pub const NATIVE_CAPABILITY: &str = "native";

/// Requirements as JSON (REST bodies, the store) — the same fields as the protobuf message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequirementsSpec {
    /// GPUs: 0, a share below 1 (0.5), or whole devices.
    pub gpus: f64,
    /// Free memory per assigned GPU, MiB.
    pub gpu_memory_mb: u64,
    /// Lowest compute capability, "8.0".
    #[serde(skip_serializing_if = "String::is_empty")]
    pub compute_capability: String,
    /// Labels the node must have.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Capabilities the node must have.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Pinned node.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
}

impl RequirementsSpec {
    /// Checks the fields and converts them for the scheduler.
    pub fn to_requirements(&self) -> Result<Requirements, String> {
        let gpu_milli = Requirements::gpu_milli_from_count(self.gpus)?;
        let min_compute_capability = if self.compute_capability.trim().is_empty() {
            None
        } else {
            Some(
                ComputeCapability::parse(&self.compute_capability)
                    .map_err(|e| format!("compute_capability: {e}"))?,
            )
        };
        let req = Requirements {
            gpu_milli,
            gpu_memory_mb: self.gpu_memory_mb,
            min_compute_capability,
            labels: self.labels.clone(),
            capabilities: self.capabilities.clone(),
            node: (!self.node.is_empty()).then(|| self.node.clone()),
        };
        req.validate()?;
        Ok(req)
    }

    /// These requirements with what a tool declares added: the larger GPU count, memory and
    /// compute capability, the labels of both (the caller's value where both name one) and the
    /// capabilities of both.
    pub fn with_declared(&self, declared: &RequirementsSpec) -> RequirementsSpec {
        let capability = |text: &str| ComputeCapability::parse(text).ok();
        let compute_capability = match (
            capability(&self.compute_capability),
            capability(&declared.compute_capability),
        ) {
            (Some(mine), Some(theirs)) if theirs > mine => declared.compute_capability.clone(),
            (None, Some(_)) if self.compute_capability.trim().is_empty() => {
                declared.compute_capability.clone()
            }
            _ => self.compute_capability.clone(),
        };
        let mut labels = declared.labels.clone();
        labels.extend(self.labels.clone());
        let mut capabilities = self.capabilities.clone();
        for capability in &declared.capabilities {
            if !capabilities.contains(capability) {
                capabilities.push(capability.clone());
            }
        }
        RequirementsSpec {
            gpus: self.gpus.max(declared.gpus),
            gpu_memory_mb: self.gpu_memory_mb.max(declared.gpu_memory_mb),
            compute_capability,
            labels,
            capabilities,
            node: self.node.clone(),
        }
    }

    /// From the protobuf message.
    pub fn from_proto(req: Option<&TaskRequirements>) -> Self {
        let Some(req) = req else {
            return Self::default();
        };
        Self {
            gpus: req.gpus,
            gpu_memory_mb: req.gpu_memory_mb,
            compute_capability: req.compute_capability.clone(),
            labels: req.labels.clone().into_iter().collect(),
            capabilities: req.capabilities.clone(),
            node: req.node.clone(),
        }
    }

    /// To the protobuf message.
    pub fn to_proto(&self) -> TaskRequirements {
        TaskRequirements {
            gpus: self.gpus,
            gpu_memory_mb: self.gpu_memory_mb,
            compute_capability: self.compute_capability.clone(),
            labels: self.labels.clone().into_iter().collect(),
            capabilities: self.capabilities.clone(),
            node: self.node.clone(),
        }
    }
}

/// A submit, from any surface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitSpec {
    /// Tool name.
    pub tool: String,
    /// Native command, run by `/bin/sh -c` on the node.
    pub command: String,
    /// Working directory of a native command, inside the node's safe_paths (empty: its first).
    pub workdir: String,
    /// Input text.
    pub input: String,
    /// Requirements.
    pub requirements: RequirementsSpec,
    /// Retries with the same key return the first task.
    pub idempotency_key: String,
    /// Placements allowed (0: the hub default).
    pub max_attempts: u32,
    /// Wall-time limit per attempt (0: the tool policy's).
    pub timeout_ms: u64,
}

/// Why a task call failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such task (or tool).
    #[error("{0}")]
    NotFound(String),
    /// The task is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something inside the hub failed.
    #[error("{0}")]
    Internal(String),
}

impl SubmitSpec {
    /// Checks everything that needs no store: a tool or a command (not both), input, command,
    /// workdir and key sizes, attempts, timeout and requirements. The requirements come back in
    /// the scheduler's terms; a command adds the `native` capability to them.
    pub fn validate(&self) -> Result<Requirements, TaskError> {
        let invalid = |m: String| TaskError::Invalid(m);
        match (self.tool.trim().is_empty(), self.command.trim().is_empty()) {
            (true, true) => return Err(invalid("a task needs a tool (or a command)".into())),
            (false, false) => return Err(invalid("give a tool or a command, not both".into())),
            (true, false) => self.validate_native()?,
            (false, true) => {
                if !self.workdir.is_empty() {
                    return Err(invalid(
                        "workdir: only a native command has one (a tool's directories are the \
                         grants in its policy)"
                            .into(),
                    ));
                }
            }
        }
        if self.input.len() > MAX_INPUT_BYTES {
            return Err(invalid(format!(
                "input: {} bytes is more than the {MAX_INPUT_BYTES} allowed",
                self.input.len()
            )));
        }
        if self.idempotency_key.len() > MAX_KEY_BYTES {
            return Err(invalid(format!(
                "idempotency_key: longer than {MAX_KEY_BYTES} bytes"
            )));
        }
        if self.max_attempts > MAX_ATTEMPTS {
            return Err(invalid(format!("max_attempts: at most {MAX_ATTEMPTS}")));
        }
        if self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(invalid(format!(
                "timeout_ms: at most {MAX_TIMEOUT_MS} (1 hour, what a node's sandbox allows)"
            )));
        }
        let mut requirements = self
            .requirements
            .to_requirements()
            .map_err(|e| invalid(format!("requirements: {e}")))?;
        if !self.command.trim().is_empty()
            && !requirements
                .capabilities
                .iter()
                .any(|c| c == NATIVE_CAPABILITY)
        {
            requirements.capabilities.push(NATIVE_CAPABILITY.into());
        }
        Ok(requirements)
    }

    fn validate_native(&self) -> Result<(), TaskError> {
        let invalid = |m: String| TaskError::Invalid(m);
        if self.command.len() > MAX_COMMAND_BYTES {
            return Err(invalid(format!(
                "command: {} bytes is more than the {MAX_COMMAND_BYTES} allowed",
                self.command.len()
            )));
        }
        if self.command.contains('\0') {
            return Err(invalid("command: contains a NUL byte".into()));
        }
        if !self.workdir.is_empty() {
            if self.workdir.len() > MAX_WORKDIR_BYTES || self.workdir.contains('\0') {
                return Err(invalid(format!(
                    "workdir: at most {MAX_WORKDIR_BYTES} bytes, no NUL"
                )));
            }
            if !self.workdir.starts_with('/') {
                return Err(invalid(format!(
                    "workdir: {:?} must be an absolute path on the node",
                    self.workdir
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tools_declared_requirements_add_to_the_callers() {
        let declared = RequirementsSpec {
            gpus: 1.0,
            gpu_memory_mb: 16_384,
            compute_capability: "8.0".into(),
            labels: BTreeMap::from([("zone".into(), "lab".into()), ("tier".into(), "a".into())]),
            capabilities: vec!["cuda".into()],
            node: String::new(),
        };
        let none = RequirementsSpec::default().with_declared(&declared);
        assert_eq!(none, declared);
        let caller = RequirementsSpec {
            gpus: 2.0,
            gpu_memory_mb: 1024,
            compute_capability: "7.5".into(),
            labels: BTreeMap::from([("tier".into(), "b".into())]),
            capabilities: vec!["python".into(), "cuda".into()],
            node: "n-1".into(),
        };
        let both = caller.with_declared(&declared);
        assert_eq!(both.gpus, 2.0);
        assert_eq!(both.gpu_memory_mb, 16_384);
        assert_eq!(both.compute_capability, "8.0");
        assert_eq!(both.labels["tier"], "b");
        assert_eq!(both.labels["zone"], "lab");
        assert_eq!(both.capabilities, ["python", "cuda"]);
        assert_eq!(both.node, "n-1");
        let higher = RequirementsSpec {
            compute_capability: "9.0".into(),
            ..RequirementsSpec::default()
        };
        assert_eq!(higher.with_declared(&declared).compute_capability, "9.0");
    }

    #[test]
    fn submits_are_checked_field_by_field() {
        let ok = SubmitSpec {
            tool: "echo".into(),
            ..SubmitSpec::default()
        };
        assert!(ok.validate().is_ok());
        let native = SubmitSpec {
            command: "ls".into(),
            workdir: "/data/project".into(),
            ..SubmitSpec::default()
        };
        let requirements = native.validate().unwrap();
        assert_eq!(requirements.capabilities, [NATIVE_CAPABILITY]);
        let cases: [(SubmitSpec, &str); 10] = [
            (SubmitSpec::default(), "needs a tool"),
            (
                SubmitSpec {
                    command: "ls".into(),
                    ..ok.clone()
                },
                "not both",
            ),
            (
                SubmitSpec {
                    workdir: "/data".into(),
                    ..ok.clone()
                },
                "only a native command",
            ),
            (
                SubmitSpec {
                    workdir: "data/project".into(),
                    ..native.clone()
                },
                "absolute",
            ),
            (
                SubmitSpec {
                    command: "echo \0".into(),
                    ..native.clone()
                },
                "NUL",
            ),
            (
                SubmitSpec {
                    command: "x".repeat(MAX_COMMAND_BYTES + 1),
                    ..native.clone()
                },
                "command:",
            ),
            (
                SubmitSpec {
                    input: "x".repeat(MAX_INPUT_BYTES + 1),
                    ..ok.clone()
                },
                "input:",
            ),
            (
                SubmitSpec {
                    idempotency_key: "k".repeat(MAX_KEY_BYTES + 1),
                    ..ok.clone()
                },
                "idempotency_key:",
            ),
            (
                SubmitSpec {
                    max_attempts: MAX_ATTEMPTS + 1,
                    ..ok.clone()
                },
                "max_attempts: at most 100",
            ),
            (
                SubmitSpec {
                    requirements: RequirementsSpec {
                        gpus: -1.0,
                        ..RequirementsSpec::default()
                    },
                    ..ok.clone()
                },
                "requirements:",
            ),
        ];
        for (spec, expected) in cases {
            let err = spec.validate().expect_err(expected).to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
