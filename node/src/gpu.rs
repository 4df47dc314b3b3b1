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

use crate::clock::{Clock, SystemClock};
use crate::config::{GpuProbeKind, GpuScriptStep, GpuSection, SimulatedGpu};

/// Source of GPU snapshots.
pub trait GpuProbe: Send + Sync {
    /// The current state of every GPU (and MIG instance) on this machine.
    fn snapshot(&self) -> GpuSnapshot;
}

/// Parses "8.0" / "9.0" into (major, minor).
pub fn parse_compute_capability(text: &str) -> Result<(u32, u32), String> {
    let (major, minor) = text
        .split_once('.')
        .ok_or_else(|| format!("compute capability {text:?} must look like \"8.0\""))?;
    let major = major
        .parse()
        .map_err(|_| format!("compute capability {text:?}: bad major version"))?;
    let minor = minor
        .parse()
        .map_err(|_| format!("compute capability {text:?}: bad minor version"))?;
    Ok((major, minor))
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
        GpuProbeKind::Nvml | GpuProbeKind::Auto => Box::new(NvmlProbe::new()),
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
    started_ms: i64,
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
        let devices = gpus
            .iter()
            .enumerate()
            .map(|(i, g)| GpuDevice {
                index: i as u32,
                uuid: format!(
                    "GPU-sim-{i:04}-{}",
                    g.name.to_ascii_lowercase().replace(' ', "-")
                ),
                name: g.name.clone(),
                memory_total_mb: g.memory_total_mb,
                memory_used_mb: g.memory_used_mb,
                memory_free_mb: g.memory_total_mb.saturating_sub(g.memory_used_mb),
                utilization_percent: g.utilization_percent,
                temperature_c: 40,
                power_mw: 60_000,
                compute_capability: g.compute_capability.clone(),
                parent_uuid: String::new(),
            })
            .collect();
        let started_ms = clock.now_ms();
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
        let elapsed_ms = self.clock.now_ms().saturating_sub(self.started_ms);
        while let Some(step) = self.script.get(state.next_step) {
            if i64::try_from(step.at.as_millis()).unwrap_or(i64::MAX) > elapsed_ms {
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
                if let Some(d) = state.devices.iter_mut().find(|d| d.index == index) {
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
        if let Some(d) = self.devices.iter_mut().find(|d| d.index == index) {
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
    /// Tries to load NVML; failure is remembered and reported in every snapshot.
    pub fn new() -> Self {
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => Self {
                nvml: Some(nvml),
                init_error: String::new(),
                worked_before: AtomicBool::new(false),
            },
            Err(e) => Self {
                nvml: None,
                init_error: format!("NVML unavailable: {e} (no NVIDIA driver on this machine?)"),
                worked_before: AtomicBool::new(false),
            },
        }
    }

    fn read(
        nvml: &nvml_wrapper::Nvml,
    ) -> Result<(Vec<GpuDevice>, String), nvml_wrapper::error::NvmlError> {
        let driver_version = nvml.sys_driver_version().unwrap_or_default();
        let count = nvml.device_count()?;
        let mut devices = Vec::new();
        for index in 0..count {
            let device = nvml.device_by_index(index)?;
            let parent = read_device(&device, index, String::new())?;
            let mig_enabled = device.mig_mode().map(|m| m.current == 1).unwrap_or(false);
            let parent_uuid = parent.uuid.clone();
            let parent_cc = parent.compute_capability.clone();
            devices.push(parent);
            if mig_enabled {
                for mig_index in 0..8u32 {
                    let Ok(mig) = device.mig_device_by_index(mig_index) else {
                        break;
                    };
                    let mut instance = read_device(&mig, index, parent_uuid.clone())?;
                    if instance.compute_capability.is_empty() {
                        instance.compute_capability = parent_cc.clone();
                    }
                    devices.push(instance);
                }
            }
        }
        Ok((devices, driver_version))
    }
}

fn read_device(
    device: &nvml_wrapper::Device<'_>,
    index: u32,
    parent_uuid: String,
) -> Result<GpuDevice, nvml_wrapper::error::NvmlError> {
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    let memory = device.memory_info()?;
    const MIB: u64 = 1024 * 1024;
    Ok(GpuDevice {
        index,
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
        parent_uuid,
    })
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
        match Self::read(nvml) {
            Ok((devices, driver_version)) => {
                self.worked_before.store(true, Ordering::Relaxed);
                let unavailable_reason = if devices.is_empty() {
                    "NVML reports no devices".into()
                } else {
                    String::new()
                };
                GpuSnapshot {
                    probe: "nvml".into(),
                    devices,
                    driver_version,
                    unavailable_reason,
                    fenced: false,
                }
            }
            Err(e) => {
                let fenced = self.worked_before.load(Ordering::Relaxed);
                let reason = if fenced {
                    format!("NVML failed after working: {e}; GPU work fenced off this node")
                } else {
                    format!("NVML query failed: {e}")
                };
                GpuSnapshot {
                    probe: "nvml".into(),
                    devices: Vec::new(),
                    driver_version: String::new(),
                    unavailable_reason: reason,
                    fenced,
                }
            }
        }
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

    #[test]
    fn simulated_devices_and_changes() {
        let probe = SimulatedProbe::new(&[SimulatedGpu {
            name: "NVIDIA A100".into(),
            memory_total_mb: 81920,
            memory_used_mb: 1024,
            compute_capability: "8.0".into(),
            utilization_percent: 5,
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
        let clock = Arc::new(crate::clock::ManualClock::new(1_000_000));
        let a100 = SimulatedGpu {
            name: "NVIDIA A100".into(),
            memory_total_mb: 81920,
            memory_used_mb: 0,
            compute_capability: "8.0".into(),
            utilization_percent: 0,
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

    #[test]
    fn compute_capability_parsing() {
        assert_eq!(parse_compute_capability("8.6"), Ok((8, 6)));
        assert!(parse_compute_capability("8").is_err());
        assert!(parse_compute_capability("x.1").is_err());
    }
}
