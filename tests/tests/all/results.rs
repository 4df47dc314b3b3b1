//! Results of any size the tool may produce reach the hub, or fail once with `output_limit`:
//! a tool returning its whole default allowance succeeds, an output the result cannot carry
//! fails on its first attempt (no silent re-run), and the node's later results still arrive.
//! Task lists come in pages, so large outputs never have to travel all at once.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_proto::limits::MAX_RESULT_OUTPUT;
use outpost_tests::{STATIC_TOKEN, TestHub, start_node};

use crate::tasks::{parse, push_hostile_with_policy, send_and_wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_up_to_the_limit_arrive_and_larger_ones_fail_once() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let _node = start_node(hub.node_config("results-1", STATIC_TOKEN)).await;
    hub.wait_status("results-1", "online", Duration::from_secs(10))
        .await;
    let hostile = outpost_guests::hostile();
    crate::tasks::push(&hub, "flood", &hostile).await;
    push_hostile_with_policy(&hub, "roomy", "[limits]\nmax_output = \"16MiB\"\n").await;

    // The default allowance (1 MiB) returned whole: delivered, first time.
    let whole = send_and_wait(&hub, "results-1", "flood", "return-flood 1048576").await;
    assert_eq!(whole["status"], "succeeded", "{}", whole["reason"]);
    assert_eq!(whole["attempts"], 1);
    assert_eq!(whole["output"].as_str().unwrap().len(), 1 << 20);

    // More than a result may carry, allowed by the policy: one attempt, `output_limit`.
    let over = MAX_RESULT_OUTPUT + 1;
    let refused = send_and_wait(&hub, "results-1", "roomy", &format!("return-flood {over}")).await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["attempts"], 1, "not run again: {refused}");
    assert_eq!(refused["error"]["kind"], "output_limit");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{over} bytes"))
            && message.contains(&MAX_RESULT_OUTPUT.to_string()),
        "{message}"
    );

    // The node's results still flow, a large one included.
    let large = send_and_wait(&hub, "results-1", "roomy", "return-flood 3145728").await;
    assert_eq!(large["status"], "succeeded", "{}", large["reason"]);
    assert_eq!(large["output"].as_str().unwrap().len(), 3 << 20);
    let (code, out, _) = hub.cli(&["tasks", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(parse(&out).as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_lists_come_in_pages() {
    let hub = TestHub::start(TlsMode::Tls).await;
    crate::tasks::push(&hub, "echo", &outpost_guests::echo()).await;
    let mut submitted = Vec::new();
    for i in 0..5 {
        let input = format!("page-{i}");
        let (code, out, err) = hub
            .cli(&[
                "tasks", "submit", "--tool", "echo", "--input", &input, "--json",
            ])
            .await;
        assert_eq!(code, 0, "{err}");
        submitted.push(parse(&out)["id"].as_str().unwrap().to_string());
    }
    // Newest first, two at a time, each page going on from the last id of the one before.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut args = vec!["tasks", "list", "--limit", "2", "--json"];
        if let Some(id) = &before {
            args.extend(["--before", id.as_str()]);
        }
        let (code, out, err) = hub.cli(&args).await;
        assert_eq!(code, 0, "{err}");
        let page: Vec<String> = parse(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        before = page.last().cloned();
        seen.extend(page);
    }
    // Every task once (tasks created in the same millisecond are ordered by id).
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    submitted.sort();
    assert_eq!(sorted, submitted, "pages: {seen:?}");
    assert_eq!(seen.len(), 5);
    let (code, _, err) = hub
        .cli(&["tasks", "list", "--before", "task-nonexistent"])
        .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("before: no task \"task-nonexistent\""),
        "{err}"
    );
}
