//! What a node reports about its machine: load (CPU, memory, disk) for heartbeats, and
//! capabilities (hardware, software found on `PATH`, labels, sandbox support, GPUs) in PRX's
//! vocabulary so the hub can route by them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outpost_proto::v1::{Capabilities, GpuSnapshot, Hardware, Load, SandboxSupport, Software};
use sysinfo::{Disks, MemoryRefreshKind, RefreshKind, System};

/// Programs looked for on `PATH`, with the capability name they advertise.
const SOFTWARE: &[(&str, &str)] = &[
    ("python3", "python"),
    ("git", "git"),
    ("docker", "docker"),
    ("podman", "podman"),
    ("node", "nodejs"),
    ("cargo", "rust"),
    ("go", "go"),
    ("java", "java"),
    ("nvidia-smi", "nvidia-smi"),
];

/// Memory above which a node is tagged `high-memory` (64 GiB).
const HIGH_MEMORY_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// Samples load; keeps the `sysinfo` state between samples so CPU usage is a real delta.
pub struct LoadSampler {
    system: System,
    disk_path: PathBuf,
}

impl std::fmt::Debug for LoadSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadSampler")
            .field("disk_path", &self.disk_path)
            .finish_non_exhaustive()
    }
}

impl LoadSampler {
    /// A sampler reporting the disk that holds `disk_path` (the node's data dir).
    pub fn new(disk_path: &Path) -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        Self {
            system,
            disk_path: disk_path.to_path_buf(),
        }
    }

    /// Current load.
    pub fn sample(&mut self, running_tasks: u32) -> Load {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let (disk_used, disk_total) = disk_usage(&self.disk_path);
        Load {
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            disk_used_bytes: disk_used,
            disk_total_bytes: disk_total,
            load_avg_1m: System::load_average().one,
            running_tasks,
        }
    }
}

/// (used, total) bytes of the file system that holds `path`.
fn disk_usage(path: &Path) -> (u64, u64) {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let disks = Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| {
            (
                d.total_space().saturating_sub(d.available_space()),
                d.total_space(),
            )
        })
        .unwrap_or((0, 0))
}

/// Finds `program` on `PATH` without running it.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// What this node can do with native programs: whether its launcher answered, and the
/// Landlock it enforces (asked of the kernel by the launcher's probe, not read from securityfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeSupport {
    /// The launcher answered its probe.
    pub available: bool,
    /// Landlock as the probe found it.
    pub landlock: outpost_runner::launcher::LandlockSupport,
    /// `[sandbox] require_landlock`.
    pub require_landlock: bool,
}

impl Default for NativeSupport {
    fn default() -> Self {
        Self {
            available: false,
            landlock: outpost_runner::launcher::LandlockSupport {
                abi: 0,
                enforcement: outpost_runner::Enforcement::None,
            },
            require_landlock: false,
        }
    }
}

/// Everything the node advertises, given the latest GPU snapshot.
pub fn capabilities(
    labels: &BTreeMap<String, String>,
    safe_paths: &[PathBuf],
    native: NativeSupport,
    gpus: GpuSnapshot,
) -> Capabilities {
    let system = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let memory_total = system.total_memory();
    let cpu_cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mut tags = Vec::new();
    if !gpus.devices.is_empty() && !gpus.fenced {
        tags.push("gpu".to_string());
        if gpus.probe == "nvml"
            || gpus
                .devices
                .iter()
                .any(|d| !d.compute_capability.is_empty())
        {
            tags.push("cuda".to_string());
        }
    }
    if memory_total >= HIGH_MEMORY_BYTES {
        tags.push("high-memory".to_string());
    }
    let software = SOFTWARE
        .iter()
        .filter_map(|(program, name)| {
            find_on_path(program).map(|path| Software {
                name: (*name).into(),
                path: path.display().to_string(),
                version: String::new(),
            })
        })
        .collect();
    let enforcement = native.landlock.enforcement;
    let landlock = enforcement != outpost_runner::Enforcement::None;
    Capabilities {
        hardware: Some(Hardware {
            cpu_cores,
            memory_total_bytes: memory_total,
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            hostname: System::host_name().unwrap_or_default(),
            tags,
        }),
        software,
        labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        sandbox: Some(SandboxSupport {
            wasm: true,
            landlock,
            detail: format!(
                "wasm sandbox: {}; native programs: {}; landlock: {} (kernel ABI {})",
                outpost_sandbox::RUNTIME_DESCRIPTION,
                if native.available {
                    "yes"
                } else {
                    "no launcher"
                },
                enforcement.as_str(),
                native.landlock.abi
            ),
            landlock_abi: native.landlock.abi,
            landlock_enforcement: enforcement.as_str().into(),
            native: native.available,
            require_landlock: native.require_landlock,
        }),
        gpus: Some(gpus),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        safe_paths: safe_paths.iter().map(|p| p.display().to_string()).collect(),
        default_worktree_root: String::new(),
        direct_route: String::new(),
        default_task: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_sane() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = LoadSampler::new(dir.path());
        let load = sampler.sample(2);
        assert!(load.memory_total_bytes > 0);
        assert!(load.memory_used_bytes <= load.memory_total_bytes);
        assert!(load.disk_total_bytes >= load.disk_used_bytes);
        assert_eq!(load.running_tasks, 2);
    }

    #[test]
    fn capabilities_report_machine_and_labels() {
        let labels = BTreeMap::from([("zone".to_string(), "edge".to_string())]);
        let caps = capabilities(
            &labels,
            &[PathBuf::from("/srv")],
            NativeSupport::default(),
            GpuSnapshot::default(),
        );
        let hw = caps.hardware.unwrap();
        assert!(hw.cpu_cores >= 1);
        assert_eq!(hw.os, std::env::consts::OS);
        assert!(!hw.tags.contains(&"gpu".to_string()));
        assert_eq!(caps.labels.get("zone").map(String::as_str), Some("edge"));
        assert_eq!(caps.safe_paths, vec!["/srv".to_string()]);
        // `sh` is on every PATH this runs on; git is installed here but not guaranteed elsewhere.
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("definitely-not-a-program-outpost").is_none());
    }
}

/// Raises this process's soft limit on open files to its hard limit, so the sandbox's calls
/// (each holding at most [`outpost_sandbox::runtime::MAX_HANDLES`] handles, many at once) cannot
/// run the node out of descriptors. Returns the limit in force afterwards.
#[cfg(unix)]
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if limit.current != limit.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
        return limit.maximum;
    }
    limit.current
}

/// Elsewhere the limit is left as it is.
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Option<u64> {
    None
}

#[cfg(test)]
#[cfg(unix)]
mod open_file_tests {
    use super::*;

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let in_force = raise_open_file_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(in_force, now.current);
        assert_eq!(now.current, now.maximum, "{now:?}");
    }
}
