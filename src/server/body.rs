//! The response body that drives a pipeline.
//!
//! Each `poll_frame` pulls upstream bytes, decodes them into events, pushes them through the
//! stage chain inline, and hands the resulting wire bytes to hyper. hyper polls only when it
//! can write, so backpressure reaches the upstream for free; dropping this body (the client
//! went away) drops the upstream response, which closes its connection and stops generation.
//!
//! Timers live here too: the upstream read timeout (longest silence between upstream bytes)
//! and the stages' deadlines (watchdog). No task is spawned per request.
//!
//! Retry invariant: while no byte has been produced for the client, an upstream that breaks
//! (reset, read timeout, closed before finishing) is called again with a fresh chain; once a
//! byte went out, a failure ends the stream with an error event and `[DONE]`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use harmony_filters::upstream::{decode_completion, SseDecoder};
use harmony_filters::{ApiError, Chain, ClientRequest, Compiled, Event, Output, Responder};
use http::header;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::metrics::Metrics;
use crate::upstream::conn::UpstreamBody;
use crate::upstream::pool::Lease;
use crate::upstream::{Call, Outcome};

/// Most a non-streamed upstream JSON answer may hold.
const MAX_JSON_BODY: usize = 64 << 20;

enum Decoder {
    Sse(SseDecoder),
    /// A whole `chat.completion` JSON (an upstream that ignored `stream: true`).
    Json(Vec<u8>),
}

impl Decoder {
    fn for_response<B>(resp: &http::Response<B>) -> Self {
        let ct = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if ct.starts_with("application/json") {
            Decoder::Json(Vec::new())
        } else {
            Decoder::Sse(SseDecoder::new())
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = (Outcome, u32)> + Send>>;

enum Phase {
    Streaming(UpstreamBody),
    Connecting(Connecting),
    Done,
}

/// Per-request facts for the summary line and metrics.
pub struct Summary {
    pub route: String,
    pub mode: &'static str,
    pub model: String,
    pub started: Instant,
}

pub struct PipelineBody {
    phase: Phase,
    decoder: Decoder,
    /// The pipeline's response stages, then the client API's encoder.
    chain: Responder,
    pipeline: Arc<Compiled>,
    meta: ClientRequest,
    call: Arc<Call>,
    /// The hold on the server streaming to us (its `outstanding` count), until the end.
    lease: Option<Lease>,
    retries: u32,
    events: Vec<Event>,
    out: Vec<Output>,
    pending: VecDeque<Bytes>,
    /// Bytes in `pending`.
    pending_bytes: usize,
    /// The upstream had nothing more ready: send what is pending now.
    dry: bool,
    read_timeout: Duration,
    /// When the upstream last sent bytes; the read timer is re-armed from it only when it
    /// fires, which keeps timer updates off the per-frame path.
    last_read: tokio::time::Instant,
    read_timer: Pin<Box<Sleep>>,
    stage_timer: Option<Pin<Box<Sleep>>>,
    wire_sent: bool,
    /// Bytes handed to hyper for the client (the summary line of a disconnect says how far it got).
    bytes_sent: u64,
    finished: bool,
    first_error: Option<ApiError>,
    summary: Summary,
    metrics: Arc<Metrics>,
    trace: Option<(std::path::PathBuf, Vec<u8>)>,
    _guard: Option<crate::server::Slot>,
}

impl PipelineBody {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        resp: http::Response<UpstreamBody>,
        lease: Lease,
        chain: Chain,
        pipeline: Arc<Compiled>,
        meta: ClientRequest,
        call: Arc<Call>,
        retries: u32,
        summary: Summary,
        trace_dir: Option<std::path::PathBuf>,
        guard: Option<crate::server::Slot>,
    ) -> Self {
        let read_timeout = call.upstream.read_timeout;
        let metrics = call.metrics.clone();
        metrics.active_streams.increment(1.0);
        let decoder = Decoder::for_response(&resp);
        let mut body = Self {
            phase: Phase::Streaming(resp.into_body()),
            decoder,
            chain: Responder::new(chain, &meta),
            pipeline,
            meta,
            call,
            lease: Some(lease),
            retries,
            events: Vec::with_capacity(8),
            out: Vec::with_capacity(8),
            pending: VecDeque::new(),
            pending_bytes: 0,
            dry: false,
            read_timeout,
            last_read: tokio::time::Instant::now(),
            read_timer: Box::pin(tokio::time::sleep(read_timeout)),
            stage_timer: None,
            wire_sent: false,
            bytes_sent: 0,
            finished: false,
            first_error: None,
            summary,
            metrics,
            trace: trace_dir.map(|d| (d, Vec::new())),
            _guard: guard,
        };
        body.arm_stage_timer();
        body
    }

    /// The first error the client was told about (for a non-streamed answer's status).
    pub fn error(&self) -> Option<&ApiError> {
        self.first_error.as_ref()
    }

    /// Moves the encoder's bytes to `pending`; notes errors and aborts.
    fn collect(&mut self) -> bool {
        let mut abort = false;
        for out in self.out.drain(..) {
            match out {
                Output::Bytes(b) if !b.is_empty() => {
                    self.wire_sent = true;
                    self.pending_bytes += b.len();
                    self.pending.push_back(b);
                }
                Output::Bytes(_) => {}
                Output::Error(e) => {
                    self.first_error.get_or_insert(e);
                }
                Output::Abort => abort = true,
            }
        }
        abort
    }

    fn push_events(&mut self) {
        self.chain.push_all(&mut self.events, &mut self.out);
        if self.collect() {
            self.end();
        }
    }

    /// Ends the response: flush every stage, drop the upstream.
    fn end(&mut self) {
        if self.finished {
            return;
        }
        self.chain.push_all(&mut self.events, &mut self.out);
        self.chain.end(&mut self.out);
        self.collect();
        self.finished = true;
        if let Phase::Streaming(up) = std::mem::replace(&mut self.phase, Phase::Done) {
            // A complete answer leaves its connection for the next request; any other end
            // closes it, which stops the generation.
            if matches!(&self.decoder, Decoder::Sse(d) if d.is_done() || d.saw_finish()) {
                up.finish_in_background();
            }
        }
        self.lease = None; // the upstream is dropped: its server has a slot free again
        self.stage_timer = None;
    }

    fn on_bytes(&mut self, data: &[u8]) {
        if let Some((_, t)) = &mut self.trace {
            t.extend_from_slice(data);
        }
        match &mut self.decoder {
            Decoder::Sse(d) => d.push(data, &mut self.events),
            Decoder::Json(buf) => {
                if buf.len() + data.len() > MAX_JSON_BODY {
                    self.events.push(Event::Error(ApiError::upstream("upstream answer is larger than 64 MiB")));
                    self.push_events();
                    self.end();
                    return;
                }
                buf.extend_from_slice(data);
            }
        }
        if !self.events.is_empty() {
            self.push_events();
        }
        // `[DONE]` or an error frame: the answer is complete, whatever the connection does next.
        if let Decoder::Sse(d) = &self.decoder {
            if (d.is_done() || d.saw_error()) && !self.finished {
                self.on_upstream_end();
            }
        }
    }

    /// The upstream body ended (cleanly or not).
    fn on_upstream_end(&mut self) {
        // A finish reason means the answer is complete, [DONE] or not.
        let clean = match &self.decoder {
            Decoder::Sse(d) => d.is_done() || d.saw_error() || d.saw_finish(),
            Decoder::Json(_) => true,
        };
        if !clean && self.try_retry() {
            return;
        }
        match &mut self.decoder {
            Decoder::Sse(d) => d.finish(&mut self.events),
            Decoder::Json(buf) => decode_completion(buf, &mut self.events),
        }
        self.end();
    }

    /// The upstream failed: retry if nothing reached the client, else end with the error.
    fn on_failure(&mut self, kind: &'static str, err: ApiError) {
        self.metrics.upstream_error(kind);
        if let Some(l) = &self.lease {
            l.server().failed(kind);
        }
        if self.try_retry() {
            return;
        }
        self.events.push(Event::Error(err));
        self.end();
    }

    fn try_retry(&mut self) -> bool {
        if self.wire_sent || self.retries >= self.call.policy.max_retries {
            return false;
        }
        // Start over with fresh stages; nothing of the broken attempt reached the client,
        // and the trace records only the attempt that answers.
        if let Some((_, t)) = &mut self.trace {
            t.clear();
        }
        self.events.clear();
        self.out.clear();
        self.chain = Responder::new(self.pipeline.new_chain(&self.meta), &self.meta);
        let wait = self.call.policy.delay(self.retries, None);
        self.retries += 1;
        self.metrics.upstream_retries.increment(1);
        let call = self.call.clone();
        let retries = self.retries;
        // The next try goes to another server when the pool has a healthy one.
        let failed = self.lease.take().map(|l| l.server().clone());
        self.phase = Phase::Connecting(Box::pin(call.run(retries, Some(wait), failed)));
        true
    }

    fn arm_stage_timer(&mut self) {
        match self.chain.deadline() {
            Some(d) => {
                let d = tokio::time::Instant::from_std(d);
                match &mut self.stage_timer {
                    // Re-arm only when the deadline moved earlier; a later one is found when
                    // the timer fires early, which keeps timer updates off the per-token path.
                    Some(t) if t.deadline() <= d => {}
                    Some(t) => t.as_mut().reset(d),
                    None => self.stage_timer = Some(Box::pin(tokio::time::sleep_until(d))),
                }
            }
            None => self.stage_timer = None,
        }
    }

    /// Polls the timers; returns true when something happened.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(t) = &mut self.stage_timer {
            if t.as_mut().poll(cx).is_ready() {
                self.stage_timer = None;
                self.chain.fire_deadlines(Instant::now(), &mut self.out);
                if self.collect() {
                    self.end();
                    return true;
                }
                self.arm_stage_timer();
                if let Some(t) = &mut self.stage_timer {
                    let _ = t.as_mut().poll(cx); // register the new deadline's waker
                }
                if !self.pending.is_empty() {
                    return true;
                }
            }
        }
        while matches!(self.phase, Phase::Streaming(_)) && self.read_timer.as_mut().poll(cx).is_ready() {
            let due = self.last_read + self.read_timeout;
            if due > tokio::time::Instant::now() {
                self.read_timer.as_mut().reset(due); // bytes came since it was armed
                continue;
            }
            if matches!(&self.decoder, Decoder::Sse(d) if d.saw_finish()) {
                // The answer was complete; the upstream just never closed or sent [DONE].
                self.on_upstream_end();
                return true;
            }
            let msg = format!("upstream {} sent nothing for {:?}", self.call.upstream.name, self.read_timeout);
            self.on_failure("timeout", ApiError::new(504, "upstream_error", Some("upstream_timeout"), msg));
            return true;
        }
        false
    }

    fn write_trace(&mut self) {
        if let Some((dir, data)) = self.trace.take() {
            // The id may come from the client: keep it to a plain file name.
            let name: String = self.meta.request_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
            let path = dir.join(format!("{name}.sse"));
            let _ = std::thread::Builder::new().name("trace-writer".into()).spawn(move || {
                let _ = std::fs::create_dir_all(&dir);
                // Written aside, then renamed: a trace is seen whole or not at all (a reader
                // that found a half-written file replayed half an answer).
                let partial = path.with_extension("sse.partial");
                if let Err(e) = std::fs::write(&partial, data).and_then(|()| std::fs::rename(&partial, &path)) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write trace");
                    let _ = std::fs::remove_file(&partial);
                }
            });
        }
    }
}

/// The most output gathered into one frame.
const BATCH: usize = 16 << 10;

impl PipelineBody {
    /// Everything pending, as one buffer.
    fn take_pending(&mut self) -> Bytes {
        self.pending_bytes = 0;
        if self.pending.len() == 1 {
            return self.pending.pop_front().unwrap_or_default();
        }
        let mut all = bytes::BytesMut::with_capacity(self.pending.iter().map(Bytes::len).sum());
        for b in self.pending.drain(..) {
            all.extend_from_slice(&b);
        }
        all.freeze()
    }
}

impl Body for PipelineBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    /// Output goes out in bursts: what the upstream has ready now is read and sent as one
    /// frame (one write instead of one per token), up to [`BATCH`] bytes; nothing ever waits
    /// for more to arrive.
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() && (this.finished || this.dry || this.pending_bytes >= BATCH) {
                this.dry = false;
                let b = this.take_pending();
                this.bytes_sent += b.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match &mut this.phase {
                Phase::Done => {
                    this.end();
                }
                Phase::Connecting(fut) => match fut.as_mut().poll(cx) {
                    Poll::Ready((Outcome::Stream(resp, lease), retries)) => {
                        this.retries = retries;
                        this.lease = Some(lease);
                        this.decoder = Decoder::for_response(&resp);
                        this.phase = Phase::Streaming(resp.into_body());
                        this.last_read = tokio::time::Instant::now();
                        this.read_timer.as_mut().reset(this.last_read + this.read_timeout);
                    }
                    Poll::Ready((Outcome::Passthrough(refusal), retries)) => {
                        // Headers may have gone out already: keep the upstream's status for a
                        // non-streamed answer, and say it in the error event of a stream (a
                        // prompt that does not fit in the API's own words).
                        this.retries = retries;
                        let status = refusal.parts.status.as_u16();
                        let e = this.meta.api.api().refusal_in_stream(status, &refusal.body);
                        this.events.push(Event::Error(e));
                        this.end();
                    }
                    Poll::Ready((Outcome::Failed(err), retries)) => {
                        this.retries = retries;
                        this.events.push(Event::Error(err));
                        this.end();
                    }
                    Poll::Pending => {
                        if this.poll_timers(cx) {
                            continue;
                        }
                        if !this.pending.is_empty() {
                            this.dry = true;
                            continue;
                        }
                        return Poll::Pending;
                    }
                },
                Phase::Streaming(incoming) => match Pin::new(incoming).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        this.last_read = tokio::time::Instant::now();
                        if let Ok(data) = frame.into_data() {
                            this.on_bytes(&data);
                            this.arm_stage_timer();
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let msg = format!("upstream {} connection broke: {e}", this.call.upstream.name);
                        this.on_failure("reset", ApiError::upstream(msg));
                    }
                    Poll::Ready(None) => this.on_upstream_end(),
                    Poll::Pending => {
                        if this.poll_timers(cx) {
                            continue;
                        }
                        if !this.pending.is_empty() {
                            this.dry = true;
                            continue;
                        }
                        return Poll::Pending;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.pending.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for PipelineBody {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.active_streams.decrement(1.0);
        let st = self.chain.stats();
        m.final_chunks.increment(st.final_chunks);
        m.tool_chunks.increment(st.tool_chunks);
        m.parser_fallback.increment(st.fallback);
        m.parser_errors.increment(st.parser_errors);
        m.watchdog_aborts.increment(st.watchdog_aborts);
        let duration = self.summary.started.elapsed();
        m.duration.record(duration.as_secs_f64());
        let ttft_ms = st.first_output.map(|t| {
            let d = t.duration_since(self.summary.started);
            m.ttft.record(d.as_secs_f64());
            d.as_millis() as u64
        });
        let status = match (&self.first_error, self.finished) {
            (Some(e), _) => e.status,
            (None, true) => 200,
            (None, false) => 499, // the client went away first
        };
        self.write_trace();
        tracing::info!(
            request_id = %self.meta.request_id,
            route = %self.summary.route,
            model = %self.summary.model,
            api = self.meta.api.api().name(),
            stream = self.meta.stream,
            mode = self.summary.mode,
            status,
            attempts = self.retries + 1,
            ttft_ms,
            duration_ms = duration.as_millis() as u64,
            bytes_sent = self.bytes_sent,
            final_chunks = st.final_chunks,
            tool_calls = st.tool_calls,
            fallback = st.fallback,
            watchdog = st.watchdog_aborts > 0,
            error = self.first_error.as_ref().map(|e| e.message.as_str()),
            "request"
        );
    }
}
