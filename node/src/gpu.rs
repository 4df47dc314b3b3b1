//! GPU probes: what GPUs a node has and how busy they are, for heartbeats and placement.
//!
//! [`GpuProbe`] is the seam. [`NvmlProbe`] reads NVIDIA's management library at run time (nothing
//! is needed at build time; on a machine without the driver it reports "no GPUs" and says why).
//! [`SimulatedProbe`] serves devices described in `[[gpu.simulated]]` and changes them over time
//! as `[[gpu.script]]` says, so tests and the demo have heterogeneous, changing GPUs (and probe
//! failures) without hardware. When NVML fails after it has worked, the snapshot is *fenced*: the node
//! withdraws its GPU capability and the reason travels to the hub.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use outpost_proto::v1::{GpuDevice, GpuSnapshot};
use parking_lot::Mutex;

use outpost_clock::{Clock, SystemClock};
use outpost_config::{GpuProbeKind, GpuScriptStep, GpuSection, SimulatedGpu};

/// Source of GPU snapshots.
pub trait GpuProbe: Send + Sync {
    /// The current state of every GPU (and MIG instance) on this machine.
    fn snapshot(&self) -> GpuSnapshot;
}

/// Builds the probe the `[gpu]` section asks for.
pub fn probe_from_config(section: &GpuSection) -> Box<dyn GpuProbe> {
    match section.probe {
        GpuProbeKind::None => Box::new(NoGpuProbe::new(
            "GPU probing disabled ([gpu] probe = \"none\")",
        )),
        GpuProbeKind::Simulated => Box::new(SimulatedProbe::scripted(
            &section.simulated,
            section.script.clone(),
            Arc::new(SystemClock),
        )),
        GpuProbeKind::Nvml | GpuProbeKind::Auto => {
            Box::new(NvmlProbe::load(section.nvml_library.as_deref()))
        }
    }
}

/// A probe that reports no GPUs and why.
#[derive(Debug, Clone)]
pub struct NoGpuProbe {
    reason: String,
}

impl NoGpuProbe {
    /// No GPUs, because `reason`.
    pub fn new(reason: &str) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl GpuProbe for NoGpuProbe {
    fn snapshot(&self) -> GpuSnapshot {
        GpuSnapshot {
            probe: "none".into(),
            unavailable_reason: self.reason.clone(),
            ..Default::default()
        }
    }
}

/// Devices from configuration, changed over time by a script (`[[gpu.script]]`) or by tests.
///
/// A script step that fails the probe makes it behave like NVML failing after it worked: no
/// devices and a fenced snapshot, until a `recover` step.
#[derive(Debug)]
pub struct SimulatedProbe {
    state: Mutex<SimulatedState>,
    script: Vec<GpuScriptStep>,
    clock: Arc<dyn Clock>,
    started_ms: u64,
}

#[derive(Debug)]
struct SimulatedState {
    devices: Vec<GpuDevice>,
    failure: Option<String>,
    next_step: usize,
}

impl SimulatedProbe {
    /// Simulated devices, indexed in order, that change only when told to.
    pub fn new(gpus: &[SimulatedGpu]) -> Self {
        Self::scripted(gpus, Vec::new(), Arc::new(SystemClock))
    }

    /// Simulated devices that follow `script`, its times counted from now on `clock`.
    pub fn scripted(
        gpus: &[SimulatedGpu],
        script: Vec<GpuScriptStep>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut devices = Vec::new();
        for (i, g) in gpus.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let uuid = format!(
                "GPU-sim-{i:04}-{}",
                g.name.to_ascii_lowercase().replace(' ', "-")
            );
            devices.push(GpuDevice {
                index,
                uuid: uuid.clone(),
                name: g.name.clone(),
                memory_total_mb: g.memory_total_mb,
                memory_used_mb: g.memory_used_mb,
                memory_free_mb: g.memory_total_mb.saturating_sub(g.memory_used_mb),
                utilization_percent: g.utilization_percent,
                temperature_c: 40,
                power_mw: 60_000,
                compute_capability: g.compute_capability.clone(),
                parent_uuid: String::new(),
                mig_enabled: !g.mig.is_empty(),
            });
            for (k, instance) in g.mig.iter().enumerate() {
                devices.push(GpuDevice {
                    index,
                    uuid: format!("MIG-sim-{i:04}-{k}"),
                    name: format!("{} MIG {}", g.name, instance.profile),
                    memory_total_mb: instance.memory_total_mb,
                    memory_used_mb: instance.memory_used_mb,
                    memory_free_mb: instance
                        .memory_total_mb
                        .saturating_sub(instance.memory_used_mb),
                    compute_capability: g.compute_capability.clone(),
                    parent_uuid: uuid.clone(),
                    ..GpuDevice::default()
                });
            }
        }
        let started_ms = clock.monotonic_ms();
        Self {
            state: Mutex::new(SimulatedState {
                devices,
                failure: None,
                next_step: 0,
            }),
            script,
            clock,
            started_ms,
        }
    }

    /// Sets the used memory of device `index` (simulating a workload).
    pub fn set_memory_used_mb(&self, index: u32, used_mb: u64) {
        self.state.lock().set_memory_used_mb(index, used_mb);
    }

    /// Applies the script steps whose time has come.
    fn advance(&self, state: &mut SimulatedState) {
        let elapsed_ms = self.clock.monotonic_ms().saturating_sub(self.started_ms);
        while let Some(step) = self.script.get(state.next_step) {
            if u64::try_from(step.at.as_millis()).unwrap_or(u64::MAX) > elapsed_ms {
                break;
            }
            state.next_step += 1;
            if let Some(reason) = &step.fail {
                state.failure = Some(reason.clone());
            } else if step.recover {
                state.failure = None;
            } else if let Some(index) = step.device {
                if let Some(used) = step.memory_used_mb {
                    state.set_memory_used_mb(index, used);
                }
                if let Some(d) = state
                    .devices
                    .iter_mut()
                    .find(|d| d.index == index && d.parent_uuid.is_empty())
                {
                    if let Some(utilization) = step.utilization_percent {
                        d.utilization_percent = utilization.min(100);
                    }
                    if let Some(temperature) = step.temperature_c {
                        d.temperature_c = temperature;
                    }
                }
            }
        }
    }
}

impl SimulatedState {
    fn set_memory_used_mb(&mut self, index: u32, used_mb: u64) {
        if let Some(d) = self
            .devices
            .iter_mut()
            .find(|d| d.index == index && d.parent_uuid.is_empty())
        {
            d.memory_used_mb = used_mb.min(d.memory_total_mb);
            d.memory_free_mb = d.memory_total_mb - d.memory_used_mb;
        }
    }
}

impl GpuProbe for SimulatedProbe {
    fn snapshot(&self) -> GpuSnapshot {
        let mut state = self.state.lock();
        self.advance(&mut state);
        if let Some(reason) = &state.failure {
            return GpuSnapshot {
                probe: "simulated".into(),
                unavailable_reason: format!(
                    "simulated probe failed after working: {reason}; GPU work fenced off this node"
                ),
                fenced: true,
                ..Default::default()
            };
        }
        let unavailable_reason = if state.devices.is_empty() {
            "simulated probe configured with no devices".into()
        } else {
            String::new()
        };
        GpuSnapshot {
            probe: "simulated".into(),
            devices: state.devices.clone(),
            driver_version: "simulated".into(),
            unavailable_reason,
            fenced: false,
        }
    }
}

/// What the NVML probe asks of the GPU management library. This is the seam between NVML's C
/// API (`NvmlLibrary`) and the rules for turning its answers into a snapshot ([`read_devices`]):
/// MIG instances listed after their GPU, empty MIG slots skipped, compute capability inherited.
/// Those rules are unit-tested against a scripted library, without a GPU.
pub trait GpuLibrary {
    /// The driver's version ("550.54.15"); empty when it cannot be read.
    fn driver_version(&self) -> String;
    /// How many physical GPUs there are.
    fn device_count(&self) -> Result<u32, String>;
    /// The physical GPU at `index` (NVML's index), and its MIG state.
    fn gpu(&self, index: u32) -> Result<(GpuDevice, MigState), String>;
    /// The MIG instance in `slot` of the GPU at `index`; `Ok(None)` when the slot is empty.
    fn mig_instance(&self, index: u32, slot: u32) -> Result<Option<GpuDevice>, String>;
}

/// Whether a GPU is partitioned into MIG instances, and how many slots it has for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigState {
    /// MIG mode is on: the GPU's memory belongs to its instances, the GPU itself takes no work.
    pub enabled: bool,
    /// Most instances the GPU can hold (NVML's maximum MIG device count).
    pub slots: u32,
}

/// Most MIG slots looked at per GPU, whatever the library claims (an H100 has 7).
const MAX_MIG_SLOTS: u32 = 16;

/// Every GPU the library reports, each followed by its MIG instances.
///
/// A GPU in MIG mode is listed with `mig_enabled` (the hub never places work on it as a whole,
/// even before any instance exists). Its instances carry the GPU's index and uuid as
/// `parent_uuid`; CUDA names them by their own `MIG-` uuid. Empty slots (instances may be
/// created and destroyed in any slot) are skipped; an instance whose compute capability cannot
/// be read has its GPU's. Any other failure fails the whole reading, so a GPU that stops
/// answering is never reported with stale or partial devices.
pub fn read_devices(library: &dyn GpuLibrary) -> Result<Vec<GpuDevice>, String> {
    let count = library.device_count()?;
    let mut devices = Vec::new();
    for index in 0..count {
        let (mut gpu, mig) = library.gpu(index)?;
        gpu.index = index;
        gpu.parent_uuid.clear();
        gpu.mig_enabled = mig.enabled;
        let parent_uuid = gpu.uuid.clone();
        let parent_capability = gpu.compute_capability.clone();
        devices.push(gpu);
        if !mig.enabled {
            continue;
        }
        for slot in 0..mig.slots.min(MAX_MIG_SLOTS) {
            let Some(mut instance) = library.mig_instance(index, slot)? else {
                continue;
            };
            instance.index = index;
            instance.parent_uuid = parent_uuid.clone();
            instance.mig_enabled = false;
            if instance.compute_capability.is_empty() {
                instance.compute_capability = parent_capability.clone();
            }
            devices.push(instance);
        }
    }
    Ok(devices)
}

/// NVML's value for "MIG mode on" (`NVML_DEVICE_MIG_ENABLE`).
const NVML_DEVICE_MIG_ENABLE: u32 = 1;

/// NVML itself, loaded at run time.
struct NvmlLibrary<'a>(&'a nvml_wrapper::Nvml);

impl GpuLibrary for NvmlLibrary<'_> {
    fn driver_version(&self) -> String {
        self.0.sys_driver_version().unwrap_or_default()
    }

    fn device_count(&self) -> Result<u32, String> {
        self.0
            .device_count()
            .map_err(|e| format!("counting GPUs: {e}"))
    }

    fn gpu(&self, index: u32) -> Result<(GpuDevice, MigState), String> {
        let device = self
            .0
            .device_by_index(index)
            .map_err(|e| format!("GPU {index}: {e}"))?;
        let reading = read_device(&device).map_err(|e| format!("GPU {index}: {e}"))?;
        // `NotSupported` (a GPU without MIG) and any other failure here mean: no MIG.
        let enabled = device
            .mig_mode()
            .is_ok_and(|mode| mode.current == NVML_DEVICE_MIG_ENABLE);
        let slots = if enabled {
            device.mig_device_count().unwrap_or(0)
        } else {
            0
        };
        Ok((reading, MigState { enabled, slots }))
    }

    fn mig_instance(&self, index: u32, slot: u32) -> Result<Option<GpuDevice>, String> {
        let device = self
            .0
            .device_by_index(index)
            .map_err(|e| format!("GPU {index}: {e}"))?;
        match device.mig_device_by_index(slot) {
            Ok(instance) => read_device(&instance)
                .map(Some)
                .map_err(|e| format!("GPU {index} MIG slot {slot}: {e}")),
            Err(nvml_wrapper::error::NvmlError::NotFound) => Ok(None),
            Err(e) => Err(format!("GPU {index} MIG slot {slot}: {e}")),
        }
    }
}

/// One device's own reading. Fields a device does not support (utilisation and temperature on a
/// MIG instance, power on some boards) read as 0; memory and uuid must read.
fn read_device(
    device: &nvml_wrapper::Device<'_>,
) -> Result<GpuDevice, nvml_wrapper::error::NvmlError> {
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    let memory = memory_info(device)?;
    const MIB: u64 = 1024 * 1024;
    Ok(GpuDevice {
        uuid: device.uuid()?,
        name: device.name().unwrap_or_default(),
        memory_total_mb: memory.total / MIB,
        memory_used_mb: memory.used / MIB,
        memory_free_mb: memory.free / MIB,
        utilization_percent: device.utilization_rates().map(|u| u.gpu).unwrap_or(0),
        temperature_c: device.temperature(TemperatureSensor::Gpu).unwrap_or(0),
        power_mw: device.power_usage().unwrap_or(0),
        compute_capability: device
            .cuda_compute_capability()
            .map(|cc| format!("{}.{}", cc.major, cc.minor))
            .unwrap_or_default(),
        ..GpuDevice::default()
    })
}

/// The device's memory through `nvmlDeviceGetMemoryInfo_v2`, or, on drivers older than R510 that
/// lack it, through the original `nvmlDeviceGetMemoryInfo` (whose `used` counts the driver's
/// reserved memory too, so such a GPU reads slightly fuller than it is: the safe side).
fn memory_info(
    device: &nvml_wrapper::Device<'_>,
) -> Result<nvml_wrapper::struct_wrappers::device::MemoryInfo, nvml_wrapper::error::NvmlError> {
    use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
    match device.memory_info() {
        Err(NvmlError::FailedToLoadSymbol(_)) => {
            let lib = device.nvml().lib();
            let read = nvml_sym(lib.nvmlDeviceGetMemoryInfo.as_ref())?;
            let mut memory = nvml_wrapper_sys::bindings::nvmlMemory_t {
                total: 0,
                free: 0,
                used: 0,
            };
            // SAFETY: `read` is the loaded library's `nvmlDeviceGetMemoryInfo`, whose C signature
            // the binding declares; the handle comes from the same library and is live for the
            // borrow of `device`; `memory` is a valid, writable `nvmlMemory_t` for the call.
            #[allow(unsafe_code)]
            let code = unsafe { read(device.handle(), &mut memory) };
            nvml_try(code)?;
            Ok(nvml_wrapper::struct_wrappers::device::MemoryInfo {
                free: memory.free,
                reserved: 0,
                total: memory.total,
                used: memory.used,
                version: 1,
            })
        }
        other => other,
    }
}

/// NVML, loaded at run time.
pub struct NvmlProbe {
    nvml: Option<nvml_wrapper::Nvml>,
    init_error: String,
    worked_before: AtomicBool,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("loaded", &self.nvml.is_some())
            .field("init_error", &self.init_error)
            .finish()
    }
}

impl Default for NvmlProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl NvmlProbe {
    /// Tries to load the driver's NVML; failure is remembered and reported in every snapshot.
    pub fn new() -> Self {
        Self::load(None)
    }

    /// Tries to load NVML from `library` (the driver's `libnvidia-ml.so.1` when `None`).
    pub fn load(library: Option<&std::path::Path>) -> Self {
        let mut builder = nvml_wrapper::Nvml::builder();
        if let Some(path) = library {
            builder.lib_path(path.as_os_str());
        }
        match builder.init() {
            Ok(nvml) => Self {
                nvml: Some(nvml),
                init_error: String::new(),
                worked_before: AtomicBool::new(false),
            },
            Err(e) => Self {
                nvml: None,
                init_error: match library {
                    Some(path) => format!("NVML unavailable from {}: {e}", path.display()),
                    None => format!("NVML unavailable: {e} (no NVIDIA driver on this machine?)"),
                },
                worked_before: AtomicBool::new(false),
            },
        }
    }
}

/// A snapshot from one reading of `library`. `worked_before` remembers whether any reading
/// succeeded: a failure after that fences the node for GPU work, a failure before it only says
/// why there are no GPUs.
fn library_snapshot(library: &dyn GpuLibrary, worked_before: &AtomicBool) -> GpuSnapshot {
    match read_devices(library) {
        Ok(devices) => {
            worked_before.store(true, Ordering::Relaxed);
            let unavailable_reason = if devices.is_empty() {
                "NVML reports no devices".into()
            } else {
                String::new()
            };
            GpuSnapshot {
                probe: "nvml".into(),
                devices,
                driver_version: library.driver_version(),
                unavailable_reason,
                fenced: false,
            }
        }
        Err(e) => {
            let fenced = worked_before.load(Ordering::Relaxed);
            let unavailable_reason = if fenced {
                format!("NVML failed after working: {e}; GPU work fenced off this node")
            } else {
                format!("NVML query failed: {e}")
            };
            GpuSnapshot {
                probe: "nvml".into(),
                unavailable_reason,
                fenced,
                ..Default::default()
            }
        }
    }
}

impl GpuProbe for NvmlProbe {
    fn snapshot(&self) -> GpuSnapshot {
        let Some(nvml) = &self.nvml else {
            return GpuSnapshot {
                probe: "nvml".into(),
                unavailable_reason: self.init_error.clone(),
                ..Default::default()
            };
        };
        library_snapshot(&NvmlLibrary(nvml), &self.worked_before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_without_driver_fails_cleanly() {
        // Build and CI machines have no NVIDIA driver; on a GPU machine this reports devices.
        let snap = NvmlProbe::new().snapshot();
        assert_eq!(snap.probe, "nvml");
        if snap.devices.is_empty() {
            assert!(
                !snap.unavailable_reason.is_empty(),
                "an empty snapshot must say why"
            );
            assert!(!snap.fenced, "a probe that never worked is not fenced");
        }
    }

    /// What a MIG slot answers: an instance, empty, or an error.
    type SlotReading = Result<Option<GpuDevice>, String>;

    /// A GPU library that answers from a table: per GPU its reading, MIG state and slots.
    #[derive(Default)]
    struct ScriptedLibrary {
        gpus: Vec<(GpuDevice, MigState, Vec<SlotReading>)>,
        failure: Mutex<Option<String>>,
        slot_reads: std::sync::atomic::AtomicU32,
    }

    impl GpuLibrary for ScriptedLibrary {
        fn driver_version(&self) -> String {
            "550.54.15".into()
        }
        fn device_count(&self) -> Result<u32, String> {
            match &*self.failure.lock() {
                Some(reason) => Err(reason.clone()),
                None => Ok(self.gpus.len() as u32),
            }
        }
        fn gpu(&self, index: u32) -> Result<(GpuDevice, MigState), String> {
            let (gpu, mig, _) = &self.gpus[index as usize];
            Ok((gpu.clone(), *mig))
        }
        fn mig_instance(&self, index: u32, slot: u32) -> Result<Option<GpuDevice>, String> {
            self.slot_reads.fetch_add(1, Ordering::Relaxed);
            let slots = &self.gpus[index as usize].2;
            slots.get(slot as usize).cloned().unwrap_or(Ok(None))
        }
    }

    fn reading(uuid: &str, total_mb: u64, capability: &str) -> GpuDevice {
        GpuDevice {
            // What the library says of these is overwritten by the enumeration.
            index: 99,
            parent_uuid: "stale".into(),
            mig_enabled: true,
            uuid: uuid.into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_total_mb: total_mb,
            memory_free_mb: total_mb,
            compute_capability: capability.into(),
            ..GpuDevice::default()
        }
    }

    #[test]
    fn mig_instances_follow_their_gpu_and_empty_slots_are_skipped() {
        let library = ScriptedLibrary {
            gpus: vec![
                (
                    reading("GPU-a", 81_559, "9.0"),
                    MigState::default(),
                    Vec::new(),
                ),
                (
                    reading("GPU-b", 81_559, "9.0"),
                    MigState {
                        enabled: true,
                        slots: 7,
                    },
                    // Instances live in slots 0 and 2; slot 1 was destroyed.
                    vec![
                        Ok(Some(reading("MIG-b0", 40_192, ""))),
                        Ok(None),
                        Ok(Some(reading("MIG-b2", 19_968, "9.0"))),
                    ],
                ),
                // MIG mode on, no instance created yet: listed, never placed on as a whole.
                (
                    reading("GPU-c", 81_559, "9.0"),
                    MigState {
                        enabled: true,
                        slots: 7,
                    },
                    Vec::new(),
                ),
            ],
            ..ScriptedLibrary::default()
        };
        let devices = read_devices(&library).unwrap();
        let summary: Vec<(u32, &str, &str, bool)> = devices
            .iter()
            .map(|d| {
                (
                    d.index,
                    d.uuid.as_str(),
                    d.parent_uuid.as_str(),
                    d.mig_enabled,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, "GPU-a", "", false),
                (1, "GPU-b", "", true),
                (1, "MIG-b0", "GPU-b", false),
                (1, "MIG-b2", "GPU-b", false),
                (2, "GPU-c", "", true),
            ]
        );
        assert_eq!(
            devices[2].compute_capability, "9.0",
            "an instance without its own capability has its GPU's"
        );
        assert_eq!(devices[2].memory_total_mb, 40_192);
    }

    #[test]
    fn a_library_claiming_countless_mig_slots_is_read_within_bounds() {
        let library = ScriptedLibrary {
            gpus: vec![(
                reading("GPU-a", 81_559, "9.0"),
                MigState {
                    enabled: true,
                    slots: u32::MAX,
                },
                vec![Ok(Some(reading("MIG-a0", 9_984, "9.0")))],
            )],
            ..ScriptedLibrary::default()
        };
        assert_eq!(read_devices(&library).unwrap().len(), 2);
        assert_eq!(
            library.slot_reads.load(Ordering::Relaxed),
            MAX_MIG_SLOTS,
            "slots read"
        );
    }

    #[test]
    fn a_failing_instance_fails_the_reading_and_fences_a_probe_that_worked() {
        let mut library = ScriptedLibrary {
            gpus: vec![(
                reading("GPU-a", 81_559, "9.0"),
                MigState {
                    enabled: true,
                    slots: 2,
                },
                vec![Ok(Some(reading("MIG-a0", 9_984, "9.0")))],
            )],
            ..ScriptedLibrary::default()
        };
        let worked_before = AtomicBool::new(false);
        let snap = library_snapshot(&library, &worked_before);
        assert_eq!(snap.devices.len(), 2);
        assert_eq!(snap.driver_version, "550.54.15");
        assert!(!snap.fenced && snap.unavailable_reason.is_empty());

        // An instance that cannot be read (the GPU fell off the bus): no partial snapshot.
        library.gpus[0]
            .2
            .push(Err("GPU 0 MIG slot 1: GPU is lost".into()));
        let snap = library_snapshot(&library, &worked_before);
        assert!(snap.fenced, "{snap:?}");
        assert!(snap.devices.is_empty(), "no stale devices");
        assert!(
            snap.unavailable_reason
                .contains("GPU 0 MIG slot 1: GPU is lost")
                && snap.unavailable_reason.contains("fenced"),
            "{}",
            snap.unavailable_reason
        );

        // The library failing before it ever worked says why, without fencing.
        let fresh = ScriptedLibrary::default();
        *fresh.failure.lock() = Some("counting GPUs: driver not loaded".into());
        let snap = library_snapshot(&fresh, &AtomicBool::new(false));
        assert!(!snap.fenced);
        assert!(
            snap.unavailable_reason.contains("driver not loaded"),
            "{}",
            snap.unavailable_reason
        );
        // A working library with no GPUs says so.
        let empty = ScriptedLibrary::default();
        let snap = library_snapshot(&empty, &AtomicBool::new(false));
        assert_eq!(snap.unavailable_reason, "NVML reports no devices");
    }

    #[test]
    fn simulated_mig_gpu_lists_its_instances() {
        let probe = SimulatedProbe::new(&[SimulatedGpu {
            name: "NVIDIA A100".into(),
            memory_total_mb: 81920,
            memory_used_mb: 0,
            compute_capability: "8.0".into(),
            utilization_percent: 0,
            mig: vec![
                outpost_config::SimulatedMig {
                    profile: "3g.40gb".into(),
                    memory_total_mb: 40_960,
                    memory_used_mb: 1_000,
                },
                outpost_config::SimulatedMig {
                    profile: "1g.10gb".into(),
                    memory_total_mb: 10_240,
                    memory_used_mb: 0,
                },
            ],
        }]);
        let snap = probe.snapshot();
        assert_eq!(snap.devices.len(), 3);
        assert!(snap.devices[0].mig_enabled);
        assert_eq!(snap.devices[1].uuid, "MIG-sim-0000-0");
        assert_eq!(snap.devices[1].name, "NVIDIA A100 MIG 3g.40gb");
        assert_eq!(snap.devices[1].memory_free_mb, 39_960);
        assert_eq!(snap.devices[2].parent_uuid, snap.devices[0].uuid);
        // A script step names the GPU: it changes the GPU, not an instance.
        probe.set_memory_used_mb(0, 5_000);
        let snap = probe.snapshot();
        assert_eq!(snap.devices[0].memory_used_mb, 5_000);
        assert_eq!(snap.devices[1].memory_used_mb, 1_000);
    }

    #[test]
    fn simulated_devices_and_changes() {
        let probe = SimulatedProbe::new(&[SimulatedGpu {
            name: "NVIDIA A100".into(),
            memory_total_mb: 81920,
            memory_used_mb: 1024,
            compute_capability: "8.0".into(),
            utilization_percent: 5,
            mig: Vec::new(),
        }]);
        let snap = probe.snapshot();
        assert_eq!(snap.devices.len(), 1);
        assert_eq!(snap.devices[0].memory_free_mb, 80896);
        probe.set_memory_used_mb(0, 90000);
        let snap = probe.snapshot();
        assert_eq!(snap.devices[0].memory_used_mb, 81920);
        assert_eq!(snap.devices[0].memory_free_mb, 0);
    }

    #[test]
    fn scripted_probe_follows_its_steps_in_time() {
        let clock = Arc::new(outpost_clock::ManualClock::new(1_000_000));
        let a100 = SimulatedGpu {
            name: "NVIDIA A100".into(),
            memory_total_mb: 81920,
            memory_used_mb: 0,
            compute_capability: "8.0".into(),
            utilization_percent: 0,
            mig: Vec::new(),
        };
        let step = |at_ms: u64| GpuScriptStep {
            at: std::time::Duration::from_millis(at_ms),
            ..GpuScriptStep::default()
        };
        let script = vec![
            GpuScriptStep {
                device: Some(1),
                memory_used_mb: Some(70000),
                utilization_percent: Some(95),
                ..step(1000)
            },
            GpuScriptStep {
                fail: Some("GPU has fallen off the bus".into()),
                ..step(5000)
            },
            GpuScriptStep {
                recover: true,
                ..step(9000)
            },
        ];
        let probe = SimulatedProbe::scripted(&[a100.clone(), a100], script, clock.clone());
        let snap = probe.snapshot();
        assert_eq!(snap.devices[1].memory_free_mb, 81920);
        clock.advance_ms(999);
        assert_eq!(probe.snapshot().devices[1].memory_free_mb, 81920, "not yet");
        clock.advance_ms(1);
        let snap = probe.snapshot();
        assert_eq!(snap.devices[1].memory_free_mb, 11920);
        assert_eq!(snap.devices[1].utilization_percent, 95);
        assert_eq!(
            snap.devices[0].memory_free_mb, 81920,
            "other device untouched"
        );
        clock.advance_ms(4000);
        let snap = probe.snapshot();
        assert!(snap.fenced);
        assert!(snap.devices.is_empty());
        assert!(
            snap.unavailable_reason.contains("fallen off the bus"),
            "{}",
            snap.unavailable_reason
        );
        clock.advance_ms(4000);
        let snap = probe.snapshot();
        assert!(!snap.fenced);
        assert_eq!(snap.devices.len(), 2);
        assert_eq!(
            snap.devices[1].memory_free_mb, 11920,
            "recovery keeps the device state"
        );
        // Several steps due at once all apply, in order.
        let probe = SimulatedProbe::scripted(
            &[SimulatedGpu {
                name: "L4".into(),
                memory_total_mb: 24576,
                memory_used_mb: 0,
                compute_capability: "8.9".into(),
                utilization_percent: 0,
                mig: Vec::new(),
            }],
            vec![
                GpuScriptStep {
                    device: Some(0),
                    memory_used_mb: Some(1000),
                    ..step(10)
                },
                GpuScriptStep {
                    device: Some(0),
                    memory_used_mb: Some(2000),
                    ..step(20)
                },
            ],
            clock.clone(),
        );
        clock.advance_ms(60_000);
        assert_eq!(probe.snapshot().devices[0].memory_used_mb, 2000);
    }
}
