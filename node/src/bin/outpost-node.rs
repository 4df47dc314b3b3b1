//! `outpost-node`: the lean node binary (no UI, no database).

use std::path::PathBuf;

use clap::Parser;

/// Runs an Outpost node: joins the hub on first start, then keeps a QUIC session to it.
#[derive(Debug, Parser)]
#[command(name = "outpost-node", version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (identity, state).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
}

fn main() -> std::process::ExitCode {
    // The node starts native programs through this same binary (before any runtime or thread).
    if let Some(code) = outpost_runner::run_if_launcher() {
        std::process::exit(code);
    }
    let args = Args::parse();
    outpost_node::init_tracing(args.log_json, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = outpost_config::Config::load(args.config.as_deref(), std::env::vars())?;
    config.server.role = outpost_config::ServerRole::Node;
    if let Some(dir) = args.data_dir {
        config.server.data_dir = Some(dir);
    }
    let node = outpost_node::Node::start(config).await?;
    tokio::signal::ctrl_c().await?;
    node.shutdown().await;
    Ok(())
}
