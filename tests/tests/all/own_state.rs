//! What a node lets tools reach, whatever the hub's policy asks: only the variables and hosts on
//! its own allowlists, and never its own state (its key and JWT, tool store and compile cache): a node whose `safe_paths` overlap its data dir, also through a symlink, refuses to
//! start before it joins; and a pushed tool granted a directory inside the data dir is refused
//! on the node that would run it, also when the safe path was swapped for a link after the node
//! started.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{STATIC_TOKEN, TestHub, start_node};

use crate::tasks::{push_hostile_with_policy, send_and_wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_paths_over_the_data_dir_keep_the_node_from_starting() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let mut config = hub.node_config("overlap-1", STATIC_TOKEN);
    // A link to a parent of the data dir: the config's paths do not overlap as written.
    let door = hub.dir.path().join("door");
    std::os::unix::fs::symlink(hub.dir.path(), &door).unwrap();
    config.node.safe_paths = vec![door.clone()];
    let err = outpost_node::Node::start(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[node] safe_paths")
            && err.contains(&format!("safe path {} overlaps", door.display()))
            && err.contains("which holds the node's own state"),
        "{err}"
    );
    let (code, out, _) = hub.cli(&["nodes", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert!(!out.contains("overlap-1"), "refused before joining: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_reaching_into_the_data_dir_is_refused_on_the_node() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let safe = hub.dir.path().join("safe");
    std::fs::create_dir_all(&safe).unwrap();
    let mut config = hub.node_config("reach-1", STATIC_TOKEN);
    config.node.safe_paths = vec![safe.clone()];
    let data_dir = config.data_dir();
    let _node = start_node(config).await;
    hub.wait_status("reach-1", "online", Duration::from_secs(10))
        .await;
    // After the node started, the safe path is swapped for a link to a parent of the data dir:
    // the grant below lies inside the (new) safe path, and inside the data dir.
    std::fs::remove_dir(&safe).unwrap();
    std::os::unix::fs::symlink(hub.dir.path(), &safe).unwrap();
    let inside = safe.join(data_dir.strip_prefix(hub.dir.path()).unwrap());
    assert!(inside.join("identity").is_dir());
    let policy = format!(
        "[[fs]]\nhost = \"{}\"\nguest = \"/state\"\naccess = \"ro\"\n",
        inside.display()
    );
    push_hostile_with_policy(&hub, "reach", &policy).await;
    let task = send_and_wait(
        &hub,
        "reach-1",
        "reach",
        "read /state/identity/identity.json",
    )
    .await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["kind"], "policy_invalid", "{task}");
    let message = task["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("which holds the node's own state"),
        "{message}"
    );
    assert!(!task["output"].as_str().unwrap_or_default().contains("jwt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_grants_only_the_variables_and_hosts_it_allows() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let _plain = start_node(hub.node_config("plain-1", STATIC_TOKEN)).await;
    let mut config = hub.node_config("open-1", STATIC_TOKEN);
    config.node.env_allow = vec!["HOME".into()];
    let _open = start_node(config).await;
    for id in ["plain-1", "open-1"] {
        hub.wait_status(id, "online", Duration::from_secs(10)).await;
    }
    push_hostile_with_policy(&hub, "home", "[env]\nallow = [\"HOME\"]\n").await;
    push_hostile_with_policy(&hub, "net", "[network]\nallow_hosts = [\"127.0.0.1:9\"]\n").await;

    // The hub's policy asks; each node decides what it gives.
    let refused = send_and_wait(&hub, "plain-1", "home", "env HOME").await;
    assert_eq!(refused["error"]["kind"], "policy_invalid", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "\"HOME\" is not in this node's [node] env_allow [LANG, LC_ALL, LC_CTYPE, TZ]"
        ),
        "{message}"
    );
    let given = send_and_wait(&hub, "open-1", "home", "env HOME").await;
    assert_eq!(given["status"], "succeeded", "{given}");
    assert_eq!(given["output"], std::env::var("HOME").unwrap_or_default());

    let no_network = send_and_wait(&hub, "plain-1", "net", "connect 127.0.0.1:9").await;
    assert_eq!(
        no_network["error"]["kind"], "policy_invalid",
        "{no_network}"
    );
    assert!(
        no_network["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this node grants tools no network"),
        "{no_network}"
    );
}
