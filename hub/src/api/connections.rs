//! How many gRPC connections the hub holds at once. Each accepted TCP connection takes a permit
//! for as long as it lives; one arriving when none is left is closed at once (it costs the hub
//! an accept and a close, not a TLS handshake or buffers), and logged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// A connection holding one of the hub's connection permits until it closes.
#[derive(Debug)]
pub struct CountedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for CountedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for CountedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// Accepted connections, at most `limit` alive at once.
#[derive(Debug)]
pub struct LimitedIncoming {
    inner: TcpIncoming,
    permits: Arc<Semaphore>,
    limit: usize,
}

impl LimitedIncoming {
    /// `inner`'s connections, `limit` at most alive at once.
    pub fn new(inner: TcpIncoming, limit: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl Stream for LimitedIncoming {
    type Item = std::io::Result<CountedConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => match this.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        return Poll::Ready(Some(Ok(CountedConnection {
                            stream,
                            _permit: permit,
                        })));
                    }
                    Err(_) => {
                        tracing::warn!(
                            peer = ?stream.peer_addr().ok(),
                            limit = this.limit,
                            "gRPC connection refused: the hub holds as many as it may"
                        );
                        drop(stream);
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;
    use tokio_stream::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_a_freed_permit_takes_the_next() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = LimitedIncoming::new(TcpIncoming::from(listener), 2);
        let mut clients = Vec::new();
        let mut held = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            held.push(incoming.next().await.unwrap().unwrap());
        }
        // The third is closed by the hub side as soon as it is accepted, and nothing is yielded.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(300), incoming.next()).await;
        assert!(waited.is_err(), "nothing is handed on at the limit");
        let mut byte = [0u8; 1];
        assert_eq!(
            third.read(&mut byte).await.unwrap(),
            0,
            "refused at the limit"
        );
        // Once a permit is freed, the next connection is accepted.
        held.pop();
        let fourth = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert_eq!(
            accepted.connect_info().remote_addr(),
            fourth.local_addr().ok()
        );
    }
}
