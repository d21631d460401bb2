//! `config/fastgate.toml`, the file `scripts/demo` runs, serving the real example backend:
//! what README's first command promises (`x-cache: MISS` then `HIT`, the `RateLimit` fields, a
//! warm cache, per-user caching behind the backend's auth, streams, compression).

use crate::common;

use common::{Backend, Gateway};
use futures_util::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn the_shipped_config_serves_the_example_backend() {
    let backend = Backend::start();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fastgate.toml")).unwrap();
    assert!(shipped.contains("\"0.0.0.0:8080\"") && shipped.contains("\"127.0.0.1:9090\""));
    let gw = Gateway::start_file(
        |port, admin| {
            shipped
                .replace("\"0.0.0.0:8080\"", &format!("\"127.0.0.1:{port}\""))
                .replace("\"127.0.0.1:9090\"", &format!("\"127.0.0.1:{admin}\""))
        },
        &[("FASTGATE_BACKEND", &backend.addr())],
    );
    gw.wait_ready();
    let c = reqwest::Client::new();

    // the README's first request, twice
    let r = c.get(gw.url("/api/market/AAPL")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "MISS");
    assert_eq!(r.headers()["ratelimit-policy"], "\"client_ip\";q=100;w=2");
    assert!(r.headers()["ratelimit"].to_str().unwrap().starts_with("\"client_ip\";r=99;"));
    assert_eq!(r.headers()["x-request-id"].len(), 36);
    let r = c.get(gw.url("/api/market/AAPL")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(backend.hits("/api/market/AAPL").await, 1);

    // reference data was warmed before readiness
    let r = c.get(gw.url("/api/static/exchanges")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");

    // per-user data: the backend's auth answers, and each user's copy stays theirs
    let r = c.get(gw.url("/api/users/alice")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    for _ in 0..2 {
        let r = c.get(gw.url("/api/users/alice")).bearer_auth("user-alice").send().await.unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["token_owner"], "alice");
    }
    let r = c.get(gw.url("/api/users/alice")).bearer_auth("user-bob").send().await.unwrap();
    assert_eq!(r.status(), 403, "bob is not served alice's cached copy");

    // a trade: a 201 with its Location; a 422 from the backend's validation passes through
    let r = c.post(gw.url("/api/trades")).json(&json!({"symbol": "AAPL", "side": "buy", "qty": 1})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = c.post(gw.url("/api/trades")).json(&json!({"symbol": "AAPL", "side": "hold", "qty": 1})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["detail"][0]["loc"], json!(["body", "side"]));

    // a large list, compressed with the client's preferred algorithm
    let r = c.get(gw.url("/api/instruments?limit=500")).header("Accept-Encoding", "zstd, gzip").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "zstd");
    let items: Value = serde_json::from_slice(&zstd::decode_all(&r.bytes().await.unwrap()[..]).unwrap()).unwrap();
    assert_eq!(items["items"].as_array().unwrap().len(), 500);

    // server-sent events pass event by event
    let r = c.get(gw.url("/api/stream/prices?count=3&interval=0.05")).send().await.unwrap();
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert_eq!(text.matches("event: price").count(), 3);

    // everything else reaches the backend: its OpenAPI document through the catch-all
    let r = c.get(gw.url("/openapi.json")).send().await.unwrap();
    let doc: Value = r.json().await.unwrap();
    assert!(doc["paths"]["/api/v1/items"].is_object());
}

/// The image as the Dockerfile builds it: a numeric non-root user (a pod with `runAsNonRoot`
/// cannot verify a user name), and every path the build needs copied in before the first
/// `cargo build` (a `[patch]` path missing from the image fails the build).
#[test]
fn the_dockerfile_builds_what_cargo_needs_and_runs_as_a_numeric_user() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    // instructions only: the comments show commands too
    let docker: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| format!("{l}\n")).collect();
    let users: Vec<&str> = docker.lines().filter_map(|l| l.trim().strip_prefix("USER ")).collect();
    let last = users.last().expect("a USER line");
    let (uid, gid) = last.split_once(':').unwrap_or((last, "0"));
    assert!(uid.parse::<u32>().is_ok_and(|u| u > 0) && gid.parse::<u32>().is_ok(), "USER {last}: numeric uid:gid, not root");
    assert!(docker.contains(&format!("--uid {uid}")), "the user {uid} is created in the image");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let first_build = docker.find("cargo build").unwrap();
    for line in manifest.lines().filter(|l| l.contains("path = \"")) {
        let path = line.split("path = \"").nth(1).and_then(|p| p.split('"').next()).unwrap();
        let top = path.split('/').next().unwrap();
        let copied = docker[..first_build].lines().any(|l| l.starts_with("COPY ") && l.split_whitespace().nth(1) == Some(top));
        assert!(copied, "Cargo.toml needs {path}: the Dockerfile must COPY {top} before the first cargo build");
    }
}

/// The compose routes file names the `backend` service, which resolves only on the compose
/// network: `check` says so as a warning and passes, with no error per route.
#[test]
fn check_passes_the_compose_configs_off_their_network_with_a_warning() {
    for file in ["deploy/fastgate.compose.toml", "deploy/fastgate.replicas.toml"] {
        let out = common::fastgate_command()
            .args(["check", "-c", file])
            .env("REDIS_URL", "redis://redis:6379/0")
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{file}: {said}");
        if !said.contains("warning: upstream `api`: cannot resolve backend:8000") {
            // a machine whose resolver knows a host called `backend` resolves it: no warning then
            assert!(!said.contains("error"), "{file}: {said}");
        }
        assert!(!said.contains("unknown upstream"), "{file}: {said}");
    }
}

/// Every shipped config comes with route tests (`config/NAME.tests.toml`), and they pass.
#[test]
fn the_shipped_configs_pass_their_route_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut ran = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".toml") || name.ends_with(".tests.toml") {
            continue;
        }
        let tests = path.with_extension("tests.toml");
        assert!(tests.exists(), "{name} has no route tests ({})", tests.display());
        let out = common::fastgate_command().env("FASTGATE_ADMIN_TOKEN", "a-token-for-the-tests-only").args(["check", "-c"]).arg(&path).arg("--test").arg(&tests).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
        ran += 1;
    }
    assert_eq!(ran, 3, "fastgate.toml, edge.toml and sidecar.toml");
}
