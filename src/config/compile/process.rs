//! The process-level sections: `[telemetry]`, `[cache]` and `[state]` (start-up only).

use super::super::raw::{RawCache, RawRedis, RawState, RawTelemetry, RawWarm};
use crate::model::diag::Diagnostics;
use crate::model::plan::{CacheSettings, OtlpProtocol, SamplerSpec, StateDef, TelemetryDef, WarmRequest};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// The three sections, with the one rule between them: the cache's `max_size` means nothing
/// when the cache lives in Redis.
pub(super) fn compile(cx: &mut Diagnostics<'_>, telemetry: RawTelemetry, cache: RawCache, state: RawState) -> (TelemetryDef, CacheSettings, StateDef) {
    let telemetry = compile_telemetry(cx, telemetry);
    let max_size_span = cache.max_size.as_ref().map(Spanned::span);
    let cache_settings = compile_cache_settings(cx, cache);
    let state = compile_state(cx, state);
    if let (StateDef::Redis(r), Some(span)) = (&state, max_size_span) {
        cx.warn(
            span,
            format!("with backend = \"redis\" the cache is shared in Redis, with an in-process tier of `[state.redis] local_cache_size` ({} MiB): `max_size` is not used", r.local_cache_size >> 20),
            "remove `[cache] max_size`, or size the local tier with local_cache_size",
        );
    }
    (telemetry, cache_settings, state)
}

fn compile_state(cx: &mut Diagnostics<'_>, raw: RawState) -> StateDef {
    let RawState { backend, redis } = raw;
    let backend_span = backend.as_ref().map(Spanned::span);
    match backend.as_ref().map(|b| b.get_ref().trim()) {
        None | Some("memory") => {
            if let (Some(r), Some(span)) = (&redis, backend_span) {
                cx.warn(span, "`[state.redis]` is set but `backend` is \"memory\": Redis is not used", format!("write backend = \"redis\" to share state through {}", r.get_ref().url.get_ref().0));
            }
            return StateDef::Memory;
        }
        Some("redis") => {}
        Some(other) => {
            return cx
                .error(backend_span.unwrap_or(0..0), format!("unknown state backend {other:?}"), "write \"memory\" (this process only, the default) or \"redis\" (shared by replicas; set [state.redis] url)")
                .unwrap_or_default();
        }
    }
    let Some(redis) = redis else {
        return cx
            .error(backend_span.unwrap_or(0..0), "backend = \"redis\" needs a server", "add [state.redis] with url = \"redis://127.0.0.1:6379\" (or \"${REDIS_URL}\")")
            .unwrap_or_default();
    };
    let RawRedis { url, pool_size, timeout, key_prefix, lease, precheck, local_cache_size, max_object_size, ca_file, cert, key } = redis.into_inner();
    let text = url.get_ref().0.trim().to_string();
    let scheme = text.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("redis" | "rediss" | "unix" | "redis+unix")) {
        cx.error::<()>(
            url.span(),
            format!("unsupported Redis URL {text:?}"),
            "write redis://host:port/db, rediss://host:port for TLS, or unix:///path/to/redis.sock; Cluster and Sentinel URLs are not supported (put one endpoint, e.g. a Sentinel-managed service address)",
        );
    }
    let tls = scheme == Some("rediss");
    for v in [&ca_file, &cert, &key].into_iter().flatten().filter(|_| !tls) {
        cx.error::<()>(v.span(), "TLS files for a Redis URL without TLS", "write rediss:// in `url`, or leave ca_file, cert and key out");
    }
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((PathBuf::from(c.into_inner().0), PathBuf::from(k.into_inner().0))),
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => cx.error(one.span(), "`cert` and `key` go together", "give both the client certificate and its key (PEM files)"),
    };
    let pool_size = match pool_size {
        Some(p) if *p.get_ref() == 0 || *p.get_ref() > 64 => cx.error(p.span(), "`pool_size` must be between 1 and 64", "each connection multiplexes every request; 2-4 is plenty").unwrap_or(2),
        Some(p) => *p.get_ref(),
        None => 2,
    };
    let timeout = cx.positive(timeout.as_ref(), "timeout", Duration::from_millis(50));
    let lease = match lease {
        Some(l) if *l.get_ref() == 0 || *l.get_ref() > 1000 => cx.error(l.span(), "`lease` must be between 1 and 1000", "1 asks Redis for every decision (exact); 10 takes ten tokens per round trip").unwrap_or(1),
        Some(l) => *l.get_ref(),
        None => 1,
    };
    StateDef::Redis(crate::model::plan::RedisDef {
        url: text,
        pool_size,
        timeout,
        key_prefix: key_prefix.map_or_else(|| "fastgate:".to_string(), Spanned::into_inner),
        lease,
        precheck: precheck.is_none_or(Spanned::into_inner),
        local_cache_size: local_cache_size.map_or(32 * 1024 * 1024, |s| s.get_ref().0),
        max_object_size: max_object_size.map_or(1024 * 1024, |s| s.get_ref().0 as usize),
        ca_file: ca_file.map(|c| PathBuf::from(c.into_inner().0)),
        client_cert,
    })
}

fn compile_cache_settings(cx: &mut Diagnostics<'_>, raw: RawCache) -> CacheSettings {
    let RawCache {
        max_size,
        max_object_size,
        lock_timeout,
        tag_header,
        warm,
        warm_interval,
        warm_ready_timeout,
    } = raw;
    let d = CacheSettings::default();
    let tag_header = match tag_header {
        None => d.tag_header.clone(),
        Some(t) => match http::HeaderName::from_bytes(t.get_ref().trim().to_ascii_lowercase().as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                cx.error::<()>(t.span(), format!("invalid header name {:?}", t.get_ref()), "write a field name, e.g. \"cache-tag\" (the default) or \"surrogate-key\"");
                d.tag_header.clone()
            }
        },
    };
    let lock_timeout = cx.positive(lock_timeout.as_ref(), "lock_timeout", d.lock_timeout);
    let warm_interval = cx.positive(warm_interval.as_ref(), "warm_interval", d.warm_interval);
    let mut requests = Vec::new();
    for w in warm {
        let RawWarm { path, headers } = w.into_inner();
        if !path.get_ref().starts_with('/') {
            cx.error::<()>(path.span(), format!("warm path {:?} must start with `/`", path.get_ref().0), "write a path on this gateway, e.g. \"/api/static/exchanges\"");
            continue;
        }
        let mut hs = Vec::new();
        for (k, v) in headers {
            match (http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()), http::HeaderValue::from_str(&v.get_ref().0)) {
                (Ok(k), Ok(v)) => hs.push((k, v)),
                _ => {
                    cx.error::<()>(v.span(), format!("invalid warm header {k:?}"), "header names are tokens and values visible ASCII, e.g. authorization = \"Bearer ...\"");
                }
            }
        }
        requests.push(WarmRequest { path: path.into_inner().0, headers: hs });
    }
    CacheSettings {
        max_size: max_size.map_or(d.max_size, |s| s.get_ref().0),
        max_object_size: max_object_size.map_or(d.max_object_size, |s| s.get_ref().0 as usize),
        lock_timeout,
        tag_header,
        warm: requests,
        warm_interval,
        warm_ready_timeout: warm_ready_timeout.map_or(d.warm_ready_timeout, |t| t.get_ref().0),
    }
}

fn compile_telemetry(cx: &mut Diagnostics<'_>, t: RawTelemetry) -> TelemetryDef {
    let RawTelemetry {
        traces,
        endpoint,
        protocol,
        service_name,
        sampler,
        sampler_arg,
        resource_attributes,
        latency_buckets,
        ca_file,
    } = t;
    let latency_buckets = latency_buckets.and_then(|b| {
        let list = b.get_ref().clone();
        let increasing = list.windows(2).all(|w| w[0] < w[1]);
        if list.is_empty() || !increasing || list.iter().any(|v| v.is_nan() || *v <= 0.0) {
            return cx.error(b.span(), "`latency_buckets` must be positive and strictly increasing", "upper bounds in seconds, e.g. [0.005, 0.05, 0.5, 5.0]");
        }
        Some(list)
    });
    let protocol = protocol.and_then(|p| match OtlpProtocol::parse(p.get_ref()) {
        Some(proto) => Some(proto),
        None => cx.error(p.span(), format!("unsupported OTLP protocol {:?}", p.get_ref()), "use \"grpc\" or \"http/protobuf\""),
    });
    let sampler = sampler.and_then(|s| match SamplerSpec::parse(s.get_ref().trim(), sampler_arg.as_ref().map(|a| *a.get_ref())) {
        Ok(spec) => Some(spec),
        Err(e) => cx.error(
            s.span(),
            e,
            "use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
        ),
    });
    TelemetryDef {
        traces: traces.map(Spanned::into_inner),
        endpoint: endpoint.map(|e| e.into_inner().0),
        protocol,
        service_name: service_name.map(|s| s.into_inner().0),
        sampler,
        resource_attributes: resource_attributes.into_iter().map(|(k, v)| (k, v.into_inner().0)).collect(),
        latency_buckets,
        ca_file: ca_file.map(|f| PathBuf::from(f.into_inner().0)),
    }
}
