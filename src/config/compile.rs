//! Raw config -> validated, compiled runtime. Every semantic problem is collected, with its
//! position, before anything is returned; nothing here runs per request.

use super::plan::{Plan, RouteDef, RouteTarget, ServerDef};
use super::raw::{RawCache, RawConfig, RawHealthCheck, RawMatch, RawRedis, RawRoute, RawServer, RawState, RawTelemetry, RawTls, RawUpstream, RawUpstreamTls, RawWarm};
use crate::model::diag::{suggest, Diagnostic, Diagnostics, Source};
use crate::model::matcher::{Matcher, PathMatch};
use crate::model::normalize::{normalize, EncodedSlash};
use crate::model::plan::{
    CacheSettings, CertSpec, HealthCheckSpec, OtlpProtocol, SamplerSpec, ServerSpec, Settings, StateDef, TelemetryDef, TlsListenDef,
    UpstreamDef, UpstreamTlsDef, WarmRequest,
};
use crate::model::template::{PathTemplate, TemplateError};
use crate::model::units::{EnvString, Size};
use crate::policy::forwarding::ForwardedFields;
use crate::policy::registry::Scope;
use crate::policy::server_limits::ServerLimits;
use crate::policy::{concurrency, PolicyDef, PolicyKeys};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Passive health: a server failing this many exchanges in a row is left out...
pub const DEFAULT_EJECT_AFTER: u32 = 3;
/// ...for this long (then it gets traffic again; one more failure ejects it again).
pub const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(10);
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// pingora's default is 128: with more requests in flight than that, every one past it
/// closes its upstream connection after use and the next opens a new one (bench scenario 11).
pub const DEFAULT_UPSTREAM_KEEPALIVE_POOL: usize = 1024;
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/fastgate-upgrade.sock";
const DEFAULT_IDLE: Duration = Duration::from_secs(60);
pub const DEFAULT_TLS_LISTEN: &str = "0.0.0.0:8443";
/// Upstream names are resolved again this often (and on every reload).
const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Compiles a parsed file into a plan, or every problem found in it.
pub fn compile(raw: RawConfig, src: &Source<'_>) -> Result<Plan, Vec<Diagnostic>> {
    let RawConfig {
        server,
        upstreams,
        defaults,
        routes,
        telemetry,
        cache,
        state,
    } = raw;
    let mut cx = Diagnostics::new(src);

    let mut server = server;
    let remove_request_headers = compile_removed_headers(&mut cx, std::mem::take(&mut server.remove_request_headers));
    let forwarded = match server.forwarded.take() {
        None => ForwardedFields::default(),
        Some(v) => ForwardedFields::parse(&v.get_ref().0).unwrap_or_else(|bad| {
            cx.error(
                v.span(),
                format!("unknown `forwarded` field {bad:?}"),
                "list fields among \"x-forwarded-for\", \"x-forwarded-proto\", \"x-forwarded-host\", \"x-real-ip\", \"forwarded\", or write \"x-forwarded\" (the three X-Forwarded-*), \"rfc7239\" (Forwarded) or \"both\"",
            )
            .unwrap_or_default()
        }),
    };
    let redirect = server.redirect_to_https.take();
    let resolver = server.resolver.take();
    let resolve_interval = server.resolve_interval.take();
    let tls = server.tls.take();
    let (settings, trusted_proxies, admin_token, limits) = compile_server(&mut cx, server);
    let (tls, certificates) = match tls {
        Some(t) => compile_tls(&mut cx, t),
        None => (None, Vec::new()),
    };
    let redirect_https = match (redirect, &tls) {
        (Some(r), None) if *r.get_ref() => cx.error(r.span(), "`redirect_to_https` without a `[server.tls]` listener", "add [server.tls] with listen and certificates"),
        (Some(r), Some(t)) if *r.get_ref() => Some(t.public_port),
        _ => None,
    };
    let resolver = resolver.and_then(|r| match r.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => cx.error(r.span(), format!("`resolver` is not an IP address and port: {:?}", r.get_ref().0), "write the DNS server's address, e.g. \"10.96.0.10:53\"; leave it out for the system resolver"),
    });
    let resolve_interval = cx.positive(resolve_interval.as_ref(), "resolve_interval", DEFAULT_RESOLVE_INTERVAL);
    let (upstreams, broken_upstreams) = compile_upstreams(&mut cx, upstreams);
    let defaults = defaults.policy;
    // `[defaults]` alone first: its errors are reported at its own lines, and once.
    PolicyDef::compile(&defaults, &mut cx, &Scope::default());
    let mut seen_names: HashSet<String> = HashSet::new();
    let mut compiled_routes = Vec::new();
    for route in &routes {
        if let Some(r) = compile_route(&mut cx, route, &defaults, (&upstreams, &broken_upstreams), &mut seen_names) {
            compiled_routes.push(r);
        }
    }

    for (i, (a, a_span)) in compiled_routes.iter().enumerate() {
        for (b, b_span) in compiled_routes.iter().skip(i + 1) {
            let (a, b): (&RouteDef, &RouteDef) = (a, b);
            if a.matcher == b.matcher {
                cx.error::<()>(
                    b_span.clone(),
                    format!("route `{}` matches exactly what route `{}` matches", b.name, a.name),
                    "remove one, or make their `match` differ",
                );
            } else if a.matcher.overlaps(&b.matcher) {
                let (line, _) = crate::model::diag::line_col(src.text, a_span.start);
                cx.warn(
                    b_span.clone(),
                    format!("route `{}` overlaps route `{}` (line {line}); the one written first wins", b.name, a.name),
                    "give them disjoint `methods`",
                );
            }
        }
    }

    // An empty or cut-short file (what a non-atomic write leaves for an instant) must not
    // become a gateway that answers every request with 404.
    let end = src.text.len()..src.text.len();
    if upstreams.is_empty() && routes.is_empty() {
        cx.error::<()>(
            end.clone(),
            "the file has no `[upstreams.NAME]` and no `[[routes]]`: every request would be answered 404",
            "an empty or truncated file is refused; replace a config atomically: write a new file beside it, then `mv` it over",
        );
    } else if routes.is_empty() {
        cx.error::<()>(
            end,
            "the file has no `[[routes]]`: every request would be answered 404 `no_route`",
            "add a route, e.g. [[routes]] name = \"all\" match = { path_prefix = \"/\" } upstream = \"app\"",
        );
    }
    let telemetry = compile_telemetry(&mut cx, telemetry);
    let max_size_span = cache.max_size.as_ref().map(Spanned::span);
    let cache_settings = compile_cache_settings(&mut cx, cache);
    let state = compile_state(&mut cx, state);
    if let (StateDef::Redis(r), Some(span)) = (&state, max_size_span) {
        cx.warn(
            span,
            format!("with backend = \"redis\" the cache is shared in Redis, with an in-process tier of `[state.redis] local_cache_size` ({} MiB): `max_size` is not used", r.local_cache_size >> 20),
            "remove `[cache] max_size`, or size the local tier with local_cache_size",
        );
    }
    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    let mut settings = settings.ok_or_else(Vec::new)?;
    settings.telemetry = telemetry;
    settings.cache = cache_settings;
    settings.tls = tls;
    settings.state = state;
    Ok(Plan {
        settings,
        server: ServerDef {
            trusted_proxies,
            remove_request_headers,
            forwarded,
            admin_token,
            limits,
            redirect_https,
            certificates,
            resolver,
            resolve_interval,
        },
        upstreams,
        routes: compiled_routes.into_iter().map(|(r, _)| r).collect(),
        hash: digest(src.text),
        warnings: cx.warnings,
    })
}

fn compile_removed_headers(cx: &mut Diagnostics<'_>, extra: Vec<Spanned<String>>) -> Vec<http::HeaderName> {
    let mut names: Vec<http::HeaderName> = crate::policy::forwarding::TARGET_REWRITING.iter().map(|n| http::HeaderName::from_static(n)).collect();
    for e in extra {
        match http::HeaderName::from_bytes(e.get_ref().trim().to_ascii_lowercase().as_bytes()) {
            Ok(n) if !names.contains(&n) => names.push(n),
            Ok(_) => {}
            Err(_) => {
                cx.error::<()>(e.span(), format!("invalid header name {:?}", e.get_ref()), "write a field name such as \"x-forwarded-prefix\"");
            }
        }
    }
    names
}

fn digest(text: &str) -> String {
    // FNV-1a: stable across builds and platforms, enough to tell two files apart in metrics.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn compile_server(
    cx: &mut Diagnostics<'_>,
    server: RawServer,
) -> (Option<Settings>, Vec<IpNet>, Option<String>, ServerLimits) {
    let RawServer {
        listen,
        admin_listen,
        admin_token,
        trusted_proxies,
        threads,
        shutdown_grace,
        max_uri_length,
        max_header_count,
        max_header_bytes,
        client_body_timeout,
        keepalive_timeout,
        header_timeout,
        max_connections,
        max_connections_per_client,
        probe_listen,
        upgrade_sock,
        upstream_keepalive_pool,
        access_log,
        remove_request_headers: _,
        forwarded: _,
        methods,
        encoded_slash,
        tls: _,
        redirect_to_https: _,
        resolver: _,
        resolve_interval: _,
    } = server;
    let d = ServerLimits::default();
    let at_least_one = |cx: &mut Diagnostics<'_>, v: Option<&Spanned<usize>>, key: &str, default: usize| match v {
        Some(n) if *n.get_ref() == 0 => cx
            .error(n.span(), format!("`{key}` must be at least 1"), format!("leave `{key}` out for the default, {default}"))
            .unwrap_or(default),
        Some(n) => *n.get_ref(),
        None => default,
    };
    let size = |v: Option<Spanned<Size>>| v.map(|s| Spanned::new(s.span(), s.get_ref().0 as usize));
    let limits = ServerLimits {
        max_uri_length: at_least_one(cx, size(max_uri_length).as_ref(), "max_uri_length", d.max_uri_length),
        max_header_count: at_least_one(cx, max_header_count.as_ref(), "max_header_count", d.max_header_count),
        max_header_bytes: at_least_one(cx, size(max_header_bytes).as_ref(), "max_header_bytes", d.max_header_bytes),
        client_body_timeout: cx.positive(client_body_timeout.as_ref(), "client_body_timeout", d.client_body_timeout),
        keepalive_timeout: cx.positive(keepalive_timeout.as_ref(), "keepalive_timeout", d.keepalive_timeout),
        header_timeout: cx.positive(header_timeout.as_ref(), "header_timeout", d.header_timeout),
        max_connections: at_least_one(cx, max_connections.as_ref(), "max_connections", d.max_connections),
        max_connections_per_client: at_least_one(cx, max_connections_per_client.as_ref(), "max_connections_per_client", d.max_connections_per_client),
        access_log: access_log.is_none_or(Spanned::into_inner),
        methods: d.methods.clone(),
        allow: d.allow.clone(),
        encoded_slash: match encoded_slash.as_ref().map(|v| (v.span(), v.get_ref().as_str())) {
            None | Some((_, "reject")) => EncodedSlash::Reject,
            Some((_, "decode")) => EncodedSlash::Decode,
            Some((_, "keep")) => EncodedSlash::Keep,
            Some((span, other)) => cx
                .error(span, format!("unknown `encoded_slash` {other:?}"), "\"reject\" (400), \"decode\" (to `/`, before dot segments) or \"keep\"")
                .unwrap_or_default(),
        },
    };
    let keepalive_pool = at_least_one(cx, upstream_keepalive_pool.as_ref(), "upstream_keepalive_pool", DEFAULT_UPSTREAM_KEEPALIVE_POOL);
    let mut limits = limits;
    if let Some(list) = methods {
        let mut parsed = Vec::new();
        for m in &list {
            let text = m.get_ref().trim();
            match http::Method::from_bytes(text.as_bytes()) {
                Ok(method) if text.bytes().all(|b| b.is_ascii_uppercase()) => parsed.push(method),
                _ => {
                    cx.error::<()>(m.span(), format!("{text:?} is not a method name"), "upper-case method names, e.g. methods = [\"GET\", \"POST\"]");
                }
            }
        }
        if list.is_empty() {
            cx.error::<()>(0..0, "`methods` is empty: every request would be refused", "leave `methods` out for the default set");
        }
        limits.allow = ServerLimits::allow_value(&parsed);
        limits.methods = parsed;
    }
    let listen = parse_addr(cx, listen.as_ref(), DEFAULT_LISTEN, "listen");
    let admin_listen_span = admin_listen.as_ref().map(Spanned::span);
    let admin_listen = parse_addr(cx, admin_listen.as_ref(), DEFAULT_ADMIN_LISTEN, "admin_listen");
    let threads = match threads {
        Some(t) if *t.get_ref() == 0 => cx.error(t.span(), "`threads` must be at least 1", "threads = 1 serves well on one core; use the number of cores at most"),
        Some(t) => Some(*t.get_ref()),
        None => Some(1),
    };
    let mut nets = Vec::new();
    for p in &trusted_proxies {
        let text = p.get_ref().trim();
        match text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)) {
            Ok(net) => nets.push(net),
            Err(_) => {
                cx.error::<()>(
                    p.span(),
                    format!("invalid trusted proxy {text:?}"),
                    "write an address or a CIDR, e.g. \"10.0.0.0/8\" or \"127.0.0.1\"",
                );
            }
        }
    }
    let admin_token = admin_token.map(|t| t.into_inner().0).filter(|t| !t.is_empty());
    if let (Some(addr), None) = (admin_listen, &admin_token)
        && !addr.ip().is_loopback()
    {
        let span = admin_listen_span.unwrap_or(0..0);
        cx.error::<()>(
            span,
            format!("the admin API would listen on {addr}, off loopback, with no `admin_token`: anyone who reaches it could reload the config and purge the cache"),
            "keep admin_listen on 127.0.0.1 and serve probes and metrics with probe_listen = \"0.0.0.0:9091\", or set admin_token (e.g. \"${FASTGATE_ADMIN_TOKEN}\")",
        );
    }
    let probe_listen = match &probe_listen {
        Some(v) => parse_addr(cx, Some(v), "", "probe_listen").map(Some),
        None => Some(None),
    };
    let settings = match (listen, admin_listen, threads, probe_listen) {
        (Some(listen), Some(admin_listen), Some(threads), Some(probe_listen)) => Some(Settings {
            listen,
            admin_listen,
            probe_listen,
            threads,
            shutdown_grace: shutdown_grace.map_or(DEFAULT_GRACE, |d| d.get_ref().0),
            upgrade_sock: upgrade_sock.map_or_else(|| DEFAULT_UPGRADE_SOCK.to_string(), |s| s.into_inner().0),
            upstream_keepalive_pool: keepalive_pool,
            telemetry: TelemetryDef::default(),
            cache: CacheSettings::default(),
            tls: None,
            state: StateDef::Memory,
        }),
        _ => None,
    };
    (settings, nets, admin_token, limits)
}

fn parse_addr(
    cx: &mut Diagnostics<'_>,
    value: Option<&Spanned<EnvString>>,
    default: &str,
    key: &str,
) -> Option<SocketAddr> {
    let Some(v) = value else {
        return default.parse().ok();
    };
    match v.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => cx.error(
            v.span(),
            format!("`{key}` is not an IP address and port: {:?}", v.get_ref().0),
            "write e.g. \"0.0.0.0:8080\" or \"127.0.0.1:9090\"",
        ),
    }
}



fn compile_upstreams(cx: &mut Diagnostics<'_>, raw: BTreeMap<String, Spanned<RawUpstream>>) -> (BTreeMap<String, UpstreamDef>, HashSet<String>) {
    let mut out = BTreeMap::new();
    let mut broken = HashSet::new();
    for (name, spanned) in raw {
        let span = spanned.span();
        let errors_before = cx.errors.len();
        let RawUpstream {
            servers,
            idle_timeout,
            health_check,
            max_concurrent,
            queue,
            eject_after,
            eject_for,
            tls,
        } = spanned.into_inner();
        let concurrency = concurrency::compile_slots(cx, max_concurrent.as_ref(), queue.as_ref());
        if servers.is_empty() {
            cx.error::<()>(span.clone(), format!("upstream `{name}` has no servers"), "add servers = [\"127.0.0.1:8000\"]");
        }
        // Names are not resolved here: resolution is discovery's (at every load, then on an
        // interval), and `check` must not fail on a name only the cluster resolves.
        let mut specs = Vec::new();
        let mut https = None::<bool>;
        for s in &servers {
            match parse_server(s.get_ref()) {
                Ok((spec, tls)) => {
                    if https.is_some_and(|h| h != tls) {
                        cx.error::<()>(s.span(), format!("upstream `{name}` mixes http:// and https:// servers"), "give every server of an upstream the same scheme");
                    }
                    https = Some(tls);
                    specs.push(spec);
                }
                Err(why) => {
                    cx.error::<()>(s.span(), format!("server {:?} of upstream `{name}`: {why}", s.get_ref().0), "write host:port, e.g. \"127.0.0.1:8000\", \"app:8000\" or \"https://api.internal:443\"");
                }
            }
        }
        let tls = match (tls, https.unwrap_or(false)) {
            (Some(t), _) => compile_upstream_tls(cx, t),
            (None, true) => Some(UpstreamTlsDef { ca_file: None, client_cert: None, sni: None, verify: true }),
            (None, false) => None,
        };
        let health_check = health_check.and_then(|hc| compile_health(cx, hc));
        let idle_timeout = cx.positive(idle_timeout.as_ref(), "idle_timeout", DEFAULT_IDLE);
        let eject_for = cx.positive(eject_for.as_ref(), "eject_for", DEFAULT_EJECT_FOR);
        if cx.errors.len() > errors_before {
            broken.insert(name);
            continue;
        }
        let def = UpstreamDef {
            servers: specs,
            tls,
            idle_timeout,
            health_check,
            concurrency: concurrency.flatten(),
            eject_after: eject_after.map_or(DEFAULT_EJECT_AFTER, Spanned::into_inner),
            eject_for,
        };
        out.insert(name, def);
    }
    (out, broken)
}

/// `host:port`, `http://host:port` or `https://host[:port]` (443 by default): the server and
/// whether it speaks TLS.
fn parse_server(text: &str) -> Result<(ServerSpec, bool), String> {
    let text = text.trim();
    let (rest, tls, default_port) = if let Some(r) = text.strip_prefix("https://") {
        (r, true, Some(443))
    } else if let Some(r) = text.strip_prefix("http://") {
        (r, false, Some(80))
    } else {
        (text, false, None)
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err("a server is an address, without a path".into());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (ip, after) = v6.split_once(']').ok_or("unclosed `[` in an IPv6 address")?;
        (format!("[{ip}]"), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => p.parse::<u16>().map_err(|_| format!("invalid port {p:?}"))?,
        (None, Some(p)) => p,
        (None, None) => return Err("no port".into()),
    };
    let name_ok = !host.is_empty()
        && (host.starts_with('[') || host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
    if !name_ok {
        return Err(format!("invalid host {host:?}"));
    }
    let spec = ServerSpec { host, port };
    if spec.host.starts_with('[') && spec.literal().is_none() {
        return Err("invalid IPv6 address".into());
    }
    Ok((spec, tls))
}

fn compile_upstream_tls(cx: &mut Diagnostics<'_>, raw: Spanned<RawUpstreamTls>) -> Option<UpstreamTlsDef> {
    let span = raw.span();
    let RawUpstreamTls { ca_file, cert, key, sni, verify } = raw.into_inner();
    let path = |v: Option<Spanned<EnvString>>| v.map(|p| PathBuf::from(p.into_inner().0));
    let client_cert = match (path(cert), path(key)) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return cx.error(span, "`tls.cert` and `tls.key` go together", "give both the client certificate chain and its key, or neither"),
    };
    Some(UpstreamTlsDef {
        ca_file: path(ca_file),
        client_cert,
        sni: sni.map(|s| s.into_inner().0).filter(|s| !s.is_empty()),
        verify: verify.is_none_or(Spanned::into_inner),
    })
}

/// `[server.tls]`: the listener, and its certificates (files are read when the plan is made
/// live, so that a reload serves a renewed certificate).
fn compile_tls(cx: &mut Diagnostics<'_>, raw: Spanned<RawTls>) -> (Option<TlsListenDef>, Vec<CertSpec>) {
    let span = raw.span();
    let RawTls { listen, certificates, http2, public_port } = raw.into_inner();
    let listen = parse_addr(cx, listen.as_ref(), DEFAULT_TLS_LISTEN, "tls.listen");
    if certificates.is_empty() {
        cx.error::<()>(span, "`[server.tls]` has no certificates", "certificates = [{ cert = \"/etc/fastgate/tls/tls.crt\", key = \"/etc/fastgate/tls/tls.key\" }]");
    }
    let mut certs = Vec::new();
    for c in certificates {
        let c = c.into_inner();
        let mut names = Vec::new();
        for n in c.names.unwrap_or_default() {
            let name = n.get_ref().trim().trim_end_matches('.').to_ascii_lowercase();
            let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let ok = match name.strip_prefix("*.") {
                Some(rest) => rest.split('.').all(label_ok),
                None => name.split('.').all(label_ok),
            };
            if ok {
                names.push(name);
            } else {
                cx.error::<()>(n.span(), format!("{:?} is not a server name", n.get_ref()), "a DNS name, or a wildcard such as \"*.example.com\"");
            }
        }
        certs.push(CertSpec { cert: PathBuf::from(c.cert.into_inner().0), key: PathBuf::from(c.key.into_inner().0), names });
    }
    let tls = listen.map(|listen| TlsListenDef {
        listen,
        http2: http2.is_none_or(Spanned::into_inner),
        public_port: public_port.map_or(listen.port(), Spanned::into_inner),
    });
    (tls, certs)
}


fn compile_health(cx: &mut Diagnostics<'_>, hc: Spanned<RawHealthCheck>) -> Option<HealthCheckSpec> {
    let span = hc.span();
    let RawHealthCheck {
        path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    } = hc.into_inner();
    let path_str = path.as_ref().map_or("/healthz".to_string(), |p| p.get_ref().0.clone());
    if !path_str.starts_with('/') {
        let at = path.as_ref().map_or(span.clone(), Spanned::span);
        return cx.error(at, format!("health check path {path_str:?} must start with `/`"), "write the backend's health path, e.g. \"/healthz\"");
    }
    let errors_before = cx.errors.len();
    let interval = cx.positive(interval.as_ref(), "interval", Duration::from_secs(2));
    let timeout = cx.positive(timeout.as_ref(), "timeout", Duration::from_secs(1));
    let threshold = |cx: &mut Diagnostics<'_>, v: Option<Spanned<usize>>, key: &str, default: usize| match v {
        Some(n) if *n.get_ref() == 0 => cx
            .error(n.span(), format!("health check `{key}` must be at least 1"), format!("leave it out for the default, {default}"))
            .unwrap_or(default),
        Some(n) => n.into_inner(),
        None => default,
    };
    let healthy_threshold = threshold(cx, healthy_threshold, "healthy_threshold", 1);
    let unhealthy_threshold = threshold(cx, unhealthy_threshold, "unhealthy_threshold", 2);
    if timeout > interval {
        cx.warn(
            span,
            format!("health check `timeout` {timeout:?} is longer than its `interval` {interval:?}"),
            "a check that has not answered within the interval overlaps the next one; make `timeout` shorter",
        );
    }
    if cx.errors.len() > errors_before {
        return None;
    }
    Some(HealthCheckSpec {
        path: path_str,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}

fn compile_route(
    cx: &mut Diagnostics<'_>,
    spanned: &Spanned<RawRoute>,
    defaults: &PolicyKeys,
    (upstreams, broken): (&BTreeMap<String, UpstreamDef>, &HashSet<String>),
    seen: &mut HashSet<String>,
) -> Option<(RouteDef, std::ops::Range<usize>)> {
    let span = spanned.span();
    let route = spanned.get_ref();
    let RawRoute {
        name,
        r#match,
        upstream,
        action,
        deny_status,
        ..
    } = route;

    let Some(name) = name else {
        return cx.error(span, "route has no `name`", "add name = \"...\": it labels metrics, logs and errors");
    };
    let name_str = name.get_ref().trim().to_string();
    if name_str.is_empty() {
        return cx.error(name.span(), "route `name` is empty", "name it: the name labels its metrics, logs and errors");
    }
    if !seen.insert(name_str.clone()) {
        cx.error::<()>(name.span(), format!("route name `{name_str}` is used twice"), "route names label metrics and must be unique: rename one");
    }

    let matcher = match r#match {
        Some(m) => compile_match(cx, m),
        None => cx.error(
            span.clone(),
            format!("route `{name_str}` has no `match`"),
            "add match = { path_prefix = \"/\" } for a catch-all",
        ),
    };
    let deny = match action.as_ref().map(|a| (a.span(), a.get_ref().as_str())) {
        None | Some((_, "proxy")) => None,
        Some((_, "deny")) => Some(match deny_status {
            None => 404,
            Some(s) if matches!(*s.get_ref(), 403 | 404) => *s.get_ref(),
            Some(s) => cx.error(s.span(), format!("`deny_status` {} is not 403 or 404", s.get_ref()), "403 says the path exists and is refused; 404 (the default) says nothing").unwrap_or(404),
        }),
        Some((span, other)) => cx.error(span, format!("unknown `action` {other:?}"), "\"proxy\" (the default) or \"deny\""),
    };
    if deny.is_none()
        && let Some(s) = deny_status
    {
        cx.error::<()>(s.span(), "`deny_status` without action = \"deny\"", "add action = \"deny\", or remove deny_status");
    }
    let upstream = match (deny, upstream) {
        (Some(_), Some(u)) => cx.error(u.span(), format!("route `{name_str}` denies its requests: it has no `upstream`"), "remove upstream, or action = \"deny\""),
        (Some(_), None) => Some(String::new()),
        (None, None) => {
            let names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            cx.error(span.clone(), format!("route `{name_str}` has no `upstream`"), format!("add upstream = \"...\", one of: {}", names.join(", ")))
        }
        (None, Some(u)) => match upstreams.get(u.get_ref()) {
            Some(_) => Some(u.get_ref().clone()),
            // defined, with errors of its own already reported: one error, not one per route
            None if broken.contains(u.get_ref()) => None,
            None => {
                let names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                let hint = match suggest(u.get_ref(), &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if names.is_empty() => "no upstream is defined: add [upstreams.NAME] with servers = [\"127.0.0.1:8000\"]".to_string(),
                    None => format!("defined upstreams: {}", names.join(", ")),
                };
                cx.error(u.span(), format!("unknown upstream `{}`", u.get_ref()), hint)
            }
        },
    };
    let template = matcher.as_ref().and_then(|m| m.template().cloned());
    // the route's keys over `[defaults]`, key by key, compiled by each policy (the registry)
    let errors_before = cx.errors.len();
    let scope = Scope { route: Some((name_str.as_str(), template.as_deref())) };
    let policy = PolicyDef::compile(&route.policy.over(defaults), cx, &scope);
    let policy = (cx.errors.len() == errors_before).then_some(policy);
    Some((
        RouteDef {
            name: name_str,
            matcher: matcher?,
            target: match deny {
                Some(status) => RouteTarget::Deny(status),
                None => RouteTarget::Upstream(upstream?),
            },
            policy: policy?,
        },
        span,
    ))
}

fn compile_match(cx: &mut Diagnostics<'_>, m: &Spanned<RawMatch>) -> Option<Matcher> {
    let RawMatch {
        path,
        path_prefix,
        methods,
        host,
    } = m.get_ref();
    let path = match (path, path_prefix) {
        (Some(_), Some(p)) => {
            return cx.error(p.span(), "`path` and `path_prefix` cannot both be set", "keep `path` for one exact path or a template, or `path_prefix` for a subtree");
        }
        (None, None) => {
            return cx.error(m.span(), "`match` needs `path` or `path_prefix`", "path_prefix = \"/\" matches everything");
        }
        (Some(p), None) if PathTemplate::is_template(p.get_ref()) => match PathTemplate::parse(p.get_ref()) {
            Ok(t) => PathMatch::Template(std::sync::Arc::new(t)),
            Err(e) => {
                let hint = match e {
                    TemplateError::PartialSegment(_) => "a parameter is a whole segment: \"/files/{name}\", not \"/files/{name}.txt\"",
                    TemplateError::RestNotLast(_) => "`{name:path}` takes the rest of the path: put it last",
                    TemplateError::Convertor(_) => "write {name} or {name:path}; FastAPI's int, float, str and uuid convertors match one segment",
                    _ => "write FastAPI's syntax, e.g. \"/api/items/{item_id}\" or \"/files/{file_path:path}\"",
                };
                return cx.error(p.span(), format!("path template {:?}: {e}", p.get_ref().0), hint);
            }
        },
        (Some(p), None) => PathMatch::Exact(route_path(cx, p)?),
        (None, Some(p)) if PathTemplate::is_template(p.get_ref()) => {
            return cx.error(p.span(), "`path_prefix` cannot hold parameters", format!("write path = \"{}/{{rest:path}}\": a template whose last parameter takes the rest", p.get_ref().0.trim_end_matches('/')));
        }
        (None, Some(p)) => {
            let norm = route_path(cx, p)?;
            PathMatch::Prefix(norm.trim_end_matches('/').to_string())
        }
    };
    let methods = match methods {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for m in list {
                let upper = m.get_ref().to_ascii_uppercase();
                match upper.parse::<http::Method>() {
                    Ok(method) if !upper.is_empty() => out.push(method),
                    _ => {
                        cx.error::<()>(m.span(), format!("invalid HTTP method {:?}", m.get_ref()), "write a method name such as \"GET\", \"POST\" or \"DELETE\"");
                    }
                }
            }
            if out.is_empty() {
                return cx.error(m.span(), "`methods` is empty", "leave `methods` out to match every method");
            }
            Some(out)
        }
    };
    let host = host.as_ref().map(|h| h.get_ref().trim().to_ascii_lowercase());
    Some(Matcher { path, methods, host })
}

fn route_path(cx: &mut Diagnostics<'_>, p: &Spanned<EnvString>) -> Option<String> {
    match normalize(p.get_ref()) {
        Ok(n) if n != p.get_ref().0 => cx.error(
            p.span(),
            format!("route path {:?} is not in normalized form", p.get_ref().0),
            format!("write {n:?}: requests are matched after normalization"),
        ),
        Ok(n) => Some(n.into_owned()),
        Err(_) => cx.error(p.span(), format!("route path {:?} must start with `/`", p.get_ref().0), format!("write \"/{}\"", p.get_ref().0.trim_start_matches('/'))),
    }
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
