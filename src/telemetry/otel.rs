//! OTLP traces: one server span per request, child spans for the upstream exchange, W3C trace
//! context read from the client and injected into the upstream request.
//!
//! Off unless configured (`[telemetry]` or the standard `OTEL_*` variables). Spans are exported
//! in batches from a dedicated one-thread tokio runtime, so export never runs on, or waits for,
//! a proxy thread; when the collector is unreachable, spans are dropped and counted.

use crate::model::plan::{OtlpProtocol, SamplerSpec, TelemetryDef};
use crate::telemetry::Metrics;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pingora::http::RequestHeader;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Trace settings after merging `[telemetry]` over the `OTEL_*` environment.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    pub service_name: Option<String>,
    /// `None`: the SDK reads `OTEL_TRACES_SAMPLER` / `_ARG` (default parent-based, always on).
    pub sampler: Option<SamplerSpec>,
    pub resource_attributes: Vec<(String, String)>,
    /// Extra CA bundle for an `https://` collector (`ca_file`, else
    /// `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`), trusted beside the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key for a collector that asks for one
    /// (`OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE` and `_CLIENT_KEY`).
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A trace-specific `OTEL_EXPORTER_OTLP_TRACES_*` variable, else the general one.
fn otlp_env(suffix: &str) -> Option<String> {
    env_nonempty(&format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}")).or_else(|| env_nonempty(&format!("OTEL_EXPORTER_OTLP_{suffix}")))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl TraceSettings {
    /// `[telemetry]` over the standard variables; `None` when tracing is off. The file wins
    /// where both say something.
    pub fn resolve(def: &TelemetryDef) -> Option<Self> {
        let env_endpoint = env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if !def.traces.unwrap_or(def.endpoint.is_some() || env_endpoint.is_some()) {
            return None;
        }
        let protocol = def.protocol.unwrap_or_else(|| {
            let env = env_nonempty("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_PROTOCOL"));
            match env {
                None => OtlpProtocol::Grpc,
                Some(p) => OtlpProtocol::parse(&p).unwrap_or_else(|| {
                    tracing::warn!(protocol = %p, "unsupported OTLP protocol in OTEL_EXPORTER_OTLP_PROTOCOL; using grpc");
                    OtlpProtocol::Grpc
                }),
            }
        });
        Some(TraceSettings {
            endpoint: def.endpoint.clone(),
            protocol,
            service_name: def.service_name.clone(),
            sampler: def.sampler.clone(),
            resource_attributes: def.resource_attributes.clone(),
            ca_file: def.ca_file.clone().or_else(|| otlp_env("CERTIFICATE").map(Into::into)),
            client_cert: otlp_env("CLIENT_CERTIFICATE").zip(otlp_env("CLIENT_KEY")).map(|(c, k)| (c.into(), k.into())),
        })
    }
}

fn build_sampler(spec: &SamplerSpec) -> Sampler {
    match *spec {
        SamplerSpec::AlwaysOn => Sampler::AlwaysOn,
        SamplerSpec::AlwaysOff => Sampler::AlwaysOff,
        SamplerSpec::Ratio(r) => Sampler::TraceIdRatioBased(r),
        SamplerSpec::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerSpec::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerSpec::ParentBasedRatio(r) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("cannot start the span export runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("OTLP TLS: {path}: {why}")]
    Tls { path: std::path::PathBuf, why: String },
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, OtelError> {
    std::fs::read(path).map_err(|e| OtelError::Tls { path: path.to_path_buf(), why: e.to_string() })
}

impl TraceSettings {
    /// The endpoint the exporter will use: the file's, else the standard variables'.
    fn effective_endpoint(&self) -> Option<String> {
        self.endpoint.clone().or_else(|| otlp_env("ENDPOINT"))
    }

    fn is_https(&self) -> bool {
        self.effective_endpoint().is_some_and(|e| e.trim_start().to_ascii_lowercase().starts_with("https://"))
    }

    /// gRPC over TLS: the system roots plus `ca_file`, and a client identity if configured.
    fn tonic_tls(&self) -> Result<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig, OtelError> {
        use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca)?));
        }
        if let Some((cert, key)) = &self.client_cert {
            tls = tls.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
        }
        Ok(tls)
    }

    /// The HTTP client for http/protobuf: the system roots plus `ca_file`.
    fn http_client(&self) -> Result<reqwest::Client, OtelError> {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = &self.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read_pem(ca)?).map_err(|e| OtelError::Tls { path: ca.clone(), why: e.to_string() })?;
            b = b.tls_certs_merge(certs);
        }
        if let Some((cert, key)) = &self.client_cert {
            let mut pem = read_pem(cert)?;
            pem.extend_from_slice(&read_pem(key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| OtelError::Tls { path: cert.clone(), why: e.to_string() })?;
            b = b.identity(id);
        }
        b.build().map_err(|e| OtelError::Exporter(e.to_string()))
    }
}

/// The tracer and what keeps its exporter alive.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    // Owns the export runtime: dropped last, after the provider has flushed.
    _runtime: tokio::runtime::Runtime,
}

/// Counts failed exports, then hands the batch to the real exporter.
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CountingExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingExporter").field("inner", &self.inner).finish()
    }
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.metrics.otlp_export_failed(n);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl Tracing {
    pub fn start(s: &TraceSettings, metrics: Arc<Metrics>) -> Result<Self, OtelError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fastgate-otlp")
            .enable_all()
            .build()?;
        let _guard = runtime.enter();
        let exporter = match s.protocol {
            OtlpProtocol::Grpc => {
                use opentelemetry_otlp::WithTonicConfig;
                let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(e) = &s.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if s.is_https() {
                    b = b.with_tls_config(s.tonic_tls()?);
                }
                b.build()
            }
            OtlpProtocol::HttpProtobuf => {
                use opentelemetry_otlp::WithHttpConfig;
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(s.http_client()?)
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(e) = &s.endpoint {
                    // A base URL, like OTEL_EXPORTER_OTLP_ENDPOINT: the signal path is ours to add.
                    b = b.with_endpoint(format!("{}/v1/traces", e.trim_end_matches('/')));
                }
                b.with_timeout(Duration::from_secs(10)).build()
            }
        }
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
        let exporter = CountingExporter { inner: exporter, metrics };
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();

        let mut resource = Resource::builder();
        if let Some(name) = &s.service_name {
            resource = resource.with_service_name(name.clone());
        } else if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("fastgate");
        }
        resource = resource.with_attributes(
            s.resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
        let mut builder = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build());
        if let Some(sampler) = &s.sampler {
            builder = builder.with_sampler(build_sampler(sampler));
        }
        let provider = builder.build();
        let tracer = provider.tracer("fastgate");
        drop(_guard);
        Ok(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            _runtime: runtime,
        })
    }

    /// Starts the server span of a request, continuing the client's trace if it sent one.
    /// Attributes are only built for spans the sampler records: an unsampled request costs a
    /// context extraction and an id, not a dozen string copies.
    pub fn start_request(&self, req: &RequestHeader, client: Option<IpAddr>) -> RequestTrace {
        let parent = self.propagator.extract(&HeaderExtractor(req));
        let span = self
            .tracer
            .span_builder(req.method.as_str().to_string())
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        let recording = cx.span().is_recording();
        if recording {
            let span = cx.span();
            span.set_attribute(KeyValue::new("http.request.method", req.method.as_str().to_string()));
            span.set_attribute(KeyValue::new("url.path", req.uri.path().to_string()));
            if let Some(q) = req.uri.query() {
                span.set_attribute(KeyValue::new("url.query", q.to_string()));
            }
            if let Some(host) = crate::model::matcher::request_host(req) {
                span.set_attribute(KeyValue::new("server.address", host.to_string()));
            }
            if let Some(ip) = client {
                span.set_attribute(KeyValue::new("client.address", ip.to_string()));
            }
            if let Some(ua) = req.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
                span.set_attribute(KeyValue::new("user_agent.original", ua.to_string()));
            }
        }
        RequestTrace {
            cx,
            upstream: None,
            recording,
        }
    }

    /// A child span of the request's server span.
    fn child(&self, rt: &RequestTrace, name: &'static str, kind: SpanKind, attrs: Vec<KeyValue>) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &rt.cx);
        rt.cx.with_span(span)
    }

    /// Starts the upstream (client) span and writes its trace context into the upstream request.
    pub fn start_upstream(&self, rt: &mut RequestTrace, req: &mut RequestHeader, server: Option<SocketAddr>, route: &str) {
        if !rt.recording {
            // Unsampled: no child span, but the backend still learns the trace and the flag.
            inject_unsampled(&rt.cx, &mut HeaderInjector(req), &self.propagator);
            return;
        }
        let server = server.map(|a| a.to_string()).unwrap_or_default();
        let server = server.as_str();
        let mut attrs = vec![
            KeyValue::new("http.request.method", req.method.as_str().to_string()),
            KeyValue::new("server.address", server.to_string()),
            KeyValue::new("http.route", route.to_string()),
        ];
        if let Some((host, port)) = server.rsplit_once(':') {
            attrs[1] = KeyValue::new("server.address", host.to_string());
            if let Ok(p) = port.parse::<i64>() {
                attrs.push(KeyValue::new("server.port", p));
            }
        }
        let cx = self.child(rt, "upstream", SpanKind::Client, attrs);
        self.propagator.inject_context(&cx, &mut HeaderInjector(req));
        rt.upstream = Some(cx);
    }

    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

/// The spans of one request.
pub struct RequestTrace {
    cx: Context,
    upstream: Option<Context>,
    /// The sampler records this trace: worth building names and attributes for.
    recording: bool,
}

impl RequestTrace {
    /// `http.route` is the route's path template when it has one (bounded, as the
    /// semantic conventions want), else its name; `fastgate.route` is always the name.
    pub fn set_route(&self, name: &str, template: Option<&str>, method: &http::Method) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        let route = template.unwrap_or(name);
        span.update_name(format!("{method} {route}"));
        span.set_attribute(KeyValue::new("http.route", route.to_string()));
        span.set_attribute(KeyValue::new("fastgate.route", name.to_string()));
    }

    /// A decision the gateway took (rate limit, cache, compression), as a span event.
    pub fn event(&self, name: &'static str, key: &'static str, value: &'static str) {
        if self.recording {
            self.cx.span().add_event(name, vec![KeyValue::new(key, value)]);
        }
    }

    /// The trace this request belongs to (the client's, or a new one), for the access line.
    pub fn trace_id(&self) -> Option<String> {
        let sc = self.cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Upstream response header received.
    pub fn upstream_status(&self, status: u16) {
        if let Some(cx) = &self.upstream {
            cx.span().set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        }
    }

    pub fn finish(self, status: u16, error: Option<&str>) {
        if !self.recording {
            return;
        }
        if let Some(cx) = &self.upstream {
            let span = cx.span();
            if let Some(e) = error {
                span.set_status(Status::error(e.to_string()));
            }
            span.end();
        }
        let span = self.cx.span();
        if status > 0 {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        }
        if status >= 500 || (status == 0 && error.is_some()) {
            span.set_status(Status::error(error.unwrap_or("server error").to_string()));
            if let Some(e) = error {
                span.set_attribute(KeyValue::new("error.type", e.to_string()));
            }
        }
        span.end();
    }
}

struct HeaderExtractor<'a>(&'a RequestHeader);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.headers.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.headers.keys().map(|k| k.as_str()).collect()
    }
}

/// `traceparent` for the common case of an unsampled request with no `tracestate`: the same
/// bytes the W3C propagator writes (a test holds them equal), without its `format!` of three
/// hex fields, which was a third of an unsampled request's tracing cost. Anything else goes
/// through the propagator.
fn inject_unsampled(cx: &Context, injector: &mut HeaderInjector<'_>, propagator: &TraceContextPropagator) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() || !sc.trace_state().header().is_empty() {
        propagator.inject_context(cx, injector);
        return;
    }
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let ok = hex::encode_to_slice(sc.trace_id().to_bytes(), &mut buf[3..35]).is_ok()
        && hex::encode_to_slice(sc.span_id().to_bytes(), &mut buf[36..52]).is_ok()
        && hex::encode_to_slice([sc.trace_flags().to_u8()], &mut buf[53..55]).is_ok();
    match std::str::from_utf8(&buf) {
        Ok(v) if ok => injector.set("traceparent", v.to_string()),
        _ => propagator.inject_context(cx, injector),
    }
}

struct HeaderInjector<'a>(&'a mut RequestHeader);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The W3C propagator writes an empty `tracestate` when there is none: skip it.
        if value.is_empty() {
            if self.0.headers.contains_key(key) {
                self.0.remove_header(key);
            }
            return;
        }
        // Static names for the W3C fields: pingora parses and copies any other name.
        let _ = match key {
            "traceparent" => self.0.insert_header("traceparent", value),
            "tracestate" => self.0.insert_header("tracestate", value),
            _ => match http::HeaderName::from_bytes(key.as_bytes()) {
                Ok(name) => self.0.insert_header(name, value),
                Err(_) => return,
            },
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn header_after(inject: impl FnOnce(&mut HeaderInjector<'_>)) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        inject(&mut HeaderInjector(&mut req));
        req
    }

    #[test]
    fn unsampled_traceparent_matches_the_propagator() {
        let propagator = TraceContextPropagator::new();
        let state = TraceState::from_key_value([("vendor", "v1")]).unwrap();
        for (flags, state) in [(TraceFlags::NOT_SAMPLED, TraceState::NONE), (TraceFlags::SAMPLED, TraceState::NONE), (TraceFlags::NOT_SAMPLED, state)] {
            let sc = SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                flags,
                true,
                state,
            );
            let cx = Context::new().with_remote_span_context(sc);
            let ours = header_after(|i| inject_unsampled(&cx, i, &propagator));
            let theirs = header_after(|i| propagator.inject_context(&cx, i));
            for name in ["traceparent", "tracestate"] {
                assert_eq!(ours.headers.get(name), theirs.headers.get(name), "{name}");
            }
            assert!(ours.headers.get("traceparent").is_some());
        }
        // an invalid context writes nothing, as with the propagator
        let none = header_after(|i| inject_unsampled(&Context::new(), i, &propagator));
        assert!(none.headers.get("traceparent").is_none());
    }
}
