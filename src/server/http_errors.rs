//! The errors hyper answers by itself, before the proxy sees a request (a malformed request
//! line, header or `Content-Length`: 400; a URI too long: 414; headers too large: 431), in the
//! error shape of the client's API, like every other error the proxy gives.
//!
//! hyper writes those answers as a bare head with `content-length: 0` and no way to give
//! them a body. [`ShapedErrors`] sits between hyper and the socket: it remembers the request
//! line of what the client is sending (the path picks the API's shape) and, when hyper writes
//! such a head for a request that never reached the handler, writes the same status with a
//! JSON body instead. The handler marks each request it gets (`served`, reset when the next
//! request's bytes arrive), so an answer of the handler's (a forwarded upstream 400 with an
//! empty body, say) is never touched. Cost: a look at the first bytes of each write; no copy,
//! no allocation on the answer path.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use harmony_filters::ApiError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most of a request's first line kept to find its path.
const LINE: usize = 512;

pub struct ShapedErrors<T> {
    inner: T,
    /// The start of the request being read (its request line).
    line: Vec<u8>,
    /// Whether the next bytes read begin a request (after a response was written).
    fresh: bool,
    /// A replacement being written, and how far.
    pending: Option<(Vec<u8>, usize)>,
    /// Set by the handler when the request being read reached it.
    served: Arc<AtomicBool>,
}

impl<T> ShapedErrors<T> {
    pub fn new(inner: T, served: Arc<AtomicBool>) -> Self {
        Self { inner, line: Vec::with_capacity(LINE), fresh: true, pending: None, served }
    }

    /// hyper's own error head (the handler never saw this request), and its status.
    fn hypers_error(&self, buf: &[u8]) -> Option<u16> {
        if self.served.load(Ordering::Relaxed) {
            return None;
        }
        hypers_error(buf)
    }

    fn path(&self) -> &str {
        let line = std::str::from_utf8(&self.line).unwrap_or("");
        let target = line.split(' ').nth(1).unwrap_or("");
        target.split('?').next().unwrap_or("")
    }
}

/// hyper's own error answer: a whole head of a 400, 414 or 431 with `content-length: 0`.
fn hypers_error(buf: &[u8]) -> Option<u16> {
    let status = match buf.get(..12)? {
        b"HTTP/1.1 400" => 400,
        b"HTTP/1.1 414" => 414,
        b"HTTP/1.1 431" => 431,
        _ => return None,
    };
    let ends = buf.ends_with(b"\r\n\r\n");
    let empty = buf.windows(19).any(|w| w.eq_ignore_ascii_case(b"content-length: 0\r\n"));
    (ends && empty).then_some(status)
}

fn replacement(status: u16, path: &str) -> Vec<u8> {
    let (code, message, reason) = match status {
        414 => ("uri_too_long", "the request's URI is longer than this server accepts", "URI Too Long"),
        431 => ("request_header_fields_too_large", "the request's headers are larger than this server accepts", "Request Header Fields Too Large"),
        _ => ("bad_request", "the request could not be read: its request line, a header or Content-Length is malformed", "Bad Request"),
    };
    let e = ApiError::new(status, "invalid_request_error", Some(code), message);
    let body = serde_json::to_vec(&harmony_filters::ClientApi::for_errors(path).error_json(&e)).unwrap_or_default();
    let mut out =
        format!("HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(&body);
    out
}

impl<T: AsyncRead + Unpin> AsyncRead for ShapedErrors<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            if this.fresh {
                this.line.clear();
                this.fresh = false;
                this.served.store(false, Ordering::Relaxed);
            }
            if this.line.len() < LINE && !this.line.contains(&b'\n') {
                let room = LINE - this.line.len();
                this.line.extend_from_slice(&new[..new.len().min(room)]);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> ShapedErrors<T> {
    /// Writes the pending replacement; `Ready(Ok(reported))` once all of it is out.
    fn drive(&mut self, cx: &mut Context<'_>, reported: usize) -> Poll<io::Result<usize>> {
        while let Some((bytes, at)) = &mut self.pending {
            if *at == bytes.len() {
                self.pending = None;
                return Poll::Ready(Ok(reported));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(reported))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ShapedErrors<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            this.fresh = true;
            match this.hypers_error(buf) {
                Some(status) => this.pending = Some((replacement(status, this.path()), 0)),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.drive(cx, buf.len())
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut parts = bufs.iter().filter(|b| !b.is_empty());
        let first = parts.next();
        if this.pending.is_none() {
            this.fresh = true;
            match (first, parts.next()) {
                (Some(b), None) if this.hypers_error(b).is_some() => {
                    let status = this.hypers_error(b).unwrap_or(400);
                    this.pending = Some((replacement(status, this.path()), 0));
                }
                _ => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        this.drive(cx, first.map_or(0, |b| b.len()))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_error_heads_are_recognised() {
        assert_eq!(hypers_error(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n"), Some(431));
        assert_eq!(hypers_error(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 52\r\n\r\n"), None);
        assert_eq!(hypers_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), None);
        let r = String::from_utf8(replacement(414, "/v1/messages")).unwrap();
        assert!(r.starts_with("HTTP/1.1 414 URI Too Long\r\n") && r.contains("\"type\":\"error\""), "{r}");
    }
}
