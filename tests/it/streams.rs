//! WebSocket upgrades and server-sent events through the gateway: both directions, event by
//! event, and not cut by the per-request timeout meant for ordinary calls.

use crate::common;

use common::{config_for, Backend, Gateway};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Routes with a deliberately short ordinary timeout, so a stream outliving it proves streams
/// are exempt.
fn routes() -> String {
    r#"
[defaults]
timeout = "400ms"

[[routes]]
name = "ws"
match = { path = "/ws/prices" }
upstream = "api"
streaming = true

[[routes]]
name = "all"
match = { path_prefix = "/" }
upstream = "api"
"#
    .to_string()
}

#[tokio::test]
async fn websocket_echo_and_server_push_through_the_gateway() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &routes()));
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws/prices", gw.addr()))
        .await
        .expect("websocket handshake through the gateway");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));

    ws.send(Message::text("hello")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.to_text().unwrap(), "echo:hello");

    // Idle for longer than the ordinary timeout: the upgraded connection must survive.
    tokio::time::sleep(Duration::from_millis(700)).await;
    ws.send(Message::text("subscribe aapl")).await.unwrap();
    for _ in 0..3 {
        let msg = ws.next().await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        assert_eq!(v["symbol"], "AAPL");
    }
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "echo:again");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &routes()));
    // 6 events 250 ms apart: 1.25 s in all, three times the route's 400 ms timeout.
    let started = Instant::now();
    let resp = reqwest::get(gw.url("/api/stream/prices?count=6&interval=0.25")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            assert!(event.contains("event: price"), "{event}");
            arrivals.push(started.elapsed());
        }
    }
    assert_eq!(arrivals.len(), 6, "all events arrived");
    // Streamed, not buffered: the first event came long before the last.
    let spread = arrivals[5] - arrivals[0];
    assert!(spread >= Duration::from_millis(1000), "events bunched together: {arrivals:?}");
    for pair in arrivals.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(150), "{arrivals:?}");
    }
}

#[tokio::test]
async fn ordinary_requests_still_time_out_on_the_same_gateway() {
    let backend = Backend::start();
    let gw = Gateway::start(&config_for(&backend.addr(), &routes()));
    let r = reqwest::get(gw.url("/api/slow?seconds=2")).await.unwrap();
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn an_idle_stream_is_closed_after_stream_idle_timeout() {
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"ws\"\nmatch = { path = \"/ws/prices\" }\nupstream = \"api\"\nstreaming = true\nstream_idle_timeout = \"500ms\"\n";
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/prices", gw.addr())).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), "echo:hi");
    // nothing flows for longer than the idle limit: the gateway ends the tunnel, not before
    let idle_since = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "an idle WebSocket outlived stream_idle_timeout");
    let idle = idle_since.elapsed();
    assert!(idle >= Duration::from_millis(450), "closed after {idle:?}, before the 500 ms idle limit");
}

#[tokio::test]
async fn a_streaming_route_passes_a_long_chunked_download_row_by_row() {
    let backend = Backend::start();
    let routes = "[defaults]\ntimeout = \"400ms\"\n\n[[routes]]\nname = \"export\"\nmatch = { path = \"/api/export\" }\nupstream = \"api\"\nstreaming = true\n\n\
                  [[routes]]\nname = \"other\"\nmatch = { path_prefix = \"/\" }\nupstream = \"api\"\n";
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    // NDJSON (not an event stream), 6 rows 200 ms apart: three times the 400 ms timeout
    let started = Instant::now();
    let resp = reqwest::get(gw.url("/api/export?rows=6&delay=0.2")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let (mut buf, mut arrivals) = (String::new(), Vec::new());
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.expect("not cut by the timeout")).unwrap());
        while let Some(end) = buf.find('\n') {
            let row: String = buf.drain(..=end).collect();
            assert!(serde_json::from_str::<serde_json::Value>(row.trim()).is_ok(), "{row}");
            arrivals.push(started.elapsed());
        }
    }
    assert_eq!(arrivals.len(), 6);
    assert!(arrivals[5] - arrivals[0] >= Duration::from_millis(800), "rows bunched: {arrivals:?}");
    // the same download on a route that does not stream is cut at its timeout
    let routes_plain = "[defaults]\ntimeout = \"400ms\"\n\n[[routes]]\nname = \"export\"\nmatch = { path = \"/api/export\" }\nupstream = \"api\"\n";
    let gw = Gateway::start(&config_for(&backend.addr(), routes_plain));
    let resp = reqwest::get(gw.url("/api/export?rows=6&delay=0.2")).await.unwrap();
    let mut stream = resp.bytes_stream();
    let mut cut = false;
    while let Some(chunk) = stream.next().await {
        if chunk.is_err() {
            cut = true;
            break;
        }
    }
    assert!(cut, "a non-streaming route's total timeout cuts a long body");
}

#[tokio::test]
async fn a_websocket_on_a_route_without_streaming_works_and_idles_out() {
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"all\"\nmatch = { path_prefix = \"/\" }\nupstream = \"api\"\ntimeout = \"300ms\"\nstream_idle_timeout = \"800ms\"\n";
    let gw = Gateway::start(&config_for(&backend.addr(), routes));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/prices", gw.addr())).await.unwrap();
    // outlives the route's 300 ms timeout: an upgrade is a stream
    let mut idle_since = Instant::now();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().to_text().unwrap(), format!("echo:m{i}"));
        idle_since = Instant::now();
    }
    // and idles out after stream_idle_timeout of silence
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok());
    assert!(idle_since.elapsed() >= Duration::from_millis(700), "{:?}", idle_since.elapsed());
}
