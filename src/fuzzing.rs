//! Entry points for the fuzz targets in `fuzz/` and their regression test
//! (`tests/fuzz_regressions.rs`): each takes arbitrary bytes, runs one parser the network or a
//! config file feeds, and asserts what must hold for every input. A panic is a finding.

#![doc(hidden)]

use crate::cache::{self, CachePolicy};
use crate::policy::compress::CompressPolicy;
use crate::model::normalize::{normalize, normalize_with, EncodedSlash};
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// One fuzz entry point.
pub type Target = fn(&[u8]);

/// The targets, by name, as `fuzz/` and the regression test call them.
pub const TARGETS: &[(&str, Target)] =
    &[("config", config), ("path", path), ("head", head), ("headers", headers), ("cache_key", cache_key), ("json", json)];

/// A routes file: compiled, or refused with diagnostics that render (carets on char
/// boundaries, whatever the bytes).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match crate::config::load_str("fuzz.toml", text) {
        Ok(plan) => {
            for r in &plan.routes {
                let _ = r.policy.to_string();
                let _ = r.matcher.to_string();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Path normalization and route lookup: a normalized path is normal, and normalizing it again
/// changes nothing.
pub fn path(data: &[u8]) {
    let Ok(p) = std::str::from_utf8(data) else { return };
    for mode in [EncodedSlash::Reject, EncodedSlash::Decode, EncodedSlash::Keep] {
        let Ok(n) = normalize_with(p, mode) else { continue };
        assert!(n.starts_with('/'), "{p:?} -> {n:?}");
        assert!(!n.contains("//") && !n.contains("/./") && !n.contains("/../"), "{p:?} -> {n:?}");
        assert_eq!(normalize(&n).ok().as_deref(), Some(&*n), "normalizing {p:?} twice");
        if let Ok(t) = crate::model::template::PathTemplate::parse("/api/items/{item_id}/reviews/{rest:path}") {
            let _ = t.matches(&n);
        }
    }
}

/// A request head as the connection layer checks it (framing rules included).
pub fn head(data: &[u8]) {
    let _ = crate::proxy::conn::check_head(data);
}

/// Request and response fields the gateway reads: `Accept-Encoding`, `Cache-Control` (request
/// and response), dates, cookies, `X-Forwarded-For`.
pub fn headers(data: &[u8]) {
    let Ok(v) = HeaderValue::from_bytes(data) else { return };
    let _ = CompressPolicy::default().choose(Some(&v));
    let mut req = RequestHeader::build("GET", b"/", None).expect("static request head");
    for name in [http::header::CACHE_CONTROL, http::header::COOKIE, http::header::ACCEPT_ENCODING] {
        let _ = req.insert_header(name, v.clone());
    }
    let _ = crate::policy::cache::ClientDirectives::parse(&req);
    let _ = cache::cookie_value(&req.headers, "session");
    let mut resp = ResponseHeader::build(200, None).expect("static response head");
    for name in [http::header::CACHE_CONTROL, http::header::EXPIRES, http::header::DATE, http::header::AGE, http::header::LAST_MODIFIED] {
        let _ = resp.insert_header(name, v.clone());
    }
    let now = std::time::SystemTime::now();
    let cc = cache::freshness::cache_control(&resp, None);
    let _ = cache::freshness::explicit_lifetime(cc.as_ref(), &resp, now);
    let _ = cache::freshness::last_modified_heuristic(&resp, now);
    let _ = cache::freshness::initial_age(&resp, now, now);
    let trusted = ["10.0.0.0/8".parse().expect("static net")];
    let _ = crate::edge::forwarding::real_client_ip(Some([10, 0, 0, 1].into()), Some(&v), &trusted);
}

/// Cache keys: the same request gives the same key; a different query value another.
pub fn cache_key(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (path, query) = s.split_once('?').map_or((s, None), |(p, q)| (p, Some(q)));
    let policy = CachePolicy { ignore_query: vec!["utm_source".into()], key_cookies: vec!["lang".into()], ..Default::default() };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(s) {
        headers.insert(http::header::COOKIE, v);
    }
    let a = policy.key("example.com", path, query, &headers, |_| None);
    let b = policy.key("example.com", path, query, &headers, |_| None);
    assert_eq!(a.0, b.0, "the key of {s:?} is stable");
    let _ = cache::url_identity(path, query, &policy.ignore_query);
}

/// A backend's JSON body, as field selection and the entity scan read it (one pass, no tree):
/// whatever the bytes, nothing panics and at most `MAX_TAGS` tags come out; a body that is
/// JSON is read to its end by both, and a selection from it is JSON too.
pub fn json(data: &[u8]) {
    use crate::model::entity::{parse_path, Occurrences, MAX_TAGS};
    use crate::policy::fields::{filter, Selector};
    let mut occ = Occurrences::default();
    for (p, e, id) in [("/", "A", "id"), ("/items/*", "B", "id"), ("/items/*/owner", "C", "name"), ("/a/b", "D", "k")] {
        if let Ok(steps) = parse_path(p) {
            occ.add(&steps, e, id);
        }
    }
    let mut tags = Vec::new();
    let read = occ.collect(data, &mut tags);
    assert!(tags.len() <= MAX_TAGS);
    let valid = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    let Ok(sel) = Selector::parse("id,items.id,items.owner.name,a") else { return };
    let selected = filter(data, &sel);
    if valid {
        assert!(read.is_ok(), "the entity scan refused JSON");
        let out = selected.unwrap_or_else(|_| panic!("field selection refused JSON"));
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok(), "a selection from JSON is not JSON");
    }
}
