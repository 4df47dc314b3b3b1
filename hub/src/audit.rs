//! The audit log: every write through REST, gRPC or the console — who (the credential's
//! subject and role), what (the route or method, and its concrete target), when, and how it
//! ended — stored durably beside the rest of the hub's state.
//!
//! A gRPC handler names what it acts on with [`note_target`] (a task-local the gate sets up
//! around each write it audits, since the gate cannot read the request body).
//!
//! Surfaces call [`AuditLog::record`], which never waits: entries go through a bounded queue
//! ([`QUEUE`]) to one writer task ([`run_writer`]) that appends them in batches, in order. Only
//! authenticated callers are recorded (an anonymous caller is refused before any work and could
//! otherwise fill the log); a write refused for its role is recorded as `refused`, at most
//! [`MAX_REFUSED_PER_MINUTE`] per subject and minute. When the
//! queue is full an entry is dropped and counted ([`AuditLog::dropped`]), never the write itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::store::{AuditRow, Store};

/// Entries waiting for the writer at most.
pub const QUEUE: usize = 8192;
/// Entries the writer appends in one transaction at most.
const BATCH: usize = 256;
/// How long entries are kept.
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);
/// How often the writer drops entries past [`RETENTION`].
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// gRPC methods that change state: each call is recorded. (The join is recorded by its handler,
/// with the node it admitted.)
pub const GRPC_WRITES: [&str; 14] = [
    "/outpost.v1.TokenService/CreateBootstrapToken",
    "/outpost.v1.NodeRegistry/RegisterNode",
    "/outpost.v1.NodeRegistry/UpdateNode",
    "/outpost.v1.NodeRegistry/DeleteNode",
    "/outpost.v1.NodeRegistry/DrainNode",
    "/outpost.v1.ToolService/PushTool",
    "/outpost.v1.TaskService/SubmitTask",
    "/outpost.v1.TaskService/CancelTask",
    "/outpost.v1.AgentService/CreateAgent",
    "/outpost.v1.AgentService/StartAgent",
    "/outpost.v1.AgentService/StopAgent",
    "/outpost.v1.AgentService/RestartAgent",
    "/outpost.v1.AgentService/DeleteAgent",
    "/outpost.v1.AgentService/SendAgentInput",
];

tokio::task_local! {
    /// What the gRPC write being handled acts on, as its handler names it.
    static TARGET: std::cell::RefCell<String>;
}

/// Names what the gRPC write being handled acts on (a node, agent, task or tool), for its
/// audit entry; nothing outside a call the gate audits.
pub fn note_target(target: &str) {
    let _ = TARGET.try_with(|t| target.clone_into(&mut t.borrow_mut()));
}

/// Runs `call` where [`note_target`] can be heard; its output and the target it named.
pub async fn hearing_target<F: std::future::Future>(call: F) -> (F::Output, String) {
    TARGET
        .scope(std::cell::RefCell::new(String::new()), async move {
            let output = call.await;
            let target = TARGET.with(|t| t.take());
            (output, target)
        })
        .await
}

/// Whether a gRPC call to `path` is a write.
pub fn is_grpc_write(path: &str) -> bool {
    GRPC_WRITES.contains(&path)
}

/// `ok`, `refused` or `failed` for an HTTP status.
pub fn http_outcome(status: u16) -> &'static str {
    match status {
        401 | 403 => "refused",
        400..=599 => "failed",
        _ => "ok",
    }
}

/// `ok`, `refused` or `failed` for a gRPC status code.
pub fn grpc_outcome(code: i64) -> &'static str {
    match code {
        0 => "ok",
        // PERMISSION_DENIED, UNAUTHENTICATED
        7 | 16 => "refused",
        _ => "failed",
    }
}

/// Entries listed at most in one answer.
pub const MAX_LIST: u32 = 10_000;

/// Entries at or after `since_ms`, newest first; `limit` 0 means 100, and at most
/// [`MAX_LIST`].
pub async fn list(
    state: &crate::state::HubState,
    since_ms: i64,
    limit: u32,
) -> Result<Vec<AuditRow>, crate::store::StoreError> {
    let limit = if limit == 0 { 100 } else { limit.min(MAX_LIST) };
    state.store().list_audit(since_ms, limit).await
}

/// Refused writes recorded per subject and minute at most: a holder of one viewer or node
/// token cannot fill the log (and the disk) with refusals; past this they are counted only.
pub const MAX_REFUSED_PER_MINUTE: u32 = 60;

/// The queue to the writer.
#[derive(Debug)]
pub struct AuditLog {
    queue: mpsc::Sender<AuditRow>,
    writer: Mutex<Option<mpsc::Receiver<AuditRow>>>,
    dropped: AtomicU64,
    /// The minute (Unix ms / 60,000) being counted, and refusals recorded in it by subject.
    refused: Mutex<(i64, std::collections::HashMap<String, u32>)>,
}

impl Default for AuditLog {
    fn default() -> Self {
        let (queue, writer) = mpsc::channel(QUEUE);
        Self {
            queue,
            writer: Mutex::new(Some(writer)),
            dropped: AtomicU64::new(0),
            refused: Mutex::new((0, std::collections::HashMap::new())),
        }
    }
}

impl AuditLog {
    /// Queues an entry for the writer; drops (and counts) it when the queue is full, or when
    /// it is a refusal past [`MAX_REFUSED_PER_MINUTE`] for its subject.
    pub fn record(&self, entry: AuditRow) {
        if entry.outcome == "refused" && !self.admit_refusal(&entry.subject, entry.at_ms) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(e) = self.queue.try_send(entry) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, error = %e, "audit entries dropped: the writer is behind");
            }
        }
    }

    /// Whether one more refusal of `subject` is recorded in the minute of `at_ms`.
    fn admit_refusal(&self, subject: &str, at_ms: i64) -> bool {
        let minute = at_ms.div_euclid(60_000);
        let mut refused = self.refused.lock();
        if refused.0 != minute {
            *refused = (minute, std::collections::HashMap::new());
        }
        let count = refused.1.entry(subject.to_string()).or_insert(0);
        *count += 1;
        *count <= MAX_REFUSED_PER_MINUTE
    }

    /// Entries dropped because the writer was behind, or past the refusals' limit.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The writer's end of the queue (once).
    pub fn take_writer(&self) -> Option<mpsc::Receiver<AuditRow>> {
        self.writer.lock().take()
    }
}

/// Appends queued entries to `store` until shutdown, then what is still queued; once an hour
/// (the first a minute after start) drops entries older than [`RETENTION`] by `clock`.
pub async fn run_writer(
    store: Arc<dyn Store>,
    clock: Arc<dyn outpost_clock::Clock>,
    mut queue: mpsc::Receiver<AuditRow>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The first pass a minute after start, then hourly.
    let mut prune = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        PRUNE_EVERY,
    );
    loop {
        enum Next {
            Entry(Option<AuditRow>),
            Prune,
        }
        let next = tokio::select! {
            entry = queue.recv() => Next::Entry(entry),
            _ = prune.tick() => Next::Prune,
            _ = shutdown.wait_for(|s| *s) => Next::Entry(None),
        };
        let first = match next {
            Next::Entry(entry) => entry,
            Next::Prune => {
                let keep = i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX);
                match store.prune_audit(clock.now_ms().saturating_sub(keep)).await {
                    Ok(0) => {}
                    Ok(dropped) => {
                        tracing::info!(dropped, "audit entries past their retention dropped");
                    }
                    Err(e) => tracing::warn!(error = %e, "dropping old audit entries failed"),
                }
                continue;
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        append(store.as_ref(), &batch).await;
    }
    let mut rest = Vec::new();
    while let Ok(entry) = queue.try_recv() {
        rest.push(entry);
    }
    for chunk in rest.chunks(BATCH) {
        append(store.as_ref(), chunk).await;
    }
}

async fn append(store: &dyn Store, batch: &[AuditRow]) {
    for attempt in 0..3u64 {
        match store.append_audit(batch).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, entries = batch.len(), attempt, "writing audit entries failed");
                tokio::time::sleep(std::time::Duration::from_millis(100 * (attempt + 1))).await;
            }
        }
    }
    tracing::error!(
        entries = batch.len(),
        "audit entries lost: the store refused them three times"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn outcomes_by_status() {
        assert_eq!(http_outcome(201), "ok");
        assert_eq!(http_outcome(303), "ok");
        assert_eq!(http_outcome(403), "refused");
        assert_eq!(http_outcome(409), "failed");
        assert_eq!(grpc_outcome(0), "ok");
        assert_eq!(grpc_outcome(7), "refused");
        assert_eq!(grpc_outcome(5), "failed");
    }

    #[test]
    fn refusals_are_recorded_up_to_a_limit_per_subject_and_minute() {
        let log = AuditLog::default();
        let refused = |subject: &str, at_ms: i64| AuditRow {
            subject: subject.into(),
            outcome: "refused".into(),
            at_ms,
            ..AuditRow::default()
        };
        for _ in 0..MAX_REFUSED_PER_MINUTE + 5 {
            log.record(refused("flooder", 60_000));
        }
        assert_eq!(log.dropped(), 5);
        log.record(refused("someone-else", 60_000));
        log.record(AuditRow {
            subject: "flooder".into(),
            outcome: "ok".into(),
            at_ms: 60_000,
            ..AuditRow::default()
        });
        log.record(refused("flooder", 120_000));
        assert_eq!(
            log.dropped(),
            5,
            "others, successes and the next minute are recorded"
        );
        let mut queue = log.take_writer().unwrap();
        let mut queued = 0;
        while queue.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, MAX_REFUSED_PER_MINUTE + 3);
    }

    #[tokio::test]
    async fn queued_entries_reach_the_store_in_order_and_a_full_queue_drops_not_blocks() {
        let log = AuditLog::default();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        for i in 0..QUEUE + 10 {
            log.record(AuditRow {
                at_ms: i64::try_from(i).unwrap(),
                action: format!("a{i}"),
                ..AuditRow::default()
            });
        }
        assert_eq!(log.dropped(), 10);
        let (stop, stopped) = watch::channel(false);
        let clock: Arc<dyn outpost_clock::Clock> = Arc::new(outpost_clock::SystemClock);
        let writer = tokio::spawn(run_writer(
            store.clone(),
            clock,
            log.take_writer().unwrap(),
            stopped,
        ));
        assert!(log.take_writer().is_none(), "one writer");
        stop.send(true).unwrap();
        writer.await.unwrap();
        let stored = store.list_audit(0, u32::MAX).await.unwrap();
        assert_eq!(stored.len(), QUEUE);
        assert_eq!(stored.last().unwrap().action, "a0");
        assert_eq!(stored[0].action, format!("a{}", QUEUE - 1));
    }
}
