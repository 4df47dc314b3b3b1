//! Time on the hub's injected clock: liveness (TTL and grace) follows the monotonic reading, so
//! stepping the wall clock an hour either way changes no node's liveness, while letting time pass
//! marks a silent node offline at once; join challenges expire on the wall reading. A
//! `ManualClock` moves time in milliseconds, so nothing here waits for a TTL.

use std::sync::Arc;
use std::time::Duration;

use outpost_clock::{Clock, ManualClock, SystemClock};
use outpost_config::TlsMode;
use outpost_hub::credentials::join::{self, AdmissionError, CHALLENGE_TTL_MS};
use outpost_hub::fleet::NodeStatus;
use outpost_proto::v1::{BeginJoinResponse, CompleteJoinRequest};
use outpost_tests::{STATIC_TOKEN, TestHub, start_node};
use outpost_trust::auth::{BootstrapToken, join_proof};
use outpost_trust::identity::new_key_and_csr;

/// A manual clock whose wall reading starts at the real time (JWTs are checked against it).
fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(SystemClock.now_ms()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_steps_change_no_nodes_liveness() {
    let clock = manual_clock();
    let hub = TestHub::start_on_clock(TlsMode::Tls, clock.clone()).await;
    let node = start_node(hub.node_config("clock-1", STATIC_TOKEN)).await;
    hub.wait_status("clock-1", "online", Duration::from_secs(15))
        .await;
    let status = || hub.hub().state.fleet.liveness().status("clock-1");

    // An NTP step an hour forward, then two hours back: the node stays online.
    clock.step_wall_ms(3_600_000);
    hub.liveness_passes(3).await;
    assert_eq!(status(), Some(NodeStatus::Online), "after a step forward");
    clock.step_wall_ms(-7_200_000);
    hub.liveness_passes(3).await;
    assert_eq!(status(), Some(NodeStatus::Online), "after a step back");
    clock.step_wall_ms(3_600_000);

    // The node stops. No time passes on the hub's clock, so it is not yet missed...
    node.shutdown().await;
    hub.liveness_passes(3).await;
    assert_eq!(
        status(),
        Some(NodeStatus::Online),
        "no monotonic time passed"
    );
    // ...and once TTL + grace pass (500 ms + up to 125 ms stagger + 500 ms), it is offline at
    // the next pass, silent for exactly the time that passed.
    clock.advance_ms(2_000);
    let offline = hub
        .wait_status("clock-1", "offline", Duration::from_secs(15))
        .await;
    let reason = offline["status_reason"].as_str().unwrap();
    assert!(reason.starts_with("no heartbeat for 2000 ms"), "{reason}");
}

/// A correct answer to `challenge` with the static token.
fn answer(challenge: &BeginJoinResponse, node_id: &str) -> CompleteJoinRequest {
    let (_key, csr) = new_key_and_csr(node_id).unwrap();
    let token = BootstrapToken::parse(STATIC_TOKEN);
    CompleteJoinRequest {
        challenge_id: challenge.challenge_id.clone(),
        node_id: node_id.into(),
        csr_pem: csr.pem().unwrap(),
        token_id: token.id.clone(),
        proof: join_proof(&token.proof_key(), &challenge.nonce, node_id, csr.der()),
        name: node_id.into(),
        grpc_target: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_challenges_expire_on_the_hubs_wall_clock() {
    let clock = manual_clock();
    let hub = TestHub::start_on_clock(TlsMode::Tls, clock.clone()).await;
    let state = &hub.hub().state;

    // Answered just inside its lifetime: the node joins.
    let challenge = join::begin(state, "clock-a", None).await.unwrap();
    assert_eq!(challenge.expires_at_ms, clock.now_ms() + CHALLENGE_TTL_MS);
    clock.advance_ms(CHALLENGE_TTL_MS - 1);
    join::complete(state, &answer(&challenge, "clock-a"))
        .await
        .unwrap();

    // Answered at its expiry: refused as expired, and nothing is registered.
    let challenge = join::begin(state, "clock-b", None).await.unwrap();
    clock.advance_ms(CHALLENGE_TTL_MS);
    let err = join::complete(state, &answer(&challenge, "clock-b"))
        .await
        .unwrap_err();
    assert!(matches!(err, AdmissionError::ChallengeExpired), "{err}");
    assert!(state.store().get_node("clock-b").await.unwrap().is_none());
    assert!(state.store().get_node("clock-a").await.unwrap().is_some());
}
