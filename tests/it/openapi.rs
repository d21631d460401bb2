//! `fastgate init --from-openapi` on the example backend's real `/openapi.json`: the file it
//! writes passes `check`, proxies the backend's routes as the backend answers them, and keeps
//! reads right after writes across related resources with caching on (the rules it derived
//! from the schema graph and from the router the app includes twice).

use crate::common;

use common::{fastgate_command, Backend, Gateway};
use serde_json::{json, Value};

const ADMIN: &str = "Bearer admin";

fn init(args: &[&str]) -> std::process::Output {
    fastgate_command().arg("init").args(args).output().unwrap()
}

fn generated(backend: &Backend) -> String {
    let out = init(&["--from-openapi", &backend.url("/openapi.json")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `init`'s file as it was written, on the ports the harness chose.
fn run_generated(text: &str) -> Gateway {
    Gateway::start_file(
        |port, admin| {
            text.replace(
                "listen = \"0.0.0.0:8080\"",
                &format!("listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nshutdown_grace = \"1s\""),
            )
        },
        &[],
    )
}

/// Four reads of `path`: pooled and new connections, anonymous and with a token.
async fn reads(gw: &Gateway, pooled: &reqwest::Client, path: &str) -> Vec<(u16, Value, String)> {
    let mut out = Vec::new();
    for auth in [None, Some("Bearer user-alice")] {
        for fresh in [false, true] {
            let c = if fresh { reqwest::Client::new() } else { pooled.clone() };
            let mut req = c.get(gw.url(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            let xc = r.headers().get("x-cache").map_or("-", |v| v.to_str().unwrap()).to_string();
            out.push((r.status().as_u16(), r.json().await.unwrap_or(Value::Null), xc));
        }
    }
    out
}

async fn direct(backend: &Backend, path: &str) -> (u16, Value) {
    let r = reqwest::get(backend.url(path)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn same_as_backend(backend: &Backend, gw: &Gateway, c: &reqwest::Client, path: &str, after: &str) {
    let (status, truth) = direct(backend, path).await;
    for (s, v, xc) in reads(gw, c, path).await {
        assert_eq!((s, &v), (status, &truth), "{path} after {after} (x-cache {xc})");
    }
}

#[tokio::test]
async fn init_writes_a_file_that_runs_the_backend_and_keeps_reads_after_writes() {
    let backend = Backend::start();
    let text = generated(&backend);
    let checked = common::check_config(&text);
    assert!(checked.status.success(), "{}\n{text}", String::from_utf8_lossy(&checked.stdout));
    // what the schema says, in the file
    assert!(text.contains("pagination = { param = \"limit\", max = 100, default = 20, max_offset = 10000 }"), "{text}");
    assert!(text.contains("max_body = \"1KiB\""), "UserIn bounds the rename body:\n{text}");
    assert!(text.contains("health_check = { path = \"/healthz\""), "{text}");
    // the router included twice: each copy of a path below an item names the other
    assert!(text.contains("invalidate = [\"entities\", \"viewer\", \"/api/v1/items/{item_id}/reviews\"]") && text.contains("a router included twice"), "{text}");
    // owners have no item route, but renaming a user answers with one: an entity by its answer
    assert!(text.contains("[entities.Owner]\nid = \"id\"\n") && prose(&text).contains("PUT /api/users/{user_id}/profile answers Owner"), "{text}");
    // items are an entity at both of the router's prefixes, identified by `id` (`{item_id}`)
    assert!(text.contains("[entities.Item]\nid = \"id\"\nitem = [\"/api/items/{item_id}\", \"/api/v1/items/{item_id}\"]"), "{text}");
    assert!(block(&text, "/api/v1/items").contains("entities = { \"/items/*\" = \"Item\""), "{text}");
    // no maximum in the schema: the page size is still capped, and says why
    let instruments = block(&text, "/api/instruments");
    assert!(instruments.contains("pagination = { param = \"limit\", max = 1000") && instruments.contains("has no maximum in the schema"), "{instruments}");

    let gw = run_generated(&text);
    let c = reqwest::Client::new();
    // the backend's routes, answered as the backend answers them
    for p in ["/api/v1/items?limit=3", "/api/items/3", "/api/v1/categories", "/api/users/alice/profile"] {
        same_as_backend(&backend, &gw, &c, p, "nothing").await;
    }
    // the backend's errors, in the gateway's shape with the backend's words
    let (status, truth) = direct(&backend, "/api/v1/items/999").await;
    for (s, v, _) in reads(&gw, &c, "/api/v1/items/999").await {
        assert_eq!((s, &v["detail"], &v["code"]), (status, &truth["detail"], &json!("not_found")));
    }
    // undeclared paths reach the backend through the catch-all: its own 404, normalized
    let r = c.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = c.get(gw.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // cached, under both prefixes the app serves the catalog at
    let related = ["/api/items/3", "/api/v1/items/3", "/api/items?limit=5", "/api/v1/items?limit=5", "/api/v1/items/3/reviews"];
    for p in related {
        reads(&gw, &c, p).await;
        assert_eq!(reads(&gw, &c, p).await[0].2, "HIT", "{p} is cached");
    }
    // a change of price under one prefix is seen under the other
    let s = c.patch(gw.url("/api/v1/items/3")).header("authorization", ADMIN).json(&json!({"price": 42.5})).send().await.unwrap();
    assert_eq!(s.status(), 200);
    for p in related {
        same_as_backend(&backend, &gw, &c, p, "the price change").await;
    }
    assert_eq!(reads(&gw, &c, "/api/items/3").await[0].1["price"], 42.5);
    // a review (a sub-resource written by POST) changes the item under both prefixes
    for p in related {
        reads(&gw, &c, p).await;
    }
    let s = c.post(gw.url("/api/items/3/reviews")).header("authorization", ADMIN).json(&json!({"stars": 5})).send().await.unwrap();
    assert_eq!(s.status(), 201);
    for p in related {
        same_as_backend(&backend, &gw, &c, p, "the review").await;
    }
    assert_eq!(reads(&gw, &c, "/api/v1/items/3").await[0].1["review_count"], 1);
    // renaming the owner changes every item that embeds them (the schema graph: Owner)
    for p in related {
        reads(&gw, &c, p).await;
    }
    let owner = direct(&backend, "/api/items/3").await.1["owner"]["id"].as_str().unwrap().to_string();
    let s = c
        .put(gw.url(&format!("/api/v1/users/{owner}/profile")))
        .header("authorization", ADMIN)
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(s.status(), 200);
    for p in related.iter().copied().chain([format!("/api/users/{owner}/profile").as_str()]) {
        same_as_backend(&backend, &gw, &c, p, "the rename").await;
    }
    assert_eq!(reads(&gw, &c, "/api/items/3").await[0].1["owner"]["name"], "Renamed");
}

#[tokio::test]
async fn init_refuses_what_it_cannot_use() {
    let backend = Backend::start();
    let out = init(&["--from-openapi", &backend.url("/api/market")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an OpenAPI 3 document"), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    let doc = reqwest::get(backend.url("/openapi.json")).await.unwrap().text().await.unwrap();
    std::fs::write(&file, doc).unwrap();
    let out = init(&["--from-openapi", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"), "{out:?}");
    let written = dir.path().join("fastgate.toml");
    let out = init(&["--from-openapi", file.to_str().unwrap(), "--upstream", &backend.addr(), "-o", written.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&written).unwrap();
    assert!(text.contains(&format!("servers = [\"{}\"]", backend.addr())), "{text}");
    assert!(text.contains("[server]\nlisten = \"0.0.0.0:8080\"\n"), "the default listen: {text}");
    assert!(common::check_config(&text).status.success());
    // route tests beside it, one request per route, which the file passes
    let tests = dir.path().join("fastgate.tests.toml");
    let starter = std::fs::read_to_string(&tests).unwrap();
    assert!(starter.contains("request = \"GET /api/v1/items/1\"\nexpect = { route = \"get_item-api-v1\", cache = \"cached\" }"), "{starter}");
    let out = fastgate_command().args(["check", "-c"]).arg(&written).arg("--test").arg(&tests).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains(" passed, 0 failed"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // --listen: the address the generated file serves on
    let out = init(&["--from-openapi", &backend.url("/openapi.json"), "--listen", "127.0.0.1:18080"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[server]\nlisten = \"127.0.0.1:18080\"\n") && !text.contains("0.0.0.0:8080"), "{text}");
    let checked = common::check_config(&text);
    assert!(String::from_utf8_lossy(&checked.stdout).contains("listen 127.0.0.1:18080"), "{}", String::from_utf8_lossy(&checked.stdout));
}

#[tokio::test]
async fn check_audits_the_routes_against_the_backend() {
    let backend = Backend::start();
    let doc = backend.url("/openapi.json");
    let audit = |text: &str, format: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fastgate.toml");
        std::fs::write(&path, text).unwrap();
        fastgate_command()
            .args(["check", "-c", path.to_str().unwrap(), "--openapi", &doc, "--format", format])
            .output()
            .unwrap()
    };
    // init's own output: warnings (the router the app includes twice), no error
    let clean = audit(&generated(&backend), "text");
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{stdout}");
    assert!(stdout.contains("warning: [duplicate_operation]") && stdout.contains("`get_item` is reachable under /api/items/{item_id} and /api/v1/items/{item_id}"), "{stdout}");
    assert!(stdout.contains("audit: 0 error(s)"), "{stdout}");

    // a file written to have each finding
    let text = format!(
        r#"[upstreams.app]
servers = ["{}"]

[[routes]]
name = "typo"
match = {{ path = "/api/v2/items" }}
upstream = "app"

[[routes]]
name = "market-all"
match = {{ path_prefix = "/api/market" }}
upstream = "app"

[[routes]]
name = "market"
match = {{ path = "/api/market" }}
upstream = "app"

[[routes]]
name = "quote"
match = {{ path = "/api/market/{{symbol}}" }}
upstream = "app"

[[routes]]
name = "trades"
match = {{ path = "/api/trades", methods = ["POST"] }}
upstream = "app"
cache = {{ ttl = "10s" }}

[[routes]]
name = "items"
match = {{ path = "/api/v1/items" }}
upstream = "app"
pagination = {{ max = 500 }}

[[routes]]
name = "profile"
match = {{ path = "/api/v1/users/{{user_id}}/profile" }}
upstream = "app"

[[routes]]
name = "rest"
match = {{ path_prefix = "/" }}
upstream = "app"
"#,
        backend.addr()
    );
    let out = audit(&text, "json");
    assert!(!out.status.success(), "errors exit non-zero");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let findings = v["findings"].as_array().unwrap();
    let has = |kind: &str, severity: &str, route: Option<&str>, op: Option<&str>| {
        findings.iter().any(|f| {
            f["kind"] == kind
                && f["severity"] == severity
                && route.is_none_or(|r| f["route"] == r)
                && op.is_none_or(|o| f["operation"] == o)
        })
    };
    assert!(has("no_operation", "error", Some("typo"), None), "{v:#}");
    assert!(has("shadowed", "error", Some("market-all"), None), "{v:#}");
    assert!(has("uncovered", "warning", Some("rest"), Some("GET /api/instruments")), "{v:#}");
    assert!(has("cache_on_writes_only", "warning", Some("trades"), Some("POST /api/trades")), "{v:#}");
    assert!(has("looser_than_schema", "warning", Some("items"), Some("GET /api/v1/items")), "{v:#}");
    // the rename body (UserIn) is bounded; the built-in 10 MiB cap is far above it
    assert!(has("looser_than_schema", "warning", Some("profile"), Some("PUT /api/v1/users/{user_id}/profile")), "{v:#}");
    assert!(has("duplicate_operation", "warning", None, Some("GET /api/items/{item_id}")), "{v:#}");
    assert!(!has("uncovered", "warning", Some("rest"), Some("GET /api/market")), "served by its own route: {v:#}");
    // text format: one line per finding, errors first in the exit code
    let out = audit(&text, "text");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("error: [no_operation] route `typo`: `* /api/v2/items` matches no operation"), "{stdout}");
}

/// The `[[routes]]` block of `text` whose match is `path`.
fn block<'a>(text: &'a str, path: &str) -> &'a str {
    let needle = format!("match = {{ path = \"{path}\"");
    text.split("[[routes]]").find(|b| b.contains(&needle)).unwrap_or_else(|| panic!("no route for {path}:\n{text}"))
}

#[tokio::test]
async fn init_on_a_second_app_with_oauth2_page_numbers_and_a_stream() {
    let backend = Backend::start_app("tests/apps/library");
    let text = generated(&backend);
    let checked = common::check_config(&text);
    assert!(checked.status.success(), "{}\n{text}", String::from_utf8_lossy(&checked.stdout));
    // its `/healthz` is left out of the document: no operation says health, so the check is
    // the path the document was read from
    assert!(text.contains("health_check = { path = \"/openapi.json\", interval = \"5s\" }"), "{text}");
    // the token endpoint: a tight limit, never cached; its JSON body is bounded by the schema
    let token = block(&text, "/auth/token");
    assert!(token.contains("name = \"auth\"") && !token.contains("cache ="), "{token}");
    assert!(token.contains("max_body = "), "{token}");
    // the caller's own loans require the OAuth2 scheme: one cache entry per caller
    assert!(block(&text, "/v1/me/loans").contains("key = { headers = [\"authorization\"] }"), "{text}");
    // page numbers: the size capped at the schema's maximum, the page number too
    assert!(
        block(&text, "/v1/books").contains(
            "pagination = { param = \"page_size\", max = 50, default = 10, offset_param = \"page\", max_offset = 20 }"
        ),
        "{text}"
    );
    // a declared event stream streams and is never cached
    let events = block(&text, "/v1/events");
    assert!(events.contains("streaming = true") && !events.contains("cache ="), "{events}");
    // renaming an author drops the books and loans that show one: `Author` is an entity, the
    // books' answers say where it occurs, and the author route's writes name it
    assert!(text.contains("[entities.Author]\nid = \"author_id\"") || text.contains("[entities.Author]\nid = \"id\""), "{text}");
    let author = prose(block(&text, "/v1/authors/{author_id}"));
    assert!(author.contains("writes here drop the Author it names (Author:{author_id}"), "{author}");
    assert!(!author.lines().any(|l| l.starts_with("invalidate")), "no path rules where entities say it: {author}");
    assert!(block(&text, "/v1/books").contains("\"Author\""), "{text}");
    assert!(author.contains("cache = { ttl") && !author.contains("name = \"auth\""), "authors are not auth: {author}");

    let gw = run_generated(&text);
    let c = reqwest::Client::new();
    let r = c.post(gw.url("/auth/token")).json(&json!({"username": "librarian", "password": "secret"})).send().await.unwrap();
    let librarian = format!("Bearer {}", r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap());
    for p in ["/v1/books/3", "/v1/books?page=1&page_size=5"] {
        reads(&gw, &c, p).await;
        assert_eq!(reads(&gw, &c, p).await[0].2, "HIT", "{p} is cached");
    }
    let r = c.put(gw.url("/v1/authors/2")).header("authorization", &librarian).json(&json!({"name": "Calvino"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for p in ["/v1/books/3", "/v1/books?page=1&page_size=5"] {
        same_as_backend(&backend, &gw, &c, p, "the rename").await;
    }
    assert_eq!(reads(&gw, &c, "/v1/books/3").await[0].1["author"]["name"], "Calvino");
    // the backend's page-size cap, held at the gateway: lowered, not refused
    let r = c.get(gw.url("/v1/books?page_size=500")).send().await.unwrap();
    assert_eq!(r.headers()["fastgate-pagination"], "page_size=50; requested=500");
    assert_eq!(r.json::<Value>().await.unwrap()["page_size"], 50);
    // the stream arrives whole, as the backend sent it
    let body = c.get(gw.url("/v1/events")).send().await.unwrap().text().await.unwrap();
    assert_eq!(body, "data: tick 0\n\ndata: tick 1\n\ndata: tick 2\n\n");
    // a wrong password: the backend's 401, in the gateway's shape
    let r = c.post(gw.url("/auth/token")).json(&json!({"username": "x", "password": "no"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
}

/// `init`'s comments with their wrapping undone.
fn prose(text: &str) -> String {
    text.replace("\n# ", " ")
}

/// `init`'s file with a faster health check, so more than `unhealthy_threshold` (2) checks
/// run within the test.
fn run_generated_checking_every(text: &str, interval: &str) -> Gateway {
    assert!(text.contains("interval = \"5s\""), "{text}");
    run_generated(&text.replace("interval = \"5s\"", &format!("interval = \"{interval}\"")))
}

fn audit_file(text: &str, doc: &str) -> (bool, Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fastgate.toml");
    std::fs::write(&path, text).unwrap();
    let out = fastgate_command().args(["check", "-c", path.to_str().unwrap(), "--openapi", doc, "--format", "json"]).output().unwrap();
    (out.status.success(), serde_json::from_slice(&out.stdout).unwrap())
}

fn has_finding(v: &Value, kind: &str, severity: &str) -> bool {
    v["findings"].as_array().unwrap().iter().any(|f| f["kind"] == kind && f["severity"] == severity)
}

/// A bearer token from the prefixed app's login, through the gateway.
async fn login(gw: &Gateway, user: &str) -> String {
    let r = reqwest::Client::new()
        .post(gw.url("/api/v1/login/access-token"))
        .json(&json!({"username": user, "password": "secret"}))
        .send()
        .await
        .unwrap();
    format!("Bearer {}", r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap())
}

/// Requests through `gw` for `rounds` health-check intervals: every one is served, and the
/// gateway stays ready.
async fn served_all_along(gw: &Gateway, path: &str, token: &str, rounds: usize) {
    let c = reqwest::Client::new();
    for i in 0..rounds {
        let r = c.get(gw.url(path)).header("authorization", token).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}; log:\n{}", common::tail(&gw.log(), 20));
        assert_eq!(c.get(gw.admin_url("/readyz")).send().await.unwrap().status(), 200, "ready at {i}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn init_checks_an_app_that_serves_its_document_under_a_prefix() {
    let backend = Backend::start_app_ready("tests/apps/prefixed", "/api/v1/utils/health-check/", &[]);
    let doc = backend.url("/api/v1/openapi.json");
    let out = init(&["--from-openapi", &doc]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // rule 1: the app's own health operation, probed before it was written
    assert!(text.contains("health_check = { path = \"/api/v1/utils/health-check/\", interval = \"5s\" }"), "{text}");
    assert!(prose(&text).contains("the app's own health endpoint (`health_check`: a GET without parameters or credentials that says health); it answered 200 when init asked"), "{text}");
    let (ok, v) = audit_file(&text, &doc);
    assert!(ok && !has_finding(&v, "unknown_health_check", "error"), "{v:#}");

    // ready, and staying ready with every request served, over more than
    // `unhealthy_threshold` checks (2 at 100 ms)
    let gw = run_generated_checking_every(&text, "100ms");
    gw.wait_ready();
    let token = login(&gw, "alice").await;
    served_all_along(&gw, "/api/v1/items/?limit=5", &token, 10).await;
    drop(gw);

    // what init wrote before: `/openapi.json`, which this app answers 404. `check` calls it an
    // error, and the gateway never becomes ready and refuses requests once the checks fail
    let check = "health_check = { path = \"/api/v1/utils/health-check/\"";
    let old = text.replace(check, "health_check = { path = \"/openapi.json\"");
    let (ok, v) = audit_file(&old, &doc);
    let errors: Vec<&Value> = v["findings"].as_array().unwrap().iter().filter(|f| f["severity"] == "error").collect();
    assert!(!ok && errors.len() == 1 && errors[0]["kind"] == "unknown_health_check", "{v:#}");
    let gw = run_generated_checking_every(&old, "100ms");
    assert!(!common::wait_for_status(&gw.admin_url("/readyz"), 200, std::time::Duration::from_millis(800)));
    assert_eq!(reqwest::get(gw.url("/api/v1/utils/health-check/")).await.unwrap().status(), 503);
    drop(gw);

    // a check that needs credentials is a warning
    let secured = text.replace(check, "health_check = { path = \"/api/v1/items/\"");
    let (ok, v) = audit_file(&secured, &doc);
    assert!(ok && has_finding(&v, "secured_health_check", "warning"), "{v:#}");
}

#[tokio::test]
async fn init_falls_back_to_the_document_path_then_to_no_check() {
    // rule 2: no health operation; the path the document was read from
    let backend = Backend::start_app_ready("tests/apps/prefixed", "/api/v1/openapi.json", &[("PREFIXED_NO_HEALTH", "1")]);
    let doc = backend.url("/api/v1/openapi.json");
    let out = init(&["--from-openapi", &doc]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("health_check = { path = \"/api/v1/openapi.json\", interval = \"5s\" }"), "{text}");
    assert!(prose(&text).contains("no operation says health: the path init read the document from"), "{text}");
    let (ok, v) = audit_file(&text, &doc);
    assert!(ok && !has_finding(&v, "unknown_health_check", "error"), "{v:#}");
    let gw = run_generated_checking_every(&text, "100ms");
    gw.wait_ready();
    let token = login(&gw, "bob").await;
    served_all_along(&gw, "/api/v1/items/3", &token, 5).await;
    drop(gw);

    // rule 3: a document read from a file names no path of its own
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, reqwest::get(&doc).await.unwrap().bytes().await.unwrap()).unwrap();
    let out = init(&["--from-openapi", file.to_str().unwrap(), "--upstream", &backend.addr()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("\nhealth_check ="), "{text}");
    assert!(
        prose(&text).contains("no active health check: no GET operation without parameters or credentials says health; the document was read from a file"),
        "{text}"
    );
    assert!(common::check_config(&text).status.success());
    let gw = run_generated(&text);
    gw.wait_ready();
}

#[tokio::test]
async fn init_from_a_file_writes_no_check_it_could_not_try() {
    // the app with its health operation, its document from a file, the app not running
    let backend = Backend::start_app_ready("tests/apps/prefixed", "/api/v1/utils/health-check/", &[]);
    let doc = reqwest::get(backend.url("/api/v1/openapi.json")).await.unwrap().bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc).unwrap();
    // with the app up, the operation is tried and written
    let out = init(&["--from-openapi", file.to_str().unwrap(), "--upstream", &backend.addr()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\nhealth_check = { path = \"/api/v1/utils/health-check/\""), "{text}");
    let addr = backend.addr();
    drop(backend);
    let out = init(&["--from-openapi", file.to_str().unwrap(), "--upstream", &addr]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("\nhealth_check ="), "{text}");
    assert!(prose(&text).contains("the app could not be asked (") && prose(&text).contains("still leaves out a failing server"), "{text}");
    assert!(text.contains("# health_check = { path = \"/api/v1/utils/health-check/\", interval = \"5s\" }"), "{text}");
}
