//! `outpost doctor`: every check ok against a running hub and node; a hub that is not there is
//! named with the fix, and the command fails.

use std::time::Duration;

use outpost_config::TlsMode;
use outpost_tests::{STATIC_TOKEN, TestHub, start_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_way_to_the_hub_and_a_node() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let _node = start_node(hub.node_config("doc-n", STATIC_TOKEN)).await;
    hub.wait_status("doc-n", "online", Duration::from_secs(15))
        .await;
    let (code, out, err) = hub.cli(&["doctor", "--node", "doc-n"]).await;
    assert_eq!(code, 0, "{out} {err}");
    for check in [
        "ok   config",
        "ok   hub reachable",
        "ok   tls: hub certificate signed by the CA",
        "ok   hub reachable (UDP): ",
        "answered a QUIC handshake",
        "ok   clock skew: the hub's clock is within",
        "ok   grpc health: SERVING",
        "ok   token accepted: 1 nodes registered",
        "ok   node session: doc-n: status online",
        "ok   tls server name: no direct route; the node's certificate names doc-n",
    ] {
        assert!(out.contains(check), "{check} missing from {out}");
    }
    let (code, out, _) = hub.cli(&["doctor", "--json"]).await;
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // An unknown node, and a hub where there is none: each named, exit 1.
    let (code, out, _) = hub.cli(&["doctor", "--node", "nobody"]).await;
    assert_eq!(code, 1);
    assert!(out.contains("FAIL node session: nobody"), "{out}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = hub.write_config();
    let args = [
        "outpost".to_string(),
        "doctor".into(),
        "--config".into(),
        config.display().to_string(),
        "--hub".into(),
        format!("https://127.0.0.1:{port}"),
    ];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = outpost_cli::main_with_io(args.to_vec(), &mut out, &mut err).await;
    let (out, err) = (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    );
    assert_eq!(code, 1, "{out} {err}");
    assert!(out.contains("FAIL hub reachable"), "{out}");
    assert!(out.contains("Fix: is the hub running"), "{out}");
    assert!(err.contains("1 of 2 checks failed"), "{err}");
}
