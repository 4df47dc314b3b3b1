//! `echo`: returns its input unchanged. The smallest useful tool, and the subject of the warm-call
//! benchmark.

wit_bindgen::generate!({ path: "../../../wit", world: "tool" });

struct Echo;

impl Guest for Echo {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "echo".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Returns its input unchanged.".into(),
            input_schema: r#"{"type":"string"}"#.into(),
        }
    }

    fn invoke(input: String) -> Result<String, ToolError> {
        Ok(input)
    }
}

export!(Echo);
