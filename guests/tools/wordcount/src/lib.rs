//! `wordcount`: counts lines, words and bytes of the files it is given, one path per input line.
//! A directory counts every regular file directly inside it. It can read only what its policy
//! grants; anything else comes back as `permission-denied`.

use std::fmt::Write as _;
use std::io::ErrorKind;

wit_bindgen::generate!({ path: "../../../wit", world: "tool" });

use outpost::guest::host::{Level, log};

struct WordCount;

struct Counts {
    path: String,
    lines: u64,
    words: u64,
    bytes: u64,
}

fn io_error(path: &str, err: std::io::Error) -> ToolError {
    let message = format!("{path}: {err}");
    match err.kind() {
        ErrorKind::PermissionDenied | ErrorKind::NotFound | ErrorKind::ReadOnlyFilesystem => {
            ToolError::PermissionDenied(message)
        }
        _ => ToolError::Failed(message),
    }
}

fn count_file(path: &str) -> Result<Counts, ToolError> {
    let bytes = std::fs::read(path).map_err(|err| io_error(path, err))?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(Counts {
        path: path.to_owned(),
        lines: text.lines().count() as u64,
        words: text.split_whitespace().count() as u64,
        bytes: bytes.len() as u64,
    })
}

fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Guest for WordCount {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "wordcount".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Counts lines, words and bytes of granted files (one path per line)."
                .into(),
            input_schema: r#"{"type":"string","description":"paths, one per line"}"#.into(),
        }
    }

    fn invoke(input: String) -> Result<String, ToolError> {
        let mut all = Vec::new();
        for path in input.lines().map(str::trim).filter(|line| !line.is_empty()) {
            let meta = std::fs::metadata(path).map_err(|err| io_error(path, err))?;
            if meta.is_dir() {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(path).map_err(|err| io_error(path, err))? {
                    let entry = entry.map_err(|err| io_error(path, err))?;
                    if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                        names.push(format!(
                            "{}/{}",
                            path.trim_end_matches('/'),
                            entry.file_name().to_string_lossy()
                        ));
                    }
                }
                names.sort();
                for name in names {
                    all.push(count_file(&name)?);
                }
            } else {
                all.push(count_file(path)?);
            }
        }
        if all.is_empty() {
            return Err(ToolError::InvalidInput(
                "give at least one path, one per line".into(),
            ));
        }
        log(Level::Info, &format!("counted {} file(s)", all.len()));
        let mut out = String::from("{\"files\":[");
        let mut total = 0;
        for (i, c) in all.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"path\":");
            json_string(&mut out, &c.path);
            let _ = write!(
                out,
                ",\"lines\":{},\"words\":{},\"bytes\":{}}}",
                c.lines, c.words, c.bytes
            );
            total += c.words;
        }
        let _ = write!(out, "],\"total_words\":{total}}}");
        Ok(out)
    }
}

export!(WordCount);
