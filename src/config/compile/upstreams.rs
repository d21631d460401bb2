//! `[upstreams.NAME]`: servers (addresses or names to resolve), pooling, health checks,
//! passive health, the upstream-wide concurrency limit and HTTPS to the servers.

use crate::model::diag::Diagnostics;
use crate::model::plan::{HealthCheckSpec, ServerSpec, UpstreamDef, UpstreamTlsDef};
use crate::model::units::EnvString;
use crate::policy::concurrency;
use super::super::raw::{RawHealthCheck, RawUpstream, RawUpstreamTls};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Passive health: a server failing this many exchanges in a row is left out...
const DEFAULT_EJECT_AFTER: u32 = 3;
/// ...for this long (then it gets traffic again; one more failure ejects it again).
const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(10);
const DEFAULT_IDLE: Duration = Duration::from_secs(60);

pub(super) fn compile(cx: &mut Diagnostics<'_>, raw: BTreeMap<String, Spanned<RawUpstream>>) -> (BTreeMap<String, UpstreamDef>, HashSet<String>) {
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
