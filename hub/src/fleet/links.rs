//! How the hub reaches a node: the [`NodeLink`] trait, its QUIC implementation over the node's
//! session ([`QuicLink`]), an in-memory one for tests ([`LoopbackLink`]), and the table of links
//! by node id ([`LinkTable`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outpost_proto::framing;
use outpost_proto::v1::{
    CancelTask, HubCommand, InstallTool, NodeCredentials, NodeReply, Ping, RunTask, hub_command,
    node_reply,
};
use parking_lot::RwLock;

/// Why a command did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// No session to that node on this hub.
    #[error("node {0:?} has no session to this hub")]
    NotConnected(String),
    /// The node did not answer in time.
    #[error("node did not answer within {0:?}")]
    Timeout(Duration),
    /// The route (the session, or the direct route) failed while sending or receiving.
    #[error("route: {0}")]
    Transport(String),
    /// The node answered with an error.
    #[error("node refused: {0}")]
    Refused(String),
}

/// How a node answered a `RunTask` or an `InstallTool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAnswer {
    /// The attempt runs (its result comes later as an event), or the tool is being installed.
    Accepted,
    /// The node lacks the component with this digest: send it along.
    MissingComponent(String),
}

/// What the hub asks of a node's agents.
#[derive(Debug, Clone)]
pub enum AgentCommand {
    /// Start a run.
    Start(Box<outpost_proto::v1::StartAgent>),
    /// Stop a run.
    Stop(outpost_proto::v1::AgentRef),
    /// A line of input for a run.
    Input(outpost_proto::v1::AgentInput),
    /// Remove the worktree the node made for an agent.
    RemoveWorktree(outpost_proto::v1::RemoveWorktree),
}

/// Time allowed for a command the node may take long over: git for a worktree (the node gives
/// git two minutes), or a WASM agent's tool compiled on its first start.
const SLOW_COMMAND_TIMEOUT: Duration = Duration::from_secs(130);

impl AgentCommand {
    fn into_kind(self) -> hub_command::Kind {
        match self {
            Self::Start(start) => hub_command::Kind::StartAgent(*start),
            Self::Stop(agent) => hub_command::Kind::StopAgent(agent),
            Self::Input(input) => hub_command::Kind::AgentInput(input),
            Self::RemoveWorktree(remove) => hub_command::Kind::RemoveWorktree(remove),
        }
    }

    /// Whether the node may take long over it: it runs git (a worktree), or compiles a WASM
    /// agent's tool that is not compiled yet.
    fn is_slow(&self) -> bool {
        match self {
            Self::Start(start) => {
                !start.tool.is_empty()
                    || !matches!(start.workdir_mode.as_str(), "" | "use_existing")
            }
            Self::RemoveWorktree(_) => true,
            Self::Stop(_) | Self::Input(_) => false,
        }
    }
}

/// A way to send commands to one node. A route implements [`NodeLink::command_within`] (one
/// command, one answer) and the session facts; the commands themselves are built on it.
#[async_trait]
pub trait NodeLink: Send + Sync + std::fmt::Debug {
    /// Sends a command and waits for its answer, at least `at_least` (more for large
    /// commands); a node's `error` answer is [`LinkError::Refused`].
    async fn command_within(
        &self,
        kind: hub_command::Kind,
        at_least: Duration,
    ) -> Result<node_reply::Kind, LinkError>;

    /// Round trip of a ping command.
    async fn ping(&self) -> Result<Duration, LinkError> {
        let start = Instant::now();
        let sent_at_us = u64::try_from(outpost_clock::Clock::now_ms(&outpost_clock::SystemClock))
            .unwrap_or(0)
            .saturating_mul(1000);
        match self
            .command_within(hub_command::Kind::Ping(Ping { sent_at_us }), Duration::ZERO)
            .await?
        {
            node_reply::Kind::Pong(_) => Ok(start.elapsed()),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// Tells the node a new heartbeat interval.
    async fn set_heartbeat_interval(&self, interval_ms: u32) -> Result<(), LinkError> {
        self.command_within(
            hub_command::Kind::SetHeartbeatIntervalMs(interval_ms),
            Duration::ZERO,
        )
        .await
        .map(|_| ())
    }

    /// Tells the node where to send heartbeats: only on the heartbeat channel (true) or as QUIC
    /// datagrams (false).
    async fn set_heartbeat_channel(&self, use_channel: bool) -> Result<(), LinkError> {
        self.command_within(
            hub_command::Kind::HeartbeatChannel(use_channel),
            Duration::ZERO,
        )
        .await
        .map(|_| ())
    }

    /// Starts an attempt of a task on the node.
    async fn run_task(&self, command: RunTask) -> Result<RunAnswer, LinkError> {
        match self
            .command_within(hub_command::Kind::RunTask(command), Duration::ZERO)
            .await?
        {
            node_reply::Kind::Ok(_) => Ok(RunAnswer::Accepted),
            node_reply::Kind::MissingComponent(digest) => Ok(RunAnswer::MissingComponent(digest)),
            other => Err(unexpected("run_task", &other)),
        }
    }

    /// Has the node store and compile a tool ahead of its first task.
    async fn install_tool(&self, command: InstallTool) -> Result<RunAnswer, LinkError> {
        match self
            .command_within(hub_command::Kind::InstallTool(command), Duration::ZERO)
            .await?
        {
            node_reply::Kind::Ok(_) => Ok(RunAnswer::Accepted),
            node_reply::Kind::MissingComponent(digest) => Ok(RunAnswer::MissingComponent(digest)),
            other => Err(unexpected("install_tool", &other)),
        }
    }

    /// Stops an attempt if it still runs; true when it did.
    async fn cancel_task(&self, task_id: &str, attempt: u32) -> Result<bool, LinkError> {
        let cancel = CancelTask {
            task_id: task_id.into(),
            attempt,
        };
        match self
            .command_within(hub_command::Kind::CancelTask(cancel), Duration::ZERO)
            .await?
        {
            node_reply::Kind::Ok(stopped) => Ok(stopped),
            other => Err(unexpected("cancel_task", &other)),
        }
    }

    /// Hands the node a renewed certificate and a fresh JWT; Ok once it kept them.
    async fn send_credentials(&self, credentials: NodeCredentials) -> Result<(), LinkError> {
        match self
            .command_within(hub_command::Kind::Credentials(credentials), Duration::ZERO)
            .await?
        {
            node_reply::Kind::Ok(true) => Ok(()),
            other => Err(unexpected("credentials", &other)),
        }
    }

    /// Starts, stops or feeds an agent; the node's `ok` answer (false: nothing to stop).
    async fn agent(&self, command: AgentCommand) -> Result<bool, LinkError> {
        let at_least = if command.is_slow() {
            SLOW_COMMAND_TIMEOUT
        } else {
            Duration::ZERO
        };
        match self.command_within(command.into_kind(), at_least).await? {
            node_reply::Kind::Ok(done) => Ok(done),
            other => Err(unexpected("an agent command", &other)),
        }
    }

    /// Which route commands take: `session` or `direct`.
    fn route(&self) -> &'static str {
        "session"
    }
    /// The transport's own round-trip estimate.
    fn rtt(&self) -> Option<Duration>;
    /// Where the node's commands go (the session's address, or the direct route's target).
    fn remote(&self) -> String;
    /// Identifies the underlying session (to tell a stale link from its successor).
    fn connection_id(&self) -> u64;
    /// Closes the link's session with a reason.
    fn close(&self, reason: &str);
}

fn unexpected(command: &str, answer: &node_reply::Kind) -> LinkError {
    LinkError::Transport(format!("unexpected answer to {command}: {answer:?}"))
}

/// Time allowed for a command's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Slowest link a command carrying a component is given time for (bytes per second): a 32 MB
/// tool gets 5 s + 128 s on its way to a node behind a ~2 Mbit/s uplink instead of failing after 5 s.
const SLOWEST_LINK_BYTES_PER_SEC: u64 = 256 * 1024;

/// Time allowed for a command of `encoded_len` bytes: [`COMMAND_TIMEOUT`], plus the time its
/// bytes take on the slowest link served.
pub(crate) fn command_timeout(encoded_len: usize) -> Duration {
    let bytes = u64::try_from(encoded_len).unwrap_or(u64::MAX);
    COMMAND_TIMEOUT + Duration::from_millis(bytes.saturating_mul(1000) / SLOWEST_LINK_BYTES_PER_SEC)
}

/// A node's answer: its `error` is a refusal.
pub(crate) fn refusal_or(
    reply: Result<node_reply::Kind, LinkError>,
) -> Result<node_reply::Kind, LinkError> {
    match reply {
        Ok(node_reply::Kind::Error(message)) => Err(LinkError::Refused(message)),
        other => other,
    }
}

/// The answer `reply` carries for command `id` (a reply to another command, or none, is a
/// transport fault), with the node's `error` as a refusal.
pub(crate) fn answer_to(id: u64, reply: NodeReply) -> Result<node_reply::Kind, LinkError> {
    if reply.id != id {
        return Err(LinkError::Transport(format!(
            "reply for command {} to command {id}",
            reply.id
        )));
    }
    refusal_or(
        reply
            .kind
            .ok_or_else(|| LinkError::Transport("empty reply".into())),
    )
}

/// A link over the node's QUIC session: one bi stream per command.
#[derive(Debug)]
pub struct QuicLink {
    connection: quinn::Connection,
    next_id: AtomicU64,
}

impl QuicLink {
    /// Wraps an established session.
    pub fn new(connection: quinn::Connection) -> Self {
        Self {
            connection,
            next_id: AtomicU64::new(1),
        }
    }
}

#[async_trait]
impl NodeLink for QuicLink {
    async fn command_within(
        &self,
        kind: hub_command::Kind,
        at_least: Duration,
    ) -> Result<node_reply::Kind, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let command = HubCommand {
            id,
            kind: Some(kind),
        };
        let timeout = command_timeout(prost::Message::encoded_len(&command)).max(at_least);
        let exchange = async {
            let (mut send, mut recv) = self
                .connection
                .open_bi()
                .await
                .map_err(|e| LinkError::Transport(e.to_string()))?;
            framing::write_frame(&mut send, &command)
                .await
                .map_err(|e| LinkError::Transport(e.to_string()))?;
            let _ = send.finish();
            let reply: NodeReply = framing::read_frame(&mut recv, 1024 * 1024)
                .await
                .map_err(|e| LinkError::Transport(e.to_string()))?;
            answer_to(id, reply)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(LinkError::Timeout(timeout)),
        }
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.connection.rtt())
    }

    fn remote(&self) -> String {
        self.connection.remote_address().to_string()
    }

    fn connection_id(&self) -> u64 {
        self.connection.stable_id() as u64
    }

    fn close(&self, reason: &str) {
        self.connection.close(
            outpost_proto::close_code::SUPERSEDED.into(),
            reason.as_bytes(),
        );
    }
}

/// An in-process node for tests of the code that drives nodes: it answers commands as a node's
/// session does (after `delay`), keeps the components it was sent by digest, and records what it
/// was asked, so a test sees the hub's side of placement, resends and cancels without QUIC. The
/// results of the tasks it accepts come from the test, as a node's result events would.
#[derive(Debug)]
pub struct LoopbackLink {
    /// Simulated one-way delay.
    pub delay: Duration,
    id: u64,
    interval_ms: AtomicU64,
    /// Digests of the components this "node" holds.
    components: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// When set, every `RunTask` is refused with this message.
    refusal: parking_lot::Mutex<Option<String>>,
    /// Every `RunTask` received, in order (component bytes left out).
    run_tasks: parking_lot::Mutex<Vec<RunTask>>,
    /// Every cancel received: (task id, attempt).
    cancels: parking_lot::Mutex<Vec<(String, u32)>>,
}

impl LoopbackLink {
    /// A link answering after `delay`.
    pub fn new(id: u64, delay: Duration) -> Self {
        Self {
            delay,
            id,
            interval_ms: AtomicU64::new(0),
            components: parking_lot::Mutex::default(),
            refusal: parking_lot::Mutex::default(),
            run_tasks: parking_lot::Mutex::default(),
            cancels: parking_lot::Mutex::default(),
        }
    }

    /// The last interval set through this link.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms.load(Ordering::Relaxed)
    }

    /// Refuses every later `RunTask` with `message` (`None`: accepts again).
    pub fn refuse_tasks(&self, message: Option<&str>) {
        *self.refusal.lock() = message.map(str::to_string);
    }

    /// The `RunTask` commands received so far (component bytes left out).
    pub fn run_tasks(&self) -> Vec<RunTask> {
        self.run_tasks.lock().clone()
    }

    /// The cancels received so far: (task id, attempt).
    pub fn cancels(&self) -> Vec<(String, u32)> {
        self.cancels.lock().clone()
    }

    /// Keeps a sent component (by its announced digest) or asks for it, as a node does.
    fn take_component(&self, digest: &str, component: &[u8]) -> RunAnswer {
        let mut components = self.components.lock();
        if !component.is_empty() {
            components.insert(digest.to_string());
        }
        if components.contains(digest) {
            RunAnswer::Accepted
        } else {
            RunAnswer::MissingComponent(digest.to_string())
        }
    }
}

#[async_trait]
impl NodeLink for LoopbackLink {
    async fn command_within(
        &self,
        _kind: hub_command::Kind,
        _at_least: Duration,
    ) -> Result<node_reply::Kind, LinkError> {
        tokio::time::sleep(self.delay * 2).await;
        Err(LinkError::Refused(
            "this in-process node answers only the commands it simulates".into(),
        ))
    }

    async fn ping(&self) -> Result<Duration, LinkError> {
        let start = Instant::now();
        tokio::time::sleep(self.delay * 2).await;
        Ok(start.elapsed())
    }

    async fn set_heartbeat_interval(&self, interval_ms: u32) -> Result<(), LinkError> {
        self.interval_ms
            .store(u64::from(interval_ms), Ordering::Relaxed);
        Ok(())
    }

    async fn set_heartbeat_channel(&self, _use_channel: bool) -> Result<(), LinkError> {
        Ok(())
    }

    async fn run_task(&self, mut command: RunTask) -> Result<RunAnswer, LinkError> {
        tokio::time::sleep(self.delay * 2).await;
        let answer = self.take_component(&command.tool_digest, &command.component);
        command.component = Vec::new();
        self.run_tasks.lock().push(command);
        if let Some(message) = self.refusal.lock().clone() {
            return Err(LinkError::Refused(message));
        }
        Ok(answer)
    }

    async fn install_tool(&self, command: InstallTool) -> Result<RunAnswer, LinkError> {
        tokio::time::sleep(self.delay * 2).await;
        Ok(self.take_component(&command.tool_digest, &command.component))
    }

    async fn cancel_task(&self, task_id: &str, attempt: u32) -> Result<bool, LinkError> {
        self.cancels.lock().push((task_id.to_string(), attempt));
        Ok(true)
    }

    async fn send_credentials(&self, _credentials: NodeCredentials) -> Result<(), LinkError> {
        Ok(())
    }

    async fn agent(&self, _command: AgentCommand) -> Result<bool, LinkError> {
        tokio::time::sleep(self.delay * 2).await;
        Err(LinkError::Refused(
            "this in-process node runs no agents".into(),
        ))
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.delay * 2)
    }

    fn remote(&self) -> String {
        "in-memory".into()
    }

    fn connection_id(&self) -> u64 {
        self.id
    }

    fn close(&self, _reason: &str) {}
}

/// Links by node id.
#[derive(Debug, Default)]
pub struct LinkTable {
    links: RwLock<HashMap<String, Arc<dyn NodeLink>>>,
}

impl LinkTable {
    /// Installs `link` for `node_id`, closing and returning the link it replaces.
    pub fn insert(&self, node_id: &str, link: Arc<dyn NodeLink>) -> Option<Arc<dyn NodeLink>> {
        let old = self.links.write().insert(node_id.into(), link);
        if let Some(old) = &old {
            old.close("superseded by a newer session from the same node");
        }
        old
    }

    /// Removes the link for `node_id` only if it is still the one on `connection_id`.
    pub fn remove_if_current(&self, node_id: &str, connection_id: u64) -> bool {
        let mut links = self.links.write();
        if links
            .get(node_id)
            .is_some_and(|l| l.connection_id() == connection_id)
        {
            links.remove(node_id);
            return true;
        }
        false
    }

    /// Removes and closes the link for `node_id`.
    pub fn remove(&self, node_id: &str, reason: &str) {
        if let Some(link) = self.links.write().remove(node_id) {
            link.close(reason);
        }
    }

    /// The link for `node_id`.
    pub fn get(&self, node_id: &str) -> Option<Arc<dyn NodeLink>> {
        self.links.read().get(node_id).cloned()
    }

    /// Every node with a session, and its link.
    pub fn all(&self) -> Vec<(String, Arc<dyn NodeLink>)> {
        self.links
            .read()
            .iter()
            .map(|(id, link)| (id.clone(), link.clone()))
            .collect()
    }

    /// How many nodes have a session.
    pub fn len(&self) -> usize {
        self.links.read().len()
    }

    /// True when no node has a session.
    pub fn is_empty(&self) -> bool {
        self.links.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_carrying_components_get_time_for_their_bytes() {
        assert_eq!(command_timeout(0), COMMAND_TIMEOUT);
        assert_eq!(command_timeout(200), COMMAND_TIMEOUT);
        assert_eq!(
            command_timeout(32 * 1024 * 1024),
            COMMAND_TIMEOUT + Duration::from_secs(128)
        );
        assert_eq!(
            command_timeout(usize::MAX),
            COMMAND_TIMEOUT + Duration::from_millis(u64::MAX / SLOWEST_LINK_BYTES_PER_SEC)
        );
    }

    #[tokio::test]
    async fn table_keeps_the_newest_link() {
        let table = LinkTable::default();
        let first: Arc<dyn NodeLink> = Arc::new(LoopbackLink::new(1, Duration::ZERO));
        let second: Arc<dyn NodeLink> = Arc::new(LoopbackLink::new(2, Duration::ZERO));
        assert!(table.insert("n", first).is_none());
        assert!(table.insert("n", second).is_some());
        // The old connection closing must not remove the new link.
        assert!(!table.remove_if_current("n", 1));
        assert_eq!(table.get("n").unwrap().connection_id(), 2);
        assert!(table.get("n").unwrap().ping().await.is_ok());
        assert!(table.remove_if_current("n", 2));
        assert!(table.is_empty());
    }
}
