//! Bounded fuzzing of every parser that reads what another party sent: QUIC frames, heartbeat
//! channel packets, `policy.toml`, the config, REST bodies and CSRs. Each target starts from
//! its corpus (`tests/fuzz-corpus/<target>/`, plus seeds built here), applies seeded random
//! mutations (bit flips, byte inserts and deletes, truncation, splices, length-field
//! rewrites), and checks that the parser answers — an error or a value — without panicking,
//! allocating past its cap, or taking long. Iterations are fixed, so a run is bounded;
//! `OUTPOST_FUZZ_ITERATIONS` raises them for a longer local run and `OUTPOST_FUZZ_SEED` replays
//! one.

use std::path::Path;

use outpost_proto::framing;
use outpost_proto::heartbeat_channel::{self, ChannelKey};
use outpost_proto::v1::{HubCommand, NodeEvent, TaskResult, hub_command, node_event};

/// Deterministic xorshift64*: the same seed replays the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn iterations() -> usize {
    std::env::var("OUTPOST_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn seed() -> u64 {
    std::env::var("OUTPOST_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}

/// The stored corpus of `target` and the seeds given here.
fn corpus(target: &str, mut seeds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(target);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                seeds.push(bytes);
            }
        }
    }
    assert!(!seeds.is_empty(), "{target}: empty corpus");
    seeds
}

/// One mutation of one corpus entry (sometimes spliced with another).
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut input = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(input.len() + 1);
                input.insert(at, rng.next() as u8);
            }
            2 if !input.is_empty() => {
                let at = rng.below(input.len());
                input.remove(at);
            }
            3 => input.truncate(rng.below(input.len() + 1)),
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                let at = rng.below(input.len() + 1);
                let from = rng.below(other.len() + 1);
                input.splice(at..at, other[from..].iter().copied());
            }
            5 if input.len() >= 4 => {
                // Lengths are where parsers trust their input most.
                let at = rng.below(input.len() - 3);
                let value = [0u32, 1, 0x7fff_ffff, u32::MAX, input.len() as u32 * 2][rng.below(5)];
                input[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            _ => {
                let at = rng.below(input.len() + 1);
                let junk = [
                    b"\"".as_slice(),
                    b"[",
                    b"]]",
                    b"\n",
                    b"=",
                    b"\0",
                    b"\xff\xfe",
                    b"{}",
                    b"\\u0000",
                ][rng.below(9)];
                input.splice(at..at, junk.iter().copied());
            }
        }
    }
    input
}

/// Runs `check` on every corpus entry and on `iterations()` mutations of them.
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, mut check: impl FnMut(&[u8])) {
    let corpus = corpus(target, seeds);
    for entry in &corpus {
        check(entry);
    }
    let mut rng = Rng(seed()
        ^ target
            .bytes()
            .fold(7_u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)));
    for _ in 0..iterations() {
        let input = mutate(&mut rng, &corpus);
        check(&input);
    }
}

#[test]
fn quic_frames() {
    let result = NodeEvent {
        kind: Some(node_event::Kind::TaskResult(TaskResult {
            task_id: "task-1".into(),
            output: "out".into(),
            ..Default::default()
        })),
    };
    let command = HubCommand {
        id: 9,
        kind: Some(hub_command::Kind::SetHeartbeatIntervalMs(500)),
    };
    let seeds = vec![
        framing::encode_frame(&result),
        framing::encode_frame(&command),
    ];
    let cap = 64 * 1024;
    fuzz("quic-frames", seeds, |bytes| {
        for outcome in [
            framing::decode_frame::<NodeEvent>(bytes, cap).map(|_| ()),
            framing::decode_frame::<HubCommand>(bytes, cap).map(|_| ()),
        ] {
            if let Err(framing::FrameError::TooLarge { len, max }) = outcome {
                assert!(len > max && max == cap);
            }
        }
    });
}

#[test]
fn heartbeat_channel_packets() {
    let key = ChannelKey::from_bytes(&[7; 32]).unwrap();
    let other = ChannelKey::from_bytes(&[8; 32]).unwrap();
    let seeds = vec![
        key.seal(42, 1, b"heartbeat"),
        key.seal(42, u64::MAX, &[0; 300]),
        other.seal(1, 2, b"not ours"),
    ];
    fuzz("heartbeat-packets", seeds, |bytes| {
        let _ = heartbeat_channel::parse_header(bytes);
        let mut packet = bytes.to_vec();
        if let Ok(plain) = key.open(&mut packet) {
            // Only a packet sealed with this key opens, and only to what was sealed.
            assert!(plain == b"heartbeat" || plain == [0; 300], "{plain:?}");
        }
    });
}

#[test]
fn tool_policies() {
    let seeds = vec![
        b"[[fs]]\nhost = \"/srv/corpus\"\nguest = \"/corpus\"\naccess = \"ro\"\n[env]\nallow = [\"LANG\"]\n[network]\nallow_hosts = [\"127.0.0.1:8080\"]\n[limits]\nmemory = \"64MiB\"\nfuel = 1_000_000\ntimeout = \"5s\"\nmax_output = \"1MiB\"\n".to_vec(),
        b"[limits]\nfuel = \"unlimited\"\n".to_vec(),
    ];
    fuzz("policy-toml", seeds, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Err(e) = outpost_sandbox::ToolPolicy::from_toml(&text, "fuzzed policy") {
            assert_eq!(e.kind, outpost_sandbox::ErrorKind::PolicyInvalid);
            assert!(!e.message.is_empty());
        }
    });
}

#[test]
fn configs() {
    let seeds = vec![
        b"[server]\nrole = \"node\"\nnode_id = \"gpu-01\"\ndata_dir = \"/var/lib/outpost\"\n[internal_grpc]\nlisten = \"127.0.0.1:50051\"\n[internal_grpc.bootstrap]\ntoken = \"0123456789abcdef0123\"\n[node]\nsafe_paths = [\"/data\"]\nlabels = { zone = \"edge\" }\n[gpu]\nprobe = \"simulated\"\n".to_vec(),
        b"[fleet]\nmin_heartbeat_ttl = \"10s\"\n[scheduler]\nstrategy = \"spread\"\n".to_vec(),
    ];
    fuzz("config", seeds, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Err(e) = outpost_config::Config::from_toml(&text) {
            assert!(!e.to_string().is_empty());
        }
    });
}

#[test]
fn certificate_requests() {
    let dir = tempfile::tempdir().unwrap();
    let pki = outpost_hub::credentials::pki::HubPki::load_or_init(dir.path(), &[]).unwrap();
    let (_, csr) = outpost_trust::identity::new_key_and_csr("fuzz-node").unwrap();
    let seeds = vec![csr.der().to_vec(), csr.pem().unwrap().into_bytes()];
    fuzz("csr", seeds, |bytes| {
        let der = outpost_hub::credentials::pki::csr_der_from_pem(&String::from_utf8_lossy(bytes))
            .unwrap_or_else(|_| bytes.to_vec());
        if let Ok((pem, _)) =
            pki.ca
                .sign_node_csr(&der, "fuzz-node", std::time::Duration::from_secs(60))
        {
            // Whatever the request said, the certificate names the node the hub chose.
            let cert = outpost_trust::tls::certs_from_pem(&pem, "signed").unwrap();
            assert_eq!(
                outpost_trust::tls::node_id_from_cert(&cert[0]).unwrap(),
                "fuzz-node"
            );
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_bodies() {
    use outpost_config::TlsMode;
    use outpost_trust::auth::Role;
    let hub = outpost_tests::TestHub::start(TlsMode::Tls).await;
    let admin = hub.token("admin", Role::Admin);
    let seeds = vec![
        br#"{"id": "node-01", "name": "One", "grpc_target": "https://n1:50051", "tls_server_name": "n1", "default_worktree_root": "/data"}"#.to_vec(),
        br#"{"tool": "echo", "input": "x", "requirements": {"gpus": 0.5, "labels": {"a": "b"}}, "max_attempts": 2, "idempotency_key": "k"}"#.to_vec(),
    ];
    let corpus = corpus("rest-bodies", seeds);
    let mut rng = Rng(seed());
    // Each case is a round trip to a real hub: fewer of them.
    let rounds = (iterations() / 10).max(corpus.len());
    for round in 0..rounds {
        let body = if round < corpus.len() {
            corpus[round].clone()
        } else {
            mutate(&mut rng, &corpus)
        };
        let body = String::from_utf8_lossy(&body).into_owned();
        for path in ["/api/admin/agent-nodes", "/api/admin/tasks"] {
            let url = format!("{}{path}", hub.http_url());
            let (status, answer) =
                outpost_tests::http_json("POST", &url, Some(&admin), Some(&body)).await;
            // An answer for every body, and never a server error.
            assert!(status < 500, "{status} for {body:?}: {answer}");
        }
    }
    let (status, _) =
        outpost_tests::http_json("GET", &format!("{}/healthz", hub.http_url()), None, None).await;
    assert_eq!(status, 200, "the hub still serves");
}
