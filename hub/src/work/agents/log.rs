//! Agents' output on the hub: per agent a bounded tail for late subscribers and a broadcast of
//! what arrives now. Status changes are entries too (`stream = "event"`), so a subscriber sees
//! an agent start, print and end in one sequence.

use std::collections::{HashMap, VecDeque};

use outpost_proto::limits::AGENT_TAIL_BYTES;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

/// Entries a slow live subscriber may fall behind before it misses some (it is told how many).
const LIVE_BACKLOG: usize = 1024;

/// One entry of an agent's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// Its position in the agent's output, from 1.
    pub seq: u64,
    /// `stdout`, `stderr` or `event`.
    pub stream: String,
    /// The text (output bytes as UTF-8, invalid sequences replaced).
    pub data: String,
    /// When the hub got it, RFC 3339.
    pub at: String,
}

#[derive(Debug)]
struct AgentLog {
    next_seq: u64,
    tail: VecDeque<LogEntry>,
    bytes: usize,
    live: broadcast::Sender<LogEntry>,
}

impl AgentLog {
    fn new() -> Self {
        Self {
            next_seq: 1,
            tail: VecDeque::new(),
            bytes: 0,
            live: broadcast::channel(LIVE_BACKLOG).0,
        }
    }
}

/// The entries `live` receives, as a stream ending when the agent's log goes; a subscriber that
/// fell more than the live backlog behind gets an `event` entry saying how many it missed.
pub fn follow(live: broadcast::Receiver<LogEntry>) -> impl futures::Stream<Item = LogEntry> {
    futures::stream::unfold(live, |mut live| async move {
        use tokio::sync::broadcast::error::RecvError;
        match live.recv().await {
            Ok(entry) => Some((entry, live)),
            Err(RecvError::Lagged(missed)) => Some((
                LogEntry {
                    seq: 0,
                    stream: "event".into(),
                    data: format!("{missed} entries missed"),
                    at: now_rfc3339(),
                },
                live,
            )),
            Err(RecvError::Closed) => None,
        }
    })
}

/// Every agent's output.
#[derive(Debug, Default)]
pub struct AgentLogs {
    logs: Mutex<HashMap<String, AgentLog>>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl AgentLogs {
    /// Adds an entry to `agent_id`'s output: kept in the tail (oldest dropped past
    /// [`AGENT_TAIL_BYTES`]) and sent to live subscribers.
    pub fn push(&self, agent_id: &str, stream: &str, data: String) {
        let mut logs = self.logs.lock();
        let log = logs
            .entry(agent_id.to_string())
            .or_insert_with(AgentLog::new);
        let entry = LogEntry {
            seq: log.next_seq,
            stream: stream.to_string(),
            data,
            at: now_rfc3339(),
        };
        log.next_seq += 1;
        log.bytes += entry.data.len();
        log.tail.push_back(entry.clone());
        while log.bytes > AGENT_TAIL_BYTES {
            match log.tail.pop_front() {
                Some(old) => log.bytes -= old.data.len(),
                None => break,
            }
        }
        let _ = log.live.send(entry);
    }

    /// The retained tail, and a receiver of everything after it (no entry lost or repeated
    /// between the two).
    pub fn subscribe(&self, agent_id: &str) -> (Vec<LogEntry>, broadcast::Receiver<LogEntry>) {
        let mut logs = self.logs.lock();
        let log = logs
            .entry(agent_id.to_string())
            .or_insert_with(AgentLog::new);
        (log.tail.iter().cloned().collect(), log.live.subscribe())
    }

    /// Forgets a deleted agent's output.
    pub fn remove(&self, agent_id: &str) {
        self.logs.lock().remove(agent_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_bounded_and_live_entries_follow_it() {
        let logs = AgentLogs::default();
        let chunk = "x".repeat(AGENT_TAIL_BYTES / 4);
        for _ in 0..6 {
            logs.push("a", "stdout", chunk.clone());
        }
        let (tail, mut live) = logs.subscribe("a");
        assert_eq!(tail.len(), 4, "only what fits the byte budget is kept");
        assert_eq!(tail.first().unwrap().seq, 3);
        assert_eq!(tail.last().unwrap().seq, 6);
        logs.push("a", "event", "exited with code 0".into());
        let next = live.try_recv().unwrap();
        assert_eq!((next.seq, next.stream.as_str()), (7, "event"));
        let (other, _) = logs.subscribe("b");
        assert!(other.is_empty());
    }
}
