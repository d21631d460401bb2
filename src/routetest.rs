//! `fastgate check -c FILE --test TESTS.toml`: sample requests against the compiled route
//! table, as Envoy's `router_check_tool` does. Each test names a request and the parts of its
//! outcome it expects; the outcome is computed the way the gateway routes (the same table
//! lookup, normalization and deny spellings), without starting anything:
//!
//! ```toml
//! [[test]]
//! name = "a reader's list is cached per token"
//! request = "GET /api/items?limit=10"
//! headers = { authorization = "Bearer alice" }
//! expect = { route = "items", cache = "cached", cache_key = ["/api/items?limit=10", "authorization=Bearer alice"] }
//! ```

use crate::cache::url_identity;
use crate::config::plan::{Plan, RouteDef, RouteTarget};
use crate::model::matcher::{Matcher, Routed, Table};
use crate::model::normalize::normalize;
use crate::policy::ratelimit::{KeySource, OnMissing};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    #[error("{file}: {err}")]
    Read { file: String, err: std::io::Error },
    #[error("{file}: {err}")]
    Toml { file: String, err: toml::de::Error },
    #[error("{file}: test {index} ({name}): {msg}")]
    Test { file: String, index: usize, name: String, msg: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, rename = "test")]
    tests: Vec<RawTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: Option<String>,
    /// `"GET /api/items?limit=10"`.
    request: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The client's address, for `client_ip` keys and bypass networks; 127.0.0.1 by default.
    client_ip: Option<IpAddr>,
    expect: Row,
}

/// What a request comes to. In a test, only the fields given are compared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// The route's name; `"none"` (404 no_route) or `"none: 405"` (another method is served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// `"off"` (the route does not cache), `"cached"` (looked up, stored if the answer may be),
    /// `"bypass: method"` or `"bypass: credentials"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// The key's parts besides the method: the host when the request has one, the URL (path
    /// and sorted query), then each keyed header and cookie as `name=value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<Vec<String>>,
    /// Each limit as `name: key`, `name: bypassed`, or what a missing key does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<String>>,
    /// The path the backend receives (normalized).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The status a deny route answers with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<u16>,
}

impl Row {
    /// `self` with only the fields `expect` gives.
    fn only(&self, expect: &Row) -> Row {
        Row {
            route: expect.route.as_ref().and(self.route.clone()),
            cache: expect.cache.as_ref().and(self.cache.clone()),
            cache_key: expect.cache_key.as_ref().and(self.cache_key.clone()),
            rate_limits: expect.rate_limits.as_ref().and(self.rate_limits.clone()),
            path: expect.path.as_ref().and(self.path.clone()),
            deny: if expect.deny.is_some() { self.deny.or(Some(0)) } else { None },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub name: String,
    pub ok: bool,
    pub expected: Row,
    pub actual: Row,
}

struct Sample {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    client: IpAddr,
}

impl Routed for &RouteDef {
    fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    fn denies(&self) -> bool {
        matches!(self.target, RouteTarget::Deny(_))
    }
}

/// Runs the tests of `file` against `plan`.
pub fn run(plan: &Plan, file: &str, text: &str) -> Result<Vec<Outcome>, TestFileError> {
    let raw: RawFile = toml::from_str(text).map_err(|err| TestFileError::Toml { file: file.into(), err })?;
    let table = Table::new(plan.routes.iter().collect());
    let mut out = Vec::new();
    for (i, t) in raw.tests.into_iter().enumerate() {
        let name = t.name.clone().unwrap_or_else(|| t.request.clone());
        let fail = |msg: String| TestFileError::Test { file: file.into(), index: i + 1, name: name.clone(), msg };
        let sample = sample(&t).map_err(fail)?;
        let actual = evaluate(&table, &sample);
        let seen = actual.only(&t.expect);
        out.push(Outcome { ok: seen == t.expect, name, expected: t.expect, actual: seen });
    }
    Ok(out)
}

fn sample(t: &RawTest) -> Result<Sample, String> {
    let (method, target) = t.request.trim().split_once(' ').ok_or("`request` is a method and a path: \"GET /api/items?limit=10\"")?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| format!("{method:?} is not a method"))?;
    let target = target.trim();
    if !target.starts_with('/') {
        return Err(format!("the path {target:?} must start with `/`"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = HeaderMap::new();
    for (k, v) in &t.headers {
        let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|_| format!("{k:?} is not a header name"))?;
        let value = HeaderValue::from_str(v).map_err(|_| format!("the value of {k} is not a header value"))?;
        headers.append(name, value);
    }
    let client = t.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    Ok(Sample { method, path, query, headers, client })
}

fn evaluate(table: &Table<&RouteDef>, s: &Sample) -> Row {
    let host = s.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase());
    let path = match normalize(&s.path) {
        Ok(p) => p.into_owned(),
        Err(e) => return Row { route: Some(format!("none: 400 ({e:?})")), ..Row::default() },
    };
    let Some((route, params)) = table.lookup(&s.method, host.as_deref(), &path) else {
        let route = match table.allowed(host.as_deref(), &path) {
            Some(allow) => format!("none: 405 (allow {allow})"),
            None => "none".to_string(),
        };
        return Row { route: Some(route), path: Some(path), ..Row::default() };
    };
    let mut row = Row { route: Some(route.name.clone()), path: Some(path.clone()), ..Row::default() };
    if let RouteTarget::Deny(status) = route.target {
        row.deny = Some(status);
        return row;
    }
    let param = |n: &str| params.get(&path, n);
    let cache = route.policy.cache.as_ref().and_then(|c| c.policy.as_ref());
    row.cache = Some(match cache.map(|c| (c, c.bypass(&s.method, &s.headers))) {
        None => "off".into(),
        Some((_, Some(crate::cache::Bypass::Method))) => "bypass: method".into(),
        Some((_, Some(crate::cache::Bypass::Credentials))) => "bypass: credentials".into(),
        Some((c, None)) => {
            let mut parts: Vec<String> = host.iter().cloned().collect();
            parts.push(url_identity(&path, s.query.as_deref(), &c.ignore_query));
            for h in &c.key_headers {
                let values: Vec<&str> = s.headers.get_all(h).iter().filter_map(|v| v.to_str().ok()).collect();
                parts.push(format!("{h}={}", values.join("\n")));
            }
            for name in &c.key_cookies {
                parts.push(format!("cookie {name}={}", crate::cache::cookie_value(&s.headers, name).unwrap_or("")));
            }
            row.cache_key = Some(parts);
            "cached".into()
        }
    });
    let mut limits = Vec::new();
    if let Some(rl) = &route.policy.rate_limit {
        let bypassed = rl.bypass_nets.iter().any(|n| n.contains(&s.client));
        for l in &rl.limits {
            let value = match &l.key {
                KeySource::ClientIp => Some(s.client.to_string()),
                KeySource::Route => Some(format!("route {}", route.name)),
                KeySource::Header(h) => s.headers.get(h).and_then(|v| v.to_str().ok()).map(|v| format!("{h}={v}")),
                KeySource::Cookie(c) => crate::cache::cookie_value(&s.headers, c).map(|v| format!("cookie {c}={v}")),
                KeySource::Query(q) => s.query.as_deref().and_then(|qs| qs.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == q).map(|(_, v)| format!("{q}={v}")))),
                KeySource::Path(p) => param(p).map(|v| format!("{p}={v}")),
            };
            let key_bypassed = value.as_deref().is_some_and(|v| rl.bypass_keys.iter().any(|k| v.ends_with(&format!("={k}")) || v == k));
            limits.push(match value {
                _ if bypassed || key_bypassed => format!("{}: bypassed", l.name),
                Some(v) => format!("{}: {v}", l.name),
                None => match l.on_missing {
                    OnMissing::Shared => format!("{}: missing, one shared bucket", l.name),
                    OnMissing::ClientIp => format!("{}: missing, by client {}", l.name, s.client),
                    OnMissing::Reject(status) => format!("{}: missing, refused {status}", l.name),
                },
            });
        }
    }
    row.rate_limits = Some(limits);
    row
}

/// A test file `init` writes beside its routes file: one request per route, with what the
/// table says of it today; a starting point to edit.
pub fn starter(plan: &Plan) -> String {
    let table = Table::new(plan.routes.iter().collect());
    let mut out = String::from("# Route tests: `fastgate check -c ROUTES --test THIS_FILE` in CI. Each request is routed as the\n# gateway would; only the fields under `expect` are compared. Written by `fastgate init` from\n# what the table says today: edit them into what you mean.\n");
    for r in plan.routes.iter() {
        let method = r.matcher.methods.as_ref().and_then(|m| m.first().cloned()).unwrap_or(Method::GET);
        let path = match &r.matcher.path {
            crate::model::matcher::PathMatch::Exact(p) => p.clone(),
            crate::model::matcher::PathMatch::Prefix(p) => format!("{p}/anything"),
            crate::model::matcher::PathMatch::Template(t) => t.as_str().split('/').map(|s| if s.starts_with('{') { "1" } else { s }).collect::<Vec<_>>().join("/"),
        };
        let s = Sample { method: method.clone(), path: path.clone(), query: None, headers: HeaderMap::new(), client: IpAddr::from([127, 0, 0, 1]) };
        let row = evaluate(&table, &s);
        if row.route.as_deref() != Some(r.name.as_str()) {
            continue; // shadowed for this sample: `check` says so
        }
        let q = |v: &str| toml::Value::String(v.to_string()).to_string();
        out.push_str(&format!("\n[[test]]\nrequest = {}\n", q(&format!("{method} {path}"))));
        let mut expect = vec![format!("route = {}", q(&r.name))];
        if let Some(c) = &row.cache {
            expect.push(format!("cache = {}", q(c)));
        }
        if let Some(d) = row.deny {
            expect.push(format!("deny = {d}"));
        }
        out.push_str(&format!("expect = {{ {} }}\n", expect.join(", ")));
    }
    out
}
