//! The `outpost` binary itself: exit codes and messages a script relies on.
// Tests and their helpers fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn outpost(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env_remove("OUTPOST_HUB")
        .env_remove("OUTPOST_TOKEN")
        .env_remove("OUTPOST_CONFIG")
        .output()
        .expect("run outpost");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = outpost(&["nodes", "frobnicate"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = outpost(&["token", "create", "--ttl", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("soon"), "{err}");
    let (code, out, _) = outpost(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains("outpost"));
}

#[test]
fn certs_init_creates_then_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    let (code, out, err) = outpost(&["certs", "init", "--dir", certs_arg, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["created"].as_array().unwrap().len(), 7);
    for f in [
        "ca.pem",
        "ca-key.pem",
        "hub.pem",
        "hub-key.pem",
        "client.pem",
        "client-key.pem",
        "auth_secret.txt",
    ] {
        assert!(certs.join(f).exists(), "{f}");
    }
    let (code, out, _) = outpost(&["certs", "init", "--dir", certs_arg]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing changed"), "{out}");
}

#[test]
fn failures_exit_1_and_name_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    // No hub CA where the config says: the message names the file.
    let config = dir.path().join("outpost.toml");
    let data_dir_config = format!(
        "[server]\ndata_dir = {:?}\n",
        dir.path().join("data").display().to_string()
    );
    std::fs::write(&config, &data_dir_config).unwrap();
    let (code, _, err) = outpost(&["nodes", "list", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ca.pem"), "{err}");
    // A config with an unknown key: the key is named.
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap();
    let (code, _, err) = outpost(&["nodes", "list", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("lisen"), "{err}");
    // Nothing listening: the connection error says where.
    outpost(&[
        "certs",
        "init",
        "--dir",
        dir.path().join("data/certs").to_str().unwrap(),
    ]);
    std::fs::write(&config, &data_dir_config).unwrap();
    let (code, out, err) = outpost(&[
        "nodes",
        "list",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--hub",
        "https://127.0.0.1:9",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], false);
}
