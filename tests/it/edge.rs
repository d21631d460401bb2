//! The edge against slow and hostile clients, over raw sockets: the whole-head deadline
//! (`server.header_timeout`), connection limits (total and per client), heads pingora would
//! answer with its own empty 400 answered as problems, `Connection: close` while draining,
//! the admin API split from the public probes, and a taken address stopping start-up at once.

use crate::common;

use common::{check_config, config_for, free_port, metric_value, Backend, Gateway, CATCH_ALL};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the gateway sends until it closes the connection (or `within` runs out).
async fn read_all(s: &mut TcpStream, within: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends `request` and returns everything answered before the connection closes.
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_all(&mut s, Duration::from_secs(5)).await
}

fn problem_body(resp: &str) -> Value {
    let body = &resp[resp.find("\r\n\r\n").map_or(resp.len(), |i| i + 4)..];
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// The head of `resp`, lower-cased, for field checks.
fn head_of(resp: &str) -> String {
    resp[..resp.find("\r\n\r\n").unwrap_or(resp.len())].to_ascii_lowercase()
}

fn assert_gateway_problem(resp: &str, status: u16, code: &str) {
    assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{}", &resp[..resp.len().min(400)]);
    let h = head_of(resp);
    assert!(h.contains("\r\ncontent-type: application/problem+json"), "{h}");
    assert!(h.contains("\r\nx-request-id: "), "{h}");
    assert!(h.contains("\r\nconnection: close"), "{h}");
    assert!(!h.contains("pingora"), "the engine is not named: {h}");
    let v = problem_body(resp);
    assert_eq!(v["code"], code, "{resp}");
    assert_eq!(v["status"], status);
}

#[tokio::test]
async fn a_head_trickled_a_byte_at_a_time_is_cut_at_the_header_timeout() {
    let backend = Backend::start();
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "header_timeout = \"1s\"", &[]);
    let before = backend.total_hits().await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let started = Instant::now();
    // one byte every 100 ms: each read is quick, the head as a whole never completes in time
    let request = b"GET /debug/echo HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for b in request {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let resp = read_all(&mut s, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert_gateway_problem(&resp, 408, "request_timeout");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "cut after {took:?}");
    assert_eq!(backend.total_hits().await, before, "the backend never saw the head");

    // a connection that sends nothing is closed, without an answer, after the same time
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let started = Instant::now();
    let resp = read_all(&mut s, Duration::from_secs(4)).await;
    assert!(resp.is_empty(), "{resp}");
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());

    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, "fastgate_connections_refused_total{reason=\"header_timeout\"}"), Some(1.0), "{m}");
}

#[tokio::test]
async fn on_a_kept_alive_connection_the_head_deadline_starts_with_the_next_request() {
    let backend = Backend::start();
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "header_timeout = \"1s\"", &[]);
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /debug/echo HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        let resp = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(!head_of(&resp).contains("connection: close"), "{resp}");
        // idle longer than header_timeout, within keepalive_timeout: still open
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

#[tokio::test]
async fn connections_over_the_limits_get_a_503_and_the_slots_come_back() {
    let backend = Backend::start();
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "max_connections_per_client = 2", &[]);
    let a = TcpStream::connect(gw.addr()).await.unwrap();
    let b = TcpStream::connect(gw.addr()).await.unwrap();
    gw.wait_metric("fastgate_connections_open", 2.0).await;
    let resp = raw(&gw.addr(), b"GET /debug/echo HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_gateway_problem(&resp, 503, "too_many_connections");
    assert!(head_of(&resp).contains("\r\nretry-after: 1"), "{resp}");
    assert!(problem_body(&resp)["detail"].as_str().unwrap().contains("max_connections_per_client"), "{resp}");
    drop(a);
    drop(b);
    gw.wait_metric("fastgate_connections_open", 0.0).await;
    let resp = raw(&gw.addr(), b"GET /debug/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, "fastgate_connections_refused_total{reason=\"max_connections_per_client\"}"), Some(1.0), "{m}");
    assert_eq!(metric_value(&m, "fastgate_connections_open"), Some(0.0), "{m}");

    // the total bound holds for trusted proxies too, which the per-client bound exempts
    let gw = Gateway::start_with(
        &config_for(&backend.addr(), CATCH_ALL),
        "max_connections = 1\nmax_connections_per_client = 1\ntrusted_proxies = [\"127.0.0.1\"]",
        &[],
    );
    let held = TcpStream::connect(gw.addr()).await.unwrap();
    gw.wait_metric("fastgate_connections_open", 1.0).await;
    let resp = raw(&gw.addr(), b"GET /debug/echo HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_gateway_problem(&resp, 503, "too_many_connections");
    assert!(problem_body(&resp)["detail"].as_str().unwrap().contains("server.max_connections "), "{resp}");
    drop(held);

    // a trusted proxy is exempt from the per-client bound: every client behind it shares its address
    let gw = Gateway::start_with(
        &config_for(&backend.addr(), CATCH_ALL),
        "max_connections_per_client = 1\ntrusted_proxies = [\"127.0.0.1\"]",
        &[],
    );
    let held = TcpStream::connect(gw.addr()).await.unwrap();
    gw.wait_metric("fastgate_connections_open", 1.0).await;
    let resp = raw(&gw.addr(), b"GET /debug/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    drop(held);
}

#[tokio::test]
async fn heads_pingora_would_refuse_with_an_empty_400_are_problems() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let before = backend.total_hits().await;
    let mut many = b"GET /debug/echo HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..300 {
        many.extend_from_slice(format!("X-F{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let cases: [(&str, Vec<u8>, u16, &str); 11] = [
        ("a space in the target", b"GET /debug/echo a HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400, "bad_request"),
        ("two Host fields", b"GET /debug/echo HTTP/1.1\r\nHost: t\r\nHost: evil\r\n\r\n".to_vec(), 400, "bad_request"),
        ("two lengths", b"POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(), 400, "bad_request"),
        ("a signed length", b"POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc".to_vec(), 400, "bad_request"),
        ("chunked in HTTP/1.0", b"POST /debug/echo HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400, "bad_request"),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), 405, "method_not_allowed"),
        ("a field name with a space", b"GET /debug/echo HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n".to_vec(), 400, "bad_request"),
        ("a control byte in a value", b"GET /debug/echo HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n".to_vec(), 400, "bad_request"),
        ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400, "bad_request"),
        ("a wrong protocol", b"GET /debug/echo FTP/1.0\r\n\r\n".to_vec(), 400, "bad_request"),
        ("300 header fields", many, 431, "headers_too_large"),
    ];
    for (what, bytes, status, code) in cases {
        let resp = raw(&gw.addr(), &bytes).await;
        assert!(!resp.is_empty(), "{what}: no answer");
        assert_gateway_problem(&resp, status, code);
    }
    assert_eq!(backend.total_hits().await, before, "none reached the backend");
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, "fastgate_connections_refused_total{reason=\"malformed_head\"}"), Some(10.0), "{m}");
}

#[tokio::test]
async fn responses_sent_while_draining_close_the_connection() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /api/slow?seconds=1 HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    let resp = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(head_of(&resp).contains("\r\nconnection: close"), "{resp}");
}

#[tokio::test]
async fn the_admin_api_stays_on_loopback_while_probes_are_public() {
    let backend = Backend::start();
    // off loopback without a token: refused, with the way out
    let out = check_config(&format!("[server]\nadmin_listen = \"0.0.0.0:9090\"\n{}", config_for(&backend.addr(), CATCH_ALL)));
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("admin_listen = \"0.0.0.0:9090\"") && text.contains('^'), "{text}");
    assert!(text.contains("admin_token") && text.contains("probe_listen"), "{text}");
    // with a token it is allowed
    let out = check_config(&format!("[server]\nadmin_listen = \"0.0.0.0:9090\"\nadmin_token = \"s3cret\"\n{}", config_for(&backend.addr(), CATCH_ALL)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // the probe listener serves the read-only views, never the admin API
    let probe = free_port();
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), &format!("probe_listen = \"127.0.0.1:{probe}\""), &[]);
    gw.wait_ready();
    let c = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = c.get(format!("http://127.0.0.1:{probe}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    for (method, path) in [("GET", "/admin/config"), ("POST", "/admin/reload"), ("POST", "/admin/cache/purge")] {
        let r = c.request(method.parse().unwrap(), format!("http://127.0.0.1:{probe}{path}")).body("{\"all\": true}").send().await.unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    }
    // the admin listener, on loopback without a token, answers a loopback peer
    let r = c.get(gw.admin_url("/admin/config")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_taken_address_stops_start_up_at_once_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fastgate.toml");
    let admin = free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n{}",
        config_for("127.0.0.1:9", CATCH_ALL)
    );
    std::fs::write(&path, text).unwrap();
    let started = Instant::now();
    let child = common::fastgate_command()
        .args(["run", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = common::Managed(child);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still running after {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port} (server.listen)")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn a_denied_path_is_refused_in_every_spelling() {
    let backend = Backend::start();
    let routes = format!(
        "{CATCH_ALL}\n[[routes]]\nname = \"no-admin\"\nmatch = {{ path_prefix = \"/admin\" }}\naction = \"deny\"\n\n\
         [[routes]]\nname = \"no-docs\"\nmatch = {{ path_prefix = \"/docs\" }}\naction = \"deny\"\ndeny_status = 403\n"
    );
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let before = backend.total_hits().await;
    let spellings = [
        "/admin",
        "/admin/users",
        "/ADMIN/users",
        "/Admin",
        "/admin;jsessionid=x/users",
        "/%61dmin",
        "/%61%64%6D%69%6E/users",
        "//admin",
        "/x/../admin",
        "/api/%2e%2e/admin",
        "/./admin/./users",
    ];
    for path in spellings {
        let resp = raw(&gw.addr(), format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 404 "), "{path}: {resp}");
        assert_eq!(problem_body(&resp)["code"], "not_found", "{path}");
    }
    let resp = raw(&gw.addr(), b"GET /Docs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 403 "), "{resp}");
    assert_eq!(problem_body(&resp)["code"], "forbidden");
    // spellings no path decodes to: refused before routing
    for path in ["/admin%2Fusers", "/%C0%AE%C0%AE/admin", "/adm%C0%69n"] {
        let resp = raw(&gw.addr(), format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{path}: {resp}");
    }
    assert_eq!(backend.total_hits().await, before, "no spelling reached the backend");
    // the rest is served
    let resp = raw(&gw.addr(), b"GET /api/market/AAPL HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let m = gw.metrics().await;
    assert!(m.contains("route=\"no-admin\",status_class=\"4xx\""), "{m}");

    // a deny route takes no upstream, and says so
    let out = check_config(&config_for(&backend.addr(), "[[routes]]\nname = \"x\"\nmatch = { path = \"/x\" }\naction = \"deny\"\nupstream = \"api\"\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no `upstream`") || String::from_utf8_lossy(&out.stdout).contains("has no `upstream`"));
}

#[tokio::test]
async fn a_buffered_body_is_checked_whole_before_the_backend_sees_the_request() {
    let backend = Backend::start();
    let routes = format!(
        "[[routes]]\nname = \"buffered\"\nmatch = {{ path_prefix = \"/debug/echo\" }}\nupstream = \"api\"\nbuffer_request_body = \"1KiB\"\n\n{CATCH_ALL}"
    );
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let hits = || backend.hits("/debug/echo");
    let before = hits().await;
    let head = "POST /debug/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (what, body, status) in [
        ("a hex prefix", "0x5\r\nhello\r\n0\r\n\r\n", 400),
        ("a negative size", "-5\r\nhello\r\n0\r\n\r\n", 400),
        ("an overflowing size", "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
        ("an empty size", "5\r\nhello\r\n\r\n", 400),
        ("an empty size with an extension", "5\r\nhello\r\n;ext\r\n\r\n", 400),
        ("more than the buffer", &format!("{:x}\r\n{}\r\n0\r\n\r\n", 2000, "a".repeat(2000)), 413),
    ] {
        let resp = raw(&gw.addr(), format!("{head}{body}").as_bytes()).await;
        assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {resp}");
        assert!(head_of(&resp).contains("application/problem+json"), "{what}: {resp}");
    }
    // a body cut short: the client stops writing
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(format!("{head}5\r\nhel").as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let resp = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
    // a declared length over the buffer is refused before a byte of the body is read
    let resp = raw(&gw.addr(), b"POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 413 "), "{resp}");
    assert_eq!(hits().await, before, "the backend saw none of these");

    // good bodies arrive whole, chunked or not
    let resp = raw(&gw.addr(), format!("{head}5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").replace("Host: t\r\n", "Host: t\r\nConnection: close\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert_eq!(problem_body(&resp)["body_len"], 11, "{resp}");
    // Expect: 100-continue is answered by the gateway, which then reads the body
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.expect("100 Continue in time").unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 100 "), "{}", String::from_utf8_lossy(&buf[..n]));
    s.write_all(b"hello").await.unwrap();
    let resp = read_all(&mut s, Duration::from_secs(5)).await;
    let resp = resp.trim_start_matches("\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(!resp.contains("HTTP/1.1 100"), "one 100 only: {resp}");
    assert_eq!(problem_body(resp)["body_len"], 5, "{resp}");
    assert_eq!(hits().await, before + 2);
}

#[tokio::test]
async fn a_backend_dying_mid_response_closes_the_client_connection_and_nothing_else_breaks() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    // a slow export: the header and the first rows arrive, then the backend is killed
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /api/export?rows=20&delay=0.2 HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut first)).await.unwrap().unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&first[..n]));
    drop(backend);
    // the client sees the connection end (no terminating chunk): a clean close, within moments
    let started = Instant::now();
    let rest = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    assert!(!rest.ends_with("0\r\n\r\n"), "a cut body must not look complete: {rest:?}");
    // the next request is answered as a problem, on a new connection, and the process is fine
    let resp = raw(&gw.addr(), b"GET /api/market/AAPL HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    // the one server refuses connections (no health check takes it out, and passive health
    // never ejects a single server): a 502 that says so
    assert!(resp.starts_with("HTTP/1.1 502 "), "{resp}");
    assert_eq!(problem_body(&resp)["code"], "upstream_unreachable", "{resp}");
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

#[tokio::test]
async fn keep_alive_follows_the_message() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    // (request, the connection stays open)
    let cases: [(&str, &[u8], bool); 5] = [
        ("HTTP/1.1", b"GET /debug/echo HTTP/1.1\r\nHost: t\r\n\r\n", true),
        ("HTTP/1.1 with Connection: close", b"GET /debug/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", false),
        ("HTTP/1.0", b"GET /debug/echo HTTP/1.0\r\nHost: t\r\n\r\n", false),
        ("HTTP/1.0 with keep-alive", b"GET /debug/echo HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n", true),
        // RFC 9112 6.1: a server that gets both must close after the response
        (
            "Content-Length with Transfer-Encoding",
            b"POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            false,
        ),
    ];
    for (what, request, kept) in cases {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        let resp = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(resp.contains(" 200 OK\r\n"), "{what}: {resp}");
        if what.starts_with("Content-Length") {
            assert_eq!(problem_body(&resp)["body_len"], 3, "the chunked body counts, not the length: {resp}");
        }
        // closed: the read ends at once; kept: it waits for the next request
        let more = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
        match (kept, more) {
            (true, Err(_)) => {}
            (false, Ok(Ok(0))) => {}
            (kept, other) => panic!("{what}: expected the connection {}, got {other:?}", if kept { "kept" } else { "closed" }),
        }
        if !kept {
            assert!(head_of(&resp).contains("\r\nconnection: close"), "{what}: {resp}");
        }
    }
}
