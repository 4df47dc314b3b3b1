//! Output from the node's programs to the hub, live: a QUIC uni stream per agent run or native
//! task attempt (a header frame naming it, then `AgentOutput` frames), so one chatty program
//! never blocks another. Each stream's pump holds at most one chunk, so when the hub reads
//! slowly (or the session is down) the pipe fills and the program's own writes wait:
//! backpressure, never unbounded buffering.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::framing;
use outpost_proto::limits::MAX_AGENT_CHUNK;
use outpost_proto::v1::{AgentOutput, NodeEvent};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, watch};

/// The hub session output and status go over, while there is one (shared by everything that
/// streams to the hub; the session attaches itself when it comes up).
#[derive(Debug, Clone)]
pub struct SessionLink {
    connection: Arc<watch::Sender<Option<quinn::Connection>>>,
}

impl Default for SessionLink {
    fn default() -> Self {
        Self {
            connection: Arc::new(watch::channel(None).0),
        }
    }
}

impl SessionLink {
    /// The session is up: output and status go over `connection` from now on.
    pub fn attach(&self, connection: quinn::Connection) {
        self.connection.send_replace(Some(connection));
    }

    /// The session ended: output and status wait for the next one.
    pub fn detach(&self) {
        self.connection.send_replace(None);
    }

    /// Follows the session as it comes and goes.
    pub fn subscribe(&self) -> watch::Receiver<Option<quinn::Connection>> {
        self.connection.subscribe()
    }
}

/// Reads one pipe into chunks named `stream` (`stdout` or `stderr`).
pub async fn pump(
    stream: &'static str,
    mut reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    chunks: mpsc::Sender<AgentOutput>,
) {
    let mut buf = vec![0_u8; MAX_AGENT_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let chunk = AgentOutput {
                    stream: stream.into(),
                    data: buf[..n].to_vec(),
                };
                if chunks.send(chunk).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes chunks to a stream of their own on the current session (opened with `header`, and
/// again after a reconnect); past `limit` bytes the rest is counted in `dropped`.
pub async fn forward(
    mut connection: watch::Receiver<Option<quinn::Connection>>,
    header: NodeEvent,
    mut chunks: mpsc::Receiver<AgentOutput>,
    limit: u64,
    dropped: Arc<AtomicU64>,
) {
    let mut stream: Option<quinn::SendStream> = None;
    let mut sent = 0_u64;
    while let Some(chunk) = chunks.recv().await {
        let len = u64::try_from(chunk.data.len()).unwrap_or(u64::MAX);
        if sent + len > limit {
            dropped.fetch_add(len, Ordering::Relaxed);
            continue;
        }
        loop {
            if stream.is_none() {
                let current = connection.borrow_and_update().clone();
                if let Some(conn) = current
                    && let Ok(mut send) = conn.open_uni().await
                    && framing::write_frame(&mut send, &header).await.is_ok()
                {
                    stream = Some(send);
                }
            }
            if let Some(send) = stream.as_mut() {
                if framing::write_frame(send, &chunk).await.is_ok() {
                    sent += len;
                    break;
                }
                stream = None;
            }
            // No session (or it broke): wait for the next one, holding this one chunk.
            if connection.changed().await.is_err() {
                return;
            }
        }
    }
    if let Some(mut send) = stream {
        let _ = send.finish();
        // Finished means written to QUIC, not read: wait until the hub has it all.
        let _ = send.stopped().await;
    }
}
