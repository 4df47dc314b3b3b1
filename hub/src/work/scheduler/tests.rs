//! Scheduler tests: requirements matrix, sharing, reservations, fencing, reasons, and a seeded
//! property test over random fleets and operations.

use super::*;

fn cc(text: &str) -> ComputeCapability {
    ComputeCapability::parse(text).unwrap()
}

fn gpu(node: &str, index: u32, total_mb: u64, free_mb: u64, cap: &str) -> DeviceReport {
    DeviceReport {
        index,
        uuid: format!("GPU-{node}-{index}"),
        memory_total_mb: total_mb,
        memory_free_mb: free_mb,
        compute_capability: cc(cap),
        parent_uuid: String::new(),
        mig_enabled: false,
    }
}

fn node(id: &str, devices: Vec<DeviceReport>) -> NodeReport {
    NodeReport {
        id: id.into(),
        accepting: Ok(()),
        gpu_fence: None,
        labels: HashMap::new(),
        capabilities: ["wasm".to_string()].into_iter().collect(),
        devices,
    }
}

fn gpus(count: f64) -> Requirements {
    Requirements {
        gpu_milli: Requirements::gpu_milli_from_count(count).unwrap(),
        ..Default::default()
    }
}

fn with_memory(mut req: Requirements, mb: u64) -> Requirements {
    req.gpu_memory_mb = mb;
    req
}

fn place(s: &mut Scheduler, task: &str, req: &Requirements) -> Result<Placement, NoFit> {
    let result = s.place(task, req, 0).expect("valid call");
    s.check_invariants().unwrap();
    result
}

fn two_node_fleet(strategy: Strategy) -> Scheduler {
    let mut s = Scheduler::new(strategy);
    s.upsert_node(node("cpu", vec![]));
    s.upsert_node(node(
        "gpu",
        vec![
            gpu("gpu", 0, 24_000, 24_000, "8.6"),
            gpu("gpu", 1, 24_000, 24_000, "8.6"),
        ],
    ));
    s
}

#[test]
fn gpu_counts_parse_and_refuse_what_cannot_be_placed() {
    assert_eq!(Requirements::gpu_milli_from_count(0.5).unwrap(), 500);
    assert_eq!(Requirements::gpu_milli_from_count(2.0).unwrap(), 2000);
    assert_eq!(Requirements::gpu_milli_from_count(0.0).unwrap(), 0);
    assert!(
        Requirements::gpu_milli_from_count(1.5)
            .unwrap_err()
            .contains("whole number")
    );
    assert!(Requirements::gpu_milli_from_count(-1.0).is_err());
    assert!(Requirements::gpu_milli_from_count(f64::NAN).is_err());
    assert!(Requirements::gpu_milli_from_count(0.0001).is_err());
    let bad = Requirements {
        gpu_memory_mb: 10,
        ..Default::default()
    };
    let mut s = Scheduler::default();
    assert!(matches!(
        s.place("t", &bad, 0),
        Err(PlaceError::Invalid(m)) if m.contains("gpu_memory needs gpus")
    ));
}

#[test]
fn gpu_work_goes_to_the_gpu_node_and_cpu_work_avoids_it() {
    let mut s = two_node_fleet(Strategy::BinPack);
    let p = place(&mut s, "g", &gpus(1.0)).unwrap();
    assert_eq!(p.node_id, "gpu");
    assert_eq!(p.devices.len(), 1);
    assert_eq!(p.share_milli, 1000);
    assert_eq!(p.device_indexes(), p.devices[0].to_string());
    assert_eq!(p.cuda_visible_devices(), p.devices[0].to_string());
    let c = place(&mut s, "c", &Requirements::default()).unwrap();
    assert_eq!(c.node_id, "cpu", "work without GPUs keeps GPU nodes free");
    assert!(c.devices.is_empty());
    assert_eq!(c.device_indexes(), "");
    assert_eq!(c.cuda_visible_devices(), "");
    assert_eq!(
        s.place("g", &gpus(1.0), 0),
        Err(PlaceError::AlreadyPlaced("g".into()))
    );
}

#[test]
fn whole_gpus_are_exclusive_and_counted() {
    let mut s = two_node_fleet(Strategy::BinPack);
    let both = place(&mut s, "both", &gpus(2.0)).unwrap();
    assert_eq!(both.devices, vec![0, 1]);
    assert_eq!(both.device_indexes(), "0,1");
    assert_eq!(both.cuda_visible_devices(), "0,1");
    let no = place(&mut s, "more", &gpus(1.0)).unwrap_err();
    assert_eq!(no.by_cause.get("GPUs taken by other tasks"), Some(&1));
    assert_eq!(no.by_cause.get("no GPUs"), Some(&1));
    assert!(no.reason.contains("no node fits 1 GPU"), "{}", no.reason);
    // A share does not fit on an exclusive device either.
    assert!(place(&mut s, "half", &gpus(0.5)).is_err());
    assert!(s.release("both"));
    assert!(!s.release("both"));
    assert_eq!(place(&mut s, "more", &gpus(1.0)).unwrap().node_id, "gpu");
    // Three GPUs never fit on a two-GPU node.
    let three = place(&mut s, "three", &gpus(3.0)).unwrap_err();
    assert_eq!(three.by_cause.get("too few GPUs"), Some(&1));
}

#[test]
fn fractional_shares_pack_onto_one_device_with_binpack() {
    let mut s = two_node_fleet(Strategy::BinPack);
    let a = place(&mut s, "a", &gpus(0.5)).unwrap();
    let b = place(&mut s, "b", &gpus(0.5)).unwrap();
    assert_eq!(a.devices, b.devices, "bin-pack fills the shared device");
    assert_eq!(a.share_milli, 500);
    let c = place(&mut s, "c", &gpus(0.25)).unwrap();
    assert_ne!(c.devices, a.devices, "the first device is full (2 × 0.5)");
    // A whole GPU no longer fits: one device full, the other shared.
    assert!(place(&mut s, "whole", &gpus(1.0)).is_err());
    let d = place(&mut s, "d", &gpus(0.75)).unwrap();
    assert_eq!(d.devices, c.devices);
    assert!(
        place(&mut s, "e", &gpus(0.01)).is_err(),
        "both devices at 1.0"
    );
}

#[test]
fn spread_puts_shares_on_separate_devices() {
    let mut s = two_node_fleet(Strategy::Spread);
    let a = place(&mut s, "a", &gpus(0.5)).unwrap();
    let b = place(&mut s, "b", &gpus(0.5)).unwrap();
    assert_ne!(a.devices, b.devices);
}

#[test]
fn placements_between_heartbeats_never_double_book_memory() {
    let mut s = Scheduler::default();
    s.upsert_node(node("n", vec![gpu("n", 0, 24_000, 24_000, "8.0")]));
    let req = with_memory(gpus(0.25), 16_000);
    place(&mut s, "first", &req).unwrap();
    // No heartbeat yet: the driver still says 24 GB free, but 16 GB are promised.
    let second = place(&mut s, "second", &req).unwrap_err();
    assert!(
        second.reason.contains("not enough free GPU memory"),
        "{}",
        second.reason
    );
    assert!(second.reason.contains("8000 MiB"), "{}", second.reason);
    // The heartbeat shows the task running and its memory used: still no room.
    s.observe_heartbeat("n", [("GPU-n-0", 8_500)], &["first".into()], 0);
    assert!(place(&mut s, "second", &req).is_err());
    // A small one fits in what is left.
    place(&mut s, "small", &with_memory(gpus(0.25), 4_000)).unwrap();
    // A placement no heartbeat has listed is reported once its grace has passed.
    assert_eq!(s.vanished(2, 1_000, 1), vec!["small".to_string()]);
    // The big one ends and the driver frees its memory.
    assert!(s.release("first"));
    s.observe_heartbeat("n", [("GPU-n-0", 24_000)], &["small".into()], 0);
    place(&mut s, "second", &req).unwrap();
}

#[test]
fn tasks_a_node_stops_reporting_are_found() {
    let mut s = Scheduler::default();
    s.upsert_node(node("n", vec![gpu("n", 0, 24_000, 24_000, "8.0")]));
    place(&mut s, "kept", &gpus(0.5)).unwrap();
    place(&mut s, "lost", &gpus(0.25)).unwrap();
    place(&mut s, "never", &Requirements::default()).unwrap();
    let all = ["kept".to_string(), "lost".to_string()];
    s.observe_heartbeat("n", [], &all, 1_000);
    assert!(s.vanished(1_000, 5_000, 60_000).is_empty());
    // The node restarts: its heartbeats list only what still runs.
    s.observe_heartbeat("n", [], &all[..1], 2_000);
    s.observe_heartbeat("n", [], &all[..1], 4_000);
    assert!(
        s.vanished(6_000, 5_000, 60_000).is_empty(),
        "within the grace"
    );
    assert_eq!(s.vanished(7_001, 5_000, 60_000), vec!["lost".to_string()]);
    // Listed again (a slow heartbeat): the clock resets.
    s.observe_heartbeat("n", [], &all, 7_500);
    assert!(s.vanished(8_000, 5_000, 60_000).is_empty());
    // Never listed and never released.
    assert_eq!(s.vanished(60_001, 5_000, 60_000), vec!["never".to_string()]);
}

#[test]
fn memory_used_outside_outpost_keeps_work_away() {
    let mut s = Scheduler::default();
    s.upsert_node(node("n", vec![gpu("n", 0, 80_000, 80_000, "9.0")]));
    s.observe_heartbeat("n", [("GPU-n-0", 10_000)], &[], 0);
    let no = place(&mut s, "t", &with_memory(gpus(1.0), 16_000)).unwrap_err();
    assert!(
        no.reason.contains("most free on any GPU: 10000 MiB"),
        "{}",
        no.reason
    );
    s.observe_heartbeat("n", [("GPU-n-0", 70_000)], &[], 0);
    place(&mut s, "t", &with_memory(gpus(1.0), 16_000)).unwrap();
}

#[test]
fn compute_capability_labels_capabilities_and_pinning_filter() {
    let mut s = Scheduler::default();
    let mut old = node("old", vec![gpu("old", 0, 16_000, 16_000, "7.5")]);
    old.labels.insert("zone".into(), "a".into());
    s.upsert_node(old);
    let mut new = node("new", vec![gpu("new", 0, 80_000, 80_000, "9.0")]);
    new.labels.insert("zone".into(), "b".into());
    new.capabilities.insert("docker".into());
    s.upsert_node(new);

    let mut req = gpus(1.0);
    req.min_compute_capability = Some(cc("8.0"));
    assert_eq!(place(&mut s, "cc", &req).unwrap().node_id, "new");
    s.release("cc");

    req.labels.insert("zone".into(), "a".into());
    let no = place(&mut s, "cc-a", &req).unwrap_err();
    assert_eq!(no.by_cause.get("missing labels"), Some(&1));
    assert_eq!(no.by_cause.get("compute capability too low"), Some(&1));
    assert!(no.reason.contains("highest: 9.0"), "{}", no.reason);

    let docker = Requirements {
        capabilities: vec!["docker".into()],
        ..Default::default()
    };
    assert_eq!(place(&mut s, "d", &docker).unwrap().node_id, "new");
    let podman = Requirements {
        capabilities: vec!["podman".into()],
        ..Default::default()
    };
    let no = place(&mut s, "p", &podman).unwrap_err();
    assert!(
        no.reason.contains("missing capabilities (podman)"),
        "{}",
        no.reason
    );

    let pinned = Requirements {
        node: Some("old".into()),
        ..Default::default()
    };
    assert_eq!(place(&mut s, "pin", &pinned).unwrap().node_id, "old");
    let ghost = Requirements {
        node: Some("ghost".into()),
        ..Default::default()
    };
    let no = place(&mut s, "ghost", &ghost).unwrap_err();
    assert!(
        no.reason.contains("\"ghost\" is not known"),
        "{}",
        no.reason
    );
    let mut pinned_gpu = gpus(1.0);
    pinned_gpu.node = Some("old".into());
    pinned_gpu.min_compute_capability = Some(cc("8.0"));
    let no = place(&mut s, "pin-gpu", &pinned_gpu).unwrap_err();
    assert_eq!(
        no.by_cause.len(),
        1,
        "only the pinned node is counted: {no:?}"
    );
}

#[test]
fn fenced_and_draining_nodes_get_no_new_work() {
    let mut s = two_node_fleet(Strategy::BinPack);
    s.set_gpu_fence(
        "gpu",
        Some("NVML stopped answering: driver reloaded".into()),
    );
    let no = place(&mut s, "g", &gpus(1.0)).unwrap_err();
    assert!(
        no.reason
            .contains("fenced for GPU work (gpu: NVML stopped answering"),
        "{}",
        no.reason
    );
    // A fenced node still runs work without GPUs.
    s.set_accepting("cpu", Err("draining".into()));
    assert_eq!(
        place(&mut s, "c", &Requirements::default())
            .unwrap()
            .node_id,
        "gpu"
    );
    s.set_accepting("gpu", Err("offline: no heartbeat".into()));
    let no = place(&mut s, "c2", &Requirements::default()).unwrap_err();
    assert_eq!(no.by_cause.get("not accepting work"), Some(&2));
    assert!(no.reason.contains("cpu: draining"), "{}", no.reason);
    s.set_gpu_fence("gpu", None);
    s.set_accepting("gpu", Ok(()));
    assert_eq!(place(&mut s, "g", &gpus(1.0)).unwrap().node_id, "gpu");
}

#[test]
fn removing_a_node_hands_back_its_tasks() {
    let mut s = two_node_fleet(Strategy::BinPack);
    place(&mut s, "a", &gpus(1.0)).unwrap();
    place(&mut s, "b", &gpus(0.5)).unwrap();
    let mut lost = s.remove_node("gpu");
    lost.sort();
    assert_eq!(lost, vec!["a".to_string(), "b".to_string()]);
    assert!(!s.is_placed("a"));
    assert!(s.tasks_on("gpu").is_empty());
    assert_eq!(s.node_count(), 1);
    assert!(place(&mut s, "a", &gpus(1.0)).is_err());
    // The node comes back: fresh, with nothing on it.
    s.upsert_node(node("gpu", vec![gpu("gpu", 0, 24_000, 24_000, "8.6")]));
    assert_eq!(place(&mut s, "a", &gpus(1.0)).unwrap().node_id, "gpu");
}

#[test]
fn mig_instances_are_placed_never_their_parent() {
    let mut s = Scheduler::default();
    let parent = gpu("m", 0, 80_000, 80_000, "9.0");
    let mig = |i: u32| DeviceReport {
        index: 0,
        uuid: format!("MIG-{i}"),
        memory_total_mb: 20_000,
        memory_free_mb: 20_000,
        compute_capability: cc("9.0"),
        parent_uuid: parent.uuid.clone(),
        mig_enabled: false,
    };
    let (a, b) = (mig(1), mig(2));
    s.upsert_node(node("m", vec![parent.clone(), a, b]));
    let first = place(&mut s, "1", &gpus(1.0)).unwrap();
    assert!(first.device_uuids[0].starts_with("MIG-"), "{first:?}");
    // CUDA names a MIG instance by its uuid; its index is its GPU's.
    assert_eq!(first.cuda_visible_devices(), first.device_uuids[0]);
    assert_eq!(first.device_indexes(), "0");
    let second = place(&mut s, "2", &gpus(1.0)).unwrap();
    assert!(second.device_uuids[0].starts_with("MIG-"));
    assert!(
        place(&mut s, "3", &gpus(1.0)).is_err(),
        "the parent is not a third device"
    );
    assert!(place(&mut s, "big", &with_memory(gpus(0.5), 30_000)).is_err());
}

#[test]
fn a_gpu_in_mig_mode_without_instances_takes_no_work() {
    let mut s = Scheduler::default();
    let mut partitioned = gpu("m", 0, 80_000, 80_000, "9.0");
    partitioned.mig_enabled = true;
    s.upsert_node(node(
        "m",
        vec![partitioned, gpu("m", 1, 24_000, 24_000, "8.6")],
    ));
    let p = place(&mut s, "1", &gpus(1.0)).unwrap();
    assert_eq!(p.devices, vec![1], "only the GPU outside MIG mode");
    let no = place(&mut s, "2", &gpus(0.5)).unwrap_err();
    assert!(no.reason.contains("no node fits"), "{}", no.reason);
}

#[test]
fn a_heartbeat_keeps_allocations_when_devices_are_re_reported() {
    let mut s = two_node_fleet(Strategy::BinPack);
    place(&mut s, "a", &with_memory(gpus(1.0), 20_000)).unwrap();
    place(&mut s, "b", &with_memory(gpus(1.0), 20_000)).unwrap();
    // Capabilities arrive again (same devices): the allocations must survive.
    s.upsert_node(node(
        "gpu",
        vec![
            gpu("gpu", 0, 24_000, 24_000, "8.6"),
            gpu("gpu", 1, 24_000, 24_000, "8.6"),
        ],
    ));
    assert!(place(&mut s, "c", &gpus(0.1)).is_err());
}

/// A fleet of many nodes of mixed kinds: every request lands on a node that satisfies it.
#[test]
fn requirements_matrix_over_a_thousand_nodes() {
    let mut s = Scheduler::default();
    for i in 0..1000u32 {
        let id = format!("n{i}");
        let devices = match i % 4 {
            0 => vec![],
            1 => (0..4).map(|d| gpu(&id, d, 24_000, 24_000, "8.6")).collect(),
            2 => (0..8).map(|d| gpu(&id, d, 80_000, 80_000, "9.0")).collect(),
            _ => vec![gpu(&id, 0, 16_000, 16_000, "7.5")],
        };
        let mut report = node(&id, devices);
        report.labels.insert("rack".into(), format!("r{}", i % 10));
        s.upsert_node(report);
    }
    let kind = |id: &str| id[1..].parse::<u32>().unwrap() % 4;
    let mut req = with_memory(gpus(1.0), 40_000);
    for t in 0..100 {
        let p = place(&mut s, &format!("h{t}"), &req).unwrap();
        assert_eq!(kind(&p.node_id), 2, "only the 80 GB nodes have 40 GB");
    }
    req = gpus(4.0);
    req.min_compute_capability = Some(cc("8.0"));
    req.labels.insert("rack".into(), "r3".into());
    let p = place(&mut s, "four", &req).unwrap();
    assert!(matches!(kind(&p.node_id), 1 | 2));
    assert_eq!(p.node_id[1..].parse::<u32>().unwrap() % 10, 3);
    let cpu = place(&mut s, "cpu", &Requirements::default()).unwrap();
    assert_eq!(kind(&cpu.node_id), 0);
    let old = place(&mut s, "old", &with_memory(gpus(0.5), 8_000)).unwrap();
    assert!(kind(&old.node_id) != 0);
    let none = place(&mut s, "none", &gpus(16.0)).unwrap_err();
    assert_eq!(none.by_cause.values().sum::<usize>(), 1000);
}

/// The test's own view of a device: total, last reported free, and its allocations
/// (task, share, MiB, confirmed by a heartbeat).
type LedgerDevice = (u64, u64, Vec<(String, u32, u64, bool)>);

/// xorshift64*: deterministic random numbers for the property test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Property: whatever the fleet and the order of placements, releases and heartbeats, no placement
/// takes a device whose free memory (as last reported, less what is promised and not yet seen)
/// is below the request, shares on a device never exceed one GPU, an exclusive device is never
/// shared, and the requests on a device never exceed its memory. Checked against an independent
/// ledger kept by the test, over 200 seeded random runs.
#[test]
fn property_no_placement_exceeds_free_memory_or_share() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let strategy = if seed % 2 == 0 {
            Strategy::BinPack
        } else {
            Strategy::Spread
        };
        let mut s = Scheduler::new(strategy).with_candidate_limit(1 + rng.below(8) as usize);
        let node_count = 1 + rng.below(12);
        // Ledger: per device uuid, (total, reported free, allocations (task, share, mb, confirmed)).
        let mut ledger: HashMap<String, LedgerDevice> = HashMap::new();
        let mut devices_of: HashMap<String, Vec<String>> = HashMap::new();
        for n in 0..node_count {
            let id = format!("n{n}");
            let devices: Vec<DeviceReport> = (0..rng.below(5))
                .map(|d| {
                    let total = [16_000, 24_000, 40_000, 80_000][rng.below(4) as usize];
                    let free = total - rng.below(total / 2);
                    gpu(
                        &id,
                        d as u32,
                        total,
                        free,
                        ["7.5", "8.0", "9.0"][rng.below(3) as usize],
                    )
                })
                .collect();
            for d in &devices {
                ledger.insert(
                    d.uuid.clone(),
                    (d.memory_total_mb, d.memory_free_mb, vec![]),
                );
            }
            devices_of.insert(id.clone(), devices.iter().map(|d| d.uuid.clone()).collect());
            s.upsert_node(node(&id, devices));
        }
        let mut live: Vec<String> = Vec::new();
        for step in 0..300u64 {
            match rng.below(10) {
                0..=5 => {
                    let task = format!("t{step}");
                    let gpu_milli = [0, 100, 250, 500, 1000, 2000][rng.below(6) as usize];
                    let req = Requirements {
                        gpu_milli,
                        gpu_memory_mb: if gpu_milli > 0 { rng.below(30_000) } else { 0 },
                        ..Default::default()
                    };
                    let Ok(p) = s.place(&task, &req, step as i64).unwrap() else {
                        continue;
                    };
                    for uuid in &p.device_uuids {
                        let (total, free, allocs) = ledger.get_mut(uuid).unwrap();
                        let unconfirmed: u64 = allocs.iter().filter(|a| !a.3).map(|a| a.2).sum();
                        let requested: u64 = allocs.iter().map(|a| a.2).sum();
                        assert!(
                            free.saturating_sub(unconfirmed) >= req.gpu_memory_mb,
                            "seed {seed}: {task} wants {} MiB on {uuid}: free {free}, promised {unconfirmed}",
                            req.gpu_memory_mb
                        );
                        assert!(
                            requested + req.gpu_memory_mb <= *total,
                            "seed {seed}: over total"
                        );
                        let shares: u32 = allocs.iter().map(|a| a.1).sum();
                        assert!(
                            shares + p.share_milli <= 1000,
                            "seed {seed}: over one GPU on {uuid}"
                        );
                        assert!(
                            !allocs.iter().any(|a| a.1 == 1000) || p.share_milli == 0,
                            "seed {seed}: shared an exclusive device"
                        );
                        allocs.push((task.clone(), p.share_milli, p.memory_mb, false));
                    }
                    live.push(task);
                }
                6 | 7 if !live.is_empty() => {
                    let task = live.swap_remove(rng.below(live.len() as u64) as usize);
                    assert!(s.release(&task));
                    for (_, _, allocs) in ledger.values_mut() {
                        allocs.retain(|a| a.0 != task);
                    }
                }
                _ => {
                    // A heartbeat: free memory moves, and some placed tasks are confirmed.
                    let id = format!("n{}", rng.below(node_count));
                    let mut free = Vec::new();
                    let mut running = Vec::new();
                    for uuid in &devices_of[&id] {
                        let (total, reported, allocs) = ledger.get_mut(uuid).unwrap();
                        let used_by_tasks: u64 = allocs.iter().map(|a| a.2).sum();
                        let other = rng.below(*total / 4);
                        *reported = total.saturating_sub(used_by_tasks + other);
                        free.push((uuid.clone(), *reported));
                        for a in allocs.iter_mut() {
                            a.3 = true;
                            running.push(a.0.clone());
                        }
                    }
                    s.observe_heartbeat(
                        &id,
                        free.iter().map(|(u, f)| (u.as_str(), *f)),
                        &running,
                        0,
                    );
                }
            }
            s.check_invariants()
                .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
        }
    }
}

#[test]
fn a_hold_taken_back_after_a_restart_keeps_its_devices_from_new_work() {
    let mut s = Scheduler::default();
    s.upsert_node(node(
        "n",
        vec![
            gpu("n", 0, 24_000, 24_000, "8.0"),
            gpu("n", 1, 24_000, 24_000, "8.0"),
        ],
    ));
    let devices = vec!["GPU-n-1".to_string()];
    // Unknown node, unknown device, nothing to hold: nothing held.
    assert!(!s.hold("agent", "other", &devices, 1000, 0, 0));
    assert!(!s.hold("agent", "n", &["GPU-x".to_string()], 1000, 0, 0));
    assert!(!s.hold("agent", "n", &[], 1000, 0, 0));
    assert!(s.hold("agent", "n", &devices, 1000, 0, 0));
    assert!(!s.hold("agent", "n", &devices, 1000, 0, 0), "held twice");
    s.check_invariants().unwrap();
    // The held device is taken: one whole GPU is left, not two.
    let first = place(&mut s, "t1", &gpus(1.0)).unwrap();
    assert_eq!(first.device_uuids, vec!["GPU-n-0".to_string()]);
    assert!(place(&mut s, "t2", &gpus(1.0)).is_err());
    // Confirmed: a heartbeat that lists it keeps it, and a release frees the device.
    s.observe_heartbeat("n", [], &["agent".into(), "t1".into()], 10);
    assert!(s.vanished(100_000, 5_000, 60_000).is_empty());
    assert!(s.release("agent"));
    place(&mut s, "t2", &gpus(1.0)).unwrap();
    s.check_invariants().unwrap();
}
