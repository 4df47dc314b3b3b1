//! The launcher for nodes the end-to-end tests run in-process (their executable is the test
//! binary, which is no launcher): `[sandbox] launcher` points here.

fn main() {
    std::process::exit(outpost_runner::run_if_launcher().unwrap_or(2));
}
