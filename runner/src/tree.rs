//! A process tree read from `/proc`: every descendant of a process, however it detached (a new
//! process group, a new session, a parent that exited and left it to the subreaper), and the
//! loop that signals them until none is left.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The parent of every process in `/proc` now.
fn parents() -> HashMap<i32, i32> {
    let mut parents = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return parents;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some(ppid) = parent_from_stat(&stat)
        {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// The parent pid in a `/proc/PID/stat` line: the second field after the command, which is in
/// parentheses and may itself hold spaces and parentheses.
pub fn parent_from_stat(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// Every living descendant of `root` (not `root` itself), parents before children.
pub fn descendants(root: i32) -> Vec<i32> {
    let parents = parents();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, &ppid) in &parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(child) {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

/// Sends `signal` to every descendant of `root`; returns how many there were.
#[cfg(target_os = "linux")]
pub fn signal_descendants(root: i32, signal: rustix::process::Signal) -> usize {
    let pids = descendants(root);
    for &pid in &pids {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
    pids.len()
}

/// SIGKILLs the descendants of `root` until none is left (a process forking as it dies leaves
/// children for the next round) or `deadline` passes; returns how many were killed.
#[cfg(target_os = "linux")]
pub fn kill_descendants(root: i32, deadline: Duration) -> usize {
    let started = Instant::now();
    let mut killed = HashSet::new();
    loop {
        let pids = descendants(root);
        // Zombies wait for their parent to reap them; they hold nothing and need no signal.
        let alive: Vec<i32> = pids.into_iter().filter(|&pid| !is_zombie(pid)).collect();
        if alive.is_empty() || started.elapsed() > deadline {
            return killed.len();
        }
        for pid in alive {
            if let Some(raw) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(raw, rustix::process::Signal::KILL);
            }
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` has exited and waits to be reaped.
pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_a_command_with_spaces_and_parentheses() {
        assert_eq!(
            parent_from_stat("4242 (my (odd) prog) S 17 4242 4242 0 -1 4194560"),
            Some(17)
        );
        assert_eq!(parent_from_stat("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_from_stat("garbage"), None);
    }

    #[test]
    fn descendants_of_this_process_include_a_child_it_started() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let child_pid = i32::try_from(child.id()).unwrap();
        assert!(descendants(me).contains(&child_pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!descendants(me).contains(&child_pid));
    }
}
