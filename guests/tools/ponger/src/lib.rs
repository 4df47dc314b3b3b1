//! `ponger`: an actor agent (the `actor` world). Each message it gets is answered to its sender
//! with `{"pong": <the payload>}`; a payload naming `"fail"` is refused (so it comes again and,
//! unacked often enough, goes to the dead letters), and one naming `"fan"` also greets the team
//! `pingers`. As a tool, `invoke` answers its input with `pong: <input>`.

wit_bindgen::generate!({ path: "../../../wit", world: "actor" });

use outpost::guest::host::{Level, log};
use outpost::guest::mailbox::send;

struct Ponger;

impl Guest for Ponger {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "ponger".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Answers every message with a pong.".into(),
            input_schema: "{}".into(),
        }
    }

    fn invoke(input: String) -> Result<String, ToolError> {
        // Outside on-message the mailbox refuses: a tool call sends nothing.
        match send("anyone", "{}") {
            Err(_) => Ok(format!("pong: {input}")),
            Ok(()) => Err(ToolError::Failed("mailbox.send worked outside on-message".into())),
        }
    }

    fn on_message(message: Message) -> Result<(), String> {
        log(
            Level::Info,
            &format!("message {} from {}", message.id, message.sender),
        );
        if message.payload.contains("\"fail\"") {
            return Err(format!("refusing message {}", message.id));
        }
        send(&message.sender, &format!("{{\"pong\":{}}}", message.payload))?;
        if message.payload.contains("\"fan\"") {
            send("team:pingers", "{\"hello\":\"team\"}")?;
        }
        if send("x", "not json").is_ok() {
            return Err("a payload that is not JSON was queued".into());
        }
        Ok(())
    }
}

export!(Ponger);
