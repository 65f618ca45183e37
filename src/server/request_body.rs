//! Request bodies under the operator's limits: at most `max_body_bytes` (a `Content-Length`
//! above it is refused before a byte of the body is read) and at most `body_read_timeout`
//! from the end of the head to the body's last byte, so a client that stops sending can hold
//! neither a connection's task nor a slot of `max_concurrent_requests` for longer.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use harmony_filters::ApiError;
use http::{header, HeaderMap};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};

use crate::upstream::BoxError;

/// Why a body could not be had, as the client's error.
pub fn too_large(max: u64) -> ApiError {
    ApiError::new(413, "invalid_request_error", Some("request_too_large"), format!("request body is larger than max_body_bytes ({max} bytes)"))
}

fn too_slow(deadline: Duration) -> ApiError {
    ApiError::new(408, "invalid_request_error", Some("request_timeout"), format!("the request body did not arrive within body_read_timeout ({deadline:?})"))
}

/// A `Content-Length` above `max`: the answer is known before the body is read.
pub fn declared_too_large(headers: &HeaderMap, max: u64) -> Option<ApiError> {
    let len = headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    (len > max).then(|| too_large(max))
}

/// Reads the whole body: at most `max` bytes, within `deadline`.
pub async fn read<B>(headers: &HeaderMap, body: B, max: u64, deadline: Duration) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if let Some(e) = declared_too_large(headers, max) {
        return Err(e);
    }
    let limited = Limited::new(body, max.min(usize::MAX as u64) as usize);
    match tokio::time::timeout(deadline, limited.collect()).await {
        Err(_) => Err(too_slow(deadline)),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large(max)),
        Ok(Err(e)) => Err(ApiError::new(400, "invalid_request_error", Some("bad_request"), format!("cannot read request body: {e}"))),
    }
}

/// A body streamed on (forwarded requests) that fails once `deadline` has passed before its
/// end: the upstream request is then abandoned instead of waiting on the client forever.
pub struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
    deadline: Duration,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: Duration) -> Self {
        Self { inner, sleep: Box::pin(tokio::time::sleep(deadline)), deadline }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(too_slow(this.deadline).message.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
