//! The server and the command line as the book describes them: the access line (and turning it
//! off), the shutdown grace period running out, `[server]` changes that need a restart,
//! FASTGATE_CONFIG and the default config path, pretty logs, `check` warnings, `probe`'s
//! default URL, the last reload in `/admin/config`, `${VAR:-default}` and `$$`, `schema` and
//! `reference`.

use crate::common;

use common::{config_for, free_port, server_table, Backend, Gateway, CATCH_ALL};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Isolated like the harness's children: dies with the test process.
fn fastgate() -> Command {
    common::fastgate_command()
}

/// The JSON lines of `target` in a gateway's log.
fn lines_of(log: &str, target: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == target)
        .collect()
}

async fn wait_lines(gw: &Gateway, target: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = lines_of(&gw.log(), target);
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "{} of {n} {target} lines:\n{}", lines.len(), gw.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_access_line_has_every_field_and_can_be_turned_off() {
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"market\"\nmatch = { path_prefix = \"/api/market\" }\nupstream = \"api\"\ncache = { ttl = \"30s\" }\n\n"
        .to_string()
        + CATCH_ALL;
    let gw = Gateway::start(&config_for(&backend.addr(), &routes));
    let c = reqwest::Client::new();
    let r = c.get(gw.url("/api/market/AAPL?x=1")).header("User-Agent", "probe/1.0").send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body_len = r.bytes().await.unwrap().len() as u64;
    c.get(gw.url("/nowhere")).send().await.unwrap(); // through the catch-all: a backend 404
    let lines = wait_lines(&gw, "fastgate::access", 2).await;
    let a = lines.iter().find(|v| v["request_id"] == id.as_str()).expect("the request's line");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/api/market/AAPL");
    assert_eq!(a["route"], "market");
    assert_eq!(a["status"], 200);
    assert_eq!(a["client"], "127.0.0.1");
    assert_eq!(a["user_agent"], "probe/1.0");
    assert_eq!(a["cache"], "miss");
    assert_eq!(a["upstream"], backend.addr().as_str());
    assert_eq!(a["bytes_out"], body_len);
    assert_eq!(a["bytes_in"], 0);
    let ms = a["duration_ms"].as_f64().unwrap();
    assert!(ms > 0.0 && ms < 5000.0, "{a}");
    assert!(a["upstream_ttfb_ms"].as_f64().unwrap() <= ms, "{a}");
    assert!(a.get("problem").is_none() && a.get("trace_id").is_none(), "absent values are left out: {a}");
    drop(gw);

    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "access_log = false", &[]);
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200);
    }
    gw.wait_metric("http_server_request_duration_seconds_count{method=\"GET\",route=\"all\",status_class=\"2xx\"}", 3.0).await;
    assert!(lines_of(&gw.log(), "fastgate::access").is_empty(), "{}", gw.log());
}

#[tokio::test]
async fn a_gateway_answer_is_in_the_access_line_with_its_problem() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), "[[routes]]\nname = \"m\"\nmatch = { path_prefix = \"/api/market\" }\nupstream = \"api\"\n"));
    let r = reqwest::get(gw.url("/elsewhere")).await.unwrap();
    assert_eq!(r.status(), 404);
    let lines = wait_lines(&gw, "fastgate::access", 1).await;
    assert_eq!(lines[0]["problem"], "no_route");
    assert_eq!(lines[0]["route"], "<none>");
    assert!(lines[0].get("upstream").is_none(), "{}", lines[0]);
}

#[tokio::test]
async fn when_shutdown_grace_runs_out_the_gateway_exits_anyway() {
    let backend = Backend::start();
    let mut gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "shutdown_grace = \"1s\"", &[]);
    let url = gw.url("/debug/hold/grace");
    let held = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    backend.wait_holding("grace", 1).await;
    let t = Instant::now();
    gw.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait_exit(Duration::from_secs(6));
        (s, gw)
    })
    .await
    .unwrap();
    let (status, gw) = status;
    let elapsed = t.elapsed();
    assert!(status.expect("exited").success());
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(gw.log().contains("grace period over; exiting with requests in flight"), "{}", gw.log());
    // the held request was cut, not answered
    assert!(held.await.unwrap().is_err());
    backend.release("grace").await;
}

#[tokio::test]
async fn server_changes_on_reload_say_they_need_a_restart() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    // same routes, another shutdown_grace: reloaded, with the restart warning
    let text = format!("{}{}\n{}", server_table(gw.port, gw.admin_port), "threads = 2", config_for(&backend.addr(), CATCH_ALL));
    gw.write_raw_config(&text);
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log().contains("config reloaded") {
        assert!(Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.log().contains("they take effect on restart"), "{}", gw.log());
    // still serving on the old listener
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200);
}

#[test]
fn the_config_file_comes_from_fastgate_config_or_the_default_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[upstreams.api]\nservers = [\"127.0.0.1:{}\"]\n\n{CATCH_ALL}", free_port());
    std::fs::write(dir.path().join("mine.toml"), &text).unwrap();
    let out = fastgate().args(["check"]).env("FASTGATE_CONFIG", dir.path().join("mine.toml")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mine.toml: ok"));
    // -c wins over the variable
    let out = fastgate()
        .args(["check", "-c", "/nonexistent.toml"])
        .env("FASTGATE_CONFIG", dir.path().join("mine.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // neither: config/fastgate.toml under the working directory
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/fastgate.toml"), &text).unwrap();
    let out = fastgate().args(["check"]).env_remove("FASTGATE_CONFIG").current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("config/fastgate.toml: ok"));
    let empty = tempfile::tempdir().unwrap();
    let out = fastgate().args(["check"]).env_remove("FASTGATE_CONFIG").current_dir(empty.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config/fastgate.toml") && err.contains("FASTGATE_CONFIG"), "{err}");
}

#[test]
fn pretty_logs_from_the_flag_or_the_variable() {
    for how in ["flag", "env"] {
        let backend_port = free_port();
        let (port, admin) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, format!("{}\n{}", server_table(port, admin), config_for(&format!("127.0.0.1:{backend_port}"), CATCH_ALL))).unwrap();
        let log = dir.path().join("log");
        let mut cmd = fastgate();
        cmd.args(["run", "-c"]).arg(&path).stdout(Stdio::from(std::fs::File::create(&log).unwrap())).stderr(Stdio::null());
        match how {
            "flag" => cmd.args(["--log-format", "pretty"]),
            _ => cmd.env("FASTGATE_LOG_FORMAT", "pretty"),
        };
        let mut child = cmd.spawn().unwrap();
        let up = common::wait_for_status(&format!("http://127.0.0.1:{admin}/healthz"), 200, Duration::from_secs(10));
        let _ = child.kill();
        let _ = child.wait();
        assert!(up);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("fastgate starting"), "{how}: {text}");
        assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_err()), "{how}: not JSON lines: {text}");
        for p in [port, admin] {
            common::release(p);
        }
    }
}

#[test]
fn check_prints_overlap_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.toml");
    let text = "[upstreams.api]\nservers = [\"127.0.0.1:8000\"]\n[[routes]]\nname = \"r\"\nmatch = { path_prefix = \"/x\", methods = [\"GET\", \"POST\"] }\nupstream = \"api\"\n[[routes]]\nname = \"w\"\nmatch = { path_prefix = \"/x\", methods = [\"POST\"] }\nupstream = \"api\"\n";
    std::fs::write(&path, text).unwrap();
    let out = fastgate().args(["check", "-c"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("warning: ") && stdout.contains("o.toml:7:1: route `w` overlaps route `r` (line 3)"), "{stdout}");
}

/// `fastgate schema` is the document editors load: draft 07, every table closed to unknown keys,
/// the policy keys in routes and `[defaults]` alike, with descriptions and defaults; its pipe
/// closed early is no panic. The reference pages come from the same binary.
#[test]
fn schema_and_reference_pages_come_from_the_binary() {
    let out = fastgate().arg("schema").output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(v["additionalProperties"], false);
    let route = &v["properties"]["routes"]["items"];
    assert_eq!(route["additionalProperties"], false);
    assert_eq!(route["properties"]["timeout"]["default"], "30s");
    assert_eq!(v["properties"]["defaults"]["properties"]["timeout"], route["properties"]["timeout"]);
    assert!(route["properties"]["rate_limit"]["description"].as_str().unwrap().contains("Limits stacked on the route"));
    assert_eq!(route["properties"]["rate_limit"]["items"]["required"], serde_json::json!(["rate"]));

    let mut child = fastgate().arg("schema").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take()); // the reader went away, as `| head -1` does
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    for (page, heading) in [("config", "# Config keys"), ("problems", "# Problem codes")] {
        let out = fastgate().args(["reference", page]).output().unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with(heading));
    }
}

#[test]
fn probe_asks_the_default_admin_healthz() {
    // Nothing may be listening on the default admin port here: the probe names what it asked.
    let out = fastgate().arg("probe").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return; // a real fastgate on this machine answered at the default address
    }
    assert!(err.contains("http://127.0.0.1:9090/healthz"), "{err}");
}

#[tokio::test]
async fn admin_config_reports_the_last_reload() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let config = || async { reqwest::get(gw.admin_url("/admin/config")).await.unwrap().json::<Value>().await.unwrap() };
    let v = config().await;
    assert_eq!(v["last_load"]["ok"], true, "{v}");
    gw.write_config(&config_for(&backend.addr(), &CATCH_ALL.replace("\"api\"", "\"apx\"")));
    let r = reqwest::Client::new().post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let v = config().await;
    assert_eq!(v["last_load"]["ok"], false, "{v}");
    assert!(v["last_load"]["message"].as_str().unwrap().contains("unknown upstream `apx`"), "{v}");
}

#[tokio::test]
async fn variables_with_defaults_and_literal_dollars() {
    let backend = Backend::start();
    let gw = Gateway::start_with(
        &config_for(&format!("${{FG_TEST_UNSET_BACKEND:-{}}}", backend.addr()), CATCH_ALL),
        "admin_token = \"pa$$word-${FG_TEST_SUFFIX}\"",
        &[("FG_TEST_SUFFIX", "x1")],
    );
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200, "the default named the backend");
    let c = reqwest::Client::new();
    let r = c.get(gw.admin_url("/admin/config")).bearer_auth("pa$word-x1").send().await.unwrap();
    assert_eq!(r.status(), 200, "`$$` is a literal `$`");
    let r = c.get(gw.admin_url("/admin/config")).bearer_auth("pa$$word-x1").send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn sigquit_hands_the_listeners_to_a_new_process_without_refusing_a_request() {
    let backend = Backend::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let mut old = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), &format!("upgrade_sock = \"{}\"", sock.display()), &[]);
    // The new process takes the same file and waits for the sockets.
    let log = dir.path().join("new.log");
    let new = common::Managed(
        common::fastgate_command()
            .args(["run", "--upgrade", "-c"])
            .arg(&old.config_path)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Traffic runs all through the hand-over: none of it may fail.
    let url = old.url("/api/market/AAPL");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut retried, mut failed) = (0u32, 0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // a new connection each time: the listener itself must never be missing
                let mut answer = reqwest::Client::new().get(&url).send().await;
                // A connection the old process accepted in its last instant, whose head had not
                // arrived yet, was closed unanswered while pingora read heads (it drops them at
                // shutdown). The connection layer now serves it: counted, and must not happen.
                if answer.as_ref().is_err_and(|e| format!("{e:?}").contains("IncompleteMessage")) {
                    retried += 1;
                    answer = reqwest::Client::new().get(&url).send().await;
                }
                match answer {
                    Ok(r) if r.status() == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, retried, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    old.signal("QUIT");
    let status = tokio::task::spawn_blocking(move || (old.wait_exit(Duration::from_secs(15)), old)).await.unwrap();
    let (status, old) = status;
    assert!(status.expect("the old process exited").success(), "{}", old.log());
    // the new process serves on the same addresses
    assert!(common::wait_for_status(&old.admin_url("/healthz"), 200, Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, retried, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{} failed of {}: {:?}", failed.len(), ok as usize + failed.len(), &failed[..failed.len().min(3)]);
    assert!(retried == 0, "{retried} connections closed without an answer during the hand-over");
    assert!(ok > 10, "{ok}");
    assert!(old.log().contains("listener sockets sent"), "{}", old.log());
    let new_log = std::fs::read_to_string(&log).unwrap();
    assert!(new_log.contains("fastgate starting"), "{new_log}");
    drop(new);
}

#[tokio::test]
async fn the_admin_api_refuses_in_its_own_problem_shape() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let c = reqwest::Client::new();
    let problem = |r: reqwest::Response| async move {
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{v}");
        v
    };
    // 405 with the methods the endpoint takes
    for (method, path, allow) in [
        (reqwest::Method::POST, "/metrics", "GET"),
        (reqwest::Method::DELETE, "/readyz", "GET, HEAD"),
        (reqwest::Method::GET, "/admin/reload", "POST"),
        (reqwest::Method::PUT, "/admin/cache/purge", "POST"),
    ] {
        let r = c.request(method.clone(), gw.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
        assert_eq!(problem(r).await["code"], "method_not_allowed");
    }
    // 413: a purge body over the admin API's 64 KiB
    let big = format!("{{\"tag\": \"{}\"}}", "x".repeat(70 * 1024));
    let r = c.post(gw.admin_url("/admin/cache/purge")).header("content-type", "application/json").body(big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(problem(r).await["code"], "payload_too_large");
    // the same endpoint still works with a body of normal size
    let r = c.post(gw.admin_url("/admin/cache/purge")).json(&serde_json::json!({"tag": "x"})).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // 403 needs a non-loopback peer without a token, which a loopback-only admin listener
    // never has (and fastgate refuses an admin listener off loopback without a token): the
    // gate itself is unit-tested (admin::tests), IPv4-mapped loopback peers included
    let out = common::check_config(&format!(
        "[server]\nadmin_listen = \"0.0.0.0:9999\"\n\n{}",
        config_for(&backend.addr(), CATCH_ALL)
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin_token"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn check_json_carries_the_hash_the_gateway_reports_and_every_warning() {
    let backend = Backend::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fastgate.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = common::fastgate_command().args(["check", "-c", path.to_str().unwrap(), "--format", "json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // a compile warning (a check that outlasts its interval) and a live one (a name that does
    // not resolve here)
    let text = format!(
        "[upstreams.api]\nservers = [\"{}\"]\nhealth_check = {{ path = \"/healthz\", interval = \"1s\", timeout = \"2s\" }}\n\n[upstreams.elsewhere]\nservers = [\"no-such-host.invalid:80\"]\n\n{CATCH_ALL}",
        backend.addr()
    );
    let v = check(&text);
    assert_eq!(v["ok"], true, "{v}");
    let warnings: Vec<&str> = v["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("is longer than its `interval`")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("upstream `elsewhere`")), "{warnings:?}");
    // the hash names this text: the one the gateway reports when it runs the same file, and
    // another one for another text
    let hash = v["hash"].as_str().unwrap().to_string();
    assert!(hash.len() >= 16 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
    // (a name that does not resolve stops `run`: the running file leaves that upstream out)
    let runnable = text.replace("[upstreams.elsewhere]\nservers = [\"no-such-host.invalid:80\"]\n", "");
    assert_ne!(runnable, text);
    let gw = Gateway::start_file(|port, admin| format!("{}{runnable}", common::server_table(port, admin)), &[]);
    let served = common::config_file(&gw.config_path);
    assert_eq!(check(&served)["hash"], json_hash(&gw).await);
    assert_ne!(check(&format!("{text}\n# another text\n"))["hash"], hash);
}

async fn json_hash(gw: &Gateway) -> serde_json::Value {
    let ready: serde_json::Value = reqwest::get(gw.admin_url("/readyz")).await.unwrap().json().await.unwrap();
    ready["config_hash"].clone()
}

const ROUTED: &str = r#"
[upstreams.api]
servers = ["127.0.0.1:8000"]

[[routes]]
name = "items"
match = { path = "/api/items", methods = ["GET", "POST"] }
upstream = "api"
cache = { ttl = "60s", key = { headers = ["authorization"] } }
rate_limit = [{ rate = "5/s", key = "header:x-api-key", name = "per-key", on_missing_key = "client_ip" }]

[[routes]]
name = "item"
match = { path = "/api/items/{item_id}" }
upstream = "api"
cache = "on"
rate_limit = [{ rate = "5/s", key = "path:item_id", name = "per-item" }]

[[routes]]
name = "admin"
match = { path_prefix = "/admin" }
action = "deny"
"#;

const PASSING: &str = r#"
[[test]]
name = "a reader's list is cached under their token"
request = "GET /api/items?offset=20&limit=10"
headers = { authorization = "Bearer alice", x-api-key = "k1" }
expect = { route = "items", cache = "cached", cache_key = ["/api/items?limit=10&offset=20", "authorization=Bearer alice"], rate_limits = ["per-key: x-api-key=k1"] }

[[test]]
request = "POST /api/items"
expect = { route = "items", cache = "bypass: method", rate_limits = ["per-key: missing, by client 127.0.0.1"] }

[[test]]
name = "credentials the key does not name bypass the cache"
request = "GET /api/items/7"
headers = { authorization = "Bearer alice" }
expect = { route = "item", cache = "bypass: credentials", rate_limits = ["per-item: item_id=7"] }

[[test]]
name = "the backend receives the normalized path"
request = "GET /api/./items/../items/7"
expect = { route = "item", path = "/api/items/7" }

[[test]]
name = "every spelling of a denied path is denied"
request = "GET /ADMIN;x=1/users"
expect = { route = "admin", deny = 404 }

[[test]]
request = "DELETE /api/items"
expect = { route = "none: 405 (allow GET, POST)" }
"#;

#[test]
fn route_tests_hold_the_table_to_what_a_team_means() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, ROUTED).unwrap();
    let tests = dir.path().join("routes.tests.toml");
    std::fs::write(&tests, PASSING).unwrap();
    let out = fastgate().args(["check", "-c"]).arg(&routes).arg("--test").arg(&tests).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("6 passed, 0 failed") && stdout.contains("ok    a reader's list is cached under their token"), "{stdout}");

    // a failure prints the expected and the actual row, and fails the run
    let failing = "[[test]]\nrequest = \"GET /api/items/7\"\nexpect = { route = \"items\", cache = \"cached\" }\n";
    std::fs::write(&tests, failing).unwrap();
    let out = fastgate().args(["check", "-c"]).arg(&routes).arg("--test").arg(&tests).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("FAIL  GET /api/items/7"), "{stdout}");
    assert!(stdout.contains(r#"expected {"route":"items","cache":"cached"}"#) && stdout.contains(r#"actual   {"route":"item","cache":"cached"}"#), "{stdout}");
    // and as JSON, for CI
    let out = fastgate().args(["check", "--format", "json", "-c"]).arg(&routes).arg("--test").arg(&tests).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["ok"].as_bool(), v["failed"].as_u64()), (Some(false), Some(1)), "{v}");
    assert_eq!(v["tests"][0]["actual"]["route"], "item");

    // a test file that is not one says where
    std::fs::write(&tests, "[[test]]\nrequest = \"GET /x\"\nexpect = { rute = \"x\" }\n").unwrap();
    let out = fastgate().args(["check", "-c"]).arg(&routes).arg("--test").arg(&tests).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("routes.tests.toml") && stderr.contains("line 3") && stderr.contains("rute"), "{stderr}");
}
