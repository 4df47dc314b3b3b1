//! Helpers for Outpost's end-to-end tests: a real hub (TLS gRPC, QUIC, HTTP, SQLite file) on
//! `127.0.0.1:0`, real nodes joined with real tokens, the CLI run in-process, and a small HTTP
//! client for the REST API. Nothing is mocked; timings are shortened through configuration only.
// A test-helper crate: failing loudly is what a helper should do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_config::{Config, GpuProbeKind, SimulatedGpu, TlsMode};
use outpost_hub::HubHandle;
use outpost_node::{Node, NodeHandle};
use serde_json::Value;

/// The static bootstrap token every test hub accepts.
pub const STATIC_TOKEN: &str = "static-bootstrap-token-for-tests";

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// A hub under test with its data directory.
pub struct TestHub {
    /// The running hub (None between stop and start).
    pub handle: Option<HubHandle>,
    /// Its configuration (ports pinned after the first start so restarts keep them).
    pub config: Config,
    /// Root of everything the test writes.
    pub dir: tempfile::TempDir,
}

impl TestHub {
    /// Starts a hub with TLS (or mTLS), 500 ms heartbeat TTL and 500 ms grace.
    pub async fn start(mode: TlsMode) -> Self {
        Self::start_on_clock(mode, Arc::new(outpost_clock::SystemClock)).await
    }

    /// [`TestHub::start`] with the hub's clock injected (a `ManualClock` lets a test move time).
    pub async fn start_on_clock(mode: TlsMode, clock: Arc<dyn outpost_clock::Clock>) -> Self {
        Self::start_on(mode, clock, None).await
    }

    /// [`TestHub::start`] with the clock and, when given, the store injected (in place of the
    /// SQLite file, or PostgreSQL when `OUTPOST_TEST_DATABASE_URL` is set).
    pub async fn start_on(
        mode: TlsMode,
        clock: Arc<dyn outpost_clock::Clock>,
        store: Option<Arc<dyn outpost_hub::store::Store>>,
    ) -> Self {
        Self::start_full(mode, clock, store, |_| {}).await
    }

    /// [`TestHub::start`] with `adjust` applied to the hub's config before it starts.
    pub async fn start_adjusted(mode: TlsMode, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_full(mode, Arc::new(outpost_clock::SystemClock), None, adjust).await
    }

    async fn start_full(
        mode: TlsMode,
        clock: Arc<dyn outpost_clock::Clock>,
        store: Option<Arc<dyn outpost_hub::store::Store>>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::loopback_hub(&dir.path().join("hub"), STATIC_TOKEN);
        config.internal_grpc.security.mode = mode;
        config.fleet.min_heartbeat_ttl = Duration::from_millis(500);
        config.fleet.heartbeat_grace = Duration::from_millis(500);
        adjust(&mut config);
        if let Some(url) = postgres_schema_url().await {
            config.storage.url = Some(url);
        }
        let mut builder = outpost_hub::hub::HubBuilder::new(&config).clock(clock);
        if let Some(store) = store {
            builder = builder.store(store);
        }
        let handle = builder.start().await.expect("hub starts");
        // Pin the ports so a restart comes back where the nodes look for it.
        config.server.listen = handle.addrs.http.to_string();
        config.internal_grpc.listen = handle.addrs.grpc.to_string();
        config.server.quic_listen = Some(handle.addrs.quic.to_string());
        Self {
            handle: Some(handle),
            config,
            dir,
        }
    }

    /// Waits until `passes` more passes of `counter` have finished after this call: the way to
    /// show that something did *not* happen (a pass ran and left it alone) without sleeping.
    async fn wait_passes(mut rx: tokio::sync::watch::Receiver<u64>, passes: u64, what: &str) {
        let start = *rx.borrow_and_update();
        let waited = tokio::time::timeout(
            Duration::from_secs(15),
            rx.wait_for(|n| n.wrapping_sub(start) >= passes),
        )
        .await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "{passes} {what} passes did not finish within 15 s"
        );
    }

    /// Waits for `passes` liveness passes (expiry of silent nodes) to finish.
    pub async fn liveness_passes(&self, passes: u64) {
        Self::wait_passes(self.hub().state.fleet.liveness_passes(), passes, "liveness").await;
    }

    /// Waits for `passes` task dispatcher passes to finish.
    pub async fn dispatch_passes(&self, passes: u64) {
        Self::wait_passes(
            self.hub().state.tasks.dispatch_passes(),
            passes,
            "dispatcher",
        )
        .await;
    }

    /// The running hub.
    pub fn hub(&self) -> &HubHandle {
        self.handle.as_ref().expect("hub is running")
    }

    /// Stops the hub.
    pub async fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }

    /// The JWT authority of this hub (its generated secret), to mint test credentials.
    pub fn authority(&self) -> outpost_trust::auth::TokenAuthority {
        let secret = std::fs::read_to_string(self.config.cert_dir().join("auth_secret.txt"))
            .expect("auth secret");
        outpost_trust::auth::TokenAuthority::new(
            secret.trim().as_bytes(),
            "outpost",
            "outpost-internal",
            30,
        )
    }

    /// A JWT of `role` for `subject`, valid ten minutes.
    pub fn token(&self, subject: &str, role: outpost_trust::auth::Role) -> String {
        self.authority()
            .issue(subject, role, now_s(), 600)
            .expect("token")
    }

    /// Starts the hub again on the same ports and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut last = None;
        for _ in 0..50 {
            match outpost_hub::start(&self.config).await {
                Ok(handle) => {
                    self.handle = Some(handle);
                    return;
                }
                Err(e) => {
                    last = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("hub did not restart: {last:?}");
    }

    /// gRPC URL.
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.config.internal_grpc.listen)
    }

    /// REST base URL.
    pub fn http_url(&self) -> String {
        let scheme = if self.config.server.tls {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.config.server.listen)
    }

    /// The hub CA file nodes trust.
    pub fn ca_file(&self) -> PathBuf {
        self.config.cert_dir().join("ca.pem")
    }

    /// Path to the hub's config written as TOML (for the CLI's `--config`).
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("hub.toml");
        std::fs::write(&path, toml_of(&self.config)).expect("write config");
        path
    }

    /// A node config for `id` joining with `token`.
    pub fn node_config(&self, id: &str, token: &str) -> Config {
        node_config(
            self.dir.path(),
            &self.grpc_url(),
            &self.ca_file(),
            id,
            token,
        )
    }

    /// A fresh one-shot token.
    pub async fn one_shot_token(&self) -> String {
        outpost_hub::credentials::join::create_token(&self.hub().state, 600, 1)
            .await
            .expect("token")
            .token
    }

    /// Runs the CLI in-process against this hub; returns (exit code, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (u8, String, String) {
        let config = self.write_config();
        let mut full = vec!["outpost".to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        full.extend([
            "--config".to_string(),
            config.display().to_string(),
            "--hub".to_string(),
            self.grpc_url(),
        ]);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = outpost_cli::main_with_io(full, &mut out, &mut err).await;
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    /// `nodes list --json`, parsed.
    pub async fn nodes_json(&self) -> Vec<Value> {
        let (code, out, err) = self.cli(&["nodes", "list", "--json"]).await;
        assert_eq!(code, 0, "nodes list failed: {err}");
        serde_json::from_str::<Value>(&out)
            .expect("json")
            .as_array()
            .cloned()
            .expect("array")
    }

    /// Waits until node `id` has `status` in `nodes list --json`; returns the node's JSON.
    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        self.wait_node(id, &format!("status {status}"), timeout, |n| {
            n["status"] == status
        })
        .await
    }

    /// Polls `nodes list --json` until `check` accepts node `id` (`what` says what is awaited,
    /// for the failure message); returns that node's JSON.
    pub async fn wait_node(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(&format!("node {id}: {what}"), timeout, async || match self
            .nodes_json()
            .await
            .into_iter()
            .find(|n| n["id"] == id)
        {
            Some(node) if check(&node) => Ok(node),
            other => Err(other.unwrap_or_default().to_string()),
        })
        .await
    }
}

/// Calls `check` every 20 ms until it gives `Ok`, and returns that; once `timeout` has passed,
/// fails the test naming `what` and the last `Err` (what was seen instead). The one poll loop of
/// the tests: it returns as soon as the state shows, so a generous timeout costs a passing run
/// nothing.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what} not seen within {timeout:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// When `OUTPOST_TEST_DATABASE_URL` is set: a fresh PostgreSQL schema for one hub, as a URL.
pub async fn postgres_schema_url() -> Option<String> {
    let base = std::env::var("OUTPOST_TEST_DATABASE_URL").ok()?;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let schema = format!("outpost_e2e_{}_{n}_{nanos}", std::process::id());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&base)
        .await
        .expect("OUTPOST_TEST_DATABASE_URL reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .expect("create schema");
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

/// A node configuration under `root`.
pub fn node_config(root: &Path, hub_url: &str, ca_file: &Path, id: &str, token: &str) -> Config {
    let mut config =
        Config::joining_node(id, hub_url, ca_file, token, &root.join("nodes").join(id));
    config.gpu.probe = GpuProbeKind::None;
    config.gpu.refresh_interval = Duration::from_millis(200);
    config
}

/// Gives a node config one simulated A100.
pub fn with_simulated_gpu(mut config: Config) -> Config {
    config.gpu.probe = GpuProbeKind::Simulated;
    config.gpu.simulated = vec![SimulatedGpu {
        name: "NVIDIA A100-SXM4-80GB".into(),
        memory_total_mb: 81920,
        memory_used_mb: 1024,
        compute_capability: "8.0".into(),
        utilization_percent: 0,
        mig: Vec::new(),
    }];
    config
}

/// Starts a node and waits for its session.
pub async fn start_node(config: Config) -> NodeHandle {
    let node = Node::start(config).await.expect("node starts");
    assert!(
        node.wait_connected(Duration::from_secs(15)).await,
        "node {} never connected: {}",
        node.node_id,
        node.stats.last_error.lock()
    );
    node
}

fn toml_of(config: &Config) -> String {
    toml::to_string(config).expect("config serialises")
}

/// One HTTP request with an optional bearer token and JSON body; returns (status, JSON body or Null).
pub async fn http_json(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Full::new(bytes::Bytes::from(
            body.unwrap_or_default().to_string(),
        )))
        .expect("request");
    let response = client.request(request).await.expect("http request");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, value)
}

/// The real `outpost` binary beside this test binary (cargo builds it for the hub crate's tests).
pub fn outpost_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = dir.join(format!("outpost{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is not built (`cargo test --workspace` builds it)",
        bin.display()
    );
    bin
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A Python interpreter with `packages` installed, for tests that drive Outpost with clients it
/// did not write: `OUTPOST_TEST_PYTHON` when set, else a virtualenv made once under `dir`
/// (the tests' target dir) from PyPI. `None`, with the reason printed, when neither can be had
/// (no `python3`, or no way to the package index).
pub fn python_with(dir: &Path, name: &str, packages: &[&str]) -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("OUTPOST_TEST_PYTHON") {
        return Some(PathBuf::from(python));
    }
    let venv = dir.join(format!("pyenv-{name}"));
    let python = venv.join("bin").join("python");
    let done = venv.join(".installed");
    if done.exists() {
        return Some(python);
    }
    // One test at a time makes it; the others wait for the marker.
    let lock = dir.join(format!("pyenv-{name}.lock"));
    std::fs::create_dir_all(dir).ok()?;
    let started = std::time::Instant::now();
    while std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock)
        .is_err()
    {
        if done.exists() {
            return Some(python);
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = std::fs::remove_file(&lock);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let run = |program: &Path, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).into_owned())
                }
            })
    };
    let made = run(
        Path::new("python3"),
        &["-m", "venv", venv.to_str().unwrap_or_default()],
    )
    .and_then(|()| {
        let mut args = vec![
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ];
        args.extend_from_slice(packages);
        run(&python, &args)
    });
    let _ = std::fs::remove_file(&lock);
    match made {
        Ok(()) => {
            let _ = std::fs::write(&done, packages.join("\n"));
            Some(python)
        }
        Err(e) => {
            eprintln!(
                "skipped: no Python with {packages:?} (set OUTPOST_TEST_PYTHON, or let pip reach PyPI): {e}"
            );
            let _ = std::fs::remove_dir_all(&venv);
            None
        }
    }
}
