//! The console in a real browser: headless Chromium (Debian's `chromium`) driven through
//! ChromeDriver with `fantoccini`, against a real hub and real nodes. Screenshots of each page
//! go to `<target>/tmp/console-screenshots/`. Skipped, with the reason printed, only where no
//! Chromium or ChromeDriver can be found.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use outpost_config::TlsMode;
use outpost_tests::{TestHub, eventually, http_json, start_node, with_simulated_gpu};
use outpost_trust::auth::Role;
use serde_json::json;

use crate::agents::agent_node;

/// ChromeDriver and the browser it drives; the driver is killed on drop.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    shots: PathBuf,
}

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium; `None` (with the reason printed) when
    /// either cannot be found.
    async fn start() -> Option<Self> {
        let Some(chromium) = find_program("CHROMIUM", &["chromium", "chromium-browser"]) else {
            eprintln!("skipped: no Chromium found (install Debian's chromium, or set CHROMIUM)");
            return None;
        };
        let Some(chromedriver) = find_program("CHROMEDRIVER", &["chromedriver"]) else {
            eprintln!(
                "skipped: no ChromeDriver found (install Debian's chromium-driver, or set CHROMEDRIVER)"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        eventually(
            "chromedriver listens",
            Duration::from_secs(20),
            async || {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a browser session");
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Some(Self {
            client,
            driver,
            shots,
        })
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// The text of the element `css` names, once there is one (a click's page may still be
    /// loading).
    async fn text(&self, css: &str) -> String {
        // A live update may replace the element between finding and reading it: find again.
        for _ in 0..50 {
            if let Ok(text) = self.find(css).await.text().await {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{css} kept going stale")
    }

    /// An attribute of the element `css` names (found again when a live update replaced it).
    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        for _ in 0..50 {
            if let Ok(value) = self.find(css).await.attr(name).await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{css} kept going stale")
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    async fn body(&self) -> String {
        self.text("body").await
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    /// Waits until the browser is on a path that starts with `prefix` (a form's post and its
    /// redirect may still be under way when a click returns).
    async fn wait_path(&self, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let path = self.path().await;
            if path.starts_with(prefix) {
                return path;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reached {prefix:?}; on {path:?}: {}",
                self.body().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's text contains `needle` (no reload: what live updates bring).
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never showed {needle:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sign_in(&self, hub: &TestHub, token: &str) {
        self.client
            .goto(&format!("{}/", hub.http_url()))
            .await
            .unwrap();
        assert_eq!(
            self.path().await,
            "/ui/sign-in",
            "a page asked for unsigned redirects"
        );
        self.fill("#token", token).await;
        self.click("form button[type=submit]").await;
        self.wait_text("nav", "Sign out").await;
        assert_eq!(self.path().await, "/");
    }

    async fn close(self) {
        self.client.close().await.unwrap();
        let mut driver = self.driver;
        let _ = driver.kill().await;
    }
}

/// A form post with a session cookie and optional `Origin`; (status, body).
async fn post_form(url: &str, cookie: &str, origin: Option<&str>, form: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = client
        .request(request.body(Full::new(form.to_string().into())).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_runs_the_fleet_from_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let hub = TestHub::start(TlsMode::Tls).await;
    let (gpu_config, _) = agent_node(&hub, "gpu-node");
    let _gpu = start_node(with_simulated_gpu(gpu_config)).await;
    let (cpu_config, _) = agent_node(&hub, "cpu-node");
    let _cpu = start_node(cpu_config).await;
    let admin = hub.token("ops", Role::Admin);
    let base = hub.http_url();

    // Sign-in; a bad token is refused on the page.
    browser
        .client
        .goto(&format!("{base}/ui/agents"))
        .await
        .unwrap();
    assert_eq!(browser.path().await, "/ui/sign-in");
    browser.fill("#token", "not-a-token").await;
    browser.click("form button[type=submit]").await;
    assert!(browser.text(".error").await.contains("does not sign in"));
    browser.shot("sign-in").await;
    browser.fill("#token", &admin).await;
    browser.click("form button[type=submit]").await;
    browser.wait_path("/ui/agents").await;
    let cookie = browser
        .client
        .get_named_cookie("outpost_session")
        .await
        .unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");

    // The fleet lists both nodes, the simulated GPU with its memory.
    browser.client.goto(&format!("{base}/")).await.unwrap();
    let fleet = browser.wait_text("#fleet-rows", "cpu-node").await;
    assert!(fleet.contains("gpu-node"), "{fleet}");
    let gpu_row = browser.text("#node-gpu-node").await;
    assert!(gpu_row.contains("NVIDIA A100-SXM4-80GB"), "{gpu_row}");
    assert!(
        gpu_row.contains("1024 MiB used / 80896 MiB free"),
        "{gpu_row}"
    );
    assert!(gpu_row.contains("online"), "{gpu_row}");
    let meter = "#node-gpu-node meter";
    assert_eq!(browser.attr(meter, "value").await.as_deref(), Some("1024"));
    assert_eq!(browser.attr(meter, "max").await.as_deref(), Some("81920"));
    browser.shot("fleet").await;
    // Filters: by GPU model, and by a status nothing has.
    browser
        .client
        .goto(&format!("{base}/?gpu=a100"))
        .await
        .unwrap();
    let filtered = browser.text("#fleet-rows").await;
    assert!(
        filtered.contains("gpu-node") && !filtered.contains("cpu-node"),
        "{filtered}"
    );
    browser
        .client
        .goto(&format!("{base}/?status=fenced"))
        .await
        .unwrap();
    assert!(
        browser
            .text("#fleet-rows")
            .await
            .contains("No node matches")
    );

    // Join node with token: the token is shown once; a node started with it shows up on the
    // fleet page that is already open, without a reload.
    browser
        .client
        .goto(&format!("{base}/ui/join"))
        .await
        .unwrap();
    browser.fill("#node_id", "joined-node").await;
    browser
        .click("form[action='/ui/join'] button[type=submit]")
        .await;
    let token = browser
        .find("#join-token")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    let snippet = browser.text("#join-config").await;
    assert!(
        snippet.contains(&token) && snippet.contains("node_id = \"joined-node\""),
        "{snippet}"
    );
    assert!(snippet.contains(&hub.grpc_url()), "{snippet}");
    browser.shot("join").await;
    browser.client.goto(&format!("{base}/")).await.unwrap();
    assert!(!browser.text("#fleet-rows").await.contains("joined-node"));
    let _joined = start_node(hub.node_config("joined-node", &token)).await;
    let row = browser.wait_text("#fleet-rows", "joined-node").await;
    assert!(row.contains("online"), "{row}");
    browser.wait_text("#node-joined-node", "online").await;

    // Register node: errors inline by their field, then a good record.
    browser
        .client
        .goto(&format!("{base}/ui/register"))
        .await
        .unwrap();
    browser.fill("#id", "edge 1").await;
    browser.fill("#name", "Edge one").await;
    browser
        .click("form[action='/ui/register'] button[type=submit]")
        .await;
    let error = browser.text("#id-error").await;
    assert!(!error.is_empty(), "the id's error is by the id");
    browser.shot("register-error").await;
    browser.fill("#id", "edge-1").await;
    browser.fill("#grpc_target", "https://127.0.0.1:1").await;
    browser
        .click("form[action='/ui/register'] button[type=submit]")
        .await;
    browser.wait_path("/ui/nodes/edge-1").await;
    assert!(browser.body().await.contains("Edge one"));

    // An agent created in the form starts, and its output appears live.
    browser
        .client
        .goto(&format!("{base}/ui/agents"))
        .await
        .unwrap();
    browser.fill("#name", "echoer").await;
    browser
        .client
        .find(Locator::Css("#node option[value='cpu-node']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.fill("#command", "/bin/sh").await;
    browser
        .fill(
            "#args",
            "-c\necho started; while read line; do echo got:$line; done",
        )
        .await;
    browser.click("#create-agent button[type=submit]").await;
    let agent_path = browser.wait_path("/ui/agents/agent-").await;
    let agent_id = agent_path.trim_start_matches("/ui/agents/").to_string();
    assert!(browser.text("#agent-status").await.contains("created"));
    assert!(browser.body().await.contains("node:cpu-node"));
    browser.click("form[action$='/start'] button").await;
    browser.wait_text("#agent-status", "running").await;
    browser.wait_text("#output", "started").await;
    // A line sent from elsewhere while the page is open comes back into the pane live.
    let (code, _) = http_json(
        "POST",
        &format!("{base}/api/agents/{agent_id}/input"),
        Some(&admin),
        Some(r#"{"text":"from-the-api"}"#),
    )
    .await;
    assert_eq!(code, 202);
    browser.wait_text("#output", "got:from-the-api").await;
    // And one from the page's own form.
    browser.fill("#text", "typed").await;
    browser.click("form.input-line button").await;
    browser.wait_text("#output", "got:typed").await;
    browser.shot("agent").await;

    // The node page: health, and a delete refused while its agent runs.
    browser
        .client
        .goto(&format!("{base}/ui/nodes/cpu-node"))
        .await
        .unwrap();
    assert!(
        browser.body().await.contains("echoer"),
        "its agents are listed"
    );
    browser.click("form[action$='/health'] button").await;
    browser.wait_text(".health", "Reachable").await;
    browser.click("form[action$='/delete'] button").await;
    browser.client.accept_alert().await.unwrap();
    let refused = browser.text(".error").await;
    assert!(refused.contains("Not deleted"), "{refused}");
    browser.shot("node").await;
    let (code, _) = http_json(
        "GET",
        &format!("{base}/api/admin/agent-nodes/cpu-node"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(code, 200, "the node is still there");

    // Stop from the agent page.
    browser
        .client
        .goto(&format!("{base}{agent_path}"))
        .await
        .unwrap();
    browser.click("form[action$='/stop'] button").await;
    browser.wait_text("#agent-status", "stopped").await;

    // Tasks and tools.
    outpost_hub::work::tools::push(
        &hub.hub().state,
        "echo",
        outpost_guests::ECHO_COMPONENT.to_vec(),
        "",
        None,
    )
    .await
    .unwrap();
    let (code, task) = http_json(
        "POST",
        &format!("{base}/api/admin/tasks"),
        Some(&admin),
        Some(r#"{"tool":"echo","input":"hi","requirements":{"gpus":1}}"#),
    )
    .await;
    assert!(code == 201, "{task}");
    let task_id = task["id"].as_str().unwrap().to_string();
    eventually("the task succeeds", Duration::from_secs(20), async || {
        let (_, t) = http_json(
            "GET",
            &format!("{base}/api/admin/tasks/{task_id}"),
            Some(&admin),
            None,
        )
        .await;
        if t["status"] == "succeeded" {
            Ok(())
        } else {
            Err(t.to_string())
        }
    })
    .await;
    browser
        .client
        .goto(&format!("{base}/ui/tasks"))
        .await
        .unwrap();
    let row = browser.text(&format!("#task-{task_id}")).await;
    assert!(
        row.contains("succeeded") && row.contains("gpu-node") && row.contains("tool: echo"),
        "{row}"
    );
    browser.shot("tasks").await;
    browser
        .client
        .goto(&format!("{base}/ui/tasks?status=queued"))
        .await
        .unwrap();
    assert!(
        browser.text("main").await.contains("No tasks."),
        "the succeeded task is not queued"
    );
    browser
        .client
        .goto(&format!("{base}/ui/tasks?status=succeeded"))
        .await
        .unwrap();
    assert!(
        browser
            .text(&format!("#task-{task_id}"))
            .await
            .contains("succeeded")
    );
    browser
        .client
        .goto(&format!("{base}/ui/tools"))
        .await
        .unwrap();
    let tool = browser.text("#tool-echo").await;
    assert!(tool.contains("echo") && tool.contains("gpu-node"), "{tool}");
    browser.shot("tools").await;

    // What the operator did here is in the audit log, by surface.
    let (_, log) = http_json(
        "GET",
        &format!("{base}/api/admin/audit?limit=1000"),
        Some(&admin),
        None,
    )
    .await;
    let console_actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["surface"] == "console" && e["subject"] == "ops")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "POST /ui/sign-in",
        "POST /ui/join",
        "POST /ui/register",
        "POST /ui/agents",
        "POST /ui/agents/{id}/{action}",
        "POST /ui/nodes/{id}/delete",
    ] {
        assert!(
            console_actions.contains(&action),
            "{action} not in {console_actions:?}"
        );
    }
    browser
        .client
        .goto(&format!("{base}/ui/audit"))
        .await
        .unwrap();
    assert!(
        browser
            .text("#audit")
            .await
            .contains("/ui/nodes/cpu-node/delete")
    );
    browser.shot("audit").await;

    // Sign out ends the session: its cookie no longer opens a page.
    let session = format!("outpost_session={}", cookie.value());
    browser.click("nav form button").await;
    browser.wait_path("/ui/sign-in").await;
    let (code, _) = post_form(
        &format!("{base}/ui/join"),
        &session,
        None,
        "csrf=x&ttl=1h&uses=1",
    )
    .await;
    assert_eq!(code, 303, "a closed session is sent to sign in");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_sees_no_write_controls_and_forged_posts_are_refused() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let hub = TestHub::start(TlsMode::Tls).await;
    let _node = start_node(with_simulated_gpu(
        hub.node_config("n-1", outpost_tests::STATIC_TOKEN),
    ))
    .await;
    let base = hub.http_url();
    browser
        .sign_in(&hub, &hub.token("watcher", Role::Viewer))
        .await;
    browser.wait_text("#fleet-rows", "n-1").await;
    let nav = browser.text("nav").await;
    assert!(nav.contains("watcher (viewer)"), "{nav}");
    assert!(
        !nav.contains("Join node") && !nav.contains("Register node"),
        "{nav}"
    );
    browser
        .client
        .goto(&format!("{base}/ui/nodes/n-1"))
        .await
        .unwrap();
    assert!(
        browser
            .client
            .find(Locator::Css("form[action$='/drain']"))
            .await
            .is_err(),
        "no write controls for a viewer"
    );
    browser
        .client
        .goto(&format!("{base}/ui/agents"))
        .await
        .unwrap();
    assert!(
        browser
            .client
            .find(Locator::Id("create-agent"))
            .await
            .is_err()
    );
    browser
        .client
        .goto(&format!("{base}/ui/join"))
        .await
        .unwrap();
    assert!(
        browser
            .body()
            .await
            .contains("role viewer may not create join tokens")
    );
    browser.shot("viewer-join").await;

    // A form the viewer builds by hand, with the session's own CSRF token, is refused.
    // Take the session's CSRF token from a page that has the sign-out form.
    browser.client.goto(&format!("{base}/")).await.unwrap();
    let csrf = browser
        .client
        .execute(
            "return document.querySelector('nav input[name=csrf]').value;",
            vec![],
        )
        .await
        .unwrap();
    let csrf = csrf.as_str().unwrap().to_string();
    browser
        .client
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = '/ui/join';
             for (const [k, v] of [['csrf', arguments[0]], ['ttl', '1h'], ['uses', '1']]) {
               const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i);
             }
             document.body.appendChild(f); f.submit();",
            vec![json!(csrf)],
        )
        .await
        .unwrap();
    browser
        .wait_text("body", "role viewer may not create join tokens")
        .await;
    assert!(
        browser
            .client
            .find(Locator::Id("join-token"))
            .await
            .is_err()
    );

    // Posts from elsewhere: an admin session's cookie with a wrong CSRF token, or from another
    // origin, changes nothing.
    browser.client.delete_all_cookies().await.unwrap();
    browser.sign_in(&hub, &hub.token("ops", Role::Admin)).await;
    let session = browser
        .client
        .get_named_cookie("outpost_session")
        .await
        .unwrap();
    let session = format!("outpost_session={}", session.value());
    let csrf = browser
        .client
        .execute(
            "return document.querySelector('nav input[name=csrf]').value;",
            vec![],
        )
        .await
        .unwrap();
    let csrf = csrf.as_str().unwrap().to_string();
    let join = format!("{base}/ui/join");
    let (code, body) = post_form(&join, &session, None, "csrf=forged&ttl=1h&uses=1").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    let (code, body) = post_form(
        &join,
        &session,
        Some("http://evil.example"),
        &format!("csrf={csrf}&ttl=1h&uses=1"),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("is not from this console"), "{body}");
    let (code, body) = post_form(
        &join,
        &session,
        Some(&base),
        &format!("csrf={csrf}&ttl=1h&uses=1"),
    )
    .await;
    assert_eq!(
        code, 200,
        "the same post from the console itself works: {body}"
    );
    assert!(body.contains("id=\"join-token\""), "{body}");
    browser.close().await;
}

/// A raw HTTP request to the console: (status, headers, body).
async fn raw(
    method: &str,
    url: &str,
    cookie: Option<&str>,
    form: Option<String>,
) -> (u16, http::HeaderMap, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if form.is_some() {
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    let response = client
        .request(
            request
                .body(Full::new(form.unwrap_or_default().into()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn set_cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()?
                .strip_prefix(&format!("{name}="))
                .map(String::from)
        })
}

/// Signs in over plain HTTP; the `Cookie` header value of the session.
async fn sign_in_raw(base: &str, token: &str) -> (u16, String, String) {
    let (_, headers, _) = raw("GET", &format!("{base}/ui/sign-in"), None, None).await;
    let nonce = set_cookie(&headers, "outpost_sign_in").unwrap();
    let (status, headers, body) = raw(
        "POST",
        &format!("{base}/ui/sign-in"),
        Some(&format!("outpost_sign_in={nonce}")),
        Some(format!("token={token}&csrf={nonce}&next=%2F")),
    )
    .await;
    let session = set_cookie(&headers, "outpost_session")
        .map(|s| format!("outpost_session={s}"))
        .unwrap_or_default();
    (status, session, body)
}

/// Hostile and mistaken requests get a clear answer and change nothing; runs without a browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_console_requests_get_clear_errors() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let base = hub.http_url();
    let admin = hub.token("ops", Role::Admin);

    // Unsigned: pages and feeds send to sign-in, keeping where they were going.
    for path in ["/", "/ui/agents", "/ui/fleet/events"] {
        let (status, headers, _) = raw("GET", &format!("{base}{path}"), None, None).await;
        assert_eq!(status, 303, "{path}");
        let location = headers["location"].to_str().unwrap();
        assert!(location.starts_with("/ui/sign-in?next="), "{location}");
    }
    // A sign-in without its nonce cookie, and with a node's credential, are refused.
    let (status, _, body) = raw(
        "POST",
        &format!("{base}/ui/sign-in"),
        None,
        Some(format!("token={admin}&csrf=guess&next=%2F")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let node_token = hub
        .authority()
        .issue_bound("n-1", Role::Node, "k", outpost_tests::now_s(), 600)
        .unwrap();
    let (status, session, body) = sign_in_raw(&base, &node_token).await;
    assert_eq!(status, 401, "{body}");
    assert!(session.is_empty());
    assert!(body.contains("node credential cannot sign in"), "{body}");
    // An open redirect through `next` goes nowhere but here.
    let (_, headers, _) = raw("GET", &format!("{base}/ui/sign-in"), None, None).await;
    let nonce = set_cookie(&headers, "outpost_sign_in").unwrap();
    let (status, headers, _) = raw(
        "POST",
        &format!("{base}/ui/sign-in"),
        Some(&format!("outpost_sign_in={nonce}")),
        Some(format!(
            "token={admin}&csrf={nonce}&next=%2F%2Fevil.example%2F"
        )),
    )
    .await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/"));

    let (status, session, _) = sign_in_raw(&base, &admin).await;
    assert_eq!(status, 303);
    let cookie = Some(session.as_str());
    // Every page answers with the strict policy; text from the fleet is escaped.
    let (code, _) = http_json(
        "POST",
        &format!("{base}/api/admin/agent-nodes"),
        Some(&admin),
        Some(r#"{"id":"n-x","name":"<script>alert(1)</script>","grpc_target":"https://127.0.0.1:1"}"#),
    )
    .await;
    assert_eq!(code, 201);
    let (status, headers, body) = raw("GET", &format!("{base}/"), cookie, None).await;
    assert_eq!(status, 200);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "escaped"
    );
    assert!(!body.contains("<script>alert(1)"), "not markup");
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();

    // Bad queries, unknown pages and actions, a huge form: each named, nothing changed.
    let (status, _, body) = raw("GET", &format!("{base}/?page=abc"), cookie, None).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = raw(
        "GET",
        &format!("{base}/ui/tasks?status=bogus"),
        cookie,
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bogus"), "{body}");
    let (status, _, body) = raw("GET", &format!("{base}/ui/nodes/nobody"), cookie, None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nobody"), "{body}");
    let (status, _, body) = raw(
        "POST",
        &format!("{base}/ui/agents/agent-x/dance"),
        cookie,
        Some(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not an agent action"), "{body}");
    let huge = format!("csrf={csrf}&name=big&command={}", "x".repeat(3 << 20));
    let (status, _, _) = raw("POST", &format!("{base}/ui/agents"), cookie, Some(huge)).await;
    assert_eq!(status, 413, "a form past the body limit");
    let (status, _, body) = raw(
        "POST",
        &format!("{base}/ui/join"),
        cookie,
        Some(format!("csrf={csrf}&ttl=forever&uses=1")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("valid for"), "{body}");
    let (status, _, body) = raw(
        "POST",
        &format!("{base}/ui/join"),
        cookie,
        Some(format!("csrf={csrf}&ttl=1h&uses=1000")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (_, agents) = http_json("GET", &format!("{base}/api/agents"), Some(&admin), None).await;
    assert_eq!(agents, serde_json::json!([]), "no agent was made");
}

/// The CSRF token a console page carries.
fn page_csrf(page: &str) -> String {
    let at =
        page.find(r#"name="csrf" value=""#).expect("a csrf field") + r#"name="csrf" value=""#.len();
    page[at..].split('"').next().unwrap().to_string()
}

/// Operators answer permission reviews on the Reviews page with the request's own options; a
/// viewer sees them without buttons and its posts are refused. Runs without a browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_answer_permission_reviews_in_the_console() {
    use outpost_hub::actors::reviews::{PermissionRequest, request};
    use outpost_hub::store::actors::ReviewOption;
    let hub = TestHub::start(TlsMode::Tls).await;
    let base = hub.http_url();
    let option = |id: &str, persistent: bool| ReviewOption {
        id: id.into(),
        label: String::new(),
        persistent,
    };
    let asked = request(
        &hub.hub().state,
        PermissionRequest {
            actor_id: "agent-c".into(),
            title: "deploy to prod".into(),
            detail: "release 1.4".into(),
            options: vec![
                option("allow_once", false),
                option("allow_always", true),
                option("deny", false),
            ],
            request_key: String::new(),
        },
    )
    .await
    .unwrap();
    let form_url = format!("{base}/ui/reviews/{}", asked.id);

    let (_, viewer, _) = sign_in_raw(&base, &hub.token("watcher", Role::Viewer)).await;
    let (status, _, page) = raw("GET", &format!("{base}/ui/reviews"), Some(&viewer), None).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("deploy to prod") && page.contains(&asked.id),
        "{page}"
    );
    assert!(
        !page.contains(r#"name="option_id""#),
        "a viewer gets no answer buttons"
    );
    let csrf = page_csrf(&page);
    let (code, _) = post_form(
        &form_url,
        &viewer,
        None,
        &format!("csrf={csrf}&option_id=deny"),
    )
    .await;
    assert_eq!(code, 403);

    let (_, admin, _) = sign_in_raw(&base, &hub.token("ops", Role::Admin)).await;
    let (_, _, page) = raw("GET", &format!("{base}/ui/reviews"), Some(&admin), None).await;
    assert!(page.contains(r#"value="allow_always""#), "{page}");
    let csrf = page_csrf(&page);
    let (code, _) = post_form(&form_url, &admin, None, "csrf=forged&option_id=deny").await;
    assert_eq!(code, 403);
    let (code, body) = post_form(
        &form_url,
        &admin,
        None,
        &format!("csrf={csrf}&option_id=yes"),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("(allow_once, allow_always, deny)"), "{body}");
    let (code, _) = post_form(
        &form_url,
        &admin,
        None,
        &format!("csrf={csrf}&option_id=allow_always"),
    )
    .await;
    assert_eq!(code, 303);
    let answered = outpost_hub::actors::reviews::get(&hub.hub().state, &asked.id)
        .await
        .unwrap();
    assert_eq!(answered.option_id, "allow_always");
    assert_eq!(answered.answered_by, "ops");
    let (_, _, page) = raw("GET", &format!("{base}/ui/reviews"), Some(&admin), None).await;
    assert!(page.contains("no-pending"), "nothing waits any more");
    assert!(
        page.contains("allow_always") && page.contains("ops"),
        "{page}"
    );
}
