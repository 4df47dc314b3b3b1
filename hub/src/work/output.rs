//! Output of agents and tasks on the hub: per agent (or task) a bounded tail for late
//! subscribers and a broadcast of what arrives now. Status changes are entries too
//! (`stream = "event"`), so a subscriber sees a program start, print and end in one sequence.
//!
//! A log ends when its task ends ([`OutputLogs::finish`]): followers then reach the end of the
//! stream, and the tail stays for late readers of the last finished logs (a bounded number).

use std::collections::{HashMap, VecDeque};

use outpost_proto::limits::AGENT_TAIL_BYTES;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

/// Entries a slow live subscriber may fall behind before it misses some (it is told how many).
const LIVE_BACKLOG: usize = 1024;

/// One entry of an agent's or task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// Its position in the output, from 1 (0: a note that is not part of it).
    pub seq: u64,
    /// `stdout`, `stderr` or `event`.
    pub stream: String,
    /// The text (output bytes as UTF-8, invalid sequences replaced).
    pub data: String,
    /// When the hub got it, RFC 3339.
    pub at: String,
}

impl LogEntry {
    /// A note outside the numbered output (`seq` 0), such as a task's state when one follows it.
    pub fn note(data: String) -> Self {
        Self {
            seq: 0,
            stream: "event".into(),
            data,
            at: now_rfc3339(),
        }
    }
}

#[derive(Debug)]
struct OutputLog {
    next_seq: u64,
    tail: VecDeque<LogEntry>,
    bytes: usize,
    /// None once the log ended.
    live: Option<broadcast::Sender<LogEntry>>,
}

impl OutputLog {
    fn new() -> Self {
        Self {
            next_seq: 1,
            tail: VecDeque::new(),
            bytes: 0,
            live: Some(broadcast::channel(LIVE_BACKLOG).0),
        }
    }
}

/// The entries `live` receives, as a stream ending with the log; a subscriber that fell more
/// than the live backlog behind gets an `event` entry saying how many it missed. No receiver
/// (the log ended already): an empty stream.
pub fn follow(
    live: Option<broadcast::Receiver<LogEntry>>,
) -> impl futures::Stream<Item = LogEntry> {
    futures::stream::unfold(live, |live| async move {
        use tokio::sync::broadcast::error::RecvError;
        let mut live = live?;
        match live.recv().await {
            Ok(entry) => Some((entry, Some(live))),
            Err(RecvError::Lagged(missed)) => Some((
                LogEntry::note(format!("{missed} entries missed")),
                Some(live),
            )),
            Err(RecvError::Closed) => None,
        }
    })
}

/// Logs by id, each bounded; ended logs are kept up to a number, oldest forgotten first.
#[derive(Debug)]
pub struct OutputLogs {
    logs: Mutex<HashMap<String, OutputLog>>,
    ended: Mutex<VecDeque<String>>,
    keep_ended: usize,
}

impl Default for OutputLogs {
    fn default() -> Self {
        Self::keeping(1024)
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl OutputLogs {
    /// Logs that keep the tails of the last `keep_ended` ended logs.
    pub fn keeping(keep_ended: usize) -> Self {
        Self {
            logs: Mutex::new(HashMap::new()),
            ended: Mutex::new(VecDeque::new()),
            keep_ended,
        }
    }

    /// Adds an entry to `id`'s output (starting its log): kept in the tail (oldest dropped past
    /// [`AGENT_TAIL_BYTES`]) and sent to live subscribers. Ignored once the log ended.
    pub fn push(&self, id: &str, stream: &str, data: String) {
        let mut logs = self.logs.lock();
        let log = logs.entry(id.to_string()).or_insert_with(OutputLog::new);
        Self::append(log, stream, data);
    }

    /// Adds an entry when `id` has a log already (someone follows it, or output arrived), so
    /// events of work nobody watches cost nothing.
    pub fn push_if_present(&self, id: &str, stream: &str, data: String) {
        if let Some(log) = self.logs.lock().get_mut(id) {
            Self::append(log, stream, data);
        }
    }

    fn append(log: &mut OutputLog, stream: &str, data: String) {
        let Some(live) = &log.live else {
            return;
        };
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
        let _ = live.send(entry);
    }

    /// Whether `id` has a log.
    pub fn contains(&self, id: &str) -> bool {
        self.logs.lock().contains_key(id)
    }

    /// The retained tail, and a receiver of everything after it (no entry lost or repeated
    /// between the two); no receiver when the log ended.
    pub fn subscribe(&self, id: &str) -> (Vec<LogEntry>, Option<broadcast::Receiver<LogEntry>>) {
        let mut logs = self.logs.lock();
        let log = logs.entry(id.to_string()).or_insert_with(OutputLog::new);
        (
            log.tail.iter().cloned().collect(),
            log.live.as_ref().map(broadcast::Sender::subscribe),
        )
    }

    /// Ends `id`'s log, if it has one: followers reach the end; the tail stays for late readers
    /// until `keep_ended` later logs ended.
    pub fn finish(&self, id: &str) {
        self.finish_with(id, Vec::new());
    }

    /// Adds the last entries (`(stream, data)`) and ends the log in one step, so two callers
    /// ending it at once add them once.
    pub fn finish_with(&self, id: &str, last: Vec<(&str, String)>) {
        let forget = {
            let mut logs = self.logs.lock();
            match logs.get_mut(id) {
                Some(log) if log.live.is_some() => {
                    for (stream, data) in last {
                        Self::append(log, stream, data);
                    }
                    log.live = None;
                }
                _ => return,
            }
            let mut ended = self.ended.lock();
            ended.push_back(id.to_string());
            let mut forget = Vec::new();
            while ended.len() > self.keep_ended {
                if let Some(old) = ended.pop_front() {
                    forget.push(old);
                }
            }
            for old in &forget {
                logs.remove(old);
            }
            forget
        };
        drop(forget);
    }

    /// Forgets a deleted agent's output.
    pub fn remove(&self, id: &str) {
        self.logs.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_bounded_and_live_entries_follow_it() {
        let logs = OutputLogs::default();
        let chunk = "x".repeat(AGENT_TAIL_BYTES / 4);
        for _ in 0..6 {
            logs.push("a", "stdout", chunk.clone());
        }
        let (tail, live) = logs.subscribe("a");
        let mut live = live.unwrap();
        assert_eq!(tail.len(), 4, "only what fits the byte budget is kept");
        assert_eq!(tail.first().unwrap().seq, 3);
        assert_eq!(tail.last().unwrap().seq, 6);
        logs.push("a", "event", "exited with code 0".into());
        let next = live.try_recv().unwrap();
        assert_eq!((next.seq, next.stream.as_str()), (7, "event"));
        let (other, _) = logs.subscribe("b");
        assert!(other.is_empty());
    }

    #[tokio::test]
    async fn an_ended_log_ends_its_followers_and_only_the_last_ended_are_kept() {
        use futures::StreamExt as _;
        let logs = OutputLogs::keeping(2);
        logs.push_if_present("quiet", "event", "nobody follows".into());
        assert!(!logs.contains("quiet"), "no log for work nobody watches");
        logs.push("t1", "stdout", "one\n".into());
        let (_, live) = logs.subscribe("t1");
        let follower = tokio::spawn(follow(live).collect::<Vec<_>>());
        logs.finish_with("t1", vec![("event", "succeeded".into())]);
        logs.finish_with("t1", vec![("event", "succeeded".into())]);
        logs.push("t1", "stdout", "after the end".into());
        let followed = follower.await.unwrap();
        assert_eq!(
            followed.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["succeeded"]
        );
        let (tail, live) = logs.subscribe("t1");
        assert!(live.is_none());
        assert_eq!(tail.len(), 2);
        for id in ["t2", "t3"] {
            logs.push(id, "stdout", "x".into());
            logs.finish(id);
        }
        assert!(!logs.contains("t1"), "the oldest ended log is forgotten");
        assert!(logs.contains("t2") && logs.contains("t3"));
    }
}
