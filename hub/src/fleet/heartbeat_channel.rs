//! The hub's end of the heartbeat channel (format in [`outpost_proto::heartbeat_channel`]).
//!
//! [`ChannelSocket`] wraps the QUIC endpoint's UDP socket: packets whose first byte marks them as
//! channel packets are taken out of each received batch and handed to the [`ChannelTable`]
//! before quinn sees the rest. So a heartbeat costs one authenticated decryption and a protobuf
//! decode on the endpoint's receive path, with no connection wake-up and no acknowledgement, and
//! it shares the QUIC port (one port to open, the same NAT mapping).
//!
//! The table knows one channel per live session (opened by the session, closed when its
//! [`ChannelHandle`] drops), accepts a packet only if its tag verifies under that channel's key and
//! its sequence number is above every one accepted before, and counts each refusal by cause.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use outpost_proto::heartbeat_channel::{self as wire, ChannelError, ChannelKey};
use outpost_proto::v1::Heartbeat;
use parking_lot::RwLock;
use prost::Message;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use ring::rand::SecureRandom as _;

/// Where accepted heartbeats go: the channel's node id and the heartbeat.
pub type HeartbeatSink = Box<dyn Fn(&str, Heartbeat) + Send + Sync>;

#[derive(Debug)]
struct Channel {
    node_id: String,
    key: ChannelKey,
    last_seq: AtomicU64,
    confirmed: AtomicBool,
    first: tokio::sync::Notify,
}

/// Packets seen on the channel, by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChannelCounts {
    /// Accepted and delivered.
    pub accepted: u64,
    /// Too short or of another version.
    pub malformed: u64,
    /// For a channel this hub does not have.
    pub unknown_channel: u64,
    /// Tag did not verify.
    pub unauthentic: u64,
    /// Sequence number not above the last accepted.
    pub replayed: u64,
    /// Authentic but not a heartbeat.
    pub undecodable: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    malformed: AtomicU64,
    unknown_channel: AtomicU64,
    unauthentic: AtomicU64,
    replayed: AtomicU64,
    undecodable: AtomicU64,
}

/// The channels of the live sessions.
#[derive(Default)]
pub struct ChannelTable {
    channels: RwLock<HashMap<u64, Arc<Channel>>>,
    sink: OnceLock<HeartbeatSink>,
    counters: Counters,
}

impl std::fmt::Debug for ChannelTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelTable")
            .field("channels", &self.channels.read().len())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl ChannelTable {
    /// Sets where accepted heartbeats go (once; later calls are ignored and return false).
    pub fn set_sink(&self, sink: HeartbeatSink) -> bool {
        self.sink.set(sink).is_ok()
    }

    /// Opens a channel for `node_id` with a fresh random id; `derive` gives the key for that id.
    pub fn open(
        self: &Arc<Self>,
        node_id: &str,
        derive: impl FnOnce(u64) -> Result<ChannelKey, ChannelError>,
    ) -> Result<ChannelHandle, ChannelError> {
        // The id is drawn and the channel inserted under one write lock, so two sessions never
        // share an id; deriving the key is a few microseconds of HKDF.
        let mut channels = self.channels.write();
        let id = fresh_id(&channels)?;
        let channel = Arc::new(Channel {
            node_id: node_id.to_string(),
            key: derive(id)?,
            last_seq: AtomicU64::new(0),
            confirmed: AtomicBool::new(false),
            first: tokio::sync::Notify::new(),
        });
        channels.insert(id, channel.clone());
        Ok(ChannelHandle {
            table: self.clone(),
            id,
            channel,
        })
    }

    /// Closes every channel of `node_id` (say its key may have leaked): its packets are refused
    /// as unknown from now on, the node is seen offline once its heartbeats are missed, and is
    /// then told to send them as datagrams on its session. Returns how many were closed.
    pub fn close_node(&self, node_id: &str) -> usize {
        let mut channels = self.channels.write();
        let before = channels.len();
        channels.retain(|_, c| c.node_id != node_id);
        before - channels.len()
    }

    /// Channels open now.
    pub fn len(&self) -> usize {
        self.channels.read().len()
    }

    /// True when no channel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Packets seen so far, by outcome.
    pub fn counts(&self) -> ChannelCounts {
        let c = &self.counters;
        ChannelCounts {
            accepted: c.accepted.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            unknown_channel: c.unknown_channel.load(Ordering::Relaxed),
            unauthentic: c.unauthentic.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
        }
    }

    /// Takes one channel packet (decrypted in place): delivers its heartbeat or counts why not.
    pub fn receive(&self, packet: &mut [u8]) -> Result<(), ChannelError> {
        let outcome = self.accept(packet);
        let c = &self.counters;
        let counter = match outcome {
            Ok(()) => &c.accepted,
            Err(ChannelError::Malformed) => &c.malformed,
            Err(ChannelError::UnknownChannel) => &c.unknown_channel,
            Err(ChannelError::Unauthentic) => &c.unauthentic,
            Err(ChannelError::Replayed) => &c.replayed,
            // The last two come from opening a channel, never from a packet.
            Err(
                ChannelError::Undecodable | ChannelError::NoKeyMaterial | ChannelError::NoChannelId,
            ) => &c.undecodable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    fn accept(&self, packet: &mut [u8]) -> Result<(), ChannelError> {
        let (id, seq) = wire::parse_header(packet)?;
        let channel = self
            .channels
            .read()
            .get(&id)
            .cloned()
            .ok_or(ChannelError::UnknownChannel)?;
        if seq <= channel.last_seq.load(Ordering::Acquire) {
            return Err(ChannelError::Replayed);
        }
        let plaintext = channel.key.open(packet)?;
        // Only an authentic packet moves the window; a race with another receiver keeps the max.
        if channel.last_seq.fetch_max(seq, Ordering::AcqRel) >= seq {
            return Err(ChannelError::Replayed);
        }
        let heartbeat = Heartbeat::decode(plaintext).map_err(|_| ChannelError::Undecodable)?;
        if !channel.confirmed.swap(true, Ordering::AcqRel) {
            channel.first.notify_one();
        }
        if let Some(sink) = self.sink.get() {
            sink(&channel.node_id, heartbeat);
        }
        Ok(())
    }
}

/// A random channel id, never 0, not in `channels`.
fn fresh_id(channels: &HashMap<u64, Arc<Channel>>) -> Result<u64, ChannelError> {
    let rng = ring::rand::SystemRandom::new();
    for _ in 0..8 {
        let mut bytes = [0u8; 8];
        rng.fill(&mut bytes)
            .map_err(|_| ChannelError::NoChannelId)?;
        let id = u64::from_be_bytes(bytes);
        if id != 0 && !channels.contains_key(&id) {
            return Ok(id);
        }
    }
    Err(ChannelError::NoChannelId)
}

/// A session's channel; closing it (drop) removes it from the table.
#[derive(Debug)]
pub struct ChannelHandle {
    table: Arc<ChannelTable>,
    id: u64,
    channel: Arc<Channel>,
}

impl ChannelHandle {
    /// The channel id the node puts in its packets.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Resolves when the first authentic heartbeat arrived on the channel.
    pub fn first_heartbeat(&self) -> impl Future<Output = ()> + Send + 'static {
        let channel = self.channel.clone();
        async move {
            if !channel.confirmed.load(Ordering::Acquire) {
                channel.first.notified().await;
            }
        }
    }
}

impl Drop for ChannelHandle {
    fn drop(&mut self) {
        let mut channels = self.table.channels.write();
        if channels
            .get(&self.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.channel))
        {
            channels.remove(&self.id);
        }
    }
}

/// How many sessions the hub moves from the channel to datagrams per window.
///
/// A node seen offline while its session is up is told to send heartbeats as datagrams: right
/// for one node behind a path that drops the channel's packets, wrong for thousands at once
/// (an overloaded hub dropping packets would move them all to the path that costs it three times
/// as much). So only a few moves are allowed per window; a larger wave is left alone.
#[derive(Debug, Clone)]
pub struct FallbackBudget {
    per_window: u32,
    window_ms: i64,
    window_start_ms: i64,
    used: u32,
}

impl FallbackBudget {
    /// `per_window` moves every `window_ms`.
    pub fn new(per_window: u32, window_ms: i64) -> Self {
        Self {
            per_window,
            window_ms: window_ms.max(1),
            window_start_ms: i64::MIN,
            used: 0,
        }
    }

    /// True (and counted) when one more move fits in the window of `now_ms`.
    pub fn allow(&mut self, now_ms: i64) -> bool {
        if now_ms.saturating_sub(self.window_start_ms) >= self.window_ms {
            self.window_start_ms = now_ms;
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

impl Default for FallbackBudget {
    /// 16 moves per 10 s.
    fn default() -> Self {
        Self::new(16, 10_000)
    }
}

/// Takes the channel packets out of one received buffer of `len` bytes holding datagrams of
/// `stride` bytes (the last may be shorter), calling `on_packet` for each; the other datagrams
/// are moved together at the front. Returns the bytes left for QUIC.
pub fn split_channel_packets(
    buf: &mut [u8],
    len: usize,
    stride: usize,
    mut on_packet: impl FnMut(&mut [u8]),
) -> usize {
    let len = len.min(buf.len());
    let stride = if stride == 0 { len } else { stride };
    let (mut read, mut write) = (0, 0);
    while read < len {
        let end = (read + stride).min(len);
        if wire::is_channel_packet(buf[read]) {
            on_packet(&mut buf[read..end]);
        } else {
            if write != read {
                buf.copy_within(read..end, write);
            }
            write += end - read;
        }
        read = end;
    }
    write
}

/// The QUIC endpoint's socket, with channel packets taken out on receive.
#[derive(Debug)]
pub struct ChannelSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    table: Arc<ChannelTable>,
}

impl AsyncUdpSocket for ChannelSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()).take(received) {
            // A batch of only channel packets is left with length 0, which quinn skips.
            meta.len = split_channel_packets(buf, meta.len, meta.stride, |packet| {
                if let Err(e) = self.table.receive(packet) {
                    tracing::trace!(error = %e, "heartbeat channel packet refused");
                }
            });
        }
        Poll::Ready(Ok(received))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The hub's QUIC endpoint on `addr`, its socket shared with the heartbeat channel.
///
/// Peers are not allowed to grease the QUIC fixed bit (so one byte tells channel packets from
/// QUIC), and stateless resets and connection ids are keyed from `reset_secret`: a restarted hub
/// with the same secret resets its predecessor's sessions at their next packet, so nodes reconnect
/// then instead of waiting out the idle timeout.
pub fn server_endpoint(
    config: quinn::ServerConfig,
    addr: SocketAddr,
    reset_secret: &[u8],
    table: Arc<ChannelTable>,
) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let inner = runtime.wrap_udp_socket(socket)?;
    let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let reset_key = ring::hmac::sign(&secret, b"outpost QUIC stateless reset key v1");
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        reset_key.as_ref(),
    )));
    // Connection ids carry a keyed check the endpoint validates before it answers a packet for
    // an unknown connection; the same key across restarts lets the new process recognise its
    // predecessor's ids and send the reset.
    let cid_tag = ring::hmac::sign(&secret, b"outpost QUIC connection id key v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid_tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    endpoint_config
        .grease_quic_bit(false)
        .cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(config),
        Arc::new(ChannelSocket { inner, table }),
        runtime,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// (node id, sequence number) of each delivered heartbeat.
    type Delivered = Arc<Mutex<Vec<(String, u64)>>>;

    fn table_with_sink() -> (Arc<ChannelTable>, Delivered) {
        let table = Arc::new(ChannelTable::default());
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        table.set_sink(Box::new(move |node, hb| {
            sink.lock().push((node.to_string(), hb.seq))
        }));
        (table, got)
    }

    fn heartbeat(node: &str, seq: u64) -> Vec<u8> {
        Heartbeat {
            node_id: node.into(),
            seq,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn accepts_authentic_packets_in_order_and_refuses_the_rest() {
        let (table, got) = table_with_sink();
        let handle = table
            .open("n1", |_| ChannelKey::from_bytes(&[3; 32]))
            .unwrap();
        let key = ChannelKey::from_bytes(&[3; 32]).unwrap();
        let id = handle.id();
        assert_ne!(id, 0);

        let first = key.seal(id, 1, &heartbeat("n1", 1));
        assert_eq!(table.receive(&mut first.clone()), Ok(()));
        // The same packet again, and an older one after a newer: replays.
        assert_eq!(
            table.receive(&mut first.clone()),
            Err(ChannelError::Replayed)
        );
        assert_eq!(
            table.receive(&mut key.seal(id, 5, &heartbeat("n1", 5))),
            Ok(())
        );
        assert_eq!(
            table.receive(&mut key.seal(id, 4, &heartbeat("n1", 4))),
            Err(ChannelError::Replayed)
        );
        // Another key, another channel id, a flipped bit, garbage that authenticates.
        let forged = ChannelKey::from_bytes(&[4; 32]).unwrap();
        assert_eq!(
            table.receive(&mut forged.seal(id, 9, &heartbeat("n1", 9))),
            Err(ChannelError::Unauthentic)
        );
        assert_eq!(
            table.receive(&mut key.seal(id ^ 1, 9, &heartbeat("n1", 9))),
            Err(ChannelError::UnknownChannel)
        );
        let mut flipped = key.seal(id, 9, &heartbeat("n1", 9));
        flipped[20] ^= 1;
        assert_eq!(table.receive(&mut flipped), Err(ChannelError::Unauthentic));
        assert_eq!(
            table.receive(&mut key.seal(id, 10, &[0xff, 0xff, 0xff])),
            Err(ChannelError::Undecodable)
        );
        assert_eq!(
            table.receive(&mut [wire::VERSION, 1, 2]),
            Err(ChannelError::Malformed)
        );
        // A forged packet with a huge sequence number did not move the window.
        assert_eq!(
            table.receive(&mut key.seal(id, 11, &heartbeat("n1", 11))),
            Ok(())
        );

        assert_eq!(
            *got.lock(),
            vec![("n1".into(), 1), ("n1".into(), 5), ("n1".into(), 11)]
        );
        assert_eq!(
            table.counts(),
            ChannelCounts {
                accepted: 3,
                malformed: 1,
                unknown_channel: 1,
                unauthentic: 2,
                replayed: 2,
                undecodable: 1,
            }
        );

        drop(handle);
        assert!(table.is_empty());
        assert_eq!(
            table.receive(&mut key.seal(id, 12, &heartbeat("n1", 12))),
            Err(ChannelError::UnknownChannel)
        );
    }

    #[tokio::test]
    async fn first_heartbeat_resolves_once_one_arrived() {
        let (table, _) = table_with_sink();
        let handle = table
            .open("n1", |_| ChannelKey::from_bytes(&[5; 32]))
            .unwrap();
        let key = ChannelKey::from_bytes(&[5; 32]).unwrap();
        let waiting = tokio::spawn(handle.first_heartbeat());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        table
            .receive(&mut key.seal(handle.id(), 1, &heartbeat("n1", 1)))
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        // Already confirmed: resolves at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), handle.first_heartbeat())
            .await
            .unwrap();
    }

    #[test]
    fn fallback_budget_allows_a_few_moves_per_window() {
        let mut budget = FallbackBudget::new(2, 1_000);
        assert!(budget.allow(0));
        assert!(budget.allow(10));
        assert!(!budget.allow(20), "a wave past the budget is left alone");
        assert!(!budget.allow(999));
        assert!(budget.allow(1_000), "a new window");
        assert!(budget.allow(1_500));
        assert!(!budget.allow(1_999));
    }

    #[test]
    fn split_takes_channel_segments_out_of_a_gro_batch() {
        // Three 4-byte segments and a short last one: QUIC, channel, QUIC, channel(short).
        let mut buf = vec![
            0x41,
            1,
            1,
            1,
            wire::VERSION,
            2,
            2,
            2,
            0xC0,
            3,
            3,
            3,
            wire::VERSION,
            4,
        ];
        let mut taken = Vec::new();
        let left = split_channel_packets(&mut buf, 14, 4, |p| taken.push(p.to_vec()));
        assert_eq!(left, 8);
        assert_eq!(&buf[..8], &[0x41, 1, 1, 1, 0xC0, 3, 3, 3]);
        assert_eq!(
            taken,
            vec![vec![wire::VERSION, 2, 2, 2], vec![wire::VERSION, 4]]
        );

        // A short QUIC segment stays last after a channel segment before it is taken out.
        let mut buf = vec![wire::VERSION, 9, 9, 0x42, 8];
        let left = split_channel_packets(&mut buf, 5, 3, |_| {});
        assert_eq!(&buf[..left], &[0x42, 8]);

        // Only channel packets: nothing left; no GRO (stride = len): one packet.
        let mut buf = vec![wire::VERSION, 0, 0];
        assert_eq!(split_channel_packets(&mut buf, 3, 3, |_| {}), 0);
        let mut buf = vec![0x40, 0, 0];
        assert_eq!(split_channel_packets(&mut buf, 3, 0, |_| {}), 3);
    }
}
