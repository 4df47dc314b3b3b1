//! The WebAssembly sandbox against real components built from `guests/`: grants, limits, every
//! hostile case, and that the runtime keeps serving after each.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use outpost_sandbox::{
    CallReport, ErrorKind, FsAccess, FsGrant, Fuel, LoadedTool, Sandbox, SandboxConfig, ToolPolicy,
};

const SECRET: &str = "TOP-SECRET-HOST-DATA";
const README: &str = "read-only data, must stay as it is\n";

/// One sandbox for the whole binary, as on a node.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let cache =
            std::env::temp_dir().join(format!("outpost-sandbox-tests-{}", std::process::id()));
        Sandbox::new(SandboxConfig {
            cache_dir: Some(cache),
            max_concurrent_calls: 16,
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    })
}

/// A host layout: `safe/ro` and `safe/rw` inside the safe path, `outside/` beyond it, with
/// symlinks from the read-only grant to the outside.
struct Layout {
    _root: tempfile::TempDir,
    safe: PathBuf,
    ro: PathBuf,
    rw: PathBuf,
    outside: PathBuf,
}

impl Layout {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let safe = root.path().join("safe");
        let ro = safe.join("ro");
        let rw = safe.join("rw");
        let outside = root.path().join("outside");
        for dir in [&ro, &rw, &outside] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
        std::fs::write(ro.join("readme.txt"), README).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), ro.join("escape")).unwrap();
        std::os::unix::fs::symlink(&outside, ro.join("escape_dir")).unwrap();
        std::os::unix::fs::symlink("../../outside/secret.txt", ro.join("escape_relative")).unwrap();
        Self {
            _root: root,
            safe,
            ro,
            rw,
            outside,
        }
    }

    fn secret_path(&self) -> PathBuf {
        self.outside.join("secret.txt")
    }

    /// The hostile guest's policy: `/data` read-only, `/out` read-write, tight limits.
    fn policy(&self) -> ToolPolicy {
        let mut policy = ToolPolicy {
            fs: vec![
                FsGrant {
                    host: self.ro.clone(),
                    guest: "/data".into(),
                    access: FsAccess::ReadOnly,
                    line: None,
                },
                FsGrant {
                    host: self.rw.clone(),
                    guest: "/out".into(),
                    access: FsAccess::ReadWrite,
                    line: None,
                },
            ],
            ..ToolPolicy::default()
        };
        policy.limits.memory = 32 << 20;
        policy.limits.fuel = Fuel::Limited(200_000_000);
        policy.limits.timeout = Duration::from_secs(5);
        policy.limits.max_output = 64 * 1024;
        policy
    }

    fn load(&self, guest: &Path, policy: &ToolPolicy) -> LoadedTool {
        let resolved = policy.resolve(std::slice::from_ref(&self.safe)).unwrap();
        sandbox().load_file(guest, resolved).unwrap()
    }

    fn host_state(&self) -> (String, String, Vec<String>, Vec<String>) {
        let list = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        (
            std::fs::read_to_string(self.secret_path()).unwrap(),
            std::fs::read_to_string(self.ro.join("readme.txt")).unwrap(),
            list(&self.ro),
            list(&self.outside),
        )
    }
}

fn expect_error(report: &CallReport, kind: ErrorKind, needle: &str, case: &str) {
    match &report.result {
        Ok(output) => panic!(
            "{case}: expected {kind}, got output {:?}",
            output.chars().take(200).collect::<String>()
        ),
        Err(err) => {
            assert_eq!(err.kind, kind, "{case}: {err}");
            assert!(
                err.message.to_lowercase().contains(&needle.to_lowercase()),
                "{case}: message {:?} lacks {needle:?}",
                err.message
            );
        }
    }
}

/// After any attack, the same loaded tool and the runtime serve a normal call.
async fn still_serves(tool: &LoadedTool, case: &str) {
    let report = tool.invoke("print still-alive").await;
    assert_eq!(
        report.result.as_deref(),
        Ok("still-alive"),
        "{case}: runtime poisoned: {:?}",
        report.result
    );
    assert_eq!(report.stdout, "still-alive\n", "{case}");
}

#[tokio::test]
async fn echo_runs_with_limits_on_and_reports_fuel_and_time() {
    let layout = Layout::new();
    let tool = layout.load(&outpost_guests::echo(), &ToolPolicy::default());
    let report = tool.invoke("{\"hello\":\"sandbox\"}").await;
    assert_eq!(report.result.as_deref(), Ok("{\"hello\":\"sandbox\"}"));
    let fuel = report.fuel_used.unwrap();
    assert!(fuel > 0 && fuel < 1_000_000, "fuel used {fuel}");
    assert!(report.duration > Duration::ZERO);
    let info = tool.describe().await.unwrap();
    assert_eq!(info.name, "echo");
    assert_eq!(info.input_schema, r#"{"type":"string"}"#);
    assert_eq!(tool.digest().len(), 64);
}

#[tokio::test]
async fn wordcount_reads_only_granted_files() {
    let layout = Layout::new();
    std::fs::write(layout.ro.join("words.txt"), "one two three\nfour five\n").unwrap();
    let tool = layout.load(&outpost_guests::wordcount(), &layout.policy());
    let report = tool.invoke("/data/words.txt\n/data/readme.txt").await;
    let output = report.result.unwrap();
    let json: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(json["files"][0]["words"], 5);
    assert_eq!(json["files"][0]["lines"], 2);
    assert_eq!(json["total_words"], 5 + README.split_whitespace().count());
    assert_eq!(report.logs.len(), 1, "{:?}", report.logs);
    assert_eq!(report.logs[0].message, "counted 2 file(s)");

    let outside = layout.secret_path().display().to_string();
    let report = tool.invoke(&outside).await;
    expect_error(
        &report,
        ErrorKind::PermissionDenied,
        &outside,
        "wordcount outside its grant",
    );
    let report = tool.invoke("").await;
    expect_error(
        &report,
        ErrorKind::ToolError,
        "invalid input",
        "wordcount without input",
    );
}

#[tokio::test]
async fn a_read_write_grant_really_writes() {
    let layout = Layout::new();
    let tool = layout.load(&outpost_guests::hostile(), &layout.policy());
    let report = tool.invoke("write /out/result.txt").await;
    assert_eq!(report.result.as_deref(), Ok("wrote /out/result.txt"));
    assert_eq!(
        std::fs::read_to_string(layout.rw.join("result.txt")).unwrap(),
        "pwned"
    );
    let report = tool.invoke("read /data/readme.txt").await;
    assert_eq!(report.result.as_deref(), Ok(README));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_swapped_for_a_symlink_while_it_opens_never_reaches_outside() {
    let layout = Layout::new();
    let flip = layout.safe.join("flip");
    std::fs::create_dir(&flip).unwrap();
    std::fs::write(flip.join("inside.txt"), "inside").unwrap();
    let link = layout.safe.join("flip.link");
    std::os::unix::fs::symlink("../outside", &link).unwrap();
    let parked = layout.safe.join("flip.real");
    let policy = ToolPolicy {
        fs: vec![FsGrant {
            host: flip.clone(),
            guest: "/data".into(),
            access: FsAccess::ReadOnly,
            line: None,
        }],
        ..layout.policy()
    };
    let tool = layout.load(&outpost_guests::hostile(), &policy);

    // A writer swaps the granted directory for a relative symlink to the outside and back, as
    // fast as it can, while calls resolve the grant and open it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, flip, link, parked) = (stop.clone(), flip.clone(), link.clone(), parked.clone());
        std::thread::spawn(move || {
            let mut swaps = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::rename(&flip, &parked);
                let _ = std::fs::rename(&link, &flip);
                let _ = std::fs::rename(&flip, &link);
                let _ = std::fs::rename(&parked, &flip);
                swaps += 1;
                // Leaves the calls a chance on a loaded machine (the race stays open).
                std::thread::yield_now();
            }
            swaps
        })
    };
    let (mut ran, mut refused_at_open, mut leaked) = (0, 0, 0);
    // Until 80 calls got past the check (as many as a quiet machine gets in 300 tries), or
    // 5,000 tries on a busy one.
    for _ in 0..5000 {
        if ran + refused_at_open >= 80 {
            break;
        }
        let Ok(resolved) = policy.resolve(std::slice::from_ref(&layout.safe)) else {
            continue; // the symlink was in place when the grant was checked
        };
        let report = tool
            .with_policy(resolved)
            .invoke("read /data/secret.txt")
            .await;
        match &report.result {
            Ok(output) if output.contains(SECRET) => leaked += 1,
            Err(err) if err.message.contains("changed while it was being opened") => {
                refused_at_open += 1
            }
            _ => ran += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert_eq!(
        leaked, 0,
        "{leaked} calls read outside the safe path ({ran} ran, {refused_at_open} refused at open, {swaps} swaps)"
    );
    assert!(
        ran + refused_at_open > 0,
        "no call got past the check ({swaps} swaps)"
    );
    eprintln!("{ran} ran inside, {refused_at_open} refused at open, {swaps} swaps");
}

#[tokio::test]
async fn file_system_attacks_are_refused_and_leave_the_host_untouched() {
    let layout = Layout::new();
    let tool = layout.load(&outpost_guests::hostile(), &layout.policy());
    let before = layout.host_state();
    let secret = layout.secret_path().display().to_string();
    let cases = [
        ("read /data/../outside/secret.txt", "path traversal"),
        ("read /data/../../outside/secret.txt", "deeper traversal"),
        ("read ../outside/secret.txt", "relative traversal"),
        (&*format!("read {secret}"), "absolute host path"),
        ("read /etc/passwd", "absolute system path"),
        ("read /data/escape", "symlink to a file outside"),
        ("read /data/escape_relative", "relative symlink outside"),
        (
            "list /data/escape_dir/",
            "symlink to a dir outside, trailing slash",
        ),
        (
            "read /data/escape_dir/secret.txt",
            "through a symlinked dir",
        ),
        (
            &*format!("hardlink {secret} /out/link"),
            "hardlink to a host path",
        ),
        (
            "hardlink /data/escape /out/link",
            "hardlink of an escaping symlink",
        ),
        ("write /data/readme.txt", "write through a read-only grant"),
        (
            "append /data/readme.txt",
            "append through a read-only grant",
        ),
        (
            "truncate /data/readme.txt",
            "truncate through a read-only grant",
        ),
        (
            "set-len /data/readme.txt",
            "set_len through a read-only grant",
        ),
        ("create /data/new.txt", "create in a read-only dir"),
        ("mkdir /data/newdir", "mkdir in a read-only dir"),
        ("remove /data/readme.txt", "remove in a read-only dir"),
        (
            "rename /data/readme.txt /data/moved.txt",
            "rename in a read-only dir",
        ),
        (
            "rename /data/readme.txt /out/stolen.txt",
            "move out of a read-only dir",
        ),
        ("write /data/escape", "write through a symlink outside"),
    ];
    for (input, case) in cases {
        let report = tool.invoke(input).await;
        expect_error(&report, ErrorKind::PermissionDenied, "", case);
        if let Err(err) = &report.result {
            assert!(!err.message.contains(SECRET), "{case}: leaked the secret");
        }
        // A hard link that did get made must still not reach the outside file.
        if std::fs::symlink_metadata(layout.rw.join("link")).is_ok() {
            let follow = tool.invoke("read /out/link").await;
            expect_error(
                &follow,
                ErrorKind::PermissionDenied,
                "",
                &format!("{case}: reading the link"),
            );
        }
        assert_eq!(layout.host_state(), before, "{case}: host files changed");
        still_serves(&tool, case).await;
    }
    assert!(!layout.rw.join("stolen.txt").exists());
}

#[tokio::test]
async fn cpu_and_wall_time_limits_stop_runaway_guests() {
    let layout = Layout::new();
    let mut policy = layout.policy();
    policy.limits.fuel = Fuel::Limited(50_000_000);
    policy.limits.timeout = Duration::from_secs(10);
    let metered = layout.load(&outpost_guests::hostile(), &policy);
    for (input, case) in [
        ("spin", "infinite loop"),
        ("host-call-loop", "busy host-call loop"),
        ("log-loop", "busy log loop"),
    ] {
        // The kind says fuel ended the call, not the 10 s wall clock.
        let report = metered.invoke(input).await;
        expect_error(&report, ErrorKind::OutOfFuel, "50000000", case);
        still_serves(&metered, case).await;
    }
    let report = metered.invoke("log-loop").await;
    assert!(report.logs_dropped > 0, "the log flood was not capped");
    assert!(report.logs.iter().map(|l| l.message.len()).sum::<usize>() <= 64 * 1024);
    // Empty records cost nothing in text, and are still bounded.
    let report = metered.invoke("log-empty-loop").await;
    expect_error(
        &report,
        ErrorKind::OutOfFuel,
        "50000000",
        "empty log records",
    );
    assert!(
        report.logs_dropped > 0,
        "the empty-record flood was not capped"
    );
    assert!(
        report.logs.len() <= 64 * 1024 / 64,
        "{} empty records kept",
        report.logs.len()
    );

    let mut unmetered = layout.policy();
    unmetered.limits.fuel = Fuel::Unlimited;
    unmetered.limits.timeout = Duration::from_millis(300);
    let tool = layout.load(&outpost_guests::hostile(), &unmetered);
    for (input, case) in [
        ("spin", "infinite loop without fuel"),
        ("host-call-loop", "host-call loop without fuel"),
        ("sleep 3600", "blocked in a host call"),
    ] {
        // Uninterrupted, each of these would run for an hour or forever; the
        // guard only turns such a hang into a failure, it measures nothing.
        let report = tokio::time::timeout(Duration::from_secs(120), tool.invoke(input))
            .await
            .unwrap_or_else(|_| panic!("{case}: the 300 ms wall-time limit never fired"));
        expect_error(&report, ErrorKind::Timeout, "300ms", case);
        still_serves(&tool, case).await;
    }
}

#[tokio::test]
async fn memory_table_and_stack_bombs_are_contained() {
    let layout = Layout::new();
    let tool = layout.load(&outpost_guests::hostile(), &layout.policy());
    let report = tool.invoke("memory-bomb").await;
    expect_error(
        &report,
        ErrorKind::MemoryLimit,
        &format!("limit of {} bytes", 32 << 20),
        "memory bomb",
    );
    still_serves(&tool, "memory bomb").await;

    // A Rust guest overflows its shadow stack (in linear memory) first.
    let report = tool.invoke("recursion").await;
    expect_error(
        &report,
        ErrorKind::Trap,
        "recursion",
        "deep recursion in Rust",
    );
    still_serves(&tool, "deep recursion").await;

    let load_wat = |body: &str| {
        let wasm = wat::parse_str(wat_tool(body)).unwrap();
        let resolved = layout
            .policy()
            .resolve(std::slice::from_ref(&layout.safe))
            .unwrap();
        sandbox().load(&wasm, resolved).unwrap()
    };
    // The wasm call stack itself.
    let recursion = load_wat("(drop (call $recurse (i32.const 0))) (i32.const 0)");
    let report = recursion.invoke("recurse").await;
    expect_error(
        &report,
        ErrorKind::Trap,
        "call stack exhausted",
        "deep recursion in wasm",
    );
    still_serves(&tool, "wasm recursion").await;

    let table_bomb = load_wat(
        "(loop $grow (drop (table.grow $t (ref.null func) (i32.const 1000))) (br $grow)) (i32.const 0)",
    );
    let report = table_bomb.invoke("grow").await;
    expect_error(
        &report,
        ErrorKind::MemoryLimit,
        "table",
        "table growth bomb",
    );
    let info = table_bomb.describe().await.unwrap();
    assert_eq!(info.name, "bomb");
    still_serves(&tool, "table bomb").await;
}

#[tokio::test]
async fn output_floods_stop_at_the_cap() {
    let layout = Layout::new();
    let tool = layout.load(&outpost_guests::hostile(), &layout.policy());
    let report = tool.invoke("stdout-flood").await;
    expect_error(&report, ErrorKind::OutputLimit, "stdout", "stdout flood");
    assert_eq!(report.stdout.len(), 64 * 1024);
    let report = tool.invoke("stderr-flood").await;
    expect_error(&report, ErrorKind::OutputLimit, "stderr", "stderr flood");
    assert_eq!(report.stderr.len(), 64 * 1024);
    let report = tool.invoke(&format!("return-flood {}", 1 << 20)).await;
    expect_error(
        &report,
        ErrorKind::OutputLimit,
        "returned value",
        "return-value flood",
    );
    let report = tool.invoke(&format!("return-flood {}", 64 * 1024)).await;
    assert_eq!(
        report.result.map(|s| s.len()),
        Ok(64 * 1024),
        "exactly the cap is allowed"
    );
    let report = tool.invoke(&format!("fail-flood {}", 1 << 20)).await;
    expect_error(
        &report,
        ErrorKind::OutputLimit,
        "error message is 1048576 bytes",
        "error-message flood",
    );
    still_serves(&tool, "output floods").await;
}

#[tokio::test]
async fn one_call_holds_a_bounded_number_of_handles() {
    let layout = Layout::new();
    let tool = layout.load(&outpost_guests::hostile(), &layout.policy());
    let report = tool.invoke("hold-files /data/readme.txt").await;
    expect_error(
        &report,
        ErrorKind::MemoryLimit,
        "256 open files",
        "holding every handle",
    );
    // The handles went with the call: the next one opens files again.
    let report = tool.invoke("read /data/readme.txt").await;
    assert_eq!(report.result.as_deref(), Ok(README));
    still_serves(&tool, "handle flood").await;
}

#[tokio::test]
async fn disk_written_and_files_created_in_a_grant_stop_at_the_quota() {
    let layout = Layout::new();
    let mut policy = layout.policy();
    policy.limits.disk_write = 1 << 20;
    policy.limits.files_created = 20;
    let tool = layout.load(&outpost_guests::hostile(), &policy);
    let quota_notice = |report: &CallReport| {
        report
            .logs
            .iter()
            .any(|log| log.message.contains("disk quota reached"))
    };

    // Writing through a stream stops at the byte quota; what was written stays within it.
    let report = tool.invoke("fill-disk /out/big").await;
    expect_error(
        &report,
        ErrorKind::ToolError,
        "failed after 1048576 bytes",
        "fill",
    );
    assert!(quota_notice(&report), "{:?}", report.logs);
    assert_eq!(
        std::fs::metadata(layout.rw.join("big")).unwrap().len(),
        1 << 20
    );

    // Growing a file counts its growth.
    let report = tool.invoke("grow /out/sparse 10485760").await;
    expect_error(&report, ErrorKind::ToolError, "quota", "grow");
    assert_eq!(
        std::fs::metadata(layout.rw.join("sparse")).unwrap().len(),
        0
    );
    let report = tool.invoke("grow /out/small 4096").await;
    assert_eq!(report.result.as_deref(), Ok("grew /out/small to 4096"));
    assert!(!quota_notice(&report));

    // Creating entries stops at the count; the quota is per call, so the next call creates again.
    std::fs::create_dir(layout.rw.join("many")).unwrap();
    let report = tool.invoke("many-files /out/many").await;
    expect_error(
        &report,
        ErrorKind::ToolError,
        "failed after 20 files",
        "many files",
    );
    assert_eq!(
        std::fs::read_dir(layout.rw.join("many")).unwrap().count(),
        20
    );
    let report = tool.invoke("mkdir /out/many/more").await;
    assert_eq!(report.result.as_deref(), Ok("made /out/many/more"));
    still_serves(&tool, "disk quota").await;
}

#[tokio::test]
async fn a_fifo_in_a_grant_is_refused_instead_of_blocking_a_host_thread() {
    let layout = Layout::new();
    let fifo = layout.rw.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let mut policy = layout.policy();
    policy.limits.timeout = Duration::from_secs(30);
    let tool = layout.load(&outpost_guests::hostile(), &policy);
    // Opening a FIFO with no writer would block the opening thread for good; it is refused
    // at once instead (well inside the wall-time limit, so not a timeout).
    let report = tool.invoke("read /out/pipe").await;
    expect_error(
        &report,
        ErrorKind::PermissionDenied,
        "read /out/pipe",
        "fifo",
    );
    let report = tool.invoke("append /out/pipe").await;
    expect_error(&report, ErrorKind::PermissionDenied, "/out/pipe", "fifo");
    still_serves(&tool, "fifo").await;
}

#[tokio::test]
async fn environment_is_allowlisted() {
    let layout = Layout::new();
    let tool = layout.load(&outpost_guests::hostile(), &layout.policy());
    let report = tool.invoke("env PATH").await;
    expect_error(
        &report,
        ErrorKind::PermissionDenied,
        "PATH",
        "env var not granted",
    );
    let report = tool.invoke("env-all").await;
    assert_eq!(
        report.result.as_deref(),
        Ok(""),
        "no variables without a grant"
    );

    let mut policy = layout.policy();
    policy.env = vec!["PATH".into(), "OUTPOST_SURELY_UNSET_VARIABLE".into()];
    let granted = layout.load(&outpost_guests::hostile(), &policy);
    let report = granted.invoke("env PATH").await;
    assert_eq!(report.result, Ok(std::env::var("PATH").unwrap()));
    let report = granted.invoke("env-all").await;
    let output = report.result.unwrap();
    assert!(
        output.starts_with("PATH=") && !output.contains('\n'),
        "{output}"
    );
}

#[tokio::test]
async fn sockets_need_a_granted_host() {
    let layout = Layout::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();

    let tool = layout.load(&outpost_guests::hostile(), &layout.policy());
    let report = tool.invoke(&format!("connect {addr}")).await;
    expect_error(
        &report,
        ErrorKind::PermissionDenied,
        &addr.to_string(),
        "socket without a grant",
    );
    assert!(
        listener.accept().is_err(),
        "a connection got through without a grant"
    );

    let mut other_port = layout.policy();
    other_port.allow_hosts = vec![format!("127.0.0.1:{}", addr.port().wrapping_add(1).max(1))];
    let tool = layout.load(&outpost_guests::hostile(), &other_port);
    let report = tool.invoke(&format!("connect {addr}")).await;
    expect_error(
        &report,
        ErrorKind::PermissionDenied,
        "",
        "socket to a port not granted",
    );
    assert!(
        listener.accept().is_err(),
        "a connection got through to a port not granted"
    );

    let mut granted = layout.policy();
    granted.allow_hosts = vec![addr.to_string()];
    let tool = layout.load(&outpost_guests::hostile(), &granted);
    let report = tool.invoke(&format!("connect {addr}")).await;
    assert_eq!(report.result, Ok(format!("connected to {addr}")));
    listener.set_nonblocking(false).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let mut received = String::new();
    conn.read_to_string(&mut received).unwrap();
    assert_eq!(received, "hello from the sandbox");
    drop(conn);

    // Granted by address only, the tool cannot look names up (no channel through the node's
    // resolver); granted by name, it can.
    let port = addr.port();
    let report = tool.invoke(&format!("connect localhost:{port}")).await;
    assert!(report.result.is_err(), "{:?}", report.result);
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "a name was looked up without a name grant"
    );
    let mut by_name = layout.policy();
    by_name.allow_hosts = vec![format!("localhost:{port}")];
    let tool = layout.load(&outpost_guests::hostile(), &by_name);
    let report = tool.invoke(&format!("connect localhost:{port}")).await;
    assert_eq!(report.result, Ok(format!("connected to localhost:{port}")));

    // Only the granted name is looked up: any other (a name that carries data out through the
    // resolver, or one the node's hosts file would answer) is refused before it is asked.
    let report = tool.invoke("lookup LOCALHOST.").await;
    assert!(
        report
            .result
            .as_deref()
            .is_ok_and(|ips| ips.contains("127.0.0.1")),
        "{:?}",
        report.result
    );
    for name in ["c2VjcmV0.exfil.example", "ip6-localhost", "localhost.evil"] {
        let report = tool.invoke(&format!("lookup {name}")).await;
        expect_error(
            &report,
            ErrorKind::PermissionDenied,
            "permission denied",
            &format!("lookup {name}"),
        );
    }
}

#[tokio::test]
async fn panics_and_exits_are_traps_with_the_cause() {
    let layout = Layout::new();
    let tool = layout.load(&outpost_guests::hostile(), &layout.policy());
    let report = tool.invoke("panic").await;
    expect_error(&report, ErrorKind::Trap, "panicked on purpose", "panic");
    let report = tool.invoke("exit").await;
    expect_error(&report, ErrorKind::Trap, "called exit", "exit");
    still_serves(&tool, "panic and exit").await;
}

#[tokio::test]
async fn components_that_cannot_run_are_refused_at_load() {
    let layout = Layout::new();
    let policy = || {
        ToolPolicy::default()
            .resolve(std::slice::from_ref(&layout.safe))
            .unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "random bytes",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "a core module",
            wat::parse_str("(module (func (export \"invoke\")))").unwrap(),
            "core WebAssembly module",
        ),
        (
            "a truncated component",
            std::fs::read(outpost_guests::echo()).unwrap()[..2000].to_vec(),
            "not a valid component",
        ),
        (
            "an import the host lacks",
            wat::parse_str(NEEDS_BACKDOOR).unwrap(),
            "outpost:evil/backdoor",
        ),
        (
            "a component without the tool exports",
            wat::parse_str("(component)").unwrap(),
            "outpost:guest/tool",
        ),
    ];
    for (case, bytes, needle) in cases {
        let err = sandbox().load(&bytes, policy()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidComponent, "{case}: {err}");
        assert!(
            err.message.contains(needle),
            "{case}: {:?} lacks {needle:?}",
            err.message
        );
    }
    let echo = layout.load(&outpost_guests::echo(), &ToolPolicy::default());
    assert_eq!(
        echo.invoke("after bad components").await.result.as_deref(),
        Ok("after bad components")
    );
}

#[tokio::test]
async fn policies_outside_safe_paths_are_refused_at_load() {
    let layout = Layout::new();
    let mut policy = layout.policy();
    policy.fs.push(FsGrant {
        host: layout.outside.clone(),
        guest: "/outside".into(),
        access: FsAccess::ReadOnly,
        line: Some(7),
    });
    let err = policy
        .resolve(std::slice::from_ref(&layout.safe))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::PolicyInvalid);
    assert!(
        err.message.contains("outside the node's safe_paths"),
        "{}",
        err.message
    );
    assert!(err.message.contains("line 7"), "{}", err.message);
}

#[tokio::test]
async fn concurrent_calls_are_isolated() {
    let layout = Layout::new();
    let tool = layout.load(&outpost_guests::echo(), &ToolPolicy::default());
    let calls = (0..64).map(|i| {
        let tool = tool.clone();
        tokio::spawn(async move { (i, tool.invoke(&format!("call {i}")).await) })
    });
    for call in calls {
        let (i, report) = call.await.unwrap();
        assert_eq!(report.result, Ok(format!("call {i}")));
    }
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = || SandboxConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        max_concurrent_calls: 2,
        ..SandboxConfig::default()
    };
    let first = Sandbox::new(config()).unwrap();
    let tool = first
        .load_file(&outpost_guests::echo(), Default::default())
        .unwrap();
    assert!(!tool.from_cache());
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);

    let second = Sandbox::new(config()).unwrap();
    let tool = second
        .load_file(&outpost_guests::echo(), Default::default())
        .unwrap();
    assert!(tool.from_cache());
    assert_eq!(tool.invoke("cached").await.result.as_deref(), Ok("cached"));

    // An engine with other settings must not reuse that code.
    let other = Sandbox::new(SandboxConfig {
        fuel_metering: false,
        ..config()
    })
    .unwrap();
    let other_tool = other
        .load_file(&outpost_guests::echo(), Default::default())
        .unwrap();
    assert!(!other_tool.from_cache());
    drop(other_tool);

    // A damaged entry is dropped and recompiled, not trusted. (Entries are mapped into memory
    // while a tool is loaded, like an executable; the node only ever replaces them by rename.)
    drop((tool, first, second, other));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let third = Sandbox::new(config()).unwrap();
    let tool = third
        .load_file(&outpost_guests::echo(), Default::default())
        .unwrap();
    assert!(!tool.from_cache());
    assert_eq!(
        tool.invoke("recompiled").await.result.as_deref(),
        Ok("recompiled")
    );
}

#[tokio::test]
async fn stored_tools_load_by_digest_and_a_wrong_digest_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        max_concurrent_calls: 2,
        ..SandboxConfig::default()
    })
    .unwrap();
    let wasm = std::fs::read(outpost_guests::echo()).unwrap();
    let digest = outpost_trust::auth::sha256_hex(&wasm);
    let stored = store.path().join(format!("{digest}.wasm"));
    std::fs::write(&stored, &wasm).unwrap();

    // A file whose bytes are not what its name says is refused, naming both digests, and
    // nothing is cached under the wrong name.
    let wrong = "0".repeat(64);
    let err = sandbox
        .load_stored(&stored, &wrong, Default::default())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidComponent, "{err}");
    assert!(
        err.message.contains(&digest) && err.message.contains(&wrong),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);

    // First load compiles (and checks the bytes); the next comes from the cache by digest
    // alone, without the file.
    let tool = sandbox
        .load_stored(&stored, &digest, Default::default())
        .unwrap();
    assert!(!tool.from_cache());
    assert_eq!(tool.digest(), digest);
    std::fs::remove_file(&stored).unwrap();
    let again = sandbox
        .load_stored(&stored, &digest, Default::default())
        .unwrap();
    assert!(again.from_cache());
    assert_eq!(again.invoke("stored").await.result.as_deref(), Ok("stored"));

    // Without a cache entry and without the file, the error names the file.
    let other = Sandbox::new(SandboxConfig {
        max_concurrent_calls: 1,
        ..SandboxConfig::default()
    })
    .unwrap();
    let err = other
        .load_stored(&stored, &digest, Default::default())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidComponent);
    assert!(err.message.contains(&stored.display().to_string()), "{err}");
}

/// A component of the `tool` world written by hand, whose `invoke` runs `invoke_body` (which
/// must leave an i32 on the stack). It has a table `$t` and a recursive function `$recurse`.
fn wat_tool(invoke_body: &str) -> String {
    format!(
        r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (table $t 1 funcref)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func $recurse (param i32) (result i32)
      (i32.add (call $recurse (i32.add (local.get 0) (i32.const 1))) (local.get 0)))
    (data (i32.const 16) "bomb")
    (func (export "describe") (result i32)
      (i32.store (i32.const 64) (i32.const 16)) (i32.store (i32.const 68) (i32.const 4))
      (i32.store (i32.const 72) (i32.const 16)) (i32.store (i32.const 76) (i32.const 4))
      (i32.store (i32.const 80) (i32.const 16)) (i32.store (i32.const 84) (i32.const 4))
      (i32.store (i32.const 88) (i32.const 16)) (i32.store (i32.const 92) (i32.const 4))
      (i32.const 64))
    (func (export "invoke") (param i32 i32) (result i32)
      {invoke_body}))
  (core instance $i (instantiate $m))
  (type $info' (record (field "name" string) (field "version" string) (field "description" string) (field "input-schema" string)))
  (export $info "tool-info" (type $info'))
  (type $error' (variant (case "invalid-input" string) (case "permission-denied" string) (case "failed" string)))
  (export $error "tool-error" (type $error'))
  (func $describe (result $info)
    (canon lift (core func $i "describe") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (export "describe" (func $describe))
  (func $invoke (param "input" string) (result (result string (error $error)))
    (canon lift (core func $i "invoke") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (export "invoke" (func $invoke))
)
"#
    )
}

/// A component that imports an interface no node provides.
const NEEDS_BACKDOOR: &str = r#"
(component
  (import "outpost:evil/backdoor@1.0.0" (instance
    (export "open" (func (param "path" string) (result string)))))
)
"#;

/// An actor component: `on-message` sends only when it succeeds, `mailbox.send` is refused
/// outside it, a plain tool has no `on-message`, and the actor is still a tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_handles_messages_and_sends_only_when_it_succeeds() {
    let layout = Layout::new();
    let ponger = layout.load(&outpost_guests::ponger(), &ToolPolicy::default());
    assert!(ponger.is_actor());
    let message = |id: i64, payload: &str| outpost_sandbox::ActorMessage {
        id,
        sender: "agent-ping".into(),
        team: String::new(),
        payload: payload.into(),
    };
    let handled = ponger
        .on_message(&message(7, r#"{"ping":1,"fan":true}"#))
        .await;
    assert_eq!(handled.result.as_deref(), Ok(""), "{:?}", handled.result);
    let sent: Vec<(&str, &str)> = handled
        .sent
        .iter()
        .map(|m| (m.to.as_str(), m.payload.as_str()))
        .collect();
    assert_eq!(
        sent,
        [
            ("agent-ping", r#"{"pong":{"ping":1,"fan":true}}"#),
            ("team:pingers", r#"{"hello":"team"}"#),
        ],
        "queued in order; the one that was not JSON was refused"
    );
    assert!(
        handled
            .logs
            .iter()
            .any(|l| l.message == "message 7 from agent-ping")
    );
    let refused = ponger.on_message(&message(8, r#"{"fail":true}"#)).await;
    expect_error(
        &refused,
        ErrorKind::ToolError,
        "refusing message 8",
        "a failed call",
    );
    assert!(refused.sent.is_empty(), "a failed call sends nothing");
    let invoked = ponger.invoke("hi").await;
    assert_eq!(invoked.result.as_deref(), Ok("pong: hi"));
    assert!(invoked.sent.is_empty());
    let echo = layout.load(&outpost_guests::echo(), &ToolPolicy::default());
    assert!(!echo.is_actor());
    expect_error(
        &echo.on_message(&message(9, "{}")).await,
        ErrorKind::InvalidComponent,
        "no on-message export",
        "a plain tool",
    );
}
