//! Directories and files that hold secrets or what unlocks them (keys, JWTs, the hub's database
//! with token proof keys): owner-only on Unix — 0700 for directories, 0600 for files — whether
//! they are created now or were there already with wider modes.

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
