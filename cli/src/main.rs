//! `outpost`: hub, node and operator command line in one binary; everything lives in the
//! `outpost_cli` library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let code = outpost_cli::main_with_args(args).await;
    std::process::ExitCode::from(code)
}
