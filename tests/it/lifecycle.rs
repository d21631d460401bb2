//! Process lifecycle through signals: SIGHUP reloads atomically under load, a broken file on
//! SIGHUP keeps the old config, SIGTERM drains in-flight requests and exits 0. Also the
//! `check` command and start-up failures.

use crate::common;

use common::{config_for, metric_value, Backend, Gateway, CATCH_ALL};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn route_with_cap(cap: &str) -> String {
    format!("[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"api\"\nmax_body = \"{cap}\"\n")
}

async fn config_hash(gw: &Gateway) -> String {
    let v: serde_json::Value = reqwest::get(gw.admin_url("/readyz")).await.unwrap().json().await.unwrap();
    v["config_hash"].as_str().unwrap().to_string()
}

async fn wait_hash_change(gw: &Gateway, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = config_hash(gw).await;
        if h != old {
            return h;
        }
        assert!(Instant::now() < deadline, "config was not reloaded; log:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_config_under_load_without_failing_a_request() {
    let backend = Backend::start();
    let gw = Arc::new(Gateway::start(&config_for(&backend.addr(), &route_with_cap("100"))));
    let c = reqwest::Client::new();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut workers = Vec::new();
    for _ in 0..8 {
        let (c, gw, ok, failed, stop) = (c.clone(), gw.clone(), ok.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let good = match c.get(gw.url("/api/market/AAPL")).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if good { ok.fetch_add(1, Ordering::Relaxed) } else { failed.fetch_add(1, Ordering::Relaxed) };
            }
        }));
    }

    // Five reloads while the load runs, alternating the body cap.
    let body = vec![b'x'; 150];
    let mut hash = config_hash(&gw).await;
    for i in 0..5 {
        let cap = if i % 2 == 0 { "200" } else { "100" };
        gw.write_config(&config_for(&backend.addr(), &route_with_cap(cap)));
        gw.signal("HUP");
        hash = wait_hash_change(&gw, &hash).await;
        let status = c.post(gw.url("/debug/echo")).body(body.clone()).send().await.unwrap().status();
        assert_eq!(status.as_u16(), if cap == "200" { 200 } else { 413 }, "cap {cap} in force after reload {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "load ran: {ok}");
    assert_eq!(failed, 0, "{failed} requests failed across reloads");
    let m = gw.metrics().await;
    assert_eq!(metric_value(&m, "fastgate_config_reloads_total{result=\"ok\"}"), Some(5.0), "{m}");
}

#[tokio::test]
async fn sighup_with_a_broken_file_keeps_the_old_config() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let hash = config_hash(&gw).await;

    let good = common::config_file(&gw.config_path);
    let broken = good.replace("upstream = \"api\"", "upstream = \"apx\"");
    gw.write_raw_config(&broken);
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = gw.metrics().await;
        if metric_value(&m, "fastgate_config_reloads_total{result=\"failed\"}") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "failed reload not counted: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(config_hash(&gw).await, hash, "old config stays in force");
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200);
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("config reload failed")).expect("reload failure logged");
    assert!(line.contains("fastgate.toml:") && line.contains("unknown upstream `apx`"), "{line}");
    assert!(line.contains("did you mean `api`?"), "{line}");

    // A syntax error too.
    gw.write_raw_config("[server\nlisten = ");
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_value(&gw.metrics().await, "fastgate_config_reloads_total{result=\"failed\"}") != Some(2.0) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200);

    // An empty file (what `cat > file` leaves for an instant), and one cut after its server
    // table: refused, not a gateway that answers 404 to everything.
    let server_only: String = good.lines().take_while(|l| !l.starts_with("[upstreams")).collect::<Vec<_>>().join("\n");
    for (n, text) in [(3.0, String::new()), (4.0, server_only)] {
        gw.write_raw_config(&text);
        gw.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric_value(&gw.metrics().await, "fastgate_config_reloads_total{result=\"failed\"}") != Some(n) {
            assert!(Instant::now() < deadline, "{text:?} not refused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200);
    }
    assert!(gw.log().contains("no `[upstreams.NAME]` and no `[[routes]]`"), "{}", gw.log());

    // And a fixed file is picked up again.
    gw.write_raw_config(&format!("{good}\n# touched\n"));
    gw.signal("HUP");
    wait_hash_change(&gw, &hash).await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let backend = Backend::start();
    let mut gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let url = gw.url("/debug/hold/drain");
    let slow = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    // The request is in flight at the backend, held there until the test releases it.
    backend.wait_holding("drain", 1).await;
    let signalled = Instant::now();
    gw.signal("TERM");
    // New connections are refused while draining, with the request still in flight.
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(gw.addr()).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still open 2 s into draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!slow.is_finished());
    assert!(gw.wait_exit(Duration::from_millis(300)).is_none(), "exited with a request in flight");
    backend.release("drain").await;

    assert_eq!(slow.await.unwrap().expect("in-flight request completed"), 200);
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(8)))
        .await
        .unwrap()
        .expect("process exited after draining");
    assert!(status.success(), "{status:?}");
    // Exited once drained, not after the 10 s grace period.
    assert!(signalled.elapsed() < Duration::from_secs(5), "{:?}", signalled.elapsed());
}

#[tokio::test]
async fn idle_gateway_exits_promptly_on_sigint() {
    let backend = Backend::start();
    let mut gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let t = Instant::now();
    gw.signal("INT");
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(5))).await.unwrap();
    assert!(status.expect("exited").success());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

fn fastgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fastgate")).args(args).output().unwrap()
}

#[test]
fn check_prints_the_route_table_in_precedence_order() {
    let out = fastgate(&["check", "-c", concat!(env!("CARGO_MANIFEST_DIR"), "/config/fastgate.toml")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": ok (hash "), "{text}");
    let pos = |name: &str| text.find(&format!(" {name} ")).unwrap_or_else(|| panic!("{name} in {text}"));
    assert!(pos("instruments") < pos("market"));
    assert!(pos("market") < pos("default"));
}

#[test]
fn check_refuses_a_bad_file_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[upstreams.api]\nservers = [\"127.0.0.1:8000\"]\n\n[[routes]]\nname = \"a\"\nmatch = { path_prefix = \"/a\" }\nupstream = \"api\"\ntimeuot = \"5s\"\n",
    )
    .unwrap();
    let out = fastgate(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:8:1: unknown field `timeuot`"), "{err}");
    assert!(err.contains("did you mean `timeout`?"), "{err}");

    // run refuses it too, before binding anything
    let out = fastgate(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml:8:1"));

    let out = fastgate(&["check", "-c", "/nonexistent/fastgate.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn version_and_help() {
    let out = fastgate(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("fastgate "));
    let out = fastgate(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run") && text.contains("check"));
}

#[tokio::test]
async fn probe_exits_by_the_admin_answer() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), CATCH_ALL));
    let probe = |url: String| {
        tokio::task::spawn_blocking(move || fastgate(&["probe", &url]).status.code())
    };
    assert_eq!(probe(gw.admin_url("/healthz")).await.unwrap(), Some(0));
    assert_eq!(probe(gw.admin_url("/nope")).await.unwrap(), Some(1), "404 is a failed probe");
    let closed = format!("http://127.0.0.1:{}/healthz", common::free_port());
    assert_eq!(probe(closed).await.unwrap(), Some(1));
}

#[tokio::test]
async fn admin_reload_applies_a_good_file_and_reports_a_bad_one() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &route_with_cap("100")));
    let c = reqwest::Client::new();
    let before = config_hash(&gw).await;

    gw.write_config(&config_for(&backend.addr(), &route_with_cap("200")));
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["reloaded"], true);
    assert_ne!(v["hash"], before.as_str());
    assert_eq!(c.post(gw.url("/debug/echo")).body(vec![b'x'; 150]).send().await.unwrap().status(), 200);

    gw.write_config(&config_for(&backend.addr(), &route_with_cap("lots")));
    let r = c.post(gw.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["reloaded"], false);
    assert_eq!(v["code"], "config_invalid");
    let err = v["errors"][0].as_str().unwrap();
    assert!(err.contains("fastgate.toml:") && err.contains("invalid size"), "{err}");
    // the good config stays in force
    assert_eq!(c.post(gw.url("/debug/echo")).body(vec![b'x'; 150]).send().await.unwrap().status(), 200);
}
