//! Generates several thousand distinct functions so the component is about 2 MB: the subject of
//! the cold-compile benchmark.

use std::fmt::Write as _;

const FUNCTIONS: usize = 16000;

fn main() {
    let mut src = String::new();
    for i in 0..FUNCTIONS {
        let (a, b, c) = (i * 2654435761 % 1000003, i * 40503 % 65521, i % 61 + 1);
        let _ = writeln!(
            src,
            "#[inline(never)] fn f{i}(x: u64) -> u64 {{ let mut v = x ^ {a}; \
             for r in 0..(x % 5 + 3) {{ v = v.wrapping_mul({b} | 1).rotate_left({c}) ^ r; \
             if v % 3 == {m} {{ v = v.wrapping_add({a}).wrapping_sub(r * {b}); }} else {{ v ^= v >> {d}; }} }} \
             v.wrapping_add({i}) }}",
            m = i % 3,
            d = i % 29 + 3,
        );
    }
    let _ = writeln!(src, "static FUNCTIONS: [fn(u64) -> u64; {FUNCTIONS}] = [");
    for i in 0..FUNCTIONS {
        let _ = write!(src, "f{i},");
    }
    let _ = writeln!(src, "];");
    let out =
        std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("generated.rs");
    if let Err(err) = std::fs::write(&out, src) {
        eprintln!("cannot write {}: {err}", out.display());
        std::process::exit(1);
    }
}
