//! `[server]` and `[server.tls]`: the listeners, the process settings, the connection and head
//! limits, forwarding, the admin token and the HTTPS certificates.

use super::super::plan::ServerDef;
use super::super::raw::{RawServer, RawTls};
use crate::model::diag::Diagnostics;
use crate::model::normalize::EncodedSlash;
use crate::model::plan::{CacheSettings, CertSpec, Settings, StateDef, TelemetryDef, TlsListenDef};
use crate::model::units::{Dur, EnvString, Size};
use crate::edge::forwarding::ForwardedFields;
use crate::edge::limits::ServerLimits;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// pingora's default is 128: with more requests in flight than that, every one past it
/// closes its upstream connection after use and the next opens a new one (bench scenario 11).
const DEFAULT_UPSTREAM_KEEPALIVE_POOL: usize = 1024;
const DEFAULT_UPGRADE_SOCK: &str = "/tmp/fastgate-upgrade.sock";
const DEFAULT_TLS_LISTEN: &str = "0.0.0.0:8443";
/// Upstream names are resolved again this often (and on every reload).
const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// The whole `[server]` table: the process settings (`None` on errors), what may change on
/// reload, and the HTTPS listener.
pub(super) fn compile(cx: &mut Diagnostics<'_>, mut server: RawServer) -> (Option<Settings>, ServerDef, Option<TlsListenDef>) {
    let remove_request_headers = compile_removed_headers(cx, std::mem::take(&mut server.remove_request_headers));
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
    let (settings, trusted_proxies, admin_token, limits) = compile_server(cx, server);
    let (tls, certificates) = match tls {
        Some(t) => compile_tls(cx, t),
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
    let server = ServerDef {
        trusted_proxies,
        remove_request_headers,
        forwarded,
        admin_token,
        limits,
        redirect_https,
        certificates,
        resolver,
        resolve_interval,
    };
    (settings, server, tls)
}

/// A count that must be at least 1, or `default` when unset (an error is recorded for 0).
fn at_least_one(cx: &mut Diagnostics<'_>, v: Option<&Spanned<usize>>, key: &str, default: usize) -> usize {
    match v {
        Some(n) if *n.get_ref() == 0 => cx
            .error(n.span(), format!("`{key}` must be at least 1"), format!("leave `{key}` out for the default, {default}"))
            .unwrap_or(default),
        Some(n) => *n.get_ref(),
        None => default,
    }
}

/// The keys of `[server]` that limit connections and request heads.
struct RawLimits {
    max_uri_length: Option<Spanned<Size>>,
    max_header_count: Option<Spanned<usize>>,
    max_header_bytes: Option<Spanned<Size>>,
    client_body_timeout: Option<Spanned<Dur>>,
    keepalive_timeout: Option<Spanned<Dur>>,
    header_timeout: Option<Spanned<Dur>>,
    max_connections: Option<Spanned<usize>>,
    max_connections_per_client: Option<Spanned<usize>>,
    access_log: Option<Spanned<bool>>,
    methods: Option<Vec<Spanned<String>>>,
    encoded_slash: Option<Spanned<String>>,
}

fn compile_limits(cx: &mut Diagnostics<'_>, raw: RawLimits) -> ServerLimits {
    let RawLimits { max_uri_length, max_header_count, max_header_bytes, client_body_timeout, keepalive_timeout, header_timeout, max_connections, max_connections_per_client, access_log, methods, encoded_slash } = raw;
    let d = ServerLimits::default();
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
    limits
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
    let limits = compile_limits(
        cx,
        RawLimits { max_uri_length, max_header_count, max_header_bytes, client_body_timeout, keepalive_timeout, header_timeout, max_connections, max_connections_per_client, access_log, methods, encoded_slash },
    );
    let keepalive_pool = at_least_one(cx, upstream_keepalive_pool.as_ref(), "upstream_keepalive_pool", DEFAULT_UPSTREAM_KEEPALIVE_POOL);
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

fn compile_removed_headers(cx: &mut Diagnostics<'_>, extra: Vec<Spanned<String>>) -> Vec<http::HeaderName> {
    let mut names: Vec<http::HeaderName> = crate::edge::forwarding::TARGET_REWRITING.iter().map(|n| http::HeaderName::from_static(n)).collect();
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
