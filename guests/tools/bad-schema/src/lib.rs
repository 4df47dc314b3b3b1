//! `bad-schema`: describes an input schema no validator could use (`"type": "strin"`); the hub
//! must refuse to take it.

wit_bindgen::generate!({ path: "../../../wit", world: "tool" });

struct BadSchema;

impl Guest for BadSchema {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "bad-schema".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Describes a broken input schema.".into(),
            input_schema: r#"{"type":"object","properties":{"n":{"type":"strin"}}}"#.into(),
        }
    }

    fn invoke(input: String) -> Result<String, ToolError> {
        Ok(input)
    }
}

export!(BadSchema);
