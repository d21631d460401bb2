//! Metrics with exact counts after known traffic, slow-request and aggregated error logs, the
//! status page in a real headless Chromium, and the dashboard and alert rules checked against
//! what the gateway really exports.

use crate::common;

use common::{config_for, metric_value, Backend, Gateway};
use std::process::Command;
use std::time::{Duration, Instant};

fn routes() -> String {
    r#"
[[routes]]
name = "market"
match = { path_prefix = "/api/market" }
upstream = "api"
cache = { ttl = "60s" }
compress = { min_size = 10 }
rate_limit = [{ rate = "1/m", burst = 4, key = "header:X-Key", on_missing_key = "shared" }]

[[routes]]
name = "trades"
match = { path_prefix = "/api/trades" }
upstream = "api"

[[routes]]
name = "slow"
match = { path = "/api/slow" }
upstream = "api"
slow_threshold = "50ms"
"#
    .to_string()
}

async fn traffic(gw: &Gateway) {
    let c = reqwest::Client::new();
    for _ in 0..4 {
        let r = c.get(gw.url("/api/market/AAPL")).header("Accept-Encoding", "gzip").send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 429);
    for _ in 0..2 {
        let r = c
            .post(gw.url("/api/trades"))
            .json(&serde_json::json!({"symbol": "AAPL", "side": "buy", "qty": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(c.get(gw.url("/nowhere")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(gw.url("/api/slow?seconds=0.2")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let backend = Backend::start();
    let buckets = "[telemetry]\nlatency_buckets = [0.003, 0.03, 0.3, 3.0]\n\n";
    let gw = Gateway::start(&format!("{buckets}{}", config_for(&backend.addr(), &routes())));
    traffic(&gw).await;
    let count = |route: &str, method: &str, class: &str| {
        format!("http_server_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\",status_class=\"{class}\"}}")
    };
    gw.wait_metric(&count("slow", "GET", "2xx"), 1.0).await;
    // Request metrics are recorded just after each response: poll each until it settles.
    for (series, want) in [
        (count("market", "GET", "2xx"), 4.0),
        (count("market", "GET", "4xx"), 1.0),
        (count("trades", "POST", "2xx"), 2.0),
        ("fastgate_gateway_errors_total{code=\"no_route\",route=\"<none>\"}".into(), 1.0),
        ("fastgate_gateway_errors_total{code=\"rate_limited\",route=\"market\"}".into(), 1.0),
        ("fastgate_rate_limited_total{limit=\"header:x-key\",route=\"market\"}".into(), 1.0),
        ("fastgate_cache_requests_total{result=\"MISS\",route=\"market\"}".into(), 1.0),
        ("fastgate_cache_requests_total{result=\"HIT\",route=\"market\"}".into(), 3.0),
        ("http_server_request_body_size_bytes_count{route=\"trades\"}".into(), 2.0),
        // four upstream exchanges: one cache miss, two trades, one slow
        ("fastgate_upstream_response_time_seconds_count{upstream=\"api\"}".into(), 4.0),
        ("fastgate_upstream_active_requests{upstream=\"api\"}".into(), 0.0),
        ("http_server_active_requests{route=\"market\"}".into(), 0.0),
        ("fastgate_slow_requests_total{route=\"slow\"}".into(), 1.0),
        ("fastgate_cache_entries".into(), 1.0),
    ] {
        gw.wait_metric(&series, want).await;
    }
    let m = gw.metrics().await;
    let v = |s: &str| metric_value(&m, s);
    assert!(v("fastgate_compression_bytes_total{algorithm=\"gzip\",direction=\"in\"}").unwrap() > 0.0);
    assert!(v("process_resident_memory_bytes").unwrap() > 1e6);
    assert!(v("process_open_fds").unwrap() > 0.0);
    assert!(m.contains("fastgate_config_info{hash=\""), "{m}");
    // the configured buckets, not the defaults
    assert!(m.contains("route=\"slow\",status_class=\"2xx\",le=\"0.3\"} 1"), "{m}");
    assert!(!m.contains("le=\"0.0025\""), "{m}");
    // the buckets add up: the +Inf bucket equals the count
    assert_eq!(
        v("http_server_request_duration_seconds_bucket{method=\"GET\",route=\"market\",status_class=\"2xx\",le=\"+Inf\"}"),
        Some(4.0)
    );
}

#[tokio::test]
async fn slow_requests_log_their_timings() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &routes()));
    traffic(&gw).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        if let Some(l) = gw.log().lines().find(|l| l.contains("\"slow request\"")).map(str::to_string) {
            break l;
        }
        assert!(Instant::now() < deadline, "no slow-request line:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["route"], "slow");
    assert_eq!(v["level"], "WARN");
    assert!(v["total_ms"].as_f64().unwrap() >= 200.0, "{v}");
    assert!(v["upstream_ttfb_ms"].as_f64().unwrap() >= 190.0, "{v}");
    assert!(v["upstream_connect_ms"].as_f64().unwrap() >= 0.0, "{v}");
    assert!(v["request_id"].as_str().unwrap().len() >= 8);
    assert_eq!(gw.log().matches("\"slow request\"").count(), 1, "only the slow route's request");
}

#[tokio::test]
async fn repeated_errors_are_aggregated() {
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = Gateway::start(&config_for(&dead, common::CATCH_ALL));
    let c = reqwest::Client::new();
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 502);
    }
    gw.wait_metric("fastgate_gateway_errors_total{code=\"upstream_unreachable\",route=\"all\"}", 10.0).await;
    // Each flush (every 10 s) summarises the repeats since the last one and forgets them, so
    // the next occurrence is logged in full again. Whether a flush fell inside the loop or
    // not, full lines plus summarised repeats account for all ten errors, and the log is
    // far shorter than one line per error.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = gw.log();
        let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let full = lines.iter().filter(|v| v["message"] == "gateway error").count() as u64;
        let summaries: Vec<&serde_json::Value> =
            lines.iter().filter(|v| v["message"] == "gateway error repeated").collect();
        let repeats: u64 = summaries.iter().map(|v| v["repeats"].as_u64().unwrap()).sum();
        assert!(full <= 2, "at most one full line per flush interval:\n{log}");
        if !summaries.is_empty() && full + repeats == 10 {
            assert!(summaries.iter().all(|v| v["code"] == "upstream_unreachable"));
            break;
        }
        assert!(Instant::now() < deadline, "errors not accounted for ({full} full + {repeats} repeated):\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn chromium() -> String {
    std::env::var("FASTGATE_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// The page's DOM after its scripts ran, from headless Chromium.
fn render(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("headless chromium (Debian package `chromium`; scripts/setup installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cell<'a>(dom: &'a str, route: &str, class: &str) -> &'a str {
    let row = &dom[dom.find(&format!("data-route=\"{route}\"")).unwrap_or_else(|| panic!("row {route} in {dom}"))..];
    let row = &row[..row.find("</tr>").unwrap()];
    let start = row.find(&format!("class=\"num {class}\">")).unwrap_or_else(|| panic!("{class} in {row}")) + class.len() + 13;
    &row[start..start + row[start..].find('<').unwrap()]
}

#[tokio::test]
async fn status_page_shows_live_numbers_in_a_real_browser() {
    let backend = Backend::start();
    // A second upstream, not routed (readiness does not wait for it), whose server is down.
    let dead = format!("127.0.0.1:{}", common::free_port());
    let extra = format!("[upstreams.spare]\nservers = [\"{dead}\"]\nhealth_check = {{ interval = \"100ms\", timeout = \"100ms\" }}\n");
    let gw = Gateway::start(&(extra + &config_for(&backend.addr(), &routes())));
    gw.wait_ready();
    traffic(&gw).await;
    gw.wait_metric("http_server_request_duration_seconds_count{method=\"GET\",route=\"slow\",status_class=\"2xx\"}", 1.0).await;
    gw.wait_metric(&format!("fastgate_upstream_healthy{{server=\"{dead}\",upstream=\"spare\"}}"), 0.0).await;

    let json: serde_json::Value = reqwest::get(gw.admin_url("/status.json")).await.unwrap().json().await.unwrap();
    let market = json["routes"].as_array().unwrap().iter().find(|r| r["name"] == "market").unwrap().clone();
    assert_eq!(market["requests_total"], 5.0);
    assert_eq!(market["cache_hit_ratio"], 0.75);
    assert_eq!(market["rate_limited_share"], 0.2);

    let dom = render(&gw.admin_url("/"), &["--dump-dom"]);
    assert!(dom.contains("data-loaded=\"1\""), "the page's script ran: {dom}");
    assert_eq!(cell(&dom, "market", "total"), "5");
    assert_eq!(cell(&dom, "market", "cache"), "75.0%");
    assert_eq!(cell(&dom, "market", "limited"), "20.0%");
    assert_eq!(cell(&dom, "trades", "errors"), "0.0%");
    assert!(cell(&dom, "slow", "p50").ends_with(" ms"));
    // Upstream health as rendered: the backend healthy, the spare's server down.
    let row = |addr: &str, state: &str, class: &str| format!("<td>{addr}</td><td class=\"{class}\">{state}</td>");
    assert!(dom.contains(&row(&backend.addr(), "healthy", "ok")), "{dom}");
    assert!(dom.contains(&row(&dead, "down", "bad")), "{dom}");
    assert!(dom.contains(&json["config"]["hash"].as_str().unwrap().to_string()));
}

/// A plot of the history's table (`table` is its id, `row` the route or upstream): its
/// first line's points (`None` where nothing was plotted), as the page wrote them.
fn plot_values(dom: &str, table: &str, row: &str, series: &str) -> Vec<Option<f64>> {
    let t = &dom[dom.find(&format!("id=\"{table}\"")).unwrap_or_else(|| panic!("table {table} in {dom}"))..];
    let r = &t[t.find(&format!("=\"{row}\"")).unwrap_or_else(|| panic!("row {row} in {t}"))..];
    let r = &r[..r.find("</tr>").unwrap()];
    let p = &r[r.find(&format!("data-series=\"{series}\"")).unwrap_or_else(|| panic!("plot {series} in {r}"))..];
    let v = &p[p.find("data-values=\"").unwrap() + 13..];
    v[..v.find('"').unwrap()].split(',').map(|x| x.parse().ok()).collect()
}

/// The history's plots under traffic, in a real browser: a route's request rate rises (a closed
/// 5-second bucket without traffic, then the bucket in progress with it), a route without
/// traffic stays flat, and a killed upstream shows down, its change marked on the plot.
#[tokio::test]
async fn status_history_plots_traffic_and_a_dead_upstream_in_a_real_browser() {
    let backend = Backend::start();
    let body = format!(
        "[upstreams.api]\nservers = [\"{}\"]\nhealth_check = {{ interval = \"100ms\", timeout = \"100ms\" }}\n{}",
        backend.addr(),
        routes()
    );
    let gw = Gateway::start(&body);
    gw.wait_ready();
    let history = || async { reqwest::get(gw.admin_url("/history.json")).await.unwrap().json::<serde_json::Value>().await.unwrap() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while history().await["points"].as_u64().unwrap() < 2 {
        assert!(Instant::now() < deadline, "no bucket closed in 10 s: {}", history().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let c = reqwest::Client::new();
    for _ in 0..6 {
        let r = c.post(gw.url("/api/trades")).json(&serde_json::json!({"symbol": "AAPL", "side": "buy", "qty": 1})).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }
    let addr = backend.addr();
    drop(backend);
    gw.wait_metric(&format!("fastgate_upstream_healthy{{server=\"{addr}\",upstream=\"api\"}}"), 0.0).await;

    let dom = render(&gw.admin_url("/"), &["--dump-dom"]);
    assert!(dom.contains("data-history=\"1\""), "the history's script ran: {dom}");
    let trades = plot_values(&dom, "history-routes", "trades", "rps");
    let (first, last) = (trades[0], *trades.last().unwrap());
    assert_eq!(first, Some(0.0), "the first bucket had no traffic: {trades:?}");
    assert!(last.unwrap() > 0.0, "the bucket in progress has: {trades:?}");
    let idle = plot_values(&dom, "history-routes", "slow", "rps");
    assert!(idle.iter().all(|v| v.is_none_or(|v| v == 0.0)), "{idle:?}");
    let healthy = plot_values(&dom, "history-upstreams", "api", "healthy");
    assert_eq!(healthy[0], Some(1.0), "healthy while it ran: {healthy:?}");
    assert_eq!(*healthy.last().unwrap(), Some(0.0), "down now: {healthy:?}");
    let row = &dom[dom.find("data-upstream=\"api\"").unwrap()..];
    assert!(row[..row.find("</tr>").unwrap()].contains("class=\"event down\""), "the change is marked: {row}");

    let h = history().await;
    let events = h["upstreams"][0]["events"].as_array().unwrap();
    assert_eq!((events.len(), &events[0]["server"], &events[0]["healthy"]), (1, &serde_json::json!(addr), &serde_json::json!(false)), "{h}");
}

#[test]
fn alert_rules_pass_promtool() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [vec!["check", "rules", "alerts.yml"], vec!["test", "rules", "alerts.test.yml"]] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("promtool (Debian package `prometheus`; scripts/setup installs it)");
        assert!(out.status.success(), "promtool {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}

/// Every metric the dashboard and the alert rules query is one the gateway exports.
#[tokio::test]
async fn dashboard_and_alerts_query_real_metrics() {
    let backend = Backend::start();
    let shed = "[[routes]]\nname = \"one\"\nmatch = { path_prefix = \"/debug/hold\" }\nupstream = \"api\"\nmax_concurrent = 1\n";
    let gw = Gateway::start(&config_for(&backend.addr(), &(routes() + shed)));
    traffic(&gw).await;
    // one request shed, so the shedding series exists too
    let c = reqwest::Client::new();
    let req = c.get(gw.url("/debug/hold/dash"));
    let held = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    backend.wait_holding("dash", 1).await;
    assert_eq!(c.get(gw.url("/debug/hold/dash")).send().await.unwrap().status(), 503);
    backend.release("dash").await;
    assert_eq!(held.await.unwrap().unwrap(), 200);
    // counted in the logging phase, after the answers: wait for the last series
    let m = gw.wait_metric("fastgate_shed_total{route=\"one\",scope=\"route\"}", 1.0).await;
    let exported: std::collections::HashSet<&str> = m
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let dash = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/fastgate-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml")).unwrap();
    exprs.push(rules);
    let mut checked = 0;
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !(word.starts_with("fastgate_") || word.starts_with("http_server_") || word.starts_with("process_")) {
                continue;
            }
            let base = word.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum");
            assert!(exported.contains(base), "`{word}` is queried but not exported");
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked}");
}

#[tokio::test]
async fn unusual_methods_fold_body_sizes_add_up_and_the_process_reports_itself() {
    let backend = Backend::start();
    // PURGE allowed through (the default method list refuses it with 501)
    let gw = Gateway::start_with(&config_for(&backend.addr(), common::CATCH_ALL), "methods = [\"GET\", \"PURGE\"]", &[]);
    let c = reqwest::Client::new();
    // a method outside the known set is folded into `_OTHER` (bounded labels)
    let r = c.request(reqwest::Method::from_bytes(b"PURGE").unwrap(), gw.url("/debug/echo")).send().await.unwrap();
    assert_eq!(r.status(), 405, "the backend's answer");
    let sizes: Vec<usize> = {
        let mut v = Vec::new();
        for n in [1, 5, 20] {
            let body = c.get(gw.url(&format!("/api/instruments?limit={n}"))).send().await.unwrap().bytes().await.unwrap();
            v.push(body.len());
        }
        v
    };
    let m = gw.wait_metric("http_server_request_duration_seconds_count{method=\"GET\",route=\"all\",status_class=\"2xx\"}", 3.0).await;
    assert_eq!(metric_value(&m, "http_server_request_duration_seconds_count{method=\"_OTHER\",route=\"all\",status_class=\"4xx\"}"), Some(1.0), "{m}");
    assert!(!m.contains("method=\"PURGE\""));
    // the response body histogram counts what the clients received
    let echo_len = metric_value(&m, "http_server_response_body_size_bytes_sum{route=\"all\"}").unwrap();
    assert!(echo_len >= sizes.iter().sum::<usize>() as f64, "{echo_len} < {sizes:?}");
    assert_eq!(metric_value(&m, "http_server_response_body_size_bytes_count{route=\"all\"}"), Some(4.0));
    // the process: started a moment ago; its CPU time is reported (in 10 ms ticks)
    let start = metric_value(&m, "process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(start <= now && now - start < 120.0, "started {}s ago", now - start);
    assert!(metric_value(&m, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0), "{m}");
    assert!(metric_value(&m, "process_resident_memory_bytes").unwrap() > 1e6);
}
