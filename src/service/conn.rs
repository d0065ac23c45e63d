//! Accepted connections, bounded: a cap on how many are open, in all and
//! from one peer address, and a deadline for a new connection's first
//! exchange, so sockets that connect and say nothing (or start a TLS
//! handshake and stall) cannot hold the slots. Once a connection has
//! spoken, HTTP/2 keepalive and the per-call timeouts take over.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The HTTP/2 client preface is 24 bytes; a ClientHello is longer.
const FIRST_BYTES: usize = 24;

/// Open connections per peer address, bounded.
pub struct Peers {
    open: Mutex<HashMap<IpAddr, usize>>,
    limit: usize,
}

impl Peers {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            limit: limit.max(1),
        })
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> io::Result<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return Err(io::Error::other(
                "connection refused: max_connections_per_peer are open from this address",
            ));
        }
        *n += 1;
        Ok(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

/// One of a peer's connection slots, given back when the connection ends.
struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection holding one of the server's connection slots.
pub struct Guarded {
    inner: TcpStream,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    seen: usize,
    /// Over TLS the deadline also covers the handshake: it ends only with
    /// bytes the client sent after the server first wrote (its second
    /// flight), so a ClientHello followed by silence is cut off too.
    tls: bool,
    wrote: bool,
    _slot: OwnedSemaphorePermit,
    _peer: Option<PeerSlot>,
}

/// Wraps an accepted socket, or refuses it when every slot (or every slot
/// of its peer address) is taken; it has `first_bytes` to start talking.
pub fn admit(
    stream: TcpStream,
    slots: &Arc<Semaphore>,
    peers: &Arc<Peers>,
    first_bytes: Duration,
    tls: bool,
) -> io::Result<Guarded> {
    let slot = slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| io::Error::other("connection refused: max_connections are open"))?;
    let peer = match stream.peer_addr() {
        Ok(addr) => Some(peers.admit(addr.ip())?),
        Err(_) => None,
    };
    let _ = stream.set_nodelay(true);
    Ok(Guarded {
        inner: stream,
        deadline: Some(Box::pin(tokio::time::sleep(first_bytes))),
        seen: 0,
        tls,
        wrote: false,
        _slot: slot,
        _peer: peer,
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
                    "the connection did not finish its first exchange in time",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let got = buf.filled().len() - before;
            let second_flight = self.wrote && got > 0 && self.seen > 0;
            self.seen += got;
            if self.seen >= FIRST_BYTES && (!self.tls || second_flight) {
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
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote |= n > 0;
        }
        polled
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
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote |= n > 0;
        }
        polled
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
