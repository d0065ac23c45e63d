//! Accepted connections, bounded: a cap on how many are open, in all and
//! from one peer (address, or IPv6 /64), and a deadline for a new
//! connection's first bytes, so sockets that connect and say nothing
//! cannot hold the slots (over TLS, the handshake's own timeout then
//! bounds the rest of it). Once a connection has spoken, HTTP/2 keepalive
//! and the per-call timeouts take over.

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
        let ip = peer_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            warn_refused(ip);
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

/// The peer a connection counts against: its address, or for IPv6 its
/// /64 (one host commonly holds a whole /64).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("matched")),
        v4 => v4,
    }
}

/// Logs a refused peer, at most once every 10 s (an attack must not
/// flood the log).
fn warn_refused(ip: IpAddr) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(peer = %ip, "connections refused: max_connections_per_peer are open from this peer");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_addresses_and_ipv6_64s() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(peer_key(ip("10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(peer_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            peer_key(ip("2001:db8:1:2:ffff::9")),
            peer_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(
            peer_key(ip("2001:db8:1:3::1")),
            peer_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(peer_key(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
        // Slots are counted per peer and given back.
        let peers = Peers::new(2);
        let a = peers.admit(ip("2001:db8::1")).unwrap();
        let _b = peers.admit(ip("2001:db8::2")).unwrap();
        assert!(peers.admit(ip("2001:db8::3")).is_err());
        assert!(peers.admit(ip("10.0.0.1")).is_ok());
        drop(a);
        assert!(peers.admit(ip("2001:db8::3")).is_ok());
    }
}
