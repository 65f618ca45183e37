//! The upstream connection of one pipeline call, driven from the response body itself.
//!
//! Why not hyper's pooled client here: it runs every connection in a task of its own and
//! hands the response body over a channel that holds one chunk. A model server sends one
//! chunk per token, so each token cost two task switches, and the body, finding nothing
//! ready after each chunk, sent the client one write per token. Polled from the body's own
//! `poll_frame`, the connection decodes everything its last read brought (often hundreds of
//! tokens) in one go, and the body sends them to the client as one write.
//!
//! Data flow: `Conns::request` takes an idle connection of the server (or opens one), sends
//! the request while polling the connection, and returns the response with an
//! [`UpstreamBody`] that polls the connection before each body read. A body read to its end
//! gives its connection back to the idle list; one dropped early (the client went away, the
//! pipeline ended at `[DONE]`) closes it, which is what tells the server to stop generating.
//!
//! Forwarded requests, probes and health checks keep hyper's pooled client: they are few and
//! small.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::upstream::{BoxError, ReqBody};

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// How long an idle connection is kept, and how many per server.
const IDLE_FOR: Duration = Duration::from_secs(30);
const IDLE_MAX: usize = 32;
/// A reused connection closed this soon after the request was sent had been closed by the
/// server while idle: the request is sent again on a new connection.
const RESEND_WITHIN: Duration = Duration::from_millis(50);

/// One HTTP/1.1 connection: the sender and the connection future that does its I/O.
struct Conn {
    tx: http1::SendRequest<ReqBody>,
    /// `None` once it ended. Dropping it is what fails a request still queued on it: a
    /// finished connection kept alive would leave that request waiting forever.
    io: Option<Pin<Box<http1::Connection<Io, ReqBody>>>>,
}

impl Conn {
    /// Polls the connection's I/O; false once it is closed or broken.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(io) = &mut self.io else { return false };
        if io.as_mut().poll(cx).is_pending() {
            return true;
        }
        self.io = None;
        false
    }
}

/// Idle connections by server base URL.
#[derive(Default)]
struct Idle(Mutex<HashMap<String, Vec<(Instant, Conn)>>>);

impl Idle {
    /// The newest idle connection of `base` that is still open and can take a request.
    fn take(&self, base: &str) -> Option<Conn> {
        let mut found = None;
        {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let list = map.get_mut(base)?;
            list.retain(|(since, _)| since.elapsed() < IDLE_FOR);
            while let Some((_, mut c)) = list.pop() {
                // One poll lets the connection notice a close and get ready for a request.
                if c.poll_io(&mut Context::from_waker(Waker::noop())) && c.tx.is_ready() {
                    found = Some(c);
                    break;
                }
            }
        }
        found
    }

    fn give_back(&self, base: &str, c: Conn) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(base.to_owned()).or_default();
        if list.len() < IDLE_MAX {
            list.push((Instant::now(), c));
        }
    }
}

/// The connections of one upstream's pipeline calls.
pub struct Conns {
    connector: HttpsConnector<HttpConnector>,
    idle: Arc<Idle>,
}

/// Why a request got no response head.
pub enum ConnError {
    Connect(BoxError),
    Http(hyper::Error),
}

impl Conns {
    pub fn new(connector: HttpsConnector<HttpConnector>) -> Self {
        Self { connector, idle: Arc::default() }
    }

    async fn open(&self, uri: &Uri) -> Result<Conn, ConnError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(ConnError::Connect)?;
        let io = connector.call(uri.clone()).await.map_err(ConnError::Connect)?;
        let (tx, io) = http1::handshake(io).await.map_err(ConnError::Http)?;
        Ok(Conn { tx, io: Some(Box::pin(io)) })
    }

    /// Sends `make()`'s request to `base` (the server the request's URI names) and waits for
    /// the response head. A reused connection that fails before answering (the server closed
    /// it while idle) is replaced by a new one once.
    pub async fn request(&self, base: &str, make: impl Fn() -> Request<ReqBody>) -> Result<Response<UpstreamBody>, ConnError> {
        let mut reused = self.idle.take(base);
        loop {
            let was_reused = reused.is_some();
            let mut req = make();
            let mut conn = match reused.take() {
                Some(c) => c,
                None => self.open(req.uri()).await?,
            };
            to_origin_form(&mut req);
            let sent_at = Instant::now();
            let mut sent = std::pin::pin!(conn.tx.try_send_request(req));
            let head = std::future::poll_fn(|cx| {
                conn.poll_io(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match head {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let conn = conn.io.is_some().then_some(conn);
                    let body = UpstreamBody { conn, body, ended: false, idle: Some((self.idle.clone(), base.to_owned())) };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(e) => {
                    // Sent again only when the server cannot have started on it: hyper gave the
                    // request back (never written), or the connection closed the moment it
                    // arrived. A connection that breaks later may have cost a generation.
                    let unsent = e.message().is_some();
                    let closed_at_once = e.error().is_incomplete_message() && sent_at.elapsed() < RESEND_WITHIN;
                    if was_reused && (unsent || closed_at_once) {
                        continue;
                    }
                    return Err(ConnError::Http(e.into_error()));
                }
            }
        }
    }
}

/// HTTP/1.1 to a server wants the path in the request line and the host in `Host`: the
/// port only when it is not the scheme's default, never credentials.
fn to_origin_form(req: &mut Request<ReqBody>) {
    let uri = req.uri().clone();
    if let Some(host) = uri.host() {
        let default = if uri.scheme_str() == Some("https") { 443 } else { 80 };
        let value = match uri.port_u16() {
            Some(p) if p != default => format!("{host}:{p}"),
            _ => host.to_owned(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            req.headers_mut().entry(header::HOST).or_insert(v);
        }
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Ok(p) = path.parse() {
        *req.uri_mut() = p;
    }
}

/// An upstream response body that drives its own connection.
pub struct UpstreamBody {
    /// `None` once the connection closed (the body then ends or reports the break).
    conn: Option<Conn>,
    body: Incoming,
    /// The body was read to its end: the connection can serve another request.
    ended: bool,
    idle: Option<(Arc<Idle>, String)>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(c) = &mut this.conn {
            if !c.poll_io(cx) {
                this.conn = None;
            }
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        // A body with a length ends with its last byte: hyper's server stops polling then.
        if matches!(r, Poll::Ready(None)) || (matches!(r, Poll::Ready(Some(Ok(_)))) && this.body.is_end_stream()) {
            this.ended = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl UpstreamBody {
    /// The answer is complete (`[DONE]` came) but the body may not have ended yet: reads the
    /// rest in the background, briefly, so the connection can serve another request. Never
    /// for an answer cut short: closing the connection is what stops the generation.
    pub fn finish_in_background(mut self) {
        if self.ended || self.conn.is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            let rest = async { while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut self).await {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), rest).await;
        });
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let (true, Some(c), Some((idle, base))) = (self.ended, self.conn.take(), self.idle.take()) {
            idle.give_back(&base, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(url: &str) -> (String, String) {
        let mut req = Request::new(crate::upstream::full(Bytes::new()));
        *req.uri_mut() = url.parse().unwrap();
        to_origin_form(&mut req);
        (req.headers()[header::HOST].to_str().unwrap().to_owned(), req.uri().to_string())
    }

    #[test]
    fn the_host_header_names_the_host_and_a_port_only_when_not_the_default() {
        assert_eq!(host_of("http://gpu1:8080/v1/chat/completions"), ("gpu1:8080".into(), "/v1/chat/completions".into()));
        assert_eq!(host_of("https://models.example/v1/completions?x=1"), ("models.example".into(), "/v1/completions?x=1".into()));
        assert_eq!(host_of("https://models.example:443/v1"), ("models.example".into(), "/v1".into()));
        assert_eq!(host_of("http://user:secret@gpu1/v1"), ("gpu1".into(), "/v1".into()));
        assert_eq!(host_of("http://[::1]:8080/completion"), ("[::1]:8080".into(), "/completion".into()));
    }
}
