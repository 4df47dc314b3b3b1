//! Directories and files that hold secrets or what unlocks them (keys, JWTs, the hub's database
//! with token proof keys): owner-only on Unix — 0700 for directories, 0600 for files — whether
//! they are created now or were there already with wider modes. Files are written whole
//! ([`write_atomically`]): into a fresh temp file that cannot be a symlink planted beforehand,
//! then renamed over the target, so a link left in the directory is replaced, never followed.

use std::io;
use std::path::Path;

/// Creates `dir` (and its parents) if missing, and makes `dir` itself owner-only.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

/// Creates `file` empty if missing (owner-only from the start), else makes it owner-only.
pub fn ensure_private_file(file: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(file)?;
    set_mode(file, 0o600)
}

/// Writes `bytes` to `path` atomically: a new temp file beside it (created exclusively with
/// `mode`, so a symlink or file planted under its name is refused, not followed), synced, then
/// renamed over `path` (replacing a symlink there rather than writing through it). Temp names
/// are unique per process and call, so concurrent writers do not share one.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

/// Makes `file` owner-only if it exists (a database's `-wal` and `-shm` companions).
pub fn restrict_if_present(file: &Path) -> io::Result<()> {
    match std::fs::metadata(file) {
        Ok(_) => set_mode(file, 0o600),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn secrets_replace_a_planted_symlink_instead_of_writing_through_it() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let key = root.path().join("node.key");
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        write_atomically(&key, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        let meta = std::fs::symlink_metadata(&key).unwrap();
        assert!(meta.file_type().is_file(), "the link itself was replaced");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temp file left: {names:?}");
    }

    #[test]
    fn new_and_existing_paths_become_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("data");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("outpost.db");
        ensure_private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);

        // Already there with wide modes (an older install): narrowed, contents kept.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&file, b"kept").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        ensure_private_dir(&dir).unwrap();
        ensure_private_file(&file).unwrap();
        assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));
        assert_eq!(std::fs::read(&file).unwrap(), b"kept");

        let wal = dir.join("outpost.db-wal");
        restrict_if_present(&wal).unwrap();
        assert!(!wal.exists(), "nothing is created for an absent companion");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        restrict_if_present(&wal).unwrap();
        assert_eq!(mode(&wal), 0o600);
    }
}
