//! Rate limits as the book describes them, beyond the per-key basics in `policies.rs`: a missing
//! key falling back to the client address, bypass by address and by CIDR, hourly and
//! arbitrary-period rates, which limit `RateLimit` reports when several apply, and idle keys
//! evicted with `fastgate_rate_limit_keys` counting what is left.

use crate::common;

use common::{config_for, metric_value, Backend, Gateway};
use std::time::{Duration, Instant};

fn route(extra: &str) -> String {
    format!("[[routes]]\nname = \"m\"\nmatch = {{ path_prefix = \"/api/market\" }}\nupstream = \"api\"\n{extra}\n")
}

async fn status(c: &reqwest::Client, gw: &Gateway, key: Option<&str>) -> reqwest::Response {
    let mut req = c.get(gw.url("/api/market/AAPL"));
    if let Some(k) = key {
        req = req.header("X-Key", k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_missing_key_can_fall_back_to_the_client_address() {
    let backend = Backend::start();
    let limit = "rate_limit = [{ rate = \"1/h\", burst = 2, key = \"header:X-Key\", on_missing_key = \"client_ip\" }]";
    let gw = Gateway::start(&config_for(&backend.addr(), &route(limit)));
    let c = reqwest::Client::new();
    // without the header, requests count against this client's address...
    assert_eq!(status(&c, &gw, None).await.status(), 200);
    assert_eq!(status(&c, &gw, None).await.status(), 200);
    assert_eq!(status(&c, &gw, None).await.status(), 429);
    // ...while a key has a budget of its own
    assert_eq!(status(&c, &gw, Some("k1")).await.status(), 200);
}

#[tokio::test]
async fn bypass_by_address_and_by_cidr() {
    let backend = Backend::start();
    let c = reqwest::Client::new();
    for bypass in ["\"127.0.0.1\"", "\"127.0.0.0/8\""] {
        let limit = format!("rate_limit = [{{ rate = \"1/h\", burst = 1 }}]\nrate_limit_bypass = [{bypass}]");
        let gw = Gateway::start(&config_for(&backend.addr(), &route(&limit)));
        for _ in 0..4 {
            assert_eq!(status(&c, &gw, None).await.status(), 200, "{bypass}");
        }
    }
    // and the same limit without a bypass refuses the second
    let gw = Gateway::start(&config_for(&backend.addr(), &route("rate_limit = [{ rate = \"1/h\", burst = 1 }]")));
    assert_eq!(status(&c, &gw, None).await.status(), 200);
    assert_eq!(status(&c, &gw, None).await.status(), 429);
}

#[tokio::test]
async fn hourly_and_arbitrary_period_rates() {
    let backend = Backend::start();
    let c = reqwest::Client::new();
    // (rate, burst): the refusal's Retry-After is one emission interval (period / count)
    for (rate, interval_s) in [("2/h", 1800u64), ("2/10s", 5)] {
        let gw = Gateway::start(&config_for(&backend.addr(), &route(&format!("rate_limit = [{{ rate = \"{rate}\", name = \"r\" }}]"))));
        let r = status(&c, &gw, None).await;
        // the policy says the burst (2) and how long a whole burst takes to refill
        assert_eq!(r.headers()["ratelimit-policy"], format!("\"r\";q=2;w={}", interval_s * 2).as_str(), "{rate}");
        assert_eq!(status(&c, &gw, None).await.status(), 200);
        let r = status(&c, &gw, None).await;
        assert_eq!(r.status(), 429, "{rate}");
        let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry <= interval_s && retry + 2 >= interval_s, "{rate}: Retry-After {retry}");
    }
}

#[tokio::test]
async fn ratelimit_reports_the_limit_closest_to_refusing() {
    let backend = Backend::start();
    let limits = "rate_limit = [{ rate = \"100/m\", burst = 10, key = \"header:X-Key\", name = \"per-key\" }, { rate = \"100/m\", burst = 3, key = \"route\", name = \"everyone\" }]";
    let gw = Gateway::start(&config_for(&backend.addr(), &route(limits)));
    let c = reqwest::Client::new();
    let r = status(&c, &gw, Some("a")).await;
    assert_eq!(r.headers()["ratelimit-policy"], "\"per-key\";q=10;w=6, \"everyone\";q=3;w=2");
    assert!(r.headers()["ratelimit"].to_str().unwrap().starts_with("\"everyone\";r=2;"), "{:?}", r.headers()["ratelimit"]);
    // a second key drains the shared limit further; the tightest is still `everyone`
    let r = status(&c, &gw, Some("b")).await;
    assert!(r.headers()["ratelimit"].to_str().unwrap().starts_with("\"everyone\";r=1;"));
    status(&c, &gw, Some("c")).await;
    let r = status(&c, &gw, Some("d")).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("`everyone`"));
    gw.wait_metric("fastgate_rate_limited_total{limit=\"everyone\",route=\"m\"}", 1.0).await;
}

#[tokio::test]
async fn idle_keys_are_evicted_and_counted() {
    let backend = Backend::start();
    // `slow` keys stay below full burst for an hour; `fast` keys are full again at once
    let routes = "[[routes]]\nname = \"slow\"\nmatch = { path_prefix = \"/api/market\" }\nupstream = \"api\"\nrate_limit = [{ rate = \"1/h\", burst = 5, key = \"header:X-Key\" }]\n\n\
                  [[routes]]\nname = \"fast\"\nmatch = { path_prefix = \"/api/static\" }\nupstream = \"api\"\nrate_limit = [{ rate = \"1000/s\", burst = 1, key = \"header:X-Key\" }]\n";
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let c = reqwest::Client::new();
    for k in ["a", "b", "c"] {
        assert_eq!(status(&c, &gw, Some(k)).await.status(), 200);
        assert_eq!(c.get(gw.url("/api/static/currencies")).header("X-Key", k).send().await.unwrap().status(), 200);
    }
    // six keys tracked; at the next upkeep (every 10 s) the three full ones go
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = gw.metrics().await;
        if metric_value(&m, "fastgate_rate_limit_keys") == Some(3.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // an evicted key starts again with a full budget; a kept one remembers
    assert_eq!(status(&c, &gw, Some("a")).await.headers()["ratelimit"].to_str().unwrap().split(';').nth(1), Some("r=3"));
}

#[tokio::test]
async fn a_key_spelled_differently_is_the_same_client() {
    let backend = Backend::start();
    let limit = "rate_limit = [{ rate = \"1/h\", burst = 1, key = \"query:api_key\" }]";
    let gw = Gateway::start(&config_for(&backend.addr(), &route(limit)));
    let c = reqwest::Client::new();
    let get = |q: &str| c.get(gw.url(&format!("/api/market/AAPL?{q}"))).send();
    assert_eq!(get("api_key=abc").await.unwrap().status(), 200);
    // FastAPI reads each of these as `abc`: so does the limit
    for q in ["api_key=%61bc", "api_key=a%62c", "api%5Fkey=abc", "api_key=other&api_key=abc"] {
        assert_eq!(get(q).await.unwrap().status(), 429, "{q}");
    }
    // and the first of two is not the one that counts (the backend reads the last)
    assert_eq!(get("api_key=abc&api_key=fresh").await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_path_parameter_key_gives_each_resource_its_own_bucket() {
    let backend = Backend::start();
    let limit = "[[routes]]\nname = \"quote\"\nmatch = { path = \"/api/market/{symbol}\" }\nupstream = \"api\"\nrate_limit = [{ rate = \"1/h\", burst = 2, key = \"path:symbol\" }]\n";
    let gw = Gateway::start(&config_for(&backend.addr(), limit));
    let c = reqwest::Client::new();
    let get = |p: &str| c.get(gw.url(p)).send();
    assert_eq!(get("/api/market/AAPL").await.unwrap().status(), 200);
    assert_eq!(get("/api/market/AAPL").await.unwrap().status(), 200);
    assert_eq!(get("/api/market/AAPL").await.unwrap().status(), 429, "AAPL's bucket is empty");
    // the same client, another symbol: a bucket of its own
    assert_eq!(get("/api/market/MSFT").await.unwrap().status(), 200);
    // read as the backend reads it: percent-decoded, so a spelling is not a new bucket
    assert_eq!(get("/api/market/%41APL").await.unwrap().status(), 429);
    // a key naming no parameter of the route's template is refused with a hint
    let out = common::check_config(&config_for(&backend.addr(), &limit.replace("path:symbol", "path:ticker")));
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ticker"), "{text}");
}
