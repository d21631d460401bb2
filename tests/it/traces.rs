//! OTLP traces through real receivers: a gRPC and an HTTP/protobuf OTLP collector built from
//! the official opentelemetry-proto definitions, started by the test. The backend, in one test,
//! runs under OpenTelemetry's FastAPI instrumentation exporting to the same receiver.

use crate::common;

use common::{config_for, Backend, Gateway, CATCH_ALL};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
struct RecSpan {
    service: String,
    resource: HashMap<String, String>,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    status_code: i32,
    attrs: HashMap<String, String>,
    events: Vec<String>,
}

const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

type Store = Arc<Mutex<Vec<RecSpan>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn any_to_string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn collect(store: &Store, req: ExportTraceServiceRequest) {
    let mut out = store.lock().unwrap();
    for rs in req.resource_spans {
        let resource: HashMap<String, String> = rs
            .resource
            .as_ref()
            .map(|r| r.attributes.iter().map(|a| (a.key.clone(), any_to_string(&a.value))).collect())
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(RecSpan {
                    service: service.clone(),
                    resource: resource.clone(),
                    name: s.name.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    kind: s.kind,
                    status_code: s.status.as_ref().map_or(0, |st| st.code),
                    attrs: s.attributes.iter().map(|a| (a.key.clone(), any_to_string(&a.value))).collect(),
                    events: s.events.iter().map(|e| e.name.clone()).collect(),
                });
            }
        }
    }
}

#[derive(Clone)]
struct GrpcReceiver(Store);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A gRPC and an HTTP OTLP receiver sharing one span store.
struct Receiver {
    grpc: String,
    http: String,
    store: Store,
}

impl Receiver {
    async fn start() -> Receiver {
        let store: Store = Arc::default();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let svc = TraceServiceServer::new(GrpcReceiver(store.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
                .await
                .unwrap();
        });
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let st = store.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = http.accept().await else { return };
                tokio::spawn(serve_http(conn, st.clone()));
            }
        });
        Receiver {
            grpc: format!("http://{grpc_addr}"),
            http: format!("http://{http_addr}"),
            store,
        }
    }

    fn spans(&self) -> Vec<RecSpan> {
        self.store.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the received spans.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[RecSpan]) -> bool) -> Vec<RecSpan> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "never received {what}; got {spans:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Receiver {
    /// The same two receivers behind TLS, serving `leaf` (a hosted collector's set-up).
    async fn start_tls(leaf: &common::pki::Leaf) -> Receiver {
        let store: Store = Arc::default();
        let (cert, key) = (std::fs::read(&leaf.cert).unwrap(), std::fs::read(&leaf.key).unwrap());
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let svc = TraceServiceServer::new(GrpcReceiver(store.clone()));
        let identity = tonic::transport::Identity::from_pem(&cert, &key);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
                .await
                .unwrap();
        });
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&cert).map(Result::unwrap).collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key).unwrap();
        let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let st = store.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = http.accept().await else { return };
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(conn).await {
                        serve_http(tls, st).await;
                    }
                });
            }
        });
        Receiver { grpc: format!("https://{grpc_addr}"), http: format!("https://{http_addr}"), store }
    }
}

/// OTLP/HTTP: `POST /v1/traces` with a protobuf body, keep-alive.
async fn serve_http(mut conn: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, store: Store) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
        if head.starts_with("post /v1/traces")
            && let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) {
                collect(&store, req);
            }
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if conn.write_all(resp).await.is_err() {
            return;
        }
    }
}

fn telemetry(endpoint: &str, protocol: &str) -> String {
    format!(
        "[telemetry]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\nservice_name = \"fastgate-test\"\nsampler = \"parentbased_always_on\"\nresource_attributes = {{ \"deployment.environment\" = \"test\" }}\n\n"
    )
}

const FAST_EXPORT: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "100")];

fn header(echo: &serde_json::Value, name: &str) -> Option<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
}

#[tokio::test]
async fn grpc_export_continues_the_client_trace_and_propagates_to_the_backend() {
    let rx = Receiver::start().await;
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"echo\"\nmatch = { path_prefix = \"/debug/echo\" }\nupstream = \"api\"\nrate_limit = [{ rate = \"100/s\" }]\n"
        .to_string()
        + CATCH_ALL;
    let body = telemetry(&rx.grpc, "grpc") + &config_for(&backend.addr(), &routes);
    let gw = Gateway::start_with(&body, "", FAST_EXPORT);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = reqwest::Client::new()
        .get(gw.url("/debug/echo/hello?x=1"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .header("User-Agent", "trace-test/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await.unwrap();
    let sent = header(&echo, "traceparent").expect("traceparent reached the backend");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], trace_id, "same trace");
    assert_eq!(parts[3], "01", "sampled flag kept");
    assert!(header(&echo, "tracestate").is_none(), "no empty tracestate");

    let spans = rx.wait_for("server and upstream spans", |s| s.len() >= 2).await;
    let server = spans.iter().find(|s| s.kind == KIND_SERVER).unwrap();
    let upstream = spans.iter().find(|s| s.kind == KIND_CLIENT).unwrap();
    assert_eq!(server.service, "fastgate-test");
    assert_eq!(server.resource["deployment.environment"], "test");
    assert_eq!(server.name, "GET echo");
    assert_eq!(server.trace_id, trace_id);
    assert_eq!(server.parent_span_id, client_span);
    assert_eq!(server.attrs["http.request.method"], "GET");
    assert_eq!(server.attrs["http.route"], "echo");
    assert_eq!(server.attrs["url.path"], "/debug/echo/hello");
    assert_eq!(server.attrs["http.response.status_code"], "200");
    assert_eq!(server.attrs["client.address"], "127.0.0.1");
    assert_eq!(server.attrs["user_agent.original"], "trace-test/1.0");
    assert!(server.events.contains(&"rate_limit".to_string()), "{:?}", server.events);
    assert_ne!(server.status_code, STATUS_ERROR);
    assert_eq!(upstream.trace_id, trace_id);
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(upstream.attrs["server.address"], "127.0.0.1");
    assert_eq!(upstream.attrs["server.port"], backend.port.to_string());
    // the backend's parent is the gateway's upstream span
    assert_eq!(parts[2], upstream.span_id);

    // a 5xx from the gateway marks the server span as an error
    let dead = Gateway::start_with(
        &(telemetry(&rx.grpc, "grpc") + &config_for(&format!("127.0.0.1:{}", common::free_port()), CATCH_ALL)),
        "",
        FAST_EXPORT,
    );
    assert_eq!(reqwest::get(dead.url("/x")).await.unwrap().status(), 502);
    let spans = rx
        .wait_for("an error span", |s| s.iter().any(|x| x.kind == KIND_SERVER && x.attrs.get("http.response.status_code").map(String::as_str) == Some("502")))
        .await;
    let failed = spans.iter().find(|x| x.kind == KIND_SERVER && x.attrs["http.response.status_code"] == "502").unwrap();
    assert_eq!(failed.status_code, STATUS_ERROR);
}

#[tokio::test]
async fn unsampled_parents_are_honoured() {
    let rx = Receiver::start().await;
    let backend = Backend::start();
    let gw = Gateway::start_with(&(telemetry(&rx.grpc, "grpc") + &config_for(&backend.addr(), CATCH_ALL)), "", FAST_EXPORT);
    let c = reqwest::Client::new();
    let unsampled = "11111111111111111111111111111111";
    let r = c
        .get(gw.url("/debug/echo"))
        .header("traceparent", format!("00-{unsampled}-2222222222222222-00"))
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = r.json().await.unwrap();
    let sent = header(&echo, "traceparent").unwrap();
    assert!(sent.starts_with(&format!("00-{unsampled}-")) && sent.ends_with("-00"), "{sent}");
    // a sampled request afterwards proves the exporter ran
    c.get(gw.url("/debug/echo")).send().await.unwrap();
    let spans = rx.wait_for("the sampled request", |s| s.iter().any(|x| x.kind == KIND_SERVER)).await;
    assert!(spans.iter().all(|s| s.trace_id != unsampled), "an unsampled trace was exported");
}

#[tokio::test]
async fn http_protobuf_export() {
    let rx = Receiver::start().await;
    let backend = Backend::start();
    let gw = Gateway::start_with(&(telemetry(&rx.http, "http/protobuf") + &config_for(&backend.addr(), CATCH_ALL)), "", FAST_EXPORT);
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200);
    let spans = rx.wait_for("spans over OTLP/HTTP", |s| s.iter().any(|x| x.kind == KIND_SERVER)).await;
    let server = spans.iter().find(|s| s.kind == KIND_SERVER).unwrap();
    assert_eq!(server.name, "GET all");
    assert_eq!(server.attrs["url.path"], "/api/market/AAPL");
}

#[tokio::test]
async fn env_variables_configure_tracing_without_a_telemetry_table() {
    let rx = Receiver::start().await;
    let backend = Backend::start();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.grpc.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SERVICE_NAME", "from-env"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "", &env);
    reqwest::get(gw.url("/api/market/AAPL")).await.unwrap();
    let spans = rx.wait_for("a span", |s| !s.is_empty()).await;
    assert_eq!(spans[0].service, "from-env");
}

#[tokio::test]
async fn backend_spans_join_the_gateway_trace() {
    let rx = Receiver::start().await;
    let backend = Backend::start_instrumented(&[
        ("OTEL_SERVICE_NAME", "example-backend"),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_METRICS_EXPORTER", "none"),
        ("OTEL_LOGS_EXPORTER", "none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.http.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let gw = Gateway::start_with(&(telemetry(&rx.grpc, "grpc") + &config_for(&backend.addr(), CATCH_ALL)), "", FAST_EXPORT);
    assert_eq!(reqwest::get(gw.url("/api/market/AAPL")).await.unwrap().status(), 200);

    let spans = rx
        .wait_for("gateway and backend spans", |s| {
            s.iter().any(|x| x.service == "example-backend" && x.kind == KIND_SERVER && x.attrs.get("url.path").or(x.attrs.get("http.target")).is_some_and(|p| p.contains("/api/market/AAPL")))
                && s.iter().any(|x| x.service == "fastgate-test" && x.kind == KIND_CLIENT)
        })
        .await;
    let upstream = spans.iter().find(|x| x.service == "fastgate-test" && x.kind == KIND_CLIENT).unwrap();
    let gw_server = spans.iter().find(|x| x.service == "fastgate-test" && x.kind == KIND_SERVER).unwrap();
    let backend_server = spans
        .iter()
        .find(|x| x.service == "example-backend" && x.kind == KIND_SERVER && x.trace_id == upstream.trace_id)
        .expect("a backend span in the gateway's trace");
    assert_eq!(backend_server.parent_span_id, upstream.span_id, "backend span is a child of the upstream span");
    assert_eq!(upstream.parent_span_id, gw_server.span_id);
    assert_eq!(gw_server.parent_span_id, "", "the gateway started the trace");
}

#[tokio::test]
async fn an_unreachable_collector_costs_requests_nothing() {
    let backend = Backend::start();
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let gw = Gateway::start_with(&(telemetry(&dead, "grpc") + &config_for(&backend.addr(), CATCH_ALL)), "", FAST_EXPORT);
    let c = reqwest::Client::new();
    let t = Instant::now();
    for _ in 0..50 {
        assert_eq!(c.get(gw.url("/api/market/AAPL")).send().await.unwrap().status(), 200);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = gw.metrics().await;
        if common::metric_value(&m, "fastgate_otlp_spans_dropped_total").is_some_and(|v| v > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "dropped spans never counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn query_tracestate_cache_and_compression_events_and_error_status() {
    let rx = Receiver::start().await;
    let backend = Backend::start();
    let routes = "[[routes]]\nname = \"cached\"\nmatch = { path_prefix = \"/api/static\" }\nupstream = \"api\"\ncache = { ttl = \"60s\" }\ncompress = { min_size = 10 }\n\n"
        .to_string()
        + CATCH_ALL;
    let gw = Gateway::start_with(&(telemetry(&rx.grpc, "grpc") + &config_for(&backend.addr(), &routes)), "", FAST_EXPORT);
    let c = reqwest::Client::new();
    // tracestate from the client reaches the backend with the trace
    let r = c
        .get(gw.url("/debug/echo?color=red"))
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .header("tracestate", "vendor=opaque,other=1")
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(header(&echo, "tracestate").as_deref(), Some("vendor=opaque,other=1"));
    // a cached and compressed response: its span has both events
    c.get(gw.url("/api/static/currencies")).header("Accept-Encoding", "gzip").send().await.unwrap();
    // a backend 500: the server span's status is an error
    assert_eq!(c.get(gw.url("/api/crash")).send().await.unwrap().status(), 500);
    let spans = rx.wait_for("three server spans", |s| s.iter().filter(|s| s.kind == KIND_SERVER).count() >= 3).await;
    let by_path = |p: &str| spans.iter().find(|s| s.kind == KIND_SERVER && s.attrs.get("url.path").map(String::as_str) == Some(p)).unwrap().clone();
    let echo_span = by_path("/debug/echo");
    assert_eq!(echo_span.attrs["url.query"], "color=red");
    assert_eq!(echo_span.trace_id, "0af7651916cd43dd8448eb211c80319c");
    let cached = by_path("/api/static/currencies");
    assert!(cached.events.contains(&"cache".to_string()) && cached.events.contains(&"compress".to_string()), "{:?}", cached.events);
    let crash = by_path("/api/crash");
    assert_eq!(crash.status_code, STATUS_ERROR);
    assert_eq!(crash.attrs["http.response.status_code"], "500");
    assert_ne!(echo_span.status_code, STATUS_ERROR);
}

#[tokio::test]
async fn sampler_ratio_from_the_file_and_from_the_environment() {
    let backend = Backend::start();
    let c = reqwest::Client::new();
    // ratio 0 in the file: nothing is exported, but the backend still gets a trace context
    let rx = Receiver::start().await;
    let body = format!("[telemetry]\nendpoint = \"{}\"\nprotocol = \"grpc\"\nsampler = \"traceidratio\"\nsampler_arg = 0.0\n\n{}", rx.grpc, config_for(&backend.addr(), CATCH_ALL));
    let gw = Gateway::start_with(&body, "", FAST_EXPORT);
    for _ in 0..20 {
        let echo: serde_json::Value = c.get(gw.url("/debug/echo")).send().await.unwrap().json().await.unwrap();
        assert!(header(&echo, "traceparent").unwrap().ends_with("-00"), "unsampled flag propagated");
    }
    // drained, which flushes the exporter: a span it had sampled would be at the receiver now
    // (dropped with SIGKILL, the batch would be lost and the check below prove nothing)
    let mut gw = gw;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()), Some(0), "{}", gw.log());
    assert!(rx.spans().is_empty(), "ratio 0 exported {} spans", rx.spans().len());
    // the same from OTEL_TRACES_SAMPLER / _ARG, with the endpoint and resource from the
    // standard variables: ratio 1 exports every request
    let rx2 = Receiver::start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx2.grpc.as_str()),
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.0"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team=payments,region=eu"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let gw = Gateway::start_with(&config_for(&backend.addr(), CATCH_ALL), "", &env);
    for _ in 0..5 {
        c.get(gw.url("/api/market/AAPL")).send().await.unwrap();
    }
    let spans = rx2.wait_for("five server spans", |s| s.iter().filter(|s| s.kind == KIND_SERVER).count() >= 5).await;
    assert_eq!(spans[0].resource["team"], "payments");
    assert_eq!(spans[0].resource["region"], "eu");
}

#[tokio::test]
async fn spans_reach_a_collector_over_tls_by_grpc_and_by_http() {
    let pki = common::pki::Pki::new("collector");
    let leaf = pki.issue("collector", &["127.0.0.1"]);
    let rx = Receiver::start_tls(&leaf).await;
    let backend = Backend::start();
    let ca = pki.ca().display().to_string();
    // gRPC: the CA from the file; http/protobuf: from the standard variable
    let grpc = format!("{}\nca_file = \"{ca}\"\n\n", telemetry(&rx.grpc, "grpc").trim_end());
    let by_grpc = Gateway::start_with(&(grpc + &config_for(&backend.addr(), CATCH_ALL)), "", FAST_EXPORT);
    let env = [FAST_EXPORT[0], ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str())];
    let by_http = Gateway::start_with(&(telemetry(&rx.http, "http/protobuf") + &config_for(&backend.addr(), CATCH_ALL)), "", &env);
    let http = reqwest::Client::new();
    for (gw, path) in [(&by_grpc, "/healthz?via=grpc"), (&by_http, "/healthz?via=http")] {
        assert_eq!(http.get(gw.url(path)).send().await.unwrap().status(), 200);
    }
    let spans = rx
        .wait_for("a server span from each gateway", |s| {
            s.iter().filter(|s| s.kind == KIND_SERVER && s.attrs.get("url.path").is_some_and(|p| p == "/healthz")).count() >= 2
        })
        .await;
    assert!(spans.iter().all(|s| s.service == "fastgate-test"));
    for gw in [&by_grpc, &by_http] {
        assert_eq!(common::metric_value(&gw.metrics().await, "fastgate_otlp_spans_dropped_total").unwrap_or(0.0), 0.0);
    }

    // without the CA, the collector's certificate is not trusted: spans are dropped and
    // counted, requests are not slowed
    let untrusting = Gateway::start_with(&(telemetry(&rx.http, "http/protobuf") + &config_for(&backend.addr(), CATCH_ALL)), "", FAST_EXPORT);
    assert_eq!(http.get(untrusting.url("/healthz?via=untrusted")).send().await.unwrap().status(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let failed = common::metric_value(&untrusting.metrics().await, "fastgate_otlp_spans_dropped_total").unwrap_or(0.0);
        if failed >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no export failure counted; log:\n{}", common::tail(&untrusting.log(), 10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!rx.spans().iter().any(|s| s.attrs.get("url.query").is_some_and(|q| q.contains("untrusted"))));
}
