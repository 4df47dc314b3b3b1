//! `outpost`: hub, node and operator command line in one binary; everything lives in the
//! `outpost_cli` library.

fn main() -> std::process::ExitCode {
    // A node starts native programs through this same binary (before any runtime or thread).
    if let Some(code) = outpost_runner::run_if_launcher() {
        std::process::exit(code);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().collect();
    let code = runtime.block_on(outpost_cli::main_with_args(args));
    std::process::ExitCode::from(code)
}
