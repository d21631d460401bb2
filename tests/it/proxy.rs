//! Proxying through the real binary to the real example backend: methods, headers, bodies,
//! query strings, status codes, routing, normalization, request ids, forwarding headers, and
//! the problem+json answers the gateway gives itself.

use crate::common;

use common::{metric_value, config_for, Backend, Gateway, CATCH_ALL};
use serde_json::Value;

fn header_values(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["request_id"], rid.as_str());
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    body
}

#[tokio::test]
async fn methods_bodies_queries_and_statuses_pass_through() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let c = reqwest::Client::new();

    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let body = format!("payload for {method}");
        let r = c
            .request(method.parse().unwrap(), gw.url("/debug/echo/x?b=2&a=1&a=3"))
            .header("X-Custom", "kept")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method}");
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["method"], method);
        assert_eq!(echo["path"], "/debug/echo/x");
        assert_eq!(echo["query"], "b=2&a=1&a=3");
        assert_eq!(header_values(&echo, "x-custom"), vec!["kept"]);
        assert_eq!(echo["body_len"], body.len());
    }

    // HEAD: the GET's header fields, no body
    let get = c.get(gw.url("/api/static/exchanges")).send().await.unwrap();
    let (get_headers, get_body) = (get.headers().clone(), get.bytes().await.unwrap());
    let r = c.head(gw.url("/api/static/exchanges")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-length"], get_body.len().to_string().as_str(), "HEAD declares the GET body's length");
    for name in ["content-type", "etag", "cache-control"] {
        assert_eq!(h[name], get_headers[name], "{name}");
    }
    assert_ne!(h["x-request-id"], get_headers["x-request-id"]);
    assert!(r.bytes().await.unwrap().is_empty());

    // a large body arrives whole and intact
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let r = c.post(gw.url("/debug/echo")).body(big.clone()).send().await.unwrap();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["body_len"], big.len());
    let digest = {
        use std::fmt::Write;
        let out = std::process::Command::new("python3")
            .args(["-c", "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(&big)?;
                child.wait_with_output()
            })
            .unwrap();
        let mut s = String::new();
        write!(s, "{}", String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        s
    };
    assert_eq!(echo["body_sha256"], digest.as_str());

    // backend statuses pass through untouched, with the backend's own body
    for status in [201u16, 204, 301, 404, 418, 500, 503] {
        let r = c.get(gw.url(&format!("/api/status/{status}"))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        if status != 204 && status != 301 {
            assert_eq!(r.headers()["content-type"], "application/json", "{status}");
        }
    }

    // a JSON POST to the trading endpoint
    let r = c
        .post(gw.url("/api/trades"))
        .json(&serde_json::json!({"symbol": "AAPL", "side": "buy", "qty": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/api/trades/"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["qty"], 3.0);
}

#[tokio::test]
async fn most_specific_route_wins_and_unmatched_gets_404_problem() {
    let backend = Backend::start();
    let routes = r#"
[[routes]]
name = "api"
match = { path_prefix = "/api" }
upstream = "api"
max_body = "10"

[[routes]]
name = "market"
match = { path_prefix = "/api/market", methods = ["GET"] }
upstream = "api"
max_body = "20"

[[routes]]
name = "echo-exact"
match = { path = "/debug/echo/exact" }
upstream = "api"
max_body = "30"
"#;
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let c = reqwest::Client::new();

    // Which route applied is visible through its body cap: 15 bytes pass `market` (20) but
    // not `api` (10).
    let body15 = "x".repeat(15);
    let r = c.get(gw.url("/api/market/AAPL")).body(body15.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET /api/market goes to `market`");
    let r = c.post(gw.url("/api/market/AAPL")).body(body15.clone()).send().await.unwrap();
    assert_problem(r, 413, "payload_too_large").await; // POST is not in `market`: falls to `api`
    let r = c.get(gw.url("/api/marketing")).body(body15.clone()).send().await.unwrap();
    assert_problem(r, 413, "payload_too_large").await; // segment-aware: `api`, not `market`

    let r = c.get(gw.url("/debug/echo/exact")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(backend.hits("/debug/echo/exact").await, 1, "the backend counts what reaches it");
    let r = c.get(gw.url("/debug/echo/exact/more")).send().await.unwrap();
    let body = assert_problem(r, 404, "no_route").await;
    assert!(body["detail"].as_str().unwrap().contains("/debug/echo/exact/more"));
    assert_eq!(backend.hits("/debug/echo/exact/more").await, 0);
}

#[tokio::test]
async fn paths_are_normalized_before_routing_and_forwarding() {
    let backend = Backend::start();
    let routes = r#"
[[routes]]
name = "public"
match = { path_prefix = "/debug/echo/public" }
upstream = "api"
"#;
    let gw = Gateway::start(&config_for(&backend.addr(), routes));

    // Raw sockets: HTTP clients normalize dot segments themselves.
    for raw in [
        "/debug/echo/public/../public/x",
        "/debug/echo/public//x",
        "/debug/echo/public/./x",
        "/debug/echo/%70ublic/x",
        "/debug/echo/nothing/../public/x",
    ] {
        let resp = raw_get(&gw.addr(), raw).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{raw}: {resp}");
        assert!(resp.contains("\"path\":\"/debug/echo/public/x\""), "{raw}: {resp}");
    }
    // A dot segment cannot climb out of the route into one that does not exist.
    // (Reading the counter counts one request to /debug/stats itself.)
    let before = backend.hits("/debug/stats").await;
    let resp = raw_get(&gw.addr(), "/debug/echo/public/../../stats").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(resp.contains("no_route"), "{resp}");
    assert_eq!(backend.hits("/debug/stats").await, before + 1, "the climbing request reached /debug/stats");
    // Other reserved escapes stay escaped.
    let resp = raw_get(&gw.addr(), "/debug/echo/public/a%3Bb").await;
    assert!(resp.contains("\"raw_path\":\"/debug/echo/public/a%3Bb\""), "{resp}");
    // An encoded `/` or `\` is refused by default: a backend that decodes it before resolving
    // dot segments would reach another path than the one routed.
    let before = backend.total_hits().await;
    for raw in ["/debug/echo/public/..%2f..%2fstats", "/debug/echo/public/a%2Fb", "/debug/echo/public/..%5C..%5Cstats"] {
        let resp = raw_get(&gw.addr(), raw).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{raw}: {resp}");
        assert!(resp.contains("\"code\":\"bad_request\"") && resp.contains("encoded"), "{raw}: {resp}");
    }
    assert_eq!(backend.total_hits().await, before, "none reached the backend");
    drop(gw);
    // "decode": decoded before dot segments, so routed as the backend would resolve it
    let gw = Gateway::start_with(&config_for(&backend.addr(), routes), "encoded_slash = \"decode\"", &[]);
    let resp = raw_get(&gw.addr(), "/debug/echo/public/x%2f..%2fy").await;
    assert!(resp.contains("\"raw_path\":\"/debug/echo/public/y\""), "{resp}");
    let resp = raw_get(&gw.addr(), "/debug/echo/public/..%2f..%2fstats").await;
    assert!(resp.starts_with("HTTP/1.1 404") && resp.contains("no_route"), "{resp}");
    drop(gw);
    // "keep": an opaque part of its segment, as before
    let gw = Gateway::start_with(&config_for(&backend.addr(), routes), "encoded_slash = \"keep\"", &[]);
    let resp = raw_get(&gw.addr(), "/debug/echo/public/a%2Fb").await;
    assert!(resp.contains("\"raw_path\":\"/debug/echo/public/a%2Fb\""), "{resp}");
}

async fn raw_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn request_id_is_kept_or_made_and_reaches_the_backend() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let c = reqwest::Client::new();

    let r = c.get(gw.url("/debug/echo")).header("X-Request-ID", "client-abc.123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-abc.123");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(header_values(&echo, "x-request-id"), vec!["client-abc.123"]);

    // malformed ids are replaced, never forwarded
    let r = c.get(gw.url("/debug/echo")).header("X-Request-ID", "bad id\"<script>").send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    // a UUIDv7: 8-4-4-4-12 lower-case hex, version 7, RFC 9562 variant
    let groups: Vec<&str> = id.split('-').collect();
    assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
    assert!(id.chars().all(|ch| ch == '-' || ch.is_ascii_digit() || ('a'..='f').contains(&ch)), "{id}");
    assert_eq!(&id[14..15], "7", "version 7: {id}");
    assert!("89ab".contains(&id[19..20]), "variant: {id}");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(header_values(&echo, "x-request-id"), vec![id]);

    // generated ids are unique
    let a = c.get(gw.url("/api/market/AAPL")).send().await.unwrap().headers()["x-request-id"].clone();
    let b = c.get(gw.url("/api/market/AAPL")).send().await.unwrap().headers()["x-request-id"].clone();
    assert_ne!(a, b);
}

#[tokio::test]
async fn forwarded_headers_trust_only_trusted_proxies() {
    let backend = Backend::start();
    let c = reqwest::Client::new();

    // Not trusted, the default fields: the client's X-Forwarded-For/-Proto are replaced, and
    // the fields the gateway does not set are dropped.
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let r = c
        .get(gw.url("/debug/echo"))
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "evil.example")
        .header("X-Real-IP", "1.2.3.4")
        .header("Forwarded", "for=1.2.3.4;host=evil.example")
        .send()
        .await
        .unwrap();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(header_values(&echo, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(header_values(&echo, "x-forwarded-proto"), vec!["http"]);
    assert!(header_values(&echo, "x-forwarded-host").is_empty(), "not set by default: the client's is dropped");
    assert!(header_values(&echo, "x-real-ip").is_empty(), "not set by default: the client's is dropped");
    assert!(header_values(&echo, "forwarded").is_empty(), "an untrusted Forwarded is dropped");
    assert_eq!(header_values(&echo, "host"), vec![gw.addr()], "Host passes through");
    drop(gw);

    // Not trusted, every X- field set: each is the gateway's own.
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "forwarded = [\"x-forwarded\", \"x-real-ip\"]", &[]);
    let r = c
        .get(gw.url("/debug/echo"))
        .header("X-Forwarded-Host", "evil.example")
        .header("X-Real-IP", "1.2.3.4")
        .send()
        .await
        .unwrap();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(header_values(&echo, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(header_values(&echo, "x-forwarded-host"), vec![gw.addr()]);
    assert_eq!(header_values(&echo, "x-real-ip"), vec!["127.0.0.1"], "the peer, not the client's claim");
    drop(gw);

    // RFC 7239 only: this hop's element, no X-Forwarded-*, whatever the client claimed.
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "forwarded = \"rfc7239\"", &[]);
    let r = c
        .get(gw.url("/debug/echo"))
        .header("Forwarded", "for=1.2.3.4")
        .header("X-Forwarded-For", "6.6.6.6")
        .send()
        .await
        .unwrap();
    let echo: Value = r.json().await.unwrap();
    let own = format!("for=127.0.0.1;proto=http;host=\"{}\"", gw.addr());
    assert_eq!(header_values(&echo, "forwarded"), vec![own.as_str()]);
    assert!(header_values(&echo, "x-forwarded-for").is_empty() && header_values(&echo, "x-forwarded-host").is_empty());
    drop(gw);

    // Trusted (the test client is 127.0.0.1): the chain is extended, proto and host kept.
    let gw = Gateway::start_with(
        &config_for(&backend.addr(), CATCH_ALL),
        "trusted_proxies = [\"127.0.0.1\"]\nforwarded = [\"both\", \"x-real-ip\"]",
        &[],
    );
    let r = c
        .get(gw.url("/debug/echo"))
        .header("X-Forwarded-For", "203.0.113.7, 10.0.0.2")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "api.example.com")
        .header("X-Real-IP", "1.2.3.4")
        .header("Forwarded", "for=203.0.113.7")
        .send()
        .await
        .unwrap();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(header_values(&echo, "x-forwarded-for"), vec!["203.0.113.7, 10.0.0.2, 127.0.0.1"]);
    assert_eq!(header_values(&echo, "x-forwarded-proto"), vec!["https"]);
    assert_eq!(header_values(&echo, "x-forwarded-host"), vec!["api.example.com"]);
    // the real client: the last address of the chain the gateway does not trust
    assert_eq!(header_values(&echo, "x-real-ip"), vec!["10.0.0.2"]);
    let own = format!("for=203.0.113.7, for=127.0.0.1;proto=http;host=\"{}\"", gw.addr());
    assert_eq!(header_values(&echo, "forwarded"), vec![own.as_str()], "a trusted Forwarded is extended");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let resp = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(
            b"GET /debug/echo HTTP/1.1\r\nHost: t\r\nConnection: close, X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9v\r\nX-Normal: yes\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let echo: Value = serde_json::from_str(body).unwrap();
    for h in ["x-internal", "keep-alive", "te", "proxy-authorization"] {
        assert!(header_values(&echo, h).is_empty(), "{h} was forwarded: {echo}");
    }
    assert_eq!(header_values(&echo, "x-normal"), vec!["yes"]);
}

#[tokio::test]
async fn upstream_down_is_a_502_problem() {
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = Gateway::start(&config_for(&dead, CATCH_ALL));
    let r = reqwest::get(gw.url("/api/market/AAPL")).await.unwrap();
    assert_problem(r, 502, "upstream_unreachable").await;
    gw.wait_metric("fastgate_gateway_errors_total{code=\"upstream_unreachable\",route=\"all\"}", 1.0).await;
}

#[tokio::test]
async fn no_healthy_server_is_a_503_problem_with_retry_after() {
    let backend = Backend::start();
    let body = format!(
        "[upstreams.api]\nservers = [\"{}\"]\nhealth_check = {{ path = \"/healthz\", interval = \"2s\", timeout = \"500ms\", unhealthy_threshold = 1 }}\n\n{CATCH_ALL}",
        backend.addr()
    );
    let gw = Gateway::start(&body);
    gw.wait_ready();
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200);

    backend.set_healthy(false).await;
    assert!(common::wait_for_status(&gw.admin_url("/readyz"), 503, std::time::Duration::from_secs(6)));
    let before = backend.hits("/api/market/AAPL").await;
    let r = reqwest::get(gw.url("/api/market/AAPL")).await.unwrap();
    assert_eq!(r.headers()["retry-after"], "2", "Retry-After is the health check interval");
    assert_problem(r, 503, "no_healthy_upstream").await;
    assert_eq!(backend.hits("/api/market/AAPL").await, before, "an unhealthy server gets no traffic");

    backend.set_healthy(true).await;
    assert!(common::wait_for_status(&gw.admin_url("/readyz"), 200, std::time::Duration::from_secs(6)));
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn round_robin_skips_the_unhealthy_server() {
    let a = Backend::start();
    let b = Backend::start();
    let body = format!(
        "[upstreams.api]\nservers = [\"{}\", \"{}\"]\nhealth_check = {{ path = \"/healthz\", interval = \"200ms\", unhealthy_threshold = 1 }}\n\n{CATCH_ALL}",
        a.addr(),
        b.addr()
    );
    let gw = Gateway::start(&body);
    gw.wait_ready();
    let c = reqwest::Client::new();
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200);
    }
    assert_eq!(a.hits("/api/market/AAPL").await, 5);
    assert_eq!(b.hits("/api/market/AAPL").await, 5);

    b.set_healthy(false).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ready: Value = c.get(gw.admin_url("/readyz")).send().await.unwrap().json().await.unwrap();
        let servers = ready["upstreams"]["api"]["servers"].as_array().unwrap().clone();
        if servers.iter().any(|s| s["healthy"] == false) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "health check never marked b down");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200);
    }
    assert_eq!(a.hits("/api/market/AAPL").await, 15);
    assert_eq!(b.hits("/api/market/AAPL").await, 5);
}

#[tokio::test]
async fn body_caps_answer_413_and_the_backend_never_sees_the_excess() {
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"small\"\nmatch = { path_prefix = \"/\" }\nupstream = \"api\"\nmax_body = \"1KiB\"\n";
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let c = reqwest::Client::new();

    let r = c.post(gw.url("/debug/echo")).body(vec![b'a'; 1024]).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // declared too large: refused before the backend is contacted
    let before = backend.total_hits().await;
    let r = c.post(gw.url("/api/trades")).body(vec![b'a'; 1025]).send().await.unwrap();
    assert_problem(r, 413, "payload_too_large").await;
    assert_eq!(backend.total_hits().await, before);

    // chunked, no Content-Length: counted as it streams; the backend, which records every
    // byte it reads, gets no more than the cap
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..8).map(|_| Ok(vec![b'b'; 512])).collect();
    let stream = futures_util::stream::iter(chunks);
    let r = c
        .post(gw.url("/debug/sink"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(r, 413, "payload_too_large").await;
    let stats: Value = reqwest::get(backend.url("/debug/stats")).await.unwrap().json().await.unwrap();
    let received = stats["sink_bytes"].as_u64().unwrap();
    assert!(received <= 1024, "the backend read {received} bytes past a 1 KiB cap");
    // and a chunked body within the cap arrives whole
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..2).map(|_| Ok(vec![b'b'; 512])).collect();
    let r = c.post(gw.url("/debug/sink")).body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["received"], 1024);
}

#[tokio::test]
async fn total_timeout_is_a_504_problem() {
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"slow\"\nmatch = { path = \"/api/slow\" }\nupstream = \"api\"\ntimeout = \"300ms\"\n";
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let started = std::time::Instant::now();
    let r = reqwest::get(gw.url("/api/slow?seconds=3")).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    assert_problem(r, 504, "upstream_timeout").await;
    let r = reqwest::get(gw.url("/api/slow?seconds=0.05")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_endpoints() {
    let backend = Backend::start();
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "admin_token = \"${TEST_ADMIN_TOKEN}\"", &[("TEST_ADMIN_TOKEN", "t0k3n")]);
    let c = reqwest::Client::new();
    let r = c.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_ready();

    let r = c.get(gw.admin_url("/admin/config")).send().await.unwrap();
    assert_problem(r, 401, "unauthorized").await;
    let r = c.get(gw.admin_url("/admin/config")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(gw.admin_url("/admin/config")).bearer_auth("t0k3n").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["routes"][0]["name"], "all");

    // an unknown path is behind the token too: no endpoint list for whoever reaches the port
    let r = c.get(gw.admin_url("/nope")).send().await.unwrap();
    assert_problem(r, 401, "unauthorized").await;
    let r = c.get(gw.admin_url("/nope")).bearer_auth("t0k3n").send().await.unwrap();
    assert_problem(r, 404, "not_found").await;

    c.get(gw.url("/api/market/AAPL")).send().await.unwrap();
    let m = gw
        .wait_metric("http_server_request_duration_seconds_count{method=\"GET\",route=\"all\",status_class=\"2xx\"}", 1.0)
        .await;
    let series = format!("fastgate_upstream_healthy{{server=\"{}\",upstream=\"api\"}}", backend.addr());
    assert_eq!(metric_value(&m, &series), Some(1.0), "{m}");
}

#[tokio::test]
async fn host_routes_win_over_host_agnostic_ones() {
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"admin-host\"\nmatch = { path_prefix = \"/\", host = \"admin.example.com\" }\nupstream = \"api\"\nmax_body = 10\n\n"
        .to_string()
        + CATCH_ALL;
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    let send = |host: &str| {
        c.post(gw.url("/debug/echo"))
            .header("Host", host.to_string())
            .body(vec![b'x'; 20])
            .send()
    };
    // the host route (body cap 10) applies, port and case aside
    assert_problem(send("ADMIN.example.com:8080").await.unwrap(), 413, "payload_too_large").await;
    assert_eq!(send("other.example.com").await.unwrap().status(), 200);
}

#[tokio::test]
async fn cors_preflights_pass_to_the_one_backend_part_that_answers_them() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let c = reqwest::Client::new();
    let preflight = |path: &str| {
        c.request(reqwest::Method::OPTIONS, gw.url(path))
            .header("Origin", "https://shop.example")
            .header("Access-Control-Request-Method", "GET")
            .send()
    };
    // the mounted /public app answers CORS itself, through the gateway unchanged
    let r = preflight("/public/widgets").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    assert_eq!(r.headers()["access-control-max-age"], "600");
    let r = c.get(gw.url("/public/widgets")).header("Origin", "https://shop.example").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    // the rest of the API has no CORS: a preflight is refused by the backend (405), no header
    let r = preflight("/api/v1/items").await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_backend_still_starting_is_not_ready_until_its_lifespan_ends() {
    // the backend's lifespan takes 1.5 s, as FastAPI apps that load models or warm pools do
    let mut backend = Backend::start_unready(&[("BACKEND_STARTUP_DELAY", "1.5"), ("BACKEND_DB_LATENCY", "0.05")]);
    let body = format!(
        "[upstreams.api]\nservers = [\"{}\"]\nhealth_check = {{ interval = \"200ms\", timeout = \"500ms\" }}\n\n{CATCH_ALL}",
        backend.addr()
    );
    let gw = Gateway::start(&body);
    let r = reqwest::get(gw.admin_url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 503, "ready before the backend's start-up ended");
    backend.wait_healthy(std::time::Duration::from_secs(10));
    gw.wait_ready();
    // each database query costs the configured latency
    let t = std::time::Instant::now();
    let r = reqwest::get(gw.url("/api/v1/items/1")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() >= std::time::Duration::from_millis(50), "{:?}", t.elapsed());
    let stats: Value = reqwest::get(backend.url("/debug/stats")).await.unwrap().json().await.unwrap();
    assert_eq!(stats["db_queries"], 1);
}

#[tokio::test]
async fn a_served_path_with_another_method_is_405_with_allow() {
    let backend = Backend::start();
    let routes = r#"
[[routes]]
name = "quote"
match = { path = "/api/market/{symbol}", methods = ["GET", "HEAD"] }
upstream = "api"

[[routes]]
name = "quote-admin"
match = { path = "/api/market/{symbol}", methods = ["DELETE"] }
upstream = "api"

[[routes]]
name = "hidden"
match = { path = "/api/market/{symbol}", methods = ["PUT"] }
action = "deny"

[[routes]]
name = "trades"
match = { path = "/api/trades", methods = ["POST"] }
upstream = "api"
"#;
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let c = reqwest::Client::new();
    let before = backend.total_hits().await;
    // the path is served, not with POST: 405, and Allow lists both routes' methods (not the
    // deny route's)
    let r = c.post(gw.url("/api/market/AAPL")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET, HEAD, DELETE");
    let body = assert_problem(r, 405, "method_not_allowed").await;
    assert!(body["detail"].as_str().unwrap().contains("POST"), "{body}");
    let r = c.get(gw.url("/api/trades")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    assert_problem(r, 405, "method_not_allowed").await;
    // the deny route still answers its own method, as if nothing were there
    let r = c.put(gw.url("/api/market/AAPL")).send().await.unwrap();
    assert!(r.headers().get("allow").is_none());
    assert_problem(r, 404, "not_found").await;
    // a path no route serves is still 404
    let r = c.get(gw.url("/api/nothing")).send().await.unwrap();
    assert!(r.headers().get("allow").is_none());
    assert_problem(r, 404, "no_route").await;
    assert_eq!(backend.total_hits().await, before, "none reached the backend");
    // what FastAPI itself says for the same request: also 405
    assert_eq!(c.post(backend.url("/api/market/AAPL")).send().await.unwrap().status(), 405);
}
