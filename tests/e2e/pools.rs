//! Server pools: several mock upstreams behind one upstream name. What a client sees while the
//! proxy spreads load, waits for slots, ejects a dead server and takes it back, and reloads.

use std::path::Path;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const SLOW_TICKS: usize = 10;

fn slow(delay_ms: u64, ticks: usize) -> Value {
    let text = format!("<|channel|>final<|message|>{}", "tick ".repeat(ticks).trim_end());
    json!({"text": text, "delay_ms": delay_ms})
}

/// A config with one pool of `mocks` and a pipeline that retries.
fn pool_config(mocks: &[&str], pool_extra: &str) -> String {
    let urls: Vec<String> = mocks.iter().map(|m| format!("\"{m}/v1\"")).collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstreams.default]
urls = [{}]
read_timeout = "5s"
connect_timeout = "1s"
{pool_extra}

[[routes]]
path = "/v1/chat/completions"
upstream = "default"
pipeline = "main"

[pipelines.main]
stages = [{{ type = "retry", max_retries = 2, backoff = "20ms" }}, {{ type = "harmony-parse" }}, {{ type = "fallback" }},
          {{ type = "tool-bridge", mode = "openai_tool_calls" }}, {{ type = "sse-encode" }}]
"#,
        urls.join(", ")
    )
}

fn start_proxy(dir: &Path, cfg: &str) -> Proc {
    std::fs::write(dir.join("proxy.toml"), cfg).unwrap();
    spawn(&["serve", "--config", "proxy.toml", "--port", "0"], dir, &[])
}

fn requests(mock: &Proc) -> u64 {
    let v: Value = client().get(format!("{}/mock/stats", mock.url)).send().unwrap().json().unwrap();
    v["requests"].as_u64().unwrap()
}

fn ask(proxy: &Proc, stream: bool, s: Value) -> Reply {
    post(&format!("{}/v1/chat/completions", proxy.url), &chat_body("gpt-oss", stream, &script(s)))
}

/// The value of `name{…server="url"…}` in the proxy's metrics.
fn metric(proxy: &Proc, name: &str, server: &str) -> Option<f64> {
    let text = client().get(format!("{}/metrics", proxy.url)).send().unwrap().text().unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("server=\"{server}/v1\"")) && l.contains("upstream=\"default\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn readyz(proxy: &Proc) -> Reply {
    send(client().get(format!("{}/readyz", proxy.url)))
}

#[test]
fn least_outstanding_spreads_concurrent_streams_evenly_over_three_servers() {
    let dir = tempfile::tempdir().unwrap();
    let mocks: Vec<Proc> = (0..3).map(|_| mock(dir.path())).collect();
    let urls: Vec<&str> = mocks.iter().map(|m| m.url.as_str()).collect();
    let proxy = start_proxy(dir.path(), &pool_config(&urls, ""));
    let url = proxy.url.clone();
    let mut streams = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        streams.push(thread::spawn(move || post(&format!("{url}/v1/chat/completions"), &chat_body("gpt-oss", true, &script(slow(100, SLOW_TICKS))))));
        // Each request holds its server before the next arrives.
        thread::sleep(Duration::from_millis(60));
    }
    for m in &mocks {
        assert_eq!(metric(&proxy, "harmony_proxy_upstream_outstanding", &m.url), Some(2.0), "{}", m.url);
    }
    for s in streams {
        let r = s.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.assemble(true).content, "tick ".repeat(SLOW_TICKS).trim_end());
    }
    for m in &mocks {
        assert_eq!(requests(m), 2, "{} got an uneven share", m.url);
        assert_eq!(metric(&proxy, "harmony_proxy_upstream_requests_total", &m.url), Some(2.0));
        assert_eq!(metric(&proxy, "harmony_proxy_upstream_outstanding", &m.url), Some(0.0));
    }
}

#[test]
fn round_robin_takes_the_servers_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let mocks: Vec<Proc> = (0..2).map(|_| mock(dir.path())).collect();
    let urls: Vec<&str> = mocks.iter().map(|m| m.url.as_str()).collect();
    let proxy = start_proxy(dir.path(), &pool_config(&urls, "balance = \"round_robin\""));
    for _ in 0..6 {
        assert_eq!(ask(&proxy, false, slow(0, 1)).status, 200);
    }
    assert_eq!((requests(&mocks[0]), requests(&mocks[1])), (3, 3));
}

#[test]
fn beyond_max_outstanding_a_request_waits_for_a_slot_then_gets_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let m = mock(dir.path());
    let proxy = start_proxy(dir.path(), &pool_config(&[&m.url], "max_outstanding = 1"));
    let url = proxy.url.clone();

    // A stream shorter than connect_timeout (1s): the second request waits and is served.
    let first = {
        let url = url.clone();
        thread::spawn(move || post(&format!("{url}/v1/chat/completions"), &chat_body("gpt-oss", true, &script(slow(60, 8)))))
    };
    thread::sleep(Duration::from_millis(100));
    let waited = ask(&proxy, true, slow(0, 1));
    assert_eq!(waited.status, 200, "{}", waited.text());
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(requests(&m), 2);

    // A stream longer than connect_timeout: the second request gives up with 503.
    let long = {
        let url = url.clone();
        thread::spawn(move || post(&format!("{url}/v1/chat/completions"), &chat_body("gpt-oss", true, &script(slow(100, 20)))))
    };
    thread::sleep(Duration::from_millis(100));
    let busy = ask(&proxy, true, slow(0, 1));
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert_eq!(busy.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert_eq!(busy.json()["error"]["code"], "upstream_busy");
    assert_eq!(requests(&m), 3, "the refused request never reached the server");
    assert_eq!(long.join().unwrap().status, 200);
    // Forwarded requests do not queue behind generations.
    let long = {
        let url = url.clone();
        thread::spawn(move || post(&format!("{url}/v1/chat/completions"), &chat_body("gpt-oss", true, &script(slow(100, 10)))))
    };
    thread::sleep(Duration::from_millis(100));
    assert_eq!(send(client().get(format!("{url}/v1/models"))).status, 200);
    assert_eq!(long.join().unwrap().status, 200);
}

#[test]
fn a_killed_server_is_ejected_traffic_goes_on_without_errors_and_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = mock(dir.path());
    let b = mock(dir.path());
    let b_url = b.url.clone();
    let b_port = b_url.rsplit(':').next().unwrap().to_owned();
    let cfg = pool_config(&[&a.url, &b.url], "balance = \"round_robin\"\nhealth_interval = \"200ms\"");
    let proxy = start_proxy(dir.path(), &cfg);
    let r = readyz(&proxy);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstreams"]["default"]["servers"][format!("{b_url}/v1")]["health"], "up");

    drop(b);
    for i in 0..12 {
        let r = ask(&proxy, i % 2 == 0, slow(0, 2));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.assemble(i % 2 == 0).content, "tick tick");
    }
    assert!(eventually(5, || metric(&proxy, "harmony_proxy_upstream_healthy", &b_url) == Some(0.0)), "{}", proxy.log());
    let r = readyz(&proxy);
    assert_eq!(r.status, 200, "one healthy server keeps the proxy ready: {}", r.text());
    let servers = &r.json()["upstreams"]["default"]["servers"];
    assert_eq!(servers[format!("{b_url}/v1")]["ready"], false);
    assert_eq!(servers[format!("{b_url}/v1")]["health"], "out");
    assert_eq!(servers[format!("{}/v1", a.url)]["ready"], true);
    assert!(proxy.log().contains("server taken out of the pool"), "{}", proxy.log());

    // The server comes back on the same port: the health check takes it back in.
    let b = spawn(&["mock-upstream", "--port", &b_port], dir.path(), &[]);
    assert!(eventually(10, || readyz(&proxy).json()["upstreams"]["default"]["servers"][format!("{b_url}/v1")]["health"] == "up"));
    for _ in 0..4 {
        assert_eq!(ask(&proxy, true, slow(0, 1)).status, 200);
    }
    assert!(requests(&b) >= 1, "the server that came back gets traffic again");
    assert!(proxy.log().contains("server is back in the pool"));

    // Every server down: readyz says not ready, and a request fails with a clear 502.
    drop(b);
    drop(a);
    let r = readyz(&proxy);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["upstreams"]["default"]["ready"], false);
    let r = ask(&proxy, true, slow(0, 1));
    assert_eq!(r.status, 502, "{}", r.text());
}

#[test]
fn a_reload_that_drops_a_server_lets_the_streams_on_it_finish() {
    let dir = tempfile::tempdir().unwrap();
    let a = mock(dir.path());
    let b = mock(dir.path());
    let proxy = start_proxy(dir.path(), &pool_config(&[&a.url, &b.url], ""));
    let url = proxy.url.clone();
    let stream = thread::spawn(move || post(&format!("{url}/v1/chat/completions"), &chat_body("gpt-oss", true, &script(slow(100, 20)))));
    assert!(eventually(5, || requests(&a) + requests(&b) == 1));
    let (busy, other) = if requests(&a) == 1 { (&a, &b) } else { (&b, &a) };

    // Reload without the busy server.
    let cfg = pool_config(&[&other.url], "");
    std::fs::write(dir.path().join("proxy.toml"), cfg).unwrap();
    assert!(
        eventually(10, || readyz(&proxy).json()["upstreams"]["default"]["servers"].as_object().is_some_and(|s| s.len() == 1)),
        "the reload did not apply: {}",
        proxy.log()
    );
    for _ in 0..3 {
        assert_eq!(ask(&proxy, false, slow(0, 1)).status, 200);
    }
    assert_eq!(requests(busy), 1, "new requests go to the servers of the new config only");
    let r = stream.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.assemble(true).content, "tick ".repeat(20).trim_end(), "the stream on the dropped server finished");
    let _ = other;
}

#[test]
fn check_refuses_url_and_urls_together_and_duplicate_servers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[upstreams.default]\nurl = \"http://a:1/v1\"\nurls = [\"http://b:1/v1\"]\n";
    std::fs::write(dir.path().join("both.toml"), cfg).unwrap();
    let (ok, out) = check(&["--config", "both.toml"], dir.path());
    assert!(!ok && out.contains("upstreams.default: give either url or urls, not both"), "{out}");
    let cfg = "[upstreams.default]\nurls = [\"http://b:1/v1\", \"http://b:1/v1/\"]\nmax_outstanding = 0\nbalance = \"fastest\"\n";
    std::fs::write(dir.path().join("dup.toml"), cfg).unwrap();
    let (ok, out) = check(&["--config", "dup.toml"], dir.path());
    assert!(!ok, "{out}");
    assert!(out.contains("balance"), "{out}");
    let cfg = "[upstreams.default]\nurls = [\"http://b:1/v1\", \"http://b:1/v1/\"]\nmax_outstanding = 0\n";
    std::fs::write(dir.path().join("dup.toml"), cfg).unwrap();
    let (ok, out) = check(&["--config", "dup.toml"], dir.path());
    assert!(!ok && out.contains("is listed twice") && out.contains("max_outstanding: must be at least 1"), "{out}");
}

/// Passive health only (no `health_interval`): a server that failed 3 times in a row gets no
/// request for its 30 s sit-out, even once it is back; then one trial request takes it back.
#[test]
fn without_health_checks_a_failed_server_sits_out_30s_then_one_trial_takes_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = mock(dir.path());
    let b = mock(dir.path());
    let b_url = b.url.clone();
    let b_port = b_url.rsplit(':').next().unwrap().to_owned();
    let proxy = start_proxy(dir.path(), &pool_config(&[&a.url, &b.url], "balance = \"round_robin\""));
    drop(b);
    // Round robin sends every other request to the dead server; the retry lands on the live one.
    let mut sent = 0;
    while metric(&proxy, "harmony_proxy_upstream_healthy", &b_url) != Some(0.0) {
        assert_eq!(ask(&proxy, true, slow(0, 1)).status, 200);
        sent += 1;
        assert!(sent < 20, "three failures in a row never took the server out: {}", proxy.log());
    }
    let ejected_at = std::time::Instant::now();
    let b = spawn(&["mock-upstream", "--port", &b_port], dir.path(), &[]);
    for _ in 0..6 {
        assert_eq!(ask(&proxy, true, slow(0, 1)).status, 200);
    }
    if ejected_at.elapsed() < Duration::from_secs(25) {
        assert_eq!(requests(&b), 0, "a server sitting out gets no request, even when it is back");
    }
    let r = readyz(&proxy);
    assert_eq!(r.json()["upstreams"]["default"]["servers"][format!("{b_url}/v1")]["health"], "out", "{}", r.text());
    thread::sleep(Duration::from_secs(31).saturating_sub(ejected_at.elapsed()));
    for _ in 0..4 {
        assert_eq!(ask(&proxy, true, slow(0, 1)).status, 200);
    }
    assert!(requests(&b) >= 1, "after the sit-out, the trial request went to it");
    assert_eq!(metric(&proxy, "harmony_proxy_upstream_healthy", &b_url), Some(1.0));
    assert_eq!(readyz(&proxy).json()["upstreams"]["default"]["servers"][format!("{b_url}/v1")]["health"], "up");
}
