//! Placement benchmarks for the hub's scheduler (pure logic, one thread).
//!
//! - `throughput`: a fleet of simulated nodes with mixed GPUs; tasks of mixed requirements are
//!   placed and released so the fleet stays about half full; reports placements per second and
//!   the p50/p99 latency of one placement, plus the cost of a request that fits nowhere.
//! - `churn`: nodes' free memory moves (other processes), nodes die and come back, heartbeats lag
//!   behind placements; every placement is checked against the ground truth (the device's real
//!   free memory at that moment). Reports placements onto a device with too little free memory
//!   (target 0) and GPU share utilisation against the best any packing could reach with the
//!   same demand (all live and queued GPU work, capped by the fleet's GPUs).
//!
//! `cargo run --release -p outpost-bench --bin placement-bench -- [throughput|churn|all]`

use outpost_bench::{median, percentile};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use outpost_hub::work::scheduler::{
    ComputeCapability, DeviceReport, NodeReport, Requirements, Scheduler, Strategy,
};

#[derive(Debug, Parser)]
struct Args {
    /// throughput, churn or all.
    #[arg(default_value = "all")]
    mode: String,
    /// Simulated nodes.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Placements per run.
    #[arg(long, default_value_t = 200_000)]
    placements: usize,
    /// Runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Churn steps.
    #[arg(long, default_value_t = 200_000)]
    steps: usize,
}

/// xorshift64*.
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

/// (devices, memory MiB, compute capability) per node kind.
const KINDS: [(u32, u64, (u32, u32)); 4] = [
    (0, 0, (0, 0)),
    (4, 24_576, (8, 6)),
    (8, 81_920, (9, 0)),
    (1, 16_384, (7, 5)),
];

fn fleet(nodes: usize) -> Vec<NodeReport> {
    (0..nodes)
        .map(|i| {
            let (count, memory, (major, minor)) = KINDS[i % KINDS.len()];
            let id = format!("node-{i:05}");
            NodeReport {
                id: id.clone(),
                accepting: Ok(()),
                gpu_fence: None,
                labels: HashMap::new(),
                capabilities: ["wasm".to_string()].into_iter().collect(),
                devices: (0..count)
                    .map(|d| DeviceReport {
                        index: d,
                        uuid: format!("{id}-gpu{d}"),
                        memory_total_mb: memory,
                        memory_free_mb: memory,
                        compute_capability: ComputeCapability { major, minor },
                        parent_uuid: String::new(),
                        mig_enabled: false,
                    })
                    .collect(),
            }
        })
        .collect()
}

fn request(rng: &mut Rng) -> Requirements {
    match rng.below(10) {
        0..=2 => Requirements::default(),
        3..=5 => Requirements {
            gpu_milli: [250, 500][rng.below(2) as usize],
            gpu_memory_mb: 2_048 + rng.below(6_144),
            ..Default::default()
        },
        6..=8 => Requirements {
            gpu_milli: 1000,
            gpu_memory_mb: 4_096 + rng.below(28_672),
            ..Default::default()
        },
        _ => Requirements {
            gpu_milli: 2000,
            gpu_memory_mb: 16_384,
            min_compute_capability: Some(ComputeCapability { major: 8, minor: 0 }),
            ..Default::default()
        },
    }
}

fn throughput(args: &Args) -> anyhow::Result<()> {
    let reports = fleet(args.nodes);
    let gpus: u64 = reports.iter().map(|r| r.devices.len() as u64).sum();
    println!(
        "throughput: {} nodes ({} GPUs), {} placements per run, {} runs",
        args.nodes, gpus, args.placements, args.runs
    );
    let mut rates = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut misses = Vec::new();
    for run in 0..args.runs {
        let mut scheduler = Scheduler::new(Strategy::BinPack);
        for r in &reports {
            scheduler.upsert_node(r.clone());
        }
        let mut rng = Rng(0x5eed_0000 + run as u64);
        let requests: Vec<Requirements> = (0..args.placements).map(|_| request(&mut rng)).collect();
        let mut live: VecDeque<String> = VecDeque::new();
        // Keep about half the GPUs busy: release the oldest beyond that.
        let keep = (gpus as usize / 2).max(1);
        let mut latencies = Vec::with_capacity(args.placements);
        let mut no_fit = 0u64;
        let start = Instant::now();
        for (i, req) in requests.iter().enumerate() {
            let id = format!("t{i}");
            let t0 = Instant::now();
            let placed = scheduler.place(&id, req, i as i64);
            latencies.push(t0.elapsed().as_nanos() as u64);
            match placed {
                Ok(Ok(_)) => live.push_back(id),
                Ok(Err(_)) => no_fit += 1,
                Err(e) => anyhow::bail!("{e}"),
            }
            while live.len() > keep {
                if let Some(old) = live.pop_front() {
                    scheduler.release(&old);
                }
            }
        }
        let elapsed = start.elapsed();
        latencies.sort_unstable();
        let rate = args.placements as f64 / elapsed.as_secs_f64();
        rates.push(rate);
        p50s.push(percentile(&latencies, 0.5) as f64);
        p99s.push(percentile(&latencies, 0.99) as f64);
        misses.push(no_fit as f64);
        println!(
            "  run {run}: {rate:.0} placements/s (incl. releases), p50 {} ns, p99 {} ns, {no_fit} did not fit",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
    }
    // A request that fits nowhere scans every node and explains why.
    let mut scheduler = Scheduler::new(Strategy::BinPack);
    for r in &reports {
        scheduler.upsert_node(r.clone());
    }
    let impossible = Requirements {
        gpu_milli: 16_000,
        ..Default::default()
    };
    let mut no_fit_ns = Vec::new();
    for i in 0..50 {
        let t0 = Instant::now();
        let result = scheduler.place(&format!("x{i}"), &impossible, 0);
        no_fit_ns.push(t0.elapsed().as_nanos() as f64);
        assert!(matches!(result, Ok(Err(_))));
    }
    println!(
        "throughput median: {:.0} placements/s, p50 {:.0} ns, p99 {:.0} ns; no-fit with reason: {:.0} µs median",
        median(rates),
        median(p50s),
        median(p99s),
        median(no_fit_ns) / 1000.0
    );
    Ok(())
}

/// The device truth the churn simulation keeps beside the scheduler.
struct TrueDevice {
    total: u64,
    other: u64,
    tasks: u64,
    shares: u32,
}

fn churn(args: &Args) -> anyhow::Result<()> {
    let nodes = args.nodes.min(2_000);
    let reports = fleet(nodes);
    let mut scheduler = Scheduler::new(Strategy::BinPack);
    let mut truth: HashMap<String, TrueDevice> = HashMap::new();
    for r in &reports {
        for d in &r.devices {
            truth.insert(
                d.uuid.clone(),
                TrueDevice {
                    total: d.memory_total_mb,
                    other: 0,
                    tasks: 0,
                    shares: 0,
                },
            );
        }
        scheduler.upsert_node(r.clone());
    }
    let total_milli: u64 = truth.len() as u64 * 1000;
    let mut rng = Rng(0xc4u64 << 32 | 7);
    let mut live: HashMap<String, (String, Vec<String>, u32, u64)> = HashMap::new();
    let mut asked: HashMap<String, Requirements> = HashMap::new();
    let mut queue: VecDeque<(String, Requirements)> = VecDeque::new();
    let mut dead: Vec<usize> = Vec::new();
    let (mut placed, mut bad, mut utilisation_sum, mut samples) = (0u64, 0u64, 0f64, 0u64);
    let (mut deaths, mut ffd_sum) = (0u64, 0f64);
    let heartbeat = |scheduler: &mut Scheduler,
                     truth: &HashMap<String, TrueDevice>,
                     live: &HashMap<String, (String, Vec<String>, u32, u64)>,
                     r: &NodeReport| {
        let free: Vec<(String, u64)> = r
            .devices
            .iter()
            .map(|d| {
                let t = &truth[&d.uuid];
                (d.uuid.clone(), t.total.saturating_sub(t.other + t.tasks))
            })
            .collect();
        let running: Vec<String> = live
            .iter()
            .filter(|(_, (node, _, _, _))| node == &r.id)
            .map(|(id, _)| id.clone())
            .collect();
        scheduler.observe_heartbeat(
            &r.id,
            free.iter().map(|(u, f)| (u.as_str(), *f)),
            &running,
            0,
        );
    };
    for step in 0..args.steps {
        // New work arrives.
        queue.push_back((format!("c{step}"), request(&mut rng)));
        // Place what fits, in order (a bounded pass, as the hub's dispatcher does).
        for _ in 0..queue.len().min(8) {
            let Some((id, req)) = queue.pop_front() else {
                break;
            };
            match scheduler.place(&id, &req, step as i64) {
                Ok(Ok(p)) => {
                    placed += 1;
                    for uuid in &p.device_uuids {
                        let t = truth.get_mut(uuid).context("device")?;
                        if t.total.saturating_sub(t.other + t.tasks) < req.gpu_memory_mb {
                            bad += 1;
                        }
                        t.tasks += req.gpu_memory_mb;
                        t.shares += p.share_milli;
                    }
                    live.insert(
                        id.clone(),
                        (p.node_id, p.device_uuids, p.share_milli, req.gpu_memory_mb),
                    );
                    asked.insert(id, req);
                }
                Ok(Err(_)) => queue.push_back((id, req)),
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        // Work finishes.
        if rng.below(10) < 7 && !live.is_empty() {
            let key = live
                .keys()
                .nth(rng.below(live.len() as u64) as usize)
                .cloned();
            if let Some(key) = key
                && let Some((_, devices, share, mb)) = live.remove(&key)
            {
                scheduler.release(&key);
                asked.remove(&key);
                for uuid in devices {
                    let t = truth.get_mut(&uuid).context("device")?;
                    t.tasks -= mb;
                    t.shares -= share;
                }
            }
        }
        // Other processes take and give back memory; the node reports it in its next heartbeat.
        let r = &reports[rng.below(reports.len() as u64) as usize];
        for d in &r.devices {
            let t = truth.get_mut(&d.uuid).context("device")?;
            let room = t.total.saturating_sub(t.tasks);
            t.other = rng.below(room / 8 + 1);
        }
        heartbeat(&mut scheduler, &truth, &live, r);
        // A node dies now and then (its tasks are lost and re-queued); dead nodes come back.
        if rng.below(1000) == 0 {
            let i = rng.below(reports.len() as u64) as usize;
            if !dead.contains(&i) {
                deaths += 1;
                dead.push(i);
                for task in scheduler.remove_node(&reports[i].id) {
                    if let Some((_, devices, share, mb)) = live.remove(&task) {
                        for uuid in devices {
                            let t = truth.get_mut(&uuid).context("device")?;
                            t.tasks -= mb;
                            t.shares -= share;
                        }
                    }
                    let req = asked.remove(&task).unwrap_or_default();
                    queue.push_back((task, req));
                }
            }
        }
        if rng.below(1000) == 0
            && let Some(i) = dead.pop()
        {
            scheduler.upsert_node(reports[i].clone());
            heartbeat(&mut scheduler, &truth, &live, &reports[i]);
        }
        if step % 1000 == 999 {
            let used: u64 = truth.values().map(|t| u64::from(t.shares)).sum();
            utilisation_sum += used as f64 / total_milli as f64;
            // The optimum we compare with: first-fit-decreasing of the same live + queued GPU
            // work with perfect knowledge, capped at the fleet.
            let mut demand: Vec<u32> = live
                .values()
                .map(|(_, d, s, _)| s * d.len() as u32)
                .collect();
            demand.extend(queue.iter().map(|(_, r)| r.gpu_milli));
            let wanted: u64 = demand.iter().map(|&m| u64::from(m)).sum();
            ffd_sum += (wanted.min(total_milli)) as f64 / total_milli as f64;
            samples += 1;
        }
    }
    println!(
        "churn: {nodes} nodes, {} steps, {placed} placements, {deaths} node deaths, queue at end {}",
        args.steps,
        queue.len()
    );
    println!("  placements onto a device with less free memory than requested: {bad}");
    let util = utilisation_sum / samples.max(1) as f64;
    let best = ffd_sum / samples.max(1) as f64;
    println!(
        "  GPU share utilisation: {:.1}% (bound from the same demand with perfect packing: {:.1}%; ratio {:.2})",
        util * 100.0,
        best * 100.0,
        if best > 0.0 { util / best } else { 1.0 }
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.mode.as_str() {
        "throughput" => throughput(&args),
        "churn" => churn(&args),
        "all" => {
            throughput(&args)?;
            churn(&args)
        }
        other => anyhow::bail!("unknown mode {other:?}: use throughput, churn or all"),
    }
}
