//! Replicas sharing reasoning memory through a real `redis-server` (Debian's package, started
//! here on an ephemeral loopback port): a turn answered by one proxy gets its reasoning back
//! from another; with Redis stopped, requests go on without the memory.
//!
//! Without `redis-server` on PATH these tests print one line and pass; under CI (`CI` set)
//! they fail instead (`.ci/run` installs it).

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::common::*;

/// A `redis-server` on a free loopback port, killed with the test.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    fn start() -> Option<Redis> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            let required = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
            assert!(!required, "redis-server is not installed (apt-get install redis-server); required under CI");
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]).stdout(Stdio::null()).stderr(Stdio::null());
        let child = spawn_child(cmd).expect("start redis-server");
        let r = Redis { child, port };
        assert!(eventually(10, || r.cli(&["PING"]).trim() == "PONG"), "redis-server did not start on port {port}");
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }
}

fn proxy_config(mock_url: &str, store: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstreams.default]
url = "{mock_url}/v1"
read_timeout = "5s"

[[routes]]
path = "/v1/chat/completions"
upstream = "default"
pipeline = "agents"

[pipelines.agents]
stages = [
  {{ type = "history-clean" }},
  {{ type = "harmony-parse" }},
  {{ type = "reasoning-memory", store = "{store}", ttl = "10m", store_timeout = "200ms" }},
  {{ type = "tool-bridge", mode = "openai_tool_calls", reasoning = "reasoning_content" }},
  {{ type = "sse-encode" }},
]
"#
    )
}

fn proxy(dir: &Path, name: &str, cfg: &str) -> Proc {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("proxy.toml"), cfg).unwrap();
    spawn(&["serve", "--config", "proxy.toml", "--port", "0"], &sub, &[])
}

fn last_request(mock: &Proc) -> Value {
    let v: Value = client().get(format!("{}/mock/stats", mock.url)).send().unwrap().json().unwrap();
    v["last_request"].clone()
}

/// Turn 1 through `first`: the tool call the client got.
fn tool_turn(first: &Proc) -> Value {
    let r = post(&format!("{}/v1/chat/completions", first.url), &chat_body("gpt-oss", false, "scenario:weather"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0]["message"]["tool_calls"].clone()
}

/// Turn 2 through `second`, without the reasoning (as agents send it back).
fn send_back(second: &Proc, calls: &Value) -> Reply {
    let id = calls[0]["id"].as_str().unwrap();
    let turn = json!({"model": "gpt-oss", "messages": [
        {"role": "user", "content": "scenario:weather"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": id, "content": "7 C"}
    ]});
    post(&format!("{}/v1/chat/completions", second.url), &turn)
}

#[test]
fn two_proxies_sharing_redis_give_back_each_others_reasoning_and_go_on_without_it_when_redis_stops() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mock = mock(dir.path());
    let cfg = proxy_config(&mock.url, &redis.url());
    let a = proxy(dir.path(), "a", &cfg);
    let b = proxy(dir.path(), "b", &cfg);

    // Turn 1 on replica A; the reasoning lands in Redis under the call id, with the TTL.
    let calls = tool_turn(&a);
    let id = calls[0]["id"].as_str().unwrap().to_owned();
    let key = format!("harmony-proxy:reasoning::{id}");
    assert!(eventually(5, || redis.cli(&["GET", &key]).trim() == "Need the weather tool for Paris."), "{}", a.log());
    let ttl: i64 = redis.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "PTTL {ttl}");

    // Turn 2 on replica B: its memory is empty, Redis has the reasoning.
    let r = send_back(&b, &calls);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_request(&mock)["messages"][1]["reasoning_content"], "Need the weather tool for Paris.");

    // Redis stops: both replicas answer, without the memory, and say so in a metric and once in the log.
    drop(redis);
    let calls = tool_turn(&a);
    for _ in 0..3 {
        let r = send_back(&b, &calls);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(last_request(&mock)["messages"][1].get("reasoning_content").is_none());
    }
    let metrics = client().get(format!("{}/metrics", b.url)).send().unwrap().text().unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("harmony_proxy_reasoning_store_errors_total{op=\"get\"}") && !l.ends_with(" 0")), "{metrics}");
    assert!(eventually(5, || a.log().contains("reasoning store unavailable")), "{}", a.log());
    assert_eq!(b.log().matches("reasoning store unavailable").count(), 1, "logged once a minute at most: {}", b.log());
}

#[test]
fn api_keys_scope_the_shared_memory_the_same_way_in_every_replica() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mock = mock(dir.path());
    let cfg = proxy_config(&mock.url, &redis.url()).replace("[server]\n", "[server]\napi_keys = [\"alice-key\", \"bob-key\"]\n");
    let a = proxy(dir.path(), "a", &cfg);
    let b = proxy(dir.path(), "b", &cfg);
    let ask = |p: &Proc, key: &str, body: &Value| send(client().post(format!("{}/v1/chat/completions", p.url)).bearer_auth(key).json(body));
    let first = ask(&a, "alice-key", &chat_body("gpt-oss", false, "scenario:weather"));
    let calls = first.json()["choices"][0]["message"]["tool_calls"].clone();
    let id = calls[0]["id"].as_str().unwrap().to_owned();
    assert!(eventually(5, || redis.cli(&["--scan", "--pattern", &format!("harmony-proxy:reasoning:*:{id}")]).contains(&id)));
    let turn = json!({"model": "gpt-oss", "messages": [
        {"role": "user", "content": "scenario:weather"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": id, "content": "7 C"}
    ]});
    assert_eq!(ask(&b, "bob-key", &turn).status, 200);
    assert!(last_request(&mock)["messages"][1].get("reasoning_content").is_none(), "bob got alice's reasoning");
    assert_eq!(ask(&b, "alice-key", &turn).status, 200);
    assert_eq!(last_request(&mock)["messages"][1]["reasoning_content"], "Need the weather tool for Paris.");
}

#[test]
fn a_redis_that_accepts_but_never_answers_costs_at_most_the_store_timeout_and_fails_nothing() {
    // A listener nobody reads from: connections succeed (the kernel's backlog), replies never come.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let store = format!("redis://127.0.0.1:{}/", silent.local_addr().unwrap().port());
    let dir = tempfile::tempdir().unwrap();
    let mock = mock(dir.path());
    let p = proxy(dir.path(), "a", &proxy_config(&mock.url, &store));
    let calls = tool_turn(&p);
    for _ in 0..3 {
        let r = send_back(&p, &calls);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(last_request(&mock)["messages"][1].get("reasoning_content").is_none());
    }
    assert!(eventually(5, || p.log().contains("reasoning store unavailable")), "{}", p.log());
    drop(silent);
}
