//! The actor layer end to end through `outpost actor …` and its gRPC service: idempotent sends,
//! inbox and batch acks, per-pair order under concurrent senders, redelivery and dead letters
//! with requeue, messages surviving a hub restart, teams and their fan-out, waking a stopped
//! agent, permission reviews (option ids, a persistent answer, cancel, a wrong option, the
//! blocking wait), a time trigger due during a hub restart firing once, and an actor credential
//! that acts only as its own actor.

use std::sync::Arc;
use std::time::Duration;

use outpost_config::TlsMode;
use outpost_proto::v1::actor_service_client::ActorServiceClient;
use outpost_proto::v1::{InboxRequest, RespondPermissionReviewRequest, SendMessageRequest};
use outpost_tests::{TestHub, eventually, start_node};
use outpost_trust::auth::Role;
use outpost_trust::grpc_channel::with_bearer;
use serde_json::Value;

/// Runs `outpost actor ARGS --json`; exit code and the parsed output (Null when none).
async fn actor(hub: &TestHub, args: &[&str]) -> (u8, Value, String) {
    let mut all = vec!["actor"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = hub.cli(&all).await;
    let value = if out.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    (code, value, err)
}

async fn ok(hub: &TestHub, args: &[&str]) -> Value {
    let (code, value, err) = actor(hub, args).await;
    assert_eq!(code, 0, "actor {args:?}: {err}");
    value
}

async fn send(hub: &TestHub, from: &str, to: &str, payload: &str) -> i64 {
    let sent = ok(
        hub,
        &["send", "--actor-id", from, "--to", to, "--payload", payload],
    )
    .await;
    sent["message_id"].as_i64().unwrap()
}

fn messages(inbox: &Value) -> Vec<Value> {
    inbox["messages"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_inbox_ack_with_idempotent_sends_batch_acks_and_a_restart_between() {
    let mut hub = TestHub::start(TlsMode::Tls).await;
    // A retried send with the same key is one message.
    let first = ok(
        &hub,
        &[
            "send",
            "--actor-id",
            "alice",
            "--to",
            "bob",
            "--payload",
            r#"{"n":1}"#,
            "--idempotency-key",
            "k-1",
        ],
    )
    .await;
    assert_eq!(first["duplicate"], false);
    let again = ok(
        &hub,
        &[
            "send",
            "--actor-id",
            "alice",
            "--to",
            "bob",
            "--payload",
            r#"{"n":1}"#,
            "--idempotency-key",
            "k-1",
        ],
    )
    .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message_id"], first["message_id"]);
    let second = send(&hub, "alice", "bob", r#"{"n":2}"#).await;

    // Bad input: named, nothing stored.
    let cases: [(&[&str], &str); 4] = [
        (&["--to", "bob", "--payload", "{"], "payload: not JSON"),
        (
            &["--to", "team:nobody", "--payload", "{}"],
            "has no members",
        ),
        (
            &["--to", "agent-0000", "--payload", "{}"],
            "no agent has id",
        ),
        (&["--to", "bo b", "--payload", "{}"], "has ' '"),
    ];
    for (rest, needle) in cases {
        let mut args = vec!["send", "--actor-id", "alice"];
        args.extend_from_slice(rest);
        let (code, _, err) = actor(&hub, &args).await;
        assert_eq!(code, 1);
        assert!(err.contains(needle), "{rest:?}: {err}");
    }
    let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(70 * 1024));
    let (code, _, err) = actor(
        &hub,
        &[
            "send",
            "--actor-id",
            "alice",
            "--to",
            "bob",
            "--payload",
            &big,
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("over the limit of 65536 bytes"), "{err}");

    // Pending messages survive a hub restart.
    hub.restart().await;
    let inbox = ok(&hub, &["inbox", "--actor-id", "bob"]).await;
    let got = messages(&inbox);
    assert_eq!(got.len(), 2, "{inbox}");
    assert_eq!(got[0]["id"], first["message_id"]);
    assert_eq!(got[0]["payload"]["n"], 1);
    assert_eq!(got[0]["from"], "alice");
    assert_eq!(got[0]["state"], "delivered");
    assert_eq!(got[1]["id"], second);

    // A batch ack with one unknown id: an array, that item's error, the others acked, exit 1.
    let first_id = first["message_id"].as_i64().unwrap().to_string();
    let (code, out, err) = actor(
        &hub,
        &[
            "ack",
            "--actor-id",
            "bob",
            "--message-id",
            &first_id,
            "--message-id",
            "999999",
            "--message-id",
            &second.to_string(),
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    let items = out.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["ok"], true);
    assert_eq!(items[1]["ok"], false);
    assert_eq!(items[1]["message_id"], 999999);
    assert!(
        items[1]["error"]
            .as_str()
            .unwrap()
            .contains("no message has id 999999"),
        "{out}"
    );
    assert_eq!(items[2]["ok"], true);
    // One item: its object; acking twice is not an error.
    let once = ok(
        &hub,
        &["ack", "--actor-id", "bob", "--message-id", &first_id],
    )
    .await;
    assert_eq!(once["already_acked"], true);
    // Nothing left to take.
    assert!(messages(&ok(&hub, &["inbox", "--actor-id", "bob"]).await).is_empty());
    // Someone else's message is not in alice's inbox to ack.
    let (code, _, err) = actor(
        &hub,
        &["ack", "--actor-id", "alice", "--message-id", &first_id],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("not in this actor's inbox"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_sender_to_recipient_pair_keeps_its_order_under_concurrent_senders() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let state = hub.hub().state.clone();
    let per_sender = 40;
    let mut senders = Vec::new();
    for s in 0..5 {
        let state = state.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..per_sender {
                outpost_hub::actors::mailbox::send(
                    &state,
                    outpost_hub::actors::mailbox::SendRequest {
                        sender: format!("sender-{s}"),
                        to: "sink".into(),
                        payload: format!(r#"{{"n":{n}}}"#),
                        idempotency_key: None,
                    },
                )
                .await
                .unwrap();
            }
        }));
    }
    // A receiver taking small batches while they send; a tenth of what it takes is left unacked,
    // so it comes again later — and must not be overtaken by its sender's later messages.
    let receiver = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(String, i64)> = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while seen.len() < 5 * per_sender && tokio::time::Instant::now() < deadline {
                let got = outpost_hub::actors::mailbox::inbox(
                    &state,
                    &outpost_hub::actors::mailbox::InboxRequest {
                        actor_id: "sink".into(),
                        limit: 7,
                        wait_ms: 200,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                let ids: Vec<i64> = got.iter().map(|m| m.id).collect();
                if !ids.is_empty() {
                    outpost_hub::actors::mailbox::ack(&state, "sink", &ids)
                        .await
                        .unwrap();
                }
                for m in got {
                    let n: Value = serde_json::from_str(&m.payload).unwrap();
                    seen.push((m.sender, n["n"].as_i64().unwrap()));
                }
            }
            seen
        })
    };
    for s in senders {
        s.await.unwrap();
    }
    let seen = receiver.await.unwrap();
    assert_eq!(seen.len(), 5 * per_sender, "every message arrived once");
    for s in 0..5 {
        let sender = format!("sender-{s}");
        let order: Vec<i64> = seen
            .iter()
            .filter(|(from, _)| *from == sender)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            order,
            (0..per_sender as i64).collect::<Vec<_>>(),
            "{sender}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacked_messages_come_again_then_go_dead_and_a_requeue_brings_them_back() {
    let hub = TestHub::start_adjusted(TlsMode::Tls, |c| {
        c.actors.visibility_timeout = Duration::from_millis(300);
        c.actors.max_deliveries = 2;
    })
    .await;
    let id = send(&hub, "alice", "carol", r#"{"job":"x"}"#).await;
    let taken = messages(&ok(&hub, &["inbox", "--actor-id", "carol", "--run-id", "r1"]).await);
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0]["deliveries"], 1);
    assert_eq!(taken[0]["run_id"], "r1");
    // Hidden while its visibility lasts.
    assert!(messages(&ok(&hub, &["inbox", "--actor-id", "carol"]).await).is_empty());
    // Not acked: it comes again (the wait returns as soon as it is visible).
    let again = messages(
        &ok(
            &hub,
            &[
                "inbox",
                "--actor-id",
                "carol",
                "--run-id",
                "r2",
                "--wait",
                "5s",
            ],
        )
        .await,
    );
    assert_eq!(again.len(), 1, "redelivered after the visibility timeout");
    assert_eq!(again[0]["id"], id);
    assert_eq!(again[0]["deliveries"], 2);
    assert_eq!(again[0]["run_id"], "r2");
    // Its deliveries used up: the dead-letter list, not the inbox.
    let dead = eventually("the dead letter", Duration::from_secs(10), async || {
        let dead = messages(&ok(&hub, &["dead-letters", "--actor-id", "carol"]).await);
        if dead.len() == 1 {
            Ok(dead)
        } else {
            Err(format!("{dead:?}"))
        }
    })
    .await;
    assert_eq!(dead[0]["id"], id);
    assert_eq!(dead[0]["state"], "dead");
    assert_eq!(dead[0]["reason"], "not acked after 2 deliveries");
    assert!(messages(&ok(&hub, &["inbox", "--actor-id", "carol"]).await).is_empty());
    // Requeue: back in the inbox, deliveries counted afresh; a second requeue is refused.
    let requeued = ok(&hub, &["requeue", "--message-id", &id.to_string()]).await;
    assert_eq!(requeued["state"], "pending");
    let (code, _, err) = actor(&hub, &["requeue", "--message-id", &id.to_string()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not dead"), "{err}");
    let back = messages(&ok(&hub, &["inbox", "--actor-id", "carol", "--auto-ack"]).await);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0]["deliveries"], 1);
    assert_eq!(back[0]["state"], "acked");
    assert!(messages(&ok(&hub, &["dead-letters"]).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permission_reviews_answered_by_option_id_persistently_or_cancelled() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let request = |title: &'static str| {
        vec![
            "permission-request",
            "--actor-id",
            "agent-x",
            "--title",
            title,
            "--option",
            "allow_once",
            "--option",
            "allow_always:persistent",
            "--option",
            "deny",
        ]
    };
    let asked = ok(&hub, &request("push to main")).await;
    assert_eq!(asked["state"], "pending");
    let id = asked["request_id"].as_str().unwrap().to_string();
    let pending = ok(&hub, &["permission-reviews", "--pending"]).await;
    assert_eq!(pending["reviews"][0]["request_id"], id.as_str());
    assert_eq!(pending["reviews"][0]["options"][1]["persistent"], true);

    // A wrong option id is refused, naming the valid ones; the review stays pending.
    let (code, _, err) = actor(
        &hub,
        &[
            "permission-review-respond",
            "--request-id",
            &id,
            "--option-id",
            "approved",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains(r#""approved" is not one of review"#)
            && err.contains("(allow_once, allow_always, deny)"),
        "{err}"
    );
    // The blocking wait, answered while it waits.
    let config = hub.write_config();
    let waiter = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let args = [
            "outpost",
            "actor",
            "permission-request",
            "--actor-id",
            "agent-x",
            "--title",
            "deploy",
            "--option",
            "ok",
            "--wait",
            "--timeout",
            "20s",
            "--json",
            "--config",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend([config.display().to_string(), "--hub".into(), hub.grpc_url()]);
        let code = outpost_cli::main_with_io(args, &mut out, &mut err).await;
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    };
    let operator = async {
        let waiting = eventually("the waiting review", Duration::from_secs(10), async || {
            let pending = ok(&hub, &["permission-reviews", "--pending"]).await;
            pending["reviews"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["title"] == "deploy")
                .and_then(|r| r["request_id"].as_str().map(String::from))
                .ok_or_else(|| pending.to_string())
        })
        .await;
        ok(
            &hub,
            &[
                "permission-review-respond",
                "--request-id",
                &waiting,
                "--option-id",
                "ok",
            ],
        )
        .await
    };
    let ((code, out, err), answered) = tokio::join!(waiter, operator);
    assert_eq!(answered["state"], "answered");
    assert_eq!(code, 0, "{err}");
    let waited: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(waited["option_id"], "ok");
    // The CLI's own credential (minted from the auth secret) is the answering subject.
    assert_eq!(waited["answered_by"], "cli");

    // The persistent answer resolves the same request next time by itself.
    let answered = ok(
        &hub,
        &[
            "permission-review-respond",
            "--request-id",
            &id,
            "--option-id",
            "allow_always",
        ],
    )
    .await;
    assert_eq!(answered["option_id"], "allow_always");
    let (code, _, err) = actor(
        &hub,
        &[
            "permission-review-respond",
            "--request-id",
            &id,
            "--option-id",
            "deny",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("answered already"), "{err}");
    let again = ok(&hub, &request("push to main")).await;
    assert_eq!(again["state"], "answered");
    assert_eq!(again["option_id"], "allow_always");
    assert_eq!(again["answered_by"], format!("grant:{id}"));
    // Another title is another request.
    let other = ok(&hub, &request("drop the database")).await;
    assert_eq!(other["state"], "pending");

    // Several at once, one cancelled for good and one unknown: an array, exit 1.
    let other_id = other["request_id"].as_str().unwrap();
    let (code, out, _) = actor(
        &hub,
        &[
            "permission-review-respond",
            "--request-id",
            other_id,
            "--permission-id",
            "r-nope",
            "--outcome",
            "cancelled",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(out[0]["ok"], true);
    assert_eq!(out[0]["result"]["state"], "cancelled");
    assert_eq!(out[0]["result"]["outcome"], "cancelled");
    assert_eq!(out[1]["ok"], false);
    assert!(
        out[1]["error"]
            .as_str()
            .unwrap()
            .contains("no review has id")
    );
    // The asker got each decision as a message from the hub.
    let inbox = messages(&ok(&hub, &["inbox", "--actor-id", "agent-x", "--auto-ack"]).await);
    let decisions: Vec<(String, String)> = inbox
        .iter()
        .filter(|m| m["from"] == "outpost")
        .map(|m| {
            (
                m["payload"]["outcome"].as_str().unwrap().to_string(),
                m["payload"]["option_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("answered".to_string(), "ok".to_string()),
            ("answered".into(), "allow_always".into()),
            ("answered".into(), "allow_always".into()),
            ("cancelled".into(), String::new()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_time_trigger_due_while_the_hub_is_down_fires_once_after_its_restart() {
    let start = outpost_clock::Clock::now_ms(&outpost_clock::SystemClock);
    let clock = Arc::new(outpost_clock::ManualClock::new(start));
    let mut hub = TestHub::start_on_clock(TlsMode::Tls, clock.clone()).await;
    let created = ok(
        &hub,
        &[
            "time-trigger-create",
            "--actor-id",
            "agent-t",
            "--every",
            "1h",
            "--payload",
            r#"{"tick":true}"#,
        ],
    )
    .await;
    let trigger_id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["schedule"], "every 1h");
    // Not due yet: the trigger loop passes and sends nothing.
    clock.advance_ms(30 * 60_000);
    tokio::time::sleep(outpost_hub::actors::triggers::TICK * 3).await;
    assert!(messages(&ok(&hub, &["inbox", "--actor-id", "agent-t"]).await).is_empty());

    // Down across three slots.
    hub.stop().await;
    clock.advance_ms(3 * 3_600_000);
    hub.handle = Some(
        outpost_hub::hub::HubBuilder::new(&hub.config)
            .clock(clock.clone())
            .start()
            .await
            .unwrap(),
    );
    let inbox = eventually(
        "the trigger's message",
        Duration::from_secs(10),
        async || {
            let inbox = messages(&ok(&hub, &["inbox", "--actor-id", "agent-t"]).await);
            if inbox.is_empty() {
                Err("none yet".to_string())
            } else {
                Ok(inbox)
            }
        },
    )
    .await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["from"], format!("trigger:{trigger_id}"));
    assert_eq!(inbox[0]["payload"]["tick"], true);
    // Several passes later, still once; the next slot is the one ahead.
    tokio::time::sleep(outpost_hub::actors::triggers::TICK * 4).await;
    assert!(messages(&ok(&hub, &["inbox", "--actor-id", "agent-t"]).await).is_empty());
    let listed = ok(&hub, &["time-trigger-list", "--actor-id", "agent-t"]).await;
    let trigger = &listed["triggers"][0];
    assert_eq!(trigger["fired"], 1);
    let next: std::time::SystemTime =
        humantime::parse_rfc3339(trigger["next_due_at"].as_str().unwrap()).unwrap();
    let next_ms = next
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(next_ms, start + 4 * 3_600_000);
    // The next slot fires once more.
    clock.advance_ms(3_600_000);
    eventually("the next slot", Duration::from_secs(10), async || {
        let inbox = messages(&ok(&hub, &["inbox", "--actor-id", "agent-t", "--auto-ack"]).await);
        if inbox.len() == 1 {
            Ok(())
        } else {
            Err(format!("{inbox:?}"))
        }
    })
    .await;
    // Delete, and a bad schedule named.
    let deleted = ok(&hub, &["time-trigger-delete", "--trigger-id", &trigger_id]).await;
    assert_eq!(deleted["deleted"], true);
    let (code, _, err) = actor(
        &hub,
        &[
            "time-trigger-create",
            "--actor-id",
            "agent-t",
            "--cron",
            "61 * * * *",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("minute: 61 is outside 0-59"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn teams_fan_out_and_a_message_wakes_a_stopped_agent() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let (config, _safe) = crate::agents::agent_node(&hub, "team-n");
    let _node = start_node(config).await;
    hub.wait_status("team-n", "online", Duration::from_secs(15))
        .await;
    let create = |name: &'static str, extra: &'static [&'static str]| {
        let hub = &hub;
        async move {
            let mut args = vec![
                "agents",
                "create",
                "--name",
                name,
                "--node",
                "team-n",
                "--command",
                "sleep",
                "--arg",
                "30",
                "--json",
            ];
            args.extend_from_slice(extra);
            let (code, out, err) = hub.cli(&args).await;
            assert_eq!(code, 0, "{err}");
            let agent: Value = serde_json::from_str(&out).unwrap();
            agent["id"].as_str().unwrap().to_string()
        }
    };
    let lead = create("lead", &["--team", "build"]).await;
    let worker = create("worker", &["--team", "build", "--wake-on-message"]).await;
    let loner = create("loner", &["--team", "ops"]).await;

    let members = ok(&hub, &["team-members", "--actor-id", &lead]).await;
    let members = members["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["actor_id"], worker.as_str());
    assert_eq!(members[0]["node"], "team-n");
    assert_eq!(members[0]["status"], "created");
    assert_eq!(members[0]["teams"][0], "build");
    let (code, _, err) = actor(&hub, &["team-members", "--actor-id", "operator"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("is not an agent"), "{err}");

    // To the team: every member but the sender; the woken one starts.
    let sent = ok(
        &hub,
        &[
            "send",
            "--actor-id",
            &lead,
            "--to",
            "team:build",
            "--payload",
            r#"{"go":1}"#,
        ],
    )
    .await;
    let to: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["to"].as_str().unwrap())
        .collect();
    assert_eq!(to, [worker.as_str()]);
    assert_eq!(sent["messages"][0]["team"], "build");
    eventually("the woken agent", Duration::from_secs(15), async || {
        let (_, out, _) = hub.cli(&["agents", "get", &worker, "--json"]).await;
        let agent: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        if agent["status"] == "running" {
            Ok(())
        } else {
            Err(agent.to_string())
        }
    })
    .await;
    // By name, and an agent without wake_on_message stays as it is.
    ok(
        &hub,
        &[
            "send",
            "--actor-id",
            &lead,
            "--to",
            "agent:loner",
            "--payload",
            "{}",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, out, _) = hub.cli(&["agents", "get", &loner, "--json"]).await;
    let agent: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(agent["status"], "created");
    let inbox = messages(&ok(&hub, &["inbox", "--actor-id", &loner]).await);
    assert_eq!(inbox.len(), 1);
    hub.cli(&["agents", "stop", &worker]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_actor_credential_acts_only_as_its_own_actor() {
    let hub = TestHub::start(TlsMode::Tls).await;
    send(&hub, "alice", "bob", r#"{"for":"bob"}"#).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = outpost_trust::grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let mut client = ActorServiceClient::new(channel);
    let alice = hub.token("alice", Role::Actor);
    let inbox = |actor: &str| InboxRequest {
        actor_id: actor.into(),
        ..InboxRequest::default()
    };
    let refused = client
        .inbox(with_bearer(inbox("bob"), &alice))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("another actor") && refused.message().contains("\"alice\""),
        "{}",
        refused.message()
    );
    // Bob's message is still there for bob.
    let bob = hub.token("bob", Role::Actor);
    let got = client
        .inbox(with_bearer(inbox("bob"), &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.messages.len(), 1);
    // Its own inbox, and a send as itself; not as someone else.
    client
        .inbox(with_bearer(inbox("alice"), &alice))
        .await
        .unwrap();
    let as_bob = SendMessageRequest {
        actor_id: "bob".into(),
        to: "alice".into(),
        payload: "{}".into(),
        idempotency_key: String::new(),
    };
    let refused = client
        .send_message(with_bearer(as_bob.clone(), &alice))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    client
        .send_message(with_bearer(
            SendMessageRequest {
                actor_id: "alice".into(),
                ..as_bob
            },
            &alice,
        ))
        .await
        .unwrap();
    // It never answers a review, not even its own.
    let asked = ok(
        &hub,
        &[
            "permission-request",
            "--actor-id",
            "alice",
            "--title",
            "t",
            "--option",
            "yes",
        ],
    )
    .await;
    let refused = client
        .respond_permission_review(with_bearer(
            RespondPermissionReviewRequest {
                request_id: asked["request_id"].as_str().unwrap().into(),
                option_id: "yes".into(),
                outcome: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // A viewer reads reviews but takes no one's mail.
    let viewer = hub.token("watcher", Role::Viewer);
    let refused = client
        .inbox(with_bearer(inbox("bob"), &viewer))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

/// The `outpost` binary inside `safe` (a native agent executes only what its grants reach).
fn outpost_in(safe: &std::path::Path) -> String {
    let inside = safe.join("outpost");
    if !inside.exists() {
        let binary = outpost_tests::outpost_binary();
        std::fs::hard_link(&binary, &inside)
            .or_else(|_| std::fs::copy(&binary, &inside).map(|_| ()))
            .unwrap();
    }
    inside.display().to_string()
}

async fn create_agent(hub: &TestHub, name: &str, node: &str, script: &str) -> String {
    let (code, out, err) = hub
        .cli(&[
            "agents",
            "create",
            "--name",
            name,
            "--node",
            node,
            "--command",
            "/bin/sh",
            "--arg",
            "-c",
            "--arg",
            script,
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let agent: Value = serde_json::from_str(&out).unwrap();
    agent["id"].as_str().unwrap().to_string()
}

async fn agent_output(hub: &TestHub, id: &str) -> String {
    let (_, out, _) = hub.cli(&["agents", "logs", id]).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_on_two_nodes_send_and_receive_through_their_nodes_and_a_crash_before_the_ack_redelivers()
 {
    let hub = TestHub::start_adjusted(TlsMode::Tls, |c| {
        c.actors.visibility_timeout = Duration::from_secs(1);
    })
    .await;
    let (config_a, safe_a) = crate::agents::agent_node(&hub, "ra");
    let (config_b, safe_b) = crate::agents::agent_node(&hub, "rb");
    let _a = start_node(config_a).await;
    let node_b = start_node(config_b.clone()).await;
    hub.wait_status("ra", "online", Duration::from_secs(15))
        .await;
    hub.wait_status("rb", "online", Duration::from_secs(15))
        .await;
    let (outpost_a, outpost_b) = (outpost_in(&safe_a), outpost_in(&safe_b));

    // The receiver on rb: run 1 takes the message and dies before acking (its node is killed);
    // run 2 takes it again and acks it. Each run also tries another actor's inbox.
    let receiver_script = format!(
        r#"o={outpost_b}
$o actor inbox --actor-id agent-someone-else --json 2>&1 | head -c 300; echo
out=$($o actor inbox --wait 20s --json)
echo "run $OUTPOST_RUN_ID got $out"
if [ "$OUTPOST_RUN_ID" = 1 ]; then sleep 120; fi
id=$(echo "$out" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
$o actor ack --message-id "$id" --json
echo "run $OUTPOST_RUN_ID done"
sleep 120"#
    );
    let receiver = create_agent(&hub, "receiver", "rb", &receiver_script).await;
    let (code, _, err) = hub.cli(&["agents", "start", &receiver]).await;
    assert_eq!(code, 0, "{err}");
    // The sender on ra, through ra's relay.
    let sender_script = format!(
        r#"{outpost_a} actor send --to {receiver} --payload '{{"hello":"from ra"}}' --idempotency-key once --json; echo; sleep 120"#
    );
    let sender = create_agent(&hub, "sender", "ra", &sender_script).await;
    let (code, _, err) = hub.cli(&["agents", "start", &sender]).await;
    assert_eq!(code, 0, "{err}");

    let taken = eventually(
        "run 1 takes the message",
        Duration::from_secs(30),
        async || {
            let out = agent_output(&hub, &receiver).await;
            if out.contains("run 1 got") && out.contains("hello") {
                Ok(out)
            } else {
                Err(out)
            }
        },
    )
    .await;
    assert!(
        taken.contains(r#""from":""#) && taken.contains(&format!(r#""from":"{sender}""#)),
        "the sender is the agent on ra: {taken}"
    );
    assert!(
        taken.contains("permission denied") && taken.contains("another actor"),
        "an agent's credential reads only its own inbox: {taken}"
    );
    let sent = agent_output(&hub, &sender).await;
    assert!(sent.contains(r#""duplicate":false"#), "{sent}");

    // rb dies before the ack; the message is still the receiver's, delivered once.
    node_b.crash();
    let state = hub.hub().state.clone();
    let held = state
        .store()
        .list_messages(&outpost_hub::store::actors::MessageFilter {
            recipient: Some(&receiver),
            state: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].state,
        outpost_hub::store::actors::MessageState::Delivered
    );
    assert_eq!(held[0].run_id, "1");
    eventually("the receiver lost", Duration::from_secs(15), async || {
        let (_, out, _) = hub.cli(&["agents", "get", &receiver, "--json"]).await;
        let agent: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        if agent["status"] == "lost" {
            Ok(())
        } else {
            Err(agent.to_string())
        }
    })
    .await;
    let _b = start_node(config_b).await;
    hub.wait_status("rb", "online", Duration::from_secs(15))
        .await;
    let (code, _, err) = hub.cli(&["agents", "start", &receiver]).await;
    assert_eq!(code, 0, "{err}");
    let done = eventually("run 2 acks it", Duration::from_secs(30), async || {
        let out = agent_output(&hub, &receiver).await;
        if out.contains("run 2 done") {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await;
    assert!(
        done.contains("run 2 got") && done.contains(r#""deliveries":2"#),
        "{done}"
    );
    assert!(done.contains(r#""acked":true"#), "{done}");
    let acked = state
        .store()
        .get_message(held[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acked.state, outpost_hub::store::actors::MessageState::Acked);
    assert_eq!(acked.run_id, "2");
    // Run 1's credential is retired with its run.
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = outpost_trust::grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let old = state
        .credentials
        .actor_token(&receiver, 1, outpost_tests::now_s())
        .unwrap();
    let refused = ActorServiceClient::new(channel)
        .inbox(with_bearer(
            InboxRequest {
                actor_id: receiver.clone(),
                ..InboxRequest::default()
            },
            &old,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("its current run is 2"),
        "{}",
        refused.message()
    );
    for id in [&receiver, &sender] {
        hub.cli(&["agents", "stop", id]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rest_api_sends_takes_acks_and_answers_reviews_under_the_same_rules() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let base = format!("{}/api", hub.http_url());
    let admin = hub.token("ops", Role::Admin);
    let dora = hub.token("dora", Role::Actor);
    let http = outpost_tests::http_json;

    let (code, sent) = http(
        "POST",
        &format!("{base}/actors/dora/messages"),
        Some(&dora),
        Some(r#"{"to":"eve","payload":{"n":1},"idempotency_key":"r1"}"#),
    )
    .await;
    assert_eq!(code, 201, "{sent}");
    let (code, again) = http(
        "POST",
        &format!("{base}/actors/dora/messages"),
        Some(&dora),
        Some(r#"{"to":"eve","payload":{"n":1},"idempotency_key":"r1"}"#),
    )
    .await;
    assert_eq!((code, &again["message_id"]), (200, &sent["message_id"]));
    // As someone else: refused; for eve's inbox with dora's credential: refused.
    let (code, _) = http(
        "POST",
        &format!("{base}/actors/eve/messages"),
        Some(&dora),
        Some(r#"{"to":"dora","payload":{}}"#),
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = http(
        "POST",
        &format!("{base}/actors/eve/inbox"),
        Some(&dora),
        Some("{}"),
    )
    .await;
    assert_eq!(code, 403);
    let (code, taken) = http(
        "POST",
        &format!("{base}/actors/eve/inbox"),
        Some(&admin),
        Some(r#"{"limit":10}"#),
    )
    .await;
    assert_eq!(code, 200, "{taken}");
    assert_eq!(taken["messages"][0]["payload"]["n"], 1);
    let id = taken["messages"][0]["id"].as_i64().unwrap();
    let (code, acked) = http(
        "POST",
        &format!("{base}/actors/eve/ack"),
        Some(&admin),
        Some(&format!(r#"{{"message_ids":[{id},424242]}}"#)),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(acked[0]["ok"], true);
    assert_eq!(acked[1]["ok"], false);
    assert!(acked[1]["error"].as_str().unwrap().contains("424242"));

    // Reviews: asked as dora, answered by the admin with the request's own option id.
    let (code, review) = http(
        "POST",
        &format!("{base}/actors/dora/permission-requests"),
        Some(&dora),
        Some(r#"{"title":"rotate keys","options":[{"id":"go"},{"id":"stop"}]}"#),
    )
    .await;
    assert_eq!(code, 201, "{review}");
    let rid = review["request_id"].as_str().unwrap();
    let respond = format!("{base}/permission-reviews/{rid}/respond");
    let (code, _) = http("POST", &respond, Some(&dora), Some(r#"{"option_id":"go"}"#)).await;
    assert_eq!(code, 403, "an actor never answers, not even its own");
    let (code, err) = http(
        "POST",
        &respond,
        Some(&admin),
        Some(r#"{"option_id":"yes"}"#),
    )
    .await;
    assert_eq!(code, 400);
    assert!(err["error"].to_string().contains("(go, stop)"), "{err}");
    let (code, answered) = http(
        "POST",
        &respond,
        Some(&admin),
        Some(r#"{"option_id":"go"}"#),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(answered["option_id"], "go");
    assert_eq!(answered["answered_by"], "ops");
    let (code, seen) = http(
        "GET",
        &format!("{base}/permission-reviews/{rid}?wait_ms=10"),
        Some(&dora),
        None,
    )
    .await;
    assert_eq!((code, &seen["state"]), (200, &Value::from("answered")));
    let (code, _) = http(
        "GET",
        &format!("{base}/permission-reviews"),
        Some(&dora),
        None,
    )
    .await;
    assert_eq!(
        code, 403,
        "every actor's reviews are the operators' to list"
    );

    // Triggers over REST.
    let (code, trigger) = http(
        "POST",
        &format!("{base}/actors/dora/time-triggers"),
        Some(&dora),
        Some(r#"{"cron":"0 9 * * 1-5","payload":{"standup":true}}"#),
    )
    .await;
    assert_eq!(code, 201, "{trigger}");
    assert_eq!(trigger["schedule"], "cron 0 9 * * 1-5");
    let tid = trigger["id"].as_str().unwrap();
    let (code, _) = http(
        "DELETE",
        &format!("{base}/actors/time-triggers/{tid}"),
        Some(&hub.token("eve", Role::Actor)),
        None,
    )
    .await;
    assert_eq!(code, 403, "another actor's trigger");
    let (code, _) = http(
        "DELETE",
        &format!("{base}/actors/time-triggers/{tid}"),
        Some(&dora),
        None,
    )
    .await;
    assert_eq!(code, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wasm_actor_agent_gets_one_call_per_message_and_its_sends_go_out_once_it_succeeds() {
    let hub = TestHub::start_adjusted(TlsMode::Tls, |c| {
        c.actors.visibility_timeout = Duration::from_millis(300);
        c.actors.max_deliveries = 2;
    })
    .await;
    let _node = start_node(hub.node_config("wasm-n", outpost_tests::STATIC_TOKEN)).await;
    hub.wait_status("wasm-n", "online", Duration::from_secs(15))
        .await;
    let wasm = outpost_guests::ponger().display().to_string();
    let (code, _, err) = hub.cli(&["tool", "push", &wasm, "--name", "ponger"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = hub
        .cli(&[
            "agents", "create", "--name", "pong", "--node", "wasm-n", "--tool", "ponger", "--json",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let agent = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, err) = hub.cli(&["agents", "start", &agent]).await;
    assert_eq!(code, 0, "{err}");

    send(&hub, "tester", &agent, r#"{"ping":1}"#).await;
    let answer = eventually("the pong", Duration::from_secs(20), async || {
        let got = messages(&ok(&hub, &["inbox", "--actor-id", "tester", "--auto-ack"]).await);
        got.into_iter()
            .next()
            .ok_or_else(|| "no pong yet".to_string())
    })
    .await;
    assert_eq!(answer["from"], agent.as_str());
    assert_eq!(answer["payload"]["pong"]["ping"], 1);
    assert!(
        answer["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with("on-message:"),
        "{answer}"
    );
    // Handled means acked: nothing of it is left for the agent.
    let handled = outpost_hub::store::actors::MessageFilter {
        recipient: Some(&agent),
        state: Some(outpost_hub::store::actors::MessageState::Acked),
        limit: 10,
    };
    let state = hub.hub().state.clone();
    eventually("the ack", Duration::from_secs(10), async || {
        let acked = state
            .store()
            .list_messages(&handled)
            .await
            .map_err(|e| e.to_string())?;
        if acked.len() == 1 {
            Ok(())
        } else {
            Err(format!("{acked:?}"))
        }
    })
    .await;

    // A message it refuses comes again, then goes to the dead letters; it sends nothing.
    let refused = send(&hub, "tester", &agent, r#"{"fail":true}"#).await;
    let dead = eventually("the dead letter", Duration::from_secs(20), async || {
        let dead = messages(&ok(&hub, &["dead-letters", "--actor-id", &agent]).await);
        if dead.len() == 1 {
            Ok(dead)
        } else {
            Err(format!("{dead:?}"))
        }
    })
    .await;
    assert_eq!(dead[0]["id"], refused);
    assert_eq!(dead[0]["deliveries"], 2);
    let logs = agent_output(&hub, &agent).await;
    assert!(
        logs.contains(&format!("refusing message {refused}")),
        "{logs}"
    );
    assert!(logs.contains("handled; 1 sent"), "{logs}");
    assert!(
        messages(&ok(&hub, &["inbox", "--actor-id", "tester"]).await).is_empty(),
        "a refused call sends nothing"
    );
    // Still a tool: an input line is one invoke.
    let (code, _, err) = hub
        .cli(&["agents", "input", &agent, "--text", "hello"])
        .await;
    assert_eq!(code, 0, "{err}");
    eventually("the invoke", Duration::from_secs(10), async || {
        let logs = agent_output(&hub, &agent).await;
        if logs.contains("pong: hello") {
            Ok(())
        } else {
            Err(logs)
        }
    })
    .await;
    hub.cli(&["agents", "stop", &agent]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_may_keep_only_so_many_reviews_waiting() {
    use outpost_hub::actors::reviews::{MAX_PENDING_PER_ACTOR, PermissionRequest, request};
    let hub = TestHub::start(TlsMode::Tls).await;
    let state = hub.hub().state.clone();
    let ask = |title: String| PermissionRequest {
        actor_id: "agent-busy".into(),
        title,
        options: vec![outpost_hub::store::actors::ReviewOption {
            id: "ok".into(),
            ..Default::default()
        }],
        ..PermissionRequest::default()
    };
    for n in 0..MAX_PENDING_PER_ACTOR {
        request(&state, ask(format!("request {n}"))).await.unwrap();
    }
    let err = request(&state, ask("one more".into())).await.unwrap_err();
    assert!(err.to_string().contains("has 100 reviews waiting"), "{err}");
    // Another actor is not held back by it.
    request(
        &state,
        PermissionRequest {
            actor_id: "agent-calm".into(),
            ..ask("mine".into())
        },
    )
    .await
    .unwrap();
}
