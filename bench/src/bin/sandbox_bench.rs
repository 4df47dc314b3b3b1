//! Sandbox benchmarks (release builds only; numbers go to bench/RESULTS.md).
//!
//! - `warm`: a fresh, fully limited instance from `InstancePre` + `invoke` of `echo`, per call;
//!   against spawning a native process that does the same job (`/bin/echo`), in the same run.
//! - `cold`: loading a component with no cache (compile) and from the on-disk cache, for the
//!   ~2 MB `bulky` guest and the small `echo`.
//! - `meters`: the CPU-bound `busy` guest under fuel + epoch, each alone, and neither.
//!
//! Every figure is the median of several runs; percentiles are over all calls of a run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use outpost_sandbox::{Fuel, ResolvedPolicy, Sandbox, SandboxConfig};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Outpost sandbox benchmarks")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5, global = true)]
    runs: usize,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Warm calls of `echo` against a native process spawn.
    Warm {
        /// Calls per run.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Native spawns per run.
        #[arg(long, default_value_t = 300)]
        spawns: usize,
    },
    /// Compile and cache-load times.
    Cold,
    /// Loads of `bulky` from a warm on-disk cache into one running sandbox, each followed by its
    /// first call (the path a node takes for a tool it compiled before); for profiling.
    Cached {
        /// Loads per run.
        #[arg(long, default_value_t = 200)]
        loads: usize,
    },
    /// Fuel and epoch overhead on a CPU-bound guest.
    Meters {
        /// Rounds of the `busy` guest per call.
        #[arg(long, default_value_t = 50_000_000)]
        rounds: u64,
    },
    /// All of the above.
    All,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn wide_open() -> ResolvedPolicy {
    let mut policy = ResolvedPolicy::default();
    policy.limits.fuel = Fuel::Limited(10_000_000_000);
    policy.limits.timeout = Duration::from_secs(600);
    policy
}

async fn warm(runs: usize, calls: usize, spawns: usize) -> anyhow::Result<serde_json::Value> {
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let tool = sandbox.load_file(&outpost_guests::echo(), ResolvedPolicy::default())?;
    let input = "{\"hello\":\"outpost\"}";
    let (mut p50s, mut p90s, mut p99s, mut native) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        for _ in 0..calls / 10 {
            tool.invoke(input).await.result?;
        }
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            let report = tool.invoke(input).await;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
            report.result?;
        }
        samples.sort_by(f64::total_cmp);
        p50s.push(percentile(&samples, 0.5));
        p90s.push(percentile(&samples, 0.9));
        p99s.push(percentile(&samples, 0.99));

        let mut spawn_samples = Vec::with_capacity(spawns);
        for _ in 0..spawns {
            let started = Instant::now();
            let output = std::process::Command::new("/bin/echo")
                .arg(input)
                .output()?;
            spawn_samples.push(started.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(output.status.success(), "/bin/echo failed");
        }
        spawn_samples.sort_by(f64::total_cmp);
        native.push(percentile(&spawn_samples, 0.5));
    }
    let p50 = median(&mut p50s);
    let spawn = median(&mut native);
    Ok(json!({
        "mode": "warm",
        "calls_per_run": calls,
        "runs": runs,
        "fresh_instance_call_us": {"p50": p50, "p90": median(&mut p90s), "p99": median(&mut p99s)},
        "native_spawn_us_p50": spawn,
        "speedup_vs_native_spawn": spawn / p50,
    }))
}

fn load_ms(sandbox: &Sandbox, wasm: &[u8]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let tool = sandbox.load(wasm, wide_open())?;
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    drop(tool);
    Ok(elapsed)
}

fn cold(runs: usize) -> anyhow::Result<serde_json::Value> {
    let mut rows = Vec::new();
    for (name, path) in [
        ("bulky", outpost_guests::bulky()),
        ("echo", outpost_guests::echo()),
    ] {
        let wasm = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (mut compile, mut cached) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let dir = tempfile::tempdir()?;
            let uncached = Sandbox::new(SandboxConfig::default())?;
            compile.push(load_ms(&uncached, &wasm)?);
            let with_cache = || {
                Sandbox::new(SandboxConfig {
                    cache_dir: Some(dir.path().to_path_buf()),
                    ..SandboxConfig::default()
                })
            };
            load_ms(&with_cache()?, &wasm)?; // fills the cache
            let fresh = with_cache()?;
            cached.push(load_ms(&fresh, &wasm)?);
        }
        rows.push(json!({
            "component": name,
            "bytes": wasm.len(),
            "compile_ms_median": median(&mut compile),
            "cache_load_ms_median": median(&mut cached),
        }));
    }
    Ok(json!({"mode": "cold", "runs": runs, "components": rows}))
}

async fn cached(runs: usize, loads: usize) -> anyhow::Result<serde_json::Value> {
    let wasm = std::fs::read(outpost_guests::bulky())?;
    let dir = tempfile::tempdir()?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..SandboxConfig::default()
    })?;
    let digest = sandbox.load(&wasm, wide_open())?.digest().to_string(); // fills the cache
    let path = outpost_guests::bulky();
    let (mut from_bytes, mut from_store) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (mut bytes_run, mut store_run) = (Vec::with_capacity(loads), Vec::with_capacity(loads));
        for _ in 0..loads {
            // `outpost tool run`: the bytes are in hand and must be hashed to find the entry.
            let started = Instant::now();
            let tool = sandbox.load(&wasm, wide_open())?;
            anyhow::ensure!(tool.from_cache(), "the cache missed");
            tool.invoke("7").await.result?;
            bytes_run.push(started.elapsed().as_secs_f64() * 1e3);
            // A node's task: the tool store names the file by its (checked) digest.
            let started = Instant::now();
            let tool = sandbox.load_stored(&path, &digest, wide_open())?;
            anyhow::ensure!(tool.from_cache(), "the cache missed");
            tool.invoke("7").await.result?;
            store_run.push(started.elapsed().as_secs_f64() * 1e3);
        }
        from_bytes.push(median(&mut bytes_run));
        from_store.push(median(&mut store_run));
    }
    Ok(json!({
        "mode": "cached",
        "component": "bulky",
        "bytes": wasm.len(),
        "loads_per_run": loads,
        "load_by_digest_and_first_call_ms_median": median(&mut from_store),
        "load_from_bytes_and_first_call_ms_median": median(&mut from_bytes),
    }))
}

async fn meters(runs: usize, rounds: u64) -> anyhow::Result<serde_json::Value> {
    let wasm = std::fs::read(outpost_guests::busy())?;
    let mut rows = Vec::new();
    let mut baseline = f64::NAN;
    for (name, fuel, epoch) in [
        ("neither", false, false),
        ("fuel+epoch", true, true),
        ("fuel", true, false),
        ("epoch", false, true),
    ] {
        let sandbox = Sandbox::new(SandboxConfig {
            fuel_metering: fuel,
            epoch_interruption: epoch,
            ..SandboxConfig::default()
        })?;
        let tool = sandbox.load(&wasm, wide_open())?;
        let input = rounds.to_string();
        let mut times = Vec::new();
        let mut checksum = String::new();
        for _ in 0..runs {
            let started = Instant::now();
            let report = tool.invoke(&input).await;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            checksum = report.result?;
        }
        let ms = median(&mut times);
        if name == "neither" {
            baseline = ms;
        }
        rows.push(json!({"meters": name, "ms_median": ms, "vs_neither": ms / baseline, "checksum": checksum}));
    }
    Ok(json!({"mode": "meters", "rounds": rounds, "runs": runs, "results": rows}))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        Path::new(&outpost_guests::echo()).exists(),
        "guest tools are not built"
    );
    let results = match args.mode {
        Mode::Warm { calls, spawns } => vec![warm(args.runs, calls, spawns).await?],
        Mode::Cold => vec![cold(args.runs)?],
        Mode::Cached { loads } => vec![cached(args.runs, loads).await?],
        Mode::Meters { rounds } => vec![meters(args.runs, rounds).await?],
        Mode::All => vec![
            warm(args.runs, 20_000, 300).await?,
            cold(args.runs)?,
            meters(args.runs, 50_000_000).await?,
        ],
    };
    for result in results {
        println!("{result:#}");
    }
    Ok(())
}
