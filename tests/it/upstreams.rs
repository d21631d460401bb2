//! Upstreams as the book describes them: pooled connections and `idle_timeout`, health checks
//! (`healthy_threshold`, the check's `timeout`), the upstream-wide concurrency limit with its
//! queue, which requests do not take a slot (streams, cache hits), host names in `servers`,
//! and health kept across a reload.

use crate::common;

use common::{free_port, Backend, Gateway, CATCH_ALL};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::{Duration, Instant};

fn upstream(addr: &str, extra: &str) -> String {
    format!("[upstreams.api]\nservers = [\"{addr}\"]\n{extra}\n\n")
}

async fn client_port(c: &reqwest::Client, url: String) -> u64 {
    let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
    v["client_port"].as_u64().unwrap()
}

async fn ready(gw: &Gateway) -> u16 {
    reqwest::get(gw.admin_url("/readyz")).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn pooled_connections_are_reused_until_idle_timeout() {
    let backend = Backend::start();
    let c = reqwest::Client::new();
    let gw = Gateway::start(&(upstream(&backend.addr(), "idle_timeout = \"300ms\"") + CATCH_ALL));
    let first = client_port(&c, gw.url("/debug/echo")).await;
    assert_eq!(client_port(&c, gw.url("/debug/echo")).await, first, "the pooled connection is reused");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_ne!(client_port(&c, gw.url("/debug/echo")).await, first, "an idle connection is closed after idle_timeout");
    drop(gw);
    // the default (60 s) keeps it over the same pause
    let gw = Gateway::start(&(upstream(&backend.addr(), "") + CATCH_ALL));
    let first = client_port(&c, gw.url("/debug/echo")).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(client_port(&c, gw.url("/debug/echo")).await, first);
}

/// Requests in flight at once each hold an upstream connection; afterwards up to
/// `upstream_keepalive_pool` of them are kept, so the next burst reuses them instead of
/// connecting anew (and leaving the old ones in TIME_WAIT).
#[tokio::test]
async fn a_burst_reuses_the_connections_of_the_last_up_to_the_pool_size() {
    let backend = Backend::start();
    let c = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    let burst = |gw: &Gateway, n: usize| {
        let url = gw.url("/debug/echo?delay=0.5");
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move { client_port(&c, url).await })
            })
            .collect();
        async move {
            let mut ports = std::collections::HashSet::new();
            for t in tasks {
                ports.insert(t.await.unwrap());
            }
            ports
        }
    };
    // the default keeps more than pingora's own 128
    for (extra, n, kept) in [("upstream_keepalive_pool = 3", 12, 3), ("", 150, 150)] {
        let gw = Gateway::start_with(&(upstream(&backend.addr(), "") + CATCH_ALL), extra, &[]);
        let first = burst(&gw, n).await;
        assert_eq!(first.len(), n, "{extra:?}: {n} requests in flight, {n} connections");
        let second = burst(&gw, n).await;
        let reused = first.intersection(&second).count();
        assert_eq!(reused, kept, "{extra:?}: {reused} of {n} connections reused");
    }
}

#[tokio::test]
async fn healthy_threshold_and_the_check_timeout() {
    let backend = Backend::start();
    let hc = "health_check = { interval = \"200ms\", timeout = \"100ms\", healthy_threshold = 3, unhealthy_threshold = 1 }";
    let gw = Gateway::start(&(upstream(&backend.addr(), hc) + CATCH_ALL));
    gw.wait_ready();
    // A health endpoint slower than the check's timeout fails the check.
    let set = |body: Value| {
        let c = reqwest::Client::new();
        let url = backend.url("/debug/health");
        async move { assert!(c.post(url).json(&body).send().await.unwrap().status().is_success()) }
    };
    set(serde_json::json!({"healthy": true, "delay": 0.5})).await;
    assert!(common::wait_for_status(&gw.admin_url("/readyz"), 503, Duration::from_secs(5)), "a slow check counts as failed");
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 503);
    // Back to fast: three passing checks in a row, 200 ms apart, before it is healthy again.
    set(serde_json::json!({"healthy": true, "delay": 0})).await;
    let t = Instant::now();
    assert!(common::wait_for_status(&gw.admin_url("/readyz"), 200, Duration::from_secs(5)));
    assert!(t.elapsed() >= Duration::from_millis(350), "healthy after {:?}: sooner than 3 checks", t.elapsed());
}

#[tokio::test]
async fn the_upstream_queue_waits_then_sheds() {
    let backend = Backend::start();
    let gw = Gateway::start(&(upstream(&backend.addr(), "max_concurrent = 1\nqueue = { size = 1, timeout = \"10s\" }") + CATCH_ALL));
    let c = reqwest::Client::new();
    let held = |key: &str| {
        let req = c.get(gw.url(&format!("/debug/hold/{key}")));
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    let first = held("u1");
    backend.wait_holding("u1", 1).await;
    let queued = held("u2");
    gw.wait_in_flight(2).await;
    let r = c.get(gw.url("/api/market/AAPL")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "overloaded");
    assert!(v["detail"].as_str().unwrap().contains("upstream is at its limit of 1 requests in flight (queue full)"), "{v}");
    backend.release("u1").await;
    backend.wait_holding("u2", 1).await;
    backend.release("u2").await;
    assert_eq!((first.await.unwrap().unwrap(), queued.await.unwrap().unwrap()), (200, 200));
    gw.wait_metric("fastgate_shed_total{route=\"all\",scope=\"upstream\"}", 1.0).await;
    drop(gw);

    // A queue wait that times out is shed too.
    let gw = Gateway::start(&(upstream(&backend.addr(), "max_concurrent = 1\nqueue = { size = 1, timeout = \"300ms\" }") + CATCH_ALL));
    let req = c.get(gw.url("/debug/hold/u3"));
    let first = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    backend.wait_holding("u3", 1).await;
    let t = Instant::now();
    let r = c.get(gw.url("/api/market/AAPL")).send().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(280), "{:?}", t.elapsed());
    let v: Value = r.json().await.unwrap();
    assert!(v["detail"].as_str().unwrap().contains("queue wait timed out"), "{v}");
    backend.release("u3").await;
    assert_eq!(first.await.unwrap().unwrap(), 200);
}

#[tokio::test]
async fn streams_and_cache_hits_take_no_upstream_slot() {
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"ws\"\nmatch = { path = \"/ws/prices\" }\nupstream = \"api\"\nstreaming = true\n\n\
                  [[routes]]\nname = \"cached\"\nmatch = { path_prefix = \"/api/static\" }\nupstream = \"api\"\ncache = { ttl = \"60s\" }\n\n"
        .to_string()
        + CATCH_ALL;
    let gw = Gateway::start(&(upstream(&backend.addr(), "max_concurrent = 1") + &routes));
    let c = reqwest::Client::new();
    assert_eq!(c.get(gw.url("/api/static/currencies")).send().await.unwrap().status(), 200); // stored
    // An open WebSocket does not hold the upstream's one slot.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/prices", gw.addr())).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "echo:hi");
    let req = c.get(gw.url("/debug/hold/slot"));
    let held = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    backend.wait_holding("slot", 1).await;
    // Now the slot is taken: a request that goes upstream is shed, a cache hit is served.
    assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 503);
    let r = c.get(gw.url("/api/static/currencies")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["x-cache"].to_str().unwrap()), (200, "HIT"));
    backend.release("slot").await;
    assert_eq!(held.await.unwrap().unwrap(), 200);
    ws.send(tokio_tungstenite::tungstenite::Message::text("still")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "echo:still");
}

#[tokio::test]
async fn servers_may_be_host_names() {
    let backend = Backend::start();
    let gw = Gateway::start(&(upstream(&format!("localhost:{}", backend.port), "") + CATCH_ALL));
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200);
    assert_eq!(backend.hits("/api/market/AAPL").await, 1);
}

#[tokio::test]
async fn health_state_survives_a_reload_that_keeps_the_upstream() {
    let backend = Backend::start();
    let hc = "health_check = { interval = \"3s\", timeout = \"500ms\", unhealthy_threshold = 1 }";
    let body = |route_cap: &str, idle: &str| {
        upstream(&backend.addr(), &format!("{hc}\nidle_timeout = \"{idle}\"")) + &CATCH_ALL.replace("upstream = \"api\"\n", &format!("upstream = \"api\"\nmax_body = \"{route_cap}\"\n"))
    };
    let gw = Gateway::start(&body("1MiB", "60s"));
    gw.wait_ready();
    backend.set_healthy(false).await;
    // readiness falls right after a check; the next is 3 s away
    assert!(common::wait_for_status(&gw.admin_url("/readyz"), 503, Duration::from_secs(5)));
    backend.set_healthy(true).await;
    // A reload that changes a route only: the upstream (and what it knows) is kept, so it is
    // still down until its next scheduled check.
    gw.write_config(&body("2MiB", "60s"));
    gw.signal("HUP");
    let t = Instant::now();
    while !gw.log().contains("config reloaded") {
        assert!(t.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while t.elapsed() < Duration::from_millis(1200) {
        assert_eq!(ready(&gw).await, 503, "health was reset by a reload that kept the upstream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A reload that changes the upstream builds a new one, checked at once.
    gw.write_config(&body("2MiB", "30s"));
    gw.signal("HUP");
    assert!(common::wait_for_status(&gw.admin_url("/readyz"), 200, Duration::from_millis(1500)));
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_waits_for_a_passed_check_not_for_pingoras_benefit_of_the_doubt() {
    // pingora starts a server healthy and marks it down after `unhealthy_threshold` (here the
    // default, 2) failed checks: readiness must not believe it while no check has passed
    let mut backend = Backend::start_unready(&[("BACKEND_STARTUP_DELAY", "2.5")]);
    let gw = Gateway::start(&(upstream(&backend.addr(), "health_check = { interval = \"200ms\", timeout = \"300ms\" }") + CATCH_ALL));
    let c = reqwest::Client::new();
    let t = Instant::now();
    let mut polls = 0;
    while t.elapsed() < Duration::from_millis(1500) {
        let r = c.get(gw.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503, "ready {:?} after start with the backend still starting", t.elapsed());
        polls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(polls > 20, "{polls}");
    tokio::task::block_in_place(|| backend.wait_healthy(Duration::from_secs(10)));
    assert!(common::wait_for_status(&gw.admin_url("/readyz"), 200, Duration::from_secs(3)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_rebuilds_an_upstream_keeps_it_ready() {
    let backend = Backend::start();
    let body = |idle: &str| upstream(&backend.addr(), &format!("health_check = {{ interval = \"1s\" }}\nidle_timeout = \"{idle}\"")) + CATCH_ALL;
    let gw = Gateway::start(&body("60s"));
    gw.wait_ready();
    for idle in ["30s", "20s", "10s"] {
        // a changed definition: a new upstream, whose own first check is up to 100 ms away
        gw.write_config(&body(idle));
        gw.signal("HUP");
        let t = Instant::now();
        let c = reqwest::Client::new();
        while t.elapsed() < Duration::from_millis(600) {
            assert_eq!(c.get(gw.admin_url("/readyz")).send().await.unwrap().status(), 200, "readiness fell {:?} after a reload", t.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(gw.log().matches("config reloaded").count(), 3, "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_fails_over_and_passive_health_ejects_the_server() {
    let backend = Backend::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let body = format!(
        "[upstreams.api]\nservers = [\"{dead}\", \"{}\"]\neject_after = 2\neject_for = \"5s\"\n\n{CATCH_ALL}",
        backend.addr()
    );
    let gw = Gateway::start(&body);
    let c = reqwest::Client::new();
    // round-robin sends every other request to the dead server first: each is retried on the
    // live one (nothing was sent, so a POST may be retried too). Its second failure in a row
    // (request 2) ejects it.
    let before_first = Instant::now();
    let mut after_ejection = before_first;
    for i in 0..20 {
        let r = if i % 2 == 0 { c.get(gw.url("/api/market/AAPL")).send().await } else { c.post(gw.url("/debug/echo")).body("x").send().await };
        assert_eq!(r.unwrap().status(), 200, "request {i}");
        if i == 3 {
            after_ejection = Instant::now();
        }
    }
    // the dead server comes back: while ejected it gets nothing, though it now answers
    let listener = std::net::TcpListener::bind(&dead).unwrap();
    let mut revived = Backend::start_on(listener, &[]);
    tokio::task::block_in_place(|| revived.wait_healthy(Duration::from_secs(10)));
    assert!(after_ejection.elapsed() < Duration::from_secs(4), "the revived server started too late to see the ejection");
    for i in 0..10 {
        assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200, "request {i}");
    }
    assert_eq!(revived.total_hits().await, 0, "an ejected server is left out");
    // re-admitted once `eject_for` (5 s) has passed since the ejection, not before
    let readmitted = loop {
        assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200);
        if revived.total_hits().await > 0 {
            break Instant::now();
        }
        assert!(after_ejection.elapsed() < Duration::from_secs(10), "never re-admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(readmitted - before_first >= Duration::from_secs(5), "re-admitted after {:?}", readmitted - before_first);
    let log = gw.log();
    let ejected: Vec<&str> = log.lines().filter(|l| l.contains("server ejected by passive health")).collect();
    assert_eq!(ejected.len(), 1, "ejected once, then left out: {ejected:?}");
    assert!(ejected[0].contains(&dead), "{}", ejected[0]);
    // no final error: every failure was absorbed by the failover
    let m = gw.metrics().await;
    assert!(!m.contains("fastgate_upstream_errors_total{"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_retry_moves_a_safe_request_past_a_reset() {
    let backend = Backend::start();
    // reads each request and closes the connection without a word
    let closing = common::raw_backend(Some(b"")).await;
    let upstream = format!("[upstreams.api]\nservers = [\"{closing}\", \"{}\"]\neject_after = 0\n\n", backend.addr());
    let route = |extra: &str| format!("[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"api\"\n{extra}\n");
    let c = reqwest::Client::new();

    // without `retry`: every other request meets the closing server and fails
    let gw = Gateway::start(&(upstream.clone() + &route("")));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 502).count(), 3, "{statuses:?}");
    drop(gw);

    // with it: a GET is retried on the other server; a POST, which the backend may have acted
    // on, is not
    let gw = Gateway::start(&(upstream + &route("retry = { attempts = 1, on = [\"connect\", \"reset\"] }")));
    for i in 0..6 {
        assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200, "GET {i}");
    }
    let mut posts = Vec::new();
    for _ in 0..6 {
        posts.push(c.post(gw.url("/debug/echo")).body("x").send().await.unwrap().status().as_u16());
    }
    assert_eq!(posts.iter().filter(|s| **s == 502).count(), 3, "{posts:?}");
    drop(gw);

    // `timeout`: a server that never answers costs one read_timeout, then the other answers;
    // a POST is not replayed and gets the 504
    let hanging = common::raw_backend(None).await;
    let upstream = format!("[upstreams.api]\nservers = [\"{hanging}\", \"{}\"]\neject_after = 0\n\n", backend.addr());
    let gw = Gateway::start(&(upstream + &route("read_timeout = \"300ms\"\nretry = { attempts = 1, on = [\"timeout\"] }")));
    for i in 0..4 {
        let started = Instant::now();
        assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200, "GET {i}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
    let mut posts = Vec::new();
    for _ in 0..4 {
        posts.push(c.post(gw.url("/debug/echo")).body("x").send().await.unwrap().status().as_u16());
    }
    assert_eq!(posts.iter().filter(|s| **s == 504).count(), 2, "{posts:?}");
    let out = common::check_config("[upstreams.api]\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"a\"\nmatch = { path = \"/a\" }\nupstream = \"api\"\nretry = { attempts = 9, on = [\"sometimes\"] }\n");
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("retry.attempts") && text.contains("unknown retry condition"), "{text}");
}
