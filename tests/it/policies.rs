//! Per-route traffic policies through the real binary and backend: rate limits, timeouts,
//! size caps, concurrency limits and compression.

use crate::common;

use common::{config_for, metric_value, Backend, Gateway};
use serde_json::Value;
use std::io::Read;
use std::time::{Duration, Instant};

async fn problem(resp: reqwest::Response, status: u16, code: &str) -> (reqwest::header::HeaderMap, Value) {
    assert_eq!(resp.status().as_u16(), status, "{:?}", resp.headers());
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let headers = resp.headers().clone();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    (headers, body)
}

fn route(name: &str, matcher: &str, extra: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nmatch = {matcher}\nupstream = \"api\"\n{extra}\n")
}

// ---------------------------------------------------------------- rate limits

#[tokio::test]
async fn rate_limit_per_api_key_with_headers_bypass_and_missing_key() {
    let backend = Backend::start();
    let routes = route(
        "market",
        "{ path_prefix = \"/api/market\" }",
        "rate_limit = [{ rate = \"1/m\", burst = 3, key = \"header:X-API-Key\", name = \"per-key\" }]\nrate_limit_bypass = [\"key:internal\"]",
    );
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    let get = |key: &str| c.get(gw.url("/api/market/AAPL")).header("X-API-Key", key.to_string()).send();

    for expected_remaining in [2, 1, 0] {
        let r = get("alice").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"per-key\";q=3;w=180");
        let state = r.headers()["ratelimit"].to_str().unwrap().to_string();
        assert!(state.starts_with(&format!("\"per-key\";r={expected_remaining};t=")), "{state}");
    }
    let r = get("alice").await.unwrap();
    let (h, body) = problem(r, 429, "rate_limited").await;
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(h["ratelimit"].to_str().unwrap().contains("r=0"));
    assert!(body["detail"].as_str().unwrap().contains("per-key"));
    assert_eq!(backend.hits("/api/market/AAPL").await, 3, "the refused request never reached the backend");

    // another key has its own budget; the bypass key has none at all
    assert_eq!(get("bob").await.unwrap().status(), 200);
    for _ in 0..5 {
        assert_eq!(get("internal").await.unwrap().status(), 200);
    }
    // no key: refused with 401 (the default for a missing key)
    let r = c.get(gw.url("/api/market/AAPL")).send().await.unwrap();
    problem(r, 401, "rate_limit_key_missing").await;

    gw.wait_metric("fastgate_rate_limited_total{limit=\"per-key\",route=\"market\"}", 1.0).await;
}

#[tokio::test]
async fn client_ip_limits_see_through_trusted_proxies_and_stack_with_a_route_limit() {
    let backend = Backend::start();
    let routes = route(
        "all",
        "{ path_prefix = \"/\" }",
        "rate_limit = [{ rate = \"1/m\", burst = 2 }, { rate = \"1/m\", burst = 5, key = \"route\" }]",
    );
    let gw = Gateway::start_with(&config_for(&backend.addr(), &routes), "trusted_proxies = [\"127.0.0.1\"]", &[]);
    let c = reqwest::Client::new();
    let from = |ip: &str| c.get(gw.url("/api/market/AAPL")).header("X-Forwarded-For", ip.to_string()).send();

    assert_eq!(from("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(from("198.51.100.1").await.unwrap().status(), 200);
    problem(from("198.51.100.1").await.unwrap(), 429, "rate_limited").await; // per-IP burst of 2
    assert_eq!(from("198.51.100.2").await.unwrap().status(), 200); // another client
    assert_eq!(from("198.51.100.3").await.unwrap().status(), 200);
    assert_eq!(from("198.51.100.4").await.unwrap().status(), 200);
    // the route-wide bucket (5) is now spent, whatever the client
    let (_, body) = problem(from("198.51.100.5").await.unwrap(), 429, "rate_limited").await;
    assert!(body["detail"].as_str().unwrap().contains("`route`"), "{body}");
}

#[tokio::test]
async fn an_unchanged_limit_keeps_its_state_across_reload() {
    let backend = Backend::start();
    let limit = "rate_limit = [{ rate = \"1/m\", burst = 2, key = \"header:X-API-Key\" }]";
    let gw = Gateway::start(&config_for(&backend.addr(), &route("m", "{ path_prefix = \"/api/market\" }", limit)));
    let c = reqwest::Client::new();
    let get = || c.get(gw.url("/api/market/AAPL")).header("X-API-Key", "k").send();
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(get().await.unwrap().status(), 429);

    // Reload with another change (the timeout) but the same limit: still limited.
    gw.write_config(&config_for(&backend.addr(), &route("m", "{ path_prefix = \"/api/market\" }", &format!("{limit}\ntimeout = \"9s\""))));
    gw.signal("HUP");
    gw.wait_metric("fastgate_config_reloads_total{result=\"ok\"}", 1.0).await;
    assert_eq!(get().await.unwrap().status(), 429, "a reload must not reset counters");

    // A changed limit starts fresh.
    let bigger = "rate_limit = [{ rate = \"1/m\", burst = 3, key = \"header:X-API-Key\" }]";
    gw.write_config(&config_for(&backend.addr(), &route("m", "{ path_prefix = \"/api/market\" }", bigger)));
    gw.signal("HUP");
    gw.wait_metric("fastgate_config_reloads_total{result=\"ok\"}", 2.0).await;
    assert_eq!(get().await.unwrap().status(), 200);
}

// ---------------------------------------------------------------- timeouts

#[tokio::test]
async fn read_timeout_gives_504_and_many_timeouts_leak_nothing() {
    let backend = Backend::start();
    let routes = route("slow", "{ path = \"/api/slow\" }", "timeout = \"10s\"\nread_timeout = \"200ms\"")
        + &route("rest", "{ path_prefix = \"/\" }", "");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    let t = Instant::now();
    for _ in 0..20 {
        let r = c.get(gw.url("/api/slow?seconds=1")).send().await.unwrap();
        problem(r, 504, "upstream_timeout").await;
    }
    assert!(t.elapsed() < Duration::from_secs(10), "each timed out near 200ms: {:?}", t.elapsed());
    // normal traffic afterwards is unaffected
    for _ in 0..20 {
        assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200);
        assert_eq!(c.get(gw.url("/api/slow?seconds=0.01")).send().await.unwrap().status(), 200);
    }
    gw.wait_metric("fastgate_gateway_errors_total{code=\"upstream_timeout\",route=\"slow\"}", 20.0).await;
    assert_eq!(common::metric_value(&gw.metrics().await, "http_server_active_requests{route=\"slow\"}"), Some(0.0));
}

#[tokio::test]
async fn total_timeout_mid_response_closes_the_connection() {
    let backend = Backend::start();
    let routes = route("export", "{ path = \"/api/export\" }", "timeout = \"600ms\"");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    // 10 rows 200 ms apart: headers arrive in time, the body cannot.
    let r = reqwest::get(gw.url("/api/export?rows=10&delay=0.2")).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await;
    match body {
        Err(_) => {}
        Ok(b) => panic!("expected a cut connection, got {} complete bytes", b.len()),
    }
    gw.wait_metric("fastgate_gateway_errors_total{code=\"upstream_timeout\",route=\"export\"}", 1.0).await;
}

#[tokio::test]
async fn slow_client_body_gets_408_and_idle_keepalive_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start();
    let gw = Gateway::start_with(
        &config_for(&backend.addr(), common::CATCH_ALL),
        "client_body_timeout = \"300ms\"\nkeepalive_timeout = \"1s\"",
        &[],
    );
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-some").await.unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(3));

    // keep-alive: a connection idle past keepalive_timeout is closed by the gateway
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /api/market/AAPL HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.expect("closed").unwrap();
    let idle = t.elapsed();
    assert!(idle >= Duration::from_millis(800) && idle < Duration::from_secs(3), "{idle:?}");
}

// ---------------------------------------------------------------- size caps

#[tokio::test]
async fn server_limits_answer_414_and_431() {
    let backend = Backend::start();
    let gw = Gateway::start_with(
        &config_for(&backend.addr(), common::CATCH_ALL),
        "max_uri_length = 100\nmax_header_count = 20\nmax_header_bytes = \"2KiB\"",
        &[],
    );
    let c = reqwest::Client::new();
    let long = format!("/debug/echo?q={}", "a".repeat(200));
    problem(c.get(gw.url(&long)).send().await.unwrap(), 414, "uri_too_long").await;

    let mut req = c.get(gw.url("/debug/echo"));
    for i in 0..25 {
        req = req.header(format!("x-h{i}"), "v");
    }
    problem(req.send().await.unwrap(), 431, "headers_too_large").await;
    let r = c.get(gw.url("/debug/echo")).header("x-big", "b".repeat(3000)).send().await.unwrap();
    problem(r, 431, "headers_too_large").await;
    assert_eq!(backend.total_hits().await, 0);
    assert_eq!(c.get(gw.url("/debug/echo?q=short")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn response_caps_refuse_declared_and_cut_streamed_bodies() {
    let backend = Backend::start();
    let routes = route("list", "{ path = \"/api/instruments\" }", "max_response_body = \"4KiB\"")
        + &route("export", "{ path = \"/api/export\" }", "max_response_body = \"1KiB\"");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let r = reqwest::get(gw.url("/api/instruments?limit=5")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(gw.url("/api/instruments?limit=500")).await.unwrap();
    problem(r, 502, "response_too_large").await;
    // a streamed body (no Content-Length) is cut once it crosses the cap
    let r = reqwest::get(gw.url("/api/export?rows=40&delay=0.001")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "a truncated body must not look complete");
}

// ---------------------------------------------------------------- concurrency

#[tokio::test]
async fn concurrency_limit_sheds_with_503_and_queue_waits() {
    let backend = Backend::start();
    let routes = route("shed", "{ path_prefix = \"/debug/hold\" }", "max_concurrent = 2")
        + &route("rest", "{ path_prefix = \"/\" }", "");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    let held = |key: &'static str| {
        let req = c.get(gw.url(&format!("/debug/hold/{key}")));
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    // Two requests hold both slots (the backend says so); a third is shed at once.
    let (a, b) = (held("a"), held("a"));
    backend.wait_holding("a", 2).await;
    let (h, _) = problem(c.get(gw.url("/debug/hold/a")).send().await.unwrap(), 503, "overloaded").await;
    assert_eq!(h["retry-after"], "1");
    assert_eq!(backend.hits("/debug/hold/a").await, 2, "the shed request never reached the backend");
    // Other routes are not limited.
    assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200);
    backend.release("a").await;
    assert_eq!((a.await.unwrap().unwrap(), b.await.unwrap().unwrap()), (200, 200));
    gw.wait_metric("fastgate_shed_total{route=\"shed\",scope=\"route\"}", 1.0).await;
    // The slots are free again.
    let d = held("b");
    backend.wait_holding("b", 1).await;
    backend.release("b").await;
    assert_eq!(d.await.unwrap().unwrap(), 200);
    drop(gw);

    // With a queue, the third waits for a slot instead, and reaches the backend once one frees.
    let routes = route("q", "{ path_prefix = \"/debug/hold\" }", "max_concurrent = 2\nqueue = { size = 1, timeout = \"10s\" }");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let held = |key: &'static str| {
        let req = c.get(gw.url(&format!("/debug/hold/{key}")));
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    let (a, b) = (held("q1"), held("q1"));
    backend.wait_holding("q1", 2).await;
    let queued = held("q2");
    // The gateway has three requests in flight: two at the backend, one in the queue.
    gw.wait_in_flight(3).await;
    // The queue is full now: a fourth is shed.
    problem(c.get(gw.url("/debug/hold/q3")).send().await.unwrap(), 503, "overloaded").await;
    assert_eq!(backend.hits("/debug/hold/q2").await, 0, "the queued request waits at the gateway");
    backend.release("q1").await;
    backend.wait_holding("q2", 1).await;
    backend.release("q2").await;
    for r in [a, b, queued] {
        assert_eq!(r.await.unwrap().unwrap(), 200);
    }
}

#[tokio::test]
async fn upstream_concurrency_limit_spans_routes() {
    let backend = Backend::start();
    let body = format!(
        "[upstreams.api]\nservers = [\"{}\"]\nmax_concurrent = 1\n\n{}{}",
        backend.addr(),
        route("a", "{ path_prefix = \"/debug/hold\" }", ""),
        route("b", "{ path_prefix = \"/\" }", "")
    );
    let gw = Gateway::start(&body);
    let c = reqwest::Client::new();
    let req = c.get(gw.url("/debug/hold/up"));
    let slow = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    backend.wait_holding("up", 1).await;
    // route `b` shares the upstream's one slot, which route `a`'s request holds
    problem(c.get(gw.url("/api/market/AAPL")).send().await.unwrap(), 503, "overloaded").await;
    backend.release("up").await;
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200);
    gw.wait_metric("fastgate_shed_total{route=\"b\",scope=\"upstream\"}", 1.0).await;
}

// ---------------------------------------------------------------- compression

pub(crate) fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        "br" => {
            brotli::Decompressor::new(body, 4096).read_to_end(&mut out).unwrap();
        }
        other => panic!("unexpected encoding {other}"),
    }
    out
}

#[tokio::test]
async fn compression_by_q_value_decodes_to_the_identical_body() {
    let backend = Backend::start();
    let routes = route(
        "all",
        "{ path_prefix = \"/\" }",
        "compress = { algorithms = [\"zstd\", \"br\", \"gzip\"], min_size = \"1KiB\" }",
    );
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    // reqwest without its decompression features: bodies arrive as sent.
    let c = reqwest::Client::new();
    let path = "/api/instruments?limit=200";
    let plain = c.get(gw.url(path)).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none(), "no Accept-Encoding, no compression");
    let plain = plain.bytes().await.unwrap();
    assert!(plain.len() > 20_000);

    for (accept, expected) in [
        ("gzip", "gzip"),
        ("gzip, br", "br"),
        ("br", "br"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=1.0, br;q=0.5, zstd;q=0.1", "gzip"),
        ("br;q=0.2, zstd", "zstd"),
        ("*", "zstd"),
    ] {
        let r = c.get(gw.url(path)).header("Accept-Encoding", accept).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-encoding"], expected, "for {accept}");
        assert!(h["vary"].to_str().unwrap().to_ascii_lowercase().contains("accept-encoding"));
        assert!(h.get("content-length").is_none(), "streamed: no stale Content-Length");
        let body = r.bytes().await.unwrap();
        assert!(body.len() < plain.len() / 3, "{expected}: {} vs {}", body.len(), plain.len());
        assert_eq!(decode(expected, &body), plain.to_vec(), "{expected} decodes to the same bytes");
    }

    // the backend was asked for identity: one canonical form upstream
    let r = c.get(gw.url("/debug/echo")).header("Accept-Encoding", "gzip").send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none(), "under min_size");
    let echo: Value = r.json().await.unwrap();
    let forwarded: Vec<&Value> = echo["headers"].as_array().unwrap().iter().filter(|h| h[0] == "accept-encoding").collect();
    assert!(forwarded.is_empty(), "{forwarded:?}");

    // refused encodings are honoured
    let r = c.get(gw.url(path)).header("Accept-Encoding", "gzip;q=0, identity").send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
}

/// Reads one HTTP/1.1 response with a chunked body from `s`: its head (lower-cased) and body.
fn read_chunked_response(s: &mut std::io::BufReader<std::net::TcpStream>) -> (String, Vec<u8>) {
    use std::io::BufRead;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(s.read_line(&mut line).unwrap() > 0, "the connection closed in a response head: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(head.contains("transfer-encoding: chunked\r\n"), "a streamed body must be framed: {head}");
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        s.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or_else(|_| panic!("a chunk size, not {size:?}; head: {head}"));
        let mut chunk = vec![0; n + 2];
        s.read_exact(&mut chunk).unwrap();
        if n == 0 {
            return (head, body);
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

/// A compressed body is streamed (its length unknown until the end): framed chunked, so the
/// connection stays open for the next request. Without a framing, HTTP/1.1 ends such a body
/// by closing the connection, and every compressed response cost a new connection.
#[test]
fn compressed_responses_are_chunked_and_keep_the_connection() {
    use std::io::Write;
    let backend = Backend::start();
    let routes = route("all", "{ path_prefix = \"/\" }", "compress = { algorithms = [\"zstd\", \"br\", \"gzip\"], min_size = \"1KiB\" }");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let plain = rt.block_on(async { reqwest::get(gw.url("/api/instruments?limit=200")).await.unwrap().bytes().await.unwrap() });
    for coding in ["gzip", "br", "zstd"] {
        let conn = std::net::TcpStream::connect(gw.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        for round in 0..3 {
            write!(w, "GET /api/instruments?limit=200 HTTP/1.1\r\nHost: t\r\nAccept-Encoding: {coding}\r\n\r\n").unwrap();
            let (head, body) = read_chunked_response(&mut reader);
            assert!(head.starts_with("http/1.1 200"), "{coding} round {round}: {head}");
            assert!(head.contains(&format!("content-encoding: {coding}\r\n")), "{head}");
            assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
            assert!(!head.contains("content-length:") && !head.contains("accept-ranges:"), "{coding}: {head}");
            assert!(!head.contains("connection: close"), "{head}");
            assert_eq!(decode(coding, &body), plain.to_vec(), "{coding} round {round}");
        }
    }
}

/// A streamed body (no length) is compressed chunk by chunk: what the client has received is
/// decodable up to the last row the backend sent, long before the backend's last row.
#[tokio::test]
async fn streamed_bodies_are_compressed_chunk_by_chunk() {
    use std::io::Write;
    let backend = Backend::start();
    let routes = route("export", "{ path = \"/api/export\" }", "compress = { types = [\"application/x-ndjson\"], min_size = 100 }");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    for coding in ["gzip", "br", "zstd"] {
        let started = Instant::now();
        let mut r = c.get(gw.url("/api/export?rows=4&delay=0.5")).header("Accept-Encoding", coding).send().await.unwrap();
        assert_eq!(r.headers()["content-encoding"], coding);
        // the first row is sent at once, the next after 0.5 s: decode what arrived before then
        let mut early = Vec::new();
        while started.elapsed() < Duration::from_millis(400) {
            match tokio::time::timeout(Duration::from_millis(100), r.chunk()).await {
                Ok(Ok(Some(b))) => early.extend_from_slice(&b),
                Ok(_) => break,
                Err(_) => {}
            }
        }
        let decoded = match coding {
            "gzip" => {
                let mut d = flate2::write::GzDecoder::new(Vec::new());
                d.write_all(&early).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            "br" => {
                let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                d.write_all(&early).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            _ => {
                let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
                d.write_all(&early).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
        };
        let text = String::from_utf8_lossy(&decoded);
        assert!(text.starts_with('{') && text.contains('\n'), "{coding}: the first row within 0.4 s, got {text:?} from {} bytes", early.len());
        let mut rest = early;
        while let Some(b) = r.chunk().await.unwrap() {
            rest.extend_from_slice(&b);
        }
        assert!(started.elapsed() >= Duration::from_millis(1400), "the backend streamed for 1.5 s");
        assert_eq!(String::from_utf8(decode(coding, &rest)).unwrap().lines().count(), 4, "{coding}");
    }
}

#[tokio::test]
async fn compression_skips_encoded_small_and_binary_and_weakens_etags() {
    let backend = Backend::start();
    let routes = route("all", "{ path_prefix = \"/\" }", "compress = { min_size = 30 }");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();

    // already gzip from the backend: passed through, not compressed again
    let r = c.get(gw.url("/api/precompressed")).header("Accept-Encoding", "gzip").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let body = r.bytes().await.unwrap();
    let v: Value = serde_json::from_slice(&decode("gzip", &body)).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 50);

    // a strong ETag is weakened on a compressed variant
    let r = c.get(gw.url("/api/static/exchanges")).header("Accept-Encoding", "gzip").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["etag"], "W/\"exchanges-v7\"");
    let r = c.get(gw.url("/api/static/exchanges")).send().await.unwrap();
    assert_eq!(r.headers()["etag"], "\"exchanges-v7\"", "identity keeps the strong ETag");

    // below min_size: untouched
    let r = c.get(gw.url("/api/status/200")).header("Accept-Encoding", "gzip").send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "14");
    assert!(r.headers().get("content-encoding").is_none());

    // SSE is never compressed: events must not wait for a compressor
    let r = c.get(gw.url("/api/stream/prices?count=2&interval=0.05")).header("Accept-Encoding", "gzip").send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());

    // a binary type (image/png) is not in `types`: the same bytes the backend sent
    let direct = reqwest::get(backend.url("/debug/binary?size=5000")).await.unwrap().bytes().await.unwrap();
    let r = c.get(gw.url("/debug/binary?size=5000")).header("Accept-Encoding", "gzip, zstd").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["content-length"], "5000");
    assert_eq!(r.bytes().await.unwrap(), direct);

    // an error status is not compressed either, however large
    let r = c.get(gw.url("/api/items?limit=5000")).header("Accept-Encoding", "gzip").send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.headers().get("content-encoding").is_none());
}

/// A listener whose accept queue is full drops new SYNs, so connecting to it hangs: the
/// gateway's connect timeout must answer 504 long before the total timeout.
#[tokio::test]
async fn connect_timeout_gives_504() {
    let script = r#"
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
port = s.getsockname()[1]
held = []
for _ in range(8):
    c = socket.socket(); c.setblocking(False)
    try: c.connect(("127.0.0.1", port))
    except BlockingIOError: pass
    held.append(c)
time.sleep(0.2)
print(port, flush=True)
time.sleep(60)
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let routes = route("all", "{ path_prefix = \"/\" }", "connect_timeout = \"300ms\"\ntimeout = \"10s\"");
    let gw = Gateway::start(&config_for(&format!("127.0.0.1:{port}"), &routes));
    let t = Instant::now();
    let r = reqwest::get(gw.url("/x")).await.unwrap();
    let elapsed = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let (_, body) = problem(r, 504, "upstream_timeout").await;
    assert!(body["detail"].as_str().unwrap().contains("connect"), "{body}");
    assert!(elapsed < Duration::from_secs(3), "answered by the connect timeout: {elapsed:?}");
    gw.wait_metric("fastgate_upstream_errors_total{kind=\"timeout\",upstream=\"api\"}", 1.0).await;
}

#[tokio::test]
async fn cookie_and_query_keyed_limits() {
    let backend = Backend::start();
    let routes = route("c", "{ path_prefix = \"/api/market\" }", "rate_limit = [{ rate = \"1/m\", burst = 1, key = \"cookie:session\" }]")
        + &route("q", "{ path_prefix = \"/api/static\" }", "rate_limit = [{ rate = \"1/m\", burst = 1, key = \"query:token\", missing_key_status = 400 }]");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    let with_cookie = |v: &str| c.get(gw.url("/api/market/AAPL")).header("Cookie", format!("theme=dark; session={v}")).send();
    assert_eq!(with_cookie("s1").await.unwrap().status(), 200);
    problem(with_cookie("s1").await.unwrap(), 429, "rate_limited").await;
    assert_eq!(with_cookie("s2").await.unwrap().status(), 200, "another session, another bucket");

    assert_eq!(c.get(gw.url("/api/static/exchanges?token=t1")).send().await.unwrap().status(), 200);
    problem(c.get(gw.url("/api/static/exchanges?token=t1")).send().await.unwrap(), 429, "rate_limited").await;
    assert_eq!(c.get(gw.url("/api/static/exchanges?x=1&token=t2")).send().await.unwrap().status(), 200);
    problem(c.get(gw.url("/api/static/exchanges")).send().await.unwrap(), 400, "rate_limit_key_missing").await;
}

#[tokio::test]
async fn compression_types_levels_and_byte_counts() {
    let backend = Backend::start();
    let routes = route("ndjson", "{ path = \"/api/export\" }", "compress = { types = [\"application/x-ndjson\"], min_size = 100, gzip_level = 9 }")
        + &route("fast", "{ path_prefix = \"/api/instruments\" }", "compress = { types = [\"application/json\"], gzip_level = 1, zstd_level = 1 }")
        + &route("rest", "{ path_prefix = \"/\" }", "compress = { types = [\"application/x-ndjson\"], min_size = 100 }");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    let get = |path: &str, ae: &str| c.get(gw.url(path)).header("Accept-Encoding", ae.to_string()).send();

    // `types` decides: JSON is not in the `rest` route's list, NDJSON is in `ndjson`'s
    let r = get("/api/static/currencies?pad=1", "gzip").await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    let r = get("/api/export?rows=20&delay=0", "gzip").await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let gz9 = r.bytes().await.unwrap();
    // gzip's XFL byte says how hard the compressor worked: 2 at level 9, 4 at level 1
    assert_eq!(gz9[8], 2, "level 9");
    let r = get("/api/instruments?limit=200", "gzip").await.unwrap();
    let gz1 = r.bytes().await.unwrap();
    assert_eq!(gz1[8], 4, "level 1");
    let identity = reqwest::get(backend.url("/api/instruments?limit=200")).await.unwrap().bytes().await.unwrap();
    assert_eq!(decode("gzip", &gz1), identity.to_vec());

    // zstd: the route's level. A streamed body (no length) is flushed chunk by chunk, in a frame
    // that declares its window, and zstd picks a larger window for a higher level (2^21 at the
    // default level 3, 2^23 at 19). Sizes do not tell levels apart on these bodies.
    let z1 = get("/api/instruments?limit=200", "zstd").await.unwrap().bytes().await.unwrap();
    assert_eq!(decode("zstd", &z1), identity.to_vec());
    let export = "/api/export?rows=50&delay=0";
    let z3 = get(export, "zstd").await.unwrap().bytes().await.unwrap();
    let gw19 = Gateway::start(&config_for(
        &backend.addr(),
        &route("all", "{ path_prefix = \"/\" }", "compress = { types = [\"application/x-ndjson\"], min_size = 100, zstd_level = 19 }"),
    ));
    let r = c.get(gw19.url(export)).header("Accept-Encoding", "zstd").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "zstd");
    let z19 = r.bytes().await.unwrap();
    assert_eq!(decode("zstd", &z19), decode("zstd", &z3));
    let window_log = |z: &[u8]| {
        assert_eq!(&z[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
        assert_eq!(z[4] & 0x20, 0, "a streamed frame has a window descriptor");
        10 + u32::from(z[5] >> 3)
    };
    assert!(window_log(&z19) > window_log(&z3), "level 19 window 2^{}, level 3 window 2^{}", window_log(&z19), window_log(&z3));

    // bytes into and out of the compressor, per algorithm
    let m = gw.wait_metric("fastgate_compression_bytes_total{algorithm=\"gzip\",direction=\"out\"}", (gz9.len() + gz1.len()) as f64).await;
    let gzip_in = metric_value(&m, "fastgate_compression_bytes_total{algorithm=\"gzip\",direction=\"in\"}").unwrap();
    assert!(gzip_in > identity.len() as f64, "{m}");
}
