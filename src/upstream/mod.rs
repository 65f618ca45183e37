//! Talking to a model server: one pooled HTTP(S) client per upstream per config generation,
//! its pool of servers ([`crate::upstream::pool`]), and the call with its retry policy.

pub mod conn;
pub mod pool;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use harmony_filters::stages::retry::{is_retryable_status, parse_retry_after, RetryPolicy};
use harmony_filters::{ApiError, Endpoint};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::upstream::conn::{ConnError, Conns, UpstreamBody};
use crate::upstream::pool::{Lease, Pool, Server};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

pub struct Upstream {
    pub name: String,
    pub read_timeout: Duration,
    /// Also the longest wait for a free slot of a full pool.
    pub connect_timeout: Duration,
    pub pool: Pool,
    health_interval: Option<Duration>,
    auth: Option<HeaderValue>,
    client: Client<HttpsConnector<HttpConnector>, ReqBody>,
    /// Pipeline calls: connections driven from the response body ([`crate::upstream::conn`]).
    conns: Conns,
}

/// Why a call failed without an HTTP answer.
#[derive(Debug)]
pub struct CallError {
    /// `connect`, `timeout`, `reset`, `status`, `protocol` (the metric label).
    pub kind: &'static str,
    pub error: ApiError,
    pub retryable: bool,
}

pub fn full(b: Bytes) -> ReqBody {
    Full::new(b).map_err(|e| match e {}).boxed_unsync()
}

impl Upstream {
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Result<Self, String> {
        let tls = client_tls(name, cfg)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout.0));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let conns = Conns::new(https.clone());
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        let auth = cfg
            .api_key
            .as_deref()
            .map(|k| HeaderValue::from_str(&format!("Bearer {k}")))
            .transpose()
            .map_err(|_| format!("upstreams.{name}: api_key: not a valid header value"))?;
        let pool = Pool::new(name, &cfg.server_urls(), cfg.balance, cfg.max_outstanding);
        Ok(Self {
            name: name.to_owned(),
            read_timeout: cfg.read_timeout.0,
            connect_timeout: cfg.connect_timeout.0,
            pool,
            health_interval: cfg.health_interval.map(|d| d.0),
            auth,
            client,
            conns,
        })
    }

    /// The first server's base URL (what `doctor` and messages name for a one-server upstream).
    pub fn base(&self) -> &str {
        &self.pool.servers[0].url
    }

    /// Starts the active health checks (`health_interval`) of this generation's pool; they
    /// stop when the generation is dropped. Needs a Tokio runtime; without one, does nothing.
    pub fn start_health_checks(self: &Arc<Self>) {
        let (Some(every), Ok(rt)) = (self.health_interval, tokio::runtime::Handle::try_current()) else { return };
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(up) = weak.upgrade() else { return };
                for server in &up.pool.servers {
                    match up.probe(&server.url).await {
                        // Any answer below 500 proves the server is up (readiness is stricter: 2xx/401/403).
                        Ok(s) if s < 500 => server.succeeded(),
                        _ => server.failed("health_check"),
                    }
                }
            }
        });
    }

    /// A server's base + the part of a proxy path after `/v1` (+ query).
    pub fn uri_for(base: &str, path_after_v1: &str) -> Result<Uri, ApiError> {
        format!("{base}{path_after_v1}").parse().map_err(|_| ApiError::new(400, "invalid_request_error", None, "request path cannot be forwarded"))
    }

    /// Sends a request; waits at most `read_timeout` for the response head.
    pub async fn send(&self, mut req: Request<ReqBody>) -> Result<Response<Incoming>, CallError> {
        if let Some(a) = &self.auth {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        match tokio::time::timeout(self.read_timeout, self.client.request(req)).await {
            Err(_) => Err(self.timed_out()),
            Ok(Err(e)) if e.is_connect() => Err(self.unreachable(&e)),
            Ok(Err(e)) => Err(self.broke(&e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Where `endpoint` is on the server at `base`.
    pub fn endpoint_url(base: &str, endpoint: Endpoint) -> String {
        match endpoint {
            Endpoint::Chat => format!("{base}/chat/completions"),
            Endpoint::Completions => format!("{base}/completions"),
            // llama.cpp's native API lives beside /v1, not under it.
            Endpoint::LlamaCompletion => format!("{}/completion", base.strip_suffix("/v1").unwrap_or(base)),
        }
    }

    /// `POST` a JSON body to `endpoint` of the leased server, asking for SSE; waits at most
    /// `read_timeout` for the response head.
    pub async fn post(&self, lease: &Lease, endpoint: Endpoint, body: Bytes, request_id: &str) -> Result<Response<UpstreamBody>, CallError> {
        let url = Self::endpoint_url(&lease.server().url, endpoint);
        let uri: Uri = url.parse().map_err(|e| CallError {
            kind: "protocol",
            error: ApiError::upstream(format!("cannot build upstream request: {e}")),
            retryable: false,
        })?;
        let rid = HeaderValue::from_str(request_id).ok();
        let make = || {
            let mut req = Request::new(full(body.clone()));
            *req.method_mut() = http::Method::POST;
            *req.uri_mut() = uri.clone();
            let h = req.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
            if let Some(v) = &rid {
                h.insert("x-request-id", v.clone());
            }
            if let Some(a) = &self.auth {
                h.insert(header::AUTHORIZATION, a.clone());
            }
            req
        };
        match tokio::time::timeout(self.read_timeout, self.conns.request(&lease.server().url, make)).await {
            Err(_) => Err(self.timed_out()),
            Ok(Err(ConnError::Connect(e))) => Err(self.unreachable(&*e)),
            Ok(Err(ConnError::Http(e))) => Err(self.broke(&e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    fn timed_out(&self) -> CallError {
        let msg = format!("upstream {} did not answer within {:?}", self.name, self.read_timeout);
        CallError { kind: "timeout", error: ApiError::new(504, "upstream_error", Some("upstream_timeout"), msg), retryable: true }
    }

    fn unreachable(&self, e: &dyn std::error::Error) -> CallError {
        let msg = format!("upstream {} is unreachable: {}", self.name, error_chain(e));
        CallError { kind: "connect", error: ApiError::new(502, "upstream_error", Some("upstream_unreachable"), msg), retryable: true }
    }

    fn broke(&self, e: &dyn std::error::Error) -> CallError {
        let msg = format!("upstream {} failed: {}", self.name, error_chain(e));
        CallError { kind: "reset", error: ApiError::new(502, "upstream_error", Some("upstream_error"), msg), retryable: true }
    }

    /// `GET {base}/models` of one server, for readiness and health: its status, if it answered.
    pub async fn probe(&self, base: &str) -> Result<u16, String> {
        let req = Request::get(format!("{base}/models")).body(full(Bytes::new())).map_err(|e| e.to_string())?;
        let fut = self.send(req);
        match tokio::time::timeout(Duration::from_secs(3), fut).await {
            Ok(Ok(r)) => Ok(r.status().as_u16()),
            Ok(Err(e)) => Err(e.error.message),
            Err(_) => Err("no answer within 3s".into()),
        }
    }
}

/// The TLS client of one upstream: the public roots, plus `ca_file` as roots *and* as pinned
/// certificates, or no verification at all with `tls_insecure`.
fn client_tls(name: &str, cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut pinned = Vec::new();
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("upstreams.{name}: ca_file: cannot read {}: {e}", ca.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("upstreams.{name}: ca_file: invalid PEM: {e}"))?;
            // A server certificate that is not a valid trust anchor can still be pinned.
            let _ = roots.add(cert.clone());
            pinned.push(cert);
        }
        if pinned.is_empty() {
            return Err(format!("upstreams.{name}: ca_file: no certificate in {}", ca.display()));
        }
    }
    if cfg.tls_insecure.0 {
        tracing::warn!(upstream = name, "tls_insecure = true: the upstream's certificate is not verified (for a lab only)");
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("upstreams.{name}: tls: {e}"))?;
    let verifier = Arc::new(PinningVerifier { webpki, pinned, insecure: cfg.tls_insecure.0, provider: provider.clone() });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstreams.{name}: tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Verifies as webpki does; when webpki refuses, accepts a server certificate that is
/// byte for byte one of `pinned`. A self-signed certificate made with `openssl req -x509` is
/// marked as a CA, and webpki refuses a CA as the server's own certificate
/// (`CaUsedAsEndEntity`) although curl `--cacert` and the OpenAI SDKs accept it. Signatures
/// of the handshake are always checked, so the server must hold the pinned key.
#[derive(Debug)]
struct PinningVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
    insecure: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => Ok(v),
            Err(_) if self.insecure || self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// What a call with retries came to.
pub enum Outcome {
    /// A 2xx response to stream from, and the hold on its server (kept while it streams).
    Stream(Response<UpstreamBody>, Lease),
    /// A 4xx: the server's refusal, read whole (its first MiB, within `read_timeout`), for
    /// the client as is or said in its API's shape.
    Passthrough(Refusal),
    Failed(ApiError),
}

/// An upstream's 4xx answer: its head and its body.
pub struct Refusal {
    pub parts: http::response::Parts,
    pub body: Bytes,
    /// The whole body was read (not cut at 1 MiB, nor by the deadline).
    pub whole: bool,
}

impl Refusal {
    /// Reads `resp`'s body: at most 1 MiB (a longer one is cut), within `wait`.
    async fn read(resp: Response<UpstreamBody>, wait: Duration) -> Self {
        let (parts, body) = resp.into_parts();
        let mut body = http_body_util::Limited::new(body, 1 << 20);
        let mut bytes = Vec::new();
        let read = async {
            loop {
                match body.frame().await {
                    None => return true,
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            bytes.extend_from_slice(&data);
                        }
                    }
                    Some(Err(_)) => return false,
                }
            }
        };
        let whole = tokio::time::timeout(wait, read).await.unwrap_or(false);
        Refusal { parts, body: Bytes::from(bytes), whole }
    }
}

/// One upstream call of a pipeline request, re-runnable for retries.
pub struct Call {
    pub upstream: Arc<Upstream>,
    /// Where the request phase said to send it.
    pub endpoint: Endpoint,
    pub body: Bytes,
    pub policy: RetryPolicy,
    pub request_id: String,
    pub metrics: Arc<Metrics>,
}

impl Call {
    /// The same call with another body: the request said again, differently (a lower
    /// output limit).
    pub fn with_body(&self, endpoint: Endpoint, body: Bytes) -> Call {
        Call { upstream: self.upstream.clone(), endpoint, body, policy: self.policy, request_id: self.request_id.clone(), metrics: self.metrics.clone() }
    }

    /// Calls the upstream, retrying what is retryable; `retries` counts retries already used
    /// by this request and is updated. With `wait_first`, backs off before the first try.
    /// Each try takes a server from the pool, another than `avoid` (the one that just failed)
    /// when another healthy one exists; every answer is that server's health verdict.
    pub async fn run(self: Arc<Self>, mut retries: u32, wait_first: Option<Duration>, mut avoid: Option<Arc<Server>>) -> (Outcome, u32) {
        let mut wait = wait_first;
        loop {
            if let Some(w) = wait.take() {
                tokio::time::sleep(w).await;
            }
            let lease = match self.upstream.pool.acquire(avoid.as_ref(), self.upstream.connect_timeout).await {
                Ok(l) => l,
                Err(busy) => {
                    self.metrics.upstream_error("busy");
                    let msg = format!(
                        "every server of upstream {} is at max_outstanding; waited {:.1}s for a free slot",
                        self.upstream.name,
                        busy.waited.as_secs_f64()
                    );
                    return (Outcome::Failed(ApiError::new(503, "server_error", Some("upstream_busy"), msg)), retries);
                }
            };
            let retry_after = match self.upstream.post(&lease, self.endpoint, self.body.clone(), &self.request_id).await {
                Ok(resp) if resp.status().is_success() => {
                    lease.server().succeeded();
                    return (Outcome::Stream(resp, lease), retries);
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status >= 500 {
                        lease.server().failed("status");
                    } else {
                        lease.server().succeeded();
                    }
                    let retry_after = resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
                    self.metrics.upstream_error("status");
                    if !(is_retryable_status(status) && retries < self.policy.max_retries) {
                        if (400..500).contains(&status) {
                            let refusal = Refusal::read(resp, self.upstream.read_timeout).await;
                            drop(lease);
                            return (Outcome::Passthrough(refusal), retries);
                        }
                        let refusal = Refusal::read(resp, Duration::from_secs(2)).await;
                        // Older llama.cpp builds refuse a prompt too long for the context
                        // with a 500: it is still the client's to shorten.
                        if let Some(o) = harmony_filters::upstream::overflow::in_body(&refusal.body) {
                            return (Outcome::Failed(ApiError::context_overflow(o, "messages")), retries);
                        }
                        let msg = format!("upstream {} ({}) answered HTTP {status}{}", self.upstream.name, lease.server().shown, excerpt(&refusal.body));
                        return (Outcome::Failed(ApiError::new(502, "upstream_error", Some("upstream_error"), msg)), retries);
                    }
                    retry_after
                }
                Err(e) => {
                    lease.server().failed(e.kind);
                    self.metrics.upstream_error(e.kind);
                    if !(e.retryable && retries < self.policy.max_retries) {
                        return (Outcome::Failed(e.error), retries);
                    }
                    None
                }
            };
            avoid = Some(lease.server().clone());
            drop(lease);
            wait = Some(self.policy.delay(retries, retry_after));
            retries += 1;
            self.metrics.upstream_retries.increment(1);
        }
    }
}

/// `: <first 300 bytes of the body>` when it can be read quickly.
/// The start of an upstream's error body, for a message (`": …"`, or nothing).
fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_owned();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}
