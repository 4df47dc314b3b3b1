//! An agent's lifecycle as pure transitions on its row (no I/O; times are passed in).
//!
//! ```text
//! created ─start→ starting ─node: running→ running ─node: exited|stopped|failed→ (ended)
//!   ended (exited, stopped, failed, lost) ─start→ starting (a new run)
//!   starting|running ─node offline / missing from heartbeats→ lost
//! ```

use outpost_proto::v1::AgentStatus;

use crate::store::AgentRow;

/// Where an agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Made, never started.
    Created,
    /// A start was sent; the node has not said it runs.
    Starting,
    /// Its process runs.
    Running,
    /// Its process ended by itself.
    Exited,
    /// Stopped on request.
    Stopped,
    /// Could not start, or ended past a limit.
    Failed,
    /// Its node went away, or stopped reporting it.
    Lost,
}

impl AgentState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Lost => "lost",
        }
    }

    /// From the stored name (anything unknown reads as `lost`: not running, may start again).
    pub fn parse(text: &str) -> Self {
        match text {
            "created" => Self::Created,
            "starting" => Self::Starting,
            "running" => Self::Running,
            "exited" => Self::Exited,
            "stopped" => Self::Stopped,
            "failed" => Self::Failed,
            _ => Self::Lost,
        }
    }

    /// Whether it holds its node (starting or running).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Starting | Self::Running)
    }
}

/// A new run: from any state that is not active.
pub fn start(row: &AgentRow, now_ms: i64) -> Result<AgentRow, String> {
    let state = AgentState::parse(&row.status);
    if state.is_active() {
        return Err(format!(
            "agent {} is {} (run {}); stop it first",
            row.id, row.status, row.run
        ));
    }
    Ok(AgentRow {
        status: AgentState::Starting.as_str().into(),
        run: row.run + 1,
        exit_code: None,
        signal: None,
        reason: String::new(),
        started_at_ms: Some(now_ms),
        finished_at_ms: None,
        updated_at_ms: now_ms,
        ..row.clone()
    })
}

/// The start could not be handed over.
pub fn fail(row: &AgentRow, reason: &str, now_ms: i64) -> AgentRow {
    AgentRow {
        status: AgentState::Failed.as_str().into(),
        reason: reason.into(),
        finished_at_ms: Some(now_ms),
        updated_at_ms: now_ms,
        ..row.clone()
    }
}

/// Stopped where no node will report it (no session, or the node does not run it).
pub fn stopped_without_node(row: &AgentRow, now_ms: i64) -> AgentRow {
    AgentRow {
        status: AgentState::Stopped.as_str().into(),
        reason: "stopped; the node did not run it".into(),
        finished_at_ms: Some(now_ms),
        updated_at_ms: now_ms,
        ..row.clone()
    }
}

/// Lost with `reason`.
pub fn lost(row: &AgentRow, reason: &str, now_ms: i64) -> AgentRow {
    AgentRow {
        status: AgentState::Lost.as_str().into(),
        reason: reason.into(),
        finished_at_ms: Some(now_ms),
        updated_at_ms: now_ms,
        ..row.clone()
    }
}

/// The row after the node's status event, or `None` when the event changes nothing (another
/// run's, or one that would move an ended run).
pub fn observe(row: &AgentRow, event: &AgentStatus, now_ms: i64) -> Option<AgentRow> {
    if i64::try_from(event.run).ok()? != row.run {
        return None;
    }
    let current = AgentState::parse(&row.status);
    let next = match event.status.as_str() {
        "running" if current == AgentState::Starting => AgentState::Running,
        "exited" if current.is_active() => AgentState::Exited,
        "stopped" if current.is_active() => AgentState::Stopped,
        "failed" if current.is_active() => AgentState::Failed,
        _ => return None,
    };
    let ended = next != AgentState::Running;
    // What a node says is bounded before it is stored.
    let mut reason = event.reason.clone();
    let max = outpost_proto::limits::MAX_AGENT_REASON;
    if reason.len() > max {
        let mut end = max;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    if event.output_dropped > 0 {
        let note = format!(
            "{} bytes of output past its limit dropped",
            event.output_dropped
        );
        reason = if reason.is_empty() {
            note
        } else {
            format!("{reason}; {note}")
        };
    }
    Some(AgentRow {
        status: next.as_str().into(),
        exit_code: (ended && event.signal == 0).then_some(i64::from(event.exit_code)),
        signal: (ended && event.signal != 0).then_some(i64::from(event.signal)),
        reason,
        landlock: if event.landlock.is_empty() {
            row.landlock.clone()
        } else {
            event.landlock.clone()
        },
        finished_at_ms: ended.then_some(now_ms),
        updated_at_ms: now_ms,
        ..row.clone()
    })
}

/// The event line a subscriber sees for a change.
pub fn describe(row: &AgentRow, event: &AgentStatus) -> String {
    match (row.status.as_str(), row.exit_code, row.signal) {
        ("running", _, _) => format!("running (run {})", row.run),
        ("exited", Some(code), _) => format!("exited with code {code}"),
        (status, _, Some(signal)) => format!("{status}: signal {signal}"),
        (status, _, _) if !event.reason.is_empty() => format!("{status}: {}", event.reason),
        (status, _, _) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created() -> AgentRow {
        AgentRow {
            id: "agent-1".into(),
            node_id: "n".into(),
            status: "created".into(),
            ..AgentRow::default()
        }
    }

    fn event(run: u64, status: &str) -> AgentStatus {
        AgentStatus {
            agent_id: "agent-1".into(),
            run,
            status: status.into(),
            ..AgentStatus::default()
        }
    }

    #[test]
    fn a_run_goes_from_start_to_its_end_and_a_new_run_begins_after() {
        let starting = start(&created(), 10).unwrap();
        assert_eq!((starting.status.as_str(), starting.run), ("starting", 1));
        assert!(
            start(&starting, 11).is_err(),
            "no second start while active"
        );
        let running = observe(&starting, &event(1, "running"), 12).unwrap();
        assert_eq!(running.status, "running");
        let mut exited = event(1, "exited");
        exited.exit_code = 3;
        exited.landlock = "full".into();
        let ended = observe(&running, &exited, 20).unwrap();
        assert_eq!(
            (
                ended.status.as_str(),
                ended.exit_code,
                ended.signal,
                ended.landlock.as_str()
            ),
            ("exited", Some(3), None, "full")
        );
        assert_eq!(ended.finished_at_ms, Some(20));
        let again = start(&ended, 30).unwrap();
        assert_eq!(
            (again.status.as_str(), again.run, again.exit_code),
            ("starting", 2, None)
        );
    }

    #[test]
    fn late_and_impossible_events_change_nothing() {
        let running = observe(&start(&created(), 1).unwrap(), &event(1, "running"), 2).unwrap();
        let second = start(&observe(&running, &event(1, "stopped"), 3).unwrap(), 4).unwrap();
        // The first run's late end does not touch the second run.
        assert!(observe(&second, &event(1, "exited"), 5).is_none());
        // An ended run does not start running again, nor end twice.
        let ended = observe(&running, &event(1, "exited"), 6).unwrap();
        assert!(observe(&ended, &event(1, "running"), 7).is_none());
        assert!(observe(&ended, &event(1, "failed"), 7).is_none());
        assert!(observe(&running, &event(1, "dancing"), 7).is_none());
    }

    #[test]
    fn a_signal_and_dropped_output_are_recorded() {
        let running = observe(&start(&created(), 1).unwrap(), &event(1, "running"), 2).unwrap();
        let mut killed = event(1, "stopped");
        killed.signal = 15;
        killed.output_dropped = 99;
        let stopped = observe(&running, &killed, 3).unwrap();
        assert_eq!((stopped.exit_code, stopped.signal), (None, Some(15)));
        assert!(stopped.reason.contains("99 bytes"), "{}", stopped.reason);
        assert_eq!(describe(&stopped, &killed), "stopped: signal 15");
        let mut chatty = event(1, "failed");
        chatty.reason = "é".repeat(outpost_proto::limits::MAX_AGENT_REASON);
        let failed = observe(&running, &chatty, 3).unwrap();
        assert!(failed.reason.len() <= outpost_proto::limits::MAX_AGENT_REASON);
        assert!(!failed.reason.is_empty());
        let gone = lost(&running, "node offline", 4);
        assert_eq!(gone.status, "lost");
        assert!(!AgentState::parse(&gone.status).is_active());
        assert!(start(&gone, 5).is_ok(), "a lost agent may start again");
    }
}
