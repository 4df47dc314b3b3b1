//! Signed tools: publisher keys from `outpost keys create`, signatures from `outpost tool sign`;
//! a hub with trusted publishers refuses unsigned, tampered and untrusted pushes, `tool inspect`
//! names the signer, and each node runs only what its own trusted publishers signed.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{STATIC_TOKEN, TestHub, start_node};

use crate::tasks::{parse, send_and_wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tools_signed_by_trusted_publishers_are_pushed_and_run() {
    let keys = tempfile::tempdir().unwrap();
    let (secret_a, public_a) = outpost_trust::signing::generate_key().unwrap();
    let key_a = keys.path().join("a.key");
    std::fs::write(&key_a, &secret_a).unwrap();
    let trusted = public_a.clone();
    let hub = TestHub::start_adjusted(TlsMode::Tls, move |config| {
        config.tools.trusted_publishers = vec![trusted];
    })
    .await;
    // A second publisher, made with the CLI: the hub does not trust it.
    let (code, public_b, err) = hub
        .cli(&[
            "keys",
            "create",
            "b",
            "--dir",
            keys.path().to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let public_b = public_b.trim().to_string();
    assert!(public_b.starts_with("ed25519:"), "{public_b}");
    let key_b = keys.path().join("b.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key_b).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The `--out FILE` form writes FILE and FILE's `.pub`, and never overwrites a key.
    let publisher = keys.path().join("publisher.key");
    let (code, public_c, err) = hub
        .cli(&["keys", "create", "--out", publisher.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(keys.path().join("publisher.pub"))
            .unwrap()
            .trim(),
        public_c.trim()
    );
    let (code, _, err) = hub
        .cli(&["keys", "create", "--out", publisher.to_str().unwrap()])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("never overwritten"), "{err}");

    let echo = outpost_guests::echo();
    let echo = echo.to_str().unwrap();
    let policy = keys.path().join("policy.toml");
    std::fs::write(&policy, "[limits]\ntimeout = \"5s\"\n").unwrap();
    let policy = policy.to_str().unwrap();
    let sign = async |key: &std::path::Path, out: &str| {
        let out = keys.path().join(out);
        let (code, _, err) = hub
            .cli(&[
                "tool",
                "sign",
                echo,
                "--key",
                key.to_str().unwrap(),
                "--policy",
                policy,
                "--out",
                out.to_str().unwrap(),
            ])
            .await;
        assert_eq!(code, 0, "{err}");
        out.to_str().unwrap().to_string()
    };
    let by_a = sign(&key_a, "a.sig").await;
    let by_b = sign(&key_b, "b.sig").await;
    let push = async |signature: Option<&str>, policy: &str| {
        let mut args = vec![
            "tool", "push", echo, "--name", "echo", "--policy", policy, "--json",
        ];
        if let Some(signature) = signature {
            args.extend(["--signature", signature]);
        }
        hub.cli(&args).await
    };

    let (code, _, err) = push(None, policy).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("accepts only tools signed by its [tools] trusted_publishers"),
        "{err}"
    );
    let (code, _, err) = push(Some(&by_b), policy).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("is not one of this hub's [tools] trusted_publishers"),
        "{err}"
    );
    let other_policy = keys.path().join("other.toml");
    std::fs::write(&other_policy, "[limits]\ntimeout = \"50s\"\n").unwrap();
    let (code, _, err) = push(Some(&by_a), other_policy.to_str().unwrap()).await;
    assert_ne!(code, 0, "a signature covers the policy too");
    assert!(
        err.contains("does not match this component and policy"),
        "{err}"
    );

    let (code, out, err) = push(Some(&by_a), policy).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["publisher"], public_a.as_str());
    let (code, out, _) = hub.cli(&["tool", "inspect", "echo", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(parse(&out)["publisher"], public_a.as_str());

    // Each node decides whom it trusts.
    let mut trusting_a = hub.node_config("trusts-a", STATIC_TOKEN);
    trusting_a.node.trusted_publishers = vec![public_a.clone()];
    let mut trusting_b = hub.node_config("trusts-b", STATIC_TOKEN);
    trusting_b.node.trusted_publishers = vec![public_b.clone()];
    let _a = start_node(trusting_a).await;
    let _b = start_node(trusting_b).await;
    for id in ["trusts-a", "trusts-b"] {
        hub.wait_status(id, "online", Duration::from_secs(10)).await;
    }
    let ran = send_and_wait(&hub, "trusts-a", "echo", "signed").await;
    assert_eq!(ran["status"], "succeeded", "{ran}");
    assert_eq!(ran["output"], "signed");
    let refused = send_and_wait(&hub, "trusts-b", "echo", "signed").await;
    assert_eq!(refused["error"]["kind"], "policy_invalid", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "signed by {public_a}, who is not one of this node's"
            )),
        "{refused}"
    );
}
