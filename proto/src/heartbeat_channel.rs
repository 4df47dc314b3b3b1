//! The heartbeat channel: heartbeats as sealed UDP packets on the hub's QUIC port.
//!
//! A heartbeat sent as a QUIC datagram costs the hub a connection wake-up, a decryption, an
//! acknowledgement packet and a timer reset, for a message that needs none of QUIC's services (it
//! is state, not a stream, and a lost one is replaced by the next). The channel keeps QUIC's
//! security and drops the rest:
//!
//! - The hub names a channel in its `HelloAck` (`heartbeat_channel_id`, random, never 0). Both
//!   ends derive the channel key from the session's TLS exporter
//!   ([`channel_key`]: label [`KEY_LABEL`], context the channel id), so only the two ends of that
//!   mTLS session know it, and a new session has a new key.
//! - The node sends each heartbeat (protobuf `Heartbeat`) as one UDP packet to the hub's QUIC port
//!   from its QUIC socket: `[VERSION][channel id: u64 BE][seq: u64 BE][AES-256-GCM ciphertext +
//!   tag]`, nonce = 4 zero bytes ‖ seq, the 17 header bytes as associated data. No answer is sent.
//! - The first byte ([`VERSION`]) has the two high bits clear, which no QUIC packet sent to the
//!   hub has (the hub does not allow its peers to grease the fixed bit), so the hub's socket tells
//!   the two apart by one byte.
//! - The hub accepts a packet only if the channel is known, the tag verifies, and `seq` is greater
//!   than every sequence number accepted on that channel (no replay, no reordering back in time).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// First byte of every channel packet (format version 1). QUIC packets always have 0x40 set.
pub const VERSION: u8 = 0x01;
/// Bytes before the ciphertext: version, channel id, sequence number.
pub const HEADER_LEN: usize = 17;
/// Bytes of the authentication tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// TLS exporter label of the channel key.
pub const KEY_LABEL: &[u8] = b"EXPORTER-outpost-heartbeat-channel-v1";
/// Largest packet a node sends on the channel; a larger heartbeat goes through the QUIC session.
pub const MAX_PACKET: usize = 1200;

/// Why a packet was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Shorter than a header and a tag, or not version 1.
    #[error("not a heartbeat channel packet (bad version or too short)")]
    Malformed,
    /// No channel with that id (a session that ended, or a guess).
    #[error("unknown heartbeat channel")]
    UnknownChannel,
    /// The tag did not verify: tampered with, or sealed with another key.
    #[error("heartbeat packet failed authentication")]
    Unauthentic,
    /// The sequence number is not above the last accepted one.
    #[error("heartbeat packet replayed or out of date")]
    Replayed,
    /// The plaintext is not a heartbeat.
    #[error("heartbeat packet does not decode")]
    Undecodable,
    /// The exporter could not give a usable key (the session's TLS state is gone).
    #[error("no usable key material from the session")]
    NoKeyMaterial,
    /// No channel id could be drawn (the system's random source failed).
    #[error("no channel id: the system random source failed")]
    NoChannelId,
}

/// True when `first_byte` starts a channel packet rather than a QUIC packet.
pub fn is_channel_packet(first_byte: u8) -> bool {
    first_byte & 0xC0 == 0
}

/// The header fields of a packet: channel id and sequence number.
pub fn parse_header(packet: &[u8]) -> Result<(u64, u64), ChannelError> {
    if packet.len() < HEADER_LEN + TAG_LEN || packet[0] != VERSION {
        return Err(ChannelError::Malformed);
    }
    let mut id = [0u8; 8];
    let mut seq = [0u8; 8];
    id.copy_from_slice(&packet[1..9]);
    seq.copy_from_slice(&packet[9..17]);
    Ok((u64::from_be_bytes(id), u64::from_be_bytes(seq)))
}

/// The AEAD key of one channel.
pub struct ChannelKey(LessSafeKey);

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

impl ChannelKey {
    /// A key from 32 bytes of key material.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, ChannelError> {
        UnboundKey::new(&AES_256_GCM, bytes)
            .map(|key| Self(LessSafeKey::new(key)))
            .map_err(|_| ChannelError::NoKeyMaterial)
    }

    /// Seals `plaintext` as packet number `seq` of channel `channel_id`.
    pub fn seal(&self, channel_id: u64, seq: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut packet = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        packet.push(VERSION);
        packet.extend_from_slice(&channel_id.to_be_bytes());
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(plaintext);
        let (header, body) = packet.split_at_mut(HEADER_LEN);
        // Sealing only fails for inputs over AES-GCM's 64 GiB limit.
        if let Ok(tag) = self
            .0
            .seal_in_place_separate_tag(nonce(seq), Aad::from(&*header), body)
        {
            packet.extend_from_slice(tag.as_ref());
        }
        packet
    }

    /// Opens a packet in place and returns its plaintext (the header is not checked against a
    /// channel here: that is the caller's table).
    pub fn open<'p>(&self, packet: &'p mut [u8]) -> Result<&'p [u8], ChannelError> {
        let (_, seq) = parse_header(packet)?;
        let (header, body) = packet.split_at_mut(HEADER_LEN);
        self.0
            .open_in_place(nonce(seq), Aad::from(&*header), body)
            .map(|plain| &*plain)
            .map_err(|_| ChannelError::Unauthentic)
    }
}

fn nonce(seq: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Derives the key of channel `channel_id` from the session's TLS exporter.
pub fn channel_key(
    connection: &quinn::Connection,
    channel_id: u64,
) -> Result<ChannelKey, ChannelError> {
    let mut bytes = [0u8; 32];
    connection
        .export_keying_material(&mut bytes, KEY_LABEL, &channel_id.to_be_bytes())
        .map_err(|_| ChannelError::NoKeyMaterial)?;
    ChannelKey::from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_packet_opens_with_its_key_only() {
        let key = ChannelKey::from_bytes(&[7; 32]).unwrap();
        let mut packet = key.seal(42, 9, b"heartbeat bytes");
        assert!(is_channel_packet(packet[0]));
        assert_eq!(parse_header(&packet), Ok((42, 9)));
        let mut copy = packet.clone();
        assert_eq!(key.open(&mut packet), Ok(&b"heartbeat bytes"[..]));

        let other = ChannelKey::from_bytes(&[8; 32]).unwrap();
        assert_eq!(other.open(&mut copy), Err(ChannelError::Unauthentic));
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let key = ChannelKey::from_bytes(&[1; 32]).unwrap();
        let packet = key.seal(5, 1, b"load and gpus");
        for i in 1..packet.len() {
            let mut bad = packet.clone();
            bad[i] ^= 0x20;
            assert_eq!(
                key.open(&mut bad),
                Err(ChannelError::Unauthentic),
                "byte {i}"
            );
        }
        let mut short = packet[..HEADER_LEN + TAG_LEN - 1].to_vec();
        assert_eq!(key.open(&mut short), Err(ChannelError::Malformed));
        let mut wrong_version = packet.clone();
        wrong_version[0] = 0x02;
        assert_eq!(key.open(&mut wrong_version), Err(ChannelError::Malformed));
    }

    #[test]
    fn quic_packets_are_not_channel_packets() {
        // Long header (0b1...) and short header with the fixed bit (0b01..).
        for first in [0xC0u8, 0xC3, 0x80, 0x40, 0x5F, 0x7F] {
            assert!(!is_channel_packet(first), "{first:#x}");
        }
        assert!(is_channel_packet(VERSION));
    }
}
