//! The connection's writer, which puts the contract's JSON error into hyper's own answers.
//!
//! hyper answers a request head it cannot parse (a malformed header, a head over its buffer, a
//! URI too long) by itself, before any service runs, with an empty body; it offers no hook for
//! that answer. The contract wants every error as `{"error", "message"}` JSON, so this writer
//! recognises hyper's automatic answer (a `4xx` with `content-length: 0`: every `4xx` the service
//! writes has a JSON body) and writes the JSON error in its place. hyper closes the connection
//! after it, so nothing else follows on the wire.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct JsonErrors<T> {
    inner: T,
    /// The replacement answer, still to be written.
    pending: Vec<u8>,
}

impl<T> JsonErrors<T> {
    pub fn new(inner: T) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
        }
    }
}

/// hyper's automatic answer, as JSON; `None` for anything else.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    // The status first: a `409 sold_out`, the commonest answer under load, leaves at once.
    let (status, code, message) = match head.strip_prefix(b"HTTP/1.1 ")?.get(..3)? {
        b"400" => (
            "400 Bad Request",
            "bad_request",
            "the request could not be parsed (malformed request line or header)",
        ),
        b"414" => ("414 URI Too Long", "uri_too_long", "the URI is too long"),
        b"431" => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request's headers are too large",
        ),
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    if !head[..end + 2]
        .windows(20)
        .any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0\r"))
    {
        return None;
    }
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(json) = replacement(buf) {
            self.pending = json;
            // Written on, or at the next flush; hyper's own bytes are consumed either way.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes each answer from one contiguous buffer, which is what
    // `replacement` inspects.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_4xx_is_replaced() {
        let auto =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let json = String::from_utf8(replacement(auto).unwrap()).unwrap();
        assert!(json.starts_with("HTTP/1.1 431 "), "{json}");
        let (head, body) = json.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{json}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "headers_too_large");
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 42\r\n\r\n{}";
        assert!(replacement(ours).is_none());
        assert!(replacement(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
