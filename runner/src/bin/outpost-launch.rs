//! `outpost-launch`: the launcher alone (the `outpost` and `outpost-node` binaries contain it
//! too). Nodes point `[sandbox] launcher` at it where the node runs from a library.

fn main() {
    let code = outpost_runner::run_if_launcher().unwrap_or_else(|| {
        eprintln!(
            "outpost-launch starts native processes for an Outpost node; it is run by the node, \
             as `outpost-launch {} supervise|exec|probe`",
            outpost_runner::spec::LAUNCHER_ARG
        );
        2
    });
    std::process::exit(code);
}
