//! Writes invalidate what they change on an unmodified backend (the example's catalog: items,
//! their list, reviews written by POST, owner profiles embedded in items), with no `Cache-Tag`
//! from the backend: path templates, the default `resource` and `viewer` rules, a path
//! pattern, tags from path parameters, negative caching, and the invalidation metric. Every
//! read after a write is checked on the same connection and on a new one, with and without
//! `Authorization`, against what the backend itself answers.

use crate::common;

use common::{config_for, metric_value, Backend, Gateway};
use serde_json::{json, Value};

const ROUTES: &str = r#"
[defaults]
cache = { ttl = "60s", key = { headers = ["authorization"] } }

[[routes]]
name = "reviews"
match = { path = "/api/items/{item_id}/reviews" }
upstream = "api"

[[routes]]
name = "item"
match = { path = "/api/items/{item_id}" }
upstream = "api"
cache = { ttl = "60s", negative_ttl = "60s", key = { headers = ["authorization"] }, tags = ["item:{item_id}"] }

[[routes]]
name = "items"
match = { path = "/api/items" }
upstream = "api"

[[routes]]
name = "profile"
match = { path = "/api/users/{user_id}/profile" }
upstream = "api"
# items embed their owner's profile: a rename changes every item
invalidate = ["resource", "viewer", "/api/items/**"]

[[routes]]
name = "categories"
match = { path = "/api/categories" }
upstream = "api"

[[routes]]
name = "debug"
match = { path_prefix = "/debug" }
upstream = "api"
cache = "off"
"#;

const ALICE: &str = "Bearer user-alice";
const ADMIN: &str = "Bearer admin";

struct Reader {
    gw_url: String,
    pooled: reqwest::Client,
}

impl Reader {
    /// The same read on the pooled connection and on a new one, anonymous and as alice: the
    /// four answers, each with its `X-Cache`.
    async fn read_all(&self, path: &str) -> Vec<(Value, String)> {
        let mut out = Vec::new();
        for auth in [None, Some(ALICE)] {
            for fresh_connection in [false, true] {
                let c = if fresh_connection { reqwest::Client::new() } else { self.pooled.clone() };
                let mut req = c.get(format!("{}{path}", self.gw_url));
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let r = req.send().await.unwrap();
                let xc = r.headers().get("x-cache").map_or("-", |v| v.to_str().unwrap()).to_string();
                out.push((r.json().await.unwrap(), xc));
            }
        }
        out
    }
}

async fn direct(backend: &Backend, path: &str) -> Value {
    reqwest::get(backend.url(path)).await.unwrap().json().await.unwrap()
}

async fn write(c: &reqwest::Client, method: reqwest::Method, url: String, auth: &str, body: Value) -> u16 {
    c.request(method, url).header("authorization", auth).json(&body).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn writes_invalidate_related_resources_without_backend_help() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), ROUTES));
    let c = reqwest::Client::new();
    let r = Reader { gw_url: gw.url(""), pooled: c.clone() };
    let reads = ["/api/items/5", "/api/items?limit=10", "/api/items/5/reviews", "/api/users/alice/profile", "/api/items/2", "/api/categories"];
    // fill: every read cached, as anonymous and as alice
    for p in reads {
        r.read_all(p).await;
        assert!(r.read_all(p).await.iter().all(|(_, xc)| xc == "HIT"), "{p} is cached");
    }

    // a review (POST to a sub-resource) changes the item, the list and the review list
    assert_eq!(write(&c, reqwest::Method::POST, gw.url("/api/items/5/reviews"), ALICE, json!({"stars": 4})).await, 201);
    for p in ["/api/items/5", "/api/items?limit=10", "/api/items/5/reviews"] {
        let truth = direct(&backend, p).await;
        for (v, _) in r.read_all(p).await {
            assert_eq!(v, truth, "{p} after the review");
        }
    }
    assert_eq!(r.read_all("/api/items/5").await[0].0["review_count"], 1);
    // alice's own entries elsewhere went too (viewer); the anonymous copy did not
    let profile = r.read_all("/api/users/alice/profile").await;
    assert_eq!(profile[0].1, "HIT", "an entry the write does not touch stays");
    assert_eq!(profile[2].1, "MISS", "the writer's own entries are dropped");
    let categories = r.read_all("/api/categories").await;
    assert_eq!((categories[0].1.as_str(), categories[1].1.as_str()), ("HIT", "HIT"), "unrelated entries stay");
    assert_eq!(categories[2].1, "MISS", "but not alice's own copy");

    // renaming bob changes his profile and, by the route's pattern, every item embedding him
    assert_eq!(write(&c, reqwest::Method::PUT, gw.url("/api/users/bob/profile"), ADMIN, json!({"name": "Robert"})).await, 200);
    for p in ["/api/users/bob/profile", "/api/items/2", "/api/items?limit=10"] {
        let truth = direct(&backend, p).await;
        for (v, _) in r.read_all(p).await {
            assert_eq!(v, truth, "{p} after the rename");
        }
    }
    assert_eq!(r.read_all("/api/items/2").await[1].0["owner"]["name"], "Robert");

    // a 404 stored by negative_ttl does not outlive the create that makes the item exist
    let new_item = gw.url("/api/items/61");
    assert_eq!(c.get(new_item.clone()).send().await.unwrap().status(), 404);
    let again = c.get(new_item.clone()).send().await.unwrap();
    assert_eq!((again.status().as_u16(), again.headers()["x-cache"].to_str().unwrap()), (404, "HIT"));
    let body = json!({"name": "New", "price": 3.5, "category": "books"});
    assert_eq!(write(&c, reqwest::Method::POST, gw.url("/api/items"), ALICE, body).await, 201);
    for (v, _) in r.read_all("/api/items/61").await {
        assert_eq!(v["name"], "New");
    }

    // a PATCH, then a DELETE of that item: the item and the list follow each write
    let patch = json!({"price": 9.0});
    assert_eq!(write(&c, reqwest::Method::PATCH, gw.url("/api/items/61"), ALICE, patch).await, 200);
    assert!(r.read_all("/api/items/61").await.iter().all(|(v, _)| v["price"] == 9.0));
    assert_eq!(write(&c, reqwest::Method::DELETE, gw.url("/api/items/61"), ALICE, json!({})).await, 204);
    for auth in [None, Some(ALICE)] {
        let mut req = reqwest::Client::new().get(gw.url("/api/items/61"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 404, "deleted, as {auth:?}");
    }

    // each reason is counted, per route
    let m = gw.metrics().await;
    let count = |route: &str, reason: &str| {
        metric_value(&m, &format!("fastgate_cache_invalidations_total{{reason=\"{reason}\",route=\"{route}\"}}")).unwrap_or(0.0)
    };
    assert!(count("reviews", "resource") >= 6.0, "{m}");
    assert!(count("reviews", "viewer") >= 1.0, "{m}");
    assert!(count("profile", "path") >= 1.0, "{m}");
    assert!(count("items", "target") + count("items", "resource") >= 1.0, "{m}");
}

#[tokio::test]
async fn tags_from_path_parameters_and_refusals() {
    let backend = Backend::start();
    // a narrow route: only the item's own tag goes, nothing by resource
    let routes = r#"
[[routes]]
name = "item"
match = { path = "/api/items/{item_id}" }
upstream = "api"
cache = { ttl = "60s", tags = ["item:{item_id}"] }
invalidate = []

[[routes]]
name = "reviews"
match = { path = "/api/items/{item_id}/reviews", methods = ["POST"] }
upstream = "api"
invalidate = []
invalidate_tags = ["item:{item_id}"]
"#;
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let c = reqwest::Client::new();
    for id in [3, 4] {
        c.get(gw.url(&format!("/api/items/{id}"))).send().await.unwrap();
    }
    assert_eq!(write(&c, reqwest::Method::POST, gw.url("/api/items/3/reviews"), ALICE, json!({"stars": 5})).await, 201);
    let xc = |id: u32| {
        let c = c.clone();
        let url = gw.url(&format!("/api/items/{id}"));
        async move { c.get(url).send().await.unwrap().headers()["x-cache"].to_str().unwrap().to_string() }
    };
    assert_eq!(xc(3).await, "MISS", "the tag of item 3 was purged");
    assert_eq!(xc(4).await, "HIT", "item 4 has another tag");

    // a placeholder the template does not declare is refused at load, with the names it has
    let bad = config_for(
        &backend.addr(),
        "[[routes]]\nname = \"x\"\nmatch = { path = \"/api/items/{item_id}\" }\nupstream = \"api\"\ninvalidate_tags = [\"item:{id}\"]\n",
    );
    let out = common::check_config(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("route `x` has no path parameter `id`"), "{err}");
    assert!(err.contains("declares: item_id"), "{err}");
}

/// A read that was at the backend when a write dropped what it shows answers with the state
/// before the write: it is served to its client, but not stored, so the next read goes to the
/// backend instead of getting the old answer from the cache.
#[tokio::test]
async fn a_read_in_flight_during_a_write_is_not_stored() {
    let backend = Backend::start();
    let routes = r#"
[[routes]]
name = "held"
match = { path = "/debug/hold/{key}" }
upstream = "api"
cache = { ttl = "60s", override_origin = true }

[[routes]]
name = "writes"
match = { path = "/debug/echo/{what}" }
upstream = "api"
invalidate = ["/debug/hold/{what}"]
"#;
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let c = reqwest::Client::new();
    let read = |c: reqwest::Client, url: String| tokio::spawn(async move { c.get(url).send().await.unwrap().headers()["x-cache"].to_str().unwrap().to_string() });

    // a control: with no write meanwhile, the held read is stored
    let first = read(c.clone(), gw.url("/debug/hold/calm"));
    backend.wait_holding("calm", 1).await;
    backend.release("calm").await;
    assert_eq!(first.await.unwrap(), "MISS");
    assert_eq!(c.get(gw.url("/debug/hold/calm")).send().await.unwrap().headers()["x-cache"], "HIT");

    // the read is at the backend; a write drops its path; then the backend answers the read
    let first = read(c.clone(), gw.url("/debug/hold/busy"));
    backend.wait_holding("busy", 1).await;
    assert_eq!(c.post(gw.url("/debug/echo/busy")).json(&json!({})).send().await.unwrap().status(), 200);
    backend.release("busy").await;
    assert_eq!(first.await.unwrap(), "MISS");
    // not stored: the next read reaches the backend again (and is held there)
    let second = read(c.clone(), gw.url("/debug/hold/busy"));
    backend.wait_holding("busy", 1).await;
    backend.release("busy").await;
    assert_eq!(second.await.unwrap(), "MISS");
}

/// A write that names its entity only in its answer: renaming a user (`PUT
/// /api/users/{user_id}/profile` answers with the `Owner`) drops every item that embeds that
/// owner, read from the answer's body before its last chunk is sent, and nothing else.
#[tokio::test]
async fn a_write_answer_names_the_entity_it_changed() {
    let backend = Backend::start();
    let routes = r#"
# owners have no item path of their own here: only answers name them
[entities.Owner]
id = "id"

[defaults]
cache = { ttl = "60s" }

[[routes]]
name = "items"
match = { path = "/api/items" }
upstream = "api"
entities = { "/items/*/owner" = "Owner" }

[[routes]]
name = "item"
match = { path = "/api/items/{item_id}" }
upstream = "api"
entities = { "/owner" = "Owner" }

[[routes]]
name = "profile"
match = { path = "/api/users/{user_id}/profile" }
upstream = "api"
entities = { "/" = "Owner" }

[[routes]]
name = "debug"
match = { path_prefix = "/debug" }
upstream = "api"
cache = "off"
"#;
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let c = reqwest::Client::new();
    let owner = |v: &Value| v["owner"]["id"].as_str().unwrap().to_string();
    let item2 = direct(&backend, "/api/items/2").await;
    let bob = owner(&item2);
    // an item someone else owns
    let mut other = String::new();
    for n in 3..20 {
        if owner(&direct(&backend, &format!("/api/items/{n}")).await) != bob {
            other = format!("/api/items/{n}");
            break;
        }
    }
    let xc = |r: &reqwest::Response| r.headers()["x-cache"].to_str().unwrap().to_string();
    for p in ["/api/items/2", "/api/items?limit=60", other.as_str()] {
        c.get(gw.url(p)).send().await.unwrap();
        assert_eq!(xc(&c.get(gw.url(p)).send().await.unwrap()), "HIT", "{p} is cached");
    }
    let r = c.put(gw.url(&format!("/api/users/{bob}/profile"))).header("authorization", ADMIN).json(&json!({"name": "Robert"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], bob.as_str());
    // every copy that shows bob answers with his new name, on this connection and a new one
    for client in [c.clone(), reqwest::Client::new()] {
        let item = client.get(gw.url("/api/items/2")).send().await.unwrap().json::<Value>().await.unwrap();
        assert_eq!(item["owner"]["name"], "Robert");
        let list = client.get(gw.url("/api/items?limit=60")).send().await.unwrap().json::<Value>().await.unwrap();
        let names: Vec<&Value> = list["items"].as_array().unwrap().iter().filter(|i| i["owner"]["id"] == bob.as_str()).map(|i| &i["owner"]["name"]).collect();
        assert!(!names.is_empty() && names.iter().all(|n| *n == "Robert"), "{list}");
    }
    // an item of someone else's is still served from the cache
    assert_eq!(xc(&c.get(gw.url(&other)).send().await.unwrap()), "HIT", "{other}");
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "fastgate_cache_invalidations_total{reason=\"entity\",route=\"profile\"}").unwrap_or(0.0) >= 2.0, "{metrics}");
}
