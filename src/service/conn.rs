//! Accepted connections, bounded: a cap on how many are open, and a
//! deadline for a new connection's first bytes (the HTTP/2 preface or the
//! TLS ClientHello), so sockets that connect and say nothing cannot hold
//! file descriptors. Once a connection has spoken, HTTP/2 keepalive and the
//! per-call timeouts take over.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The HTTP/2 client preface is 24 bytes; a ClientHello is longer.
const FIRST_BYTES: usize = 24;

/// A connection holding one of the server's connection slots.
pub struct Guarded {
    inner: TcpStream,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    seen: usize,
    _slot: OwnedSemaphorePermit,
}

/// Wraps an accepted socket, or refuses it when every slot is taken; it has
/// `first_bytes` to start talking.
pub fn admit(
    stream: TcpStream,
    slots: &Arc<Semaphore>,
    first_bytes: Duration,
) -> io::Result<Guarded> {
    let slot = slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| io::Error::other("connection refused: max_connections are open"))?;
    let _ = stream.set_nodelay(true);
    Ok(Guarded {
        inner: stream,
        deadline: Some(Box::pin(tokio::time::sleep(first_bytes))),
        seen: 0,
        _slot: slot,
    })
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(deadline) = &mut self.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection sent nothing in time",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.seen += buf.filled().len() - before;
            if self.seen >= FIRST_BYTES {
                self.deadline = None;
            }
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}
