//! On-disk cache of compiled components, keyed by the component's sha256 and the engine's
//! compatibility hash, so a node compiles each tool once and a changed engine (new wasmtime,
//! different settings) recompiles instead of loading stale code.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache.
    Hit,
    /// Compiled now (and stored when the cache is writable).
    Compiled,
}

impl CompileCache {
    /// A cache in `dir` (created, owner-only, on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, engine: &Engine, digest: &str) -> PathBuf {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir
            .join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
    }

    /// Loads the compiled form of the component with `digest`, if cached and still valid for
    /// this engine. A stale or damaged entry is removed.
    pub fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.entry(engine, digest);
        if !path.is_file() {
            return None;
        }
        // SAFETY: `deserialize_file` trusts the file to be wasmtime's own output and maps it
        // (like an executable: it must not be changed in place while loaded). Entries are
        // written only by `store` below, into a folder only the node's user can write, through
        // a temporary file renamed into place, so a reader never sees a partial entry; wasmtime
        // also checks the header and the engine's settings before using the code.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &path) };
        match loaded {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "dropping a compiled component the engine refuses");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `component` under `digest`. Failures are logged, not returned: the cache only saves
    /// time.
    pub fn store(&self, engine: &Engine, digest: &str, component: &Component) {
        let path = self.entry(engine, digest);
        if let Err(err) = self.write_entry(&path, component) {
            tracing::warn!(path = %path.display(), error = %err, "cannot cache a compiled component");
        }
    }

    fn write_entry(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        create_private_dir(&self.dir)?;
        let bytes = component
            .serialize()
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|err| err.error)?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
