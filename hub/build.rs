//! Build script: compiles the PostgreSQL store test in only when `OUTPOST_TEST_DATABASE_URL`
//! names a database, so without one the test is reported as ignored instead of passing.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(outpost_postgres_tests)");
    println!("cargo::rerun-if-env-changed=OUTPOST_TEST_DATABASE_URL");
    if std::env::var_os("OUTPOST_TEST_DATABASE_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=outpost_postgres_tests");
    }
}
