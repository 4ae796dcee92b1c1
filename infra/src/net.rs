//! Listening sockets with a backlog fit for a crowd.
//!
//! `tokio::net::TcpListener::bind` (through mio) listens with the standard library's backlog of
//! 128. When more clients than that connect at once (`oha -c 256`, or a crowd at the start of a
//! sale) and the accept loop is a moment behind, the kernel drops the overflow's handshakes
//! (`ListenOverflows` in `nstat`), and each of those clients waits for its SYN to be resent: one
//! second, the tail at `p99.9` that the quick start showed for the gateway and the bare server
//! alike. A backlog of [`BACKLOG`] (capped by the kernel at `net.core.somaxconn`) absorbs it.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// Pending connections the kernel may hold for the accept loop.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (port 0: any free port) and listens with [`BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As mio does: a restarted process can rebind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listens_on_a_free_port() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let (_client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        accepted.unwrap();
    }
}
