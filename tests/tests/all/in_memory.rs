//! The task engine against its in-memory seams: a hub on the in-memory store and a manual clock,
//! driving an in-process node ([`LoopbackLink`]) instead of a QUIC session. What the hub sends the
//! node is recorded, so the resend of a missing component, a refusal that spends the attempts, a
//! cancel that reaches the node and a node lost to its TTL are checked from the hub's side, in
//! milliseconds of simulated time.

use std::sync::Arc;
use std::time::Duration;

use outpost_clock::{Clock, ManualClock, SystemClock};
use outpost_config::TlsMode;
use outpost_hub::fleet::links::LoopbackLink;
use outpost_hub::state::HubState;
use outpost_hub::store::{AttemptStatus, MemoryStore};
use outpost_hub::work::tasks::{self, RequirementsSpec, SubmitSpec, TaskStatus};
use outpost_hub::work::tools;
use outpost_proto::v1::{Capabilities, TaskResult};
use outpost_tests::{TestHub, eventually};

/// Brings the in-process node `id` online on the hub, reachable through `link`.
fn connect(state: &HubState, id: &str, link: Arc<LoopbackLink>) {
    state.fleet.liveness().add_known(id, false);
    let came_up = state
        .fleet
        .liveness()
        .observe_heartbeat(id, state.monotonic_ms());
    state.publish(came_up);
    state.fleet.links().insert(id, link);
    tasks::observe_capabilities(state, id, &Capabilities::default());
}

async fn submit(state: &Arc<HubState>, input: &str, max_attempts: u32) -> String {
    let spec = SubmitSpec {
        tool: "echo".into(),
        input: input.into(),
        max_attempts,
        requirements: RequirementsSpec {
            node: "mem-1".into(),
            ..RequirementsSpec::default()
        },
        ..SubmitSpec::default()
    };
    tasks::submit(state, spec).await.unwrap().task.id
}

/// Waits until the node has received `count` `RunTask` commands.
async fn received(link: &LoopbackLink, count: usize) {
    let what = format!("{count} RunTask commands received");
    eventually(&what, Duration::from_secs(15), async || {
        let sent = link.run_tasks();
        if sent.len() >= count {
            Ok(())
        } else {
            Err(format!("{sent:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_engine_on_in_memory_seams() {
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let store = Arc::new(MemoryStore::new());
    let hub = TestHub::start_on(TlsMode::Tls, clock.clone(), Some(store)).await;
    let state = hub.hub().state.clone();
    // Pushed before the node connects, so the node lacks the component (a push installs tools
    // only on the nodes connected then).
    let echo = std::fs::read(outpost_guests::echo()).unwrap();
    tools::push(&state, "echo", echo, "", None).await.unwrap();
    let link = Arc::new(LoopbackLink::new(7, Duration::ZERO));
    connect(&state, "mem-1", link.clone());

    // Asked for the component, the hub sends it along with the same attempt.
    let first = submit(&state, "hi", 0).await;
    received(&link, 2).await;
    let sent = link.run_tasks();
    assert_eq!(sent[0].tool_digest, sent[1].tool_digest);
    assert_eq!((sent[0].attempt, sent[1].attempt), (1, 1));
    assert_eq!(sent[1].env["OUTPOST_TASK_ID"], first);
    // The node's result finishes it.
    let result = TaskResult {
        task_id: first.clone(),
        attempt: 1,
        ok: true,
        output: "hi".into(),
        ..TaskResult::default()
    };
    tasks::on_result(&state, "mem-1", result).await;
    let done = tasks::wait(&state, &first, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded, "{done:?}");
    assert_eq!(done.output.as_deref(), Some("hi"));
    let attempts = state.store().list_attempts(&first).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, AttemptStatus::Succeeded);

    // A node that refuses every attempt: each is lost, and the last one fails the task.
    link.refuse_tasks(Some("busy"));
    let refused = submit(&state, "no", 2).await;
    let failed = tasks::wait(&state, &refused, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Failed, "{failed:?}");
    assert_eq!(failed.error_kind, "node_lost");
    assert!(
        failed
            .error_message
            .contains("node mem-1 refused the task: busy; no attempts left (2 of 2)"),
        "{}",
        failed.error_message
    );
    let attempts = state.store().list_attempts(&refused).await.unwrap();
    let statuses: Vec<_> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [AttemptStatus::Lost, AttemptStatus::Lost]);
    link.refuse_tasks(None);

    // A cancel reaches the node running the attempt.
    let cancelled = submit(&state, "stop", 0).await;
    let before = link.run_tasks().len();
    received(&link, before + 1).await;
    let task = tasks::cancel(&state, &cancelled).await.unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    eventually(
        "the cancel sent to the node",
        Duration::from_secs(15),
        async || {
            let cancels = link.cancels();
            if cancels.contains(&(cancelled.clone(), 1)) {
                Ok(())
            } else {
                Err(format!("{cancels:?}"))
            }
        },
    )
    .await;

    // The node falls silent: once TTL + grace pass on the hub's clock it is offline, and the
    // attempt it held goes back to the queue, waiting for a node that fits.
    let orphan = submit(&state, "orphan", 0).await;
    let before = link.run_tasks().len();
    received(&link, before + 1).await;
    // 2 s: past TTL + grace (500 ms + up to 125 ms stagger + 500 ms), short of the 60 s after
    // which the scheduler would also give up on an attempt no heartbeat ever listed, so the
    // node's loss is what sends it back.
    clock.advance_ms(2_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let requeued = loop {
        let task = tasks::get(&state, &orphan).await.unwrap();
        if task.status == TaskStatus::Queued {
            break task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not requeued: {task:?}"
        );
        hub.dispatch_passes(1).await;
    };
    assert_eq!(requeued.attempts, 1);
    // The lost attempt says why; the queued task says why nothing fits now.
    let attempts = state.store().list_attempts(&orphan).await.unwrap();
    assert_eq!(attempts[0].status, AttemptStatus::Lost);
    assert!(
        attempts[0]
            .error_message
            .starts_with("node mem-1 went offline (no heartbeat for 2000 ms"),
        "{}",
        attempts[0].error_message
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !tasks::get(&state, &orphan)
        .await
        .unwrap()
        .reason
        .contains("mem-1: offline: no heartbeat for 2000 ms")
    {
        assert!(tokio::time::Instant::now() < deadline, "no reason given");
        hub.dispatch_passes(1).await;
    }
}
