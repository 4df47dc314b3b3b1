//! Capped capture of a tool's stdout and stderr.
//!
//! A write that would take a stream past its cap keeps what fits, marks the stream as overflowed
//! and traps the call with [`OutputLimitExceeded`], so a flood costs at most the cap in memory.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Largest write the guest is offered at once.
const WRITE_PERMIT: usize = 64 * 1024;

/// Raised (as the trap's error) when a stream goes past its cap.
#[derive(Debug, thiserror::Error)]
#[error("{stream} went past the output limit of {cap} bytes")]
pub struct OutputLimitExceeded {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The cap in bytes.
    pub cap: usize,
}

#[derive(Debug)]
struct Buffer {
    data: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

/// One captured stream; clones share the buffer.
#[derive(Debug, Clone)]
pub struct CappedPipe {
    name: &'static str,
    buffer: Arc<Mutex<Buffer>>,
}

impl CappedPipe {
    /// A pipe named `name` (for messages) that keeps at most `cap` bytes.
    pub fn new(name: &'static str, cap: usize) -> Self {
        Self {
            name,
            buffer: Arc::new(Mutex::new(Buffer {
                data: Vec::new(),
                cap,
                overflowed: false,
            })),
        }
    }

    /// Appends `bytes`, or keeps what fits and reports the overflow.
    fn append(&self, bytes: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut buffer = self.buffer.lock();
        let room = buffer.cap.saturating_sub(buffer.data.len());
        if bytes.len() > room {
            buffer.data.extend_from_slice(&bytes[..room]);
            buffer.overflowed = true;
            return Err(OutputLimitExceeded {
                stream: self.name,
                cap: buffer.cap,
            });
        }
        buffer.data.extend_from_slice(bytes);
        Ok(())
    }

    /// The overflow, if a write went past the cap.
    pub fn overflow(&self) -> Option<OutputLimitExceeded> {
        let buffer = self.buffer.lock();
        buffer.overflowed.then_some(OutputLimitExceeded {
            stream: self.name,
            cap: buffer.cap,
        })
    }

    /// The captured text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().data).into_owned()
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes)
            .map_err(|exceeded| StreamError::Trap(wasmtime::Error::new(exceeded)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map(|()| buf.len())
                .map_err(|exceeded| io::Error::other(exceeded.to_string())),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn keeps_what_fits_and_flags_the_overflow() {
        let mut pipe = CappedPipe::new("stdout", 8);
        pipe.write(Bytes::from_static(b"hello")).unwrap();
        assert!(pipe.overflow().is_none());
        let err = pipe.write(Bytes::from_static(b" world")).unwrap_err();
        assert!(matches!(err, StreamError::Trap(_)));
        assert_eq!(
            pipe.overflow().map(|o| o.to_string()).as_deref(),
            Some("stdout went past the output limit of 8 bytes")
        );
        assert_eq!(pipe.text(), "hello wo");
    }
}
