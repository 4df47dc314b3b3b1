//! `hostile`: a tool that attacks its sandbox. The input names one attack and its argument,
//! `ATTACK [ARG...]`; the sandbox suite runs each and checks it was contained. Attacks that touch
//! the host report the error WASI gave them as `permission-denied`, so a test can tell a refused
//! attack from one that succeeded (which returns `Ok`).

use std::hint::black_box;
use std::io::Write as _;

wit_bindgen::generate!({ path: "../../../wit", world: "tool" });

use outpost::guest::host::{Level, log};

struct Hostile;

fn denied(what: &str, err: std::io::Error) -> ToolError {
    ToolError::PermissionDenied(format!("{what}: {err}"))
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0_u8; 512];
    frame[(depth % 512) as usize] = depth as u8;
    black_box(&mut frame);
    recurse(depth + 1).wrapping_add(frame[7] as u64)
}

fn attack(name: &str, args: &[&str]) -> Result<String, ToolError> {
    let arg = |i: usize| -> Result<&str, ToolError> {
        args.get(i)
            .copied()
            .ok_or_else(|| ToolError::InvalidInput(format!("{name}: argument {} missing", i + 1)))
    };
    match name {
        // File system: each returns what it got, so success means the sandbox leaked.
        "read" => {
            let path = arg(0)?;
            std::fs::read_to_string(path).map_err(|err| denied(&format!("read {path}"), err))
        }
        "list" => {
            let path = arg(0)?;
            let entries =
                std::fs::read_dir(path).map_err(|err| denied(&format!("list {path}"), err))?;
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names.join("\n"))
        }
        "write" => {
            let path = arg(0)?;
            std::fs::write(path, b"pwned").map_err(|err| denied(&format!("write {path}"), err))?;
            Ok(format!("wrote {path}"))
        }
        "append" => {
            let path = arg(0)?;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|err| denied(&format!("open {path} for append"), err))?;
            file.write_all(b"pwned")
                .map_err(|err| denied(&format!("append {path}"), err))?;
            Ok(format!("appended to {path}"))
        }
        "truncate" => {
            let path = arg(0)?;
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(|err| denied(&format!("truncate {path}"), err))?;
            Ok(format!("truncated {path}"))
        }
        "set-len" => {
            let path = arg(0)?;
            let file =
                std::fs::File::open(path).map_err(|err| denied(&format!("open {path}"), err))?;
            file.set_len(0)
                .map_err(|err| denied(&format!("set_len {path}"), err))?;
            Ok(format!("set length of {path} to 0"))
        }
        "create" => {
            let path = arg(0)?;
            std::fs::File::create_new(path)
                .map_err(|err| denied(&format!("create {path}"), err))?;
            Ok(format!("created {path}"))
        }
        "mkdir" => {
            let path = arg(0)?;
            std::fs::create_dir(path).map_err(|err| denied(&format!("mkdir {path}"), err))?;
            Ok(format!("made {path}"))
        }
        "remove" => {
            let path = arg(0)?;
            std::fs::remove_file(path).map_err(|err| denied(&format!("remove {path}"), err))?;
            Ok(format!("removed {path}"))
        }
        "rename" => {
            let (from, to) = (arg(0)?, arg(1)?);
            std::fs::rename(from, to).map_err(|err| denied(&format!("rename {from} {to}"), err))?;
            Ok(format!("renamed {from} to {to}"))
        }
        "hardlink" => {
            let (original, link) = (arg(0)?, arg(1)?);
            std::fs::hard_link(original, link)
                .map_err(|err| denied(&format!("hard_link {original} {link}"), err))?;
            Ok(format!("linked {link} to {original}"))
        }
        // CPU and wall time.
        "spin" => {
            let mut x = 0_u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        "host-call-loop" => loop {
            black_box(std::time::Instant::now());
        },
        "log-loop" => loop {
            log(Level::Debug, "still here");
        },
        "log-empty-loop" => loop {
            log(Level::Debug, "");
        },
        // Host resources.
        "hold-files" => {
            let path = arg(0)?;
            let mut held = Vec::new();
            loop {
                match std::fs::File::open(path) {
                    Ok(file) => held.push(file),
                    Err(err) => {
                        return Err(ToolError::Failed(format!(
                            "open {path} failed after {} handles: {err}",
                            held.len()
                        )));
                    }
                }
            }
        }
        // Disk in a read-write grant: each writes until refused and says how far it got.
        "fill-disk" => {
            let path = arg(0)?;
            let mut file = std::fs::File::create(path)
                .map_err(|err| denied(&format!("create {path}"), err))?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut written = 0_u64;
            loop {
                if let Err(err) = file.write_all(&chunk) {
                    return Err(ToolError::Failed(format!(
                        "write {path} failed after {written} bytes: {err}"
                    )));
                }
                written += chunk.len() as u64;
            }
        }
        "many-files" => {
            let dir = arg(0)?;
            let mut made = 0_u64;
            loop {
                let path = format!("{dir}/f{made}");
                if let Err(err) = std::fs::File::create_new(&path) {
                    return Err(ToolError::Failed(format!(
                        "create {path} failed after {made} files: {err}"
                    )));
                }
                made += 1;
            }
        }
        "grow" => {
            let path = arg(0)?;
            let len: u64 = arg(1)?
                .parse()
                .map_err(|_| ToolError::InvalidInput("grow PATH BYTES".into()))?;
            let file = std::fs::File::create(path)
                .map_err(|err| denied(&format!("create {path}"), err))?;
            file.set_len(len)
                .map_err(|err| ToolError::Failed(format!("set_len {path} {len}: {err}")))?;
            Ok(format!("grew {path} to {len}"))
        }
        "fail-flood" => {
            let len: usize = arg(0)?
                .parse()
                .map_err(|_| ToolError::InvalidInput("fail-flood BYTES".into()))?;
            Err(ToolError::Failed("F".repeat(len)))
        }
        "sleep" => {
            let secs: u64 = arg(0)?
                .parse()
                .map_err(|_| ToolError::InvalidInput("sleep SECONDS".into()))?;
            std::thread::sleep(std::time::Duration::from_secs(secs));
            Ok(format!("slept {secs}s"))
        }
        // Memory and stack.
        "memory-bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = vec![0_u8; 1 << 20];
                block[4096] = 1;
                hoard.push(black_box(block));
            }
        }
        "recursion" => Ok(recurse(0).to_string()),
        // Output.
        "stdout-flood" => {
            let chunk = "A".repeat(64 * 1024);
            let mut out = std::io::stdout();
            loop {
                if let Err(err) = out.write_all(chunk.as_bytes()) {
                    return Err(ToolError::Failed(format!("stdout: {err}")));
                }
            }
        }
        "stderr-flood" => {
            let chunk = "E".repeat(64 * 1024);
            let mut out = std::io::stderr();
            loop {
                if let Err(err) = out.write_all(chunk.as_bytes()) {
                    return Err(ToolError::Failed(format!("stderr: {err}")));
                }
            }
        }
        "return-flood" => {
            let len: usize = arg(0)?
                .parse()
                .map_err(|_| ToolError::InvalidInput("return-flood BYTES".into()))?;
            Ok("R".repeat(len))
        }
        // Environment and network.
        "env" => {
            let key = arg(0)?;
            std::env::var(key)
                .map_err(|err| ToolError::PermissionDenied(format!("env {key}: {err}")))
        }
        "env-all" => Ok(std::env::vars()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n")),
        "connect" => {
            let addr = arg(0)?;
            let mut stream = std::net::TcpStream::connect(addr)
                .map_err(|err| denied(&format!("connect {addr}"), err))?;
            stream
                .write_all(b"hello from the sandbox")
                .map_err(|err| denied(&format!("send to {addr}"), err))?;
            Ok(format!("connected to {addr}"))
        }
        "lookup" => {
            use std::net::ToSocketAddrs as _;
            let name = arg(0)?;
            let addrs = (name, 80)
                .to_socket_addrs()
                .map_err(|err| denied(&format!("lookup {name}"), err))?;
            let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            ips.sort();
            ips.dedup();
            Ok(ips.join(","))
        }
        // Ways to end a call early.
        "panic" => panic!("hostile guest panicked on purpose"),
        "exit" => std::process::exit(7),
        "print" => {
            let text = args.join(" ");
            println!("{text}");
            eprintln!("to stderr: {text}");
            log(Level::Info, &text);
            Ok(text)
        }
        other => Err(ToolError::InvalidInput(format!("unknown attack `{other}`"))),
    }
}

impl Guest for Hostile {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Attacks its sandbox; the input selects the attack.".into(),
            input_schema: r#"{"type":"string","description":"ATTACK [ARG...]"}"#.into(),
        }
    }

    fn invoke(input: String) -> Result<String, ToolError> {
        let mut words = input.split_whitespace();
        let name = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        attack(name, &args)
    }
}

export!(Hostile);
