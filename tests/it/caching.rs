//! Caching as the book documents it, case by case beyond `cache.rs`: the cache lock's timeout,
//! a custom tag field and multi-tag purges, re-warming, the readiness bound on warming, the
//! backend's own freshness and stale directives (`Expires`, `s-maxage`, `stale-while-revalidate`,
//! `no-cache`, `must-revalidate`), stale-if-error on a timeout, `Vary: *`, 206, HEAD sharing the
//! GET entry, cookie bypass, `Last-Modified` revalidation, and invalidation by PUT, PATCH,
//! DELETE, `Content-Location` and `{cookie:..}`/`{query:..}` tag templates.

use crate::common;

use common::{config_for, metric_value, Backend, Gateway};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PATH: &str = "/debug/cacheable";

fn cached(name: &str, prefix: &str, cache: &str, extra: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"{prefix}\" }}\nupstream = \"api\"\ncache = {cache}\n{extra}\n")
}

async fn get(c: &reqwest::Client, url: String) -> (u16, HeaderMap, Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.json().await.unwrap_or(Value::Null))
}

fn xc(h: &HeaderMap) -> &str {
    h.get("x-cache").map_or("-", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_miss_waits_for_the_fetch_in_flight_only_up_to_lock_timeout() {
    let backend = Backend::start();
    let gw = Gateway::start(&format!("[cache]\nlock_timeout = \"300ms\"\n\n{}", config_for(&backend.addr(), &cached("c", PATH, "{ ttl = \"60s\" }", ""))));
    backend.mode(json!({"hold": "lock"})).await;
    let url = gw.url(&format!("{PATH}/locked"));
    let first = tokio::spawn(reqwest::get(url.clone()));
    backend.wait_holding("lock", 1).await;
    let t = Instant::now();
    let second = tokio::spawn(reqwest::get(url.clone()));
    // the second waits on the lock, gives up after lock_timeout and asks the backend itself
    backend.wait_holding("lock", 2).await;
    // bounded from above too: without `lock_timeout` the default (5 s) would hold it
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(2), "went upstream after {waited:?}");
    backend.mode(json!({"hold": null})).await;
    backend.release("lock").await;
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    assert_eq!(backend.hits(&format!("{PATH}/locked")).await, 2);
}

#[tokio::test]
async fn a_custom_tag_field_and_purges_of_several_tags() {
    let backend = Backend::start();
    let gw = Gateway::start(&format!(
        "[cache]\ntag_header = \"Surrogate-Key\"\n\n{}",
        config_for(&backend.addr(), &cached("c", PATH, "{ ttl = \"60s\" }", ""))
    ));
    let c = reqwest::Client::new();
    let tagged = |n: &str, tag: &str| gw.url(&format!("{PATH}/{n}?tagh=Surrogate-Key&tag={tag}"));
    for (n, tag) in [("a", "red"), ("b", "blue"), ("c", "green")] {
        let (_, h, _) = get(&c, tagged(n, tag)).await;
        assert!(h.get("surrogate-key").is_none(), "the tag field is not shown to clients");
    }
    let r = c.post(gw.admin_url("/admin/cache/purge")).json(&json!({"tags": ["red", "blue"]})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"purged": 2}));
    assert_eq!(xc(&get(&c, tagged("a", "red")).await.1), "MISS");
    assert_eq!(xc(&get(&c, tagged("b", "blue")).await.1), "MISS");
    assert_eq!(xc(&get(&c, tagged("c", "green")).await.1), "HIT");
}

#[tokio::test]
async fn warming_repeats_on_warm_interval() {
    let backend = Backend::start();
    let body = format!(
        "[cache]\nwarm_interval = \"1s\"\n[[cache.warm]]\npath = \"{PATH}/rewarm\"\n\n{}",
        config_for(&backend.addr(), &cached("c", PATH, "{ ttl = \"60s\" }", ""))
    );
    let gw = Gateway::start(&body);
    gw.wait_ready();
    assert_eq!(backend.hits(&format!("{PATH}/rewarm")).await, 1);
    // Every round asks through the cache: a fresh entry costs the backend nothing, a purged
    // (or expired) one is fetched again before any client asks.
    let c = reqwest::Client::new();
    c.post(gw.admin_url("/admin/cache/purge")).json(&json!({"all": true})).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while backend.hits(&format!("{PATH}/rewarm")).await < 2 {
        assert!(Instant::now() < deadline, "the next warming round did not refill the entry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(xc(&get(&c, gw.url(&format!("{PATH}/rewarm"))).await.1), "HIT");
    tokio::time::sleep(Duration::from_millis(2200)).await; // two more rounds, on a fresh entry
    assert_eq!(backend.hits(&format!("{PATH}/rewarm")).await, 2);
}

#[tokio::test]
async fn readiness_waits_for_warming_only_up_to_warm_ready_timeout() {
    let backend = Backend::start();
    backend.mode(json!({"hold": "warm"})).await;
    let body = format!(
        "[cache]\nwarm_ready_timeout = \"1s\"\n[[cache.warm]]\npath = \"{PATH}/slow-warm\"\n\n{}",
        config_for(&backend.addr(), &cached("c", PATH, "{ ttl = \"60s\" }", ""))
    );
    let t = Instant::now();
    let gw = Gateway::start(&body);
    backend.wait_holding("warm", 1).await;
    let r: Value = reqwest::get(gw.admin_url("/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!((r["ready"].clone(), r["cache_warmed"].clone()), (json!(false), json!(false)), "{r}");
    assert!(common::wait_for_status(&gw.admin_url("/readyz"), 200, Duration::from_secs(3)));
    assert!(t.elapsed() >= Duration::from_millis(900), "ready after {:?}", t.elapsed());
    assert_eq!(backend.holding("warm").await, 1, "ready while the warming request still hangs");
    backend.mode(json!({"hold": null})).await;
    backend.release("warm").await;
}

#[tokio::test]
async fn the_backends_own_freshness_and_stale_rules() {
    let backend = Backend::start();
    // the route alone would keep entries 60 s and serve stale for 30 s more
    let gw = Gateway::start(&config_for(&backend.addr(), &cached("c", PATH, "{ ttl = \"60s\", stale_while_revalidate = \"30s\", stale_if_error = \"30s\" }", "")));
    let c = reqwest::Client::new();
    let url = |n: &str, q: &str| gw.url(&format!("{PATH}/{n}?{q}"));
    // Expires (with Date) and s-maxage end freshness before the route's ttl would. (Three
    // seconds, not one: Expires has one-second resolution, and a slow machine must still see
    // the entry fresh right after storing it.)
    let expires = url("expires", "expires=3");
    let smax = url("smax", "cc=max-age%3D60%2C%20s-maxage%3D3");
    // no-cache: stored, but revalidated every time; must-revalidate: never served stale
    let nocache = url("nocache", "cc=no-cache");
    let mustrev = url("mustrev", "cc=max-age%3D3%2C%20must-revalidate");
    // the backend's own stale-while-revalidate (the route's is 30 s too; this one is 0 below)
    for u in [&expires, &smax, &nocache, &mustrev] {
        assert_eq!(xc(&get(&c, u.clone()).await.1), "MISS");
    }
    assert_eq!(xc(&get(&c, expires.clone()).await.1), "HIT");
    assert_eq!(xc(&get(&c, smax.clone()).await.1), "HIT");
    // no-cache: each use is revalidated with the backend, which sees every one
    for n in 1..=2 {
        let before = backend.hits(&format!("{PATH}/nocache")).await;
        assert_ne!(xc(&get(&c, nocache.clone()).await.1), "HIT", "no-cache is never a plain hit");
        assert_eq!(backend.hits(&format!("{PATH}/nocache")).await, before + 1, "use {n} revalidated");
    }
    tokio::time::sleep(Duration::from_millis(4100)).await;
    // past Expires: stale, served while revalidating (the route's window)
    let (_, h, _) = get(&c, expires.clone()).await;
    assert_eq!(xc(&h), "STALE", "{h:?}");
    // past s-maxage: a shared cache revalidates first (s-maxage implies proxy-revalidate)
    let before = backend.hits(&format!("{PATH}/smax")).await;
    assert_ne!(xc(&get(&c, smax.clone()).await.1), "STALE");
    assert_eq!(backend.hits(&format!("{PATH}/smax")).await, before + 1);
    // must-revalidate: the backend is asked before anything is served
    let before = backend.hits(&format!("{PATH}/mustrev")).await;
    let (_, h, _) = get(&c, mustrev.clone()).await;
    assert_ne!(xc(&h), "STALE");
    assert_eq!(backend.hits(&format!("{PATH}/mustrev")).await, before + 1);
    // and when the backend fails, must-revalidate and no-cache pass the failure on
    backend.mode(json!({"fail": 503})).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(get(&c, mustrev.clone()).await.0, 503);
    assert_eq!(get(&c, nocache.clone()).await.0, 503);
}

#[tokio::test]
async fn the_backends_stale_while_revalidate_applies_without_the_routes() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &cached("c", PATH, "{ ttl = \"60s\" }", "")));
    let c = reqwest::Client::new();
    let u = gw.url(&format!("{PATH}/bswr?cc=max-age%3D1%2C%20stale-while-revalidate%3D30"));
    assert_eq!(xc(&get(&c, u.clone()).await.1), "MISS");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    backend.mode(json!({"hold": "bswr"})).await;
    let (s, h, _) = get(&c, u.clone()).await;
    assert_eq!((s, xc(&h)), (200, "STALE"), "served at once while the refresh is held");
    backend.mode(json!({"hold": null})).await;
    backend.release("bswr").await;
}

#[tokio::test]
async fn stale_if_error_covers_an_upstream_timeout() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &cached("c", PATH, "{ ttl = \"1s\", stale_if_error = \"60s\" }", "timeout = \"300ms\"")));
    let c = reqwest::Client::new();
    let u = gw.url(&format!("{PATH}/sie-timeout"));
    let (_, _, v1) = get(&c, u.clone()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    backend.mode(json!({"delay": 2.0})).await;
    let t = Instant::now();
    let (s, h, v) = get(&c, u.clone()).await;
    assert_eq!((s, xc(&h)), (200, "STALE"));
    assert_eq!(v, v1);
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    backend.mode(json!({"delay": 0})).await;
}

#[tokio::test]
async fn vary_star_206_head_and_cookies() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &cached("c", PATH, "{ ttl = \"60s\" }", "")));
    let c = reqwest::Client::new();
    // Vary: * is never stored
    let star = gw.url(&format!("{PATH}/star?vary=*"));
    assert_eq!(xc(&get(&c, star.clone()).await.1), "MISS");
    assert_eq!(xc(&get(&c, star.clone()).await.1), "MISS");
    assert_eq!(backend.hits(&format!("{PATH}/star")).await, 2);
    // a Range request is served from the whole body, which the miss fetched and stored
    let part = gw.url(&format!("{PATH}/part"));
    let r = c.get(part.clone()).header("Range", "bytes=0-9").send().await.unwrap();
    assert_eq!(r.status(), 206);
    let total: usize = r.headers()["content-range"].to_str().unwrap().rsplit('/').next().unwrap().parse().unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 10);
    let (s, h, v) = get(&c, part.clone()).await;
    assert_eq!((s, xc(&h), v["name"].as_str()), (200, "HIT", Some("part")));
    assert_eq!(h["content-length"], total.to_string().as_str(), "the stored body is the whole one");
    assert_eq!(backend.hits(&format!("{PATH}/part")).await, 1);
    // HEAD is answered from the GET's entry
    let before = backend.hits(&format!("{PATH}/part")).await;
    let r = c.head(part.clone()).send().await.unwrap();
    assert_eq!((r.status().as_u16(), xc(r.headers())), (200, "HIT"));
    assert_eq!(r.headers()["content-length"], h["content-length"]);
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(backend.hits(&format!("{PATH}/part")).await, before);
    // a request with a Cookie (on a route whose key names none) bypasses the cache both ways
    let (_, h, _) = get(&c, part.clone()).await;
    assert_eq!(xc(&h), "HIT");
    let r = c.get(part.clone()).header("Cookie", "session=s1").send().await.unwrap();
    assert_eq!(xc(r.headers()), "BYPASS");
    let cookie_only = gw.url(&format!("{PATH}/cookied"));
    let r = c.get(cookie_only.clone()).header("Cookie", "session=s1").send().await.unwrap();
    assert_eq!(xc(r.headers()), "BYPASS");
    assert_eq!(xc(&get(&c, cookie_only.clone()).await.1), "MISS", "a bypassed response was not stored");
}

#[tokio::test]
async fn last_modified_revalidation() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &cached("c", PATH, "{ ttl = \"60s\" }", "")));
    let c = reqwest::Client::new();
    let lm = "Wed, 21 Oct 2026 07:28:00 GMT";
    let u = gw.url(&format!("{PATH}/lm?cc=max-age%3D1&lm={}", lm.replace(' ', "%20").replace(',', "%2C")));
    let (_, h, body) = get(&c, u.clone()).await;
    assert_eq!(h["last-modified"], lm);
    // a client's If-Modified-Since is answered from the cache
    let r = c.get(u.clone()).header("If-Modified-Since", lm).send().await.unwrap();
    assert_eq!(r.status(), 304);
    // once stale, the gateway revalidates with If-Modified-Since and keeps the body on a 304
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (s, _, v) = get(&c, u.clone()).await;
    assert_eq!((s, v), (200, body));
    assert_eq!(backend.conditionals().await, 1);
}

#[tokio::test]
async fn writes_invalidate_by_method_content_location_and_tag_templates() {
    let backend = Backend::start();
    let routes = cached("c", PATH, "{ ttl = \"60s\" }", "invalidate_tags = [\"user:{cookie:uid}\", \"item:{query:id}\"]");
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    let u = |n: &str| gw.url(&format!("{PATH}/{n}"));
    // PUT, PATCH and DELETE drop their own URL
    for method in ["PUT", "PATCH", "DELETE"] {
        let name = format!("m-{}", method.to_lowercase());
        assert_eq!(xc(&get(&c, u(&name)).await.1), "MISS");
        assert_eq!(xc(&get(&c, u(&name)).await.1), "HIT");
        let r = c.request(method.parse().unwrap(), u(&name)).send().await.unwrap();
        assert!(r.status().is_success(), "{method}");
        assert_eq!(xc(&get(&c, u(&name)).await.1), "MISS", "after {method}");
    }
    // a failed write invalidates nothing
    get(&c, u("kept")).await;
    backend.mode(json!({"fail": 409})).await;
    assert_eq!(c.put(u("kept")).send().await.unwrap().status(), 409);
    backend.mode(json!({"fail": null})).await;
    assert_eq!(xc(&get(&c, u("kept")).await.1), "HIT");
    // Content-Location names another entry
    get(&c, u("target")).await;
    let r = c.post(format!("{}?cl={PATH}/target", u("elsewhere"))).send().await.unwrap();
    assert_eq!(r.headers()["content-location"], format!("{PATH}/target").as_str());
    assert_eq!(xc(&get(&c, u("target")).await.1), "MISS");
    // tag templates fill from the write's cookie and query
    get(&c, u("user7?tag=user:7")).await;
    get(&c, u("item3?tag=item:3")).await;
    get(&c, u("item4?tag=item:4")).await;
    c.post(format!("{}?id=3", u("write"))).header("Cookie", "uid=7; theme=dark").send().await.unwrap();
    assert_eq!(xc(&get(&c, u("user7?tag=user:7")).await.1), "MISS");
    assert_eq!(xc(&get(&c, u("item3?tag=item:3")).await.1), "MISS");
    assert_eq!(xc(&get(&c, u("item4?tag=item:4")).await.1), "HIT");
    // PUT, PATCH, DELETE: 1 each; Content-Location: 1; tags: 2
    let m = gw.wait_metric("fastgate_cache_purged_total{cause=\"write\"}", 6.0).await;
    assert_eq!(metric_value(&m, "fastgate_cache_purged_total{cause=\"write\"}"), Some(6.0));
}
