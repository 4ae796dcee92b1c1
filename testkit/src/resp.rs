//! Just enough of the Redis protocol to send a server, a Sentinel or a cluster node one command
//! over a plain TCP connection, without a client that would reconnect, retry or follow a
//! failover on its own.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Whether the server at `addr` (on 127.0.0.1, or in a [`Host`](crate::Host)) answers `PING`
/// with `+PONG` within 2 s.
pub(crate) async fn ping_at(addr: SocketAddr) -> bool {
    matches!(command_at(addr, &["PING"]).await, Some(Resp::Simple(s)) if s == "PONG")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// One reply of the Redis protocol (RESP2, what a connection speaks until `HELLO 3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

/// Sends one command over a new TCP connection and reads its reply; `None` when the server does
/// not answer within 2 s (down, paused, or not Redis).
pub(crate) async fn command(port: u16, args: &[&str]) -> Option<Resp> {
    command_at(loopback(port), args).await
}

/// [`command`] to a server on another address (one in a [`Host`](crate::Host)).
pub(crate) async fn command_at(addr: SocketAddr, args: &[&str]) -> Option<Resp> {
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(request, "${}\r\n{a}\r\n", a.len());
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, _)) = parse_resp(&buf) {
                return Some(reply);
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// Parses one reply at the start of `buf`: the reply and its length in bytes, or `None` while it
/// is incomplete (or malformed).
fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(buf.get(1..end)?).ok()?;
    let after = end + 2;
    match buf[0] {
        b'+' => Some((Resp::Simple(line.into()), after)),
        b'-' => Some((Resp::Error(line.into()), after)),
        b':' => Some((Resp::Int(line.parse().ok()?), after)),
        b'$' => {
            let Ok(len) = usize::try_from(line.parse::<i64>().ok()?) else {
                return Some((Resp::Bulk(None), after));
            };
            let body = buf.get(after..after + len)?;
            if buf.get(after + len..after + len + 2)? != b"\r\n" {
                return None;
            }
            let text = String::from_utf8_lossy(body).into_owned();
            Some((Resp::Bulk(Some(text)), after + len + 2))
        }
        b'*' => {
            let Ok(count) = usize::try_from(line.parse::<i64>().ok()?) else {
                return Some((Resp::Array(None), after));
            };
            let mut items = Vec::with_capacity(count.min(1024));
            let mut at = after;
            for _ in 0..count {
                let (item, used) = parse_resp(buf.get(at..)?)?;
                items.push(item);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        _ => None,
    }
}
