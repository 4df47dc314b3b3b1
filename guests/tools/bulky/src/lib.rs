//! `bulky`: a large component (thousands of generated functions) for the cold-compile benchmark.
//! Input: a number; output: the result of the function it selects.

wit_bindgen::generate!({ path: "../../../wit", world: "tool" });

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

struct Bulky;

impl Guest for Bulky {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "bulky".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "A large component for compile-time benchmarks.".into(),
            input_schema: r#"{"type":"integer","minimum":0}"#.into(),
        }
    }

    fn invoke(input: String) -> Result<String, ToolError> {
        let n: u64 = input
            .trim()
            .parse()
            .map_err(|err| ToolError::InvalidInput(format!("number: {err}")))?;
        let f = FUNCTIONS[(n as usize) % FUNCTIONS.len()];
        Ok(f(n).to_string())
    }
}

export!(Bulky);
