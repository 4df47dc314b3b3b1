//! `busy`: a CPU-bound tool with no host calls. Input: a number of rounds; output: a checksum.
//! Used to measure what fuel metering and epoch checks cost.

wit_bindgen::generate!({ path: "../../../wit", world: "tool" });

struct Busy;

fn rounds(n: u64) -> u64 {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut acc = 0_u64;
    for i in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        acc = acc.wrapping_add(state.rotate_left((i % 63) as u32));
        if acc % 7 == 3 {
            acc ^= i;
        }
    }
    acc
}

impl Guest for Busy {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "busy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Spins for the given number of rounds and returns a checksum.".into(),
            input_schema: r#"{"type":"integer","minimum":0}"#.into(),
        }
    }

    fn invoke(input: String) -> Result<String, ToolError> {
        let n: u64 = input
            .trim()
            .parse()
            .map_err(|err| ToolError::InvalidInput(format!("rounds: {err}")))?;
        Ok(rounds(n).to_string())
    }
}

export!(Busy);
