//! `outpost`: hub, CLI and node mode in one binary. Everything lives in the library's `cli` module.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let code = outpost_hub::cli::main_with_args(args).await;
    std::process::ExitCode::from(code)
}
