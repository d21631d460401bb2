//! The cache as an RFC 9111 shared cache, one behaviour per test, through the real binary and
//! the example backend's `/debug/cacheable` (which answers with the caching fields the query
//! asks for): origin mode, age arithmetic, `Vary` lists with `*`, 304 header updates,
//! targeted fields (RFC 9213), storable statuses, the client's own `Cache-Control`, and the
//! request fields that are removed so they cannot poison an entry.

use crate::common;

use common::{config_for, Backend, Gateway};
use reqwest::header::HeaderMap;
use serde_json::json;
use std::time::Duration;

const PATH: &str = "/debug/cacheable";

fn route(cache: &str) -> String {
    format!("[[routes]]\nname = \"c\"\nmatch = {{ path_prefix = \"{PATH}\" }}\nupstream = \"api\"\ncache = {cache}\n")
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.headers().clone())
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("-", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn origin_mode_stores_only_what_the_backend_allows() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &route("{ ttl = \"origin\" }")));
    let c = reqwest::Client::new();
    let plain = gw.url(&format!("{PATH}/plain"));
    get(&c, &plain, &[]).await;
    assert_eq!(h(&get(&c, &plain, &[]).await.1, "x-cache"), "MISS", "no freshness, no default: not stored");
    let explicit = gw.url(&format!("{PATH}/explicit?cc=max-age%3D60"));
    get(&c, &explicit, &[]).await;
    assert_eq!(h(&get(&c, &explicit, &[]).await.1, "x-cache"), "HIT");
    // heuristic freshness from Last-Modified (10% of its age) where the RFC allows it
    let lm = gw.url(&format!("{PATH}/lm?lm=Mon,%2001%20Jan%202024%2000:00:00%20GMT"));
    get(&c, &lm, &[]).await;
    assert_eq!(h(&get(&c, &lm, &[]).await.1, "x-cache"), "HIT");
    // `cache = "on"` is the same mode
    let gw2 = Gateway::start(&config_for(&backend.addr(), &route("\"on\"")));
    let plain2 = gw2.url(&format!("{PATH}/plain2"));
    get(&c, &plain2, &[]).await;
    assert_eq!(h(&get(&c, &plain2, &[]).await.1, "x-cache"), "MISS");
    // `ttl = "0s"` is refused with the way to say it
    let out = common::check_config(&config_for(&backend.addr(), &route("{ ttl = \"0s\" }")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ttl = \"origin\""));
}

#[tokio::test]
async fn age_counts_the_origin_age_the_date_and_the_time_stored() {
    // the app writes `Date` itself (uvicorn's own would make two)
    let backend = Backend::start_with_env(&[("BACKEND_DATE_HEADER", "0")]);
    let gw = Gateway::start(&config_for(&backend.addr(), &route("{ ttl = \"60s\" }")));
    let c = reqwest::Client::new();
    // max-age=60 with Age: 58 has two seconds left
    let aged = gw.url(&format!("{PATH}/aged?cc=max-age%3D60&age=58"));
    get(&c, &aged, &[]).await;
    let (_, hit) = get(&c, &aged, &[]).await;
    assert_eq!(h(&hit, "x-cache"), "HIT");
    let age: u64 = h(&hit, "age").parse().unwrap();
    assert!((58..=60).contains(&age), "the stored age plus the time resident: {age}");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(h(&get(&c, &aged, &[]).await.1, "x-cache"), "EXPIRED", "expired by its age, not 60 s after arrival");
    // a Date 100 s in the past with an Expires 60 s after it: already stale on arrival
    let dated = gw.url(&format!("{PATH}/dated?date_ago=100&cc=max-age%3D30"));
    get(&c, &dated, &[]).await;
    assert_ne!(h(&get(&c, &dated, &[]).await.1, "x-cache"), "HIT", "apparent age 100 s > max-age 30 s");
    // Expires is read against the response's Date: 5 s of life, whatever the local clock says
    let exp = gw.url(&format!("{PATH}/exp?expires=5"));
    get(&c, &exp, &[]).await;
    assert_eq!(h(&get(&c, &exp, &[]).await.1, "x-cache"), "HIT");
}

#[tokio::test]
async fn vary_with_a_star_anywhere_is_never_matched() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &route("{ ttl = \"60s\" }")));
    let c = reqwest::Client::new();
    let url = gw.url(&format!("{PATH}/vstar?vary=Accept,%20*"));
    get(&c, &url, &[]).await;
    assert_eq!(h(&get(&c, &url, &[]).await.1, "x-cache"), "MISS");
    assert_eq!(backend.hits(&format!("{PATH}/vstar")).await, 2);
}

#[tokio::test]
async fn a_304_updates_the_stored_header_fields() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &route("{ ttl = \"60s\" }")));
    let c = reqwest::Client::new();
    let url = gw.url(&format!("{PATH}/meta?fixed_etag=e1&cc=max-age%3D1"));
    let (_, first) = get(&c, &url, &[]).await;
    assert_ne!(h(&first, "x-data-version"), "v7");
    backend.mode(json!({"version": 7})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, revalidated) = get(&c, &url, &[]).await;
    assert_eq!(backend.conditionals().await, 1, "revalidated with a 304");
    assert_eq!(h(&revalidated, "x-data-version"), "v7", "the 304's fields replace the stored ones");
    let (_, hit) = get(&c, &url, &[]).await;
    assert_eq!((h(&hit, "x-cache"), h(&hit, "x-data-version")), ("HIT", "v7"), "and stay stored");
}

#[tokio::test]
async fn targeted_fields_come_before_cache_control() {
    let backend = Backend::start();
    let routes = route("{ ttl = \"origin\", targeted_field = \"Fastgate-Cache-Control\" }");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    // CDN-Cache-Control allows what Cache-Control forbids
    let cdn = gw.url(&format!("{PATH}/cdn?cc=no-store&cdn=max-age%3D60"));
    get(&c, &cdn, &[]).await;
    let (_, hit) = get(&c, &cdn, &[]).await;
    assert_eq!(h(&hit, "x-cache"), "HIT");
    assert_eq!(h(&hit, "cache-control"), "no-store", "downstream caches still get the backend's Cache-Control");
    // the route's own field beats CDN-Cache-Control, and is not passed on
    let own = gw.url(&format!("{PATH}/own?cdn=max-age%3D60&fcc=no-store"));
    get(&c, &own, &[]).await;
    let (_, second) = get(&c, &own, &[]).await;
    assert_eq!(h(&second, "x-cache"), "MISS");
    assert_eq!(h(&second, "fastgate-cache-control"), "-");
}

#[tokio::test]
async fn any_final_status_with_explicit_freshness_is_stored_and_errors_need_negative_ttl() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &route("{ ttl = \"60s\" }")));
    let c = reqwest::Client::new();
    for status in [302, 307, 403, 500] {
        let url = gw.url(&format!("{PATH}/s{status}?status={status}&cc=max-age%3D60"));
        let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        get(&no_redirect, &url, &[]).await;
        let (s, hit) = get(&no_redirect, &url, &[]).await;
        assert_eq!((s, h(&hit, "x-cache")), (status, "HIT"), "{status} with max-age");
    }
    // without explicit freshness: a 302 is not heuristically cacheable, a 404 needs negative_ttl
    for status in [302, 404] {
        let url = gw.url(&format!("{PATH}/n{status}?status={status}"));
        let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        get(&no_redirect, &url, &[]).await;
        assert_eq!(h(&get(&no_redirect, &url, &[]).await.1, "x-cache"), "MISS", "{status} without freshness");
    }
    let gw2 = Gateway::start(&config_for(&backend.addr(), &route("{ ttl = \"60s\", negative_ttl = \"1s\" }")));
    let url = gw2.url(&format!("{PATH}/neg?status=404"));
    get(&c, &url, &[]).await;
    assert_eq!(h(&get(&c, &url, &[]).await.1, "x-cache"), "HIT");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_ne!(h(&get(&c, &url, &[]).await.1, "x-cache"), "HIT", "for negative_ttl only, not the route's ttl");
}

#[tokio::test]
async fn the_clients_cache_control_is_honoured_unless_the_route_ignores_it() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &route("{ ttl = \"60s\" }")));
    let c = reqwest::Client::new();
    let url = gw.url(&format!("{PATH}/cc?etag=a"));
    get(&c, &url, &[]).await;
    assert_eq!(h(&get(&c, &url, &[]).await.1, "x-cache"), "HIT");
    // no-cache and max-age=0: revalidated first (a 304 here), never served unchecked
    for cc in ["no-cache", "max-age=0"] {
        let before = backend.conditionals().await;
        get(&c, &url, &[("cache-control", cc)]).await;
        assert_eq!(backend.conditionals().await, before + 1, "{cc} revalidates");
    }
    // max-age=N: an entry older than N is revalidated
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = backend.conditionals().await;
    get(&c, &url, &[("cache-control", "max-age=0")]).await;
    get(&c, &url, &[("cache-control", "max-age=3600")]).await;
    assert_eq!(backend.conditionals().await, before + 1);
    // no-store: the answer is not stored
    let ns = gw.url(&format!("{PATH}/nostore"));
    get(&c, &ns, &[("cache-control", "no-store")]).await;
    assert_eq!(h(&get(&c, &ns, &[]).await.1, "x-cache"), "MISS");
    // only-if-cached: a stored answer, or 504 without going upstream
    let (s, hit) = get(&c, &url, &[("cache-control", "only-if-cached")]).await;
    assert_eq!((s, h(&hit, "x-cache")), (200, "HIT"));
    let absent = gw.url(&format!("{PATH}/absent"));
    let r = c.get(&absent).header("cache-control", "only-if-cached").send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["code"], "not_cached");
    assert_eq!(backend.hits(&format!("{PATH}/absent")).await, 0);

    // a route that shields its backend ignores the client's no-cache
    let gw2 = Gateway::start(&config_for(&backend.addr(), &route("{ ttl = \"60s\", ignore_client_no_cache = true }")));
    let url2 = gw2.url(&format!("{PATH}/shield?etag=b"));
    get(&c, &url2, &[]).await;
    let before = backend.conditionals().await;
    let (_, hit) = get(&c, &url2, &[("cache-control", "no-cache")]).await;
    assert_eq!((h(&hit, "x-cache"), backend.conditionals().await), ("HIT", before));
}

#[tokio::test]
async fn target_rewriting_headers_never_reach_the_cache_or_the_backend() {
    let backend = Backend::start();
    let gw = Gateway::start_with(
        &config_for(&backend.addr(), &format!("{}{}", route("{ ttl = \"60s\" }"), "[[routes]]\nname = \"echo\"\nmatch = { path_prefix = \"/debug/echo\" }\nupstream = \"api\"\n")),
        "remove_request_headers = [\"X-Forwarded-Prefix\"]",
        &[],
    );
    let c = reqwest::Client::new();
    let r = c
        .get(gw.url("/debug/echo/x"))
        .header("X-Original-URL", "/admin")
        .header("X-Rewrite-URL", "/admin")
        .header("X-Original-URI", "/admin")
        .header("X-Forwarded-Prefix", "/evil")
        .header("X-Kept", "1")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let names: Vec<&str> = v["headers"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap()).collect();
    for gone in ["x-original-url", "x-rewrite-url", "x-original-uri", "x-forwarded-prefix"] {
        assert!(!names.contains(&gone), "{gone} reached the backend: {names:?}");
    }
    assert!(names.contains(&"x-kept"), "{names:?}");
}

#[tokio::test]
async fn min_fresh_proxy_revalidate_304_framing_fields_and_a_backend_206() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &route("{ ttl = \"60s\", stale_while_revalidate = \"30s\" }")));
    let c = reqwest::Client::new();
    let hits = |name: &'static str| {
        let backend = &backend;
        async move { backend.hits(&format!("{PATH}/{name}")).await }
    };

    // min-fresh=N: an entry fresh for less than N more seconds is fetched again
    let mf = gw.url(&format!("{PATH}/minfresh?cc=max-age%3D30"));
    get(&c, &mf, &[]).await;
    let (_, hit) = get(&c, &mf, &[("cache-control", "min-fresh=5")]).await;
    assert_eq!((h(&hit, "x-cache"), hits("minfresh").await), ("HIT", 1), "fresh for 30 s more: enough");
    let (_, asked) = get(&c, &mf, &[("cache-control", "min-fresh=60")]).await;
    assert_ne!(h(&asked, "x-cache"), "HIT");
    assert_eq!(hits("minfresh").await, 2, "fresh for less than 60 s: the backend was asked");

    // proxy-revalidate: once stale, never served stale by a shared cache, whatever the
    // route's stale_while_revalidate says
    let pr = gw.url(&format!("{PATH}/proxyrev?cc=max-age%3D1%2C%20proxy-revalidate"));
    get(&c, &pr, &[]).await;
    assert_eq!(h(&get(&c, &pr, &[]).await.1, "x-cache"), "HIT");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, after) = get(&c, &pr, &[]).await;
    assert_ne!(h(&after, "x-cache"), "STALE");
    assert_eq!(hits("proxyrev").await, 2, "revalidated before anything was served");

    // a 304 carrying Vary and `Content-Length: 0` (what some servers send) changes neither: the
    // stored body keeps its length and its key; the other fields it carries are taken
    let rv = gw.url(&format!("{PATH}/framing?cc=max-age%3D1&fixed_etag=f1&vary304=X-Lang&length304=0"));
    let (_, first) = get(&c, &rv, &[]).await;
    let length = h(&first, "content-length").to_string();
    assert!(length.parse::<usize>().unwrap() > 0, "{first:?}");
    backend.mode(json!({"version": 9})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = backend.conditionals().await;
    // served stale (the route's window) while the 304 comes back in the background
    get(&c, &rv, &[]).await;
    let started = std::time::Instant::now();
    while backend.conditionals().await == before {
        assert!(started.elapsed() < Duration::from_secs(5), "never revalidated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the refreshed entry (the 304 is counted by the backend just before the gateway has it)
    let r = loop {
        let r = c.get(&rv).send().await.unwrap();
        if h(r.headers(), "x-cache") == "HIT" {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", r.headers());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let headers = r.headers().clone();
    assert_eq!(h(&headers, "x-data-version"), "v9", "the 304's own fields are taken");
    assert_eq!(h(&headers, "content-length"), length);
    assert_eq!(h(&headers, "vary"), "-", "{headers:?}");
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len().to_string(), length, "the whole stored body");
    let (_, other_lang) = get(&c, &rv, &[("x-lang", "fr")]).await;
    assert_eq!(h(&other_lang, "x-cache"), "HIT", "the 304's Vary did not split the key");
    backend.mode(json!({"version": 0})).await;

    // a backend 206 is never stored, even with explicit freshness
    let partial = gw.url(&format!("{PATH}/partial?status=206&cc=max-age%3D60"));
    for n in 1..=2 {
        let (status, r) = get(&c, &partial, &[]).await;
        assert_eq!((status, h(&r, "x-cache")), (206, "MISS"), "request {n}");
    }
    assert_eq!(hits("partial").await, 2);
}
