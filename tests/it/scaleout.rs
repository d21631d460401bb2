//! Two replicas sharing one real `redis-server`: a limit holds across both (exactly, and
//! within the lease bound), an entry filled through one is a hit on the other, purges and a
//! write's invalidation through one reach the other, and killing Redis mid-load leaves both
//! answering per `on_state_error`, none past its timeout, until Redis returns and sharing
//! resumes.

use crate::common;

use common::{config_for, metric_value, Backend, Gateway, RedisServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `[state]` for a replica of a fleet using `prefix` in `redis`.
fn state(redis: &RedisServer, prefix: &str, extra: &str) -> String {
    format!("[state]\nbackend = \"redis\"\n\n[state.redis]\nurl = \"{}\"\ntimeout = \"100ms\"\nkey_prefix = \"{prefix}\"\n{extra}\n\n", redis.url())
}

async fn pair(redis: &RedisServer, backend: &Backend, prefix: &str, extra: &str, routes: &str) -> (Gateway, Gateway) {
    let text = format!("{}{}", state(redis, prefix, extra), config_for(&backend.addr(), routes));
    let a = Gateway::start(&text);
    let b = Gateway::start(&text);
    for gw in [&a, &b] {
        wait_state_up(gw, true).await;
    }
    (a, b)
}

/// How long until `/readyz` says the shared state is `up`.
async fn wait_state_up(gw: &Gateway, up: bool) -> Duration {
    let started = Instant::now();
    loop {
        let ready: Value = match reqwest::get(gw.admin_url("/readyz")).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        if ready["state"]["up"] == up {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "state never became up={up}: {ready}\n{}", common::tail(&gw.log(), 20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LIMITED: &str = r#"
[[routes]]
name = "items"
match = { path_prefix = "/api/items" }
upstream = "api"
cache = "off"
rate_limit = [{ rate = "20/h", burst = 20, key = "header:x-api-key" }]
"#;

/// Sends `n` requests with `key`, alternating replicas; how many each status got.
async fn alternate(a: &Gateway, b: &Gateway, key: &str, n: usize) -> (usize, usize) {
    let c = reqwest::Client::new();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..n {
        let gw = if i % 2 == 0 { a } else { b };
        let r = c.get(gw.url("/api/items?limit=1")).header("x-api-key", key).send().await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected {s}: {}", r.text().await.unwrap()),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn a_limit_holds_across_replicas_exactly_and_refusals_stay_local() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let (a, b) = pair(&redis, &backend, "exact:", "", LIMITED).await;
    let (ok, limited) = alternate(&a, &b, "k1", 60).await;
    assert_eq!((ok, limited), (20, 40), "20/h with burst 20 across two replicas");
    // another key has its own bucket
    assert_eq!(alternate(&a, &b, "k2", 4).await, (4, 0));
    // a refused key is refused locally until its wait is over: each replica asked Redis once
    // about k1 after it ran out, not for each of the 40 refusals
    let decisions = redis.calls("evalsha");
    assert!(decisions <= 20 + 2 + 4 + 2, "{decisions} scripts for 64 requests");
    // the bucket expires when it would be full again: 20 tokens at 20/h = 1 h
    let ttl: i64 = redis.cli(&["PTTL", "exact:rl:items:header:x-api-key:t/k1"]).trim().parse().unwrap();
    assert!(ttl > 3_500_000 && ttl <= 3_600_001, "{ttl}");
    let r = reqwest::get(a.url("/api/items?limit=1")).await.unwrap();
    assert_eq!(r.status(), 401, "a missing key is still refused as configured");
}

#[tokio::test]
async fn leased_tokens_stay_within_the_stated_bound() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let (a, b) = pair(&redis, &backend, "lease:", "lease = 5", LIMITED).await;
    let (ok, _) = alternate(&a, &b, "k1", 60).await;
    // never more than the limit; at most lease - 1 per replica left unspent
    assert!((20 - 2 * 4..=20).contains(&ok), "{ok} admitted");
    let decisions = redis.calls("evalsha");
    assert!(decisions < 20, "{decisions} round trips for {ok} admitted");
}

const CACHED: &str = r#"
[defaults]
cache = { ttl = "60s" }

[[routes]]
name = "item"
match = { path = "/api/items/{item_id}" }
upstream = "api"
cache = { ttl = "60s", tags = ["item:{item_id}"] }

[[routes]]
name = "items"
match = { path = "/api/items" }
upstream = "api"

[[routes]]
name = "categories"
match = { path = "/api/categories" }
upstream = "api"
"#;

async fn get(gw: &Gateway, path: &str) -> (Value, String) {
    let r = reqwest::get(gw.url(path)).await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let xc = r.headers().get("x-cache").map_or("-", |v| v.to_str().unwrap()).to_string();
    (r.json().await.unwrap(), xc)
}

/// How long until `path` on `gw` is no longer a hit (polled every 2 ms).
async fn until_miss(gw: &Gateway, path: &str) -> Duration {
    let started = Instant::now();
    for polls in 0.. {
        if get(gw, path).await.1 != "HIT" {
            eprintln!("{polls} hits before the miss");
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{path} still a hit after 2 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    unreachable!()
}

#[tokio::test]
async fn the_cache_is_shared_and_purges_and_writes_reach_every_replica() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let (a, b) = pair(&redis, &backend, "cache:", "", CACHED).await;

    // filled through A, a hit on B without the backend
    assert_eq!(get(&a, "/api/items/5").await.1, "MISS");
    let before = backend.hits("/api/items/5").await;
    let (body, xc) = get(&b, "/api/items/5").await;
    assert_eq!((xc.as_str(), body["id"].as_i64()), ("HIT", Some(5)));
    assert_eq!(get(&b, "/api/items/5").await.1, "HIT", "then from B's own L1");
    assert_eq!(backend.hits("/api/items/5").await, before);
    assert!(redis.cli(&["--scan", "--pattern", "cache:c:*"]).lines().count() >= 1);

    // an admin purge by tag through A: gone from Redis and from B's L1
    let c = reqwest::Client::new();
    let purge: Value = c.post(a.admin_url("/admin/cache/purge")).json(&json!({"tag": "item:5"})).send().await.unwrap().json().await.unwrap();
    assert!(purge["purged"].as_u64() >= Some(1), "{purge}");
    let seen = until_miss(&b, "/api/items/5").await;
    eprintln!("purge through A seen on B after {seen:?}");
    assert!(seen < Duration::from_millis(250), "B saw the purge after {seen:?}");

    // a write through A invalidates the item and the list on B
    get(&a, "/api/items?limit=3").await;
    get(&a, "/api/items/3").await;
    assert_eq!(get(&b, "/api/items/3").await.1, "HIT");
    assert_eq!(get(&b, "/api/items?limit=3").await.1, "HIT");
    let patch = c
        .patch(a.url("/api/items/3"))
        .header("authorization", "Bearer admin")
        .json(&json!({"price": 77.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    let seen = until_miss(&b, "/api/items/3").await;
    eprintln!("write through A seen on B after {seen:?}");
    assert!(seen < Duration::from_millis(250), "B saw the write after {seen:?}");
    assert_eq!(get(&b, "/api/items/3").await.0["price"], 77.0);
    assert_ne!(get(&b, "/api/items?limit=3").await.1, "HIT", "the list went too");

    // purge everything through B
    let all: Value = c.post(b.admin_url("/admin/cache/purge")).json(&json!({"all": true})).send().await.unwrap().json().await.unwrap();
    assert!(all["purged"].as_u64() >= Some(1), "{all}");
    assert_eq!(redis.cli(&["--scan", "--pattern", "cache:c*"]).trim(), "");
    assert_ne!(get(&a, "/api/categories").await.1, "HIT");
}

const MIXED: &str = r#"
[defaults]
timeout = "2s"

[[routes]]
name = "local"
match = { path = "/api/items" }
upstream = "api"
cache = "off"
rate_limit = [{ rate = "3/h", burst = 3, key = "header:x-api-key" }]

[[routes]]
name = "deny"
match = { path = "/api/items/{item_id}" }
upstream = "api"
cache = "off"
rate_limit = [{ rate = "100/h", burst = 100, key = "header:x-api-key" }]
on_state_error = "deny"

[[routes]]
name = "allow"
match = { path = "/api/categories" }
upstream = "api"
cache = "off"
rate_limit = [{ rate = "1/h", burst = 1, key = "header:x-api-key" }]
on_state_error = "allow"

[[routes]]
name = "cached"
match = { path = "/api/instruments" }
upstream = "api"
cache = { ttl = "60s" }
"#;

async fn status(gw: &Gateway, path: &str, key: &str) -> (u16, Duration) {
    let started = Instant::now();
    let r = reqwest::Client::new().get(gw.url(path)).header("x-api-key", key).send().await.unwrap();
    let s = r.status().as_u16();
    if s == 503 {
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let body: Value = r.json().await.unwrap();
        assert_eq!((ct.as_str(), body["code"].as_str()), ("application/problem+json", Some("state_unavailable")), "{body}");
    }
    (s, started.elapsed())
}

#[tokio::test]
async fn redis_dying_mid_load_leaves_both_replicas_answering_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let backend = Backend::start();
    let (a, b) = pair(&redis, &backend, "down:", "", MIXED).await;
    assert_eq!(get(&a, "/api/instruments").await.1, "MISS");
    assert_eq!(get(&b, "/api/instruments").await.1, "HIT");

    // load on both replicas while Redis is killed under it
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let load = |gw: &Gateway| {
        let url = gw.url("/api/items/1");
        let served = served.clone();
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut worst = Duration::ZERO;
            let mut codes = std::collections::BTreeMap::<u16, u32>::new();
            let started = Instant::now();
            // a key per request: each decision goes to Redis (a refused key would be refused
            // locally, without asking)
            for n in 0u32.. {
                if started.elapsed() > Duration::from_millis(1500) {
                    break;
                }
                let t = Instant::now();
                let s = c.get(&url).header("x-api-key", format!("load-{n}")).send().await.unwrap().status().as_u16();
                worst = worst.max(t.elapsed());
                *codes.entry(s).or_default() += 1;
                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (worst, codes)
        })
    };
    let (la, lb) = (load(&a), load(&b));
    // Redis is killed once the load is flowing through both replicas
    let started = Instant::now();
    while served.load(std::sync::atomic::Ordering::Relaxed) < 20 {
        assert!(started.elapsed() < Duration::from_secs(5), "no load got through");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.kill();
    for (worst, codes) in [la.await.unwrap(), lb.await.unwrap()] {
        assert!(worst < Duration::from_millis(1000), "a request took {worst:?} ({codes:?})");
        assert!(codes.get(&200).is_some_and(|n| *n > 0) && codes.get(&503).is_some_and(|n| *n > 0), "{codes:?}");
        assert!(codes.keys().all(|s| *s == 200 || *s == 503), "{codes:?}");
    }
    for gw in [&a, &b] {
        wait_state_up(gw, false).await;
    }
    let ready = reqwest::get(a.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "readiness does not hang on the shared store");

    // while down: "local" limits each replica on its own, "deny" answers 503, "allow" lets all through
    for gw in [&a, &b] {
        let mut codes = Vec::new();
        for _ in 0..5 {
            let (s, took) = status(gw, "/api/items", "k-down").await;
            assert!(took < Duration::from_millis(500), "{took:?}");
            codes.push(s);
        }
        assert_eq!(codes, [200, 200, 200, 429, 429], "local limiter per replica");
        assert_eq!(status(gw, "/api/items/2", "k-down").await.0, 503);
        for _ in 0..3 {
            assert_eq!(status(gw, "/api/categories", "k-down").await.0, 200);
        }
    }
    // the cache serves from each replica's L1 and fills it from the backend
    assert_eq!(get(&b, "/api/instruments").await.1, "HIT");
    assert_ne!(get(&a, "/api/instruments?limit=2").await.1, "HIT");
    assert_eq!(get(&a, "/api/instruments?limit=2").await.1, "HIT", "a miss fills the L1");
    let m = a.metrics().await;
    assert_eq!(metric_value(&m, "fastgate_state_up"), Some(0.0), "{m}");
    assert!(metric_value(&m, "fastgate_state_failures_total{kind=\"skipped\"}").unwrap_or(0.0) > 0.0, "{m}");
    let status_json: Value = reqwest::get(a.admin_url("/status.json")).await.unwrap().json().await.unwrap();
    assert_eq!(status_json["state"]["up"], false, "{status_json}");
    assert!(status_json["state"]["last_error"].is_string(), "{status_json}");

    // Redis returns (empty): both replicas notice, and limits are shared again
    redis.restart();
    for gw in [&a, &b] {
        let took = wait_state_up(gw, true).await;
        assert!(took < Duration::from_secs(5), "recovered after {took:?}");
    }
    let (ok, limited) = alternate_path(&a, &b, "/api/items", "k-back", 8).await;
    assert_eq!((ok, limited), (3, 5), "one limit across both again");
    assert_eq!(status(&a, "/api/items/2", "k-back").await.0, 200);
    assert!(a.log().contains("redis reachable"), "{}", common::tail(&a.log(), 20));
}

async fn alternate_path(a: &Gateway, b: &Gateway, path: &str, key: &str, n: usize) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for i in 0..n {
        match status(if i % 2 == 0 { a } else { b }, path, key).await.0 {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("{s}"),
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let pki = common::pki::Pki::new("redis");
    let (server, client) = (pki.issue("redis", &["127.0.0.1"]), pki.issue("fastgate", &["fastgate"]));
    let redis = RedisServer::start_tls(&pki, &server, &client);
    let backend = Backend::start();
    let tls = format!("ca_file = \"{}\"\ncert = \"{}\"\nkey = \"{}\"", pki.ca().display(), client.cert.display(), client.key.display());
    let (a, b) = pair(&redis, &backend, "tls:", &tls, LIMITED).await;
    assert_eq!(alternate(&a, &b, "k1", 24).await, (20, 4), "one limit over TLS");
    assert!(redis.calls("evalsha") >= 20);

    // without the client certificate the server refuses the handshake: counted, reported,
    // and the route limits locally
    let text = format!("{}{}", state(&redis, "tls:", &format!("ca_file = \"{}\"", pki.ca().display())), config_for(&backend.addr(), LIMITED));
    let lone = Gateway::start(&text);
    // the state starts down, so `up: false` alone proves nothing: wait for a failed handshake
    // to be reported, then hold that it never came up
    let started = Instant::now();
    let ready = loop {
        let ready: Value = reqwest::get(lone.admin_url("/readyz")).await.unwrap().json().await.unwrap();
        if ready["state"]["last_error"].is_string() {
            break ready;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no connection error reported: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ready["state"]["up"], false, "{ready}");
    let r = reqwest::Client::new().get(lone.url("/api/items?limit=1")).header("x-api-key", "k1").send().await.unwrap();
    assert_eq!(r.status(), 200, "on_state_error = local: this replica's own bucket for k1 is full");
}

#[test]
fn state_tables_are_checked() {
    let out = common::check_config("[state]\nbackend = \"redis\"\n\n[upstreams.api]\nservers = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"a\"\nmatch = { path_prefix = \"/\" }\nupstream = \"api\"\n");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("needs a server") && text.contains("[state.redis]"), "{text}");
    let out = common::check_config("[state]\nbackend = \"redis\"\nredis = { url = \"redis+sentinel://h:26379/m\" }\n\n[upstreams.api]\nservers = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"a\"\nmatch = { path_prefix = \"/\" }\nupstream = \"api\"\non_state_error = \"ignore\"\n");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unsupported Redis URL") && text.contains("unknown on_state_error"), "{text}");
}

#[tokio::test]
async fn a_unix_socket_serves_and_precheck_off_asks_redis_for_every_decision() {
    let redis = RedisServer::start_unix();
    let backend = Backend::start();
    // unix:///path: the limit holds across both replicas through the socket
    let (a, b) = pair(&redis, &backend, "unix:", "", LIMITED).await;
    assert_eq!(alternate(&a, &b, "k1", 30).await, (20, 10));
    let with_precheck = redis.calls("evalsha");
    // 20 admitted, one refusal asked per replica, a script load per replica
    assert!(with_precheck <= 26, "{with_precheck}: refusals stay local");
    drop((a, b));
    // precheck = false: every refusal is a round trip too
    let (a, b) = pair(&redis, &backend, "noprecheck:", "precheck = false", LIMITED).await;
    assert_eq!(alternate(&a, &b, "k1", 30).await, (20, 10));
    assert!(redis.calls("evalsha") - with_precheck >= 30, "one script per decision");
}

/// Redis GETs made by 12 hits on 4 entries of about 8 KiB (each stored first).
async fn gets_for_hits(gw: &Gateway, redis: &RedisServer) -> u64 {
    let c = reqwest::Client::new();
    let url = |n: usize| gw.url(&format!("/debug/cacheable/l1-{n}?size=8000"));
    // stored (in Redis, then the L1) once a request is a hit
    let started = Instant::now();
    for n in 0..4 {
        while c.get(url(n)).send().await.unwrap().headers()["x-cache"] != "HIT" {
            assert!(started.elapsed() < Duration::from_secs(5), "l1-{n} never stored");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let before = redis.calls("get");
    for _ in 0..3 {
        for n in 0..4 {
            let r = c.get(url(n)).send().await.unwrap();
            assert_eq!(r.headers()["x-cache"], "HIT", "{n}: {:?}", r.headers());
        }
    }
    redis.calls("get") - before
}

#[tokio::test]
async fn the_local_tier_is_sized_by_local_cache_size() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"c\"\nmatch = { path_prefix = \"/debug/cacheable\" }\nupstream = \"api\"\ncache = { ttl = \"60s\" }\n";
    // the default 32 MiB holds them all: hits never leave the process
    let text = format!("{}{}", state(&redis, "l1big:", ""), config_for(&backend.addr(), routes));
    let gw = Gateway::start(&text);
    wait_state_up(&gw, true).await;
    assert_eq!(gets_for_hits(&gw, &redis).await, 0);
    // 4 KiB holds none of them: each hit is read from Redis
    let text = format!("{}{}", state(&redis, "l1small:", "local_cache_size = \"4KiB\""), config_for(&backend.addr(), routes));
    let gw = Gateway::start(&text);
    wait_state_up(&gw, true).await;
    assert_eq!(gets_for_hits(&gw, &redis).await, 12);
}

#[tokio::test]
async fn a_lost_subscription_drops_the_local_tier_and_a_purge_while_down_is_503() {
    let mut redis = RedisServer::start();
    let backend = Backend::start();
    let (a, _b) = pair(&redis, &backend, "resub:", "", CACHED).await;
    let c = reqwest::Client::new();
    get(&a, "/api/items/5").await;
    assert_eq!(get(&a, "/api/items/5").await.1, "HIT");

    // Redis down: the L1 still serves; a purge reaches this replica's L1 and says 503
    redis.kill();
    // the next call that needs Redis fails and marks it down
    get(&a, "/api/items/6").await;
    wait_state_up(&a, false).await;
    assert_eq!(get(&a, "/api/items/6").await.1, "HIT", "the L1 alone");
    assert_eq!(get(&a, "/api/items/5").await.1, "HIT");
    let r = c.post(a.admin_url("/admin/cache/purge")).json(&json!({"tag": "item:6"})).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "state_unavailable", "{v}");
    assert_ne!(get(&a, "/api/items/6").await.1, "HIT", "purged from this replica's L1 all the same");

    // Redis back (empty: purges sent meanwhile were lost): the replica resubscribes and drops
    // its whole L1, so item 5, which it still held, is fetched again
    redis.restart();
    wait_state_up(&a, true).await;
    let started = Instant::now();
    while get(&a, "/api/items/5").await.1 == "HIT" {
        assert!(started.elapsed() < Duration::from_secs(5), "the L1 was kept after resubscribing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.log().contains("redis subscription lost; resubscribing"), "{}", common::tail(&a.log(), 20));
}

const ENTITIES: &str = r#"
[entities.Item]
id = "id"
item = "/api/items/{item_id}"

[entities.Owner]
id = "id"

[defaults]
cache = { ttl = "60s" }

[[routes]]
name = "items"
match = { path = "/api/items" }
upstream = "api"
entities = { "/items/*" = "Item", "/items/*/owner" = "Owner" }

[[routes]]
name = "item"
match = { path = "/api/items/{item_id}" }
upstream = "api"
entities = { "/" = "Item", "/owner" = "Owner" }

[[routes]]
name = "profile"
match = { path = "/api/users/{user_id}/profile" }
upstream = "api"
entities = { "/" = "Owner" }
"#;

/// Entity tags are shared like every tag: a write through A drops, on B, the entries that show
/// what it changed (by its path, and by its answer, which is purged after the answer's end)
/// and nothing else.
#[tokio::test]
async fn entity_writes_reach_every_replica() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let (a, b) = pair(&redis, &backend, "ent:", "", ENTITIES).await;
    let c = reqwest::Client::new();
    let owner = |v: &Value| v["owner"]["id"].as_str().unwrap().to_string();
    let bob = owner(&get(&a, "/api/items/2").await.0);
    let mut other = String::new();
    for n in 3..20 {
        if owner(&get(&a, &format!("/api/items/{n}")).await.0) != bob {
            other = format!("/api/items/{n}");
            break;
        }
    }
    for p in ["/api/items/2", "/api/items/4", "/api/items?limit=60", other.as_str()] {
        get(&a, p).await;
        assert_eq!(get(&b, p).await.1, "HIT", "{p} shared");
    }
    // a write naming Item:4 by its path, through A
    let patch = c.patch(a.url("/api/items/4")).header("authorization", "Bearer admin").json(&json!({"price": 55.0})).send().await.unwrap();
    assert_eq!(patch.status(), 200);
    until_miss(&b, "/api/items/4").await;
    assert_eq!(get(&b, "/api/items/4").await.0["price"], 55.0);
    assert_ne!(get(&b, "/api/items?limit=60").await.1, "HIT", "the list showing it went too");
    assert_eq!(get(&b, "/api/items/2").await.1, "HIT", "another item stays");
    // a write naming Owner:bob by its answer, through A
    get(&b, "/api/items?limit=60").await;
    let r = c.put(a.url(&format!("/api/users/{bob}/profile"))).header("authorization", "Bearer admin").json(&json!({"name": "Robert"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = until_miss(&b, "/api/items/2").await;
    eprintln!("a write's answer through A seen on B after {seen:?}");
    assert_eq!(get(&b, "/api/items/2").await.0["owner"]["name"], "Robert");
    assert_ne!(get(&b, "/api/items?limit=60").await.1, "HIT");
    assert_eq!(get(&b, &other).await.1, "HIT", "{other}: someone else's item stays");
}

/// A compressed form made on one replica goes into the shared value with its body: the other
/// replica, filling its local tier from Redis, sends the same bytes without compressing the
/// body again (its `fastgate_cache_forms_made_total` stays at 0). A purge takes the forms with
/// the body.
#[tokio::test]
async fn compressed_forms_are_shared_with_their_body() {
    let redis = RedisServer::start();
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"c\"\nmatch = { path_prefix = \"/debug/cacheable\" }\nupstream = \"api\"\ncache = { ttl = \"60s\" }\ncompress = { min_size = 100 }\n";
    let (a, b) = pair(&redis, &backend, "forms:", "", routes).await;
    let c = reqwest::Client::new();
    let path = "/debug/cacheable/shared-form?size=20000";
    let fetch = |gw: &Gateway, encoding: &'static str| {
        let (c, url) = (c.clone(), gw.url(path));
        async move {
            let r = c.get(url).header("accept-encoding", encoding).send().await.unwrap();
            let h = r.headers().clone();
            let field = |n: &str| h.get(n).map_or("-", |v| v.to_str().unwrap()).to_string();
            (field("x-cache"), field("content-encoding"), r.bytes().await.unwrap())
        }
    };
    let (xc, _, plain) = fetch(&a, "identity").await;
    assert_eq!(xc, "MISS");
    let (xc, ce, gz) = fetch(&a, "gzip").await;
    assert_eq!((xc.as_str(), ce.as_str()), ("HIT", "gzip"));
    assert_eq!(crate::policies::decode("gzip", &gz), plain.to_vec());

    // the shared value grows by the form (written in the background, version-checked)
    let key = redis.cli(&["--scan", "--pattern", "forms:c:*"]).trim().to_string();
    assert_eq!(key.lines().count(), 1, "{key}");
    let started = Instant::now();
    loop {
        let len: usize = redis.cli(&["STRLEN", &key]).trim().parse().unwrap();
        if len >= plain.len() + gz.len() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the form never reached Redis: {len} bytes for a {}-byte body", plain.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(redis.cli(&["GETRANGE", &key, "0", "3"]).trim(), "FGC2");

    // B fills its local tier from Redis (a hit through pingora's path, compressed as it
    // streams), then sends A's form as it is from the front door
    let (xc, _, _) = fetch(&b, "gzip").await;
    assert_eq!(xc, "HIT");
    let (xc, ce, gz_b) = fetch(&b, "gzip").await;
    assert_eq!((xc.as_str(), ce.as_str()), ("HIT", "gzip"));
    assert_eq!(gz_b, gz, "B sends the form A made");
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let made = "fastgate_cache_forms_made_total{encoding=\"gzip\"}";
    assert_eq!(metric_value(&ma, made), Some(1.0), "A made the form");
    assert_eq!(metric_value(&mb, made).unwrap_or(0.0), 0.0, "B made none: {mb}");
    assert_eq!(metric_value(&mb, "fastgate_front_door_responses_total"), Some(1.0), "from B's local tier: {mb}");
    // B makes the brotli form it is the first to ask for
    let (_, ce, _) = fetch(&b, "br").await;
    assert_eq!(ce, "br");
    assert_eq!(metric_value(&b.metrics().await, "fastgate_cache_forms_made_total{encoding=\"br\"}"), Some(1.0));

    // a purge takes the forms with the body
    let purge: Value = c.post(a.admin_url("/admin/cache/purge")).json(&json!({"prefix": "/debug/cacheable/shared-form"})).send().await.unwrap().json().await.unwrap();
    assert!(purge["purged"].as_u64() >= Some(1), "{purge}");
    assert_eq!(redis.cli(&["--scan", "--pattern", "forms:c:*"]).trim(), "");
}
