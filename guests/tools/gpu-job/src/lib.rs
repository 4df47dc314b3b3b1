//! `gpu-job`: the demo's GPU task. Reports which GPUs the node assigned to it (the
//! `CUDA_VISIBLE_DEVICES` the hub's placement set) next to its input.

wit_bindgen::generate!({ path: "../../../wit", world: "tool" });

use outpost::guest::host::{Level, log};

struct GpuJob;

impl Guest for GpuJob {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "gpu-job".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Reports the GPUs assigned to it (CUDA_VISIBLE_DEVICES) and its input."
                .into(),
            input_schema: r#"{"type":"string"}"#.into(),
        }
    }

    fn invoke(input: String) -> Result<String, ToolError> {
        match std::env::var("CUDA_VISIBLE_DEVICES") {
            Ok(devices) if !devices.is_empty() => {
                log(Level::Info, &format!("assigned GPUs {devices}"));
                Ok(format!("{input}: ran with CUDA_VISIBLE_DEVICES={devices}"))
            }
            _ => Err(ToolError::Failed(
                "no GPU assigned: submit this tool with --gpus".into(),
            )),
        }
    }
}

export!(GpuJob);
