//! Builds the guest tools (`guests/tools`, their own workspace) for `wasm32-wasip2` in release
//! mode, into `<target>/wasm-guests`, and passes that folder to the library as
//! `OUTPOST_GUESTS_DIR`. Tests and benches name guests by path; none of them spells a build
//! command. Cargo's own fingerprinting makes a rebuild with nothing changed take well under a
//! second.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Environment that describes the outer build and must not leak into the guests' build.
const OUTER_BUILD_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
];

fn target_root(out_dir: &Path) -> PathBuf {
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<package>-<hash>/out.
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.join("target"))
}

fn main() -> ExitCode {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let tools = manifest_dir.join("tools");
    let wit = manifest_dir.join("..").join("wit");
    println!("cargo:rerun-if-changed={}", tools.display());
    println!("cargo:rerun-if-changed={}", wit.display());

    let guest_target = target_root(&out_dir).join("wasm-guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&tools)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(tools.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&guest_target);
    for key in OUTER_BUILD_ENV {
        command.env_remove(key);
    }
    match command.output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            eprintln!(
                "building the guest tools in {} failed ({}); if the error says the wasm32-wasip2 \
                 target is missing, run `rustup target add wasm32-wasip2`",
                tools.display(),
                output.status
            );
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("cannot run cargo to build the guest tools: {err}");
            return ExitCode::FAILURE;
        }
    }
    let dir = guest_target.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=OUTPOST_GUESTS_DIR={}", dir.display());
    ExitCode::SUCCESS
}
