//! Length-delimited protobuf frames on QUIC streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of one encoded message. The
//! length is checked against a cap before anything is read, so a peer cannot make the reader
//! allocate more than [`MAX_FRAME_LEN`] bytes (or a smaller cap the caller names).

use prost::Message;

/// Largest frame accepted by default: 4 MiB.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly before a frame started.
    #[error("stream closed")]
    Closed,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The announced length is larger than the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Cap in force.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected message.
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Reading from the QUIC stream failed.
    #[error("reading stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing to the QUIC stream failed.
    #[error("writing stream: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Encodes `message` as one frame (length prefix included).
pub fn encode_frame<M: Message>(message: &M) -> Vec<u8> {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    // A message larger than u32::MAX cannot be built in practice; saturate rather than wrap.
    let prefix = u32::try_from(len).unwrap_or(u32::MAX);
    buf.extend_from_slice(&prefix.to_be_bytes());
    // Encoding into a Vec cannot run out of capacity.
    let _ = message.encode(&mut buf);
    buf
}

/// Decodes a whole frame held in memory (length prefix included); the inverse of [`encode_frame`].
pub fn decode_frame<M: Message + Default>(bytes: &[u8], max: usize) -> Result<M, FrameError> {
    let (prefix, body) = bytes.split_at_checked(4).ok_or(FrameError::Truncated)?;
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if body.len() != len {
        return Err(FrameError::Truncated);
    }
    Ok(M::decode(body)?)
}

/// Writes one frame to a QUIC send stream.
pub async fn write_frame<M: Message>(
    send: &mut quinn::SendStream,
    message: &M,
) -> Result<(), FrameError> {
    send.write_all(&encode_frame(message)).await?;
    Ok(())
}

/// Reads one frame from a QUIC receive stream, refusing frames larger than `max` bytes.
pub async fn read_frame<M: Message + Default>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<M, FrameError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(FrameError::Closed),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    Ok(M::decode(body.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{HubCommand, Ping, hub_command};

    #[test]
    fn frame_round_trip() {
        let cmd = HubCommand {
            id: 7,
            kind: Some(hub_command::Kind::Ping(Ping { sent_at_us: 42 })),
        };
        let bytes = encode_frame(&cmd);
        assert_eq!(bytes.len(), 4 + cmd.encoded_len());
        let back: HubCommand = decode_frame(&bytes, MAX_FRAME_LEN).unwrap();
        assert_eq!(back, cmd);
    }

    #[test]
    fn oversized_frame_is_refused_before_reading() {
        let mut bytes = (u32::MAX).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        let err = decode_frame::<HubCommand>(&bytes, MAX_FRAME_LEN).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    max: MAX_FRAME_LEN,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        assert!(matches!(
            decode_frame::<HubCommand>(&[0, 0], 16),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            decode_frame::<HubCommand>(&[0, 0, 0, 5, 1], 16),
            Err(FrameError::Truncated)
        ));
        let garbage = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_frame::<HubCommand>(&garbage, 16),
            Err(FrameError::Decode(_))
        ));
    }
}
