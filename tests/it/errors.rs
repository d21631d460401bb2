//! The gateway's own answers as the book's problem codes list them, over raw sockets where the
//! point is bytes: 400 `bad_request` (a bad `%` escape, a target that is not a path; an
//! invalid `Content-Length` is refused before pingora sees it, see edge.rs), 502 `upstream_failed` from a backend that answers garbage,
//! `fastgate_upstream_errors_total{kind}`, request-id limits, and the hop-by-hop request fields
//! (`Upgrade`, `Trailer`) that never reach the backend, and the server's method list (405 with
//! `Allow`, 501 for a method it does not know).

use crate::common;

use common::{config_for, free_port, metric_value, Backend, Gateway, CATCH_ALL};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` as bytes and returns everything the gateway answers before closing or
/// going quiet.
async fn raw(addr: &str, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn problem_body(resp: &str) -> Value {
    let body = &resp[resp.find("\r\n\r\n").map_or(resp.len(), |i| i + 4)..];
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test]
async fn malformed_requests_get_400_problems_and_never_reach_the_backend() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let before = backend.total_hits().await;
    for (what, request) in [
        ("a bad % escape", "GET /debug/echo/%zz HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("a target that is not a path", "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("an invalid Content-Length", "POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n1"),
    ] {
        let resp = raw(&gw.addr(), request).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{what}: {resp}");
        assert!(resp.to_ascii_lowercase().contains("content-type: application/problem+json"), "{what}: {resp}");
        let v = problem_body(&resp);
        assert_eq!(v["code"], "bad_request", "{what}: {resp}");
        assert!(!v["request_id"].as_str().unwrap_or("").is_empty(), "{what}");
    }
    assert_eq!(backend.total_hits().await, before, "none of them reached the backend");
}

#[tokio::test]
async fn a_backend_answering_garbage_is_a_502_upstream_failed() {
    // a "backend" that reads a request and answers something that is not HTTP
    let addr = common::raw_backend(Some(b"SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n\r\n")).await;
    let gw = Gateway::start(&config_for(&addr, CATCH_ALL));
    let r = reqwest::get(gw.url("/x")).await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "upstream_failed");
    gw.wait_metric("fastgate_upstream_errors_total{kind=\"failed\",upstream=\"api\"}", 1.0).await;
}

#[tokio::test]
async fn upstream_errors_are_counted_by_kind() {
    let backend = Backend::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let body = format!(
        "[upstreams.api]\nservers = [\"{}\"]\n[upstreams.dead]\nservers = [\"{dead}\"]\n\n\
         [[routes]]\nname = \"slow\"\nmatch = {{ path = \"/api/slow\" }}\nupstream = \"api\"\ntimeout = \"200ms\"\n\n\
         [[routes]]\nname = \"gone\"\nmatch = {{ path_prefix = \"/gone\" }}\nupstream = \"dead\"\n",
        backend.addr()
    );
    let gw = Gateway::start(&body);
    let r = reqwest::get(gw.url("/api/slow?seconds=2")).await.unwrap();
    assert_eq!(r.status(), 504, "{:?}; log:\n{}", r.text().await, common::tail(&gw.log(), 10));
    let r = reqwest::get(gw.url("/gone")).await.unwrap();
    assert_eq!(r.status(), 502, "{:?}; log:\n{}", r.text().await, common::tail(&gw.log(), 10));
    // counted in the logging phase, just after each answer went out: wait for both
    gw.wait_metric("fastgate_upstream_errors_total{kind=\"timeout\",upstream=\"api\"}", 1.0).await;
    let m = gw.wait_metric("fastgate_upstream_errors_total{kind=\"connect\",upstream=\"dead\"}", 1.0).await;
    assert_eq!(metric_value(&m, "fastgate_upstream_errors_total{kind=\"timeout\",upstream=\"api\"}"), Some(1.0), "{m}");
    assert_eq!(metric_value(&m, "fastgate_upstream_errors_total{kind=\"connect\",upstream=\"api\"}"), None, "{m}");
}

#[tokio::test]
async fn request_ids_are_kept_up_to_128_safe_characters() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let c = reqwest::Client::new();
    let id_for = |sent: String| {
        let req = c.get(gw.url("/debug/echo")).header("X-Request-ID", sent);
        async move { req.send().await.unwrap().headers()["x-request-id"].to_str().unwrap().to_string() }
    };
    let longest = "a".repeat(128);
    assert_eq!(id_for(longest.clone()).await, longest);
    let safe = "Az09-_.:/+=".to_string();
    assert_eq!(id_for(safe.clone()).await, safe);
    for refused in ["a".repeat(129), "semi;colon".into(), "sp ace".into(), "quote\"".into(), "".into()] {
        let got = id_for(refused.clone()).await;
        assert_ne!(got, refused);
        assert_eq!(got.len(), 36, "replaced by a UUID: {got}");
    }
}

#[tokio::test]
async fn upgrade_and_trailer_request_fields_never_reach_the_backend() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let resp = raw(
        &gw.addr(),
        "GET /debug/echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQAAP__\r\nTrailer: X-Checksum\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let v = problem_body(&resp);
    let names: Vec<String> = v["headers"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap().to_string()).collect();
    for gone in ["upgrade", "http2-settings", "trailer", "te"] {
        assert!(!names.contains(&gone.to_string()), "{gone} reached the backend: {names:?}");
    }
    assert!(names.contains(&"x-kept".to_string()), "{names:?}");
}

#[tokio::test]
async fn methods_outside_the_server_list_never_reach_the_backend() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let before = backend.total_hits().await;
    // TRACE: a method that exists, not allowed here: 405 with `Allow`, the connection kept
    let resp = raw(&gw.addr(), "TRACE /debug/echo HTTP/1.1\r\nHost: t\r\nCookie: session=secret\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("\r\nallow: get, head, post, put, patch, delete, options\r\n"), "{resp}");
    assert_eq!(problem_body(&resp)["code"], "method_not_allowed");
    assert!(!resp.contains("secret"), "nothing of the request is echoed: {resp}");
    // a made-up method: 501, the connection closed; a 4 KiB one too, reported by its length
    for method in ["BREW".to_string(), "X".repeat(4 * 1024)] {
        let resp = raw(&gw.addr(), &format!("{method} /debug/echo HTTP/1.1\r\nHost: t\r\n\r\n")).await;
        assert!(resp.starts_with("HTTP/1.1 501"), "{}", &resp[..resp.len().min(300)]);
        let v = problem_body(&resp);
        assert_eq!(v["code"], "not_implemented");
        assert!(v["detail"].as_str().unwrap().len() < 200, "the method is not echoed back whole");
    }
    // a 64 KiB method makes the head larger than any head the limits allow: 431 before parsing
    let resp = raw(&gw.addr(), &format!("{} /debug/echo HTTP/1.1\r\nHost: t\r\n\r\n", "X".repeat(64 * 1024))).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{}", &resp[..resp.len().min(300)]);
    assert_eq!(problem_body(&resp)["code"], "headers_too_large");
    assert!(resp.len() < 2048, "the method is not echoed back");
    assert_eq!(backend.total_hits().await, before, "none reached the backend");
    // a server may allow more
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "methods = [\"GET\", \"PROPFIND\"]", &[]);
    let resp = raw(&gw.addr(), "PROPFIND /debug/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 405"), "FastAPI's own 405 for a method its route lacks: {resp}");
    assert!(!resp.contains("urn:fastgate"), "the backend's answer, not the gateway's: {resp}");
    let resp = raw(&gw.addr(), "POST /debug/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 405") && resp.to_ascii_lowercase().contains("\r\nallow: get, propfind\r\n"), "{resp}");
}
