//! A native process's working directory: resolved (symlinks and `..` followed) and required to
//! lie inside one of the node's `safe_paths`, by whole path components (`/data2` is not inside
//! `/data`), and outside the directories that hold the node's own state.

use std::path::{Path, PathBuf};

/// Why a workdir was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkdirError {
    /// It does not exist (or cannot be resolved).
    #[error("workdir {path}: cannot resolve it on this node: {reason}")]
    Unresolvable {
        /// The workdir as asked for.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// It is not a directory.
    #[error("workdir {path}: {real} is not a directory")]
    NotADirectory {
        /// The workdir as asked for.
        path: String,
        /// Where it resolved to.
        real: String,
    },
    /// It resolves outside every safe path.
    #[error("workdir {path}: {real} is outside the node's safe_paths [{safe}]")]
    OutsideSafePaths {
        /// The workdir as asked for.
        path: String,
        /// Where it resolved to.
        real: String,
        /// The node's safe paths.
        safe: String,
    },
    /// It overlaps the node's own state.
    #[error("workdir {path}: {real} overlaps {state}, which holds the node's own state")]
    OverlapsNodeState {
        /// The workdir as asked for.
        path: String,
        /// Where it resolved to.
        real: String,
        /// The protected directory.
        state: String,
    },
    /// It is relative.
    #[error("workdir {path}: must be an absolute path")]
    Relative {
        /// The workdir as asked for.
        path: String,
    },
}

/// Resolves `workdir` and checks it against `safe_paths` and `protected` (the node's data and
/// cert dirs). Returns the resolved path, which is what the process is started in.
pub fn resolve(
    workdir: &Path,
    safe_paths: &[PathBuf],
    protected: &[PathBuf],
) -> Result<PathBuf, WorkdirError> {
    let path = workdir.display().to_string();
    if !workdir.is_absolute() {
        return Err(WorkdirError::Relative { path });
    }
    let real = std::fs::canonicalize(workdir).map_err(|err| WorkdirError::Unresolvable {
        path: path.clone(),
        reason: err.to_string(),
    })?;
    if !real.is_dir() {
        return Err(WorkdirError::NotADirectory {
            path,
            real: real.display().to_string(),
        });
    }
    let safe: Vec<PathBuf> = safe_paths
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    if !safe.iter().any(|s| real.starts_with(s)) {
        let listed: Vec<String> = safe_paths.iter().map(|p| p.display().to_string()).collect();
        return Err(WorkdirError::OutsideSafePaths {
            path,
            real: real.display().to_string(),
            safe: listed.join(", "),
        });
    }
    for state in protected {
        let state_real = std::fs::canonicalize(state).unwrap_or_else(|_| state.clone());
        if real.starts_with(&state_real) || state_real.starts_with(&real) {
            return Err(WorkdirError::OverlapsNodeState {
                path,
                real: real.display().to_string(),
                state: state.display().to_string(),
            });
        }
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workdir_must_resolve_inside_a_safe_path() {
        let root = tempfile::tempdir().unwrap();
        let safe = root.path().join("data");
        let inside = safe.join("project");
        let sibling = root.path().join("data2");
        let state = safe.join("node-state");
        for dir in [&inside, &sibling, &state] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::os::unix::fs::symlink(&sibling, inside.join("escape")).unwrap();
        let safe_paths = [safe.clone()];
        let protected = [state.clone()];

        assert_eq!(
            resolve(&inside, &safe_paths, &protected).unwrap(),
            std::fs::canonicalize(&inside).unwrap()
        );
        // A sibling sharing the prefix is not inside.
        assert!(matches!(
            resolve(&sibling, &safe_paths, &protected),
            Err(WorkdirError::OutsideSafePaths { .. })
        ));
        // A symlink out, and `..` out, are followed before the check.
        assert!(matches!(
            resolve(&inside.join("escape"), &safe_paths, &protected),
            Err(WorkdirError::OutsideSafePaths { .. })
        ));
        assert!(matches!(
            resolve(&inside.join("../../data2"), &safe_paths, &protected),
            Err(WorkdirError::OutsideSafePaths { .. })
        ));
        // The node's own state, a file, a missing path and a relative path are refused.
        assert!(matches!(
            resolve(&state, &safe_paths, &protected),
            Err(WorkdirError::OverlapsNodeState { .. })
        ));
        std::fs::write(inside.join("file"), "x").unwrap();
        assert!(matches!(
            resolve(&inside.join("file"), &safe_paths, &protected),
            Err(WorkdirError::NotADirectory { .. })
        ));
        let err = resolve(&inside.join("missing"), &safe_paths, &protected).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(matches!(
            resolve(Path::new("data/project"), &safe_paths, &protected),
            Err(WorkdirError::Relative { .. })
        ));
    }
}
