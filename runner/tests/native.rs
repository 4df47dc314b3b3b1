//! Native processes through the real launcher binary: environment, exit status, output, the
//! whole tree stopped (a child that ignores SIGTERM, a grandchild in a new session, a daemon
//! left behind), rlimits, the pids cgroup and Landlock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_runner::launcher::probe_landlock;
use outpost_runner::process::read_tail;
use outpost_runner::{Confinement, Enforcement, LaunchSpec, NativeProcess};
use tokio::io::AsyncWriteExt as _;

fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost-launch"))
}

fn spec(dir: &Path, script: &str) -> LaunchSpec {
    LaunchSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::from([("PATH".into(), "/usr/bin:/bin".into())]),
        workdir: dir.to_path_buf(),
        rlimits: Default::default(),
        confinement: Confinement::default(),
        max_processes: None,
        grace: Duration::from_millis(300),
        status_file: dir.join(".status"),
    }
}

/// Runs to the end; returns (exit, stdout, stderr).
async fn run(spec: &LaunchSpec) -> (outpost_runner::Exit, String, String) {
    let mut process = NativeProcess::spawn(&launcher(), spec).unwrap();
    drop(process.take_stdin());
    let stdout = tokio::spawn(read_tail(process.take_stdout().unwrap(), 1 << 20));
    let stderr = tokio::spawn(read_tail(process.take_stderr().unwrap(), 1 << 20));
    let exit = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .expect("ends within 30 s");
    let text = |tail: outpost_runner::process::Tail| String::from_utf8(tail.bytes).unwrap();
    (
        exit,
        text(stdout.await.unwrap()),
        text(stderr.await.unwrap()),
    )
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !outpost_runner::tree::is_zombie(pid)
}

async fn wait_for_file(path: &Path) -> String {
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never written", path.display());
}

#[tokio::test]
async fn the_program_gets_only_its_environment_and_its_exit_status_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), "env | sort; pwd; echo oops >&2; exit 3");
    spec.env.insert("GREETING".into(), "hello".into());
    let (exit, stdout, stderr) = run(&spec).await;
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert!(!exit.success());
    let vars: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains('=') && !l.starts_with("PWD=") && !l.starts_with("SHLVL="))
        .filter(|l| !l.starts_with("_="))
        .collect();
    assert_eq!(vars, ["GREETING=hello", "PATH=/usr/bin:/bin"], "{stdout}");
    assert!(
        stdout.contains(
            &std::fs::canonicalize(dir.path())
                .unwrap()
                .display()
                .to_string()
        ),
        "{stdout}"
    );
    assert_eq!(stderr, "oops\n");

    // A program that is not there is an error that says so.
    let mut missing = spec.clone();
    missing.program = "/no/such/program".into();
    let (exit, _, stderr) = run(&missing).await;
    assert_eq!(exit.code, Some(127), "{exit:?}");
    assert!(
        exit.error.as_deref().unwrap().contains("/no/such/program"),
        "{exit:?}"
    );
    assert!(stderr.contains("cannot run"), "{stderr}");
}

#[tokio::test]
async fn stdin_is_the_programs_and_a_signal_that_ends_it_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut process =
        NativeProcess::spawn(&launcher(), &spec(dir.path(), "read line; echo got $line")).unwrap();
    let mut stdin = process.take_stdin().unwrap();
    stdin.write_all(b"a line\n").await.unwrap();
    drop(stdin);
    let stdout = read_tail(process.take_stdout().unwrap(), 1024).await;
    assert_eq!(String::from_utf8(stdout.bytes).unwrap(), "got a line\n");
    assert_eq!(process.wait().await.code, Some(0));

    let (exit, _, _) = run(&spec(dir.path(), "kill -USR1 $$; sleep 5")).await;
    assert_eq!(exit.signal, Some(10), "SIGUSR1: {exit:?}");
    assert_eq!(exit.code, None);
}

#[tokio::test]
async fn stop_kills_the_whole_tree_however_it_detached() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // A child that ignores SIGTERM, and a grandchild in a new session (its own group too).
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ >> {p}; while :; do sleep 1; done' &
         setsid sh -c 'echo $$ >> {p}; exec sleep 300' &
         wait",
        p = pids.display()
    );
    let mut process = NativeProcess::spawn(&launcher(), &spec(dir.path(), &script)).unwrap();
    let supervisor = process.pid();
    let mut listed = Vec::new();
    for _ in 0..500 {
        listed = std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse::<i32>().unwrap())
            .collect::<Vec<_>>();
        if listed.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listed.len(), 2, "both started");
    assert!(listed.iter().all(|&pid| alive(pid)));
    let descendants = outpost_runner::tree::descendants(supervisor);
    assert!(
        listed.iter().all(|pid| descendants.contains(pid)),
        "{listed:?} in {descendants:?}"
    );

    let exit = tokio::time::timeout(Duration::from_secs(20), process.stop())
        .await
        .expect("stops");
    assert!(exit.signal.is_some() || exit.code.is_some(), "{exit:?}");
    for pid in listed {
        assert!(!alive(pid), "{pid} survived the stop");
    }
    assert!(
        outpost_runner::tree::descendants(supervisor).is_empty(),
        "no zombies or orphans left"
    );
}

#[tokio::test]
async fn what_a_program_leaves_behind_is_killed_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("daemon");
    let script = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 300' & sleep 0.2; exit 0",
        pid_file.display()
    );
    let (exit, _, _) = run(&spec(dir.path(), &script)).await;
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(exit.orphans_killed >= 1, "{exit:?}");
    let daemon: i32 = wait_for_file(&pid_file).await.trim().parse().unwrap();
    assert!(!alive(daemon), "the daemon outlived its program");
}

#[tokio::test]
async fn rlimits_bound_cpu_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut spin = spec(dir.path(), "while :; do :; done");
    spin.rlimits.cpu_seconds = Some(1);
    let (exit, _, _) = run(&spin).await;
    // SIGXCPU at the soft limit (equal to the hard one, so SIGKILL follows at once if ignored).
    assert!(
        matches!(exit.signal, Some(24) | Some(9)),
        "stopped by the CPU limit: {exit:?}"
    );

    let mut hog = spec(
        dir.path(),
        "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    hog.rlimits.address_space = Some(200 << 20);
    let (exit, stdout, _) = run(&hog).await;
    assert!(!exit.success(), "the hog was stopped: {exit:?} {stdout}");
    assert!(!stdout.contains("400000000"), "{stdout}");
}

#[tokio::test]
async fn the_pids_cgroup_bounds_a_process_flood() {
    let dir = tempfile::tempdir().unwrap();
    let mut flood = spec(
        dir.path(),
        "i=0; while [ $i -lt 200 ]; do sleep 30 2>/dev/null & i=$((i+1)); done; echo started; \
         sleep 30",
    );
    flood.max_processes = Some(20);
    let mut process = NativeProcess::spawn(&launcher(), &flood).unwrap();
    let supervisor = process.pid();
    let stdout = tokio::spawn(read_tail(process.take_stdout().unwrap(), 4096));
    let stderr = tokio::spawn(read_tail(process.take_stderr().unwrap(), 4096));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = outpost_runner::launcher::read_status(&flood.status_file);
    if !status.pids_cgroup {
        eprintln!("skipped: this node may not create a pids cgroup (not root, or no controller)");
        process.stop().await;
        return;
    }
    let count = outpost_runner::tree::descendants(supervisor).len();
    assert!(count <= 24, "{count} processes with max_processes = 20");
    let exit = process.stop().await;
    assert!(exit.pids_cgroup);
    assert!(outpost_runner::tree::descendants(supervisor).is_empty());
    // The flood ran into the limit: the shell saw its forks fail.
    let stderr = String::from_utf8(stderr.await.unwrap().bytes).unwrap();
    let stdout = String::from_utf8(stdout.await.unwrap().bytes).unwrap();
    assert!(
        stderr.to_lowercase().contains("fork") || !stdout.contains("started"),
        "no fork failed: {stdout} / {stderr}"
    );
}

#[tokio::test]
async fn landlock_confines_writes_and_reads_to_the_grants() {
    let support = probe_landlock(&launcher()).await;
    if support.enforcement == Enforcement::None {
        eprintln!(
            "skipped: this kernel enforces no Landlock (ABI {})",
            support.abi
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let script = format!(
        "echo ok > inside && echo wrote-inside; \
         (echo x > {out}) 2>/dev/null && echo wrote-outside; \
         cat {secret} 2>/dev/null && echo read-outside; \
         cat /etc/hostname >/dev/null 2>&1 && echo read-system; \
         echo discard > /dev/null && echo dev-null",
        out = elsewhere.path().join("planted").display(),
        secret = secret.display(),
    );
    let mut confined = spec(work.path(), &script);
    confined.confinement = Confinement {
        enabled: true,
        read: Vec::new(),
        write: vec![work.path().to_path_buf()],
        tcp_connect: None,
        require_full: false,
    };
    let (exit, stdout, _) = run(&confined).await;
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert_eq!(exit.enforcement, Some(support.enforcement), "{exit:?}");
    assert!(stdout.contains("wrote-inside"), "{stdout}");
    assert!(stdout.contains("read-system"), "{stdout}");
    assert!(stdout.contains("dev-null"), "{stdout}");
    assert!(!stdout.contains("wrote-outside"), "{stdout}");
    assert!(!stdout.contains("read-outside"), "{stdout}");
    assert!(!elsewhere.path().join("planted").exists());

    // Full enforcement can be required; where it is there, the program runs.
    confined.confinement.require_full = true;
    let (exit, _, stderr) = run(&confined).await;
    if support.enforcement == Enforcement::Full {
        assert_eq!(exit.code, Some(0), "{exit:?} {stderr}");
    } else {
        assert_eq!(exit.code, Some(126), "{exit:?}");
        assert!(stderr.contains("require_landlock"), "{stderr}");
    }
}

#[tokio::test]
async fn a_supervisor_left_by_a_crashed_node_is_found_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let process = NativeProcess::spawn(&launcher(), &spec(dir.path(), "sleep 300")).unwrap();
    let pid = process.pid();
    // The node "crashes": its handle is gone, the supervisor and its program live on.
    drop(process);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(outpost_runner::process::is_supervisor(pid));
    let me = i32::try_from(std::process::id()).unwrap();
    assert!(!outpost_runner::process::is_supervisor(me));
    let tree = outpost_runner::tree::descendants(pid);
    assert!(!tree.is_empty());
    assert!(
        outpost_runner::process::stop_orphaned_supervisor(pid, Duration::from_millis(200)).await
    );
    for _ in 0..200 {
        if tree.iter().all(|&p| !alive(p)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tree.iter().all(|&p| !alive(p)), "{tree:?} survived");
}

#[tokio::test]
async fn a_stop_right_after_the_start_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..25_u64 {
        let pid_file = dir.path().join(format!("pid-{round}"));
        // It would wait for input forever, holding its pipes.
        let script = format!("echo $$ > {}; while read l; do :; done", pid_file.display());
        let mut process = NativeProcess::spawn(&launcher(), &spec(dir.path(), &script)).unwrap();
        let _stdin = process.take_stdin();
        let stdout = tokio::spawn(read_tail(process.take_stdout().unwrap(), 1 << 20));
        tokio::time::sleep(Duration::from_millis(round % 5 * 3)).await;
        process.request_stop();
        tokio::time::timeout(Duration::from_secs(20), process.wait())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the supervisor did not end"));
        tokio::time::timeout(Duration::from_secs(10), stdout)
            .await
            .unwrap_or_else(|_| panic!("round {round}: something still holds the output open"))
            .unwrap();
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            assert!(!alive(pid), "round {round}: the program survived the stop");
        }
    }
}
