//! The heartbeat channel end to end: a real node's heartbeats travel as sealed packets on the
//! hub's QUIC port once the hub confirms the channel, fall back to QUIC datagrams when the
//! channel goes dark, and forged, replayed or garbage packets change nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use outpost_config::TlsMode;
use outpost_proto::heartbeat_channel::{ChannelKey, channel_key};
use outpost_proto::v1::{Heartbeat, HelloAck, NodeHello};
use outpost_tests::{STATIC_TOKEN, TestHub, start_node};
use outpost_trust::identity::IdentityStore;
use prost::Message;

async fn health(hub: &TestHub, id: &str) -> serde_json::Value {
    let (code, out, err) = hub.cli(&["nodes", "health", id, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    outpost_tests::eventually(what, timeout, async || {
        if ok() {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_use_the_channel_and_fall_back_to_datagrams_when_it_goes_dark() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let node = start_node(hub.node_config("beat-1", STATIC_TOKEN)).await;
    hub.wait_status("beat-1", "online", Duration::from_secs(10))
        .await;
    let channels = hub.hub().state.fleet.heartbeat_channels().clone();
    wait_for("channel confirmed", Duration::from_secs(10), || {
        node.stats.channel_confirmed.load(Ordering::SeqCst)
    })
    .await;
    let accepted = channels.counts().accepted;
    assert!(accepted >= 1, "{:?}", channels.counts());
    // Confirmed: the next heartbeats arrive on the channel alone, and keep the node online.
    wait_for("more channel heartbeats", Duration::from_secs(10), || {
        channels.counts().accepted >= accepted + 3
    })
    .await;
    let before = health(&hub, "beat-1").await;
    assert_eq!(before["heartbeat_transport"], "channel", "{before}");
    assert!(node.stats.heartbeats_on_channel.load(Ordering::SeqCst) >= 4);

    // The channel goes dark: the node is missed (offline after TTL + grace), told to use
    // datagrams (the hub says so only then), and comes back by them.
    assert_eq!(channels.close_node("beat-1"), 1);
    wait_for(
        "node told to leave the channel",
        Duration::from_secs(10),
        || !node.stats.channel_confirmed.load(Ordering::SeqCst),
    )
    .await;
    hub.wait_status("beat-1", "online", Duration::from_secs(10))
        .await;
    let after = health(&hub, "beat-1").await;
    assert_eq!(after["heartbeat_transport"], "datagram", "{after}");
    assert!(
        channels.counts().unknown_channel >= 1,
        "{:?}",
        channels.counts()
    );
    assert_eq!(
        after["session_reconnects"], before["session_reconnects"],
        "same session throughout"
    );
    // Datagram heartbeats keep arriving on the same session.
    let received = after["heartbeats_received"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let later = health(&hub, "beat-1").await;
        if later["heartbeats_received"].as_u64().unwrap() > received {
            assert_eq!(later["heartbeat_transport"], "datagram", "{later}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no datagram heartbeat after {received}: {later}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.wait_status("beat-1", "online", Duration::from_secs(10))
        .await;

    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_garbage_channel_packets_change_nothing() {
    let hub = TestHub::start(TlsMode::Tls).await;
    // A real node joins once; its stored identity then speaks the session by hand.
    start_node(hub.node_config("raw-1", STATIC_TOKEN))
        .await
        .shutdown()
        .await;
    hub.wait_status("raw-1", "offline", Duration::from_secs(10))
        .await;
    let identity = IdentityStore::new(&hub.dir.path().join("nodes").join("raw-1"))
        .load()
        .unwrap()
        .unwrap();
    let certs = outpost_trust::tls::certs_from_pem(&identity.certificate_pem, "cert").unwrap();
    let key = outpost_trust::tls::key_from_pem(&identity.key_pem, "key").unwrap();
    let client = outpost_trust::tls::quic_client_config(&identity.ca_pem, certs, key).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let quic = hub.hub().addrs.quic;
    let connection = endpoint
        .connect_with(client, quic, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let hello = NodeHello {
        node_id: "raw-1".into(),
        jwt: identity.node_jwt.clone(),
        ..Default::default()
    };
    outpost_proto::framing::write_frame(&mut send, &hello)
        .await
        .unwrap();
    let _ = send.finish();
    let ack: HelloAck = outpost_proto::framing::read_frame(&mut recv, 64 * 1024)
        .await
        .unwrap();
    let id = ack.heartbeat_channel_id;
    assert_ne!(id, 0, "the hub offers a channel");
    let key = channel_key(&connection, id).unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let channels = hub.hub().state.fleet.heartbeat_channels().clone();
    let beat = |seq: u64| {
        Heartbeat {
            node_id: "raw-1".into(),
            seq,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let heartbeats = || {
        hub.hub()
            .state
            .fleet
            .live("raw-1")
            .map_or(0, |l| l.heartbeats)
    };

    // An authentic heartbeat is counted (the earlier real session's were counted before).
    let base = heartbeats();
    let c0 = channels.counts();
    let first = key.seal(id, 1, &beat(1));
    udp.send_to(&first, quic).await.unwrap();
    wait_for("first heartbeat", Duration::from_secs(15), || {
        heartbeats() == base + 1
    })
    .await;
    hub.wait_status("raw-1", "online", Duration::from_secs(15))
        .await;

    // Replayed, forged (another key, a huge sequence number), tampered, for an unknown channel,
    // too short, of another version: each refused and counted; none moves the window.
    let forged = ChannelKey::from_bytes(&[9; 32]).unwrap();
    let mut tampered = key.seal(id, 5, &beat(5));
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    let mut other_version = key.seal(id, 6, &beat(6));
    other_version[0] = 0x3f;
    for packet in [
        first.clone(),
        forged.seal(id, u64::MAX, &beat(u64::MAX)),
        tampered,
        key.seal(id ^ 0xffff, 7, &beat(7)),
        vec![0x01, 0x02, 0x03],
        other_version,
    ] {
        udp.send_to(&packet, quic).await.unwrap();
    }
    wait_for("refusals counted", Duration::from_secs(15), || {
        let c = channels.counts();
        c.replayed + c.unauthentic + c.unknown_channel + c.malformed
            >= c0.replayed + c0.unauthentic + c0.unknown_channel + c0.malformed + 6
    })
    .await;
    let counts = channels.counts();
    assert_eq!(
        (
            counts.accepted - c0.accepted,
            counts.replayed - c0.replayed,
            counts.unauthentic - c0.unauthentic,
            counts.unknown_channel - c0.unknown_channel,
            counts.malformed - c0.malformed
        ),
        (1, 1, 2, 1, 2),
        "{counts:?}"
    );
    assert_eq!(
        heartbeats(),
        base + 1,
        "no refused packet counted as a heartbeat"
    );

    // The next authentic heartbeat is still accepted, and the QUIC session still works.
    udp.send_to(&key.seal(id, 2, &beat(2)), quic).await.unwrap();
    wait_for("second heartbeat", Duration::from_secs(15), || {
        heartbeats() == base + 2
    })
    .await;
    assert!(connection.close_reason().is_none(), "session survived");
    let (code, _, err) = hub.cli(&["nodes", "get", "raw-1", "--json"]).await;
    assert_eq!(code, 0, "{err}");

    // The session ends: its channel closes with it.
    connection.close(outpost_proto::close_code::SHUTDOWN.into(), b"done");
    wait_for("channel closed", Duration::from_secs(15), || {
        channels.is_empty()
    })
    .await;
    udp.send_to(&key.seal(id, 3, &beat(3)), quic).await.unwrap();
    wait_for("unknown after close", Duration::from_secs(15), || {
        channels.counts().unknown_channel == c0.unknown_channel + 2
    })
    .await;
}

/// A hub process, killed when dropped (also when a test fails).
struct HubProcess(std::process::Child);

impl HubProcess {
    /// SIGKILL: the process gets no chance to close anything.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `outpost hub --config` (its log to `log`) and waits until its gRPC port accepts
/// connections.
async fn spawn_hub(config: &std::path::Path, grpc: &str, log: &std::path::Path) -> HubProcess {
    let child = std::process::Command::new(outpost_tests::outpost_binary())
        .args(["hub", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(grpc).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub process never listened on {grpc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    HubProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_process_resets_the_quiet_sessions_when_it_comes_back() {
    // Pin ports and data with an in-process start, then run the real binary on them.
    let mut hub = TestHub::start(TlsMode::Tls).await;
    hub.stop().await;
    let config = hub.write_config();
    let grpc = hub.config.internal_grpc.listen.clone();
    let logs = [
        hub.dir.path().join("hub-1.log"),
        hub.dir.path().join("hub-2.log"),
    ];
    let process = spawn_hub(&config, &grpc, &logs[0]).await;
    let node = start_node(hub.node_config("crash-1", STATIC_TOKEN)).await;
    wait_for("channel confirmed", Duration::from_secs(10), || {
        node.stats.channel_confirmed.load(Ordering::SeqCst)
    })
    .await;
    let sessions = node.stats.sessions.load(Ordering::SeqCst);

    // SIGKILL: no close reaches the node, and its heartbeats need no answer. The new process has
    // the same secret, so its stateless reset for the node's next keep-alive is one the node
    // recognises (without it the node would wait out the 45 s idle timeout).
    process.kill();
    let process = spawn_hub(&config, &grpc, &logs[1]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while node.stats.sessions.load(Ordering::SeqCst) == sessions {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new session; connected: {}, last error: {}, hub log: {}",
            node.stats.connected.load(Ordering::SeqCst),
            node.stats.last_error.lock(),
            std::fs::read_to_string(&logs[1]).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = node.stats.last_error.lock().clone();
    assert!(
        ended.contains("reset by peer"),
        "the old session ended by a stateless reset, not a timeout: {ended}"
    );

    node.shutdown().await;
    process.kill();
}
