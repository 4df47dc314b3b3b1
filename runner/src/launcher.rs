//! The launcher: what an Outpost binary does when its first argument is [`LAUNCHER_ARG`].
//!
//! A native process is started in two stages, both this same executable, so that nothing runs
//! between `fork` and `exec` in the node (no `unsafe`, no allocation after fork in a threaded
//! process):
//!
//! 1. **`supervise`**: a new session, a child subreaper (descendants that detach come back to
//!    it), a pids cgroup where one can be made; it starts stage 2 and owns the tree from then
//!    on. On SIGTERM it signals every descendant, waits the grace period and SIGKILLs what is
//!    left; when the program ends it kills what the program left behind, reaps everything and
//!    exits with the program's status (128 + signal when a signal ended it), written to the
//!    status file as well.
//! 2. **`exec`**: applies the rlimits and Landlock to itself, then `exec`s the program with
//!    exactly the spec's environment. Whatever the program starts inherits both.
//!
//! `probe` reports what Landlock this kernel enforces (it restricts only itself).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spec::{Enforcement, LAUNCHER_ARG, LaunchSpec, LaunchStatus, SPEC_VAR};

/// Runs the launcher when the process was started as one (`argv[1]` is [`LAUNCHER_ARG`]),
/// returning the exit code to exit with; `None` when it was not. Binaries call this first.
pub fn run_if_launcher() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != LAUNCHER_ARG {
        return None;
    }
    let stage = args.next().and_then(|s| s.into_string().ok());
    Some(match stage.as_deref() {
        Some("supervise") => with_spec(supervise),
        Some("exec") => with_spec(exec),
        Some("probe") => probe_stage(),
        other => {
            eprintln!("outpost launcher: unknown stage {other:?}");
            2
        }
    })
}

fn with_spec(stage: fn(LaunchSpec) -> i32) -> i32 {
    let spec = std::env::var(SPEC_VAR)
        .map_err(|e| format!("{SPEC_VAR}: {e}"))
        .and_then(|text| serde_json::from_str::<LaunchSpec>(&text).map_err(|e| e.to_string()));
    match spec {
        Ok(spec) => stage(spec),
        Err(err) => {
            eprintln!("outpost launcher: no launch spec: {err}");
            2
        }
    }
}

/// Reads the status file (empty when it is missing or unreadable).
pub fn read_status(path: &Path) -> LaunchStatus {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn write_status(path: &Path, status: &LaunchStatus) {
    if let Ok(text) = serde_json::to_vec(status) {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

fn update_status(path: &Path, change: impl FnOnce(&mut LaunchStatus)) {
    let mut status = read_status(path);
    change(&mut status);
    write_status(path, &status);
}

// ---------------------------------------------------------------------------------------------
// Stage 1: the supervisor.

#[cfg(target_os = "linux")]
fn supervise(spec: LaunchSpec) -> i32 {
    use rustix::process::{Signal, getpid, set_child_subreaper, setsid};

    let _ = setsid();
    let me = getpid();
    if let Err(err) = set_child_subreaper(Some(me)) {
        eprintln!("outpost launcher: cannot become the tree's subreaper: {err}");
    }
    let cgroup = spec
        .max_processes
        .and_then(|max| PidsCgroup::join(me.as_raw_nonzero().get(), max));
    write_status(
        &spec.status_file,
        &LaunchStatus {
            pids_cgroup: cgroup.is_some(),
            ..LaunchStatus::default()
        },
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("outpost launcher: {err}");
            return 125;
        }
    };
    let root = me.as_raw_nonzero().get();
    let code = runtime.block_on(async {
        // Before there is a tree: a stop that comes earlier ends the supervisor while it has no
        // children yet; one that comes later is handled, so no stop leaves a tree behind.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let Ok(exe) = std::env::current_exe() else {
            update_status(&spec.status_file, |s| {
                s.error = Some("cannot find the launcher executable".into())
            });
            return 125;
        };
        let text = serde_json::to_string(&spec).unwrap_or_default();
        let mut child = match tokio::process::Command::new(exe)
            .arg(LAUNCHER_ARG)
            .arg("exec")
            .env_clear()
            .env(SPEC_VAR, text)
            .current_dir(&spec.workdir)
            .spawn()
        {
            Ok(child) => child,
            Err(err) => {
                update_status(&spec.status_file, |s| {
                    s.error = Some(format!("cannot start the exec stage: {err}"))
                });
                return 125;
            }
        };
        let stop = async {
            match terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            () = stop => {
                // Asked to stop: the whole tree gets SIGTERM, then the grace, then SIGKILL.
                crate::tree::signal_descendants(root, Signal::TERM);
                match tokio::time::timeout(spec.grace, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        crate::tree::kill_descendants(root, Duration::from_secs(5));
                        child.wait().await
                    }
                }
            }
        };
        // What the program left behind goes with it.
        let leftover = crate::tree::signal_descendants(root, Signal::TERM);
        if leftover > 0 {
            tokio::time::sleep(spec.grace.min(Duration::from_millis(200))).await;
        }
        let killed = crate::tree::kill_descendants(root, Duration::from_secs(5));
        reap_all();
        let (exit_code, signal) = match &status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt as _;
                (status.code(), status.signal())
            }
            Err(_) => (None, None),
        };
        let exec_report: ExecReport = std::fs::read(exec_report_path(&spec.status_file))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let _ = std::fs::remove_file(exec_report_path(&spec.status_file));
        update_status(&spec.status_file, |s| {
            s.enforcement = exec_report.enforcement;
            s.landlock_abi = exec_report.landlock_abi;
            if exec_report.error.is_some() {
                s.error = exec_report.error;
            }
            s.exit_code = exit_code;
            s.signal = signal;
            s.orphans_killed = u32::try_from(leftover.max(killed)).unwrap_or(u32::MAX);
            if let Err(err) = &status {
                s.error = Some(format!("waiting for the program: {err}"));
            }
        });
        match (exit_code, signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            _ => 125,
        }
    });
    drop(cgroup);
    code
}

#[cfg(not(target_os = "linux"))]
fn supervise(spec: LaunchSpec) -> i32 {
    update_status(&spec.status_file, |s| {
        s.error = Some("native processes need Linux".into())
    });
    125
}

/// Reaps every child the subreaper was left (zombies hold a pid slot until then).
#[cfg(target_os = "linux")]
fn reap_all() {
    use rustix::process::{WaitOptions, waitpid};
    while let Ok(Some(_)) = waitpid(None, WaitOptions::NOHANG) {}
}

/// A pids-controller cgroup holding the supervisor and its tree, removed when dropped.
#[cfg(target_os = "linux")]
struct PidsCgroup {
    dir: PathBuf,
    parent: PathBuf,
}

#[cfg(target_os = "linux")]
impl PidsCgroup {
    /// Makes a cgroup under the pids controller (v1 `pids`, or v2 with `pids` enabled) with
    /// `max` tasks plus the supervisor's own, and moves this process into it. `None` where the
    /// node may not (not root, no controller).
    fn join(pid: i32, max: u64) -> Option<Self> {
        let candidates = [
            PathBuf::from("/sys/fs/cgroup/pids"),
            PathBuf::from("/sys/fs/cgroup"),
        ];
        for base in candidates {
            let v2 = base.join("cgroup.subtree_control");
            let usable = if base.ends_with("pids") {
                base.join("cgroup.procs").exists()
            } else {
                std::fs::read_to_string(&v2)
                    .map(|text| text.split_whitespace().any(|c| c == "pids"))
                    .unwrap_or(false)
            };
            if !usable {
                continue;
            }
            let dir = base.join(format!("outpost-{pid}"));
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            // The supervisor and its runtime's thread count too.
            let joined = std::fs::write(dir.join("pids.max"), (max + 4).to_string()).is_ok()
                && std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok();
            if joined {
                return Some(Self { dir, parent: base });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        None
    }
}

#[cfg(target_os = "linux")]
impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let me = std::process::id().to_string();
        let _ = std::fs::write(self.parent.join("cgroup.procs"), me);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: limits, Landlock, exec.

/// What the exec stage reports (in `<status file>.exec`, opened before Landlock so that it can
/// still be written after).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ExecReport {
    enforcement: Option<Enforcement>,
    landlock_abi: u32,
    error: Option<String>,
}

fn exec_report_path(status_file: &Path) -> PathBuf {
    status_file.with_extension("exec")
}

/// Writes the exec stage's report through the file opened before Landlock.
fn write_report(file: Option<&mut std::fs::File>, report: &ExecReport) {
    use std::io::Seek as _;
    if let Some(file) = file {
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = file.write_all(&serde_json::to_vec(report).unwrap_or_default());
        let _ = file.flush();
    }
}

/// Records why the exec stage stops, on stderr and in its report; returns `code`.
fn stop_with(
    file: &mut Option<std::fs::File>,
    report: &mut ExecReport,
    message: String,
    code: i32,
) -> i32 {
    let _ = writeln!(std::io::stderr(), "outpost: {message}");
    report.error = Some(message);
    write_report(file.as_mut(), report);
    code
}

fn exec(spec: LaunchSpec) -> i32 {
    let mut file = std::fs::File::create(exec_report_path(&spec.status_file)).ok();
    let mut report = ExecReport::default();
    if let Err(err) = apply_rlimits(&spec.rlimits) {
        let message = format!("cannot apply rlimits: {err}");
        return stop_with(&mut file, &mut report, message, 126);
    }
    match confine(&spec) {
        Ok((enforcement, abi)) => {
            report.enforcement = Some(enforcement);
            report.landlock_abi = abi;
        }
        Err(err) => {
            let message = format!("cannot apply Landlock: {err}");
            return stop_with(&mut file, &mut report, message, 126);
        }
    }
    if spec.confinement.require_full && report.enforcement != Some(Enforcement::Full) {
        let message = format!(
            "Landlock is {} on this node (kernel ABI {}) and full enforcement is required \
             ([sandbox] require_landlock)",
            report.enforcement.unwrap_or(Enforcement::None).as_str(),
            report.landlock_abi
        );
        return stop_with(&mut file, &mut report, message, 126);
    }
    // Written now: after a successful exec nothing of this process is left to write it. The
    // file stays open (close-on-exec) in case exec fails and the reason must replace it.
    write_report(file.as_mut(), &report);
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(&spec.program)
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.workdir)
        .exec();
    let message = format!("cannot run {:?}: {err}", spec.program);
    stop_with(&mut file, &mut report, message, 127)
}

#[cfg(target_os = "linux")]
fn apply_rlimits(limits: &crate::spec::Rlimits) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let set = |resource, value: Option<u64>| -> std::io::Result<()> {
        if let Some(value) = value {
            setrlimit(
                resource,
                Rlimit {
                    current: Some(value),
                    maximum: Some(value),
                },
            )?;
        }
        Ok(())
    };
    set(Resource::As, limits.address_space)?;
    set(Resource::Cpu, limits.cpu_seconds)?;
    set(Resource::Nofile, limits.open_files)?;
    set(Resource::Nproc, limits.processes)?;
    // No core files of someone else's program in the workdir.
    set(Resource::Core, Some(0))?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn apply_rlimits(_: &crate::spec::Rlimits) -> std::io::Result<()> {
    Ok(())
}

/// System directories every program may read and run from.
pub const SYSTEM_READ: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc",
    "/sys", "/dev",
];
/// Device files every program may write (`> /dev/null`).
pub const DEVICE_WRITE: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"];

#[cfg(target_os = "linux")]
fn confine(spec: &LaunchSpec) -> Result<(Enforcement, u32), String> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, LandlockStatus, NetPort, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, path_beneath_rules,
    };
    let rules = &spec.confinement;
    if !rules.enabled {
        return Ok((Enforcement::None, 0));
    }
    // ABI 5 holds every right asked for here (TCP from 4, truncate from 3, device ioctls from 5).
    let abi = ABI::V5;
    let fail = |e: landlock::RulesetError| e.to_string();
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(fail)?;
    if rules.tcp_connect.is_some() {
        ruleset = ruleset.handle_access(AccessNet::ConnectTcp).map_err(fail)?;
    }
    let mut created = ruleset
        .create()
        .map_err(fail)?
        .add_rules(path_beneath_rules(SYSTEM_READ, AccessFs::from_read(abi)))
        .map_err(fail)?
        .add_rules(path_beneath_rules(&rules.read, AccessFs::from_read(abi)))
        .map_err(fail)?
        .add_rules(path_beneath_rules(DEVICE_WRITE, AccessFs::from_file(abi)))
        .map_err(fail)?
        .add_rules(path_beneath_rules(&rules.write, AccessFs::from_all(abi)))
        .map_err(fail)?;
    for &port in rules.tcp_connect.iter().flatten() {
        created = created
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(fail)?;
    }
    let status = created.restrict_self().map_err(fail)?;
    let kernel_abi = match status.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => kernel_abi
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(effective_abi as u32),
        _ => 0,
    };
    let enforcement = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        _ => Enforcement::None,
    };
    Ok((enforcement, kernel_abi))
}

#[cfg(not(target_os = "linux"))]
fn confine(_: &LaunchSpec) -> Result<(Enforcement, u32), String> {
    Ok((Enforcement::None, 0))
}

/// What this kernel's Landlock enforces, as the `probe` stage prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LandlockSupport {
    /// The kernel's ABI (0: none).
    pub abi: u32,
    /// How much of the rules native processes get would be enforced.
    pub enforcement: Enforcement,
}

/// Stage `probe`: restricts this short-lived process as a native process would be (workdir
/// rules and TCP rules included) and prints the outcome as JSON.
fn probe_stage() -> i32 {
    let dir = std::env::temp_dir();
    let spec = LaunchSpec {
        program: String::new(),
        args: Vec::new(),
        env: Default::default(),
        workdir: dir.clone(),
        rlimits: Default::default(),
        confinement: crate::spec::Confinement {
            enabled: true,
            read: Vec::new(),
            write: vec![dir.clone()],
            tcp_connect: Some(Vec::new()),
            require_full: false,
        },
        max_processes: None,
        grace: Duration::ZERO,
        status_file: dir.join("unused"),
    };
    let support = match confine(&spec) {
        Ok((enforcement, abi)) => LandlockSupport { abi, enforcement },
        Err(_) => LandlockSupport {
            abi: 0,
            enforcement: Enforcement::None,
        },
    };
    println!("{}", serde_json::to_string(&support).unwrap_or_default());
    0
}

/// Asks `launcher` what Landlock enforces on this kernel (runs the `probe` stage); `None`
/// when the launcher does not answer (not an Outpost binary, or missing).
pub async fn probe(launcher: &Path) -> Option<LandlockSupport> {
    let output = tokio::process::Command::new(launcher)
        .arg(LAUNCHER_ARG)
        .arg("probe")
        .env_clear()
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), output).await {
        Ok(Ok(out)) if out.status.success() => serde_json::from_slice(&out.stdout).ok(),
        _ => None,
    }
}

/// [`probe`], with "no Landlock" for a launcher that does not answer.
pub async fn probe_landlock(launcher: &Path) -> LandlockSupport {
    probe(launcher).await.unwrap_or(LandlockSupport {
        abi: 0,
        enforcement: Enforcement::None,
    })
}
