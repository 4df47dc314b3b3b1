//! `add`: sums two integers given as a JSON object — the guest whose input schema describes an
//! object, so MCP clients pass its arguments as they are.

wit_bindgen::generate!({ path: "../../../wit", world: "tool" });

struct Add;

fn field(input: &str, name: &str) -> Option<i64> {
    // The input is the JSON text of {"a": N, "b": N}; a guest this small parses it by hand.
    let key = format!("\"{name}\":");
    let start = input.find(&key)? + key.len();
    let rest = input[start..].trim_start();
    let end = rest
        .find(|c: char| c != '-' && !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Guest for Add {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "add".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Adds two integers.".into(),
            input_schema: r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"],"additionalProperties":false}"#.into(),
        }
    }

    fn invoke(input: String) -> Result<String, ToolError> {
        match (field(&input, "a"), field(&input, "b")) {
            (Some(a), Some(b)) => a
                .checked_add(b)
                .map(|sum| sum.to_string())
                .ok_or_else(|| ToolError::InvalidInput("the sum overflows".into())),
            _ => Err(ToolError::InvalidInput(format!(
                "expected {{\"a\": N, \"b\": N}}, got {input}"
            ))),
        }
    }
}

export!(Add);
