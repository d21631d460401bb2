//! FastAPI-aware policies through the real binary and the example backend's catalog: pagination
//! caps on its `limit`/`offset` list, field selection (nested, arrays, errors, with the cache
//! and compression on), and FastAPI's own error bodies (a real 422 and 404) in the gateway's
//! problem shape.

use crate::common;

use common::{config_for, metric_value, Backend, Gateway};
use serde_json::{json, Value};
use std::io::Read;

const ROUTES: &str = r#"
[[routes]]
name = "items"
match = { path = "/api/v1/items" }
upstream = "api"
cache = { ttl = "60s" }
compress = "on"
fields = "on"
normalize_errors = true
pagination = { default = 5, max = 10, max_offset = 40 }

[[routes]]
name = "item"
match = { path = "/api/v1/items/{item_id}" }
upstream = "api"
fields = { param = "only" }
normalize_errors = true

[[routes]]
name = "strict-items"
match = { path = "/api/items" }
upstream = "api"
pagination = { param = "limit", max = 10, on_excess = "reject" }

[[routes]]
name = "debug"
match = { path_prefix = "/debug" }
upstream = "api"
fields = "on"
normalize_errors = true
"#;

async fn get(c: &reqwest::Client, url: String) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, h, r.bytes().await.unwrap().to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map_or("-", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn pagination_default_clamp_reject_and_offset_cap() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), ROUTES));
    let c = reqwest::Client::new();
    // no page size: the route's default reaches the backend
    let (s, h, body) = get(&c, gw.url("/api/v1/items")).await;
    let v = json_of(&body);
    assert_eq!((s, v["limit"].as_u64(), v["items"].as_array().unwrap().len()), (200, Some(5), 5));
    assert_eq!(header(&h, "fastgate-pagination"), "-");
    // over the max: lowered, and the response says so
    let (s, h, body) = get(&c, gw.url("/api/v1/items?limit=50&offset=3")).await;
    let v = json_of(&body);
    assert_eq!((s, v["limit"].as_u64(), v["offset"].as_u64()), (200, Some(10), Some(3)));
    assert_eq!(v["items"][0]["id"], 4);
    assert_eq!(header(&h, "fastgate-pagination"), "limit=10; requested=50");
    // within bounds: as sent
    let (_, h, body) = get(&c, gw.url("/api/v1/items?limit=7")).await;
    assert_eq!(json_of(&body)["limit"], 7);
    assert_eq!(header(&h, "fastgate-pagination"), "-");
    // a deep offset is refused before the backend sees it
    let before = backend.hits("/api/v1/items").await;
    let (s, h, body) = get(&c, gw.url("/api/v1/items?offset=41")).await;
    assert_eq!((s, header(&h, "content-type")), (400, "application/problem+json"));
    let v = json_of(&body);
    assert_eq!(v["code"], "pagination_limit");
    assert!(v["detail"].as_str().unwrap().contains("`offset` may be at most 40"), "{v}");
    // on_excess = "reject"
    let (s, _, body) = get(&c, gw.url("/api/items?limit=11")).await;
    assert_eq!((s, json_of(&body)["code"].as_str()), (400, Some("pagination_limit")));
    assert_eq!(backend.hits("/api/v1/items").await, before);
    // not a number: FastAPI's own 422, normalized on this route
    let (s, h, body) = get(&c, gw.url("/api/v1/items?limit=abc")).await;
    assert_eq!((s, header(&h, "content-type")), (422, "application/problem+json"));
    let v = json_of(&body);
    assert_eq!(v["errors"][0]["loc"], "/query/limit");
    let log = gw.log();
    assert!(log.contains(r#""pagination":"clamped""#), "{log}");
}

#[tokio::test]
async fn field_selection_nested_arrays_cached_and_compressed() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), ROUTES));
    let c = reqwest::Client::new();
    let full = json_of(&get(&c, backend.url("/api/v1/items?limit=5")).await.2);

    let (s, h, body) = get(&c, gw.url("/api/v1/items?fields=total,items.id,items.owner.name")).await;
    assert_eq!((s, header(&h, "x-cache")), (200, "MISS"));
    let expected = json!({
        "total": full["total"],
        "items": full["items"].as_array().unwrap().iter()
            .map(|i| json!({"id": i["id"], "owner": {"name": i["owner"]["name"]}})).collect::<Vec<_>>(),
    });
    assert_eq!(json_of(&body), expected);
    assert!(!h.contains_key("content-length"), "{h:?}");
    // the backend sent no ETag, so there is none to derive a weak one from
    assert_eq!(header(&h, "etag"), "-");
    // with one, the filtered body gets a weak ETag derived from it and the selection: stable
    // for one selection, different for another, never the backend's strong one
    let tagged = |sel: &str| gw.url(&format!("/debug/cacheable/et?etag=v1&fields={sel}"));
    let (s, h1, body) = get(&c, tagged("name")).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let weak = header(&h1, "etag").to_string();
    assert!(weak.starts_with("W/\"") && weak != "W/\"v1\"", "{weak}");
    assert_eq!(header(&get(&c, tagged("name")).await.1, "etag"), weak);
    let other = header(&get(&c, tagged("path")).await.1, "etag").to_string();
    assert!(other.starts_with("W/\"") && other != weak, "{other} vs {weak}");

    // the cache holds the whole response: another selection is a hit, filtered differently
    let (s, h, body) = get(&c, gw.url("/api/v1/items?fields=items.name")).await;
    assert_eq!((s, header(&h, "x-cache")), (200, "HIT"));
    let names: Vec<Value> = full["items"].as_array().unwrap().iter().map(|i| json!({"name": i["name"]})).collect();
    assert_eq!(json_of(&body), json!({"items": names}));
    // and without a selection, the whole body
    let (_, h, body) = get(&c, gw.url("/api/v1/items")).await;
    assert_eq!(header(&h, "x-cache"), "HIT");
    assert_eq!(json_of(&body), full);
    assert_eq!(backend.hits("/api/v1/items").await, 2, "one for the test's own read, one miss");

    // compression applies to the filtered body
    let r = c
        .get(gw.url("/api/v1/items?fields=items.id"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(r.headers(), "content-encoding"), "gzip");
    let gz = r.bytes().await.unwrap();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut plain).unwrap();
    let ids: Vec<Value> = full["items"].as_array().unwrap().iter().map(|i| json!({"id": i["id"]})).collect();
    assert_eq!(json_of(&plain), json!({"items": ids}));

    // the parameter never reaches the backend; a route may name it
    let (s, _, body) = get(&c, gw.url("/api/v1/items/3?only=name,price")).await;
    assert_eq!((s, json_of(&body)), (200, json!({"name": "Item 3", "price": 3.0})));
    let (_, _, body) = get(&c, gw.url("/debug/echo?fields=method,query&x=1")).await;
    assert_eq!(json_of(&body), json!({"method": "GET", "query": "x=1"}));

    // a malformed selector is a 400 problem; non-JSON and error bodies pass untouched
    let (s, h, body) = get(&c, gw.url("/api/v1/items?fields=items..id")).await;
    assert_eq!((s, header(&h, "content-type")), (400, "application/problem+json"));
    assert_eq!(json_of(&body)["code"], "bad_field_selector");
    let (s, _, body) = get(&c, gw.url("/debug/binary?size=3000&fields=id")).await;
    assert_eq!((s, body.len()), (200, 3000));
    let (s, _, body) = get(&c, gw.url("/api/v1/items/999?only=name")).await;
    assert_eq!((s, json_of(&body)["code"].as_str()), (404, Some("not_found")));
    let log = gw.log();
    assert!(log.contains(r#""fields":"selected""#) && log.contains(r#""fields":"passed""#), "{log}");
}

#[tokio::test]
async fn fastapi_errors_in_the_gateway_problem_shape() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), ROUTES));
    let c = reqwest::Client::new();
    // a real FastAPI 404 (HTTPException)
    let r = c.get(gw.url("/api/v1/items/9999")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(header(r.headers(), "content-type"), "application/problem+json");
    let id = header(r.headers(), "x-request-id").to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"type": "urn:fastgate:problem:not_found", "title": "Not Found", "status": 404,
               "detail": "item 9999 not found", "code": "not_found", "request_id": id})
    );
    // a real 422: pydantic's validation list under `errors`, `loc` as a JSON pointer
    let r = c
        .post(gw.url("/api/v1/items"))
        .header("authorization", "Bearer user-alice")
        .json(&json!({"name": "", "price": -1, "category": "books"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "validation_failed");
    assert_eq!(v["detail"], "2 invalid fields in the request");
    let locs: Vec<&str> = v["errors"].as_array().unwrap().iter().map(|e| e["loc"].as_str().unwrap()).collect();
    assert_eq!(locs, ["/body/name", "/body/price"]);
    assert!(v["errors"][0]["msg"].is_string() && v["errors"][0]["type"].is_string(), "{v}");
    // a 401 from a FastAPI dependency
    let r = c.post(gw.url("/api/v1/items")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["code"].as_str(), v["detail"].as_str()), (Some("unauthorized"), Some("Not authenticated")));
    // a JSON error body of another shape passes as it came
    let (s, h, body) = get(&c, gw.url("/debug/cacheable/x?status=503")).await;
    assert_eq!(s, 503);
    assert_eq!(header(&h, "content-type"), "application/problem+json");
    let v = json_of(&body);
    assert_eq!(v["name"], "x");
    assert!(v.get("code").is_none(), "{v}");
    // successes are untouched
    let (s, h, body) = get(&c, gw.url("/api/v1/items/1")).await;
    assert_eq!((s, header(&h, "content-type")), (200, "application/json"));
    assert_eq!(json_of(&body)["id"], 1);
    let m = gw.metrics().await;
    for (code, n) in [("not_found", 1.0), ("validation_failed", 1.0), ("unauthorized", 1.0)] {
        let route = if code == "not_found" { "item" } else { "items" };
        let series = format!("fastgate_backend_errors_total{{code=\"{code}\",route=\"{route}\"}}");
        assert_eq!(metric_value(&m, &series), Some(n), "{series}\n{m}");
    }
}
