//! Credentials renew themselves: a node renews its certificate in session (same key, the
//! registry binding unchanged) once a third of its lifetime is left, keeps it across restarts,
//! and comes back after its JWT and first certificate have both expired; the hub hands it a
//! fresh JWT on every session.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{STATIC_TOKEN, TestHub, eventually, start_node};
use outpost_trust::identity::IdentityStore;
use outpost_trust::tls;

fn not_after(pem: &str) -> i64 {
    tls::not_after_unix(&tls::certs_from_pem(pem, "certificate").unwrap()[0]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_renews_its_certificate_and_outlives_its_first_credentials() {
    let mut hub = TestHub::start_adjusted(TlsMode::Tls, |config| {
        config.internal_grpc.security.node_certificate_lifetime = Duration::from_secs(6);
        config.internal_grpc.security.node_token_lifetime = Duration::from_secs(2);
    })
    .await;
    let config = hub.node_config("renew-1", STATIC_TOKEN);
    let store = IdentityStore::new(&config.data_dir());
    let node = start_node(config).await;
    let first = store.load().unwrap().unwrap();
    let key = hub
        .hub()
        .state
        .store()
        .get_node("renew-1")
        .await
        .unwrap()
        .unwrap()
        .public_key_sha256;

    // Renewed in session, twice: each certificate outlasts the one before, for the same key.
    eventually("two renewals", Duration::from_secs(30), async || match node
        .stats
        .certificate_renewals
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        n if n >= 2 => Ok(()),
        n => Err(format!("{n} renewals")),
    })
    .await;
    let renewed = store.load().unwrap().unwrap();
    assert!(not_after(&renewed.certificate_pem) > not_after(&first.certificate_pem));
    assert_eq!(renewed.key_pem, first.key_pem, "a renewal keeps the key");
    let spki = |pem: &str| tls::spki_sha256(&tls::certs_from_pem(pem, "c").unwrap()[0]).unwrap();
    assert_eq!(Some(spki(&renewed.certificate_pem)), key);
    assert_ne!(
        renewed.node_jwt, first.node_jwt,
        "the JWT was refreshed too"
    );

    // Well past the first certificate and JWT: a restarted hub takes the node back, on the
    // renewed certificate and with the expired JWT, and hands it a fresh one.
    assert!(
        not_after(&first.certificate_pem) < now_s(),
        "the first certificate expired"
    );
    let sessions = node
        .stats
        .sessions
        .load(std::sync::atomic::Ordering::Relaxed);
    hub.restart().await;
    eventually("the node back", Duration::from_secs(30), async || {
        let now = node
            .stats
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed);
        if now > sessions
            && node
                .stats
                .connected
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            Ok(())
        } else {
            Err(format!(
                "{now} sessions; last error: {}",
                node.stats.last_error.lock()
            ))
        }
    })
    .await;
    hub.wait_status("renew-1", "online", Duration::from_secs(10))
        .await;
    // And a restarted node keeps what it renewed.
    node.shutdown().await;
    let kept = store.load().unwrap().unwrap();
    assert!(not_after(&kept.certificate_pem) >= not_after(&renewed.certificate_pem));
    let again = start_node(hub.node_config("renew-1", STATIC_TOKEN)).await;
    assert!(!again.joined_now, "no new join was needed");
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
