//! The HTTP server: accept loop, routing, and the handlers.
//!
//! A request takes one config snapshot when it starts and keeps it to its end, so a reload
//! never changes a response in flight.

pub mod body;
pub mod http_errors;
mod models;
pub mod reload;
pub mod request_body;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use harmony_filters::api::{EdgeEnv, Failure};
use harmony_filters::work::CpuPool;
use harmony_filters::{ApiError, ClientApi, ClientRequest, RequestMeta};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use openai_harmony::HarmonyEncoding;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::pipeline::{RouteMatch, Snapshot};
use crate::server::body::{PipelineBody, Summary};
use crate::upstream::pool::Lease;
use crate::upstream::Upstream;
use crate::upstream::{BoxError, Call, Outcome};

pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

pub struct AppState {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub prometheus: Option<PrometheusHandle>,
    pub encoding: HarmonyEncoding,
    pub inflight: Arc<AtomicUsize>,
    /// Where the request phase computes (decoding, history repair, rendering, writing the
    /// upstream body): the runtime's blocking threads, one job per core at once, so a flood
    /// of large prompts queues instead of taking every core from the workers that drive the
    /// streams. What waits (store reads) is awaited on the workers.
    pub cpu: CpuPool,
}

impl AppState {
    /// The CPU pool for this machine: one permit per core.
    pub fn cpu_pool() -> CpuPool {
        CpuPool::new(Arc::new(tokio::sync::Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))))
    }
}

/// Counts a request in flight until dropped (with the response body, for streams).
pub struct InflightGuard(Arc<AtomicUsize>);

/// A request's slot of `max_concurrent_requests`, shared by what works for it: the handler,
/// work it sent off the workers (which goes on when a client leaves), the response body.
pub type Slot = Arc<InflightGuard>;

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn body_of(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

fn json_response(status: u16, v: &Value) -> Response<RespBody> {
    let mut r = Response::new(body_of(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The error as an OpenAI-shaped answer; a 503 (the proxy or a pool is full) says when to
/// come back. It carries the error ([`ProxyError`]) so that [`handle`] can give it the
/// shape of the request's client API.
pub fn error_response(e: &ApiError) -> Response<RespBody> {
    let mut r = json_response(e.status, &e.to_json());
    if e.status == 503 {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r.extensions_mut().insert(ProxyError(e.clone()));
    r
}

/// An error answer the proxy made (not an upstream's, not an encoder's).
#[derive(Clone)]
pub struct ProxyError(pub ApiError);

/// The client's API key: `Authorization: Bearer …`, or Anthropic's `x-api-key`.
fn client_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(str::trim)
}

/// An upstream body passed through as is, holding its server's slot until it ends.
struct Leased<B> {
    body: B,
    _lease: Lease,
}

impl<B: http_body::Body<Data = Bytes, Error = hyper::Error> + Unpin> http_body::Body for Leased<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx).map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn err(status: u16, kind: &'static str, code: Option<&'static str>, msg: impl Into<String>) -> Response<RespBody> {
    error_response(&ApiError::new(status, kind, code, msg))
}

/// Serves until `shutdown` resolves, then lets in-flight connections finish for `grace`.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: impl Fn() -> Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff.reset();
                    x
                }
                Err(e) => {
                    // Out of descriptors (or another transient failure): wait for streams to
                    // end instead of spinning on a listener that stays readable.
                    let wait = backoff.failed(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut shutdown => break,
                    }
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        // Set whenever a request of this connection reaches the handler: an error head written
        // while it is unset is hyper's own (see `http_errors`).
        let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served_by_handler = served.clone();
        let svc = service_fn(move |req| {
            served_by_handler.store(true, Ordering::Relaxed);
            let state = state.clone();
            // Boxed: hyper keeps the allocation of a connection's request future for as long
            // as the connection lives, and a streamed answer lives long; the handler's future
            // is large (it spans the upstream call), so it is freed as soon as it is done.
            let fut = Box::pin(handle(state, req, peer));
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let builder = {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
            b
        };
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(crate::server::http_errors::ShapedErrors::new(stream, served)), svc);
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = fut.await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(crate::server::http_errors::ShapedErrors::new(tls_stream, served)), svc);
                            let _ = watcher.watch(conn).await;
                        }
                        _ => tracing::debug!(%peer, "TLS handshake failed"),
                    }
                });
            }
        }
    }
    drop(listener);
    let grace = grace();
    tracing::info!(grace_s = grace.as_secs_f64(), "shutting down: letting in-flight requests finish");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("shutdown grace ran out; closing remaining connections");
    }
}

/// Accept failures: a doubling wait (10 ms up to 1 s) and one log line per second at most.
#[derive(Default)]
struct AcceptBackoff {
    wait: Duration,
    failures: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.wait = Duration::ZERO;
    }

    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.failures += 1;
        self.wait = (self.wait * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        if self.last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            let out_of_fds = matches!(e.raw_os_error(), Some(23 | 24)); // ENFILE, EMFILE
            tracing::warn!(error = %e, failures = self.failures, backoff_ms = self.wait.as_millis() as u64, out_of_file_descriptors = out_of_fds, "accept failed; backing off");
            self.failures = 0;
            self.last_log = Some(Instant::now());
        }
        self.wait
    }
}

/// Raises the soft limit on open files to the hard limit (most services start at 1024, which
/// holds only a few hundred streams: each takes a client and an upstream socket). Returns
/// (before, after), or `None` where there is no such limit.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: a plain syscall on a struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        let before = lim.rlim_cur as u64;
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                return Some((before, lim.rlim_max as u64));
            }
        }
        Some((before, before))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| harmony_filters::stage::random_id("req_", 20))
}

/// Set on a response whose body writes the request's summary line itself when it ends
/// (pipeline answers: they know tokens, time to first token, bytes sent).
#[derive(Clone, Copy)]
pub struct SummaryByBody;

/// What the summary line of a request that ended before a pipeline body says about it.
#[derive(Clone)]
pub struct RouteInfo {
    pub route: String,
    pub model: String,
    pub attempts: u32,
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>, _peer: SocketAddr) -> Response<RespBody> {
    let started = Instant::now();
    let rid = request_id(req.headers());
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let snap = state.snapshot.load_full();
    let mut resp = dispatch(&state, snap, req, &rid).await;
    // The proxy's own errors in the shape of the client's API (the API of the path).
    if let Some(ProxyError(e)) = resp.extensions().get::<ProxyError>().cloned() {
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        resp = Response::from_parts(parts, body_of(serde_json::to_vec(&ClientApi::for_errors(&path).error_json(&e)).unwrap_or_default()));
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // One summary line per request, whatever its fate; probes and metrics scrapes are
    // debug-level so they do not drown the log.
    if resp.extensions().get::<SummaryByBody>().is_none() {
        let info = resp.extensions().get::<RouteInfo>();
        let route = info.map(|i| i.route.as_str()).unwrap_or(if path.starts_with("/v1/") { "forward" } else { "-" });
        let status = resp.status().as_u16();
        let duration_ms = started.elapsed().as_millis() as u64;
        let (model, attempts) = (info.map(|i| i.model.as_str()).unwrap_or(""), info.map(|i| i.attempts).unwrap_or(1));
        if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
            tracing::debug!(request_id = %rid, method = %method, path = %path, status, duration_ms, "request");
        } else if status >= 500 {
            tracing::warn!(request_id = %rid, method = %method, path = %path, route, model, status, attempts, duration_ms, "request");
        } else {
            tracing::info!(request_id = %rid, method = %method, path = %path, route, model, status, attempts, duration_ms, "request");
        }
    }
    resp
}

async fn dispatch(state: &Arc<AppState>, snap: Arc<Snapshot>, req: Request<Incoming>, rid: &str) -> Response<RespBody> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return json_response(200, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => return readyz(&snap).await,
        (&Method::GET, "/metrics") => {
            return match (&state.prometheus, snap.config.server.metrics.0) {
                (Some(h), true) => {
                    let mut r = Response::new(body_of(h.render()));
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                    r
                }
                _ => err(404, "invalid_request_error", Some("not_found"), "metrics are disabled"),
            };
        }
        (_, "/healthz" | "/readyz" | "/metrics") => return err(405, "invalid_request_error", Some("method_not_allowed"), "use GET"),
        _ => {}
    }
    if has_dot_segment(&path) {
        return err(
            400,
            "invalid_request_error",
            Some("invalid_path"),
            "the path has a `.` or `..` segment (plain or percent-encoded); paths are not normalized, send the path itself",
        );
    }
    if !path.starts_with("/v1/") {
        return err(404, "invalid_request_error", Some("not_found"), format!("no such endpoint: {path}"));
    }
    let keys = &snap.config.server.api_keys;
    if !keys.is_empty() {
        let given = client_key(req.headers());
        if !given.is_some_and(|g| keys.iter().any(|k| constant_time_eq(k.as_bytes(), g.as_bytes()))) {
            return err(401, "invalid_request_error", Some("invalid_api_key"), "missing or invalid API key (Authorization: Bearer …, or x-api-key)");
        }
    }
    // What a client API answers itself (stored responses, count_tokens).
    if let Some((api, own)) = ClientApi::own(&path) {
        return own_request(state, &snap, api, own, req).await;
    }
    if snap.has_route_path(&path) {
        if req.method() != Method::POST {
            return err(405, "invalid_request_error", Some("method_not_allowed"), format!("{path} takes POST"));
        }
        return pipeline_request(state, snap.clone(), req, rid).await;
    }
    // A forwarded body streams on: its slot is taken before (and given back at its deadline).
    let _slot = match admit(state, &snap) {
        Ok(g) => g,
        Err(r) => return r,
    };
    if path == "/v1/models" && req.method() == Method::GET {
        return models::answer(&snap, req, rid.to_owned()).await;
    }
    forward(&snap, req, rid).await
}

/// The bytes of what goes upstream, as its upstream edge writes them.
fn upstream_bytes(up: &harmony_filters::UpstreamRequest) -> Bytes {
    Bytes::from(serde_json::to_vec(&up.body()).unwrap_or_default())
}

/// A path an upstream (or a server in front of it) may resolve to another endpoint: a `.` or
/// `..` segment, plain or percent-encoded, also with `;parameters` (`..;/`); or an encoded
/// `/` or `\\` (`%2f`, `%5c`), which a server that decodes before it resolves turns into
/// segments. Such paths are refused, never forwarded.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let decoded = percent_decode(seg);
        if decoded.contains(&b'/') || decoded.contains(&b'\\') {
            return true;
        }
        let name = decoded.split(|&b| b == b';').next().unwrap_or(&[]);
        name == b"." || name == b".."
    })
}

/// `s` with every `%XY` decoded (a malformed escape is kept as it is).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The concurrency limit: a guard while under it, a 503 beyond it.
#[allow(clippy::result_large_err)] // the error is the response itself, built once
fn admit(state: &Arc<AppState>, snap: &Snapshot) -> Result<Slot, Response<RespBody>> {
    let n = state.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    let guard = Arc::new(InflightGuard(state.inflight.clone()));
    if let Some(max) = snap.config.server.max_concurrent_requests {
        if n > max {
            return Err(err(503, "server_error", Some("overloaded"), format!("more than {max} requests in flight; retry shortly")));
        }
    }
    Ok(guard)
}

/// With `api_keys` set, a digest of the client's key: state kept between requests
/// (reasoning memory, also in a Redis shared by replicas) is never shared across keys. `None`
/// when keys are not checked.
fn auth_scope(snap: &Snapshot, headers: &HeaderMap) -> Option<String> {
    if snap.config.server.api_keys.is_empty() {
        return None;
    }
    Some(harmony_filters::stage::key_scope(client_key(headers)?))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a client edge may use for one request: `store`, the client's key `scope`, `cpu`.
fn edge_env(snap: &Snapshot, store: Arc<dyn harmony_filters::store::StateStore>, scope: String, cpu: CpuPool) -> EdgeEnv {
    EdgeEnv { store, scope, sealer: snap.sealer.clone(), max_conversation_bytes: snap.config.server.max_body_bytes, cpu }
}

/// Reads a request body under the server's limits (`max_body_bytes`, `body_read_timeout`).
async fn read_body(snap: &Snapshot, req: Request<Incoming>) -> Result<Bytes, Response<RespBody>> {
    let server = &snap.config.server;
    let (parts, body) = req.into_parts();
    crate::server::request_body::read(&parts.headers, body, server.max_body_bytes, server.body_read_timeout.0).await.map_err(|e| error_response(&e))
}

/// `POST` on a routed path, whatever its client API: the API's edge decodes it, then the
/// request phase, the upstream call, the response pipeline (which ends in the API's encoder).
async fn pipeline_request(state: &Arc<AppState>, snap: Arc<Snapshot>, req: Request<Incoming>, rid: &str) -> Response<RespBody> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let auth_scope = auth_scope(&snap, req.headers());
    // The body first, then a slot: a client that stalls its body holds no slot meanwhile.
    let raw = match read_body(&snap, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let guard = match admit(state, &snap) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let body: Value = match serde_json::from_slice(&raw) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return err(400, "invalid_request_error", Some("invalid_json"), "request body must be a JSON object"),
        Err(e) => return err(400, "invalid_request_error", Some("invalid_json"), format!("request body is not valid JSON: {e}")),
    };
    // The client's API is an edge: its request becomes the conversation the stages work on.
    let api = ClientApi::for_path(&path);
    let model = body.get("model").and_then(Value::as_str).unwrap_or("").to_owned();
    let found = match snap.route(&path, &model) {
        RouteMatch::Found(r) => Some(r),
        _ => None,
    };
    // What the request computes runs off the workers, holding its slot until done (it goes
    // on when a client leaves); what it waits on (the store) is awaited here.
    let cpu = state.cpu.holding(guard.clone());
    let env = edge_env(&snap, snap.store_of(found), auth_scope.clone().unwrap_or_default(), cpu.clone());
    let decoded = match api.decode(body, &env).await {
        Ok(d) => d,
        Err(e) => return error_response(&e),
    };
    let Some(route) = found else {
        return err(404, "invalid_request_error", Some("model_not_found"), format!("no route for model {model:?} on {path}"));
    };
    for note in &decoded.notes {
        tracing::debug!(request_id = rid, api = api.name(), "{note}");
    }
    let (mut conversation, stream) = (decoded.conversation, decoded.stream);
    // The route's say: the name its server serves, the effort of a request that says none.
    if let Some(m) = &route.upstream_model {
        conversation.model = m.clone();
    }
    if conversation.controls.reasoning_effort.is_none() {
        conversation.controls.reasoning_effort = route.reasoning_effort.clone();
    }
    let mut meta = RequestMeta::new(&model, stream);
    meta.request_id = rid.to_owned();
    meta.auth_scope = auth_scope;
    let api_ctx = decoded.ctx;
    state.metrics.request(&route.label, route.pipeline.mode, stream, api.name());

    // The request phase: its stages that compute (history repair, rendering) run off the
    // workers, those that wait (a store read, Redis included) are awaited here, so that no
    // request's size or store latency stalls the streams the workers drive. What goes
    // upstream always streams (retry, watchdog and true streaming need it) and asks for
    // usage, shown to the client only when it asked: the upstream edges say so, and write
    // the body in the phase's last job, off the workers too.
    let phase = route.pipeline.request_phase(&meta, conversation, &cpu, upstream_bytes).await;
    let (up, body) = match phase {
        Ok((up, body)) => {
            meta.prompt_tokens = up.prompt_tokens;
            meta.prefill = up.prefill.clone();
            (up, body)
        }
        Err(e) => {
            let mut r = error_response(&e);
            r.extensions_mut().insert(RouteInfo { route: route.label.clone(), model: model.clone(), attempts: 0 });
            return r;
        }
    };
    let mut call = Arc::new(Call {
        upstream: route.upstream.clone(),
        endpoint: up.endpoint(),
        body,
        policy: route.pipeline.retry,
        request_id: rid.to_owned(),
        metrics: state.metrics.clone(),
    });
    let (mut outcome, mut retries) = call.clone().run(0, None, None).await;
    // An output limit the server refuses as past its context, saying the most it takes
    // (vLLM's `--max-model-len`): asked again with that, the conversation's limit lowered
    // and said again by the upstream edge. A limit is a most, which the server's smaller one
    // keeps (Claude Code asks for 32k tokens of any server; the proxy asks for gpt-oss's
    // whole context when the client says none).
    let takes = match &outcome {
        Outcome::Passthrough(refusal) => harmony_filters::upstream::overflow::output_limit(&refusal.body),
        _ => None,
    };
    if let Some(n) = takes {
        let again = cpu.run(move || up.with_output_limit(n).map(|a| (a.endpoint(), upstream_bytes(&a)))).await;
        if let Some((endpoint, body)) = again {
            tracing::debug!(request_id = rid, "the server takes fewer output tokens; asking again with its limit");
            // The call the response body retries, if it must, is this one.
            call = Arc::new(call.with_body(endpoint, body));
            (outcome, retries) = call.clone().run(retries + 1, None, None).await;
        }
    }
    if !matches!(outcome, Outcome::Stream(..)) {
        state.metrics.duration.record(started.elapsed().as_secs_f64());
    }
    let info = RouteInfo { route: route.label.clone(), model: model.clone(), attempts: retries + 1 };
    let (resp, lease) = match outcome {
        Outcome::Stream(r, lease) => (r, lease),
        Outcome::Passthrough(crate::upstream::Refusal { parts, body, whole }) => {
            // The upstream's refusal (a 4xx, its first MiB read), as the client's API says it.
            let status = parts.status.as_u16();
            let mut r = match api.upstream_refusal(status, &body, whole, stream) {
                Some(said) => {
                    tracing::debug!(request_id = rid, upstream_status = status, "the model server refused the request; said in the API's shape");
                    said_failure(said, meta, api_ctx)
                }
                None => refusal_as_sent(parts, body),
            };
            r.extensions_mut().insert(info);
            return r;
        }
        Outcome::Failed(e) => {
            tracing::debug!(request_id = rid, error = %e.message, "upstream call failed");
            let mut r = said_failure(api.failure(e, stream), meta, api_ctx);
            r.extensions_mut().insert(info);
            return r;
        }
    };
    let summary = Summary { route: route.label.clone(), mode: route.pipeline.mode, model, started };
    let trace_dir = snap.config.server.trace_dir.clone();
    let mut pbody = PipelineBody::new(
        resp,
        lease,
        route.pipeline.new_chain(&meta),
        route.pipeline.clone(),
        ClientRequest { meta, api: api_ctx },
        call,
        retries,
        summary,
        trace_dir,
        Some(guard),
    );
    if stream {
        let mut r = Response::new(pbody.map_err(|e| match e {}).boxed_unsync());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r.extensions_mut().insert(SummaryByBody);
        return r;
    }
    // Not streamed: run the pipeline to its end here, so a failure can still be a status.
    let mut bytes = Vec::new();
    while let Some(frame) = pbody.frame().await {
        if let Ok(Ok(data)) = frame.map(|f| f.into_data()) {
            bytes.extend_from_slice(&data);
        }
    }
    let status = pbody.error().map(|e| e.status).unwrap_or(200);
    drop(pbody); // writes the summary line
    let mut r = Response::new(body_of(bytes));
    r.extensions_mut().insert(SummaryByBody);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == 503 {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// A request a client API answers itself ([`harmony_filters::api::Own`]): its body read
/// (a `POST`), a slot taken, then the API's answer (awaited: it may wait on the store, and
/// computes off the workers, as a decoder does).
async fn own_request(state: &Arc<AppState>, snap: &Snapshot, api: ClientApi, own: harmony_filters::api::Own, req: Request<Incoming>) -> Response<RespBody> {
    let method = req.method().as_str().to_owned();
    if !own.methods().contains(&method.as_str()) {
        return err(405, "invalid_request_error", Some("method_not_allowed"), format!("{} takes {}", req.uri().path(), own.methods().join(" or ")));
    }
    let scope = auth_scope(snap, req.headers()).unwrap_or_default();
    let body = if method == "POST" {
        let raw = match read_body(snap, req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        match serde_json::from_slice(&raw) {
            Ok(v @ Value::Object(_)) => Some(v),
            Ok(_) => return err(400, "invalid_request_error", Some("invalid_json"), "request body must be a JSON object"),
            Err(e) => return err(400, "invalid_request_error", Some("invalid_json"), format!("request body is not valid JSON: {e}")),
        }
    } else {
        None
    };
    let slot = match admit(state, snap) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let env = edge_env(snap, snap.store_for_api(api), scope, state.cpu.holding(slot));
    let answered = api.answer(&own, &method, body, &env, &state.encoding).await;
    match answered {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    }
}

/// An upstream answer the client should see as is (status, content type, body streamed).
/// An upstream's refusal, read whole, passed on with its status, type and `Retry-After`.
fn refusal_as_sent(parts: http::response::Parts, body: Bytes) -> Response<RespBody> {
    let mut r = Response::new(body_of(body));
    *r.status_mut() = parts.status;
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}

/// A failure before any output, as the client's API said to say it.
fn said_failure(f: Failure, meta: RequestMeta, api: harmony_filters::api::ApiContext) -> Response<RespBody> {
    match f {
        Failure::Status(e) => error_response(&e),
        Failure::InStream(e) => failed_stream(&ClientRequest { meta, api }, e),
    }
}

/// A streamed answer that is only its failure, as the client's API streams one (Responses:
/// `response.created`, then `response.failed`), for the APIs whose clients read a failure
/// before any output in the stream ([`Failure::InStream`]).
fn failed_stream(req: &ClientRequest, e: ApiError) -> Response<RespBody> {
    let mut enc = req.api.encoder(&req.meta);
    let mut out = Vec::new();
    enc.on_event(harmony_filters::Event::Error(e), &mut out);
    enc.on_end(&mut out);
    let mut bytes = Vec::new();
    for o in out {
        if let harmony_filters::api::Output::Bytes(b) = o {
            bytes.extend_from_slice(&b);
        }
    }
    let mut r = Response::new(body_of(bytes));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Headers that carry a client's credentials, by name or because they hold one of the keys.
fn is_credential(name: &header::HeaderName, value: &HeaderValue, keys: &[String]) -> bool {
    const NAMES: [&str; 5] = ["authorization", "x-api-key", "api-key", "cookie", "x-goog-api-key"];
    NAMES.contains(&name.as_str()) || keys.iter().any(|k| !k.is_empty() && contains_bytes(value.as_bytes(), k.as_bytes()))
}

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

const HOP_BY_HOP: [&str; 9] =
    ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host"];

/// Any other `/v1/*`: to a server of the default upstream's pool untouched (it does not wait
/// for a slot: listing models must not queue behind generations), bodies streamed both ways.
async fn forward(snap: &Snapshot, req: Request<Incoming>, rid: &str) -> Response<RespBody> {
    let up = snap.default_upstream.clone();
    let lease = up.pool.acquire_now();
    let (parts, body) = req.into_parts();
    let after_v1 = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/").strip_prefix("/v1").unwrap_or("/").to_owned();
    let uri = match Upstream::uri_for(&lease.server().url, &after_v1) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    let server_cfg = &snap.config.server;
    if let Some(e) = crate::server::request_body::declared_too_large(&parts.headers, server_cfg.max_body_bytes) {
        return error_response(&e);
    }
    let max = server_cfg.max_body_bytes.min(usize::MAX as u64) as usize;
    let body = crate::server::request_body::Deadline::new(Limited::new(body, max), server_cfg.body_read_timeout.0).boxed_unsync();
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    // The client's credentials are for the proxy when the proxy checks keys: whatever the
    // header they came in, they never reach the upstream.
    let keys = &snap.config.server.api_keys;
    for (k, v) in &parts.headers {
        if !HOP_BY_HOP.contains(&k.as_str()) && (keys.is_empty() || !is_credential(k, v, keys)) {
            out.headers_mut().append(k, v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(rid) {
        out.headers_mut().insert("x-request-id", v);
    }
    match up.send(out).await {
        Ok(resp) => {
            if resp.status().as_u16() >= 500 {
                lease.server().failed("status");
            } else {
                lease.server().succeeded();
            }
            let (parts, body) = resp.into_parts();
            let mut r = Response::new(Leased { body, _lease: lease }.boxed_unsync());
            *r.status_mut() = parts.status;
            for (k, v) in &parts.headers {
                if !HOP_BY_HOP.contains(&k.as_str()) && k != header::CONTENT_LENGTH {
                    r.headers_mut().append(k, v.clone());
                }
            }
            r
        }
        Err(e) => {
            lease.server().failed(e.kind);
            error_response(&e.error)
        }
    }
}

/// 200 while every upstream has a ready server: one that answers `GET {url}/models` (401/403
/// count as reachable) and is not sitting out after failures. Every server is probed at once.
async fn readyz(snap: &Snapshot) -> Response<RespBody> {
    let mut probes = tokio::task::JoinSet::new();
    for (name, up) in &snap.upstreams {
        for (i, server) in up.pool.servers.iter().enumerate() {
            let (name, up, server) = (name.clone(), up.clone(), server.clone());
            probes.spawn(async move {
                let mut result = up.probe(&server.url).await;
                if result.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    result = up.probe(&server.url).await;
                }
                (name, i, server, result)
            });
        }
    }
    let mut results = Vec::new();
    while let Some(r) = probes.join_next().await {
        if let Ok(r) = r {
            results.push(r);
        }
    }
    results.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut all = true;
    let mut report = serde_json::Map::new();
    for (name, up) in &snap.upstreams {
        let mut servers = serde_json::Map::new();
        let mut any = false;
        for (_, _, server, result) in results.iter().filter(|r| &r.0 == name) {
            let state = server.state();
            let mut entry = match result {
                Ok(s) => serde_json::json!({"ready": (200..300).contains(s) || *s == 401 || *s == 403, "status": s}),
                Err(e) => serde_json::json!({"ready": false, "error": e}),
            };
            if state == "out" {
                entry["ready"] = Value::Bool(false);
            }
            entry["health"] = Value::from(state);
            entry["outstanding"] = Value::from(server.outstanding());
            any |= entry["ready"] == true;
            servers.insert(server.shown.clone(), entry);
        }
        all &= any;
        report.insert(name.clone(), serde_json::json!({"ready": any, "balance": up.pool.balance().as_str(), "servers": servers}));
    }
    json_response(if all { 200 } else { 503 }, &serde_json::json!({"status": if all {"ready"} else {"not_ready"}, "upstreams": report}))
}

/// Builds a TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(cert).map_err(|e| format!("server.tls.cert: {e}"))?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server.tls.cert: {e}"))?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(key).map_err(|e| format!("server.tls.key: {e}"))?.as_slice())
        .map_err(|e| format!("server.tls.key: {e}"))?
        .ok_or("server.tls.key: no private key found")?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}
