//! Response caching per route, on pingora-cache's HTTP logic with our own stores.
//!
//! - `store`: the narrow trait a backend implements (memory now, shared stores later);
//! - `memory`: the embedded, byte-bounded store;
//! - `storage`: pingora's `Storage` over any `CacheStore`;
//! - this module: the cache key, what may be stored, variance, invalidation templates; the
//!   route's cache policy over pingora's phases is `policy::cache`.
//!
//! **Key**: `GET` (HEAD shares it) + host + normalized path + query sorted by name (minus
//! `ignore_query`) + the route's key headers and cookies, then pingora's variance hash over the
//! request headers the stored response names in `Vary`. A header not in the key or in `Vary`
//! never changes what is served.
//!
//! **Safety**: a request carrying `Authorization` is cached only when `Authorization` is in the
//! key or the route says the data is `public`; a request carrying `Cookie` only when the key
//! names cookies or the data is public. Otherwise it bypasses the cache both ways.

pub mod entities;
pub mod freshness;
pub mod invalidate;
pub mod memory;
pub mod engine;
pub mod store;
pub mod tags;

use http::header::{HeaderMap, HeaderName, AUTHORIZATION, COOKIE, SET_COOKIE};
use crate::model::plan::CacheSettings;
use pingora::cache::filters::calculate_serve_stale_durations;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::meta::{CacheMeta, CacheMetaDefaults};
use pingora::cache::key::HashBinary;
use pingora::cache::{CachePhase, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora::http::ResponseHeader;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use entities::EntityRoute;
use store::{CacheStore, PurgeSelector};
use tags::TagTemplate;

/// Per-route cache policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Freshness of successful responses the backend gives none; `None` ("origin"): only
    /// explicit freshness, or the `Last-Modified` heuristic, is used.
    pub ttl: Option<Duration>,
    /// Freshness of heuristically cacheable errors (404, 405, 410, 414, 501) the backend gives
    /// none; `None`: such answers are not stored.
    pub negative_ttl: Option<Duration>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub key_headers: Vec<HeaderName>,
    pub key_cookies: Vec<String>,
    pub ignore_query: Vec<String>,
    /// Tags every stored response of the route carries.
    pub tags: Vec<TagTemplate>,
    /// The route's own targeted cache-control field, read before `CDN-Cache-Control`.
    pub targeted_field: Option<HeaderName>,
    /// Use `ttl` even when the backend's `Cache-Control` says otherwise.
    pub override_origin: bool,
    /// Responses are the same for everyone: requests with credentials may use the cache.
    pub public: bool,
    /// Store responses carrying `Set-Cookie`, without it.
    pub strip_set_cookie: bool,
    /// Serve fresh entries even to a client that asks `no-cache` / `max-age=0`.
    pub ignore_client_no_cache: bool,
    /// How the route stands to the entities: the tags a stored entry gets beyond `tags`.
    pub entities: Arc<EntityRoute>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            ttl: None,
            negative_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            key_headers: Vec::new(),
            key_cookies: Vec::new(),
            ignore_query: Vec::new(),
            tags: Vec::new(),
            targeted_field: None,
            override_origin: false,
            public: false,
            strip_set_cookie: false,
            ignore_client_no_cache: false,
            entities: Arc::default(),
        }
    }
}

/// What the cache key callback leaves for the store (purge indexes).
#[derive(Debug, Clone, Default)]
pub struct EntryInfo {
    pub url: String,
    pub path: String,
    /// The route's `tags` and the viewer tags of keyed credentials, rendered for this request.
    pub tags: Vec<String>,
    /// The route's entities, when it has any: the entry's entity tags are made when it is
    /// stored (from `path`, `url` and the body), never on a lookup.
    pub entities: Option<Arc<EntityRoute>>,
    /// `store::purge_seq()` when the request looked the entry up: a purge after it that
    /// selects the response keeps it from being stored.
    pub seq: u64,
}

/// Why a request does not use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    Method,
    Credentials,
}

/// When the request went upstream and when its response header arrived (for ages).
#[derive(Debug, Clone, Copy)]
pub struct Exchanged {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
}

impl Exchanged {
    pub fn now() -> Self {
        let now = SystemTime::now();
        Exchanged { request_time: now, response_time: now }
    }
}

impl CachePolicy {
    /// `None` when the request may use the cache.
    pub fn bypass(&self, method: &http::Method, headers: &HeaderMap) -> Option<Bypass> {
        if !matches!(*method, http::Method::GET | http::Method::HEAD) {
            return Some(Bypass::Method);
        }
        if self.public {
            return None;
        }
        let auth_keyed = self.key_headers.contains(&AUTHORIZATION);
        if headers.contains_key(AUTHORIZATION) && !auth_keyed {
            return Some(Bypass::Credentials);
        }
        if headers.contains_key(COOKIE) && self.key_cookies.is_empty() && !self.key_headers.contains(&COOKIE) {
            return Some(Bypass::Credentials);
        }
        None
    }

    /// The primary key and what the store indexes the entry by (URL, path, tags).
    pub fn key<'a>(
        &self,
        host: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        param: impl Fn(&str) -> Option<&'a str> + Copy,
    ) -> (Vec<u8>, EntryInfo) {
        let url = url_identity(path, query, &self.ignore_query);
        // Length-prefixed parts: no value can forge a boundary.
        let mut primary = Vec::with_capacity(url.len() + host.len() + 32);
        push_part(&mut primary, b"GET");
        push_part(&mut primary, host.to_ascii_lowercase().as_bytes());
        push_part(&mut primary, url.as_bytes());
        for name in &self.key_headers {
            push_part(&mut primary, name.as_str().as_bytes());
            let values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
            push_part(&mut primary, &values.join(&b'\n'));
        }
        for cookie in &self.key_cookies {
            push_part(&mut primary, cookie.as_bytes());
            push_part(&mut primary, cookie_value(headers, cookie).unwrap_or("").as_bytes());
        }
        let mut tags: Vec<String> = self.tags.iter().filter_map(|t| t.render(headers, query, param)).collect();
        if !self.public {
            let auth_keyed = self.key_headers.contains(&AUTHORIZATION);
            invalidate::entry_viewer_tags(auth_keyed, &self.key_cookies, headers, &mut tags);
        }
        let entities = (!self.entities.is_empty()).then(|| self.entities.clone());
        (primary, EntryInfo { url, path: path.to_string(), tags, entities, seq: store::purge_seq() })
    }

    /// RFC 9111 storage rules for a shared cache, with the route's `ttl` and `negative_ttl`
    /// standing in for heuristic freshness. The stored meta's epoch is set back by the
    /// response's age on arrival, so the `Age` of a hit is that age plus the time stored.
    pub fn cacheable(&self, resp: &ResponseHeader, at: Exchanged) -> RespCacheable {
        let status = resp.status.as_u16();
        // 206 and 304 are never stored as such; 1xx are not final
        if status < 200 || matches!(status, 206 | 304) {
            return RespCacheable::Uncacheable(NoCacheReason::Custom("status"));
        }
        if resp.headers.contains_key(SET_COOKIE) && !self.strip_set_cookie {
            return RespCacheable::Uncacheable(NoCacheReason::Custom("set-cookie"));
        }
        if freshness::vary_star(resp) {
            return RespCacheable::Uncacheable(NoCacheReason::Custom("vary-star"));
        }
        let now = at.response_time;
        let cc = freshness::cache_control(resp, self.targeted_field.as_ref());
        let mut header = resp.clone();
        header.remove_header(&SET_COOKIE);
        let age = freshness::initial_age(resp, at.request_time, now);
        let as_u32 = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let (fresh_until, swr, sie) = if self.override_origin {
            let ttl = self.ttl.unwrap_or_default();
            (now + ttl, self.stale_while_revalidate, self.stale_if_error)
        } else {
            if cc.as_ref().is_some_and(|c| c.no_store() || c.private()) {
                return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
            }
            let no_cache = cc.as_ref().is_some_and(|c| c.no_cache());
            let lifetime = match freshness::explicit_lifetime(cc.as_ref(), resp, now) {
                Some(l) => l,
                // stored, but every use revalidates
                None if no_cache => Duration::ZERO,
                None if !freshness::heuristically_cacheable(status) => {
                    return RespCacheable::Uncacheable(NoCacheReason::Custom("no explicit freshness"));
                }
                None => {
                    let default = if status < 400 { self.ttl } else { self.negative_ttl };
                    let heuristic = if status < 400 { freshness::last_modified_heuristic(resp, now) } else { None };
                    match default.or(heuristic) {
                        Some(l) => l,
                        None => return RespCacheable::Uncacheable(NoCacheReason::Custom("no freshness")),
                    }
                }
            };
            // already stale on arrival (or `no-cache`): stored for revalidation only
            let fresh_until = match lifetime.checked_sub(age).filter(|l| !l.is_zero() && !no_cache) {
                Some(left) => now + left,
                None => now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
            };
            let defaults = CacheMetaDefaults::new(|_| None, as_u32(self.stale_while_revalidate), as_u32(self.stale_if_error));
            let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &defaults);
            // must-revalidate, proxy-revalidate and no-cache forbid serving a stale copy
            // without revalidation
            let strict = cc.as_ref().is_some_and(|c| c.must_revalidate() || c.proxy_revalidate() || c.no_cache());
            let (swr, sie) = if strict { (0, 0) } else { (swr, sie) };
            (fresh_until, Duration::from_secs(swr.into()), Duration::from_secs(sie.into()))
        };
        let mut meta = CacheMeta::new(fresh_until, now, as_u32(swr), as_u32(sie), header);
        if !age.is_zero() {
            meta.set_epoch_override(now.checked_sub(age).unwrap_or(now));
        }
        RespCacheable::Cacheable(meta)
    }
}

/// The stored header updated with a 304's fields (RFC 9111 3.2): each field the 304 carries
/// replaces the stored one, except those the stored body depends on (`Content-Length`,
/// `Content-Encoding`, `Content-Range`, `Transfer-Encoding`) and `Vary` (pingora keeps the
/// variance of the stored entry). The stored `Age` is dropped: the 304's, if any, applies.
pub fn merge_not_modified(stored: &ResponseHeader, fresh: &ResponseHeader) -> ResponseHeader {
    use http::header::{AGE, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, TRANSFER_ENCODING, VARY};
    let mut merged = stored.clone();
    merged.remove_header(&AGE);
    for name in fresh.headers.keys() {
        if [CONTENT_LENGTH, CONTENT_ENCODING, CONTENT_RANGE, TRANSFER_ENCODING, VARY].contains(name) {
            continue;
        }
        merged.remove_header(name);
        for v in fresh.headers.get_all(name) {
            // names and values come from a parsed header: appending them cannot fail
            let _ = merged.append_header(name.clone(), v.clone());
        }
    }
    merged
}

/// Path plus the query sorted by parameter (minus `ignore`): what "purge this URL" names.
/// It leaves out the host, so a purge reaches the URL under every host name.
pub fn url_identity(path: &str, query: Option<&str>, ignore: &[String]) -> String {
    let mut url = String::with_capacity(path.len() + 16);
    url.push_str(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        let mut params: Vec<&str> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split_once('=').map_or(*p, |(n, _)| n);
                !ignore.iter().any(|i| i == name)
            })
            .collect();
        params.sort_unstable();
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
    }
    url
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // as the backend reads it (Starlette): the last cookie of the name, trimmed, unquoted
    headers.get_all(COOKIE).iter().rev().find_map(|v| {
        v.to_str().ok()?.rsplit(';').find_map(|pair| {
            let (k, val) = pair.trim().split_once('=')?;
            let val = val.trim();
            (k.trim() == name).then(|| val.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(val))
        })
    })
}

/// The secondary key of a stored response's variant: the request's values of the fields its
/// `Vary` names. Bodies are stored in one encoding (identity) and compressed per client on the
/// way out, so `Accept-Encoding` never splits an entry.
pub fn variance(meta: &CacheMeta, req: &pingora::http::RequestHeader) -> Option<HashBinary> {
    if !varies(meta.headers()) {
        return None;
    }
    let mut variance = VarianceBuilder::new();
    for value in meta.headers().get_all(http::header::VARY) {
        let Ok(names) = value.to_str() else { continue };
        for name in names.split(',').map(|n| n.trim().to_ascii_lowercase()) {
            if name.is_empty() || name == "accept-encoding" {
                continue;
            }
            let joined: Vec<&[u8]> = req.headers.get_all(name.as_str()).iter().map(|v| v.as_bytes()).collect();
            variance.add_owned_name_value(name, joined.join(&b','));
        }
    }
    variance.finalize()
}

/// Whether a stored header's `Vary` splits its entry into variants (`Accept-Encoding` does
/// not: see `variance`).
pub fn varies(stored: &HeaderMap) -> bool {
    stored.get_all(http::header::VARY).iter().any(|v| {
        v.to_str().map_or(true, |names| names.split(',').map(str::trim).any(|n| !n.is_empty() && !n.eq_ignore_ascii_case("accept-encoding")))
    })
}

/// The cache status of the access line and the span: `hit`, `miss`, `stale`, `revalidated`,
/// `expired`, `bypass`.
pub fn status(phase: CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit => "hit",
        CachePhase::Revalidated => "revalidated",
        CachePhase::Miss => "miss",
        CachePhase::Stale | CachePhase::StaleUpdating => "stale",
        CachePhase::Expired | CachePhase::RevalidatedNoCache(_) => "expired",
        CachePhase::Disabled(reason) if reason != NoCacheReason::NeverEnabled => "miss",
        _ => "bypass",
    }
}

/// `X-Cache` for a response, from pingora's cache phase.
pub fn x_cache(phase: CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit | CachePhase::Revalidated => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Expired | CachePhase::RevalidatedNoCache(_) => "EXPIRED",
        // Looked up, went upstream, and the response was not storable (no-store, too large...).
        CachePhase::Disabled(reason) if reason != NoCacheReason::NeverEnabled => "MISS",
        _ => "BYPASS",
    }
}

/// The cache of the process: one store, one lock table, both `'static` as pingora requires.
pub struct Cache {
    pub settings: CacheSettings,
    pub store: Arc<dyn CacheStore>,
    pub storage: &'static engine::PingoraStorage,
    pub lock: &'static CacheKeyLockImpl,
}

impl Cache {
    /// Built once per process; the leaked parts live as long as the process does.
    pub fn new(settings: CacheSettings, store: Arc<dyn CacheStore>) -> Self {
        let storage: &'static engine::PingoraStorage = Box::leak(Box::new(engine::PingoraStorage {
            store: store.clone(),
            tag_header: settings.tag_header.clone(),
        }));
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(settings.lock_timeout));
        Cache {
            settings,
            store,
            storage,
            lock,
        }
    }

    pub async fn purge(&self, selector: &PurgeSelector) -> Result<usize, store::StoreError> {
        self.store.purge(selector).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        CachePolicy {
            ttl: Some(Duration::from_secs(30)),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            ignore_query: vec!["utm_source".into()],
            ..CachePolicy::default()
        }
    }

    #[test]
    fn key_sorts_query_and_drops_ignored_params() {
        let p = policy();
        let h = HeaderMap::new();
        let (a, info) = p.key("API.example.com", "/x", Some("b=2&a=1&utm_source=mail"), &h, |_| None);
        let (b, _) = p.key("api.example.com", "/x", Some("a=1&b=2"), &h, |_| None);
        assert_eq!(a, b);
        assert_eq!(info.url, "/x?a=1&b=2");
        let (c, _) = p.key("api.example.com", "/x", Some("a=1&b=3"), &h, |_| None);
        assert_ne!(a, c);
    }

    #[test]
    fn keyed_headers_separate_entries_and_unkeyed_do_not() {
        let mut p = policy();
        p.key_headers = vec![AUTHORIZATION];
        let mut h1 = HeaderMap::new();
        h1.insert(AUTHORIZATION, "Bearer a".parse().unwrap());
        h1.insert("x-other", "1".parse().unwrap());
        let mut h2 = HeaderMap::new();
        h2.insert(AUTHORIZATION, "Bearer b".parse().unwrap());
        let mut h3 = h1.clone();
        h3.insert("x-other", "2".parse().unwrap());
        assert_ne!(p.key("h", "/u", None, &h1, |_| None).0, p.key("h", "/u", None, &h2, |_| None).0);
        assert_eq!(p.key("h", "/u", None, &h1, |_| None).0, p.key("h", "/u", None, &h3, |_| None).0);
    }

    #[test]
    fn credentials_bypass_unless_keyed_or_public() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer a".parse().unwrap());
        let mut p = policy();
        assert_eq!(p.bypass(&http::Method::GET, &h), Some(Bypass::Credentials));
        p.key_headers = vec![AUTHORIZATION];
        assert_eq!(p.bypass(&http::Method::GET, &h), None);
        assert_eq!(p.bypass(&http::Method::POST, &HeaderMap::new()), Some(Bypass::Method));
        let mut c = HeaderMap::new();
        c.insert(COOKIE, "session=1".parse().unwrap());
        assert_eq!(policy().bypass(&http::Method::GET, &c), Some(Bypass::Credentials));
        let mut p = policy();
        p.public = true;
        assert_eq!(p.bypass(&http::Method::GET, &c), None);
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    impl CachePolicy {
        fn cacheable_at(&self, r: &ResponseHeader, now: SystemTime) -> RespCacheable {
            self.cacheable(r, Exchanged { request_time: now, response_time: now })
        }
    }

    fn fresh_secs(c: RespCacheable, now: SystemTime) -> Option<i64> {
        match c {
            RespCacheable::Cacheable(m) => Some(match m.fresh_until().duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(_) => -1,
            }),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn freshness_follows_the_backend_then_the_route() {
        let p = policy();
        let now = SystemTime::now();
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[]), now), now), Some(30));
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[("cache-control", "max-age=5")]), now), now), Some(5));
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[("cache-control", "s-maxage=7, max-age=5")]), now), now), Some(7));
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[("cache-control", "no-store")]), now), now), None);
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[("cache-control", "private")]), now), now), None);
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[("cache-control", "no-cache")]), now), now), Some(-1));
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[("set-cookie", "a=1")]), now), now), None);
        assert_eq!(fresh_secs(p.cacheable_at(&resp(500, &[]), now), now), None);
        // any final status with explicit freshness; errors without it only with negative_ttl
        assert_eq!(fresh_secs(p.cacheable_at(&resp(500, &[("cache-control", "max-age=9")]), now), now), Some(9));
        assert_eq!(fresh_secs(p.cacheable_at(&resp(302, &[("cache-control", "max-age=9")]), now), now), Some(9));
        assert_eq!(fresh_secs(p.cacheable_at(&resp(302, &[]), now), now), None);
        assert_eq!(fresh_secs(p.cacheable_at(&resp(404, &[]), now), now), None);
        let mut n = policy();
        n.negative_ttl = Some(Duration::from_secs(3));
        assert_eq!(fresh_secs(n.cacheable_at(&resp(404, &[]), now), now), Some(3));
        // origin mode: nothing without explicit freshness
        let mut origin = policy();
        origin.ttl = None;
        assert_eq!(fresh_secs(origin.cacheable_at(&resp(200, &[]), now), now), None);
        // the response's age on arrival counts against its lifetime
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[("cache-control", "max-age=60"), ("age", "50")]), now), now), Some(10));
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[("vary", "accept, *")]), now), now), None);
        assert_eq!(fresh_secs(p.cacheable_at(&resp(206, &[]), now), now), None);
        assert_eq!(fresh_secs(p.cacheable_at(&resp(200, &[("vary", "*")]), now), now), None);
        let mut o = policy();
        o.override_origin = true;
        assert_eq!(fresh_secs(o.cacheable_at(&resp(200, &[("cache-control", "max-age=5")]), now), now), Some(30));
        let mut s = policy();
        s.strip_set_cookie = true;
        match s.cacheable_at(&resp(200, &[("set-cookie", "a=1")]), now) {
            RespCacheable::Cacheable(m) => assert!(m.headers().get("set-cookie").is_none()),
            _ => panic!("cacheable without its cookie"),
        }
    }

    #[test]
    fn tag_templates() {
        let t = TagTemplate::parse("positions:{header:X-User}").unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-user", "42".parse().unwrap());
        let none = |_: &str| None;
        assert_eq!(t.render(&h, None, none).as_deref(), Some("positions:42"));
        assert_eq!(t.render(&HeaderMap::new(), None, none), None);
        let q = TagTemplate::parse("sym:{query:symbol}").unwrap();
        assert_eq!(q.render(&h, Some("a=1&symbol=AAPL"), none).as_deref(), Some("sym:AAPL"));
        let p = TagTemplate::parse("item:{item_id}").unwrap();
        assert_eq!(p.params().collect::<Vec<_>>(), vec!["item_id"]);
        assert_eq!(p.render(&h, None, |n| (n == "item_id").then_some("7")).as_deref(), Some("item:7"));
        assert!(TagTemplate::parse("x:{bogus:y}").is_err());
        assert!(TagTemplate::parse("x:{}").is_err());
    }
}
