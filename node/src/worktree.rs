//! Agent workdirs: an existing directory, a fresh `git worktree` added for the agent, or a
//! worktree the agent takes over.
//!
//! Every path is checked against the node's `safe_paths` before anything is created and again
//! once it exists (symlinks and `..` followed). A worktree is *bound* to one agent by a marker
//! in its git admin directory (`<repo>/.git/worktrees/<name>/outpost-agent`), so a second agent
//! cannot take it and delete removes only what the node made for that agent. Git runs with a
//! cleared environment, hooks off, no prompts and a time limit.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use outpost_runner::workdir::{self, WorkdirError};

/// How long one git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);
/// The marker file in a worktree's git admin directory naming the agent it is bound to.
const MARKER: &str = "outpost-agent";

/// How an agent's workdir comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkdirMode {
    /// The directory must exist inside `safe_paths`.
    UseExisting,
    /// A new worktree of a repository, added for this agent.
    CreateWorktree,
    /// An existing worktree, bound to this agent.
    ReuseWorktree,
}

impl WorkdirMode {
    /// Parses the wire name (empty: `use_existing`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "" | "use_existing" => Ok(Self::UseExisting),
            "create_worktree" => Ok(Self::CreateWorktree),
            "reuse_worktree" => Ok(Self::ReuseWorktree),
            other => Err(format!(
                "workdir_mode {other:?}: use use_existing, create_worktree or reuse_worktree"
            )),
        }
    }
}

/// Why a workdir could not be prepared or removed.
#[derive(Debug, thiserror::Error)]
pub enum WorktreeError {
    /// A path failed the safe-path rules.
    #[error(transparent)]
    Path(#[from] WorkdirError),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The directory is bound to another agent, or holds something else.
    #[error("{0}")]
    Taken(String),
    /// Git refused or failed.
    #[error("git {command}: {message}")]
    Git {
        /// What was run.
        command: String,
        /// Its error output.
        message: String,
    },
}

/// The node's rules for paths.
#[derive(Debug, Clone, Copy)]
pub struct PathRules<'a> {
    /// Where agents may work.
    pub safe_paths: &'a [PathBuf],
    /// The node's own state, never a workdir.
    pub protected: &'a [PathBuf],
}

impl PathRules<'_> {
    fn resolve(&self, path: &Path) -> Result<PathBuf, WorkdirError> {
        workdir::resolve(path, self.safe_paths, self.protected)
    }

    /// Whether directories may be created below `existing` on the way to `asked`: it lies
    /// inside a safe path and inside none of the node's state directories.
    fn may_create_in(&self, existing: &Path, asked: &Path) -> Result<(), WorkdirError> {
        let path = asked.display().to_string();
        let real = std::fs::canonicalize(existing).map_err(|e| WorkdirError::Unresolvable {
            path: path.clone(),
            reason: format!("{}: {e}", existing.display()),
        })?;
        let canonical = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if !self
            .safe_paths
            .iter()
            .any(|safe| real.starts_with(canonical(safe)))
        {
            let listed: Vec<String> = self
                .safe_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(WorkdirError::OutsideSafePaths {
                path,
                real: real.display().to_string(),
                safe: listed.join(", "),
            });
        }
        if let Some(state) = self
            .protected
            .iter()
            .find(|state| real.starts_with(canonical(state)))
        {
            return Err(WorkdirError::OverlapsNodeState {
                path,
                real: real.display().to_string(),
                state: state.display().to_string(),
            });
        }
        Ok(())
    }
}

/// A workdir made ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The workdir, resolved.
    pub workdir: PathBuf,
    /// For a worktree, the repository's git directory (objects, refs, the worktree's admin
    /// dir): the agent may write there too, so it can commit.
    pub git_dir: Option<PathBuf>,
}

/// Makes the workdir ready for `agent_id`.
pub async fn prepare(
    mode: WorkdirMode,
    asked: &Path,
    repo: &str,
    agent_id: &str,
    rules: PathRules<'_>,
) -> Result<Prepared, WorktreeError> {
    let workdir = prepare_dir(mode, asked, repo, agent_id, rules).await?;
    let git_dir = match mode {
        WorkdirMode::UseExisting => None,
        WorkdirMode::CreateWorktree | WorkdirMode::ReuseWorktree => {
            let admin = worktree_admin_dir(&workdir).await?;
            // `<common dir>/worktrees/<name>`, checked in `worktree_admin_dir`.
            let common = admin
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or(admin);
            Some(common)
        }
    };
    Ok(Prepared { workdir, git_dir })
}

async fn prepare_dir(
    mode: WorkdirMode,
    asked: &Path,
    repo: &str,
    agent_id: &str,
    rules: PathRules<'_>,
) -> Result<PathBuf, WorktreeError> {
    match mode {
        WorkdirMode::UseExisting => {
            if !repo.is_empty() {
                return Err(WorktreeError::Invalid(
                    "repo: only create_worktree adds a worktree to a repository".into(),
                ));
            }
            Ok(rules.resolve(asked)?)
        }
        WorkdirMode::ReuseWorktree => {
            let dir = rules.resolve(asked)?;
            let admin = worktree_admin_dir(&dir).await?;
            bind(&admin, &dir, agent_id)?;
            Ok(dir)
        }
        WorkdirMode::CreateWorktree => create(asked, repo, agent_id, rules).await,
    }
}

async fn create(
    asked: &Path,
    repo: &str,
    agent_id: &str,
    rules: PathRules<'_>,
) -> Result<PathBuf, WorktreeError> {
    if repo.is_empty() {
        return Err(WorktreeError::Invalid(
            "repo: create_worktree needs the repository to add the worktree to".into(),
        ));
    }
    let repo = rules.resolve(Path::new(repo))?;
    let top = git(&repo, &["rev-parse", "--show-toplevel"]).await?;
    let top = PathBuf::from(top.trim());
    if !asked.is_absolute()
        || asked
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(WorktreeError::Invalid(format!(
            "workdir {}: a new worktree needs an absolute path without `.` or `..`",
            asked.display()
        )));
    }
    if asked.exists() {
        // A restart: the worktree is there already, and must be this agent's.
        let dir = rules.resolve(asked)?;
        let is_empty = std::fs::read_dir(&dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !is_empty {
            let admin = worktree_admin_dir(&dir).await.map_err(|_| {
                WorktreeError::Taken(format!(
                    "workdir {}: not empty and not a worktree; a new worktree needs an empty or missing directory",
                    dir.display()
                ))
            })?;
            return match bound_to(&admin) {
                Some(owner) if owner == agent_id => Ok(dir),
                Some(owner) => Err(WorktreeError::Taken(format!(
                    "workdir {}: the worktree is bound to agent {owner}",
                    dir.display()
                ))),
                None => Err(WorktreeError::Taken(format!(
                    "workdir {}: not empty (a worktree no agent owns); use reuse_worktree to take it",
                    dir.display()
                ))),
            };
        }
    } else {
        let parent = asked.parent().ok_or_else(|| {
            WorktreeError::Invalid(format!("workdir {}: has no parent", asked.display()))
        })?;
        rules.may_create_in(&nearest_existing(parent), asked)?;
        std::fs::create_dir_all(parent)
            .map_err(|e| WorktreeError::Invalid(format!("workdir {}: {e}", parent.display())))?;
        // Checked again now that it exists: nothing was swapped in on the way.
        rules.resolve(parent)?;
    }
    let target = asked.display().to_string();
    git(&top, &["worktree", "add", "--quiet", &target]).await?;
    let dir = match rules.resolve(asked) {
        Ok(dir) => dir,
        Err(e) => {
            let _ = git(&top, &["worktree", "remove", "--force", &target]).await;
            return Err(e.into());
        }
    };
    let admin = worktree_admin_dir(&dir).await?;
    bind(&admin, &dir, agent_id)?;
    Ok(dir)
}

/// Removes the worktree `workdir` of `repo` that the node created for `agent_id`. True when it
/// was removed, false when it was already gone.
pub async fn remove(
    workdir: &Path,
    repo: &str,
    agent_id: &str,
    rules: PathRules<'_>,
) -> Result<bool, WorktreeError> {
    let repo = rules.resolve(Path::new(repo))?;
    let top = PathBuf::from(git(&repo, &["rev-parse", "--show-toplevel"]).await?.trim());
    if !workdir.exists() {
        git(&top, &["worktree", "prune"]).await?;
        return Ok(false);
    }
    let dir = rules.resolve(workdir)?;
    let admin = worktree_admin_dir(&dir).await?;
    match bound_to(&admin) {
        Some(owner) if owner == agent_id => {}
        Some(owner) => {
            return Err(WorktreeError::Taken(format!(
                "workdir {}: bound to agent {owner}, not {agent_id}; left in place",
                dir.display()
            )));
        }
        None => {
            return Err(WorktreeError::Taken(format!(
                "workdir {}: not bound to agent {agent_id}; left in place",
                dir.display()
            )));
        }
    }
    let target = dir.display().to_string();
    git(&top, &["worktree", "remove", "--force", &target]).await?;
    Ok(true)
}

/// The deepest ancestor of `path` that exists (at worst `/`).
fn nearest_existing(path: &Path) -> PathBuf {
    let mut current = path;
    loop {
        if current.exists() {
            return current.to_path_buf();
        }
        match current.parent() {
            Some(parent) => current = parent,
            None => return PathBuf::from("/"),
        }
    }
}

/// The git admin directory of the worktree rooted at `dir` (refused when `dir` is not the root
/// of a linked worktree).
async fn worktree_admin_dir(dir: &Path) -> Result<PathBuf, WorktreeError> {
    let out = git(dir, &["rev-parse", "--show-toplevel", "--absolute-git-dir"]).await?;
    let mut lines = out.lines();
    let (Some(top), Some(admin)) = (lines.next(), lines.next()) else {
        return Err(WorktreeError::Invalid(format!(
            "workdir {}: git did not name its worktree",
            dir.display()
        )));
    };
    let top = std::fs::canonicalize(top).unwrap_or_else(|_| PathBuf::from(top));
    if top != dir {
        return Err(WorktreeError::Invalid(format!(
            "workdir {}: inside the worktree {}, not its root",
            dir.display(),
            top.display()
        )));
    }
    let admin = PathBuf::from(admin);
    // A linked worktree's admin dir sits in `<common dir>/worktrees/<name>`; the main checkout's
    // is the repository's own `.git`, which no agent may own.
    let linked = admin
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name == "worktrees");
    if !linked {
        return Err(WorktreeError::Invalid(format!(
            "workdir {}: the repository's main checkout, not a linked worktree",
            dir.display()
        )));
    }
    Ok(admin)
}

fn bound_to(admin: &Path) -> Option<String> {
    std::fs::read_to_string(admin.join(MARKER))
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|owner| !owner.is_empty())
}

fn bind(admin: &Path, dir: &Path, agent_id: &str) -> Result<(), WorktreeError> {
    match bound_to(admin) {
        Some(owner) if owner == agent_id => Ok(()),
        Some(owner) => Err(WorktreeError::Taken(format!(
            "workdir {}: the worktree is bound to agent {owner}",
            dir.display()
        ))),
        None => std::fs::write(admin.join(MARKER), agent_id).map_err(|e| {
            WorktreeError::Invalid(format!("workdir {}: binding it: {e}", dir.display()))
        }),
    }
}

/// Runs git in `dir` with a cleared environment, hooks off and no prompts.
async fn git(dir: &Path, args: &[&str]) -> Result<String, WorktreeError> {
    let command = args.join(" ");
    let mut git = tokio::process::Command::new("git");
    git.arg("-C")
        .arg(dir)
        .args(["-c", "core.hooksPath=/dev/null"])
        .args(args)
        .env_clear()
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            git.env(key, value);
        }
    }
    let output = match tokio::time::timeout(GIT_TIMEOUT, git.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return Err(WorktreeError::Git {
                command,
                message: format!("cannot run git: {e}"),
            });
        }
        Err(_) => {
            return Err(WorktreeError::Git {
                command,
                message: format!("did not finish within {}s", GIT_TIMEOUT.as_secs()),
            });
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message: String = stderr.trim().chars().take(2000).collect();
        return Err(WorktreeError::Git { command, message });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    fn repo(root: &Path) -> PathBuf {
        let repo = root.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        run(&repo, &["init", "--quiet", "-b", "main"]);
        std::fs::write(repo.join("README"), "hello\n").unwrap();
        run(&repo, &["add", "README"]);
        run(&repo, &["commit", "--quiet", "-m", "first"]);
        repo
    }

    #[tokio::test]
    async fn a_worktree_is_created_bound_reused_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        let repo = repo(&root);
        let repo_text = repo.display().to_string();
        let safe = [root.clone()];
        let protected = [root.join("node-state")];
        let rules = PathRules {
            safe_paths: &safe,
            protected: &protected,
        };
        let target = root.join("worktrees/repo-a-1");
        let prepared = prepare(
            WorkdirMode::CreateWorktree,
            &target,
            &repo_text,
            "agent-a",
            rules,
        )
        .await
        .unwrap();
        let dir = prepared.workdir;
        assert_eq!(dir, target);
        assert_eq!(prepared.git_dir, Some(repo.join(".git")));
        assert_eq!(
            std::fs::read_to_string(dir.join("README")).unwrap(),
            "hello\n"
        );
        // A restart of the same agent finds it; another agent may neither create nor reuse it.
        prepare(
            WorkdirMode::CreateWorktree,
            &target,
            &repo_text,
            "agent-a",
            rules,
        )
        .await
        .unwrap();
        let err = prepare(
            WorkdirMode::CreateWorktree,
            &target,
            &repo_text,
            "agent-b",
            rules,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("bound to agent agent-a"), "{err}");
        let err = prepare(WorkdirMode::ReuseWorktree, &target, "", "agent-b", rules)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("bound to agent agent-a"), "{err}");
        // Delete by another agent is refused; by its own removes it.
        assert!(remove(&target, &repo_text, "agent-b", rules).await.is_err());
        assert!(target.exists());
        assert!(remove(&target, &repo_text, "agent-a", rules).await.unwrap());
        assert!(!target.exists());
        assert!(!remove(&target, &repo_text, "agent-a", rules).await.unwrap());
    }

    #[tokio::test]
    async fn hostile_workdirs_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        let safe_dir = root.join("data");
        std::fs::create_dir_all(&safe_dir).unwrap();
        let repo = repo(&safe_dir);
        let repo_text = repo.display().to_string();
        let outside = root.join("data2");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, safe_dir.join("escape")).unwrap();
        let safe = [safe_dir.clone()];
        let protected: [PathBuf; 0] = [];
        let rules = PathRules {
            safe_paths: &safe,
            protected: &protected,
        };
        let create = |path: PathBuf, repo: String| async move {
            prepare(WorkdirMode::CreateWorktree, &path, &repo, "agent-a", rules).await
        };
        // Outside through a sibling prefix, a symlink, and `..`.
        for path in [
            outside.join("wt"),
            safe_dir.join("escape/wt"),
            safe_dir.join("../data2/wt"),
        ] {
            let err = create(path.clone(), repo_text.clone()).await.unwrap_err();
            assert!(
                matches!(err, WorktreeError::Path(_) | WorktreeError::Invalid(_)),
                "{path:?}: {err}"
            );
            assert!(!outside.join("wt").exists());
        }
        // A non-empty directory, the repository itself, no repo, and a repo outside.
        let busy = safe_dir.join("busy");
        std::fs::create_dir_all(&busy).unwrap();
        std::fs::write(busy.join("file"), "x").unwrap();
        let err = create(busy, repo_text.clone()).await.unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        let err = prepare(WorkdirMode::ReuseWorktree, &repo, "", "agent-a", rules)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("main checkout"), "{err}");
        let err = create(safe_dir.join("wt"), String::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("repo"), "{err}");
        let err = create(safe_dir.join("wt"), outside.display().to_string())
            .await
            .unwrap_err();
        assert!(matches!(err, WorktreeError::Path(_)), "{err}");
        // A directory that is no repository cannot be reused as a worktree.
        let plain = safe_dir.join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        assert!(
            prepare(WorkdirMode::ReuseWorktree, &plain, "", "agent-a", rules)
                .await
                .is_err()
        );
        assert!(WorkdirMode::parse("clone").is_err());
    }
}
